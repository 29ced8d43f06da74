//! The environment contract between a launcher and a worker: torchrun's variables, or
//! SLURM's when the worker is started directly by `srun`.
use std::collections::HashMap;
use std::time::Duration;

use crate::error::{HistError, Result};

/// Seconds a rank waits for all others to join, unless HIST_JOIN_TIMEOUT says otherwise.
pub const DEFAULT_JOIN_TIMEOUT_S: u64 = 300;
/// Port of the rendezvous under srun when MASTER_PORT is not set: 20000 + job id mod 20000.
const SLURM_PORT_BASE: u64 = 20000;

/// Where this worker sits in the job and how to reach the rendezvous.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistEnv {
    /// Global rank.
    pub rank: usize,
    /// Rank within this node (selects the GPU).
    pub local_rank: usize,
    /// Number of ranks in the job.
    pub world_size: usize,
    /// Ranks on this node.
    pub local_world_size: usize,
    /// Nodes the job spans, as far as the environment says (1 when it does not).
    pub nodes: usize,
    /// Rendezvous host.
    pub master_addr: String,
    /// Rendezvous port.
    pub master_port: u16,
    /// Per-job secret presented to the rendezvous.
    pub secret: String,
    /// True when this process must host the rendezvous itself (rank 0 under srun).
    pub hosts_rendezvous: bool,
    /// How long to wait for every rank to join.
    pub join_timeout: Duration,
}

impl DistEnv {
    /// A single process with no launcher: world size 1.
    pub fn single() -> Self {
        DistEnv {
            rank: 0,
            local_rank: 0,
            world_size: 1,
            local_world_size: 1,
            nodes: 1,
            master_addr: "127.0.0.1".into(),
            master_port: 0,
            secret: String::new(),
            hosts_rendezvous: false,
            join_timeout: Duration::from_secs(DEFAULT_JOIN_TIMEOUT_S),
        }
    }

    /// Reads the process environment.
    pub fn from_process_env() -> Result<Self> {
        let vars: HashMap<String, String> = std::env::vars().collect();
        Self::from_vars(&vars)
    }

    /// torchrun's variables if RANK is set; else SLURM's if SLURM_PROCID is set; else a
    /// single process.
    pub fn from_vars(v: &HashMap<String, String>) -> Result<Self> {
        let join_timeout = Duration::from_secs(match v.get("HIST_JOIN_TIMEOUT") {
            Some(s) => parse(s, "HIST_JOIN_TIMEOUT")?,
            None => DEFAULT_JOIN_TIMEOUT_S,
        });
        if v.contains_key("RANK") {
            let get = |k: &str| v.get(k).ok_or_else(|| missing(k, "RANK is set, so the torchrun-style variables are expected"));
            let rank = parse(get("RANK")?, "RANK")?;
            let local_rank = parse(get("LOCAL_RANK")?, "LOCAL_RANK")?;
            let world_size: usize = parse(get("WORLD_SIZE")?, "WORLD_SIZE")?;
            let local: Option<usize> = v.get("LOCAL_WORLD_SIZE").map(|s| parse(s, "LOCAL_WORLD_SIZE")).transpose()?;
            let env = DistEnv {
                rank,
                local_rank,
                world_size,
                local_world_size: local.unwrap_or(1),
                // Every node runs LOCAL_WORLD_SIZE ranks (the launcher's contract).
                nodes: local.map_or(1, |l| world_size.div_ceil(l.max(1))),
                master_addr: get("MASTER_ADDR")?.clone(),
                master_port: parse(get("MASTER_PORT")?, "MASTER_PORT")?,
                secret: v.get("HIST_JOB_SECRET").cloned().unwrap_or_default(),
                hosts_rendezvous: false,
                join_timeout,
            };
            return env.checked();
        }
        if let Some(procid) = v.get("SLURM_PROCID") {
            return Self::from_slurm(v, procid, join_timeout);
        }
        Ok(DistEnv { join_timeout, ..DistEnv::single() })
    }

    fn from_slurm(v: &HashMap<String, String>, procid: &str, join_timeout: Duration) -> Result<Self> {
        let get = |k: &str| v.get(k).ok_or_else(|| missing(k, "SLURM_PROCID is set (started by srun)"));
        let rank: usize = parse(procid, "SLURM_PROCID")?;
        let job_id: u64 = parse(get("SLURM_JOB_ID")?, "SLURM_JOB_ID")?;
        let master_addr = match v.get("MASTER_ADDR") {
            Some(a) => a.clone(),
            None => {
                let list = get("SLURM_JOB_NODELIST")?;
                hist_rendezvous::first_slurm_host(list).map_err(|why| HistError::Dist(format!("cannot read SLURM_JOB_NODELIST {list:?} ({why}); set MASTER_ADDR")))?
            }
        };
        let master_port = match v.get("MASTER_PORT") {
            Some(p) => parse(p, "MASTER_PORT")?,
            None => (SLURM_PORT_BASE + job_id % SLURM_PORT_BASE) as u16,
        };
        let env = DistEnv {
            rank,
            local_rank: parse(get("SLURM_LOCALID")?, "SLURM_LOCALID")?,
            world_size: parse(get("SLURM_NTASKS")?, "SLURM_NTASKS")?,
            // The step's task layout ("2(x3)": 2 tasks on each of 3 nodes; "3,2" uneven) is
            // always there; SLURM_NTASKS_PER_NODE only with --ntasks-per-node.
            local_world_size: ["SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE"]
                .iter()
                .find_map(|k| v.get(*k))
                .and_then(|layout| tasks_on_node(layout, v.get("SLURM_NODEID").and_then(|n| n.trim().parse().ok()).unwrap_or(0)))
                .unwrap_or(1),
            nodes: match ["SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES"].iter().find_map(|k| v.get(*k).map(|s| (*k, s))) {
                Some((key, s)) => parse(s, key)?,
                None => 1,
            },
            master_addr,
            master_port,
            // srun starts every task with the same environment, so a secret exported by the
            // sbatch script reaches all ranks. There is no fallback: anything derived from
            // the job (its id) is readable by every user of the cluster.
            secret: v.get("HIST_JOB_SECRET").cloned().unwrap_or_default(),
            hosts_rendezvous: rank == 0,
            join_timeout,
        };
        env.checked()
    }

    fn checked(self) -> Result<Self> {
        if self.world_size == 0 || self.rank >= self.world_size {
            return Err(HistError::Dist(format!(
                "RANK {} is not below WORLD_SIZE {}; the launcher's environment is inconsistent",
                self.rank, self.world_size
            )));
        }
        if self.world_size > 1 && self.secret.is_empty() {
            return Err(missing(
                "HIST_JOB_SECRET",
                "a multi-rank job needs the per-job secret (hist-launch sets it; under srun export one in the sbatch script, as slurm/srun_tasks.sbatch does)",
            ));
        }
        Ok(self)
    }
}

/// The tasks on node `node` of a SLURM task layout such as `2(x3),1`; `None` when the
/// layout cannot be read or has no such node.
fn tasks_on_node(layout: &str, node: usize) -> Option<usize> {
    let mut first_node = 0;
    for group in layout.split(',') {
        let (tasks, repeat) = match group.trim().split_once("(x") {
            Some((tasks, rest)) => (tasks, rest.strip_suffix(')')?.parse::<usize>().ok()?),
            None => (group.trim(), 1),
        };
        if node < first_node + repeat {
            return tasks.parse().ok();
        }
        first_node += repeat;
    }
    None
}

fn missing(key: &str, why: &str) -> HistError {
    HistError::Dist(format!("environment variable {key} is not set; {why}"))
}

fn parse<T: std::str::FromStr>(s: &str, key: &str) -> Result<T> {
    s.trim().parse().map_err(|_| HistError::Dist(format!("environment variable {key}={s:?} is not a valid number")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn torchrun_variables() {
        let e = DistEnv::from_vars(&vars(&[
            ("RANK", "3"), ("LOCAL_RANK", "1"), ("WORLD_SIZE", "4"), ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "node0"), ("MASTER_PORT", "29500"), ("HIST_JOB_SECRET", "s"), ("HIST_JOIN_TIMEOUT", "7"),
        ]))
        .expect("env");
        assert_eq!((e.rank, e.local_rank, e.world_size, e.local_world_size, e.nodes), (3, 1, 4, 2, 2));
        assert_eq!((e.master_addr.as_str(), e.master_port), ("node0", 29500));
        assert_eq!(e.join_timeout, Duration::from_secs(7));
        assert!(!e.hosts_rendezvous);
    }

    #[test]
    fn slurm_variables() {
        let e = DistEnv::from_vars(&vars(&[
            ("SLURM_PROCID", "0"), ("SLURM_LOCALID", "0"), ("SLURM_NTASKS", "8"), ("SLURM_JOB_ID", "123456"),
            ("SLURM_JOB_NODELIST", "gpu[07-08]"), ("SLURM_NTASKS_PER_NODE", "4(x2)"), ("HIST_JOB_SECRET", "s"),
        ]))
        .expect("env");
        assert_eq!((e.rank, e.world_size, e.local_world_size), (0, 8, 4));
        assert_eq!(e.master_addr, "gpu07");
        assert_eq!(e.master_port, 20000 + 3456);
        assert!(e.hosts_rendezvous);
        assert_eq!(e.secret, "s");
        // Without --ntasks-per-node srun still gives the step's layout.
        let e = DistEnv::from_vars(&vars(&[
            ("SLURM_PROCID", "4"), ("SLURM_LOCALID", "1"), ("SLURM_NTASKS", "6"), ("SLURM_JOB_ID", "9"), ("MASTER_ADDR", "h"),
            ("SLURM_STEP_TASKS_PER_NODE", "3(x2)"), ("SLURM_STEP_NUM_NODES", "2"), ("HIST_JOB_SECRET", "s"),
        ]))
        .expect("env");
        assert_eq!((e.local_world_size, e.nodes), (3, 2));
        for (layout, node, tasks) in [("3,2", 1, Some(2)), ("1,2(x3)", 3, Some(2)), ("4(x2)", 1, Some(4)), ("4(x2)", 2, None), ("x", 0, None)] {
            assert_eq!(tasks_on_node(layout, node), tasks, "{layout} node {node}");
        }
    }

    #[test]
    fn slurm_needs_an_exported_secret_and_reads_any_nodelist() {
        let base = [
            ("SLURM_PROCID", "1"), ("SLURM_LOCALID", "1"), ("SLURM_NTASKS", "4"), ("SLURM_JOB_ID", "77"),
            ("SLURM_JOB_NODELIST", "n[3-4]-ib,login"),
        ];
        let e = DistEnv::from_vars(&vars(&base)).expect_err("no secret");
        assert!(e.to_string().contains("HIST_JOB_SECRET") && e.to_string().contains("sbatch"), "{e}");
        let e = DistEnv::from_vars(&vars(&[base.as_slice(), &[("HIST_JOB_SECRET", "s")]].concat())).expect("env");
        assert_eq!(e.master_addr, "n3-ib");
        let bad = DistEnv::from_vars(&vars(&[("SLURM_JOB_NODELIST", "n[3-"), ("HIST_JOB_SECRET", "s"), ("SLURM_PROCID", "1"), ("SLURM_LOCALID", "1"), ("SLURM_NTASKS", "4"), ("SLURM_JOB_ID", "77")]))
            .expect_err("bad list");
        assert!(bad.to_string().contains("MASTER_ADDR"), "{bad}");
    }

    #[test]
    fn inconsistent_or_incomplete_environments_are_errors() {
        let e = DistEnv::from_vars(&vars(&[("RANK", "0")])).expect_err("incomplete");
        assert!(e.to_string().contains("LOCAL_RANK"), "{e}");
        let e = DistEnv::from_vars(&vars(&[
            ("RANK", "4"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "4"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "1"), ("HIST_JOB_SECRET", "s"),
        ]))
        .expect_err("rank too big");
        assert!(e.to_string().contains("not below WORLD_SIZE"), "{e}");
        assert_eq!(DistEnv::from_vars(&HashMap::new()).expect("single").world_size, 1);
    }
}
