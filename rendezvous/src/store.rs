//! The server's shared state: key-value pairs, barriers and which ranks are connected.
//! One mutex guards it all; every operation holds it only for O(key + value) work, and
//! waiters sleep on a condition variable, so no client can hold the lock while it waits.
use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::protocol::{Response, MAX_KEY_LEN, MAX_VALUE_LEN};

/// How often a waiting get or barrier checks that its client is still there, so a
/// rank killed mid-wait frees its slot promptly instead of at the timeout.
const PEER_CHECK: Duration = Duration::from_millis(200);

/// Total bytes of keys and values kept, so a buggy rank cannot exhaust memory.
pub const MAX_STORE_BYTES: usize = 64 << 20;

pub(crate) struct Store {
    world_size: usize,
    state: Mutex<State>,
    changed: Condvar,
}

struct State {
    kv: HashMap<String, Vec<u8>>,
    kv_bytes: usize,
    barriers: HashMap<String, Round>,
    /// The connection id holding each rank, if any.
    owner: Vec<Option<u64>>,
    ever_connected: Vec<bool>,
    next_round: u64,
    closing: bool,
}

/// One filling of a named barrier. Round ids are unique across all names, so a
/// waiter knows its round completed when the name maps to a different id (or none),
/// even if the name has been reused since.
struct Round {
    id: u64,
    arrived: Vec<bool>,
    count: usize,
}

impl Store {
    pub(crate) fn new(world_size: usize) -> Store {
        Store {
            world_size,
            state: Mutex::new(State {
                kv: HashMap::new(),
                kv_bytes: 0,
                barriers: HashMap::new(),
                owner: vec![None; world_size],
                ever_connected: vec![false; world_size],
                next_round: 0,
                closing: false,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock; if something ever did, the state is
        // still consistent enough to keep serving the other ranks.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `rank` as held by connection `conn`; false if a live connection has it.
    pub(crate) fn claim_rank(&self, rank: usize, conn: u64) -> bool {
        let mut s = self.lock();
        match s.owner.get(rank) {
            Some(None) => {
                s.owner[rank] = Some(conn);
                s.ever_connected[rank] = true;
                true
            }
            _ => false,
        }
    }

    /// Frees `rank` if connection `conn` still holds it.
    pub(crate) fn release_rank(&self, rank: usize, conn: u64) {
        let mut s = self.lock();
        if let Some(slot) = s.owner.get_mut(rank) {
            if *slot == Some(conn) {
                *slot = None;
            }
        }
    }

    pub(crate) fn set(&self, key: String, value: Vec<u8>) -> Response {
        if let Some(refusal) = check_sizes(&key, Some(&value)) {
            return refusal;
        }
        let mut s = self.lock();
        if s.closing {
            return Response::ShuttingDown;
        }
        let old = s.kv.get(&key).map_or(0, |v| key.len() + v.len());
        let new_total = s.kv_bytes - old + key.len() + value.len();
        if new_total > MAX_STORE_BYTES {
            return Response::Refused {
                message: format!("store is full ({MAX_STORE_BYTES} bytes of keys and values)"),
            };
        }
        s.kv_bytes = new_total;
        s.kv.insert(key, value);
        drop(s);
        self.changed.notify_all();
        Response::Ok
    }

    /// Returns the value of `key`, waiting up to `timeout`; `gone` says whether the
    /// asking client has disconnected (then waiting is pointless).
    pub(crate) fn get(&self, key: String, timeout: Duration, gone: &dyn Fn() -> bool) -> Response {
        if let Some(refusal) = check_sizes(&key, None) {
            return refusal;
        }
        let deadline = Instant::now().checked_add(timeout);
        let mut s = self.lock();
        loop {
            if s.closing {
                return Response::ShuttingDown;
            }
            if let Some(v) = s.kv.get(&key) {
                return Response::Value { value: v.clone() };
            }
            let (guard, woke) = self.wait(s, deadline, gone);
            match woke {
                Woke::Changed => s = guard,
                Woke::TimedOut => return Response::GetTimeout { key },
                Woke::PeerGone => return peer_gone(),
            }
        }
    }

    /// Enters `rank` into the current round of barrier `name` and waits for the round
    /// to fill, up to `timeout`; `gone` as for [`Store::get`].
    pub(crate) fn barrier(
        &self,
        name: String,
        rank: usize,
        timeout: Duration,
        gone: &dyn Fn() -> bool,
    ) -> Response {
        if let Some(refusal) = check_sizes(&name, None) {
            return refusal;
        }
        if rank >= self.world_size {
            return Response::Refused {
                message: format!("rank {rank} is out of range"),
            };
        }
        let deadline = Instant::now().checked_add(timeout);
        let world = self.world_size;
        let mut s = self.lock();
        if s.closing {
            return Response::ShuttingDown;
        }
        let State {
            barriers,
            next_round,
            ..
        } = &mut *s;
        let round = barriers.entry(name.clone()).or_insert_with(|| {
            *next_round += 1;
            Round {
                id: *next_round,
                arrived: vec![false; world],
                count: 0,
            }
        });
        let my_round = round.id;
        if !round.arrived[rank] {
            round.arrived[rank] = true;
            round.count += 1;
        }
        if round.count == world {
            s.barriers.remove(&name);
            drop(s);
            self.changed.notify_all();
            return Response::Ok;
        }
        loop {
            if s.barriers.get(&name).map(|r| r.id) != Some(my_round) {
                return Response::Ok; // our round filled and was removed
            }
            if s.closing {
                return Response::ShuttingDown;
            }
            let (guard, woke) = self.wait(s, deadline, gone);
            s = guard;
            match woke {
                Woke::Changed => continue,
                // The rank stays counted, as for a timeout below.
                Woke::PeerGone => return peer_gone(),
                Woke::TimedOut => {}
            }
            // Recheck under the lock: the round may have filled as the timer fired.
            let Some(round) = s.barriers.get(&name).filter(|r| r.id == my_round) else {
                return Response::Ok;
            };
            // This rank stays counted: it did reach the barrier, so other ranks timing
            // out report only the truly absent ones, and a retry resumes this round.
            let missing = (0..world).filter(|&r| !round.arrived[r]).collect();
            let never_connected = (0..world).filter(|&r| !s.ever_connected[r]).collect();
            return Response::BarrierTimeout {
                name,
                missing,
                never_connected,
            };
        }
    }

    /// Waits for a change, at most until `deadline` and at most [`PEER_CHECK`], so
    /// callers recheck their condition, the deadline and their client's presence.
    fn wait<'a>(
        &'a self,
        s: MutexGuard<'a, State>,
        deadline: Option<Instant>,
        gone: &dyn Fn() -> bool,
    ) -> (MutexGuard<'a, State>, Woke) {
        let left = deadline.map_or(PEER_CHECK, |d| d.saturating_duration_since(Instant::now()));
        if left.is_zero() {
            return (s, Woke::TimedOut);
        }
        let (guard, _) = self
            .changed
            .wait_timeout(s, left.min(PEER_CHECK))
            .unwrap_or_else(|p| p.into_inner());
        let woke = if gone() {
            Woke::PeerGone
        } else {
            Woke::Changed
        };
        (guard, woke)
    }

    /// Wakes every waiter with ShuttingDown and refuses new operations.
    pub(crate) fn close(&self) {
        self.lock().closing = true;
        self.changed.notify_all();
    }
}

/// Why a wait ended.
enum Woke {
    /// Something changed, or a check interval passed: re-examine the state.
    Changed,
    TimedOut,
    PeerGone,
}

/// The answer for a client that left mid-wait; the connection ends without sending it.
fn peer_gone() -> Response {
    Response::Refused {
        message: "client disconnected while waiting".into(),
    }
}

fn check_sizes(key: &str, value: Option<&[u8]>) -> Option<Response> {
    if key.len() > MAX_KEY_LEN {
        return Some(Response::Refused {
            message: format!(
                "key or name of {} bytes exceeds the {MAX_KEY_LEN}-byte limit",
                key.len()
            ),
        });
    }
    match value {
        Some(v) if v.len() > MAX_VALUE_LEN => Some(Response::Refused {
            message: format!(
                "value of {} bytes exceeds the {MAX_VALUE_LEN}-byte limit",
                v.len()
            ),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn ranks_are_exclusive_until_released_by_their_holder() {
        let st = Store::new(2);
        assert!(st.claim_rank(1, 10));
        assert!(!st.claim_rank(1, 11));
        st.release_rank(1, 11);
        assert!(!st.claim_rank(1, 12));
        st.release_rank(1, 10);
        assert!(st.claim_rank(1, 12));
        assert!(!st.claim_rank(2, 13));
    }

    #[test]
    fn store_limits_are_enforced() {
        let st = Store::new(1);
        assert!(matches!(
            st.set("k".repeat(MAX_KEY_LEN + 1), vec![]),
            Response::Refused { .. }
        ));
        assert!(matches!(
            st.set("k".into(), vec![0; MAX_VALUE_LEN + 1]),
            Response::Refused { .. }
        ));
        assert_eq!(st.set("k".into(), vec![1]), Response::Ok);
        assert_eq!(st.set("k".into(), vec![2, 3]), Response::Ok);
        assert_eq!(
            st.get("k".into(), Duration::ZERO, &|| false),
            Response::Value { value: vec![2, 3] }
        );
    }

    #[test]
    fn barrier_timeout_reports_absent_ranks_and_a_retry_resumes_the_round() {
        let st = Arc::new(Store::new(3));
        st.claim_rank(0, 1);
        st.claim_rank(1, 2);
        let r = st.barrier("b".into(), 0, Duration::from_millis(30), &|| false);
        assert_eq!(
            r,
            Response::BarrierTimeout {
                name: "b".into(),
                missing: vec![1, 2],
                never_connected: vec![2]
            }
        );
        let r = st.barrier("b".into(), 1, Duration::from_millis(30), &|| false);
        assert_eq!(
            r,
            Response::BarrierTimeout {
                name: "b".into(),
                missing: vec![2],
                never_connected: vec![2]
            }
        );
        // Ranks 0 and 1 stay counted, so the late rank 2 completes the round alone.
        assert_eq!(
            st.barrier("b".into(), 2, Duration::ZERO, &|| false),
            Response::Ok
        );
        assert!(st.lock().barriers.is_empty());
    }

    #[test]
    fn a_departed_client_stops_waiting() {
        let st = Store::new(2);
        let t = Instant::now();
        let r = st.barrier("b".into(), 0, Duration::from_secs(30), &|| true);
        assert!(matches!(r, Response::Refused { .. }), "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn close_wakes_waiters() {
        let st = Arc::new(Store::new(2));
        let st2 = Arc::clone(&st);
        let t =
            std::thread::spawn(move || st2.get("never".into(), Duration::from_secs(30), &|| false));
        std::thread::sleep(Duration::from_millis(50));
        st.close();
        assert_eq!(t.join().unwrap(), Response::ShuttingDown);
    }
}
