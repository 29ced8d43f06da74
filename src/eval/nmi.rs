//! Normalised mutual information between class labels and a clustering, with the
//! arithmetic-mean normaliser: the default of scikit-learn's
//! `normalized_mutual_info_score`, whose special cases are kept so the two agree.
use std::collections::HashMap;

/// NMI(U, V) = I(U; V) / ((H(U) + H(V)) / 2), natural logarithms, for two labelings of
/// the same items (values are arbitrary ids). As scikit-learn: 1 when both labelings put
/// everything in one group (or are empty), 0 when the mutual information is 0.
///
/// # Panics
/// If the two slices differ in length (a programming error, not a data error).
pub fn nmi(labels: &[i64], clusters: &[i64]) -> f64 {
    assert_eq!(labels.len(), clusters.len(), "nmi: labelings of different lengths");
    let class_sizes = counts(labels.iter().copied());
    let cluster_sizes = counts(clusters.iter().copied());
    if class_sizes.len() == cluster_sizes.len() && class_sizes.len() <= 1 {
        return 1.0;
    }
    let mi = mutual_information(labels, clusters, &class_sizes, &cluster_sizes);
    if mi == 0.0 {
        return 0.0;
    }
    let n = labels.len() as f64;
    let normaliser = (entropy(&class_sizes, n) + entropy(&cluster_sizes, n)) / 2.0;
    mi / normaliser
}

fn counts(values: impl Iterator<Item = i64>) -> HashMap<i64, u64> {
    let mut c = HashMap::new();
    for v in values {
        *c.entry(v).or_insert(0u64) += 1;
    }
    c
}

/// H = −Σ (a/n) ln(a/n) over group sizes a.
fn entropy(sizes: &HashMap<i64, u64>, n: f64) -> f64 {
    if sizes.len() <= 1 {
        return 0.0;
    }
    -sorted_values(sizes).iter().map(|&a| (a / n) * (a.ln() - n.ln())).sum::<f64>()
}

/// I = Σ_ij (n_ij/n) ln(n·n_ij / (a_i b_j)) over non-empty cells of the contingency table.
fn mutual_information(labels: &[i64], clusters: &[i64], a: &HashMap<i64, u64>, b: &HashMap<i64, u64>) -> f64 {
    // A single group on either side carries no information (and scikit-learn returns 0).
    if a.len() == 1 || b.len() == 1 {
        return 0.0;
    }
    let mut cells: HashMap<(i64, i64), u64> = HashMap::new();
    for (&u, &v) in labels.iter().zip(clusters) {
        *cells.entry((u, v)).or_insert(0) += 1;
    }
    let n = labels.len() as f64;
    // Summing in a fixed order keeps the result independent of HashMap iteration order.
    let mut keys: Vec<&(i64, i64)> = cells.keys().collect();
    keys.sort_unstable();
    let mi: f64 = keys
        .into_iter()
        .map(|key| {
            let nij = cells[key] as f64;
            let outer = (a[&key.0] * b[&key.1]) as f64;
            let term = (nij / n) * (nij.ln() - n.ln()) + (nij / n) * (-outer.ln() + n.ln() + n.ln());
            // scikit-learn zeroes terms below machine epsilon before summing.
            if term.abs() < f64::EPSILON { 0.0 } else { term }
        })
        .sum();
    mi.max(0.0)
}

fn sorted_values(sizes: &HashMap<i64, u64>) -> Vec<f64> {
    let mut keys: Vec<&i64> = sizes.keys().collect();
    keys.sort_unstable();
    keys.into_iter().map(|k| sizes[k] as f64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scikit_learn_docstring_values() {
        assert_eq!(nmi(&[0, 0, 1, 1], &[0, 0, 1, 1]), 1.0);
        assert_eq!(nmi(&[0, 0, 1, 1], &[1, 1, 0, 0]), 1.0);
        assert_eq!(nmi(&[0, 0, 0, 0], &[0, 1, 2, 3]), 0.0);
        assert_eq!(nmi(&[5, 5, 5], &[2, 2, 2]), 1.0);
        // mutual_info_score([0,1,1,0,1,0], [0,1,0,0,1,1]) = 0.0566...; both entropies ln 2.
        let v = nmi(&[0, 1, 1, 0, 1, 0], &[0, 1, 0, 0, 1, 1]);
        let mi = (2.0 / 6.0) * (2.0 * 6.0f64 / 9.0).ln() * 2.0 + (1.0 / 6.0) * (6.0f64 / 9.0).ln() * 2.0;
        assert!((v - mi / 2f64.ln()).abs() < 1e-12, "{v}");
    }
}
