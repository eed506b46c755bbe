//! `snapctl restore`: rewind every store of a stopped cluster to a completed snapshot.

use crate::shared::Stores;
use crate::{Failure, Outcome};
use snapbank::types::SnapshotId;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Restore {
    #[command(flatten)]
    stores: Stores,
    /// The completed snapshot to restore.
    #[arg(long, value_name = "K")]
    snapshot: u64,
}

impl Restore {
    pub fn run(self) -> Outcome {
        let hosts = self.stores.host_list()?;
        let r = snapbank::restore::restore(
            &self.stores.data.data_dir,
            hosts.as_ref(),
            SnapshotId(self.snapshot),
        )
        .map_err(|e| Failure::cannot(format!("restore: {e}")))?;
        for (branch, balance) in &r.balances {
            let rebuilt = if r.rebuilt.contains(branch) {
                "  (store rebuilt)"
            } else {
                ""
            };
            snapbank::outln!("{branch:<28} balance {balance}{rebuilt}");
        }
        snapbank::outln!(
            "restored {} branches to snapshot {}; the next snapshot will be {}",
            r.balances.len(),
            r.snapshot,
            r.next_snapshot
        );
        Ok(ExitCode::SUCCESS)
    }
}
