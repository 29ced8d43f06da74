#!/usr/bin/env python3
"""Retrieval evaluation benchmark at Stanford Online Products scale (60,502 test images,
11,316 classes, 512-d embeddings): time, peak memory and agreement of

  ours      `hist eval --embeddings` (src/eval/knn/: exact ranks of each query's same-label
            entries, counted over blocks of float32 products — only the blocks I ≤ J, the
            similarity matrix being symmetric — with exact float64 re-scoring of near-ties,
            deterministic ties; Recall@K + MAP@R + R-Precision; NMI skipped by default)
  ours f64  the same with `--precision f64` (float64 products; must give identical metrics)
  faiss     faiss-cpu IndexFlatIP (exact, float32) searching the 1,001 nearest of every
            image, the metrics then computed with numpy from its neighbour lists
  floor     the bare chunked float32 products alone (torch.mm into a reused buffer,
            ⌊2^26 / N⌋ queries at a time): 2·N²·D ≈ 3.7 TFLOP at full size, the issue's
            floor: every similarity once
  half floor  the float32 products of the 1,024 × 1,024 blocks I ≤ J only (≈ N²·D): the
            work a search that uses the symmetry cannot skip,

each in a fresh subprocess with the same thread count, on synthetic SOP-shaped
embeddings (class sizes 2..12, class centre + noise σ = 2.2 for a mid-range Recall@1, seeded). Then writes (or replaces)
the "## Retrieval evaluation" section of docs/benchmarks.md, keeping the others.

Run from the repository root, after `cargo build --bin hist`, on a quiet machine:
    $HIST_PYTHON scripts/bench_eval.py            # HIST_PYTHON: see .cargo/config.toml
Options: --n, --classes, --d, --threads, --repeat (runs of each, interleaved; the fastest
is kept, default 2), --no-f64 (skip ours f64), --nmi (also time our k-means NMI with its
defaults).

Peak memory = the subprocess's own maximum resident set (ru_maxrss from wait4),
which includes the loaded embeddings (N·D·4 B = 118 MiB at full size) and libraries.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import ROOT, git_rev, loadavg, machine, write_section

KS = [1, 10, 100, 1000]
SECTION = "## Retrieval evaluation"


def generate(path, n, classes, d, seed):
    import numpy as np
    import torch
    from safetensors.torch import save_file

    rng = np.random.default_rng(seed)
    sizes = np.full(classes, 2)
    # Spread the remaining images over classes with room (SOP: 2..12 images per class).
    while sizes.sum() < n:
        room = np.flatnonzero(sizes < 12)
        take = rng.choice(room, size=min(len(room), n - sizes.sum()), replace=False)
        sizes[take] += 1
    labels = rng.permutation(np.repeat(np.arange(classes), sizes))
    centres = rng.standard_normal((classes, d)).astype(np.float32)
    emb = centres[labels] + 2.2 * rng.standard_normal((n, d)).astype(np.float32)
    save_file({"embeddings": torch.from_numpy(emb), "labels": torch.from_numpy(labels.astype(np.int64))}, str(path))
    print(json.dumps({"torch": torch.__version__}))


def faiss_worker(path, threads):
    """Child process: faiss search + numpy metrics; prints one JSON line."""
    import faiss
    import numpy as np
    from safetensors.numpy import load_file

    faiss.omp_set_num_threads(threads)
    t = load_file(path)
    x, labels = t["embeddings"].astype(np.float32), t["labels"]
    t0 = time.perf_counter()
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    _, idx = index.search(x, max(KS) + 1)
    t_search = time.perf_counter() - t0
    # Drop each query's own row (rarely not first: exact duplicates tie with it).
    own = idx == np.arange(len(x))[:, None]
    own[~own.any(axis=1), -1] = True
    idx = idx[~own].reshape(len(x), max(KS))
    rel = labels[idx] == labels[:, None]
    counts = np.bincount(labels)
    r = counts[labels] - 1
    scored = r > 0
    first = np.where(rel.any(axis=1), rel.argmax(axis=1), max(KS))
    out = {f"recall@{k}": float((first[scored] < k).mean()) for k in KS}
    cols = np.arange(1, max(KS) + 1)
    top_r = rel & (cols[None, :] <= r[:, None])
    prec = np.cumsum(top_r, axis=1) / cols[None, :]
    out["map@r"] = float(((prec * top_r).sum(axis=1)[scored] / r[scored]).mean())
    out["r_precision"] = float((top_r.sum(axis=1)[scored] / r[scored]).mean())
    out["seconds"] = time.perf_counter() - t0
    out["search_seconds"] = t_search
    print(json.dumps(out))


def floor_worker(path, threads):
    """Child process: only the chunked float32 products ours computes; prints one JSON line."""
    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(threads)
    x = load_file(path)["embeddings"].float()
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    n = x.shape[0]
    chunk = max(1, (1 << 26) // n)
    out = torch.empty(min(chunk, n), n)
    gt = x.T
    t0 = time.perf_counter()
    for start in range(0, n, chunk):
        q = x[start:start + chunk]
        torch.mm(q, gt, out=out[: q.shape[0]])
    print(json.dumps({"seconds": time.perf_counter() - t0, "chunk": chunk}))


def half_floor_worker(path, threads, block=1024):
    """Child process: the float32 products of a symmetric search, blocks I ≤ J only."""
    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(threads)
    x = load_file(path)["embeddings"].float()
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    n = x.shape[0]
    out = torch.empty(block, block)
    t0 = time.perf_counter()
    for i in range(0, n, block):
        a = x[i:i + block]
        for j in range(i, n, block):
            b = x[j:j + block]
            torch.mm(a, b.T, out=out[: a.shape[0], : b.shape[0]])
    print(json.dumps({"seconds": time.perf_counter() - t0, "block": block}))


def run_child(cmd, threads):
    """Runs `cmd`; returns (its last stdout line as JSON, wall s, its own peak RSS MiB, CPU s)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, text=True)
        # wait4 gives this child's own rusage (RUSAGE_CHILDREN would be the max so far).
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if p.returncode != 0:
            sys.exit(f"bench_eval: {cmd[0]} failed ({p.returncode}):\n{err.read()}")
        cpu = usage.ru_utime + usage.ru_stime
        return json.loads(out.read().strip().splitlines()[-1]), wall, usage.ru_maxrss / 1024, cpu


def section(a, runs, started, load0, load1, torch_version):
    o, o_wall, o_peak, o_cpu = runs["ours"]
    f, f_wall, f_peak, f_cpu = runs["faiss"]
    fl, fl_wall, fl_peak, fl_cpu = runs["floor"]
    hf, hf_wall, hf_peak, hf_cpu = runs["half_floor"]
    keys = [f"recall@{k}" for k in KS] + ["map@r", "r_precision"]
    diff = max(abs(o[k] - f[k]) for k in keys)
    ks = ",".join(map(str, KS))
    row = lambda name, r, wall: (f"| {name} | {wall} | {r[3]:.1f} | {r[2]:.0f} | {r[0]['recall@1']:.6f} | {r[0]['recall@1000']:.6f} | "
                                 f"{r[0]['map@r']:.6f} | {r[0]['r_precision']:.6f} |")
    lines = [
        SECTION, "",
        f"Exact retrieval metrics of {a.n:,} embeddings × {a.d} (f32 on disk), {a.classes:,} classes of 2–12 images (SOP test-set shape), "
        f"every image a query against all others; Recall@{{{ks}}}, MAP@R and R-Precision; {a.threads} threads each, one fresh process each, "
        f"the fastest of {a.repeat} interleaved runs of each. Synthetic embeddings: class centre + Gaussian noise, seeded.",
        "",
        f"- **ours**: `hist eval --embeddings F --json --ks {ks} --kmeans-restarts 0` — the metrics need only the ranks of each query's "
        "same-label entries, and ours counts them exactly: float32 products of 1,024 × 1,024 blocks, only those with I ≤ J (the "
        "similarity matrix is symmetric; each block is scanned along its rows and its columns against per-query cuts read off a "
        "sample of each row), a rigorous float32 error bound deciding which entries are near-ties, those re-scored in float64, "
        "ties by gallery position. Time = the whole command (process start and reading the file included).",
        "- **ours f64**: the same with `--precision f64` (float64 products).",
        f"- **faiss**: faiss-cpu `IndexFlatIP` in float32, search of the {max(KS) + 1} nearest, metrics from its lists with numpy. "
        "Time = normalise + add + search + metrics (reading the file excluded).",
        f"- **floor**: every float32 product once, {fl['chunk']} queries (⌊2^26/N⌋) at a time (`torch.mm` into a reused buffer), "
        "nothing else — the floor as the issue defines it. Time = the products only.",
        "- **half floor**: the float32 products of the 1,024 × 1,024 blocks I ≤ J only, nothing else: what a search using the "
        "symmetry cannot skip. Time = the products only.",
        "",
        "| | wall s | process CPU s | peak RSS MiB | recall@1 | recall@1000 | MAP@R | R-Precision |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        row("ours", runs["ours"], f"{o_wall:.1f}"),
    ]
    if "ours_f64" in runs:
        lines.append(row("ours f64", runs["ours_f64"], f"{runs['ours_f64'][1]:.1f}"))
    lines += [
        row("faiss", runs["faiss"], f"{f['seconds']:.1f} (search {f['search_seconds']:.1f})"),
        f"| floor | {fl['seconds']:.1f} (process {fl_wall:.1f}) | {fl_cpu:.1f} | {fl_peak:.0f} | | | | |",
        f"| half floor | {hf['seconds']:.1f} (process {hf_wall:.1f}) | {hf_cpu:.1f} | {hf_peak:.0f} | | | | |",
        "",
        f"Ours against faiss: wall {o_wall / f['seconds']:.2f}×, CPU {o_cpu / f_cpu:.2f}×; against the floor: wall {o_wall / fl['seconds']:.2f}× "
        f"(goal: ≤ 1.0× faiss, ≤ 1.3× floor); against the half floor: {o_wall / hf['seconds']:.2f}×. Largest metric difference ours − faiss: {diff:.2e} (faiss ranks by float32 similarities, so "
        "near-equal ones may swap; ours ranks exactly).",
    ]
    if "ours_f64" in runs:
        same = all(runs["ours_f64"][0][k] == o[k] for k in keys)
        lines[-1] += f" Ours f64 gives {'bit-identical' if same else 'DIFFERENT'} metrics, as it must."
    lines[-1] += (" Process CPU and peak RSS cover the whole process: reading the file, and for ours libtorch's own "
                  "footprint (≈ 600 MiB with a tiny input).")
    if "nmi" in runs:
        r = runs["nmi"]
        lines += ["", f"NMI (ours, k-means with k = {a.classes:,} and its defaults): {r[0]['nmi']:.4f}; the whole command with NMI took "
                  f"{r[1]:.1f} s wall, {r[3]:.1f} CPU s, peak RSS {r[2]:.0f} MiB."]
    lines += [
        "",
        f"Produced by `cargo build --bin hist && $HIST_PYTHON scripts/bench_eval.py{flags(a)}` on {started} (git {git_rev()}, torch {torch_version}, "
        f"`hist` built with the dev profile). Machine: {machine()}; "
        f"load average {load0} before, {load1} after (shared machine: times are noisy).",
        "",
    ]
    return "\n".join(lines)


def flags(a):
    """The options that change what is measured, as given on the command line."""
    defaults = {"n": 60502, "classes": 11316, "d": 512, "threads": 2, "seed": 0, "repeat": 2}
    out = [f" --{k} {getattr(a, k)}" for k, v in defaults.items() if getattr(a, k) != v]
    out += [f" --{k.replace('_', '-')}" for k in ("nmi", "no_f64") if getattr(a, k)]
    return "".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=60502)
    p.add_argument("--classes", type=int, default=11316)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nmi", action="store_true")
    p.add_argument("--no-f64", action="store_true")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--hist", default=str(ROOT / "target/debug/hist"))
    p.add_argument("--output", default=str(ROOT / "docs/benchmarks.md"))
    p.add_argument("--faiss-worker", help=argparse.SUPPRESS)
    p.add_argument("--floor-worker", help=argparse.SUPPRESS)
    p.add_argument("--half-floor-worker", help=argparse.SUPPRESS)
    p.add_argument("--gen-worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.faiss_worker:
        return faiss_worker(a.faiss_worker, a.threads)
    if a.floor_worker:
        return floor_worker(a.floor_worker, a.threads)
    if a.half_floor_worker:
        return half_floor_worker(a.half_floor_worker, a.threads)
    if a.gen_worker:
        return generate(a.gen_worker, a.n, a.classes, a.d, a.seed)
    if not Path(a.hist).exists():
        sys.exit(f"bench_eval: {a.hist} not found; run `cargo build --bin hist` first")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "sop_like.safetensors"
        print(f"generating {a.n} x {a.d}", file=sys.stderr, flush=True)
        # In a child, so this process stays small: a child's peak RSS can include its
        # parent's pages from before the exec.
        gen = run_child([sys.executable, __file__, "--gen-worker", str(data), "--n", str(a.n), "--classes", str(a.classes),
                         "--d", str(a.d), "--seed", str(a.seed)], a.threads)
        load0 = loadavg()
        ours = [a.hist, "eval", "--embeddings", str(data), "--json", "--ks", ",".join(map(str, KS))]
        children = [("ours", ours + ["--kmeans-restarts", "0"])]
        if not a.no_f64:
            children.append(("ours_f64", ours + ["--kmeans-restarts", "0", "--precision", "f64"]))
        children += [("faiss", [sys.executable, __file__, "--faiss-worker", str(data), "--threads", str(a.threads)]),
                     ("floor", [sys.executable, __file__, "--floor-worker", str(data), "--threads", str(a.threads)]),
                     ("half_floor", [sys.executable, __file__, "--half-floor-worker", str(data), "--threads", str(a.threads)])]
        if a.nmi:
            children.append(("nmi", ours))
        # Interleaved repeats, the fastest of each kept: the machine is shared, and other
        # work only ever slows a run down.
        for rep in range(a.repeat):
            for name, cmd in children:
                print(f"{name} (run {rep + 1} of {a.repeat})", file=sys.stderr, flush=True)
                run = run_child(cmd, a.threads)
                timed = lambda r: r[0]["seconds"] if name in ("faiss", "floor", "half_floor") else r[1]
                if name not in runs or timed(run) < timed(runs[name]):
                    runs[name] = run
        load1 = loadavg()
    text = section(a, runs, started, load0, load1, gen[0]["torch"])
    print(text)
    write_section(Path(a.output), SECTION, text)


if __name__ == "__main__":
    main()
