//! The process group: environment contract, rendezvous, collectives (CPU ring, NCCL),
//! gather with gradient, bucketed gradient reduction and exact SyncBatchNorm.
pub mod collectives;
pub mod cpu_ring;
pub mod env;
pub mod gather;
pub mod grad_sync;
pub mod nccl;
pub mod process_group;
pub mod sync_bn;

pub use collectives::{Collectives, ReduceOp, Solo};
