//! BN-Inception (Ioffe & Szegedy 2015) in the layout of Cadene's pretrained-models port
//! (`bninception`), with its state-dict names (`conv1_7x7_s2`, `conv1_7x7_s2_bn`,
//! `inception_3a_1x1`, …) so its ImageNet weights import by name. No `last_linear`: the
//! backbone ends at `inception_5b` and the embedding head pools its feature map.
//!
//! Facts of that port kept here: every convolution has a bias; BatchNorm uses eps 1e-5
//! and momentum 0.9 (PyTorch's convention, so batch statistics dominate the running ones
//! when BN is trained); every BN is followed by a ReLU (the port's in-place ReLUs rectify
//! the tensors that are then concatenated and pooled); pools use ceil_mode, and the
//! average pools count the zero padding.
use tch::nn::{self, Init};
use tch::Tensor;

use super::batch_norm::{BackboneBatchNorm, BnSpec};
use crate::config::BatchNormMode;

/// Channels of the `inception_5b` feature map.
pub const BN_INCEPTION_FEATURES: i64 = 1024;

/// BatchNorm constants of the pretrained-models port.
const BN_SPEC: BnSpec = BnSpec { eps: 1e-5, momentum: 0.9, weight_init: Init::Const(1.0) };

/// Convolution (with bias) → BatchNorm → ReLU, named `{name}` and `{name}_bn`.
#[derive(Debug)]
struct ConvBnRelu {
    conv: nn::Conv2D,
    bn: BackboneBatchNorm,
}

impl ConvBnRelu {
    fn new(root: &nn::Path, name: &str, c_in: i64, c_out: i64, kernel: i64, stride: i64, mode: BatchNormMode) -> Self {
        let cfg = nn::ConvConfig { stride, padding: kernel / 2, ..Default::default() };
        ConvBnRelu {
            conv: nn::conv2d(root / name, c_in, c_out, kernel, cfg),
            bn: BackboneBatchNorm::new(&(root / format!("{name}_bn")), c_out, mode, BN_SPEC),
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        self.bn.forward(&x.apply(&self.conv), train).relu()
    }
}

/// The pooling branch of an inception module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pool {
    /// 3×3 average, stride 1, padding 1 (padding counted), then a 1×1 projection.
    Avg,
    /// 3×3 max, stride 1, padding 1, then a 1×1 projection (only `5b`).
    Max,
    /// 3×3 max, stride 2, no projection: the module halves the resolution (`3c`, `4e`).
    MaxReduce,
}

/// Channel plan of one inception module, in the port's order.
struct ModuleSpec {
    id: &'static str,
    c_in: i64,
    /// `1x1` branch (absent in the reducing modules).
    c1x1: Option<i64>,
    /// `3x3_reduce` → `3x3`.
    c3x3: (i64, i64),
    /// `double_3x3_reduce` → `double_3x3_1` → `double_3x3_2`.
    double: (i64, i64, i64),
    pool: Pool,
    /// `pool_proj` (absent in the reducing modules).
    proj: Option<i64>,
}

const fn keep(id: &'static str, c_in: i64, c1x1: i64, c3x3: (i64, i64), double: (i64, i64, i64), pool: Pool, proj: i64) -> ModuleSpec {
    ModuleSpec { id, c_in, c1x1: Some(c1x1), c3x3, double, pool, proj: Some(proj) }
}

const fn reduce(id: &'static str, c_in: i64, c3x3: (i64, i64), double: (i64, i64, i64)) -> ModuleSpec {
    ModuleSpec { id, c_in, c1x1: None, c3x3, double, pool: Pool::MaxReduce, proj: None }
}

/// The ten modules of BN-Inception (the port's channel counts).
const MODULES: [ModuleSpec; 10] = [
    keep("3a", 192, 64, (64, 64), (64, 96, 96), Pool::Avg, 32),
    keep("3b", 256, 64, (64, 96), (64, 96, 96), Pool::Avg, 64),
    reduce("3c", 320, (128, 160), (64, 96, 96)),
    keep("4a", 576, 224, (64, 96), (96, 128, 128), Pool::Avg, 128),
    keep("4b", 576, 192, (96, 128), (96, 128, 128), Pool::Avg, 128),
    keep("4c", 576, 160, (128, 160), (128, 160, 160), Pool::Avg, 128),
    keep("4d", 608, 96, (128, 192), (160, 192, 192), Pool::Avg, 128),
    reduce("4e", 608, (128, 192), (192, 256, 256)),
    keep("5a", 1056, 352, (192, 320), (160, 224, 224), Pool::Avg, 128),
    keep("5b", 1024, 352, (192, 320), (192, 224, 224), Pool::Max, 128),
];

/// One inception module: parallel branches concatenated along channels.
#[derive(Debug)]
struct InceptionModule {
    branch_1x1: Option<ConvBnRelu>,
    branch_3x3: [ConvBnRelu; 2],
    branch_double: [ConvBnRelu; 3],
    pool: Pool,
    pool_proj: Option<ConvBnRelu>,
}

impl InceptionModule {
    fn new(root: &nn::Path, s: &ModuleSpec, mode: BatchNormMode) -> Self {
        let unit = |suffix: &str, c_in: i64, c_out: i64, kernel: i64, stride: i64| {
            ConvBnRelu::new(root, &format!("inception_{}_{suffix}", s.id), c_in, c_out, kernel, stride, mode)
        };
        let stride = if s.pool == Pool::MaxReduce { 2 } else { 1 };
        let (r3, c3) = s.c3x3;
        let (rd, d1, d2) = s.double;
        InceptionModule {
            branch_1x1: s.c1x1.map(|c| unit("1x1", s.c_in, c, 1, 1)),
            branch_3x3: [unit("3x3_reduce", s.c_in, r3, 1, 1), unit("3x3", r3, c3, 3, stride)],
            branch_double: [
                unit("double_3x3_reduce", s.c_in, rd, 1, 1),
                unit("double_3x3_1", rd, d1, 3, 1),
                unit("double_3x3_2", d1, d2, 3, stride),
            ],
            pool: s.pool,
            pool_proj: s.proj.map(|c| unit("pool_proj", s.c_in, c, 1, 1)),
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let chain = |units: &[ConvBnRelu]| units.iter().fold(x.shallow_clone(), |h, u| u.forward(&h, train));
        let pooled = match self.pool {
            Pool::Avg => x.avg_pool2d([3, 3], [1, 1], [1, 1], true, true, None),
            Pool::Max => x.max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], true),
            Pool::MaxReduce => x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], true),
        };
        let mut parts = Vec::with_capacity(4);
        if let Some(u) = &self.branch_1x1 {
            parts.push(u.forward(x, train));
        }
        parts.push(chain(&self.branch_3x3));
        parts.push(chain(&self.branch_double));
        parts.push(match &self.pool_proj {
            Some(u) => u.forward(&pooled, train),
            None => pooled,
        });
        Tensor::cat(&parts, 1)
    }
}

/// BN-Inception up to `inception_5b`; variables named as the pretrained-models state dict
/// under the path it is built in.
#[derive(Debug)]
pub struct BnInception {
    stem: [ConvBnRelu; 3],
    modules: Vec<InceptionModule>,
}

impl BnInception {
    /// Builds the network under `path` with BatchNorm behaving per `bn_mode`.
    pub fn new(path: &nn::Path, bn_mode: BatchNormMode) -> Self {
        let stem = [
            ConvBnRelu::new(path, "conv1_7x7_s2", 3, 64, 7, 2, bn_mode),
            ConvBnRelu::new(path, "conv2_3x3_reduce", 64, 64, 1, 1, bn_mode),
            ConvBnRelu::new(path, "conv2_3x3", 64, 192, 3, 1, bn_mode),
        ];
        let modules = MODULES.iter().map(|s| InceptionModule::new(path, s, bn_mode)).collect();
        BnInception { stem, modules }
    }

    /// Width of the pooled feature vector.
    pub fn feature_dim(&self) -> i64 {
        BN_INCEPTION_FEATURES
    }

    /// Feature map [N, 1024, 7, 7] for 224×224 images (BGR, 0–255 minus the port's means
    /// when the pretrained weights are used; docs/backbones.md).
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let pool = |h: Tensor| h.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], true);
        let [conv1, conv2_reduce, conv2] = &self.stem;
        let h = pool(conv1.forward(x, train));
        let h = pool(conv2.forward(&conv2_reduce.forward(&h, train), train));
        self.modules.iter().fold(h, |h, m| m.forward(&h, train))
    }
}
