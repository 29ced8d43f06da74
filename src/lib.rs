//! hist: deep metric learning with the HIST loss (Lim et al., CVPR 2022) on libtorch.
//!
//! Data flows one way: config → data → model → loss → optimiser → telemetry.
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod dist;
pub mod error;
pub mod eval;
pub mod heap;
mod ffi_message;
pub mod loss;
pub mod model;
pub mod progress;
pub mod telemetry;
pub mod tools;
pub mod train;

pub use error::{HistError, Result};
