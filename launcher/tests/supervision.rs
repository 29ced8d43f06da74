//! Supervision with fake workers: shell scripts that print their environment, sleep, fail
//! or trap signals, so the launcher's logic is tested apart from training. Each script
//! records its pid (and its child's) in the test's directory so the tests can prove that
//! no worker outlives the launcher.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A fake worker script in its own directory; `$T` in the script is that directory.
struct Fake {
    dir: tempfile::TempDir,
    script: PathBuf,
}

fn fake_worker(body: &str) -> Fake {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("worker.sh");
    let text = format!("#!/bin/sh\nT='{}'\n{body}", dir.path().display());
    std::fs::write(&script, text).expect("write fake worker");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    Fake { dir, script }
}

impl Fake {
    fn launcher(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hist-launch"));
        cmd.arg("--worker").arg(&self.script).args(args);
        // The job's shape must come from the arguments, even when the tests themselves run
        // inside a SLURM job or a shell that exported a secret.
        for var in ["SLURM_JOB_ID", "HIST_JOB_SECRET", "HIST_JOIN_TIMEOUT", "HIST_WORKER", "CUDA_VISIBLE_DEVICES"] {
            cmd.env_remove(var);
        }
        cmd
    }

    /// The launcher started with `args`, its output captured.
    fn spawn(&self, args: &[&str]) -> Child {
        self.launcher(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start hist-launch")
    }

    fn files(&self, prefix: &str) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .expect("read tempdir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix)))
            .collect();
        found.sort();
        found
    }

    /// Pids the workers recorded (`echo $$ > $T/pid.$RANK` and friends).
    fn pids(&self) -> Vec<i32> {
        self.files("pid.")
            .iter()
            .flat_map(|p| {
                std::fs::read_to_string(p).unwrap_or_default().lines().map(str::to_string).collect::<Vec<_>>()
            })
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    fn wait_for_files(&self, prefix: &str, n: usize) {
        let until = Instant::now() + Duration::from_secs(10);
        while self.files(prefix).len() < n {
            assert!(Instant::now() < until, "workers did not all start: {:?}", self.files(prefix));
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// True when no live process has this pid: it is gone, or a zombie waiting for a reaper
/// that is not the test (in containers PID 1 may never reap).
fn dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn assert_all_dead(pids: &[i32], within: Duration) {
    let until = Instant::now() + within;
    loop {
        let alive: Vec<i32> = pids.iter().copied().filter(|&p| !dead(p)).collect();
        if alive.is_empty() {
            return;
        }
        assert!(Instant::now() < until, "orphaned worker processes still running: {alive:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: a plain kill(2) on the launcher this test started.
    let rc = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(rc, 0, "kill failed");
}

fn wait_timeout(child: &mut Child, limit: Duration) -> Output {
    let until = Instant::now() + limit;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            panic!("hist-launch did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = Output { status: child.wait().expect("wait"), stdout: Vec::new(), stderr: Vec::new() };
    use std::io::Read;
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_end(&mut out.stdout);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_end(&mut out.stderr);
    }
    out
}

const PRINT_ENV: &str = r#"echo "env RANK=$RANK LOCAL_RANK=$LOCAL_RANK WORLD_SIZE=$WORLD_SIZE" \
    "LOCAL_WORLD_SIZE=$LOCAL_WORLD_SIZE MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$MASTER_PORT" \
    "HIST_JOB_SECRET=$HIST_JOB_SECRET HIST_JOIN_TIMEOUT=$HIST_JOIN_TIMEOUT"
echo "args $*"
echo "to stderr" >&2
"#;

#[test]
fn every_rank_sees_the_environment_contract_and_its_output_is_prefixed() {
    let fake = fake_worker(PRINT_ENV);
    let out = fake.launcher(&["--nproc", "3", "--join-timeout", "42", "--set", "a.b=1"]).output().expect("run");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let envs: Vec<&str> = stdout.lines().filter(|l| l.contains("] env ")).collect();
    assert_eq!(envs.len(), 3, "{stdout}");
    let port = envs[0].split("MASTER_PORT=").nth(1).and_then(|s| s.split(' ').next()).expect("port");
    let secret = envs[0].split("HIST_JOB_SECRET=").nth(1).and_then(|s| s.split(' ').next()).expect("secret");
    assert!(port.parse::<u16>().is_ok_and(|p| p > 0), "a free port is chosen: {port}");
    assert!(secret.len() == 32 && secret.bytes().all(|b| b.is_ascii_hexdigit()), "generated secret: {secret}");
    for rank in 0..3 {
        let want = format!(
            "[rank {rank}] env RANK={rank} LOCAL_RANK={rank} WORLD_SIZE=3 LOCAL_WORLD_SIZE=3 MASTER_ADDR=127.0.0.1 \
             MASTER_PORT={port} HIST_JOB_SECRET={secret} HIST_JOIN_TIMEOUT=42"
        );
        assert!(stdout.lines().any(|l| l == want), "missing {want:?} in\n{stdout}");
        assert!(stdout.contains(&format!("[rank {rank}] args train --set a.b=1")), "{stdout}");
        assert!(stderr.lines().any(|l| l == format!("[rank {rank}] to stderr")), "{stderr}");
    }
    assert!(!stdout.contains("to stderr"), "stderr lines stay on stderr");
}

#[test]
fn a_second_node_numbers_its_ranks_after_the_first_and_uses_the_shared_secret() {
    let fake = fake_worker(PRINT_ENV);
    let args = [
        "--nproc",
        "2",
        "--nnodes",
        "3",
        "--node-rank",
        "1",
        "--master-addr",
        "node0.example",
        "--master-port",
        "29999",
    ];
    let out = fake.launcher(&args).env("HIST_JOB_SECRET", "shared-s3cret").output().expect("run");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for (local, rank) in [(0, 2), (1, 3)] {
        let want = format!(
            "[rank {rank}] env RANK={rank} LOCAL_RANK={local} WORLD_SIZE=6 LOCAL_WORLD_SIZE=2 \
             MASTER_ADDR=node0.example MASTER_PORT=29999 HIST_JOB_SECRET=shared-s3cret HIST_JOIN_TIMEOUT=300"
        );
        assert!(stdout.lines().any(|l| l == want), "missing {want:?} in\n{stdout}");
    }

    let out = fake.launcher(&args).output().expect("run");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.starts_with("hist-launch: error: --nnodes 3 needs the same HIST_JOB_SECRET on every node"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

/// Two ranks: rank 0 exits 7 once both have recorded their pids (`$T/pid.$RANK`).
const RANK0_EXITS_7: &str = r#"if [ "$RANK" = 0 ]; then
    while [ "$(ls "$T" | grep -c '^pid\.')" -lt 2 ]; do sleep 0.02; done
    exit 7
fi"#;

/// Rank `$FAIL_RANK` waits until every rank has recorded its pids, prints a few lines and
/// ends with `$FAIL_HOW`; the others sleep in a child process (so the test can see that
/// the whole process group goes, not just the worker).
const FAILING: &str = r#"
if [ "$RANK" = "$FAIL_RANK" ]; then
    echo $$ > "$T/pid.$RANK"
    while [ "$(ls "$T" | grep -c '^pid\.')" -lt "$WORLD_SIZE" ]; do sleep 0.02; done
    i=0; while [ $i -lt 25 ]; do echo "rank $RANK line $i"; i=$((i+1)); done
    echo "about to fail" >&2
    eval "$FAIL_HOW"
fi
sleep 60 &
printf '%s\n%s\n' $$ $! > "$T/pid.$RANK"
wait
"#;

fn run_failing(how: &str) -> (Output, Duration, Vec<i32>) {
    let fake = fake_worker(FAILING);
    let start = Instant::now();
    let out = fake.launcher(&["--nproc", "4"]).env("FAIL_RANK", "2").env("FAIL_HOW", how).output().expect("run");
    let elapsed = start.elapsed();
    let pids = fake.pids();
    assert_eq!(pids.len(), 1 + 3 * 2, "every worker recorded its pids: {pids:?}");
    assert_all_dead(&pids, Duration::from_millis(500));
    (out, elapsed, pids)
}

#[test]
fn a_failing_rank_stops_the_others_and_is_reported_with_its_last_lines() {
    let (out, elapsed, _) = run_failing("exit 3");
    let err = text(&out.stderr);
    eprintln!("exit 3 case: hist-launch returned after {elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert_eq!(out.status.code(), Some(3), "{err}");
    let summary = err.find("hist-launch: rank 2 failed (exit status 3); its last output:").expect(&err);
    let last: Vec<&str> = err[summary..].lines().skip(1).collect();
    assert_eq!(last.len(), 20, "the last 20 lines: {err}");
    assert_eq!(last[0], "[rank 2] rank 2 line 6");
    assert_eq!(last[18], "[rank 2] rank 2 line 24");
    assert_eq!(last[19], "[rank 2] about to fail");
    assert!(!err.contains("rank 0 failed") && !err.contains("rank 1 failed"), "{err}");
}

#[test]
fn a_rank_killed_by_a_signal_is_reported_with_the_signal() {
    let (out, elapsed, _) = run_failing("kill -9 $$");
    let err = text(&out.stderr);
    eprintln!("kill -9 case: hist-launch returned after {elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert_eq!(out.status.code(), Some(128 + 9), "{err}");
    assert!(err.contains("hist-launch: rank 2 failed (killed by signal 9, SIGKILL); its last output:"), "{err}");
    assert!(err.trim_end().ends_with("[rank 2] about to fail"), "{err}");
}

#[test]
fn ranks_that_ignore_sigterm_are_killed_three_seconds_after_a_failure() {
    let fake = fake_worker(&format!(
        r#"trap '' TERM
echo $$ > "$T/pid.$RANK"
{RANK0_EXITS_7}
while :; do sleep 0.1; done
"#
    ));
    let start = Instant::now();
    let out = fake.launcher(&["--nproc", "2"]).output().expect("run");
    let elapsed = start.elapsed();
    let err = text(&out.stderr);
    eprintln!("SIGTERM-ignoring case: hist-launch returned after {elapsed:?}");
    assert!(elapsed >= Duration::from_secs(3) && elapsed < Duration::from_secs(5), "took {elapsed:?}: {err}");
    assert_eq!(out.status.code(), Some(7), "{err}");
    assert!(err.contains("rank 1 still running 3 s after SIGTERM; sending SIGKILL"), "{err}");
    assert!(err.contains("rank 0 failed (exit status 7); it printed nothing"), "{err}");
    assert_all_dead(&fake.pids(), Duration::from_millis(500));
}

#[test]
fn sigterm_to_the_launcher_reaches_every_worker_and_exits_143() {
    let fake = fake_worker(
        r#"trap 'touch "$T/term.$RANK"; echo "rank $RANK stopping"; exit 0' TERM
sleep 60 &
printf '%s\n%s\n' $$ $! > "$T/pid.$RANK"
wait
"#,
    );
    let mut child = fake.spawn(&["--nproc", "3"]);
    fake.wait_for_files("pid.", 3);
    signal(&child, libc::SIGTERM);
    let out = wait_timeout(&mut child, Duration::from_secs(5));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{err}");
    assert_eq!(fake.files("term.").len(), 3, "every worker got SIGTERM: {err}");
    assert!(text(&out.stdout).contains("[rank 1] rank 1 stopping"));
    assert!(err.contains("hist-launch: SIGTERM: sending SIGTERM to 3 worker(s)"), "{err}");
    assert_all_dead(&fake.pids(), Duration::from_millis(500));
}

#[test]
fn a_second_interrupt_kills_workers_that_take_too_long_to_stop() {
    let fake = fake_worker(
        r#"trap 'touch "$T/term.$RANK"' TERM
echo $$ > "$T/pid.$RANK"
while :; do sleep 0.1; done
"#,
    );
    let mut child = fake.spawn(&["--nproc", "2"]);
    fake.wait_for_files("pid.", 2);
    signal(&child, libc::SIGINT);
    fake.wait_for_files("term.", 2);
    signal(&child, libc::SIGINT);
    let out = wait_timeout(&mut child, Duration::from_secs(5));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("SIGINT while stopping: sending SIGKILL to 2 worker(s)"), "{err}");
    assert_all_dead(&fake.pids(), Duration::from_millis(500));
}

#[test]
fn workers_die_with_a_killed_launcher() {
    // exec keeps the pid, so the recorded pid is the process the kernel must kill.
    let fake = fake_worker("echo $$ > \"$T/pid.$RANK\"\nexec sleep 30\n");
    let mut child =
        fake.launcher(&["--nproc", "3"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start");
    fake.wait_for_files("pid.", 3);
    let pids = fake.pids();
    assert!(pids.iter().all(|&p| !dead(p)), "workers run before the kill");
    signal(&child, libc::SIGKILL);
    let _ = child.wait();
    assert_all_dead(&pids, Duration::from_secs(2));
}

#[test]
fn a_worker_that_finishes_leaves_nothing_running_behind_it() {
    let fake = fake_worker("sleep 60 &\nprintf '%s\\n%s\\n' $$ $! > \"$T/pid.$RANK\"\nexit 0\n");
    let out = fake.launcher(&["--nproc", "2"]).output().expect("run");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pids = fake.pids();
    assert_eq!(pids.len(), 4, "{pids:?}");
    assert_all_dead(&pids, Duration::from_millis(500));
}

#[test]
fn a_port_in_use_is_one_line_before_any_worker_starts() {
    let fake = fake_worker("touch \"$T/started\"\n");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let out = fake.launcher(&["--nproc", "2", "--master-port", &port]).output().expect("run");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.starts_with("hist-launch: error: "), "{err}");
    assert!(err.contains(&format!("port {port}")) && err.contains("in use") && err.contains("--master-port"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!Path::new(&fake.dir.path().join("started")).exists(), "no worker may start");
}

#[test]
fn impossible_requests_are_one_line_errors() {
    let fake = fake_worker("exit 0\n");
    let cases: [(&[&str], &str); 5] = [
        (&["--gpus", "64"], "--gpus 64 but "),
        (&["--nproc", "0"], "--nproc 0 starts no worker"),
        (&["--nproc", "2", "--gpus", "2"], "--nproc"),
        (&["--nnodes", "2", "--node-rank", "0"], "--nnodes 2 needs --master-addr"),
        (&["--nnodes", "2", "--node-rank", "0", "--master-addr", "h", "--master-port", "0"], "--master-port 0"),
    ];
    for (args, want) in cases {
        let out = fake.launcher(args).env("HIST_JOB_SECRET", "s").output().expect("run");
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.starts_with("hist-launch: error: ") && err.contains(want), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    }
}

#[test]
fn sigusr1_reaches_every_worker_as_sigusr1_and_a_repeat_does_not_kill() {
    // SLURM's `--signal=USR1@N` warning: workers must get SIGUSR1 itself (they checkpoint
    // and rank 0 requeues the job), and the launcher exits 138 like the workers.
    let fake = fake_worker(
        r#"trap 'touch "$T/usr1.$RANK"; sleep 0.3; echo "rank $RANK checkpointed"; exit 138' USR1
trap 'touch "$T/term.$RANK"; exit 143' TERM
sleep 60 &
printf '%s\n%s\n' $$ $! > "$T/pid.$RANK"
wait
wait
"#,
    );
    let mut child = fake.spawn(&["--nproc", "2"]);
    fake.wait_for_files("pid.", 2);
    signal(&child, libc::SIGUSR1);
    fake.wait_for_files("usr1.", 2);
    signal(&child, libc::SIGUSR1);
    let out = wait_timeout(&mut child, Duration::from_secs(5));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(138), "{err}");
    assert!(fake.files("term.").is_empty(), "no worker got SIGTERM: {err}");
    assert!(text(&out.stdout).contains("[rank 1] rank 1 checkpointed"), "{}", text(&out.stdout));
    assert!(err.contains("hist-launch: SIGUSR1: sending SIGUSR1 to 2 worker(s)"), "{err}");
    assert!(err.contains("SIGUSR1 while stopping: ignored"), "{err}");
    assert!(!err.contains("ended with"), "138 is how a worker answers SIGUSR1: {err}");
    assert_all_dead(&fake.pids(), Duration::from_millis(500));
}

#[test]
fn a_rank_failing_while_stopping_is_reported_and_the_rest_are_killed() {
    // Rank 1 fails as it handles the SIGTERM (a checkpoint it cannot write, say); rank 0
    // ignores SIGTERM, as a rank waiting for rank 1 in a collective would seem to.
    let fake = fake_worker(
        r#"trap 'if [ "$RANK" = 1 ]; then echo "rank 1 cannot save"; exit 5; fi; touch "$T/term.$RANK"' TERM
echo $$ > "$T/pid.$RANK"
while :; do sleep 0.1; done
"#,
    );
    let mut child = fake.spawn(&["--nproc", "2"]);
    fake.wait_for_files("pid.", 2);
    let start = Instant::now();
    signal(&child, libc::SIGTERM);
    let out = wait_timeout(&mut child, Duration::from_secs(8));
    let elapsed = start.elapsed();
    let err = text(&out.stderr);
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}: {err}");
    assert_eq!(out.status.code(), Some(5), "the failed rank's status, not 143: {err}");
    assert!(err.contains("rank 1 failed (exit status 5) while stopping"), "{err}");
    assert!(err.contains("rank 0 still running 3 s after SIGTERM; sending SIGKILL"), "{err}");
    assert!(err.contains("rank 1 cannot save"), "the failed rank's last lines: {err}");
    assert_all_dead(&fake.pids(), Duration::from_millis(500));
}

#[test]
fn a_stop_while_ending_after_a_failure_cancels_the_restart() {
    // Rank 0 fails; rank 1 ignores the SIGTERM that follows, so the launcher is still
    // ending the job when the user presses Ctrl-C: no restart may follow.
    let fake = fake_worker(&format!(
        r#"trap 'touch "$T/term.$RANK"' TERM
echo $$ >> "$T/pid.$RANK"
{RANK0_EXITS_7}
while :; do sleep 0.1; done
"#
    ));
    let run_dir = fake.dir.path().join("run");
    let run_dir = run_dir.to_string_lossy().into_owned();
    let mut child = fake.spawn(&["--nproc", "2", "--max-restarts", "2", "--run-dir", &run_dir]);
    fake.wait_for_files("term.", 1);
    signal(&child, libc::SIGINT);
    let out = wait_timeout(&mut child, Duration::from_secs(5));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{err}");
    assert!(err.contains("SIGINT while the job ends after a failure"), "{err}");
    assert!(!err.contains("restarting the job"), "{err}");
    assert_eq!(fake.pids().len(), 2, "no worker was started again: {err}");
    assert_all_dead(&fake.pids(), Duration::from_millis(500));
}
