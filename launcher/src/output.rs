//! Multiplexes the workers' output: each line is printed whole with a `[rank R] ` prefix
//! (stdout to stdout, stderr to stderr), and the last lines of each rank are kept so a
//! failure can be shown with its context after the other ranks have buried it.
use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

/// Lines kept per rank for the failure summary.
pub const TAIL_LINES: usize = 20;

/// A line longer than this is printed in pieces rather than buffered without bound (a
/// worker printing a progress bar with '\r' and no '\n' must not eat the launcher's memory).
const MAX_LINE_BYTES: u64 = 64 * 1024;

/// Which of the launcher's own streams a worker stream goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The worker's stdout, printed on the launcher's stdout.
    Stdout,
    /// The worker's stderr, printed on the launcher's stderr.
    Stderr,
}

/// The last [`TAIL_LINES`] lines of one rank, stdout and stderr interleaved as they came.
#[derive(Debug, Default, Clone)]
pub struct Tail(Arc<Mutex<VecDeque<String>>>);

impl Tail {
    fn push(&self, line: String) {
        // A poisoned lock only means another pump panicked mid-push; the lines are still
        // worth showing.
        let mut lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() == TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// The kept lines, oldest first.
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }
}

/// The prefix every line of rank `rank` carries.
pub fn prefix(rank: usize) -> String {
    format!("[rank {rank}] ")
}

/// Copies `reader` line by line to the launcher's `stream` with the rank prefix, keeping
/// the tail; returns at end of file (the worker and everything it started has exited or
/// closed the stream).
pub async fn pump<R: AsyncRead + Unpin>(rank: usize, reader: R, stream: Stream, tail: Tail) {
    pump_to(rank, reader, tail, |prefix, line| emit(stream, prefix, line)).await
}

/// As [`pump`], handing each (prefix, line) to `sink` instead of a standard stream.
async fn pump_to<R: AsyncRead + Unpin>(rank: usize, reader: R, tail: Tail, mut sink: impl FnMut(&[u8], &[u8])) {
    let prefix = prefix(rank);
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader).take(MAX_LINE_BYTES).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        sink(prefix.as_bytes(), &line);
        tail.push(String::from_utf8_lossy(&line).into_owned());
    }
}

/// Prints one line of the launcher's own on stderr, `hist-launch: ` first, ignoring write
/// errors like every other output of the launcher (eprintln! would panic on them).
pub fn say(line: &str) {
    emit(Stream::Stderr, b"hist-launch: ", line.as_bytes());
}

/// Writes one prefixed line under the stream's lock so lines of different ranks never
/// interleave mid-line. Write errors (a closed pipe after `| head`) are ignored: losing
/// output must not stop supervision.
pub fn emit(stream: Stream, prefix: &[u8], line: &[u8]) {
    fn write(mut out: impl Write, prefix: &[u8], line: &[u8]) {
        let _ = out.write_all(prefix).and_then(|_| out.write_all(line)).and_then(|_| out.write_all(b"\n"));
        let _ = out.flush();
    }
    match stream {
        Stream::Stdout => write(std::io::stdout().lock(), prefix, line),
        Stream::Stderr => write(std::io::stderr().lock(), prefix, line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn keeps_the_last_lines_without_line_endings() {
        let text: String = (0..25).map(|i| format!("line {i}\r\n")).collect::<String>() + "partial";
        let tail = Tail::default();
        let mut printed = Vec::new();
        pump_to(7, text.as_bytes(), tail.clone(), |p, l| printed.push([p, l].concat())).await;
        assert_eq!(printed.len(), 26);
        assert_eq!(printed[0], b"[rank 7] line 0");
        let lines = tail.lines();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines[0], "line 6");
        assert_eq!(lines[TAIL_LINES - 2], "line 24");
        assert_eq!(lines[TAIL_LINES - 1], "partial");
        assert_eq!(prefix(7), "[rank 7] ");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn overlong_lines_are_split_not_buffered() {
        let text = vec![b'x'; MAX_LINE_BYTES as usize + 10];
        let tail = Tail::default();
        pump_to(0, text.as_slice(), tail.clone(), |_, _| {}).await;
        let lines = tail.lines();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].len(), 10);
    }
}
