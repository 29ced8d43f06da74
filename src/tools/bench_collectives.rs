//! `hist bench-collectives`: times the CPU ring's all_reduce and all_gather on one rank
//! of a local job; rank 0 also hosts the rendezvous server and prints the times as one
//! JSON line. scripts/bench_collectives.py starts the ranks beside a torch.distributed
//! (gloo) run of the same sizes and writes docs/benchmarks.md.
use std::time::{Duration, Instant};

use hist_rendezvous::{Client, Server, ServerOptions};
use serde_json::json;
use tch::{Device, Kind, Tensor};

use crate::dist::cpu_ring::{CpuRing, DEFAULT_CHUNK_BYTES};
use crate::dist::{Collectives, ReduceOp};
use crate::error::{HistError, Result};

/// How long ranks wait for each other while setting up.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchArgs {
    /// This process's rank.
    pub rank: usize,
    /// Number of ranks.
    pub world: usize,
    /// host:port of the rendezvous server, which rank 0 starts.
    pub addr: String,
    /// Job secret for the rendezvous server.
    pub secret: String,
    /// Elements of the f32 all_reduce.
    pub numel: i64,
    /// Rows × columns of each rank's f32 all_gather input.
    pub gather_shape: [i64; 2],
    /// Timed all_reduce calls.
    pub reps: usize,
    /// Timed all_gather calls.
    pub gather_reps: usize,
    /// Untimed calls before each measurement.
    pub warmup: usize,
    /// Ring chunk size in bytes (0: the default).
    pub chunk_bytes: usize,
}

fn dist_err(e: impl std::fmt::Display) -> HistError {
    HistError::Dist(e.to_string())
}

/// Runs one rank of the benchmark; rank 0 prints `{"all_reduce_s": [...], "all_gather_s": [...]}`.
pub fn run(args: &BenchArgs) -> Result<()> {
    let _server = if args.rank == 0 {
        let opts = ServerOptions::new(args.world, args.secret.clone());
        Some(Server::bind(&args.addr, opts).map_err(dist_err)?.start())
    } else {
        None
    };
    let host = args.addr.rsplit_once(':').map_or("127.0.0.1", |(h, _)| h);
    let mut client =
        Client::connect(&args.addr, &args.secret, args.rank, args.world, SETUP_TIMEOUT).map_err(dist_err)?;
    let mut ring = CpuRing::connect(&mut client, host, SETUP_TIMEOUT)?;
    ring.set_chunk_bytes(if args.chunk_bytes == 0 { DEFAULT_CHUNK_BYTES } else { args.chunk_bytes });
    let w = args.world as f64;
    let mine = args.rank as f64 + 1.0;

    // all_reduce: refilled before every call so the sum stays W(W+1)/2 and checkable.
    let mut grads = Tensor::f_empty([args.numel], (Kind::Float, Device::Cpu))?;
    let mut reduce_times = Vec::with_capacity(args.reps);
    for i in 0..args.warmup + args.reps {
        let _ = grads.f_fill_(mine)?;
        ring.barrier()?;
        let start = Instant::now();
        ring.all_reduce(&mut grads, ReduceOp::Sum)?;
        if i >= args.warmup {
            reduce_times.push(start.elapsed().as_secs_f64());
        }
    }
    let want = w * (w + 1.0) / 2.0;
    for idx in [0, args.numel - 1] {
        let got = grads.f_double_value(&[idx])?;
        if got != want {
            return Err(dist_err(format!("all_reduce check: element {idx} is {got}, expected {want}")));
        }
    }

    let [rows, cols] = args.gather_shape;
    let embeddings = Tensor::f_full([rows, cols], mine, (Kind::Float, Device::Cpu))?;
    let mut gather_times = Vec::with_capacity(args.gather_reps);
    let mut gathered = None;
    for i in 0..args.warmup + args.gather_reps {
        ring.barrier()?;
        let start = Instant::now();
        let out = ring.all_gather(&embeddings)?;
        if i >= args.warmup {
            gather_times.push(start.elapsed().as_secs_f64());
        }
        gathered = Some(out);
    }
    if let Some(out) = gathered {
        for r in 0..args.world as i64 {
            let got = out.f_double_value(&[r * rows, cols - 1])?;
            if got != r as f64 + 1.0 {
                return Err(dist_err(format!("all_gather check: block {r} holds {got}")));
            }
        }
    }
    ring.barrier()?;
    if args.rank == 0 {
        println!("{}", json!({ "all_reduce_s": reduce_times, "all_gather_s": gather_times }));
    }
    Ok(())
}
