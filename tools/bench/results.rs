//! The results: what a sweep measured, as printed and as written to the JSON file.

use anyhow::{Context, Result};
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Serialize)]
pub struct Report {
    pub started_unix_ms: u64,
    pub cpus: usize,
    pub bank: String,
    pub bank_has_stats_file: bool,
    pub bank_has_snapshot_phases: bool,
    pub duration_s: f64,
    pub transfer_interval: String,
    pub snapshot_interval_ms: f64,
    pub phase_ms: f64,
    pub insecure: bool,
    pub extra_bank_args: Vec<String>,
    pub dir: String,
    pub ok: bool,
    pub runs: Vec<RunResult>,
}

#[derive(Serialize, Default)]
pub struct RunResult {
    pub branches: usize,
    pub dir: String,
    /// Measured, every branch stopped cleanly and the audit is consistent.
    pub ok: bool,
    pub failures: Vec<String>,
    pub notes: Vec<String>,
    /// Start of the processes to the first completed snapshot.
    pub warmup_s: Option<f64>,
    pub window: Option<Window>,
    pub throughput: Option<Throughput>,
    pub latency: Option<Latency>,
    pub snapshots: Option<SnapshotLatency>,
    pub overhead: Option<Overhead>,
    pub recovery: Option<Recovery>,
    /// The last branch's start (the bench's spawn) to every branch having had every link up,
    /// both ways (their stats files' `mesh_up_unix_ms`), ms.
    pub mesh_up_ms: Option<f64>,
    pub cpu: Option<Cpu>,
    pub peak_rss_kb: Option<Spread>,
    pub store_bytes: Option<Spread>,
    pub per_branch: Vec<BranchResult>,
    pub audit: Option<AuditSummary>,
}

#[derive(Serialize, Clone, Copy)]
pub struct Window {
    pub start_unix_ms: u64,
    pub end_unix_ms: u64,
    pub seconds: f64,
}

impl Window {
    pub fn bounds(&self) -> (SystemTime, SystemTime) {
        (
            UNIX_EPOCH + Duration::from_millis(self.start_unix_ms),
            UNIX_EPOCH + Duration::from_millis(self.end_unix_ms),
        )
    }
}

#[derive(Serialize)]
pub struct Throughput {
    pub transfers_per_s: f64,
    pub transfers: u64,
    pub seconds: f64,
    /// "stats phases", "stats counters" or "log status lines".
    pub source: String,
    /// Cross-check from the `transfers_sent` counters (stats files read at both window ends).
    pub counters_transfers_per_s: Option<f64>,
    pub phases: Vec<PhaseRate>,
}

#[derive(Serialize)]
pub struct PhaseRate {
    pub index: u64,
    pub snapshots_on: bool,
    pub transfers: u64,
    pub transfers_per_s: f64,
}

#[derive(Serialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p99_us: u64,
    pub count: u64,
    /// "merged histograms (window)", "merged histograms (since start)" or "max of per-branch".
    pub source: String,
}

#[derive(Serialize)]
pub struct SnapshotLatency {
    pub count: usize,
    pub per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub max_ms: f64,
    pub source: String,
}

#[derive(Serialize)]
pub struct Overhead {
    /// Transfers/s with snapshots divided by transfers/s without.
    pub ratio: f64,
    pub on_transfers_per_s: f64,
    pub off_transfers_per_s: f64,
    pub on_phases: usize,
    pub off_phases: usize,
}

#[derive(Serialize, Default)]
pub struct Recovery {
    pub branch: String,
    /// Process start to store opened and recovered (as the restarted process measured it).
    pub store_open_ms: Option<f64>,
    /// Process start to first new transfer committed and handed to its link.
    pub first_transfer_ms: Option<f64>,
    /// Process start to every link of the restarted branch up, both ways.
    #[serde(default)]
    pub mesh_up_ms: Option<f64>,
    /// Bench's own clock: spawn to reading a stats file that shows the first transfer
    /// (includes up to one --status-interval of write delay).
    pub observed_ms: Option<f64>,
    pub source: String,
}

/// CPU the branches used in the window (`/proc/<pid>/stat`, user + system).
#[derive(Serialize, Clone, Copy)]
pub struct Cpu {
    /// Summed over the branches.
    pub cpu_s: f64,
    /// Cores kept busy on average: `cpu_s` over the window.
    pub cores: f64,
    /// CPU per transfer sent in the window, µs.
    pub us_per_transfer: Option<f64>,
    /// Most threads any branch had at the window's end.
    pub threads_max: Option<u64>,
}

#[derive(Serialize, Clone, Copy)]
pub struct Spread {
    pub min: f64,
    pub mean: f64,
    pub max: f64,
}

#[derive(Serialize, Default)]
pub struct BranchResult {
    pub addr: String,
    pub peak_rss_kb: Option<u64>,
    /// Branch 1: the peak of the process killed by the recovery probe.
    pub peak_rss_kb_before_kill: Option<u64>,
    pub store_bytes: u64,
    pub store_bytes_on_disk: u64,
    pub transfers_sent_window: Option<u64>,
    pub exit: Option<String>,
    pub log_warnings: usize,
    pub log_errors: usize,
}

#[derive(Serialize)]
pub struct AuditSummary {
    pub consistent: bool,
    pub violations: Vec<String>,
    pub transfers: u64,
    pub snapshots_checked: usize,
    pub last_snapshot: Option<u64>,
    pub snapshots_pending: u64,
}

/// Writes the results to `path` atomically ([`snapbank::durable::write_atomic`]): a reader, or
/// a bench killed mid-write, sees the previous results or the new ones, never half a file.
pub fn write_json(path: &Path, report: &Report) -> Result<()> {
    let text = serde_json::to_string_pretty(report).context("encode the results")? + "\n";
    snapbank::durable::write_atomic(path, text.as_bytes(), None)
        .with_context(|| format!("write {}", path.display()))
}
