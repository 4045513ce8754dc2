//! The flusher: writes staged records to the medium in sequence order, makes
//! them durable there, and tells the staging log how far it may release.
//!
//! It is a synchronous state machine: `poll` builds batches from committed
//! records and submits them, `on_completion` consumes the backend's answers,
//! and `take_durable_through` hands back the highest sequence below which every
//! record is durable on the medium. No threads, no sleeps; time is an argument.
//!
//! Ordering rule: a later write to an LBA must never reach the medium before an
//! earlier one. The flusher guarantees it by never having two unfinished
//! batches whose LBA ranges overlap: a record that overlaps an unfinished batch
//! (in flight, waiting for Flush, or failed and waiting to retry) stalls the
//! cursor until that batch is durable. Records are taken strictly in sequence
//! order, so nothing passes a stalled record.
//!
//! Batching: consecutive records of one namespace that are adjacent in LBA are
//! merged into one write, up to the buffer size. Several batches are in flight
//! at once, up to `batches_max` and the backend's queue depth.
//!
//! Durability: a batch is durable when its write completes on a backend whose
//! writes are durable, when it was written with FUA, or when a Flush submitted
//! after its write completed succeeds. A failed write or Flush leaves the
//! records staged (never released), emits a [`FlusherEvent`] with the sequence
//! numbers, and is retried after an exponential back-off.
//!
//! Tags: every operation the flusher submits has bit 63 set; the caller routes
//! completions with that bit here and keeps the rest of the tag space.

use super::layout::RecordKind;
use super::ring::{RecordInfo, Ring};
use crate::backend::{Backend, BackendCompletion, BackendError, BackendOp};
use std::collections::VecDeque;
use tandem_env::persist::PersistentRegion;
use tandem_env::{BufferPool, DmaBuf};

/// Tags with this bit belong to the flusher.
pub const FLUSHER_TAG_BIT: u64 = 1 << 63;
/// Flusher tags with this bit too are Flush operations.
const FLUSH_OP_TAG_BIT: u64 = 1 << 62;
/// Events kept for the caller before the oldest are dropped (and counted).
const EVENTS_MAX: usize = 256;

/// Tuning of the flusher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlusherConfig {
    /// Largest write the flusher submits; also the size of each buffer. Must
    /// hold the largest record (the ring refuses records above it).
    pub batch_bytes_max: usize,
    /// Batches tracked at once (in flight, waiting for Flush or retry).
    pub batches_max: usize,
    /// Write with FUA instead of following writes with a Flush.
    pub use_fua: bool,
    pub retry_backoff_initial_ms: u64,
    pub retry_backoff_max_ms: u64,
}

impl Default for FlusherConfig {
    fn default() -> FlusherConfig {
        FlusherConfig {
            batch_bytes_max: 1 << 20,
            batches_max: 32,
            use_fua: false,
            retry_backoff_initial_ms: 1,
            retry_backoff_max_ms: 1000,
        }
    }
}

/// Something the owner of the log must know; the HA layer forwards write
/// failures to the partner, which can write its mirrored copies instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlusherEvent {
    /// Writing records `first_seq..=last_seq` to the medium failed; they stay
    /// staged and are retried at `retry_at_ms`.
    WriteFailed {
        first_seq: u64,
        last_seq: u64,
        nsid: u32,
        slba: u64,
        nlb: u32,
        attempt: u32,
        retry_at_ms: u64,
        error: BackendError,
    },
    /// A Flush failed: the records `first_seq..=last_seq` written before it are
    /// not known durable and are written again.
    FlushFailed { first_seq: u64, last_seq: u64, error: BackendError },
    /// A staged record no longer matches its CRC; it is not written and the
    /// flusher stops at it (the partner's copy is the remedy).
    CorruptStaged { seq: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BatchState {
    /// Ready to submit once `retry_at_ms` has passed.
    Queued,
    Writing,
    /// Write completed; needs a Flush to be durable.
    Written,
    /// Included in the Flush in flight.
    Flushing,
    Durable,
}

#[derive(Debug)]
struct Batch {
    id: u64,
    first_seq: u64,
    last_seq: u64,
    /// None for a batch of cancelled records only (nothing to write).
    nsid: u32,
    slba: u64,
    nlb: u32,
    bytes: usize,
    /// Data (written from `buf`), or one Write Zeroes / Deallocate record.
    kind: RecordKind,
    state: BatchState,
    buf: Option<DmaBuf>,
    attempts: u32,
    retry_at_ms: u64,
    fua: bool,
    /// The partner was asked to write these records (their write failed
    /// here) and has not answered: until it does, no later write to these
    /// blocks may reach the medium, or the partner's write could land over it.
    fenced: bool,
}

impl Batch {
    /// A batch of record `first` alone, holding `bytes` of its data.
    fn of_record(id: u64, first: &RecordInfo, bytes: usize, state: BatchState, buf: Option<DmaBuf>) -> Batch {
        Batch {
            id,
            first_seq: first.seq,
            last_seq: first.seq,
            nsid: first.nsid,
            slba: first.slba,
            nlb: first.nlb,
            bytes,
            kind: first.kind,
            state,
            buf,
            attempts: 0,
            retry_at_ms: 0,
            fua: false,
            fenced: false,
        }
    }

    fn overlaps(&self, info: &RecordInfo) -> bool {
        // One log writes to one medium, so LBAs collide across namespace ids.
        (self.state != BatchState::Durable || self.fenced)
            && (self.bytes > 0 || self.kind.is_op())
            && self.slba < info.slba + info.nlb as u64
            && info.slba < self.slba + self.nlb as u64
    }
}

/// Counters for stats and the drain-rate display.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlusherStats {
    pub writes_submitted: u64,
    pub flushes_submitted: u64,
    pub records_durable: u64,
    pub bytes_durable: u64,
    pub write_failures: u64,
    pub flush_failures: u64,
    pub events_dropped: u64,
    /// Times the cursor waited on an overlapping unfinished batch.
    pub overlap_stalls: u64,
}

/// See the module docs.
pub struct Flusher {
    config: FlusherConfig,
    pool: BufferPool,
    /// Unfinished batches in sequence order; capacity `batches_max`.
    batches: VecDeque<Batch>,
    /// The next sequence to put into a batch.
    cursor_seq: u64,
    next_batch_id: u64,
    flush_in_flight: bool,
    next_flush_id: u64,
    events: VecDeque<FlusherEvent>,
    stats: FlusherStats,
    /// The record at the cursor failed its CRC check; do not report it twice.
    corrupt_reported: bool,
    /// A medium write or Flush failed and none has succeeded since.
    failing: bool,
}

/// Why a flusher could not be built.
#[derive(thiserror::Error, Debug)]
pub enum FlusherError {
    #[error("flusher buffer pool of {count} x {chunk_bytes} bytes: {source}")]
    Pool {
        chunk_bytes: usize,
        count: usize,
        #[source]
        source: tandem_env::EnvError,
    },
    #[error(
        "flusher needs batch_bytes_max > 0 and batches_max > 0, got {batch_bytes_max} and {batches_max}"
    )]
    BadConfig { batch_bytes_max: usize, batches_max: usize },
}

impl Flusher {
    /// A flusher that starts at the record after `released_seq`. Allocates its
    /// buffers (`batches_max` x `batch_bytes_max`) once, here.
    pub fn new(config: FlusherConfig, released_seq: u64) -> Result<Flusher, FlusherError> {
        if config.batch_bytes_max == 0 || config.batches_max == 0 {
            return Err(FlusherError::BadConfig {
                batch_bytes_max: config.batch_bytes_max,
                batches_max: config.batches_max,
            });
        }
        let chunk_bytes = config.batch_bytes_max.div_ceil(4096) * 4096;
        let pool = BufferPool::new("flusher", chunk_bytes, config.batches_max)
            .map_err(|source| FlusherError::Pool { chunk_bytes, count: config.batches_max, source })?;
        Ok(Flusher {
            config,
            pool,
            batches: VecDeque::with_capacity(config.batches_max),
            cursor_seq: released_seq + 1,
            next_batch_id: 0,
            flush_in_flight: false,
            next_flush_id: 0,
            events: VecDeque::with_capacity(EVENTS_MAX),
            stats: FlusherStats::default(),
            corrupt_reported: false,
            failing: false,
        })
    }

    pub fn config(&self) -> &FlusherConfig {
        &self.config
    }
    pub fn stats(&self) -> FlusherStats {
        self.stats
    }
    /// True when nothing is being written, waiting or retried.
    pub fn is_idle(&self) -> bool {
        self.batches.is_empty()
    }
    /// Operations of this flusher the backend still holds.
    pub fn ops_in_flight(&self) -> usize {
        self.batches.iter().filter(|b| b.state == BatchState::Writing).count()
            + usize::from(self.flush_in_flight)
    }
    /// The next event, oldest first.
    pub fn take_event(&mut self) -> Option<FlusherEvent> {
        self.events.pop_front()
    }
    /// True if some batch failed and waits to be retried.
    pub fn has_failures(&self) -> bool {
        self.batches.iter().any(|b| b.state == BatchState::Queued && b.attempts > 0)
    }
    /// True from a failed medium write or Flush until one succeeds (a
    /// retry in flight does not count as a recovery).
    pub fn medium_failing(&self) -> bool {
        self.failing
    }
    /// The earliest time a queued retry becomes due, if any.
    pub fn next_retry_ms(&self) -> Option<u64> {
        self.batches.iter().filter(|b| b.state == BatchState::Queued).map(|b| b.retry_at_ms).min()
    }

    fn push_event(&mut self, event: FlusherEvent) {
        if self.events.len() == EVENTS_MAX {
            self.events.pop_front();
            self.stats.events_dropped += 1;
        }
        self.events.push_back(event);
    }

    /// Takes new durable records into batches, submits due batches and, when
    /// needed, a Flush. Returns the number of operations submitted.
    pub fn poll<R: PersistentRegion, B: Backend>(
        &mut self,
        ring: &Ring<R>,
        backend: &mut B,
        now_ms: u64,
    ) -> usize {
        self.cursor_seq = self.cursor_seq.max(ring.released_seq() + 1);
        self.build_batches(ring);
        let mut submitted = 0;
        let writes_durable = backend.writes_are_durable();
        for index in 0..self.batches.len() {
            let batch = &self.batches[index];
            if batch.state != BatchState::Queued || batch.retry_at_ms > now_ms {
                continue;
            }
            if backend.in_flight() >= backend.queue_depth_max() {
                break;
            }
            if self.batches[index].buf.is_none() && !self.batches[index].kind.is_op() {
                // A retry: the records are still staged, copy them again.
                let Some(buf) = self.pool.get() else { break };
                let batch = &mut self.batches[index];
                batch.buf = Some(buf);
                copy_batch(ring, batch);
            }
            let batch = &mut self.batches[index];
            batch.fua = self.config.use_fua && !writes_durable;
            let op = match batch.kind {
                RecordKind::Zeroes => BackendOp::WriteZeroes { slba: batch.slba, nlb: batch.nlb },
                RecordKind::Deallocate => BackendOp::Deallocate { slba: batch.slba, nlb: batch.nlb },
                RecordKind::Data => {
                    let Some(buf) = batch.buf.take() else { continue };
                    BackendOp::Write { slba: batch.slba, nlb: batch.nlb, buf, fua: batch.fua }
                }
            };
            // Write Zeroes and Deallocate are made durable by the Flush after them.
            if batch.kind.is_op() {
                batch.fua = false;
            }
            match backend.submit(FLUSHER_TAG_BIT | batch.id, op) {
                Ok(()) => {
                    batch.state = BatchState::Writing;
                    self.stats.writes_submitted += 1;
                    submitted += 1;
                }
                Err((error, _op)) => {
                    self.fail_batch(index, error, now_ms);
                }
            }
        }
        let needs_flush = self.batches.iter().any(|b| b.state == BatchState::Written);
        if needs_flush && !self.flush_in_flight && backend.in_flight() < backend.queue_depth_max() {
            let tag = FLUSHER_TAG_BIT | FLUSH_OP_TAG_BIT | self.next_flush_id;
            match backend.submit(tag, BackendOp::Flush) {
                Ok(()) => {
                    self.next_flush_id += 1;
                    self.flush_in_flight = true;
                    self.stats.flushes_submitted += 1;
                    submitted += 1;
                    for batch in self.batches.iter_mut().filter(|b| b.state == BatchState::Written) {
                        batch.state = BatchState::Flushing;
                    }
                }
                Err((error, _op)) => {
                    // Not submitted: the batches stay Written and the next poll
                    // tries again; report it so a persistent refusal is seen.
                    let (first_seq, last_seq) = self.written_range(BatchState::Written);
                    self.push_event(FlusherEvent::FlushFailed { first_seq, last_seq, error });
                }
            }
        }
        if submitted > 0 {
            backend.kick();
        }
        submitted
    }

    fn build_batches<R: PersistentRegion>(&mut self, ring: &Ring<R>) {
        while self.batches.len() < self.config.batches_max && self.cursor_seq <= ring.durable_seq() {
            let Some(first) = ring.record(self.cursor_seq) else { break };
            let id = self.next_batch_id;
            if first.cancelled {
                self.next_batch_id += 1;
                self.cursor_seq += 1;
                self.batches.push_back(Batch::of_record(id, &first, 0, BatchState::Durable, None));
                continue;
            }
            if self.batches.iter().any(|b| b.overlaps(&first)) {
                self.stats.overlap_stalls += 1;
                break;
            }
            if !ring.verify_record(&first) {
                if !self.corrupt_reported {
                    self.corrupt_reported = true;
                    self.push_event(FlusherEvent::CorruptStaged { seq: first.seq });
                }
                break;
            }
            if first.kind.is_op() {
                // A Write Zeroes or Deallocate: one record, one operation.
                self.next_batch_id += 1;
                self.cursor_seq += 1;
                self.corrupt_reported = false;
                self.batches.push_back(Batch::of_record(id, &first, 0, BatchState::Queued, None));
                continue;
            }
            assert!(first.data_len <= self.pool.chunk_bytes(), "record larger than a flusher buffer");
            let Some(buf) = self.pool.get() else { break };
            let mut batch = Batch::of_record(id, &first, first.data_len, BatchState::Queued, Some(buf));
            // Merge following records that continue the LBA range.
            while batch.last_seq < ring.durable_seq() {
                let Some(next) = ring.record(batch.last_seq + 1) else { break };
                let adjacent = !next.cancelled
                    && next.kind == RecordKind::Data
                    && next.nsid == batch.nsid
                    && next.slba == batch.slba + batch.nlb as u64
                    && batch.bytes + next.data_len <= self.pool.chunk_bytes()
                    && batch.nlb.checked_add(next.nlb).is_some();
                if !adjacent || self.batches.iter().any(|b| b.overlaps(&next)) || !ring.verify_record(&next) {
                    break;
                }
                batch.last_seq = next.seq;
                batch.nlb += next.nlb;
                batch.bytes += next.data_len;
            }
            copy_batch(ring, &mut batch);
            self.corrupt_reported = false;
            self.next_batch_id += 1;
            self.cursor_seq = batch.last_seq + 1;
            self.batches.push_back(batch);
        }
    }

    fn batch_index(&self, id: u64) -> Option<usize> {
        self.batches.iter().position(|b| b.id == id)
    }

    fn written_range(&self, state: BatchState) -> (u64, u64) {
        let mut range = (u64::MAX, 0);
        for batch in self.batches.iter().filter(|b| b.state == state) {
            range = (range.0.min(batch.first_seq), range.1.max(batch.last_seq));
        }
        range
    }

    fn backoff_ms(&self, attempts: u32) -> u64 {
        let shift = attempts.saturating_sub(1).min(20);
        (self.config.retry_backoff_initial_ms << shift).min(self.config.retry_backoff_max_ms)
    }

    fn fail_batch(&mut self, index: usize, error: BackendError, now_ms: u64) {
        let attempts = self.batches[index].attempts + 1;
        let retry_at_ms = now_ms + self.backoff_ms(attempts);
        let batch = &mut self.batches[index];
        batch.attempts = attempts;
        batch.retry_at_ms = retry_at_ms;
        batch.state = BatchState::Queued;
        batch.buf = None;
        self.stats.write_failures += 1;
        self.failing = true;
        let event = FlusherEvent::WriteFailed {
            first_seq: batch.first_seq,
            last_seq: batch.last_seq,
            nsid: batch.nsid,
            slba: batch.slba,
            nlb: batch.nlb,
            attempt: attempts,
            retry_at_ms,
            error,
        };
        self.push_event(event);
    }

    /// Consumes a backend completion. Returns false if the tag is not the
    /// flusher's (the caller handles it).
    pub fn on_completion(
        &mut self,
        completion: BackendCompletion,
        writes_durable: bool,
        now_ms: u64,
    ) -> bool {
        if completion.tag & FLUSHER_TAG_BIT == 0 {
            return false;
        }
        // The buffer, if any, returns to the pool when `completion` drops.
        if completion.tag & FLUSH_OP_TAG_BIT != 0 {
            self.flush_in_flight = false;
            match completion.result {
                Ok(()) => {
                    self.failing = false;
                    for batch in self.batches.iter_mut().filter(|b| b.state == BatchState::Flushing) {
                        batch.state = BatchState::Durable;
                    }
                }
                Err(error) => {
                    self.failing = true;
                    self.stats.flush_failures += 1;
                    let (first_seq, last_seq) = self.written_range(BatchState::Flushing);
                    self.push_event(FlusherEvent::FlushFailed { first_seq, last_seq, error });
                    let retry_at_ms = now_ms + self.backoff_ms(1);
                    for batch in self.batches.iter_mut().filter(|b| b.state == BatchState::Flushing) {
                        batch.state = BatchState::Queued;
                        batch.attempts += 1;
                        batch.retry_at_ms = retry_at_ms;
                    }
                }
            }
            return true;
        }
        let id = completion.tag & !FLUSHER_TAG_BIT;
        let Some(index) = self.batch_index(id) else {
            // Every submitted batch stays tracked until durable: a completion
            // for an unknown batch is a bug of ours or of the backend.
            panic!("flusher: completion for unknown batch {id}");
        };
        assert_eq!(
            self.batches[index].state,
            BatchState::Writing,
            "flusher: completion of a batch not in flight"
        );
        match completion.result {
            Ok(()) => {
                self.failing = false;
                let batch = &mut self.batches[index];
                batch.state =
                    if writes_durable || batch.fua { BatchState::Durable } else { BatchState::Written };
            }
            Err(error) => self.fail_batch(index, error, now_ms),
        }
        true
    }

    /// The partner wrote records `first_seq..=last_seq` (which failed here)
    /// to the medium from its second store and made them durable: the
    /// batches within that range that wait for a retry are durable now. A
    /// batch in flight again is left to its own completion. Returns the
    /// records marked.
    pub fn durable_elsewhere(&mut self, first_seq: u64, last_seq: u64) -> u64 {
        let mut marked = 0;
        for batch in self.batches.iter_mut() {
            if batch.state == BatchState::Queued
                && batch.attempts > 0
                && batch.first_seq >= first_seq
                && batch.last_seq <= last_seq
            {
                batch.state = BatchState::Durable;
                batch.buf = None;
                marked += batch.last_seq - batch.first_seq + 1;
            }
        }
        marked
    }

    /// The partner is asked to write records `first_seq..=last_seq` (their
    /// write failed here): the batches within stay unfinished for ordering
    /// (no later overlapping write is submitted, none is released) until
    /// [`Flusher::unfence`]. Returns the batches fenced.
    pub fn fence(&mut self, first_seq: u64, last_seq: u64) -> usize {
        let mut fenced = 0;
        for batch in self.batches.iter_mut() {
            if batch.first_seq >= first_seq && batch.last_seq <= last_seq {
                batch.fenced = true;
                fenced += 1;
            }
        }
        fenced
    }

    /// The partner answered for (or can no longer write) records
    /// `first_seq..=last_seq`; `None`: every fence goes.
    pub fn unfence(&mut self, range: Option<(u64, u64)>) {
        for batch in self.batches.iter_mut() {
            if range.is_none_or(|(first, last)| batch.first_seq >= first && batch.last_seq <= last) {
                batch.fenced = false;
            }
        }
    }

    /// Pops the leading durable batches and returns the highest sequence such
    /// that it and all before it are durable on the medium, if that advanced.
    pub fn take_durable_through(&mut self) -> Option<u64> {
        let mut through = None;
        while self.batches.front().is_some_and(|b| b.state == BatchState::Durable && !b.fenced) {
            let Some(batch) = self.batches.pop_front() else { break };
            self.stats.records_durable += batch.last_seq - batch.first_seq + 1;
            self.stats.bytes_durable += batch.bytes as u64;
            through = Some(batch.last_seq);
        }
        through
    }
}

/// Copies the data of records `first_seq..=last_seq` into the batch buffer.
fn copy_batch<R: PersistentRegion>(ring: &Ring<R>, batch: &mut Batch) {
    let Some(buf) = batch.buf.as_mut() else { return };
    buf.set_len(batch.bytes);
    let mut at = 0;
    for seq in batch.first_seq..=batch.last_seq {
        let info = ring.record(seq).expect("batched record is staged until durable");
        buf[at..at + info.data_len].copy_from_slice(ring.record_data(&info));
        at += info.data_len;
    }
    assert_eq!(at, batch.bytes, "batch length");
}
