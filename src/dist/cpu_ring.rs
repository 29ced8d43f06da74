//! Ring collectives over TCP between CPU ranks.
//!
//! Rank r sends only to r+1 and receives only from r−1 (mod W), over one TCP connection
//! each way. all_reduce is a ring reduce-scatter followed by a ring all-gather over W
//! segments; all_gather and broadcast pass chunks along the ring. Every transfer is cut
//! into chunks that are forwarded as soon as they land, and a sender thread runs beside
//! the receiving caller, so bandwidth is ~2(W−1)/W·n bytes per rank for all_reduce and
//! large messages never deadlock (see `engine`).
//!
//! Determinism: segment k of an all_reduce is summed in ring order starting at rank k,
//! `((x_k + x_{k+1}) + x_{k+2}) + … + x_{k−1}`, on one rank, then copied verbatim to the
//! others, so every rank ends with bit-identical values and repeated runs agree.
//! [`all_reduce_segment`] gives the segment boundaries, for reproducing the order.
//!
//! Failure: any error shuts this rank's sockets, so its neighbours fail at once and the
//! failure travels round the ring; no rank hangs on a dead peer. A failed ring stays
//! broken: every later call returns an error (a ring cannot resynchronise).
mod buffer;
mod engine;
mod plans;
mod setup;
mod wire;

use std::time::Duration;

use tch::{Device, Kind, Tensor};

use self::buffer::{RawBuf, Reducer};
use self::engine::{Collective, Plan};
pub use self::plans::all_reduce_segment;
use self::setup::Links;
pub use self::setup::RingStore;
use self::wire::{Header, OpCode, OpContext};
use super::collectives::{Collectives, ReduceOp};
use crate::error::{HistError, Result};

/// Default size of the pieces transfers are cut into.
pub const DEFAULT_CHUNK_BYTES: usize = 256 << 10;
/// Default longest wait for a peer inside a collective (as torch.distributed's default).
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The TCP ring backend of [`Collectives`] for CPU tensors. One per process; `Send` but
/// used from one thread at a time (`&mut self`).
///
/// Tensors: CPU only. all_reduce takes contiguous f32/f64, broadcast contiguous tensors of
/// any dtype; both work in place on the tensor's memory (no copies) and refuse
/// non-contiguous tensors rather than copying back. all_gather takes any dtype and
/// layout and returns a new contiguous tensor (with one rank: the input itself, as `Solo`). Memory is accessed directly, outside
/// autograd: no history is recorded and version counters are not bumped, and no other
/// thread may use a tensor sharing the storage during the call.
#[derive(Debug)]
pub struct CpuRing {
    rank: usize,
    world: usize,
    links: Option<Links>,
    seq: u64,
    broken: Option<String>,
    chunk_bytes: usize,
    op_timeout: Option<Duration>,
}

impl CpuRing {
    /// Joins the ring: listens on `bind_host`:0 (an address the other ranks can reach),
    /// publishes it under `cpu_ring/addr/{rank}` in `store`, connects to rank+1, accepts
    /// rank−1 (checking its hello against a token from the store), then waits on a store
    /// barrier. `timeout` bounds the whole setup. With one rank no socket is opened.
    /// Use once per store: a second ring on the same store would read the first's keys.
    pub fn connect<S: RingStore + ?Sized>(store: &mut S, bind_host: &str, timeout: Duration) -> Result<CpuRing> {
        let (rank, world) = (store.rank(), store.world_size());
        if world == 0 || rank >= world {
            return Err(HistError::Dist(format!("CPU ring: rank {rank} is outside world size {world}")));
        }
        let links = if world == 1 { None } else { Some(setup::connect_links(store, bind_host, timeout)?) };
        let mut ring =
            CpuRing { rank, world, links, seq: 0, broken: None, chunk_bytes: DEFAULT_CHUNK_BYTES, op_timeout: None };
        ring.set_op_timeout(Some(DEFAULT_OP_TIMEOUT))?;
        Ok(ring)
    }

    /// Sets how long a collective waits for a peer to send or accept data before failing
    /// (`None` or zero: forever; default [`DEFAULT_OP_TIMEOUT`]). It must exceed the longest time ranks may drift apart between
    /// collectives, e.g. an evaluation that only rank 0 runs.
    pub fn set_op_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
        let timeout = timeout.filter(|t| !t.is_zero());
        if let Some(links) = &self.links {
            for link in [&links.next, &links.prev] {
                link.stream
                    .set_read_timeout(timeout)
                    .and_then(|_| link.stream.set_write_timeout(timeout))
                    .map_err(|e| HistError::Dist(format!("socket timeout for rank {}: {e}", link.peer)))?;
            }
        }
        self.op_timeout = timeout;
        Ok(())
    }

    /// Sets the transfer chunk size (rounded down to a multiple of 8, at least 8 bytes).
    /// It only sets this rank's pipelining granularity (the byte stream is the same),
    /// so ranks need not agree. Mainly for benchmarks.
    pub fn set_chunk_bytes(&mut self, bytes: usize) {
        self.chunk_bytes = bytes.max(8) & !7;
    }

    /// Starts a collective: refuses on a broken ring and numbers the call.
    fn begin(&mut self, op: OpCode) -> Result<OpContext> {
        if let Some(why) = &self.broken {
            return Err(HistError::Dist(format!("the CPU ring is unusable after an earlier failure ({why})")));
        }
        self.seq += 1;
        Ok(OpContext { op, seq: self.seq, timeout: self.op_timeout })
    }

    /// Runs `plan` on `buf`, or breaks the ring with the error.
    fn run(
        &mut self,
        ctx: OpContext,
        header: Header,
        buf: RawBuf,
        plan: &Plan,
        reducer: Option<Reducer>,
    ) -> Result<()> {
        let Some(links) = &self.links else { return Ok(()) };
        let collective = Collective { next: &links.next, prev: &links.prev, ctx, header, dtype_name };
        let result = collective.run(buf, plan, reducer);
        self.check(result)
    }

    /// Marks the ring broken on error, shutting the sockets so the neighbours notice.
    fn check<T>(&mut self, result: Result<T>) -> Result<T> {
        if let Err(err) = &result {
            if let Some(links) = &self.links {
                links.next.shut_down();
                links.prev.shut_down();
                let why = match err {
                    HistError::Dist(msg) => msg.clone(),
                    other => other.to_string(),
                };
                self.broken = Some(why);
            }
        }
        result
    }

    fn header(&self, ctx: &OpContext, kind: Option<Kind>, arg: u32, shape: Vec<i64>) -> Header {
        let dtype = kind.map_or(0, kind_code);
        Header { seq: ctx.seq, op: ctx.op, dtype, arg, shape, dtype_name: dtype_name(dtype) }
    }
}

/// The wire code and printable name of every dtype (code = index + 1; 0 = no tensor).
const KINDS: [(Kind, &str); 20] = [
    (Kind::Uint8, "u8"),
    (Kind::Int8, "i8"),
    (Kind::Int16, "i16"),
    (Kind::Int, "i32"),
    (Kind::Int64, "i64"),
    (Kind::Half, "f16"),
    (Kind::Float, "f32"),
    (Kind::Double, "f64"),
    (Kind::ComplexHalf, "complex32"),
    (Kind::ComplexFloat, "complex64"),
    (Kind::ComplexDouble, "complex128"),
    (Kind::Bool, "bool"),
    (Kind::QInt8, "qint8"),
    (Kind::QUInt8, "quint8"),
    (Kind::QInt32, "qint32"),
    (Kind::BFloat16, "bf16"),
    (Kind::Float8e5m2, "f8e5m2"),
    (Kind::Float8e4m3fn, "f8e4m3fn"),
    (Kind::Float8e5m2fnuz, "f8e5m2fnuz"),
    (Kind::Float8e4m3fnuz, "f8e4m3fnuz"),
];

fn kind_code(kind: Kind) -> u8 {
    KINDS.iter().position(|(k, _)| *k == kind).map_or(255, |i| i as u8 + 1)
}

fn dtype_name(code: u8) -> &'static str {
    match code {
        0 => "no tensor",
        c => KINDS.get(usize::from(c) - 1).map_or("an unknown dtype", |(_, name)| name),
    }
}

/// A defined CPU tensor's dtype, or why the collective cannot take it.
fn check_tensor(t: &Tensor, op: OpCode) -> Result<Kind> {
    let bad = |msg: String| HistError::Dist(format!("{}: {msg}", op.name()));
    if !t.defined() {
        return Err(bad("undefined tensor".into()));
    }
    if t.device() != Device::Cpu {
        return Err(bad(format!("tensor is on {:?}; the CPU ring takes CPU tensors", t.device())));
    }
    t.f_kind().map_err(|e| bad(format!("unsupported dtype: {e}")))
}

/// A CPU tensor's dtype and its memory as a [`RawBuf`]. Non-contiguous tensors are
/// refused rather than copied: the in-place collectives would have to copy back.
fn tensor_memory(t: &Tensor, op: OpCode) -> Result<(Kind, RawBuf)> {
    let kind = check_tensor(t, op)?;
    if !t.is_contiguous() {
        return Err(HistError::Dist(format!(
            "{}: tensor of shape {:?} is not contiguous; call .contiguous() first",
            op.name(),
            t.size()
        )));
    }
    let len = buf_len(t, kind);
    let ptr = if len == 0 { std::ptr::NonNull::<u64>::dangling().as_ptr().cast() } else { t.data_ptr().cast::<u8>() };
    // SAFETY: a defined, contiguous CPU tensor's data pointer addresses numel × element
    // size bytes of live storage, aligned for its dtype; the caller holds the tensor for
    // the whole collective. Other tensors sharing the storage must not be used meanwhile,
    // which `Collectives` callers guarantee by passing the tensor (mutably where written).
    Ok((kind, unsafe { RawBuf::new(ptr, len) }))
}

impl Collectives for CpuRing {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce(&mut self, tensor: &mut Tensor, op: ReduceOp) -> Result<()> {
        let ctx = self.begin(OpCode::AllReduce)?;
        let checked = tensor_memory(tensor, ctx.op).and_then(|(kind, buf)| {
            let w = self.world;
            let reducer = match kind {
                Kind::Float => Reducer::F32 { divisor: w as f32 },
                Kind::Double => Reducer::F64 { divisor: w as f64 },
                other => {
                    return Err(HistError::Dist(format!("all_reduce supports f32 and f64 tensors, not {other:?}")))
                }
            };
            Ok((kind, buf, reducer))
        });
        let (kind, buf, reducer) = self.check(checked)?;
        if self.world == 1 {
            return Ok(());
        }
        let (w, r, esize) = (self.world, self.rank, kind.elt_size_in_bytes());
        let plan = plans::all_reduce(tensor.numel(), esize, w, r, op == ReduceOp::Avg, self.chunk_bytes);
        let header = self.header(&ctx, Some(kind), u32::from(op == ReduceOp::Avg), tensor.size());
        self.run(ctx, header, buf, &plan, Some(reducer))
    }

    /// 0-dimensional tensors are gathered as shape [1], giving [W]; with one rank the
    /// result is the input itself (no copy), as with `Solo`.
    fn all_gather(&mut self, tensor: &Tensor) -> Result<Tensor> {
        let ctx = self.begin(OpCode::AllGather)?;
        let prepared = (|| {
            check_tensor(tensor, ctx.op)?;
            // Any layout: the input is only read by copying it into the output.
            let input = if tensor.dim() == 0 { tensor.f_reshape([1])? } else { tensor.shallow_clone() };
            Ok::<_, HistError>(input)
        })();
        let input = self.check(prepared)?;
        if self.world == 1 {
            return Ok(input);
        }
        let (w, r) = (self.world, self.rank);
        let mut shape = input.size();
        let rows = shape[0];
        shape[0] = rows * w as i64;
        let filled = (|| {
            let src = if input.is_contiguous() { input.shallow_clone() } else { input.f_contiguous()? };
            let (kind, src_buf) = tensor_memory(&src, ctx.op)?;
            let out = Tensor::f_empty(shape.as_slice(), (kind, Device::Cpu))?;
            let (_, buf) = tensor_memory(&out, ctx.op)?;
            // A plain memcpy into our slot rather than libtorch's copy_, which hands
            // copies this size to its intra-op thread pool: waking it cost ~8 ms per call
            // on a busy 2-core machine. The output carries no autograd history.
            // SAFETY: `src` and `out` are live, contiguous and distinct (out is new), and
            // nothing else uses them until this function returns.
            unsafe { buf.copy_from(r * src_buf.len(), src_buf)? };
            Ok::<_, HistError>((out, kind, buf))
        })();
        let (out, kind, buf) = self.check(filled)?;
        let plan = plans::all_gather(buf_len(&input, kind), w, r, self.chunk_bytes);
        let header = self.header(&ctx, Some(kind), 0, input.size());
        self.run(ctx, header, buf, &plan, None)?;
        Ok(out)
    }

    fn broadcast(&mut self, tensor: &mut Tensor, root: usize) -> Result<()> {
        let ctx = self.begin(OpCode::Broadcast)?;
        let world = self.world;
        let checked = if root >= world {
            Err(HistError::Dist(format!("broadcast from root {root} in a world of {world} ranks")))
        } else {
            tensor_memory(tensor, ctx.op)
        };
        let (kind, buf) = self.check(checked)?;
        if world == 1 {
            return Ok(());
        }
        let plan = plans::broadcast(buf_len(tensor, kind), world, self.rank, root, self.chunk_bytes);
        let header = self.header(&ctx, Some(kind), root as u32, tensor.size());
        self.run(ctx, header, buf, &plan, None)
    }

    /// A one-byte ring all-gather: a rank finishes only after every rank's byte, sent
    /// when that rank entered the barrier, has reached it.
    fn barrier(&mut self) -> Result<()> {
        let ctx = self.begin(OpCode::Barrier)?;
        let (w, r) = (self.world, self.rank);
        let mut bytes = vec![0u8; w];
        let plan = plans::all_gather(1, w, r, self.chunk_bytes);
        // SAFETY: `bytes` is a live local buffer of w bytes that nothing else touches.
        let buf = unsafe { RawBuf::new(bytes.as_mut_ptr(), bytes.len()) };
        let header = self.header(&ctx, None, 0, Vec::new());
        self.run(ctx, header, buf, &plan, None)
    }
}

fn buf_len(t: &Tensor, kind: Kind) -> usize {
    t.numel() * kind.elt_size_in_bytes()
}
