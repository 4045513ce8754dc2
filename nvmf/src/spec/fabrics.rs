//! NVMe over Fabrics commands (NVMe-oF 1.1, 3.3): Connect (Figures 19-21),
//! the 1024-byte Connect data (Figure 20), the Connect response (Figure 21 /
//! 22, including the invalid-parameter report), Property Get and Set
//! (Figures 24-27), and the controller properties they reach (NVMe Base 2.0,
//! 3.1.3, Figures 36-43: CAP, VS, CC, CSTS, NSSR).
//!
//! The Connect command and the property commands are parsed from an `Sqe`
//! by value: nothing here can fail on bytes from a host except the Connect
//! data, whose strings are checked for UTF-8 and NUL termination.

use super::sqe::Sqe;
use super::wire::{get_padded, le_field, put_padded};

/// The dynamic controller model's CNTLID in a Connect for an admin queue.
pub const CNTLID_DYNAMIC: u16 = 0xFFFF;
/// The static model's "any controller" CNTLID.
pub const CNTLID_ANY_STATIC: u16 = 0xFFFE;
/// The well-known discovery subsystem NQN.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
/// Longest NQN in bytes, without the NUL terminator (NVMe Base 2.0, 4.5).
pub const NQN_BYTES_MAX: usize = 223;

/// The Connect command's fields (SQE bytes 40..52): RECFMT (41:40), QID
/// (43:42), SQSIZE (45:44, 0's-based), CATTR (46), KATO (51:48, ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectCommand {
    pub recfmt: u16,
    pub qid: u16,
    /// Submission queue size, 0's-based as on the wire.
    pub sqsize0: u16,
    pub cattr: u8,
    pub kato_ms: u32,
}

/// SQE byte offsets of the Connect fields, reported in the Invalid
/// Parameter Offset of a failed Connect.
pub mod connect_sqe_offset {
    pub const RECFMT: u16 = 40;
    pub const QID: u16 = 42;
    pub const SQSIZE: u16 = 44;
    pub const CATTR: u16 = 46;
    pub const KATO: u16 = 48;
}

impl ConnectCommand {
    pub fn parse(sqe: &Sqe) -> Self {
        ConnectCommand {
            recfmt: sqe.cdw10() as u16,
            qid: (sqe.cdw10() >> 16) as u16,
            sqsize0: sqe.cdw11() as u16,
            cattr: (sqe.cdw11() >> 16) as u8,
            kato_ms: sqe.cdw12(),
        }
    }

    /// Writes these fields into `sqe` (the opcode, FCTYPE and SGL are the
    /// caller's).
    pub fn write(&self, sqe: &mut Sqe) {
        sqe.set_cdw10(u32::from(self.recfmt) | (u32::from(self.qid) << 16));
        sqe.set_cdw11(u32::from(self.sqsize0) | (u32::from(self.cattr) << 16));
        sqe.set_cdw12(self.kato_ms);
    }

    /// The number of entries of the submission queue (SQSIZE + 1).
    pub fn sq_entries(&self) -> u32 {
        u32::from(self.sqsize0) + 1
    }
}

/// Size of the Connect command's data.
pub const CONNECT_DATA_BYTES: usize = 1024;

/// Byte offsets of Connect data fields, for the Invalid Parameter Offset.
pub mod connect_data_offset {
    pub const HOSTID: u16 = 0;
    pub const CNTLID: u16 = 16;
    pub const SUBNQN: u16 = 256;
    pub const HOSTNQN: u16 = 512;
}

/// The Connect command data (NVMe-oF 1.1, Figure 20): HOSTID (15:0), CNTLID
/// (17:16), SUBNQN (511:256), HOSTNQN (767:512).
#[derive(Clone, PartialEq, Eq)]
#[repr(transparent)]
pub struct ConnectData(pub [u8; CONNECT_DATA_BYTES]);

const _: () = assert!(core::mem::size_of::<ConnectData>() == 1024);

impl Default for ConnectData {
    fn default() -> Self {
        ConnectData([0; CONNECT_DATA_BYTES])
    }
}

impl core::fmt::Debug for ConnectData {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ConnectData")
            .field("cntlid", &self.cntlid())
            .field("subnqn", &self.subnqn())
            .field("hostnqn", &self.hostnqn())
            .finish()
    }
}

/// A Connect data buffer that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnectDataError {
    #[error("connect data is {len_bytes} bytes, expected 1024")]
    Length { len_bytes: usize },
    #[error("connect data field at byte {offset} is not a NUL-terminated UTF-8 NQN")]
    BadNqn { offset: u16 },
}

impl ConnectData {
    /// Copies the 1024 bytes from a capsule; any other length is an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ConnectDataError> {
        let a: [u8; CONNECT_DATA_BYTES] =
            bytes.try_into().map_err(|_| ConnectDataError::Length { len_bytes: bytes.len() })?;
        Ok(ConnectData(a))
    }

    le_field!(/// Controller ID (CNTLID), bytes 17:16: FFFFh asks for a dynamic controller.
        cntlid, set_cntlid, u16, 16);

    /// Host Identifier (HOSTID), bytes 15:0.
    pub fn hostid(&self) -> [u8; 16] {
        let mut h = [0u8; 16];
        h.copy_from_slice(&self.0[0..16]);
        h
    }
    pub fn set_hostid(&mut self, id: [u8; 16]) -> &mut Self {
        self.0[0..16].copy_from_slice(&id);
        self
    }

    fn nqn_at(&self, offset: u16) -> Result<&str, ConnectDataError> {
        let o = usize::from(offset);
        let field = &self.0[o..o + 256];
        // An NQN is at most 223 bytes and must be NUL-terminated inside the field.
        if !field.contains(&0) {
            return Err(ConnectDataError::BadNqn { offset });
        }
        get_padded(field).ok_or(ConnectDataError::BadNqn { offset })
    }

    /// NVM Subsystem NQN (SUBNQN), bytes 511:256.
    pub fn subnqn(&self) -> Result<&str, ConnectDataError> {
        self.nqn_at(connect_data_offset::SUBNQN)
    }
    pub fn set_subnqn(&mut self, nqn: &str) -> &mut Self {
        put_padded(&mut self.0[256..512], nqn, 0);
        self
    }
    /// Host NQN (HOSTNQN), bytes 767:512.
    pub fn hostnqn(&self) -> Result<&str, ConnectDataError> {
        self.nqn_at(connect_data_offset::HOSTNQN)
    }
    pub fn set_hostnqn(&mut self, nqn: &str) -> &mut Self {
        put_padded(&mut self.0[512..768], nqn, 0);
        self
    }
}

/// Dword 0 of a successful Connect response: CNTLID in bits 15:0
/// (AUTHREQ in 31:16 is zero: no authentication).
pub fn connect_response_dw0(cntlid: u16) -> u32 {
    u32::from(cntlid)
}

/// The controller ID from a successful Connect response's dword 0.
pub fn connect_response_cntlid(dw0: u32) -> u16 {
    dw0 as u16
}

/// Where an invalid Connect parameter lies: IATTR bit 0 of byte 2 says
/// whether the Invalid Parameter Offset (bytes 1:0) is in the command (0)
/// or in the Connect data (1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidParameter {
    Command { offset: u16 },
    Data { offset: u16 },
}

impl InvalidParameter {
    /// Dword 0 of a Connect Invalid Parameters / Invalid Host response.
    pub fn to_dw0(&self) -> u32 {
        match *self {
            InvalidParameter::Command { offset } => u32::from(offset),
            InvalidParameter::Data { offset } => u32::from(offset) | (1 << 16),
        }
    }
    pub fn from_dw0(dw0: u32) -> Self {
        let offset = dw0 as u16;
        if dw0 & (1 << 16) != 0 {
            InvalidParameter::Data { offset }
        } else {
            InvalidParameter::Command { offset }
        }
    }
}

/// Property offsets (OFST).
pub mod property {
    pub const CAP: u32 = 0x00;
    pub const VS: u32 = 0x08;
    pub const CC: u32 = 0x14;
    pub const CSTS: u32 = 0x1C;
    pub const NSSR: u32 = 0x20;
}

/// Property Get (FCTYPE 04h): ATTRIB (byte 40, bits 2:0 size: 0 = 4 bytes,
/// 1 = 8 bytes) and OFST (bytes 47:44). The value comes back in completion
/// dwords 0 and 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PropertyGet {
    pub eight_bytes: bool,
    pub offset: u32,
}

impl PropertyGet {
    pub fn parse(sqe: &Sqe) -> Self {
        PropertyGet { eight_bytes: sqe.cdw10() & 0x7 == 1, offset: sqe.cdw11() }
    }
    pub fn write(&self, sqe: &mut Sqe) {
        sqe.set_cdw10(u32::from(self.eight_bytes));
        sqe.set_cdw11(self.offset);
    }
    /// The raw size code; only 0 and 1 are valid.
    pub fn size_code(sqe: &Sqe) -> u8 {
        (sqe.cdw10() & 0x7) as u8
    }
}

/// Property Set (FCTYPE 00h): ATTRIB (byte 40), OFST (47:44), VALUE (55:48).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PropertySet {
    pub eight_bytes: bool,
    pub offset: u32,
    pub value: u64,
}

impl PropertySet {
    pub fn parse(sqe: &Sqe) -> Self {
        PropertySet {
            eight_bytes: sqe.cdw10() & 0x7 == 1,
            offset: sqe.cdw11(),
            value: u64::from(sqe.cdw12()) | (u64::from(sqe.cdw13()) << 32),
        }
    }
    pub fn write(&self, sqe: &mut Sqe) {
        sqe.set_cdw10(u32::from(self.eight_bytes));
        sqe.set_cdw11(self.offset);
        sqe.set_cdw12(self.value as u32);
        sqe.set_cdw13((self.value >> 32) as u32);
    }
}

/// Controller Capabilities (CAP, offset 0h, Figure 36).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Cap(pub u64);

impl Cap {
    /// Maximum Queue Entries Supported (MQES), bits 15:0, 0's-based.
    pub fn mqes0(&self) -> u16 {
        self.0 as u16
    }
    /// Contiguous Queues Required (CQR), bit 16.
    pub fn cqr(&self) -> bool {
        self.0 & (1 << 16) != 0
    }
    /// Timeout (TO), bits 31:24, in 500 ms units.
    pub fn timeout_500ms(&self) -> u8 {
        (self.0 >> 24) as u8
    }
    /// Command Sets Supported (CSS), bits 44:37 (bit 37: NVM command set).
    pub fn css(&self) -> u8 {
        (self.0 >> 37) as u8
    }
    /// Memory Page Size Minimum (MPSMIN), bits 51:48: 2^(12 + n) bytes.
    pub fn mpsmin(&self) -> u8 {
        ((self.0 >> 48) & 0xf) as u8
    }
    /// Memory Page Size Maximum (MPSMAX), bits 55:52.
    pub fn mpsmax(&self) -> u8 {
        ((self.0 >> 52) & 0xf) as u8
    }

    /// Builds CAP from its fields: `queue_entries_max` is the real maximum
    /// queue size (2..=65536), stored 0's-based.
    pub fn new(
        queue_entries_max: u32,
        cqr: bool,
        timeout_500ms: u8,
        css: u8,
        mpsmin: u8,
        mpsmax: u8,
    ) -> Self {
        let mqes0 = u64::from(queue_entries_max.clamp(2, 0x1_0000) - 1);
        Cap(mqes0
            | (u64::from(cqr) << 16)
            | (u64::from(timeout_500ms) << 24)
            | (u64::from(css) << 37)
            | (u64::from(mpsmin & 0xf) << 48)
            | (u64::from(mpsmax & 0xf) << 52))
    }
}

/// CAP.CSS bit 0: the NVM command set.
pub const CAP_CSS_NVM: u8 = 1 << 0;

/// The Version property value (VS, offset 8h): MJR 31:16, MNR 15:8, TER 7:0.
pub const fn version(major: u16, minor: u8, tertiary: u8) -> u32 {
    ((major as u32) << 16) | ((minor as u32) << 8) | tertiary as u32
}

/// Controller Configuration (CC, offset 14h, Figure 41).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Cc(pub u32);

impl Cc {
    /// Enable (EN), bit 0.
    pub fn en(&self) -> bool {
        self.0 & 1 != 0
    }
    /// I/O Command Set Selected (CSS), bits 6:4.
    pub fn css(&self) -> u8 {
        ((self.0 >> 4) & 0x7) as u8
    }
    /// Memory Page Size (MPS), bits 10:7.
    pub fn mps(&self) -> u8 {
        ((self.0 >> 7) & 0xf) as u8
    }
    /// Arbitration Mechanism Selected (AMS), bits 13:11.
    pub fn ams(&self) -> u8 {
        ((self.0 >> 11) & 0x7) as u8
    }
    /// Shutdown Notification (SHN), bits 15:14: 01b normal, 10b abrupt.
    pub fn shn(&self) -> u8 {
        ((self.0 >> 14) & 0x3) as u8
    }
    /// I/O Submission Queue Entry Size (IOSQES), bits 19:16, log2.
    pub fn iosqes(&self) -> u8 {
        ((self.0 >> 16) & 0xf) as u8
    }
    /// I/O Completion Queue Entry Size (IOCQES), bits 23:20, log2.
    pub fn iocqes(&self) -> u8 {
        ((self.0 >> 20) & 0xf) as u8
    }
    /// The value Linux writes to enable a controller: EN, NVM command set,
    /// 4 KiB pages, round robin, 64-byte SQEs and 16-byte CQEs.
    pub const ENABLE_DEFAULT: Cc = Cc(1 | (6 << 16) | (4 << 20));
}

/// Controller Status (CSTS, offset 1Ch, Figure 43).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Csts(pub u32);

impl Csts {
    pub const RDY: u32 = 1 << 0;
    pub const CFS: u32 = 1 << 1;
    /// SHST = 10b: shutdown processing complete.
    pub const SHST_COMPLETE: u32 = 0b10 << 2;

    /// Ready (RDY), bit 0.
    pub fn rdy(&self) -> bool {
        self.0 & Self::RDY != 0
    }
    /// Controller Fatal Status (CFS), bit 1.
    pub fn cfs(&self) -> bool {
        self.0 & Self::CFS != 0
    }
    /// Shutdown Status (SHST), bits 3:2: 00b normal, 01b occurring, 10b complete.
    pub fn shst(&self) -> u8 {
        ((self.0 >> 2) & 0x3) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_command_fields() {
        let mut s = Sqe::default();
        let c = ConnectCommand { recfmt: 0, qid: 3, sqsize0: 127, cattr: 0x4, kato_ms: 5000 };
        c.write(&mut s);
        assert_eq!(&s.0[40..42], &[0, 0], "RECFMT");
        assert_eq!(&s.0[42..44], &[3, 0], "QID");
        assert_eq!(&s.0[44..46], &[127, 0], "SQSIZE");
        assert_eq!(s.0[46], 4, "CATTR");
        assert_eq!(&s.0[48..52], &5000u32.to_le_bytes(), "KATO");
        assert_eq!(ConnectCommand::parse(&s), c);
        assert_eq!(c.sq_entries(), 128, "SQSIZE is 0's-based");
        let max = ConnectCommand { sqsize0: 0xFFFF, ..c };
        assert_eq!(max.sq_entries(), 65_536);
    }

    #[test]
    fn connect_data_fields() {
        let mut d = ConnectData::default();
        d.set_hostid([7; 16]).set_cntlid(0xFFFF).set_subnqn("nqn.sub").set_hostnqn("nqn.host");
        assert_eq!(&d.0[0..16], &[7; 16], "HOSTID");
        assert_eq!(&d.0[16..18], &[0xff, 0xff], "CNTLID");
        assert_eq!(&d.0[256..263], b"nqn.sub", "SUBNQN");
        assert_eq!(&d.0[512..520], b"nqn.host", "HOSTNQN");
        let d = ConnectData::from_bytes(&d.0).unwrap();
        assert_eq!((d.hostid(), d.cntlid()), ([7; 16], 0xFFFF));
        assert_eq!((d.subnqn(), d.hostnqn()), (Ok("nqn.sub"), Ok("nqn.host")));
        assert_eq!(ConnectData::from_bytes(&[0; 100]), Err(ConnectDataError::Length { len_bytes: 100 }));
        let mut bad = d.clone();
        bad.0[512..768].fill(b'a');
        assert_eq!(bad.hostnqn(), Err(ConnectDataError::BadNqn { offset: 512 }), "no NUL terminator");
        bad.0[512] = 0xff;
        bad.0[513] = 0;
        assert_eq!(bad.hostnqn(), Err(ConnectDataError::BadNqn { offset: 512 }), "not UTF-8");
    }

    #[test]
    fn connect_response_dwords() {
        assert_eq!(connect_response_dw0(0x1234), 0x1234);
        assert_eq!(connect_response_cntlid(0xABCD_1234), 0x1234);
        let p = InvalidParameter::Data { offset: connect_data_offset::HOSTNQN };
        assert_eq!(p.to_dw0(), 0x0001_0200, "IATTR=1, IPO=512");
        assert_eq!(InvalidParameter::from_dw0(p.to_dw0()), p);
        let q = InvalidParameter::Command { offset: connect_sqe_offset::SQSIZE };
        assert_eq!(q.to_dw0(), 44);
        assert_eq!(InvalidParameter::from_dw0(44), q);
    }

    #[test]
    fn property_commands() {
        let mut s = Sqe::default();
        PropertyGet { eight_bytes: true, offset: property::CAP }.write(&mut s);
        assert_eq!(s.0[40], 1, "ATTRIB size 8 bytes");
        assert_eq!(&s.0[44..48], &[0, 0, 0, 0], "OFST");
        assert_eq!(PropertyGet::parse(&s), PropertyGet { eight_bytes: true, offset: 0 });
        s.set_cdw10(5);
        assert_eq!(PropertyGet::size_code(&s), 5);
        let p = PropertySet { eight_bytes: false, offset: property::CC, value: 0x0046_0001 };
        p.write(&mut s);
        assert_eq!(&s.0[44..48], &[0x14, 0, 0, 0]);
        assert_eq!(&s.0[48..52], &[1, 0, 0x46, 0], "VALUE");
        assert_eq!(PropertySet::parse(&s), p);
        assert_eq!((property::VS, property::CSTS, property::NSSR), (8, 0x1c, 0x20));
    }

    #[test]
    fn cap_fields() {
        let cap = Cap::new(128, true, 30, CAP_CSS_NVM, 0, 0);
        assert_eq!(cap.mqes0(), 127, "MQES is 0's-based");
        assert!(cap.cqr(), "CQR");
        assert_eq!(cap.timeout_500ms(), 30, "TO");
        assert_eq!(cap.css(), 1, "CSS");
        assert_eq!(cap.0 & (1 << 37), 1 << 37, "CSS bit 37 = NVM");
        assert_eq!(cap.mpsmin(), 0, "MPSMIN");
        assert_eq!(Cap::new(128, false, 0, 0, 1, 2).mpsmax(), 2, "MPSMAX");
        assert_eq!(Cap::new(128, false, 0, 0, 1, 2).mpsmin(), 1);
        assert_eq!(Cap::new(1, false, 0, 0, 0, 0).mqes0(), 1, "at least 2 entries");
        assert_eq!(version(1, 4, 0), 0x0001_0400);
    }

    #[test]
    fn cc_and_csts_fields() {
        let cc = Cc(1 | (0b110 << 4) | (2 << 7) | (1 << 11) | (0b01 << 14) | (6 << 16) | (4 << 20));
        assert!(cc.en(), "EN");
        assert_eq!(cc.css(), 0b110, "CSS");
        assert_eq!(cc.mps(), 2, "MPS");
        assert_eq!(cc.ams(), 1, "AMS");
        assert_eq!(cc.shn(), 1, "SHN");
        assert_eq!(cc.iosqes(), 6, "IOSQES");
        assert_eq!(cc.iocqes(), 4, "IOCQES");
        assert_eq!(Cc::ENABLE_DEFAULT.0, 0x0046_0001);
        let st = Csts(Csts::RDY | Csts::SHST_COMPLETE);
        assert!(st.rdy(), "RDY");
        assert!(!st.cfs(), "CFS");
        assert_eq!(st.shst(), 2, "SHST");
        assert!(Csts(Csts::CFS).cfs());
    }
}
