//! FaultBackend: wraps another backend and fails chosen operations with EIO,
//! so tests can break the medium path of a running node. Faults are switched
//! at run time through a [`FaultControl`], a cheap clonable handle of atomics
//! that a test thread (or an RPC) holds while a reactor owns the backend.
//!
//! A failed operation never reaches the inner backend: it completes with
//! `BackendError::Io { errno: EIO, .. }` on the next poll, with its buffer.

use super::{Backend, BackendCompletion, BackendError, BackendOp};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

const DISABLED: u64 = u64::MAX;

pub use tandem_env::uring::EIO;

#[derive(Debug)]
struct FaultState {
    /// Writes (and write zeroes) touching [fail_lba_start, fail_lba_end) fail.
    fail_lba_start: AtomicU64,
    fail_lba_end: AtomicU64,
    /// Once this many writes have been accepted, every further write fails.
    fail_writes_after: AtomicU64,
    writes_accepted: AtomicU64,
    fail_flush: AtomicBool,
    fail_reads: AtomicBool,
    injected: AtomicU64,
}

/// Switches faults on and off for one [`FaultBackend`]; clones share state.
#[derive(Clone, Debug)]
pub struct FaultControl {
    state: Arc<FaultState>,
}

impl FaultControl {
    /// Fails every write or write-zeroes that touches [slba, slba+nlb).
    pub fn fail_writes_in(&self, slba: u64, nlb: u64) {
        self.state.fail_lba_start.store(slba, Ordering::Relaxed);
        self.state.fail_lba_end.store(slba.saturating_add(nlb), Ordering::Relaxed);
    }

    /// Lets `count` more writes through, then fails every write.
    pub fn fail_writes_after(&self, count: u64) {
        let seen = self.state.writes_accepted.load(Ordering::Relaxed);
        self.state.fail_writes_after.store(seen.saturating_add(count), Ordering::Relaxed);
    }

    pub fn fail_flush(&self, on: bool) {
        self.state.fail_flush.store(on, Ordering::Relaxed);
    }

    pub fn fail_reads(&self, on: bool) {
        self.state.fail_reads.store(on, Ordering::Relaxed);
    }

    /// Turns every fault off (the medium path "comes back").
    pub fn heal(&self) {
        self.state.fail_lba_start.store(DISABLED, Ordering::Relaxed);
        self.state.fail_lba_end.store(DISABLED, Ordering::Relaxed);
        self.state.fail_writes_after.store(DISABLED, Ordering::Relaxed);
        self.state.fail_flush.store(false, Ordering::Relaxed);
        self.state.fail_reads.store(false, Ordering::Relaxed);
    }

    /// Whether a write of [slba, slba+nlb) would fail now; counts it as
    /// injected if so. For writes that reach the medium by another path (the
    /// partner writing an owner's failed records), so that a test's faults
    /// apply to them too.
    pub fn write_would_fail(&self, slba: u64, nlb: u32) -> bool {
        let probe = BackendOp::WriteZeroes { slba, nlb };
        let fail = self.should_fail(&probe);
        if fail {
            self.state.injected.fetch_add(1, Ordering::Relaxed);
        }
        fail
    }

    /// How many operations were failed so far.
    pub fn injected(&self) -> u64 {
        self.state.injected.load(Ordering::Relaxed)
    }

    fn should_fail(&self, op: &BackendOp) -> bool {
        let s = &self.state;
        match op {
            BackendOp::Write { slba, nlb, .. } | BackendOp::WriteZeroes { slba, nlb } => {
                let start = s.fail_lba_start.load(Ordering::Relaxed);
                let end = s.fail_lba_end.load(Ordering::Relaxed);
                let touches = start != DISABLED && *slba < end && slba.saturating_add(*nlb as u64) > start;
                let count_exceeded =
                    s.writes_accepted.load(Ordering::Relaxed) >= s.fail_writes_after.load(Ordering::Relaxed);
                touches || count_exceeded
            }
            BackendOp::Flush => s.fail_flush.load(Ordering::Relaxed),
            BackendOp::Read { .. } => s.fail_reads.load(Ordering::Relaxed),
            BackendOp::Deallocate { .. } => false,
        }
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct FaultBackend<B: Backend> {
    inner: B,
    control: FaultControl,
    failed: VecDeque<BackendCompletion>,
}

impl<B: Backend> FaultBackend<B> {
    /// Wraps `inner` with every fault off.
    pub fn new(inner: B) -> FaultBackend<B> {
        let control = FaultControl {
            state: Arc::new(FaultState {
                fail_lba_start: AtomicU64::new(DISABLED),
                fail_lba_end: AtomicU64::new(DISABLED),
                fail_writes_after: AtomicU64::new(DISABLED),
                writes_accepted: AtomicU64::new(0),
                fail_flush: AtomicBool::new(false),
                fail_reads: AtomicBool::new(false),
                injected: AtomicU64::new(0),
            }),
        };
        let failed = VecDeque::with_capacity(inner.queue_depth_max());
        FaultBackend { inner, control, failed }
    }

    /// The handle that switches faults.
    pub fn control(&self) -> FaultControl {
        self.control.clone()
    }

    pub fn inner(&self) -> &B {
        &self.inner
    }
}

impl<B: Backend> Backend for FaultBackend<B> {
    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }

    fn num_blocks(&self) -> u64 {
        self.inner.num_blocks()
    }

    fn submit(&mut self, tag: u64, op: BackendOp) -> Result<(), (BackendError, BackendOp)> {
        if self.in_flight() >= self.queue_depth_max() {
            return Err((BackendError::QueueFull { queue_depth_max: self.queue_depth_max() }, op));
        }
        if let Err(e) = super::validate(&op, self.block_size(), self.num_blocks()) {
            return Err((e, op));
        }
        if self.control.should_fail(&op) {
            self.control.state.injected.fetch_add(1, Ordering::Relaxed);
            let slba = op.range().map_or(0, |(slba, _)| slba);
            let error = BackendError::Io { errno: EIO, op: op.name(), slba };
            self.failed.push_back(BackendCompletion { tag, result: Err(error), buf: op.into_buf() });
            return Ok(());
        }
        let is_write = matches!(op, BackendOp::Write { .. } | BackendOp::WriteZeroes { .. });
        self.inner.submit(tag, op)?;
        if is_write {
            self.control.state.writes_accepted.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn kick(&mut self) {
        self.inner.kick();
    }

    fn poll_completions(&mut self, out: &mut Vec<BackendCompletion>) -> usize {
        let failed = self.failed.len();
        out.extend(self.failed.drain(..));
        failed + self.inner.poll_completions(out)
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight() + self.failed.len()
    }

    fn queue_depth_max(&self) -> usize {
        self.inner.queue_depth_max()
    }

    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        self.inner.wake_fd()
    }

    fn writes_are_durable(&self) -> bool {
        self.inner.writes_are_durable()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests_common::*;
    use super::super::RamBackend;
    use super::*;

    fn eio(done: &BackendCompletion) -> bool {
        matches!(done.result, Err(BackendError::Io { errno: 5, .. }))
    }

    #[test]
    fn passes_through_when_healthy() {
        let mut backend = FaultBackend::new(RamBackend::with_queue_depth(512, 64, 8).expect("ram"));
        exercise_every_op(&mut backend);
        check_out_of_range(&mut backend);
        assert_eq!(backend.control().injected(), 0);
    }

    #[test]
    fn writes_touching_chosen_lbas_fail() {
        let mut backend = FaultBackend::new(RamBackend::new(512, 64).expect("ram"));
        let control = backend.control();
        let pool = pool();
        write_blocks(&mut backend, &pool, 10, 1, 0x77, false);
        control.fail_writes_in(10, 2);
        for (slba, nlb, fails) in [(8, 2, false), (9, 2, true), (11, 1, true), (12, 4, false)] {
            let mut buf = pool.get().expect("buf");
            buf.set_len(nlb as usize * 512);
            let done = run(&mut backend, 1, BackendOp::Write { slba, nlb, buf, fua: false });
            assert_eq!(eio(&done), fails, "write {slba}+{nlb}");
            assert!(done.buf.is_some());
        }
        // The failed write did not reach the medium.
        assert!(read_blocks(&mut backend, &pool, 10, 1).iter().all(|&b| b == 0x77));
        let done = run(&mut backend, 2, BackendOp::WriteZeroes { slba: 10, nlb: 1 });
        assert!(eio(&done));
        control.heal();
        write_blocks(&mut backend, &pool, 10, 1, 0x78, false);
        assert_eq!(control.injected(), 3);
    }

    #[test]
    fn writes_fail_after_count_and_flush_and_reads_switch() {
        let mut backend = FaultBackend::new(RamBackend::new(512, 64).expect("ram"));
        let control = backend.control();
        let pool = pool();
        control.fail_writes_after(2);
        write_blocks(&mut backend, &pool, 0, 1, 1, false);
        write_blocks(&mut backend, &pool, 1, 1, 1, false);
        let mut buf = pool.get().expect("buf");
        buf.set_len(512);
        assert!(eio(&run(&mut backend, 3, BackendOp::Write { slba: 2, nlb: 1, buf, fua: false })));
        assert_eq!(run(&mut backend, 4, BackendOp::Flush).result, Ok(()));
        control.fail_flush(true);
        assert!(eio(&run(&mut backend, 5, BackendOp::Flush)));
        control.fail_reads(true);
        let buf = pool.get().expect("buf");
        assert!(eio(&run(&mut backend, 6, BackendOp::Read { slba: 0, nlb: 1, buf })));
        control.heal();
        assert_eq!(run(&mut backend, 7, BackendOp::Flush).result, Ok(()));
        write_blocks(&mut backend, &pool, 2, 1, 1, false);
    }
}
