//! tandem-perf: the load generator, the crash checker and benchmark scenarios.
#![forbid(unsafe_code)]
