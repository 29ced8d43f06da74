#!/usr/bin/env python3
"""Weak scaling of CPU ranks: step time of 2 ranks against 1 rank with the same per-rank
batch, and the share of the step spent in communication (all-gather of the embeddings +
bucketed gradient all-reduce, including waiting for the slower rank), read from the
worker's own epoch lines ("N img/s, comm P%").

Run from the repository root after `cargo build --workspace --bins`:
    $HIST_PYTHON scripts/bench_scaling.py
Writes (or replaces) the "## Multi-rank scaling (CPU ranks)" section of docs/benchmarks.md.
Each rank gets one intra-op thread (OMP_NUM_THREADS=1), so 2 ranks use the 2 cores that
1 rank would leave half idle; the comparison isolates what distribution costs.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

from bench_common import ROOT, machine, write_section

LAUNCH = ROOT / "target/debug/hist-launch"
PER_RANK_BATCH = 60
EPOCHS = 3
SECTION = "## Multi-rank scaling (CPU ranks)"


def run(nproc):
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(LAUNCH), "--nproc", str(nproc), "--run-dir", f"{tmp}/run", "configs/demo.yaml",
               "--set", f"data.batch_size={PER_RANK_BATCH * nproc}", "--set", f"train.epochs={EPOCHS}",
               "--set", "train.eval_at_start=false", "--set", "model.bn=frozen",
               "--set", "data.synthetic.images_per_class=100"]
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    rows = re.findall(r"epoch (\d+)/\d+\s+step (\d+).*?; (\d+) img/s, comm (\d+)%", out)
    # Skip the first epoch (warm-up: the trunk is frozen, allocations settle).
    rows = [(int(e), int(s), int(ips), int(c)) for e, s, ips, c in rows if int(e) > 1]
    ips = sum(r[2] for r in rows) / len(rows)
    comm = sum(r[3] for r in rows) / len(rows)
    step_ms = PER_RANK_BATCH * nproc / ips * 1e3
    return {"img_s": ips, "comm": comm, "step_ms": step_ms}


def main():
    # No options; parsing still answers --help instead of starting the runs.
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    one, two = run(1), run(2)
    lines = [
        SECTION, "",
        f"Per-rank batch {PER_RANK_BATCH} (global {PER_RANK_BATCH} vs {2 * PER_RANK_BATCH}), the demo's "
        "small CNN on 32 px synthetic images, frozen BN, f32, one intra-op thread per rank; "
        f"epochs 2–{EPOCHS} averaged (epoch 1 is warm-up).", "",
        "| ranks | global batch | step ms | img/s | comm share of the step |",
        "|---:|---:|---:|---:|---:|",
        f"| 1 | {PER_RANK_BATCH} | {one['step_ms']:.0f} | {one['img_s']:.0f} | {one['comm']:.0f}% |",
        f"| 2 | {2 * PER_RANK_BATCH} | {two['step_ms']:.0f} | {two['img_s']:.0f} | {two['comm']:.0f}% |",
        "",
        f"Weak-scaling efficiency (1-rank step time / 2-rank step time): "
        f"{one['step_ms'] / two['step_ms']:.2f}; throughput ×{two['img_s'] / one['img_s']:.2f} with 2 ranks. "
        "On one 2-core machine both ranks also compete for memory bandwidth, so this bounds the "
        "cost of distribution from above; the communication share is what the CPU ring adds.",
        "",
        f"Produced by `$HIST_PYTHON scripts/bench_scaling.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
        f"({machine()}).", "",
    ]
    write_section(ROOT / "docs/benchmarks.md", SECTION, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
