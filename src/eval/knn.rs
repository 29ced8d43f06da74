//! Exact k-nearest-neighbour search by cosine similarity, one chunk of queries at a time,
//! with a fully deterministic order among equal similarities.
//!
//! Similarity: rows are normalised in float64 (x / max(‖x‖, [`NORM_EPS`])) and the
//! **exact similarity** of two rows is their float64 dot product summed in one fixed
//! order on the host ([`exact`]), so the ranking is the same on every device, BLAS and
//! thread count. Order: largest exact similarity first; equal similarities (bit-equal,
//! which bit-identical rows always are) by gallery position, smallest first — also at
//! the K boundary, where the smallest positions of a tie group are the ones kept.
//!
//! Speed: the bulk products run as matrix products on the tensors' device, in float32 by
//! default ([`Precision`]). Their error is bounded rigorously ([`bound`]: δ ≈ D·2⁻²⁴ for
//! float32), and that bound decides which entries can still matter and which pairs are
//! near-ties whose order only the exact similarity settles; those are re-scored on the
//! host. The result is identical to ranking every pair by the exact similarity
//! (docs/evaluation.md, "Precision").
//!
//! Two searches. [`for_each_chunk`] lists neighbours: queries a chunk at a time, each
//! query's candidates (≈ 1.5·k, [`select`]) re-scored and ordered ([`order`]).
//! [`for_each_target_ranks`], all the retrieval metrics need, counts instead ([`ranks`]):
//! per query only counters for its same-label entries, and when the queries are the
//! gallery only the blocks on and above the diagonal of the symmetric similarity matrix
//! are computed — half the products.
//!
//! Memory: never the full query × gallery matrix; see each search for its working set.
mod bound;
mod exact;
mod order;
mod products;
mod ranks;
mod scan;
mod search;
mod select;
mod slots;
mod tally;
mod threads;

use tch::{Kind, Tensor};

use crate::error::{HistError, Result};
pub use ranks::{DEFAULT_BLOCK, MAX_BLOCK};
use search::Search;

/// Default queries per chunk × gallery size: 2^26 (1,109 queries at SOP's 60,502).
pub const DEFAULT_CHUNK_ELEMENTS: i64 = 1 << 26;

/// Norm floor of the row normalisation, as torch.nn.functional.normalize.
pub const NORM_EPS: f64 = 1e-12;

/// Float kind of the bulk similarity products. The ranking is exact either way; this
/// only changes how many near-ties need the exact similarity, and the speed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// float32 products: half the memory traffic and twice the arithmetic rate of float64.
    #[default]
    F32,
    /// float64 products: a cross-check of the float32 path, or for devices whose float32
    /// products are not IEEE float32 (TF32 switched on).
    F64,
}

impl Precision {
    /// `f32` or `f64`.
    pub fn parse(name: &str) -> Option<Precision> {
        match name {
            "f32" => Some(Precision::F32),
            "f64" => Some(Precision::F64),
            _ => None,
        }
    }

    fn kind(self) -> Kind {
        match self {
            Precision::F32 => Kind::Float,
            Precision::F64 => Kind::Double,
        }
    }
}

/// How the search runs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct KnnOptions {
    /// Queries per chunk of [`for_each_chunk`] (`None`: ⌊[`DEFAULT_CHUNK_ELEMENTS`] / G⌋,
    /// at least 1; memory per query: one row of 2,048 products and ≈ 24·k bytes of
    /// candidates), and rows = columns per block of [`for_each_target_ranks`] (`None`:
    /// [`DEFAULT_BLOCK`], at most [`MAX_BLOCK`]; memory: one block of products per worker). Products are
    /// float32, or float64 with [`Precision::F64`]; on a GPU also copied to the host.
    pub chunk: Option<usize>,
    /// Float kind of the products.
    pub precision: Precision,
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
    /// Exact similarities [m, k], float64; −inf where `indices` is −1.
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

/// Shapes, kinds, finiteness, devices and own positions; each problem one line naming
/// the input.
fn check_inputs(queries: &Tensor, gallery: &Tensor, self_positions: Option<&[i64]>) -> Result<()> {
    for (name, t) in [("queries", queries), ("gallery", gallery)] {
        if t.dim() != 2 || !t.is_floating_point() {
            return Err(HistError::input(name, format!("expected a float [N, D] tensor, got {:?} {:?}", t.kind(), t.size())));
        }
        if t.isfinite().logical_not().any().int64_value(&[]) != 0 {
            return Err(HistError::input(name, "contain NaN or infinite values; check the model's output"));
        }
    }
    let (q, g) = (queries.size(), gallery.size());
    if q[1] != g[1] {
        return Err(HistError::input("gallery", format!("width {} differs from the queries' {}", g[1], q[1])));
    }
    if g[0] == 0 {
        return Err(HistError::input("gallery", "is empty; mark at least one row as gallery"));
    }
    if g[0] > u32::MAX as i64 {
        return Err(HistError::input("gallery", format!("has {} rows; at most {} are supported", g[0], u32::MAX)));
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

/// What a search starts from once its inputs are checked: the depth, clamped to the
/// gallery size, the products' error bound and float kind.
struct Opening {
    k: usize,
    delta: f64,
    kind: Kind,
    /// Each query's own gallery position, if it has one.
    own: Vec<Option<u32>>,
}

/// Checks the inputs (and the query and gallery labels, when given) and opens a search to
/// depth `k`: `None` when there is nothing to search (no query, or k = 0).
fn open(queries: &Tensor, gallery: &Tensor, self_positions: Option<&[i64]>, labels: Option<(&[i64], &[i64])>, k: usize, options: &KnnOptions) -> Result<Option<Opening>> {
    check_inputs(queries, gallery, self_positions)?;
    let (n, g, d) = (queries.size()[0], gallery.size()[0], gallery.size()[1]);
    if let Some((query_labels, gallery_labels)) = labels {
        if query_labels.len() as i64 != n || gallery_labels.len() as i64 != g {
            return Err(HistError::input("labels", format!("{} query and {} gallery labels for {n} queries and {g} gallery rows", query_labels.len(), gallery_labels.len())));
        }
    }
    let k = k.min(g as usize);
    if k == 0 || n == 0 {
        return Ok(None);
    }
    let delta = bound::similarity_error(d as usize, options.precision == Precision::F32)
        .ok_or_else(|| HistError::input("embeddings", format!("width {d} is too large for float32 products to bound their error; use --precision f64")))?;
    let own = match self_positions {
        Some(p) => p.iter().map(|&p| u32::try_from(p).ok()).collect(),
        None => vec![None; n as usize],
    };
    Ok(Some(Opening { k, delta, kind: options.precision.kind(), own }))
}

/// Visits the `k` nearest gallery entries of every query, a chunk of queries at a time,
/// in query order. `self_positions[i]` is the gallery position of query i's own row
/// (never returned as its neighbour), or −1 when query i is not in the gallery. `k` is
/// clamped to the gallery size. Every returned neighbour is re-scored exactly, so this
/// costs about k float64 dot products per query on top of the products.
pub fn for_each_chunk<F>(queries: &Tensor, gallery: &Tensor, self_positions: Option<&[i64]>, k: usize, options: &KnnOptions, mut visit: F) -> Result<()>
where
    F: FnMut(Neighbours) -> Result<()>,
{
    let Some(search) = Search::new(queries, gallery, self_positions, k, options)? else { return Ok(()) };
    let (k, device) = (search.k, queries.device());
    search.run(
        |job| order::nearest(job.query_row, job.gallery, &job.candidates, job.k),
        |start, rows: Vec<Vec<(u32, f64)>>| {
            let m = rows.len();
            let mut indices = vec![-1i64; m * k];
            let mut similarities = vec![f64::NEG_INFINITY; m * k];
            for (r, row) in rows.iter().enumerate() {
                for (slot, &(pos, s)) in row.iter().enumerate() {
                    indices[r * k + slot] = pos as i64;
                    similarities[r * k + slot] = s;
                }
            }
            let shape = [m as i64, k as i64];
            visit(Neighbours {
                start: start as i64,
                indices: Tensor::from_slice(&indices).view(shape).to_device(device),
                similarities: Tensor::from_slice(&similarities).view(shape).to_device(device),
            })
        },
    )
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
        return Ok(Neighbours { start: 0, similarities: empty.to_kind(Kind::Double), indices: empty });
    }
    Ok(Neighbours { start: 0, indices: Tensor::cat(&idx, 0), similarities: Tensor::cat(&sim, 0) })
}

/// For every query in order, the ranks (0-based, ascending) that its same-label gallery
/// entries (`gallery_labels[p] == query_labels[q]`, never its own entry) hold in its exact
/// neighbour order, for those ranked below `k` (clamped to the gallery size):
/// `visit(query, ranks)` — all the retrieval metrics need.
///
/// The same order as [`for_each_chunk`], found by counting rather than listing
/// neighbours ([`ranks`]); when `queries` and `gallery` are the same tensor with
/// `self_positions` 0..N and equal labels, only half the products are computed.
#[allow(clippy::too_many_arguments)]
pub fn for_each_target_ranks<V>(queries: &Tensor, gallery: &Tensor, self_positions: Option<&[i64]>, query_labels: &[i64], gallery_labels: &[i64], k: usize, options: &KnnOptions, visit: V) -> Result<()>
where
    V: FnMut(usize, &[usize]) -> Result<()>,
{
    ranks::target_ranks(queries, gallery, self_positions, query_labels, gallery_labels, k, options, ranks::COUNTER_BYTES, visit).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn rows(t: &Tensor) -> Vec<Vec<i64>> {
        let m = t.size()[0];
        (0..m).map(|i| Vec::<i64>::try_from(t.get(i)).expect("int64 row")).collect()
    }

    fn both() -> [KnnOptions; 2] {
        [KnnOptions::default(), KnnOptions { precision: Precision::F64, ..KnnOptions::default() }]
    }

    #[test]
    fn equal_similarities_ordered_by_gallery_position() {
        // Rows 0, 2 and 3 are the same direction; row 1 is orthogonal.
        let g = Tensor::from_slice(&[1.0f64, 0.0, 0.0, 1.0, 2.0, 0.0, 1.0, 0.0]).view([4, 2]);
        let q = Tensor::from_slice(&[1.0f64, 0.0]).view([1, 2]);
        for opts in both() {
            let all = knn(&q, &g, None, 4, &opts).expect("knn");
            assert_eq!(rows(&all.indices), vec![vec![0, 2, 3, 1]]);
            // k = 2 cuts through the tie group {0, 2, 3}: the lowest positions are kept.
            let two = knn(&q, &g, None, 2, &opts).expect("knn");
            assert_eq!(rows(&two.indices), vec![vec![0, 2]]);
        }
    }

    #[test]
    fn own_entry_is_excluded_and_marked_when_k_reaches_gallery_size() {
        let x = Tensor::from_slice(&[1.0f64, 0.0, 1.0, 0.0, 0.0, 1.0]).view([3, 2]);
        let nb = knn(&x, &x, Some(&[0, 1, 2]), 3, &KnnOptions::default()).expect("knn");
        assert_eq!(rows(&nb.indices), vec![vec![1, 2, -1], vec![0, 2, -1], vec![0, 1, -1]]);
        assert_eq!(Vec::<f64>::try_from(nb.similarities.get(0)).expect("row"), vec![1.0, 0.0, f64::NEG_INFINITY]);
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
            for opts in both() {
                let opts = KnnOptions { chunk: Some(chunk), ..opts };
                let part = knn(&x, &x, Some(&own), 9, &opts).expect("knn");
                assert!(part.indices.equal(&whole.indices), "chunk {chunk} {opts:?} changed the neighbours");
            }
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

    #[test]
    fn worker_threads_do_not_change_the_result() {
        tch::manual_seed(4);
        // 1,200² products per chunk: enough for the search to split a chunk over threads
        // (when libtorch has more than one); duplicated rows make exact ties.
        let base = Tensor::randn([900, 16], (Kind::Float, Device::Cpu));
        let x = base.index_select(0, &Tensor::randint(900, [1200], (Kind::Int64, Device::Cpu)));
        let own: Vec<i64> = (0..1200).collect();
        let threads = tch::get_num_threads();
        let split = knn(&x, &x, Some(&own), 40, &KnnOptions::default()).expect("knn");
        assert_eq!(tch::get_num_threads(), threads, "the search must restore libtorch's thread count");
        // One query per chunk is below the threading threshold: a single thread.
        let single = knn(&x, &x, Some(&own), 40, &KnnOptions { chunk: Some(1), ..KnnOptions::default() }).expect("knn");
        assert!(split.indices.equal(&single.indices) && split.similarities.equal(&single.similarities));
    }

    #[test]
    fn target_ranks_are_the_positions_in_the_full_list() {
        tch::manual_seed(8);
        // Six distinct rows among 50: ties everywhere, inside and across the K boundary.
        let base = Tensor::randn([6, 8], (Kind::Float, Device::Cpu));
        let x = base.index_select(0, &Tensor::randint(6, [50], (Kind::Int64, Device::Cpu)));
        let separate = x.copy();
        let own: Vec<i64> = (0..50).collect();
        // Ten labels (about five targets each) or two (about 25).
        let few: Vec<i64> = (0..50).map(|i| (i * 7 % 10) as i64).collect();
        let many: Vec<i64> = (0..50).map(|i| (i % 3 == 0) as i64).collect();
        for labels in [&few, &many] {
            for k in [3, 17, 50] {
                let full = rows(&knn(&x, &x, Some(&own), k, &KnnOptions::default()).expect("knn").indices);
                // The same tensor twice (symmetric blocks) and a copy (the full grid);
                // blocks of 1, 7 and the default; both precisions.
                for gallery in [&x, &separate] {
                    for opts in both().into_iter().flat_map(|o| [None, Some(1), Some(7)].map(move |chunk| KnnOptions { chunk, ..o })) {
                        let mut seen = 0;
                        for_each_target_ranks(&x, gallery, Some(&own), labels, labels, k, &opts, |q, ranks| {
                            let want: Vec<usize> = (0..full[q].len()).filter(|&r| full[q][r] >= 0 && labels[full[q][r] as usize] == labels[q]).collect();
                            assert_eq!(ranks, want.as_slice(), "query {q}, k {k}, {opts:?}");
                            seen += 1;
                            Ok(())
                        })
                        .expect("ranks");
                        assert_eq!(seen, 50);
                    }
                }
            }
        }
    }
}
