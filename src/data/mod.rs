//! Datasets (synthetic, user folders), the class-balanced sampler and batch assembly.
mod image_set;
pub mod folder;
pub mod sampler;
pub mod streams;
pub mod synthetic;

pub use image_set::{ImageSet, Splits};
