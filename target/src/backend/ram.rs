//! RamBackend: a namespace held in memory, allocated once at start-up.
//!
//! Sharing: clones share the same storage, so each reactor can own its own
//! clone (its own completion queue) with no lock on the I/O path. The storage
//! is a slice of `AtomicU64` copied word by word with relaxed ordering, so two
//! reactors touching the same blocks at once is not a data race in the Rust
//! sense; as on a real disk, overlapping concurrent writes may interleave at
//! 8-byte granularity, and ordering between them is the host's business.
//!
//! Every operation is carried out in `submit` and completes on the next
//! `poll_completions`; there is no device to wake, so `wake_fd` is None and a
//! reactor must poll completions before it sleeps.

use super::{validate, Backend, BackendCompletion, BackendError, BackendOp};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const WORD_BYTES: usize = 8;

/// Default completion queue depth for [`RamBackend::new`].
pub const RAM_QUEUE_DEPTH_MAX: usize = 1024;

/// See the module docs.
#[derive(Debug)]
pub struct RamBackend {
    words: Arc<[AtomicU64]>,
    block_size: u32,
    num_blocks: u64,
    queue_depth_max: usize,
    done: VecDeque<BackendCompletion>,
}

impl Clone for RamBackend {
    /// A new handle on the same storage with its own, empty completion queue.
    fn clone(&self) -> Self {
        RamBackend {
            words: Arc::clone(&self.words),
            block_size: self.block_size,
            num_blocks: self.num_blocks,
            queue_depth_max: self.queue_depth_max,
            done: VecDeque::with_capacity(self.queue_depth_max),
        }
    }
}

impl RamBackend {
    /// Allocates `block_size * num_blocks` zeroed bytes. `block_size` must be
    /// a power of two of at least 512.
    pub fn new(block_size: u32, num_blocks: u64) -> Result<RamBackend, BackendError> {
        RamBackend::with_queue_depth(block_size, num_blocks, RAM_QUEUE_DEPTH_MAX)
    }

    /// As [`RamBackend::new`] with an explicit `queue_depth_max`.
    pub fn with_queue_depth(
        block_size: u32,
        num_blocks: u64,
        queue_depth_max: usize,
    ) -> Result<RamBackend, BackendError> {
        let bytes = (block_size as u64).checked_mul(num_blocks);
        let valid = block_size >= 512
            && block_size.is_power_of_two()
            && num_blocks > 0
            && queue_depth_max > 0
            && bytes.is_some_and(|b| b <= isize::MAX as u64);
        if !valid {
            return Err(BackendError::InvalidGeometry { block_size, num_blocks });
        }
        let word_count = bytes.unwrap_or(0) as usize / WORD_BYTES;
        let words: Arc<[AtomicU64]> = (0..word_count).map(|_| AtomicU64::new(0)).collect();
        tracing::info!(block_size, num_blocks, "ram backend allocated");
        Ok(RamBackend {
            words,
            block_size,
            num_blocks,
            queue_depth_max,
            done: VecDeque::with_capacity(queue_depth_max),
        })
    }

    fn word_range(&self, slba: u64, nlb: u32) -> std::ops::Range<usize> {
        let words_per_block = self.block_size as usize / WORD_BYTES;
        let start = slba as usize * words_per_block;
        start..start + nlb as usize * words_per_block
    }

    fn execute(&self, op: &mut BackendOp) {
        match op {
            BackendOp::Read { slba, nlb, buf } => {
                buf.set_len(*nlb as usize * self.block_size as usize);
                let range = self.word_range(*slba, *nlb);
                for (word, bytes) in self.words[range].iter().zip(buf.chunks_exact_mut(WORD_BYTES)) {
                    bytes.copy_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
                }
            }
            BackendOp::Write { slba, nlb, buf, .. } => {
                buf.set_len(*nlb as usize * self.block_size as usize);
                let range = self.word_range(*slba, *nlb);
                for (word, bytes) in self.words[range].iter().zip(buf.chunks_exact(WORD_BYTES)) {
                    let mut value = [0u8; WORD_BYTES];
                    value.copy_from_slice(bytes);
                    word.store(u64::from_ne_bytes(value), Ordering::Relaxed);
                }
            }
            BackendOp::WriteZeroes { slba, nlb } | BackendOp::Deallocate { slba, nlb } => {
                // Deallocated blocks read back as zeroes (DLFEAT reports this).
                let range = self.word_range(*slba, *nlb);
                for word in &self.words[range] {
                    word.store(0, Ordering::Relaxed);
                }
            }
            BackendOp::Flush => {}
        }
    }
}

impl Backend for RamBackend {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.num_blocks
    }

    fn submit(&mut self, tag: u64, mut op: BackendOp) -> Result<(), (BackendError, BackendOp)> {
        if self.done.len() >= self.queue_depth_max {
            return Err((BackendError::QueueFull { queue_depth_max: self.queue_depth_max }, op));
        }
        if let Err(e) = validate(&op, self.block_size, self.num_blocks) {
            return Err((e, op));
        }
        self.execute(&mut op);
        // Capacity was reserved for queue_depth_max entries: no allocation.
        self.done.push_back(BackendCompletion { tag, result: Ok(()), buf: op.into_buf() });
        Ok(())
    }

    fn kick(&mut self) {}

    fn poll_completions(&mut self, out: &mut Vec<BackendCompletion>) -> usize {
        let count = self.done.len();
        out.extend(self.done.drain(..));
        count
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }

    fn queue_depth_max(&self) -> usize {
        self.queue_depth_max
    }

    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }

    fn writes_are_durable(&self) -> bool {
        // No volatile cache between a completed write and the storage: Flush
        // adds nothing. (The storage itself is volatile, which is the point.)
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests_common::*;
    use super::*;

    #[test]
    fn every_op_round_trips() {
        let mut backend = RamBackend::with_queue_depth(512, 64, 8).expect("ram");
        exercise_every_op(&mut backend);
    }

    #[test]
    fn out_of_range_and_queue_full() {
        let mut backend = RamBackend::with_queue_depth(512, 64, 2).expect("ram");
        check_out_of_range(&mut backend);
        let pool = pool();
        for tag in 0..2 {
            let op = BackendOp::Read { slba: 0, nlb: 1, buf: pool.get().expect("buf") };
            backend.submit(tag, op).expect("submit");
        }
        let op = BackendOp::Read { slba: 0, nlb: 1, buf: pool.get().expect("buf") };
        let (err, _op) = backend.submit(9, op).expect_err("queue full");
        assert_eq!(err, BackendError::QueueFull { queue_depth_max: 2 });
        let mut out = Vec::new();
        assert_eq!(backend.poll_completions(&mut out), 2);
        assert_eq!(backend.in_flight(), 0);
    }

    #[test]
    fn clones_share_storage_across_threads() {
        let backend = RamBackend::new(4096, 16).expect("ram");
        let mut writer = backend.clone();
        let pool = pool();
        let mut buf = pool.get().expect("buf");
        buf.fill(0x5A);
        std::thread::spawn(move || {
            writer.submit(1, BackendOp::Write { slba: 3, nlb: 1, buf, fua: false }).expect("write");
            let mut out = Vec::new();
            assert_eq!(writer.poll_completions(&mut out), 1);
        })
        .join()
        .expect("writer thread");
        let mut reader = backend;
        let data = read_blocks(&mut reader, &pool, 3, 1);
        assert!(data.iter().all(|&b| b == 0x5A));
    }

    #[test]
    fn invalid_geometry_is_refused() {
        assert!(RamBackend::new(100, 10).is_err());
        assert!(RamBackend::new(512, 0).is_err());
    }
}
