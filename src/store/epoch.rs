//! Cluster epochs: what a store records of the cluster it belongs to once `snapctl reshape` has
//! changed its branch list (see `migrations/0004_epochs.md` and [`crate::reshape`]).
//!
//! Epoch 0 is the cluster `host.list` and `--initial-balance` made: every branch started with
//! the initial balance. Each reshape starts the next epoch from a completed snapshot `K` of the
//! last one: a new branch list, a genesis balance per branch (what it held at `K`'s cut, plus or
//! minus what the reshape moved, plus what it minted) and snapshot ids that continue after the
//! highest ever started. Every store of the epoch holds the same [`Epoch`] record, so the audit
//! can check the boundary ([`Epoch::check_boundary`]) without trusting any single store.

use crate::snapshot::GlobalSnapshot;
use crate::types::{Amount, SnapshotId};
use serde::{Deserialize, Serialize};

/// How a reshaped cluster began: recorded, identically, in every store of the epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Epoch {
    /// 1 for the first reshape, then 2, …
    pub number: u64,
    /// What each branch held when the epoch began, in branch order.
    pub genesis: Vec<Amount>,
    /// Σ `genesis`: what every snapshot of the epoch must total (the previous epoch's total
    /// plus what this reshape minted).
    pub expected_total: Amount,
    /// New money this reshape created (`--mint`), in all.
    pub minted: Amount,
    /// Every snapshot of this epoch has an id above this one: the highest any branch of the
    /// previous epoch had started or recorded.
    pub snapshots_after: SnapshotId,
    /// Where the money came from.
    pub from: Provenance,
    /// When the reshape planned the epoch, Unix µs.
    pub made_at_us: u64,
}

/// The previous epoch as the reshape found it, and what it moved where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    pub epoch: u64,
    pub cluster_id: u64,
    /// Its host.list entries (the initiator marked `:S`).
    pub branches: Vec<String>,
    pub expected_total: Amount,
    /// The completed snapshot of that epoch this one starts from.
    pub snapshot: SnapshotId,
    /// Per branch of that epoch: its money at the cut (balance plus what was in flight to it).
    pub cut: Vec<Amount>,
    /// Every unit's way from the cut (or the mint) to a branch of this epoch.
    pub moves: Vec<Movement>,
}

/// Money the reshape assigned: from a branch of the previous epoch (or newly minted) to a branch
/// of this one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Movement {
    /// Index into [`Provenance::branches`]; `None`: minted.
    pub from: Option<u16>,
    /// Index into this epoch's branches.
    pub to: u16,
    pub amount: Amount,
    pub why: Why,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Why {
    /// A branch in both lists (perhaps `--move`d to a new address) keeps what it held.
    Kept,
    /// A removed branch's money, to the `--give-to` branch or spread evenly.
    Closed,
    /// `--fund ADDR=AMOUNT,FROM`.
    Funded,
    /// `--mint N`.
    Minted,
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Why::Kept => "kept",
            Why::Closed => "closed",
            Why::Funded => "funded",
            Why::Minted => "minted",
        })
    }
}

impl Epoch {
    /// The boundary's arithmetic, from this record alone: every branch's genesis is what moved
    /// to it, every old branch's cut is what moved from it (funding moves money between
    /// branches of the new list, so it is subtracted from the funder), the mint is what the
    /// record says and the totals add up. Each failure is one line.
    pub fn check_arithmetic(&self, names: &[String]) -> Vec<String> {
        let mut bad = Vec::new();
        let p = &self.from;
        let n = self.genesis.len();
        if names.len() != n {
            bad.push(format!(
                "epoch {}: {} genesis balances for {} branches",
                self.number,
                n,
                names.len()
            ));
            return bad;
        }
        if p.cut.len() != p.branches.len() {
            bad.push(format!(
                "epoch {}: {} cut balances for the {} branches of epoch {}",
                self.number,
                p.cut.len(),
                p.branches.len(),
                p.epoch
            ));
            return bad;
        }
        let mut into = vec![0i128; n];
        let mut out_of = vec![0i128; p.branches.len()];
        let mut minted = 0u128;
        for m in &self.from.moves {
            let Some(slot) = into.get_mut(m.to as usize) else {
                bad.push(format!(
                    "epoch {}: a move to branch #{} of {n}",
                    self.number, m.to
                ));
                continue;
            };
            *slot += m.amount as i128;
            match m.from {
                Some(a) => match out_of.get_mut(a as usize) {
                    Some(o) => *o += m.amount as i128,
                    None => bad.push(format!(
                        "epoch {}: a move from branch #{a} of epoch {}'s {}",
                        self.number,
                        p.epoch,
                        p.branches.len()
                    )),
                },
                None => minted += m.amount as u128,
            }
        }
        for (b, (&g, &got)) in self.genesis.iter().zip(&into).enumerate() {
            if g as i128 != got {
                bad.push(format!(
                    "epoch {}: {} began with {g}, but the reshape moved {got} to it",
                    self.number, names[b]
                ));
            }
        }
        for (a, (&c, &gone)) in p.cut.iter().zip(&out_of).enumerate() {
            if c as i128 != gone {
                bad.push(format!(
                    "epoch {}: {} held {c} at snapshot {} of epoch {}, but the reshape moved {gone} of it",
                    self.number,
                    p.branches.get(a).map_or("?", |b| strip(b)),
                    p.snapshot,
                    p.epoch
                ));
            }
        }
        if minted != self.minted as u128 {
            bad.push(format!(
                "epoch {}: records {} minted, but its moves mint {minted}",
                self.number, self.minted
            ));
        }
        let total: u128 = self.genesis.iter().map(|&g| g as u128).sum();
        if total != self.expected_total as u128
            || self.expected_total as u128 != p.expected_total as u128 + self.minted as u128
        {
            bad.push(format!(
                "epoch {}: genesis totals {total}, expected {} = epoch {}'s {} + {} minted",
                self.number, self.expected_total, p.epoch, p.expected_total, self.minted
            ));
        }
        bad
    }

    /// With the previous epoch's stores purged, what the record alone can still tie down: when
    /// it began from epoch 0, that epoch was a genesis cluster (every branch with the same
    /// initial balance), so its cluster id follows from its branch list and total.
    pub fn check_origin_record(&self) -> Vec<String> {
        let p = &self.from;
        if p.epoch != 0 {
            return Vec::new();
        }
        let n = p.branches.len() as Amount;
        let initial = p.expected_total.checked_div(n).unwrap_or(0);
        if n == 0 || initial * n != p.expected_total {
            return vec![format!(
                "epoch {}: its record of epoch 0 gives a total of {} for {} branches, which is \
                 no genesis (the same initial balance each)",
                self.number, p.expected_total, n
            )];
        }
        let id = crate::store::cluster_id(&p.branches, initial);
        if id != p.cluster_id {
            return vec![format!(
                "epoch {}: its record of epoch 0 names cluster {:016x}, but epoch 0 of [{}] with \
                 {initial} each is cluster {id:016x}",
                self.number,
                p.cluster_id,
                p.branches.join(" ")
            )];
        }
        Vec::new()
    }

    /// The boundary against the previous epoch's own copy of snapshot `K` (from its initiator's
    /// store, kept aside by the reshape): the record's cut is that snapshot's, branch by branch,
    /// and that snapshot conserved the previous epoch's total.
    pub fn check_cut(&self, g: &GlobalSnapshot) -> Vec<String> {
        let p = &self.from;
        let mut bad = Vec::new();
        if g.snapshot != p.snapshot || g.parts.len() != p.cut.len() {
            bad.push(format!(
                "epoch {}: began from snapshot {} of epoch {} ({} branches), but that epoch's initiator holds snapshot {} with {} parts",
                self.number,
                p.snapshot,
                p.epoch,
                p.cut.len(),
                g.snapshot,
                g.parts.len()
            ));
            return bad;
        }
        if !g.conserves_money() || g.expected_total != p.expected_total {
            bad.push(format!(
                "epoch {}: snapshot {} of epoch {} totals {} (expected {}), not epoch {}'s {}",
                self.number,
                g.snapshot,
                p.epoch,
                g.total,
                g.expected_total,
                p.epoch,
                p.expected_total
            ));
        }
        for (a, part) in g.parts.iter().enumerate() {
            if part.money() != p.cut[a] as u128 {
                bad.push(format!(
                    "epoch {}: {} held {} at snapshot {} of epoch {}, but the reshape recorded {}",
                    self.number,
                    strip(&p.branches[a]),
                    part.money(),
                    p.snapshot,
                    p.epoch,
                    p.cut[a]
                ));
            }
        }
        bad
    }
}

fn strip(entry: &str) -> &str {
    entry.strip_suffix(":S").unwrap_or(entry)
}

/// The cluster id of epoch `epoch`: a stable hash of the previous epoch's id, the number, the
/// branch list and the genesis balances, so two reshapes of the same cluster never share one.
pub fn epoch_cluster_id(epoch: &Epoch, branches: &[String]) -> u64 {
    let genesis: Vec<String> = epoch.genesis.iter().map(|g| g.to_string()).collect();
    let text = format!(
        "epoch {}|{:016x}|{}|{}|{}",
        epoch.number,
        epoch.from.cluster_id,
        branches.join(" "),
        genesis.join(" "),
        epoch.snapshots_after
    );
    crate::wire::fnv1a(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_genesis(cluster_id: u64, expected_total: Amount) -> Epoch {
        let branches: Vec<String> = vec!["127.0.0.1:1:S".into(), "127.0.0.1:2".into()];
        Epoch {
            number: 1,
            genesis: vec![1000, 1000],
            expected_total: 2000,
            minted: 0,
            snapshots_after: SnapshotId(3),
            from: Provenance {
                epoch: 0,
                cluster_id,
                branches,
                expected_total,
                snapshot: SnapshotId(3),
                cut: vec![1000, 1000],
                moves: Vec::new(),
            },
            made_at_us: 0,
        }
    }

    #[test]
    fn a_purged_genesis_is_tied_to_its_cluster_id_and_total() {
        let branches: Vec<String> = vec!["127.0.0.1:1:S".into(), "127.0.0.1:2".into()];
        let id = crate::store::cluster_id(&branches, 1000);
        assert!(from_genesis(id, 2000).check_origin_record().is_empty());
        let other = from_genesis(id ^ 1, 2000).check_origin_record();
        assert!(other[0].contains("names cluster"), "{other:?}");
        // A total that is not the same initial balance each, and one of another initial balance.
        let uneven = from_genesis(id, 2001).check_origin_record();
        assert!(uneven[0].contains("no genesis"), "{uneven:?}");
        let bigger = from_genesis(id, 4000).check_origin_record();
        assert!(bigger[0].contains("names cluster"), "{bigger:?}");
    }
}
