//! tandem-target: the Tandem NVMe over Fabrics target. Transports (TCP) feed
//! requests to subsystems and controllers; writes go through the HA write
//! path (staging, mirror, flusher) to the backends.
#![forbid(unsafe_code)]
pub mod backend;
pub mod config;
pub mod ctrl;
pub mod demo;
pub mod ha;
pub mod metrics;
pub mod nvmf_rpc;
pub mod pair;
pub mod progress;
pub mod rpc;
pub mod serve;
pub mod transport;
