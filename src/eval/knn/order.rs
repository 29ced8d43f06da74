//! Exact order among a query's candidates: by exact similarity, largest first, equal
//! similarities by gallery position, smallest first.
use super::exact::{dot, neighbour_order, Rows};
use super::select::Candidate;

/// The `k` nearest of `candidates` (a superset of them, see [`super::select`]) in exact
/// order, as (gallery position, exact similarity); every candidate is re-scored.
pub(super) fn nearest(query: &[f64], gallery: &Rows, candidates: &[Candidate], k: usize) -> Vec<(u32, f64)> {
    let mut scored: Vec<(u32, f64)> = candidates.iter().map(|c| (c.pos, dot(query, gallery.row(c.pos as usize)))).collect();
    scored.sort_unstable_by(|a, b| neighbour_order(a.1, a.0, b.1, b.0));
    scored.truncate(k);
    scored
}
