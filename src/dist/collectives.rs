//! One interface for every backend's collectives, and the single-rank backend.
use tch::Tensor;

use crate::error::Result;

/// How `all_reduce` combines the ranks' tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// Element-wise sum.
    Sum,
    /// Element-wise sum divided by the world size.
    Avg,
}

/// Collective operations over all ranks of a job. Every rank must call the same
/// operations in the same order with tensors of the same shape and dtype.
pub trait Collectives: Send {
    /// This process's rank in 0..world_size.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world_size(&self) -> usize;
    /// Combines `tensor` across ranks in place (contiguous f32 or f64 tensors).
    fn all_reduce(&mut self, tensor: &mut Tensor, op: ReduceOp) -> Result<()>;
    /// Every rank's `tensor` concatenated along dim 0 in rank order (any dtype).
    fn all_gather(&mut self, tensor: &Tensor) -> Result<Tensor>;
    /// Overwrites `tensor` on every rank with rank `root`'s (any dtype).
    fn broadcast(&mut self, tensor: &mut Tensor, root: usize) -> Result<()>;
    /// Returns once every rank has called it.
    fn barrier(&mut self) -> Result<()>;
    /// Returns once the collectives called so far have finished, or fails when they
    /// cannot (a peer died or stalled). Call it before reading their results on the host:
    /// a plain device-to-host copy would wait for ever on a collective stuck on a dead
    /// peer. Backends whose collectives return finished (CPU) have nothing to wait for.
    fn finish_pending(&mut self) -> Result<()> {
        Ok(())
    }
}

/// The backend of a one-rank job: every collective is the identity.
#[derive(Debug, Default)]
pub struct Solo;

impl Collectives for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce(&mut self, _tensor: &mut Tensor, _op: ReduceOp) -> Result<()> {
        Ok(())
    }
    fn all_gather(&mut self, tensor: &Tensor) -> Result<Tensor> {
        Ok(tensor.shallow_clone())
    }
    fn broadcast(&mut self, _tensor: &mut Tensor, _root: usize) -> Result<()> {
        Ok(())
    }
    fn barrier(&mut self) -> Result<()> {
        Ok(())
    }
}
