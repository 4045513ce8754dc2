//! tandem-perf: the load generator, the TCP baseline it is compared with, and
//! the crash-consistency checker used by the failover tests.
//!
//! The engines are written against [`driver::QueueDriver`] so they run the
//! same over the NVMe/TCP host library and over the in-memory fake of the
//! unit tests.
#![forbid(unsafe_code)]

pub mod baseline;
pub mod block;
pub mod crashcheck;
pub mod driver;
pub mod host;
pub mod perf;
pub mod prng;
pub mod stats;
pub mod workload;

pub use crashcheck::{CrashChecker, Region, RunSummary, VerifyError, VerifyReport};
pub use driver::QueueDriver;
pub use perf::{run_perf, PerfArgs, PerfReport};
