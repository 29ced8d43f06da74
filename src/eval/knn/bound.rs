//! How far a similarity from a float32 or float64 matrix product can lie from the exact
//! similarity that ranks neighbours, so that the product can pre-select candidates and
//! only near-ties need the exact value.
//!
//! Setting: x̂, ŷ are the float64 unit-norm rows (‖x̂‖, ‖ŷ‖ ≤ 1 + 1e-12, see
//! [`super::exact::normalize`]); the exact similarity E is [`super::exact::dot`] of them;
//! the product gives P from fl_p(x̂), fl_p(ŷ) (the rows rounded to the product's
//! precision p, unit roundoff u_p). With A = Σ|x̂ᵢŷᵢ| ≤ ‖x̂‖‖ŷ‖ (Cauchy–Schwarz) and
//! γ_n(u) = n·u / (1 − n·u) (Higham, *Accuracy and Stability of Numerical Algorithms*,
//! §3.1: any order of summation, with or without fused multiply-add):
//! - rounding the inputs: |fl(x̂)·fl(ŷ) − x̂·ŷ| ≤ ((1 + u_p)² − 1)·A;
//! - the product's inner products: |P − fl(x̂)·fl(ŷ)| ≤ γ_D(u_p)·(1 + u_p)²·A;
//! - the exact similarity's own rounding: |E − x̂·ŷ| ≤ γ_D(u_64)·A.
//!
//! Their sum bounds |P − E|. It holds for any BLAS that computes each entry as a sum of
//! rounded products in some order (every CPU BLAS and cuBLAS in IEEE mode); it does not
//! hold for reduced-precision modes such as TF32 or bf16, which libtorch leaves off
//! unless asked. Underflow adds at most D·2⁻¹⁴⁹ (float32), far inside the safety margin.

/// Unit roundoff of float32 (2⁻²⁴).
const U32: f64 = 1.0 / 16_777_216.0;
/// Unit roundoff of float64 (2⁻⁵³).
const U64: f64 = f64::EPSILON / 2.0;
/// Largest ‖x̂‖·‖ŷ‖ of two normalised rows (the norms exceed 1 by at most ~D·u_64).
const NORM_PRODUCT: f64 = 1.0 + 1e-12;
/// Headroom over the bound for the roundings in thresholds such as t − 2δ: relative,
/// and absolute (a few float64 ulps of values near 1, which matter when δ itself is
/// only a few ulps: float64 products of narrow rows).
const SAFETY: f64 = 1.01;
const SAFETY_ULPS: f64 = 4.0 * f64::EPSILON;

/// γ_n(u), or `None` when n·u ≥ 1/2 (the bound is then useless).
fn gamma(n: f64, u: f64) -> Option<f64> {
    (n * u < 0.5).then(|| n * u / (1.0 - n * u))
}

/// A bound on |P − E| for rows of width `dim` when the product runs in float32
/// (`single` true) or float64; `None` when the width is too large for the bound to mean
/// anything (float32 beyond 8 million dimensions).
pub(super) fn similarity_error(dim: usize, single: bool) -> Option<f64> {
    let d = dim.max(1) as f64;
    let exact = gamma(d, U64)?;
    let up = if single { U32 } else { 0.0 };
    // Float64 products read the rows as stored: no input rounding.
    let inputs = (1.0 + up) * (1.0 + up) - 1.0;
    let product = gamma(d, if single { U32 } else { U64 })? * (1.0 + up) * (1.0 + up);
    Some((inputs + product + exact) * NORM_PRODUCT * SAFETY + SAFETY_ULPS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_values_at_embedding_widths() {
        // 512 · 2⁻²⁴ ≈ 3.05e-5 dominates in float32; 2 · 512 · 2⁻⁵³ ≈ 1.1e-13 in float64.
        let single = similarity_error(512, true).expect("bound");
        assert!(single > 3.05e-5 && single < 3.2e-5, "{single}");
        let double = similarity_error(512, false).expect("bound");
        assert!(double > 1.13e-13 && double < 1.2e-13, "{double}");
        assert!(similarity_error(1 << 23, true).is_none());
    }
}
