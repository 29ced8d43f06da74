//! Retrieval metrics of an embedded set: the chunked exact k-NN search reporting, per
//! query, the ranks of its same-label gallery entries, which is all the metrics need.
use tch::Tensor;

use crate::error::{HistError, Result};
use crate::eval::knn::{for_each_target_ranks, KnnOptions};
use crate::eval::metrics::{MetricsAccumulator, RetrievalMetrics};
use crate::eval::protocol::Split;

/// Recall@K for each K of `ks`, MAP@R and R-Precision of `embeddings` [N, D] (any float
/// kind, any device; the products run there) with `labels` (one per row), under `split`.
pub fn retrieval_metrics(embeddings: &Tensor, labels: &[i64], split: &Split, ks: &[usize], knn: &KnnOptions) -> Result<RetrievalMetrics> {
    let n = labels.len() as i64;
    if embeddings.dim() != 2 || embeddings.size()[0] != n {
        return Err(HistError::input("embeddings", format!("expected [{n}, D] (one row per label), got {:?}", embeddings.size())));
    }
    if let Some(bad) = split.query_rows.iter().chain(&split.gallery_rows).find(|&&r| r < 0 || r >= n) {
        return Err(HistError::input("split", format!("row {bad} is outside [0, {n})")));
    }
    let pick = |r: &[i64]| -> Tensor {
        // Every row in order (the same-source protocol): no copy.
        if r.len() as i64 == n && r.iter().enumerate().all(|(i, &row)| row == i as i64) {
            return embeddings.shallow_clone();
        }
        embeddings.index_select(0, &Tensor::from_slice(r).to_device(embeddings.device()))
    };
    let queries = pick(&split.query_rows);
    // The same rows as queries and gallery: one tensor, so the search can use the symmetry.
    let gallery = if split.is_same_source() { queries.shallow_clone() } else { pick(&split.gallery_rows) };
    let label_of = |r: &[i64]| -> Vec<i64> { r.iter().map(|&i| labels[i as usize]).collect() };
    let query_labels = label_of(&split.query_rows);
    let gallery_labels = label_of(&split.gallery_rows);
    let r_counts = split.relevant_counts(labels);

    let mut acc = MetricsAccumulator::new(ks);
    let depth = acc.depth_needed(r_counts.iter().copied().max().unwrap_or(0));
    if depth == 0 {
        return Err(HistError::input("ks", "is empty; give at least one K such as --ks 1"));
    }
    for_each_target_ranks(&queries, &gallery, Some(&split.self_positions), &query_labels, &gallery_labels, depth, knn, |query, ranks| {
        acc.add_ranks(ranks, r_counts[query]);
        Ok(())
    })?;
    acc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicated_rows_rank_by_position() {
        // Rows 1, 2, 3 are identical; query 0 ties them and must take them in row order.
        let e = Tensor::from_slice(&[1.0f64, 0.0, 0.6, 0.8, 0.6, 0.8, 0.6, 0.8]).view([4, 2]);
        let m = retrieval_metrics(&e, &[0, 1, 0, 0], &Split::same_source(4), &[1, 2], &KnnOptions::default()).expect("metrics");
        // Query 0 (R = 2): ties 1, 2, 3 in row order → miss, hit, hit.
        // Query 1 (R = 0): left out.
        // Query 2 (R = 2): 1 and 3 tie at similarity 1 ahead of 0 → miss, hit, hit; query 3 alike.
        // Each scored query: first hit at rank 2, MAP@R (1/2)/2, R-Precision 1/2.
        assert_eq!(m.lone_queries, 1);
        assert_eq!(m.recall, vec![(1, 0.0), (2, 1.0)]);
        assert!((m.map_at_r - 0.25).abs() < 1e-15, "{}", m.map_at_r);
        assert!((m.r_precision - 0.5).abs() < 1e-15, "{}", m.r_precision);
    }
}
