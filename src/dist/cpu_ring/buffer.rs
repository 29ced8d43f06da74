//! The memory a collective works on ([`RawBuf`]) and the element-wise reduction of
//! received chunks into it ([`Reducer`]).
use std::ops::Range;

use crate::error::{HistError, Result};

/// The bytes a collective works on: a contiguous CPU tensor's storage or a local buffer.
#[derive(Debug, Clone, Copy)]
pub(super) struct RawBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: a RawBuf is only a pointer; the engine hands disjoint ranges of it to its two
// threads (see `Plan`'s waits) and both threads end before `Collective::run` returns.
unsafe impl Send for RawBuf {}
// SAFETY: as for Send: shared use is confined to disjoint ranges.
unsafe impl Sync for RawBuf {}

impl RawBuf {
    /// Wraps `len` bytes at `ptr`.
    ///
    /// # Safety
    /// `ptr` must be valid for reads and writes of `len` bytes, aligned for the element
    /// type a reducer will view it as, and not accessed by anyone else until the
    /// collective it is passed to returns. `ptr` may be dangling when `len` is 0.
    pub(super) unsafe fn new(ptr: *mut u8, len: usize) -> RawBuf {
        RawBuf { ptr, len }
    }

    /// Bytes in the buffer.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Copies all of `src` into this buffer from byte `at` on.
    ///
    /// # Safety
    /// Both buffers still satisfy [`RawBuf::new`]'s contract and do not overlap.
    pub(super) unsafe fn copy_from(&self, at: usize, src: RawBuf) -> Result<()> {
        if at.checked_add(src.len).is_none_or(|end| end > self.len) {
            return Err(HistError::Dist("internal error: copy out of bounds".into()));
        }
        // SAFETY: in bounds (checked above); the caller guarantees validity and no overlap.
        unsafe { self.slice_mut(at..at + src.len).copy_from_slice(src.slice(0..src.len)) };
        Ok(())
    }

    /// # Safety
    /// `r` lies within the buffer and no one writes those bytes while the slice lives.
    pub(super) unsafe fn slice(&self, r: Range<usize>) -> &[u8] {
        // SAFETY: the caller guarantees bounds and the absence of writers.
        unsafe { std::slice::from_raw_parts(self.ptr.add(r.start), r.len()) }
    }

    /// # Safety
    /// `r` lies within the buffer and no one else touches those bytes while the slice lives.
    #[allow(clippy::mut_from_ref)]
    pub(super) unsafe fn slice_mut(&self, r: Range<usize>) -> &mut [u8] {
        // SAFETY: the caller guarantees bounds and exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(r.start), r.len()) }
    }
}

/// Element-wise addition for all_reduce's received chunks.
#[derive(Debug, Clone, Copy)]
pub(super) enum Reducer {
    F32 { divisor: f32 },
    F64 { divisor: f64 },
}

impl Reducer {
    /// `dst += src`, then `dst /= divisor` if `scale`. Both are whole elements: every
    /// chunk boundary is a multiple of 8 bytes and the tensor is element-aligned.
    pub(super) fn apply(self, dst: &mut [u8], src: &[u8], scale: bool) -> Result<()> {
        match self {
            Reducer::F32 { divisor } => add_scale(cast_mut::<f32>(dst)?, cast::<f32>(src)?, scale.then_some(divisor)),
            Reducer::F64 { divisor } => add_scale(cast_mut::<f64>(dst)?, cast::<f64>(src)?, scale.then_some(divisor)),
        }
        Ok(())
    }
}

/// The hot loop: plain slices the compiler vectorises. Division rather than
/// multiplication by 1/W, so averages round like `sum / W` in PyTorch.
fn add_scale<T: Copy + std::ops::AddAssign + std::ops::DivAssign>(dst: &mut [T], src: &[T], divisor: Option<T>) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += *s;
    }
    if let Some(w) = divisor {
        for d in dst.iter_mut() {
            *d /= w;
        }
    }
}

fn cast_mut<T: FloatBits>(bytes: &mut [u8]) -> Result<&mut [T]> {
    // SAFETY: T is f32 or f64, for which every bit pattern is a valid value.
    let (head, mid, tail) = unsafe { bytes.align_to_mut::<T>() };
    if !head.is_empty() || !tail.is_empty() {
        return Err(HistError::Dist("all_reduce: tensor memory is not aligned to its element size".into()));
    }
    Ok(mid)
}

fn cast<T: FloatBits>(bytes: &[u8]) -> Result<&[T]> {
    // SAFETY: T is f32 or f64, for which every bit pattern is a valid value.
    let (head, mid, tail) = unsafe { bytes.align_to::<T>() };
    if !head.is_empty() || !tail.is_empty() {
        return Err(HistError::Dist("all_reduce: received chunk is not aligned to its element size".into()));
    }
    Ok(mid)
}

/// The element types `cast` may view bytes as (every bit pattern valid).
trait FloatBits {}
impl FloatBits for f32 {}
impl FloatBits for f64 {}
