//! The training loop of one rank: data → model → HIST loss → optimiser, evaluation at
//! epoch ends, and — on rank 0 only — telemetry and the final parameters.
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::grad_scaler::GradScaler;
use super::optim::{Optimizer, OptimizerKind};
use super::param_groups::{base_lrs, param_groups, scheduled_lr, set_trunk_frozen, GROUP_NAMES};
use super::step::{check_shardable, train_step, StepBatch};
use super::resume::{choose_checkpoint, compat, config_changes, load_compatible, restore, Checkpointing, ResumePoint};
use super::stop::{StopFlag, StopReason};
use crate::config::{parse_device, BadImagePolicy, Config, DataSource, OptimName, Sampling};
use crate::data::sampler::{BalancedSampler, RandomSampler, Sampler};
use crate::data::pipeline::{Dataset, PipelineSpec, PlanRange, SplitImages, TrainBatches};
use crate::data::{folder, synthetic};
use crate::dist::grad_sync::{broadcast_from_rank0, GradRule};
use crate::dist::Collectives;
use crate::error::{HistError, Result};
use crate::eval::knn::KnnOptions;
use crate::eval::retrieval::retrieval_metrics;
use crate::eval::recall_at_k;
use crate::eval::test_split::embed_test_split;
use crate::loss::{HistHyper, HistLoss};
use crate::model::precision::{ready_device, Precision};
use crate::model::EmbeddingModel;
use crate::progress::Progress;
use crate::telemetry::hparams::SessionStatus;
use crate::telemetry::metrics::{EpochRecord, RunLogger};
use crate::telemetry::projector::EmbeddingSet;
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

/// Loads the configured dataset: the synthetic data decoded in memory; folders and
/// benchmarks as listings whose files the image pipeline streams.
pub fn load_data(config: &Config) -> Result<Dataset> {
    let d = &config.data;
    match d.source {
        DataSource::Synthetic => Ok(Dataset::in_memory(synthetic::generate(&d.synthetic, d.image_size, config.seed))),
        DataSource::Folder => {
            let root = d.root.as_deref().unwrap_or_default();
            Ok(Dataset::streamed(folder::list_folder(Path::new(root), &d.folder)?))
        }
        DataSource::Cub | DataSource::Cars | DataSource::Sop | DataSource::Inshop => {
            use crate::data::datasets::{list_benchmark, Benchmark};
            let kind = match d.source {
                DataSource::Cub => Benchmark::Cub,
                DataSource::Cars => Benchmark::Cars,
                DataSource::Sop => Benchmark::Sop,
                _ => Benchmark::InShop,
            };
            let root = d.root.as_deref().unwrap_or_default();
            Ok(Dataset::streamed(list_benchmark(kind, Path::new(root))?))
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

/// Builds the model and loss for `train_classes` classes, seeded and in the config's dtype;
/// on CUDA with `model.channels_last`, the backbone's weights channels-last. The initial
/// values are drawn on the CPU and then moved, so a seed starts a GPU run where it starts a
/// CPU run (CUDA's generator would draw other numbers from the same seed).
pub fn build_state(config: &Config, train_classes: i64, device: Device) -> TrainState {
    tch::manual_seed(config.seed as i64);
    let vs = VarStore::new(Device::Cpu);
    let model = EmbeddingModel::new(&vs.root(), &config.model);
    let hyper = HistHyper { tau: config.loss.tau, alpha: config.loss.alpha, ls: config.loss.ls };
    let loss = HistLoss::new(&(vs.root() / "loss"), train_classes, config.model.embedding_dim, config.loss.hgnn_hidden, hyper);
    let mut state = TrainState { vs, model, loss };
    if config.dtype.kind() == Kind::Double {
        state.vs.double();
    }
    if device != Device::Cpu {
        state.vs.set_device(device);
    }
    if Precision::resolve(config, device).channels_last {
        state.model.use_channels_last(&state.vs);
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

/// What one evaluation of the test split found.
struct Evaluation {
    /// (K, Recall@K) for every configured K.
    recall: Vec<(usize, f64)>,
    /// Test images left out as unreadable (`data.on_bad_image: skip`).
    skipped: Vec<usize>,
    /// The test embeddings [n, D] of the images evaluated (every rank holds all of them).
    embeddings: Tensor,
    /// Their labels.
    labels: Vec<i64>,
    /// Their indices in the test split.
    kept: Vec<usize>,
}

/// Recall@K of the test split — same-source, or query vs gallery for In-Shop — and the
/// test images skipped as unreadable.
fn evaluate(
    pg: &mut dyn Collectives,
    config: &Config,
    state: &TrainState,
    data: &Dataset,
    spec: &Arc<PipelineSpec>,
    device: Device,
) -> Result<Evaluation> {
    let test = embed_test_split(pg, &state.model, data, spec, config.eval.batch_size, config.dtype.kind(), device)?;
    let r = if test.split.is_same_source() {
        recall_at_k(&test.embeddings, &test.labels, &config.eval.ks)
    } else {
        let metrics = retrieval_metrics(&test.embeddings, &test.labels, &test.split, &config.eval.ks, &KnnOptions::default())?;
        metrics.recall.into_iter().map(|(_, v)| v).collect()
    };
    Ok(Evaluation {
        recall: config.eval.ks.iter().copied().zip(r).collect(),
        skipped: test.skipped,
        embeddings: test.embeddings,
        labels: test.labels,
        kept: test.kept,
    })
}

/// Prints a warning naming each newly skipped image of `split` (rank 0 calls this).
fn warn_skipped(say: &dyn Fn(&str), warned: &mut HashSet<(bool, usize)>, split: &SplitImages, test: bool, samples: &[usize]) {
    for &sample in samples {
        if warned.insert((test, sample)) {
            say(&format!("warning: skipped an unreadable {} image: {}", if test { "test" } else { "training" }, split.why_unreadable(sample)));
        }
    }
}

/// What TensorBoard shows of an evaluation besides Recall@K: the retrieval grid and the
/// histograms of embedding norms and prototype log-variances (docs/usage.md).
fn log_evaluation(logger: &mut RunLogger, step: usize, eval: &Evaluation, test: &SplitImages, state: &TrainState) -> Result<()> {
    let norms = eval.embeddings.norm_scalaropt_dim(2.0, [1i64].as_slice(), false);
    let log_vars = state.loss.prototypes.log_vars.detach().clamp(0.0, 6.0);
    logger.log_histograms(step, &[("eval/embedding_norm", &norms), ("loss/prototype_log_var", &log_vars)])?;
    logger.log_retrieval_grid(step, &eval.embeddings, &eval.labels, |i| test.rgb_image(eval.kept[i]))
}

/// The test set in TensorBoard's embedding projector, with a thumbnail sprite.
fn write_test_projector(logger: &RunLogger, eval: &Evaluation, test: &SplitImages) -> Result<()> {
    let set = EmbeddingSet { name: "test", embeddings: &eval.embeddings, labels: &eval.labels, class_names: test.class_names() };
    let mut thumbnail = |i: usize| test.rgb_image(eval.kept[i]);
    logger.write_projector(&set, Some(&mut thumbnail))?;
    Ok(())
}

/// 3725 s → "1h02m05s", 65 s → "1m05s", 9.4 s → "9s".
fn format_duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, min, sec) => format!("{min}m{sec:02}s"),
        (h, min, sec) => format!("{h}h{min:02}m{sec:02}s"),
    }
}

fn format_recall(r: &[(usize, f64)]) -> String {
    r.iter().map(|(k, v)| format!("R@{k} {v:.4}")).collect::<Vec<_>>().join("  ")
}

/// Resolves and checks the configured device; on CUDA, also sets float32 precision per
/// the config's `tf32`.
pub fn resolve_device(config: &Config) -> Result<Device> {
    let device = parse_device(&config.device).map_err(|m| HistError::config("device", m))?;
    if !ready_device(device, config.tf32)? {
        return Err(HistError::config("device", format!("{} requested but not available on this machine; use device: cpu", config.device)));
    }
    Ok(device)
}

/// Trains per `config` as one rank of `pg`. `run_dir` is `Some` on the rank that writes
/// (rank 0) and `None` elsewhere; only that rank prints and writes files.
pub fn train(config: &Config, pg: &mut dyn Collectives, run_dir: Option<&Path>, stop: &StopFlag) -> Result<TrainSummary> {
    let device = resolve_device(config)?;
    check_shardable(&config.data, pg.world_size())?;
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
            crate::progress::println(line);
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
    let sampler = match config.data.sampling {
        Sampling::Balanced => Sampler::Balanced(BalancedSampler::new(splits.train.labels(), config.data.batch_size, config.data.ipc, config.seed)?),
        Sampling::Random => Sampler::Random(RandomSampler::new(splits.train.len(), config.data.batch_size, config.seed)?),
    };
    let spec = Arc::new(PipelineSpec::from_config(&config.data, config.model.backbone, config.seed));
    if splits.is_streamed() {
        say(&format!(
            "images: {} decode thread(s) per rank, {} batch(es) ahead; train crop {} px, test {} px from {} ({:?} input)",
            spec.threads,
            spec.prefetch,
            spec.train_crop,
            spec.test_crop,
            spec.test_resize,
            spec.convention
        ));
    }
    let mut warned: HashSet<(bool, usize)> = HashSet::new();
    let state = build_state(config, splits.train.num_classes() as i64, device);
    let precision = Precision::resolve(config, device);
    if let Some(notice) = Precision::cpu_notice(config, device) {
        say(&notice);
    }
    let mut scaler = precision.loss_scaling().then(GradScaler::default);
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
        point = restore(&loaded, &state, &mut optimizer, scaler.as_mut())?;
        if point.step_in_epoch > sampler.steps_per_epoch() {
            return Err(HistError::config(
                "data.batch_size",
                format!(
                    "the checkpoint {} is at step {} of an epoch, but an epoch of this config has {} step(s) (the batch size, sampling or dataset changed); resume with the checkpoint's data settings, or start a new run",
                    path.display(),
                    point.step_in_epoch,
                    sampler.steps_per_epoch()
                ),
            ));
        }
        let changes = config_changes(&loaded.meta.config_yaml, config);
        if !changes.is_empty() {
            say(&format!(
                "the config differs from the checkpoint's in {}; continuing with the new values, so the run will not repeat an uninterrupted one",
                changes.join(", ")
            ));
        }
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
            truncate_metrics_after(dir, point.global_step, point.epoch)?;
        }
        if let Some(l) = logger.as_mut() {
            // Logged again by this session: anything a crashed one logged after the checkpoint.
            l.session_start(point.global_step + 1)?;
            let note = format!("resumed from {} at step {}", path.display(), point.global_step);
            l.text("run/resumed", &note, point.global_step)?;
            l.scalar("run/resumed_at_step", point.global_step as f64, point.global_step)?;
        }
    } else if let Some(dir) = run_dir {
        // A restart of a run that failed before its first checkpoint begins again.
        clear_metrics(dir)?;
        if let Some(l) = logger.as_mut() {
            l.session_start(0)?;
        }
    }
    if point.global_step == 0 {
        // A fresh run starts from model.pretrained (every rank reads it); a resumed one from its checkpoint.
        match crate::model::pretrained::load_configured(&state.vs, &config.model) {
            Ok(Some(summary)) => say(&summary.to_string()),
            Ok(None) => {}
            Err(e) => {
                // As for unreadable data: a run that never started leaves no folder behind.
                if let (Some(dir), true) = (run_dir, created_run_dir) {
                    drop(logger);
                    let _ = std::fs::remove_dir_all(dir);
                }
                return Err(e);
            }
        }
        if let Some(l) = logger.as_mut() {
            l.log_hparams(config)?;
        }
    }

    let mut initial_recall = None;
    if config.train.eval_at_start && point.global_step == 0 {
        let eval = evaluate(pg, config, &state, &splits, &spec, device)?;
        warn_skipped(&say, &mut warned, &splits.test, true, &eval.skipped);
        let r = eval.recall.clone();
        say(&format!("epoch 0/{}  (initialisation)  {}", config.train.epochs, format_recall(&r)));
        if let Some(l) = logger.as_mut() {
            l.epoch(&EpochRecord { epoch: 0, step: 0, losses: None, recall: r.clone() })?;
            log_evaluation(l, 0, &eval, &splits.test, &state)?;
        }
        initial_recall = Some(r);
    }

    let base = base_lrs(&config.optim);
    let mut global_step = point.global_step;
    let mut stopped: Option<StopReason> = None;
    let mut last_eval: Option<Evaluation> = None;
    let (rank, world) = (pg.rank(), pg.world_size());
    let range = PlanRange { from: (point.epoch, point.step_in_epoch), epochs: config.train.epochs, rank, world, hflip: config.data.hflip };
    let mut batches = TrainBatches::new(&splits.train, &spec, &sampler, range)?;
    let t_run = Instant::now();
    // A resume with train.max_steps at or below the checkpoint's step trains no more.
    let max_steps_reached = config.train.max_steps > 0 && point.global_step >= config.train.max_steps;
    if max_steps_reached {
        say(&format!("the checkpoint is at step {}: train.max_steps = {} is reached", point.global_step, config.train.max_steps));
    }
    let first_epoch = if max_steps_reached { config.train.epochs } else { point.epoch };
    for epoch in first_epoch..config.train.epochs {
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
        let mut skipped_train = if resumed_here { point.epoch_skipped } else { 0 };
        // A bar on an attended terminal only (crate::progress); logs get the epoch line.
        let bar = Progress::new(
            &format!("epoch {}/{}", epoch + 1, config.train.epochs),
            (sampler.steps_per_epoch() - first_step) as u64,
            "steps",
            run_dir.is_some(),
        );
        for step in first_step..sampler.steps_per_epoch() {
            let global = sampler.batch(epoch, step);
            let flips = if config.data.hflip { sampler.flips(epoch, step, global.len()) } else { Vec::new() };
            let local = batches.local(epoch, step, &global, &flips, rank, world, kind, device)?;
            let batch = StepBatch { images: local.images, labels: splits.train.labels_of(&global), present: local.present };
            let stats = train_step(pg, &state.model, &state.loss, &mut optimizer, &rules, batch, device, bucket_bytes, precision.autocast, scaler.as_mut())?;
            if !stats.dropped.is_empty() {
                skipped_train += stats.dropped.len();
                let samples: Vec<usize> = stats.dropped.iter().map(|&p| global[p]).collect();
                warn_skipped(&say, &mut warned, &splits.train, false, &samples);
            }
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
            bar.inc(1);
            bar.set_message(format!("loss {:.4}", values[0]));
            if let Some(l) = logger.as_mut() {
                if global_step % config.train.log_every == 0 || global_step == 1 {
                    for (tag, v) in ["train/loss", "train/loss_ds", "train/loss_ce"].iter().zip(values) {
                        l.scalar(tag, v, global_step)?;
                    }
                    for (g, group) in optimizer.groups().iter().enumerate() {
                        l.scalar(&format!("train/lr/{}", GROUP_NAMES[g]), group.lr, global_step)?;
                    }
                    if let Some(s) = &scaler {
                        l.scalar("train/grad_scale", s.scale(), global_step)?;
                        l.scalar("train/skipped_steps", s.skipped_steps() as f64, global_step)?;
                    }
                }
            }
            if config.train.print_every > 0 && global_step % config.train.print_every == 0 {
                let skipped = if stats.skipped { "  (update skipped: fp16 gradients overflowed)" } else { "" };
                say(&format!("step {global_step}  loss {:.6} (ds {:.6}, ce {:.6}){skipped}", values[0], values[1], values[2]));
            }
            let here = ResumePoint { epoch, step_in_epoch: step + 1, global_step, epoch_sums: sums, epoch_steps: steps_this_epoch, epoch_skipped: skipped_train };
            if config.train.max_steps > 0 && global_step >= config.train.max_steps {
                stopped_early = true;
                break;
            }
            let reason = stop.agreed(pg, device)?;
            if reason.is_some() || checkpoints.due(global_step) {
                // A resume from this checkpoint needs everything logged up to it.
                if let Some(l) = logger.as_mut() {
                    l.flush()?;
                }
                checkpoints.save(pg, &state, &optimizer, scaler.as_ref(), &here, None)?;
            }
            if reason.is_some() {
                stopped = reason;
                break;
            }
        }
        drop(bar);
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
        let eval = evaluate(pg, config, &state, &splits, &spec, device)?;
        warn_skipped(&say, &mut warned, &splits.test, true, &eval.skipped);
        let (r, skipped_test) = (eval.recall.clone(), &eval.skipped);
        let skipped = if config.data.on_bad_image == BadImagePolicy::Skip {
            format!("; skipped unreadable images: {skipped_train} in training, {} in evaluation", skipped_test.len())
        } else {
            String::new()
        };
        // train.max_steps may end the run in an earlier epoch than train.epochs.
        let last_epoch = match config.train.max_steps {
            0 => config.train.epochs,
            max => config.train.epochs.min(max.div_ceil(sampler.steps_per_epoch().max(1))),
        };
        let epochs_left = last_epoch.saturating_sub(epoch + 1);
        let eta = t_run.elapsed().as_secs_f64() / (epoch + 1 - point.epoch) as f64 * epochs_left as f64;
        let eta = if epochs_left > 0 { format!("; ETA {}", format_duration(eta)) } else { String::new() };
        let amp = scaler.as_ref().map_or(String::new(), |s| format!("; fp16 loss scale {}, {} update(s) skipped", s.scale(), s.skipped_steps()));
        say(&format!(
            "epoch {}/{}  step {}  loss {:.4} (ds {:.4}, ce {:.4})  {}  ({:.1} s; {throughput}{skipped}{amp}{eta})",
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
            if config.data.on_bad_image == BadImagePolicy::Skip {
                l.scalar("data/skipped_train_images", skipped_train as f64, global_step)?;
                l.scalar("data/skipped_test_images", skipped_test.len() as f64, global_step)?;
            }
            l.epoch(&EpochRecord { epoch: epoch + 1, step: global_step, losses: Some(losses), recall: r.clone() })?;
            log_evaluation(l, global_step, &eval, &splits.test, &state)?;
        }
        let next = ResumePoint { epoch: epoch + 1, global_step, ..ResumePoint::default() };
        let recall_at_1 = r.iter().find(|(k, _)| *k == 1).map(|(_, v)| *v);
        if !stopped_early {
            checkpoints.save(pg, &state, &optimizer, scaler.as_ref(), &next, recall_at_1)?;
        }
        last_eval = Some(eval);
        if stopped_early {
            say(&format!("stopped at train.max_steps = {}", config.train.max_steps));
            break;
        }
    }
    if stopped.is_none() && last_eval.is_none() {
        // Nothing trained in this session (resumed at the end of training): the final
        // evaluation, for the summary and the projector, is still owed.
        let eval = evaluate(pg, config, &state, &splits, &spec, device)?;
        warn_skipped(&say, &mut warned, &splits.test, true, &eval.skipped);
        say(&format!("final evaluation  {}", format_recall(&eval.recall)));
        last_eval = Some(eval);
    }
    if let (Some(dir), None) = (run_dir, stopped) {
        save_final(&state, &dir.join("final.safetensors"))?;
        if let Some(l) = logger.as_mut() {
            if let Some(eval) = &last_eval {
                write_test_projector(l, eval, &splits.test)?;
            }
            // Only now: TensorBoard keeps the first end record, and a stopped run resumes.
            l.end_hparams(SessionStatus::Success, global_step)?;
        }
    }
    pg.barrier()?;
    let final_recall = last_eval.map_or_else(Vec::new, |e| e.recall);
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
