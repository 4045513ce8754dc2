//! The partner's side of the mirror: a listener on `pair.listen` and one
//! blocking thread per connection, each feeding one second store through
//! its [`MirrorReceiver`]. A frame the receiver refuses (or that does not
//! decode) ends the connection with a log line; the store keeps what it
//! held. A newer connection for the same store takes over from an older one
//! (the owner's old connection may be half-open after a crash).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tandem_env::persist::PersistentRegion;
use tandem_env::MappedRegion;
use tracing::{info, warn};

use super::{BlockingLink, LinkCounters, LinkError, HANDSHAKE_TIMEOUT, RECORD_PAYLOAD_BYTES_MAX};
use crate::ha::link::auth::HandshakeConfig;
use crate::ha::link::frame::{Frame, GoodbyeReason, LinkRole};
use crate::ha::mirror::{
    FailedWriter, MediumWrite, MirrorReceiver, Reply, FAILED_DONE_MEDIUM, FAILED_DONE_OK,
};

/// How often a connection thread wakes between frames (heartbeats, timeouts).
const POLL: Duration = Duration::from_millis(20);
/// After a frame, a connection thread polls its socket this long before it
/// blocks again: a busy link is answered without a thread wake-up.
const SPIN: Duration = Duration::from_micros(300);

/// What one second store holds, published for `tandem rpc status`.
#[derive(Debug, Default)]
pub struct SecondStoreStatus {
    pub connected: AtomicBool,
    /// Every record of the owner's ring through this is durable here.
    pub held_through: AtomicU64,
    /// The owner's medium holds every record through this.
    pub released_seq: AtomicU64,
    /// The store has been formatted (by the owner) at least once.
    pub formatted: AtomicBool,
    /// StoreFormats received (a resync from the start).
    pub formats: AtomicU64,
    /// Records written to the medium for the owner, whose own write failed.
    pub medium_writes: AtomicU64,
}

/// One second store: the copy of one of the partner's rings.
pub struct SecondStore {
    pub store_id: u64,
    pub subnqn: String,
    pub nsid: u32,
    pub path: PathBuf,
    pub status: Arc<SecondStoreStatus>,
    /// The shared medium the owner's ring stages for (a file or block
    /// device), where this node writes records whose write failed on the owner.
    pub medium: Option<PathBuf>,
    /// The namespace's block size (a Write Zeroes or Deallocate record
    /// counts blocks only).
    pub block_bytes: u32,
    /// The medium's fault injector on this node (`fault_injection = true`):
    /// it applies to those writes too.
    pub faults: std::sync::OnceLock<crate::backend::FaultControl>,
    inner: Mutex<StoreInner>,
}

struct StoreInner {
    receiver: MirrorReceiver<MappedRegion>,
    /// The connection that may write: a newer one takes over.
    generation: u64,
}

impl SecondStore {
    pub fn new(
        store_id: u64,
        subnqn: String,
        nsid: u32,
        path: PathBuf,
        receiver: MirrorReceiver<MappedRegion>,
        medium: Option<PathBuf>,
        block_bytes: u32,
    ) -> SecondStore {
        let status = Arc::new(SecondStoreStatus::default());
        publish(&status, &receiver);
        SecondStore {
            store_id,
            subnqn,
            nsid,
            path,
            status,
            medium,
            block_bytes,
            faults: std::sync::OnceLock::new(),
            inner: Mutex::new(StoreInner { receiver, generation: 0 }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, StoreInner> {
        // A connection thread that panicked left the store as its last
        // accepted frame made it (each frame is applied whole or refused).
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn publish<R: PersistentRegion>(status: &SecondStoreStatus, receiver: &MirrorReceiver<R>) {
    if let Some(store) = receiver.store() {
        status.held_through.store(store.durable_seq(), Ordering::Relaxed);
        status.released_seq.store(store.released_seq(), Ordering::Relaxed);
        status.formatted.store(true, Ordering::Relaxed);
    }
}

/// Who this node is, for the partner side's handshakes.
#[derive(Clone)]
pub struct PartnerIdentity {
    pub handshake: HandshakeConfig,
    pub partner_timeout: Duration,
}

/// Serves the partner's mirror connections on `listener` until the process
/// ends. Returns at once; the listener runs on its own thread.
pub fn start(
    listener: TcpListener,
    identity: PartnerIdentity,
    stores: Arc<Vec<SecondStore>>,
    counters: Arc<LinkCounters>,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    std::thread::Builder::new().name("link-listen".into()).spawn(move || {
        for stream in listener.incoming() {
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "link: accept failed");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            let peer = stream.peer_addr().map_or_else(|_| "?".to_string(), |a| a.to_string());
            let (identity, stores, counters) = (identity.clone(), stores.clone(), counters.clone());
            let spawned = std::thread::Builder::new()
                .name("link-conn".into())
                .spawn(move || serve_connection(stream, &peer, addr, &identity, &stores, &counters));
            if let Err(e) = spawned {
                warn!(error = %e, "link: cannot start a connection thread");
            }
        }
    })?;
    Ok(())
}

fn serve_connection(
    stream: TcpStream,
    peer: &str,
    local: SocketAddr,
    identity: &PartnerIdentity,
    stores: &[SecondStore],
    counters: &LinkCounters,
) {
    match run_connection(stream, identity, stores, counters) {
        Ok(()) => {}
        Err((store, e)) => {
            let refused = matches!(e, LinkError::Auth(_) | LinkError::Frame(_) | LinkError::Protocol(_));
            if refused {
                counters.count_refused();
                warn!(%peer, %local, nsid = store, error = %e, "link: partner connection refused");
            } else {
                info!(%peer, nsid = store, reason = %e, "link: partner connection ended");
            }
        }
    }
}

/// One connection; the error names the namespace of the store it fed, if any.
fn run_connection(
    stream: TcpStream,
    identity: &PartnerIdentity,
    stores: &[SecondStore],
    counters: &LinkCounters,
) -> Result<(), (Option<u32>, LinkError)> {
    let payload_max = RECORD_PAYLOAD_BYTES_MAX;
    let mut link = BlockingLink::new(stream, payload_max, POLL).map_err(|e| (None, e))?;
    let mut hs = identity.handshake.clone();
    hs.role = LinkRole::Acceptor;
    let peer = link.handshake(hs).map_err(|e| (None, e))?;
    let store_id = link
        .next_with(HANDSHAKE_TIMEOUT, |frame| match frame {
            Frame::Attach { store_id } => Ok(*store_id),
            other => Err(LinkError::Protocol(format!("expected Attach, got {:?}", other.kind()))),
        })
        .map_err(|e| (None, e))?;
    let Some(store) = stores.iter().find(|s| s.store_id == store_id) else {
        let _ = link.send(&Frame::Goodbye { reason: GoodbyeReason::ProtocolViolation });
        return Err((
            None,
            LinkError::Protocol(format!(
                "Attach names store {store_id:#x}, which this node does not keep (no namespace of the \
                 partner's groups has that id: are both configs the same subsystems?)"
            )),
        ));
    };
    let nsid = Some(store.nsid);
    let fail = |e| (nsid, e);
    let generation = {
        let mut inner = store.lock();
        inner.generation += 1;
        let state = inner.receiver.state_frame();
        link.send(&state).map_err(fail)?;
        inner.generation
    };
    counters.connects.fetch_add(1, Ordering::Relaxed);
    store.status.connected.store(true, Ordering::Relaxed);
    info!(partner = %peer.name, nsid = store.nsid, store = %store.path.display(), "link: mirroring the partner's ring");
    let result = stream_frames(&mut link, store, generation, identity.partner_timeout);
    if store.lock().generation == generation {
        store.status.connected.store(false, Ordering::Relaxed);
    }
    if let Err(LinkError::Frame(_) | LinkError::Protocol(_)) = &result {
        let _ = link.send(&Frame::Goodbye { reason: GoodbyeReason::ProtocolViolation });
    }
    result.map_err(fail)
}

fn stream_frames(
    link: &mut BlockingLink,
    store: &SecondStore,
    generation: u64,
    timeout: Duration,
) -> Result<(), LinkError> {
    let mut last_rx = Instant::now();
    let mut last_tx = Instant::now();
    let mut acked = 0u64;
    let mut heartbeat_counter = 0u64;
    loop {
        // Frames already buffered first (they may have come with the Attach).
        let now = Instant::now();
        let mut ack = None;
        let mut echo = None;
        let mut done = Vec::new();
        {
            let mut inner = store.lock();
            if inner.generation != generation {
                return Err(LinkError::Superseded);
            }
            while let Some(frame) = link.decoder.next_frame()? {
                match &frame {
                    Frame::Record { .. } | Frame::Released { .. } | Frame::StoreFormat { .. } => {
                        if matches!(frame, Frame::StoreFormat { .. }) {
                            store.status.formats.fetch_add(1, Ordering::Relaxed);
                        }
                        match inner.receiver.on_frame(&frame) {
                            Ok(Reply::Ack(through)) => {
                                ack = Some(ack.map_or(through, |a: u64| a.max(through)))
                            }
                            Ok(Reply::None) => {}
                            Err(e) => {
                                return Err(LinkError::Protocol(format!("{:?} frame: {e}", frame.kind())))
                            }
                        }
                    }
                    Frame::Heartbeat { counter, sender_time_ms, .. } => {
                        echo = Some((*counter, *sender_time_ms))
                    }
                    Frame::FailedSeqs { batch_id, ranges } => {
                        let (written, status) = write_failed(store, &inner.receiver, ranges);
                        done.push(Frame::FailedDone { batch_id: *batch_id, written_count: written, status });
                    }
                    Frame::Goodbye { reason } => {
                        return Err(LinkError::Protocol(format!("the owner said goodbye ({reason:?})")))
                    }
                    other => return Err(LinkError::Protocol(format!("unexpected {:?} frame", other.kind()))),
                }
            }
            publish(&store.status, &inner.receiver);
        }
        for frame in &done {
            link.send(frame)?;
        }
        if let Some(through) = ack {
            if through > acked {
                link.send(&Frame::RecordAck { through_seq: through })?;
                acked = through;
                last_tx = now;
            }
        }
        if let Some((counter, time)) = echo {
            heartbeat_counter += 1;
            link.send(&Frame::Heartbeat {
                counter: heartbeat_counter,
                sender_time_ms: 0,
                echo_counter: counter,
                echo_time_ms: time,
            })?;
            last_tx = now;
        } else if now.duration_since(last_tx) > timeout / 4 {
            heartbeat_counter += 1;
            link.send(&Frame::Heartbeat {
                counter: heartbeat_counter,
                sender_time_ms: 0,
                echo_counter: 0,
                echo_time_ms: 0,
            })?;
            last_tx = now;
        }
        if link.fill_adaptive(SPIN, last_rx)? {
            last_rx = Instant::now();
        } else if Instant::now().duration_since(last_rx) > timeout {
            return Err(LinkError::Silent(timeout.as_millis() as u64));
        }
    }
}

/// The partner's path to the shared medium, for an owner's failed records:
/// the file or block device, with this node's fault injector on it.
struct FileWriter<'a> {
    store: &'a SecondStore,
    file: std::fs::File,
}

impl FailedWriter for FileWriter<'_> {
    fn write(&mut self, write: MediumWrite<'_>) -> Result<(), String> {
        use std::os::unix::fs::FileExt;
        let block_bytes = u64::from(self.store.block_bytes);
        let (slba, nlb) = match write {
            MediumWrite::Data { slba, data } => (slba, (data.len() as u64 / block_bytes.max(1)) as u32),
            MediumWrite::Zeroes { slba, nlb } => (slba, nlb),
        };
        if self.store.faults.get().is_some_and(|f| f.write_would_fail(slba, nlb)) {
            return Err("injected medium write failure".into());
        }
        let result = match write {
            MediumWrite::Data { slba, data } => self.file.write_all_at(data, slba * block_bytes),
            // Write Zeroes, or Deallocate (whose blocks read as zeroes after).
            MediumWrite::Zeroes { slba, nlb } => {
                write_zeroes_at(&self.file, slba * block_bytes, u64::from(nlb) * block_bytes)
            }
        };
        result.map_err(|e| e.to_string())
    }

    fn sync(&mut self) -> Result<(), String> {
        self.file.sync_data().map_err(|e| e.to_string())
    }
}

/// Writes the records of `ranges` from the second store to the shared
/// medium (`MirrorReceiver::write_failed`). Returns the records written and
/// a `FAILED_DONE_*` status; on any error the owner keeps its records staged
/// and retries itself.
fn write_failed<R: PersistentRegion>(
    store: &SecondStore,
    receiver: &MirrorReceiver<R>,
    ranges: &crate::ha::link::frame::SeqRanges<'_>,
) -> (u64, u32) {
    let Some(path) = &store.medium else { return (0, FAILED_DONE_MEDIUM) };
    let file = match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) => {
            warn!(
                nsid = store.nsid,
                medium = %path.display(),
                error = %e,
                "cannot open the medium for the owner's failed records"
            );
            return (0, FAILED_DONE_MEDIUM);
        }
    };
    let mut writer = FileWriter { store, file };
    let (written, status) = receiver.write_failed(ranges, &mut writer);
    if status == FAILED_DONE_OK {
        store.status.medium_writes.fetch_add(written, Ordering::Relaxed);
        info!(
            nsid = store.nsid,
            records = written,
            "wrote the owner's failed records to the medium from the second store"
        );
    } else {
        warn!(nsid = store.nsid, written, status, "could not write the owner's failed records to the medium");
    }
    (written, status)
}

/// Writes `len` zero bytes at `offset`, in chunks (no allocation per block).
fn write_zeroes_at(file: &std::fs::File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    const CHUNK: u64 = 1 << 20;
    let zeroes = vec![0u8; CHUNK.min(len) as usize];
    let mut done = 0;
    while done < len {
        let n = CHUNK.min(len - done);
        file.write_all_at(&zeroes[..n as usize], offset + done)?;
        done += n;
    }
    Ok(())
}
