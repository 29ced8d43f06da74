//! Turns the command line, the SLURM allocation and the environment into one validated
//! plan for this node, so that every mistake is reported before anything starts.
use std::time::Duration;

use anyhow::{bail, Result};

use crate::args::Args;
use crate::gpus::GpuCount;
use crate::slurm::SlurmJob;
use crate::worker::WorkerCommand;

/// The rendezvous port across nodes when neither --master-port nor SLURM gives one.
pub const DEFAULT_MASTER_PORT: u16 = 29500;

/// What this node's launcher will do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Workers on this node.
    pub per_node: usize,
    /// Nodes in the job.
    pub nnodes: usize,
    /// This node's index.
    pub node_rank: usize,
    /// Host workers dial for the rendezvous.
    pub master_addr: String,
    /// Rendezvous port; 0 means "pick a free one", allowed on a single node only.
    pub master_port: u16,
    /// Address node 0 binds the rendezvous to; `None` on other nodes, which do not host it.
    pub bind_addr: Option<String>,
    /// The per-job secret.
    pub secret: String,
    /// How long workers wait for each other at the rendezvous.
    pub join_timeout: Duration,
    /// What every worker runs.
    pub worker: WorkerCommand,
    /// Restarts allowed after a worker failure.
    pub max_restarts: usize,
}

impl Plan {
    /// Ranks in the job.
    pub fn world_size(&self) -> usize {
        self.nnodes * self.per_node
    }
}

/// Where `resolve` looks things up; tests substitute their own.
pub struct Inputs<'a> {
    /// Environment variables.
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// GPU probe, called only for --gpus.
    pub gpus: &'a dyn Fn() -> GpuCount,
    /// Secret generator, called only when a single-node job has none.
    pub new_secret: &'a dyn Fn() -> String,
}

/// Validates `args` against the environment and produces this node's plan.
pub fn resolve(args: &Args, inputs: &Inputs) -> Result<Plan> {
    let per_node = match (args.nproc, args.gpus) {
        (_, Some(n)) => {
            (inputs.gpus)().check(n)?;
            n
        }
        (Some(0), None) => bail!("--nproc 0 starts no worker; use --nproc N with N >= 1"),
        (Some(n), None) => n,
        (None, None) => 1,
    };
    if args.join_timeout == 0 {
        bail!("--join-timeout 0 gives the ranks no time to meet; use at least 1 (seconds), e.g. the default 300");
    }
    let slurm = SlurmJob::from_env(inputs.env)?;
    let (nnodes, node_rank) = topology(args, slurm.as_ref())?;
    let master_addr = master_addr(args, slurm.as_ref(), nnodes)?;
    let master_port = match args.master_port {
        Some(0) if nnodes > 1 => bail!(
            "--master-port 0 (pick a free port) works on one node only; other nodes must know the port, \
             so pass a fixed one"
        ),
        Some(p) => p,
        // One node: nobody outside needs the port, so take a free one rather than collide
        // with another job on this machine (torchrun's --standalone does the same).
        None if nnodes == 1 => 0,
        None => slurm.as_ref().map_or(DEFAULT_MASTER_PORT, SlurmJob::port),
    };
    let bind_addr = (node_rank == 0).then(|| {
        let loopback = master_addr == "127.0.0.1" || master_addr == "localhost";
        if nnodes == 1 && loopback { "127.0.0.1" } else { "0.0.0.0" }.to_string()
    });
    let secret = match (inputs.env)("HIST_JOB_SECRET").filter(|s| !s.is_empty()) {
        Some(s) => s,
        None if nnodes == 1 => (inputs.new_secret)(),
        None => bail!(
            "--nnodes {nnodes} needs the same HIST_JOB_SECRET on every node; export one before starting \
             hist-launch on each node, e.g. HIST_JOB_SECRET=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \\n')"
        ),
    };
    let gpu = args.gpus.is_some();
    if args.max_restarts > 0 && nnodes > 1 {
        bail!("--max-restarts restarts this node's workers only; across nodes let the scheduler requeue the job (docs/launcher.md)");
    }
    if args.max_restarts > 0 && args.run_dir.is_none() {
        bail!("--max-restarts needs --run-dir, so that every restart resumes the same run from its checkpoints");
    }
    Ok(Plan {
        per_node,
        nnodes,
        node_rank,
        master_addr,
        master_port,
        bind_addr,
        secret,
        join_timeout: Duration::from_secs(args.join_timeout),
        worker: WorkerCommand::from_args(args, gpu)?,
        max_restarts: args.max_restarts,
    })
}

/// Node count and rank: each from its option when given, else from SLURM, else one node.
fn topology(args: &Args, slurm: Option<&SlurmJob>) -> Result<(usize, usize)> {
    if let Some(job) = slurm {
        if args.node_rank.is_none() && job.local_id.is_some_and(|l| l > 0) {
            bail!(
                "srun started several hist-launch processes on this node (SLURM_LOCALID={}); start one per node \
                 with `srun --ntasks-per-node=1 hist-launch ...`",
                job.local_id.unwrap_or_default()
            );
        }
    }
    let nnodes = args.nnodes.or(slurm.and_then(|j| j.nnodes)).unwrap_or(1);
    if nnodes == 0 {
        bail!("--nnodes 0 is not a job; use --nnodes M with M >= 1");
    }
    let node_rank = match (args.node_rank, slurm.and_then(|j| j.node_id)) {
        (Some(r), _) | (None, Some(r)) => r,
        (None, None) if nnodes == 1 => 0,
        (None, None) => bail!("--nnodes {nnodes} needs --node-rank R (this node's index, 0..{})", nnodes - 1),
    };
    if node_rank >= nnodes {
        bail!("--node-rank {node_rank} is not below --nnodes {nnodes}; node ranks run 0..{}", nnodes - 1);
    }
    Ok((nnodes, node_rank))
}

/// Single-node jobs talk over loopback unless told otherwise; multi-node ones need node 0's
/// host, from --master-addr or the first host of the SLURM allocation.
fn master_addr(args: &Args, slurm: Option<&SlurmJob>, nnodes: usize) -> Result<String> {
    if let Some(addr) = &args.master_addr {
        if addr.trim().is_empty() {
            bail!("--master-addr is empty; pass node 0's host name or IP address");
        }
        return Ok(addr.trim().to_string());
    }
    match slurm {
        _ if nnodes == 1 => Ok("127.0.0.1".to_string()),
        Some(job) => job.first_host(),
        None => bail!("--nnodes {nnodes} needs --master-addr HOST (node 0's host name or IP address)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::PathBuf;

    fn plan(args: Args, env: &[(&str, &str)], gpus: usize) -> Result<Plan> {
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let get = move |k: &str| env.get(k).cloned();
        let probe = move || GpuCount { physical: gpus, visible: None };
        let args = Args { worker: Some(PathBuf::from("/bin/sh")), ..args };
        resolve(&args, &Inputs { env: &get, gpus: &probe, new_secret: &|| "fresh".to_string() })
    }

    #[test]
    fn single_node_defaults_use_loopback_a_free_port_and_a_fresh_secret() {
        let p = plan(Args { nproc: Some(4), ..Args::default() }, &[], 0).expect("valid");
        assert_eq!((p.per_node, p.nnodes, p.node_rank, p.world_size()), (4, 1, 0, 4));
        assert_eq!((p.master_addr.as_str(), p.master_port), ("127.0.0.1", 0));
        assert_eq!(p.bind_addr.as_deref(), Some("127.0.0.1"));
        assert_eq!(p.secret, "fresh");
        let p = plan(Args::default(), &[("HIST_JOB_SECRET", "given")], 0).expect("valid");
        assert_eq!((p.per_node, p.secret.as_str()), (1, "given"));
    }

    #[test]
    fn multi_node_needs_an_address_a_rank_and_a_shared_secret() {
        let two = Args { nnodes: Some(2), node_rank: Some(1), ..Args::default() };
        let err = plan(two.clone(), &[("HIST_JOB_SECRET", "s")], 0).expect_err("no addr").to_string();
        assert!(err.contains("--master-addr"), "{err}");
        let two = Args { master_addr: Some("node0".into()), ..two };
        let err = plan(two.clone(), &[], 0).expect_err("no secret").to_string();
        assert!(err.contains("HIST_JOB_SECRET"), "{err}");
        let p = plan(two.clone(), &[("HIST_JOB_SECRET", "s")], 0).expect("valid");
        assert_eq!((p.master_addr.as_str(), p.master_port, p.bind_addr.clone()), ("node0", 29500, None));
        let node0 = Args { node_rank: Some(0), ..two.clone() };
        let p = plan(node0, &[("HIST_JOB_SECRET", "s")], 0).expect("valid");
        assert_eq!(p.bind_addr.as_deref(), Some("0.0.0.0"));
        let err = plan(Args { master_port: Some(0), ..two.clone() }, &[("HIST_JOB_SECRET", "s")], 0)
            .expect_err("port 0")
            .to_string();
        assert!(err.contains("--master-port 0"), "{err}");
        let err =
            plan(Args { node_rank: Some(2), ..two }, &[("HIST_JOB_SECRET", "s")], 0).expect_err("rank").to_string();
        assert!(err.contains("--node-rank 2 is not below --nnodes 2"), "{err}");
    }

    #[test]
    fn slurm_fills_in_what_the_command_line_leaves_out() {
        let env = [
            ("SLURM_JOB_ID", "4242"),
            ("SLURM_NNODES", "3"),
            ("SLURM_NODEID", "2"),
            ("SLURM_JOB_NODELIST", "zz-no-such-host[07-09]"),
            ("HIST_JOB_SECRET", "s"),
        ];
        let p = plan(Args { gpus: Some(2), ..Args::default() }, &env, 2).expect("valid");
        assert_eq!((p.nnodes, p.node_rank, p.world_size()), (3, 2, 6));
        assert_eq!((p.master_addr.as_str(), p.master_port), ("zz-no-such-host07", 24242));
        let p = plan(Args { master_port: Some(1234), master_addr: Some("ib0".into()), ..Args::default() }, &env, 0)
            .expect("valid");
        assert_eq!((p.master_addr.as_str(), p.master_port, p.node_rank), ("ib0", 1234, 2));
        let mut several = env.to_vec();
        several.push(("SLURM_LOCALID", "1"));
        let err = plan(Args::default(), &several, 0).expect_err("two per node").to_string();
        assert!(err.contains("--ntasks-per-node=1"), "{err}");
    }

    #[test]
    fn worker_counts_are_checked() {
        let err = plan(Args { nproc: Some(0), ..Args::default() }, &[], 0).expect_err("0").to_string();
        assert!(err.contains("--nproc 0"), "{err}");
        let err = plan(Args { join_timeout: 0, ..Args::default() }, &[], 0).expect_err("0 s").to_string();
        assert!(err.contains("--join-timeout 0"), "{err}");
        let err = plan(Args { gpus: Some(8), ..Args::default() }, &[], 2).expect_err("8 > 2").to_string();
        assert!(err.starts_with("--gpus 8 but this machine has 2 NVIDIA GPUs"), "{err}");
        let p = plan(Args { gpus: Some(2), ..Args::default() }, &[], 2).expect("valid");
        assert!(p.worker.gpu);
    }
}
