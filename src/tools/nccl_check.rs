//! `hist nccl-check`: the NCCL backend against CPU-computed answers on this machine's GPUs.
//!
//! One rank per GPU, each on its own thread, all in this process behind an in-process
//! rendezvous (NCCL refuses two ranks on one device, so a one-GPU machine runs a world of
//! one: that still exercises loading, communicator set-up, every call's ABI, dtype codes,
//! and the ordering of NCCL with libtorch on the legacy default stream). Prints one
//! PASS/FAIL line per check and fails when any check failed.
use std::time::Duration;

use hist_rendezvous::{Client, Server, ServerOptions};
use tch::{Device, Kind, Tensor};

use crate::dist::nccl::{nccl_info, Nccl};
use crate::dist::{Collectives, ReduceOp};
use crate::error::{HistError, Result};

/// The most ranks the check starts (one per GPU).
const MAX_RANKS: usize = 8;
/// How long a rank waits for the others at any step.
const TIMEOUT: Duration = Duration::from_secs(120);
/// Dtypes the backend moves, checked one by one.
const KINDS: [Kind; 8] =
    [Kind::Float, Kind::Double, Kind::BFloat16, Kind::Half, Kind::Int64, Kind::Int, Kind::Uint8, Kind::Int8];

/// One check's name and outcome (`Err` holds what was wrong).
type Outcome = (String, std::result::Result<(), String>);

/// Prints the CUDA and NCCL facts, runs every check on every GPU rank, and returns an
/// error when any failed.
pub fn run() -> Result<()> {
    let available = tch::Cuda::is_available();
    let devices = tch::Cuda::device_count();
    println!("cuda: tch::Cuda::is_available() = {available}, device_count = {devices}");
    let info = nccl_info()?;
    println!("nccl: version {} (code {}) from {}", info.version, info.code, info.library);
    if !available || devices < 1 {
        return Err(HistError::Dist("nccl-check needs a CUDA device and found none".into()));
    }
    let world = (devices as usize).min(MAX_RANKS);
    let secret = "hist-nccl-check";
    let server = Server::bind("127.0.0.1:0", ServerOptions::new(world, secret))
        .map_err(|e| HistError::Dist(format!("in-process rendezvous: {e}")))?
        .start();
    let addr = server.local_addr().to_string();
    println!("ranks: {world} (one per GPU, threads of this process), rendezvous {addr}");
    let ranks: Vec<_> = (0..world)
        .map(|rank| {
            let addr = addr.clone();
            std::thread::spawn(move || rank_checks(&addr, secret, rank, world))
        })
        .collect();
    let mut failed = 0;
    for (rank, handle) in ranks.into_iter().enumerate() {
        let outcomes = handle.join().unwrap_or_else(|_| vec![("rank thread".into(), Err("panicked".into()))]);
        for (name, outcome) in outcomes {
            match outcome {
                Ok(()) if rank == 0 => println!("PASS {name}"),
                Ok(()) => {}
                Err(why) => {
                    failed += 1;
                    println!("FAIL rank {rank}: {name}: {why}");
                }
            }
        }
    }
    server.shutdown();
    if failed > 0 {
        return Err(HistError::Dist(format!("nccl-check: {failed} check(s) failed")));
    }
    println!("nccl-check: all checks passed on {world} rank(s)");
    Ok(())
}

/// Everything one rank checks; a failure to set up ends the list early.
fn rank_checks(addr: &str, secret: &str, rank: usize, world: usize) -> Vec<Outcome> {
    let mut out = Vec::new();
    // The store stays connected until the checks end, as in a real job.
    let mut store = match Client::connect(addr, secret, rank, world, TIMEOUT) {
        Ok(store) => store,
        Err(e) => return vec![("rendezvous".into(), Err(e.to_string()))],
    };
    let mut nccl = match Nccl::with_timeout(&mut store, rank, TIMEOUT) {
        Ok(nccl) => nccl,
        Err(e) => return vec![("communicator setup".into(), Err(e.to_string()))],
    };
    out.push(("communicator setup".into(), Ok(())));
    let device = Device::Cuda(rank);
    for kind in KINDS {
        out.push((format!("all_reduce sum {kind:?}"), reduce_check(&mut nccl, device, kind, ReduceOp::Sum)));
        if matches!(kind, Kind::Float | Kind::Double | Kind::BFloat16 | Kind::Half) {
            out.push((
                format!("all_reduce avg {kind:?}"),
                reduce_check(&mut nccl, device, kind, ReduceOp::Avg),
            ));
        }
        out.push((format!("all_gather {kind:?}"), gather_check(&mut nccl, device, kind)));
        out.push((format!("broadcast {kind:?}"), broadcast_check(&mut nccl, device, kind)));
    }
    out.push(("ordering with libtorch on the default stream".into(), ordering_check(&mut nccl, device)));
    out.push(("misuse gives errors, not crashes".into(), misuse_check(&mut nccl, device)));
    out.push(("barrier".into(), nccl.barrier().map_err(|e| e.to_string())));
    out
}

/// Rank `rank`'s input: small integers (exact in every dtype even after summing 8 ranks).
fn input(rank: usize, kind: Kind, device: Device) -> Tensor {
    let base = Tensor::arange(24, (Kind::Double, Device::Cpu)).remainder(7).view([6, 4]);
    (base + rank as f64).to_kind(kind).to_device(device)
}

/// Compares `got` (any device) with `want` (f64, CPU) after converting both to f64.
fn compare(got: &Tensor, want: &Tensor, tolerance: f64) -> std::result::Result<(), String> {
    let got = got.to_device(Device::Cpu).to_kind(Kind::Double);
    if got.size() != want.size() {
        return Err(format!("shape {:?}, expected {:?}", got.size(), want.size()));
    }
    let error = (&got - want).abs().max().double_value(&[]);
    if error <= tolerance {
        Ok(())
    } else {
        Err(format!(
            "max abs error {error} > {tolerance}: got {:?}",
            Vec::<f64>::try_from(got.flatten(0, -1))
        ))
    }
}

fn reduce_check(
    nccl: &mut Nccl,
    device: Device,
    kind: Kind,
    op: ReduceOp,
) -> std::result::Result<(), String> {
    let world = nccl.world_size();
    let mut tensor = input(nccl.rank(), kind, device);
    nccl.all_reduce(&mut tensor, op).map_err(|e| e.to_string())?;
    let mut want = (0..world)
        .map(|r| input(r, Kind::Double, Device::Cpu))
        .fold(Tensor::zeros([6, 4], (Kind::Double, Device::Cpu)), |a, b| a + b);
    if op == ReduceOp::Avg {
        want /= world as f64;
    }
    // Half types hold about 3 significant digits: an average may round.
    let tolerance = if matches!(kind, Kind::BFloat16 | Kind::Half) { 0.05 } else { 1e-9 };
    compare(&tensor, &want, tolerance)
}

fn gather_check(nccl: &mut Nccl, device: Device, kind: Kind) -> std::result::Result<(), String> {
    let world = nccl.world_size();
    let gathered = nccl.all_gather(&input(nccl.rank(), kind, device)).map_err(|e| e.to_string())?;
    let parts: Vec<Tensor> = (0..world).map(|r| input(r, Kind::Double, Device::Cpu)).collect();
    compare(&gathered, &Tensor::cat(&parts, 0), 0.0)
}

fn broadcast_check(nccl: &mut Nccl, device: Device, kind: Kind) -> std::result::Result<(), String> {
    let root = nccl.world_size() - 1;
    let mut tensor = input(nccl.rank(), kind, device);
    nccl.broadcast(&mut tensor, root).map_err(|e| e.to_string())?;
    compare(&tensor, &input(root, Kind::Double, Device::Cpu), 0.0)
}

/// The input of a collective is written by a long libtorch kernel queued just before it and
/// its output read just after: NCCL on another stream would see stale data.
fn ordering_check(nccl: &mut Nccl, device: Device) -> std::result::Result<(), String> {
    let n = 4096;
    let a = Tensor::ones([n, n], (Kind::Float, device));
    let mut slow = a.matmul(&a).matmul(&a); // every element n*n, after two long kernels
    nccl.all_reduce(&mut slow, ReduceOp::Sum).map_err(|e| e.to_string())?;
    let total = slow.sum(Kind::Double).double_value(&[]);
    let want = (n * n * n * n) as f64 * nccl.world_size() as f64;
    if (total - want).abs() > want * 1e-6 {
        return Err(format!("sum {total}, expected {want}"));
    }
    let gathered = nccl.all_gather(&slow.narrow(0, 0, 1)).map_err(|e| e.to_string())?;
    compare(
        &gathered.narrow(1, 0, 4),
        &Tensor::full([nccl.world_size() as i64, 4], want / (n * n) as f64, (Kind::Double, Device::Cpu)),
        0.0,
    )
}

/// Wrong device, layout, dtype and root must come back as errors.
fn misuse_check(nccl: &mut Nccl, device: Device) -> std::result::Result<(), String> {
    let world = nccl.world_size();
    let mut cpu = Tensor::ones([4], (Kind::Float, Device::Cpu));
    let mut strided = Tensor::ones([4, 4], (Kind::Float, device)).transpose(0, 1);
    let mut boolean = Tensor::ones([4], (Kind::Bool, device));
    let mut ints = Tensor::ones([4], (Kind::Int64, device));
    let cases: [(&str, bool); 5] = [
        ("CPU tensor", nccl.all_reduce(&mut cpu, ReduceOp::Sum).is_err()),
        ("non-contiguous in-place", nccl.all_reduce(&mut strided, ReduceOp::Sum).is_err()),
        ("bool dtype", nccl.broadcast(&mut boolean, 0).is_err()),
        ("integer average", nccl.all_reduce(&mut ints, ReduceOp::Avg).is_err()),
        ("root out of range", nccl.broadcast(&mut ints, world).is_err()),
    ];
    match cases.iter().find(|(_, rejected)| !rejected) {
        Some((name, _)) => Err(format!("{name} was accepted")),
        None => Ok(()),
    }
}
