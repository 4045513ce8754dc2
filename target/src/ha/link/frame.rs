//! The frame format of the interconnect and its streaming decoder.
//!
//! Every message between the two nodes of a pair is one frame: a fixed
//! 20-byte header, then a payload whose layout depends on the kind. The
//! header carries its own CRC32C, so a corrupted length is refused as soon as
//! the header is in, not after waiting for bytes that will never come; the
//! payload has a second CRC32C. All integers are little-endian.
//!
//! Frame header ([`FRAME_HEADER_BYTES`] = 20):
//! ```text
//! offset size field
//! 0      4    magic, "TLNK" (FRAME_MAGIC)
//! 4      1    version (FRAME_VERSION = 1); any other value is refused
//! 5      1    kind (FrameKind code, 1..=14)
//! 6      2    flags, reserved: must be 0
//! 8      4    payload_bytes, at most the decoder's payload_bytes_max
//! 12     4    payload_crc32c, CRC32C of the payload bytes
//! 16     4    header_crc32c, CRC32C of header bytes 0..16
//! ```
//! Payloads (offsets from the start of the payload; "reserved" must be 0):
//! ```text
//! kind  name        bytes            layout
//! 1     Hello       16 + name_bytes  0 u16 protocol_version, 2 u8 role (1 initiator, 2 acceptor),
//!                                    3 u8 name_bytes (<= 64), 4 u32 reserved, 8 u64 node_id,
//!                                    16 name (UTF-8)
//! 2     Challenge   32               0 nonce [32]
//! 3     Response    32               0 HMAC-SHA256 [32]
//! 4     Record      24 + record      0 u64 ring_offset, 8 u64 seq, 16 u64 epoch,
//!                                    24 record bytes: the 64-byte ring record header + data,
//!                                    exactly as in the ring (see ha::layout)
//! 5     RecordAck   8                0 u64 through_seq (every record <= it is durable)
//! 6     Released    8                0 u64 released_seq (records <= it are on the medium)
//! 7     FailedSeqs  16 + 16 n        0 u64 batch_id, 8 u32 n (1..=FAILED_RANGES_MAX),
//!                                    12 u32 reserved, 16 n ranges: u64 first_seq, u64 last_seq
//!                                    (inclusive, first <= last)
//! 8     FailedDone  24               0 u64 batch_id, 8 u64 written_count, 16 u32 status
//!                                    (0 = all written and durable), 20 u32 reserved
//! 9     Heartbeat   32               0 u64 counter, 8 u64 sender_time_ms, 16 u64 echo_counter,
//!                                    24 u64 echo_time_ms (the last heartbeat received, echoed
//!                                    so its sender measures the round trip on its own clock)
//! 10    Goodbye     8                0 u32 reason (GoodbyeReason code), 4 u32 reserved
//! 11    StoreState  32               0 u64 format_nonce (0: no second store for this owner),
//!                                    8 u64 epoch, 16 u64 held_through (every record <= it is
//!                                    durable there), 24 u64 released_seq
//! 12    StoreFormat 32 + 4096        0 u64 generation, 8 u64 epoch, 16 u64 released_seq,
//!                                    24 u64 head_offset (the owner's control state), 32 the
//!                                    owner's superblock, SUPERBLOCK_BYTES, as in its ring
//! 13    Attach      16               0 u64 store_id (which of the owner's rings this
//!                                    connection mirrors), 8 u64 reserved
//! 14    Truncate    16               0 u64 through_seq (the partner drops its records after
//!                                    it: the owner lost them, unacknowledged), 8 u64 reserved
//! ```
//! Attach goes from the owner (the initiator) once the handshake is done:
//! one connection mirrors one ring, named by `store_id` (see `pair::store_id`).
//! StoreState goes from the partner to the owner once a connection is
//! authenticated; the owner answers either by streaming on from what the
//! partner holds or with StoreFormat, which makes the partner's second store
//! a fresh copy of the owner's ring (see `ha::mirror`).
//! A Record frame is sent as two pieces without copying the record: the
//! header and the 24 fixed bytes ([`RECORD_PREFIX_BYTES`]) encoded into a
//! caller buffer by [`encode_record_prefix`], then the record bytes straight
//! from the ring (`writev`).
//!
//! Errors: the decoder checks the magic, version, kind, flags and length as
//! soon as the header is in, then the payload CRC, then the fields. Any error
//! means the stream can no longer be trusted (frame boundaries are lost): the
//! caller logs it, drops the connection and reconnects; the decoder stays
//! failed until [`FrameDecoder::reset`]. Records not acknowledged are sent
//! again on the new connection, so nothing is lost.

use crate::ha::layout::{get_u32, get_u64, put_u32, put_u64, RECORD_HEADER_BYTES, SUPERBLOCK_BYTES};
use std::fmt;

/// Frame magic: "TLNK" as little-endian bytes.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"TLNK");
/// The frame format version this build writes and accepts.
pub const FRAME_VERSION: u8 = 1;
/// Size of the fixed frame header.
pub const FRAME_HEADER_BYTES: usize = 20;
/// Fixed part of a Record payload: ring_offset, seq, epoch.
pub const RECORD_FIXED_BYTES: usize = 24;
/// What [`encode_record_prefix`] writes: frame header + Record fixed part.
pub const RECORD_PREFIX_BYTES: usize = FRAME_HEADER_BYTES + RECORD_FIXED_BYTES;
/// Nonce size of a Challenge.
pub const NONCE_BYTES: usize = 32;
/// Size of a Response (HMAC-SHA256).
pub const MAC_BYTES: usize = 32;
/// Longest node name a Hello carries.
pub const NODE_NAME_BYTES_MAX: usize = 64;
/// Fixed part of a Hello payload (the name follows).
pub const HELLO_FIXED_BYTES: usize = 16;
/// Most ranges one FailedSeqs frame carries.
pub const FAILED_RANGES_MAX: usize = 64;
/// Fixed part of a FailedSeqs payload (the ranges follow).
pub const FAILED_FIXED_BYTES: usize = 16;
/// One range of a FailedSeqs payload.
pub const FAILED_RANGE_BYTES: usize = 16;
/// Payload of a FailedDone.
pub const FAILED_DONE_BYTES: usize = 24;
/// Payload of a Heartbeat.
pub const HEARTBEAT_BYTES: usize = 32;
/// Payload of RecordAck and Released.
pub const SEQ_BYTES: usize = 8;
/// Payload of a Goodbye.
pub const GOODBYE_BYTES: usize = 8;
/// Payload of a StoreState.
pub const STORE_STATE_BYTES: usize = 32;
/// Payload of an Attach.
pub const ATTACH_BYTES: usize = 16;
/// Fixed part of a StoreFormat payload (the superblock follows).
pub const STORE_FORMAT_FIXED_BYTES: usize = 32;
/// Payload of a StoreFormat: larger than any other control frame, so only a
/// decoder sized for records (the partner's) receives it.
pub const STORE_FORMAT_BYTES: usize = STORE_FORMAT_FIXED_BYTES + SUPERBLOCK_BYTES;
/// The largest payload any non-Record frame has; a decoder's
/// `payload_bytes_max` must be at least this (and at least the largest record
/// plus [`RECORD_FIXED_BYTES`]).
pub const CONTROL_PAYLOAD_BYTES_MAX: usize = FAILED_FIXED_BYTES + FAILED_RANGES_MAX * FAILED_RANGE_BYTES;

const MAGIC_AT: usize = 0;
const VERSION_AT: usize = 4;
const KIND_AT: usize = 5;
const FLAGS_AT: usize = 6;
const PAYLOAD_BYTES_AT: usize = 8;
const PAYLOAD_CRC_AT: usize = 12;
const HEADER_CRC_AT: usize = 16;

const _: () = assert!(HEADER_CRC_AT + 4 == FRAME_HEADER_BYTES);
const _: () = assert!(RECORD_PREFIX_BYTES == 44);
const _: () = assert!(HELLO_FIXED_BYTES + NODE_NAME_BYTES_MAX <= CONTROL_PAYLOAD_BYTES_MAX);
const _: () = assert!(NODE_NAME_BYTES_MAX <= u8::MAX as usize);
const _: () = assert!(FAILED_FIXED_BYTES + FAILED_RANGES_MAX * FAILED_RANGE_BYTES == 1040);
const _: () = assert!(HEARTBEAT_BYTES == 4 * 8 && FAILED_DONE_BYTES == 8 + 8 + 4 + 4);
const _: () = assert!(CONTROL_PAYLOAD_BYTES_MAX >= RECORD_FIXED_BYTES + RECORD_HEADER_BYTES);

/// The kind of a frame (header byte 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    Hello = 1,
    Challenge = 2,
    Response = 3,
    Record = 4,
    RecordAck = 5,
    Released = 6,
    FailedSeqs = 7,
    FailedDone = 8,
    Heartbeat = 9,
    Goodbye = 10,
    StoreState = 11,
    StoreFormat = 12,
    Attach = 13,
    Truncate = 14,
}

impl FrameKind {
    /// Every kind, in code order.
    pub const ALL: [FrameKind; 14] = [
        FrameKind::Hello,
        FrameKind::Challenge,
        FrameKind::Response,
        FrameKind::Record,
        FrameKind::RecordAck,
        FrameKind::Released,
        FrameKind::FailedSeqs,
        FrameKind::FailedDone,
        FrameKind::Heartbeat,
        FrameKind::Goodbye,
        FrameKind::StoreState,
        FrameKind::StoreFormat,
        FrameKind::Attach,
        FrameKind::Truncate,
    ];

    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<FrameKind> {
        FrameKind::ALL.iter().copied().find(|k| k.code() == code)
    }

    /// The payload length this kind must have: exact, or at least / at most.
    fn payload_bounds(self) -> (usize, usize) {
        match self {
            FrameKind::Hello => (HELLO_FIXED_BYTES, HELLO_FIXED_BYTES + NODE_NAME_BYTES_MAX),
            FrameKind::Challenge => (NONCE_BYTES, NONCE_BYTES),
            FrameKind::Response => (MAC_BYTES, MAC_BYTES),
            FrameKind::Record => (RECORD_FIXED_BYTES + RECORD_HEADER_BYTES, usize::MAX),
            FrameKind::RecordAck | FrameKind::Released => (SEQ_BYTES, SEQ_BYTES),
            FrameKind::FailedSeqs => (
                FAILED_FIXED_BYTES + FAILED_RANGE_BYTES,
                FAILED_FIXED_BYTES + FAILED_RANGES_MAX * FAILED_RANGE_BYTES,
            ),
            FrameKind::FailedDone => (FAILED_DONE_BYTES, FAILED_DONE_BYTES),
            FrameKind::Heartbeat => (HEARTBEAT_BYTES, HEARTBEAT_BYTES),
            FrameKind::Goodbye => (GOODBYE_BYTES, GOODBYE_BYTES),
            FrameKind::StoreState => (STORE_STATE_BYTES, STORE_STATE_BYTES),
            FrameKind::StoreFormat => (STORE_FORMAT_BYTES, STORE_FORMAT_BYTES),
            FrameKind::Attach | FrameKind::Truncate => (ATTACH_BYTES, ATTACH_BYTES),
        }
    }
}

/// Which end of the connection a node is; the handshake binds it into each
/// MAC so a response cannot be reflected back to its sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkRole {
    /// The node that dialled the connection.
    Initiator = 1,
    /// The node that accepted it.
    Acceptor = 2,
}

impl LinkRole {
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<LinkRole> {
        match code {
            1 => Some(LinkRole::Initiator),
            2 => Some(LinkRole::Acceptor),
            _ => None,
        }
    }

    /// The other end's role.
    pub fn peer(self) -> LinkRole {
        match self {
            LinkRole::Initiator => LinkRole::Acceptor,
            LinkRole::Acceptor => LinkRole::Initiator,
        }
    }
}

/// Why a node closes the link (a Goodbye frame).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoodbyeReason {
    /// An orderly shutdown.
    Shutdown,
    /// The peer failed authentication.
    AuthFailed,
    /// A frame from the peer did not decode.
    Malformed,
    /// A frame that decoded but was not expected in this state.
    ProtocolViolation,
    /// The peer's protocol version is not supported.
    VersionUnsupported,
    /// A code this build does not know (a newer peer); kept as is.
    Other(u32),
}

impl GoodbyeReason {
    pub fn code(self) -> u32 {
        match self {
            GoodbyeReason::Shutdown => 1,
            GoodbyeReason::AuthFailed => 2,
            GoodbyeReason::Malformed => 3,
            GoodbyeReason::ProtocolViolation => 4,
            GoodbyeReason::VersionUnsupported => 5,
            GoodbyeReason::Other(code) => code,
        }
    }

    pub fn from_code(code: u32) -> GoodbyeReason {
        match code {
            1 => GoodbyeReason::Shutdown,
            2 => GoodbyeReason::AuthFailed,
            3 => GoodbyeReason::Malformed,
            4 => GoodbyeReason::ProtocolViolation,
            5 => GoodbyeReason::VersionUnsupported,
            other => GoodbyeReason::Other(other),
        }
    }
}

/// An inclusive range of sequence numbers, `first..=last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqRange {
    pub first: u64,
    pub last: u64,
}

/// The ranges of a FailedSeqs frame: borrowed from the wire when decoded,
/// from the caller's slice when encoded. Compare with `==` either way.
#[derive(Clone, Copy)]
pub enum SeqRanges<'a> {
    /// `n` ranges as they are on the wire (validated by the decoder).
    Wire(&'a [u8]),
    /// Ranges to encode.
    List(&'a [SeqRange]),
}

impl<'a> SeqRanges<'a> {
    pub fn len(&self) -> usize {
        match self {
            SeqRanges::Wire(bytes) => bytes.len() / FAILED_RANGE_BYTES,
            SeqRanges::List(list) => list.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The range at `index` (< `len()`).
    pub fn get(&self, index: usize) -> Option<SeqRange> {
        match self {
            SeqRanges::Wire(bytes) => {
                let at = index.checked_mul(FAILED_RANGE_BYTES)?;
                let entry = bytes.get(at..at.checked_add(FAILED_RANGE_BYTES)?)?;
                Some(SeqRange { first: get_u64(entry, 0), last: get_u64(entry, 8) })
            }
            SeqRanges::List(list) => list.get(index).copied(),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = SeqRange> + '_ {
        (0..self.len()).filter_map(move |i| self.get(i))
    }
}

impl PartialEq for SeqRanges<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().zip(other.iter()).all(|(a, b)| a == b)
    }
}

impl Eq for SeqRanges<'_> {}

impl fmt::Debug for SeqRanges<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter().map(|r| r.first..=r.last)).finish()
    }
}

/// One decoded (or to-be-encoded) frame. Variable parts (a name, record
/// bytes, ranges) borrow from the decoder's buffer or the caller's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Hello {
        protocol_version: u16,
        role: LinkRole,
        node_id: u64,
        name: &'a str,
    },
    Challenge {
        nonce: [u8; NONCE_BYTES],
    },
    Response {
        mac: [u8; MAC_BYTES],
    },
    /// A ring record (64-byte header + data) for the partner's second store
    /// at `ring_offset`.
    Record {
        ring_offset: u64,
        seq: u64,
        epoch: u64,
        record: &'a [u8],
    },
    /// Every record through `through_seq` is durable in the second store.
    RecordAck {
        through_seq: u64,
    },
    /// Every record through `released_seq` is durable on the medium.
    Released {
        released_seq: u64,
    },
    /// The owner's medium failed these sequences; the partner writes them
    /// from its second store and answers with FailedDone of the same batch.
    FailedSeqs {
        batch_id: u64,
        ranges: SeqRanges<'a>,
    },
    FailedDone {
        batch_id: u64,
        written_count: u64,
        status: u32,
    },
    Heartbeat {
        counter: u64,
        sender_time_ms: u64,
        echo_counter: u64,
        echo_time_ms: u64,
    },
    Goodbye {
        reason: GoodbyeReason,
    },
    /// What the partner's second store for this owner holds.
    StoreState {
        format_nonce: u64,
        epoch: u64,
        held_through: u64,
        released_seq: u64,
    },
    /// Makes the partner's second store a fresh copy of the owner's ring.
    StoreFormat {
        generation: u64,
        epoch: u64,
        released_seq: u64,
        head_offset: u64,
        superblock: &'a [u8],
    },
    /// The owner names the ring this connection mirrors.
    Attach {
        store_id: u64,
    },
    /// The partner holds records after `through_seq` that the owner lost
    /// (never acknowledged): drop them, keep the rest.
    Truncate {
        through_seq: u64,
    },
}

impl Frame<'_> {
    pub fn kind(&self) -> FrameKind {
        match self {
            Frame::Hello { .. } => FrameKind::Hello,
            Frame::Challenge { .. } => FrameKind::Challenge,
            Frame::Response { .. } => FrameKind::Response,
            Frame::Record { .. } => FrameKind::Record,
            Frame::RecordAck { .. } => FrameKind::RecordAck,
            Frame::Released { .. } => FrameKind::Released,
            Frame::FailedSeqs { .. } => FrameKind::FailedSeqs,
            Frame::FailedDone { .. } => FrameKind::FailedDone,
            Frame::Heartbeat { .. } => FrameKind::Heartbeat,
            Frame::Goodbye { .. } => FrameKind::Goodbye,
            Frame::StoreState { .. } => FrameKind::StoreState,
            Frame::StoreFormat { .. } => FrameKind::StoreFormat,
            Frame::Attach { .. } => FrameKind::Attach,
            Frame::Truncate { .. } => FrameKind::Truncate,
        }
    }

    /// Payload length of this frame on the wire.
    pub fn payload_bytes(&self) -> usize {
        match self {
            Frame::Hello { name, .. } => HELLO_FIXED_BYTES + name.len(),
            Frame::Record { record, .. } => RECORD_FIXED_BYTES + record.len(),
            Frame::FailedSeqs { ranges, .. } => FAILED_FIXED_BYTES + ranges.len() * FAILED_RANGE_BYTES,
            other => other.kind().payload_bounds().0,
        }
    }

    /// Header + payload length on the wire.
    pub fn encoded_bytes(&self) -> usize {
        FRAME_HEADER_BYTES + self.payload_bytes()
    }
}

/// Why a frame could not be encoded (a bug of the caller: nothing here comes
/// from the wire).
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    #[error("frame needs {needed} bytes, the buffer has {available}")]
    BufferTooSmall { needed: usize, available: usize },
    #[error("{kind:?} frame: field {field} is out of range ({detail})")]
    BadField { kind: FrameKind, field: &'static str, detail: &'static str },
}

/// Why the byte stream was refused. Each names the field at fault. The link
/// is no longer usable after any of them: drop it and reconnect.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame header: bad magic {found:#010x} (expected {FRAME_MAGIC:#010x})")]
    BadMagic { found: u32 },
    #[error("frame header: unsupported version {found} (this build speaks {FRAME_VERSION})")]
    BadVersion { found: u8 },
    #[error("frame header: unknown kind {found}")]
    BadKind { found: u8 },
    #[error("frame header: flags {found:#06x} set (reserved, must be 0)")]
    BadFlags { found: u16 },
    #[error("frame header: header_crc32c {found:#010x} does not match {computed:#010x}")]
    BadHeaderCrc { found: u32, computed: u32 },
    #[error("{kind:?} frame: payload_bytes {payload_bytes} exceeds the maximum {max}")]
    PayloadTooLong { kind: FrameKind, payload_bytes: usize, max: usize },
    #[error("{kind:?} frame: payload_bytes {payload_bytes} is not valid for this kind ({min}..={max})")]
    BadLength { kind: FrameKind, payload_bytes: usize, min: usize, max: usize },
    #[error("{kind:?} frame: payload_crc32c {found:#010x} does not match {computed:#010x}")]
    BadPayloadCrc { kind: FrameKind, found: u32, computed: u32 },
    #[error("{kind:?} frame: field {field} is invalid ({detail})")]
    BadField { kind: FrameKind, field: &'static str, detail: &'static str },
}

/// Writes the 20-byte header for `kind` with `payload_bytes` and `payload_crc`.
fn write_header(out: &mut [u8], kind: FrameKind, payload_bytes: usize, payload_crc: u32) {
    put_u32(out, MAGIC_AT, FRAME_MAGIC);
    out[VERSION_AT] = FRAME_VERSION;
    out[KIND_AT] = kind.code();
    out[FLAGS_AT..FLAGS_AT + 2].copy_from_slice(&0u16.to_le_bytes());
    // Callers bound payload_bytes by the kind's maximum or by a u32 check.
    put_u32(out, PAYLOAD_BYTES_AT, payload_bytes as u32);
    put_u32(out, PAYLOAD_CRC_AT, payload_crc);
    let header_crc = crc32c::crc32c(&out[..HEADER_CRC_AT]);
    put_u32(out, HEADER_CRC_AT, header_crc);
}

fn check_record(record: &[u8]) -> Result<(), EncodeError> {
    if record.len() < RECORD_HEADER_BYTES {
        return Err(EncodeError::BadField {
            kind: FrameKind::Record,
            field: "record",
            detail: "shorter than a 64-byte record header",
        });
    }
    if RECORD_FIXED_BYTES + record.len() > u32::MAX as usize {
        return Err(EncodeError::BadField { kind: FrameKind::Record, field: "record", detail: "over 4 GiB" });
    }
    Ok(())
}

/// Encodes the header and fixed part of a Record frame into `out` and
/// returns [`RECORD_PREFIX_BYTES`]; the frame on the wire is
/// `out[..RECORD_PREFIX_BYTES]` followed by `record` unchanged, so a sender
/// can `writev` both without copying the record. Reads `record` once for the
/// payload CRC.
pub fn encode_record_prefix(
    ring_offset: u64,
    seq: u64,
    epoch: u64,
    record: &[u8],
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    check_record(record)?;
    let Some(out) = out.get_mut(..RECORD_PREFIX_BYTES) else {
        return Err(EncodeError::BufferTooSmall { needed: RECORD_PREFIX_BYTES, available: out.len() });
    };
    let (header, fixed) = out.split_at_mut(FRAME_HEADER_BYTES);
    put_u64(fixed, 0, ring_offset);
    put_u64(fixed, 8, seq);
    put_u64(fixed, 16, epoch);
    let crc = crc32c::crc32c_append(crc32c::crc32c(fixed), record);
    write_header(header, FrameKind::Record, RECORD_FIXED_BYTES + record.len(), crc);
    Ok(RECORD_PREFIX_BYTES)
}

/// Encodes `frame` whole into `out` and returns its length. A Record is
/// copied; on the data path use [`encode_record_prefix`] instead.
pub fn encode(frame: &Frame<'_>, out: &mut [u8]) -> Result<usize, EncodeError> {
    let total = frame.encoded_bytes();
    let available = out.len();
    let Some(out) = out.get_mut(..total) else {
        return Err(EncodeError::BufferTooSmall { needed: total, available });
    };
    if let Frame::Record { ring_offset, seq, epoch, record } = *frame {
        encode_record_prefix(ring_offset, seq, epoch, record, out)?;
        out[RECORD_PREFIX_BYTES..].copy_from_slice(record);
        return Ok(total);
    }
    let (header, payload) = out.split_at_mut(FRAME_HEADER_BYTES);
    payload.fill(0);
    match *frame {
        Frame::Hello { protocol_version, role, node_id, name } => {
            if name.len() > NODE_NAME_BYTES_MAX {
                return Err(EncodeError::BadField {
                    kind: FrameKind::Hello,
                    field: "name",
                    detail: "longer than 64 bytes",
                });
            }
            payload[0..2].copy_from_slice(&protocol_version.to_le_bytes());
            payload[2] = role.code();
            // Bounded by NODE_NAME_BYTES_MAX <= 255 just above.
            payload[3] = name.len() as u8;
            put_u64(payload, 8, node_id);
            payload[HELLO_FIXED_BYTES..].copy_from_slice(name.as_bytes());
        }
        Frame::Challenge { nonce } => payload.copy_from_slice(&nonce),
        Frame::Response { mac } => payload.copy_from_slice(&mac),
        Frame::RecordAck { through_seq } => put_u64(payload, 0, through_seq),
        Frame::Released { released_seq } => put_u64(payload, 0, released_seq),
        Frame::FailedSeqs { batch_id, ranges } => {
            let bad = |detail| EncodeError::BadField { kind: FrameKind::FailedSeqs, field: "ranges", detail };
            if ranges.is_empty() || ranges.len() > FAILED_RANGES_MAX {
                return Err(bad("count must be 1..=64"));
            }
            put_u64(payload, 0, batch_id);
            // Bounded by FAILED_RANGES_MAX just above.
            put_u32(payload, 8, ranges.len() as u32);
            for (i, range) in ranges.iter().enumerate() {
                if range.first > range.last {
                    return Err(bad("first_seq > last_seq"));
                }
                let at = FAILED_FIXED_BYTES + i * FAILED_RANGE_BYTES;
                put_u64(payload, at, range.first);
                put_u64(payload, at + 8, range.last);
            }
        }
        Frame::FailedDone { batch_id, written_count, status } => {
            put_u64(payload, 0, batch_id);
            put_u64(payload, 8, written_count);
            put_u32(payload, 16, status);
        }
        Frame::Heartbeat { counter, sender_time_ms, echo_counter, echo_time_ms } => {
            put_u64(payload, 0, counter);
            put_u64(payload, 8, sender_time_ms);
            put_u64(payload, 16, echo_counter);
            put_u64(payload, 24, echo_time_ms);
        }
        Frame::Goodbye { reason } => put_u32(payload, 0, reason.code()),
        Frame::StoreState { format_nonce, epoch, held_through, released_seq } => {
            put_u64(payload, 0, format_nonce);
            put_u64(payload, 8, epoch);
            put_u64(payload, 16, held_through);
            put_u64(payload, 24, released_seq);
        }
        Frame::StoreFormat { generation, epoch, released_seq, head_offset, superblock } => {
            if superblock.len() != SUPERBLOCK_BYTES {
                return Err(EncodeError::BadField {
                    kind: FrameKind::StoreFormat,
                    field: "superblock",
                    detail: "not SUPERBLOCK_BYTES long",
                });
            }
            put_u64(payload, 0, generation);
            put_u64(payload, 8, epoch);
            put_u64(payload, 16, released_seq);
            put_u64(payload, 24, head_offset);
            payload[STORE_FORMAT_FIXED_BYTES..].copy_from_slice(superblock);
        }
        Frame::Attach { store_id } => put_u64(payload, 0, store_id),
        Frame::Truncate { through_seq } => put_u64(payload, 0, through_seq),
        Frame::Record { .. } => unreachable!("handled above"),
    }
    let crc = crc32c::crc32c(payload);
    write_header(header, frame.kind(), payload.len(), crc);
    Ok(total)
}

/// Why a decoder could not be built (our own configuration, not the wire).
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderConfigError {
    #[error(
        "payload_bytes_max {payload_bytes_max} is below the control frames' {CONTROL_PAYLOAD_BYTES_MAX}"
    )]
    PayloadMaxTooSmall { payload_bytes_max: usize },
    #[error("receive buffer of {buf_bytes} bytes cannot hold a frame of {needed} bytes")]
    BufferTooSmall { buf_bytes: usize, needed: usize },
}

/// A streaming frame decoder over a caller-owned, fixed receive buffer (no
/// allocation, ever). Put bytes in with [`FrameDecoder::feed`] (a copy) or
/// by reading the socket into [`FrameDecoder::spare_mut`] then
/// [`FrameDecoder::commit`]; take frames out with
/// [`FrameDecoder::next_frame`] until it returns `Ok(None)`. A returned frame
/// borrows the buffer until the next call.
///
/// The buffer must hold the largest frame (`FRAME_HEADER_BYTES +
/// payload_bytes_max`); a peer that announces a longer payload is refused.
/// After an error the decoder returns the same error until `reset`.
pub struct FrameDecoder<B: AsRef<[u8]> + AsMut<[u8]>> {
    buf: B,
    /// Bytes `start..end` are received and not yet returned as a frame.
    start: usize,
    end: usize,
    payload_bytes_max: usize,
    failed: Option<FrameError>,
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> FrameDecoder<B> {
    /// A decoder accepting payloads up to `payload_bytes_max` (for records:
    /// [`RECORD_FIXED_BYTES`] + the largest ring record) using `buf`.
    pub fn new(buf: B, payload_bytes_max: usize) -> Result<FrameDecoder<B>, DecoderConfigError> {
        if payload_bytes_max < CONTROL_PAYLOAD_BYTES_MAX || payload_bytes_max > u32::MAX as usize {
            return Err(DecoderConfigError::PayloadMaxTooSmall { payload_bytes_max });
        }
        let needed = FRAME_HEADER_BYTES + payload_bytes_max;
        if buf.as_ref().len() < needed {
            return Err(DecoderConfigError::BufferTooSmall { buf_bytes: buf.as_ref().len(), needed });
        }
        Ok(FrameDecoder { buf, start: 0, end: 0, payload_bytes_max, failed: None })
    }

    /// Forgets buffered bytes and any error: for a new connection.
    pub fn reset(&mut self) {
        self.start = 0;
        self.end = 0;
        self.failed = None;
    }

    /// Bytes received and not yet returned as frames.
    pub fn buffered_bytes(&self) -> usize {
        self.end - self.start
    }

    /// Takes the bytes received and not yet returned as frames (to hand a
    /// connection to another decoder); this decoder is empty afterwards.
    pub fn take_buffered(&mut self) -> Vec<u8> {
        let bytes = self.buf.as_ref()[self.start..self.end].to_vec();
        self.start = 0;
        self.end = 0;
        bytes
    }

    /// The error the decoder stopped at, if any.
    pub fn error(&self) -> Option<FrameError> {
        self.failed
    }

    /// Moves unread bytes to the front when that makes room.
    fn compact(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0
            && (self.end == self.buf.as_ref().len() || self.start >= self.buf.as_ref().len() / 2)
        {
            self.buf.as_mut().copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// Free space to receive into (read the socket here, then `commit`).
    /// Empty only when a whole frame is buffered: call `next_frame` first.
    pub fn spare_mut(&mut self) -> &mut [u8] {
        self.compact();
        let end = self.end;
        &mut self.buf.as_mut()[end..]
    }

    /// Marks `bytes` of `spare_mut` as received.
    pub fn commit(&mut self, bytes: usize) {
        assert!(bytes <= self.buf.as_ref().len() - self.end, "commit beyond the spare space");
        self.end += bytes;
    }

    /// Copies as much of `bytes` as fits and returns how many were taken.
    pub fn feed(&mut self, bytes: &[u8]) -> usize {
        let spare = self.spare_mut();
        let taken = bytes.len().min(spare.len());
        spare[..taken].copy_from_slice(&bytes[..taken]);
        self.end += taken;
        taken
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed, or the
    /// error that ends this connection.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, FrameError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        // Field-disjoint borrows: the frame borrows `buf`, the bookkeeping
        // below writes `start` and `failed`.
        let available = &self.buf.as_ref()[self.start..self.end];
        let Some(header) = available.get(..FRAME_HEADER_BYTES) else {
            return Ok(None);
        };
        let result = check_header(header, self.payload_bytes_max).and_then(|(kind, payload_bytes, crc)| {
            let total = FRAME_HEADER_BYTES + payload_bytes;
            let Some(payload) = available.get(FRAME_HEADER_BYTES..total) else {
                return Ok(None);
            };
            let computed = crc32c::crc32c(payload);
            if computed != crc {
                return Err(FrameError::BadPayloadCrc { kind, found: crc, computed });
            }
            parse_payload(kind, payload).map(|frame| Some((frame, total)))
        });
        match result {
            Ok(Some((frame, total))) => {
                self.start += total;
                Ok(Some(frame))
            }
            Ok(None) => Ok(None),
            Err(error) => {
                self.failed = Some(error);
                Err(error)
            }
        }
    }
}

/// Checks a frame header; returns (kind, payload_bytes, payload_crc).
fn check_header(header: &[u8], payload_bytes_max: usize) -> Result<(FrameKind, usize, u32), FrameError> {
    let magic = get_u32(header, MAGIC_AT);
    if magic != FRAME_MAGIC {
        return Err(FrameError::BadMagic { found: magic });
    }
    let found_crc = get_u32(header, HEADER_CRC_AT);
    let computed = crc32c::crc32c(&header[..HEADER_CRC_AT]);
    if found_crc != computed {
        return Err(FrameError::BadHeaderCrc { found: found_crc, computed });
    }
    if header[VERSION_AT] != FRAME_VERSION {
        return Err(FrameError::BadVersion { found: header[VERSION_AT] });
    }
    let Some(kind) = FrameKind::from_code(header[KIND_AT]) else {
        return Err(FrameError::BadKind { found: header[KIND_AT] });
    };
    let flags = u16::from_le_bytes([header[FLAGS_AT], header[FLAGS_AT + 1]]);
    if flags != 0 {
        return Err(FrameError::BadFlags { found: flags });
    }
    let payload_bytes = get_u32(header, PAYLOAD_BYTES_AT) as usize;
    if payload_bytes > payload_bytes_max {
        return Err(FrameError::PayloadTooLong { kind, payload_bytes, max: payload_bytes_max });
    }
    let (min, max) = kind.payload_bounds();
    if payload_bytes < min || payload_bytes > max {
        return Err(FrameError::BadLength { kind, payload_bytes, min, max: max.min(payload_bytes_max) });
    }
    Ok((kind, payload_bytes, get_u32(header, PAYLOAD_CRC_AT)))
}

/// Parses a payload whose length is within the kind's bounds.
fn parse_payload(kind: FrameKind, p: &[u8]) -> Result<Frame<'_>, FrameError> {
    let bad = |field, detail| FrameError::BadField { kind, field, detail };
    let exact = |n: usize| {
        if p.len() == n {
            Ok(())
        } else {
            Err(FrameError::BadLength { kind, payload_bytes: p.len(), min: n, max: n })
        }
    };
    Ok(match kind {
        FrameKind::Hello => {
            exact(HELLO_FIXED_BYTES + usize::from(*p.get(3).unwrap_or(&0)))?;
            let Some(role) = LinkRole::from_code(p[2]) else {
                return Err(bad("role", "not 1 (initiator) or 2 (acceptor)"));
            };
            if get_u32(p, 4) != 0 {
                return Err(bad("reserved", "must be 0"));
            }
            let Ok(name) = std::str::from_utf8(&p[HELLO_FIXED_BYTES..]) else {
                return Err(bad("name", "not UTF-8"));
            };
            Frame::Hello {
                protocol_version: u16::from_le_bytes([p[0], p[1]]),
                role,
                node_id: get_u64(p, 8),
                name,
            }
        }
        FrameKind::Challenge => {
            let mut nonce = [0u8; NONCE_BYTES];
            nonce.copy_from_slice(p);
            Frame::Challenge { nonce }
        }
        FrameKind::Response => {
            let mut mac = [0u8; MAC_BYTES];
            mac.copy_from_slice(p);
            Frame::Response { mac }
        }
        FrameKind::Record => Frame::Record {
            ring_offset: get_u64(p, 0),
            seq: get_u64(p, 8),
            epoch: get_u64(p, 16),
            record: &p[RECORD_FIXED_BYTES..],
        },
        FrameKind::RecordAck => Frame::RecordAck { through_seq: get_u64(p, 0) },
        FrameKind::Released => Frame::Released { released_seq: get_u64(p, 0) },
        FrameKind::FailedSeqs => {
            let count = get_u32(p, 8) as usize;
            if count == 0 || count > FAILED_RANGES_MAX {
                return Err(bad("range_count", "must be 1..=64"));
            }
            exact(FAILED_FIXED_BYTES + count * FAILED_RANGE_BYTES)?;
            if get_u32(p, 12) != 0 {
                return Err(bad("reserved", "must be 0"));
            }
            let ranges = SeqRanges::Wire(&p[FAILED_FIXED_BYTES..]);
            if ranges.iter().any(|r| r.first > r.last) {
                return Err(bad("ranges", "first_seq > last_seq"));
            }
            Frame::FailedSeqs { batch_id: get_u64(p, 0), ranges }
        }
        FrameKind::FailedDone => {
            if get_u32(p, 20) != 0 {
                return Err(bad("reserved", "must be 0"));
            }
            Frame::FailedDone {
                batch_id: get_u64(p, 0),
                written_count: get_u64(p, 8),
                status: get_u32(p, 16),
            }
        }
        FrameKind::Heartbeat => Frame::Heartbeat {
            counter: get_u64(p, 0),
            sender_time_ms: get_u64(p, 8),
            echo_counter: get_u64(p, 16),
            echo_time_ms: get_u64(p, 24),
        },
        FrameKind::Goodbye => {
            if get_u32(p, 4) != 0 {
                return Err(bad("reserved", "must be 0"));
            }
            Frame::Goodbye { reason: GoodbyeReason::from_code(get_u32(p, 0)) }
        }
        FrameKind::StoreState => Frame::StoreState {
            format_nonce: get_u64(p, 0),
            epoch: get_u64(p, 8),
            held_through: get_u64(p, 16),
            released_seq: get_u64(p, 24),
        },
        FrameKind::StoreFormat => Frame::StoreFormat {
            generation: get_u64(p, 0),
            epoch: get_u64(p, 8),
            released_seq: get_u64(p, 16),
            head_offset: get_u64(p, 24),
            superblock: &p[STORE_FORMAT_FIXED_BYTES..],
        },
        FrameKind::Attach => {
            if get_u64(p, 8) != 0 {
                return Err(bad("reserved", "must be 0"));
            }
            Frame::Attach { store_id: get_u64(p, 0) }
        }
        FrameKind::Truncate => {
            if get_u64(p, 8) != 0 {
                return Err(bad("reserved", "must be 0"));
            }
            Frame::Truncate { through_seq: get_u64(p, 0) }
        }
    })
}
