//! Signals reach the training loop as a stop request, never as `process::exit` from a
//! handler: every rank finishes its current step, the ranks agree on the step to stop at,
//! and the loop ends in an orderly way (design §7).
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
use tch::{Kind, Tensor};

use crate::dist::{Collectives, ReduceOp};
use crate::error::{HistError, Result};

/// Why training stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM (the launcher, a scheduler, `kill`).
    Terminate,
    /// SIGUSR1 (SLURM's warning before preemption with `--signal=USR1@N`).
    Preempt,
}

impl StopReason {
    /// Conventional exit status: 128 + the signal number.
    pub fn exit_code(self) -> u8 {
        match self {
            StopReason::Interrupt => 130,
            StopReason::Terminate => 143,
            StopReason::Preempt => 138,
        }
    }

    fn from_signal(sig: usize) -> Option<StopReason> {
        match sig as i32 {
            SIGINT => Some(StopReason::Interrupt),
            SIGTERM => Some(StopReason::Terminate),
            SIGUSR1 => Some(StopReason::Preempt),
            _ => None,
        }
    }

    /// Signal code used to agree across ranks (the highest wins).
    fn code(self) -> usize {
        match self {
            StopReason::Preempt => 1,
            StopReason::Interrupt => 2,
            StopReason::Terminate => 3,
        }
    }

    fn from_code(code: usize) -> Option<StopReason> {
        match code {
            1 => Some(StopReason::Preempt),
            2 => Some(StopReason::Interrupt),
            3 => Some(StopReason::Terminate),
            _ => None,
        }
    }
}

/// The strongest stop request this process received, as [`StopReason::code`] (0 = none):
/// a SIGTERM is not downgraded to a preemption by a later SIGUSR1.
#[derive(Clone)]
pub struct StopFlag {
    code: Arc<AtomicUsize>,
}

impl StopFlag {
    /// Registers handlers for SIGINT, SIGTERM and SIGUSR1 that only record the signal.
    pub fn install() -> Result<StopFlag> {
        let code = Arc::new(AtomicUsize::new(0));
        for sig in [SIGINT, SIGTERM, SIGUSR1] {
            let reason = StopReason::from_signal(sig as usize).map_or(0, StopReason::code);
            let flag = Arc::clone(&code);
            // SAFETY: the action is one atomic read-modify-write, which is
            // async-signal-safe (no allocation, no lock).
            unsafe { signal_hook::low_level::register(sig, move || {
                flag.fetch_max(reason, Ordering::SeqCst);
            }) }
            .map_err(|e| HistError::Dist(format!("cannot install the handler for signal {sig}: {e}")))?;
        }
        Ok(StopFlag { code })
    }

    /// A flag no signal sets (library use, tests).
    pub fn never() -> StopFlag {
        StopFlag { code: Arc::new(AtomicUsize::new(0)) }
    }

    /// This rank's own stop request, if any.
    pub fn local(&self) -> Option<StopReason> {
        StopReason::from_code(self.code.load(Ordering::Relaxed))
    }

    /// The stop request agreed by all ranks after a step: if any rank got a signal, every
    /// rank stops at the same step (a one-element all-reduce of the strongest request).
    pub fn agreed(&self, pg: &mut dyn Collectives, device: tch::Device) -> Result<Option<StopReason>> {
        let mine = self.local().map_or(0, StopReason::code);
        if pg.world_size() == 1 {
            return Ok(StopReason::from_code(mine));
        }
        // One-hot over the three codes, summed: the highest code present wins.
        let mut one_hot = [0.0f64; 4];
        one_hot[mine] = 1.0;
        // On the training device, since NCCL only reduces CUDA tensors.
        let mut votes = Tensor::from_slice(&one_hot).to_kind(Kind::Double).to_device(device);
        pg.all_reduce(&mut votes, ReduceOp::Sum)?;
        pg.finish_pending()?;
        let counts: Vec<f64> = Vec::<f64>::try_from(&votes.to_device(tch::Device::Cpu)).unwrap_or_default();
        Ok((1..4).rev().find(|&c| counts.get(c).copied().unwrap_or(0.0) > 0.0).and_then(StopReason::from_code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_strongest_request_is_kept() {
        // No other test in this binary installs the handlers, so raising is harmless.
        let flag = StopFlag::install().expect("handlers");
        assert_eq!(flag.local(), None);
        for (sig, want) in [(SIGUSR1, StopReason::Preempt), (SIGTERM, StopReason::Terminate), (SIGUSR1, StopReason::Terminate), (SIGINT, StopReason::Terminate)] {
            // SAFETY: raise only delivers the signal to this process, whose handlers record it.
            assert_eq!(unsafe { libc::raise(sig) }, 0);
            assert_eq!(flag.local(), Some(want), "after signal {sig}");
        }
    }
}
