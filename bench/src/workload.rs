//! The workload engine: one thread per I/O queue, each keeping `queue_depth`
//! commands in flight until an I/O count or a deadline is reached.
//!
//! Invariants that make the numbers and the verification exact:
//! - Every queue owns a disjoint stripe of the region (a contiguous run of
//!   I/O units of `io_bytes`), so no two queues ever touch the same LBA and a
//!   queue knows exactly what it last wrote to each of its units.
//! - With `verify`, a queue never has two commands in flight to the same unit
//!   (it probes to the next idle unit), so a read's expected content is known
//!   when it is issued and does not change until it completes. That needs a
//!   stripe of more units than the queue depth, checked up front.
//! - Nothing is allocated per I/O: each slot (one per command in flight) owns
//!   a preallocated buffer, and the per-unit tables are sized at start.
//! - A write that completes with an error leaves its unit indeterminate; reads
//!   of it are not checked until the next successful write.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tandem_nvmf::spec::status::NvmeStatus;

use crate::block::{check_block, stamp_blocks, stampable, Stamp};
use crate::driver::{Completion, DriverError, IoOp, QueueDriver};
use crate::prng::Rng;
use crate::stats::{wait_for_workers, Progress, QueueStats};

/// The most I/O units a queue tracks for `--verify` (9 bytes each: 36 MiB,
/// or 16 GiB of region at 4 KiB per I/O).
pub const VERIFY_UNITS_PER_QUEUE_MAX: u64 = 1 << 22;
/// How long one poll waits for a completion before the loop looks at its
/// deadline again.
const POLL_WAIT: Duration = Duration::from_millis(10);
/// Marks a unit whose last write failed: its content is unknown.
const SEQ_INDETERMINATE: u64 = u64::MAX;

/// The access pattern, as fio names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    Read,
    Write,
    Randread,
    Randwrite,
    Randrw,
}

impl Pattern {
    /// fio's name of the pattern.
    pub fn name(self) -> &'static str {
        match self {
            Pattern::Read => "read",
            Pattern::Write => "write",
            Pattern::Randread => "randread",
            Pattern::Randwrite => "randwrite",
            Pattern::Randrw => "randrw",
        }
    }

    pub fn is_random(self) -> bool {
        matches!(self, Pattern::Randread | Pattern::Randwrite | Pattern::Randrw)
    }

    /// Whether the pattern never writes (so `--verify` must fill first).
    pub fn is_read_only(self) -> bool {
        matches!(self, Pattern::Read | Pattern::Randread)
    }

    /// The share of reads, in percent, given fio's `rwmixread` for randrw.
    pub fn read_percent(self, rwmixread: u8) -> u8 {
        match self {
            Pattern::Read | Pattern::Randread => 100,
            Pattern::Write | Pattern::Randwrite => 0,
            Pattern::Randrw => rwmixread.min(100),
        }
    }
}

/// Everything a run needs to know, in blocks and bytes already checked
/// against the namespace.
#[derive(Clone, Debug)]
pub struct WorkloadSpec {
    pub pattern: Pattern,
    /// Share of reads for [`Pattern::Randrw`], 0..=100.
    pub read_percent: u8,
    pub io_bytes: usize,
    pub block_size: usize,
    pub queue_depth: usize,
    pub nsid: u32,
    pub region_slba: u64,
    pub region_blocks: u64,
    /// Total I/Os over all queues; the run ends at this or at `duration`.
    pub ios_total: Option<u64>,
    pub duration: Option<Duration>,
    pub verify: bool,
    pub seed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("I/O size {io_bytes} is not a non-zero multiple of the {block_size}-byte block")]
    IoSize { io_bytes: usize, block_size: usize },
    #[error("--verify needs blocks of at least 64 bytes in multiples of 8, not {block_size}")]
    VerifyBlockSize { block_size: usize },
    #[error(
        "the region holds {units} I/O units; {queues} queues need at least {needed} \
         (with --verify, more than the queue depth {queue_depth} per queue)"
    )]
    RegionTooSmall { units: u64, queues: usize, queue_depth: usize, needed: u64 },
    #[error("--verify tracks at most {max} I/O units per queue, the region gives {units}; use --size")]
    VerifyRegionTooLarge { units: u64, max: u64 },
    #[error("a run needs at least one queue and a queue depth of at least 1")]
    NothingToRun,
    #[error("a run needs --ios or --time")]
    NoLimit,
    #[error("queue {queue}: {source}")]
    Queue { queue: usize, source: DriverError },
}

/// The outcome of a run: the merged counters and the measured time.
#[derive(Debug)]
pub struct WorkloadResult {
    pub stats: QueueStats,
    /// The longest measured phase of any queue (the fill for read-only
    /// `--verify` runs is not measured).
    pub elapsed: Duration,
}

impl WorkloadSpec {
    fn units(&self) -> u64 {
        self.region_blocks / (self.io_bytes / self.block_size) as u64
    }

    /// Checks the spec for `queues` queues of the given depth.
    pub fn validate(&self, queues: usize) -> Result<(), WorkloadError> {
        if queues == 0 || self.queue_depth == 0 {
            return Err(WorkloadError::NothingToRun);
        }
        if self.ios_total.is_none() && self.duration.is_none() {
            return Err(WorkloadError::NoLimit);
        }
        if self.block_size == 0 || self.io_bytes == 0 || !self.io_bytes.is_multiple_of(self.block_size) {
            return Err(WorkloadError::IoSize { io_bytes: self.io_bytes, block_size: self.block_size });
        }
        if self.verify && !stampable(self.block_size) {
            return Err(WorkloadError::VerifyBlockSize { block_size: self.block_size });
        }
        let units = self.units();
        let per_queue_min = if self.verify { self.queue_depth as u64 + 1 } else { 1 };
        let needed = per_queue_min * queues as u64;
        if units < needed {
            return Err(WorkloadError::RegionTooSmall {
                units,
                queues,
                queue_depth: self.queue_depth,
                needed,
            });
        }
        if self.verify && units / queues as u64 > VERIFY_UNITS_PER_QUEUE_MAX {
            return Err(WorkloadError::VerifyRegionTooLarge {
                units: units / queues as u64,
                max: VERIFY_UNITS_PER_QUEUE_MAX,
            });
        }
        Ok(())
    }
}

/// Runs `spec` with one thread per driver. `on_tick` is called about once a
/// second on the calling thread while the workers run (progress line,
/// keep-alive).
pub fn run_workload<D: QueueDriver + Send>(
    spec: &WorkloadSpec,
    drivers: Vec<D>,
    progress: &Progress,
    on_tick: &mut dyn FnMut(),
) -> Result<WorkloadResult, WorkloadError> {
    spec.validate(drivers.len())?;
    let queues = drivers.len();
    let abort = AtomicBool::new(false);
    let finished = AtomicUsize::new(0);
    let results: Vec<Result<(QueueStats, Duration), WorkloadError>> = std::thread::scope(|scope| {
        let mut handles = Vec::with_capacity(queues);
        for (index, mut driver) in drivers.into_iter().enumerate() {
            let (abort, finished) = (&abort, &finished);
            handles.push(scope.spawn(move || {
                let mut worker = Worker::new(spec, index, queues, driver.queue_depth(), progress, abort);
                let result = worker.run_all(&mut driver);
                if result.is_err() {
                    abort.store(true, Ordering::Relaxed);
                }
                finished.fetch_add(1, Ordering::Release);
                result.map(|elapsed| (worker.stats, elapsed))
            }));
        }
        wait_for_workers(&finished, queues, on_tick);
        handles
            .into_iter()
            .enumerate()
            .map(|(queue, handle)| {
                match handle.join() {
                    Ok(result) => result,
                    // A worker panic is a bug of ours; surface it as that panic.
                    Err(panic) => std::panic::resume_unwind(panic),
                }
                .map_err(|e| match e {
                    WorkloadError::Queue { source, .. } => WorkloadError::Queue { queue, source },
                    other => other,
                })
            })
            .collect()
    });
    let mut stats = QueueStats::new();
    let mut elapsed = Duration::ZERO;
    for result in results {
        let (queue_stats, queue_elapsed) = result?;
        stats.merge(&queue_stats);
        elapsed = elapsed.max(queue_elapsed);
    }
    Ok(WorkloadResult { stats, elapsed })
}

/// One command in flight (or ready to be).
struct Slot {
    buf: Vec<u8>,
    unit: u64,
    is_read: bool,
    seq: u64,
    started: Instant,
    in_flight: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Writes every unit of the stripe once, unmeasured (read-only --verify).
    Fill,
    Measure,
}

struct Worker<'a> {
    spec: &'a WorkloadSpec,
    writer_id: u32,
    first_unit: u64,
    units: u64,
    blocks_per_io: u64,
    rng: Rng,
    cursor: u64,
    next_seq: u64,
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Per unit of the stripe: the sequence of the last successful write (0:
    /// none in this run). Empty without --verify.
    last_seq: Vec<u64>,
    /// Per unit: a command is in flight to it. Empty without --verify.
    busy: Vec<bool>,
    issued: u64,
    quota: Option<u64>,
    deadline: Option<Instant>,
    stats: QueueStats,
    progress: &'a Progress,
    abort: &'a AtomicBool,
}

impl<'a> Worker<'a> {
    fn new(
        spec: &'a WorkloadSpec,
        index: usize,
        queues: usize,
        driver_depth: usize,
        progress: &'a Progress,
        abort: &'a AtomicBool,
    ) -> Self {
        let units_total = spec.units();
        let first_unit = units_total * index as u64 / queues as u64;
        let units = units_total * (index as u64 + 1) / queues as u64 - first_unit;
        let depth = spec.queue_depth.min(driver_depth.max(1));
        let mut rng = Rng::for_stream(spec.seed, index as u64);
        let slots = (0..depth)
            .map(|_| {
                let mut buf = vec![0u8; spec.io_bytes];
                // Without --verify the payload is random once and reused.
                rng.fill(&mut buf);
                Slot { buf, unit: 0, is_read: false, seq: 0, started: Instant::now(), in_flight: false }
            })
            .collect();
        let tracked = if spec.verify { units as usize } else { 0 };
        let quota = spec
            .ios_total
            .map(|total| total / queues as u64 + u64::from((index as u64) < total % queues as u64));
        Worker {
            spec,
            writer_id: index as u32,
            first_unit,
            units,
            blocks_per_io: (spec.io_bytes / spec.block_size) as u64,
            rng,
            cursor: 0,
            next_seq: 1,
            slots,
            free: (0..depth).rev().collect(),
            last_seq: vec![0; tracked],
            busy: vec![false; tracked],
            issued: 0,
            quota,
            deadline: None,
            stats: QueueStats::new(),
            progress,
            abort,
        }
    }

    /// Fills if needed, then runs the measured phase; returns its duration.
    fn run_all<D: QueueDriver>(&mut self, driver: &mut D) -> Result<Duration, WorkloadError> {
        if self.spec.verify && self.spec.pattern.is_read_only() {
            self.run_phase(driver, Phase::Fill)?;
            // The fill's counts are not part of the measurement; its errors are.
            let errors = (self.stats.errors, std::mem::take(&mut self.stats.first_errors));
            self.stats = QueueStats::new();
            (self.stats.errors, self.stats.first_errors) = errors;
        }
        self.issued = 0;
        self.cursor = 0;
        let started = Instant::now();
        self.deadline = self.spec.duration.map(|d| started + d);
        self.run_phase(driver, Phase::Measure)?;
        Ok(started.elapsed())
    }

    fn may_issue(&self, phase: Phase) -> bool {
        if self.abort.load(Ordering::Relaxed) {
            return false;
        }
        match phase {
            Phase::Fill => self.issued < self.units,
            Phase::Measure => {
                self.quota.is_none_or(|quota| self.issued < quota)
                    && self.deadline.is_none_or(|deadline| Instant::now() < deadline)
            }
        }
    }

    fn run_phase<D: QueueDriver>(&mut self, driver: &mut D, phase: Phase) -> Result<(), WorkloadError> {
        let queue = self.writer_id as usize;
        loop {
            let mut queue_full = false;
            while let Some(slot) = self.free.pop() {
                if !self.may_issue(phase) {
                    self.free.push(slot);
                    break;
                }
                match self.issue(driver, slot, phase) {
                    Ok(()) => {}
                    Err(DriverError::QueueFull) => {
                        // The host can hold a completed command's slot while
                        // it still sends its data: retry after a poll.
                        self.release(slot);
                        queue_full = true;
                        break;
                    }
                    Err(source) => return Err(WorkloadError::Queue { queue, source }),
                }
            }
            let idle = self.free.len() == self.slots.len();
            if idle && !queue_full {
                return Ok(());
            }
            driver
                .poll(Some(POLL_WAIT), &mut |completion| self.complete(completion, phase))
                .map_err(|source| WorkloadError::Queue { queue, source })?;
            if idle {
                // Nothing of ours in flight, so poll did not wait: back off.
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    }

    /// Picks the next unit; with --verify, skips units with a command in flight.
    fn next_unit(&mut self, sequential: bool) -> u64 {
        let mut unit = if sequential {
            let unit = self.cursor % self.units;
            self.cursor += 1;
            unit
        } else {
            self.rng.below(self.units)
        };
        if !self.busy.is_empty() {
            // Terminates: fewer units are busy than the queue depth, and the
            // stripe has more units than that (validate()).
            while self.busy[unit as usize] {
                unit = (unit + 1) % self.units;
            }
            self.busy[unit as usize] = true;
        }
        unit
    }

    fn issue<D: QueueDriver>(
        &mut self,
        driver: &mut D,
        index: usize,
        phase: Phase,
    ) -> Result<(), DriverError> {
        let (sequential, is_read) = match phase {
            Phase::Fill => (true, false),
            Phase::Measure => {
                let pattern = self.spec.pattern;
                let read_percent = pattern.read_percent(self.spec.read_percent);
                let is_read = match read_percent {
                    100 => true,
                    0 => false,
                    percent => self.rng.percent(percent),
                };
                (!pattern.is_random(), is_read)
            }
        };
        let unit = self.next_unit(sequential);
        let slba = self.spec.region_slba + (self.first_unit + unit) * self.blocks_per_io;
        let seq = if is_read { 0 } else { self.next_seq };
        let slot = &mut self.slots[index];
        slot.unit = unit;
        slot.is_read = is_read;
        slot.seq = seq;
        if !is_read {
            self.next_seq += 1;
            if self.spec.verify {
                stamp_blocks(&mut slot.buf, self.spec.block_size, slba, self.writer_id, seq);
            }
        }
        slot.started = Instant::now();
        let nsid = self.spec.nsid;
        let op = if is_read {
            IoOp::Read { nsid, slba, block_count: self.blocks_per_io as u32 }
        } else {
            IoOp::Write { nsid, slba, data: &slot.buf, fua: false }
        };
        driver.submit(op, index as u64)?;
        slot.in_flight = true;
        self.issued += 1;
        Ok(())
    }

    /// Returns a slot (and its unit) to the idle pool.
    fn release(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        slot.in_flight = false;
        if !self.busy.is_empty() {
            self.busy[slot.unit as usize] = false;
        }
        self.free.push(index);
    }

    fn complete(&mut self, completion: Completion<'_>, phase: Phase) {
        let latency = {
            let Some(slot) = self.slots.get(completion.tag as usize).filter(|slot| slot.in_flight) else {
                // A tag we did not submit: the host library or the target is wrong.
                self.stats.errors += 1;
                self.progress.add_error();
                let tag = completion.tag;
                self.stats.note_error(|| format!("completion for unknown tag {tag}"));
                return;
            };
            slot.started.elapsed()
        };
        let index = completion.tag as usize;
        let (unit, is_read, seq) = {
            let slot = &self.slots[index];
            (slot.unit, slot.is_read, slot.seq)
        };
        let slba = self.spec.region_slba + (self.first_unit + unit) * self.blocks_per_io;
        if completion.status != NvmeStatus::SUCCESS {
            self.fail(slba, unit, is_read, completion.status);
        } else if is_read && completion.data.len() != self.spec.io_bytes {
            let (got, want) = (completion.data.len(), self.spec.io_bytes);
            self.stats.errors += 1;
            self.progress.add_error();
            self.stats.note_error(|| format!("read of LBA {slba} returned {got} bytes, not {want}"));
        } else {
            if is_read {
                self.verify_read(slba, unit, completion.data);
                self.stats.reads += 1;
                self.stats.bytes_read += self.spec.io_bytes as u64;
            } else {
                if !self.last_seq.is_empty() {
                    self.last_seq[unit as usize] = seq;
                }
                self.stats.writes += 1;
                self.stats.bytes_written += self.spec.io_bytes as u64;
            }
            if phase == Phase::Measure {
                self.stats.record_latency(latency);
                self.progress.add(self.spec.io_bytes as u64);
            }
        }
        self.release(index);
    }

    fn fail(&mut self, slba: u64, unit: u64, is_read: bool, status: NvmeStatus) {
        self.stats.errors += 1;
        self.progress.add_error();
        if !is_read && !self.last_seq.is_empty() {
            self.last_seq[unit as usize] = SEQ_INDETERMINATE;
        }
        let what = if is_read { "read" } else { "write" };
        self.stats.note_error(|| format!("{what} of LBA {slba} failed: {status}"));
    }

    fn verify_read(&mut self, slba: u64, unit: u64, data: &[u8]) {
        let Some(&seq) = self.last_seq.get(unit as usize) else { return };
        if seq == 0 || seq == SEQ_INDETERMINATE {
            return;
        }
        for (i, block) in data.chunks_exact(self.spec.block_size).enumerate() {
            let expected = Stamp { lba: slba + i as u64, writer_id: self.writer_id, seq };
            match check_block(block, expected) {
                Ok(()) => self.stats.verified_blocks += 1,
                Err(mismatch) => {
                    self.stats.verify_errors += 1;
                    self.progress.add_error();
                    self.stats.note_error(|| mismatch.to_string());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::stamp_block;
    use crate::driver::{MemDisk, MemQueue};

    fn spec(pattern: Pattern) -> WorkloadSpec {
        WorkloadSpec {
            pattern,
            read_percent: 50,
            io_bytes: 4096,
            block_size: 512,
            queue_depth: 8,
            nsid: 1,
            region_slba: 64,
            region_blocks: 8 * 512,
            ios_total: Some(4000),
            duration: None,
            verify: true,
            seed: 11,
        }
    }

    fn run(spec: &WorkloadSpec, queues: Vec<MemQueue>) -> WorkloadResult {
        run_workload(spec, queues, &Progress::default(), &mut || {}).expect("run succeeds")
    }

    #[test]
    fn randrw_with_verify_checks_reads_and_stays_in_region() {
        let disk = MemDisk::new(512, 64 + 8 * 512 + 64);
        let queues = (0..3).map(|i| disk.queue(8).with_reorder(i)).collect();
        let result = run(&spec(Pattern::Randrw), queues);
        let stats = &result.stats;
        assert_eq!(stats.ios(), 4000);
        assert_eq!(stats.errors, 0, "{:?}", stats.first_errors);
        assert_eq!(stats.verify_errors, 0, "{:?}", stats.first_errors);
        assert!(stats.verified_blocks > 1000, "only {} blocks verified", stats.verified_blocks);
        // 50% reads within a few standard deviations.
        assert!((1800..=2200).contains(&stats.reads), "reads {}", stats.reads);
        assert_eq!(stats.latency_ns.len(), 4000);
        // Nothing outside [64, 64 + 4096) was written.
        for lba in (0..64).chain(64 + 4096..64 + 4096 + 64) {
            assert!(disk.read_block(lba).iter().all(|&b| b == 0), "LBA {lba} written");
        }
    }

    #[test]
    fn read_only_verify_fills_first_and_catches_a_corrupted_block() {
        let disk = MemDisk::new(512, 64 + 8 * 512);
        let mut spec = spec(Pattern::Randread);
        spec.ios_total = Some(2000);
        let result = run(&spec, vec![disk.queue(8)]);
        assert_eq!(result.stats.reads, 2000);
        assert_eq!(result.stats.writes, 0, "the fill is not counted");
        assert_eq!(result.stats.verify_errors, 0);
        assert_eq!(result.stats.verified_blocks, 2000 * 8);

        // Sequential reads over a disk where one block holds an older write.
        let mut spec = spec.clone();
        spec.pattern = Pattern::Read;
        spec.ios_total = Some(512);
        let fill_and_corrupt = disk.queue(8);
        // Corrupt after the fill: a queue that tampers on its first read.
        struct Tamper {
            inner: MemQueue,
            disk: MemDisk,
            done: bool,
        }
        impl QueueDriver for Tamper {
            fn submit(&mut self, op: IoOp<'_>, tag: u64) -> Result<(), DriverError> {
                if matches!(op, IoOp::Read { .. }) && !self.done {
                    self.done = true;
                    let mut block = vec![0u8; 512];
                    stamp_block(&mut block, Stamp { lba: 64 + 100, writer_id: 0, seq: 0 });
                    self.disk.write_block(64 + 100, &block);
                }
                self.inner.submit(op, tag)
            }
            fn poll(
                &mut self,
                timeout: Option<Duration>,
                f: &mut dyn FnMut(Completion<'_>),
            ) -> Result<usize, DriverError> {
                self.inner.poll(timeout, f)
            }
            fn queue_depth(&self) -> usize {
                self.inner.queue_depth()
            }
        }
        let tamper = Tamper { inner: fill_and_corrupt, disk: disk.clone(), done: false };
        let result = run_workload(&spec, vec![tamper], &Progress::default(), &mut || {}).unwrap();
        assert_eq!(result.stats.verify_errors, 1, "{:?}", result.stats.first_errors);
        let text = &result.stats.first_errors[0];
        assert!(text.contains("LBA 164") && text.contains("found write 0"), "{text}");
    }

    #[test]
    fn sequential_write_covers_each_stripe_in_order() {
        let disk = MemDisk::new(512, 4096);
        let mut spec = spec(Pattern::Write);
        spec.region_slba = 0;
        spec.region_blocks = 4096;
        spec.ios_total = Some(512); // exactly one pass over 512 units of 8 blocks
        spec.queue_depth = 4;
        let result = run(&spec, vec![disk.queue(4), disk.queue(4)]);
        assert_eq!(result.stats.writes, 512);
        // Every block holds a stamp for its own LBA, by the queue owning its stripe.
        for lba in 0..4096u64 {
            match crate::block::read_block(&disk.read_block(lba)) {
                crate::block::Found::Stamp(stamp) => {
                    assert_eq!(stamp.lba, lba);
                    assert_eq!(stamp.writer_id, u32::from(lba >= 2048));
                }
                other => panic!("LBA {lba}: {other}"),
            }
        }
    }

    #[test]
    fn failed_writes_are_counted_and_not_verified() {
        // A region running past the end of the disk: writes there fail.
        let disk = MemDisk::new(512, 2048);
        let mut spec = spec(Pattern::Randrw);
        spec.region_slba = 0;
        spec.region_blocks = 4096;
        let result = run(&spec, vec![disk.queue(8)]);
        assert!(result.stats.errors > 0);
        assert_eq!(result.stats.verify_errors, 0, "{:?}", result.stats.first_errors);
        assert!(result.stats.first_errors[0].contains("LBA Out of Range"), "{:?}", result.stats.first_errors);
    }

    #[test]
    fn a_dead_queue_ends_the_run_with_its_error() {
        let disk = MemDisk::new(512, 8192);
        let err = run_workload(
            &spec(Pattern::Randwrite),
            vec![disk.queue(8), disk.queue(8).fail_after(100)],
            &Progress::default(),
            &mut || {},
        )
        .unwrap_err();
        assert!(matches!(err, WorkloadError::Queue { queue: 1, .. }), "{err}");
    }

    #[test]
    fn a_queue_that_is_briefly_full_neither_ends_nor_fails_the_run() {
        use crate::driver::Refusing;
        let disk = MemDisk::new(512, 64 + 8 * 512);
        // The fake completes everything in each poll, so every round starts
        // with nothing in flight; period 2 refuses the second submit of each.
        for period in [2, 7] {
            let mut spec = spec(Pattern::Randrw);
            spec.ios_total = Some(500);
            let queue = Refusing::new(disk.queue(8), period);
            let result = run_workload(&spec, vec![queue], &Progress::default(), &mut || {}).unwrap();
            assert_eq!(result.stats.ios(), 500, "period {period}");
            assert_eq!(result.stats.verify_errors + result.stats.errors, 0);
        }
    }

    #[test]
    fn pattern_names_match_the_command_line() {
        use clap::ValueEnum;
        for pattern in Pattern::value_variants() {
            let name = pattern.to_possible_value().expect("every variant is visible").get_name().to_string();
            assert_eq!(pattern.name(), name);
            assert_eq!(serde_json::to_value(pattern).unwrap(), name.as_str());
        }
    }

    #[test]
    fn validation_rejects_impossible_specs() {
        let mut bad = spec(Pattern::Randrw);
        bad.io_bytes = 1000;
        assert!(matches!(bad.validate(1), Err(WorkloadError::IoSize { .. })));
        let mut small = spec(Pattern::Randrw);
        small.region_blocks = 8 * 8; // 8 units, queue depth 8, verify: too few
        assert!(matches!(small.validate(1), Err(WorkloadError::RegionTooSmall { .. })));
        small.verify = false;
        assert!(small.validate(1).is_ok());
        let mut unlimited = spec(Pattern::Read);
        unlimited.ios_total = None;
        assert!(matches!(unlimited.validate(1), Err(WorkloadError::NoLimit)));
    }
}
