//! Backbone + embedding head: what is trained and what is kept for retrieval.
use tch::nn;
use tch::Tensor;

use super::backbone::BackboneNet;
use super::head::{gap_plus_gmp, EmbeddingHead};
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
}

impl EmbeddingModel {
    /// Builds the model's variables under `root` (the VarStore's root).
    pub fn new(root: &nn::Path, cfg: &ModelConfig) -> Self {
        let backbone = BackboneNet::new(&(root / "backbone"), cfg);
        let head = EmbeddingHead::new(&(root / "head"), backbone.feature_dim(), cfg.embedding_dim);
        EmbeddingModel { backbone, head }
    }

    /// The backbone's feature map [N, F, h, w] of normalised images [N, 3, H, W].
    pub fn features(&self, images: &Tensor, train: bool) -> Tensor {
        self.backbone.forward(images, train)
    }

    /// Embeddings [N, D] of normalised images [N, 3, H, W].
    pub fn forward(&self, images: &Tensor, train: bool) -> Tensor {
        self.head.forward(&gap_plus_gmp(&self.features(images, train)))
    }
}
