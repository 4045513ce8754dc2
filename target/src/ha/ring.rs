//! The staging ring: the first store of a node, laid out inside a
//! [`PersistentRegion`]. A host write is reserved here, its data lands straight
//! in the record, and the write may be acknowledged once the record is durable
//! (the mirror adds the second store in a later layer). The flusher later writes
//! the record to the medium and releases it.
//!
//! The on-media layout (superblock, control block, record headers) lives in
//! [`super::layout`], shared with recovery and, later, the partner's second store.
//!
//! Invariants (asserted): released_seq <= durable_seq < next_seq;
//! head_pos <= tail_pos <= head_pos + area_bytes; the slot table holds exactly
//! the sequences released_seq+1 .. next_seq-1, in order.

use std::collections::VecDeque;
use tandem_env::persist::PersistentRegion;

use super::layout::*;

mod second_store;
pub use second_store::{Accepted, MirrorError, MirrorImage, MirrorWrite};

/// Errors of the ring: the region cannot hold a ring, or a caller asked for
/// something the ring cannot do now.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum RingError {
    #[error(
        "region of {region_bytes} bytes is too small for a staging ring (needs at least {needed_bytes})"
    )]
    RegionTooSmall { region_bytes: usize, needed_bytes: usize },
    #[error("record alignment {align_bytes} must be a power of two between 4096 and 1 MiB")]
    BadAlignment { align_bytes: u32 },
    #[error("epoch {requested} is not newer than the current epoch {current}")]
    EpochNotNewer { requested: u64, current: u64 },
    #[error("cannot begin a new epoch with records staged: released through {released_seq}, last sequence {last_seq}")]
    NotDrained { released_seq: u64, last_seq: u64 },
}

/// Why a reservation was refused. `RingFull` is back-pressure, not an error for
/// the host: the caller parks the command and retries when space frees.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReserveError {
    #[error("staging ring full: {needed_bytes} bytes needed, {free_bytes} free")]
    RingFull { needed_bytes: u64, free_bytes: u64 },
    #[error("record of {data_bytes} data bytes exceeds the maximum of {data_bytes_max}")]
    RecordTooLarge { data_bytes: usize, data_bytes_max: usize },
    #[error("a record must carry at least one byte of data")]
    Empty,
}

/// A reserved record, consumed by [`Ring::commit`] or [`Ring::cancel`]. Every
/// reservation must be consumed: until it is, records after it cannot become
/// durable (sequences are dense). Not `Clone`, so it is consumed at most once.
#[must_use = "a reservation must be committed or cancelled, or the ring stalls"]
#[derive(Debug, PartialEq, Eq)]
pub struct Reservation {
    seq: u64,
    data_len: usize,
}

impl Reservation {
    pub fn seq(&self) -> u64 {
        self.seq
    }
    pub fn data_len(&self) -> usize {
        self.data_len
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    /// Reserved; data may be arriving.
    Reserved,
    /// `commit`/`cancel` called; the header waits for earlier records.
    Ready,
    /// Header written after every earlier one; not persisted yet (deferred
    /// persist: the mirror may send it meanwhile).
    Written,
    /// Header and data persisted.
    Durable,
}

/// What the ring knows about one unreleased record.
#[derive(Clone, Copy, Debug)]
struct Slot {
    seq: u64,
    /// Logical position where this record's space starts (its pad, if any).
    start_pos: u64,
    /// Logical position of the record's first (header) block.
    record_pos: u64,
    data_len: usize,
    state: SlotState,
    cancelled: bool,
    kind: RecordKind,
    nsid: u32,
    slba: u64,
    nlb: u32,
}

/// A committed record as the flusher and the index see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordInfo {
    pub seq: u64,
    pub nsid: u32,
    pub slba: u64,
    pub nlb: u32,
    pub data_len: usize,
    /// Region offset of the first data byte.
    pub data_offset: usize,
    pub cancelled: bool,
    /// Data, or a Write Zeroes / Deallocate of `nlb` blocks (no data).
    pub kind: RecordKind,
    pub durable: bool,
}

/// What a commit changed: the sequences `newly_durable` (possibly empty) just
/// became durable, in order; each may now be acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitOutcome {
    pub seq: u64,
    pub newly_durable: std::ops::RangeInclusive<u64>,
}

/// A record recovered by the scan in `open` (see `recovery`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecoveredRecord {
    pub header: RecordHeader,
    /// Logical position where the record's space starts (its pad if any).
    pub start_pos: u64,
    pub record_pos: u64,
}

/// The staging ring over a persistent region; see the module docs.
pub struct Ring<R: PersistentRegion> {
    region: R,
    geometry: Geometry,
    /// The medium the superblock binds this ring to (`None`: a version-1 ring
    /// that recorded none).
    medium: Option<MediumIdentity>,
    control: ControlState,
    /// All sequences <= this are durable (header and data persisted).
    durable_seq: u64,
    /// All sequences <= this have their header written (>= durable_seq).
    written_seq: u64,
    /// Commit writes headers only; `persist_written` persists them (the
    /// owner of a mirrored ring sends records before persisting them).
    deferred_persist: bool,
    /// The sequence the next reservation gets.
    next_seq: u64,
    /// Logical byte positions: offset in the area = pos % area_bytes.
    head_pos: u64,
    tail_pos: u64,
    /// Unreleased records released_seq+1 .. next_seq-1, preallocated.
    slots: VecDeque<Slot>,
    record_data_bytes_max: usize,
    /// Second store only: where a mirrored pad started, until its record arrives.
    pad_start: Option<u64>,
}

impl<R: PersistentRegion> Ring<R> {
    /// Lays out a new, empty ring in `region` (destroying what it held) and
    /// persists superblock and control block.
    pub fn format(mut region: R, config: &RingConfig) -> Result<Ring<R>, RingError> {
        let geometry = Geometry::for_region(region.len(), config)?;
        let bytes = region.bytes_mut();
        Superblock::encode(&geometry, &config.medium, &mut bytes[..SUPERBLOCK_BYTES]);
        // Zero the whole control block: stale slots of an earlier ring must not
        // outrank the new generation.
        bytes[CONTROL_OFFSET..CONTROL_OFFSET + 4096].fill(0);
        let control =
            ControlState { generation: 1, epoch: config.created_epoch, released_seq: 0, head_offset: 0 };
        control.encode(&mut bytes[ControlState::slot_offset(1)..]);
        region.persist(0, CONTROL_OFFSET + 4096);
        let superblock = Superblock { geometry, medium: Some(config.medium.clone()) };
        Ok(Ring::assemble(region, superblock, control, &[], 0))
    }

    /// Builds the in-memory state from a validated superblock, control state
    /// and the chain of valid records after `released_seq` (from recovery).
    pub(crate) fn assemble(
        region: R,
        superblock: Superblock,
        control: ControlState,
        recovered: &[RecoveredRecord],
        tail_pos: u64,
    ) -> Ring<R> {
        let Superblock { geometry, medium } = superblock;
        // A Write Zeroes or Deallocate record takes one aligned block.
        let slots_max = (geometry.area_bytes / geometry.record_align_bytes as u64) as usize;
        let mut slots = VecDeque::with_capacity(slots_max);
        for record in recovered {
            slots.push_back(Slot {
                seq: record.header.seq,
                start_pos: record.start_pos,
                record_pos: record.record_pos,
                data_len: record.header.data_len as usize,
                state: SlotState::Durable,
                cancelled: record.header.flags & FLAG_CANCELLED != 0,
                kind: RecordKind::of_flags(record.header.flags),
                nsid: record.header.nsid,
                slba: record.header.slba,
                nlb: record.header.nlb,
            });
        }
        let last_seq = control.released_seq + recovered.len() as u64;
        let head_pos = control.head_offset;
        let tail_pos = if recovered.is_empty() { head_pos } else { tail_pos };
        let ring = Ring {
            record_data_bytes_max: geometry.record_data_bytes_max(),
            region,
            geometry,
            medium,
            control,
            durable_seq: last_seq,
            written_seq: last_seq,
            deferred_persist: false,
            next_seq: last_seq + 1,
            head_pos,
            tail_pos,
            slots,
            pad_start: None,
        };
        ring.check_invariants();
        ring
    }

    fn check_invariants(&self) {
        assert!(self.control.released_seq <= self.durable_seq, "released beyond durable");
        assert!(self.durable_seq <= self.written_seq, "durable beyond written");
        assert!(self.written_seq < self.next_seq, "written beyond reserved");
        assert!(self.head_pos <= self.tail_pos, "ring head beyond tail");
        assert!(self.tail_pos - self.head_pos <= self.geometry.area_bytes, "ring over-full");
        assert_eq!(
            self.slots.len() as u64,
            self.next_seq - 1 - self.control.released_seq,
            "slot table not dense"
        );
        if let Some(first) = self.slots.front() {
            assert_eq!(first.seq, self.control.released_seq + 1, "slot table does not start after released");
        }
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }
    /// The medium this ring stages for, as its superblock records it.
    pub fn medium(&self) -> Option<&MediumIdentity> {
        self.medium.as_ref()
    }
    pub fn epoch(&self) -> u64 {
        self.control.epoch
    }
    pub fn released_seq(&self) -> u64 {
        self.control.released_seq
    }
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }
    /// The sequence number the next reservation will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
    /// Ring bytes held by unreleased records (including pads).
    pub fn used_bytes(&self) -> u64 {
        self.tail_pos - self.head_pos
    }
    pub fn free_bytes(&self) -> u64 {
        self.geometry.area_bytes - self.used_bytes()
    }
    /// Largest data length a single record may carry.
    pub fn record_data_bytes_max(&self) -> usize {
        self.record_data_bytes_max
    }
    /// Limits records to `bytes` of data (e.g. MDTS), so a flusher buffer
    /// always holds a whole record.
    pub fn set_record_data_bytes_max(&mut self, bytes: usize) {
        self.record_data_bytes_max = bytes.min(self.geometry.record_data_bytes_max());
    }
    pub fn region(&self) -> &R {
        &self.region
    }
    /// Gives the region back (tests use it to simulate a crash and reopen).
    pub fn into_region(self) -> R {
        self.region
    }

    fn area_offset_of(&self, pos: u64) -> usize {
        (self.geometry.area_offset + pos % self.geometry.area_bytes) as usize
    }

    fn slot_index(&self, seq: u64) -> Option<usize> {
        let first = self.control.released_seq + 1;
        (seq >= first && seq < self.next_seq).then(|| (seq - first) as usize)
    }

    /// Reserves space for a record of `data_len` bytes. No allocation; O(1).
    pub fn reserve(&mut self, data_len: usize) -> Result<Reservation, ReserveError> {
        if data_len == 0 {
            return Err(ReserveError::Empty);
        }
        self.reserve_bytes(data_len)
    }

    /// Reserves a record without data, for a Write Zeroes or Deallocate
    /// ([`Ring::commit_op`]).
    pub fn reserve_op(&mut self) -> Result<Reservation, ReserveError> {
        self.reserve_bytes(0)
    }

    fn reserve_bytes(&mut self, data_len: usize) -> Result<Reservation, ReserveError> {
        if data_len > self.record_data_bytes_max || data_len > u32::MAX as usize {
            return Err(ReserveError::RecordTooLarge {
                data_bytes: data_len,
                data_bytes_max: self.record_data_bytes_max,
            });
        }
        let total = self.geometry.record_total_bytes(data_len);
        let area = self.geometry.area_bytes;
        let tail_offset = self.tail_pos % area;
        // A record never straddles the end: skip to offset 0 behind a pad.
        let pad = if tail_offset + total > area { area - tail_offset } else { 0 };
        let needed = pad + total;
        if needed > self.free_bytes() {
            return Err(ReserveError::RingFull { needed_bytes: needed, free_bytes: self.free_bytes() });
        }
        let seq = self.next_seq;
        self.slots.push_back(Slot {
            seq,
            start_pos: self.tail_pos,
            record_pos: self.tail_pos + pad,
            data_len,
            state: SlotState::Reserved,
            cancelled: false,
            kind: RecordKind::Data,
            nsid: 0,
            slba: 0,
            nlb: 0,
        });
        self.tail_pos += needed;
        self.next_seq += 1;
        self.check_invariants();
        Ok(Reservation { seq, data_len })
    }

    /// The data area of a reserved record, for the transport to receive into.
    pub fn data_mut(&mut self, reservation: &Reservation) -> &mut [u8] {
        let index = self.slot_index(reservation.seq).expect("reservation of this ring");
        let slot = self.slots[index];
        assert_eq!(slot.state, SlotState::Reserved, "data_mut after commit");
        let start = self.area_offset_of(slot.record_pos) + self.geometry.record_align_bytes as usize;
        &mut self.region.bytes_mut()[start..start + slot.data_len]
    }

    /// Commits a reserved record whose data is in place: `nlb` blocks from
    /// `slba` of namespace `nsid`. The header is written and header+data
    /// persisted (one persist call) as soon as every earlier record is durable;
    /// the outcome says which sequences became durable (and may be acknowledged).
    pub fn commit(&mut self, reservation: Reservation, nsid: u32, slba: u64, nlb: u32) -> CommitOutcome {
        assert!(reservation.data_len > 0, "a data record without data");
        self.commit_kind(reservation, RecordKind::Data, nsid, slba, nlb)
    }

    /// Commits a record reserved with [`Ring::reserve_op`] as a Write Zeroes
    /// or Deallocate of `nlb` blocks from `slba`. It is ordered, persisted
    /// and acknowledged like a write.
    pub fn commit_op(
        &mut self,
        reservation: Reservation,
        kind: RecordKind,
        nsid: u32,
        slba: u64,
        nlb: u32,
    ) -> CommitOutcome {
        assert!(kind.is_op() && reservation.data_len == 0 && nlb > 0, "an op record is blocks and no data");
        self.commit_kind(reservation, kind, nsid, slba, nlb)
    }

    fn commit_kind(
        &mut self,
        reservation: Reservation,
        kind: RecordKind,
        nsid: u32,
        slba: u64,
        nlb: u32,
    ) -> CommitOutcome {
        let index = self.slot_index(reservation.seq).expect("reservation of this ring");
        let slot = &mut self.slots[index];
        assert_eq!(slot.state, SlotState::Reserved, "record committed twice");
        slot.kind = kind;
        slot.state = SlotState::Ready;
        slot.nsid = nsid;
        slot.slba = slba;
        slot.nlb = nlb;
        self.advance_durable(reservation.seq)
    }

    /// Abandons a reservation (the command failed before its data arrived).
    /// The record keeps its sequence number, marked cancelled, and is never
    /// written to the medium.
    pub fn cancel(&mut self, reservation: Reservation) -> CommitOutcome {
        let index = self.slot_index(reservation.seq).expect("reservation of this ring");
        let slot = &mut self.slots[index];
        assert_eq!(slot.state, SlotState::Reserved, "record committed twice");
        slot.state = SlotState::Ready;
        slot.cancelled = true;
        self.advance_durable(reservation.seq)
    }

    /// Commit writes the headers only, and [`Ring::persist_written`]
    /// persists them (deferred), or commit does both (the default).
    pub fn set_deferred_persist(&mut self, deferred: bool) {
        self.deferred_persist = deferred;
    }

    /// Every record through this has its header written (it may be sent to
    /// the partner; it is acknowledged only once durable here too).
    pub fn written_seq(&self) -> u64 {
        self.written_seq
    }

    /// Writes headers for the Ready records that directly follow, then (not
    /// deferred) persists them. The outcome names the newly durable ones.
    fn advance_durable(&mut self, seq: u64) -> CommitOutcome {
        self.write_headers();
        if self.deferred_persist {
            let none = self.durable_seq + 1..=self.durable_seq;
            return CommitOutcome { seq, newly_durable: none };
        }
        CommitOutcome { seq, newly_durable: self.persist_written() }
    }

    /// Persists every record whose header is written and not yet persisted,
    /// in sequence order, one persist call per record (after its pad, if it
    /// has one). Returns the sequences that became durable.
    pub fn persist_written(&mut self) -> std::ops::RangeInclusive<u64> {
        let first_new = self.durable_seq + 1;
        let align = self.geometry.record_align_bytes as usize;
        while self.durable_seq < self.written_seq {
            let Some(index) = self.slot_index(self.durable_seq + 1) else { break };
            let slot = self.slots[index];
            if slot.start_pos != slot.record_pos {
                let pad_offset = self.area_offset_of(slot.start_pos) + align - RECORD_HEADER_BYTES;
                self.region.persist(pad_offset, RECORD_HEADER_BYTES);
            }
            let header_offset = self.area_offset_of(slot.record_pos) + align - RECORD_HEADER_BYTES;
            let persist_len = RECORD_HEADER_BYTES + if slot.cancelled { 0 } else { slot.data_len };
            self.region.persist(header_offset, persist_len);
            self.slots[index].state = SlotState::Durable;
            self.durable_seq += 1;
        }
        self.check_invariants();
        first_new..=self.durable_seq
    }

    /// Writes the header (and pad) of every Ready record that directly
    /// follows `written_seq`, in sequence order.
    fn write_headers(&mut self) {
        let align = self.geometry.record_align_bytes as usize;
        while let Some(index) = self.slot_index(self.written_seq + 1) {
            let slot = self.slots[index];
            if slot.state != SlotState::Ready {
                break;
            }
            if slot.start_pos != slot.record_pos {
                let pad_offset = self.area_offset_of(slot.start_pos) + align - RECORD_HEADER_BYTES;
                let header = RecordHeader {
                    flags: FLAG_PAD,
                    format_nonce: self.geometry.format_nonce,
                    epoch: self.control.epoch,
                    seq: slot.seq,
                    slba: 0,
                    nsid: 0,
                    nlb: 0,
                    data_len: 0,
                };
                let bytes = &mut self.region.bytes_mut()[pad_offset..pad_offset + RECORD_HEADER_BYTES];
                header.encode_fields(bytes);
                let crc = RecordHeader::compute_crc(bytes, &[]);
                RecordHeader::store_crc(bytes, crc);
            }
            let header_offset = self.area_offset_of(slot.record_pos) + align - RECORD_HEADER_BYTES;
            let header = RecordHeader {
                flags: if slot.cancelled { FLAG_CANCELLED } else { slot.kind.flag() },
                format_nonce: self.geometry.format_nonce,
                epoch: self.control.epoch,
                seq: slot.seq,
                slba: slot.slba,
                nsid: slot.nsid,
                nlb: slot.nlb,
                data_len: slot.data_len as u32,
            };
            let bytes = self.region.bytes_mut();
            let (head, data) = bytes.split_at_mut(header_offset + RECORD_HEADER_BYTES);
            let header_bytes = &mut head[header_offset..];
            header.encode_fields(header_bytes);
            let covered: &[u8] = if slot.cancelled { &[] } else { &data[..slot.data_len] };
            let crc = RecordHeader::compute_crc(header_bytes, covered);
            RecordHeader::store_crc(header_bytes, crc);
            self.slots[index].state = SlotState::Written;
            self.written_seq += 1;
        }
    }

    /// The committed record `seq`, if it is still staged (not released).
    pub fn record(&self, seq: u64) -> Option<RecordInfo> {
        let slot = self.slots.get(self.slot_index(seq)?)?;
        if slot.state == SlotState::Reserved {
            return None;
        }
        Some(RecordInfo {
            seq,
            nsid: slot.nsid,
            slba: slot.slba,
            nlb: slot.nlb,
            data_len: slot.data_len,
            data_offset: self.area_offset_of(slot.record_pos) + self.geometry.record_align_bytes as usize,
            cancelled: slot.cancelled,
            kind: slot.kind,
            durable: slot.state == SlotState::Durable,
        })
    }

    /// The data bytes of a staged record.
    pub fn record_data(&self, info: &RecordInfo) -> &[u8] {
        &self.region.bytes()[info.data_offset..info.data_offset + info.data_len]
    }

    /// Re-checks the CRC of a durable record against the ring bytes (the
    /// flusher does this before writing a record to the medium).
    pub fn verify_record(&self, info: &RecordInfo) -> bool {
        let header_offset = info.data_offset - RECORD_HEADER_BYTES;
        let bytes = self.region.bytes();
        let header = &bytes[header_offset..info.data_offset];
        let data: &[u8] = if info.cancelled { &[] } else { self.record_data(info) };
        RecordHeader::decode(header).is_some_and(|h| h.seq == info.seq)
            && RecordHeader::crc_matches(header, data)
    }

    /// Frees every record <= `seq` after the flusher made them durable on the
    /// medium; persists the new released_seq and head in the control block.
    pub fn release_through(&mut self, seq: u64) {
        assert!(seq <= self.durable_seq, "release of {seq} beyond durable {}", self.durable_seq);
        if seq <= self.control.released_seq {
            return;
        }
        while self.slots.front().is_some_and(|slot| slot.seq <= seq) {
            self.slots.pop_front();
        }
        self.head_pos = self.slots.front().map_or(self.tail_pos, |slot| slot.start_pos);
        let control = ControlState {
            generation: self.control.generation + 1,
            epoch: self.control.epoch,
            released_seq: seq,
            head_offset: self.head_pos % self.geometry.area_bytes,
        };
        self.write_control(control);
        self.check_invariants();
    }

    fn write_control(&mut self, control: ControlState) {
        let offset = ControlState::slot_offset(control.generation);
        control.encode(&mut self.region.bytes_mut()[offset..offset + CONTROL_SLOT_BYTES]);
        self.region.persist(offset, CONTROL_SLOT_BYTES);
        self.control = control;
    }

    /// Starts epoch `epoch`: later records carry it, and recovery treats records
    /// of older epochs past released_seq as a stale tail. Only allowed when
    /// nothing is staged, so no acknowledged record can become stale.
    pub fn begin_epoch(&mut self, epoch: u64) -> Result<(), RingError> {
        if epoch <= self.control.epoch {
            return Err(RingError::EpochNotNewer { requested: epoch, current: self.control.epoch });
        }
        if !self.slots.is_empty() {
            return Err(RingError::NotDrained {
                released_seq: self.control.released_seq,
                last_seq: self.next_seq - 1,
            });
        }
        let control = ControlState { generation: self.control.generation + 1, epoch, ..self.control };
        self.write_control(control);
        Ok(())
    }

    /// Stores the heartbeat word (reserved for membership) and persists it.
    pub fn write_heartbeat(&mut self, value: u64) {
        put_u64(self.region.bytes_mut(), HEARTBEAT_OFFSET, value);
        self.region.persist(HEARTBEAT_OFFSET, 8);
    }

    pub fn heartbeat(&self) -> u64 {
        get_u64(self.region.bytes(), HEARTBEAT_OFFSET)
    }

    /// Iterates the staged (committed, unreleased) records from oldest.
    pub fn staged_records(&self) -> impl Iterator<Item = RecordInfo> + '_ {
        let first = self.control.released_seq + 1;
        (first..=self.durable_seq).filter_map(move |seq| self.record(seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_env::persist::MemRegion;

    pub(crate) fn config() -> RingConfig {
        RingConfig {
            owner_node_id: 1,
            created_epoch: 1,
            format_nonce: 0xfeed,
            record_align_bytes: 4096,
            medium: test_medium(1),
        }
    }

    fn stage(ring: &mut Ring<MemRegion>, len: usize, fill: u8, slba: u64) -> u64 {
        let res = ring.reserve(len).expect("space");
        ring.data_mut(&res).fill(fill);
        ring.commit(res, 1, slba, (len / 512) as u32).seq
    }

    #[test]
    fn geometry_and_medium_round_trip_through_superblock() {
        let geometry = Geometry::for_region(1 << 20, &config()).expect("geometry");
        let medium = MediumIdentity { path: "é".repeat(200), ..test_medium(3) };
        let mut bytes = vec![0u8; SUPERBLOCK_BYTES];
        Superblock::encode(&geometry, &medium, &mut bytes);
        let decoded = Superblock::decode(&bytes, 1 << 20).expect("decode");
        assert_eq!(decoded.geometry, geometry);
        let recorded = decoded.medium.expect("a version-2 superblock records its medium");
        // The path is cut to 256 bytes at a char boundary; the identity is whole.
        assert_eq!(recorded.path, "é".repeat(128));
        assert!(recorded.same_medium(&medium));
        assert_eq!(
            MediumIdentity { path: String::new(), ..recorded },
            MediumIdentity { path: String::new(), ..medium }
        );
        bytes[20] ^= 1;
        assert!(matches!(Superblock::decode(&bytes, 1 << 20), Err(SuperblockError::BadCrc { .. })));
        bytes[20] ^= 1;
        bytes[100] ^= 1; // the inode is covered by the CRC too
        assert!(matches!(Superblock::decode(&bytes, 1 << 20), Err(SuperblockError::BadCrc { .. })));
        assert!(matches!(Superblock::decode(&[0u8; 16], 1 << 20), Err(SuperblockError::Truncated { .. })));
    }

    #[test]
    fn version_1_superblock_reads_with_no_medium_and_other_versions_are_refused() {
        let geometry = Geometry::for_region(1 << 20, &config()).expect("geometry");
        let mut bytes = vec![0u8; SUPERBLOCK_BYTES];
        encode_superblock_v1(&geometry, &mut bytes);
        assert_eq!(Superblock::decode(&bytes, 1 << 20), Ok(Superblock { geometry, medium: None }));
        bytes[8] = 3;
        assert_eq!(
            Superblock::decode(&bytes, 1 << 20),
            Err(SuperblockError::UnsupportedVersion { found: 3, supported: 2 })
        );
    }

    #[test]
    fn medium_identity_compares_kind_namespace_blocks_and_object_not_path() {
        let a = test_medium(1);
        assert!(a.same_medium(&MediumIdentity { path: "/elsewhere/renamed.img".into(), ..a.clone() }));
        assert!(!a.same_medium(&MediumIdentity { ino: a.ino + 1, ..a.clone() }), "a copy of the image");
        assert!(!a.same_medium(&MediumIdentity { dev: a.dev + 1, ..a.clone() }));
        assert!(!a.same_medium(&test_medium(2)), "another namespace");
        assert!(!a.same_medium(&MediumIdentity { block_bytes: 512, ..a.clone() }));
        assert!(!a.same_medium(&MediumIdentity { kind: MediumKind::BlockDevice, ..a.clone() }));
        let text = a.to_string();
        assert!(text.starts_with("file /test/medium-1.img (device 8:1, inode 1001, NGUID 0101"), "{text}");
    }

    #[test]
    fn region_too_small_is_refused() {
        assert!(matches!(
            Ring::format(MemRegion::new(16 * 1024), &config()),
            Err(RingError::RegionTooSmall { .. })
        ));
    }

    #[test]
    fn commit_persists_header_and_data_in_one_call() {
        let mut ring = Ring::format(MemRegion::new(1 << 20), &config()).expect("format");
        let before = ring.region().persist_calls();
        let res = ring.reserve(4096).expect("space");
        ring.data_mut(&res).fill(7);
        let outcome = ring.commit(res, 1, 0, 8);
        assert_eq!(outcome.newly_durable, 1..=1);
        assert_eq!(ring.region().persist_calls(), before + 1);
        let info = ring.record(1).expect("staged");
        assert!(ring.verify_record(&info));
        assert_eq!(info.data_offset % 4096, 0);
        // The persisted image holds the data.
        assert!(ring.region().persisted_bytes()[info.data_offset..info.data_offset + 4096]
            .iter()
            .all(|&b| b == 7));
    }

    #[test]
    fn out_of_order_commits_become_durable_in_order() {
        let mut ring = Ring::format(MemRegion::new(1 << 20), &config()).expect("format");
        let first = ring.reserve(4096).expect("space");
        let second = ring.reserve(4096).expect("space");
        let outcome = ring.commit(second, 1, 8, 8);
        assert!(outcome.newly_durable.is_empty());
        assert_eq!(ring.durable_seq(), 0);
        let outcome = ring.commit(first, 1, 0, 8);
        assert_eq!(outcome.newly_durable, 1..=2);
    }

    #[test]
    fn cancelled_reservation_keeps_sequences_dense() {
        let mut ring = Ring::format(MemRegion::new(1 << 20), &config()).expect("format");
        let first = ring.reserve(4096).expect("space");
        let second = ring.reserve(4096).expect("space");
        ring.commit(second, 1, 8, 8);
        let outcome = ring.cancel(first);
        assert_eq!(outcome.newly_durable, 1..=2);
        assert!(ring.record(1).expect("staged").cancelled);
    }

    #[test]
    fn ring_full_then_freed_and_wraps_with_pad() {
        // Area: 1 MiB region minus 8 KiB metadata = 254 blocks of 4 KiB.
        let mut ring = Ring::format(MemRegion::new(1 << 20), &config()).expect("format");
        let area_blocks = ring.geometry().area_bytes / 4096;
        // Records of 3 data blocks take 4 blocks each.
        let mut seqs = Vec::new();
        loop {
            match ring.reserve(3 * 4096) {
                Ok(res) => {
                    ring.data_mut(&res).fill(seqs.len() as u8);
                    seqs.push(ring.commit(res, 1, seqs.len() as u64 * 24, 24).seq);
                }
                Err(ReserveError::RingFull { needed_bytes, free_bytes }) => {
                    // The tail has 2 blocks left: a pad over them plus 4 blocks.
                    assert_eq!(needed_bytes, 6 * 4096);
                    assert!(free_bytes < needed_bytes);
                    break;
                }
                Err(other) => panic!("unexpected {other}"),
            }
        }
        assert_eq!(seqs.len() as u64, area_blocks / 4);
        // Free the first two records; the next record does not fit at the tail
        // (two blocks left), so it pads and wraps to offset 0.
        ring.release_through(2);
        let res = ring.reserve(3 * 4096).expect("space after release");
        ring.data_mut(&res).fill(0xee);
        let seq = ring.commit(res, 1, 0, 24).seq;
        let info = ring.record(seq).expect("staged");
        assert_eq!(
            info.data_offset as u64,
            ring.geometry().area_offset + 4096,
            "record wrapped to the area start"
        );
        assert!(ring.verify_record(&info));
        assert_eq!(ring.durable_seq(), seq);
    }

    #[test]
    fn too_large_and_empty_are_refused() {
        let mut ring = Ring::format(MemRegion::new(1 << 20), &config()).expect("format");
        ring.set_record_data_bytes_max(128 * 1024);
        assert!(matches!(ring.reserve(128 * 1024 + 1), Err(ReserveError::RecordTooLarge { .. })));
        assert_eq!(ring.reserve(0), Err(ReserveError::Empty));
        let _ = stage(&mut ring, 4096, 1, 0);
    }

    #[test]
    fn begin_epoch_requires_drained_ring() {
        let mut ring = Ring::format(MemRegion::new(1 << 20), &config()).expect("format");
        let seq = stage(&mut ring, 4096, 1, 0);
        assert!(matches!(ring.begin_epoch(2), Err(RingError::NotDrained { .. })));
        ring.release_through(seq);
        assert!(matches!(ring.begin_epoch(1), Err(RingError::EpochNotNewer { .. })));
        ring.begin_epoch(2).expect("drained");
        assert_eq!(ControlState::read(ring.region().persisted_bytes()).map(|c| c.epoch), Some(2));
    }

    #[test]
    fn torn_control_slot_falls_back_to_the_other() {
        let mut ring = Ring::format(MemRegion::new(1 << 20), &config()).expect("format");
        let seq = stage(&mut ring, 4096, 1, 0);
        ring.release_through(seq);
        let current = ControlState::read(ring.region().bytes()).expect("valid");
        assert_eq!(current.released_seq, seq);
        let mut region = ring.into_region();
        let offset = ControlState::slot_offset(current.generation) + 16;
        region.bytes_mut()[offset] ^= 0xff;
        let fallback = ControlState::read(region.bytes()).expect("older slot");
        assert_eq!(fallback.generation, current.generation - 1);
    }

    #[test]
    fn heartbeat_word_round_trips() {
        let mut ring = Ring::format(MemRegion::new(1 << 20), &config()).expect("format");
        ring.write_heartbeat(42);
        assert_eq!(ring.heartbeat(), 42);
        // The word must be durable, not just stored: after a power loss (which
        // reverts every byte not persisted) and a reopen, it still reads 42.
        let mut region = ring.into_region();
        region.crash(None);
        let binding = crate::ha::Binding::new(config().medium);
        let (mut ring, _) = crate::ha::open_ring(region, 0, &binding).expect("reopen after crash");
        assert_eq!(ring.heartbeat(), 42, "the heartbeat word was not persisted");
        // And a later value replaces it durably too.
        ring.write_heartbeat(u64::MAX - 1);
        let mut region = ring.into_region();
        region.crash(None);
        let (ring, _) = crate::ha::open_ring(region, 0, &binding).expect("reopen after crash");
        assert_eq!(ring.heartbeat(), u64::MAX - 1, "the second heartbeat was not persisted");
    }
}
