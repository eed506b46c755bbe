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
}

impl Stores {
    pub fn as_str(self) -> &'static str {
        match self {
            Stores::Current => "current",
            Stores::Retired => "retired",
            Stores::Purged => "purged",
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
    /// The retired stores are not of the epoch the next one's record names: one line saying so.
    pub mismatch: Option<String>,
}

impl Ended {
    pub fn stores(&self) -> Stores {
        if self.cluster.is_some() {
            Stores::Retired
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
        let names: Vec<String> = ep
            .from
            .branches
            .iter()
            .map(|b| b.strip_suffix(":S").unwrap_or(b).to_string())
            .collect();
        let mut link = Ended {
            number: prev,
            cluster_id: ep.from.cluster_id,
            names,
            expected_total: ep.from.expected_total as u128,
            cluster: None,
            dir: None,
            mismatch: None,
        };
        let mut next = None;
        if prev >= ep.number {
            // A record naming itself or a later epoch as its origin: the chain ends here.
            link.mismatch = Some(format!(
                "epoch {}: its record says it began from epoch {prev}, which is not an earlier epoch",
                ep.number
            ));
        } else if let Some(dir) = retired.get(&prev) {
            let c = Cluster::open_retired(dir)?;
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
