//! The pair's interconnect over TCP: the sockets and threads around the
//! sans-I/O mirror (`ha::mirror`) and handshake (`ha::link::auth`).
//!
//! One connection mirrors one ring, and the owner of the ring dials it:
//! - the owner's side ([`owner::MirrorLink`]) lives in the reactor that owns
//!   the ring, on a nonblocking socket polled with the rest of the reactor's
//!   work; a [`dialer`] thread connects, authenticates and attaches for it,
//!   and hands the socket over;
//! - the partner's side ([`partner`]) is a listener thread and one blocking
//!   thread per connection, which writes the owner's records into the second
//!   store and acknowledges them. It touches nothing of the write path.
//!
//! A connection: Hello + Challenge both ways, Response both ways (mutual
//! HMAC over both nonces), then the owner's `Attach { store_id }`, the
//! partner's `StoreState`, and the mirror's stream (`Record`, `Released`,
//! `RecordAck`) with `Heartbeat`s both ways. A stranger, a wrong key or a
//! malformed frame ends that connection with a log line naming why; the
//! owner dials again and sends again what the partner has not acknowledged.

pub mod dialer;
pub mod owner;
pub mod partner;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::ha::link::auth::{fresh_nonce, AuthError, Handshake, HandshakeConfig, PeerIdentity, Step};
use crate::ha::link::frame::{encode, Frame, FrameDecoder, FrameError};

/// Names one of an owner's rings on the link: the same on both nodes (the
/// subsystem NQN's CRC32C and the namespace id).
pub fn store_id(subnqn: &str, nsid: u32) -> u64 {
    (u64::from(crc32c::crc32c(subnqn.as_bytes())) << 32) | u64::from(nsid)
}

/// Where a node keeps its second store for the partner's ring `store_id`.
pub fn second_store_path(staging_dir: &std::path::Path, store_id: u64) -> std::path::PathBuf {
    staging_dir.join(format!("partner-{store_id:016x}.ring"))
}

/// The largest record payload a link decoder accepts: the ring's largest
/// record (header + data, 4 KiB aligned) and the Record frame's fixed part.
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 2 << 20;
/// A handshake (and the attach after it) must finish within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a connection ended (logged; the owner dials again).
#[derive(thiserror::Error, Debug)]
pub enum LinkError {
    #[error("link i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("link frame refused: {0}")]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("the peer closed the connection")]
    Closed,
    #[error("no frame from the peer for {0} ms")]
    Silent(u64),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("a newer connection for this store took over")]
    Superseded,
}

/// Relaxed counters of a link, published for `tandem rpc status`.
#[derive(Debug, Default)]
pub struct LinkCounters {
    pub connects: AtomicU64,
    /// Connections refused or dropped for a bad handshake or frame.
    pub refused: AtomicU64,
    /// The last heartbeat round trip, in microseconds (0: none yet).
    pub rtt_us: AtomicU64,
}

impl LinkCounters {
    pub fn count_refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }
}

/// A blocking framed connection, for the handshake and the partner's side.
pub struct BlockingLink {
    pub stream: TcpStream,
    pub decoder: FrameDecoder<Box<[u8]>>,
    out: Vec<u8>,
    /// The socket is in nonblocking mode (while `fill_adaptive` spins).
    nonblocking: bool,
}

impl BlockingLink {
    /// Wraps `stream`, whose reads time out after `poll` (so the caller can
    /// do timed work between frames).
    pub fn new(
        stream: TcpStream,
        payload_bytes_max: usize,
        poll: Duration,
    ) -> Result<BlockingLink, LinkError> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(poll))?;
        stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
        let buf = vec![0u8; 2 * (payload_bytes_max + 64)].into_boxed_slice();
        let decoder = FrameDecoder::new(buf, payload_bytes_max)
            .map_err(|e| LinkError::Protocol(format!("decoder: {e}")))?;
        Ok(BlockingLink { stream, decoder, out: Vec::with_capacity(4096), nonblocking: false })
    }

    fn set_blocking(&mut self, blocking: bool) -> Result<(), LinkError> {
        if self.nonblocking == blocking {
            self.stream.set_nonblocking(!blocking)?;
            self.nonblocking = !blocking;
        }
        Ok(())
    }

    /// Reads once. Within `spin` of `last_activity` it polls the socket
    /// without blocking (adaptive: a busy link answers without a thread
    /// wake-up), then it blocks up to the read timeout as `fill` does.
    pub fn fill_adaptive(&mut self, spin: Duration, last_activity: Instant) -> Result<bool, LinkError> {
        if last_activity.elapsed() < spin {
            self.set_blocking(false)?;
            loop {
                let spare = self.decoder.spare_mut();
                match self.stream.read(spare) {
                    Ok(0) => return Err(LinkError::Closed),
                    Ok(n) => {
                        self.decoder.commit(n);
                        return Ok(true);
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                        if last_activity.elapsed() >= spin {
                            break;
                        }
                        std::hint::spin_loop();
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        self.set_blocking(true)?;
        self.fill()
    }

    /// Sends one frame.
    /// While the link polls (nonblocking), a frame goes out without a mode
    /// switch unless the socket is full; then the rest is written blocking.
    pub fn send(&mut self, frame: &Frame<'_>) -> Result<(), LinkError> {
        self.out.resize(frame.encoded_bytes(), 0);
        encode(frame, &mut self.out).map_err(|e| LinkError::Protocol(format!("encode: {e}")))?;
        let mut at = 0;
        while self.nonblocking && at < self.out.len() {
            match self.stream.write(&self.out[at..]) {
                Ok(0) => return Err(LinkError::Closed),
                Ok(n) => at += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.set_blocking(true)?,
                Err(e) => return Err(e.into()),
            }
        }
        if at < self.out.len() {
            self.stream.write_all(&self.out[at..])?;
        }
        Ok(())
    }

    /// Reads from the socket once (up to the read timeout). Returns false on
    /// a timeout with nothing read.
    pub fn fill(&mut self) -> Result<bool, LinkError> {
        let spare = self.decoder.spare_mut();
        match self.stream.read(spare) {
            Ok(0) => Err(LinkError::Closed),
            Ok(n) => {
                self.decoder.commit(n);
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Runs the handshake as `config.role`; returns the authenticated peer.
    /// On a refusal the peer is told why (Goodbye) when the reason is ours.
    pub fn handshake(&mut self, config: HandshakeConfig) -> Result<PeerIdentity, LinkError> {
        let mut hs = Handshake::new(config, fresh_nonce()?);
        let first = hs.start()?;
        self.stream.write_all(&first)?;
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        loop {
            let step = match self.decoder.next_frame()? {
                Some(frame) => hs.on_frame(&frame),
                None => {
                    if Instant::now() > deadline {
                        return Err(LinkError::Silent(HANDSHAKE_TIMEOUT.as_millis() as u64));
                    }
                    self.fill()?;
                    continue;
                }
            };
            match step {
                Ok(Step::Send(bytes)) => self.stream.write_all(&bytes)?,
                Ok(Step::Wait) => {}
                Ok(Step::Authenticated { peer }) => return Ok(peer),
                Err(e) => {
                    if let Some(reason) = e.goodbye_reason() {
                        let _ = self.send(&Frame::Goodbye { reason });
                    }
                    return Err(e.into());
                }
            }
        }
    }

    /// Waits for the next frame for at most `timeout` and hands it to `f`.
    pub fn next_with<T>(
        &mut self,
        timeout: Duration,
        f: impl FnOnce(&Frame<'_>) -> Result<T, LinkError>,
    ) -> Result<T, LinkError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return f(&frame);
            }
            if Instant::now() > deadline {
                return Err(LinkError::Silent(timeout.as_millis() as u64));
            }
            self.fill()?;
        }
    }
}

#[cfg(test)]
mod tests;
