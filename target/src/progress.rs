//! Progress of long work (the recovery replay at start, the drain at
//! shutdown; later the takeover drain and the resync): a line redrawn in place
//! on a terminal, and a log line per interval otherwise, so a node that takes
//! minutes to replay a large ring says what it is doing instead of looking hung.
//!
//! [`Progress`] keeps the arithmetic and the rate limit apart from the clock
//! and the output: [`Progress::line_at`] is pure (tests feed it times), and
//! [`Progress::update`] reads the clock and writes to stderr or the log.

use std::io::{IsTerminal, Write};
use std::time::Instant;

/// How often a log line is written when stderr is not a terminal.
pub const LOG_INTERVAL_MS: u64 = 1000;
/// How often the terminal line is redrawn.
pub const TERMINAL_INTERVAL_MS: u64 = 100;

/// Where progress goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// A line on stderr rewritten with `\r`, ended by `finish`.
    Terminal,
    /// A `tracing` info line per [`LOG_INTERVAL_MS`].
    Log,
}

/// One piece of long work: `total_records` records, `total_bytes` bytes.
pub struct Progress {
    what: &'static str,
    nsid: u32,
    total_records: u64,
    total_bytes: u64,
    output: Output,
    started: Instant,
    /// When the last line was produced (ms since `started`); None: never.
    last_ms: Option<u64>,
}

impl Progress {
    /// Starts reporting `what` (e.g. "replaying staged writes") for namespace
    /// `nsid`; the output is the terminal if stderr is one, else the log.
    pub fn new(what: &'static str, nsid: u32, total_records: u64, total_bytes: u64) -> Progress {
        let output = if std::io::stderr().is_terminal() { Output::Terminal } else { Output::Log };
        Progress::with_output(what, nsid, total_records, total_bytes, output)
    }

    pub fn with_output(
        what: &'static str,
        nsid: u32,
        total_records: u64,
        total_bytes: u64,
        output: Output,
    ) -> Progress {
        Progress { what, nsid, total_records, total_bytes, output, started: Instant::now(), last_ms: None }
    }

    fn interval_ms(&self) -> u64 {
        match self.output {
            Output::Terminal => TERMINAL_INTERVAL_MS,
            Output::Log => LOG_INTERVAL_MS,
        }
    }

    /// The line to show at `now_ms` (since the start) with `done_records`
    /// and `done_bytes` done, or None if the last one is too recent. The
    /// first call always produces a line, so the work is announced at once.
    pub fn line_at(&mut self, now_ms: u64, done_records: u64, done_bytes: u64) -> Option<String> {
        if self.last_ms.is_some_and(|last| now_ms < last + self.interval_ms()) {
            return None;
        }
        self.last_ms = Some(now_ms);
        Some(self.format(now_ms, done_records, done_bytes))
    }

    fn format(&self, now_ms: u64, done_records: u64, done_bytes: u64) -> String {
        let percent = (done_records * 100).checked_div(self.total_records).unwrap_or(100);
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let rate = if now_ms == 0 { 0.0 } else { mib(done_bytes) * 1000.0 / now_ms as f64 };
        format!(
            "ns {}: {}: {done_records}/{} records ({percent}%), {:.1}/{:.1} MiB, {rate:.1} MiB/s",
            self.nsid,
            self.what,
            self.total_records,
            mib(done_bytes),
            mib(self.total_bytes),
        )
    }

    fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Shows progress now if the interval has passed.
    pub fn update(&mut self, done_records: u64, done_bytes: u64) {
        let now_ms = self.elapsed_ms();
        if let Some(line) = self.line_at(now_ms, done_records, done_bytes) {
            self.emit(&line, false);
        }
    }

    /// Shows the final state (always) and ends the terminal line.
    pub fn finish(&mut self, done_records: u64, done_bytes: u64) {
        let line = self.format(self.elapsed_ms(), done_records, done_bytes);
        self.emit(&line, true);
    }

    fn emit(&self, line: &str, last: bool) {
        match self.output {
            Output::Terminal => {
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[2K{line}");
                if last {
                    let _ = writeln!(err);
                }
            }
            Output::Log => tracing::info!(progress = %line, done = last, "{}", self.what),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_at_the_start_then_one_per_interval_with_counts() {
        let mut p = Progress::with_output("replaying staged writes", 1, 1000, 1000 * 4096, Output::Log);
        let first = p.line_at(0, 0, 0).expect("the work is announced at once");
        assert_eq!(first, "ns 1: replaying staged writes: 0/1000 records (0%), 0.0/3.9 MiB, 0.0 MiB/s");
        assert_eq!(p.line_at(10, 5, 5 * 4096), None, "not before the interval");
        assert_eq!(p.line_at(LOG_INTERVAL_MS - 1, 100, 100 * 4096), None);
        let second = p.line_at(LOG_INTERVAL_MS, 256, 256 << 12).expect("one per interval");
        assert_eq!(second, "ns 1: replaying staged writes: 256/1000 records (25%), 1.0/3.9 MiB, 1.0 MiB/s");
        assert_eq!(p.line_at(LOG_INTERVAL_MS + 1, 300, 0), None);
        assert!(p.line_at(3 * LOG_INTERVAL_MS, 1000, 1000 * 4096).is_some_and(|l| l.contains("(100%)")));
    }

    #[test]
    fn the_terminal_redraws_more_often_and_nothing_to_do_is_100_percent() {
        let mut p = Progress::with_output("draining", 2, 0, 0, Output::Terminal);
        assert!(p.line_at(0, 0, 0).is_some_and(|l| l.contains("0/0 records (100%)")));
        assert_eq!(p.line_at(TERMINAL_INTERVAL_MS - 1, 0, 0), None);
        assert!(p.line_at(TERMINAL_INTERVAL_MS, 0, 0).is_some());
    }
}
