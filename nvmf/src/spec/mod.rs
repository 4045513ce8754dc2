//! NVMe structures as they appear on the wire (NVMe Base 2.0, NVMe over
//! Fabrics 1.1, NVM Command Set 1.0).

pub mod cqe;
pub mod sqe;
pub mod status;

pub use cqe::Cqe;
pub use sqe::{SglDescriptor, Sqe};
pub use status::NvmeStatus;
