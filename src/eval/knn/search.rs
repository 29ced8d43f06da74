//! The chunk loop shared by every search: the gallery prepared once (exact rows on the
//! host, product rows on the device in [`ColumnOrder`]), then per chunk of queries the
//! queries split over worker threads, each computing its products a tile of gallery
//! columns at a time into one reused buffer, scanning each tile for candidates while it
//! is in cache, then doing each query's work on the host.
use std::ops::Range;

use tch::{Device, Kind, Tensor};

use super::exact::Rows;
use super::products::{host_elements, ProductBuffer};
use super::scan::Element;
use super::select::{Candidate, ColumnOrder, RowSelect};
use super::threads::{on_threads, workers_for};
use super::{open, KnnOptions, Opening};
use crate::error::Result;


/// One query's work: its exact row and its candidates.
pub(super) struct RowJob<'a> {
    /// The query's normalised float64 row.
    pub(super) query_row: &'a [f64],
    /// A superset of its `k` nearest (see [`select`]).
    pub(super) candidates: Vec<Candidate>,
    /// Neighbours it can have: the search depth, at most the gallery entries left to it.
    pub(super) k: usize,
    /// The normalised float64 gallery rows.
    pub(super) gallery: &'a Rows,
}

/// What the per-row work of every thread reads.
struct Shared {
    gallery: Rows,
    order: ColumnOrder,
    /// Each query's own gallery position, if it has one.
    own: Vec<Option<u32>>,
    delta: f64,
    k: usize,
}

impl Shared {
    /// (its own gallery position if any, the neighbours it can have) of a query.
    fn row_job(&self, query: usize) -> (Option<u32>, usize) {
        let own = self.own[query];
        (own, self.k.min(self.gallery.len() - usize::from(own.is_some())))
    }
}

/// A prepared search: the gallery normalised (exact rows on the host, product rows on
/// the device, columns in the shared [`ColumnOrder`]), the error bound and the chunking.
pub(super) struct Search<'a> {
    queries: &'a Tensor,
    /// [D, G]: the gallery's rows in the product kind, as columns in `order`.
    gallery_t: Tensor,
    shared: Shared,
    kind: Kind,
    chunk: i64,
    /// Neighbours per query: the requested depth clamped to the gallery size.
    pub(super) k: usize,
}

impl<'a> Search<'a> {
    /// `None` when there is nothing to search (no query, or k = 0).
    pub(super) fn new(queries: &'a Tensor, gallery: &Tensor, self_positions: Option<&[i64]>, k: usize, options: &KnnOptions) -> Result<Option<Self>> {
        let Some(Opening { k, delta, kind, own }) = open(queries, gallery, self_positions, None, k, options)? else { return Ok(None) };
        let g = gallery.size()[0];
        let _guard = tch::no_grad_guard();
        let rows = Rows::normalized(gallery)?;
        let order = ColumnOrder::new(g as usize, k);
        let gallery_t = rows.to_tensor(Some(&order.positions), kind, queries.device()).tr();
        let shared = Shared { gallery: rows, order, own, delta, k };
        Ok(Some(Search { queries, gallery_t, shared, kind, chunk: options.queries_per_chunk(g), k }))
    }

    /// Runs `per_row` on every query and hands each chunk's results, in query order, to
    /// `per_chunk` with the chunk's first query.
    ///
    /// The queries of a chunk are split over libtorch's thread count ([`on_threads`]), and
    /// each worker computes its own products single-threaded.
    pub(super) fn run<R, F, V>(&self, per_row: F, mut per_chunk: V) -> Result<()>
    where
        R: Send,
        F: Fn(RowJob<'_>) -> R + Sync,
        V: FnMut(usize, Vec<R>) -> Result<()>,
    {
        let _guard = tch::no_grad_guard();
        let (n, g) = (self.queries.size()[0] as usize, self.shared.gallery.len());
        let mut start = 0;
        while start < n {
            let m = (self.chunk as usize).min(n - start);
            let threads = workers_for(m * g).min(m);
            let per_thread = m.div_ceil(threads);
            let parts: Vec<(usize, Tensor, Tensor)> = (0..m)
                .step_by(per_thread)
                .map(|a| {
                    let rows = per_thread.min(m - a);
                    (start + a, self.queries.narrow(0, (start + a) as i64, rows as i64), self.gallery_t.shallow_clone())
                })
                .collect();
            let (shared, kind, per_row) = (&self.shared, self.kind, &per_row);
            let results = on_threads(parts, |(first, queries, gallery_t)| part(shared, kind, &queries, &gallery_t, first, per_row))?;
            per_chunk(start, results.into_iter().flatten().collect())?;
            start += m;
        }
        Ok(())
    }
}

/// One worker's share of a chunk: `per_row` on each of `queries` (the first being query
/// `first`), its products computed tile by tile and scanned while in cache.
fn part<R, F: Fn(RowJob<'_>) -> R>(shared: &Shared, kind: Kind, queries: &Tensor, gallery_t: &Tensor, first: usize, per_row: &F) -> Result<Vec<R>> {
    let (m, device) = (queries.size()[0], queries.device());
    let tiles = shared.order.tiles();
    let widest = tiles.iter().map(|t| t.len()).max().unwrap_or(0);
    // One buffer for every tile: it stays in cache from the product to the scan.
    let buffer = ProductBuffer::new(m as usize * widest, kind, device)?;
    let query_rows = Rows::normalized(queries)?;
    let products_input = query_rows.to_tensor(None, kind, device);
    let jobs: Vec<(Option<u32>, usize)> = (0..m as usize).map(|r| shared.row_job(first + r)).collect();
    let mut selects: Vec<RowSelect> = jobs.iter().map(|&(own, k)| RowSelect::new(own, k)).collect();
    let mut scratch = Vec::new();
    for tile in &tiles {
        let products = buffer.product(&products_input, &gallery_t.narrow(1, tile.start as i64, tile.len() as i64))?;
        match kind {
            Kind::Float => absorb::<f32>(&mut selects, &products, tile, shared, &mut scratch)?,
            _ => absorb::<f64>(&mut selects, &products, tile, shared, &mut scratch)?,
        }
    }
    let found: Vec<Option<Vec<Candidate>>> = selects.into_iter().map(|s| s.finish(shared.delta, &mut scratch)).collect();
    let found = select_in_full(shared, kind, found, &products_input, gallery_t, &jobs)?;
    Ok(found
        .into_iter()
        .enumerate()
        .map(|(r, candidates)| {
            let (_, k) = jobs[r];
            per_row(RowJob { query_row: query_rows.row(r), candidates, k, gallery: &shared.gallery })
        })
        .collect())
}

/// Feeds each row of the tile's `products` [rows, tile width] to its selection.
fn absorb<E: Element>(selects: &mut [RowSelect], products: &Tensor, tile: &Range<usize>, shared: &Shared, scratch: &mut Vec<f64>) -> Result<()> {
    let values = host_elements::<E>(products)?;
    let w = tile.len();
    for (r, select) in selects.iter_mut().enumerate() {
        select.absorb(&values[r * w..(r + 1) * w], tile.clone(), &shared.order, shared.delta, scratch);
    }
    Ok(())
}

/// The candidates of every row, selecting in full (from recomputed products) the rows
/// whose sample threshold was too high.
fn select_in_full(shared: &Shared, kind: Kind, found: Vec<Option<Vec<Candidate>>>, queries: &Tensor, gallery_t: &Tensor, jobs: &[(Option<u32>, usize)]) -> Result<Vec<Vec<Candidate>>> {
    let missing: Vec<i64> = (0..found.len()).filter(|&r| found[r].is_none()).map(|r| r as i64).collect();
    if missing.is_empty() {
        return Ok(found.into_iter().flatten().collect());
    }
    let rows = queries.index_select(0, &Tensor::from_slice(&missing).to_device(queries.device()));
    let products = rows.f_mm(gallery_t)?.to_device(Device::Cpu);
    let mut full = match kind {
        Kind::Float => full_rows::<f32>(host_elements(&products)?, shared, &missing, jobs),
        _ => full_rows::<f64>(host_elements(&products)?, shared, &missing, jobs),
    }
    .into_iter();
    Ok(found.into_iter().map(|f| f.unwrap_or_else(|| full.next().unwrap_or_default())).collect())
}

/// [`RowSelect::from_full_row`] on each row of `values` [missing, G].
fn full_rows<E: Element>(values: &[E], shared: &Shared, missing: &[i64], jobs: &[(Option<u32>, usize)]) -> Vec<Vec<Candidate>> {
    let g = shared.gallery.len();
    let mut scratch = Vec::new();
    missing
        .iter()
        .enumerate()
        .map(|(i, &r)| {
            let (own, k) = jobs[r as usize];
            RowSelect::from_full_row(&values[i * g..(i + 1) * g], own, k, &shared.order, shared.delta, &mut scratch)
        })
        .collect()
}
