//! Each kind of bad config is one clear line on stderr and a non-zero exit.
use std::path::Path;
use std::process::Command;

fn hist(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hist")).args(args).output().expect("run hist");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_config(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write config");
    p.display().to_string()
}

const GOOD: &str = "data: {batch_size: 8, ipc: 2}\ntrain: {epochs: 1}\n";

/// Asserts a failed run whose stderr is exactly one line containing every needle.
fn assert_one_line_error(args: &[&str], needles: &[&str]) {
    let (code, _, err) = hist(args);
    assert_ne!(code, 0, "expected failure for {args:?}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr {err:?} lacks {n:?}");
    }
}

#[test]
fn good_config_resolves_with_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), "good.yaml", GOOD);
    let (code, out, err) = hist(&["show-config", "--config", &cfg, "--set", "loss.tau=16"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("tau: 16"), "{out}");
    assert!(out.contains("alpha: 1.1"), "{out}");
}

#[test]
fn unknown_key_names_key_and_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), "typo.yaml", "data: {batch_size: 8, ipc: 2, bach_size: 3}\ntrain: {epochs: 1}\n");
    assert_one_line_error(&["show-config", "--config", &cfg], &["unknown key `data.bach_size`", "typo.yaml"]);
    let cfg = write_config(dir.path(), "top.yaml", &format!("{GOOD}lerning_rate: 1\n"));
    assert_one_line_error(&["show-config", "--config", &cfg], &["unknown key `lerning_rate`", "top.yaml"]);
}

#[test]
fn unknown_key_in_override_is_named() {
    assert_one_line_error(&["show-config", "--set", "optim.lrr=0.1"], &["unknown key `optim.lrr`", "--set"]);
}

#[test]
fn missing_required_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), "missing.yaml", "data: {batch_size: 8}\ntrain: {epochs: 1}\n");
    assert_one_line_error(&["show-config", "--config", &cfg], &["missing required key `data.ipc`"]);
    let cfg = write_config(dir.path(), "notrain.yaml", "data: {batch_size: 8, ipc: 2}\n");
    assert_one_line_error(&["show-config", "--config", &cfg], &["missing required key `train`"]);
}

#[test]
fn out_of_range_values() {
    let cases: &[(&str, &str)] = &[
        ("optim.lr=-0.1", "optim.lr must be a finite number > 0 (got -0.1)"),
        ("data.ipc=7", "data.ipc (7) must divide data.batch_size (60)"),
        ("loss.alpha=0", "loss.alpha must be a finite number > 0 (got 0)"),
        ("loss.tau=-1", "loss.tau must be a finite number > 0"),
        ("optim.betas=[0.9, 1.0]", "optim.betas[1] must be in [0, 1)"),
        ("train.epochs=0", "train.epochs must be >= 1"),
        ("dtype=f16", "dtype"),
        ("device=tpu", "device must be cpu, cuda or cuda:N"),
        ("data.source=folder", "data.root is required when data.source is folder"),
        ("data.batch_size=5", "data.ipc (5) must divide"),
    ];
    for (set, needle) in cases {
        let needle = if *set == "data.batch_size=5" { "data.batch_size / data.ipc must be >= 2" } else { needle };
        assert_one_line_error(&["show-config", "--set", set], &[needle]);
    }
}

#[test]
fn unreadable_and_malformed_files() {
    assert_one_line_error(&["show-config", "--config", "/nonexistent/x.yaml"], &["/nonexistent/x.yaml", "cannot read"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), "broken.yaml", "data: [unclosed\n");
    assert_one_line_error(&["show-config", "--config", &cfg], &["broken.yaml", "not valid YAML"]);
}
