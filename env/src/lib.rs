//! tandem-env: the environment the target runs in — reactors and pollers,
//! cross-reactor messages, timers, DMA buffer pools, persistence domains and
//! io_uring. All `unsafe` outside `rdma/` lives in this crate, in small
//! modules, each block with a `// SAFETY:` note.
#![deny(clippy::undocumented_unsafe_blocks)]
