//! Helpers for the multi-process tests: find and start the `tandem` binary,
//! pick free ports, write configs.
#![forbid(unsafe_code)]
