//! The embedding head: GAP + GMP pooled features → Linear → LayerNorm without affine.
use tch::nn::{self, Init};
use tch::Tensor;

/// LayerNorm epsilon (PyTorch's default).
const LAYER_NORM_EPS: f64 = 1e-5;

/// Linear [D, F] with Kaiming-normal fan-out weights and zero bias, then a parameter-free
/// LayerNorm (design §2).
#[derive(Debug)]
pub struct EmbeddingHead {
    /// Weight [D, F].
    pub weight: Tensor,
    /// Bias [D].
    pub bias: Tensor,
    dim: i64,
}

impl EmbeddingHead {
    /// Creates `weight` and `bias` under `path` mapping `features` inputs to `dim`.
    pub fn new(path: &nn::Path, features: i64, dim: i64) -> Self {
        let init = Init::Kaiming {
            dist: nn::init::NormalOrUniform::Normal,
            fan: nn::init::FanInOut::FanOut,
            non_linearity: nn::init::NonLinearity::ReLU,
        };
        EmbeddingHead {
            weight: path.var("weight", &[dim, features], init),
            bias: path.var("bias", &[dim], Init::Const(0.0)),
            dim,
        }
    }

    /// Embeddings [N, D] of pooled features [N, F].
    pub fn forward(&self, pooled: &Tensor) -> Tensor {
        pooled
            .linear(&self.weight, Some(&self.bias))
            .layer_norm([self.dim], None::<&Tensor>, None::<&Tensor>, LAYER_NORM_EPS, false)
    }
}

/// Global average pool + global max pool of a feature map [N, F, H, W] → [N, F], summed
/// as the authors' backbones do.
pub fn gap_plus_gmp(map: &Tensor) -> Tensor {
    let avg = map.mean_dim([2i64, 3].as_slice(), false, None::<tch::Kind>);
    let max = map.amax([2i64, 3].as_slice(), false);
    avg + max
}
