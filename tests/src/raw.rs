//! A raw NVMe/TCP host for conformance tests: it frames PDUs with the codec
//! of `tandem-nvmf` (so correct PDUs are correct by the same code the host
//! library uses) but lets a test send any bytes it likes — a wrong header
//! digest, an inconsistent PLEN, a command before ICReq — and read exactly
//! what the target answers, PDU by PDU, including a C2HTermReq and the close
//! that must follow it.
//!
//! Everything here is blocking with deadlines; a test that waits for
//! something that never comes fails with a message instead of hanging.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tandem_nvmf::spec::sqe::{SGL_ID_DATA_BLOCK_OFFSET, SGL_ID_TRANSPORT_DATA_BLOCK};
use tandem_nvmf::spec::{Cqe, NvmeStatus, SglDescriptor, Sqe};
use tandem_nvmf::tcp::{
    pdu_type, Framing, H2CData, IcReq, IcResp, PduHeader, PduReceiver, PduSender, ReceiveLimits, RecvEvent,
    Role,
};

/// How long any single expectation waits.
pub const WAIT: Duration = Duration::from_secs(10);
/// The host identifier and NQN the raw host presents.
pub const RAW_HOSTID: [u8; 16] = [0x52, 0x41, 0x57, 0, 0, 0, 0x40, 0, 0x80, 0, 0, 0, 0, 0, 0, 1];
pub const RAW_HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:52415700-0000-4000-8000-000000000001";

/// Opcodes and fabrics command types used by the tests (one definition:
/// `tandem_nvmf::spec::opcode`).
pub mod opc {
    pub use tandem_nvmf::spec::opcode::admin::{
        ASYNC_EVENT_REQUEST, FABRICS, GET_LOG_PAGE, IDENTIFY, KEEP_ALIVE, SET_FEATURES,
    };
    pub use tandem_nvmf::spec::opcode::nvm::{FLUSH, READ, WRITE};
    pub const FCTYPE_PROPERTY_SET: u8 = tandem_nvmf::spec::opcode::fctype::PROPERTY_SET;
    pub const FCTYPE_CONNECT: u8 = tandem_nvmf::spec::opcode::fctype::CONNECT;
}

/// One thing received from the target.
#[derive(Debug)]
pub enum Incoming {
    /// A PDU and its data (empty when it has none).
    Pdu { header: PduHeader, data: Vec<u8> },
    /// The target closed the connection (end of stream or reset).
    Closed,
    /// Nothing arrived before the deadline.
    Timeout,
    /// The target sent something our receiver rejects.
    Garbage(String),
}

/// A raw connection to a target.
pub struct RawConn {
    pub stream: TcpStream,
    rx: PduReceiver,
    pub framing: Framing,
    next_cid: u16,
}

/// The bytes of one PDU as a correct sender frames it.
pub fn pdu_bytes(framing: &Framing, header: &PduHeader, data: &[u8]) -> Vec<u8> {
    let mut tx = PduSender::new(*framing);
    tx.start(header, data).expect("encodable PDU");
    let mut out = Vec::new();
    let done = tx.flush(&mut out, data).expect("write into a Vec");
    assert!(done, "a Vec takes the whole PDU");
    out
}

/// The Connect command (NVMe-oF 1.1, Figures 19-20) and its 1024 bytes of data.
pub fn connect_command(subnqn: &str, qid: u16, entries: u16, kato_ms: u32, cntlid: u16) -> (Sqe, Vec<u8>) {
    connect_command_as(RAW_HOSTNQN, subnqn, qid, entries, kato_ms, cntlid)
}

/// As [`connect_command`], presenting `hostnqn` (which may be empty, as
/// SPDK's host sends by default).
pub fn connect_command_as(
    hostnqn: &str,
    subnqn: &str,
    qid: u16,
    entries: u16,
    kato_ms: u32,
    cntlid: u16,
) -> (Sqe, Vec<u8>) {
    let mut sqe = Sqe::default();
    sqe.set_opcode(opc::FABRICS);
    sqe.set_fctype(opc::FCTYPE_CONNECT);
    sqe.set_cdw10(u32::from(qid) << 16);
    sqe.set_cdw11(u32::from(entries - 1));
    if qid == 0 {
        sqe.set_cdw12(kato_ms);
    }
    let mut data = vec![0u8; 1024];
    data[0..16].copy_from_slice(&RAW_HOSTID);
    data[16..18].copy_from_slice(&cntlid.to_le_bytes());
    data[256..256 + subnqn.len()].copy_from_slice(subnqn.as_bytes());
    data[512..512 + hostnqn.len()].copy_from_slice(hostnqn.as_bytes());
    (sqe, data)
}

impl RawConn {
    /// A TCP connection with nothing sent yet.
    pub fn open(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect_timeout(&addr, WAIT).expect("connect to the target");
        stream.set_nodelay(true).expect("nodelay");
        RawConn {
            stream,
            rx: PduReceiver::new(ReceiveLimits::new(Role::Host, 8 << 20)),
            framing: Framing::default(),
            next_cid: 1,
        }
    }

    /// Opens and completes ICReq/ICResp asking for the given digests.
    pub fn open_ic(addr: SocketAddr, header_digest: bool, data_digest: bool) -> RawConn {
        let mut c = RawConn::open(addr);
        let resp = c.icreq(header_digest, data_digest);
        assert_eq!(resp.header_digest, header_digest, "target granted the header digest asked for");
        assert_eq!(resp.data_digest, data_digest, "target granted the data digest asked for");
        c
    }

    /// Sends ICReq, waits for ICResp and switches to the negotiated framing.
    pub fn icreq(&mut self, header_digest: bool, data_digest: bool) -> IcResp {
        let ic = IcReq { pfv: 0, hpda: 0, header_digest, data_digest, maxr2t: 0 };
        self.send(&PduHeader::IcReq(ic), &[]);
        let resp = match self.recv(WAIT) {
            Incoming::Pdu { header: PduHeader::IcResp(r), .. } => r,
            other => panic!("expected ICResp, got {other:?}"),
        };
        self.framing = Framing {
            header_digest: resp.header_digest,
            data_digest: resp.data_digest,
            data_alignment: (usize::from(resp.cpda) + 1) * 4,
        };
        let lim = ReceiveLimits {
            header_digest: resp.header_digest,
            data_digest: resp.data_digest,
            data_alignment: 4,
            ic_done: true,
            ..ReceiveLimits::new(Role::Host, 8 << 20)
        };
        self.rx.set_limits(lim).expect("between PDUs");
        resp
    }

    /// Sends one correctly framed PDU.
    pub fn send(&mut self, header: &PduHeader, data: &[u8]) {
        let bytes = pdu_bytes(&self.framing, header, data);
        self.send_raw(&bytes);
    }

    /// Sends arbitrary bytes. A target that already closed may reset the
    /// connection; that is not an error here (the test reads the outcome).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.set_write_timeout(Some(WAIT));
        let _ = self.stream.write_all(bytes);
    }

    /// A fresh command identifier.
    pub fn cid(&mut self) -> u16 {
        self.next_cid = self.next_cid.wrapping_add(1).max(1);
        self.next_cid
    }

    /// Receives one PDU with its data, or reports a close or a timeout.
    pub fn recv(&mut self, timeout: Duration) -> Incoming {
        let deadline = Instant::now() + timeout;
        let mut header_seen: Option<(PduHeader, Vec<u8>)> = None;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Incoming::Timeout;
            }
            let wait = (deadline - now).min(Duration::from_millis(200));
            self.stream.set_read_timeout(Some(wait)).expect("read timeout");
            if let Some((_, data)) = header_seen.as_mut() {
                if self.rx.data_remaining() > 0 {
                    let start = data.len() - self.rx.data_remaining();
                    match self.rx.read_data(&mut self.stream, &mut data[start..]) {
                        Ok(_) => continue,
                        Err(e) => return closed_or_garbage(e.to_string()),
                    }
                }
            }
            match self.rx.poll(&mut self.stream) {
                Ok(None) => continue,
                Ok(Some(RecvEvent::Header { header, data_len })) => {
                    if data_len == 0 {
                        return Incoming::Pdu { header, data: Vec::new() };
                    }
                    header_seen = Some((header, vec![0u8; data_len]));
                }
                Ok(Some(RecvEvent::DataDone)) => {
                    let Some((header, data)) = header_seen.take() else {
                        return Incoming::Garbage("data without a header".into());
                    };
                    return Incoming::Pdu { header, data };
                }
                Err(e) => return closed_or_garbage(e.to_string()),
            }
        }
    }

    /// Expects a C2HTermReq with `fes` and then the end of the connection;
    /// returns the TermReq's FEI. The PDU is read byte by byte from the
    /// socket (not through the codec) so its reserved fields are checked as
    /// sent (NVMe/TCP 1.0, Figure 28): FLAGS 0, HLEN 24, PDO 0, PLEN 24..=152
    /// (the header of the PDU in error follows as data), and FEI 0 where the
    /// FES defines none (only 01h, 03h and 06h do).
    pub fn expect_term_req(&mut self, fes: u16) -> u32 {
        let mut ch = [0u8; 8];
        if let Err(e) = self.read_exact_raw(&mut ch) {
            panic!("expected C2HTermReq with FES {fes:#x}, got no PDU: {e}");
        }
        assert_eq!(ch[0], pdu_type::C2H_TERM_REQ, "expected C2HTermReq (FES {fes:#x}), got PDU {ch:02x?}");
        assert_eq!(ch[1], 0, "C2HTermReq FLAGS: no digests");
        assert_eq!(ch[2], 24, "C2HTermReq HLEN");
        assert_eq!(ch[3], 0, "C2HTermReq PDO is reserved (0)");
        let plen = u32::from_le_bytes([ch[4], ch[5], ch[6], ch[7]]) as usize;
        assert!((24..=152).contains(&plen), "C2HTermReq PLEN {plen}");
        let mut rest = vec![0u8; plen - 8];
        if let Err(e) = self.read_exact_raw(&mut rest) {
            panic!("C2HTermReq cut short after its common header: {e}");
        }
        let got_fes = u16::from_le_bytes([rest[0], rest[1]]);
        let fei = u32::from_le_bytes([rest[2], rest[3], rest[4], rest[5]]);
        assert_eq!(got_fes, fes, "C2HTermReq FES (FEI {fei:#x})");
        if !tandem_nvmf::tcp::fes::has_fei(fes) {
            assert_eq!(fei, 0, "FEI is reserved for FES {fes:#x}");
        }
        assert!(rest[6..16].iter().all(|&b| b == 0), "C2HTermReq reserved bytes 23:14");
        self.expect_closed();
        fei
    }

    /// Reads exactly `buf.len()` bytes from the socket within `WAIT`.
    fn read_exact_raw(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        self.stream.set_read_timeout(Some(WAIT))?;
        self.stream.read_exact(buf)
    }

    /// Expects the target to close the connection with nothing else sent.
    pub fn expect_closed(&mut self) {
        match self.recv(WAIT) {
            Incoming::Closed => {}
            other => panic!("expected the target to close the connection, got {other:?}"),
        }
    }

    /// Sends a capsule (data in capsule when `in_capsule`, else after R2T),
    /// follows R2Ts and C2HData, and returns the completion and read data.
    /// `data_in_len` is the SGL length for data coming back.
    pub fn command(
        &mut self,
        mut sqe: Sqe,
        data_out: &[u8],
        data_in_len: usize,
        in_capsule: bool,
    ) -> (Cqe, Vec<u8>) {
        let cid = self.cid();
        sqe.set_cid(cid);
        sqe.set_psdt(1);
        let len = data_out.len().max(data_in_len) as u32;
        let id = if in_capsule && !data_out.is_empty() {
            SGL_ID_DATA_BLOCK_OFFSET
        } else {
            SGL_ID_TRANSPORT_DATA_BLOCK
        };
        sqe.set_sgl(SglDescriptor::new(0, len, id));
        let capsule_data = if in_capsule { data_out } else { &[][..] };
        self.send(&PduHeader::CapsuleCmd { sqe }, capsule_data);
        self.finish(cid, data_out)
    }

    /// Sends `sqe` exactly as given (CID, PSDT and SGL untouched) and
    /// returns its completion.
    pub fn command_as_is(&mut self, sqe: Sqe, capsule_data: &[u8]) -> (Cqe, Vec<u8>) {
        self.send(&PduHeader::CapsuleCmd { sqe }, capsule_data);
        self.finish(sqe.cid(), &[])
    }

    /// Waits for the completion of `cid`, answering R2Ts from `data_out`.
    pub fn finish(&mut self, cid: u16, data_out: &[u8]) -> (Cqe, Vec<u8>) {
        let mut data_in = Vec::new();
        loop {
            match self.recv(WAIT) {
                Incoming::Pdu { header: PduHeader::CapsuleResp { cqe }, .. } => {
                    assert_eq!(cqe.cid(), cid, "completion for the command sent");
                    return (cqe, data_in);
                }
                Incoming::Pdu { header: PduHeader::C2HData(d), data } => {
                    assert_eq!(d.cccid, cid, "C2HData for the command sent");
                    assert_eq!(d.datao as usize, data_in.len(), "C2HData in order");
                    data_in.extend_from_slice(&data);
                    if d.success {
                        return (Cqe::new(cid, NvmeStatus::SUCCESS, 0), data_in);
                    }
                }
                Incoming::Pdu { header: PduHeader::R2T(r), .. } => {
                    let start = r.r2to as usize;
                    let end = start + r.r2tl as usize;
                    assert!(end <= data_out.len(), "R2T within the command's data");
                    let h = H2CData { cccid: cid, ttag: r.ttag, datao: r.r2to, datal: r.r2tl, last: true };
                    self.send(&PduHeader::H2CData(h), &data_out[start..end]);
                }
                other => panic!("waiting for the completion of cid {cid}: got {other:?}"),
            }
        }
    }

    /// Connect on this connection (queue `qid`); returns the completion.
    pub fn connect(&mut self, subnqn: &str, qid: u16, kato_ms: u32, cntlid: u16) -> Cqe {
        let (sqe, data) = connect_command(subnqn, qid, 32, kato_ms, cntlid);
        self.command(sqe, &data, 0, true).0
    }

    /// Connect presenting `hostnqn`; returns the completion.
    pub fn connect_as(&mut self, hostnqn: &str, subnqn: &str, qid: u16, cntlid: u16) -> Cqe {
        let (sqe, data) = connect_command_as(hostnqn, subnqn, qid, 32, 0, cntlid);
        self.command(sqe, &data, 0, true).0
    }

    /// Property Set CC = EN with 64-byte SQEs and 16-byte CQEs.
    pub fn enable(&mut self) {
        let mut sqe = Sqe::default();
        sqe.set_opcode(opc::FABRICS);
        sqe.set_fctype(opc::FCTYPE_PROPERTY_SET);
        sqe.set_cdw11(0x14);
        sqe.set_cdw12((6 << 16) | (4 << 20) | 1);
        let (cqe, _) = self.command(sqe, &[], 0, true);
        assert!(cqe.status().is_success(), "Property Set CC.EN: {}", cqe.status());
    }

    /// An admin command with `data_in_len` bytes coming back.
    pub fn admin(&mut self, sqe: Sqe, data_in_len: usize) -> (Cqe, Vec<u8>) {
        self.command(sqe, &[], data_in_len, true)
    }

    /// Get Log Page `lid` of `len` bytes (a multiple of 4).
    pub fn get_log_page(&mut self, lid: u8, len: usize) -> (Cqe, Vec<u8>) {
        let numd = (len / 4 - 1) as u32;
        let mut sqe = Sqe::default();
        sqe.set_opcode(opc::GET_LOG_PAGE);
        sqe.set_nsid(0xFFFF_FFFF);
        sqe.set_cdw10(u32::from(lid) | ((numd & 0xffff) << 16));
        sqe.set_cdw11(numd >> 16);
        self.admin(sqe, len)
    }

    /// Closes both directions.
    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Whether the peer closed: a read that returns end of stream (or a
    /// reset) within `timeout`; data that arrives instead is a failure.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut one = [0u8; 1];
        loop {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            self.stream
                .set_read_timeout(Some((deadline - now).min(Duration::from_millis(200))))
                .expect("timeout");
            match self.stream.read(&mut one) {
                Ok(0) => return true,
                Ok(_) => panic!("unexpected data from the target while waiting for a close"),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return true,
            }
        }
    }
}

fn closed_or_garbage(reason: String) -> Incoming {
    if reason.contains("closed by peer") || reason.contains("reset") || reason.contains("Broken pipe") {
        Incoming::Closed
    } else {
        Incoming::Garbage(reason)
    }
}

/// An admin queue connected to `subnqn` and enabled (CC.EN, CSTS.RDY).
/// Returns the connection and its CNTLID.
pub fn admin_queue(addr: SocketAddr, subnqn: &str, digests: (bool, bool), kato_ms: u32) -> (RawConn, u16) {
    let mut c = RawConn::open_ic(addr, digests.0, digests.1);
    let cqe = c.connect(subnqn, 0, kato_ms, 0xFFFF);
    assert!(cqe.status().is_success(), "admin Connect: {}", cqe.status());
    let cntlid = (cqe.dw0() & 0xffff) as u16;
    c.enable();
    (c, cntlid)
}

/// I/O queue `qid` of controller `cntlid`.
pub fn io_queue(addr: SocketAddr, subnqn: &str, cntlid: u16, qid: u16, digests: (bool, bool)) -> RawConn {
    let mut c = RawConn::open_ic(addr, digests.0, digests.1);
    let cqe = c.connect(subnqn, qid, 0, cntlid);
    assert!(cqe.status().is_success(), "I/O queue Connect: {}", cqe.status());
    c
}

/// A Read or Write SQE (NLB 0's-based in CDW12 bits 15:0).
pub fn rw_sqe(opcode: u8, nsid: u32, slba: u64, nlb0: u16) -> Sqe {
    let mut sqe = Sqe::default();
    sqe.set_opcode(opcode);
    sqe.set_nsid(nsid);
    sqe.set_slba(slba);
    sqe.set_cdw12(u32::from(nlb0));
    sqe
}

/// Asserts a completion's status by (SCT, SC), naming what was expected.
pub fn assert_status(cqe: &Cqe, want: NvmeStatus, what: &str) {
    let got = cqe.status();
    assert_eq!((got.sct, got.sc), (want.sct, want.sc), "{what}: got {got}, expected {want}");
}
