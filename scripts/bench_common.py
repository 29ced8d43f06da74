"""What the benchmark scripts (scripts/bench_*.py) share: where the repository is, how a
report names the machine, its load and the code measured, and how one section of
docs/benchmarks.md is replaced while the others are kept.

The scripts import it as `bench_common`: Python puts a script's own folder on sys.path,
so this works for `$HIST_PYTHON scripts/bench_X.py` and for the worker subprocesses the
scripts start with their own `__file__`.
"""
import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu_model():
    """The CPU's model name from /proc/cpuinfo ("unknown" where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def l3_cache():
    """", L3 <size>" as lscpu reports it, or "" where lscpu does not say."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return ""
    for line in out.splitlines():
        if line.startswith("L3 cache:"):
            return ", L3 " + line.split(":", 1)[1].strip()
    return ""


def machine():
    """One line for a report: CPUs (and how many this process may use), model, L3, RAM, kernel."""
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {cpu_model()}{l3_cache()}, "
            f"{mem_gib:.0f} GiB RAM, Linux {platform.release()}")


def loadavg():
    """The 1, 5 and 15 minute load averages, e.g. "1.52 1.20 0.98" (the machine may be shared)."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def git_rev(*paths):
    """HEAD's short hash, marked when the working tree differs from it in `paths` (default:
    anywhere), so a report says whether it measured committed code."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        # diff-index only reads; git status may rewrite the index, which other work may hold.
        dirty = subprocess.run(["git", "diff-index", "--quiet", "HEAD", "--", *paths], cwd=ROOT).returncode != 0
    except OSError:
        return "unknown"
    if not rev:
        return "unknown"
    if not dirty:
        return rev
    return rev + (f" ({', '.join(paths)} modified)" if paths else " with uncommitted changes")


def write_section(path, heading, text):
    """Writes `text` as the section of the Markdown file `path` that starts with `heading`
    (a "## ..." line), replacing that section up to the next "## " heading or appending
    it; every other section is kept."""
    path = Path(path)
    old = path.read_text() if path.exists() else "# Benchmarks\n\n"
    text = text.rstrip("\n") + "\n"
    start = old.find(heading)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + 1)
        new = old[:start] + text + ("\n" + old[end + 1:] if end >= 0 else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new.rstrip("\n") + "\n")
