//! The staging ring: the first store of a node, laid out inside a
//! [`PersistentRegion`]. A host write is reserved here, its data lands straight
//! in the record, and the write may be acknowledged once the record is durable
//! (the mirror adds the second store in a later layer). The flusher later writes
//! the record to the medium and releases it.
//!
//! Layout (every offset is from the start of the region; the partner hosts a
//! byte-identical copy, so nothing here may depend on the address it is mapped at):
//! ```text
//! 0                 superblock  (SUPERBLOCK_BYTES, CRC32C, written once by `format`)
//! 4096              control block: two 64-byte slots (generation, epoch,
//!                   released_seq, head offset, CRC32C) written alternately so a
//!                   torn write leaves the other slot valid; then an 8-byte
//!                   heartbeat word reserved for membership
//! area_offset       record area, `area_bytes` long, a multiple of the record alignment
//! ```
//! A record starts at an aligned offset `p` of the area. Its 64-byte header
//! sits at the END of the first aligned block (`p + align - 64`) and the data
//! starts at `p + align`, aligned for O_DIRECT, so header and data form one
//! contiguous byte range and one `persist()` call covers both. A record never
//! straddles the end of the area: when it does not fit, a pad header at the
//! tail says "continue at offset 0" (a pad carries the sequence number of the
//! record after it and consumes no sequence number).
//!
//! Sequence numbers are dense (1, 2, 3, ...) within a ring's life; the only
//! reuse is after a stale tail (see `recovery`), whose numbers the new epoch
//! takes over, and records are told apart by their epoch.
//! Records may be committed out of order (data for different commands arrives
//! in any order), but headers are written and persisted strictly in sequence
//! order, one record per persist call: so a valid record on the medium implies
//! that every earlier record was durable before it. Recovery relies on that to
//! tell a torn tail (never acknowledged) from a corrupt middle (data loss).
//!
//! Invariants (asserted): released_seq <= durable_seq < next_seq;
//! head_pos <= tail_pos <= head_pos + area_bytes; the slot table holds exactly
//! the sequences released_seq+1 .. next_seq-1, in order.

use std::collections::VecDeque;
use tandem_env::persist::PersistentRegion;

/// Bytes reserved for the superblock at the start of the region.
pub const SUPERBLOCK_BYTES: usize = 4096;
/// Offset of the control block.
pub const CONTROL_OFFSET: usize = 4096;
/// One control slot: generation, epoch, released_seq, head offset, CRC.
pub const CONTROL_SLOT_BYTES: usize = 64;
/// Offset of the heartbeat word (one torn-safe 8-byte word).
pub const HEARTBEAT_OFFSET: usize = CONTROL_OFFSET + 2 * CONTROL_SLOT_BYTES;
/// The record header size; it sits at the end of the record's first block.
pub const RECORD_HEADER_BYTES: usize = 64;
/// The default record alignment (data alignment for O_DIRECT).
pub const RECORD_ALIGN_BYTES_DEFAULT: u32 = 4096;
/// Superblock magic: "TNDMSTG1" as little-endian bytes.
pub const SUPERBLOCK_MAGIC: u64 = u64::from_le_bytes(*b"TNDMSTG1");
/// Record header magic: "TREC".
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"TREC");
/// Version of this layout; `open` refuses any other.
pub const LAYOUT_VERSION: u32 = 1;
/// Version field of a record header.
pub const RECORD_VERSION: u16 = 1;

/// Record flag: a pad marker; the record area continues at offset 0.
pub const FLAG_PAD: u16 = 1 << 0;
/// Record flag: the reservation was abandoned (the host went away before the
/// data arrived). The record keeps its sequence number so sequences stay dense;
/// its data is not covered by the CRC and is never written to the medium.
pub const FLAG_CANCELLED: u16 = 1 << 1;

const _: () = assert!(HEARTBEAT_OFFSET + 8 <= CONTROL_OFFSET + 4096);
const _: () = assert!(SUPERBLOCK_FIELDS_BYTES + 4 <= SUPERBLOCK_BYTES);
const _: () = assert!(RECORD_HEADER_BYTES as u32 <= RECORD_ALIGN_BYTES_DEFAULT);

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

/// How `format` lays out a new ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingConfig {
    pub owner_node_id: u64,
    pub created_epoch: u64,
    /// Distinguishes this ring instance from an earlier one formatted in the
    /// same region: records of another instance never validate. Use a random
    /// or time-derived value.
    pub format_nonce: u64,
    pub record_align_bytes: u32,
}

/// Fixed geometry read from (or written to) the superblock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub owner_node_id: u64,
    pub created_epoch: u64,
    pub format_nonce: u64,
    pub region_bytes: u64,
    pub area_offset: u64,
    pub area_bytes: u64,
    pub record_align_bytes: u32,
}

const SUPERBLOCK_FIELDS_BYTES: usize = 64;

impl Geometry {
    /// Computes the geometry of a new ring for a region of `region_bytes`.
    pub fn for_region(region_bytes: usize, config: &RingConfig) -> Result<Geometry, RingError> {
        let align = config.record_align_bytes;
        if !align.is_power_of_two() || !(4096..=1 << 20).contains(&align) {
            return Err(RingError::BadAlignment { align_bytes: align });
        }
        let align = align as u64;
        let area_offset = round_up((CONTROL_OFFSET + 4096) as u64, align);
        let area_bytes = (region_bytes as u64).saturating_sub(area_offset) / align * align;
        // At least two minimal records (header block + one data block each).
        let needed_bytes = area_offset + 4 * align;
        if (region_bytes as u64) < needed_bytes || area_bytes < 4 * align {
            return Err(RingError::RegionTooSmall { region_bytes, needed_bytes: needed_bytes as usize });
        }
        Ok(Geometry {
            owner_node_id: config.owner_node_id,
            created_epoch: config.created_epoch,
            format_nonce: config.format_nonce,
            region_bytes: region_bytes as u64,
            area_offset,
            area_bytes,
            record_align_bytes: config.record_align_bytes,
        })
    }

    /// Encodes the superblock (fields then CRC32C of the fields).
    pub fn encode(&self, out: &mut [u8]) {
        let b = &mut out[..SUPERBLOCK_FIELDS_BYTES + 4];
        b.fill(0);
        put_u64(b, 0, SUPERBLOCK_MAGIC);
        put_u32(b, 8, LAYOUT_VERSION);
        put_u32(b, 12, self.record_align_bytes);
        put_u64(b, 16, self.owner_node_id);
        put_u64(b, 24, self.created_epoch);
        put_u64(b, 32, self.format_nonce);
        put_u64(b, 40, self.region_bytes);
        put_u64(b, 48, self.area_offset);
        put_u64(b, 56, self.area_bytes);
        let crc = crc32c::crc32c(&b[..SUPERBLOCK_FIELDS_BYTES]);
        put_u32(b, SUPERBLOCK_FIELDS_BYTES, crc);
    }

    /// Decodes and validates a superblock against the region it was read from.
    pub fn decode(bytes: &[u8], region_bytes: usize) -> Result<Geometry, SuperblockError> {
        if bytes.len() < SUPERBLOCK_FIELDS_BYTES + 4 {
            return Err(SuperblockError::Truncated { region_bytes });
        }
        let magic = get_u64(bytes, 0);
        if magic != SUPERBLOCK_MAGIC {
            return Err(SuperblockError::BadMagic { found: magic });
        }
        let stored_crc = get_u32(bytes, SUPERBLOCK_FIELDS_BYTES);
        let computed_crc = crc32c::crc32c(&bytes[..SUPERBLOCK_FIELDS_BYTES]);
        if stored_crc != computed_crc {
            return Err(SuperblockError::BadCrc { stored: stored_crc, computed: computed_crc });
        }
        let version = get_u32(bytes, 8);
        if version != LAYOUT_VERSION {
            return Err(SuperblockError::UnsupportedVersion { found: version, supported: LAYOUT_VERSION });
        }
        let geometry = Geometry {
            record_align_bytes: get_u32(bytes, 12),
            owner_node_id: get_u64(bytes, 16),
            created_epoch: get_u64(bytes, 24),
            format_nonce: get_u64(bytes, 32),
            region_bytes: get_u64(bytes, 40),
            area_offset: get_u64(bytes, 48),
            area_bytes: get_u64(bytes, 56),
        };
        let align = geometry.record_align_bytes as u64;
        let consistent = geometry.region_bytes == region_bytes as u64
            && align.is_power_of_two()
            && (4096..=1 << 20).contains(&align)
            && geometry.area_offset.is_multiple_of(align)
            && geometry.area_offset >= (CONTROL_OFFSET + 4096) as u64
            && geometry.area_bytes.is_multiple_of(align)
            && geometry.area_bytes >= 4 * align
            && geometry
                .area_offset
                .checked_add(geometry.area_bytes)
                .is_some_and(|end| end <= region_bytes as u64);
        if !consistent {
            return Err(SuperblockError::BadGeometry { geometry, region_bytes });
        }
        Ok(geometry)
    }

    /// The largest data length one record can carry.
    pub fn record_data_bytes_max(&self) -> usize {
        (self.area_bytes - self.record_align_bytes as u64) as usize
    }

    /// Total ring bytes a record with `data_len` bytes occupies.
    pub fn record_total_bytes(&self, data_len: usize) -> u64 {
        let align = self.record_align_bytes as u64;
        align + round_up(data_len as u64, align)
    }
}

/// A superblock that cannot be trusted; `open` refuses the region.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum SuperblockError {
    #[error("region of {region_bytes} bytes is too small to hold a superblock")]
    Truncated { region_bytes: usize },
    #[error("no staging ring here: superblock magic {found:#018x}")]
    BadMagic { found: u64 },
    #[error("superblock CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("superblock layout version {found}, this build supports {supported}")]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("superblock geometry {geometry:?} does not fit a region of {region_bytes} bytes")]
    BadGeometry { geometry: Geometry, region_bytes: usize },
}

/// One control slot as stored. Two slots alternate; the valid one with the
/// higher generation is current.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlState {
    pub generation: u64,
    pub epoch: u64,
    pub released_seq: u64,
    /// Area offset where the record after `released_seq` starts (or its pad).
    pub head_offset: u64,
}

impl ControlState {
    const CRC_AT: usize = 32;

    pub(crate) fn encode(&self, out: &mut [u8]) {
        let b = &mut out[..CONTROL_SLOT_BYTES];
        b.fill(0);
        put_u64(b, 0, self.generation);
        put_u64(b, 8, self.epoch);
        put_u64(b, 16, self.released_seq);
        put_u64(b, 24, self.head_offset);
        let crc = crc32c::crc32c(&b[..Self::CRC_AT]);
        put_u32(b, Self::CRC_AT, crc);
    }

    fn decode(b: &[u8]) -> Option<ControlState> {
        let stored_crc = get_u32(b, Self::CRC_AT);
        if crc32c::crc32c(&b[..Self::CRC_AT]) != stored_crc {
            return None;
        }
        let state = ControlState {
            generation: get_u64(b, 0),
            epoch: get_u64(b, 8),
            released_seq: get_u64(b, 16),
            head_offset: get_u64(b, 24),
        };
        // generation 0 is an all-zero (never written) slot whose CRC is not zero,
        // so it fails above; a written slot always has generation >= 1.
        (state.generation >= 1).then_some(state)
    }

    /// Reads both slots from the control block; `None` if neither is valid.
    pub fn read(region_bytes: &[u8]) -> Option<ControlState> {
        let slot0 = ControlState::decode(&region_bytes[CONTROL_OFFSET..CONTROL_OFFSET + CONTROL_SLOT_BYTES]);
        let slot1 = ControlState::decode(
            &region_bytes[CONTROL_OFFSET + CONTROL_SLOT_BYTES..CONTROL_OFFSET + 2 * CONTROL_SLOT_BYTES],
        );
        match (slot0, slot1) {
            (Some(a), Some(b)) => Some(if a.generation >= b.generation { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    /// Offset of the slot this generation is written to.
    pub fn slot_offset(generation: u64) -> usize {
        CONTROL_OFFSET + (generation % 2) as usize * CONTROL_SLOT_BYTES
    }
}

/// A record header (64 bytes at the end of the record's first block).
/// Layout, little-endian: magic u32, version u16, flags u16, format_nonce u64,
/// epoch u64, seq u64, slba u64, nsid u32, nlb u32 (block count, 1-based),
/// data_len u32, 8 reserved bytes, CRC32C u32 over bytes 0..60 then the data
/// (the data only when neither PAD nor CANCELLED is set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub flags: u16,
    pub format_nonce: u64,
    pub epoch: u64,
    pub seq: u64,
    pub slba: u64,
    pub nsid: u32,
    pub nlb: u32,
    pub data_len: u32,
}

impl RecordHeader {
    const CRC_AT: usize = 60;

    /// Writes the header fields (not the CRC) into `out[..64]`.
    pub fn encode_fields(&self, out: &mut [u8]) {
        let b = &mut out[..RECORD_HEADER_BYTES];
        b.fill(0);
        put_u32(b, 0, RECORD_MAGIC);
        b[4..6].copy_from_slice(&RECORD_VERSION.to_le_bytes());
        b[6..8].copy_from_slice(&self.flags.to_le_bytes());
        put_u64(b, 8, self.format_nonce);
        put_u64(b, 16, self.epoch);
        put_u64(b, 24, self.seq);
        put_u64(b, 32, self.slba);
        put_u32(b, 40, self.nsid);
        put_u32(b, 44, self.nlb);
        put_u32(b, 48, self.data_len);
    }

    /// Parses the fields of a header; `None` if the magic or version is wrong
    /// (the CRC is checked by [`RecordHeader::crc_matches`]).
    pub fn decode(b: &[u8]) -> Option<RecordHeader> {
        if b.len() < RECORD_HEADER_BYTES || get_u32(b, 0) != RECORD_MAGIC {
            return None;
        }
        if u16::from_le_bytes([b[4], b[5]]) != RECORD_VERSION {
            return None;
        }
        Some(RecordHeader {
            flags: u16::from_le_bytes([b[6], b[7]]),
            format_nonce: get_u64(b, 8),
            epoch: get_u64(b, 16),
            seq: get_u64(b, 24),
            slba: get_u64(b, 32),
            nsid: get_u32(b, 40),
            nlb: get_u32(b, 44),
            data_len: get_u32(b, 48),
        })
    }

    /// True if the CRC covers the data of this record.
    pub fn crc_covers_data(&self) -> bool {
        self.flags & (FLAG_PAD | FLAG_CANCELLED) == 0
    }

    /// The CRC of the header bytes (0..60) and, if covered, the data.
    pub fn compute_crc(header_bytes: &[u8], data: &[u8]) -> u32 {
        crc32c::crc32c_append(crc32c::crc32c(&header_bytes[..Self::CRC_AT]), data)
    }

    /// Stores `crc` into the header bytes.
    pub fn store_crc(header_bytes: &mut [u8], crc: u32) {
        put_u32(header_bytes, Self::CRC_AT, crc);
    }

    /// True if the stored CRC matches the header bytes and `data`.
    pub fn crc_matches(header_bytes: &[u8], data: &[u8]) -> bool {
        get_u32(header_bytes, Self::CRC_AT) == Self::compute_crc(header_bytes, data)
    }
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
    control: ControlState,
    /// All sequences <= this are durable (header and data persisted).
    durable_seq: u64,
    /// The sequence the next reservation gets.
    next_seq: u64,
    /// Logical byte positions: offset in the area = pos % area_bytes.
    head_pos: u64,
    tail_pos: u64,
    /// Unreleased records released_seq+1 .. next_seq-1, preallocated.
    slots: VecDeque<Slot>,
    record_data_bytes_max: usize,
}

impl<R: PersistentRegion> Ring<R> {
    /// Lays out a new, empty ring in `region` (destroying what it held) and
    /// persists superblock and control block.
    pub fn format(mut region: R, config: &RingConfig) -> Result<Ring<R>, RingError> {
        let geometry = Geometry::for_region(region.len(), config)?;
        let bytes = region.bytes_mut();
        geometry.encode(&mut bytes[..SUPERBLOCK_BYTES]);
        // Zero the whole control block: stale slots of an earlier ring must not
        // outrank the new generation.
        bytes[CONTROL_OFFSET..CONTROL_OFFSET + 4096].fill(0);
        let control =
            ControlState { generation: 1, epoch: config.created_epoch, released_seq: 0, head_offset: 0 };
        control.encode(&mut bytes[ControlState::slot_offset(1)..]);
        region.persist(0, CONTROL_OFFSET + 4096);
        Ok(Ring::assemble(region, geometry, control, &[], 0))
    }

    /// Builds the in-memory state from a validated superblock, control state
    /// and the chain of valid records after `released_seq` (from recovery).
    pub(crate) fn assemble(
        region: R,
        geometry: Geometry,
        control: ControlState,
        recovered: &[RecoveredRecord],
        tail_pos: u64,
    ) -> Ring<R> {
        let slots_max = (geometry.area_bytes / (2 * geometry.record_align_bytes as u64)) as usize;
        let mut slots = VecDeque::with_capacity(slots_max);
        for record in recovered {
            slots.push_back(Slot {
                seq: record.header.seq,
                start_pos: record.start_pos,
                record_pos: record.record_pos,
                data_len: record.header.data_len as usize,
                state: SlotState::Durable,
                cancelled: record.header.flags & FLAG_CANCELLED != 0,
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
            control,
            durable_seq: last_seq,
            next_seq: last_seq + 1,
            head_pos,
            tail_pos,
            slots,
        };
        ring.check_invariants();
        ring
    }

    fn check_invariants(&self) {
        assert!(self.control.released_seq <= self.durable_seq, "released beyond durable");
        assert!(self.durable_seq < self.next_seq, "durable beyond reserved");
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
        let index = self.slot_index(reservation.seq).expect("reservation of this ring");
        let slot = &mut self.slots[index];
        assert_eq!(slot.state, SlotState::Reserved, "record committed twice");
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

    /// Writes headers and persists every Ready record that directly follows
    /// `durable_seq`, in sequence order, one persist call per record (after
    /// the pad, if the record has one).
    fn advance_durable(&mut self, seq: u64) -> CommitOutcome {
        let first_new = self.durable_seq + 1;
        let align = self.geometry.record_align_bytes as usize;
        while let Some(index) = self.slot_index(self.durable_seq + 1) {
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
                self.region.persist(pad_offset, RECORD_HEADER_BYTES);
            }
            let header_offset = self.area_offset_of(slot.record_pos) + align - RECORD_HEADER_BYTES;
            let header = RecordHeader {
                flags: if slot.cancelled { FLAG_CANCELLED } else { 0 },
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
            let persist_len = RECORD_HEADER_BYTES + if slot.cancelled { 0 } else { slot.data_len };
            self.region.persist(header_offset, persist_len);
            self.slots[index].state = SlotState::Durable;
            self.durable_seq += 1;
        }
        self.check_invariants();
        CommitOutcome { seq, newly_durable: first_new..=self.durable_seq }
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

pub(crate) fn round_up(value: u64, align: u64) -> u64 {
    value.div_ceil(align) * align
}

pub(crate) fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
/// Reads at a layout-defined offset; callers bound-check `b` against the layout first.
pub(crate) fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(word)
}
pub(crate) fn get_u32(b: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_env::persist::MemRegion;

    pub(crate) fn config() -> RingConfig {
        RingConfig { owner_node_id: 1, created_epoch: 1, format_nonce: 0xfeed, record_align_bytes: 4096 }
    }

    fn stage(ring: &mut Ring<MemRegion>, len: usize, fill: u8, slba: u64) -> u64 {
        let res = ring.reserve(len).expect("space");
        ring.data_mut(&res).fill(fill);
        ring.commit(res, 1, slba, (len / 512) as u32).seq
    }

    #[test]
    fn geometry_round_trips_through_superblock() {
        let geometry = Geometry::for_region(1 << 20, &config()).expect("geometry");
        let mut bytes = vec![0u8; SUPERBLOCK_BYTES];
        geometry.encode(&mut bytes);
        assert_eq!(Geometry::decode(&bytes, 1 << 20), Ok(geometry));
        bytes[20] ^= 1;
        assert!(matches!(Geometry::decode(&bytes, 1 << 20), Err(SuperblockError::BadCrc { .. })));
        assert!(matches!(Geometry::decode(&[0u8; 16], 1 << 20), Err(SuperblockError::Truncated { .. })));
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
    }
}
