//! Thin, safe wrappers over the few raw system calls the rest of the crate
//! shares: anonymous mappings and eventfds. Each wrapper owns what it creates
//! (an `OwnedFd`, or a mapping released by `Mapping::drop`), so callers never
//! handle raw resources.

use crate::EnvError;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// An mmap'd region, unmapped on drop. The pointer is page aligned.
#[derive(Debug)]
pub(crate) struct Mapping {
    pub(crate) ptr: *mut u8,
    pub(crate) len: usize,
}

// SAFETY: a Mapping is a plain region of process memory; which thread unmaps
// it does not matter. Access to its bytes is coordinated by the owners.
unsafe impl Send for Mapping {}
// SAFETY: as above; `Mapping` itself exposes no interior mutability.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of anonymous, private, pre-faulted memory, with
    /// MAP_HUGETLB when `huge` is set.
    pub(crate) fn anonymous(len: usize, huge: bool) -> Result<Mapping, EnvError> {
        let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE;
        if huge {
            flags |= libc::MAP_HUGETLB;
        }
        // SAFETY: an anonymous mapping at an address the kernel chooses does not
        // alias any existing Rust object.
        let ptr = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0)
        };
        if ptr == libc::MAP_FAILED {
            return Err(EnvError::Mmap {
                bytes: len,
                errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
            });
        }
        Ok(Mapping { ptr: ptr.cast(), len })
    }

    /// Maps `len` bytes of `fd` shared (writes reach the file) with the extra
    /// `flags` (MAP_SYNC | MAP_SHARED_VALIDATE for pmem).
    pub(crate) fn shared_file(fd: RawFd, len: usize, extra_flags: i32) -> Result<Mapping, EnvError> {
        // The caller may name the sharing type (MAP_SHARED_VALIDATE for
        // MAP_SYNC); otherwise the mapping is MAP_SHARED plus its extra flags.
        let names_sharing = extra_flags & libc::MAP_SHARED_VALIDATE != 0;
        let flags = if names_sharing { extra_flags } else { libc::MAP_SHARED | extra_flags };
        // SAFETY: a new shared mapping of a file at a kernel-chosen address; it
        // does not alias Rust objects. Other processes may write the file; the
        // region types expose it only as plain bytes, for which any value is valid.
        let ptr = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, flags, fd, 0)
        };
        if ptr == libc::MAP_FAILED {
            return Err(EnvError::Mmap {
                bytes: len,
                errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
            });
        }
        Ok(Mapping { ptr: ptr.cast(), len })
    }

    /// Advises transparent hugepages for the region; failure only costs TLB misses.
    pub(crate) fn advise_hugepage(&self) -> bool {
        // SAFETY: madvise on a range we own; MADV_HUGEPAGE does not change contents.
        unsafe { libc::madvise(self.ptr.cast(), self.len, libc::MADV_HUGEPAGE) == 0 }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the region was mapped by us with this length, and every borrower
        // (DmaBuf, region slices) holds the owner alive, so nothing uses it now.
        let rc = unsafe { libc::munmap(self.ptr.cast(), self.len) };
        debug_assert_eq!(rc, 0, "munmap of our own mapping failed");
    }
}

/// Creates a non-blocking, close-on-exec eventfd with a zero count.
pub(crate) fn eventfd() -> Result<OwnedFd, EnvError> {
    // SAFETY: eventfd has no memory arguments.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(EnvError::last_os("eventfd"));
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to an eventfd, waking whoever sleeps on it. A full counter
/// (EAGAIN) already means "readable", so the error is ignored.
pub(crate) fn eventfd_signal(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to a descriptor we own.
    let _ = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

/// Resets an eventfd to zero; returns true if it was signalled.
pub(crate) fn eventfd_drain(fd: &OwnedFd) -> bool {
    let mut count: u64 = 0;
    // SAFETY: reads 8 bytes into a live u64 from a descriptor we own.
    let n = unsafe { libc::read(fd.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
    n == 8
}

/// Free hugepage bytes according to /proc/meminfo (0 if unreadable).
pub(crate) fn hugepages_free_bytes() -> (u64, u64) {
    let Ok(text) = std::fs::read_to_string("/proc/meminfo") else {
        return (0, 0);
    };
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let page_bytes = field("Hugepagesize:") * 1024;
    (field("HugePages_Free:") * page_bytes, page_bytes)
}
