//! Squared Mahalanobis distances between embeddings and the class distributions.
use tch::{Kind, Tensor};

/// Added under the square root of the L2 norm, as the authors' `l2_norm` does, so a zero
/// vector maps to zero instead of NaN.
pub const L2_EPS: f64 = 1e-12;

/// Row-wise x / sqrt(Σ x² + 1e-12).
pub fn l2_normalize(x: &Tensor) -> Tensor {
    // Multiplying by the reciprocal norm is one cheap broadcast pass; a division is not.
    let inv_norm = (x.square().sum_dim_intlist(1, true, None::<Kind>) + L2_EPS).rsqrt();
    x * inv_norm
}

/// d[i, c] = Σ_k (x̂_ik − m̂_ck)² · iv_ck for unit-norm rows `x_hat` [N, D], the
/// L2-normalised rows m̂ of the raw `means` [C, D] and the inverse variances
/// iv = exp(−relu6(`log_vars`)), differentiable in all three. Nothing of size N·C·D exists:
/// d = x̂² ivᵀ − 2 r_c (x̂ (m iv)ᵀ) + r_c² Σ_k m² iv with r_c = 1/‖m_c‖, so the
/// normalisation of the means only scales [N, C] columns and [C] entries.
///
/// One libtorch autograd Function (csrc/mahalanobis.cpp) with a hand-derived backward: the
/// same math composed from tensor ops made about twenty elementwise passes over [C, D] per
/// step, which at SOP's C = 11,318 cost as much as the products. Panics with libtorch's
/// message on mismatched shapes, dtypes or devices, as tch's own operations do.
pub fn mahalanobis_sq(x_hat: &Tensor, means: &Tensor, log_vars: &Tensor) -> Tensor {
    run_mahalanobis_sq(x_hat, means, log_vars, Kernel::Fused)
}

/// Which implementation of the per-row work [`mahalanobis_sq`] uses on CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// Fused loops on CPU (f32, f64); tensor ops elsewhere.
    Fused,
    /// Tensor ops on every device: the CUDA path, checked against the fused loops on CPU.
    #[cfg_attr(not(test), allow(dead_code))]
    TensorOps,
}

fn run_mahalanobis_sq(x_hat: &Tensor, means: &Tensor, log_vars: &Tensor, kernel: Kernel) -> Tensor {
    let mut out: *mut std::ffi::c_void = std::ptr::null_mut();
    // SAFETY: the tensor pointers are live for the call; on success the C++ side returns a
    // tensor allocated with `new`, which `Tensor::from_ptr` owns and frees as tch frees its own.
    let message = unsafe {
        ffi::hist_mahalanobis_sq(
            x_hat.as_ptr().cast(),
            means.as_ptr().cast(),
            log_vars.as_ptr().cast(),
            L2_EPS,
            i32::from(kernel == Kernel::Fused),
            &mut out,
        )
    };
    // SAFETY: null or a message from hist_mahalanobis_sq, taken once here.
    if let Some(text) = unsafe { crate::ffi_message::take(message) } {
        panic!("{text}");
    }
    // SAFETY: on success `out` is a tensor allocated for us (see above).
    unsafe { Tensor::from_ptr(out.cast()) }
}

mod ffi {
    use std::ffi::{c_char, c_void};

    extern "C" {
        /// csrc/mahalanobis.cpp.
        pub fn hist_mahalanobis_sq(
            x_hat: *const c_void,
            means: *const c_void,
            log_vars: *const c_void,
            eps: f64,
            fused: i32,
            out: *mut *mut c_void,
        ) -> *mut c_char;
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// Reference: inverse variances exp(−relu6(v)), the log-variance clipped to [0, 6].
    fn inverse_variances(log_vars: &Tensor) -> Tensor {
        (-log_vars.relu6()).exp()
    }

    /// Reference: the N×C×D form of [`mahalanobis_sq`] on already normalised means `m_hat`.
    fn mahalanobis_sq_dense(x_hat: &Tensor, m_hat: &Tensor, inv_var: &Tensor) -> Tensor {
        let diff = x_hat.unsqueeze(1) - m_hat.unsqueeze(0);
        (diff.square() * inv_var.unsqueeze(0)).sum_dim_intlist(2, false, None::<Kind>)
    }

    /// x̂ [n, d] (unit rows), means [c, d] and log-variances [c, d] that include values at
    /// and beyond relu6's kinks (0 and 6), where the gradient must be exactly zero.
    fn inputs(n: i64, c: i64, d: i64, kind: Kind) -> (Tensor, Tensor, Tensor) {
        tch::manual_seed(3);
        let opts = (kind, Device::Cpu);
        let x = Tensor::randn([n, d], opts).set_requires_grad(true);
        let m = (Tensor::randn([c, d], opts) * 3.0).set_requires_grad(true);
        let lv = Tensor::randn([c, d], opts) * 4.0 + 2.0;
        let kinks = lv.view([-1]);
        for (j, v) in [0.0, 6.0, -1.0, 7.5].into_iter().enumerate() {
            let _ = kinks.get(j as i64 * 3).fill_(v);
        }
        (x, m, lv.set_requires_grad(true))
    }

    /// d and the gradients of Σ d ⊙ W (a fixed random W) for x, means and log_vars, all f64.
    fn value_and_grads(x: &Tensor, m: &Tensor, lv: &Tensor, distances: impl Fn(&Tensor, &Tensor, &Tensor) -> Tensor) -> Vec<Tensor> {
        for t in [x, m, lv] {
            let mut g = t.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        let d = distances(&l2_normalize(x), m, lv);
        tch::manual_seed(11);
        let weights = Tensor::randn(d.size(), (Kind::Double, Device::Cpu)).to_kind(d.kind());
        (&d * weights).sum(d.kind()).backward();
        [d, x.grad(), m.grad(), lv.grad()].iter().map(|t| t.to_kind(Kind::Double)).collect()
    }

    fn dense(x_hat: &Tensor, m: &Tensor, lv: &Tensor) -> Tensor {
        mahalanobis_sq_dense(x_hat, &l2_normalize(m), &inverse_variances(lv))
    }

    fn max_rel_diff(a: &Tensor, b: &Tensor) -> f64 {
        let scale = b.abs().max().double_value(&[]).max(1e-300);
        (a - b).abs().max().double_value(&[]) / scale
    }

    const OUTPUTS: [&str; 4] = ["distances", "grad x", "grad means", "grad log_vars"];

    #[test]
    fn both_kernels_match_the_dense_form_and_its_autograd_in_f64() {
        // d = 37: two full blocks of the fused loops' 16 partial sums and a tail.
        let (x, m, lv) = inputs(9, 6, 37, Kind::Double);
        let want = value_and_grads(&x, &m, &lv, dense);
        for kernel in [Kernel::Fused, Kernel::TensorOps] {
            let got = value_and_grads(&x, &m, &lv, |a, b, c| run_mahalanobis_sq(a, b, c, kernel));
            for ((name, g), w) in OUTPUTS.iter().zip(&got).zip(&want) {
                let err = max_rel_diff(g, w);
                assert!(err < 1e-13, "{kernel:?} {name}: max relative difference {err:e}");
            }
        }
        // relu6 passes no gradient at or beyond its kinks.
        let flat = value_and_grads(&x, &m, &lv, mahalanobis_sq)[3].view([-1]);
        for j in [0, 3, 6, 9] {
            assert_eq!(flat.double_value(&[j]), 0.0, "grad log_vars[{j}] at a kink");
        }
    }

    #[test]
    fn float32_kernels_stay_within_single_precision_of_f64() {
        // d = 70: four full 16-lane blocks and a tail; 1,000 rows: several parallel tasks.
        let (x, m, lv) = inputs(40, 1000, 70, Kind::Double);
        let want = value_and_grads(&x, &m, &lv, dense);
        let single = |t: &Tensor| t.detach().to_kind(Kind::Float).set_requires_grad(true);
        let (xf, mf, lvf) = (single(&x), single(&m), single(&lv));
        for kernel in [Kernel::Fused, Kernel::TensorOps] {
            let got = value_and_grads(&xf, &mf, &lvf, |a, b, c| run_mahalanobis_sq(a, b, c, kernel));
            for ((name, g), w) in OUTPUTS.iter().zip(&got).zip(&want) {
                let err = max_rel_diff(g, w);
                assert!(err < 2e-6, "{kernel:?} {name}: max relative difference {err:e}");
            }
        }
    }

    #[test]
    fn only_the_requested_gradients_are_formed() {
        let (x, m, lv) = inputs(5, 4, 8, Kind::Double); // 32 entries: room for the kinks
        let lv = lv.detach();
        let d = mahalanobis_sq(&l2_normalize(&x), &m, &lv);
        d.sum(Kind::Double).backward();
        assert!(x.grad().defined() && m.grad().defined());
        assert!(!lv.grad().defined());
    }

    #[test]
    fn second_derivatives_are_refused() {
        let (x, m, lv) = inputs(3, 3, 4, Kind::Double);
        let total = mahalanobis_sq(&l2_normalize(&x), &m, &lv).sum(Kind::Double);
        let err = Tensor::f_run_backward(&[&total], &[&m], true, true).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("second derivatives are not supported"), "{err}");
        // A plain backward of the same graph still works afterwards.
        total.backward();
        assert!(m.grad().defined());
    }

    #[test]
    #[should_panic(expected = "must share one floating dtype")]
    fn mixed_dtypes_are_refused_with_libtorchs_message() {
        let (x, m, lv) = inputs(3, 3, 4, Kind::Double);
        let _ = mahalanobis_sq(&x.to_kind(Kind::Float), &m, &lv);
    }

    #[test]
    fn relu6_clips_log_variance() {
        let v = Tensor::from_slice(&[-3.0f64, 0.0, 2.0, 9.0]);
        let iv = inverse_variances(&v);
        let got: Vec<f64> = Vec::try_from(&iv).unwrap_or_default();
        let want = [1.0, 1.0, (-2.0f64).exp(), (-6.0f64).exp()];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-15, "{got:?}");
        }
    }
}
