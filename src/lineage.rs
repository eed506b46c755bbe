//! The chain of epochs a data directory holds: the current cluster, then back through each
//! epoch's record of the one it began from (`snapctl reshape`), opening that epoch's retired
//! stores under `DATA/epochs/<e>/` where they are kept and standing on the record alone where
//! they were purged. `snapctl audit` checks each link; `snapctl snapshots` and `snapctl report`
//! show them. The walk exists here once.

use crate::audit::{AuditError, Cluster};
use crate::store::epoch::Epoch;
use crate::store::Identity;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where an epoch's stores are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stores {
    /// The data directory's own branch stores.
    Current,
    /// Kept under `DATA/epochs/<e>/` by the reshape that ended the epoch.
    Retired,
    /// Deleted by `snapctl reshape --purge`: only the next epoch's record of it remains.
    Purged,
    /// Kept under `DATA/epochs/<e>/` but not readable (a damaged or half-copied directory).
    Unreadable,
}

impl Stores {
    pub fn as_str(self) -> &'static str {
        match self {
            Stores::Current => "current",
            Stores::Retired => "retired",
            Stores::Purged => "purged",
            Stores::Unreadable => "unreadable",
        }
    }
}

/// One ended epoch, as far back as the records go.
pub struct Ended {
    pub number: u64,
    pub cluster_id: u64,
    /// Addresses in branch order (no `:S`).
    pub names: Vec<String>,
    pub expected_total: u128,
    /// Its retired stores (`None`: purged).
    pub cluster: Option<Cluster>,
    /// The directory they were kept in.
    pub dir: Option<PathBuf>,
    /// The retired stores are not of the epoch the next one's record names, or cannot be
    /// read: one line saying so.
    pub mismatch: Option<String>,
    /// Its directory is there but its stores could not be opened.
    pub unreadable: bool,
}

impl Ended {
    pub fn stores(&self) -> Stores {
        if self.cluster.is_some() {
            Stores::Retired
        } else if self.unreadable {
            Stores::Unreadable
        } else {
            Stores::Purged
        }
    }
}

/// Every epoch before the current one, oldest first: `ended[i]` is the epoch the record
/// `began[i]` names as its origin, and `began[i]` is how `ended[i+1]` (or, for the last one, the
/// current epoch) began.
pub struct Lineage {
    pub ended: Vec<Ended>,
    /// How each later epoch began (the same length as `ended`).
    pub began: Vec<Epoch>,
}

impl Lineage {
    /// The record of how the epoch numbered `epoch` began, if it is one of this chain's.
    pub fn began(&self, epoch: u64) -> Option<&Epoch> {
        self.began.iter().find(|e| e.number == epoch)
    }
}

/// Walks back from `current` (opened from `data_dir`) through the epoch records.
pub fn lineage(data_dir: &Path, current: &Identity) -> Result<Lineage, AuditError> {
    let retired: BTreeMap<u64, PathBuf> = crate::reshape::retired_epochs(data_dir)
        .into_iter()
        .collect();
    let mut ended = Vec::new();
    let mut began = Vec::new();
    let mut identity = current.clone();
    while let Some(ep) = identity.epoch.clone() {
        let prev = ep.from.epoch;
        let names = crate::check::names(&ep.from.branches);
        let mut link = Ended {
            number: prev,
            cluster_id: ep.from.cluster_id,
            names,
            expected_total: ep.from.expected_total as u128,
            cluster: None,
            dir: None,
            mismatch: None,
            unreadable: false,
        };
        let mut next = None;
        if prev >= ep.number {
            // A record naming itself or a later epoch as its origin: the chain ends here.
            link.mismatch = Some(format!(
                "epoch {}: its record says it began from epoch {prev}, which is not an earlier epoch",
                ep.number
            ));
        } else if let Some(dir) = retired.get(&prev) {
            let c = match Cluster::open_retired(dir) {
                Ok(c) => c,
                Err(e) => {
                    // A violation of this boundary, not a reason to give no verdict at all.
                    link.mismatch = Some(format!(
                        "epoch {}: the stores of epoch {prev} it began from, kept in {}, cannot be read: {e}",
                        ep.number,
                        dir.display()
                    ));
                    link.unreadable = true;
                    link.dir = Some(dir.clone());
                    ended.push(link);
                    began.push(ep);
                    break;
                }
            };
            if c.identity.cluster_id != ep.from.cluster_id
                || c.identity.branches != ep.from.branches
            {
                link.mismatch = Some(format!(
                    "epoch {}: began from epoch {prev} (cluster {:016x}) of [{}], but {} holds {} of [{}]",
                    ep.number,
                    ep.from.cluster_id,
                    ep.from.branches.join(" "),
                    dir.display(),
                    c.identity.epoch_name(),
                    c.identity.branches.join(" ")
                ));
            }
            link.expected_total = c.identity.genesis_total() as u128;
            next = Some(c.identity.clone());
            link.cluster = Some(c);
            link.dir = Some(dir.clone());
        }
        ended.push(link);
        began.push(ep);
        match next {
            Some(id) => identity = id,
            None => break,
        }
    }
    ended.reverse();
    began.reverse();
    Ok(Lineage { ended, began })
}

impl Lineage {
    /// The ended epoch numbered `epoch`, if this chain holds it.
    pub fn ended(&self, epoch: u64) -> Option<&Ended> {
        self.ended.iter().find(|e| e.number == epoch)
    }

    /// Takes out the retired stores of the ended epoch numbered `epoch`: `Err` with one line
    /// when the chain does not hold it or its stores were purged.
    pub fn into_retired(self, epoch: u64, current: u64) -> Result<Cluster, String> {
        let known = || {
            let mut all: Vec<String> = self.ended.iter().map(|e| e.number.to_string()).collect();
            all.push(current.to_string());
            all.join(", ")
        };
        if self.ended(epoch).is_none() {
            return Err(format!(
                "no epoch {epoch} in this data directory: it holds epochs {}",
                known()
            ));
        }
        if let Some(why) = self
            .ended(epoch)
            .filter(|e| e.unreadable)
            .and_then(|e| e.mismatch.clone())
        {
            return Err(why);
        }
        let dir = self.ended(epoch).and_then(|e| e.dir.clone());
        match self.ended.into_iter().find(|e| e.number == epoch) {
            Some(Ended {
                cluster: Some(c), ..
            }) => Ok(c),
            _ => Err(format!(
                "epoch {epoch}'s stores were purged by snapctl reshape --purge{}: only the next \
                 epoch's record of it remains (snapctl audit checks it)",
                dir.map(|d| format!(" ({})", d.display()))
                    .unwrap_or_default()
            )),
        }
    }
}

/// One epoch as `snapctl snapshots` and `snapctl report` list it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EpochSummary {
    pub epoch: u64,
    /// `current`, `retired` or `purged` ([`Stores::as_str`]).
    pub stores: &'static str,
    /// Addresses in branch order, the initiator's with `:S`.
    pub branches: Vec<String>,
    pub expected_total: u128,
    /// How it began (`None`: epoch 0, from host.list).
    pub began: Option<Began>,
    /// Its completed snapshots' ids in order (`None`: purged, unknown).
    pub snapshots: Option<Vec<u64>>,
    /// Whether each of them holds its expected total (`None`: purged).
    pub conserved: Option<bool>,
}

/// Where an epoch came from, in brief.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Began {
    pub from_epoch: u64,
    pub snapshot: u64,
    pub minted: u64,
}

/// Every epoch of `current`'s data directory, oldest first, the current one last.
pub fn summaries(data_dir: &Path, current: &Cluster) -> Result<Vec<EpochSummary>, AuditError> {
    let chain = lineage(data_dir, &current.identity)?;
    let began = |epoch: u64| {
        chain.began(epoch).map(|b| Began {
            from_epoch: b.from.epoch,
            snapshot: b.from.snapshot.0,
            minted: b.minted,
        })
    };
    let of = |c: &Cluster| -> Result<(Vec<u64>, bool), AuditError> {
        let globals = c.initiator().globals()?;
        let conserved = globals.iter().all(|g| g.conserves_money());
        Ok((globals.iter().map(|g| g.snapshot.0).collect(), conserved))
    };
    let mut out = Vec::new();
    for e in &chain.ended {
        let (snapshots, conserved, branches) = match &e.cluster {
            Some(c) => {
                let (ids, ok) = of(c)?;
                (Some(ids), Some(ok), c.identity.branches.clone())
            }
            None => (None, None, e.names.clone()),
        };
        out.push(EpochSummary {
            epoch: e.number,
            stores: e.stores().as_str(),
            branches,
            expected_total: e.expected_total,
            began: began(e.number),
            snapshots,
            conserved,
        });
    }
    let (ids, ok) = of(current)?;
    let number = current.identity.epoch_number();
    out.push(EpochSummary {
        epoch: number,
        stores: Stores::Current.as_str(),
        branches: current.identity.branches.clone(),
        expected_total: current.identity.genesis_total() as u128,
        began: began(number),
        snapshots: Some(ids),
        conserved: Some(ok),
    });
    Ok(out)
}

impl EpochSummary {
    /// `4 snapshots (1-4)`, `no snapshots` or `purged`.
    pub fn snapshots_text(&self) -> String {
        match self.snapshots.as_deref() {
            None => "purged".to_string(),
            Some([]) => "no snapshots".to_string(),
            Some([one]) => format!("1 snapshot ({one})"),
            Some(ids) => format!(
                "{} snapshots ({}-{})",
                ids.len(),
                ids[0],
                ids[ids.len() - 1]
            ),
        }
    }

    /// `genesis (host.list)` or `snapshot 3 of epoch 0 (+2000 minted)`.
    pub fn began_text(&self) -> String {
        match &self.began {
            None => "genesis (host.list)".to_string(),
            Some(b) if b.minted > 0 => format!(
                "snapshot {} of epoch {} (+{} minted)",
                b.snapshot, b.from_epoch, b.minted
            ),
            Some(b) => format!("snapshot {} of epoch {}", b.snapshot, b.from_epoch),
        }
    }
}
