//! Optimisers (Adam, AdamW, SGD) matching torch.optim, with exportable state.
//!
//! tch's optimisers wrap libtorch's C++ ones, whose state cannot be read out, so a run could
//! not be resumed exactly; these keep their state in tensors we own. The updates follow
//! torch 2.11's single-tensor implementations (`_single_tensor_adam`, `_single_tensor_sgd`:
//! what torch.optim runs on CPU, where `foreach` defaults to off) op for op, so results agree
//! with torch.optim to the last bit on CPU.
//!
//! Layout: this file holds the types and the step loop; `update` the update rules (and why
//! they are written as they are), `state` export and restore.
use std::fmt;

use tch::{COptimizer, Tensor};

mod state;
mod update;

use update::{adam_update, sgd_update};

/// One group of parameters sharing a learning rate and weight decay.
pub struct ParamGroup {
    /// Name of the group (for logs and schedules), e.g. "backbone".
    pub name: String,
    /// Named parameters: leaf tensors that require grad, sharing storage with the model.
    /// Names must be unique across all groups; they key the exported state.
    pub params: Vec<(String, Tensor)>,
    /// Learning rate.
    pub lr: f64,
    /// Weight decay: L2 added to the gradient (Adam, SGD) or decoupled (AdamW).
    pub weight_decay: f64,
}

impl fmt::Debug for ParamGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Tensor's Debug prints values; names and shapes are what is useful here.
        let params: Vec<(&str, Vec<i64>)> = self
            .params
            .iter()
            .map(|(name, t)| (name.as_str(), t.size()))
            .collect();
        f.debug_struct("ParamGroup")
            .field("name", &self.name)
            .field("lr", &self.lr)
            .field("weight_decay", &self.weight_decay)
            .field("params", &params)
            .finish()
    }
}

/// Which update rule to run, with its rule-specific hyper-parameters (torch's defaults for
/// everything not listed: amsgrad, maximize and nesterov off, dampening 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptimizerKind {
    /// torch.optim.Adam: weight decay is added to the gradient (L2).
    Adam {
        /// Decay rates of the first and second moment averages.
        betas: (f64, f64),
        /// Added to the denominator.
        eps: f64,
    },
    /// torch.optim.AdamW: weight decay shrinks the parameter directly (decoupled).
    AdamW {
        /// Decay rates of the first and second moment averages.
        betas: (f64, f64),
        /// Added to the denominator.
        eps: f64,
    },
    /// torch.optim.SGD with heavy-ball momentum (0 for plain SGD); weight decay is L2.
    Sgd {
        /// Momentum factor.
        momentum: f64,
    },
}

/// Per-parameter state, created at the parameter's first step with a gradient.
enum ParamState {
    /// Adam and AdamW. `step` is a float as in torch, where it is read back as a Python float.
    Adam {
        step: f64,
        exp_avg: Tensor,
        exp_avg_sq: Tensor,
    },
    /// SGD with momentum.
    Sgd { momentum_buffer: Tensor },
}

/// An optimiser over parameter groups, with state that can be exported and restored.
pub struct Optimizer {
    kind: OptimizerKind,
    groups: Vec<ParamGroup>,
    /// `state[g][i]` belongs to `groups[g].params[i]`.
    state: Vec<Vec<Option<ParamState>>>,
    /// libtorch's own optimiser, holding the same parameters, is used only to reset their
    /// gradients to undefined: tch exposes no other way to do that.
    grad_resetter: COptimizer,
}

impl fmt::Debug for Optimizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Optimizer")
            .field("kind", &self.kind)
            .field("groups", &self.groups)
            .finish()
    }
}

impl Optimizer {
    /// An optimiser with empty state over `groups`.
    ///
    /// # Panics
    /// If libtorch cannot create the helper that resets gradients (it never should).
    pub fn new(kind: OptimizerKind, groups: Vec<ParamGroup>) -> Self {
        // lr 0 and no extras: this optimiser never steps, it only clears gradients.
        let mut grad_resetter = COptimizer::sgd(0.0, 0.0, 0.0, 0.0, false)
            .expect("libtorch refused an SGD optimiser with default options");
        for (_, param) in groups.iter().flat_map(|g| g.params.iter()) {
            grad_resetter
                .add_parameters(param, 0)
                .expect("libtorch refused to register a parameter tensor");
        }
        let state = groups
            .iter()
            .map(|g| g.params.iter().map(|_| None).collect())
            .collect();
        Optimizer {
            kind,
            groups,
            state,
            grad_resetter,
        }
    }

    /// The update rule.
    pub fn kind(&self) -> OptimizerKind {
        self.kind
    }

    /// The parameter groups, with their current learning rates.
    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// Sets the learning rate of group `group_index` (what a scheduler does between steps).
    ///
    /// # Panics
    /// If `group_index` is out of range.
    pub fn set_lr(&mut self, group_index: usize, lr: f64) {
        let count = self.groups.len();
        match self.groups.get_mut(group_index) {
            Some(group) => group.lr = lr,
            None => panic!("set_lr: group {group_index} out of range ({count} groups)"),
        }
    }

    /// Drops every parameter's gradient (torch's `zero_grad(set_to_none=True)`), so that a
    /// parameter that gets no gradient before the next `step` is skipped by it.
    ///
    /// # Panics
    /// If libtorch fails to reset a gradient (it never should).
    pub fn zero_grad(&mut self) {
        self.grad_resetter
            .zero_grad()
            .expect("libtorch failed to reset gradients");
    }

    /// Applies one update to every parameter that has a gradient, under no_grad. A parameter
    /// whose gradient is undefined (frozen, or unused by the loss) is left alone entirely:
    /// no state is created or changed and its step count does not advance, as in torch.
    ///
    /// # Panics
    /// If libtorch rejects an update, e.g. a gradient on another device than its parameter
    /// (autograd never produces one).
    pub fn step(&mut self) {
        let _no_grad = tch::no_grad_guard();
        let kind = self.kind;
        for (group, states) in self.groups.iter_mut().zip(self.state.iter_mut()) {
            let (lr, wd) = (group.lr, group.weight_decay);
            for ((_, param), slot) in group.params.iter_mut().zip(states.iter_mut()) {
                let grad = param.grad();
                if !grad.defined() {
                    continue;
                }
                match kind {
                    OptimizerKind::Adam { betas, eps } => {
                        adam_update(param, &grad, slot, lr, wd, betas, eps, false)
                    }
                    OptimizerKind::AdamW { betas, eps } => {
                        adam_update(param, &grad, slot, lr, wd, betas, eps, true)
                    }
                    OptimizerKind::Sgd { momentum } => {
                        sgd_update(param, &grad, slot, lr, wd, momentum)
                    }
                }
            }
        }
    }
}
