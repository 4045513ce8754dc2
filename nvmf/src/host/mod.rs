//! The NVMe/TCP host (initiator) library, used by tests, `tandem perf` and
//! the crash checker.
//!
//! [`HostController::connect`] brings up an association the way the Linux
//! host does (drivers/nvme/host/tcp.c, fabrics.c, core.c): ICReq/ICResp and
//! Connect on the admin queue, Property Get CAP, Property Set CC.EN = 1, wait
//! for CSTS.RDY, Identify Controller, Set Features Number of Queues, then one
//! TCP connection per I/O queue with its own ICReq and Connect. I/O queues
//! are handed out with [`HostController::take_io_queues`]; each is
//! independent (its own socket), `Send`, and driven by `submit` + `poll` or
//! by the synchronous conveniences. Keep-alive is the caller's business
//! (`keep_alive()` on the admin queue); I/O queue traffic never depends on it.
//!
//! Fabrics structures the host needs are built here from the spec's offsets,
//! each named with its figure, so that this module does not wait for the
//! fuller definitions in `crate::spec`.

mod conn;
mod queue;

#[cfg(test)]
mod fake_target;
#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

pub use queue::{
    IoCommand, IoCompletion, IoQueue, DEALLOCATE_RANGES_MAX, SLOT_BUF_PREALLOC_BYTES,
    TRANSIENT_TRANSPORT_ERROR,
};

use crate::spec::{Cqe, NvmeStatus, Sqe};
use crate::tcp::TcpError;
use conn::Connection;

/// Everything that can go wrong on the host side.
#[derive(thiserror::Error, Debug)]
pub enum HostError {
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    #[error("NVMe/TCP error: {0}")]
    Tcp(#[from] TcpError),
    /// The target completed the command with an error status.
    #[error("command {cid} failed: {status}")]
    Status { status: NvmeStatus, cid: u16 },
    /// The target broke the protocol (the host sent an H2CTermReq and closed).
    #[error("protocol violation by the target: {reason}")]
    Protocol { reason: &'static str },
    /// The target terminated the connection with a C2HTermReq.
    #[error("target terminated the connection: FES {fes:#x}, FEI {fei:#x}")]
    TermReq { fes: u16, fei: u32 },
    #[error("timed out waiting for {what} after {waited_ms} ms")]
    Timeout { what: &'static str, waited_ms: u64 },
    /// `queue_depth` commands are already in flight.
    #[error("queue full")]
    QueueFull,
    #[error("transfer of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("invalid argument: {reason}")]
    InvalidArgument { reason: &'static str },
    /// No block size is known for this namespace on this queue.
    #[error("namespace {nsid} is not active or unknown to this queue")]
    UnknownNamespace { nsid: u32 },
    /// A synchronous call on a queue with asynchronous commands in flight.
    #[error("{in_flight} commands in flight; synchronous calls need an idle queue")]
    Busy { in_flight: usize },
    /// The queue's connection failed earlier (or a command timed out); it
    /// must be replaced.
    #[error("queue unusable after an earlier error")]
    Dead,
}

/// How to connect.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// "127.0.0.1:4420"
    pub addr: String,
    pub subnqn: String,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    pub header_digest: bool,
    pub data_digest: bool,
    /// I/O queues requested (the controller may grant fewer).
    pub io_queues: u16,
    /// Entries per I/O queue (clamped to CAP.MQES + 1).
    pub queue_depth: u16,
    /// Keep Alive Timeout sent in Connect; 0 disables keep-alive.
    pub kato_ms: u32,
    /// Bound on every synchronous wait (connect, admin commands, sync I/O).
    pub timeout: Duration,
}

/// The host identifier used by [`ConnectOptions::new`]: fixed, so that
/// test runs are reproducible and a target's host allow-list can name it.
pub const DEFAULT_HOSTID: [u8; 16] =
    [0x7a, 0x6e, 0x64, 0x6d, 0x00, 0x00, 0x40, 0x00, 0x80, 0x00, 0x74, 0x61, 0x6e, 0x64, 0x65, 0x6d];

impl ConnectOptions {
    /// Defaults: no digests, one I/O queue of 32 entries, keep-alive off,
    /// 10 s timeout, and a stable host NQN in the UUID form derived from
    /// [`DEFAULT_HOSTID`].
    pub fn new(addr: &str, subnqn: &str) -> Self {
        ConnectOptions {
            addr: addr.to_string(),
            subnqn: subnqn.to_string(),
            hostnqn: uuid_nqn(&DEFAULT_HOSTID),
            hostid: DEFAULT_HOSTID,
            header_digest: false,
            data_digest: false,
            io_queues: 1,
            queue_depth: 32,
            kato_ms: 0,
            timeout: Duration::from_secs(10),
        }
    }
}

/// "nqn.2014-08.org.nvmexpress:uuid:xxxxxxxx-xxxx-..." (NVMe Base 2.0, 4.5).
fn uuid_nqn(id: &[u8; 16]) -> String {
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "nqn.2014-08.org.nvmexpress:uuid:{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// What Identify Namespace says about one namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub nsid: u32,
    /// Logical block size in bytes (2^LBADS of the format in use).
    pub block_size: u32,
    /// Namespace size (NSZE) in blocks.
    pub num_blocks: u64,
    pub anagrpid: u32,
    pub nguid: [u8; 16],
}

/// Admin opcodes and Fabrics command types (one definition: `spec::opcode`).
use crate::spec::opcode::{admin as admin_opcode, fctype};

/// Controller property offsets (NVMe Base 2.0, Figure 33).
mod property {
    pub const CAP: u32 = 0x00;
    pub const CC: u32 = 0x14;
    pub const CSTS: u32 = 0x1C;
}

/// Admin queue size requested in Connect (SQSIZE is 0's-based).
const ADMIN_QUEUE_ENTRIES: u16 = 32;
/// Commands the host keeps in flight on the admin queue (it uses one at a time).
const ADMIN_SLOTS: usize = 4;
/// In-capsule data the host sends on the admin queue: NVMe/TCP targets
/// accept 8 KiB there (Linux NVME_TCP_ADMIN_CCSZ).
const ADMIN_IN_CAPSULE_BYTES: usize = 8192;
/// Largest admin transfer (log pages, identify).
const ADMIN_TRANSFER_MAX: usize = 1 << 20;
/// Transfer limit when MDTS says "no limit".
const IO_TRANSFER_MAX_DEFAULT: usize = 1 << 20;
/// Interval between CSTS polls while enabling or shutting down.
const CSTS_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// The Connect command and its data (NVMe-oF 1.1, Figures 19-20): SQE bytes
/// 41:40 RECFMT, 43:42 QID, 45:44 SQSIZE (0's-based), 46 CATTR, 51:48 KATO;
/// data bytes 15:0 HOSTID, 17:16 CNTLID, 511:256 SUBNQN, 767:512 HOSTNQN.
fn connect_command(opts: &ConnectOptions, qid: u16, entries: u16, cntlid: u16) -> (Sqe, [u8; 1024]) {
    let mut sqe = Sqe::default();
    sqe.set_opcode(admin_opcode::FABRICS);
    sqe.set_fctype(fctype::CONNECT);
    sqe.set_cdw10(u32::from(qid) << 16);
    sqe.set_cdw11(u32::from(entries - 1));
    // KATO is meaningful on the admin queue only (reserved for I/O queues).
    if qid == 0 {
        sqe.set_cdw12(opts.kato_ms);
    }
    let mut data = [0u8; 1024];
    data[0..16].copy_from_slice(&opts.hostid);
    data[16..18].copy_from_slice(&cntlid.to_le_bytes());
    let sub = opts.subnqn.as_bytes();
    let host = opts.hostnqn.as_bytes();
    data[256..256 + sub.len().min(255)].copy_from_slice(&sub[..sub.len().min(255)]);
    data[512..512 + host.len().min(255)].copy_from_slice(&host[..host.len().min(255)]);
    (sqe, data)
}

/// Property Get / Set (NVMe-oF 1.1, Figures 23-26): byte 40 ATTRIB (bits 2:0
/// size: 0 = 4 bytes, 1 = 8 bytes), bytes 47:44 OFST, bytes 55:48 VALUE.
fn property_command(set: bool, offset: u32, eight_bytes: bool, value: u64) -> Sqe {
    let mut sqe = Sqe::default();
    sqe.set_opcode(admin_opcode::FABRICS);
    sqe.set_fctype(if set { fctype::PROPERTY_SET } else { fctype::PROPERTY_GET });
    sqe.set_cdw10(u32::from(eight_bytes));
    sqe.set_cdw11(offset);
    if set {
        sqe.set_cdw12(value as u32);
        sqe.set_cdw13((value >> 32) as u32);
    }
    sqe
}

fn identify_command(cns: u8, nsid: u32) -> Sqe {
    let mut sqe = Sqe::default();
    sqe.set_opcode(admin_opcode::IDENTIFY);
    sqe.set_nsid(nsid);
    sqe.set_cdw10(u32::from(cns));
    sqe
}

/// Connects a queue whose ICReq/ICResp is done; returns the CNTLID.
fn connect_queue(
    q: &mut IoQueue,
    opts: &ConnectOptions,
    entries: u16,
    cntlid: u16,
) -> Result<u16, HostError> {
    let (sqe, data) = connect_command(opts, q.qid(), entries, cntlid);
    let cqe = q.execute(sqe, &data, 0, &mut |_| {})?;
    Ok((cqe.dw0() & 0xffff) as u16)
}

fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// An association with one controller: the admin queue and the I/O queues
/// not yet taken.
pub struct HostController {
    opts: ConnectOptions,
    admin: IoQueue,
    cntlid: u16,
    cap: u64,
    transfer_max: usize,
    io_queues: Vec<IoQueue>,
}

impl HostController {
    /// Brings up the association; see the module comment for the steps.
    pub fn connect(opts: &ConnectOptions) -> Result<HostController, HostError> {
        if opts.io_queues == 0 || opts.queue_depth < 2 {
            return Err(HostError::InvalidArgument { reason: "need at least one I/O queue of two entries" });
        }
        let conn = Connection::open(&opts.addr, opts.header_digest, opts.data_digest, opts.timeout)?;
        let mut admin =
            IoQueue::new(0, conn, ADMIN_SLOTS, ADMIN_IN_CAPSULE_BYTES, ADMIN_TRANSFER_MAX, opts.timeout);
        let cntlid = connect_queue(&mut admin, opts, ADMIN_QUEUE_ENTRIES, 0xFFFF)?;
        let mut ctrl = HostController {
            opts: opts.clone(),
            admin,
            cntlid,
            cap: 0,
            transfer_max: IO_TRANSFER_MAX_DEFAULT,
            io_queues: Vec::new(),
        };
        ctrl.cap = ctrl.property_get(property::CAP, true)?;
        // CC: EN (bit 0), IOSQES = 6 (bits 19:16, 64-byte SQEs), IOCQES = 4
        // (bits 23:20, 16-byte CQEs); CSS = 0 (NVM command set).
        ctrl.property_set(property::CC, (6 << 16) | (4 << 20) | 1)?;
        ctrl.wait_csts(|csts| csts & 1 != 0, "CSTS.RDY")?;

        let id = ctrl.identify_controller()?;
        // MDTS (byte 77) is a power of two in units of the minimum page size
        // CAP.MPSMIN (bits 51:48, 2^(12 + MPSMIN) bytes); 0 means no limit.
        let mdts = id[77];
        let page = 1usize << (12 + ((ctrl.cap >> 48) & 0xf));
        ctrl.transfer_max = if mdts == 0 {
            IO_TRANSFER_MAX_DEFAULT
        } else {
            page.checked_shl(u32::from(mdts)).unwrap_or(usize::MAX).min(IO_TRANSFER_MAX_DEFAULT)
        };
        // IOCCSZ (bytes 1795:1792) counts 16-byte units of the whole capsule,
        // the 64-byte SQE included (NVMe Base 2.0, Figure 275).
        let ioccsz = le32(&id, 1792) as usize;
        let in_capsule_max = (ioccsz * 16).saturating_sub(64);

        // Set Features, Number of Queues (FID 07h): NSQR 15:0 and NCQR 31:16,
        // both 0's-based; the result holds the granted counts the same way.
        let mut sqe = Sqe::default();
        sqe.set_opcode(admin_opcode::SET_FEATURES);
        sqe.set_cdw10(0x07);
        let want = u32::from(opts.io_queues - 1);
        sqe.set_cdw11(want | (want << 16));
        let cqe = ctrl.admin.execute(sqe, &[], 0, &mut |_| {})?;
        let granted = ((cqe.dw0() & 0xffff).min(cqe.dw0() >> 16) + 1).min(u32::from(opts.io_queues)) as u16;

        let mqes = (ctrl.cap & 0xffff) as u16;
        let entries = opts.queue_depth.min(mqes.saturating_add(1)).max(2);
        let namespaces = ctrl.block_sizes()?;
        for qid in 1..=granted {
            let conn = Connection::open(&opts.addr, opts.header_digest, opts.data_digest, opts.timeout)?;
            let mut q = IoQueue::new(
                qid,
                conn,
                usize::from(entries),
                in_capsule_max,
                ctrl.transfer_max,
                opts.timeout,
            );
            connect_queue(&mut q, opts, entries, cntlid)?;
            for &(nsid, bs) in &namespaces {
                q.set_block_size(nsid, bs);
            }
            ctrl.io_queues.push(q);
        }
        Ok(ctrl)
    }

    /// Block sizes of the active namespaces, for the I/O queues. A target
    /// that refuses the active namespace list leaves the table empty (the
    /// caller can fill it with `IoQueue::set_block_size`) rather than failing
    /// the whole association.
    fn block_sizes(&mut self) -> Result<Vec<(u32, usize)>, HostError> {
        let mut out = Vec::new();
        let active = match self.active_namespaces() {
            Ok(list) => list,
            Err(HostError::Status { .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        for nsid in active {
            let ns = self.namespace(nsid)?;
            out.push((nsid, ns.block_size as usize));
        }
        Ok(out)
    }

    fn property_get(&mut self, offset: u32, eight_bytes: bool) -> Result<u64, HostError> {
        let cqe = self.admin.execute(property_command(false, offset, eight_bytes, 0), &[], 0, &mut |_| {})?;
        Ok(u64::from(cqe.dw0()) | if eight_bytes { u64::from(cqe.dw1()) << 32 } else { 0 })
    }

    fn property_set(&mut self, offset: u32, value: u32) -> Result<(), HostError> {
        self.admin
            .execute(property_command(true, offset, false, u64::from(value)), &[], 0, &mut |_| {})
            .map(|_| ())
    }

    fn wait_csts(&mut self, done: impl Fn(u32) -> bool, what: &'static str) -> Result<(), HostError> {
        let start = Instant::now();
        loop {
            let csts = self.property_get(property::CSTS, false)? as u32;
            if csts & 2 != 0 {
                return Err(HostError::Protocol { reason: "controller fatal status (CSTS.CFS)" });
            }
            if done(csts) {
                return Ok(());
            }
            if start.elapsed() >= self.opts.timeout {
                return Err(HostError::Timeout { what, waited_ms: self.opts.timeout.as_millis() as u64 });
            }
            std::thread::sleep(CSTS_POLL_INTERVAL);
        }
    }

    pub fn cntlid(&self) -> u16 {
        self.cntlid
    }

    /// CAP as read at connect time.
    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// Identify Controller (CNS 01h): the 4096-byte data structure.
    pub fn identify_controller(&mut self) -> Result<Vec<u8>, HostError> {
        self.admin_command(identify_command(0x01, 0), &[], 4096).map(|(_, d)| d)
    }

    /// Identify Namespace (CNS 00h, NVM Command Set 1.0, Figure 97): NSZE
    /// bytes 7:0, FLBAS byte 26 (format index bits 3:0), ANAGRPID bytes
    /// 95:92, NGUID bytes 119:104, LBA formats from byte 128, 4 bytes each
    /// with LBADS in bits 23:16.
    pub fn namespace(&mut self, nsid: u32) -> Result<NamespaceInfo, HostError> {
        let (_, d) = self.admin_command(identify_command(0x00, nsid), &[], 4096)?;
        let mut nsze = [0u8; 8];
        nsze.copy_from_slice(&d[0..8]);
        let num_blocks = u64::from_le_bytes(nsze);
        if num_blocks == 0 {
            return Err(HostError::UnknownNamespace { nsid });
        }
        let format = usize::from(d[26] & 0xf);
        let lbads = d[128 + format * 4 + 2];
        if !(9..=16).contains(&lbads) {
            return Err(HostError::Protocol { reason: "LBADS outside 512 B..64 KiB" });
        }
        let mut nguid = [0u8; 16];
        nguid.copy_from_slice(&d[104..120]);
        Ok(NamespaceInfo { nsid, block_size: 1 << lbads, num_blocks, anagrpid: le32(&d, 92), nguid })
    }

    /// Identify Active Namespace ID list (CNS 02h), following pages of 1024.
    pub fn active_namespaces(&mut self) -> Result<Vec<u32>, HostError> {
        let mut out = Vec::new();
        let mut after = 0u32;
        loop {
            let (_, d) = self.admin_command(identify_command(0x02, after), &[], 4096)?;
            let page: Vec<u32> = (0..1024).map(|i| le32(&d, i * 4)).take_while(|&n| n != 0).collect();
            let full = page.len() == 1024;
            let Some(&last) = page.last() else { break };
            if last <= after {
                return Err(HostError::Protocol { reason: "active namespace list not increasing" });
            }
            out.extend(page);
            after = last;
            if !full {
                break;
            }
        }
        Ok(out)
    }

    /// Get Log Page (NVMe Base 2.0, Figure 197): CDW10 LID 7:0 and NUMDL
    /// 31:16, CDW11 NUMDU 15:0 (dword count, 0's-based). `len` is a multiple
    /// of 4.
    pub fn get_log_page(&mut self, lid: u8, nsid: u32, len: usize) -> Result<Vec<u8>, HostError> {
        if len == 0 || !len.is_multiple_of(4) {
            return Err(HostError::InvalidArgument {
                reason: "log page length must be a non-zero multiple of 4",
            });
        }
        let numd = (len / 4 - 1) as u32;
        let mut sqe = Sqe::default();
        sqe.set_opcode(admin_opcode::GET_LOG_PAGE);
        sqe.set_nsid(nsid);
        sqe.set_cdw10(u32::from(lid) | ((numd & 0xffff) << 16));
        sqe.set_cdw11(numd >> 16);
        self.admin_command(sqe, &[], len).map(|(_, d)| d)
    }

    /// Any admin command. An error status is `Err(HostError::Status)`.
    pub fn admin_command(
        &mut self,
        sqe: Sqe,
        data_out: &[u8],
        data_in_len: usize,
    ) -> Result<(Cqe, Vec<u8>), HostError> {
        let mut data = Vec::new();
        let cqe = self.admin.execute(sqe, data_out, data_in_len, &mut |c| data.extend_from_slice(c.data))?;
        Ok((cqe, data))
    }

    pub fn keep_alive(&mut self) -> Result<(), HostError> {
        let mut sqe = Sqe::default();
        sqe.set_opcode(admin_opcode::KEEP_ALIVE);
        self.admin.execute(sqe, &[], 0, &mut |_| {}).map(|_| ())
    }

    /// The I/O queues not yet taken (all of them, the first time).
    pub fn take_io_queues(&mut self) -> Vec<IoQueue> {
        std::mem::take(&mut self.io_queues)
    }

    /// The largest transfer of one command, from MDTS (capped at 1 MiB).
    pub fn max_transfer_bytes(&self) -> usize {
        self.transfer_max
    }

    /// Normal shutdown: CC.SHN = 01b, wait for CSTS.SHST = 10b, close. I/O
    /// queues already taken keep their sockets until dropped.
    pub fn disconnect(mut self) -> Result<(), HostError> {
        for q in self.take_io_queues() {
            q.close();
        }
        self.property_set(property::CC, (6 << 16) | (4 << 20) | (1 << 14) | 1)?;
        self.wait_csts(|csts| (csts >> 2) & 0x3 == 0x2, "CSTS.SHST")?;
        self.admin.close();
        Ok(())
    }
}
