//! One server-side connection: the Hello handshake, then requests until the peer
//! leaves. Runs on its own thread, so whatever the peer does (stall, trickle, send
//! garbage, never read) costs only this thread, and every wait here has a deadline.
use std::cell::Cell;
use std::io;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::error::RejectReason;
use crate::protocol::{
    read_msg, write_msg, FrameError, Request, Response, MAX_FRAME_LEN, MAX_HELLO_LEN, MAX_WAIT,
    PROTOCOL_VERSION,
};
use crate::secret::secrets_match;
use crate::server::{PendingSlot, Shared};

/// Bound on sending one response; values are small, so only a peer that stopped
/// reading ever hits it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How a connection ended, for the rejected-connections count.
enum End {
    /// The peer left, or the server is stopping.
    Normal,
    /// Bad secret or Hello, garbage, or silence past a deadline.
    Rejected,
}

/// Serves one accepted connection to completion.
pub(crate) fn serve(
    shared: &Shared,
    mut stream: TcpStream,
    conn: u64,
    accepted: Instant,
    slot: PendingSlot,
) {
    let end = match handshake(shared, &mut stream, conn, accepted) {
        Some(rank) => {
            // Authenticated peers are bounded by the world size, not the pending limit.
            drop(slot);
            let end = serve_requests(shared, &mut stream, rank);
            shared.store.release_rank(rank, conn);
            end
        }
        None => End::Rejected,
    };
    if matches!(end, End::Rejected) && !shared.is_stopping() {
        shared.count_rejected();
    }
}

/// Reads and checks Hello; on success the rank is claimed for `conn`.
fn handshake(
    shared: &Shared,
    stream: &mut TcpStream,
    conn: u64,
    accepted: Instant,
) -> Option<usize> {
    let timeout = shared.opts.handshake_timeout.max(Duration::from_millis(1));
    // The whole Hello, not just each read, must fit in the timeout.
    let deadline = accepted.checked_add(timeout);
    let _ = stream.set_nodelay(true);
    stream.set_write_timeout(Some(timeout)).ok()?;
    let hello = read_msg::<Request>(stream, deadline, timeout, MAX_HELLO_LEN).ok()?;
    let Request::Hello {
        version,
        secret,
        rank,
        world_size,
    } = hello
    else {
        return None;
    };
    let expected_world = shared.opts.world_size;
    // Check the secret before anything that would tell a stranger about the job.
    let refusal = if version != PROTOCOL_VERSION {
        Some(RejectReason::VersionMismatch {
            server: PROTOCOL_VERSION,
            client: version,
        })
    } else if !secrets_match(&shared.opts.secret, &secret) {
        Some(RejectReason::BadSecret)
    } else if world_size != expected_world {
        Some(RejectReason::WorldSizeMismatch {
            server: expected_world,
            client: world_size,
        })
    } else if rank >= expected_world {
        Some(RejectReason::RankOutOfRange {
            rank,
            world_size: expected_world,
        })
    } else if !shared.store.claim_rank(rank, conn) {
        Some(RejectReason::RankTaken { rank })
    } else {
        None
    };
    if let Some(reason) = refusal {
        let _ = write_msg(stream, &Response::Rejected { reason });
        return None;
    }
    if write_msg(
        stream,
        &Response::Welcome {
            version: PROTOCOL_VERSION,
        },
    )
    .is_err()
    {
        shared.store.release_rank(rank, conn);
        return None;
    }
    Some(rank)
}

/// Answers requests in order until the peer closes or misbehaves.
fn serve_requests(shared: &Shared, stream: &mut TcpStream, rank: usize) -> End {
    // Idle time between requests is unbounded (ranks may keep the connection for a
    // whole training run), but a frame, once begun, must finish within this.
    let frame_timeout = shared.opts.handshake_timeout.max(Duration::from_millis(1));
    if stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err() {
        return End::Normal;
    }
    loop {
        let request = match read_msg::<Request>(stream, None, frame_timeout, MAX_FRAME_LEN) {
            Ok(r) => r,
            Err(FrameError::Closed | FrameError::Io(_)) => return End::Normal,
            Err(
                FrameError::BadLength(_) | FrameError::Malformed(_) | FrameError::TimedOut { .. },
            ) => return End::Rejected,
        };
        let wait = |ms: u64| Duration::from_millis(ms).min(MAX_WAIT);
        let departed = Cell::new(false);
        let gone = || {
            departed.set(client_left(stream));
            departed.get()
        };
        let response = match request {
            Request::Set { key, value } => shared.store.set(key, value),
            Request::Get { key, timeout_ms } => shared.store.get(key, wait(timeout_ms), &gone),
            Request::Barrier { name, timeout_ms } => {
                shared.store.barrier(name, rank, wait(timeout_ms), &gone)
            }
            Request::Hello { .. } => Response::Refused {
                message: "Hello sent twice on one connection".into(),
            },
        };
        if departed.get() {
            return End::Normal;
        }
        let last = response == Response::ShuttingDown;
        if write_msg(stream, &response).is_err() || last {
            return End::Normal;
        }
    }
}

/// True once the client has closed or reset its connection. Checked while a request
/// waits, since the thread is not reading then and would otherwise hold the rank until
/// the timeout. A client never sends while waiting, so any readable byte means alive.
fn client_left(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut byte = [0u8; 1];
    let left = match stream.peek(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
        ),
    };
    // A socket stuck in non-blocking mode would make later reads spin; end instead.
    left || stream.set_nonblocking(false).is_err()
}
