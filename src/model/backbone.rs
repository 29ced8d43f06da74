//! The configured backbone: one of the architectures, chosen by `model.backbone`.
use tch::nn;
use tch::Tensor;

use super::bn_inception::BnInception;
use super::resnet::ResNet50;
use super::small_cnn::SmallCnn;
use crate::config::{Backbone, ModelConfig};

/// A backbone network producing a feature map for the head to pool. The large networks
/// are boxed: their stems are held inline, hundreds of bytes.
#[derive(Debug)]
pub enum BackboneNet {
    /// The small CPU network (`small_cnn`).
    SmallCnn(SmallCnn),
    /// ResNet-50, torchvision layout (`resnet50`).
    Resnet50(Box<ResNet50>),
    /// BN-Inception, pretrained-models layout (`bn_inception`).
    BnInception(Box<BnInception>),
}

impl BackboneNet {
    /// Builds the configured backbone's variables under `path`.
    pub fn new(path: &nn::Path, cfg: &ModelConfig) -> Self {
        match cfg.backbone {
            Backbone::SmallCnn => BackboneNet::SmallCnn(SmallCnn::new(path, cfg.width, cfg.bn)),
            Backbone::Resnet50 => BackboneNet::Resnet50(Box::new(ResNet50::new(path, cfg.bn))),
            Backbone::BnInception => BackboneNet::BnInception(Box::new(BnInception::new(path, cfg.bn))),
        }
    }

    /// Channels of the feature map, i.e. the width of the pooled feature vector.
    pub fn feature_dim(&self) -> i64 {
        match self {
            BackboneNet::SmallCnn(n) => n.feature_dim(),
            BackboneNet::Resnet50(n) => n.feature_dim(),
            BackboneNet::BnInception(n) => n.feature_dim(),
        }
    }

    /// Feature map [N, F, h, w] of images [N, 3, H, W]; `train` selects batch statistics
    /// in BatchNorm where `model.bn` allows it.
    pub fn forward(&self, images: &Tensor, train: bool) -> Tensor {
        match self {
            BackboneNet::SmallCnn(n) => n.forward(images, train),
            BackboneNet::Resnet50(n) => n.forward(images, train),
            BackboneNet::BnInception(n) => n.forward(images, train),
        }
    }
}
