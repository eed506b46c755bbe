//! `snapctl audit`: check the stores of a stopped cluster, or with `--live` a running cluster's
//! latest completed snapshots over its control channel.

use crate::shared::{print_json, reach, Live, Stores};
use crate::{verdict, Failure, Outcome};
use snapbank::audit::audit;
use snapbank::check::{Counts, ViolationKind};
use snapbank::cli::{format_audit, KeyArgs};
use snapbank::live_audit::live_audit;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Audit {
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
}

impl Audit {
    pub fn run(self) -> Outcome {
        if !self.live {
            return stopped(&self.stores, self.json);
        }
        let live = Live {
            hosts: self
                .stores
                .hosts
                .unwrap_or_else(|| PathBuf::from("host.list")),
            data: self.stores.data,
            key: self.key,
            json: self.json,
        };
        running(&live, self.snapshots, self.timeout)
    }
}

/// The audit of a stopped cluster's stores.
fn stopped(stores: &Stores, json: bool) -> Outcome {
    let hosts = stores.host_list()?;
    let report = audit(&stores.data.data_dir, hosts.as_ref()).map_err(Failure::cannot)?;
    if json {
        print_json(&report)?;
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
    Ok(verdict(report.consistent))
}

/// `--live`: the audit of the `last` latest completed snapshots of a running cluster.
fn running(live: &Live, last: u64, timeout: Duration) -> Outcome {
    let (op, rt) = reach(live)?;
    let report = rt
        .block_on(live_audit(&op, last, timeout))
        .map_err(|e| Failure::cannot(format!("live audit: {e}")))?;
    if live.json {
        print_json(&report)?;
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
    Ok(verdict(report.consistent))
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
