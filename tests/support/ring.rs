//! CPU-ring ranks as threads of one test process, joined through a real rendezvous server
//! on 127.0.0.1. Included by the tests that need it with `#[path = "support/ring.rs"] mod ring;`.
use std::thread;
use std::time::Duration;

use hist::dist::cpu_ring::CpuRing;
use hist_rendezvous::{new_secret, Client, Server, ServerOptions};

/// How long the ranks may take to meet and connect their ring.
const SETUP: Duration = Duration::from_secs(20);

/// Runs `body(rank, ring)` on `world` threads joined into one ring; results in rank order.
pub fn on_ring<R: Send>(world: usize, body: impl Fn(usize, &mut CpuRing) -> R + Sync) -> Vec<R> {
    let secret = new_secret();
    let server = Server::bind("127.0.0.1:0", ServerOptions::new(world, secret.clone())).expect("bind server").start();
    let addr = server.local_addr().to_string();
    thread::scope(|s| {
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let (addr, secret, body) = (&addr, &secret, &body);
                s.spawn(move || {
                    let mut client = Client::connect(addr, secret, rank, world, SETUP).expect("store client");
                    let mut ring = CpuRing::connect(&mut client, "127.0.0.1", SETUP).expect("ring connect");
                    body(rank, &mut ring)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("rank thread panicked")).collect()
    })
}
