//! The checkpoint store and the values it saves and loads. Saving is in `write`, loading
//! in `read`, retention and `best` in `keep`.
use std::fmt;
use std::path::{Path, PathBuf};

use tch::Tensor;

use super::keep::{KeepLastAndBest, KeepPolicy};
use super::layout::{step_dirs, CHECKPOINTS_DIR};
use super::meta::CheckpointMeta;
use crate::error::Result;

/// Tensors grouped by role; in the file they are named `model/<var name>` and
/// `optim/<state name>`. Loaded groups are sorted by name (the file does not keep order).
#[derive(Default)]
pub struct CheckpointTensors {
    /// Every model variable (trained or frozen, plus BN statistics) by VarStore name.
    pub model: Vec<(String, Tensor)>,
    /// The optimiser's state as `Optimizer::state_tensors` names it.
    pub optim: Vec<(String, Tensor)>,
}

impl fmt::Debug for CheckpointTensors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Tensor's Debug prints values; names, shapes and kinds are what helps.
        let brief = |group: &[(String, Tensor)]| -> Vec<String> {
            group
                .iter()
                .map(|(n, t)| format!("{n} {:?} {:?}", t.size(), t.kind()))
                .collect()
        };
        f.debug_struct("CheckpointTensors")
            .field("model", &brief(&self.model))
            .field("optim", &brief(&self.optim))
            .finish()
    }
}

/// Checkpoints passed over while looking for a usable one, newest first: (folder,
/// one-line reason such as "tensors.safetensors is corrupt: checksum mismatch, …").
pub type Skipped = Vec<(PathBuf, String)>;

/// A checkpoint read back from disk and verified.
#[derive(Debug)]
pub struct LoadedCheckpoint {
    /// The checkpoint's folder (a `best` link is resolved to the folder it names).
    pub path: PathBuf,
    /// Its metadata, with the loss sums and Recall@1 bit-exact.
    pub meta: CheckpointMeta,
    /// Its tensors, on the CPU, each group sorted by name.
    pub tensors: CheckpointTensors,
    /// Newer checkpoints passed over on the way to this one, with the reason for each.
    pub skipped: Skipped,
}

/// The checkpoints of one run, in `<run_dir>/checkpoints`. One writer at a time: `save`
/// removes scratch and stale folders it finds, which would disturb a second writer.
pub struct CheckpointStore {
    pub(crate) root: PathBuf,
    pub(crate) policy: Box<dyn KeepPolicy>,
}

impl fmt::Debug for CheckpointStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckpointStore")
            .field("root", &self.root)
            .field("policy", &self.policy)
            .finish()
    }
}

impl CheckpointStore {
    /// A store in `<run_dir>/checkpoints` keeping the newest `keep_last` complete
    /// checkpoints plus the best by Recall@1 (0 is taken as 1: the checkpoint just saved
    /// is always kept). Nothing is touched on disk until the first `save`.
    pub fn new(run_dir: &Path, keep_last: usize) -> CheckpointStore {
        CheckpointStore::with_policy(run_dir, Box::new(KeepLastAndBest { keep_last }))
    }

    /// A store in `<run_dir>/checkpoints` with another retention policy.
    pub fn with_policy(run_dir: &Path, policy: Box<dyn KeepPolicy>) -> CheckpointStore {
        CheckpointStore {
            root: run_dir.join(CHECKPOINTS_DIR),
            policy,
        }
    }

    /// The folder holding the checkpoints (`<run_dir>/checkpoints`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// All checkpoint folders, complete or not, newest first (by the global step in the
    /// name). Scratch folders of interrupted writers and the `best` link are not listed.
    pub fn list(&self) -> Result<Vec<PathBuf>> {
        Ok(step_dirs(&self.root)?
            .into_iter()
            .map(|(_, path)| path)
            .collect())
    }
}
