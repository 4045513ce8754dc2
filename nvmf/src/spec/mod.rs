//! NVMe structures as they appear on the wire (NVMe Base 2.0, NVMe over
//! Fabrics 1.1, NVM Command Set 1.0).
//!
//! Every structure is a newtype over its exact wire bytes (size pinned by a
//! const assertion) with typed accessors, or a small struct parsed from
//! command dwords. Parsing bytes from a peer never panics: fixed-size
//! structures cannot be short, and variable ones return a typed error.

mod wire;

pub mod cqe;
pub mod fabrics;
pub mod features;
pub mod identify;
pub mod log;
pub mod nvm;
pub mod opcode;
pub mod sqe;
pub mod status;

pub use cqe::Cqe;
pub use sqe::{SglDescriptor, Sqe};
pub use status::NvmeStatus;
