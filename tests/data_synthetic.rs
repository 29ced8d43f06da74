//! The built-in synthetic dataset: deterministic to the byte, disjoint splits, classes that
//! are visibly different yet not trivially separable.
use std::collections::HashSet;

use hist::config::SyntheticConfig;
use hist::data::synthetic::{generate, MAX_CLASSES};
use hist::data::{ImageSet, Splits};
use tch::{Kind, Tensor};

fn cfg(train: usize, test: usize, per_class: usize) -> SyntheticConfig {
    SyntheticConfig { train_classes: train, test_classes: test, images_per_class: per_class }
}

fn bytes(set: &ImageSet) -> Vec<u8> {
    Vec::<u8>::try_from(set.images.flatten(0, -1)).expect("uint8 images")
}

/// FNV-1a over both splits' pixels, labels and class names.
fn fingerprint(s: &Splits) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    for set in [&s.train, &s.test] {
        bytes(set).into_iter().for_each(&mut eat);
        set.labels.iter().flat_map(|l| l.to_le_bytes()).for_each(&mut eat);
        set.class_names.iter().flat_map(|n| n.bytes().chain([0])).for_each(&mut eat);
    }
    h
}

#[test]
fn shapes_labels_and_disjoint_classes() {
    let s = generate(&cfg(6, 5, 8), 32, 3);
    assert_eq!(s.train.images.size(), [48, 3, 32, 32]);
    assert_eq!(s.test.images.size(), [40, 3, 32, 32]);
    assert_eq!(s.train.images.kind(), Kind::Uint8);
    let expected: Vec<i64> = (0..6).flat_map(|c| [c; 8]).collect();
    assert_eq!(s.train.labels, expected);
    assert_eq!((s.train.num_classes(), s.test.num_classes()), (6, 5));
    let names: HashSet<&String> = s.train.class_names.iter().chain(&s.test.class_names).collect();
    assert_eq!(names.len(), 11, "class names are unique and the splits disjoint");
}

#[test]
fn same_inputs_same_bytes_and_the_seed_matters() {
    let a = generate(&cfg(6, 5, 8), 32, 3);
    let b = generate(&cfg(6, 5, 8), 32, 3);
    assert!(a.train.images.equal(&b.train.images) && a.test.images.equal(&b.test.images));
    assert_eq!(a.train.class_names, b.train.class_names);
    let c = generate(&cfg(6, 5, 8), 32, 4);
    assert!(!a.train.images.equal(&c.train.images), "seed matters");
    assert_ne!(a.train.class_names, c.train.class_names, "seed picks the classes");
}

#[test]
fn pinned_fingerprint() {
    // The generator uses only exactly-rounded f32 arithmetic and keyed ChaCha8 streams, so
    // these bytes are the same on every machine. If you changed the generator on purpose,
    // record the new value (and expect different demo numbers).
    let s = generate(&cfg(4, 3, 3), 16, 7);
    assert_eq!(fingerprint(&s), PINNED, "synthetic data changed: 0x{:016x}", fingerprint(&s));
}

/// Fingerprint of generate(4 + 3 classes × 3 images, 16 px, seed 7).
const PINNED: u64 = 0x8336_6495_10e2_0d87;

#[test]
fn more_images_or_classes_keep_the_existing_ones() {
    // Each image depends only on (seed, split, class, index), not on how many are made.
    let small = generate(&cfg(5, 4, 3), 24, 1);
    let big = generate(&cfg(8, 4, 6), 24, 1);
    assert_eq!(small.train.class_names[..], big.train.class_names[..5]);
    for c in 0..5i64 {
        let a = small.train.images.narrow(0, c * 3, 3);
        let b = big.train.images.narrow(0, c * 6, 3);
        assert!(a.equal(&b), "class {c}");
    }
}

#[test]
fn class_counts_are_clamped_to_the_factor_space() {
    let s = generate(&cfg(MAX_CLASSES + 10, 50, 1), 16, 0);
    assert_eq!(s.train.num_classes(), MAX_CLASSES - 2);
    assert_eq!(s.test.num_classes(), 2);
    let names: HashSet<&String> = s.train.class_names.iter().chain(&s.test.class_names).collect();
    assert_eq!(names.len(), MAX_CLASSES);
}

/// Mean squared pixel distance between two images of one class, and of two classes.
fn within_between(set: &ImageSet) -> (f64, f64) {
    let n = set.len() as i64;
    let x = set.images.to_kind(Kind::Double).view([n, -1]);
    let d2 = Tensor::cdist(&x, &x, 2.0, None::<i64>).square();
    let y = Tensor::from_slice(&set.labels);
    let same = y.unsqueeze(0).eq_tensor(&y.unsqueeze(1)).to_kind(Kind::Double);
    let off_diag = Tensor::ones([n, n], (Kind::Double, tch::Device::Cpu)) - Tensor::eye(n, (Kind::Double, tch::Device::Cpu));
    let mean_over = |mask: &Tensor| ((&d2 * mask).sum(Kind::Double) / mask.sum(Kind::Double)).double_value(&[]);
    (mean_over(&(&same * &off_diag)), mean_over(&(1.0 - &same)))
}

#[test]
fn classes_differ_more_between_than_within() {
    let s = generate(&cfg(12, 2, 30), 32, 0);
    let (within, between) = within_between(&s.train);
    assert!(within > 0.0, "images of a class vary");
    // Images of two classes are further apart than two of one class, but most of the
    // distance is nuisance (placement, background, noise): learnable, not trivial.
    assert!(between > 1.1 * within && between < 3.0 * within, "between {between} within {within}");
}

/// Recall@1 of nearest neighbours on raw pixels (each query's own image excluded).
fn raw_pixel_recall_at_1(set: &ImageSet) -> f64 {
    let n = set.len() as i64;
    let x = set.images.to_kind(Kind::Float).view([n, -1]);
    let d = Tensor::cdist(&x, &x, 2.0, None::<i64>) + Tensor::eye(n, (Kind::Float, tch::Device::Cpu)) * 1e9;
    let nearest = Vec::<i64>::try_from(d.argmin(1, false)).expect("argmin");
    let hits = (0..n as usize).filter(|&i| set.labels[nearest[i] as usize] == set.labels[i]).count();
    hits as f64 / n as f64
}

#[test]
fn raw_pixels_retrieve_better_than_chance_but_far_from_perfectly() {
    let s = generate(&cfg(2, 24, 20), 32, 0);
    let r1 = raw_pixel_recall_at_1(&s.test);
    let chance = 19.0 / (24.0 * 20.0 - 1.0);
    assert!(r1 > 3.0 * chance && r1 < 0.8, "raw-pixel Recall@1 {r1} (chance {chance})");
}
