//! Training: optimisers over parameters the project owns, schedules, the loop.
pub mod grad_scaler;
pub mod optim;
pub mod param_groups;
pub mod resume;
pub mod step;
pub mod stop;
pub mod trainer;

pub use trainer::{train, TrainSummary};
