//! NVMe/TCP PDU headers (NVMe/TCP Transport Specification 1.0, section 3.6
//! "PDU Formats", Figures 21-38): the typed form of every header, its encoding
//! into a caller's fixed buffer, and its validation on receipt.
//!
//! Every PDU starts with the 8-byte common header (CH, Figure 21):
//! byte 0 PDU-Type, byte 1 FLAGS, byte 2 HLEN, byte 3 PDO, bytes 7:4 PLEN.
//! The PDU-specific header follows up to HLEN bytes, then the header digest
//! (HDGST, 4 bytes, when HDGSTF is set), then zero padding up to PDO, then the
//! data, then the data digest (DDGST, 4 bytes, when DDGSTF is set). Both
//! digests are CRC32C stored little-endian; HDGST covers the HLEN header bytes,
//! DDGST covers the data bytes only (not the padding).
//!
//! Invariants: `encode` never allocates and never writes past
//! [`HEADER_BUF_LEN`]; `decode` never panics on any input: every violation is a
//! [`TcpError`] that carries the Fatal Error Status (FES) and Fatal Error
//! Information (FEI) the receiver must put into its H2C/C2H TermReq.

use crate::spec::{Cqe, Sqe};

/// PDU-Type values (Figure 21).
pub mod pdu_type {
    pub const IC_REQ: u8 = 0x00;
    pub const IC_RESP: u8 = 0x01;
    pub const H2C_TERM_REQ: u8 = 0x02;
    pub const C2H_TERM_REQ: u8 = 0x03;
    pub const CAPSULE_CMD: u8 = 0x04;
    pub const CAPSULE_RESP: u8 = 0x05;
    pub const H2C_DATA: u8 = 0x06;
    pub const C2H_DATA: u8 = 0x07;
    pub const R2T: u8 = 0x09;
}

/// FLAGS bits of the common header (Figure 21).
pub mod flags {
    /// Header digest present.
    pub const HDGSTF: u8 = 1 << 0;
    /// Data digest present.
    pub const DDGSTF: u8 = 1 << 1;
    /// Last data PDU of a transfer (H2CData, C2HData).
    pub const LAST_PDU: u8 = 1 << 2;
    /// C2HData only: the command completed successfully and no CapsuleResp
    /// follows. Only valid together with LAST_PDU.
    pub const SUCCESS: u8 = 1 << 3;
}

/// Fatal Error Status values of a TermReq (Figures 26 and 28).
///
/// The Fatal Error Information (FEI) beside it is defined for three of
/// them only: Invalid PDU Header Field (01h) and Unsupported Parameter (06h)
/// carry the byte offset of the field in error, Header Digest Error (03h)
/// carries the header digest received; for the others FEI is reserved (0).
pub mod fes {
    pub const INVALID_HEADER_FIELD: u16 = 0x01;
    pub const PDU_SEQUENCE_ERROR: u16 = 0x02;
    pub const HEADER_DIGEST_ERROR: u16 = 0x03;
    pub const DATA_OUT_OF_RANGE: u16 = 0x04;
    /// R2T Limit Exceeded (H2CTermReq) / Data Transfer Limit Exceeded (C2HTermReq).
    pub const LIMIT_EXCEEDED: u16 = 0x05;
    pub const UNSUPPORTED_PARAMETER: u16 = 0x06;

    /// Whether a TermReq with this FES carries FEI (else FEI is reserved).
    pub fn has_fei(fes: u16) -> bool {
        matches!(fes, INVALID_HEADER_FIELD | HEADER_DIGEST_ERROR | UNSUPPORTED_PARAMETER)
    }
}

/// Byte offsets of common-header fields, used as FEI of "invalid header field".
pub mod offset {
    pub const PDU_TYPE: u32 = 0;
    pub const FLAGS: u32 = 1;
    pub const HLEN: u32 = 2;
    pub const PDO: u32 = 3;
    pub const PLEN: u32 = 4;
}

/// Length of the common header.
pub const COMMON_HEADER_LEN: usize = 8;
/// Length of a header or data digest.
pub const DIGEST_LEN: usize = 4;
/// HLEN of ICReq and ICResp (Figures 30, 31).
pub const IC_HLEN: usize = 128;
/// HLEN of the TermReq PDUs (Figures 26, 28).
pub const TERM_REQ_HLEN: usize = 24;
/// HLEN of CapsuleCmd: the common header plus one 64-byte SQE (Figure 24).
pub const CAPSULE_CMD_HLEN: usize = 72;
/// HLEN of CapsuleResp: the common header plus one 16-byte CQE (Figure 25).
pub const CAPSULE_RESP_HLEN: usize = 24;
/// HLEN of H2CData, C2HData and R2T (Figures 29, 32, 35).
pub const DATA_HLEN: usize = 24;
/// The largest TermReq PDU (header plus the copied offending header).
pub const TERM_REQ_PLEN_MAX: usize = 152;
/// The smallest MAXH2CDATA a controller may offer (Figure 31).
pub const MAXH2CDATA_MIN: u32 = 4096;
/// The largest HPDA/CPDA value (0's-based count of dwords).
pub const PDA_MAX: u8 = 31;
/// Size of the buffer that holds an encoded header: the largest header
/// (128), its digest, and padding up to the largest PDO (255).
pub const HEADER_BUF_LEN: usize = 256;

const _: () = assert!(IC_HLEN + DIGEST_LEN <= HEADER_BUF_LEN);
const _: () = assert!(TERM_REQ_PLEN_MAX - TERM_REQ_HLEN == 128);
const _: () = assert!(CAPSULE_CMD_HLEN == COMMON_HEADER_LEN + 64);
const _: () = assert!(CAPSULE_RESP_HLEN == COMMON_HEADER_LEN + 16);

/// Which end of the connection we are: each side may only receive the PDUs
/// the other side is allowed to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Host,
    Target,
}

/// ICReq (Figure 30): what the host proposes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IcReq {
    /// PDU format version, 0 for 1.0.
    pub pfv: u16,
    /// Host PDU data alignment: C2H data must start at a multiple of
    /// `(hpda + 1) * 4` bytes from the PDU start. 0's-based, at most 31.
    pub hpda: u8,
    pub header_digest: bool,
    pub data_digest: bool,
    /// Maximum outstanding R2Ts per command, 0's-based.
    pub maxr2t: u32,
}

/// ICResp (Figure 31): what the controller accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IcResp {
    pub pfv: u16,
    /// Controller PDU data alignment for H2C data, 0's-based dwords.
    pub cpda: u8,
    pub header_digest: bool,
    pub data_digest: bool,
    /// Largest DATAL of one H2CData PDU, in bytes (at least 4096).
    pub maxh2cdata: u32,
}

/// H2CTermReq / C2HTermReq (Figures 26-28). The data of the PDU is the
/// header of the PDU in error (at most 128 bytes); it follows the 24-byte
/// header at once, and PDO is reserved (0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TermReq {
    pub fes: u16,
    pub fei: u32,
}

/// H2CData (Figure 29).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct H2CData {
    /// Command capsule CID.
    pub cccid: u16,
    /// Transfer tag from the R2T being answered.
    pub ttag: u16,
    /// Offset of this data in the command's data buffer.
    pub datao: u32,
    /// Data length of this PDU.
    pub datal: u32,
    pub last: bool,
}

/// C2HData (Figure 32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct C2HData {
    pub cccid: u16,
    pub datao: u32,
    pub datal: u32,
    pub last: bool,
    /// The command succeeded: no CapsuleResp follows.
    pub success: bool,
}

/// R2T (Figure 35).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct R2T {
    pub cccid: u16,
    pub ttag: u16,
    /// Offset of the requested data.
    pub r2to: u32,
    /// Length of the requested data.
    pub r2tl: u32,
}

/// One decoded PDU header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PduHeader {
    IcReq(IcReq),
    IcResp(IcResp),
    H2CTermReq(TermReq),
    C2HTermReq(TermReq),
    /// Command capsule; any in-capsule data follows as the PDU's data.
    CapsuleCmd {
        sqe: Sqe,
    },
    CapsuleResp {
        cqe: Cqe,
    },
    H2CData(H2CData),
    C2HData(C2HData),
    R2T(R2T),
}

/// What a receiver found wrong with a PDU.
#[derive(thiserror::Error, Debug)]
pub enum TcpError {
    /// A fatal transport error: the receiver sends a TermReq with this FES and
    /// FEI (and the offending header as data) and closes the connection.
    #[error("fatal NVMe/TCP error: {reason} (FES {fes:#x}, FEI {fei:#x})")]
    Fatal { fes: u16, fei: u32, reason: &'static str },
    /// The data digest of a PDU did not match. Unlike a header digest error
    /// this is not a fatal transport error (the stream is still at a PDU
    /// boundary, so the receiver stays usable): the command whose data it was
    /// completes with Transient Transport Error (SCT 0, SC 22h), as the
    /// NVMe/TCP transport spec says and SPDK's target and host do (the
    /// Linux target drops the connection instead; the Linux host reports
    /// Data Transfer Error, 04h, for C2H data).
    #[error("data digest mismatch: received {received:#010x}, computed {computed:#010x}")]
    DataDigest { received: u32, computed: u32 },
    /// The peer closed the connection in the middle of a PDU (or, when
    /// `mid_pdu` is false, cleanly between PDUs).
    #[error("connection closed by peer (mid-PDU: {mid_pdu})")]
    Closed { mid_pdu: bool },
    /// A socket error other than WouldBlock / Interrupted.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    /// The caller used the codec out of sequence (e.g. asked for a header
    /// while data is pending); a bug in the caller, reported, not panicked.
    #[error("codec misuse: {0}")]
    Misuse(&'static str),
}

impl TcpError {
    pub(crate) fn fatal(fes: u16, fei: u32, reason: &'static str) -> Self {
        TcpError::Fatal { fes, fei, reason }
    }

    /// The FES/FEI pair for a TermReq, when this error calls for one.
    pub fn term_req(&self) -> Option<TermReq> {
        match self {
            TcpError::Fatal { fes, fei, .. } => Some(TermReq { fes: *fes, fei: *fei }),
            _ => None,
        }
    }
}

/// How PDUs with data are framed on this connection, as negotiated by
/// ICReq/ICResp. Before the exchange both digests are off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Framing {
    pub header_digest: bool,
    pub data_digest: bool,
    /// Data of the PDUs this side sends starts at a multiple of this many
    /// bytes: `(CPDA + 1) * 4` for a host, `(HPDA + 1) * 4` for a target.
    pub data_alignment: usize,
}

impl Default for Framing {
    fn default() -> Self {
        Framing { header_digest: false, data_digest: false, data_alignment: 4 }
    }
}

/// The layout of one encoded PDU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncodedLayout {
    /// Bytes of the header buffer to send before the data: header, header
    /// digest, and padding up to PDO.
    pub prefix_len: usize,
    /// Whether a 4-byte data digest follows the data.
    pub data_digest: bool,
    /// The PDU length written into PLEN.
    pub plen: u32,
}

fn le16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

impl PduHeader {
    /// The PDU-Type byte.
    pub fn pdu_type(&self) -> u8 {
        match self {
            PduHeader::IcReq(_) => pdu_type::IC_REQ,
            PduHeader::IcResp(_) => pdu_type::IC_RESP,
            PduHeader::H2CTermReq(_) => pdu_type::H2C_TERM_REQ,
            PduHeader::C2HTermReq(_) => pdu_type::C2H_TERM_REQ,
            PduHeader::CapsuleCmd { .. } => pdu_type::CAPSULE_CMD,
            PduHeader::CapsuleResp { .. } => pdu_type::CAPSULE_RESP,
            PduHeader::H2CData(_) => pdu_type::H2C_DATA,
            PduHeader::C2HData(_) => pdu_type::C2H_DATA,
            PduHeader::R2T(_) => pdu_type::R2T,
        }
    }

    /// Encodes this header for a PDU carrying `data_len` bytes of data into
    /// `out`, with the digests and alignment of `framing`. ICReq, ICResp and
    /// TermReq never carry digests (section 3.6.1), whatever `framing` says.
    /// For data PDUs DATAL is taken from the header and must equal `data_len`.
    pub fn encode(
        &self,
        framing: &Framing,
        data_len: usize,
        out: &mut [u8; HEADER_BUF_LEN],
    ) -> Result<EncodedLayout, TcpError> {
        let hlen = hlen_of(self.pdu_type()).ok_or(TcpError::Misuse("unknown PDU type"))?;
        let digests_allowed = !matches!(
            self,
            PduHeader::IcReq(_) | PduHeader::IcResp(_) | PduHeader::H2CTermReq(_) | PduHeader::C2HTermReq(_)
        );
        let carries_data = matches!(
            self,
            PduHeader::CapsuleCmd { .. }
                | PduHeader::H2CData(_)
                | PduHeader::C2HData(_)
                | PduHeader::H2CTermReq(_)
                | PduHeader::C2HTermReq(_)
        );
        if !carries_data && data_len != 0 {
            return Err(TcpError::Misuse("this PDU type carries no data"));
        }
        match self {
            PduHeader::H2CData(d) if d.datal as usize != data_len => {
                return Err(TcpError::Misuse("DATAL differs from the data length"))
            }
            PduHeader::C2HData(d) if d.datal as usize != data_len => {
                return Err(TcpError::Misuse("DATAL differs from the data length"))
            }
            PduHeader::H2CTermReq(_) | PduHeader::C2HTermReq(_)
                if data_len > TERM_REQ_PLEN_MAX - TERM_REQ_HLEN =>
            {
                return Err(TcpError::Misuse("TermReq data is at most 128 bytes"))
            }
            _ => {}
        }
        let hdgst = digests_allowed && framing.header_digest;
        let ddgst = digests_allowed && framing.data_digest && data_len > 0;
        let header_end = hlen + if hdgst { DIGEST_LEN } else { 0 };
        let is_term = matches!(self, PduHeader::H2CTermReq(_) | PduHeader::C2HTermReq(_));
        let pdo = if data_len == 0 || is_term {
            // No data, or a TermReq: PDO is reserved.
            0
        } else if digests_allowed {
            let align = framing.data_alignment.max(1);
            header_end.div_ceil(align) * align
        } else {
            header_end
        };
        if pdo > u8::MAX as usize || pdo > HEADER_BUF_LEN {
            return Err(TcpError::Misuse("PDO does not fit in one byte"));
        }
        let prefix_len = if data_len == 0 || is_term { header_end } else { pdo };
        let plen = prefix_len as u64 + data_len as u64 + if ddgst { DIGEST_LEN as u64 } else { 0 };
        let plen = u32::try_from(plen).map_err(|_| TcpError::Misuse("PDU longer than 4 GiB"))?;

        out[..prefix_len].fill(0);
        let mut fl = 0u8;
        if hdgst {
            fl |= flags::HDGSTF;
        }
        if ddgst {
            fl |= flags::DDGSTF;
        }
        let h = &mut out[..];
        match self {
            PduHeader::IcReq(r) => {
                h[8..10].copy_from_slice(&r.pfv.to_le_bytes());
                h[10] = r.hpda;
                h[11] = u8::from(r.header_digest) | (u8::from(r.data_digest) << 1);
                h[12..16].copy_from_slice(&r.maxr2t.to_le_bytes());
            }
            PduHeader::IcResp(r) => {
                h[8..10].copy_from_slice(&r.pfv.to_le_bytes());
                h[10] = r.cpda;
                h[11] = u8::from(r.header_digest) | (u8::from(r.data_digest) << 1);
                h[12..16].copy_from_slice(&r.maxh2cdata.to_le_bytes());
            }
            PduHeader::H2CTermReq(t) | PduHeader::C2HTermReq(t) => {
                // A reserved FEI goes out as 0 whatever the caller put there.
                let fei = if fes::has_fei(t.fes) { t.fei } else { 0 };
                h[8..10].copy_from_slice(&t.fes.to_le_bytes());
                h[10..14].copy_from_slice(&fei.to_le_bytes());
            }
            PduHeader::CapsuleCmd { sqe } => h[8..72].copy_from_slice(sqe.as_bytes()),
            PduHeader::CapsuleResp { cqe } => h[8..24].copy_from_slice(cqe.as_bytes()),
            PduHeader::H2CData(d) => {
                if d.last {
                    fl |= flags::LAST_PDU;
                }
                h[8..10].copy_from_slice(&d.cccid.to_le_bytes());
                h[10..12].copy_from_slice(&d.ttag.to_le_bytes());
                h[12..16].copy_from_slice(&d.datao.to_le_bytes());
                h[16..20].copy_from_slice(&d.datal.to_le_bytes());
            }
            PduHeader::C2HData(d) => {
                if d.last {
                    fl |= flags::LAST_PDU;
                }
                if d.success {
                    if !d.last {
                        return Err(TcpError::Misuse("SUCCESS requires LAST_PDU"));
                    }
                    fl |= flags::SUCCESS;
                }
                h[8..10].copy_from_slice(&d.cccid.to_le_bytes());
                h[12..16].copy_from_slice(&d.datao.to_le_bytes());
                h[16..20].copy_from_slice(&d.datal.to_le_bytes());
            }
            PduHeader::R2T(r) => {
                h[8..10].copy_from_slice(&r.cccid.to_le_bytes());
                h[10..12].copy_from_slice(&r.ttag.to_le_bytes());
                h[12..16].copy_from_slice(&r.r2to.to_le_bytes());
                h[16..20].copy_from_slice(&r.r2tl.to_le_bytes());
            }
        }
        h[0] = self.pdu_type();
        h[1] = fl;
        h[2] = hlen as u8;
        h[3] = pdo as u8;
        h[4..8].copy_from_slice(&plen.to_le_bytes());
        if hdgst {
            let crc = crc32c::crc32c(&h[..hlen]);
            h[hlen..hlen + DIGEST_LEN].copy_from_slice(&crc.to_le_bytes());
        }
        Ok(EncodedLayout { prefix_len, data_digest: ddgst, plen })
    }
}

/// The fixed HLEN of each PDU type, or None for an unknown type.
pub fn hlen_of(pdu_type: u8) -> Option<usize> {
    match pdu_type {
        pdu_type::IC_REQ | pdu_type::IC_RESP => Some(IC_HLEN),
        pdu_type::H2C_TERM_REQ | pdu_type::C2H_TERM_REQ => Some(TERM_REQ_HLEN),
        pdu_type::CAPSULE_CMD => Some(CAPSULE_CMD_HLEN),
        pdu_type::CAPSULE_RESP => Some(CAPSULE_RESP_HLEN),
        pdu_type::H2C_DATA | pdu_type::C2H_DATA | pdu_type::R2T => Some(DATA_HLEN),
        _ => None,
    }
}

/// The common header, parsed but not yet validated against the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommonHeader {
    pub pdu_type: u8,
    pub flags: u8,
    pub hlen: u8,
    pub pdo: u8,
    pub plen: u32,
}

impl CommonHeader {
    pub fn parse(b: &[u8; COMMON_HEADER_LEN]) -> Self {
        CommonHeader { pdu_type: b[0], flags: b[1], hlen: b[2], pdo: b[3], plen: le32(b, 4) }
    }
}

/// Where the parts of a PDU lie, derived from a validated common header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PduLayout {
    /// HLEN plus the header digest, if present.
    pub header_len: usize,
    pub header_digest: bool,
    /// Padding bytes between the header (and its digest) and the data.
    pub padding_len: usize,
    pub data_len: usize,
    pub data_digest: bool,
}

/// What the receiver of a connection accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiveLimits {
    /// Which side we are.
    pub role: Role,
    /// The negotiated digests (both off until ICReq/ICResp completes).
    pub header_digest: bool,
    pub data_digest: bool,
    /// Data of received PDUs must start at a multiple of this many bytes
    /// (`(HPDA + 1) * 4` on a host, `(CPDA + 1) * 4` on a target).
    pub data_alignment: usize,
    /// The largest PLEN accepted for any PDU.
    pub pdu_len_max: u32,
    /// Target side: the MAXH2CDATA we offered; larger H2CData PDUs are
    /// "Data Transfer Limit Exceeded". Ignored on a host.
    pub maxh2cdata: u32,
    /// Whether the ICReq/ICResp exchange is over: before, only the
    /// initialization PDUs (and TermReqs) are accepted; after, they are a
    /// PDU sequence error.
    pub ic_done: bool,
}

impl ReceiveLimits {
    /// Limits for a fresh connection, before the ICReq/ICResp exchange.
    pub fn new(role: Role, pdu_len_max: u32) -> Self {
        ReceiveLimits {
            role,
            header_digest: false,
            data_digest: false,
            data_alignment: 4,
            pdu_len_max,
            maxh2cdata: u32::MAX,
            ic_done: false,
        }
    }
}

/// Checks a common header against the connection (everything that can be
/// checked before the rest of the header arrives) and returns the layout.
pub fn validate_common(ch: &CommonHeader, lim: &ReceiveLimits) -> Result<PduLayout, TcpError> {
    use pdu_type::*;
    let t = ch.pdu_type;
    let hlen =
        hlen_of(t).ok_or(TcpError::fatal(fes::INVALID_HEADER_FIELD, offset::PDU_TYPE, "unknown PDU type"))?;
    let allowed = match lim.role {
        Role::Target => matches!(t, IC_REQ | H2C_TERM_REQ | CAPSULE_CMD | H2C_DATA),
        Role::Host => matches!(t, IC_RESP | C2H_TERM_REQ | CAPSULE_RESP | C2H_DATA | R2T),
    };
    if !allowed {
        return Err(TcpError::fatal(
            fes::INVALID_HEADER_FIELD,
            offset::PDU_TYPE,
            "PDU type not sent by this peer",
        ));
    }
    let is_ic = matches!(t, IC_REQ | IC_RESP);
    let is_term = matches!(t, H2C_TERM_REQ | C2H_TERM_REQ);
    if is_ic && lim.ic_done {
        return Err(TcpError::fatal(fes::PDU_SEQUENCE_ERROR, 0, "second connection initialization PDU"));
    }
    if !is_ic && !is_term && !lim.ic_done {
        return Err(TcpError::fatal(fes::PDU_SEQUENCE_ERROR, 0, "PDU before connection initialization"));
    }
    if ch.hlen as usize != hlen {
        return Err(TcpError::fatal(fes::INVALID_HEADER_FIELD, offset::HLEN, "HLEN wrong for the PDU type"));
    }
    let digest_flags = flags::HDGSTF | flags::DDGSTF;
    let type_flags = match t {
        H2C_DATA => flags::LAST_PDU,
        C2H_DATA => flags::LAST_PDU | flags::SUCCESS,
        _ => 0,
    };
    let may_digest = !is_ic && !is_term;
    let allowed_flags = type_flags | if may_digest { digest_flags } else { 0 };
    if ch.flags & !allowed_flags != 0 {
        return Err(TcpError::fatal(
            fes::INVALID_HEADER_FIELD,
            offset::FLAGS,
            "flag not allowed for the PDU type",
        ));
    }
    if ch.flags & flags::SUCCESS != 0 && ch.flags & flags::LAST_PDU == 0 {
        return Err(TcpError::fatal(fes::INVALID_HEADER_FIELD, offset::FLAGS, "SUCCESS without LAST_PDU"));
    }
    let hdgst = ch.flags & flags::HDGSTF != 0;
    let ddgst = ch.flags & flags::DDGSTF != 0;
    if may_digest && hdgst != lim.header_digest {
        return Err(TcpError::fatal(
            fes::INVALID_HEADER_FIELD,
            offset::FLAGS,
            "HDGSTF differs from the negotiated header digest",
        ));
    }
    if ddgst && !lim.data_digest {
        return Err(TcpError::fatal(
            fes::INVALID_HEADER_FIELD,
            offset::FLAGS,
            "DDGSTF set without a negotiated data digest",
        ));
    }
    let plen = ch.plen as usize;
    if ch.plen > lim.pdu_len_max {
        return Err(TcpError::fatal(
            fes::INVALID_HEADER_FIELD,
            offset::PLEN,
            "PLEN over the maximum PDU length",
        ));
    }
    let header_len = hlen + if hdgst { DIGEST_LEN } else { 0 };
    if plen < header_len {
        return Err(TcpError::fatal(fes::INVALID_HEADER_FIELD, offset::PLEN, "PLEN shorter than the header"));
    }
    if is_term {
        // TermReq data (the offending header) follows the header at once;
        // PDO is reserved.
        if plen > TERM_REQ_PLEN_MAX {
            return Err(TcpError::fatal(
                fes::INVALID_HEADER_FIELD,
                offset::PLEN,
                "TermReq longer than 152 bytes",
            ));
        }
        return Ok(PduLayout {
            header_len,
            header_digest: false,
            padding_len: 0,
            data_len: plen - header_len,
            data_digest: false,
        });
    }
    let carries_data = matches!(t, CAPSULE_CMD | H2C_DATA | C2H_DATA);
    if plen == header_len {
        // No data: PDO is reserved and DDGSTF meaningless.
        if ddgst {
            return Err(TcpError::fatal(
                fes::INVALID_HEADER_FIELD,
                offset::FLAGS,
                "DDGSTF set on a PDU without data",
            ));
        }
        return Ok(PduLayout {
            header_len,
            header_digest: hdgst,
            padding_len: 0,
            data_len: 0,
            data_digest: false,
        });
    }
    if !carries_data {
        return Err(TcpError::fatal(
            fes::INVALID_HEADER_FIELD,
            offset::PLEN,
            "PLEN includes data on a PDU type without data",
        ));
    }
    if ddgst != lim.data_digest {
        return Err(TcpError::fatal(
            fes::INVALID_HEADER_FIELD,
            offset::FLAGS,
            "DDGSTF differs from the negotiated data digest",
        ));
    }
    let pdo = ch.pdo as usize;
    let align = lim.data_alignment.max(1);
    if pdo < header_len || !pdo.is_multiple_of(align) {
        return Err(TcpError::fatal(
            fes::INVALID_HEADER_FIELD,
            offset::PDO,
            "PDO before the header end or misaligned",
        ));
    }
    let trailer = if ddgst { DIGEST_LEN } else { 0 };
    if plen < pdo + trailer + 1 {
        return Err(TcpError::fatal(
            fes::INVALID_HEADER_FIELD,
            offset::PLEN,
            "PLEN leaves no room for the data",
        ));
    }
    Ok(PduLayout {
        header_len,
        header_digest: hdgst,
        padding_len: pdo - header_len,
        data_len: plen - pdo - trailer,
        data_digest: ddgst,
    })
}

/// Decodes a complete header (`hdr` holds HLEN bytes plus the header digest
/// when `layout.header_digest`) after [`validate_common`] accepted its common
/// header, checking the digest and the PDU-specific fields.
pub fn decode(hdr: &[u8], layout: &PduLayout, lim: &ReceiveLimits) -> Result<PduHeader, TcpError> {
    if hdr.len() < layout.header_len || layout.header_len < COMMON_HEADER_LEN {
        return Err(TcpError::Misuse("header buffer shorter than the layout"));
    }
    let hlen = hdr[2] as usize;
    if layout.header_digest {
        if hlen + DIGEST_LEN > hdr.len() {
            return Err(TcpError::Misuse("header buffer shorter than HLEN + digest"));
        }
        let received = le32(hdr, hlen);
        if received != crc32c::crc32c(&hdr[..hlen]) {
            // FEI of a Header Digest Error: the digest as received.
            return Err(TcpError::fatal(fes::HEADER_DIGEST_ERROR, received, "header digest mismatch"));
        }
    }
    let fl = hdr[1];
    let data_len = layout.data_len;
    let header = match hdr[0] {
        pdu_type::IC_REQ => {
            let r = IcReq {
                pfv: le16(hdr, 8),
                hpda: hdr[10],
                header_digest: hdr[11] & 1 != 0,
                data_digest: hdr[11] & 2 != 0,
                maxr2t: le32(hdr, 12),
            };
            if r.pfv != 0 {
                return Err(TcpError::fatal(fes::UNSUPPORTED_PARAMETER, 8, "unsupported PDU format version"));
            }
            if r.hpda > PDA_MAX {
                return Err(TcpError::fatal(fes::UNSUPPORTED_PARAMETER, 10, "HPDA over 31"));
            }
            PduHeader::IcReq(r)
        }
        pdu_type::IC_RESP => {
            let r = IcResp {
                pfv: le16(hdr, 8),
                cpda: hdr[10],
                header_digest: hdr[11] & 1 != 0,
                data_digest: hdr[11] & 2 != 0,
                maxh2cdata: le32(hdr, 12),
            };
            if r.pfv != 0 {
                return Err(TcpError::fatal(fes::UNSUPPORTED_PARAMETER, 8, "unsupported PDU format version"));
            }
            if r.cpda > PDA_MAX {
                return Err(TcpError::fatal(fes::UNSUPPORTED_PARAMETER, 10, "CPDA over 31"));
            }
            if r.maxh2cdata < MAXH2CDATA_MIN || !r.maxh2cdata.is_multiple_of(4) {
                return Err(TcpError::fatal(
                    fes::UNSUPPORTED_PARAMETER,
                    12,
                    "MAXH2CDATA below 4096 or unaligned",
                ));
            }
            PduHeader::IcResp(r)
        }
        pdu_type::H2C_TERM_REQ => PduHeader::H2CTermReq(TermReq { fes: le16(hdr, 8), fei: le32(hdr, 10) }),
        pdu_type::C2H_TERM_REQ => PduHeader::C2HTermReq(TermReq { fes: le16(hdr, 8), fei: le32(hdr, 10) }),
        pdu_type::CAPSULE_CMD => {
            let mut sqe = [0u8; 64];
            sqe.copy_from_slice(&hdr[8..72]);
            PduHeader::CapsuleCmd { sqe: Sqe(sqe) }
        }
        pdu_type::CAPSULE_RESP => {
            let mut cqe = [0u8; 16];
            cqe.copy_from_slice(&hdr[8..24]);
            PduHeader::CapsuleResp { cqe: Cqe(cqe) }
        }
        pdu_type::H2C_DATA => {
            let d = H2CData {
                cccid: le16(hdr, 8),
                ttag: le16(hdr, 10),
                datao: le32(hdr, 12),
                datal: le32(hdr, 16),
                last: fl & flags::LAST_PDU != 0,
            };
            if d.datal as usize != data_len || data_len == 0 {
                return Err(TcpError::fatal(
                    fes::INVALID_HEADER_FIELD,
                    16,
                    "DATAL differs from the PDU's data",
                ));
            }
            if lim.role == Role::Target && d.datal > lim.maxh2cdata {
                return Err(TcpError::fatal(fes::LIMIT_EXCEEDED, 0, "H2CData longer than MAXH2CDATA"));
            }
            PduHeader::H2CData(d)
        }
        pdu_type::C2H_DATA => {
            let d = C2HData {
                cccid: le16(hdr, 8),
                datao: le32(hdr, 12),
                datal: le32(hdr, 16),
                last: fl & flags::LAST_PDU != 0,
                success: fl & flags::SUCCESS != 0,
            };
            if d.datal as usize != data_len || data_len == 0 {
                return Err(TcpError::fatal(
                    fes::INVALID_HEADER_FIELD,
                    16,
                    "DATAL differs from the PDU's data",
                ));
            }
            PduHeader::C2HData(d)
        }
        pdu_type::R2T => {
            let r =
                R2T { cccid: le16(hdr, 8), ttag: le16(hdr, 10), r2to: le32(hdr, 12), r2tl: le32(hdr, 16) };
            if r.r2tl == 0 {
                return Err(TcpError::fatal(fes::INVALID_HEADER_FIELD, 16, "R2T of zero length"));
            }
            PduHeader::R2T(r)
        }
        _ => return Err(TcpError::fatal(fes::INVALID_HEADER_FIELD, offset::PDU_TYPE, "unknown PDU type")),
    };
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(role: Role) -> ReceiveLimits {
        ReceiveLimits { ic_done: true, ..ReceiveLimits::new(role, 1 << 20) }
    }

    fn encode(h: &PduHeader, framing: &Framing, data_len: usize) -> ([u8; HEADER_BUF_LEN], EncodedLayout) {
        let mut buf = [0u8; HEADER_BUF_LEN];
        let l = h.encode(framing, data_len, &mut buf).expect("encode");
        (buf, l)
    }

    fn ch(buf: &[u8]) -> CommonHeader {
        let mut b = [0u8; 8];
        b.copy_from_slice(&buf[..8]);
        CommonHeader::parse(&b)
    }

    fn expect_fatal(r: Result<PduLayout, TcpError>, want_fes: u16, want_fei: u32) {
        match r {
            Err(TcpError::Fatal { fes, fei, .. }) => assert_eq!((fes, fei), (want_fes, want_fei)),
            other => panic!("expected FES {want_fes} FEI {want_fei}, got {other:?}"),
        }
    }

    #[test]
    fn common_header_fields_sit_at_their_offsets() {
        let h =
            PduHeader::C2HData(C2HData { cccid: 0x1234, datao: 8, datal: 100, last: true, success: true });
        let f = Framing { header_digest: true, data_digest: true, data_alignment: 32 };
        let (buf, l) = encode(&h, &f, 100);
        assert_eq!(buf[0], 0x07);
        assert_eq!(buf[1], flags::HDGSTF | flags::DDGSTF | flags::LAST_PDU | flags::SUCCESS);
        assert_eq!(buf[2], 24);
        assert_eq!(buf[3], 32, "24 + 4 digest rounded up to 32");
        assert_eq!(le32(&buf, 4), 32 + 100 + 4);
        assert_eq!(l, EncodedLayout { prefix_len: 32, data_digest: true, plen: 136 });
        assert_eq!(le32(&buf, 24), crc32c::crc32c(&buf[..24]));
        assert_eq!(&buf[28..32], &[0, 0, 0, 0]);
        assert_eq!(le16(&buf, 8), 0x1234);
        assert_eq!(le32(&buf, 12), 8);
        assert_eq!(le32(&buf, 16), 100);
    }

    #[test]
    fn ic_and_term_pdus_never_carry_digests() {
        let f = Framing { header_digest: true, data_digest: true, data_alignment: 4 };
        let (buf, l) =
            encode(&PduHeader::IcReq(IcReq { hpda: 3, header_digest: true, ..Default::default() }), &f, 0);
        assert_eq!((buf[1], l.plen, buf[10], buf[11]), (0, 128, 3, 1));
        let (buf, l) = encode(&PduHeader::C2HTermReq(TermReq { fes: 3, fei: 7 }), &f, 24);
        assert_eq!((buf[1], buf[3], l.plen, l.prefix_len), (0, 0, 48, 24), "PDO is reserved");
        assert_eq!((le16(&buf, 8), le32(&buf, 10)), (3, 7));
    }

    #[test]
    fn term_req_fei_only_where_the_spec_defines_it() {
        let f = Framing::default();
        for (fes, defined) in [(1, true), (2, false), (3, true), (4, false), (5, false), (6, true)] {
            let (buf, l) = encode(&PduHeader::H2CTermReq(TermReq { fes, fei: 0x1234 }), &f, 8);
            assert_eq!(buf[3], 0, "FES {fes}: PDO reserved");
            assert_eq!(l.prefix_len, TERM_REQ_HLEN, "FES {fes}: data follows the header");
            assert_eq!(le32(&buf, 10), if defined { 0x1234 } else { 0 }, "FES {fes}: FEI");
        }
    }

    #[test]
    fn encode_rejects_inconsistent_requests() {
        let f = Framing::default();
        let mut buf = [0u8; HEADER_BUF_LEN];
        let r2t = PduHeader::R2T(R2T { cccid: 1, ttag: 1, r2to: 0, r2tl: 10 });
        assert!(r2t.encode(&f, 10, &mut buf).is_err());
        let d = PduHeader::H2CData(H2CData { datal: 5, ..Default::default() });
        assert!(d.encode(&f, 6, &mut buf).is_err());
        let d = PduHeader::C2HData(C2HData { datal: 5, success: true, ..Default::default() });
        assert!(d.encode(&f, 5, &mut buf).is_err());
        let f = Framing { header_digest: true, data_digest: false, data_alignment: 128 * 4 };
        let c = PduHeader::CapsuleCmd { sqe: Sqe::default() };
        assert!(c.encode(&f, 5, &mut buf).is_err(), "PDO 512 does not fit");
    }

    #[test]
    fn validation_errors_carry_fes_and_fei() {
        let lim = ready(Role::Target);
        let f = Framing::default();
        let (buf, _) = encode(&PduHeader::CapsuleCmd { sqe: Sqe::default() }, &f, 16);
        let good = ch(&buf);
        assert!(validate_common(&good, &lim).is_ok());

        expect_fatal(validate_common(&CommonHeader { pdu_type: 0x08, ..good }, &lim), 1, 0);
        expect_fatal(validate_common(&CommonHeader { pdu_type: 0x05, ..good }, &lim), 1, 0);
        expect_fatal(validate_common(&CommonHeader { hlen: 24, ..good }, &lim), 1, 2);
        expect_fatal(validate_common(&CommonHeader { flags: flags::LAST_PDU, ..good }, &lim), 1, 1);
        expect_fatal(validate_common(&CommonHeader { flags: flags::HDGSTF, ..good }, &lim), 1, 1);
        expect_fatal(validate_common(&CommonHeader { flags: flags::DDGSTF, ..good }, &lim), 1, 1);
        expect_fatal(validate_common(&CommonHeader { pdo: 64, ..good }, &lim), 1, 3);
        expect_fatal(validate_common(&CommonHeader { pdo: 74, ..good }, &lim), 1, 3);
        expect_fatal(validate_common(&CommonHeader { plen: 71, ..good }, &lim), 1, 4);
        expect_fatal(validate_common(&CommonHeader { plen: 2 << 20, ..good }, &lim), 1, 4);
        let aligned = ReceiveLimits { data_alignment: 16, ..lim };
        expect_fatal(validate_common(&good, &aligned), 1, 3);
        let digests = ReceiveLimits { header_digest: true, data_digest: true, ..lim };
        expect_fatal(validate_common(&good, &digests), 1, 1);
        let not_ready = ReceiveLimits { ic_done: false, ..lim };
        expect_fatal(validate_common(&good, &not_ready), 2, 0);
        let (icreq, _) = encode(&PduHeader::IcReq(IcReq::default()), &f, 0);
        expect_fatal(validate_common(&ch(&icreq), &lim), 2, 0);
        assert!(validate_common(&ch(&icreq), &not_ready).is_ok());
        let (resp, _) = encode(&PduHeader::CapsuleResp { cqe: Cqe::default() }, &f, 0);
        expect_fatal(validate_common(&CommonHeader { plen: 30, ..ch(&resp) }, &ready(Role::Host)), 1, 4);
        let (term, _) = encode(&PduHeader::C2HTermReq(TermReq::default()), &f, 0);
        expect_fatal(validate_common(&CommonHeader { plen: 153, ..ch(&term) }, &ready(Role::Host)), 1, 4);
        let (c2h, _) =
            encode(&PduHeader::C2HData(C2HData { datal: 4, last: true, ..Default::default() }), &f, 4);
        expect_fatal(
            validate_common(&CommonHeader { flags: flags::SUCCESS, ..ch(&c2h) }, &ready(Role::Host)),
            1,
            1,
        );
    }

    #[test]
    fn decode_checks_specific_fields() {
        let f = Framing::default();
        let host = ready(Role::Host);
        let (mut buf, _) = encode(&PduHeader::C2HData(C2HData { datal: 4, ..Default::default() }), &f, 4);
        let layout = validate_common(&ch(&buf), &host).unwrap();
        assert!(decode(&buf[..24], &layout, &host).is_ok());
        buf[16] = 5;
        assert!(matches!(decode(&buf[..24], &layout, &host), Err(TcpError::Fatal { fes: 1, fei: 16, .. })));

        let fresh = ReceiveLimits::new(Role::Host, 1 << 20);
        let (mut buf, _) =
            encode(&PduHeader::IcResp(IcResp { maxh2cdata: 4096, ..Default::default() }), &f, 0);
        let layout = validate_common(&ch(&buf), &fresh).unwrap();
        assert!(decode(&buf[..128], &layout, &fresh).is_ok());
        buf[12..16].copy_from_slice(&100u32.to_le_bytes());
        assert!(matches!(decode(&buf[..128], &layout, &fresh), Err(TcpError::Fatal { fes: 6, fei: 12, .. })));
        buf[12..16].copy_from_slice(&4096u32.to_le_bytes());
        buf[10] = 32;
        assert!(matches!(decode(&buf[..128], &layout, &fresh), Err(TcpError::Fatal { fes: 6, fei: 10, .. })));
        buf[10] = 0;
        buf[8] = 1;
        assert!(matches!(decode(&buf[..128], &layout, &fresh), Err(TcpError::Fatal { fes: 6, fei: 8, .. })));

        let target = ReceiveLimits { maxh2cdata: 4096, ..ready(Role::Target) };
        let h = PduHeader::H2CData(H2CData { datal: 8192, ..Default::default() });
        let (buf, _) = encode(&h, &f, 8192);
        let layout = validate_common(&ch(&buf), &target).unwrap();
        assert!(
            matches!(decode(&buf[..24], &layout, &target), Err(TcpError::Fatal { fes: 5, fei: 0, .. })),
            "Data Transfer Limit Exceeded: FEI reserved"
        );

        let dig = ReceiveLimits { header_digest: true, ..host };
        let fd = Framing { header_digest: true, ..f };
        let (mut buf, _) = encode(&PduHeader::R2T(R2T { cccid: 1, ttag: 2, r2to: 0, r2tl: 9 }), &fd, 0);
        let layout = validate_common(&ch(&buf), &dig).unwrap();
        assert!(decode(&buf[..28], &layout, &dig).is_ok());
        buf[9] ^= 1;
        let sent = le32(&buf, 24);
        match decode(&buf[..28], &layout, &dig) {
            Err(TcpError::Fatal { fes: 3, fei, .. }) => assert_eq!(fei, sent, "FEI: the digest received"),
            other => panic!("expected a header digest error, got {other:?}"),
        }
    }
}
