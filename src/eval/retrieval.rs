//! Retrieval metrics of an embedded set: the chunked k-NN search feeding the metric
//! accumulator, so only one chunk of neighbours is ever held.
use tch::{Device, Kind, Tensor};

use crate::error::{HistError, Result};
use crate::eval::knn::{for_each_chunk, KnnOptions};
use crate::eval::metrics::{MetricsAccumulator, RetrievalMetrics};
use crate::eval::protocol::Split;

/// Recall@K for each K of `ks`, MAP@R and R-Precision of `embeddings` [N, D] (any float
/// kind, any device; the search runs there) with `labels` (one per row), under `split`.
pub fn retrieval_metrics(embeddings: &Tensor, labels: &[i64], split: &Split, ks: &[usize], knn: &KnnOptions) -> Result<RetrievalMetrics> {
    let n = labels.len() as i64;
    if embeddings.dim() != 2 || embeddings.size()[0] != n {
        return Err(HistError::input("embeddings", format!("expected [{n}, D] (one row per label), got {:?}", embeddings.size())));
    }
    if let Some(bad) = split.query_rows.iter().chain(&split.gallery_rows).find(|&&r| r < 0 || r >= n) {
        return Err(HistError::input("split", format!("row {bad} is outside [0, {n})")));
    }
    let device = embeddings.device();
    let rows = |r: &[i64]| Tensor::from_slice(r).to_device(device);
    let queries = embeddings.index_select(0, &rows(&split.query_rows));
    let gallery = embeddings.index_select(0, &rows(&split.gallery_rows));
    let label_of = |r: &[i64]| -> Vec<i64> { r.iter().map(|&i| labels[i as usize]).collect() };
    let query_labels = label_of(&split.query_rows);
    let gallery_labels = Tensor::from_slice(&label_of(&split.gallery_rows)).to_device(device);
    let r_counts = split.relevant_counts(labels);

    let mut acc = MetricsAccumulator::new(ks);
    let depth = acc.depth_needed(r_counts.iter().copied().max().unwrap_or(0));
    if depth == 0 {
        return Err(HistError::input("ks", "is empty; give at least one K such as --ks 1"));
    }
    for_each_chunk(&queries, &gallery, Some(&split.self_positions), depth, knn, |nb| {
        let (m, k) = (nb.indices.size()[0], nb.indices.size()[1]);
        let start = nb.start as usize;
        let mine = Tensor::from_slice(&query_labels[start..start + m as usize]).to_device(device).unsqueeze(1);
        let theirs = gallery_labels.index_select(0, &nb.indices.clamp_min(0).flatten(0, -1)).view([m, k]);
        // A −1 slot (the query's own entry, excluded) is never relevant.
        let relevant = theirs.eq_tensor(&mine).logical_and(&nb.indices.ge(0));
        let flat = Vec::<u8>::try_from(relevant.to_kind(Kind::Uint8).to_device(Device::Cpu).flatten(0, -1))?;
        let mut row = vec![false; k as usize];
        for (i, chunk) in flat.chunks(k.max(1) as usize).enumerate() {
            for (dst, &src) in row.iter_mut().zip(chunk) {
                *dst = src != 0;
            }
            acc.add(&row, r_counts[start + i]);
        }
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
