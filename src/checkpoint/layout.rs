//! Names and paths inside a run's `checkpoints/` folder.
//!
//! ```text
//! <run_dir>/checkpoints/
//!   step-000001200/            one checkpoint, named by its global step
//!     tensors.safetensors      "model/<var>" and "optim/<state>" tensors
//!     meta.json                CheckpointMeta + the tensor file's size and CRC32C
//!     COMPLETE                 written last; holds meta.json's size and CRC32C
//!   best -> step-000000800     symlink to the best checkpoint by Recall@1
//!   .tmp-…                     a writer's scratch space; ignored, removed by the next save
//! ```
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{HistError, Result};

/// Folder under the run directory that holds the checkpoints.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
/// The tensors of a checkpoint (safetensors format).
pub const TENSORS_FILE: &str = "tensors.safetensors";
/// The metadata of a checkpoint (JSON).
pub const META_FILE: &str = "meta.json";
/// Marker written last; a checkpoint without a valid one is never loaded.
pub const COMPLETE_FILE: &str = "COMPLETE";
/// Symlink in the checkpoints folder naming the best checkpoint by Recall@1.
pub const BEST_LINK: &str = "best";
/// Prefix of model variables in the tensor file.
pub const MODEL_PREFIX: &str = "model/";
/// Prefix of optimiser state in the tensor file.
pub const OPTIM_PREFIX: &str = "optim/";

/// Hidden scratch entries start with this; list and load never look at them.
pub(crate) const TEMP_PREFIX: &str = ".tmp-";

const STEP_PREFIX: &str = "step-";

/// Folder name of the checkpoint at `global_step`: `step-` and at least nine digits, so
/// names sort by step in a shell listing for any run shorter than a billion steps.
pub fn step_dir_name(global_step: usize) -> String {
    format!("{STEP_PREFIX}{global_step:09}")
}

/// The global step in a checkpoint folder name, or `None` if `name` is not one written by
/// [`step_dir_name`] (only the canonical spelling counts, so two names never share a step).
pub fn parse_step_dir_name(name: &str) -> Option<usize> {
    let digits = name.strip_prefix(STEP_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let step: usize = digits.parse().ok()?;
    (step_dir_name(step) == name).then_some(step)
}

/// A fresh scratch name for `label`; unique within the process (counter) and across
/// processes (pid), so a writer never reuses a folder a killed one left behind.
pub(crate) fn temp_name(label: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{TEMP_PREFIX}{label}-{}-{n}", std::process::id())
}

/// Every checkpoint folder in `root` as (global step, path), newest first; empty when
/// `root` does not exist yet. Scratch entries, the `best` link and stray files are skipped.
pub(crate) fn step_dirs(root: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let mut found = Vec::new();
    for (name, path, is_dir) in entries(root)? {
        if let (Some(step), true) = (parse_step_dir_name(&name), is_dir) {
            found.push((step, path));
        }
    }
    found.sort_by_key(|(step, _)| std::cmp::Reverse(*step));
    Ok(found)
}

/// Scratch entries (`.tmp-…`) in `root`, files or folders.
pub(crate) fn temp_entries(root: &Path) -> Result<Vec<PathBuf>> {
    Ok(entries(root)?
        .into_iter()
        .filter(|(name, _, _)| name.starts_with(TEMP_PREFIX))
        .map(|(_, path, _)| path)
        .collect())
}

/// (name, path, is a real folder) for each entry of `root`; names that are not UTF-8 are
/// none of ours and are skipped.
fn entries(root: &Path) -> Result<Vec<(String, PathBuf, bool)>> {
    let read = match std::fs::read_dir(root) {
        Ok(read) => read,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(HistError::Io {
                path: root.to_path_buf(),
                message: format!("cannot list: {e}"),
            })
        }
    };
    let mut out = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| HistError::Io {
            path: root.to_path_buf(),
            message: format!("cannot list: {e}"),
        })?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        // file_type does not follow symlinks: `best` is never mistaken for a checkpoint.
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        out.push((name, entry.path(), is_dir));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_names_round_trip_and_reject_other_spellings() {
        assert_eq!(step_dir_name(42), "step-000000042");
        assert_eq!(parse_step_dir_name("step-000000042"), Some(42));
        assert_eq!(step_dir_name(1_234_567_890), "step-1234567890");
        assert_eq!(parse_step_dir_name("step-1234567890"), Some(1_234_567_890));
        for bad in [
            "step-42",
            "step-0000000042",
            "step-",
            "step-00000004x",
            "best",
            ".tmp-step-000000042-1-0",
        ] {
            assert_eq!(parse_step_dir_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn temp_names_are_hidden_and_unique() {
        let a = temp_name("step-000000001");
        let b = temp_name("step-000000001");
        assert!(a.starts_with(TEMP_PREFIX) && b.starts_with(TEMP_PREFIX));
        assert_ne!(a, b);
    }
}
