//! Metric sinks: one interface, written to TensorBoard and to `metrics.jsonl`, plus the
//! run's hyper-parameters, histograms, retrieval grid and projector files.
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use image::RgbImage;
use serde_json::{Map, Value};
use tch::{Device, Kind, Tensor};

use super::hparams::{flatten_hparams, SessionStatus};
use super::projector::{write_projector, EmbeddingSet, ProjectorOptions, ProjectorOutput};
use super::retrieval_grid::{
    nearest_neighbours, render_retrieval_grid, spread_queries, GridStyle, GRID_NEIGHBOURS,
    GRID_QUERIES,
};
use super::tensorboard::SummaryWriter;
use crate::config::Config;
use crate::error::{HistError, Result};

/// Image tag of the retrieval grid.
pub const RETRIEVAL_GRID_TAG: &str = "eval/retrieval";

/// One epoch's summary, as written to `metrics.jsonl`.
#[derive(Debug, Clone, Default)]
pub struct EpochRecord {
    /// 1-based epoch; 0 is the evaluation before training.
    pub epoch: usize,
    /// Optimiser steps taken so far.
    pub step: usize,
    /// Mean training losses of the epoch (total, ds, ce); absent for epoch 0.
    pub losses: Option<[f64; 3]>,
    /// (K, Recall@K) on the test classes.
    pub recall: Vec<(usize, f64)>,
}

impl EpochRecord {
    /// The JSON object of one `metrics.jsonl` line.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("epoch".into(), self.epoch.into());
        m.insert("step".into(), self.step.into());
        if let Some([total, ds, ce]) = self.losses {
            m.insert("loss".into(), total.into());
            m.insert("loss_ds".into(), ds.into());
            m.insert("loss_ce".into(), ce.into());
        }
        for (k, r) in &self.recall {
            m.insert(format!("recall@{k}"), (*r).into());
        }
        Value::Object(m)
    }
}

/// Everything a run records: TensorBoard scalars and the per-epoch JSON lines.
pub struct RunLogger {
    tensorboard: SummaryWriter,
    jsonl: BufWriter<File>,
    jsonl_path: PathBuf,
    run_dir: PathBuf,
}

impl RunLogger {
    /// Opens the TensorBoard writer and `metrics.jsonl` in `run_dir`.
    pub fn create(run_dir: &Path) -> Result<Self> {
        let tensorboard = SummaryWriter::create(run_dir)?;
        let jsonl_path = run_dir.join("metrics.jsonl");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&jsonl_path)
            .map_err(|e| HistError::io(&jsonl_path, e))?;
        Ok(RunLogger {
            tensorboard,
            jsonl: BufWriter::new(file),
            jsonl_path,
            run_dir: run_dir.to_path_buf(),
        })
    }

    /// Marks where this session takes the run over (TensorBoard then drops what a crashed
    /// session logged from `step` on; see [`SummaryWriter::add_session_start`]).
    pub fn session_start(&mut self, step: usize) -> Result<()> {
        self.tensorboard.add_session_start(step as i64)
    }

    /// Pushes buffered TensorBoard records to the file: before a checkpoint, so that a
    /// resume from it has everything logged up to it.
    pub fn flush(&mut self) -> Result<()> {
        self.tensorboard.flush()
    }

    /// A training scalar at `step`.
    pub fn scalar(&mut self, tag: &str, value: f64, step: usize) -> Result<()> {
        self.tensorboard.add_scalar(tag, value, step as i64)
    }

    /// A text note in TensorBoard (e.g. that the run resumed) at `step`.
    pub fn text(&mut self, tag: &str, text: &str, step: usize) -> Result<()> {
        self.tensorboard.add_text(tag, text, step as i64)?;
        self.tensorboard.flush()
    }

    /// Appends an epoch record to `metrics.jsonl` and its recalls to TensorBoard.
    pub fn epoch(&mut self, record: &EpochRecord) -> Result<()> {
        for (k, r) in &record.recall {
            self.tensorboard
                .add_scalar(&format!("eval/recall@{k}"), *r, record.step as i64)?;
        }
        let line = record.to_json().to_string();
        writeln!(self.jsonl, "{line}")
            .and_then(|_| self.jsonl.flush())
            .map_err(|e| HistError::io(&self.jsonl_path, e))?;
        self.tensorboard.flush()
    }

    /// Records the resolved config in the HParams dashboard: every key flattened to a
    /// dotted name (`loss.tau`, `optim.lr`, …; unset optional keys left out), with
    /// `eval/recall@K` for every configured K and `train/loss` as its metrics.
    pub fn log_hparams(&mut self, config: &Config) -> Result<()> {
        let tree = serde_json::to_value(config).map_err(|e| {
            HistError::input(
                "config",
                format!("cannot be listed as hyper-parameters: {e}"),
            )
        })?;
        let mut metrics: Vec<String> = config
            .eval
            .ks
            .iter()
            .map(|k| format!("eval/recall@{k}"))
            .collect();
        metrics.push("train/loss".to_string());
        let metric_tags: Vec<&str> = metrics.iter().map(String::as_str).collect();
        self.tensorboard
            .add_hparams(&flatten_hparams(&tree), &metric_tags)
    }

    /// Closes the HParams session at `step`. TensorBoard keeps only the first end record
    /// of a run (and the first start record), so call this once, when the run is over for
    /// good (`Success` after the last epoch), not when stopping to be resumed.
    pub fn end_hparams(&mut self, status: SessionStatus, step: usize) -> Result<()> {
        self.tensorboard.end_hparams_session(status, step as i64)
    }

    /// One histogram per named tensor (all elements, any shape, dtype or device) at `step`.
    pub fn log_histograms(&mut self, step: usize, named: &[(&str, &Tensor)]) -> Result<()> {
        for (tag, tensor) in named {
            let flat = tensor
                .to_device(Device::Cpu)
                .to_kind(Kind::Double)
                .contiguous()
                .view([-1]);
            let values = Vec::<f64>::try_from(flat)?;
            self.tensorboard.add_histogram(tag, &values, step as i64)?;
        }
        self.tensorboard.flush()
    }

    /// The retrieval grid at `step` under [`RETRIEVAL_GRID_TAG`]: [`GRID_QUERIES`] queries
    /// spread evenly over the set (the same ones every time), each with its
    /// [`GRID_NEIGHBOURS`] nearest others by cosine similarity of `embeddings` `[N, D]`.
    /// `thumbnail(i)` produces image i of the set (see `telemetry::thumbnails`).
    pub fn log_retrieval_grid<F>(
        &mut self,
        step: usize,
        embeddings: &Tensor,
        labels: &[i64],
        thumbnail: F,
    ) -> Result<()>
    where
        F: FnMut(usize) -> Result<RgbImage>,
    {
        let queries = spread_queries(labels.len(), GRID_QUERIES);
        let rows = nearest_neighbours(embeddings, &queries, GRID_NEIGHBOURS)?;
        let grid = render_retrieval_grid(&rows, labels, thumbnail, &GridStyle::default())?;
        self.tensorboard
            .add_image(RETRIEVAL_GRID_TAG, &grid, step as i64)?;
        self.tensorboard.flush()
    }

    /// Writes `set` for the embedding projector into the run directory (default size
    /// limits; see `telemetry::projector`), with a thumbnail sprite when `thumbnail` is
    /// given.
    pub fn write_projector(
        &self,
        set: &EmbeddingSet,
        thumbnail: Option<&mut dyn FnMut(usize) -> Result<RgbImage>>,
    ) -> Result<ProjectorOutput> {
        write_projector(&self.run_dir, set, thumbnail, &ProjectorOptions::default())
    }
}
