//! The run directory: `runs/<name>/` (numbered when taken) or the user's `--run-dir`, and
//! the rules that keep earlier runs from being overwritten while letting an interrupted
//! run be resumed.
use std::fs;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::error::{HistError, Result};

/// Present when a run finished: such a directory is never reused.
const FINISHED_MARKER: &str = "final.safetensors";
/// Present once a run has started logging.
const STARTED_MARKER: &str = "metrics.jsonl";
/// Folder of resumable state.
const CHECKPOINTS: &str = "checkpoints";

fn finished(dir: &Path) -> bool {
    dir.join(FINISHED_MARKER).exists()
}

fn started(dir: &Path) -> bool {
    dir.join(STARTED_MARKER).exists() || finished(dir)
}

/// True when `dir` holds at least one checkpoint entry.
pub fn has_checkpoints(dir: &Path) -> bool {
    fs::read_dir(dir.join(CHECKPOINTS)).map(|mut entries| entries.next().is_some()).unwrap_or(false)
}

/// Picks the run directory.
/// - `explicit`: used as is — resumed if it holds checkpoints of an unfinished run; refused
///   if it holds a finished run, or a started one that cannot be resumed.
/// - `resume` without `explicit`: the newest unfinished `runs/<name>[-N]` with checkpoints.
/// - otherwise a new `runs/<name>`, `runs/<name>-2`, … so that earlier runs are kept.
///
/// `restart` (set by the launcher after a failure) also accepts an explicit directory whose
/// run started but failed before its first checkpoint: it starts again there.
pub fn choose_run_dir(explicit: Option<&Path>, name: &str, resume: bool, restart: bool) -> Result<PathBuf> {
    let refuse = |dir: &Path, message: &str| Err(HistError::Io { path: dir.to_path_buf(), message: message.to_string() });
    if let Some(dir) = explicit {
        if finished(dir) {
            return refuse(dir, "already holds a finished run (final.safetensors); pass another --run-dir or move it away");
        }
        if started(dir) && !has_checkpoints(dir) && !restart {
            return refuse(dir, "already holds a run without checkpoints to resume; pass another --run-dir or move it away");
        }
        if resume && !has_checkpoints(dir) {
            return refuse(dir, "has no checkpoints to resume; drop --resume to start a new run there");
        }
        return Ok(dir.to_path_buf());
    }
    let base = Path::new("runs");
    let candidates = std::iter::once(base.join(name)).chain((2..).map(|n| base.join(format!("{name}-{n}"))));
    if resume {
        let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
        for dir in candidates.take_while(|d| d.exists()) {
            if has_checkpoints(&dir) && !finished(&dir) {
                let modified = fs::metadata(dir.join(CHECKPOINTS)).and_then(|m| m.modified()).ok();
                if let Some(t) = modified {
                    if newest.as_ref().is_none_or(|(best, _)| t > *best) {
                        newest = Some((t, dir));
                    }
                }
            }
        }
        return match newest {
            Some((_, dir)) => Ok(dir),
            None => refuse(base, &format!("no unfinished run named {name} with checkpoints; start one without --resume")),
        };
    }
    for dir in candidates {
        if !started(&dir) && !has_checkpoints(&dir) {
            return Ok(dir);
        }
    }
    unreachable!("the candidate names are unbounded")
}

/// Creates `dir` (and parents) and writes the resolved `config.yaml` into it; a
/// directory that cannot be created or written fails here, before any training.
pub fn prepare_run_dir(dir: &Path, config: &Config) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| HistError::Io {
        path: dir.to_path_buf(),
        message: format!("cannot create the run directory: {e}; choose another with --run-dir"),
    })?;
    let yaml = serde_yaml_ng::to_string(config).map_err(|e| HistError::Io {
        path: dir.join("config.yaml"),
        message: format!("cannot serialise the config: {e}"),
    })?;
    let path = dir.join("config.yaml");
    fs::write(&path, yaml).map_err(|e| HistError::Io {
        path: path.clone(),
        message: format!("cannot write: {e}; choose a writable --run-dir"),
    })
}

/// Drops the `metrics.jsonl` lines a resumed run will write again: those after
/// `global_step`, and those of epochs after the `completed_epochs` its checkpoint had
/// finished (an epoch's line shares the step of a checkpoint saved at its last step, before
/// its evaluation). The file is rewritten in place: the run's logger appends to it.
pub fn truncate_metrics_after(dir: &Path, global_step: usize, completed_epochs: usize) -> Result<()> {
    let path = dir.join(STARTED_MARKER);
    let Ok(text) = fs::read_to_string(&path) else { return Ok(()) };
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| {
            serde_json::from_str::<serde_json::Value>(line).ok().is_some_and(|v| {
                let at = |key: &str| v[key].as_u64().map(|n| n as usize);
                at("step").is_some_and(|s| s <= global_step) && at("epoch").is_some_and(|e| e <= completed_epochs)
            })
        })
        .collect();
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    fs::write(&path, out).map_err(|e| HistError::io(&path, e))
}

/// Empties `metrics.jsonl` for a run that starts again from nothing after a failure.
pub fn clear_metrics(dir: &Path) -> Result<()> {
    let path = dir.join(STARTED_MARKER);
    if path.exists() {
        fs::write(&path, "").map_err(|e| HistError::io(&path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_keeps_only_the_lines_before_its_checkpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(STARTED_MARKER);
        // Six steps an epoch; the run stopped on epoch 2's last step (step 12) and its
        // epoch-2 line (step 12 too) was written before the run died again.
        let lines = [r#"{"epoch":0,"step":0}"#, r#"{"epoch":1,"step":6}"#, r#"{"epoch":2,"step":12}"#, r#"{"epoch":3,"step":18}"#];
        fs::write(&path, lines.join("\n") + "\n").expect("write");
        truncate_metrics_after(dir.path(), 12, 1).expect("truncate");
        assert_eq!(fs::read_to_string(&path).expect("read"), lines[..2].join("\n") + "\n");
        // From the epoch-end checkpoint of epoch 2, its line stays.
        fs::write(&path, lines.join("\n") + "\n").expect("write");
        truncate_metrics_after(dir.path(), 12, 2).expect("truncate");
        assert_eq!(fs::read_to_string(&path).expect("read"), lines[..3].join("\n") + "\n");
    }
}
