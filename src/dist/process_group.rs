//! Joining the job: the rendezvous (hosted here when started by srun), the join barrier,
//! and the backend that fits the device — CPU ring for CPU ranks, NCCL for CUDA ranks.
use std::net::UdpSocket;

use hist_rendezvous::{Client, Server, ServerHandle, ServerOptions};
use tch::Device;

use super::cpu_ring::CpuRing;
use super::env::DistEnv;
use super::nccl::Nccl;
use super::{Collectives, Solo};
use crate::config::DistBackend;
use crate::error::{HistError, Result};

/// Seconds an unauthenticated connection may take to say hello before it is dropped.
const HANDSHAKE_TIMEOUT_S: u64 = 10;

/// This rank's membership of the job and its collectives backend.
pub struct ProcessGroup {
    /// Where this rank sits.
    pub env: DistEnv,
    collectives: Box<dyn Collectives>,
    // Kept alive for the job's lifetime: the store serves barriers, the server (rank 0
    // under srun) serves everyone.
    _store: Option<Client>,
    _server: Option<ServerHandle>,
}

impl ProcessGroup {
    /// Joins the job described by `env` with tensors on `device`. A world of one needs no
    /// network at all.
    pub fn init(env: DistEnv, device: Device, backend: DistBackend) -> Result<ProcessGroup> {
        if env.world_size == 1 && backend == DistBackend::Auto {
            return Ok(ProcessGroup { env, collectives: Box::new(Solo), _store: None, _server: None });
        }
        let mut env = env;
        // A one-rank job with an explicit backend and no launcher hosts a private rendezvous.
        let private = env.master_port == 0;
        if private && env.secret.is_empty() {
            env.secret = hist_rendezvous::new_secret();
        }
        let server = if env.hosts_rendezvous || private {
            let opts = ServerOptions {
                world_size: env.world_size,
                secret: env.secret.clone(),
                handshake_timeout: std::time::Duration::from_secs(HANDSHAKE_TIMEOUT_S),
            };
            let bind = if private { "127.0.0.1:0".to_string() } else { format!("0.0.0.0:{}", env.master_port) };
            let handle = Server::bind(&bind, opts).map_err(|e| HistError::Dist(e.to_string()))?.start();
            if private {
                env.master_addr = "127.0.0.1".into();
                env.master_port = handle.local_addr().port();
            }
            Some(handle)
        } else {
            None
        };
        let addr = format!("{}:{}", env.master_addr, env.master_port);
        let mut store = Client::connect(&addr, &env.secret, env.rank, env.world_size, env.join_timeout)
            .map_err(|e| HistError::Dist(format!("rank {} cannot join the rendezvous at {addr}: {e}", env.rank)))?;
        store.barrier("join", env.join_timeout).map_err(|e| HistError::Dist(e.to_string()))?;
        let collectives: Box<dyn Collectives> = match (backend, device) {
            (b, Device::Cpu) if b.serves(false) => {
                let host = ring_host(&env)?;
                Box::new(CpuRing::connect(&mut store, &host, env.join_timeout)?)
            }
            (b, Device::Cuda(index)) if b.serves(true) => Box::new(Nccl::new(&mut store, index)?),
            (b, d) => {
                return Err(HistError::Dist(format!(
                    "dist.backend {} cannot work on device {d:?}; use cpu for CPU ranks and nccl for CUDA ranks (or auto)",
                    b.name()
                )))
            }
        };
        Ok(ProcessGroup { env, collectives, _store: Some(store), _server: server })
    }

    /// The collectives of this job.
    pub fn collectives(&mut self) -> &mut dyn Collectives {
        self.collectives.as_mut()
    }
}

/// The address this rank's CPU ring listens on and advertises: `HIST_RING_HOST` when set,
/// else the interface this host uses to reach the rendezvous host. A loopback address is
/// refused when the job spans nodes: peers elsewhere could not connect (node 0's own host
/// name often resolves to 127.0.1.1 on Debian-style systems).
fn ring_host(env: &DistEnv) -> Result<String> {
    if let Ok(host) = std::env::var("HIST_RING_HOST") {
        return Ok(host);
    }
    let host = local_ip_towards(&env.master_addr, env.master_port);
    let is_loopback = |h: &str| h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    // A loopback MASTER_ADDR says every "node" is this machine (a test of a multi-node job).
    if is_loopback(&host) && !is_loopback(&env.master_addr) && env.nodes > 1 {
        return Err(HistError::Dist(format!(
            "rank {} would offer the CPU ring on the loopback address {host} (MASTER_ADDR {} leads to this host's loopback), which other nodes cannot reach; set HIST_RING_HOST to this node's address on the network the nodes share",
            env.rank, env.master_addr
        )));
    }
    Ok(host)
}

/// The address of the interface this host uses to reach the rendezvous host — the one peers
/// can reach us on. A UDP "connect" only consults the routing table; nothing is sent.
fn local_ip_towards(host: &str, port: u16) -> String {
    let probe = UdpSocket::bind("0.0.0.0:0").and_then(|s| s.connect((host, port)).and_then(|_| s.local_addr()));
    match probe {
        Ok(addr) => addr.ip().to_string(),
        Err(_) => "127.0.0.1".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loopback_ring_address_is_refused_only_across_nodes() {
        if std::env::var_os("HIST_RING_HOST").is_some() {
            return; // the override decides, whatever the job's shape
        }
        let one_node = DistEnv { world_size: 2, local_world_size: 2, master_port: 29500, ..DistEnv::single() };
        // srun without --ntasks-per-node: nothing says the job spans nodes.
        let srun_one_node = DistEnv { local_world_size: 1, master_addr: "192.0.2.1".into(), ..one_node.clone() };
        assert!(ring_host(&srun_one_node).is_ok());
        assert_eq!(ring_host(&one_node).expect("one node"), "127.0.0.1");
        // Two "nodes" on this machine, as a loopback MASTER_ADDR says: fine.
        let two_local_nodes = DistEnv { world_size: 4, nodes: 2, ..one_node.clone() };
        assert_eq!(ring_host(&two_local_nodes).expect("local nodes"), "127.0.0.1");
        // A host name that leads to loopback across real nodes cannot work.
        let Ok(host) = std::process::Command::new("hostname").output() else { return };
        let name = String::from_utf8_lossy(&host.stdout).trim().to_string();
        let two_nodes = DistEnv { world_size: 4, nodes: 2, master_addr: name.clone(), ..one_node };
        if local_ip_towards(&name, 29500).starts_with("127.") {
            let err = ring_host(&two_nodes).expect_err("loopback across nodes").to_string();
            assert!(err.contains("HIST_RING_HOST") && err.contains(&name), "{err}");
        }
    }
}
