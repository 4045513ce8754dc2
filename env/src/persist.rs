//! Persistence domains: a mapped region plus the primitive that makes a byte
//! range of it durable *in that domain*. The staging log is written against
//! [`PersistentRegion`] so the same code runs on real pmem, on a plain file,
//! on /dev/shm, and on [`MemRegion`], which simulates power loss.
//!
//! What each domain guarantees once `persist()` returns:
//! - `Pmem`: survives power loss. The mapping uses MAP_SYNC, so flushing CPU
//!   caches (CLWB, else CLFLUSHOPT, else CLFLUSH, then SFENCE) is enough; no
//!   page-cache writeback is involved.
//! - `File`: survives power loss, via msync(MS_SYNC) of the touched pages. Slow.
//! - `Shm`: survives a crash of this process only; a kernel crash or power loss
//!   loses it. `persist()` is a store fence so other mappers see ordered stores.
//! - `Memory` ([`MemRegion`]): volatile; used by tests to model crashes.
//!
//! Invariant: a region's length never changes after it is opened, so slices
//! handed out by `bytes()`/`bytes_mut()` stay in bounds.

use crate::sys::Mapping;
use crate::EnvError;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// A byte region with a durability primitive; see the module docs.
pub trait PersistentRegion: Send {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn bytes(&self) -> &[u8];
    fn bytes_mut(&mut self) -> &mut [u8];
    /// Makes [offset, offset+len) durable in this domain before returning.
    /// Panics if the range is outside the region (our invariant: callers
    /// compute ranges from their own layout).
    fn persist(&mut self, offset: usize, len: usize);
    fn kind(&self) -> DomainKind;
}

/// Which persistence domain a region lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DomainKind {
    Pmem,
    File,
    Shm,
    Memory,
}

impl DomainKind {
    pub fn survives_power_loss(&self) -> bool {
        matches!(self, DomainKind::Pmem | DomainKind::File)
    }

    /// The guarantee in words, for logs and documentation.
    pub fn guarantee(&self) -> &'static str {
        match self {
            DomainKind::Pmem | DomainKind::File => "survives power loss",
            DomainKind::Shm => "survives a process crash only",
            DomainKind::Memory => "volatile",
        }
    }

    /// The configuration name (`pmem`, `file`, `shm`, `memory`).
    pub fn name(&self) -> &'static str {
        match self {
            DomainKind::Pmem => "pmem",
            DomainKind::File => "file",
            DomainKind::Shm => "shm",
            DomainKind::Memory => "memory",
        }
    }
}

fn check_range(offset: usize, len: usize, region_len: usize) {
    assert!(
        offset.checked_add(len).is_some_and(|end| end <= region_len),
        "persist range {offset}+{len} outside region of {region_len} bytes"
    );
}

/// The cache-line flush instruction chosen at open time for a pmem region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FlushInstruction {
    Clwb,
    Clflushopt,
    Clflush,
}

#[cfg(target_arch = "x86_64")]
fn detect_flush_instruction() -> FlushInstruction {
    // CPUID leaf 7, sub-leaf 0: EBX bit 24 = CLWB, bit 23 = CLFLUSHOPT.
    // CLFLUSH (leaf 1 EDX bit 19) is architectural on every x86_64 CPU.
    #[allow(unused_unsafe)]
    // SAFETY: CPUID is available on every x86_64 CPU and has no side effects.
    let leaf7 = unsafe { std::arch::x86_64::__cpuid_count(7, 0) };
    if leaf7.ebx & (1 << 24) != 0 {
        FlushInstruction::Clwb
    } else if leaf7.ebx & (1 << 23) != 0 {
        FlushInstruction::Clflushopt
    } else {
        FlushInstruction::Clflush
    }
}

/// Writes back every cache line of [ptr, ptr+len) and fences.
///
/// # Safety
/// `ptr..ptr+len` must be inside a live mapping.
#[cfg(target_arch = "x86_64")]
unsafe fn flush_cache_lines(instruction: FlushInstruction, ptr: *const u8, len: usize) {
    const LINE_BYTES: usize = 64;
    if len == 0 {
        return;
    }
    let start = ptr as usize & !(LINE_BYTES - 1);
    let end = ptr as usize + len;
    let mut line = start;
    while line < end {
        // SAFETY: `line` is inside the mapping per this function's contract
        // (rounded down to a line boundary, which stays within the same page);
        // these instructions only write back caches and never fault on mapped memory.
        unsafe {
            match instruction {
                FlushInstruction::Clwb => {
                    std::arch::asm!("clwb [{}]", in(reg) line, options(nostack, preserves_flags))
                }
                FlushInstruction::Clflushopt => {
                    std::arch::asm!("clflushopt [{}]", in(reg) line, options(nostack, preserves_flags))
                }
                FlushInstruction::Clflush => std::arch::x86_64::_mm_clflush(line as *const u8),
            }
        }
        line += LINE_BYTES;
    }
    // SAFETY: SFENCE has no memory operands; it orders the flushes above
    // before any later store (and before persist() returns).
    unsafe { std::arch::x86_64::_mm_sfence() };
}

/// A file-backed region: pmem (DAX + MAP_SYNC), a regular file, or a file in
/// /dev/shm. Created with [`open_region`].
#[derive(Debug)]
pub struct MappedRegion {
    mapping: Mapping,
    kind: DomainKind,
    path: PathBuf,
    flush: Option<FlushInstruction>,
    // Kept open for the mapping's life; msync does not need it but a future
    // fallocate/resize would.
    _file: File,
}

/// Opens (creating and extending to `len_bytes` if needed, except for a pmem
/// device) the region at `path` in domain `kind`. For `Shm` a relative path
/// is placed under /dev/shm. `Memory` is refused: use [`MemRegion::new`].
pub fn open_region(kind: DomainKind, path: &Path, len_bytes: usize) -> Result<MappedRegion, EnvError> {
    if len_bytes == 0 {
        return Err(EnvError::InvalidArgument { what: "region len_bytes", value: 0 });
    }
    let path = match kind {
        DomainKind::Shm if path.is_relative() => Path::new("/dev/shm").join(path),
        DomainKind::Memory => {
            return Err(EnvError::Unsupported { what: "open_region(Memory); use MemRegion" })
        }
        _ => path.to_path_buf(),
    };
    let file_err =
        |op: &'static str, source: std::io::Error| EnvError::File { op, path: path.clone(), source };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(kind != DomainKind::Pmem || !path.exists())
        .truncate(false)
        .open(&path)
        .map_err(|e| file_err("open", e))?;
    let meta = file.metadata().map_err(|e| file_err("stat", e))?;
    if meta.is_file() && meta.len() < len_bytes as u64 {
        file.set_len(len_bytes as u64).map_err(|e| file_err("extend", e))?;
    }
    let (flush, extra_flags) = match kind {
        DomainKind::Pmem => {
            #[cfg(target_arch = "x86_64")]
            {
                (Some(detect_flush_instruction()), libc::MAP_SHARED_VALIDATE | libc::MAP_SYNC)
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                return Err(EnvError::Unsupported {
                    what: "pmem domain needs x86_64 cache-flush instructions",
                });
            }
        }
        _ => (None, 0),
    };
    // Populated at start-up: the first write to each page of a fresh ring
    // would otherwise take a page fault on the write path (tens of µs).
    let mapping = match Mapping::shared_file(file.as_raw_fd(), len_bytes, extra_flags | libc::MAP_POPULATE) {
        Ok(m) => m,
        Err(EnvError::Mmap { errno, .. }) if kind == DomainKind::Pmem && errno == libc::EOPNOTSUPP => {
            return Err(EnvError::NotDax { path, errno });
        }
        Err(e) => return Err(e),
    };
    tracing::info!(
        path = %path.display(),
        domain = kind.name(),
        len_bytes,
        flush = ?flush,
        "persistence domain opened: {}",
        kind.guarantee()
    );
    Ok(MappedRegion { mapping, kind, path, flush, _file: file })
}

impl MappedRegion {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl PersistentRegion for MappedRegion {
    fn len(&self) -> usize {
        self.mapping.len
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is live while self is, and its length is fixed.
        // Another process may write the same file concurrently (that is the
        // point of shm/pmem); bytes have no invalid values, and cross-process
        // ordering is the staging protocol's job (CRCs, sequence numbers).
        unsafe { std::slice::from_raw_parts(self.mapping.ptr, self.mapping.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for bytes(); `&mut self` excludes other borrows in this process.
        unsafe { std::slice::from_raw_parts_mut(self.mapping.ptr, self.mapping.len) }
    }

    fn persist(&mut self, offset: usize, len: usize) {
        check_range(offset, len, self.mapping.len);
        match self.kind {
            DomainKind::Pmem => {
                #[cfg(target_arch = "x86_64")]
                {
                    let instruction = self.flush.unwrap_or(FlushInstruction::Clflush);
                    // SAFETY: the range was checked against the live mapping.
                    unsafe { flush_cache_lines(instruction, self.mapping.ptr.add(offset), len) };
                }
            }
            DomainKind::File => {
                const PAGE_BYTES: usize = 4096;
                if len == 0 {
                    return;
                }
                let start = offset & !(PAGE_BYTES - 1);
                let end = (offset + len).min(self.mapping.len);
                // SAFETY: [start, end) lies inside our mapping; msync reads no Rust memory.
                let rc =
                    unsafe { libc::msync(self.mapping.ptr.add(start).cast(), end - start, libc::MS_SYNC) };
                // A failed msync means the data may not be durable; continuing
                // would acknowledge writes we cannot keep, so stop here.
                assert_eq!(
                    rc,
                    0,
                    "msync of {} failed: {}",
                    self.path.display(),
                    std::io::Error::last_os_error()
                );
            }
            DomainKind::Shm | DomainKind::Memory => {
                std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            }
        }
    }

    fn kind(&self) -> DomainKind {
        self.kind
    }
}

/// A heap region that models power loss: it keeps the bytes as written and a
/// separate "persisted image"; `persist()` copies a range into the image and
/// `crash()` reverts everything not persisted.
#[derive(Clone, Debug)]
pub struct MemRegion {
    current: Vec<u8>,
    persisted: Vec<u8>,
    persist_calls: u64,
}

impl MemRegion {
    /// A zero-filled region of `len_bytes`.
    pub fn new(len_bytes: usize) -> MemRegion {
        MemRegion { current: vec![0; len_bytes], persisted: vec![0; len_bytes], persist_calls: 0 }
    }

    /// Simulates power loss: every byte not persisted reverts to its persisted
    /// value. With `torn_seed`, each unpersisted 8-byte word independently
    /// keeps its new value with probability 1/2 (seeded, reproducible), which
    /// models a write that was torn at word granularity. Afterwards the
    /// surviving bytes count as persisted.
    pub fn crash(&mut self, torn_seed: Option<u64>) {
        const WORD_BYTES: usize = 8;
        let mut rng = torn_seed.map(crate::prng::SplitMix64::new);
        for (word, image) in self.current.chunks_mut(WORD_BYTES).zip(self.persisted.chunks_mut(WORD_BYTES)) {
            if word == image {
                continue;
            }
            let keep = rng.as_mut().is_some_and(|r| r.next_u64() & 1 == 1);
            if keep {
                image.copy_from_slice(word);
            } else {
                word.copy_from_slice(image);
            }
        }
    }

    /// The durable image (what a crash without tearing would leave).
    pub fn persisted_bytes(&self) -> &[u8] {
        &self.persisted
    }

    /// How many times persist() was called (tests check batching with it).
    pub fn persist_calls(&self) -> u64 {
        self.persist_calls
    }
}

impl PersistentRegion for MemRegion {
    fn len(&self) -> usize {
        self.current.len()
    }
    fn bytes(&self) -> &[u8] {
        &self.current
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.current
    }
    fn persist(&mut self, offset: usize, len: usize) {
        check_range(offset, len, self.current.len());
        self.persisted[offset..offset + len].copy_from_slice(&self.current[offset..offset + len]);
        self.persist_calls += 1;
    }
    fn kind(&self) -> DomainKind {
        DomainKind::Memory
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unique(name: &str) -> String {
        format!("tandem-env-test-{}-{name}", std::process::id())
    }

    fn round_trip(kind: DomainKind, path: &Path) {
        {
            let mut region = open_region(kind, path, 3 * 4096).expect("open");
            assert_eq!(region.len(), 3 * 4096);
            assert_eq!(region.kind(), kind);
            region.bytes_mut()[4000..4200].fill(0xA5);
            region.persist(4000, 200);
            region.bytes_mut()[0] = 7;
            region.persist(0, 1);
        }
        let region = open_region(kind, path, 3 * 4096).expect("reopen");
        assert_eq!(region.bytes()[0], 7);
        assert!(region.bytes()[4000..4200].iter().all(|&b| b == 0xA5));
        assert_eq!(region.bytes()[4200], 0);
        let on_disk = std::fs::read(region.path()).expect("read back");
        assert_eq!(on_disk.len(), 3 * 4096);
        assert_eq!(on_disk[4100], 0xA5);
        std::fs::remove_file(region.path()).expect("cleanup");
    }

    #[test]
    fn file_round_trip() {
        let path = std::env::temp_dir().join(unique("file"));
        round_trip(DomainKind::File, &path);
    }

    #[test]
    fn shm_round_trip_relative_goes_under_dev_shm() {
        let name = unique("shm");
        round_trip(DomainKind::Shm, Path::new(&name));
        assert!(!Path::new("/dev/shm").join(&name).exists());
    }

    #[test]
    fn pmem_on_non_dax_fails_clearly() {
        let path = std::env::temp_dir().join(unique("pmem"));
        std::fs::write(&path, vec![0u8; 4096]).expect("create");
        let result = open_region(DomainKind::Pmem, &path, 4096);
        std::fs::remove_file(&path).expect("cleanup");
        match result {
            Err(EnvError::NotDax { .. }) => {}
            // A test machine with a DAX /tmp would legitimately succeed.
            Ok(region) => assert_eq!(region.kind(), DomainKind::Pmem),
            Err(other) => panic!("unexpected error {other}"),
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn cache_line_flush_runs_on_this_cpu() {
        // Exercises the detected instruction on ordinary memory: it must not fault.
        let mut data = vec![1u8; 300];
        let instruction = detect_flush_instruction();
        // SAFETY: the range is inside `data`.
        unsafe { flush_cache_lines(instruction, data.as_mut_ptr(), data.len()) };
        assert!(data.iter().all(|&b| b == 1));
    }

    #[test]
    fn mem_region_crash_loses_unpersisted_keeps_persisted() {
        let mut region = MemRegion::new(64);
        region.bytes_mut()[0..16].fill(1);
        region.persist(0, 16);
        region.bytes_mut()[16..32].fill(2);
        region.bytes_mut()[0] = 9; // overwrite after persist: not durable
        region.crash(None);
        assert!(region.bytes()[0..16].iter().all(|&b| b == 1));
        assert!(region.bytes()[16..32].iter().all(|&b| b == 0));
        assert_eq!(region.persist_calls(), 1);
    }

    #[test]
    fn mem_region_torn_crash_is_word_granular_and_seeded() {
        let run = |seed| {
            let mut region = MemRegion::new(8 * 64);
            region.bytes_mut().fill(0xFF);
            region.crash(Some(seed));
            region.bytes().to_vec()
        };
        let a = run(42);
        assert_eq!(a, run(42), "same seed, same tear");
        let kept = a.chunks(8).filter(|w| w.iter().all(|&b| b == 0xFF)).count();
        let lost = a.chunks(8).filter(|w| w.iter().all(|&b| b == 0)).count();
        assert_eq!(kept + lost, 64, "words tear whole");
        assert!(kept > 0 && lost > 0, "64 fair coin flips: kept {kept}");
    }

    #[test]
    #[should_panic(expected = "outside region")]
    fn persist_out_of_range_panics() {
        MemRegion::new(16).persist(8, 16);
    }

    #[test]
    fn domain_guarantees() {
        assert!(DomainKind::Pmem.survives_power_loss());
        assert!(DomainKind::File.survives_power_loss());
        assert!(!DomainKind::Shm.survives_power_loss());
        assert_eq!(DomainKind::Shm.guarantee(), "survives a process crash only");
        assert_eq!(DomainKind::Memory.guarantee(), "volatile");
    }
}
