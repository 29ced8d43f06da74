//! Gradient reduction across ranks in flat buckets, and the initial broadcast of every
//! parameter and buffer from rank 0.
use tch::Tensor;

use super::{Collectives, ReduceOp};
use crate::error::{HistError, Result};

/// Which reduction a parameter's gradient needs (design §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GradRule {
    /// Backbone and head: each rank holds only its local samples' contribution → sum.
    Sum,
    /// Prototypes and HGNN: every rank computed the full gradient → average, which also
    /// keeps the replicas identical where kernels are not bit-deterministic.
    Avg,
}

/// Reduces the gradients of `params` (those with a defined gradient; every rank must have
/// the same set, which holds because freezing is decided by the epoch) in flat buckets of
/// at most `bucket_bytes`, one collective per bucket instead of one per tensor.
pub fn reduce_gradients(pg: &mut dyn Collectives, params: &[(Tensor, GradRule)], bucket_bytes: usize) -> Result<()> {
    if pg.world_size() == 1 {
        return Ok(());
    }
    for rule in [GradRule::Sum, GradRule::Avg] {
        let grads: Vec<Tensor> = params
            .iter()
            .filter(|(_, r)| *r == rule)
            .map(|(p, _)| p.grad())
            .filter(Tensor::defined)
            .collect();
        let op = match rule {
            GradRule::Sum => ReduceOp::Sum,
            GradRule::Avg => ReduceOp::Avg,
        };
        for bucket in buckets(&grads, bucket_bytes) {
            reduce_bucket(pg, &bucket, op)?;
        }
    }
    Ok(())
}

/// Groups tensors of one dtype and device into runs of at most `bucket_bytes` (a tensor
/// larger than that forms a bucket of its own), in order.
fn buckets(tensors: &[Tensor], bucket_bytes: usize) -> Vec<Vec<Tensor>> {
    let mut out: Vec<Vec<Tensor>> = Vec::new();
    let mut bytes = 0usize;
    for t in tensors {
        let size = t.numel() * t.kind().elt_size_in_bytes();
        let fits = out.last().is_some_and(|b| {
            let first = &b[0];
            first.kind() == t.kind() && first.device() == t.device() && bytes + size <= bucket_bytes
        });
        if fits {
            bytes += size;
            if let Some(last) = out.last_mut() {
                last.push(t.shallow_clone());
            }
        } else {
            bytes = size;
            out.push(vec![t.shallow_clone()]);
        }
    }
    out
}

fn reduce_bucket(pg: &mut dyn Collectives, bucket: &[Tensor], op: ReduceOp) -> Result<()> {
    let _guard = tch::no_grad_guard();
    let flats: Vec<Tensor> = bucket.iter().map(|g| g.reshape([-1])).collect();
    let mut flat = Tensor::cat(&flats, 0);
    pg.all_reduce(&mut flat, op)?;
    let mut offset = 0i64;
    for g in bucket {
        let n = g.numel() as i64;
        let mut dst = g.shallow_clone();
        dst.copy_(&flat.narrow(0, offset, n).view_as(g));
        offset += n;
    }
    Ok(())
}

/// Overwrites every tensor in `tensors` (parameters and buffers) with rank 0's values.
pub fn broadcast_from_rank0(pg: &mut dyn Collectives, tensors: &[(String, Tensor)]) -> Result<()> {
    if pg.world_size() == 1 {
        return Ok(());
    }
    let _guard = tch::no_grad_guard();
    for (name, t) in tensors {
        let mut buf = t.detach().contiguous();
        pg.broadcast(&mut buf, 0).map_err(|e| HistError::Dist(format!("broadcasting {name}: {e}")))?;
        let mut dst = t.shallow_clone();
        dst.copy_(&buf);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn buckets_respect_size_dtype_and_order() {
        let f = |n: i64| Tensor::zeros([n], (Kind::Float, Device::Cpu));
        let d = |n: i64| Tensor::zeros([n], (Kind::Double, Device::Cpu));
        let ts = vec![f(10), f(10), f(100), d(2), d(2), f(1)];
        let sizes: Vec<Vec<i64>> = buckets(&ts, 100)
            .iter()
            .map(|b| b.iter().map(|t| t.numel() as i64).collect())
            .collect();
        assert_eq!(sizes, vec![vec![10, 10], vec![100], vec![2, 2], vec![1]]);
    }
}
