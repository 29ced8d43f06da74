//! Exact order among a query's candidates: by exact similarity, largest first, equal
//! similarities by gallery position, smallest first.
use std::cmp::Ordering;

use super::exact::{dot, Rows};
use super::select::Candidate;
use super::slots::ahead;

/// The `k` nearest of `candidates` (a superset of them, see [`super::select`]) in exact
/// order, as (gallery position, exact similarity); every candidate is re-scored.
pub(super) fn nearest(query: &[f64], gallery: &Rows, candidates: &[Candidate], k: usize) -> Vec<(u32, f64)> {
    let mut scored: Vec<(u32, f64)> = candidates.iter().map(|c| (c.pos, dot(query, gallery.row(c.pos as usize)))).collect();
    scored.sort_unstable_by(|a, b| match ahead(a.1, a.0, b.1, b.0) {
        true => Ordering::Less,
        false if ahead(b.1, b.0, a.1, a.0) => Ordering::Greater,
        false => Ordering::Equal,
    });
    scored.truncate(k);
    scored
}
