//! The listening side: binds, accepts, and hands each connection to its own thread.
//! The accept loop never reads from a peer, so no peer can stall it.
use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::connection::serve;
use crate::error::RendezvousError;
use crate::store::Store;

/// Connections still in their handshake beyond this are closed on arrival, which
/// bounds the threads and memory a flood of strangers can cost.
pub const MAX_PENDING: usize = 64;
/// Default for [`ServerOptions::handshake_timeout`].
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the accept loop checks for shutdown when no one is connecting.
const ACCEPT_POLL: Duration = Duration::from_millis(10);

/// What a server needs to know about its job.
#[derive(Clone)]
pub struct ServerOptions {
    /// Number of ranks; clients must claim this world size and a rank below it.
    pub world_size: usize,
    /// Shared job secret every client must present (see [`crate::new_secret`]).
    pub secret: String,
    /// Time a new connection gets to complete Hello; also the time a started frame
    /// gets to arrive in full.
    pub handshake_timeout: Duration,
}

impl ServerOptions {
    /// Options with the default handshake timeout.
    pub fn new(world_size: usize, secret: impl Into<String>) -> ServerOptions {
        ServerOptions {
            world_size,
            secret: secret.into(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

impl std::fmt::Debug for ServerOptions {
    // Hand-written so the secret never lands in a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerOptions")
            .field("world_size", &self.world_size)
            .field("secret", &"<redacted>")
            .field("handshake_timeout", &self.handshake_timeout)
            .finish()
    }
}

/// A bound but not yet serving rendezvous server.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    opts: ServerOptions,
}

impl Server {
    /// Binds (port 0 = any free port). Address in use → [`RendezvousError::AddrInUse`],
    /// whose message suggests `--master-port`.
    pub fn bind(addr: &str, opts: ServerOptions) -> Result<Server, RendezvousError> {
        if opts.world_size == 0 {
            return Err(RendezvousError::InvalidArgument(
                "world size must be at least 1".into(),
            ));
        }
        if opts.secret.is_empty() {
            return Err(RendezvousError::InvalidArgument(
                "the job secret must not be empty".into(),
            ));
        }
        let bind_error = |e: io::Error| match e.kind() {
            io::ErrorKind::AddrInUse => RendezvousError::AddrInUse {
                addr: addr.to_string(),
            },
            io::ErrorKind::InvalidInput => RendezvousError::BadAddress {
                addr: addr.to_string(),
                reason: e.to_string(),
            },
            _ => RendezvousError::Bind {
                addr: addr.to_string(),
                source: e,
            },
        };
        let listener = TcpListener::bind(addr).map_err(bind_error)?;
        // Non-blocking so the accept loop can notice shutdown without a wake-up connection.
        listener.set_nonblocking(true).map_err(bind_error)?;
        let local = listener.local_addr().map_err(bind_error)?;
        Ok(Server {
            listener,
            addr: local,
            opts,
        })
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves on background threads until the handle is shut down or dropped.
    pub fn start(self) -> ServerHandle {
        let shared = Arc::new(Shared {
            store: Store::new(self.opts.world_size),
            opts: self.opts,
            rejected: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            next_conn: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
        });
        let accept_shared = Arc::clone(&shared);
        let listener = self.listener;
        let accept = thread::Builder::new()
            .name("rdzv-accept".into())
            .spawn(move || accept_loop(&listener, &accept_shared));
        // If no thread can be spawned the server cannot serve; clients then report
        // "could not reach" with the address, which is the actionable symptom.
        ServerHandle {
            addr: self.addr,
            shared,
            accept: accept.ok(),
        }
    }
}

/// A running server; dropping it shuts the server down.
pub struct ServerHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections dropped for a bad secret or Hello, garbage, silence, or because
    /// too many handshakes were pending (for logs and tests).
    pub fn rejected_connections(&self) -> usize {
        self.shared.rejected.load(Ordering::Relaxed)
    }

    /// Stops accepting, fails every pending get/barrier, closes all connections and
    /// waits for their threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        let _ = accept.join();
        self.shared.store.close();
        let threads: Vec<JoinHandle<()>> = {
            let mut conns = self.shared.conns.lock().unwrap_or_else(|p| p.into_inner());
            conns
                .values_mut()
                .filter_map(|c| {
                    // Unblocks reads and writes on the connection's thread.
                    let _ = c.stream.shutdown(Shutdown::Both);
                    c.thread.take()
                })
                .collect()
        };
        for t in threads {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("addr", &self.addr)
            .field("rejected_connections", &self.rejected_connections())
            .finish()
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// State shared by the accept loop and the connection threads.
pub(crate) struct Shared {
    pub(crate) opts: ServerOptions,
    pub(crate) store: Store,
    rejected: AtomicUsize,
    pending: AtomicUsize,
    stopping: AtomicBool,
    next_conn: AtomicU64,
    conns: Mutex<HashMap<u64, Registered>>,
}

impl Shared {
    pub(crate) fn count_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// A live connection, kept so shutdown can close its socket and join its thread.
struct Registered {
    stream: TcpStream,
    thread: Option<JoinHandle<()>>,
}

/// One of the [`MAX_PENDING`] handshake slots; released on drop.
pub(crate) struct PendingSlot(Arc<Shared>);

impl PendingSlot {
    fn take(shared: &Arc<Shared>) -> Option<PendingSlot> {
        shared
            .pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_PENDING).then_some(n + 1)
            })
            .ok()
            .map(|_| PendingSlot(Arc::clone(shared)))
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.is_stopping() {
        match listener.accept() {
            Ok((stream, _)) => admit(shared, stream),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // WouldBlock is the idle case; anything else (e.g. out of file
            // descriptors) gets the same pause instead of a busy loop.
            Err(_) => thread::sleep(ACCEPT_POLL),
        }
    }
}

/// Starts a thread for `stream`, or drops it if the server is at its limits.
fn admit(shared: &Arc<Shared>, stream: TcpStream) {
    let accepted = Instant::now();
    let Some(slot) = PendingSlot::take(shared) else {
        shared.count_rejected();
        return;
    };
    // Accepted sockets may inherit the listener's non-blocking mode on some platforms.
    let registered = match stream
        .set_nonblocking(false)
        .and_then(|()| stream.try_clone())
    {
        Ok(s) => s,
        Err(_) => {
            shared.count_rejected();
            return;
        }
    };
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    lock_conns(shared).insert(
        id,
        Registered {
            stream: registered,
            thread: None,
        },
    );
    let conn_shared = Arc::clone(shared);
    let spawned = thread::Builder::new()
        .name(format!("rdzv-conn-{id}"))
        .spawn(move || {
            serve(&conn_shared, stream, id, accepted, slot);
            lock_conns(&conn_shared).remove(&id);
        });
    let mut conns = lock_conns(shared);
    match spawned {
        // If the thread already finished and deregistered, dropping the handle is fine.
        Ok(handle) => {
            if let Some(c) = conns.get_mut(&id) {
                c.thread = Some(handle);
            }
        }
        Err(_) => {
            conns.remove(&id);
            shared.count_rejected();
        }
    }
}

fn lock_conns(shared: &Shared) -> std::sync::MutexGuard<'_, HashMap<u64, Registered>> {
    shared.conns.lock().unwrap_or_else(|p| p.into_inner())
}
