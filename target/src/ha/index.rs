//! The read-your-writes index: which LBAs currently have staged, unflushed
//! data in the ring, and where. A read overlays these extents on what the
//! medium returns, so a host always reads its newest acknowledged write.
//!
//! Representation: per namespace, non-overlapping extents keyed by first LBA
//! in a `BTreeMap`; each extent points into one record's data. Inserting a
//! newer record cuts the parts of older extents it covers (partial overlaps
//! leave a left and/or right remainder). Releasing a record removes only the
//! extents that still point at it, since a newer write may have replaced them.
//! Invariant: extents of one namespace never overlap, and every extent lies
//! inside the LBA range of the record it names.
//!
//! Allocation: the map allocates a node when it splits (about once per several
//! inserts); this is the one non-preallocated structure on the write path and
//! a candidate for an arena-backed tree if profiles show it.

use std::collections::BTreeMap;
use std::ops::Range;

/// The `data_offset` of an extent that reads as zeroes: a staged Write
/// Zeroes or Deallocate, which has no data in the ring.
pub const ZEROES: usize = usize::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Extent {
    /// One past the last LBA.
    lba_end: u64,
    seq: u64,
    /// Region offset of the data of this extent's first LBA.
    data_offset: usize,
    block_bytes: u32,
}

/// One staged piece of a read range: LBAs `lbas` of the read come from the
/// ring at `data_offset` (`(lbas.end - lbas.start) * block_bytes` bytes),
/// staged by record `seq`; or, when `data_offset` is [`ZEROES`], read as
/// zeroes (a staged Write Zeroes or Deallocate).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagedExtent {
    pub lbas: Range<u64>,
    pub seq: u64,
    pub data_offset: usize,
    pub block_bytes: u32,
}

impl StagedExtent {
    pub fn byte_len(&self) -> usize {
        (self.lbas.end - self.lbas.start) as usize * self.block_bytes as usize
    }
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct StagingIndex {
    extents: BTreeMap<(u32, u64), Extent>,
}

impl StagingIndex {
    pub fn new() -> StagingIndex {
        StagingIndex::default()
    }

    /// Number of extents (for stats and tests).
    pub fn extent_count(&self) -> usize {
        self.extents.len()
    }

    /// Records that LBAs [slba, slba+nlb) of `nsid` now read from record `seq`
    /// whose data starts at region offset `data_offset`.
    pub fn insert(&mut self, nsid: u32, slba: u64, nlb: u32, seq: u64, data_offset: usize, block_bytes: u32) {
        let start = slba;
        let end = slba + nlb as u64;
        // Cut every older extent that overlaps [start, end). The last extent
        // starting before `end` is the only candidate each round; removing or
        // trimming it exposes the next one.
        while let Some((&(key_nsid, key_start), &old)) = self.extents.range(..(nsid, end)).next_back() {
            if key_nsid != nsid || old.lba_end <= start {
                break;
            }
            assert!(old.seq < seq, "index: record {seq} older than indexed record {}", old.seq);
            self.extents.remove(&(key_nsid, key_start));
            if key_start < start {
                self.extents.insert((nsid, key_start), Extent { lba_end: start, ..old });
            }
            if old.lba_end > end {
                let skip_bytes = (end - key_start) as usize * old.block_bytes as usize;
                let data_offset =
                    if old.data_offset == ZEROES { ZEROES } else { old.data_offset + skip_bytes };
                self.extents.insert((nsid, end), Extent { data_offset, ..old });
            }
        }
        self.extents.insert((nsid, start), Extent { lba_end: end, seq, data_offset, block_bytes });
    }

    /// Removes the extents still pointing at record `seq`, which covered
    /// [slba, slba+nlb) of `nsid`, after the record reached the medium.
    pub fn remove_record(&mut self, nsid: u32, slba: u64, nlb: u32, seq: u64) {
        let mut from = slba;
        let end = slba + nlb as u64;
        while let Some((&key, _)) =
            self.extents.range((nsid, from)..(nsid, end)).find(|(_, extent)| extent.seq == seq)
        {
            self.extents.remove(&key);
            from = key.1 + 1;
        }
    }

    /// The staged extents overlapping [slba, slba+nlb) of `nsid`, clipped to
    /// that range, in LBA order. Gaps between them read from the medium.
    pub fn overlaps(&self, nsid: u32, slba: u64, nlb: u32) -> impl Iterator<Item = StagedExtent> + '_ {
        let start = slba;
        let end = slba.saturating_add(nlb as u64);
        // An extent starting before `start` may reach into the range.
        let left = self
            .extents
            .range(..(nsid, start))
            .next_back()
            .filter(move |(&(key_nsid, _), extent)| key_nsid == nsid && extent.lba_end > start);
        let inside = self.extents.range((nsid, start)..(nsid, end));
        left.into_iter().chain(inside).map(move |(&(_, key_start), extent)| {
            let clip_start = key_start.max(start);
            let clip_end = extent.lba_end.min(end);
            StagedExtent {
                lbas: clip_start..clip_end,
                seq: extent.seq,
                data_offset: if extent.data_offset == ZEROES {
                    ZEROES
                } else {
                    extent.data_offset + (clip_start - key_start) as usize * extent.block_bytes as usize
                },
                block_bytes: extent.block_bytes,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: u32 = 512;

    /// Data offset of LBA `lba` in record `seq` if record data starts at seq * 1 MiB.
    fn offset(seq: u64, slba: u64, lba: u64) -> usize {
        (seq as usize) << 20 | ((lba - slba) as usize * BLOCK as usize)
    }

    fn pieces(index: &StagingIndex, slba: u64, nlb: u32) -> Vec<(Range<u64>, u64, usize)> {
        index.overlaps(1, slba, nlb).map(|e| (e.lbas, e.seq, e.data_offset)).collect()
    }

    #[test]
    fn newer_write_splits_older_extent() {
        let mut index = StagingIndex::new();
        index.insert(1, 0, 16, 1, offset(1, 0, 0), BLOCK);
        index.insert(1, 4, 4, 2, offset(2, 4, 4), BLOCK);
        assert_eq!(
            pieces(&index, 0, 16),
            vec![(0..4, 1, offset(1, 0, 0)), (4..8, 2, offset(2, 4, 4)), (8..16, 1, offset(1, 0, 8))]
        );
        // A read of [6, 10) sees the tail of record 2 and the middle of record 1.
        assert_eq!(pieces(&index, 6, 4), vec![(6..8, 2, offset(2, 4, 6)), (8..10, 1, offset(1, 0, 8))]);
    }

    #[test]
    fn newer_write_spanning_several_extents_replaces_them() {
        let mut index = StagingIndex::new();
        index.insert(1, 0, 4, 1, offset(1, 0, 0), BLOCK);
        index.insert(1, 4, 4, 2, offset(2, 4, 4), BLOCK);
        index.insert(1, 8, 4, 3, offset(3, 8, 8), BLOCK);
        index.insert(1, 2, 8, 4, offset(4, 2, 2), BLOCK);
        assert_eq!(
            pieces(&index, 0, 12),
            vec![(0..2, 1, offset(1, 0, 0)), (2..10, 4, offset(4, 2, 2)), (10..12, 3, offset(3, 8, 10))]
        );
        assert_eq!(index.extent_count(), 3);
    }

    #[test]
    fn release_removes_only_extents_of_that_record() {
        let mut index = StagingIndex::new();
        index.insert(1, 0, 8, 1, offset(1, 0, 0), BLOCK);
        index.insert(1, 2, 2, 2, offset(2, 2, 2), BLOCK);
        index.remove_record(1, 0, 8, 1);
        assert_eq!(pieces(&index, 0, 8), vec![(2..4, 2, offset(2, 2, 2))]);
        // Releasing record 2 after a newer record 3 replaced it leaves 3.
        index.insert(1, 2, 2, 3, offset(3, 2, 2), BLOCK);
        index.remove_record(1, 2, 2, 2);
        assert_eq!(pieces(&index, 0, 8), vec![(2..4, 3, offset(3, 2, 2))]);
        index.remove_record(1, 2, 2, 3);
        assert_eq!(index.extent_count(), 0);
    }

    #[test]
    fn namespaces_do_not_mix() {
        let mut index = StagingIndex::new();
        index.insert(1, 0, 8, 1, offset(1, 0, 0), BLOCK);
        index.insert(2, 0, 8, 2, offset(2, 0, 0), BLOCK);
        assert_eq!(pieces(&index, 0, 8), vec![(0..8, 1, offset(1, 0, 0))]);
        assert_eq!(index.overlaps(3, 0, 8).count(), 0);
        assert_eq!(index.overlaps(2, 7, 1).map(|e| e.seq).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn zero_extents_split_and_clip_without_an_offset() {
        let mut index = StagingIndex::new();
        index.insert(1, 0, 16, 1, offset(1, 0, 0), BLOCK);
        index.insert(1, 4, 4, 2, ZEROES, 0);
        assert_eq!(
            pieces(&index, 0, 16),
            vec![(0..4, 1, offset(1, 0, 0)), (4..8, 2, ZEROES), (8..16, 1, offset(1, 0, 8))]
        );
        // A newer write into the zeroed range splits the zero extent.
        index.insert(1, 5, 1, 3, offset(3, 5, 5), BLOCK);
        assert_eq!(
            pieces(&index, 4, 4),
            vec![(4..5, 2, ZEROES), (5..6, 3, offset(3, 5, 5)), (6..8, 2, ZEROES)]
        );
        index.remove_record(1, 4, 4, 2);
        assert_eq!(pieces(&index, 4, 4), vec![(5..6, 3, offset(3, 5, 5))]);
    }

    #[test]
    fn read_outside_staged_extents_is_empty() {
        let mut index = StagingIndex::new();
        index.insert(1, 10, 4, 1, offset(1, 10, 10), BLOCK);
        assert!(pieces(&index, 0, 10).is_empty());
        assert!(pieces(&index, 14, 10).is_empty());
        assert_eq!(pieces(&index, 13, 10), vec![(13..14, 1, offset(1, 10, 13))]);
    }
}
