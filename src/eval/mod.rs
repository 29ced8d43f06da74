//! Retrieval evaluation: embedding extraction and Recall@K.
pub mod embed;
pub mod recall;

pub use embed::{embed_all, embed_sharded};
pub use recall::recall_at_k;
