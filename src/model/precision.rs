//! What `model.channels_last`, `train.autocast` and `tf32` amount to on the run's device:
//! all apply on CUDA only; a CPU run keeps contiguous float32 and says so once.
use tch::Device;

use super::autocast::{amp_result, ffi, Autocast, AutocastDevice, AutocastDtype};
use crate::config::{AutocastMode, Config, DType};
use crate::error::Result;

/// Readies `device` for a command: false when it is a CUDA device this machine lacks (the
/// caller names the setting to fix); on CUDA, also sets float32 precision as
/// [`set_cuda_float32_precision`] does.
pub fn ready_device(device: Device, tf32_convolutions: bool) -> Result<bool> {
    let Device::Cuda(index) = device else {
        return Ok(true);
    };
    if !tch::Cuda::is_available() || index >= tch::Cuda::device_count() as usize {
        return Ok(false);
    }
    set_cuda_float32_precision(tf32_convolutions)?;
    Ok(true)
}

/// Sets libtorch's float32 precision for CUDA: convolutions on TF32 tensor cores when
/// `tf32_convolutions` (the config's `tf32`, PyTorch's default), IEEE float32 otherwise;
/// matrix products IEEE float32 always (PyTorch's default, which the evaluation's exact
/// ranking relies on). Process-wide; call it before the first CUDA operation.
pub fn set_cuda_float32_precision(tf32_convolutions: bool) -> Result<()> {
    // SAFETY: no arguments but a bool; the message, if any, is taken by amp_result.
    let message = unsafe { ffi::hist_set_cuda_float32_precision(tf32_convolutions) };
    // SAFETY: null or a message from hist_set_cuda_float32_precision, taken once.
    unsafe { amp_result(message, "cannot set CUDA's float32 precision") }
}

/// The memory format and autocast a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Precision {
    /// Backbone weights and input channels-last.
    pub channels_last: bool,
    /// The forward pass's autocast region, if any.
    pub autocast: Option<Autocast>,
}

impl Precision {
    /// The switches of `config` on `device`: as configured on CUDA, off on the CPU.
    pub fn resolve(config: &Config, device: Device) -> Self {
        if !device.is_cuda() {
            return Precision::default();
        }
        let dtype = match config.train.autocast {
            AutocastMode::Off => None,
            AutocastMode::Bf16 => Some(AutocastDtype::Bf16),
            AutocastMode::Fp16 => Some(AutocastDtype::Fp16),
        };
        Precision {
            channels_last: config.model.channels_last,
            autocast: dtype.map(|dtype| Autocast { device: AutocastDevice::Cuda, dtype }),
        }
    }

    /// True when the step needs fp16's dynamic loss scaling.
    pub fn loss_scaling(&self) -> bool {
        self.autocast.is_some_and(|a| a.dtype == AutocastDtype::Fp16)
    }

    /// The one line a CPU run prints when its config asks for either switch.
    pub fn cpu_notice(config: &Config, device: Device) -> Option<String> {
        let asked = config.model.channels_last || config.train.autocast != AutocastMode::Off;
        let dtype = match config.dtype {
            DType::F32 => "float32",
            DType::F64 => "float64",
        };
        (asked && !device.is_cuda())
            .then(|| format!("model.channels_last and train.autocast apply on CUDA only; this CPU run uses contiguous {dtype}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libtorch accepts the switches without a GPU too (they are process-wide flags), and
    /// libtorch's own float32 products still run afterwards.
    #[test]
    fn float32_precision_switches_are_accepted() {
        for tf32 in [false, true] {
            set_cuda_float32_precision(tf32).unwrap_or_else(|e| panic!("tf32 {tf32}: {e}"));
        }
        let a = tch::Tensor::ones([2, 2], (tch::Kind::Float, Device::Cpu));
        assert_eq!(a.mm(&a).double_value(&[0, 0]), 2.0);
    }
}
