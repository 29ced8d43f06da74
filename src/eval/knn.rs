//! Exact k-nearest-neighbour search by cosine similarity, one chunk of queries at a time,
//! with a fully deterministic order among equal similarities.
//!
//! Only a [chunk, G] block of similarities exists at any time (G = gallery size), never
//! the full query × gallery matrix, and everything runs on the tensors' own device.
//!
//! Order: neighbours are sorted by similarity, largest first; equal similarities are
//! ordered by gallery position, smallest first. This holds everywhere, including at the
//! K boundary: when a group of equal similarities straddles position K, the members with
//! the smallest gallery positions are the ones kept. "Equal" means bit-equal as computed.
//! Bit-identical gallery rows always tie: similarities are computed once per distinct
//! gallery row and copied to its duplicates, because a BLAS may round the same dot
//! product differently in different columns of one matrix product (OpenBLAS does).
use tch::{Device, Kind, Tensor};

use crate::error::{HistError, Result};

/// Default budget of similarities per chunk (queries per chunk × gallery size): 2^26,
/// 0.5 GiB of float64 similarities, up to ~1.5 GiB with the masks of the tie handling.
pub const DEFAULT_CHUNK_ELEMENTS: i64 = 1 << 26;

/// Norm floor of the row normalisation, as torch.nn.functional.normalize.
pub const NORM_EPS: f64 = 1e-12;

/// How the search runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KnnOptions {
    /// Queries per chunk; `None` picks ⌊[`DEFAULT_CHUNK_ELEMENTS`] / G⌋ (at least 1).
    /// Per chunk, about 9 bytes × chunk × G on the tensors' device (float64), up to ~24
    /// when ties straddle the cut or gallery rows repeat.
    pub chunk: Option<usize>,
    /// Float kind the similarities are computed in. Float64 (the default) makes rankings
    /// independent of float32 rounding, so CPU, CUDA and the Python reference agree.
    pub kind: Kind,
}

impl Default for KnnOptions {
    fn default() -> Self {
        KnnOptions { chunk: None, kind: Kind::Double }
    }
}

impl KnnOptions {
    /// Queries per chunk for a gallery of `gallery` entries.
    pub fn queries_per_chunk(&self, gallery: i64) -> i64 {
        match self.chunk {
            Some(c) => (c as i64).max(1),
            None => (DEFAULT_CHUNK_ELEMENTS / gallery.max(1)).max(1),
        }
    }
}

/// The nearest gallery entries of a block of consecutive queries, nearest first.
#[derive(Debug)]
pub struct Neighbours {
    /// Position of this block's first query among all queries.
    pub start: i64,
    /// Gallery positions [m, k], int64. −1 marks a slot with no candidate left, which
    /// happens only when k reaches the gallery size and the query's own entry is excluded.
    pub indices: Tensor,
    /// Cosine similarities [m, k] in the search kind; −inf where `indices` is −1.
    pub similarities: Tensor,
}

/// Rows divided by max(‖row‖, [`NORM_EPS`]), in `kind`. A zero row stays zero.
pub fn normalize_rows(x: &Tensor, kind: Kind) -> Tensor {
    let x = x.to_kind(kind);
    // Dividing by the norm itself (no epsilon inside the root) keeps rows that are
    // already unit-norm bit-exact, which exact-tie tests rely on.
    let norm = x.square().sum_dim_intlist(1, true, None::<Kind>).sqrt().clamp_min(NORM_EPS);
    x / norm
}

fn check_inputs(queries: &Tensor, gallery: &Tensor, self_positions: Option<&[i64]>) -> Result<()> {
    for (name, t) in [("queries", queries), ("gallery", gallery)] {
        if t.dim() != 2 || !t.is_floating_point() {
            return Err(HistError::input(name, format!("expected a float [N, D] tensor, got {:?} {:?}", t.kind(), t.size())));
        }
    }
    let (q, g) = (queries.size(), gallery.size());
    if q[1] != g[1] {
        return Err(HistError::input("gallery", format!("width {} differs from the queries' {}", g[1], q[1])));
    }
    if g[0] == 0 {
        return Err(HistError::input("gallery", "is empty; mark at least one row as gallery"));
    }
    if queries.device() != gallery.device() {
        return Err(HistError::input("gallery", "is on a different device from the queries; move both to one"));
    }
    if let Some(pos) = self_positions {
        if pos.len() as i64 != q[0] {
            return Err(HistError::input("self_positions", format!("has {} entries for {} queries", pos.len(), q[0])));
        }
        if let Some(bad) = pos.iter().find(|&&p| p < -1 || p >= g[0]) {
            return Err(HistError::input("self_positions", format!("{bad} is outside [-1, {})", g[0])));
        }
    }
    Ok(())
}

/// Visits the `k` nearest gallery entries of every query, `chunk` queries at a time, in
/// query order. `self_positions[i]` is the gallery position of query i's own row (never
/// returned as its neighbour), or −1 when query i is not in the gallery. `k` is clamped
/// to the gallery size. Similarities are cosine: rows are L2-normalised here.
pub fn for_each_chunk<F>(queries: &Tensor, gallery: &Tensor, self_positions: Option<&[i64]>, k: usize, options: &KnnOptions, mut visit: F) -> Result<()>
where
    F: FnMut(Neighbours) -> Result<()>,
{
    check_inputs(queries, gallery, self_positions)?;
    let _guard = tch::no_grad_guard();
    let (n, g) = (queries.size()[0], gallery.size()[0]);
    let k = (k as i64).min(g);
    if k == 0 || n == 0 {
        return Ok(());
    }
    let device = queries.device();
    let distinct = DistinctRows::of(gallery, options.kind);
    let chunk = options.queries_per_chunk(g);
    let mut start = 0;
    while start < n {
        let m = chunk.min(n - start);
        let q = normalize_rows(&queries.narrow(0, start, m), options.kind);
        let mut sims = distinct.similarities(&q);
        if let Some(pos) = self_positions {
            exclude_self(&mut sims, &pos[start as usize..(start + m) as usize], device);
        }
        let (indices, similarities) = top_k_ordered(&sims, k);
        visit(Neighbours { start, indices, similarities })?;
        start += m;
    }
    Ok(())
}

/// The gallery as its distinct rows (normalised, transposed) and, when some rows repeat,
/// the distinct row of each gallery position.
struct DistinctRows {
    rows_t: Tensor,
    inverse: Option<Tensor>,
}

impl DistinctRows {
    fn of(gallery: &Tensor, kind: Kind) -> Self {
        let g = gallery.to_kind(kind);
        let (unique, inverse, _) = g.unique_dim(0, false, true, false);
        if unique.size()[0] == g.size()[0] {
            // No duplicates: skip the per-chunk column gather.
            return DistinctRows { rows_t: normalize_rows(&g, kind).tr(), inverse: None };
        }
        DistinctRows { rows_t: normalize_rows(&unique, kind).tr(), inverse: Some(inverse) }
    }

    /// Cosine similarities [m, G] of unit-norm queries `q` [m, D] to every gallery row.
    fn similarities(&self, q: &Tensor) -> Tensor {
        let s = q.matmul(&self.rows_t);
        match &self.inverse {
            Some(inv) => s.index_select(1, inv),
            None => s,
        }
    }
}

/// All neighbours at once, [N, k] each: convenient for small sets and tests.
pub fn knn(queries: &Tensor, gallery: &Tensor, self_positions: Option<&[i64]>, k: usize, options: &KnnOptions) -> Result<Neighbours> {
    let (mut idx, mut sim) = (Vec::new(), Vec::new());
    for_each_chunk(queries, gallery, self_positions, k, options, |nb| {
        idx.push(nb.indices);
        sim.push(nb.similarities);
        Ok(())
    })?;
    if idx.is_empty() {
        let empty = Tensor::zeros([queries.size()[0], 0], (Kind::Int64, queries.device()));
        return Ok(Neighbours { start: 0, similarities: empty.to_kind(options.kind), indices: empty });
    }
    Ok(Neighbours { start: 0, indices: Tensor::cat(&idx, 0), similarities: Tensor::cat(&sim, 0) })
}

/// Sets each query's similarity to its own gallery entry to −inf.
fn exclude_self(sims: &mut Tensor, positions: &[i64], device: Device) {
    let (rows, cols): (Vec<i64>, Vec<i64>) =
        positions.iter().enumerate().filter(|(_, &p)| p >= 0).map(|(r, &p)| (r as i64, p)).unzip();
    if rows.is_empty() {
        return;
    }
    let rows = Tensor::from_slice(&rows).to_device(device);
    let cols = Tensor::from_slice(&cols).to_device(device);
    let value = Tensor::from(f64::NEG_INFINITY).to_kind(sims.kind()).to_device(device);
    let _ = sims.index_put_(&[Some(rows), Some(cols)], &value, false);
}

/// The `k` largest entries of each row of `sims` [m, G], ordered by (similarity
/// descending, column ascending): returns (columns, similarities), both [m, k], with −1
/// columns where the similarity is −inf (an excluded own entry).
pub fn top_k_ordered(sims: &Tensor, k: i64) -> (Tensor, Tensor) {
    let m = sims.size()[0];
    // The k-th largest value is well defined whatever order topk (not stable) breaks ties
    // in, and every entry above it is certainly among the k nearest.
    let kth = sims.topk(k, 1, true, false).0.amin(1, true);
    let at_least = sims.ge_tensor(&kth);
    let take = if at_least.sum(Kind::Int64).int64_value(&[]) == m * k {
        at_least
    } else {
        // Some row has more entries equal to its k-th value than slots left for them:
        // keep the lowest-indexed ones, which a running count along the row identifies.
        let above = sims.gt_tensor(&kth);
        let slots = above.sum_dim_intlist(1, true, Kind::Int64).neg() + k;
        let equal = sims.eq_tensor(&kth);
        let rank = equal.cumsum(1, Kind::Int);
        above.logical_or(&equal.logical_and(&rank.le_tensor(&slots)))
    };
    // nonzero lists indices in row-major order: exactly k per row, columns ascending.
    let cols = take.nonzero().select(1, 1).view([m, k]);
    let vals = sims.gather(1, &cols, false);
    // A stable descending sort keeps ascending columns among equal similarities.
    let (vals, order) = vals.sort_stable(true, 1, true);
    let cols = cols.gather(1, &order, false);
    let cols = cols.masked_fill(&vals.isneginf(), -1);
    (cols, vals)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(t: &Tensor) -> Vec<Vec<i64>> {
        let m = t.size()[0];
        (0..m).map(|i| Vec::<i64>::try_from(t.get(i)).expect("int64 row")).collect()
    }

    #[test]
    fn equal_similarities_ordered_by_gallery_position() {
        // Rows 0, 2 and 3 are the same direction; row 1 is orthogonal.
        let g = Tensor::from_slice(&[1.0f64, 0.0, 0.0, 1.0, 2.0, 0.0, 1.0, 0.0]).view([4, 2]);
        let q = Tensor::from_slice(&[1.0f64, 0.0]).view([1, 2]);
        let opts = KnnOptions::default();
        let all = knn(&q, &g, None, 4, &opts).expect("knn");
        assert_eq!(rows(&all.indices), vec![vec![0, 2, 3, 1]]);
        // k = 2 cuts through the tie group {0, 2, 3}: the lowest positions are kept.
        let two = knn(&q, &g, None, 2, &opts).expect("knn");
        assert_eq!(rows(&two.indices), vec![vec![0, 2]]);
    }

    #[test]
    fn own_entry_is_excluded_and_marked_when_k_reaches_gallery_size() {
        let x = Tensor::from_slice(&[1.0f64, 0.0, 1.0, 0.0, 0.0, 1.0]).view([3, 2]);
        let nb = knn(&x, &x, Some(&[0, 1, 2]), 3, &KnnOptions::default()).expect("knn");
        assert_eq!(rows(&nb.indices), vec![vec![1, 2, -1], vec![0, 2, -1], vec![0, 1, -1]]);
    }

    #[test]
    fn chunking_does_not_change_the_result() {
        tch::manual_seed(3);
        // Few distinct rows, so many exact ties cross chunk and K boundaries.
        let base = Tensor::randn([5, 4], (Kind::Float, Device::Cpu));
        let pick = Tensor::randint(5, [37], (Kind::Int64, Device::Cpu));
        let x = base.index_select(0, &pick);
        let own: Vec<i64> = (0..37).collect();
        let whole = knn(&x, &x, Some(&own), 9, &KnnOptions::default()).expect("knn");
        for chunk in [1, 4, 36] {
            let opts = KnnOptions { chunk: Some(chunk), ..KnnOptions::default() };
            let part = knn(&x, &x, Some(&own), 9, &opts).expect("knn");
            assert!(part.indices.equal(&whole.indices), "chunk {chunk} changed the neighbours");
        }
        // Within each row: similarities never increase, and positions rise among equals.
        let (idx, sim) = (rows(&whole.indices), whole.similarities);
        for (i, row) in idx.iter().enumerate() {
            let s = Vec::<f64>::try_from(sim.get(i as i64)).expect("f64 row");
            for j in 1..row.len() {
                assert!(s[j] < s[j - 1] || (s[j] == s[j - 1] && row[j] > row[j - 1]), "row {i}: {row:?} {s:?}");
            }
        }
    }
}
