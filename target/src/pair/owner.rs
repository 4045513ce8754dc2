//! The owner's side of one ring's mirror, run by the reactor that owns the
//! ring: a nonblocking socket (handed over by the dialer), the sans-I/O
//! [`MirrorSender`] and the policy while the partner is away.
//!
//! Each reactor pass ([`MirrorLink::poll`]): tell the sender what the first
//! store holds, read the partner's acknowledgements and heartbeats, encode
//! what is to be sent (`Released`, then `Record`s) and write it, and limit
//! the staging log's release to what the partner holds. The transport asks
//! [`MirrorLink::ack_through`] which writes may complete: both copies
//! durable, or — while the partner is away — what `pair.partner_away` says.
//!
//! While the partner is away (no connection for `partner_timeout_ms`):
//! - `write-back`: writes complete with the one persistent copy (the gate is
//!   degraded; status says "degraded" loudly), and the flusher releases
//!   records without the partner;
//! - `write-through`: writes complete once on the medium (the release is no
//!   longer held back, so they get there);
//! - `stall`: nothing completes and nothing is released until it is back.
//!
//! When it comes back, the partner's `StoreState` decides: stream on, or
//! format its store and send every unreleased record again (`ha::mirror`).
//! Writes not yet acknowledged then wait for the resync to reach them.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_env::persist::PersistentRegion;
use tracing::{error, info, warn};

use super::dialer::{Attached, DialRequests};
use super::{LinkCounters, CONTROL_ONLY_PAYLOAD_BYTES_MAX};
use crate::config::PartnerAway;
use crate::ctrl::{AnaState, TargetState};
use crate::ha::ack::MirrorMode;
use crate::ha::link::frame::{encode, Frame, FrameDecoder, SeqRange, SeqRanges};
use crate::ha::mirror::{MirrorSender, StoreDecision};
use crate::ha::FlusherEvent;
use crate::ha::StagingLog;

/// Bytes of encoded frames a link buffers towards the partner.
const SEND_BUFFER_BYTES: usize = 4 << 20;

/// The mirror's state as `tandem rpc status` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MirrorState {
    /// Not connected yet, within `partner_timeout_ms` of losing (or never
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

/// What the owner's mirror of one ring is doing, for the control socket.
#[derive(Debug, Default)]
pub struct MirrorStatus {
    pub state: AtomicU8,
    pub link_up: AtomicBool,
    /// Records put on the wire through this sequence (this connection).
    pub sent_through: AtomicU64,
    /// The partner's second store holds every record through this.
    pub held_through: AtomicU64,
    /// Writes through this sequence may complete (were acknowledged).
    pub acked_through: AtomicU64,
    /// The partner's store was formatted and refilled (resyncs from the start).
    pub formats: AtomicU64,
    /// Writes acknowledged with one copy while the partner was away.
    pub degraded_acks: AtomicU64,
    /// Records whose medium write failed here and that the partner wrote
    /// to the medium from its second store.
    pub partner_writes: AtomicU64,
    /// The medium failed for longer than `pair.medium_failed_limit_ms`: the
    /// group's writes are refused here (ANA inaccessible) until it recovers.
    pub medium_stopped: AtomicBool,
}

/// Failed-sequence reports the owner keeps outstanding at most; later
/// failures are reported after the next retry fails again.
const FAILED_OUTSTANDING_MAX: usize = 32;

struct OwnerConn {
    stream: TcpStream,
    decoder: FrameDecoder<Box<[u8]>>,
    out: Box<[u8]>,
    out_start: usize,
    out_end: usize,
    last_rx: Instant,
    last_heartbeat: Instant,
    heartbeat_counter: u64,
    heartbeat_sent: Option<(u64, Instant)>,
}

/// See the module docs.
pub struct MirrorLink {
    store_id: u64,
    nsid: u32,
    partner: String,
    policy: PartnerAway,
    timeout: Duration,
    sender: MirrorSender,
    conn: Option<OwnerConn>,
    /// Since when the partner has not been connected (None: connected).
    down_since: Option<Instant>,
    away: bool,
    /// The sequence a resync must reach before the mirror is in sync again.
    resync_target: Option<u64>,
    dial: DialRequests,
    pub status: Arc<MirrorStatus>,
    counters: Arc<LinkCounters>,
    /// Failed ranges to report to the partner, and those it is writing:
    /// (batch id, first seq, last seq, sent).
    failed: Vec<(u64, u64, u64, bool)>,
    next_failed_batch: u64,
    /// Since when the medium has had writes failing and waiting for a retry.
    medium_failing_since: Option<Instant>,
    medium_failed_limit: Duration,
    /// The group's ANA state on this node's ports, set when the medium fails too long.
    ana: Option<(Arc<TargetState>, u32)>,
}

impl MirrorLink {
    /// The mirror of `log`'s ring, whose partner is reached through `dial`.
    /// Until the partner attaches, nothing is released.
    pub fn new<R: PersistentRegion>(
        store_id: u64,
        nsid: u32,
        log: &mut StagingLog<R>,
        pair: &crate::config::PairConfig,
        dial: DialRequests,
        counters: Arc<LinkCounters>,
        ana: Option<(Arc<TargetState>, u32)>,
    ) -> MirrorLink {
        let sender = MirrorSender::new(log.ring());
        log.set_release_limit(sender.releasable_through(u64::MAX));
        dial.request(store_id);
        MirrorLink {
            store_id,
            nsid,
            partner: pair.partner.clone(),
            policy: pair.partner_away,
            timeout: Duration::from_millis(pair.partner_timeout_ms),
            sender,
            conn: None,
            down_since: Some(Instant::now()),
            away: false,
            resync_target: None,
            dial,
            status: Arc::new(MirrorStatus::default()),
            counters,
            failed: Vec::with_capacity(FAILED_OUTSTANDING_MAX),
            next_failed_batch: 1,
            medium_failing_since: None,
            medium_failed_limit: Duration::from_millis(pair.medium_failed_limit_ms),
            ana,
        }
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
        if self.conn.is_none()
            || last > self.sender.held_through()
            || self.failed.len() >= FAILED_OUTSTANDING_MAX
            || self.failed.iter().any(|&(_, f, l, _)| f <= first && last <= l)
        {
            return;
        }
        self.failed.push((self.next_failed_batch, first, last, false));
        self.next_failed_batch += 1;
    }

    pub fn store_id(&self) -> u64 {
        self.store_id
    }

    /// Writes through this sequence may complete.
    pub fn ack_through<R: PersistentRegion>(&mut self, log: &StagingLog<R>) -> u64 {
        let before = self.sender.gate().acked_through();
        self.sender.local_durable(log.durable_seq());
        let acked = self.sender.gate().acked_through();
        if self.sender.gate().mode() == MirrorMode::Degraded && acked > before {
            self.status.degraded_acks.fetch_add(acked - before, Ordering::Relaxed);
        }
        // A record on the medium needs no second copy.
        acked.max(log.released_seq())
    }

    /// Takes the connection the dialer made; returns its fd for the reactor
    /// to watch (None: refused, the dialer was asked again).
    pub fn attach<R: PersistentRegion>(
        &mut self,
        log: &mut StagingLog<R>,
        attached: Attached,
    ) -> Option<RawFd> {
        let Attached { stream, state, leftover, partner, .. } = attached;
        if let Err(e) = stream.set_nonblocking(true) {
            warn!(nsid = self.nsid, error = %e, "mirror: cannot use the partner's connection");
            self.lost("socket setup failed");
            return None;
        }
        let buf = vec![0u8; 2 * (CONTROL_ONLY_PAYLOAD_BYTES_MAX + 64)].into_boxed_slice();
        let Ok(mut decoder) = FrameDecoder::new(buf, CONTROL_ONLY_PAYLOAD_BYTES_MAX) else {
            unreachable!("the control decoder's size is a constant that fits");
        };
        if decoder.feed(&leftover) != leftover.len() {
            self.lost("the partner sent more than a control frame's worth before the stream started");
            return None;
        }
        self.sender.reconnected();
        let decision = self.sender.on_store_state(
            log.ring(),
            state.format_nonce,
            state.epoch,
            state.held_through,
            state.released_seq,
        );
        let now = Instant::now();
        match decision {
            Ok(StoreDecision::Resume(_)) => {
                info!(nsid = self.nsid, partner = %partner, held_through = state.held_through,
                      "mirror: the partner's store is a copy; streaming on from what it holds");
            }
            Ok(StoreDecision::Format(why)) => {
                self.status.formats.fetch_add(1, Ordering::Relaxed);
                info!(nsid = self.nsid, partner = %partner, why,
                      "mirror: formatting the partner's store and sending every unreleased record again");
            }
            Err(e) => {
                self.counters.count_refused();
                warn!(nsid = self.nsid, error = %e, "mirror: the partner's StoreState is refused");
                self.lost("StoreState refused");
                return None;
            }
        }
        if self.sender.gate().mode() == MirrorMode::Degraded {
            // Acknowledged writes stay acknowledged; new ones wait for both copies again.
            let _ = self.sender.set_mode(MirrorMode::Mirrored);
        }
        if self.away {
            warn!(nsid = self.nsid, partner = %partner, "mirror: the partner is back; resyncing");
        }
        self.away = false;
        self.down_since = None;
        self.resync_target = Some(log.durable_seq());
        self.partner = partner;
        let fd = stream.as_raw_fd();
        self.conn = Some(OwnerConn {
            stream,
            decoder,
            out: vec![0u8; SEND_BUFFER_BYTES].into_boxed_slice(),
            out_start: 0,
            out_end: 0,
            last_rx: now,
            last_heartbeat: now,
            heartbeat_counter: 0,
            heartbeat_sent: None,
        });
        self.counters.connects.fetch_add(1, Ordering::Relaxed);
        self.status.link_up.store(true, Ordering::Relaxed);
        Some(fd)
    }

    /// The connection is gone: ask for a new one.
    fn lost(&mut self, why: &str) {
        if self.conn.take().is_some() {
            warn!(nsid = self.nsid, partner = %self.partner, why, "mirror: connection to the partner lost");
        }
        self.status.link_up.store(false, Ordering::Relaxed);
        // Reports in flight are lost with the connection; the next failed
        // retry reports its records again.
        self.failed.clear();
        self.down_since.get_or_insert_with(Instant::now);
        self.dial.request(self.store_id);
    }

    /// One reactor pass; returns whether anything moved.
    pub fn poll<R: PersistentRegion>(&mut self, log: &mut StagingLog<R>) -> bool {
        let now = Instant::now();
        self.sender.local_durable(log.durable_seq());
        let mut busy = false;
        if self.conn.is_some() {
            match self.exchange(log, now) {
                Ok(moved) => busy |= moved,
                Err(why) => {
                    self.lost(&why);
                    busy = true;
                }
            }
        }
        self.check_away(now);
        self.check_medium(log, now);
        log.set_release_limit(self.release_limit());
        if let Some(target) = self.resync_target {
            if self.sender.held_through() >= target && self.conn.is_some() {
                info!(nsid = self.nsid, through = target, "mirror: in sync with the partner");
                self.resync_target = None;
            }
        }
        self.publish();
        busy
    }

    fn release_limit(&self) -> u64 {
        match (self.away, self.policy) {
            (true, PartnerAway::WriteBack | PartnerAway::WriteThrough) => u64::MAX,
            _ => self.sender.releasable_through(u64::MAX),
        }
    }

    /// A medium that keeps failing past `pair.medium_failed_limit_ms`: this
    /// node stops taking writes for the group (its ports report the group
    /// inaccessible), and takes them again once the medium works.
    fn check_medium<R: PersistentRegion>(&mut self, log: &StagingLog<R>, now: Instant) {
        if !log.medium_failing() {
            self.medium_failing_since = None;
            if self.status.medium_stopped.swap(false, Ordering::Relaxed) {
                if let Some((target, group)) = &self.ana {
                    target.set_ana_state(None, *group, AnaState::Optimized);
                }
                warn!(nsid = self.nsid, "the medium works again: taking writes for the group again");
            }
            return;
        }
        let since = *self.medium_failing_since.get_or_insert(now);
        if now.duration_since(since) < self.medium_failed_limit
            || self.status.medium_stopped.load(Ordering::Relaxed)
        {
            return;
        }
        self.status.medium_stopped.store(true, Ordering::Relaxed);
        if let Some((target, group)) = &self.ana {
            target.set_ana_state(None, *group, AnaState::Inaccessible);
        }
        error!(
            nsid = self.nsid,
            limit_ms = self.medium_failed_limit.as_millis() as u64,
            "the medium has failed writes for longer than pair.medium_failed_limit_ms: this node stops \
                taking writes for the group (ANA inaccessible); staged writes stay in both stores"
        );
    }

    fn check_away(&mut self, now: Instant) {
        let Some(since) = self.down_since else { return };
        if self.away || now.duration_since(since) < self.timeout {
            return;
        }
        self.away = true;
        self.resync_target = None;
        match self.policy {
            PartnerAway::WriteBack => {
                let _ = self.sender.set_mode(MirrorMode::Degraded);
                error!(nsid = self.nsid, partner = %self.partner, timeout_ms = self.timeout.as_millis() as u64,
                       "mirror DEGRADED: the partner is away; writes complete with ONE persistent copy \
                        (pair.partner_away = write-back) until it is back and resynced");
            }
            PartnerAway::WriteThrough => {
                warn!(nsid = self.nsid, partner = %self.partner,
                      "mirror degraded: the partner is away; writes complete once on the medium \
                       (pair.partner_away = write-through)");
            }
            PartnerAway::Stall => {
                warn!(nsid = self.nsid, partner = %self.partner,
                      "mirror degraded: the partner is away; writes wait for it (pair.partner_away = stall)");
            }
        }
    }

    /// Reads the partner's frames and writes ours. Err: the connection is unusable.
    fn exchange<R: PersistentRegion>(
        &mut self,
        log: &mut StagingLog<R>,
        now: Instant,
    ) -> Result<bool, String> {
        let timeout = self.timeout;
        let Some(conn) = self.conn.as_mut() else { return Ok(false) };
        let mut busy = false;
        // Receive: frames already buffered first (the dialer's leftover), then the socket.
        loop {
            loop {
                let frame = match conn.decoder.next_frame() {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(e) => {
                        self.counters.count_refused();
                        return Err(format!("a frame from the partner is refused: {e}"));
                    }
                };
                match frame {
                    Frame::RecordAck { .. } => {
                        if let Err(e) = self.sender.on_frame(&frame) {
                            self.counters.count_refused();
                            return Err(format!("the partner's acknowledgement is refused: {e}"));
                        }
                    }
                    Frame::Heartbeat { echo_counter, .. } => {
                        if let Some((counter, sent)) = conn.heartbeat_sent {
                            if echo_counter == counter {
                                let rtt = now.duration_since(sent).as_micros() as u64;
                                self.counters.rtt_us.store(rtt.max(1), Ordering::Relaxed);
                                conn.heartbeat_sent = None;
                            }
                        }
                    }
                    Frame::FailedDone { batch_id, written_count, status } => {
                        let Some(at) =
                            self.failed.iter().position(|&(id, _, _, sent)| id == batch_id && sent)
                        else {
                            self.counters.count_refused();
                            return Err(format!("FailedDone for batch {batch_id}, which was not sent"));
                        };
                        let (_, first, last, _) = self.failed.swap_remove(at);
                        if status == 0 {
                            let marked = log.durable_elsewhere(first, last);
                            self.status.partner_writes.fetch_add(marked, Ordering::Relaxed);
                            info!(
                                nsid = self.nsid,
                                first,
                                last,
                                written_count,
                                marked,
                                "the partner wrote records whose medium write failed here"
                            );
                        } else {
                            warn!(nsid = self.nsid, first, last, status,
                                  "the partner could not write the failed records; they stay staged and are retried");
                        }
                    }
                    Frame::Goodbye { reason } => {
                        return Err(format!("the partner said goodbye ({reason:?})"))
                    }
                    other => {
                        self.counters.count_refused();
                        return Err(format!("unexpected {:?} frame from the partner", other.kind()));
                    }
                }
            }
            let spare = conn.decoder.spare_mut();
            match conn.stream.read(spare) {
                Ok(0) => return Err("the partner closed the connection".into()),
                Ok(n) => {
                    conn.decoder.commit(n);
                    conn.last_rx = now;
                    busy = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("receive: {e}")),
            }
        }
        if now.duration_since(conn.last_rx) > timeout {
            return Err(format!("no frame from the partner for {} ms", timeout.as_millis()));
        }
        // Send: heartbeats between the records, then what the sender has.
        if conn.out_start == conn.out_end {
            conn.out_start = 0;
            conn.out_end = 0;
        }
        if now.duration_since(conn.last_heartbeat) >= timeout / 8 {
            let frame = Frame::Heartbeat {
                counter: conn.heartbeat_counter + 1,
                sender_time_ms: 0,
                echo_counter: 0,
                echo_time_ms: 0,
            };
            if let Ok(n) = encode(&frame, &mut conn.out[conn.out_end..]) {
                conn.out_end += n;
                conn.heartbeat_counter += 1;
                conn.last_heartbeat = now;
                if conn.heartbeat_sent.is_none() {
                    conn.heartbeat_sent = Some((conn.heartbeat_counter, now));
                }
            }
        }
        for entry in self.failed.iter_mut().filter(|e| !e.3) {
            let range = [SeqRange { first: entry.1, last: entry.2 }];
            let frame = Frame::FailedSeqs { batch_id: entry.0, ranges: SeqRanges::List(&range) };
            match encode(&frame, &mut conn.out[conn.out_end..]) {
                Ok(n) => {
                    conn.out_end += n;
                    entry.3 = true;
                }
                Err(_) => break,
            }
        }
        match self.sender.fill(log.ring(), &mut conn.out[conn.out_end..]) {
            Ok(n) => conn.out_end += n,
            Err(e) => {
                error!(nsid = self.nsid, error = %e, "mirror: cannot encode for the partner");
                return Err(format!("send: {e}"));
            }
        }
        while conn.out_start < conn.out_end {
            match conn.stream.write(&conn.out[conn.out_start..conn.out_end]) {
                Ok(0) => return Err("the partner's socket accepts nothing".into()),
                Ok(n) => {
                    conn.out_start += n;
                    busy = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("send: {e}")),
            }
        }
        Ok(busy)
    }

    fn state(&self) -> MirrorState {
        if self.away {
            MirrorState::Degraded
        } else if self.conn.is_none() {
            MirrorState::Connecting
        } else if self.resync_target.is_some() {
            MirrorState::Resyncing
        } else {
            MirrorState::InSync
        }
    }

    fn publish(&self) {
        let s = &self.status;
        s.state.store(self.state() as u8, Ordering::Relaxed);
        s.sent_through.store(self.sender.sent_through(), Ordering::Relaxed);
        s.held_through.store(self.sender.held_through(), Ordering::Relaxed);
        s.acked_through.store(self.sender.gate().acked_through(), Ordering::Relaxed);
    }

    /// The medium failed too long: this node takes no writes for the group.
    pub fn medium_stopped(&self) -> bool {
        self.status.medium_stopped.load(Ordering::Relaxed)
    }

    pub fn policy(&self) -> PartnerAway {
        self.policy
    }
}
