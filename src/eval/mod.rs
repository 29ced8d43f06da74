//! Retrieval evaluation (design §5, docs/evaluation.md): embedding extraction, the exact
//! chunked k-NN search, Recall@K, MAP@R, R-Precision, and NMI of k-means.
pub mod embed;
pub mod kmeans;
pub mod knn;
pub mod metrics;
pub mod nmi;
pub mod protocol;
pub mod recall;
pub mod report;
pub mod retrieval;
pub mod suite;
pub mod test_split;

pub use embed::{embed_all, embed_sharded};
pub use protocol::Split;
pub use recall::recall_at_k;
pub use report::EvalReport;
pub use suite::{evaluate, EvalOptions};
