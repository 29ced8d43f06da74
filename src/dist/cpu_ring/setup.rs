//! Building the ring: each rank listens, publishes its address and a random token in the
//! rendezvous store, connects to rank+1 and accepts rank−1. A hello carrying the sender's
//! rank and the receiver's token (readable only through the authenticated store) tells
//! the real neighbour from a stray connection; the reply carries the connector's token,
//! so the check runs both ways.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::wire::{Link, Peer};
use crate::error::{HistError, Result};

/// Opens a hello or its reply.
const HELLO_MAGIC: &[u8; 8] = b"HISTRING";
/// Bumped whenever the wire format changes, so mixed builds fail at connect.
const PROTOCOL_VERSION: u16 = 1;
/// Written in native byte order: tensor bytes travel raw, so peers must share it.
const BYTE_ORDER_MARK: u16 = 0x0102;
const HELLO_LEN: usize = 32;
/// How long an accepted connection may take to say hello before it is dropped as stray.
const HELLO_WAIT: Duration = Duration::from_secs(5);

/// What the ring needs from the job's rendezvous store. Implemented for
/// `hist_rendezvous::Client`; tests may implement it over anything else.
pub trait RingStore {
    /// This process's rank.
    fn rank(&self) -> usize;
    /// Number of ranks in the job.
    fn world_size(&self) -> usize;
    /// Stores `value` under `key` for every rank to read.
    fn set(&mut self, key: &str, value: &[u8]) -> Result<()>;
    /// The value under `key`, waiting up to `timeout` for some rank to set it.
    fn get(&mut self, key: &str, timeout: Duration) -> Result<Vec<u8>>;
    /// Returns once every rank has entered the barrier `name`.
    fn barrier(&mut self, name: &str, timeout: Duration) -> Result<()>;
}

/// The job's rendezvous client is the store every real job uses.
impl RingStore for hist_rendezvous::Client {
    fn rank(&self) -> usize {
        hist_rendezvous::Client::rank(self)
    }
    fn world_size(&self) -> usize {
        hist_rendezvous::Client::world_size(self)
    }
    fn set(&mut self, key: &str, value: &[u8]) -> Result<()> {
        hist_rendezvous::Client::set(self, key, value).map_err(store_error)
    }
    fn get(&mut self, key: &str, timeout: Duration) -> Result<Vec<u8>> {
        hist_rendezvous::Client::get(self, key, timeout).map_err(store_error)
    }
    fn barrier(&mut self, name: &str, timeout: Duration) -> Result<()> {
        hist_rendezvous::Client::barrier(self, name, timeout).map_err(store_error)
    }
}

fn store_error(e: hist_rendezvous::RendezvousError) -> HistError {
    dist(format!("CPU ring setup through the rendezvous store: {e}"))
}

/// The two links of a connected rank.
#[derive(Debug)]
pub(super) struct Links {
    pub next: Link,
    pub prev: Link,
}

fn dist(msg: String) -> HistError {
    HistError::Dist(msg)
}

fn addr_key(rank: usize) -> String {
    format!("cpu_ring/addr/{rank}")
}

/// Time left before `deadline`, or an error naming what we were waiting for.
fn remaining(deadline: Instant, what: &dyn Fn() -> String) -> Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(dist(format!("CPU ring setup timed out {}", what())));
    }
    Ok(left)
}

/// Connects this rank into the ring (world size ≥ 2). See the module doc.
pub(super) fn connect_links<S: RingStore + ?Sized>(store: &mut S, bind_host: &str, timeout: Duration) -> Result<Links> {
    let deadline = Instant::now() + timeout;
    let (rank, world) = (store.rank(), store.world_size());
    let listener = TcpListener::bind((bind_host, 0))
        .map_err(|e| dist(format!("rank {rank}: cannot listen on {bind_host}:0 for the CPU ring: {e}")))?;
    let local = listener.local_addr().map_err(|e| dist(format!("rank {rank}: listener address: {e}")))?;
    if local.ip().is_unspecified() {
        return Err(dist(format!(
            "rank {rank}: the CPU ring's bind host {bind_host} is a wildcard; give an address the other ranks can reach"
        )));
    }
    let advertised = SocketAddr::new(local.ip(), local.port()).to_string();
    let token: u64 = rand::random();
    store.set(&addr_key(rank), format!("{advertised} {token:016x}").as_bytes())?;

    let (next, prev) = ((rank + 1) % world, (rank + world - 1) % world);
    let (next_addr, next_token) = lookup(store, next, deadline)?;
    let (prev_addr, prev_token) = lookup(store, prev, deadline)?;
    let next_peer = Peer { rank: next, addr: next_addr };
    let prev_peer = Peer { rank: prev, addr: prev_addr };

    // Connect first: the peer's listener queues us before it accepts, so every rank can
    // connect, then accept, without waiting on another.
    let next_stream = connect_retry(&next_peer, deadline)?;
    write_hello(&next_stream, rank, world, next_token)
        .map_err(|e| dist(format!("rank {rank}: sending hello to rank {next_peer}: {e}")))?;
    let ids = Ids { rank, world, my_token: token, peer_token: prev_token };
    let prev_stream = accept_peer(&listener, &prev_peer, &ids, deadline, HELLO_WAIT)?;

    next_stream
        .set_read_timeout(Some(remaining(deadline, &|| format!("waiting for rank {next_peer} to accept"))?))
        .map_err(|e| dist(format!("rank {rank}: socket option: {e}")))?;
    let reply = read_hello(&next_stream)
        .map_err(|e| dist(format!("rank {rank}: no reply from rank {next_peer} to the ring hello: {e}")))?;
    if reply.rank != next || reply.token != token || reply.world != world {
        return Err(dist(format!(
            "rank {rank}: {next_peer} answered as rank {} of {} with the wrong token; is another job using this address?",
            reply.rank, reply.world
        )));
    }
    for stream in [&next_stream, &prev_stream] {
        stream
            .set_nodelay(true)
            .and_then(|_| stream.set_read_timeout(None))
            .map_err(|e| dist(format!("rank {rank}: socket option: {e}")))?;
    }
    let left = remaining(deadline, &|| "before the CPU ring's ready barrier".to_string())?;
    store.barrier("cpu_ring/ready", left)?;
    Ok(Links {
        next: Link { stream: next_stream, peer: next_peer },
        prev: Link { stream: prev_stream, peer: prev_peer },
    })
}

/// Reads a rank's "host:port token" entry from the store.
fn lookup<S: RingStore + ?Sized>(store: &mut S, rank: usize, deadline: Instant) -> Result<(String, u64)> {
    let left = remaining(deadline, &|| format!("before reading rank {rank}'s CPU ring address"))?;
    let raw = store.get(&addr_key(rank), left)?;
    let text = String::from_utf8_lossy(&raw);
    let parsed =
        text.split_once(' ').and_then(|(addr, tok)| Some((addr.to_string(), u64::from_str_radix(tok, 16).ok()?)));
    parsed.ok_or_else(|| dist(format!("store key {} holds {text:?}, not \"host:port token\"", addr_key(rank))))
}

fn connect_retry(peer: &Peer, deadline: Instant) -> Result<TcpStream> {
    let addrs: Vec<SocketAddr> =
        peer.addr.to_socket_addrs().map_err(|e| dist(format!("cannot resolve rank {peer}'s address: {e}")))?.collect();
    let mut last_err = String::from("no address");
    loop {
        for addr in &addrs {
            let left = remaining(deadline, &|| format!("connecting to rank {peer}: {last_err}"))?;
            match TcpStream::connect_timeout(addr, left) {
                Ok(s) => return Ok(s),
                Err(e) => last_err = e.to_string(),
            }
        }
        // The listener exists before the address is published, so a refusal means a
        // transient network problem; retry until the deadline.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Who this rank is and the tokens that prove membership, for the hello exchange.
#[derive(Clone, Copy)]
struct Ids {
    rank: usize,
    world: usize,
    /// This rank's token: the predecessor must quote it.
    my_token: u64,
    /// The predecessor's token: quoted back in the reply.
    peer_token: u64,
}

/// Accepts connections until one is the expected predecessor with our token; drops strays,
/// each of which gets `hello_wait` to speak.
fn accept_peer(
    listener: &TcpListener,
    peer: &Peer,
    ids: &Ids,
    deadline: Instant,
    hello_wait: Duration,
) -> Result<TcpStream> {
    let Ids { rank, world, my_token, peer_token } = *ids;
    listener.set_nonblocking(true).map_err(|e| dist(format!("rank {rank}: listener: {e}")))?;
    let mut rejected = Vec::new();
    loop {
        let what = || {
            let strays =
                if rejected.is_empty() { String::new() } else { format!(" (dropped: {})", rejected.join("; ")) };
            format!("waiting for rank {peer} to connect to rank {rank}{strays}")
        };
        let left = remaining(deadline, &what)?;
        let (stream, from) = match listener.accept() {
            Ok(pair) => pair,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            Err(e) => return Err(dist(format!("rank {rank}: accepting rank {peer}: {e}"))),
        };
        let hello = stream
            .set_nonblocking(false)
            .and_then(|_| stream.set_read_timeout(Some(left.min(hello_wait))))
            .and_then(|_| read_hello(&stream));
        match hello {
            Ok(h) if h.rank == peer.rank && h.world == world && h.token == my_token => {
                write_hello(&stream, rank, world, peer_token)
                    .map_err(|e| dist(format!("rank {rank}: answering rank {peer}'s hello: {e}")))?;
                return Ok(stream);
            }
            Ok(h) => rejected.push(format!("{from} claimed rank {} of {} with a wrong token", h.rank, h.world)),
            Err(e) => rejected.push(format!("{from}: {e}")),
        }
    }
}

struct Hello {
    rank: usize,
    world: usize,
    token: u64,
}

fn write_hello(mut stream: &TcpStream, rank: usize, world: usize, token: u64) -> std::io::Result<()> {
    let mut b = [0u8; HELLO_LEN];
    b[..8].copy_from_slice(HELLO_MAGIC);
    b[8..10].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    b[10..12].copy_from_slice(&BYTE_ORDER_MARK.to_ne_bytes());
    b[12..16].copy_from_slice(&(rank as u32).to_le_bytes());
    b[16..20].copy_from_slice(&(world as u32).to_le_bytes());
    b[20..28].copy_from_slice(&token.to_le_bytes());
    stream.write_all(&b)
}

fn read_hello(mut stream: &TcpStream) -> std::io::Result<Hello> {
    let mut b = [0u8; HELLO_LEN];
    stream.read_exact(&mut b)?;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    if &b[..8] != HELLO_MAGIC {
        return Err(bad("not a CPU ring hello"));
    }
    if u16::from_le_bytes([b[8], b[9]]) != PROTOCOL_VERSION {
        return Err(bad("CPU ring protocol version differs (mixed hist builds?)"));
    }
    if b[10..12] != BYTE_ORDER_MARK.to_ne_bytes() {
        return Err(bad("peer has a different byte order"));
    }
    let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize;
    let mut token = [0u8; 8];
    token.copy_from_slice(&b[20..28]);
    Ok(Hello { rank: u32_at(12), world: u32_at(16), token: u64::from_le_bytes(token) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Strays (silent, garbage, wrong token, wrong rank) are dropped; the real peer is taken.
    #[test]
    fn accept_skips_stray_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (my_token, peer_token) = (0x1111, 0x2222);
        let strays = std::thread::spawn(move || {
            let silent = TcpStream::connect(addr).expect("connect");
            let mut garbage = TcpStream::connect(addr).expect("connect");
            garbage.write_all(&[7u8; HELLO_LEN]).expect("write");
            let wrong_token = TcpStream::connect(addr).expect("connect");
            write_hello(&wrong_token, 1, 4, 0x9999).expect("write");
            let wrong_rank = TcpStream::connect(addr).expect("connect");
            write_hello(&wrong_rank, 2, 4, my_token).expect("write");
            let real = TcpStream::connect(addr).expect("connect");
            write_hello(&real, 1, 4, my_token).expect("write");
            let reply = read_hello(&real).expect("reply");
            drop(silent);
            (reply.rank, reply.token)
        });
        let peer = Peer { rank: 1, addr: addr.to_string() };
        let deadline = Instant::now() + Duration::from_secs(20);
        let ids = Ids { rank: 2, world: 4, my_token, peer_token };
        accept_peer(&listener, &peer, &ids, deadline, Duration::from_millis(300)).expect("accept the real peer");
        assert_eq!(strays.join().expect("thread"), (2, peer_token));
    }

    #[test]
    fn wildcard_bind_host_is_refused() {
        struct NoStore;
        impl RingStore for NoStore {
            fn rank(&self) -> usize {
                0
            }
            fn world_size(&self) -> usize {
                2
            }
            fn set(&mut self, _: &str, _: &[u8]) -> Result<()> {
                unreachable!("no address should be published")
            }
            fn get(&mut self, _: &str, _: Duration) -> Result<Vec<u8>> {
                unreachable!()
            }
            fn barrier(&mut self, _: &str, _: Duration) -> Result<()> {
                unreachable!()
            }
        }
        let err = connect_links(&mut NoStore, "0.0.0.0", Duration::from_secs(1)).expect_err("wildcard");
        assert!(err.to_string().contains("wildcard"), "{err}");
    }
}
