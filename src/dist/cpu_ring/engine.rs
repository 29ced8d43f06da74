//! The engine every collective runs on. A collective is a [`Plan`]: the chunks this rank
//! sends to the next rank and the chunks it receives from the previous one, in order,
//! each with the progress of the other side it has to wait for. A sender thread and the
//! calling thread (the receiver) work through the two lists concurrently, so a rank is
//! always draining its predecessor while it feeds its successor: large messages cannot
//! deadlock on full socket buffers, and sending overlaps receiving and reducing.
use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::thread;

use super::buffer::{RawBuf, Reducer};
use super::wire::{Header, Link, OpContext};
use crate::error::{HistError, Result};

/// Plans whose sends total at most this many bytes run on the calling thread alone:
/// every write fits in the socket buffers, so no second thread is needed to avoid
/// deadlock, and small collectives (barriers, loss scalars) skip the thread start.
const INLINE_BYTES: usize = 16 << 10;

/// How a received chunk lands in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RecvMode {
    /// Overwrite the buffer's bytes.
    Copy,
    /// Add element-wise into the buffer.
    Reduce,
    /// Add, then divide by the reducer's divisor (the last addition of an average).
    ReduceScale,
}

#[derive(Debug)]
struct SendOp {
    range: Range<usize>,
    /// Receives that must have completed first (the chunk is forwarded data).
    after_recv: usize,
}

#[derive(Debug)]
struct RecvOp {
    range: Range<usize>,
    mode: RecvMode,
    /// Sends that must have completed first (the chunk overwrites bytes sent earlier).
    after_send: usize,
}

/// The ordered chunk lists of one collective on one rank.
#[derive(Debug)]
pub(super) struct Plan {
    chunk_bytes: usize,
    sends: Vec<SendOp>,
    recvs: Vec<RecvOp>,
    /// Index of the latest send of the chunk starting at each byte offset.
    last_send: HashMap<usize, usize>,
    send_bytes: usize,
}

impl Plan {
    /// An empty plan cutting ranges into chunks of `chunk_bytes` (a multiple of 8, so
    /// chunks never split an element).
    pub(super) fn new(chunk_bytes: usize) -> Plan {
        Plan {
            chunk_bytes: chunk_bytes.max(8) & !7,
            sends: Vec::new(),
            recvs: Vec::new(),
            last_send: HashMap::new(),
            send_bytes: 0,
        }
    }

    /// Sends `range`, which already holds this rank's data, with no waiting.
    pub(super) fn send_local(&mut self, range: Range<usize>) {
        for chunk in self.chunks(range) {
            self.push_send(chunk, 0);
        }
    }

    /// Receives `range`; with `forward`, passes each chunk on to the next rank as soon as
    /// it has landed (and been reduced), which is what pipelines the ring.
    pub(super) fn recv(&mut self, range: Range<usize>, mode: RecvMode, forward: bool) {
        for chunk in self.chunks(range) {
            // Writing over bytes that an earlier send may still be reading would race;
            // the rank only ever gets such a chunk back after sending it, so this wait is
            // practically always already satisfied.
            let after_send = self.last_send.get(&chunk.start).map_or(0, |i| i + 1);
            self.recvs.push(RecvOp { range: chunk.clone(), mode, after_send });
            if forward {
                let after_recv = self.recvs.len();
                self.push_send(chunk, after_recv);
            }
        }
    }

    fn push_send(&mut self, range: Range<usize>, after_recv: usize) {
        self.last_send.insert(range.start, self.sends.len());
        self.send_bytes += range.len();
        self.sends.push(SendOp { range, after_recv });
    }

    /// The byte ranges sent, in order (tests compare them with the next rank's receives).
    #[cfg(test)]
    pub(super) fn send_ranges(&self) -> Vec<Range<usize>> {
        self.sends.iter().map(|s| s.range.clone()).collect()
    }

    /// The byte ranges received, in order.
    #[cfg(test)]
    pub(super) fn recv_ranges(&self) -> Vec<Range<usize>> {
        self.recvs.iter().map(|r| r.range.clone()).collect()
    }

    /// Whether the plan runs alternating "send what is ready, receive the next chunk"
    /// without a receive waiting on a send that waits on a later receive.
    #[cfg(test)]
    pub(super) fn runs_in_order(&self) -> bool {
        let mut sent = 0;
        for (i, op) in self.recvs.iter().enumerate() {
            while sent < self.sends.len() && self.sends[sent].after_recv <= i {
                sent += 1;
            }
            if op.after_send > sent {
                return false;
            }
        }
        self.sends.iter().all(|s| s.after_recv <= self.recvs.len())
    }

    fn chunks(&self, range: Range<usize>) -> Vec<Range<usize>> {
        let step = self.chunk_bytes;
        (range.start..range.end).step_by(step).map(|s| s..(s + step).min(range.end)).collect()
    }
}

/// How far one side has got through its list; the other side waits on it.
struct Progress {
    done: AtomicUsize,
    aborted: AtomicBool,
    lock: Mutex<()>,
    cv: Condvar,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            done: AtomicUsize::new(0),
            aborted: AtomicBool::new(false),
            lock: Mutex::new(()),
            cv: Condvar::new(),
        }
    }

    fn advance(&self) {
        self.done.fetch_add(1, Ordering::Release);
        // Taking the lock orders this notify after a waiter's check-then-wait.
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.cv.notify_all();
    }

    fn abort(&self) {
        self.aborted.store(true, Ordering::Release);
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.cv.notify_all();
    }

    /// Waits until `n` steps are done; false if the collective was aborted instead.
    fn wait_for(&self, n: usize) -> bool {
        if self.done.load(Ordering::Acquire) >= n {
            return true;
        }
        let mut guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if self.done.load(Ordering::Acquire) >= n {
                return true;
            }
            if self.aborted.load(Ordering::Acquire) {
                return false;
            }
            guard = self.cv.wait(guard).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// One collective about to run on this rank's two links.
pub(super) struct Collective<'a> {
    pub next: &'a Link,
    pub prev: &'a Link,
    pub ctx: OpContext,
    pub header: Header,
    /// Names a dtype code, for mismatch messages.
    pub dtype_name: fn(u8) -> &'static str,
}

impl Collective<'_> {
    /// Exchanges headers and carries out `plan` on `buf`. On error the links are shut
    /// down (so the neighbours fail fast too) and the first failure is returned.
    pub(super) fn run(&self, buf: RawBuf, plan: &Plan, reducer: Option<Reducer>) -> Result<()> {
        let in_bounds =
            plan.sends.iter().map(|s| &s.range).chain(plan.recvs.iter().map(|r| &r.range)).all(|r| r.end <= buf.len());
        let needs_reducer = plan.recvs.iter().any(|r| r.mode != RecvMode::Copy);
        if !in_bounds || (needs_reducer && reducer.is_none()) {
            return Err(HistError::Dist(format!("{}: internal error: inconsistent transfer plan", self.ctx)));
        }
        let header = self.header.encode()?;
        let result = if plan.send_bytes <= INLINE_BYTES {
            self.run_inline(&header, buf, plan, reducer)
        } else {
            self.run_threaded(&header, buf, plan, reducer)
        };
        if result.is_err() {
            self.next.shut_down();
            self.prev.shut_down();
        }
        result
    }

    fn check_header(&self) -> Result<()> {
        let theirs = Header::read_from(self.prev, &self.ctx)?;
        self.header.check_matches(&theirs, &self.prev.peer, self.dtype_name)
    }

    fn send_one(&self, buf: RawBuf, op: &SendOp) -> Result<()> {
        // SAFETY: the range is in bounds (checked in `run`) and the plan's waits keep
        // the receiver off it while it is sent (see `Plan::recv`).
        let bytes = unsafe { buf.slice(op.range.clone()) };
        self.next.write_all(bytes, &self.ctx)
    }

    fn recv_one(&self, buf: RawBuf, op: &RecvOp, scratch: &mut [u64], reducer: Option<Reducer>) -> Result<()> {
        // SAFETY: in bounds (checked in `run`); the plan's waits guarantee that no send of
        // these bytes is in flight and none starts before this receive completes.
        let dst = unsafe { buf.slice_mut(op.range.clone()) };
        match (op.mode, reducer) {
            (RecvMode::Copy, _) => self.prev.read_exact(dst, &self.ctx),
            (mode, Some(reducer)) => {
                // SAFETY: any initialised u64s are valid bytes; the view ends with `scratch`'s borrow.
                let (_, tmp, _) = unsafe { scratch.align_to_mut::<u8>() };
                let tmp = &mut tmp[..dst.len()];
                self.prev.read_exact(tmp, &self.ctx)?;
                reducer.apply(dst, tmp, mode == RecvMode::ReduceScale)
            }
            (_, None) => Err(HistError::Dist(format!("{}: internal error: no reducer", self.ctx))),
        }
    }

    fn scratch(&self, plan: &Plan) -> Vec<u64> {
        let longest = plan.recvs.iter().filter(|r| r.mode != RecvMode::Copy).map(|r| r.range.len()).max().unwrap_or(0);
        vec![0u64; longest.div_ceil(8)]
    }

    /// Single-threaded: send whatever is ready, then receive one chunk, and so on.
    fn run_inline(&self, header: &[u8], buf: RawBuf, plan: &Plan, reducer: Option<Reducer>) -> Result<()> {
        let mut scratch = self.scratch(plan);
        self.next.write_all(header, &self.ctx)?;
        let mut sent = 0;
        let flush = |received: usize, sent: &mut usize| -> Result<()> {
            while *sent < plan.sends.len() && plan.sends[*sent].after_recv <= received {
                self.send_one(buf, &plan.sends[*sent])?;
                *sent += 1;
            }
            Ok(())
        };
        flush(0, &mut sent)?;
        self.check_header()?;
        for (i, op) in plan.recvs.iter().enumerate() {
            if op.after_send > sent {
                return Err(HistError::Dist(format!("{}: internal error: receive waits on a later send", self.ctx)));
            }
            self.recv_one(buf, op, &mut scratch, reducer)?;
            flush(i + 1, &mut sent)?;
        }
        Ok(())
    }

    /// A sender thread works through the sends while this thread receives.
    fn run_threaded(&self, header: &[u8], buf: RawBuf, plan: &Plan, reducer: Option<Reducer>) -> Result<()> {
        let sent = Progress::new();
        let received = Progress::new();
        let failure: Mutex<Option<HistError>> = Mutex::new(None);
        // The first failure wins; the other side's later errors are mostly its reaction
        // to the teardown. Shutting the links wakes whichever side is blocked in I/O.
        let fail = |err: HistError| {
            let mut first = failure.lock().unwrap_or_else(PoisonError::into_inner);
            if first.is_none() {
                *first = Some(err);
            }
            drop(first);
            sent.abort();
            received.abort();
            self.next.shut_down();
            self.prev.shut_down();
        };
        let aborted = || HistError::Dist(format!("{} aborted", self.ctx));
        thread::scope(|scope| {
            let sender = thread::Builder::new().name("cpu-ring-send".into()).spawn_scoped(scope, || {
                let result = (|| {
                    self.next.write_all(header, &self.ctx)?;
                    for op in &plan.sends {
                        if !received.wait_for(op.after_recv) {
                            return Err(aborted());
                        }
                        self.send_one(buf, op)?;
                        sent.advance();
                    }
                    Ok(())
                })();
                if let Err(e) = result {
                    fail(e);
                }
            });
            let sender = match sender {
                Ok(handle) => handle,
                Err(e) => return fail(HistError::Dist(format!("{}: cannot start the sender thread: {e}", self.ctx))),
            };
            let result = (|| {
                let mut scratch = self.scratch(plan);
                self.check_header()?;
                for op in &plan.recvs {
                    if !sent.wait_for(op.after_send) {
                        return Err(aborted());
                    }
                    self.recv_one(buf, op, &mut scratch, reducer)?;
                    received.advance();
                }
                Ok(())
            })();
            if let Err(e) = result {
                fail(e);
            }
            if sender.join().is_err() {
                fail(HistError::Dist(format!("{}: the sender thread panicked", self.ctx)));
            }
        });
        match failure.into_inner().unwrap_or_else(PoisonError::into_inner) {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}
