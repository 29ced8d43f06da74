//! Worker sub-commands that are tools rather than training.
pub mod bench_loss;
pub mod inspect_loss;
