//! Retrieval metrics from each query's ranked neighbours: Recall@K, R-Precision and
//! MAP@R (Musgrave et al. 2020, "A Metric Learning Reality Check").
//!
//! For a query, R is the number of gallery entries other than its own row that share its
//! label. Queries with R = 0 (a class with one sample, or a query class absent from the
//! gallery) cannot score anything, so, as pytorch-metric-learning's AccuracyCalculator
//! does, they are left out of every average here: each metric is the mean over the
//! queries with R ≥ 1, and the number left out is reported alongside.
use crate::error::{HistError, Result};

/// The averaged metrics of one evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct RetrievalMetrics {
    /// (K, Recall@K): the fraction of scored queries with at least one same-label entry
    /// among their K nearest. K beyond the gallery is clamped to it.
    pub recall: Vec<(usize, f64)>,
    /// Mean over scored queries of (1/R) Σ_{i ≤ R} P(i)·rel(i).
    pub map_at_r: f64,
    /// Mean over scored queries of (same-label entries among the R nearest) / R.
    pub r_precision: f64,
    /// Queries that were scored (R ≥ 1).
    pub scored_queries: usize,
    /// Queries left out because R = 0.
    pub lone_queries: usize,
}

/// Running sums of the metrics, fed one ranked relevance list per query.
#[derive(Clone, Debug)]
pub struct MetricsAccumulator {
    ks: Vec<usize>,
    hits: Vec<u64>,
    map_sum: f64,
    r_precision_sum: f64,
    scored: usize,
    lone: usize,
}

impl MetricsAccumulator {
    /// An empty accumulator reporting Recall@K for each K of `ks`, in that order.
    pub fn new(ks: &[usize]) -> Self {
        MetricsAccumulator { ks: ks.to_vec(), hits: vec![0; ks.len()], map_sum: 0.0, r_precision_sum: 0.0, scored: 0, lone: 0 }
    }

    /// How many nearest neighbours [`add`](Self::add) needs for a query with the largest
    /// R `max_r`: enough for every K and for the top R.
    pub fn depth_needed(&self, max_r: usize) -> usize {
        self.ks.iter().copied().max().unwrap_or(0).max(max_r)
    }

    /// Adds one query. `relevant[j]` says whether its (j+1)-th nearest gallery entry
    /// shares its label; it must run at least min(depth, available) deep, where available
    /// is the number of gallery entries the query can retrieve. `r` is the query's R.
    pub fn add(&mut self, relevant: &[bool], r: usize) {
        let ranks: Vec<usize> = relevant.iter().enumerate().filter(|(_, &x)| x).map(|(i, _)| i).collect();
        self.add_ranks(&ranks, r);
    }

    /// Adds one query from the 0-based ranks, ascending, of its same-label gallery
    /// entries among its nearest: every such rank below min(depth, available) must be
    /// listed (as [`add`](Self::add) needs its list that deep); deeper ones may be.
    /// `r` is the query's R.
    pub fn add_ranks(&mut self, ranks: &[usize], r: usize) {
        if r == 0 {
            self.lone += 1;
            return;
        }
        self.scored += 1;
        if let Some(&first) = ranks.first() {
            for (slot, &k) in self.ks.iter().enumerate() {
                if first < k {
                    self.hits[slot] += 1;
                }
            }
        }
        // R never exceeds the available entries, so every rank below R is listed.
        let mut found = 0usize;
        let mut precision_sum = 0.0;
        for &rank in ranks.iter().take_while(|&&rank| rank < r) {
            found += 1;
            precision_sum += found as f64 / (rank + 1) as f64;
        }
        self.map_sum += precision_sum / r as f64;
        self.r_precision_sum += found as f64 / r as f64;
    }

    /// The averages; an error when no query had a same-label entry in the gallery.
    pub fn finish(self) -> Result<RetrievalMetrics> {
        if self.scored == 0 {
            return Err(HistError::input(
                "labels",
                format!("none of the {} queries has another row of its label in the gallery, so retrieval metrics are undefined; check the labels and masks", self.lone),
            ));
        }
        let n = self.scored as f64;
        Ok(RetrievalMetrics {
            recall: self.ks.iter().zip(&self.hits).map(|(&k, &h)| (k, h as f64 / n)).collect(),
            map_at_r: self.map_sum / n,
            r_precision: self.r_precision_sum / n,
            scored_queries: self.scored,
            lone_queries: self.lone,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_query_scores() {
        let mut acc = MetricsAccumulator::new(&[1, 2, 4]);
        // R = 3, hits at ranks 1, 3 and 5: MAP@R = (1/1 + 2/3)/3, R-Precision = 2/3.
        acc.add(&[true, false, true, false, true], 3);
        // R = 2, first hit at rank 2: MAP@R = (1/2)/2, R-Precision = 1/2.
        acc.add(&[false, true, false, false, false], 2);
        // R = 0: left out.
        acc.add(&[false; 5], 0);
        let m = acc.finish().expect("scored queries");
        // The same queries given as ranks score the same, bit for bit.
        let mut by_rank = MetricsAccumulator::new(&[1, 2, 4]);
        by_rank.add_ranks(&[0, 2, 4], 3);
        by_rank.add_ranks(&[1], 2);
        by_rank.add_ranks(&[], 0);
        assert_eq!(by_rank.finish().expect("scored queries"), m);
        assert_eq!(m.recall, vec![(1, 0.5), (2, 1.0), (4, 1.0)]);
        let map = ((1.0 + 2.0 / 3.0) / 3.0 + 0.25) / 2.0;
        assert!((m.map_at_r - map).abs() < 1e-15, "{}", m.map_at_r);
        assert!((m.r_precision - (2.0 / 3.0 + 0.5) / 2.0).abs() < 1e-15);
        assert_eq!((m.scored_queries, m.lone_queries), (2, 1));
    }

    #[test]
    fn only_lone_queries_is_an_error() {
        let mut acc = MetricsAccumulator::new(&[1]);
        acc.add(&[false], 0);
        assert!(acc.finish().is_err());
    }
}
