#!/usr/bin/env python3
"""CPU collectives benchmark: the CPU ring (src/dist/cpu_ring/, via the hidden
`hist bench-collectives`) against torch.distributed's gloo backend, between local ranks
on this machine, measured in the same run; then writes (or replaces) the
"## CPU collectives" section of docs/benchmarks.md.

  all_reduce  sum of 25 557 032 f32 (ResNet-50's parameter count, 102 MB)
  all_gather  180×512 f32 per rank (a batch of embeddings), output [W·180, 512]

Each round starts a fresh job of each kind (`world` processes on 127.0.0.1), ours then
gloo; rounds alternate so both see the same machine load. A timed call is preceded by a
barrier and timed on rank 0. Bandwidth is algorithm bandwidth: the tensor's bytes (for
all_gather, the gathered output's) divided by the time. Both results are checked.

Run from the repository root, after `cargo build --bin hist`:
    $HIST_PYTHON scripts/bench_collectives.py            # HIST_PYTHON: see .cargo/config.toml
"""
import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_common import ROOT, git_rev, loadavg, machine, write_section

SECTION = "## CPU collectives"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gloo_worker(a):
    """One gloo rank: the same calls, timings and checks as `hist bench-collectives`."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{a.port}", rank=a.rank, world_size=a.world)
    mine = float(a.rank + 1)
    grads = torch.empty(a.numel)
    reduce_s = []
    for i in range(a.warmup + a.reps):
        grads.fill_(mine)
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(grads)
        if i >= a.warmup:
            reduce_s.append(time.perf_counter() - t0)
    want = a.world * (a.world + 1) / 2
    assert grads[0].item() == want and grads[-1].item() == want, "gloo all_reduce check"
    rows, cols = a.gather_shape
    emb = torch.full((rows, cols), mine)
    out = torch.empty(a.world * rows, cols)  # preallocated: gloo's best case
    gather_s = []
    for i in range(a.warmup + a.gather_reps):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_gather_into_tensor(out, emb)
        if i >= a.warmup:
            gather_s.append(time.perf_counter() - t0)
    assert all(out[r * rows, -1].item() == r + 1 for r in range(a.world)), "gloo all_gather check"
    dist.barrier()
    if a.rank == 0:
        print(json.dumps({"all_reduce_s": reduce_s, "all_gather_s": gather_s}))
    dist.destroy_process_group()


def run_job(cmds):
    """Starts one process per rank; returns rank 0's JSON."""
    procs = [subprocess.Popen(c, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outs):
        if p.returncode != 0:
            sys.exit(f"bench_collectives: {' '.join(p.args)} failed ({p.returncode}): {err.strip()}")
    return json.loads(outs[0][0].strip().splitlines()[-1])


def common_args(a):
    return ["--numel", str(a.numel), "--gather-shape", *map(str, a.gather_shape), "--reps", str(a.reps),
            "--gather-reps", str(a.gather_reps), "--warmup", str(a.warmup)]


def ours(a):
    addr = f"127.0.0.1:{free_port()}"
    return run_job([[a.hist, "bench-collectives", "--rank", str(r), "--world", str(a.world), "--addr", addr,
                     "--chunk-bytes", str(a.chunk_bytes), *common_args(a)] for r in range(a.world)])


def gloo(a):
    port = str(free_port())
    return run_job([[sys.executable, __file__, "gloo-worker", "--rank", str(r), "--world", str(a.world),
                     "--port", port, *common_args(a)] for r in range(a.world)])


def summary(times, nbytes):
    med, low = statistics.median(times), min(times)
    return {"median_ms": med * 1e3, "min_ms": low * 1e3, "gbps_median": nbytes / med / 1e9,
            "gbps_best": nbytes / low / 1e9, "n": len(times)}


def section(a, res, started, load0, load1, torch_version):
    rows, cols = a.gather_shape
    lines = [SECTION, "",
             f"Between {a.world} local ranks (one process each, TCP over 127.0.0.1), f32. **ours**: the CPU ring "
             "(src/dist/cpu_ring/): ring reduce-scatter + all-gather in "
             f"{(a.chunk_bytes or 256 << 10) >> 10} KiB chunks, a sender thread beside the receiving caller; "
             f"**gloo**: torch.distributed's gloo backend (`all_reduce`, `all_gather_into_tensor` into a "
             "preallocated output). Each timed call follows a barrier and is timed on rank 0; "
             f"{a.rounds} rounds alternate a fresh job of each. Times in ms, median (min); "
             "GB/s = algorithm bandwidth, the tensor's bytes (all_gather: the gathered output's) / median time "
             "(best: / min time); ratio = gloo time / ours, > 1 means ours is faster.", "",
             "| collective | size | ours ms | gloo ms | ours GB/s (best) | gloo GB/s (best) | ours / gloo throughput (median, min) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name, size, key in (("all_reduce (sum)", f"{a.numel:,} f32 ({a.numel * 4 / 1e6:.1f} MB)", "all_reduce"),
                            ("all_gather", f"{rows}×{cols} f32 per rank → {a.world * rows}×{cols}", "all_gather")):
        o, g = res["ours"][key], res["gloo"][key]
        lines.append(f"| {name} | {size} | {o['median_ms']:.2f} ({o['min_ms']:.2f}) | {g['median_ms']:.2f} ({g['min_ms']:.2f}) "
                     f"| {o['gbps_median']:.2f} ({o['gbps_best']:.2f}) | {g['gbps_median']:.2f} ({g['gbps_best']:.2f}) "
                     f"| {g['median_ms'] / o['median_ms']:.2f}×, {g['min_ms'] / o['min_ms']:.2f}× |")
    spread = "; ".join(f"{key} " + ", ".join(f"{x:.2f}×" for x in res["round_ratios"][key]) for key in ("all_reduce", "all_gather"))
    lines += ["",
              f"Throughput ratio (gloo median / ours median) of each round, to show the spread: {spread}.", "",
              "Where the time goes: per all_reduce each rank sends and receives 2(W−1)/W × the tensor through "
              "loopback TCP (a copy into and out of the kernel each way) and adds (W−1)/W × the tensor. The "
              "addition loop runs at ≈ 16 GB/s on cache-resident chunks even at opt-level 1 (≈ 9 GB/s with the "
              "average's division), so the socket copies bound both implementations (in a separate getrusage "
              "measurement of 22 calls on 2 ranks: ≈ 45 ms of system CPU per rank per call for ours, ≈ 41 ms for "
              "gloo), and on this shared machine a run's figure "
              "moves with the load more than with the implementation.", "",
              f"Timed calls per implementation: all_reduce {res['ours']['all_reduce']['n']}, all_gather "
              f"{res['ours']['all_gather']['n']} (after {a.warmup} untimed per job). Goal: ≥ 1.0× gloo's throughput.", "",
              f"Produced by `cargo build --bin hist && {a.command}` on {started} (git {git_rev('src/dist/cpu_ring.rs', 'src/dist/cpu_ring')}, torch {torch_version}, "
              "`hist` built with the dev profile: opt-level 1, dependencies at 3). "
              f"Machine: {machine()}; load average {load0} before, {load1} after (shared machine: medians are "
              "noisy, mins are the cleaner figure).", ""]
    return "\n".join(lines)


def main_run(a):
    import torch

    if not Path(a.hist).exists():
        sys.exit(f"bench_collectives: {a.hist} not found; run `cargo build --bin hist` first")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load0 = loadavg()
    times = {impl: {"all_reduce": [], "all_gather": []} for impl in ("ours", "gloo")}
    round_ratios = {"all_reduce": [], "all_gather": []}
    for rnd in range(a.rounds):
        medians = {}
        for impl, fn in (("ours", ours), ("gloo", gloo)):
            print(f"round {rnd + 1}/{a.rounds}: {impl}", file=sys.stderr, flush=True)
            out = fn(a)
            for key in round_ratios:
                times[impl][key] += out[key + "_s"]
                medians[impl, key] = statistics.median(out[key + "_s"])
        for key in round_ratios:
            round_ratios[key].append(medians["gloo", key] / medians["ours", key])
    rows, cols = a.gather_shape
    sizes = {"all_reduce": a.numel * 4, "all_gather": a.world * rows * cols * 4}
    res = {impl: {k: summary(v, sizes[k]) for k, v in t.items()} for impl, t in times.items()}
    res["round_ratios"] = round_ratios
    print(json.dumps(res), flush=True)
    text = section(a, res, started, load0, loadavg(), torch.__version__)
    if a.output:
        write_section(ROOT / a.output, SECTION, text)
    print(text)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd")
    w = sub.add_parser("gloo-worker", help="(internal) one gloo rank; rank 0 prints JSON")
    w.add_argument("--rank", type=int, required=True)
    w.add_argument("--port", type=int, required=True)
    for q in (p, w):
        q.add_argument("--world", type=int, default=2)
        q.add_argument("--numel", type=int, default=25_557_032)
        q.add_argument("--gather-shape", type=int, nargs=2, default=[180, 512])
        q.add_argument("--reps", type=int, default=10, help="timed all_reduce calls per job")
        q.add_argument("--gather-reps", type=int, default=200, help="timed all_gather calls per job")
        q.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--chunk-bytes", type=int, default=0, help="ring chunk size (0: the default)")
    p.add_argument("--hist", default=str(ROOT / "target/debug/hist"))
    p.add_argument("--output", default="docs/benchmarks.md", help="'' to only print")
    a = p.parse_args()
    if a.cmd == "gloo-worker":
        gloo_worker(a)
    else:
        a.command = " ".join(["$HIST_PYTHON scripts/bench_collectives.py"] + sys.argv[1:])
        main_run(a)


if __name__ == "__main__":
    main()
