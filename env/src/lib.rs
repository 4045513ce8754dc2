//! tandem-env: the environment the target runs in — reactors and pollers,
//! cross-reactor messages, timers, DMA buffer pools, persistence domains and
//! io_uring. All `unsafe` outside `rdma/` lives in this crate, in small
//! modules, each block with a `// SAFETY:` note; every other crate reaches the
//! kernel through the safe, owning APIs defined here.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod buffer;
pub mod msg;
pub mod persist;
pub mod prng;
pub mod reactor;
pub mod uring;

mod sys;

pub use buffer::{BufferPool, DmaBuf};
pub use msg::{ReactorHandle, StopHandle};
pub use persist::{open_region, DomainKind, MappedRegion, MemRegion, PersistentRegion};
pub use reactor::{
    spawn as spawn_reactor, PollMode, PollStatus, Reactor, ReactorApp, ReactorConfig, ReactorContext,
    ReactorCounters, ReactorThread, Readiness, TimerId,
};
pub use uring::Uring;

use std::path::PathBuf;

/// The errors of this crate. Each variant names the operation that failed and
/// carries the numbers needed to diagnose it; none is a free-form string.
#[derive(thiserror::Error, Debug)]
pub enum EnvError {
    /// A system call failed; `errno` is the raw OS error.
    #[error("{call} failed: {}", std::io::Error::from_raw_os_error(*errno))]
    Syscall { call: &'static str, errno: i32 },
    /// Opening, sizing or syncing a file failed.
    #[error("{op} {}: {source}", path.display())]
    File {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Mapping `bytes` of memory failed.
    #[error("mmap of {bytes} bytes failed: {}", std::io::Error::from_raw_os_error(*errno))]
    Mmap { bytes: usize, errno: i32 },
    /// A `pmem` domain was asked for on a file or device without DAX
    /// (MAP_SYNC refused), so CPU cache flushes would not make data durable.
    #[error(
        "{} is not on a DAX filesystem or device (MAP_SYNC refused: errno {errno}); \
         use the `file` or `shm` domain instead",
        path.display()
    )]
    NotDax { path: PathBuf, errno: i32 },
    /// The platform lacks something this operation needs.
    #[error("unsupported on this platform: {what}")]
    Unsupported { what: &'static str },
    /// A caller passed a value outside the documented range.
    #[error("invalid argument {what}: {value}")]
    InvalidArgument { what: &'static str, value: u64 },
    /// The io_uring already holds its stated maximum of operations.
    #[error("io_uring full: {in_flight_max} operations in flight")]
    UringFull { in_flight_max: usize },
}

impl EnvError {
    /// Builds a [`EnvError::Syscall`] from the calling thread's `errno`.
    pub(crate) fn last_os(call: &'static str) -> EnvError {
        EnvError::Syscall { call, errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0) }
    }
}
