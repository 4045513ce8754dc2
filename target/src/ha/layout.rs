//! The on-media layout of a staging ring: ONE definition, used by the ring
//! (which writes it), by recovery (which reads it back after a crash) and, in
//! a later layer, by the partner's second store, which holds a byte-identical
//! copy.
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

use super::ring::RingError;

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
/// Version of the superblock layout this build writes. Version 2 added the
/// medium identity; a version-1 superblock is still read (its identity is
/// unknown, see [`Superblock::medium`]); any other version is refused.
pub const LAYOUT_VERSION: u32 = 2;
/// The older superblock layout this build can still read.
pub const LAYOUT_VERSION_V1: u32 = 1;
/// Version field of a record header.
pub const RECORD_VERSION: u16 = 1;

/// Record flag: a pad marker; the record area continues at offset 0.
pub const FLAG_PAD: u16 = 1 << 0;
/// Record flag: the reservation was abandoned (the host went away before the
/// data arrived). The record keeps its sequence number so sequences stay dense;
/// its data is not covered by the CRC and is never written to the medium.
pub const FLAG_CANCELLED: u16 = 1 << 1;
/// Record flag: a Write Zeroes of `nlb` blocks from `slba`; no data. Ordered
/// and mirrored like a write, so that no replay brings older data back.
pub const FLAG_ZEROES: u16 = 1 << 2;
/// Record flag: a Deallocate of `nlb` blocks from `slba`; no data (the
/// blocks read as zeroes afterwards, as DLFEAT says).
pub const FLAG_DEALLOCATE: u16 = 1 << 3;

/// What a record does to the medium.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// Writes its data.
    Data,
    /// Writes zeroes (no data in the ring).
    Zeroes,
    /// Deallocates (no data in the ring).
    Deallocate,
}

impl RecordKind {
    /// The header flag of this kind (none for data).
    pub fn flag(self) -> u16 {
        match self {
            RecordKind::Data => 0,
            RecordKind::Zeroes => FLAG_ZEROES,
            RecordKind::Deallocate => FLAG_DEALLOCATE,
        }
    }

    /// The kind a header's flags name.
    pub fn of_flags(flags: u16) -> RecordKind {
        if flags & FLAG_ZEROES != 0 {
            RecordKind::Zeroes
        } else if flags & FLAG_DEALLOCATE != 0 {
            RecordKind::Deallocate
        } else {
            RecordKind::Data
        }
    }

    /// True for the kinds that carry no data.
    pub fn is_op(self) -> bool {
        self != RecordKind::Data
    }
}

const _: () = assert!(HEARTBEAT_OFFSET + 8 <= CONTROL_OFFSET + 4096);
const _: () = assert!(SUPERBLOCK_FIELDS_BYTES + 4 <= SUPERBLOCK_BYTES);
const _: () = assert!(RECORD_HEADER_BYTES as u32 <= RECORD_ALIGN_BYTES_DEFAULT);

/// How `format` lays out a new ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingConfig {
    pub owner_node_id: u64,
    pub created_epoch: u64,
    /// Distinguishes this ring instance from an earlier one formatted in the
    /// same region: records of another instance never validate. Use a random
    /// or time-derived value.
    pub format_nonce: u64,
    pub record_align_bytes: u32,
    /// The medium this ring stages for, recorded in the superblock.
    pub medium: MediumIdentity,
}

/// What kind of medium a ring stages for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediumKind {
    /// Process memory: empty at every start, so any fresh RAM medium of the
    /// same namespace is the right one to replay into.
    Ram,
    /// A regular file, known by (st_dev, st_ino).
    File,
    /// A block device, known by its device number (st_rdev).
    BlockDevice,
}

impl MediumKind {
    fn code(self) -> u32 {
        match self {
            MediumKind::Ram => 1,
            MediumKind::File => 2,
            MediumKind::BlockDevice => 3,
        }
    }

    fn from_code(code: u32) -> Option<MediumKind> {
        match code {
            1 => Some(MediumKind::Ram),
            2 => Some(MediumKind::File),
            3 => Some(MediumKind::BlockDevice),
            _ => None,
        }
    }
}

/// The identity of the medium a ring stages for. A ring's records are
/// replayed only into the medium they were staged for: the namespace (NGUID),
/// the block size the LBAs count in, and the medium object itself, a file's
/// (st_dev, st_ino) or a block device's st_rdev. The path is kept for
/// messages only: renaming an image keeps its identity, a copy of it does not.
///
/// Why not an identifier written into the medium: the whole medium is user
/// capacity (a host may write any block), so there is no place in it that is
/// ours; the file system's identity of the image is the next best thing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediumIdentity {
    pub kind: MediumKind,
    pub nguid: [u8; 16],
    pub block_bytes: u32,
    /// File: st_dev; block device: st_rdev; RAM: 0.
    pub dev: u64,
    /// File: st_ino; otherwise 0.
    pub ino: u64,
    /// For messages: the image's path (at most [`MEDIUM_PATH_BYTES_MAX`]
    /// bytes are recorded), empty for RAM.
    pub path: String,
}

/// The major and minor numbers of a Linux `dev_t` (glibc's encoding).
fn dev_major_minor(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major, minor)
}

/// How many bytes of a medium's path the superblock records.
pub const MEDIUM_PATH_BYTES_MAX: usize = 256;

impl MediumIdentity {
    /// True if records staged for `self` may be replayed into `other`.
    pub fn same_medium(&self, other: &MediumIdentity) -> bool {
        self.kind == other.kind
            && self.nguid == other.nguid
            && self.block_bytes == other.block_bytes
            && self.dev == other.dev
            && self.ino == other.ino
    }
}

impl std::fmt::Display for MediumIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nguid: String = self.nguid.iter().map(|b| format!("{b:02x}")).collect();
        let (major, minor) = dev_major_minor(self.dev);
        match self.kind {
            MediumKind::Ram => write!(f, "RAM namespace (NGUID {nguid}")?,
            MediumKind::File => {
                write!(f, "file {} (device {major}:{minor}, inode {}, NGUID {nguid}", self.path, self.ino)?
            }
            MediumKind::BlockDevice => {
                write!(f, "block device {} (device {major}:{minor}, NGUID {nguid}", self.path)?
            }
        }
        write!(f, ", {}-byte blocks)", self.block_bytes)
    }
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

/// Version 1: the geometry fields, then the CRC32C at this offset.
const SUPERBLOCK_V1_FIELDS_BYTES: usize = 64;
/// Version 2: the geometry fields as in version 1, then the medium identity:
/// 64 kind u32, 68 block_bytes u32, 72 NGUID [16], 88 dev u64, 96 ino u64,
/// 104 path length u16, 106..112 reserved, 112 path bytes (up to 256); then
/// the CRC32C of bytes 0..384 at 384.
const SUPERBLOCK_FIELDS_BYTES: usize = 384;
const MEDIUM_PATH_AT: usize = 112;
const _: () = assert!(MEDIUM_PATH_AT + MEDIUM_PATH_BYTES_MAX <= SUPERBLOCK_FIELDS_BYTES);

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

/// The superblock: the ring's fixed geometry and the medium it stages for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub geometry: Geometry,
    /// `None` for a version-1 superblock, which did not record it.
    pub medium: Option<MediumIdentity>,
}

impl Superblock {
    /// Encodes a version-2 superblock (fields then CRC32C of the fields).
    pub fn encode(geometry: &Geometry, medium: &MediumIdentity, out: &mut [u8]) {
        let b = &mut out[..SUPERBLOCK_FIELDS_BYTES + 4];
        b.fill(0);
        encode_geometry(geometry, LAYOUT_VERSION, b);
        put_u32(b, 64, medium.kind.code());
        put_u32(b, 68, medium.block_bytes);
        b[72..88].copy_from_slice(&medium.nguid);
        put_u64(b, 88, medium.dev);
        put_u64(b, 96, medium.ino);
        let path = truncated_path(&medium.path);
        b[104..106].copy_from_slice(&(path.len() as u16).to_le_bytes());
        b[MEDIUM_PATH_AT..MEDIUM_PATH_AT + path.len()].copy_from_slice(path);
        let crc = crc32c::crc32c(&b[..SUPERBLOCK_FIELDS_BYTES]);
        put_u32(b, SUPERBLOCK_FIELDS_BYTES, crc);
    }

    /// Decodes and validates a superblock against the region it was read from.
    pub fn decode(bytes: &[u8], region_bytes: usize) -> Result<Superblock, SuperblockError> {
        if bytes.len() < SUPERBLOCK_FIELDS_BYTES + 4 {
            return Err(SuperblockError::Truncated { region_bytes });
        }
        let magic = get_u64(bytes, 0);
        if magic != SUPERBLOCK_MAGIC {
            return Err(SuperblockError::BadMagic { found: magic });
        }
        let version = get_u32(bytes, 8);
        let fields_bytes = match version {
            LAYOUT_VERSION => SUPERBLOCK_FIELDS_BYTES,
            LAYOUT_VERSION_V1 => SUPERBLOCK_V1_FIELDS_BYTES,
            found => return Err(SuperblockError::UnsupportedVersion { found, supported: LAYOUT_VERSION }),
        };
        let stored_crc = get_u32(bytes, fields_bytes);
        let computed_crc = crc32c::crc32c(&bytes[..fields_bytes]);
        if stored_crc != computed_crc {
            return Err(SuperblockError::BadCrc { stored: stored_crc, computed: computed_crc });
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
        if version == LAYOUT_VERSION_V1 {
            return Ok(Superblock { geometry, medium: None });
        }
        let code = get_u32(bytes, 64);
        let kind = MediumKind::from_code(code).ok_or(SuperblockError::BadMediumKind { found: code })?;
        let path_len = usize::from(u16::from_le_bytes([bytes[104], bytes[105]]));
        if path_len > MEDIUM_PATH_BYTES_MAX {
            return Err(SuperblockError::BadMediumPath { len: path_len });
        }
        let mut nguid = [0u8; 16];
        nguid.copy_from_slice(&bytes[72..88]);
        let medium = MediumIdentity {
            kind,
            nguid,
            block_bytes: get_u32(bytes, 68),
            dev: get_u64(bytes, 88),
            ino: get_u64(bytes, 96),
            path: String::from_utf8_lossy(&bytes[MEDIUM_PATH_AT..MEDIUM_PATH_AT + path_len]).into_owned(),
        };
        Ok(Superblock { geometry, medium: Some(medium) })
    }
}

/// The geometry fields shared by both versions (bytes 0..64).
fn encode_geometry(geometry: &Geometry, version: u32, b: &mut [u8]) {
    put_u64(b, 0, SUPERBLOCK_MAGIC);
    put_u32(b, 8, version);
    put_u32(b, 12, geometry.record_align_bytes);
    put_u64(b, 16, geometry.owner_node_id);
    put_u64(b, 24, geometry.created_epoch);
    put_u64(b, 32, geometry.format_nonce);
    put_u64(b, 40, geometry.region_bytes);
    put_u64(b, 48, geometry.area_offset);
    put_u64(b, 56, geometry.area_bytes);
}

/// Encodes a version-1 superblock, as builds before the medium identity
/// wrote it (tests of the upgrade path).
#[cfg(test)]
pub(crate) fn encode_superblock_v1(geometry: &Geometry, out: &mut [u8]) {
    let b = &mut out[..SUPERBLOCK_V1_FIELDS_BYTES + 4];
    b.fill(0);
    encode_geometry(geometry, LAYOUT_VERSION_V1, b);
    let crc = crc32c::crc32c(&b[..SUPERBLOCK_V1_FIELDS_BYTES]);
    put_u32(b, SUPERBLOCK_V1_FIELDS_BYTES, crc);
}

/// A file medium for tests: namespace `n` (NGUID bytes all `n`), device
/// 8:1, inode 1000 + n.
#[cfg(test)]
pub(crate) fn test_medium(n: u8) -> MediumIdentity {
    MediumIdentity {
        kind: MediumKind::File,
        nguid: [n; 16],
        block_bytes: 4096,
        dev: (8 << 8) | 1,
        ino: 1000 + u64::from(n),
        path: format!("/test/medium-{n}.img"),
    }
}

/// At most [`MEDIUM_PATH_BYTES_MAX`] bytes of `path`, cut at a char boundary.
fn truncated_path(path: &str) -> &[u8] {
    let mut end = path.len().min(MEDIUM_PATH_BYTES_MAX);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    &path.as_bytes()[..end]
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
    #[error("superblock medium kind {found} is not 1 (RAM), 2 (file) or 3 (block device)")]
    BadMediumKind { found: u32 },
    #[error("superblock medium path length {len} exceeds {MEDIUM_PATH_BYTES_MAX}")]
    BadMediumPath { len: usize },
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

    /// Whether the fields fit together, for a record that is not a pad: a
    /// data record has whole blocks of data; a Write Zeroes or Deallocate
    /// has blocks and no data; a cancelled record's data does not count.
    /// Unknown flags are refused.
    pub fn shape_ok(&self) -> bool {
        let data_len = self.data_len as u64;
        match self.flags {
            0 => self.nlb > 0 && data_len > 0 && data_len.is_multiple_of(self.nlb as u64),
            FLAG_CANCELLED => true,
            FLAG_ZEROES | FLAG_DEALLOCATE => self.nlb > 0 && data_len == 0,
            _ => false,
        }
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
