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
}

impl Stop {
    /// The launcher's exit status after stopping for this signal: 128 + its number, the
    /// shell convention (130 for SIGINT, 143 for SIGTERM).
    pub fn exit_status(self) -> i32 {
        128 + self.number()
    }

    /// The signal's number.
    pub fn number(self) -> i32 {
        match self {
            Stop::Interrupt => libc::SIGINT,
            Stop::Terminate => libc::SIGTERM,
        }
    }

    /// "SIGINT" or "SIGTERM".
    pub fn name(self) -> &'static str {
        match self {
            Stop::Interrupt => "SIGINT",
            Stop::Terminate => "SIGTERM",
        }
    }
}

/// Catches SIGINT and SIGTERM from the moment it is created.
pub struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignals {
    /// Installs the handlers; do this before starting any worker so that no signal can
    /// arrive while the default action (die without telling the workers) is in place.
    pub fn install() -> Result<Self> {
        let interrupt = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
        let terminate = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
        Ok(StopSignals { interrupt, terminate })
    }

    /// Waits for the next stop signal.
    pub async fn recv(&mut self) -> Stop {
        tokio::select! {
            _ = self.interrupt.recv() => Stop::Interrupt,
            _ = self.terminate.recv() => Stop::Terminate,
        }
    }
}
