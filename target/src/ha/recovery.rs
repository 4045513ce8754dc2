//! Recovery of a staging ring after a crash: validate the superblock, read the
//! control block, then walk the records from `released_seq` in sequence order.
//!
//! The walk stops at the first record that is not the expected next one: a bad
//! magic or CRC (torn), a different sequence number (space never rewritten), or
//! an epoch older than the control block's (a stale tail, left behind when the
//! partner drained this ring and the epoch moved on). Because the ring writes
//! and persists headers strictly in sequence order (see `ring`), a valid record
//! of the current epoch with a HIGHER sequence anywhere in the area means the
//! stop point was durable once and is now damaged: that is a corrupt middle, and
//! recovery refuses with [`RecoveryError::CorruptRecord`] instead of silently
//! dropping the acknowledged writes after it.
//!
//! A ring is bound to the medium it stages for (its superblock records the
//! [`MediumIdentity`]): staged records are replayed only into that medium. A
//! ring that holds staged writes for another medium, or (layout version 1) for
//! an unknown one, is refused before anything in it is written, so the node it
//! belongs to can still recover it; [`Binding::adopt_foreign`] overrides that
//! for an operator who moved or copied the medium. A ring with nothing to
//! replay is simply re-bound to the medium configured now.
//!
//! The recovered records come back as durable, unreleased records of the ring;
//! the flusher then replays them to the medium in order, makes them durable and
//! releases them (see `StagingLog::recover`), before the caller opens its ports.

use super::layout::{
    ControlState, Geometry, MediumIdentity, RecordHeader, Superblock, SuperblockError, CONTROL_SLOT_BYTES,
    FLAG_CANCELLED, FLAG_PAD, RECORD_HEADER_BYTES, SUPERBLOCK_BYTES,
};
use super::ring::{RecoveredRecord, Ring};
use tandem_env::persist::PersistentRegion;

/// Why a ring cannot be recovered. Each variant says what was found and where.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum RecoveryError {
    #[error("staging ring superblock invalid: {0}")]
    Superblock(#[from] SuperblockError),
    #[error("staging ring control block: neither slot has a valid CRC")]
    NoControlBlock,
    #[error(
        "staging ring control block head offset {head_offset} is not an aligned offset \
         inside the {area_bytes}-byte area"
    )]
    BadHeadOffset { head_offset: u64, area_bytes: u64 },
    #[error(
        "staging record {seq} at region offset {offset} is {reason}, but a valid later record {later_seq} \
         exists at region offset {later_offset}: acknowledged writes would be lost; refusing to recover \
         (recover from the partner's copy or repair the ring by hand)"
    )]
    CorruptRecord { seq: u64, offset: u64, reason: StopReason, later_seq: u64, later_offset: u64 },
    #[error(
        "the ring holds {records} staged writes ({bytes} bytes) for {recorded}, but this namespace's medium \
         is {configured}: they are not replayed into another medium, and the ring is left as it is. Start the \
         node whose medium it is; or, if this really is that medium (moved or copied), start once with \
         --adopt-staging to replay them into it"
    )]
    MediumMismatch {
        records: u64,
        bytes: u64,
        recorded: Box<MediumIdentity>,
        configured: Box<MediumIdentity>,
    },
    #[error(
        "the ring (superblock layout version 1) records no medium and holds {records} staged writes \
         ({bytes} bytes); this namespace's medium is {configured}. The ring is left as it is; if it staged \
         for this medium, start once with --adopt-staging to replay them into it"
    )]
    MediumUnknown { records: u64, bytes: u64, configured: Box<MediumIdentity> },
    #[error(
        "staging record {seq} at region offset {offset} has epoch {record_epoch}, newer than the control \
         block's {control_epoch}; refusing to recover"
    )]
    EpochAhead { seq: u64, offset: u64, record_epoch: u64, control_epoch: u64 },
}

/// Why the walk stopped at a record position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// No record header (bad magic, version or ring instance), or it does not fit.
    NoHeader,
    /// A header whose CRC over header and data does not match: torn.
    BadCrc,
    /// A valid header with another sequence number (older space).
    SequenceMismatch { found: u64 },
    /// A valid record of an older epoch: a stale tail.
    StaleEpoch { record_epoch: u64 },
    /// The walk covered the whole area.
    AreaEnd,
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::NoHeader => write!(f, "missing (no valid header)"),
            StopReason::BadCrc => write!(f, "damaged (CRC mismatch)"),
            StopReason::SequenceMismatch { found } => write!(f, "missing (found sequence {found} there)"),
            StopReason::StaleEpoch { record_epoch } => write!(f, "stale (epoch {record_epoch})"),
            StopReason::AreaEnd => write!(f, "beyond the end of the area"),
        }
    }
}

/// What the scan found. `StagingLog::recover` adds what the replay did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanReport {
    pub epoch: u64,
    pub released_seq: u64,
    /// Valid records after `released_seq` (cancelled ones included).
    pub records_found: u64,
    /// Data bytes of the non-cancelled records found.
    pub data_bytes_found: u64,
    /// The walk stopped at a torn record (a header whose CRC over header and
    /// data fails): dropped, it was never acknowledged. A header lost entirely
    /// looks like never-written space and is reported in `stop` only.
    pub torn_tail: bool,
    /// The walk stopped at a record of an older epoch.
    pub stale_tail: bool,
    pub stop: StopReason,
    /// The superblock was re-bound to the configured medium (it recorded
    /// another or none, and nothing was staged, or `adopt_foreign` was set).
    pub medium_rebound: bool,
}

/// The medium a ring is opened for: its staged records are replayed there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub medium: MediumIdentity,
    /// Replay a ring bound to another (or an unknown) medium into this one
    /// and re-bind it: the operator says the medium was moved or copied.
    pub adopt_foreign: bool,
}

impl Binding {
    pub fn new(medium: MediumIdentity) -> Binding {
        Binding { medium, adopt_foreign: false }
    }
}

impl ScanReport {
    fn of(control: &ControlState, scan: &Scan, staged_bytes: u64, medium_rebound: bool) -> ScanReport {
        ScanReport {
            epoch: control.epoch,
            released_seq: control.released_seq,
            records_found: scan.records.len() as u64,
            data_bytes_found: staged_bytes,
            torn_tail: matches!(scan.stop, StopReason::BadCrc),
            stale_tail: matches!(scan.stop, StopReason::StaleEpoch { .. }),
            stop: scan.stop,
            medium_rebound,
        }
    }
}

/// Opens a ring in `region` after a crash or restart, for the medium of
/// `binding` (see the module docs: nothing is written before the ring is known
/// to belong to that medium). If `epoch_at_least` is above the control
/// block's epoch, the control block first moves to it (the membership layer
/// knows this node's records were drained by the partner), so every record
/// staged under the old epoch becomes a stale tail.
pub fn open_ring<R: PersistentRegion>(
    mut region: R,
    epoch_at_least: u64,
    binding: &Binding,
) -> Result<(Ring<R>, ScanReport), RecoveryError> {
    let Read { mut superblock, control, bump_epoch, scan, staged_records, staged_bytes } =
        read(region.bytes(), epoch_at_least)?;
    let geometry = superblock.geometry;
    let bound_here = superblock.medium.as_ref().is_some_and(|m| m.same_medium(&binding.medium));
    if !bound_here && staged_records > 0 && !binding.adopt_foreign {
        let configured = Box::new(binding.medium.clone());
        return Err(match &superblock.medium {
            Some(recorded) => RecoveryError::MediumMismatch {
                records: staged_records,
                bytes: staged_bytes,
                recorded: Box::new(recorded.clone()),
                configured,
            },
            None => RecoveryError::MediumUnknown { records: staged_records, bytes: staged_bytes, configured },
        });
    }
    if !bound_here {
        let recorded = superblock.medium.as_ref().map_or_else(|| "no medium".to_string(), |m| m.to_string());
        tracing::warn!(
            recorded = %recorded,
            configured = %binding.medium,
            staged_records,
            "staging ring re-bound to this namespace's medium"
        );
        Superblock::encode(&geometry, &binding.medium, &mut region.bytes_mut()[..SUPERBLOCK_BYTES]);
        region.persist(0, SUPERBLOCK_BYTES);
        superblock.medium = Some(binding.medium.clone());
    }
    if bump_epoch {
        let offset = ControlState::slot_offset(control.generation);
        write_control(&mut region, offset, &control);
    }

    let report = ScanReport::of(&control, &scan, staged_bytes, !bound_here);
    let ring = Ring::assemble(region, superblock, control, &scan.records, scan.tail_pos);
    Ok((ring, report))
}

/// Opens a second store (a copy of the partner's ring, written by the
/// mirror) after a restart, writing nothing: it stays bound to the medium its
/// owner recorded, and its records are only ever written to that medium by a
/// takeover. The owner's `StoreFormat` replaces it when it is not a copy.
pub fn open_second_store<R: PersistentRegion>(region: R) -> Result<(Ring<R>, ScanReport), RecoveryError> {
    let Read { superblock, control, bump_epoch: _, scan, staged_records: _, staged_bytes } =
        read(region.bytes(), 0)?;
    let report = ScanReport::of(&control, &scan, staged_bytes, false);
    let ring = Ring::assemble(region, superblock, control, &scan.records, scan.tail_pos);
    Ok((ring, report))
}

/// What a ring holds, read without writing anything: for a ring that is not
/// to be opened (one left where an older build kept its rings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingContents {
    /// The medium the superblock records (`None`: layout version 1).
    pub medium: Option<MediumIdentity>,
    /// Staged (not cancelled) records and their data bytes.
    pub staged_records: u64,
    pub staged_bytes: u64,
}

/// Reads a ring image without changing it.
pub fn inspect(bytes: &[u8]) -> Result<RingContents, RecoveryError> {
    let read = read(bytes, 0)?;
    Ok(RingContents {
        medium: read.superblock.medium,
        staged_records: read.staged_records,
        staged_bytes: read.staged_bytes,
    })
}

struct Read {
    superblock: Superblock,
    /// The control block, moved to `epoch_at_least` in memory if it was older.
    control: ControlState,
    bump_epoch: bool,
    scan: Scan,
    staged_records: u64,
    staged_bytes: u64,
}

/// Superblock, control block and the scan, read-only.
fn read(bytes: &[u8], epoch_at_least: u64) -> Result<Read, RecoveryError> {
    let region_bytes = bytes.len();
    let superblock = Superblock::decode(&bytes[..SUPERBLOCK_BYTES.min(region_bytes)], region_bytes)?;
    let geometry = superblock.geometry;
    let mut control = ControlState::read(bytes).ok_or(RecoveryError::NoControlBlock)?;
    let align = geometry.record_align_bytes as u64;
    if control.head_offset >= geometry.area_bytes || !control.head_offset.is_multiple_of(align) {
        return Err(RecoveryError::BadHeadOffset {
            head_offset: control.head_offset,
            area_bytes: geometry.area_bytes,
        });
    }
    let bump_epoch = epoch_at_least > control.epoch;
    if bump_epoch {
        control = ControlState { generation: control.generation + 1, epoch: epoch_at_least, ..control };
    }
    let scan = scan(bytes, &geometry, &control)?;
    let staged = scan.records.iter().filter(|r| r.header.flags & FLAG_CANCELLED == 0);
    let (staged_records, staged_bytes) =
        staged.fold((0u64, 0u64), |(n, b), r| (n + 1, b + u64::from(r.header.data_len)));
    Ok(Read { superblock, control, bump_epoch, scan, staged_records, staged_bytes })
}

fn write_control<R: PersistentRegion>(region: &mut R, offset: usize, control: &ControlState) {
    control.encode(&mut region.bytes_mut()[offset..offset + CONTROL_SLOT_BYTES]);
    region.persist(offset, CONTROL_SLOT_BYTES);
}

struct Scan {
    records: Vec<RecoveredRecord>,
    tail_pos: u64,
    stop: StopReason,
}

/// A header at an area position, validated against the ring instance and,
/// if `check_crc`, the CRC over header and data.
enum Probe {
    Missing,
    Torn(RecordHeader),
    Valid(RecordHeader),
}

fn probe(bytes: &[u8], geometry: &Geometry, area_pos: u64, check_crc: bool) -> Probe {
    let align = geometry.record_align_bytes as u64;
    let header_offset = (geometry.area_offset + area_pos + align) as usize - RECORD_HEADER_BYTES;
    let header_bytes = &bytes[header_offset..header_offset + RECORD_HEADER_BYTES];
    let Some(header) = RecordHeader::decode(header_bytes) else { return Probe::Missing };
    if header.format_nonce != geometry.format_nonce {
        return Probe::Missing;
    }
    let data_len = header.data_len as u64;
    let is_pad = header.flags & FLAG_PAD != 0;
    let fits = if is_pad {
        data_len == 0 && area_pos != 0
    } else {
        header.shape_ok() && area_pos + geometry.record_total_bytes(data_len as usize) <= geometry.area_bytes
    };
    if !fits {
        return Probe::Torn(header);
    }
    if check_crc {
        let data_start = header_offset + RECORD_HEADER_BYTES;
        let data: &[u8] =
            if header.crc_covers_data() { &bytes[data_start..data_start + data_len as usize] } else { &[] };
        if !RecordHeader::crc_matches(header_bytes, data) {
            return Probe::Torn(header);
        }
    }
    Probe::Valid(header)
}

fn scan(bytes: &[u8], geometry: &Geometry, control: &ControlState) -> Result<Scan, RecoveryError> {
    let area = geometry.area_bytes;
    let head_pos = control.head_offset;
    let mut pos = head_pos;
    let mut expected = control.released_seq + 1;
    let mut records = Vec::new();
    let mut tail_pos = head_pos;
    // Where the current record's space starts (its pad, if it has one).
    let mut start_pos = pos;
    let stop = loop {
        if pos - head_pos >= area {
            break StopReason::AreaEnd;
        }
        let area_pos = pos % area;
        let header = match probe(bytes, geometry, area_pos, true) {
            Probe::Missing => break StopReason::NoHeader,
            Probe::Torn(_) => break StopReason::BadCrc,
            Probe::Valid(header) => header,
        };
        if header.seq != expected {
            break StopReason::SequenceMismatch { found: header.seq };
        }
        if header.epoch < control.epoch {
            break StopReason::StaleEpoch { record_epoch: header.epoch };
        }
        if header.epoch > control.epoch {
            return Err(RecoveryError::EpochAhead {
                seq: header.seq,
                offset: geometry.area_offset + area_pos,
                record_epoch: header.epoch,
                control_epoch: control.epoch,
            });
        }
        if header.flags & FLAG_PAD != 0 {
            // A pad before the record `expected`: continue at area offset 0.
            // A second pad in a row cannot occur (offset 0 never pads).
            if start_pos != pos {
                break StopReason::BadCrc;
            }
            pos += area - area_pos;
            continue;
        }
        records.push(RecoveredRecord { header, start_pos, record_pos: pos });
        pos += geometry.record_total_bytes(header.data_len as usize);
        tail_pos = pos;
        start_pos = pos;
        expected += 1;
    };
    if !matches!(stop, StopReason::AreaEnd) {
        check_no_later_record(bytes, geometry, control, expected, pos, stop)?;
    }
    Ok(Scan { records, tail_pos, stop })
}

/// Refuses a corrupt middle: no valid record of the current epoch may exist
/// with a sequence above the stop point (or the stop point's own sequence
/// elsewhere). A pad carrying the stop sequence is allowed: it is persisted
/// before its record, so a crash may leave it without the record.
fn check_no_later_record(
    bytes: &[u8],
    geometry: &Geometry,
    control: &ControlState,
    stop_seq: u64,
    stop_pos: u64,
    stop: StopReason,
) -> Result<(), RecoveryError> {
    let align = geometry.record_align_bytes as u64;
    let mut area_pos = 0;
    while area_pos < geometry.area_bytes {
        // Cheap filter first (magic, nonce, epoch, sequence), CRC last.
        if let Probe::Valid(header) | Probe::Torn(header) = probe(bytes, geometry, area_pos, false) {
            let is_pad = header.flags & FLAG_PAD != 0;
            let later = header.seq > stop_seq || (header.seq == stop_seq && !is_pad);
            if later && header.epoch == control.epoch {
                if let Probe::Valid(header) = probe(bytes, geometry, area_pos, true) {
                    return Err(RecoveryError::CorruptRecord {
                        seq: stop_seq,
                        offset: geometry.area_offset + stop_pos % geometry.area_bytes,
                        reason: stop,
                        later_seq: header.seq,
                        later_offset: geometry.area_offset + area_pos,
                    });
                }
            }
        }
        area_pos += align;
    }
    Ok(())
}
