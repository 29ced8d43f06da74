//! All-gather of the embeddings so the hypergraph spans the global batch, with gradient
//! flowing back into this rank's own slice only (design §3).
use tch::Tensor;

use super::Collectives;
use crate::error::Result;

/// The global batch [W·b, …] in rank order, in which this rank's slice *is* `local` (so
/// autograd reaches the local backbone) and the other ranks' slices are constants.
pub fn gather_with_grad(pg: &mut dyn Collectives, local: &Tensor) -> Result<Tensor> {
    if pg.world_size() == 1 {
        return Ok(local.shallow_clone());
    }
    let gathered = pg.all_gather(&local.detach().contiguous())?;
    let b = local.size()[0];
    let start = pg.rank() as i64 * b;
    let total = gathered.size()[0];
    let before = gathered.narrow(0, 0, start);
    let after = gathered.narrow(0, start + b, total - start - b);
    Ok(Tensor::cat(&[before, local.shallow_clone(), after], 0))
}

/// All-gather without gradient (labels, evaluation embeddings).
pub fn gather(pg: &mut dyn Collectives, local: &Tensor) -> Result<Tensor> {
    pg.all_gather(&local.contiguous())
}
