//! The NVMe/TCP transport: one poll group per reactor owns its connections,
//! their requests and the reactor's handles on the namespaces' backends.
//!
//! A connection moves through `Phase`: ICReq/ICResp, then a Fabrics Connect
//! that makes it an admin or an I/O queue of a controller. Each command is a
//! `Request` whose `ReqState` is advanced by one `process` step at a time:
//! capsule received -> (data from the host: in capsule, or R2T + H2CData) ->
//! executing (controller for admin, backend for I/O) -> response queued ->
//! freed when the response has left the socket. A command completes exactly
//! once: the only ways out of `Executing` are a backend completion or the
//! connection's end, and a freed slot must be in `Responding` (or the
//! connection closing), which `free_request` asserts.
//!
//! Bad input never panics: a malformed PDU gets a C2HTermReq and the
//! connection is closed; a bad command gets its NVMe status; the other
//! connections are untouched. Nothing on the I/O path allocates: requests,
//! buffers (a `BufferPool` chunk per command) and send queues are
//! preallocated per connection.

use std::collections::VecDeque;
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

use tandem_env::{BufferPool, DmaBuf};
use tandem_nvmf::spec::sqe::SGL_ID_DATA_BLOCK_OFFSET;
use tandem_nvmf::spec::{Cqe, NvmeStatus, Sqe};
use tandem_nvmf::tcp::{
    fes, C2HData, Framing, IcReq, IcResp, PduHeader, PduReceiver, ReceiveLimits, RecvEvent, RecvState, Role,
    TcpError, TermReq, R2T,
};
use tracing::{debug, info, warn};

use super::media::{NsMedia, Ready};
use super::media::{StageError, WriteSlot, DEALLOCATE_RANGES_MAX};
use super::sendq::{OutData, RequestData, SendQueue};
use super::sockbuf::RecvBuffer;
use crate::backend::{Backend, BackendCompletion, BackendOp};
use crate::ctrl::{AdminOutcome, Controller, DataLocation, IoCommand, IoKind, TargetState};
use crate::metrics::{GroupMetrics, IoOp};
use tandem_nvmf::spec::nvm::{DsmRange, DSM_RANGE_BYTES};

/// Transport limits, from the config's `[limits]`.
#[derive(Clone, Copy, Debug)]
pub struct TransportLimits {
    /// The largest data transfer of one command (MDTS in bytes).
    pub mdts_bytes: usize,
    /// In-capsule data the target accepts on I/O queues (IOCCSZ - 64).
    pub in_capsule_bytes: usize,
    /// Commands a queue may have outstanding.
    pub queue_depth_max: usize,
    /// MAXH2CDATA offered in ICResp.
    pub maxh2cdata_bytes: u32,
    /// Receive buffer per connection.
    pub recv_buffer_bytes: usize,
}

/// Admin and Fabrics commands may carry up to 8 KiB in capsule (NVMe/TCP 1.0,
/// 3.3.2: the admin queue's in-capsule data size).
const ADMIN_IN_CAPSULE_BYTES: usize = 8192;
/// Request slots beyond the queue depth: parked Asynchronous Event Requests.
const AER_SLOTS: usize = 8;
const FABRICS_OPCODE: u8 = tandem_nvmf::spec::opcode::admin::FABRICS;
const FCTYPE_CONNECT: u8 = tandem_nvmf::spec::opcode::fctype::CONNECT;
/// NVM command set Write (NVM Command Set 1.0, 3.3.4).
const NVM_WRITE_OPCODE: u8 = tandem_nvmf::spec::opcode::nvm::WRITE;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReqState {
    Free,
    /// In-capsule data is arriving.
    ReceivingCapsuleData,
    /// R2T sent; H2CData PDUs are arriving.
    ReceivingH2CData,
    /// A staged write waiting for room in the staging ring.
    WaitingForRing,
    /// A staged write whose record is not yet durable in the ring.
    WaitingDurable,
    /// Waiting for the flusher to put everything staged before it on the medium.
    WaitingRelease,
    /// Waiting for a backend queue slot.
    WaitingForBackend,
    /// Submitted to the backend.
    Executing,
    /// An Asynchronous Event Request held until an event.
    Parked,
    /// Response queued; freed when it has been written.
    Responding,
}

struct Request {
    state: ReqState,
    sqe: Sqe,
    io: Option<IoCommand>,
    buf: Option<DmaBuf>,
    /// Bytes of data the command moves from the host.
    data_len: usize,
    /// Bytes of that data received so far.
    received: usize,
    /// Backend operations still outstanding (DSM may issue several).
    ops_pending: u32,
    status: NvmeStatus,
    /// A staged write's record in the ring; its data is received there.
    reservation: Option<WriteSlot>,
    /// A read of a staged namespace that found staged data: the ring's
    /// `released_seq` when it was sent to the medium (see `on_read_done`).
    read_snapshot: Option<u64>,
    /// The sequence of this write's staging record.
    staged_seq: Option<u64>,
    /// When its capsule arrived, if metrics are on (for the latency histogram).
    started: Option<Instant>,
    /// The status its response carried was success (for the metrics).
    succeeded: bool,
}

impl Request {
    fn new() -> Request {
        Request {
            state: ReqState::Free,
            sqe: Sqe::default(),
            io: None,
            buf: None,
            data_len: 0,
            received: 0,
            ops_pending: 0,
            status: NvmeStatus::SUCCESS,
            reservation: None,
            read_snapshot: None,
            staged_seq: None,
            started: None,
            succeeded: false,
        }
    }
}

struct Requests(Vec<Request>);

impl RequestData for Requests {
    fn request_bytes(&self, req: u16) -> &[u8] {
        match self.0.get(req as usize).and_then(|r| r.buf.as_deref()) {
            Some(b) => b,
            None => &[],
        }
    }
}

enum Phase {
    AwaitIcReq,
    AwaitConnect,
    Admin(Arc<Controller>),
    Io(Arc<Controller>),
}

/// Where the data of the PDU being received goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum DataSink {
    /// No PDU data is pending.
    Nothing,
    /// Into request `req`'s buffer at `offset`.
    Request { req: u16, offset: usize },
    /// Read and dropped (a command that already failed).
    Discard,
    /// A staged write's in-capsule data, held in the socket until the
    /// staging ring has room for its record (back-pressure).
    AwaitRing { req: u16 },
}

struct Connection {
    stream: TcpStream,
    peer: String,
    gen: u16,
    port_id: u16,
    /// Index of the connected subsystem in `TargetState::nvm_subsystems`.
    subsystem_index: usize,
    phase: Phase,
    rx: PduReceiver,
    recv_buffer: RecvBuffer,
    framing: Framing,
    sink: DataSink,
    /// The capsule command whose data the current PDU carries.
    capsule_req: Option<u16>,
    reqs: Requests,
    free_reqs: Vec<u16>,
    sendq: SendQueue,
    sq_head: u16,
    sq_size: u16,
    qid: u16,
    /// Whether the reactor watches this socket for writability (responses
    /// are waiting for room in the socket).
    write_interest: bool,
    /// The reactor saw the socket ready since the last poll of it.
    ready: bool,
}

/// Counters of one poll group.
#[derive(Default, Debug, Clone, Copy)]
pub struct TransportStats {
    pub connections_accepted: u64,
    pub connections_closed: u64,
    pub commands: u64,
    pub term_reqs_sent: u64,
    pub backend_busy: u64,
    /// Staged reads sent to the medium again because the flusher released
    /// records they overlapped while they were out.
    pub read_retries: u64,
    /// Writes that found the staging ring full and waited (back-pressure).
    pub ring_full_waits: u64,
    /// C2HTermReqs sent, by FES (index 7 counts FES values above 6).
    pub term_reqs_by_fes: [u64; 8],
    pub data_digest_errors: u64,
    /// H2CTermReqs received.
    pub host_term_reqs: u64,
    pub connects_refused: u64,
}

/// One reactor's share of the transport.
pub struct PollGroup {
    target: Arc<TargetState>,
    limits: TransportLimits,
    /// This reactor's medium of each namespace: `media[subsystem][ns_index]`,
    /// in the order of `TargetState::nvm_subsystems` and their namespaces.
    media: Vec<Vec<NsMedia>>,
    /// Scratch lists reused by every poll (no allocation on the I/O path).
    ready: Vec<Ready>,
    foreign: Vec<BackendCompletion>,
    pool: BufferPool,
    conns: Vec<Option<Connection>>,
    gens: Vec<u16>,
    completions: Vec<BackendCompletion>,
    /// Requests waiting for a backend slot, in arrival order.
    backend_waiters: VecDeque<(u16, u16, u16)>,
    freed: Vec<u16>,
    pub stats: TransportStats,
    /// Where completions are counted, when `[node] metrics` is set.
    metrics: Option<Arc<GroupMetrics>>,
}

/// Backend tags: connection slot, its generation, request index.
fn make_tag(slot: usize, gen: u16, req: u16) -> u64 {
    ((slot as u64) << 32) | (u64::from(gen) << 16) | u64::from(req)
}

fn split_tag(tag: u64) -> (usize, u16, u16) {
    (((tag >> 32) & 0xffff) as usize, ((tag >> 16) & 0xffff) as u16, (tag & 0xffff) as u16)
}

/// Why a connection must close.
#[derive(Debug)]
enum Close {
    /// The peer went away or the socket failed.
    Gone(String),
    /// A protocol error: send a C2HTermReq with this FES/FEI first.
    Fatal { term: TermReq, reason: String },
}

impl From<TcpError> for Close {
    fn from(e: TcpError) -> Close {
        match e.term_req() {
            Some(term) => Close::Fatal { term, reason: e.to_string() },
            None => Close::Gone(e.to_string()),
        }
    }
}

impl PollGroup {
    pub fn new(
        target: Arc<TargetState>,
        limits: TransportLimits,
        media: Vec<Vec<NsMedia>>,
        pool: BufferPool,
        connections_max: usize,
    ) -> PollGroup {
        // Every command's data fits one buffer: the largest transfer, or the
        // largest admin in-capsule data.
        assert!(
            pool.chunk_bytes() >= limits.mdts_bytes.max(ADMIN_IN_CAPSULE_BYTES),
            "buffer chunks of {} bytes cannot hold a {}-byte transfer",
            pool.chunk_bytes(),
            limits.mdts_bytes
        );
        PollGroup {
            target,
            limits,
            media,
            ready: Vec::with_capacity(1024),
            foreign: Vec::with_capacity(256),
            pool,
            conns: (0..connections_max).map(|_| None).collect(),
            gens: vec![0; connections_max],
            completions: Vec::with_capacity(256),
            backend_waiters: VecDeque::with_capacity(1024),
            freed: Vec::with_capacity(256),
            stats: TransportStats::default(),
            metrics: None,
        }
    }

    /// Counts this group's completions and errors into `metrics`, which no
    /// other poll group may write (see `crate::metrics`).
    pub fn set_metrics(&mut self, metrics: Arc<GroupMetrics>) {
        self.metrics = Some(metrics);
    }

    /// Sockets whose need to be watched for writability changed since the
    /// last call: `(slot, fd, want_write)`.
    pub fn write_interest_changes(&mut self, out: &mut Vec<(usize, RawFd, bool)>) {
        for (slot, c) in self.conns.iter_mut().enumerate() {
            let Some(c) = c.as_mut() else { continue };
            let want = !c.sendq.is_empty();
            if want != c.write_interest {
                c.write_interest = want;
                out.push((slot, c.stream.as_raw_fd(), want));
            }
        }
    }

    /// The backends' completion fds, to watch while sleeping.
    pub fn backend_wake_fds(&self) -> Vec<RawFd> {
        self.media.iter().flatten().filter_map(|m| m.backend.wake_fd()).collect()
    }

    /// Whether some backend completes without a wake fd (it must be polled,
    /// so the reactor may not sleep while it has work in flight).
    pub fn has_unwakeable_work(&self) -> bool {
        self.media.iter().flatten().any(|m| {
            (m.backend.wake_fd().is_none() && m.backend.in_flight() > 0)
                || m.staged.as_ref().is_some_and(|s| s.has_work())
        })
    }

    /// Takes a newly accepted connection arriving on port `port_id`; returns
    /// its slot and fd for the reactor to watch, or None if it was refused.
    pub fn add_connection(&mut self, stream: TcpStream, port_id: u16) -> Option<(usize, RawFd)> {
        let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
        let Some(slot) = self.conns.iter().position(|c| c.is_none()) else {
            warn!(%peer, "connection refused: the poll group's connection table is full");
            let _ = stream.shutdown(Shutdown::Both);
            return None;
        };
        if let Err(e) = stream.set_nonblocking(true).and_then(|_| stream.set_nodelay(true)) {
            warn!(%peer, error = %e, "connection dropped: socket setup failed");
            return None;
        }
        let fd = stream.as_raw_fd();
        let reqs_max = self.limits.queue_depth_max + AER_SLOTS;
        self.gens[slot] = self.gens[slot].wrapping_add(1);
        let pdu_len_max = (self.limits.in_capsule_bytes.max(ADMIN_IN_CAPSULE_BYTES) as u32)
            .max(self.limits.maxh2cdata_bytes)
            + 512;
        let mut rx_limits = ReceiveLimits::new(Role::Target, pdu_len_max);
        rx_limits.maxh2cdata = self.limits.maxh2cdata_bytes;
        debug!(%peer, slot, "connection accepted");
        self.stats.connections_accepted += 1;
        self.conns[slot] = Some(Connection {
            stream,
            peer,
            gen: self.gens[slot],
            port_id,
            subsystem_index: 0,
            phase: Phase::AwaitIcReq,
            rx: PduReceiver::new(rx_limits),
            recv_buffer: RecvBuffer::new(self.limits.recv_buffer_bytes),
            framing: Framing::default(),
            sink: DataSink::Nothing,
            capsule_req: None,
            reqs: Requests((0..reqs_max).map(|_| Request::new()).collect()),
            free_reqs: (0..reqs_max as u16).rev().collect(),
            sendq: SendQueue::with_capacity(reqs_max * 3),
            sq_head: 0,
            sq_size: reqs_max as u16,
            qid: 0,
            write_interest: false,
            // A new connection may already hold its ICReq.
            ready: true,
        });
        Some((slot, fd))
    }

    /// The reactor saw connection `slot`'s socket ready.
    pub fn mark_ready(&mut self, slot: usize) {
        if let Some(Some(c)) = self.conns.get_mut(slot) {
            c.ready = true;
        }
    }

    /// One pass over the backends and the connections that have something
    /// to receive: a socket the reactor saw ready (`mark_ready`), bytes
    /// already in the receive buffer, or data held back for ring space; then
    /// one send per connection with answers. Idle connections cost no syscall. Returns true if anything
    /// happened (the reactor stays awake).
    pub fn poll(&mut self) -> bool {
        let mut busy = false;
        busy |= self.poll_backends();
        for slot in 0..self.conns.len() {
            let Some(c) = self.conns[slot].as_mut() else { continue };
            let wanted =
                c.ready || c.recv_buffer.buffered() > 0 || matches!(c.sink, DataSink::AwaitRing { .. });
            if !wanted {
                continue;
            }
            c.ready = false;
            let result = self.receive_from(slot, &mut busy);
            if let Err(close) = result {
                self.close_connection(slot, close);
                busy = true;
            }
        }
        busy |= self.retry_backend_waiters();
        // Staged writes that became durable (committed in this pass, usually),
        // commands whose records the flusher released, and writes waiting for
        // ring space: all advance here, once per pass.
        for si in 0..self.media.len() {
            for ni in 0..self.media[si].len() {
                busy |= self.process_staging_waiters(si, ni);
            }
        }
        // Records committed in this pass go to the partner now, not at the
        // start of the next pass: the partner's copy is on the write's path.
        for m in self.media.iter_mut().flatten() {
            if let Some(st) = m.staged.as_mut() {
                busy |= st.poll_mirror();
            }
        }
        self.deliver_async_events();
        // Send this pass's answers (and what a full socket held back), before
        // the next pass runs the flusher.
        for slot in 0..self.conns.len() {
            if self.conns[slot].as_ref().is_some_and(|c| !c.sendq.is_empty()) {
                if let Err(close) = self.flush_connection(slot) {
                    self.close_connection(slot, close);
                }
            }
        }
        for m in self.media.iter_mut().flatten() {
            m.backend.kick();
        }
        busy
    }

    /// Sends the completions of parked Asynchronous Event Requests whose
    /// event is pending: checked on every poll (one atomic load per admin
    /// queue), so a host hears of an ANA change before its I/O meets it.
    fn deliver_async_events(&mut self) {
        for conn in self.conns.iter_mut().flatten() {
            let Phase::Admin(ctrl) = &conn.phase else { continue };
            if !ctrl.async_event_ready() {
                continue;
            }
            let ctrl = ctrl.clone();
            while let Some(cqe) = ctrl.take_async_event() {
                let cid = cqe.cid();
                let parked =
                    conn.reqs.0.iter().position(|r| r.state == ReqState::Parked && r.sqe.cid() == cid);
                let Some(idx) = parked else {
                    warn!(cid, "async event for a request that is not parked here");
                    continue;
                };
                respond_cqe(conn, idx as u16, cqe);
            }
        }
    }

    /// Periodic work: keep-alive expiry (asynchronous events go out from `poll`).
    pub fn tick(&mut self) {
        if let Some(m) = &self.metrics {
            m.publish_transport(&self.stats);
        }
        let now = now_ms();
        for slot in 0..self.conns.len() {
            let Some(conn) = self.conns[slot].as_mut() else { continue };
            let ctrl = match &conn.phase {
                Phase::Admin(c) | Phase::Io(c) => c.clone(),
                _ => continue,
            };
            if ctrl.is_expired(now) {
                if matches!(conn.phase, Phase::Admin(_)) {
                    warn!(cntlid = ctrl.cntlid(), peer = %conn.peer, "keep-alive timeout: association torn down");
                }
                self.close_connection(slot, Close::Gone("keep-alive timeout".into()));
            }
        }
    }

    /// Clean shutdown: writes every staged record to its medium, so that a
    /// stopped node's media are complete on their own (a reboot that clears
    /// /dev/shm after a clean stop must lose nothing). Gives up on a namespace
    /// at once if its medium fails a write, and on all at `limit`: what is
    /// left stays in the ring and is replayed at the next start.
    pub fn drain_staging(&mut self, limit: std::time::Duration) {
        let start = Instant::now();
        for m in self.media.iter_mut().flatten() {
            let NsMedia { backend, staged, .. } = m;
            let Some(st) = staged.as_mut() else { continue };
            let at_start = st.drain_size();
            let mut progress = (at_start.records_total > 0).then(|| {
                let what = "draining staged writes to the medium";
                crate::progress::Progress::new(what, st.nsid(), at_start.records_total, at_start.bytes_total)
            });
            let mut last = at_start;
            let deadline_ms = limit.saturating_sub(start.elapsed()).as_millis() as u64;
            let t0 = Instant::now();
            let outcome = st.drain_for_shutdown(
                backend,
                &mut || t0.elapsed().as_millis() as u64,
                deadline_ms,
                &mut || std::thread::sleep(std::time::Duration::from_micros(200)),
                &mut |p| {
                    last = p;
                    if let Some(progress) = progress.as_mut() {
                        progress.update(p.records_done, p.bytes_done);
                    }
                },
            );
            if let Some(p) = progress.as_mut() {
                p.finish(last.records_done, last.bytes_done);
            }
            let target = outcome.unwrap_or(0);
            match outcome {
                Ok(_) => info!(
                    nsid = st.nsid(),
                    records = at_start.records_total,
                    released_seq = target,
                    "staged writes drained to the medium"
                ),
                Err(why) => warn!(
                    nsid = st.nsid(),
                    released_seq = st.released_seq(),
                    left = at_start.records_total - last.records_done,
                    why,
                    "staged writes NOT all on the medium at shutdown: \
                     they stay in the ring and are replayed at the next start"
                ),
            }
        }
    }

    /// Hands a mirror connection made by the dialer to the ring it is for;
    /// returns the socket's fd for the reactor to watch.
    pub fn attach_mirror(&mut self, attached: crate::pair::dialer::Attached) -> Option<RawFd> {
        for m in self.media.iter_mut().flatten() {
            let Some(st) = m.staged.as_mut() else { continue };
            let (log, mirror) = st.log_and_mirror();
            let Some(mirror) = mirror.as_mut() else { continue };
            if mirror.store_id() == attached.store_id {
                return mirror.attach(log, attached);
            }
        }
        warn!(store_id = attached.store_id, "mirror connection for a ring this reactor does not own");
        None
    }

    /// Closes every connection (shutdown).
    pub fn close_all(&mut self) {
        for slot in 0..self.conns.len() {
            if self.conns[slot].is_some() {
                self.close_connection(slot, Close::Gone("target shutting down".into()));
            }
        }
        // Their commands are gone with the connections.
        for m in self.media.iter_mut().flatten() {
            if let Some(st) = m.staged.as_mut() {
                st.abandon_waiters();
            }
        }
    }

    fn poll_backends(&mut self) -> bool {
        let mut busy = false;
        let now = now_ms();
        for si in 0..self.media.len() {
            for ni in 0..self.media[si].len() {
                let mut scratch = std::mem::take(&mut self.completions);
                let mut foreign = std::mem::take(&mut self.foreign);
                busy |= self.media[si][ni].poll(now, &mut scratch, &mut foreign);
                for c in foreign.drain(..) {
                    self.on_backend_completion(c);
                }
                self.completions = scratch;
                self.foreign = foreign;
            }
        }
        busy
    }

    /// Completes or advances the requests waiting on a staged namespace.
    fn process_staging_waiters(&mut self, si: usize, ni: usize) -> bool {
        let Some(st) = self.media[si][ni].staged.as_mut() else { return false };
        let mut ready = std::mem::take(&mut self.ready);
        ready.clear();
        st.collect_ready(&mut ready);
        let volatile = st.is_volatile();
        let mut busy = !ready.is_empty();
        for r in ready.drain(..) {
            match r {
                Ready::Durable { token, seq } => {
                    // Completed here whatever follows: the tag says which command.
                    let tag = token.complete();
                    // The slot may hold a newer command by now: match the record too.
                    let Some(req) = self.request_mut(tag, ReqState::WaitingDurable) else { continue };
                    if req.staged_seq != Some(seq) {
                        continue;
                    }
                    let fua = req.io.is_some_and(|io| io.fua);
                    if fua && volatile {
                        // FUA on a volatile domain: done when the medium has it.
                        if let Some(req) = self.request_mut(tag, ReqState::WaitingDurable) {
                            req.state = ReqState::WaitingRelease;
                        }
                        if let Some(st) = self.media[si][ni].staged.as_mut() {
                            st.await_medium(seq, tag);
                        }
                    } else {
                        self.complete_tag(tag, ReqState::WaitingDurable, NvmeStatus::SUCCESS);
                    }
                }
                Ready::Released { token } => {
                    let tag = token.complete();
                    self.complete_tag(tag, ReqState::WaitingRelease, NvmeStatus::SUCCESS);
                }
            }
        }
        self.ready = ready;
        // Writes that waited for ring space: start them now if room freed up
        // (or answer them, if the group stopped taking writes meanwhile).
        while let Some(tag) = self.media[si][ni].staged.as_ref().and_then(|st| st.parked_front()) {
            if self.request_mut(tag, ReqState::WaitingForRing).is_none() {
                if let Some(st) = self.media[si][ni].staged.as_mut() {
                    st.pop_parked();
                }
                continue;
            }
            let (slot, _, idx) = split_tag(tag);
            match self.start_staged_r2t(slot, idx) {
                Ok(true) => {
                    busy = true;
                    if let Some(st) = self.media[si][ni].staged.as_mut() {
                        st.pop_parked();
                    }
                }
                Ok(false) => break,
                Err(close) => {
                    if let Some(st) = self.media[si][ni].staged.as_mut() {
                        st.pop_parked();
                    }
                    self.close_connection(slot, close);
                }
            }
        }
        busy
    }

    fn tag_of(&self, slot: usize, idx: u16) -> u64 {
        make_tag(slot, self.conns[slot].as_ref().map_or(0, |c| c.gen), idx)
    }

    /// The staging state of the namespace request `idx` of `slot` addresses.
    fn staged_mut(&mut self, slot: usize, idx: u16) -> Option<&mut super::media::Staged> {
        let conn = self.conns.get(slot)?.as_ref()?;
        let io = conn.reqs.0.get(idx as usize)?.io?;
        self.media.get_mut(conn.subsystem_index)?.get_mut(io.ns_index)?.staged.as_mut()
    }

    /// Reserves a ring record for a staged write whose data comes by R2T, and
    /// sends the R2T. Ok(false): the ring is full (the caller queues it).
    fn start_staged_r2t(&mut self, slot: usize, idx: u16) -> Result<bool, Close> {
        let tag = self.tag_of(slot, idx);
        let Some(data_len) = self.conns[slot].as_ref().map(|c| c.reqs.0[idx as usize].data_len) else {
            return Ok(true);
        };
        let Some(st) = self.staged_mut(slot, idx) else { return Ok(true) };
        let res = match st.begin_write(data_len, tag) {
            Ok(res) => res,
            Err(StageError::RingFull) => return Ok(false),
            Err(e) => {
                if let Some(conn) = self.conns[slot].as_mut() {
                    fail_request(conn, idx, stage_error_status(&e));
                }
                return Ok(true);
            }
        };
        // The connection is there: `data_len` was just read from it.
        let Some(conn) = self.conns[slot].as_mut() else { unreachable!("connection {slot} vanished") };
        let req = &mut conn.reqs.0[idx as usize];
        req.staged_seq = Some(res.seq());
        req.reservation = Some(res);
        req.received = 0;
        req.state = ReqState::ReceivingH2CData;
        let r2t = PduHeader::R2T(R2T { cccid: req.sqe.cid(), ttag: idx, r2to: 0, r2tl: data_len as u32 });
        conn.sendq
            .push(&conn.framing, &r2t, OutData::None, &[], None)
            .map_err(|e| Close::Gone(e.to_string()))?;
        Ok(true)
    }

    /// Gives a staged write's unused ring record back (the command failed or
    /// its connection went away before its data was complete).
    fn cancel_reservation(&mut self, slot: usize, idx: u16) {
        let Some(res) = self
            .conns
            .get_mut(slot)
            .and_then(|c| c.as_mut())
            .and_then(|c| c.reqs.0[idx as usize].reservation.take())
        else {
            return;
        };
        if let Some(st) = self.staged_mut(slot, idx) {
            st.abandon_write(res);
        }
    }

    /// The request named by `tag`, if its connection is still the one that
    /// issued it and it is in `state`.
    fn request_mut(&mut self, tag: u64, state: ReqState) -> Option<&mut Request> {
        let (slot, gen, idx) = split_tag(tag);
        let conn = self.conns.get_mut(slot)?.as_mut()?;
        if conn.gen != gen {
            return None;
        }
        conn.reqs.0.get_mut(idx as usize).filter(|r| r.state == state)
    }

    /// Completes the request named by `tag` if it is still waiting in `state`.
    fn complete_tag(&mut self, tag: u64, state: ReqState, status: NvmeStatus) {
        let (slot, gen, idx) = split_tag(tag);
        let Some(conn) = self.conns.get_mut(slot).and_then(|c| c.as_mut()) else { return };
        if conn.gen != gen || conn.reqs.0.get(idx as usize).is_none_or(|r| r.state != state) {
            return;
        }
        respond(conn, idx, status, 0, 0);
    }

    fn on_backend_completion(&mut self, c: BackendCompletion) {
        let (slot, gen, req_idx) = split_tag(c.tag);
        let Some(conn) = self.conns.get_mut(slot).and_then(|c| c.as_mut()) else { return };
        if conn.gen != gen {
            return; // The connection this I/O belonged to is gone; the buffer returns to the pool.
        }
        let Some(req) = conn.reqs.0.get_mut(req_idx as usize) else { return };
        if req.state != ReqState::Executing {
            return;
        }
        if let Some(buf) = c.buf {
            req.buf = Some(buf);
        }
        if let Err(e) = &c.result {
            let is_read = matches!(req.io.map(|io| io.kind), Some(IoKind::Read));
            warn!(error = %e, cid = req.sqe.cid(), "backend operation failed");
            req.status = if is_read { NvmeStatus::UNRECOVERED_READ_ERROR } else { NvmeStatus::WRITE_FAULT };
        }
        req.ops_pending = req.ops_pending.saturating_sub(1);
        if req.ops_pending > 0 {
            return;
        }
        let status = req.status;
        let io = req.io;
        let si = conn.subsystem_index;
        match io {
            Some(io) if io.kind == IoKind::Read && status.is_success() => {
                // A staged namespace: lay the newest staged bytes over what
                // the medium returned, unless the flusher released records
                // this read overlapped while it was out (then the medium read
                // may predate their write: read again).
                if let Some(st) =
                    self.media.get(si).and_then(|m| m.get(io.ns_index)).and_then(|m| m.staged.as_ref())
                {
                    let req = &mut conn.reqs.0[req_idx as usize];
                    if req.read_snapshot.is_some_and(|snap| st.released_seq() != snap) {
                        self.stats.read_retries += 1;
                        req.read_snapshot = None;
                        self.execute_io(slot, req_idx);
                        return;
                    }
                    if let Some(buf) = req.buf.as_deref_mut() {
                        if let Err(e) = st.read_overlay(io.slba, io.block_count, buf) {
                            warn!(error = %e, "staged read overlay failed");
                            respond(conn, req_idx, NvmeStatus::INTERNAL_ERROR, 0, 0);
                            return;
                        }
                    }
                }
                respond(conn, req_idx, status, 0, io.data_bytes as usize);
            }
            _ => respond(conn, req_idx, status, 0, 0),
        }
    }

    fn retry_backend_waiters(&mut self) -> bool {
        let mut busy = false;
        for _ in 0..self.backend_waiters.len() {
            let Some((slot, gen, req)) = self.backend_waiters.pop_front() else { break };
            let live =
                matches!(self.conns.get(slot as usize).and_then(|c| c.as_ref()), Some(c) if c.gen == gen);
            if !live {
                continue;
            }
            if !self.submit_io(slot as usize, req) {
                self.backend_waiters.push_back((slot, gen, req));
                break;
            }
            busy = true;
        }
        busy
    }

    /// Receives what connection `slot` has, within a budget that keeps one
    /// busy connection from starving the others. Sending happens once per
    /// pass for all connections (end of `poll`), so every answer a pass
    /// produces shares one `writev`.
    fn receive_from(&mut self, slot: usize, busy: &mut bool) -> Result<(), Close> {
        for _ in 0..64 {
            let progressed = self.receive_step(slot)?;
            if !progressed {
                break;
            }
            *busy = true;
        }
        Ok(())
    }

    fn flush_connection(&mut self, slot: usize) -> Result<(), Close> {
        let Some(conn) = self.conns[slot].as_mut() else { return Ok(()) };
        if conn.sendq.is_empty() {
            return Ok(());
        }
        self.freed.clear();
        let res = conn.sendq.flush(&mut conn.stream, &conn.reqs, &mut self.freed);
        for i in 0..self.freed.len() {
            let r = self.freed[i];
            count_completion(self.metrics.as_deref(), conn, r);
            free_request(conn, r);
        }
        match res {
            Ok(_) => Ok(()),
            Err(e) => Err(Close::Gone(format!("send failed: {e}"))),
        }
    }

    /// Advances the receiver by one event or one data chunk. Returns whether
    /// anything was consumed.
    fn receive_step(&mut self, slot: usize) -> Result<bool, Close> {
        let PollGroup { conns, media, stats, .. } = self;
        let Some(conn) = conns[slot].as_mut() else { return Ok(false) };
        match conn.rx.state() {
            RecvState::Padding | RecvState::Data => {
                let mut reader = conn.recv_buffer.reader(&mut conn.stream);
                match conn.sink {
                    DataSink::AwaitRing { req } => {
                        let r = &mut conn.reqs.0[req as usize];
                        let Some(io) = r.io else {
                            return Err(Close::Gone("internal: staged write without a command".into()));
                        };
                        let staged = media
                            .get_mut(conn.subsystem_index)
                            .and_then(|m| m.get_mut(io.ns_index))
                            .and_then(|m| m.staged.as_mut());
                        let Some(st) = staged else {
                            return Err(Close::Gone(
                                "internal: staged write to an unstaged namespace".into(),
                            ));
                        };
                        let tag = make_tag(slot, conn.gen, req);
                        match st.begin_write(r.data_len, tag) {
                            Ok(res) => {
                                r.staged_seq = Some(res.seq());
                                r.reservation = Some(res);
                                r.state = ReqState::ReceivingCapsuleData;
                                conn.sink = DataSink::Request { req, offset: 0 };
                                Ok(true)
                            }
                            Err(StageError::RingFull) => {
                                if r.state != ReqState::WaitingForRing {
                                    r.state = ReqState::WaitingForRing;
                                    stats.ring_full_waits += 1;
                                }
                                Ok(false)
                            }
                            Err(e) => {
                                r.status = stage_error_status(&e);
                                // It may have waited for ring space: the data
                                // is discarded and the command answered once
                                // it is in (`on_data_done`).
                                r.state = ReqState::ReceivingCapsuleData;
                                conn.sink = DataSink::Discard;
                                Ok(true)
                            }
                        }
                    }
                    DataSink::Request { req, offset } => {
                        let r = &mut conn.reqs.0[req as usize];
                        let dest: &mut [u8] = match (&r.reservation, r.io) {
                            (Some(res), Some(io)) => {
                                let staged = media
                                    .get_mut(conn.subsystem_index)
                                    .and_then(|m| m.get_mut(io.ns_index))
                                    .and_then(|m| m.staged.as_mut());
                                match staged {
                                    Some(st) => st.write_buffer(res),
                                    None => {
                                        return Err(Close::Gone("internal: reservation without a log".into()))
                                    }
                                }
                            }
                            _ => match r.buf.as_deref_mut() {
                                Some(b) => b,
                                None => {
                                    return Err(Close::Gone("internal: data sink without a buffer".into()))
                                }
                            },
                        };
                        let want = conn.rx.data_remaining();
                        let end = offset + want;
                        if end > dest.len() {
                            return Err(Close::Fatal {
                                term: TermReq { fes: fes::DATA_OUT_OF_RANGE, fei: 0 },
                                reason: "data beyond the command's buffer".into(),
                            });
                        }
                        let n = conn.rx.read_data(&mut reader, &mut dest[offset..end])?;
                        conn.sink = DataSink::Request { req, offset: offset + n };
                        r.received += n;
                        Ok(n > 0)
                    }
                    DataSink::Discard | DataSink::Nothing => {
                        let before = conn.rx.data_remaining();
                        conn.rx.skip_data(&mut reader)?;
                        Ok(conn.rx.data_remaining() != before || conn.rx.state() == RecvState::DataDigest)
                    }
                }
            }
            RecvState::Failed => Err(Close::Gone("receiver failed".into())),
            _ => {
                let mut reader = conn.recv_buffer.reader(&mut conn.stream);
                let event = match conn.rx.poll(&mut reader) {
                    Ok(e) => e,
                    Err(TcpError::DataDigest { received, computed }) => {
                        // The command whose data this was fails with
                        // Transient Transport Error (NVMe/TCP 1.0: a data
                        // digest error is not fatal); the stream itself is
                        // still in step and the queue keeps working. None of
                        // the data reaches the medium: a staged write's
                        // record is cancelled (never replayed nor flushed),
                        // a direct write's buffer is dropped.
                        warn!(peer = %conn.peer, received, computed, "data digest error");
                        stats.data_digest_errors += 1;
                        conn.sink = DataSink::Nothing;
                        if let Some(req) = conn.capsule_req.take() {
                            let r = &mut conn.reqs.0[req as usize];
                            if let (Some(res), Some(io)) = (r.reservation.take(), r.io) {
                                let staged = media
                                    .get_mut(conn.subsystem_index)
                                    .and_then(|m| m.get_mut(io.ns_index))
                                    .and_then(|m| m.staged.as_mut());
                                if let Some(st) = staged {
                                    st.abandon_write(res);
                                }
                            }
                            r.status = NvmeStatus::TRANSIENT_TRANSPORT_ERROR;
                            r.buf = None;
                            // If more H2CData PDUs of this command follow,
                            // they are read and dropped (`on_header`) and the
                            // command completes once, after the last of them
                            // (`on_data_done`); otherwise it completes now.
                            let more_follow =
                                r.state == ReqState::ReceivingH2CData && r.received < r.data_len;
                            if !more_follow {
                                fail_request(conn, req, NvmeStatus::TRANSIENT_TRANSPORT_ERROR);
                            }
                        }
                        return Ok(true);
                    }
                    Err(e) => return Err(e.into()),
                };
                match event {
                    None => Ok(false),
                    Some(RecvEvent::Header { header, data_len }) => {
                        self.on_header(slot, header, data_len)?;
                        Ok(true)
                    }
                    Some(RecvEvent::DataDone) => {
                        self.on_data_done(slot)?;
                        Ok(true)
                    }
                }
            }
        }
    }

    fn on_header(&mut self, slot: usize, header: PduHeader, data_len: usize) -> Result<(), Close> {
        let Some(conn) = self.conns[slot].as_mut() else { return Ok(()) };
        match header {
            PduHeader::IcReq(ic) => self.on_icreq(slot, ic),
            PduHeader::H2CTermReq(t) => {
                self.stats.host_term_reqs += 1;
                Err(Close::Gone(format!(
                    "host terminated the connection (FES {:#x}, FEI {:#x})",
                    t.fes, t.fei
                )))
            }
            PduHeader::CapsuleCmd { sqe } => self.on_capsule(slot, sqe, data_len),
            PduHeader::H2CData(h) => {
                let idx = h.ttag;
                // An H2CData for a transfer tag we never issued, for another
                // command, or out of order or range: the stream cannot be
                // trusted. FEI names the field for an invalid header field
                // (TTAG at byte 10, CCCID at byte 8); it is reserved for
                // Data Transfer Out of Range.
                let bad = match conn.reqs.0.get(idx as usize) {
                    Some(r) if r.state == ReqState::ReceivingH2CData => {
                        if r.sqe.cid() != h.cccid {
                            Some(TermReq { fes: fes::INVALID_HEADER_FIELD, fei: 8 })
                        } else if h.datao as usize != r.received
                            || (h.datao as usize + h.datal as usize) > r.data_len
                        {
                            Some(TermReq { fes: fes::DATA_OUT_OF_RANGE, fei: 0 })
                        } else {
                            None
                        }
                    }
                    _ => Some(TermReq { fes: fes::INVALID_HEADER_FIELD, fei: 10 }),
                };
                if let Some(term) = bad {
                    return Err(Close::Fatal {
                        term,
                        reason: format!("H2CData with ttag {} cccid {} datao {}", h.ttag, h.cccid, h.datao),
                    });
                }
                conn.capsule_req = Some(idx);
                let r = &mut conn.reqs.0[idx as usize];
                conn.sink = if data_len == 0 {
                    DataSink::Nothing
                } else if !r.status.is_success() {
                    // An earlier PDU of this transfer failed its data digest:
                    // the rest is read and dropped, counted so the command
                    // completes after its last PDU.
                    r.received += data_len;
                    DataSink::Discard
                } else {
                    DataSink::Request { req: idx, offset: h.datao as usize }
                };
                if data_len == 0 {
                    self.on_data_done(slot)?;
                }
                Ok(())
            }
            other => Err(Close::Fatal {
                term: TermReq { fes: fes::INVALID_HEADER_FIELD, fei: 0 },
                reason: format!("unexpected PDU {other:?}"),
            }),
        }
    }

    fn on_icreq(&mut self, slot: usize, ic: IcReq) -> Result<(), Close> {
        let Some(conn) = self.conns[slot].as_mut() else { return Ok(()) };
        if !matches!(conn.phase, Phase::AwaitIcReq) {
            return Err(Close::Fatal {
                term: TermReq { fes: fes::PDU_SEQUENCE_ERROR, fei: 0 },
                reason: "second ICReq".into(),
            });
        }
        if ic.pfv != 0 {
            return Err(Close::Fatal {
                term: TermReq { fes: fes::INVALID_HEADER_FIELD, fei: 8 },
                reason: format!("unsupported PDU format version {}", ic.pfv),
            });
        }
        let resp = IcResp {
            pfv: 0,
            cpda: 0,
            header_digest: ic.header_digest,
            data_digest: ic.data_digest,
            maxh2cdata: self.limits.maxh2cdata_bytes,
        };
        conn.sendq
            .push(&conn.framing, &PduHeader::IcResp(resp), OutData::None, &[], None)
            .map_err(|e| Close::Gone(format!("encode ICResp: {e}")))?;
        conn.framing = Framing {
            header_digest: ic.header_digest,
            data_digest: ic.data_digest,
            data_alignment: (usize::from(ic.hpda) + 1) * 4,
        };
        let mut lim = *conn.rx.limits();
        lim.header_digest = ic.header_digest;
        lim.data_digest = ic.data_digest;
        lim.data_alignment = 4;
        lim.ic_done = true;
        conn.rx.set_limits(lim)?;
        conn.phase = Phase::AwaitConnect;
        debug!(peer = %conn.peer, hdgst = ic.header_digest, ddgst = ic.data_digest, "ICReq accepted");
        Ok(())
    }

    fn on_capsule(&mut self, slot: usize, sqe: Sqe, data_len: usize) -> Result<(), Close> {
        let in_capsule_max = self.in_capsule_max(slot);
        let Some(conn) = self.conns[slot].as_mut() else { return Ok(()) };
        self.stats.commands += 1;
        conn.sq_head = (conn.sq_head + 1) % conn.sq_size.max(1);
        let Some(idx) = conn.free_reqs.pop() else {
            // The host has more commands outstanding than the queue holds.
            warn!(peer = %conn.peer, cid = sqe.cid(), "command beyond the queue size");
            conn.sink = if data_len > 0 { DataSink::Discard } else { DataSink::Nothing };
            let cqe = Cqe::new(sqe.cid(), NvmeStatus::INTERNAL_ERROR, 0);
            conn.sendq
                .push(&conn.framing, &PduHeader::CapsuleResp { cqe }, OutData::None, &[], None)
                .map_err(|e| Close::Gone(e.to_string()))?;
            return Ok(());
        };
        let req = &mut conn.reqs.0[idx as usize];
        debug_assert_eq!(req.state, ReqState::Free);
        *req = Request::new();
        req.sqe = sqe;
        req.started = self.metrics.is_some().then(Instant::now);
        req.state = ReqState::ReceivingCapsuleData;

        if data_len > 0 {
            let sgl = sqe.sgl();
            let bad = if data_len > in_capsule_max {
                Some(NvmeStatus::DATA_SGL_LENGTH_INVALID)
            } else if sgl.identifier() != SGL_ID_DATA_BLOCK_OFFSET {
                Some(NvmeStatus::SGL_DESCRIPTOR_TYPE_INVALID)
            } else if sgl.address() != 0 {
                Some(NvmeStatus::SGL_OFFSET_INVALID)
            } else if sgl.length() as usize != data_len {
                Some(NvmeStatus::DATA_SGL_LENGTH_INVALID)
            } else {
                None
            };
            if let Some(status) = bad {
                conn.sink = DataSink::Discard;
                conn.capsule_req = Some(idx);
                conn.reqs.0[idx as usize].status = status;
                return Ok(());
            }
            // A write to a staged namespace receives straight into its ring
            // record: check the command now, before its data arrives.
            if sqe.opcode() == NVM_WRITE_OPCODE {
                if let Phase::Io(ctrl) = &conn.phase {
                    let checked = ctrl.check_io(&sqe);
                    let staged = match &checked {
                        Ok(io) => self
                            .media
                            .get(conn.subsystem_index)
                            .and_then(|m| m.get(io.ns_index))
                            .is_some_and(|m| m.staged.is_some()),
                        Err(_) => false,
                    };
                    match checked {
                        Err(status) => {
                            conn.sink = DataSink::Discard;
                            conn.capsule_req = Some(idx);
                            conn.reqs.0[idx as usize].status = status;
                            return Ok(());
                        }
                        Ok(io) if staged => {
                            let req = &mut conn.reqs.0[idx as usize];
                            req.io = Some(io);
                            req.data_len = data_len;
                            conn.capsule_req = Some(idx);
                            conn.sink = DataSink::AwaitRing { req: idx };
                            return Ok(());
                        }
                        Ok(io) => conn.reqs.0[idx as usize].io = Some(io),
                    }
                }
            }
            let Some(mut buf) = self.pool.get() else {
                // Out of buffers: answer busy-retryable rather than stall.
                conn.sink = DataSink::Discard;
                conn.capsule_req = Some(idx);
                conn.reqs.0[idx as usize].status = NvmeStatus::INTERNAL_ERROR.with_dnr(false);
                return Ok(());
            };
            buf.set_len(data_len);
            let req = &mut conn.reqs.0[idx as usize];
            req.buf = Some(buf);
            req.data_len = data_len;
            conn.sink = DataSink::Request { req: idx, offset: 0 };
            conn.capsule_req = Some(idx);
            return Ok(());
        }
        conn.sink = DataSink::Nothing;
        conn.capsule_req = None;
        self.start_command(slot, idx)
    }

    fn in_capsule_max(&self, slot: usize) -> usize {
        match self.conns[slot].as_ref().map(|c| &c.phase) {
            Some(Phase::Io(_)) => self.limits.in_capsule_bytes,
            _ => ADMIN_IN_CAPSULE_BYTES,
        }
    }

    fn on_data_done(&mut self, slot: usize) -> Result<(), Close> {
        let Some(conn) = self.conns[slot].as_mut() else { return Ok(()) };
        conn.sink = DataSink::Nothing;
        let Some(idx) = conn.capsule_req.take() else { return Ok(()) };
        let req = &mut conn.reqs.0[idx as usize];
        match req.state {
            ReqState::ReceivingCapsuleData => {
                if !req.status.is_success() {
                    let status = req.status;
                    fail_request(conn, idx, status);
                    return Ok(());
                }
                self.start_command(slot, idx)
            }
            ReqState::ReceivingH2CData => {
                if req.received == req.data_len {
                    if req.status.is_success() {
                        self.execute_io(slot, idx);
                    } else {
                        let status = req.status;
                        fail_request(conn, idx, status);
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// A command with its in-capsule data (if any) fully received.
    fn start_command(&mut self, slot: usize, idx: u16) -> Result<(), Close> {
        let Some(conn) = self.conns[slot].as_mut() else { return Ok(()) };
        let sqe = conn.reqs.0[idx as usize].sqe;
        match &conn.phase {
            Phase::AwaitIcReq => Err(Close::Fatal {
                term: TermReq { fes: fes::PDU_SEQUENCE_ERROR, fei: 0 },
                reason: "command before ICReq".into(),
            }),
            Phase::AwaitConnect => {
                if sqe.opcode() != FABRICS_OPCODE || sqe.fctype() != FCTYPE_CONNECT {
                    fail_request(conn, idx, NvmeStatus::COMMAND_SEQUENCE_ERROR);
                    return Ok(());
                }
                let data: &[u8] = conn.reqs.0[idx as usize].buf.as_deref().unwrap_or(&[]);
                match self.target.connect(conn.port_id, &sqe, data, now_ms()) {
                    Ok(q) => {
                        conn.qid = q.qid;
                        conn.sq_size = u16::try_from(q.sq_entries).unwrap_or(u16::MAX).max(1);
                        let subsystem = q.controller.subsystem();
                        conn.subsystem_index = self
                            .target
                            .nvm_subsystems()
                            .iter()
                            .position(|s| Arc::ptr_eq(s, subsystem))
                            .unwrap_or(usize::MAX);
                        info!(peer = %conn.peer, cntlid = q.controller.cntlid(), qid = q.qid, "queue connected");
                        conn.phase = if q.qid == 0 {
                            Phase::Admin(q.controller.clone())
                        } else {
                            Phase::Io(q.controller.clone())
                        };
                        respond_cqe(conn, idx, q.response);
                    }
                    Err(cqe) => {
                        info!(peer = %conn.peer, status = %cqe.status(), "connect refused");
                        self.stats.connects_refused += 1;
                        respond_cqe(conn, idx, cqe);
                    }
                }
                Ok(())
            }
            Phase::Admin(ctrl) => {
                let ctrl = ctrl.clone();
                ctrl.keep_alive_touch(now_ms());
                if sqe.opcode() == FABRICS_OPCODE && sqe.fctype() == FCTYPE_CONNECT {
                    fail_request(conn, idx, NvmeStatus::COMMAND_SEQUENCE_ERROR);
                    return Ok(());
                }
                let data: &[u8] = conn.reqs.0[idx as usize].buf.as_deref().unwrap_or(&[]);
                let mut resp = Vec::new();
                match ctrl.exec_admin(&sqe, data, &mut resp) {
                    AdminOutcome::Complete(cqe) => {
                        let want = sqe.sgl().length() as usize;
                        if !resp.is_empty() && cqe.status().is_success() && want > 0 {
                            resp.truncate(want);
                            let h = PduHeader::C2HData(C2HData {
                                cccid: sqe.cid(),
                                datao: 0,
                                datal: resp.len() as u32,
                                last: true,
                                success: false,
                            });
                            conn.sendq
                                .push_owned(&conn.framing, &h, resp, None)
                                .map_err(|e| Close::Gone(e.to_string()))?;
                        }
                        respond_cqe(conn, idx, cqe);
                    }
                    AdminOutcome::AsyncEventParked => {
                        conn.reqs.0[idx as usize].state = ReqState::Parked;
                        conn.reqs.0[idx as usize].buf = None;
                    }
                }
                Ok(())
            }
            Phase::Io(ctrl) => {
                ctrl.keep_alive_touch(now_ms());
                if sqe.opcode() == FABRICS_OPCODE {
                    let status = if sqe.fctype() == FCTYPE_CONNECT {
                        NvmeStatus::COMMAND_SEQUENCE_ERROR
                    } else {
                        NvmeStatus::INVALID_FIELD
                    };
                    fail_request(conn, idx, status);
                    return Ok(());
                }
                // A staged write was checked when its capsule arrived.
                let early = conn.reqs.0[idx as usize].io;
                let io = match early.map_or_else(|| ctrl.check_io(&sqe), Ok) {
                    Ok(io) => io,
                    Err(status) => {
                        fail_request(conn, idx, status);
                        return Ok(());
                    }
                };
                let staged = self
                    .media
                    .get(conn.subsystem_index)
                    .and_then(|m| m.get(io.ns_index))
                    .is_some_and(|m| m.staged.is_some());
                let req = &mut conn.reqs.0[idx as usize];
                req.io = Some(io);
                let from_host = matches!(io.kind, IoKind::Write | IoKind::DatasetManagement { .. });
                match io.data {
                    DataLocation::InCapsule if req.reservation.is_some() => {
                        if req.received != io.data_bytes as usize {
                            fail_request(conn, idx, NvmeStatus::DATA_SGL_LENGTH_INVALID);
                            self.cancel_reservation(slot, idx);
                            return Ok(());
                        }
                        self.execute_io(slot, idx);
                        Ok(())
                    }
                    DataLocation::Transport if staged && io.kind == IoKind::Write => {
                        if req.buf.is_some() {
                            fail_request(conn, idx, NvmeStatus::SGL_DESCRIPTOR_TYPE_INVALID);
                            return Ok(());
                        }
                        req.data_len = io.data_bytes as usize;
                        if !self.start_staged_r2t(slot, idx)? {
                            let tag = self.tag_of(slot, idx);
                            if let Some(st) = self.staged_mut(slot, idx) {
                                st.park_for_space(tag);
                            }
                            if let Some(req) = self.conns[slot].as_mut().map(|c| &mut c.reqs.0[idx as usize])
                            {
                                req.state = ReqState::WaitingForRing;
                            }
                            self.stats.ring_full_waits += 1;
                        }
                        Ok(())
                    }
                    DataLocation::InCapsule => {
                        // The data came with the capsule: it must be the whole transfer.
                        if !from_host || req.buf.is_none() || req.data_len != io.data_bytes as usize {
                            fail_request(conn, idx, NvmeStatus::DATA_SGL_LENGTH_INVALID);
                            return Ok(());
                        }
                        self.execute_io(slot, idx);
                        Ok(())
                    }
                    DataLocation::Transport if from_host => {
                        if req.buf.is_some() {
                            fail_request(conn, idx, NvmeStatus::SGL_DESCRIPTOR_TYPE_INVALID);
                            return Ok(());
                        }
                        let Some(mut buf) = self.pool.get() else {
                            fail_request(conn, idx, NvmeStatus::INTERNAL_ERROR.with_dnr(false));
                            return Ok(());
                        };
                        buf.set_len(io.data_bytes as usize);
                        let req = &mut conn.reqs.0[idx as usize];
                        req.buf = Some(buf);
                        req.data_len = io.data_bytes as usize;
                        req.received = 0;
                        req.state = ReqState::ReceivingH2CData;
                        let r2t =
                            PduHeader::R2T(R2T { cccid: sqe.cid(), ttag: idx, r2to: 0, r2tl: io.data_bytes });
                        conn.sendq
                            .push(&conn.framing, &r2t, OutData::None, &[], None)
                            .map_err(|e| Close::Gone(e.to_string()))?;
                        Ok(())
                    }
                    DataLocation::Transport => {
                        // Data to the host: a read.
                        let Some(mut buf) = self.pool.get() else {
                            fail_request(conn, idx, NvmeStatus::INTERNAL_ERROR.with_dnr(false));
                            return Ok(());
                        };
                        buf.set_len(io.data_bytes as usize);
                        conn.reqs.0[idx as usize].buf = Some(buf);
                        self.execute_io(slot, idx);
                        Ok(())
                    }
                    DataLocation::None => {
                        if req.buf.is_some() {
                            fail_request(conn, idx, NvmeStatus::INVALID_FIELD);
                            return Ok(());
                        }
                        self.execute_io(slot, idx);
                        Ok(())
                    }
                    DataLocation::Keyed { .. } => {
                        fail_request(conn, idx, NvmeStatus::SGL_DESCRIPTOR_TYPE_INVALID);
                        Ok(())
                    }
                }
            }
        }
    }

    /// Queues the command's backend work (or waits for a backend slot).
    fn execute_io(&mut self, slot: usize, idx: u16) {
        let Some(conn) = self.conns[slot].as_mut() else { return };
        conn.reqs.0[idx as usize].state = ReqState::WaitingForBackend;
        let gen = conn.gen;
        if !self.submit_io(slot, idx) {
            self.stats.backend_busy += 1;
            self.backend_waiters.push_back((slot as u16, gen, idx));
        }
    }

    /// Submits a request's backend operations. Returns false if the backend
    /// is full (nothing was submitted).
    fn submit_io(&mut self, slot: usize, idx: u16) -> bool {
        let PollGroup { conns, media, .. } = self;
        let Some(conn) = conns[slot].as_mut() else { return true };
        let tag = make_tag(slot, conn.gen, idx);
        let req = &mut conn.reqs.0[idx as usize];
        let Some(io) = req.io else { return true };
        let Some(m) = media.get_mut(conn.subsystem_index).and_then(|b| b.get_mut(io.ns_index)) else {
            fail_request(conn, idx, NvmeStatus::INVALID_NAMESPACE);
            return true;
        };
        if m.partner_owned {
            // The partner's group: only its owner reads or writes it.
            fail_request(conn, idx, NvmeStatus::ANA_INACCESSIBLE);
            return true;
        }
        if let Some(st) = m.staged.as_mut() {
            match io.kind {
                IoKind::Write => {
                    // The data is in the ring record: commit it. The command
                    // completes when the record is durable (`process_staging_waiters`).
                    let Some(res) = req.reservation.take() else {
                        fail_request(conn, idx, NvmeStatus::INTERNAL_ERROR);
                        return true;
                    };
                    req.state = ReqState::WaitingDurable;
                    st.commit_write(res, io.slba, io.block_count);
                    return true;
                }
                IoKind::Flush => {
                    // A volatile domain is a write cache: Flush drains it to
                    // the medium. A persistent one already holds every
                    // acknowledged write durably.
                    if st.flush(tag) {
                        respond(conn, idx, NvmeStatus::SUCCESS, 0, 0);
                    } else {
                        req.state = ReqState::WaitingRelease;
                    }
                    return true;
                }
                IoKind::WriteZeroes { .. } => {
                    // A record of its own, ordered and mirrored like a write:
                    // no replay of either copy can bring older data back.
                    // It completes when durable (`process_staging_waiters`).
                    return match st.stage_zeroes(tag, io.slba, io.block_count) {
                        Ok(seq) => {
                            req.staged_seq = Some(seq);
                            req.state = ReqState::WaitingDurable;
                            true
                        }
                        // Retried with the commands waiting for the backend.
                        Err(StageError::RingFull) => false,
                        Err(e) => {
                            fail_request(conn, idx, stage_error_status(&e));
                            true
                        }
                    };
                }
                IoKind::DatasetManagement { ranges, deallocate } => {
                    if !deallocate {
                        respond(conn, idx, NvmeStatus::SUCCESS, 0, 0);
                        return true;
                    }
                    let ctrl = match &conn.phase {
                        Phase::Io(c) => c.clone(),
                        _ => return true,
                    };
                    return stage_deallocate(conn, &ctrl, idx, ranges as usize, io.ns_index, st, tag);
                }
                IoKind::Read => {
                    let Some(buf) = req.buf.as_deref_mut() else {
                        fail_request(conn, idx, NvmeStatus::INTERNAL_ERROR);
                        return true;
                    };
                    match st.read_overlay(io.slba, io.block_count, buf) {
                        Ok(n) if n == u64::from(io.block_count) => {
                            // Wholly staged: the ring has the newest data.
                            respond(conn, idx, NvmeStatus::SUCCESS, 0, io.data_bytes as usize);
                            return true;
                        }
                        Ok(0) => req.read_snapshot = None,
                        Ok(_) => req.read_snapshot = Some(st.released_seq()),
                        Err(e) => {
                            warn!(error = %e, "staged read overlay failed");
                            fail_request(conn, idx, NvmeStatus::INTERNAL_ERROR);
                            return true;
                        }
                    }
                }
            }
        }
        let backend = &mut m.backend;
        if backend.in_flight() >= backend.queue_depth_max() {
            return false;
        }
        let op = match io.kind {
            IoKind::Read | IoKind::Write => {
                let Some(buf) = req.buf.take() else {
                    fail_request(conn, idx, NvmeStatus::INTERNAL_ERROR);
                    return true;
                };
                if io.kind == IoKind::Read {
                    BackendOp::Read { slba: io.slba, nlb: io.block_count, buf }
                } else {
                    BackendOp::Write { slba: io.slba, nlb: io.block_count, buf, fua: io.fua }
                }
            }
            IoKind::Flush => BackendOp::Flush,
            IoKind::WriteZeroes { .. } => BackendOp::WriteZeroes { slba: io.slba, nlb: io.block_count },
            IoKind::DatasetManagement { ranges, deallocate } => {
                if !deallocate {
                    // Only the deallocate attribute changes anything; the
                    // others are hints a RAM or file medium has no use for.
                    respond(conn, idx, NvmeStatus::SUCCESS, 0, 0);
                    return true;
                }
                let ctrl = match &conn.phase {
                    Phase::Io(c) => c.clone(),
                    _ => return true,
                };
                return submit_deallocate(
                    conn,
                    &ctrl,
                    idx,
                    ranges as usize,
                    io.ns_index,
                    backend.as_mut(),
                    tag,
                );
            }
        };
        match backend.submit(tag, op) {
            Ok(()) => {
                req.state = ReqState::Executing;
                req.ops_pending = 1;
                true
            }
            Err((e, op)) => {
                if let Some(buf) = op.into_buf() {
                    req.buf = Some(buf);
                }
                if matches!(e, crate::backend::BackendError::QueueFull { .. }) {
                    return false;
                }
                warn!(error = %e, "backend refused an operation");
                fail_request(conn, idx, NvmeStatus::INTERNAL_ERROR);
                true
            }
        }
    }

    fn close_connection(&mut self, slot: usize, why: Close) {
        // Staged writes whose data never fully arrived give their records back.
        let pending: Vec<u16> = match self.conns[slot].as_ref() {
            Some(c) => {
                (0..c.reqs.0.len() as u16).filter(|&i| c.reqs.0[i as usize].reservation.is_some()).collect()
            }
            None => return,
        };
        for idx in pending {
            self.cancel_reservation(slot, idx);
        }
        let Some(mut conn) = self.conns[slot].take() else { return };
        self.stats.connections_closed += 1;
        match &why {
            Close::Fatal { term, reason } => {
                let (fes, fei) = (term.fes, term.fei);
                warn!(peer = %conn.peer, fes, fei, %reason, "protocol error: C2HTermReq, closing");
                self.stats.term_reqs_sent += 1;
                self.stats.term_reqs_by_fes[usize::from(fes).min(7)] += 1;
                let mut freed = Vec::new();
                conn.sendq.clear(&mut freed);
                let offending: Vec<u8> = conn.rx.raw_header().iter().copied().take(128).collect();
                let h = PduHeader::C2HTermReq(*term);
                if conn.sendq.push_owned(&Framing::default(), &h, offending, None).is_ok() {
                    // Best effort: the socket may be full or gone.
                    let _ = conn.stream.set_nonblocking(false);
                    let _ = conn.stream.set_write_timeout(Some(std::time::Duration::from_millis(100)));
                    let _ = conn.sendq.flush(&mut conn.stream, &conn.reqs, &mut freed);
                }
            }
            Close::Gone(reason) => debug!(peer = %conn.peer, %reason, "connection closed"),
        }
        match &conn.phase {
            Phase::Admin(ctrl) => {
                info!(cntlid = ctrl.cntlid(), peer = %conn.peer, "admin queue closed: controller released");
                self.target.disconnect(ctrl, 0);
            }
            Phase::Io(ctrl) => self.target.disconnect(ctrl, conn.qid),
            _ => {}
        }
        let _ = conn.stream.shutdown(Shutdown::Both);
        // Requests at the backend finish later; their completions carry this
        // connection's generation and are dropped, returning their buffers.
    }
}

/// The NVMe status for a record the write path would not stage.
fn stage_error_status(e: &StageError) -> NvmeStatus {
    match e {
        StageError::GroupStopped => NvmeStatus::ANA_INACCESSIBLE,
        StageError::RingFull | StageError::Refused(_) => {
            warn!(error = %e, "staging refused a command");
            NvmeStatus::INTERNAL_ERROR
        }
    }
}

/// Range `r` of a Dataset Management command's data.
fn dsm_range(data: &[u8], r: usize) -> DsmRange {
    let mut b = [0u8; DSM_RANGE_BYTES];
    b.copy_from_slice(&data[r * DSM_RANGE_BYTES..(r + 1) * DSM_RANGE_BYTES]);
    DsmRange(b)
}

/// Checks a Dataset Management command's data whole: it fails with the
/// first bad range's status before anything is done.
fn check_dsm_ranges(
    req: &Request,
    ctrl: &Controller,
    ranges: usize,
    ns_index: usize,
) -> Result<(), NvmeStatus> {
    let Some(data) = req.buf.as_deref() else { return Err(NvmeStatus::DATA_SGL_LENGTH_INVALID) };
    if data.len() < ranges * DSM_RANGE_BYTES {
        return Err(NvmeStatus::DATA_SGL_LENGTH_INVALID);
    }
    (0..ranges).try_for_each(|r| ctrl.check_dsm_range(ns_index, &dsm_range(data, r)))
}

/// Deallocate on a staged namespace: one record per non-empty range, all or
/// none (a full ring cancels what was reserved and the command is retried);
/// it completes when the last record is durable. Returns false to be retried.
fn stage_deallocate(
    conn: &mut Connection,
    ctrl: &Controller,
    idx: u16,
    ranges: usize,
    ns_index: usize,
    st: &mut super::media::Staged,
    tag: u64,
) -> bool {
    if let Err(status) = check_dsm_ranges(&conn.reqs.0[idx as usize], ctrl, ranges, ns_index) {
        fail_request(conn, idx, status);
        return true;
    }
    let mut wanted = [(0u64, 0u32); DEALLOCATE_RANGES_MAX];
    let data = conn.reqs.0[idx as usize].buf.as_deref().unwrap_or(&[]);
    for (r, slot) in wanted.iter_mut().enumerate().take(ranges) {
        let range = dsm_range(data, r);
        *slot = (range.slba(), range.block_count());
    }
    let last = match st.stage_deallocate(tag, &wanted[..ranges.min(DEALLOCATE_RANGES_MAX)]) {
        Ok(last) => last,
        // Retried with the commands waiting for the backend.
        Err(StageError::RingFull) => return false,
        Err(e) => {
            fail_request(conn, idx, stage_error_status(&e));
            return true;
        }
    };
    let req = &mut conn.reqs.0[idx as usize];
    req.buf = None;
    match last {
        None => respond(conn, idx, NvmeStatus::SUCCESS, 0, 0),
        Some(seq) => {
            req.staged_seq = Some(seq);
            req.state = ReqState::WaitingDurable;
        }
    }
    true
}

fn submit_deallocate(
    conn: &mut Connection,
    ctrl: &Controller,
    idx: u16,
    ranges: usize,
    ns_index: usize,
    backend: &mut dyn Backend,
    tag: u64,
) -> bool {
    if let Err(status) = check_dsm_ranges(&conn.reqs.0[idx as usize], ctrl, ranges, ns_index) {
        fail_request(conn, idx, status);
        return true;
    }
    if backend.queue_depth_max() - backend.in_flight() < ranges {
        return false;
    }
    let data = conn.reqs.0[idx as usize].buf.as_deref().unwrap_or(&[]);
    let mut ops = 0;
    for r in 0..ranges {
        let range = dsm_range(data, r);
        if range.block_count() == 0 {
            continue;
        }
        let op = BackendOp::Deallocate { slba: range.slba(), nlb: range.block_count() };
        if backend.submit(tag, op).is_ok() {
            ops += 1;
        }
    }
    let req = &mut conn.reqs.0[idx as usize];
    req.buf = None;
    if ops == 0 {
        respond(conn, idx, NvmeStatus::SUCCESS, 0, 0);
    } else {
        req.state = ReqState::Executing;
        req.ops_pending = ops;
    }
    true
}

/// Queues the response of request `idx`: C2HData first for a successful read.
fn respond(conn: &mut Connection, idx: u16, status: NvmeStatus, dw0: u32, data_to_host: usize) {
    let req = &mut conn.reqs.0[idx as usize];
    let cid = req.sqe.cid();
    req.state = ReqState::Responding;
    req.succeeded = status.is_success();
    if data_to_host > 0 {
        let bytes: &[u8] = req.buf.as_deref().map(|b| &b[..data_to_host]).unwrap_or(&[]);
        let h = PduHeader::C2HData(C2HData {
            cccid: cid,
            datao: 0,
            datal: data_to_host as u32,
            last: true,
            success: false,
        });
        if let Err(e) = conn.sendq.push(
            &conn.framing,
            &h,
            OutData::Request { req: idx, offset: 0, len: data_to_host },
            bytes,
            None,
        ) {
            warn!(error = %e, "failed to queue C2HData");
        }
    }
    let mut cqe = Cqe::new(cid, status, dw0);
    cqe.set_sq_head(conn.sq_head);
    cqe.set_sq_id(conn.qid);
    if let Err(e) =
        conn.sendq.push(&conn.framing, &PduHeader::CapsuleResp { cqe }, OutData::None, &[], Some(idx))
    {
        warn!(error = %e, "failed to queue CapsuleResp");
    }
}

fn respond_cqe(conn: &mut Connection, idx: u16, mut cqe: Cqe) {
    conn.reqs.0[idx as usize].state = ReqState::Responding;
    cqe.set_sq_head(conn.sq_head);
    cqe.set_sq_id(conn.qid);
    if let Err(e) =
        conn.sendq.push(&conn.framing, &PduHeader::CapsuleResp { cqe }, OutData::None, &[], Some(idx))
    {
        warn!(error = %e, "failed to queue CapsuleResp");
    }
}

fn fail_request(conn: &mut Connection, idx: u16, status: NvmeStatus) {
    debug!(peer = %conn.peer, cid = conn.reqs.0[idx as usize].sqe.cid(), %status, "command failed");
    conn.reqs.0[idx as usize].buf = None;
    respond(conn, idx, status, 0, 0);
}

fn free_request(conn: &mut Connection, idx: u16) {
    let req = &mut conn.reqs.0[idx as usize];
    assert_eq!(req.state, ReqState::Responding, "a request is freed only after its response was sent");
    req.state = ReqState::Free;
    req.buf = None;
    req.io = None;
    conn.free_reqs.push(idx);
}

/// Counts a read or write whose response has been sent into the metrics.
fn count_completion(metrics: Option<&GroupMetrics>, conn: &Connection, idx: u16) {
    let req = &conn.reqs.0[idx as usize];
    let (Some(m), Some(io), Some(t)) = (metrics, req.io, req.started) else { return };
    let op = match io.kind {
        IoKind::Read => IoOp::Read,
        IoKind::Write => IoOp::Write,
        _ => return,
    };
    m.record_io(conn.subsystem_index, io.ns_index, op, req.succeeded, u64::from(io.data_bytes), t.elapsed());
}

/// Milliseconds on a monotonic clock, the time base of keep-alive.
pub fn now_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}
