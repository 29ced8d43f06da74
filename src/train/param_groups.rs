//! The authors' four parameter groups and their learning rates (design §2).
use tch::nn::VarStore;
use tch::Tensor;

use super::optim::ParamGroup;
use crate::config::OptimConfig;
use crate::model::embedding_model::{HEAD_PREFIX, TRUNK_PREFIX};

/// Group index of the backbone trunk (frozen during warm-up).
pub const TRUNK: usize = 0;

/// Names of the groups, in index order; also the `train/lr/<group>` tag suffixes.
pub const GROUP_NAMES: [&str; 4] = ["trunk", "embedding", "prototypes", "hgnn"];

/// Variable-name prefix of the prototypes (means and log-variances).
pub const PROTOTYPE_PREFIXES: [&str; 2] = ["loss.means", "loss.log_vars"];
/// Variable-name prefix of the HGNN.
pub const HGNN_PREFIX: &str = "loss.hgnn.";

/// Base learning rate of each group, before the schedule.
pub fn base_lrs(o: &OptimConfig) -> [f64; 4] {
    [o.lr, o.lr_embedding.unwrap_or(o.lr), o.lr_ds, o.lr * o.lr_hgnn_factor]
}

fn group_of(name: &str) -> Option<usize> {
    if name.starts_with(TRUNK_PREFIX) {
        Some(0)
    } else if name.starts_with(HEAD_PREFIX) {
        Some(1)
    } else if PROTOTYPE_PREFIXES.contains(&name) {
        Some(2)
    } else if name.starts_with(HGNN_PREFIX) {
        Some(3)
    } else {
        None
    }
}

/// Every trainable variable of `vs` (requires_grad; frozen BatchNorm and running
/// statistics are not), sorted by name within its group so the order is reproducible.
pub fn param_groups(vs: &VarStore, o: &OptimConfig) -> Vec<ParamGroup> {
    let mut members: [Vec<(String, Tensor)>; 4] = Default::default();
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, t) in vars {
        if !t.requires_grad() {
            continue;
        }
        if let Some(g) = group_of(&name) {
            members[g].push((name, t));
        }
    }
    let lrs = base_lrs(o);
    members
        .into_iter()
        .enumerate()
        .map(|(i, params)| ParamGroup {
            name: GROUP_NAMES[i].to_string(),
            params,
            lr: lrs[i],
            weight_decay: o.weight_decay,
        })
        .collect()
}

/// StepLR: the base rate times gamma^(epoch / step), epoch 0-based.
pub fn scheduled_lr(base: f64, o: &OptimConfig, epoch: usize) -> f64 {
    base * o.lr_decay_gamma.powi((epoch / o.lr_decay_step) as i32)
}

/// Freezes (`frozen = true`) or unfreezes the trunk's parameters, as the authors' warm-up
/// does: frozen parameters get no gradient, so the optimiser leaves them and their state
/// untouched.
pub fn set_trunk_frozen(groups: &[ParamGroup], frozen: bool) {
    for (_, t) in &groups[TRUNK].params {
        let _ = t.set_requires_grad(!frozen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_lr_halves_every_step_epochs() {
        let o = OptimConfig { lr_decay_step: 3, lr_decay_gamma: 0.5, ..OptimConfig::default() };
        let got: Vec<f64> = (0..7).map(|e| scheduled_lr(1.0, &o, e)).collect();
        assert_eq!(got, vec![1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]);
    }

    #[test]
    fn group_rates_follow_the_recipe() {
        let o = OptimConfig { lr: 2e-4, lr_embedding: None, lr_ds: 0.1, lr_hgnn_factor: 5.0, ..OptimConfig::default() };
        assert_eq!(base_lrs(&o), [2e-4, 2e-4, 0.1, 1e-3]);
        let o = OptimConfig { lr_embedding: Some(3e-4), ..o };
        assert_eq!(base_lrs(&o)[1], 3e-4);
    }

    #[test]
    fn names_map_to_groups() {
        assert_eq!(group_of("backbone.unit0.conv.weight"), Some(0));
        assert_eq!(group_of("head.weight"), Some(1));
        assert_eq!(group_of("loss.means"), Some(2));
        assert_eq!(group_of("loss.log_vars"), Some(2));
        assert_eq!(group_of("loss.hgnn.w1"), Some(3));
        assert_eq!(group_of("loss.hgnn.bn.weight"), Some(3));
        assert_eq!(group_of("something.else"), None);
    }
}
