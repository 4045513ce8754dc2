//! Self-describing blocks: how a read proves which write it returns.
//!
//! Every logical block that the load generator (with `--verify`) or the crash
//! checker writes carries a stamp: the LBA it was written to, the id of the
//! writer, the writer's sequence number for that write, and a CRC32C over the
//! whole block. The rest of the block is a pattern derived from the stamp, so a
//! block is fully determined by (lba, writer, seq) and a single flipped bit
//! anywhere is caught by the CRC. A reader can thus tell apart: the expected
//! write, an older or newer write of the same writer, a block written for
//! another LBA (misdirected), a torn or corrupt block, and content that was
//! never ours (zeros, another run).
//!
//! Layout (little-endian), for a block of `len` bytes (a multiple of 8, at
//! least [`STAMP_BLOCK_MIN_BYTES`]):
//! `[0..8)` magic, `[8..16)` lba, `[16..20)` writer id, `[20..24)` block length,
//! `[24..32)` sequence, `[32..len-4)` pattern, `[len-4..len)` CRC32C of `[0..len-4)`.

use crate::prng::mix64;

/// "TNDMBLK1": identifies a stamped block, version 1 of this layout.
pub const STAMP_MAGIC: u64 = u64::from_le_bytes(*b"TNDMBLK1");
const OFFSET_LBA: usize = 8;
const OFFSET_WRITER: usize = 16;
const OFFSET_LEN: usize = 20;
const OFFSET_SEQ: usize = 24;
const OFFSET_PATTERN: usize = 32;
const CRC_BYTES: usize = 4;
/// The smallest block we stamp: the header, one pattern word and the CRC.
pub const STAMP_BLOCK_MIN_BYTES: usize = 64;
const _: () = assert!(OFFSET_PATTERN + 8 + CRC_BYTES <= STAMP_BLOCK_MIN_BYTES);

/// What a stamped block says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Stamp {
    pub lba: u64,
    pub writer_id: u32,
    pub seq: u64,
}

impl std::fmt::Display for Stamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "write {} of writer {} for LBA {}", self.seq, self.writer_id, self.lba)
    }
}

/// What a block read back turned out to hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// A valid stamp (which may still be the wrong one).
    Stamp(Stamp),
    /// Every byte zero: a deallocated or never-written block.
    Zeros,
    /// No stamp magic: content that is not a stamped block.
    Unstamped,
    /// The stamp magic, but the CRC or the length field does not match: a torn
    /// or corrupted block.
    Corrupt { stored_crc: u32, computed_crc: u32 },
}

impl std::fmt::Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Found::Stamp(stamp) => write!(f, "{stamp}"),
            Found::Zeros => write!(f, "all zeros"),
            Found::Unstamped => write!(f, "unstamped data"),
            Found::Corrupt { stored_crc, computed_crc } => {
                write!(f, "a corrupt block (crc stored {stored_crc:#010x}, computed {computed_crc:#010x})")
            }
        }
    }
}

/// A block that did not hold the write it should have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("verify mismatch at LBA {lba}: expected write {expected_seq} of writer {writer_id}, found {found}")]
pub struct BlockMismatch {
    pub lba: u64,
    pub writer_id: u32,
    pub expected_seq: u64,
    pub found: Found,
}

/// Whether `len` is a block length we can stamp.
pub fn stampable(len: usize) -> bool {
    len >= STAMP_BLOCK_MIN_BYTES && len.is_multiple_of(8)
}

fn u64_at(block: &[u8], offset: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&block[offset..offset + 8]);
    u64::from_le_bytes(word)
}

fn u32_at(block: &[u8], offset: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&block[offset..offset + 4]);
    u32::from_le_bytes(word)
}

/// Writes `stamp` into `block`, which must be [`stampable`] (our invariant:
/// callers size their buffers from a checked block size).
pub fn stamp_block(block: &mut [u8], stamp: Stamp) {
    let len = block.len();
    assert!(stampable(len), "block of {len} bytes cannot carry a stamp");
    block[..8].copy_from_slice(&STAMP_MAGIC.to_le_bytes());
    block[OFFSET_LBA..OFFSET_LBA + 8].copy_from_slice(&stamp.lba.to_le_bytes());
    block[OFFSET_WRITER..OFFSET_WRITER + 4].copy_from_slice(&stamp.writer_id.to_le_bytes());
    block[OFFSET_LEN..OFFSET_LEN + 4].copy_from_slice(&(len as u32).to_le_bytes());
    block[OFFSET_SEQ..OFFSET_SEQ + 8].copy_from_slice(&stamp.seq.to_le_bytes());
    // The pattern is a cheap function of the stamp so the whole block carries
    // information (a stale sector in the middle of a block changes the CRC).
    let mut word = mix64(stamp.lba ^ mix64(stamp.seq ^ (u64::from(stamp.writer_id) << 32)));
    let pattern_end = len - CRC_BYTES;
    let mut offset = OFFSET_PATTERN;
    while offset < pattern_end {
        let take = (pattern_end - offset).min(8);
        block[offset..offset + take].copy_from_slice(&word.to_le_bytes()[..take]);
        word = mix64(word);
        offset += take;
    }
    let crc = crc32c::crc32c(&block[..pattern_end]);
    block[pattern_end..].copy_from_slice(&crc.to_le_bytes());
}

/// Stamps each block of `buf` (a whole number of `block_size` blocks): block
/// `i` gets LBA `slba + i`, all with the same writer and sequence.
pub fn stamp_blocks(buf: &mut [u8], block_size: usize, slba: u64, writer_id: u32, seq: u64) {
    assert!(buf.len().is_multiple_of(block_size), "buffer is not a whole number of blocks");
    for (i, block) in buf.chunks_exact_mut(block_size).enumerate() {
        stamp_block(block, Stamp { lba: slba + i as u64, writer_id, seq });
    }
}

/// Reads what `block` holds. Never panics, whatever the bytes.
pub fn read_block(block: &[u8]) -> Found {
    let len = block.len();
    if !stampable(len) {
        return if block.iter().all(|&b| b == 0) { Found::Zeros } else { Found::Unstamped };
    }
    if u64_at(block, 0) != STAMP_MAGIC {
        return if block.iter().all(|&b| b == 0) { Found::Zeros } else { Found::Unstamped };
    }
    let pattern_end = len - CRC_BYTES;
    let stored_crc = u32_at(block, pattern_end);
    let computed_crc = crc32c::crc32c(&block[..pattern_end]);
    if stored_crc != computed_crc || u32_at(block, OFFSET_LEN) as usize != len {
        return Found::Corrupt { stored_crc, computed_crc };
    }
    Found::Stamp(Stamp {
        lba: u64_at(block, OFFSET_LBA),
        writer_id: u32_at(block, OFFSET_WRITER),
        seq: u64_at(block, OFFSET_SEQ),
    })
}

/// Checks that `block` holds exactly `expected`.
pub fn check_block(block: &[u8], expected: Stamp) -> Result<(), BlockMismatch> {
    match read_block(block) {
        Found::Stamp(found) if found == expected => Ok(()),
        found => Err(BlockMismatch {
            lba: expected.lba,
            writer_id: expected.writer_id,
            expected_seq: expected.seq,
            found,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_for_common_block_sizes() {
        for len in [512usize, 520, 4096] {
            let mut block = vec![0u8; len];
            let stamp = Stamp { lba: 0x1234_5678_9abc, writer_id: 7, seq: 99 };
            stamp_block(&mut block, stamp);
            assert_eq!(read_block(&block), Found::Stamp(stamp));
            assert_eq!(check_block(&block, stamp), Ok(()));
        }
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let mut block = vec![0u8; 512];
        let stamp = Stamp { lba: 5, writer_id: 1, seq: 3 };
        stamp_block(&mut block, stamp);
        for bit in 0..block.len() * 8 {
            block[bit / 8] ^= 1 << (bit % 8);
            let verdict = check_block(&block, stamp);
            assert!(verdict.is_err(), "flip of bit {bit} went unnoticed");
            block[bit / 8] ^= 1 << (bit % 8);
        }
        assert_eq!(check_block(&block, stamp), Ok(()));
    }

    #[test]
    fn mismatches_name_lba_expected_and_found() {
        let mut block = vec![0u8; 512];
        stamp_block(&mut block, Stamp { lba: 10, writer_id: 2, seq: 4 });
        let err = check_block(&block, Stamp { lba: 10, writer_id: 2, seq: 5 }).unwrap_err();
        assert_eq!(err.found, Found::Stamp(Stamp { lba: 10, writer_id: 2, seq: 4 }));
        let text = err.to_string();
        assert!(
            text.contains("LBA 10") && text.contains("expected write 5") && text.contains("write 4"),
            "{text}"
        );

        let misdirected = check_block(&block, Stamp { lba: 11, writer_id: 2, seq: 4 }).unwrap_err();
        assert_eq!(misdirected.found, Found::Stamp(Stamp { lba: 10, writer_id: 2, seq: 4 }));
    }

    #[test]
    fn zeros_garbage_and_torn_blocks_are_classified() {
        let zeros = vec![0u8; 512];
        assert_eq!(read_block(&zeros), Found::Zeros);
        let garbage: Vec<u8> = (0..512u32).map(|i| (i * 31 + 7) as u8).collect();
        assert_eq!(read_block(&garbage), Found::Unstamped);
        // A torn block: the first half of a new write over the second half of an old one.
        let mut old = vec![0u8; 512];
        let mut new = vec![0u8; 512];
        stamp_block(&mut old, Stamp { lba: 1, writer_id: 1, seq: 1 });
        stamp_block(&mut new, Stamp { lba: 1, writer_id: 1, seq: 2 });
        new[256..].copy_from_slice(&old[256..]);
        assert!(matches!(read_block(&new), Found::Corrupt { .. }));
        // Odd lengths and tiny slices are input, not invariants: no panic.
        assert_eq!(read_block(&[1, 2, 3]), Found::Unstamped);
        assert_eq!(read_block(&[]), Found::Zeros);
    }

    #[test]
    fn stamp_blocks_numbers_consecutive_lbas() {
        let mut buf = vec![0u8; 4 * 512];
        stamp_blocks(&mut buf, 512, 100, 3, 8);
        for (i, block) in buf.chunks_exact(512).enumerate() {
            assert_eq!(read_block(block), Found::Stamp(Stamp { lba: 100 + i as u64, writer_id: 3, seq: 8 }));
        }
    }
}
