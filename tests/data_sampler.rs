//! The class-balanced sampler: a pure function of (seed, epoch, step), balanced,
//! class-major, and its errors.
use std::collections::{HashMap, HashSet};

use hist::data::sampler::BalancedSampler;

/// 13 classes of uneven sizes (3..=15 images), interleaved as a real split might not be.
fn uneven_labels() -> Vec<i64> {
    let mut labels = Vec::new();
    for round in 0..15 {
        for c in 0..13i64 {
            if round < 3 + c {
                labels.push(c);
            }
        }
    }
    labels
}

#[test]
fn batches_are_class_major_distinct_and_within_class() {
    let labels = uneven_labels();
    let s = BalancedSampler::new(&labels, 24, 4, 11).expect("sampler");
    assert_eq!(s.steps_per_epoch(), labels.len() / 24);
    for epoch in 0..3 {
        for step in 0..s.steps_per_epoch() {
            let b = s.batch(epoch, step);
            assert_eq!(b.len(), 24);
            assert!(b.iter().all(|&i| i < labels.len()));
            let classes: Vec<i64> = b.chunks(4).map(|chunk| labels[chunk[0]]).collect();
            assert_eq!(classes.iter().collect::<HashSet<_>>().len(), 6, "6 distinct classes: {classes:?}");
            for chunk in b.chunks(4) {
                assert!(chunk.iter().all(|&i| labels[i] == labels[chunk[0]]), "class-major: {b:?}");
            }
        }
    }
}

#[test]
fn a_pure_function_of_seed_epoch_and_step() {
    let labels = uneven_labels();
    let a = BalancedSampler::new(&labels, 24, 4, 5).expect("sampler");
    let b = BalancedSampler::new(&labels, 24, 4, 5).expect("sampler");
    // Any order of asking gives the same batches (a resumed run or another rank).
    let forward: Vec<Vec<usize>> = (0..5).map(|step| a.batch(1, step)).collect();
    let backward: Vec<Vec<usize>> = (0..5).rev().map(|step| b.batch(1, step)).collect();
    assert!(forward.iter().eq(backward.iter().rev()));
    assert_eq!(a.flips(2, 3, 24), b.flips(2, 3, 24));
    // Different steps, epochs and seeds differ.
    let distinct: HashSet<Vec<usize>> = (0..4).flat_map(|e| (0..5).map(move |st| (e, st))).map(|(e, st)| a.batch(e, st)).collect();
    assert_eq!(distinct.len(), 20);
    let other = BalancedSampler::new(&labels, 24, 4, 6).expect("sampler");
    assert_ne!(a.batch(0, 0), other.batch(0, 0));
}

#[test]
fn classes_and_images_are_drawn_evenly_over_many_batches() {
    let labels: Vec<i64> = (0..400).map(|i| (i % 20) as i64).collect();
    let s = BalancedSampler::new(&labels, 40, 5, 3).expect("sampler");
    let mut per_class: HashMap<i64, usize> = HashMap::new();
    let mut per_image = vec![0usize; labels.len()];
    let batches = 500;
    for step in 0..batches {
        for i in s.batch(0, step) {
            *per_class.entry(labels[i]).or_default() += 1;
            per_image[i] += 1;
        }
    }
    // Each class is in a batch with probability 8/20: 500·8/20·5 = 1000 images expected.
    for (&c, &n) in &per_class {
        assert!((850..1150).contains(&n), "class {c} drawn {n} times");
    }
    assert_eq!(per_class.len(), 20);
    assert!(per_image.iter().all(|&n| n > 0), "every image is used");
}

#[test]
fn flips_are_fair_and_independent_of_the_batch_stream() {
    let labels: Vec<i64> = (0..100).map(|i| (i % 10) as i64).collect();
    let s = BalancedSampler::new(&labels, 20, 2, 9).expect("sampler");
    let flips: Vec<bool> = (0..200).flat_map(|step| s.flips(0, step, 20)).collect();
    let heads = flips.iter().filter(|&&f| f).count();
    assert!((1800..2200).contains(&heads), "{heads} of 4000 flipped");
    assert_eq!(s.flips(0, 0, 5), s.flips(0, 0, 20)[..5], "a prefix of the same stream");
    assert_ne!(s.flips(0, 0, 20), s.flips(0, 1, 20));
    // Asking for flips does not move the batch stream.
    let before = s.batch(0, 0);
    let _ = s.flips(0, 0, 20);
    assert_eq!(before, s.batch(0, 0));
}

#[test]
fn a_contiguous_slice_of_whole_classes_is_balanced() {
    // How the distributed version splits a global batch: rank r takes classes
    // [r·k, (r+1)·k) of the batch, i.e. a contiguous run of k·ipc indices.
    let labels: Vec<i64> = (0..300).map(|i| (i % 30) as i64).collect();
    let s = BalancedSampler::new(&labels, 48, 4, 1).expect("sampler");
    let b = s.batch(0, 0);
    for rank in b.chunks(48 / 4) {
        let classes: HashSet<i64> = rank.iter().map(|&i| labels[i]).collect();
        assert_eq!(classes.len(), 3);
        for c in classes {
            assert_eq!(rank.iter().filter(|&&i| labels[i] == c).count(), 4);
        }
    }
}

#[test]
fn sparse_labels_are_fine() {
    // Labels need not be dense for the sampler: classes 0, 7 and 1000.
    let labels = [0, 7, 1000, 0, 7, 1000, 0, 7, 1000];
    let s = BalancedSampler::new(&labels, 6, 2, 0).expect("sampler");
    let classes: HashSet<i64> = s.batch(0, 0).iter().map(|&i| labels[i]).collect();
    assert_eq!(classes, HashSet::from([0, 7, 1000]));
}

fn error(labels: &[i64], batch: usize, ipc: usize) -> String {
    let err = BalancedSampler::new(labels, batch, ipc, 0).expect_err("must fail").to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    err
}

#[test]
fn impossible_plans_are_clear_errors() {
    let labels: Vec<i64> = (0..200).map(|i| (i % 10) as i64).collect();
    assert!(error(&labels, 20, 3).contains("must divide data.batch_size"));
    assert!(error(&labels, 20, 0).contains("must divide data.batch_size"));
    assert!(error(&labels, 0, 4).contains("at least 1"));
    let e = error(&labels, 48, 4);
    assert!(e.contains("10 classes") && e.contains("12 distinct classes"), "{e}");
    assert!(error(&labels[..10], 20, 2).contains("fewer than one batch"));
    assert!(error(&[0, 1, -1, 2], 2, 1).contains("negative label -1"));
    assert!(error(&[], 2, 1).contains("0 classes"));
}
