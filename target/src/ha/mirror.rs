//! The mirror over the link, sans-I/O (issue 8 item 3): the owner's
//! [`MirrorSender`] turns durable records of its first store into `Record`
//! frames and the partner's `RecordAck`s into acknowledgements (through the
//! [`AckGate`]); the partner's [`MirrorReceiver`] writes `Record` frames into
//! its second store ([`Ring::accept_mirrored`]) and answers how far it holds
//! them durably, and frees them on `Released`.
//!
//! Ordering: frames travel in one ordered stream, and the sender sends
//! `Released` only through what it has sent, so the partner has every record
//! a release names. The owner releases a record (frees it after the medium
//! has it) only once the partner acknowledged it too, while mirrored
//! ([`MirrorSender::releasable_through`]): so the partner never misses a
//! record, and its second store stays dense. After a reconnect the sender starts again after what the
//! partner acknowledged; records it resends are acknowledged again, not
//! rewritten.
//!
//! Not yet here: formatting the partner's second store over the link (today
//! the caller formats it from the owner's superblock and control state, see
//! `Ring::format_mirror`), the resync after a long absence, failed-sequence
//! handling, heartbeats, and the socket itself.

use std::ops::RangeInclusive;

use super::ack::{AckError, AckGate, MirrorMode};
use super::layout::RecordHeader;
use super::link::frame::{encode, encode_record_prefix, EncodeError, Frame, RECORD_PREFIX_BYTES};
use super::ring::{Accepted, MirrorError, Ring};
use tandem_env::persist::PersistentRegion;

/// The owner's side of the mirror.
#[derive(Debug)]
pub struct MirrorSender {
    gate: AckGate,
    /// Every record through this was put into a frame on this connection.
    sent_through: u64,
    /// The last `Released` sent on this connection.
    released_sent: u64,
}

impl MirrorSender {
    /// A sender for `ring`, whose records through `released_seq` need no mirror.
    pub fn new<R: PersistentRegion>(ring: &Ring<R>) -> MirrorSender {
        let released = ring.released_seq();
        MirrorSender {
            gate: AckGate::new(MirrorMode::Mirrored, released),
            sent_through: released,
            released_sent: released,
        }
    }

    pub fn gate(&self) -> &AckGate {
        &self.gate
    }
    pub fn sent_through(&self) -> u64 {
        self.sent_through
    }

    /// Encodes a `Released` if the ring released more since the last one
    /// (first, so the partner frees space before the records after it), then
    /// `Record` frames for the durable records not yet sent (pad first where a
    /// record has one), into `out` as far as whole frames fit. Returns
    /// the bytes written. No allocation.
    pub fn fill<R: PersistentRegion>(&mut self, ring: &Ring<R>, out: &mut [u8]) -> Result<usize, SendError> {
        if ring.released_seq() > self.sent_through {
            return Err(SendError::ReleasedUnsent {
                released: ring.released_seq(),
                sent_through: self.sent_through,
            });
        }
        let mut at = 0;
        // The release first: it frees the partner's space for the records after it.
        let release = ring.released_seq();
        if release > self.released_sent {
            let frame = Frame::Released { released_seq: release };
            if frame.encoded_bytes() > out.len() {
                return Ok(0);
            }
            at += encode(&frame, &mut out[at..])?;
            self.released_sent = release;
        }
        while self.sent_through < ring.durable_seq() {
            let seq = self.sent_through + 1;
            let Some(image) = ring.mirror_image(seq) else { break };
            let pad_bytes = image.pad.map_or(0, |p| RECORD_PREFIX_BYTES + p.bytes.len());
            let needed = pad_bytes + RECORD_PREFIX_BYTES + image.record.bytes.len();
            if at + needed > out.len() {
                break;
            }
            for write in image.pad.iter().chain(std::iter::once(&image.record)) {
                let offset = write.offset as u64;
                at += encode_record_prefix(offset, seq, ring.epoch(), write.bytes, &mut out[at..])?;
                out[at..at + write.bytes.len()].copy_from_slice(write.bytes);
                at += write.bytes.len();
            }
            self.sent_through = seq;
        }
        Ok(at)
    }

    /// How far the owner may release records the medium holds through
    /// `medium_through`: not beyond what the partner acknowledged.
    pub fn releasable_through(&self, medium_through: u64) -> u64 {
        match self.gate.mode() {
            MirrorMode::Mirrored => medium_through.min(self.gate.mirror_through()),
            MirrorMode::Degraded => medium_through,
        }
    }

    /// The first store made every record through `seq` durable: the
    /// sequences that may now be acknowledged to hosts.
    pub fn local_durable(&mut self, seq: u64) -> RangeInclusive<u64> {
        self.gate.local_durable(seq)
    }

    /// A frame from the partner: a `RecordAck` may release acknowledgements.
    /// Other kinds are not the mirror's (the link handles them): empty.
    pub fn on_frame(&mut self, frame: &Frame<'_>) -> Result<RangeInclusive<u64>, AckError> {
        match frame {
            Frame::RecordAck { through_seq } => self.gate.mirror_durable(*through_seq, self.sent_through),
            _ => Ok(self.gate.acked_through() + 1..=self.gate.acked_through()),
        }
    }

    /// A new connection: send again everything after what the partner
    /// acknowledged, and the release state.
    pub fn reconnected(&mut self) {
        self.sent_through = self.gate.mirror_through();
        self.released_sent = 0;
    }
}

/// Why the sender cannot send.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error("the ring released through {released} but only {sent_through} was sent: the partner would miss records")]
    ReleasedUnsent { released: u64, sent_through: u64 },
}

/// What the partner answers to a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    None,
    /// Send (or coalesce into one) `RecordAck { through_seq }`.
    Ack(u64),
}

/// Why the partner refused a frame: the link drops the connection, the
/// owner reconnects and resends; the second store is unchanged.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum ReceiveError {
    #[error(transparent)]
    Store(#[from] MirrorError),
    #[error("Record frame for sequence {frame_seq} carries the header of record {header_seq}")]
    SeqMismatch { frame_seq: u64, header_seq: u64 },
    #[error("Record frame: ring_offset {0} does not fit this machine")]
    Offset(u64),
}

/// The partner's side of the mirror: the second store for one owner ring.
pub struct MirrorReceiver<R: PersistentRegion> {
    store: Ring<R>,
}

impl<R: PersistentRegion> MirrorReceiver<R> {
    pub fn new(store: Ring<R>) -> MirrorReceiver<R> {
        MirrorReceiver { store }
    }

    pub fn store(&self) -> &Ring<R> {
        &self.store
    }
    pub fn into_store(self) -> Ring<R> {
        self.store
    }

    /// Handles one frame from the owner. Kinds that are not the mirror's are
    /// ignored here (the link handles them).
    pub fn on_frame(&mut self, frame: &Frame<'_>) -> Result<Reply, ReceiveError> {
        match frame {
            Frame::Record { ring_offset, seq, record, .. } => {
                let header_seq = RecordHeader::decode(record).map_or(0, |h| h.seq);
                if header_seq != *seq {
                    return Err(ReceiveError::SeqMismatch { frame_seq: *seq, header_seq });
                }
                let offset = usize::try_from(*ring_offset).map_err(|_| ReceiveError::Offset(*ring_offset))?;
                Ok(match self.store.accept_mirrored(offset, record)? {
                    Accepted::Pad => Reply::None,
                    Accepted::Record { durable_through } | Accepted::Duplicate { durable_through } => {
                        Reply::Ack(durable_through)
                    }
                })
            }
            Frame::Released { released_seq } => {
                self.store.release_mirrored(*released_seq)?;
                Ok(Reply::None)
            }
            _ => Ok(Reply::None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::layout::test_medium;
    use crate::ha::link::frame::{FrameDecoder, RECORD_FIXED_BYTES};
    use crate::ha::RingConfig;
    use tandem_env::persist::MemRegion;
    use tandem_env::prng::SplitMix64;

    const REGION_BYTES: usize = 128 * 1024;
    const PAYLOAD_MAX: usize = RECORD_FIXED_BYTES + 64 * 1024;

    fn owner_ring() -> Ring<MemRegion> {
        let config = RingConfig {
            owner_node_id: 1,
            created_epoch: 1,
            format_nonce: 0x77,
            record_align_bytes: 4096,
            medium: test_medium(1),
        };
        Ring::format(MemRegion::new(REGION_BYTES), &config).expect("format")
    }

    /// Both directions of one link connection, as byte queues, with the
    /// faults of a real link: partial delivery, loss of the connection (and
    /// what was in flight), and a corrupted byte.
    #[derive(Default)]
    struct Wire {
        to_partner: Vec<u8>,
        to_owner: Vec<u8>,
    }

    #[test]
    fn acknowledged_writes_are_in_both_stores_through_partial_delivery_disconnects_and_corruption() {
        for seed in 1..=8u64 {
            run(seed);
        }
    }

    fn run(seed: u64) {
        let mut rng = SplitMix64::new(seed);
        let mut ring = owner_ring();
        let second =
            Ring::format_mirror(MemRegion::new(REGION_BYTES), ring.superblock_bytes(), ring.control_state())
                .expect("second store");
        let mut receiver = MirrorReceiver::new(second);
        let mut sender = MirrorSender::new(&ring);
        let (mut buf_p, mut buf_o) = (vec![0u8; 2 * PAYLOAD_MAX], vec![0u8; 2 * PAYLOAD_MAX]);
        let mut at_partner = FrameDecoder::new(&mut buf_p, PAYLOAD_MAX).expect("decoder");
        let mut at_owner = FrameDecoder::new(&mut buf_o, PAYLOAD_MAX).expect("decoder");
        let mut wire = Wire::default();
        let mut send_buf = vec![0u8; 64 * 1024];
        let mut acked_through = 0u64;
        let (mut disconnects, mut refused) = (0, 0);
        let mut staged = 0u64;
        for step in 0..4000u64 {
            match rng.next_u64() % 16 {
                // A host write: staged and persisted locally, never acknowledged on that alone.
                0..=3 if ring.free_bytes() > 5 * 4096 => {
                    let blocks = 1 + (rng.next_u64() % 2) as usize;
                    let res = ring.reserve(blocks * 4096).expect("space");
                    ring.data_mut(&res).fill(step as u8);
                    let seq = ring.commit(res, 1, step * 4, blocks as u32).seq;
                    staged += 1;
                    let acked = sender.local_durable(ring.durable_seq());
                    assert!(
                        acked.is_empty() || receiver.store().durable_seq() >= *acked.end(),
                        "seed {seed}"
                    );
                    assert!(seq > acked_through);
                }
                // The sender fills the wire.
                4..=6 => {
                    let n = sender.fill(&ring, &mut send_buf).expect("fill");
                    wire.to_partner.extend_from_slice(&send_buf[..n]);
                }
                // Partial delivery to the partner; it answers with one coalesced ack.
                7..=9 => {
                    match deliver(&mut wire, &mut at_partner, &mut receiver, rng.next_u64() as usize % 9000) {
                        Ok(Some(through)) => {
                            let mut b = [0u8; 64];
                            let len =
                                encode(&Frame::RecordAck { through_seq: through }, &mut b).expect("encode");
                            wire.to_owner.extend_from_slice(&b[..len]);
                        }
                        Ok(None) => {}
                        Err(()) => {
                            refused += 1;
                            reconnect(&mut wire, &mut at_partner, &mut at_owner, &mut sender);
                            disconnects += 1;
                        }
                    }
                }
                // Acks reach the owner: each acknowledged write is in both stores.
                10..=11 => {
                    let taken = at_owner.feed(&wire.to_owner);
                    wire.to_owner.drain(..taken);
                    while let Some(frame) = at_owner.next_frame().expect("acks are well formed") {
                        let acked = sender.on_frame(&frame).expect("ack for what was sent");
                        for seq in acked {
                            assert_eq!(seq, acked_through + 1, "seed {seed}: acknowledged in order, once");
                            assert!(ring.durable_seq() >= seq || ring.released_seq() >= seq);
                            assert!(
                                receiver.store().durable_seq() >= seq,
                                "seed {seed}: {seq} acked, not mirrored"
                            );
                            acked_through = seq;
                        }
                    }
                }
                // The medium has some records: release what the partner holds too.
                12 => {
                    let medium = ring.released_seq() + rng.next_u64() % 4;
                    let release = sender.releasable_through(medium.min(ring.durable_seq()));
                    if release > ring.released_seq() {
                        ring.release_through(release);
                    }
                }
                // The connection drops with whatever was in flight.
                13 if rng.next_u64().is_multiple_of(4) => {
                    reconnect(&mut wire, &mut at_partner, &mut at_owner, &mut sender);
                    disconnects += 1;
                }
                // A byte is damaged in flight.
                14 if !wire.to_partner.is_empty() && rng.next_u64().is_multiple_of(4) => {
                    let at = rng.next_u64() as usize % wire.to_partner.len();
                    wire.to_partner[at] ^= 1 << (rng.next_u64() % 8);
                }
                _ => {}
            }
            // The partner never holds less than what it acknowledged, nor more than the owner staged.
            assert!(receiver.store().durable_seq() <= ring.durable_seq());
            assert!(receiver.store().released_seq() <= ring.released_seq());
        }
        // Quiesce: deliver everything; every staged write ends acknowledged.
        for _ in 0..1000 {
            if acked_through == ring.durable_seq() {
                break;
            }
            let n = sender.fill(&ring, &mut send_buf).expect("fill");
            wire.to_partner.extend_from_slice(&send_buf[..n]);
            let ack = match deliver(&mut wire, &mut at_partner, &mut receiver, usize::MAX) {
                Ok(ack) => ack,
                Err(()) => {
                    reconnect(&mut wire, &mut at_partner, &mut at_owner, &mut sender);
                    continue;
                }
            };
            if let Some(through) = ack {
                for seq in sender.on_frame(&Frame::RecordAck { through_seq: through }).expect("ack") {
                    assert_eq!(seq, acked_through + 1);
                    acked_through = seq;
                }
            }
        }
        assert_eq!(acked_through, ring.durable_seq(), "seed {seed}: every write acknowledged in the end");
        let owner_records: Vec<_> = ring.staged_records().collect();
        let mirrored: Vec<_> =
            receiver.store().staged_records().filter(|r| r.seq > ring.released_seq()).collect();
        assert_eq!(owner_records, mirrored, "seed {seed}: the mirror equals the log");
        for info in &owner_records {
            assert_eq!(ring.record_data(info), receiver.store().record_data(info));
        }
        assert!(
            staged > 100 && disconnects > 0 && refused > 0,
            "seed {seed}: {staged} {disconnects} {refused}"
        );
    }

    /// Feeds up to `n` bytes from the wire to the partner and handles the
    /// frames: Ok(the highest ack to send), or Err if the connection must drop.
    fn deliver(
        wire: &mut Wire,
        at_partner: &mut FrameDecoder<'_>,
        receiver: &mut MirrorReceiver<MemRegion>,
        n: usize,
    ) -> Result<Option<u64>, ()> {
        let n = n.min(wire.to_partner.len());
        let taken = at_partner.feed(&wire.to_partner[..n]);
        wire.to_partner.drain(..taken);
        let mut ack = None;
        while let Some(frame) = at_partner.next_frame().map_err(|_| ())? {
            if let Reply::Ack(through) = receiver.on_frame(&frame).map_err(|_| ())? {
                ack = Some(through);
            }
        }
        Ok(ack)
    }

    fn reconnect(
        wire: &mut Wire,
        a: &mut FrameDecoder<'_>,
        b: &mut FrameDecoder<'_>,
        sender: &mut MirrorSender,
    ) {
        wire.to_partner.clear();
        wire.to_owner.clear();
        a.reset();
        b.reset();
        sender.reconnected();
    }

    #[test]
    fn a_record_frame_whose_header_names_another_sequence_is_refused() {
        let mut ring = owner_ring();
        let second =
            Ring::format_mirror(MemRegion::new(REGION_BYTES), ring.superblock_bytes(), ring.control_state())
                .expect("second store");
        let mut receiver = MirrorReceiver::new(second);
        let res = ring.reserve(4096).expect("space");
        let seq = ring.commit(res, 1, 0, 1).seq;
        let image = ring.mirror_image(seq).expect("durable");
        let frame = Frame::Record {
            ring_offset: image.record.offset as u64,
            seq: seq + 1,
            epoch: 1,
            record: image.record.bytes,
        };
        assert_eq!(
            receiver.on_frame(&frame),
            Err(ReceiveError::SeqMismatch { frame_seq: seq + 1, header_seq: seq })
        );
        let frame = Frame::Record {
            ring_offset: image.record.offset as u64,
            seq,
            epoch: 1,
            record: image.record.bytes,
        };
        assert_eq!(receiver.on_frame(&frame), Ok(Reply::Ack(seq)));
        assert_eq!(receiver.on_frame(&frame), Ok(Reply::Ack(seq)), "a resend is acknowledged again");
        assert!(matches!(
            receiver.on_frame(&Frame::Released { released_seq: seq + 1 }),
            Err(ReceiveError::Store(MirrorError::ReleaseBeyond { .. }))
        ));
    }

    #[test]
    fn the_owner_never_releases_what_the_partner_has_not_acknowledged() {
        let mut ring = owner_ring();
        let mut sender = MirrorSender::new(&ring);
        for i in 0..3 {
            let res = ring.reserve(4096).expect("space");
            ring.commit(res, 1, i, 1);
        }
        sender.local_durable(3);
        let mut buf = vec![0u8; 64 * 1024];
        sender.fill(&ring, &mut buf).expect("fill");
        assert_eq!(sender.releasable_through(3), 0, "the medium has them, the partner has not acknowledged");
        let acked = sender.on_frame(&Frame::RecordAck { through_seq: 2 }).expect("ack");
        assert_eq!(acked, 1..=2);
        assert_eq!(sender.releasable_through(3), 2);
        assert!(sender.on_frame(&Frame::RecordAck { through_seq: 4 }).is_err(), "never sent");
        // Releasing behind the sender's back is refused, not sent around.
        ring.release_through(3);
        let mut fresh = MirrorSender::new(&owner_ring());
        assert!(matches!(fresh.fill(&ring, &mut buf), Err(SendError::ReleasedUnsent { .. })));
    }
}
