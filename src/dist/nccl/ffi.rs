//! The subset of NCCL's C API that hist uses, resolved from libnccl at run time.
//!
//! ABI as declared in nccl.h of NCCL 2.28.9 (the header shipped by the nvidia-nccl-cu13
//! wheel that torch 2.11.0 installs, `site-packages/nvidia/nccl/include/nccl.h`):
//! `ncclUniqueId` is `struct { char internal[128]; }` and is passed *by value* to
//! `ncclCommInitRank`; `ncclResult_t`, `ncclDataType_t` and `ncclRedOp_t` are C enums,
//! which the header keeps int-sized on purpose, so they travel here as `c_int` (a Rust enum
//! would be undefined behaviour for a value the library adds later); `ncclComm_t` and
//! `cudaStream_t` are opaque pointers; `size_t` is `usize`.
use std::ffi::{c_char, c_int, c_void, CStr, OsString};
use std::path::PathBuf;

use libloading::Library;

use crate::error::{HistError, Result};

/// `NCCL_UNIQUE_ID_BYTES`.
pub(crate) const UNIQUE_ID_BYTES: usize = 128;

/// `ncclUniqueId`: 128 opaque bytes made by rank 0 and handed to every rank.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct UniqueId {
    pub(crate) internal: [u8; UNIQUE_ID_BYTES],
}

/// `ncclComm_t` (`struct ncclComm*`).
pub(crate) type Comm = *mut c_void;
/// `cudaStream_t` (`struct CUstream_st*`); null is the legacy default stream.
pub(crate) type Stream = *mut c_void;

/// `ncclSuccess`.
pub(crate) const SUCCESS: c_int = 0;
/// `ncclInProgress`: only non-blocking communicators report it; not an error.
pub(crate) const IN_PROGRESS: c_int = 7;
/// `ncclSum`.
pub(crate) const OP_SUM: c_int = 0;
/// `ncclAvg`, which exists from NCCL 2.10 on.
pub(crate) const OP_AVG: c_int = 4;
/// `NCCL_VERSION(2,10,0)`: the first version with `ncclAvg`.
pub(crate) const AVG_SINCE: c_int = 21000;

/// `ncclDataType_t` values.
pub(crate) mod dtype {
    use std::ffi::c_int;
    pub(crate) const INT8: c_int = 0;
    pub(crate) const UINT8: c_int = 1;
    pub(crate) const INT32: c_int = 2;
    pub(crate) const INT64: c_int = 4;
    pub(crate) const FLOAT16: c_int = 6;
    pub(crate) const FLOAT32: c_int = 7;
    pub(crate) const FLOAT64: c_int = 8;
    pub(crate) const BFLOAT16: c_int = 9;
}

type GetVersionFn = unsafe extern "C" fn(*mut c_int) -> c_int;
type GetUniqueIdFn = unsafe extern "C" fn(*mut UniqueId) -> c_int;
type CommInitRankFn = unsafe extern "C" fn(*mut Comm, c_int, UniqueId, c_int) -> c_int;
type AllReduceFn =
    unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, Comm, Stream) -> c_int;
type AllGatherFn = unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, Comm, Stream) -> c_int;
type BroadcastFn =
    unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, Comm, Stream) -> c_int;
type CommFn = unsafe extern "C" fn(Comm) -> c_int;
type GetErrorStringFn = unsafe extern "C" fn(c_int) -> *const c_char;
type GetLastErrorFn = unsafe extern "C" fn(Comm) -> *const c_char;
type CommGetAsyncErrorFn = unsafe extern "C" fn(Comm, *mut c_int) -> c_int;

/// libnccl, opened, with the entry points hist calls. The function pointers stay valid
/// because `_library` is dropped (unloaded) only with them.
pub(crate) struct NcclLib {
    pub(crate) get_version: GetVersionFn,
    pub(crate) get_unique_id: GetUniqueIdFn,
    pub(crate) comm_init_rank: CommInitRankFn,
    pub(crate) all_reduce: AllReduceFn,
    pub(crate) all_gather: AllGatherFn,
    pub(crate) broadcast: BroadcastFn,
    pub(crate) comm_destroy: CommFn,
    pub(crate) comm_abort: CommFn,
    get_error_string: GetErrorStringFn,
    /// Added in NCCL 2.13; older libraries lack it.
    get_last_error: Option<GetLastErrorFn>,
    pub(crate) comm_get_async_error: CommGetAsyncErrorFn,
    /// The candidate that opened (a path or a bare soname).
    pub(crate) source: String,
    _library: Library,
}

impl NcclLib {
    /// Opens libnccl: `$HIST_NCCL_LIBRARY` alone when set (an explicit choice is never
    /// silently replaced by another library), else the wheel next to the libtorch hist was
    /// built against, else the dynamic loader's search (which also finds the copy that
    /// libtorch_cuda.so already loaded through its own rpath).
    pub(crate) fn load() -> Result<NcclLib> {
        let mut candidates: Vec<OsString> =
            torch_wheel_path("nvidia/nccl/lib/libnccl.so.2").into_iter().collect();
        candidates.extend(["libnccl.so.2", "libnccl.so"].map(OsString::from));
        let (library, source) = open_first(
            "NCCL",
            "HIST_NCCL_LIBRARY",
            candidates,
            "install torch's NCCL wheel (pip install nvidia-nccl-cu13) or set \
             HIST_NCCL_LIBRARY=/path/to/libnccl.so.2",
        )?;
        // SAFETY: each symbol is looked up with the signature nccl.h declares for it (see
        // the module doc); the pointers are used only while `_library` keeps it loaded.
        unsafe {
            Ok(NcclLib {
                get_version: symbol(&library, &source, "ncclGetVersion")?,
                get_unique_id: symbol(&library, &source, "ncclGetUniqueId")?,
                comm_init_rank: symbol(&library, &source, "ncclCommInitRank")?,
                all_reduce: symbol(&library, &source, "ncclAllReduce")?,
                all_gather: symbol(&library, &source, "ncclAllGather")?,
                broadcast: symbol(&library, &source, "ncclBroadcast")?,
                comm_destroy: symbol(&library, &source, "ncclCommDestroy")?,
                comm_abort: symbol(&library, &source, "ncclCommAbort")?,
                get_error_string: symbol(&library, &source, "ncclGetErrorString")?,
                get_last_error: symbol(&library, &source, "ncclGetLastError").ok(),
                comm_get_async_error: symbol(&library, &source, "ncclCommGetAsyncError")?,
                source,
                _library: library,
            })
        }
    }

    /// `ncclGetVersion`: the integer code, e.g. 22809 for 2.28.9.
    pub(crate) fn version_code(&self) -> Result<c_int> {
        let mut code: c_int = 0;
        // SAFETY: ncclGetVersion writes one int through a valid pointer; it needs no device.
        let result = unsafe { (self.get_version)(&mut code) };
        self.check(result, "ncclGetVersion", std::ptr::null_mut())?;
        Ok(code)
    }

    /// Turns an `ncclResult_t` into `Ok` or a one-line error naming the call, NCCL's
    /// description of the code and, with a communicator, NCCL's last detailed message.
    pub(crate) fn check(&self, result: c_int, call: &str, comm: Comm) -> Result<()> {
        if result == SUCCESS {
            return Ok(());
        }
        Err(HistError::Dist(format!("{call} failed: {}", self.describe(result, comm))))
    }

    /// `ncclName (NCCL's text): last error` for a failed `ncclResult_t`.
    pub(crate) fn describe(&self, result: c_int, comm: Comm) -> String {
        // SAFETY: ncclGetErrorString accepts any code and returns a static string (or null).
        let text = unsafe { c_text((self.get_error_string)(result)) };
        let mut message = format!("{} ({text})", result_name(result));
        if let Some(last_error) = self.get_last_error {
            // SAFETY: ncclGetLastError accepts null or a live communicator (callers pass
            // only those) and returns a string owned by NCCL that we copy at once.
            let last = unsafe { c_text(last_error(comm)) };
            if !last.is_empty() {
                message.push_str(": ");
                message.push_str(&last);
            }
        }
        message.split_whitespace().collect::<Vec<_>>().join(" ")
    }
}

/// The `ncclResult_t` enumerator's name, so logs can be searched for it.
fn result_name(result: c_int) -> String {
    match result {
        0 => "ncclSuccess".into(),
        1 => "ncclUnhandledCudaError".into(),
        2 => "ncclSystemError".into(),
        3 => "ncclInternalError".into(),
        4 => "ncclInvalidArgument".into(),
        5 => "ncclInvalidUsage".into(),
        6 => "ncclRemoteError".into(),
        7 => "ncclInProgress".into(),
        other => format!("ncclResult_t {other}"),
    }
}

/// `major.minor.patch` from an NCCL version code; the encoding changed at 2.9
/// (`NCCL_VERSION` in nccl.h: X*1000+Y*100+Z up to 2.8, X*10000+Y*100+Z after).
pub(crate) fn version_string(code: c_int) -> String {
    if code >= 10000 {
        format!("{}.{}.{}", code / 10000, code % 10000 / 100, code % 100)
    } else {
        format!("{}.{}.{}", code / 1000, code % 1000 / 100, code % 100)
    }
}

/// Copies a C string that may be null.
///
/// # Safety
/// `text` is null or points to a NUL-terminated string that lives for this call.
pub(crate) unsafe fn c_text(text: *const c_char) -> String {
    if text.is_null() {
        return String::new();
    }
    // SAFETY: non-null and NUL-terminated by this function's contract.
    unsafe { CStr::from_ptr(text) }.to_string_lossy().into_owned()
}

/// Looks up `name` in `library` as a `T`, or a Dist error naming the library.
///
/// # Safety
/// `T` must be the symbol's true C signature.
pub(crate) unsafe fn symbol<T: Copy>(library: &Library, source: &str, name: &str) -> Result<T> {
    let mut bytes = name.as_bytes().to_vec();
    bytes.push(0);
    // SAFETY: the caller vouches for `T`; the value is copied out of the Symbol and used
    // only while the library stays loaded (the owner keeps both together).
    match unsafe { library.get::<T>(&bytes) } {
        Ok(found) => Ok(*found),
        Err(err) => Err(HistError::Dist(format!(
            "{source} has no symbol {name} ({err}); it is not a usable library of that kind"
        ))),
    }
}

/// `<site-packages>/<relative>`, where site-packages holds the libtorch hist was built
/// against (build.rs passes its folder); `None` for a build without LIBTORCH.
pub(crate) fn torch_wheel_path(relative: &str) -> Option<OsString> {
    let torch = PathBuf::from(option_env!("HIST_LIBTORCH_DIR")?);
    Some(torch.parent()?.join(relative).into_os_string())
}

/// Opens the first of `candidates` (paths or bare sonames for the dynamic loader) that
/// loads, or only `$env_var` when it is set. The error lists every attempt and the fix.
pub(crate) fn open_first(
    what: &str,
    env_var: &str,
    candidates: Vec<OsString>,
    fix: &str,
) -> Result<(Library, String)> {
    let explicit = std::env::var_os(env_var).filter(|value| !value.is_empty());
    let candidates = match &explicit {
        Some(path) => vec![path.clone()],
        None => candidates,
    };
    let mut tried = Vec::new();
    for candidate in candidates {
        let shown = candidate.to_string_lossy().into_owned();
        // A path that is not there gets a short note instead of dlopen's long message.
        if shown.contains('/') && !PathBuf::from(&candidate).exists() {
            tried.push(format!("{shown} (no such file)"));
            continue;
        }
        // SAFETY: loading runs the library's initialisers; NCCL's and the CUDA runtime's
        // only set up internal state (they touch no device until called).
        match unsafe { Library::new(&candidate) } {
            Ok(library) => return Ok((library, shown)),
            Err(err) => tried.push(format!("{shown} ({err})")),
        }
    }
    let (source, fix) = match explicit {
        Some(_) => (
            format!("{env_var} is set, so only it was tried"),
            format!("point {env_var} at a working library, or unset it to search the usual places"),
        ),
        None => (format!("{env_var} is not set"), fix.to_string()),
    };
    Err(HistError::Dist(format!(
        "cannot load the {what} library ({source}): tried {}; {fix}",
        tried.join(", ")
    )))
}
