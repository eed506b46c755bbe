//! snapbank's branch protocol, with no I/O: events in, a [`branch::Ready`] out (a batch to make
//! durable, then messages to send, then notices to log). No runtime, no sockets, no disk, no
//! clock and no global randomness: `Cargo.toml` admits no crate that could do I/O.
//!
//! Modules, each depending only on those before it:
//! - [`types`]: the newtypes (branch ids, sequence numbers, snapshot ids, amounts, time);
//! - [`snapshot`]: what a snapshot is made of (local parts, global snapshots, pending status);
//! - [`message`]: the messages branches and operators exchange, their checks, their CBOR;
//! - [`timing`]: when a branch wants to be woken and what it does then (snapshots, warnings);
//! - [`branch`]: the branch state machine, its durable state, `Ready` and errors.

pub mod branch;
pub mod message;
pub mod snapshot;
pub mod timing;
pub mod types;
