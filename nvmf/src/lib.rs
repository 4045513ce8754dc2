//! tandem-nvmf: the NVMe and NVMe over Fabrics wire formats, the NVMe/TCP PDU
//! codec, and the host (initiator) library.
//!
//! This crate knows nothing of high availability or of how a target stores
//! data: it turns bytes into typed commands and back, and every parse of
//! bytes from a peer returns a `Result`, never a panic.
#![forbid(unsafe_code)]

pub mod host;
pub mod spec;
pub mod tcp;
