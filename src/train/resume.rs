//! Between the training loop and the checkpoint store: what a checkpoint holds of a run
//! (every variable, the optimiser's state, the fp16 loss scaler's state, the position in
//! the batch plan, the running epoch sums) and how a run is put back exactly where it was.
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use super::grad_scaler::{GradScaler, STATE_PREFIX as SCALER_PREFIX};
use super::optim::Optimizer;
use super::trainer::TrainState;
use crate::checkpoint::{check_compat, config_fingerprint, CheckpointMeta, CheckpointStore, CheckpointTensors, Compat, LoadedCheckpoint};
use crate::config::Config;
use crate::dist::Collectives;
use crate::error::{HistError, Result};

/// Longest checkpoint path that can be shared between ranks.
const MAX_PATH_BYTES: usize = 4096;

/// Where in the batch plan a run continues.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ResumePoint {
    /// 0-based epoch of the next step.
    pub epoch: usize,
    /// Index of the next step within that epoch.
    pub step_in_epoch: usize,
    /// Optimiser steps already taken.
    pub global_step: usize,
    /// Running (total, ds, ce) loss sums of the current epoch.
    pub epoch_sums: [f64; 3],
    /// Steps of the current epoch already taken.
    pub epoch_steps: usize,
    /// Unreadable training images the current epoch skipped so far (`data.on_bad_image: skip`).
    pub epoch_skipped: usize,
}

/// Key of [`ResumePoint::epoch_skipped`] in the checkpoint's `extra` metadata.
const EPOCH_SKIPPED_KEY: &str = "epoch_skipped_train_images";

/// What must match for a checkpoint to be resumable by `config`.
pub fn compat(config: &Config, train_classes: i64) -> Compat {
    Compat {
        train_classes,
        embedding_dim: config.model.embedding_dim,
        backbone: format!("{:?}", config.model.backbone).to_lowercase(),
        dtype: format!("{:?}", config.dtype).to_lowercase(),
    }
}

/// The checkpoint of the run at `point`. Variables are written in the standard (NCHW)
/// layout whatever their memory format; the scaler's state goes beside the optimiser's.
#[allow(clippy::too_many_arguments)]
pub fn snapshot(
    config: &Config,
    state: &TrainState,
    optimizer: &Optimizer,
    scaler: Option<&GradScaler>,
    point: &ResumePoint,
    recall_at_1: Option<f64>,
    world_size: usize,
    train_classes: i64,
) -> Result<(CheckpointMeta, CheckpointTensors)> {
    let config_yaml = serde_yaml_ng::to_string(config)
        .map_err(|e| HistError::config("checkpoint", format!("cannot serialise the config: {e}")))?;
    let meta = CheckpointMeta {
        format_version: crate::checkpoint::FORMAT_VERSION,
        global_step: point.global_step,
        epoch: point.epoch,
        step_in_epoch: point.step_in_epoch,
        world_size,
        config_hash: config_fingerprint(&config_yaml),
        config_yaml,
        compat: compat(config, train_classes),
        epoch_loss_sums: point.epoch_sums,
        epoch_steps_done: point.epoch_steps,
        recall_at_1,
        extra: [(EPOCH_SKIPPED_KEY.to_string(), serde_json::Value::from(point.epoch_skipped))].into_iter().collect(),
    };
    let mut model: Vec<(String, Tensor)> = state
        .vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.detach().to_device(Device::Cpu).contiguous()))
        .collect();
    model.sort_by(|a, b| a.0.cmp(&b.0));
    let mut optim: Vec<(String, Tensor)> =
        optimizer.state_tensors().into_iter().map(|(n, t)| (n, t.to_device(Device::Cpu).contiguous())).collect();
    optim.extend(scaler.map(GradScaler::state_tensors).unwrap_or_default());
    Ok((meta, CheckpointTensors { model, optim }))
}

/// Copies a loaded checkpoint into the model, loss, optimiser and (fp16) loss scaler; every
/// variable must be present with its shape, and nothing unknown may be left over. Values
/// are copied element by element, so channels-last variables take NCHW-written ones. A
/// scaler keeps its initial state when the checkpoint has none (it was written without
/// fp16); a checkpoint's scaler state is ignored when this run has no scaler.
pub fn restore(loaded: &LoadedCheckpoint, state: &TrainState, optimizer: &mut Optimizer, scaler: Option<&mut GradScaler>) -> Result<ResumePoint> {
    let bad = |message: String| HistError::Io { path: loaded.path.clone(), message };
    let vars = state.vs.variables();
    let mut seen = 0usize;
    let _guard = tch::no_grad_guard();
    for (name, saved) in &loaded.tensors.model {
        let Some(var) = vars.get(name) else {
            return Err(bad(format!("holds {name}, which this model does not have")));
        };
        if var.size() != saved.size() {
            return Err(bad(format!("{name} has shape {:?}, this model needs {:?}", saved.size(), var.size())));
        }
        let mut dst = var.shallow_clone();
        dst.copy_(&saved.to_kind(var.kind()).to_device(var.device()));
        seen += 1;
    }
    if seen != vars.len() {
        let missing: Vec<&String> = vars.keys().filter(|k| !loaded.tensors.model.iter().any(|(n, _)| n == *k)).collect();
        return Err(bad(format!("lacks {} variable(s) of this model, e.g. {:?}", missing.len(), missing.first())));
    }
    let (scaler_state, optim_state): (Vec<_>, Vec<_>) = loaded
        .tensors
        .optim
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .partition(|(n, _)| n.starts_with(SCALER_PREFIX));
    optimizer.load_state_tensors(&optim_state)?;
    if let (Some(scaler), false) = (scaler, scaler_state.is_empty()) {
        scaler.load_state_tensors(&scaler_state).map_err(|e| bad(e.to_string()))?;
    }
    let m = &loaded.meta;
    Ok(ResumePoint {
        epoch: m.epoch,
        step_in_epoch: m.step_in_epoch,
        global_step: m.global_step,
        epoch_sums: m.epoch_loss_sums,
        epoch_steps: m.epoch_steps_done,
        // Absent from checkpoints written before the count was kept.
        epoch_skipped: m.extra.get(EPOCH_SKIPPED_KEY).and_then(serde_json::Value::as_u64).map_or(0, |n| n as usize),
    })
}

/// Rank 0 picks the checkpoint to resume from (the newest that verifies, warning about the
/// ones it skips); every rank learns its path. `None` means a fresh start.
pub fn choose_checkpoint(pg: &mut dyn Collectives, store: Option<&CheckpointStore>, device: Device) -> Result<Option<PathBuf>> {
    let mut chosen = None;
    if let Some(store) = store {
        if let Some(latest) = store.latest_valid()? {
            for (path, reason) in &latest.1 {
                eprintln!("warning: checkpoint {} is unusable ({reason}); using an older one", path.display());
            }
            chosen = Some(latest.0);
        }
    }
    share_path(pg, chosen, device)
}

/// Broadcasts rank 0's optional path to every rank.
fn share_path(pg: &mut dyn Collectives, path: Option<PathBuf>, device: Device) -> Result<Option<PathBuf>> {
    if pg.world_size() == 1 {
        return Ok(path);
    }
    // Layout: [present flag, length (u16 LE), UTF-8 bytes…], fixed size for the broadcast.
    let mut buf = vec![0u8; MAX_PATH_BYTES + 3];
    if let Some(p) = &path {
        let bytes = p.to_string_lossy().into_owned().into_bytes();
        if bytes.len() > MAX_PATH_BYTES {
            return Err(HistError::Io { path: p.clone(), message: "checkpoint path is too long to share".into() });
        }
        buf[0] = 1;
        buf[1..3].copy_from_slice(&(bytes.len() as u16).to_le_bytes());
        buf[3..3 + bytes.len()].copy_from_slice(&bytes);
    }
    let mut t = Tensor::from_slice(&buf).to_kind(Kind::Uint8).to_device(device);
    pg.broadcast(&mut t, 0)?;
    pg.finish_pending()?;
    let got: Vec<u8> = Vec::<u8>::try_from(&t.to_device(Device::Cpu)).map_err(HistError::Torch)?;
    if got.first() != Some(&1) {
        return Ok(None);
    }
    let len = u16::from_le_bytes([got[1], got[2]]) as usize;
    Ok(Some(PathBuf::from(String::from_utf8_lossy(&got[3..3 + len]).into_owned())))
}

/// Loads `path` and checks it can continue this run.
pub fn load_compatible(path: &Path, now: &Compat) -> Result<LoadedCheckpoint> {
    let loaded = CheckpointStore::load_dir(path)?;
    check_compat(&loaded.meta, now)?;
    Ok(loaded)
}

/// When and where the training loop checkpoints: rank 0 writes, every rank then meets at a
/// barrier, so no rank runs ahead of a checkpoint that may still fail.
pub struct Checkpointing<'a> {
    config: &'a Config,
    store: Option<CheckpointStore>,
    world_size: usize,
    train_classes: i64,
}

impl<'a> Checkpointing<'a> {
    /// `run_dir` is `Some` on the writing rank only.
    pub fn new(config: &'a Config, run_dir: Option<&Path>, world_size: usize, train_classes: i64) -> Self {
        let store = run_dir.map(|d| CheckpointStore::new(d, config.checkpoint.keep));
        Checkpointing { config, store, world_size, train_classes }
    }

    /// The store, on the writing rank.
    pub fn store(&self) -> Option<&CheckpointStore> {
        self.store.as_ref()
    }

    /// True when `checkpoint.every_steps` asks for one after `global_step`.
    pub fn due(&self, global_step: usize) -> bool {
        let every = self.config.checkpoint.every_steps;
        every > 0 && global_step.is_multiple_of(every)
    }

    /// Writes the checkpoint of `point` (rank 0) and waits for every rank.
    pub fn save(
        &self,
        pg: &mut dyn Collectives,
        state: &TrainState,
        optimizer: &Optimizer,
        scaler: Option<&GradScaler>,
        point: &ResumePoint,
        recall_at_1: Option<f64>,
    ) -> Result<()> {
        if let Some(store) = &self.store {
            let (meta, tensors) = snapshot(self.config, state, optimizer, scaler, point, recall_at_1, self.world_size, self.train_classes)?;
            store.save(&meta, &tensors)?;
        }
        pg.barrier()
    }
}
/// Config keys that change where or for how long a run goes, not what it computes: a
/// resume may change them without a word (a trailing dot covers a whole section).
const FREE_ON_RESUME: [&str; 13] = [
    "name",
    "device",
    "data.root",
    "data.loader_threads",
    "data.prefetch_batches",
    "train.epochs",
    "train.max_steps",
    "train.log_every",
    "train.print_every",
    "train.eval_at_start",
    "eval.",
    "dist.",
    "checkpoint.",
];

/// The keys, as `key: saved → now`, in which `config` differs from the config a checkpoint
/// was saved with (`saved_yaml`), leaving out those [`FREE_ON_RESUME`]; empty when the
/// saved config cannot be read.
pub fn config_changes(saved_yaml: &str, config: &Config) -> Vec<String> {
    use crate::telemetry::hparams::{flatten_hparams, HParamValue};
    let (Ok(saved), Ok(now)) = (serde_yaml_ng::from_str::<serde_json::Value>(saved_yaml), serde_json::to_value(config)) else {
        return Vec::new();
    };
    let free = |key: &str| FREE_ON_RESUME.iter().any(|f| if f.ends_with('.') { key.starts_with(f) } else { key == *f });
    let text = |v: Option<&HParamValue>| match v {
        None => "unset".to_string(),
        Some(HParamValue::Number(x)) => x.to_string(),
        Some(HParamValue::Text(t)) => t.clone(),
        Some(HParamValue::Bool(b)) => b.to_string(),
    };
    let flat = |tree: &serde_json::Value| flatten_hparams(tree).into_iter().filter(|(k, _)| !free(k)).collect::<std::collections::BTreeMap<_, _>>();
    let (saved, now) = (flat(&saved), flat(&now));
    let keys: std::collections::BTreeSet<&String> = saved.keys().chain(now.keys()).collect();
    keys.into_iter()
        .filter_map(|key| {
            let (a, b) = (saved.get(key), now.get(key));
            (a != b).then(|| format!("{key}: {} → {}", text(a), text(b)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_config_str, ConfigSource};

    fn demo(sets: &[&str]) -> Config {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        load_config_str(include_str!("../../configs/demo.yaml"), ConfigSource::Embedded("demo"), &sets).expect("demo config")
    }

    #[test]
    fn config_changes_name_what_changes_the_run_and_skip_the_rest() {
        let saved = serde_yaml_ng::to_string(&demo(&[])).expect("yaml");
        let free = demo(&["train.epochs=99", "device=cpu", "checkpoint.keep=7", "eval.batch_size=3", "name=other"]);
        assert_eq!(config_changes(&saved, &free), Vec::<String>::new());
        let changed = demo(&["optim.lr=0.002", "seed=5", "train.epochs=99"]);
        assert_eq!(config_changes(&saved, &changed), vec!["optim.lr: 0.001 → 0.002".to_string(), "seed: 0 → 5".to_string()]);
        assert_eq!(config_changes("not: [valid", &changed), Vec::<String>::new());
    }
}
