//! Runs this node's workers to the end. The job is all-or-nothing: when one rank fails the
//! others cannot make progress (they would hang in a collective), so the rest are stopped
//! at once and the failure is reported with the failed rank's last output.
use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use anyhow::Result;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout_at, Instant};

use crate::env::Contract;
use crate::output::{self, say, Stream, Tail};
use crate::process::{signal_group, signal_name, spawn};
use crate::signals::{Stop, StopSignals};
use crate::worker::WorkerCommand;

/// Time ranks get to exit after SIGTERM when another rank failed, before SIGKILL.
pub const FAILURE_GRACE: Duration = Duration::from_secs(3);

/// Time given to the output pumps to drain after the workers are gone; something a
/// worker started in the background may hold its pipes open for ever.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// How a worker ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exited with this status.
    Exited(i32),
    /// Killed by this signal.
    Signalled(i32),
    /// Waiting for it failed; the text says why.
    Lost(String),
}

impl Outcome {
    fn from_wait(result: std::io::Result<std::process::ExitStatus>) -> Self {
        match result {
            Ok(status) => match (status.code(), status.signal()) {
                (Some(code), _) => Outcome::Exited(code),
                (None, Some(signal)) => Outcome::Signalled(signal),
                (None, None) => Outcome::Lost(format!("unrecognised wait status {status:?}")),
            },
            Err(err) => Outcome::Lost(format!("cannot wait for it: {err}")),
        }
    }

    fn success(&self) -> bool {
        *self == Outcome::Exited(0)
    }

    /// The launcher's exit status when this is the failure it reports: the worker's own
    /// status, or 128 + signal as a shell would report it.
    pub fn exit_status(&self) -> i32 {
        match self {
            Outcome::Exited(code) => *code,
            Outcome::Signalled(signal) => 128 + signal,
            Outcome::Lost(_) => 1,
        }
    }

    /// "exit status 3", "killed by signal 9".
    pub fn describe(&self) -> String {
        match self {
            Outcome::Exited(code) => format!("exit status {code}"),
            Outcome::Signalled(signal) => format!("killed by signal {signal}"),
            Outcome::Lost(why) => why.clone(),
        }
    }
}

/// One started worker.
struct Running {
    rank: usize,
    pid: u32,
    tail: Tail,
    pumps: Vec<JoinHandle<()>>,
}

/// Why the job is being wound down.
enum Ending {
    /// Still running.
    No,
    /// A rank failed: this index into the workers, and how; `stopped`: a stop was asked
    /// for while ending, so no restart may follow.
    Failure { index: usize, outcome: Outcome, stopped: bool },
    /// The launcher was asked to stop; `failed`: a rank that failed (not as a stop asks)
    /// meanwhile, with how.
    Signal { stop: Stop, failed: Option<(usize, Outcome)> },
}

/// Starts every worker of this node, supervises them and returns the launcher's exit
/// status (0 when all succeed; see docs/launcher.md for the rest).
/// How a run of the job's workers ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Every worker exited 0.
    Success,
    /// Stopped on the launcher's SIGINT/SIGTERM; the launcher's exit status.
    Stopped(i32),
    /// A worker failed; the failed worker's status (or 128 + signal).
    Failed(i32),
    /// A worker failed and the launcher was also asked to stop (in either order): the
    /// failed worker's status; the job is not restarted.
    FailedAndStopped(i32),
}

impl Finish {
    /// The launcher's exit status for this ending.
    pub fn status(self) -> i32 {
        match self {
            Finish::Success => 0,
            Finish::Stopped(s) | Finish::Failed(s) | Finish::FailedAndStopped(s) => s,
        }
    }
}

pub async fn supervise(worker: &WorkerCommand, contract: &Contract, signals: &mut StopSignals) -> Result<Finish> {
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Outcome)>();
    let mut workers: Vec<Running> = Vec::with_capacity(contract.local_world_size);
    for local_rank in 0..contract.local_world_size {
        let mut child = match spawn(worker, contract, local_rank) {
            Ok(child) => child,
            Err(err) => {
                for w in &workers {
                    signal_group(w.pid, libc::SIGKILL);
                }
                return Err(err);
            }
        };
        let rank = contract.rank(local_rank);
        let tail = Tail::default();
        let mut pumps = Vec::new();
        if let Some(out) = child.stdout.take() {
            pumps.push(tokio::spawn(output::pump(rank, out, Stream::Stdout, tail.clone())));
        }
        if let Some(err) = child.stderr.take() {
            pumps.push(tokio::spawn(output::pump(rank, err, Stream::Stderr, tail.clone())));
        }
        // A freshly spawned child always has a pid; 0 only if it was already reaped,
        // and signal_group ignores that.
        let pid = child.id().unwrap_or(0);
        let index = workers.len();
        let tx = tx.clone();
        tokio::spawn(async move {
            let outcome = Outcome::from_wait(child.wait().await);
            let _ = tx.send((index, outcome));
        });
        workers.push(Running { rank, pid, tail, pumps });
    }

    let mut live: BTreeSet<usize> = (0..workers.len()).collect();
    let mut ending = Ending::No;
    let mut kill_at: Option<Instant> = None;
    while !live.is_empty() {
        let deadline = async {
            match kill_at {
                Some(at) => sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some((index, outcome)) = rx.recv() => {
                live.remove(&index);
                // Whatever the worker left in its process group goes with it. Now, not at
                // the end: while the group has members its number cannot be reused, but
                // once empty it could name someone else's group after a long run.
                signal_group(workers[index].pid, libc::SIGKILL);
                if outcome.success() {
                    continue;
                }
                match &mut ending {
                    Ending::No => {
                        signal_all(&workers, &live, libc::SIGTERM);
                        kill_at = Some(Instant::now() + FAILURE_GRACE);
                        ending = Ending::Failure { index, outcome, stopped: false };
                    }
                    Ending::Signal { failed: failed @ None, .. } if !stopped_as_asked(&outcome) => {
                        // The others may wait for it in a collective: they get the same
                        // grace as after any failure.
                        let rank = workers[index].rank;
                        say(&format!("rank {rank} failed ({}) while stopping", outcome.describe()));
                        signal_all(&workers, &live, libc::SIGTERM);
                        kill_at = Some(Instant::now() + FAILURE_GRACE);
                        *failed = Some((index, outcome));
                    }
                    _ => {}
                }
            }
            stop = signals.recv() => match &mut ending {
                Ending::No => {
                    let forwarded = Stop::forwarded(stop);
                    let again = if stop == Stop::Preempt { "SIGINT or SIGTERM".to_string() } else { stop.name().to_string() };
                    say(&format!(
                        "{}: sending {} to {} worker(s) and waiting for them; {again} again kills them",
                        stop.name(), signal_name(forwarded), live.len()
                    ));
                    signal_all(&workers, &live, forwarded);
                    ending = Ending::Signal { stop, failed: None };
                }
                Ending::Failure { stopped, .. } => {
                    *stopped = true;
                    if stop == Stop::Preempt {
                        say("SIGUSR1 while the job ends after a failure: it will not be restarted");
                    } else {
                        say(&format!("{} while the job ends after a failure: sending SIGKILL to {} worker(s); it will not be restarted", stop.name(), live.len()));
                        signal_all(&workers, &live, libc::SIGKILL);
                        kill_at = None;
                    }
                }
                // SLURM may signal every process of the step, and some sites send the
                // warning more than once: a repeated SIGUSR1 is not a request to hurry.
                _ if stop == Stop::Preempt => {
                    say("SIGUSR1 while stopping: ignored (the workers are already checkpointing)");
                }
                _ => {
                    say(&format!("{} while stopping: sending SIGKILL to {} worker(s)", stop.name(), live.len()));
                    signal_all(&workers, &live, libc::SIGKILL);
                    kill_at = None;
                }
            },
            () = deadline => {
                for &index in &live {
                    say(&format!(
                        "rank {} still running {} s after SIGTERM; sending SIGKILL",
                        workers[index].rank, FAILURE_GRACE.as_secs()
                    ));
                }
                signal_all(&workers, &live, libc::SIGKILL);
                kill_at = None;
            }
        }
    }

    drain(&mut workers).await;
    Ok(match ending {
        Ending::No => Finish::Success,
        Ending::Signal { stop, failed: None } => Finish::Stopped(stop.exit_status()),
        Ending::Signal { failed: Some((index, outcome)), .. } | Ending::Failure { index, outcome, stopped: true } => {
            report_failure(&workers[index], &outcome);
            Finish::FailedAndStopped(outcome.exit_status())
        }
        Ending::Failure { index, outcome, stopped: false } => {
            report_failure(&workers[index], &outcome);
            Finish::Failed(outcome.exit_status())
        }
    })
}

/// Workers killed by the SIGTERM/SIGKILL we forwarded, or exiting non-zero after
/// handling it, are doing what they were told; anything else is worth a line.
fn stopped_as_asked(outcome: &Outcome) -> bool {
    let asked = [libc::SIGTERM, libc::SIGKILL, libc::SIGINT, libc::SIGUSR1];
    matches!(outcome, Outcome::Signalled(s) if asked.contains(s))
        || matches!(outcome, Outcome::Exited(c) if asked.iter().any(|s| *c == 128 + s))
}

fn signal_all(workers: &[Running], which: &BTreeSet<usize>, signal: libc::c_int) {
    for &index in which {
        signal_group(workers[index].pid, signal);
    }
}

/// Lets the pumps print the workers' last lines before the summary refers to them.
async fn drain(workers: &mut [Running]) {
    let until = Instant::now() + DRAIN_GRACE;
    for w in workers.iter_mut() {
        for pump in w.pumps.drain(..) {
            if timeout_at(until, pump).await.is_err() {
                return;
            }
        }
    }
}

fn report_failure(worker: &Running, outcome: &Outcome) {
    let lines = worker.tail.lines();
    let what = match outcome {
        Outcome::Signalled(s) => format!("{}, {}", outcome.describe(), signal_name(*s)),
        _ => outcome.describe(),
    };
    if lines.is_empty() {
        say(&format!("rank {} failed ({what}); it printed nothing", worker.rank));
        return;
    }
    say(&format!("rank {} failed ({what}); its last output:", worker.rank));
    let prefix = output::prefix(worker.rank);
    for line in lines {
        output::emit(Stream::Stderr, prefix.as_bytes(), line.as_bytes());
    }
}
