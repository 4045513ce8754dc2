//! NVM command set I/O command fields beyond the common ones in `Sqe`
//! (NVM Command Set 1.0, 3.2): Dataset Management ranges (Figure 39/40) and
//! the Write Zeroes flags (Figure 64).

/// Dataset Management CDW10 bits 7:0: number of ranges, 0's-based.
pub fn dsm_range_count(cdw10: u32) -> u32 {
    (cdw10 & 0xff) + 1
}

/// Dataset Management CDW11 bit 2: Attribute – Deallocate (AD).
pub fn dsm_deallocate(cdw11: u32) -> bool {
    cdw11 & (1 << 2) != 0
}

/// Write Zeroes CDW12 bit 25: Deallocate (DEAC).
pub fn write_zeroes_deallocate(cdw12: u32) -> bool {
    cdw12 & (1 << 25) != 0
}

/// One Dataset Management range (16 bytes): context attributes (3:0),
/// length in logical blocks (7:4, NOT 0's-based), starting LBA (15:8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(transparent)]
pub struct DsmRange(pub [u8; 16]);

const _: () = assert!(core::mem::size_of::<DsmRange>() == 16);

/// Size of one Dataset Management range.
pub const DSM_RANGE_BYTES: usize = 16;

impl DsmRange {
    pub fn new(slba: u64, block_count: u32) -> Self {
        let mut b = [0u8; 16];
        b[4..8].copy_from_slice(&block_count.to_le_bytes());
        b[8..16].copy_from_slice(&slba.to_le_bytes());
        DsmRange(b)
    }
    pub fn context_attributes(&self) -> u32 {
        u32::from_le_bytes([self.0[0], self.0[1], self.0[2], self.0[3]])
    }
    pub fn block_count(&self) -> u32 {
        u32::from_le_bytes([self.0[4], self.0[5], self.0[6], self.0[7]])
    }
    pub fn slba(&self) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&self.0[8..16]);
        u64::from_le_bytes(a)
    }
    /// The ranges in a DSM data buffer; a trailing partial range is ignored
    /// (the caller checks the buffer length against the range count first).
    pub fn iter(data: &[u8]) -> impl Iterator<Item = DsmRange> + '_ {
        data.chunks_exact(DSM_RANGE_BYTES).map(|c| {
            let mut r = [0u8; 16];
            r.copy_from_slice(c);
            DsmRange(r)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsm_dwords_and_ranges() {
        assert_eq!(dsm_range_count(0), 1, "NR is 0's-based");
        assert_eq!(dsm_range_count(0xff), 256);
        assert!(dsm_deallocate(4));
        assert!(!dsm_deallocate(3));
        assert!(write_zeroes_deallocate(1 << 25));
        let r = DsmRange::new(0x1122_3344_5566, 8);
        assert_eq!(&r.0[4..8], &[8, 0, 0, 0], "length");
        assert_eq!(&r.0[8..14], &[0x66, 0x55, 0x44, 0x33, 0x22, 0x11], "SLBA");
        assert_eq!((r.slba(), r.block_count(), r.context_attributes()), (0x1122_3344_5566, 8, 0));
        let mut data = r.0.to_vec();
        data.extend_from_slice(&DsmRange::new(5, 1).0);
        data.push(0);
        let v: Vec<_> = DsmRange::iter(&data).collect();
        assert_eq!(v, vec![r, DsmRange::new(5, 1)]);
    }
}
