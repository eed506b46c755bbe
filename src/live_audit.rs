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

use crate::check::{
    self, BranchView, Counts, Findings, LogRange, LogSource, View, Violation, ViolationKind,
};
use crate::net::control::{ask, ControlError, Operator};
use crate::snapshot::{GlobalSnapshot, LocalPart};
use crate::store::StoreError;
use crate::types::{Amount, BranchId, Seq, SnapshotId};
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

/// The initiator's `last` latest completed global snapshots that it still keeps, oldest first
/// (`snapctl audit --live` checks them, `snapctl report --live` charts them).
pub async fn latest_globals(
    op: &Operator,
    last: u64,
    timeout: Duration,
) -> Result<Vec<GlobalSnapshot>, LiveAuditError> {
    let init = op.hosts.initiator;
    let init_name = op.hosts.addr(init).to_string();
    let global = |k: Option<SnapshotId>| ask(op, init, Request::Global { snapshot: k }, timeout);
    let latest = match global(None).await? {
        Reply::Global(g) => g,
        other => return Err(unexpected(&init_name, other)),
    };
    let mut globals: Vec<GlobalSnapshot> = Vec::new();
    if let Some(latest) = latest {
        let top = latest.snapshot.0;
        for k in top.saturating_sub(last.saturating_sub(1)).max(1)..top {
            match global(Some(SnapshotId(k))).await? {
                Reply::Global(Some(g)) => globals.push(g),
                Reply::Global(None) => {} // pruned, or never completed (ids skip after a restore)
                other => return Err(unexpected(&init_name, other)),
            }
        }
        globals.push(latest);
    }
    Ok(globals)
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
    let names: Vec<String> = (0..n)
        .map(|b| op.hosts.addr(BranchId(b as u16)).to_string())
        .collect();
    let name = |b: BranchId| names[b.index()].clone();
    let globals = latest_globals(op, last, timeout).await?;

    // Each branch's own parts and what it pruned, in as few answers as fit a frame.
    let mut parts: Vec<Vec<LocalPart>> = vec![Vec::new(); n];
    let mut pruned_below = vec![SnapshotId(0); n];
    let mut history_from = vec![SnapshotId(0); n];
    let mut genesis: Vec<Option<Amount>> = vec![None; n];
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
                    genesis[b] = genesis[b].or(retention.genesis);
                }
                other => return Err(unexpected(&name(bid), other)),
            }
        }
    }
    let view = View {
        names: &names,
        // A branch of an older build does not say: every branch began with the same then.
        genesis: genesis
            .iter()
            .map(|g| {
                g.unwrap_or_else(|| {
                    globals
                        .first()
                        .map_or(0, |g| g.expected_total / n.max(1) as u64)
                })
            })
            .collect(),
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
    Ok(verdict(found, &globals, names))
}

/// The report of what the checker found in `globals`: consistent only if it found no violation
/// and checked something against the logs (else it says why not).
fn verdict(found: Findings, globals: &[GlobalSnapshot], branches: Vec<String>) -> LiveReport {
    let c = found.counts;
    let ids: Vec<u64> = globals.iter().map(|g| g.snapshot.0).collect();
    let nothing_checked = if globals.is_empty() {
        Some("the initiator holds no completed snapshot yet".to_string())
    } else if c.channels_checked + c.ledgers_checked == 0 {
        Some(format!(
            "no channel record and no ledger of snapshots {}..={} could be checked against the senders' logs: {} channel records and {} ledger steps were compacted (a newer snapshot completed during the audit?)",
            ids.first().copied().unwrap_or_default(),
            ids.last().copied().unwrap_or_default(),
            c.channels_compacted,
            c.ledgers_compacted
        ))
    } else {
        None
    };
    LiveReport {
        consistent: found.consistent() && nothing_checked.is_none(),
        snapshots: ids,
        expected_total: globals.first().map_or(0, |g| g.expected_total as u128),
        checked: c,
        nothing_checked,
        attempts: 1,
        branches,
        violations: found.strings(),
        violation_counts: found.counts_by_kind(),
        violations_typed: found.violations,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testbank::{identity, TestBank, INITIAL};
    use crate::check::StoreLogs;
    use crate::core::DurableState;
    use crate::store::{MemKv, MemStore};

    const N: usize = 3;

    struct Fixture {
        bank: TestBank<MemKv>,
        states: Vec<DurableState>,
        parts: Vec<Vec<LocalPart>>,
        globals: Vec<GlobalSnapshot>,
        names: Vec<String>,
    }

    fn fixture() -> Fixture {
        let stores = (0..N)
            .map(|me| MemStore::new_mem(&identity(N, me)))
            .collect();
        let mut bank = TestBank::new(stores, 3, 23);
        bank.run(1200);
        Fixture {
            states: bank
                .stores
                .iter()
                .map(|s| s.state().expect("state").expect("committed"))
                .collect(),
            parts: bank.parts(),
            globals: bank.globals(),
            names: (0..N).map(|b| format!("10.0.0.{b}:1")).collect(),
            bank,
        }
    }

    /// What the live audit sees: no states; parts and what was pruned as the branches report.
    fn view(f: &Fixture) -> View<'_> {
        View {
            names: &f.names,
            genesis: vec![INITIAL; N],
            globals: &f.globals,
            branches: (0..N)
                .map(|b| BranchView {
                    state: None,
                    parts: &f.parts[b],
                    pruned_below: f.states[b].pruned_below,
                    history_from: f.states[b].history_from,
                })
                .collect(),
        }
    }

    /// The senders' answers to every planned range, as their stores give them.
    fn answers(f: &Fixture) -> BTreeMap<LogRange, RangeSum> {
        let v = view(f);
        let stores: Vec<&MemStore> = f.bank.stores.iter().collect();
        let states: Vec<&DurableState> = f.states.iter().collect();
        let planned = check::plan(&v);
        let logs = StoreLogs::build(&stores, &states, &planned).expect("index");
        planned
            .into_iter()
            .map(|r| (r, logs.range(r).expect("range")))
            .collect()
    }

    fn live(f: &Fixture, sums: BTreeMap<LogRange, RangeSum>) -> LiveReport {
        let found = check::check(&view(f), &Reported(sums)).expect("check");
        verdict(found, &f.globals, f.names.clone())
    }

    #[test]
    fn answered_by_the_branches_the_latest_snapshots_are_checked_and_consistent() {
        let f = fixture();
        let r = live(&f, answers(&f));
        assert!(r.consistent, "{r:#?}");
        assert!(r.nothing_checked.is_none());
        assert!(r.checked.channels_checked >= N * (N - 1), "{r:#?}");
        assert_eq!(r.checked.parts_checked, N * f.globals.len());
        assert_eq!(r.snapshots.len(), f.globals.len());
    }

    #[test]
    fn a_live_audit_that_checked_nothing_is_not_consistent_and_says_why() {
        let f = fixture();
        // Every log moved on (a newer snapshot compacted them all): each range is answered as
        // not whole and below the channel's new `compacted`.
        let moved: BTreeMap<LogRange, RangeSum> = answers(&f)
            .into_keys()
            .map(|r| {
                let gone = RangeSum {
                    count: 0,
                    money: 0,
                    whole: false,
                    compacted: Seq(r.upto.0 + 1),
                };
                (r, gone)
            })
            .collect();
        let r = live(&f, moved);
        assert!(!r.consistent, "{r:#?}");
        assert!(r.violations.is_empty(), "compacted is not a violation");
        assert_eq!(r.checked.channels_checked + r.checked.ledgers_checked, 0);
        let why = r.nothing_checked.expect("says why");
        assert!(
            why.contains("could be checked") && why.contains("compacted"),
            "{why}"
        );
        // No snapshot at all is not consistent either.
        let none = verdict(Findings::default(), &[], f.names.clone());
        assert!(!none.consistent);
        assert!(none
            .nothing_checked
            .is_some_and(|w| w.contains("no completed snapshot")));
    }

    #[test]
    fn missing_is_told_from_compacted_and_pruned() {
        let f = fixture();
        let latest = f.globals.last().expect("a snapshot").clone();
        // The latest snapshot's channel ranges answered as not whole though the sender has not
        // compacted that far: missing.
        let lost: BTreeMap<LogRange, RangeSum> = answers(&f)
            .into_iter()
            .map(|(r, s)| {
                let record = latest.parts[r.to.index()]
                    .channel_from(r.from)
                    .filter(|c| (c.applied_at_record, c.until) == (r.after, r.upto));
                if record.is_some() {
                    let gone = RangeSum {
                        whole: false,
                        count: 0,
                        money: 0,
                        ..s
                    };
                    (r, gone)
                } else {
                    (r, s)
                }
            })
            .collect();
        let r = live(&f, lost);
        assert!(!r.consistent);
        assert!(
            r.violations_typed
                .iter()
                .any(|v| v.kind == ViolationKind::HistoryMissing
                    && v.snapshot == Some(latest.snapshot)),
            "{r:#?}"
        );
        // A part a branch does not report: missing unless below what it pruned.
        let mut g = f;
        g.parts[1].retain(|p| p.snapshot != latest.snapshot);
        let sums = answers(&g);
        let r = live(&g, sums);
        assert_eq!(
            r.violation_counts,
            BTreeMap::from([(ViolationKind::MissingPart, 1)]),
            "{r:#?}"
        );
        g.states[1].pruned_below = SnapshotId(latest.snapshot.0 + 1);
        let sums = answers(&g);
        let r = live(&g, sums);
        assert!(r.consistent, "{r:#?}");
        assert_eq!(r.checked.parts_pruned, 1);
    }

    #[test]
    fn parts_are_asked_in_chunks_that_fit_a_frame() {
        let f = fixture();
        let chunks = part_chunks(&f.globals, 1);
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].len(), f.globals.len());
        // Many large parts: split, none over the budget, none left out.
        let mut big = f.globals[0].clone();
        let ch = big.parts[1].channels[0].clone();
        big.parts[1].channels = vec![ch; 2_000];
        let many: Vec<GlobalSnapshot> = (1..=40)
            .map(|k| GlobalSnapshot {
                snapshot: SnapshotId(k),
                ..big.clone()
            })
            .collect();
        let chunks = part_chunks(&many, 1);
        assert!(chunks.len() > 1);
        assert_eq!(chunks.iter().map(|c| c.len()).sum::<usize>(), 40);
        let one = Message::Reply(Reply::Part(Some(big.parts[1].clone())))
            .encode()
            .len();
        assert!(chunks.iter().all(|c| c.len() * one <= ANSWER_BUDGET));
    }
}
