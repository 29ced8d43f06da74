//! The crate's error type. Every message is one line that names the peer, address,
//! key or ranks involved and, where there is one, the fix.
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Errors raised by the rendezvous server and client.
#[derive(Debug, thiserror::Error)]
pub enum RendezvousError {
    /// The listen address is taken by another process (often a previous job).
    #[error(
        "port {} on {} is already in use; pick another with --master-port",
        port_of(addr),
        host_of(addr)
    )]
    AddrInUse {
        /// The address as given to [`crate::Server::bind`].
        addr: String,
    },

    /// Listening failed for another reason (permission, unknown interface).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address as given to [`crate::Server::bind`].
        addr: String,
        /// The operating system's error.
        source: std::io::Error,
    },

    /// An address that is not `host:port`.
    #[error(
        "invalid rendezvous address '{addr}': {reason}; expected host:port, e.g. 10.0.0.1:29500"
    )]
    BadAddress {
        /// The address as given.
        addr: String,
        /// What is wrong with it.
        reason: String,
    },

    /// An argument that can never work (rank out of range, oversized value).
    #[error("invalid rendezvous request: {0}")]
    InvalidArgument(String),

    /// The server could not be reached before the connect timeout.
    #[error(
        "could not reach the rendezvous server at {addr} within {} (last error: {last_error}); \
         check that the launcher or rank 0 is running and that --master-addr/--master-port match",
        fmt_duration(*timeout)
    )]
    ConnectTimeout {
        /// The server address.
        addr: String,
        /// How long the client kept trying.
        timeout: Duration,
        /// The last failure seen, e.g. "connection refused".
        last_error: String,
    },

    /// The server refused this client's Hello.
    #[error("rendezvous server at {addr} rejected rank {rank}: {reason}")]
    Rejected {
        /// The server address.
        addr: String,
        /// The rank this client claimed.
        rank: usize,
        /// Why the server refused.
        reason: RejectReason,
    },

    /// `get` waited for a key that no rank set in time.
    #[error("key '{key}' was not set by any rank within {}", fmt_duration(*timeout))]
    GetTimeout {
        /// The key waited for.
        key: String,
        /// How long the server waited.
        timeout: Duration,
    },

    /// A barrier that not every rank entered in time.
    #[error(
        "barrier '{name}': {} within {}{}",
        fmt_missing(missing),
        fmt_duration(*timeout),
        fmt_never(never_connected)
    )]
    BarrierTimeout {
        /// The barrier's name.
        name: String,
        /// How long the server waited.
        timeout: Duration,
        /// Ranks that had not entered the barrier, ascending.
        missing: Vec<usize>,
        /// Ranks that never connected to the server at all, ascending.
        never_connected: Vec<usize>,
    },

    /// The server refused one request but the connection stays usable.
    #[error("rendezvous server at {addr} refused the request: {message}")]
    Refused {
        /// The server address.
        addr: String,
        /// The server's explanation, e.g. "value of 70000 bytes exceeds the 65536-byte limit".
        message: String,
    },

    /// The connection broke, the server shut down, or it stopped answering.
    #[error("lost the rendezvous server at {addr}: {reason}; did the launcher or rank 0 exit?")]
    ConnectionLost {
        /// The server address.
        addr: String,
        /// What happened, e.g. "server closed the connection".
        reason: String,
    },

    /// The peer does not speak this protocol (another service on that port?).
    #[error("{addr} is not a compatible hist rendezvous server: {detail}; is another service on that port?")]
    Protocol {
        /// The peer's address.
        addr: String,
        /// What was wrong with its answer.
        detail: String,
    },
}

/// Why the server refused a Hello; sent to the client inside the error frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum RejectReason {
    /// The secret differs from the server's.
    #[error("wrong job secret; every rank must use the secret the launcher generated")]
    BadSecret,
    /// Client and server were built from incompatible versions.
    #[error("protocol version {client} is not the server's version {server}; use the same hist build on every node")]
    VersionMismatch {
        /// The server's protocol version.
        server: u32,
        /// The client's protocol version.
        client: u32,
    },
    /// The client believes in a different world size.
    #[error("world size {client} does not match the server's {server}; every rank must be started with the same world size")]
    WorldSizeMismatch {
        /// The server's world size.
        server: usize,
        /// The client's world size.
        client: usize,
    },
    /// The rank is not below the world size.
    #[error("rank {rank} is out of range for world size {world_size}")]
    RankOutOfRange {
        /// The claimed rank.
        rank: usize,
        /// The server's world size.
        world_size: usize,
    },
    /// Another live connection already holds this rank.
    #[error("rank {rank} is already connected; two workers were given the same rank")]
    RankTaken {
        /// The claimed rank.
        rank: usize,
    },
}

/// "1.5 s", "300 ms", "60 s": short and exact enough for one-line messages.
pub(crate) fn fmt_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// "rank 2 did not join" / "ranks 2, 3 did not join".
fn fmt_missing(ranks: &[usize]) -> String {
    match ranks {
        [] => "every rank arrived but the barrier did not complete".to_string(),
        [one] => format!("rank {one} did not join"),
        many => format!("ranks {} did not join", fmt_list(many)),
    }
}

/// " (never connected: 3)" or nothing when every rank connected at some point.
fn fmt_never(ranks: &[usize]) -> String {
    if ranks.is_empty() {
        String::new()
    } else {
        format!(" (never connected: {})", fmt_list(ranks))
    }
}

fn fmt_list(ranks: &[usize]) -> String {
    ranks
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The port of "host:port", or the whole string when it has no port.
fn port_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(_, port)| port)
}

/// The host of "host:port"; an empty host means every interface.
fn host_of(addr: &str) -> &str {
    match addr.rsplit_once(':') {
        Some(("", _)) => "0.0.0.0",
        Some((host, _)) => host,
        None => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addr_in_use_names_port_host_and_flag() {
        let e = RendezvousError::AddrInUse {
            addr: "0.0.0.0:29500".into(),
        };
        assert_eq!(
            e.to_string(),
            "port 29500 on 0.0.0.0 is already in use; pick another with --master-port"
        );
        let e = RendezvousError::AddrInUse {
            addr: "[::1]:7".into(),
        };
        assert_eq!(
            e.to_string(),
            "port 7 on [::1] is already in use; pick another with --master-port"
        );
    }

    #[test]
    fn barrier_timeout_lists_missing_and_never_connected() {
        let e = RendezvousError::BarrierTimeout {
            name: "init".into(),
            timeout: Duration::from_secs(60),
            missing: vec![2, 3],
            never_connected: vec![3],
        };
        assert_eq!(
            e.to_string(),
            "barrier 'init': ranks 2, 3 did not join within 60 s (never connected: 3)"
        );
        let e = RendezvousError::BarrierTimeout {
            name: "b".into(),
            timeout: Duration::from_millis(300),
            missing: vec![1],
            never_connected: vec![],
        };
        assert_eq!(
            e.to_string(),
            "barrier 'b': rank 1 did not join within 300 ms"
        );
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(fmt_duration(Duration::from_secs(2)), "2 s");
        assert_eq!(fmt_duration(Duration::from_millis(5)), "5 ms");
    }
}
