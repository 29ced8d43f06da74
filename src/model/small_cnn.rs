//! A small convolutional backbone sized for 2 CPU cores and 32–64 px images.
use tch::nn::{self, Init};
use tch::Tensor;

use super::batch_norm::{BackboneBatchNorm, BnSpec};
use crate::config::BatchNormMode;

/// tch's BatchNorm defaults (weight drawn from U(0, 1)), which this network has always used.
const BN_SPEC: BnSpec = BnSpec { eps: 1e-5, momentum: 0.1, weight_init: Init::Uniform { lo: 0.0, up: 1.0 } };

/// One conv3×3 → BatchNorm2d → ReLU unit.
#[derive(Debug)]
struct ConvBn {
    conv: nn::Conv2D,
    bn: BackboneBatchNorm,
}

impl ConvBn {
    fn new(path: &nn::Path, c_in: i64, c_out: i64, bn_mode: BatchNormMode) -> Self {
        let conv_cfg = nn::ConvConfig { padding: 1, bias: false, ..Default::default() };
        ConvBn {
            conv: nn::conv2d(path / "conv", c_in, c_out, 3, conv_cfg),
            bn: BackboneBatchNorm::new(&(path / "bn"), c_out, bn_mode, BN_SPEC),
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        self.bn.forward(&x.apply(&self.conv), train).relu()
    }
}

/// Four stages of width w, w, 2w, 4w, 8w channels with 2×2 max-pooling between them.
#[derive(Debug)]
pub struct SmallCnn {
    units: Vec<(ConvBn, bool)>,
    features: i64,
}

impl SmallCnn {
    /// Builds the network under `path` with first-stage width `width`.
    pub fn new(path: &nn::Path, width: i64, bn_mode: BatchNormMode) -> Self {
        // (in, out, max-pool after)
        let plan = [
            (3, width, false),
            (width, width, true),
            (width, 2 * width, false),
            (2 * width, 2 * width, true),
            (2 * width, 4 * width, true),
            (4 * width, 8 * width, false),
        ];
        let units = plan
            .iter()
            .enumerate()
            .map(|(i, &(c_in, c_out, pool))| (ConvBn::new(&(path / format!("unit{i}")), c_in, c_out, bn_mode), pool))
            .collect();
        SmallCnn { units, features: 8 * width }
    }

    /// Width of the pooled feature vector.
    pub fn feature_dim(&self) -> i64 {
        self.features
    }

    /// Feature map [N, 8w, H/8, W/8]. BatchNorm uses batch statistics only when
    /// `train` and the BN mode is `local`; frozen BN always uses running statistics.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let mut h = x.shallow_clone();
        for (unit, pool) in &self.units {
            h = unit.forward(&h, train);
            if *pool {
                h = h.max_pool2d_default(2);
            }
        }
        h
    }
}
