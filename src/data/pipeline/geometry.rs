//! Where to crop and what size to resize to, with torchvision's exact rules:
//! `RandomResizedCrop.get_params`, `Resize(int)` on the shorter side and `CenterCrop`.
//! Python's `round` rounds halves to even; `f64::round_ties_even` does the same.
use rand::Rng;

/// A rectangle of whole pixels inside an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    /// First column.
    pub left: u32,
    /// First row.
    pub top: u32,
    /// Columns.
    pub width: u32,
    /// Rows.
    pub height: u32,
}

impl CropBox {
    /// The whole of a `width` × `height` image.
    pub fn full(width: u32, height: u32) -> CropBox {
        CropBox { left: 0, top: 0, width, height }
    }
}

/// Tries before the centre-crop fallback, as torchvision.
const ATTEMPTS: usize = 10;

/// torchvision's `RandomResizedCrop.get_params` for a `width` × `height` image: up to 10
/// tries of an area fraction uniform in `scale` and an aspect ratio (w/h) log-uniform in
/// `ratio`, sides rounded half-to-even; the first box that fits is placed uniformly at
/// random. If none fits: the largest centred box whose ratio is clamped into `ratio`.
pub fn random_resized_crop<R: Rng>(width: u32, height: u32, scale: [f64; 2], ratio: [f64; 2], rng: &mut R) -> CropBox {
    let area = f64::from(width) * f64::from(height);
    let (log_lo, log_hi) = (ratio[0].ln(), ratio[1].ln());
    for _ in 0..ATTEMPTS {
        let target_area = area * uniform(rng, scale[0], scale[1]);
        let aspect = uniform(rng, log_lo, log_hi).exp();
        let w = (target_area * aspect).sqrt().round_ties_even();
        let h = (target_area / aspect).sqrt().round_ties_even();
        if w > 0.0 && w <= f64::from(width) && h > 0.0 && h <= f64::from(height) {
            let (w, h) = (w as u32, h as u32);
            let top = rng.random_range(0..=height - h);
            let left = rng.random_range(0..=width - w);
            return CropBox { left, top, width: w, height: h };
        }
    }
    central_fallback(width, height, ratio)
}

/// Uniform in [lo, hi) (lo when the range is empty, as torch's `uniform_`).
fn uniform<R: Rng>(rng: &mut R, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

/// torchvision's fallback after 10 failed tries.
fn central_fallback(width: u32, height: u32, ratio: [f64; 2]) -> CropBox {
    let in_ratio = f64::from(width) / f64::from(height);
    let (lo, hi) = (ratio[0].min(ratio[1]), ratio[0].max(ratio[1]));
    let (w, h) = if in_ratio < lo {
        (width, (f64::from(width) / lo).round_ties_even() as u32)
    } else if in_ratio > hi {
        ((f64::from(height) * hi).round_ties_even() as u32, height)
    } else {
        (width, height)
    };
    // A degenerate ratio range could round a side to 0 or past the image; keep a real box.
    let (w, h) = (w.clamp(1, width), h.clamp(1, height));
    CropBox { left: (width - w) / 2, top: (height - h) / 2, width: w, height: h }
}

/// torchvision's `Resize(size)` with an int: the shorter side becomes `size`, the longer
/// `int(size * long / short)` (truncated). Returns (width, height).
pub fn shorter_side_to(width: u32, height: u32, size: u32) -> (u32, u32) {
    let scaled = |long: u32, short: u32| ((f64::from(size) * f64::from(long) / f64::from(short)) as u32).max(1);
    if width <= height {
        (size, scaled(height, width))
    } else {
        (scaled(width, height), size)
    }
}

/// torchvision's `CenterCrop` of `crop` × `crop` from a `width` × `height` image that is at
/// least that large: offsets `round((side - crop) / 2)`, halves to even.
pub fn center_crop(width: u32, height: u32, crop: u32) -> CropBox {
    let offset = |side: u32| (f64::from(side.saturating_sub(crop)) / 2.0).round_ties_even() as u32;
    CropBox { left: offset(width), top: offset(height), width: crop.min(width), height: crop.min(height) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn boxes_fit_and_fallback_matches_torchvision() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for (w, h) in [(500, 375), (375, 500), (7, 5), (224, 224)] {
            for _ in 0..500 {
                let b = random_resized_crop(w, h, [0.08, 1.0], [0.75, 4.0 / 3.0], &mut rng);
                assert!(b.width >= 1 && b.height >= 1 && b.left + b.width <= w && b.top + b.height <= h, "{b:?}");
            }
        }
        // No try can fit a 1000 x 10 image: torchvision returns (i, j, h, w) = (0, 493, 10, 13).
        let b = random_resized_crop(1000, 10, [0.08, 1.0], [0.75, 4.0 / 3.0], &mut rng);
        assert_eq!(b, CropBox { left: 493, top: 0, width: 13, height: 10 });
        assert_eq!(central_fallback(10, 1000, [0.75, 4.0 / 3.0]), CropBox { left: 0, top: 493, width: 10, height: 13 });
        assert_eq!(central_fallback(30, 20, [0.75, 4.0 / 3.0]), CropBox { left: 1, top: 0, width: 27, height: 20 });
    }

    #[test]
    fn resize_and_centre_crop_round_like_torchvision() {
        assert_eq!(shorter_side_to(500, 375, 256), (341, 256));
        assert_eq!(shorter_side_to(375, 500, 256), (256, 341));
        assert_eq!(shorter_side_to(100, 100, 256), (256, 256));
        // (341 - 224) / 2 = 58.5 rounds to 58 (even); (255 - 224) / 2 = 15.5 rounds to 16.
        assert_eq!(center_crop(341, 256, 224), CropBox { left: 58, top: 16, width: 224, height: 224 });
        assert_eq!(center_crop(255, 224, 224), CropBox { left: 16, top: 0, width: 224, height: 224 });
    }
}
