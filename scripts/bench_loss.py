#!/usr/bin/env python3
"""HIST loss benchmark: forward + backward time and peak memory on the CPU, in f32, of
  ours          `hist bench-loss` (the tch implementation in src/loss/),
  materialising the authors' PyTorch code (github.com/ljin0429/HIST, code/hist.py), which
                builds the N×C×D difference for the distances and a dense N×N G,
  floor         the bare matrix products of size N×C×512 the loss needs — two for the
                distances (x̂²·(1/σ²)ᵀ and x̂·(m̂/σ²)ᵀ) and the HGNN's output layer
                (h·W2ᵀ, W2 of shape [C, 512]) — forward, and their six backward products
                ([N,C]×[C,D], [C,N]×[N,D]): nine products in all,
each in a fresh subprocess with the same thread count; then writes (or replaces) the
"## HIST loss" section of docs/benchmarks.md.

Run from the repository root, after `cargo build --bin hist`:
    $HIST_PYTHON scripts/bench_loss.py            # HIST_PYTHON: see .cargo/config.toml

Peak memory of a measured region = VmHWM − VmRSS, read from /proc/self/status after the
peak was reset to the current RSS by writing "5" to /proc/self/clear_refs (after warm-up,
with the inputs allocated). Every subprocess runs with glibc's mmap threshold pinned
(MALLOC_MMAP_THRESHOLD_), so freed tensors go back to the OS and the RSS follows the live
tensors instead of malloc's retained heap. The timed runs instead keep freed memory, every
implementation with the settings `hist` gives itself (src/heap.rs).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_common import ROOT, git_rev, loadavg, machine, write_section

SECTION = "## HIST loss"
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
# The timed runs, every implementation alike: the settings `hist` applies to itself
# (src/heap.rs), so freed tensors are reused rather than page-faulted in again.
RETAIN_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1),
              "MALLOC_TOP_PAD_": str(256 << 20)}
SUB_BATCH_CAP_BYTES = 4 << 30  # the materialising run is sub-batched above this estimate


# ---------------------------------------------------------------- measurement helpers
def status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def measure(step, reps, warmup):
    """Times `step()` reps times after warmup calls; returns the report fields."""
    for _ in range(warmup):
        step()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        method = "clear_refs reset of VmHWM, VmHWM - VmRSS"
    except OSError:
        method = "VmHWM - VmRSS (no reset: includes warm-up)"
    base = status_kib("VmRSS:")
    times = []
    value = None
    for _ in range(reps):
        t0 = time.perf_counter()
        value = step()
        times.append((time.perf_counter() - t0) * 1e3)
    peak = status_kib("VmHWM:")
    return {"median_ms": statistics.median(times), "min_ms": min(times), "times_ms": times,
            "baseline_rss_mb": base / 1024, "peak_growth_mb": max(0, peak - base) / 1024,
            "peak_method": method, "loss": value}


# ---------------------------------------------------------------- the PyTorch workers
def worker(a):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    n, c, d, hid = a.n, a.c, a.d, a.hidden

    if a.impl == "floor":
        xs = [torch.randn(n, d) for _ in range(3)]
        ms = [torch.randn(c, d) for _ in range(3)]
        g_out = torch.randn(n, c)

        def step():
            # Forward: the three [N,D]×[D,C] products; backward: dA = G·B, dB = Gᵀ·A each.
            outs = [torch.mm(x, m.t()) for x, m in zip(xs, ms)]
            grads = [(torch.mm(g_out, m), torch.mm(g_out.t(), x)) for x, m in zip(xs, ms)]
            del outs, grads
            return None

        return {"impl": "floor (9 matmuls)", **measure(step, a.reps, a.warmup)}

    # The authors' code (code/hist.py), on the CPU; binarize(T) is a one-hot of the labels.
    def pairwise_mahalanobis(X, means, log_vars):
        new_X = torch.unsqueeze(X, dim=1).expand(-1, means.size(0), -1)
        new_means = torch.unsqueeze(means, dim=0).expand(X.size(0), -1, -1)
        diff = new_X - new_means
        covs = torch.unsqueeze(torch.exp(log_vars), dim=0)
        return torch.div(diff.pow(2), covs).sum(dim=-1)

    def cds2hg(X, T, mu, log_vars, tau, alpha):
        log_vars = F.relu6(log_vars)
        X = F.normalize(X, p=2, dim=-1)
        mu = F.normalize(mu, p=2, dim=-1)
        P_one_hot = F.one_hot(T, c).float()
        distance = pairwise_mahalanobis(X, mu, log_vars)
        mat = F.softmax(-1 * tau * distance, dim=1)
        loss = torch.sum(mat * P_one_hot, dim=1)
        non_zero = loss != 0
        loss = -torch.log(loss[non_zero])
        class_within_batch = torch.nonzero(P_one_hot.sum(dim=0) != 0).squeeze(dim=1)
        exp_term = torch.exp(-1 * alpha * distance[:, class_within_batch])
        H = P_one_hot[:, class_within_batch] + exp_term * (1 - P_one_hot[:, class_within_batch])
        return loss.mean(), H

    def compute_G(H):
        we = torch.ones(H.size(1))
        Dv = (H * we).sum(dim=1)
        De = H.sum(dim=0)
        return torch.linalg.multi_dot([torch.diag(torch.pow(Dv, -0.5)), H, torch.diag(we),
                                       torch.diag(torch.pow(De, -1)), torch.t(H),
                                       torch.diag(torch.pow(Dv, -0.5))])

    def hgnn(X, H, w1, b1, bn_w, bn_b, w2, b2):
        G = compute_G(H)
        X = G.matmul(F.linear(X, w1, b1))
        X = F.batch_norm(X, None, None, bn_w, bn_b, training=True, momentum=0.1, eps=1e-5)
        X = F.leaky_relu(X, 0.1)
        return G.matmul(F.linear(X, w2, b2))

    distinct = min(-(-n // a.ipc), c)
    labels = torch.randperm(c)[:distinct][torch.arange(n) % distinct]
    u = lambda shape, fan: (torch.rand(*shape) * 2 - 1) / fan ** 0.5
    leaves = [torch.randn(n, d), torch.randn(c, d) * (2 / c) ** 0.5,
              torch.randn(c, d) * (2 / c) ** 0.5, u((hid, d), d), u((hid,), d),
              torch.ones(hid), torch.zeros(hid), u((c, hid), hid), u((c,), hid)]
    leaves = [t.requires_grad_(True) for t in leaves]

    def step():
        x, means, log_vars, w1, b1, bn_w, bn_b, w2, b2 = leaves
        dist_loss, H = cds2hg(x, labels, means, log_vars, 32.0, 0.9)
        out = hgnn(x, H, w1, b1, bn_w, bn_b, w2, b2)
        loss = dist_loss + 1.0 * F.cross_entropy(out, labels)
        grads = torch.autograd.grad(loss, leaves)
        del grads
        return float(loss.detach())

    return {"impl": "materialising (authors' code)", **measure(step, a.reps, a.warmup)}


# ---------------------------------------------------------------- orchestration
def run_json(cmd, threads, pin_malloc):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.update(MALLOC_ENV if pin_malloc else RETAIN_ENV)
    out = subprocess.run([str(x) for x in cmd], cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"bench_loss: {' '.join(map(str, cmd))} failed ({out.returncode}):\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def timed_and_measured(cmd, reps, warmup, threads):
    """Two fresh processes: times under the default allocator (memory reused as in a
    training loop), then the peak with the mmap threshold pinned (2 passes)."""
    timing = run_json(cmd + ["--reps", reps, "--warmup", warmup], threads, pin_malloc=False)
    memory = run_json(cmd + ["--reps", 2, "--warmup", 1], threads, pin_malloc=True)
    return dict(timing, peak_growth_mb=memory["peak_growth_mb"], peak_method=memory["peak_method"],
                loss_memory_run=memory["loss"])


def py_worker(impl, n, c, a, reps, warmup):
    cmd = [sys.executable, __file__, "worker", "--impl", impl, "--n", n, "--c", c, "--d", a.d,
           "--hidden", a.hidden, "--threads", a.threads, "--ipc", a.ipc]
    return timed_and_measured(cmd, reps, warmup, a.threads)


def ours(n, c, a):
    cmd = [a.hist, "bench-loss", "--n", n, "--c", c, "--d", a.d, "--hidden", a.hidden,
           "--threads", a.threads, "--ipc", a.ipc]
    return timed_and_measured(cmd, a.reps, 2, a.threads)


def mem_available_bytes():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def materialising_batch(n, c, d):
    """Largest N' = N / 2^k whose N'×C×D run fits the cap (estimate: 6 live N'·C·D f32
    tensors at the peak of the backward)."""
    cap = min(SUB_BATCH_CAP_BYTES, int(0.35 * mem_available_bytes()))
    sub = n
    while sub > 8 and 6 * sub * c * d * 4 > cap:
        sub //= 2
    return sub


def fmt_ms(r):
    return f"{r['median_ms']:.1f} ({r['min_ms']:.1f})"


def section(a, rows, started, load0, load1, torch_version):
    n, d = a.n, a.d
    lines = ["## HIST loss", "",
             f"Forward + backward of the HIST loss on the CPU, f32, N = {n}, D = {d}, HGNN hidden "
             f"{a.hidden}, class-balanced batch ({a.ipc} images per class), gradients for the "
             f"embeddings, prototypes and HGNN weights; {a.threads} threads for every implementation. "
             "Times in ms, median (min) of the timed passes after warm-up, under the default "
             "allocator; peak = growth of the process's resident set over two passes, in MiB, "
             "measured in a second fresh process (see below).",
             "",
             "- **ours**: `hist bench-loss` (src/loss/, tch over libtorch); distances as "
             "expanded products in one autograd Function with a fused per-row backward "
             "(csrc/mahalanobis.cpp), G applied as row/column scalings.",
             "- **materialising**: the authors' PyTorch code (code/hist.py of "
             "github.com/ljin0429/HIST) on the CPU: N×C×D difference tensor, dense diagonal "
             "matrices for G.",
             "- **floor**: only the N×C×512 matrix products the loss needs — two for the "
             "distances and the HGNN's output layer (W2 is [C, 512]) — forward, and their six "
             "backward products (dA = G·B, dB = Gᵀ·A): nine products in all.",
             "",
             "| C | ours ms | materialising ms | floor ms | materialising / ours | ours / floor "
             "| ours peak MiB | materialising peak MiB | floor peak MiB | ours peak / (N·C + C·D)·4 B |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for row in rows:
        c, o, m, f = row["c"], row["ours"], row["mat"], row["floor"]
        mark = "≈" if m["sub_batch"] != n else ""
        if mark:
            note = (f"C = {c}: the materialising run needs ≈ {6 * n * c * d * 4 / 2**30:.0f} GiB at "
                    f"N = {n}, more than this machine can spare; it ran at N' = {m['sub_batch']} and its "
                    f"time and peak are scaled by N/N' = {n // m['sub_batch']} (marked ≈).")
            if "c_scaled" in m:
                cs = m["c_scaled"]
                note += (f" Cross-check, scaling the full-size C = {cs['from_c']} run by C instead: "
                         f"{cs['median_ms']:.0f} ms ({cs['min_ms']:.0f}), {cs['peak_growth_mb']:.0f} MiB. "
                         f"(Scaling in N can flatter the sub-batch, whose N'×C×D tensors "
                         f"({m['sub_batch'] * c * d * 4 / 2**20:.0f} MiB) sit closer to the cache size; the "
                         "goal below uses the smaller estimate.)")
            notes.append(note)
        unit = (n * c + c * d) * 4 / 2**20
        lines.append(
            f"| {c} | {fmt_ms(o)} | {mark}{m['median_ms']:.0f} ({mark}{m['min_ms']:.0f}) | {fmt_ms(f)} "
            f"| {mark}{m['median_ms'] / o['median_ms']:.1f}× | {o['median_ms'] / f['median_ms']:.2f}× "
            f"| {o['peak_growth_mb']:.1f} | {mark}{m['peak_growth_mb']:.0f} | {f['peak_growth_mb']:.1f} "
            f"| {o['peak_growth_mb'] / unit:.1f} |")
    lines.append("")
    for note in notes:
        lines.append(f"- {note}")
    big = rows[-1]
    o, m, f = big["ours"], big["mat"], big["floor"]
    m_ms = min(m["median_ms"], m.get("c_scaled", m)["median_ms"])
    lines += ["",
              f"Goals at C = {big['c']}: ≥ 10× faster than materialising — "
              f"{m_ms / o['median_ms']:.0f}×; within 2× of the floor — "
              f"{o['median_ms'] / f['median_ms']:.2f}× on medians, {o['min_ms'] / f['min_ms']:.2f}× on "
              f"mins; peak memory ∝ N·C + C·D, not N·C·D — "
              f"{o['peak_growth_mb']:.0f} MiB against N·C·D·4 B = {n * big['c'] * d * 4 / 2**20:.0f} MiB "
              f"and (N·C + C·D)·4 B = {(n * big['c'] + big['c'] * d) * 4 / 2**20:.1f} MiB (last column: "
              "a ratio that levels off as C grows means growth ∝ N·C + C·D; at small C, fixed-size "
              "buffers weigh more).",
              "",
              f"Produced by `cargo build --bin hist && {a.command}` on {started} (git {git_rev('src/loss', 'csrc', 'src/heap.rs')}, torch {torch_version}, "
              f"`hist` built with the dev profile: opt-level 1, dependencies at 3; the loss runs "
              f"inside libtorch). Machine: {machine()}; load average {load0} before, {load1} after "
              "(the machine is shared, so medians are noisy; the mins are the cleaner figure).",
              "",
              "Peak memory: a separate fresh process per implementation and C, run with glibc's mmap "
              "threshold pinned (MALLOC_MMAP_THRESHOLD_=131072, MALLOC_TRIM_THRESHOLD_=131072) so "
              "that freed tensors return to the OS and the RSS tracks live tensors rather than "
              "malloc's retained heap. After one warm-up pass, with the inputs allocated, it writes "
              "\"5\" to /proc/self/clear_refs, which resets VmHWM to the current VmRSS; the figure "
              "is VmHWM − VmRSS after two passes. (Times come from separate runs in which every "
              "implementation keeps freed memory, as `hist` sets glibc's malloc for itself "
              "(src/heap.rs: MALLOC_MMAP_THRESHOLD_=2^30, MALLOC_TRIM_THRESHOLD_=2^31−1, "
              "MALLOC_TOP_PAD_=256 MiB): pinning the threshold makes every large tensor a fresh "
              "mmap and page-faults, which slowed ours about 2× at C = 1000 in a trial.)", ""]
    return "\n".join(lines)


def main_run(a):
    import torch

    if not Path(a.hist).exists():
        sys.exit(f"bench_loss: {a.hist} not found; run `cargo build --bin hist` first")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load0 = loadavg()
    rows = []
    for c in a.classes:
        print(f"C = {c}: ours", file=sys.stderr, flush=True)
        o = ours(a.n, c, a)
        print(f"C = {c}: floor", file=sys.stderr, flush=True)
        f = py_worker("floor", a.n, c, a, a.reps, 2)
        sub = materialising_batch(a.n, c, a.d)
        print(f"C = {c}: materialising at N = {sub}", file=sys.stderr, flush=True)
        m = py_worker("materialising", sub, c, a, a.mat_reps, 1)
        scale = a.n // sub
        m = dict(m, sub_batch=sub, median_ms=m["median_ms"] * scale, min_ms=m["min_ms"] * scale,
                 peak_growth_mb=m["peak_growth_mb"] * scale)
        rows.append({"c": c, "ours": o, "floor": f, "mat": m})
        print(json.dumps(rows[-1]), flush=True)
    # Cross-check of a sub-batched estimate: scale the largest C that ran in full by C
    # instead (its N×C×D tensors were out of cache, as the full-size run's would be).
    full = [r for r in rows if r["mat"]["sub_batch"] == a.n]
    if full:
        base = full[-1]
        for r in rows:
            if r["mat"]["sub_batch"] != a.n:
                k = r["c"] / base["c"]
                r["mat"]["c_scaled"] = {"from_c": base["c"], "median_ms": base["mat"]["median_ms"] * k,
                                        "min_ms": base["mat"]["min_ms"] * k,
                                        "peak_growth_mb": base["mat"]["peak_growth_mb"] * k}
    text = section(a, rows, started, load0, loadavg(), torch.__version__)
    write_section(ROOT / a.output, SECTION, text)
    print(text)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd")
    w = sub.add_parser("worker", help="(internal) one PyTorch measurement, JSON on stdout")
    w.add_argument("--impl", choices=["materialising", "floor"], required=True)
    for k, v in (("n", 256), ("c", 1000), ("d", 512), ("hidden", 512), ("reps", 5),
                 ("warmup", 1), ("threads", 2), ("ipc", 4), ("seed", 0)):
        w.add_argument("--" + k, type=int, default=v)
    p.add_argument("--hist", default=str(ROOT / "target/debug/hist"))
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--classes", type=int, nargs="+", default=[100, 1000, 11318])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ipc", type=int, default=4)
    p.add_argument("--reps", type=int, default=20, help="timed passes of ours and the floor")
    p.add_argument("--mat-reps", type=int, default=3, help="timed passes of the materialising code")
    p.add_argument("--output", default="docs/benchmarks.md")
    a = p.parse_args()
    if a.cmd == "worker":
        print(json.dumps(worker(a)))
    else:
        a.command = " ".join(["$HIST_PYTHON scripts/bench_loss.py"] + sys.argv[1:])
        main_run(a)


if __name__ == "__main__":
    main()
