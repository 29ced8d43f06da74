//! Dynamic loss scaling for `train.autocast: fp16`, with torch.amp.GradScaler's rule.
//!
//! fp16 gradients of small magnitude flush to zero, so the loss is multiplied by a scale
//! before backward and the (float32) parameter gradients are divided by it afterwards. A
//! step whose gradients hold an inf or a NaN is skipped and the scale halves; after
//! `growth_interval` finite steps in a row it doubles. The scale and the count of finite
//! steps are state that a checkpoint keeps, so a resumed run scales exactly as it would have.
//!
//! The training step unscales *after* the gradient all-reduce: every rank then holds the
//! same gradients, finds the same overflow and skips the same steps without a collective of
//! its own (an overflow on any rank reaches every rank through the sum).
use std::ffi::c_void;

use tch::{Kind, Tensor};

use crate::error::{HistError, Result};
use crate::model::autocast::{amp_result, ffi};

/// Checkpoint entries of the scaler's state start with this (beside the optimiser's).
pub const STATE_PREFIX: &str = "grad_scaler.";
const SCALE: &str = "grad_scaler.scale";
const GROWTH_TRACKER: &str = "grad_scaler.growth_tracker";
const SKIPPED_STEPS: &str = "grad_scaler.skipped_steps";

/// GradScaler's constants (torch's defaults via [`GradScaler::default`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScalerRule {
    /// The scale of the first step.
    pub init_scale: f64,
    /// Multiplies the scale after `growth_interval` finite steps in a row.
    pub growth_factor: f64,
    /// Multiplies the scale after a step with an inf or NaN gradient.
    pub backoff_factor: f64,
    /// Finite steps in a row before the scale grows.
    pub growth_interval: i32,
}

impl Default for ScalerRule {
    /// torch.amp.GradScaler's defaults: 2^16, ×2 every 2000 finite steps, ×0.5 on overflow.
    fn default() -> Self {
        ScalerRule { init_scale: 65536.0, growth_factor: 2.0, backoff_factor: 0.5, growth_interval: 2000 }
    }
}

/// The dynamic loss scaler. The scale is a float32, as GradScaler's `_scale` tensor is, and
/// is updated with the arithmetic of libtorch's `_amp_update_scale_` kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct GradScaler {
    rule: ScalerRule,
    scale: f32,
    /// Finite steps in a row since the scale last changed.
    growth_tracker: i32,
    /// Steps skipped so far (for the logs; GradScaler does not count them).
    skipped_steps: i64,
}

impl Default for GradScaler {
    fn default() -> Self {
        GradScaler::new(ScalerRule::default())
    }
}

impl GradScaler {
    /// A scaler at `rule.init_scale` with no history.
    pub fn new(rule: ScalerRule) -> Self {
        GradScaler { rule, scale: rule.init_scale as f32, growth_tracker: 0, skipped_steps: 0 }
    }

    /// The current scale.
    pub fn scale(&self) -> f64 {
        f64::from(self.scale)
    }

    /// Finite steps in a row since the scale last changed.
    pub fn growth_tracker(&self) -> i32 {
        self.growth_tracker
    }

    /// Steps skipped because a gradient overflowed, over the whole run.
    pub fn skipped_steps(&self) -> i64 {
        self.skipped_steps
    }

    /// `loss` × scale: what backward runs on (GradScaler.scale).
    pub fn scale_loss(&self, loss: &Tensor) -> Tensor {
        loss.g_mul_scalar(f64::from(self.scale))
    }

    /// Divides every gradient in `grads` by the scale in place (by multiplying with the
    /// float32 reciprocal, as GradScaler.unscale_ does); true if any holds an inf or a NaN.
    /// The gradients must be float32 on one device.
    pub fn unscale(&self, grads: &[Tensor]) -> Result<bool> {
        let Some(first) = grads.first() else {
            return Ok(false);
        };
        let device = first.device();
        let inv_scale = (1.0 / f64::from(self.scale)) as f32;
        let mut found_inf = Tensor::zeros([1], (Kind::Float, device));
        // Filled on the device: no host-to-device copy per step.
        let inv = Tensor::full([1], f64::from(inv_scale), (Kind::Float, device));
        let ptrs: Vec<*const c_void> = grads.iter().map(|g| g.as_ptr().cast()).collect();
        // SAFETY: every pointer is a live at::Tensor borrowed for the call; the kernel
        // writes into the gradients' storage and `found_inf`, which this function owns.
        let message = unsafe { ffi::hist_amp_unscale(ptrs.as_ptr(), ptrs.len(), found_inf.as_mut_ptr().cast(), inv.as_ptr().cast()) };
        // SAFETY: the message, if any, comes from hist_amp_unscale and is taken once.
        unsafe { amp_result(message, "cannot unscale the fp16 gradients") }?;
        Ok(found_inf.double_value(&[0]) != 0.0)
    }

    /// GradScaler.update after a step: on overflow the scale backs off and the run of
    /// finite steps restarts; otherwise the run grows and, at `growth_interval`, the scale
    /// grows unless that would overflow float32.
    pub fn update(&mut self, found_inf: bool) {
        // `_amp_update_scale_`: float scale × double factor, rounded to float.
        if found_inf {
            self.scale = (f64::from(self.scale) * self.rule.backoff_factor) as f32;
            self.growth_tracker = 0;
            self.skipped_steps += 1;
            return;
        }
        let successful = self.growth_tracker + 1;
        if successful == self.rule.growth_interval {
            let grown = (f64::from(self.scale) * self.rule.growth_factor) as f32;
            if grown.is_finite() {
                self.scale = grown;
            }
            self.growth_tracker = 0;
        } else {
            self.growth_tracker = successful;
        }
    }

    /// Unscales `grads`, updates the scale, and says whether the optimiser may step (false:
    /// a gradient overflowed and the step is skipped, as GradScaler.step skips it).
    pub fn unscale_and_update(&mut self, grads: &[Tensor]) -> Result<bool> {
        let found_inf = self.unscale(grads)?;
        self.update(found_inf);
        Ok(!found_inf)
    }

    /// The state as checkpoint entries: `grad_scaler.scale` (0-d float32),
    /// `grad_scaler.growth_tracker` (0-d int32, as GradScaler keeps them) and
    /// `grad_scaler.skipped_steps` (0-d int64).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        vec![
            (SCALE.to_string(), Tensor::from(self.scale)),
            (GROWTH_TRACKER.to_string(), Tensor::from(self.growth_tracker)),
            (SKIPPED_STEPS.to_string(), Tensor::from(self.skipped_steps)),
        ]
    }

    /// Restores the state from entries written by [`GradScaler::state_tensors`]; nothing
    /// changes on error, which names every missing, unknown or malformed entry.
    pub fn load_state_tensors(&mut self, tensors: &[(String, Tensor)]) -> Result<()> {
        let mut problems = Vec::new();
        let find = |name: &str, kind: Kind| -> std::result::Result<f64, String> {
            let t = tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t).ok_or_else(|| format!("{name}: missing"))?;
            if !t.size().is_empty() || t.kind() != kind {
                return Err(format!("{name}: expected a 0-d {kind:?} tensor, got {:?} {:?}", t.kind(), t.size()));
            }
            t.f_double_value(&[]).map_err(|e| format!("{name}: {e}"))
        };
        for (name, _) in tensors {
            if ![SCALE, GROWTH_TRACKER, SKIPPED_STEPS].contains(&name.as_str()) {
                problems.push(format!("{name}: unknown entry"));
            }
        }
        let scale = find(SCALE, Kind::Float).map_err(|e| problems.push(e)).ok();
        let tracker = find(GROWTH_TRACKER, Kind::Int).map_err(|e| problems.push(e)).ok();
        let skipped = find(SKIPPED_STEPS, Kind::Int64).map_err(|e| problems.push(e)).ok();
        if let Some(s) = scale.filter(|s| s.is_nan() || *s < 0.0) {
            problems.push(format!("{SCALE}: {s} is not a loss scale"));
        }
        if let Some(t) = tracker.filter(|t| *t < 0.0 || *t >= f64::from(self.rule.growth_interval)) {
            problems.push(format!("{GROWTH_TRACKER}: {t} is outside 0..{}", self.rule.growth_interval));
        }
        match (scale, tracker, skipped) {
            (Some(scale), Some(tracker), Some(skipped)) if problems.is_empty() => {
                self.scale = scale as f32;
                self.growth_tracker = tracker as i32;
                self.skipped_steps = skipped as i64;
                Ok(())
            }
            _ => Err(HistError::input("grad scaler state", problems.join("; "))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_backs_off_and_growth_waits_for_the_interval() {
        let mut s = GradScaler::new(ScalerRule { growth_interval: 3, ..ScalerRule::default() });
        assert_eq!(s.scale(), 65536.0);
        s.update(true);
        assert_eq!((s.scale(), s.growth_tracker(), s.skipped_steps()), (32768.0, 0, 1));
        s.update(false);
        s.update(false);
        assert_eq!((s.scale(), s.growth_tracker()), (32768.0, 2));
        s.update(false);
        assert_eq!((s.scale(), s.growth_tracker()), (65536.0, 0));
    }

    #[test]
    fn the_scale_stops_growing_below_float32_overflow() {
        let mut s = GradScaler::new(ScalerRule { init_scale: 2f64.powi(127), growth_interval: 1, ..ScalerRule::default() });
        s.update(false);
        assert_eq!((s.scale(), s.growth_tracker()), (2f64.powi(127), 0));
    }

    #[test]
    fn unscale_divides_and_finds_inf_and_nan() {
        let s = GradScaler::new(ScalerRule { init_scale: 4.0, ..ScalerRule::default() });
        let a = Tensor::from_slice(&[4.0f32, -8.0]);
        let b = Tensor::from_slice(&[2.0f32]);
        assert!(!s.unscale(&[a.shallow_clone(), b.shallow_clone()]).expect("unscale"));
        assert_eq!(Vec::<f32>::try_from(&a).expect("values"), [1.0, -2.0]);
        assert_eq!(Vec::<f32>::try_from(&b).expect("values"), [0.5]);
        for bad in [f32::INFINITY, f32::NAN] {
            let c = Tensor::from_slice(&[1.0f32, bad]);
            assert!(s.unscale(&[b.shallow_clone(), c]).expect("unscale"), "{bad} not found");
        }
        assert!(!s.unscale(&[]).expect("nothing to unscale"));
    }

    #[test]
    fn state_round_trips_and_bad_entries_are_listed() {
        let mut s = GradScaler::default();
        for inf in [true, false, false, true, false] {
            s.update(inf);
        }
        let mut t = GradScaler::default();
        t.load_state_tensors(&s.state_tensors()).expect("load");
        assert_eq!(t, s);
        let mut entries = s.state_tensors();
        let _ = entries.remove(1);
        entries.push(("grad_scaler.other".into(), Tensor::from(1.0f32)));
        let err = t.load_state_tensors(&entries).expect_err("incomplete").to_string();
        assert!(err.contains("grad_scaler.growth_tracker: missing") && err.contains("grad_scaler.other: unknown"), "{err}");
    }
}
