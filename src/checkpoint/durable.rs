//! Making writes survive a crash: fsync of files and folders, renames that are flushed,
//! and removal that never leaves a half-deleted checkpoint under a checkpoint's name.
//!
//! A rename is atomic but not durable until the folder holding it is fsynced, and a file's
//! bytes are not durable until the file is; each helper does both halves, so the protocol
//! in `write` reads as a list of steps.
use std::fs::File;
use std::io::Write;
use std::path::Path;

use super::layout::temp_name;
use crate::error::{HistError, Result};

/// One-line I/O error naming `path` and what was being done to it.
pub(crate) fn io_error(path: &Path, doing: &str, err: std::io::Error) -> HistError {
    HistError::Io {
        path: path.to_path_buf(),
        message: format!("cannot {doing}: {err}"),
    }
}

/// Flushes a file's data and size to disk.
pub(crate) fn sync_file(path: &Path) -> Result<()> {
    let file = File::open(path).map_err(|e| io_error(path, "open for fsync", e))?;
    file.sync_all().map_err(|e| io_error(path, "fsync", e))
}

/// Flushes a folder's entries (creations, renames, removals) to disk. Linux lets a folder
/// opened read-only be fsynced, which is all std offers without libc.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    let handle = File::open(dir).map_err(|e| io_error(dir, "open folder for fsync", e))?;
    handle
        .sync_all()
        .map_err(|e| io_error(dir, "fsync folder", e))
}

/// Creates `path` with `bytes` and flushes it; the caller syncs the folder.
pub(crate) fn write_file_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    fault("write", path)?;
    let mut file = File::create(path).map_err(|e| io_error(path, "create", e))?;
    file.write_all(bytes)
        .map_err(|e| io_error(path, "write", e))?;
    file.sync_all().map_err(|e| io_error(path, "fsync", e))
}

/// Creates `dir` (and missing parents) and makes the new entry durable in its parent.
pub(crate) fn create_dir_synced(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, "create folder", e))?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => Ok(()),
    }
}

/// Renames `from` to `to` (same folder `parent`) and flushes `parent`.
pub(crate) fn rename_synced(from: &Path, to: &Path, parent: &Path) -> Result<()> {
    fault("rename", to)?;
    std::fs::rename(from, to)
        .map_err(|e| io_error(to, &format!("rename {} to it", from.display()), e))?;
    sync_dir(parent)
}

/// Swaps the entries `a` and `b` of folder `parent` in one atomic step (Linux's
/// `renameat2` with `RENAME_EXCHANGE`) and flushes `parent`. `Ok(false)`, with nothing
/// changed, where the file system cannot (NFS, for one).
pub(crate) fn exchange_synced(a: &Path, b: &Path, parent: &Path) -> Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    if fault("exchange", b).is_err() {
        return Ok(false); // tests: a file system without the exchange
    }
    let c_path = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io_error(p, "exchange", std::io::Error::from(std::io::ErrorKind::InvalidInput)))
    };
    let (ca, cb) = (c_path(a)?, c_path(b)?);
    // SAFETY: two NUL-terminated paths that live across the call; AT_FDCWD resolves them
    // as given.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), libc::RENAME_EXCHANGE) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => Ok(false),
            _ => Err(io_error(b, &format!("exchange with {}", a.display()), err)),
        };
    }
    sync_dir(parent)?;
    Ok(true)
}

/// Removes the folder `dir` inside `root`: first renamed to a scratch name (one atomic
/// step, so a crash never leaves a half-deleted folder under a checkpoint's name), then
/// deleted. Once renamed it is out of every checkpoint's way, so a failure to delete it
/// (files still open on NFS, say) is only a warning; the next save tries again.
pub(crate) fn remove_dir_via_rename(root: &Path, dir: &Path) -> Result<()> {
    let label = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let doomed = root.join(temp_name(&format!("removed-{label}")));
    std::fs::rename(dir, &doomed).map_err(|e| io_error(dir, "move aside for removal", e))?;
    sync_dir(root)?;
    remove_scratch_or_warn(&doomed);
    Ok(())
}

/// [`remove_scratch`], a failure only warned about: scratch names are unique and nothing
/// loads them, so one that cannot go yet harms nothing but disk space.
pub(crate) fn remove_scratch_or_warn(path: &Path) {
    if let Err(e) = remove_scratch(path) {
        eprintln!("warning: {e} (leftover scratch; the next checkpoint save tries again)");
    }
}

/// Removes a scratch entry, file or folder; missing is fine (another cleanup got there).
pub(crate) fn remove_scratch(path: &Path) -> Result<()> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(io_error(path, "remove stale scratch", e))
        }
        _ => Ok(()),
    }
}

/// Test hook: makes the next step called `stage` fail as a full disk would, so unit tests
/// can check that every failure point leaves earlier checkpoints loadable.
#[cfg(test)]
pub(crate) fn fail_next(stage: &'static str) {
    FAULT.with(|f| *f.borrow_mut() = Some(stage));
}

#[cfg(test)]
thread_local! {
    static FAULT: std::cell::RefCell<Option<&'static str>> = const { std::cell::RefCell::new(None) };
}

/// Fails with ENOSPC if a test asked `stage` to fail; a no-op in normal builds.
#[cfg(test)]
pub(crate) fn fault(stage: &str, path: &Path) -> Result<()> {
    let hit = FAULT.with(|f| {
        let mut armed = f.borrow_mut();
        let hit = armed.is_some_and(|s| s == stage);
        if hit {
            *armed = None;
        }
        hit
    });
    if hit {
        return Err(io_error(path, stage, std::io::Error::from_raw_os_error(28)));
    }
    Ok(())
}

/// Fails with ENOSPC if a test asked `stage` to fail; a no-op in normal builds.
#[cfg(not(test))]
#[inline(always)]
pub(crate) fn fault(_stage: &str, _path: &Path) -> Result<()> {
    Ok(())
}
