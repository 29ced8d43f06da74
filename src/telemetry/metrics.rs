//! Metric sinks: one interface, written to TensorBoard and to `metrics.jsonl`.
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::tensorboard::SummaryWriter;
use crate::error::{HistError, Result};

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
        Ok(RunLogger { tensorboard, jsonl: BufWriter::new(file), jsonl_path })
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
            self.tensorboard.add_scalar(&format!("eval/recall@{k}"), *r, record.step as i64)?;
        }
        let line = record.to_json().to_string();
        writeln!(self.jsonl, "{line}")
            .and_then(|_| self.jsonl.flush())
            .map_err(|e| HistError::io(&self.jsonl_path, e))?;
        self.tensorboard.flush()
    }
}
