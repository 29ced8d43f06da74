//! Job rendezvous: an authenticated key-value store with barriers, over TCP.
