//! The queue interface the workload engine and the crash checker drive.
//!
//! Both engines keep commands in flight on an I/O queue and consume
//! completions; they need nothing else from a transport. Writing them against
//! this small trait lets the same code run over the NVMe/TCP host library
//! (`tandem_nvmf::host::IoQueue`, see `host.rs`) and over [`MemQueue`], an
//! in-memory fake used by the unit tests, which can also reorder completions
//! and fail a queue mid-run the way a dying connection does.
//!
//! Contract: `submit` either queues the command (it will complete exactly once
//! through `poll`, unless the queue fails) or returns an error and the command
//! was not queued (`QueueFull`) or the queue is dead (`Failed`). After a
//! `Failed` error no command in flight on that queue will complete.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem_nvmf::spec::status::NvmeStatus;

use crate::prng::Rng;

/// One I/O command. `block_count` is a count (1-based), not NVMe's 0-based NLB.
#[derive(Clone, Copy, Debug)]
pub enum IoOp<'a> {
    Read { nsid: u32, slba: u64, block_count: u32 },
    Write { nsid: u32, slba: u64, data: &'a [u8], fua: bool },
    Flush { nsid: u32 },
}

/// A completed command: its tag, its status and, for a read, its data.
#[derive(Debug)]
pub struct Completion<'a> {
    pub tag: u64,
    pub status: NvmeStatus,
    pub data: &'a [u8],
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// Every slot of the queue is in use; the command was not queued.
    #[error("queue full")]
    QueueFull,
    /// The queue (its connection) is gone; nothing in flight will complete.
    #[error("queue failed: {reason}")]
    Failed { reason: String },
}

/// An I/O queue that keeps commands in flight.
pub trait QueueDriver {
    fn submit(&mut self, op: IoOp<'_>, tag: u64) -> Result<(), DriverError>;
    /// Hands every available completion to `on_completion` and returns how
    /// many; when none is ready, waits up to `timeout` (None: does not wait).
    fn poll(
        &mut self,
        timeout: Option<Duration>,
        on_completion: &mut dyn FnMut(Completion<'_>),
    ) -> Result<usize, DriverError>;
    /// The most commands this queue holds in flight.
    fn queue_depth(&self) -> usize;
}

impl<D: QueueDriver + ?Sized> QueueDriver for &mut D {
    fn submit(&mut self, op: IoOp<'_>, tag: u64) -> Result<(), DriverError> {
        (**self).submit(op, tag)
    }
    fn poll(
        &mut self,
        timeout: Option<Duration>,
        on_completion: &mut dyn FnMut(Completion<'_>),
    ) -> Result<usize, DriverError> {
        (**self).poll(timeout, on_completion)
    }
    fn queue_depth(&self) -> usize {
        (**self).queue_depth()
    }
}

/// A namespace in memory, shared by any number of [`MemQueue`]s.
#[derive(Clone, Debug)]
pub struct MemDisk {
    inner: Arc<Mutex<Vec<u8>>>,
    block_size: usize,
}

impl MemDisk {
    pub fn new(block_size: usize, block_count: u64) -> Self {
        MemDisk { inner: Arc::new(Mutex::new(vec![0; block_size * block_count as usize])), block_size }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn block_count(&self) -> u64 {
        (self.lock().len() / self.block_size) as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        // A test thread that panicked while holding the lock leaves plain
        // bytes behind; they are still the disk's content.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A copy of one block (for tests that inspect or tamper with the disk).
    pub fn read_block(&self, lba: u64) -> Vec<u8> {
        let start = lba as usize * self.block_size;
        self.lock()[start..start + self.block_size].to_vec()
    }

    pub fn write_block(&self, lba: u64, data: &[u8]) {
        let start = lba as usize * self.block_size;
        self.lock()[start..start + self.block_size].copy_from_slice(data);
    }

    /// A queue on this disk with `queue_depth` slots, completing in order.
    pub fn queue(&self, queue_depth: usize) -> MemQueue {
        MemQueue {
            disk: self.clone(),
            queue_depth,
            pending: VecDeque::with_capacity(queue_depth),
            scratch: Vec::new(),
            reorder: None,
            fail_after_submits: None,
            submits: 0,
            failed: false,
        }
    }
}

#[derive(Debug)]
enum PendingOp {
    Read { slba: u64, block_count: u32 },
    Write { slba: u64, data: Vec<u8> },
    Flush,
}

/// An in-memory queue over a [`MemDisk`]. Writes reach the disk when they
/// complete (in `poll`), so writes in flight when the queue fails may or may
/// not have landed, as on a real target.
#[derive(Debug)]
pub struct MemQueue {
    disk: MemDisk,
    queue_depth: usize,
    pending: VecDeque<(u64, PendingOp)>,
    scratch: Vec<u8>,
    reorder: Option<Rng>,
    fail_after_submits: Option<u64>,
    submits: u64,
    failed: bool,
}

impl MemQueue {
    /// Completes commands in a seeded random order instead of FIFO.
    pub fn with_reorder(mut self, seed: u64) -> Self {
        self.reorder = Some(Rng::new(seed));
        self
    }

    /// Makes the queue fail (like a dropped connection) on the submit after
    /// `count` successful ones; then each write in flight lands or not, by a
    /// coin toss from the reorder generator (or lands if there is none).
    pub fn fail_after(mut self, count: u64) -> Self {
        self.fail_after_submits = Some(count);
        self
    }

    fn fail(&mut self) -> DriverError {
        if !self.failed {
            self.failed = true;
            while let Some((_, op)) = self.pending.pop_front() {
                let lands = self.reorder.as_mut().is_none_or(|rng| rng.percent(50));
                if let (PendingOp::Write { slba, data }, true) = (op, lands) {
                    self.apply_write(slba, &data);
                }
            }
        }
        DriverError::Failed { reason: "connection lost (injected)".into() }
    }

    fn in_range(&self, slba: u64, blocks: u64) -> bool {
        slba.checked_add(blocks).is_some_and(|end| end <= self.disk.block_count())
    }

    fn apply_write(&self, slba: u64, data: &[u8]) {
        let start = slba as usize * self.disk.block_size;
        self.disk.lock()[start..start + data.len()].copy_from_slice(data);
    }
}

impl QueueDriver for MemQueue {
    fn submit(&mut self, op: IoOp<'_>, tag: u64) -> Result<(), DriverError> {
        if self.failed {
            return Err(self.fail());
        }
        if self.fail_after_submits.is_some_and(|limit| self.submits >= limit) {
            return Err(self.fail());
        }
        if self.pending.len() >= self.queue_depth {
            return Err(DriverError::QueueFull);
        }
        self.submits += 1;
        let pending = match op {
            IoOp::Read { slba, block_count, .. } => PendingOp::Read { slba, block_count },
            IoOp::Write { slba, data, .. } => PendingOp::Write { slba, data: data.to_vec() },
            IoOp::Flush { .. } => PendingOp::Flush,
        };
        self.pending.push_back((tag, pending));
        Ok(())
    }

    fn poll(
        &mut self,
        _timeout: Option<Duration>,
        on_completion: &mut dyn FnMut(Completion<'_>),
    ) -> Result<usize, DriverError> {
        if self.failed {
            return Err(self.fail());
        }
        let mut count = 0;
        while !self.pending.is_empty() {
            let index = match self.reorder.as_mut() {
                Some(rng) => rng.below(self.pending.len() as u64) as usize,
                None => 0,
            };
            let Some((tag, op)) = self.pending.remove(index) else { break };
            let block_size = self.disk.block_size;
            let mut status = NvmeStatus::SUCCESS;
            let mut data_len = 0;
            match op {
                PendingOp::Read { slba, block_count } => {
                    if self.in_range(slba, u64::from(block_count)) {
                        let start = slba as usize * block_size;
                        data_len = block_count as usize * block_size;
                        self.scratch.clear();
                        self.scratch.extend_from_slice(&self.disk.lock()[start..start + data_len]);
                    } else {
                        status = NvmeStatus::LBA_OUT_OF_RANGE;
                    }
                }
                PendingOp::Write { slba, data } => {
                    if data.len() % block_size == 0 && self.in_range(slba, (data.len() / block_size) as u64) {
                        self.apply_write(slba, &data);
                    } else {
                        status = NvmeStatus::LBA_OUT_OF_RANGE;
                    }
                }
                PendingOp::Flush => {}
            }
            on_completion(Completion { tag, status, data: &self.scratch[..data_len] });
            count += 1;
        }
        Ok(count)
    }

    fn queue_depth(&self) -> usize {
        self.queue_depth
    }
}

/// Wraps a queue and answers every `period`-th submit with `QueueFull`, as a
/// host does while a finished command's slot still drains: engines must retry
/// rather than end or fail.
#[derive(Debug)]
pub struct Refusing<D> {
    pub inner: D,
    period: u64,
    submits: u64,
}

impl<D> Refusing<D> {
    pub fn new(inner: D, period: u64) -> Self {
        Refusing { inner, period: period.max(1), submits: 0 }
    }
}

impl<D: QueueDriver> QueueDriver for Refusing<D> {
    fn submit(&mut self, op: IoOp<'_>, tag: u64) -> Result<(), DriverError> {
        self.submits += 1;
        if self.submits.is_multiple_of(self.period) {
            return Err(DriverError::QueueFull);
        }
        self.inner.submit(op, tag)
    }

    fn poll(
        &mut self,
        timeout: Option<Duration>,
        on_completion: &mut dyn FnMut(Completion<'_>),
    ) -> Result<usize, DriverError> {
        self.inner.poll(timeout, on_completion)
    }

    fn queue_depth(&self) -> usize {
        self.inner.queue_depth()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_queue_writes_then_reads_back() {
        let disk = MemDisk::new(512, 16);
        let mut queue = disk.queue(4);
        let data = vec![0xabu8; 1024];
        queue.submit(IoOp::Write { nsid: 1, slba: 2, data: &data, fua: false }, 1).unwrap();
        queue.submit(IoOp::Read { nsid: 1, slba: 2, block_count: 2 }, 2).unwrap();
        queue.submit(IoOp::Read { nsid: 1, slba: 15, block_count: 2 }, 3).unwrap();
        let mut seen = Vec::new();
        queue
            .poll(None, &mut |c| {
                seen.push((c.tag, c.status, c.data.iter().all(|&b| b == 0xab), c.data.len()))
            })
            .unwrap();
        assert_eq!(
            seen,
            vec![
                (1, NvmeStatus::SUCCESS, true, 0),
                (2, NvmeStatus::SUCCESS, true, 1024),
                (3, NvmeStatus::LBA_OUT_OF_RANGE, true, 0)
            ]
        );
    }

    #[test]
    fn mem_queue_reports_full_and_failure() {
        let disk = MemDisk::new(512, 4);
        let mut queue = disk.queue(1).fail_after(2);
        queue.submit(IoOp::Flush { nsid: 1 }, 1).unwrap();
        assert!(matches!(queue.submit(IoOp::Flush { nsid: 1 }, 2), Err(DriverError::QueueFull)));
        queue.poll(None, &mut |_| {}).unwrap();
        queue.submit(IoOp::Flush { nsid: 1 }, 3).unwrap();
        assert!(matches!(queue.submit(IoOp::Flush { nsid: 1 }, 4), Err(DriverError::Failed { .. })));
        assert!(matches!(queue.poll(None, &mut |_| {}), Err(DriverError::Failed { .. })));
    }
}
