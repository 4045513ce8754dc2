//! FileBackend: a namespace on a regular file or a block device, driven by
//! io_uring. O_DIRECT is used when the filesystem accepts it (probed at open
//! with one aligned read: tmpfs, for one, refuses it); otherwise I/O goes
//! through the page cache. Either way a completed write is durable only after
//! a Flush (fdatasync) or when it was written with FUA (RWF_DSYNC), so
//! `writes_are_durable()` is false.
//!
//! Write Zeroes and Deallocate use fallocate (zero-range, punch-hole); where
//! the filesystem refuses (EOPNOTSUPP) the range is written with zeroes
//! synchronously on the polling thread — a slow path that only such
//! filesystems take.
//!
//! Invariants: at most `queue_depth_max` operations in flight, which is also
//! the ring's size, so a valid submit never finds the ring full; the ring is
//! dropped before the file, and it waits for in-flight I/O when dropped.

use super::{validate, Backend, BackendCompletion, BackendError, BackendOp};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use tandem_env::uring::{EINVAL, EIO, ENOENT, EOPNOTSUPP, O_DIRECT};
use tandem_env::{BufferPool, DmaBuf, Uring};

/// Bytes written per call when zeroes are written by hand.
const ZERO_CHUNK_BYTES: usize = 128 * 1024;

#[derive(Clone, Copy, Debug)]
struct Slot {
    tag: u64,
    op: &'static str,
    slba: u64,
    nlb: u32,
    expected_bytes: usize,
    zeroes_fallback: bool,
}

/// How [`FileBackend::open_with_mode`] chooses between direct and buffered I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoMode {
    /// O_DIRECT if the filesystem accepts it, else buffered.
    Auto,
    /// Always through the page cache.
    Buffered,
}

/// See the module docs.
pub struct FileBackend {
    // Declared before `file`: dropped first, after waiting for in-flight I/O.
    uring: Uring,
    file: File,
    path: String,
    direct: bool,
    block_size: u32,
    num_blocks: u64,
    queue_depth_max: usize,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    zeroes: DmaBuf,
    zeroes_fallbacks: u64,
}

impl std::fmt::Debug for FileBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileBackend")
            .field("path", &self.path)
            .field("direct", &self.direct)
            .field("block_size", &self.block_size)
            .field("num_blocks", &self.num_blocks)
            .finish()
    }
}

impl FileBackend {
    /// Opens `path` (a regular file or a block device). A missing file is
    /// created with `size_bytes_if_creating` bytes; an existing one keeps its
    /// size. `block_size` is a power of two >= 512; the namespace has
    /// floor(size / block_size) blocks.
    pub fn open(
        path: &Path,
        block_size: u32,
        size_bytes_if_creating: Option<u64>,
        queue_depth_max: usize,
    ) -> Result<FileBackend, BackendError> {
        FileBackend::open_with_mode(path, block_size, size_bytes_if_creating, queue_depth_max, IoMode::Auto)
    }

    /// As [`FileBackend::open`], choosing whether to try O_DIRECT.
    pub fn open_with_mode(
        path: &Path,
        block_size: u32,
        size_bytes_if_creating: Option<u64>,
        queue_depth_max: usize,
        mode: IoMode,
    ) -> Result<FileBackend, BackendError> {
        let path_text = path.display().to_string();
        let open_err = |e: std::io::Error| BackendError::Open {
            path: path_text.clone(),
            errno: e.raw_os_error().unwrap_or(0),
        };
        if !block_size.is_power_of_two() || block_size < 512 || queue_depth_max == 0 || queue_depth_max > 4096
        {
            return Err(BackendError::InvalidGeometry { block_size, num_blocks: 0 });
        }
        if !path.exists() {
            let Some(size_bytes) = size_bytes_if_creating else {
                return Err(BackendError::Open { path: path_text, errno: ENOENT });
            };
            match OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(file) => file.set_len(size_bytes).map_err(open_err)?,
                // Another process (the partner, started at the same moment
                // on the same shared medium) created it first: open it.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(open_err(e)),
            }
        }
        let zero_pool = BufferPool::new("file-backend-zeroes", ZERO_CHUNK_BYTES.max(block_size as usize), 1)
            .map_err(|_| BackendError::InvalidGeometry { block_size, num_blocks: 0 })?;
        let mut zeroes =
            zero_pool.get().ok_or(BackendError::InvalidGeometry { block_size, num_blocks: 0 })?;
        zeroes.fill(0);

        let (file, direct) = match mode {
            IoMode::Auto => open_probed(path, block_size, &mut zeroes).map_err(open_err)?,
            IoMode::Buffered => {
                (OpenOptions::new().read(true).write(true).open(path).map_err(open_err)?, false)
            }
        };
        let mut sizer = &file;
        let size_bytes = sizer.seek(SeekFrom::End(0)).map_err(open_err)?;
        let num_blocks = size_bytes / block_size as u64;
        if num_blocks == 0 {
            return Err(BackendError::InvalidGeometry { block_size, num_blocks });
        }
        let uring = Uring::new(queue_depth_max as u32).map_err(|e| BackendError::Open {
            path: path_text.clone(),
            errno: match e {
                tandem_env::EnvError::Syscall { errno, .. } => errno,
                _ => EINVAL,
            },
        })?;
        tracing::info!(
            path = %path_text,
            block_size,
            num_blocks,
            queue_depth_max,
            "file backend using {}",
            if direct { "O_DIRECT io_uring" } else { "buffered io_uring (O_DIRECT unsupported here)" }
        );
        let empty = Slot { tag: 0, op: "", slba: 0, nlb: 0, expected_bytes: 0, zeroes_fallback: false };
        Ok(FileBackend {
            uring,
            file,
            path: path_text,
            direct,
            block_size,
            num_blocks,
            queue_depth_max,
            slots: vec![empty; queue_depth_max],
            free_slots: (0..queue_depth_max as u32).rev().collect(),
            zeroes,
            zeroes_fallbacks: 0,
        })
    }

    /// True when I/O bypasses the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// How many Write Zeroes / Deallocate fell back to writing zeroes.
    pub fn zeroes_fallbacks(&self) -> u64 {
        self.zeroes_fallbacks
    }

    fn queue(&mut self, index: u32, op: BackendOp) -> Result<(), (tandem_env::EnvError, BackendOp)> {
        let fd = self.file.as_raw_fd();
        let bs = self.block_size as u64;
        let user_data = index as u64;
        match op {
            BackendOp::Read { slba, nlb, mut buf } => {
                buf.set_len(nlb as usize * bs as usize);
                self.uring
                    .read_at(fd, slba * bs, buf, user_data)
                    .map_err(|(e, buf)| (e, BackendOp::Read { slba, nlb, buf }))
            }
            BackendOp::Write { slba, nlb, mut buf, fua } => {
                buf.set_len(nlb as usize * bs as usize);
                self.uring
                    .write_at(fd, slba * bs, buf, user_data, fua)
                    .map_err(|(e, buf)| (e, BackendOp::Write { slba, nlb, buf, fua }))
            }
            BackendOp::Flush => self.uring.fdatasync(fd, user_data).map_err(|e| (e, op)),
            BackendOp::WriteZeroes { slba, nlb } => {
                self.uring.zero_range(fd, slba * bs, nlb as u64 * bs, user_data).map_err(|e| (e, op))
            }
            BackendOp::Deallocate { slba, nlb } => {
                self.uring.punch_hole(fd, slba * bs, nlb as u64 * bs, user_data).map_err(|e| (e, op))
            }
        }
    }
}

/// Opens with O_DIRECT and checks that an aligned read works; falls back to
/// buffered I/O when either step says EINVAL.
fn open_probed(path: &Path, block_size: u32, probe: &mut DmaBuf) -> std::io::Result<(File, bool)> {
    let plain = || OpenOptions::new().read(true).write(true).open(path);
    let direct = match OpenOptions::new().read(true).write(true).custom_flags(O_DIRECT).open(path) {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(EINVAL) => return Ok((plain()?, false)),
        Err(e) => return Err(e),
    };
    match direct.read_at(&mut probe[..block_size as usize], 0) {
        Ok(_) => Ok((direct, true)),
        Err(e) if e.raw_os_error() == Some(EINVAL) => Ok((plain()?, false)),
        Err(e) => Err(e),
    }
}

/// Writes zeroes over [offset, offset+len) synchronously (the fallocate fallback).
fn write_zeroes_sync(file: &File, zeroes: &DmaBuf, offset: u64, len: u64) -> std::io::Result<()> {
    let mut done = 0u64;
    while done < len {
        let step = (len - done).min(zeroes.len() as u64) as usize;
        file.write_all_at(&zeroes[..step], offset + done)?;
        done += step as u64;
    }
    Ok(())
}

impl Backend for FileBackend {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.num_blocks
    }

    fn submit(&mut self, tag: u64, op: BackendOp) -> Result<(), (BackendError, BackendOp)> {
        if let Err(e) = validate(&op, self.block_size, self.num_blocks) {
            return Err((e, op));
        }
        let Some(index) = self.free_slots.pop() else {
            return Err((BackendError::QueueFull { queue_depth_max: self.queue_depth_max }, op));
        };
        let (slba, nlb) = op.range().unwrap_or((0, 0));
        let expected_bytes = match op {
            BackendOp::Read { .. } | BackendOp::Write { .. } => nlb as usize * self.block_size as usize,
            _ => 0,
        };
        let zeroes_fallback = matches!(op, BackendOp::WriteZeroes { .. } | BackendOp::Deallocate { .. });
        self.slots[index as usize] = Slot { tag, op: op.name(), slba, nlb, expected_bytes, zeroes_fallback };
        match self.queue(index, op) {
            Ok(()) => Ok(()),
            Err((_, op)) => {
                // The ring is as deep as the slot table, so this is unreachable
                // while the invariant holds; refuse rather than lose the op.
                self.free_slots.push(index);
                Err((BackendError::QueueFull { queue_depth_max: self.queue_depth_max }, op))
            }
        }
    }

    fn kick(&mut self) {
        if let Err(e) = self.uring.submit() {
            // The entries stay queued; the next kick retries them.
            tracing::warn!(path = %self.path, error = %e, "io_uring submit failed");
        }
    }

    fn poll_completions(&mut self, out: &mut Vec<BackendCompletion>) -> usize {
        let FileBackend { uring, file, slots, free_slots, zeroes, block_size, zeroes_fallbacks, .. } = self;
        let mut count = 0;
        let bs = *block_size as u64;
        count += uring.complete(|user_data, res, buf| {
            let slot = slots[user_data as usize];
            free_slots.push(user_data as u32);
            let result = if res == -EOPNOTSUPP && slot.zeroes_fallback {
                // Deallocated blocks must read as zeroes too, so both ops fall
                // back to writing zeroes.
                *zeroes_fallbacks += 1;
                write_zeroes_sync(file, zeroes, slot.slba * bs, slot.nlb as u64 * bs).map_err(|e| {
                    BackendError::Io { errno: e.raw_os_error().unwrap_or(EIO), op: slot.op, slba: slot.slba }
                })
            } else if res < 0 {
                Err(BackendError::Io { errno: -res, op: slot.op, slba: slot.slba })
            } else if (res as usize) < slot.expected_bytes {
                Err(BackendError::ShortTransfer {
                    op: slot.op,
                    slba: slot.slba,
                    done_bytes: res as usize,
                    expected_bytes: slot.expected_bytes,
                })
            } else {
                Ok(())
            };
            out.push(BackendCompletion { tag: slot.tag, result, buf });
        });
        count
    }

    fn in_flight(&self) -> usize {
        self.uring.in_flight()
    }

    fn queue_depth_max(&self) -> usize {
        self.queue_depth_max
    }

    fn wake_fd(&self) -> Option<RawFd> {
        Some(self.uring.wake_fd())
    }

    fn writes_are_durable(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests_common::*;
    use super::*;

    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn path_in(dir: &str, name: &str) -> Cleanup {
        Cleanup(Path::new(dir).join(format!("tandem-file-backend-{}-{name}", std::process::id())))
    }

    fn tmp_is_tmpfs() -> bool {
        std::fs::read_to_string("/proc/mounts")
            .map(|m| m.lines().any(|l| l.split_whitespace().nth(1) == Some("/tmp") && l.contains("tmpfs")))
            .unwrap_or(false)
    }

    #[test]
    fn direct_path_on_a_real_file() {
        // /work is a disk filesystem here; /tmp is used unless it is tmpfs.
        let dir = if tmp_is_tmpfs() { "/work" } else { "/tmp" };
        let path = path_in(dir, "direct");
        let mut backend = FileBackend::open(&path.0, 512, Some(1 << 20), 16).expect("open");
        assert!(backend.is_direct(), "O_DIRECT expected on {dir}");
        assert_eq!(backend.num_blocks(), 2048);
        assert!(!backend.writes_are_durable());
        assert!(backend.wake_fd().is_some());
        exercise_every_op(&mut backend);
        check_out_of_range(&mut backend);
        drop(backend);
        // Data persisted in the file: reopen (existing size wins) and read.
        let mut backend = FileBackend::open(&path.0, 4096, Some(4096), 4).expect("reopen");
        assert_eq!(backend.num_blocks(), 256);
        let data = read_blocks(&mut backend, &pool(), 0, 1);
        assert!(data[..512].iter().all(|&b| b == 0x11));
        assert!(data[512..1024].iter().all(|&b| b == 0));
    }

    #[test]
    fn tmpfs_with_zeroes_fallback() {
        // tmpfs refuses FALLOC_FL_ZERO_RANGE, so Write Zeroes takes the
        // synchronous fallback; O_DIRECT depends on the kernel (tmpfs has it
        // since Linux 6.6), so either mode is accepted.
        let path = path_in("/dev/shm", "tmpfs");
        let mut backend = FileBackend::open(&path.0, 4096, Some(64 * 4096), 8).expect("open");
        exercise_every_op(&mut backend);
        assert!(backend.zeroes_fallbacks() >= 1, "tmpfs refuses zero-range");
    }

    #[test]
    fn forced_buffered_mode() {
        let path = path_in("/tmp", "buffered");
        let mut backend =
            FileBackend::open_with_mode(&path.0, 512, Some(1 << 16), 8, IoMode::Buffered).expect("open");
        assert!(!backend.is_direct());
        exercise_every_op(&mut backend);
    }

    #[test]
    fn many_in_flight_then_queue_full() {
        let path = path_in("/tmp", "many");
        let mut backend = FileBackend::open(&path.0, 4096, Some(64 * 4096), 8).expect("open");
        let pool = tandem_env::BufferPool::new("many", 4096, 9).expect("pool");
        for tag in 0..8u64 {
            let mut buf = pool.get().expect("buf");
            buf.fill(tag as u8);
            backend.submit(tag, BackendOp::Write { slba: tag, nlb: 1, buf, fua: false }).expect("submit");
        }
        let op = BackendOp::Flush;
        assert!(matches!(backend.submit(99, op), Err((BackendError::QueueFull { queue_depth_max: 8 }, _))));
        backend.kick();
        let mut out = Vec::with_capacity(8);
        for _ in 0..10_000 {
            backend.poll_completions(&mut out);
            if out.len() == 8 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(out.len(), 8);
        assert!(out.iter().all(|c| c.result.is_ok()));
        drop(out);
        for tag in 0..8u64 {
            assert!(read_blocks(&mut backend, &pool, tag, 1).iter().all(|&b| b == tag as u8));
        }
    }

    #[test]
    fn missing_file_without_size_is_an_error() {
        let path = path_in("/tmp", "missing");
        let err = FileBackend::open(&path.0, 512, None, 4).expect_err("missing");
        assert!(matches!(err, BackendError::Open { errno, .. } if errno == ENOENT));
    }
}
