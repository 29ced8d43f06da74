//! `hist-launch`: starts `hist train` workers with a torchrun-style environment and
//! reports how they ended. This version runs one worker (CPU rank or one GPU); the
//! multi-rank rendezvous arrives with the distributed backend.
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::Parser;

/// Launch hist training workers.
#[derive(Parser, Debug)]
#[command(name = "hist-launch", version, about)]
struct Args {
    /// Number of CPU worker processes.
    #[arg(long, default_value_t = 1)]
    nproc: usize,
    /// Run directory passed to the worker (default: runs/<name>).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Path of the `hist` worker binary (default: next to this executable).
    #[arg(long, env = "HIST_WORKER")]
    worker: Option<PathBuf>,
    /// Config file (default: the worker's embedded configs/demo.yaml).
    config: Option<PathBuf>,
    /// Override a config key, e.g. --set train.epochs=3 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

fn worker_path(explicit: Option<&Path>) -> Result<PathBuf> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .context("cannot locate hist-launch's own executable")?
            .with_file_name("hist"),
    };
    if !path.is_file() {
        bail!(
            "worker binary {} not found; build it with `cargo build -p hist` or pass --worker PATH",
            path.display()
        );
    }
    Ok(path)
}

fn launch(args: &Args) -> Result<i32> {
    if args.nproc != 1 {
        bail!("--nproc {} needs the multi-rank backend, which this version does not have yet; use --nproc 1", args.nproc);
    }
    if let Some(config) = &args.config {
        if !config.is_file() {
            bail!("config {} not found", config.display());
        }
    }
    let worker = worker_path(args.worker.as_deref())?;
    let mut cmd = Command::new(&worker);
    cmd.arg("train");
    if let Some(config) = &args.config {
        cmd.arg("--config").arg(config);
    }
    if let Some(dir) = &args.run_dir {
        cmd.arg("--run-dir").arg(dir);
    }
    for o in &args.overrides {
        cmd.arg("--set").arg(o);
    }
    cmd.env("RANK", "0")
        .env("LOCAL_RANK", "0")
        .env("WORLD_SIZE", "1")
        .env("LOCAL_WORLD_SIZE", "1")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", "0");
    let status = cmd.status().with_context(|| format!("cannot start worker {}", worker.display()))?;
    if let Some(code) = status.code() {
        if code != 0 {
            eprintln!("hist-launch: rank 0 exited with status {code}");
        }
        return Ok(code);
    }
    use std::os::unix::process::ExitStatusExt;
    let signal = status.signal().unwrap_or(0);
    eprintln!("hist-launch: rank 0 was killed by signal {signal}");
    Ok(128 + signal)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match launch(&args) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(err) => {
            eprintln!("hist-launch: error: {err:#}");
            ExitCode::from(2)
        }
    }
}
