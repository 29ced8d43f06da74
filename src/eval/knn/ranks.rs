//! The ranks of each query's same-label gallery entries in its exact neighbour order —
//! all the retrieval metrics need — counted over blocks of the similarity matrix.
//!
//! When the queries are the gallery (every protocol but In-Shop's), the similarity
//! matrix is symmetric: the block of rows I and columns J holds the transpose of block
//! (J, I). So only blocks with I ≤ J are computed — half the products of a full
//! search — and each is scanned twice: along its rows for the queries of I (each row
//! against its query's cut) and along its columns for the queries of J (each column
//! against its own cut, in the same vectorised pass). Other query sets go over the full
//! grid of query blocks × gallery blocks, rows only.
//!
//! Counting (see [`super::tally`]) needs no candidate lists: per query a few counters
//! per target. What keeps the scan short is each query's cut, which starts at a floor
//! read off a sample of its row (its products with a spread-out sample of the gallery,
//! computed first: ≈ 3% of a full search's products at SOP size, at most 1/8): at least
//! k entries are presumed to lie above it, a presumption the counts then confirm (see
//! [`super::slots`]); a query where they do not (well under 1%) is searched again in full
//! without a floor.
//!
//! Memory: per worker one block of products (block² × 4 bytes in float32; the block edge
//! is at most [`MAX_BLOCK`]) and counters for every query of the group (8 bytes per kept
//! target); queries are taken in groups (each then over the full grid) when the workers'
//! counters together would pass [`COUNTER_BYTES`]. Each group's ranks go to the caller
//! when it is done.
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

use tch::{Device, Kind, Tensor};

use super::exact::Rows;
use super::products::{host_elements, ProductBuffer};
use super::scan::Element;
use super::threads::{on_threads, workers_for};
use super::select::{kth_product, ColumnOrder};
use super::slots::{Slots, TargetLists};
use super::tally::{merge, Outcome, Tally};
use super::{open, KnnOptions, Opening};
use crate::error::{HistError, Result};
use crate::progress::Progress;

/// Rows (and columns) per block of products unless [`KnnOptions::chunk`] says otherwise:
/// a 4 MiB float32 block stays in cache from the product through both scans.
pub const DEFAULT_BLOCK: usize = 1024;

/// Largest block edge: a float32 block of 8,192² products is 256 MiB per worker.
pub const MAX_BLOCK: usize = 8192;

/// Bytes the workers' counters may take together before queries are taken in groups.
pub(super) const COUNTER_BYTES: usize = 1 << 30;


/// One block of products: rows (indices into the group's query list) × gallery columns;
/// `mirrored` blocks are also scanned along their columns for the queries those
/// columns are (symmetric search, off the diagonal).
#[derive(Clone, Debug)]
struct Block {
    rows: Range<usize>,
    columns: Range<usize>,
    mirrored: bool,
}

/// The products' input rows (in the product kind, on the device): a tensor handle may
/// not be shared between threads, so each [`Worker`] gets its own [`Inputs::share`].
struct Inputs {
    /// [N, D] the queries.
    query: Tensor,
    /// [G, D] the gallery (the sample of it, while floors are read).
    gallery: Tensor,
}

impl Inputs {
    /// New handles to the same tensors.
    fn share(&self) -> Inputs {
        Inputs { query: self.query.shallow_clone(), gallery: self.gallery.shallow_clone() }
    }
}

/// What every worker reads.
struct Context<'a> {
    device: Device,
    query_rows: &'a Rows,
    gallery_rows: &'a Rows,
    own: &'a [Option<u32>],
    /// The gallery sample the floors are read from.
    order: ColumnOrder,
    query_labels: &'a [i64],
    targets: &'a TargetLists,
    kind: Kind,
    delta: f64,
    k: usize,
    block: usize,
    workers: usize,
}

/// For every query in order, the ranks (0-based, ascending) of its same-label gallery
/// entries (never its own entry) among its exact neighbours, for those ranked below `k`:
/// `visit(query, ranks)`. The workers' counters take at most about `counter_bytes`
/// together. Returns how many queries had to be searched again without a floor.
#[allow(clippy::too_many_arguments)]
pub(super) fn target_ranks<V>(queries: &Tensor, gallery: &Tensor, self_positions: Option<&[i64]>, query_labels: &[i64], gallery_labels: &[i64], k: usize, options: &KnnOptions, counter_bytes: usize, mut visit: V) -> Result<usize>
where
    V: FnMut(usize, &[usize]) -> Result<()>,
{
    let opening = open(queries, gallery, self_positions, Some((query_labels, gallery_labels)), k, options)?;
    let (n, g) = (queries.size()[0] as usize, gallery.size()[0] as usize);
    let Some(Opening { k, delta, kind, own }) = opening else {
        (0..n).try_for_each(|q| visit(q, &[]))?;
        return Ok(0);
    };
    let _guard = tch::no_grad_guard();
    let symmetric = same_rows(queries, gallery) && query_labels == gallery_labels && own.iter().enumerate().all(|(i, &p)| p == Some(i as u32));
    let query_rows = Rows::normalized(queries)?;
    let gallery_owned = if symmetric { None } else { Some(Rows::normalized(gallery)?) };
    let gallery_rows = gallery_owned.as_ref().unwrap_or(&query_rows);
    let device = queries.device();
    let query_input = query_rows.to_tensor(None, kind, device);
    let gallery_input = if symmetric { query_input.shallow_clone() } else { gallery_rows.to_tensor(None, kind, device) };
    let targets = TargetLists::new(gallery_labels);
    let workers = workers_for(n * g);
    let block = options.chunk.unwrap_or(DEFAULT_BLOCK).clamp(1, MAX_BLOCK);
    let inputs = Inputs { query: query_input, gallery: gallery_input };
    let order = ColumnOrder::for_threshold(g, k);
    let ctx = Context { device, query_rows: &query_rows, gallery_rows, own: &own, order, query_labels, targets: &targets, kind, delta, k, block, workers };

    // Each query keeps at most k targets, and a sentinel; each slot is two u32 counters
    // in every worker.
    let budget = (counter_bytes / (8 * workers)).max(1);
    let groups = groups(n, budget, |q| targets.count(query_labels[q]).min(k) + 1);
    // Groups each go over the full grid: the other half of a block may hold another group.
    let mirrored = symmetric && groups.len() == 1;
    // Blocks of sample products, then of products.
    let total: u64 = groups.iter().map(|q| (q.len().div_ceil(sample_rows(&ctx, q.len())) + plan(q.len(), g, block, mirrored).len()) as u64).sum();
    let bar = Progress::new("k-NN search", total, "blocks", true);
    let mut rechecked = 0;
    // The gallery rows the floors are read from, gathered once for every group.
    let sampled = ctx.order.sample(k).map(|(positions, rank)| {
        let rows: Vec<usize> = positions.iter().map(|&p| p as usize).collect();
        FloorSample { inputs: Inputs { query: inputs.query.shallow_clone(), gallery: rows_at(&inputs.gallery, &rows) }, positions, rank }
    });
    for group in groups {
        let floors = sample_floors(&ctx, sampled.as_ref(), &group, &bar)?;
        let mut outcomes = search_group(&ctx, &inputs, group.clone(), Some(&floors), mirrored, &bar)?;
        let again: Vec<usize> = (0..group.len()).filter(|&i| outcomes[i] == Outcome::Recheck).collect();
        if !again.is_empty() {
            rechecked += again.len();
            bar.inc_length(plan(again.len(), g, block, false).len() as u64);
            let found = search_group(&ctx, &inputs, again.iter().map(|&i| group[i]).collect(), None, false, &bar)?;
            for (&i, outcome) in again.iter().zip(found) {
                outcomes[i] = outcome;
            }
        }
        for (q, outcome) in group.into_iter().zip(outcomes) {
            match outcome {
                Outcome::Ranks(ranks) => visit(q, &ranks)?,
                // A search without a floor has no sentinel to doubt.
                Outcome::Recheck => return Err(HistError::input("k-NN search", "internal: a query without a floor asked to be searched again")),
            }
        }
    }
    Ok(rechecked)
}

/// Whether two tensors are views of the same rows (the same source split).
fn same_rows(a: &Tensor, b: &Tensor) -> bool {
    a.data_ptr() == b.data_ptr() && a.size() == b.size() && a.stride() == b.stride() && a.kind() == b.kind() && a.device() == b.device()
}

/// The query groups: all at once when their counters (`need(q)` for query q) fit
/// `budget`, else consecutive runs that do (at least one query each).
fn groups(n: usize, budget: usize, need: impl Fn(usize) -> usize) -> Vec<Vec<usize>> {
    let (mut groups, mut current, mut used) = (Vec::new(), Vec::new(), 0usize);
    for q in 0..n {
        let need = need(q);
        if !current.is_empty() && used + need > budget {
            groups.push(std::mem::take(&mut current));
            used = 0;
        }
        current.push(q);
        used += need;
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

/// The blocks of a search of `queries` rows against `gallery` columns: the upper
/// triangle when `mirrored` (queries = gallery), else the full grid.
fn plan(queries: usize, gallery: usize, block: usize, mirrored: bool) -> Vec<Block> {
    let cut = |n: usize| -> Vec<Range<usize>> { (0..n).step_by(block).map(|s| s..(s + block).min(n)).collect() };
    let (rows, columns) = (cut(queries), cut(gallery));
    let mut blocks = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        for (j, c) in columns.iter().enumerate() {
            if mirrored && j < i {
                continue;
            }
            blocks.push(Block { rows: r.clone(), columns: c.clone(), mirrored: mirrored && j > i });
        }
    }
    blocks
}

/// The rows of `input` at `positions`: a view when they are consecutive.
fn rows_at(input: &Tensor, positions: &[usize]) -> Tensor {
    let first = positions[0];
    if positions.iter().enumerate().all(|(i, &q)| q == first + i) {
        return input.narrow(0, first as i64, positions.len() as i64);
    }
    let index: Vec<i64> = positions.iter().map(|&q| q as i64).collect();
    input.index_select(0, &Tensor::from_slice(&index).to_device(input.device()))
}

/// Runs `work(state, task)` for tasks 0..tasks, shared out among the workers whose
/// states are `states` (one thread each, see [`on_threads`]), and returns the states.
fn in_workers<S: Send>(states: Vec<S>, tasks: usize, work: impl Fn(&mut S, usize) -> Result<()> + Sync) -> Result<Vec<S>> {
    let next = AtomicUsize::new(0);
    on_threads(states, |mut state| loop {
        let task = next.fetch_add(1, Ordering::Relaxed);
        if task >= tasks {
            return Ok(state);
        }
        work(&mut state, task)?;
    })
}

/// One worker's handles to the inputs and its reusable block of products.
struct Worker {
    inputs: Inputs,
    buffer: ProductBuffer,
}

impl Worker {
    /// Workers (as many as `tasks` can use) on `inputs`, whose blocks hold up to
    /// `elements` products.
    fn several(ctx: &Context<'_>, inputs: &Inputs, elements: usize, tasks: usize) -> Result<Vec<Worker>> {
        (0..ctx.workers.min(tasks).max(1)).map(|_| Ok(Worker { inputs: inputs.share(), buffer: ProductBuffer::new(elements, ctx.kind, ctx.device)? })).collect()
    }

    /// The products of the query rows at `queries` with `columns`ᵀ [w, D]: a contiguous
    /// host tensor [rows, w] in the block buffer.
    fn products(&self, queries: &[usize], columns: &Tensor) -> Result<Tensor> {
        self.buffer.product(&rows_at(&self.inputs.query, queries), &columns.tr())
    }
}

/// The gallery sample the floors are read from ([`ColumnOrder::sample`]): its rows as
/// product inputs, their gallery positions, and the rank of a row's threshold among them.
struct FloorSample<'a> {
    inputs: Inputs,
    positions: &'a [u32],
    rank: usize,
}

/// Queries per block of sample products: as many as keep the block within block² products.
fn sample_rows(ctx: &Context<'_>, queries: usize) -> usize {
    let sample = ctx.order.sample(ctx.k).map_or(1, |(s, _)| s.len().max(1));
    (ctx.block * ctx.block / sample).clamp(1, queries.max(1))
}

/// Each query's floor: its sample threshold t_s (the products with the sample, rank
/// from [`ColumnOrder`]) minus δ, so that the entries with products ≥ t_s — about
/// 1.5·k — lie at or above it; −∞ when the gallery is too small to sample. `sampled`:
/// the queries and the sample's gallery rows, `None` without a sample.
fn sample_floors(ctx: &Context<'_>, sampled: Option<&FloorSample<'_>>, queries: &[usize], bar: &Progress) -> Result<Vec<f64>> {
    let rows = sample_rows(ctx, queries.len());
    let blocks = queries.len().div_ceil(rows);
    let Some(&FloorSample { inputs: ref sampled, positions: sample, rank }) = sampled else {
        bar.inc(blocks as u64);
        return Ok(vec![f64::NEG_INFINITY; queries.len()]);
    };
    let s = sample.len();
    let workers = Worker::several(ctx, sampled, rows.min(queries.len()) * s, blocks)?;
    let states = in_workers(
        workers.into_iter().map(|w| (w, Vec::new())).collect(),
        blocks,
        |(worker, floors): &mut (Worker, Vec<(usize, f64)>), b| {
            let range = b * rows..((b + 1) * rows).min(queries.len());
            let p = worker.products(&queries[range.clone()], &worker.inputs.gallery)?;
            let mut scratch = Vec::with_capacity(s);
            match ctx.kind {
                Kind::Float => row_floors::<f32>(ctx, queries, range, &p, sample, rank, &mut scratch, floors)?,
                _ => row_floors::<f64>(ctx, queries, range, &p, sample, rank, &mut scratch, floors)?,
            }
            bar.inc(1);
            Ok(())
        },
    )?;
    let mut floors = vec![f64::NEG_INFINITY; queries.len()];
    for (i, f) in states.into_iter().flat_map(|s| s.1) {
        floors[i] = f;
    }
    Ok(floors)
}

/// The floors of the queries `queries[range]` from their sample products `p`.
#[allow(clippy::too_many_arguments)]
fn row_floors<E: Element>(ctx: &Context<'_>, queries: &[usize], range: Range<usize>, p: &Tensor, sample: &[u32], rank: usize, scratch: &mut Vec<f64>, out: &mut Vec<(usize, f64)>) -> Result<()> {
    let values = host_elements::<E>(p)?;
    let s = sample.len();
    for (r, i) in range.enumerate() {
        if let Some(threshold) = kth_product(&values[r * s..(r + 1) * s], sample, ctx.own[queries[i]], rank, scratch) {
            out.push((i, threshold - ctx.delta));
        }
    }
    Ok(())
}

/// The outcome for each of `queries` (with `floors`, or none), counted over their blocks.
fn search_group(ctx: &Context<'_>, inputs: &Inputs, queries: Vec<usize>, floors: Option<&[f64]>, mirrored: bool, bar: &Progress) -> Result<Vec<Outcome>> {
    let slots = Slots::new(queries, ctx.query_labels, ctx.own, ctx.targets, ctx.query_rows, ctx.gallery_rows, ctx.k, floors);
    let blocks = plan(slots.len(), ctx.gallery_rows.len(), ctx.block, mirrored);
    match ctx.kind {
        Kind::Float => count::<f32>(ctx, inputs, &slots, &blocks, bar),
        _ => count::<f64>(ctx, inputs, &slots, &blocks, bar),
    }
}

/// [`search_group`] in the product kind `E`.
fn count<E: Element>(ctx: &Context<'_>, inputs: &Inputs, slots: &Slots, blocks: &[Block], bar: &Progress) -> Result<Vec<Outcome>> {
    let queries: Vec<usize> = (0..slots.len()).map(|i| slots.query(i)).collect();
    let widest = blocks.iter().map(|b| b.rows.len() * b.columns.len()).max().unwrap_or(0);
    let workers = Worker::several(ctx, inputs, widest, blocks.len())?;
    let tallies = in_workers(
        workers.into_iter().map(|w| (w, Tally::new(slots, ctx.query_rows, ctx.gallery_rows, ctx.k, ctx.delta))).collect(),
        blocks.len(),
        |(worker, tally): &mut (Worker, Tally<'_, E>), b| {
            let block = &blocks[b];
            let columns = worker.inputs.gallery.narrow(0, block.columns.start as i64, block.columns.len() as i64);
            let p = worker.products(&queries[block.rows.clone()], &columns)?;
            scan_block(tally, host_elements::<E>(&p)?, block);
            bar.inc(1);
            Ok(())
        },
    )?;
    let tallies: Vec<Tally<'_, E>> = tallies.into_iter().map(|t| t.1).collect();
    Ok((0..slots.len()).map(|i| merge(&tallies, i, ctx.k)).collect())
}

/// Offers a block's products [rows, columns] (row-major `values`) to the tally: each
/// row to its query, and each column to its query too when the block is mirrored.
fn scan_block<E: Element>(tally: &mut Tally<'_, E>, values: &[E], block: &Block) {
    let w = block.columns.len();
    let (mut row_hits, mut column_hits) = (Vec::new(), Vec::new());
    for (r, i) in block.rows.clone().enumerate() {
        let row = &values[r * w..(r + 1) * w];
        row_hits.clear();
        column_hits.clear();
        let column_cuts = block.mirrored.then(|| &tally.cuts()[block.columns.clone()]);
        E::mark(row, tally.cut(i), column_cuts, &mut row_hits, &mut column_hits);
        for &j in &row_hits {
            tally.offer(i, (block.columns.start + j as usize) as u32, row[j as usize].value());
        }
        // Mirrored: the queries are the gallery, so column j is query (and row i entry).
        for &j in &column_hits {
            tally.offer(block.columns.start + j as usize, i as u32, row[j as usize].value());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_respect_the_budget() {
        let need = |q: usize| [3, 5, 2, 9, 1][q];
        assert_eq!(groups(5, 100, need), vec![vec![0, 1, 2, 3, 4]]);
        assert_eq!(groups(5, 10, need), vec![vec![0, 1, 2], vec![3, 4]]);
        // A query needing more than the budget still gets a group of its own.
        assert_eq!(groups(5, 4, need), vec![vec![0], vec![1], vec![2], vec![3], vec![4]]);
    }

    #[test]
    fn symmetric_plan_covers_each_pair_once() {
        let blocks = plan(10, 10, 4, true);
        let mut seen = vec![0u8; 100];
        for b in &blocks {
            for r in b.rows.clone() {
                for c in b.columns.clone() {
                    seen[r * 10 + c] += 1;
                    if b.mirrored {
                        seen[c * 10 + r] += 1;
                    }
                }
            }
        }
        // Diagonal blocks are scanned along rows only, so every ordered pair once.
        assert!(seen.iter().all(|&s| s == 1), "{seen:?}");
        assert_eq!(blocks.len(), 6);
        assert_eq!(plan(10, 7, 4, false).len(), 6);
    }

    #[test]
    fn a_misleading_sample_is_searched_again_and_ranks_stay_exact() {
        tch::manual_seed(21);
        // k = 200 samples runs of 16 entries every 128; make those entries (and so every
        // query among them) nearly one direction, the rest random: a query in the sample
        // then finds its sample threshold far above its 200th neighbour.
        let (n, k) = (4000usize, 200usize);
        let x = Tensor::randn([n as i64, 8], (Kind::Float, Device::Cpu));
        let direction = Tensor::from_slice(&[1.0f32, 0., 0., 0., 0., 0., 0., 0.]).view([1, 8]);
        let in_sample = Tensor::from_slice(&(0..n).map(|j| (j % 128 < 16) as i64 as f32).collect::<Vec<f32>>()).view([-1, 1]);
        let x = &x * (1.0 - &in_sample) * 1.0 + (&direction + &x * 0.01) * &in_sample;
        let labels: Vec<i64> = (0..n).map(|j| if (20..60).contains(&(j % 128)) { (j % 2) as i64 } else { (j % 97 + 2) as i64 }).collect();
        let own: Vec<i64> = (0..n as i64).collect();
        let full = super::super::knn(&x, &x, Some(&own), k, &KnnOptions::default()).expect("knn").indices;
        let want = |q: usize| -> Vec<usize> {
            let row = Vec::<i64>::try_from(full.get(q as i64)).expect("row");
            (0..row.len()).filter(|&r| labels[row[r] as usize] == labels[q]).collect()
        };
        // One group (symmetric), and groups of a few hundred queries (full grid each).
        for counter_bytes in [COUNTER_BYTES, 8 * 2 * 4000] {
            let mut seen = 0;
            let rechecked = target_ranks(&x, &x, Some(&own), &labels, &labels, k, &KnnOptions::default(), counter_bytes, |q, ranks| {
                assert_eq!(q, seen, "queries in order");
                seen += 1;
                if q % 7 == 0 {
                    assert_eq!(ranks, want(q).as_slice(), "query {q}, counters {counter_bytes}");
                }
                Ok(())
            })
            .expect("ranks");
            assert_eq!(seen, n);
            assert!(rechecked > 0 && rechecked < n, "rechecked {rechecked}");
        }
    }
}
