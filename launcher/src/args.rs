//! The command line as the user typed it; `plan` turns it into something validated.
use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::Parser;

/// Seconds a worker waits for every rank to join unless told otherwise; the worker's own
/// default (hist::dist::env) is the same, so a worker started by hand behaves alike.
pub const DEFAULT_JOIN_TIMEOUT_S: u64 = 300;

/// Launch and supervise hist training workers (one process per CPU rank or per GPU).
#[derive(Parser, Debug, Clone)]
#[command(name = "hist-launch", version, about)]
pub struct Args {
    /// Number of CPU worker processes on this node (default 1).
    #[arg(long, value_name = "N", conflicts_with = "gpus")]
    pub nproc: Option<usize>,
    /// Number of GPU workers on this node, one per GPU (rank i uses cuda:i).
    #[arg(long, value_name = "N")]
    pub gpus: Option<usize>,
    /// Number of nodes in the job (default 1, or SLURM_NNODES inside a SLURM job).
    #[arg(long, value_name = "M")]
    pub nnodes: Option<usize>,
    /// This node's index, 0..M (default 0, or SLURM_NODEID inside a SLURM job).
    #[arg(long, value_name = "R")]
    pub node_rank: Option<usize>,
    /// Host of node 0, where the rendezvous runs (required with --nnodes > 1 outside SLURM).
    #[arg(long, value_name = "HOST")]
    pub master_addr: Option<String>,
    /// Rendezvous port (default: a free port on one node; 29500, or 20000 + job id % 20000
    /// inside a SLURM job, across nodes). 0 picks a free port (one node only).
    #[arg(long, value_name = "P")]
    pub master_port: Option<u16>,
    /// Run directory passed to the workers (default: the worker's runs/<name>).
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// After a worker fails, restart the whole job from the run's latest valid checkpoint up
    /// to this many times (single node; needs --run-dir so every restart finds the run).
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub max_restarts: usize,
    /// Resume the newest unfinished run of the config's name from its latest checkpoint
    /// (passed to every worker as `hist train --resume`).
    #[arg(long)]
    pub resume: bool,
    /// Path of the `hist` worker binary (default: `hist` next to this executable).
    #[arg(long, value_name = "PATH", env = "HIST_WORKER")]
    pub worker: Option<PathBuf>,
    /// Seconds each worker waits for all ranks to join the rendezvous.
    #[arg(long, value_name = "SECS", env = "HIST_JOIN_TIMEOUT", default_value_t = DEFAULT_JOIN_TIMEOUT_S)]
    pub join_timeout: u64,
    /// Config file (default: the worker's embedded configs/demo.yaml).
    pub config: Option<PathBuf>,
    /// Override a config key, e.g. --set train.epochs=3 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Instead of training, run every worker as `hist <ARGS>`, e.g.
    /// `hist-launch --nproc 2 -- eval --checkpoint runs/x/checkpoints/best configs/cub.yaml`.
    #[arg(last = true, value_name = "ARGS")]
    pub worker_args: Vec<String>,
}

impl Default for Args {
    /// The values of an empty command line, without looking at the environment.
    fn default() -> Self {
        Args {
            nproc: None,
            gpus: None,
            nnodes: None,
            node_rank: None,
            master_addr: None,
            master_port: None,
            run_dir: None,
            resume: false,
            max_restarts: 0,
            worker_args: Vec::new(),
            worker: None,
            join_timeout: DEFAULT_JOIN_TIMEOUT_S,
            config: None,
            overrides: Vec::new(),
        }
    }
}

/// What parsing the command line came to: arguments to act on, or text clap already
/// printed (help, version) with the status to exit with.
pub enum Parsed {
    /// Arguments to act on (boxed: far larger than the other variants).
    Run(Box<Args>),
    /// Help or version was printed; exit with this status.
    Done(u8),
    /// A usage mistake, as one line without the `hist-launch: error:` prefix.
    Invalid(String),
}

/// Parses `std::env::args`, turning clap's multi-line usage errors into one line so that
/// every launcher error looks alike to people and to scripts.
pub fn parse() -> Parsed {
    parse_from(std::env::args_os())
}

/// As [`parse`], from an explicit argument list (the first item is the program name).
pub fn parse_from<I, T>(argv: I) -> Parsed
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    match Args::try_parse_from(argv) {
        Ok(args) => Parsed::Run(Box::new(args)),
        Err(err) => match err.kind() {
            ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                let _ = err.print();
                Parsed::Done(0)
            }
            _ => Parsed::Invalid(first_line(&err.render().to_string())),
        },
    }
}

/// clap renders "error: <what>\n\nUsage: ...\n\nFor more information, try '--help'."; the
/// first line is the part worth keeping, and the pointer to --help goes on the same line.
fn first_line(rendered: &str) -> String {
    let line = rendered.lines().next().unwrap_or("invalid command line").trim();
    let line = line.strip_prefix("error:").unwrap_or(line).trim();
    format!("{line} (see hist-launch --help)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(argv: &[&str]) -> String {
        match parse_from(std::iter::once("hist-launch").chain(argv.iter().copied())) {
            Parsed::Invalid(msg) => msg,
            Parsed::Run(a) => panic!("parsed: {a:?}"),
            Parsed::Done(_) => panic!("printed help"),
        }
    }

    #[test]
    fn usage_errors_are_one_line() {
        let msg = invalid(&["--nproc", "2", "--gpus", "2"]);
        assert!(msg.contains("--nproc") && msg.contains("--gpus"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
        let msg = invalid(&["--nproc", "two"]);
        assert!(msg.contains("two"), "{msg}");
        assert!(!msg.starts_with("error"), "{msg}");
    }

    #[test]
    fn repeated_overrides_and_config_are_kept_in_order() {
        let Parsed::Run(a) = parse_from(["hist-launch", "c.yaml", "--set", "a=1", "--set", "b=2"]) else {
            panic!("should parse")
        };
        assert_eq!(a.config, Some(PathBuf::from("c.yaml")));
        assert_eq!(a.overrides, ["a=1", "b=2"]);
    }
}
