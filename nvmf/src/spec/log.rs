//! Log pages (NVMe Base 2.0, 5.16 "Get Log Page command"): the command's
//! dwords (Figures 197-200), Error Information (01h, Figure 205), SMART /
//! Health Information (02h, Figure 207), Firmware Slot Information (03h,
//! Figure 209), Changed Namespace List (04h,
//! Figure 210), Asymmetric Namespace Access (0Ch, Figures 225-227), and the
//! NVMe-oF Discovery log page (70h, NVMe-oF 1.1 Figures 31-32).
//!
//! Builders produce the whole page; `GetLogPage::window` then cuts out the
//! offset and length the host asked for, so offset handling is in one place.

use super::status::NvmeStatus;
use super::wire::{get_padded, le_field, put_padded};

/// Log page identifiers (LID).
pub mod lid {
    pub const ERROR_INFORMATION: u8 = 0x01;
    pub const SMART_HEALTH: u8 = 0x02;
    pub const FIRMWARE_SLOT: u8 = 0x03;
    pub const CHANGED_NAMESPACE_LIST: u8 = 0x04;
    pub const ANA: u8 = 0x0C;
    pub const DISCOVERY: u8 = 0x70;
}

/// The Get Log Page command's fields: LID (CDW10 7:0), LSP (CDW10 14:8),
/// RAE (CDW10 15), NUMDL (CDW10 31:16), NUMDU (CDW11 15:0), LSI (CDW11
/// 31:16), LPOL (CDW12), LPOU (CDW13), CSI (CDW14 31:24).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GetLogPage {
    pub lid: u8,
    pub lsp: u8,
    /// Retain Asynchronous Event: when clear, reading the page clears the
    /// event that pointed to it.
    pub rae: bool,
    /// Number of dwords, 0's-based on the wire; stored here as the real count.
    pub dword_count: u32,
    pub lsi: u16,
    /// Offset in bytes.
    pub offset_bytes: u64,
    pub csi: u8,
}

/// ANA log LSP bit 0: Return Groups Only (RGO), no NSID lists.
pub const ANA_LSP_RGO: u8 = 1 << 0;

impl GetLogPage {
    pub fn parse(cdw10: u32, cdw11: u32, cdw12: u32, cdw13: u32, cdw14: u32) -> Self {
        let numd0 = (cdw10 >> 16) | ((cdw11 & 0xffff) << 16);
        GetLogPage {
            lid: cdw10 as u8,
            lsp: ((cdw10 >> 8) & 0x7f) as u8,
            rae: cdw10 & (1 << 15) != 0,
            // 0's-based 32-bit value: the widest count, 2^32 dwords, fits u64
            // bytes; u32 suffices for the count itself except FFFFFFFFh, which
            // saturates (no page is that large).
            dword_count: numd0.saturating_add(1),
            lsi: (cdw11 >> 16) as u16,
            offset_bytes: u64::from(cdw12) | (u64::from(cdw13) << 32),
            csi: (cdw14 >> 24) as u8,
        }
    }

    /// The command dwords 10..=14 of this request.
    pub fn to_dwords(&self) -> [u32; 5] {
        let numd0 = self.dword_count.saturating_sub(1);
        [
            u32::from(self.lid)
                | (u32::from(self.lsp & 0x7f) << 8)
                | (u32::from(self.rae) << 15)
                | (numd0 << 16),
            (numd0 >> 16) | (u32::from(self.lsi) << 16),
            self.offset_bytes as u32,
            (self.offset_bytes >> 32) as u32,
            u32::from(self.csi) << 24,
        ]
    }

    /// The transfer length in bytes.
    pub fn length_bytes(&self) -> u64 {
        u64::from(self.dword_count) * 4
    }

    /// Copies the requested window of `page` into `out` (cleared first):
    /// exactly `length_bytes()` bytes, zero-filled past the page's end.
    /// An offset that is not a dword multiple or lies past the page gives
    /// Invalid Field in Command, as the spec requires.
    pub fn window(&self, page: &[u8], out: &mut Vec<u8>) -> Result<(), NvmeStatus> {
        if !self.offset_bytes.is_multiple_of(4) || self.offset_bytes > page.len() as u64 {
            return Err(NvmeStatus::INVALID_FIELD);
        }
        let start = self.offset_bytes as usize;
        let len = usize::try_from(self.length_bytes()).map_err(|_| NvmeStatus::INVALID_FIELD)?;
        let avail = (page.len() - start).min(len);
        out.clear();
        out.extend_from_slice(&page[start..start + avail]);
        out.resize(len, 0);
        Ok(())
    }
}

/// One Error Information log entry (64 bytes, Figure 205).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(transparent)]
pub struct ErrorInfoEntry(pub [u8; 64]);

const _: () = assert!(core::mem::size_of::<ErrorInfoEntry>() == 64);

impl Default for ErrorInfoEntry {
    fn default() -> Self {
        ErrorInfoEntry([0; 64])
    }
}

impl ErrorInfoEntry {
    le_field!(/// Error Count, bytes 7:0 (0 means the entry is empty).
        error_count, set_error_count, u64, 0);
    le_field!(/// Submission Queue ID, bytes 9:8.
        sqid, set_sqid, u16, 8);
    le_field!(/// Command ID, bytes 11:10.
        cid, set_cid, u16, 10);
    le_field!(/// Status Field, bytes 13:12 (with the phase tag bit 0).
        status_field, set_status_field, u16, 12);
    le_field!(/// Namespace, bytes 27:24.
        nsid, set_nsid, u32, 24);
}

/// The SMART / Health Information log page (512 bytes, Figure 207).
#[derive(Clone, PartialEq, Eq, Debug)]
#[repr(transparent)]
pub struct SmartLog(pub [u8; 512]);

const _: () = assert!(core::mem::size_of::<SmartLog>() == 512);

impl Default for SmartLog {
    fn default() -> Self {
        SmartLog([0; 512])
    }
}

impl SmartLog {
    le_field!(/// Critical Warning, byte 0.
        critical_warning, set_critical_warning, u8, 0);
    le_field!(/// Composite Temperature, bytes 2:1, kelvin.
        composite_temperature_k, set_composite_temperature_k, u16, 1);
    le_field!(/// Available Spare, byte 3, percent.
        available_spare_pct, set_available_spare_pct, u8, 3);
    le_field!(/// Available Spare Threshold, byte 4, percent.
        available_spare_threshold_pct, set_available_spare_threshold_pct, u8, 4);
    le_field!(/// Percentage Used, byte 5.
        percentage_used, set_percentage_used, u8, 5);
}

/// Size of the Firmware Slot Information log page (Figure 209).
pub const FIRMWARE_SLOT_BYTES: usize = 512;

/// Builds the Firmware Slot Information log page (03h, NVMe Base 2.0,
/// Figure 209) of a controller with one firmware slot, slot 1, active and
/// running `revision` (the same text as Identify Controller FR): AFI
/// (byte 0) bits 2:0 = 1 (active slot), bits 6:4 = 0 (no other slot
/// chosen for the next reset); FRS1 (bytes 15:8) the revision, ASCII padded
/// with spaces; FRS2..FRS7 zero (no such slots).
pub fn firmware_slot_log(revision: &str) -> [u8; FIRMWARE_SLOT_BYTES] {
    let mut out = [0u8; FIRMWARE_SLOT_BYTES];
    out[0] = 1;
    put_padded(&mut out[8..16], revision, b' ');
    out
}

/// Size of the Changed Namespace List log page: 1024 NSIDs.
pub const CHANGED_NAMESPACE_LIST_BYTES: usize = 4096;

/// Builds the Changed Namespace List (04h): up to 1024 NSIDs, or a first
/// entry of FFFFFFFFh when more than 1024 changed.
pub fn changed_namespace_list(nsids: &[u32]) -> [u8; CHANGED_NAMESPACE_LIST_BYTES] {
    let mut out = [0u8; CHANGED_NAMESPACE_LIST_BYTES];
    if nsids.len() > 1024 {
        out[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        return out;
    }
    for (slot, nsid) in out.chunks_exact_mut(4).zip(nsids) {
        slot.copy_from_slice(&nsid.to_le_bytes());
    }
    out
}

/// ANA states (Figure 227, the ANA State field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum AnaState {
    Optimized = 0x1,
    NonOptimized = 0x2,
    Inaccessible = 0x3,
    PersistentLoss = 0x4,
    Change = 0xF,
}

impl AnaState {
    pub fn from_u8(v: u8) -> Option<AnaState> {
        Some(match v {
            0x1 => AnaState::Optimized,
            0x2 => AnaState::NonOptimized,
            0x3 => AnaState::Inaccessible,
            0x4 => AnaState::PersistentLoss,
            0xF => AnaState::Change,
            _ => return None,
        })
    }
}

/// Size of the ANA log page header (Figure 225).
pub const ANA_HEADER_BYTES: usize = 16;
/// Size of an ANA group descriptor without its NSID list (Figure 226).
pub const ANA_GROUP_DESCRIPTOR_BYTES: usize = 32;

/// One ANA group descriptor as built or parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnaGroupDescriptor {
    pub anagrpid: u32,
    pub change_count: u64,
    pub state: AnaState,
    /// Empty when the page was read with Return Groups Only.
    pub nsids: Vec<u32>,
}

/// Appends an ANA log page to `out`: header (change count, bytes 7:0;
/// number of descriptors, bytes 9:8), then per group ANAGRPID (3:0), number
/// of NSIDs (7:4), change count (15:8), state (byte 16 bits 3:0), and the
/// NSID list from byte 32, omitted with Return Groups Only.
pub fn build_ana_log<'a>(
    change_count: u64,
    groups: impl ExactSizeIterator<Item = (u32, AnaState, &'a [u32])>,
    groups_only: bool,
    out: &mut Vec<u8>,
) {
    let start = out.len();
    out.resize(start + ANA_HEADER_BYTES, 0);
    out[start..start + 8].copy_from_slice(&change_count.to_le_bytes());
    out[start + 8..start + 10].copy_from_slice(&(groups.len() as u16).to_le_bytes());
    for (grp, state, nsids) in groups {
        let d = out.len();
        out.resize(d + ANA_GROUP_DESCRIPTOR_BYTES, 0);
        let listed: &[u32] = if groups_only { &[] } else { nsids };
        out[d..d + 4].copy_from_slice(&grp.to_le_bytes());
        out[d + 4..d + 8].copy_from_slice(&(listed.len() as u32).to_le_bytes());
        out[d + 8..d + 16].copy_from_slice(&change_count.to_le_bytes());
        out[d + 16] = state as u8;
        for n in listed {
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
}

/// An error parsing a log page received from a controller.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LogError {
    #[error("log page truncated: {needed_bytes} bytes needed at offset {offset}, {len_bytes} present")]
    Truncated { offset: usize, needed_bytes: usize, len_bytes: usize },
    #[error("ANA group {anagrpid} has invalid state {state:#x}")]
    BadAnaState { anagrpid: u32, state: u8 },
}

fn need(bytes: &[u8], offset: usize, n: usize) -> Result<&[u8], LogError> {
    bytes.get(offset..offset + n).ok_or(LogError::Truncated {
        offset,
        needed_bytes: n,
        len_bytes: bytes.len(),
    })
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Parses an ANA log page: the change count and the group descriptors.
pub fn parse_ana_log(bytes: &[u8]) -> Result<(u64, Vec<AnaGroupDescriptor>), LogError> {
    let h = need(bytes, 0, ANA_HEADER_BYTES)?;
    let change_count = le64(h);
    let ngroups = u16::from_le_bytes([h[8], h[9]]);
    let mut at = ANA_HEADER_BYTES;
    let mut groups = Vec::with_capacity(usize::from(ngroups));
    for _ in 0..ngroups {
        let d = need(bytes, at, ANA_GROUP_DESCRIPTOR_BYTES)?;
        let anagrpid = le32(d);
        let count = le32(&d[4..]) as usize;
        let state = AnaState::from_u8(d[16] & 0xf).ok_or(LogError::BadAnaState { anagrpid, state: d[16] })?;
        at += ANA_GROUP_DESCRIPTOR_BYTES;
        let list = need(bytes, at, count.saturating_mul(4))?;
        let nsids = list.chunks_exact(4).map(le32).collect();
        at += count * 4;
        groups.push(AnaGroupDescriptor { anagrpid, change_count: le64(&d[8..]), state, nsids });
    }
    Ok((change_count, groups))
}

/// Size of the discovery log page header and of each entry.
pub const DISCOVERY_HEADER_BYTES: usize = 1024;
pub const DISCOVERY_ENTRY_BYTES: usize = 1024;

/// Transport types (TRTYPE).
pub mod trtype {
    pub const RDMA: u8 = 1;
    pub const FC: u8 = 2;
    pub const TCP: u8 = 3;
}

/// Address families (ADRFAM).
pub mod adrfam {
    pub const IPV4: u8 = 1;
    pub const IPV6: u8 = 2;
}

/// Subsystem types (SUBTYPE) of a discovery log entry.
pub mod subtype {
    /// A referral to another discovery service.
    pub const DISCOVERY_REFERRAL: u8 = 1;
    pub const NVM: u8 = 2;
    /// The discovery subsystem the host is talking to.
    pub const CURRENT_DISCOVERY: u8 = 3;
}

/// TREQ: secure channel not specified (bits 1:0 = 00b); bit 2: the
/// controller supports disabling SQ flow control.
pub const TREQ_NOT_SPECIFIED: u8 = 0x0;
pub const TREQ_SQ_FLOW_CONTROL_DISABLE: u8 = 1 << 2;

/// One Discovery Log Page entry (NVMe-oF 1.1, Figure 32).
#[derive(Clone, PartialEq, Eq)]
#[repr(transparent)]
pub struct DiscoveryEntry(pub [u8; DISCOVERY_ENTRY_BYTES]);

const _: () = assert!(core::mem::size_of::<DiscoveryEntry>() == 1024);

impl Default for DiscoveryEntry {
    fn default() -> Self {
        DiscoveryEntry([0; DISCOVERY_ENTRY_BYTES])
    }
}

impl core::fmt::Debug for DiscoveryEntry {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DiscoveryEntry")
            .field("subtype", &self.subtype())
            .field("subnqn", &self.subnqn())
            .field("traddr", &self.traddr())
            .field("trsvcid", &self.trsvcid())
            .field("portid", &self.portid())
            .finish()
    }
}

impl DiscoveryEntry {
    le_field!(/// Transport Type (TRTYPE), byte 0.
        trtype, set_trtype, u8, 0);
    le_field!(/// Address Family (ADRFAM), byte 1.
        adrfam, set_adrfam, u8, 1);
    le_field!(/// Subsystem Type (SUBTYPE), byte 2.
        subtype, set_subtype, u8, 2);
    le_field!(/// Transport Requirements (TREQ), byte 3.
        treq, set_treq, u8, 3);
    le_field!(/// Port ID (PORTID), bytes 5:4.
        portid, set_portid, u16, 4);
    le_field!(/// Controller ID (CNTLID), bytes 7:6; FFFFh for the dynamic model.
        cntlid, set_cntlid, u16, 6);
    le_field!(/// Admin Max SQ Size (ASQSZ), bytes 9:8.
        asqsz, set_asqsz, u16, 8);
    le_field!(/// Entry Flags (EFLAGS), bytes 11:10.
        eflags, set_eflags, u16, 10);

    /// Transport Service Identifier (TRSVCID), bytes 63:32, e.g. the port "4420".
    pub fn trsvcid(&self) -> Option<&str> {
        get_padded(&self.0[32..64])
    }
    pub fn set_trsvcid(&mut self, s: &str) -> &mut Self {
        put_padded(&mut self.0[32..64], s, 0);
        self
    }
    /// NVM Subsystem Qualified Name (SUBNQN), bytes 511:256.
    pub fn subnqn(&self) -> Option<&str> {
        get_padded(&self.0[256..512])
    }
    pub fn set_subnqn(&mut self, s: &str) -> &mut Self {
        put_padded(&mut self.0[256..512], s, 0);
        self
    }
    /// Transport Address (TRADDR), bytes 767:512.
    pub fn traddr(&self) -> Option<&str> {
        get_padded(&self.0[512..768])
    }
    pub fn set_traddr(&mut self, s: &str) -> &mut Self {
        put_padded(&mut self.0[512..768], s, 0);
        self
    }
    /// Transport Specific Address Subtype (TSAS), bytes 1023:768. For TCP,
    /// byte 0 is SECTYPE (0 = no security).
    pub fn tsas(&self) -> &[u8] {
        &self.0[768..1024]
    }
    pub fn tsas_mut(&mut self) -> &mut [u8] {
        &mut self.0[768..1024]
    }
}

/// Appends the discovery log header: Generation Counter (bytes 7:0),
/// Number of Records (15:8), Record Format (17:16, 0).
pub fn build_discovery_header(generation: u64, records: u64, out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + DISCOVERY_HEADER_BYTES, 0);
    out[start..start + 8].copy_from_slice(&generation.to_le_bytes());
    out[start + 8..start + 16].copy_from_slice(&records.to_le_bytes());
}

/// Parses a discovery log page: generation counter and entries. A page
/// shorter than its record count claims is an error.
pub fn parse_discovery_log(bytes: &[u8]) -> Result<(u64, Vec<DiscoveryEntry>), LogError> {
    let h = need(bytes, 0, DISCOVERY_HEADER_BYTES)?;
    let records = le64(&h[8..]);
    let mut out = Vec::new();
    for i in 0..records {
        let at = usize::try_from(i).unwrap_or(usize::MAX).saturating_mul(DISCOVERY_ENTRY_BYTES)
            + DISCOVERY_HEADER_BYTES;
        let e = need(bytes, at, DISCOVERY_ENTRY_BYTES)?;
        let mut d = DiscoveryEntry::default();
        d.0.copy_from_slice(e);
        out.push(d);
    }
    Ok((le64(h), out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_log_page_dwords() {
        // LID 0Ch, LSP 1 (RGO), RAE, NUMDL 0x0003 (4 dwords), NUMDU 0, LSI 9,
        // offset 0x1_0000_0008, CSI 0.
        let g = GetLogPage::parse(0x0003_810C, 0x0009_0000, 8, 1, 0);
        assert_eq!(g.lid, 0x0C, "LID");
        assert_eq!(g.lsp, 1, "LSP");
        assert!(g.rae, "RAE");
        assert_eq!(g.dword_count, 4, "NUMD is 0's-based");
        assert_eq!(g.lsi, 9, "LSI");
        assert_eq!(g.offset_bytes, 0x1_0000_0008, "LPOL/LPOU");
        assert_eq!(g.to_dwords(), [0x0003_810C, 0x0009_0000, 8, 1, 0]);
        let big = GetLogPage::parse(0xFFFF_0002, 0x0000_0001, 0, 0, 0x0100_0000);
        assert_eq!(big.dword_count, 0x2_0000, "NUMDU holds the upper 16 bits");
        assert_eq!(big.csi, 1, "CSI");
        assert_eq!(GetLogPage::parse(0xFFFF_0002, 0xFFFF, 0, 0, 0).dword_count, u32::MAX, "saturates");
    }

    #[test]
    fn window_honours_offset_and_length() {
        let page: Vec<u8> = (0u8..16).collect();
        let mut out = Vec::new();
        let g = GetLogPage { dword_count: 2, offset_bytes: 4, ..Default::default() };
        g.window(&page, &mut out).unwrap();
        assert_eq!(out, vec![4, 5, 6, 7, 8, 9, 10, 11]);
        let g = GetLogPage { dword_count: 4, offset_bytes: 12, ..Default::default() };
        g.window(&page, &mut out).unwrap();
        assert_eq!(out, vec![12, 13, 14, 15, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let g = GetLogPage { dword_count: 1, offset_bytes: 2, ..Default::default() };
        assert_eq!(g.window(&page, &mut out), Err(NvmeStatus::INVALID_FIELD));
        let g = GetLogPage { dword_count: 1, offset_bytes: 20, ..Default::default() };
        assert_eq!(g.window(&page, &mut out), Err(NvmeStatus::INVALID_FIELD));
    }

    #[test]
    fn ana_log_layout_and_round_trip() {
        let mut out = Vec::new();
        let g1: &[u32] = &[1, 3];
        let g2: &[u32] = &[2];
        build_ana_log(
            7,
            [(1, AnaState::Optimized, g1), (2, AnaState::Change, g2)].into_iter(),
            false,
            &mut out,
        );
        assert_eq!(out.len(), 16 + 32 + 8 + 32 + 4);
        assert_eq!(&out[0..8], &7u64.to_le_bytes(), "change count");
        assert_eq!(&out[8..10], &[2, 0], "number of descriptors");
        assert_eq!(&out[16..20], &[1, 0, 0, 0], "ANAGRPID");
        assert_eq!(&out[20..24], &[2, 0, 0, 0], "NNSID");
        assert_eq!(&out[24..32], &7u64.to_le_bytes(), "descriptor change count");
        assert_eq!(out[32], 0x1, "ANA state");
        assert_eq!(&out[48..56], &[1, 0, 0, 0, 3, 0, 0, 0], "NSID list");
        assert_eq!(out[56 + 16], 0xF);
        let (cc, groups) = parse_ana_log(&out).unwrap();
        assert_eq!(cc, 7);
        assert_eq!(
            groups[1],
            AnaGroupDescriptor { anagrpid: 2, change_count: 7, state: AnaState::Change, nsids: vec![2] }
        );
        out.clear();
        build_ana_log(1, [(1, AnaState::Inaccessible, g1)].into_iter(), true, &mut out);
        assert_eq!(out.len(), 16 + 32, "RGO omits the NSID lists");
        assert_eq!(&out[20..24], &[0, 0, 0, 0]);
        assert!(matches!(parse_ana_log(&out[..40]), Err(LogError::Truncated { .. })));
        out[32] = 9;
        assert_eq!(parse_ana_log(&out), Err(LogError::BadAnaState { anagrpid: 1, state: 9 }));
    }

    #[test]
    fn discovery_entry_fields() {
        let mut e = DiscoveryEntry::default();
        e.set_trtype(trtype::TCP).set_adrfam(adrfam::IPV4).set_subtype(subtype::NVM).set_treq(4);
        e.set_portid(0x0102).set_cntlid(0xFFFF).set_asqsz(32).set_eflags(3);
        e.set_trsvcid("4420").set_subnqn("nqn.x").set_traddr("127.0.0.1");
        e.tsas_mut()[0] = 0;
        let b = &e.0;
        assert_eq!(b[0], 3, "TRTYPE");
        assert_eq!(b[1], 1, "ADRFAM");
        assert_eq!(b[2], 2, "SUBTYPE");
        assert_eq!(b[3], 4, "TREQ");
        assert_eq!(&b[4..6], &[2, 1], "PORTID");
        assert_eq!(&b[6..8], &[0xff, 0xff], "CNTLID");
        assert_eq!(&b[8..10], &[32, 0], "ASQSZ");
        assert_eq!(&b[10..12], &[3, 0], "EFLAGS");
        assert_eq!(&b[32..36], b"4420", "TRSVCID");
        assert_eq!(&b[256..261], b"nqn.x", "SUBNQN");
        assert_eq!(&b[512..521], b"127.0.0.1", "TRADDR");
        assert_eq!((e.trsvcid(), e.subnqn(), e.traddr()), (Some("4420"), Some("nqn.x"), Some("127.0.0.1")));
        let mut page = Vec::new();
        build_discovery_header(5, 1, &mut page);
        assert_eq!(&page[0..8], &5u64.to_le_bytes(), "GENCTR");
        assert_eq!(&page[8..16], &1u64.to_le_bytes(), "NUMREC");
        assert_eq!(&page[16..18], &[0, 0], "RECFMT");
        page.extend_from_slice(&e.0);
        let (gen, entries) = parse_discovery_log(&page).unwrap();
        assert_eq!((gen, entries), (5, vec![e]));
        assert!(parse_discovery_log(&page[..1500]).is_err());
    }

    #[test]
    fn smart_error_and_changed_list() {
        let mut s = SmartLog::default();
        s.set_critical_warning(1).set_composite_temperature_k(300).set_available_spare_pct(100);
        s.set_available_spare_threshold_pct(10).set_percentage_used(2);
        assert_eq!(&s.0[0..6], &[1, 0x2c, 0x01, 100, 10, 2]);
        let mut e = ErrorInfoEntry::default();
        e.set_error_count(1).set_sqid(2).set_cid(3).set_status_field(4).set_nsid(5);
        assert_eq!(&e.0[0..14], &[1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 3, 0, 4, 0]);
        assert_eq!(&e.0[24..28], &[5, 0, 0, 0]);
        let l = changed_namespace_list(&[3, 9]);
        assert_eq!(&l[0..12], &[3, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0]);
        let many: Vec<u32> = (1..=1025).collect();
        assert_eq!(&changed_namespace_list(&many)[0..8], &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
    }
}
