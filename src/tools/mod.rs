//! Worker sub-commands that are tools rather than training.
pub mod inspect_loss;
