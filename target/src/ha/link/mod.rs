//! The interconnect between the two nodes of a pair, sans-I/O: the frame
//! codec ([`frame`]) and the mutual authentication ([`auth`]). The socket
//! side (TCP), the timers and the HA core build on this; nothing here does
//! I/O, reads a clock or allocates on the data path.
//!
//! What the link carries (DESIGN.md, "One write, start to finish"): the
//! owner sends each staged record, header and data exactly as in its ring, as
//! a `Record` frame naming the ring offset; the partner writes it at that
//! offset of its second store, persists it and answers `RecordAck` through
//! the highest sequence durable there (acks are cumulative: records are
//! written and acknowledged in sequence order). The owner sends `Released`
//! once the medium has records through `released_seq`, and `FailedSeqs` for
//! sequences its medium failed; the partner writes those from its second
//! store and answers `FailedDone` of the same batch. Both sides send
//! `Heartbeat` on a timer and echo the last one received; `Goodbye` closes.
//!
//! Right after authenticating, the owner (the dialling side) sends `Attach`
//! naming the ring the connection mirrors, and the partner answers
//! `StoreState` (what its second store for that ring holds); the owner
//! streams on from there or sends `StoreFormat` first (see `ha::mirror`,
//! which implements both ends; `pair` runs them over TCP).
//!
//! Connecting (both sides):
//! 1. TCP connect/accept; `Handshake::new(config, auth::fresh_nonce()?)`
//!    with the role `Initiator` on the dialling side and `Acceptor` on the
//!    other; send `start()`'s bytes.
//! 2. Decode frames (below) and pass each to `Handshake::on_frame`; send any
//!    `Step::Send` bytes; stop at `Step::Authenticated { peer }`. Frames
//!    decoded after the one that authenticated belong to the link. Enforce a
//!    deadline yourself: a handshake that does not finish in time is a
//!    failed one.
//! 3. On `AuthError` or `FrameError`: log it with the peer's address, send
//!    `Goodbye` if `AuthError::goodbye_reason` gives one, close, and dial
//!    again after a delay. A stranger is refused here and nothing changes.
//!
//! Sending (owner, no allocation per record): `MirrorSender::fill` encodes
//! `Released`, `FailedSeqs` and `Record` frames back to back into one
//! preallocated send buffer (4 MiB per link, `pair::owner`), copying each
//! record from the ring; many records are in flight, nothing waits for an
//! ack before sending the next. `frame::encode_record_prefix` exists so that
//! a `writev([prefix, record bytes from the ring])` can save that copy
//! (issue 11).
//!
//! Receiving (no allocation): one `FrameDecoder` per connection over a
//! buffer allocated once, at least `FRAME_HEADER_BYTES + RECORD_FIXED_BYTES +`
//! the largest record (header + `record_data_bytes_max`); read the socket
//! into `spare_mut()`, `commit(n)`, then `while let Some(frame) =
//! decoder.next_frame()? { ... }`. A `Record`'s bytes borrow the buffer:
//! copy them into the second store at `ring_offset` (check its record
//! header and CRC as recovery does), persist, then send `RecordAck`.
//! Any `FrameError` ends the connection (frame boundaries are lost); the
//! owner keeps every record until it is acknowledged and sends the
//! unacknowledged ones again on the next connection, so nothing is lost;
//! `decoder.reset()` readies the decoder for the next connection.

pub mod auth;
pub mod frame;

#[cfg(test)]
mod auth_tests;
#[cfg(test)]
mod frame_tests;

pub use auth::{
    fresh_nonce, AuthError, Handshake, HandshakeConfig, KeyError, LinkKey, PeerIdentity, Step,
    PROTOCOL_VERSION,
};
pub use frame::{
    encode, encode_record_prefix, DecoderConfigError, EncodeError, Frame, FrameDecoder, FrameError,
    FrameKind, GoodbyeReason, LinkRole, SeqRange, SeqRanges, FRAME_HEADER_BYTES, RECORD_PREFIX_BYTES,
};
