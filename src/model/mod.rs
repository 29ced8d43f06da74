//! Backbones, the embedding head, ImageNet weight import, and the mixed-precision switches
//! (channels-last memory format, autocast).
pub mod autocast;
pub mod backbone;
pub mod batch_norm;
pub mod bn_inception;
pub mod embedding_model;
pub mod head;
pub mod memory_format;
pub mod precision;
pub mod pretrained;
pub mod resnet;
pub mod small_cnn;

pub use embedding_model::EmbeddingModel;
