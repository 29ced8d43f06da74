//! Resuming through the worker: a corrupt newest checkpoint is skipped with a warning
//! naming it, the previous one is used, and a checkpoint of another model is refused.
use std::path::Path;
use std::process::Command;

const SETS: &[&str] = &[
    "data.synthetic.train_classes=12", "data.synthetic.test_classes=4", "data.synthetic.images_per_class=10",
    "data.batch_size=20", "data.ipc=5", "model.width=8", "model.embedding_dim=16", "loss.hgnn_hidden=32",
    "train.epochs=2", "train.eval_at_start=false", "checkpoint.every_steps=2", "checkpoint.keep=5",
];

fn train(dir: &Path, extra: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hist"));
    cmd.arg("train").arg("--run-dir").arg(dir);
    for s in SETS.iter().chain(extra) {
        cmd.arg("--set").arg(s);
    }
    cmd.output().expect("run hist")
}

/// A finished run turned back into an interrupted one: its checkpoints stay, the marker of
/// completion goes (as if the process had been killed before the end).
fn interrupted_run(dir: &Path) -> Vec<std::path::PathBuf> {
    let out = train(dir, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_file(dir.join("final.safetensors")).expect("remove final");
    let mut steps: Vec<_> = std::fs::read_dir(dir.join("checkpoints"))
        .expect("checkpoints")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("step-")))
        .collect();
    steps.sort();
    assert!(steps.len() >= 2, "{steps:?}");
    steps
}

#[test]
fn truncated_newest_checkpoint_falls_back_to_the_previous_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("run");
    let steps = interrupted_run(&dir);
    let newest = steps.last().expect("newest");
    let tensors = newest.join("tensors.safetensors");
    let len = std::fs::metadata(&tensors).expect("size").len();
    let file = std::fs::OpenOptions::new().write(true).open(&tensors).expect("open");
    file.set_len(len / 2).expect("truncate");
    let out = train(&dir, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("warning: checkpoint") && err.contains(&newest.display().to_string()), "{err}");
    let previous = &steps[steps.len() - 2];
    assert!(stdout.contains(&format!("resuming from {}", previous.display())), "{stdout}");
    assert!(dir.join("final.safetensors").exists());
}

#[test]
fn all_checkpoints_corrupt_is_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("run");
    for step in interrupted_run(&dir) {
        let tensors = step.join("tensors.safetensors");
        let mut bytes = std::fs::read(&tensors).expect("read");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&tensors, bytes).expect("write");
    }
    let out = train(&dir, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("unusable"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[test]
fn checkpoint_of_another_model_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("run");
    interrupted_run(&dir);
    let out = train(&dir, &["model.embedding_dim=24"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("embedding_dim"), "{err}");
}
