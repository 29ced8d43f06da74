//! Saving a checkpoint: the atomicity protocol.
//!
//! 1. Remove scratch left by an interrupted writer (`.tmp-…`).
//! 2. Write tensors.safetensors and meta.json (with the tensor file's size and CRC32C) in a
//!    fresh scratch folder; fsync both files and the folder.
//! 3. Rename the scratch folder to `step-<global_step:09>`; fsync `checkpoints/`.
//! 4. Write COMPLETE (meta.json's size and CRC32C); fsync it and the step folder.
//! 5. Apply retention and point `best` at the best checkpoint.
//!
//! A crash before 3 leaves only scratch; between 3 and 4 a folder without COMPLETE, which
//! is never loaded and which the next save removes. A failure (a full disk, say) before 4
//! removes what this save wrote and returns the error; earlier checkpoints are untouched.
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use tch::{Device, Tensor};

use super::digest::{complete_marker, FileDigest};
use super::durable::{
    create_dir_synced, fault, io_error, remove_dir_via_rename, remove_scratch, rename_synced,
    sync_dir, sync_file, write_file_synced,
};
use super::layout::{
    step_dir_name, temp_entries, temp_name, COMPLETE_FILE, META_FILE, MODEL_PREFIX, OPTIM_PREFIX,
    TENSORS_FILE,
};
use super::meta::{encode, CheckpointMeta, TensorsRecord, FORMAT_VERSION};
use super::store::{CheckpointStore, CheckpointTensors};
use super::tensor_file;
use crate::error::{HistError, Result};

impl CheckpointStore {
    /// Atomically writes checkpoint `step-<global_step:09>` (replacing one of that step, if
    /// any), then applies retention and updates the `best` link; returns the checkpoint's
    /// folder. Tensors may live on any device; they are copied to the CPU. On error nothing
    /// of this save is left under a checkpoint's name, earlier checkpoints stay loadable,
    /// and the message names the file that failed. An error from retention (after the
    /// checkpoint is complete) says that the checkpoint itself was saved.
    pub fn save(&self, meta: &CheckpointMeta, tensors: &CheckpointTensors) -> Result<PathBuf> {
        let name = step_dir_name(meta.global_step);
        let final_dir = self.root.join(&name);
        if meta.format_version != FORMAT_VERSION {
            let message = format!(
                "metadata has format_version {}, this build writes {FORMAT_VERSION}",
                meta.format_version
            );
            return Err(HistError::Io {
                path: final_dir,
                message,
            });
        }
        let named = named_tensors(tensors, &final_dir)?;
        create_dir_synced(&self.root)?;
        for stale in temp_entries(&self.root)? {
            remove_scratch(&stale)?;
        }

        let scratch = self.root.join(temp_name(&name));
        let meta_digest = match stage(&scratch, meta, &named) {
            Ok(digest) => digest,
            Err(e) => {
                let _ = remove_scratch(&scratch);
                return Err(e);
            }
        };
        publish(&self.root, &scratch, &final_dir)?;
        if let Err(e) = mark_complete(&final_dir, &meta_digest) {
            // Leave no half-made checkpoint behind; if even this fails it stays unloadable.
            let _ = remove_dir_via_rename(&self.root, &final_dir);
            return Err(e);
        }
        self.apply_retention(meta.global_step)
            .map_err(|e| match e {
                HistError::Io { path, message } => HistError::Io {
                    path,
                    message: format!(
                        "{message} (during retention; checkpoint {name} itself was saved)"
                    ),
                },
                other => other,
            })?;
        Ok(final_dir)
    }
}

/// The tensors under their file names, detached, on the CPU and contiguous (safetensors
/// writes raw storage); names must be non-empty and unique within their group.
fn named_tensors(tensors: &CheckpointTensors, dir: &Path) -> Result<Vec<(String, Tensor)>> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(tensors.model.len() + tensors.optim.len());
    for (prefix, group) in [
        (MODEL_PREFIX, &tensors.model),
        (OPTIM_PREFIX, &tensors.optim),
    ] {
        for (name, tensor) in group {
            let full = format!("{prefix}{name}");
            if name.is_empty() || !seen.insert(full.clone()) {
                let what = if name.is_empty() {
                    "an empty name"
                } else {
                    "a duplicate name"
                };
                return Err(HistError::Io {
                    path: dir.join(TENSORS_FILE),
                    message: format!("cannot save {what}: {full:?}"),
                });
            }
            out.push((full, tensor.detach().to_device(Device::Cpu).contiguous()));
        }
    }
    Ok(out)
}

/// Step 2: the checkpoint's files in `scratch`, durable; returns meta.json's digest.
fn stage(scratch: &Path, meta: &CheckpointMeta, named: &[(String, Tensor)]) -> Result<FileDigest> {
    std::fs::create_dir(scratch).map_err(|e| io_error(scratch, "create folder", e))?;
    let tensor_path = scratch.join(TENSORS_FILE);
    fault("tensors", &tensor_path)?;
    tensor_file::write(&tensor_path, named).map_err(|e| HistError::Io {
        path: tensor_path.clone(),
        message: format!("cannot write tensors: {e}"),
    })?;
    sync_file(&tensor_path)?;
    // Checksum what the file holds, not what we meant to write.
    let digest =
        FileDigest::of_file(&tensor_path).map_err(|e| io_error(&tensor_path, "read back", e))?;
    let (model, optim) = named.iter().fold((0, 0), |(m, o), (n, _)| {
        if n.starts_with(MODEL_PREFIX) {
            (m + 1, o)
        } else {
            (m, o + 1)
        }
    });
    let record = TensorsRecord {
        file: TENSORS_FILE.to_string(),
        digest,
        model,
        optim,
    };
    let meta_path = scratch.join(META_FILE);
    let bytes = encode(meta, &record).map_err(|message| HistError::Io {
        path: meta_path.clone(),
        message,
    })?;
    fault("meta", &meta_path)?;
    write_file_synced(&meta_path, &bytes)?;
    sync_dir(scratch)?;
    Ok(FileDigest::of_bytes(&bytes))
}

/// Step 3: `scratch` becomes `final_dir`. A folder already there (a checkpoint of the
/// same step, e.g. saved again after a resume) is moved aside first and restored if the
/// rename fails, so a failed save never loses it.
fn publish(root: &Path, scratch: &Path, final_dir: &Path) -> Result<()> {
    let aside = match std::fs::symlink_metadata(final_dir) {
        Ok(_) => {
            let label = format!(
                "replaced-{}",
                final_dir
                    .file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default()
            );
            let aside = root.join(temp_name(&label));
            if let Err(e) = rename_synced(final_dir, &aside, root) {
                let _ = remove_scratch(scratch);
                return Err(e);
            }
            Some(aside)
        }
        Err(_) => None,
    };
    let moved = fault("publish", final_dir).and_then(|()| rename_synced(scratch, final_dir, root));
    match (moved, aside) {
        (Ok(()), Some(aside)) => {
            // Scratch now; if removal fails here the next save's cleanup gets it.
            let _ = remove_scratch(&aside);
            Ok(())
        }
        (Ok(()), None) => Ok(()),
        (Err(e), aside) => {
            if let Some(aside) = aside {
                let _ = rename_synced(&aside, final_dir, root);
            }
            let _ = remove_scratch(scratch);
            Err(e)
        }
    }
}

/// Step 4: the COMPLETE marker, durable in its folder.
fn mark_complete(final_dir: &Path, meta_digest: &FileDigest) -> Result<()> {
    let marker = final_dir.join(COMPLETE_FILE);
    fault("complete", &marker)?;
    write_file_synced(&marker, complete_marker(meta_digest).as_bytes())?;
    sync_dir(final_dir)
}
