//! The owner's side of one ring's mirror as a state machine, sans-I/O: the
//! [`MirrorSender`], the policy while the partner is away, the resync after
//! it returns, the owner's failed medium writes handed to the partner, and
//! the limit on how long the medium may fail. No sockets, no threads, no
//! clock: time comes in as milliseconds, frames come in decoded and go out
//! encoded into the caller's buffer, and the one outside effect (stop or
//! resume taking writes for the group) is returned. `pair::owner` drives it
//! over TCP; the two-node simulation (`ha::sim`) drives the same code over a
//! simulated link, media and clock.
//!
//! While the partner is away (not connected for `partner_timeout_ms`):
//! - `write-back`: writes complete with the one persistent copy (the gate is
//!   degraded) and the flusher releases records without the partner;
//! - `write-through`: writes complete once on the medium (the release is no
//!   longer held back, so they get there);
//! - `stall`: nothing completes and nothing is released until it is back.
//!
//! When it comes back, the partner's `StoreState` decides: stream on, or
//! format its store and send every unreleased record again (`ha::mirror`).
//! Writes not yet acknowledged then wait for the resync to reach them.

use super::ack::{AckError, MirrorMode};
use super::link::frame::{encode, Frame, SeqRange, SeqRanges};
use super::mirror::{MirrorSender, SendError, StoreDecision};
use super::{FlusherEvent, StagingLog};
use crate::config::PartnerAway;
use tandem_env::persist::PersistentRegion;

/// Failed-sequence reports the owner keeps outstanding at most; later
/// failures are reported after the next retry fails again.
pub const FAILED_OUTSTANDING_MAX: usize = 32;

/// The mirror's state as `tandem rpc status` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MirrorState {
    /// Not connected, within `partner_timeout_ms` of losing (or never
    /// having) the partner: writes wait.
    Connecting = 0,
    /// The partner holds every record the owner holds, or is acknowledging
    /// them as they come.
    InSync = 1,
    /// Connected, and sending the partner what it missed.
    Resyncing = 2,
    /// The partner is away; `pair.partner_away` rules.
    Degraded = 3,
}

impl MirrorState {
    pub fn name(self) -> &'static str {
        match self {
            MirrorState::Connecting => "connecting",
            MirrorState::InSync => "in-sync",
            MirrorState::Resyncing => "resyncing",
            MirrorState::Degraded => "degraded",
        }
    }

    pub fn from_u8(v: u8) -> MirrorState {
        match v {
            1 => MirrorState::InSync,
            2 => MirrorState::Resyncing,
            3 => MirrorState::Degraded,
            _ => MirrorState::Connecting,
        }
    }
}

/// Tuning of [`OwnerMirror`], from `[pair]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnerMirrorConfig {
    pub policy: PartnerAway,
    pub partner_timeout_ms: u64,
    pub medium_failed_limit_ms: u64,
}

/// The effect of a tick on the group's ANA state on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupAccess {
    /// The medium failed past the limit: take no writes (inaccessible).
    Stop,
    /// The medium works again: take writes (optimized).
    Resume,
}

/// Something the caller logs (the core has no logger of its own to keep it
/// testable; each is returned once, when it happens).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MirrorNote {
    Resumed { held_through: u64 },
    Formatting { why: &'static str },
    Truncating { through: u64, held_through: u64 },
    PartnerBack,
    InSync { through: u64 },
    Away { policy: PartnerAway },
    PartnerWrote { first: u64, last: u64, marked: u64 },
    PartnerCouldNotWrite { first: u64, last: u64, status: u32 },
    MediumStopped,
    MediumResumed,
}

/// Why a frame from the partner ends the connection.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum OwnerFrameError {
    #[error("the partner's acknowledgement is refused: {0}")]
    Ack(#[from] AckError),
    #[error("FailedDone for batch {0}, which was not sent")]
    UnknownBatch(u64),
}

/// See the module docs.
#[derive(Debug)]
pub struct OwnerMirror {
    config: OwnerMirrorConfig,
    sender: MirrorSender,
    connected: bool,
    /// Since when the partner has not been connected (None: connected).
    down_since_ms: Option<u64>,
    away: bool,
    /// The sequence a resync must reach before the mirror is in sync again.
    resync_target: Option<u64>,
    /// Failed ranges to report to the partner, and those it is writing:
    /// (batch id, first seq, last seq, sent).
    failed: Vec<(u64, u64, u64, bool)>,
    next_failed_batch: u64,
    /// Since when the medium has had writes failing.
    medium_failing_since_ms: Option<u64>,
    medium_stopped: bool,
    notes: std::collections::VecDeque<MirrorNote>,
    /// Writes acknowledged with one copy while the partner was away.
    pub degraded_acks: u64,
    /// Records the partner wrote to the medium for this node.
    pub partner_writes: u64,
    /// The partner's store was formatted and refilled.
    pub formats: u64,
}

impl OwnerMirror {
    /// The mirror of `log`'s ring, not connected yet (since `now_ms`). Until
    /// the partner attaches, nothing is released.
    pub fn new<R: PersistentRegion>(
        log: &mut StagingLog<R>,
        config: OwnerMirrorConfig,
        now_ms: u64,
    ) -> OwnerMirror {
        let sender = MirrorSender::new(log.ring());
        log.set_release_limit(sender.releasable_through(u64::MAX));
        OwnerMirror {
            config,
            sender,
            connected: false,
            down_since_ms: Some(now_ms),
            away: false,
            resync_target: None,
            failed: Vec::with_capacity(FAILED_OUTSTANDING_MAX),
            next_failed_batch: 1,
            medium_failing_since_ms: None,
            medium_stopped: false,
            notes: std::collections::VecDeque::with_capacity(8),
            degraded_acks: 0,
            partner_writes: 0,
            formats: 0,
        }
    }

    pub fn sender(&self) -> &MirrorSender {
        &self.sender
    }
    pub fn is_connected(&self) -> bool {
        self.connected
    }
    pub fn is_away(&self) -> bool {
        self.away
    }
    /// The medium failed past the limit: the group takes no writes here.
    pub fn medium_stopped(&self) -> bool {
        self.medium_stopped
    }
    pub fn policy(&self) -> PartnerAway {
        self.config.policy
    }

    /// The next thing to log, oldest first.
    pub fn take_note(&mut self) -> Option<MirrorNote> {
        self.notes.pop_front()
    }

    /// Writes through this sequence may complete: both copies durable, or
    /// on the medium, or (write-back, partner away) the one local copy.
    pub fn ack_through<R: PersistentRegion>(&mut self, log: &StagingLog<R>) -> u64 {
        self.local_durable(log.durable_seq());
        self.sender.gate().acked_through().max(log.released_seq())
    }

    /// The first store holds everything through `seq`; counts what that
    /// acknowledges with one copy.
    fn local_durable(&mut self, seq: u64) {
        let acked = self.sender.local_durable(seq);
        if self.sender.gate().mode() == MirrorMode::Degraded && !acked.is_empty() {
            self.degraded_acks += acked.end() - acked.start() + 1;
        }
    }

    /// A connection is up and the partner's `StoreState` arrived.
    pub fn attached<R: PersistentRegion>(
        &mut self,
        log: &mut StagingLog<R>,
        format_nonce: u64,
        epoch: u64,
        held_through: u64,
        released_seq: u64,
    ) -> Result<StoreDecision, AckError> {
        self.sender.reconnected();
        let decision =
            self.sender.on_store_state(log.ring(), format_nonce, epoch, held_through, released_seq)?;
        match &decision {
            StoreDecision::Resume(_) => self.notes.push_back(MirrorNote::Resumed { held_through }),
            StoreDecision::Format(why) => {
                self.formats += 1;
                self.notes.push_back(MirrorNote::Formatting { why });
            }
            StoreDecision::Truncate(through) => {
                self.notes.push_back(MirrorNote::Truncating { through: *through, held_through })
            }
        }
        if self.sender.gate().mode() == MirrorMode::Degraded {
            // Acknowledged writes stay acknowledged; new ones wait for both copies again.
            let _ = self.sender.set_mode(MirrorMode::Mirrored);
        }
        if self.away {
            self.notes.push_back(MirrorNote::PartnerBack);
        }
        // The old connection's failed-record writes are over: its thread held
        // the partner's store until it ended, and this StoreState needed it.
        log.unfence(None);
        self.away = false;
        self.connected = true;
        self.down_since_ms = None;
        self.resync_target = Some(log.durable_seq());
        Ok(decision)
    }

    /// The connection is gone (at `now_ms`). Reports in flight are lost with
    /// it; the next failed retry reports its records again.
    pub fn lost(&mut self, now_ms: u64) {
        self.connected = false;
        self.failed.clear();
        self.down_since_ms.get_or_insert(now_ms);
    }

    /// A flusher event: a medium write that failed is reported to the
    /// partner, which writes the records from its second store (when it
    /// holds them) and answers.
    pub fn on_flusher_event(&mut self, event: &FlusherEvent) {
        let (first, last) = match *event {
            FlusherEvent::WriteFailed { first_seq, last_seq, .. } => (first_seq, last_seq),
            FlusherEvent::FlushFailed { first_seq, last_seq, .. } if first_seq <= last_seq => {
                (first_seq, last_seq)
            }
            _ => return,
        };
        if !self.connected
            || last > self.sender.held_through()
            || self.failed.len() >= FAILED_OUTSTANDING_MAX
            || self.failed.iter().any(|&(_, f, l, _)| f <= first && last <= l)
        {
            return;
        }
        self.failed.push((self.next_failed_batch, first, last, false));
        self.next_failed_batch += 1;
    }

    /// A frame from the partner (RecordAck or FailedDone; the caller handles
    /// heartbeats and goodbyes). Err: the connection is to be dropped.
    pub fn on_frame<R: PersistentRegion>(
        &mut self,
        log: &mut StagingLog<R>,
        frame: &Frame<'_>,
    ) -> Result<(), OwnerFrameError> {
        match *frame {
            Frame::RecordAck { .. } => {
                self.sender.on_frame(frame)?;
            }
            Frame::FailedDone { batch_id, status, .. } => {
                let Some(at) = self.failed.iter().position(|&(id, _, _, sent)| id == batch_id && sent) else {
                    return Err(OwnerFrameError::UnknownBatch(batch_id));
                };
                let (_, first, last, _) = self.failed.swap_remove(at);
                log.unfence(Some((first, last)));
                if status == 0 {
                    let marked = log.durable_elsewhere(first, last);
                    self.partner_writes += marked;
                    self.notes.push_back(MirrorNote::PartnerWrote { first, last, marked });
                } else {
                    self.notes.push_back(MirrorNote::PartnerCouldNotWrite { first, last, status });
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Encodes what is to be sent — failed-sequence reports, then the
    /// mirror's `Released` and `Record`s — into `out`. Returns the bytes.
    pub fn fill<R: PersistentRegion>(
        &mut self,
        log: &mut StagingLog<R>,
        out: &mut [u8],
    ) -> Result<usize, SendError> {
        if !self.connected {
            return Ok(0);
        }
        let mut at = 0;
        for entry in self.failed.iter_mut().filter(|e| !e.3) {
            let range = [SeqRange { first: entry.1, last: entry.2 }];
            let frame = Frame::FailedSeqs { batch_id: entry.0, ranges: SeqRanges::List(&range) };
            match encode(&frame, &mut out[at..]) {
                Ok(n) => {
                    at += n;
                    entry.3 = true;
                    log.fence(entry.1, entry.2);
                }
                Err(_) => break,
            }
        }
        Ok(at + self.sender.fill(log.ring(), &mut out[at..])?)
    }

    /// Time passed (`now_ms`): the partner may count as away, the medium as
    /// failed too long; the release follows the partner's copy. Returns a
    /// change of the group's access, if one is due.
    pub fn tick<R: PersistentRegion>(&mut self, log: &mut StagingLog<R>, now_ms: u64) -> Option<GroupAccess> {
        self.local_durable(log.durable_seq());
        let was_away = self.away;
        self.check_away(now_ms);
        if self.away && !was_away {
            // An away partner writes nothing more for this node.
            log.unfence(None);
        }
        let access = self.check_medium(log, now_ms);
        log.set_release_limit(self.release_limit());
        if let Some(target) = self.resync_target {
            if self.connected && self.sender.held_through() >= target {
                self.notes.push_back(MirrorNote::InSync { through: target });
                self.resync_target = None;
            }
        }
        access
    }

    fn release_limit(&self) -> u64 {
        match (self.away, self.config.policy) {
            (true, PartnerAway::WriteBack | PartnerAway::WriteThrough) => u64::MAX,
            _ => self.sender.releasable_through(u64::MAX),
        }
    }

    fn check_away(&mut self, now_ms: u64) {
        let Some(since) = self.down_since_ms else { return };
        if self.away || now_ms.saturating_sub(since) < self.config.partner_timeout_ms {
            return;
        }
        self.away = true;
        self.resync_target = None;
        if self.config.policy == PartnerAway::WriteBack {
            // The writes that waited only for the partner complete now, with one copy.
            let acked = self.sender.set_mode(MirrorMode::Degraded);
            if !acked.is_empty() {
                self.degraded_acks += acked.end() - acked.start() + 1;
            }
        }
        self.notes.push_back(MirrorNote::Away { policy: self.config.policy });
    }

    fn check_medium<R: PersistentRegion>(&mut self, log: &StagingLog<R>, now_ms: u64) -> Option<GroupAccess> {
        if !log.medium_failing() {
            self.medium_failing_since_ms = None;
            if self.medium_stopped {
                self.medium_stopped = false;
                self.notes.push_back(MirrorNote::MediumResumed);
                return Some(GroupAccess::Resume);
            }
            return None;
        }
        let since = *self.medium_failing_since_ms.get_or_insert(now_ms);
        if self.medium_stopped || now_ms.saturating_sub(since) < self.config.medium_failed_limit_ms {
            return None;
        }
        self.medium_stopped = true;
        self.notes.push_back(MirrorNote::MediumStopped);
        Some(GroupAccess::Stop)
    }

    pub fn state(&self) -> MirrorState {
        if self.away {
            MirrorState::Degraded
        } else if !self.connected {
            MirrorState::Connecting
        } else if self.resync_target.is_some() {
            MirrorState::Resyncing
        } else {
            MirrorState::InSync
        }
    }
}
