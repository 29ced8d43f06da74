//! Backbones, the embedding head and ImageNet weight import.
pub mod backbone;
pub mod batch_norm;
pub mod bn_inception;
pub mod embedding_model;
pub mod head;
pub mod pretrained;
pub mod resnet;
pub mod small_cnn;

pub use embedding_model::EmbeddingModel;
