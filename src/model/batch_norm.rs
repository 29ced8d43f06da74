//! The one BatchNorm2d type every backbone uses, so that how BN behaves in training
//! (`model.bn`) is decided in a single place.
use tch::nn::{self, Init, ModuleT};
use tch::Tensor;

use crate::config::BatchNormMode;
use crate::dist::sync_bn::batch_norm_train;

/// Numerical constants and initial scale of one BatchNorm2d layer.
#[derive(Debug, Clone, Copy)]
pub struct BnSpec {
    /// Added to the variance before the square root.
    pub eps: f64,
    /// PyTorch's convention: running = (1 − momentum)·running + momentum·batch.
    pub momentum: f64,
    /// Initial value of the affine scale (`weight`).
    pub weight_init: Init,
}

impl BnSpec {
    /// torchvision's BatchNorm2d: eps 1e-5, momentum 0.1, weight initialised to 1.
    pub const TORCHVISION: BnSpec = BnSpec { eps: 1e-5, momentum: 0.1, weight_init: Init::Const(1.0) };
}

/// A BatchNorm2d whose variables (`weight`, `bias`, `running_mean`, `running_var`) live
/// under one path and whose training behaviour follows the configured [`BatchNormMode`].
#[derive(Debug)]
pub struct BackboneBatchNorm {
    inner: nn::BatchNorm,
    mode: BatchNormMode,
    spec: BnSpec,
}

impl BackboneBatchNorm {
    /// Creates the layer for `channels` channels under `path`. In `frozen` mode the affine
    /// parameters are excluded from gradients, hence from the optimiser and gradient sync.
    pub fn new(path: &nn::Path, channels: i64, mode: BatchNormMode, spec: BnSpec) -> Self {
        let cfg = nn::BatchNormConfig { eps: spec.eps, momentum: spec.momentum, ws_init: spec.weight_init, ..Default::default() };
        let inner = nn::batch_norm2d(path, channels, cfg);
        if mode == BatchNormMode::Frozen {
            for t in [&inner.ws, &inner.bs].into_iter().flatten() {
                let _ = t.set_requires_grad(false);
            }
        }
        BackboneBatchNorm { inner, mode, spec }
    }

    /// Normalises `x` [N, C, H, W]. Batch statistics (and running-statistics updates) only
    /// when `train` and the mode is `local` or `sync` (the latter over every rank inside
    /// `dist::sync_bn::with_sync_bn`); frozen BN always uses the running statistics.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        match (self.mode, train) {
            (BatchNormMode::Sync, true) => {
                let bn = &self.inner;
                let (ws, bs) = (bn.ws.as_ref(), bn.bs.as_ref());
                batch_norm_train(x, ws, bs, &bn.running_mean, &bn.running_var, self.spec.momentum, self.spec.eps)
            }
            (BatchNormMode::Local, true) => self.inner.forward_t(x, true),
            _ => self.inner.forward_t(x, false),
        }
    }
}
