//! `snapctl`: inspect and audit the stores of a stopped snapbank cluster, and ask a running one
//! (`status`, `snapshot`) over its authenticated channel.

use clap::{Parser, Subcommand};
use snapbank::audit::{audit, pending, AuditError, Cluster, PendingView};
use snapbank::check::{Counts, ViolationKind};
use snapbank::cli::{format_audit, DataDir, KeyArgs, DEFAULT_KEY_FILE};
use snapbank::hosts::HostList;
use snapbank::live_audit::live_audit;
use snapbank::net::control::{ask, ControlError, Operator};
use snapbank::report::{write_atomic, Report};
use snapbank::secure::{ClusterKey, KeyError};
use snapbank::snapshot::GlobalSnapshot;
use snapbank::types::{BranchId, SnapshotId};
use snapbank::wire::{BranchStatus, Reply, Request};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

/// Audit and inspect snapbank stores. Exit codes: 0 consistent, 1 a violation, 2 cannot read.
#[derive(Parser, Debug)]
#[command(name = "snapctl", version)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Which cluster's stores to read.
#[derive(clap::Args, Debug)]
struct Stores {
    #[command(flatten)]
    data: DataDir,
    /// Cross-check the stores against this host.list (default: the branch list they record).
    #[arg(long, value_name = "FILE")]
    hosts: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Check that no money was lost or created: snapshots, channels, ledger and current state.
    Audit {
        #[command(flatten)]
        stores: Stores,
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Audit a running cluster (whose stores its branches hold locked) over its
        /// authenticated channel, from its latest completed snapshots (host.list by default).
        #[arg(long)]
        live: bool,
        /// With --live: how many of the latest completed snapshots to check.
        #[arg(long, default_value_t = 8, value_name = "K", requires = "live", value_parser = clap::value_parser!(u64).range(1..=256))]
        snapshots: u64,
        /// With --live: how long to wait for each answer.
        #[arg(long, default_value = "5s", value_name = "DURATION", requires = "live", value_parser = humantime::parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Rewind every store of a stopped cluster to completed snapshot K (a lost store is rebuilt
    /// from the initiator's copy); the cluster then restarts from K with the total intact.
    Restore {
        #[command(flatten)]
        stores: Stores,
        /// The completed snapshot to restore.
        #[arg(long, value_name = "K")]
        snapshot: u64,
    },
    /// Write a new cluster key file (mode 0600): a pre-shared key plus a key pair per branch of
    /// host.list. Copy it to every host of the cluster, like host.list.
    Keygen {
        /// The cluster's branch list.
        #[arg(long, default_value = "host.list", value_name = "FILE")]
        hosts: PathBuf,
        #[command(flatten)]
        data: DataDir,
        /// Where to write it (default: cluster.key in --data-dir).
        #[arg(long, value_name = "FILE", conflicts_with = "per_host")]
        key: Option<PathBuf>,
        /// Write one file per host into DIR instead (DIR/<ip>.key), each holding only the private
        /// keys of that host's branches: then no host can act as a branch of another.
        #[arg(long, value_name = "DIR")]
        per_host: Option<PathBuf>,
        /// Replace an existing key file (every host then needs the new one).
        #[arg(long)]
        force: bool,
    },
    /// List completed global snapshots, then the pending ones and what they wait for.
    Snapshots {
        #[command(flatten)]
        stores: Stores,
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Write one self-contained HTML page charting the completed snapshots: each branch's
    /// balance, the total against the expected total, snapshot durations and the transfer rate.
    /// Exit 1 when a snapshot does not conserve money (the page is written all the same).
    Report {
        #[command(flatten)]
        stores: Stores,
        /// The HTML file to write (through a temporary file next to it and a rename).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Ask every running branch how it is: balance, links, transfers, snapshots, uptime,
    /// restarts. Exit 1 if a branch does not answer.
    Status {
        #[command(flatten)]
        live: Live,
        /// How long to wait for each branch.
        #[arg(long, default_value = "3s", value_name = "DURATION", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Ask the running initiator to start a snapshot now and wait for its verdict. Exit 0 when
    /// it conserves money, 1 when it does not or no verdict came in time.
    Snapshot {
        #[command(flatten)]
        live: Live,
        /// How long to wait for the snapshot to complete.
        #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

/// How to reach a running cluster.
#[derive(clap::Args, Debug)]
struct Live {
    /// The cluster's branch list.
    #[arg(long, default_value = "host.list", value_name = "FILE")]
    hosts: PathBuf,
    #[command(flatten)]
    data: DataDir,
    #[command(flatten)]
    key: KeyArgs,
    /// One JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.cmd {
        Cmd::Audit {
            stores,
            json,
            live: true,
            snapshots,
            timeout,
            key,
        } => {
            let live = Live {
                hosts: stores.hosts.unwrap_or_else(|| PathBuf::from("host.list")),
                data: stores.data,
                key,
                json,
            };
            cmd_audit_live(&live, snapshots, timeout)
        }
        Cmd::Audit { stores, json, .. } => cmd_audit(&stores.data, stores.hosts, json),
        Cmd::Snapshots { stores, json } => cmd_snapshots(&stores.data, stores.hosts, json),
        Cmd::Report { stores, out } => cmd_report(&stores.data, stores.hosts, &out),
        Cmd::Status { live, timeout } => cmd_status(&live, timeout),
        Cmd::Snapshot { live, timeout } => cmd_snapshot(&live, timeout),
        Cmd::Restore { stores, snapshot } => cmd_restore(&stores.data, stores.hosts, snapshot),
        Cmd::Keygen {
            hosts,
            data,
            key,
            per_host,
            force,
        } => cmd_keygen(&hosts, &data, key, per_host, force),
    }
}

fn cmd_keygen(
    hosts: &std::path::Path,
    data: &DataDir,
    key: Option<PathBuf>,
    per_host: Option<PathBuf>,
    force: bool,
) -> ExitCode {
    let hosts = match HostList::load(hosts) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("snapctl: error: {e}");
            return ExitCode::from(2);
        }
    };
    let cluster = ClusterKey::generate(&hosts);
    let files: Vec<(PathBuf, ClusterKey)> = match per_host {
        None => vec![(
            key.unwrap_or_else(|| data.data_dir.join(DEFAULT_KEY_FILE)),
            cluster,
        )],
        Some(dir) => {
            let mut ips: Vec<std::net::IpAddr> = hosts.branches.iter().map(|a| a.ip()).collect();
            ips.sort();
            ips.dedup();
            ips.iter()
                .map(|ip| {
                    let name = format!("{}.key", ip.to_string().replace(':', "_"));
                    (dir.join(name), cluster.for_host(*ip))
                })
                .collect()
        }
    };
    if !force {
        if let Some((p, _)) = files.iter().find(|(p, _)| p.exists()) {
            eprintln!(
                "snapctl: error: {}",
                KeyError::Exists(p.display().to_string())
            );
            return ExitCode::from(2);
        }
    }
    for (path, k) in &files {
        if let Err(e) = k.write(path, force) {
            eprintln!("snapctl: error: {e}");
            return ExitCode::from(2);
        }
        let held: Vec<String> = k
            .branches
            .iter()
            .filter(|b| b.private.is_some())
            .map(|b| b.addr.to_string())
            .collect();
        println!(
            "wrote {} (mode 0600): cluster key for {} branches, private keys of {}",
            path.display(),
            k.branches.len(),
            held.join(", ")
        );
    }
    ExitCode::SUCCESS
}

/// The operator's view of the cluster `live` names: host.list and the key file.
fn operator(live: &Live) -> Result<Operator, String> {
    let hosts = HostList::load(&live.hosts).map_err(|e| e.to_string())?;
    let keys = if live.key.insecure {
        None
    } else {
        let path = live.key.path(&live.data);
        let key = ClusterKey::load(&path).map_err(|e| e.to_string())?;
        Some(
            key.operator_keys(&hosts, &path)
                .map_err(|e| e.to_string())?,
        )
    };
    Ok(Operator { hosts, keys })
}

/// The operator's keys for the cluster `live` names, and a runtime to ask it from; on failure,
/// the error is printed and the exit code returned.
fn reach(live: &Live) -> Result<(Operator, tokio::runtime::Runtime), ExitCode> {
    let op = operator(live).map_err(|e| {
        eprintln!("snapctl: error: {e}");
        ExitCode::from(2)
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("snapctl: error: cannot start the async runtime: {e}");
            ExitCode::from(2)
        })?;
    Ok((op, rt))
}

fn cmd_status(live: &Live, timeout: Duration) -> ExitCode {
    let (op, rt) = match reach(live) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let n = op.hosts.len();
    let answers: Vec<Result<BranchStatus, String>> = rt.block_on(async {
        let asks = (0..n).map(|b| ask(&op, BranchId(b as u16), Request::Status, timeout));
        futures::future::join_all(asks)
            .await
            .into_iter()
            .map(|r| match r {
                Ok(Reply::Status(s)) => Ok(s),
                Ok(Reply::Refused(why)) => Err(why),
                Ok(other) => Err(format!("unexpected answer {other:?}")),
                Err(e) => Err(e.to_string()),
            })
            .collect()
    });
    let name = |b: BranchId| op.hosts.addr(b).to_string();
    if live.json {
        let doc: Vec<serde_json::Value> = answers
            .iter()
            .enumerate()
            .map(|(b, a)| match a {
                Ok(s) => serde_json::json!({"branch": name(BranchId(b as u16)), "status": s}),
                Err(e) => serde_json::json!({"branch": name(BranchId(b as u16)), "error": e}),
            })
            .collect();
        if let Err(code) = print_json(&doc) {
            return code;
        }
    } else {
        print!("{}", format_status(&answers, &op.hosts));
    }
    if answers.iter().all(|a| a.is_ok()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The status table: one line per branch, then one per snapshot a branch waits on.
fn format_status(answers: &[Result<BranchStatus, String>], hosts: &HostList) -> String {
    use std::fmt::Write;
    let name = |b: BranchId| hosts.addr(b).to_string();
    let peers = hosts.len().saturating_sub(1);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<21} {:>10} {:>5} {:>5} {:>10} {:>10} {:>7} {:>6} {:>4} {:>7} {:>4}",
        "branch",
        "balance",
        "links",
        "inbnd",
        "sent",
        "applied",
        "unacked",
        "last",
        "pend",
        "uptime",
        "rst"
    );
    let mut waits = Vec::new();
    for (b, a) in answers.iter().enumerate() {
        let me = name(BranchId(b as u16));
        let label = if hosts.initiator.index() == b {
            format!("{me} S")
        } else {
            me.clone()
        };
        match a {
            Err(e) => {
                let _ = writeln!(s, "{label:<21} not answering: {e}");
            }
            Ok(st) => {
                let _ = writeln!(
                    s,
                    "{:<21} {:>10} {:>5} {:>5} {:>10} {:>10} {:>7} {:>6} {:>4} {:>7} {:>4}",
                    label,
                    st.balance,
                    format!("{}/{peers}", st.links_up.len()),
                    format!("{}/{peers}", st.inbound_up.len()),
                    st.sent,
                    st.applied,
                    st.unacked,
                    st.last_snapshot.0,
                    st.pending.len(),
                    format!("{:.1}s", st.uptime_ms as f64 / 1000.0),
                    st.restarts
                );
                if st.unconserved_since.0 != 0 {
                    waits.push(format!(
                        "  {me}: MONEY NOT CONSERVED at snapshot {} (compaction and pruning stopped since; stop the cluster, run `snapctl audit`, then `snapctl restore`)",
                        st.unconserved_since
                    ));
                }
                for p in &st.pending {
                    let list =
                        |v: &[BranchId]| v.iter().map(|b| name(*b)).collect::<Vec<_>>().join(", ");
                    let mut what = Vec::new();
                    if !p.markers_from.is_empty() {
                        what.push(format!("markers from {}", list(&p.markers_from)));
                    }
                    if !p.parts_from.is_empty() {
                        what.push(format!("parts from {}", list(&p.parts_from)));
                    }
                    waits.push(format!(
                        "  {me}: snapshot {} waits for {}",
                        p.snapshot,
                        what.join("; ")
                    ));
                }
            }
        }
    }
    for w in waits {
        for line in wrap(&w, STATUS_WIDTH_MAX, "      ") {
            let _ = writeln!(s, "{line}");
        }
    }
    let answered = answers.iter().filter(|a| a.is_ok()).count();
    let _ = writeln!(
        s,
        "{answered} of {} branches answered (links: outgoing links up; inbnd: peers connected to it;\nlast: last snapshot completed (initiator) or part recorded; pend: snapshots pending; rst: restarts)",
        answers.len()
    );
    s
}

fn cmd_audit_live(live: &Live, last: u64, timeout: Duration) -> ExitCode {
    let (op, rt) = match reach(live) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let report = match rt.block_on(live_audit(&op, last, timeout)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("snapctl: error: live audit: {e}");
            return ExitCode::from(2);
        }
    };
    if live.json {
        if let Err(code) = print_json(&report) {
            return code;
        }
    } else {
        let ids = &report.snapshots;
        println!(
            "live audit of snapshots {}: expected total {}",
            match (ids.first(), ids.last()) {
                (Some(a), Some(b)) => format!("{a}..={b} ({} kept)", ids.len()),
                _ => "none".to_string(),
            },
            report.expected_total
        );
        println!("{}", checked_line(&report.checked));
        if report.consistent {
            println!("live audit: CONSISTENT");
        } else if report.violations.is_empty() {
            println!(
                "live audit: NOT CHECKED: {}",
                report
                    .nothing_checked
                    .as_deref()
                    .unwrap_or("nothing was checked")
            );
        } else {
            println!(
                "live audit: INCONSISTENT, {} violations ({}):",
                report.violations.len(),
                kinds_line(&report.violation_counts)
            );
            for v in &report.violations {
                println!("  - {v}");
            }
        }
    }
    if report.consistent {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn cmd_snapshot(live: &Live, timeout: Duration) -> ExitCode {
    let (op, rt) = match reach(live) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let initiator = op.hosts.initiator;
    let answer = rt.block_on(ask(&op, initiator, Request::Snapshot, timeout));
    match answer {
        Ok(Reply::SnapshotDone {
            snapshot,
            duration_us,
            total,
            expected,
        }) => {
            let ok = total == expected as u128;
            if live.json {
                println!(
                    "{}",
                    serde_json::json!({"snapshot": snapshot.0, "duration_us": duration_us,
                        "total": total, "expected": expected, "conserved": ok})
                );
            } else {
                println!(
                    "snapshot {snapshot} complete in {:.1} ms: total {total} (expected {expected}): {}",
                    duration_us as f64 / 1000.0,
                    if ok { "money conserved" } else { "MONEY NOT CONSERVED" }
                );
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Ok(Reply::Refused(why)) => {
            eprintln!("snapctl: error: {}: {why}", op.hosts.addr(initiator));
            ExitCode::from(1)
        }
        Ok(other) => {
            eprintln!("snapctl: error: unexpected answer {other:?}");
            ExitCode::from(1)
        }
        Err(e @ ControlError::Timeout { .. }) => {
            eprintln!("snapctl: error: snapshot: {e} (`snapctl status` shows what it waits for)");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("snapctl: error: {e}");
            ExitCode::from(1)
        }
    }
}

/// What an audit checked, in one line.
fn checked_line(c: &Counts) -> String {
    format!(
        "checked: {} channel records against the senders' logs ({} compacted), {} ledger steps ({} compacted), {} parts against the initiator's copies ({} pruned)",
        c.channels_checked,
        c.channels_compacted,
        c.ledgers_checked,
        c.ledgers_compacted,
        c.parts_checked,
        c.parts_pruned
    )
}

/// Violation counts by kind: `lost 2, wrong_total 1`.
fn kinds_line(counts: &BTreeMap<ViolationKind, usize>) -> String {
    counts
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prints `v` as pretty JSON on stdout.
fn print_json<T: serde::Serialize>(v: &T) -> Result<(), ExitCode> {
    let text = serde_json::to_string_pretty(v).map_err(|e| {
        eprintln!("snapctl: error: cannot encode the output as JSON: {e}");
        ExitCode::from(2)
    })?;
    println!("{text}");
    Ok(())
}

fn load_hosts(path: Option<PathBuf>) -> Result<Option<HostList>, ExitCode> {
    match path {
        None => Ok(None),
        Some(p) => HostList::load(&p).map(Some).map_err(|e| {
            eprintln!("snapctl: error: {e}");
            ExitCode::from(2)
        }),
    }
}

/// Opens the stores of a stopped cluster (checked against `hosts` if given); on failure, the
/// error is printed and the exit code returned.
fn open_stores(data: &DataDir, hosts: Option<PathBuf>) -> Result<Cluster, ExitCode> {
    let hosts = load_hosts(hosts)?;
    Cluster::open(&data.data_dir, hosts.as_ref()).map_err(cannot_read)
}

fn cannot_read(e: AuditError) -> ExitCode {
    eprintln!("snapctl: error: {e}");
    ExitCode::from(2)
}

fn cmd_audit(data: &DataDir, hosts: Option<PathBuf>, json: bool) -> ExitCode {
    let hosts = match load_hosts(hosts) {
        Ok(h) => h,
        Err(code) => return code,
    };
    let report = match audit(&data.data_dir, hosts.as_ref()) {
        Ok(r) => r,
        Err(e) => return cannot_read(e),
    };
    if json {
        if let Err(code) = print_json(&report) {
            return code;
        }
    } else {
        print!("{}", format_audit(&report));
        println!("{}", checked_line(&report.checked));
        if !report.consistent {
            println!(
                "violations by kind: {}",
                kinds_line(&report.violation_counts)
            );
        }
    }
    if report.consistent {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn cmd_snapshots(data: &DataDir, hosts: Option<PathBuf>, json: bool) -> ExitCode {
    let cluster = match open_stores(data, hosts) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let globals = match cluster.initiator().globals() {
        Ok(g) => g,
        Err(e) => return cannot_read(e.into()),
    };
    let pending = match pending(&cluster) {
        Ok(p) => p,
        Err(e) => return cannot_read(e),
    };
    if json {
        let list: Vec<serde_json::Value> = globals
            .iter()
            .map(|g| snapshot_json(g, &cluster.names))
            .collect();
        let doc = serde_json::json!({ "completed": list, "pending": pending });
        if let Err(code) = print_json(&doc) {
            return code;
        }
        return ExitCode::SUCCESS;
    }
    if globals.is_empty() {
        println!("no completed snapshots");
    } else {
        let mut header = format!(
            "{:>6}  {:<24}  {:>10}  {:>12}",
            "id", "started", "duration", "total"
        );
        for name in &cluster.names {
            header.push_str(&format!("  {:>22}", name));
        }
        println!("{header}");
        for g in &globals {
            let mut line = format!(
                "{:>6}  {:<24}  {:>8.1}ms  {:>12}",
                g.snapshot.0,
                rfc3339(g.started_at),
                g.duration_us() as f64 / 1000.0,
                g.total
            );
            for p in &g.parts {
                let chan: u128 = p.channels.iter().map(|c| c.money as u128).sum();
                line.push_str(&format!("  {:>22}", format!("{} + {}", p.balance, chan)));
            }
            if !g.conserves_money() {
                line.push_str(&format!("  (expected {})", g.expected_total));
            }
            println!("{line}");
        }
        println!("(per branch: balance + money recorded in its incoming channels)");
    }
    print_pending(&pending);
    ExitCode::SUCCESS
}

fn print_pending(pending: &[PendingView]) {
    for p in pending {
        let started = p.started_us.map_or("?".to_string(), rfc3339);
        let what: Vec<String> = p
            .branches
            .iter()
            .filter(|b| b.status != "done")
            .map(|b| {
                if b.waiting_for_markers_from.is_empty() {
                    format!("{} has not recorded it", b.branch)
                } else {
                    format!(
                        "{} waits for markers from {}",
                        b.branch,
                        b.waiting_for_markers_from.join(", ")
                    )
                }
            })
            .collect();
        let what = if what.is_empty() {
            "every part is in; the initiator has yet to assemble it".to_string()
        } else {
            what.join("; ")
        };
        println!(
            "pending snapshot {} (started {started}): {what}",
            p.snapshot
        );
    }
}

fn cmd_report(data: &DataDir, hosts: Option<PathBuf>, out: &Path) -> ExitCode {
    let cluster = match open_stores(data, hosts) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let report = match Report::from_cluster(&cluster).and_then(|r| {
        write_atomic(out, r.html().as_bytes())?;
        Ok(r)
    }) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("snapctl: error: report: {e}");
            return ExitCode::from(2);
        }
    };
    println!(
        "wrote {}: {} completed snapshots, {}",
        out.display(),
        report.snapshots.len(),
        report.verdict()
    );
    if report.unconserved().is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn cmd_restore(data: &DataDir, hosts: Option<PathBuf>, k: u64) -> ExitCode {
    let hosts = match load_hosts(hosts) {
        Ok(h) => h,
        Err(code) => return code,
    };
    match snapbank::restore::restore(&data.data_dir, hosts.as_ref(), SnapshotId(k)) {
        Ok(r) => {
            for (branch, balance) in &r.balances {
                let rebuilt = if r.rebuilt.contains(branch) {
                    "  (store rebuilt)"
                } else {
                    ""
                };
                println!("{branch:<28} balance {balance}{rebuilt}");
            }
            println!(
                "restored {} branches to snapshot {}; the next snapshot will be {}",
                r.balances.len(),
                r.snapshot,
                r.next_snapshot
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("snapctl: error: restore: {e}");
            ExitCode::from(2)
        }
    }
}

fn rfc3339(us: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_micros(us);
    humantime::format_rfc3339_millis(t).to_string()
}

fn snapshot_json(g: &GlobalSnapshot, names: &[String]) -> serde_json::Value {
    let branches: Vec<serde_json::Value> = g
        .parts
        .iter()
        .map(|p| {
            let channels: Vec<serde_json::Value> = p
                .channels
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "from": names.get(c.from.index()).cloned().unwrap_or_default(),
                        "money": c.money,
                        "transfers": c.count,
                        "after_seq": c.applied_at_record.0,
                        "until_seq": c.until.0,
                    })
                })
                .collect();
            serde_json::json!({
                "branch": names.get(p.branch.index()).cloned().unwrap_or_default(),
                "balance": p.balance,
                "channel_money": p.channels.iter().map(|c| c.money as u128).sum::<u128>(),
                "channels": channels,
            })
        })
        .collect();
    serde_json::json!({
        "id": g.snapshot.0,
        "started": rfc3339(g.started_at),
        "started_us": g.started_at,
        "completed_us": g.completed_at,
        "duration_ms": g.duration_us() as f64 / 1000.0,
        "total": g.total,
        "expected_total": g.expected_total,
        "branches": branches,
    })
}

/// Widest line `snapctl status` prints (it fits a terminal).
const STATUS_WIDTH_MAX: usize = 100;

/// `text` broken at spaces into lines of at most `width` characters (a word longer than that
/// stays whole), the continuation lines starting with `indent`; `text`'s own leading spaces stay.
fn wrap(text: &str, width: usize, indent: &str) -> Vec<String> {
    let body = text.trim_start_matches(' ');
    let mut line = text[..text.len() - body.len()].to_string();
    let mut lines = Vec::new();
    let mut words_in_line = 0;
    for word in body.split(' ') {
        let len = line.chars().count();
        if words_in_line > 0 && len + 1 + word.chars().count() > width {
            lines.push(std::mem::replace(&mut line, indent.to_string()));
            words_in_line = 0;
        }
        if words_in_line > 0 {
            line.push(' ');
        }
        line.push_str(word);
        words_in_line += 1;
    }
    lines.push(line);
    lines
}

#[cfg(test)]
mod tests {
    use super::wrap;

    #[test]
    fn wrap_keeps_lines_within_the_width_and_the_words_whole() {
        let text = "  127.0.0.1:41165: snapshot 12 waits for parts from 127.0.0.1:40879, 127.0.0.1:35811, 127.0.0.1:46051";
        let lines = wrap(text, 100, "      ");
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with("  127.0.0.1:41165: snapshot 12"));
        assert!(lines[1].starts_with("      "));
        assert!(lines.iter().all(|l| l.chars().count() <= 100), "{lines:?}");
        assert_eq!(
            lines.join(" ").split_whitespace().collect::<Vec<_>>(),
            text.split_whitespace().collect::<Vec<_>>()
        );
        assert_eq!(wrap("  short", 100, "    "), vec!["  short".to_string()]);
    }
}
