//! `snapctl audit`: the consistency of a stopped cluster, from its stores.
//!
//! Opens every branch's store (each must belong to the same cluster, in the right directory)
//! and runs the one checker ([`crate::check`]) over them: every completed snapshot the initiator
//! keeps (shape, totals, each branch's own copy of its part), each snapshot's channel records
//! against the senders' logs, each branch's ledger from genesis to the first kept snapshot,
//! snapshot to snapshot and on to now, and the current state (nothing applied twice, nothing
//! lost, Σ balances + Σ transfers not yet applied = the genesis total). What compaction dropped
//! is counted as compacted, never as checked; what the logs must still hold and do not is a
//! violation. So the latest kept snapshot's channels and the ledger from it to now are always
//! checked against the logs.

use crate::check::{check_stored, Counts, StoredBranch, Violation, ViolationKind};
use crate::core::DurableState;
use crate::hosts::HostList;
use crate::snapshot::{GlobalSnapshot, LocalPart};
use crate::store::{branch_dir, Identity, SledKv, SledStore, StoreError};
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
    /// Each violation as one line naming branch, channel or snapshot.
    pub violations: Vec<String>,
    /// The same violations, typed: kind, snapshot, branch, channel `[from, to]` (branch
    /// indices, as in `branches`), detail.
    pub violations_typed: Vec<Violation>,
    /// How many violations of each kind (kinds with none left out).
    pub violation_counts: BTreeMap<ViolationKind, usize>,
    /// How many parts, channel records and ledger steps were checked, and how many of them
    /// compaction or pruning put out of reach.
    #[serde(flatten)]
    pub checked: Counts,
    pub branches: Vec<BranchReport>,
    /// The current epoch (0 until the first `snapctl reshape`).
    pub epoch: u64,
    /// Every epoch whose stores or record this data directory holds, oldest first, the current
    /// one last: each one's own verdict and how it began. `consistent` covers them all.
    pub epochs: Vec<EpochReport>,
}

/// One epoch of the cluster, as the audit found it.
#[derive(Clone, Debug, Serialize)]
pub struct EpochReport {
    pub epoch: u64,
    pub cluster_id: String,
    pub branches: Vec<String>,
    pub expected_total: u128,
    /// `current`, `retired` (kept under `epochs/<e>/`) or `purged` (only the next epoch's
    /// record of it remains).
    pub stores: &'static str,
    /// Its own audit (a purged epoch's: nothing to check, true).
    pub consistent: bool,
    pub snapshots_checked: usize,
    pub last_snapshot: Option<u64>,
    pub violations: Vec<String>,
    /// How it began (`None`: epoch 0, from host.list).
    pub began: Option<Boundary>,
}

/// The boundary between an epoch and the one before: its genesis against the previous epoch's
/// cut at the snapshot it began from.
#[derive(Clone, Debug, Serialize)]
pub struct Boundary {
    pub from_epoch: u64,
    pub snapshot: u64,
    pub minted: u64,
    /// `snapshot`: the record checked against the previous epoch's own copy of the snapshot;
    /// `record`: that epoch was purged, the record checked against itself.
    pub checked_against: &'static str,
    pub moves: Vec<crate::reshape::MoveLine>,
    pub consistent: bool,
    pub violations: Vec<String>,
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
        Cluster::open_with(data_dir, hosts, false)
    }

    /// Opens the stores of an ended epoch (`DATA/epochs/<e>/`), which a reshape marked retired.
    pub fn open_retired(dir: &Path) -> Result<Cluster, AuditError> {
        Cluster::open_with(dir, None, true)
    }

    fn open_with(
        data_dir: &Path,
        hosts: Option<&HostList>,
        retired: bool,
    ) -> Result<Cluster, AuditError> {
        let dirs: Vec<PathBuf> = match hosts {
            Some(h) => h
                .branches
                .iter()
                .map(|a| branch_dir(data_dir, *a))
                .collect(),
            None => discover(data_dir)?,
        };
        // A half-restored cluster is a mix of old and new stores: no verdict on it means anything.
        crate::restore::refuse_if_unfinished(data_dir, data_dir)?;
        let mut stores = Vec::with_capacity(dirs.len());
        for dir in &dirs {
            let store = SledStore::open(dir, None)?;
            if !retired || store.restoring()?.is_some() {
                store.refuse_if_restoring()?;
            }
            stores.push(store);
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
            if id.branches != identity.branches
                || id.cluster_id != identity.cluster_id
                || id.epoch != identity.epoch
            {
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
        let names = crate::check::names_of(&identity);
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
    let mut report = audit_cluster(&cluster)?;
    report.epochs = audit_epochs(data_dir, &cluster, &report)?;
    report.consistent = report.consistent
        && report
            .epochs
            .iter()
            .all(|e| e.consistent && e.began.as_ref().map_or(true, |b| b.consistent));
    Ok(report)
}

/// Every epoch back from the current one, as far as the stores (or records) go, and each
/// boundary between them (see [`crate::lineage`],
/// [`crate::store::epoch::Epoch::check_arithmetic`] and
/// [`crate::store::epoch::Epoch::check_cut`]).
fn audit_epochs(
    data_dir: &Path,
    current: &Cluster,
    report: &AuditReport,
) -> Result<Vec<EpochReport>, AuditError> {
    use crate::lineage::{lineage, Stores};
    let chain = lineage(data_dir, &current.identity)?;
    let mut out: Vec<EpochReport> = Vec::new();
    for e in &chain.ended {
        out.push(match &e.cluster {
            Some(c) => {
                let r = audit_cluster(c)?;
                EpochReport {
                    epoch: e.number,
                    cluster_id: format!("{:016x}", e.cluster_id),
                    branches: e.names.clone(),
                    expected_total: r.expected_total,
                    stores: Stores::Retired.as_str(),
                    consistent: r.consistent,
                    snapshots_checked: r.snapshots_checked,
                    last_snapshot: r.last_snapshot,
                    violations: r.violations,
                    began: None,
                }
            }
            None => EpochReport {
                epoch: e.number,
                cluster_id: format!("{:016x}", e.cluster_id),
                branches: e.names.clone(),
                expected_total: e.expected_total,
                stores: e.stores().as_str(),
                consistent: true,
                snapshots_checked: 0,
                last_snapshot: None,
                violations: Vec::new(),
                began: None,
            },
        });
    }
    out.push(EpochReport {
        epoch: current.identity.epoch_number(),
        cluster_id: format!("{:016x}", current.identity.cluster_id),
        branches: current.names.clone(),
        expected_total: report.expected_total,
        stores: Stores::Current.as_str(),
        consistent: report.consistent,
        snapshots_checked: report.snapshots_checked,
        last_snapshot: report.last_snapshot,
        violations: Vec::new(),
        began: None,
    });
    // Each boundary: out[i + 1] began from out[i] as chain.began[i] records.
    for (i, ep) in chain.began.iter().enumerate() {
        let prev = &chain.ended[i];
        let names = out[i + 1].branches.clone();
        let mut bad = ep.check_arithmetic(&names);
        bad.extend(prev.mismatch.clone());
        let against = match &prev.cluster {
            Some(c) => {
                match c.initiator().global(Some(ep.from.snapshot))? {
                    Some(g) => bad.extend(ep.check_cut(&g)),
                    None => bad.push(format!(
                        "epoch {}: began from snapshot {} of epoch {}, which that epoch's initiator ({}) does not hold",
                        ep.number,
                        ep.from.snapshot,
                        prev.number,
                        c.initiator().path().display()
                    )),
                }
                "snapshot"
            }
            None => {
                bad.extend(ep.check_origin_record());
                "record"
            }
        };
        let moves = ep
            .from
            .moves
            .iter()
            .map(|m| crate::reshape::MoveLine {
                from: m
                    .from
                    .and_then(|i| prev.names.get(i as usize).cloned())
                    .unwrap_or_else(|| "(minted)".to_string()),
                to: names.get(m.to as usize).cloned().unwrap_or_default(),
                amount: m.amount,
                why: m.why,
            })
            .collect();
        out[i + 1].began = Some(Boundary {
            from_epoch: prev.number,
            snapshot: ep.from.snapshot.0,
            minted: ep.minted,
            checked_against: against,
            moves,
            consistent: bad.is_empty(),
            violations: bad,
        });
    }
    Ok(out)
}

pub fn audit_cluster(c: &Cluster) -> Result<AuditReport, AuditError> {
    let n = c.stores.len();
    let id = &c.identity;
    let states: Vec<DurableState> = c
        .stores
        .iter()
        .map(|s| {
            // A record whose genesis list is short is the boundary check's violation.
            let genesis = id
                .genesis_balances()
                .get(s.identity().me.index())
                .copied()
                .unwrap_or(0);
            Ok(s.state()?
                .unwrap_or_else(|| DurableState::genesis(n, genesis)))
        })
        .collect::<Result<_, StoreError>>()?;
    let globals: Vec<GlobalSnapshot> = c.initiator().globals()?;
    let parts: Vec<Vec<LocalPart>> = c
        .stores
        .iter()
        .map(|s| s.parts())
        .collect::<Result<_, StoreError>>()?;
    let branches: Vec<StoredBranch<'_, SledKv>> = (0..n)
        .map(|b| StoredBranch {
            store: &c.stores[b],
            state: &states[b],
            parts: &parts[b],
        })
        .collect();
    let found = check_stored(&branches, &globals)?;
    let current = found.current.clone().unwrap_or_default();
    let report_branches = current
        .branches
        .iter()
        .enumerate()
        .map(|(b, f)| BranchReport {
            branch: c.names[b].clone(),
            balance: f.balance,
            sent: f.sent,
            applied: f.applied,
            in_flight: f.in_flight,
            in_flight_money: f.in_flight_money,
            snapshot_parts: parts[b].len() as u64,
        })
        .collect();
    let init_state = &states[id.initiator().index()];
    let started = init_state.next_snapshot.0.saturating_sub(1);
    Ok(AuditReport {
        consistent: found.consistent(),
        expected_total: id.genesis_total() as u128,
        current_total: current.total,
        snapshots_checked: globals.len(),
        last_snapshot: globals.last().map(|g| g.snapshot.0),
        history_from: found.history_from.0,
        snapshots_pending: started.saturating_sub(init_state.completed.0),
        transfers: current.branches.iter().map(|b| b.applied).sum(),
        violations: found.strings(),
        violation_counts: found.counts_by_kind(),
        checked: found.counts,
        violations_typed: found.violations,
        branches: report_branches,
        epoch: id.epoch_number(),
        epochs: Vec::new(),
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testbank::{identity, TestBank};
    use crate::core::WriteBatch;

    /// The regression of issue 11: since compaction starts the history at every completed
    /// snapshot, the stopped-store audit checked no kept snapshot's channels against the logs.
    /// A channel record of the latest kept snapshot that disagrees with the sender's log (its
    /// own copy and the initiator's agree, and the total is right) is a violation.
    #[test]
    fn audit_reports_a_corrupted_channel_record_of_the_latest_kept_snapshot() {
        let n = 3;
        let dir = tempfile::tempdir().expect("tmp");
        let dirs: Vec<PathBuf> = (0..n)
            .map(|me| {
                let id = identity(n, me);
                dir.path().join(Identity::branch_dir_name(&id.branches[me]))
            })
            .collect();
        {
            let stores = (0..n)
                .map(|me| SledStore::open(&dirs[me], Some(&identity(n, me))).expect("create"))
                .collect();
            let mut bank = TestBank::new(stores, 4, 5);
            bank.run(700);
        }
        let clean = audit(dir.path(), None).expect("audit");
        assert!(clean.consistent, "{:#?}", clean.violations);
        let latest = clean.last_snapshot.expect("snapshots completed");
        assert_eq!(clean.history_from, latest, "compacted from the latest");
        assert!(clean.checked.channels_checked >= n * (n - 1), "{clean:#?}");
        assert!(clean.checked.ledgers_checked >= n, "{clean:#?}");

        // Branch j recorded one unit more in flight from i and one less in its balance.
        let mut init = SledStore::open(&dirs[0], None).expect("open");
        let mut g = init.global(None).expect("read").expect("latest");
        assert_eq!(g.snapshot.0, latest);
        let (j, c) = g
            .parts
            .iter()
            .enumerate()
            .flat_map(|(j, p)| {
                p.channels
                    .iter()
                    .enumerate()
                    .map(move |(c, ch)| (j, c, ch.count))
            })
            .max_by_key(|x| x.2)
            .map(|(j, c, _)| (j, c))
            .expect("a channel");
        g.parts[j].channels[c].money += 1;
        g.parts[j].balance -= 1;
        let part = g.parts[j].clone();
        let from = part.channels[c].from;
        init.commit(&WriteBatch {
            globals: vec![g],
            ..WriteBatch::default()
        })
        .expect("tamper");
        drop(init);
        // When part j is the initiator's own, the store just closed is opened again: sled's
        // background threads may hold its lock for a moment after the drop.
        let mut own = open_when_unlocked(&dirs[j]);
        own.commit(&WriteBatch {
            parts: vec![part],
            ..WriteBatch::default()
        })
        .expect("tamper");
        drop(own);

        let r = audit(dir.path(), None).expect("audit");
        assert!(!r.consistent);
        assert_eq!(r.violations.len(), 1, "{:#?}", r.violations);
        assert_eq!(
            r.violation_counts,
            BTreeMap::from([(ViolationKind::ChannelMismatch, 1)])
        );
        let v = &r.violations_typed[0];
        assert_eq!(v.snapshot.map(|k| k.0), Some(latest));
        assert_eq!(v.channel, Some((from, crate::types::BranchId(j as u16))));
        assert!(
            r.violations[0].starts_with(&format!("snapshot {latest}: channel ")),
            "{}",
            r.violations[0]
        );
        // The JSON keeps the strings and adds the typed list and the counts by kind.
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["violations"][0], r.violations[0].as_str());
        assert_eq!(json["violations_typed"][0]["kind"], "channel_mismatch");
        assert_eq!(json["violations_typed"][0]["snapshot"], latest);
        assert_eq!(json["violation_counts"]["channel_mismatch"], 1);
        assert!(
            json["channels_checked"].as_u64().unwrap_or(0) >= 6,
            "{json:#}"
        );
    }

    /// Opens the store in `dir`, retrying for a few seconds while a just-closed handle of it
    /// still holds sled's lock.
    fn open_when_unlocked(dir: &std::path::Path) -> SledStore {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match SledStore::open(dir, None) {
                Err(StoreError::Locked(_)) if std::time::Instant::now() < end => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                other => return other.expect("open"),
            }
        }
    }
}
