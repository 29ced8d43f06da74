//! Wire format: each frame is a 4-byte big-endian body length followed by a JSON body.
//! Reads carry deadlines so a silent or trickling peer costs only its own thread.
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::RejectReason;

/// Version sent in Hello; the server refuses any other.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest frame body accepted from an authenticated peer.
pub const MAX_FRAME_LEN: usize = 1 << 20;
/// Largest frame body accepted before Hello; keeps 64 pending peers under 256 KiB.
pub const MAX_HELLO_LEN: usize = 4096;
/// Largest key or barrier name, in bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// Largest value, in bytes (JSON-encoded it stays well under [`MAX_FRAME_LEN`]).
pub const MAX_VALUE_LEN: usize = 64 * 1024;
/// Longest wait a get or barrier may ask for; longer requests are shortened to this
/// on both sides, so a server thread never waits forever for a peer that vanished.
pub const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

/// Messages a client sends. The first frame of a connection must be `Hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Request {
    Hello {
        version: u32,
        secret: String,
        rank: usize,
        world_size: usize,
    },
    Set {
        key: String,
        value: Vec<u8>,
    },
    Get {
        key: String,
        timeout_ms: u64,
    },
    Barrier {
        name: String,
        timeout_ms: u64,
    },
}

/// Messages the server sends, exactly one per request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Response {
    /// Hello accepted.
    Welcome {
        version: u32,
    },
    /// Hello refused; the server closes the connection after sending this.
    Rejected {
        #[serde(flatten)]
        reason: RejectReason,
    },
    /// Set stored, or barrier passed.
    Ok,
    /// Get found its key.
    Value {
        value: Vec<u8>,
    },
    GetTimeout {
        key: String,
    },
    BarrierTimeout {
        name: String,
        missing: Vec<usize>,
        never_connected: Vec<usize>,
    },
    /// A well-formed request the server will not carry out; the connection stays open.
    Refused {
        message: String,
    },
    /// The server is stopping; the connection closes after this.
    ShuttingDown,
}

/// Why a frame could not be read.
#[derive(Debug)]
pub(crate) enum FrameError {
    /// The peer closed cleanly between frames.
    Closed,
    /// The deadline passed (`started` says whether part of a frame had arrived).
    TimedOut { started: bool },
    /// The declared length is zero or above the limit.
    BadLength(u32),
    /// The body is not a message of the expected kind.
    Malformed(String),
    /// Reset, EOF mid-frame, or another socket error.
    Io(io::Error),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Closed => write!(f, "connection closed"),
            FrameError::TimedOut { started: false } => write!(f, "no reply in time"),
            FrameError::TimedOut { started: true } => write!(f, "reply stalled mid-frame"),
            FrameError::BadLength(n) => {
                write!(f, "frame length {n} is outside 1..={MAX_FRAME_LEN}")
            }
            FrameError::Malformed(m) => write!(f, "malformed message: {m}"),
            FrameError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// Serialises `msg` into one frame, header included, so it goes out in one write.
pub(crate) fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serialising these plain enums to a Vec cannot fail (no maps with non-string
    // keys, no custom Serialize impls), so an empty body is unreachable in practice.
    let body = serde_json::to_vec(msg).unwrap_or_default();
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// Parses a frame body.
pub(crate) fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, FrameError> {
    serde_json::from_slice(body).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Writes one message; the caller sets the socket's write timeout.
pub(crate) fn write_msg<T: Serialize>(stream: &mut TcpStream, msg: &T) -> io::Result<()> {
    stream.write_all(&encode(msg))?;
    stream.flush()
}

/// Reads one message. `idle_deadline` bounds the wait for the first byte (None waits
/// forever); once a frame has begun, the rest must arrive within `frame_timeout`
/// (and before `idle_deadline`), which defeats peers that trickle bytes.
pub(crate) fn read_msg<T: for<'de> Deserialize<'de>>(
    stream: &mut TcpStream,
    idle_deadline: Option<Instant>,
    frame_timeout: Duration,
    max_len: usize,
) -> Result<T, FrameError> {
    let mut header = [0u8; 4];
    let first = read_some(stream, &mut header, idle_deadline)?;
    if first == 0 {
        return Err(FrameError::Closed);
    }
    let frame_deadline = Instant::now().checked_add(frame_timeout);
    let deadline = match (idle_deadline, frame_deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    read_exact_by(stream, &mut header[first..], deadline)?;
    let len = u32::from_be_bytes(header);
    if len == 0 || len as usize > max_len {
        return Err(FrameError::BadLength(len));
    }
    let mut body = vec![0u8; len as usize];
    read_exact_by(stream, &mut body, deadline)?;
    decode(&body)
}

/// Reads at least one byte into `buf` (0 means clean EOF) before `deadline`.
fn read_some(
    stream: &mut TcpStream,
    buf: &mut [u8],
    deadline: Option<Instant>,
) -> Result<usize, FrameError> {
    loop {
        set_timeout(stream, deadline)?;
        match stream.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if is_timeout(&e) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(FrameError::TimedOut { started: false });
                }
            }
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
}

/// Fills the rest of a started frame before `deadline`; EOF here is always mid-frame.
fn read_exact_by(
    stream: &mut TcpStream,
    buf: &mut [u8],
    deadline: Option<Instant>,
) -> Result<(), FrameError> {
    let mut filled = 0;
    while filled < buf.len() {
        match read_some(stream, &mut buf[filled..], deadline) {
            Ok(0) => {
                return Err(FrameError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed mid-frame",
                )))
            }
            Ok(n) => filled += n,
            Err(FrameError::TimedOut { .. }) => return Err(FrameError::TimedOut { started: true }),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Points the socket's read timeout at `deadline`; a zero timeout would mean
/// "block forever" to some platforms, so the remainder is floored at 1 ms.
fn set_timeout(stream: &TcpStream, deadline: Option<Instant>) -> Result<(), FrameError> {
    let timeout = deadline.map(|d| {
        d.saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    });
    stream.set_read_timeout(timeout).map_err(FrameError::Io)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// `Instant::now() + d`, or None (no deadline) when that would overflow.
pub(crate) fn deadline_after(d: Duration) -> Option<Instant> {
    Instant::now().checked_add(d)
}

/// A duration as whole milliseconds for the wire, saturating.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b, _) = listener.accept().unwrap();
        (a, b)
    }

    #[test]
    fn messages_round_trip_through_frames() {
        let (mut a, mut b) = pair();
        let msgs = vec![
            Request::Hello {
                version: 1,
                secret: "s".into(),
                rank: 2,
                world_size: 4,
            },
            Request::Set {
                key: "k".into(),
                value: vec![0, 255, 7],
            },
            Request::Get {
                key: "k".into(),
                timeout_ms: 5,
            },
            Request::Barrier {
                name: "b".into(),
                timeout_ms: u64::MAX,
            },
        ];
        for m in &msgs {
            write_msg(&mut a, m).unwrap();
        }
        for m in &msgs {
            let got: Request = read_msg(
                &mut b,
                deadline_after(Duration::from_secs(5)),
                Duration::from_secs(5),
                MAX_FRAME_LEN,
            )
            .unwrap();
            assert_eq!(&got, m);
        }
        let r = Response::Rejected {
            reason: RejectReason::RankTaken { rank: 3 },
        };
        assert_eq!(decode::<Response>(&encode(&r)[4..]).unwrap(), r);
    }

    #[test]
    fn oversized_length_is_refused_without_allocating() {
        let (mut a, mut b) = pair();
        a.write_all(&u32::MAX.to_be_bytes()).unwrap();
        let got = read_msg::<Request>(&mut b, None, Duration::from_secs(5), MAX_FRAME_LEN);
        assert!(
            matches!(got, Err(FrameError::BadLength(u32::MAX))),
            "{got:?}"
        );
    }

    #[test]
    fn stalled_frame_times_out_and_clean_close_is_distinguished() {
        let (mut a, mut b) = pair();
        a.write_all(&[0, 0, 0, 10, b'{']).unwrap();
        let got = read_msg::<Request>(&mut b, None, Duration::from_millis(100), MAX_FRAME_LEN);
        assert!(
            matches!(got, Err(FrameError::TimedOut { started: true })),
            "{got:?}"
        );
        let (a, mut b) = pair();
        drop(a);
        let got = read_msg::<Request>(&mut b, None, Duration::from_millis(100), MAX_FRAME_LEN);
        assert!(matches!(got, Err(FrameError::Closed)), "{got:?}");
    }

    #[test]
    fn garbage_body_is_malformed() {
        let (mut a, mut b) = pair();
        a.write_all(&[0, 0, 0, 3, b'x', b'y', b'z']).unwrap();
        let got = read_msg::<Request>(&mut b, None, Duration::from_secs(1), MAX_FRAME_LEN);
        assert!(matches!(got, Err(FrameError::Malformed(_))), "{got:?}");
    }
}
