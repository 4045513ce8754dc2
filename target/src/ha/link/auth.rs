//! Mutual authentication of the two nodes of a pair: challenge and
//! HMAC-SHA256 both ways over a key shared in the config.
//!
//! Exchange (both sides at once, no side waits for the other to start):
//! ```text
//! each side sends      Hello(protocol_version, role, node_id, name), Challenge(own nonce)
//! on the peer's Hello and Challenge, each sends
//!                      Response(HMAC(key, CONTEXT || role label of the sender
//!                               || sender's nonce || receiver's nonce
//!                               || sender id, name || receiver id, name || protocol_version))
//! on the peer's Response, each verifies it (constant time) -> Authenticated
//! ```
//! Why it holds: the receiver's nonce is fresh for this connection, so a
//! response recorded from an older session does not verify; the sender's role
//! label, the nonce order and the ids in sender/receiver order differ between
//! the two directions, so a node's own response sent back to it (reflection)
//! does not verify, and the roles must differ (one initiator, one acceptor);
//! a peer claiming our own node id or echoing our nonce is refused outright.
//! The key never crosses the link.
//!
//! The machine is sans-I/O: the caller sends what `start` and `on_frame`
//! return and feeds it every decoded frame until `Step::Authenticated`. A
//! node sends Records only once authenticated; the peer, receiving in order,
//! has by then our Response before any Record. Timeouts are the caller's: a
//! handshake not done within its deadline (a second or so) is dropped like a
//! failed one. On any `AuthError` the caller logs it (with the peer's
//! address), may send `Goodbye(err.goodbye_reason())`, closes the connection
//! and dials again later; a stranger never gets past this point.

use super::frame::{
    self, Frame, FrameKind, GoodbyeReason, LinkRole, MAC_BYTES, NODE_NAME_BYTES_MAX, NONCE_BYTES,
};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The protocol version of the link this build speaks (the Hello field).
pub const PROTOCOL_VERSION: u16 = 1;
/// Domain separation for the MAC: no other use of the key can produce it.
const MAC_CONTEXT: &[u8] = b"tandem interconnect auth v1\0";
/// Shortest shared key (bytes; 64 hex digits).
pub const LINK_KEY_BYTES_MIN: usize = 32;
/// Longest shared key (bytes).
pub const LINK_KEY_BYTES_MAX: usize = 256;
/// Longest key file read (the key is its first line).
const KEY_FILE_BYTES_MAX: u64 = 4096;

/// The shared key of a pair. Its bytes never appear in `Debug` output and
/// are overwritten when it is dropped (best effort).
#[derive(Clone, PartialEq, Eq)]
pub struct LinkKey {
    bytes: Vec<u8>,
}

impl fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LinkKey({} bytes, redacted)", self.bytes.len())
    }
}

impl Drop for LinkKey {
    fn drop(&mut self) {
        self.bytes.fill(0);
    }
}

/// Why a key could not be loaded; `field` is the config key (`pair.key` or
/// `pair.key_file`).
#[derive(thiserror::Error, Debug)]
pub enum KeyError {
    #[error("{field}: character {position} is not a hex digit")]
    NotHex { field: &'static str, position: usize },
    #[error("{field}: {digits} hex digits is odd (two digits per byte)")]
    OddDigits { field: &'static str, digits: usize },
    #[error(
        "{field}: the key has {bytes} bytes, at least {LINK_KEY_BYTES_MIN} (64 hex digits) are required"
    )]
    TooShort { field: &'static str, bytes: usize },
    #[error("{field}: the key has {bytes} bytes, at most {LINK_KEY_BYTES_MAX} are allowed")]
    TooLong { field: &'static str, bytes: usize },
    #[error("{field}: cannot read {path}: {source}")]
    Unreadable { field: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{field}: {path} is accessible to all users (mode {mode:o}); chmod o-rwx it")]
    WorldAccessible { field: &'static str, path: PathBuf, mode: u32 },
}

impl LinkKey {
    /// Parses a key written as hex (upper or lower case, surrounding
    /// whitespace ignored), at least 64 digits. `field` names the config key
    /// in errors.
    pub fn from_hex(text: &str, field: &'static str) -> Result<LinkKey, KeyError> {
        let digits = text.trim().as_bytes();
        if let Some(position) = digits.iter().position(|d| !d.is_ascii_hexdigit()) {
            return Err(KeyError::NotHex { field, position });
        }
        if !digits.len().is_multiple_of(2) {
            return Err(KeyError::OddDigits { field, digits: digits.len() });
        }
        let bytes = digits.len() / 2;
        if bytes < LINK_KEY_BYTES_MIN {
            return Err(KeyError::TooShort { field, bytes });
        }
        if bytes > LINK_KEY_BYTES_MAX {
            return Err(KeyError::TooLong { field, bytes });
        }
        let nibble = |d: u8| match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => d - b'A' + 10,
        };
        let bytes = digits.chunks_exact(2).map(|pair| (nibble(pair[0]) << 4) | nibble(pair[1])).collect();
        Ok(LinkKey { bytes })
    }

    /// Loads the key from the first line of a file (`pair.key_file`), in
    /// hex. The file must not be readable or writable by all users (mode
    /// bits o+rwx clear; owner and group are the operator's choice), like an
    /// ssh private key.
    pub fn from_file(path: &Path) -> Result<LinkKey, KeyError> {
        use std::os::unix::fs::PermissionsExt;
        const FIELD: &str = "pair.key_file";
        let unreadable = |source| KeyError::Unreadable { field: FIELD, path: path.to_path_buf(), source };
        let file = std::fs::File::open(path).map_err(unreadable)?;
        let mode = file.metadata().map_err(unreadable)?.permissions().mode();
        if mode & 0o007 != 0 {
            return Err(KeyError::WorldAccessible {
                field: FIELD,
                path: path.to_path_buf(),
                mode: mode & 0o7777,
            });
        }
        let mut text = String::new();
        file.take(KEY_FILE_BYTES_MAX).read_to_string(&mut text).map_err(unreadable)?;
        let first_line = text.lines().next().unwrap_or("");
        let key = LinkKey::from_hex(first_line, FIELD);
        // The text held the key too.
        text.into_bytes().fill(0);
        key
    }

    /// The key bytes (for the MAC).
    fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// A fresh random nonce from the kernel (`/dev/urandom`), for
/// [`Handshake::new`].
pub fn fresh_nonce() -> std::io::Result<[u8; NONCE_BYTES]> {
    let mut nonce = [0u8; NONCE_BYTES];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut nonce)?;
    Ok(nonce)
}

/// Who this node is on the link.
#[derive(Clone, Debug)]
pub struct HandshakeConfig {
    pub key: LinkKey,
    pub role: LinkRole,
    pub node_id: u64,
    /// At most [`NODE_NAME_BYTES_MAX`] bytes.
    pub name: String,
    /// The partner's node id from the config, if known: any other is refused.
    pub expected_peer_id: Option<u64>,
}

/// The authenticated partner. Its name came from the peer's Hello: log it
/// as data (it is checked UTF-8 of at most 64 bytes, nothing more).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    pub node_id: u64,
    pub name: String,
    pub role: LinkRole,
    pub protocol_version: u16,
}

/// What the caller does next. The handshake runs once per connection, off
/// the data path, so its output is an owned buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send these encoded frames, then wait for more.
    Send(Vec<u8>),
    /// Nothing to send; wait for the peer's next frame.
    Wait,
    /// The peer proved the key; the link is up.
    Authenticated { peer: PeerIdentity },
}

/// Why a handshake failed. The connection is dropped either way.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    #[error("handshake: unexpected {kind:?} frame while {state}")]
    UnexpectedFrame { kind: FrameKind, state: &'static str },
    #[error("handshake: the peer's response does not verify (wrong key, replay or reflection)")]
    BadResponse,
    #[error("handshake: the peer claims our own role {role:?}")]
    SameRole { role: LinkRole },
    #[error("handshake: the peer claims our own node id {node_id}")]
    SameNodeId { node_id: u64 },
    #[error("handshake: the peer is node {found}, the config names {expected}")]
    UnexpectedPeer { expected: u64, found: u64 },
    #[error("handshake: the peer speaks protocol version {found}, this build {PROTOCOL_VERSION}")]
    VersionUnsupported { found: u16 },
    #[error("handshake: the peer's challenge repeats our own nonce")]
    ReflectedChallenge,
    #[error("handshake: the peer said goodbye ({reason:?})")]
    PeerGoodbye { reason: GoodbyeReason },
    #[error("handshake: node name is over {NODE_NAME_BYTES_MAX} bytes")]
    NameTooLong,
    #[error("handshake: cannot encode our own frame: {0}")]
    Encode(#[from] frame::EncodeError),
    #[error("handshake: start() called twice or after the end")]
    NotStartable,
    #[error("handshake: a frame after the handshake ended")]
    Finished,
}

impl AuthError {
    /// The reason to send in a Goodbye, if one should be sent.
    pub fn goodbye_reason(&self) -> Option<GoodbyeReason> {
        match self {
            AuthError::BadResponse
            | AuthError::SameRole { .. }
            | AuthError::SameNodeId { .. }
            | AuthError::UnexpectedPeer { .. }
            | AuthError::ReflectedChallenge => Some(GoodbyeReason::AuthFailed),
            AuthError::VersionUnsupported { .. } => Some(GoodbyeReason::VersionUnsupported),
            AuthError::UnexpectedFrame { .. } => Some(GoodbyeReason::ProtocolViolation),
            AuthError::PeerGoodbye { .. }
            | AuthError::NameTooLong
            | AuthError::Encode(_)
            | AuthError::NotStartable
            | AuthError::Finished => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    New,
    AwaitHello,
    AwaitChallenge,
    AwaitResponse,
    Done,
    Failed,
}

impl State {
    fn describe(self) -> &'static str {
        match self {
            State::New => "not started",
            State::AwaitHello => "waiting for Hello",
            State::AwaitChallenge => "waiting for Challenge",
            State::AwaitResponse => "waiting for Response",
            State::Done => "authenticated",
            State::Failed => "failed",
        }
    }
}

/// One handshake, for one connection. Build a new one (with a new nonce)
/// for every connection.
pub struct Handshake {
    config: HandshakeConfig,
    own_nonce: [u8; NONCE_BYTES],
    peer: Option<PeerIdentity>,
    peer_nonce: [u8; NONCE_BYTES],
    state: State,
}

impl Handshake {
    /// A handshake with `own_nonce`, which must be fresh and unpredictable
    /// ([`fresh_nonce`]); tests pass fixed nonces.
    pub fn new(config: HandshakeConfig, own_nonce: [u8; NONCE_BYTES]) -> Handshake {
        Handshake { config, own_nonce, peer: None, peer_nonce: [0; NONCE_BYTES], state: State::New }
    }

    /// The frames to send first: Hello and Challenge.
    pub fn start(&mut self) -> Result<Vec<u8>, AuthError> {
        if self.state != State::New {
            return Err(AuthError::NotStartable);
        }
        if self.config.name.len() > NODE_NAME_BYTES_MAX {
            self.state = State::Failed;
            return Err(AuthError::NameTooLong);
        }
        let hello = Frame::Hello {
            protocol_version: PROTOCOL_VERSION,
            role: self.config.role,
            node_id: self.config.node_id,
            name: &self.config.name,
        };
        let challenge = Frame::Challenge { nonce: self.own_nonce };
        let mut out = vec![0u8; hello.encoded_bytes() + challenge.encoded_bytes()];
        let at = encode_known(&hello, &mut out)?;
        encode_known(&challenge, &mut out[at..])?;
        self.state = State::AwaitHello;
        Ok(out)
    }

    /// True once the peer is authenticated.
    pub fn is_authenticated(&self) -> bool {
        self.state == State::Done
    }

    /// Feeds one frame from the peer.
    pub fn on_frame(&mut self, frame: &Frame<'_>) -> Result<Step, AuthError> {
        let result = self.step(frame);
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    fn step(&mut self, frame: &Frame<'_>) -> Result<Step, AuthError> {
        if let Frame::Goodbye { reason } = *frame {
            return Err(AuthError::PeerGoodbye { reason });
        }
        match (self.state, frame) {
            (State::Done | State::Failed, _) => Err(AuthError::Finished),
            (State::AwaitHello, &Frame::Hello { protocol_version, role, node_id, name }) => {
                if protocol_version != PROTOCOL_VERSION {
                    return Err(AuthError::VersionUnsupported { found: protocol_version });
                }
                if role == self.config.role {
                    return Err(AuthError::SameRole { role });
                }
                if node_id == self.config.node_id {
                    return Err(AuthError::SameNodeId { node_id });
                }
                if let Some(expected) = self.config.expected_peer_id {
                    if expected != node_id {
                        return Err(AuthError::UnexpectedPeer { expected, found: node_id });
                    }
                }
                self.peer = Some(PeerIdentity { node_id, name: name.to_string(), role, protocol_version });
                self.state = State::AwaitChallenge;
                Ok(Step::Wait)
            }
            (State::AwaitChallenge, &Frame::Challenge { nonce }) => {
                if nonce == self.own_nonce {
                    return Err(AuthError::ReflectedChallenge);
                }
                self.peer_nonce = nonce;
                let peer = self.peer.as_ref().ok_or(AuthError::Finished)?;
                let mac = response_mac(
                    &self.config.key,
                    self.config.role,
                    (&self.own_nonce, &self.peer_nonce),
                    (self.config.node_id, &self.config.name),
                    (peer.node_id, &peer.name),
                )
                .finalize()
                .into_bytes();
                let mut mac_bytes = [0u8; MAC_BYTES];
                mac_bytes.copy_from_slice(&mac);
                let response = Frame::Response { mac: mac_bytes };
                let mut bytes = vec![0u8; response.encoded_bytes()];
                encode_known(&response, &mut bytes)?;
                self.state = State::AwaitResponse;
                Ok(Step::Send(bytes))
            }
            (State::AwaitResponse, Frame::Response { mac }) => {
                let peer = self.peer.as_ref().ok_or(AuthError::Finished)?;
                response_mac(
                    &self.config.key,
                    peer.role,
                    (&self.peer_nonce, &self.own_nonce),
                    (peer.node_id, &peer.name),
                    (self.config.node_id, &self.config.name),
                )
                .verify_slice(mac)
                .map_err(|_| AuthError::BadResponse)?;
                self.state = State::Done;
                Ok(Step::Authenticated { peer: peer.clone() })
            }
            (state, other) => Err(AuthError::UnexpectedFrame { kind: other.kind(), state: state.describe() }),
        }
    }
}

/// Encodes a frame we built ourselves (sizes known, fields in range).
fn encode_known(frame: &Frame<'_>, out: &mut [u8]) -> Result<usize, AuthError> {
    Ok(frame::encode(frame, out)?)
}

/// The MAC a node with `sender_role` sends: over the context, its role
/// label, both nonces (sender's first), both identities (sender's first)
/// and the protocol version. Names are length-prefixed so no two field
/// splits hash alike.
fn response_mac(
    key: &LinkKey,
    sender_role: LinkRole,
    (sender_nonce, receiver_nonce): (&[u8; NONCE_BYTES], &[u8; NONCE_BYTES]),
    (sender_id, sender_name): (u64, &str),
    (receiver_id, receiver_name): (u64, &str),
) -> Hmac<Sha256> {
    // HMAC takes a key of any length; new_from_slice cannot fail for it.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    };
    mac.update(MAC_CONTEXT);
    mac.update(match sender_role {
        LinkRole::Initiator => b"initiator->acceptor",
        LinkRole::Acceptor => b"acceptor->initiator",
    });
    mac.update(sender_nonce);
    mac.update(receiver_nonce);
    for (id, name) in [(sender_id, sender_name), (receiver_id, receiver_name)] {
        mac.update(&id.to_le_bytes());
        mac.update(&(name.len() as u64).to_le_bytes());
        mac.update(name.as_bytes());
    }
    mac.update(&PROTOCOL_VERSION.to_le_bytes());
    mac
}
