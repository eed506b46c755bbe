//! Global consistency checks over the stores of a stopped cluster (`snapctl audit`).
//!
//! Checks, each violation naming the branch, channel or snapshot:
//! - every store belongs to the same cluster, in the right directory;
//! - **ledger**: each branch's balance follows from its transfers: the balance recorded in snapshot
//!   `k` equals the one of snapshot `k-1` (or the initial balance) plus what it received minus what
//!   it sent in between, and likewise from the last snapshot to the current state;
//! - **snapshots**: every completed global snapshot the initiator keeps is present at every branch
//!   that has not pruned it, equal to what the initiator kept, conserves money, and each channel's
//!   recorded money is exactly the transfers with sequence numbers in `(receiver's recorded
//!   watermark, sender's recorded seq]`;
//! - channels and ledgers are checked from `history_from` on: the snapshot compaction (or a
//!   restore) started the transfer logs at; older snapshots by presence, equality and totals;
//! - **current state**: no receiver applied more than its sender sent (nothing applied twice), no
//!   sender counts as acknowledged what its receiver did not apply (nothing lost), the transfer log
//!   holds every transfer not yet acknowledged, and Σ balances + Σ transfers not yet applied = the
//!   genesis total.

use crate::core::DurableState;
use crate::hosts::HostList;
use crate::snapshot::{GlobalSnapshot, LocalPart};
use crate::store::{branch_dir, Identity, LogSum, SledStore, StoreError};
use crate::types::{BranchId, Seq};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Setup(String),
}

/// Per-branch figures of the current state.
#[derive(Clone, Debug, Serialize)]
pub struct BranchReport {
    pub branch: String,
    pub balance: u64,
    pub sent: u64,
    pub applied: u64,
    /// Transfers this branch sent that their receivers have not applied yet.
    pub in_flight: u64,
    pub in_flight_money: u128,
    pub snapshot_parts: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct AuditReport {
    pub consistent: bool,
    pub expected_total: u128,
    pub current_total: u128,
    pub snapshots_checked: usize,
    pub last_snapshot: Option<u64>,
    /// Transfer logs and ledgers are checked from this snapshot's cut on (0: from genesis);
    /// older history was compacted (or the cluster was restored to it).
    pub history_from: u64,
    /// Snapshots started by the initiator and not complete.
    pub snapshots_pending: u64,
    /// Transfers applied by their receivers, in all.
    pub transfers: u64,
    pub violations: Vec<String>,
    pub branches: Vec<BranchReport>,
}

/// The opened stores of a whole cluster.
pub struct Cluster {
    pub identity: Identity,
    pub stores: Vec<SledStore>,
    pub names: Vec<String>,
}

impl Cluster {
    /// Opens every branch's store under `data_dir`. The branch list comes from `hosts` if given,
    /// else from the stores' own identities.
    pub fn open(data_dir: &Path, hosts: Option<&HostList>) -> Result<Cluster, AuditError> {
        let dirs: Vec<PathBuf> = match hosts {
            Some(h) => h
                .branches
                .iter()
                .map(|a| branch_dir(data_dir, *a))
                .collect(),
            None => discover(data_dir)?,
        };
        let mut stores = Vec::with_capacity(dirs.len());
        for dir in &dirs {
            stores.push(SledStore::open(dir, None)?);
        }
        let identity = stores[0].identity().clone();
        if let Some(h) = hosts {
            if identity.branches != h.canonical() {
                return Err(AuditError::Setup(format!(
                    "{}: made with host.list [{}], but the given host.list names [{}]",
                    stores[0].path().display(),
                    identity.branches.join(" "),
                    h.canonical().join(" ")
                )));
            }
        }
        for s in &stores {
            let id = s.identity();
            if id.branches != identity.branches || id.cluster_id != identity.cluster_id {
                return Err(AuditError::Setup(format!(
                    "{} belongs to another cluster than {}",
                    s.path().display(),
                    stores[0].path().display()
                )));
            }
        }
        // Order the stores by branch id and insist every branch is there exactly once.
        let n = identity.branches.len();
        let mut by_id: Vec<Option<SledStore>> = (0..n).map(|_| None).collect();
        for s in stores {
            let me = s.identity().me.index();
            if me >= n {
                return Err(AuditError::Setup(format!(
                    "{}: branch index {me} out of range",
                    s.path().display()
                )));
            }
            let expected_name = Identity::branch_dir_name(&identity.branches[me]);
            if s.path().file_name().and_then(|f| f.to_str()) != Some(expected_name.as_str()) {
                return Err(AuditError::Setup(format!(
                    "{} holds the store of branch {}, which belongs in {}",
                    s.path().display(),
                    identity.branches[me],
                    expected_name
                )));
            }
            if by_id[me].is_some() {
                return Err(AuditError::Setup(format!(
                    "two stores for branch {}",
                    identity.branches[me]
                )));
            }
            by_id[me] = Some(s);
        }
        let mut ordered = Vec::with_capacity(n);
        for (i, s) in by_id.into_iter().enumerate() {
            match s {
                Some(s) => ordered.push(s),
                None => {
                    return Err(AuditError::Setup(format!(
                        "no store for branch {} under {}",
                        identity.branches[i],
                        data_dir.display()
                    )))
                }
            }
        }
        let names = identity
            .branches
            .iter()
            .map(|b| b.strip_suffix(":S").unwrap_or(b).to_string())
            .collect();
        Ok(Cluster {
            identity,
            stores: ordered,
            names,
        })
    }

    pub fn initiator(&self) -> &SledStore {
        &self.stores[self.identity.initiator().index()]
    }
}

/// The branch store directories under `data_dir` (never empty).
pub(crate) fn discover(data_dir: &Path) -> Result<Vec<PathBuf>, AuditError> {
    let entries = std::fs::read_dir(data_dir).map_err(|e| {
        AuditError::Setup(format!(
            "cannot read data directory {}: {e}",
            data_dir.display()
        ))
    })?;
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("db").is_file())
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        return Err(AuditError::Setup(format!(
            "no branch stores under {}",
            data_dir.display()
        )));
    }
    Ok(dirs)
}

/// Reads every store and checks the whole cluster.
pub fn audit(data_dir: &Path, hosts: Option<&HostList>) -> Result<AuditReport, AuditError> {
    let cluster = Cluster::open(data_dir, hosts)?;
    audit_cluster(&cluster)
}

/// Where a branch's ledger stands: money it holds (at a snapshot: balance plus what was in flight
/// towards it) and the channel positions that corresponds to.
#[derive(Clone)]
struct LedgerPoint {
    balance: u128,
    /// Per peer: last seq sent to it.
    sent: Vec<Seq>,
    /// Per peer: last seq applied from it.
    applied: Vec<Seq>,
}

pub fn audit_cluster(c: &Cluster) -> Result<AuditReport, AuditError> {
    let n = c.stores.len();
    let id = &c.identity;
    let expected = id.genesis_total() as u128;
    let mut v: Vec<String> = Vec::new();
    let states: Vec<DurableState> = c
        .stores
        .iter()
        .map(|s| {
            Ok(s.state()?
                .unwrap_or_else(|| DurableState::genesis(n, id.initial_balance)))
        })
        .collect::<Result<_, StoreError>>()?;
    let name = |b: usize| c.names[b].as_str();

    // Ledger base: genesis.
    let mut base: Vec<LedgerPoint> = (0..n)
        .map(|_| LedgerPoint {
            balance: id.initial_balance as u128,
            sent: vec![Seq(0); n],
            applied: vec![Seq(0); n],
        })
        .collect();

    // Snapshots.
    let globals: Vec<GlobalSnapshot> = c.initiator().globals()?;
    let parts: Vec<BTreeMap<u64, LocalPart>> = c
        .stores
        .iter()
        .map(|s| Ok(s.parts()?.into_iter().map(|p| (p.snapshot.0, p)).collect()))
        .collect::<Result<_, StoreError>>()?;
    // Compaction (and stores rebuilt by `snapctl restore`) keep history only from a snapshot
    // on: older snapshots are checked for presence and totals, not against transfer logs.
    let history_from = states
        .iter()
        .map(|s| s.history_from)
        .max()
        .unwrap_or_default();
    if history_from.0 > 0 && !globals.iter().any(|g| g.snapshot == history_from) {
        v.push(format!(
            "history starts at snapshot {history_from}, which the initiator does not hold"
        ));
    }
    let logs = LogIndex::build(c, &states, &globals)?;
    for g in &globals {
        let k = g.snapshot;
        if g.parts.len() != n {
            v.push(format!(
                "snapshot {k}: has {} parts for {n} branches",
                g.parts.len()
            ));
            continue;
        }
        for (b, gp) in g.parts.iter().enumerate() {
            match parts[b].get(&k.0) {
                // Pruned there: each branch keeps only its latest parts.
                None if k < states[b].pruned_below => {}
                None => v.push(format!("snapshot {k}: missing at branch {}", name(b))),
                Some(p) if p != gp => v.push(format!(
                    "snapshot {k}: branch {}'s own part differs from the initiator's copy",
                    name(b)
                )),
                Some(_) => {}
            }
            if gp.branch.index() != b {
                v.push(format!(
                    "snapshot {k}: part {b} is labelled branch {}",
                    gp.branch
                ));
            }
        }
        let total: u128 = g.parts.iter().map(|p| p.money()).sum();
        if total != g.total || total != expected {
            v.push(format!(
                "snapshot {k}: total {total} (recorded {}), expected {expected}",
                g.total
            ));
        }
        // Channels: recorded money = the sender's transfers (receiver's watermark, sender's seq].
        let logged = k > history_from;
        for (j, pj) in g.parts.iter().enumerate().filter(|_| logged) {
            for ch in &pj.channels {
                let i = ch.from.index();
                if i >= n || i == j {
                    v.push(format!(
                        "snapshot {k}: branch {} records a channel from {}",
                        name(j),
                        ch.from
                    ));
                    continue;
                }
                let chan = format!("{}→{}", name(i), name(j));
                let sender_seq = g.parts[i].sent_to(BranchId(j as u16));
                if sender_seq != Some(ch.until) {
                    v.push(format!(
                        "snapshot {k}: channel {chan} closed at seq {} but the sender recorded {:?}",
                        ch.until,
                        sender_seq.map(|s| s.0)
                    ));
                    continue;
                }
                if ch.applied_at_record > ch.until {
                    v.push(format!(
                        "snapshot {k}: channel {chan}: receiver had applied seq {} beyond the sender's {} (applied twice or invented)",
                        ch.applied_at_record, ch.until
                    ));
                    continue;
                }
                let sum = logs.sum(c, i, j, ch.applied_at_record, ch.until)?;
                if !sum.dense {
                    v.push(format!(
                        "snapshot {k}: channel {chan}: sender's log lacks transfers {}..={}",
                        ch.applied_at_record.0 + 1,
                        ch.until
                    ));
                } else if sum.money != ch.money as u128 || sum.count != ch.count {
                    v.push(format!(
                        "snapshot {k}: channel {chan} recorded {} in {} transfers, but seqs {}..={} carry {} in {}",
                        ch.money, ch.count, ch.applied_at_record.0 + 1, ch.until, sum.money, sum.count
                    ));
                }
            }
        }
        // Ledger from the previous snapshot to this one.
        let mut next = Vec::with_capacity(n);
        for (b, p) in g.parts.iter().enumerate() {
            // At a cut, count the money in flight towards the branch as delivered: its ledger
            // point is then independent of the sender's log below the cut.
            let point = LedgerPoint {
                balance: p.money(),
                sent: (0..n)
                    .map(|x| p.sent_to(BranchId(x as u16)).unwrap_or(Seq(0)))
                    .collect(),
                applied: (0..n)
                    .map(|x| {
                        p.channel_from(BranchId(x as u16))
                            .map(|ch| ch.until)
                            .unwrap_or(Seq(0))
                    })
                    .collect(),
            };
            if logged {
                check_ledger(
                    c,
                    &logs,
                    b,
                    &base[b],
                    &point,
                    &format!("snapshot {k}"),
                    &mut v,
                )?;
            }
            next.push(point);
        }
        base = next;
    }

    // Current state.
    let mut current_total: u128 = 0;
    let mut transfers: u64 = 0;
    let mut branches = Vec::with_capacity(n);
    for (i, st) in states.iter().enumerate() {
        current_total += st.balance as u128;
        let mut in_flight = 0u64;
        let mut in_flight_money = 0u128;
        for (j, receiver) in states.iter().enumerate() {
            if i == j {
                continue;
            }
            let s = st.out[j].sent;
            let w = receiver.inc[i].applied;
            let chan = format!("{}→{}", name(i), name(j));
            if w > s {
                v.push(format!(
                    "channel {chan}: receiver applied up to seq {w} but the sender sent only {s} (applied twice or invented)"
                ));
                continue;
            }
            if st.out[j].acked > w {
                v.push(format!(
                    "channel {chan}: sender counts seq {} as acknowledged but the receiver applied only {w} (lost)",
                    st.out[j].acked
                ));
            }
            let sum = logs.sum(c, i, j, w, s)?;
            if !sum.dense {
                v.push(format!(
                    "channel {chan}: sender's log lacks transfers not yet applied ({}..={s})",
                    w.0 + 1
                ));
            }
            in_flight += sum.count;
            in_flight_money += sum.money;
        }
        current_total += in_flight_money;
        let applied: u64 = (0..n)
            .filter(|&j| j != i)
            .map(|j| st.inc[j].applied.0)
            .sum();
        transfers += applied;
        let now = LedgerPoint {
            balance: st.balance as u128,
            sent: st.out.iter().map(|o| o.sent).collect(),
            applied: st.inc.iter().map(|x| x.applied).collect(),
        };
        check_ledger(c, &logs, i, &base[i], &now, "current state", &mut v)?;
        branches.push(BranchReport {
            branch: name(i).to_string(),
            balance: st.balance,
            sent: st.out.iter().map(|o| o.sent.0).sum(),
            applied,
            in_flight,
            in_flight_money,
            snapshot_parts: parts[i].len() as u64,
        });
    }
    if current_total != expected {
        v.push(format!(
            "current state: Σ balances + Σ transfers in flight = {current_total}, expected {expected}"
        ));
    }
    let init_state = &states[id.initiator().index()];
    let started = init_state.next_snapshot.0.saturating_sub(1);
    Ok(AuditReport {
        consistent: v.is_empty(),
        expected_total: expected,
        current_total,
        snapshots_checked: globals.len(),
        last_snapshot: globals.last().map(|g| g.snapshot.0),
        history_from: history_from.0,
        snapshots_pending: started.saturating_sub(init_state.completed.0),
        transfers,
        violations: v,
        branches,
    })
}

/// Balance at `to` must be the balance at `from` plus money received minus money sent in between.
fn check_ledger(
    c: &Cluster,
    logs: &LogIndex,
    b: usize,
    from: &LedgerPoint,
    to: &LedgerPoint,
    what: &str,
    v: &mut Vec<String>,
) -> Result<(), StoreError> {
    let n = c.stores.len();
    let mut balance: i128 = from.balance as i128;
    for x in 0..n {
        if x == b {
            continue;
        }
        if to.sent[x] < from.sent[x] || to.applied[x] < from.applied[x] {
            v.push(format!(
                "{what}: branch {}'s channel positions with {} went backwards",
                c.names[b], c.names[x]
            ));
            return Ok(());
        }
        let out = logs.sum(c, b, x, from.sent[x], to.sent[x])?;
        let inc = logs.sum(c, x, b, from.applied[x], to.applied[x])?;
        if !out.dense || !inc.dense {
            v.push(format!(
                "{what}: transfer log between {} and {} has gaps; ledger of {} unchecked",
                c.names[b], c.names[x], c.names[b]
            ));
            return Ok(());
        }
        balance += inc.money as i128 - out.money as i128;
    }
    if balance != to.balance as i128 {
        v.push(format!(
            "{what}: branch {} holds {}, but its transfers give {balance} ({} by {})",
            c.names[b],
            to.balance,
            if (to.balance as i128) > balance {
                "money created"
            } else {
                "money lost"
            },
            (to.balance as i128 - balance).abs()
        ));
    }
    Ok(())
}

/// A snapshot the initiator started that is not complete, as the stores show it.
#[derive(Clone, Debug, Serialize)]
pub struct PendingView {
    pub snapshot: u64,
    /// Initiator's recording time, if it still records (else the time its part was recorded).
    pub started_us: Option<u64>,
    pub branches: Vec<PendingBranch>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PendingBranch {
    pub branch: String,
    /// `done` (its part is stored), `recording` (waits for markers) or `not recorded`.
    pub status: String,
    pub waiting_for_markers_from: Vec<String>,
}

/// The snapshots started but not complete, and what each branch still waits for.
pub fn pending(c: &Cluster) -> Result<Vec<PendingView>, AuditError> {
    let n = c.stores.len();
    let states: Vec<Option<DurableState>> = c
        .stores
        .iter()
        .map(|s| s.state())
        .collect::<Result<_, StoreError>>()?;
    let parts: Vec<BTreeMap<u64, LocalPart>> = c
        .stores
        .iter()
        .map(|s| Ok(s.parts()?.into_iter().map(|p| (p.snapshot.0, p)).collect()))
        .collect::<Result<_, StoreError>>()?;
    let init = c.identity.initiator().index();
    let Some(ist) = &states[init] else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for k in ist.completed.0 + 1..ist.next_snapshot.0 {
        let started_us = ist
            .recording
            .get(&k)
            .map(|r| r.recorded_at)
            .or_else(|| parts[init].get(&k).map(|p| p.recorded_at));
        let branches = (0..n)
            .map(|b| {
                let (status, waiting) = if parts[b].contains_key(&k) {
                    ("done", Vec::new())
                } else if let Some(rec) = states[b].as_ref().and_then(|s| s.recording.get(&k)) {
                    let from = (0..n)
                        .filter(|&x| x != b && rec.inc[x].until.is_none())
                        .map(|x| c.names[x].clone())
                        .collect();
                    ("recording", from)
                } else {
                    ("not recorded", Vec::new())
                };
                PendingBranch {
                    branch: c.names[b].clone(),
                    status: status.to_string(),
                    waiting_for_markers_from: waiting,
                }
            })
            .collect();
        out.push(PendingView {
            snapshot: k,
            started_us,
            branches,
        });
    }
    Ok(out)
}

/// Prefix sums of every channel's transfer log at the sequence numbers the audit asks about,
/// built in one pass over each log (a long-running cluster's logs hold millions of entries).
struct LogIndex {
    /// `[sender][receiver]`.
    sums: Vec<Vec<ChannelSums>>,
}

/// Sorted boundary seqs of one channel, and (count, money) of its log entries `<=` each.
type ChannelSums = (Vec<u64>, Vec<(u64, u128)>);

impl LogIndex {
    fn build(
        c: &Cluster,
        states: &[DurableState],
        globals: &[GlobalSnapshot],
    ) -> Result<LogIndex, StoreError> {
        let n = c.stores.len();
        let mut sums = Vec::with_capacity(n);
        for i in 0..n {
            let mut row = Vec::with_capacity(n);
            for j in 0..n {
                if i == j {
                    row.push((Vec::new(), Vec::new()));
                    continue;
                }
                let (bi, bj) = (BranchId(i as u16), BranchId(j as u16));
                let mut bounds = vec![0, states[i].out[j].sent.0, states[j].inc[i].applied.0];
                for g in globals.iter().filter(|g| g.parts.len() == n) {
                    bounds.extend(g.parts[i].sent_to(bj).map(|s| s.0));
                    if let Some(ch) = g.parts[j].channel_from(bi) {
                        bounds.push(ch.applied_at_record.0);
                        bounds.push(ch.until.0);
                    }
                }
                bounds.sort_unstable();
                bounds.dedup();
                let max = *bounds.last().unwrap_or(&0);
                let mut cum = Vec::with_capacity(bounds.len());
                let (mut count, mut money) = (0u64, 0u128);
                let mut next = 0usize;
                c.stores[i].scan_log(bj, Seq(0), Seq(max), &mut |seq, amount| {
                    while next < bounds.len() && bounds[next] < seq.0 {
                        cum.push((count, money));
                        next += 1;
                    }
                    count += 1;
                    money += amount as u128;
                })?;
                while cum.len() < bounds.len() {
                    cum.push((count, money));
                }
                row.push((bounds, cum));
            }
            sums.push(row);
        }
        Ok(LogIndex { sums })
    }

    /// Count and money of the transfers `(after, upto]` on channel `i → j`.
    fn sum(
        &self,
        c: &Cluster,
        i: usize,
        j: usize,
        after: Seq,
        upto: Seq,
    ) -> Result<LogSum, StoreError> {
        let (bounds, cum) = &self.sums[i][j];
        let at = |s: Seq| bounds.binary_search(&s.0).ok().map(|k| cum[k]);
        match (at(after), at(upto)) {
            (Some(a), Some(b)) if upto >= after => Ok(LogSum {
                count: b.0 - a.0,
                money: b.1 - a.1,
                dense: b.0 - a.0 == upto.0 - after.0,
            }),
            // Not a boundary the index knows: ask the store.
            _ => c.stores[i].log_sum(BranchId(j as u16), after, upto),
        }
    }
}
