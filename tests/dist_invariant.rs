//! The system's main invariant (design §3): W ranks with local batch B/W produce the same
//! parameters as one rank with batch B — backbone, head, prototypes and HGNN — run through
//! `hist-launch --nproc W` on CPU ranks. Needs hist-launch beside the worker, as
//! `cargo test --workspace` builds it.
use std::path::{Path, PathBuf};
use std::process::Command;

use tch::{Kind, Tensor};

const COMMON: &[&str] = &[
    "data.synthetic.train_classes=16", "data.synthetic.test_classes=6", "data.synthetic.images_per_class=10",
    "data.batch_size=40", "data.ipc=5", "model.width=8", "model.embedding_dim=16", "loss.hgnn_hidden=32",
    "model.bn=frozen", "train.epochs=3", "train.max_steps=5", "train.warmup_epochs=0",
    "train.eval_at_start=false", "eval.batch_size=7",
];

fn launcher() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_hist")).with_file_name("hist-launch");
    assert!(p.is_file(), "{} missing: run `cargo test --workspace` (it builds the launcher)", p.display());
    p
}

/// Runs a job with `nproc` CPU ranks and returns its final parameters and metrics lines.
fn run(nproc: usize, extra: &[&str], dir: &Path) -> (Vec<(String, Tensor)>, String) {
    let mut cmd = Command::new(launcher());
    cmd.arg("--nproc").arg(nproc.to_string()).arg("--master-port").arg("0").arg("--run-dir").arg(dir);
    for s in COMMON.iter().chain(extra) {
        cmd.arg("--set").arg(s);
    }
    let out = cmd.output().expect("run hist-launch");
    assert!(
        out.status.success(),
        "nproc {nproc} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let params = Tensor::read_safetensors(dir.join("final.safetensors")).expect("final.safetensors");
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).expect("metrics.jsonl");
    (params, metrics)
}

/// Largest absolute difference over every tensor, which must have the same names.
fn max_abs_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> (f64, String) {
    assert_eq!(a.len(), b.len(), "different parameter sets");
    let mut worst = (0.0, String::new());
    for (name, ta) in a {
        let tb = &b.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name} missing")).1;
        if !ta.is_floating_point() {
            assert!(ta.equal(tb), "{name} differs");
            continue;
        }
        let d = (ta.to_kind(Kind::Double) - tb.to_kind(Kind::Double)).abs().max().double_value(&[]);
        if d > worst.0 {
            worst = (d, name.clone());
        }
    }
    worst
}

fn recalls(metrics: &str) -> Vec<f64> {
    metrics
        .lines()
        .flat_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            [1, 2, 4, 8].map(|k| v[format!("recall@{k}")].as_f64().expect("recall"))
        })
        .collect()
}

fn check(extra: &[&str], tolerance: f64) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (one, m1) = run(1, extra, &tmp.path().join("w1"));
    for w in [2, 4] {
        let (many, mw) = run(w, extra, &tmp.path().join(format!("w{w}")));
        let (diff, name) = max_abs_diff(&one, &many);
        eprintln!("--nproc {w}: max abs difference {diff:e} at {name}");
        assert!(diff <= tolerance, "--nproc {w}: max abs difference {diff:e} at {name} (tolerance {tolerance:e})");
        assert_eq!(recalls(&m1), recalls(&mw), "--nproc {w}: evaluation differs");
    }
    // Every group moved, so the comparison is not between untouched initial values.
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/demo.yaml");
    let overrides: Vec<String> = COMMON.iter().chain(extra).map(|s| s.to_string()).collect();
    let config = hist::config::load_config(&demo, &overrides).expect("config");
    let init = hist::train::trainer::build_state(&config, 16, tch::Device::Cpu);
    let init: Vec<(String, Tensor)> = init.vs.variables().into_iter().collect();
    for name in ["backbone.unit0.conv.weight", "head.weight", "loss.means", "loss.log_vars", "loss.hgnn.w1", "loss.hgnn.w2"] {
        let a = &one.iter().find(|(n, _)| n == name).expect("trained").1;
        let b = &init.iter().find(|(n, _)| n == name).expect("initial").1;
        assert!(!a.equal(b), "{name} did not change in training");
    }
}

#[test]
fn adam_f64_ranks_match_one_rank() {
    check(&["dtype=f64", "optim.name=adam"], 1e-9);
}

/// In f32 the per-rank and whole-batch kernels round differently: after one step the
/// ranks differ by ~3e-8 (one ulp). The loss has a high gain (τ = 32), so plain SGD at the
/// authors' *Adam* prototype rate (lr_ds 0.1) amplifies that ~4× per step (1.6e-5 after 5,
/// measured). SGD-appropriate rates keep 5 steps at ~1.4e-6 (measured), well inside 1e-5,
/// while a real error (a missing sum or average) shows up at lr × grad ≈ 1e-4 or more.
#[test]
fn sgd_f32_ranks_match_one_rank() {
    check(&["dtype=f32", "optim.name=sgd", "optim.lr=0.001", "optim.lr_ds=0.01"], 1e-5);
}
