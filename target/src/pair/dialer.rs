//! Connects the owner's mirror links, off the reactor: a thread that dials
//! the partner for a ring, runs the handshake, attaches and waits for the
//! partner's `StoreState`, then hands the socket to the reactor that owns
//! the ring (`deliver`). It retries until it succeeds; the reactor asks
//! again after a connection ends.

use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::{BlockingLink, LinkCounters, LinkError, HANDSHAKE_TIMEOUT};
use crate::ha::link::auth::HandshakeConfig;
use crate::ha::link::frame::{Frame, LinkRole, CONTROL_PAYLOAD_BYTES_MAX};

/// Pause between failed attempts.
const RETRY: Duration = Duration::from_millis(200);

/// What the partner's second store for a ring holds (its `StoreState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreState {
    pub format_nonce: u64,
    pub epoch: u64,
    pub held_through: u64,
    pub released_seq: u64,
}

/// An authenticated, attached connection for the ring `store_id`.
pub struct Attached {
    pub store_id: u64,
    pub stream: TcpStream,
    pub state: StoreState,
    /// Bytes received after the `StoreState` (the reactor decodes them first).
    pub leftover: Vec<u8>,
    pub partner: String,
}

/// Asks the dialer for a connection for one ring.
#[derive(Clone)]
pub struct DialRequests(Sender<u64>);

impl DialRequests {
    /// Asks for a connection for `store_id`; false if the dialer is gone.
    pub fn request(&self, store_id: u64) -> bool {
        self.0.send(store_id).is_ok()
    }
}

/// Builds the request channel; `run` serves its other end.
pub fn channel() -> (DialRequests, Receiver<u64>) {
    let (tx, rx) = std::sync::mpsc::channel();
    (DialRequests(tx), rx)
}

/// Starts the dialer thread: it serves `requests` until every sender is
/// dropped, and hands each connection to `deliver` (false: the reactor is
/// gone, stop).
pub fn start(
    requests: Receiver<u64>,
    partner_addr: SocketAddr,
    handshake: HandshakeConfig,
    counters: Arc<LinkCounters>,
    deliver: impl FnMut(Attached) -> bool + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("link-dial".into())
        .spawn(move || run(requests, partner_addr, handshake, counters, deliver))?;
    Ok(())
}

fn run(
    requests: Receiver<u64>,
    partner_addr: SocketAddr,
    handshake: HandshakeConfig,
    counters: Arc<LinkCounters>,
    mut deliver: impl FnMut(Attached) -> bool,
) {
    let mut pending: Vec<u64> = Vec::new();
    let mut failures = 0u64;
    loop {
        if pending.is_empty() {
            match requests.recv() {
                Ok(id) => pending.push(id),
                Err(_) => return,
            }
        }
        while let Ok(id) = requests.try_recv() {
            if !pending.contains(&id) {
                pending.push(id);
            }
        }
        let store_id = pending[0];
        match dial(partner_addr, &handshake, store_id) {
            Ok(attached) => {
                if failures > 0 {
                    info!(%partner_addr, attempts = failures + 1, "link: partner reached");
                }
                failures = 0;
                pending.remove(0);
                if !deliver(attached) {
                    return;
                }
            }
            Err(e) => {
                if matches!(e, LinkError::Auth(_) | LinkError::Frame(_) | LinkError::Protocol(_)) {
                    counters.count_refused();
                    warn!(%partner_addr, error = %e, "link: the partner refused or failed the handshake");
                } else if failures == 0 || failures.is_power_of_two() {
                    // First failure, then ever more rarely: a partner that is
                    // down is reported, not flooded.
                    info!(%partner_addr, error = %e, attempts = failures + 1, "link: cannot reach the partner");
                }
                failures += 1;
                match requests.recv_timeout(RETRY) {
                    Ok(id) => {
                        if !pending.contains(&id) {
                            pending.push(id);
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        }
    }
}

fn dial(partner_addr: SocketAddr, handshake: &HandshakeConfig, store_id: u64) -> Result<Attached, LinkError> {
    let stream = TcpStream::connect_timeout(&partner_addr, HANDSHAKE_TIMEOUT)?;
    let mut link = BlockingLink::new(stream, CONTROL_PAYLOAD_BYTES_MAX, Duration::from_millis(50))?;
    let mut hs = handshake.clone();
    hs.role = LinkRole::Initiator;
    let peer = link.handshake(hs)?;
    link.send(&Frame::Attach { store_id })?;
    let state = link.next_with(HANDSHAKE_TIMEOUT, |frame| match *frame {
        Frame::StoreState { format_nonce, epoch, held_through, released_seq } => {
            Ok(StoreState { format_nonce, epoch, held_through, released_seq })
        }
        Frame::Goodbye { reason } => {
            Err(LinkError::Protocol(format!("the partner refused the attach ({reason:?})")))
        }
        ref other => Err(LinkError::Protocol(format!("expected StoreState, got {:?}", other.kind()))),
    })?;
    let leftover = drain_leftover(&mut link);
    let BlockingLink { stream, .. } = link;
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(None)?;
    Ok(Attached { store_id, stream, state, leftover, partner: peer.name })
}

/// Bytes the decoder holds beyond the frames returned so far.
fn drain_leftover(link: &mut BlockingLink) -> Vec<u8> {
    link.decoder.take_buffered()
}
