//! Semantic tuplets as a hypergraph: one hyperedge per class present in the batch, and
//! the degree-normalised propagation G·X without any N×N or diagonal matrix.
use tch::Tensor;

/// Incidence of the batch's hypergraph.
pub struct Incidence {
    /// H [N, E]: 1 where the sample belongs to the class, exp(−α d) elsewhere.
    pub h: Tensor,
    /// The classes present in the batch, increasing: hyperedge e is class `classes[e]`.
    pub classes: Tensor,
}

/// Builds H from distances `d` [N, C] and `labels` [N] with soft negative membership
/// exp(−α·d). Positive entries are constants (no gradient), negatives carry gradient into
/// both the embeddings and the prototypes.
pub fn incidence(d: &Tensor, labels: &Tensor, alpha: f64) -> Incidence {
    let (classes, _, _) = labels.unique_dim(0, true, false, false);
    let d_edges = d.index_select(1, &classes);
    let positive = labels.unsqueeze(1).eq_tensor(&classes.unsqueeze(0));
    let soft = (d_edges * (-alpha)).exp();
    let ones = soft.ones_like();
    let h = ones.where_self(&positive, &soft);
    Incidence { h, classes }
}

/// G·X with G = Dv^{-1/2} H De^{-1} Hᵀ Dv^{-1/2}, unit edge weights, evaluated right to
/// left as scalings and two skinny products: O(N·E·F) time, O(N·F + N·E) memory.
pub fn propagate(h: &Tensor, x: &Tensor) -> Tensor {
    let dv_inv_sqrt = h.sum_dim_intlist(1, true, h.kind()).rsqrt();
    let de_inv = h.sum_dim_intlist(0, false, h.kind()).reciprocal().unsqueeze(1);
    let y = &dv_inv_sqrt * x;
    let y = h.tr().matmul(&y) * de_inv;
    h.matmul(&y) * dv_inv_sqrt
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// Reference: the dense G of the authors' code.
    fn dense_g(h: &Tensor) -> Tensor {
        let dv = h.sum_dim_intlist(1, false, Kind::Double).pow_tensor_scalar(-0.5).diag(0);
        let de = h.sum_dim_intlist(0, false, Kind::Double).reciprocal().diag(0);
        dv.matmul(h).matmul(&de).matmul(&h.tr()).matmul(&dv)
    }

    #[test]
    fn factored_propagation_equals_dense_g() {
        tch::manual_seed(1);
        let opts = (Kind::Double, Device::Cpu);
        let d = Tensor::rand([9, 6], opts) * 3.0;
        let labels = Tensor::from_slice(&[0i64, 0, 2, 2, 2, 5, 5, 1, 1]);
        let inc = incidence(&d, &labels, 1.3);
        assert_eq!(inc.h.size(), [9, 4]);
        let x = Tensor::randn([9, 3], opts);
        let want = dense_g(&inc.h).matmul(&x);
        let got = propagate(&inc.h, &x);
        let err = (got - want).abs().max().double_value(&[]);
        assert!(err < 1e-13, "max abs difference {err}");
    }

    #[test]
    fn positives_are_one_and_negatives_soft() {
        let d = Tensor::from_slice(&[0.5f64, 1.0, 2.0, 0.25]).view([2, 2]);
        let labels = Tensor::from_slice(&[1i64, 0]);
        let inc = incidence(&d, &labels, 2.0);
        let h: Vec<f64> = Vec::try_from(inc.h.flatten(0, -1)).unwrap_or_default();
        assert_eq!(h, vec![(-1.0f64).exp(), 1.0, 1.0, (-0.5f64).exp()]);
    }
}
