#!/usr/bin/env python3
"""Checkpoint benchmark: write and load time and size of a full training state —
ResNet-50 (torchvision's names and shapes, BN statistics included), the 512-d embedding head,
SOP's HIST prototypes (11,318 × 512 means and log-variances), the HGNN (512 hidden,
11,318 logits) and Adam's two moments for every trained tensor — by
  ours        `hist bench-checkpoint`: the checkpoint store (safetensors, fsync of file and
              folders, CRC32C of the file as written, atomic rename; load verifies the
              checksum chain),
  torch       torch.save / torch.load of the same tensors in one dict, to a file in the same
              folder; timed twice: as torch.save does it (no fsync) and with os.fsync added,
              which is what a crash-safe write needs,
interleaved in the same run, medians of --reps; then writes (or replaces) the
"## Checkpoints" section of docs/benchmarks.md.

Run from the repository root, after `cargo build --bin hist`:
    $HIST_PYTHON scripts/bench_checkpoint.py [--reps 5] [--dir /tmp/hist-ckpt-bench]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import torch
import torchvision
from safetensors.torch import save_file

from bench_common import ROOT, loadavg, machine, write_section

SOP_CLASSES = 11_318
DIM = 512
HIDDEN = 512


def build_state():
    """The tensors of a ResNet-50 + SOP training state, named as hist's checkpoints name them."""
    torch.manual_seed(0)
    state = {}
    trained = []
    for name, t in torchvision.models.resnet50().state_dict().items():
        if name.startswith("fc.") or name.endswith("num_batches_tracked"):
            continue
        state[f"model/backbone.{name}"] = t.detach().clone()
        if not (name.endswith("running_mean") or name.endswith("running_var")):
            trained.append(f"backbone.{name}")
    extra = {
        "head.weight": (DIM, 2048), "head.bias": (DIM,),
        "loss.means": (SOP_CLASSES, DIM), "loss.log_vars": (SOP_CLASSES, DIM),
        "loss.hgnn.w1": (HIDDEN, DIM), "loss.hgnn.b1": (HIDDEN,),
        "loss.hgnn.bn.weight": (HIDDEN,), "loss.hgnn.bn.bias": (HIDDEN,),
        "loss.hgnn.w2": (SOP_CLASSES, HIDDEN), "loss.hgnn.b2": (SOP_CLASSES,),
    }
    for name, shape in extra.items():
        state[f"model/{name}"] = torch.randn(shape)
        trained.append(name)
    for name in trained:
        shape = state[f"model/{name}"].shape
        state[f"optim/{name}.exp_avg"] = torch.randn(shape)
        state[f"optim/{name}.exp_avg_sq"] = torch.rand(shape)
        state[f"optim/{name}.step"] = torch.tensor(1000.0, dtype=torch.float64)
    return state


def torch_round(state, path, fsync):
    t = time.perf_counter()
    with open(path, "wb") as f:
        torch.save(state, f)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    if fsync:
        fd = os.open(path.parent, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    save_s = time.perf_counter() - t
    t = time.perf_counter()
    loaded = torch.load(path, weights_only=True)
    load_s = time.perf_counter() - t
    assert len(loaded) == len(state)
    size = path.stat().st_size
    path.unlink()
    return save_s, load_s, size


def ours_round(state_file, scratch):
    out = subprocess.run(
        [str(Path(os.environ.get("HIST_BIN", ROOT / "target/debug/hist"))), "bench-checkpoint", "--state", str(state_file), "--dir", str(scratch), "--reps", "1"],
        check=True, capture_output=True, text=True,
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return r["save_s"][0], r["load_s"][0], r["bytes"], r["numel"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dir", default="/tmp/hist-ckpt-bench")
    ap.add_argument("--no-write", action="store_true", help="print, do not touch docs/benchmarks.md")
    args = ap.parse_args()
    work = Path(args.dir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    torch.set_num_threads(1)
    load_before = loadavg()
    state = build_state()
    numel = sum(t.numel() for t in state.values())
    state_file = work / "state.safetensors"
    save_file(state, str(state_file))
    # The torch dict holds the same tensors under the same names.
    results = {"ours": [], "torch": [], "torch+fsync": []}
    for rep in range(args.reps):
        results["ours"].append(ours_round(state_file, work / "run"))
        results["torch"].append(torch_round(state, work / "state.pt", fsync=False))
        results["torch+fsync"].append(torch_round(state, work / "state.pt", fsync=True))
        print(f"rep {rep}: " + ", ".join(f"{k} save {v[-1][0]:.3f}s load {v[-1][1]:.3f}s" for k, v in results.items()), flush=True)
    shutil.rmtree(work, ignore_errors=True)

    med = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v), v[-1][2]) for k, v in results.items()}
    rows = []
    for k, (s, l, b) in med.items():
        rows.append(f"| {k} | {s:.3f} | {l:.3f} | {b / 2**20:.1f} |")
    o, t, tf = med["ours"], med["torch"], med["torch+fsync"]
    section = f"""## Checkpoints

Command: `cargo build --bin hist && $HIST_PYTHON scripts/bench_checkpoint.py --reps {args.reps}`
(scripts/bench_checkpoint.py; {time.strftime('%Y-%m-%d')}; {machine()}; load average
{load_before} before and {loadavg()} after — a shared machine, so compare the ratios, not the seconds).
State: ResNet-50 (torchvision names, BN statistics), 512-d head, SOP prototypes
({SOP_CLASSES:,} × {DIM} means and log-variances), HGNN ({HIDDEN} hidden, {SOP_CLASSES:,} logits) and
Adam's two moments for every trained tensor: {numel / 1e6:.1f} M values, f32. Medians of {args.reps}
interleaved rounds; the page cache is warm for loads (the file was just written), as on a
resume right after a save.

| writer | save (s) | load (s) | size (MiB) |
|---|---|---|---|
{chr(10).join(rows)}

- ours: safetensors file, fsync of the file and of both folders, CRC32C of the file as
  written (read back), meta.json and the COMPLETE marker, atomic rename; load verifies the
  checksum chain before returning tensors.
- torch: `torch.save(dict)` / `torch.load(weights_only=True)`; "torch+fsync" adds the fsync
  of the file and folder that crash safety needs (torch.save alone does not sync).
- Ratios: save {o[0] / t[0]:.2f}× torch.save ({o[0] / tf[0]:.2f}× torch.save+fsync); load
  {o[1] / t[1]:.2f}× torch.load; size {o[2] / t[2]:.3f}× (safetensors header vs pickle).
"""
    print(section)
    if args.no_write:
        return
    write_section(ROOT / "docs/benchmarks.md", "## Checkpoints", section)


if __name__ == "__main__":
    main()
