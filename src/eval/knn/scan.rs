//! The one pass over every similarity: the positions of a row at or above a cut. It is
//! the only per-similarity work besides the product itself, so float32 rows use AVX-512
//! or AVX2 compares when the CPU has them (16 or 8 lanes at a time).

/// A gallery entry that may belong among a query's nearest: its position and its
/// similarity from the matrix product.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Candidate {
    /// Gallery position.
    pub pos: u32,
    /// Similarity from the product (within the error bound of the exact one).
    pub approx: f64,
}

/// Float kinds a similarity block can hold.
pub(super) trait Element: Copy + Send + Sync + 'static {
    /// The tensor kind holding this type.
    const KIND: tch::Kind;
    /// The value as float64 (exact for both kinds).
    fn value(self) -> f64;
    /// Appends every position j of `row` with row[j] ≥ `cut`, in ascending order; it may
    /// append a few more just below `cut` (never fewer), which callers tolerate.
    fn collect_at_least(row: &[Self], cut: f64, out: &mut Vec<Candidate>);
}

impl Element for f64 {
    const KIND: tch::Kind = tch::Kind::Double;

    fn value(self) -> f64 {
        self
    }

    fn collect_at_least(row: &[f64], cut: f64, out: &mut Vec<Candidate>) {
        collect_scalar(row, cut, out);
    }
}

impl Element for f32 {
    const KIND: tch::Kind = tch::Kind::Float;

    fn value(self) -> f64 {
        self as f64
    }

    fn collect_at_least(row: &[f32], cut: f64, out: &mut Vec<Candidate>) {
        // The largest float32 not above `cut`, so the float32 compare misses nothing.
        let mut cut32 = cut as f32;
        if cut32 as f64 > cut {
            cut32 = cut32.next_down();
        }
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports AVX-512F (checked just above).
                return unsafe { collect_avx512(row, cut32, out) };
            }
            if is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2 (checked just above).
                return unsafe { collect_avx2(row, cut32, out) };
            }
        }
        collect_scalar(row, cut32, out);
    }
}

fn collect_scalar<T: Element + PartialOrd>(row: &[T], cut: T, out: &mut Vec<Candidate>) {
    for (j, &v) in row.iter().enumerate() {
        if v >= cut {
            out.push(Candidate { pos: j as u32, approx: v.value() });
        }
    }
}

/// Pushes the set bits of `mask` (lanes of the block starting at `base`).
#[inline]
fn push_lanes(row: &[f32], base: usize, mut mask: u32, out: &mut Vec<Candidate>) {
    while mask != 0 {
        let j = base + mask.trailing_zeros() as usize;
        out.push(Candidate { pos: j as u32, approx: row[j] as f64 });
        mask &= mask - 1;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn collect_avx512(row: &[f32], cut: f32, out: &mut Vec<Candidate>) {
    use std::arch::x86_64::{_mm512_cmp_ps_mask, _mm512_loadu_ps, _mm512_set1_ps, _CMP_GE_OQ};
    let full = row.len() / 16 * 16;
    let c = _mm512_set1_ps(cut);
    let mut base = 0;
    while base < full {
        // SAFETY: base + 16 ≤ row.len(); unaligned loads are allowed.
        let v = unsafe { _mm512_loadu_ps(row.as_ptr().add(base)) };
        let mask = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(v, c) as u32;
        push_lanes(row, base, mask, out);
        base += 16;
    }
    let before = out.len();
    collect_scalar(&row[full..], cut, out);
    out[before..].iter_mut().for_each(|c| c.pos += full as u32);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn collect_avx2(row: &[f32], cut: f32, out: &mut Vec<Candidate>) {
    use std::arch::x86_64::{_mm256_cmp_ps, _mm256_loadu_ps, _mm256_movemask_ps, _mm256_set1_ps, _CMP_GE_OQ};
    let full = row.len() / 8 * 8;
    let c = _mm256_set1_ps(cut);
    let mut base = 0;
    while base < full {
        // SAFETY: base + 8 ≤ row.len(); unaligned loads are allowed.
        let v = unsafe { _mm256_loadu_ps(row.as_ptr().add(base)) };
        let mask = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(v, c)) as u32;
        push_lanes(row, base, mask, out);
        base += 8;
    }
    let before = out.len();
    collect_scalar(&row[full..], cut, out);
    out[before..].iter_mut().for_each(|c| c.pos += full as u32);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_finds_the_same_positions() {
        // 37 entries: full SIMD blocks and a tail; values on both sides of the cut.
        let row: Vec<f32> = (0..37).map(|i| ((i * 13) % 37) as f32 / 37.0 - 0.5).collect();
        let cut = 0.1;
        let want: Vec<u32> = (0..37).filter(|&j| row[j as usize] as f64 >= cut).collect();
        let positions = |c: &[Candidate]| c.iter().map(|c| c.pos).collect::<Vec<_>>();
        let mut out = Vec::new();
        f32::collect_at_least(&row, cut, &mut out);
        assert_eq!(positions(&out), want);
        out.clear();
        collect_scalar(&row, cut as f32, &mut out);
        assert_eq!(positions(&out), want);
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") {
                out.clear();
                // SAFETY: AVX2 is present.
                unsafe { collect_avx2(&row, cut as f32, &mut out) };
                assert_eq!(positions(&out), want);
            }
        }
        let row64: Vec<f64> = row.iter().map(|&v| v as f64).collect();
        out.clear();
        f64::collect_at_least(&row64, cut, &mut out);
        assert_eq!(positions(&out), want);
    }
}
