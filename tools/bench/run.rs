//! One cluster size: set up `DIR/n<N>`, measure, read peak RSS, stop the branches, size the
//! stores and audit them.

use crate::args::Args;
use crate::clock::interrupted;
use crate::cluster::setup;
use crate::figures::spread;
use crate::logs::log_problems;
use crate::measure::measure;
use crate::probes::{dir_bytes, peak_rss_kb};
use crate::results::{AuditSummary, BranchResult, RunResult};
use anyhow::anyhow;
use snapbank::audit::audit;
use snapbank::hosts::HostList;
use snapbank_testkit::Bins;
use std::path::Path;
use std::time::{Duration, Instant};

/// Sets up DIR/n<N> and runs one cluster size; failures are recorded in the result.
pub fn run_one(
    args: &Args,
    bins: &Bins,
    has_stats: bool,
    has_phases: bool,
    n: usize,
    dir: &Path,
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
    let mut cluster = match setup(args, bins, has_stats, has_phases, n, &run_dir) {
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
                addr: cluster.addr(i).to_string(),
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
            cluster.addr(1)
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
    for i in 0..n {
        let (len, disk) = dir_bytes(&cluster.kit.store_dir(i));
        let log = std::fs::read_to_string(cluster.log(i)).unwrap_or_default();
        let (w, e, _) = log_problems(&log);
        let b = &mut r.per_branch[i];
        b.store_bytes = len;
        b.store_bytes_on_disk = disk;
        b.exit = cluster.exit[i].clone();
        b.log_warnings = w;
        b.log_errors = e;
        store.push(len as f64);
    }
    r.store_bytes = spread(&store);
    let problems: Vec<String> = (0..n)
        .flat_map(|i| {
            let log = std::fs::read_to_string(cluster.log(i)).unwrap_or_default();
            log_problems(&log)
                .2
                .into_iter()
                .map(|m| format!("{}: {m}", cluster.addr(i)))
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
    let log0 = std::fs::read_to_string(cluster.log(0)).unwrap_or_default();
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
