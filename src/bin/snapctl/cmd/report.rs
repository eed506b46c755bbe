//! `snapctl report`: write the HTML page charting a stopped cluster's completed snapshots.

use crate::shared::{reach, From, Stores};
use crate::{verdict, Failure, Outcome};
use snapbank::cli::KeyArgs;
use snapbank::lineage::summaries;
use snapbank::live_audit::latest_globals;
use snapbank::report::write_atomic;
use std::path::PathBuf;
use std::time::Duration;

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
    /// Chart a running cluster (whose stores its branches hold locked): its initiator's latest
    /// completed snapshots, over the authenticated control channel (host.list by default).
    #[arg(long)]
    live: bool,
    /// With --live: how many of the latest completed snapshots to chart (those the initiator
    /// still keeps).
    #[arg(long, default_value_t = 256, value_name = "K", requires = "live", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    snapshots: u64,
    /// With --live: how long to wait for each answer.
    #[arg(long, default_value = "5s", value_name = "DURATION", requires = "live", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Chart this epoch (one a reshape retired to DATA/epochs/<E>/) instead of the current one.
    #[arg(long, value_name = "E", conflicts_with = "live")]
    epoch: Option<u64>,
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    from: From,
}

impl Report {
    pub fn run(self) -> Outcome {
        self.from.only_with_live(self.live)?;
        let made = if self.live {
            self.running()?
        } else {
            self.stopped()?
        };
        // The page is written with `snapbank::durable`'s atomic write (temporary file, fsync,
        // rename, fsync of the directory), through `report::write_atomic`.
        let report = made
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

impl Report {
    /// The report of the stopped cluster's stores (or with `--epoch`, a retired epoch's),
    /// listing every epoch of the data directory.
    fn stopped(
        &self,
    ) -> Result<Result<snapbank::report::Report, snapbank::report::ReportError>, Failure> {
        let current = self.stores.open()?;
        let epochs = summaries(&self.stores.data.data_dir, &current).map_err(Failure::cannot)?;
        let cluster = self.stores.epoch(current, self.epoch)?;
        let epoch = cluster.identity.epoch_number();
        Ok(snapbank::report::Report::from_cluster(&cluster).map(|r| r.with_epochs(epoch, epochs)))
    }

    /// `--live`: the report of the running cluster's latest completed snapshots.
    fn running(
        &self,
    ) -> Result<Result<snapbank::report::Report, snapbank::report::ReportError>, Failure> {
        let live = self.stores.live(&self.key, &self.from, false);
        let (op, rt) = reach(&live)?;
        let globals = rt
            .block_on(latest_globals(&op, self.snapshots, self.timeout))
            .map_err(|e| Failure::cannot(format!("report --live: {e}")))?;
        let names: Vec<String> = (0..op.hosts.len())
            .map(|b| {
                op.hosts
                    .addr(snapbank::types::BranchId(b as u16))
                    .to_string()
            })
            .collect();
        let initiator = op.hosts.initiator.index();
        let source = format!(
            "the running cluster of {} (initiator {})",
            live.hosts.display(),
            names[initiator]
        );
        Ok(snapbank::report::Report::from_live(
            names, initiator, source, &globals,
        ))
    }
}
