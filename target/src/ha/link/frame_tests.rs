//! Tests of the frame codec: a round trip of every kind, every decoder
//! error, splits at every byte, and seeded random bytes and mutations.

use super::frame::*;
use crate::ha::layout::{RECORD_HEADER_BYTES, SUPERBLOCK_BYTES};
use tandem_perf::prng::Rng;

/// Big enough for the largest test record.
const PAYLOAD_MAX: usize = 8192;

/// A record as the ring holds it: a 64-byte header then data (the codec does
/// not look inside, so any bytes do).
fn record_bytes(data_bytes: usize, seed: u8) -> Vec<u8> {
    (0..RECORD_HEADER_BYTES + data_bytes).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

const RANGES: [SeqRange; 3] = [
    SeqRange { first: 7, last: 7 },
    SeqRange { first: 9, last: 12 },
    SeqRange { first: 100, last: u64::MAX },
];

/// One frame of every kind (two Records: one header-only, one with data).
fn every_kind(record_small: &[u8], record_big: &[u8]) -> Vec<Frame<'static>> {
    // Leak the records so the frames can be 'static in the tests.
    let small: &'static [u8] = Box::leak(record_small.to_vec().into_boxed_slice());
    let big: &'static [u8] = Box::leak(record_big.to_vec().into_boxed_slice());
    vec![
        Frame::Hello {
            protocol_version: 1,
            role: LinkRole::Initiator,
            node_id: 0x0102_0304_0506_0708,
            name: "node-a",
        },
        Frame::Hello { protocol_version: 7, role: LinkRole::Acceptor, node_id: 2, name: "" },
        Frame::Challenge { nonce: [0xa5; NONCE_BYTES] },
        Frame::Response { mac: core::array::from_fn(|i| i as u8) },
        Frame::Record { ring_offset: 4096, seq: 1, epoch: 3, record: small },
        Frame::Record { ring_offset: 1 << 40, seq: u64::MAX, epoch: 9, record: big },
        Frame::RecordAck { through_seq: 42 },
        Frame::Released { released_seq: 41 },
        Frame::FailedSeqs { batch_id: 5, ranges: SeqRanges::List(&RANGES) },
        Frame::FailedDone { batch_id: 5, written_count: 6, status: 0 },
        Frame::FailedDone { batch_id: 6, written_count: 0, status: 5 },
        Frame::Heartbeat { counter: 10, sender_time_ms: 123_456, echo_counter: 9, echo_time_ms: 123_000 },
        Frame::Goodbye { reason: GoodbyeReason::Shutdown },
        Frame::Goodbye { reason: GoodbyeReason::Other(77) },
        Frame::StoreState { format_nonce: 0x77, epoch: 2, held_through: 40, released_seq: 30 },
        Frame::StoreState { format_nonce: 0, epoch: 0, held_through: 0, released_seq: 0 },
        Frame::StoreFormat {
            generation: 3,
            epoch: 2,
            released_seq: 30,
            head_offset: 8192,
            // No two neighbours equal: an inserted or removed byte always shows.
            superblock: Box::leak(
                (0..SUPERBLOCK_BYTES).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into_boxed_slice(),
            ),
        },
        Frame::Attach { store_id: 0x1234_5678_0000_0001 },
        Frame::Truncate { through_seq: 41 },
    ]
}

fn sample_frames() -> Vec<Frame<'static>> {
    every_kind(&record_bytes(0, 1), &record_bytes(4096, 2))
}

fn encoded(frame: &Frame<'_>) -> Vec<u8> {
    let mut out = vec![0u8; frame.encoded_bytes()];
    let n = encode(frame, &mut out).expect("encodes");
    assert_eq!(n, out.len());
    out
}

fn stream(frames: &[Frame<'_>]) -> Vec<u8> {
    frames.iter().flat_map(|f| encoded(f)).collect()
}

fn new_buf() -> Vec<u8> {
    vec![0u8; FRAME_HEADER_BYTES + PAYLOAD_MAX]
}

/// What a decode of a whole byte stream gives: the frames as their own
/// encodings (owned), then the error or `None` at the end.
fn decode_all(bytes: &[u8], chunk: usize) -> (Vec<Vec<u8>>, Option<FrameError>) {
    let mut buf = new_buf();
    let mut decoder = FrameDecoder::new(&mut buf, PAYLOAD_MAX).expect("decoder");
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        let taken = decoder.feed(&bytes[at..(at + chunk).min(bytes.len())]);
        at += taken;
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => frames.push(encoded(&frame)),
                Ok(None) => break,
                Err(error) => return (frames, Some(error)),
            }
        }
        if at == bytes.len() {
            return (frames, None);
        }
        assert!(taken > 0 || chunk == 0, "the decoder took nothing with no whole frame buffered");
    }
}

/// Builds a frame from raw parts with correct CRCs, so the checks behind
/// the CRCs can be reached.
fn sealed(version: u8, kind: u8, flags: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; FRAME_HEADER_BYTES];
    out[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
    out[4] = version;
    out[5] = kind;
    out[6..8].copy_from_slice(&flags.to_le_bytes());
    out[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    out[12..16].copy_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    let header_crc = crc32c::crc32c(&out[..16]);
    out[16..20].copy_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Recomputes both CRCs of an encoded frame after a test edited it.
fn reseal(frame: &mut [u8]) {
    let crc = crc32c::crc32c(&frame[FRAME_HEADER_BYTES..]);
    frame[12..16].copy_from_slice(&crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&frame[..16]);
    frame[16..20].copy_from_slice(&header_crc.to_le_bytes());
}

fn first_error(bytes: &[u8]) -> FrameError {
    let (frames, error) = decode_all(bytes, bytes.len().max(1));
    assert!(frames.is_empty(), "decoded {} frames from bad input", frames.len());
    error.expect("an error")
}

#[test]
fn every_kind_round_trips() {
    let frames = sample_frames();
    let kinds: std::collections::BTreeSet<u8> = frames.iter().map(|f| f.kind().code()).collect();
    assert_eq!(kinds.len(), FrameKind::ALL.len(), "the sample covers every kind");
    for frame in &frames {
        let bytes = encoded(frame);
        let mut buf = new_buf();
        let mut decoder = FrameDecoder::new(&mut buf, PAYLOAD_MAX).expect("decoder");
        assert_eq!(decoder.feed(&bytes), bytes.len());
        let decoded = decoder.next_frame().expect("valid").expect("whole");
        assert_eq!(&decoded, frame);
        assert_eq!(decoded.kind(), frame.kind());
        assert_eq!(decoder.next_frame(), Ok(None));
        assert_eq!(decoder.buffered_bytes(), 0);
    }
}

#[test]
fn header_fields_sit_at_the_documented_offsets() {
    let bytes = encoded(&Frame::RecordAck { through_seq: 0x1122_3344_5566_7788 });
    assert_eq!(&bytes[0..4], b"TLNK");
    assert_eq!(bytes[4], FRAME_VERSION);
    assert_eq!(bytes[5], FrameKind::RecordAck.code());
    assert_eq!(&bytes[6..8], &[0, 0]);
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 8);
    assert_eq!(u32::from_le_bytes(bytes[12..16].try_into().unwrap()), crc32c::crc32c(&bytes[20..]));
    assert_eq!(u32::from_le_bytes(bytes[16..20].try_into().unwrap()), crc32c::crc32c(&bytes[..16]));
    assert_eq!(&bytes[20..28], &0x1122_3344_5566_7788u64.to_le_bytes());
    let hello =
        encoded(&Frame::Hello { protocol_version: 3, role: LinkRole::Acceptor, node_id: 9, name: "ab" });
    assert_eq!(&hello[20..22], &3u16.to_le_bytes());
    assert_eq!(hello[22], 2, "role");
    assert_eq!(hello[23], 2, "name_bytes");
    assert_eq!(&hello[28..36], &9u64.to_le_bytes());
    assert_eq!(&hello[36..], b"ab");
}

#[test]
fn record_prefix_then_ring_bytes_is_the_whole_frame() {
    let record = record_bytes(512, 9);
    let whole = encoded(&Frame::Record { ring_offset: 8192, seq: 77, epoch: 4, record: &record });
    let mut prefix = [0u8; RECORD_PREFIX_BYTES];
    assert_eq!(encode_record_prefix(8192, 77, 4, &record, &mut prefix), Ok(RECORD_PREFIX_BYTES));
    let mut gathered = prefix.to_vec();
    gathered.extend_from_slice(&record);
    assert_eq!(gathered, whole);
    // The decoded record borrows the receive buffer and equals the ring bytes.
    let mut buf = new_buf();
    let mut decoder = FrameDecoder::new(&mut buf, PAYLOAD_MAX).expect("decoder");
    decoder.feed(&prefix);
    assert_eq!(decoder.next_frame(), Ok(None), "the prefix alone is not a frame");
    decoder.feed(&record);
    match decoder.next_frame() {
        Ok(Some(Frame::Record { ring_offset: 8192, seq: 77, epoch: 4, record: got })) => {
            assert_eq!(got, &record[..])
        }
        other => panic!("expected the record, got {other:?}"),
    }
}

#[test]
fn a_stream_of_every_kind_decodes_in_order_at_every_split_and_chunk_size() {
    let frames = every_kind(&record_bytes(0, 1), &record_bytes(300, 2));
    let bytes = stream(&frames);
    let expected: Vec<Vec<u8>> = frames.iter().map(encoded).collect();
    for split in 0..=bytes.len() {
        let mut buf = new_buf();
        let mut decoder = FrameDecoder::new(&mut buf, PAYLOAD_MAX).expect("decoder");
        let mut got = Vec::new();
        for part in [&bytes[..split], &bytes[split..]] {
            assert_eq!(decoder.feed(part), part.len());
            while let Some(frame) = decoder.next_frame().expect("valid stream") {
                got.push(encoded(&frame));
            }
        }
        assert_eq!(got, expected, "split at {split}");
    }
    for chunk in [1, 2, 3, 7, 19, 20, 21, 64, 1000] {
        assert_eq!(decode_all(&bytes, chunk), (expected.clone(), None), "chunk {chunk}");
    }
}

#[test]
fn reading_into_spare_space_compacts_and_decodes_a_long_stream() {
    // Frames of 3000 bytes through a buffer of 8212: frames straddle the
    // end of the buffer unless the decoder moves them to the front.
    let record = record_bytes(3000 - RECORD_PREFIX_BYTES - RECORD_HEADER_BYTES, 3);
    let frame = Frame::Record { ring_offset: 0, seq: 1, epoch: 1, record: &record };
    let one = encoded(&frame);
    assert_eq!(one.len(), 3000);
    let bytes: Vec<u8> = (0..7).flat_map(|_| one.clone()).collect();
    let mut buf = new_buf();
    let mut decoder = FrameDecoder::new(&mut buf, PAYLOAD_MAX).expect("decoder");
    let (mut at, mut count) = (0, 0);
    while at < bytes.len() {
        let spare = decoder.spare_mut();
        let n = spare.len().min(700).min(bytes.len() - at);
        assert!(n > 0, "no spare space at byte {at} with no whole frame buffered");
        spare[..n].copy_from_slice(&bytes[at..at + n]);
        decoder.commit(n);
        at += n;
        while let Some(got) = decoder.next_frame().expect("valid") {
            assert_eq!(got, frame);
            count += 1;
        }
    }
    assert_eq!(count, 7);
}

#[test]
fn bad_magic_is_refused() {
    let mut bytes = encoded(&Frame::Released { released_seq: 1 });
    bytes[0] ^= 0x20;
    assert!(matches!(first_error(&bytes), FrameError::BadMagic { .. }));
}

#[test]
fn bad_version_is_refused() {
    let bytes = sealed(2, FrameKind::Released.code(), 0, &[0; 8]);
    assert_eq!(first_error(&bytes), FrameError::BadVersion { found: 2 });
    let bytes = sealed(0, FrameKind::Released.code(), 0, &[0; 8]);
    assert_eq!(first_error(&bytes), FrameError::BadVersion { found: 0 });
}

#[test]
fn unknown_kinds_are_refused() {
    for kind in [0u8, 15, 200, 255] {
        assert_eq!(
            first_error(&sealed(FRAME_VERSION, kind, 0, &[0; 8])),
            FrameError::BadKind { found: kind }
        );
    }
}

#[test]
fn reserved_flags_are_refused() {
    let bytes = sealed(FRAME_VERSION, FrameKind::Released.code(), 0x8000, &[0; 8]);
    assert_eq!(first_error(&bytes), FrameError::BadFlags { found: 0x8000 });
}

#[test]
fn an_oversized_length_is_refused_from_the_header_alone() {
    let mut header = sealed(FRAME_VERSION, FrameKind::Record.code(), 0, &[]);
    header[8..12].copy_from_slice(&((PAYLOAD_MAX + 1) as u32).to_le_bytes());
    let header_crc = crc32c::crc32c(&header[..16]);
    header[16..20].copy_from_slice(&header_crc.to_le_bytes());
    assert_eq!(header.len(), FRAME_HEADER_BYTES);
    assert_eq!(
        first_error(&header),
        FrameError::PayloadTooLong {
            kind: FrameKind::Record,
            payload_bytes: PAYLOAD_MAX + 1,
            max: PAYLOAD_MAX
        }
    );
    header[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    let header_crc = crc32c::crc32c(&header[..16]);
    header[16..20].copy_from_slice(&header_crc.to_le_bytes());
    assert!(matches!(first_error(&header), FrameError::PayloadTooLong { .. }));
}

#[test]
fn a_length_that_does_not_fit_its_kind_is_refused() {
    let cases: [(FrameKind, usize); 9] = [
        (FrameKind::RecordAck, 16),
        (FrameKind::Released, 0),
        (FrameKind::Challenge, 31),
        (FrameKind::Response, 33),
        (FrameKind::Heartbeat, 24),
        (FrameKind::Goodbye, 4),
        (FrameKind::FailedDone, 32),
        (FrameKind::Hello, 8),
        (FrameKind::Record, RECORD_FIXED_BYTES + RECORD_HEADER_BYTES - 1),
    ];
    for (kind, payload_bytes) in cases {
        let bytes = sealed(FRAME_VERSION, kind.code(), 0, &vec![0; payload_bytes]);
        assert!(
            matches!(first_error(&bytes), FrameError::BadLength { kind: k, payload_bytes: p, .. }
                if k == kind && p == payload_bytes),
            "{kind:?} with {payload_bytes} bytes"
        );
    }
    // Hello: name_bytes says 5, the payload has 3 name bytes.
    let mut hello =
        encoded(&Frame::Hello { protocol_version: 1, role: LinkRole::Initiator, node_id: 1, name: "abc" });
    hello[23] = 5;
    reseal(&mut hello);
    assert!(matches!(first_error(&hello), FrameError::BadLength { kind: FrameKind::Hello, .. }));
    // FailedSeqs: range_count says 2, the payload holds 3.
    let mut failed = encoded(&Frame::FailedSeqs { batch_id: 1, ranges: SeqRanges::List(&RANGES) });
    failed[28..32].copy_from_slice(&2u32.to_le_bytes());
    reseal(&mut failed);
    assert!(matches!(first_error(&failed), FrameError::BadLength { kind: FrameKind::FailedSeqs, .. }));
    let mut two = failed.clone();
    two.truncate(FRAME_HEADER_BYTES + FAILED_FIXED_BYTES + 2 * FAILED_RANGE_BYTES);
    let payload_bytes = (two.len() - FRAME_HEADER_BYTES) as u32;
    two[8..12].copy_from_slice(&payload_bytes.to_le_bytes());
    reseal(&mut two);
    assert_eq!(decode_all(&two, two.len()).0.len(), 1, "the same frame with a matching count decodes");
}

#[test]
fn bad_fields_are_refused_by_name() {
    let field_of = |bytes: &[u8]| match first_error(bytes) {
        FrameError::BadField { field, .. } => field,
        other => panic!("expected a field error, got {other:?}"),
    };
    let hello =
        encoded(&Frame::Hello { protocol_version: 1, role: LinkRole::Initiator, node_id: 1, name: "ab" });
    let mut role = hello.clone();
    role[22] = 3;
    reseal(&mut role);
    assert_eq!(field_of(&role), "role");
    let mut reserved = hello.clone();
    reserved[25] = 1;
    reseal(&mut reserved);
    assert_eq!(field_of(&reserved), "reserved");
    let mut name = hello;
    name[36] = 0xff;
    reseal(&mut name);
    assert_eq!(field_of(&name), "name");

    let failed = encoded(&Frame::FailedSeqs { batch_id: 1, ranges: SeqRanges::List(&RANGES[..1]) });
    let mut zero = failed.clone();
    zero[28..32].copy_from_slice(&0u32.to_le_bytes());
    reseal(&mut zero);
    assert_eq!(field_of(&zero), "range_count");
    let mut backwards = failed.clone();
    backwards[36..44].copy_from_slice(&8u64.to_le_bytes());
    reseal(&mut backwards);
    assert_eq!(field_of(&backwards), "ranges");
    let mut reserved = failed;
    reserved[32] = 1;
    reseal(&mut reserved);
    assert_eq!(field_of(&reserved), "reserved");

    let mut done = encoded(&Frame::FailedDone { batch_id: 1, written_count: 1, status: 0 });
    done[40] = 1;
    reseal(&mut done);
    assert_eq!(field_of(&done), "reserved");
    let mut goodbye = encoded(&Frame::Goodbye { reason: GoodbyeReason::Malformed });
    goodbye[24] = 1;
    reseal(&mut goodbye);
    assert_eq!(field_of(&goodbye), "reserved");
}

#[test]
fn a_flipped_bit_anywhere_in_any_frame_is_refused() {
    for frame in every_kind(&record_bytes(0, 1), &record_bytes(100, 2)) {
        let good = encoded(&frame);
        for at in 0..good.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = good.clone();
                bad[at] ^= bit;
                // Filler, so a length flipped upwards finds bytes to check.
                bad.resize(good.len() + PAYLOAD_MAX, 0);
                let (frames, error) = decode_all(&bad, bad.len());
                assert!(frames.is_empty(), "{:?}: flip {bit:#x} at {at} decoded", frame.kind());
                let error = error.expect("an error");
                if at >= FRAME_HEADER_BYTES {
                    assert!(matches!(error, FrameError::BadPayloadCrc { .. }), "{error:?} at {at}");
                } else if at >= 4 {
                    assert!(matches!(error, FrameError::BadHeaderCrc { .. }), "{error:?} at {at}");
                } else {
                    assert!(matches!(error, FrameError::BadMagic { .. }), "{error:?} at {at}");
                }
            }
        }
    }
}

#[test]
fn a_truncated_frame_waits_and_then_fails_on_what_follows() {
    let next = encoded(&Frame::RecordAck { through_seq: 3 });
    for frame in every_kind(&record_bytes(0, 1), &record_bytes(100, 2)) {
        let good = encoded(&frame);
        for cut in 0..good.len() {
            // Alone: no frame and no error, the rest may still come.
            assert_eq!(decode_all(&good[..cut], 5), (vec![], None), "{:?} cut at {cut}", frame.kind());
            if cut == 0 {
                continue;
            }
            // The connection went on with other bytes: refused.
            let mut bytes = good[..cut].to_vec();
            bytes.extend_from_slice(&next);
            bytes.resize(bytes.len() + PAYLOAD_MAX, 0);
            let (frames, error) = decode_all(&bytes, 333);
            assert!(
                frames.is_empty() && error.is_some(),
                "{:?} cut at {cut}: {frames:?} {error:?}",
                frame.kind()
            );
        }
    }
}

#[test]
fn trailing_garbage_after_a_frame_is_refused() {
    let good = encoded(&Frame::Heartbeat { counter: 1, sender_time_ms: 2, echo_counter: 0, echo_time_ms: 0 });
    let mut bytes = good.clone();
    bytes.extend_from_slice(&[0x55; FRAME_HEADER_BYTES]);
    let (frames, error) = decode_all(&bytes, 7);
    assert_eq!(frames, vec![good]);
    assert_eq!(error, Some(FrameError::BadMagic { found: 0x5555_5555 }));
}

#[test]
fn an_error_is_sticky_until_reset() {
    let mut buf = new_buf();
    let mut decoder = FrameDecoder::new(&mut buf, PAYLOAD_MAX).expect("decoder");
    decoder.feed(&[0u8; FRAME_HEADER_BYTES]);
    let error = decoder.next_frame().expect_err("bad magic");
    assert_eq!(decoder.error(), Some(error));
    decoder.feed(&encoded(&Frame::Released { released_seq: 1 }));
    assert_eq!(decoder.next_frame(), Err(error), "no frame after an error");
    decoder.reset();
    assert_eq!(decoder.buffered_bytes(), 0);
    decoder.feed(&encoded(&Frame::Released { released_seq: 1 }));
    assert_eq!(decoder.next_frame(), Ok(Some(Frame::Released { released_seq: 1 })));
}

#[test]
fn a_decoder_needs_room_for_its_largest_frame() {
    let mut small = vec![0u8; 100];
    assert_eq!(
        FrameDecoder::new(&mut small, PAYLOAD_MAX).err(),
        Some(DecoderConfigError::BufferTooSmall { buf_bytes: 100, needed: FRAME_HEADER_BYTES + PAYLOAD_MAX })
    );
    let mut buf = new_buf();
    assert!(matches!(FrameDecoder::new(&mut buf, 64), Err(DecoderConfigError::PayloadMaxTooSmall { .. })));
}

#[test]
fn encoding_refuses_what_the_decoder_would_refuse() {
    let mut out = [0u8; 2048];
    let long_name = "x".repeat(NODE_NAME_BYTES_MAX + 1);
    let hello = Frame::Hello { protocol_version: 1, role: LinkRole::Initiator, node_id: 1, name: &long_name };
    assert!(matches!(encode(&hello, &mut out), Err(EncodeError::BadField { field: "name", .. })));
    let none = Frame::FailedSeqs { batch_id: 1, ranges: SeqRanges::List(&[]) };
    assert!(matches!(encode(&none, &mut out), Err(EncodeError::BadField { field: "ranges", .. })));
    let many = [SeqRange { first: 1, last: 1 }; FAILED_RANGES_MAX + 1];
    let too_many = Frame::FailedSeqs { batch_id: 1, ranges: SeqRanges::List(&many) };
    assert!(matches!(encode(&too_many, &mut out), Err(EncodeError::BadField { field: "ranges", .. })));
    let backwards = [SeqRange { first: 2, last: 1 }];
    let backwards = Frame::FailedSeqs { batch_id: 1, ranges: SeqRanges::List(&backwards) };
    assert!(matches!(encode(&backwards, &mut out), Err(EncodeError::BadField { field: "ranges", .. })));
    let short = [0u8; RECORD_HEADER_BYTES - 1];
    assert!(matches!(encode_record_prefix(0, 1, 1, &short, &mut out), Err(EncodeError::BadField { .. })));
    let mut tiny = [0u8; RECORD_PREFIX_BYTES - 1];
    assert!(matches!(
        encode_record_prefix(0, 1, 1, &record_bytes(0, 0), &mut tiny),
        Err(EncodeError::BufferTooSmall { .. })
    ));
    assert_eq!(
        encode(&Frame::RecordAck { through_seq: 1 }, &mut out[..27]),
        Err(EncodeError::BufferTooSmall { needed: 28, available: 27 })
    );
    // The most ranges a frame may carry round-trip.
    let most = [SeqRange { first: 1, last: 2 }; FAILED_RANGES_MAX];
    let frame = Frame::FailedSeqs { batch_id: 1, ranges: SeqRanges::List(&most) };
    let bytes = encoded(&frame);
    assert_eq!(bytes.len(), FRAME_HEADER_BYTES + CONTROL_PAYLOAD_BYTES_MAX);
    let mut buf = new_buf();
    let mut decoder = FrameDecoder::new(&mut buf, PAYLOAD_MAX).expect("decoder");
    decoder.feed(&bytes);
    assert_eq!(decoder.next_frame(), Ok(Some(frame)));
}

#[test]
fn seeded_random_bytes_never_decode_and_never_panic() {
    let mut rng = Rng::new(0x11_4e4b);
    for round in 0..3000 {
        let len = rng.below(200) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        // Half the rounds start with the right magic so the later checks run.
        if round % 2 == 0 && bytes.len() >= 4 {
            bytes[..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
        }
        let chunk = 1 + rng.below(64) as usize;
        let (frames, _) = decode_all(&bytes, chunk);
        assert!(frames.is_empty(), "round {round}: random bytes decoded as a frame (seed 0x114e4b)");
    }
}

#[test]
fn seeded_mutations_of_a_valid_stream_keep_the_frames_before_them() {
    let frames = every_kind(&record_bytes(0, 1), &record_bytes(200, 2));
    let encodings: Vec<Vec<u8>> = frames.iter().map(encoded).collect();
    let bytes: Vec<u8> = encodings.concat();
    // Frame i spans ends[i-1]..ends[i].
    let ends: Vec<usize> = encodings
        .iter()
        .scan(0, |end, e| {
            *end += e.len();
            Some(*end)
        })
        .collect();
    let mut rng = Rng::new(0x5eed_1111);
    for round in 0..2000 {
        let mut bad = bytes.clone();
        let at = rng.below(bad.len() as u64) as usize;
        match rng.below(4) {
            0 => bad[at] ^= 1 + rng.below(255) as u8,
            1 => bad.truncate(at),
            2 => bad.insert(at, rng.next_u64() as u8),
            _ => {
                bad.remove(at);
            }
        }
        let chunk = 1 + rng.below(500) as usize;
        let (got, _) = decode_all(&bad, chunk);
        // Only frames that end before the change survive it, unchanged.
        let intact = ends.iter().take_while(|&&end| end <= at).count();
        assert_eq!(got, encodings[..intact].to_vec(), "round {round}: mutation at {at} (seed 0x5eed1111)");
    }
}

#[test]
fn attach_reserved_bytes_must_be_zero() {
    let mut attach = encoded(&Frame::Attach { store_id: 7 });
    attach[FRAME_HEADER_BYTES + 8] = 1;
    reseal(&mut attach);
    assert!(matches!(
        first_error(&attach),
        FrameError::BadField { kind: FrameKind::Attach, field: "reserved", .. }
    ));
}
