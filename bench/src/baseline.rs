//! The plain-TCP baseline: what the same message sizes and queue depth cost
//! over loopback TCP with a trivial peer, so NVMe/TCP figures can be read as
//! a ratio of what the kernel's TCP stack alone allows.
//!
//! The wire format mimics the shape of NVMe/TCP traffic without its protocol:
//! every request starts with a 64-byte header (the size of an SQE). A write
//! carries `len` bytes after its header and the peer answers a 16-byte
//! completion (the size of a CQE); a read is the header alone and the peer
//! answers `len` bytes. Answers come in request order, so the client matches
//! them by position. Each connection keeps `queue_depth` requests in flight:
//! a sender thread spends credits, a receiver thread returns them, so neither
//! side can block the other (a single thread writing a deep queue of large
//! requests could deadlock against a peer blocked writing answers).
//!
//! Header (little-endian): `[0..4)` magic "TNEB", `[4]` kind (1 write, 2 read),
//! `[8..12)` length, `[16..24)` tag; the rest is zero.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::prng::Rng;
use crate::stats::{wait_for_workers, Progress, QueueStats};
use crate::workload::Pattern;

pub const REQUEST_BYTES: usize = 64;
pub const COMPLETION_BYTES: usize = 16;
/// The largest message the peer accepts.
pub const IO_BYTES_MAX: usize = 16 << 20;
const MAGIC: [u8; 4] = *b"TNEB";
const KIND_WRITE: u8 = 1;
const KIND_READ: u8 = 2;
/// How often a blocked peer thread looks at its stop flag.
const PEER_WAKE: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error("echo request: bad magic {magic:02x?}")]
    BadMagic { magic: [u8; 4] },
    #[error("echo request: unknown kind {kind}")]
    BadKind { kind: u8 },
    #[error("echo request: length {len} is over {max}")]
    TooLong { len: usize, max: usize },
    #[error("baseline needs a message size of 1..={max} bytes, queue depth and connections >= 1, and --ios or --time")]
    Spec { max: usize },
    #[error("baseline connection {connection}: {source}")]
    Io { connection: usize, source: std::io::Error },
}

/// A parsed request header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub is_read: bool,
    pub len: usize,
    pub tag: u64,
}

impl Request {
    pub fn encode(&self, out: &mut [u8; REQUEST_BYTES]) {
        out.fill(0);
        out[..4].copy_from_slice(&MAGIC);
        out[4] = if self.is_read { KIND_READ } else { KIND_WRITE };
        out[8..12].copy_from_slice(&(self.len as u32).to_le_bytes());
        out[16..24].copy_from_slice(&self.tag.to_le_bytes());
    }

    pub fn parse(bytes: &[u8; REQUEST_BYTES]) -> Result<Request, BaselineError> {
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if magic != MAGIC {
            return Err(BaselineError::BadMagic { magic });
        }
        let is_read = match bytes[4] {
            KIND_WRITE => false,
            KIND_READ => true,
            kind => return Err(BaselineError::BadKind { kind }),
        };
        let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
        if len > IO_BYTES_MAX {
            return Err(BaselineError::TooLong { len, max: IO_BYTES_MAX });
        }
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&bytes[16..24]);
        Ok(Request { is_read, len, tag: u64::from_le_bytes(tag) })
    }
}

/// The echo peer: listens on an ephemeral port of 127.0.0.1 and serves each
/// connection on its own thread until the client closes it or the peer is
/// dropped.
pub struct EchoPeer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl EchoPeer {
    pub fn start() -> std::io::Result<EchoPeer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("echo-accept".into())
                .spawn(move || accept_loop(listener, stop))?
        };
        Ok(EchoPeer { addr, stop, acceptor: Some(acceptor) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: TcpListener, stop: Arc<AtomicBool>) {
    let mut connections = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let stop = stop.clone();
                let spawned = std::thread::Builder::new().name("echo-conn".into()).spawn(move || {
                    if let Err(error) = serve(stream, &stop) {
                        tracing::debug!(%error, "echo peer closed a connection");
                    }
                });
                match spawned {
                    Ok(handle) => connections.push(handle),
                    Err(error) => tracing::warn!(%error, "echo peer cannot start a connection thread"),
                }
            }
            // Non-blocking accept: back off rather than spin a shared core.
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
            Err(error) => {
                tracing::warn!(%error, "echo peer accept failed");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    for handle in connections {
        let _ = handle.join();
    }
}

/// Fills `buf` from `stream`, waking every [`PEER_WAKE`] to honour `stop`.
/// Ok(false) on a clean end of stream before the first byte.
fn read_full(stream: &mut TcpStream, buf: &mut [u8], stop: &AtomicBool) -> std::io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                if stop.load(Ordering::Relaxed) {
                    return Ok(false);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn serve(mut stream: TcpStream, stop: &AtomicBool) -> Result<(), BaselineError> {
    let io = |source| BaselineError::Io { connection: 0, source };
    stream.set_nonblocking(false).map_err(io)?;
    stream.set_nodelay(true).map_err(io)?;
    stream.set_read_timeout(Some(PEER_WAKE)).map_err(io)?;
    let mut header = [0u8; REQUEST_BYTES];
    // Grown to the largest message seen, once; not per request.
    let mut data = Vec::new();
    loop {
        if !read_full(&mut stream, &mut header, stop).map_err(io)? {
            return Ok(());
        }
        let request = Request::parse(&header)?;
        if data.len() < request.len {
            data.resize(request.len, 0x5a);
        }
        if request.is_read {
            stream.write_all(&data[..request.len]).map_err(io)?;
        } else {
            if !read_full(&mut stream, &mut data[..request.len], stop).map_err(io)? && request.len > 0 {
                return Ok(());
            }
            let mut completion = [0u8; COMPLETION_BYTES];
            completion[..8].copy_from_slice(&request.tag.to_le_bytes());
            stream.write_all(&completion).map_err(io)?;
        }
    }
}

/// What the baseline client does.
#[derive(Clone, Debug)]
pub struct BaselineSpec {
    pub pattern: Pattern,
    pub read_percent: u8,
    pub io_bytes: usize,
    pub queue_depth: usize,
    pub connections: usize,
    pub ios_total: Option<u64>,
    pub duration: Option<Duration>,
    pub seed: u64,
}

/// Runs the client against `addr` (normally an [`EchoPeer`]); returns the
/// merged counters and the longest connection's run time. `on_tick` is
/// called about once a second on the calling thread.
pub fn run_baseline(
    addr: SocketAddr,
    spec: &BaselineSpec,
    progress: &Progress,
    on_tick: &mut dyn FnMut(),
) -> Result<(QueueStats, Duration), BaselineError> {
    if spec.io_bytes == 0
        || spec.io_bytes > IO_BYTES_MAX
        || spec.queue_depth == 0
        || spec.connections == 0
        || (spec.ios_total.is_none() && spec.duration.is_none())
    {
        return Err(BaselineError::Spec { max: IO_BYTES_MAX });
    }
    let finished = AtomicUsize::new(0);
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..spec.connections)
            .map(|index| {
                let finished = &finished;
                scope.spawn(move || {
                    let result = run_connection(addr, spec, index, progress);
                    finished.fetch_add(1, Ordering::Release);
                    result
                })
            })
            .collect();
        wait_for_workers(&finished, spec.connections, on_tick);
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect::<Vec<_>>()
    });
    let mut stats = QueueStats::new();
    let mut elapsed = Duration::ZERO;
    for result in results {
        let (connection_stats, connection_elapsed) = result?;
        stats.merge(&connection_stats);
        elapsed = elapsed.max(connection_elapsed);
    }
    Ok((stats, elapsed))
}

fn run_connection(
    addr: SocketAddr,
    spec: &BaselineSpec,
    index: usize,
    progress: &Progress,
) -> Result<(QueueStats, Duration), BaselineError> {
    let io = |source| BaselineError::Io { connection: index, source };
    let stream = TcpStream::connect(addr).map_err(io)?;
    stream.set_nodelay(true).map_err(io)?;
    let mut writer = stream.try_clone().map_err(io)?;
    let mut reader = stream;
    let depth = spec.queue_depth;
    let quota = spec.ios_total.map(|total| {
        let connections = spec.connections as u64;
        total / connections + u64::from((index as u64) < total % connections)
    });
    let read_percent = spec.pattern.read_percent(spec.read_percent);
    let started = Instant::now();
    let deadline = spec.duration.map(|d| started + d);
    // Credits bound the requests in flight; the sent channel carries each
    // request's start time and kind to the receiver, in order. Both channels
    // are preallocated to the queue depth.
    let (credit_tx, credit_rx) = sync_channel::<()>(depth);
    for _ in 0..depth {
        let _ = credit_tx.send(());
    }
    let (sent_tx, sent_rx) = sync_channel::<(Instant, bool)>(depth);
    std::thread::scope(|scope| {
        let sender = scope.spawn(move || -> Result<(), std::io::Error> {
            let mut rng = Rng::for_stream(spec.seed, index as u64);
            let mut payload = vec![0u8; spec.io_bytes];
            rng.fill(&mut payload);
            let mut header = [0u8; REQUEST_BYTES];
            let mut issued = 0u64;
            while quota.is_none_or(|q| issued < q) && deadline.is_none_or(|d| Instant::now() < d) {
                if credit_rx.recv().is_err() {
                    break; // the receiver stopped: its error is the one reported
                }
                let is_read = match read_percent {
                    100 => true,
                    0 => false,
                    percent => rng.percent(percent),
                };
                Request { is_read, len: spec.io_bytes, tag: issued }.encode(&mut header);
                if sent_tx.send((Instant::now(), is_read)).is_err() {
                    break;
                }
                writer.write_all(&header)?;
                if !is_read {
                    writer.write_all(&payload)?;
                }
                issued += 1;
            }
            Ok(())
            // Dropping sent_tx here tells the receiver no more answers are due.
        });
        let mut stats = QueueStats::new();
        let mut answer = vec![0u8; spec.io_bytes.max(COMPLETION_BYTES)];
        let mut outcome = Ok(());
        while let Ok((sent_at, is_read)) = sent_rx.recv() {
            let len = if is_read { spec.io_bytes } else { COMPLETION_BYTES };
            if let Err(error) = reader.read_exact(&mut answer[..len]) {
                stats.errors += 1;
                outcome = Err(error);
                // Unblock a sender stuck in write_all on a dead connection.
                let _ = reader.shutdown(Shutdown::Both);
                break;
            }
            stats.record_latency(sent_at.elapsed());
            if is_read {
                stats.reads += 1;
                stats.bytes_read += spec.io_bytes as u64;
            } else {
                stats.writes += 1;
                stats.bytes_written += spec.io_bytes as u64;
            }
            progress.add(spec.io_bytes as u64);
            let _ = credit_tx.send(());
        }
        drop(sent_rx);
        drop(credit_tx);
        let elapsed = started.elapsed();
        let sent = sender.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        outcome.and(sent).map_err(io)?;
        Ok((stats, elapsed))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(pattern: Pattern) -> BaselineSpec {
        BaselineSpec {
            pattern,
            read_percent: 50,
            io_bytes: 4096,
            queue_depth: 8,
            connections: 2,
            ios_total: Some(3000),
            duration: None,
            seed: 3,
        }
    }

    #[test]
    fn echo_pair_completes_every_request_on_loopback() {
        let peer = EchoPeer::start().unwrap();
        for pattern in [Pattern::Randrw, Pattern::Read, Pattern::Write] {
            let (stats, elapsed) =
                run_baseline(peer.addr(), &spec(pattern), &Progress::default(), &mut || {})
                    .expect("loopback baseline runs");
            assert_eq!(stats.ios(), 3000, "{pattern:?}");
            assert_eq!(stats.errors, 0);
            assert_eq!(stats.latency_ns.len(), 3000);
            assert!(elapsed > Duration::ZERO);
            match pattern {
                Pattern::Read => assert_eq!(stats.writes, 0),
                Pattern::Write => assert_eq!(stats.reads, 0),
                _ => assert!(stats.reads > 1000 && stats.writes > 1000, "{} / {}", stats.reads, stats.writes),
            }
        }
    }

    #[test]
    fn large_messages_and_deep_queues_do_not_deadlock() {
        let peer = EchoPeer::start().unwrap();
        let mut spec = spec(Pattern::Randrw);
        spec.io_bytes = 1 << 20;
        spec.queue_depth = 16;
        spec.connections = 1;
        spec.ios_total = Some(200);
        let (stats, _) = run_baseline(peer.addr(), &spec, &Progress::default(), &mut || {}).unwrap();
        assert_eq!(stats.ios(), 200);
    }

    #[test]
    fn request_header_round_trips_and_bad_headers_are_refused() {
        let mut bytes = [0u8; REQUEST_BYTES];
        let request = Request { is_read: true, len: 4096, tag: 77 };
        request.encode(&mut bytes);
        assert_eq!(Request::parse(&bytes).unwrap(), request);
        let mut bad = bytes;
        bad[0] = b'X';
        assert!(matches!(Request::parse(&bad), Err(BaselineError::BadMagic { .. })));
        let mut bad = bytes;
        bad[4] = 9;
        assert!(matches!(Request::parse(&bad), Err(BaselineError::BadKind { kind: 9 })));
        let mut bad = bytes;
        bad[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(Request::parse(&bad), Err(BaselineError::TooLong { .. })));
    }

    #[test]
    fn the_peer_closes_a_connection_that_sends_garbage() {
        let peer = EchoPeer::start().unwrap();
        let mut stream = TcpStream::connect(peer.addr()).unwrap();
        stream.write_all(&[0xffu8; REQUEST_BYTES]).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut byte = [0u8; 1];
        // End of stream (or a reset): the peer hung up rather than answering.
        assert!(matches!(stream.read(&mut byte), Ok(0) | Err(_)));
    }

    #[test]
    fn a_bad_spec_is_refused() {
        let mut bad = spec(Pattern::Read);
        bad.ios_total = None;
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert!(matches!(
            run_baseline(addr, &bad, &Progress::default(), &mut || {}),
            Err(BaselineError::Spec { .. })
        ));
    }
}
