//! The exact similarity that ranks neighbours: float64 rows normalised and multiplied in
//! one fixed order, on the host, so the ranking does not depend on the BLAS, the device
//! or the thread count; and the neighbour order it defines.
use std::cmp::Ordering;

use tch::{Device, Kind, Tensor};

use super::NORM_EPS;
use crate::error::Result;

/// Row-major float64 rows of one width, held on the host.
pub(super) struct Rows {
    data: Vec<f64>,
    rows: usize,
    width: usize,
}

impl Rows {
    /// The rows of `x` [n, D] divided by max(‖row‖, [`NORM_EPS`]), the norm summed by
    /// [`dot`]; a zero row stays zero.
    pub(super) fn normalized(x: &Tensor) -> Result<Rows> {
        let (rows, width) = (x.size()[0] as usize, x.size()[1] as usize);
        let flat = x.to_device(Device::Cpu).contiguous().view([-1]);
        // Float32 input is widened here, in one copy, rather than by a float64 tensor.
        let mut data: Vec<f64> = match flat.kind() {
            Kind::Float => Vec::<f32>::try_from(&flat)?.into_iter().map(f64::from).collect(),
            _ => Vec::<f64>::try_from(&flat.to_kind(Kind::Double))?,
        };
        if width > 0 {
            for row in data.chunks_exact_mut(width) {
                let norm = dot(row, row).sqrt().max(NORM_EPS);
                row.iter_mut().for_each(|v| *v /= norm);
            }
        }
        Ok(Rows { data, rows, width })
    }

    /// Number of rows.
    pub(super) fn len(&self) -> usize {
        self.rows
    }

    /// Row `i`.
    pub(super) fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.width..(i + 1) * self.width]
    }

    /// The rows (all, or those at `order`, in that order) as one [n, D] tensor of `kind`
    /// on `device`: the input of the products.
    pub(super) fn to_tensor(&self, order: Option<&[u32]>, kind: Kind, device: Device) -> Tensor {
        let picked: Vec<usize> = match order {
            Some(o) => o.iter().map(|&i| i as usize).collect(),
            None => (0..self.rows).collect(),
        };
        let shape = [picked.len() as i64, self.width as i64];
        let t = match kind {
            // Rounded here (to nearest, as to_kind does) to skip a float64 copy of the gallery.
            Kind::Float => Tensor::from_slice(&picked.iter().flat_map(|&i| self.row(i).iter().map(|&v| v as f32)).collect::<Vec<f32>>()),
            _ => Tensor::from_slice(&picked.iter().flat_map(|&i| self.row(i).iter().copied()).collect::<Vec<f64>>()).to_kind(kind),
        };
        t.view(shape).to_device(device)
    }
}

/// Σ aᵢbᵢ in float64, in a fixed order: eight running sums over i mod 8 (so the loop
/// pipelines), added pairwise, then the tail. The same two rows always give the same
/// bits, so duplicated gallery rows tie exactly.
pub(super) fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = a8.remainder().iter().zip(b8.remainder()).fold(0.0, |s, (x, y)| s + x * y);
    for (x, y) in a8.zip(b8) {
        for lane in 0..8 {
            acc[lane] += x[lane] * y[lane];
        }
    }
    (((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))) + tail
}

/// Whether (similarity `a`, position `pa`) comes before (`b`, `pb`) in neighbour order:
/// larger similarity first, equal similarities by smaller gallery position.
pub(super) fn ahead(a: f64, pa: u32, b: f64, pb: u32) -> bool {
    a > b || (a == b && pa < pb)
}

/// Neighbour order ([`ahead`]) as a sort order, nearest first. Built on [`ahead`] rather
/// than `total_cmp`, which would part 0.0 from −0.0 where the counting does not.
pub(super) fn neighbour_order(a: f64, pa: u32, b: f64, pb: u32) -> Ordering {
    if ahead(a, pa, b, pb) {
        Ordering::Less
    } else if ahead(b, pb, a, pa) {
        Ordering::Greater
    } else {
        Ordering::Equal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_rows_stay_exact_and_zero_rows_stay_zero() {
        let x = Tensor::from_slice(&[0.5f64, -0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 3.0, 4.0, 0.0, 0.0]).view([3, 4]);
        let rows = Rows::normalized(&x).expect("rows");
        assert_eq!(rows.row(0), &[0.5, -0.5, 0.5, 0.5]);
        assert_eq!(rows.row(1), &[0.0; 4]);
        assert_eq!(rows.row(2), &[0.6, 0.8, 0.0, 0.0]);
        let a: Vec<f64> = (0..21).map(|i| i as f64 / 8.0).collect();
        assert_eq!(dot(&a, &a), a.iter().map(|v| v * v).sum::<f64>());
    }
}
