//! hist-launch with the real `hist` worker: one CPU rank trains to completion, and a
//! worker's own error is reported with its rank. Needs the `hist` worker binary beside
//! hist-launch, as `cargo test --workspace` builds it. Supervision of several ranks is
//! tested with fake workers in supervision.rs.
use std::path::PathBuf;
use std::process::Command;

fn launcher() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hist-launch"));
    for var in ["SLURM_JOB_ID", "HIST_JOB_SECRET", "HIST_WORKER"] {
        cmd.env_remove(var);
    }
    cmd
}

fn worker() -> PathBuf {
    let w = PathBuf::from(env!("CARGO_BIN_EXE_hist-launch")).with_file_name("hist");
    assert!(w.is_file(), "{} missing: run `cargo test --workspace` (it builds the worker)", w.display());
    w
}

#[test]
fn runs_one_worker_to_completion() {
    let _ = worker();
    let tmp = tempfile::tempdir().expect("tempdir");
    let run_dir = tmp.path().join("run");
    let out = launcher()
        .args(["--nproc", "1", "--run-dir"])
        .arg(&run_dir)
        .args(["--set", "train.max_steps=2", "--set", "train.eval_at_start=false"])
        .args(["--set", "data.synthetic.train_classes=12", "--set", "data.synthetic.test_classes=4"])
        .args(["--set", "data.synthetic.images_per_class=10", "--set", "model.width=8"])
        .output()
        .expect("run hist-launch");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(run_dir.join("final.safetensors").is_file());
    assert!(run_dir.join("config.yaml").is_file());
}

#[test]
fn worker_failure_is_reported_with_its_rank_and_status() {
    let _ = worker();
    let out = launcher().args(["--set", "optim.lr=-1"]).output().expect("run hist-launch");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("optim.lr must be"), "{err}");
    assert!(err.contains("hist-launch: rank 0 failed (exit status 2); its last output:"), "{err}");
    assert!(err.contains("[rank 0] error: "), "{err}");
}

#[test]
fn missing_worker_binary_and_config_are_one_line_errors() {
    let out = launcher().args(["--worker", "/nonexistent/hist"]).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("worker binary /nonexistent/hist not found"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    let out = launcher().arg("/nonexistent/config.yaml").output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("config /nonexistent/config.yaml not found"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}
