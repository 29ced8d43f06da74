//! What a SLURM allocation says about the job's shape: node count, this node's index,
//! the first host (where node 0's launcher hosts the rendezvous) and a job-specific port.
use anyhow::{bail, Context, Result};

/// Rendezvous ports under SLURM are `SLURM_PORT_BASE + job id % SLURM_PORT_BASE`, the same
/// rule the worker applies when srun starts it directly, so both agree without talking.
pub const SLURM_PORT_BASE: u64 = 20000;

/// The parts of a SLURM job's environment the launcher uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmJob {
    /// SLURM_JOB_ID.
    pub job_id: u64,
    /// SLURM_NNODES (or SLURM_JOB_NUM_NODES), when set.
    pub nnodes: Option<usize>,
    /// SLURM_NODEID, when set.
    pub node_id: Option<usize>,
    /// SLURM_JOB_NODELIST in its compressed form, when set.
    pub nodelist: Option<String>,
    /// SLURM_LOCALID: set by srun for each task it starts on a node.
    pub local_id: Option<usize>,
}

impl SlurmJob {
    /// Reads the job from the environment through `get`; `None` outside SLURM (no
    /// SLURM_JOB_ID).
    pub fn from_env(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let Some(job_id) = get("SLURM_JOB_ID") else { return Ok(None) };
        let num = |key: &str| -> Result<Option<usize>> {
            match get(key) {
                None => Ok(None),
                Some(v) => v.trim().parse().map(Some).with_context(|| {
                    format!("environment variable {key}={v:?} is not a number; unset it or pass the matching option")
                }),
            }
        };
        let job = SlurmJob {
            job_id: job_id
                .trim()
                .parse()
                .with_context(|| format!("SLURM_JOB_ID={job_id:?} is not a number; pass --master-port explicitly"))?,
            nnodes: match num("SLURM_NNODES")? {
                Some(n) => Some(n),
                None => num("SLURM_JOB_NUM_NODES")?,
            },
            node_id: num("SLURM_NODEID")?,
            nodelist: get("SLURM_JOB_NODELIST").or_else(|| get("SLURM_NODELIST")),
            local_id: num("SLURM_LOCALID")?,
        };
        Ok(Some(job))
    }

    /// The job's rendezvous port.
    pub fn port(&self) -> u16 {
        // The modulus keeps the value below 40000, so it always fits.
        u16::try_from(SLURM_PORT_BASE + self.job_id % SLURM_PORT_BASE).unwrap_or(29500)
    }

    /// The first host of the allocation (scontrol's reading of the node list, else ours).
    pub fn first_host(&self) -> Result<String> {
        let Some(list) = &self.nodelist else {
            bail!("SLURM_JOB_NODELIST is not set; pass --master-addr HOST (the first node of the job)")
        };
        hist_rendezvous::first_slurm_host(list)
            .map_err(|why| anyhow::anyhow!("cannot read SLURM_JOB_NODELIST {list:?} ({why}); pass --master-addr HOST"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn a_malformed_nodelist_is_an_error_naming_the_fix() {
        let job = |list: &str| SlurmJob { job_id: 1, nnodes: None, node_id: None, nodelist: Some(list.to_string()), local_id: None };
        let err = job("gpu[01-03").first_host().expect_err("unbalanced").to_string();
        assert!(err.contains("SLURM_JOB_NODELIST") && err.contains("--master-addr"), "{err}");
    }

    #[test]
    fn reads_the_job_from_the_environment() {
        let env: HashMap<&str, &str> = [
            ("SLURM_JOB_ID", "123456"),
            ("SLURM_JOB_NUM_NODES", "4"),
            ("SLURM_NODEID", "2"),
            ("SLURM_JOB_NODELIST", "gpu[07-10]"),
        ]
        .into();
        let get = |k: &str| env.get(k).map(|v| v.to_string());
        let job = SlurmJob::from_env(&get).expect("valid").expect("in a job");
        assert_eq!((job.nnodes, job.node_id, job.local_id), (Some(4), Some(2), None));
        assert_eq!(job.port(), 20000 + 3456);
        assert_eq!(job.first_host().expect("first host"), "gpu07");

        let none = |_: &str| None;
        assert_eq!(SlurmJob::from_env(&none).expect("no job"), None);
        let junk = |k: &str| (k == "SLURM_JOB_ID").then(|| "abc".to_string());
        let err = SlurmJob::from_env(&junk).expect_err("bad id").to_string();
        assert!(err.contains("SLURM_JOB_ID") && err.contains("--master-port"), "{err}");
    }
}
