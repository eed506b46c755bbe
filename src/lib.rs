//! snapbank: a distributed bank whose branches move money over TCP, exactly once and durably,
//! and take Chandy–Lamport global snapshots that survive crashes and partitions.
//!
//! # The workspace
//! - `crates/proto` (`snapbank-proto`): the branch protocol with no I/O. Its `Cargo.toml` admits
//!   no runtime, socket or disk crate, so the compiler keeps it pure: `types` → `snapshot` →
//!   `message` → `timing` → `branch` (each uses only those before it).
//! - this crate (`snapbank`): everything that touches a disk, a socket or a clock, and the three
//!   programs (`src/bin`: `bank`, `start_bank`, `snapctl` with one file per subcommand in
//!   `src/bin/snapctl/cmd/`).
//! - `crates/sim` (`snapbank-sim`, a test tool): the deterministic simulator, its runner and the
//!   core's scripted tests, on one harness; nothing here depends on it.
//! - `crates/testkit` (`snapbank-testkit`, a dev crate): the one launcher of real `bank` processes,
//!   shared by `tests/` and `tools/` (package `snapbank-tools`: `bench`, `chaos`).
//!
//! # This crate, one line a module: what it owns (→ what it may call)
//! - [`core`], [`snapshot`], [`types`]: the protocol crate's state machine and data, re-exported
//! - [`wire`]: the protocol crate's messages plus their length-prefixed framing (→ proto)
//! - [`store`]: durable state in sled (and an in-memory twin), key layout, migrations (→ core,
//!   [`durable`])
//! - [`durable`]: atomic, fsynced whole-file writes and directory syncs (what "durable" means)
//! - [`secure`]: the cluster key file, the Noise handshake and encrypted framing (→ [`durable`])
//! - [`net`]: the thin tokio shell in rooms: core loop, outgoing link, inbound connection,
//!   handshake, plus `ready` (persist, then send), `control`, `metrics`, `stats` (→ core, store,
//!   secure, wire)
//! - [`daemon`]: the `bank` program: flags ([`cli`]), store opening, runtime, signals (→ net)
//! - [`check`]: the one consistency checker, over any source of stored state (→ core)
//! - [`audit`]: reads a stopped cluster's stores for the checker (→ check, store)
//! - [`live_audit`]: `snapctl audit --live`: a running cluster's snapshots over the control
//!   channel, through the checker (→ check, net::control)
//! - [`restore`]: rewind a stopped cluster to a completed snapshot (→ audit, store, durable)
//! - [`reshape`]: make the next epoch of a stopped cluster, with other branches, from a completed
//!   snapshot (→ audit, store, secure, durable)
//! - [`lineage`]: the chain of epochs a data directory holds, back through each epoch's record
//!   (→ audit, reshape)
//! - [`report`]: the `snapctl report` page: `figures` (what is computed), `chart` (SVG), `page`
//!   (HTML) (→ audit)
//! - [`hosts`]: the `host.list` format and its limits

pub mod audit;
pub mod check;
pub mod cli;
pub mod core;
pub mod daemon;
pub mod durable;
pub mod hosts;
pub mod lineage;
pub mod live_audit;
pub mod net;
pub mod report;
pub mod reshape;
pub mod restore;
pub mod secure;
pub use snapbank_proto::snapshot;
pub mod store;
pub use snapbank_proto::types;
pub mod wire;
