//! `snapctl snapshots`: list a stopped cluster's completed global snapshots, then the pending
//! ones and what they wait for; after a `snapctl reshape`, first its epochs, one line each
//! (`--epoch E` lists a retired epoch's snapshots instead of the current one's).

use crate::shared::{human, ms, print_json, time_at, Stores};
use crate::{Failure, Outcome};
use snapbank::audit::{pending, AuditError, PendingView};
use snapbank::lineage::{summaries, EpochSummary};
use snapbank::snapshot::GlobalSnapshot;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Snapshots {
    #[command(flatten)]
    stores: Stores,
    /// One JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// List the snapshots of this epoch (one a reshape retired to DATA/epochs/<E>/) instead of
    /// the current one's.
    #[arg(long, value_name = "E")]
    epoch: Option<u64>,
}

impl Snapshots {
    pub fn json(&self) -> bool {
        self.json
    }

    pub fn run(self) -> Outcome {
        let current = self.stores.open()?;
        let data_dir = &self.stores.data.data_dir;
        let epochs = summaries(data_dir, &current).map_err(Failure::cannot)?;
        let cluster = self.stores.epoch(current, self.epoch)?;
        let epoch = cluster.identity.epoch_number();
        let globals = cluster
            .initiator()
            .globals()
            .map_err(|e| Failure::cannot(AuditError::from(e)))?;
        let pending = pending(&cluster).map_err(Failure::cannot)?;
        if self.json {
            let list: Vec<serde_json::Value> = globals
                .iter()
                .map(|g| snapshot_json(g, &cluster.names))
                .collect();
            let pending: Vec<serde_json::Value> = pending.iter().map(pending_json).collect();
            let doc = serde_json::json!({
                "epoch": epoch,
                "epochs": epochs,
                "completed": list,
                "pending": pending,
            });
            print_json(&doc)?;
            return Ok(ExitCode::SUCCESS);
        }
        if epochs.len() > 1 {
            print_epochs(&epochs);
            let which = epochs.iter().find(|e| e.epoch == epoch);
            snapbank::outln!(
                "\nepoch {epoch} ({}):",
                which.map_or("current", |e| e.stores)
            );
        }
        if globals.is_empty() {
            snapbank::outln!("no completed snapshots");
        } else {
            let mut header = format!(
                "{:>6}  {:<24}  {:>10}  {:>12}",
                "id", "started", "duration", "total"
            );
            for name in &cluster.names {
                header.push_str(&format!("  {:>22}", name));
            }
            snapbank::outln!("{header}");
            for g in &globals {
                let mut line = format!(
                    "{:>6}  {:<24}  {:>10}  {:>12}",
                    g.snapshot.0,
                    time_at(g.started_at),
                    human(Duration::from_micros(g.duration_us())),
                    g.total
                );
                for p in &g.parts {
                    let chan: u128 = p.channels.iter().map(|c| c.money as u128).sum();
                    line.push_str(&format!("  {:>22}", format!("{} + {}", p.balance, chan)));
                }
                if !g.conserves_money() {
                    line.push_str(&format!("  (expected {})", g.expected_total));
                }
                snapbank::outln!("{line}");
            }
            snapbank::outln!("(per branch: balance + money recorded in its incoming channels)");
        }
        print_pending(&pending);
        Ok(ExitCode::SUCCESS)
    }
}

/// One line per epoch, oldest first.
fn print_epochs(epochs: &[EpochSummary]) {
    snapbank::outln!(
        "{:>5}  {:<7}  {:>8}  {:>14}  {:<34}  {}",
        "epoch",
        "stores",
        "branches",
        "expected total",
        "began from",
        "snapshots"
    );
    for e in epochs {
        let conserved = match e.conserved {
            Some(false) => "  (NOT all conserved: run snapctl audit)",
            _ => "",
        };
        snapbank::outln!(
            "{:>5}  {:<7}  {:>8}  {:>14}  {:<34}  {}{conserved}",
            e.epoch,
            e.stores,
            e.branches.len(),
            e.expected_total,
            e.began_text(),
            e.snapshots_text()
        );
    }
}

fn print_pending(pending: &[PendingView]) {
    for p in pending {
        let started = p.started_us.map_or("?".to_string(), time_at);
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
        snapbank::outln!(
            "pending snapshot {} (started {started}): {what}",
            p.snapshot
        );
    }
}

/// A pending snapshot as JSON: its start as `started_at` (null when unknown).
fn pending_json(p: &PendingView) -> serde_json::Value {
    serde_json::json!({
        "snapshot": p.snapshot,
        "started_at": p.started_us.map(time_at),
        "branches": p.branches,
    })
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
        "started_at": time_at(g.started_at),
        "completed_at": time_at(g.completed_at),
        "duration_ms": ms(g.duration_us()),
        "total": g.total,
        "expected_total": g.expected_total,
        "branches": branches,
    })
}
