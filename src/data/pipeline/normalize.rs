//! The last step of every transform: 8-bit RGB to the network's planar float input,
//! optionally mirrored left-right. One 256-entry table per channel holds the exact float
//! torchvision's ops produce for each byte value, so the result matches them to the bit.
use image::RgbImage;

use super::geometry::CropBox;
use crate::config::InputConvention;

/// ImageNet statistics, as torchvision's reference scripts (RGB, in [0, 1]).
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// BN-Inception's (Cadene's pretrained-models `bninception`): BGR, 0–255, these means.
const BN_INCEPTION_MEAN_BGR: [f32; 3] = [104.0, 117.0, 128.0];

/// Byte → float tables and channel order of one input convention.
#[derive(Clone)]
pub struct Normalizer {
    /// `table[c][v]`: output channel c's value for byte v of its source channel.
    table: [[f32; 256]; 3],
    /// `source[c]`: which RGB channel feeds output channel c.
    source: [usize; 3],
}

impl std::fmt::Debug for Normalizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Normalizer").field("source", &self.source).finish_non_exhaustive()
    }
}

impl Normalizer {
    /// The tables for `convention` (`Auto` must be resolved by the caller).
    pub fn new(convention: InputConvention) -> Normalizer {
        let mut table = [[0f32; 256]; 3];
        match convention {
            InputConvention::BnInception => {
                // pretrained-models: ToTensor (v / 255), to BGR, ×255, minus the mean, ÷1.
                for (c, row) in table.iter_mut().enumerate() {
                    for (v, out) in row.iter_mut().enumerate() {
                        *out = (v as f32 / 255.0) * 255.0 - BN_INCEPTION_MEAN_BGR[c];
                    }
                }
                Normalizer { table, source: [2, 1, 0] }
            }
            InputConvention::Imagenet | InputConvention::Auto => {
                // ToTensor (v / 255), then Normalize: (x − mean) / std, all in f32.
                for (c, row) in table.iter_mut().enumerate() {
                    for (v, out) in row.iter_mut().enumerate() {
                        *out = (v as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
                    }
                }
                Normalizer { table, source: [0, 1, 2] }
            }
        }
    }

    /// Writes `region` of `image` as [3, region.height, region.width] floats into `out`,
    /// mirrored left-right when `flip`. `out` must hold exactly that many values.
    pub fn write_chw(&self, image: &RgbImage, region: CropBox, flip: bool, out: &mut [f32]) {
        let (w, h) = (region.width as usize, region.height as usize);
        let plane = w * h;
        debug_assert_eq!(out.len(), 3 * plane);
        let stride = image.width() as usize * 3;
        let raw = image.as_raw();
        let (planes01, plane2) = out.split_at_mut(2 * plane);
        let (plane0, plane1) = planes01.split_at_mut(plane);
        let [s0, s1, s2] = self.source;
        let [t0, t1, t2] = &self.table;
        let rows = plane0.chunks_exact_mut(w).zip(plane1.chunks_exact_mut(w)).zip(plane2.chunks_exact_mut(w));
        for (y, ((d0, d1), d2)) in rows.enumerate() {
            let start = (region.top as usize + y) * stride + region.left as usize * 3;
            let pixels = raw[start..start + w * 3].chunks_exact(3);
            // Iterators rather than indices: no bounds checks in the per-pixel loop.
            let put = |((o0, o1), o2): ((&mut f32, &mut f32), &mut f32), px: &[u8]| {
                *o0 = t0[usize::from(px[s0])];
                *o1 = t1[usize::from(px[s1])];
                *o2 = t2[usize::from(px[s2])];
            };
            let outs = d0.iter_mut().zip(d1.iter_mut()).zip(d2.iter_mut());
            if flip {
                outs.rev().zip(pixels).for_each(|(o, px)| put(o, px));
            } else {
                outs.zip(pixels).for_each(|(o, px)| put(o, px));
            }
        }
    }
}
