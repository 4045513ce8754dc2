//! High availability, sans-I/O: the write path of a node and of a pair. No
//! sockets, threads or clocks live here; `pair` (the interconnect over TCP)
//! and `transport` (NVMe/TCP) drive these cores, and `ha::sim` drives the
//! same cores over a simulated clock, link and media.
//!
//! - [`node::NsNode`]: one staged namespace's write path as the transport
//!   sees it (writes through an opaque slot, Write Zeroes / Deallocate
//!   records, Flush, the read overlay, waiters with must-complete tokens),
//!   generic over its region and its [`node::Mirror`].
//! - [`StagingLog`]: the first store — the ring, the read-your-writes index
//!   and the flusher. One per staging ring, one ring per medium (backend):
//!   the flusher writes every record of the ring to that one backend; the
//!   backend is passed in on each call because the read path shares it.
//! - [`owner::OwnerMirror`] and [`mirror`]: the owner's side of the mirror
//!   (sender, ack gate, partner-away policy, resync, failed writes) and the
//!   partner's (`MirrorReceiver`, the second store); [`link`]: the frames and
//!   the handshake; [`layout`]: the one on-media format of both stores.
//!
//! Order of a write: reserve -> the transport receives into the record ->
//! commit (header written; persisted at once, or, for a mirrored ring, in
//! the same reactor pass after the record went to the partner) -> the
//! command completes once the record is durable here and in the partner's
//! second store -> the flusher writes it to the medium in order, makes it
//! durable and releases it (while mirrored, only once the partner holds it).
//!
//! Invariants: every record <= `released_seq` is durable on the medium; every
//! durable record > `released_seq` is in the index (unless cancelled or
//! replaced by a newer write) and its bytes stay in the ring.

pub mod ack;
pub mod flusher;
pub mod index;
pub mod layout;
pub mod link;
pub mod mirror;
pub mod node;
pub mod owner;
pub mod recovery;
pub mod ring;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

pub use flusher::{Flusher, FlusherConfig, FlusherError, FlusherEvent, FlusherStats, FLUSHER_TAG_BIT};
pub use index::{StagedExtent, StagingIndex};
pub use layout::{MediumIdentity, RecordKind, RingConfig};
pub use recovery::{
    inspect, open_ring, open_second_store, Binding, RecoveryError, RingContents, ScanReport, StopReason,
};
pub use ring::{CommitOutcome, RecordInfo, Reservation, ReserveError, Ring, RingError};

use crate::backend::{Backend, BackendCompletion};
use std::ops::Range;
use tandem_env::persist::PersistentRegion;

/// Errors of the staging log.
#[derive(thiserror::Error, Debug)]
pub enum StagingError {
    #[error(transparent)]
    Ring(#[from] RingError),
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
    #[error(transparent)]
    Flusher(#[from] FlusherError),
    #[error(transparent)]
    Reserve(#[from] ReserveError),
    #[error(
        "drain did not finish by {deadline_ms} ms: released through {released_seq} of {target_seq} \
         (write failures pending: {failures_pending})"
    )]
    DrainDeadline { deadline_ms: u64, released_seq: u64, target_seq: u64, failures_pending: bool },
    #[error("read buffer of {buf_bytes} bytes cannot hold lbas {lbas:?} at {block_bytes} bytes per block")]
    ReadBufferTooSmall { buf_bytes: usize, lbas: Range<u64>, block_bytes: u32 },
}

/// Counters for stats and the drain-rate display.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StagingStats {
    /// Durable records not yet released.
    pub staged_records: u64,
    /// Ring bytes held by unreleased records.
    pub staged_bytes: u64,
    pub free_bytes: u64,
    pub records_committed: u64,
    pub bytes_committed: u64,
    /// Reservations refused for lack of space (back-pressure events).
    pub ring_full: u64,
    pub flusher: FlusherStats,
}

/// What `recover` found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoveryReport {
    pub scan: ScanReport,
    /// Records written to the medium and released by the replay.
    pub replayed_records: u64,
    pub replayed_bytes: u64,
    pub torn_tail: bool,
    pub stale_tail: bool,
    pub released_seq: u64,
}

/// How far a drain got: records released (and their data bytes made durable
/// on the medium) since it started, of the records it set out to release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainProgress {
    pub records_total: u64,
    pub records_done: u64,
    pub bytes_total: u64,
    pub bytes_done: u64,
}

/// Where a drain started ([`StagingLog::drain_start`]): what its progress
/// counts from, and the sequence it must release through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainStart {
    pub target_seq: u64,
    released_seq: u64,
    bytes_durable: u64,
    bytes_total: u64,
}

/// How `drain_all` waits: the clock, what to do when idle, and the deadline.
/// Tests pass a counter clock and a no-op; the binary the monotonic clock and
/// a short sleep (or an epoll on the backend's wake fd).
pub struct DrainWait<C: FnMut() -> u64, W: FnMut()> {
    pub now_ms: C,
    pub idle: W,
    pub deadline_ms: u64,
}

/// See the module docs.
pub struct StagingLog<R: PersistentRegion> {
    ring: Ring<R>,
    index: StagingIndex,
    flusher: Flusher,
    records_committed: u64,
    bytes_committed: u64,
    ring_full: u64,
    /// Every record through this is durable on the medium (the flusher said so).
    medium_through: u64,
    /// Records are released (freed) only through this: while mirrored, what
    /// the partner holds too (see `ha::mirror`). `u64::MAX`: no limit.
    release_limit: u64,
    /// Reused by `drain_all`: preallocated to the flusher's batch count.
    completions: Vec<BackendCompletion>,
}

impl<R: PersistentRegion> StagingLog<R> {
    /// Formats `region` as a new, empty staging ring.
    pub fn format(
        region: R,
        ring_config: &RingConfig,
        flusher_config: FlusherConfig,
    ) -> Result<Self, StagingError> {
        let ring = Ring::format(region, ring_config)?;
        StagingLog::assemble(ring, flusher_config)
    }

    /// Opens an existing ring and rebuilds the index from the staged records,
    /// without replaying them (see `recover`).
    pub fn open(
        region: R,
        epoch_at_least: u64,
        binding: &Binding,
        flusher_config: FlusherConfig,
    ) -> Result<(Self, ScanReport), StagingError> {
        let (ring, scan) = open_ring(region, epoch_at_least, binding)?;
        Ok((StagingLog::assemble(ring, flusher_config)?, scan))
    }

    /// Opens a ring after a crash, replays every staged record to `backend`
    /// in order, makes it durable and releases it. The caller opens its ports
    /// afterwards. `foreign` receives completions of other users of the backend.
    pub fn recover<B: Backend, C: FnMut() -> u64, W: FnMut()>(
        region: R,
        epoch_at_least: u64,
        binding: &Binding,
        flusher_config: FlusherConfig,
        backend: &mut B,
        wait: DrainWait<C, W>,
        foreign: &mut Vec<BackendCompletion>,
    ) -> Result<(Self, RecoveryReport), StagingError> {
        let mut quiet = |_: DrainProgress| {};
        StagingLog::recover_observed(
            region,
            epoch_at_least,
            binding,
            flusher_config,
            backend,
            wait,
            foreign,
            &mut quiet,
        )
    }

    /// `recover`, calling `observe` with the replay's progress once per
    /// drain pass (for a progress line).
    #[allow(clippy::too_many_arguments)]
    pub fn recover_observed<B: Backend, C: FnMut() -> u64, W: FnMut()>(
        region: R,
        epoch_at_least: u64,
        binding: &Binding,
        flusher_config: FlusherConfig,
        backend: &mut B,
        wait: DrainWait<C, W>,
        foreign: &mut Vec<BackendCompletion>,
        observe: &mut dyn FnMut(DrainProgress),
    ) -> Result<(Self, RecoveryReport), StagingError> {
        let (mut log, scan) = StagingLog::open(region, epoch_at_least, binding, flusher_config)?;
        let before = log.flusher.stats();
        log.drain_all_observed(backend, wait, foreign, observe)?;
        let after = log.flusher.stats();
        let report = RecoveryReport {
            scan,
            replayed_records: after.records_durable - before.records_durable,
            replayed_bytes: after.bytes_durable - before.bytes_durable,
            torn_tail: scan.torn_tail,
            stale_tail: scan.stale_tail,
            released_seq: log.ring.released_seq(),
        };
        tracing::info!(?report, "staging log recovered");
        Ok((log, report))
    }

    fn assemble(mut ring: Ring<R>, flusher_config: FlusherConfig) -> Result<Self, StagingError> {
        ring.set_record_data_bytes_max(flusher_config.batch_bytes_max);
        let flusher = Flusher::new(flusher_config, ring.released_seq())?;
        let released = ring.released_seq();
        let mut index = StagingIndex::new();
        for info in ring.staged_records() {
            index_insert(&mut index, &info);
        }
        Ok(StagingLog {
            ring,
            index,
            flusher,
            records_committed: 0,
            bytes_committed: 0,
            ring_full: 0,
            medium_through: released,
            release_limit: u64::MAX,
            completions: Vec::with_capacity(flusher_config.batches_max + 1),
        })
    }

    pub fn ring(&self) -> &Ring<R> {
        &self.ring
    }
    pub fn released_seq(&self) -> u64 {
        self.ring.released_seq()
    }
    /// Every record <= this is durable in the staging ring (may be acknowledged).
    pub fn durable_seq(&self) -> u64 {
        self.ring.durable_seq()
    }
    pub fn epoch(&self) -> u64 {
        self.ring.epoch()
    }
    /// Gives the region back (tests: crash and reopen).
    pub fn into_region(self) -> R {
        self.ring.into_region()
    }

    /// Reserves a record; `RingFull` means park the command and retry after
    /// the flusher released space.
    pub fn reserve(&mut self, data_len: usize) -> Result<Reservation, ReserveError> {
        let result = self.ring.reserve(data_len);
        self.count_full(result)
    }

    /// Counts a reservation refused for lack of space (back-pressure).
    fn count_full(&mut self, result: Result<Reservation, ReserveError>) -> Result<Reservation, ReserveError> {
        if matches!(result, Err(ReserveError::RingFull { .. })) {
            self.ring_full += 1;
        }
        result
    }

    /// Where the transport receives the write's data.
    pub fn data_mut(&mut self, reservation: &Reservation) -> &mut [u8] {
        self.ring.data_mut(reservation)
    }

    /// Commits a reservation whose data is in place (`nlb` blocks from `slba`;
    /// the data length is a whole number of blocks, as the controller computed
    /// it). Records that became durable enter the read index.
    pub fn commit(&mut self, reservation: Reservation, nsid: u32, slba: u64, nlb: u32) -> CommitOutcome {
        assert!(
            nlb > 0 && reservation.data_len().is_multiple_of(nlb as usize),
            "record length is not nlb whole blocks"
        );
        self.records_committed += 1;
        self.bytes_committed += reservation.data_len() as u64;
        let outcome = self.ring.commit(reservation, nsid, slba, nlb);
        self.index_durable(&outcome);
        outcome
    }

    /// Commit writes record headers only and [`StagingLog::persist`]
    /// persists them, so a mirrored record goes to the partner while it is
    /// persisted here (not after). Off by default.
    pub fn set_deferred_persist(&mut self, deferred: bool) {
        self.ring.set_deferred_persist(deferred);
    }

    /// Persists what commit wrote (deferred persist); returns the records
    /// that became durable (and entered the read index).
    pub fn persist(&mut self) -> u64 {
        let range = self.ring.persist_written();
        let count = if range.is_empty() { 0 } else { range.end() - range.start() + 1 };
        self.index_durable(&CommitOutcome { seq: *range.end(), newly_durable: range });
        count
    }

    /// Abandons a reservation (the command failed before its data arrived).
    pub fn cancel(&mut self, reservation: Reservation) -> CommitOutcome {
        let outcome = self.ring.cancel(reservation);
        self.index_durable(&outcome);
        outcome
    }

    /// Reserve, copy and commit in one call (data from a buffer, e.g. in-capsule).
    pub fn stage(
        &mut self,
        nsid: u32,
        slba: u64,
        nlb: u32,
        data: &[u8],
    ) -> Result<CommitOutcome, ReserveError> {
        let reservation = self.reserve(data.len())?;
        self.data_mut(&reservation).copy_from_slice(data);
        Ok(self.commit(reservation, nsid, slba, nlb))
    }

    /// Stages a Write Zeroes or Deallocate of `nlb` blocks from `slba` as a
    /// record of its own: ordered after every write before it and before
    /// every write after it, on the medium and in the partner's copy. No data.
    pub fn stage_op(
        &mut self,
        kind: RecordKind,
        nsid: u32,
        slba: u64,
        nlb: u32,
    ) -> Result<CommitOutcome, ReserveError> {
        let reservation = self.reserve_op()?;
        Ok(self.commit_op(reservation, kind, nsid, slba, nlb))
    }

    /// Reserves a record for [`StagingLog::commit_op`] (no data).
    pub fn reserve_op(&mut self) -> Result<Reservation, ReserveError> {
        let result = self.ring.reserve_op();
        self.count_full(result)
    }

    /// Commits a record reserved by [`StagingLog::reserve_op`].
    pub fn commit_op(
        &mut self,
        reservation: Reservation,
        kind: RecordKind,
        nsid: u32,
        slba: u64,
        nlb: u32,
    ) -> CommitOutcome {
        self.records_committed += 1;
        let outcome = self.ring.commit_op(reservation, kind, nsid, slba, nlb);
        self.index_durable(&outcome);
        outcome
    }

    fn index_durable(&mut self, outcome: &CommitOutcome) {
        for seq in outcome.newly_durable.clone() {
            if let Some(info) = self.ring.record(seq) {
                index_insert(&mut self.index, &info);
            }
        }
    }

    /// The staged pieces of [slba, slba+nlb) of `nsid`, newest data only, in
    /// LBA order, each with its bytes in the ring (None: it reads as zeroes).
    pub fn staged_overlaps(
        &self,
        nsid: u32,
        slba: u64,
        nlb: u32,
    ) -> impl Iterator<Item = (Range<u64>, Option<&[u8]>)> + '_ {
        let bytes = self.ring.region().bytes();
        self.index.overlaps(nsid, slba, nlb).map(move |extent| {
            if extent.data_offset == index::ZEROES {
                return (extent.lbas, None);
            }
            let data = &bytes[extent.data_offset..extent.data_offset + extent.byte_len()];
            (extent.lbas, Some(data))
        })
    }

    /// Overlays staged data on `out`, which holds what the medium returned for
    /// [slba, slba+nlb) at `block_bytes` per block. Returns the blocks replaced.
    pub fn read_overlay(
        &self,
        nsid: u32,
        slba: u64,
        nlb: u32,
        block_bytes: u32,
        out: &mut [u8],
    ) -> Result<u64, StagingError> {
        let mut blocks = 0;
        for (lbas, data) in self.staged_overlaps(nsid, slba, nlb) {
            let at = (lbas.start - slba) as usize * block_bytes as usize;
            let len = (lbas.end - lbas.start) as usize * block_bytes as usize;
            let Some(target) = out.get_mut(at..at + len) else {
                return Err(StagingError::ReadBufferTooSmall { buf_bytes: out.len(), lbas, block_bytes });
            };
            match data {
                Some(data) if data.len() == len => target.copy_from_slice(data),
                Some(_) => {
                    return Err(StagingError::ReadBufferTooSmall { buf_bytes: out.len(), lbas, block_bytes })
                }
                None => target.fill(0),
            }
            blocks += lbas.end - lbas.start;
        }
        Ok(blocks)
    }

    /// Lets the flusher batch and submit work. Returns operations submitted.
    pub fn poll_flusher<B: Backend>(&mut self, backend: &mut B, now_ms: u64) -> usize {
        let submitted = self.flusher.poll(&self.ring, backend, now_ms);
        self.release_durable();
        submitted
    }

    /// Consumes a backend completion of the flusher and releases what became
    /// durable. A completion that is not the flusher's is handed back.
    pub fn on_backend_completion<B: Backend>(
        &mut self,
        backend: &B,
        completion: BackendCompletion,
        now_ms: u64,
    ) -> Option<BackendCompletion> {
        if completion.tag & FLUSHER_TAG_BIT == 0 {
            return Some(completion);
        }
        self.flusher.on_completion(completion, backend.writes_are_durable(), now_ms);
        self.release_durable();
        None
    }

    /// Every record through this is durable on the medium; records beyond
    /// `released_seq` up to it wait for the release limit.
    pub fn medium_through(&self) -> u64 {
        self.medium_through
    }

    /// Limits the release to records through `limit` (`u64::MAX`: none) and
    /// releases what the new limit allows.
    pub fn set_release_limit(&mut self, limit: u64) {
        self.release_limit = limit;
        self.release_durable();
    }

    fn release_durable(&mut self) {
        if let Some(through) = self.flusher.take_durable_through() {
            self.medium_through = self.medium_through.max(through);
        }
        let through = self.medium_through.min(self.release_limit);
        if through <= self.ring.released_seq() {
            return;
        }
        for seq in self.ring.released_seq() + 1..=through {
            if let Some(info) = self.ring.record(seq) {
                if !info.cancelled {
                    self.index.remove_record(info.nsid, info.slba, info.nlb, seq);
                }
            }
        }
        self.ring.release_through(through);
    }

    /// The partner made records `first_seq..=last_seq`, whose medium writes
    /// failed here, durable on the medium from its second store: they are
    /// released like records this node wrote. Returns the records marked.
    pub fn durable_elsewhere(&mut self, first_seq: u64, last_seq: u64) -> u64 {
        let marked = self.flusher.durable_elsewhere(first_seq, last_seq);
        self.release_durable();
        marked
    }

    /// The partner is asked to write records `first_seq..=last_seq`: no
    /// later overlapping write reaches the medium, and nothing from there on
    /// is released, until it answers ([`StagingLog::unfence`]).
    pub fn fence(&mut self, first_seq: u64, last_seq: u64) -> usize {
        self.flusher.fence(first_seq, last_seq)
    }

    /// The partner answered for `range` (None: it can no longer write any:
    /// a new connection's StoreState came, or it is away).
    pub fn unfence(&mut self, range: Option<(u64, u64)>) {
        self.flusher.unfence(range);
        self.release_durable();
    }

    /// Whether some medium write failed and waits to be retried.
    pub fn has_medium_failures(&self) -> bool {
        self.flusher.has_failures()
    }

    /// From a failed medium write until one succeeds.
    pub fn medium_failing(&self) -> bool {
        self.flusher.medium_failing()
    }

    /// The next flusher event (write failures for the partner, corruption).
    pub fn take_event(&mut self) -> Option<FlusherEvent> {
        self.flusher.take_event()
    }

    /// Writes every record durable now to the medium, makes it durable and
    /// releases it (NVMe Flush on a volatile domain, failover, recovery).
    /// Returns the sequence released through. Completions of other users of
    /// the backend go to `foreign`.
    pub fn drain_all<B: Backend, C: FnMut() -> u64, W: FnMut()>(
        &mut self,
        backend: &mut B,
        wait: DrainWait<C, W>,
        foreign: &mut Vec<BackendCompletion>,
    ) -> Result<u64, StagingError> {
        self.drain_all_observed(backend, wait, foreign, &mut |_| {})
    }

    /// `drain_all`, calling `observe` once per pass with how far it got
    /// (the caller shows progress; it rate-limits itself).
    pub fn drain_all_observed<B: Backend, C: FnMut() -> u64, W: FnMut()>(
        &mut self,
        backend: &mut B,
        mut wait: DrainWait<C, W>,
        foreign: &mut Vec<BackendCompletion>,
        observe: &mut dyn FnMut(DrainProgress),
    ) -> Result<u64, StagingError> {
        let start = self.drain_start();
        let target_seq = start.target_seq;
        let mut completions = std::mem::take(&mut self.completions);
        let result = loop {
            observe(self.drain_progress(&start));
            if self.ring.released_seq() >= target_seq {
                break Ok(target_seq);
            }
            let now_ms = (wait.now_ms)();
            if now_ms > wait.deadline_ms {
                break Err(StagingError::DrainDeadline {
                    deadline_ms: wait.deadline_ms,
                    released_seq: self.ring.released_seq(),
                    target_seq,
                    failures_pending: self.flusher.has_failures(),
                });
            }
            let submitted = self.poll_flusher(backend, now_ms);
            completions.clear();
            let completed = backend.poll_completions(&mut completions);
            for completion in completions.drain(..) {
                if let Some(other) = self.on_backend_completion(backend, completion, now_ms) {
                    foreign.push(other);
                }
            }
            if submitted == 0 && completed == 0 {
                (wait.idle)();
            }
        };
        self.completions = completions;
        result
    }

    /// A drain of everything durable now starts here (for `drain_progress`).
    pub fn drain_start(&self) -> DrainStart {
        let bytes_total =
            self.ring.staged_records().filter(|r| !r.cancelled).map(|r| r.data_len as u64).sum();
        DrainStart {
            target_seq: self.ring.durable_seq(),
            released_seq: self.ring.released_seq(),
            bytes_durable: self.flusher.stats().bytes_durable,
            bytes_total,
        }
    }

    /// How far the drain that began at `start` got.
    pub fn drain_progress(&self, start: &DrainStart) -> DrainProgress {
        DrainProgress {
            records_total: start.target_seq - start.released_seq,
            records_done: self.ring.released_seq().min(start.target_seq) - start.released_seq,
            bytes_total: start.bytes_total,
            bytes_done: self.flusher.stats().bytes_durable - start.bytes_durable,
        }
    }

    /// Starts a new epoch; only when nothing is staged.
    pub fn begin_epoch(&mut self, epoch: u64) -> Result<(), StagingError> {
        Ok(self.ring.begin_epoch(epoch)?)
    }

    pub fn stats(&self) -> StagingStats {
        StagingStats {
            staged_records: self.ring.durable_seq() - self.ring.released_seq(),
            staged_bytes: self.ring.used_bytes(),
            free_bytes: self.ring.free_bytes(),
            records_committed: self.records_committed,
            bytes_committed: self.bytes_committed,
            ring_full: self.ring_full,
            flusher: self.flusher.stats(),
        }
    }
}

fn index_insert(index: &mut StagingIndex, info: &RecordInfo) {
    if !info.cancelled && info.kind.is_op() {
        index.insert(info.nsid, info.slba, info.nlb, info.seq, index::ZEROES, 0);
    } else if !info.cancelled {
        let block_bytes = (info.data_len / info.nlb as usize) as u32;
        index.insert(info.nsid, info.slba, info.nlb, info.seq, info.data_offset, block_bytes);
    }
}
