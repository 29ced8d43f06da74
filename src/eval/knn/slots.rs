//! What a query wants ranked: its target gallery entries (same label, never its own
//! entry), each with its exact similarity, in exact neighbour order — the order their
//! ranks will have. Only the first k can rank below k (the i-th in this order has at
//! least i entries ahead of it), so no more are kept.
//!
//! A query may also get a **sentinel** slot: a similarity floor L below which its
//! targets are presumed to rank k or later (L comes from a sample of its row, see
//! [`super::ranks`]). The sentinel is ranked like a target at similarity L that every
//! entry with exact similarity ≥ L is ahead of; once k entries are, every target below it
//! is settled without counting, and the search can skip everything under L. If fewer
//! than k turn out to be ahead of it, the presumption failed and the query is searched
//! again without a sentinel.
use std::collections::HashMap;

use super::exact::{dot, neighbour_order, Rows};

/// Gallery position of a sentinel slot: after every real entry of equal similarity, so
/// an entry is ahead of the sentinel exactly when its similarity is ≥ L.
pub(super) const SENTINEL: u32 = u32::MAX;

/// The same-label gallery positions of each query, own entry excluded, in gallery order.
pub(super) struct TargetLists {
    by_label: HashMap<i64, Vec<u32>>,
}

impl TargetLists {
    /// Groups the gallery by label.
    pub(super) fn new(gallery_labels: &[i64]) -> TargetLists {
        let mut by_label: HashMap<i64, Vec<u32>> = HashMap::new();
        for (pos, &label) in gallery_labels.iter().enumerate() {
            by_label.entry(label).or_default().push(pos as u32);
        }
        TargetLists { by_label }
    }

    /// Number of gallery entries with `label`.
    pub(super) fn count(&self, label: i64) -> usize {
        self.by_label.get(&label).map_or(0, Vec::len)
    }

    /// Gallery positions with `label`, `own` excluded.
    fn of(&self, label: i64, own: Option<u32>) -> impl Iterator<Item = u32> + '_ {
        self.by_label.get(&label).into_iter().flatten().copied().filter(move |&p| Some(p) != own)
    }
}

/// The slots of a set of queries, flat.
pub(super) struct Slots {
    /// The queries these slots cover (positions among all queries), in slot-set order.
    queries: Vec<usize>,
    /// Own gallery position of each covered query, if any.
    own: Vec<Option<u32>>,
    /// Slots of covered query i: offsets[i]..offsets[i + 1].
    offsets: Vec<usize>,
    /// Exact similarity of each slot, descending within a query (ties: position).
    exact: Vec<f64>,
    /// Gallery position of each slot ([`SENTINEL`] for a sentinel).
    positions: Vec<u32>,
    /// Index (within its query) of each covered query's sentinel, if it has one.
    sentinel: Vec<Option<usize>>,
}

impl Slots {
    /// Slots of `queries` (positions among all queries, whose labels, own gallery positions
    /// and normalised rows are `query_labels`, `own`, `query_rows`) for the `k` nearest of
    /// `gallery_rows`. `floors[i]`, when given, is the sentinel similarity of `queries[i]`
    /// (−∞: none); a sentinel is only placed where some kept target lies below it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(queries: Vec<usize>, query_labels: &[i64], own: &[Option<u32>], targets: &TargetLists, query_rows: &Rows, gallery_rows: &Rows, k: usize, floors: Option<&[f64]>) -> Slots {
        let mut slots = Slots { own: Vec::with_capacity(queries.len()), offsets: vec![0], exact: Vec::new(), positions: Vec::new(), sentinel: Vec::new(), queries: Vec::new() };
        let mut scored: Vec<(f64, u32)> = Vec::new();
        for (i, &q) in queries.iter().enumerate() {
            let row = query_rows.row(q);
            scored.clear();
            scored.extend(targets.of(query_labels[q], own[q]).map(|p| (dot(row, gallery_rows.row(p as usize)), p)));
            scored.sort_unstable_by(|a, b| neighbour_order(a.0, a.1, b.0, b.1));
            scored.truncate(k);
            let floor = floors.map_or(f64::NEG_INFINITY, |f| f[i]);
            let above = scored.partition_point(|&(s, _)| s >= floor);
            let sentinel = (above < scored.len()).then(|| {
                scored.insert(above, (floor, SENTINEL));
                above
            });
            slots.exact.extend(scored.iter().map(|s| s.0));
            slots.positions.extend(scored.iter().map(|s| s.1));
            slots.offsets.push(slots.exact.len());
            slots.sentinel.push(sentinel);
            slots.own.push(own[q]);
        }
        slots.queries = queries;
        slots
    }

    /// Number of covered queries.
    pub(super) fn len(&self) -> usize {
        self.queries.len()
    }

    /// Total slots.
    pub(super) fn total(&self) -> usize {
        self.exact.len()
    }

    /// Position among all queries of covered query `i`.
    pub(super) fn query(&self, i: usize) -> usize {
        self.queries[i]
    }

    /// Own gallery position of covered query `i`.
    pub(super) fn own(&self, i: usize) -> Option<u32> {
        self.own[i]
    }

    /// Index of covered query `i`'s first slot in the flat arrays.
    pub(super) fn offset(&self, i: usize) -> usize {
        self.offsets[i]
    }

    /// Exact similarities of covered query `i`'s slots, descending.
    pub(super) fn exact(&self, i: usize) -> &[f64] {
        &self.exact[self.offsets[i]..self.offsets[i + 1]]
    }

    /// Gallery positions of covered query `i`'s slots.
    pub(super) fn positions(&self, i: usize) -> &[u32] {
        &self.positions[self.offsets[i]..self.offsets[i + 1]]
    }

    /// Index of covered query `i`'s sentinel among its slots.
    pub(super) fn sentinel(&self, i: usize) -> Option<usize> {
        self.sentinel[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Tensor;

    #[test]
    fn slots_follow_neighbour_order_with_the_sentinel_in_place() {
        // Query 0 (label 1) and its same-label entries 1..4; entries 2 and 3 are equal rows.
        let x = Tensor::from_slice(&[1.0f64, 0.0, 0.8, 0.6, 0.6, 0.8, 0.6, 0.8, 0.0, 1.0, 1.0, 0.1]).view([6, 2]);
        let rows = Rows::normalized(&x).expect("rows");
        let labels = [1, 1, 1, 1, 1, 2];
        let own: Vec<Option<u32>> = (0..6).map(Some).collect();
        let targets = TargetLists::new(&labels);
        let slots = Slots::new(vec![0], &labels, &own, &targets, &rows, &rows, 10, Some(&[0.5]));
        assert_eq!(slots.positions(0), &[1, 2, 3, SENTINEL, 4]);
        assert_eq!(slots.sentinel(0), Some(3));
        assert_eq!(slots.exact(0)[1], slots.exact(0)[2]);
        // A floor below every target: no sentinel. k = 2: only two targets kept.
        let slots = Slots::new(vec![0, 4], &labels, &own, &targets, &rows, &rows, 2, Some(&[-0.5, -1.0]));
        assert_eq!((slots.positions(0), slots.sentinel(0)), (&[1u32, 2][..], None));
        assert_eq!(slots.positions(1), &[2, 3]);
        assert_eq!((slots.len(), slots.total(), slots.query(1), slots.own(1)), (2, 4, 4, Some(4)));
    }
}
