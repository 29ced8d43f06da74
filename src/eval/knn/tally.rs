//! One worker's counts of the entries ahead of each slot (see [`super::slots`]), fed
//! products one at a time, and the merge of every worker's counts into ranks.
//!
//! For a product p of (query, entry), |p − exact| ≤ δ, so against a slot of exact
//! similarity s the entry is surely ahead when s < p − δ, surely behind when s > p + δ,
//! and otherwise a near-tie settled by the exact similarity (computed once per entry).
//! The slots are in descending order, so the surely-ahead ones are a suffix: one count
//! at its first index (`ahead_from`) stands for all of them, and a slot's count is the
//! prefix sum up to it plus its near-ties found ahead (`tie_ahead`).
//!
//! A slot with k entries ahead ranks k or later, and so does every slot after it: the
//! worker then drops it, and each query's cut rises to its lowest live slot's s − δ —
//! no entry below that can be ahead of a live slot, so the scan skips it. Each worker
//! sees a part of each row, so its counts are partial; a slot one worker dropped is
//! settled (k or later) and a slot all kept has the sum of their counts as its rank.
use super::exact::{ahead, dot, Rows};
use super::scan::Element;
use super::slots::Slots;

/// A worker's counts for every query of a [`Slots`].
pub(super) struct Tally<'a, E: Element> {
    slots: &'a Slots,
    query_rows: &'a Rows,
    gallery_rows: &'a Rows,
    k: u32,
    delta: f64,
    /// Entries surely ahead of the slot at this index and of every later one.
    ahead_from: Vec<u32>,
    /// Near-ties found ahead of each slot.
    tie_ahead: Vec<u32>,
    /// Per query: index of its lowest live slot, −1 when none is left.
    lowest: Vec<i32>,
    /// Per query: entries ahead of its lowest live slot.
    lowest_count: Vec<u32>,
    /// Per query: the smallest product that can still matter, in the product kind.
    cuts: Vec<E>,
}

impl<'a, E: Element> Tally<'a, E> {
    /// Empty counts for the `k` nearest under the product error bound `delta`.
    pub(super) fn new(slots: &'a Slots, query_rows: &'a Rows, gallery_rows: &'a Rows, k: usize, delta: f64) -> Self {
        let n = slots.len();
        let mut tally = Tally {
            slots,
            query_rows,
            gallery_rows,
            k: k.min(u32::MAX as usize) as u32,
            delta,
            ahead_from: vec![0; slots.total()],
            tie_ahead: vec![0; slots.total()],
            // The sentinel, when there is one, is the lowest slot counted from the start.
            lowest: (0..n).map(|i| slots.sentinel(i).map_or(slots.exact(i).len() as i32 - 1, |s| s as i32)).collect(),
            lowest_count: vec![0; n],
            cuts: vec![E::floor_of(f64::INFINITY); n],
        };
        for i in 0..n {
            tally.settle(i);
        }
        tally
    }

    /// The cut of every covered query, in the product kind (for column scans).
    pub(super) fn cuts(&self) -> &[E] {
        &self.cuts
    }

    /// The cut of covered query `i`.
    pub(super) fn cut(&self, i: usize) -> E {
        self.cuts[i]
    }

    /// Counts gallery entry `pos`, whose product with covered query `i` is `product`.
    pub(super) fn offer(&mut self, i: usize, pos: u32, product: f64) {
        let lowest = self.lowest[i];
        if lowest < 0 || Some(pos) == self.slots.own(i) {
            return;
        }
        let live = lowest as usize + 1;
        let exact = &self.slots.exact(i)[..live];
        let (above, below) = (product + self.delta, product - self.delta);
        let first_tie = exact.partition_point(|&s| s > above);
        if first_tie == live {
            return;
        }
        let first_ahead = exact.partition_point(|&s| s >= below);
        let base = self.slots.offset(i);
        if first_ahead < live {
            self.ahead_from[base + first_ahead] += 1;
            self.lowest_count[i] += 1;
        }
        if first_tie < first_ahead.min(live) {
            let e = dot(self.query_rows.row(self.slots.query(i)), self.gallery_rows.row(pos as usize));
            let positions = self.slots.positions(i);
            for slot in first_tie..first_ahead.min(live) {
                if ahead(e, pos, exact[slot], positions[slot]) {
                    self.tie_ahead[base + slot] += 1;
                    if slot == lowest as usize {
                        self.lowest_count[i] += 1;
                    }
                }
            }
        }
        if self.lowest_count[i] >= self.k {
            self.settle(i);
        }
    }

    /// Drops query `i`'s lowest slots while k entries are ahead of them, and sets its cut.
    fn settle(&mut self, i: usize) {
        let base = self.slots.offset(i);
        while self.lowest[i] >= 0 && self.lowest_count[i] >= self.k {
            let dropped = base + self.lowest[i] as usize;
            self.lowest[i] -= 1;
            if self.lowest[i] >= 0 {
                // Entries counted from the dropped slot on are not ahead of the one above.
                self.lowest_count[i] = self.lowest_count[i] - self.ahead_from[dropped] - self.tie_ahead[dropped] + self.tie_ahead[dropped - 1];
            }
        }
        self.cuts[i] = match self.lowest[i] {
            l if l < 0 => E::floor_of(f64::INFINITY),
            l => E::floor_of(self.slots.exact(i)[l as usize] - self.delta),
        };
    }
}

/// What the merged counts say of one query.
#[derive(Debug, PartialEq)]
pub(super) enum Outcome {
    /// The ranks (ascending) of its targets that rank below k.
    Ranks(Vec<usize>),
    /// Its sentinel had fewer than k entries ahead: search it again without one.
    Recheck,
}

/// Merges the workers' counts for covered query `i`.
pub(super) fn merge<E: Element>(tallies: &[Tally<'_, E>], i: usize, k: usize) -> Outcome {
    let Some(first) = tallies.first() else { return Outcome::Ranks(Vec::new()) };
    let slots = first.slots;
    let base = slots.offset(i);
    // A slot dropped by any worker ranks k or later; below that, the counts are complete.
    let live = tallies.iter().map(|t| t.lowest[i] + 1).min().unwrap_or(0).max(0) as usize;
    // Entries ahead of each live slot: the surely-ahead counts summed up to it, plus its
    // near-ties found ahead.
    let mut prefix = 0usize;
    let counts: Vec<usize> = (base..base + live)
        .map(|slot| {
            prefix += tallies.iter().map(|t| t.ahead_from[slot] as usize).sum::<usize>();
            prefix + tallies.iter().map(|t| t.tie_ahead[slot] as usize).sum::<usize>()
        })
        .collect();
    let real_end = match slots.sentinel(i) {
        Some(s) if s < live && counts[s] < k => return Outcome::Recheck,
        Some(s) => s,
        None => slots.exact(i).len(),
    };
    // Targets in neighbour order have rising ranks: those below k are a prefix.
    let ranks = counts[..real_end.min(live)].iter().copied().take_while(|&rank| rank < k).collect();
    Outcome::Ranks(ranks)
}

#[cfg(test)]
mod tests {
    use super::super::slots::TargetLists;
    use super::*;
    use tch::{Device, Kind, Tensor};

    /// Brute force: each target's rank among all entries but the query's own.
    fn brute_ranks(rows: &Rows, labels: &[i64], q: usize, k: usize) -> Vec<usize> {
        let s = |p: usize| dot(rows.row(q), rows.row(p));
        let mut ranks: Vec<usize> = (0..rows.len())
            .filter(|&t| t != q && labels[t] == labels[q])
            .map(|t| (0..rows.len()).filter(|&p| p != q && ahead(s(p), p as u32, s(t), t as u32)).count())
            .filter(|&r| r < k)
            .collect();
        ranks.sort_unstable();
        ranks
    }

    #[test]
    fn counts_split_over_workers_give_exact_ranks() {
        tch::manual_seed(11);
        // Few distinct rows: exact ties everywhere; products from float32 rows.
        let base = Tensor::randn([7, 6], (Kind::Double, Device::Cpu));
        let x = base.index_select(0, &Tensor::randint(7, [60], (Kind::Int64, Device::Cpu)));
        let rows = Rows::normalized(&x).expect("rows");
        let labels: Vec<i64> = (0..60).map(|i| (i * 7 % 5) as i64).collect();
        let own: Vec<Option<u32>> = (0..60).map(Some).collect();
        let targets = TargetLists::new(&labels);
        let product = |q: usize, p: usize| rows.row(q).iter().zip(rows.row(p)).map(|(a, b)| *a as f32 * *b as f32).sum::<f32>() as f64;
        let delta = super::super::bound::similarity_error(6, true).expect("bound");
        for k in [1, 4, 11, 59] {
            for floor in [None, Some(0.2), Some(0.99)] {
                let floors = vec![floor.unwrap_or(f64::NEG_INFINITY); 60];
                let slots = Slots::new((0..60).collect(), &labels, &own, &targets, &rows, &rows, k, floor.map(|_| &floors[..]));
                // Three workers, entries dealt round-robin, in a scrambled order.
                let mut tallies: Vec<Tally<'_, f32>> = (0..3).map(|_| Tally::new(&slots, &rows, &rows, k, delta)).collect();
                for q in 0..60 {
                    for j in 0..60 {
                        let p = (j * 37 + q) % 60;
                        let t = &mut tallies[j % 3];
                        if product(q, p) >= t.cut(q) as f64 {
                            t.offer(q, p as u32, product(q, p));
                        }
                    }
                }
                for q in 0..60 {
                    match merge(&tallies, q, k) {
                        Outcome::Ranks(r) => assert_eq!(r, brute_ranks(&rows, &labels, q, k), "query {q}, k {k}, floor {floor:?}"),
                        Outcome::Recheck => {
                            // Only when fewer than k entries reach the floor.
                            let f = floor.expect("recheck needs a sentinel");
                            let reach = (0..60).filter(|&p| p != q && dot(rows.row(q), rows.row(p)) >= f).count();
                            assert!(reach < k, "query {q}: recheck with {reach} ≥ {k} entries at the floor");
                        }
                    }
                }
            }
        }
    }
}
