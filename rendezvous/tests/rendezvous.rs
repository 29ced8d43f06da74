//! Behaviour of the server and client as the launcher and workers use them.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use hist_rendezvous::{
    new_secret, Client, RejectReason, RendezvousError, Server, ServerHandle, ServerOptions,
};

const LONG: Duration = Duration::from_secs(5);

fn start(world_size: usize, secret: &str) -> ServerHandle {
    let opts = ServerOptions {
        world_size,
        secret: secret.into(),
        handshake_timeout: Duration::from_millis(300),
    };
    Server::bind("127.0.0.1:0", opts).unwrap().start()
}

#[test]
fn four_ranks_share_keys_and_reuse_barrier_names() {
    let secret = new_secret();
    let server = start(4, &secret);
    let addr = server.local_addr().to_string();
    let arrivals = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|rank| {
            let (addr, secret, arrivals) = (addr.clone(), secret.clone(), Arc::clone(&arrivals));
            thread::spawn(move || {
                let mut c = Client::connect(&addr, &secret, rank, 4, LONG).unwrap();
                assert_eq!((c.rank(), c.world_size()), (rank, 4));
                if rank == 0 {
                    // Asked before rank 3 sets it: blocks, then succeeds.
                    let t = Instant::now();
                    assert_eq!(c.get("late", LONG).unwrap(), b"from 3");
                    assert!(
                        t.elapsed() >= Duration::from_millis(100),
                        "{:?}",
                        t.elapsed()
                    );
                }
                if rank == 3 {
                    thread::sleep(Duration::from_millis(150));
                    c.set("late", b"from 3").unwrap();
                }
                c.set(
                    &format!("addr/{rank}"),
                    format!("10.0.0.{rank}:1234").as_bytes(),
                )
                .unwrap();
                c.barrier("init", LONG).unwrap();
                for other in 0..4 {
                    let v = c.get(&format!("addr/{other}"), Duration::ZERO).unwrap();
                    assert_eq!(v, format!("10.0.0.{other}:1234").as_bytes());
                }
                // The same names again and again: each use is a fresh round, and
                // nobody leaves a round before all four have entered it.
                let names = ["step", "other", "step"].repeat(5);
                for (k, name) in names.iter().enumerate() {
                    arrivals.fetch_add(1, Ordering::SeqCst);
                    c.barrier(name, LONG).unwrap();
                    let passed = arrivals.load(Ordering::SeqCst);
                    assert!(
                        passed >= 4 * (k + 1),
                        "rank {rank} left barrier {k} early: {passed} arrivals"
                    );
                }
                c.barrier("done", LONG).unwrap();
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(server.rejected_connections(), 0);
    server.shutdown();
}

#[test]
fn missing_rank_is_named_quickly() {
    let secret = new_secret();
    let server = start(3, &secret);
    let addr = server.local_addr().to_string();
    let t = Instant::now();
    let waiters: Vec<_> = (0..2)
        .map(|rank| {
            let (addr, secret) = (addr.clone(), secret.clone());
            thread::spawn(move || {
                let mut c = Client::connect(&addr, &secret, rank, 3, LONG).unwrap();
                c.barrier("init", Duration::from_millis(300)).unwrap_err()
            })
        })
        .collect();
    for w in waiters {
        let e = w.join().unwrap();
        assert!(
            matches!(&e, RendezvousError::BarrierTimeout { missing, never_connected, .. } if missing == &[2] && never_connected == &[2]),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "barrier 'init': rank 2 did not join within 300 ms (never connected: 2)"
        );
    }
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );

    // A rank that connected but never enters is missing, not "never connected".
    let mut c0 = Client::connect(&addr, &secret, 0, 3, LONG).unwrap();
    let _c1 = Client::connect(&addr, &secret, 1, 3, LONG).unwrap();
    let e = c0
        .barrier("second", Duration::from_millis(200))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "barrier 'second': ranks 1, 2 did not join within 200 ms (never connected: 2)"
    );
    let e = c0
        .get("nobody-sets-this", Duration::from_millis(100))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "key 'nobody-sets-this' was not set by any rank within 100 ms"
    );
    // The connection is still usable after timeouts.
    c0.set("k", b"v").unwrap();
    assert_eq!(c0.get("k", Duration::ZERO).unwrap(), b"v");
}

#[test]
fn address_in_use_says_which_port_and_what_to_do() {
    let server = start(1, "s");
    let addr = server.local_addr().to_string();
    let e = Server::bind(&addr, ServerOptions::new(1, "s")).unwrap_err();
    let port = server.local_addr().port();
    assert_eq!(
        e.to_string(),
        format!("port {port} on 127.0.0.1 is already in use; pick another with --master-port")
    );
    assert!(matches!(e, RendezvousError::AddrInUse { .. }));
}

#[test]
fn client_waits_for_a_server_that_starts_late() {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let client_addr = addr.clone();
    let t = Instant::now();
    let client = thread::spawn(move || {
        let mut c = Client::connect(&client_addr, "job", 0, 1, LONG)?;
        c.set("k", b"v")?;
        c.get("k", Duration::ZERO)
    });
    thread::sleep(Duration::from_millis(200));
    let server = Server::bind(&addr, ServerOptions::new(1, "job"))
        .unwrap()
        .start();
    assert_eq!(client.join().unwrap().unwrap(), b"v");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    server.shutdown();

    // Nobody ever listens: a timely error naming the address.
    let t = Instant::now();
    let e = Client::connect(&addr, "job", 0, 1, Duration::from_millis(300)).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(matches!(e, RendezvousError::ConnectTimeout { .. }), "{e:?}");
    assert!(e.to_string().contains(&addr), "{e}");
}

#[test]
fn server_shutdown_fails_pending_operations() {
    let server = start(2, "s");
    let addr = server.local_addr().to_string();
    let waiter = {
        let addr = addr.clone();
        thread::spawn(move || {
            let mut c = Client::connect(&addr, "s", 0, 2, LONG).unwrap();
            let t = Instant::now();
            let e = c.get("never", Duration::from_secs(30)).unwrap_err();
            let waited = t.elapsed();
            // Later calls fail at once instead of talking to a dead socket.
            let again = c.set("k", b"v").unwrap_err();
            (e, waited, again)
        })
    };
    let mut idle = Client::connect(&addr, "s", 1, 2, LONG).unwrap();
    thread::sleep(Duration::from_millis(150));
    server.shutdown();
    let (e, waited, again) = waiter.join().unwrap();
    assert!(matches!(e, RendezvousError::ConnectionLost { .. }), "{e:?}");
    assert!(e.to_string().contains(&addr), "{e}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    assert!(
        matches!(again, RendezvousError::ConnectionLost { .. }),
        "{again:?}"
    );
    // An idle client notices on its next call.
    let e = idle.barrier("b", Duration::from_secs(30)).unwrap_err();
    assert!(matches!(e, RendezvousError::ConnectionLost { .. }), "{e:?}");
}

#[test]
fn bad_hellos_are_refused_with_the_reason() {
    let server = start(2, "right");
    let addr = server.local_addr().to_string();
    let reason = |r: Result<Client, RendezvousError>| match r {
        Err(RendezvousError::Rejected { reason, .. }) => reason,
        other => panic!("expected a rejection, got {other:?}"),
    };
    let t = Instant::now();
    assert_eq!(
        reason(Client::connect(&addr, "wrong", 0, 2, LONG)),
        RejectReason::BadSecret
    );
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "a bad secret must not be retried"
    );
    assert_eq!(
        reason(Client::connect(&addr, "right", 0, 3, LONG)),
        RejectReason::WorldSizeMismatch {
            server: 2,
            client: 3
        }
    );
    let held = Client::connect(&addr, "right", 1, 2, LONG).unwrap();
    let e = Client::connect(&addr, "right", 1, 2, LONG).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("rendezvous server at {addr} rejected rank 1: rank 1 is already connected; two workers were given the same rank")
    );
    // Once the holder leaves, the rank can be claimed again at once.
    drop(held);
    let mut again = Client::connect(&addr, "right", 1, 2, LONG).unwrap();
    again.set("k", b"v").unwrap();
    // Wrong secret, wrong world size, and each refused attempt at the held rank.
    assert!(
        server.rejected_connections() >= 3,
        "{}",
        server.rejected_connections()
    );
}

#[test]
fn oversized_requests_are_refused_before_sending() {
    let server = start(1, "s");
    let mut c = Client::connect(&server.local_addr().to_string(), "s", 0, 1, LONG).unwrap();
    let e = c
        .set("k", &vec![0; hist_rendezvous::MAX_VALUE_LEN + 1])
        .unwrap_err();
    assert!(matches!(e, RendezvousError::InvalidArgument(_)), "{e:?}");
    let e = c
        .get(
            &"k".repeat(hist_rendezvous::MAX_KEY_LEN + 1),
            Duration::ZERO,
        )
        .unwrap_err();
    assert!(matches!(e, RendezvousError::InvalidArgument(_)), "{e:?}");
    // A 128-byte NCCL id and a full-size value go through.
    c.set("nccl", &[7u8; 128]).unwrap();
    c.set("big", &vec![255u8; hist_rendezvous::MAX_VALUE_LEN])
        .unwrap();
    assert_eq!(
        c.get("big", Duration::ZERO).unwrap().len(),
        hist_rendezvous::MAX_VALUE_LEN
    );
}

/// One frame as the wire format defines it: u32 big-endian length, then JSON.
fn frame(json: &str) -> Vec<u8> {
    let mut f = (json.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(json.as_bytes());
    f
}

#[test]
fn a_rank_killed_while_waiting_can_rejoin_at_once() {
    use std::io::{Read, Write};
    let server = start(2, "s");
    let addr = server.local_addr().to_string();
    // Speak the protocol by hand: Hello, then a long barrier, then vanish.
    let mut raw = std::net::TcpStream::connect(&addr).unwrap();
    raw.write_all(&frame(
        r#"{"type":"hello","version":1,"secret":"s","rank":1,"world_size":2}"#,
    ))
    .unwrap();
    let mut welcome = [0u8; 4];
    raw.read_exact(&mut welcome).unwrap();
    raw.write_all(&frame(
        r#"{"type":"barrier","name":"b","timeout_ms":30000}"#,
    ))
    .unwrap();
    thread::sleep(Duration::from_millis(50));
    drop(raw);
    let t = Instant::now();
    let mut again = Client::connect(&addr, "s", 1, 2, LONG).unwrap();
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // The dead incarnation's arrival still counts: rank 0 alone completes the round.
    let mut c0 = Client::connect(&addr, "s", 0, 2, LONG).unwrap();
    c0.barrier("b", LONG).unwrap();
    again.set("k", b"v").unwrap();
}
