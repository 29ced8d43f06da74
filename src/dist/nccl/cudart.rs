//! The three CUDA runtime calls NCCL needs around it and tch does not offer: choosing the
//! current device, and polling the legacy default stream for completion.
//!
//! Why the runtime at all: `ncclCommInitRank` binds the communicator to the *current*
//! device (nccl.h: "Each rank is associated to a CUDA device, which has to be set before
//! calling ncclCommInitRank"), and stream `NULL` means the legacy default stream *of the
//! current device*; tch 0.24 has no set-device call, and libtorch restores the current
//! device after every op it runs. Any cudart instance's `cudaSetDevice` makes the device's
//! primary context current through the driver, which is where NCCL's statically linked
//! runtime reads it — the same arrangement PyTorch relies on.
//!
//! ABI from `site-packages/nvidia/cu13/include/{cuda_runtime_api.h,driver_types.h}` (CUDA
//! 13.0): `cudaError_t` is an int-sized enum with `cudaSuccess = 0`, `cudaErrorNotReady =
//! 600`; `cudaStream_t` is a pointer.
use std::ffi::{c_char, c_int, c_void, OsString};

use libloading::Library;

use super::ffi::{c_text, open_first, symbol, torch_wheel_path};
use crate::error::{HistError, Result};

/// `cudaErrorNotReady`: `cudaStreamQuery`'s "still running", not a failure.
pub(crate) const NOT_READY: c_int = 600;

type SetDeviceFn = unsafe extern "C" fn(c_int) -> c_int;
type StreamQueryFn = unsafe extern "C" fn(*mut c_void) -> c_int;
type GetErrorStringFn = unsafe extern "C" fn(c_int) -> *const c_char;

/// libcudart, opened, with the calls used here.
pub(crate) struct Cudart {
    set_device: SetDeviceFn,
    stream_query: StreamQueryFn,
    get_error_string: GetErrorStringFn,
    _library: Library,
}

impl Cudart {
    /// Opens the CUDA runtime, bare soname first: libtorch_cuda.so already loaded
    /// libcudart.so.13 through its rpath, and the loader hands back that same copy.
    pub(crate) fn load() -> Result<Cudart> {
        let mut candidates: Vec<OsString> = ["libcudart.so.13", "libcudart.so.12"].map(OsString::from).into();
        // The wheel layouts, for a binary whose libtorch_cuda did not come along.
        candidates.extend(torch_wheel_path("nvidia/cu13/lib/libcudart.so.13"));
        candidates.extend(torch_wheel_path("nvidia/cuda_runtime/lib/libcudart.so.12"));
        let (library, source) = open_first(
            "CUDA runtime",
            "HIST_CUDART_LIBRARY",
            candidates,
            "put torch's lib folder on LD_LIBRARY_PATH (libtorch_cuda loads libcudart) or set \
             HIST_CUDART_LIBRARY=/path/to/libcudart.so.13",
        )?;
        // SAFETY: signatures as declared in cuda_runtime_api.h (module doc); the pointers
        // are used only while `_library` keeps the runtime loaded.
        unsafe {
            Ok(Cudart {
                set_device: symbol(&library, &source, "cudaSetDevice")?,
                stream_query: symbol(&library, &source, "cudaStreamQuery")?,
                get_error_string: symbol(&library, &source, "cudaGetErrorString")?,
                _library: library,
            })
        }
    }

    /// Makes `device` current on this thread (and creates its primary context if needed).
    pub(crate) fn set_device(&self, device: usize) -> Result<()> {
        let index = c_int::try_from(device)
            .map_err(|_| HistError::Dist(format!("CUDA device index {device} is out of range")))?;
        // SAFETY: cudaSetDevice takes a plain int and validates it.
        let result = unsafe { (self.set_device)(index) };
        self.check(result, &format!("cudaSetDevice({device})"))
    }

    /// Whether all work queued on the current device's legacy default stream has finished.
    pub(crate) fn default_stream_idle(&self) -> Result<bool> {
        // SAFETY: a null stream is valid and names the legacy default stream.
        let result = unsafe { (self.stream_query)(std::ptr::null_mut()) };
        if result == NOT_READY {
            return Ok(false);
        }
        self.check(result, "cudaStreamQuery(default stream)")?;
        Ok(true)
    }

    fn check(&self, result: c_int, call: &str) -> Result<()> {
        if result == 0 {
            return Ok(());
        }
        // SAFETY: cudaGetErrorString accepts any code and returns a static string.
        let text = unsafe { c_text((self.get_error_string)(result)) };
        Err(HistError::Dist(format!("{call} failed: CUDA error {result} ({text})")))
    }
}
