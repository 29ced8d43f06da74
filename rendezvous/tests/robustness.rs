//! Hostile and broken peers must not crash, block or slow a running job.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use hist_rendezvous::{Client, RejectReason, RendezvousError, Server, ServerOptions, MAX_PENDING};

const HANDSHAKE: Duration = Duration::from_millis(300);
/// No job operation may take longer than this while under attack.
const MAX_DELAY: Duration = Duration::from_secs(1);
/// Connections opened by the flood, beyond the pending-handshake limit.
const FLOOD: usize = MAX_PENDING + 16;

/// Waits (bounded) for the server to close `s`; true if it did.
fn closed_by_server(mut s: TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // an error frame, then the close
            Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

/// A small deterministic generator, enough for junk bytes.
fn junk(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

#[test]
fn job_runs_undisturbed_while_peers_misbehave() {
    let opts = ServerOptions {
        world_size: 2,
        secret: "job-secret".into(),
        handshake_timeout: HANDSHAKE,
    };
    let server = Server::bind("127.0.0.1:0", opts).unwrap().start();
    let addr = server.local_addr().to_string();
    let attacking = Arc::new(AtomicBool::new(true));

    let ranks: Vec<_> = (0..2)
        .map(|rank| {
            let (addr, attacking) = (addr.clone(), Arc::clone(&attacking));
            thread::spawn(move || {
                let mut c =
                    Client::connect(&addr, "job-secret", rank, 2, Duration::from_secs(5)).unwrap();
                let (mut worst, mut rounds) = (Duration::ZERO, 0u64);
                // Rank 0 decides when to stop (at least 20 rounds, and not before the
                // attack is over) and tells rank 1 in the value, so both stop together.
                loop {
                    let t = Instant::now();
                    let key = format!("k{rounds}");
                    let go_on = if rank == 0 {
                        let go_on = rounds < 20 || attacking.load(Ordering::SeqCst);
                        c.set(&key, &[u8::from(go_on)]).unwrap();
                        go_on
                    } else {
                        c.get(&key, Duration::from_secs(5)).unwrap() == [1]
                    };
                    c.barrier("round", Duration::from_secs(5)).unwrap();
                    worst = worst.max(t.elapsed());
                    rounds += 1;
                    if !go_on {
                        break;
                    }
                }
                (worst, rounds)
            })
        })
        .collect();

    let attack_addr = addr.clone();
    let attacker = thread::spawn(move || {
        let addr = attack_addr;
        let mut opened = 0;
        // (a) The wrong secret: refused at once, with the reason.
        match Client::connect(&addr, "guess", 0, 2, Duration::from_secs(5)) {
            Err(RendezvousError::Rejected {
                reason: RejectReason::BadSecret,
                ..
            }) => {}
            other => panic!("wrong secret was not refused: {other:?}"),
        }
        opened += 1;
        // (b) Garbage: a huge length prefix, an HTTP request, random bytes.
        let mut huge = vec![0xFF, 0xFF, 0xFF, 0xFF];
        huge.extend(junk(512, 1));
        for bytes in [
            huge,
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            junk(4096, 7),
        ] {
            let mut s = TcpStream::connect(&addr).unwrap();
            let _ = s.write_all(&bytes);
            assert!(
                closed_by_server(s, Duration::from_secs(2)),
                "garbage connection left open"
            );
            opened += 1;
        }
        // (c) Silent, (d) a valid-looking partial Hello, (e) a Hello trickled a byte
        // at a time: each must be dropped at the handshake timeout.
        let silent = TcpStream::connect(&addr).unwrap();
        let mut partial = TcpStream::connect(&addr).unwrap();
        partial
            .write_all(b"\0\0\0\x50{\"type\":\"hello\",\"version\":1,\"sec")
            .unwrap();
        let mut trickle = TcpStream::connect(&addr).unwrap();
        let hello =
            br#"{"type":"hello","version":1,"secret":"job-secret","rank":0,"world_size":2}"#;
        let mut frame = (hello.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(hello);
        opened += 3;
        let t = Instant::now();
        for b in frame.iter().take(8) {
            let _ = trickle.write_all(&[*b]);
            thread::sleep(Duration::from_millis(60));
        }
        for s in [silent, partial, trickle] {
            assert!(
                closed_by_server(s, Duration::from_secs(2)),
                "stalled connection left open"
            );
        }
        assert!(
            t.elapsed() < HANDSHAKE * 3,
            "stalled peers held for {:?}",
            t.elapsed()
        );
        // (f) A flood of silent connections beyond the pending limit.
        let flood: Vec<TcpStream> = (0..FLOOD)
            .filter_map(|_| TcpStream::connect(&addr).ok())
            .collect();
        opened += flood.len();
        for s in flood {
            assert!(
                closed_by_server(s, Duration::from_secs(2)),
                "flood connection left open"
            );
        }
        opened
    });

    let opened = attacker.join().unwrap();
    attacking.store(false, Ordering::SeqCst);
    for r in ranks {
        let (worst, rounds) = r.join().unwrap();
        assert!(rounds >= 20);
        assert!(
            worst < MAX_DELAY,
            "a job operation took {worst:?} under attack"
        );
        eprintln!("worst job round under attack: {worst:?} over {rounds} rounds");
    }
    // Every hostile connection is counted exactly once; the job's two are not.
    let deadline = Instant::now() + Duration::from_secs(2);
    while server.rejected_connections() < opened && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(server.rejected_connections(), opened);
    server.shutdown();
}
