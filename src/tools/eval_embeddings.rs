//! `hist eval --embeddings FILE.safetensors`: the metric suite on embeddings computed
//! elsewhere (docs/evaluation.md), so any model's output can be scored exactly as ours.
//!
//! The file holds `embeddings` [N, D] float32/float64, `labels` [N] int64 and, for a
//! query–gallery protocol, `is_query` / `is_gallery` [N] bool or uint8 (0/1) masks; a
//! missing mask selects every row.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use crate::config::parse_device;
use crate::error::{HistError, Result};
use crate::eval::kmeans::KMeansOptions;
use crate::eval::knn::{KnnOptions, Precision};
use crate::model::precision::ready_device;
use crate::eval::{evaluate, EvalOptions, EvalReport, Split};

/// Tensor names an embeddings file may hold.
pub const TENSOR_NAMES: [&str; 4] = ["embeddings", "labels", "is_query", "is_gallery"];

/// The command's options (flags of `hist eval`).
#[derive(Clone, Debug)]
pub struct EvalArgs {
    /// K of Recall@K.
    pub ks: Vec<usize>,
    /// Print one JSON object instead of a table.
    pub json: bool,
    /// Rows and columns per block of similarities in the k-NN search (default 1,024, at most 8,192; each worker holds one block).
    pub chunk: Option<usize>,
    /// Float kind of the k-NN products, `f32` or `f64` (the ranking is exact either way).
    pub precision: String,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// k-means restarts for NMI; 0 skips NMI.
    pub kmeans_restarts: usize,
    /// Lloyd iterations per k-means restart at most.
    pub kmeans_iters: usize,
    /// Seed of k-means.
    pub seed: u64,
    /// Also write the JSON object to this file (handy under hist-launch, which prefixes
    /// every printed line with its rank).
    pub report_file: Option<PathBuf>,
}

/// A validated embeddings file.
#[derive(Debug)]
pub struct EvalInput {
    /// [N, D], float32 or float64, on the CPU.
    pub embeddings: Tensor,
    /// One label per row.
    pub labels: Vec<i64>,
    /// Queries and gallery from the masks.
    pub split: Split,
}

/// Reads and checks `path`; every problem is a one-line error naming the tensor.
pub fn load(path: &Path) -> Result<EvalInput> {
    if !path.is_file() {
        return Err(HistError::Io { path: path.to_path_buf(), message: "no such file; give the path of a .safetensors embeddings file".into() });
    }
    let tensors = Tensor::read_safetensors(path).map_err(|e| HistError::Io {
        path: path.to_path_buf(),
        message: format!("cannot read as safetensors ({e}); give a safetensors file with tensors {TENSOR_NAMES:?}"),
    })?;
    let mut named: HashMap<String, Tensor> = tensors.into_iter().collect();
    if let Some(extra) = named.keys().find(|k| !TENSOR_NAMES.contains(&k.as_str())) {
        return Err(HistError::input(extra, format!("unexpected tensor; an embeddings file holds only {TENSOR_NAMES:?}")));
    }
    let embeddings = named.remove("embeddings").ok_or_else(|| HistError::input("embeddings", "missing from the file; store the [N, D] float matrix as \"embeddings\""))?;
    if embeddings.kind() != Kind::Float && embeddings.kind() != Kind::Double {
        return Err(HistError::input("embeddings", format!("must be float32 or float64, got {:?}", embeddings.kind())));
    }
    let size = embeddings.size();
    if size.len() != 2 || size[0] < 1 || size[1] < 1 {
        return Err(HistError::input("embeddings", format!("expected shape [N, D] with N, D >= 1, got {size:?}")));
    }
    let n = size[0];
    let labels = named.remove("labels").ok_or_else(|| HistError::input("labels", "missing from the file; store one int64 class id per row as \"labels\""))?;
    if labels.kind() != Kind::Int64 || labels.size() != [n] {
        return Err(HistError::input("labels", format!("expected int64 [{n}] (one per embedding row), got {:?} {:?}", labels.kind(), labels.size())));
    }
    let labels = Vec::<i64>::try_from(&labels)?;
    let is_query = mask(&mut named, "is_query", n)?;
    let is_gallery = mask(&mut named, "is_gallery", n)?;
    let split = Split::from_masks(n as usize, is_query.as_deref(), is_gallery.as_deref())?;
    Ok(EvalInput { embeddings, labels, split })
}

/// An optional bool (or 0/1 uint8) mask [n].
fn mask(named: &mut HashMap<String, Tensor>, name: &str, n: i64) -> Result<Option<Vec<bool>>> {
    let Some(t) = named.remove(name) else { return Ok(None) };
    if (t.kind() != Kind::Bool && t.kind() != Kind::Uint8) || t.size() != [n] {
        return Err(HistError::input(name, format!("expected a bool or uint8 mask [{n}], got {:?} {:?}", t.kind(), t.size())));
    }
    let values = Vec::<u8>::try_from(&t.to_kind(Kind::Uint8))?;
    if values.iter().any(|&v| v > 1) {
        return Err(HistError::input(name, "uint8 mask values must be 0 or 1"));
    }
    Ok(Some(values.into_iter().map(|v| v == 1).collect()))
}

/// The evaluation options `args` ask for.
pub fn options(args: &EvalArgs) -> Result<EvalOptions> {
    let mut ks = args.ks.clone();
    ks.sort_unstable();
    ks.dedup();
    if ks.is_empty() || ks[0] == 0 {
        return Err(HistError::input("--ks", format!("needs K >= 1, e.g. --ks 1,2,4,8 (got {:?})", args.ks)));
    }
    if args.chunk == Some(0) {
        return Err(HistError::input("--chunk", "must be >= 1 row per block"));
    }
    let precision = Precision::parse(&args.precision)
        .ok_or_else(|| HistError::input("--precision", format!("must be f32 or f64, got {:?}", args.precision)))?;
    let kmeans = (args.kmeans_restarts > 0).then(|| KMeansOptions {
        restarts: args.kmeans_restarts,
        max_iter: args.kmeans_iters,
        seed: args.seed,
        ..KMeansOptions::default()
    });
    Ok(EvalOptions { ks, knn: KnnOptions { chunk: args.chunk, precision }, kmeans })
}

/// Loads `path`, evaluates on `args.device` and returns the report.
pub fn evaluate_file(path: &Path, args: &EvalArgs) -> Result<EvalReport> {
    let device = parse_device(&args.device).map_err(|m| HistError::input("--device", m))?;
    // No convolutions here (tf32 is moot); the products are IEEE float32 for the exact ranking.
    if !ready_device(device, true)? {
        return Err(HistError::input("--device", format!("{} requested but not available on this machine; use --device cpu", args.device)));
    }
    let options = options(args)?;
    let input = load(path)?;
    evaluate(&input.embeddings.to_device(device), &input.labels, &input.split, &options)
}

/// Prints `report` as one JSON object or as a table on stdout, and writes the JSON object
/// to `args.report_file` if asked.
pub fn print_report(report: &EvalReport, args: &EvalArgs) -> Result<()> {
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    if let Some(path) = &args.report_file {
        std::fs::write(path, format!("{}\n", report.to_json()))
            .map_err(|e| HistError::Io { path: path.clone(), message: format!("cannot write the report: {e}") })?;
    }
    Ok(())
}

/// `hist eval --embeddings`: prints the report as JSON or a table.
pub fn run(path: &Path, args: &EvalArgs) -> Result<()> {
    let report = evaluate_file(path, args)?;
    print_report(&report, args)
}
