//! The built-in deterministic synthetic image dataset (no download).
//!
//! A class is one combination of three generative factors — shape, hue and texture — so
//! classes share parts with each other and an embedding that learns the factors on the
//! training classes transfers to the unseen test classes. Each image renders its class's
//! object under random position, scale, rotation, background and a distractor blob, plus
//! pixel noise, so that retrieval needs learning. Images depend only on (seed, split, class
//! slot, index): generation order and thread count never change a pixel.
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tch::Tensor;

use super::sampler::stream_rng;
use super::{ImageSet, Splits};
use crate::config::SyntheticConfig;

const SHAPES: [&str; 6] = ["disc", "square", "triangle", "ring", "cross", "diamond"];
const HUES: usize = 8;
const TEXTURES: [&str; 4] = ["solid", "stripes", "checker", "dots"];
/// Stream id (see `sampler::stream_rng`) of the class-to-factor assignment.
const STREAM_CLASSES: u64 = 0x5e1ec7;

/// One class's factors.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ClassSpec {
    shape: usize,
    hue: usize,
    texture: usize,
}

impl ClassSpec {
    fn name(&self) -> String {
        format!("{}-hue{}-{}", SHAPES[self.shape], self.hue, TEXTURES[self.texture])
    }
}

/// Number of distinct classes the generator can make.
pub const MAX_CLASSES: usize = SHAPES.len() * HUES * TEXTURES.len();

/// Generates the train and test splits. Train and test classes are disjoint factor
/// combinations drawn from one seeded permutation. Class counts beyond [`MAX_CLASSES`]
/// together are clamped.
pub fn generate(cfg: &SyntheticConfig, image_size: usize, seed: u64) -> Splits {
    let mut all: Vec<ClassSpec> = (0..MAX_CLASSES)
        .map(|i| ClassSpec { shape: i % SHAPES.len(), hue: (i / SHAPES.len()) % HUES, texture: i / (SHAPES.len() * HUES) })
        .collect();
    all.shuffle(&mut stream_rng(seed, 0, 0, STREAM_CLASSES));
    let n_train = cfg.train_classes.min(MAX_CLASSES - 2);
    let n_test = cfg.test_classes.min(MAX_CLASSES - n_train);
    let train = render_split(&all[..n_train], cfg.images_per_class, image_size, seed, 1);
    let test = render_split(&all[n_train..n_train + n_test], cfg.images_per_class, image_size, seed, 2);
    Splits { train, test }
}

fn render_split(classes: &[ClassSpec], per_class: usize, size: usize, seed: u64, split: usize) -> ImageSet {
    let pixels = 3 * size * size;
    let mut data = vec![0u8; classes.len() * per_class * pixels];
    let mut labels = Vec::with_capacity(classes.len() * per_class);
    for (c, spec) in classes.iter().enumerate() {
        for i in 0..per_class {
            let n = c * per_class + i;
            let mut rng = stream_rng(seed, split, n, 0x1_4a6e);
            render(spec, size, &mut rng, &mut data[n * pixels..(n + 1) * pixels]);
            labels.push(c as i64);
        }
    }
    let images = Tensor::from_slice(&data).view([labels.len() as i64, 3, size as i64, size as i64]);
    ImageSet { images, labels, class_names: classes.iter().map(ClassSpec::name).collect() }
}

/// RGB in [0, 1] of a hue in [0, 1) at full saturation, with brightness `v`.
fn hue_rgb(h: f32, v: f32) -> [f32; 3] {
    let k = |n: f32| {
        let k = (n + h * 6.0) % 6.0;
        v * (1.0 - (k.min(4.0 - k).clamp(0.0, 1.0)))
    };
    [k(5.0), k(3.0), k(1.0)]
}

/// Whether the point (u, v) in the object's own frame (unit radius) is inside the shape.
fn inside(shape: usize, u: f32, v: f32) -> bool {
    match shape {
        0 => u * u + v * v <= 1.0,
        1 => u.abs() <= 0.8 && v.abs() <= 0.8,
        2 => v >= -0.6 && v <= 0.9 - 1.6 * u.abs(),
        3 => {
            let r = u * u + v * v;
            (0.36..=1.0).contains(&r)
        }
        4 => (u.abs() <= 0.3 && v.abs() <= 1.0) || (v.abs() <= 0.3 && u.abs() <= 1.0),
        _ => u.abs() + v.abs() <= 1.0,
    }
}

/// Texture intensity in [0.35, 1] at object-frame point (u, v).
fn texture(kind: usize, u: f32, v: f32, freq: f32) -> f32 {
    match kind {
        0 => 1.0,
        1 => if ((u * freq).floor() as i32).rem_euclid(2) == 0 { 1.0 } else { 0.35 },
        2 => if (((u * freq).floor() + (v * freq).floor()) as i32).rem_euclid(2) == 0 { 1.0 } else { 0.35 },
        _ => {
            let (fu, fv) = ((u * freq).fract().abs() - 0.5, (v * freq).fract().abs() - 0.5);
            if fu * fu + fv * fv < 0.09 { 0.35 } else { 1.0 }
        }
    }
}

fn render(spec: &ClassSpec, size: usize, rng: &mut ChaCha8Rng, out: &mut [u8]) {
    let s = size as f32;
    let hue = (spec.hue as f32 + rng.random_range(-0.15..0.15)) / HUES as f32;
    let fg = hue_rgb(hue.rem_euclid(1.0), rng.random_range(0.75..1.0));
    let bg_level: f32 = rng.random_range(0.1..0.6);
    let bg_tint: [f32; 3] = [rng.random_range(-0.08..0.08), rng.random_range(-0.08..0.08), rng.random_range(-0.08..0.08)];
    let radius = s * rng.random_range(0.22..0.38);
    let (cx, cy) = (rng.random_range(radius..s - radius), rng.random_range(radius..s - radius));
    let angle: f32 = rng.random_range(0.0..std::f32::consts::TAU);
    let (sin, cos) = angle.sin_cos();
    let freq = rng.random_range(2.5..3.5);
    // A distractor blob of random colour, drawn under the object.
    let blob_r = s * rng.random_range(0.08..0.18);
    let (bx, by) = (rng.random_range(0.0..s), rng.random_range(0.0..s));
    let blob = hue_rgb(rng.random_range(0.0..1.0), rng.random_range(0.4..0.9));
    let noise = rng.random_range(0.03..0.10);
    let plane = size * size;
    for y in 0..size {
        for x in 0..size {
            let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
            let (dx, dy) = ((px - cx) / radius, (py - cy) / radius);
            let (u, v) = (cos * dx + sin * dy, -sin * dx + cos * dy);
            let mut rgb = [bg_level + bg_tint[0], bg_level + bg_tint[1], bg_level + bg_tint[2]];
            let (ex, ey) = (px - bx, py - by);
            if ex * ex + ey * ey <= blob_r * blob_r {
                rgb = blob;
            }
            if inside(spec.shape, u, v) {
                let t = texture(spec.texture, u, v, freq);
                rgb = [fg[0] * t, fg[1] * t, fg[2] * t];
            }
            for (ch, value) in rgb.iter().enumerate() {
                let jitter: f32 = rng.random_range(-1.0..1.0) * noise;
                out[ch * plane + y * size + x] = ((value + jitter).clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn cfg() -> SyntheticConfig {
        SyntheticConfig { train_classes: 6, test_classes: 5, images_per_class: 8 }
    }

    #[test]
    fn deterministic_and_disjoint() {
        let a = generate(&cfg(), 32, 3);
        let b = generate(&cfg(), 32, 3);
        assert!(a.train.images.equal(&b.train.images) && a.test.images.equal(&b.test.images));
        assert_eq!(a.train.images.size(), [48, 3, 32, 32]);
        assert_eq!(a.test.labels.len(), 40);
        for name in &a.test.class_names {
            assert!(!a.train.class_names.contains(name), "{name} in both splits");
        }
        let c = generate(&cfg(), 32, 4);
        assert!(!a.train.images.equal(&c.train.images), "seed matters");
    }

    #[test]
    fn classes_differ_more_between_than_within() {
        let s = generate(&SyntheticConfig { train_classes: 8, test_classes: 2, images_per_class: 20 }, 32, 0);
        let x = s.train.images.to_kind(Kind::Float).view([8, 20, -1]);
        let means = x.mean_dim(1, false, Kind::Float); // [8, P]
        let within = (&x - means.unsqueeze(1)).square().mean(Kind::Float).double_value(&[]);
        let between = (&means - means.mean_dim(0, true, Kind::Float)).square().mean(Kind::Float).double_value(&[]);
        assert!(between > 0.05 * within, "between {between} within {within}");
        assert!(within > 0.0);
    }
}
