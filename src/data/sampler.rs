//! Class-balanced batches: batch/IPC distinct classes × IPC images each, as a pure
//! function of (seed, epoch, step) so any rank, or a resumed run, can recompute any batch.
//!
//! Randomness: batch `step` of `epoch` draws from the stream keyed (seed, `streams::BATCH`,
//! epoch, step) and its flips from (seed, `streams::FLIP`, epoch, step), so the two never
//! share draws and turning flips off leaves the batches unchanged (see `data::streams`).
use std::collections::BTreeMap;

use rand::seq::index::sample;
use rand::Rng;

use super::streams::{self, stream_rng};
use crate::error::{HistError, Result};

/// The class-balanced batch plan of one training split.
#[derive(Debug, Clone)]
pub struct BalancedSampler {
    /// Image indices of each class that has images, in label order.
    by_class: Vec<Vec<usize>>,
    batch_size: usize,
    ipc: usize,
    seed: u64,
    steps: usize,
}

impl BalancedSampler {
    /// Indexes `labels` by class. Errors when `ipc` does not divide `batch_size`, when there
    /// are fewer non-empty classes than batch/ipc, or fewer images than one batch.
    pub fn new(labels: &[i64], batch_size: usize, ipc: usize, seed: u64) -> Result<Self> {
        let bad = |message: String| HistError::Data { path: "training split".into(), message };
        if batch_size == 0 {
            return Err(bad("data.batch_size must be at least 1".to_string()));
        }
        if ipc == 0 || !batch_size.is_multiple_of(ipc) {
            return Err(bad(format!("data.ipc ({ipc}) must divide data.batch_size ({batch_size})")));
        }
        // A map rather than a label-indexed Vec: sparse or huge labels cost nothing, and
        // iteration in label order keeps the plan independent of the labels' layout.
        let mut members: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        for (i, &y) in labels.iter().enumerate() {
            if y < 0 {
                return Err(bad(format!("negative label {y} at image {i}")));
            }
            members.entry(y).or_default().push(i);
        }
        let by_class: Vec<Vec<usize>> = members.into_values().collect();
        let per_batch = batch_size / ipc;
        if by_class.len() < per_batch {
            return Err(bad(format!(
                "{} classes, but a batch needs {per_batch} distinct classes (data.batch_size / data.ipc); lower data.batch_size or raise data.ipc",
                by_class.len()
            )));
        }
        let steps = labels.len() / batch_size;
        if steps == 0 {
            return Err(bad(format!(
                "{} images, fewer than one batch of {batch_size}; lower data.batch_size",
                labels.len()
            )));
        }
        Ok(BalancedSampler { by_class, batch_size, ipc, seed, steps })
    }

    /// Batches per epoch: ⌊images / batch_size⌋, as the authors' code counts them.
    pub fn steps_per_epoch(&self) -> usize {
        self.steps
    }

    /// Indices of batch `step` of `epoch`: batch/ipc distinct classes in random order,
    /// each with `ipc` of its images drawn with replacement, class-major (a class's images
    /// are contiguous, so a contiguous slice of whole classes is itself balanced).
    pub fn batch(&self, epoch: usize, step: usize) -> Vec<usize> {
        let mut rng = stream_rng(&[self.seed, streams::BATCH, epoch as u64, step as u64]);
        let per_batch = self.batch_size / self.ipc;
        let chosen = sample(&mut rng, self.by_class.len(), per_batch);
        let mut out = Vec::with_capacity(self.batch_size);
        for c in chosen.iter() {
            let members = &self.by_class[c];
            for _ in 0..self.ipc {
                out.push(members[rng.random_range(0..members.len())]);
            }
        }
        out
    }

    /// Horizontal-flip decisions for the `n` images of batch `step` of `epoch`, on a stream
    /// of their own so that turning augmentation on or off never changes the batches.
    pub fn flips(&self, epoch: usize, step: usize, n: usize) -> Vec<bool> {
        let mut rng = stream_rng(&[self.seed, streams::FLIP, epoch as u64, step as u64]);
        (0..n).map(|_| rng.random_bool(0.5)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    fn labels() -> Vec<i64> {
        (0..200).map(|i| (i % 10) as i64).collect()
    }

    #[test]
    fn batches_are_balanced_and_deterministic() {
        let labels = labels();
        let s = BalancedSampler::new(&labels, 20, 4, 7).expect("sampler");
        assert_eq!(s.steps_per_epoch(), 10);
        let b = s.batch(2, 3);
        assert_eq!(b.len(), 20);
        assert_eq!(b, s.batch(2, 3));
        assert_ne!(b, s.batch(2, 4));
        assert_ne!(b, s.batch(3, 3));
        let classes: Vec<i64> = b.chunks(4).map(|chunk| labels[chunk[0]]).collect();
        assert_eq!(classes.iter().collect::<HashSet<_>>().len(), 5, "distinct classes");
        for chunk in b.chunks(4) {
            assert!(chunk.iter().all(|&i| labels[i] == labels[chunk[0]]), "class-major");
        }
        let other = BalancedSampler::new(&labels, 20, 4, 8).expect("sampler");
        assert_ne!(b, other.batch(2, 3), "seed matters");
    }

    #[test]
    fn every_class_is_drawn_over_an_epoch() {
        let labels = labels();
        let s = BalancedSampler::new(&labels, 20, 4, 1).expect("sampler");
        let mut counts: HashMap<i64, usize> = HashMap::new();
        for step in 0..s.steps_per_epoch() {
            for i in s.batch(0, step) {
                *counts.entry(labels[i]).or_default() += 1;
            }
        }
        assert_eq!(counts.len(), 10);
    }

    #[test]
    fn impossible_plans_are_errors() {
        let labels = labels();
        assert!(BalancedSampler::new(&labels, 20, 3, 0).is_err());
        let e = BalancedSampler::new(&labels, 48, 4, 0).expect_err("12 classes needed");
        assert!(e.to_string().contains("10 classes"), "{e}");
        let e = BalancedSampler::new(&labels[..10], 20, 2, 0).expect_err("too few images");
        assert!(e.to_string().contains("fewer than one batch"), "{e}");
    }
}
