//! The launcher's own stop signals. They are caught (never left to kill the launcher) so
//! that workers get the chance to stop cleanly: the supervisor forwards them.
use anyhow::{Context, Result};
use tokio::signal::unix::{signal, Signal, SignalKind};

/// A request to stop the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGINT (Ctrl-C in the terminal).
    Interrupt,
    /// SIGTERM (kill, a scheduler's time limit, scancel).
    Terminate,
    /// SIGUSR1 (SLURM's `--signal=USR1@N` warning before preemption or the time limit).
    Preempt,
}

impl Stop {
    /// The launcher's exit status after stopping for this signal: 128 + its number, the
    /// shell convention (130 for SIGINT, 143 for SIGTERM, 138 for SIGUSR1).
    pub fn exit_status(self) -> i32 {
        128 + self.number()
    }

    /// The signal's number.
    pub fn number(self) -> i32 {
        match self {
            Stop::Interrupt => libc::SIGINT,
            Stop::Terminate => libc::SIGTERM,
            Stop::Preempt => libc::SIGUSR1,
        }
    }

    /// The signal workers get: SIGUSR1 is passed on as it is, because it asks for more than
    /// a stop (a checkpoint, then rank 0 requeues the SLURM job); SIGINT becomes SIGTERM,
    /// which every worker treats as "checkpoint and stop".
    pub fn forwarded(self) -> i32 {
        match self {
            Stop::Interrupt | Stop::Terminate => libc::SIGTERM,
            Stop::Preempt => libc::SIGUSR1,
        }
    }

    /// "SIGINT", "SIGTERM" or "SIGUSR1".
    pub fn name(self) -> &'static str {
        match self {
            Stop::Interrupt => "SIGINT",
            Stop::Terminate => "SIGTERM",
            Stop::Preempt => "SIGUSR1",
        }
    }
}

/// Catches SIGINT, SIGTERM and SIGUSR1 from the moment it is created.
pub struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
    preempt: Signal,
}

impl StopSignals {
    /// Installs the handlers; do this before starting any worker so that no signal can
    /// arrive while the default action (die without telling the workers) is in place.
    pub fn install() -> Result<Self> {
        let interrupt = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
        let terminate = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
        let preempt = signal(SignalKind::user_defined1()).context("cannot install the SIGUSR1 handler")?;
        Ok(StopSignals { interrupt, terminate, preempt })
    }

    /// Waits for the next stop signal.
    pub async fn recv(&mut self) -> Stop {
        tokio::select! {
            _ = self.interrupt.recv() => Stop::Interrupt,
            _ = self.terminate.recv() => Stop::Terminate,
            _ = self.preempt.recv() => Stop::Preempt,
        }
    }
}
