//! The worker binary `hist`: training and the tools around it.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use hist::config::{load_config, load_config_str, Config, ConfigSource};
use hist::dist::env::DistEnv;
use hist::dist::process_group::ProcessGroup;
use hist::train::stop::{StopFlag, StopReason};
use hist::telemetry::run_dir::choose_run_dir;

/// The embedded default config (configs/demo.yaml).
const DEMO_CONFIG: &str = include_str!("../configs/demo.yaml");

/// Deep metric learning with the HIST loss.
#[derive(Parser)]
#[command(name = "hist", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train one worker (the embedded demo config when --config is not given).
    Train {
        /// YAML config file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Run directory (default: runs/<name>, numbered if taken).
        #[arg(long)]
        run_dir: Option<PathBuf>,
        /// Override a config key, e.g. --set data.batch_size=120 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Continue the newest unfinished run of this name from its latest valid checkpoint
        /// (a --run-dir holding checkpoints is resumed without this flag).
        #[arg(long)]
        resume: bool,
        /// Set by hist-launch when it restarts a failed job: resume the run directory's latest
        /// checkpoint, or start the run there afresh if it failed before the first one.
        #[arg(long, hide = true)]
        restart: bool,
    },
    /// Print the resolved config (after --set overrides) as YAML and exit.
    ShowConfig {
        /// YAML config file (default: the embedded demo).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override a config key (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Retrieval metrics (Recall@K, MAP@R, R-Precision, NMI) of a trained model on its test
    /// split (--checkpoint) or of stored embeddings (--embeddings); docs/evaluation.md.
    #[command(group(clap::ArgGroup::new("input").required(true).args(["checkpoint", "embeddings"])))]
    Eval {
        /// Checkpoint folder (runs/NAME/checkpoints/best, a step-… folder) or parameter file
        /// (runs/NAME/final.safetensors); one rank, or many under hist-launch.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// With --checkpoint: the config to evaluate with (default: the one it was trained with).
                config: Option<PathBuf>,
        /// With --checkpoint: override a config key, e.g. --set data.root=/data/CUB_200_2011 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// With --checkpoint: also write the test embeddings here, for --embeddings.
        #[arg(long, value_name = "FILE")]
        save_embeddings: Option<PathBuf>,
        /// Safetensors with embeddings [N, D], labels [N] and optional is_query / is_gallery masks.
        #[arg(long)]
        embeddings: Option<PathBuf>,
        /// K of Recall@K, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 4, 8])]
        ks: Vec<usize>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Also write the JSON object to FILE (rank 0).
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// Rows and columns per block of similarities in the k-NN search (default 1,024, at most 8,192; each worker holds one block).
        #[arg(long)]
        chunk: Option<usize>,
        /// Float kind of the k-NN products: f32 (fast) or f64; the ranking is exact either way.
        #[arg(long, default_value = "f32")]
        precision: String,
        /// cpu, cuda or cuda:N (default: cpu for --embeddings, the config's for --checkpoint).
        #[arg(long)]
        device: Option<String>,
        /// k-means restarts for NMI (0 skips NMI).
        #[arg(long, default_value_t = 1)]
        kmeans_restarts: usize,
        /// Lloyd iterations per k-means restart at most.
        #[arg(long, default_value_t = 20)]
        kmeans_iters: usize,
        /// Seed of k-means.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Compute the HIST loss and its gradients on tensors from a safetensors file.
    InspectLoss {
        /// Input safetensors (embeddings, labels, means, log_vars, hgnn.*, tau, alpha, ls).
        #[arg(long)]
        input: PathBuf,
        /// Output safetensors (loss, loss_ds, loss_ce, grad.<name>).
        #[arg(long)]
        output: PathBuf,
    },
    /// Check the NCCL backend on this machine's GPUs (scripts/gpu_check.sh).
    #[command(hide = true)]
    NcclCheck,
    /// Time the CPU ring's all_reduce and all_gather as one rank (scripts/bench_collectives.py).
    #[command(hide = true)]
    BenchCollectives {
        #[arg(long)]
        rank: usize,
        #[arg(long)]
        world: usize,
        /// Rendezvous host:port; rank 0 serves it.
        #[arg(long)]
        addr: String,
        #[arg(long, default_value = "bench")]
        secret: String,
        #[arg(long, default_value_t = 25_557_032)]
        numel: i64,
        #[arg(long, num_args = 2, default_values_t = [180, 512])]
        gather_shape: Vec<i64>,
        #[arg(long, default_value_t = 10)]
        reps: usize,
        #[arg(long, default_value_t = 100)]
        gather_reps: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        #[arg(long, default_value_t = 0)]
        chunk_bytes: usize,
    },
    /// Time checkpoint save and verified load of a given state (scripts/bench_checkpoint.py).
    #[command(hide = true)]
    BenchCheckpoint {
        /// Safetensors with the state: tensors named model/... and optim/....
        #[arg(long)]
        state: PathBuf,
        /// Scratch run directory; its checkpoints/ is written and removed.
        #[arg(long)]
        dir: PathBuf,
        /// Timed save + load pairs.
        #[arg(long, default_value_t = 3)]
        reps: usize,
    },
    /// Time the image pipeline on a folder of images (scripts/bench_decode.py).
    #[command(hide = true)]
    BenchDecode {
        /// Folder of .jpg/.jpeg/.png files.
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long, default_value_t = 64)]
        batch: usize,
        #[arg(long, default_value_t = 1)]
        passes: usize,
        #[arg(long, default_value_t = 224)]
        crop: u32,
        /// Also time each stage alone on one thread.
        #[arg(long)]
        components: bool,
    },
    /// Time forward+backward of the HIST loss on random inputs (scripts/bench_loss.py).
    #[command(hide = true)]
    BenchLoss {
        #[arg(long, default_value_t = 256)]
        n: i64,
        #[arg(long, default_value_t = 1000)]
        c: i64,
        #[arg(long, default_value_t = 512)]
        d: i64,
        #[arg(long, default_value_t = 512)]
        hidden: i64,
        #[arg(long, default_value_t = 10)]
        reps: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        #[arg(long, default_value_t = 2)]
        threads: i32,
        /// Images per class in the batch.
        #[arg(long, default_value_t = 4)]
        ipc: i64,
        #[arg(long, default_value_t = 0)]
        seed: i64,
    },
}

fn resolve_config(path: Option<&PathBuf>, overrides: &[String]) -> hist::Result<Config> {
    match path {
        Some(p) => load_config(p, overrides),
        None => load_config_str(DEMO_CONFIG, ConfigSource::Embedded("configs/demo.yaml (embedded)"), overrides),
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Train { config, run_dir, overrides, resume, restart } => {
            let mut config = resolve_config(config.as_ref(), &overrides)?;
            let env = DistEnv::from_process_env()?;
            hist::progress::show_on_this_rank(env.rank == 0);
            if config.device == "cuda" {
                // One GPU per local rank unless the config names one.
                config.device = format!("cuda:{}", env.local_rank);
            }
            let device = hist::train::trainer::resolve_device(&config)?;
            // Only rank 0 picks (and later writes) the run directory.
            let dir = if env.rank == 0 { Some(choose_run_dir(run_dir.as_deref(), &config.name, resume, restart)?) } else { None };
            if let Some(d) = &dir {
                println!("run directory: {}", d.display());
            }
            let mut pg = ProcessGroup::init(env, device, config.dist.backend)?;
            // Installed after joining: a signal while waiting for other ranks ends the
            // process at once (there is nothing to save yet).
            let stop = StopFlag::install()?;
            let summary = hist::train::train(&config, pg.collectives(), dir.as_deref(), &stop)?;
            if let Some(reason) = summary.stopped {
                if reason == StopReason::Preempt && dir.is_some() {
                    requeue_under_slurm();
                }
                return Ok(ExitCode::from(reason.exit_code()));
            }
            if let Some(d) = &dir {
                println!("done: {} steps; final parameters in {}", summary.steps, d.join("final.safetensors").display());
            }
        }
        Command::ShowConfig { config, overrides } => {
            let config = resolve_config(config.as_ref(), &overrides)?;
            print!("{}", serde_yaml_ng::to_string(&config).context("serialising the config")?);
        }
        Command::Eval { checkpoint, config, overrides, save_embeddings, embeddings, ks, json, report, chunk, precision, device, kmeans_restarts, kmeans_iters, seed } => {
            let metrics = hist::tools::eval_embeddings::EvalArgs {
                ks, json, chunk, precision, device: device.clone().unwrap_or_else(|| "cpu".into()), kmeans_restarts, kmeans_iters, seed,
                report_file: report,
            };
            match (checkpoint, embeddings) {
                (Some(checkpoint), _) => {
                    let args = hist::tools::eval_checkpoint::CheckpointEvalArgs { checkpoint, config, overrides, device, save_embeddings, metrics };
                    hist::tools::eval_checkpoint::run(&args)?
                }
                (None, Some(path)) => {
                    if config.is_some() || !overrides.is_empty() || save_embeddings.is_some() {
                        anyhow::bail!("CONFIG, --set and --save-embeddings go with --checkpoint, not --embeddings");
                    }
                    hist::tools::eval_embeddings::run(&path, &metrics)?
                }
                (None, None) => anyhow::bail!("give --checkpoint DIR or --embeddings FILE.safetensors"),
            }
        }
        Command::InspectLoss { input, output } => hist::tools::inspect_loss::run(&input, &output)?,
        Command::NcclCheck => hist::tools::nccl_check::run()?,
        Command::BenchCollectives { rank, world, addr, secret, numel, gather_shape, reps, gather_reps, warmup, chunk_bytes } => {
            let gather_shape = [gather_shape[0], gather_shape[1]];
            let args = hist::tools::bench_collectives::BenchArgs {
                rank, world, addr, secret, numel, gather_shape, reps, gather_reps, warmup, chunk_bytes,
            };
            hist::tools::bench_collectives::run(&args)?
        }
        Command::BenchCheckpoint { state, dir, reps } => {
            hist::tools::bench_checkpoint::run(&hist::tools::bench_checkpoint::BenchArgs { state, dir, reps })?
        }
        Command::BenchDecode { dir, threads, batch, passes, crop, components } => {
            hist::tools::bench_decode::run(&hist::tools::bench_decode::BenchArgs { dir, threads, batch, passes, crop, components })?
        }
        Command::BenchLoss { n, c, d, hidden, reps, warmup, threads, ipc, seed } => {
            let args = hist::tools::bench_loss::BenchArgs { n, c, d, hidden, reps, warmup, threads, ipc, seed };
            hist::tools::bench_loss::run(&args)?
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// After SIGUSR1 (SLURM's `--signal=USR1@N` warning) and a checkpoint, asks SLURM to put
/// the job back in the queue; the requeued job resumes from that checkpoint.
fn requeue_under_slurm() {
    let Ok(job) = std::env::var("SLURM_JOB_ID") else {
        eprintln!("SIGUSR1: checkpoint written; not under SLURM, so nothing to requeue");
        return;
    };
    match std::process::Command::new("scontrol").args(["requeue", &job]).status() {
        Ok(s) if s.success() => println!("SIGUSR1: checkpoint written; requeued SLURM job {job}"),
        Ok(s) => eprintln!("warning: `scontrol requeue {job}` failed ({s}); resume by hand with --resume"),
        Err(e) => eprintln!("warning: cannot run scontrol ({e}); resume by hand with --resume"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Training allocates the same large tensors every step; evaluation would only keep a
    // larger resident set (docs/usage.md, "Memory").
    if matches!(cli.command, Command::Train { .. } | Command::BenchLoss { .. }) {
        hist::heap::keep_freed_memory();
    }
    match run(cli.command) {
        Ok(code) => code,
        Err(err) => {
            // One line whatever a library put in its message, so logs and tests can rely on it.
            let message = format!("{err:#}").split_whitespace().collect::<Vec<_>>().join(" ");
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}
