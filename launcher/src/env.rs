//! The environment contract between launcher and worker: torchrun's variables plus the
//! job secret and join timeout. The worker reads exactly these (hist::dist::env), so any
//! tool that sets them can start workers; see docs/launcher.md.
use std::time::Duration;

/// Variable names, in the order they are documented.
pub mod names {
    /// Global rank, 0..WORLD_SIZE.
    pub const RANK: &str = "RANK";
    /// Rank within this node, 0..LOCAL_WORLD_SIZE; GPU workers use cuda:LOCAL_RANK.
    pub const LOCAL_RANK: &str = "LOCAL_RANK";
    /// Ranks in the whole job.
    pub const WORLD_SIZE: &str = "WORLD_SIZE";
    /// Ranks on this node.
    pub const LOCAL_WORLD_SIZE: &str = "LOCAL_WORLD_SIZE";
    /// Host of the rendezvous (node 0).
    pub const MASTER_ADDR: &str = "MASTER_ADDR";
    /// Port of the rendezvous.
    pub const MASTER_PORT: &str = "MASTER_PORT";
    /// Per-job secret every rank presents to the rendezvous.
    pub const HIST_JOB_SECRET: &str = "HIST_JOB_SECRET";
    /// Seconds a rank waits for all others to join.
    pub const HIST_JOIN_TIMEOUT: &str = "HIST_JOIN_TIMEOUT";
}

/// Everything a worker on this node needs to find its place in the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contract {
    /// Ranks in the job: nodes × workers per node.
    pub world_size: usize,
    /// Workers on each node (every node runs the same number).
    pub local_world_size: usize,
    /// This node's index.
    pub node_rank: usize,
    /// Where the rendezvous listens, as workers should dial it.
    pub master_addr: String,
    /// The rendezvous port (the real one, after a free port was picked).
    pub master_port: u16,
    /// The per-job secret.
    pub secret: String,
    /// How long workers wait for each other at the rendezvous.
    pub join_timeout: Duration,
}

impl Contract {
    /// Global rank of this node's `local_rank`-th worker: nodes hold contiguous blocks so
    /// that neighbouring ranks share a machine (cheap rings, and rank 0 sits with the
    /// rendezvous).
    pub fn rank(&self, local_rank: usize) -> usize {
        self.node_rank * self.local_world_size + local_rank
    }

    /// The variables for one worker, names as in [`names`].
    pub fn vars(&self, local_rank: usize) -> Vec<(&'static str, String)> {
        vec![
            (names::RANK, self.rank(local_rank).to_string()),
            (names::LOCAL_RANK, local_rank.to_string()),
            (names::WORLD_SIZE, self.world_size.to_string()),
            (names::LOCAL_WORLD_SIZE, self.local_world_size.to_string()),
            (names::MASTER_ADDR, self.master_addr.clone()),
            (names::MASTER_PORT, self.master_port.to_string()),
            (names::HIST_JOB_SECRET, self.secret.clone()),
            (names::HIST_JOIN_TIMEOUT, self.join_timeout.as_secs().to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_are_contiguous_per_node() {
        let c = Contract {
            world_size: 8,
            local_world_size: 4,
            node_rank: 1,
            master_addr: "gpu01".into(),
            master_port: 29500,
            secret: "s3cret".into(),
            join_timeout: Duration::from_secs(60),
        };
        assert_eq!((0..4).map(|l| c.rank(l)).collect::<Vec<_>>(), [4, 5, 6, 7]);
        let vars = c.vars(2);
        let get = |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("RANK"), Some("6"));
        assert_eq!(get("LOCAL_RANK"), Some("2"));
        assert_eq!(get("WORLD_SIZE"), Some("8"));
        assert_eq!(get("LOCAL_WORLD_SIZE"), Some("4"));
        assert_eq!(get("MASTER_ADDR"), Some("gpu01"));
        assert_eq!(get("MASTER_PORT"), Some("29500"));
        assert_eq!(get("HIST_JOB_SECRET"), Some("s3cret"));
        assert_eq!(get("HIST_JOIN_TIMEOUT"), Some("60"));
    }
}
