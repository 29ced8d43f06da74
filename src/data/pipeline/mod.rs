//! The streaming image pipeline for image files (folders and the benchmarks): decode
//! (libjpeg-turbo or zune-jpeg / PNG; training crops decode only their region),
//! torchvision-exact train and test transforms, normalisation in the configured input
//! convention, and a loader of worker threads that prepares whole batches ahead of the step. docs/datasets.md describes it; docs/benchmarks.md measures it.
pub mod decode;
pub mod geometry;
#[cfg(hist_libjpeg)]
pub mod jpeg_region;
pub mod loader;
pub mod normalize;
pub mod resample;
pub mod spec;
pub mod split;
pub mod train_batches;

pub use decode::{decode_bytes, decode_bytes_region, decode_file, decode_file_region, jpeg_decoder, LIBJPEG};
pub use loader::{BatchPlan, ImageJob, LoadedBatch, Loader, SkippedImage};
pub use spec::{ImageOp, PipelineSpec};
pub use split::{Dataset, FileSet, SplitImages};
pub use train_batches::{rank_positions, LocalImages, PlanRange, TrainBatches};
