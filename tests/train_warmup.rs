//! Warm-up freezes the backbone trunk; frozen BatchNorm2d is never trained.
use std::path::Path;
use std::process::Command;

use hist::config::load_config;
use hist::train::trainer::build_state;
use tch::{Device, Tensor};

const SETS: &[&str] = &[
    "data.synthetic.train_classes=12", "data.synthetic.test_classes=4", "data.synthetic.images_per_class=10",
    "data.batch_size=20", "data.ipc=5", "model.width=8", "model.embedding_dim=16", "loss.hgnn_hidden=32",
    "train.epochs=2", "train.warmup_epochs=1", "train.eval_at_start=false", "model.bn=frozen",
];

fn lookup<'a>(t: &'a [(String, Tensor)], name: &str) -> &'a Tensor {
    &t.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name} missing")).1
}

fn run(extra: &[&str], dir: &Path) -> Vec<(String, Tensor)> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hist"));
    cmd.arg("train").arg("--run-dir").arg(dir);
    for s in SETS.iter().chain(extra) {
        cmd.arg("--set").arg(s);
    }
    let out = cmd.output().expect("run hist");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Tensor::read_safetensors(dir.join("final.safetensors")).expect("final")
}

#[test]
fn warmup_epoch_leaves_the_trunk_and_frozen_bn_untouched() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/demo.yaml");
    let overrides: Vec<String> = SETS.iter().map(|s| s.to_string()).collect();
    let config = load_config(&demo, &overrides).expect("config");
    let init = build_state(&config, 12, Device::Cpu);
    let init_vars: Vec<(String, Tensor)> = init.vs.variables().into_iter().collect();

    let tmp = tempfile::tempdir().expect("tempdir");
    // Stop inside the warm-up epoch (12 classes × 10 images / 20 = 6 steps per epoch).
    let during = run(&["train.max_steps=4"], &tmp.path().join("warm"));
    let conv = "backbone.unit2.conv.weight";
    assert!(lookup(&during, conv).equal(lookup(&init_vars, conv)), "trunk moved during warm-up");
    assert!(!lookup(&during, "head.weight").equal(lookup(&init_vars, "head.weight")), "head did not train");
    assert!(!lookup(&during, "loss.means").equal(lookup(&init_vars, "loss.means")), "prototypes did not train");

    let after = run(&[], &tmp.path().join("after"));
    assert!(!lookup(&after, conv).equal(lookup(&init_vars, conv)), "trunk did not train after warm-up");
    for bn in ["backbone.unit2.bn.weight", "backbone.unit2.bn.bias", "backbone.unit2.bn.running_mean"] {
        assert!(lookup(&after, bn).equal(lookup(&init_vars, bn)), "{bn} changed although BN is frozen");
    }
}
