//! The slurm/ CPU scripts under a real SLURM: munged, slurmctld and slurmd from Debian's
//! packages, started on localhost by scripts/slurm_local.sh (which installs them when
//! missing and this is root). Each script is submitted with `sbatch`, sent SIGUSR1 the way
//! `#SBATCH --signal=USR1@N` does, and must checkpoint, requeue itself with `scontrol
//! requeue`, resume when SLURM starts it again, and finish with exactly the parameters and
//! metrics of an uninterrupted run.
//!
//! Set HIST_SKIP_SLURM=1 to skip on a machine where SLURM cannot be started (not root and
//! not installed); without it, failing to start SLURM fails the test.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const SETS: &[&str] = &[
    "data.synthetic.train_classes=16", "data.synthetic.test_classes=6", "data.synthetic.images_per_class=10",
    "data.batch_size=40", "data.ipc=5", "model.width=8", "model.embedding_dim=16", "loss.hgnn_hidden=32",
    "train.eval_at_start=false", "train.epochs=8", "train.print_every=1", "model.bn=frozen",
    "checkpoint.every_steps=1000",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn bin_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_hist-launch")).parent().expect("bin dir").to_path_buf();
    assert!(dir.join("hist").is_file(), "the hist worker is missing beside hist-launch: run `cargo test --workspace`");
    dir
}

/// A private one-node cluster, stopped when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

impl Cluster {
    fn start() -> Option<Cluster> {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new(repo().join("scripts/slurm_local.sh"))
            .arg("start")
            .arg(dir.path())
            .output()
            .expect("run scripts/slurm_local.sh");
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr).into_owned();
            if std::env::var("HIST_SKIP_SLURM").as_deref() == Ok("1") {
                eprintln!("skipped: SLURM could not be started (HIST_SKIP_SLURM=1): {why}");
                return None;
            }
            panic!("cannot start a local SLURM (set HIST_SKIP_SLURM=1 to skip on machines without root): {why}");
        }
        let conf = dir.path().join("slurm.conf");
        Some(Cluster { dir, conf })
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("SLURM_CONF", &self.conf);
        for var in ["SLURM_JOB_ID", "SLURM_JOBID", "SLURM_NNODES", "SLURM_NODEID", "SLURM_PROCID", "SLURM_LOCALID", "HIST_JOB_SECRET"] {
            cmd.env_remove(var);
        }
        cmd
    }

    fn run(&self, program: &str, args: &[&str]) -> String {
        let out = self.command(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `Key=Value` of `scontrol show job`.
    fn job_field(&self, job: &str, key: &str) -> String {
        let text = self.run("scontrol", &["show", "job", job]);
        text.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_string))
            .unwrap_or_else(|| panic!("no {key} in: {text}"))
    }

    fn logs(&self) -> String {
        ["slurmctld.log", "slurmd.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/slurm_local.sh")).arg("stop").arg(self.dir.path()).status();
    }
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool, context: impl Fn() -> String) {
    let until = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for {what}: {}", context());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// (final.safetensors, metrics.jsonl) of an uninterrupted 2-rank run outside SLURM.
fn reference_run(dir: &Path, config: &Path) -> (Vec<u8>, String) {
    let mut cmd = Command::new(bin_dir().join("hist-launch"));
    cmd.args(["--nproc", "2", "--run-dir"]).arg(dir).arg(config);
    for s in SETS {
        cmd.arg("--set").arg(s);
    }
    for var in ["SLURM_JOB_ID", "HIST_JOB_SECRET"] {
        cmd.env_remove(var);
    }
    let out = cmd.output().expect("run hist-launch");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (
        std::fs::read(dir.join("final.safetensors")).expect("final.safetensors"),
        std::fs::read_to_string(dir.join("metrics.jsonl")).expect("metrics.jsonl"),
    )
}

/// Submits `script`, preempts it with SIGUSR1 mid-epoch, lets SLURM restart it, and checks
/// that it ends like `want`.
fn preempt_requeue_resume(cluster: &Cluster, script: &str, signal_batch_shell: bool, want: &(Vec<u8>, String)) {
    let work = cluster.dir.path().join(script);
    std::fs::create_dir_all(&work).expect("mkdir");
    let run_dir = work.join("run");
    let output = work.join("job.out");
    let config = repo().join("configs/demo.yaml");
    let mut args: Vec<String> = vec!["--parsable".into(), "-o".into(), output.display().to_string()];
    args.push(repo().join("slurm").join(script).display().to_string());
    args.push(config.display().to_string());
    for s in SETS {
        args.push("--set".into());
        args.push((*s).into());
    }
    let mut sbatch = cluster.command("sbatch");
    sbatch.current_dir(&work).env("HIST_BIN", bin_dir()).env("HIST_RUN_DIR", &run_dir).args(&args);
    let out = sbatch.output().expect("sbatch");
    assert!(out.status.success(), "sbatch {script}: {}", String::from_utf8_lossy(&out.stderr));
    let job = String::from_utf8_lossy(&out.stdout).trim().split(';').next().unwrap_or_default().to_string();
    let log = || std::fs::read_to_string(&output).unwrap_or_default();
    let context = || format!("{script} job {job} output:\n{}\nSLURM logs:\n{}", log(), cluster.logs());

    // Mid-epoch (4 steps per epoch): rank 0 has printed step 5.
    wait_for("step 5", Duration::from_secs(180), || log().contains("step 5 "), context);
    let mut scancel = vec!["--signal=USR1"];
    if signal_batch_shell {
        scancel.push("--batch");
    }
    scancel.push(&job);
    cluster.run("scancel", &scancel);
    wait_for("the requeue", Duration::from_secs(120), || cluster.job_field(&job, "Restarts") == "1", context);
    assert!(log().contains(&format!("requeued SLURM job {job}")), "{}", context());
    // SLURM holds a requeued job for about two minutes; an administrator may release it at once.
    wait_for(
        "the requeued job to be pending",
        Duration::from_secs(60),
        || cluster.job_field(&job, "JobState") == "PENDING",
        context,
    );
    cluster.run("scontrol", &["update", &format!("JobId={job}"), "StartTime=now"]);
    wait_for(
        "the requeued job to complete",
        Duration::from_secs(300),
        || {
            let state = cluster.job_field(&job, "JobState");
            assert!(!["FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"].contains(&state.as_str()), "job ended {state}: {}", context());
            state == "COMPLETED"
        },
        context,
    );
    let text = log();
    assert!(text.contains("resuming from"), "the requeued job resumed from the checkpoint: {text}");
    let got_params = std::fs::read(run_dir.join("final.safetensors")).expect("final.safetensors");
    let got_metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).expect("metrics.jsonl");
    assert!(got_params == want.0, "{script}: parameters differ from the uninterrupted run");
    assert_eq!(got_metrics, want.1, "{script}: metrics.jsonl differs from the uninterrupted run");
}

#[test]
fn slurm_cpu_scripts_survive_preemption_and_requeue() {
    let Some(cluster) = Cluster::start() else { return };
    let want = reference_run(&cluster.dir.path().join("reference"), &repo().join("configs/demo.yaml"));
    // hist-launch exec'd by the batch shell: `--signal=B:USR1` reaches the launcher.
    preempt_requeue_resume(&cluster, "cpu_launcher.sbatch", true, &want);
    // srun tasks without a launcher: `--signal=USR1` reaches every task.
    preempt_requeue_resume(&cluster, "cpu_tasks.sbatch", false, &want);
}
