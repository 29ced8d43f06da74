//! What travels on a ring link besides tensor bytes: the per-collective header that
//! lets each rank check its predecessor called the same collective, the peers' identities
//! used in error messages, and the translation of socket errors into one-line
//! [`HistError::Dist`] messages.
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use crate::error::{HistError, Result};

/// Marks the start of a collective's header ("HRNG").
const HEADER_MAGIC: u32 = 0x4852_4e47;
/// Bytes of the header before the dimensions.
const HEADER_FIXED: usize = 20;
/// Tensors of more dimensions than this are refused rather than encoded.
const MAX_DIMS: usize = 64;

/// Which collective a header announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OpCode {
    AllReduce = 1,
    AllGather = 2,
    Broadcast = 3,
    Barrier = 4,
}

impl OpCode {
    fn from_u8(v: u8) -> Option<OpCode> {
        Some(match v {
            1 => OpCode::AllReduce,
            2 => OpCode::AllGather,
            3 => OpCode::Broadcast,
            4 => OpCode::Barrier,
            _ => return None,
        })
    }

    /// The name used in error messages.
    pub(super) fn name(self) -> &'static str {
        match self {
            OpCode::AllReduce => "all_reduce",
            OpCode::AllGather => "all_gather",
            OpCode::Broadcast => "broadcast",
            OpCode::Barrier => "barrier",
        }
    }
}

/// Everything every rank must agree on for one collective. Sent to the next rank before
/// the data, so a rank that called a different collective (or the same one on another
/// shape, or one call more or fewer) is caught at once instead of corrupting data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Header {
    /// Collective counter: equal on every rank when they call collectives in lockstep.
    pub seq: u64,
    pub op: OpCode,
    /// A dtype code (see the caller's mapping); 0 where the op has no tensor.
    pub dtype: u8,
    /// Reduce op for all_reduce, root for broadcast, 0 otherwise.
    pub arg: u32,
    pub shape: Vec<i64>,
    /// Printable dtype name, for messages only (not sent).
    pub dtype_name: &'static str,
}

impl Header {
    /// The wire form: magic, seq, op, dtype, ndim, padding, arg, then the dimensions.
    pub(super) fn encode(&self) -> Result<Vec<u8>> {
        if self.shape.len() > MAX_DIMS {
            return Err(HistError::Dist(format!(
                "{} of a {}-dimensional tensor: at most {MAX_DIMS} dimensions are supported",
                self.op.name(),
                self.shape.len()
            )));
        }
        let mut out = Vec::with_capacity(HEADER_FIXED + 8 * self.shape.len());
        out.extend_from_slice(&HEADER_MAGIC.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&[self.op as u8, self.dtype, self.shape.len() as u8, 0]);
        out.extend_from_slice(&self.arg.to_le_bytes());
        for d in &self.shape {
            out.extend_from_slice(&d.to_le_bytes());
        }
        Ok(out)
    }

    /// Reads a header from `link`. The result only has raw codes; `describe_wire` names them.
    pub(super) fn read_from(link: &Link, ctx: &OpContext) -> Result<WireHeader> {
        let mut fixed = [0u8; HEADER_FIXED];
        link.read_exact(&mut fixed, ctx)?;
        let magic = u32::from_le_bytes([fixed[0], fixed[1], fixed[2], fixed[3]]);
        if magic != HEADER_MAGIC {
            return Err(HistError::Dist(format!(
                "rank {} sent garbage instead of a collective header during {}; the ring is out of step",
                link.peer, ctx
            )));
        }
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&fixed[4..12]);
        let ndim = fixed[14] as usize;
        let arg = u32::from_le_bytes([fixed[16], fixed[17], fixed[18], fixed[19]]);
        let mut dims = vec![0u8; 8 * ndim];
        link.read_exact(&mut dims, ctx)?;
        let shape = dims
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                i64::from_le_bytes(b)
            })
            .collect();
        Ok(WireHeader { seq: u64::from_le_bytes(seq), op: fixed[12], dtype: fixed[13], arg, shape })
    }

    /// Errors unless `theirs` (from the previous rank) matches this rank's header.
    pub(super) fn check_matches(
        &self,
        theirs: &WireHeader,
        peer: &Peer,
        dtype_name: fn(u8) -> &'static str,
    ) -> Result<()> {
        let same = theirs.seq == self.seq
            && theirs.op == self.op as u8
            && theirs.dtype == self.dtype
            && theirs.arg == self.arg
            && theirs.shape == self.shape;
        if same {
            return Ok(());
        }
        let their_op = OpCode::from_u8(theirs.op).map_or("an unknown collective", OpCode::name);
        Err(HistError::Dist(format!(
            "rank {peer} called {their_op}{} on {} {:?} as collective #{} while this rank called {}{} on {} {:?} as #{}; \
             every rank must call the same collectives in the same order with the same shapes and dtypes",
            arg_text(theirs.op, theirs.arg),
            dtype_name(theirs.dtype),
            theirs.shape,
            theirs.seq,
            self.op.name(),
            arg_text(self.op as u8, self.arg),
            self.dtype_name,
            self.shape,
            self.seq
        )))
    }
}

/// "(root 2)" or "(avg)": the argument of a collective, for messages.
fn arg_text(op: u8, arg: u32) -> String {
    match OpCode::from_u8(op) {
        Some(OpCode::AllReduce) => format!("({})", if arg == 0 { "sum" } else { "avg" }),
        Some(OpCode::Broadcast) => format!("(root {arg})"),
        _ => String::new(),
    }
}

/// A header as received, before it is compared with ours.
#[derive(Debug)]
pub(super) struct WireHeader {
    seq: u64,
    op: u8,
    dtype: u8,
    arg: u32,
    shape: Vec<i64>,
}

/// A neighbour on the ring, as named in error messages: "2 (10.0.0.5:41234)".
#[derive(Debug, Clone)]
pub(super) struct Peer {
    pub rank: usize,
    /// The address it advertised in the store.
    pub addr: String,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.rank, self.addr)
    }
}

/// Which collective is running, for error messages: "all_reduce (collective #12)".
#[derive(Debug, Clone, Copy)]
pub(super) struct OpContext {
    pub op: OpCode,
    pub seq: u64,
    /// The sockets' read/write timeout, quoted when it fires.
    pub timeout: Option<Duration>,
}

impl fmt::Display for OpContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (collective #{})", self.op.name(), self.seq)
    }
}

/// One TCP connection to a neighbour. The ring uses each link in one direction only
/// (data flows rank → rank+1), so a sender and a receiver thread never share a link's
/// direction; both take `&self` because std implements Read/Write for `&TcpStream`.
#[derive(Debug)]
pub(super) struct Link {
    pub stream: TcpStream,
    pub peer: Peer,
}

impl Link {
    /// Fills `buf` from the peer, or explains in one line why not.
    pub(super) fn read_exact(&self, buf: &mut [u8], ctx: &OpContext) -> Result<()> {
        (&self.stream).read_exact(buf).map_err(|e| self.io_error(e, ctx, false))
    }

    /// Sends all of `buf` to the peer, or explains in one line why not.
    pub(super) fn write_all(&self, buf: &[u8], ctx: &OpContext) -> Result<()> {
        (&self.stream).write_all(buf).map_err(|e| self.io_error(e, ctx, true))
    }

    /// Closes both directions, which also wakes a thread blocked on this socket, so a
    /// failure on one link tears the ring down and the neighbours notice in turn.
    pub(super) fn shut_down(&self) {
        // The socket may already be dead; there is nothing to do about an error here.
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    fn io_error(&self, e: io::Error, ctx: &OpContext, sending: bool) -> HistError {
        let peer = &self.peer;
        let msg = match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted => {
                format!("rank {peer} closed the connection during {ctx}; it probably failed — see its log")
            }
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                let what = if sending { "accepted no data" } else { "sent nothing" };
                let secs = ctx.timeout.map_or(0.0, |t| t.as_secs_f64());
                format!(
                    "rank {peer} {what} for {secs:.1} s during {ctx}; it (or a rank it waits on) is stuck, \
                     or not calling the same collectives as this rank"
                )
            }
            _ => format!(
                "{} rank {peer} failed during {ctx}: {e}",
                if sending { "sending to" } else { "receiving from" }
            ),
        };
        HistError::Dist(msg)
    }
}
