//! `snapctl report`: write the HTML page charting a stopped cluster's completed snapshots.

use crate::shared::Stores;
use crate::{verdict, Failure, Outcome};
use snapbank::report::write_atomic;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Report {
    #[command(flatten)]
    stores: Stores,
    /// The HTML file to write (through a temporary file next to it and a rename).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// A fault timeline to shade (JSON lines as `tools/chaos --faults FILE` writes them).
    #[arg(long, value_name = "FILE")]
    faults: Option<PathBuf>,
    /// A directory of the branches' `bank --stats-file` JSON files: adds transfer latency.
    #[arg(long, value_name = "DIR")]
    stats: Option<PathBuf>,
}

impl Report {
    pub fn run(self) -> Outcome {
        let cluster = self.stores.open()?;
        // The page is written with `snapbank::durable`'s atomic write (temporary file, fsync,
        // rename, fsync of the directory), through `report::write_atomic`.
        let report = snapbank::report::Report::from_cluster(&cluster)
            .and_then(|r| match &self.faults {
                Some(path) => r.with_faults(path),
                None => Ok(r),
            })
            .and_then(|r| match &self.stats {
                Some(dir) => r.with_stats(dir),
                None => Ok(r),
            })
            .and_then(|r| {
                write_atomic(&self.out, r.html().as_bytes())?;
                Ok(r)
            })
            .map_err(|e| Failure::cannot(format!("report: {e}")))?;
        snapbank::outln!(
            "wrote {}: {} completed snapshots, {}",
            self.out.display(),
            report.snapshots.len(),
            report.verdict()
        );
        Ok(verdict(report.unconserved().is_empty()))
    }
}
