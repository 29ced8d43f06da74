//! Small CPU training jobs run through `hist-launch`, and comparisons of what they leave
//! behind: the tests of the distributed invariant include it with
//! `#[path = "support/launch.rs"] mod launch;`. Needs hist-launch beside the worker, as
//! `cargo test --workspace` builds it.
use std::path::{Path, PathBuf};
use std::process::Command;

use tch::{Kind, Tensor};

/// A job small enough for a test (5 steps of a tiny CNN on synthetic images); callers add
/// what they compare, e.g. `model.bn` or `dtype`.
pub const SMALL_JOB: &[&str] = &[
    "data.synthetic.train_classes=16",
    "data.synthetic.test_classes=6",
    "data.synthetic.images_per_class=10",
    "data.batch_size=40",
    "data.ipc=5",
    "model.width=8",
    "model.embedding_dim=16",
    "loss.hgnn_hidden=32",
    "train.epochs=3",
    "train.max_steps=5",
    "train.warmup_epochs=0",
    "train.eval_at_start=false",
    "eval.batch_size=7",
];

/// Classes in `SMALL_JOB`'s training split (the size of the loss's prototypes).
const TRAIN_CLASSES: i64 = 16;

fn launcher() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_hist")).with_file_name("hist-launch");
    assert!(p.is_file(), "{} missing: run `cargo test --workspace` (it builds the launcher)", p.display());
    p
}

/// Runs `SMALL_JOB` and then `sets` on `nproc` CPU ranks in `dir`; returns the final
/// variables and the lines of metrics.jsonl.
pub fn run_job(nproc: usize, sets: &[&str], dir: &Path) -> (Vec<(String, Tensor)>, String) {
    let mut cmd = Command::new(launcher());
    cmd.arg("--nproc").arg(nproc.to_string()).arg("--master-port").arg("0").arg("--run-dir").arg(dir);
    for s in SMALL_JOB.iter().chain(sets) {
        cmd.arg("--set").arg(s);
    }
    let out = cmd.output().expect("run hist-launch");
    assert!(
        out.status.success(),
        "nproc {nproc} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let variables = Tensor::read_safetensors(dir.join("final.safetensors")).expect("final.safetensors");
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).expect("metrics.jsonl");
    (variables, metrics)
}

/// The tensor called `name`.
pub fn tensor<'a>(vars: &'a [(String, Tensor)], name: &str) -> &'a Tensor {
    &vars.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name} missing")).1
}

/// Largest absolute difference over every tensor (parameters and running statistics), and
/// where; both sides must have the same names and shapes, and equal integer tensors.
pub fn max_abs_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> (f64, String) {
    assert_eq!(a.len(), b.len(), "different variable sets");
    let mut worst = (0.0, String::new());
    for (name, ta) in a {
        let tb = tensor(b, name);
        assert_eq!(ta.size(), tb.size(), "{name}: shapes differ");
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

/// Recall@1, 2, 4 and 8 of every evaluation in metrics.jsonl, in order.
pub fn recalls(metrics: &str) -> Vec<f64> {
    metrics
        .lines()
        .flat_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            [1, 2, 4, 8].map(|k| v[format!("recall@{k}")].as_f64().expect("recall"))
        })
        .collect()
}

/// Runs `sets` on one rank and on each of `worlds` ranks (in `dir`) and asserts that every
/// variable of the W-rank runs is within `tolerance` of the one-rank run and that their
/// evaluations are identical; returns the one-rank run's variables.
pub fn assert_ranks_match_one_rank(sets: &[&str], worlds: &[usize], tolerance: f64, dir: &Path) -> Vec<(String, Tensor)> {
    let (one, metrics_one) = run_job(1, sets, &dir.join("nproc1"));
    for &w in worlds {
        let (many, metrics_many) = run_job(w, sets, &dir.join(format!("nproc{w}")));
        let (diff, name) = max_abs_diff(&one, &many);
        let job = sets.join(" ");
        eprintln!("{job}, --nproc {w} vs 1: max abs difference {diff:e} at {name}");
        assert!(diff <= tolerance, "{job}, --nproc {w}: max abs difference {diff:e} at {name} (tolerance {tolerance:e})");
        assert_eq!(recalls(&metrics_one), recalls(&metrics_many), "{job}, --nproc {w}: evaluation differs");
    }
    one
}

/// Asserts that training moved each of `names` away from its initial value under
/// `SMALL_JOB` + `sets`, so that runs compared with each other did not all stand still.
pub fn assert_trained(trained: &[(String, Tensor)], sets: &[&str], names: &[&str]) {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/demo.yaml");
    let overrides: Vec<String> = SMALL_JOB.iter().chain(sets).map(|s| s.to_string()).collect();
    let config = hist::config::load_config(&demo, &overrides).expect("config");
    let init = hist::train::trainer::build_state(&config, TRAIN_CLASSES, tch::Device::Cpu);
    let init: Vec<(String, Tensor)> = init.vs.variables().into_iter().collect();
    for name in names {
        assert!(!tensor(trained, name).equal(tensor(&init, name)), "{name} did not change in training");
    }
}
