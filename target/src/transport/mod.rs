//! Transports: NVMe/TCP today (RDMA comes with its own issue). A transport
//! turns bytes on a socket into commands for the controller layer and
//! completions back into bytes.

pub mod media;
pub mod sendq;
pub mod sockbuf;
pub mod tcp;
