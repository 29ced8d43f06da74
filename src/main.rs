//! The worker binary `hist`: training and the tools around it.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use hist::config::{load_config, load_config_str, Config, ConfigSource};
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
    /// Compute the HIST loss and its gradients on tensors from a safetensors file.
    InspectLoss {
        /// Input safetensors (embeddings, labels, means, log_vars, hgnn.*, tau, alpha, ls).
        #[arg(long)]
        input: PathBuf,
        /// Output safetensors (loss, loss_ds, loss_ce, grad.<name>).
        #[arg(long)]
        output: PathBuf,
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

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Train { config, run_dir, overrides } => {
            let config = resolve_config(config.as_ref(), &overrides)?;
            let dir = choose_run_dir(run_dir.as_deref(), &config.name)?;
            println!("run directory: {}", dir.display());
            let mut solo = hist::dist::Solo;
            let summary = hist::train::train(&config, &mut solo, Some(&dir))?;
            println!("done: {} steps; final parameters in {}", summary.steps, dir.join("final.safetensors").display());
        }
        Command::ShowConfig { config, overrides } => {
            let config = resolve_config(config.as_ref(), &overrides)?;
            print!("{}", serde_yaml_ng::to_string(&config).context("serialising the config")?);
        }
        Command::InspectLoss { input, output } => hist::tools::inspect_loss::run(&input, &output)?,
        Command::BenchLoss { n, c, d, hidden, reps, warmup, threads, ipc, seed } => {
            let args = hist::tools::bench_loss::BenchArgs { n, c, d, hidden, reps, warmup, threads, ipc, seed };
            hist::tools::bench_loss::run(&args)?
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line whatever a library put in its message, so logs and tests can rely on it.
            let message = format!("{err:#}").split_whitespace().collect::<Vec<_>>().join(" ");
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}
