//! Progress bars with throughput and ETA for long work — training epochs, embedding
//! extraction, evaluation — drawn on stderr only when a person is watching: stderr is a
//! terminal and `HIST_PROGRESS=0` is not set. Logs, pipes,
//! CI and workers under hist-launch (whose output is piped) see no bar and no escape codes;
//! their epoch lines carry throughput and ETA instead.
//!
//! Lines printed while a bar is shown must go through [`println`], which lifts the bar,
//! prints, and draws it again, so the log stays clean.
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bar on screen, if any: [`println`] needs it to keep output and bar apart.
static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Cleared on every rank but 0 of a job, so a shared terminal shows one set of bars.
static THIS_RANK_SHOWS: AtomicBool = AtomicBool::new(true);

/// Says whether this process draws bars at all (a worker calls it with `rank == 0`).
pub fn show_on_this_rank(show: bool) {
    THIS_RANK_SHOWS.store(show, Ordering::Relaxed);
}

/// Whether bars are drawn in this process (see the module docs).
pub fn enabled() -> bool {
    THIS_RANK_SHOWS.load(Ordering::Relaxed) && std::env::var("HIST_PROGRESS").as_deref() != Ok("0") && std::io::stderr().is_terminal()
}

/// One bar; cleared from the screen when finished or dropped.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar for `total` items of `unit` (e.g. "img"), labelled `label`; drawn only when
    /// `show` (e.g. rank 0) and [`enabled`].
    pub fn new(label: &str, total: u64, unit: &str, show: bool) -> Progress {
        if !show || !enabled() || total == 0 {
            return Progress { bar: None };
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(4));
        let template = format!("{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit}  {{per_sec}}  ETA {{eta}}  {{msg}}");
        // The template is fixed text with known keys, so the fallback is never taken.
        let style = ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(label.to_string());
        bar.enable_steady_tick(Duration::from_millis(250));
        if let Ok(mut active) = ACTIVE.lock() {
            *active = Some(bar.clone());
        }
        Progress { bar: Some(bar) }
    }

    /// Advances by `n` items.
    pub fn inc(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    /// Adds `n` items to the total (work found along the way).
    pub fn inc_length(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc_length(n);
        }
    }

    /// Text shown after the ETA (e.g. the running loss).
    pub fn set_message(&self, message: String) {
        if let Some(bar) = &self.bar {
            bar.set_message(message);
        }
    }

    /// True when the bar is drawn.
    pub fn is_visible(&self) -> bool {
        self.bar.is_some()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
            if let Ok(mut active) = ACTIVE.lock() {
                *active = None;
            }
        }
    }
}

/// Prints `line` on stdout without tearing the bar on screen (if any).
pub fn println(line: &str) {
    let active = ACTIVE.lock().ok().and_then(|a| a.clone());
    match active {
        Some(bar) => bar.suspend(|| println!("{line}")),
        None => println!("{line}"),
    }
}
