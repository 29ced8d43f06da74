//! What a run leaves behind: TensorBoard events (scalars, text, images, histograms,
//! HParams), projector files, the retrieval grid, metrics, the run directory.
mod event_proto;
pub mod hparams;
mod hparams_proto;
pub mod histogram;
pub mod metrics;
pub mod projector;
pub mod retrieval_grid;
pub mod run_dir;
pub mod tensorboard;
pub mod thumbnails;
