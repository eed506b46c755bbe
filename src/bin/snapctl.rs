//! `snapctl`: inspect and audit the stores of a stopped snapbank cluster.

use clap::{Parser, Subcommand};
use snapbank::audit::{audit, pending, AuditError, Cluster, PendingView};
use snapbank::cli::{format_audit, DataDir, DEFAULT_KEY_FILE};
use snapbank::hosts::HostList;
use snapbank::report::{write_atomic, Report};
use snapbank::secure::{ClusterKey, KeyError};
use snapbank::snapshot::GlobalSnapshot;
use snapbank::types::SnapshotId;
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
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.cmd {
        Cmd::Audit { stores, json } => cmd_audit(&stores.data, stores.hosts, json),
        Cmd::Snapshots { stores, json } => cmd_snapshots(&stores.data, stores.hosts, json),
        Cmd::Report { stores, out } => cmd_report(&stores.data, stores.hosts, &out),
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

fn load_hosts(path: Option<PathBuf>) -> Result<Option<HostList>, ExitCode> {
    match path {
        None => Ok(None),
        Some(p) => HostList::load(&p).map(Some).map_err(|e| {
            eprintln!("snapctl: error: {e}");
            ExitCode::from(2)
        }),
    }
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
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("snapctl: error: cannot encode the report: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{}", format_audit(&report));
    }
    if report.consistent {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn cmd_snapshots(data: &DataDir, hosts: Option<PathBuf>, json: bool) -> ExitCode {
    let hosts = match load_hosts(hosts) {
        Ok(h) => h,
        Err(code) => return code,
    };
    let cluster = match Cluster::open(&data.data_dir, hosts.as_ref()) {
        Ok(c) => c,
        Err(e) => return cannot_read(e),
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
        match serde_json::to_string_pretty(&doc) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("snapctl: error: cannot encode: {e}");
                return ExitCode::from(2);
            }
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
    let hosts = match load_hosts(hosts) {
        Ok(h) => h,
        Err(code) => return code,
    };
    let cluster = match Cluster::open(&data.data_dir, hosts.as_ref()) {
        Ok(c) => c,
        Err(e) => return cannot_read(e),
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
