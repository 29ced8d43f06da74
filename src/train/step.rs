//! One optimiser step of one rank: local forward, all-gather to the global batch, HIST
//! loss on the global batch, backward, gradient reduction, update (design §3).
use std::time::Instant;

use tch::{Device, Kind, Tensor};

use super::optim::Optimizer;
use crate::data::ImageSet;
use crate::dist::gather::gather_with_grad;
use crate::dist::grad_sync::{reduce_gradients, GradRule};
use crate::dist::Collectives;
use crate::error::{HistError, Result};
use crate::loss::HistLoss;
use crate::model::EmbeddingModel;

/// This rank's share of a global batch plan: a contiguous slice of whole classes.
pub fn local_slice<T: Clone>(global: &[T], rank: usize, world: usize) -> Vec<T> {
    let b = global.len() / world;
    global[rank * b..(rank + 1) * b].to_vec()
}

/// Checks that every rank can take whole classes of each batch.
pub fn check_shardable(batch_size: usize, ipc: usize, world: usize) -> Result<()> {
    let classes = batch_size / ipc;
    if classes % world != 0 {
        return Err(HistError::Dist(format!(
            "data.batch_size / data.ipc = {classes} classes per batch cannot be split evenly over {world} ranks; \
             make it a multiple of the world size (e.g. data.batch_size={})",
            classes.div_ceil(world) * world * ipc
        )));
    }
    Ok(())
}

/// The per-step inputs every rank derives from the shared plan.
pub struct StepBatch<'a> {
    /// Global batch indices into `set`, class-major.
    pub global: &'a [usize],
    /// Flip decisions for the global batch (empty = none).
    pub flips: &'a [bool],
    /// The training split.
    pub set: &'a ImageSet,
}

/// What one step reports.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    /// (total, ds, ce) of the global batch's loss.
    pub losses: [f64; 3],
    /// Seconds spent in collectives (including waiting for slower ranks).
    pub comm_seconds: f64,
}

/// Runs one step.
#[allow(clippy::too_many_arguments)]
pub fn train_step(
    pg: &mut dyn Collectives,
    model: &EmbeddingModel,
    loss: &HistLoss,
    optimizer: &mut Optimizer,
    reduce_params: &[(Tensor, GradRule)],
    batch: StepBatch<'_>,
    kind: Kind,
    device: Device,
    bucket_bytes: usize,
) -> Result<StepStats> {
    let (rank, world) = (pg.rank(), pg.world_size());
    let local_idx = local_slice(batch.global, rank, world);
    let local_flips = if batch.flips.is_empty() { Vec::new() } else { local_slice(batch.flips, rank, world) };
    let images = batch.set.batch(&local_idx, &local_flips, kind, device);
    let local_emb = model.forward(&images, true);
    let t_gather = Instant::now();
    let global_emb = gather_with_grad(pg, &local_emb)?;
    let mut comm_seconds = t_gather.elapsed().as_secs_f64();
    // Labels need no collective: every rank knows the whole plan.
    let labels = batch.set.batch_labels(batch.global, device);
    let terms = loss.forward(&global_emb, &labels);
    optimizer.zero_grad();
    terms.total.backward();
    let t_reduce = Instant::now();
    reduce_gradients(pg, reduce_params, bucket_bytes)?;
    comm_seconds += t_reduce.elapsed().as_secs_f64();
    optimizer.step();
    let losses = [&terms.total, &terms.ds, &terms.ce].map(|t| t.double_value(&[]));
    Ok(StepStats { losses, comm_seconds })
}
