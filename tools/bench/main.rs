//! `bench`: how fast is a snapbank cluster, and does it stay correct at that speed?
//!
//! For each N of `--branches` (default 4, 16, 32, 64) it starts N `bank` processes on 127.0.0.1
//! at full speed (`--transfer-interval 0s`) with a snapshot every `--snapshot-interval`, waits for
//! the first snapshot to complete, measures for `--duration`, then kills branch 1 with SIGKILL and
//! restarts it (recovery probe), reads every branch's peak RSS, stops the cluster with SIGTERM,
//! sums each branch's store size and audits the stores. It reports, per N and as a summary table,
//! and as JSON (`--json`, default `DIR/bench.json`):
//!
//! - transfers/s across the cluster (transfers sent, i.e. debits committed);
//! - per-transfer latency p50/p99 (debit commit to the acknowledgement covering it), from the
//!   branches' merged latency histograms;
//! - snapshot latency p50/p99 (start to global completion at the initiator) under that load;
//! - snapshot overhead: with `--snapshot-phases`, `bank` starts snapshots only in even wall-clock
//!   phases of `--phase`, so transfers/s in "on" phases divided by transfers/s in "off" phases,
//!   measured in the same run, is the cost of taking snapshots every `--snapshot-interval`;
//! - recovery: after `kill -9` of branch 1, the restarted process's time from start to store
//!   opened and recovered, and to its first new transfer handed to a link;
//! - peak RSS (VmHWM) and store bytes per branch at the end;
//! - the audit verdict: a run whose stores do not audit consistent is a failed run.
//!
//! The figures come from `bank --stats-file` (JSON rewritten every `--status-interval`). With a
//! `bank` that has no `--stats-file`, transfers/s and snapshot latency come from the logs' status
//! and `snapshot K complete in X ms` lines, and latency, overhead and time to first transfer are
//! reported as unavailable.
//!
//!     cargo build --release && ./target/release/bench --branches 4,16 --duration 10s
//!
//! Exit status: 0 every run consistent and measured, 1 a run failed (audit, crash, timeout),
//! 2 cannot run, 130 interrupted (every `bank` it started is stopped first).

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use serde::Serialize;
use serde_json::Value;
use snapbank::audit::audit;
use snapbank::hosts::HostList;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "bench",
    version,
    about = "measure a snapbank cluster at full speed: throughput, latencies, snapshot overhead, recovery, memory, store size, audit"
)]
struct Args {
    /// Cluster sizes to run, one after the other.
    #[arg(long, value_delimiter = ',', default_value = "4,16,32,64", value_parser = clap::value_parser!(u16).range(2..=snapbank::wire::BRANCHES_MAX as i64))]
    branches: Vec<u16>,
    /// Measurement window of each run (after the first snapshot completed).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Each branch's `--transfer-interval`: `0s` is full speed; a fixed interval paces the load
    /// (e.g. `13333ns`: 75,000 transfers/s per branch, 300,000/s across 4).
    #[arg(long, default_value = "0s", value_name = "DURATION")]
    transfer_interval: String,
    /// Snapshot interval of the initiator (during "on" phases).
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    snapshot_interval: Duration,
    /// Length of the alternating snapshots-on (even) / snapshots-off (odd) wall-clock phases.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    phase: Duration,
    /// Where to put the runs (DIR/n<N>: host.list, logs, stats, stores) and bench.json
    /// (default: a new directory under the temporary directory).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Write the results as JSON here (default: DIR/bench.json).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Keep the stores of consistent runs (they are deleted otherwise; logs and stats stay).
    #[arg(long)]
    keep: bool,
    /// Run the branches without authentication or encryption (no cluster key).
    #[arg(long)]
    insecure: bool,
    /// More arguments for every `bank`, split at whitespace (e.g. "--unacked-max 1024").
    #[arg(
        long,
        default_value = "",
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    extra_bank_args: String,
    /// Measure from the logs even if bank has --stats-file (to check the fallback).
    #[arg(long, hide = true)]
    from_logs: bool,
}

// ---------------------------------------------------------------------------------------------
// Results (the JSON output)

#[derive(Serialize)]
struct Report {
    started_unix_ms: u64,
    cpus: usize,
    bank: String,
    bank_has_stats_file: bool,
    bank_has_snapshot_phases: bool,
    duration_s: f64,
    transfer_interval: String,
    snapshot_interval_ms: f64,
    phase_ms: f64,
    insecure: bool,
    extra_bank_args: Vec<String>,
    dir: String,
    ok: bool,
    runs: Vec<RunResult>,
}

#[derive(Serialize, Default)]
struct RunResult {
    branches: usize,
    dir: String,
    /// Measured, every branch stopped cleanly and the audit is consistent.
    ok: bool,
    failures: Vec<String>,
    notes: Vec<String>,
    /// Start of the processes to the first completed snapshot.
    warmup_s: Option<f64>,
    window: Option<Window>,
    throughput: Option<Throughput>,
    latency: Option<Latency>,
    snapshots: Option<SnapshotLatency>,
    overhead: Option<Overhead>,
    recovery: Option<Recovery>,
    peak_rss_kb: Option<Spread>,
    store_bytes: Option<Spread>,
    per_branch: Vec<BranchResult>,
    audit: Option<AuditSummary>,
}

#[derive(Serialize, Clone, Copy)]
struct Window {
    start_unix_ms: u64,
    end_unix_ms: u64,
    seconds: f64,
}

impl Window {
    fn bounds(&self) -> (SystemTime, SystemTime) {
        (
            UNIX_EPOCH + Duration::from_millis(self.start_unix_ms),
            UNIX_EPOCH + Duration::from_millis(self.end_unix_ms),
        )
    }
}

#[derive(Serialize)]
struct Throughput {
    transfers_per_s: f64,
    transfers: u64,
    seconds: f64,
    /// "stats phases", "stats counters" or "log status lines".
    source: String,
    /// Cross-check from the `transfers_sent` counters (stats files read at both window ends).
    counters_transfers_per_s: Option<f64>,
    phases: Vec<PhaseRate>,
}

#[derive(Serialize)]
struct PhaseRate {
    index: u64,
    snapshots_on: bool,
    transfers: u64,
    transfers_per_s: f64,
}

#[derive(Serialize)]
struct Latency {
    p50_us: u64,
    p99_us: u64,
    count: u64,
    /// "merged histograms (window)", "merged histograms (since start)" or "max of per-branch".
    source: String,
}

#[derive(Serialize)]
struct SnapshotLatency {
    count: usize,
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    mean_ms: f64,
    max_ms: f64,
    source: String,
}

#[derive(Serialize)]
struct Overhead {
    /// Transfers/s with snapshots divided by transfers/s without.
    ratio: f64,
    on_transfers_per_s: f64,
    off_transfers_per_s: f64,
    on_phases: usize,
    off_phases: usize,
}

#[derive(Serialize, Default)]
struct Recovery {
    branch: String,
    /// Process start to store opened and recovered (as the restarted process measured it).
    store_open_ms: Option<f64>,
    /// Process start to first new transfer committed and handed to its link.
    first_transfer_ms: Option<f64>,
    /// Bench's own clock: spawn to reading a stats file that shows the first transfer
    /// (includes up to one --status-interval of write delay).
    observed_ms: Option<f64>,
    source: String,
}

#[derive(Serialize, Clone, Copy)]
struct Spread {
    min: f64,
    mean: f64,
    max: f64,
}

#[derive(Serialize, Default)]
struct BranchResult {
    addr: String,
    peak_rss_kb: Option<u64>,
    /// Branch 1: the peak of the process killed by the recovery probe.
    peak_rss_kb_before_kill: Option<u64>,
    store_bytes: u64,
    store_bytes_on_disk: u64,
    transfers_sent_window: Option<u64>,
    exit: Option<String>,
    log_warnings: usize,
    log_errors: usize,
}

#[derive(Serialize)]
struct AuditSummary {
    consistent: bool,
    violations: Vec<String>,
    transfers: u64,
    snapshots_checked: usize,
    last_snapshot: Option<u64>,
    snapshots_pending: u64,
}

// ---------------------------------------------------------------------------------------------
// Signals: Ctrl-C / SIGTERM set a flag that every wait checks; the cluster guard stops the banks.

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let sa = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        sigaction(Signal::SIGINT, &sa).context("install the SIGINT handler")?;
        sigaction(Signal::SIGTERM, &sa).context("install the SIGTERM handler")?;
    }
    Ok(())
}

fn interrupted() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Sleeps `d`, returning early with an error on Ctrl-C.
fn pause(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        if interrupted() {
            bail!("interrupted");
        }
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn secs_between(a: SystemTime, b: SystemTime) -> f64 {
    match b.duration_since(a) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

// ---------------------------------------------------------------------------------------------
// The cluster: every child it started is killed when it is dropped.

struct Node {
    addr: String,
    log: PathBuf,
    stats: PathBuf,
    store: PathBuf,
    child: Option<Child>,
    spawned_at: Option<(Instant, SystemTime)>,
    exit: Option<String>,
}

struct Cluster {
    bank: PathBuf,
    common: Vec<String>,
    stats_file: bool,
    nodes: Vec<Node>,
}

impl Cluster {
    fn start(&mut self, i: usize) -> Result<()> {
        let node = &mut self.nodes[i];
        if node.child.is_some() {
            bail!("branch {} is already running", node.addr);
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .with_context(|| format!("open {}", node.log.display()))?;
        let err = log.try_clone().context("clone the log file handle")?;
        let mut cmd = Command::new(&self.bank);
        cmd.arg(&node.addr).args(&self.common);
        // If bench itself dies without cleaning up (kill -9), the kernel kills the branch too.
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        if self.stats_file {
            cmd.arg("--stats-file").arg(&node.stats);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .with_context(|| format!("start {}", self.bank.display()))?;
        node.spawned_at = Some((Instant::now(), SystemTime::now()));
        node.child = Some(child);
        node.exit = None;
        Ok(())
    }

    /// The pid of branch `i` if it is a running child of ours (not yet reaped).
    fn live_pid(&mut self, i: usize) -> Option<u32> {
        let c = self.nodes[i].child.as_mut()?;
        match c.try_wait() {
            Ok(None) => Some(c.id()),
            _ => None,
        }
    }

    /// An error naming every branch that exited on its own, with the end of its log.
    fn check_alive(&mut self) -> Result<()> {
        let mut dead = Vec::new();
        for n in &mut self.nodes {
            if let Some(c) = &mut n.child {
                if let Ok(Some(st)) = c.try_wait() {
                    n.exit = Some(st.to_string());
                    n.child = None;
                    dead.push(format!("{} exited ({st}): {}", n.addr, log_tail(&n.log, 3)));
                }
            }
        }
        if dead.is_empty() {
            Ok(())
        } else {
            Err(anyhow!("branches died: {}", dead.join(" | ")))
        }
    }

    fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            if let Ok(st) = c.wait() {
                self.nodes[i].exit = Some(st.to_string());
            }
        }
    }

    /// SIGTERM to every running branch, then waits up to `wait` (from the signal) for each;
    /// kills what is left. Returns the branches that did not exit 0.
    fn stop_all(&mut self, wait: Duration) -> Vec<String> {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        for i in 0..self.nodes.len() {
            if let Some(pid) = self.live_pid(i) {
                if let Ok(pid) = i32::try_from(pid) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                }
            }
        }
        let deadline = Instant::now() + wait;
        let mut bad = Vec::new();
        for n in &mut self.nodes {
            let Some(mut c) = n.child.take() else {
                continue;
            };
            let st = loop {
                match c.try_wait() {
                    Ok(Some(st)) => break Some(st),
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break None;
                    }
                }
            };
            match st {
                Some(st) if st.success() => n.exit = Some(st.to_string()),
                Some(st) => {
                    n.exit = Some(st.to_string());
                    bad.push(format!("{} exited {st}: {}", n.addr, log_tail(&n.log, 2)));
                }
                None => {
                    n.exit = Some(format!("killed after {wait:?} without exiting"));
                    bad.push(format!(
                        "{} did not exit within {wait:?} of SIGTERM",
                        n.addr
                    ));
                }
            }
        }
        bad
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Logs

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = text.lines().rev().take(lines).collect();
    v.into_iter().rev().collect::<Vec<_>>().join(" / ")
}

/// The timestamp at the start of a tracing log line.
fn line_time(line: &str) -> Option<SystemTime> {
    let tok = line.split_whitespace().next()?;
    humantime::parse_rfc3339_weak(tok).ok()
}

/// `snapshot K complete in X ms` lines: (time, id, ms).
fn completed_snapshots(log: &str) -> Vec<(Option<SystemTime>, u64, f64)> {
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find("snapshot ")? + 9..];
            let (id, rest) = rest.split_once(' ')?;
            let rest = rest.strip_prefix("complete in ")?;
            let (ms, _) = rest.split_once(" ms")?;
            Some((line_time(l), id.parse().ok()?, ms.parse().ok()?))
        })
        .collect()
}

/// Status lines `branch ADDR: balance B, sent S, ...`: (time, sent).
fn status_sent(log: &str, addr: &str) -> Vec<(SystemTime, u64)> {
    let key = format!("branch {addr}: balance ");
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find(&key)? + key.len()..];
            let rest = &rest[rest.find(", sent ")? + 7..];
            let sent = rest.split(',').next()?.trim().parse().ok()?;
            Some((line_time(l)?, sent))
        })
        .collect()
}

/// Counts of WARN and ERROR lines, and up to four distinct messages of them (digits ignored).
fn log_problems(log: &str) -> (usize, usize, Vec<String>) {
    let (mut w, mut e) = (0, 0);
    let mut shapes = BTreeSet::new();
    let mut samples = Vec::new();
    for l in log.lines() {
        let level = if l.contains(" WARN ") {
            w += 1;
            "WARN"
        } else if l.contains(" ERROR ") || l.starts_with("bank: error") {
            e += 1;
            "ERROR"
        } else {
            continue;
        };
        let msg = l.split_once(level).map_or(l, |(_, m)| m).trim();
        let shape: String = msg.chars().filter(|c| !c.is_ascii_digit()).collect();
        if samples.len() < 4 && shapes.insert(shape) {
            samples.push(format!("{level} {msg}"));
        }
    }
    (w, e, samples)
}

// ---------------------------------------------------------------------------------------------
// Stats files

/// One branch's stats file as read at one moment.
#[derive(Clone)]
struct Stats {
    v: Value,
    modified: Option<SystemTime>,
}

impl Stats {
    fn read(path: &Path) -> Option<Stats> {
        let text = std::fs::read(path).ok()?;
        let v: Value = serde_json::from_slice(&text).ok()?;
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        Some(Stats { v, modified })
    }

    fn f64(&self, key: &str) -> Option<f64> {
        self.v.get(key)?.as_f64()
    }

    fn u64(&self, key: &str) -> Option<u64> {
        let x = self.v.get(key)?;
        x.as_u64().or_else(|| x.as_f64().map(|f| f as u64))
    }

    fn pid(&self) -> Option<u64> {
        self.u64("pid")
    }

    /// Latency histogram buckets: upper bound in µs -> count.
    fn buckets(&self) -> Option<BTreeMap<u64, u64>> {
        let arr = self.v.get("latency_us")?.get("buckets")?.as_array()?;
        let mut m = BTreeMap::new();
        for b in arr {
            let pair = b.as_array()?;
            let num = |x: &Value| x.as_u64().or_else(|| x.as_f64().map(|f| f as u64));
            let upper = num(pair.first()?)?;
            let count = num(pair.get(1)?)?;
            *m.entry(upper).or_insert(0) += count;
        }
        Some(m)
    }

    fn latency(&self, key: &str) -> Option<u64> {
        let x = self.v.get("latency_us")?.get(key)?;
        x.as_u64().or_else(|| x.as_f64().map(|f| f as u64))
    }

    /// Completed snapshots (initiator): id -> duration in µs.
    fn snapshots(&self) -> BTreeMap<u64, u64> {
        let mut m = BTreeMap::new();
        if let Some(arr) = self.v.get("snapshots").and_then(Value::as_array) {
            for s in arr {
                if let (Some(id), Some(d)) = (
                    s.get("id").and_then(Value::as_u64),
                    s.get("duration_us")
                        .and_then(|d| d.as_u64().or_else(|| d.as_f64().map(|f| f as u64))),
                ) {
                    m.insert(id, d);
                }
            }
        }
        m
    }

    /// Transfers per phase index, and the phase length in ms.
    fn phases(&self) -> Option<(u64, BTreeMap<u64, u64>)> {
        let p = self.v.get("phases")?;
        let len = p.get("length_ms")?.as_u64()?;
        let mut m = BTreeMap::new();
        for (k, v) in p.get("transfers")?.as_object()? {
            if let (Ok(k), Some(v)) = (k.parse::<u64>(), v.as_u64()) {
                m.insert(k, v);
            }
        }
        Some((len, m))
    }
}

fn read_all_stats(cluster: &Cluster) -> Vec<Option<Stats>> {
    cluster
        .nodes
        .iter()
        .map(|n| Stats::read(&n.stats))
        .collect()
}

/// Waits until every branch's stats file was written at or after `after` (so it holds counts of
/// every phase that ended by then); returns what it read.
fn fresh_stats(
    cluster: &mut Cluster,
    after: SystemTime,
    timeout: Duration,
) -> Result<Vec<Option<Stats>>> {
    let end = Instant::now() + timeout;
    loop {
        cluster.check_alive()?;
        let all = read_all_stats(cluster);
        let fresh = all.iter().all(|s| {
            s.as_ref()
                .is_some_and(|s| s.modified.is_some_and(|m| m >= after))
        });
        if fresh || Instant::now() >= end {
            if !fresh {
                let stale: Vec<&str> = cluster
                    .nodes
                    .iter()
                    .zip(&all)
                    .filter(|(_, s)| {
                        !s.as_ref()
                            .is_some_and(|s| s.modified.is_some_and(|m| m >= after))
                    })
                    .map(|(n, _)| n.addr.as_str())
                    .collect();
                eprintln!(
                    "bench: stats files not rewritten within {timeout:?}: {}",
                    stale.join(", ")
                );
            }
            return Ok(all);
        }
        pause(Duration::from_millis(50))?;
    }
}

fn percentile_sorted(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn hist_percentile(h: &BTreeMap<u64, u64>, q: f64) -> Option<u64> {
    let total: u64 = h.values().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).max(1);
    let mut cum = 0;
    for (&upper, &c) in h {
        cum += c;
        if cum >= rank {
            return Some(upper);
        }
    }
    h.keys().next_back().copied()
}

fn spread(v: &[f64]) -> Option<Spread> {
    if v.is_empty() {
        return None;
    }
    Some(Spread {
        min: v.iter().copied().fold(f64::INFINITY, f64::min),
        mean: v.iter().sum::<f64>() / v.len() as f64,
        max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    })
}

/// Apparent and allocated bytes of every file under `dir`.
fn dir_bytes(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut len, mut disk) = (0, 0);
    let Ok(rd) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    for e in rd.flatten() {
        let Ok(m) = e.path().symlink_metadata() else {
            continue;
        };
        if m.is_dir() {
            let (l, d) = dir_bytes(&e.path());
            len += l;
            disk += d;
        } else {
            len += m.len();
            disk += m.blocks() * 512;
        }
    }
    (len, disk)
}

fn peak_rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// N ports free on 127.0.0.1, below the kernel's ephemeral range when there is room (so the
/// branches' thousands of outgoing connections cannot take a port a late branch will listen on).
fn free_ports(n: usize, salt: u64) -> Result<Vec<u16>> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok();
    let low: u64 = range
        .as_deref()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let floor = 10_000u64;
    let mut held = Vec::new();
    if low > floor + 4 * n as u64 {
        let span = low - floor;
        let start = (u64::from(std::process::id()) * 7919 + salt * 104_729) % span;
        for k in 0..span {
            if held.len() == n {
                break;
            }
            let port = (floor + (start + k) % span) as u16;
            if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
                held.push(l);
            }
        }
    }
    while held.len() < n {
        held.push(TcpListener::bind("127.0.0.1:0").context("bind an ephemeral port")?);
    }
    held.iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect::<Result<_>>()
}

// ---------------------------------------------------------------------------------------------

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn bank_features(bank: &Path) -> Result<(bool, bool)> {
    let out = Command::new(bank)
        .arg("--help")
        .output()
        .with_context(|| format!("run {} --help", bank.display()))?;
    let help = String::from_utf8_lossy(&out.stdout);
    Ok((
        help.contains("--stats-file"),
        help.contains("--snapshot-phases"),
    ))
}

fn run(args: Args) -> Result<ExitCode> {
    install_signal_handlers()?;
    let bank = std::env::current_exe()
        .context("where is bench")?
        .parent()
        .map(|d| d.join("bank"))
        .filter(|p| p.is_file())
        .ok_or_else(|| {
            anyhow!("cannot find the `bank` binary next to bench (cargo build --release)")
        })?;
    let (mut has_stats, mut has_phases) = bank_features(&bank)?;
    if args.from_logs {
        (has_stats, has_phases) = (false, false);
    }
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("snapbank-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let json_path = args.json.clone().unwrap_or_else(|| dir.join("bench.json"));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "bench: branches {:?}, {} per run, snapshots every {} in alternating {} phases, {} cpus, files in {}",
        args.branches,
        humantime::format_duration(args.duration),
        humantime::format_duration(args.snapshot_interval),
        humantime::format_duration(args.phase),
        cpus,
        dir.display()
    );
    if !has_stats {
        println!("bench: this bank has no --stats-file: transfers/s and snapshot latency come from the logs; latency, overhead and time to first transfer are unavailable");
    } else if !has_phases {
        println!("bench: this bank has no --snapshot-phases: snapshot overhead is unavailable");
    }
    let mut report = Report {
        started_unix_ms: unix_ms(SystemTime::now()),
        cpus,
        bank: bank.display().to_string(),
        bank_has_stats_file: has_stats,
        bank_has_snapshot_phases: has_phases,
        duration_s: args.duration.as_secs_f64(),
        transfer_interval: args.transfer_interval.clone(),
        snapshot_interval_ms: args.snapshot_interval.as_secs_f64() * 1e3,
        phase_ms: args.phase.as_secs_f64() * 1e3,
        insecure: args.insecure,
        extra_bank_args: args
            .extra_bank_args
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        dir: dir.display().to_string(),
        ok: true,
        runs: Vec::new(),
    };
    for (k, &n) in args.branches.iter().enumerate() {
        if interrupted() {
            break;
        }
        let r = run_one(
            &args, &bank, has_stats, has_phases, n as usize, &dir, k as u64,
        );
        print_run(&r);
        report.ok &= r.ok;
        report.runs.push(r);
        write_json(&json_path, &report)?;
    }
    print_summary(&report);
    write_json(&json_path, &report)?;
    println!("bench: results in {}", json_path.display());
    if interrupted() {
        println!("bench: interrupted");
        return Ok(ExitCode::from(130));
    }
    println!("bench: verdict {}", if report.ok { "OK" } else { "FAILED" });
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn write_json(path: &Path, report: &Report) -> Result<()> {
    let text = serde_json::to_string_pretty(report).context("encode the results")?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text + "\n").with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

const RUN_MARKER: &str = ".snapbank-bench-run";

/// Sets up DIR/n<N> and runs one cluster size; failures are recorded in the result.
fn run_one(
    args: &Args,
    bank: &Path,
    has_stats: bool,
    has_phases: bool,
    n: usize,
    dir: &Path,
    salt: u64,
) -> RunResult {
    let run_dir = dir.join(format!("n{n}"));
    let mut r = RunResult {
        branches: n,
        dir: run_dir.display().to_string(),
        ..Default::default()
    };
    println!(
        "\nbench: N={n}: starting {n} branches in {}",
        run_dir.display()
    );
    let mut cluster = match setup(args, bank, has_stats, has_phases, n, &run_dir, salt) {
        Ok(c) => c,
        Err(e) => {
            r.failures.push(format!("setup: {e:#}"));
            return r;
        }
    };
    let measured = measure(args, &mut cluster, has_stats, has_phases, &mut r);
    if let Err(e) = &measured {
        r.failures.push(format!("{e:#}"));
    }
    // Peak RSS just before stopping (branch 1: the restarted process).
    let mut rss = Vec::new();
    for i in 0..n {
        if r.per_branch.len() <= i {
            r.per_branch.push(BranchResult {
                addr: cluster.nodes[i].addr.clone(),
                ..Default::default()
            });
        }
        let kb = cluster.live_pid(i).and_then(peak_rss_kb);
        r.per_branch[i].peak_rss_kb = kb;
        if let Some(kb) = kb {
            rss.push(kb as f64);
        }
    }
    if n > 1 && r.recovery.is_some() {
        r.notes.push(format!(
            "peak RSS of {} is the restarted process's (recovery probe); the killed one's is peak_rss_kb_before_kill",
            cluster.nodes[1].addr
        ));
    }
    r.peak_rss_kb = spread(&rss);
    let wait = if interrupted() {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(60)
    };
    let stopping = Instant::now();
    let bad = cluster.stop_all(wait);
    let stop_s = stopping.elapsed().as_secs_f64();
    if !bad.is_empty() {
        r.failures
            .push(format!("branches did not stop cleanly: {}", bad.join("; ")));
    }
    r.notes.push(format!(
        "stopped all branches in {stop_s:.1} s after SIGTERM"
    ));
    let mut store = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let (len, disk) = dir_bytes(&node.store);
        let log = std::fs::read_to_string(&node.log).unwrap_or_default();
        let (w, e, _) = log_problems(&log);
        let b = &mut r.per_branch[i];
        b.store_bytes = len;
        b.store_bytes_on_disk = disk;
        b.exit = node.exit.clone();
        b.log_warnings = w;
        b.log_errors = e;
        store.push(len as f64);
    }
    r.store_bytes = spread(&store);
    let problems: Vec<String> = cluster
        .nodes
        .iter()
        .flat_map(|n| {
            let log = std::fs::read_to_string(&n.log).unwrap_or_default();
            log_problems(&log)
                .2
                .into_iter()
                .map(|m| format!("{}: {m}", n.addr))
                .collect::<Vec<_>>()
        })
        .take(6)
        .collect();
    if !problems.is_empty() {
        r.notes.push(format!(
            "log warnings/errors (samples): {}",
            problems.join(" | ")
        ));
    }
    if interrupted() {
        if !r.failures.iter().any(|f| f == "interrupted") {
            r.failures.push("interrupted".to_string());
        }
        return r;
    }
    // The audit: a fast run that loses money is a failed run.
    let hosts_text = std::fs::read_to_string(run_dir.join("host.list")).unwrap_or_default();
    let audited = HostList::parse(&hosts_text, "host.list")
        .map_err(|e| anyhow!("host.list: {e}"))
        .and_then(|h| audit(&run_dir.join("data"), Some(&h)).map_err(|e| anyhow!("audit: {e}")));
    match audited {
        Ok(a) => {
            if !a.consistent {
                r.failures.push(format!(
                    "audit INCONSISTENT: {} violations",
                    a.violations.len()
                ));
            }
            r.audit = Some(AuditSummary {
                consistent: a.consistent,
                violations: a.violations,
                transfers: a.transfers,
                snapshots_checked: a.snapshots_checked,
                last_snapshot: a.last_snapshot,
                snapshots_pending: a.snapshots_pending,
            });
        }
        Err(e) => r.failures.push(format!("{e:#}")),
    }
    let log0 = std::fs::read_to_string(&cluster.nodes[0].log).unwrap_or_default();
    if log0.contains("MONEY NOT CONSERVED") {
        r.failures
            .push("the initiator logged a snapshot that does not conserve money".to_string());
    }
    r.ok = r.failures.is_empty();
    if r.ok && !args.keep && std::fs::remove_dir_all(run_dir.join("data")).is_ok() {
        r.notes
            .push("stores deleted after the audit (--keep keeps them)".to_string());
    }
    r
}

/// Writes host.list and the key, starts the branches.
fn setup(
    args: &Args,
    bank: &Path,
    has_stats: bool,
    has_phases: bool,
    n: usize,
    run_dir: &Path,
    salt: u64,
) -> Result<Cluster> {
    if run_dir.exists() {
        if run_dir.join(RUN_MARKER).is_file() {
            std::fs::remove_dir_all(run_dir)
                .with_context(|| format!("remove the old run {}", run_dir.display()))?;
        } else if std::fs::read_dir(run_dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
        {
            bail!(
                "{} exists and is not a bench run; choose another --dir",
                run_dir.display()
            );
        }
    }
    std::fs::create_dir_all(run_dir.join("stats"))
        .with_context(|| format!("create {}", run_dir.display()))?;
    std::fs::write(run_dir.join(RUN_MARKER), "")?;
    let data = run_dir.join("data");
    std::fs::create_dir_all(&data)?;
    let ports = free_ports(n, salt)?;
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let text: String = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{a}{}\n", if i == 0 { ":S" } else { "" }))
        .collect();
    let hosts_path = run_dir.join("host.list");
    std::fs::write(&hosts_path, &text)?;
    let hosts = HostList::parse(&text, "host.list").map_err(|e| anyhow!("host.list: {e}"))?;
    if !args.insecure {
        snapbank::secure::ClusterKey::generate(&hosts)
            .write(&data.join("cluster.key"), true)
            .map_err(|e| anyhow!("{e}"))?;
    }
    let mut common: Vec<String> = vec![
        "--hosts".into(),
        hosts_path.display().to_string(),
        "--data-dir".into(),
        data.display().to_string(),
        "--transfer-interval".into(),
        args.transfer_interval.clone(),
        "--snapshot-interval".into(),
        humantime::format_duration(args.snapshot_interval).to_string(),
        "--status-interval".into(),
        "1s".into(),
    ];
    if has_phases {
        common.push("--snapshot-phases".into());
        common.push(humantime::format_duration(args.phase).to_string());
    }
    if args.insecure {
        common.push("--insecure".into());
    }
    common.extend(args.extra_bank_args.split_whitespace().map(str::to_string));
    let mut cluster = Cluster {
        bank: bank.to_path_buf(),
        common,
        stats_file: has_stats,
        nodes: addrs
            .iter()
            .enumerate()
            .map(|(i, a)| Node {
                addr: a.clone(),
                log: run_dir.join(format!("bank{i}.log")),
                stats: run_dir.join("stats").join(format!("{i}.json")),
                store: data.join(a.replace(':', "_")),
                child: None,
                spawned_at: None,
                exit: None,
            })
            .collect(),
    };
    for i in 0..n {
        cluster.start(i)?;
    }
    Ok(cluster)
}

/// Warm-up, the measurement window, the recovery probe. Fills `r` as it goes.
fn measure(
    args: &Args,
    cluster: &mut Cluster,
    has_stats: bool,
    has_phases: bool,
    r: &mut RunResult,
) -> Result<()> {
    let n = cluster.nodes.len();
    r.per_branch = cluster
        .nodes
        .iter()
        .map(|nd| BranchResult {
            addr: nd.addr.clone(),
            ..Default::default()
        })
        .collect();
    // Counted from the last branch's start: at N = 64 on two cores, starting them all can take
    // half a minute while the first ones already run at full speed.
    let started = cluster
        .nodes
        .iter()
        .filter_map(|nd| nd.spawned_at.map(|(i, _)| i))
        .max()
        .unwrap_or_else(Instant::now);

    // Warm-up: until the initiator completes its first snapshot (every link up).
    let warmup_limit = Duration::from_secs_f64(10.0 + 1.0 * n as f64);
    loop {
        cluster.check_alive()?;
        let log = std::fs::read_to_string(&cluster.nodes[0].log).unwrap_or_default();
        if !completed_snapshots(&log).is_empty() {
            break;
        }
        if started.elapsed() > warmup_limit {
            let (mut broken, mut refused) = (0, 0);
            for nd in &cluster.nodes {
                let l = std::fs::read_to_string(&nd.log).unwrap_or_default();
                broken += l.matches("broken").count();
                refused += l.matches("refused").count();
            }
            bail!(
                "no snapshot completed within {warmup_limit:?} of start ({broken} 'broken' and {refused} 'refused' log lines); initiator log ends: {}",
                log_tail(&cluster.nodes[0].log, 3)
            );
        }
        pause(Duration::from_millis(100))?;
    }
    r.warmup_s = Some(started.elapsed().as_secs_f64());
    println!(
        "bench: N={n}: first snapshot complete after {:.1} s; measuring for {}",
        started.elapsed().as_secs_f64(),
        humantime::format_duration(args.duration)
    );

    // The window: from a phase boundary (so it holds whole phases) for --duration, wall clock.
    let now_ms = unix_ms(SystemTime::now());
    let t0_ms = if has_phases {
        let len = (args.phase.as_millis() as u64).max(1);
        now_ms.div_ceil(len) * len
    } else {
        now_ms
    };
    let t1_ms = t0_ms + args.duration.as_millis() as u64;
    wait_until_unix_ms(cluster, t0_ms)?;
    // Stats at the start: the first file each branch writes from t0 on (the end is read the same
    // way, so counters and histograms cover about --duration, shifted by under a status interval).
    let stats0 = if has_stats {
        let w = fresh_stats(
            cluster,
            UNIX_EPOCH + Duration::from_millis(t0_ms),
            Duration::from_secs_f64(5.0 + 0.1 * n as f64),
        )?;
        let missing = w.iter().filter(|s| s.is_none()).count();
        if missing > 0 {
            r.notes.push(format!(
                "{missing} branches had no readable stats file at the window start"
            ));
        }
        w
    } else {
        Vec::new()
    };
    wait_until_unix_ms(cluster, t1_ms)?;
    let t1 = UNIX_EPOCH + Duration::from_millis(t1_ms);
    let window = Window {
        start_unix_ms: t0_ms,
        end_unix_ms: t1_ms,
        seconds: (t1_ms - t0_ms) as f64 / 1000.0,
    };
    r.window = Some(window);

    if has_stats {
        let stats1 = fresh_stats(cluster, t1, Duration::from_secs_f64(5.0 + 0.1 * n as f64))?;
        // Keep the stats as they were at the end of the window (branch 1's file is replaced by
        // its restarted process's).
        for nd in &cluster.nodes {
            let _ = std::fs::copy(&nd.stats, nd.stats.with_extension("window-end.json"));
        }
        let log0 = std::fs::read_to_string(&cluster.nodes[0].log).unwrap_or_default();
        from_stats(args, has_phases, window, &stats0, &stats1, &log0, r);
    } else {
        from_logs(cluster, window, r);
    }

    // Recovery probe: kill -9 branch 1, restart it, time it.
    recovery(cluster, has_stats, r)?;
    // Let it run a moment so its peak RSS reflects catching up.
    pause(Duration::from_secs(1))?;
    cluster.check_alive()?;
    Ok(())
}

/// Sleeps until the wall clock reaches `ms` (Unix ms), checking that every branch still runs.
fn wait_until_unix_ms(cluster: &mut Cluster, ms: u64) -> Result<()> {
    let mut next_check = Instant::now();
    loop {
        let now = unix_ms(SystemTime::now());
        if now >= ms {
            return Ok(());
        }
        if Instant::now() >= next_check {
            cluster.check_alive()?;
            next_check = Instant::now() + Duration::from_millis(500);
        }
        pause(Duration::from_millis((ms - now).min(100)))?;
    }
}

/// Throughput, latency, snapshots and overhead from the stats files read at both window ends;
/// which snapshots completed inside the window comes from the initiator's log.
fn from_stats(
    args: &Args,
    has_phases: bool,
    window: Window,
    stats0: &[Option<Stats>],
    stats1: &[Option<Stats>],
    log0: &str,
    r: &mut RunResult,
) {
    let n = stats1.len();
    // Counters: per branch (sent at end - sent at start) / (uptime at end - uptime at start).
    let mut counter_rate = 0.0;
    let mut counter_ok = true;
    for i in 0..n {
        let (Some(a), Some(b)) = (
            stats0.get(i).and_then(Option::as_ref),
            stats1.get(i).and_then(Option::as_ref),
        ) else {
            counter_ok = false;
            continue;
        };
        match (
            a.u64("transfers_sent"),
            b.u64("transfers_sent"),
            a.f64("uptime_s"),
            b.f64("uptime_s"),
        ) {
            (Some(s0), Some(s1), Some(u0), Some(u1)) if u1 > u0 && a.pid() == b.pid() => {
                r.per_branch[i].transfers_sent_window = Some(s1.saturating_sub(s0));
                counter_rate += s1.saturating_sub(s0) as f64 / (u1 - u0);
            }
            _ => counter_ok = false,
        }
    }
    let counters = counter_ok.then_some(counter_rate);

    // Phases fully inside the window.
    let len_ms = (args.phase.as_millis() as u64).max(1);
    let first = window.start_unix_ms.div_ceil(len_ms);
    let last_end = window.end_unix_ms / len_ms; // phases < last_end end by t1
    let mut phases = Vec::new();
    let mut phase_note = None;
    if has_phases {
        let per_branch: Vec<Option<(u64, BTreeMap<u64, u64>)>> = stats1
            .iter()
            .map(|s| s.as_ref().and_then(Stats::phases))
            .collect();
        let usable = per_branch
            .iter()
            .all(|p| p.as_ref().is_some_and(|(l, _)| *l == len_ms));
        if !usable {
            phase_note = Some(
                "some stats files have no phases (or another phase length); throughput from counters"
                    .to_string(),
            );
        } else {
            for p in first..last_end {
                let t: u64 = per_branch
                    .iter()
                    .flatten()
                    .map(|(_, m)| m.get(&p).copied().unwrap_or(0))
                    .sum();
                phases.push(PhaseRate {
                    index: p,
                    snapshots_on: p % 2 == 0,
                    transfers: t,
                    transfers_per_s: t as f64 * 1000.0 / len_ms as f64,
                });
            }
            if phases.is_empty() {
                phase_note = Some(format!(
                    "no complete {len_ms} ms phase inside the window; throughput from counters"
                ));
            }
        }
    }
    if let Some(note) = phase_note {
        r.notes.push(note);
    }
    if !phases.is_empty() {
        let total: u64 = phases.iter().map(|p| p.transfers).sum();
        let secs = phases.len() as f64 * len_ms as f64 / 1000.0;
        let mean = |on: bool| {
            let v: Vec<f64> = phases
                .iter()
                .filter(|p| p.snapshots_on == on)
                .map(|p| p.transfers_per_s)
                .collect();
            (!v.is_empty()).then(|| (v.iter().sum::<f64>() / v.len() as f64, v.len()))
        };
        if let (Some((on, non)), Some((off, noff))) = (mean(true), mean(false)) {
            r.overhead = Some(Overhead {
                ratio: if off > 0.0 { on / off } else { f64::NAN },
                on_transfers_per_s: on,
                off_transfers_per_s: off,
                on_phases: non,
                off_phases: noff,
            });
        } else {
            r.notes.push(
                "snapshot overhead needs at least one complete on and one complete off phase"
                    .to_string(),
            );
        }
        r.throughput = Some(Throughput {
            transfers_per_s: total as f64 / secs,
            transfers: total,
            seconds: secs,
            source: "stats phases".to_string(),
            counters_transfers_per_s: counters,
            phases,
        });
    } else if let Some(rate) = counters {
        let total = r
            .per_branch
            .iter()
            .filter_map(|b| b.transfers_sent_window)
            .sum();
        r.throughput = Some(Throughput {
            transfers_per_s: rate,
            transfers: total,
            seconds: window.seconds,
            source: "stats counters".to_string(),
            counters_transfers_per_s: Some(rate),
            phases: Vec::new(),
        });
    } else {
        r.failures
            .push("no throughput: stats files incomplete at the window ends".to_string());
    }

    // Latency: merge bucket counts over branches, the window's share where the start file allows.
    let mut merged: BTreeMap<u64, u64> = BTreeMap::new();
    let mut usable = true;
    let mut windowed = true;
    for (i, s1) in stats1.iter().enumerate() {
        let Some(b1) = s1.as_ref().and_then(Stats::buckets) else {
            usable = false;
            break;
        };
        let b0 = stats0
            .get(i)
            .and_then(Option::as_ref)
            .filter(|s0| s0.pid() == s1.as_ref().and_then(Stats::pid))
            .and_then(Stats::buckets);
        let diffable = b0
            .as_ref()
            .is_some_and(|b0| b0.iter().all(|(k, c)| b1.get(k).is_some_and(|c1| c1 >= c)));
        for (k, c) in &b1 {
            let sub = if diffable {
                b0.as_ref().and_then(|b0| b0.get(k)).copied().unwrap_or(0)
            } else {
                0
            };
            *merged.entry(*k).or_insert(0) += c - sub;
        }
        windowed &= diffable;
    }
    let count: u64 = merged.values().sum();
    if usable && count > 0 {
        if let (Some(p50), Some(p99)) = (
            hist_percentile(&merged, 0.50),
            hist_percentile(&merged, 0.99),
        ) {
            r.latency = Some(Latency {
                p50_us: p50,
                p99_us: p99,
                count,
                source: if windowed {
                    "merged histograms (window)".to_string()
                } else {
                    "merged histograms (since start)".to_string()
                },
            });
        }
    }
    if r.latency.is_none() {
        let p = |k: &str| stats1.iter().flatten().filter_map(|s| s.latency(k)).max();
        let count = stats1
            .iter()
            .flatten()
            .filter_map(|s| s.latency("count"))
            .sum();
        if let (Some(p50), Some(p99)) = (p("p50"), p("p99")) {
            r.latency = Some(Latency {
                p50_us: p50,
                p99_us: p99,
                count,
                source: "max of per-branch (buckets unusable), since start".to_string(),
            });
        } else {
            r.notes
                .push("no transfer latency in the stats files".to_string());
        }
    }

    // Snapshots completed inside the window: their completion times from the initiator's log,
    // their durations from its stats (µs); by id difference of the stats when the log has none.
    let durations = stats1
        .first()
        .and_then(Option::as_ref)
        .map(Stats::snapshots)
        .unwrap_or_default();
    let (t0, t1) = window.bounds();
    let logged: Vec<(Option<SystemTime>, u64, f64)> = completed_snapshots(log0);
    let mut ms: Vec<f64>;
    let source;
    if !logged.is_empty() {
        ms = logged
            .iter()
            .filter(|(t, _, _)| t.is_some_and(|t| t >= t0 && t <= t1))
            .map(|(_, id, log_ms)| durations.get(id).map_or(*log_ms, |us| *us as f64 / 1e3))
            .collect();
        source = "initiator stats, completed in the window (log times)";
    } else {
        let before = stats0
            .first()
            .and_then(Option::as_ref)
            .map(Stats::snapshots)
            .unwrap_or_default();
        ms = durations
            .iter()
            .filter(|(id, _)| !before.contains_key(id))
            .map(|(_, us)| *us as f64 / 1000.0)
            .collect();
        source = "initiator stats, new between the window-end reads";
    }
    snapshot_latency(&mut ms, window.seconds, source, r);
    let phase_ms = args.phase.as_secs_f64() * 1e3;
    if let (Some(sn), Some(_)) = (&r.snapshots, &r.overhead) {
        if sn.p50_ms > phase_ms / 4.0 {
            r.notes.push(format!(
                "snapshots take {:.0} ms (p50), a large part of a {phase_ms:.0} ms phase: they spill into the off phases, so the overhead is understated; try a longer --phase",
                sn.p50_ms
            ));
        }
    }
}

fn snapshot_latency(ms: &mut [f64], seconds: f64, source: &str, r: &mut RunResult) {
    if ms.is_empty() {
        r.notes
            .push("no snapshot completed inside the window".to_string());
        return;
    }
    ms.sort_by(f64::total_cmp);
    r.snapshots = Some(SnapshotLatency {
        count: ms.len(),
        per_s: ms.len() as f64 / seconds.max(1e-9),
        p50_ms: percentile_sorted(ms, 0.50),
        p99_ms: percentile_sorted(ms, 0.99),
        mean_ms: ms.iter().sum::<f64>() / ms.len() as f64,
        max_ms: ms.last().copied().unwrap_or(f64::NAN),
        source: source.to_string(),
    });
}

/// Fallback without --stats-file: transfers/s from the status lines, snapshot latency from the
/// initiator's `complete in` lines inside the window.
fn from_logs(cluster: &Cluster, window: Window, r: &mut RunResult) {
    let (t0, t1) = window.bounds();
    let mut rate = 0.0;
    let mut total = 0;
    let mut spans = Vec::new();
    let mut complete = true;
    for (i, nd) in cluster.nodes.iter().enumerate() {
        let log = std::fs::read_to_string(&nd.log).unwrap_or_default();
        let pts: Vec<(SystemTime, u64)> = status_sent(&log, &nd.addr)
            .into_iter()
            .filter(|(t, _)| *t >= t0 && *t <= t1)
            .collect();
        match (pts.first(), pts.last()) {
            (Some(a), Some(b)) if b.0 > a.0 => {
                let sent = b.1.saturating_sub(a.1);
                r.per_branch[i].transfers_sent_window = Some(sent);
                total += sent;
                spans.push(secs_between(a.0, b.0));
                rate += sent as f64 / secs_between(a.0, b.0);
            }
            _ => complete = false,
        }
    }
    if complete {
        r.throughput = Some(Throughput {
            transfers_per_s: rate,
            transfers: total,
            // Each branch's first to last status line inside the window, on average.
            seconds: spans.iter().sum::<f64>() / spans.len().max(1) as f64,
            source: "log status lines".to_string(),
            counters_transfers_per_s: None,
            phases: Vec::new(),
        });
    } else {
        r.failures
            .push("no throughput: too few status lines inside the window".to_string());
    }
    let log0 = std::fs::read_to_string(&cluster.nodes[0].log).unwrap_or_default();
    let mut ms: Vec<f64> = completed_snapshots(&log0)
        .into_iter()
        .filter(|(t, _, _)| t.is_some_and(|t| t >= t0 && t <= t1))
        .map(|(_, _, ms)| ms)
        .collect();
    snapshot_latency(&mut ms, window.seconds, "initiator log (window)", r);
    r.notes.push(
        "bank has no --stats-file: transfer latency, snapshot overhead and time to first transfer unavailable"
            .to_string(),
    );
}

/// kill -9 branch 1, restart it with the same arguments, and time its start-up.
fn recovery(cluster: &mut Cluster, has_stats: bool, r: &mut RunResult) -> Result<()> {
    let n = cluster.nodes.len();
    let i = 1;
    let before_kb = cluster.live_pid(i).and_then(peak_rss_kb);
    r.per_branch[i].peak_rss_kb_before_kill = before_kb;
    cluster.kill9(i);
    let node = &cluster.nodes[i];
    let old = node.stats.with_extension("killed.json");
    if node.stats.exists() {
        std::fs::rename(&node.stats, &old)
            .with_context(|| format!("move {} aside", node.stats.display()))?;
    }
    if let Ok(mut f) = OpenOptions::new().append(true).open(&node.log) {
        let _ = writeln!(f, "===== bench: kill -9 and restart =====");
    }
    let marker_at = std::fs::read_to_string(&node.log)
        .map(|s| s.len())
        .unwrap_or(0);
    let addr = node.addr.clone();
    println!("bench: N={n}: recovery probe: kill -9 {addr}, restarting");
    cluster.start(i)?;
    let (spawned, spawned_wall) = cluster.nodes[i]
        .spawned_at
        .ok_or_else(|| anyhow!("branch {addr} has no start time"))?;
    let pid = cluster.nodes[i]
        .child
        .as_ref()
        .map(|c| u64::from(c.id()))
        .ok_or_else(|| anyhow!("branch {addr} is not running"))?;
    let limit = Duration::from_secs_f64(20.0 + 0.5 * n as f64);
    let mut rec = Recovery {
        branch: addr.clone(),
        ..Default::default()
    };
    loop {
        cluster.check_alive()?;
        if has_stats {
            if let Some(s) = Stats::read(&cluster.nodes[i].stats) {
                if s.pid() == Some(pid) {
                    rec.store_open_ms = s.f64("store_open_ms");
                    if let Some(ft) = s.f64("first_transfer_ms") {
                        rec.first_transfer_ms = Some(ft);
                        rec.observed_ms = Some(spawned.elapsed().as_secs_f64() * 1e3);
                        rec.source = "restarted process's stats file".to_string();
                        break;
                    }
                }
            }
        } else {
            let log = std::fs::read_to_string(&cluster.nodes[i].log).unwrap_or_default();
            let up = log
                .get(marker_at..)
                .unwrap_or("")
                .lines()
                .find(|l| l.contains(" up: balance "))
                .and_then(line_time);
            if let Some(t) = up {
                rec.store_open_ms = Some(secs_between(spawned_wall, t) * 1e3);
                rec.observed_ms = Some(spawned.elapsed().as_secs_f64() * 1e3);
                rec.source = "log: spawn to the `up` line (store opened and recovered)".to_string();
                break;
            }
        }
        if spawned.elapsed() > limit {
            r.recovery = Some(rec);
            bail!(
                "restarted {addr} did not {} within {limit:?}; its log ends: {}",
                if has_stats {
                    "report a first transfer"
                } else {
                    "log `up`"
                },
                log_tail(&cluster.nodes[i].log, 3)
            );
        }
        pause(Duration::from_millis(20))?;
    }
    r.recovery = Some(rec);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Output

fn f(x: Option<f64>, decimals: usize) -> String {
    match x {
        Some(x) if x.is_finite() => format!("{x:.decimals$}"),
        _ => "-".to_string(),
    }
}

fn mib(x: f64) -> f64 {
    x / (1024.0 * 1024.0)
}

/// " (max: ADDR)" naming the branch with the largest `key`, the initiator as such.
fn which_max(r: &RunResult, key: impl Fn(&BranchResult) -> u64) -> String {
    r.per_branch
        .iter()
        .enumerate()
        .max_by_key(|(_, b)| key(b))
        .map(|(i, b)| {
            let role = match i {
                0 => ", the initiator",
                1 => ", restarted",
                _ => "",
            };
            format!("  (max: {}{role})", b.addr)
        })
        .unwrap_or_default()
}

fn print_run(r: &RunResult) {
    let mut rows: Vec<(String, String)> = Vec::new();
    if let Some(w) = r.warmup_s {
        rows.push(("warm-up (to first snapshot)".into(), format!("{w:.1} s")));
    }
    match &r.throughput {
        Some(t) => {
            let mut v = format!(
                "{:.0}  ({} transfers in {:.1} s, {}",
                t.transfers_per_s, t.transfers, t.seconds, t.source
            );
            if let Some(c) = t.counters_transfers_per_s {
                if t.source != "stats counters" {
                    v.push_str(&format!("; counters say {c:.0}"));
                }
            }
            v.push(')');
            rows.push(("transfers/s (cluster)".into(), v));
            rows.push((
                "transfers/s per branch".into(),
                format!("{:.0}", t.transfers_per_s / r.branches as f64),
            ));
        }
        None => rows.push(("transfers/s (cluster)".into(), "unavailable".into())),
    }
    rows.push((
        "transfer latency p50 / p99".into(),
        match &r.latency {
            Some(l) => format!(
                "{:.2} ms / {:.2} ms  ({} transfers, {})",
                l.p50_us as f64 / 1e3,
                l.p99_us as f64 / 1e3,
                l.count,
                l.source
            ),
            None => "unavailable".into(),
        },
    ));
    rows.push((
        "snapshot latency p50 / p99".into(),
        match &r.snapshots {
            Some(s) => format!(
                "{:.1} ms / {:.1} ms  ({} snapshots, {:.1}/s, max {:.1} ms, {})",
                s.p50_ms, s.p99_ms, s.count, s.per_s, s.max_ms, s.source
            ),
            None => "unavailable".into(),
        },
    ));
    rows.push((
        "snapshot overhead (on/off)".into(),
        match &r.overhead {
            Some(o) => format!(
                "{:.3}  (on {:.0}/s in {} phases, off {:.0}/s in {} phases)",
                o.ratio, o.on_transfers_per_s, o.on_phases, o.off_transfers_per_s, o.off_phases
            ),
            None => "unavailable".into(),
        },
    ));
    rows.push((
        "recovery after kill -9".into(),
        match &r.recovery {
            Some(rc) => format!(
                "{}: store open {} ms, first transfer {} ms (observed {} ms)",
                rc.branch,
                f(rc.store_open_ms, 1),
                f(rc.first_transfer_ms, 1),
                f(rc.observed_ms, 0)
            ),
            None => "unavailable".into(),
        },
    ));
    if let Some(s) = r.peak_rss_kb {
        rows.push((
            "peak RSS per branch".into(),
            format!(
                "min {:.1} / mean {:.1} / max {:.1} MiB{}",
                s.min / 1024.0,
                s.mean / 1024.0,
                s.max / 1024.0,
                which_max(r, |b| b.peak_rss_kb.unwrap_or(0))
            ),
        ));
    }
    if let Some(s) = r.store_bytes {
        rows.push((
            "store per branch".into(),
            format!(
                "min {:.1} / mean {:.1} / max {:.1} MiB{}",
                mib(s.min),
                mib(s.mean),
                mib(s.max),
                which_max(r, |b| b.store_bytes)
            ),
        ));
    }
    rows.push((
        "audit".into(),
        match &r.audit {
            Some(a) if a.consistent => format!(
                "CONSISTENT ({} transfers, {} snapshots checked, {} pending)",
                a.transfers, a.snapshots_checked, a.snapshots_pending
            ),
            Some(a) => format!(
                "INCONSISTENT: {}",
                a.violations
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            None => "not run".into(),
        },
    ));
    let (w, e) = r
        .per_branch
        .iter()
        .fold((0, 0), |(w, e), b| (w + b.log_warnings, e + b.log_errors));
    rows.push(("log warnings / errors".into(), format!("{w} / {e}")));
    rows.push((
        "verdict".into(),
        if r.ok {
            "OK".to_string()
        } else {
            format!("FAILED: {}", r.failures.join("; "))
        },
    ));
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(10);
    println!("\n== N = {} ({})", r.branches, r.dir);
    for (k, v) in rows {
        println!("  {k:<width$}  {v}");
    }
    for note in &r.notes {
        println!("  note: {note}");
    }
}

fn print_summary(report: &Report) {
    println!("\n== summary");
    let head = [
        "N", "tx/s", "lat p50", "lat p99", "snap p50", "snap p99", "overhead", "open", "first tx",
        "RSS max", "store", "audit",
    ];
    let mut rows: Vec<Vec<String>> = vec![head.iter().map(|s| s.to_string()).collect()];
    rows.push(
        [
            "", "", "ms", "ms", "ms", "ms", "on/off", "ms", "ms", "MiB", "MiB/br", "",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    );
    for r in &report.runs {
        rows.push(vec![
            r.branches.to_string(),
            f(r.throughput.as_ref().map(|t| t.transfers_per_s), 0),
            f(r.latency.as_ref().map(|l| l.p50_us as f64 / 1e3), 2),
            f(r.latency.as_ref().map(|l| l.p99_us as f64 / 1e3), 2),
            f(r.snapshots.as_ref().map(|s| s.p50_ms), 1),
            f(r.snapshots.as_ref().map(|s| s.p99_ms), 1),
            f(r.overhead.as_ref().map(|o| o.ratio), 3),
            f(r.recovery.as_ref().and_then(|x| x.store_open_ms), 1),
            f(r.recovery.as_ref().and_then(|x| x.first_transfer_ms), 1),
            f(r.peak_rss_kb.map(|s| s.max / 1024.0), 1),
            f(r.store_bytes.map(|s| mib(s.mean)), 1),
            match (&r.audit, r.ok) {
                (Some(a), true) if a.consistent => "OK".to_string(),
                (Some(a), false) if a.consistent => "consistent, run FAILED".to_string(),
                (Some(_), _) => "INCONSISTENT".to_string(),
                (None, _) => "FAILED".to_string(),
            },
        ]);
    }
    let cols = head.len();
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, v)| {
                if c == cols - 1 {
                    v.clone()
                } else {
                    format!("{v:>w$}", w = widths[c])
                }
            })
            .collect();
        println!("  {}", line.join("  "));
    }
}
