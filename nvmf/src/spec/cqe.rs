//! The completion queue entry (NVMe Base 2.0, 4.6 "Completion Queue Entry",
//! Figure 96 "Common Completion Queue Entry Layout").

use super::status::NvmeStatus;

/// One 16-byte completion queue entry, as it travels in a response capsule.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
#[repr(transparent)]
pub struct Cqe(pub [u8; 16]);

const _: () = assert!(core::mem::size_of::<Cqe>() == 16);

impl core::fmt::Debug for Cqe {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Cqe")
            .field("cid", &self.cid())
            .field("status", &self.status())
            .field("dw0", &format_args!("{:#x}", self.dw0()))
            .field("sqhd", &self.sq_head())
            .finish()
    }
}

impl Cqe {
    /// A completion for command `cid` with `status` and command-specific
    /// result dword 0.
    pub fn new(cid: u16, status: NvmeStatus, dw0: u32) -> Self {
        let mut c = Cqe([0; 16]);
        c.set_dw0(dw0);
        c.set_cid(cid);
        c.set_status(status);
        c
    }

    pub fn from_bytes(bytes: &[u8; 16]) -> Self {
        Cqe(*bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Command specific dword 0 (DW0), bytes 3:0.
    pub fn dw0(&self) -> u32 {
        u32::from_le_bytes([self.0[0], self.0[1], self.0[2], self.0[3]])
    }
    pub fn set_dw0(&mut self, v: u32) {
        self.0[0..4].copy_from_slice(&v.to_le_bytes());
    }

    /// Command specific dword 1 (DW1), bytes 7:4. Property Get of an 8-byte
    /// property returns its upper half here.
    pub fn dw1(&self) -> u32 {
        u32::from_le_bytes([self.0[4], self.0[5], self.0[6], self.0[7]])
    }
    pub fn set_dw1(&mut self, v: u32) {
        self.0[4..8].copy_from_slice(&v.to_le_bytes());
    }

    /// SQ head pointer (SQHD), bytes 9:8.
    pub fn sq_head(&self) -> u16 {
        u16::from_le_bytes([self.0[8], self.0[9]])
    }
    pub fn set_sq_head(&mut self, v: u16) {
        self.0[8..10].copy_from_slice(&v.to_le_bytes());
    }

    /// SQ identifier (SQID), bytes 11:10.
    pub fn sq_id(&self) -> u16 {
        u16::from_le_bytes([self.0[10], self.0[11]])
    }
    pub fn set_sq_id(&mut self, v: u16) {
        self.0[10..12].copy_from_slice(&v.to_le_bytes());
    }

    /// Command identifier (CID), bytes 13:12.
    pub fn cid(&self) -> u16 {
        u16::from_le_bytes([self.0[12], self.0[13]])
    }
    pub fn set_cid(&mut self, v: u16) {
        self.0[12..14].copy_from_slice(&v.to_le_bytes());
    }

    /// The status field (bytes 15:14 without the phase tag in bit 0).
    pub fn status(&self) -> NvmeStatus {
        NvmeStatus::from_field(u16::from_le_bytes([self.0[14], self.0[15]]))
    }
    pub fn set_status(&mut self, s: NvmeStatus) {
        let phase = self.0[14] & 1;
        let v = s.to_field() | u16::from(phase);
        self.0[14..16].copy_from_slice(&v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_at_their_offsets() {
        let mut c = Cqe::new(0x1234, NvmeStatus::LBA_OUT_OF_RANGE, 0xAABB_CCDD);
        c.set_dw1(5);
        c.set_sq_head(9);
        c.set_sq_id(2);
        assert_eq!(&c.0[0..4], &[0xDD, 0xCC, 0xBB, 0xAA]);
        assert_eq!(c.dw1(), 5);
        assert_eq!(c.sq_head(), 9);
        assert_eq!(c.sq_id(), 2);
        assert_eq!(c.cid(), 0x1234);
        assert_eq!(c.status(), NvmeStatus::LBA_OUT_OF_RANGE);
        // SC 80h in bits 8:1 of the status half-word, SCT 0.
        assert_eq!(u16::from_le_bytes([c.0[14], c.0[15]]) & 0x1fe, 0x80 << 1);
    }
}
