//! The training loop of one rank: data → model → HIST loss → optimiser, evaluation at
//! epoch ends, and — on rank 0 only — telemetry and the final parameters.
use std::path::{Path, PathBuf};
use std::time::Instant;

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::optim::{Optimizer, OptimizerKind};
use super::param_groups::{base_lrs, param_groups, scheduled_lr, set_trunk_frozen, GROUP_NAMES};
use super::step::{check_shardable, train_step, StepBatch};
use super::resume::{choose_checkpoint, compat, load_compatible, restore, Checkpointing, ResumePoint};
use super::stop::{StopFlag, StopReason};
use crate::config::{parse_device, Config, DataSource, OptimName};
use crate::data::sampler::BalancedSampler;
use crate::data::{folder, synthetic, Splits};
use crate::dist::grad_sync::{broadcast_from_rank0, GradRule};
use crate::dist::Collectives;
use crate::error::{HistError, Result};
use crate::eval::{embed_sharded, recall_at_k};
use crate::loss::{HistHyper, HistLoss};
use crate::model::EmbeddingModel;
use crate::telemetry::metrics::{EpochRecord, RunLogger};
use crate::telemetry::run_dir::{clear_metrics, prepare_run_dir, truncate_metrics_after};

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Where everything was written (rank 0), if anywhere.
    pub run_dir: Option<PathBuf>,
    /// Optimiser steps taken.
    pub steps: usize,
    /// Recall@K before the first step, if evaluated.
    pub initial_recall: Option<Vec<(usize, f64)>>,
    /// Recall@K after the last step.
    pub final_recall: Vec<(usize, f64)>,
    /// Set when a signal ended training early (after an orderly stop of every rank).
    pub stopped: Option<StopReason>,
}

/// Loads the configured dataset.
pub fn load_data(config: &Config) -> Result<Splits> {
    let d = &config.data;
    match d.source {
        DataSource::Synthetic => Ok(synthetic::generate(&d.synthetic, d.image_size, config.seed)),
        DataSource::Folder => {
            let root = d.root.as_deref().unwrap_or_default();
            folder::load_folder(Path::new(root), &d.folder, d.image_size)
        }
        DataSource::Cub | DataSource::Cars | DataSource::Sop | DataSource::Inshop => {
            use crate::data::datasets::{load_benchmark, Benchmark};
            let kind = match d.source {
                DataSource::Cub => Benchmark::Cub,
                DataSource::Cars => Benchmark::Cars,
                DataSource::Sop => Benchmark::Sop,
                _ => Benchmark::InShop,
            };
            let root = d.root.as_deref().unwrap_or_default();
            load_benchmark(kind, Path::new(root), d.image_size)
        }
    }
}

/// Everything trained, owned together so it can be saved in one file.
pub struct TrainState {
    /// Holds every variable: `backbone.*`, `head.*`, `loss.*`.
    pub vs: VarStore,
    /// Backbone and head.
    pub model: EmbeddingModel,
    /// Prototypes and HGNN.
    pub loss: HistLoss,
}

/// Builds the model and loss for `train_classes` classes, seeded and in the config's dtype.
pub fn build_state(config: &Config, train_classes: i64, device: Device) -> TrainState {
    tch::manual_seed(config.seed as i64);
    let vs = VarStore::new(device);
    let model = EmbeddingModel::new(&vs.root(), &config.model);
    let hyper = HistHyper { tau: config.loss.tau, alpha: config.loss.alpha, ls: config.loss.ls };
    let loss = HistLoss::new(&(vs.root() / "loss"), train_classes, config.model.embedding_dim, config.loss.hgnn_hidden, hyper);
    let mut state = TrainState { vs, model, loss };
    if config.dtype.kind() == Kind::Double {
        state.vs.double();
    }
    state
}

fn optimizer_kind(config: &Config) -> OptimizerKind {
    let o = &config.optim;
    let betas = (o.betas[0], o.betas[1]);
    match o.name {
        OptimName::Adam => OptimizerKind::Adam { betas, eps: o.eps },
        OptimName::Adamw => OptimizerKind::AdamW { betas, eps: o.eps },
        OptimName::Sgd => OptimizerKind::Sgd { momentum: o.momentum },
    }
}

/// Trunk and head gradients are summed across ranks, loss-parameter gradients averaged.
fn reduction_rules(optimizer: &Optimizer) -> Vec<(Tensor, GradRule)> {
    optimizer
        .groups()
        .iter()
        .enumerate()
        .flat_map(|(g, group)| {
            let rule = if g < 2 { GradRule::Sum } else { GradRule::Avg };
            group.params.iter().map(move |(_, t)| (t.shallow_clone(), rule))
        })
        .collect()
}

fn evaluate(pg: &mut dyn Collectives, config: &Config, state: &TrainState, splits: &Splits, device: Device) -> Result<Vec<(usize, f64)>> {
    let emb = embed_sharded(pg, &state.model, &splits.test, config.eval.batch_size, config.dtype.kind(), device)?;
    let r = recall_at_k(&emb, &splits.test.labels, &config.eval.ks);
    Ok(config.eval.ks.iter().copied().zip(r).collect())
}

fn format_recall(r: &[(usize, f64)]) -> String {
    r.iter().map(|(k, v)| format!("R@{k} {v:.4}")).collect::<Vec<_>>().join("  ")
}

/// Resolves and checks the configured device.
pub fn resolve_device(config: &Config) -> Result<Device> {
    let device = parse_device(&config.device).map_err(|m| HistError::config("device", m))?;
    if let Device::Cuda(i) = device {
        if !tch::Cuda::is_available() || i >= tch::Cuda::device_count() as usize {
            return Err(HistError::config("device", format!("{} requested but not available on this machine; use device: cpu", config.device)));
        }
    }
    Ok(device)
}

/// Trains per `config` as one rank of `pg`. `run_dir` is `Some` on the rank that writes
/// (rank 0) and `None` elsewhere; only that rank prints and writes files.
pub fn train(config: &Config, pg: &mut dyn Collectives, run_dir: Option<&Path>, stop: &StopFlag) -> Result<TrainSummary> {
    let device = resolve_device(config)?;
    check_shardable(config.data.batch_size, config.data.ipc, pg.world_size())?;
    let created_run_dir = run_dir.is_some_and(|d| !d.exists());
    if let Some(dir) = run_dir {
        prepare_run_dir(dir, config)?;
    }
    let t_data = Instant::now();
    let splits = match load_data(config) {
        Ok(s) => s,
        Err(e) => {
            // A run that never started leaves nothing behind in a folder it created.
            if let (Some(dir), true) = (run_dir, created_run_dir) {
                let _ = std::fs::remove_dir_all(dir);
            }
            return Err(e);
        }
    };
    let mut logger = run_dir.map(RunLogger::create).transpose()?;
    let say = |line: &str| {
        if run_dir.is_some() {
            println!("{line}");
        }
    };
    say(&format!(
        "data: {} train images / {} classes, {} test images / {} classes ({:.1} s); {} rank(s)",
        splits.train.len(),
        splits.train.num_classes(),
        splits.test.len(),
        splits.test.num_classes(),
        t_data.elapsed().as_secs_f64(),
        pg.world_size()
    ));
    let sampler = BalancedSampler::new(&splits.train.labels, config.data.batch_size, config.data.ipc, config.seed)?;
    let state = build_state(config, splits.train.num_classes() as i64, device);
    let mut all_vars: Vec<(String, Tensor)> = state.vs.variables().into_iter().collect();
    all_vars.sort_by(|a, b| a.0.cmp(&b.0));
    broadcast_from_rank0(pg, &all_vars)?;
    let mut optimizer = Optimizer::new(optimizer_kind(config), param_groups(&state.vs, &config.optim));
    let rules = reduction_rules(&optimizer);
    let kind = config.dtype.kind();
    let bucket_bytes = (config.dist.bucket_mb * (1 << 20) as f64) as usize;

    let classes = splits.train.num_classes() as i64;
    let checkpoints = Checkpointing::new(config, run_dir, pg.world_size(), classes);
    let mut point = ResumePoint::default();
    if let Some(path) = choose_checkpoint(pg, checkpoints.store(), device)? {
        let loaded = load_compatible(&path, &compat(config, classes))?;
        point = restore(&loaded, &state, &mut optimizer)?;
        if loaded.meta.world_size != pg.world_size() {
            say(&format!(
                "the checkpoint was written by {} rank(s); continuing with {} (the batch plan does not depend on the world size)",
                loaded.meta.world_size,
                pg.world_size()
            ));
        }
        say(&format!(
            "resuming from {} at step {} (epoch {}, its step {})",
            path.display(),
            point.global_step,
            point.epoch + 1,
            point.step_in_epoch
        ));
        if let Some(dir) = run_dir {
            truncate_metrics_after(dir, point.global_step)?;
        }
        if let Some(l) = logger.as_mut() {
            let note = format!("resumed from {} at step {}", path.display(), point.global_step);
            l.text("run/resumed", &note, point.global_step)?;
            l.scalar("run/resumed_at_step", point.global_step as f64, point.global_step)?;
        }
    } else if let Some(dir) = run_dir {
        // A restart of a run that failed before its first checkpoint begins again.
        clear_metrics(dir)?;
    }

    let mut initial_recall = None;
    if config.train.eval_at_start && point.global_step == 0 {
        let r = evaluate(pg, config, &state, &splits, device)?;
        say(&format!("epoch 0/{}  (initialisation)  {}", config.train.epochs, format_recall(&r)));
        if let Some(l) = logger.as_mut() {
            l.epoch(&EpochRecord { epoch: 0, step: 0, losses: None, recall: r.clone() })?;
        }
        initial_recall = Some(r);
    }

    let base = base_lrs(&config.optim);
    let mut global_step = point.global_step;
    let mut final_recall = Vec::new();
    let mut stopped: Option<StopReason> = None;
    for epoch in point.epoch..config.train.epochs {
        let resumed_here = epoch == point.epoch;
        let t_epoch = Instant::now();
        for (g, &b) in base.iter().enumerate() {
            optimizer.set_lr(g, scheduled_lr(b, &config.optim, epoch));
        }
        set_trunk_frozen(optimizer.groups(), epoch < config.train.warmup_epochs);
        let (mut sums, mut steps_this_epoch) = if resumed_here { (point.epoch_sums, point.epoch_steps) } else { ([0.0; 3], 0) };
        let first_step = if resumed_here { point.step_in_epoch } else { 0 };
        let mut steps_run = 0usize;
        let mut stopped_early = false;
        let mut comm_seconds = 0.0f64;
        for step in first_step..sampler.steps_per_epoch() {
            let global = sampler.batch(epoch, step);
            let flips = if config.data.hflip { sampler.flips(epoch, step, global.len()) } else { Vec::new() };
            let batch = StepBatch { global: &global, flips: &flips, set: &splits.train };
            let stats = train_step(pg, &state.model, &state.loss, &mut optimizer, &rules, batch, kind, device, bucket_bytes)?;
            let values = stats.losses;
            comm_seconds += stats.comm_seconds;
            global_step += 1;
            steps_this_epoch += 1;
            steps_run += 1;
            if !values[0].is_finite() {
                return Err(HistError::config(
                    "optim.lr",
                    format!("training diverged at step {global_step}: loss is {}; lower the learning rates", values[0]),
                ));
            }
            for (s, v) in sums.iter_mut().zip(values) {
                *s += v;
            }
            if let Some(l) = logger.as_mut() {
                if global_step % config.train.log_every == 0 || global_step == 1 {
                    for (tag, v) in ["train/loss", "train/loss_ds", "train/loss_ce"].iter().zip(values) {
                        l.scalar(tag, v, global_step)?;
                    }
                    for (g, group) in optimizer.groups().iter().enumerate() {
                        l.scalar(&format!("train/lr/{}", GROUP_NAMES[g]), group.lr, global_step)?;
                    }
                }
            }
            if config.train.print_every > 0 && global_step % config.train.print_every == 0 {
                say(&format!("step {global_step}  loss {:.6} (ds {:.6}, ce {:.6})", values[0], values[1], values[2]));
            }
            let here = ResumePoint { epoch, step_in_epoch: step + 1, global_step, epoch_sums: sums, epoch_steps: steps_this_epoch };
            if config.train.max_steps > 0 && global_step >= config.train.max_steps {
                stopped_early = true;
                break;
            }
            if let Some(reason) = stop.agreed(pg, device)? {
                checkpoints.save(pg, &state, &optimizer, &here, None)?;
                stopped = Some(reason);
                break;
            }
            if checkpoints.due(global_step) {
                checkpoints.save(pg, &state, &optimizer, &here, None)?;
            }
        }
        if let Some(reason) = stopped {
            say(&format!("stopping at step {global_step} on {reason:?} (every rank finished the step)"));
            break;
        }
        let losses = sums.map(|s| s / steps_this_epoch.max(1) as f64);
        let train_seconds = t_epoch.elapsed().as_secs_f64();
        let throughput = format!(
            "{:.0} img/s, comm {:.0}%",
            (steps_run * config.data.batch_size) as f64 / train_seconds.max(1e-9),
            100.0 * comm_seconds / train_seconds.max(1e-9)
        );
        let r = evaluate(pg, config, &state, &splits, device)?;
        say(&format!(
            "epoch {}/{}  step {}  loss {:.4} (ds {:.4}, ce {:.4})  {}  ({:.1} s; {throughput})",
            epoch + 1,
            config.train.epochs,
            global_step,
            losses[0],
            losses[1],
            losses[2],
            format_recall(&r),
            t_epoch.elapsed().as_secs_f64()
        ));
        if let Some(l) = logger.as_mut() {
            l.epoch(&EpochRecord { epoch: epoch + 1, step: global_step, losses: Some(losses), recall: r.clone() })?;
        }
        let next = ResumePoint { epoch: epoch + 1, global_step, ..ResumePoint::default() };
        let recall_at_1 = r.iter().find(|(k, _)| *k == 1).map(|(_, v)| *v);
        if !stopped_early {
            checkpoints.save(pg, &state, &optimizer, &next, recall_at_1)?;
        }
        final_recall = r;
        if stopped_early {
            say(&format!("stopped at train.max_steps = {}", config.train.max_steps));
            break;
        }
    }
    if let (Some(dir), None) = (run_dir, stopped) {
        save_final(&state, &dir.join("final.safetensors"))?;
    }
    pg.barrier()?;
    Ok(TrainSummary { run_dir: run_dir.map(Path::to_path_buf), steps: global_step, initial_recall, final_recall, stopped })
}

/// Writes every variable (trained or frozen, plus BN running statistics) under its
/// VarStore name; docs/architecture.md lists the names.
pub fn save_final(state: &TrainState, path: &Path) -> Result<()> {
    let mut vars: Vec<(String, Tensor)> = state.vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let refs: Vec<(&str, Tensor)> = vars.iter().map(|(n, t)| (n.as_str(), t.detach().to_device(Device::Cpu).contiguous())).collect();
    Tensor::write_safetensors(&refs, path).map_err(|e| HistError::Io { path: path.to_path_buf(), message: format!("cannot write: {e}") })
}
