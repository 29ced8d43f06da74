//! The one pass over every similarity: the positions of a row at or above a cut (and,
//! for a block of a symmetric similarity matrix, of each column at or above its own
//! cut). It is the only per-similarity work besides the product itself, so float32 rows
//! use AVX-512 or AVX2 compares when the CPU has them (16 or 8 lanes at a time).

/// Float kinds a similarity block can hold.
pub(super) trait Element: Copy + Send + Sync + 'static {
    /// The tensor kind holding this type.
    const KIND: tch::Kind;
    /// The value as float64 (exact for both kinds).
    fn value(self) -> f64;
    /// The largest value of this kind not above `cut` (±∞ stay ±∞), so comparing the
    /// kind's values against it misses nothing at or above `cut`.
    fn floor_of(cut: f64) -> Self;
    /// Appends to `row_hits` every j with row[j] ≥ `cut`, and, given `column_cuts`
    /// (one per entry of `row`, else it panics), to `column_hits` every j with
    /// row[j] ≥ column_cuts[j]; both ascending.
    fn mark(row: &[Self], cut: Self, column_cuts: Option<&[Self]>, row_hits: &mut Vec<u32>, column_hits: &mut Vec<u32>);
}

impl Element for f64 {
    const KIND: tch::Kind = tch::Kind::Double;

    fn value(self) -> f64 {
        self
    }

    fn floor_of(cut: f64) -> f64 {
        cut
    }

    fn mark(row: &[f64], cut: f64, column_cuts: Option<&[f64]>, row_hits: &mut Vec<u32>, column_hits: &mut Vec<u32>) {
        assert!(column_cuts.is_none_or(|c| c.len() == row.len()), "mark: one column cut per entry of the row");
        mark_scalar(row, 0, cut, column_cuts, row_hits, column_hits);
    }
}

impl Element for f32 {
    const KIND: tch::Kind = tch::Kind::Float;

    fn value(self) -> f64 {
        self as f64
    }

    fn floor_of(cut: f64) -> f32 {
        let cut32 = cut as f32;
        if cut32 as f64 > cut {
            cut32.next_down()
        } else {
            cut32
        }
    }

    fn mark(row: &[f32], cut: f32, column_cuts: Option<&[f32]>, row_hits: &mut Vec<u32>, column_hits: &mut Vec<u32>) {
        // The vector kernels load one cut per entry of the row.
        assert!(column_cuts.is_none_or(|c| c.len() == row.len()), "mark: one column cut per entry of the row");
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports AVX-512F (checked just above).
                return unsafe { mark_avx512(row, cut, column_cuts, row_hits, column_hits) };
            }
            if is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2 (checked just above).
                return unsafe { mark_avx2(row, cut, column_cuts, row_hits, column_hits) };
            }
        }
        mark_scalar(row, 0, cut, column_cuts, row_hits, column_hits);
    }
}

/// [`Element::mark`] on `row[from..]`, one entry at a time.
fn mark_scalar<T: Copy + PartialOrd>(row: &[T], from: usize, cut: T, column_cuts: Option<&[T]>, row_hits: &mut Vec<u32>, column_hits: &mut Vec<u32>) {
    for (j, &v) in row.iter().enumerate().skip(from) {
        if v >= cut {
            row_hits.push(j as u32);
        }
    }
    if let Some(cuts) = column_cuts {
        for (j, (&v, &c)) in row.iter().zip(cuts).enumerate().skip(from) {
            if v >= c {
                column_hits.push(j as u32);
            }
        }
    }
}

/// Pushes the set bits of `mask` (lanes of the block starting at `base`) as positions.
#[inline]
fn push_positions(base: usize, mut mask: u32, out: &mut Vec<u32>) {
    while mask != 0 {
        out.push((base + mask.trailing_zeros() as usize) as u32);
        mask &= mask - 1;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn mark_avx512(row: &[f32], cut: f32, column_cuts: Option<&[f32]>, row_hits: &mut Vec<u32>, column_hits: &mut Vec<u32>) {
    use std::arch::x86_64::{_mm512_cmp_ps_mask, _mm512_loadu_ps, _mm512_set1_ps, _CMP_GE_OQ};
    let full = row.len() / 16 * 16;
    let c = _mm512_set1_ps(cut);
    let mut base = 0;
    while base < full {
        // SAFETY: base + 16 ≤ row.len() (= column_cuts.len()); unaligned loads are allowed.
        let v = unsafe { _mm512_loadu_ps(row.as_ptr().add(base)) };
        push_positions(base, _mm512_cmp_ps_mask::<_CMP_GE_OQ>(v, c) as u32, row_hits);
        if let Some(cuts) = column_cuts {
            // SAFETY: as above.
            let cc = unsafe { _mm512_loadu_ps(cuts.as_ptr().add(base)) };
            push_positions(base, _mm512_cmp_ps_mask::<_CMP_GE_OQ>(v, cc) as u32, column_hits);
        }
        base += 16;
    }
    mark_scalar(row, full, cut, column_cuts, row_hits, column_hits);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn mark_avx2(row: &[f32], cut: f32, column_cuts: Option<&[f32]>, row_hits: &mut Vec<u32>, column_hits: &mut Vec<u32>) {
    use std::arch::x86_64::{_mm256_cmp_ps, _mm256_loadu_ps, _mm256_movemask_ps, _mm256_set1_ps, _CMP_GE_OQ};
    let full = row.len() / 8 * 8;
    let c = _mm256_set1_ps(cut);
    let mut base = 0;
    while base < full {
        // SAFETY: base + 8 ≤ row.len() (= column_cuts.len()); unaligned loads are allowed.
        let v = unsafe { _mm256_loadu_ps(row.as_ptr().add(base)) };
        push_positions(base, _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(v, c)) as u32, row_hits);
        if let Some(cuts) = column_cuts {
            // SAFETY: as above.
            let cc = unsafe { _mm256_loadu_ps(cuts.as_ptr().add(base)) };
            push_positions(base, _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(v, cc)) as u32, column_hits);
        }
        base += 8;
    }
    mark_scalar(row, full, cut, column_cuts, row_hits, column_hits);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mark_kernel_finds_row_and_column_hits() {
        // 45 entries: full AVX-512 and AVX2 blocks and a tail; one cut per column too.
        let row: Vec<f32> = (0..45).map(|i| ((i * 17) % 45) as f32 / 45.0 - 0.5).collect();
        let cuts: Vec<f32> = (0..45).map(|i| ((i * 7) % 45) as f32 / 45.0 - 0.5).collect();
        let cut = 0.05f32;
        let want_rows: Vec<u32> = (0..45).filter(|&j| row[j as usize] >= cut).collect();
        let want_columns: Vec<u32> = (0..45).filter(|&j| row[j as usize] >= cuts[j as usize]).collect();
        let run = |kernel: &dyn Fn(&mut Vec<u32>, &mut Vec<u32>)| {
            let (mut r, mut c) = (Vec::new(), Vec::new());
            kernel(&mut r, &mut c);
            assert_eq!((r, c), (want_rows.clone(), want_columns.clone()));
        };
        run(&|r, c| f32::mark(&row, cut, Some(&cuts), r, c));
        run(&|r, c| mark_scalar(&row, 0, cut, Some(&cuts), r, c));
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 is present.
                run(&|r, c| unsafe { mark_avx2(&row, cut, Some(&cuts), r, c) });
            }
            if is_x86_feature_detected!("avx512f") {
                // SAFETY: AVX-512F is present.
                run(&|r, c| unsafe { mark_avx512(&row, cut, Some(&cuts), r, c) });
            }
        }
        let (row64, cuts64): (Vec<f64>, Vec<f64>) = (row.iter().map(|&v| v as f64).collect(), cuts.iter().map(|&v| v as f64).collect());
        run(&|r, c| f64::mark(&row64, cut as f64, Some(&cuts64), r, c));
        // No column cuts: no column hits.
        let (mut r, mut c) = (Vec::new(), Vec::new());
        f32::mark(&row, cut, None, &mut r, &mut c);
        assert_eq!((r, c.len()), (want_rows.clone(), 0));
        assert!(f32::floor_of(0.1) as f64 <= 0.1 && f32::floor_of(0.1).next_up() as f64 > 0.1);
        assert_eq!(f32::floor_of(f64::INFINITY), f32::INFINITY);
    }
}
