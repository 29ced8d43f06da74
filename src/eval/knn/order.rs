//! Exact order among a query's candidates: by exact similarity, largest first, equal
//! similarities by gallery position, smallest first. Two uses: the full ordered list of
//! the k nearest, and the ranks of a few chosen entries (a query's same-label entries,
//! all the retrieval metrics need), which re-scores only their near-ties.
use std::cmp::Ordering;

use super::exact::{dot, Rows};
use super::scan::Candidate;

/// Whether (similarity `a`, position `pa`) comes before (`b`, `pb`).
fn ahead(a: f64, pa: u32, b: f64, pb: u32) -> bool {
    a > b || (a == b && pa < pb)
}

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

/// Targets up to which each is located by a scan of the candidates; more are located by
/// binary search after sorting the candidates once.
const FEW_TARGETS: usize = 16;

/// The ranks (0-based, ascending) in the exact order of the candidates `is_target`
/// selects, for those ranked below `k`. `candidates` must hold every entry of the exact
/// k nearest; `delta` bounds |product − exact| for every candidate.
///
/// An entry whose product exceeds a target's by more than 2δ is certainly ahead of it,
/// one below by more than 2δ certainly behind; only the entries in between (its
/// near-ties) are re-scored. Counting within the candidates is exact for ranks below k:
/// everything ahead of such a target is among the k nearest, hence a candidate; and a
/// target ranked k or later has all k nearest ahead of it, so its count reaches k too.
pub(super) fn target_ranks(query: &[f64], gallery: &Rows, candidates: &mut [Candidate], k: usize, delta: f64, is_target: impl Fn(u32) -> bool) -> Vec<usize> {
    let find_targets = |c: &[Candidate]| -> Vec<usize> { (0..c.len()).filter(|&i| is_target(c[i].pos)).collect() };
    let mut targets = find_targets(candidates);
    let sorted = targets.len() > FEW_TARGETS;
    if sorted {
        candidates.sort_unstable_by(|a, b| b.approx.partial_cmp(&a.approx).unwrap_or(Ordering::Equal));
        targets = find_targets(candidates);
    }
    let candidates: &[Candidate] = candidates;
    let mut exact = vec![f64::NAN; candidates.len()];
    let mut exact_at = |i: usize| {
        if exact[i].is_nan() {
            exact[i] = dot(query, gallery.row(candidates[i].pos as usize));
        }
        exact[i]
    };
    let mut ranks = Vec::new();
    for t in targets {
        let target = candidates[t];
        let (above, below) = (target.approx + 2.0 * delta, target.approx - 2.0 * delta);
        let (surely_ahead, ties): (usize, Vec<usize>) = if sorted {
            let first = candidates.partition_point(|c| c.approx > above);
            (first, (first..candidates.partition_point(|c| c.approx >= below)).collect())
        } else {
            let surely = candidates.iter().filter(|c| c.approx > above).count();
            (surely, (0..candidates.len()).filter(|&i| candidates[i].approx <= above && candidates[i].approx >= below).collect())
        };
        if surely_ahead >= k {
            continue;
        }
        let s = exact_at(t);
        let rank = surely_ahead + ties.into_iter().filter(|&i| i != t && ahead(exact_at(i), candidates[i].pos, s, target.pos)).count();
        if rank < k {
            ranks.push(rank);
        }
    }
    ranks.sort_unstable();
    ranks
}
