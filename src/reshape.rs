//! `snapctl reshape --snapshot K --to NEW_HOSTS`: the stopped cluster becomes the cluster
//! `NEW_HOSTS` names, starting from the consistent cut of its completed snapshot K, as a new
//! epoch (see [`crate::store::epoch`]).
//!
//! Every branch in both lists (or `--move`d from an old address to a new one) begins the new
//! epoch with what it held at the cut: its recorded balance plus what was in flight towards it.
//! A removed branch's money goes to the `--give-to` branch, or is spread evenly over the new
//! list (the remainder, a unit each, to the first branches in list order). A new branch begins
//! with what `--fund ADDR=AMOUNT,FROM` moves to it from a branch that held that much at the cut,
//! plus `--mint N` of new money (for every new branch, recorded as minted). Channels start at
//! sequence 0; snapshot ids continue after the highest any branch ever started.
//!
//! # Layout
//! - `DATA/<ip>_<port>/`: the current epoch's stores.
//! - `DATA/epochs/<e>/`: the stores of epoch `e` once a reshape ended it, each marked retired
//!   (no branch starts on it), with that epoch's key file; `snapctl audit` checks them and the
//!   boundary, `snapctl reshape --purge` deletes them.
//! - `DATA/reshape-staging/`: the new epoch's stores while they are written.
//! - `DATA/reshape-in-progress`: the commit mark (JSON): the new epoch is decided and its stores
//!   are being put in place.
//!
//! # Crash safety
//! 1. Everything is read and planned first; nothing is written unless all of it is valid.
//! 2. The new stores (and key file) are written, durably, under `reshape-staging/`. A crash up
//!    to here leaves the old cluster as it was (the staging directory is ignored by every
//!    program and removed by the next reshape).
//! 3. **Commit**: `reshape-in-progress` is written atomically and durably. From here the new
//!    epoch is the cluster: no branch starts on any store of the data directory while the
//!    file is there, and running the same reshape again finishes it.
//! 4. Each old store is marked retired and moved to `epochs/<e>/`; then each new store is moved
//!    from staging into place; then the key file is replaced (the old one kept in `epochs/<e>/`).
//!    Each step checks what is done already, so it can be redone.
//! 5. The staging directory and, last, the mark are removed.
//!
//! **Test hook**: `SNAPBANK_RESHAPE_CRASH_AFTER=N` kills the process after its N-th durable
//! write ([`crate::durable::CrashHook`]).

use crate::audit::Cluster;
use crate::core::DurableState;
use crate::hosts::HostList;
use crate::secure::ClusterKey;
use crate::snapshot::GlobalSnapshot;
use crate::store::epoch::{Epoch, Movement, Provenance, Why};
use crate::store::{Identity, SledStore, StoreError};
use crate::types::{Amount, BranchId, SnapshotId};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The commit mark in the data directory.
pub const MARKER_FILE: &str = "reshape-in-progress";
/// Where the new epoch's stores are written before the commit.
pub const STAGING_DIR: &str = "reshape-staging";
/// Where ended epochs' stores are kept: `DATA/epochs/<e>/`.
pub const EPOCHS_DIR: &str = "epochs";
/// What `--purge` renames `DATA/epochs/<e>/` to (`<e>.purging`) before deleting it.
const PURGING_EXT: &str = "purging";
/// The note in each `DATA/epochs/<e>/`.
const RETIRED_NOTE: &str = "RETIRED";
/// The key file's name in staging and in `epochs/<e>/`.
const KEY_NAME: &str = "cluster.key";
const CRASH_AFTER_ENV: &str = "SNAPBANK_RESHAPE_CRASH_AFTER";

#[derive(Debug, thiserror::Error)]
pub enum ReshapeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Nothing was written.
    #[error("{0}")]
    Refused(String),
    /// A write failed before the commit: the old cluster is intact.
    #[error("reshape stopped before its commit: {0}; nothing of the cluster changed (it is still epoch {1}); fix that and run it again")]
    BeforeCommit(String, u64),
    /// A write failed after the commit: the new epoch is decided and unfinished.
    #[error("reshape to epoch {epoch} is committed but stopped part-way: {cause}; no branch starts until the same `snapctl reshape` is run again and finishes")]
    Interrupted { epoch: u64, cause: String },
}

/// What the operator asked for.
#[derive(Clone, Debug)]
pub struct Request {
    /// The old cluster's host.list (else the stores' own identities).
    pub hosts: Option<HostList>,
    pub snapshot: SnapshotId,
    pub to: HostList,
    /// `--move OLD=NEW`.
    pub moves: Vec<(SocketAddr, SocketAddr)>,
    pub give_to: Option<SocketAddr>,
    /// `--fund ADDR=AMOUNT,FROM`.
    pub fund: Vec<(SocketAddr, Amount, SocketAddr)>,
    /// `--mint N` for every new branch.
    pub mint: Option<Amount>,
    /// The cluster key file to carry over (absent with `--insecure` clusters).
    pub key: Option<PathBuf>,
    /// More key files of the old cluster (the per-host files of `snapctl keygen --per-host`):
    /// their private keys complete `key`'s, so that every kept branch keeps its own.
    pub old_keys: Vec<PathBuf>,
}

/// The commit mark's contents: enough to finish without the old cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Mark {
    from_epoch: u64,
    epoch: u64,
    snapshot: SnapshotId,
    /// The new host.list, canonical.
    to: Vec<String>,
    /// Old store directory names, to retire and move to `epochs/<from_epoch>/`.
    retire: Vec<String>,
    /// New store directory names, to move from staging into place.
    install: Vec<String>,
    /// The key file to replace with staging's, if any.
    key: Option<PathBuf>,
}

/// What a reshape did.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub from_epoch: u64,
    pub epoch: u64,
    pub snapshot: u64,
    /// Per new branch: its address and what it begins with.
    pub balances: Vec<(String, Amount)>,
    pub expected_total: Amount,
    pub minted: Amount,
    pub moves: Vec<MoveLine>,
    pub retired: Vec<String>,
    pub next_snapshot: u64,
    /// Where the old epoch's stores are kept now.
    pub kept_in: PathBuf,
    /// Whether this run only finished a committed reshape.
    pub resumed: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct MoveLine {
    pub from: String,
    pub to: String,
    pub amount: Amount,
    pub why: Why,
}

impl MoveLine {
    /// What people read: the recorded reason, but `moved` for a kept branch whose address
    /// changed (`--move`; the record says `kept`).
    pub fn label(&self) -> &'static str {
        match self.why {
            Why::Kept if self.from != self.to => "moved",
            Why::Kept => "kept",
            Why::Closed => "closed",
            Why::Funded => "funded",
            Why::Minted => "minted",
        }
    }
}

/// The epoch a committed, unfinished reshape of `data_dir` makes, if one is marked.
pub fn unfinished(data_dir: &Path) -> Result<Option<u64>, StoreError> {
    Ok(read_mark(data_dir)?.map(|m| m.epoch))
}

fn read_mark(data_dir: &Path) -> Result<Option<Mark>, StoreError> {
    let path = data_dir.join(MARKER_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(StoreError::Io {
                path,
                what: format!(
                    "cannot read this mark of an unfinished `snapctl reshape`: {}",
                    crate::store::describe_io(&e)
                ),
            })
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StoreError::Io {
            path,
            what: format!("marks an unfinished `snapctl reshape` but cannot be read ({e}); restore the file from a copy, or ask for help: the stores may be half moved"),
        })
}

/// The error a branch whose store is `store_dir` stops with while a reshape of `data_dir` is
/// committed and unfinished.
pub fn refuse_if_unfinished(data_dir: &Path, store_dir: &Path) -> Result<(), StoreError> {
    match unfinished(data_dir)? {
        Some(epoch) => Err(StoreError::ReshapeUnfinished {
            path: store_dir.to_path_buf(),
            epoch,
        }),
        None => Ok(()),
    }
}

/// Reshapes the stopped cluster whose stores are under `data_dir`, or finishes a committed
/// reshape with the same snapshot and new list.
pub fn reshape(data_dir: &Path, req: &Request) -> Result<Summary, ReshapeError> {
    if let Some(mark) = read_mark(data_dir)? {
        if mark.snapshot != req.snapshot || mark.to != req.to.canonical() {
            return Err(ReshapeError::Refused(format!(
                "an unfinished reshape to epoch {} (--snapshot {} --to [{}]) must be finished first: run it again with that --snapshot and a --to of that list",
                mark.epoch,
                mark.snapshot,
                mark.to.join(" ")
            )));
        }
        let mut hook = crate::durable::CrashHook::from_env(CRASH_AFTER_ENV, "reshape");
        finish(data_dir, &mark, &mut hook)?;
        return resumed_summary(data_dir, &mark);
    }
    if let Some(done) = already_done(data_dir, req)? {
        return Ok(done);
    }
    if let Some(k) = crate::restore::unfinished(data_dir)? {
        return Err(ReshapeError::Refused(format!(
            "an unfinished `snapctl restore --snapshot {k}` must be finished first: run it again"
        )));
    }
    let old = Cluster::open(data_dir, req.hosts.as_ref()).map_err(|e| match e {
        crate::audit::AuditError::Store(s) => ReshapeError::Store(s),
        crate::audit::AuditError::Setup(s) => ReshapeError::Refused(s),
    })?;
    let plan = plan(&old, req)?;
    let from_epoch = old.identity.epoch_number();
    in_the_way(data_dir, &old, &plan.install, from_epoch)?;
    let mut hook = crate::durable::CrashHook::from_env(CRASH_AFTER_ENV, "reshape");
    let before = |e: String| ReshapeError::BeforeCommit(e, from_epoch);
    // 2. The new stores, under staging.
    let staging = data_dir.join(STAGING_DIR);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| {
            before(format!(
                "cannot remove {} (left by an earlier reshape that did not commit): {e}",
                staging.display()
            ))
        })?;
    }
    crate::durable::create_dir_all(&staging)
        .map_err(|e| before(format!("cannot create {}: {e}", staging.display())))?;
    for (j, (identity, state)) in plan.stores.iter().enumerate() {
        let dir = staging.join(&plan.install[j]);
        let mut s = SledStore::open(&dir, Some(identity)).map_err(|e| before(e.to_string()))?;
        s.put_state(state).map_err(|e| before(e.to_string()))?;
        s.flush().map_err(|e| before(e.to_string()))?;
        hook.done();
    }
    if let Some(key) = &plan.key {
        let path = staging.join(KEY_NAME);
        crate::durable::write_atomic(&path, key.to_text().as_bytes(), Some(0o600))
            .map_err(|e| before(format!("cannot write {}: {e}", path.display())))?;
        hook.done();
    }
    crate::durable::sync_dir(&staging)
        .and_then(|()| crate::durable::sync_dir(data_dir))
        .map_err(|e| before(format!("cannot sync {}: {e}", staging.display())))?;
    // 3. Commit, while the old stores are still held open (no branch can start on them).
    let mark = Mark {
        from_epoch,
        epoch: from_epoch + 1,
        snapshot: req.snapshot,
        to: req.to.canonical(),
        retire: old
            .identity
            .branches
            .iter()
            .map(|b| Identity::branch_dir_name(b))
            .collect(),
        install: plan.install.clone(),
        key: plan.key.as_ref().and(req.key.clone()),
    };
    let text = serde_json::to_vec_pretty(&mark)
        .map_err(|e| before(format!("cannot encode the commit mark: {e}")))?;
    let mark_path = data_dir.join(MARKER_FILE);
    crate::durable::write_atomic(&mark_path, &text, None)
        .map_err(|e| before(format!("cannot write {}: {e}", mark_path.display())))?;
    hook.done();
    drop(old);
    // 4–5.
    finish(data_dir, &mark, &mut hook)?;
    Ok(plan.summary)
}

/// The new epoch, worked out and checked, nothing written.
struct Plan {
    /// Per new branch: its store's identity and first state.
    stores: Vec<(Identity, DurableState)>,
    /// Per new branch: its store's directory name.
    install: Vec<String>,
    key: Option<ClusterKey>,
    summary: Summary,
}

fn refused<T>(what: String) -> Result<T, ReshapeError> {
    Err(ReshapeError::Refused(what))
}

fn plan(old: &Cluster, req: &Request) -> Result<Plan, ReshapeError> {
    let k = req.snapshot;
    let oid = &old.identity;
    let old_addrs: Vec<SocketAddr> = oid
        .branches
        .iter()
        .map(|b| {
            let a = b.strip_suffix(":S").unwrap_or(b);
            a.parse().map_err(|_| {
                ReshapeError::Refused(format!(
                    "the stores name branch '{b}', which is not an address"
                ))
            })
        })
        .collect::<Result<_, _>>()?;
    let new_addrs = &req.to.branches;
    let new_names: Vec<String> = new_addrs.iter().map(|a| a.to_string()).collect();
    if req.to.canonical() == oid.branches && req.moves.is_empty() {
        return refused(format!(
            "the new host.list names the cluster's own branches [{}]: nothing to reshape",
            oid.branches.join(" ")
        ));
    }
    // The completed snapshot the new epoch starts from.
    let globals: Vec<GlobalSnapshot> = old.initiator().globals()?;
    let Some(g) = globals.iter().find(|g| g.snapshot == k) else {
        let ids: Vec<SnapshotId> = globals.iter().map(|g| g.snapshot).collect();
        return refused(format!(
            "snapshot {k} is not a completed snapshot the initiator keeps (kept: {}); choose one of those",
            crate::restore::id_ranges(&ids)
        ));
    };
    if g.parts.len() != old_addrs.len()
        || !g.conserves_money()
        || g.expected_total != oid.genesis_total()
    {
        return refused(format!(
            "snapshot {k} has {} parts for {} branches and totals {} (expected {}); refusing to start an epoch from it",
            g.parts.len(),
            old_addrs.len(),
            g.total,
            g.expected_total
        ));
    }
    let cut: Vec<Amount> = g
        .parts
        .iter()
        .map(|p| Amount::try_from(p.money()))
        .collect::<Result<_, _>>()
        .map_err(|_| ReshapeError::Refused(format!("snapshot {k}: a balance overflows")))?;
    // Old branch → new branch.
    let mut to_new: Vec<Option<usize>> = old_addrs
        .iter()
        .map(|a| new_addrs.iter().position(|n| n == a))
        .collect();
    for &(from, to) in &req.moves {
        let Some(i) = old_addrs.iter().position(|a| *a == from) else {
            return refused(format!(
                "--move {from}={to}: {from} is not a branch of the cluster ([{}])",
                oid.branches.join(" ")
            ));
        };
        let Some(j) = new_addrs.iter().position(|a| *a == to) else {
            return refused(format!(
                "--move {from}={to}: {to} is not in the new host.list"
            ));
        };
        if new_addrs.contains(&from) {
            return refused(format!(
                "--move {from}={to}: {from} is still in the new host.list; a moved branch leaves its old address"
            ));
        }
        if old_addrs.contains(&to) {
            return refused(format!(
                "--move {from}={to}: {to} is a branch of the cluster already"
            ));
        }
        if to_new.contains(&Some(j)) {
            return refused(format!(
                "--move {from}={to}: another branch moves to {to} as well"
            ));
        }
        if to_new[i].is_some() {
            return refused(format!("--move {from}={to}: {from} is moved twice"));
        }
        to_new[i] = Some(j);
    }
    let removed: Vec<usize> = (0..old_addrs.len())
        .filter(|&i| to_new[i].is_none())
        .collect();
    let added: Vec<usize> = (0..new_addrs.len())
        .filter(|&j| !to_new.contains(&Some(j)))
        .collect();
    let name_old = |i: usize| old_addrs[i].to_string();
    let old_of = |j: usize| to_new.iter().position(|t| *t == Some(j));

    let mut moves: Vec<Movement> = Vec::new();
    let mut funded_from = vec![0u128; old_addrs.len()];
    let mut into = vec![0u128; new_addrs.len()];
    // New branches: funded from kept ones, or minted.
    for &(addr, amount, from) in &req.fund {
        let Some(j) = new_addrs.iter().position(|a| *a == addr) else {
            return refused(format!(
                "--fund {addr}={amount},{from}: {addr} is not in the new host.list"
            ));
        };
        if !added.contains(&j) {
            return refused(format!(
                "--fund {addr}={amount},{from}: {addr} is no new branch (it keeps its own money)"
            ));
        }
        let i = match old_addrs.iter().position(|a| *a == from) {
            Some(i) if to_new[i].is_some() => i,
            Some(_) => {
                return refused(format!(
                    "--fund {addr}={amount},{from}: {from} is being removed; its money goes by --give-to"
                ))
            }
            None => match new_addrs
                .iter()
                .position(|a| *a == from)
                .and_then(&old_of)
            {
                Some(i) => i,
                None => {
                    return refused(format!(
                        "--fund {addr}={amount},{from}: {from} is no branch of the cluster that stays"
                    ))
                }
            },
        };
        funded_from[i] += amount as u128;
        if funded_from[i] > cut[i] as u128 {
            return refused(format!(
                "--fund: {from} would give {} in all, but it held {} at snapshot {k}",
                funded_from[i], cut[i]
            ));
        }
        into[j] += amount as u128;
        moves.push(Movement {
            from: Some(i as u16),
            to: j as u16,
            amount,
            why: Why::Funded,
        });
    }
    let mut minted = 0u128;
    if let Some(m) = req.mint {
        if added.is_empty() {
            return refused(format!(
                "--mint {m}: the new host.list adds no branch; new money is only for new branches"
            ));
        }
        for &j in &added {
            into[j] += m as u128;
            minted += m as u128;
            moves.push(Movement {
                from: None,
                to: j as u16,
                amount: m,
                why: Why::Minted,
            });
        }
    }
    if let Some(&j) = added.iter().find(|&&j| into[j] == 0) {
        return refused(format!(
            "new branch {} would begin with nothing: fund it (--fund {}=AMOUNT,FROM) or mint for it (--mint N)",
            new_addrs[j], new_addrs[j]
        ));
    }
    // Kept branches keep what they held, less what they fund.
    for (i, t) in to_new.iter().enumerate() {
        if let Some(j) = *t {
            let kept = cut[i] as u128 - funded_from[i];
            into[j] += kept;
            moves.push(Movement {
                from: Some(i as u16),
                to: j as u16,
                amount: kept as Amount,
                why: Why::Kept,
            });
        }
    }
    // Removed branches' money.
    if let Some(to) = req.give_to {
        if removed.iter().any(|&i| old_addrs[i] == to) {
            return refused(format!(
                "--give-to {to}: {to} is one of the branches being removed"
            ));
        }
        if removed.is_empty() {
            return refused(format!(
                "--give-to {to}: no branch is removed, so there is no money to give"
            ));
        }
    }
    for &i in &removed {
        match req.give_to {
            Some(to) => {
                let Some(j) = new_addrs.iter().position(|a| *a == to) else {
                    return refused(format!("--give-to {to}: {to} is not in the new host.list"));
                };
                into[j] += cut[i] as u128;
                moves.push(Movement {
                    from: Some(i as u16),
                    to: j as u16,
                    amount: cut[i],
                    why: Why::Closed,
                });
            }
            None => {
                let n = new_addrs.len() as u64;
                let (each, rest) = (cut[i] / n, cut[i] % n);
                for (j, slot) in into.iter_mut().enumerate() {
                    let amount = each + u64::from((j as u64) < rest);
                    if amount == 0 {
                        continue;
                    }
                    *slot += amount as u128;
                    moves.push(Movement {
                        from: Some(i as u16),
                        to: j as u16,
                        amount,
                        why: Why::Closed,
                    });
                }
            }
        }
    }
    let genesis: Vec<Amount> = into
        .iter()
        .map(|&m| Amount::try_from(m))
        .collect::<Result<_, _>>()
        .map_err(|_| ReshapeError::Refused("a new branch's balance overflows".into()))?;
    let expected_total = u128::from(oid.genesis_total()) + minted;
    let expected_total = Amount::try_from(expected_total).map_err(|_| {
        ReshapeError::Refused(format!(
            "--mint: the bank's total {expected_total} overflows"
        ))
    })?;
    // Ids only grow: continue after the highest snapshot any branch has seen.
    let mut highest = k;
    for s in &old.stores {
        if let Some(st) = s.state()? {
            highest = highest
                .max(st.last_recorded)
                .max(st.parts_done)
                .max(SnapshotId(st.next_snapshot.0.saturating_sub(1)));
        }
    }
    let epoch = Epoch {
        number: oid.epoch_number() + 1,
        genesis: genesis.clone(),
        expected_total,
        minted: minted as Amount,
        snapshots_after: highest,
        from: Provenance {
            epoch: oid.epoch_number(),
            cluster_id: oid.cluster_id,
            branches: oid.branches.clone(),
            expected_total: oid.genesis_total(),
            snapshot: k,
            cut,
            moves,
        },
        made_at_us: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64),
    };
    // The plan's own arithmetic, checked as the audit will check it: a stored snapshot that
    // decodes but does not add up (a damaged store) is refused here, never recorded.
    let bad = epoch.check_arithmetic(&new_names);
    if !bad.is_empty() {
        return refused(format!(
            "snapshot {k}'s figures do not add up ({}); the stores may be damaged: run snapctl audit",
            bad.join("; ")
        ));
    }
    let branches = req.to.canonical();
    let n = branches.len();
    let next = SnapshotId(highest.0 + 1);
    let stores: Vec<(Identity, DurableState)> = (0..n)
        .map(|j| {
            let id = Identity::of_epoch(
                branches.clone(),
                BranchId(j as u16),
                oid.initial_balance,
                epoch.clone(),
            );
            let mut st = DurableState::genesis(n, genesis[j]);
            st.next_snapshot = next;
            st.last_recorded = highest;
            st.parts_done = highest;
            st.completed = highest;
            for x in 0..n {
                st.out[x].marker_acked = highest;
                st.out[x].part_acked = highest;
                st.inc[x].marker = highest;
                st.inc[x].part = highest;
            }
            (id, st)
        })
        .collect();
    let install: Vec<String> = branches
        .iter()
        .map(|b| Identity::branch_dir_name(b))
        .collect();
    let key = match &req.key {
        Some(path) if path.exists() => {
            let mut old_key =
                ClusterKey::load(path).map_err(|e| ReshapeError::Refused(e.to_string()))?;
            for more in &req.old_keys {
                let k = ClusterKey::load(more).map_err(|e| ReshapeError::Refused(e.to_string()))?;
                old_key.complete_from(&k).map_err(|why| {
                    ReshapeError::Refused(format!(
                        "key file {} is not of this cluster's key {}: {why}",
                        more.display(),
                        path.display()
                    ))
                })?;
            }
            let same: Vec<SocketAddr> = new_addrs
                .iter()
                .copied()
                .filter(|a| old_addrs.contains(a))
                .collect();
            // A kept branch keeps its key pair: the new key file must hold its private key.
            let lacking: Vec<String> = same
                .iter()
                .filter(|a| {
                    old_key
                        .branches
                        .iter()
                        .any(|b| b.addr == **a && b.private.is_none())
                })
                .map(|a| a.to_string())
                .collect();
            if !lacking.is_empty() {
                return refused(format!(
                    "key file {} holds no private key for {}, which the new epoch keeps (it is a \
                     per-host key file): give the other hosts' key files too with --old-keys DIR",
                    path.display(),
                    lacking.join(", ")
                ));
            }
            Some(old_key.reshaped(&req.to, &same))
        }
        _ => None,
    };
    let summary = Summary {
        from_epoch: oid.epoch_number(),
        epoch: epoch.number,
        snapshot: k.0,
        balances: new_names
            .iter()
            .cloned()
            .zip(genesis.iter().copied())
            .collect(),
        expected_total,
        minted: epoch.minted,
        moves: epoch
            .from
            .moves
            .iter()
            .map(|m| MoveLine {
                from: m
                    .from
                    .map_or_else(|| "(minted)".to_string(), |i| name_old(i as usize)),
                to: new_names[m.to as usize].clone(),
                amount: m.amount,
                why: m.why,
            })
            .collect(),
        retired: removed.iter().map(|&i| name_old(i)).collect(),
        next_snapshot: next.0,
        kept_in: PathBuf::from(EPOCHS_DIR).join(oid.epoch_number().to_string()),
        resumed: false,
    };
    Ok(Plan {
        stores,
        install,
        key,
        summary,
    })
}

/// Refuses, before anything is written, what would stop the reshape after its commit: an
/// `epochs/<from_epoch>/` left from an earlier reshape, or a directory where a new store goes
/// that is no store of the old cluster.
fn in_the_way(
    data_dir: &Path,
    old: &Cluster,
    install: &[String],
    from_epoch: u64,
) -> Result<(), ReshapeError> {
    let kept = data_dir.join(EPOCHS_DIR).join(from_epoch.to_string());
    if kept.exists() {
        return refused(format!(
            "{} exists already (left from an earlier reshape of epoch {from_epoch}?): the old \
             stores would be retired there; move it elsewhere and run the reshape again",
            kept.display()
        ));
    }
    let old_names: Vec<String> = old
        .identity
        .branches
        .iter()
        .map(|b| Identity::branch_dir_name(b))
        .collect();
    for name in install {
        let path = data_dir.join(name);
        if path.exists() && !old_names.contains(name) {
            return refused(format!(
                "{} is in the way of the new branch's store and is no store of this cluster; \
                 move it elsewhere and run the reshape again",
                path.display()
            ));
        }
    }
    Ok(())
}

/// Steps 4–5: from the commit mark on, each step checks what is done, so a rerun finishes.
fn finish(
    data_dir: &Path,
    mark: &Mark,
    hook: &mut crate::durable::CrashHook,
) -> Result<(), ReshapeError> {
    let fail = |cause: String| ReshapeError::Interrupted {
        epoch: mark.epoch,
        cause,
    };
    let kept = data_dir.join(EPOCHS_DIR).join(mark.from_epoch.to_string());
    let staging = data_dir.join(STAGING_DIR);
    crate::durable::create_dir_all(&kept)
        .map_err(|e| fail(format!("cannot create {}: {e}", kept.display())))?;
    // Every old store: marked retired, then moved aside.
    for name in &mark.retire {
        let (from, to) = (data_dir.join(name), kept.join(name));
        if to.exists() || !from.exists() {
            continue;
        }
        {
            let mut s = SledStore::open(&from, None).map_err(|e| fail(e.to_string()))?;
            if s.retired().map_err(|e| fail(e.to_string()))?.is_none() {
                s.set_retired(mark.epoch).map_err(|e| fail(e.to_string()))?;
                hook.done();
            }
        }
        rename_durably(&from, &to).map_err(fail)?;
        hook.done();
    }
    // Every new store into place.
    for name in &mark.install {
        let (from, to) = (staging.join(name), data_dir.join(name));
        if !from.exists() {
            if to.exists() {
                continue;
            }
            return Err(fail(format!(
                "the new store {} is missing from {}",
                name,
                staging.display()
            )));
        }
        if to.exists() {
            return Err(fail(format!(
                "{} is in the way of the new store of the same name (it is no store of the old cluster); move it elsewhere",
                to.display()
            )));
        }
        rename_durably(&from, &to).map_err(fail)?;
        hook.done();
    }
    // The key file: the old one kept with its epoch, the new one in its place.
    let staged_key = staging.join(KEY_NAME);
    if let (Some(path), true) = (&mark.key, staged_key.exists()) {
        let old_copy = kept.join(KEY_NAME);
        if path.exists() && !old_copy.exists() {
            let text = std::fs::read(path)
                .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
            crate::durable::write_atomic(&old_copy, &text, Some(0o600))
                .map_err(|e| fail(format!("cannot write {}: {e}", old_copy.display())))?;
            hook.done();
        }
        let text = std::fs::read(&staged_key)
            .map_err(|e| fail(format!("cannot read {}: {e}", staged_key.display())))?;
        crate::durable::write_atomic(path, &text, Some(0o600))
            .map_err(|e| fail(format!("cannot write {}: {e}", path.display())))?;
        hook.done();
    }
    let note = kept.join(RETIRED_NOTE);
    if !note.exists() {
        let text = format!(
            "These are the stores of epoch {from} of this cluster, retired by `snapctl reshape --snapshot {k}`, which made epoch {to} from its snapshot {k}.\n\
             No branch starts on them. `snapctl audit` checks them and the boundary; `snapctl reshape --purge` deletes them.\n",
            from = mark.from_epoch,
            to = mark.epoch,
            k = mark.snapshot
        );
        crate::durable::write_atomic(&note, text.as_bytes(), None)
            .map_err(|e| fail(format!("cannot write {}: {e}", note.display())))?;
        hook.done();
    }
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .and_then(|()| crate::durable::sync_dir(data_dir))
            .map_err(|e| fail(format!("cannot remove {}: {e}", staging.display())))?;
        hook.done();
    }
    let mark_path = data_dir.join(MARKER_FILE);
    std::fs::remove_file(&mark_path)
        .and_then(|()| crate::durable::sync_dir(data_dir))
        .map_err(|e| fail(format!("cannot remove {}: {e}", mark_path.display())))?;
    hook.done();
    Ok(())
}

/// Renames `from` to `to` and syncs both directories.
fn rename_durably(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::rename(from, to)
        .and_then(|()| crate::durable::sync_dir(crate::durable::parent_of(to)))
        .and_then(|()| crate::durable::sync_dir(crate::durable::parent_of(from)))
        .map_err(|e| format!("cannot move {} to {}: {e}", from.display(), to.display()))
}

/// A rerun of a reshape that finished (a crash after its last write, or an operator making
/// sure): the stores are of the epoch it made, from the same snapshot to the same list.
fn already_done(data_dir: &Path, req: &Request) -> Result<Option<Summary>, ReshapeError> {
    let to = req.to.canonical();
    let Some(first) = to.first().map(|b| Identity::branch_dir_name(b)) else {
        return Ok(None);
    };
    let dir = data_dir.join(&first);
    if !dir.join("db").is_file() {
        return Ok(None);
    }
    let s = SledStore::open(&dir, None)?;
    let id = s.identity().clone();
    drop(s);
    match &id.epoch {
        Some(e) if id.branches == to && e.from.snapshot == req.snapshot => {
            let mark = Mark {
                from_epoch: e.from.epoch,
                epoch: e.number,
                snapshot: req.snapshot,
                to,
                retire: Vec::new(),
                install: vec![first],
                key: None,
            };
            Ok(Some(resumed_summary(data_dir, &mark)?))
        }
        _ => Ok(None),
    }
}

/// The summary of a reshape a rerun finished, from the new stores.
fn resumed_summary(data_dir: &Path, mark: &Mark) -> Result<Summary, ReshapeError> {
    let Some(first) = mark.install.first() else {
        return Err(ReshapeError::Refused(format!(
            "{} names no new store; restore the file from a copy, or ask for help",
            data_dir.join(MARKER_FILE).display()
        )));
    };
    let dir = data_dir.join(first);
    let s = SledStore::open(&dir, None)?;
    let id = s.identity().clone();
    let Some(e) = id.epoch.clone() else {
        return refused(format!("{} records no epoch", dir.display()));
    };
    let names = crate::check::names_of(&id);
    let old_names = crate::check::names(&e.from.branches);
    Ok(Summary {
        from_epoch: mark.from_epoch,
        epoch: mark.epoch,
        snapshot: mark.snapshot.0,
        balances: names
            .iter()
            .cloned()
            .zip(e.genesis.iter().copied())
            .collect(),
        expected_total: e.expected_total,
        minted: e.minted,
        moves: e
            .from
            .moves
            .iter()
            .map(|m| MoveLine {
                from: m
                    .from
                    .and_then(|i| old_names.get(i as usize).cloned())
                    .unwrap_or_else(|| "(minted)".to_string()),
                to: names.get(m.to as usize).cloned().unwrap_or_default(),
                amount: m.amount,
                why: m.why,
            })
            .collect(),
        retired: old_names
            .into_iter()
            .filter(|o| !names.contains(o))
            .collect(),
        next_snapshot: e.snapshots_after.0 + 1,
        kept_in: PathBuf::from(EPOCHS_DIR).join(mark.from_epoch.to_string()),
        resumed: true,
    })
}

/// `snapctl reshape --purge`: deletes the stores of every ended epoch under `DATA/epochs/`
/// (the boundary is then checked against the epoch records alone). Returns what it deleted.
pub fn purge(data_dir: &Path) -> Result<Vec<PathBuf>, ReshapeError> {
    if let Some(e) = unfinished(data_dir)? {
        return refused(format!(
            "an unfinished reshape to epoch {e} must be finished first: run it again"
        ));
    }
    let base = data_dir.join(EPOCHS_DIR);
    let mut gone = Vec::new();
    let Ok(entries) = std::fs::read_dir(&base) else {
        return Ok(gone);
    };
    let cannot = |what: &str, p: &Path, e: String| {
        ReshapeError::Refused(format!("cannot {what} {}: {e}", p.display()))
    };
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut doomed: Vec<PathBuf> = Vec::new();
    for p in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
        if p.extension().is_some_and(|x| x == PURGING_EXT) {
            doomed.push(p); // an earlier purge stopped part-way
        } else if p.join(RETIRED_NOTE).is_file() {
            dirs.push(p);
        }
    }
    dirs.sort();
    // Each epoch's directory is first renamed, durably, out of what `retired_epochs` lists, so
    // that a crash while it is deleted leaves no half-deleted epoch for the audit to open.
    for d in dirs {
        let mut name = d.file_name().unwrap_or_default().to_os_string();
        name.push(".");
        name.push(PURGING_EXT);
        let to = d.with_file_name(name);
        rename_durably(&d, &to).map_err(|e| cannot("move aside", &d, e))?;
        doomed.push(to);
        gone.push(d);
    }
    for d in &doomed {
        std::fs::remove_dir_all(d).map_err(|e| cannot("delete", d, e.to_string()))?;
    }
    crate::durable::sync_dir(&base).map_err(|e| cannot("sync", &base, e.to_string()))?;
    Ok(gone)
}

/// The ended epochs kept under `DATA/epochs/`: (epoch, directory), oldest first.
pub fn retired_epochs(data_dir: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(data_dir.join(EPOCHS_DIR)) else {
        return Vec::new();
    };
    let mut out: Vec<(u64, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n: u64 = e.file_name().to_str()?.parse().ok()?;
            Some((n, e.path()))
        })
        .filter(|(_, p)| p.is_dir())
        .collect();
    out.sort();
    out
}
