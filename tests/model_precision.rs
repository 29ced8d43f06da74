//! Channels-last and mixed precision (`model.channels_last`, `train.autocast`), on the CPU:
//! the switches themselves apply on CUDA only, but every piece they are made of runs here.
//!
//! - Channels-last ResNet-50 against the contiguous one: pooled features and every
//!   gradient agree to 1e-5 relative in float32; the weights, their gradients and the input
//!   really are channels-last. Gradient all-reduce buckets, the
//!   rank-0 broadcast and checkpoints handle channels-last tensors element by element.
//! - Autocast through csrc/amp.cpp on CPU bf16: embeddings close to float32 yet not equal
//!   (autocast was on), handed to the loss as float32, gradients float32; the dtype really is
//!   the one asked for (fp16 too), and regions nest and end even on panic.
//! - The fp16 loss scaler against torch.amp.GradScaler (tests/reference/grad_scaler_ref.py)
//!   step by step: scale bits, growth tracker, skipped steps and unscaled gradient bits.
//! - The scaler's state survives a checkpoint round trip, with a real step in between.
use std::path::Path;
use std::process::Command;

use hist::checkpoint::CheckpointStore;
use hist::config::{load_config_str, Backbone, BatchNormMode, Config, ConfigSource, ModelConfig};
use hist::dist::grad_sync::{broadcast_from_rank0, reduce_gradients, GradRule};
use hist::dist::{Collectives, ReduceOp, Solo};
use hist::model::autocast::{autocast_enabled, with_autocast, Autocast, AutocastDevice, AutocastDtype};
use hist::model::head::gap_plus_gmp;
use hist::model::memory_format::{is_channels_last, to_channels_last};
use hist::model::precision::Precision;
use hist::model::EmbeddingModel;
use hist::train::grad_scaler::{GradScaler, ScalerRule};
use hist::train::optim::{Optimizer, OptimizerKind};
use hist::train::param_groups::param_groups;
use hist::train::resume::{restore, snapshot, ResumePoint};
use hist::train::step::{embed_for_loss, train_step, StepBatch};
use hist::train::trainer::{build_state, TrainState};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// Channels-last vs contiguous, float32 (norm-wise relative error).
const TOL_LAYOUT: f64 = 1e-5;
/// bf16 autocast vs float32 embeddings (norm-wise relative error; bf16 keeps 8 bits).
const TOL_BF16: f64 = 5e-2;

fn python() -> String {
    // A missing interpreter must fail loudly: skipping would hide a wrong scaler.
    std::env::var("HIST_PYTHON").unwrap_or_else(|_| panic!("HIST_PYTHON is not set: run scripts/setup.sh (it writes .cargo/config.toml)"))
}

/// Deterministic values in [-1, 1) without torch's global generator, which tests running in
/// parallel share (splitmix64).
fn values(shape: &[i64], seed: u64) -> Tensor {
    let mut state = seed;
    let n: i64 = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f64 / (1u64 << 24) as f64 * 2.0 - 1.0) as f32
        })
        .collect();
    Tensor::from_slice(&v).reshape(shape)
}

/// ‖a − b‖ / ‖b‖.
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    (&a - &b).norm().double_value(&[]) / b.norm().double_value(&[]).max(1e-30)
}

fn model_config(backbone: Backbone, bn: BatchNormMode) -> ModelConfig {
    ModelConfig { backbone, bn, width: 8, embedding_dim: 16, ..ModelConfig::default() }
}

fn sorted_vars(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Pooled features of `input` in training mode, backpropagated through a fixed weighting.
fn pooled_and_backward(model: &EmbeddingModel, input: &Tensor, weights: &Tensor) -> Tensor {
    let pooled = gap_plus_gmp(&model.features(input, true));
    (&pooled * weights).sum(Kind::Float).backward();
    pooled.detach()
}

// BatchNorm is frozen (running statistics), as in the CUB/CARS recipes: with batch
// statistics a randomly initialised ResNet-50 amplifies rounding differences far beyond
// 1e-5 whatever the layout (torch itself, channels-last vs contiguous, 2×3×64×64 input:
// pooled features 7e-5 apart, some BN gradients 6%; frozen: 1e-6 and 2e-6).
#[test]
fn channels_last_resnet50_matches_the_contiguous_network() {
    let cfg = model_config(Backbone::Resnet50, BatchNormMode::Frozen);
    let vs_a = VarStore::new(Device::Cpu);
    let model_a = EmbeddingModel::new(&vs_a.root(), &cfg);
    let mut vs_b = VarStore::new(Device::Cpu);
    let mut model_b = EmbeddingModel::new(&vs_b.root(), &cfg);
    let converted = model_b.use_channels_last(&vs_b);
    assert_eq!(converted, 53, "ResNet-50 has 53 convolution weights");
    // Copied into the channels-last variables element by element, as a resume or an import
    // does; the layout stays.
    vs_b.copy(&vs_a).expect("copy the weights");
    let (vars_a, vars_b) = (sorted_vars(&vs_a), sorted_vars(&vs_b));
    for ((name, a), (_, b)) in vars_a.iter().zip(&vars_b) {
        if a.dim() == 4 {
            assert!(is_channels_last(b), "{name} is not channels-last: strides {:?}", b.stride());
            if a.size()[2] > 1 {
                assert!(!is_channels_last(a), "{name} of the contiguous network is channels-last");
            }
        }
        assert!(a.equal(b), "{name} differs after the copy");
    }

    let input = values(&[2, 3, 64, 64], 1);
    assert!(is_channels_last(&to_channels_last(&input)) && !is_channels_last(&input));
    let weights = values(&[1, 2048], 2);
    let input_a = input.copy().set_requires_grad(true);
    let input_b = input.copy().set_requires_grad(true);
    let pooled_a = pooled_and_backward(&model_a, &input_a, &weights);
    let pooled_b = pooled_and_backward(&model_b, &input_b, &weights);
    let err = rel_err(&pooled_b, &pooled_a);
    eprintln!("pooled features: relative error {err:.2e}");
    assert!(err <= TOL_LAYOUT, "pooled features differ: {err:.2e}");
    assert!(pooled_a.abs().max().double_value(&[]) > 0.0);

    let mut worst = (0.0f64, String::new());
    let mut compared = 0;
    for ((name, a), (_, b)) in vars_a.iter().zip(&vars_b) {
        let (ga, gb) = (a.grad(), b.grad());
        let has_grad = ga.defined();
        // Variables without a gradient (frozen BN) must be untouched on both sides alike.
        let (x, y) = if has_grad { (gb, ga) } else { (b.shallow_clone(), a.shallow_clone()) };
        assert!(x.defined(), "{name}: gradient on one side only");
        if has_grad && a.dim() == 4 {
            assert!(is_channels_last(&x), "{name}: gradient of a channels-last weight is not channels-last");
        }
        let err = rel_err(&x, &y);
        if err > worst.0 {
            worst = (err, name.clone());
        }
        compared += usize::from(has_grad);
    }
    eprintln!("gradients of {compared} parameters: worst relative error {:.2e} ({})", worst.0, worst.1);
    assert_eq!(compared, 53, "every convolution weight has a gradient");
    assert!(worst.0 <= TOL_LAYOUT, "{} differs: {:.2e}", worst.1, worst.0);
    let err = rel_err(&input_b.grad(), &input_a.grad());
    assert!(err <= TOL_LAYOUT, "input gradient differs: {err:.2e}");
}

/// Two ranks as seen from rank 1, where rank 0 holds the same gradients (all-reduce sum
/// doubles them) and the negated parameters (broadcast negates).
struct MirrorRank;

impl Collectives for MirrorRank {
    fn rank(&self) -> usize {
        1
    }
    fn world_size(&self) -> usize {
        2
    }
    fn all_reduce(&mut self, tensor: &mut Tensor, op: ReduceOp) -> hist::Result<()> {
        assert!(tensor.is_contiguous(), "collectives take contiguous tensors");
        if op == ReduceOp::Sum {
            let _ = tensor.g_mul_scalar_(2.0);
        }
        Ok(())
    }
    fn all_gather(&mut self, tensor: &Tensor) -> hist::Result<Tensor> {
        Ok(Tensor::cat(&[tensor.shallow_clone(), tensor.shallow_clone()], 0))
    }
    fn broadcast(&mut self, tensor: &mut Tensor, _root: usize) -> hist::Result<()> {
        assert!(tensor.is_contiguous(), "collectives take contiguous tensors");
        let _ = tensor.neg_();
        Ok(())
    }
    fn barrier(&mut self) -> hist::Result<()> {
        Ok(())
    }
}

#[test]
fn gradient_buckets_and_broadcast_handle_channels_last_tensors() {
    let weight = to_channels_last(&values(&[4, 3, 3, 5], 3)).set_requires_grad(true);
    let bias = values(&[7], 4).set_requires_grad(true);
    assert!(is_channels_last(&weight));
    let (cw, cb) = (values(&[4, 3, 3, 5], 5), values(&[7], 6));
    ((&weight * &cw).sum(Kind::Float) + (&bias * &cb).sum(Kind::Float)).backward();
    assert!(is_channels_last(&weight.grad()));
    let params = [(weight.shallow_clone(), GradRule::Sum), (bias.shallow_clone(), GradRule::Sum)];
    reduce_gradients(&mut MirrorRank, &params, 1 << 20).expect("reduce");
    assert!(weight.grad().equal(&(&cw * 2.0)), "channels-last gradient scrambled by the bucket");
    assert!(bias.grad().equal(&(&cb * 2.0)));
    assert!(is_channels_last(&weight.grad()), "the gradient kept its layout");

    let before = weight.detach().copy();
    broadcast_from_rank0(&mut MirrorRank, &[("w".to_string(), weight.shallow_clone())]).expect("broadcast");
    assert!(weight.detach().equal(&before.neg()), "channels-last parameter scrambled by the broadcast");
    assert!(is_channels_last(&weight));
}

#[test]
fn bf16_autocast_embeddings_are_close_to_float32_but_not_equal_and_reach_the_loss_as_float32() {
    let vs = VarStore::new(Device::Cpu);
    let model = EmbeddingModel::new(&vs.root(), &model_config(Backbone::SmallCnn, BatchNormMode::Local));
    let images = values(&[8, 3, 32, 32], 7);
    let bf16 = Some(Autocast { device: AutocastDevice::Cpu, dtype: AutocastDtype::Bf16 });

    let reference = embed_for_loss(&model, &images, true, None).expect("float32 forward");
    assert_eq!(reference.kind(), Kind::Float);
    let raw = with_autocast(bf16, || model.forward(&images, true)).expect("autocast forward");
    assert_eq!(raw.kind(), Kind::BFloat16, "the head's output under autocast");
    let emb = embed_for_loss(&model, &images, true, bf16).expect("autocast forward");
    assert_eq!(emb.kind(), Kind::Float, "the loss must get float32 embeddings");
    let err = rel_err(&emb, &reference);
    eprintln!("bf16 autocast embeddings vs float32: relative error {err:.2e}");
    assert!(err > 0.0, "bit-identical to float32: autocast was not active");
    assert!(err <= TOL_BF16, "bf16 embeddings too far from float32: {err:.2e}");
    // Autocast ended with the region: the same call outside gives float32 again, exactly.
    assert!(!autocast_enabled(AutocastDevice::Cpu));
    assert!(embed_for_loss(&model, &images, true, None).expect("forward").equal(&reference));

    // Gradients reach the float32 parameters as float32.
    emb.square().sum(Kind::Float).backward();
    let trained: Vec<(String, Tensor)> = vs.trainable_variables().into_iter().map(|t| (format!("{:?}", t.size()), t)).collect();
    assert!(!trained.is_empty());
    for (shape, t) in &trained {
        assert_eq!(t.kind(), Kind::Float, "parameter {shape}");
        assert_eq!(t.grad().kind(), Kind::Float, "gradient of {shape}");
    }
}

#[test]
fn autocast_regions_set_the_dtype_asked_for_nest_and_end_on_panic() {
    let x = values(&[2, 5], 8);
    let w = values(&[3, 5], 9);
    let linear = || x.linear(&w, None::<&Tensor>).kind();
    let on = |dtype| Some(Autocast { device: AutocastDevice::Cpu, dtype });
    assert_eq!(linear(), Kind::Float);
    let (outer, inner, after_inner) = with_autocast(on(AutocastDtype::Bf16), || {
        let outer = linear();
        let inner = with_autocast(on(AutocastDtype::Fp16), linear).expect("inner region");
        (outer, inner, linear())
    })
    .expect("outer region");
    assert_eq!((outer, inner, after_inner), (Kind::BFloat16, Kind::Half, Kind::BFloat16));
    assert!(!autocast_enabled(AutocastDevice::Cpu));
    assert_eq!(linear(), Kind::Float);
    let unwound = std::panic::catch_unwind(|| with_autocast(on(AutocastDtype::Bf16), || panic!("inside the region")));
    assert!(unwound.is_err());
    assert!(!autocast_enabled(AutocastDevice::Cpu), "a panic left autocast on");
    assert!(with_autocast(None, || autocast_enabled(AutocastDevice::Cpu)).is_ok_and(|on| !on));
}

#[test]
fn a_cpu_device_turns_both_switches_off_and_says_so() {
    let config = tiny_config(&["model.channels_last=true", "train.autocast=fp16"]);
    assert_eq!(Precision::resolve(&config, Device::Cpu), Precision::default());
    let cuda = Precision::resolve(&config, Device::Cuda(0));
    assert!(cuda.channels_last && cuda.loss_scaling());
    assert_eq!(cuda.autocast, Some(Autocast { device: AutocastDevice::Cuda, dtype: AutocastDtype::Fp16 }));
    let notice = Precision::cpu_notice(&config, Device::Cpu).expect("a notice on the CPU");
    assert!(notice.contains("CUDA only") && notice.contains("float32"), "{notice}");
    assert_eq!(Precision::cpu_notice(&tiny_config(&[]), Device::Cpu), None);
    // build_state leaves a CPU model contiguous whatever the config says.
    let state = build_state(&config, 4, Device::Cpu);
    assert!(state.vs.variables().values().filter(|t| t.dim() == 4).all(|t| t.is_contiguous()));
}

/// One scaler scenario: the rule, and each step's gradient values.
struct Scenario {
    rule: ScalerRule,
    grads: Vec<Vec<f32>>,
}

fn reference_run(s: &Scenario) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("scenario.json");
    // Bit patterns: exact, and they carry inf and NaN.
    let grad_bits: Vec<Vec<u32>> = s.grads.iter().map(|g| g.iter().map(|v| v.to_bits()).collect()).collect();
    let scenario = serde_json::json!({
        "init_scale": s.rule.init_scale,
        "growth_factor": s.rule.growth_factor,
        "backoff_factor": s.rule.backoff_factor,
        "growth_interval": s.rule.growth_interval,
        "grad_bits": grad_bits,
    });
    std::fs::write(&path, scenario.to_string()).expect("write scenario");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/grad_scaler_ref.py");
    let python = python();
    let out = Command::new(&python).arg(&script).arg(&path).output().unwrap_or_else(|e| panic!("could not run {python}: {e}"));
    assert!(out.status.success(), "grad_scaler_ref.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("reference JSON")
}

fn compare_with_torch(label: &str, s: &Scenario) {
    let want = reference_run(s);
    let mut scaler = GradScaler::new(s.rule);
    let mut skipped = 0;
    for (i, values) in s.grads.iter().enumerate() {
        let grad = Tensor::from_slice(values);
        let stepped = scaler.unscale_and_update(&[grad.shallow_clone()]).expect("unscale");
        skipped += usize::from(!stepped);
        let at = |key: &str| want[key][i].clone();
        assert_eq!(stepped, at("stepped").as_bool().expect("bool"), "{label} step {i}: stepped");
        assert_eq!((scaler.scale() as f32).to_bits() as u64, at("scale_bits").as_u64().expect("bits"), "{label} step {i}: scale {}", scaler.scale());
        assert_eq!(scaler.growth_tracker() as i64, at("growth_tracker").as_i64().expect("tracker"), "{label} step {i}: growth tracker");
        let ours = Vec::<f32>::try_from(&grad).expect("values");
        for (j, (o, w)) in ours.iter().zip(at("unscaled_bits").as_array().expect("array")).enumerate() {
            let w = f32::from_bits(w.as_u64().expect("bits") as u32);
            assert!(o.to_bits() == w.to_bits() || (o.is_nan() && w.is_nan()), "{label} step {i}: unscaled gradient {j}: {o} vs torch {w}");
        }
    }
    assert_eq!(scaler.skipped_steps(), skipped as i64);
    eprintln!("{label}: {} steps, {skipped} skipped, final scale {}", s.grads.len(), scaler.scale());
}

/// Overflow pattern `inf(i)` over `steps` steps with gradient values that vary.
fn grads(steps: usize, inf: impl Fn(usize) -> Option<f32>) -> Vec<Vec<f32>> {
    (0..steps).map(|i| vec![0.25 + i as f32 * 0.75, -3.0e4 / (1 + i) as f32, inf(i).unwrap_or(1.5)]).collect()
}

#[test]
fn loss_scaler_follows_torch_grad_scaler_step_by_step() {
    // torch's defaults: early overflows, 2000 finite steps twice (two growths), overflows between.
    let defaults = Scenario {
        rule: ScalerRule::default(),
        grads: grads(4600, |i| match i {
            0..=2 => Some(f32::INFINITY),
            2500 => Some(f32::NAN),
            4400 => Some(f32::NEG_INFINITY),
            _ => None,
        }),
    };
    compare_with_torch("defaults", &defaults);
    // Growth every 3 steps until float32 would overflow: the scale stops at 2^127.
    let saturate = Scenario { rule: ScalerRule { growth_interval: 3, ..ScalerRule::default() }, grads: grads(400, |_| None) };
    compare_with_torch("saturation", &saturate);
    // Factors that are not powers of two: the float32 rounding of every update and unscale.
    let odd = Scenario {
        rule: ScalerRule { init_scale: 1000.0, growth_factor: 3.0, backoff_factor: 0.3, growth_interval: 2 },
        grads: grads(300, |i| (i % 7 == 3 || i % 11 == 0).then_some(f32::INFINITY)),
    };
    compare_with_torch("odd factors", &odd);
    // A long run of overflows: the scale backs off into subnormals and to zero.
    let underflow = Scenario { rule: ScalerRule::default(), grads: grads(200, |i| (i < 190).then_some(f32::NAN)) };
    compare_with_torch("underflow", &underflow);
}

fn tiny_config(sets: &[&str]) -> Config {
    let text = "seed: 3\ndata: {batch_size: 8, ipc: 2, synthetic: {train_classes: 4, test_classes: 2, images_per_class: 2}}\n\
                model: {width: 4, embedding_dim: 8, bn: local}\nloss: {hgnn_hidden: 8}\ntrain: {epochs: 1, warmup_epochs: 0}\n";
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    load_config_str(text, ConfigSource::Embedded("model_precision"), &sets).expect("test config")
}

/// The run's state with channels-last backbone weights (on the CPU, by hand: the config
/// switch applies on CUDA only) and its optimiser.
fn channels_last_state(config: &Config) -> (TrainState, Optimizer) {
    let mut state = build_state(config, 4, Device::Cpu);
    assert!(state.model.use_channels_last(&state.vs) > 0);
    let o = &config.optim;
    let optimizer = Optimizer::new(OptimizerKind::Adam { betas: (o.betas[0], o.betas[1]), eps: o.eps }, param_groups(&state.vs, o));
    (state, optimizer)
}

#[test]
fn scaler_state_and_channels_last_variables_survive_a_checkpoint_round_trip() {
    let config = tiny_config(&[]);
    let (state, mut optimizer) = channels_last_state(&config);
    let rules: Vec<(Tensor, GradRule)> =
        optimizer.groups().iter().flat_map(|g| g.params.iter().map(|(_, t)| (t.shallow_clone(), GradRule::Sum))).collect();
    let mut scaler = GradScaler::default();
    scaler.update(true);
    // A real step with loss scaling: the scaled float32 gradients are finite, so it steps.
    let batch = StepBatch { images: values(&[8, 3, 32, 32], 11), labels: vec![0, 0, 1, 1, 2, 2, 3, 3], present: None };
    let stats = train_step(&mut Solo, &state.model, &state.loss, &mut optimizer, &rules, batch, Device::Cpu, 1 << 20, None, Some(&mut scaler))
        .expect("step");
    assert!(!stats.skipped && stats.losses[0].is_finite());
    assert_eq!((scaler.scale(), scaler.growth_tracker(), scaler.skipped_steps()), (32768.0, 1, 1));
    let channels_last_state_kept = optimizer.state_tensors().iter().any(|(n, t)| n.ends_with("exp_avg") && t.dim() == 4 && is_channels_last(t));
    assert!(channels_last_state_kept, "Adam's moments of a channels-last weight");

    let point = ResumePoint { epoch: 0, step_in_epoch: 1, global_step: 1, epoch_sums: stats.losses, epoch_steps: 1, epoch_skipped: 0 };
    let (meta, tensors) = snapshot(&config, &state, &optimizer, Some(&scaler), &point, None, 1, 4).expect("snapshot");
    assert!(tensors.model.iter().all(|(_, t)| t.is_contiguous()), "written in the standard layout");
    let dir = tempfile::tempdir().expect("temp dir");
    let saved = CheckpointStore::new(dir.path(), 2).save(&meta, &tensors).expect("save");
    let loaded = CheckpointStore::load_dir(&saved).expect("load");

    let (fresh, mut fresh_optimizer) = channels_last_state(&config);
    let mut fresh_scaler = GradScaler::default();
    let resumed = restore(&loaded, &fresh, &mut fresh_optimizer, Some(&mut fresh_scaler)).expect("restore");
    assert_eq!(resumed, point);
    assert_eq!(fresh_scaler, scaler, "scale, growth tracker and skipped steps");
    for ((name, a), (_, b)) in sorted_vars(&state.vs).iter().zip(sorted_vars(&fresh.vs).iter()) {
        assert!(a.equal(b), "{name} differs after the round trip");
        if a.dim() == 4 {
            assert!(is_channels_last(b), "{name} lost its layout");
        }
    }
    let (before, after) = (optimizer.state_tensors(), fresh_optimizer.state_tensors());
    assert_eq!(before.len(), after.len());
    for ((n, a), (m, b)) in before.iter().zip(&after) {
        assert!(n == m && a.equal(b), "optimiser state {n}");
    }

    // A run without fp16 ignores the scaler's entries; an fp16 run resuming a checkpoint
    // written without them starts from the initial scale.
    let (plain, mut plain_optimizer) = channels_last_state(&config);
    restore(&loaded, &plain, &mut plain_optimizer, None).expect("restore without a scaler");
    let (meta, tensors) = snapshot(&config, &state, &optimizer, None, &point, None, 1, 4).expect("snapshot");
    let dir = tempfile::tempdir().expect("temp dir");
    let saved = CheckpointStore::new(dir.path(), 2).save(&meta, &tensors).expect("save");
    let mut started = GradScaler::default();
    restore(&CheckpointStore::load_dir(&saved).expect("load"), &plain, &mut plain_optimizer, Some(&mut started)).expect("restore");
    assert_eq!(started, GradScaler::default());
}

/// Two ranks as seen from rank 1 (as [`MirrorRank`] for the data), recording every call:
/// on NCCL a host read of a collective's result before `finish_pending` waits for ever on a
/// dead peer, and only the call order shows that on a CPU.
#[derive(Default)]
struct Recording(Vec<&'static str>);

impl Collectives for Recording {
    fn rank(&self) -> usize {
        1
    }
    fn world_size(&self) -> usize {
        2
    }
    fn all_reduce(&mut self, tensor: &mut Tensor, op: ReduceOp) -> hist::Result<()> {
        self.0.push("all_reduce");
        if op == ReduceOp::Sum {
            let _ = tensor.g_mul_scalar_(2.0);
        }
        Ok(())
    }
    fn all_gather(&mut self, tensor: &Tensor) -> hist::Result<Tensor> {
        self.0.push("all_gather");
        Ok(Tensor::cat(&[tensor.shallow_clone(), tensor.shallow_clone()], 0))
    }
    fn broadcast(&mut self, _tensor: &mut Tensor, _root: usize) -> hist::Result<()> {
        self.0.push("broadcast");
        Ok(())
    }
    fn barrier(&mut self) -> hist::Result<()> {
        self.0.push("barrier");
        Ok(())
    }
    fn finish_pending(&mut self) -> hist::Result<()> {
        self.0.push("wait");
        Ok(())
    }
}

#[test]
fn a_step_waits_for_its_collectives_before_reading_their_results() {
    let config = tiny_config(&[]);
    let labels: Vec<i64> = [0, 0, 1, 1, 2, 2, 3, 3].repeat(2);
    let one_missing = vec![true, true, false, true, true, true, true, true];
    for present in [None, Some(one_missing)] {
        let state = build_state(&config, 4, Device::Cpu);
        let o = &config.optim;
        let mut optimizer = Optimizer::new(OptimizerKind::Adam { betas: (o.betas[0], o.betas[1]), eps: o.eps }, param_groups(&state.vs, o));
        let rules: Vec<(Tensor, GradRule)> =
            optimizer.groups().iter().flat_map(|g| g.params.iter().map(|(_, t)| (t.shallow_clone(), GradRule::Sum))).collect();
        let images = present.as_ref().map_or(8, |p| p.iter().filter(|&&x| x).count() as i64);
        let skipping = present.is_some();
        let batch = StepBatch { images: values(&[images, 3, 32, 32], 13), labels: labels.clone(), present };
        let mut pg = Recording::default();
        let stats = train_step(&mut pg, &state.model, &state.loss, &mut optimizer, &rules, batch, Device::Cpu, 1 << 20, None, None).expect("step");
        assert!(stats.losses[0].is_finite());
        let calls = &pg.0;
        // The losses are read on the host at the end: every collective is waited for first.
        assert_eq!(calls.last(), Some(&"wait"), "{calls:?}");
        assert!(calls.contains(&"all_reduce"), "{calls:?}");
        if skipping {
            // The skipped-image flags are read on the host right after the gather.
            let gather = calls.iter().position(|&c| c == "all_gather").expect("a gather");
            assert_eq!(calls.get(gather + 1), Some(&"wait"), "{calls:?}");
            assert_eq!(stats.dropped, vec![2, 10]);
        }
    }
}
