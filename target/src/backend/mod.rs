//! Block backends: the storage medium behind a namespace. A backend takes
//! operations tagged by the caller, never blocks in `submit`, pushes queued
//! work to the device in one batch on `kick`, and hands finished operations
//! back from `poll_completions`, each exactly once, with the buffer it lent.
//!
//! Implementations: [`RamBackend`] (memory, shareable between reactors),
//! [`FileBackend`] (a file or block device through io_uring, O_DIRECT when the
//! filesystem allows it) and [`FaultBackend`] (wraps another and injects EIO).
//!
//! Invariants every implementation keeps: `in_flight()` counts operations
//! accepted by `submit` and not yet returned by `poll_completions`, and never
//! exceeds `queue_depth_max()`; an operation that `submit` refuses is handed
//! back untouched and never completes.

mod fault;
mod file;
mod ram;

pub use fault::{FaultBackend, FaultControl, EIO};
pub use file::{FileBackend, IoMode};
pub use ram::RamBackend;

use tandem_env::DmaBuf;

/// An operation on a range of logical blocks (`slba` = starting LBA, `nlb` =
/// number of logical blocks, 1-based here, unlike the 0-based NVMe field).
/// Read and Write carry the data buffer, whose `len()` must be at least
/// `nlb * block_size`; the backend trims it to exactly that length, and the
/// completion hands it back.
#[derive(Debug)]
pub enum BackendOp {
    Read { slba: u64, nlb: u32, buf: DmaBuf },
    Write { slba: u64, nlb: u32, buf: DmaBuf, fua: bool },
    Flush,
    WriteZeroes { slba: u64, nlb: u32 },
    Deallocate { slba: u64, nlb: u32 },
}

impl BackendOp {
    /// The operation's name for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            BackendOp::Read { .. } => "read",
            BackendOp::Write { .. } => "write",
            BackendOp::Flush => "flush",
            BackendOp::WriteZeroes { .. } => "write_zeroes",
            BackendOp::Deallocate { .. } => "deallocate",
        }
    }

    /// The LBA range `(slba, nlb)` the operation touches; None for Flush.
    pub fn range(&self) -> Option<(u64, u32)> {
        match *self {
            BackendOp::Read { slba, nlb, .. }
            | BackendOp::Write { slba, nlb, .. }
            | BackendOp::WriteZeroes { slba, nlb }
            | BackendOp::Deallocate { slba, nlb } => Some((slba, nlb)),
            BackendOp::Flush => None,
        }
    }

    /// Takes the data buffer out of a Read or Write (for completions).
    pub fn into_buf(self) -> Option<DmaBuf> {
        match self {
            BackendOp::Read { buf, .. } | BackendOp::Write { buf, .. } => Some(buf),
            _ => None,
        }
    }
}

/// A finished operation: its tag, its outcome, and the buffer it carried.
#[derive(Debug)]
pub struct BackendCompletion {
    pub tag: u64,
    pub result: Result<(), BackendError>,
    pub buf: Option<DmaBuf>,
}

/// Why a backend operation failed or was refused.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum BackendError {
    /// The device reported an error (`errno`, e.g. EIO = 5).
    #[error("{op} at lba {slba} failed: {}", std::io::Error::from_raw_os_error(*errno))]
    Io { errno: i32, op: &'static str, slba: u64 },
    /// The range [slba, slba+nlb) is not inside the namespace.
    #[error("lba range {slba}+{nlb} outside {num_blocks} blocks")]
    OutOfRange { slba: u64, nlb: u32, num_blocks: u64 },
    /// The buffer cannot hold `nlb` blocks.
    #[error("buffer of {buf_bytes} bytes too small for {needed_bytes}")]
    BufferTooSmall { buf_bytes: usize, needed_bytes: usize },
    /// `queue_depth_max` operations are already in flight.
    #[error("queue full ({queue_depth_max} in flight)")]
    QueueFull { queue_depth_max: usize },
    /// A backend was configured with an unusable geometry.
    #[error("invalid geometry: block size {block_size}, {num_blocks} blocks")]
    InvalidGeometry { block_size: u32, num_blocks: u64 },
    /// Opening or sizing the medium failed (`errno` from the OS).
    #[error("open {path}: {}", std::io::Error::from_raw_os_error(*errno))]
    Open { path: String, errno: i32 },
    /// The device transferred fewer bytes than asked and could not finish.
    #[error("{op} at lba {slba}: short transfer of {done_bytes} of {expected_bytes} bytes")]
    ShortTransfer { op: &'static str, slba: u64, done_bytes: usize, expected_bytes: usize },
}

/// A block device as the controllers see it. See the module docs for the
/// invariants.
pub trait Backend: Send {
    fn block_size(&self) -> u32;
    fn num_blocks(&self) -> u64;
    /// Queue an operation; never blocks. Err gives the op back (queue full or invalid).
    fn submit(&mut self, tag: u64, op: BackendOp) -> Result<(), (BackendError, BackendOp)>;
    /// Pushes queued operations to the device (one syscall per batch).
    fn kick(&mut self);
    /// Moves finished operations into `out` (reuse its capacity: no allocation); returns how many.
    fn poll_completions(&mut self, out: &mut Vec<BackendCompletion>) -> usize;
    fn in_flight(&self) -> usize;
    fn queue_depth_max(&self) -> usize;
    /// An fd that becomes readable when completions are ready (for a sleeping reactor), if any.
    fn wake_fd(&self) -> Option<std::os::fd::RawFd>;
    /// True when a completed write is durable without a Flush (no volatile cache).
    fn writes_are_durable(&self) -> bool;
}

/// A boxed backend is a backend: the node picks its media at run time from
/// the config, and the generic staging log and flusher take it as it is.
impl<T: Backend + ?Sized> Backend for Box<T> {
    fn block_size(&self) -> u32 {
        (**self).block_size()
    }
    fn num_blocks(&self) -> u64 {
        (**self).num_blocks()
    }
    fn submit(&mut self, tag: u64, op: BackendOp) -> Result<(), (BackendError, BackendOp)> {
        (**self).submit(tag, op)
    }
    fn kick(&mut self) {
        (**self).kick()
    }
    fn poll_completions(&mut self, out: &mut Vec<BackendCompletion>) -> usize {
        (**self).poll_completions(out)
    }
    fn in_flight(&self) -> usize {
        (**self).in_flight()
    }
    fn queue_depth_max(&self) -> usize {
        (**self).queue_depth_max()
    }
    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        (**self).wake_fd()
    }
    fn writes_are_durable(&self) -> bool {
        (**self).writes_are_durable()
    }
}

/// Checks an operation's range and buffer against the geometry; shared by
/// every implementation so they refuse the same things the same way.
pub(crate) fn validate(op: &BackendOp, block_size: u32, num_blocks: u64) -> Result<(), BackendError> {
    let Some((slba, nlb)) = op.range() else {
        return Ok(());
    };
    let in_range = slba.checked_add(nlb as u64).is_some_and(|end| end <= num_blocks);
    if !in_range || nlb == 0 {
        return Err(BackendError::OutOfRange { slba, nlb, num_blocks });
    }
    if let BackendOp::Read { buf, .. } | BackendOp::Write { buf, .. } = op {
        let needed_bytes = nlb as usize * block_size as usize;
        if buf.len() < needed_bytes {
            return Err(BackendError::BufferTooSmall { buf_bytes: buf.len(), needed_bytes });
        }
    }
    Ok(())
}

/// Helpers shared by the backends' unit tests: they drive any [`Backend`]
/// through every operation and check the data.
#[cfg(test)]
pub(crate) mod tests_common {
    use super::*;
    use tandem_env::BufferPool;

    pub fn pool() -> BufferPool {
        BufferPool::new("backend-test", 8 * 4096, 16).expect("pool")
    }

    /// Kicks and polls until one completion arrives. Sleeps between empty
    /// polls; gives up (panics) after about ten seconds so a lost completion
    /// fails the test instead of hanging it.
    pub fn wait_one(backend: &mut dyn Backend) -> BackendCompletion {
        let mut out = Vec::with_capacity(4);
        backend.kick();
        for _ in 0..10_000 {
            if backend.poll_completions(&mut out) > 0 {
                assert_eq!(out.len(), 1, "one operation was outstanding");
                return out.pop().expect("len checked");
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("no completion; {} in flight", backend.in_flight());
    }

    pub fn run(backend: &mut dyn Backend, tag: u64, op: BackendOp) -> BackendCompletion {
        if let Err((e, _)) = backend.submit(tag, op) {
            panic!("submit refused: {e}");
        }
        let done = wait_one(backend);
        assert_eq!(done.tag, tag);
        done
    }

    pub fn read_blocks(backend: &mut dyn Backend, pool: &BufferPool, slba: u64, nlb: u32) -> Vec<u8> {
        let mut buf = pool.get().expect("buf");
        buf.set_len(nlb as usize * backend.block_size() as usize);
        let done = run(backend, 100, BackendOp::Read { slba, nlb, buf });
        assert_eq!(done.result, Ok(()));
        done.buf.expect("read returns its buffer").to_vec()
    }

    pub fn write_blocks(
        backend: &mut dyn Backend,
        pool: &BufferPool,
        slba: u64,
        nlb: u32,
        byte: u8,
        fua: bool,
    ) {
        let mut buf = pool.get().expect("buf");
        buf.set_len(nlb as usize * backend.block_size() as usize);
        buf.fill(byte);
        let done = run(backend, 200, BackendOp::Write { slba, nlb, buf, fua });
        assert_eq!(done.result, Ok(()));
        assert!(done.buf.is_some(), "write returns its buffer");
    }

    pub fn exercise_every_op(backend: &mut dyn Backend) {
        let pool = pool();
        let bs = backend.block_size() as usize;
        write_blocks(backend, &pool, 0, 4, 0x11, false);
        write_blocks(backend, &pool, 4, 2, 0x22, true);
        let data = read_blocks(backend, &pool, 0, 6);
        assert!(data[..4 * bs].iter().all(|&b| b == 0x11));
        assert!(data[4 * bs..].iter().all(|&b| b == 0x22));
        assert_eq!(run(backend, 3, BackendOp::Flush).result, Ok(()));
        let done = run(backend, 4, BackendOp::WriteZeroes { slba: 1, nlb: 1 });
        assert_eq!(done.result, Ok(()));
        assert!(done.buf.is_none());
        let done = run(backend, 5, BackendOp::Deallocate { slba: 4, nlb: 1 });
        assert_eq!(done.result, Ok(()));
        let data = read_blocks(backend, &pool, 0, 6);
        assert!(data[..bs].iter().all(|&b| b == 0x11));
        assert!(data[bs..2 * bs].iter().all(|&b| b == 0), "write zeroes");
        assert!(data[2 * bs..4 * bs].iter().all(|&b| b == 0x11));
        assert!(data[4 * bs..5 * bs].iter().all(|&b| b == 0), "deallocated reads zero");
        assert!(data[5 * bs..].iter().all(|&b| b == 0x22));
        let last = backend.num_blocks() - 1;
        write_blocks(backend, &pool, last, 1, 0x33, false);
        assert!(read_blocks(backend, &pool, last, 1).iter().all(|&b| b == 0x33));
        assert_eq!(backend.in_flight(), 0);
    }

    pub fn check_out_of_range(backend: &mut dyn Backend) {
        let pool = pool();
        let num_blocks = backend.num_blocks();
        let op = BackendOp::Read { slba: num_blocks - 1, nlb: 2, buf: pool.get().expect("buf") };
        let (err, op) = backend.submit(1, op).expect_err("out of range");
        assert_eq!(err, BackendError::OutOfRange { slba: num_blocks - 1, nlb: 2, num_blocks });
        assert!(op.into_buf().is_some(), "refused op comes back whole");
        let op = BackendOp::WriteZeroes { slba: u64::MAX, nlb: 1 };
        assert!(matches!(backend.submit(2, op), Err((BackendError::OutOfRange { .. }, _))));
        let mut small = pool.get().expect("buf");
        small.set_len(10);
        let op = BackendOp::Write { slba: 0, nlb: 1, buf: small, fua: false };
        assert!(matches!(backend.submit(3, op), Err((BackendError::BufferTooSmall { .. }, _))));
        assert_eq!(backend.in_flight(), 0);
    }
}
