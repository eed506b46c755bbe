//! `snapctl restore --snapshot K`: rewind a stopped cluster to the consistent cut of snapshot K.
//!
//! Every branch gets the balance it recorded plus the money that was in flight towards it (the
//! channel state is delivered), every channel's sender and receiver positions meet at the
//! sender's recorded sequence number (nothing in flight, nothing to resend), transfers after the
//! cut are forgotten, and snapshot ids keep growing from the highest one ever started. The
//! initiator keeps each completed global snapshot whole (the latest `--keep-snapshots`), so a
//! branch whose store is gone is rebuilt from it (its transfer history then starts at K, which
//! the audit takes into account).

use crate::core::DurableState;
use crate::hosts::HostList;
use crate::snapshot::{GlobalSnapshot, LocalPart};
use crate::store::{Identity, SledStore, StoreError};
use crate::types::{BranchId, SnapshotId};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Refused(String),
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct RestoreSummary {
    pub snapshot: SnapshotId,
    /// Branches whose store was missing and has been rebuilt.
    pub rebuilt: Vec<String>,
    /// Per branch: address and restored balance.
    pub balances: Vec<(String, u64)>,
    /// Id the next snapshot will get.
    pub next_snapshot: SnapshotId,
}

/// Restores every store under `data_dir` to snapshot `k`. The branch list comes from `hosts`, or
/// else from the identity the stores record.
pub fn restore(
    data_dir: &Path,
    hosts: Option<&HostList>,
    k: SnapshotId,
) -> Result<RestoreSummary, RestoreError> {
    let identity = match hosts {
        Some(h) => Identity::new(h, h.initiator, any_identity(data_dir)?.initial_balance),
        None => any_identity(data_dir)?,
    };
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
    // Open (or note missing) every store and plan every state first, so nothing is written
    // unless all of it can be computed.
    let mut stores: Vec<Option<SledStore>> = Vec::with_capacity(n);
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
                stores.push(Some(s));
            }
            Err(StoreError::NotFound(_)) => stores.push(None),
            Err(e) => return Err(e.into()),
        }
    }
    let Some(initiator) = &stores[init] else {
        return Err(RestoreError::Refused(format!(
            "the initiator's store {} is missing; it holds the global snapshots, nothing to restore from",
            dirs[init].display()
        )));
    };
    let globals: Vec<GlobalSnapshot> = initiator.globals()?;
    let Some(g) = globals.iter().find(|g| g.snapshot == k).cloned() else {
        let ids: Vec<String> = globals.iter().map(|g| g.snapshot.to_string()).collect();
        return Err(RestoreError::Refused(format!(
            "snapshot {k} is not a completed snapshot (completed: {})",
            if ids.is_empty() {
                "none".to_string()
            } else {
                ids.join(", ")
            }
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
    // Ids only grow: continue after the highest snapshot any branch has seen.
    let mut highest = k;
    for s in stores.iter().flatten() {
        if let Some(st) = s.state()? {
            highest = highest
                .max(st.last_recorded)
                .max(st.parts_done)
                .max(SnapshotId(st.next_snapshot.0.saturating_sub(1)));
        }
    }
    let mut summary = RestoreSummary {
        snapshot: k,
        rebuilt: Vec::new(),
        balances: Vec::new(),
        next_snapshot: SnapshotId(highest.0 + 1),
    };
    let mut plans: Vec<(usize, DurableState, Vec<LocalPart>, bool)> = Vec::with_capacity(n);
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
        // A store that is gone, or that never committed a state, lacks the transfer log up to
        // the cut: rebuild it from the initiator's copies of its parts.
        // So does a store whose own part of K differs from the initiator's copy (a branch that
        // was restarted on an empty store and ran on from genesis).
        let old = match &stores[b] {
            Some(s)
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
        plans.push((b, st, parts, wipe));
    }
    // Everything is computed and every store readable: now write, branch by branch. Each
    // rewrite is atomic; if one fails, running the same restore again completes the others.
    for (b, st, parts, wipe) in plans {
        let mut store = match stores[b].take() {
            Some(s) => s,
            None => SledStore::open(&dirs[b], Some(&own(b)))?,
        };
        store.rewrite_to_cut(&st, k, &parts, wipe)?;
        summary
            .balances
            .push((identity.branches[b].clone(), st.balance));
    }
    Ok(summary)
}

/// The identity recorded by any store under `data_dir`.
fn any_identity(data_dir: &Path) -> Result<Identity, RestoreError> {
    let dirs =
        crate::audit::discover(data_dir).map_err(|e| RestoreError::Refused(e.to_string()))?;
    Ok(SledStore::open(&dirs[0], None)?.identity().clone())
}
