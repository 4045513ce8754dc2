//! The second store: the ring a node hosts for its partner's records, in the
//! same layout ([`super::super::layout`]) and at the same offsets as the
//! partner's first store, so that recovery and a takeover drain read it with
//! the same code (`recovery::open_ring`, then the flusher).
//!
//! The owner side ([`Ring::mirror_image`]) names what to copy for a durable
//! record: its pad header, if it has one, and the record (header and data,
//! one contiguous range). Over RDMA those are one-sided WRITEs at the same
//! offsets. Over TCP the partner's receiver hands them to
//! [`Ring::accept_mirrored`], which checks them as untrusted input (position,
//! sequence, ring instance, epoch, CRC) before writing and persisting them,
//! and answers with the sequence it holds durably through. The owner's
//! `released_seq` frees the copies ([`Ring::release_mirrored`]).
//!
//! A second store is formatted from the owner's superblock bytes and control
//! state ([`Ring::format_mirror`]): the same geometry, ring instance (format
//! nonce) and medium identity. After that its records arrive dense and in
//! sequence order; a record already held (a resend after a reconnect) is
//! acknowledged again and not rewritten.

use super::*;

/// One range to copy into the partner's second store: `bytes` at region
/// offset `offset` (the same offset in both stores).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MirrorWrite<'a> {
    pub offset: usize,
    pub bytes: &'a [u8],
}

/// What to copy for one durable record: the pad header before it (if the
/// record wrapped to offset 0), then the record itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MirrorImage<'a> {
    pub seq: u64,
    pub pad: Option<MirrorWrite<'a>>,
    pub record: MirrorWrite<'a>,
}

/// What the second store did with a mirrored range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// A pad header, persisted; the record it announces comes next.
    Pad,
    /// A record, persisted; every record through `durable_through` is held.
    Record { durable_through: u64 },
    /// A record already held (a resend): nothing written.
    Duplicate { durable_through: u64 },
}

/// Why a mirrored range or a release was refused. Nothing is written for a
/// refused range; the link reports it and the owner resends or resyncs.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum MirrorError {
    #[error("mirrored range of {len} bytes is shorter than a record header ({RECORD_HEADER_BYTES})")]
    Truncated { len: usize },
    #[error("mirrored range at offset {offset}: no record header (bad magic or version)")]
    NoHeader { offset: usize },
    #[error("mirrored record {seq}: ring instance {found:#x}, this second store holds {expected:#x}")]
    OtherRing { seq: u64, found: u64, expected: u64 },
    #[error("mirrored record {seq}: epoch {found}, this second store is at epoch {expected}")]
    Epoch { seq: u64, found: u64, expected: u64 },
    #[error("mirrored record {seq}: expected sequence {expected} next (records arrive dense and in order)")]
    Gap { seq: u64, expected: u64 },
    #[error("mirrored record {seq}: at offset {offset}, expected offset {expected}")]
    Misplaced { seq: u64, offset: usize, expected: usize },
    #[error("mirrored record {seq}: {len} bytes given for a data length of {data_len}")]
    Length { seq: u64, len: usize, data_len: u32 },
    #[error("mirrored record {seq}: {reason}")]
    Shape { seq: u64, reason: &'static str },
    #[error("mirrored record {seq}: CRC mismatch")]
    BadCrc { seq: u64 },
    #[error("mirrored record {seq} needs {needed_bytes} bytes, the second store has {free_bytes} free")]
    Full { seq: u64, needed_bytes: u64, free_bytes: u64 },
    #[error("release through {seq} beyond the records held (through {durable})")]
    ReleaseBeyond { seq: u64, durable: u64 },
    #[error("truncate through {seq}: outside the records held ({released} released, through {durable})")]
    TruncateOutside { seq: u64, released: u64, durable: u64 },
    #[error("second store superblock of {len} bytes, expected {SUPERBLOCK_BYTES}")]
    SuperblockLength { len: usize },
    #[error("second store superblock: {0}")]
    Superblock(#[from] SuperblockError),
    #[error("second store control state: {0}")]
    Control(&'static str),
}

impl<R: PersistentRegion> Ring<R> {
    /// The owner's superblock as stored, for the partner to format its second
    /// store with (`format_mirror`).
    pub fn superblock_bytes(&self) -> &[u8] {
        &self.region.bytes()[..SUPERBLOCK_BYTES]
    }

    /// The control state the second store starts from (epoch, released_seq,
    /// head): with it, every unreleased record can be mirrored afresh.
    pub fn control_state(&self) -> ControlState {
        self.control
    }

    /// What to copy for the durable record `seq`, or None if it is not
    /// durable or no longer staged. A cancelled record is copied as its
    /// header only (its data is never read).
    pub fn mirror_image(&self, seq: u64) -> Option<MirrorImage<'_>> {
        let slot = self.slots.get(self.slot_index(seq)?)?;
        if !matches!(slot.state, SlotState::Durable | SlotState::Written) {
            return None;
        }
        let align = self.geometry.record_align_bytes as usize;
        let bytes = self.region.bytes();
        let pad = (slot.start_pos != slot.record_pos).then(|| {
            let offset = self.area_offset_of(slot.start_pos) + align - RECORD_HEADER_BYTES;
            MirrorWrite { offset, bytes: &bytes[offset..offset + RECORD_HEADER_BYTES] }
        });
        let offset = self.area_offset_of(slot.record_pos) + align - RECORD_HEADER_BYTES;
        let len = RECORD_HEADER_BYTES + if slot.cancelled { 0 } else { slot.data_len };
        Some(MirrorImage { seq, pad, record: MirrorWrite { offset, bytes: &bytes[offset..offset + len] } })
    }

    /// Formats `region` as the second store of the ring whose superblock is
    /// `superblock` and whose control state is `control` (both from the
    /// owner, so both checked): empty, expecting record `released_seq + 1`
    /// at the head. Destroys what the region held.
    pub fn format_mirror(
        region: R,
        superblock: &[u8],
        control: ControlState,
    ) -> Result<Ring<R>, MirrorError> {
        let decoded = Ring::<R>::check_mirror_format(superblock, control, region.len())?;
        Ok(Ring::format_mirror_checked(region, &decoded, superblock, control))
    }

    /// Checks what `format_mirror` would be given, without a region: the
    /// superblock (for a region of `region_bytes`) and the control state.
    pub fn check_mirror_format(
        superblock: &[u8],
        control: ControlState,
        region_bytes: usize,
    ) -> Result<Superblock, MirrorError> {
        if superblock.len() != SUPERBLOCK_BYTES {
            return Err(MirrorError::SuperblockLength { len: superblock.len() });
        }
        let decoded = Superblock::decode(superblock, region_bytes)?;
        let geometry = decoded.geometry;
        let align = geometry.record_align_bytes as u64;
        if control.head_offset >= geometry.area_bytes || !control.head_offset.is_multiple_of(align) {
            return Err(MirrorError::Control("head offset is not an aligned offset inside the area"));
        }
        if control.generation == 0 {
            return Err(MirrorError::Control("generation 0 is never written"));
        }
        Ok(decoded)
    }

    /// `format_mirror` after `check_mirror_format` accepted the same input.
    pub fn format_mirror_checked(
        mut region: R,
        decoded: &Superblock,
        superblock: &[u8],
        control: ControlState,
    ) -> Ring<R> {
        let bytes = region.bytes_mut();
        bytes[..SUPERBLOCK_BYTES].copy_from_slice(&superblock[..SUPERBLOCK_BYTES]);
        bytes[CONTROL_OFFSET..CONTROL_OFFSET + 4096].fill(0);
        control.encode(&mut bytes[ControlState::slot_offset(control.generation)..]);
        region.persist(0, CONTROL_OFFSET + 4096);
        Ring::assemble(region, decoded.clone(), control, &[], 0)
    }

    /// Checks a mirrored range from the partner and, if it is the next pad or
    /// record of this second store, writes and persists it. See the module docs.
    pub fn accept_mirrored(&mut self, offset: usize, bytes: &[u8]) -> Result<Accepted, MirrorError> {
        if bytes.len() < RECORD_HEADER_BYTES {
            return Err(MirrorError::Truncated { len: bytes.len() });
        }
        let header_bytes = &bytes[..RECORD_HEADER_BYTES];
        let header = RecordHeader::decode(header_bytes).ok_or(MirrorError::NoHeader { offset })?;
        let seq = header.seq;
        if header.format_nonce != self.geometry.format_nonce {
            return Err(MirrorError::OtherRing {
                seq,
                found: header.format_nonce,
                expected: self.geometry.format_nonce,
            });
        }
        if header.epoch != self.control.epoch {
            return Err(MirrorError::Epoch { seq, found: header.epoch, expected: self.control.epoch });
        }
        let is_pad = header.flags & FLAG_PAD != 0;
        if seq < self.next_seq {
            // A resend after a reconnect: held already (or released since).
            return Ok(Accepted::Duplicate { durable_through: self.durable_seq });
        }
        if seq != self.next_seq {
            return Err(MirrorError::Gap { seq, expected: self.next_seq });
        }
        let align = self.geometry.record_align_bytes as u64;
        let area = self.geometry.area_bytes;
        let tail_offset = self.tail_pos % area;
        let crc_ok = |data: &[u8]| RecordHeader::crc_matches(header_bytes, data);
        if let (true, Some(pad_start)) = (is_pad, self.pad_start) {
            // The pad again (a resend after the connection dropped between
            // the pad and its record): held already, nothing to write.
            let pad_offset = self.area_offset_of(pad_start) + align as usize - RECORD_HEADER_BYTES;
            let held = &self.region.bytes()[pad_offset..pad_offset + RECORD_HEADER_BYTES];
            if offset == pad_offset && bytes == held {
                return Ok(Accepted::Pad);
            }
            return Err(MirrorError::Shape { seq, reason: "a second pad before the record of the first" });
        }
        let expected = self.area_offset_of(self.tail_pos) + align as usize - RECORD_HEADER_BYTES;
        if offset != expected {
            return Err(MirrorError::Misplaced { seq, offset, expected });
        }
        if is_pad {
            // (A second pad while one is pending was refused above.)
            if tail_offset == 0 || header.data_len != 0 {
                return Err(MirrorError::Shape { seq, reason: "a pad is never at offset 0 and has no data" });
            }
            if bytes.len() != RECORD_HEADER_BYTES {
                return Err(MirrorError::Length { seq, len: bytes.len(), data_len: 0 });
            }
            if !crc_ok(&[]) {
                return Err(MirrorError::BadCrc { seq });
            }
            let pad_bytes = area - tail_offset;
            if pad_bytes > self.free_bytes() {
                return Err(MirrorError::Full {
                    seq,
                    needed_bytes: pad_bytes,
                    free_bytes: self.free_bytes(),
                });
            }
            self.write_mirrored(offset, bytes);
            self.pad_start = Some(self.tail_pos);
            self.tail_pos += pad_bytes;
            self.check_invariants();
            return Ok(Accepted::Pad);
        }
        let cancelled = header.flags & FLAG_CANCELLED != 0;
        let data_len = header.data_len as usize;
        if !header.shape_ok() {
            return Err(MirrorError::Shape {
                seq,
                reason: "partial blocks, data where none belongs (or none where it does), or unknown flags",
            });
        }
        let want_len = RECORD_HEADER_BYTES + if cancelled { 0 } else { data_len };
        if bytes.len() != want_len {
            return Err(MirrorError::Length { seq, len: bytes.len(), data_len: header.data_len });
        }
        if data_len > self.geometry.record_data_bytes_max() {
            return Err(MirrorError::Shape { seq, reason: "data longer than a record can hold" });
        }
        let total = self.geometry.record_total_bytes(data_len);
        if tail_offset + total > area {
            return Err(MirrorError::Shape { seq, reason: "the record would straddle the end of the area" });
        }
        if total > self.free_bytes() {
            return Err(MirrorError::Full { seq, needed_bytes: total, free_bytes: self.free_bytes() });
        }
        if !crc_ok(if cancelled { &[] } else { &bytes[RECORD_HEADER_BYTES..] }) {
            return Err(MirrorError::BadCrc { seq });
        }
        self.write_mirrored(offset, bytes);
        // The record's space starts at its pad, unless a release since freed it.
        let start_pos = self.pad_start.take().map_or(self.tail_pos, |pad| pad.max(self.head_pos));
        self.slots.push_back(Slot {
            seq,
            start_pos,
            record_pos: self.tail_pos,
            data_len,
            state: SlotState::Durable,
            cancelled,
            kind: RecordKind::of_flags(header.flags),
            nsid: header.nsid,
            slba: header.slba,
            nlb: header.nlb,
        });
        self.tail_pos += total;
        self.next_seq += 1;
        self.durable_seq = seq;
        self.written_seq = seq;
        self.check_invariants();
        Ok(Accepted::Record { durable_through: seq })
    }

    fn write_mirrored(&mut self, offset: usize, bytes: &[u8]) {
        self.region.bytes_mut()[offset..offset + bytes.len()].copy_from_slice(bytes);
        self.region.persist(offset, bytes.len());
    }

    /// The owner lost its records after `seq` (never acknowledged: it had
    /// not persisted them): drops them here, keeps the rest. Every dropped
    /// record's header (and its pad's) is cleared and persisted, so no scan
    /// finds them again.
    pub fn truncate_mirrored(&mut self, seq: u64) -> Result<(), MirrorError> {
        if seq < self.control.released_seq || seq > self.durable_seq {
            return Err(MirrorError::TruncateOutside {
                seq,
                released: self.control.released_seq,
                durable: self.durable_seq,
            });
        }
        let align = self.geometry.record_align_bytes as usize;
        let mut first_dropped = None;
        while let Some(slot) = self.slots.back().copied().filter(|slot| slot.seq > seq) {
            self.slots.pop_back();
            // Every dropped record's header (and pad) is cleared: a new record
            // of the same size in a dropped one's place would otherwise make
            // the next dropped one look like its successor to a scan.
            for pos in [slot.start_pos, slot.record_pos] {
                let offset = self.area_offset_of(pos) + align - RECORD_HEADER_BYTES;
                self.region.bytes_mut()[offset..offset + RECORD_HEADER_BYTES].fill(0);
                self.region.persist(offset, RECORD_HEADER_BYTES);
            }
            first_dropped = Some(slot);
        }
        let Some(first) = first_dropped else { return Ok(()) };
        self.tail_pos = first.start_pos;
        self.next_seq = seq + 1;
        self.durable_seq = seq;
        self.written_seq = seq;
        self.pad_start = None;
        self.check_invariants();
        Ok(())
    }

    /// The owner released every record through `seq` (they are on the
    /// medium): frees the copies and persists the control block.
    pub fn release_mirrored(&mut self, seq: u64) -> Result<(), MirrorError> {
        if seq > self.durable_seq {
            return Err(MirrorError::ReleaseBeyond { seq, durable: self.durable_seq });
        }
        self.release_through(seq);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::recovery::{open_ring, Binding};
    use tandem_env::persist::MemRegion;

    const REGION_BYTES: usize = 96 * 1024;

    fn owner() -> Ring<MemRegion> {
        let config = RingConfig {
            owner_node_id: 1,
            created_epoch: 1,
            format_nonce: 0xab,
            record_align_bytes: 4096,
            medium: test_medium(1),
        };
        Ring::format(MemRegion::new(REGION_BYTES), &config).expect("format")
    }

    fn mirror_of(owner: &Ring<MemRegion>) -> Ring<MemRegion> {
        Ring::format_mirror(MemRegion::new(REGION_BYTES), owner.superblock_bytes(), owner.control_state())
            .expect("format the second store")
    }

    fn stage(ring: &mut Ring<MemRegion>, blocks: usize, fill: u8, slba: u64) -> u64 {
        let res = ring.reserve(blocks * 4096).expect("space");
        ring.data_mut(&res).fill(fill);
        ring.commit(res, 1, slba, blocks as u32).seq
    }

    /// Copies record `seq` (pad first) the way the TCP link does.
    fn mirror(owner: &Ring<MemRegion>, second: &mut Ring<MemRegion>, seq: u64) -> Accepted {
        let image = owner.mirror_image(seq).expect("durable");
        if let Some(pad) = image.pad {
            assert_eq!(second.accept_mirrored(pad.offset, pad.bytes), Ok(Accepted::Pad));
        }
        second.accept_mirrored(image.record.offset, image.record.bytes).expect("accepted")
    }

    fn assert_same_records(owner: &Ring<MemRegion>, second: &Ring<MemRegion>) {
        let a: Vec<RecordInfo> = owner.staged_records().collect();
        let b: Vec<RecordInfo> = second.staged_records().collect();
        assert_eq!(a, b, "the second store holds the owner's unreleased records at the same offsets");
        for info in &a {
            assert_eq!(owner.record_data(info), second.record_data(info), "record {}", info.seq);
        }
        assert_eq!(owner.used_bytes(), second.used_bytes());
    }

    #[test]
    fn the_second_store_follows_the_owner_through_wraps_and_releases() {
        let mut owner = owner();
        let mut second = mirror_of(&owner);
        let mut pads = 0;
        for i in 0..200u64 {
            let blocks = 1 + (i * 7 % 3) as usize;
            while owner.free_bytes() < (1 + blocks as u64) * 4096 * 2 {
                let through = owner.released_seq() + 1 + i % 2;
                let through = through.min(owner.durable_seq());
                owner.release_through(through);
                second.release_mirrored(through).expect("release");
                assert_same_records(&owner, &second);
            }
            let seq = stage(&mut owner, blocks, i as u8, i * 4);
            pads += u32::from(owner.mirror_image(seq).is_some_and(|m| m.pad.is_some()));
            assert_eq!(mirror(&owner, &mut second, seq), Accepted::Record { durable_through: seq });
            assert_same_records(&owner, &second);
        }
        assert!(pads > 5, "the test must cross the end of the area with pads ({pads})");
        // Recovery reads the second store with the owner's ring's code.
        let staged: Vec<RecordInfo> = owner.staged_records().collect();
        let (recovered, scan) = open_ring(second.into_region(), 0, &Binding::new(test_medium(1)))
            .expect("recover the second store");
        assert_eq!(scan.records_found, staged.len() as u64);
        assert_eq!(recovered.staged_records().collect::<Vec<_>>(), staged);
    }

    #[test]
    fn a_resend_is_acknowledged_again_and_not_rewritten() {
        let mut owner = owner();
        let mut second = mirror_of(&owner);
        let a = stage(&mut owner, 1, 1, 0);
        let b = stage(&mut owner, 2, 2, 8);
        mirror(&owner, &mut second, a);
        mirror(&owner, &mut second, b);
        let before = second.region().persist_calls();
        let image = owner.mirror_image(a).expect("a");
        assert_eq!(
            second.accept_mirrored(image.record.offset, image.record.bytes),
            Ok(Accepted::Duplicate { durable_through: b })
        );
        assert_eq!(second.region().persist_calls(), before, "nothing rewritten");
    }

    #[test]
    fn bad_mirrored_input_is_refused_and_nothing_is_written() {
        let mut owner = owner();
        let mut second = mirror_of(&owner);
        let first = stage(&mut owner, 1, 1, 0);
        mirror(&owner, &mut second, first);
        let seq = stage(&mut owner, 2, 9, 16);
        let image = owner.mirror_image(seq).expect("durable");
        let (offset, good) = (image.record.offset, image.record.bytes.to_vec());
        let untouched = second.region().bytes().to_vec();
        let refuse = |second: &mut Ring<MemRegion>, offset: usize, bytes: &[u8]| {
            let result = second.accept_mirrored(offset, bytes);
            assert!(result.is_err(), "accepted: {result:?}");
            assert_eq!(second.region().bytes(), &untouched[..], "a refused range wrote: {result:?}");
            assert_eq!(second.durable_seq(), first);
            result.err()
        };
        // Any flipped bit in the header or the data.
        for at in (0..good.len()).step_by(97).chain(0..RECORD_HEADER_BYTES) {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            refuse(&mut second, offset, &bad);
        }
        assert_eq!(refuse(&mut second, offset, &good[..10]), Some(MirrorError::Truncated { len: 10 }));
        assert!(matches!(
            refuse(&mut second, offset, &good[..good.len() - 1]),
            Some(MirrorError::Length { .. })
        ));
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(refuse(&mut second, offset, &long), Some(MirrorError::Length { .. })));
        assert!(matches!(refuse(&mut second, offset + 4096, &good), Some(MirrorError::Misplaced { .. })));
        assert!(matches!(refuse(&mut second, offset - 1, &good), Some(MirrorError::Misplaced { .. })));
        // A record after a gap, and one of another ring instance.
        let later = stage(&mut owner, 1, 3, 32);
        let later_image = owner.mirror_image(later).expect("later");
        let result = refuse(&mut second, later_image.record.offset, later_image.record.bytes);
        assert_eq!(result, Some(MirrorError::Gap { seq: later, expected: seq }));
        let config = RingConfig {
            owner_node_id: 1,
            created_epoch: 1,
            format_nonce: 0xcd,
            record_align_bytes: 4096,
            medium: test_medium(1),
        };
        let mut stranger = Ring::format(MemRegion::new(REGION_BYTES), &config).expect("format");
        let mut stranger_second = mirror_of(&stranger);
        let s1 = stage(&mut stranger, 1, 1, 0);
        let image = stranger.mirror_image(s1).expect("s1");
        assert!(matches!(
            refuse(&mut second, image.record.offset, image.record.bytes),
            Some(MirrorError::OtherRing { found: 0xcd, expected: 0xab, .. })
        ));
        assert_eq!(mirror(&stranger, &mut stranger_second, s1), Accepted::Record { durable_through: s1 });
        // A release beyond what is held.
        assert_eq!(second.release_mirrored(seq), Err(MirrorError::ReleaseBeyond { seq, durable: first }));
        // The good range still goes in afterwards.
        assert_eq!(second.accept_mirrored(offset, &good), Ok(Accepted::Record { durable_through: seq }));
    }

    #[test]
    fn a_second_store_is_formatted_only_from_a_valid_superblock_and_control_state() {
        let owner = owner();
        let mut sb = owner.superblock_bytes().to_vec();
        sb[20] ^= 1;
        let control = owner.control_state();
        assert!(matches!(
            Ring::format_mirror(MemRegion::new(REGION_BYTES), &sb, control),
            Err(MirrorError::Superblock(SuperblockError::BadCrc { .. }))
        ));
        assert!(matches!(
            Ring::format_mirror(MemRegion::new(REGION_BYTES * 2), owner.superblock_bytes(), control),
            Err(MirrorError::Superblock(SuperblockError::BadGeometry { .. }))
        ));
        assert_eq!(
            Ring::format_mirror(MemRegion::new(REGION_BYTES), &sb[..100], control).err(),
            Some(MirrorError::SuperblockLength { len: 100 })
        );
        let bad_head = ControlState { head_offset: 100, ..control };
        assert!(matches!(
            Ring::format_mirror(MemRegion::new(REGION_BYTES), owner.superblock_bytes(), bad_head),
            Err(MirrorError::Control(_))
        ));
    }

    #[test]
    fn random_and_mutated_ranges_never_panic_and_never_write_a_bad_record() {
        let mut owner = owner();
        let mut second = mirror_of(&owner);
        let mut rng = tandem_env::prng::SplitMix64::new(0x5eed);
        let mut held = 0;
        for i in 0..3000u64 {
            if owner.free_bytes() < 3 * 8192 {
                owner.release_through(owner.durable_seq());
                second.release_mirrored(held).expect("release what is held");
            }
            let seq = stage(&mut owner, 1 + (i % 2) as usize, i as u8, i);
            let image = owner.mirror_image(seq).expect("durable");
            let mut bytes = image.record.bytes.to_vec();
            let mut offset = image.record.offset;
            match rng.next_u64() % 4 {
                0 => bytes.truncate((rng.next_u64() as usize) % (bytes.len() + 1)),
                1 => {
                    let at = rng.next_u64() as usize % bytes.len();
                    bytes[at] ^= 1 << (rng.next_u64() % 8);
                }
                2 => offset = rng.next_u64() as usize % (REGION_BYTES * 2),
                _ => bytes = (0..rng.next_u64() % 300).map(|_| rng.next_u64() as u8).collect(),
            }
            let _ = second.accept_mirrored(offset, &bytes);
            // Whatever was refused, the real range (pad first) is still accepted.
            if let Some(pad) = image.pad {
                let _ = second.accept_mirrored(pad.offset, pad.bytes);
            }
            let accepted = second.accept_mirrored(image.record.offset, image.record.bytes);
            assert!(
                matches!(accepted, Ok(Accepted::Record { .. } | Accepted::Duplicate { .. })),
                "{accepted:?}"
            );
            held = second.durable_seq();
            assert_eq!(held, seq);
            assert_same_records(&owner, &second);
        }
    }

    #[test]
    fn a_truncate_drops_the_records_the_owner_lost_and_a_reopen_does_not_find_them() {
        let mut first = owner();
        let mut second = mirror_of(&first);
        for i in 0..5u64 {
            let seq = stage(&mut first, 1 + (i % 2) as usize, i as u8 + 1, i * 4);
            mirror(&first, &mut second, seq);
        }
        assert_eq!(
            second.truncate_mirrored(6),
            Err(MirrorError::TruncateOutside { seq: 6, released: 0, durable: 5 })
        );
        second.truncate_mirrored(3).expect("truncate");
        assert_eq!((second.durable_seq(), second.staged_records().count()), (3, 3));
        // The owner that lost 4 and 5 stages new ones; they land where the old ones were.
        let mut restarted = owner();
        for i in 0..3u64 {
            stage(&mut restarted, 1 + (i % 2) as usize, i as u8 + 1, i * 4);
        }
        let seq = stage(&mut restarted, 2, 0x55, 40);
        mirror(&restarted, &mut second, seq);
        assert_same_records(&restarted, &second);
        // A reopen scans to 4 and stops: the old 5 was cleared.
        let (reopened, _) = crate::ha::recovery::open_second_store(second.into_region()).expect("reopen");
        assert_eq!(reopened.durable_seq(), 4);
        assert_same_records(&restarted, &reopened);
    }
}
