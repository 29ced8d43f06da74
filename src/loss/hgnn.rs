//! The two-layer hypergraph neural network that classifies every node of the batch's
//! hypergraph into all C training classes.
use tch::nn;
use tch::Tensor;

use super::hypergraph::propagate;

/// Slope of the LeakyReLU between the layers (authors' value).
pub const LEAKY_SLOPE: f64 = 0.1;
/// BatchNorm1d epsilon (PyTorch's default).
pub const BN_EPS: f64 = 1e-5;
/// BatchNorm1d running-statistics momentum (PyTorch's default).
pub const BN_MOMENTUM: f64 = 0.1;

/// Weights of the HGNN in PyTorch Linear layout (out = in·Wᵀ + b).
#[derive(Debug)]
pub struct Hgnn {
    /// Layer 1 weight [H, D].
    pub w1: Tensor,
    /// Layer 1 bias [H].
    pub b1: Tensor,
    /// BatchNorm1d scale [H].
    pub bn_weight: Tensor,
    /// BatchNorm1d shift [H].
    pub bn_bias: Tensor,
    /// BatchNorm1d running mean [H] (kept for completeness; training uses batch stats).
    pub bn_running_mean: Tensor,
    /// BatchNorm1d running variance [H].
    pub bn_running_var: Tensor,
    /// Layer 2 weight [C, H].
    pub w2: Tensor,
    /// Layer 2 bias [C].
    pub b2: Tensor,
}

impl Hgnn {
    /// Creates the HGNN under `path`. Weights and biases are U(−1/√out, 1/√out) as the
    /// authors' HGNN_conv initialises them; BatchNorm starts at weight 1, bias 0.
    pub fn new(path: &nn::Path, dim: i64, hidden: i64, classes: i64) -> Self {
        let u = |out: i64| {
            let s = 1.0 / (out as f64).sqrt();
            nn::Init::Uniform { lo: -s, up: s }
        };
        let bn = path / "bn";
        Hgnn {
            w1: path.var("w1", &[hidden, dim], u(hidden)),
            b1: path.var("b1", &[hidden], u(hidden)),
            bn_weight: bn.var("weight", &[hidden], nn::Init::Const(1.0)),
            bn_bias: bn.var("bias", &[hidden], nn::Init::Const(0.0)),
            bn_running_mean: bn.zeros_no_train("running_mean", &[hidden]),
            bn_running_var: bn.ones_no_train("running_var", &[hidden]),
            w2: path.var("w2", &[classes, hidden], u(classes)),
            b2: path.var("b2", &[classes], u(classes)),
        }
    }
}

/// Borrowed HGNN weights, so the loss can run on tensors from any source.
#[derive(Clone, Copy)]
pub struct HgnnWeights<'a> {
    /// Layer 1 weight [H, D].
    pub w1: &'a Tensor,
    /// Layer 1 bias [H].
    pub b1: &'a Tensor,
    /// BatchNorm1d scale [H].
    pub bn_weight: &'a Tensor,
    /// BatchNorm1d shift [H].
    pub bn_bias: &'a Tensor,
    /// Running statistics to update, if any.
    pub bn_running: Option<(&'a Tensor, &'a Tensor)>,
    /// Layer 2 weight [C, H].
    pub w2: &'a Tensor,
    /// Layer 2 bias [C].
    pub b2: &'a Tensor,
}

impl Hgnn {
    /// Borrows the weights for [`hgnn_forward`].
    pub fn weights(&self) -> HgnnWeights<'_> {
        HgnnWeights {
            w1: &self.w1,
            b1: &self.b1,
            bn_weight: &self.bn_weight,
            bn_bias: &self.bn_bias,
            bn_running: Some((&self.bn_running_mean, &self.bn_running_var)),
            w2: &self.w2,
            b2: &self.b2,
        }
    }
}

/// Logits [N, C]: G·(x W1ᵀ + b1) → BatchNorm1d (batch statistics) → LeakyReLU(0.1) →
/// G·(h W2ᵀ + b2), with G applied through [`propagate`].
pub fn hgnn_forward(x: &Tensor, h: &Tensor, w: HgnnWeights<'_>) -> Tensor {
    let z = propagate(h, &x.linear(w.w1, Some(w.b1)));
    let (rm, rv) = match w.bn_running {
        Some((m, v)) => (Some(m), Some(v)),
        None => (None, None),
    };
    let z = z.batch_norm(Some(w.bn_weight), Some(w.bn_bias), rm, rv, true, BN_MOMENTUM, BN_EPS, false);
    let z = leaky_relu(&z, LEAKY_SLOPE);
    // G·(z W2ᵀ + 1 b2ᵀ) = (G z) W2ᵀ + (G 1) b2ᵀ: propagating the H-wide hidden layer instead
    // of the C-wide logits makes the two propagation products H/C times cheaper (C = 11,318
    // on SOP), and both products accumulate into one addmm.
    let ones = Tensor::ones([h.size()[0], 1], (h.kind(), h.device()));
    let g_ones = propagate(h, &ones);
    g_ones.matmul(&w.b2.unsqueeze(0)).addmm(&propagate(h, &z), &w.w2.tr())
}

/// max-style LeakyReLU with a chosen slope (tch's `leaky_relu` fixes it at 0.01); at
/// exactly 0 the gradient is `slope`, as in PyTorch.
pub fn leaky_relu(x: &Tensor, slope: f64) -> Tensor {
    x.where_self(&x.gt(0.0), &(x * slope))
}
