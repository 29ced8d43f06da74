//! Verifying and loading checkpoints, and finding the newest one that verifies.
//!
//! A checkpoint is usable when its chain holds: COMPLETE parses and names meta.json's size
//! and CRC32C; meta.json parses, has this build's format version and the step its folder
//! is named after; the tensor file has the size and CRC32C meta.json records and parses
//! into exactly the recorded number of `model/` and `optim/` tensors.
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use tch::Tensor;

use super::digest::{parse_complete_marker, FileDigest};
use super::layout::{
    parse_step_dir_name, step_dir_name, step_dirs, COMPLETE_FILE, META_FILE, MODEL_PREFIX,
    OPTIM_PREFIX, TENSORS_FILE,
};
use super::meta::{decode, CheckpointMeta, TensorsRecord};
use super::store::{CheckpointStore, CheckpointTensors, LoadedCheckpoint, Skipped};
use super::tensor_file::{read_verified, ReadFailure};
use crate::error::{HistError, Result};

/// How a checkpoint folder fails; retention removes `Incomplete` and `Corrupt` ones but
/// never one it merely could not read (a transient error must not cost a checkpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Problem {
    /// No valid COMPLETE marker: the writer did not finish.
    Incomplete,
    /// Complete, but a file is missing, truncated, altered or unparsable.
    Corrupt,
    /// A file could not be read for another reason (permissions, I/O error).
    Unreadable,
}

/// Why a checkpoint folder is unusable; `reason` is one line starting with the file.
#[derive(Debug, Clone)]
pub(crate) struct Unusable {
    pub problem: Problem,
    pub reason: String,
}

fn unusable(problem: Problem, reason: String) -> Unusable {
    Unusable { problem, reason }
}

/// Reads a whole small file, sorting "missing" (`missing`) from other I/O errors.
fn read_file(
    dir: &Path,
    name: &str,
    missing: Problem,
    missing_says: &str,
) -> std::result::Result<Vec<u8>, Unusable> {
    std::fs::read(dir.join(name)).map_err(|e| match e.kind() {
        ErrorKind::NotFound => unusable(missing, format!("{name} {missing_says}")),
        _ => unusable(Problem::Unreadable, format!("{name} cannot be read: {e}")),
    })
}

/// The checks that need no pass over the tensor data: marker, metadata, folder name and
/// tensor file size. Retention and `best` use these; loading adds the checksum.
pub(crate) fn verify_cheap(
    dir: &Path,
) -> std::result::Result<(CheckpointMeta, TensorsRecord), Unusable> {
    let marker = read_file(
        dir,
        COMPLETE_FILE,
        Problem::Incomplete,
        "is missing: the writer was interrupted",
    )?;
    let Some(meta_digest) = std::str::from_utf8(&marker)
        .ok()
        .and_then(parse_complete_marker)
    else {
        return Err(unusable(
            Problem::Incomplete,
            format!("{COMPLETE_FILE} is malformed: the writer was interrupted"),
        ));
    };
    let meta_bytes = read_file(dir, META_FILE, Problem::Corrupt, "is missing")?;
    if let Some(why) =
        meta_digest.mismatch(&FileDigest::of_bytes(&meta_bytes), META_FILE, COMPLETE_FILE)
    {
        return Err(unusable(Problem::Corrupt, why));
    }
    let (meta, record) =
        decode(&meta_bytes).map_err(|e| unusable(Problem::Corrupt, format!("{META_FILE} {e}")))?;
    let named = dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(parse_step_dir_name);
    if named.is_some_and(|step| step != meta.global_step) {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let why = format!(
            "{META_FILE} says global_step {} ({}), the folder is {name}",
            meta.global_step,
            step_dir_name(meta.global_step)
        );
        return Err(unusable(Problem::Corrupt, why));
    }
    if record.file != TENSORS_FILE {
        return Err(unusable(
            Problem::Corrupt,
            format!(
                "{META_FILE} names tensor file {:?}, expected {TENSORS_FILE}",
                record.file
            ),
        ));
    }
    let size = match std::fs::metadata(dir.join(TENSORS_FILE)) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(unusable(
                Problem::Corrupt,
                format!("{TENSORS_FILE} is missing"),
            ));
        }
        Err(e) => {
            return Err(unusable(
                Problem::Unreadable,
                format!("{TENSORS_FILE} cannot be read: {e}"),
            ))
        }
    };
    if size != record.digest.bytes {
        let on_disk = FileDigest {
            bytes: size,
            crc32c: String::new(),
        };
        let why = record
            .digest
            .mismatch(&on_disk, TENSORS_FILE, META_FILE)
            .unwrap_or_default();
        return Err(unusable(Problem::Corrupt, why));
    }
    Ok((meta, record))
}

/// All checks including the tensor file's checksum (one read of the file).
pub(crate) fn verify_full(
    dir: &Path,
) -> std::result::Result<(CheckpointMeta, TensorsRecord), Unusable> {
    let (meta, record) = verify_cheap(dir)?;
    let actual = FileDigest::of_file(&dir.join(TENSORS_FILE)).map_err(|e| {
        unusable(
            Problem::Unreadable,
            format!("{TENSORS_FILE} cannot be read: {e}"),
        )
    })?;
    if let Some(why) = record.digest.mismatch(&actual, TENSORS_FILE, META_FILE) {
        return Err(unusable(Problem::Corrupt, why));
    }
    Ok((meta, record))
}

/// Splits the tensors into their two groups and checks the counts meta.json records.
fn group_tensors(
    all: Vec<(String, Tensor)>,
    record: &TensorsRecord,
) -> std::result::Result<CheckpointTensors, Unusable> {
    let mut tensors = CheckpointTensors::default();
    for (name, tensor) in all {
        if let Some(rest) = name.strip_prefix(MODEL_PREFIX) {
            tensors.model.push((rest.to_string(), tensor));
        } else if let Some(rest) = name.strip_prefix(OPTIM_PREFIX) {
            tensors.optim.push((rest.to_string(), tensor));
        } else {
            let why = format!("{TENSORS_FILE} holds {name:?}, which is neither {MODEL_PREFIX}… nor {OPTIM_PREFIX}…");
            return Err(unusable(Problem::Corrupt, why));
        }
    }
    if (tensors.model.len(), tensors.optim.len()) != (record.model, record.optim) {
        let why = format!(
            "{TENSORS_FILE} holds {} model and {} optim tensors, {META_FILE} says {} and {}",
            tensors.model.len(),
            tensors.optim.len(),
            record.model,
            record.optim
        );
        return Err(unusable(Problem::Corrupt, why));
    }
    tensors.model.sort_by(|a, b| a.0.cmp(&b.0));
    tensors.optim.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(tensors)
}

/// `dir` itself, or the folder it links to (so `checkpoints/best` loads as the step folder).
fn resolve_link(dir: &Path) -> PathBuf {
    match std::fs::read_link(dir) {
        Ok(target) if target.is_relative() => {
            dir.parent().map(|p| p.join(&target)).unwrap_or(target)
        }
        Ok(target) => target,
        Err(_) => dir.to_path_buf(),
    }
}

fn load_checked(dir: &Path) -> std::result::Result<LoadedCheckpoint, Unusable> {
    let (meta, record) = verify_cheap(dir)?;
    let all = read_verified(&dir.join(TENSORS_FILE), &record.digest).map_err(|f| match f {
        ReadFailure::Io(why) => unusable(Problem::Unreadable, why),
        ReadFailure::Corrupt(why) => unusable(Problem::Corrupt, why),
    })?;
    let tensors = group_tensors(all, &record)?;
    Ok(LoadedCheckpoint {
        path: dir.to_path_buf(),
        meta,
        tensors,
        skipped: Vec::new(),
    })
}

impl CheckpointStore {
    /// Verifies and loads the checkpoint in `dir` (a step folder or the `best` link); the
    /// error is one line naming the folder and the file that is wrong.
    pub fn load_dir(dir: &Path) -> Result<LoadedCheckpoint> {
        let dir = resolve_link(dir);
        if !dir.is_dir() {
            let message = if dir.exists() {
                "is not a checkpoint folder"
            } else {
                "no such checkpoint folder"
            }
            .to_string();
            return Err(HistError::Io { path: dir, message });
        }
        load_checked(&dir).map_err(|u| HistError::Io {
            path: dir,
            message: format!("unusable checkpoint: {}", u.reason),
        })
    }

    /// Same as [`CheckpointStore::load_dir`]; `dir` is used as given (not joined to the store's folder).
    pub fn load(&self, dir: &Path) -> Result<LoadedCheckpoint> {
        CheckpointStore::load_dir(dir)
    }

    /// The newest checkpoint that is complete and verifies, loaded; every newer one that
    /// fails is in `skipped` with its reason. `None` when there is no complete checkpoint
    /// (none at all, or only folders of interrupted writers, which cannot hold a finished
    /// state); an error when there are complete ones but none verifies.
    pub fn load_latest(&self) -> Result<Option<LoadedCheckpoint>> {
        Ok(self.newest(load_checked)?.map(|(_, mut loaded, skipped)| {
            loaded.skipped = skipped;
            loaded
        }))
    }

    /// Like [`CheckpointStore::load_latest`] but without loading the tensors (the checksum
    /// is still checked): the newest usable checkpoint's folder and the skipped ones.
    pub fn latest_valid(&self) -> Result<Option<(PathBuf, Skipped)>> {
        Ok(self
            .newest(verify_full)?
            .map(|(path, _, skipped)| (path, skipped)))
    }

    /// The first folder, newest first, that `check` accepts, with the ones it rejected.
    fn newest<T>(
        &self,
        check: impl Fn(&Path) -> std::result::Result<T, Unusable>,
    ) -> Result<Option<(PathBuf, T, Skipped)>> {
        let mut skipped = Vec::new();
        let mut finished = 0usize;
        for (_, dir) in step_dirs(&self.root)? {
            match check(&dir) {
                Ok(value) => return Ok(Some((dir, value, skipped))),
                Err(u) => {
                    finished += usize::from(u.problem != Problem::Incomplete);
                    skipped.push((dir, u.reason));
                }
            }
        }
        if finished == 0 {
            return Ok(None);
        }
        let reasons: Vec<String> = skipped
            .iter()
            .map(|(dir, why)| {
                format!(
                    "{}: {why}",
                    dir.file_name()
                        .map(|n| n.to_string_lossy())
                        .unwrap_or_default()
                )
            })
            .collect();
        Err(HistError::Io {
            path: self.root.clone(),
            message: format!(
                "all {} checkpoints are unusable: {}",
                skipped.len(),
                reasons.join("; ")
            ),
        })
    }
}
