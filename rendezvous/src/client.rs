//! The worker side: a blocking connection to the server, one request at a time.
//! Every read has a deadline a little past the operation's own timeout, so a server
//! that dies or vanishes turns into an error rather than a hang.
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{fmt_duration, RejectReason, RendezvousError};
use crate::protocol::{
    deadline_after, millis, read_msg, write_msg, FrameError, Request, Response, MAX_FRAME_LEN,
    MAX_KEY_LEN, MAX_VALUE_LEN, MAX_WAIT, PROTOCOL_VERSION,
};

/// How much longer than the server's own wait the client waits for an answer.
const REPLY_GRACE: Duration = Duration::from_secs(2);
/// Answer bound for requests that do not wait (set, Hello) and for every write.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A rank can look taken for a moment after its previous connection closed (the
/// server has not seen the close yet); retry that for this long before giving up.
const RANK_TAKEN_GRACE: Duration = Duration::from_secs(1);
/// Upper bound on the pause between connection attempts.
const MAX_RETRY_DELAY: Duration = Duration::from_millis(250);

/// A rank's authenticated connection to the rendezvous server.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    addr: String,
    rank: usize,
    world_size: usize,
    /// Set once the connection can no longer be trusted to be in step (a reply timed
    /// out, the server closed); later calls fail at once with this reason.
    broken: Option<String>,
}

/// The outcome of one failed connection attempt.
enum Attempt {
    /// Worth trying again (server not up yet, closed during the handshake).
    Retry(String),
    /// The rank is held by another connection, possibly one that is just closing.
    Taken(RejectReason),
    /// Retrying cannot help (wrong secret, not a rendezvous server).
    Fatal(RendezvousError),
}

impl Client {
    /// Connects to host:port, retrying while the server is not up yet (workers may
    /// start first), up to `timeout`; then Hello.
    pub fn connect(
        addr: &str,
        secret: &str,
        rank: usize,
        world_size: usize,
        timeout: Duration,
    ) -> Result<Client, RendezvousError> {
        if rank >= world_size {
            return Err(RendezvousError::InvalidArgument(format!(
                "rank {rank} is out of range for world size {world_size}"
            )));
        }
        check_address(addr)?;
        let deadline = deadline_after(timeout);
        let hello = Request::Hello {
            version: PROTOCOL_VERSION,
            secret: secret.to_string(),
            rank,
            world_size,
        };
        let mut delay = Duration::from_millis(20);
        let mut taken_since: Option<Instant> = None;
        loop {
            let last_error = match attempt(addr, &hello, deadline) {
                Ok(stream) => {
                    return Ok(Client {
                        stream,
                        addr: addr.to_string(),
                        rank,
                        world_size,
                        broken: None,
                    })
                }
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(why)) => why,
                Err(Attempt::Taken(reason)) => {
                    if taken_since.get_or_insert_with(Instant::now).elapsed() >= RANK_TAKEN_GRACE {
                        return Err(RendezvousError::Rejected {
                            addr: addr.to_string(),
                            rank,
                            reason,
                        });
                    }
                    reason.to_string()
                }
            };
            let left = deadline.map_or(delay, |d| d.saturating_duration_since(Instant::now()));
            if left.is_zero() {
                return Err(RendezvousError::ConnectTimeout {
                    addr: addr.to_string(),
                    timeout,
                    last_error,
                });
            }
            thread::sleep(delay.min(left));
            delay = (delay * 2).min(MAX_RETRY_DELAY);
        }
    }

    /// This client's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The job's world size.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// Stores `value` under `key`, replacing any earlier value, and wakes ranks waiting in `get`.
    pub fn set(&mut self, key: &str, value: &[u8]) -> Result<(), RendezvousError> {
        check_key(key)?;
        if value.len() > MAX_VALUE_LEN {
            return Err(RendezvousError::InvalidArgument(format!(
                "value for '{key}' is {} bytes; the limit is {MAX_VALUE_LEN}",
                value.len()
            )));
        }
        let request = Request::Set {
            key: key.to_string(),
            value: value.to_vec(),
        };
        match self.request(&request, REQUEST_TIMEOUT)? {
            Response::Ok => Ok(()),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Returns the value of `key`, waiting up to `timeout` for some rank to set it.
    pub fn get(&mut self, key: &str, timeout: Duration) -> Result<Vec<u8>, RendezvousError> {
        check_key(key)?;
        let timeout = timeout.min(MAX_WAIT);
        let request = Request::Get {
            key: key.to_string(),
            timeout_ms: millis(timeout),
        };
        match self.request(&request, timeout.saturating_add(REPLY_GRACE))? {
            Response::Value { value } => Ok(value),
            Response::GetTimeout { key } => Err(RendezvousError::GetTimeout { key, timeout }),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Returns once every rank has entered the barrier `name`; a name may be reused,
    /// each use being a new round. On timeout the error names the missing ranks.
    pub fn barrier(&mut self, name: &str, timeout: Duration) -> Result<(), RendezvousError> {
        check_key(name)?;
        let timeout = timeout.min(MAX_WAIT);
        let request = Request::Barrier {
            name: name.to_string(),
            timeout_ms: millis(timeout),
        };
        match self.request(&request, timeout.saturating_add(REPLY_GRACE))? {
            Response::Ok => Ok(()),
            Response::BarrierTimeout {
                name,
                missing,
                never_connected,
            } => Err(RendezvousError::BarrierTimeout {
                name,
                timeout,
                missing,
                never_connected,
            }),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Sends `request` and reads its answer within `reply_within`, turning
    /// connection-level answers into errors.
    fn request(
        &mut self,
        request: &Request,
        reply_within: Duration,
    ) -> Result<Response, RendezvousError> {
        if let Some(why) = &self.broken {
            return Err(self.lost(format!("connection already failed ({why})")));
        }
        let reply = write_msg(&mut self.stream, request)
            .map_err(FrameError::Io)
            .and_then(|()| {
                read_msg(
                    &mut self.stream,
                    deadline_after(reply_within),
                    REQUEST_TIMEOUT,
                    MAX_FRAME_LEN,
                )
            });
        match reply {
            Ok(Response::Refused { message }) => Err(RendezvousError::Refused {
                addr: self.addr.clone(),
                message,
            }),
            Ok(Response::ShuttingDown) => Err(self.fail("the server is shutting down".into())),
            Ok(response) => Ok(response),
            Err(FrameError::Closed) => Err(self.fail("the server closed the connection".into())),
            Err(FrameError::TimedOut { .. }) => {
                Err(self.fail(format!("no answer within {}", fmt_duration(reply_within))))
            }
            Err(FrameError::Io(e)) => Err(self.fail(e.to_string())),
            Err(e @ (FrameError::BadLength(_) | FrameError::Malformed(_))) => {
                self.broken = Some(e.to_string());
                Err(RendezvousError::Protocol {
                    addr: self.addr.clone(),
                    detail: e.to_string(),
                })
            }
        }
    }

    /// Marks the connection unusable and builds the error for `reason`.
    fn fail(&mut self, reason: String) -> RendezvousError {
        self.broken = Some(reason.clone());
        self.lost(reason)
    }

    fn lost(&self, reason: String) -> RendezvousError {
        RendezvousError::ConnectionLost {
            addr: self.addr.clone(),
            reason,
        }
    }

    /// A well-formed answer to a different question: the stream is out of step.
    fn unexpected(&mut self, response: &Response) -> RendezvousError {
        let detail = format!("unexpected answer {response:?}");
        self.broken = Some(detail.clone());
        RendezvousError::Protocol {
            addr: self.addr.clone(),
            detail,
        }
    }
}

/// One resolve + connect + Hello.
fn attempt(addr: &str, hello: &Request, deadline: Option<Instant>) -> Result<TcpStream, Attempt> {
    // Resolution is retried too: a batch system's node names can lag the job start.
    let targets: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| Attempt::Retry(format!("cannot resolve {addr}: {e}")))?
        .collect();
    let mut last = format!("{addr} resolved to no address");
    for target in targets {
        let left = deadline.map_or(Duration::MAX, |d| {
            d.saturating_duration_since(Instant::now())
        });
        let per_try = left.clamp(Duration::from_millis(10), Duration::from_secs(2));
        match TcpStream::connect_timeout(&target, per_try) {
            Ok(stream) => return hello_exchange(stream, addr, hello, deadline),
            Err(e) => last = e.to_string(),
        }
    }
    Err(Attempt::Retry(last))
}

fn hello_exchange(
    mut stream: TcpStream,
    addr: &str,
    hello: &Request,
    deadline: Option<Instant>,
) -> Result<TcpStream, Attempt> {
    let _ = stream.set_nodelay(true);
    stream
        .set_write_timeout(Some(REQUEST_TIMEOUT))
        .map_err(|e| Attempt::Retry(e.to_string()))?;
    write_msg(&mut stream, hello).map_err(|e| Attempt::Retry(format!("sending hello: {e}")))?;
    // Give the answer at least a second even if connecting used up the timeout.
    let floor = deadline_after(Duration::from_secs(1));
    let reply_deadline = match (deadline, floor) {
        (Some(d), Some(f)) => Some(d.max(f)),
        _ => None,
    };
    let protocol = |detail: String| {
        Attempt::Fatal(RendezvousError::Protocol {
            addr: addr.to_string(),
            detail,
        })
    };
    match read_msg::<Response>(&mut stream, reply_deadline, REQUEST_TIMEOUT, MAX_FRAME_LEN) {
        Ok(Response::Welcome { .. }) => Ok(stream),
        Ok(Response::Rejected {
            reason: reason @ RejectReason::RankTaken { .. },
        }) => Err(Attempt::Taken(reason)),
        Ok(Response::Rejected { reason }) => {
            let rank = match hello {
                Request::Hello { rank, .. } => *rank,
                _ => 0,
            };
            Err(Attempt::Fatal(RendezvousError::Rejected {
                addr: addr.to_string(),
                rank,
                reason,
            }))
        }
        Ok(other) => Err(protocol(format!("unexpected answer to hello {other:?}"))),
        // The server drops handshakes beyond its pending limit; that is transient.
        Err(FrameError::Closed | FrameError::Io(_)) => Err(Attempt::Retry(
            "server closed the connection during the handshake".into(),
        )),
        Err(FrameError::TimedOut { .. }) => {
            Err(Attempt::Retry("server did not answer hello".into()))
        }
        Err(e @ (FrameError::BadLength(_) | FrameError::Malformed(_))) => {
            Err(protocol(e.to_string()))
        }
    }
}

/// Rejects addresses that can never work, so they fail now instead of after the timeout.
fn check_address(addr: &str) -> Result<(), RendezvousError> {
    let bad = |reason: &str| RendezvousError::BadAddress {
        addr: addr.to_string(),
        reason: reason.to_string(),
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    if host.is_empty() {
        return Err(bad("no host"));
    }
    match port.parse::<u16>() {
        Ok(0) => Err(bad("port 0 cannot be connected to")),
        Ok(_) => Ok(()),
        Err(_) => Err(bad("the port is not a number from 1 to 65535")),
    }
}

fn check_key(key: &str) -> Result<(), RendezvousError> {
    if key.len() > MAX_KEY_LEN {
        return Err(RendezvousError::InvalidArgument(format!(
            "key or barrier name of {} bytes exceeds the {MAX_KEY_LEN}-byte limit",
            key.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hopeless_addresses_fail_fast() {
        for addr in ["localhost", ":29500", "host:http", "host:0", "host:70000"] {
            let e = Client::connect(addr, "s", 0, 1, Duration::from_secs(30)).unwrap_err();
            assert!(
                matches!(e, RendezvousError::BadAddress { .. }),
                "{addr}: {e}"
            );
        }
        let e = Client::connect("127.0.0.1:1", "s", 2, 2, Duration::from_secs(30)).unwrap_err();
        assert!(
            e.to_string()
                .contains("rank 2 is out of range for world size 2"),
            "{e}"
        );
    }
}
