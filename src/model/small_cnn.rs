//! A small convolutional backbone sized for 2 CPU cores and 32–64 px images.
use tch::nn::{self, ModuleT};
use tch::Tensor;

use crate::config::BatchNormMode;

/// One conv3×3 → BatchNorm2d → ReLU unit.
#[derive(Debug)]
struct ConvBn {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
}

impl ConvBn {
    fn new(path: &nn::Path, c_in: i64, c_out: i64) -> Self {
        let conv_cfg = nn::ConvConfig { padding: 1, bias: false, ..Default::default() };
        ConvBn {
            conv: nn::conv2d(path / "conv", c_in, c_out, 3, conv_cfg),
            bn: nn::batch_norm2d(path / "bn", c_out, Default::default()),
        }
    }

    fn forward(&self, x: &Tensor, bn_train: bool) -> Tensor {
        self.bn.forward_t(&x.apply(&self.conv), bn_train).relu()
    }
}

/// Four stages of width w, w, 2w, 4w, 8w channels with 2×2 max-pooling between them.
#[derive(Debug)]
pub struct SmallCnn {
    units: Vec<(ConvBn, bool)>,
    bn_mode: BatchNormMode,
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
            .map(|(i, &(c_in, c_out, pool))| (ConvBn::new(&(path / format!("unit{i}")), c_in, c_out), pool))
            .collect();
        let net = SmallCnn { units, bn_mode, features: 8 * width };
        if bn_mode == BatchNormMode::Frozen {
            for (unit, _) in &net.units {
                for t in [&unit.bn.ws, &unit.bn.bs].into_iter().flatten() {
                    let _ = t.set_requires_grad(false);
                }
            }
        }
        net
    }

    /// Width of the pooled feature vector.
    pub fn feature_dim(&self) -> i64 {
        self.features
    }

    /// Feature map [N, 8w, H/8, W/8]. BatchNorm uses batch statistics only when
    /// `train` and the BN mode is `local`; frozen BN always uses running statistics.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let bn_train = train && self.bn_mode == BatchNormMode::Local;
        let mut h = x.shallow_clone();
        for (unit, pool) in &self.units {
            h = unit.forward(&h, bn_train);
            if *pool {
                h = h.max_pool2d_default(2);
            }
        }
        h
    }
}
