//! `snapctl report`: one self-contained HTML page charting the completed global snapshots of a
//! stopped cluster, read from the initiator's store, against wall-clock time.
//!
//! Five hand-written inline SVG line charts (no script, no external resource), all over the same
//! time span (x: UTC clock time; a line breaks where no snapshot completed for a while):
//! - `chart-balances`: each branch's recorded balance at each cut (one `path.series.branch` per
//!   branch);
//! - `chart-total`: Σ (balance + money in flight towards the branch) against the expected total,
//!   with a verdict: a flat line on the reference is the proof that money was conserved;
//! - `chart-durations`: how long each snapshot took, on a log axis, with p50/p99/max;
//! - `chart-rate`: transfers per second between consecutive cuts (Δ Σ sent seqs / Δ cut time);
//! - `chart-branch-rate`: the same per branch, a line each.
//!
//! Behind the lines every chart shades the same bands: `rect.band.restart` at each restart the
//! stores' start records hold (`m:start`), and with `--faults FILE` a `rect.band.fault.<kind>`
//! per entry of the fault timeline `tools/chaos` writes (`faults.rs`). With `--stats DIR` a table
//! gives transfer latency from the branches' `--stats-file` JSON (`latency.rs`; the stores hold no
//! per-transfer times).
//!
//! Every data point is a `circle.point` (when a chart has at most [`MARKERS_MAX`] of them), so a
//! test can count them. Values are u64/u128; they are scaled in f64 for drawing only, tick
//! labels are exact decimals, and totals are printed exactly in the text.
//!
//! Layout (each file calls only those after it):
//! - this file: the entry points [`Report::from_cluster`], [`Report::new`], [`Report::html`]
//!   and [`write_atomic`] (the page is written with [`crate::durable::write_atomic`]);
//! - `page.rs`: the HTML page: summary, verdict, the charts with their captions, the tables of
//!   the last snapshot, of the epochs (after a `snapctl reshape`) and of latency, the CSS;
//! - `figures.rs`: what is computed from the snapshots: each one's figures, the rates, the
//!   duration percentiles, the verdict, the bands and each chart's series;
//! - `faults.rs`, `latency.rs`: reading the fault timeline and the stats files;
//! - `chart.rs`: drawing one line chart as SVG (time axis, linear or log y axis, bands, lines,
//!   markers, legend), knowing nothing of snapshots.

mod chart;
mod faults;
mod figures;
mod latency;
mod page;

pub use chart::{LEGEND_MAX, MARKERS_MAX};
pub use faults::{parse_faults, read_faults, Fault, FaultKind};
pub use figures::{percentile, DurationStats, Rate, Restart, SnapshotFigures};
pub use latency::{Latency, ProcessLatency};

use crate::audit::{AuditError, Cluster};
use crate::lineage::EpochSummary;
use crate::snapshot::GlobalSnapshot;
use std::path::Path;

/// Why no report was made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Read(#[from] AuditError),
    #[error("no completed snapshots in {0}: nothing to chart (run the cluster until its initiator completes one)")]
    NoSnapshots(String),
    /// The faults file or the stats directory: the message names it and the format.
    #[error("{0}")]
    Input(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// Everything the page shows, computed from the initiator's completed global snapshots.
#[derive(Clone, Debug)]
pub struct Report {
    /// Branch addresses in branch order (the initiator is `branches[initiator]`).
    pub branches: Vec<String>,
    pub initiator: usize,
    /// Where the figures come from (the data directory), for the page's footer.
    pub source: String,
    /// Completed snapshots in id order; never empty.
    pub snapshots: Vec<SnapshotFigures>,
    /// One per consecutive pair of `snapshots` where time passed and the transfer count did not
    /// go back.
    pub rates: Vec<Rate>,
    /// Consecutive pairs without a rate: no time passed or fewer transfers were counted at the
    /// later cut (as across a `snapctl restore`).
    pub rates_skipped: usize,
    /// Every restart the stores' start records hold, in time order.
    pub restarts: Vec<Restart>,
    /// Whether any store predates the start records (its restarts cannot be shown).
    pub restarts_unrecorded: bool,
    /// Made from a running cluster over the control channel (`--live`): its stores, and so its
    /// start records, are held by the branches.
    pub live: bool,
    /// The fault timeline (`--faults`), and the file it came from.
    pub faults: Vec<Fault>,
    pub faults_source: Option<String>,
    /// Transfer latency from the branches' stats files (`--stats`).
    pub latency: Option<Latency>,
    /// The epoch charted (0 until the first `snapctl reshape`).
    pub epoch: u64,
    /// Every epoch of the data directory, oldest first, when it has been reshaped (empty: one
    /// epoch, or a running cluster).
    pub epochs: Vec<EpochSummary>,
}

impl Report {
    /// Reads the initiator's completed global snapshots of an opened cluster.
    pub fn from_cluster(c: &Cluster) -> Result<Report, ReportError> {
        let globals = c.initiator().globals().map_err(AuditError::from)?;
        let initiator = c.identity.initiator().index();
        let store = c.initiator().path();
        let source = store.parent().unwrap_or(store).display().to_string();
        let mut report =
            Report::new(c.names.clone(), initiator, source, &globals).ok_or_else(|| {
                ReportError::NoSnapshots(format!("the initiator's store {}", store.display()))
            })?;
        for (branch, s) in c.stores.iter().enumerate() {
            let starts = s.starts().map_err(AuditError::from)?;
            // A store counted starts before it recorded them: the first record is not start 0.
            if starts.first().is_some_and(|&(n, _)| n > 0) {
                report.restarts_unrecorded = true;
            }
            report.restarts.extend(
                starts
                    .into_iter()
                    .filter(|&(n, _)| n > 0)
                    .map(|(n, at)| Restart { branch, n, at }),
            );
        }
        report.restarts.sort_by_key(|r| (r.at, r.branch));
        Ok(report)
    }

    /// The report of a running cluster (`--live`): `globals` as its initiator sent them.
    pub fn from_live(
        branches: Vec<String>,
        initiator: usize,
        source: String,
        globals: &[GlobalSnapshot],
    ) -> Result<Report, ReportError> {
        let what = format!(
            "the running initiator {}",
            branches.get(initiator).map_or("?", String::as_str)
        );
        let mut report = Report::new(branches, initiator, source, globals)
            .ok_or(ReportError::NoSnapshots(what))?;
        report.live = true;
        Ok(report)
    }

    /// The report of epoch `epoch`, listing `epochs` (every epoch of its data directory).
    pub fn with_epochs(mut self, epoch: u64, epochs: Vec<EpochSummary>) -> Report {
        self.epoch = epoch;
        self.epochs = if epochs.len() > 1 { epochs } else { Vec::new() };
        self
    }

    /// The report with the fault timeline read from `path` (`--faults`).
    pub fn with_faults(mut self, path: &Path) -> Result<Report, ReportError> {
        self.faults = read_faults(path).map_err(ReportError::Input)?;
        self.faults_source = Some(path.display().to_string());
        Ok(self)
    }

    /// The report with transfer latency from the stats files in `dir` (`--stats`).
    pub fn with_stats(mut self, dir: &Path) -> Result<Report, ReportError> {
        self.latency = Some(Latency::read_dir(dir).map_err(ReportError::Input)?);
        Ok(self)
    }

    /// The report of `globals` (in any order, any ids); `None` when there is none.
    pub fn new(
        branches: Vec<String>,
        initiator: usize,
        source: String,
        globals: &[GlobalSnapshot],
    ) -> Option<Report> {
        if globals.is_empty() {
            return None;
        }
        let mut snapshots: Vec<SnapshotFigures> = globals
            .iter()
            .map(|g| SnapshotFigures::new(g, branches.len()))
            .collect();
        snapshots.sort_by_key(|s| s.id);
        let (rates, rates_skipped) = figures::rates(&snapshots);
        Some(Report {
            branches,
            initiator,
            source,
            snapshots,
            rates,
            rates_skipped,
            restarts: Vec::new(),
            restarts_unrecorded: false,
            live: false,
            faults: Vec::new(),
            faults_source: None,
            latency: None,
            epoch: 0,
            epochs: Vec::new(),
        })
    }

    /// The whole page: HTML with inline CSS and SVG, nothing loaded from elsewhere.
    pub fn html(&self) -> String {
        page::html(self)
    }
}

/// Writes `contents` to `path` atomically and durably ([`crate::durable::write_atomic`]), so
/// `path` is never seen half-written.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), ReportError> {
    let fail = |source| ReportError::Write {
        path: path.display().to_string(),
        source,
    };
    if path.is_dir() {
        return Err(fail(std::io::Error::other("is a directory")));
    }
    crate::durable::write_atomic(path, contents, None).map_err(fail)
}

#[cfg(test)]
mod fixtures {
    //! Snapshots and reports for the unit tests of `figures.rs` and `page.rs`.

    use super::Report;
    use crate::snapshot::{ChannelRecord, GlobalSnapshot, LocalPart};
    use crate::types::{BranchId, Seq, SnapshotId};

    /// A snapshot of `balances.len()` branches with `in_flight` money on the channel towards
    /// branch 0 and `sent` as the last seq on each outgoing channel of every branch.
    pub fn global(
        id: u64,
        started_ms: u64,
        took_ms: u64,
        balances: &[u64],
        in_flight: u64,
        sent: u64,
    ) -> GlobalSnapshot {
        let n = balances.len();
        let parts: Vec<LocalPart> = balances
            .iter()
            .enumerate()
            .map(|(b, &balance)| LocalPart {
                snapshot: SnapshotId(id),
                branch: BranchId(b as u16),
                recorded_at: EPOCH_US + started_ms * 1000,
                balance,
                sent: (0..n)
                    .filter(|&p| p != b)
                    .map(|p| (BranchId(p as u16), Seq(sent)))
                    .collect(),
                channels: vec![ChannelRecord {
                    from: BranchId(((b + 1) % n) as u16),
                    applied_at_record: Seq(0),
                    until: Seq(0),
                    money: if b == 0 { in_flight } else { 0 },
                    count: u64::from(b == 0 && in_flight > 0),
                }],
            })
            .collect();
        let total = parts.iter().map(|p| p.money()).sum();
        GlobalSnapshot {
            snapshot: SnapshotId(id),
            started_at: EPOCH_US + started_ms * 1000,
            completed_at: EPOCH_US + (started_ms + took_ms) * 1000,
            expected_total: 4_000,
            total,
            parts,
        }
    }

    /// The fixtures' time 0: 2023-11-14T22:13:20Z, in Unix µs.
    pub const EPOCH_US: u64 = 1_700_000_000_000_000;

    /// `g` with branch `b` recording its part at `first_ms + b` (ms after [`EPOCH_US`]).
    pub fn with_cuts(mut g: GlobalSnapshot, first_ms: u64) -> GlobalSnapshot {
        for (b, p) in g.parts.iter_mut().enumerate() {
            p.recorded_at = EPOCH_US + (first_ms + b as u64) * 1000;
        }
        g
    }

    pub fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("127.0.0.1:{}", 8000 + i)).collect()
    }

    pub fn report(globals: &[GlobalSnapshot]) -> Report {
        let n = globals.first().map_or(0, |g| g.parts.len());
        Report::new(names(n), 0, "data".into(), globals).expect("snapshots")
    }

    /// The part of `html` from `<svg id="{id}"` to its `</svg>`.
    pub fn svg<'a>(html: &'a str, id: &str) -> &'a str {
        let start = html
            .find(&format!("<svg id=\"{id}\""))
            .unwrap_or_else(|| panic!("svg {id}"));
        let len = html[start..].find("</svg>").expect("svg end");
        &html[start..start + len]
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::names;
    use super::*;

    #[test]
    fn no_snapshots_no_report() {
        assert!(Report::new(names(4), 0, "data".into(), &[]).is_none());
    }

    #[test]
    fn write_atomic_replaces_the_file_and_names_it_on_failure() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("report.html");
        write_atomic(&path, b"one").expect("write");
        write_atomic(&path, b"two").expect("replace");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .expect("entries");
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
        let e = write_atomic(dir.path(), b"x").expect_err("a directory");
        assert!(e.to_string().ends_with(": is a directory"), "{e}");
        let missing = dir.path().join("no").join("report.html");
        let e = write_atomic(&missing, b"x").expect_err("no such directory");
        assert!(
            e.to_string().contains(&missing.display().to_string()),
            "{e}"
        );
    }
}
