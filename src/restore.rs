//! `snapctl restore --snapshot K`: rewind a stopped cluster to the consistent cut of snapshot K.
//!
//! Every branch gets the balance it recorded plus the money that was in flight towards it (the
//! channel state is delivered), every channel's sender and receiver positions meet at the
//! sender's recorded sequence number (nothing in flight, nothing to resend), transfers after the
//! cut are forgotten, and snapshot ids keep growing from the highest one ever started. The
//! initiator keeps each completed global snapshot whole (the latest `--keep-snapshots`), so a
//! branch whose store is gone, or corrupt, is rebuilt from it (its transfer history then starts
//! at K, which the audit takes into account). A corrupt store's files are kept aside, under
//! `DATA/corrupt/`, never deleted.
//!
//! # Crash safety
//!
//! Each store is rewritten in one atomic, durable batch, and the restore as a whole is made
//! atomic by markers that keep every branch from starting until all of it is done:
//!
//! 1. the file `DATA/restore-in-progress` (written atomically and durably) names snapshot K;
//! 2. every store that exists gets the key `m:restoring` = K;
//! 3. the stores are rewritten one by one (a corrupt one is first moved aside, a missing one is
//!    created);
//! 4. the stores' keys are cleared, and last the file is removed.
//!
//! `bank` and `start_bank` refuse to start on a store while the file is in its data directory
//! or the store holds the key: "store X is part of an unfinished `snapctl restore --snapshot K`;
//! run it again to finish". Running the same restore again finishes it: what it computes from
//! the stores is the same on stores it already rewrote, and each step is idempotent. A restore
//! to another snapshot is refused until that one is finished.
//!
//! **Test hook**: with `SNAPBANK_RESTORE_CRASH_AFTER=N` in its environment, the restore kills
//! its own process with SIGKILL right after its N-th durable write (the marker file, each
//! store's marker, each store set aside, created or rewritten, each marker cleared, the file's
//! removal), as a crash at that point would. Only the tests set it.

use crate::core::DurableState;
use crate::hosts::HostList;
use crate::snapshot::{GlobalSnapshot, LocalPart};
use crate::store::{describe_io, Identity, SledStore, StoreError};
use crate::types::{BranchId, SnapshotId};
use std::path::{Path, PathBuf};

/// The file in the data directory that marks a restore under way.
pub const MARKER_FILE: &str = "restore-in-progress";

/// Where a restore keeps the files of the corrupt stores it rebuilt: `DATA/corrupt/<store>.<n>`.
pub const SET_ASIDE_DIR: &str = "corrupt";

/// The test hook (see the module documentation).
const CRASH_AFTER_ENV: &str = "SNAPBANK_RESTORE_CRASH_AFTER";

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Refused(String),
    /// A write failed after the first marker was written: the stores are marked, and no branch
    /// starts until the same restore has run to the end.
    #[error("restore to snapshot {snapshot} stopped part-way: {cause}; no branch starts until `snapctl restore --snapshot {snapshot}` is run again and finishes")]
    Interrupted { snapshot: SnapshotId, cause: String },
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct RestoreSummary {
    pub snapshot: SnapshotId,
    /// Branches whose store was missing or corrupt and has been rebuilt.
    pub rebuilt: Vec<String>,
    /// Corrupt stores rebuilt: the branch and where its old files are kept.
    pub set_aside: Vec<(String, PathBuf)>,
    /// Per branch: address and restored balance.
    pub balances: Vec<(String, u64)>,
    /// Id the next snapshot will get.
    pub next_snapshot: SnapshotId,
}

/// The snapshot an unfinished restore of the stores in `data_dir` restores, if one is marked
/// by [`MARKER_FILE`].
pub fn unfinished(data_dir: &Path) -> Result<Option<SnapshotId>, StoreError> {
    let path = data_dir.join(MARKER_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(StoreError::Io {
                path,
                what: format!(
                    "cannot read this mark of an unfinished `snapctl restore`: {}",
                    describe_io(&e)
                ),
            })
        }
    };
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix(MARKER_PREFIX))
        .and_then(|k| k.trim().parse().ok())
        .map(|k| Some(SnapshotId(k)))
        .ok_or_else(|| StoreError::Io {
            path,
            what: "marks an unfinished `snapctl restore` but does not say which snapshot; run that restore again".into(),
        })
}

/// The first line of [`MARKER_FILE`], followed by the snapshot id.
const MARKER_PREFIX: &str = "snapctl restore --snapshot ";

/// The error a branch whose store is `store_dir` stops with while a restore of the stores in
/// `data_dir` is unfinished (the store's own mark is [`SledStore::refuse_if_restoring`]).
/// A committed, unfinished `snapctl reshape` bars every store too ([`crate::reshape`]).
pub fn refuse_if_unfinished(data_dir: &Path, store_dir: &Path) -> Result<(), StoreError> {
    crate::reshape::refuse_if_unfinished(data_dir, store_dir)?;
    match unfinished(data_dir)? {
        Some(snapshot) => Err(StoreError::RestoreUnfinished {
            path: store_dir.to_path_buf(),
            snapshot,
        }),
        None => Ok(()),
    }
}

/// A branch's store as the restore found it.
enum Found {
    Open(Box<SledStore>),
    /// No store (or an empty one, which the branch would create anew).
    Missing,
    /// sled or the store layout cannot read it (not the initiator's): set aside and rebuilt.
    Corrupt(String),
}

/// Restores every store under `data_dir` to snapshot `k`. The branch list comes from `hosts`, or
/// else from the identity the stores record.
pub fn restore(
    data_dir: &Path,
    hosts: Option<&HostList>,
    k: SnapshotId,
) -> Result<RestoreSummary, RestoreError> {
    let marked = unfinished(data_dir)?;
    if let Some(other) = marked.filter(|m| *m != k) {
        return Err(unfinished_other(other));
    }
    if let Some(e) = crate::reshape::unfinished(data_dir)? {
        return Err(RestoreError::Refused(format!(
            "an unfinished `snapctl reshape` to epoch {e} must be finished first: run it again"
        )));
    }
    // The stores' own identity (a reshaped cluster's is its epoch's), which host.list, if
    // given, must name.
    let identity = any_identity(data_dir)?;
    if let Some(h) = hosts {
        if h.canonical() != identity.branches {
            return Err(RestoreError::Refused(format!(
                "the stores under {} were made with host.list [{}], but the given host.list names [{}]",
                data_dir.display(),
                identity.branches.join(" "),
                h.canonical().join(" ")
            )));
        }
    }
    let n = identity.branches.len();
    let dirs: Vec<PathBuf> = identity
        .branches
        .iter()
        .map(|b| data_dir.join(Identity::branch_dir_name(b)))
        .collect();
    let init = identity.initiator().index();
    let own = |b: usize| Identity {
        me: BranchId(b as u16),
        ..identity.clone()
    };
    // Open (or note missing or corrupt) every store and plan every state first, so nothing is
    // written unless all of it can be computed.
    let mut stores: Vec<Found> = Vec::with_capacity(n);
    for (b, dir) in dirs.iter().enumerate() {
        match SledStore::open(dir, None) {
            Ok(s) => {
                if s.identity() != &own(b) {
                    return Err(RestoreError::Refused(format!(
                        "{} is not the store of branch {} of this cluster",
                        dir.display(),
                        identity.branches[b]
                    )));
                }
                if let Some(other) = s.restoring()?.filter(|m| *m != k) {
                    return Err(unfinished_other(other));
                }
                stores.push(Found::Open(Box::new(s)));
            }
            Err(StoreError::NotFound(_)) => stores.push(Found::Missing),
            // A store a crash left before its first write (no files, or no schema yet): the
            // branch would create it anew, and so does the restore.
            Err(StoreError::NotAStore(..)) if SledStore::check(dir, &own(b)).is_ok() => {
                stores.push(Found::Missing)
            }
            Err(StoreError::Corrupt { what, .. }) if b == init => {
                return Err(RestoreError::Refused(format!(
                    "the initiator's store {} is corrupt: {what}; it holds the global snapshots, so it cannot be rebuilt from them: put back a copy of that directory (keep these files)",
                    dir.display()
                )))
            }
            Err(StoreError::Corrupt { what, .. }) => stores.push(Found::Corrupt(what)),
            Err(e) => return Err(e.into()),
        }
    }
    let Found::Open(initiator) = &stores[init] else {
        return Err(RestoreError::Refused(format!(
            "the initiator's store {} is missing; it holds the global snapshots, nothing to restore from",
            dirs[init].display()
        )));
    };
    let globals: Vec<GlobalSnapshot> = initiator.globals()?;
    let Some(g) = globals.iter().find(|g| g.snapshot == k).cloned() else {
        let ids: Vec<SnapshotId> = globals.iter().map(|g| g.snapshot).collect();
        return Err(RestoreError::Refused(format!(
            "snapshot {k} is not a completed snapshot (completed: {})",
            id_ranges(&ids)
        )));
    };
    if g.parts.len() != n {
        return Err(RestoreError::Refused(format!(
            "snapshot {k} has {} parts for {n} branches; refusing to restore it",
            g.parts.len()
        )));
    }
    if !g.conserves_money() {
        return Err(RestoreError::Refused(format!(
            "snapshot {k} does not conserve money (total {}, expected {}); refusing to restore it",
            g.total, g.expected_total
        )));
    }
    // Ids only grow: continue after the highest snapshot any branch has seen. (A store already
    // rewritten by an interrupted run of this restore records exactly that highest id.)
    let mut highest = k;
    for s in &stores {
        if let Found::Open(s) = s {
            if let Some(st) = s.state()? {
                highest = highest
                    .max(st.last_recorded)
                    .max(st.parts_done)
                    .max(SnapshotId(st.next_snapshot.0.saturating_sub(1)));
            }
        }
    }
    let mut summary = RestoreSummary {
        snapshot: k,
        rebuilt: Vec::new(),
        set_aside: Vec::new(),
        balances: Vec::new(),
        next_snapshot: SnapshotId(highest.0 + 1),
    };
    let mut plans: Vec<(DurableState, Vec<LocalPart>, bool)> = Vec::with_capacity(n);
    for (b, part) in g.parts.iter().enumerate() {
        let mut st = DurableState::genesis(n, identity.initial_balance);
        st.balance = part
            .balance
            .checked_add(part.channels.iter().map(|c| c.money).sum())
            .ok_or_else(|| RestoreError::Refused(format!("snapshot {k}: balance overflows")))?;
        for x in 0..n {
            if x == b {
                continue;
            }
            let peer = BranchId(x as u16);
            let sent = part.sent_to(peer).unwrap_or_default();
            st.out[x].sent = sent;
            st.out[x].acked = sent;
            st.out[x].marker_acked = highest;
            st.out[x].part_acked = highest;
            st.inc[x].applied = part.channel_from(peer).map(|c| c.until).unwrap_or_default();
            st.inc[x].marker = highest;
            st.inc[x].part = highest;
        }
        st.next_snapshot = summary.next_snapshot;
        st.last_recorded = highest;
        st.parts_done = highest;
        st.completed = highest;
        // A store that is gone, corrupt, or that never committed a state, lacks the transfer
        // log up to the cut: rebuild it from the initiator's copies of its parts.
        // So does a store whose own part of K differs from the initiator's copy (a branch that
        // was restarted on an empty store and ran on from genesis).
        let old = match &stores[b] {
            Found::Open(s)
                if s.parts()?
                    .iter()
                    .any(|p| p.snapshot == k && *p == g.parts[b]) =>
            {
                s.state()?
            }
            _ => None,
        };
        let parts: Vec<LocalPart> = match &old {
            Some(o) => {
                st.history_from = o.history_from.min(k);
                st.pruned_below = o.pruned_below;
                // The log keeps what compaction left, cut at the new end.
                for (c, oc) in st.out.iter_mut().zip(&o.out) {
                    c.compacted = oc.compacted.min(c.sent);
                }
                Vec::new()
            }
            None => {
                st.history_from = k;
                // The log is gone: nothing before the cut is needed (all of it is delivered).
                for c in st.out.iter_mut() {
                    c.compacted = c.sent;
                }
                summary.rebuilt.push(identity.branches[b].clone());
                globals
                    .iter()
                    .filter(|gl| gl.snapshot <= k && gl.parts.len() == n)
                    .map(|gl| gl.parts[b].clone())
                    .collect()
            }
        };
        let wipe = old.is_none();
        plans.push((st, parts, wipe));
    }
    // Everything is computed and every store readable: now write, under the markers (see the
    // module documentation). From here on, any failure leaves the cluster marked.
    let interrupted = |cause: StoreError| RestoreError::Interrupted {
        snapshot: k,
        cause: cause.to_string(),
    };
    let mut writes = crate::durable::CrashHook::from_env(CRASH_AFTER_ENV, "restore");
    if marked.is_none() {
        // Nothing is written yet if this fails.
        write_marker(data_dir, k).map_err(|e| {
            RestoreError::Refused(format!(
                "{e}; no store was changed: run it again once that is fixed"
            ))
        })?;
        writes.done();
    }
    for s in stores.iter_mut() {
        if let Found::Open(s) = s {
            if s.restoring().map_err(interrupted)?.is_none() {
                s.set_restoring(Some(k)).map_err(interrupted)?;
                writes.done();
            }
        }
    }
    let mut open: Vec<SledStore> = Vec::with_capacity(n);
    for (b, ((st, parts, wipe), found)) in plans.into_iter().zip(stores).enumerate() {
        let mut store = match found {
            Found::Open(s) => *s,
            Found::Missing | Found::Corrupt(_) => {
                if let Found::Corrupt(what) = &found {
                    let kept = set_aside(data_dir, &dirs[b])
                        .map_err(|cause| RestoreError::Interrupted { snapshot: k, cause })?;
                    writes.done();
                    eprintln!(
                        "restore: store {} is corrupt ({what}); its files are kept in {}, and it is rebuilt from the initiator's copies",
                        dirs[b].display(),
                        kept.display()
                    );
                    summary.set_aside.push((identity.branches[b].clone(), kept));
                }
                let mut s = SledStore::open(&dirs[b], Some(&own(b))).map_err(interrupted)?;
                writes.done();
                if s.restoring().map_err(interrupted)?.is_none() {
                    s.set_restoring(Some(k)).map_err(interrupted)?;
                    writes.done();
                }
                s
            }
        };
        store
            .rewrite_to_cut(&st, k, &parts, wipe)
            .map_err(interrupted)?;
        writes.done();
        summary
            .balances
            .push((identity.branches[b].clone(), st.balance));
        open.push(store);
    }
    for s in open.iter_mut() {
        s.set_restoring(None).map_err(interrupted)?;
        writes.done();
    }
    remove_marker(data_dir).map_err(|cause| RestoreError::Interrupted { snapshot: k, cause })?;
    writes.done();
    Ok(summary)
}

fn unfinished_other(other: SnapshotId) -> RestoreError {
    RestoreError::Refused(format!(
        "an unfinished `snapctl restore --snapshot {other}` must be finished first: run it again; then restore another snapshot if you still want to"
    ))
}

/// Writes [`MARKER_FILE`], atomically and durably.
fn write_marker(data_dir: &Path, k: SnapshotId) -> Result<(), String> {
    let path = data_dir.join(MARKER_FILE);
    let text = format!(
        "{MARKER_PREFIX}{k}\n\
         The stores of this directory are being restored to snapshot {k}: no branch starts on \
         them until that command has run to the end. Run it again to finish.\n"
    );
    crate::durable::write_atomic(&path, text.as_bytes(), None)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Removes [`MARKER_FILE`], durably: the restore is done.
fn remove_marker(data_dir: &Path) -> Result<(), String> {
    let path = data_dir.join(MARKER_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot remove {}: {e}", path.display())),
    }
    crate::durable::sync_dir(data_dir)
        .map_err(|e| format!("cannot make the removal of {} durable: {e}", path.display()))
}

/// Moves a corrupt store's directory to `DATA/corrupt/<name>.<n>` (the first free `n`),
/// durably, and returns where it is now.
fn set_aside(data_dir: &Path, dir: &Path) -> Result<PathBuf, String> {
    let err = |doing: &str, e: &std::io::Error| format!("store {}: {doing}: {e}", dir.display());
    let base = data_dir.join(SET_ASIDE_DIR);
    crate::durable::create_dir_all(&base)
        .map_err(|e| err(&format!("cannot create {}", base.display()), &e))?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "store".into());
    let mut i = 1u32;
    let to = loop {
        let to = base.join(format!("{name}.{i}"));
        if !to.exists() {
            break to;
        }
        i += 1;
    };
    std::fs::rename(dir, &to).map_err(|e| {
        err(
            &format!(
                "cannot move the corrupt store to {} (move it elsewhere yourself, keeping it, and run the restore again)",
                to.display()
            ),
            &e,
        )
    })?;
    crate::durable::sync_dir(&base)
        .and_then(|()| crate::durable::sync_dir(crate::durable::parent_of(dir)))
        .map_err(|e| err("cannot sync the move of the corrupt store", &e))?;
    Ok(to)
}

/// Snapshot ids as runs: `1-3, 5, 7-260`.
pub(crate) fn id_ranges(ids: &[SnapshotId]) -> String {
    if ids.is_empty() {
        return "none".to_string();
    }
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for id in ids {
        match runs.last_mut() {
            Some((_, last)) if *last + 1 == id.0 => *last = id.0,
            _ => runs.push((id.0, id.0)),
        }
    }
    runs.iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The identity recorded by any readable store under `data_dir` (a corrupt one is skipped; a
/// store in use by a running branch is an error).
fn any_identity(data_dir: &Path) -> Result<Identity, RestoreError> {
    let dirs =
        crate::audit::discover(data_dir).map_err(|e| RestoreError::Refused(e.to_string()))?;
    let mut first_err = None;
    for dir in &dirs {
        match SledStore::open(dir, None) {
            Ok(s) => return Ok(s.identity().clone()),
            Err(e @ StoreError::Locked(_)) => return Err(e.into()),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e.into()),
        None => Err(RestoreError::Refused(format!(
            "no branch stores under {}",
            data_dir.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_ids_are_listed_as_runs() {
        let ids: Vec<SnapshotId> = [1, 2, 3, 5, 7, 8].into_iter().map(SnapshotId).collect();
        assert_eq!(id_ranges(&ids), "1-3, 5, 7-8");
        assert_eq!(id_ranges(&[]), "none");
    }

    #[test]
    fn the_marker_file_names_the_snapshot_and_bars_every_store() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(unfinished(d.path()).unwrap(), None);
        write_marker(d.path(), SnapshotId(12)).unwrap();
        assert_eq!(unfinished(d.path()).unwrap(), Some(SnapshotId(12)));
        let e = refuse_if_unfinished(d.path(), &d.path().join("127.0.0.1_1"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("127.0.0.1_1")
                && e.contains("unfinished `snapctl restore --snapshot 12`; run it again"),
            "{e}"
        );
        remove_marker(d.path()).unwrap();
        assert_eq!(unfinished(d.path()).unwrap(), None);
        remove_marker(d.path()).unwrap();
        std::fs::write(d.path().join(MARKER_FILE), "x").unwrap();
        assert!(unfinished(d.path()).is_err());
    }
}
