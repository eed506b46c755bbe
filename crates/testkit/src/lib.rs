//! snapbank's test kit: one way to run real `bank` processes, for the end-to-end tests
//! (`tests/`) and the hand-run tools (`tools/`: bench, chaos).
//!
//! - [`Cluster`] ([`cluster`]): a cluster on loopback: host.list, the cluster key, a store
//!   directory and a log per branch; start, signal, `kill -9`, stop and wait for branches; run
//!   `snapctl` against its stores
//! - [`free_ports`] ([`ports`]): ports for the branches
//! - [`process`]: waiting for a process with a timeout (or for one that is not our child to
//!   exit), signals by name, what the host allows
//! - [`logs`]: what the kit reads in a branch's log
//!
//! The programs are parameters ([`Bins`]): this crate cannot see cargo's binaries itself.
//!
//! What a test calls panics with a message when it fails (`start`, `stop`, `audit`, ...); the
//! tools call the fallible forms (`try_start`, `try_start_with`, `terminate_all`, `kill9`,
//! `exited`, [`free_ports`]) and report errors themselves.

pub mod cluster;
pub mod logs;
pub mod ports;
pub mod process;

pub use cluster::{host_list_text, Bins, Cluster, Dir, Stopped};
pub use logs::{completed_snapshots, line_time, Completed};
pub use ports::free_ports;
pub use process::{
    fault_tools_available, has_exited, is_root, runs, signal_named, wait_exited, wait_timeout,
    wait_until,
};
