//! The branch protocol: the pure state machine of the protocol crate ([`snapbank_proto::branch`]),
//! re-exported under its old path. Its scripted tests run here, with the in-memory store.

pub use snapbank_proto::branch::*;

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
