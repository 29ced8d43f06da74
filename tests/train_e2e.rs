//! End to end: a short HIST run on the synthetic data learns (loss falls, Recall@1 on
//! unseen classes rises) and leaves a complete run directory.
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// A small run: 16 train / 16 test classes, 32 px, a narrow CNN.
const SMALL: &[&str] = &[
    "--set", "data.synthetic.train_classes=16",
    "--set", "data.synthetic.test_classes=16",
    "--set", "data.synthetic.images_per_class=30",
    "--set", "data.batch_size=40",
    "--set", "data.ipc=5",
    "--set", "model.width=16",
    "--set", "model.embedding_dim=32",
    "--set", "loss.hgnn_hidden=64",
    "--set", "train.epochs=6",
    "--set", "train.log_every=2",
];

fn run_hist(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hist")).args(args).output().expect("run hist")
}

/// `hist train` of the SMALL run in `dir`, with `extra` arguments after it.
fn small_run<'a>(dir: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["train", "--run-dir", dir];
    args.extend_from_slice(SMALL);
    args.extend_from_slice(extra);
    args
}

/// Runs hist; the test fails with its stderr unless it succeeds.
fn run_ok(args: &[&str]) {
    let out = run_hist(args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn read_metrics(dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).expect("metrics.jsonl");
    text.lines().map(|l| serde_json::from_str(l).expect("json line")).collect()
}

fn tensorboard_tags(dir: &Path) -> Value {
    let python = std::env::var("HIST_PYTHON").expect("HIST_PYTHON is not set; run scripts/setup.sh");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/read_tensorboard.py");
    let out = Command::new(python).arg(script).arg(dir).output().expect("run python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("tensorboard json")
}

#[test]
fn short_run_learns_and_leaves_a_complete_run_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("run");
    let dir_s = dir.display().to_string();
    let args = small_run(&dir_s, &[]);
    let out = run_hist(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));

    let metrics = read_metrics(&dir);
    assert_eq!(metrics.len(), 7, "epoch 0 (initialisation) + 6 epochs:\n{stdout}");
    let r1 = |m: &Value| m["recall@1"].as_f64().expect("recall@1");
    let loss = |m: &Value| m["loss"].as_f64().expect("loss");
    let (first, last) = (&metrics[1], &metrics[6]);
    assert!(loss(last) < 0.8 * loss(first), "loss did not fall: {} → {}\n{stdout}", loss(first), loss(last));
    assert!(r1(last) > r1(&metrics[0]) + 0.05, "Recall@1 did not rise: {} → {}\n{stdout}", r1(&metrics[0]), r1(last));
    for (i, m) in metrics.iter().enumerate() {
        assert_eq!(m["epoch"].as_u64(), Some(i as u64));
        for k in [1, 2, 4, 8] {
            let r = m[format!("recall@{k}")].as_f64().expect("recall");
            assert!((0.0..=1.0).contains(&r));
        }
    }
    assert!(stdout.contains("epoch 6/6"), "{stdout}");

    let config = std::fs::read_to_string(dir.join("config.yaml")).expect("config.yaml");
    assert!(config.contains("batch_size: 40"), "resolved config not saved:\n{config}");

    let tags = tensorboard_tags(&dir);
    let scalars = tags["scalars"].as_object().expect("scalars");
    for tag in ["train/loss", "train/loss_ds", "train/loss_ce", "train/lr/trunk", "train/lr/embedding",
                "train/lr/prototypes", "train/lr/hgnn", "eval/recall@1", "eval/recall@8"] {
        assert!(scalars.contains_key(tag), "missing TensorBoard tag {tag}: {tags}");
    }

    let tensors = tch::Tensor::read_safetensors(dir.join("final.safetensors")).expect("final.safetensors");
    let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    for want in ["head.weight", "head.bias", "loss.means", "loss.log_vars", "loss.hgnn.w1", "loss.hgnn.b1",
                 "loss.hgnn.w2", "loss.hgnn.b2", "loss.hgnn.bn.weight", "loss.hgnn.bn.bias",
                 "backbone.unit0.conv.weight"] {
        assert!(names.contains(&want), "final.safetensors lacks {want}: {names:?}");
    }
    let means = &tensors.iter().find(|(n, _)| n == "loss.means").expect("means").1;
    assert_eq!(means.size(), [16, 32]);
}

#[test]
fn max_steps_stops_early_and_evaluates_there() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("run");
    let dir_s = dir.display().to_string();
    run_ok(&small_run(&dir_s, &["--set", "train.max_steps=5", "--set", "train.eval_at_start=false"]));
    let metrics = read_metrics(&dir);
    assert_eq!(metrics.len(), 1, "one evaluation, where training stopped");
    assert_eq!(metrics[0]["step"].as_u64(), Some(5));
    assert!(dir.join("final.safetensors").exists());
}

#[test]
fn bad_run_inputs_are_one_line_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").expect("write");
    let under_file = file.join("run").display().to_string();
    let unused = tmp.path().join("unused").display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["train", "--run-dir", &under_file], "cannot create the run directory"),
        (vec!["train", "--run-dir", &unused, "--set", "data.source=folder", "--set", "data.root=/nonexistent/data"], "/nonexistent/data"),
    ];
    for (args, needle) in cases {
        let out = run_hist(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: not one line: {err}");
        assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn a_resume_after_the_last_checkpoint_finishes_the_run_and_says_what_changed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("run");
    let dir_s = dir.display().to_string();
    let mut args = small_run(&dir_s, &["--set", "train.epochs=2", "--set", "train.eval_at_start=false"]);
    run_ok(&args);
    // As if killed after the last epoch's checkpoint, before the end of the run.
    std::fs::remove_file(dir.join("final.safetensors")).expect("remove final");
    std::fs::remove_file(dir.join("projector_config.pbtxt")).expect("remove projector config");
    args.extend_from_slice(&["--set", "optim.lr=0.002"]);
    let out = run_hist(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("optim.lr: 0.001 → 0.002"), "{stdout}");
    assert!(stdout.contains("final evaluation  R@1"), "{stdout}");
    assert!(dir.join("final.safetensors").exists() && dir.join("projector_config.pbtxt").exists());
    let epochs: Vec<u64> = read_metrics(&dir).iter().map(|m| m["epoch"].as_u64().expect("epoch")).collect();
    assert_eq!(epochs, [1, 2], "{stdout}");
}

#[test]
fn a_resume_whose_epochs_are_shorter_than_its_checkpoint_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("run");
    let dir_s = dir.display().to_string();
    let mut args = small_run(&dir_s, &["--set", "checkpoint.every_steps=1", "--set", "train.max_steps=3", "--set", "train.eval_at_start=false"]);
    run_ok(&args);
    std::fs::remove_file(dir.join("final.safetensors")).expect("remove final");
    // 480 images in batches of 300: one step an epoch, but the last checkpoint (the stop
    // at max_steps saves none) is at step 2.
    args.extend_from_slice(&["--set", "data.sampling=random", "--set", "data.batch_size=300"]);
    let out = run_hist(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("is at step 2 of an epoch") && err.contains("1 step(s)"), "{err}");
}
