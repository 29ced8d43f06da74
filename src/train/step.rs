//! One optimiser step of one rank: local forward, all-gather to the global batch, HIST
//! loss on the global batch, backward, gradient reduction, update (design §3).
use std::time::Instant;

use tch::{Device, Kind, Tensor};

use super::optim::Optimizer;
use crate::data::pipeline::rank_positions;
use crate::dist::gather::gather_with_grad;
use crate::dist::grad_sync::{reduce_gradients, GradRule};
use crate::dist::sync_bn::with_sync_bn;
use crate::dist::Collectives;
use crate::error::{HistError, Result};
use crate::loss::HistLoss;
use crate::model::EmbeddingModel;

/// This rank's share of a global batch plan: a contiguous slice of whole classes.
pub fn local_slice<T: Clone>(global: &[T], rank: usize, world: usize) -> Vec<T> {
    global[rank_positions(global.len(), rank, world)].to_vec()
}

/// Checks that every rank can take whole classes of each batch.
pub fn check_shardable(batch_size: usize, ipc: usize, world: usize) -> Result<()> {
    let classes = batch_size / ipc;
    if !classes.is_multiple_of(world) {
        return Err(HistError::Dist(format!(
            "data.batch_size / data.ipc = {classes} classes per batch cannot be split evenly over {world} ranks; \
             make it a multiple of the world size (e.g. data.batch_size={})",
            classes.div_ceil(world) * world * ipc
        )));
    }
    Ok(())
}

/// The per-step inputs of one rank.
pub struct StepBatch {
    /// This rank's images [b', 3, H, W] on the device, in its slice's order.
    pub images: Tensor,
    /// Labels of the whole global batch, in plan order (every rank knows the plan).
    pub labels: Vec<i64>,
    /// Under `data.on_bad_image: skip`, which of this rank's b positions `images` holds
    /// (b' = the number of `true`); `None` when every position always has its image.
    pub present: Option<Vec<bool>>,
}

/// What one step reports.
#[derive(Debug, Clone)]
pub struct StepStats {
    /// (total, ds, ce) of the global batch's loss.
    pub losses: [f64; 3],
    /// Seconds spent in collectives (including waiting for slower ranks).
    pub comm_seconds: f64,
    /// Positions in the global batch whose image was skipped (on any rank), ascending.
    pub dropped: Vec<usize>,
}

/// Runs one step.
#[allow(clippy::too_many_arguments)]
pub fn train_step(
    pg: &mut dyn Collectives,
    model: &EmbeddingModel,
    loss: &HistLoss,
    optimizer: &mut Optimizer,
    reduce_params: &[(Tensor, GradRule)],
    batch: StepBatch,
    device: Device,
    bucket_bytes: usize,
) -> Result<StepStats> {
    let local_emb = with_sync_bn(pg, || model.forward(&batch.images, true))?;
    let t_gather = Instant::now();
    let (global_emb, labels, dropped) = match &batch.present {
        None => (gather_with_grad(pg, &local_emb)?, batch.labels, Vec::new()),
        Some(present) => gather_present(pg, &local_emb, present, &batch.labels)?,
    };
    let mut comm_seconds = t_gather.elapsed().as_secs_f64();
    let labels = Tensor::from_slice(&labels).to_device(device);
    let terms = loss.forward(&global_emb, &labels);
    optimizer.zero_grad();
    with_sync_bn(pg, || terms.total.backward())?;
    let t_reduce = Instant::now();
    reduce_gradients(pg, reduce_params, bucket_bytes)?;
    comm_seconds += t_reduce.elapsed().as_secs_f64();
    optimizer.step();
    let losses = [&terms.total, &terms.ds, &terms.ce].map(|t| t.double_value(&[]));
    Ok(StepStats { losses, comm_seconds, dropped })
}

/// The global batch's embeddings and labels without the skipped images, and the skipped
/// positions. Each rank pads its embeddings back to its b positions with one extra
/// column that is 1 where an image is present, so the one all-gather also tells every
/// rank which positions every other rank skipped: all ranks drop the same rows, and the
/// result is the one a single rank would get with the whole batch.
fn gather_present(pg: &mut dyn Collectives, local: &Tensor, present: &[bool], labels: &[i64]) -> Result<(Tensor, Vec<i64>, Vec<usize>)> {
    let (kind, device, d) = (local.kind(), local.device(), local.size()[1]);
    let rows: Vec<i64> = (0..present.len() as i64).filter(|&i| present[i as usize]).collect();
    let flagged = Tensor::cat(&[local.shallow_clone(), Tensor::ones([local.size()[0], 1], (kind, device))], 1);
    let padded = Tensor::zeros([present.len() as i64, d + 1], (kind, device)).index_copy(0, &Tensor::from_slice(&rows).to_device(device), &flagged);
    let global = gather_with_grad(pg, &padded)?;
    let flags = Vec::<f64>::try_from(global.select(1, d).detach().to_device(Device::Cpu).to_kind(Kind::Double))?;
    let keep: Vec<i64> = (0..flags.len() as i64).filter(|&i| flags[i as usize] > 0.5).collect();
    let dropped: Vec<usize> = (0..flags.len()).filter(|&i| flags[i] <= 0.5).collect();
    if keep.is_empty() {
        return Err(HistError::Data {
            path: "training data".into(),
            message: format!("every one of the {} images of this step's batch is unreadable; fix the dataset's files", flags.len()),
        });
    }
    let embeddings = global.narrow(1, 0, d).index_select(0, &Tensor::from_slice(&keep).to_device(device));
    Ok((embeddings, keep.iter().map(|&i| labels[i as usize]).collect(), dropped))
}
