//! `snapctl audit --live`: audits a running cluster from its latest completed snapshots, over
//! the operators' control channel (the stores are locked by the running branches).
//!
//! For each of the latest completed global snapshots the initiator keeps:
//! - it has one part per branch and conserves money (Σ balances + Σ channel money = genesis);
//! - every branch's own copy of its part equals the initiator's (unless that branch pruned it);
//! - each channel's recorded money is exactly the sender's logged transfers between the
//!   receiver's recorded watermark and the sender's cut (while the sender's log still holds them:
//!   compaction drops what is older than the latest snapshot);
//! - between consecutive snapshots, each branch's money follows from its transfers (previous +
//!   received − sent), where the logs still hold them.
//!
//! What compaction already dropped is counted as unchecked, never as consistent.

use crate::net::control::{ask, ControlError, Operator};
use crate::snapshot::GlobalSnapshot;
use crate::types::{BranchId, Seq, SnapshotId};
use crate::wire::{RangeSum, Reply, Request, LOG_RANGES_MAX};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Clone, Debug, Serialize)]
pub struct LiveReport {
    pub consistent: bool,
    /// The snapshots checked, oldest first.
    pub snapshots: Vec<u64>,
    pub expected_total: u128,
    /// Channel records checked against the senders' logs, and those whose transfers the
    /// senders' logs no longer hold (compacted).
    pub channels_checked: usize,
    pub channels_compacted: usize,
    /// Branch ledgers checked between consecutive snapshots, and those the logs no longer cover.
    pub ledgers_checked: usize,
    pub ledgers_compacted: usize,
    /// Parts a branch no longer keeps (pruned), so not compared with the initiator's copy.
    pub parts_pruned: usize,
    pub violations: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LiveAuditError {
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("{0}")]
    Answer(String),
}

fn unexpected(who: &str, r: Reply) -> LiveAuditError {
    match r {
        Reply::Refused(why) => LiveAuditError::Answer(format!("{who}: {why}")),
        other => LiveAuditError::Answer(format!("{who}: unexpected answer {other:?}")),
    }
}

/// Attempts at an audit whose logs all moved on under it (see [`live_audit`]).
const ATTEMPTS: usize = 3;

/// Audits the latest `last` completed snapshots of the running cluster `op` reaches. The latest
/// snapshot's channels are in the senders' logs until a newer snapshot completes and compacts
/// them; if that happens during the audit and no channel could be checked, it starts over (at
/// most [`ATTEMPTS`] times).
pub async fn live_audit(
    op: &Operator,
    last: u64,
    timeout: Duration,
) -> Result<LiveReport, LiveAuditError> {
    let mut attempt = 1;
    loop {
        let r = audit_once(op, last, timeout).await?;
        let moved_on = r.channels_checked == 0 && r.channels_compacted > 0;
        if !moved_on || !r.violations.is_empty() || attempt == ATTEMPTS {
            return Ok(r);
        }
        attempt += 1;
    }
}

async fn audit_once(
    op: &Operator,
    last: u64,
    timeout: Duration,
) -> Result<LiveReport, LiveAuditError> {
    let n = op.hosts.len();
    let init = op.hosts.initiator;
    let name = |b: BranchId| op.hosts.addr(b).to_string();
    let global = |k: Option<SnapshotId>| ask(op, init, Request::Global { snapshot: k }, timeout);
    let latest = match global(None).await? {
        Reply::Global(g) => g,
        other => return Err(unexpected(&name(init), other)),
    };
    let mut globals: Vec<GlobalSnapshot> = Vec::new();
    if let Some(latest) = latest {
        let top = latest.snapshot.0;
        for k in top.saturating_sub(last.saturating_sub(1)).max(1)..top {
            match global(Some(SnapshotId(k))).await? {
                Reply::Global(Some(g)) => globals.push(g),
                Reply::Global(None) => {} // pruned, or never completed (ids skip after a restore)
                other => return Err(unexpected(&name(init), other)),
            }
        }
        globals.push(latest);
    }
    let mut r = LiveReport {
        consistent: false,
        snapshots: globals.iter().map(|g| g.snapshot.0).collect(),
        expected_total: globals.first().map_or(0, |g| g.expected_total as u128),
        channels_checked: 0,
        channels_compacted: 0,
        ledgers_checked: 0,
        ledgers_compacted: 0,
        parts_pruned: 0,
        violations: Vec::new(),
    };
    let v = &mut r.violations;

    // Totals, shape, and each branch's own copy of its part.
    for g in &globals {
        let k = g.snapshot;
        if g.parts.len() != n {
            v.push(format!(
                "snapshot {k}: {} parts for {n} branches",
                g.parts.len()
            ));
            continue;
        }
        let total: u128 = g.parts.iter().map(|p| p.money()).sum();
        if total != g.total || !g.conserves_money() {
            v.push(format!(
                "snapshot {k}: total {total} (recorded {}), expected {}",
                g.total, g.expected_total
            ));
        }
        for b in (0..n).map(|b| BranchId(b as u16)) {
            match ask(op, b, Request::Part { snapshot: k }, timeout).await? {
                Reply::Part(None) => r.parts_pruned += 1,
                Reply::Part(Some(p)) if p == g.parts[b.index()] => {}
                Reply::Part(Some(_)) => v.push(format!(
                    "snapshot {k}: branch {}'s own part differs from the initiator's copy",
                    name(b)
                )),
                other => return Err(unexpected(&name(b), other)),
            }
        }
    }
    let globals: Vec<&GlobalSnapshot> = globals.iter().filter(|g| g.parts.len() == n).collect();

    // Every log range to ask about, per sender: channel records, and ledger steps.
    let mut wanted: BTreeMap<BranchId, Vec<(BranchId, Seq, Seq)>> = BTreeMap::new();
    let mut want = |from: BranchId, to: BranchId, after: Seq, upto: Seq| {
        let list = wanted.entry(from).or_default();
        if !list.contains(&(to, after, upto)) {
            list.push((to, after, upto));
        }
    };
    for g in &globals {
        for (j, part) in g.parts.iter().enumerate() {
            for ch in &part.channels {
                want(ch.from, BranchId(j as u16), ch.applied_at_record, ch.until);
            }
        }
    }
    for pair in globals.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        for x in 0..n {
            for y in (0..n).filter(|y| *y != x) {
                let (bx, by) = (BranchId(x as u16), BranchId(y as u16));
                let from = a.parts[x].sent_to(by).unwrap_or_default();
                let upto = b.parts[x].sent_to(by).unwrap_or_default();
                if upto >= from {
                    want(bx, by, from, upto);
                }
            }
        }
    }
    let mut sums: BTreeMap<(BranchId, BranchId, Seq, Seq), RangeSum> = BTreeMap::new();
    for (from, ranges) in wanted {
        for chunk in ranges.chunks(LOG_RANGES_MAX) {
            let req = Request::LogSums {
                ranges: chunk.to_vec(),
            };
            match ask(op, from, req, timeout).await? {
                Reply::LogSums(got) if got.len() == chunk.len() => {
                    for (&(to, after, upto), s) in chunk.iter().zip(got) {
                        sums.insert((from, to, after, upto), s);
                    }
                }
                other => return Err(unexpected(&name(from), other)),
            }
        }
    }
    let sum = |from: BranchId, to: BranchId, after: Seq, upto: Seq| {
        sums.get(&(from, to, after, upto)).copied()
    };

    // Channel records against the senders' logs.
    for g in &globals {
        let k = g.snapshot;
        for (j, part) in g.parts.iter().enumerate() {
            let to = BranchId(j as u16);
            for ch in &part.channels {
                let chan = format!("{}→{}", name(ch.from), name(to));
                let cut = g.parts.get(ch.from.index()).and_then(|p| p.sent_to(to));
                if cut != Some(ch.until) || ch.applied_at_record > ch.until {
                    v.push(format!(
                        "snapshot {k}: channel {chan} recorded ({}, {}] but the sender's cut is {:?}",
                        ch.applied_at_record,
                        ch.until,
                        cut.map(|s| s.0)
                    ));
                    continue;
                }
                match sum(ch.from, to, ch.applied_at_record, ch.until) {
                    Some(s) if s.whole => {
                        r.channels_checked += 1;
                        if s.money != ch.money as u128 || s.count != ch.count {
                            v.push(format!(
                                "snapshot {k}: channel {chan} recorded {} in {} transfers, but the sender's log has {} in {}",
                                ch.money, ch.count, s.money, s.count
                            ));
                        }
                    }
                    _ => r.channels_compacted += 1,
                }
            }
        }
    }

    // Ledgers between consecutive snapshots: money(b) = previous + received − sent.
    for pair in globals.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        'branch: for x in 0..n {
            let bx = BranchId(x as u16);
            let mut money = a.parts[x].money() as i128;
            for y in (0..n).filter(|y| *y != x) {
                let by = BranchId(y as u16);
                let out = sum(
                    bx,
                    by,
                    a.parts[x].sent_to(by).unwrap_or_default(),
                    b.parts[x].sent_to(by).unwrap_or_default(),
                );
                let inc = sum(
                    by,
                    bx,
                    a.parts[y].sent_to(bx).unwrap_or_default(),
                    b.parts[y].sent_to(bx).unwrap_or_default(),
                );
                match (out, inc) {
                    (Some(o), Some(i)) if o.whole && i.whole => {
                        money += i.money as i128 - o.money as i128;
                    }
                    _ => {
                        r.ledgers_compacted += 1;
                        continue 'branch;
                    }
                }
            }
            r.ledgers_checked += 1;
            let held = b.parts[x].money() as i128;
            if money != held {
                v.push(format!(
                    "snapshots {}→{}: branch {} holds {held}, but its transfers give {money}",
                    a.snapshot,
                    b.snapshot,
                    name(bx)
                ));
            }
        }
    }
    r.consistent = r.violations.is_empty() && !r.snapshots.is_empty();
    if r.snapshots.is_empty() {
        r.violations
            .push("the initiator holds no completed snapshot yet".to_string());
    }
    Ok(r)
}
