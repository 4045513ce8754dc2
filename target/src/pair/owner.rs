//! The owner's side of one ring's mirror, run by the reactor that owns the
//! ring: a nonblocking socket (handed over by the dialer) around the
//! sans-I/O [`OwnerMirror`] (`ha::owner`), which holds the mirror and the
//! policy while the partner is away.
//!
//! Each reactor pass ([`MirrorLink::poll`]): read the partner's frames
//! (acknowledgements, failed-write answers, heartbeats), let the core encode
//! what is to be sent and write it, and tick the core with the time (the
//! partner away, the medium failing too long, the release limit). The
//! transport asks [`MirrorLink::ack_through`] which writes may complete.
//! This file adds what the core leaves out: the socket, heartbeats and the
//! round trip, the dialer, the log lines and the group's ANA state.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_env::persist::PersistentRegion;
use tracing::{error, info, warn};

use super::dialer::{Attached, DialRequests};
use super::LinkCounters;
use crate::config::PartnerAway;
use crate::ctrl::{AnaState, TargetState};
use crate::ha::link::frame::{encode, Frame, FrameDecoder, CONTROL_PAYLOAD_BYTES_MAX};
pub use crate::ha::owner::MirrorState;
use crate::ha::owner::{GroupAccess, MirrorNote, OwnerMirror, OwnerMirrorConfig};
use crate::ha::{FlusherEvent, StagingLog};

/// Bytes of encoded frames a link buffers towards the partner.
const SEND_BUFFER_BYTES: usize = 4 << 20;

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
    timeout: Duration,
    core: OwnerMirror,
    conn: Option<OwnerConn>,
    /// The core's clock: milliseconds since the reactor first polled this
    /// link (not since it was made: the node may take a while to start its
    /// reactors and the dialer, and the partner must not count as away for that).
    epoch: Option<Instant>,
    dial: DialRequests,
    pub status: Arc<MirrorStatus>,
    counters: Arc<LinkCounters>,
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
        let config = OwnerMirrorConfig {
            policy: pair.partner_away,
            partner_timeout_ms: pair.partner_timeout_ms,
            medium_failed_limit_ms: pair.medium_failed_limit_ms,
        };
        let core = OwnerMirror::new(log, config, 0);
        dial.request(store_id);
        MirrorLink {
            store_id,
            nsid,
            partner: pair.partner.clone(),
            timeout: Duration::from_millis(pair.partner_timeout_ms),
            core,
            conn: None,
            epoch: None,
            dial,
            status: Arc::new(MirrorStatus::default()),
            counters,
            ana,
        }
    }

    pub fn store_id(&self) -> u64 {
        self.store_id
    }

    fn now_ms(&mut self) -> u64 {
        self.epoch.get_or_insert_with(Instant::now).elapsed().as_millis() as u64
    }

    /// Writes through this sequence may complete.
    pub fn ack_through<R: PersistentRegion>(&mut self, log: &StagingLog<R>) -> u64 {
        self.core.ack_through(log)
    }

    /// A flusher event (a failed medium write goes to the partner).
    pub fn on_flusher_event(&mut self, event: &FlusherEvent) {
        self.core.on_flusher_event(event);
    }

    /// The medium failed too long: this node takes no writes for the group.
    pub fn medium_stopped(&self) -> bool {
        self.core.medium_stopped()
    }

    pub fn policy(&self) -> PartnerAway {
        self.core.policy()
    }

    /// Takes the connection the dialer made; returns its fd for the reactor
    /// to watch (None: refused, the dialer was asked again).
    pub fn attach<R: PersistentRegion>(
        &mut self,
        log: &mut StagingLog<R>,
        attached: Attached,
    ) -> Option<RawFd> {
        let Attached { stream, state, leftover, partner, .. } = attached;
        self.partner = partner;
        if let Err(e) = stream.set_nonblocking(true) {
            warn!(nsid = self.nsid, error = %e, "mirror: cannot use the partner's connection");
            self.lost("socket setup failed");
            return None;
        }
        let buf = vec![0u8; 2 * (CONTROL_PAYLOAD_BYTES_MAX + 64)].into_boxed_slice();
        let Ok(mut decoder) = FrameDecoder::new(buf, CONTROL_PAYLOAD_BYTES_MAX) else {
            unreachable!("the control decoder's size is a constant that fits");
        };
        if decoder.feed(&leftover) != leftover.len() {
            self.lost("the partner sent more than a control frame's worth before the stream started");
            return None;
        }
        if let Err(e) =
            self.core.attached(log, state.format_nonce, state.epoch, state.held_through, state.released_seq)
        {
            self.counters.count_refused();
            warn!(nsid = self.nsid, error = %e, "mirror: the partner's StoreState is refused");
            self.lost("StoreState refused");
            return None;
        }
        self.log_notes();
        let now = Instant::now();
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
        let now_ms = self.now_ms();
        self.core.lost(now_ms);
        self.dial.request(self.store_id);
    }

    /// Sends what the ring holds that the partner has not had (the records
    /// committed in this pass), without reading or ticking: the end of a
    /// reactor pass, after `poll` at its start did those.
    pub fn send<R: PersistentRegion>(&mut self, log: &mut StagingLog<R>) -> bool {
        if self.conn.is_none() {
            return false;
        }
        match self.exchange(log, Instant::now(), false) {
            Ok(moved) => moved,
            Err(why) => {
                self.lost(&why);
                true
            }
        }
    }

    /// One reactor pass; returns whether anything moved.
    pub fn poll<R: PersistentRegion>(&mut self, log: &mut StagingLog<R>) -> bool {
        let now = Instant::now();
        let mut busy = false;
        if self.conn.is_some() {
            match self.exchange(log, now, true) {
                Ok(moved) => busy |= moved,
                Err(why) => {
                    self.lost(&why);
                    busy = true;
                }
            }
        }
        let now_ms = self.now_ms();
        if let Some(access) = self.core.tick(log, now_ms) {
            let (state, stopped) = match access {
                GroupAccess::Stop => (AnaState::Inaccessible, true),
                GroupAccess::Resume => (AnaState::Optimized, false),
            };
            self.status.medium_stopped.store(stopped, Ordering::Relaxed);
            if let Some((target, group)) = &self.ana {
                target.set_ana_state(None, *group, state);
            }
        }
        self.log_notes();
        self.publish();
        busy
    }

    fn log_notes(&mut self) {
        let nsid = self.nsid;
        while let Some(note) = self.core.take_note() {
            let partner = &self.partner;
            match note {
                MirrorNote::Resumed { held_through } => info!(nsid, %partner, held_through,
                    "mirror: the partner's store is a copy; streaming on from what it holds"),
                MirrorNote::Formatting { why } => info!(nsid, %partner, why,
                    "mirror: formatting the partner's store and sending every unreleased record again"),
                MirrorNote::Truncating { through, held_through } => {
                    warn!(nsid, %partner, through, held_through,
                    "mirror: the partner holds records this node lost (never acknowledged); it drops them")
                }
                MirrorNote::PartnerBack => warn!(nsid, %partner, "mirror: the partner is back; resyncing"),
                MirrorNote::InSync { through } => info!(nsid, through, "mirror: in sync with the partner"),
                MirrorNote::Away { policy: PartnerAway::WriteBack } => error!(nsid, %partner,
                    timeout_ms = self.timeout.as_millis() as u64,
                    "mirror DEGRADED: the partner is away; writes complete with ONE persistent copy \
                     (pair.partner_away = write-back) until it is back and resynced"),
                MirrorNote::Away { policy: PartnerAway::WriteThrough } => warn!(nsid, %partner,
                    "mirror degraded: the partner is away; writes complete once on the medium \
                     (pair.partner_away = write-through)"),
                MirrorNote::Away { policy: PartnerAway::Stall } => warn!(nsid, %partner,
                    "mirror degraded: the partner is away; writes wait for it (pair.partner_away = stall)"),
                MirrorNote::PartnerWrote { first, last, marked } => info!(
                    nsid,
                    first, last, marked, "the partner wrote records whose medium write failed here"
                ),
                MirrorNote::PartnerCouldNotWrite { first, last, status } => warn!(
                    nsid,
                    first,
                    last,
                    status,
                    "the partner could not write the failed records; they stay staged and are retried"
                ),
                MirrorNote::MediumStopped => {
                    error!(nsid,
                    "the medium has failed writes for longer than pair.medium_failed_limit_ms: this node \
                     stops taking writes for the group (ANA inaccessible); staged writes stay in both stores")
                }
                MirrorNote::MediumResumed => {
                    warn!(nsid, "the medium works again: taking writes for the group again")
                }
            }
        }
    }

    /// Reads the partner's frames (if `receive`) and writes ours. Err: the
    /// connection is unusable.
    fn exchange<R: PersistentRegion>(
        &mut self,
        log: &mut StagingLog<R>,
        now: Instant,
        receive: bool,
    ) -> Result<bool, String> {
        let timeout = self.timeout;
        let Some(conn) = self.conn.as_mut() else { return Ok(false) };
        let mut busy = false;
        if receive {
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
                        Frame::RecordAck { .. } | Frame::FailedDone { .. } => {
                            if let Err(e) = self.core.on_frame(log, &frame) {
                                self.counters.count_refused();
                                return Err(e.to_string());
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
                        Frame::Goodbye { reason } => {
                            return Err(format!("the partner said goodbye ({reason:?})"));
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
        }
        // Send: a heartbeat now and then, then what the core has.
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
        match self.core.fill(log, &mut conn.out[conn.out_end..]) {
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

    fn publish(&self) {
        let s = &self.status;
        let sender = self.core.sender();
        s.state.store(self.core.state() as u8, Ordering::Relaxed);
        s.sent_through.store(sender.sent_through(), Ordering::Relaxed);
        s.held_through.store(sender.held_through(), Ordering::Relaxed);
        s.acked_through.store(sender.gate().acked_through(), Ordering::Relaxed);
        s.formats.store(self.core.formats, Ordering::Relaxed);
        s.degraded_acks.store(self.core.degraded_acks, Ordering::Relaxed);
        s.partner_writes.store(self.core.partner_writes, Ordering::Relaxed);
    }
}

/// The write path's view of the mirror; `None`: a single node (a write
/// completes when its record is durable here).
impl<R: PersistentRegion> crate::ha::node::Mirror<R> for Option<MirrorLink> {
    fn ack_through(&mut self, log: &StagingLog<R>) -> u64 {
        match self {
            Some(m) => m.ack_through(log),
            None => log.durable_seq(),
        }
    }
    fn poll(&mut self, log: &mut StagingLog<R>) -> bool {
        self.as_mut().is_some_and(|m| m.poll(log))
    }
    fn send(&mut self, log: &mut StagingLog<R>) -> bool {
        self.as_mut().is_some_and(|m| m.send(log))
    }
    fn on_flusher_event(&mut self, event: &FlusherEvent) {
        if let Some(m) = self.as_mut() {
            m.on_flusher_event(event);
        }
    }
    fn refuses_writes(&self) -> bool {
        self.as_ref().is_some_and(|m| m.medium_stopped())
    }
    fn defers_persist(&self) -> bool {
        self.is_some()
    }
}
