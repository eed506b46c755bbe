//! `snapctl audit`: check the stores of a stopped cluster, or with `--live` a running cluster's
//! latest completed snapshots over its control channel.

use crate::shared::{print_json, reach, violations_by_address, From, Live, Stores};
use crate::{verdict, Failure, Outcome};
use snapbank::audit::audit;
use snapbank::check::{Counts, ViolationKind};
use snapbank::cli::{format_audit, KeyArgs};
use snapbank::live_audit::live_audit;
use std::collections::BTreeMap;
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
    #[command(flatten)]
    from: From,
}

impl Audit {
    pub fn json(&self) -> bool {
        self.json
    }

    pub fn run(self) -> Outcome {
        self.from.only_with_live(self.live)?;
        if !self.live {
            return stopped(&self.stores, self.json);
        }
        let live = self.stores.live(&self.key, &self.from, self.json);
        running(&live, self.snapshots, self.timeout)
    }
}

/// The audit of a stopped cluster's stores.
fn stopped(stores: &Stores, json: bool) -> Outcome {
    let hosts = stores.host_list()?;
    let report = audit(&stores.data.data_dir, hosts.as_ref()).map_err(Failure::cannot)?;
    if json {
        print_json(&with_addresses(&report, &names(&report.branches))?)?;
    } else {
        snapbank::out!("{}", format_audit(&report));
        snapbank::outln!("{}", checked_line(&report.checked));
        if !report.consistent {
            snapbank::outln!(
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
        let names: Vec<String> = op.hosts.branches.iter().map(|a| a.to_string()).collect();
        print_json(&with_addresses(&report, &names)?)?;
    } else {
        let ids = &report.snapshots;
        snapbank::outln!(
            "live audit of snapshots {}: expected total {}",
            match (ids.first(), ids.last()) {
                (Some(a), Some(b)) => format!("{a}..={b} ({} kept)", ids.len()),
                _ => "none".to_string(),
            },
            report.expected_total
        );
        snapbank::outln!("{}", checked_line(&report.checked));
        if report.consistent {
            snapbank::outln!("live audit: CONSISTENT");
        } else if report.violations.is_empty() {
            snapbank::outln!(
                "live audit: NOT CHECKED: {}",
                report
                    .nothing_checked
                    .as_deref()
                    .unwrap_or("nothing was checked")
            );
        } else {
            snapbank::outln!(
                "live audit: INCONSISTENT, {} violations ({}):",
                report.violations.len(),
                kinds_line(&report.violation_counts)
            );
            for v in &report.violations {
                snapbank::outln!("  - {v}");
            }
        }
    }
    Ok(verdict(report.consistent))
}

/// The addresses of an audit's branches, in branch order.
fn names(branches: &[snapbank::audit::BranchReport]) -> Vec<String> {
    branches.iter().map(|b| b.branch.clone()).collect()
}

/// `report` as JSON, its typed violations naming branches by address.
fn with_addresses<T: serde::Serialize>(
    report: &T,
    names: &[String],
) -> Result<serde_json::Value, Failure> {
    let mut doc = serde_json::to_value(report)
        .map_err(|e| Failure::cannot(format!("cannot encode the output as JSON: {e}")))?;
    violations_by_address(&mut doc, names);
    Ok(doc)
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
