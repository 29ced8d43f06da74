//! Real 2-rank training jobs under hist-launch: a worker SIGKILLed mid-training tears the
//! job down within 5 s with no orphans, and hostile rendezvous clients do not disturb a job.
//! Needs the `hist` worker beside hist-launch, as `cargo test --workspace` builds it.
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SMALL: &[&str] = &[
    "data.synthetic.train_classes=16", "data.synthetic.test_classes=6", "data.synthetic.images_per_class=10",
    "data.batch_size=40", "data.ipc=5", "model.width=8", "model.embedding_dim=16", "loss.hgnn_hidden=32",
    "train.eval_at_start=false",
];

fn launcher() -> Command {
    let worker = PathBuf::from(env!("CARGO_BIN_EXE_hist-launch")).with_file_name("hist");
    assert!(worker.is_file(), "{} missing: run `cargo test --workspace` (it builds the worker)", worker.display());
    Command::new(env!("CARGO_BIN_EXE_hist-launch"))
}

fn with_sets(cmd: &mut Command, sets: &[&str]) {
    for s in sets {
        cmd.arg("--set").arg(s);
    }
}

/// Child processes of `parent` (from /proc), with the RANK in their environment.
fn children_with_rank(parent: u32) -> Vec<(u32, Option<String>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // Fields after the parenthesised command name: state, ppid, ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r.to_string()) else { continue };
        let ppid: u32 = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        if ppid == parent {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let rank = environ
                .split(|&b| b == 0)
                .filter_map(|kv| std::str::from_utf8(kv).ok())
                .find_map(|kv| kv.strip_prefix("RANK=").map(str::to_string));
            out.push((pid, rank));
        }
    }
    out
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').map(|(_, r)| r.trim_start().chars().next() != Some('Z')).unwrap_or(false),
        Err(_) => false,
    }
}

#[test]
fn sigkilled_worker_tears_the_job_down_within_5_s() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cmd = launcher();
    cmd.args(["--nproc", "2", "--run-dir"]).arg(tmp.path().join("run"));
    with_sets(&mut cmd, SMALL);
    with_sets(&mut cmd, &["train.epochs=500", "train.print_every=1"]);
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn hist-launch");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    // Wait until training is under way: rank 0 prints per-step losses.
    let started = Instant::now();
    loop {
        let line = lines.next().expect("launcher output ended early").expect("read");
        if line.contains("[rank 0] step 2 ") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "training did not start");
    }
    let workers = children_with_rank(child.id());
    let victim = workers.iter().find(|(_, r)| r.as_deref() == Some("1")).map(|(p, _)| *p).expect("rank 1 worker");
    assert_eq!(workers.len(), 2, "{workers:?}");
    // SAFETY: plain kill(2) on a pid we just read from /proc.
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    let killed_at = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(killed_at.elapsed() < Duration::from_secs(10), "hist-launch still running 10 s after the kill");
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = killed_at.elapsed();
    assert!(!status.success());
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert!(err.contains("rank 1 failed (killed by signal 9"), "{err}");
    for (pid, _) in &workers {
        assert!(!alive(*pid), "worker {pid} outlived the job");
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Opens the three kinds of hostile connection against `port` while `done` is false.
fn harass(port: u16, done: &std::sync::atomic::AtomicBool) -> usize {
    use std::sync::atomic::Ordering;
    let addr = format!("127.0.0.1:{port}");
    let mut silent = Vec::new();
    let mut attempts = 0;
    while !done.load(Ordering::Relaxed) {
        let wrong = hist_rendezvous::Client::connect(&addr, "not-the-secret", 0, 2, Duration::from_millis(200));
        assert!(wrong.is_err(), "a wrong secret was accepted");
        if let Ok(mut s) = TcpStream::connect(&addr) {
            let noise: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
            let _ = s.write_all(&noise);
        }
        if let Ok(s) = TcpStream::connect(&addr) {
            silent.push(s); // connects and never says anything
        }
        attempts += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    attempts
}

#[test]
fn hostile_rendezvous_clients_do_not_stop_a_two_rank_job() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let tmp = tempfile::tempdir().expect("tempdir");
    let run_dir = tmp.path().join("run");
    let port = free_port();
    let done = AtomicBool::new(false);
    let (status, attempts) = std::thread::scope(|s| {
        let attacker = s.spawn(|| harass(port, &done));
        let mut cmd = launcher();
        cmd.args(["--nproc", "2", "--master-port", &port.to_string(), "--run-dir"]).arg(&run_dir);
        with_sets(&mut cmd, SMALL);
        with_sets(&mut cmd, &["train.max_steps=6"]);
        let out = cmd.output().expect("run hist-launch");
        done.store(true, Ordering::Relaxed);
        (out, attacker.join().expect("attacker"))
    });
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    assert!(attempts > 0, "no hostile connection was attempted");
    assert!(Path::new(&run_dir.join("final.safetensors")).is_file());
}

#[test]
fn sigterm_stops_every_rank_after_the_same_step() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cmd = launcher();
    cmd.args(["--nproc", "2", "--run-dir"]).arg(tmp.path().join("run"));
    with_sets(&mut cmd, SMALL);
    with_sets(&mut cmd, &["train.epochs=500", "train.print_every=1"]);
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn hist-launch");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let started = Instant::now();
    loop {
        let line = lines.next().expect("launcher output ended early").expect("read");
        if line.contains("[rank 0] step 3 ") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "training did not start");
    }
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let rest: Vec<String> = lines.map_while(std::result::Result::ok).collect();
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(143), "{rest:?}");
    let stop_line = rest.iter().find(|l| l.contains("stopping at step")).unwrap_or_else(|| panic!("no orderly stop: {rest:?}"));
    assert!(stop_line.contains("Terminate"), "{stop_line}");
}

/// Runs a 2-rank job to completion and returns (final.safetensors bytes, metrics.jsonl).
fn finished_run(dir: &Path, sets: &[&str]) -> (Vec<u8>, String) {
    let mut cmd = launcher();
    cmd.args(["--nproc", "2", "--run-dir"]).arg(dir);
    with_sets(&mut cmd, SMALL);
    with_sets(&mut cmd, sets);
    let out = cmd.output().expect("run hist-launch");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (
        std::fs::read(dir.join("final.safetensors")).expect("final.safetensors"),
        std::fs::read_to_string(dir.join("metrics.jsonl")).expect("metrics.jsonl"),
    )
}

#[test]
fn sigterm_then_resume_gives_the_uninterrupted_result() {
    let sets = ["train.epochs=8", "train.print_every=1", "model.bn=frozen", "checkpoint.every_steps=2"];
    let tmp = tempfile::tempdir().expect("tempdir");
    let (want_params, want_metrics) = finished_run(&tmp.path().join("straight"), &sets);

    let dir = tmp.path().join("interrupted");
    let mut cmd = launcher();
    cmd.args(["--nproc", "2", "--run-dir"]).arg(&dir);
    with_sets(&mut cmd, SMALL);
    with_sets(&mut cmd, &sets);
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn hist-launch");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    // Mid-epoch: 16 classes × 10 images / 40 = 4 steps per epoch; stop during the second.
    loop {
        let line = lines.next().expect("output ended early").expect("read");
        if line.contains("[rank 0] step 5 ") {
            break;
        }
    }
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _: Vec<String> = lines.map_while(std::result::Result::ok).collect();
    assert_eq!(child.wait().expect("wait").code(), Some(143));
    assert!(!dir.join("final.safetensors").exists(), "an interrupted run must not look finished");

    let (got_params, got_metrics) = finished_run(&dir, &sets);
    assert!(got_params == want_params, "resumed parameters differ from the uninterrupted run");
    assert_eq!(got_metrics, want_metrics, "metrics.jsonl has duplicated or missing records");
}

#[test]
fn sigkilled_worker_with_max_restarts_gives_the_uninterrupted_result() {
    let sets = ["train.epochs=8", "train.print_every=1", "model.bn=frozen", "checkpoint.every_steps=2"];
    let tmp = tempfile::tempdir().expect("tempdir");
    let (want_params, want_metrics) = finished_run(&tmp.path().join("straight"), &sets);

    let dir = tmp.path().join("restarted");
    let mut cmd = launcher();
    cmd.args(["--nproc", "2", "--max-restarts", "1", "--run-dir"]).arg(&dir);
    with_sets(&mut cmd, SMALL);
    with_sets(&mut cmd, &sets);
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn hist-launch");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    // A step chosen from the clock, so the kill lands at varying points (between checkpoints too).
    let kill_step = 5 + (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0) % 6);
    let marker = format!("[rank 0] step {kill_step} ");
    loop {
        let line = lines.next().expect("output ended early").expect("read");
        if line.contains(&marker) {
            break;
        }
    }
    let workers = children_with_rank(child.id());
    let victim = workers.iter().find(|(_, r)| r.as_deref() == Some("1")).map(|(p, _)| *p).expect("rank 1 worker");
    // SAFETY: plain kill(2) on a pid we just read from /proc.
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    let _: Vec<String> = lines.map_while(std::result::Result::ok).collect();
    let status = child.wait().expect("wait");
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert!(status.success(), "killed at step {kill_step}; the restarted job failed: {err}");
    assert!(err.contains("restarting the job from its latest checkpoint (restart 1 of 1)"), "{err}");
    let got_params = std::fs::read(dir.join("final.safetensors")).expect("final.safetensors");
    let got_metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).expect("metrics.jsonl");
    assert!(got_params == want_params, "killed at step {kill_step}: parameters differ from the uninterrupted run");
    assert_eq!(got_metrics, want_metrics, "killed at step {kill_step}: metrics.jsonl differs");
}

/// Starts a 2-rank job in `dir` and sends `signal` to the launcher once rank 0 has printed
/// step 5 (mid-epoch: 4 steps per epoch); returns the launcher's exit status.
fn interrupt_at_step_5(dir: &Path, sets: &[&str], signal: i32, env: &[(&str, &str)]) -> Option<i32> {
    let mut cmd = launcher();
    cmd.args(["--nproc", "2", "--master-port", "0", "--run-dir"]).arg(dir);
    with_sets(&mut cmd, SMALL);
    with_sets(&mut cmd, sets);
    cmd.envs(env.iter().copied());
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn hist-launch");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    loop {
        let line = lines.next().expect("output ended early").expect("read");
        if line.contains("[rank 0] step 5 ") {
            break;
        }
    }
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, signal) };
    let _: Vec<String> = lines.map_while(std::result::Result::ok).collect();
    child.wait().expect("wait").code()
}

#[test]
fn sigusr1_under_slurm_checkpoints_requeues_and_the_requeued_job_resumes_exactly() {
    let sets = ["train.epochs=8", "train.print_every=1", "model.bn=frozen", "checkpoint.every_steps=100"];
    let tmp = tempfile::tempdir().expect("tempdir");
    let (want_params, want_metrics) = finished_run(&tmp.path().join("straight"), &sets);

    // A stand-in for SLURM's scontrol that records how it was called.
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir bin");
    let calls = tmp.path().join("scontrol-calls");
    let scontrol = bin.join("scontrol");
    std::fs::write(&scontrol, format!("#!/bin/sh\necho \"$@\" >> '{}'\n", calls.display())).expect("write scontrol");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&scontrol, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());

    let dir = tmp.path().join("preempted");
    let env = [("SLURM_JOB_ID", "4242"), ("SLURM_NNODES", "1"), ("SLURM_NODEID", "0"), ("PATH", path.as_str())];
    let status = interrupt_at_step_5(&dir, &sets, libc::SIGUSR1, &env);
    assert_eq!(status, Some(138), "the launcher reports the preemption stop");
    let recorded = std::fs::read_to_string(&calls).unwrap_or_default();
    assert_eq!(recorded.trim(), "requeue 4242", "rank 0 (only) asks SLURM to requeue the job");
    assert!(!dir.join("final.safetensors").exists(), "a preempted run must not look finished");
    // No periodic checkpoint before step 100: what exists was written on SIGUSR1.
    let saved = std::fs::read_dir(dir.join("checkpoints")).expect("checkpoints/").count();
    assert!(saved >= 1, "SIGUSR1 wrote a checkpoint");

    // The requeued job: same command, same run directory.
    let (got_params, got_metrics) = finished_run(&dir, &sets);
    assert!(got_params == want_params, "resumed parameters differ from the uninterrupted run");
    assert_eq!(got_metrics, want_metrics, "metrics.jsonl has duplicated or missing records");
}

/// Largest max|a - b| / max|b| over the tensors of two safetensors files (relative to each
/// tensor's scale, so entries near zero do not blow it up), computed by the project's Python.
fn max_relative_difference(a: &Path, b: &Path) -> f64 {
    let python = std::env::var("HIST_PYTHON").expect("HIST_PYTHON (run scripts/setup.sh)");
    let script = "import sys, numpy as np\n\
from safetensors.numpy import load_file\n\
a, b = load_file(sys.argv[1]), load_file(sys.argv[2])\n\
assert a.keys() == b.keys(), sorted(set(a) ^ set(b))\n\
print(max(float(np.max(np.abs(a[k] - b[k])) / max(np.max(np.abs(b[k])), 1e-12)) if a[k].size else 0.0 for k in a))\n";
    let out = Command::new(python).arg("-c").arg(script).arg(a).arg(b).output().expect("run python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("a number")
}

#[test]
fn a_two_rank_run_resumed_on_one_rank_matches_the_one_rank_run() {
    // f64 so that the only differences left are summation order (design §3's invariant).
    let sets = ["train.epochs=4", "train.print_every=1", "model.bn=frozen", "checkpoint.every_steps=100", "dtype=f64"];
    let tmp = tempfile::tempdir().expect("tempdir");
    let straight = tmp.path().join("one-rank");
    let mut cmd = launcher();
    cmd.args(["--nproc", "1", "--run-dir"]).arg(&straight);
    with_sets(&mut cmd, SMALL);
    with_sets(&mut cmd, &sets);
    let out = cmd.output().expect("run hist-launch");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let dir = tmp.path().join("two-then-one");
    assert_eq!(interrupt_at_step_5(&dir, &sets, libc::SIGTERM, &[]), Some(143));
    let mut cmd = launcher();
    cmd.args(["--nproc", "1", "--run-dir"]).arg(&dir);
    with_sets(&mut cmd, SMALL);
    with_sets(&mut cmd, &sets);
    let out = cmd.output().expect("run hist-launch");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("world size"), "the worker says the world size changed: {stdout}");
    let diff = max_relative_difference(&dir.join("final.safetensors"), &straight.join("final.safetensors"));
    eprintln!("2 ranks → 1 rank resume vs 1 rank throughout: max relative difference {diff:e}");
    assert!(diff < 1e-9, "max relative difference {diff:e}");
}
