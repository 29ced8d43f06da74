//! Datasets (synthetic, user folders, the standard benchmarks), the class-balanced sampler,
//! batch assembly and the streaming image pipeline.
pub mod datasets;
mod image_set;
pub mod folder;
pub mod pipeline;
pub mod sampler;
pub mod streams;
pub mod synthetic;

pub use image_set::{ImageSet, Splits};
