//! Seeded k-means (k-means++ initialisation in batches, Lloyd iterations, several
//! restarts, the lowest inertia kept) on the points' own device, for the NMI of an
//! embedding.
//!
//! Distances are squared Euclidean in float32, computed a block of points at a time so
//! only a [block, k] matrix exists, as one matrix product each into a reused buffer.
//! The same seed gives the same clustering on the same device; on CUDA, float atomics in
//! the centroid sums may differ between runs in the last bits, which can rarely flip a
//! borderline assignment.
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use crate::error::{HistError, Result};
use crate::progress::Progress;

/// How k-means runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KMeansOptions {
    /// Independent k-means++ starts; the one with the lowest inertia wins.
    pub restarts: usize,
    /// Lloyd iterations per start at most; a start ends early once assignments repeat.
    pub max_iter: usize,
    /// Seed of the k-means++ draws.
    pub seed: u64,
    /// Points per distance block, at least: blocks grow to 2^22 distances (16 MiB) when k
    /// is small, so few centres do not mean many tiny products. Memory ≈ 4 bytes × k ×
    /// max(chunk, 2^22 / k).
    pub chunk: usize,
}

impl Default for KMeansOptions {
    fn default() -> Self {
        // One start of at most 20 iterations, as pytorch-metric-learning's faiss k-means
        // (niter=20, nredo=1): at SOP scale every iteration is a 60,502 × 11,316 × 512
        // product, seconds on a CPU.
        KMeansOptions { restarts: 1, max_iter: 20, seed: 0, chunk: 4096 }
    }
}

/// The best clustering found.
#[derive(Clone, Debug, PartialEq)]
pub struct Clustering {
    /// Cluster of each point, in [0, k).
    pub assignments: Vec<i64>,
    /// Sum of squared distances of the points to their cluster centres.
    pub inertia: f64,
    /// Lloyd iterations the winning start ran.
    pub iterations: usize,
}

/// Clusters the rows of `points` [N, D] into `k` groups (1 ≤ k ≤ N).
pub fn kmeans(points: &Tensor, k: usize, options: &KMeansOptions) -> Result<Clustering> {
    let size = points.size();
    if size.len() != 2 || size[0] == 0 {
        return Err(HistError::input("points", format!("k-means needs a non-empty [N, D] tensor, got {size:?}")));
    }
    if k == 0 || k as i64 > size[0] {
        return Err(HistError::input("k", format!("k-means needs 1 <= k <= N = {}, got {k}", size[0])));
    }
    let _guard = tch::no_grad_guard();
    let x = points.to_kind(Kind::Float);
    let x_sq = x.square().sum_dim_intlist(1, false, None::<Kind>);
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let mut best: Option<Clustering> = None;
    let restarts = options.restarts.max(1);
    let bar = Progress::new("k-means", (restarts * options.max_iter) as u64, "iters", true);
    for restart in 0..restarts {
        bar.set_message(format!("start {}/{restarts}: seeding", restart + 1));
        let centres = kmeans_plus_plus(&x, &x_sq, k as i64, options.chunk.max(1) as i64, &mut rng)?;
        bar.set_message(format!("start {}/{restarts}: Lloyd", restart + 1));
        let run = lloyd(&x, &x_sq, centres, options, &bar)?;
        if best.as_ref().is_none_or(|b| run.inertia < b.inertia) {
            best = Some(run);
        }
    }
    best.ok_or_else(|| HistError::input("restarts", "k-means ran no start"))
}

/// Seeding rounds at most: k-means++ draws one centre per round, which costs k passes
/// over the points; drawing ⌈k / 64⌉ per round bounds the passes at 64 (SOP's 11,316
/// classes would otherwise take minutes on a CPU).
const SEED_ROUNDS: usize = 64;

/// k-means++ (Arthur & Vassilvitskii 2007), in rounds: each round draws
/// ⌈k / [`SEED_ROUNDS`]⌉ new centres among the points not yet chosen, without
/// replacement, each with probability proportional to its squared distance to the
/// nearest centre so far (Efraimidis–Spirakis keys ln(u)/w, the largest win; points at
/// distance 0 only once no other is left). With k ≤ 64 that is the classic one per round.
fn kmeans_plus_plus(x: &Tensor, x_sq: &Tensor, k: i64, chunk: i64, rng: &mut ChaCha8Rng) -> Result<Tensor> {
    let n = x.size()[0] as usize;
    let per_round = (k as usize).div_ceil(SEED_ROUNDS);
    let mut chosen = vec![false; n];
    let mut centres: Vec<i64> = Vec::with_capacity(k as usize);
    // No centre yet: equal weights, so the first round draws uniformly.
    let mut nearest: Option<Vec<f64>> = None;
    let mut keys: Vec<(u8, f64, usize)> = Vec::with_capacity(n);
    while centres.len() < k as usize {
        let take = per_round.min(k as usize - centres.len());
        keys.clear();
        for i in (0..n).filter(|&i| !chosen[i]) {
            // 1 − u ∈ (0, 1], so ln is finite; a point at distance 0 ranks by u alone.
            let u = 1.0 - rng.random::<f64>();
            let w = nearest.as_ref().map_or(1.0, |d| d[i]);
            keys.push(if w > 0.0 { (1, u.ln() / w, i) } else { (0, u, i) });
        }
        let best = |a: &(u8, f64, usize), b: &(u8, f64, usize)| b.0.cmp(&a.0).then(b.1.total_cmp(&a.1)).then(a.2.cmp(&b.2));
        if take < keys.len() {
            keys.select_nth_unstable_by(take - 1, best);
        }
        let mut round: Vec<usize> = keys[..take].iter().map(|key| key.2).collect();
        // Fixed order regardless of how the selection left them.
        round.sort_unstable();
        round.iter().for_each(|&i| chosen[i] = true);
        let new = x.index_select(0, &Tensor::from_slice(&round.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(x.device()));
        let (_, dist) = assign(x, x_sq, &new, chunk)?;
        let dist = Vec::<f32>::try_from(dist.to_device(tch::Device::Cpu))?;
        nearest = Some(match nearest {
            None => dist.into_iter().map(f64::from).collect(),
            Some(old) => old.into_iter().zip(dist).map(|(d, new)| d.min(new as f64)).collect(),
        });
        centres.extend(round.iter().map(|&i| i as i64));
    }
    Ok(x.index_select(0, &Tensor::from_slice(&centres).to_device(x.device())))
}

/// Distances per block below which blocks take more points than `chunk` asks.
const MIN_BLOCK: i64 = 1 << 22;

/// Nearest centre of every point and the squared distance to it.
fn assign(x: &Tensor, x_sq: &Tensor, centres: &Tensor, chunk: i64) -> Result<(Tensor, Tensor)> {
    let n = x.size()[0];
    let chunk = chunk.max(MIN_BLOCK / centres.size()[0].max(1));
    let c_sq = centres.square().sum_dim_intlist(1, false, None::<Kind>);
    // ‖x‖² − 2x·c + ‖c‖²; ‖x‖² is constant per row so it joins after the argmin, and
    // ‖c‖² − 2x·c is one product: ‖c‖² as its bias, −2cᵀ as its right factor.
    let minus_twice_t = centres.tr() * -2.0;
    let block = Tensor::f_empty([chunk.min(n), centres.size()[0]], (Kind::Float, x.device()))?;
    let (mut labels, mut dists) = (Vec::new(), Vec::new());
    let mut start = 0;
    while start < n {
        let m = chunk.min(n - start);
        let d = block.narrow(0, 0, m);
        let _ = c_sq.f_addmm_out(&d, &x.narrow(0, start, m), &minus_twice_t)?;
        let (min, arg) = d.min_dim(1, false);
        dists.push((min + x_sq.narrow(0, start, m)).clamp_min(0.0));
        labels.push(arg);
        start += m;
    }
    Ok((Tensor::cat(&labels, 0), Tensor::cat(&dists, 0)))
}

/// Lloyd iterations from `centres` until the assignments repeat or `max_iter` runs.
fn lloyd(x: &Tensor, x_sq: &Tensor, mut centres: Tensor, options: &KMeansOptions, bar: &Progress) -> Result<Clustering> {
    let k = centres.size()[0];
    let chunk = options.chunk.max(1) as i64;
    let (mut labels, mut dists) = assign(x, x_sq, &centres, chunk)?;
    let mut iterations = 0;
    while iterations < options.max_iter {
        iterations += 1;
        centres = update(x, &labels, &dists, k);
        let (new_labels, new_dists) = assign(x, x_sq, &centres, chunk)?;
        let converged = new_labels.equal(&labels);
        labels = new_labels;
        dists = new_dists;
        bar.inc(1);
        if converged {
            // The iterations this start will not run.
            bar.inc((options.max_iter - iterations) as u64);
            break;
        }
    }
    Ok(Clustering {
        assignments: Vec::<i64>::try_from(labels.to_device(tch::Device::Cpu))?,
        inertia: dists.sum(Kind::Double).double_value(&[]),
        iterations,
    })
}

/// Centroids of the current clusters. An emptied cluster is re-seeded at the point
/// farthest from its centre (the next-farthest for a second one, ...), as scikit-learn
/// does, so k clusters survive.
fn update(x: &Tensor, labels: &Tensor, dists: &Tensor, k: i64) -> Tensor {
    let sums = Tensor::zeros([k, x.size()[1]], (Kind::Float, x.device())).index_add(0, labels, x);
    let counts = labels.bincount(None::<Tensor>, k);
    let mut centres = sums / counts.clamp_min(1).to_kind(Kind::Float).unsqueeze(1);
    let empty = counts.eq(0).nonzero().flatten(0, -1);
    let n_empty = empty.size()[0];
    if n_empty > 0 {
        let far = dists.topk(n_empty.min(x.size()[0]), 0, true, true).1;
        let _ = centres.index_copy_(0, &empty.narrow(0, 0, far.size()[0]), &x.index_select(0, &far));
    }
    centres
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::nmi::nmi;
    use tch::Device;

    #[test]
    fn recovers_well_separated_blobs_deterministically() {
        tch::manual_seed(11);
        let (k, per, d) = (6i64, 20i64, 8i64);
        let centres = Tensor::randn([k, d], (Kind::Float, Device::Cpu)) * 10.0;
        let truth: Vec<i64> = (0..k * per).map(|i| i / per).collect();
        let x = centres.index_select(0, &Tensor::from_slice(&truth)) + Tensor::randn([k * per, d], (Kind::Float, Device::Cpu)) * 0.1;
        let opts = KMeansOptions { chunk: 7, ..KMeansOptions::default() };
        let a = kmeans(&x, k as usize, &opts).expect("kmeans");
        assert!(nmi(&truth, &a.assignments) > 0.99, "NMI {}", nmi(&truth, &a.assignments));
        assert_eq!(a, kmeans(&x, k as usize, &opts).expect("kmeans"), "same seed, same clustering");
        assert!(kmeans(&x, 0, &opts).is_err() && kmeans(&x, 1000, &opts).is_err());
    }
}
