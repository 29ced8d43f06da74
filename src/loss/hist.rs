//! The HIST loss: L = L_ds + ls · CE(HGNN(x, H), y) (design §2).
use tch::{nn, Kind, Reduction, Tensor};

use super::distances::{l2_normalize, mahalanobis_sq};
use super::hgnn::{hgnn_forward, Hgnn, HgnnWeights};
use super::hypergraph::incidence;
use super::prototypes::Prototypes;

/// Scalar hyper-parameters of the loss.
#[derive(Debug, Clone, Copy)]
pub struct HistHyper {
    /// Softmax temperature of the distribution loss.
    pub tau: f64,
    /// Hardness of soft negative membership exp(−α d).
    pub alpha: f64,
    /// Weight of the HGNN cross-entropy.
    pub ls: f64,
}

/// The loss and its two terms, each a scalar tensor.
#[derive(Debug)]
pub struct LossTerms {
    /// L_ds + ls · CE; call `backward` on this one.
    pub total: Tensor,
    /// Distribution loss L_ds.
    pub ds: Tensor,
    /// HGNN cross-entropy.
    pub ce: Tensor,
}

/// Every tensor the loss reads, borrowed.
#[derive(Clone, Copy)]
pub struct HistTensors<'a> {
    /// Class means [C, D].
    pub means: &'a Tensor,
    /// Raw class log-variances [C, D].
    pub log_vars: &'a Tensor,
    /// The HGNN.
    pub hgnn: HgnnWeights<'a>,
}

/// HIST loss of embeddings `x` [N, D] (the head's output) with int64 `labels` [N] in
/// 0..C. The distribution loss uses log-softmax, so a sample whose probability
/// underflows contributes a large finite term instead of being dropped as in the authors'
/// code. That happens in f32 once −τ·d of the true class trails the best class by more
/// than about 100 (τ = 32: a distance gap above ~3), i.e. early in training on badly
/// placed samples; keeping them keeps their gradient, which is the point of the loss.
pub fn hist_loss(x: &Tensor, labels: &Tensor, t: HistTensors<'_>, hyper: HistHyper) -> LossTerms {
    let x_hat = l2_normalize(x);
    let d = mahalanobis_sq(&x_hat, t.means, t.log_vars);

    let ds = (&d * (-hyper.tau)).cross_entropy_loss::<Tensor>(labels, None, Reduction::Mean, -100, 0.0);

    let hypergraph = incidence(&d, labels, hyper.alpha);
    let logits = hgnn_forward(x, &hypergraph.h, t.hgnn);
    let ce = logits.cross_entropy_loss::<Tensor>(labels, None, Reduction::Mean, -100, 0.0);

    let total = &ds + &ce * hyper.ls;
    LossTerms { total, ds, ce }
}

/// The HIST loss as a module owning its parameters (prototypes and HGNN) in a VarStore.
#[derive(Debug)]
pub struct HistLoss {
    /// Class distributions.
    pub prototypes: Prototypes,
    /// The HGNN classifier.
    pub hgnn: Hgnn,
    /// Hyper-parameters.
    pub hyper: HistHyper,
    classes: i64,
}

impl HistLoss {
    /// Creates prototypes under `path / "means"` etc. and the HGNN under `path / "hgnn"`.
    pub fn new(path: &nn::Path, classes: i64, dim: i64, hidden: i64, hyper: HistHyper) -> Self {
        HistLoss {
            prototypes: Prototypes::new(path, classes, dim),
            hgnn: Hgnn::new(&(path / "hgnn"), dim, hidden, classes),
            hyper,
            classes,
        }
    }

    /// Number of training classes C.
    pub fn classes(&self) -> i64 {
        self.classes
    }

    /// Loss of a (global) batch.
    pub fn forward(&self, x: &Tensor, labels: &Tensor) -> LossTerms {
        let tensors = HistTensors {
            means: &self.prototypes.means,
            log_vars: &self.prototypes.log_vars,
            hgnn: self.hgnn.weights(),
        };
        hist_loss(x, &labels.to_kind(Kind::Int64), tensors, self.hyper)
    }
}
