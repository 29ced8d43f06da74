//! This rank's images for each training step: a slice of the in-memory split (synthetic
//! data), or the next batch of a loader that has been decoding the rank's slices of the
//! coming steps ahead of time (files).
use std::ops::Range;
use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use super::loader::{BatchPlan, ImageJob, Loader, SkippedImage};
use super::spec::{ImageOp, PipelineSpec};
use super::split::SplitImages;
use crate::config::BadImagePolicy;
use crate::data::sampler::Sampler;
use crate::data::ImageSet;
use crate::error::{HistError, Result};

/// Positions of rank `rank`'s contiguous share of a global batch of `len` over `world` ranks.
pub fn rank_positions(len: usize, rank: usize, world: usize) -> Range<usize> {
    let b = len / world;
    rank * b..(rank + 1) * b
}

/// Where the plan starts and how the global batches are shared out.
#[derive(Debug, Clone, Copy)]
pub struct PlanRange {
    /// First (epoch, step) to load.
    pub from: (usize, usize),
    /// Epochs in the run (the plan ends with the last step of epoch `epochs - 1`).
    pub epochs: usize,
    /// This rank.
    pub rank: usize,
    /// Ranks in the job.
    pub world: usize,
    /// Whether training images are mirrored at random (`data.hflip`).
    pub hflip: bool,
}

/// One step's images on this rank.
#[derive(Debug)]
pub struct LocalImages {
    /// [b', 3, H, W] on the training device, in the training dtype (b' < b only when
    /// unreadable images were skipped).
    pub images: Tensor,
    /// Under `data.on_bad_image: skip`, which of this rank's b positions have an image;
    /// `None` when every image is always present.
    pub present: Option<Vec<bool>>,
    /// The images of this rank's share that were skipped, and why.
    pub skipped: Vec<SkippedImage>,
}

/// The source of this rank's training images, step after step.
pub enum TrainBatches<'a> {
    /// Slices of a decoded split.
    Memory(&'a ImageSet),
    /// A loader running ahead through the plan.
    Stream {
        /// The loader.
        loader: Loader,
        /// Whether bad images are skipped.
        policy: BadImagePolicy,
    },
}

impl<'a> TrainBatches<'a> {
    /// Images of `split` for the steps of `range`, batches drawn by `sampler`.
    pub fn new(split: &'a SplitImages, spec: &Arc<PipelineSpec>, sampler: &Sampler, range: PlanRange) -> Result<Self> {
        match split {
            SplitImages::Memory(set) => Ok(TrainBatches::Memory(set)),
            SplitImages::Files(files) => {
                let plan = train_plan(sampler.clone(), range);
                let loader = Loader::new(Arc::clone(files), Arc::clone(spec), Box::new(plan))?;
                Ok(TrainBatches::Stream { loader, policy: spec.on_bad_image })
            }
        }
    }

    /// This rank's images of step `step` of `epoch`, whose global batch is `global` with
    /// `flips` (empty = none); steps must be asked for in plan order.
    #[allow(clippy::too_many_arguments)]
    pub fn local(
        &mut self,
        epoch: usize,
        step: usize,
        global: &[usize],
        flips: &[bool],
        rank: usize,
        world: usize,
        kind: Kind,
        device: Device,
    ) -> Result<LocalImages> {
        match self {
            TrainBatches::Memory(set) => {
                let positions = rank_positions(global.len(), rank, world);
                let local_flips = if flips.is_empty() { &[][..] } else { &flips[positions.clone()] };
                let images = set.batch(&global[positions], local_flips, kind, device);
                Ok(LocalImages { images, present: None, skipped: Vec::new() })
            }
            TrainBatches::Stream { loader, policy } => {
                let out_of_step = |got: String| HistError::Data {
                    path: "image pipeline".into(),
                    message: format!("expected the batch of epoch {epoch} step {step}, got {got}; this is a bug, please report it"),
                };
                let batch = loader.next_batch().ok_or_else(|| out_of_step("the end of the plan".to_string()))??;
                if batch.id != (epoch, step) {
                    return Err(out_of_step(format!("epoch {} step {}", batch.id.0, batch.id.1)));
                }
                let present = (*policy == BadImagePolicy::Skip).then_some(batch.present);
                Ok(LocalImages { images: batch.images.to_kind(kind).to_device(device), present, skipped: batch.skipped })
            }
        }
    }
}

/// Every remaining step's share of this rank, in the order the trainer takes them.
fn train_plan(sampler: Sampler, range: PlanRange) -> impl Iterator<Item = BatchPlan> {
    let steps = sampler.steps_per_epoch();
    let (first_epoch, first_step) = range.from;
    (first_epoch..range.epochs)
        .flat_map(move |epoch| (if epoch == first_epoch { first_step } else { 0 }..steps).map(move |step| (epoch, step)))
        .map(move |(epoch, step)| {
            let global = sampler.batch(epoch, step);
            let flips = if range.hflip { sampler.flips(epoch, step, global.len()) } else { Vec::new() };
            let jobs = rank_positions(global.len(), range.rank, range.world)
                .map(|position| {
                    let flip = flips.get(position).copied().unwrap_or(false);
                    ImageJob { sample: global[position], op: ImageOp::Train { epoch, step, position, flip } }
                })
                .collect();
            BatchPlan { id: (epoch, step), jobs }
        })
}
