//! Backbones and the embedding head.
pub mod embedding_model;
pub mod head;
pub mod small_cnn;

pub use embedding_model::EmbeddingModel;
