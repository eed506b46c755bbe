//! One module per subcommand: its flags (a `clap::Args` struct, documented where `main.rs`
//! lists it) and `run`, which prints its output and returns its exit code or a `Failure`.

pub mod audit;
pub mod docs;
pub mod keygen;
pub mod report;
pub mod reshape;
pub mod restore;
pub mod snapshot;
pub mod snapshots;
pub mod status;
