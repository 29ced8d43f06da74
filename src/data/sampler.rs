//! Class-balanced batches: batch/IPC distinct classes × IPC images each, as a pure
//! function of (seed, epoch, step) so any rank, or a resumed run, can recompute any batch.
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{HistError, Result};

/// Random streams derived from one (seed, epoch, step): which batch, and its augmentation.
const STREAM_BATCH: u64 = 0;
const STREAM_FLIP: u64 = 1;

/// SplitMix64's finaliser: decorrelates nearby inputs (epoch 3 vs 4) before seeding.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A ChaCha8 stream keyed by (seed, epoch, step, stream).
pub fn stream_rng(seed: u64, epoch: usize, step: usize, stream: u64) -> ChaCha8Rng {
    let key = mix(mix(mix(mix(seed) ^ epoch as u64) ^ step as u64) ^ stream);
    ChaCha8Rng::seed_from_u64(key)
}

/// The class-balanced batch plan of one training split.
#[derive(Debug, Clone)]
pub struct BalancedSampler {
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
        if ipc == 0 || batch_size % ipc != 0 {
            return Err(bad(format!("data.ipc ({ipc}) must divide data.batch_size ({batch_size})")));
        }
        let classes = labels.iter().copied().max().map_or(0, |m| m.max(-1) + 1) as usize;
        let mut by_class = vec![Vec::new(); classes];
        for (i, &y) in labels.iter().enumerate() {
            let y = usize::try_from(y).map_err(|_| bad(format!("negative label {y} at image {i}")))?;
            by_class[y].push(i);
        }
        by_class.retain(|members| !members.is_empty());
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
        let mut rng = stream_rng(self.seed, epoch, step, STREAM_BATCH);
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
        let mut rng = stream_rng(self.seed, epoch, step, STREAM_FLIP);
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
