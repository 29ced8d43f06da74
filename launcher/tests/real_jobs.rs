//! Real 2-rank training jobs under hist-launch: a worker SIGKILLed mid-training tears the
//! job down within 5 s with no orphans, and hostile rendezvous clients do not disturb a job.
//! Needs the `hist` worker beside hist-launch, as `cargo test --workspace` builds it.
use std::io::{BufRead, BufReader, Lines, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
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
        Ok(stat) => stat.rsplit_once(')').map(|(_, r)| !r.trim_start().starts_with('Z')).unwrap_or(false),
        Err(_) => false,
    }
}

/// hist-launch with `launch_args` (e.g. `--nproc 2`) running the SMALL job plus `sets` in `dir`.
fn job(launch_args: &[&str], dir: &Path, sets: &[&str]) -> Command {
    let mut cmd = launcher();
    cmd.args(launch_args).arg("--run-dir").arg(dir);
    for s in SMALL.iter().chain(sets) {
        cmd.arg("--set").arg(s);
    }
    cmd
}

type StdoutLines = Lines<BufReader<ChildStdout>>;

/// Spawns `cmd` with stdout piped and returns once rank 0 has printed step `step`, with
/// the rest of stdout (pass `Stdio::null()` as `stderr` unless it is read: a full pipe
/// would block the launcher).
fn spawn_until_step(mut cmd: Command, stderr: Stdio, step: u32) -> (Child, StdoutLines) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(stderr).spawn().expect("spawn hist-launch");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let marker = format!("[rank 0] step {step} ");
    let started = Instant::now();
    loop {
        let line = lines.next().unwrap_or_else(|| panic!("launcher output ended before {marker:?}")).expect("read");
        if line.contains(&marker) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no {marker:?} within 120 s");
    }
    (child, lines)
}

/// Sends `signal` to process `pid`.
fn send(pid: u32, signal: i32) {
    // SAFETY: plain kill(2); the pids come from our own children or /proc.
    unsafe { libc::kill(pid as i32, signal) };
}

/// The job's two workers and the pid of rank 1's.
fn workers_and_rank_1(launcher_pid: u32) -> (Vec<(u32, Option<String>)>, u32) {
    let workers = children_with_rank(launcher_pid);
    let victim = workers.iter().find(|(_, r)| r.as_deref() == Some("1")).map(|(p, _)| *p).expect("rank 1 worker");
    (workers, victim)
}

/// Everything the child wrote to its (piped) stderr.
fn read_stderr(child: &mut Child) -> String {
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    err
}

/// A finished run's final.safetensors bytes and metrics.jsonl.
fn outputs(dir: &Path) -> (Vec<u8>, String) {
    (
        std::fs::read(dir.join("final.safetensors")).expect("final.safetensors"),
        std::fs::read_to_string(dir.join("metrics.jsonl")).expect("metrics.jsonl"),
    )
}

/// Runs `cmd` to completion, asserting success; returns its stdout.
fn run_to_end(mut cmd: Command) -> String {
    let out = cmd.output().expect("run hist-launch");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn sigkilled_worker_tears_the_job_down_within_5_s() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cmd = job(&["--nproc", "2"], &tmp.path().join("run"), &["train.epochs=500", "train.print_every=1"]);
    // Wait until training is under way: rank 0 prints per-step losses.
    let (mut child, _lines) = spawn_until_step(cmd, Stdio::piped(), 2);
    let (workers, victim) = workers_and_rank_1(child.id());
    assert_eq!(workers.len(), 2, "{workers:?}");
    send(victim, libc::SIGKILL);
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
    let err = read_stderr(&mut child);
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
        let out = job(&["--nproc", "2", "--master-port", &port.to_string()], &run_dir, &["train.max_steps=6"])
            .output()
            .expect("run hist-launch");
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
    let cmd = job(&["--nproc", "2"], &tmp.path().join("run"), &["train.epochs=500", "train.print_every=1"]);
    let (mut child, lines) = spawn_until_step(cmd, Stdio::null(), 3);
    send(child.id(), libc::SIGTERM);
    let rest: Vec<String> = lines.map_while(std::result::Result::ok).collect();
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(143), "{rest:?}");
    let stop_line = rest.iter().find(|l| l.contains("stopping at step")).unwrap_or_else(|| panic!("no orderly stop: {rest:?}"));
    assert!(stop_line.contains("Terminate"), "{stop_line}");
}

/// Runs a 2-rank job to completion and returns (final.safetensors bytes, metrics.jsonl).
fn finished_run(dir: &Path, sets: &[&str]) -> (Vec<u8>, String) {
    run_to_end(job(&["--nproc", "2"], dir, sets));
    outputs(dir)
}

#[test]
fn sigterm_then_resume_gives_the_uninterrupted_result() {
    let sets = ["train.epochs=8", "train.print_every=1", "model.bn=frozen", "checkpoint.every_steps=2"];
    let tmp = tempfile::tempdir().expect("tempdir");
    let (want_params, want_metrics) = finished_run(&tmp.path().join("straight"), &sets);

    let dir = tmp.path().join("interrupted");
    // Mid-epoch: 16 classes × 10 images / 40 = 4 steps per epoch; stop during the second.
    assert_eq!(interrupt_at_step_5(&dir, &sets, libc::SIGTERM, &[]), Some(143));
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
    let cmd = job(&["--nproc", "2", "--max-restarts", "1"], &dir, &sets);
    // A step chosen from the clock, so the kill lands at varying points (between checkpoints too).
    let kill_step = 5 + (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0) % 6);
    let (mut child, lines) = spawn_until_step(cmd, Stdio::piped(), kill_step);
    let (_, victim) = workers_and_rank_1(child.id());
    send(victim, libc::SIGKILL);
    let _: Vec<String> = lines.map_while(std::result::Result::ok).collect();
    let status = child.wait().expect("wait");
    let err = read_stderr(&mut child);
    assert!(status.success(), "killed at step {kill_step}; the restarted job failed: {err}");
    assert!(err.contains("restarting the job from its latest checkpoint (restart 1 of 1)"), "{err}");
    let (got_params, got_metrics) = outputs(&dir);
    assert!(got_params == want_params, "killed at step {kill_step}: parameters differ from the uninterrupted run");
    assert_eq!(got_metrics, want_metrics, "killed at step {kill_step}: metrics.jsonl differs");
}

/// Starts a 2-rank job in `dir` and sends `signal` to the launcher once rank 0 has printed
/// step 5 (mid-epoch: 4 steps per epoch); returns the launcher's exit status.
fn interrupt_at_step_5(dir: &Path, sets: &[&str], signal: i32, env: &[(&str, &str)]) -> Option<i32> {
    let mut cmd = job(&["--nproc", "2", "--master-port", "0"], dir, sets);
    cmd.envs(env.iter().copied());
    let (mut child, lines) = spawn_until_step(cmd, Stdio::null(), 5);
    send(child.id(), signal);
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
    run_to_end(job(&["--nproc", "1"], &straight, &sets));

    let dir = tmp.path().join("two-then-one");
    assert_eq!(interrupt_at_step_5(&dir, &sets, libc::SIGTERM, &[]), Some(143));
    let stdout = run_to_end(job(&["--nproc", "1"], &dir, &sets));
    assert!(stdout.contains("world size"), "the worker says the world size changed: {stdout}");
    let diff = max_relative_difference(&dir.join("final.safetensors"), &straight.join("final.safetensors"));
    eprintln!("2 ranks → 1 rank resume vs 1 rank throughout: max relative difference {diff:e}");
    assert!(diff < 1e-9, "max relative difference {diff:e}");
}
