//! The NVMe/TCP host (initiator) library.
