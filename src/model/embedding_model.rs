//! Backbone + embedding head: what is trained and what is kept for retrieval.
use tch::nn::{self, VarStore};
use tch::Tensor;

use super::backbone::BackboneNet;
use super::head::{gap_plus_gmp, EmbeddingHead};
use super::memory_format::{to_channels_last, variables_to_channels_last};
use crate::config::ModelConfig;

/// Variable-name prefix of the backbone trunk (the warm-up freezes it).
pub const TRUNK_PREFIX: &str = "backbone.";
/// Variable-name prefix of the embedding head.
pub const HEAD_PREFIX: &str = "head.";

/// The embedding network; its variables live under `backbone.` and `head.`.
#[derive(Debug)]
pub struct EmbeddingModel {
    backbone: BackboneNet,
    head: EmbeddingHead,
    /// Input images are re-laid channels-last before the backbone (`model.channels_last`).
    channels_last: bool,
}

impl EmbeddingModel {
    /// Builds the model's variables under `root` (the VarStore's root).
    pub fn new(root: &nn::Path, cfg: &ModelConfig) -> Self {
        let backbone = BackboneNet::new(&(root / "backbone"), cfg);
        let head = EmbeddingHead::new(&(root / "head"), backbone.feature_dim(), cfg.embedding_dim);
        EmbeddingModel { backbone, head, channels_last: false }
    }

    /// From now on keeps the backbone's convolution weights (the 4-D variables under
    /// `backbone.` in `vs`, the VarStore the model was built in) and its input images in the
    /// channels-last memory format; the values computed are the same up to rounding. Call it
    /// before an optimiser takes the parameters' state. Returns the weights converted.
    pub fn use_channels_last(&mut self, vs: &VarStore) -> usize {
        self.channels_last = true;
        variables_to_channels_last(vs, TRUNK_PREFIX)
    }

    /// The backbone's feature map [N, F, h, w] of normalised images [N, 3, H, W].
    pub fn features(&self, images: &Tensor, train: bool) -> Tensor {
        if self.channels_last {
            self.backbone.forward(&to_channels_last(images), train)
        } else {
            self.backbone.forward(images, train)
        }
    }

    /// Embeddings [N, D] of normalised images [N, 3, H, W].
    pub fn forward(&self, images: &Tensor, train: bool) -> Tensor {
        self.head.forward(&gap_plus_gmp(&self.features(images, train)))
    }
}
