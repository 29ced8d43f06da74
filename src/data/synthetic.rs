//! The built-in deterministic synthetic image dataset (no download).
//!
//! A class is one combination of three generative factors — shape, hue and texture — so
//! classes share parts with each other and an embedding that learns the factors on the
//! training classes transfers to the unseen test classes (other combinations of the same
//! factors). Each image renders its class's object under random position, scale, rotation,
//! hue and brightness jitter, background level and tint, a distractor blob of random
//! colour, and pixel noise, so that retrieval needs learning: raw pixels and a randomly
//! initialised CNN retrieve the right class for roughly a third of the queries.
//!
//! Reproducibility: image `i` of class `c` of a split draws only from the stream keyed
//! (seed, `streams::SYNTHETIC_IMAGE`, split, c, i) (see `data::streams`), so generation
//! order never changes a pixel, and asking for more images or classes keeps the existing
//! ones. Rendering uses only +, −, ×, ÷, sqrt, floor and comparisons on f32, which IEEE 754
//! fixes exactly (no sin/cos from the platform's libm), so the bytes are the same on
//! every machine.
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tch::Tensor;

use super::streams::{self, stream_rng};
use super::{ImageSet, Splits};
use crate::config::SyntheticConfig;

const SHAPES: [&str; 8] = ["disc", "square", "triangle", "ring", "cross", "diamond", "bars", "star"];
const HUES: usize = 8;
const TEXTURES: [&str; 5] = ["solid", "stripes", "checker", "dots", "rings"];

/// Number of distinct classes (factor combinations) the generator can make; train and
/// test classes together are clamped to it.
pub const MAX_CLASSES: usize = SHAPES.len() * HUES * TEXTURES.len();

/// Split ids in the image stream key.
const SPLIT_TRAIN: u64 = 0;
const SPLIT_TEST: u64 = 1;

/// Vertices of a five-pointed star (outer radius 1, inner 0.45), counter-clockwise.
const STAR: [(f32, f32); 10] = [
    (0.0, 1.0),
    (-0.264503, 0.364058),
    (-0.951057, 0.309017),
    (-0.427975, -0.139058),
    (-0.587785, -0.809017),
    (0.0, -0.45),
    (0.587785, -0.809017),
    (0.427975, -0.139058),
    (0.951057, 0.309017),
    (0.264503, 0.364058),
];

/// One class's factors.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ClassSpec {
    shape: usize,
    hue: usize,
    texture: usize,
}

impl ClassSpec {
    fn from_id(id: usize) -> Self {
        ClassSpec { shape: id % SHAPES.len(), hue: (id / SHAPES.len()) % HUES, texture: id / (SHAPES.len() * HUES) }
    }

    fn name(&self) -> String {
        format!("{}-hue{}-{}", SHAPES[self.shape], self.hue, TEXTURES[self.texture])
    }
}

/// Generates the train and test splits: `cfg.images_per_class` images of `image_size`²
/// pixels per class. Train and test classes are disjoint factor combinations taken from
/// one seeded permutation of all [`MAX_CLASSES`]; when more are asked for, the test split
/// gets what is left (at least 2 when that many exist).
pub fn generate(cfg: &SyntheticConfig, image_size: usize, seed: u64) -> Splits {
    let mut all: Vec<ClassSpec> = (0..MAX_CLASSES).map(ClassSpec::from_id).collect();
    all.shuffle(&mut stream_rng(&[seed, streams::SYNTHETIC_CLASSES]));
    let n_train = cfg.train_classes.min(MAX_CLASSES - 2);
    let n_test = cfg.test_classes.min(MAX_CLASSES - n_train);
    let train = render_split(&all[..n_train], cfg.images_per_class, image_size, seed, SPLIT_TRAIN);
    let test = render_split(&all[n_train..n_train + n_test], cfg.images_per_class, image_size, seed, SPLIT_TEST);
    Splits { train, test }
}

fn render_split(classes: &[ClassSpec], per_class: usize, size: usize, seed: u64, split: u64) -> ImageSet {
    let pixels = 3 * size * size;
    let n = classes.len() * per_class;
    let mut data = vec![0u8; n * pixels];
    let mut labels = Vec::with_capacity(n);
    for (c, spec) in classes.iter().enumerate() {
        for i in 0..per_class {
            let at = (c * per_class + i) * pixels;
            let mut rng = stream_rng(&[seed, streams::SYNTHETIC_IMAGE, split, c as u64, i as u64]);
            render(spec, size, &mut rng, &mut data[at..at + pixels]);
            labels.push(c as i64);
        }
    }
    let images = Tensor::from_slice(&data).view([n as i64, 3, size as i64, size as i64]);
    ImageSet { images, labels, class_names: classes.iter().map(ClassSpec::name).collect() }
}

/// Uniform in [lo, hi) from 24 random bits; an empty range yields `lo` instead of panicking.
fn uniform(rng: &mut ChaCha8Rng, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * rng.random::<f32>()
}

/// A uniformly random direction (cos, sin), by rejection from the square so that no
/// platform trigonometry is needed.
fn direction(rng: &mut ChaCha8Rng) -> (f32, f32) {
    loop {
        let (x, y) = (uniform(rng, -1.0, 1.0), uniform(rng, -1.0, 1.0));
        let r2 = x * x + y * y;
        if r2 > 0.01 && r2 <= 1.0 {
            let r = r2.sqrt();
            return (x / r, y / r);
        }
    }
}

/// RGB in [0, 1] of a hue in [0, 1) at full saturation, with brightness `v`.
fn hue_rgb(h: f32, v: f32) -> [f32; 3] {
    let k = |n: f32| {
        let k = (n + h * 6.0) % 6.0;
        v * (1.0 - (k.min(4.0 - k).clamp(0.0, 1.0)))
    };
    [k(5.0), k(3.0), k(1.0)]
}

/// Whether (u, v) lies inside the polygon `poly` (crossing-number test).
fn in_polygon(poly: &[(f32, f32)], u: f32, v: f32) -> bool {
    let mut inside = false;
    let mut j = poly.len() - 1;
    for i in 0..poly.len() {
        let ((xi, yi), (xj, yj)) = (poly[i], poly[j]);
        if (yi > v) != (yj > v) && u < (xj - xi) * (v - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// Whether the point (u, v) in the object's own frame (unit radius) is inside the shape.
fn inside(shape: usize, u: f32, v: f32) -> bool {
    match shape {
        0 => u * u + v * v <= 1.0,
        1 => u.abs() <= 0.8 && v.abs() <= 0.8,
        2 => v >= -0.6 && v <= 0.9 - 1.6 * u.abs(),
        3 => (0.36..=1.0).contains(&(u * u + v * v)),
        4 => (u.abs() <= 0.3 && v.abs() <= 1.0) || (v.abs() <= 0.3 && u.abs() <= 1.0),
        5 => u.abs() + v.abs() <= 1.0,
        6 => (0.25..=0.75).contains(&u.abs()) && v.abs() <= 0.95,
        // The bounding box first: most pixels are far from the star.
        _ => u.abs() <= 0.96 && (-0.81..=1.0).contains(&v) && in_polygon(&STAR, u, v),
    }
}

/// Texture intensity in [0.35, 1] at object-frame point (u, v); `freq` cells per radius.
fn texture(kind: usize, u: f32, v: f32, freq: f32) -> f32 {
    let parity = |x: f32| (x.floor() as i32).rem_euclid(2) == 0;
    let on = match kind {
        0 => true,
        1 => parity(u * freq),
        2 => parity((u * freq).floor() + (v * freq).floor()),
        3 => {
            let (fu, fv) = ((u * freq).fract().abs() - 0.5, (v * freq).fract().abs() - 0.5);
            fu * fu + fv * fv >= 0.09
        }
        _ => parity((u * u + v * v).sqrt() * freq),
    };
    if on {
        1.0
    } else {
        0.35
    }
}

/// Renders one image of class `spec` as CHW bytes into `out` (3·size² long).
fn render(spec: &ClassSpec, size: usize, rng: &mut ChaCha8Rng, out: &mut [u8]) {
    let s = size as f32;
    // Hue jitter stays within ±0.15 of a hue step, so neighbouring hues never overlap.
    let hue = (spec.hue as f32 + uniform(rng, -0.15, 0.15)) / HUES as f32;
    let fg = hue_rgb(hue.rem_euclid(1.0), uniform(rng, 0.75, 1.0));
    let bg_level = uniform(rng, 0.1, 0.6);
    let bg = [0; 3].map(|_: u8| bg_level + uniform(rng, -0.08, 0.08));
    let radius = s * uniform(rng, 0.22, 0.38);
    let (cx, cy) = (uniform(rng, radius, s - radius), uniform(rng, radius, s - radius));
    let (cos, sin) = direction(rng);
    let freq = uniform(rng, 2.5, 3.5);
    // A distractor blob of random colour, drawn under the object.
    let blob_r = s * uniform(rng, 0.08, 0.18);
    let (bx, by) = (uniform(rng, 0.0, s), uniform(rng, 0.0, s));
    let blob = hue_rgb(uniform(rng, 0.0, 1.0), uniform(rng, 0.4, 0.9));
    let noise = uniform(rng, 0.03, 0.10);
    let plane = size * size;
    for y in 0..size {
        for x in 0..size {
            let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
            let (dx, dy) = ((px - cx) / radius, (py - cy) / radius);
            let (u, v) = (cos * dx + sin * dy, -sin * dx + cos * dy);
            let (ex, ey) = (px - bx, py - by);
            let rgb = if inside(spec.shape, u, v) {
                let t = texture(spec.texture, u, v, freq);
                fg.map(|c| c * t)
            } else if ex * ex + ey * ey <= blob_r * blob_r {
                blob
            } else {
                bg
            };
            for (ch, value) in rgb.iter().enumerate() {
                let jitter = uniform(rng, -noise, noise);
                out[ch * plane + y * size + x] = ((value + jitter).clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_factor_combination_is_a_distinct_name() {
        let names: std::collections::HashSet<String> = (0..MAX_CLASSES).map(|i| ClassSpec::from_id(i).name()).collect();
        assert_eq!(names.len(), MAX_CLASSES);
    }

    #[test]
    fn shapes_cover_a_fair_share_of_their_box() {
        // Each shape should be a visible object, neither a speck nor the whole square.
        for (shape, name) in SHAPES.iter().enumerate() {
            let grid = 200;
            let hits = (0..grid * grid)
                .filter(|k| {
                    let (u, v) = ((k % grid) as f32 / grid as f32 * 2.0 - 1.0, (k / grid) as f32 / grid as f32 * 2.0 - 1.0);
                    inside(shape, u, v)
                })
                .count();
            let frac = hits as f64 / (grid * grid) as f64;
            assert!((0.15..0.8).contains(&frac), "{name} covers {frac}");
        }
    }

    #[test]
    fn directions_are_unit_vectors() {
        let mut rng = stream_rng(&[1]);
        for _ in 0..100 {
            let (c, s) = direction(&mut rng);
            assert!((c * c + s * s - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn tiny_and_empty_images_do_not_panic() {
        let cfg = SyntheticConfig { train_classes: 2, test_classes: 2, images_per_class: 1 };
        assert_eq!(generate(&cfg, 0, 0).train.images.size(), [2, 3, 0, 0]);
        assert_eq!(generate(&cfg, 1, 0).test.images.size(), [2, 3, 1, 1]);
    }
}
