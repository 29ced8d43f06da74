//! hist's optimisers against torch.optim (tests/reference/optim_ref.py), and exact resume
//! from exported state.
//!
//! Each scenario: three parameter groups with different lr and weight decay, tensors of
//! several shapes (0-d, a vector, matrices large enough for the vectorised kernels and their
//! tails), 7 steps with fresh gradients, an lr drop at step 4 as StepLR would make, and the
//! "backbone" group frozen (no gradient) for the first 2 steps.
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use hist::train::optim::{Optimizer, OptimizerKind, ParamGroup};
use tch::{Device, Kind, Tensor};

const STEPS: usize = 7;
const FROZEN_STEPS: usize = 2;
const FROZEN_GROUP: usize = 0;
const LR_DROP_AT: usize = 4;
const GAMMA: f64 = 0.1;
const TOLERANCE: f64 = 1e-12;

fn python() -> String {
    std::env::var("HIST_PYTHON").unwrap_or_else(|_| {
        panic!("HIST_PYTHON is not set: run scripts/setup.sh (it writes .cargo/config.toml)")
    })
}

/// splitmix64: deterministic data without torch's global generator, which tests running in
/// parallel would share.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // Uniform in [-1, 1).
        (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    fn tensor(&mut self, shape: &[i64], scale: f64) -> Tensor {
        let n: i64 = shape.iter().product();
        let values: Vec<f64> = (0..n).map(|_| scale * self.next_f64()).collect();
        Tensor::from_slice(&values).reshape(shape)
    }
}

struct GroupSpec {
    name: &'static str,
    lr: f64,
    weight_decay: f64,
    params: Vec<(&'static str, Vec<i64>)>,
}

struct Scenario {
    kind: OptimizerKind,
    groups: Vec<GroupSpec>,
}

impl Scenario {
    fn new(kind: OptimizerKind, lrs: [f64; 3], weight_decays: [f64; 3]) -> Self {
        let shapes: [Vec<(&'static str, Vec<i64>)>; 3] = [
            vec![
                ("backbone.conv.weight", vec![4, 3, 3, 3]),
                ("backbone.bn.bias", vec![4]),
            ],
            vec![("head.weight", vec![67, 9]), ("head.bias", vec![67])],
            vec![
                ("loss.temperature", vec![]),
                ("loss.prototypes", vec![5, 13]),
            ],
        ];
        let names = ["backbone", "head", "loss"];
        let groups = shapes
            .into_iter()
            .enumerate()
            .map(|(g, params)| GroupSpec {
                name: names[g],
                lr: lrs[g],
                weight_decay: weight_decays[g],
                params,
            })
            .collect();
        Scenario { kind, groups }
    }

    /// The lr of every group at every step.
    fn lrs(&self) -> Vec<Vec<f64>> {
        (0..STEPS)
            .map(|step| {
                let factor = if step >= LR_DROP_AT { GAMMA } else { 1.0 };
                self.groups.iter().map(|g| g.lr * factor).collect()
            })
            .collect()
    }

    fn json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "groups": self.groups.iter().map(|g| serde_json::json!({
                "name": g.name,
                "lr": g.lr,
                "weight_decay": g.weight_decay,
                "params": g.params.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "lrs": self.lrs(),
        });
        match self.kind {
            OptimizerKind::Adam { betas, eps } | OptimizerKind::AdamW { betas, eps } => {
                let name = if matches!(self.kind, OptimizerKind::Adam { .. }) {
                    "adam"
                } else {
                    "adamw"
                };
                v["optimizer"] = name.into();
                v["betas"] = serde_json::json!([betas.0, betas.1]);
                v["eps"] = eps.into();
            }
            OptimizerKind::Sgd { momentum } => {
                v["optimizer"] = "sgd".into();
                v["momentum"] = momentum.into();
            }
        }
        v
    }

    /// Initial values and per-step gradients, named as optim_ref.py reads them. Gradient
    /// scales differ per tensor so that eps and weight decay matter for some and not others.
    fn data(&self) -> HashMap<String, Tensor> {
        let mut rng = Rng(0x5EED);
        let mut data = HashMap::new();
        for (g, group) in self.groups.iter().enumerate() {
            for (k, (name, shape)) in group.params.iter().enumerate() {
                data.insert(format!("init/{name}"), rng.tensor(shape, 1.0));
                let scale = 10f64.powi(k as i32 - g as i32);
                for step in 0..STEPS {
                    if g == FROZEN_GROUP && step < FROZEN_STEPS {
                        continue;
                    }
                    data.insert(format!("grad/{step}/{name}"), rng.tensor(shape, scale));
                }
            }
        }
        data
    }

    /// Fresh leaf parameters from `values` ("init/<name>" or any prefix) and an optimiser
    /// over them.
    fn optimizer(&self, values: &HashMap<String, Tensor>, prefix: &str) -> Optimizer {
        let groups = self
            .groups
            .iter()
            .map(|g| ParamGroup {
                name: g.name.to_string(),
                params: g
                    .params
                    .iter()
                    .map(|(name, _)| {
                        let value = &values[&format!("{prefix}{name}")];
                        (
                            name.to_string(),
                            value.detach().copy().set_requires_grad(true),
                        )
                    })
                    .collect(),
                lr: g.lr,
                weight_decay: g.weight_decay,
            })
            .collect();
        Optimizer::new(self.kind, groups)
    }
}

/// Runs `steps` of the schedule; returns every parameter after every step, named as
/// optim_ref.py writes them. Gradients arrive through backward, as in training.
fn run(
    opt: &mut Optimizer,
    scenario: &Scenario,
    data: &HashMap<String, Tensor>,
    steps: std::ops::Range<usize>,
) -> HashMap<String, Tensor> {
    let lrs = scenario.lrs();
    let mut out = HashMap::new();
    for step in steps {
        for (g, lr) in lrs[step].iter().enumerate() {
            opt.set_lr(g, *lr);
        }
        opt.zero_grad();
        let mut loss: Option<Tensor> = None;
        for (name, param) in opt.groups().iter().flat_map(|g| g.params.iter()) {
            assert!(!param.grad().defined(), "{name}: zero_grad left a gradient");
            if let Some(grad) = data.get(&format!("grad/{step}/{name}")) {
                // d/dp sum(p * g) = 1 * g, exactly g.
                let term = (param * grad).sum(Kind::Double);
                loss = Some(match loss {
                    Some(l) => l + term,
                    None => term,
                });
            }
        }
        if let Some(loss) = loss {
            loss.backward();
        }
        opt.step();
        for (name, param) in opt.groups().iter().flat_map(|g| g.params.iter()) {
            out.insert(format!("param/{step}/{name}"), param.detach().copy());
        }
    }
    out
}

/// max |a - b| / max |b| (plain max |a - b| when b is all zeros).
fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    let diff = (a - b).abs().max().double_value(&[]);
    let scale = b.abs().max().double_value(&[]);
    if scale > 0.0 {
        diff / scale
    } else {
        diff
    }
}

fn compare_with_torch(label: &str, scenario: Scenario) {
    let python = python();
    let dir = tempfile::tempdir().expect("temp dir");
    let scenario_path = dir.path().join("scenario.json");
    let data_path = dir.path().join("data.safetensors");
    let out_path = dir.path().join("torch.safetensors");
    std::fs::write(&scenario_path, scenario.json().to_string()).expect("write scenario");
    let data = scenario.data();
    let named: Vec<(&str, &Tensor)> = data.iter().map(|(k, v)| (k.as_str(), v)).collect();
    Tensor::write_safetensors(&named, &data_path).expect("write data");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/optim_ref.py");
    let output = Command::new(&python)
        .arg(&script)
        .args([&scenario_path, &data_path, &out_path])
        .output()
        .unwrap_or_else(|e| panic!("running {python}: {e}"));
    assert!(
        output.status.success(),
        "optim_ref.py failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let torch: HashMap<String, Tensor> = Tensor::read_safetensors(&out_path)
        .expect("read torch output")
        .into_iter()
        .collect();

    let mut opt = scenario.optimizer(&data, "init/");
    let mut ours = run(&mut opt, &scenario, &data, 0..STEPS);
    for (name, tensor) in opt.state_tensors() {
        ours.insert(format!("state/{name}"), tensor);
    }

    let mut ours_keys: Vec<&String> = ours.keys().collect();
    let mut torch_keys: Vec<&String> = torch.keys().collect();
    ours_keys.sort();
    torch_keys.sort();
    assert_eq!(
        ours_keys, torch_keys,
        "{label}: parameters/state entries differ from torch's"
    );

    let mut worst = (0.0f64, String::new());
    let mut bit_identical = true;
    for (key, ours) in &ours {
        let reference = &torch[key];
        assert_eq!(ours.kind(), reference.kind(), "{label}: {key} dtype");
        let err = relative_error(ours, reference);
        bit_identical &= ours.equal(reference);
        assert!(
            err <= TOLERANCE,
            "{label}: {key}: relative error {err:e} > {TOLERANCE:e}"
        );
        if err >= worst.0 {
            worst = (err, key.clone());
        }
    }
    println!(
        "{label}: {} tensors, max relative error {:e} ({}), bit-identical to torch: {bit_identical}",
        ours.len(),
        worst.0,
        worst.1
    );
}

const ADAM_BETAS: (f64, f64) = (0.9, 0.999);

#[test]
fn adam_matches_torch() {
    let kind = OptimizerKind::Adam {
        betas: ADAM_BETAS,
        eps: 1e-8,
    };
    compare_with_torch(
        "adam",
        Scenario::new(kind, [1e-3, 1e-2, 3e-2], [1e-4, 5e-2, 0.0]),
    );
}

#[test]
fn adamw_matches_torch() {
    let kind = OptimizerKind::AdamW {
        betas: (0.8, 0.99),
        eps: 1e-6,
    };
    compare_with_torch(
        "adamw",
        Scenario::new(kind, [1e-3, 1e-2, 3e-2], [1e-2, 0.3, 0.0]),
    );
}

#[test]
fn sgd_momentum_with_weight_decay_matches_torch() {
    let kind = OptimizerKind::Sgd { momentum: 0.9 };
    compare_with_torch(
        "sgd+wd",
        Scenario::new(kind, [0.01, 0.1, 0.05], [5e-4, 1e-2, 0.0]),
    );
}

#[test]
fn sgd_momentum_without_weight_decay_matches_torch() {
    let kind = OptimizerKind::Sgd { momentum: 0.9 };
    compare_with_torch("sgd", Scenario::new(kind, [0.01, 0.1, 0.05], [0.0; 3]));
}

#[test]
fn plain_sgd_matches_torch() {
    let kind = OptimizerKind::Sgd { momentum: 0.0 };
    compare_with_torch(
        "plain sgd",
        Scenario::new(kind, [0.01, 0.1, 0.05], [5e-4, 1e-2, 0.0]),
    );
}

/// 3 steps, state through a safetensors file into a fresh optimiser over fresh parameters,
/// 3 more steps: bit-identical to 6 uninterrupted steps.
#[test]
fn resume_from_exported_state_is_bit_identical() {
    let kinds = [
        OptimizerKind::Adam {
            betas: ADAM_BETAS,
            eps: 1e-8,
        },
        OptimizerKind::AdamW {
            betas: ADAM_BETAS,
            eps: 1e-8,
        },
        OptimizerKind::Sgd { momentum: 0.9 },
    ];
    let dir = tempfile::tempdir().expect("temp dir");
    for kind in kinds {
        let scenario = Scenario::new(kind, [1e-3, 1e-2, 3e-2], [1e-4, 5e-2, 0.0]);
        let data = scenario.data();

        let mut straight = scenario.optimizer(&data, "init/");
        let expected = run(&mut straight, &scenario, &data, 0..6);

        let mut first = scenario.optimizer(&data, "init/");
        run(&mut first, &scenario, &data, 0..3);
        let path = dir.path().join("state.safetensors");
        Tensor::write_safetensors(&first.state_tensors(), &path).expect("write state");
        let params: HashMap<String, Tensor> = first
            .groups()
            .iter()
            .flat_map(|g| g.params.iter())
            .map(|(name, p)| (name.clone(), p.detach().copy()))
            .collect();
        drop(first);

        let mut second = scenario.optimizer(&params, "");
        let state = Tensor::read_safetensors(&path).expect("read state");
        second.load_state_tensors(&state).expect("load state");
        let resumed = run(&mut second, &scenario, &data, 3..6);

        for (key, value) in &resumed {
            assert!(
                value.equal(&expected[key]),
                "{kind:?}: {key} differs after resume"
            );
        }
        let straight_state: HashMap<String, Tensor> =
            straight.state_tensors().into_iter().collect();
        let resumed_state = second.state_tensors();
        assert_eq!(
            resumed_state.len(),
            straight_state.len(),
            "{kind:?}: state entries"
        );
        for (key, value) in &resumed_state {
            assert!(
                value.equal(&straight_state[key]),
                "{kind:?}: state {key} differs after resume"
            );
        }
    }
}

#[test]
fn load_rejects_bad_state_and_keeps_the_old() {
    let kind = OptimizerKind::Adam {
        betas: ADAM_BETAS,
        eps: 1e-8,
    };
    let scenario = Scenario::new(kind, [1e-3, 1e-2, 3e-2], [1e-4, 5e-2, 0.0]);
    let data = scenario.data();
    let mut opt = scenario.optimizer(&data, "init/");
    run(&mut opt, &scenario, &data, 0..1);
    let before = opt.state_tensors();
    // Group 0 is frozen at step 0: only the other groups have state.
    assert_eq!(before.len(), 4 * 3);

    let mut bad: Vec<(String, Tensor)> = before
        .iter()
        .filter(|(name, _)| name != "head.bias.exp_avg_sq" && name != "loss.temperature.step")
        .map(|(name, t)| {
            let t = if name == "head.weight.exp_avg" {
                t.reshape([-1])
            } else {
                t.shallow_clone()
            };
            (name.clone(), t)
        })
        .collect();
    bad.push((
        "nope.exp_avg".into(),
        Tensor::zeros([2], (Kind::Double, Device::Cpu)),
    ));
    bad.push((
        "head.weight.momentum_buffer".into(),
        Tensor::zeros([67, 9], (Kind::Double, Device::Cpu)),
    ));
    bad.push((
        "loss.temperature.step".into(),
        Tensor::scalar_tensor(1.5, (Kind::Double, Device::Cpu)),
    ));
    let duplicate = before
        .iter()
        .find(|(name, _)| name == "loss.prototypes.exp_avg")
        .expect("state");
    bad.push((duplicate.0.clone(), duplicate.1.shallow_clone()));

    let message = opt
        .load_state_tensors(&bad)
        .expect_err("bad state must be rejected")
        .to_string();
    for needle in [
        "head.bias.exp_avg_sq: missing",
        "head.weight.exp_avg: shape [603]",
        "nope.exp_avg: unknown",
        "head.weight.momentum_buffer: unknown",
        "loss.temperature.step: 1.5 is not a step count",
        "loss.prototypes.exp_avg: given twice",
    ] {
        assert!(
            message.contains(needle),
            "error lacks {needle:?}: {message}"
        );
    }
    let after = opt.state_tensors();
    assert_eq!(after.len(), before.len());
    for ((name, a), (_, b)) in after.iter().zip(&before) {
        assert!(a.equal(b), "{name} changed by a rejected load");
    }

    // Starting fresh is allowed: an empty state clears everything.
    opt.load_state_tensors(&[]).expect("empty state");
    assert!(opt.state_tensors().is_empty());
}
