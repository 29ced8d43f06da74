//! Recall@K of a same-source set (design §5), the quick metric the trainer logs; a thin
//! wrapper over the full suite's search and metric definitions.
use tch::Tensor;

use crate::eval::knn::KnnOptions;
use crate::eval::protocol::Split;
use crate::eval::retrieval::retrieval_metrics;

/// Fraction of queries with at least one same-class image among their K nearest others,
/// for each K in `ks`: every image is a query against all others, with cosine similarity.
/// As in the full suite (docs/evaluation.md): equal similarities are ranked by row index,
/// K beyond N − 1 is clamped, and images alone in their class are left out of the mean.
/// Every value is 0 when no image has another of its class (or N < 2).
pub fn recall_at_k(embeddings: &Tensor, labels: &[i64], ks: &[usize]) -> Vec<f64> {
    if labels.len() < 2 || ks.is_empty() {
        return vec![0.0; ks.len()];
    }
    match retrieval_metrics(embeddings, labels, &Split::same_source(labels.len()), ks, &KnnOptions::default()) {
        Ok(m) => m.recall.into_iter().map(|(_, v)| v).collect(),
        // Only "no query can score" reaches here with well-formed trainer inputs.
        Err(_) => vec![0.0; ks.len()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recall_counts_nearest_other_image() {
        // Points on a circle: 0 and 1 are close (class 0), 2 is alone in class 1, 3 is
        // near 2 but in class 0.
        let e = Tensor::from_slice(&[1.0f64, 0.0, 0.99, 0.14, 0.0, 1.0, 0.2, 0.98]).view([4, 2]);
        let r = recall_at_k(&e, &[0, 0, 1, 0], &[1, 2, 3]);
        // Query 2 is left out (no other class-1 image). 0 → 1 (hit); 1 → 0 (hit);
        // 3 → 2 (miss), then 1 (hit at K = 2).
        assert_eq!(r, vec![2.0 / 3.0, 1.0, 1.0]);
    }
}
