//! The crash-consistency checker: proves that no acknowledged write is lost,
//! reordered or corrupted across a fault (a killed node, a failover, a cut
//! link).
//!
//! A [`CrashChecker`] writes one self-describing block at a time (see
//! `block.rs`: LBA, writer id, sequence number, CRC32C) to random LBAs of a
//! region, and remembers for every LBA the last acknowledged write and the
//! writes whose outcome is unknown (in flight when the connection died, or
//! completed with an error). After the fault, [`CrashChecker::verify`] reads
//! every touched LBA back and judges it:
//! - it must hold the last acknowledged write, or one of the unresolved writes
//!   issued *after* it (a write may land without its ack reaching us);
//! - an older write of ours is **old** (an acknowledged write was lost or
//!   reordered), zeros or another writer's stamp is **lost**, anything else
//!   (bad CRC, a stamp for another LBA, a sequence we never sent there,
//!   unstamped bytes) is **garbage**;
//! - an LBA with no acknowledged write may hold anything except garbage.
//!
//! Invariants: sequence numbers are unique and increase with issue order; the
//! checker never has two writes in flight to one LBA (it picks another LBA),
//! so for each LBA "issued after the last ack" is "a larger sequence". Writer
//! ids must be unique per run on a region: stamps of other writer ids count as
//! foreign content. The judging ([`CrashChecker::judge`]) is pure, so tests
//! feed it synthetic acks, unresolved writes and read-backs without a network.
//!
//! The optional log file records, in fixed 17-byte records, each write before
//! it is submitted (flushed to the file first) and each outcome, so another
//! process can rebuild the state with [`CrashChecker::from_log`] if this one is
//! killed. The log is written with plain `write`, not fsync: it survives the
//! death of this process, not of this machine.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tandem_nvmf::spec::status::NvmeStatus;

use crate::block::{read_block, stamp_block, stampable, Found, Stamp};
use crate::driver::{DriverError, IoOp, QueueDriver};
use crate::prng::Rng;

/// The most LBAs a checker tracks (16 bytes each).
pub const REGION_BLOCKS_MAX: u64 = 1 << 24;
/// The most writes a checker keeps in flight per queue.
pub const QUEUE_DEPTH_MAX: usize = 64;
const _: () = assert!(QUEUE_DEPTH_MAX <= 64, "run() keeps a u64 bit mask of slots");
/// How long `run` waits for writes in flight after being told to stop.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `verify` keeps retrying a read answered with a transient status
/// (ANA transition, namespace not ready) while a takeover completes.
const VERIFY_RETRY_FOR: Duration = Duration::from_secs(30);
const LOG_RECORD_BYTES: usize = 17;

/// The LBAs a checker writes: `block_count` blocks from `slba` of `nsid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub nsid: u32,
    pub slba: u64,
    pub block_count: u64,
    pub block_size: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum CrashError {
    #[error("region of {block_count} blocks: a checker needs 1..={max}")]
    RegionSize { block_count: u64, max: u64 },
    #[error("blocks of {block_size} bytes cannot carry a stamp (64 bytes at least, a multiple of 8)")]
    BlockSize { block_size: usize },
    #[error("crash log {path}: {source}")]
    Log { path: String, source: std::io::Error },
    #[error("crash log {path}: record {record} is malformed")]
    LogRecord { path: String, record: u64 },
}

/// Per-LBA state: 0 means none.
#[derive(Clone, Copy, Debug, Default)]
struct LbaState {
    /// The largest acknowledged sequence.
    acked: u64,
    /// The write in flight now (at most one).
    in_flight: u64,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// `stop` was set, or the crash log could not be written (the reason is
    /// in `queue_errors`: we do not send a write we could not record).
    Stopped,
    Deadline,
    /// Every queue failed (the fault under test, usually).
    QueuesFailed,
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct RunSummary {
    pub writes_issued: u64,
    pub writes_acked: u64,
    /// Completed with an error status: their blocks are indeterminate.
    pub writes_failed: u64,
    /// In flight when their queue died or the drain timed out.
    pub writes_abandoned: u64,
    pub ended: RunEnd,
    /// Why each failed queue failed.
    pub queue_errors: Vec<String>,
}

/// The checker's judgement of one LBA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Holds its last acknowledged write.
    Acked,
    /// Holds an unresolved write issued after the last acknowledged one.
    NewerUnresolved,
    /// No write was acknowledged and the block holds one of our unresolved
    /// writes or content from before this run.
    Unacknowledged,
    Fault(LbaFault),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Zeros or another writer's stamp where an acknowledged write should be.
    Lost,
    /// An older write of ours: an acknowledged write was lost or reordered.
    Old,
    /// Corrupt, misdirected or never-written content.
    Garbage,
}

/// One LBA that broke the rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("LBA {lba}: {kind:?}: last acknowledged write {acked_seq}, found {found}")]
pub struct LbaFault {
    pub lba: u64,
    pub kind: FaultKind,
    /// The last acknowledged sequence (0: none).
    pub acked_seq: u64,
    pub found: Found,
}

/// What a clean verification saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub lbas_checked: u64,
    pub acked: u64,
    pub newer_unresolved: u64,
    pub unacknowledged: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(
        "{} lost, {} old, {} garbage of {} LBAs checked; first: {}",
        lost.len(), old.len(), garbage.len(), report.lbas_checked,
        lost.first().or(old.first()).or(garbage.first()).map_or(String::new(), |f| f.to_string())
    )]
    Violations { report: VerifyReport, lost: Vec<LbaFault>, old: Vec<LbaFault>, garbage: Vec<LbaFault> },
    #[error("verify read of LBA {lba} failed: {status}")]
    ReadFailed { lba: u64, status: NvmeStatus },
    #[error("verify read of LBA {lba} returned {len} bytes")]
    ShortRead { lba: u64, len: usize },
    #[error("verify queue: {0}")]
    Queue(#[from] DriverError),
}

/// See the module documentation.
#[derive(Debug)]
pub struct CrashChecker {
    region: Region,
    writer_id: u32,
    rng: Rng,
    next_seq: u64,
    lbas: Vec<LbaState>,
    /// Per LBA offset: writes with no known outcome, sequence ascending.
    /// Sparse: only faults and error statuses put anything here.
    unresolved: HashMap<u64, Vec<u64>>,
    log: Option<(String, BufWriter<File>)>,
    queue_depth_max: usize,
}

impl CrashChecker {
    pub fn new(region: Region, writer_id: u32, seed: u64) -> Result<Self, CrashError> {
        if region.block_count == 0 || region.block_count > REGION_BLOCKS_MAX {
            return Err(CrashError::RegionSize { block_count: region.block_count, max: REGION_BLOCKS_MAX });
        }
        if !stampable(region.block_size) {
            return Err(CrashError::BlockSize { block_size: region.block_size });
        }
        Ok(CrashChecker {
            region,
            writer_id,
            rng: Rng::new(seed),
            next_seq: 1,
            lbas: vec![LbaState::default(); region.block_count as usize],
            unresolved: HashMap::new(),
            log: None,
            queue_depth_max: QUEUE_DEPTH_MAX,
        })
    }

    /// Also records every write and outcome in `path` (appended to).
    pub fn with_log(mut self, path: &Path) -> Result<Self, CrashError> {
        let name = path.display().to_string();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| CrashError::Log { path: name.clone(), source })?;
        self.log = Some((name, BufWriter::new(file)));
        Ok(self)
    }

    /// Limits the writes in flight per queue (default [`QUEUE_DEPTH_MAX`]).
    pub fn with_queue_depth(mut self, depth: usize) -> Self {
        self.queue_depth_max = depth.clamp(1, QUEUE_DEPTH_MAX);
        self
    }

    /// Rebuilds a checker from the log another checker wrote; writes it
    /// issued without a recorded outcome become unresolved.
    pub fn from_log(region: Region, writer_id: u32, path: &Path) -> Result<Self, CrashError> {
        let name = path.display().to_string();
        let mut bytes = Vec::new();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|source| CrashError::Log { path: name.clone(), source })?;
        let mut checker = CrashChecker::new(region, writer_id, 0)?;
        // A trailing partial record is a write cut short by the crash.
        for (record, chunk) in bytes.chunks_exact(LOG_RECORD_BYTES).enumerate() {
            let mut word = [0u8; 8];
            word.copy_from_slice(&chunk[1..9]);
            let lba = u64::from_le_bytes(word);
            word.copy_from_slice(&chunk[9..17]);
            let seq = u64::from_le_bytes(word);
            let malformed = || CrashError::LogRecord { path: name.clone(), record: record as u64 };
            if lba < region.slba || lba - region.slba >= region.block_count || seq == 0 {
                return Err(malformed());
            }
            match chunk[0] {
                b'I' => {
                    let state = &mut checker.lbas[(lba - region.slba) as usize];
                    if state.in_flight != 0 {
                        // The earlier write's outcome was not logged.
                        let earlier = state.in_flight;
                        checker.abandon_write(lba, earlier);
                    }
                    checker.lbas[(lba - region.slba) as usize].in_flight = seq;
                    checker.next_seq = checker.next_seq.max(seq + 1);
                }
                b'A' => checker.ack_write(lba, seq),
                b'F' => checker.abandon_write(lba, seq),
                b'C' => checker.cancel_write(lba, seq),
                _ => return Err(malformed()),
            }
        }
        for offset in 0..checker.lbas.len() {
            let seq = checker.lbas[offset].in_flight;
            if seq != 0 {
                checker.abandon_write(region.slba + offset as u64, seq);
            }
        }
        Ok(checker)
    }

    pub fn region(&self) -> Region {
        self.region
    }

    pub fn writer_id(&self) -> u32 {
        self.writer_id
    }

    fn log_record(&mut self, kind: u8, lba: u64, seq: u64) {
        if let Some((_, log)) = self.log.as_mut() {
            let mut record = [0u8; LOG_RECORD_BYTES];
            record[0] = kind;
            record[1..9].copy_from_slice(&lba.to_le_bytes());
            record[9..17].copy_from_slice(&seq.to_le_bytes());
            // A log that cannot be written is reported by flush_log().
            let _ = log.write_all(&record);
        }
    }

    fn flush_log(&mut self) -> Result<(), String> {
        match self.log.as_mut() {
            Some((name, log)) => log.flush().map_err(|e| format!("crash log {name}: {e}")),
            None => Ok(()),
        }
    }

    fn offset(&self, lba: u64) -> usize {
        assert!(
            lba >= self.region.slba && lba - self.region.slba < self.region.block_count,
            "LBA {lba} outside the checker's region"
        );
        (lba - self.region.slba) as usize
    }

    /// Records a new write to `lba` (which must have none in flight) and
    /// returns its sequence number.
    pub fn issue_write_at(&mut self, lba: u64) -> u64 {
        let offset = self.offset(lba);
        assert_eq!(self.lbas[offset].in_flight, 0, "two writes in flight to LBA {lba}");
        let seq = self.next_seq;
        self.next_seq += 1;
        self.lbas[offset].in_flight = seq;
        self.log_record(b'I', lba, seq);
        seq
    }

    /// Picks a random LBA with no write in flight, records a write to it and
    /// stamps `block` with it. None if every LBA has a write in flight.
    pub fn begin_write(&mut self, block: &mut [u8]) -> Option<(u64, u64)> {
        let count = self.region.block_count;
        let mut offset = self.rng.below(count);
        for _ in 0..count {
            if self.lbas[offset as usize].in_flight == 0 {
                let lba = self.region.slba + offset;
                let seq = self.issue_write_at(lba);
                stamp_block(block, Stamp { lba, writer_id: self.writer_id, seq });
                return Some((lba, seq));
            }
            offset = (offset + 1) % count;
        }
        None
    }

    /// The write `seq` to `lba` was acknowledged.
    pub fn ack_write(&mut self, lba: u64, seq: u64) {
        let offset = self.offset(lba);
        let state = &mut self.lbas[offset];
        if state.in_flight == seq {
            state.in_flight = 0;
        }
        if seq > state.acked {
            state.acked = seq;
            // Unresolved writes issued before this ack may no longer be found.
            if let Some(list) = self.unresolved.get_mut(&(offset as u64)) {
                list.retain(|&s| s > seq);
                if list.is_empty() {
                    self.unresolved.remove(&(offset as u64));
                }
            }
        }
        self.log_record(b'A', lba, seq);
    }

    /// The outcome of write `seq` to `lba` is unknown (an error status, or
    /// its queue died): the block may hold it, or what it held before.
    pub fn abandon_write(&mut self, lba: u64, seq: u64) {
        let offset = self.offset(lba);
        let state = &mut self.lbas[offset];
        if state.in_flight == seq {
            state.in_flight = 0;
        }
        if seq > state.acked {
            let list = self.unresolved.entry(offset as u64).or_default();
            if let Err(at) = list.binary_search(&seq) {
                list.insert(at, seq);
            }
        }
        self.log_record(b'F', lba, seq);
    }

    /// The write was never submitted (the queue was full).
    fn cancel_write(&mut self, lba: u64, seq: u64) {
        let offset = self.offset(lba);
        if self.lbas[offset].in_flight == seq {
            self.lbas[offset].in_flight = 0;
        }
        self.log_record(b'C', lba, seq);
    }

    /// The LBAs written at least once (acknowledged or not), ascending.
    pub fn touched_lbas(&self) -> impl Iterator<Item = u64> + '_ {
        self.lbas.iter().enumerate().filter_map(move |(offset, state)| {
            let touched =
                state.acked != 0 || state.in_flight != 0 || self.unresolved.contains_key(&(offset as u64));
            touched.then_some(self.region.slba + offset as u64)
        })
    }

    /// The last acknowledged sequence of `lba` (0: none).
    pub fn acked_seq(&self, lba: u64) -> u64 {
        self.lbas[self.offset(lba)].acked
    }

    /// Judges what a read of `lba` returned. Pure: no I/O.
    pub fn judge(&self, lba: u64, block: &[u8]) -> Verdict {
        let offset = self.offset(lba);
        let state = self.lbas[offset];
        let unresolved = self.unresolved.get(&(offset as u64)).map_or(&[][..], |v| v.as_slice());
        let is_unresolved = |seq: u64| seq == state.in_flight || unresolved.binary_search(&seq).is_ok();
        let found = read_block(block);
        let fault = |kind| Verdict::Fault(LbaFault { lba, kind, acked_seq: state.acked, found });
        match found {
            Found::Stamp(stamp) if stamp.writer_id == self.writer_id && stamp.lba == lba => {
                if state.acked != 0 && stamp.seq == state.acked {
                    Verdict::Acked
                } else if stamp.seq > state.acked && is_unresolved(stamp.seq) {
                    if state.acked == 0 {
                        Verdict::Unacknowledged
                    } else {
                        Verdict::NewerUnresolved
                    }
                } else if stamp.seq < state.acked {
                    fault(FaultKind::Old)
                } else {
                    // A sequence we never sent to this LBA (or an unresolved
                    // write that an acknowledged one superseded... which
                    // `ack_write` prunes, so: never sent).
                    fault(FaultKind::Garbage)
                }
            }
            Found::Stamp(stamp) if stamp.writer_id != self.writer_id => {
                if state.acked == 0 {
                    Verdict::Unacknowledged
                } else {
                    fault(FaultKind::Lost)
                }
            }
            Found::Zeros if state.acked == 0 => Verdict::Unacknowledged,
            Found::Zeros => fault(FaultKind::Lost),
            // Prior content of an LBA we never got an ack for is allowed...
            Found::Unstamped if state.acked == 0 => Verdict::Unacknowledged,
            // ...but never a torn block or a block misdirected from another LBA.
            _ => fault(FaultKind::Garbage),
        }
    }

    /// Writes until `stop` is set, `deadline` passes or every queue fails,
    /// then waits (a bounded time) for the writes in flight. A queue that
    /// fails mid-run is dropped from the run; its writes in flight become
    /// unresolved. Never returns an error: a dying connection is the point.
    pub fn run<D: QueueDriver>(
        &mut self,
        queues: &mut [D],
        stop: &AtomicBool,
        deadline: Option<Instant>,
    ) -> RunSummary {
        let block_size = self.region.block_size;
        let nsid = self.region.nsid;
        let mut summary = RunSummary {
            writes_issued: 0,
            writes_acked: 0,
            writes_failed: 0,
            writes_abandoned: 0,
            ended: RunEnd::Stopped,
            queue_errors: Vec::new(),
        };
        // Per queue: one buffer and one (lba, seq) per slot, allocated once.
        struct QueueState {
            buffers: Vec<Vec<u8>>,
            writes: Vec<Option<(u64, u64)>>,
            completed: Vec<(usize, NvmeStatus)>,
            alive: bool,
        }
        let mut states: Vec<QueueState> = queues
            .iter()
            .map(|queue| {
                let depth = queue.queue_depth().clamp(1, self.queue_depth_max);
                QueueState {
                    buffers: vec![vec![0u8; block_size]; depth],
                    writes: vec![None; depth],
                    completed: Vec::with_capacity(depth),
                    alive: true,
                }
            })
            .collect();
        let single = queues.len() == 1;
        let mut drain_until: Option<Instant> = None;
        let mut log_failed = false;
        loop {
            let now = Instant::now();
            if drain_until.is_none() {
                if stop.load(Ordering::Relaxed) || log_failed {
                    summary.ended = RunEnd::Stopped;
                    drain_until = Some(now + DRAIN_TIMEOUT);
                } else if deadline.is_some_and(|d| now >= d) {
                    summary.ended = RunEnd::Deadline;
                    drain_until = Some(now + DRAIN_TIMEOUT);
                }
            }
            let issuing = drain_until.is_none();
            let mut any_in_flight = false;
            let mut any_alive = false;
            let mut any_queue_full = false;
            for (queue, state) in queues.iter_mut().zip(states.iter_mut()) {
                if !state.alive {
                    continue;
                }
                // Issue into every idle slot; the log records them before submission.
                let mut failure: Option<DriverError> = None;
                if issuing {
                    // Bit `slot` set: a write prepared in this round (depth <= 64).
                    let mut new_slots = 0u64;
                    for slot in 0..state.writes.len() {
                        if state.writes[slot].is_none() {
                            if let Some(write) = self.begin_write(&mut state.buffers[slot]) {
                                state.writes[slot] = Some(write);
                                new_slots |= 1 << slot;
                                summary.writes_issued += 1;
                            }
                        }
                    }
                    if let Err(reason) = self.flush_log() {
                        // Without a record of what we send we must not send it.
                        summary.queue_errors.push(reason);
                        log_failed = true;
                        for slot in (0..state.writes.len()).filter(|&slot| new_slots & (1 << slot) != 0) {
                            if let Some((lba, seq)) = state.writes[slot].take() {
                                self.cancel_write(lba, seq);
                                summary.writes_issued -= 1;
                            }
                        }
                        new_slots = 0;
                    }
                    for slot in (0..state.writes.len()).filter(|&slot| new_slots & (1 << slot) != 0) {
                        let Some((lba, seq)) = state.writes[slot] else { continue };
                        let op = IoOp::Write { nsid, slba: lba, data: &state.buffers[slot], fua: false };
                        match queue.submit(op, slot as u64) {
                            Ok(()) => {}
                            Err(DriverError::QueueFull) => {
                                state.writes[slot] = None;
                                summary.writes_issued -= 1;
                                self.cancel_write(lba, seq);
                                any_queue_full = true;
                            }
                            // Sent or not, its outcome is unknown; the writes
                            // prepared after it are abandoned with it below,
                            // which only widens what verify accepts for them.
                            Err(error) => {
                                failure = Some(error);
                                break;
                            }
                        }
                    }
                }
                if failure.is_none() {
                    state.completed.clear();
                    let timeout = if single { Duration::from_millis(5) } else { Duration::ZERO };
                    let slots = state.writes.len();
                    let completed = &mut state.completed;
                    let polled = queue.poll(Some(timeout), &mut |c| {
                        if (c.tag as usize) < slots {
                            completed.push((c.tag as usize, c.status));
                        }
                    });
                    if let Err(error) = polled {
                        failure = Some(error);
                    }
                    for &(slot, status) in &state.completed {
                        let Some((lba, seq)) = state.writes[slot].take() else { continue };
                        if status == NvmeStatus::SUCCESS {
                            self.ack_write(lba, seq);
                            summary.writes_acked += 1;
                        } else {
                            self.abandon_write(lba, seq);
                            summary.writes_failed += 1;
                        }
                    }
                }
                if let Some(error) = failure {
                    state.alive = false;
                    summary.queue_errors.push(error.to_string());
                    for write in state.writes.iter_mut() {
                        if let Some((lba, seq)) = write.take() {
                            self.abandon_write(lba, seq);
                            summary.writes_abandoned += 1;
                        }
                    }
                    continue;
                }
                any_alive = true;
                any_in_flight |= state.writes.iter().any(Option::is_some);
            }
            // The log's acks are buffered; losing them only loosens a later check.
            if !any_alive {
                summary.ended = RunEnd::QueuesFailed;
                break;
            }
            if let Some(until) = drain_until {
                if !any_in_flight {
                    break;
                }
                if Instant::now() >= until {
                    for state in states.iter_mut() {
                        for write in state.writes.iter_mut() {
                            if let Some((lba, seq)) = write.take() {
                                self.abandon_write(lba, seq);
                                summary.writes_abandoned += 1;
                            }
                        }
                    }
                    break;
                }
            }
            if !single || any_queue_full {
                // Several queues are polled without waiting, and a full queue
                // with nothing of ours in flight does not wait: do not spin.
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        let _ = self.flush_log();
        summary
    }

    /// Reads every touched LBA through `queue` and judges it. Reads answered
    /// with ANA transition or namespace-not-ready are retried for a while (a
    /// takeover in progress); other error statuses fail the verification.
    pub fn verify<D: QueueDriver>(&self, mut queue: D) -> Result<VerifyReport, VerifyError> {
        let nsid = self.region.nsid;
        let block_size = self.region.block_size;
        let depth = queue.queue_depth().clamp(1, self.queue_depth_max);
        let mut report = VerifyReport::default();
        let (mut lost, mut old, mut garbage) = (Vec::new(), Vec::new(), Vec::new());
        let mut pending = self.touched_lbas();
        let mut retry: Vec<u64> = Vec::new();
        let mut in_flight = 0usize;
        let mut slots: Vec<Option<u64>> = vec![None; depth];
        let retry_until = Instant::now() + VERIFY_RETRY_FOR;
        let mut outcome: Result<(), VerifyError> = Ok(());
        loop {
            let mut queue_full = false;
            for (slot, entry) in slots.iter_mut().enumerate() {
                if entry.is_some() {
                    continue;
                }
                let Some(lba) = retry.pop().or_else(|| pending.next()) else { break };
                match queue.submit(IoOp::Read { nsid, slba: lba, block_count: 1 }, slot as u64) {
                    Ok(()) => {
                        *entry = Some(lba);
                        in_flight += 1;
                    }
                    // The host may still be sending a finished command's
                    // data; try again after a poll.
                    Err(DriverError::QueueFull) => {
                        retry.push(lba);
                        queue_full = true;
                        break;
                    }
                    Err(error) => return Err(error.into()),
                }
            }
            if in_flight == 0 && !queue_full {
                break;
            }
            let mut retried = false;
            queue.poll(Some(Duration::from_millis(10)), &mut |c| {
                let Some(lba) = slots.get_mut(c.tag as usize).and_then(Option::take) else { return };
                in_flight -= 1;
                let transient =
                    c.status == NvmeStatus::ANA_TRANSITION || c.status == NvmeStatus::NAMESPACE_NOT_READY;
                if transient && Instant::now() < retry_until {
                    retry.push(lba);
                    retried = true;
                    return;
                }
                if c.status != NvmeStatus::SUCCESS {
                    if outcome.is_ok() {
                        outcome = Err(VerifyError::ReadFailed { lba, status: c.status });
                    }
                    return;
                }
                if c.data.len() != block_size {
                    if outcome.is_ok() {
                        outcome = Err(VerifyError::ShortRead { lba, len: c.data.len() });
                    }
                    return;
                }
                report.lbas_checked += 1;
                match self.judge(lba, c.data) {
                    Verdict::Acked => report.acked += 1,
                    Verdict::NewerUnresolved => report.newer_unresolved += 1,
                    Verdict::Unacknowledged => report.unacknowledged += 1,
                    Verdict::Fault(fault) => match fault.kind {
                        FaultKind::Lost => lost.push(fault),
                        FaultKind::Old => old.push(fault),
                        FaultKind::Garbage => garbage.push(fault),
                    },
                }
            })?;
            if outcome.is_err() {
                break;
            }
            if retried {
                // The target is mid-takeover; give it time rather than spin.
                std::thread::sleep(Duration::from_millis(20));
            } else if queue_full && in_flight == 0 {
                // Nothing in flight, so poll did not wait: back off briefly.
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        outcome?;
        if lost.is_empty() && old.is_empty() && garbage.is_empty() {
            Ok(report)
        } else {
            Err(VerifyError::Violations { report, lost, old, garbage })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::MemDisk;

    const REGION: Region = Region { nsid: 1, slba: 100, block_count: 64, block_size: 512 };

    fn block(lba: u64, writer_id: u32, seq: u64) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        stamp_block(&mut b, Stamp { lba, writer_id, seq });
        b
    }

    fn kind(verdict: Verdict) -> Option<FaultKind> {
        match verdict {
            Verdict::Fault(fault) => Some(fault.kind),
            _ => None,
        }
    }

    #[test]
    fn verdicts_for_synthetic_acks_unresolved_writes_and_readbacks() {
        let mut c = CrashChecker::new(REGION, 7, 1).unwrap();
        let lba = 110;
        let s1 = c.issue_write_at(lba);
        c.ack_write(lba, s1);
        let s2 = c.issue_write_at(lba);
        c.ack_write(lba, s2);
        let s3 = c.issue_write_at(lba);
        c.abandon_write(lba, s3); // in flight when the connection died

        assert_eq!(c.judge(lba, &block(lba, 7, s2)), Verdict::Acked);
        assert_eq!(c.judge(lba, &block(lba, 7, s3)), Verdict::NewerUnresolved, "an in-flight newer write");
        assert_eq!(kind(c.judge(lba, &block(lba, 7, s1))), Some(FaultKind::Old), "an older write");
        assert_eq!(kind(c.judge(lba, &vec![0u8; 512])), Some(FaultKind::Lost));
        assert_eq!(kind(c.judge(lba, &block(lba, 8, s2))), Some(FaultKind::Lost), "another writer");
        let noise: Vec<u8> = (0..512u32).map(|i| (i * 13 + 1) as u8).collect();
        assert_eq!(kind(c.judge(lba, &noise)), Some(FaultKind::Garbage));
        let mut torn = block(lba, 7, s2);
        torn[300] ^= 0x10;
        assert_eq!(kind(c.judge(lba, &torn)), Some(FaultKind::Garbage), "a flipped bit");
        assert_eq!(kind(c.judge(lba, &block(lba + 1, 7, s2))), Some(FaultKind::Garbage), "misdirected");
        assert_eq!(kind(c.judge(lba, &block(lba, 7, s3 + 10))), Some(FaultKind::Garbage), "never sent");
        let fault = match c.judge(lba, &block(lba, 7, s1)) {
            Verdict::Fault(fault) => fault,
            other => panic!("{other:?}"),
        };
        let text = fault.to_string();
        assert!(text.contains("LBA 110") && text.contains(&format!("write {s2}")), "{text}");
    }

    #[test]
    fn an_ack_supersedes_older_unresolved_writes() {
        let mut c = CrashChecker::new(REGION, 1, 1).unwrap();
        let s1 = c.issue_write_at(120);
        c.abandon_write(120, s1); // an error status: may or may not have landed
                                  // Before any ack, either the old content or the unresolved write is fine.
        assert_eq!(c.judge(120, &vec![0u8; 512]), Verdict::Unacknowledged);
        assert_eq!(c.judge(120, &block(120, 1, s1)), Verdict::Unacknowledged);
        let s2 = c.issue_write_at(120);
        c.ack_write(120, s2);
        assert_eq!(c.judge(120, &block(120, 1, s2)), Verdict::Acked);
        assert_eq!(kind(c.judge(120, &block(120, 1, s1))), Some(FaultKind::Old));
        // A never-acked LBA still may not hold a torn block.
        let s3 = c.issue_write_at(121);
        c.abandon_write(121, s3);
        let mut torn = block(121, 1, s3);
        torn[511] ^= 1;
        assert_eq!(kind(c.judge(121, &torn)), Some(FaultKind::Garbage));
        assert_eq!(c.touched_lbas().collect::<Vec<_>>(), vec![120, 121]);
    }

    #[test]
    fn run_survives_a_dying_queue_and_verify_accepts_the_disk() {
        let disk = MemDisk::new(512, 200);
        let mut c = CrashChecker::new(REGION, 3, 42).unwrap().with_queue_depth(8);
        let mut queues = vec![
            disk.queue(8).with_reorder(1).fail_after(300),
            disk.queue(8).with_reorder(2).fail_after(500),
        ];
        let summary = c.run(&mut queues, &AtomicBool::new(false), None);
        assert_eq!(summary.ended, RunEnd::QueuesFailed);
        assert_eq!(summary.queue_errors.len(), 2);
        assert!(summary.writes_acked > 600, "{summary:?}");
        assert!(summary.writes_abandoned > 0, "{summary:?}");
        assert_eq!(
            summary.writes_issued,
            summary.writes_acked + summary.writes_failed + summary.writes_abandoned,
            "{summary:?}"
        );
        let report = c.verify(disk.queue(4)).expect("the fake loses nothing");
        assert_eq!(report.lbas_checked, 64);
        assert_eq!(report.acked + report.newer_unresolved + report.unacknowledged, 64);

        // Now break the disk the ways a bad failover would.
        let victim = c.touched_lbas().find(|&lba| c.acked_seq(lba) > 1).expect("an acked LBA");
        disk.write_block(victim, &vec![0u8; 512]);
        let err = c.verify(disk.queue(4)).unwrap_err();
        match err {
            VerifyError::Violations { lost, old, garbage, .. } => {
                assert_eq!(lost.iter().map(|f| f.lba).collect::<Vec<_>>(), vec![victim]);
                assert!(old.is_empty() && garbage.is_empty());
            }
            other => panic!("{other}"),
        }
        disk.write_block(victim, &block(victim, 3, 1));
        let old_seq = c.acked_seq(victim);
        assert!(old_seq > 1);
        match c.verify(disk.queue(4)).unwrap_err() {
            VerifyError::Violations { old, .. } => assert_eq!(old[0].lba, victim),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn run_stops_on_request_and_on_deadline() {
        let disk = MemDisk::new(512, 200);
        let mut c = CrashChecker::new(REGION, 3, 5).unwrap();
        let stopped = AtomicBool::new(true);
        let summary = c.run(&mut [disk.queue(4)], &stopped, None);
        assert_eq!((summary.ended, summary.writes_issued), (RunEnd::Stopped, 0));
        let summary = c.run(&mut [disk.queue(4)], &AtomicBool::new(false), Some(Instant::now()));
        assert_eq!(summary.ended, RunEnd::Deadline);
        let summary = c.run(
            &mut [disk.queue(4)],
            &AtomicBool::new(false),
            Some(Instant::now() + Duration::from_millis(20)),
        );
        assert_eq!(summary.ended, RunEnd::Deadline);
        assert_eq!(summary.writes_acked, summary.writes_issued);
        assert!(c.verify(disk.queue(4)).is_ok());
    }

    #[test]
    fn the_log_rebuilds_the_same_state() {
        let dir = std::env::temp_dir().join(format!("tandem-crashlog-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let disk = MemDisk::new(512, 200);
        let mut c = CrashChecker::new(REGION, 9, 77).unwrap().with_log(&dir).unwrap();
        c.run(&mut [disk.queue(8).with_reorder(3).fail_after(400)], &AtomicBool::new(false), None);
        let rebuilt = CrashChecker::from_log(REGION, 9, &dir).unwrap();
        assert_eq!(rebuilt.touched_lbas().collect::<Vec<_>>(), c.touched_lbas().collect::<Vec<_>>());
        for lba in c.touched_lbas() {
            assert_eq!(rebuilt.acked_seq(lba), c.acked_seq(lba));
            let content = disk.read_block(lba);
            assert_eq!(rebuilt.judge(lba, &content), c.judge(lba, &content), "LBA {lba}");
        }
        assert!(rebuilt.verify(disk.queue(4)).is_ok());
        // A record cut short by a crash is ignored; a bad one is an error.
        let mut file = OpenOptions::new().append(true).open(&dir).unwrap();
        file.write_all(&[b'I', 1, 2]).unwrap();
        assert!(CrashChecker::from_log(REGION, 9, &dir).is_ok());
        file.write_all(&[0u8; 14]).unwrap();
        file.write_all(&[b'X'; 17]).unwrap();
        assert!(matches!(CrashChecker::from_log(REGION, 9, &dir), Err(CrashError::LogRecord { .. })));
        let _ = std::fs::remove_file(&dir);
    }

    #[test]
    fn a_briefly_full_queue_loses_no_write_and_no_verify_read() {
        use crate::driver::Refusing;
        let disk = MemDisk::new(512, 200);
        let mut c = CrashChecker::new(REGION, 4, 8).unwrap();
        let mut queues = [Refusing::new(disk.queue(8), 3)];
        let summary =
            c.run(&mut queues, &AtomicBool::new(false), Some(Instant::now() + Duration::from_millis(30)));
        assert_eq!(summary.writes_issued, summary.writes_acked, "{summary:?}");
        let touched = c.touched_lbas().count() as u64;
        let report = c.verify(Refusing::new(disk.queue(8), 2)).unwrap();
        assert_eq!(report.lbas_checked, touched);
        assert_eq!(report.acked, touched);
    }

    /// Answers the first `remaining` commands with `status` instead of theirs.
    struct Answering<D> {
        inner: D,
        remaining: u32,
        status: NvmeStatus,
    }

    impl<D: QueueDriver> QueueDriver for Answering<D> {
        fn submit(&mut self, op: IoOp<'_>, tag: u64) -> Result<(), DriverError> {
            self.inner.submit(op, tag)
        }
        fn poll(
            &mut self,
            timeout: Option<Duration>,
            on_completion: &mut dyn FnMut(crate::driver::Completion<'_>),
        ) -> Result<usize, DriverError> {
            let (remaining, status) = (&mut self.remaining, self.status);
            self.inner.poll(timeout, &mut |mut c| {
                if *remaining > 0 {
                    *remaining -= 1;
                    c.status = status;
                    c.data = &[];
                }
                on_completion(c)
            })
        }
        fn queue_depth(&self) -> usize {
            self.inner.queue_depth()
        }
    }

    #[test]
    fn verify_retries_a_takeover_and_fails_on_a_real_error() {
        let disk = MemDisk::new(512, 200);
        let mut c = CrashChecker::new(REGION, 2, 3).unwrap();
        c.run(
            &mut [disk.queue(4)],
            &AtomicBool::new(false),
            Some(Instant::now() + Duration::from_millis(10)),
        );
        let touched = c.touched_lbas().count() as u64;
        let transition = Answering { inner: disk.queue(4), remaining: 3, status: NvmeStatus::ANA_TRANSITION };
        assert_eq!(c.verify(transition).unwrap().lbas_checked, touched);
        let broken =
            Answering { inner: disk.queue(4), remaining: 1, status: NvmeStatus::UNRECOVERED_READ_ERROR };
        assert!(matches!(c.verify(broken), Err(VerifyError::ReadFailed { .. })));
    }

    #[test]
    fn bad_regions_are_refused() {
        let mut region = REGION;
        region.block_count = 0;
        assert!(matches!(CrashChecker::new(region, 1, 1), Err(CrashError::RegionSize { .. })));
        region.block_count = 8;
        region.block_size = 12;
        assert!(matches!(CrashChecker::new(region, 1, 1), Err(CrashError::BlockSize { .. })));
    }
}
