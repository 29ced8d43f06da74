//! The run directory: `runs/<name>/` (numbered when taken) or the user's `--run-dir`.
use std::fs;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::error::{HistError, Result};

/// Files whose presence means a directory already holds a run we must not overwrite.
const RUN_MARKERS: [&str; 2] = ["metrics.jsonl", "final.safetensors"];

/// Picks the run directory: `explicit` if given (refused if it already holds a run),
/// else `runs/<name>`, then `runs/<name>-2`, `-3`, … so that earlier runs are kept.
pub fn choose_run_dir(explicit: Option<&Path>, name: &str) -> Result<PathBuf> {
    if let Some(dir) = explicit {
        if holds_run(dir) {
            return Err(HistError::Io {
                path: dir.to_path_buf(),
                message: "already holds a run (metrics.jsonl or final.safetensors); pass another --run-dir or move it away".to_string(),
            });
        }
        return Ok(dir.to_path_buf());
    }
    let base = Path::new("runs");
    let mut candidate = base.join(name);
    let mut n = 2;
    while holds_run(&candidate) {
        candidate = base.join(format!("{name}-{n}"));
        n += 1;
    }
    Ok(candidate)
}

fn holds_run(dir: &Path) -> bool {
    RUN_MARKERS.iter().any(|m| dir.join(m).exists())
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
