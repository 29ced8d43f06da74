//! The checkpoint store: atomic, verified, resumable checkpoints in a run directory.
//!
//! A checkpoint is complete or absent. It is written complete to a hidden temporary folder,
//! `COMPLETE` file included, and moved into place in one atomic rename (or exchange, when a
//! checkpoint of that step exists). COMPLETE's checksum chains to `meta.json`, whose
//! checksum in turn covers the tensor file; a checkpoint that
//! breaks any link of that chain is never loaded. docs/checkpoints.md has the layout, the
//! protocol and how to read a checkpoint from Python.
//!
//! Layout: `layout` (names and paths), `durable` (fsync and rename helpers), `digest`
//! (checksums and the COMPLETE marker), `meta` (the JSON metadata), `compat` (what must
//! match to resume), `store` (the store and its types), `write` (saving), `read`
//! (verifying and loading), `tensor_file` (one-pass verified read of the tensor file),
//! `keep` (retention and the `best` link).
mod compat;
mod digest;
mod durable;
mod keep;
mod layout;
mod meta;
mod read;
mod store;
mod tensor_file;
mod write;

pub use compat::{check_compat, config_fingerprint};
pub use keep::{best_step, KeepCandidate, KeepLastAndBest, KeepPolicy};
pub use layout::{
    parse_step_dir_name, step_dir_name, BEST_LINK, CHECKPOINTS_DIR, COMPLETE_FILE, META_FILE,
    MODEL_PREFIX, OPTIM_PREFIX, TENSORS_FILE,
};
pub use meta::{CheckpointMeta, Compat, FORMAT_VERSION};
pub use store::{CheckpointStore, CheckpointTensors, LoadedCheckpoint, Skipped};

#[cfg(test)]
mod fault_tests;
