//! NCCL collectives on CUDA tensors, with libnccl loaded at run time.
//!
//! Nothing here is linked against NCCL or the CUDA runtime: both are opened with
//! `libloading` when a GPU job starts, so the binary builds and runs its CPU paths on
//! machines without them. libnccl is searched for in this order:
//! 1. `$HIST_NCCL_LIBRARY` (a file path) — when set, nothing else is tried;
//! 2. `<site-packages>/nvidia/nccl/lib/libnccl.so.2` next to the libtorch hist was built
//!    against (torch 2.11's pip install brings it as nvidia-nccl-cu13);
//! 3. `libnccl.so.2`, then `libnccl.so`, through the dynamic loader — which also returns
//!    the copy libtorch_cuda.so has already loaded through its rpath.
//!
//! The CUDA runtime (for `cudaSetDevice` and `cudaStreamQuery`, which tch lacks) is
//! `$HIST_CUDART_LIBRARY`, else `libcudart.so.13` — libtorch_cuda's own copy — else the
//! wheel's `nvidia/cu13/lib/libcudart.so.13`.
//!
//! Stream assumption: collectives run on the legacy default stream (`NULL`), where libtorch
//! queues its kernels unless someone sets another stream (tch never does and cannot report
//! which stream is current). See [`Nccl`].
mod comm;
mod cudart;
mod ffi;

pub use comm::{Nccl, DEFAULT_TIMEOUT};

use crate::error::Result;

/// Which libnccl this process loads and its version; for diagnostics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NcclInfo {
    /// The candidate that loaded: a file path or a bare soname such as `libnccl.so.2`.
    pub library: String,
    /// `major.minor.patch`, e.g. `2.28.9`.
    pub version: String,
    /// The raw `ncclGetVersion` code, e.g. 22809.
    pub code: i32,
}

/// Loads libnccl (search order in the module doc) and asks it for its version. Needs no
/// GPU; fails with a one-line error naming every path tried when NCCL cannot be loaded.
pub fn nccl_info() -> Result<NcclInfo> {
    let lib = ffi::NcclLib::load()?;
    let code = lib.version_code()?;
    Ok(NcclInfo { library: lib.source.clone(), version: ffi::version_string(code), code })
}

/// The loaded NCCL's version as `major.minor.patch` (see [`nccl_info`]).
pub fn nccl_version() -> Result<String> {
    Ok(nccl_info()?.version)
}

#[cfg(test)]
mod tests {
    use super::cudart::Cudart;
    use super::ffi::version_string;

    #[test]
    fn the_cuda_runtime_loads_and_reports_a_missing_gpu_as_an_error() {
        let cudart = Cudart::load().expect("libtorch_cuda brings libcudart");
        if tch::Cuda::is_available() {
            return;
        }
        // No driver or no device: an error code turned into text, not a crash.
        let message = cudart.set_device(0).unwrap_err().to_string();
        assert!(message.contains("cudaSetDevice(0) failed: CUDA error"), "{message}");
    }

    #[test]
    fn version_codes_decode_on_both_sides_of_the_2_9_change() {
        assert_eq!(version_string(22809), "2.28.9");
        assert_eq!(version_string(21003), "2.10.3");
        assert_eq!(version_string(2804), "2.8.4");
    }
}
