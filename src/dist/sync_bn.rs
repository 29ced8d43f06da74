//! Exact SyncBatchNorm: BatchNorm2d whose statistics span every rank's positions, in the
//! forward pass (mean and variance) and in the backward pass (the per-channel gradient
//! sums), so W ranks with batch B/W train exactly like one rank with batch B.
//!
//! Per channel, over the M positions of all ranks: y = γ·x̂ + β with x̂ = (x − μ)·invstd, and
//! on rank r, with g = ∂L/∂y_r, dx_r = γ·invstd·(g − Σ_all g/M − x̂·Σ_all(g·x̂)/M). Rank r
//! only holds its own g, so the two sums need an all-reduce in the middle of backward,
//! which tch cannot express: the Function lives in csrc/sync_batch_norm.cpp and calls
//! [`collective_callback`] for its collectives. dγ = Σ_local g·x̂ and dβ = Σ_local g stay
//! local because the gradient sync sums backbone gradients over ranks (`GradRule::Sum`).
//!
//! The layer reaches the process group through [`with_sync_bn`], which attaches it to this
//! thread's slot for the duration of a closure. Each autograd node keeps the slot alive,
//! not the thread: on CUDA, backward runs on the autograd engine's device thread.
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard};

use tch::Tensor;

use super::{Collectives, ReduceOp};
use crate::error::{HistError, Result};

/// A process group borrowed for the duration of one [`with_sync_bn`] call.
struct Attached(*mut (dyn Collectives + 'static));

// SAFETY: `Collectives: Send`, and the slot's mutex lets one thread at a time use it.
unsafe impl Send for Attached {}

#[derive(Default)]
struct SlotState {
    attached: Option<Attached>,
    /// The first collective failure since the process group was attached.
    error: Option<HistError>,
}

/// Where sync BN layers built on one thread find the process group.
#[derive(Default)]
struct Slot(Mutex<SlotState>);

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // A panic while holding the lock leaves a state that is still consistent.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

thread_local! {
    static SLOT: Arc<Slot> = Arc::new(Slot::default());
}

/// Detaches the process group when [`with_sync_bn`] returns or unwinds, restoring the one
/// an enclosing call attached.
struct Detach {
    slot: Arc<Slot>,
    outer: Option<Attached>,
    outer_error: Option<HistError>,
}

impl Drop for Detach {
    fn drop(&mut self) {
        let mut state = self.slot.lock();
        state.attached = self.outer.take();
        state.error = self.outer_error.take();
    }
}

/// Runs `f` with `pg` reachable by the `sync` BatchNorm layers it runs, forward and
/// backward; the collectives they issue fail the call with the first error.
pub fn with_sync_bn<R>(pg: &mut dyn Collectives, f: impl FnOnce() -> R) -> Result<R> {
    let slot = SLOT.with(Arc::clone);
    // SAFETY: only the lifetime bound is erased. The pointer is used while attached, and
    // `Detach` removes it before this function returns or unwinds, inside `pg`'s borrow.
    let ptr: *mut (dyn Collectives + 'static) = unsafe { std::mem::transmute(pg as *mut dyn Collectives) };
    let detach = {
        let mut state = slot.lock();
        let outer = state.attached.replace(Attached(ptr));
        Detach { slot: Arc::clone(&slot), outer, outer_error: state.error.take() }
    };
    let out = f();
    let error = detach.slot.lock().error.take();
    drop(detach);
    match error {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// The world size of the process group attached on this thread, if any.
fn attached_world_size(slot: &Slot) -> Option<usize> {
    let state = slot.lock();
    // SAFETY: attached pointers are live (see `with_sync_bn`); the lock excludes other users.
    state.attached.as_ref().map(|a| unsafe { (*a.0).world_size() })
}

/// BatchNorm in training mode for a `sync` layer: statistics over every rank of the
/// enclosing [`with_sync_bn`]; with no such call, or one rank, this rank's batch
/// statistics, which is then the same thing. Running statistics are updated either way.
pub fn batch_norm_train(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    running_mean: &Tensor,
    running_var: &Tensor,
    momentum: f64,
    eps: f64,
) -> Tensor {
    let slot = SLOT.with(Arc::clone);
    let local = || Tensor::batch_norm(x, weight, bias, Some(running_mean), Some(running_var), true, momentum, eps, true);
    if attached_world_size(&slot).is_none_or(|w| w == 1) {
        return local();
    }
    match sync_batch_norm(x, weight, bias, running_mean, running_var, momentum, eps) {
        Ok(y) => y,
        Err(e) => {
            // Reported by `with_sync_bn`; the local result only lets the step unwind.
            slot.lock().error.get_or_insert(e);
            local()
        }
    }
}

/// Sync BatchNorm of `x` [N, C, …] through the process group of the enclosing
/// [`with_sync_bn`], whatever its size: batch statistics of all ranks' positions, running
/// statistics updated in place with them (momentum as torch; unbiased running variance).
pub fn sync_batch_norm(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    running_mean: &Tensor,
    running_var: &Tensor,
    momentum: f64,
    eps: f64,
) -> Result<Tensor> {
    let slot = SLOT.with(Arc::clone);
    if attached_world_size(&slot).is_none() {
        return Err(HistError::Dist("sync BatchNorm needs a process group: run the model inside dist::sync_bn::with_sync_bn".into()));
    }
    let undefined = Tensor::new();
    let weight = weight.unwrap_or(&undefined);
    let bias = bias.unwrap_or(&undefined);
    let slot_ref = Arc::into_raw(slot) as *mut c_void;
    let mut out: *mut c_void = std::ptr::null_mut();
    // SAFETY: the tensor pointers are live for the call; the C++ side takes over the slot
    // reference (released through `release_slot`) and returns a tensor it allocated with
    // `new`, which `Tensor::from_ptr` owns and frees as tch frees its own.
    let message = unsafe {
        ffi::hist_sync_bn_forward(
            x.as_ptr().cast(),
            weight.as_ptr().cast(),
            bias.as_ptr().cast(),
            running_mean.as_ptr().cast(),
            running_var.as_ptr().cast(),
            momentum,
            eps,
            slot_ref,
            collective_callback,
            release_slot,
            &mut out,
        )
    };
    // SAFETY: null or a message from hist_sync_bn_forward, taken once here.
    if let Some(text) = unsafe { crate::ffi_message::take(message) } {
        return Err(HistError::Dist(format!("sync BatchNorm of a {:?} input: {text}", x.size())));
    }
    // SAFETY: on success `out` is a tensor allocated for us (see above).
    Ok(unsafe { Tensor::from_ptr(out.cast()) })
}

const ALL_GATHER: i32 = 0;
const ALL_REDUCE_SUM: i32 = 1;
const OK: i32 = 0;
const FAILED: i32 = 1;
const DETACHED: i32 = 2;

/// Runs collective `op` on `input` for the slot `slot` and stores the result in `output`.
/// On failure it records the error in the slot and stores the one-rank result (the input),
/// so that the pass can finish and `with_sync_bn` report the error; every later collective
/// of the same call is skipped the same way, so no rank waits on a peer that gave up.
unsafe extern "C" fn collective_callback(slot: *const c_void, op: i32, input: *const c_void, output: *mut c_void) -> i32 {
    // SAFETY: the caller passes the slot reference it holds and live tensors.
    let slot = unsafe { &*(slot as *const Slot) };
    let input = unsafe { Tensor::clone_from_ptr(input as *mut _) };
    let result = catch_unwind(AssertUnwindSafe(|| run_collective(slot, op, &input)));
    let (code, tensor) = match result {
        Ok(Ok(t)) => (OK, t),
        Ok(Err(Some(e))) => {
            slot.lock().error.get_or_insert(e);
            (FAILED, input)
        }
        Ok(Err(None)) => (DETACHED, input),
        Err(_) => {
            slot.lock().error.get_or_insert(HistError::Dist("sync BatchNorm: a collective panicked".into()));
            (FAILED, input)
        }
    };
    // SAFETY: `output` is a live at::Tensor owned by the caller.
    unsafe { ffi::hist_sync_bn_assign(output, tensor.as_ptr().cast()) };
    code
}

/// The collective's result; `Err(None)` when no process group is attached.
fn run_collective(slot: &Slot, op: i32, input: &Tensor) -> std::result::Result<Tensor, Option<HistError>> {
    let state = slot.lock();
    let Some(attached) = state.attached.as_ref() else { return Err(None) };
    if state.error.is_some() {
        return Err(Some(HistError::Dist("skipped after an earlier failure".into())));
    }
    // SAFETY: attached pointers are live (see `with_sync_bn`); the lock excludes other users.
    let pg = unsafe { &mut *attached.0 };
    match op {
        ALL_GATHER => pg.all_gather(input).map_err(Some),
        ALL_REDUCE_SUM => {
            let mut sums = input.copy();
            pg.all_reduce(&mut sums, ReduceOp::Sum).map(|()| sums).map_err(Some)
        }
        other => Err(Some(HistError::Dist(format!("sync BatchNorm: unknown collective {other}")))),
    }
}

/// Drops the slot reference that `sync_batch_norm` handed to the C++ side.
unsafe extern "C" fn release_slot(slot: *mut c_void) {
    // SAFETY: `slot` came from `Arc::into_raw` and is released exactly once.
    drop(unsafe { Arc::from_raw(slot as *const Slot) });
}

mod ffi {
    use std::ffi::{c_char, c_void};

    pub type CollectiveFn = unsafe extern "C" fn(*const c_void, i32, *const c_void, *mut c_void) -> i32;
    pub type ReleaseFn = unsafe extern "C" fn(*mut c_void);

    extern "C" {
        pub fn hist_sync_bn_forward(
            x: *const c_void,
            weight: *const c_void,
            bias: *const c_void,
            running_mean: *const c_void,
            running_var: *const c_void,
            momentum: f64,
            eps: f64,
            slot: *mut c_void,
            collective: CollectiveFn,
            release: ReleaseFn,
            out: *mut *mut c_void,
        ) -> *mut c_char;
        pub fn hist_sync_bn_assign(dst: *mut c_void, src: *const c_void);
    }
}
