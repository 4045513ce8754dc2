//! Counters and latency histograms of one run, and the figures they give.
//!
//! Each worker thread owns a [`QueueStats`] (no sharing on the I/O path) and
//! records every completion's latency, in nanoseconds, into its own
//! HDR histogram; the histograms are merged once at the end, which is exact
//! (HDR histograms add bucket by bucket). A shared [`Progress`] pair of
//! relaxed atomic counters feeds the once-a-second progress line.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies above this are recorded as this (a minute: a stuck command).
pub const LATENCY_NS_MAX: u64 = 60_000_000_000;
/// How many error descriptions a run keeps for its report.
pub const ERRORS_KEPT_MAX: usize = 16;

/// What one worker counted.
#[derive(Clone, Debug)]
pub struct QueueStats {
    pub reads: u64,
    pub writes: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Commands that completed with an error status or not at all.
    pub errors: u64,
    /// Blocks that did not hold the write this run last made there.
    pub verify_errors: u64,
    /// Blocks whose content was checked against a stamp.
    pub verified_blocks: u64,
    pub latency_ns: Histogram<u64>,
    /// The first few errors, in words.
    pub first_errors: Vec<String>,
}

impl QueueStats {
    pub fn new() -> Self {
        QueueStats {
            reads: 0,
            writes: 0,
            bytes_read: 0,
            bytes_written: 0,
            errors: 0,
            verify_errors: 0,
            verified_blocks: 0,
            // 3 significant digits over 1 ns .. 60 s: a fixed ~200 KiB table.
            latency_ns: Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3)
                .expect("constant histogram bounds are valid"),
            first_errors: Vec::with_capacity(ERRORS_KEPT_MAX),
        }
    }

    pub fn record_latency(&mut self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).clamp(1, LATENCY_NS_MAX);
        // Cannot fail: the value is clamped into the histogram's range.
        let _ = self.latency_ns.record(ns);
    }

    /// Keeps `describe()` if fewer than [`ERRORS_KEPT_MAX`] are kept; the
    /// closure keeps the formatting off the path once the list is full.
    pub fn note_error(&mut self, describe: impl FnOnce() -> String) {
        if self.first_errors.len() < ERRORS_KEPT_MAX {
            self.first_errors.push(describe());
        }
    }

    pub fn ios(&self) -> u64 {
        self.reads + self.writes
    }

    pub fn merge(&mut self, other: &QueueStats) {
        self.reads += other.reads;
        self.writes += other.writes;
        self.bytes_read += other.bytes_read;
        self.bytes_written += other.bytes_written;
        self.errors += other.errors;
        self.verify_errors += other.verify_errors;
        self.verified_blocks += other.verified_blocks;
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency_ns.add(&other.latency_ns);
        for error in &other.first_errors {
            if self.first_errors.len() < ERRORS_KEPT_MAX {
                self.first_errors.push(error.clone());
            }
        }
    }

    /// The figures of this run over `elapsed`.
    pub fn figures(&self, elapsed: Duration) -> Figures {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        let bytes = self.bytes_read + self.bytes_written;
        let h = &self.latency_ns;
        let us = |ns: u64| ns as f64 / 1000.0;
        let latency_us = if h.is_empty() {
            LatencySummary::default()
        } else {
            LatencySummary {
                mean: h.mean() / 1000.0,
                p50: us(h.value_at_quantile(0.50)),
                p99: us(h.value_at_quantile(0.99)),
                p99_9: us(h.value_at_quantile(0.999)),
                max: us(h.max()),
            }
        };
        Figures {
            seconds,
            ios: self.ios(),
            reads: self.reads,
            writes: self.writes,
            iops: self.ios() as f64 / seconds,
            mb_per_s: bytes as f64 / seconds / 1e6,
            latency_us,
            errors: self.errors,
            verify_errors: self.verify_errors,
            verified_blocks: self.verified_blocks,
            first_errors: self.first_errors.clone(),
        }
    }
}

impl Default for QueueStats {
    fn default() -> Self {
        QueueStats::new()
    }
}

/// Completion latency percentiles, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

/// The result of one measured run (NVMe/TCP or the TCP baseline).
#[derive(Clone, Debug, Serialize)]
pub struct Figures {
    pub seconds: f64,
    pub ios: u64,
    pub reads: u64,
    pub writes: u64,
    pub iops: f64,
    /// Megabytes (10^6 bytes) per second, reads and writes together.
    pub mb_per_s: f64,
    pub latency_us: LatencySummary,
    pub errors: u64,
    pub verify_errors: u64,
    pub verified_blocks: u64,
    pub first_errors: Vec<String>,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = &self.latency_us;
        write!(
            f,
            "{:.0} IOPS, {:.1} MB/s, {} I/Os in {:.2} s; latency us p50 {:.1} p99 {:.1} p99.9 {:.1} max {:.1}; \
             errors {}",
            self.iops, self.mb_per_s, self.ios, self.seconds, l.p50, l.p99, l.p99_9, l.max, self.errors
        )?;
        if self.verified_blocks > 0 || self.verify_errors > 0 {
            write!(f, ", verified blocks {}, verify errors {}", self.verified_blocks, self.verify_errors)?;
        }
        Ok(())
    }
}

/// Counters the workers bump and the progress line reads.
#[derive(Debug, Default)]
pub struct Progress {
    pub ios: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
}

impl Progress {
    pub fn add(&self, bytes: u64) {
        self.ios.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn add_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.ios.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
}

/// Waits until `finished` reaches `workers`, calling `on_tick` about once a
/// second meanwhile (the progress line): the main thread of a run whose
/// workers count themselves out.
pub fn wait_for_workers(finished: &AtomicUsize, workers: usize, on_tick: &mut dyn FnMut()) {
    let mut next_tick = Instant::now() + Duration::from_secs(1);
    while finished.load(Ordering::Acquire) < workers {
        std::thread::sleep(Duration::from_millis(50));
        if Instant::now() >= next_tick {
            on_tick();
            next_tick += Duration::from_secs(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_histograms_equal_one_histogram_of_everything() {
        let mut a = QueueStats::new();
        let mut b = QueueStats::new();
        let mut all = QueueStats::new();
        for i in 1..=1000u64 {
            let latency = Duration::from_micros(i);
            if i % 3 == 0 {
                a.record_latency(latency);
                a.reads += 1;
            } else {
                b.record_latency(latency);
                b.writes += 1;
            }
            all.record_latency(latency);
        }
        a.merge(&b);
        assert_eq!(a.ios(), 1000);
        assert_eq!(a.latency_ns.len(), all.latency_ns.len());
        for q in [0.5, 0.99, 0.999, 1.0] {
            assert_eq!(a.latency_ns.value_at_quantile(q), all.latency_ns.value_at_quantile(q));
        }
        let figures = a.figures(Duration::from_secs(2));
        assert_eq!(figures.iops, 500.0);
        // 3 significant digits: p50 of 1..1000 us is 500 us within 0.1%.
        assert!((figures.latency_us.p50 - 500.0).abs() <= 1.0, "{:?}", figures.latency_us);
        assert!((figures.latency_us.max - 1000.0).abs() <= 1.0, "{:?}", figures.latency_us);
    }

    #[test]
    fn out_of_range_latencies_are_clamped_not_lost() {
        let mut stats = QueueStats::new();
        stats.record_latency(Duration::ZERO);
        stats.record_latency(Duration::from_secs(3600));
        assert_eq!(stats.latency_ns.len(), 2);
        assert!(stats.latency_ns.max() >= LATENCY_NS_MAX - LATENCY_NS_MAX / 1000);
    }

    #[test]
    fn kept_errors_are_bounded() {
        let mut stats = QueueStats::new();
        for i in 0..100 {
            stats.note_error(|| format!("error {i}"));
        }
        let mut other = QueueStats::new();
        other.note_error(|| "other".into());
        stats.merge(&other);
        assert_eq!(stats.first_errors.len(), ERRORS_KEPT_MAX);
        assert_eq!(stats.first_errors[0], "error 0");
    }
}
