//! The submission queue entry (NVMe Base 2.0, 4.2 "Submission Queue Entry",
//! Figure 88 "Common Command Format"), and the SGL data block descriptor that
//! NVMe over Fabrics uses in its data pointer (NVMe Base 2.0, 4.1.8.2, Figure 115).
//!
//! The entry is kept as its 64 little-endian bytes and read through typed
//! accessors, so that bytes from a host are never reinterpreted in place and
//! every field has exactly one place where its offset is written down.

/// One 64-byte submission queue entry, as it travels in a command capsule.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
pub struct Sqe(pub [u8; 64]);

const _: () = assert!(core::mem::size_of::<Sqe>() == 64);

impl Default for Sqe {
    fn default() -> Self {
        Sqe([0; 64])
    }
}

impl core::fmt::Debug for Sqe {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Sqe")
            .field("opc", &format_args!("{:#04x}", self.opcode()))
            .field("cid", &self.cid())
            .field("nsid", &self.nsid())
            .field("cdw10", &format_args!("{:#x}", self.cdw10()))
            .field("cdw11", &format_args!("{:#x}", self.cdw11()))
            .field("cdw12", &format_args!("{:#x}", self.cdw12()))
            .field("sgl", &self.sgl())
            .finish()
    }
}

macro_rules! dword {
    ($get:ident, $set:ident, $off:expr, $doc:expr) => {
        #[doc = $doc]
        pub fn $get(&self) -> u32 {
            self.u32_at($off)
        }
        #[doc = $doc]
        pub fn $set(&mut self, value: u32) {
            self.put_u32($off, value)
        }
    };
}

impl Sqe {
    /// Builds an entry from the 64 bytes of a capsule.
    pub fn from_bytes(bytes: &[u8; 64]) -> Self {
        Sqe(*bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 64] {
        &self.0
    }

    fn u32_at(&self, offset: usize) -> u32 {
        u32::from_le_bytes([self.0[offset], self.0[offset + 1], self.0[offset + 2], self.0[offset + 3]])
    }

    fn put_u32(&mut self, offset: usize, value: u32) {
        self.0[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }

    fn u64_at(&self, offset: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[offset..offset + 8]);
        u64::from_le_bytes(b)
    }

    fn put_u64(&mut self, offset: usize, value: u64) {
        self.0[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
    }

    /// Opcode (OPC), CDW0 bits 7:0.
    pub fn opcode(&self) -> u8 {
        self.0[0]
    }
    pub fn set_opcode(&mut self, opc: u8) {
        self.0[0] = opc;
    }

    /// Fused operation (FUSE), CDW0 bits 9:8.
    pub fn fuse(&self) -> u8 {
        self.0[1] & 0x3
    }

    /// PRP or SGL for data transfer (PSDT), CDW0 bits 15:14. Fabrics requires
    /// SGLs (01b).
    pub fn psdt(&self) -> u8 {
        self.0[1] >> 6
    }
    pub fn set_psdt(&mut self, psdt: u8) {
        self.0[1] = (self.0[1] & 0x3f) | ((psdt & 0x3) << 6);
    }

    /// Command identifier (CID), CDW0 bits 31:16.
    pub fn cid(&self) -> u16 {
        u16::from_le_bytes([self.0[2], self.0[3]])
    }
    pub fn set_cid(&mut self, cid: u16) {
        self.0[2..4].copy_from_slice(&cid.to_le_bytes());
    }

    /// Fabrics command type (FCTYPE), byte 4 of a Fabrics command (opcode 7Fh);
    /// it overlaps the NSID field of other commands (NVMe-oF 1.1, Figure 9).
    pub fn fctype(&self) -> u8 {
        self.0[4]
    }
    pub fn set_fctype(&mut self, fctype: u8) {
        self.0[4] = fctype;
    }

    dword!(nsid, set_nsid, 4, "Namespace identifier (NSID), bytes 7:4.");
    dword!(cdw2, set_cdw2, 8, "Command dword 2, bytes 11:8.");
    dword!(cdw3, set_cdw3, 12, "Command dword 3, bytes 15:12.");
    dword!(cdw10, set_cdw10, 40, "Command dword 10, bytes 43:40.");
    dword!(cdw11, set_cdw11, 44, "Command dword 11, bytes 47:44.");
    dword!(cdw12, set_cdw12, 48, "Command dword 12, bytes 51:48.");
    dword!(cdw13, set_cdw13, 52, "Command dword 13, bytes 55:52.");
    dword!(cdw14, set_cdw14, 56, "Command dword 14, bytes 59:56.");
    dword!(cdw15, set_cdw15, 60, "Command dword 15, bytes 63:60.");

    /// Metadata pointer (MPTR), bytes 23:16.
    pub fn mptr(&self) -> u64 {
        self.u64_at(16)
    }

    /// The data pointer (DPTR, bytes 39:24) read as SGL descriptor 1.
    pub fn sgl(&self) -> SglDescriptor {
        let mut b = [0u8; 16];
        b.copy_from_slice(&self.0[24..40]);
        SglDescriptor(b)
    }
    pub fn set_sgl(&mut self, sgl: SglDescriptor) {
        self.0[24..40].copy_from_slice(&sgl.0);
    }

    /// Starting LBA of an NVM command (SLBA), CDW11:CDW10.
    pub fn slba(&self) -> u64 {
        self.u64_at(40)
    }
    pub fn set_slba(&mut self, slba: u64) {
        self.put_u64(40, slba)
    }

    /// Number of logical blocks of an NVM read/write/write-zeroes command,
    /// CDW12 bits 15:0, a 0's-based value: the command moves `nlb0 + 1` blocks.
    pub fn nlb0(&self) -> u16 {
        (self.cdw12() & 0xffff) as u16
    }

    /// The number of blocks the command moves (NLB + 1), as u32 so that the
    /// 0's-based value 0xFFFF (65,536 blocks) cannot overflow.
    pub fn block_count(&self) -> u32 {
        u32::from(self.nlb0()) + 1
    }

    /// Force Unit Access (FUA), CDW12 bit 30, of Read and Write.
    pub fn fua(&self) -> bool {
        self.cdw12() & (1 << 30) != 0
    }
}

/// An SGL descriptor (NVMe Base 2.0, 4.1.8, Figure 112): address, length and
/// the identifier byte (descriptor type in bits 7:4, subtype in bits 3:0).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
#[repr(transparent)]
pub struct SglDescriptor(pub [u8; 16]);

const _: () = assert!(core::mem::size_of::<SglDescriptor>() == 16);

impl core::fmt::Debug for SglDescriptor {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Sgl(addr={:#x}, len={}, id={:#04x})", self.address(), self.length(), self.identifier())
    }
}

/// Data Block descriptor with the Offset subtype: data in the capsule, at
/// `address` bytes past the start of in-capsule data (type 0h, subtype 1h).
pub const SGL_ID_DATA_BLOCK_OFFSET: u8 = 0x01;
/// Transport SGL Data Block with the transport-specific subtype Ah: data
/// moved by the transport (NVMe/TCP R2T/H2CData or C2HData; type 5h).
pub const SGL_ID_TRANSPORT_DATA_BLOCK: u8 = 0x5A;
/// Keyed SGL Data Block descriptor (type 4h, subtype Ah invalidate / 0h):
/// NVMe/RDMA memory the target moves with RDMA READ or WRITE.
pub const SGL_ID_KEYED_DATA_BLOCK: u8 = 0x40;

impl SglDescriptor {
    pub fn new(address: u64, length: u32, identifier: u8) -> Self {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&address.to_le_bytes());
        b[8..12].copy_from_slice(&length.to_le_bytes());
        b[15] = identifier;
        SglDescriptor(b)
    }

    pub fn address(&self) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&self.0[0..8]);
        u64::from_le_bytes(a)
    }

    /// Length in bytes (Data Block descriptors).
    pub fn length(&self) -> u32 {
        u32::from_le_bytes([self.0[8], self.0[9], self.0[10], self.0[11]])
    }

    /// SGL identifier, byte 15.
    pub fn identifier(&self) -> u8 {
        self.0[15]
    }

    /// Descriptor type, bits 7:4 of the identifier.
    pub fn descriptor_type(&self) -> u8 {
        self.0[15] >> 4
    }

    /// Descriptor subtype, bits 3:0 of the identifier.
    pub fn subtype(&self) -> u8 {
        self.0[15] & 0xf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_at_their_offsets() {
        let mut s = Sqe::default();
        s.set_opcode(0x01);
        s.set_cid(0xBEEF);
        s.set_nsid(7);
        s.set_slba(0x1122_3344_5566_7788);
        s.set_cdw12(0x4000_00FF);
        s.set_cdw13(1);
        s.set_cdw14(2);
        s.set_cdw15(3);
        s.set_psdt(1);
        s.set_sgl(SglDescriptor::new(0x10, 4096, SGL_ID_DATA_BLOCK_OFFSET));
        assert_eq!(s.0[0], 0x01);
        assert_eq!(&s.0[2..4], &[0xEF, 0xBE]);
        assert_eq!(s.nsid(), 7);
        assert_eq!(s.cdw10(), 0x5566_7788);
        assert_eq!(s.cdw11(), 0x1122_3344);
        assert_eq!(s.slba(), 0x1122_3344_5566_7788);
        assert_eq!(s.nlb0(), 0xFF);
        assert_eq!(s.block_count(), 256);
        assert!(s.fua());
        assert_eq!(s.psdt(), 1);
        assert_eq!(s.0[1], 0x40);
        assert_eq!((s.cdw13(), s.cdw14(), s.cdw15()), (1, 2, 3));
        let sgl = s.sgl();
        assert_eq!((sgl.address(), sgl.length(), sgl.identifier()), (0x10, 4096, 0x01));
        assert_eq!(s.0[24], 0x10);
        assert_eq!(s.0[39], 0x01);
        assert_eq!(Sqe::from_bytes(s.as_bytes()), s);
    }

    #[test]
    fn zeros_based_block_count_does_not_overflow() {
        let mut s = Sqe::default();
        s.set_cdw12(0xFFFF);
        assert_eq!(s.block_count(), 65_536);
        s.set_cdw12(0);
        assert_eq!(s.block_count(), 1);
    }

    #[test]
    fn fctype_overlaps_nsid_byte_zero() {
        let mut s = Sqe::default();
        s.set_opcode(0x7f);
        s.set_fctype(0x01);
        assert_eq!(s.nsid() & 0xff, 1);
    }

    #[test]
    fn sgl_type_and_subtype() {
        let d = SglDescriptor::new(0, 0, SGL_ID_TRANSPORT_DATA_BLOCK);
        assert_eq!((d.descriptor_type(), d.subtype()), (5, 0xA));
    }
}
