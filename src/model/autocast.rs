//! Autocast regions (`train.autocast`) through csrc/amp.cpp: tch 0.24 can switch autocast
//! on for CUDA only and cannot pick its dtype, which bf16 vs fp16 needs. The region is the
//! one torch.autocast(device, dtype) opens: libtorch casts the inputs of matmul-like ops
//! (convolutions, linear) to the reduced type and keeps reductions and norms where its
//! per-device lists say; the weights' casts are cached until the outermost region ends.
//! Autocast state is per thread, like the grad mode.
use std::ffi::c_char;

use tch::Device;

use crate::error::{HistError, Result};

/// The device type whose autocast state a region sets (libtorch keeps one per type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutocastDevice {
    /// CPU autocast (bfloat16; used by the tests, training keeps CPU runs in float32).
    Cpu,
    /// CUDA autocast.
    Cuda,
}

impl AutocastDevice {
    /// The device type of `device`.
    pub fn of(device: Device) -> Self {
        match device {
            Device::Cuda(_) => AutocastDevice::Cuda,
            _ => AutocastDevice::Cpu,
        }
    }

    /// The code csrc/amp.cpp expects.
    fn code(self) -> i32 {
        match self {
            AutocastDevice::Cpu => 0,
            AutocastDevice::Cuda => 1,
        }
    }
}

/// The reduced floating type of an autocast region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutocastDtype {
    /// bfloat16: float32's exponent range, 8 bits of mantissa.
    Bf16,
    /// float16: 11 bits of mantissa, range up to 65504 (gradients need loss scaling).
    Fp16,
}

impl AutocastDtype {
    /// The code csrc/amp.cpp expects.
    fn code(self) -> i32 {
        match self {
            AutocastDtype::Bf16 => 0,
            AutocastDtype::Fp16 => 1,
        }
    }
}

/// What an autocast region enables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Autocast {
    /// The device type whose operations are autocast.
    pub device: AutocastDevice,
    /// Their reduced type.
    pub dtype: AutocastDtype,
}

/// Whether autocast is on for `device` on this thread.
pub fn autocast_enabled(device: AutocastDevice) -> bool {
    // SAFETY: reads libtorch's thread-local autocast flag; no pointers involved.
    unsafe { ffi::hist_autocast_is_enabled(device.code()) }
}

/// Leaves the region on drop, so a panicking closure does not leave autocast on.
struct Exit {
    device: AutocastDevice,
    previous: ffi::Previous,
}

impl Drop for Exit {
    fn drop(&mut self) {
        // SAFETY: `previous` was filled by the matching hist_autocast_enter on this thread.
        unsafe { ffi::hist_autocast_exit(self.device.code(), &self.previous) };
    }
}

/// Runs `f` inside an autocast region when `autocast` is `Some`, as `with
/// torch.autocast(device, dtype):` does, restoring the previous state on return or unwind;
/// runs `f` as it is for `None`.
pub fn with_autocast<T>(autocast: Option<Autocast>, f: impl FnOnce() -> T) -> Result<T> {
    let Some(ac) = autocast else {
        return Ok(f());
    };
    let mut previous = ffi::Previous { enabled: false, dtype: 0 };
    // SAFETY: `previous` is a valid out-pointer for the call's duration.
    let message = unsafe { ffi::hist_autocast_enter(ac.device.code(), ac.dtype.code(), &mut previous) };
    // SAFETY: the message, if any, comes from hist_autocast_enter and is taken once.
    unsafe { amp_result(message, &format!("cannot enter autocast ({ac:?})")) }?;
    let _exit = Exit { device: ac.device, previous };
    Ok(f())
}

/// Turns a csrc/amp.cpp return value (null, or an error message to free) into a result.
///
/// # Safety
/// `message` must be null or a message returned by csrc/amp.cpp that nothing else frees.
pub(crate) unsafe fn amp_result(message: *mut c_char, what: &str) -> Result<()> {
    // SAFETY: the contract above is ffi_message::take's.
    match unsafe { crate::ffi_message::take(message) } {
        None => Ok(()),
        Some(text) => Err(HistError::Torch(tch::TchError::Torch(format!("{what}: {text}")))),
    }
}

/// csrc/amp.cpp's entry points.
pub(crate) mod ffi {
    use std::ffi::c_void;

    use super::c_char;

    /// `HistAutocastPrevious`: the state a region replaced.
    #[repr(C)]
    pub struct Previous {
        pub enabled: bool,
        pub dtype: i32,
    }

    extern "C" {
        pub fn hist_autocast_enter(device: i32, dtype: i32, previous: *mut Previous) -> *mut c_char;
        pub fn hist_autocast_exit(device: i32, previous: *const Previous);
        pub fn hist_autocast_is_enabled(device: i32) -> bool;
        pub fn hist_set_cuda_float32_precision(tf32_convolutions: bool) -> *mut c_char;
        pub fn hist_amp_unscale(grads: *const *const c_void, count: usize, found_inf: *mut c_void, inv_scale: *const c_void) -> *mut c_char;
    }
}
