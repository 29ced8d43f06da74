//! One optimiser step of one rank: local forward, all-gather to the global batch, HIST
//! loss on the global batch, backward, gradient reduction, update (design §3). With
//! `train.autocast` on CUDA the forward runs under autocast and fp16 adds loss scaling
//! (train::grad_scaler); everything from the embeddings on stays float32.
use std::time::Instant;

use tch::{Device, Kind, Tensor};

use super::grad_scaler::GradScaler;
use super::optim::Optimizer;
use crate::config::{DataConfig, Sampling};
use crate::data::pipeline::rank_positions;
use crate::dist::gather::gather_with_grad;
use crate::dist::grad_sync::{reduce_gradients, GradRule};
use crate::dist::sync_bn::with_sync_bn;
use crate::dist::Collectives;
use crate::error::{HistError, Result};
use crate::loss::HistLoss;
use crate::model::autocast::{with_autocast, Autocast};
use crate::model::EmbeddingModel;

/// This rank's share of a global batch plan: a contiguous slice (whole classes under balanced sampling).
pub fn local_slice<T: Clone>(global: &[T], rank: usize, world: usize) -> Vec<T> {
    global[rank_positions(global.len(), rank, world)].to_vec()
}

/// Checks that every rank can take an equal share of each batch: whole classes under
/// `sampling: balanced`, an equal number of images under `random`.
pub fn check_shardable(data: &DataConfig, world: usize) -> Result<()> {
    let (units, what, to_batch) = match data.sampling {
        Sampling::Balanced => (data.batch_size / data.ipc, "classes per batch (data.batch_size / data.ipc)", data.ipc),
        Sampling::Random => (data.batch_size, "images per batch (data.batch_size)", 1),
    };
    if !units.is_multiple_of(world) {
        return Err(HistError::Dist(format!(
            "{units} {what} cannot be split evenly over {world} ranks; \
             make it a multiple of the world size (e.g. data.batch_size={})",
            units.div_ceil(world) * world * to_batch
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
    /// The optimiser did not step: fp16 gradients overflowed (the loss scale backed off).
    pub skipped: bool,
}

/// This rank's embeddings as the loss takes them: the model's forward pass, inside an
/// autocast region when `autocast` is set and then cast to float32, so that the all-gather
/// and the HIST loss (whose Mahalanobis distances cancel between three matmuls) run in
/// float32 whatever the backbone computed in.
pub fn embed_for_loss(model: &EmbeddingModel, images: &Tensor, train: bool, autocast: Option<Autocast>) -> Result<Tensor> {
    let embeddings = with_autocast(autocast, || model.forward(images, train))?;
    Ok(if autocast.is_some() { embeddings.to_kind(Kind::Float) } else { embeddings })
}

/// Runs one step. `autocast` and `scaler` come from `model::precision::Precision` (both
/// `None` on the CPU; the scaler for fp16 only).
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
    autocast: Option<Autocast>,
    scaler: Option<&mut GradScaler>,
) -> Result<StepStats> {
    let local_emb = with_sync_bn(pg, || embed_for_loss(model, &batch.images, true, autocast))??;
    let t_gather = Instant::now();
    // Time spent waiting for the device (its queued compute as much as the collective) is
    // not counted as communication.
    let mut waited = 0.0;
    let (global_emb, labels, dropped) = match &batch.present {
        None => (gather_with_grad(pg, &local_emb)?, batch.labels, Vec::new()),
        Some(present) => gather_present(pg, &local_emb, present, &batch.labels, &mut waited)?,
    };
    let mut comm_seconds = t_gather.elapsed().as_secs_f64() - waited;
    let labels = Tensor::from_slice(&labels).to_device(device);
    let terms = loss.forward(&global_emb, &labels);
    optimizer.zero_grad();
    let objective = match &scaler {
        Some(s) => s.scale_loss(&terms.total),
        None => terms.total.shallow_clone(),
    };
    with_sync_bn(pg, || objective.backward())?;
    let t_reduce = Instant::now();
    reduce_gradients(pg, reduce_params, bucket_bytes)?;
    comm_seconds += t_reduce.elapsed().as_secs_f64();
    // Before any host read of this step's results (the scaler's verdict, the losses).
    pg.finish_pending()?;
    // Unscaled after the all-reduce: every rank holds the same gradients here, so every rank
    // reaches the same verdict without a collective of its own (train::grad_scaler).
    let step = match scaler {
        Some(s) => {
            let grads: Vec<Tensor> = reduce_params.iter().map(|(p, _)| p.grad()).filter(Tensor::defined).collect();
            s.unscale_and_update(&grads)?
        }
        None => true,
    };
    if step {
        optimizer.step();
    }
    let losses = [&terms.total, &terms.ds, &terms.ce].map(|t| t.double_value(&[]));
    Ok(StepStats { losses, comm_seconds, dropped, skipped: !step })
}

/// The global batch's embeddings and labels without the skipped images, and the skipped
/// positions. Each rank pads its embeddings back to its b positions with one extra
/// column that is 1 where an image is present, so the one all-gather also tells every
/// rank which positions every other rank skipped: all ranks drop the same rows, and the
/// result is the one a single rank would get with the whole batch. `waited`: seconds spent
/// waiting for the device before reading the flags.
fn gather_present(pg: &mut dyn Collectives, local: &Tensor, present: &[bool], labels: &[i64], waited: &mut f64) -> Result<(Tensor, Vec<i64>, Vec<usize>)> {
    let (kind, device, d) = (local.kind(), local.device(), local.size()[1]);
    let rows: Vec<i64> = (0..present.len() as i64).filter(|&i| present[i as usize]).collect();
    let flagged = Tensor::cat(&[local.shallow_clone(), Tensor::ones([local.size()[0], 1], (kind, device))], 1);
    let padded = Tensor::zeros([present.len() as i64, d + 1], (kind, device)).index_copy(0, &Tensor::from_slice(&rows).to_device(device), &flagged);
    let global = gather_with_grad(pg, &padded)?;
    let t_wait = Instant::now();
    pg.finish_pending()?;
    *waited += t_wait.elapsed().as_secs_f64();
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
