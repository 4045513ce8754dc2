//! One host queue (admin or I/O) over its own NVMe/TCP connection: command
//! slots, the send queue, and the `poll` loop that moves PDUs both ways.
//!
//! A command lives in a slot from `submit` to its completion; its CID is the
//! slot index, so a CapsuleResp, C2HData or R2T names its slot directly.
//! Each slot owns a data buffer, preallocated at [`SLOT_BUF_PREALLOC_BYTES`]
//! (or the transfer limit, if smaller) and grown once, never shrunk, for a
//! larger transfer: steady-state I/O does not allocate. Write data is copied
//! once into the slot buffer (so the caller's slice need not outlive
//! `submit`), then sent in the capsule or in H2CData PDUs answering R2Ts; read
//! data lands straight from the socket in the slot buffer.
//!
//! Invariants: a slot is Free, Active (in flight) or Draining (completed, but
//! its buffer is still being written to the socket, so its CID cannot be
//! reused yet); `in_flight` counts Active slots; the send queue never holds
//! more than two items per slot (the capsule and one R2T's data, as we
//! advertise MAXR2T = 1), so it never reallocates. After any transport error
//! the queue is dead and every call returns [`HostError::Dead`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::conn::{wait_readable, Connection};
use super::HostError;
use crate::spec::sqe::{SGL_ID_DATA_BLOCK_OFFSET, SGL_ID_TRANSPORT_DATA_BLOCK};
use crate::spec::{Cqe, NvmeStatus, SglDescriptor, Sqe};
use crate::tcp::pdu::fes;
use crate::tcp::{C2HData, H2CData, PduHeader, RecvEvent, TcpError, R2T};

/// Per-slot buffer allocated when the queue is created.
pub const SLOT_BUF_PREALLOC_BYTES: usize = 128 * 1024;

/// The opcodes this host sends (one definition: `spec::opcode`).
mod opcode {
    pub use crate::spec::opcode::admin::FABRICS;
    pub use crate::spec::opcode::nvm::{DATASET_MANAGEMENT, FLUSH, READ, WRITE, WRITE_ZEROES};
}

/// Fabrics command type of Connect (NVMe-oF 1.1, Figure 18).
const FCTYPE_CONNECT: u8 = crate::spec::opcode::fctype::CONNECT;

/// Transient Transport Error (NVMe Base 2.0, Figure 101, SC 22h): the status
/// the NVMe/TCP spec gives a command whose data failed its digest.
pub const TRANSIENT_TRANSPORT_ERROR: NvmeStatus = NvmeStatus::TRANSIENT_TRANSPORT_ERROR;

/// The most ranges one Dataset Management command carries (NR is 8 bits,
/// 0's-based), each 16 bytes (NVM Command Set 1.0, Figure 39).
pub const DEALLOCATE_RANGES_MAX: usize = 256;

/// One I/O command. Block counts are ordinary (1-based) counts.
#[derive(Clone, Copy, Debug)]
pub enum IoCommand<'a> {
    Read {
        nsid: u32,
        slba: u64,
        nlb: u32,
    },
    Write {
        nsid: u32,
        slba: u64,
        data: &'a [u8],
        fua: bool,
    },
    Flush {
        nsid: u32,
    },
    WriteZeroes {
        nsid: u32,
        slba: u64,
        nlb: u32,
    },
    /// Dataset Management with the Deallocate attribute: (slba, block count).
    Deallocate {
        nsid: u32,
        ranges: &'a [(u64, u32)],
    },
}

/// A finished command, handed to `poll`'s callback.
#[derive(Debug)]
pub struct IoCompletion<'a> {
    pub tag: u64,
    pub status: NvmeStatus,
    /// Read data (the whole transfer); empty for other commands.
    pub data: &'a [u8],
    /// The completion entry; for a read completed by C2HData with SUCCESS,
    /// a synthesized entry (status success, dw0 0).
    pub cqe: Cqe,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Free,
    Active,
    Draining,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    None,
    ToTarget,
    FromTarget,
}

struct Slot {
    state: SlotState,
    tag: u64,
    sqe: Sqe,
    direction: Direction,
    data_len: usize,
    in_capsule: bool,
    received: usize,
    r2t_active: bool,
    data_digest_error: bool,
    buf: Vec<u8>,
}

#[derive(Clone, Copy, Debug)]
enum SendItem {
    Capsule { slot: u16 },
    H2C { slot: u16, ttag: u16, offset: u32, remaining: u32 },
}

impl SendItem {
    fn slot(&self) -> u16 {
        match *self {
            SendItem::Capsule { slot } | SendItem::H2C { slot, .. } => slot,
        }
    }
}

/// The PDU being written: its data is `slots[slot].buf[start..end]`.
#[derive(Clone, Copy, Debug)]
struct Sending {
    slot: u16,
    start: usize,
    end: usize,
}

/// C2HData being read into `slots[slot].buf[offset..end]`.
#[derive(Clone, Copy, Debug)]
struct Receiving {
    slot: u16,
    offset: usize,
    end: usize,
    success: bool,
}

/// One queue pair of a controller. `Send`: hand each to its own thread.
pub struct IoQueue {
    qid: u16,
    conn: Connection,
    slots: Vec<Slot>,
    free: Vec<u16>,
    send_queue: VecDeque<SendItem>,
    sending: Option<Sending>,
    receiving: Option<Receiving>,
    /// The C2HData whose digest is being checked (between its last data
    /// byte and DataDone).
    data_done_pending: Option<Receiving>,
    in_flight: usize,
    in_capsule_max: usize,
    transfer_max: usize,
    block_sizes: Vec<(u32, usize)>,
    timeout: Duration,
    dead: bool,
}

impl IoQueue {
    /// A queue over an initialized connection (ICReq/ICResp done, Connect
    /// not yet sent). `depth` commands may be in flight; `in_capsule_max` is
    /// the most write data sent inside a capsule; `transfer_max` the largest
    /// transfer of one command.
    pub(crate) fn new(
        qid: u16,
        conn: Connection,
        depth: usize,
        in_capsule_max: usize,
        transfer_max: usize,
        timeout: Duration,
    ) -> Self {
        assert!(depth > 0 && depth <= usize::from(u16::MAX), "queue depth out of range");
        let prealloc = transfer_max.min(SLOT_BUF_PREALLOC_BYTES);
        let slots = (0..depth)
            .map(|_| Slot {
                state: SlotState::Free,
                tag: 0,
                sqe: Sqe::default(),
                direction: Direction::None,
                data_len: 0,
                in_capsule: false,
                received: 0,
                r2t_active: false,
                data_digest_error: false,
                buf: vec![0u8; prealloc],
            })
            .collect();
        IoQueue {
            qid,
            conn,
            slots,
            free: (0..depth as u16).rev().collect(),
            send_queue: VecDeque::with_capacity(2 * depth + 1),
            sending: None,
            receiving: None,
            data_done_pending: None,
            in_flight: 0,
            in_capsule_max,
            transfer_max,
            block_sizes: Vec::new(),
            timeout,
            dead: false,
        }
    }

    pub fn queue_depth(&self) -> usize {
        self.slots.len()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub fn qid(&self) -> u16 {
        self.qid
    }

    /// The largest transfer of one command, in bytes.
    pub fn max_transfer_bytes(&self) -> usize {
        self.transfer_max
    }

    /// Records the logical block size of a namespace, so that block counts
    /// and byte lengths can be converted. The controller fills this in for
    /// every namespace active when the queue was taken.
    pub fn set_block_size(&mut self, nsid: u32, block_size: usize) {
        if let Some(e) = self.block_sizes.iter_mut().find(|e| e.0 == nsid) {
            e.1 = block_size;
        } else {
            self.block_sizes.push((nsid, block_size));
        }
    }

    pub fn block_size(&self, nsid: u32) -> Result<usize, HostError> {
        self.block_sizes.iter().find(|e| e.0 == nsid).map(|e| e.1).ok_or(HostError::UnknownNamespace { nsid })
    }

    /// Queues a command (no allocation in the steady state: write data is
    /// copied once into the slot's preallocated buffer).
    /// Err(HostError::QueueFull) when queue_depth commands are in flight.
    pub fn submit(&mut self, cmd: IoCommand<'_>, tag: u64) -> Result<(), HostError> {
        let mut sqe = Sqe::default();
        match cmd {
            IoCommand::Read { nsid, slba, nlb } => {
                let bs = self.block_size(nsid)?;
                check_nlb(nlb)?;
                sqe.set_opcode(opcode::READ);
                sqe.set_nsid(nsid);
                sqe.set_slba(slba);
                sqe.set_cdw12(nlb - 1);
                self.submit_raw(sqe, &[], nlb as usize * bs, tag).map(|_| ())
            }
            IoCommand::Write { nsid, slba, data, fua } => {
                let bs = self.block_size(nsid)?;
                if data.is_empty() || data.len() % bs != 0 {
                    return Err(HostError::InvalidArgument {
                        reason: "write length not a multiple of the block size",
                    });
                }
                let nlb = u32::try_from(data.len() / bs)
                    .map_err(|_| HostError::InvalidArgument { reason: "more than 65536 blocks" })?;
                check_nlb(nlb)?;
                sqe.set_opcode(opcode::WRITE);
                sqe.set_nsid(nsid);
                sqe.set_slba(slba);
                sqe.set_cdw12((nlb - 1) | if fua { 1 << 30 } else { 0 });
                self.submit_raw(sqe, data, 0, tag).map(|_| ())
            }
            IoCommand::Flush { nsid } => {
                sqe.set_opcode(opcode::FLUSH);
                sqe.set_nsid(nsid);
                self.submit_raw(sqe, &[], 0, tag).map(|_| ())
            }
            IoCommand::WriteZeroes { nsid, slba, nlb } => {
                check_nlb(nlb)?;
                sqe.set_opcode(opcode::WRITE_ZEROES);
                sqe.set_nsid(nsid);
                sqe.set_slba(slba);
                sqe.set_cdw12(nlb - 1);
                self.submit_raw(sqe, &[], 0, tag).map(|_| ())
            }
            IoCommand::Deallocate { nsid, ranges } => {
                if ranges.is_empty() || ranges.len() > DEALLOCATE_RANGES_MAX {
                    return Err(HostError::InvalidArgument { reason: "Deallocate takes 1 to 256 ranges" });
                }
                // Range format (Figure 39): context attributes 3:0, length in
                // blocks 7:4, starting LBA 15:8.
                let mut list = [0u8; DEALLOCATE_RANGES_MAX * 16];
                for (i, (slba, nlb)) in ranges.iter().enumerate() {
                    list[i * 16 + 4..i * 16 + 8].copy_from_slice(&nlb.to_le_bytes());
                    list[i * 16 + 8..i * 16 + 16].copy_from_slice(&slba.to_le_bytes());
                }
                sqe.set_opcode(opcode::DATASET_MANAGEMENT);
                sqe.set_nsid(nsid);
                sqe.set_cdw10(ranges.len() as u32 - 1);
                sqe.set_cdw11(1 << 2);
                self.submit_raw(sqe, &list[..ranges.len() * 16], 0, tag).map(|_| ())
            }
        }
    }

    /// Queues any command: `data_out` goes to the target (in the capsule or
    /// after R2T), or `data_in_len` bytes come back. The CID, PSDT and SGL are
    /// filled in here. Returns the CID.
    pub fn submit_raw(
        &mut self,
        mut sqe: Sqe,
        data_out: &[u8],
        data_in_len: usize,
        tag: u64,
    ) -> Result<u16, HostError> {
        if self.dead {
            return Err(HostError::Dead);
        }
        if !data_out.is_empty() && data_in_len > 0 {
            return Err(HostError::InvalidArgument { reason: "bidirectional transfers are not supported" });
        }
        let len = data_out.len().max(data_in_len);
        if len > self.transfer_max {
            return Err(HostError::TooLarge { len, max: self.transfer_max });
        }
        let len32 = u32::try_from(len).map_err(|_| HostError::TooLarge { len, max: u32::MAX as usize })?;
        let slot_ix = self.free.pop().ok_or(HostError::QueueFull)?;
        // Connect data always travels in the capsule: the target cannot know
        // the queue's capsule size before the queue is connected.
        let is_connect = sqe.opcode() == opcode::FABRICS && sqe.fctype() == FCTYPE_CONNECT;
        let in_capsule = !data_out.is_empty() && (len <= self.in_capsule_max || is_connect);
        sqe.set_cid(slot_ix);
        sqe.set_psdt(1);
        let sgl = if in_capsule {
            SglDescriptor::new(0, len32, SGL_ID_DATA_BLOCK_OFFSET)
        } else {
            SglDescriptor::new(0, len32, SGL_ID_TRANSPORT_DATA_BLOCK)
        };
        sqe.set_sgl(sgl);
        let slot = &mut self.slots[usize::from(slot_ix)];
        debug_assert_eq!(slot.state, SlotState::Free);
        if slot.buf.len() < len {
            // Grows once per slot for transfers above the preallocation.
            slot.buf.resize(len, 0);
        }
        slot.buf[..data_out.len()].copy_from_slice(data_out);
        slot.state = SlotState::Active;
        slot.tag = tag;
        slot.sqe = sqe;
        slot.direction = if !data_out.is_empty() {
            Direction::ToTarget
        } else if data_in_len > 0 {
            Direction::FromTarget
        } else {
            Direction::None
        };
        slot.data_len = len;
        slot.in_capsule = in_capsule;
        slot.received = 0;
        slot.r2t_active = false;
        slot.data_digest_error = false;
        self.in_flight += 1;
        self.send_queue.push_back(SendItem::Capsule { slot: slot_ix });
        Ok(slot_ix)
    }

    /// Sends what is queued, receives what arrived, calls `on_complete` for
    /// each completion; waits at most `timeout` (None = don't wait) when
    /// nothing is ready and commands are in flight. Returns the number
    /// completed.
    pub fn poll(
        &mut self,
        timeout: Option<Duration>,
        on_complete: &mut dyn FnMut(IoCompletion<'_>),
    ) -> Result<usize, HostError> {
        if self.dead {
            return Err(HostError::Dead);
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let completed = match self.progress(on_complete) {
                Ok(n) => n,
                Err(e) => {
                    self.dead = true;
                    return Err(e);
                }
            };
            if completed > 0 || self.in_flight == 0 {
                return Ok(completed);
            }
            let Some(deadline) = deadline else { return Ok(0) };
            let now = Instant::now();
            if now >= deadline {
                return Ok(0);
            }
            let mut wait = deadline - now;
            if self.sending.is_some() || !self.send_queue.is_empty() {
                // The socket is full: readability is not the only wake-up we
                // need, so re-check for writability soon.
                wait = wait.min(Duration::from_millis(1));
            }
            if let Err(e) = wait_readable(&self.conn.stream, wait) {
                self.dead = true;
                return Err(e);
            }
        }
    }

    fn progress(&mut self, on_complete: &mut dyn FnMut(IoCompletion<'_>)) -> Result<usize, HostError> {
        let mut completed = 0;
        loop {
            let sent = self.pump_send()?;
            let (received, n) = self.pump_recv(on_complete)?;
            completed += n;
            if !sent && !received {
                return Ok(completed);
            }
        }
    }

    /// Writes queued PDUs until the queue is empty or the socket is full.
    fn pump_send(&mut self) -> Result<bool, HostError> {
        let mut progressed = false;
        loop {
            if let Some(s) = self.sending {
                let data = &self.slots[usize::from(s.slot)].buf[s.start..s.end];
                if !self.conn.tx.flush(&mut self.conn.stream, data)? {
                    return Ok(progressed);
                }
                progressed = true;
                self.sending = None;
                if self.slots[usize::from(s.slot)].state == SlotState::Draining {
                    self.release(s.slot);
                }
            }
            let Some(item) = self.send_queue.pop_front() else { return Ok(progressed) };
            progressed = true;
            match item {
                SendItem::Capsule { slot } => {
                    let sl = &self.slots[usize::from(slot)];
                    let end = if sl.in_capsule { sl.data_len } else { 0 };
                    self.conn.tx.start(&PduHeader::CapsuleCmd { sqe: sl.sqe }, &sl.buf[..end])?;
                    self.sending = Some(Sending { slot, start: 0, end });
                }
                SendItem::H2C { slot, ttag, offset, remaining } => {
                    let chunk = remaining.min(self.conn.negotiated.maxh2cdata);
                    let last = chunk == remaining;
                    if !last {
                        self.send_queue.push_front(SendItem::H2C {
                            slot,
                            ttag,
                            offset: offset + chunk,
                            remaining: remaining - chunk,
                        });
                    }
                    let sl = &mut self.slots[usize::from(slot)];
                    if last {
                        sl.r2t_active = false;
                    }
                    let (start, end) = (offset as usize, offset as usize + chunk as usize);
                    let header =
                        PduHeader::H2CData(H2CData { cccid: slot, ttag, datao: offset, datal: chunk, last });
                    self.conn.tx.start(&header, &sl.buf[start..end])?;
                    self.sending = Some(Sending { slot, start, end });
                }
            }
        }
    }

    /// Reads PDUs until the socket is empty. Returns (progress, completions).
    fn pump_recv(
        &mut self,
        on_complete: &mut dyn FnMut(IoCompletion<'_>),
    ) -> Result<(bool, usize), HostError> {
        let mut progressed = false;
        let mut completed = 0;
        loop {
            if let Some(mut r) = self.receiving {
                let dest = &mut self.slots[usize::from(r.slot)].buf[r.offset..r.end];
                let n = match self.conn.rx.read_data(&mut self.conn.stream, dest) {
                    Ok(n) => n,
                    Err(e) => return Err(self.conn.fail(e)),
                };
                if n == 0 {
                    return Ok((progressed, completed));
                }
                progressed = true;
                r.offset += n;
                if r.offset == r.end {
                    self.receiving = None;
                    self.data_done_pending = Some(r);
                } else {
                    self.receiving = Some(r);
                }
                continue;
            }
            match self.conn.rx.poll(&mut self.conn.stream) {
                Ok(None) => return Ok((progressed, completed)),
                Ok(Some(event)) => {
                    progressed = true;
                    completed += self.on_event(event, on_complete)?;
                }
                Err(TcpError::DataDigest { .. }) => {
                    progressed = true;
                    if let Some(r) = self.data_done_pending.take() {
                        self.slots[usize::from(r.slot)].data_digest_error = true;
                        if r.success {
                            let cqe = Cqe::new(r.slot, TRANSIENT_TRANSPORT_ERROR, 0);
                            self.complete(r.slot, cqe, on_complete);
                            completed += 1;
                        }
                    }
                }
                Err(e) => return Err(self.conn.fail(e)),
            }
        }
    }

    fn active_slot(&self, cid: u16) -> Option<&Slot> {
        self.slots.get(usize::from(cid)).filter(|s| s.state == SlotState::Active)
    }

    fn on_event(
        &mut self,
        event: RecvEvent,
        on_complete: &mut dyn FnMut(IoCompletion<'_>),
    ) -> Result<usize, HostError> {
        match event {
            RecvEvent::Header { header: PduHeader::CapsuleResp { cqe }, .. } => {
                let cid = cqe.cid();
                let Some(slot) = self.active_slot(cid) else {
                    return Err(self.protocol_error(
                        fes::INVALID_HEADER_FIELD,
                        12,
                        "CapsuleResp for an unknown CID",
                    ));
                };
                let mut status = cqe.status();
                if status.is_success() {
                    if slot.data_digest_error {
                        status = TRANSIENT_TRANSPORT_ERROR;
                    } else if slot.direction == Direction::FromTarget && slot.received != slot.data_len {
                        // A success with missing read data would hand the
                        // caller stale bytes: report it as a transfer error.
                        status = NvmeStatus::DATA_TRANSFER_ERROR;
                    }
                }
                let mut cqe = cqe;
                cqe.set_status(status);
                self.complete(cid, cqe, on_complete);
                Ok(1)
            }
            RecvEvent::Header { header: PduHeader::C2HData(d), .. } => self.on_c2h_data(d).map(|()| 0),
            RecvEvent::Header { header: PduHeader::R2T(r), .. } => self.on_r2t(r).map(|()| 0),
            RecvEvent::Header { header: PduHeader::C2HTermReq(t), .. } => {
                let _ = self.conn.stream.shutdown(std::net::Shutdown::Both);
                Err(HostError::TermReq { fes: t.fes, fei: t.fei })
            }
            RecvEvent::Header { .. } => {
                Err(self.protocol_error(fes::INVALID_HEADER_FIELD, 0, "PDU type not expected by the host"))
            }
            RecvEvent::DataDone => {
                let Some(r) = self.data_done_pending.take() else {
                    return Err(HostError::Protocol { reason: "data completion without data" });
                };
                if r.success {
                    let status = if self.slots[usize::from(r.slot)].received
                        == self.slots[usize::from(r.slot)].data_len
                    {
                        NvmeStatus::SUCCESS
                    } else {
                        NvmeStatus::DATA_TRANSFER_ERROR
                    };
                    self.complete(r.slot, Cqe::new(r.slot, status, 0), on_complete);
                    return Ok(1);
                }
                Ok(0)
            }
        }
    }

    fn on_c2h_data(&mut self, d: C2HData) -> Result<(), HostError> {
        let Some(slot) = self.active_slot(d.cccid) else {
            return Err(self.protocol_error(fes::INVALID_HEADER_FIELD, 8, "C2HData for an unknown CID"));
        };
        let end = d.datao as usize + d.datal as usize;
        if slot.direction != Direction::FromTarget || end > slot.data_len {
            return Err(self.protocol_error(
                fes::DATA_OUT_OF_RANGE,
                0,
                "C2HData outside the command's buffer",
            ));
        }
        let slot = &mut self.slots[usize::from(d.cccid)];
        slot.received += d.datal as usize;
        self.receiving =
            Some(Receiving { slot: d.cccid, offset: d.datao as usize, end, success: d.success && d.last });
        Ok(())
    }

    fn on_r2t(&mut self, r: R2T) -> Result<(), HostError> {
        let Some(slot) = self.active_slot(r.cccid) else {
            return Err(self.protocol_error(fes::INVALID_HEADER_FIELD, 8, "R2T for an unknown CID"));
        };
        let end = u64::from(r.r2to) + u64::from(r.r2tl);
        if slot.direction != Direction::ToTarget || slot.in_capsule || end > slot.data_len as u64 {
            return Err(self.protocol_error(fes::DATA_OUT_OF_RANGE, 0, "R2T outside the command's data"));
        }
        if slot.r2t_active {
            return Err(self.protocol_error(fes::LIMIT_EXCEEDED, 0, "more R2Ts than MAXR2T"));
        }
        self.slots[usize::from(r.cccid)].r2t_active = true;
        self.send_queue.push_back(SendItem::H2C {
            slot: r.cccid,
            ttag: r.ttag,
            offset: r.r2to,
            remaining: r.r2tl,
        });
        Ok(())
    }

    /// A protocol violation by the target: tell it with an H2CTermReq and
    /// give up on the connection.
    fn protocol_error(&mut self, fes: u16, fei: u32, reason: &'static str) -> HostError {
        let _ = self.conn.fail(TcpError::Fatal { fes, fei, reason });
        HostError::Protocol { reason }
    }

    fn complete(&mut self, cid: u16, cqe: Cqe, on_complete: &mut dyn FnMut(IoCompletion<'_>)) {
        let slot = &mut self.slots[usize::from(cid)];
        let data: &[u8] =
            if slot.direction == Direction::FromTarget { &slot.buf[..slot.data_len] } else { &[] };
        on_complete(IoCompletion { tag: slot.tag, status: cqe.status(), data, cqe });
        self.in_flight -= 1;
        self.send_queue.retain(|item| item.slot() != cid);
        if self.sending.is_some_and(|s| s.slot == cid) {
            self.slots[usize::from(cid)].state = SlotState::Draining;
        } else {
            self.release(cid);
        }
    }

    fn release(&mut self, cid: u16) {
        self.slots[usize::from(cid)].state = SlotState::Free;
        self.free.push(cid);
    }

    /// Runs one command to completion (requires an idle queue, so that no
    /// other completion is swallowed). The completion is passed to `take`.
    /// An NVMe error status becomes `HostError::Status`; a timeout leaves the
    /// command in flight, so the queue is marked dead.
    pub(crate) fn execute(
        &mut self,
        sqe: Sqe,
        data_out: &[u8],
        data_in_len: usize,
        take: &mut dyn FnMut(&IoCompletion<'_>),
    ) -> Result<Cqe, HostError> {
        if self.dead {
            return Err(HostError::Dead);
        }
        if self.in_flight > 0 {
            return Err(HostError::Busy { in_flight: self.in_flight });
        }
        const SYNC_TAG: u64 = u64::MAX;
        let cid = self.submit_raw(sqe, data_out, data_in_len, SYNC_TAG)?;
        let start = Instant::now();
        let deadline = start + self.timeout;
        let mut result: Option<Cqe> = None;
        while result.is_none() {
            let now = Instant::now();
            if now >= deadline {
                self.dead = true;
                return Err(HostError::Timeout {
                    what: "command completion",
                    waited_ms: self.timeout.as_millis() as u64,
                });
            }
            self.poll(Some(deadline - now), &mut |c: IoCompletion<'_>| {
                if c.tag == SYNC_TAG {
                    take(&c);
                    result = Some(c.cqe);
                }
            })?;
        }
        let cqe = result.unwrap_or_default();
        let status = cqe.status();
        if !status.is_success() {
            return Err(HostError::Status { status, cid });
        }
        Ok(cqe)
    }

    fn chunk_bytes(&self, bs: usize) -> usize {
        (self.transfer_max.min(65_536 * bs) / bs) * bs
    }

    /// Reads `buf.len()` bytes (a multiple of the block size) from `slba`,
    /// in as many commands as the transfer limit needs.
    pub fn read(&mut self, nsid: u32, slba: u64, buf: &mut [u8]) -> Result<(), HostError> {
        let bs = self.block_size(nsid)?;
        if !buf.len().is_multiple_of(bs) {
            return Err(HostError::InvalidArgument {
                reason: "read length not a multiple of the block size",
            });
        }
        let chunk = self.chunk_bytes(bs);
        let mut lba = slba;
        for part in buf.chunks_mut(chunk) {
            let nlb = (part.len() / bs) as u32;
            let mut sqe = Sqe::default();
            sqe.set_opcode(opcode::READ);
            sqe.set_nsid(nsid);
            sqe.set_slba(lba);
            sqe.set_cdw12(nlb - 1);
            self.execute(sqe, &[], part.len(), &mut |c| part.copy_from_slice(c.data))?;
            lba += u64::from(nlb);
        }
        Ok(())
    }

    /// Writes `data` (a multiple of the block size) at `slba`.
    pub fn write(&mut self, nsid: u32, slba: u64, data: &[u8]) -> Result<(), HostError> {
        let bs = self.block_size(nsid)?;
        if data.is_empty() || !data.len().is_multiple_of(bs) {
            return Err(HostError::InvalidArgument {
                reason: "write length not a multiple of the block size",
            });
        }
        let chunk = self.chunk_bytes(bs);
        let mut lba = slba;
        for part in data.chunks(chunk) {
            let nlb = (part.len() / bs) as u32;
            let mut sqe = Sqe::default();
            sqe.set_opcode(opcode::WRITE);
            sqe.set_nsid(nsid);
            sqe.set_slba(lba);
            sqe.set_cdw12(nlb - 1);
            self.execute(sqe, part, 0, &mut |_| {})?;
            lba += u64::from(nlb);
        }
        Ok(())
    }

    pub fn flush(&mut self, nsid: u32) -> Result<(), HostError> {
        let mut sqe = Sqe::default();
        sqe.set_opcode(opcode::FLUSH);
        sqe.set_nsid(nsid);
        self.execute(sqe, &[], 0, &mut |_| {}).map(|_| ())
    }

    pub fn write_zeroes(&mut self, nsid: u32, slba: u64, nlb: u32) -> Result<(), HostError> {
        check_nlb(nlb)?;
        let mut sqe = Sqe::default();
        sqe.set_opcode(opcode::WRITE_ZEROES);
        sqe.set_nsid(nsid);
        sqe.set_slba(slba);
        sqe.set_cdw12(nlb - 1);
        self.execute(sqe, &[], 0, &mut |_| {}).map(|_| ())
    }

    /// Closes the connection (commands in flight are abandoned).
    pub fn close(self) {
        let _ = self.conn.stream.shutdown(std::net::Shutdown::Both);
    }
}

// Each queue is meant to be moved to its own thread.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<IoQueue>();
};

fn check_nlb(nlb: u32) -> Result<(), HostError> {
    if nlb == 0 || nlb > 65_536 {
        return Err(HostError::InvalidArgument { reason: "block count must be 1..=65536" });
    }
    Ok(())
}
