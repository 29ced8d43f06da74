//! ResNet-50 in torchvision's layout (v1.5: the stride sits on the 3×3 convolution) with
//! torchvision's variable names, so ImageNet weights import by name. No `fc`: the
//! backbone ends at `layer4` and the embedding head pools its feature map.
use tch::nn::{self, Init};
use tch::Tensor;

use super::batch_norm::{BackboneBatchNorm, BnSpec};
use crate::config::BatchNormMode;

/// Bottleneck blocks per stage of ResNet-50.
const BLOCKS: [usize; 4] = [3, 4, 6, 3];
/// Output channels of a bottleneck are this multiple of its inner width.
const EXPANSION: i64 = 4;
/// Channels of the `layer4` feature map.
pub const RESNET50_FEATURES: i64 = 2048;

/// Bias-free convolution with torchvision's initialisation (Kaiming normal, fan-out).
fn conv(path: nn::Path, c_in: i64, c_out: i64, kernel: i64, stride: i64, padding: i64) -> nn::Conv2D {
    let ws_init = Init::Kaiming {
        dist: nn::init::NormalOrUniform::Normal,
        fan: nn::init::FanInOut::FanOut,
        non_linearity: nn::init::NonLinearity::ReLU,
    };
    let cfg = nn::ConvConfig { stride, padding, bias: false, ws_init, ..Default::default() };
    nn::conv2d(path, c_in, c_out, kernel, cfg)
}

fn bn(path: nn::Path, channels: i64, mode: BatchNormMode) -> BackboneBatchNorm {
    BackboneBatchNorm::new(&path, channels, mode, BnSpec::TORCHVISION)
}

/// 1×1 reduce → 3×3 (strided) → 1×1 expand, plus the shortcut.
#[derive(Debug)]
struct Bottleneck {
    conv1: nn::Conv2D,
    bn1: BackboneBatchNorm,
    conv2: nn::Conv2D,
    bn2: BackboneBatchNorm,
    conv3: nn::Conv2D,
    bn3: BackboneBatchNorm,
    /// `downsample.0` (1×1 conv) and `downsample.1` (BN) where the shape changes.
    downsample: Option<(nn::Conv2D, BackboneBatchNorm)>,
}

impl Bottleneck {
    fn new(path: &nn::Path, c_in: i64, width: i64, stride: i64, mode: BatchNormMode) -> Self {
        let c_out = width * EXPANSION;
        let downsample = (stride != 1 || c_in != c_out).then(|| {
            let ds = path / "downsample";
            (conv(&ds / "0", c_in, c_out, 1, stride, 0), bn(&ds / "1", c_out, mode))
        });
        Bottleneck {
            conv1: conv(path / "conv1", c_in, width, 1, 1, 0),
            bn1: bn(path / "bn1", width, mode),
            conv2: conv(path / "conv2", width, width, 3, stride, 1),
            bn2: bn(path / "bn2", width, mode),
            conv3: conv(path / "conv3", width, c_out, 1, 1, 0),
            bn3: bn(path / "bn3", c_out, mode),
            downsample,
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let h = self.bn1.forward(&x.apply(&self.conv1), train).relu();
        let h = self.bn2.forward(&h.apply(&self.conv2), train).relu();
        let h = self.bn3.forward(&h.apply(&self.conv3), train);
        let shortcut = match &self.downsample {
            Some((c, b)) => b.forward(&x.apply(c), train),
            None => x.shallow_clone(),
        };
        (h + shortcut).relu()
    }
}

/// ResNet-50 up to `layer4`; variables `conv1.*`, `bn1.*`, `layer{1..4}.{i}.*` under the
/// path it is built in.
#[derive(Debug)]
pub struct ResNet50 {
    conv1: nn::Conv2D,
    bn1: BackboneBatchNorm,
    stages: Vec<Vec<Bottleneck>>,
}

impl ResNet50 {
    /// Builds the network under `path` with BatchNorm behaving per `bn_mode`.
    pub fn new(path: &nn::Path, bn_mode: BatchNormMode) -> Self {
        let mut c_in = 64;
        let stages = BLOCKS
            .iter()
            .enumerate()
            .map(|(s, &blocks)| {
                let layer = path / format!("layer{}", s + 1);
                let width = 64 << s;
                (0..blocks)
                    .map(|b| {
                        let stride = if s > 0 && b == 0 { 2 } else { 1 };
                        let block = Bottleneck::new(&(&layer / b), c_in, width, stride, bn_mode);
                        c_in = width * EXPANSION;
                        block
                    })
                    .collect()
            })
            .collect();
        ResNet50 { conv1: conv(path / "conv1", 3, 64, 7, 2, 3), bn1: bn(path / "bn1", 64, bn_mode), stages }
    }

    /// Width of the pooled feature vector.
    pub fn feature_dim(&self) -> i64 {
        RESNET50_FEATURES
    }

    /// Feature map [N, 2048, ⌈H/32⌉, ⌈W/32⌉] of images [N, 3, H, W].
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let mut h = self.bn1.forward(&x.apply(&self.conv1), train).relu();
        h = h.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        for stage in &self.stages {
            for block in stage {
                h = block.forward(&h, train);
            }
        }
        h
    }
}
