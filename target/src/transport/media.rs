//! A reactor's view of one namespace's medium: its backend handle and, for a
//! staged namespace, the staging log in front of it with the requests that
//! wait on the log.
//!
//! A staged write (and a Write Zeroes or Deallocate, each a record of its
//! own) is acknowledged when its record is durable in the ring and, in a
//! pair, in the partner's second store (the mirror's `ack_through` passes its
//! sequence); records become durable strictly in sequence order, so the
//! waiters are a FIFO in sequence order. Commands that need the medium itself
//! to be current — Flush and FUA writes on a volatile domain — wait until the
//! flusher has released everything staged before them. Requests are named
//! by their transport tag; a tag whose connection went away is simply
//! dropped by the transport when it comes back.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tandem_env::MappedRegion;
use tracing::warn;

use crate::backend::{Backend, BackendCompletion};
use crate::ha::{FlusherEvent, StagingLog};
use crate::pair::owner::MirrorLink;

/// A request that became ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ready {
    /// A staged write is durable in the ring (sequence `seq`).
    Durable { tag: u64, seq: u64 },
    /// The medium holds everything the request waited for.
    Released { tag: u64 },
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

/// Staging state of one namespace on the reactor that owns its log.
pub struct Staged {
    pub log: StagingLog<MappedRegion>,
    /// The domain loses data on power loss: FUA and Flush must reach the medium.
    pub volatile: bool,
    pub nsid: u32,
    pub block_bytes: u32,
    /// Reserved writes in sequence order, acknowledged when durable.
    awaiting_durable: VecDeque<(u64, u64)>,
    /// Requests waiting for `released_seq >= seq`, in sequence order.
    awaiting_release: VecDeque<(u64, u64)>,
    /// Requests waiting for ring space (R2T writes not yet started).
    pub awaiting_space: VecDeque<u64>,
    /// Published for the control socket.
    pub status: Arc<StagingStatus>,
    /// In a pair: the mirror of this ring into the partner's second store.
    /// A write completes when the mirror says so, not when the ring has it.
    pub mirror: Option<MirrorLink>,
}

/// Waiters kept per staged namespace at most; beyond, the transport's own
/// request limits apply first (one entry per outstanding command).
const WAITERS_PREALLOCATED: usize = 4096;

impl Staged {
    pub fn new(log: StagingLog<MappedRegion>, volatile: bool, nsid: u32, block_bytes: u32) -> Staged {
        Staged {
            log,
            volatile,
            nsid,
            block_bytes,
            awaiting_durable: VecDeque::with_capacity(WAITERS_PREALLOCATED),
            awaiting_release: VecDeque::with_capacity(WAITERS_PREALLOCATED),
            awaiting_space: VecDeque::with_capacity(WAITERS_PREALLOCATED),
            status: Arc::new(StagingStatus::default()),
            mirror: None,
        }
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

    /// Registers a reserved write; call in reservation (sequence) order.
    pub fn await_durable(&mut self, seq: u64, tag: u64) {
        debug_assert!(self.awaiting_durable.back().is_none_or(|(s, _)| *s < seq));
        self.awaiting_durable.push_back((seq, tag));
    }

    /// Registers a request that waits for everything up to `seq` on the medium.
    pub fn await_release(&mut self, seq: u64, tag: u64) {
        if self.awaiting_release.back().is_some_and(|(s, _)| *s > seq) {
            // Keep the queue sorted (a FUA write can register after a later Flush).
            let at = self.awaiting_release.partition_point(|(s, _)| *s <= seq);
            self.awaiting_release.insert(at, (seq, tag));
        } else {
            self.awaiting_release.push_back((seq, tag));
        }
    }

    /// Moves every waiter whose condition holds into `out`.
    pub fn collect_ready(&mut self, out: &mut Vec<Ready>) {
        let durable = match self.mirror.as_mut() {
            None => self.log.durable_seq(),
            Some(mirror) => mirror.ack_through(&self.log),
        };
        while let Some(&(seq, tag)) = self.awaiting_durable.front() {
            if seq > durable {
                break;
            }
            self.awaiting_durable.pop_front();
            out.push(Ready::Durable { tag, seq });
        }
        let released = self.log.released_seq();
        while let Some(&(seq, tag)) = self.awaiting_release.front() {
            if seq > released {
                break;
            }
            self.awaiting_release.pop_front();
            out.push(Ready::Released { tag });
        }
    }

    /// The group stopped taking writes (its medium failed too long): writes
    /// waiting for ring space are answered with the ANA status.
    pub fn refuses_writes(&self) -> bool {
        self.mirror.as_ref().is_some_and(|m| m.medium_stopped())
    }

    /// Whether anything waits on the flusher (the reactor must keep polling).
    pub fn has_waiters(&self) -> bool {
        !self.awaiting_durable.is_empty()
            || !self.awaiting_release.is_empty()
            || !self.awaiting_space.is_empty()
    }
}

/// One namespace's medium as this reactor sees it.
pub struct NsMedia {
    pub backend: Box<dyn Backend>,
    pub staged: Option<Staged>,
}

impl NsMedia {
    pub fn direct(backend: Box<dyn Backend>) -> NsMedia {
        NsMedia { backend, staged: None }
    }

    /// Runs the flusher and moves backend completions that are not the
    /// flusher's into `out`. Returns whether anything happened.
    pub fn poll(
        &mut self,
        now_ms: u64,
        scratch: &mut Vec<BackendCompletion>,
        out: &mut Vec<BackendCompletion>,
    ) -> bool {
        let mut busy = false;
        scratch.clear();
        busy |= self.backend.poll_completions(scratch) > 0;
        match self.staged.as_mut() {
            None => out.append(scratch),
            Some(st) => {
                for c in scratch.drain(..) {
                    if let Some(other) = st.log.on_backend_completion(&self.backend, c, now_ms) {
                        out.push(other);
                    }
                }
                busy |= st.log.poll_flusher(&mut self.backend, now_ms) > 0;
                if let Some(mirror) = st.mirror.as_mut() {
                    busy |= mirror.poll(&mut st.log);
                }
                while let Some(event) = st.log.take_event() {
                    if let Some(mirror) = st.mirror.as_mut() {
                        mirror.on_flusher_event(&event);
                    }
                    match event {
                        FlusherEvent::WriteFailed { .. } | FlusherEvent::FlushFailed { .. } => {
                            st.status.medium_failures.fetch_add(1, Ordering::Relaxed);
                            warn!(
                                nsid = st.nsid,
                                ?event,
                                "medium write failed: records stay staged and are retried"
                            );
                        }
                        other => warn!(nsid = st.nsid, event = ?other, "staging log event"),
                    }
                }
                st.publish_status();
            }
        }
        busy
    }
}
