//! Identify data structures (NVMe Base 2.0, 5.17 "Identify command"):
//! the Identify Controller data structure (Figure 275), the NVM Identify
//! Namespace data structure (NVM Command Set 1.0, Figure 97), the Active
//! Namespace ID list (CNS 02h) and the Namespace Identification Descriptor
//! list (CNS 03h, Base 2.0 Figure 274).
//!
//! Each structure is its 4096 wire bytes with typed accessors; a builder
//! fills a zeroed structure field by field, and a host reads it back the
//! same way, so the offsets are written once.

use super::wire::{get_padded, le_field, put_padded};

/// Controller or Namespace Structure (CNS) values, Identify CDW10 bits 7:0.
pub mod cns {
    pub const NAMESPACE: u8 = 0x00;
    pub const CONTROLLER: u8 = 0x01;
    pub const ACTIVE_NAMESPACE_LIST: u8 = 0x02;
    pub const NAMESPACE_ID_DESCRIPTORS: u8 = 0x03;
    /// I/O command set specific Identify Namespace (with CSI in CDW11).
    pub const CSI_NAMESPACE: u8 = 0x05;
    /// I/O command set specific Identify Controller (with CSI in CDW11).
    pub const CSI_CONTROLLER: u8 = 0x06;
}

/// Command Set Identifier of the NVM command set.
pub const CSI_NVM: u8 = 0x00;

/// Size of every Identify data structure.
pub const IDENTIFY_DATA_BYTES: usize = 4096;

/// The Identify command's dwords: CNS (CDW10 7:0), CNTID (CDW10 31:16),
/// CSI (CDW11 31:24).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdentifyCommand {
    pub cns: u8,
    pub cntid: u16,
    pub csi: u8,
}

impl IdentifyCommand {
    pub fn parse(cdw10: u32, cdw11: u32) -> Self {
        IdentifyCommand { cns: cdw10 as u8, cntid: (cdw10 >> 16) as u16, csi: (cdw11 >> 24) as u8 }
    }
    pub fn cdw10(&self) -> u32 {
        u32::from(self.cns) | (u32::from(self.cntid) << 16)
    }
    pub fn cdw11(&self) -> u32 {
        u32::from(self.csi) << 24
    }
}

/// CMIC bits (Identify Controller byte 76).
pub mod cmic {
    /// The NVM subsystem may have two or more ports.
    pub const MULTI_PORT: u8 = 1 << 0;
    /// The NVM subsystem may have two or more controllers.
    pub const MULTI_CONTROLLER: u8 = 1 << 1;
    /// Asymmetric Namespace Access reporting supported.
    pub const ANA_REPORTING: u8 = 1 << 3;
}

/// OAES bits (Identify Controller bytes 95:92), also the AEC feature bits.
pub mod oaes {
    pub const NAMESPACE_ATTRIBUTE_NOTICES: u32 = 1 << 8;
    pub const ANA_CHANGE_NOTICES: u32 = 1 << 11;
    /// NVMe-oF: Discovery Log Page Change notices (discovery controllers).
    pub const DISCOVERY_LOG_CHANGE_NOTICES: u32 = 1 << 31;
}

/// CNTRLTYPE values (byte 111).
pub mod cntrltype {
    pub const IO: u8 = 1;
    pub const DISCOVERY: u8 = 2;
    pub const ADMINISTRATIVE: u8 = 3;
}

/// ONCS bits (bytes 521:520).
pub mod oncs {
    pub const DATASET_MANAGEMENT: u16 = 1 << 2;
    pub const WRITE_ZEROES: u16 = 1 << 3;
    /// The Save field of Set Features and the Select field of Get Features
    /// are supported.
    pub const SAVE_AND_SELECT: u16 = 1 << 4;
}

/// SGLS bits (bytes 539:536).
pub mod sgls {
    /// SGLs supported, no alignment or granularity requirement (01b).
    pub const SUPPORTED: u32 = 0x1;
    /// Keyed SGL Data Block descriptor supported (RDMA).
    pub const KEYED: u32 = 1 << 2;
    /// The Address field of a Data Block descriptor may be an offset
    /// (in-capsule data).
    pub const OFFSET: u32 = 1 << 20;
}

/// The Identify Controller data structure (NVMe Base 2.0, Figure 275), with
/// the Fabrics fields at bytes 2047:1792 (NVMe-oF 1.1, Figure 21).
#[derive(Clone, PartialEq, Eq)]
#[repr(transparent)]
pub struct IdentifyController(pub [u8; IDENTIFY_DATA_BYTES]);

const _: () = assert!(core::mem::size_of::<IdentifyController>() == 4096);

impl Default for IdentifyController {
    fn default() -> Self {
        IdentifyController([0; IDENTIFY_DATA_BYTES])
    }
}

impl core::fmt::Debug for IdentifyController {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IdentifyController")
            .field("cntlid", &self.cntlid())
            .field("subnqn", &self.subnqn())
            .field("cntrltype", &self.cntrltype())
            .finish()
    }
}

impl IdentifyController {
    le_field!(/// PCI Vendor ID (VID), bytes 1:0.
        vid, set_vid, u16, 0);
    le_field!(/// PCI Subsystem Vendor ID (SSVID), bytes 3:2.
        ssvid, set_ssvid, u16, 2);
    le_field!(/// Recommended Arbitration Burst (RAB), byte 72.
        rab, set_rab, u8, 72);
    le_field!(/// Controller Multi-Path I/O and Namespace Sharing Capabilities (CMIC), byte 76.
        cmic, set_cmic, u8, 76);
    le_field!(/// Maximum Data Transfer Size (MDTS), byte 77: 2^n units of CAP.MPSMIN; 0 = no limit.
        mdts, set_mdts, u8, 77);
    le_field!(/// Controller ID (CNTLID), bytes 79:78.
        cntlid, set_cntlid, u16, 78);
    le_field!(/// Version (VER), bytes 83:80, same encoding as the VS property.
        ver, set_ver, u32, 80);
    le_field!(/// Optional Asynchronous Events Supported (OAES), bytes 95:92.
        oaes, set_oaes, u32, 92);
    le_field!(/// Controller Attributes (CTRATT), bytes 99:96.
        ctratt, set_ctratt, u32, 96);
    le_field!(/// Controller Type (CNTRLTYPE), byte 111.
        cntrltype, set_cntrltype, u8, 111);
    le_field!(/// Optional Admin Command Support (OACS), bytes 257:256.
        oacs, set_oacs, u16, 256);
    le_field!(/// Abort Command Limit (ACL), byte 258, 0's-based.
        acl, set_acl, u8, 258);
    le_field!(/// Asynchronous Event Request Limit (AERL), byte 259, 0's-based.
        aerl, set_aerl, u8, 259);
    le_field!(/// Firmware Updates (FRMW), byte 260.
        frmw, set_frmw, u8, 260);
    le_field!(/// Log Page Attributes (LPA), byte 261 (bit 2: extended data for Get Log Page).
        lpa, set_lpa, u8, 261);
    le_field!(/// Error Log Page Entries (ELPE), byte 262, 0's-based.
        elpe, set_elpe, u8, 262);
    le_field!(/// Number of Power States Support (NPSS), byte 263, 0's-based.
        npss, set_npss, u8, 263);
    le_field!(/// Keep Alive Support (KAS), bytes 321:320, granularity in 100 ms units.
        kas, set_kas, u16, 320);
    le_field!(/// ANA Transition Time (ANATT), byte 342, seconds.
        anatt, set_anatt, u8, 342);
    le_field!(/// Asymmetric Namespace Access Capabilities (ANACAP), byte 343.
        anacap, set_anacap, u8, 343);
    le_field!(/// ANA Group Identifier Maximum (ANAGRPMAX), bytes 347:344.
        anagrpmax, set_anagrpmax, u32, 344);
    le_field!(/// Number of ANA Group Identifiers (NANAGRPID), bytes 351:348.
        nanagrpid, set_nanagrpid, u32, 348);
    le_field!(/// Submission Queue Entry Size (SQES), byte 512: max in bits 7:4, required in 3:0 (log2).
        sqes, set_sqes, u8, 512);
    le_field!(/// Completion Queue Entry Size (CQES), byte 513.
        cqes, set_cqes, u8, 513);
    le_field!(/// Maximum Outstanding Commands (MAXCMD), bytes 515:514.
        maxcmd, set_maxcmd, u16, 514);
    le_field!(/// Number of Namespaces (NN), bytes 519:516: the largest valid NSID.
        nn, set_nn, u32, 516);
    le_field!(/// Optional NVM Command Support (ONCS), bytes 521:520.
        oncs, set_oncs, u16, 520);
    le_field!(/// Fused Operation Support (FUSES), bytes 523:522.
        fuses, set_fuses, u16, 522);
    le_field!(/// Format NVM Attributes (FNA), byte 524.
        fna, set_fna, u8, 524);
    le_field!(/// Volatile Write Cache (VWC), byte 525: bit 0 present, bits 2:1 Flush with NSID FFFFFFFFh.
        vwc, set_vwc, u8, 525);
    le_field!(/// SGL Support (SGLS), bytes 539:536.
        sgls, set_sgls, u32, 536);
    le_field!(/// Maximum Number of Allowed Namespaces (MNAN), bytes 543:540.
        mnan, set_mnan, u32, 540);
    le_field!(/// I/O Queue Command Capsule Supported Size (IOCCSZ), bytes 1795:1792, 16-byte units.
        ioccsz, set_ioccsz, u32, 1792);
    le_field!(/// I/O Queue Response Capsule Supported Size (IORCSZ), bytes 1799:1796, 16-byte units.
        iorcsz, set_iorcsz, u32, 1796);
    le_field!(/// In Capsule Data Offset (ICDOFF), bytes 1801:1800, 16-byte units.
        icdoff, set_icdoff, u16, 1800);
    le_field!(/// Fabrics Controller Attributes (FCATT), byte 1802 (bit 0: static controller model).
        fcatt, set_fcatt, u8, 1802);
    le_field!(/// Maximum SGL Data Block Descriptors (MSDBD), byte 1803.
        msdbd, set_msdbd, u8, 1803);

    /// Serial Number (SN), bytes 23:4, ASCII padded with spaces.
    pub fn sn(&self) -> Option<&str> {
        get_padded(&self.0[4..24])
    }
    pub fn set_sn(&mut self, sn: &str) -> &mut Self {
        put_padded(&mut self.0[4..24], sn, b' ');
        self
    }
    /// Model Number (MN), bytes 63:24, ASCII padded with spaces.
    pub fn mn(&self) -> Option<&str> {
        get_padded(&self.0[24..64])
    }
    pub fn set_mn(&mut self, mn: &str) -> &mut Self {
        put_padded(&mut self.0[24..64], mn, b' ');
        self
    }
    /// Firmware Revision (FR), bytes 71:64, ASCII padded with spaces.
    pub fn fr(&self) -> Option<&str> {
        get_padded(&self.0[64..72])
    }
    pub fn set_fr(&mut self, fr: &str) -> &mut Self {
        put_padded(&mut self.0[64..72], fr, b' ');
        self
    }
    /// IEEE OUI Identifier (IEEE), bytes 75:73, least significant byte first.
    pub fn ieee(&self) -> [u8; 3] {
        [self.0[73], self.0[74], self.0[75]]
    }
    pub fn set_ieee(&mut self, oui: [u8; 3]) -> &mut Self {
        self.0[73..76].copy_from_slice(&oui);
        self
    }
    /// NVM Subsystem NVMe Qualified Name (SUBNQN), bytes 1023:768, NUL-padded.
    pub fn subnqn(&self) -> Option<&str> {
        get_padded(&self.0[768..1024])
    }
    pub fn set_subnqn(&mut self, nqn: &str) -> &mut Self {
        put_padded(&mut self.0[768..1024], nqn, 0);
        self
    }
}

/// The NVM command set Identify Namespace data structure (NVM Command Set
/// 1.0, Figure 97).
#[derive(Clone, PartialEq, Eq)]
#[repr(transparent)]
pub struct IdentifyNamespace(pub [u8; IDENTIFY_DATA_BYTES]);

const _: () = assert!(core::mem::size_of::<IdentifyNamespace>() == 4096);

impl Default for IdentifyNamespace {
    fn default() -> Self {
        IdentifyNamespace([0; IDENTIFY_DATA_BYTES])
    }
}

impl core::fmt::Debug for IdentifyNamespace {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IdentifyNamespace")
            .field("nsze", &self.nsze())
            .field("lbads", &self.lbaf0_lbads())
            .field("anagrpid", &self.anagrpid())
            .finish()
    }
}

impl IdentifyNamespace {
    le_field!(/// Namespace Size (NSZE), bytes 7:0, in logical blocks.
        nsze, set_nsze, u64, 0);
    le_field!(/// Namespace Capacity (NCAP), bytes 15:8, in logical blocks.
        ncap, set_ncap, u64, 8);
    le_field!(/// Namespace Utilization (NUSE), bytes 23:16, in logical blocks.
        nuse, set_nuse, u64, 16);
    le_field!(/// Namespace Features (NSFEAT), byte 24.
        nsfeat, set_nsfeat, u8, 24);
    le_field!(/// Number of LBA Formats (NLBAF), byte 25, 0's-based.
        nlbaf, set_nlbaf, u8, 25);
    le_field!(/// Formatted LBA Size (FLBAS), byte 26: bits 3:0 index the LBA format in use.
        flbas, set_flbas, u8, 26);
    le_field!(/// Namespace Multi-path I/O and Namespace Sharing Capabilities (NMIC), byte 30.
        nmic, set_nmic, u8, 30);
    le_field!(/// Deallocate Logical Block Features (DLFEAT), byte 33.
        dlfeat, set_dlfeat, u8, 33);
    le_field!(/// ANA Group Identifier (ANAGRPID), bytes 95:92.
        anagrpid, set_anagrpid, u32, 92);
    le_field!(/// LBA Format 0 Metadata Size (MS), bytes 129:128.
        lbaf0_ms, set_lbaf0_ms, u16, 128);
    le_field!(/// LBA Format 0 LBA Data Size (LBADS), byte 130: log2 of the block size.
        lbaf0_lbads, set_lbaf0_lbads, u8, 130);

    /// Namespace Globally Unique Identifier (NGUID), bytes 119:104.
    pub fn nguid(&self) -> [u8; 16] {
        let mut g = [0u8; 16];
        g.copy_from_slice(&self.0[104..120]);
        g
    }
    pub fn set_nguid(&mut self, nguid: [u8; 16]) -> &mut Self {
        self.0[104..120].copy_from_slice(&nguid);
        self
    }
    /// IEEE Extended Unique Identifier (EUI64), bytes 127:120.
    pub fn eui64(&self) -> [u8; 8] {
        let mut e = [0u8; 8];
        e.copy_from_slice(&self.0[120..128]);
        e
    }
    pub fn set_eui64(&mut self, eui64: [u8; 8]) -> &mut Self {
        self.0[120..128].copy_from_slice(&eui64);
        self
    }
    /// The block size of LBA format 0 in bytes, or `None` if LBADS is not a
    /// sensible shift (below 9 or above 31).
    pub fn lbaf0_block_bytes(&self) -> Option<u32> {
        let s = self.lbaf0_lbads();
        (9..32).contains(&s).then(|| 1u32 << s)
    }
}

/// NMIC bit 0: the namespace may be attached to two or more controllers.
pub const NMIC_SHARED: u8 = 1 << 0;

/// Builds the Active Namespace ID list (CNS 02h): up to 1024 NSIDs greater
/// than `after_nsid`, ascending, zero-padded to 4096 bytes. `nsids` must be
/// ascending (our invariant).
pub fn active_namespace_list(nsids: impl IntoIterator<Item = u32>, after_nsid: u32) -> [u8; 4096] {
    let mut out = [0u8; 4096];
    let mut last = 0u32;
    for (slot, nsid) in out.chunks_exact_mut(4).zip(nsids.into_iter().filter(|&n| n > after_nsid)) {
        assert!(nsid > last, "namespace ids must be ascending");
        last = nsid;
        slot.copy_from_slice(&nsid.to_le_bytes());
    }
    out
}

/// Parses an Active Namespace ID list: the NSIDs before the first zero.
pub fn parse_active_namespace_list(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .take_while(|&n| n != 0)
        .collect()
}

/// Namespace Identifier Type (NIDT) values of a descriptor (Figure 274).
pub mod nidt {
    pub const EUI64: u8 = 0x1;
    pub const NGUID: u8 = 0x2;
    pub const UUID: u8 = 0x3;
    pub const CSI: u8 = 0x4;
}

/// One Namespace Identification Descriptor: type and identifier bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NsIdDescriptor {
    Eui64([u8; 8]),
    Nguid([u8; 16]),
    Uuid([u8; 16]),
    Csi(u8),
}

/// An error parsing a descriptor list from a controller.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentifyError {
    #[error("namespace id descriptor at byte {offset}: type {nidt:#x} with length {nidl} is invalid")]
    BadDescriptor { offset: usize, nidt: u8, nidl: u8 },
    #[error("namespace id descriptor at byte {offset} runs past the end of the list")]
    Truncated { offset: usize },
}

impl NsIdDescriptor {
    fn parts(&self) -> (u8, &[u8]) {
        match self {
            NsIdDescriptor::Eui64(v) => (nidt::EUI64, v),
            NsIdDescriptor::Nguid(v) => (nidt::NGUID, v),
            NsIdDescriptor::Uuid(v) => (nidt::UUID, v),
            NsIdDescriptor::Csi(v) => (nidt::CSI, core::slice::from_ref(v)),
        }
    }
}

/// Builds the Namespace Identification Descriptor list (CNS 03h): each
/// descriptor is NIDT (byte 0), NIDL (byte 1), two reserved bytes, then NIDL
/// identifier bytes; a zero NIDT ends the 4096-byte list.
pub fn ns_id_descriptor_list(descriptors: &[NsIdDescriptor]) -> [u8; 4096] {
    let mut out = [0u8; 4096];
    let mut at = 0;
    for d in descriptors {
        let (t, v) = d.parts();
        // Four descriptors of at most 20 bytes each: far below 4096.
        assert!(at + 4 + v.len() <= out.len());
        out[at] = t;
        out[at + 1] = v.len() as u8;
        out[at + 4..at + 4 + v.len()].copy_from_slice(v);
        at += 4 + v.len();
    }
    out
}

/// Parses a Namespace Identification Descriptor list from a controller.
pub fn parse_ns_id_descriptor_list(bytes: &[u8]) -> Result<Vec<NsIdDescriptor>, IdentifyError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= bytes.len() && bytes[at] != 0 {
        let (t, l) = (bytes[at], bytes[at + 1]);
        let v = bytes.get(at + 4..at + 4 + usize::from(l)).ok_or(IdentifyError::Truncated { offset: at })?;
        let bad = IdentifyError::BadDescriptor { offset: at, nidt: t, nidl: l };
        out.push(match (t, l) {
            (nidt::EUI64, 8) => NsIdDescriptor::Eui64(v.try_into().map_err(|_| bad)?),
            (nidt::NGUID, 16) => NsIdDescriptor::Nguid(v.try_into().map_err(|_| bad)?),
            (nidt::UUID, 16) => NsIdDescriptor::Uuid(v.try_into().map_err(|_| bad)?),
            (nidt::CSI, 1) => NsIdDescriptor::Csi(v[0]),
            _ => return Err(bad),
        });
        at += 4 + usize::from(l);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sets each integer field to a distinct value and checks the bytes at
    /// the spec's offset, one assertion per field.
    #[test]
    fn controller_fields_sit_at_their_offsets() {
        let mut c = IdentifyController::default();
        c.set_vid(0x1122).set_ssvid(0x3344).set_rab(6).set_cmic(0x0b).set_mdts(5).set_cntlid(0x0102);
        c.set_ver(0x0001_0400).set_oaes(0x900).set_ctratt(1).set_cntrltype(2).set_oacs(0x55AA);
        c.set_acl(3).set_aerl(4).set_frmw(0x3).set_lpa(0x4).set_elpe(7).set_npss(0).set_kas(10);
        c.set_anatt(10).set_anacap(0x5f).set_anagrpmax(32).set_nanagrpid(31).set_sqes(0x66);
        c.set_cqes(0x44).set_maxcmd(128).set_nn(9).set_oncs(0x0c).set_fuses(1).set_fna(2).set_vwc(1);
        c.set_sgls(0x10_0005).set_mnan(9).set_ioccsz(516).set_iorcsz(1).set_icdoff(0).set_fcatt(0);
        c.set_msdbd(1);
        let b = &c.0;
        let le16 = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let le32 = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        assert_eq!(le16(0), 0x1122, "VID");
        assert_eq!(le16(2), 0x3344, "SSVID");
        assert_eq!(b[72], 6, "RAB");
        assert_eq!(b[76], 0x0b, "CMIC");
        assert_eq!(b[77], 5, "MDTS");
        assert_eq!(le16(78), 0x0102, "CNTLID");
        assert_eq!(le32(80), 0x0001_0400, "VER");
        assert_eq!(le32(92), 0x900, "OAES");
        assert_eq!(le32(96), 1, "CTRATT");
        assert_eq!(b[111], 2, "CNTRLTYPE");
        assert_eq!(le16(256), 0x55AA, "OACS");
        assert_eq!(b[258], 3, "ACL");
        assert_eq!(b[259], 4, "AERL");
        assert_eq!(b[260], 3, "FRMW");
        assert_eq!(b[261], 4, "LPA");
        assert_eq!(b[262], 7, "ELPE");
        assert_eq!(b[263], 0, "NPSS");
        assert_eq!(le16(320), 10, "KAS");
        assert_eq!(b[342], 10, "ANATT");
        assert_eq!(b[343], 0x5f, "ANACAP");
        assert_eq!(le32(344), 32, "ANAGRPMAX");
        assert_eq!(le32(348), 31, "NANAGRPID");
        assert_eq!(b[512], 0x66, "SQES");
        assert_eq!(b[513], 0x44, "CQES");
        assert_eq!(le16(514), 128, "MAXCMD");
        assert_eq!(le32(516), 9, "NN");
        assert_eq!(le16(520), 0x0c, "ONCS");
        assert_eq!(le16(522), 1, "FUSES");
        assert_eq!(b[524], 2, "FNA");
        assert_eq!(b[525], 1, "VWC");
        assert_eq!(le32(536), 0x10_0005, "SGLS");
        assert_eq!(le32(540), 9, "MNAN");
        assert_eq!(le32(1792), 516, "IOCCSZ");
        assert_eq!(le32(1796), 1, "IORCSZ");
        assert_eq!(le16(1800), 0, "ICDOFF");
        assert_eq!(b[1802], 0, "FCATT");
        assert_eq!(b[1803], 1, "MSDBD");
        // And back through the getters.
        assert_eq!(
            (c.vid(), c.ssvid(), c.cntlid(), c.ver(), c.oaes()),
            (0x1122, 0x3344, 0x0102, 0x10400, 0x900)
        );
        assert_eq!((c.aerl(), c.kas(), c.anagrpmax(), c.nn(), c.sgls()), (4, 10, 32, 9, 0x10_0005));
        assert_eq!((c.ioccsz(), c.msdbd(), c.cmic(), c.mnan()), (516, 1, 0x0b, 9));
    }

    #[test]
    fn controller_strings_are_padded_as_the_spec_says() {
        let mut c = IdentifyController::default();
        c.set_sn("TANDEM0001").set_mn("Tandem").set_fr("0.1.0").set_subnqn("nqn.2026-11.io.tandem:x");
        c.set_ieee([1, 2, 3]);
        assert_eq!(&c.0[4..24], b"TANDEM0001          ", "SN space padded");
        assert_eq!(&c.0[24..30], b"Tandem");
        assert_eq!(c.0[63], b' ', "MN space padded");
        assert_eq!(&c.0[64..72], b"0.1.0   ", "FR space padded");
        assert_eq!(&c.0[73..76], &[1, 2, 3], "IEEE");
        assert_eq!(&c.0[768..791], b"nqn.2026-11.io.tandem:x");
        assert_eq!(c.0[791], 0, "SUBNQN NUL padded");
        assert_eq!((c.sn(), c.mn(), c.fr()), (Some("TANDEM0001"), Some("Tandem"), Some("0.1.0")));
        assert_eq!(c.subnqn(), Some("nqn.2026-11.io.tandem:x"));
        assert_eq!(c.ieee(), [1, 2, 3]);
    }

    #[test]
    fn namespace_fields_sit_at_their_offsets() {
        let mut n = IdentifyNamespace::default();
        n.set_nsze(0x1_0000_0001).set_ncap(0x2_0000_0002).set_nuse(0x3_0000_0003).set_nsfeat(0x8);
        n.set_nlbaf(0).set_flbas(0).set_nmic(1).set_dlfeat(1).set_anagrpid(7).set_lbaf0_ms(0);
        n.set_lbaf0_lbads(12).set_nguid([0xAB; 16]).set_eui64([0xCD; 8]);
        let b = &n.0;
        assert_eq!(u64::from_le_bytes(b[0..8].try_into().unwrap()), 0x1_0000_0001, "NSZE");
        assert_eq!(u64::from_le_bytes(b[8..16].try_into().unwrap()), 0x2_0000_0002, "NCAP");
        assert_eq!(u64::from_le_bytes(b[16..24].try_into().unwrap()), 0x3_0000_0003, "NUSE");
        assert_eq!(b[24], 8, "NSFEAT");
        assert_eq!(b[25], 0, "NLBAF 0's-based: one format");
        assert_eq!(b[26], 0, "FLBAS");
        assert_eq!(b[30], 1, "NMIC");
        assert_eq!(b[33], 1, "DLFEAT");
        assert_eq!(u32::from_le_bytes(b[92..96].try_into().unwrap()), 7, "ANAGRPID");
        assert_eq!(&b[104..120], &[0xAB; 16], "NGUID");
        assert_eq!(&b[120..128], &[0xCD; 8], "EUI64");
        assert_eq!(&b[128..130], &[0, 0], "LBAF0.MS");
        assert_eq!(b[130], 12, "LBAF0.LBADS");
        assert_eq!(n.lbaf0_block_bytes(), Some(4096));
        n.set_lbaf0_lbads(0);
        assert_eq!(n.lbaf0_block_bytes(), None);
        assert_eq!((n.nsze(), n.anagrpid(), n.nguid(), n.eui64()), (0x1_0000_0001, 7, [0xAB; 16], [0xCD; 8]));
    }

    #[test]
    fn identify_dwords() {
        let c = IdentifyCommand::parse(0x0005_0002, 0x0100_0000);
        assert_eq!(c, IdentifyCommand { cns: 2, cntid: 5, csi: 1 });
        assert_eq!((c.cdw10(), c.cdw11()), (0x0005_0002, 0x0100_0000));
    }

    #[test]
    fn active_list_starts_after_the_given_nsid() {
        let l = active_namespace_list([1, 2, 5], 1);
        assert_eq!(&l[0..12], &[2, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(parse_active_namespace_list(&l), vec![2, 5]);
        let full = active_namespace_list(1..=2000, 0);
        assert_eq!(parse_active_namespace_list(&full).len(), 1024, "at most 1024 ids");
    }

    #[test]
    fn descriptor_list_round_trips_and_rejects_bad_lengths() {
        let ds = [
            NsIdDescriptor::Nguid([1; 16]),
            NsIdDescriptor::Uuid([2; 16]),
            NsIdDescriptor::Eui64([3; 8]),
            NsIdDescriptor::Csi(0),
        ];
        let l = ns_id_descriptor_list(&ds);
        assert_eq!(&l[0..4], &[nidt::NGUID, 16, 0, 0]);
        assert_eq!(&l[20..24], &[nidt::UUID, 16, 0, 0]);
        assert_eq!(&l[40..44], &[nidt::EUI64, 8, 0, 0]);
        assert_eq!(&l[52..56], &[nidt::CSI, 1, 0, 0]);
        assert_eq!(parse_ns_id_descriptor_list(&l).unwrap(), ds.to_vec());
        let mut bad = [0u8; 8];
        bad[0] = nidt::NGUID;
        bad[1] = 4;
        assert!(matches!(
            parse_ns_id_descriptor_list(&bad),
            Err(IdentifyError::Truncated { offset: 0 }) | Err(IdentifyError::BadDescriptor { .. })
        ));
        bad[1] = 3;
        assert_eq!(
            parse_ns_id_descriptor_list(&bad),
            Err(IdentifyError::BadDescriptor { offset: 0, nidt: 2, nidl: 3 })
        );
    }
}
