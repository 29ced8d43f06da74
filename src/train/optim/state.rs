//! Export and restore of an [`Optimizer`]'s state as named tensors.
use std::collections::{BTreeMap, HashMap};

use tch::Tensor;

use super::{Optimizer, OptimizerKind, ParamState};
use crate::error::{HistError, Result};

const STEP: &str = "step";
const EXP_AVG: &str = "exp_avg";
const EXP_AVG_SQ: &str = "exp_avg_sq";
const MOMENTUM_BUFFER: &str = "momentum_buffer";

impl Optimizer {
    /// Snapshot of the state as named tensors (copies, detached), for checkpoints:
    /// `<param>.exp_avg`, `<param>.exp_avg_sq` and `<param>.step` (0-d f64) for Adam/AdamW,
    /// `<param>.momentum_buffer` for SGD with momentum; only parameters that have state.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (group, states) in self.groups.iter().zip(&self.state) {
            for ((name, _), slot) in group.params.iter().zip(states) {
                match slot {
                    None => {}
                    Some(ParamState::Adam {
                        step,
                        exp_avg,
                        exp_avg_sq,
                    }) => {
                        out.push((format!("{name}.{EXP_AVG}"), exp_avg.detach().copy()));
                        out.push((format!("{name}.{EXP_AVG_SQ}"), exp_avg_sq.detach().copy()));
                        let step =
                            Tensor::scalar_tensor(*step, (tch::Kind::Double, tch::Device::Cpu));
                        out.push((format!("{name}.{STEP}"), step));
                    }
                    Some(ParamState::Sgd { momentum_buffer }) => {
                        out.push((
                            format!("{name}.{MOMENTUM_BUFFER}"),
                            momentum_buffer.detach().copy(),
                        ));
                    }
                }
            }
        }
        out
    }

    /// Replaces the whole state with `tensors` (as written by [`Optimizer::state_tensors`]);
    /// parameters without entries start fresh. Tensors are copied into the parameter's dtype
    /// and device, as torch's `load_state_dict` does. Nothing changes on error; the error
    /// lists every unknown, duplicate, incomplete, mis-shaped or invalid entry.
    pub fn load_state_tensors(&mut self, tensors: &[(String, Tensor)]) -> Result<()> {
        let fields: &[&str] = match self.kind {
            OptimizerKind::Adam { .. } | OptimizerKind::AdamW { .. } => {
                &[EXP_AVG, EXP_AVG_SQ, STEP]
            }
            OptimizerKind::Sgd { momentum } if momentum != 0.0 => &[MOMENTUM_BUFFER],
            OptimizerKind::Sgd { .. } => &[],
        };
        let mut problems = Vec::new();

        let mut index: HashMap<&str, (usize, usize)> = HashMap::new();
        for (g, group) in self.groups.iter().enumerate() {
            for (i, (name, _)) in group.params.iter().enumerate() {
                if index.insert(name.as_str(), (g, i)).is_some() {
                    problems.push(format!(
                        "parameter name {name} is used twice, state is ambiguous"
                    ));
                }
            }
        }

        // (group, param) -> one slot per field, in `fields` order.
        let mut found: BTreeMap<(usize, usize), Vec<Option<&Tensor>>> = BTreeMap::new();
        for (entry, tensor) in tensors {
            let located = entry.rsplit_once('.').and_then(|(param, field)| {
                let f = fields.iter().position(|known| *known == field)?;
                Some((*index.get(param)?, f))
            });
            let Some((at, f)) = located else {
                let expected = if fields.is_empty() {
                    "none for this optimiser".to_string()
                } else {
                    format!("<parameter>.{{{}}}", fields.join(","))
                };
                problems.push(format!("{entry}: unknown entry (expected {expected})"));
                continue;
            };
            let slots = found.entry(at).or_insert_with(|| vec![None; fields.len()]);
            if slots[f].replace(tensor).is_some() {
                problems.push(format!("{entry}: given twice"));
            }
        }

        let mut state: Vec<Vec<Option<ParamState>>> = self
            .groups
            .iter()
            .map(|g| g.params.iter().map(|_| None).collect())
            .collect();
        for ((g, i), slots) in found {
            let (name, param) = &self.groups[g].params[i];
            let missing: Vec<String> = fields
                .iter()
                .zip(&slots)
                .filter(|(_, slot)| slot.is_none())
                .map(|(field, _)| format!("{name}.{field}"))
                .collect();
            if !missing.is_empty() {
                problems.push(format!(
                    "{}: missing (the rest of {name}'s state is given)",
                    missing.join(", ")
                ));
                continue;
            }
            let mut buffers = Vec::new();
            let mut step = None;
            for (field, tensor) in fields.iter().zip(slots.into_iter().flatten()) {
                let entry = format!("{name}.{field}");
                if *field == STEP {
                    match read_step(tensor) {
                        Ok(value) => step = Some(value),
                        Err(why) => problems.push(format!("{entry}: {why}")),
                    }
                } else if tensor.size() != param.size() {
                    problems.push(format!(
                        "{entry}: shape {:?}, expected the parameter's {:?}",
                        tensor.size(),
                        param.size()
                    ));
                } else if !tensor.is_floating_point() {
                    problems.push(format!(
                        "{entry}: dtype {:?}, expected floating point",
                        tensor.kind()
                    ));
                } else {
                    let mut copy = param.f_zeros_like()?;
                    copy.f_copy_(tensor)?;
                    buffers.push(copy);
                }
            }
            if buffers.len() + usize::from(step.is_some()) != fields.len() {
                continue; // a problem was recorded above
            }
            let mut buffers = buffers.into_iter();
            state[g][i] = match (buffers.next(), buffers.next(), step) {
                (Some(exp_avg), Some(exp_avg_sq), Some(step)) => Some(ParamState::Adam {
                    step,
                    exp_avg,
                    exp_avg_sq,
                }),
                (Some(momentum_buffer), None, None) => Some(ParamState::Sgd { momentum_buffer }),
                _ => unreachable!("fields match the optimiser kind"),
            };
        }

        if !problems.is_empty() {
            return Err(HistError::input("optimizer state", problems.join("; ")));
        }
        self.state = state;
        Ok(())
    }
}

/// Reads a step count: a 0-d tensor holding a whole number ≥ 0.
fn read_step(tensor: &Tensor) -> std::result::Result<f64, String> {
    if !tensor.size().is_empty() {
        return Err(format!("shape {:?}, expected a 0-d tensor", tensor.size()));
    }
    let value = tensor.f_double_value(&[]).map_err(|e| e.to_string())?;
    if !(value.is_finite() && value >= 0.0 && value.fract() == 0.0) {
        return Err(format!("{value} is not a step count"));
    }
    Ok(value)
}
