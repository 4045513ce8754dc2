//! A small NVMe/TCP target for the host library's tests, built on this
//! crate's codec: one thread per connection over 127.0.0.1, a RAM namespace,
//! and knobs that exercise every data path of the host (in-capsule writes,
//! R2T in several pieces, C2HData with or without SUCCESS, digests, PDU data
//! alignment, reordered completions) and a few misbehaviours (garbage bytes,
//! a C2HTermReq, a corrupted data digest).
//!
//! It is deliberately simple and synchronous per connection; idle loops sleep
//! so that tests do not spin a shared machine.

use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::spec::{Cqe, NvmeStatus, Sqe};
use crate::tcp::{
    C2HData, Framing, IcResp, PduHeader, PduReceiver, PduSender, ReceiveLimits, RecvEvent, Role, TcpError,
    TermReq, R2T,
};

pub const SUBNQN: &str = "nqn.2024-01.io.tandem:fake";
pub const CNTLID: u16 = 7;

/// How the fake target behaves.
#[derive(Clone, Debug)]
pub struct FakeConfig {
    pub block_size: usize,
    pub num_blocks: u64,
    /// In-capsule data accepted on I/O queues (IOCCSZ = 4 + this / 16).
    pub in_capsule_bytes: usize,
    pub mdts: u8,
    pub maxh2cdata: u32,
    /// CPDA sent in ICResp (0's-based dwords).
    pub cpda: u8,
    /// Largest R2TL; bigger writes get several R2Ts in turn.
    pub r2t_bytes_max: u32,
    /// Largest DATAL of one C2HData PDU.
    pub c2h_bytes_max: usize,
    /// Finish reads with C2HData SUCCESS instead of a CapsuleResp.
    pub c2h_success: bool,
    /// Hold completions until this many are ready (or the host is quiet for
    /// 20 ms),
    /// then send them in reverse order.
    pub reorder_batch: usize,
    /// I/O queues granted by Set Features.
    pub io_queues_max: u16,
    /// Answer ICReq with garbage.
    pub garbage_icresp: bool,
    /// Answer the first Read on an I/O queue with garbage bytes.
    pub garbage_on_read: bool,
    /// Answer the first Read on an I/O queue with a C2HTermReq.
    pub term_req_on_read: bool,
    /// Corrupt the data digest of the first Read's data.
    pub corrupt_read_digest: bool,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            block_size: 512,
            num_blocks: 4096,
            in_capsule_bytes: 8192,
            mdts: 5,
            maxh2cdata: 32 * 1024,
            cpda: 0,
            r2t_bytes_max: 1 << 20,
            c2h_bytes_max: 1 << 20,
            c2h_success: false,
            reorder_batch: 1,
            io_queues_max: 4,
            garbage_icresp: false,
            garbage_on_read: false,
            term_req_on_read: false,
            corrupt_read_digest: false,
        }
    }
}

/// A running fake target; stops (and joins its threads) on drop.
pub struct FakeTarget {
    pub addr: String,
    pub media: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    accept_thread: Option<JoinHandle<()>>,
}

impl FakeTarget {
    pub fn start(config: FakeConfig) -> FakeTarget {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr").to_string();
        let media = Arc::new(Mutex::new(vec![0u8; config.block_size * config.num_blocks as usize]));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (media.clone(), stop.clone());
        let accept_thread = thread::spawn(move || {
            let mut workers = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (c, m, s) = (config.clone(), m.clone(), s.clone());
                        workers.push(thread::spawn(move || {
                            let _ = Conn::new(stream, c, m, s).run();
                        }));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(2)),
                    Err(_) => break,
                }
            }
            for w in workers {
                let _ = w.join();
            }
        });
        FakeTarget { addr, media, stop, accept_thread: Some(accept_thread) }
    }
}

impl Drop for FakeTarget {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
    }
}

enum Response {
    Capsule(Cqe),
    Read { cid: u16, data: Vec<u8> },
}

/// A write waiting for its H2CData.
struct PendingWrite {
    sqe: Sqe,
    buf: Vec<u8>,
    /// End of the data requested so far by R2Ts.
    requested: usize,
    received: usize,
    ttag: u16,
}

enum DataDest {
    Capsule { sqe: Sqe, buf: Vec<u8>, filled: usize },
    H2C { cid: u16, offset: usize, end: usize, last: bool },
    Discard,
}

struct Conn {
    stream: TcpStream,
    config: FakeConfig,
    media: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    rx: PduReceiver,
    tx: PduSender,
    qid: u16,
    cc: u32,
    csts: u32,
    pending_writes: Vec<(u16, PendingWrite)>,
    data: Option<DataDest>,
    ready: Vec<Response>,
    last_activity: Instant,
    misbehaved: bool,
}

type Res<T> = Result<T, TcpError>;

impl Conn {
    fn new(stream: TcpStream, config: FakeConfig, media: Arc<Mutex<Vec<u8>>>, stop: Arc<AtomicBool>) -> Self {
        stream.set_nonblocking(true).expect("nonblocking");
        stream.set_nodelay(true).expect("nodelay");
        Conn {
            stream,
            config,
            media,
            stop,
            rx: PduReceiver::new(ReceiveLimits::new(Role::Target, 1 << 22)),
            tx: PduSender::new(Framing::default()),
            qid: 0,
            cc: 0,
            csts: 0,
            pending_writes: Vec::new(),
            data: None,
            ready: Vec::new(),
            last_activity: Instant::now(),
            misbehaved: false,
        }
    }

    fn send(&mut self, header: &PduHeader, data: &[u8]) -> Res<()> {
        self.tx.start(header, data)?;
        while !self.tx.flush(&mut self.stream, data)? {
            if self.stop.load(Ordering::Relaxed) {
                return Err(TcpError::Closed { mid_pdu: true });
            }
            thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }

    fn send_raw(&mut self, bytes: &[u8]) -> Res<()> {
        use std::io::Write;
        let mut off = 0;
        while off < bytes.len() {
            match self.stream.write(&bytes[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(Duration::from_micros(200)),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn run(&mut self) -> Res<()> {
        while !self.stop.load(Ordering::Relaxed) {
            let progressed = self.receive()?;
            let quiet = self.last_activity.elapsed() >= Duration::from_millis(20);
            if self.ready.len() >= self.config.reorder_batch || (quiet && !self.ready.is_empty()) {
                self.flush_responses()?;
            }
            if !progressed {
                thread::sleep(Duration::from_micros(300));
            }
        }
        Ok(())
    }

    fn flush_responses(&mut self) -> Res<()> {
        let mut ready = std::mem::take(&mut self.ready);
        if self.config.reorder_batch > 1 {
            ready.reverse();
        }
        for r in ready {
            match r {
                Response::Capsule(cqe) => self.send(&PduHeader::CapsuleResp { cqe }, &[])?,
                Response::Read { cid, data } => self.send_read(cid, &data)?,
            }
        }
        Ok(())
    }

    fn send_read(&mut self, cid: u16, data: &[u8]) -> Res<()> {
        let chunk = self.config.c2h_bytes_max.max(1);
        let mut off = 0;
        while off < data.len() {
            let end = (off + chunk).min(data.len());
            let last = end == data.len();
            let header = PduHeader::C2HData(C2HData {
                cccid: cid,
                datao: off as u32,
                datal: (end - off) as u32,
                last,
                success: last && self.config.c2h_success,
            });
            if self.config.corrupt_read_digest
                && !self.misbehaved
                && self.qid > 0
                && self.tx.framing().data_digest
            {
                // Encode normally, then flip the last byte (the digest).
                self.misbehaved = true;
                let mut enc = [0u8; crate::tcp::pdu::HEADER_BUF_LEN];
                let layout = header.encode(self.tx.framing(), end - off, &mut enc)?;
                let mut bytes = enc[..layout.prefix_len].to_vec();
                bytes.extend_from_slice(&data[off..end]);
                bytes.extend_from_slice(&(crc32c::crc32c(&data[off..end]) ^ 1).to_le_bytes());
                self.send_raw(&bytes)?;
            } else {
                self.send(&header, &data[off..end])?;
            }
            off = end;
        }
        if !self.config.c2h_success {
            self.send(&PduHeader::CapsuleResp { cqe: Cqe::new(cid, NvmeStatus::SUCCESS, 0) }, &[])?;
        }
        Ok(())
    }

    /// Reads what is available; returns whether anything happened.
    fn receive(&mut self) -> Res<bool> {
        let mut progressed = false;
        loop {
            if self.rx.data_remaining() > 0 {
                let mut dest = self.data.take().unwrap_or(DataDest::Discard);
                let mut scratch = [0u8; 4096];
                let n = match &mut dest {
                    DataDest::Capsule { buf, filled, .. } => {
                        let n = self.rx.read_data(&mut self.stream, &mut buf[*filled..])?;
                        *filled += n;
                        n
                    }
                    DataDest::H2C { cid, offset, end, .. } => {
                        let cid = *cid;
                        let w =
                            &mut self.pending_writes.iter_mut().find(|(c, _)| *c == cid).expect("pending").1;
                        let n = self.rx.read_data(&mut self.stream, &mut w.buf[*offset..*end])?;
                        *offset += n;
                        w.received += n;
                        n
                    }
                    DataDest::Discard => self.rx.read_data(&mut self.stream, &mut scratch)?,
                };
                self.data = Some(dest);
                if n == 0 {
                    return Ok(progressed);
                }
                progressed = true;
                continue;
            }
            match self.rx.poll(&mut self.stream)? {
                None => return Ok(progressed),
                Some(ev) => {
                    progressed = true;
                    self.last_activity = Instant::now();
                    self.on_event(ev)?;
                }
            }
        }
    }

    fn on_event(&mut self, ev: RecvEvent) -> Res<()> {
        match ev {
            RecvEvent::Header { header: PduHeader::IcReq(req), .. } => {
                if self.config.garbage_icresp {
                    return self.send_raw(&[0xA5; 200]);
                }
                let resp = IcResp {
                    pfv: 0,
                    cpda: self.config.cpda,
                    header_digest: req.header_digest,
                    data_digest: req.data_digest,
                    maxh2cdata: self.config.maxh2cdata,
                };
                self.send(&PduHeader::IcResp(resp), &[])?;
                self.tx.set_framing(Framing {
                    header_digest: req.header_digest,
                    data_digest: req.data_digest,
                    data_alignment: (usize::from(req.hpda) + 1) * 4,
                })?;
                self.rx.set_limits(ReceiveLimits {
                    header_digest: req.header_digest,
                    data_digest: req.data_digest,
                    data_alignment: (usize::from(self.config.cpda) + 1) * 4,
                    maxh2cdata: self.config.maxh2cdata,
                    ic_done: true,
                    ..ReceiveLimits::new(Role::Target, 1 << 22)
                })
            }
            RecvEvent::Header { header: PduHeader::CapsuleCmd { sqe }, data_len } => {
                if data_len > 0 {
                    self.data = Some(DataDest::Capsule { sqe, buf: vec![0u8; data_len], filled: 0 });
                    Ok(())
                } else {
                    self.execute(sqe, None)
                }
            }
            RecvEvent::Header { header: PduHeader::H2CData(d), .. } => {
                let cid = d.cccid;
                let Some((_, w)) = self.pending_writes.iter().find(|(c, _)| *c == cid) else {
                    self.data = Some(DataDest::Discard);
                    return Ok(());
                };
                let (off, end) = (d.datao as usize, d.datao as usize + d.datal as usize);
                if d.ttag != w.ttag || end > w.requested {
                    return Err(TcpError::fatal(
                        crate::tcp::fes::DATA_OUT_OF_RANGE,
                        0,
                        "H2CData out of range",
                    ));
                }
                self.data = Some(DataDest::H2C { cid, offset: off, end, last: d.last });
                Ok(())
            }
            RecvEvent::Header { header: PduHeader::H2CTermReq(_), .. } => {
                Err(TcpError::Closed { mid_pdu: false })
            }
            RecvEvent::Header { .. } => Err(TcpError::Misuse("unexpected PDU")),
            RecvEvent::DataDone => match self.data.take() {
                Some(DataDest::Capsule { sqe, buf, .. }) => self.execute(sqe, Some(buf)),
                Some(DataDest::H2C { cid, last, .. }) => self.on_h2c_done(cid, last),
                Some(DataDest::Discard) | None => Ok(()),
            },
        }
    }

    fn send_r2t(&mut self, cid: u16) -> Res<()> {
        let max = self.config.r2t_bytes_max as usize;
        let w = &mut self.pending_writes.iter_mut().find(|(c, _)| *c == cid).expect("pending").1;
        let start = w.requested;
        let end = (start + max).min(w.buf.len());
        w.requested = end;
        w.ttag = w.ttag.wrapping_add(1);
        let r2t = R2T { cccid: cid, ttag: w.ttag, r2to: start as u32, r2tl: (end - start) as u32 };
        self.send(&PduHeader::R2T(r2t), &[])
    }

    fn on_h2c_done(&mut self, cid: u16, last: bool) -> Res<()> {
        let Some(ix) = self.pending_writes.iter().position(|(c, _)| *c == cid) else { return Ok(()) };
        let w = &self.pending_writes[ix].1;
        if w.received == w.buf.len() {
            let (_, w) = self.pending_writes.swap_remove(ix);
            return self.execute(w.sqe, Some(w.buf));
        }
        if last && w.received == w.requested {
            self.send_r2t(cid)?;
        }
        Ok(())
    }

    fn complete(&mut self, cid: u16, status: NvmeStatus, dw0: u32, dw1: u32) {
        let mut cqe = Cqe::new(cid, status, dw0);
        cqe.set_dw1(dw1);
        cqe.set_sq_id(self.qid);
        self.ready.push(Response::Capsule(cqe));
    }

    fn execute(&mut self, sqe: Sqe, data: Option<Vec<u8>>) -> Res<()> {
        let cid = sqe.cid();
        let sgl_len = sqe.sgl().length() as usize;
        // A write whose data has not arrived yet: ask for it.
        let wants_data =
            matches!((sqe.opcode(), self.qid), (0x01, q) if q > 0) || (sqe.opcode() == 0x09 && self.qid > 0);
        if wants_data && data.is_none() && sgl_len > 0 {
            let w = PendingWrite { sqe, buf: vec![0u8; sgl_len], requested: 0, received: 0, ttag: 0 };
            self.pending_writes.push((cid, w));
            return self.send_r2t(cid);
        }
        if sqe.opcode() == 0x7F {
            return self.fabrics(sqe, data);
        }
        if self.qid == 0 {
            self.admin(sqe)
        } else {
            self.io(sqe, data)
        }
    }

    fn fabrics(&mut self, sqe: Sqe, data: Option<Vec<u8>>) -> Res<()> {
        let cid = sqe.cid();
        match sqe.fctype() {
            0x01 => {
                let Some(d) = data.filter(|d| d.len() == 1024) else {
                    self.complete(cid, NvmeStatus::CONNECT_INVALID_PARAMETERS, 0, 0);
                    return Ok(());
                };
                let subnqn: Vec<u8> = d[256..512].iter().copied().take_while(|&b| b != 0).collect();
                if subnqn != SUBNQN.as_bytes() {
                    self.complete(cid, NvmeStatus::CONNECT_INVALID_PARAMETERS, 0, 0);
                    return Ok(());
                }
                self.qid = (sqe.cdw10() >> 16) as u16;
                self.complete(cid, NvmeStatus::SUCCESS, u32::from(CNTLID), 0);
            }
            0x04 => {
                let value: u64 = match sqe.cdw11() {
                    // CAP: MQES 63 (64 entries), TO 1 (500 ms), MPSMIN 0.
                    0x00 => 63 | (1 << 24),
                    0x14 => u64::from(self.cc),
                    0x1C => u64::from(self.csts),
                    _ => 0,
                };
                self.complete(cid, NvmeStatus::SUCCESS, value as u32, (value >> 32) as u32);
            }
            0x00 => {
                if sqe.cdw11() == 0x14 {
                    self.cc = sqe.cdw12();
                    self.csts = if self.cc & 1 != 0 { 1 } else { 0 };
                    if (self.cc >> 14) & 3 != 0 {
                        self.csts |= 0x2 << 2;
                    }
                }
                self.complete(cid, NvmeStatus::SUCCESS, 0, 0);
            }
            _ => self.complete(cid, NvmeStatus::INVALID_FIELD, 0, 0),
        }
        Ok(())
    }

    fn admin(&mut self, sqe: Sqe) -> Res<()> {
        let cid = sqe.cid();
        match sqe.opcode() {
            0x06 => {
                let mut d = vec![0u8; 4096];
                match sqe.cdw10() & 0xff {
                    0x01 => {
                        d[77] = self.config.mdts;
                        d[78..80].copy_from_slice(&CNTLID.to_le_bytes());
                        let ioccsz = (64 + self.config.in_capsule_bytes) / 16;
                        d[1792..1796].copy_from_slice(&(ioccsz as u32).to_le_bytes());
                        d[1796..1800].copy_from_slice(&1u32.to_le_bytes());
                    }
                    0x00 if sqe.nsid() == 1 => {
                        d[0..8].copy_from_slice(&self.config.num_blocks.to_le_bytes());
                        d[8..16].copy_from_slice(&self.config.num_blocks.to_le_bytes());
                        d[128 + 2] = self.config.block_size.trailing_zeros() as u8;
                        d[92..96].copy_from_slice(&1u32.to_le_bytes());
                        d[104..120].copy_from_slice(&[0xAB; 16]);
                    }
                    0x00 => {}
                    0x02 => {
                        if sqe.nsid() < 1 {
                            d[0..4].copy_from_slice(&1u32.to_le_bytes());
                        }
                    }
                    _ => {
                        self.complete(cid, NvmeStatus::INVALID_FIELD, 0, 0);
                        return Ok(());
                    }
                }
                self.ready.push(Response::Read { cid, data: d });
            }
            0x09 if sqe.cdw10() & 0xff == 0x07 => {
                let n = u32::from(self.config.io_queues_max - 1);
                self.complete(cid, NvmeStatus::SUCCESS, n | (n << 16), 0);
            }
            0x02 => {
                let numd = ((sqe.cdw10() >> 16) | (sqe.cdw11() << 16)) as usize + 1;
                let mut d = vec![0u8; numd * 4];
                d[0] = (sqe.cdw10() & 0xff) as u8;
                self.ready.push(Response::Read { cid, data: d });
            }
            0x18 => self.complete(cid, NvmeStatus::SUCCESS, 0, 0),
            _ => self.complete(cid, NvmeStatus::INVALID_OPCODE, 0, 0),
        }
        Ok(())
    }

    fn lba_range(&self, sqe: &Sqe) -> Option<std::ops::Range<usize>> {
        let end = sqe.slba().checked_add(u64::from(sqe.block_count()))?;
        if end > self.config.num_blocks {
            return None;
        }
        let bs = self.config.block_size;
        Some(sqe.slba() as usize * bs..end as usize * bs)
    }

    fn io(&mut self, sqe: Sqe, data: Option<Vec<u8>>) -> Res<()> {
        let cid = sqe.cid();
        match sqe.opcode() {
            0x02 => {
                let Some(range) = self.lba_range(&sqe) else {
                    self.complete(cid, NvmeStatus::LBA_OUT_OF_RANGE, 0, 0);
                    return Ok(());
                };
                if self.config.garbage_on_read && !self.misbehaved {
                    self.misbehaved = true;
                    return self.send_raw(&[0x5A; 100]);
                }
                if self.config.term_req_on_read && !self.misbehaved {
                    self.misbehaved = true;
                    return self.send(&PduHeader::C2HTermReq(TermReq { fes: 2, fei: 0 }), &[]);
                }
                let d = self.media.lock().expect("media")[range].to_vec();
                self.ready.push(Response::Read { cid, data: d });
            }
            0x01 => {
                let Some(range) = self.lba_range(&sqe) else {
                    self.complete(cid, NvmeStatus::LBA_OUT_OF_RANGE, 0, 0);
                    return Ok(());
                };
                let d = data.unwrap_or_default();
                if d.len() != range.len() {
                    self.complete(cid, NvmeStatus::DATA_SGL_LENGTH_INVALID, 0, 0);
                    return Ok(());
                }
                self.media.lock().expect("media")[range].copy_from_slice(&d);
                self.complete(cid, NvmeStatus::SUCCESS, 0, 0);
            }
            0x08 => {
                let Some(range) = self.lba_range(&sqe) else {
                    self.complete(cid, NvmeStatus::LBA_OUT_OF_RANGE, 0, 0);
                    return Ok(());
                };
                self.media.lock().expect("media")[range].fill(0);
                self.complete(cid, NvmeStatus::SUCCESS, 0, 0);
            }
            0x09 => {
                let d = data.unwrap_or_default();
                let bs = self.config.block_size;
                for r in d.chunks_exact(16) {
                    let nlb = u32::from_le_bytes([r[4], r[5], r[6], r[7]]) as usize;
                    let mut s = [0u8; 8];
                    s.copy_from_slice(&r[8..16]);
                    let slba = u64::from_le_bytes(s) as usize;
                    let mut m = self.media.lock().expect("media");
                    let end = ((slba + nlb) * bs).min(m.len());
                    m[(slba * bs).min(end)..end].fill(0);
                }
                self.complete(cid, NvmeStatus::SUCCESS, 0, 0);
            }
            0x00 => self.complete(cid, NvmeStatus::SUCCESS, 0, 0),
            _ => self.complete(cid, NvmeStatus::INVALID_OPCODE, 0, 0),
        }
        Ok(())
    }
}
