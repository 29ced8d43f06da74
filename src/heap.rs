//! glibc's malloc settings for a process that allocates the same large tensors every step.
//!
//! libtorch takes CPU tensor memory from malloc. By default glibc serves blocks above its
//! mmap threshold (128 KiB, rising to at most 32 MiB) with fresh mmaps and returns freed
//! memory at the top of the heap once more than 128 KiB is free, so every step's tensors
//! (a HIST loss at SOP's C holds several of 23–46 MiB) arrive as untouched pages and
//! page-fault in again: a fifth of the loss's time in a profile. Keeping freed memory in the
//! heap makes the next step reuse it (docs/benchmarks.md, "HIST loss"; docs/usage.md,
//! "Memory"); the resident set then stays near the peak instead of breathing with each step.
use std::ffi::c_int;

/// Blocks below this come from the heap (so they are reused once freed); glibc versions
/// that cap the threshold at half their largest arena heap (32 MiB) get the cap.
const MMAP_THRESHOLDS: [c_int; 2] = [1 << 30, 32 << 20];
/// Free memory at the top of a heap kept rather than returned to the kernel (2 GiB).
const TRIM_THRESHOLD: c_int = c_int::MAX;
/// Extra memory asked of the kernel whenever the heap grows.
const TOP_PAD: c_int = 256 << 20;

/// The environment variables through which a user sets glibc's malloc; any of them set
/// means the user's settings stand.
const USER_SETTINGS: [&str; 3] = ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"];

/// Whether the user set glibc's malloc: one of [`USER_SETTINGS`], or a `glibc.malloc.`
/// tunable in GLIBC_TUNABLES (containers set other tunables there, e.g. rseq).
fn user_set_malloc() -> bool {
    USER_SETTINGS.iter().any(|name| std::env::var_os(name).is_some())
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc."))
}

/// Applies the settings above unless the user set glibc's malloc through the environment;
/// returns whether it did. A no-op off glibc.
pub fn keep_freed_memory() -> bool {
    if user_set_malloc() {
        return false;
    }
    apply()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> bool {
    // SAFETY: mallopt only changes malloc's parameters, under malloc's own lock.
    unsafe {
        MMAP_THRESHOLDS.iter().any(|&t| libc::mallopt(libc::M_MMAP_THRESHOLD, t) == 1)
            && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
            && libc::mallopt(libc::M_TOP_PAD, TOP_PAD) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> bool {
    false
}

#[cfg(test)]
mod tests {
    /// glibc takes every setting (the test binary runs without MALLOC_* variables in CI;
    /// with one set, the user's choice stands and nothing is applied).
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_settings() {
        if super::user_set_malloc() {
            assert!(!super::keep_freed_memory());
        } else {
            assert!(super::keep_freed_memory());
        }
    }
}
