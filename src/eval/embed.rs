//! Embedding a whole split in batches with the model in evaluation mode, optionally
//! sharded over the ranks of a job.
use tch::{Device, Kind, Tensor};

use crate::data::ImageSet;
use crate::dist::gather::gather;
use crate::dist::Collectives;
use crate::error::Result;
use crate::model::EmbeddingModel;

/// Embeddings [n, D] of the images `range` of `set`, in order, computed without gradients.
fn embed_range(model: &EmbeddingModel, set: &ImageSet, range: std::ops::Range<usize>, batch: usize, kind: Kind, device: Device) -> Tensor {
    let _guard = tch::no_grad_guard();
    let batch = batch.max(1);
    let mut parts = Vec::new();
    let mut start = range.start;
    while start < range.end {
        let idx: Vec<usize> = (start..(start + batch).min(range.end)).collect();
        let images = set.batch(&idx, &[], kind, device);
        parts.push(model.forward(&images, false).to_device(Device::Cpu));
        start += batch;
    }
    if parts.is_empty() {
        // An empty shard still has the embedding width, so the gather's shapes agree.
        let probe = set.batch(&[0], &[], kind, device);
        let d = model.forward(&probe, false).size()[1];
        return Tensor::zeros([0, d], (kind, Device::Cpu));
    }
    Tensor::cat(&parts, 0)
}

/// Embeddings [N, D] of every image of `set`, in order, computed without gradients.
pub fn embed_all(model: &EmbeddingModel, set: &ImageSet, batch: usize, kind: Kind, device: Device) -> Tensor {
    embed_range(model, set, 0..set.len(), batch, kind, device)
}

/// Like [`embed_all`], but each rank embeds a contiguous shard of ⌈N/W⌉ images and the
/// shards are gathered, so every rank returns the same [N, D] as a one-rank run. The last
/// shards are padded to the common size for the gather and the padding dropped after.
pub fn embed_sharded(pg: &mut dyn Collectives, model: &EmbeddingModel, set: &ImageSet, batch: usize, kind: Kind, device: Device) -> Result<Tensor> {
    let (w, r, n) = (pg.world_size(), pg.rank(), set.len());
    if w == 1 {
        return Ok(embed_all(model, set, batch, kind, device));
    }
    let shard = n.div_ceil(w);
    let start = (r * shard).min(n);
    let end = ((r + 1) * shard).min(n);
    let local = embed_range(model, set, start..end, batch, kind, device);
    let pad = shard as i64 - local.size()[0];
    let local = if pad > 0 {
        let zeros = Tensor::zeros([pad, local.size()[1]], (kind, Device::Cpu));
        Tensor::cat(&[local, zeros], 0)
    } else {
        local
    };
    let gathered = gather(pg, &local.to_device(device))?.to_device(Device::Cpu);
    let parts: Vec<Tensor> = (0..w)
        .map(|q| {
            let len = (((q + 1) * shard).min(n)).saturating_sub(q * shard) as i64;
            gathered.narrow(0, (q * shard) as i64, len)
        })
        .collect();
    Ok(Tensor::cat(&parts, 0))
}
