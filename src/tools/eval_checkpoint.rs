//! `hist eval --checkpoint PATH [CONFIG]`: the full metric suite of a trained model on its
//! dataset's test split, on one rank or sharded over many (docs/evaluation.md).
//!
//! PATH is a checkpoint folder (`runs/x/checkpoints/best`, a `step-…` folder; verified as
//! when resuming) or a parameter file (`runs/x/final.safetensors`). Without CONFIG the
//! config is the one the model was trained with: the checkpoint's own copy, or the run
//! directory's `config.yaml` beside a parameter file; `--set` overrides either (e.g.
//! `data.root` when the data moved).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tch::nn::VarStore;
use tch::{Kind, Tensor};

use crate::checkpoint::CheckpointStore;
use crate::config::{load_config, load_config_str, parse_device, Config, ConfigSource, DistBackend};
use crate::data::pipeline::PipelineSpec;
use crate::dist::env::DistEnv;
use crate::dist::process_group::ProcessGroup;
use crate::error::{HistError, Result};
use crate::eval::evaluate;
use crate::eval::test_split::{embed_test_split, EmbeddedTest};
use crate::model::pretrained::compare_names;
use crate::model::EmbeddingModel;
use crate::tools::eval_embeddings::{options, print_report, EvalArgs};
use crate::train::trainer::{load_data, resolve_device};

/// Prefix of the loss's variables, which a parameter file holds beside the model's.
const LOSS_PREFIX: &str = "loss.";

/// The command's inputs besides the metric flags.
#[derive(Clone, Debug)]
pub struct CheckpointEvalArgs {
    /// Checkpoint folder or parameter file.
    pub checkpoint: PathBuf,
    /// Config file; `None` takes the one the model was trained with.
    pub config: Option<PathBuf>,
    /// `KEY=VALUE` overrides of the config.
    pub overrides: Vec<String>,
    /// Device instead of the config's (`cpu`, `cuda`, `cuda:N`).
    pub device: Option<String>,
    /// Where rank 0 writes the test embeddings for `hist eval --embeddings`.
    pub save_embeddings: Option<PathBuf>,
    /// What to compute and how to print it (its `device` is not used here).
    pub metrics: EvalArgs,
}

/// Trained weights and what is known of how they were trained.
struct TrainedWeights {
    /// Variables by VarStore name (`backbone.*`, `head.*`, maybe `loss.*`).
    tensors: Vec<(String, Tensor)>,
    /// The training config, if it travels with the weights.
    config_yaml: Option<String>,
    /// Where the config came from, for messages.
    config_origin: String,
    /// One line describing the weights.
    description: String,
}

/// Reads a checkpoint folder (verified) or a parameter file.
fn read_weights(path: &Path) -> Result<TrainedWeights> {
    if path.is_dir() {
        let loaded = CheckpointStore::load_dir(path)?;
        let m = &loaded.meta;
        let recall = m.recall_at_1.map(|r| format!(", Recall@1 {r:.4} when saved")).unwrap_or_default();
        return Ok(TrainedWeights {
            description: format!("checkpoint {} (step {}, epoch {}{recall})", loaded.path.display(), m.global_step, m.epoch),
            config_yaml: Some(m.config_yaml.clone()),
            config_origin: format!("the config saved in {}", loaded.path.display()),
            tensors: loaded.tensors.model,
        });
    }
    if !path.is_file() {
        return Err(HistError::Io {
            path: path.to_path_buf(),
            message: "no such checkpoint folder or parameter file; give runs/NAME/checkpoints/best, a step-… folder or runs/NAME/final.safetensors".into(),
        });
    }
    let tensors = Tensor::read_safetensors(path).map_err(|e| HistError::Io {
        path: path.to_path_buf(),
        message: format!("cannot read as safetensors ({e}); give a checkpoint folder or a final.safetensors written by hist train"),
    })?;
    let beside = path.parent().unwrap_or(Path::new(".")).join("config.yaml");
    let config_yaml = std::fs::read_to_string(&beside).ok();
    Ok(TrainedWeights {
        description: format!("parameters {}", path.display()),
        config_yaml,
        config_origin: beside.display().to_string(),
        tensors,
    })
}

/// The config to evaluate with: CONFIG if given, else the training config.
fn resolve_config(args: &CheckpointEvalArgs, weights: &TrainedWeights) -> Result<Config> {
    if let Some(path) = &args.config {
        return load_config(path, &args.overrides);
    }
    match &weights.config_yaml {
        Some(yaml) => load_config_str(yaml, ConfigSource::Embedded(&weights.config_origin), &args.overrides),
        None => Err(HistError::input(
            "CONFIG",
            format!("{} does not exist, so the training config is unknown; pass the config the model was trained with", weights.config_origin),
        )),
    }
}

/// Copies the trained weights into the model's variables: every variable must be there
/// with its shape; the loss's variables are ignored; anything else is a different model.
fn load_model_weights(vs: &VarStore, weights: &TrainedWeights, source: &Path) -> Result<()> {
    let vars = vs.variables();
    let model_shapes: BTreeMap<String, Vec<i64>> = vars.iter().map(|(n, t)| (n.clone(), t.size())).collect();
    let file_shapes: BTreeMap<String, Vec<i64>> =
        weights.tensors.iter().filter(|(n, _)| !n.starts_with(LOSS_PREFIX)).map(|(n, t)| (n.clone(), t.size())).collect();
    let mismatch = compare_names(&model_shapes, &file_shapes);
    let problem = if let Some(name) = mismatch.unexpected.first() {
        Some(format!("holds {name}, which the configured model does not have"))
    } else if let Some(first) = mismatch.missing.first() {
        Some(format!("lacks {} variable(s) of the configured model, e.g. {first}", mismatch.missing.len()))
    } else {
        mismatch.shapes.first().map(|(name, file, model)| format!("{name} has shape {file:?}, the configured model needs {model:?}"))
    };
    if let Some(what) = problem {
        return Err(HistError::Io {
            path: source.to_path_buf(),
            message: format!(
                "{what}; was it trained with another model.backbone or model.embedding_dim? evaluate with the config it was trained with (omit CONFIG and model.* overrides)"
            ),
        });
    }
    let _guard = tch::no_grad_guard();
    for (name, saved) in &weights.tensors {
        if let Some(var) = vars.get(name) {
            var.shallow_clone().copy_(&saved.to_kind(var.kind()).to_device(var.device()));
        }
    }
    Ok(())
}

/// Writes the embedded test split as `hist eval --embeddings` reads it.
fn save_embeddings(path: &Path, test: &EmbeddedTest) -> Result<()> {
    let mut named: Vec<(&str, Tensor)> = vec![("embeddings", test.embeddings.shallow_clone()), ("labels", Tensor::from_slice(&test.labels))];
    if !test.split.is_same_source() {
        let mask = |rows: &[i64]| {
            let mut m = vec![false; test.labels.len()];
            rows.iter().for_each(|&r| m[r as usize] = true);
            Tensor::from_slice(&m)
        };
        named.push(("is_query", mask(&test.split.query_rows)));
        named.push(("is_gallery", mask(&test.split.gallery_rows)));
    }
    Tensor::write_safetensors(&named, path).map_err(|e| HistError::Io { path: path.to_path_buf(), message: format!("cannot write the embeddings: {e}") })
}

/// The training run chose `dist.backend` for its own device (nccl for a GPU run); when
/// `--device` moves the evaluation to a device that backend cannot serve, `auto` picks the
/// one that can, and the switch is said on stderr.
fn fit_backend_to_device(config: &mut Config) {
    let on_cuda = parse_device(&config.device).is_ok_and(|d| d.is_cuda());
    if !config.dist.backend.serves(on_cuda) {
        eprintln!(
            "dist.backend {} of the training config cannot serve --device {}; evaluating with dist.backend auto",
            config.dist.backend.name(),
            config.device
        );
        config.dist.backend = DistBackend::Auto;
    }
}

/// Runs the command as one rank of the job the environment describes (one rank when
/// started by hand); rank 0 prints the report.
pub fn run(args: &CheckpointEvalArgs) -> Result<()> {
    // Flags first, so a typo fails before anything is loaded.
    let eval_options = options(&args.metrics)?;
    let weights = read_weights(&args.checkpoint)?;
    let mut config = resolve_config(args, &weights)?;
    if let Some(device) = &args.device {
        config.device = device.clone();
        fit_backend_to_device(&mut config);
    }
    let env = DistEnv::from_process_env()?;
    crate::progress::show_on_this_rank(env.rank == 0);
    if config.device == "cuda" {
        config.device = format!("cuda:{}", env.local_rank);
    }
    let device = resolve_device(&config)?;
    let mut pg = ProcessGroup::init(env, device, config.dist.backend)?;
    let pg = pg.collectives();
    let rank0 = pg.rank() == 0;
    if rank0 {
        eprintln!("evaluating {} on {} rank(s), device {}", weights.description, pg.world_size(), config.device);
    }
    let data = load_data(&config)?;
    let mut vs = VarStore::new(device);
    let model = EmbeddingModel::new(&vs.root(), &config.model);
    if config.dtype.kind() == Kind::Double {
        vs.double();
    }
    load_model_weights(&vs, &weights, &args.checkpoint)?;
    drop(weights);
    let spec = Arc::new(PipelineSpec::from_config(&config.data, config.model.backbone, config.seed));
    let test = embed_test_split(pg, &model, &data, &spec, config.eval.batch_size, config.dtype.kind(), device)?;
    if !rank0 {
        return Ok(());
    }
    if let Some(&first) = test.skipped.first() {
        eprintln!("skipped {} unreadable test image(s), e.g. {}", test.skipped.len(), data.test.why_unreadable(first));
    }
    if let Some(path) = &args.save_embeddings {
        save_embeddings(path, &test)?;
        eprintln!("test embeddings written to {}", path.display());
    }
    let report = evaluate(&test.embeddings.to_device(device), &test.labels, &test.split, &eval_options)?;
    print_report(&report, &args.metrics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::Split;
    use crate::tools::eval_embeddings::load;

    #[test]
    fn saved_query_gallery_embeddings_load_with_the_same_split() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("e.safetensors");
        let query = [true, true, false, false, true];
        let gallery = [false, true, true, true, false];
        let split = Split::from_masks(5, Some(&query), Some(&gallery)).expect("split");
        let test = EmbeddedTest {
            embeddings: Tensor::randn([5, 3], (Kind::Float, tch::Device::Cpu)),
            labels: vec![0, 1, 0, 1, 2],
            kept: (0..5).collect(),
            skipped: Vec::new(),
            split,
        };
        save_embeddings(&path, &test).expect("save");
        let back = load(&path).expect("load");
        assert_eq!(back.labels, test.labels);
        assert_eq!(back.split, test.split);
        assert!(back.embeddings.equal(&test.embeddings));
    }
}
