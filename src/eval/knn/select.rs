//! Candidates of one query: a small superset of its k nearest gallery entries by exact
//! similarity, found from its row of product similarities with one vectorised pass.
//!
//! With δ the product's error bound and t̂ the k-th largest product similarity, the exact
//! k-th largest t satisfies t ≥ t̂ − δ (k entries have product ≥ t̂, so exact ≥ t̂ − δ), so
//! an entry with product < t̂ − 2δ has exact < t and is never among the k nearest: the
//! candidates are the entries with product ≥ t̂ − 2δ.
//!
//! Finding t̂ would take a selection over the whole row, so the products visit the
//! gallery in tiles, a sample of it first ([`ColumnOrder`]): the sample gives a threshold
//! t_s a little below t̂, and every tile (the sample's included) is scanned for products
//! ≥ t_s − 2δ while it is still in cache. When at least k of those reach t_s (so
//! t̂ ≥ t_s), the exact cut t̂ − 2δ is applied to that short list; otherwise (rare) the
//! row's products are recomputed and selected in full. For small k, t_s is the sample's
//! own k-th largest, which never fails that check.
use std::cmp::Ordering;
use std::ops::Range;

use super::scan::Element;

/// A gallery entry that may belong among a query's nearest: its position and its
/// similarity from the matrix product.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Candidate {
    /// Gallery position.
    pub pos: u32,
    /// Similarity from the product (within the error bound of the exact one).
    pub approx: f64,
}

/// Sample threshold rank for large k: the sample's ⌈1.5·k/stride⌉-th largest value with
/// stride ⌊k / 32⌋, so about 1.5·k entries of the full row reach it, and fewer than k
/// (which sends the row to a full selection) only with probability ≈ 1%.
const SAMPLE_RANK: usize = 32;

/// Gallery columns per product tile after the sample: a [chunk, 2048] float32 tile (9 MiB
/// at SOP's default chunk) stays in cache from the product to the scan.
pub(super) const TILE_COLUMNS: usize = 2048;

/// The sample takes runs of this many neighbouring entries, so it touches few cache lines.
const RUN: usize = 16;

/// Smallest stride of [`ColumnOrder::for_threshold`]: its sample costs at most 1/8 of the
/// products of a full search.
const MIN_FLOOR_STRIDE: usize = 8;

/// Largest first; the inputs are finite.
fn descending(a: &f64, b: &f64) -> Ordering {
    b.partial_cmp(a).unwrap_or(Ordering::Equal)
}

/// The `rank`-th largest (1-based) of `values`, which it reorders.
fn largest(values: &mut [f64], rank: usize) -> f64 {
    *values.select_nth_unstable_by(rank - 1, descending).1
}

/// The `rank`-th largest (1-based) of a row's products `values` at gallery `positions`,
/// the query's `own` entry left out; `None` when fewer than `rank` remain.
pub(super) fn kth_product<E: Element>(values: &[E], positions: &[u32], own: Option<u32>, rank: usize, scratch: &mut Vec<f64>) -> Option<f64> {
    scratch.clear();
    scratch.extend(values.iter().zip(positions).filter(|(_, &p)| Some(p) != own).map(|(v, _)| v.value()));
    (scratch.len() >= rank).then(|| largest(scratch, rank))
}

/// The order in which the products visit the gallery: a sample of it first (runs of
/// [`RUN`] entries, one run every RUN·stride), then every other entry in gallery order.
pub(super) struct ColumnOrder {
    /// Gallery position of each product column.
    pub(super) positions: Vec<u32>,
    /// Columns [0, sample) hold the sample; all of them when the gallery is too small
    /// (for this k) to be worth sampling.
    sample: usize,
    /// Gallery entries per sampled entry; 1 when the sample is the whole gallery.
    stride: usize,
    /// For large k, the threshold's expected entries above it in the row, in halves of
    /// k: 3 (1.5·k), or 6 (3·k) when the stride is raised to keep the sample small.
    margin: usize,
}

impl ColumnOrder {
    /// The order for a gallery of `gallery` entries searched `k` deep.
    pub(super) fn new(gallery: usize, k: usize) -> ColumnOrder {
        // Large k: a sample rank that needs checking. Small k: the sample's k-th largest,
        // which at least k entries always reach (the sample is part of the row); stride
        // √(G/k) balances the sample against the ≈ k·stride entries it lets through.
        let stride = if k >= 2 * SAMPLE_RANK { k / SAMPLE_RANK } else { (gallery / k.max(1)).isqrt() };
        ColumnOrder::with_stride(gallery, stride, 3)
    }

    /// As [`Self::new`], but with a sample of at most 1/[`MIN_FLOOR_STRIDE`] of the gallery:
    /// for a search that needs only the threshold, not the sample's products. Where that
    /// raises the stride above k/32, the threshold aims at 3·k entries rather than 1.5·k,
    /// so that its smaller rank still reaches k with high probability (rank ≥ 24: fewer
    /// than k entries above it takes a 3.3-sigma shortfall).
    pub(super) fn for_threshold(gallery: usize, k: usize) -> ColumnOrder {
        if k < 2 * SAMPLE_RANK {
            return ColumnOrder::new(gallery, k);
        }
        let stride = k / SAMPLE_RANK;
        match stride < MIN_FLOOR_STRIDE {
            true => ColumnOrder::with_stride(gallery, MIN_FLOOR_STRIDE, 6),
            false => ColumnOrder::with_stride(gallery, stride, 3),
        }
    }

    fn with_stride(gallery: usize, stride: usize, margin: usize) -> ColumnOrder {
        if stride < 2 {
            return ColumnOrder { positions: (0..gallery as u32).collect(), sample: gallery, stride: 1, margin };
        }
        let in_sample: Vec<bool> = (0..gallery).map(|j| j % (RUN * stride) < RUN).collect();
        let sampled = (0..gallery).filter(|&j| in_sample[j]);
        let rest = (0..gallery).filter(|&j| !in_sample[j]);
        let positions: Vec<u32> = sampled.chain(rest).map(|j| j as u32).collect();
        ColumnOrder { sample: in_sample.iter().filter(|&&s| s).count(), positions, stride, margin }
    }

    /// Column ranges of the tiles, in order: the sample, then [`TILE_COLUMNS`] at a time.
    pub(super) fn tiles(&self) -> Vec<Range<usize>> {
        let g = self.positions.len();
        let mut tiles = Vec::new();
        tiles.push(0..self.sample);
        let mut start = self.sample;
        while start < g {
            tiles.push(start..(start + TILE_COLUMNS).min(g));
            start += TILE_COLUMNS;
        }
        tiles
    }

    /// The sampled gallery positions and the rank in the sample of the threshold for a
    /// row needing `k` neighbours; `None` when the gallery is too small to sample.
    pub(super) fn sample(&self, k: usize) -> Option<(&[u32], usize)> {
        (self.stride > 1).then(|| (&self.positions[..self.sample], self.rank(k)))
    }

    /// Rank in the sample of the threshold for a row needing `k` neighbours.
    fn rank(&self, k: usize) -> usize {
        if self.stride == 1 || k < 2 * SAMPLE_RANK {
            k
        } else {
            (self.margin * k).div_ceil(2 * self.stride)
        }
    }
}

/// One query's candidate search, fed its products a tile at a time.
pub(super) struct RowSelect {
    own: Option<u32>,
    k: usize,
    /// t_s: set by the sample tile (−∞ when every entry is a candidate); NaN before.
    threshold: f64,
    found: Vec<Candidate>,
    /// Tile columns at or above the cut, reused from tile to tile.
    hits: Vec<u32>,
}

impl RowSelect {
    /// A query needing its `k` nearest (at most the entries left to it), never `own`.
    pub(super) fn new(own: Option<u32>, k: usize) -> RowSelect {
        RowSelect { own, k, threshold: f64::NAN, found: Vec::new(), hits: Vec::new() }
    }

    /// Takes in the products `values` of the tile over `columns`; the first tile must be
    /// the sample (`columns` starting at 0).
    pub(super) fn absorb<E: Element>(&mut self, values: &[E], columns: Range<usize>, order: &ColumnOrder, delta: f64, scratch: &mut Vec<f64>) {
        if self.k == 0 {
            return;
        }
        if self.threshold.is_nan() {
            // A sample smaller than the rank (a tiny gallery) lets every entry through.
            self.threshold = kth_product(values, &order.positions[columns.clone()], self.own, order.rank(self.k), scratch).unwrap_or(f64::NEG_INFINITY);
        }
        let cut = self.threshold - 2.0 * delta;
        self.hits.clear();
        // The kind's cut may let a few entries just below `cut` through: checked below.
        E::mark(values, E::floor_of(cut), None, &mut self.hits, &mut Vec::new());
        // Tile columns to gallery positions; drop the own entry and any just below the cut.
        for &j in &self.hits {
            let c = Candidate { pos: order.positions[columns.start + j as usize], approx: values[j as usize].value() };
            if c.approx >= cut && Some(c.pos) != self.own {
                self.found.push(c);
            }
        }
    }

    /// The candidates once every tile is in, or `None` when the sample threshold was too
    /// high (then [`Self::from_full_row`] must take over).
    pub(super) fn finish(self, delta: f64, scratch: &mut Vec<f64>) -> Option<Vec<Candidate>> {
        if self.k == 0 {
            return Some(Vec::new());
        }
        let reached = self.found.iter().filter(|c| c.approx >= self.threshold).count();
        (reached >= self.k).then(|| within_reach(self.found, self.k, delta, scratch))
    }

    /// The candidates from the row's products over every column, in column order.
    pub(super) fn from_full_row<E: Element>(values: &[E], own: Option<u32>, k: usize, order: &ColumnOrder, delta: f64, scratch: &mut Vec<f64>) -> Vec<Candidate> {
        let mut row = RowSelect::new(own, k);
        if k == 0 {
            return Vec::new();
        }
        // k is at most the entries left to the query, so the k-th largest exists.
        row.threshold = kth_product(values, &order.positions, own, k, scratch).unwrap_or(f64::NEG_INFINITY);
        row.absorb(values, 0..values.len(), order, delta, scratch);
        row.found
    }
}

/// `found` (which holds every entry of the row at or above its k-th largest product)
/// cut to product ≥ t̂ − 2δ.
fn within_reach(mut found: Vec<Candidate>, k: usize, delta: f64, scratch: &mut Vec<f64>) -> Vec<Candidate> {
    scratch.clear();
    scratch.extend(found.iter().map(|c| c.approx));
    let cut = largest(scratch, k) - 2.0 * delta;
    found.retain(|c| c.approx >= cut);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute force: every entry but `own` whose value is ≥ (k-th largest) − 2δ.
    fn expected(row: &[f32], own: Option<usize>, k: usize, delta: f64) -> Vec<u32> {
        let mut v: Vec<f64> = row.iter().enumerate().filter(|&(j, _)| Some(j) != own).map(|(_, &x)| x as f64).collect();
        v.sort_by(descending);
        let cut = v[k - 1] - 2.0 * delta;
        (0..row.len()).filter(|&j| Some(j) != own && row[j] as f64 >= cut).map(|j| j as u32).collect()
    }

    /// The search as the chunk loop runs it: tiles in column order, then the fallback.
    fn search(row: &[f32], own: Option<usize>, k: usize, delta: f64) -> Vec<u32> {
        let order = ColumnOrder::new(row.len(), k);
        let permuted: Vec<f32> = order.positions.iter().map(|&p| row[p as usize]).collect();
        let mut scratch = Vec::new();
        let own = own.map(|p| p as u32);
        let mut select = RowSelect::new(own, k);
        for tile in order.tiles() {
            select.absorb(&permuted[tile.clone()], tile, &order, delta, &mut scratch);
        }
        let found = select.finish(delta, &mut scratch).unwrap_or_else(|| RowSelect::from_full_row(&permuted, own, k, &order, delta, &mut scratch));
        let mut positions: Vec<u32> = found.iter().map(|c| c.pos).collect();
        positions.sort_unstable();
        positions
    }

    #[test]
    fn tiled_sampled_selection_agrees_with_brute_force() {
        tch::manual_seed(5);
        let n = 20_000;
        let mut row = Vec::<f32>::try_from(tch::Tensor::randn([n], (tch::Kind::Float, tch::Device::Cpu))).expect("row");
        // A block of equal values and a sorted run: the sample then sees structure.
        row[100..400].iter_mut().for_each(|v| *v = 2.5);
        row[5000..6000].iter_mut().enumerate().for_each(|(i, v)| *v = 3.0 - i as f32 * 1e-3);
        let cases = [(1000, Some(5000), 1e-3), (64, None, 0.0), (999, Some(3), 0.5), (5, Some(7), 1e-5), (1, None, 0.0), (63, Some(150), 0.0), (19_999, Some(1), 0.0)];
        for (k, own, delta) in cases {
            assert_eq!(search(&row, own, k, delta), expected(&row, own, k, delta), "k {k}, own {own:?}, delta {delta}");
        }
        // Large values exactly where the sample looks: its threshold is too high, and the
        // full-row fallback must produce the same set.
        let k = 1000;
        let order = ColumnOrder::new(row.len(), k);
        let mut biased = row.clone();
        order.positions[..order.sample].iter().for_each(|&p| biased[p as usize] = 9.0);
        let permuted: Vec<f32> = order.positions.iter().map(|&p| biased[p as usize]).collect();
        let (mut select, mut scratch) = (RowSelect::new(None, k), Vec::new());
        for tile in order.tiles() {
            select.absorb(&permuted[tile.clone()], tile, &order, 0.0, &mut scratch);
        }
        assert!(select.finish(0.0, &mut scratch).is_none(), "the biased sample should need the fallback");
        assert_eq!(search(&biased, Some(1), k, 1e-4), expected(&biased, Some(1), k, 1e-4), "fallback");
        assert_eq!(search(&row, None, n as usize, 0.0).len(), n as usize);
    }
}
