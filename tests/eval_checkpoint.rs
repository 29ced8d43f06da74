//! `hist eval --checkpoint`: a trained model scored on its test split gives the Recall@K
//! the trainer logged for it, on one rank and sharded over two (hist-launch), from a
//! checkpoint folder or final.safetensors, and its saved embeddings score the same under
//! `hist eval --embeddings`. Bad inputs are one-line errors.
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const HIST: &str = env!("CARGO_BIN_EXE_hist");

/// A small synthetic run: 2 epochs in a few seconds.
const TINY: &[&str] = &[
    "data.synthetic.train_classes=16",
    "data.synthetic.test_classes=16",
    "data.synthetic.images_per_class=30",
    "data.batch_size=40",
    "data.ipc=5",
    "model.width=16",
    "model.embedding_dim=32",
    "loss.hgnn_hidden=64",
    "train.epochs=2",
    "train.eval_at_start=false",
];

fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program).args(args).env("HIST_PROGRESS", "0").output().expect("start process");
    out
}

fn ok_stdout(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(out.status.success(), "{program} {args:?} failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Trains the tiny run into `dir`.
fn train(dir: &Path) {
    let dir = dir.to_str().expect("utf-8 path");
    let mut args = vec!["train", "--run-dir", dir];
    for s in TINY {
        args.extend(["--set", s]);
    }
    ok_stdout(HIST, &args);
}

fn json(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not one JSON object ({e}): {text}"))
}

#[test]
fn a_checkpoint_scores_as_the_trainer_logged_on_one_and_two_ranks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run_dir = tmp.path().join("run");
    train(&run_dir);
    let best = run_dir.join("checkpoints/best");
    let saved = tmp.path().join("test-embeddings.safetensors");
    let one = ok_stdout(HIST, &["eval", "--checkpoint", best.to_str().unwrap(), "--json", "--save-embeddings", saved.to_str().unwrap()]);
    let report = json(&one);

    // The trainer's last epoch line holds Recall@K of the same weights on the same split.
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).expect("metrics.jsonl");
    let last = json(metrics.lines().last().expect("an epoch record"));
    for k in [1, 2, 4, 8] {
        let key = format!("recall@{k}");
        assert_eq!(report[&key], last[&key], "{key}: eval vs trainer");
    }
    for key in ["map@r", "r_precision", "nmi"] {
        let v = report[key].as_f64().unwrap_or(-1.0);
        assert!((0.0..=1.0).contains(&v), "{key} = {v}");
    }
    assert!(last["recall@1"].as_f64().unwrap_or(0.0) > 0.0, "the run learned something to compare: {last}");

    // The same weights from final.safetensors (config from the run directory).
    let final_params = run_dir.join("final.safetensors");
    assert_eq!(json(&ok_stdout(HIST, &["eval", "--checkpoint", final_params.to_str().unwrap(), "--json"])), report);

    // The config of a GPU run (device cuda:0, dist.backend nccl) evaluated with --device cpu:
    // the backend gives way to the device, and the report is the same.
    let gpu_config = tmp.path().join("gpu-config.yaml");
    let yaml = std::fs::read_to_string(run_dir.join("config.yaml")).expect("config.yaml");
    assert!(yaml.contains("device: cpu") && yaml.contains("backend: auto"), "config.yaml layout:\n{yaml}");
    std::fs::write(&gpu_config, yaml.replace("device: cpu", "device: cuda:0").replace("backend: auto", "backend: nccl")).expect("write");
    let moved_device = ok_stdout(HIST, &["eval", "--checkpoint", final_params.to_str().unwrap(), gpu_config.to_str().unwrap(), "--device", "cpu", "--json"]);
    assert_eq!(json(&moved_device), report, "a GPU run's config evaluated on the CPU");

    // The saved embeddings give the identical report.
    assert_eq!(json(&ok_stdout(HIST, &["eval", "--embeddings", saved.to_str().unwrap(), "--json"])), report);

    // Two ranks, each embedding half of the test split: the identical report.
    let launcher = Path::new(HIST).with_file_name("hist-launch");
    assert!(launcher.is_file(), "{} missing: run `cargo test --workspace` (it builds the launcher)", launcher.display());
    let report_file = tmp.path().join("two-ranks.json");
    let out = run(
        launcher.to_str().unwrap(),
        &["--nproc", "2", "--", "eval", "--checkpoint", best.to_str().unwrap(), "--report", report_file.to_str().unwrap()],
    );
    assert!(out.status.success(), "hist-launch eval failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("[rank 0] recall@1"), "rank 0 prints the table:\n{stdout}");
    assert!(!stdout.contains("[rank 1] recall@1"), "only rank 0 reports:\n{stdout}");
    let two = json(&std::fs::read_to_string(&report_file).expect("report file"));
    assert_eq!(two, report, "2 ranks vs 1 rank");
}

fn expect_error(args: &[&str], needle: &str) {
    let out = run(HIST, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(!stderr.contains("panicked"), "{args:?} panicked:\n{stderr}");
    assert!(stderr.contains(needle), "{args:?}: expected {needle:?} in:\n{stderr}");
}

#[test]
fn bad_checkpoint_inputs_are_one_line_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run_dir = tmp.path().join("run");
    train(&run_dir);
    let best = run_dir.join("checkpoints/best");
    let best = best.to_str().unwrap();

    expect_error(&["eval", "--checkpoint", "/nonexistent/checkpoints/best"], "no such checkpoint folder");
    // A different model than the one trained: the mismatched variable is named.
    expect_error(&["eval", "--checkpoint", best, "--set", "model.embedding_dim=64"], "has shape [32");
    expect_error(&["eval", "--checkpoint", best, "--set", "model.backbone=resnet50"], "configured model");
    // A parameter file away from its run directory has no config: ask for one.
    let moved = tmp.path().join("params.safetensors");
    std::fs::copy(run_dir.join("final.safetensors"), &moved).expect("copy");
    expect_error(&["eval", "--checkpoint", moved.to_str().unwrap()], "pass the config the model was trained with");
    // A corrupted checkpoint is refused, naming the file.
    let step = std::fs::read_dir(run_dir.join("checkpoints")).expect("list").flatten().map(|e| e.path()).find(|p| p.join("tensors.safetensors").is_file()).expect("a step folder");
    let tensors = step.join("tensors.safetensors");
    let mut bytes = std::fs::read(&tensors).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&tensors, bytes).expect("write");
    expect_error(&["eval", "--checkpoint", step.to_str().unwrap()], "tensors.safetensors");
    // Flags that belong to the other mode, and neither mode.
    expect_error(&["eval", "--embeddings", moved.to_str().unwrap(), "--set", "seed=1"], "--checkpoint");
    expect_error(&["eval", "--json"], "--checkpoint");
    expect_error(&["eval", "--checkpoint", best, "--ks", "0"], "--ks");
}
