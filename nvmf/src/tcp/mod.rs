//! The NVMe/TCP PDU codec (NVMe/TCP Transport Specification 1.0).
