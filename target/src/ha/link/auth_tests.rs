//! Tests of the handshake: both ways, wrong keys, reflection, replay,
//! garbage; and key loading.

use super::auth::*;
use super::frame::{self, Frame, FrameDecoder, GoodbyeReason, LinkRole, MAC_BYTES, NONCE_BYTES};
use std::os::unix::fs::PermissionsExt;

const KEY_A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const KEY_B: &str = "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn key(hex: &str) -> LinkKey {
    LinkKey::from_hex(hex, "pair.key").expect("valid key")
}

fn config(role: LinkRole, node_id: u64, name: &str, hex: &str) -> HandshakeConfig {
    HandshakeConfig { key: key(hex), role, node_id, name: name.to_string(), expected_peer_id: None }
}

fn initiator(hex: &str, nonce: u8) -> Handshake {
    Handshake::new(config(LinkRole::Initiator, 1, "node-a", hex), [nonce; NONCE_BYTES])
}

fn acceptor(hex: &str, nonce: u8) -> Handshake {
    Handshake::new(config(LinkRole::Acceptor, 2, "node-b", hex), [nonce; NONCE_BYTES])
}

/// Decodes a byte string into owned frame encodings (one per frame).
fn frames_of(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    let mut decoder = FrameDecoder::new(&mut buf, 4000).expect("decoder");
    assert_eq!(decoder.feed(bytes), bytes.len());
    let mut out = Vec::new();
    while let Some(frame) = decoder.next_frame().expect("the handshake sends valid frames") {
        let mut one = vec![0u8; frame.encoded_bytes()];
        frame::encode(&frame, &mut one).expect("re-encodes");
        out.push(one);
    }
    assert_eq!(decoder.buffered_bytes(), 0);
    out
}

/// Feeds encoded frames to `to`, collecting what it answers.
fn deliver(to: &mut Handshake, bytes: &[u8]) -> (Vec<u8>, Result<Option<PeerIdentity>, AuthError>) {
    let mut sent = Vec::new();
    for one in frames_of(bytes) {
        let mut buf = vec![0u8; 4096];
        let mut decoder = FrameDecoder::new(&mut buf, 4000).expect("decoder");
        decoder.feed(&one);
        let frame = decoder.next_frame().expect("valid").expect("whole");
        match to.on_frame(&frame) {
            Ok(Step::Send(bytes)) => sent.extend(bytes),
            Ok(Step::Wait) => {}
            Ok(Step::Authenticated { peer }) => return (sent, Ok(Some(peer))),
            Err(error) => return (sent, Err(error)),
        }
    }
    (sent, Ok(None))
}

/// Runs two handshakes against each other; returns what each concluded.
fn run(
    a: &mut Handshake,
    b: &mut Handshake,
) -> (Result<Option<PeerIdentity>, AuthError>, Result<Option<PeerIdentity>, AuthError>) {
    let a_first = a.start().expect("start a");
    let b_first = b.start().expect("start b");
    let (a_response, a_after_hello) = deliver(a, &b_first);
    let (b_response, b_after_hello) = deliver(b, &a_first);
    assert_eq!(a_after_hello, Ok(None), "a is not done before b's response");
    assert_eq!(b_after_hello, Ok(None), "b is not done before a's response");
    let (_, a_result) = deliver(a, &b_response);
    let (_, b_result) = deliver(b, &a_response);
    (a_result, b_result)
}

#[test]
fn both_sides_authenticate_each_other_with_the_same_key() {
    let (mut a, mut b) = (initiator(KEY_A, 1), acceptor(KEY_A, 2));
    let (a_result, b_result) = run(&mut a, &mut b);
    let peer_of_a = a_result.expect("a authenticates b").expect("done");
    let peer_of_b = b_result.expect("b authenticates a").expect("done");
    assert_eq!(
        peer_of_a,
        PeerIdentity {
            node_id: 2,
            name: "node-b".into(),
            role: LinkRole::Acceptor,
            protocol_version: PROTOCOL_VERSION
        }
    );
    assert_eq!(peer_of_b.node_id, 1);
    assert_eq!(peer_of_b.name, "node-a");
    assert!(a.is_authenticated() && b.is_authenticated());
    // A frame after the end is refused, not silently taken as handshake.
    assert_eq!(a.on_frame(&Frame::RecordAck { through_seq: 1 }), Err(AuthError::Finished));
}

#[test]
fn a_wrong_key_is_refused_on_both_sides() {
    let (mut a, mut b) = (initiator(KEY_A, 1), acceptor(KEY_B, 2));
    let (a_result, b_result) = run(&mut a, &mut b);
    assert_eq!(a_result, Err(AuthError::BadResponse));
    assert_eq!(b_result, Err(AuthError::BadResponse));
    assert!(!a.is_authenticated() && !b.is_authenticated());
    assert_eq!(AuthError::BadResponse.goodbye_reason(), Some(GoodbyeReason::AuthFailed));
}

#[test]
fn a_reflected_response_is_refused() {
    // A stranger accepts a's connection and sends a's own Hello-derived
    // material back: a's Response, reflected, must not verify at a.
    let mut a = initiator(KEY_A, 1);
    let a_first = a.start().expect("start");
    // The stranger claims to be an acceptor and challenges with a nonce of
    // its own; a answers with its Response, which the stranger sends back.
    let stranger_hello = Frame::Hello {
        protocol_version: PROTOCOL_VERSION,
        role: LinkRole::Acceptor,
        node_id: 2,
        name: "node-b",
    };
    assert_eq!(a.on_frame(&stranger_hello), Ok(Step::Wait));
    let a_response = match a.on_frame(&Frame::Challenge { nonce: [9; NONCE_BYTES] }) {
        Ok(Step::Send(bytes)) => bytes,
        other => panic!("expected a response, got {other:?}"),
    };
    let reflected = frames_of(&a_response);
    let (_, result) = deliver(&mut a, &reflected[0]);
    assert_eq!(result, Err(AuthError::BadResponse));
    // Reflecting a's own challenge is refused before any MAC is computed.
    let mut a = initiator(KEY_A, 1);
    a.start().expect("start");
    a.on_frame(&stranger_hello).expect("hello");
    let own_challenge = frames_of(&a_first)[1].clone();
    let (_, result) = deliver(&mut a, &own_challenge);
    assert_eq!(result, Err(AuthError::ReflectedChallenge));
}

#[test]
fn a_stranger_claiming_our_role_or_our_id_is_refused() {
    let mut a = initiator(KEY_A, 1);
    a.start().expect("start");
    let same_role =
        Frame::Hello { protocol_version: PROTOCOL_VERSION, role: LinkRole::Initiator, node_id: 2, name: "b" };
    assert_eq!(a.on_frame(&same_role), Err(AuthError::SameRole { role: LinkRole::Initiator }));
    let mut a = initiator(KEY_A, 1);
    a.start().expect("start");
    let same_id =
        Frame::Hello { protocol_version: PROTOCOL_VERSION, role: LinkRole::Acceptor, node_id: 1, name: "b" };
    assert_eq!(a.on_frame(&same_id), Err(AuthError::SameNodeId { node_id: 1 }));
    let mut expecting = config(LinkRole::Initiator, 1, "node-a", KEY_A);
    expecting.expected_peer_id = Some(2);
    let mut a = Handshake::new(expecting, [1; NONCE_BYTES]);
    a.start().expect("start");
    let other =
        Frame::Hello { protocol_version: PROTOCOL_VERSION, role: LinkRole::Acceptor, node_id: 3, name: "c" };
    assert_eq!(a.on_frame(&other), Err(AuthError::UnexpectedPeer { expected: 2, found: 3 }));
    let mut a = initiator(KEY_A, 1);
    a.start().expect("start");
    let newer = Frame::Hello { protocol_version: 2, role: LinkRole::Acceptor, node_id: 2, name: "b" };
    assert_eq!(a.on_frame(&newer), Err(AuthError::VersionUnsupported { found: 2 }));
}

#[test]
fn a_response_replayed_from_an_older_session_is_refused() {
    // Session 1: record b's response to a.
    let (mut a1, mut b1) = (initiator(KEY_A, 1), acceptor(KEY_A, 2));
    let a1_first = a1.start().expect("start");
    let b1_first = b1.start().expect("start");
    let (a1_response, a1_waits) = deliver(&mut a1, &b1_first);
    assert_eq!(a1_waits, Ok(None));
    assert!(!a1_response.is_empty());
    let (b1_response, _) = deliver(&mut b1, &a1_first);
    assert_eq!(deliver(&mut a1, &b1_response).1.expect("session 1 works").map(|p| p.node_id), Some(2));
    // Session 2: an attacker replays b's Hello, Challenge and Response to a,
    // which now uses a fresh nonce.
    let mut a2 = initiator(KEY_A, 3);
    a2.start().expect("start");
    let (_, result) = deliver(&mut a2, &b1_first);
    assert_eq!(result, Ok(None));
    let (_, result) = deliver(&mut a2, &b1_response);
    assert_eq!(result, Err(AuthError::BadResponse));
}

#[test]
fn garbage_or_out_of_order_frames_are_refused() {
    let hello =
        Frame::Hello { protocol_version: PROTOCOL_VERSION, role: LinkRole::Acceptor, node_id: 2, name: "b" };
    // A Response of random bytes where the MAC belongs.
    let mut a = initiator(KEY_A, 1);
    a.start().expect("start");
    a.on_frame(&hello).expect("hello");
    assert!(matches!(a.on_frame(&Frame::Challenge { nonce: [7; NONCE_BYTES] }), Ok(Step::Send(_))));
    assert_eq!(a.on_frame(&Frame::Response { mac: [0x3c; MAC_BYTES] }), Err(AuthError::BadResponse));
    assert_eq!(a.on_frame(&hello), Err(AuthError::Finished), "a failed handshake stays failed");
    // A Record before authentication.
    let mut a = initiator(KEY_A, 1);
    a.start().expect("start");
    let record = [0u8; 64];
    assert!(matches!(
        a.on_frame(&Frame::Record { ring_offset: 0, seq: 1, epoch: 1, record: &record }),
        Err(AuthError::UnexpectedFrame { kind: frame::FrameKind::Record, .. })
    ));
    // A Response before the Challenge.
    let mut a = initiator(KEY_A, 1);
    a.start().expect("start");
    a.on_frame(&hello).expect("hello");
    let early = a.on_frame(&Frame::Response { mac: [0; MAC_BYTES] });
    assert!(matches!(early, Err(AuthError::UnexpectedFrame { .. })), "{early:?}");
    assert_eq!(early.unwrap_err().goodbye_reason(), Some(GoodbyeReason::ProtocolViolation));
    // Frames before start, and a second start.
    let mut a = initiator(KEY_A, 1);
    assert!(matches!(a.on_frame(&hello), Err(AuthError::UnexpectedFrame { .. })));
    let mut a = initiator(KEY_A, 1);
    a.start().expect("start");
    assert_eq!(a.start(), Err(AuthError::NotStartable));
    // A Goodbye ends it.
    let mut a = initiator(KEY_A, 1);
    a.start().expect("start");
    assert_eq!(
        a.on_frame(&Frame::Goodbye { reason: GoodbyeReason::AuthFailed }),
        Err(AuthError::PeerGoodbye { reason: GoodbyeReason::AuthFailed })
    );
}

#[test]
fn keys_parse_from_hex_with_errors_naming_the_field() {
    assert_eq!(key(KEY_A), key(&format!("  {}\n", KEY_A.to_uppercase())));
    assert_ne!(key(KEY_A), key(KEY_B));
    assert!(!format!("{:?}", key(KEY_A)).contains("0001"), "Debug does not show the key");
    let short = &KEY_A[..62];
    let error = LinkKey::from_hex(short, "pair.key").expect_err("short");
    assert!(matches!(error, KeyError::TooShort { field: "pair.key", bytes: 31 }));
    assert!(error.to_string().starts_with("pair.key:"), "{error}");
    assert!(matches!(
        LinkKey::from_hex(&KEY_A[..63], "pair.key"),
        Err(KeyError::OddDigits { field: "pair.key", digits: 63 })
    ));
    let not_hex = format!("{}g{}", &KEY_A[..10], &KEY_A[11..]);
    assert!(matches!(LinkKey::from_hex(&not_hex, "pair.key"), Err(KeyError::NotHex { position: 10, .. })));
    assert!(matches!(
        LinkKey::from_hex(&"ab".repeat(257), "pair.key"),
        Err(KeyError::TooLong { bytes: 257, .. })
    ));
    assert!(matches!(LinkKey::from_hex("", "pair.key"), Err(KeyError::TooShort { bytes: 0, .. })));
}

#[test]
fn keys_load_from_the_first_line_of_a_private_file() {
    let dir = std::env::temp_dir().join(format!("tandem-link-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("pair.key");
    std::fs::write(&path, format!("{KEY_A}\n# comment lines after the key are ignored\n")).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert_eq!(LinkKey::from_file(&path).expect("loads"), key(KEY_A));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let error = LinkKey::from_file(&path).expect_err("world-readable");
    assert!(
        matches!(error, KeyError::WorldAccessible { field: "pair.key_file", mode: 0o644, .. }),
        "{error}"
    );
    std::fs::write(&path, "abcd\n").expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert!(matches!(
        LinkKey::from_file(&path),
        Err(KeyError::TooShort { field: "pair.key_file", bytes: 2 })
    ));
    let missing = LinkKey::from_file(&dir.join("absent")).expect_err("missing");
    assert!(matches!(missing, KeyError::Unreadable { field: "pair.key_file", .. }));
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn fresh_nonces_differ() {
    let (one, two) = (fresh_nonce().expect("urandom"), fresh_nonce().expect("urandom"));
    assert_ne!(one, two);
}

#[test]
fn a_name_too_long_for_a_hello_is_refused_at_start() {
    let mut long = config(LinkRole::Initiator, 1, "node-a", KEY_A);
    long.name = "n".repeat(frame::NODE_NAME_BYTES_MAX + 1);
    assert_eq!(Handshake::new(long, [1; NONCE_BYTES]).start(), Err(AuthError::NameTooLong));
    let mut longest = config(LinkRole::Initiator, 1, "node-a", KEY_A);
    longest.name = "n".repeat(frame::NODE_NAME_BYTES_MAX);
    let (mut a, mut b) = (Handshake::new(longest, [1; NONCE_BYTES]), acceptor(KEY_A, 2));
    let (a_result, b_result) = run(&mut a, &mut b);
    assert_eq!(a_result.expect("a").map(|p| p.node_id), Some(2));
    assert_eq!(b_result.expect("b").map(|p| p.name.len()), Some(frame::NODE_NAME_BYTES_MAX));
}
