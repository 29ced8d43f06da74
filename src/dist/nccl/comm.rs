//! The NCCL communicator of one rank and its [`Collectives`] implementation.
use std::collections::BTreeMap;
use std::ffi::c_int;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};

use super::cudart::Cudart;
use super::ffi::{self, dtype, Comm, NcclLib, UniqueId, UNIQUE_ID_BYTES};
use crate::dist::collectives::{Collectives, ReduceOp};
use crate::error::{HistError, Result};

/// How long rendezvous and [`Nccl::barrier`] wait for the other ranks by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Communicators made so far in this process, per rank. Every rank of a job makes them in
/// the same order, so the count names the store key of the next one's id with no extra
/// agreement; counting per rank keeps it right when one process hosts several ranks (one
/// thread and GPU each, as `hist nccl-check` does).
static GENERATIONS: Mutex<BTreeMap<usize, usize>> = Mutex::new(BTreeMap::new());

fn next_generation(rank: usize) -> usize {
    let mut counts = GENERATIONS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let count = counts.entry(rank).or_insert(0);
    *count += 1;
    *count - 1
}

/// One rank's NCCL communicator bound to one CUDA device.
///
/// Stream: every collective is launched on stream `NULL`, the legacy default stream of the
/// communicator's device. tch exposes no current-stream call and libtorch queues its
/// kernels on that same default stream unless someone sets another, so NCCL's work is
/// ordered with the kernels that produce and consume the tensors, and the CUDA caching
/// allocator may reuse a freed buffer without extra synchronisation. The calls return once
/// the work is queued; [`Nccl::barrier`] and [`Nccl::wait`] wait for it.
pub struct Nccl {
    lib: NcclLib,
    cudart: Cudart,
    /// Null once the communicator has been aborted after an error.
    comm: Comm,
    rank: usize,
    world_size: usize,
    device: usize,
    has_avg: bool,
    timeout: Duration,
}

// SAFETY: an NCCL communicator may be used from any thread provided no two calls on it run
// at once; `&mut self` on every method that touches it (and no `Sync`) guarantees that.
unsafe impl Send for Nccl {}

impl Nccl {
    /// Creates this rank's communicator on CUDA device `device_index`: rank 0 makes the
    /// NCCL id and publishes it in the job store, the others fetch it, then every rank
    /// joins. Fails with a one-line error (never a panic) without a usable GPU or libnccl.
    pub fn new(store: &mut hist_rendezvous::Client, device_index: usize) -> Result<Nccl> {
        Nccl::with_timeout(store, device_index, DEFAULT_TIMEOUT)
    }

    /// [`Nccl::new`] with the wait for other ranks (rendezvous, barrier) set to `timeout`.
    pub fn with_timeout(
        store: &mut hist_rendezvous::Client,
        device_index: usize,
        timeout: Duration,
    ) -> Result<Nccl> {
        let rank = store.rank();
        let world_size = store.world_size();
        let (lib, cudart) = open_for_device(device_index)?;
        let has_avg = lib.version_code()? >= ffi::AVG_SINCE;
        let generation = next_generation(rank);
        let key = match generation {
            0 => "nccl/unique_id".to_string(),
            n => format!("nccl/unique_id/{n}"),
        };
        let store_err = |what: &str, err: &dyn std::fmt::Display| {
            HistError::Dist(format!("NCCL rendezvous: {what} {key}: {err}"))
        };
        let id = if rank == 0 {
            let mut id = UniqueId { internal: [0; UNIQUE_ID_BYTES] };
            // SAFETY: ncclGetUniqueId fills the 128-byte struct it is given.
            let result = unsafe { (lib.get_unique_id)(&mut id) };
            lib.check(result, "ncclGetUniqueId", std::ptr::null_mut())?;
            store.set(&key, &id.internal).map_err(|e| store_err("publishing", &e))?;
            id
        } else {
            let bytes = store.get(&key, timeout).map_err(|e| store_err("fetching", &e))?;
            let internal: [u8; UNIQUE_ID_BYTES] = bytes.as_slice().try_into().map_err(|_| {
                HistError::Dist(format!(
                    "NCCL rendezvous: {key} holds {} bytes, not the {UNIQUE_ID_BYTES} of an ncclUniqueId",
                    bytes.len()
                ))
            })?;
            UniqueId { internal }
        };
        // ncclCommInitRank blocks until every rank has called it and has no timeout: meet
        // in the store first, so a rank that never arrives is a timed-out barrier instead.
        store
            .barrier(&format!("{key}/init"), timeout)
            .map_err(|e| store_err("waiting for every rank before joining", &e))?;
        let (nranks, my_rank) = (to_c_int(world_size, "world size")?, to_c_int(rank, "rank")?);
        let mut comm: Comm = std::ptr::null_mut();
        cudart.set_device(device_index)?;
        // SAFETY: `comm` is a valid out-pointer; the id is passed by value as nccl.h
        // declares; the device the communicator binds to was made current just above.
        let result = unsafe { (lib.comm_init_rank)(&mut comm, nranks, id, my_rank) };
        lib.check(result, "ncclCommInitRank", std::ptr::null_mut())?;
        Ok(Nccl { lib, cudart, comm, rank, world_size, device: device_index, has_avg, timeout })
    }

    /// Sets how long [`Nccl::barrier`] and [`Nccl::wait`] wait before giving up.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The CUDA device index of this communicator.
    pub fn device_index(&self) -> usize {
        self.device
    }

    /// Waits until the device's default stream, and so every collective queued so far, has
    /// finished. On an NCCL error or when `timeout` passes (a peer died or hangs) it aborts
    /// the communicator, which releases the stuck kernels, and fails.
    pub fn wait(&mut self) -> Result<()> {
        let comm = self.live_comm()?;
        self.cudart.set_device(self.device)?;
        let start = Instant::now();
        let mut pause = Duration::from_micros(20);
        while !self.cudart.default_stream_idle()? {
            self.check_async(comm, "waiting for the default stream")?;
            if start.elapsed() > self.timeout {
                self.abort();
                return Err(HistError::Dist(format!(
                    "NCCL rank {}: collectives did not finish within {:?} (a peer may have \
                     died or stalled); the communicator was aborted",
                    self.rank, self.timeout
                )));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(2));
        }
        self.check_async(comm, "waiting for the default stream")
    }

    fn live_comm(&self) -> Result<Comm> {
        if self.comm.is_null() {
            return Err(HistError::Dist(format!(
                "NCCL rank {}: the communicator was aborted after an earlier error",
                self.rank
            )));
        }
        Ok(self.comm)
    }

    /// Fails (aborting the communicator) when NCCL reports an asynchronous error, such as a
    /// network failure or a peer's abort, found after the call that caused it returned.
    fn check_async(&mut self, comm: Comm, context: &str) -> Result<()> {
        let mut state: c_int = ffi::SUCCESS;
        // SAFETY: `comm` is live (not yet destroyed or aborted); `state` is a valid int.
        let result = unsafe { (self.lib.comm_get_async_error)(comm, &mut state) };
        let failed = if result != ffi::SUCCESS { result } else { state };
        if failed == ffi::SUCCESS || failed == ffi::IN_PROGRESS {
            return Ok(());
        }
        let message = self.lib.describe(failed, comm);
        self.abort();
        Err(HistError::Dist(format!(
            "NCCL rank {} failed while {context}: {message}; the communicator was aborted",
            self.rank
        )))
    }

    fn abort(&mut self) {
        if self.comm.is_null() {
            return;
        }
        // SAFETY: the communicator is live and is forgotten right after, so it is never
        // used again; abort also cancels kernels still waiting on dead peers.
        unsafe { (self.lib.comm_abort)(self.comm) };
        self.comm = std::ptr::null_mut();
    }

    /// Checks that `tensor` lives on this communicator's device with a dtype NCCL moves,
    /// and returns that dtype's `ncclDataType_t`.
    fn nccl_dtype(&self, tensor: &Tensor, call: &str) -> Result<c_int> {
        if tensor.device() != Device::Cuda(self.device) {
            return Err(HistError::Dist(format!(
                "NCCL {call}: tensor is on {:?}, but this rank's communicator is on Cuda({})",
                tensor.device(),
                self.device
            )));
        }
        nccl_dtype(tensor.kind()).ok_or_else(|| {
            HistError::Dist(format!("NCCL {call}: dtype {:?} is not supported", tensor.kind()))
        })
    }

    /// Runs `launch` with the communicator's device current, then checks NCCL's result and
    /// asynchronous state. `launch` gets the live communicator.
    fn launch(&mut self, call: &str, launch: impl FnOnce(&NcclLib, Comm) -> c_int) -> Result<()> {
        let comm = self.live_comm()?;
        self.cudart.set_device(self.device)?;
        let result = launch(&self.lib, comm);
        if result != ffi::SUCCESS {
            let message = self.lib.describe(result, comm);
            self.abort();
            return Err(HistError::Dist(format!(
                "{call} failed on rank {}: {message}; the communicator was aborted",
                self.rank
            )));
        }
        self.check_async(comm, call)
    }
}

impl Collectives for Nccl {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    /// Sum of any supported dtype; Avg of floating-point tensors only (ncclAvg from NCCL
    /// 2.10, else a sum and a division queued after it). In place; must be contiguous.
    fn all_reduce(&mut self, tensor: &mut Tensor, op: ReduceOp) -> Result<()> {
        let kind = self.nccl_dtype(tensor, "all_reduce")?;
        require_contiguous(tensor, "all_reduce")?;
        if op == ReduceOp::Avg && !tensor.is_floating_point() {
            return Err(HistError::Dist(format!(
                "NCCL all_reduce: Avg needs a floating-point tensor, got {:?}",
                tensor.kind()
            )));
        }
        let count = tensor.numel();
        if count == 0 {
            return Ok(());
        }
        let nccl_op = if op == ReduceOp::Avg && self.has_avg { ffi::OP_AVG } else { ffi::OP_SUM };
        let buffer = tensor.data_ptr();
        self.launch("ncclAllReduce", |lib, comm| {
            // SAFETY: `buffer` holds `count` contiguous elements of `kind` on the
            // communicator's device (checked above) and stays alive in `tensor`; in place
            // (send == recv) is allowed by nccl.h; null stream: see the type's doc.
            unsafe { (lib.all_reduce)(buffer, buffer, count, kind, nccl_op, comm, std::ptr::null_mut()) }
        })?;
        if op == ReduceOp::Avg && !self.has_avg {
            let _ = tensor.f_div_scalar_(self.world_size as f64)?;
        }
        Ok(())
    }

    /// A new tensor `[world_size * d0, ...]` on the same device (a 0-d input gives
    /// `[world_size]`); a non-contiguous input is copied first.
    fn all_gather(&mut self, tensor: &Tensor) -> Result<Tensor> {
        let kind = self.nccl_dtype(tensor, "all_gather")?;
        let input = tensor.f_contiguous()?;
        let mut shape = input.size();
        match shape.first_mut() {
            Some(first) => *first *= self.world_size as i64,
            None => shape.push(self.world_size as i64),
        }
        let output = Tensor::f_empty(shape.as_slice(), (input.kind(), input.device()))?;
        let count = input.numel();
        if count == 0 {
            return Ok(output);
        }
        let (send, recv) = (input.data_ptr(), output.data_ptr());
        self.launch("ncclAllGather", |lib, comm| {
            // SAFETY: `send` holds `count` contiguous elements and `recv` world_size times
            // as many, both of `kind` on the communicator's device and alive until after
            // the kernel (freed blocks are reused only by later work on the same stream).
            unsafe { (lib.all_gather)(send, recv, count, kind, comm, std::ptr::null_mut()) }
        })?;
        Ok(output)
    }

    /// In place; the tensor must be contiguous on every rank.
    fn broadcast(&mut self, tensor: &mut Tensor, root: usize) -> Result<()> {
        let kind = self.nccl_dtype(tensor, "broadcast")?;
        require_contiguous(tensor, "broadcast")?;
        if root >= self.world_size {
            return Err(HistError::Dist(format!(
                "NCCL broadcast: root {root} is not a rank of this {}-rank job",
                self.world_size
            )));
        }
        let count = tensor.numel();
        if count == 0 {
            return Ok(());
        }
        let (buffer, root) = (tensor.data_ptr(), to_c_int(root, "root")?);
        self.launch("ncclBroadcast", |lib, comm| {
            // SAFETY: as in all_reduce: `count` contiguous elements of `kind` on the
            // communicator's device, in place (allowed by nccl.h).
            unsafe { (lib.broadcast)(buffer, buffer, count, kind, root, comm, std::ptr::null_mut()) }
        })
    }

    /// A one-element all-reduce, waited for: when it returns, every rank has reached the
    /// barrier and all collectives queued before it have completed on this device.
    fn barrier(&mut self) -> Result<()> {
        let mut token = Tensor::f_ones([1], (Kind::Float, Device::Cuda(self.device)))?;
        self.all_reduce(&mut token, ReduceOp::Sum)?;
        self.wait()
    }

    /// [`Nccl::wait`]: bounded by the communicator's timeout, aborting it on a dead peer.
    fn finish_pending(&mut self) -> Result<()> {
        self.wait()
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        if self.comm.is_null() {
            return;
        }
        let _ = self.cudart.set_device(self.device);
        // A communicator with a pending error may block destroy forever on a dead peer.
        if self.check_async(self.comm, "shutting down").is_err() {
            return; // check_async already aborted it
        }
        // SAFETY: the communicator is live and is never used again after this.
        let result = unsafe { (self.lib.comm_destroy)(self.comm) };
        if result != ffi::SUCCESS {
            eprintln!(
                "warning: ncclCommDestroy on rank {}: {}",
                self.rank,
                self.lib.describe(result, std::ptr::null_mut())
            );
        }
        self.comm = std::ptr::null_mut();
    }
}

/// Loads NCCL and the CUDA runtime after checking that `device_index` is a usable GPU.
pub(crate) fn open_for_device(device_index: usize) -> Result<(NcclLib, Cudart)> {
    if !tch::Cuda::is_available() {
        return Err(HistError::Dist(
            "the NCCL backend needs a CUDA GPU, but tch::Cuda::is_available() is false here \
             (no GPU, no CUDA driver, or a CPU-only libtorch); use the CPU backend"
                .to_string(),
        ));
    }
    let count = tch::Cuda::device_count();
    if device_index as i64 >= count {
        return Err(HistError::Dist(format!(
            "the NCCL backend was asked for CUDA device {device_index}, but this machine has {count}"
        )));
    }
    Ok((NcclLib::load()?, Cudart::load()?))
}

/// The `ncclDataType_t` for a tch dtype, for the types NCCL and torch share.
fn nccl_dtype(kind: Kind) -> Option<c_int> {
    Some(match kind {
        Kind::Float => dtype::FLOAT32,
        Kind::Double => dtype::FLOAT64,
        Kind::BFloat16 => dtype::BFLOAT16,
        Kind::Half => dtype::FLOAT16,
        Kind::Int64 => dtype::INT64,
        Kind::Int => dtype::INT32,
        Kind::Uint8 => dtype::UINT8,
        Kind::Int8 => dtype::INT8,
        _ => return None,
    })
}

fn require_contiguous(tensor: &Tensor, call: &str) -> Result<()> {
    if tensor.is_contiguous() {
        return Ok(());
    }
    Err(HistError::Dist(format!(
        "NCCL {call}: the tensor must be contiguous (it is changed in place); call .contiguous() first"
    )))
}

fn to_c_int(value: usize, what: &str) -> Result<c_int> {
    c_int::try_from(value).map_err(|_| HistError::Dist(format!("NCCL: {what} {value} does not fit an int")))
}
