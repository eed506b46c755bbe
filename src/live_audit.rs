//! `snapctl audit --live`: audits a running cluster from its latest completed snapshots, over
//! the operators' control channel (the stores are locked by the running branches).
//!
//! It asks the initiator for its latest completed global snapshots, every branch for its own
//! copies of their parts together with what it has compacted and pruned
//! ([`Request::Parts`]), and the senders for sums of exactly the log ranges the checker needs
//! ([`Request::LogSums`], each sum with the channel's `compacted` when it was taken); then runs
//! the one checker ([`crate::check`]) over that: each snapshot's shape and total, each branch's
//! copy of its part, each channel record against the sender's log, and each branch's ledger
//! from snapshot to snapshot. A part absent below the branch's `pruned_below` is pruned, above
//! it missing; a log range not held whole starting below the channel's `compacted` is
//! compacted, at or above it missing. Compacted and pruned are counted, never taken as
//! consistent, and an audit that could check no channel and no ledger is not consistent: it
//! says why.

use crate::check::{self, BranchView, Counts, LogRange, LogSource, View, Violation, ViolationKind};
use crate::net::control::{ask, ControlError, Operator};
use crate::snapshot::{GlobalSnapshot, LocalPart};
use crate::store::StoreError;
use crate::types::{BranchId, Seq, SnapshotId};
use crate::wire::{
    Message, RangeSum, Reply, Request, FRAME_BYTES_MAX, LOG_RANGES_MAX, PARTS_PER_REQUEST_MAX,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Clone, Debug, Serialize)]
pub struct LiveReport {
    /// No violation, and something was checked against the logs.
    pub consistent: bool,
    /// The snapshots checked, oldest first.
    pub snapshots: Vec<u64>,
    pub expected_total: u128,
    /// Parts compared with the initiator's copies and parts pruned; channel records checked
    /// against the senders' logs and those whose transfers the logs no longer hold
    /// (compacted); ledger steps between snapshots checked and compacted.
    #[serde(flatten)]
    pub checked: Counts,
    /// Why the audit could not say CONSISTENT though it found no violation (nothing could be
    /// checked against the logs); `null` otherwise.
    pub nothing_checked: Option<String>,
    /// How many times it ran (it starts over when the logs moved on under it).
    pub attempts: usize,
    /// Branch addresses, in branch order (the indices of `violations_typed`).
    pub branches: Vec<String>,
    /// Each violation as one line naming branch, channel or snapshot.
    pub violations: Vec<String>,
    /// The same, typed: kind, snapshot, branch, channel `[from, to]`, detail.
    pub violations_typed: Vec<Violation>,
    /// How many violations of each kind (kinds with none left out).
    pub violation_counts: BTreeMap<ViolationKind, usize>,
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
/// them; if that happens during the audit and nothing could be checked, it starts over (at
/// most [`ATTEMPTS`] times).
pub async fn live_audit(
    op: &Operator,
    last: u64,
    timeout: Duration,
) -> Result<LiveReport, LiveAuditError> {
    let mut attempt = 1;
    loop {
        let mut r = audit_once(op, last, timeout).await?;
        r.attempts = attempt;
        let moved_on = r.checked.channels_checked + r.checked.ledgers_checked == 0
            && r.checked.channels_compacted + r.checked.ledgers_compacted > 0;
        if !moved_on || !r.violations.is_empty() || attempt == ATTEMPTS {
            return Ok(r);
        }
        attempt += 1;
    }
}

/// The sums the senders reported, for the ranges the checker planned.
struct Reported(BTreeMap<LogRange, RangeSum>);

impl LogSource for Reported {
    fn range(&self, r: LogRange) -> Result<RangeSum, StoreError> {
        // Every range asked for was answered (or the audit failed): one not asked is unchecked.
        Ok(self.0.get(&r).copied().unwrap_or(RangeSum {
            count: 0,
            money: 0,
            whole: false,
            compacted: Seq(u64::MAX),
        }))
    }
}

/// Bytes of answer a request may ask for, at most: half a frame, so encoding overhead never
/// takes it over the limit.
const ANSWER_BUDGET: usize = FRAME_BYTES_MAX / 2;

async fn audit_once(
    op: &Operator,
    last: u64,
    timeout: Duration,
) -> Result<LiveReport, LiveAuditError> {
    let n = op.hosts.len();
    let init = op.hosts.initiator;
    let names: Vec<String> = (0..n)
        .map(|b| op.hosts.addr(BranchId(b as u16)).to_string())
        .collect();
    let name = |b: BranchId| names[b.index()].clone();
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
    let ids: Vec<SnapshotId> = globals.iter().map(|g| g.snapshot).collect();

    // Each branch's own parts and what it pruned, in as few answers as fit a frame.
    let mut parts: Vec<Vec<LocalPart>> = vec![Vec::new(); n];
    let mut pruned_below = vec![SnapshotId(0); n];
    let mut history_from = vec![SnapshotId(0); n];
    for b in 0..n {
        let bid = BranchId(b as u16);
        for chunk in part_chunks(&globals, b) {
            let req = Request::Parts {
                snapshots: chunk.clone(),
            };
            match ask(op, bid, req, timeout).await? {
                Reply::Parts {
                    parts: got,
                    retention,
                } if got.len() == chunk.len() => {
                    parts[b].extend(got.into_iter().flatten());
                    // Pruning only moves on: the latest answer's bound holds for all of them.
                    pruned_below[b] = pruned_below[b].max(retention.pruned_below);
                    history_from[b] = history_from[b].max(retention.history_from);
                }
                other => return Err(unexpected(&name(bid), other)),
            }
        }
    }
    let view = View {
        names: &names,
        initial_balance: globals
            .first()
            .map_or(0, |g| g.expected_total / n.max(1) as u64),
        globals: &globals,
        branches: (0..n)
            .map(|b| BranchView {
                state: None,
                parts: &parts[b],
                pruned_below: pruned_below[b],
                history_from: history_from[b],
            })
            .collect(),
    };

    // Exactly the log ranges the checker reads, from their senders.
    let mut wanted: BTreeMap<BranchId, Vec<LogRange>> = BTreeMap::new();
    for r in check::plan(&view) {
        wanted.entry(r.from).or_default().push(r);
    }
    let mut sums = BTreeMap::new();
    for (from, ranges) in wanted {
        for chunk in ranges.chunks(LOG_RANGES_MAX) {
            let req = Request::LogSums {
                ranges: chunk.iter().map(|r| (r.to, r.after, r.upto)).collect(),
            };
            match ask(op, from, req, timeout).await? {
                Reply::LogSums(got) if got.len() == chunk.len() => {
                    sums.extend(chunk.iter().copied().zip(got));
                }
                other => return Err(unexpected(&name(from), other)),
            }
        }
    }
    let found =
        check::check(&view, &Reported(sums)).map_err(|e| LiveAuditError::Answer(e.to_string()))?;
    let c = found.counts;
    let nothing_checked = if globals.is_empty() {
        Some("the initiator holds no completed snapshot yet".to_string())
    } else if c.channels_checked + c.ledgers_checked == 0 {
        Some(format!(
            "no channel record and no ledger of snapshots {}..={} could be checked against the senders' logs: {} channel records and {} ledger steps were compacted (a newer snapshot completed during the audit?)",
            ids.first().map_or(0, |k| k.0),
            ids.last().map_or(0, |k| k.0),
            c.channels_compacted,
            c.ledgers_compacted
        ))
    } else {
        None
    };
    Ok(LiveReport {
        consistent: found.consistent() && nothing_checked.is_none(),
        snapshots: ids.iter().map(|k| k.0).collect(),
        expected_total: globals.first().map_or(0, |g| g.expected_total as u128),
        checked: c,
        nothing_checked,
        attempts: 1,
        branches: names.clone(),
        violations: found.strings(),
        violation_counts: found.counts_by_kind(),
        violations_typed: found.violations,
    })
}

/// The snapshot ids of `globals` to ask branch `b` about, in requests whose answers fit a
/// frame: sized by the initiator's copies of `b`'s parts (the branch's own are the same).
fn part_chunks(globals: &[GlobalSnapshot], b: usize) -> Vec<Vec<SnapshotId>> {
    let mut chunks: Vec<Vec<SnapshotId>> = Vec::new();
    let mut bytes = 0usize;
    for g in globals {
        let size = g.parts.get(b).map_or(16, |p| {
            Message::Reply(Reply::Part(Some(p.clone()))).encode().len()
        });
        let full = chunks.last().map_or(true, |c| {
            c.len() >= PARTS_PER_REQUEST_MAX || (!c.is_empty() && bytes + size > ANSWER_BUDGET)
        });
        if full {
            chunks.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(c) = chunks.last_mut() {
            c.push(g.snapshot);
        }
    }
    chunks
}
