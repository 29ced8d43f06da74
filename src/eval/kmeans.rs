//! Seeded k-means (k-means++ initialisation, Lloyd iterations, several restarts, the
//! lowest inertia kept) on the points' own device, for the NMI of an embedding.
//!
//! Distances are squared Euclidean in float32, computed a chunk of points at a time so
//! only a [chunk, k] block exists. The same seed gives the same clustering on the same
//! device; on CUDA, float atomics in the centroid sums may differ between runs in the
//! last bits, which can rarely flip a borderline assignment.
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use crate::error::{HistError, Result};

/// How k-means runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KMeansOptions {
    /// Independent k-means++ starts; the one with the lowest inertia wins.
    pub restarts: usize,
    /// Lloyd iterations per start at most; a start ends early once assignments repeat.
    pub max_iter: usize,
    /// Seed of the k-means++ draws.
    pub seed: u64,
    /// Points per distance block (memory ≈ 4 bytes × chunk × k).
    pub chunk: usize,
}

impl Default for KMeansOptions {
    fn default() -> Self {
        KMeansOptions { restarts: 3, max_iter: 50, seed: 0, chunk: 4096 }
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
    for _ in 0..options.restarts.max(1) {
        let centres = kmeans_plus_plus(&x, &x_sq, k as i64, &mut rng);
        let run = lloyd(&x, &x_sq, centres, options)?;
        if best.as_ref().is_none_or(|b| run.inertia < b.inertia) {
            best = Some(run);
        }
    }
    best.ok_or_else(|| HistError::input("restarts", "k-means ran no start"))
}

/// Squared distances [N] of every point to `centre` [D].
fn distances_to(x: &Tensor, x_sq: &Tensor, centre: &Tensor) -> Tensor {
    (x_sq - x.mv(centre) * 2.0 + centre.square().sum(Kind::Float)).clamp_min(0.0)
}

/// k-means++ (Arthur & Vassilvitskii 2007): each new centre is a point drawn with
/// probability proportional to its squared distance to the nearest centre so far.
fn kmeans_plus_plus(x: &Tensor, x_sq: &Tensor, k: i64, rng: &mut ChaCha8Rng) -> Tensor {
    let n = x.size()[0];
    let mut chosen = vec![rng.random_range(0..n)];
    let mut nearest = distances_to(x, x_sq, &x.get(chosen[0]));
    while (chosen.len() as i64) < k {
        // The draw happens on the CPU (one uniform number), the search on the device, so
        // only a scalar crosses per centre.
        let cumulative = nearest.to_kind(Kind::Double).cumsum(0, Kind::Double);
        let total = cumulative.double_value(&[n - 1]);
        let pick = if total > 0.0 {
            let u = rng.random::<f64>() * total;
            let i = Tensor::searchsorted_scalar(&cumulative, u, false, true, "right", None::<Tensor>).int64_value(&[]);
            i.min(n - 1)
        } else {
            // Every point coincides with a centre already: any point will do.
            rng.random_range(0..n)
        };
        chosen.push(pick);
        nearest = nearest.minimum(&distances_to(x, x_sq, &x.get(pick)));
    }
    x.index_select(0, &Tensor::from_slice(&chosen).to_device(x.device()))
}

/// Nearest centre of every point and the squared distance to it.
fn assign(x: &Tensor, x_sq: &Tensor, centres: &Tensor, chunk: i64) -> (Tensor, Tensor) {
    let n = x.size()[0];
    let c_sq = centres.square().sum_dim_intlist(1, false, None::<Kind>);
    let (mut labels, mut dists) = (Vec::new(), Vec::new());
    let mut start = 0;
    while start < n {
        let m = chunk.min(n - start);
        // ‖x‖² − 2x·c + ‖c‖²; ‖x‖² is constant per row so it joins after the argmin.
        let d = c_sq.unsqueeze(0) - x.narrow(0, start, m).matmul(&centres.tr()) * 2.0;
        let (min, arg) = d.min_dim(1, false);
        dists.push((min + x_sq.narrow(0, start, m)).clamp_min(0.0));
        labels.push(arg);
        start += m;
    }
    (Tensor::cat(&labels, 0), Tensor::cat(&dists, 0))
}

/// Lloyd iterations from `centres` until the assignments repeat or `max_iter` runs.
fn lloyd(x: &Tensor, x_sq: &Tensor, mut centres: Tensor, options: &KMeansOptions) -> Result<Clustering> {
    let k = centres.size()[0];
    let chunk = options.chunk.max(1) as i64;
    let (mut labels, mut dists) = assign(x, x_sq, &centres, chunk);
    let mut iterations = 0;
    while iterations < options.max_iter {
        iterations += 1;
        centres = update(x, &labels, &dists, k);
        let (new_labels, new_dists) = assign(x, x_sq, &centres, chunk);
        let converged = new_labels.equal(&labels);
        labels = new_labels;
        dists = new_dists;
        if converged {
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
