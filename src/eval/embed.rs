//! Embedding a whole split in batches with the model in evaluation mode.
use tch::{Device, Kind, Tensor};

use crate::data::ImageSet;
use crate::model::EmbeddingModel;

/// Embeddings [N, D] of every image of `set`, in order, computed without gradients.
pub fn embed_all(model: &EmbeddingModel, set: &ImageSet, batch: usize, kind: Kind, device: Device) -> Tensor {
    let _guard = tch::no_grad_guard();
    let n = set.len();
    let batch = batch.max(1);
    let mut parts = Vec::with_capacity(n.div_ceil(batch));
    for start in (0..n).step_by(batch) {
        let idx: Vec<usize> = (start..(start + batch).min(n)).collect();
        let images = set.batch(&idx, &[], kind, device);
        parts.push(model.forward(&images, false).to_device(Device::Cpu));
    }
    Tensor::cat(&parts, 0)
}
