//! The transfer plan of each collective on rank `r` of `w` (w ≥ 2). Rank r's sends must
//! match rank r+1's receives chunk for chunk; the tests check that for every rank.
use std::ops::Range;

use super::engine::{Plan, RecvMode};

/// Byte range of segment `k` (of `world`) of an all_reduce over `numel` elements of
/// `elem_bytes` each: the first `numel % world` segments hold one element more.
pub fn all_reduce_segment(numel: usize, elem_bytes: usize, world: usize, k: usize) -> Range<usize> {
    let (base, extra) = (numel / world, numel % world);
    let start = k * base + k.min(extra);
    let len = base + usize::from(k < extra);
    start * elem_bytes..(start + len) * elem_bytes
}

/// Ring reduce-scatter then all-gather. Segment k starts at rank k and collects one
/// addition per hop, finishing (and being averaged) on rank k−1, which starts it
/// round the ring again to be copied verbatim.
pub(super) fn all_reduce(numel: usize, elem_bytes: usize, w: usize, r: usize, avg: bool, chunk: usize) -> Plan {
    let seg = |k: usize| all_reduce_segment(numel, elem_bytes, w, k);
    let mut plan = Plan::new(chunk);
    plan.send_local(seg(r));
    for s in 0..w - 1 {
        let mode = if s == w - 2 && avg { RecvMode::ReduceScale } else { RecvMode::Reduce };
        // Every partial sum is passed on; the last one (complete) opens the all-gather.
        plan.recv(seg((r + 2 * w - s - 1) % w), mode, true);
    }
    for s in 0..w - 1 {
        plan.recv(seg((r + w - s) % w), RecvMode::Copy, s < w - 2);
    }
    plan
}

/// Ring all-gather of `w` slots of `slot_bytes`; this rank's slot `r` is filled already.
pub(super) fn all_gather(slot_bytes: usize, w: usize, r: usize, chunk: usize) -> Plan {
    let slot = |k: usize| k * slot_bytes..(k + 1) * slot_bytes;
    let mut plan = Plan::new(chunk);
    plan.send_local(slot(r));
    for s in 0..w - 1 {
        plan.recv(slot((r + 2 * w - s - 1) % w), RecvMode::Copy, s < w - 2);
    }
    plan
}

/// A chain root → root+1 → … → root−1, each rank forwarding chunks as they land.
pub(super) fn broadcast(bytes: usize, w: usize, r: usize, root: usize, chunk: usize) -> Plan {
    let pos = (r + w - root) % w;
    let mut plan = Plan::new(chunk);
    if pos == 0 {
        plan.send_local(0..bytes);
    } else {
        plan.recv(0..bytes, RecvMode::Copy, pos < w - 1);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every rank's sends equal its successor's receives, range for range, and each
    /// rank's plan can run to the end one chunk at a time (no wait on a later step).
    fn check(w: usize, make: impl Fn(usize) -> Plan) {
        let plans: Vec<Plan> = (0..w).map(&make).collect();
        for r in 0..w {
            let next = &plans[(r + 1) % w];
            assert_eq!(plans[r].send_ranges(), next.recv_ranges(), "w={w}: rank {r} → {}", (r + 1) % w);
            assert!(plans[r].runs_in_order(), "w={w} rank {r}: plan waits on the future");
        }
    }

    #[test]
    fn segments_tile_the_tensor() {
        for (n, w) in [(0, 3), (1, 4), (7, 4), (1_000_003, 4), (10, 2)] {
            let segs: Vec<_> = (0..w).map(|k| all_reduce_segment(n, 4, w, k)).collect();
            assert_eq!(segs[0].start, 0);
            assert_eq!(segs[w - 1].end, 4 * n);
            assert!(segs.windows(2).all(|p| p[0].end == p[1].start));
            assert!(segs.iter().all(|s| s.len() / 4 <= n / w + 1 && s.len() / 4 >= n / w));
        }
    }

    #[test]
    fn plans_match_between_neighbours() {
        for w in 2..=6 {
            for n in [0, 1, 5, 64, 100_003] {
                for chunk in [8, 64, 1024] {
                    check(w, |r| all_reduce(n, 8, w, r, true, chunk));
                    check(w, |r| all_gather(n, w, r, chunk));
                    for root in 0..w {
                        check(w, |r| broadcast(n, w, r, root, chunk));
                    }
                }
            }
        }
    }
}
