//! Saving a checkpoint: the atomicity protocol.
//!
//! 1. Remove scratch left by an interrupted writer (`.tmp-…`).
//! 2. Write tensors.safetensors, meta.json (with the tensor file's size and CRC32C) and
//!    COMPLETE (meta.json's size and CRC32C) in a fresh scratch folder; fsync the three
//!    files and the folder.
//! 3. Rename the scratch folder to `step-<global_step:09>`, or, when a checkpoint of that
//!    step exists, exchange the two atomically; fsync `checkpoints/`.
//! 4. Apply retention and point `best` at the best checkpoint.
//!
//! So a checkpoint appears under its name complete, in one step: a crash leaves either
//! the old state or the new, plus scratch that nothing loads and the next save removes. A
//! failure (a full disk, say) removes what this save wrote and returns the error; earlier
//! checkpoints are untouched.
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use tch::{Device, Tensor};

use super::digest::{complete_marker, FileDigest};
use super::durable::{
    create_dir_synced, exchange_synced, fault, io_error, remove_scratch, remove_scratch_or_warn,
    rename_synced, sync_dir, sync_file, write_file_synced,
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
            remove_scratch_or_warn(&stale);
        }

        let scratch = self.root.join(temp_name(&name));
        let meta_digest = match stage(&scratch, meta, &named) {
            Ok(digest) => digest,
            Err(e) => {
                let _ = remove_scratch(&scratch);
                return Err(e);
            }
        };
        if let Err(e) = mark_complete(&scratch, &meta_digest) {
            let _ = remove_scratch(&scratch);
            return Err(e);
        }
        publish(&self.root, &scratch, &final_dir)?;
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

/// Step 3: `scratch` (complete) becomes `final_dir`. A folder already there (a checkpoint
/// of the same step: saved at an epoch's last step and again at its end, or again after
/// a resume) is exchanged with it in one atomic step where the file system can, so that
/// name always holds one complete checkpoint; elsewhere see [`replace_in_two_steps`].
fn publish(root: &Path, scratch: &Path, final_dir: &Path) -> Result<()> {
    let replacing = std::fs::symlink_metadata(final_dir).is_ok();
    let moved = fault("publish", final_dir).and_then(|()| match replacing {
        false => rename_synced(scratch, final_dir, root).map(|()| true),
        true => exchange_synced(scratch, final_dir, root),
    });
    match moved {
        // After an exchange `scratch` holds the replaced checkpoint.
        Ok(true) => {
            if replacing {
                remove_scratch_or_warn(scratch);
            }
            Ok(())
        }
        Ok(false) => replace_in_two_steps(root, scratch, final_dir),
        Err(e) => {
            let _ = remove_scratch(scratch);
            Err(e)
        }
    }
}

/// Replaces `final_dir` (which exists) by `scratch` without an atomic exchange: the old
/// folder is moved aside first and restored if the rename fails, so a failed save never
/// loses it; a crash between the two renames leaves only scratch copies of that step
/// (docs/checkpoints.md).
fn replace_in_two_steps(root: &Path, scratch: &Path, final_dir: &Path) -> Result<()> {
    let label = format!("replaced-{}", final_dir.file_name().map(|n| n.to_string_lossy()).unwrap_or_default());
    let aside = root.join(temp_name(&label));
    if let Err(e) = rename_synced(final_dir, &aside, root) {
        let _ = remove_scratch(scratch);
        return Err(e);
    }
    match rename_synced(scratch, final_dir, root) {
        Ok(()) => {
            // Scratch now; if removal fails here the next save's cleanup gets it.
            let _ = remove_scratch(&aside);
            Ok(())
        }
        Err(e) => {
            let _ = rename_synced(&aside, final_dir, root);
            let _ = remove_scratch(scratch);
            Err(e)
        }
    }
}

/// End of step 2: the COMPLETE marker, durable in the scratch folder.
fn mark_complete(scratch: &Path, meta_digest: &FileDigest) -> Result<()> {
    let marker = scratch.join(COMPLETE_FILE);
    fault("complete", &marker)?;
    write_file_synced(&marker, complete_marker(meta_digest).as_bytes())?;
    sync_dir(scratch)
}
