//! What a run leaves behind: TensorBoard events, metrics, the run directory.
pub mod metrics;
pub mod run_dir;
mod event_proto;
pub mod tensorboard;
