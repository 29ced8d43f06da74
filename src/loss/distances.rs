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

/// Inverse variances exp(−relu6(v)): the log-variance is clipped to [0, 6].
pub fn inverse_variances(log_vars: &Tensor) -> Tensor {
    (-log_vars.relu6()).exp()
}

/// d[i, c] = Σ_k (x̂_ik − m̂_ck)² · inv_var_ck for unit-norm rows `x_hat` [N, D] and the
/// L2-normalised rows m̂ of the raw `means` [C, D], computed as two matrix products so
/// that nothing of size N·C·D exists: Σ x²/σ² − 2 Σ x m/σ² + Σ m²/σ².
///
/// Elementwise passes over [C, D] tensors cost about a third of a product each at large
/// C, so the normalisation of the means is never materialised: with r_c = 1/‖m_c‖,
/// Σ_k x m̂/σ² = r_c · (x · (m/σ²)) and Σ m̂²/σ² = r_c² · Σ m²/σ², which moves the scaling
/// onto the [N, C] and [C] sides; the −2 is folded into the small [N, D] side, and the
/// products accumulate through addmm instead of separate [N, C] additions.
pub fn mahalanobis_sq(x_hat: &Tensor, means: &Tensor, inv_var: &Tensor) -> Tensor {
    let r = (means.square().sum_dim_intlist(1, false, None::<Kind>) + L2_EPS).rsqrt();
    let m_scaled = means * inv_var;
    let mm = (means * &m_scaled).sum_dim_intlist(1, false, None::<Kind>) * r.square();
    let cross = (x_hat * -2.0).matmul(&m_scaled.tr()) * r.unsqueeze(0);
    cross.addmm(&x_hat.square(), &inv_var.tr()) + mm.unsqueeze(0)
}

/// The N×C×D form of [`mahalanobis_sq`] on already normalised means `m_hat`; only for
/// tests, as an independent check.
pub fn mahalanobis_sq_dense(x_hat: &Tensor, m_hat: &Tensor, inv_var: &Tensor) -> Tensor {
    let diff = x_hat.unsqueeze(1) - m_hat.unsqueeze(0);
    (diff.square() * inv_var.unsqueeze(0)).sum_dim_intlist(2, false, None::<Kind>)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn expanded_form_equals_dense_form() {
        tch::manual_seed(3);
        let opts = (Kind::Double, Device::Cpu);
        let x = l2_normalize(&Tensor::randn([7, 5], opts));
        let m = Tensor::randn([4, 5], opts) * 3.0;
        let iv = inverse_variances(&(Tensor::randn([4, 5], opts) * 4.0));
        let a = mahalanobis_sq(&x, &m, &iv);
        let b = mahalanobis_sq_dense(&x, &l2_normalize(&m), &iv);
        let err = (a - b).abs().max().double_value(&[]);
        assert!(err < 1e-13, "max abs difference {err}");
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
