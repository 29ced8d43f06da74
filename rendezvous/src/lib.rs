//! Job rendezvous: an authenticated key-value store with barriers, over TCP.
//!
//! The launcher (or rank 0 under `srun`) runs a [`Server`]; every rank connects a
//! [`Client`] with the job's secret, publishes what others need (addresses, the NCCL
//! unique id) with [`Client::set`], reads it with [`Client::get`], and lines up with
//! [`Client::barrier`]. Plain std threads, no async runtime.
//!
//! Wire format: frames of a 4-byte big-endian length and a JSON body of at most
//! [`MAX_FRAME_LEN`] bytes ([`MAX_HELLO_LEN`] before authentication). Bodies are
//! objects tagged by `"type"`; one response per request, in order:
//!
//! | request                                         | responses                                   |
//! |-------------------------------------------------|---------------------------------------------|
//! | `hello {version, secret, rank, world_size}`     | `welcome {version}` / `rejected {reason,..}`, then close |
//! | `set {key, value: [bytes]}`                     | `ok` / `refused {message}`                  |
//! | `get {key, timeout_ms}`                         | `value {value}` / `get_timeout {key}`       |
//! | `barrier {name, timeout_ms}`                    | `ok` / `barrier_timeout {name, missing, never_connected}` |
//!
//! Any request may also get `refused` (over a limit; the connection stays open) or
//! `shutting_down` (then close). Garbage or a stalled frame closes the connection.
#![warn(missing_docs)]

mod client;
mod connection;
mod error;
mod nodelist;
mod protocol;
mod secret;
mod server;
mod store;

pub use client::Client;
pub use error::{RejectReason, RendezvousError};
pub use nodelist::{first_host_of, first_slurm_host};
pub use protocol::{
    MAX_FRAME_LEN, MAX_HELLO_LEN, MAX_KEY_LEN, MAX_VALUE_LEN, MAX_WAIT, PROTOCOL_VERSION,
};
pub use secret::new_secret;
pub use server::{Server, ServerHandle, ServerOptions, DEFAULT_HANDSHAKE_TIMEOUT, MAX_PENDING};
pub use store::MAX_STORE_BYTES;
