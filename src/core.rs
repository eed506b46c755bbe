//! The branch protocol: the pure state machine of the protocol crate ([`snapbank_proto::branch`]),
//! re-exported under its old path. Its scripted tests run in the simulator crate
//! (`crates/sim/src/scripted.rs`), over the in-memory store.

pub use snapbank_proto::branch::*;
