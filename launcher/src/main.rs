//! `hist-launch`: starts this node's `hist train` workers (CPU ranks or one per GPU) with a
//! torchrun-style environment, hosts the job's rendezvous on node 0, multiplexes the
//! workers' output and stops the whole job when one rank fails or a stop signal arrives.
//! The launcher knows nothing about tensors; docs/launcher.md is the user's reference.
use std::process::ExitCode;

use anyhow::{Context, Result};

mod args;
mod env;
mod gpus;
mod host;
mod output;
mod plan;
mod process;
mod signals;
mod slurm;
mod supervise;
mod worker;

use args::{Args, Parsed};
use env::Contract;
use gpus::GpuCount;
use output::say;
use plan::{Inputs, Plan};
use signals::StopSignals;

/// Exit status for the launcher's own errors (bad options, port in use, missing files),
/// distinct from a worker's status only by the one-line `hist-launch: error:` message.
const USAGE_ERROR: u8 = 2;

fn main() -> ExitCode {
    let args = match args::parse() {
        Parsed::Run(args) => *args,
        Parsed::Done(status) => return ExitCode::from(status),
        Parsed::Invalid(msg) => return fail(&msg),
    };
    match launch(&args) {
        // A status outside 0..=255 cannot come from a real process; report it as failure.
        Ok(status) => ExitCode::from(u8::try_from(status).unwrap_or(1)),
        Err(err) => fail(&format!("{err:#}")),
    }
}

fn fail(msg: &str) -> ExitCode {
    say(&format!("error: {msg}"));
    ExitCode::from(USAGE_ERROR)
}

/// Validates everything, then runs the job; returns the launcher's exit status.
fn launch(args: &Args) -> Result<i32> {
    let env = |key: &str| std::env::var(key).ok();
    let plan =
        plan::resolve(args, &Inputs { env: &env, gpus: &GpuCount::probe, new_secret: &hist_rendezvous::new_secret })?;
    // One thread: workers must be forked from a thread that lives as long as the launcher
    // (PR_SET_PDEATHSIG follows the forking thread), and supervision is all waiting.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the launcher's event loop")?;
    runtime.block_on(run(plan))
}

async fn run(mut plan: Plan) -> Result<i32> {
    let mut signals = StopSignals::install()?;
    let mut worker = plan.worker.clone();
    let mut restarts = 0usize;
    loop {
        // A fresh rendezvous per attempt: the old one's keys and barriers belong to the
        // workers that died. Later attempts reuse the first attempt's port.
        let (server, master_port) = host::host_rendezvous(&plan)?;
        plan.master_port = master_port;
        let contract = Contract {
            world_size: plan.world_size(),
            local_world_size: plan.per_node,
            node_rank: plan.node_rank,
            master_addr: plan.master_addr.clone(),
            master_port,
            secret: plan.secret.clone(),
            join_timeout: plan.join_timeout,
        };
        let finish = supervise::supervise(&worker, &contract, &mut signals).await?;
        // Serve until every local worker is gone: ranks on other nodes may still need it.
        drop(server);
        match finish {
            supervise::Finish::Failed(_) if restarts < plan.max_restarts => {
                restarts += 1;
                say(&format!(
                    "restarting the job from its latest checkpoint (restart {restarts} of {})",
                    plan.max_restarts
                ));
                worker = plan.worker.for_restart();
            }
            other => return Ok(other.status()),
        }
    }
}
