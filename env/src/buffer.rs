//! DMA buffer pools: fixed-size, 4096-aligned chunks carved at start-up from
//! one mapping (hugepages when the system has enough free, else normal pages
//! with a transparent-hugepage hint), handed out lock-free from an
//! `ArrayQueue` free list.
//!
//! Invariants: every chunk index is either in the free list or owned by
//! exactly one live [`DmaBuf`], never both, so a `DmaBuf` has exclusive access
//! to its chunk; the mapping outlives every `DmaBuf` because each holds an
//! `Arc` to the pool. `get()` and drop allocate nothing on the heap.

use crate::sys::{hugepages_free_bytes, Mapping};
use crate::EnvError;
use crossbeam_queue::ArrayQueue;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

/// Alignment of every chunk; O_DIRECT needs the logical block size, and 4096
/// covers every device we expect.
pub const DMA_ALIGN_BYTES: usize = 4096;

#[derive(Debug)]
struct PoolInner {
    name: String,
    mapping: Mapping,
    chunk_bytes: usize,
    count: usize,
    hugepages: bool,
    free: ArrayQueue<u32>,
}

/// A pool of `count` DMA-capable chunks of `chunk_bytes` each. Cloning shares
/// the pool.
#[derive(Clone, Debug)]
pub struct BufferPool {
    inner: Arc<PoolInner>,
}

impl BufferPool {
    /// Allocates the whole pool now. `chunk_bytes` is rounded up to a multiple
    /// of 4096; `count` must be in 1..=u32::MAX.
    pub fn new(name: &str, chunk_bytes: usize, count: usize) -> Result<BufferPool, EnvError> {
        if chunk_bytes == 0 {
            return Err(EnvError::InvalidArgument { what: "chunk_bytes", value: 0 });
        }
        if count == 0 || count > u32::MAX as usize {
            return Err(EnvError::InvalidArgument { what: "count", value: count as u64 });
        }
        let chunk_bytes = chunk_bytes.div_ceil(DMA_ALIGN_BYTES) * DMA_ALIGN_BYTES;
        let bytes = chunk_bytes
            .checked_mul(count)
            .ok_or(EnvError::InvalidArgument { what: "pool bytes", value: u64::MAX })?;
        let (huge_free_bytes, huge_page_bytes) = hugepages_free_bytes();
        let mut mapping = None;
        let mut hugepages = false;
        if huge_page_bytes > 0 {
            let huge_len = (bytes as u64).div_ceil(huge_page_bytes) * huge_page_bytes;
            if huge_free_bytes >= huge_len {
                // Hugepages can still fail (another process took them); fall back.
                if let Ok(m) = Mapping::anonymous(huge_len as usize, true) {
                    mapping = Some(m);
                    hugepages = true;
                }
            }
        }
        let mapping = match mapping {
            Some(m) => m,
            None => Mapping::anonymous(bytes, false)?,
        };
        if hugepages {
            tracing::info!(pool = name, chunk_bytes, count, bytes, "buffer pool on hugepages (MAP_HUGETLB)");
        } else {
            let thp = mapping.advise_hugepage();
            tracing::info!(
                pool = name,
                chunk_bytes,
                count,
                bytes,
                thp_advised = thp,
                "buffer pool on normal pages (not enough free hugepages)"
            );
        }
        let free = ArrayQueue::new(count);
        for index in 0..count as u32 {
            let pushed = free.push(index);
            assert!(pushed.is_ok(), "free list sized to count");
        }
        Ok(BufferPool {
            inner: Arc::new(PoolInner {
                name: name.to_owned(),
                mapping,
                chunk_bytes,
                count,
                hugepages,
                free,
            }),
        })
    }

    /// Takes a free chunk, with its length set to the full capacity; `None`
    /// when the pool is exhausted. Lock-free, no heap allocation.
    pub fn get(&self) -> Option<DmaBuf> {
        let index = self.inner.free.pop()?;
        Some(DmaBuf { pool: Arc::clone(&self.inner), index, len: self.inner.chunk_bytes })
    }

    /// Free chunks right now (racy by nature when shared between threads).
    pub fn available(&self) -> usize {
        self.inner.free.len()
    }

    /// The size of every chunk (a multiple of 4096).
    pub fn chunk_bytes(&self) -> usize {
        self.inner.chunk_bytes
    }

    /// The number of chunks in the pool.
    pub fn count(&self) -> usize {
        self.inner.count
    }

    /// True if the pool lives on MAP_HUGETLB pages.
    pub fn is_hugepages(&self) -> bool {
        self.inner.hugepages
    }

    /// The name given at creation, for logs.
    pub fn name(&self) -> &str {
        &self.inner.name
    }
}

/// One chunk of a [`BufferPool`], exclusively owned; returns to its pool when
/// dropped. Dereferences to its first `len()` bytes.
#[derive(Debug)]
pub struct DmaBuf {
    pool: Arc<PoolInner>,
    index: u32,
    len: usize,
}

impl DmaBuf {
    /// The chunk size.
    pub fn capacity(&self) -> usize {
        self.pool.chunk_bytes
    }

    /// Sets the visible length. Panics if `len > capacity()`: callers size
    /// their I/O from validated lengths, so a larger value is our bug.
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.capacity(), "DmaBuf::set_len({len}) beyond capacity {}", self.capacity());
        self.len = len;
    }

    /// Start of the chunk; 4096-aligned. Used by `uring` to lend the memory.
    pub(crate) fn chunk_ptr(&self) -> *mut u8 {
        // SAFETY: index < count, so the offset stays inside the mapping.
        unsafe { self.pool.mapping.ptr.add(self.index as usize * self.pool.chunk_bytes) }
    }
}

// SAFETY: a DmaBuf is the unique owner of its chunk (see the module
// invariants), and the pool it points to is Sync (an ArrayQueue and an
// immutable mapping), so moving a DmaBuf to another thread is sound.
unsafe impl Send for DmaBuf {}
// SAFETY: `&DmaBuf` only gives `&[u8]` access to the chunk.
unsafe impl Sync for DmaBuf {}

impl Deref for DmaBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the chunk is inside the live mapping (the Arc keeps it), is
        // exclusively ours, and len <= chunk_bytes.
        unsafe { std::slice::from_raw_parts(self.chunk_ptr(), self.len) }
    }
}

impl DerefMut for DmaBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for Deref, and `&mut self` guarantees no other borrow.
        unsafe { std::slice::from_raw_parts_mut(self.chunk_ptr(), self.len) }
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        // The free list has room for every index, and this index is not in it.
        let pushed = self.pool.free.push(self.index);
        assert!(pushed.is_ok(), "chunk returned twice to pool {}", self.pool.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhaustion_returns_none_and_drop_returns() {
        let pool = BufferPool::new("test", 4096, 3).expect("pool");
        let a = pool.get().expect("a");
        let b = pool.get().expect("b");
        let c = pool.get().expect("c");
        assert!(pool.get().is_none());
        assert_eq!(pool.available(), 0);
        drop(b);
        assert_eq!(pool.available(), 1);
        let d = pool.get().expect("d after drop");
        assert!(pool.get().is_none());
        drop((a, c, d));
        assert_eq!(pool.available(), 3);
    }

    #[test]
    fn chunks_are_aligned_distinct_and_rounded() {
        let pool = BufferPool::new("align", 5000, 4).expect("pool");
        assert_eq!(pool.chunk_bytes(), 8192);
        let mut bufs: Vec<DmaBuf> = (0..4).map(|_| pool.get().expect("buf")).collect();
        for (i, b) in bufs.iter_mut().enumerate() {
            assert_eq!(b.as_ptr() as usize % DMA_ALIGN_BYTES, 0);
            assert_eq!(b.len(), 8192);
            b.fill(i as u8);
        }
        for (i, b) in bufs.iter().enumerate() {
            assert!(b.iter().all(|&x| x == i as u8), "chunks overlap");
        }
    }

    #[test]
    fn set_len_and_cross_thread_return() {
        let pool = BufferPool::new("len", 4096, 1).expect("pool");
        let mut b = pool.get().expect("buf");
        b.set_len(512);
        assert_eq!(b.len(), 512);
        assert_eq!(b.capacity(), 4096);
        std::thread::spawn(move || drop(b)).join().expect("thread");
        assert_eq!(pool.available(), 1);
    }

    #[test]
    #[should_panic(expected = "beyond capacity")]
    fn set_len_beyond_capacity_panics() {
        let pool = BufferPool::new("panic", 4096, 1).expect("pool");
        let mut b = pool.get().expect("buf");
        b.set_len(4097);
    }

    #[test]
    fn invalid_sizes_are_errors() {
        assert!(BufferPool::new("zero", 0, 1).is_err());
        assert!(BufferPool::new("none", 4096, 0).is_err());
    }
}
