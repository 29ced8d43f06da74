#!/usr/bin/env bash
# GPU checks for a hist binary built elsewhere (the build machine has no GPU).
#
# Usage: scripts/gpu_check.sh [path/to/hist]     (default: target/release/hist, then debug)
#
# On the build machine, `bash scripts/gpu_bundle.sh` writes target/gpu/ (the stripped binary
# and the system libraries it needs that the GPU machine may lack); carry target/gpu and run
# `scripts/gpu_check.sh target/gpu/hist` on the GPU machine.
#
# The binary's runpath points at the build machine's torch; here libtorch comes from this
# machine's python3 torch 2.11 (CUDA 13 wheel), so LD_LIBRARY_PATH is set to its lib folder
# (then the bundle's lib/), and HIST_NCCL_LIBRARY to the NCCL wheel next to it (the same file
# libtorch_cuda loads).
#
# What it checks:
#  1. `hist nccl-check`: CUDA visible to tch, libnccl loads, one NCCL rank per GPU (world 1 on
#     a one-GPU machine) running all_reduce (sum, avg) / all_gather / broadcast on 8 dtypes
#     against CPU answers, the ordering of NCCL on the legacy default stream with libtorch's
#     kernels (the design's stream assumption), misuse errors and a barrier.
#  2. Training: 300 steps on cuda:0 with the NCCL backend (world size 1) on the synthetic
#     data, convolutions in IEEE float32 (tf32=false); its first 5 losses must match a CPU
#     run's within 1e-3 relative (the same seed draws the same initial weights on both
#     devices: they are drawn on the CPU); prints img/s.
#  3. Mixed precision: 60 steps of ResNet-50 (64 px synthetic images, local BN) on cuda:0 in
#     float32, then channels-last with train.autocast=bf16 and =fp16; each must finish with
#     every step's loss finite (fp16 also reporting its loss scale); prints img/s of each.
#  4. Evaluation on the GPU: `hist eval --checkpoint` of run 2's final parameters with
#     --device cuda:0 (embedding and k-NN products on the GPU) and with --device cpu: every
#     metric within 0.01 (the embeddings themselves differ in rounding between cuDNN and
#     oneDNN, so near-ties may flip). The test embeddings the GPU computed, scored by
#     `hist eval --embeddings` on cuda:0 and on the CPU, must give identical reports (the
#     ranking is exact on any device).
# Environment: PYTHON (default python3), NCCL_DEBUG (e.g. INFO, passed through).
set -euo pipefail

HIST_BIN=${1:-}
if [[ -n "$HIST_BIN" ]]; then HIST_BIN=$(realpath "$HIST_BIN"); fi
cd "$(dirname "$0")/.."
if [[ -z "$HIST_BIN" ]]; then
    for candidate in target/release/hist target/debug/hist; do
        if [[ -x "$candidate" ]]; then HIST_BIN=$candidate; break; fi
    done
fi
if [[ -z "$HIST_BIN" || ! -x "$HIST_BIN" ]]; then
    echo "gpu_check: no hist binary (pass its path as the first argument)" >&2
    exit 2
fi
PYTHON=${PYTHON:-python3}

echo "== machine"
echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  host: $(hostname)"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader || true
else
    echo "nvidia-smi: not found"
fi
echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-<unset>}"

echo "== python torch (provides libtorch, libcudart and libnccl)"
TORCH_DIR=$("$PYTHON" -c 'import torch,os;print(os.path.dirname(torch.__file__))')
"$PYTHON" - <<'EOF'
import torch
nccl = ".".join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else "n/a"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuda available {torch.cuda.is_available()}, devices {torch.cuda.device_count()}, NCCL {nccl}")
if not torch.__version__.startswith("2.11."):
    print("WARNING: hist was built against libtorch 2.11.0; this torch may not be ABI-compatible")
EOF
SITE_PACKAGES=$(dirname "$TORCH_DIR")
BUNDLE_LIB=$(dirname "$HIST_BIN")/lib
export LD_LIBRARY_PATH="$TORCH_DIR/lib:$BUNDLE_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export HIST_NCCL_LIBRARY=${HIST_NCCL_LIBRARY:-$SITE_PACKAGES/nvidia/nccl/lib/libnccl.so.2}
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
echo "HIST_NCCL_LIBRARY=$HIST_NCCL_LIBRARY"
if [[ ! -f "$HIST_NCCL_LIBRARY" ]]; then
    echo "WARNING: $HIST_NCCL_LIBRARY does not exist; nccl-check will say what it tried"
fi

echo "== binary"
echo "hist: $HIST_BIN ($("$HIST_BIN" --version))"
missing=$(ldd "$HIST_BIN" | grep 'not found' || true)
if [[ -n "$missing" ]]; then
    echo "FAIL unresolved libraries:"
    echo "$missing"
    exit 1
fi
ldd "$HIST_BIN" | grep -E 'libtorch_cuda|libcudart|libnccl' || true

failures=0
run_step() { # name, command...
    local name=$1
    shift
    local start=$SECONDS status=0
    "$@" || status=$?
    if [[ $status -eq 0 ]]; then
        echo "STEP PASS $name ($((SECONDS - start)) s)"
    else
        echo "STEP FAIL $name (exit $status after $((SECONDS - start)) s)"
        failures=$((failures + 1))
    fi
}

echo "== 1. hist nccl-check"
run_step nccl-check timeout 300 "$HIST_BIN" nccl-check

echo "== 2. training: a few hundred NCCL steps on cuda:0 vs the CPU's first steps"
WORK=$(mktemp -d)
TRAIN_SETS=(--set train.eval_at_start=false --set train.warmup_epochs=0 --set model.bn=frozen
            --set data.hflip=false --set train.print_every=1 --set train.epochs=100)
train_gpu() {
    set -o pipefail
    "$HIST_BIN" train --run-dir "$WORK/gpu" "${TRAIN_SETS[@]}" --set device=cuda:0 \
        --set dist.backend=nccl --set tf32=false --set train.max_steps=300 | tee "$WORK/gpu.log"
}
train_cpu() {
    "$HIST_BIN" train --run-dir "$WORK/cpu" "${TRAIN_SETS[@]}" --set device=cpu \
        --set train.max_steps=5 > "$WORK/cpu.log"
}
compare_losses() {
    "$PYTHON" - "$WORK/cpu.log" "$WORK/gpu.log" <<'PY'
import re, sys
def losses(path):
    return [float(m.group(1)) for m in re.finditer(r"^step \d+\s+loss (\S+)", open(path).read(), re.M)]
cpu, gpu = losses(sys.argv[1]), losses(sys.argv[2])
print(f"cpu steps: {len(cpu)}, gpu steps: {len(gpu)}")
worst = 0.0
for i, (c, g) in enumerate(zip(cpu, gpu), 1):
    rel = abs(c - g) / max(abs(c), 1e-12)
    worst = max(worst, rel)
    print(f"step {i}: cpu {c:.6f} gpu {g:.6f} rel diff {rel:.2e}")
# f32 on different kernels (cuDNN vs oneDNN): step 1 agrees to ~1e-6, later steps drift.
ok = len(cpu) == 5 and len(gpu) >= 5 and worst < 1e-3
print(("PASS" if ok else "FAIL") + f" first 5 losses within 1e-3 relative (worst {worst:.2e})")
sys.exit(0 if ok else 1)
PY
}
run_step train-gpu timeout 420 bash -c "$(declare -p HIST_BIN WORK TRAIN_SETS); $(declare -f train_gpu); train_gpu"
run_step train-cpu timeout 300 bash -c "$(declare -p HIST_BIN WORK TRAIN_SETS); $(declare -f train_cpu); train_cpu"
run_step loss-match compare_losses
echo "GPU throughput (epoch lines):"
grep -E "img/s" "$WORK/gpu.log" || true

echo "== 3. mixed precision: channels-last with bf16 / fp16 autocast on cuda:0"
AMP_STEPS=60
AMP_SETS=(--set device=cuda:0 --set model.backbone=resnet50 --set model.bn=local
          --set data.image_size=64 --set train.max_steps=$AMP_STEPS)
train_amp() { # autocast mode (off, bf16, fp16), model.channels_last (true, false)
    "$HIST_BIN" train --run-dir "$WORK/amp-$1" "${TRAIN_SETS[@]}" "${AMP_SETS[@]}" \
        --set train.autocast="$1" --set model.channels_last="$2" > "$WORK/amp-$1.log"
}
check_amp() { # autocast mode
    "$PYTHON" - "$WORK/amp-$1.log" "$1" "$AMP_STEPS" <<'PY'
import math, re, sys
text, mode, steps = open(sys.argv[1]).read(), sys.argv[2], int(sys.argv[3])
losses = [float(m.group(1)) for m in re.finditer(r"^step \d+\s+loss (\S+)", text, re.M)]
epochs = re.findall(r"^epoch .*", text, re.M)
for line in epochs:
    print(f"{mode}: {line}")
ok = len(losses) == steps and all(math.isfinite(x) for x in losses)
if mode == "fp16":
    ok = ok and all("fp16 loss scale" in line for line in epochs)
last = f"{losses[-1]:.6f}" if losses else "none"
print(("PASS" if ok else "FAIL") + f" {mode}: {len(losses)}/{steps} steps, all losses finite: "
      f"{all(math.isfinite(x) for x in losses)}, last loss {last}")
sys.exit(0 if ok else 1)
PY
}
for mode in off bf16 fp16; do
    channels_last=true
    if [[ $mode == off ]]; then channels_last=false; fi
    run_step "train-amp-$mode" timeout 300 bash -c \
        "$(declare -p HIST_BIN WORK TRAIN_SETS AMP_SETS); $(declare -f train_amp); train_amp $mode $channels_last"
    run_step "check-amp-$mode" check_amp "$mode"
done
echo "Mixed precision throughput (epoch lines; off = float32, contiguous):"
for mode in off bf16 fp16; do
    grep -E "img/s" "$WORK/amp-$mode.log" | sed "s/^/$mode: /" || true
done

echo "== 4. hist eval on cuda:0 vs cpu"
eval_checkpoint_on() { # device
    "$HIST_BIN" eval --checkpoint "$WORK/gpu/final.safetensors" --device "$1" --json \
        --ks 1,2,4,8 --kmeans-restarts 0 --report "$WORK/eval-${1%%:*}.json" \
        --save-embeddings "$WORK/embeddings-${1%%:*}.safetensors"
}
eval_embeddings_on() { # device: scores the embeddings the GPU computed
    "$HIST_BIN" eval --embeddings "$WORK/embeddings-cuda.safetensors" --device "$1" --json \
        --ks 1,2,4,8 --kmeans-restarts 0 --report "$WORK/eval-embeddings-${1%%:*}.json"
}
compare_eval() { # cpu report, cuda report, tolerance (0 = identical)
    "$PYTHON" - "$@" <<'PY'
import json, sys
cpu, gpu = (json.load(open(p)) for p in sys.argv[1:3])
tolerance = float(sys.argv[3])
print(f"cpu:  {cpu}\ncuda: {gpu}")
worst = max(abs(cpu[k] - gpu[k]) for k in cpu) if cpu.keys() == gpu.keys() else float("inf")
ok = cpu == gpu if tolerance == 0 else worst <= tolerance
what = "identical metrics" if tolerance == 0 else f"every metric within {tolerance}"
print(("PASS" if ok else "FAIL") + f" {what} on cuda:0 and cpu (largest difference {worst:.2e})")
sys.exit(0 if ok else 1)
PY
}
run_step eval-checkpoint-cuda timeout 300 bash -c "$(declare -p HIST_BIN WORK); $(declare -f eval_checkpoint_on); eval_checkpoint_on cuda:0"
run_step eval-checkpoint-cpu timeout 300 bash -c "$(declare -p HIST_BIN WORK); $(declare -f eval_checkpoint_on); eval_checkpoint_on cpu"
run_step eval-checkpoint-match compare_eval "$WORK/eval-cpu.json" "$WORK/eval-cuda.json" 0.01
run_step eval-embeddings-cuda timeout 300 bash -c "$(declare -p HIST_BIN WORK); $(declare -f eval_embeddings_on); eval_embeddings_on cuda:0"
run_step eval-embeddings-cpu timeout 300 bash -c "$(declare -p HIST_BIN WORK); $(declare -f eval_embeddings_on); eval_embeddings_on cpu"
run_step eval-embeddings-match compare_eval "$WORK/eval-embeddings-cpu.json" "$WORK/eval-embeddings-cuda.json" 0

echo "== summary"
if [[ $failures -eq 0 ]]; then
    echo "gpu_check: all steps passed"
else
    echo "gpu_check: $failures step(s) failed"
    exit 1
fi
