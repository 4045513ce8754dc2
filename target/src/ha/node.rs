//! One staged namespace's write path, transport-independent: the transport
//! hands commands in (by tag) and takes ready commands out; it never touches
//! a ring or a reservation. What it gets for a write is an opaque
//! [`WriteSlot`]: the place in the ring the host's data is received into
//! (zero or one copy), then handed back to commit or abandon.
//!
//! Order of a write: [`NsNode::begin_write`] (ring space, or `RingFull` and
//! the transport parks the command with [`NsNode::park_for_space`]) ->
//! [`NsNode::write_buffer`] -> [`NsNode::commit_write`] -> the command is
//! ready ([`Ready::Durable`]) once its record is durable here and, in a pair,
//! in the partner's second store (the [`Mirror`] says how far). Write Zeroes
//! and Deallocate are records of their own ([`NsNode::stage_zeroes`],
//! [`NsNode::stage_deallocate`]). Flush and FUA on a volatile domain wait
//! until the medium holds everything before them ([`Ready::Released`]).
//!
//! The mirror is a generic: the pair's TCP link in production
//! (`pair::owner::MirrorLink`), [`NoMirror`] for a single node. Waiters are
//! FIFOs in sequence order (records become durable in order); a tag whose
//! command went away is dropped by the transport when it comes back ready.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::ack::Token;
use super::{DrainProgress, FlusherEvent, RecordKind, Reservation, ReserveError, StagingError, StagingLog};
use crate::backend::{Backend, BackendCompletion};
use tandem_env::persist::PersistentRegion;

/// The partner's side of the write path, as the node sees it.
pub trait Mirror<R: PersistentRegion> {
    /// Writes through this sequence may complete.
    fn ack_through(&mut self, log: &StagingLog<R>) -> u64;
    /// Lets the mirror move (receive, send, time); returns whether anything did.
    fn poll(&mut self, log: &mut StagingLog<R>) -> bool;
    /// Sends what is new only (the end of a pass: `poll` ran at its start).
    fn send(&mut self, log: &mut StagingLog<R>) -> bool;
    /// A flusher event (a failed medium write may go to the partner).
    fn on_flusher_event(&mut self, event: &FlusherEvent);
    /// The group takes no writes here (the medium failed too long).
    fn refuses_writes(&self) -> bool;
    /// Records are sent to the partner before they are persisted here (both
    /// at once, claims 4 and 9): commit writes headers, the pass persists.
    fn defers_persist(&self) -> bool;
}

/// A single node: a write completes when its record is durable here.
#[derive(Debug, Default)]
pub struct NoMirror;

impl<R: PersistentRegion> Mirror<R> for NoMirror {
    fn ack_through(&mut self, log: &StagingLog<R>) -> u64 {
        log.durable_seq()
    }
    fn poll(&mut self, _log: &mut StagingLog<R>) -> bool {
        false
    }
    fn send(&mut self, _log: &mut StagingLog<R>) -> bool {
        false
    }
    fn on_flusher_event(&mut self, _event: &FlusherEvent) {}
    fn refuses_writes(&self) -> bool {
        false
    }
    fn defers_persist(&self) -> bool {
        false
    }
}

/// A command that became ready. It carries the command's must-complete
/// token: the transport completes it (`Token::complete` gives the tag back)
/// whatever it then does; dropping it panics in tests.
#[derive(Debug, PartialEq, Eq)]
pub enum Ready {
    /// A staged write (or Write Zeroes / Deallocate) may complete (sequence `seq`).
    Durable { token: Token, seq: u64 },
    /// The medium holds everything the command waited for.
    Released { token: Token },
}

/// What a staged namespace's log holds, published by its reactor on every
/// pass for the control socket (`tandem rpc status`): relaxed atomics, read
/// from another thread, never on the I/O path's critical section.
#[derive(Debug, Default)]
pub struct StagingStatus {
    /// Durable records not yet on the medium.
    pub staged_records: AtomicU64,
    /// Ring bytes they hold.
    pub staged_bytes: AtomicU64,
    pub free_bytes: AtomicU64,
    pub records_committed: AtomicU64,
    /// Every record up to this sequence is on the medium.
    pub released_seq: AtomicU64,
    /// Medium writes or flushes that failed (records stayed staged, retried).
    pub medium_failures: AtomicU64,
    /// Records and bytes the flusher wrote durably to the medium (metrics).
    pub flushed_records: AtomicU64,
    pub flushed_bytes: AtomicU64,
    /// Reservations refused for lack of ring space (metrics).
    pub ring_full: AtomicU64,
}

/// Where a write's data is received: its record in the ring. Hand it back
/// to [`NsNode::commit_write`] or [`NsNode::abandon_write`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a write slot must be committed or abandoned, or the ring stalls"]
pub struct WriteSlot(Reservation);

impl WriteSlot {
    /// The sequence the write's record has.
    pub fn seq(&self) -> u64 {
        self.0.seq()
    }
}

/// Why a record could not be staged.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum StageError {
    /// No room now: park the command; it is retried when the flusher frees space.
    #[error("the staging ring is full")]
    RingFull,
    /// The group takes no writes here (its medium failed too long): the
    /// command is answered with the ANA status, never acknowledged late.
    #[error("the group takes no writes on this node")]
    GroupStopped,
    #[error(transparent)]
    Refused(ReserveError),
}

impl From<ReserveError> for StageError {
    fn from(e: ReserveError) -> StageError {
        match e {
            ReserveError::RingFull { .. } => StageError::RingFull,
            other => StageError::Refused(other),
        }
    }
}

/// Ranges of one Dataset Management command at most (NR is 8 bits, 0's based).
pub const DEALLOCATE_RANGES_MAX: usize = 256;

/// Waiters kept per staged namespace at most; beyond, the transport's own
/// request limits apply first (one entry per outstanding command).
const WAITERS_PREALLOCATED: usize = 4096;

/// See the module docs.
pub struct NsNode<R: PersistentRegion, M: Mirror<R>> {
    log: StagingLog<R>,
    /// The domain loses data on power loss: FUA and Flush must reach the medium.
    volatile: bool,
    nsid: u32,
    block_bytes: u32,
    /// Staged records in sequence order, ready when acknowledged.
    awaiting_durable: VecDeque<(u64, Token)>,
    /// Commands waiting for `released_seq >= seq`, in sequence order.
    awaiting_release: VecDeque<(u64, Token)>,
    /// Commands waiting for ring space (writes not yet started).
    awaiting_space: VecDeque<u64>,
    /// Published for the control socket.
    pub status: Arc<StagingStatus>,
    mirror: M,
}

impl<R: PersistentRegion, M: Mirror<R>> NsNode<R, M> {
    pub fn new(
        mut log: StagingLog<R>,
        mirror: M,
        volatile: bool,
        nsid: u32,
        block_bytes: u32,
    ) -> NsNode<R, M> {
        log.set_deferred_persist(mirror.defers_persist());
        NsNode {
            log,
            volatile,
            nsid,
            block_bytes,
            awaiting_durable: VecDeque::with_capacity(WAITERS_PREALLOCATED),
            awaiting_release: VecDeque::with_capacity(WAITERS_PREALLOCATED),
            awaiting_space: VecDeque::with_capacity(WAITERS_PREALLOCATED),
            status: Arc::new(StagingStatus::default()),
            mirror,
        }
    }

    pub fn nsid(&self) -> u32 {
        self.nsid
    }
    pub fn is_volatile(&self) -> bool {
        self.volatile
    }
    pub fn mirror(&self) -> &M {
        &self.mirror
    }
    pub fn mirror_mut(&mut self) -> &mut M {
        &mut self.mirror
    }
    /// Hands out the log and the mirror together (to attach a connection).
    pub fn log_and_mirror(&mut self) -> (&mut StagingLog<R>, &mut M) {
        (&mut self.log, &mut self.mirror)
    }
    /// The log, for the simulation's checkers (read only).
    #[cfg(test)]
    pub(crate) fn log(&self) -> &StagingLog<R> {
        &self.log
    }

    /// The log back, for the simulation's crash (waiters must be gone).
    #[cfg(test)]
    pub(crate) fn into_log(self) -> StagingLog<R> {
        assert!(self.awaiting_durable.is_empty() && self.awaiting_release.is_empty(), "waiters left");
        self.log
    }

    /// Every record up to this is on the medium.
    pub fn released_seq(&self) -> u64 {
        self.log.released_seq()
    }

    fn publish_status(&self) {
        let stats = self.log.stats();
        let s = &self.status;
        s.staged_records.store(stats.staged_records, Ordering::Relaxed);
        s.staged_bytes.store(stats.staged_bytes, Ordering::Relaxed);
        s.free_bytes.store(stats.free_bytes, Ordering::Relaxed);
        s.records_committed.store(stats.records_committed, Ordering::Relaxed);
        s.released_seq.store(self.log.released_seq(), Ordering::Relaxed);
        s.flushed_records.store(stats.flusher.records_durable, Ordering::Relaxed);
        s.flushed_bytes.store(stats.flusher.bytes_durable, Ordering::Relaxed);
        s.ring_full.store(stats.ring_full, Ordering::Relaxed);
    }

    /// A write of `data_len` bytes (command `tag`) gets its record; it is
    /// ready once committed and acknowledged.
    pub fn begin_write(&mut self, data_len: usize, tag: u64) -> Result<WriteSlot, StageError> {
        self.check_taking_writes()?;
        let reservation = self.log.reserve(data_len)?;
        self.await_durable(reservation.seq(), tag);
        Ok(WriteSlot(reservation))
    }

    /// Where the write's data goes.
    pub fn write_buffer(&mut self, slot: &WriteSlot) -> &mut [u8] {
        self.log.data_mut(&slot.0)
    }

    /// The data is in place: `nlb` blocks from `slba`.
    pub fn commit_write(&mut self, slot: WriteSlot, slba: u64, nlb: u32) {
        let _ = self.log.commit(slot.0, self.nsid, slba, nlb);
    }

    /// The command failed before its data arrived: the record is cancelled
    /// (never written to the medium); its waiter stays and comes back ready
    /// for a tag the transport no longer knows.
    pub fn abandon_write(&mut self, slot: WriteSlot) {
        let _ = self.log.cancel(slot.0);
    }

    /// A Write Zeroes of `nlb` blocks from `slba` (command `tag`): a record
    /// of its own, ready when acknowledged. Returns its sequence.
    pub fn stage_zeroes(&mut self, tag: u64, slba: u64, nlb: u32) -> Result<u64, StageError> {
        self.check_taking_writes()?;
        let outcome = self.log.stage_op(RecordKind::Zeroes, self.nsid, slba, nlb)?;
        self.await_durable(outcome.seq, tag);
        Ok(outcome.seq)
    }

    /// A Deallocate of `ranges` (slba, blocks; empty ones skipped), one
    /// record per range, all or none (a full ring stages none). Ready when
    /// the last is acknowledged; returns its sequence (None: nothing to do).
    /// At most [`DEALLOCATE_RANGES_MAX`] ranges (a Dataset Management
    /// command's limit); no allocation.
    pub fn stage_deallocate(&mut self, tag: u64, ranges: &[(u64, u32)]) -> Result<Option<u64>, StageError> {
        self.check_taking_writes()?;
        if ranges.len() > DEALLOCATE_RANGES_MAX {
            return Err(StageError::Refused(ReserveError::RecordTooLarge {
                data_bytes: ranges.len(),
                data_bytes_max: DEALLOCATE_RANGES_MAX,
            }));
        }
        let mut reserved: [Option<Reservation>; DEALLOCATE_RANGES_MAX] = std::array::from_fn(|_| None);
        for (i, _) in ranges.iter().enumerate().filter(|(_, r)| r.1 > 0) {
            match self.log.reserve_op() {
                Ok(res) => reserved[i] = Some(res),
                Err(e) => {
                    for res in reserved.iter_mut().filter_map(Option::take) {
                        let _ = self.log.cancel(res);
                    }
                    return Err(e.into());
                }
            }
        }
        let mut last = None;
        for (res, &(slba, nlb)) in reserved.iter_mut().zip(ranges) {
            if let Some(res) = res.take() {
                last = Some(self.log.commit_op(res, RecordKind::Deallocate, self.nsid, slba, nlb).seq);
            }
        }
        if let Some(seq) = last {
            self.await_durable(seq, tag);
        }
        Ok(last)
    }

    /// A Flush (command `tag`): true if it is done now (a persistent domain
    /// holds every acknowledged write; or nothing is staged); false if it
    /// waits for the medium ([`Ready::Released`]).
    pub fn flush(&mut self, tag: u64) -> bool {
        let target = self.log.durable_seq();
        if self.volatile && self.log.released_seq() < target {
            self.await_release(target, tag);
            false
        } else {
            true
        }
    }

    /// A FUA write on a volatile domain: ready when the medium has `seq`.
    pub fn await_medium(&mut self, seq: u64, tag: u64) {
        self.await_release(seq, tag);
    }

    /// Overlays staged data on `out`, which holds what the medium returned
    /// for `nlb` blocks from `slba`. Returns the blocks replaced.
    pub fn read_overlay(&self, slba: u64, nlb: u32, out: &mut [u8]) -> Result<u64, StagingError> {
        self.log.read_overlay(self.nsid, slba, nlb, self.block_bytes, out)
    }

    /// A write that found the ring full waits here (in arrival order).
    pub fn park_for_space(&mut self, tag: u64) {
        self.awaiting_space.push_back(tag);
    }
    /// The oldest write waiting for ring space.
    pub fn parked_front(&self) -> Option<u64> {
        self.awaiting_space.front().copied()
    }
    pub fn pop_parked(&mut self) -> Option<u64> {
        self.awaiting_space.pop_front()
    }

    fn await_durable(&mut self, seq: u64, tag: u64) {
        debug_assert!(self.awaiting_durable.back().is_none_or(|(s, _)| *s < seq));
        self.awaiting_durable.push_back((seq, Token::new(tag)));
    }

    fn await_release(&mut self, seq: u64, tag: u64) {
        let token = Token::new(tag);
        if self.awaiting_release.back().is_some_and(|(s, _)| *s > seq) {
            // Keep the queue sorted (a FUA write can register after a later Flush).
            let at = self.awaiting_release.partition_point(|(s, _)| *s <= seq);
            self.awaiting_release.insert(at, (seq, token));
        } else {
            self.awaiting_release.push_back((seq, token));
        }
    }

    /// Shutdown: every command still waiting here is given up (their
    /// connections are closed); returns how many.
    pub fn abandon_waiters(&mut self) -> usize {
        let count = self.awaiting_durable.len() + self.awaiting_release.len();
        for (_, token) in self.awaiting_durable.drain(..).chain(self.awaiting_release.drain(..)) {
            let _ = token.complete();
        }
        self.awaiting_space.clear();
        count
    }

    /// Moves every waiter whose condition holds into `out`.
    pub fn collect_ready(&mut self, out: &mut Vec<Ready>) {
        let acked = self.mirror.ack_through(&self.log);
        while self.awaiting_durable.front().is_some_and(|(seq, _)| *seq <= acked) {
            let Some((seq, token)) = self.awaiting_durable.pop_front() else { break };
            out.push(Ready::Durable { token, seq });
        }
        let released = self.log.released_seq();
        while self.awaiting_release.front().is_some_and(|(seq, _)| *seq <= released) {
            let Some((_, token)) = self.awaiting_release.pop_front() else { break };
            out.push(Ready::Released { token });
        }
    }

    fn check_taking_writes(&self) -> Result<(), StageError> {
        if self.mirror.refuses_writes() {
            Err(StageError::GroupStopped)
        } else {
            Ok(())
        }
    }

    /// Whether anything waits or is staged (the reactor must keep polling).
    pub fn has_work(&self) -> bool {
        !self.awaiting_durable.is_empty()
            || !self.awaiting_release.is_empty()
            || !self.awaiting_space.is_empty()
            || self.log.durable_seq() > self.log.released_seq()
    }

    /// Runs the flusher and the mirror; completions that are not the
    /// flusher's go to `out`. `scratch` holds what the backend returned.
    /// Flusher events go to the mirror and to `on_event` (for the log).
    pub fn poll<B: Backend>(
        &mut self,
        backend: &mut B,
        now_ms: u64,
        scratch: &mut Vec<BackendCompletion>,
        out: &mut Vec<BackendCompletion>,
        on_event: &mut dyn FnMut(u32, &FlusherEvent),
    ) -> bool {
        let mut busy = false;
        for c in scratch.drain(..) {
            if let Some(other) = self.log.on_backend_completion(&*backend, c, now_ms) {
                out.push(other);
            }
        }
        busy |= self.log.persist() > 0;
        busy |= self.log.poll_flusher(backend, now_ms) > 0;
        busy |= self.mirror.poll(&mut self.log);
        while let Some(event) = self.log.take_event() {
            if matches!(event, FlusherEvent::WriteFailed { .. } | FlusherEvent::FlushFailed { .. }) {
                self.status.medium_failures.fetch_add(1, Ordering::Relaxed);
            }
            self.mirror.on_flusher_event(&event);
            on_event(self.nsid, &event);
        }
        self.publish_status();
        busy
    }

    /// Lets the mirror send what this pass committed, then persists it
    /// here: the partner's copy and the local persist are under way together.
    pub fn poll_mirror(&mut self) -> bool {
        let sent = self.mirror.send(&mut self.log);
        self.log.persist() > 0 || sent
    }

    /// Clean shutdown: writes every staged record to the medium and makes it
    /// durable; gives up at the first medium failure or when `now_ms` passes
    /// `deadline_ms`. `observe` sees the progress once per pass; `idle` runs
    /// when nothing moved. On the medium a record needs no second copy: the
    /// release no longer waits for the partner.
    pub fn drain_for_shutdown<B: Backend>(
        &mut self,
        backend: &mut B,
        now_ms: &mut dyn FnMut() -> u64,
        deadline_ms: u64,
        idle: &mut dyn FnMut(),
        observe: &mut dyn FnMut(DrainProgress),
    ) -> Result<u64, &'static str> {
        self.log.set_release_limit(u64::MAX);
        self.log.persist();
        let from = self.log.drain_start();
        let target = from.target_seq;
        let mut completions = Vec::with_capacity(64);
        loop {
            observe(self.log.drain_progress(&from));
            if self.log.released_seq() >= target {
                return Ok(target);
            }
            let now = now_ms();
            if now > deadline_ms {
                return Err("time limit");
            }
            let submitted = self.log.poll_flusher(backend, now);
            backend.kick();
            completions.clear();
            let completed = backend.poll_completions(&mut completions);
            for c in completions.drain(..) {
                // Completions of host commands are dropped: their connections are closed.
                let _ = self.log.on_backend_completion(&*backend, c, now);
            }
            if self.log.take_event().is_some() {
                return Err("the medium failed a write");
            }
            if submitted == 0 && completed == 0 {
                idle();
            }
        }
    }

    /// Records not yet on the medium, and their data bytes (for the shutdown line).
    pub fn drain_size(&self) -> DrainProgress {
        self.log.drain_progress(&self.log.drain_start())
    }
}
