//! snapbank: a distributed bank whose branches move money over TCP, exactly once and durably,
//! and take Chandy–Lamport global snapshots that survive crashes and partitions.
//!
//! Layout:
//! - [`core`]: the branch protocol as a pure state machine (events in; persist, send, notices
//!   out), from the I/O-free protocol crate `snapbank-proto` (`crates/proto`), as are
//!   [`snapshot`] and [`types`]
//! - [`wire`]: the protocol crate's messages and their length-prefixed framing on a connection
//! - [`store`]: durable state in sled (and an in-memory twin), key layout and migrations
//! - [`durable`]: atomic, fsynced whole-file writes and directory syncs (what "durable" means)
//! - [`daemon`]: the `bank` program: flags, store opening, runtime and signals
//! - [`secure`]: the cluster key file and the Noise handshake and encrypted framing of links
//! - [`net`]: the thin tokio shell that runs a core: listener, per-peer links, group commit
//! - [`audit`]: global consistency checks over the stores of a stopped cluster
//! - [`restore`]: rewind a stopped cluster to a completed snapshot (rebuilding lost stores)
//! - [`live_audit`]: `snapctl audit --live`: a running cluster's latest snapshots, over the control channel
//! - [`report`]: the `snapctl report` page: charts of the completed snapshots, self-contained HTML
//! - [`hosts`]: the `host.list` format; [`snapshot`]: snapshot data; [`types`]: newtypes

pub mod audit;
pub mod check;
pub mod cli;
pub mod core;
pub mod daemon;
pub mod durable;
pub mod hosts;
pub mod live_audit;
pub mod net;
pub mod report;
pub mod restore;
pub mod secure;
pub use snapbank_proto::snapshot;
pub mod store;
pub use snapbank_proto::types;
pub mod wire;
