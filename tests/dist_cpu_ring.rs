//! The CPU ring's collectives against serial computations, for world sizes 1..=4 run as
//! threads (one CpuRing each, a real rendezvous server on 127.0.0.1), plus its failure
//! behaviour: a dead, stuck or mismatched peer gives a Dist error, never a hang.
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use hist::dist::cpu_ring::all_reduce_segment;
use hist::dist::{Collectives, ReduceOp};
use hist::HistError;
use tch::{Kind, Tensor};

#[path = "support/ring.rs"]
mod ring;
use ring::on_ring;

const SIZES: [usize; 5] = [0, 1, 7, 1000, 1_000_003];

/// Rank-dependent values with fractional parts, so the summation order shows in the bits.
fn values(rank: usize, n: usize) -> Vec<f64> {
    (0..n).map(|i| ((i * 7919 + rank * 104_729) % 10_007) as f64 / 7.0 - 700.0 + rank as f64 * 0.1).collect()
}

/// The ring's order: segment k sums ranks k, k+1, …, k−1, left to right, then divides.
fn serial_reduce<T>(inputs: &[Vec<T>], world: usize, avg: bool) -> Vec<T>
where
    T: Copy + std::ops::Add<Output = T> + std::ops::Div<Output = T> + From<u8>,
{
    let n = inputs[0].len();
    let mut out = Vec::with_capacity(n);
    for k in 0..world {
        for i in all_reduce_segment(n, 1, world, k) {
            let mut acc = inputs[k][i];
            for j in 1..world {
                acc = acc + inputs[(k + j) % world][i];
            }
            out.push(if avg { acc / T::from(world as u8) } else { acc });
        }
    }
    out
}

fn assert_all_reduce<T>(world: usize, kind: Kind, to_t: fn(f64) -> T, bits: fn(&T) -> u64)
where
    T: tch::kind::Element + Copy + std::ops::Add<Output = T> + std::ops::Div<Output = T> + From<u8> + Send,
{
    let results = on_ring(world, |rank, ring| {
        let mut out = Vec::new();
        for &n in &SIZES {
            for op in [ReduceOp::Sum, ReduceOp::Avg] {
                let data: Vec<T> = values(rank, n).into_iter().map(to_t).collect();
                let mut t = Tensor::from_slice(&data);
                assert_eq!(t.kind(), kind);
                ring.all_reduce(&mut t, op).expect("all_reduce");
                out.push(Vec::<T>::try_from(&t).expect("read back"));
            }
        }
        out
    });
    let mut idx = 0;
    for &n in &SIZES {
        let inputs: Vec<Vec<T>> = (0..world).map(|r| values(r, n).into_iter().map(to_t).collect()).collect();
        for avg in [false, true] {
            let expected: Vec<u64> = serial_reduce(&inputs, world, avg).iter().map(bits).collect();
            for (rank, per_rank) in results.iter().enumerate() {
                let got: Vec<u64> = per_rank[idx].iter().map(bits).collect();
                assert!(got == expected, "W={world} {kind:?} n={n} avg={avg}: rank {rank} differs from the serial sum");
            }
            idx += 1;
        }
    }
}

#[test]
fn all_reduce_matches_serial_sum_bit_for_bit() {
    for world in 1..=4 {
        assert_all_reduce::<f32>(world, Kind::Float, |v| v as f32, |v| u64::from(v.to_bits()));
        assert_all_reduce::<f64>(world, Kind::Double, |v| v, |v| v.to_bits());
    }
}

#[test]
fn all_gather_concatenates_in_rank_order() {
    for world in 1..=4 {
        let make = |rank: usize| {
            let r = rank as i64;
            vec![
                Tensor::arange(15, (Kind::Float, tch::Device::Cpu)).reshape([3, 5]) * 0.5 + r as f64,
                Tensor::arange(7, (Kind::Int64, tch::Device::Cpu)) * 1000 + r,
                (Tensor::arange(300_001, (Kind::Int64, tch::Device::Cpu)) + r * 3).remainder(251).to_kind(Kind::Uint8),
                Tensor::from(r as f32 * 2.0), // 0-dim: gathered as [W]
                // Not contiguous: gathered from a copy.
                (Tensor::arange(12, (Kind::Int, tch::Device::Cpu)) + r).reshape([3, 4]).transpose(0, 1),
            ]
        };
        let results = on_ring(world, |rank, ring| {
            make(rank).iter().map(|t| ring.all_gather(t).expect("all_gather")).collect::<Vec<_>>()
        });
        for i in 0..5 {
            let parts: Vec<Tensor> = (0..world)
                .map(|r| make(r).swap_remove(i))
                .map(|t| if t.dim() == 0 { t.reshape([1]) } else { t })
                .collect();
            let want = Tensor::cat(&parts, 0);
            for (rank, got) in results.iter().enumerate() {
                assert_eq!(got[i].size(), want.size(), "W={world} tensor {i} rank {rank}: shape");
                assert_eq!(got[i].kind(), want.kind(), "W={world} tensor {i} rank {rank}: dtype");
                assert!(got[i].equal(&want), "W={world} tensor {i} rank {rank}: values");
            }
        }
    }
}

#[test]
fn broadcast_from_every_root() {
    for world in 1..=4 {
        let results = on_ring(world, |rank, ring| {
            let mut out = Vec::new();
            for root in 0..world {
                let mut small = Tensor::full([10, 100], rank as f64 + 0.25, (Kind::Float, tch::Device::Cpu));
                ring.broadcast(&mut small, root).expect("broadcast");
                // Larger than a chunk, so forwarding along the chain is pipelined.
                let mut big = (Tensor::arange(2_000_003, (Kind::Int64, tch::Device::Cpu)) * (rank as i64 + 1))
                    .remainder(256)
                    .to_kind(Kind::Uint8);
                ring.broadcast(&mut big, root).expect("broadcast");
                out.push((small, big));
            }
            ring.barrier().expect("barrier");
            out
        });
        for root in 0..world {
            let want_small = Tensor::full([10, 100], root as f64 + 0.25, (Kind::Float, tch::Device::Cpu));
            let want_big = (Tensor::arange(2_000_003, (Kind::Int64, tch::Device::Cpu)) * (root as i64 + 1))
                .remainder(256)
                .to_kind(Kind::Uint8);
            for (rank, per_rank) in results.iter().enumerate() {
                assert!(per_rank[root].0.equal(&want_small), "W={world} root {root}: rank {rank} small");
                assert!(per_rank[root].1.equal(&want_big), "W={world} root {root}: rank {rank} big");
            }
        }
    }
}

fn dist_message(result: hist::Result<()>) -> String {
    match result {
        Err(HistError::Dist(msg)) => msg,
        other => panic!("expected a Dist error, got {other:?}"),
    }
}

#[test]
fn a_peer_that_dies_mid_operation_fails_the_others_fast() {
    for world in [2, 3, 4] {
        let dying = world - 1;
        let results = on_ring(world, |rank, ring| {
            if rank == dying {
                // The others are blocked inside the all_reduce by now; closing the
                // sockets is what the OS does when a process dies.
                thread::sleep(Duration::from_millis(300));
                return None;
            }
            let start = Instant::now();
            let mut t = Tensor::ones([1_000_003], (Kind::Float, tch::Device::Cpu));
            let first = dist_message(ring.all_reduce(&mut t, ReduceOp::Sum));
            let elapsed = start.elapsed();
            let later = dist_message(ring.barrier());
            Some((first, elapsed, later))
        });
        for (rank, r) in results.into_iter().enumerate() {
            let Some((first, elapsed, later)) = r else { continue };
            assert!(elapsed < Duration::from_secs(5), "W={world} rank {rank} took {elapsed:?}");
            assert!(first.contains("closed the connection"), "W={world} rank {rank}: {first}");
            assert!(!first.contains('\n'), "one-line message: {first}");
            assert!(later.contains("unusable"), "W={world} rank {rank}: {later}");
        }
    }
}

#[test]
fn a_stuck_peer_times_out() {
    let results = on_ring(3, |rank, ring| {
        ring.set_op_timeout(Some(Duration::from_millis(500))).expect("timeout");
        if rank == 2 {
            // Alive but never joins; holds its sockets open until the others are done.
            thread::sleep(Duration::from_millis(2500));
            return None;
        }
        let mut t = Tensor::ones([100], (Kind::Double, tch::Device::Cpu));
        let start = Instant::now();
        Some((dist_message(ring.all_reduce(&mut t, ReduceOp::Avg)), start.elapsed()))
    });
    for (rank, r) in results.into_iter().enumerate() {
        let Some((msg, elapsed)) = r else { continue };
        assert!(elapsed < Duration::from_secs(2), "rank {rank} took {elapsed:?}: {msg}");
        assert!(msg.contains("sent nothing") || msg.contains("closed the connection"), "rank {rank}: {msg}");
    }
}

#[test]
fn mismatched_calls_are_reported_not_mixed() {
    let gate = Barrier::new(2);
    let results = on_ring(2, |rank, ring| {
        gate.wait();
        let mut t = Tensor::zeros([10 + rank as i64], (Kind::Float, tch::Device::Cpu));
        dist_message(ring.all_reduce(&mut t, ReduceOp::Sum))
    });
    assert!(results.iter().any(|m| m.contains("every rank must call the same collectives")), "{results:?}");
    for m in &results {
        assert!(m.contains("[10]") || m.contains("closed the connection"), "{m}");
    }
}

#[test]
fn bad_tensors_are_refused() {
    on_ring(1, |_, ring| {
        let mut ints = Tensor::zeros([4], (Kind::Int64, tch::Device::Cpu));
        assert!(dist_message(ring.all_reduce(&mut ints, ReduceOp::Sum)).contains("f32 and f64"));
        let mut strided = Tensor::zeros([4, 4], (Kind::Float, tch::Device::Cpu)).transpose(0, 1);
        assert!(dist_message(ring.broadcast(&mut strided, 0)).contains("not contiguous"));
        let mut t = Tensor::zeros([4], (Kind::Float, tch::Device::Cpu));
        assert!(dist_message(ring.broadcast(&mut t, 1)).contains("root 1"));
    });
}
