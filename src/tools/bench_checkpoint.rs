//! `hist bench-checkpoint`: times the checkpoint store's save (safetensors, fsync, CRC32C
//! read-back, atomic rename) and verified load of a given training state, as one JSON line
//! on stdout. scripts/bench_checkpoint.py builds the state (ResNet-50 + SOP prototypes +
//! Adam moments), runs this beside torch.save/torch.load of the same tensors and writes
//! docs/benchmarks.md.
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;
use tch::Tensor;

use crate::checkpoint::{CheckpointMeta, CheckpointStore, CheckpointTensors, Compat};
use crate::error::{HistError, Result};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchArgs {
    /// Safetensors file with the state: names `model/...` and `optim/...`.
    pub state: PathBuf,
    /// Scratch run directory (its `checkpoints/` is written and removed).
    pub dir: PathBuf,
    /// Timed save + load pairs.
    pub reps: usize,
}

fn split_groups(all: Vec<(String, Tensor)>, file: &Path) -> Result<CheckpointTensors> {
    let mut groups = CheckpointTensors::default();
    for (name, tensor) in all {
        if let Some(rest) = name.strip_prefix("model/") {
            groups.model.push((rest.to_string(), tensor));
        } else if let Some(rest) = name.strip_prefix("optim/") {
            groups.optim.push((rest.to_string(), tensor));
        } else {
            return Err(HistError::Io {
                path: file.to_path_buf(),
                message: format!("tensor {name:?} is neither model/... nor optim/...; regenerate it with scripts/bench_checkpoint.py"),
            });
        }
    }
    Ok(groups)
}

/// The metadata saved with each timed checkpoint: SOP's classes, a ResNet-50 trunk.
fn meta(step: usize) -> CheckpointMeta {
    let compat = Compat { train_classes: 11_318, embedding_dim: 512, backbone: "resnet50".into(), dtype: "f32".into() };
    CheckpointMeta::first_epoch(step, compat)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Runs the measurement and prints the report.
pub fn run(args: &BenchArgs) -> Result<()> {
    let all = Tensor::read_safetensors(&args.state).map_err(|e| HistError::Io {
        path: args.state.clone(),
        message: format!("cannot read the state: {e}"),
    })?;
    let tensors = split_groups(all, &args.state)?;
    let numel: i64 = tensors.model.iter().chain(&tensors.optim).map(|(_, t)| t.numel() as i64).sum();
    // Keep one checkpoint: each save replaces the previous, as a long run's saves do.
    let store = CheckpointStore::new(&args.dir, 1);
    let (mut save_s, mut load_s) = (Vec::new(), Vec::new());
    let mut bytes = 0;
    for rep in 0..args.reps {
        let t = Instant::now();
        let path = store.save(&meta(rep + 1), &tensors)?;
        save_s.push(t.elapsed().as_secs_f64());
        bytes = dir_bytes(&path);
        let t = Instant::now();
        let loaded = CheckpointStore::load_dir(&path)?;
        load_s.push(t.elapsed().as_secs_f64());
        drop(loaded);
    }
    let _ = std::fs::remove_dir_all(store.root());
    println!("{}", json!({ "save_s": save_s, "load_s": load_s, "bytes": bytes, "numel": numel }));
    Ok(())
}
