//! The training batch plan, as a pure function of (seed, epoch, step) so any rank, or a
//! resumed run, can recompute any batch. Two plans (`data.sampling`):
//! - `balanced` (default): batch/IPC distinct classes × IPC images each;
//! - `random`: each epoch a permutation of the training images, cut into consecutive
//!   batches, the last partial one dropped — what the authors' code runs with `--IPC 0`
//!   (a shuffling DataLoader with drop_last).
//!
//! Randomness: balanced batch `step` of `epoch` draws from the stream keyed (seed,
//! `streams::BATCH`, epoch, step), the random plan's permutation from (seed,
//! `streams::BATCH`, epoch), and the flips from (seed, `streams::FLIP`, epoch, step), so
//! batches and flips never share draws and turning flips off leaves the batches unchanged
//! (see `data::streams`).
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use rand::seq::index::sample;
use rand::seq::SliceRandom;
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
        let steps = whole_batches(labels.len(), batch_size)?;
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

    /// Horizontal-flip decisions for the `n` images of batch `step` of `epoch`.
    pub fn flips(&self, epoch: usize, step: usize, n: usize) -> Vec<bool> {
        flips(self.seed, epoch, step, n)
    }
}

/// Flip decisions on a stream of their own, so that turning augmentation on or off never
/// changes the batches.
fn flips(seed: u64, epoch: usize, step: usize, n: usize) -> Vec<bool> {
    let mut rng = stream_rng(&[seed, streams::FLIP, epoch as u64, step as u64]);
    (0..n).map(|_| rng.random_bool(0.5)).collect()
}

/// Batches per epoch, ⌊images / batch_size⌋ (a last partial batch is dropped); an
/// error when not even one batch fits.
fn whole_batches(images: usize, batch_size: usize) -> Result<usize> {
    match images.checked_div(batch_size) {
        Some(steps) if steps > 0 => Ok(steps),
        _ => Err(HistError::Data {
            path: "training split".into(),
            message: format!("{images} images, fewer than one batch of {batch_size}; lower data.batch_size"),
        }),
    }
}

/// An epoch and its permutation of the training images.
type EpochOrder = (usize, Arc<[usize]>);

/// Plain random batches: each epoch a fresh permutation of all training images.
#[derive(Debug, Clone)]
pub struct RandomSampler {
    images: usize,
    batch_size: usize,
    seed: u64,
    /// The latest epoch's permutation: each step asks for its batch (the trainer and the
    /// loader both), and reshuffling every image each time would be O(images) per batch.
    order: Arc<Mutex<Option<EpochOrder>>>,
}

impl RandomSampler {
    /// Errors when there are fewer images than one batch.
    pub fn new(images: usize, batch_size: usize, seed: u64) -> Result<Self> {
        whole_batches(images, batch_size)?;
        Ok(RandomSampler { images, batch_size, seed, order: Arc::default() })
    }

    /// Batches per epoch: ⌊images / batch_size⌋ (the last partial batch is dropped).
    pub fn steps_per_epoch(&self) -> usize {
        self.images / self.batch_size
    }

    /// Indices of batch `step` of `epoch`: positions [step·B, (step+1)·B) of the epoch's
    /// permutation, so an epoch visits every image at most once.
    pub fn batch(&self, epoch: usize, step: usize) -> Vec<usize> {
        self.epoch_order(epoch)[step * self.batch_size..(step + 1) * self.batch_size].to_vec()
    }

    /// The permutation of `epoch`, shuffled once per epoch.
    fn epoch_order(&self, epoch: usize) -> Arc<[usize]> {
        // The cache only ever holds a finished permutation, so a poisoned lock is usable.
        let mut cache = self.order.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((cached, order)) = cache.as_ref() {
            if *cached == epoch {
                return Arc::clone(order);
            }
        }
        let mut order: Vec<usize> = (0..self.images).collect();
        order.shuffle(&mut stream_rng(&[self.seed, streams::BATCH, epoch as u64]));
        let order: Arc<[usize]> = order.into();
        *cache = Some((epoch, Arc::clone(&order)));
        order
    }
}

/// The configured plan (`data.sampling`).
#[derive(Debug, Clone)]
pub enum Sampler {
    /// Class-balanced batches.
    Balanced(BalancedSampler),
    /// Plain random batches.
    Random(RandomSampler),
}

impl Sampler {
    /// Batches per epoch.
    pub fn steps_per_epoch(&self) -> usize {
        match self {
            Sampler::Balanced(s) => s.steps_per_epoch(),
            Sampler::Random(s) => s.steps_per_epoch(),
        }
    }

    /// Image indices of batch `step` of `epoch`.
    pub fn batch(&self, epoch: usize, step: usize) -> Vec<usize> {
        match self {
            Sampler::Balanced(s) => s.batch(epoch, step),
            Sampler::Random(s) => s.batch(epoch, step),
        }
    }

    /// Horizontal-flip decisions for the `n` images of batch `step` of `epoch`.
    pub fn flips(&self, epoch: usize, step: usize, n: usize) -> Vec<bool> {
        flips(self.seed(), epoch, step, n)
    }

    fn seed(&self) -> u64 {
        match self {
            Sampler::Balanced(s) => s.seed,
            Sampler::Random(s) => s.seed,
        }
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
    fn random_batches_cover_an_epoch_once_and_are_deterministic() {
        let s = RandomSampler::new(203, 20, 5).expect("sampler");
        assert_eq!(s.steps_per_epoch(), 10);
        let epoch: Vec<usize> = (0..10).flat_map(|step| s.batch(3, step)).collect();
        assert_eq!(epoch.iter().collect::<HashSet<_>>().len(), 200, "no image twice in an epoch");
        assert_eq!(s.batch(3, 4), RandomSampler::new(203, 20, 5).expect("sampler").batch(3, 4));
        assert_ne!(s.batch(3, 4), s.batch(4, 4), "epochs reshuffle");
        assert_ne!(s.batch(3, 4), RandomSampler::new(203, 20, 6).expect("sampler").batch(3, 4), "seed matters");
        // Not class-balanced: a batch of 20 from 10 classes usually repeats some 3+ times.
        let labels = labels();
        let s = Sampler::Random(RandomSampler::new(200, 20, 1).expect("sampler"));
        let uneven = (0..10).any(|step| {
            let mut counts: HashMap<i64, usize> = HashMap::new();
            s.batch(0, step).iter().for_each(|&i| *counts.entry(labels[i]).or_default() += 1);
            counts.values().any(|&c| c != 2)
        });
        assert!(uneven);
        assert!(RandomSampler::new(19, 20, 0).is_err());
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
