//! Recall@K with cosine similarity, each query's own image excluded (design §5).
use tch::{Kind, Tensor};

use crate::loss::distances::l2_normalize;

/// Queries compared against the whole set per chunk; bounds memory at chunk × N.
const QUERY_CHUNK: i64 = 1024;

/// Fraction of queries with at least one same-class image among their K nearest others,
/// for each K in `ks`. Every image is a query against all others. K larger than N − 1 is
/// clamped to N − 1. Ties are broken by libtorch's top-k (a later metric suite makes
/// tie-breaking deterministic).
pub fn recall_at_k(embeddings: &Tensor, labels: &[i64], ks: &[usize]) -> Vec<f64> {
    let _guard = tch::no_grad_guard();
    let n = labels.len() as i64;
    if n < 2 || ks.is_empty() {
        return vec![0.0; ks.len()];
    }
    let x = l2_normalize(&embeddings.to_kind(Kind::Double));
    let y = Tensor::from_slice(labels);
    let k_max = ks.iter().copied().max().unwrap_or(1).min(n as usize - 1) as i64;
    let mut hits = vec![0i64; ks.len()];
    for start in (0..n).step_by(QUERY_CHUNK as usize) {
        let len = QUERY_CHUNK.min(n - start);
        let q = x.narrow(0, start, len);
        let sim = q.matmul(&x.tr());
        let own = Tensor::arange_start(start, start + len, (Kind::Int64, x.device())).unsqueeze(1);
        let sim = sim.scatter_value(1, &own, f64::NEG_INFINITY);
        let (_, nn_idx) = sim.topk(k_max, 1, true, true);
        let same = y.index_select(0, &nn_idx.flatten(0, -1)).view([len, k_max]).eq_tensor(&y.narrow(0, start, len).unsqueeze(1));
        // first_hit[i] = rank of the first correct neighbour, or k_max if none.
        let any_prefix = same.to_kind(Kind::Int64).cumsum(1, Kind::Int64).gt(0);
        for (slot, &k) in ks.iter().enumerate() {
            let k = (k as i64).min(k_max);
            hits[slot] += any_prefix.select(1, k - 1).sum(Kind::Int64).int64_value(&[]);
        }
    }
    hits.iter().map(|&h| h as f64 / n as f64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recall_counts_nearest_other_image() {
        // Points on a line: 0 and 1 are close (same class), 2 is far and alone in class 1,
        // 3 is near 2 but in class 0.
        let e = Tensor::from_slice(&[1.0f64, 0.0, 0.99, 0.14, 0.0, 1.0, 0.2, 0.98]).view([4, 2]);
        let r = recall_at_k(&e, &[0, 0, 1, 0], &[1, 2, 3]);
        // query 0 → 1 (hit); 1 → 0 (hit); 2 → 3 (miss; class 1 has no other); 3 → 2 (miss),
        // then 1 (hit at K=2).
        assert_eq!(r, vec![0.5, 0.75, 0.75]);
    }
}
