//! A safe, owning wrapper over io_uring for block I/O on files and devices.
//!
//! The ring owns every buffer it lends to the kernel: `read_at`/`write_at`
//! take a [`DmaBuf`] by value, park it in a slot indexed by the SQE's
//! user_data, and hand it back only from `complete()`, after the kernel has
//! posted the completion. So the memory stays valid (and unaliased) for the
//! whole operation, which is the one safety condition of io_uring. On drop,
//! the ring waits for every operation still in flight before releasing the
//! buffers.
//!
//! Invariants: `in_flight <= in_flight_max = entries`, so the submission
//! queue (entries deep) and the completion queue (2 * entries) never
//! overflow; each slot is either free (its index in `free`) or holds exactly
//! one operation in flight.
//!
//! Short transfers: a read or write that moves fewer bytes than asked is
//! resubmitted for the remainder (the caller sees one completion for the whole
//! buffer). A read that hits end of file (0 bytes) completes with the count
//! transferred so far, which the caller compares with the length it asked for.
//!
//! Wake-ups: an eventfd is registered with the ring; it becomes readable when
//! a completion is posted, so a sleeping reactor can wait on it. `complete()`
//! resets it when it finds the completion queue empty.

use crate::buffer::DmaBuf;
use crate::sys::{eventfd, eventfd_drain};
use crate::EnvError;
use io_uring::{opcode, squeue, types, IoUring};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// open(2) flag for direct I/O, for crates that do not link libc.
pub const O_DIRECT: i32 = libc::O_DIRECT;
/// errno values callers compare completion results with.
pub const EIO: i32 = libc::EIO;
pub const EINVAL: i32 = libc::EINVAL;
pub const EOPNOTSUPP: i32 = libc::EOPNOTSUPP;
pub const ENOENT: i32 = libc::ENOENT;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotOp {
    Free,
    Read,
    Write,
    Other,
}

#[derive(Debug)]
struct Slot {
    op: SlotOp,
    user_data: u64,
    buf: Option<DmaBuf>,
    fd: RawFd,
    offset: u64,
    rw_flags: i32,
    done_bytes: usize,
}

/// See the module docs.
pub struct Uring {
    ring: IoUring,
    slots: Vec<Slot>,
    free: Vec<u32>,
    in_flight: usize,
    queued: usize,
    eventfd: OwnedFd,
    /// Completions were reaped since the eventfd was last drained, so it may
    /// be set: drain it on the next empty reap (one syscall per batch of
    /// completions, none while idle).
    eventfd_dirty: bool,
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring").field("in_flight", &self.in_flight).field("slots", &self.slots.len()).finish()
    }
}

impl Uring {
    /// A ring for at most `entries` operations in flight (1..=4096).
    pub fn new(entries: u32) -> Result<Uring, EnvError> {
        if entries == 0 || entries > 4096 {
            return Err(EnvError::InvalidArgument { what: "uring entries", value: entries as u64 });
        }
        let ring = IoUring::new(entries).map_err(|e| EnvError::Syscall {
            call: "io_uring_setup",
            errno: e.raw_os_error().unwrap_or(0),
        })?;
        let eventfd = eventfd()?;
        ring.submitter().register_eventfd(eventfd.as_raw_fd()).map_err(|e| EnvError::Syscall {
            call: "io_uring_register(eventfd)",
            errno: e.raw_os_error().unwrap_or(0),
        })?;
        let slots = (0..entries)
            .map(|_| Slot {
                op: SlotOp::Free,
                user_data: 0,
                buf: None,
                fd: -1,
                offset: 0,
                rw_flags: 0,
                done_bytes: 0,
            })
            .collect();
        let free = (0..entries).rev().collect();
        Ok(Uring { ring, slots, free, in_flight: 0, queued: 0, eventfd, eventfd_dirty: false })
    }

    /// Operations submitted or queued and not yet returned by `complete()`.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The most operations the ring accepts at once.
    pub fn in_flight_max(&self) -> usize {
        self.slots.len()
    }

    /// Readable when completions may be waiting.
    pub fn wake_fd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    /// Queues a read of `buf.len()` bytes at `offset` of `fd` into `buf`.
    /// The caller keeps `fd` open until the completion. On a full ring the
    /// buffer comes back with the error.
    pub fn read_at(
        &mut self,
        fd: RawFd,
        offset: u64,
        buf: DmaBuf,
        user_data: u64,
    ) -> Result<(), (EnvError, DmaBuf)> {
        self.queue_rw(SlotOp::Read, fd, offset, buf, user_data, 0)
    }

    /// Queues a write of `buf` at `offset`; `dsync` adds RWF_DSYNC (the write
    /// is durable when it completes: FUA).
    pub fn write_at(
        &mut self,
        fd: RawFd,
        offset: u64,
        buf: DmaBuf,
        user_data: u64,
        dsync: bool,
    ) -> Result<(), (EnvError, DmaBuf)> {
        let rw_flags = if dsync { libc::RWF_DSYNC } else { 0 };
        self.queue_rw(SlotOp::Write, fd, offset, buf, user_data, rw_flags)
    }

    /// Queues an fdatasync of `fd`.
    pub fn fdatasync(&mut self, fd: RawFd, user_data: u64) -> Result<(), EnvError> {
        let entry = opcode::Fsync::new(types::Fd(fd)).flags(types::FsyncFlags::DATASYNC).build();
        self.queue_other(entry, user_data)
    }

    /// Queues fallocate(FALLOC_FL_PUNCH_HOLE | KEEP_SIZE): deallocates the
    /// range, which then reads as zeroes.
    pub fn punch_hole(&mut self, fd: RawFd, offset: u64, len: u64, user_data: u64) -> Result<(), EnvError> {
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        let entry = opcode::Fallocate::new(types::Fd(fd), len).offset(offset).mode(mode).build();
        self.queue_other(entry, user_data)
    }

    /// Queues fallocate(FALLOC_FL_ZERO_RANGE | KEEP_SIZE). Some filesystems
    /// (tmpfs) answer -EOPNOTSUPP; callers then write zeroes.
    pub fn zero_range(&mut self, fd: RawFd, offset: u64, len: u64, user_data: u64) -> Result<(), EnvError> {
        let mode = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
        let entry = opcode::Fallocate::new(types::Fd(fd), len).offset(offset).mode(mode).build();
        self.queue_other(entry, user_data)
    }

    /// Hands every queued operation to the kernel in one system call (none if
    /// nothing is queued). Returns how many were submitted.
    pub fn submit(&mut self) -> Result<usize, EnvError> {
        if self.queued == 0 {
            return Ok(0);
        }
        loop {
            match self.ring.submit() {
                Ok(n) => {
                    self.queued = self.queued.saturating_sub(n);
                    return Ok(n);
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    return Err(EnvError::Syscall {
                        call: "io_uring_enter",
                        errno: e.raw_os_error().unwrap_or(0),
                    })
                }
            }
        }
    }

    /// Reaps finished operations without blocking, calling `on_complete(user_data,
    /// result, buf)` for each: `result` is the byte count for reads and writes
    /// (the whole buffer unless EOF), 0 for the others, or `-errno`. Returns
    /// how many completed.
    pub fn complete(&mut self, mut on_complete: impl FnMut(u64, i32, Option<DmaBuf>)) -> usize {
        let mut count = self.reap(&mut on_complete);
        if count > 0 {
            self.eventfd_dirty = true;
        } else if self.eventfd_dirty {
            self.eventfd_dirty = false;
            if eventfd_drain(&self.eventfd) {
                // Completions posted between the reap and the drain would leave
                // the eventfd clear with entries waiting; look once more.
                count = self.reap(&mut on_complete);
                self.eventfd_dirty = count > 0;
            }
        }
        if self.queued > 0 {
            // Resubmitted remainders of short transfers. An error here shows
            // up again on the caller's next submit().
            let _ = self.submit();
        }
        count
    }

    fn reap(&mut self, on_complete: &mut impl FnMut(u64, i32, Option<DmaBuf>)) -> usize {
        let mut count = 0;
        loop {
            let Some(cqe) = self.ring.completion().next() else {
                return count;
            };
            let index = cqe.user_data() as usize;
            let result = cqe.result();
            assert!(
                index < self.slots.len() && self.slots[index].op != SlotOp::Free,
                "completion for a free slot"
            );
            let slot = &mut self.slots[index];
            let mut outcome = result;
            if matches!(slot.op, SlotOp::Read | SlotOp::Write) && result >= 0 {
                slot.done_bytes += result as usize;
                let len = slot.buf.as_ref().map_or(0, |b| b.len());
                let eof = result == 0;
                if slot.done_bytes < len && !eof {
                    // SAFETY: the remainder lies inside the buffer parked in this
                    // slot, which stays there until the final completion.
                    let queued = unsafe { self.push_slot(index) };
                    assert!(queued, "a slot's resubmission always fits in the SQ");
                    continue;
                }
                outcome = slot.done_bytes as i32;
            }
            let slot = &mut self.slots[index];
            slot.op = SlotOp::Free;
            let buf = slot.buf.take();
            let user_data = slot.user_data;
            self.free.push(index as u32);
            self.in_flight -= 1;
            count += 1;
            on_complete(user_data, outcome, buf);
        }
    }

    fn queue_rw(
        &mut self,
        op: SlotOp,
        fd: RawFd,
        offset: u64,
        buf: DmaBuf,
        user_data: u64,
        rw_flags: i32,
    ) -> Result<(), (EnvError, DmaBuf)> {
        let Some(index) = self.free.pop() else {
            return Err((EnvError::UringFull { in_flight_max: self.slots.len() }, buf));
        };
        let slot = &mut self.slots[index as usize];
        *slot = Slot { op, user_data, buf: Some(buf), fd, offset, rw_flags, done_bytes: 0 };
        // SAFETY: the buffer now lives in the slot and stays there until the
        // completion for this slot is reaped.
        let queued = unsafe { self.push_slot(index as usize) };
        assert!(queued, "in_flight < entries, so the SQ has room");
        self.in_flight += 1;
        Ok(())
    }

    fn queue_other(&mut self, entry: squeue::Entry, user_data: u64) -> Result<(), EnvError> {
        let Some(index) = self.free.pop() else {
            return Err(EnvError::UringFull { in_flight_max: self.slots.len() });
        };
        let slot = &mut self.slots[index as usize];
        *slot =
            Slot { op: SlotOp::Other, user_data, buf: None, fd: -1, offset: 0, rw_flags: 0, done_bytes: 0 };
        // SAFETY: fsync and fallocate reference no user memory.
        let queued = unsafe { self.push(entry.user_data(index as u64)) };
        assert!(queued, "in_flight < entries, so the SQ has room");
        self.in_flight += 1;
        Ok(())
    }

    /// Builds and queues the (remaining) transfer of a read/write slot.
    ///
    /// # Safety
    /// The slot's buffer must stay in the slot, untouched, until this
    /// operation's completion is reaped.
    unsafe fn push_slot(&mut self, index: usize) -> bool {
        let slot = &mut self.slots[index];
        let Some(buf) = slot.buf.as_mut() else {
            return false;
        };
        let done = slot.done_bytes;
        let len = (buf.len() - done) as u32;
        // SAFETY: done <= buf.len(), so the pointer stays inside the chunk.
        let ptr = unsafe { buf.chunk_ptr().add(done) };
        let offset = slot.offset + done as u64;
        let entry = match slot.op {
            SlotOp::Read => opcode::Read::new(types::Fd(slot.fd), ptr, len).offset(offset).build(),
            _ => opcode::Write::new(types::Fd(slot.fd), ptr, len)
                .offset(offset)
                .rw_flags(slot.rw_flags)
                .build(),
        };
        // SAFETY: forwarded from this function's contract.
        unsafe { self.push(entry.user_data(index as u64)) }
    }

    /// Queues one SQE.
    ///
    /// # Safety
    /// Any memory the entry references must stay valid until its completion
    /// is reaped (io-uring's `SubmissionQueue::push` contract).
    unsafe fn push(&mut self, entry: squeue::Entry) -> bool {
        // SAFETY: forwarded from this function's contract.
        let pushed = unsafe { self.ring.submission().push(&entry).is_ok() };
        if pushed {
            self.queued += 1;
        }
        pushed
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        // The kernel may still write into parked buffers: wait for every
        // operation before the slots (and their buffers) are freed.
        while self.in_flight > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(_) => {
                    // Cannot wait: leak the buffers rather than free memory the
                    // kernel may still write.
                    for slot in &mut self.slots {
                        if let Some(buf) = slot.buf.take() {
                            std::mem::forget(buf);
                        }
                    }
                    return;
                }
            }
            self.queued = 0;
            self.reap(&mut |_, _, _| {});
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BufferPool;
    use std::fs::OpenOptions;
    use std::os::unix::fs::FileExt;

    fn temp_file(name: &str) -> (std::path::PathBuf, std::fs::File) {
        let path = std::env::temp_dir().join(format!("tandem-uring-{}-{name}", std::process::id()));
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).expect("open");
        (path, file)
    }

    /// Reaps until `want` completions arrived, sleeping when none are ready.
    fn wait(ring: &mut Uring, want: usize) -> Vec<(u64, i32, Option<DmaBuf>)> {
        let mut got = Vec::new();
        for _ in 0..10_000 {
            ring.complete(|ud, res, buf| got.push((ud, res, buf)));
            if got.len() >= want {
                return got;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("only {} of {want} completions", got.len());
    }

    #[test]
    fn write_read_back_fdatasync() {
        let (path, file) = temp_file("rw");
        let fd = file.as_raw_fd();
        let pool = BufferPool::new("uring", 8192, 4).expect("pool");
        let mut ring = Uring::new(8).expect("ring");
        let mut buf = pool.get().expect("buf");
        buf.fill(0xC3);
        ring.write_at(fd, 4096, buf, 7, true).map_err(|(e, _)| e).expect("write");
        assert_eq!(ring.submit().expect("submit"), 1);
        let done = wait(&mut ring, 1);
        assert_eq!((done[0].0, done[0].1), (7, 8192));
        assert!(done[0].2.is_some());
        drop(done);
        ring.fdatasync(fd, 8).expect("fsync");
        ring.submit().expect("submit");
        assert_eq!(wait(&mut ring, 1)[0].1, 0);
        let mut on_disk = vec![0u8; 8192];
        file.read_exact_at(&mut on_disk, 4096).expect("pread");
        assert!(on_disk.iter().all(|&b| b == 0xC3));
        let buf = pool.get().expect("buf");
        ring.read_at(fd, 4096, buf, 9).map_err(|(e, _)| e).expect("read");
        ring.submit().expect("submit");
        let done = wait(&mut ring, 1);
        assert_eq!(done[0].1, 8192);
        assert!(done[0].2.as_ref().expect("buf").iter().all(|&b| b == 0xC3));
        // Read past EOF reports the bytes that existed.
        let buf = pool.get().expect("buf");
        drop(done);
        ring.read_at(fd, 8192, buf, 10).map_err(|(e, _)| e).expect("read");
        ring.submit().expect("submit");
        assert_eq!(wait(&mut ring, 1)[0].1, 4096);
        assert_eq!(ring.in_flight(), 0);
        std::fs::remove_file(path).expect("cleanup");
    }

    #[test]
    fn many_in_flight_and_full_ring() {
        let (path, file) = temp_file("many");
        let fd = file.as_raw_fd();
        let pool = BufferPool::new("uring-many", 4096, 40).expect("pool");
        let mut ring = Uring::new(32).expect("ring");
        for i in 0..32u64 {
            let mut buf = pool.get().expect("buf");
            buf.fill(i as u8);
            ring.write_at(fd, i * 4096, buf, i, false).map_err(|(e, _)| e).expect("write");
        }
        let buf = pool.get().expect("buf");
        let (err, _buf) = ring.write_at(fd, 0, buf, 99, false).expect_err("full");
        assert!(matches!(err, EnvError::UringFull { in_flight_max: 32 }));
        assert_eq!(ring.in_flight(), 32);
        assert_eq!(ring.submit().expect("submit"), 32);
        let mut done = wait(&mut ring, 32);
        done.sort_by_key(|d| d.0);
        for (i, (ud, res, _)) in done.iter().enumerate() {
            assert_eq!((*ud, *res), (i as u64, 4096));
        }
        drop(done);
        for i in 0..32u64 {
            let mut block = [0u8; 4096];
            file.read_exact_at(&mut block, i * 4096).expect("pread");
            assert!(block.iter().all(|&b| b == i as u8));
        }
        std::fs::remove_file(path).expect("cleanup");
    }

    #[test]
    fn errors_report_negative_errno_and_return_buffer() {
        let pool = BufferPool::new("uring-err", 4096, 1).expect("pool");
        let mut ring = Uring::new(4).expect("ring");
        let buf = pool.get().expect("buf");
        ring.read_at(-1, 0, buf, 1).map_err(|(e, _)| e).expect("queue");
        ring.submit().expect("submit");
        let done = wait(&mut ring, 1);
        assert_eq!(done[0].1, -libc::EBADF);
        assert!(done[0].2.is_some());
    }

    #[test]
    fn punch_hole_reads_zero_and_drop_waits() {
        let (path, file) = temp_file("punch");
        file.write_all_at(&[0xEE; 16384], 0).expect("pwrite");
        let fd = file.as_raw_fd();
        let mut ring = Uring::new(4).expect("ring");
        ring.punch_hole(fd, 4096, 4096, 1).expect("queue");
        ring.submit().expect("submit");
        let res = wait(&mut ring, 1)[0].1;
        assert_eq!(res, 0, "punch hole on {}", path.display());
        let mut block = [1u8; 4096];
        file.read_exact_at(&mut block, 4096).expect("pread");
        assert!(block.iter().all(|&b| b == 0));
        // Dropping with an operation in flight waits for it.
        let pool = BufferPool::new("uring-drop", 4096, 1).expect("pool");
        ring.read_at(fd, 0, pool.get().expect("buf"), 2).map_err(|(e, _)| e).expect("read");
        ring.submit().expect("submit");
        drop(ring);
        assert_eq!(pool.available(), 1);
        std::fs::remove_file(path).expect("cleanup");
    }
}
