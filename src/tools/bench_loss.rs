//! `hist bench-loss`: times forward + backward of the HIST loss on random f32 inputs on
//! the CPU and reports the peak memory of the measured region, as one JSON line on stdout.
//! scripts/bench_loss.py runs it beside PyTorch baselines and writes docs/benchmarks.md.
//!
//! Peak memory is the growth of the process's peak resident set over the measured region:
//! after warm-up, writing "5" to /proc/self/clear_refs resets VmHWM to the current VmRSS
//! (the baseline, which holds the inputs); VmHWM − baseline after the timed passes is the
//! peak. Where the reset is refused, the report says so and the figure includes the warm-up.
use std::time::Instant;

use serde_json::json;
use tch::{Device, Kind, Tensor};

use crate::error::{HistError, Result};
use crate::loss::hgnn::HgnnWeights;
use crate::loss::{hist_loss, HistHyper, HistTensors};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchArgs {
    /// Batch size N.
    pub n: i64,
    /// Number of classes C.
    pub c: i64,
    /// Embedding size D.
    pub d: i64,
    /// HGNN hidden size.
    pub hidden: i64,
    /// Timed forward + backward passes.
    pub reps: usize,
    /// Untimed passes before the measured region.
    pub warmup: usize,
    /// libtorch intra-op threads.
    pub threads: i32,
    /// Images per class in the batch (class-balanced, as in training).
    pub ipc: i64,
    /// RNG seed of the inputs.
    pub seed: i64,
}

/// Runs the benchmark and prints its JSON report.
pub fn run(args: &BenchArgs) -> Result<()> {
    let report = measure(args)?;
    println!("{report}");
    Ok(())
}

fn check_args(a: &BenchArgs) -> Result<()> {
    let bad = |key: &str, msg: String| Err(HistError::config("bench-loss", format!("--{key}: {msg}")));
    if a.n < 2 {
        return bad("n", format!("must be ≥ 2 (BatchNorm needs two samples), got {}", a.n));
    }
    for (key, v) in [("c", a.c), ("d", a.d), ("hidden", a.hidden), ("ipc", a.ipc)] {
        if v < 1 {
            return bad(key, format!("must be ≥ 1, got {v}"));
        }
    }
    if a.reps < 1 || a.threads < 1 {
        return bad("reps/threads", format!("must be ≥ 1, got {} / {}", a.reps, a.threads));
    }
    Ok(())
}

/// Class-balanced labels: N / ipc distinct random classes, ipc samples each.
fn balanced_labels(n: i64, c: i64, ipc: i64) -> Tensor {
    let distinct = ((n + ipc - 1) / ipc).min(c);
    let classes = Tensor::randperm(c, (Kind::Int64, Device::Cpu)).narrow(0, 0, distinct);
    let idx = Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(distinct);
    classes.index_select(0, &idx)
}

/// Random f32 inputs of realistic magnitudes, as leaves that require gradients.
fn inputs(a: &BenchArgs) -> (Vec<Tensor>, Tensor) {
    tch::manual_seed(a.seed);
    let f = (Kind::Float, Device::Cpu);
    let u = |shape: &[i64], fan: i64| (Tensor::rand(shape, f) * 2.0 - 1.0) / (fan as f64).sqrt();
    let labels = balanced_labels(a.n, a.c, a.ipc);
    let (n, c, d, h) = (a.n, a.c, a.d, a.hidden);
    let leaves = vec![
        Tensor::randn([n, d], f),
        Tensor::randn([c, d], f) * (2.0 / c as f64).sqrt(),
        Tensor::randn([c, d], f) * (2.0 / c as f64).sqrt(),
        u(&[h, d], d),
        u(&[h], d),
        Tensor::ones([h], f),
        Tensor::zeros([h], f),
        u(&[c, h], h),
        u(&[c], h),
    ];
    let leaves = leaves.into_iter().map(|t| t.set_requires_grad(true)).collect();
    (leaves, labels)
}

/// One forward + backward; returns the loss value.
fn pass(leaves: &[Tensor], labels: &Tensor, hyper: HistHyper) -> f64 {
    let hgnn = HgnnWeights {
        w1: &leaves[3], b1: &leaves[4], bn_weight: &leaves[5], bn_bias: &leaves[6],
        bn_running: None, w2: &leaves[7], b2: &leaves[8],
    };
    let tensors = HistTensors { means: &leaves[1], log_vars: &leaves[2], hgnn };
    let terms = hist_loss(&leaves[0], labels, tensors, hyper);
    // Gradients of every leaf, returned rather than accumulated into .grad, so that each
    // pass allocates (and frees) them inside the measured region.
    let grads = Tensor::run_backward(&[&terms.total], leaves, false, false);
    drop(grads);
    terms.total.double_value(&[])
}

/// A field of /proc/self/status in KiB.
fn status_kib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resets VmHWM to the current VmRSS (Linux ≥ 4.0).
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn measure(a: &BenchArgs) -> Result<serde_json::Value> {
    check_args(a)?;
    tch::set_num_threads(a.threads);
    tch::set_num_interop_threads(1);
    let hyper = HistHyper { tau: 32.0, alpha: 0.9, ls: 1.0 };
    let (leaves, labels) = inputs(a);
    for _ in 0..a.warmup {
        pass(&leaves, &labels, hyper);
    }

    let reset = reset_peak();
    let base_kib = status_kib("VmRSS:").unwrap_or(0);
    let mut times_ms = Vec::with_capacity(a.reps);
    let mut loss = f64::NAN;
    for _ in 0..a.reps {
        let start = Instant::now();
        loss = pass(&leaves, &labels, hyper);
        times_ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let peak_kib = status_kib("VmHWM:").unwrap_or(0);

    let mut sorted = times_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let median = if sorted.len() % 2 == 1 {
        sorted[sorted.len() / 2]
    } else {
        (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
    };
    Ok(json!({
        "impl": "hist (tch)",
        "n": a.n, "c": a.c, "d": a.d, "hidden": a.hidden, "ipc": a.ipc,
        "threads": tch::get_num_threads(), "reps": a.reps, "warmup": a.warmup,
        "median_ms": median, "min_ms": sorted[0], "times_ms": times_ms,
        "baseline_rss_mb": base_kib as f64 / 1024.0,
        "peak_growth_mb": peak_kib.saturating_sub(base_kib) as f64 / 1024.0,
        "peak_method": if reset { "clear_refs reset of VmHWM, VmHWM - VmRSS" } else { "VmHWM - VmRSS (no reset: includes warm-up)" },
        "loss": loss,
    }))
}
