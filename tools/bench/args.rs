//! The command line.

use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "bench",
    version,
    about = "measure a snapbank cluster at full speed: throughput, latencies, snapshot overhead, recovery, memory, store size, audit"
)]
pub struct Args {
    /// Cluster sizes to run, one after the other.
    #[arg(long, value_delimiter = ',', default_value = "4,16,32,64", value_parser = clap::value_parser!(u16).range(2..=snapbank::wire::BRANCHES_MAX as i64))]
    pub branches: Vec<u16>,
    /// Measurement window of each run (after the first snapshot completed).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Each branch's `--transfer-interval`: `0s` is full speed; a fixed interval paces the load
    /// (e.g. `13333ns`: 75,000 transfers/s per branch, 300,000/s across 4).
    #[arg(long, default_value = "0s", value_name = "DURATION")]
    pub transfer_interval: String,
    /// Snapshot interval of the initiator (during "on" phases).
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub snapshot_interval: Duration,
    /// Length of the alternating snapshots-on (even) / snapshots-off (odd) wall-clock phases.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub phase: Duration,
    /// Where to put the runs (DIR/n<N>: host.list, logs, stats, stores) and bench.json
    /// (default: a new directory under the temporary directory).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Write the results as JSON here (default: DIR/bench.json).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Keep the stores of consistent runs (they are deleted otherwise; logs and stats stay).
    #[arg(long)]
    pub keep: bool,
    /// Run the branches without authentication or encryption (no cluster key).
    #[arg(long)]
    pub insecure: bool,
    /// More arguments for every `bank`, split at whitespace (e.g. "--unacked-max 1024").
    #[arg(
        long,
        default_value = "",
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    pub extra_bank_args: String,
    /// Measure from the logs even if bank has --stats-file (to check the fallback).
    #[arg(long, hide = true)]
    pub from_logs: bool,
}
