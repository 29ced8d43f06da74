//! The whole metric suite of one embedded set (design §5): Recall@K, MAP@R, R-Precision
//! from the exact k-NN search and NMI from k-means with k = number of query classes.
use std::collections::HashSet;

use tch::{Kind, Tensor};

use crate::error::{HistError, Result};
use crate::eval::kmeans::{kmeans, KMeansOptions};
use crate::eval::knn::{normalize_rows, KnnOptions};
use crate::eval::nmi::nmi;
use crate::eval::protocol::Split;
use crate::eval::report::EvalReport;
use crate::eval::retrieval::retrieval_metrics;

/// What to compute and how.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalOptions {
    /// The K of Recall@K, reported in this order.
    pub ks: Vec<usize>,
    /// The k-NN search.
    pub knn: KnnOptions,
    /// The k-means behind NMI; `None` skips NMI.
    pub kmeans: Option<KMeansOptions>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions { ks: vec![1, 2, 4, 8], knn: KnnOptions::default(), kmeans: Some(KMeansOptions::default()) }
    }
}

/// Evaluates `embeddings` [N, D] (float, on the device to compute on) with `labels` (one
/// per row) under `split`.
///
/// NMI clusters the queries (L2-normalised, as the retrieval sees them) into as many
/// clusters as they have distinct labels, as pytorch-metric-learning does.
pub fn evaluate(embeddings: &Tensor, labels: &[i64], split: &Split, options: &EvalOptions) -> Result<EvalReport> {
    if !embeddings.is_floating_point() {
        return Err(HistError::input("embeddings", format!("must be float32 or float64, got {:?}", embeddings.kind())));
    }
    if embeddings.isfinite().logical_not().any().int64_value(&[]) != 0 {
        return Err(HistError::input("embeddings", "contain NaN or infinite values; check the model's output"));
    }
    let retrieval = retrieval_metrics(embeddings, labels, split, &options.ks, &options.knn)?;
    let clusters = match &options.kmeans {
        None => None,
        Some(km) => {
            let rows = Tensor::from_slice(&split.query_rows).to_device(embeddings.device());
            let points = normalize_rows(&embeddings.index_select(0, &rows), Kind::Double);
            let query_labels: Vec<i64> = split.query_rows.iter().map(|&r| labels[r as usize]).collect();
            let k = query_labels.iter().collect::<HashSet<_>>().len();
            let found = kmeans(&points, k, km)?;
            let score = nmi(&query_labels, &found.assignments);
            Some((found, score))
        }
    };
    Ok(EvalReport {
        retrieval,
        nmi: clusters.as_ref().map(|c| c.1),
        clustering: clusters.map(|c| c.0),
        queries: split.query_rows.len(),
        gallery: split.gallery_rows.len(),
        same_source: split.is_same_source(),
    })
}
