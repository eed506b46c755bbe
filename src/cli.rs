//! Pieces the binaries share: the branch flags (taken by `bank` and forwarded by `start_bank`),
//! logging set-up and the audit's human output.

use crate::audit::AuditReport;
use crate::net::Pace;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

/// Flags of one branch daemon. Every value may start with `-`, so that `--initial-balance -5` is
/// refused as a bad value of that flag rather than as an unknown argument `-5`.
#[derive(Args, Clone, Debug)]
pub struct BranchFlags {
    /// Money each branch starts with.
    #[arg(
        long,
        allow_hyphen_values = true,
        default_value_t = 1_000_000,
        value_name = "N"
    )]
    pub initial_balance: u64,
    /// Largest single transfer (each is 1..=min(this, balance)).
    #[arg(long, allow_hyphen_values = true, default_value_t = 100, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_amount: u64,
    /// Time between transfers: a range like `2s..5s`, a fixed `10ms`, or `0s` for as fast as
    /// possible. Intervals below a millisecond are kept as a rate (`13333ns`: 75,000/s).
    #[arg(
        long,
        allow_hyphen_values = true,
        default_value = "1ms..5ms",
        value_name = "RANGE"
    )]
    pub transfer_interval: Pace,
    /// Time between snapshots started by the initiator.
    #[arg(long, allow_hyphen_values = true, default_value = "5s", value_name = "DURATION", value_parser = parse_nonzero_duration)]
    pub snapshot_interval: Duration,
    /// Seed of the transfer generator (random if not given; logged so a run can be repeated).
    #[arg(long, allow_hyphen_values = true, value_name = "N")]
    pub seed: Option<u64>,
    /// Log level (error, warn, info, debug, trace); overrides RUST_LOG.
    #[arg(long, allow_hyphen_values = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Unacknowledged transfers allowed per outgoing channel (flow control). Default: a budget of
    /// 4096 per branch shared by its channels (1365 each at 4 branches, 65 at 64), at least 64:
    /// a marker never queues behind more than that many transfers per branch.
    #[arg(long, allow_hyphen_values = true, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub unacked_max: Option<u64>,
    /// Report a snapshot still incomplete after this long, naming the channels and branches it
    /// waits for (it still completes when it can).
    #[arg(long, allow_hyphen_values = true, default_value = "10s", value_name = "DURATION", value_parser = parse_nonzero_duration)]
    pub snapshot_warn_after: Duration,
    /// How often a branch logs its status line.
    #[arg(long, allow_hyphen_values = true, default_value = "5s", value_name = "DURATION", value_parser = parse_nonzero_duration)]
    pub status_interval: Duration,
    /// A paced branch (not `--transfer-interval 0s`) lets transfers, credits and acks wait up
    /// to this long for more before it commits them, one `fdatasync` for all (markers, parts,
    /// connection changes and operators' requests commit at once). `0s`: commit every step.
    #[arg(long, allow_hyphen_values = true, default_value = "10ms", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub commit_window: Duration,
    /// On SIGINT/SIGTERM, how long in-flight transfers get to be acknowledged before exit.
    #[arg(long, allow_hyphen_values = true, default_value = "1s", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// Completed snapshots kept in the store (parts, and the initiator's global copies); older
    /// ones are pruned. Each completed snapshot also compacts the transfer log: what is
    /// acknowledged and before the latest snapshot's cut goes, so the store stays bounded.
    #[arg(long, allow_hyphen_values = true, default_value_t = 256, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub keep_snapshots: u64,
}

impl BranchFlags {
    /// The flags as `bank` arguments; `seed_offset` gives each branch of a host its own seed.
    pub fn to_args(&self, seed_offset: u64) -> Vec<String> {
        let mut a = vec![
            "--initial-balance".to_string(),
            self.initial_balance.to_string(),
            "--max-amount".to_string(),
            self.max_amount.to_string(),
            "--transfer-interval".to_string(),
            self.transfer_interval.to_string(),
            "--snapshot-interval".to_string(),
            humantime::format_duration(self.snapshot_interval).to_string(),
            "--snapshot-warn-after".to_string(),
            humantime::format_duration(self.snapshot_warn_after).to_string(),
            "--status-interval".to_string(),
            humantime::format_duration(self.status_interval).to_string(),
            "--settle".to_string(),
            humantime::format_duration(self.settle).to_string(),
            "--commit-window".to_string(),
            humantime::format_duration(self.commit_window).to_string(),
            "--keep-snapshots".to_string(),
            self.keep_snapshots.to_string(),
        ];
        if let Some(n) = self.unacked_max {
            a.push("--unacked-max".to_string());
            a.push(n.to_string());
        }
        if let Some(seed) = self.seed {
            a.push("--seed".to_string());
            a.push(seed.wrapping_add(seed_offset).to_string());
        }
        if let Some(level) = &self.log_level {
            a.push("--log-level".to_string());
            a.push(level.clone());
        }
        a
    }
}

/// Unacknowledged transfers per outgoing channel of one of `branches` branches, by default.
pub fn default_unacked_max(branches: usize) -> u64 {
    (UNACKED_PER_BRANCH / branches.saturating_sub(1).max(1) as u64).clamp(64, 8192)
}

/// The default in-flight budget of one branch, shared by its outgoing channels.
const UNACKED_PER_BRANCH: u64 = 4096;

fn parse_nonzero_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("'{s}': {e}"))?;
    if d.is_zero() {
        return Err("must be greater than zero".to_string());
    }
    Ok(d)
}

/// Where stores live.
#[derive(Args, Clone, Debug)]
pub struct DataDir {
    /// Directory holding one store per branch (`DIR/<ip>_<port>`).
    #[arg(long, default_value = "data", value_name = "DIR")]
    pub data_dir: PathBuf,
}

/// How a branch proves who it is and protects its links.
#[derive(Args, Clone, Debug)]
pub struct KeyArgs {
    /// The cluster key file (default: cluster.key in --data-dir). Make one with `snapctl keygen`
    /// (start_bank makes one when none exists) and copy it to every host, like host.list.
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    pub key: Option<PathBuf>,
    /// Run without authentication or encryption: any process that reaches a branch's port could
    /// move money. For experiments only; every branch of the cluster must then run with it.
    #[arg(long)]
    pub insecure: bool,
}

impl KeyArgs {
    /// The key file to use.
    pub fn path(&self, data: &DataDir) -> PathBuf {
        self.key
            .clone()
            .unwrap_or_else(|| data.data_dir.join(DEFAULT_KEY_FILE))
    }
}

/// Name of the key file in the data directory when `--key` is not given.
pub const DEFAULT_KEY_FILE: &str = "cluster.key";

/// Logs to stderr; `level` (if any) wins over `RUST_LOG`, default `info`.
pub fn init_logging(level: Option<&str>) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let spec = match level {
        Some(l) => {
            EnvFilter::try_new(l).map_err(|e| format!("bad --log-level '{l}': {e}"))?;
            l.to_string()
        }
        None => std::env::var("RUST_LOG")
            .ok()
            .filter(|s| EnvFilter::try_new(s).is_ok())
            .unwrap_or_else(|| "info".to_string()),
    };
    // sled logs what it finds wrong in a damaged store, which the branch then reports in its one
    // error line naming the store; its lines stay out unless the filter names sled
    // (`--log-level info,sled=warn`).
    let filter = if spec.contains("sled") || spec.trim().is_empty() {
        EnvFilter::new(spec)
    } else {
        EnvFilter::new(format!("{spec},sled=off"))
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}

/// An error and its causes on one line, each cause once (an error whose message already quotes
/// its source, like "cannot listen on ADDR: Address in use", would otherwise repeat it).
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line.replace('\n', " ")
}

/// The audit as a table for people.
pub fn format_audit(r: &AuditReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let w = r
        .branches
        .iter()
        .map(|b| b.branch.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let _ = writeln!(
        s,
        "{:<w$}  {:>14}  {:>12}  {:>12}  {:>9}  {:>12}  {:>6}",
        "branch", "balance", "sent", "applied", "in flight", "flight money", "parts"
    );
    for b in &r.branches {
        let _ = writeln!(
            s,
            "{:<w$}  {:>14}  {:>12}  {:>12}  {:>9}  {:>12}  {:>6}",
            b.branch,
            b.balance,
            b.sent,
            b.applied,
            b.in_flight,
            b.in_flight_money,
            b.snapshot_parts
        );
    }
    let _ = writeln!(
        s,
        "total {} (expected {}); transfers applied {}; snapshots checked {} (last {}, pending {})",
        r.current_total,
        r.expected_total,
        r.transfers,
        r.snapshots_checked,
        r.last_snapshot
            .map_or("none".to_string(), |k| k.to_string()),
        r.snapshots_pending
    );
    if r.history_from > 0 {
        let _ = writeln!(
            s,
            "transfer logs and ledgers checked from snapshot {} on (older history compacted)",
            r.history_from
        );
    }
    if r.consistent {
        let _ = writeln!(s, "audit: CONSISTENT");
    } else {
        let _ = writeln!(s, "audit: INCONSISTENT, {} violations:", r.violations.len());
        for v in &r.violations {
            let _ = writeln!(s, "  - {v}");
        }
    }
    s
}
