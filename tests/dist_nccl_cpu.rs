//! The NCCL backend on a machine without a GPU: the library loads and reports its version
//! (libnccl needs no device for that), and everything that does need a GPU or a proper
//! library fails with a clear one-line error instead of a panic or a hang.
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use hist::dist::nccl::{nccl_info, nccl_version, Nccl};
use hist::error::HistError;
use hist_rendezvous::{Client, Server, ServerOptions};

/// HIST_NCCL_LIBRARY is process-wide: tests that read or set it take turns.
static ENV_LOCK: Mutex<()> = Mutex::new(());

fn env_lock() -> MutexGuard<'static, ()> {
    ENV_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `body` with HIST_NCCL_LIBRARY set to `value` (or unset), restoring it afterwards.
fn with_library_env<T>(value: Option<&str>, body: impl FnOnce() -> T) -> T {
    let _guard = env_lock();
    let saved = std::env::var_os("HIST_NCCL_LIBRARY");
    match value {
        Some(v) => std::env::set_var("HIST_NCCL_LIBRARY", v),
        None => std::env::remove_var("HIST_NCCL_LIBRARY"),
    }
    let out = body();
    match saved {
        Some(v) => std::env::set_var("HIST_NCCL_LIBRARY", v),
        None => std::env::remove_var("HIST_NCCL_LIBRARY"),
    }
    out
}

fn dist_message(err: HistError) -> String {
    match err {
        HistError::Dist(message) => message,
        other => panic!("expected a Dist error, got {other}"),
    }
}

#[test]
fn the_wheel_library_loads_and_reports_its_version() {
    let info = with_library_env(None, nccl_info).expect("torch's pip install brings libnccl.so.2");
    eprintln!("loaded {} (NCCL {}, code {})", info.library, info.version, info.code);
    assert!(info.version.starts_with("2."), "unexpected version {}", info.version);
    assert!(info.code >= 21000, "NCCL {} predates ncclAvg (2.10)", info.version);
    assert_eq!(info.version.split('.').count(), 3);
    let version = with_library_env(None, nccl_version).unwrap();
    assert_eq!(version, info.version);
}

#[test]
fn an_explicit_path_that_does_not_exist_is_named_in_the_error() {
    let missing = "/nonexistent/hist-test/libnccl.so.2";
    let err = with_library_env(Some(missing), nccl_version).expect_err("a missing file cannot load");
    let message = dist_message(err);
    assert!(message.contains(missing), "{message}");
    assert!(message.contains("no such file"), "{message}");
    assert!(message.contains("HIST_NCCL_LIBRARY is set, so only it was tried"), "{message}");
    assert!(!message.contains('\n'), "{message}");
}

#[test]
fn an_explicit_file_that_is_not_a_library_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("libnccl.so.2");
    std::fs::write(&fake, b"not an ELF file").unwrap();
    let fake = fake.to_string_lossy().into_owned();
    let message = dist_message(with_library_env(Some(&fake), nccl_version).unwrap_err());
    assert!(message.contains(&fake) && message.contains("cannot load the NCCL library"), "{message}");
}

#[test]
fn a_library_without_the_nccl_symbols_is_a_clear_error() {
    // libc loads fine but is not NCCL.
    let message = dist_message(with_library_env(Some("libc.so.6"), nccl_version).unwrap_err());
    assert!(message.contains("libc.so.6 has no symbol ncclGetVersion"), "{message}");
}

#[test]
fn a_communicator_without_a_gpu_fails_fast_and_says_why() {
    if tch::Cuda::is_available() {
        eprintln!("skipped: this machine has a CUDA device (scripts/gpu_check.sh covers it)");
        return;
    }
    let secret = "dist-nccl-cpu-test";
    let server = Server::bind("127.0.0.1:0", ServerOptions::new(1, secret)).unwrap().start();
    let addr = server.local_addr().to_string();
    let mut store = Client::connect(&addr, secret, 0, 1, Duration::from_secs(10)).unwrap();
    let started = std::time::Instant::now();
    let err = with_library_env(None, || Nccl::new(&mut store, 0)).err().expect("no GPU here");
    let message = dist_message(err);
    assert!(message.contains("tch::Cuda::is_available() is false"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    drop(store);
    server.shutdown();
}
