//! The HIST loss (design §2): prototypical distributions, semantic tuplets as a
//! hypergraph, and the HGNN classifier on top of it.
pub mod distances;
pub mod hgnn;
pub mod hist;
pub mod hypergraph;
pub mod prototypes;

pub use hist::{hist_loss, HistHyper, HistLoss, HistTensors, LossTerms};
