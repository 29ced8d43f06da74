//! Which program each worker runs and with what arguments. The launcher passes the
//! user's config and overrides through untouched; the worker validates them.
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::args::Args;

/// The worker invocation shared by every rank on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerCommand {
    /// The `hist` binary (or a stand-in given with --worker).
    pub program: PathBuf,
    /// `train [--config C] [--run-dir D] [--set k=v]...`.
    pub args: Vec<OsString>,
    /// GPU workers get `--set device=cuda:<LOCAL_RANK>` appended.
    pub gpu: bool,
}

impl WorkerCommand {
    /// Resolves and checks the worker binary and config named on the command line.
    pub fn from_args(args: &Args, gpu: bool) -> Result<Self> {
        if let Some(config) = &args.config {
            if !config.is_file() {
                bail!("config {} not found; pass the path of a YAML config, or none for the demo", config.display());
            }
        }
        if gpu {
            if let Some(o) = args.overrides.iter().find(|o| o.trim_start().starts_with("device=")) {
                bail!("--set {o} conflicts with --gpus, which gives rank i the device cuda:i; drop the --set");
            }
        }
        if !args.worker_args.is_empty() {
            return Self::custom(args, gpu);
        }
        let mut argv: Vec<OsString> = vec!["train".into()];
        if let Some(config) = &args.config {
            argv.extend(["--config".into(), config.clone().into_os_string()]);
        }
        if let Some(dir) = &args.run_dir {
            argv.extend(["--run-dir".into(), dir.clone().into_os_string()]);
        }
        if args.resume {
            argv.push("--resume".into());
        }
        for o in &args.overrides {
            argv.extend(["--set".into(), o.into()]);
        }
        Ok(WorkerCommand { program: worker_path(args.worker.as_deref())?, args: argv, gpu })
    }

    /// Workers run the subcommand given after `--` (e.g. `eval --checkpoint …`); the
    /// training options would be silently ignored, so they are refused.
    fn custom(args: &Args, gpu: bool) -> Result<Self> {
        let training_options = [
            (args.config.is_some(), "CONFIG"),
            (args.run_dir.is_some(), "--run-dir"),
            (args.resume, "--resume"),
            (!args.overrides.is_empty(), "--set"),
            (args.max_restarts > 0, "--max-restarts"),
        ];
        if let Some((_, name)) = training_options.iter().find(|(given, _)| *given) {
            bail!("{name} is a training option but the workers run `hist {}`; put it after -- where that command accepts it", args.worker_args.join(" "));
        }
        if gpu && args.worker_args.iter().any(|a| a.starts_with("device=")) {
            bail!("a device=… override conflicts with --gpus, which gives rank i the device cuda:i; drop it");
        }
        let argv = args.worker_args.iter().map(OsString::from).collect();
        Ok(WorkerCommand { program: worker_path(args.worker.as_deref())?, args: argv, gpu })
    }

    /// The command for a restart: the worker resumes its run directory's latest checkpoint,
    /// or starts the run afresh there if it failed before the first one.
    pub fn for_restart(&self) -> WorkerCommand {
        let mut next = self.clone();
        if !next.args.iter().any(|a| a == "--restart") {
            next.args.push("--restart".into());
        }
        next
    }

    /// The argument list for the worker with this local rank.
    pub fn args_for(&self, local_rank: usize) -> Vec<OsString> {
        let mut argv = self.args.clone();
        if self.gpu {
            argv.extend(["--set".into(), format!("device=cuda:{local_rank}").into()]);
        }
        argv
    }
}

/// `--worker`/HIST_WORKER, else `hist` beside this executable (where cargo puts both).
fn worker_path(explicit: Option<&Path>) -> Result<PathBuf> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .context("cannot locate hist-launch's own executable to find `hist` beside it; pass --worker PATH")?
            .with_file_name("hist"),
    };
    if !path.is_file() {
        bail!("worker binary {} not found; build it with `cargo build -p hist` or pass --worker PATH", path.display());
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(overrides: &[&str]) -> Args {
        Args {
            worker: Some(PathBuf::from("/bin/sh")),
            run_dir: Some(PathBuf::from("runs/x")),
            overrides: overrides.iter().map(|s| s.to_string()).collect(),
            ..Args::default()
        }
    }

    #[test]
    fn gpu_workers_get_their_own_device() {
        let w = WorkerCommand::from_args(&args(&["train.epochs=1"]), true).expect("valid");
        let argv: Vec<String> = w.args_for(3).iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(argv, ["train", "--run-dir", "runs/x", "--set", "train.epochs=1", "--set", "device=cuda:3"]);
        let cpu = WorkerCommand::from_args(&args(&[]), false).expect("valid");
        assert_eq!(cpu.args_for(3), ["train", "--run-dir", "runs/x"].map(OsString::from));
    }

    #[test]
    fn workers_run_the_arguments_after_the_double_dash() {
        let a = Args {
            worker: Some(PathBuf::from("/bin/sh")),
            worker_args: ["eval", "--checkpoint", "runs/x/checkpoints/best", "c.yaml"].map(String::from).to_vec(),
            ..Args::default()
        };
        let w = WorkerCommand::from_args(&a, true).expect("valid");
        assert_eq!(
            w.args_for(1),
            ["eval", "--checkpoint", "runs/x/checkpoints/best", "c.yaml", "--set", "device=cuda:1"].map(OsString::from)
        );
        let with_training_option = Args { run_dir: Some(PathBuf::from("runs/x")), ..a };
        let err = WorkerCommand::from_args(&with_training_option, false).expect_err("refused").to_string();
        assert!(err.contains("--run-dir is a training option but the workers run `hist eval"), "{err}");
    }

    #[test]
    fn a_device_override_with_gpus_is_refused() {
        let err = WorkerCommand::from_args(&args(&["device=cpu"]), true).expect_err("conflict").to_string();
        assert!(err.contains("--set device=cpu conflicts with --gpus"), "{err}");
        assert!(WorkerCommand::from_args(&args(&["device=cpu"]), false).is_ok());
    }

    #[test]
    fn missing_files_are_named() {
        let mut a = args(&[]);
        a.worker = Some(PathBuf::from("/nonexistent/hist"));
        let err = WorkerCommand::from_args(&a, false).expect_err("no worker").to_string();
        assert!(err.contains("worker binary /nonexistent/hist not found"), "{err}");
        let mut a = args(&[]);
        a.config = Some(PathBuf::from("/nonexistent/c.yaml"));
        let err = WorkerCommand::from_args(&a, false).expect_err("no config").to_string();
        assert!(err.contains("config /nonexistent/c.yaml not found"), "{err}");
    }
}
