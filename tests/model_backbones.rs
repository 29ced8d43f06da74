//! ResNet-50 and BN-Inception against independent PyTorch references
//! (tests/reference/backbone_ref.py: torchvision's resnet50, and BN-Inception written
//! from the pretrained-models layout), weight import errors, and BatchNorm behaviour in
//! training (`model.bn` frozen / local).
//!
//! Each reference case: random weights with randomised BatchNorm statistics, written with
//! scripts/convert_torchvision.py, imported here through `model.pretrained`; the pooled
//! features (GAP + GMP of the backbone's feature map) of the same input must agree to
//! max|ours − ref| / max|ref| ≤ 1e-5 in float32.

use std::path::{Path, PathBuf};
use std::process::Command;

use hist::config::{load_config, Backbone, BatchNormMode, ModelConfig};
use hist::model::head::gap_plus_gmp;
use hist::model::pretrained::{import_backbone_weights, load_configured};
use hist::model::EmbeddingModel;
use hist::train::trainer::build_state;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// Relative error allowed between our pooled features and the reference's (float32).
const TOL_F32: f64 = 1e-5;

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> String {
    // A missing interpreter must fail loudly: skipping would hide a wrong backbone.
    std::env::var("HIST_PYTHON")
        .unwrap_or_else(|_| panic!("HIST_PYTHON is not set; run scripts/setup.sh to create the Python venv and .cargo/config.toml"))
}

/// Runs backbone_ref.py for `arch` into `dir`; returns (weights file, case tensors).
fn reference_case(arch: &str, dir: &Path, seed: u64, size: i64) -> (PathBuf, Vec<(String, Tensor)>) {
    let python = python();
    let out = Command::new(&python)
        .arg(manifest().join("tests/reference/backbone_ref.py"))
        .arg(arch)
        .args(["--dir", dir.to_str().expect("utf-8 temp path")])
        .args(["--seed", &seed.to_string(), "--size", &size.to_string(), "--batch", "2"])
        .output()
        .unwrap_or_else(|e| panic!("could not run {python} (re-run scripts/setup.sh?): {e}"));
    assert!(out.status.success(), "backbone_ref.py {arch} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let case = Tensor::read_safetensors(dir.join("case.safetensors")).expect("read case.safetensors");
    (dir.join("weights.safetensors"), case)
}

fn lookup<'a>(t: &'a [(String, Tensor)], name: &str) -> &'a Tensor {
    &t.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name} missing")).1
}

fn model_config(backbone: Backbone, bn: BatchNormMode, pretrained: Option<&Path>) -> ModelConfig {
    ModelConfig { backbone, bn, pretrained: pretrained.map(|p| p.display().to_string()), ..ModelConfig::default() }
}

fn max_rel_err(ours: &Tensor, reference: &Tensor) -> f64 {
    let diff = (ours - reference).abs().max().double_value(&[]);
    diff / reference.abs().max().double_value(&[])
}

/// Imports the reference's weights through `model.pretrained` and compares pooled features.
fn compare_with_reference(backbone: Backbone, arch: &str, size: i64, expected_map: [i64; 4]) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (weights, case) = reference_case(arch, dir.path(), 3, size);
    let vs = VarStore::new(Device::Cpu);
    let model = EmbeddingModel::new(&vs.root(), &model_config(backbone, BatchNormMode::Frozen, Some(&weights)));
    let summary = load_configured(&vs, &model_config(backbone, BatchNormMode::Frozen, Some(&weights)))
        .expect("import reference weights")
        .expect("a file was configured");
    assert_eq!(summary.copied, vs.variables().keys().filter(|n| n.starts_with("backbone.")).count());

    let input = lookup(&case, "input");
    let map = tch::no_grad(|| model.features(input, false));
    let want_shape: Vec<i64> = Vec::<i64>::try_from(lookup(&case, "map_shape")).expect("map_shape");
    assert_eq!(map.size(), want_shape, "feature map shape differs from the reference");
    assert_eq!(map.size(), expected_map.to_vec());
    let reference = lookup(&case, "pooled");
    // The randomised statistics must leave features that vary, or the comparison is empty.
    assert!(reference.std(true).double_value(&[]) > 1e-3 * reference.abs().max().double_value(&[]));
    let err = max_rel_err(&gap_plus_gmp(&map), reference);
    eprintln!("{arch}: pooled features max relative error {err:.3e}");
    assert!(err <= TOL_F32, "{arch}: pooled features differ from the reference: max relative error {err:.3e} > {TOL_F32:.0e}");
}

// Reference (backbone_ref.py resnet50):
//   model = torchvision.models.resnet50(); model.load_state_dict(weights, strict=False)
//   fmap = nn.Sequential(*list(model.children())[:-2]).eval()(x)
//   pooled = fmap.mean((2, 3)) + fmap.amax((2, 3))
#[test]
fn resnet50_matches_torchvision() {
    compare_with_reference(Backbone::Resnet50, "resnet50", 224, [2, 2048, 7, 7]);
}

// Reference (backbone_ref.py bn_inception): BNInceptionRef, the port's layout with
// conv(bias) → BN(eps 1e-5) → ReLU units, ceil-mode pools, count_include_pad average pools.
#[test]
fn bn_inception_matches_the_pretrained_models_layout() {
    compare_with_reference(Backbone::BnInception, "bn_inception", 224, [2, 1024, 7, 7]);
}

/// Backbone variables of `vs` under their file names (without `backbone.`).
fn backbone_tensors(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> =
        vs.variables().into_iter().filter_map(|(n, t)| n.strip_prefix("backbone.").map(|s| (s.to_string(), t.detach().copy()))).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn import_errors_list_missing_unexpected_and_misshapen_tensors() {
    let cfg = model_config(Backbone::Resnet50, BatchNormMode::Frozen, None);
    let vs = VarStore::new(Device::Cpu);
    let _model = EmbeddingModel::new(&vs.root(), &cfg);
    let mut tensors = backbone_tensors(&vs);
    tensors.retain(|(n, _)| n != "layer1.0.bn1.running_var");
    for (n, t) in tensors.iter_mut() {
        if n == "conv1.weight" {
            *t = Tensor::zeros([64, 3, 3, 3], (Kind::Float, Device::Cpu));
        }
    }
    tensors.push(("layer9.weight".to_string(), Tensor::zeros([4], (Kind::Float, Device::Cpu))));
    // Ignored, not unexpected: the classifier and BatchNorm's step counters.
    tensors.push(("fc.weight".to_string(), Tensor::zeros([10, 2048], (Kind::Float, Device::Cpu))));
    tensors.push(("bn1.num_batches_tracked".to_string(), Tensor::zeros([], (Kind::Int64, Device::Cpu))));

    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("bad.safetensors");
    Tensor::write_safetensors(&tensors, &file).expect("write");
    let before = vs.variables()["backbone.layer2.0.conv1.weight"].copy();
    let err = import_backbone_weights(&vs, &file, Backbone::Resnet50).expect_err("a misfit file must be refused").to_string();
    for part in [
        file.display().to_string().as_str(),
        "1 missing (layer1.0.bn1.running_var)",
        "1 unexpected (layer9.weight)",
        "1 shape mismatches (conv1.weight: file [64, 3, 3, 3], backbone [64, 3, 7, 7])",
        "scripts/convert_torchvision.py --arch resnet50",
    ] {
        assert!(err.contains(part), "error lacks {part:?}: {err}");
    }
    assert!(!err.contains("fc.weight") && !err.contains("num_batches_tracked"), "{err}");
    assert!(vs.variables()["backbone.layer2.0.conv1.weight"].equal(&before), "a refused file changed weights");

    let absent = dir.path().join("absent.safetensors");
    let err = import_backbone_weights(&vs, &absent, Backbone::BnInception).expect_err("absent file").to_string();
    assert!(err.contains("absent.safetensors") && err.contains("no such file") && err.contains("--arch bn_inception"), "{err}");
}

const TRAIN_SETS: &[&str] = &[
    "data.synthetic.train_classes=8",
    "data.synthetic.test_classes=4",
    "data.synthetic.images_per_class=10",
    "data.batch_size=20",
    "data.ipc=5",
    "data.image_size=32",
    "model.embedding_dim=16",
    "loss.hgnn_hidden=32",
    "train.epochs=1",
    "train.warmup_epochs=0",
    "train.max_steps=1",
    "train.eval_at_start=false",
];

/// One training step through the `hist` binary; returns every final variable.
fn train_one_step(extra: &[String], dir: &Path) -> Vec<(String, Tensor)> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hist"));
    cmd.arg("train").arg("--run-dir").arg(dir);
    for s in TRAIN_SETS.iter().map(|s| s.to_string()).chain(extra.iter().cloned()) {
        cmd.arg("--set").arg(s);
    }
    let out = cmd.output().expect("run hist");
    assert!(out.status.success(), "hist train failed:\n{}", String::from_utf8_lossy(&out.stderr));
    Tensor::read_safetensors(dir.join("final.safetensors")).expect("final.safetensors")
}

#[test]
fn frozen_bn_keeps_imported_statistics_and_local_bn_updates_them() {
    let tmp = tempfile::tempdir().expect("temp dir");
    // Frozen ResNet-50 started from imported weights: BN unchanged, convolutions trained.
    let (weights, _) = reference_case("resnet50", tmp.path(), 5, 32);
    let imported = Tensor::read_safetensors(&weights).expect("weights");
    let frozen = train_one_step(
        &["model.backbone=resnet50".into(), "model.bn=frozen".into(), format!("model.pretrained={}", weights.display())],
        &tmp.path().join("frozen"),
    );
    for name in ["bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "layer4.2.bn3.weight", "layer4.2.bn3.running_var"] {
        let after = lookup(&frozen, &format!("backbone.{name}"));
        assert!(after.equal(lookup(&imported, name)), "frozen {name} differs from the imported weights");
    }
    let conv = lookup(&frozen, "backbone.layer4.2.conv3.weight");
    let conv_imported = lookup(&imported, "layer4.2.conv3.weight");
    let moved = (conv - conv_imported).abs().max().double_value(&[]);
    assert!(moved > 0.0 && moved < 1e-2, "a step from the imported weights should move conv3 a little (moved {moved})");

    // Local BN-Inception: running statistics and affine parameters change in one step.
    let local_sets = ["model.backbone=bn_inception".to_string(), "model.bn=local".to_string()];
    let overrides: Vec<String> = TRAIN_SETS.iter().map(|s| s.to_string()).chain(local_sets.iter().cloned()).collect();
    let config = load_config(&manifest().join("configs/demo.yaml"), &overrides).expect("config");
    let init = build_state(&config, 8, Device::Cpu);
    let init_vars: Vec<(String, Tensor)> = init.vs.variables().into_iter().collect();
    let local = train_one_step(&local_sets, &tmp.path().join("local"));
    for name in ["conv1_7x7_s2_bn.running_mean", "inception_5b_pool_proj_bn.running_var", "inception_4a_1x1_bn.weight"] {
        let name = format!("backbone.{name}");
        assert!(!lookup(&local, &name).equal(lookup(&init_vars, &name)), "local {name} did not change in a training step");
    }
}
