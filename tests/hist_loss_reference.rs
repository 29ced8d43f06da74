//! Holds `hist inspect-loss` (our HIST loss and its gradients) to an independent PyTorch
//! reference, tests/reference/hist_loss_ref.py, on a covering set of shapes, and checks
//! that bad input files fail with a one-line message naming the tensor.
//!
//! Each case: the reference generates random inputs (`gen`), the worker binary computes
//! the loss and gradients, and the reference recomputes them in float64 and reports the
//! max relative error per output (`check`): max|ours − ref| / max|ref|.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use tch::{Kind, Tensor};

/// Relative error allowed when the inputs are float64.
const TOL_F64: f64 = 1e-8;
/// Relative error allowed when the inputs are float32 (against the float64 reference)...
const TOL_F32: f64 = 1e-4;
/// ...or this multiple of PyTorch's own float32 error on that output, if larger: the
/// bias before BatchNorm (grad.hgnn.b1) is ill-conditioned, PyTorch itself reaches ~2e-4.
const TORCH_F32_FACTOR: f64 = 4.0;

/// Every output the reference checks.
const OUTPUTS: [&str; 12] = [
    "loss", "loss_ds", "loss_ce", "grad.embeddings", "grad.means", "grad.log_vars",
    "grad.hgnn.w1", "grad.hgnn.b1", "grad.hgnn.bn_weight", "grad.hgnn.bn_bias",
    "grad.hgnn.w2", "grad.hgnn.b2",
];

fn python() -> String {
    // A missing interpreter must fail loudly: skipping would hide a wrong loss.
    std::env::var("HIST_PYTHON").unwrap_or_else(|_| {
        panic!("HIST_PYTHON is not set; run scripts/setup.sh to create the Python venv and .cargo/config.toml")
    })
}

fn reference_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/hist_loss_ref.py")
}

fn run_python(args: &[&str]) -> Output {
    let python = python();
    let output = Command::new(&python)
        .arg(reference_script())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("could not run {python} (re-run scripts/setup.sh?): {e}"));
    assert!(
        output.status.success(),
        "hist_loss_ref.py {args:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn inspect_loss(input: &Path, output: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hist"))
        .arg("inspect-loss")
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .output()
        .expect("run the hist binary")
}

/// Generates a case, runs our loss on it and returns the reference's JSON report.
fn check_case(seed: u64, n: i64, c: i64, d: i64, hidden: i64, dtype: &str) -> Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("in.safetensors");
    let ours = dir.path().join("ours.safetensors");
    let (seed, n, c, d, hidden) =
        (seed.to_string(), n.to_string(), c.to_string(), d.to_string(), hidden.to_string());
    let input_str = input.to_str().expect("utf-8 temp path");
    run_python(&[
        "gen", "--seed", &seed, "--n", &n, "--c", &c, "--d", &d, "--hidden", &hidden, "--dtype",
        dtype, input_str,
    ]);
    let out = inspect_loss(&input, &ours);
    assert!(
        out.status.success(),
        "hist inspect-loss failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_python(&["check", input_str, ours.to_str().expect("utf-8 temp path")]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("bad JSON from hist_loss_ref.py check: {e}\n{}", String::from_utf8_lossy(&out.stdout))
    })
}

fn assert_matches_reference(seed: u64, n: i64, c: i64, d: i64, hidden: i64, dtype: &str, tol: f64) {
    let report = check_case(seed, n, c, d, hidden, dtype);
    let case = format!("N={n} C={c} D={d} H={hidden} {dtype}");
    // Printed so `cargo test -- --nocapture` shows the errors of every case.
    println!("{case}: {}", report["errors"]);
    let problems = report["problems"].as_array().expect("problems array");
    assert!(problems.is_empty(), "{case}: {problems:?}");
    let torch_same_dtype = &report["torch_same_dtype_errors"];
    if dtype != "f64" {
        println!("{case}, PyTorch in {dtype}: {torch_same_dtype}");
    }
    for name in OUTPUTS {
        let err = report["errors"][name]
            .as_f64()
            .unwrap_or_else(|| panic!("{case}: no error reported for {name}: {report}"));
        let tol = match torch_same_dtype[name].as_f64() {
            Some(torch_err) => tol.max(TORCH_F32_FACTOR * torch_err),
            None => tol,
        };
        assert!(err <= tol, "{case}: {name} relative error {err:e} > {tol:e}\n{report}");
    }
}

// Reference (tests/reference/hist_loss_ref.py), in float64 with autograd for the gradients:
//   x_hat, m_hat = l2_norm(x), l2_norm(means)              # x / sqrt(Σx² + 1e-12)
//   diff = x_hat[:, None, :] - m_hat[None, :, :]             # N×C×D materialised
//   dist = (diff.pow(2) / exp(relu6(log_vars))[None]).sum(-1)
//   loss_ds = -(log_softmax(-tau * dist, 1) * one_hot).sum(1).mean()
//   in_batch = nonzero(one_hot.sum(0) != 0)
//   H = one_hot[:, in_batch] + exp(-alpha * dist[:, in_batch]) * (1 - one_hot[:, in_batch])
//   G = multi_dot([diag(Dv^-0.5), H, diag(1), diag(De^-1), H.t(), diag(Dv^-0.5)])
//   z = leaky_relu(batch_norm(G @ linear(x, w1, b1), training=True, eps=1e-5), 0.1)
//   loss_ce = cross_entropy(G @ linear(z, w2, b2), y);  loss = loss_ds + ls * loss_ce
#[test]
fn few_samples_few_classes_narrow() {
    assert_matches_reference(11, 8, 4, 16, 48, "f64", TOL_F64);
}

#[test]
fn mostly_singleton_classes_wide() {
    // N = 8 among C = 1000: most classes in the batch have one sample, most are absent.
    assert_matches_reference(12, 8, 1000, 512, 256, "f64", TOL_F64);
}

#[test]
fn medium_batch_narrow() {
    assert_matches_reference(13, 64, 100, 16, 48, "f64", TOL_F64);
}

#[test]
fn medium_batch_many_per_class_wide() {
    assert_matches_reference(14, 64, 4, 512, 256, "f64", TOL_F64);
}

#[test]
fn large_batch_many_per_class_narrow() {
    // N = 180 over C = 4: dozens of samples per hyperedge.
    assert_matches_reference(15, 180, 4, 16, 48, "f64", TOL_F64);
}

#[test]
fn large_batch_many_classes_wide() {
    assert_matches_reference(16, 180, 1000, 512, 512, "f64", TOL_F64);
}

#[test]
fn float32_inputs_within_single_precision() {
    // Our f32 result against the f64 reference of the same (f32-rounded) inputs; the
    // bound per output is max(1e-4, 4 × the error of the reference run in f32).
    assert_matches_reference(17, 64, 100, 512, 256, "f32", TOL_F32);
}

/// A small valid input set, built here (no Python) for the error-path tests.
fn valid_inputs(n: i64, c: i64, d: i64, h: i64) -> Vec<(String, Tensor)> {
    tch::manual_seed(5);
    let f = (Kind::Double, tch::Device::Cpu);
    let labels: Vec<i64> = (0..n).map(|i| i % c).collect();
    vec![
        ("embeddings".into(), Tensor::randn([n, d], f)),
        ("labels".into(), Tensor::from_slice(&labels)),
        ("means".into(), Tensor::randn([c, d], f)),
        ("log_vars".into(), Tensor::randn([c, d], f)),
        ("hgnn.w1".into(), Tensor::randn([h, d], f) * 0.1),
        ("hgnn.b1".into(), Tensor::zeros([h], f)),
        ("hgnn.bn_weight".into(), Tensor::ones([h], f)),
        ("hgnn.bn_bias".into(), Tensor::zeros([h], f)),
        ("hgnn.w2".into(), Tensor::randn([c, h], f) * 0.1),
        ("hgnn.b2".into(), Tensor::zeros([c], f)),
        ("tau".into(), Tensor::from(32.0f64)),
        ("alpha".into(), Tensor::from_slice(&[1.1f64])),
        ("ls".into(), Tensor::from(1.0f64)),
    ]
}

/// Writes `tensors`, runs inspect-loss, returns (output, whether an output file appeared).
fn run_inspect(tensors: &[(String, Tensor)]) -> (Output, bool) {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("in.safetensors");
    let output = dir.path().join("out.safetensors");
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_safetensors(&refs, &input).expect("write test input");
    let out = inspect_loss(&input, &output);
    (out, output.exists())
}

/// Asserts a non-zero exit with exactly one line on stderr containing every `needles`.
fn assert_fails_naming(tensors: &[(String, Tensor)], needles: &[&str]) {
    let (out, wrote) = run_inspect(tensors);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got {}; stderr: {stderr}", out.status);
    assert!(!wrote, "an output file was written despite the error");
    let lines: Vec<&str> = stderr.trim_end().lines().collect();
    assert_eq!(lines.len(), 1, "stderr should be one line, got:\n{stderr}");
    for needle in needles {
        assert!(lines[0].contains(needle), "stderr {:?} does not mention {needle:?}", lines[0]);
    }
}

#[test]
fn valid_control_input_succeeds() {
    // The error tests below each change one thing of this input.
    let (out, wrote) = run_inspect(&valid_inputs(6, 4, 8, 5));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(wrote);
}

#[test]
fn missing_tensor_is_named() {
    let mut t = valid_inputs(6, 4, 8, 5);
    t.retain(|(n, _)| n != "hgnn.w2");
    assert_fails_naming(&t, &["hgnn.w2", "missing"]);
}

#[test]
fn wrongly_shaped_tensor_is_named() {
    let mut t = valid_inputs(6, 4, 8, 5);
    for (name, tensor) in t.iter_mut() {
        if name == "log_vars" {
            *tensor = Tensor::zeros([4, 9], (Kind::Double, tch::Device::Cpu));
        }
    }
    assert_fails_naming(&t, &["log_vars", "[4, 8]", "[4, 9]"]);
}

#[test]
fn label_out_of_range_is_named() {
    let mut t = valid_inputs(6, 4, 8, 5);
    for (name, tensor) in t.iter_mut() {
        if name == "labels" {
            *tensor = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 0]); // 4 ∉ [0, C = 4)
        }
    }
    assert_fails_naming(&t, &["labels", "[0, 4)"]);
}
