//! The searches' worker threads: one per share of the work, each running libtorch
//! single-threaded — with libtorch's OpenMP threads doing the products, they would
//! spin-wait (for milliseconds) after every one, on the cores the host work needs.
use crate::error::Result;

/// Products (a search's, or a chunk's) below which one thread does the work: spawning
/// workers would cost more than it saves.
const PARALLEL_MIN: usize = 1 << 20;

/// Worker threads for `products` products: one below [`PARALLEL_MIN`], else libtorch's
/// thread count.
pub(super) fn workers_for(products: usize) -> usize {
    if products < PARALLEL_MIN {
        1
    } else {
        tch::get_num_threads().max(1) as usize
    }
}

/// Puts libtorch's thread count back when dropped.
struct ThreadCount(i32);

impl Drop for ThreadCount {
    fn drop(&mut self) {
        tch::set_num_threads(self.0);
    }
}

/// `work` on each of `states`, one thread each (in this thread, as it is, when there is
/// only one), gradients off; the results in the order of `states`.
pub(super) fn on_threads<S: Send, R: Send>(states: Vec<S>, work: impl Fn(S) -> Result<R> + Sync) -> Result<Vec<R>> {
    if states.len() <= 1 {
        return states.into_iter().map(work).collect();
    }
    // Workers set libtorch's thread count to 1, which also sets MKL's global count.
    let _restore = ThreadCount(tch::get_num_threads());
    let work = &work;
    std::thread::scope(|s| {
        let handles: Vec<_> = states
            .into_iter()
            .map(|state| {
                s.spawn(move || {
                    tch::set_num_threads(1);
                    let _guard = tch::no_grad_guard();
                    work(state)
                })
            })
            .collect();
        // A panic in a worker is a bug here, not bad input: pass it on.
        handles.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    })
}
