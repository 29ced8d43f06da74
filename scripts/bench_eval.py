#!/usr/bin/env python3
"""Retrieval evaluation benchmark at Stanford Online Products scale (60,502 test images,
11,316 classes, 512-d embeddings): time, peak memory and agreement of

  ours   `hist eval --embeddings` (src/eval/: exact chunked k-NN in float64 on the CPU,
         deterministic ties, Recall@K + MAP@R + R-Precision; NMI skipped by default)
  faiss  faiss-cpu IndexFlatIP (exact, float32) searching the 1,001 nearest of every
         image, the metrics then computed with numpy from its neighbour lists,

each in a fresh subprocess with the same thread count, on synthetic SOP-shaped
embeddings (class sizes 2..12, class centre + noise σ = 2.2 for a mid-range Recall@1, seeded). Then writes (or replaces)
the "## Retrieval evaluation" section of docs/benchmarks.md, keeping the others.

Run from the repository root, after `cargo build --bin hist`:
    $HIST_PYTHON scripts/bench_eval.py            # HIST_PYTHON: see .cargo/config.toml
Options: --n, --classes, --d, --threads, --nmi (also time our k-means NMI, slow on a CPU).

Peak memory = the subprocess's own maximum resident set (ru_maxrss from wait4),
which includes the loaded embeddings (N·D·4 B = 118 MiB at full size) and libraries.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
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


def loadavg():
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def git_rev():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def section(a, ours, faiss_r, nmi, started, load0, load1, torch_version):
    o, o_wall, o_peak, o_cpu = ours
    f, f_wall, f_peak, f_cpu = faiss_r
    keys = [f"recall@{k}" for k in KS] + ["map@r", "r_precision"]
    diff = max(abs(o[k] - f[k]) for k in keys)
    lines = [
        SECTION, "",
        f"Exact retrieval metrics of {a.n:,} embeddings × {a.d} (f32 on disk), {a.classes:,} classes of 2–12 images (SOP test-set shape), "
        f"every image a query against all others; Recall@{{{','.join(map(str, KS))}}}, MAP@R and R-Precision; {a.threads} threads each, one fresh process each. "
        "Synthetic embeddings: class centre + Gaussian noise, seeded.",
        "",
        f"- **ours**: `hist eval --embeddings F --json --ks {','.join(map(str, KS))} --kmeans-restarts 0` — chunked exact k-NN in float64 "
        "(default chunk ⌊2^26/N⌋ queries), deterministic ties, metrics streamed per chunk. Time = the whole command (reading the file included).",
        f"- **faiss**: faiss-cpu `IndexFlatIP` in float32, search of the {max(KS) + 1} nearest, metrics from its lists with numpy. Time = normalise + add + search + metrics.",
        "",
        "| | wall s | process CPU s | peak RSS MiB | recall@1 | recall@1000 | MAP@R | R-Precision |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| ours | {o_wall:.1f} | {o_cpu:.1f} | {o_peak:.0f} | {o['recall@1']:.6f} | {o['recall@1000']:.6f} | {o['map@r']:.6f} | {o['r_precision']:.6f} |",
        f"| faiss | {f['seconds']:.1f} (search {f['search_seconds']:.1f}) | {f_cpu:.1f} | {f_peak:.0f} | {f['recall@1']:.6f} | {f['recall@1000']:.6f} | {f['map@r']:.6f} | {f['r_precision']:.6f} |",
        "",
        f"Largest difference over all {len(keys)} metrics: {diff:.2e} (faiss ranks in float32, so near-equal similarities may swap; ours ranks in float64). "
        f"Ratio ours / faiss: wall {o_wall / f['seconds']:.2f}×, CPU {o_cpu / f_cpu:.2f}× (CPU time is the steadier figure on a shared machine; "
        "ours does twice the arithmetic, float64 against float32). Process CPU and peak RSS cover the whole process: reading the file, and for ours "
        "libtorch's own footprint (≈ 600 MiB with a tiny input).",
    ]
    if nmi is not None:
        lines += ["", f"NMI (ours, k-means with k = {a.classes:,}, `--kmeans-restarts 1 --kmeans-iters 20`): {nmi[0]['nmi']:.4f} in {nmi[1]:.1f} s including the retrieval metrics."]
    lines += [
        "",
        f"Produced by `cargo build --bin hist && $HIST_PYTHON scripts/bench_eval.py` on {started} (git {git_rev()}, torch {torch_version}, "
        f"`hist` built with the dev profile). Machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, Linux {platform.release()}; "
        f"load average {load0} before, {load1} after (shared machine: times are noisy).",
        "",
    ]
    return "\n".join(lines)


def write_section(path, text):
    old = path.read_text() if path.exists() else "# Benchmarks\n\n"
    start = old.find(SECTION)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + 1)
        new = old[:start] + text + ("\n" + old[end + 1:] if end >= 0 else "")
    path.write_text(new.rstrip("\n") + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=60502)
    p.add_argument("--classes", type=int, default=11316)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nmi", action="store_true")
    p.add_argument("--hist", default=str(ROOT / "target/debug/hist"))
    p.add_argument("--output", default=str(ROOT / "docs/benchmarks.md"))
    p.add_argument("--faiss-worker", help=argparse.SUPPRESS)
    p.add_argument("--gen-worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.faiss_worker:
        return faiss_worker(a.faiss_worker, a.threads)
    if a.gen_worker:
        return generate(a.gen_worker, a.n, a.classes, a.d, a.seed)
    if not Path(a.hist).exists():
        sys.exit(f"bench_eval: {a.hist} not found; run `cargo build --bin hist` first")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "sop_like.safetensors"
        print(f"generating {a.n} x {a.d}", file=sys.stderr, flush=True)
        # In a child, so this process stays small: a child's peak RSS can include its
        # parent's pages from before the exec.
        gen = run_child([sys.executable, __file__, "--gen-worker", str(data), "--n", str(a.n), "--classes", str(a.classes),
                         "--d", str(a.d), "--seed", str(a.seed)], a.threads)
        load0 = loadavg()
        ks = ",".join(map(str, KS))
        print("ours", file=sys.stderr, flush=True)
        ours = run_child([a.hist, "eval", "--embeddings", str(data), "--json", "--ks", ks, "--kmeans-restarts", "0"], a.threads)
        print("faiss", file=sys.stderr, flush=True)
        faiss_r = run_child([sys.executable, __file__, "--faiss-worker", str(data), "--threads", str(a.threads)], a.threads)
        nmi = None
        if a.nmi:
            print("ours with NMI", file=sys.stderr, flush=True)
            r = run_child([a.hist, "eval", "--embeddings", str(data), "--json", "--ks", ks, "--kmeans-restarts", "1", "--kmeans-iters", "20"], a.threads)
            nmi = (r[0], r[1])
        load1 = loadavg()
    text = section(a, ours, faiss_r, nmi, started, load0, load1, gen[0]["torch"])
    print(text)
    write_section(Path(a.output), text)


if __name__ == "__main__":
    main()
