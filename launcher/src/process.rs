//! Starting one worker process and signalling it. Each worker leads its own process group
//! so a terminal's Ctrl-C reaches only the launcher (which forwards it once), and signals
//! from the launcher reach whatever the worker itself started. Each worker also asks the
//! kernel to SIGKILL it when the launcher dies, so no worker outlives a killed launcher.
use std::io;
use std::process::Stdio;

use anyhow::{Context, Result};
use tokio::process::{Child, Command};

use crate::env::Contract;
use crate::worker::WorkerCommand;

/// Starts the worker for `local_rank` with piped stdout/stderr and no stdin (ranks in the
/// background must never read the terminal).
///
/// Must be called from a thread that lives as long as the launcher: PR_SET_PDEATHSIG fires
/// when the *thread* that forked the child exits, not the process.
pub fn spawn(worker: &WorkerCommand, contract: &Contract, local_rank: usize) -> Result<Child> {
    let mut cmd = Command::new(&worker.program);
    cmd.args(worker.args_for(local_rank))
        .envs(contract.vars(local_rank))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let launcher = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
    // functions (prctl, getppid); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The launcher may have died before prctl took effect; then nobody would
            // deliver the signal, so refuse to start at all.
            if libc::getppid() != launcher {
                // ESRCH ("no such process": the parent) without allocating after fork;
                // std reports only the errno of a pre_exec failure anyway.
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    cmd.spawn().with_context(|| {
        format!("cannot start worker {} for rank {}", worker.program.display(), contract.rank(local_rank))
    })
}

/// Sends `signal` to the worker's whole process group; a group that is already gone is
/// not an error (the worker may have exited a moment ago).
pub fn signal_group(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return };
    if pid <= 1 {
        // killpg(0 or 1) would hit the launcher's own group or everything; never valid here.
        return;
    }
    // SAFETY: plain system call on a process group this launcher created.
    unsafe {
        libc::killpg(pid, signal);
    }
}

/// "SIGTERM" for 15, or "signal 64" for anything without a common name.
pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        _ => return format!("signal {signal}"),
    };
    name.to_string()
}
