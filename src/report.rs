//! `snapctl report`: one self-contained HTML page charting the completed global snapshots of a
//! stopped cluster, read from the initiator's store.
//!
//! Four hand-written inline SVG line charts (no script, no external resource), all with the
//! snapshot id on the x axis:
//! - `chart-balances`: each branch's recorded balance (one `polyline.series.branch` per branch);
//! - `chart-total`: Σ (balance + money in flight towards the branch) against the expected total,
//!   with a verdict: a flat line on the reference is the proof that money was conserved;
//! - `chart-durations`: how long each snapshot took, with p50/p99/max;
//! - `chart-rate`: transfers per second between consecutive completed snapshots.
//!
//! Every data point is a `circle.point` (when a chart has at most [`MARKERS_MAX`] of them), so a
//! test can count them. Values are u64/u128; they are scaled in f64 for drawing only, tick
//! labels are exact decimals, and totals are printed exactly in the text.

use crate::audit::{AuditError, Cluster};
use crate::snapshot::GlobalSnapshot;
use crate::types::Micros;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

/// Why no report was made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Read(#[from] AuditError),
    #[error("no completed snapshots in {0}: nothing to chart (run the cluster until its initiator completes one)")]
    NoSnapshots(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// One completed global snapshot, reduced to the figures the report charts.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotFigures {
    pub id: u64,
    pub started_at: Micros,
    pub completed_at: Micros,
    /// The balance each branch recorded at its cut, by branch index (`None`: no part from it).
    pub balances: Vec<Option<u64>>,
    /// Per branch: its balance plus the money recorded in flight towards it (`LocalPart::money`).
    pub money: Vec<Option<u128>>,
    /// Σ over the parts of their money: what must equal `expected_total`.
    pub total: u128,
    /// The cluster's genesis total (branches × initial balance).
    pub expected_total: u128,
    /// Transfers sent by every branch up to its cut: Σ over parts of the last sequence numbers on
    /// their outgoing channels (channels number transfers densely from 1).
    pub sent: u128,
}

impl SnapshotFigures {
    /// Reduces a global snapshot; parts naming a branch outside `0..branches` are ignored.
    pub fn new(g: &GlobalSnapshot, branches: usize) -> SnapshotFigures {
        let mut balances = vec![None; branches];
        let mut money = vec![None; branches];
        for p in &g.parts {
            if let Some(slot) = balances.get_mut(p.branch.index()) {
                *slot = Some(p.balance);
                money[p.branch.index()] = Some(p.money());
            }
        }
        SnapshotFigures {
            id: g.snapshot.0,
            started_at: g.started_at,
            completed_at: g.completed_at,
            balances,
            money,
            total: g.parts.iter().map(|p| p.money()).sum(),
            expected_total: g.expected_total as u128,
            sent: g
                .parts
                .iter()
                .flat_map(|p| p.sent.iter().map(|(_, s)| s.0 as u128))
                .sum(),
        }
    }

    /// From the initiator starting the snapshot to it holding every part.
    pub fn duration_us(&self) -> u64 {
        self.completed_at.saturating_sub(self.started_at)
    }

    /// Whether the total equals the expected total.
    pub fn conserved(&self) -> bool {
        self.total == self.expected_total
    }

    /// Σ of the recorded balances.
    pub fn balance_sum(&self) -> u128 {
        self.balances.iter().flatten().map(|b| *b as u128).sum()
    }

    /// Money that was in flight on channels at the cut (part of the total, in no balance).
    pub fn in_flight(&self) -> u128 {
        self.total.saturating_sub(self.balance_sum())
    }
}

/// Transfer throughput between two consecutive completed snapshots.
#[derive(Clone, Debug, PartialEq)]
pub struct Rate {
    /// The earlier snapshot's id.
    pub from: u64,
    /// The later snapshot's id (where the chart plots the rate).
    pub to: u64,
    /// Transfers sent between the two cuts.
    pub transfers: u128,
    /// Time between the two snapshots' starts.
    pub interval_us: u64,
    /// `transfers` per second of `interval_us`.
    pub per_sec: f64,
}

/// p50/p99/max of the snapshot durations (nearest rank), in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurationStats {
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// The snapshot that took longest.
    pub max_id: u64,
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
}

/// Most data-point markers a chart draws; beyond it only the lines (a test counts markers on
/// the smaller charts, where every snapshot has one).
pub const MARKERS_MAX: usize = 2000;
/// Most legend entries a chart lists; with more series the rest are summed up in one line.
pub const LEGEND_MAX: usize = 16;

impl Report {
    /// Reads the initiator's completed global snapshots of an opened cluster.
    pub fn from_cluster(c: &Cluster) -> Result<Report, ReportError> {
        let globals = c.initiator().globals().map_err(AuditError::from)?;
        let initiator = c.identity.initiator().index();
        let store = c.initiator().path();
        let source = store.parent().unwrap_or(store).display().to_string();
        Report::new(c.names.clone(), initiator, source, &globals).ok_or_else(|| {
            ReportError::NoSnapshots(format!("the initiator's store {}", store.display()))
        })
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
        let mut rates = Vec::new();
        let mut rates_skipped = 0;
        for w in snapshots.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            let interval_us = b.started_at.saturating_sub(a.started_at);
            match b.sent.checked_sub(a.sent) {
                Some(transfers) if interval_us > 0 => rates.push(Rate {
                    from: a.id,
                    to: b.id,
                    transfers,
                    interval_us,
                    per_sec: transfers as f64 / (interval_us as f64 / 1e6),
                }),
                _ => rates_skipped += 1,
            }
        }
        Some(Report {
            branches,
            initiator,
            source,
            snapshots,
            rates,
            rates_skipped,
        })
    }

    /// The first and the last snapshot id.
    fn x_span(&self) -> (u64, u64) {
        let last = self.snapshots.len() - 1;
        (self.snapshots[0].id, self.snapshots[last].id)
    }

    /// Snapshots whose total differs from the expected total.
    pub fn unconserved(&self) -> Vec<&SnapshotFigures> {
        self.snapshots.iter().filter(|s| !s.conserved()).collect()
    }

    /// One sentence: "money conserved in all N snapshots", or which ones did not conserve it.
    pub fn verdict(&self) -> String {
        let n = self.snapshots.len();
        let bad = self.unconserved();
        if bad.is_empty() {
            let all = if n == 1 {
                "the only snapshot".to_string()
            } else {
                format!("all {n} snapshots")
            };
            return format!("money conserved in {all}");
        }
        const LISTED: usize = 20;
        let mut list: Vec<String> = bad
            .iter()
            .take(LISTED)
            .map(|s| {
                format!(
                    "{} (total {}, expected {})",
                    s.id,
                    group_digits(&s.total.to_string()),
                    group_digits(&s.expected_total.to_string())
                )
            })
            .collect();
        if bad.len() > LISTED {
            list.push(format!("and {} more", bad.len() - LISTED));
        }
        format!(
            "money NOT conserved in {} of {n} snapshots: {}",
            bad.len(),
            list.join(", ")
        )
    }

    /// p50, p99 and the longest of the snapshot durations.
    pub fn duration_stats(&self) -> DurationStats {
        let mut us: Vec<u64> = self.snapshots.iter().map(|s| s.duration_us()).collect();
        us.sort_unstable();
        let longest = self
            .snapshots
            .iter()
            .max_by_key(|s| (s.duration_us(), std::cmp::Reverse(s.id)));
        DurationStats {
            p50_us: percentile(&us, 50).unwrap_or(0),
            p99_us: percentile(&us, 99).unwrap_or(0),
            max_us: longest.map_or(0, |s| s.duration_us()),
            max_id: longest.map_or(0, |s| s.id),
        }
    }

    /// The whole page: HTML with inline CSS and SVG, nothing loaded from elsewhere.
    pub fn html(&self) -> String {
        let first = &self.snapshots[0];
        let last = &self.snapshots[self.snapshots.len() - 1];
        let n = self.snapshots.len();
        let mut h = String::new();
        h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
        h.push_str("<title>snapbank report</title>\n<style>\n");
        h.push_str(CSS);
        h.push_str("</style>\n</head>\n<body>\n<h1>snapbank report</h1>\n");
        let _ = writeln!(
            h,
            "<p class=\"summary\">{} branches (initiator {}) · {n} completed snapshot{} \
             (ids {}–{}) · {} to {}</p>",
            self.branches.len(),
            esc(self
                .branches
                .get(self.initiator)
                .map_or("?", |s| s.as_str())),
            if n == 1 { "" } else { "s" },
            first.id,
            last.id,
            rfc3339(first.started_at),
            rfc3339(last.completed_at),
        );
        let ok = self.unconserved().is_empty();
        let _ = writeln!(
            h,
            "<p id=\"verdict\" class=\"verdict {}\">{}</p>",
            if ok { "ok" } else { "bad" },
            esc(&capitalize(&self.verdict()))
        );
        let charts = [
            self.balances_chart(),
            self.total_chart(),
            self.durations_chart(),
            self.rate_chart(),
        ];
        // One left margin for all, so that the plots line up.
        let left = charts
            .iter()
            .map(|(c, _)| c.left_margin())
            .fold(0.0, f64::max);
        for (chart, caption) in &charts {
            let _ = write!(
                h,
                "<section>\n{}<p class=\"caption\">{}</p>\n</section>\n",
                chart.svg(left),
                esc(caption)
            );
        }
        self.section_last(&mut h);
        let _ = writeln!(
            h,
            "<footer>Made by <code>snapctl report</code> from the stores under {}.</footer>",
            esc(&self.source)
        );
        h.push_str("</body>\n</html>\n");
        h
    }

    /// The `chart-balances` chart and its caption.
    fn balances_chart(&self) -> (LineChart, String) {
        let series = self
            .branches
            .iter()
            .enumerate()
            .map(|(b, name)| Series {
                name: name.clone(),
                class: "branch",
                color: color(b, self.branches.len()),
                dashed: false,
                points: self
                    .snapshots
                    .iter()
                    .filter_map(|s| {
                        let v = s.balances.get(b).copied().flatten()?;
                        Some(Point {
                            x: s.id as f64,
                            y: v as f64,
                            bad: false,
                            title: format!(
                                "{name}, snapshot {}: {}",
                                s.id,
                                group_digits(&v.to_string())
                            ),
                        })
                    })
                    .collect(),
            })
            .collect();
        let chart = LineChart {
            id: "chart-balances",
            x_span: self.x_span(),
            title: "Balance per branch",
            y_label: "balance (units)",
            y_from_zero: false,
            series,
        };
        let last = &self.snapshots[self.snapshots.len() - 1];
        (
            chart,
            format!(
                "The balance each branch recorded at its cut of each completed snapshot. These \
                 lines alone need not add up to the total: money in flight on a channel at the cut \
                 ({} units at snapshot {}) is recorded with the channel, in no balance. Balance \
                 plus the money in flight towards each branch is what makes the total below flat.",
                group_digits(&last.in_flight().to_string()),
                last.id
            ),
        )
    }

    /// The `chart-total` chart and its caption.
    fn total_chart(&self) -> (LineChart, String) {
        let point = |s: &SnapshotFigures, v: u128, what: &str| Point {
            x: s.id as f64,
            y: v as f64,
            bad: !s.conserved(),
            title: format!("snapshot {}: {what} {}", s.id, group_digits(&v.to_string())),
        };
        let total = Series {
            name: "total".into(),
            class: "total",
            color: "#1f77b4".into(),
            dashed: false,
            points: self
                .snapshots
                .iter()
                .map(|s| point(s, s.total, "total"))
                .collect(),
        };
        let expected = Series {
            name: "expected total".into(),
            class: "reference",
            color: "#555".into(),
            dashed: true,
            points: self
                .snapshots
                .iter()
                .map(|s| Point {
                    bad: false,
                    ..point(s, s.expected_total, "expected")
                })
                .collect(),
        };
        let chart = LineChart {
            id: "chart-total",
            x_span: self.x_span(),
            title: "Total money per snapshot",
            y_label: "total (units)",
            y_from_zero: false,
            series: vec![total, expected],
        };
        let expected_text = {
            let mut e: Vec<u128> = self.snapshots.iter().map(|s| s.expected_total).collect();
            e.dedup();
            e.iter()
                .map(|v| group_digits(&v.to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        (
            chart,
            format!(
                "Σ over branches of (balance + money recorded in flight towards it) at each \
                 snapshot, against the expected total {expected_text} (branches × initial \
                 balance, dashed). A flat line on the dashed one is the proof that no money was \
                 lost or created. {}.",
                capitalize(&self.verdict())
            ),
        )
    }

    /// The `chart-durations` chart and its caption.
    fn durations_chart(&self) -> (LineChart, String) {
        let st = self.duration_stats();
        let (first, last) = (
            self.snapshots[0].id,
            self.snapshots[self.snapshots.len() - 1].id,
        );
        let level = |name: &str, us: u64, color: &str| Series {
            name: format!("{name} {}", ms(us)),
            class: "reference",
            color: color.into(),
            dashed: true,
            points: [first, last]
                .iter()
                .map(|&x| Point {
                    x: x as f64,
                    y: us as f64 / 1000.0,
                    bad: false,
                    title: format!("{name} {}", ms(us)),
                })
                .collect(),
        };
        let chart = LineChart {
            id: "chart-durations",
            x_span: self.x_span(),
            title: "Snapshot duration",
            y_label: "duration (ms)",
            y_from_zero: true,
            series: vec![
                Series {
                    name: "duration".into(),
                    class: "duration",
                    color: "#2ca02c".into(),
                    dashed: false,
                    points: self
                        .snapshots
                        .iter()
                        .map(|s| Point {
                            x: s.id as f64,
                            y: s.duration_us() as f64 / 1000.0,
                            bad: false,
                            title: format!("snapshot {}: {}", s.id, ms(s.duration_us())),
                        })
                        .collect(),
                },
                level("p50", st.p50_us, "#888"),
                level("p99", st.p99_us, "#d62728"),
            ],
        };
        (
            chart,
            format!(
                "From the initiator starting a snapshot to it holding every branch's part. Over {} \
                 snapshots: p50 {}, p99 {}, max {} (snapshot {}).",
                self.snapshots.len(),
                ms(st.p50_us),
                ms(st.p99_us),
                ms(st.max_us),
                st.max_id
            ),
        )
    }

    /// The `chart-rate` chart and its caption.
    fn rate_chart(&self) -> (LineChart, String) {
        let chart = LineChart {
            id: "chart-rate",
            x_span: self.x_span(),
            title: "Transfer rate",
            y_label: "transfers/s",
            y_from_zero: true,
            series: vec![Series {
                name: "transfers/s".into(),
                class: "rate",
                color: "#9467bd".into(),
                dashed: false,
                points: self
                    .rates
                    .iter()
                    .map(|r| Point {
                        x: r.to as f64,
                        y: r.per_sec,
                        bad: false,
                        title: format!(
                            "snapshots {}→{}: {} transfers in {}: {}/s",
                            r.from,
                            r.to,
                            group_digits(&r.transfers.to_string()),
                            ms(r.interval_us),
                            group_digits(&format!("{:.0}", r.per_sec))
                        ),
                    })
                    .collect(),
            }],
        };
        let mut text = String::from(
            "Transfers sent by all branches between consecutive completed snapshots (the growth \
             of Σ last sequence numbers on every channel at the cuts), divided by the time between \
             the two snapshots' starts; plotted at the later snapshot. ",
        );
        if self.rates.is_empty() {
            text.push_str("No interval to measure: this needs two completed snapshots.");
        } else {
            let transfers: u128 = self.rates.iter().map(|r| r.transfers).sum();
            let us: u64 = self.rates.iter().map(|r| r.interval_us).sum();
            let max = self.rates.iter().map(|r| r.per_sec).fold(0.0, f64::max);
            let _ = write!(
                text,
                "Over {} intervals: {} transfers in {:.1} s, {}/s on average, at most {}/s.",
                self.rates.len(),
                group_digits(&transfers.to_string()),
                us as f64 / 1e6,
                group_digits(&format!("{:.0}", transfers as f64 / (us as f64 / 1e6))),
                group_digits(&format!("{max:.0}")),
            );
        }
        if self.rates_skipped > 0 {
            let _ = write!(
                text,
                " {} interval{} without a rate (no time passed or fewer transfers counted, as \
                 across a restore).",
                self.rates_skipped,
                if self.rates_skipped == 1 { "" } else { "s" }
            );
        }
        (chart, text)
    }

    /// A table of each branch's figures at the last snapshot, with the exact total.
    fn section_last(&self, h: &mut String) {
        let last = &self.snapshots[self.snapshots.len() - 1];
        let _ = writeln!(
            h,
            "<section>\n<h2>At the last snapshot ({})</h2>\n<table id=\"last-snapshot\">\n\
             <tr><th>branch</th><th>balance</th><th>in flight towards it</th><th>money</th></tr>",
            last.id
        );
        for (b, name) in self.branches.iter().enumerate() {
            let bal = last.balances.get(b).copied().flatten();
            let money = last.money.get(b).copied().flatten();
            let cell =
                |v: Option<u128>| v.map_or("–".to_string(), |v| group_digits(&v.to_string()));
            let flight = match (bal, money) {
                (Some(b), Some(m)) => Some(m.saturating_sub(b as u128)),
                _ => None,
            };
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(name),
                cell(bal.map(u128::from)),
                cell(flight),
                cell(money)
            );
        }
        let _ = writeln!(
            h,
            "<tr class=\"sum\"><td>total</td><td>{}</td><td>{}</td><td>{} (expected {})</td></tr>\n\
             </table>\n</section>",
            group_digits(&last.balance_sum().to_string()),
            group_digits(&last.in_flight().to_string()),
            group_digits(&last.total.to_string()),
            group_digits(&last.expected_total.to_string()),
        );
    }
}

/// Nearest-rank percentile `p` (0..=100) of ascending `sorted`; `None` when it is empty.
pub fn percentile(sorted: &[u64], p: u32) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    let rank = (p.min(100) as usize * n).div_ceil(100).clamp(1, n);
    Some(sorted[rank - 1])
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

const CSS: &str = "\
body{font-family:sans-serif;margin:24px;color:#222;max-width:1000px}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:17px;margin:28px 0 4px}
.summary{color:#555;margin:0 0 8px}
.verdict{font-weight:bold;padding:6px 10px;border-radius:4px;display:inline-block}
.verdict.ok{background:#e3f4e3;color:#1d6b1d}
.verdict.bad{background:#fbe3e3;color:#a11}
.caption{color:#444;font-size:13px;margin:2px 0 0;max-width:960px}
section{margin-top:22px}
svg{max-width:100%;height:auto;font-family:sans-serif;font-size:12px}
svg .frame{fill:#fff;stroke:#999}
svg .grid{stroke:#e6e6e6}
svg .tick{fill:#444}
svg .title{font-size:15px;font-weight:bold;fill:#222}
svg .axis-label{fill:#444}
svg .series{fill:none;stroke-width:1.6;stroke-linejoin:round}
svg .series.reference{stroke-width:1.2;stroke-dasharray:6 4}
svg .point.bad{fill:#d62728;stroke:#d62728}
svg .no-data{fill:#888;font-size:14px}
table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}
tr.sum td{font-weight:bold}
footer{margin-top:24px;color:#777;font-size:12px}
";

/// One point of a series, in data units.
struct Point {
    x: f64,
    y: f64,
    /// Drawn as `circle.point.bad` (e.g. a snapshot that does not conserve money).
    bad: bool,
    /// Tooltip text.
    title: String,
}

/// One line of a chart: a `polyline.series.<class>` plus a `circle.point` per point.
struct Series {
    /// Legend and tooltip text.
    name: String,
    /// Extra CSS class of the polyline (`branch`, `total`, `reference`, …).
    class: &'static str,
    color: String,
    dashed: bool,
    points: Vec<Point>,
}

/// A line chart with the snapshot id on the x axis.
struct LineChart {
    /// The `<svg>` element's id.
    id: &'static str,
    title: &'static str,
    y_label: &'static str,
    /// Start the y axis at 0 (magnitudes) rather than at the smallest value (levels).
    y_from_zero: bool,
    /// First and last snapshot id: every chart spans the same x range.
    x_span: (u64, u64),
    series: Vec<Series>,
}

const WIDTH: f64 = 960.0;
const PLOT_HEIGHT: f64 = 280.0;
const TOP: f64 = 40.0;
const RIGHT: f64 = 24.0;
const BOTTOM: f64 = 48.0;
/// Space between the x axis label and the legend.
const LEGEND_GAP: f64 = 10.0;
const LEGEND_COLUMNS: usize = 4;
const LEGEND_ROW: f64 = 18.0;

impl LineChart {
    /// How many data points the chart has.
    fn points(&self) -> usize {
        self.series.iter().map(|s| s.points.len()).sum()
    }

    /// The x axis (snapshot ids, whole numbers) and the y axis (out to nice ticks).
    fn axes(&self) -> (Axis, Axis) {
        let x = Axis::new(
            &[self.x_span.0 as f64, self.x_span.1 as f64],
            true,
            false,
            8,
        );
        let mut ys: Vec<f64> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.y))
            .collect();
        if self.y_from_zero {
            ys.push(0.0);
        }
        (x, Axis::new(&ys, false, true, 5))
    }

    /// Room left of the plot for the y tick labels and the y axis label.
    fn left_margin(&self) -> f64 {
        let (_, y) = self.axes();
        let chars = y.ticks.iter().map(|(_, l)| l.chars().count()).max();
        34.0 + 7.0 * chars.unwrap_or(1) as f64
    }

    /// The chart as one `<svg>` element whose plot starts `left` pixels from the left edge.
    fn svg(&self, left: f64) -> String {
        let n_points = self.points();
        let (x_axis, y_axis) = self.axes();
        let legend_entries = self.series.len().min(LEGEND_MAX);
        let legend_rows = if self.series.len() > 1 {
            legend_entries.div_ceil(LEGEND_COLUMNS) + usize::from(self.series.len() > LEGEND_MAX)
        } else {
            0
        };
        let legend_height = if legend_rows > 0 {
            LEGEND_GAP + legend_rows as f64 * LEGEND_ROW
        } else {
            0.0
        };
        let height = TOP + PLOT_HEIGHT + BOTTOM + legend_height;
        let (x0, x1) = (left, WIDTH - RIGHT);
        let (y0, y1) = (TOP + PLOT_HEIGHT, TOP);
        let px = |x: f64| x_axis.scale(x, x0, x1);
        let py = |y: f64| y_axis.scale(y, y0, y1);

        let mut s = String::new();
        let _ = writeln!(
            s,
            "<svg id=\"{}\" class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" \
             height=\"{height}\" viewBox=\"0 0 {WIDTH} {height}\" role=\"img\" aria-label=\"{}\">",
            self.id,
            esc(self.title)
        );
        let _ = writeln!(
            s,
            "<text class=\"title\" x=\"{x0}\" y=\"22\">{}</text>",
            esc(self.title)
        );
        let _ = writeln!(
            s,
            "<rect class=\"frame\" x=\"{x0}\" y=\"{y1}\" width=\"{:.1}\" height=\"{PLOT_HEIGHT}\"/>",
            x1 - x0
        );
        for (v, label) in &y_axis.ticks {
            let y = py(*v);
            let _ = writeln!(
                s,
                "<line class=\"grid\" x1=\"{x0}\" x2=\"{x1}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/>\
                 <text class=\"tick y\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                x0 - 6.0,
                y + 4.0,
                esc(label)
            );
        }
        for (v, label) in &x_axis.ticks {
            let x = px(*v);
            let _ = writeln!(
                s,
                "<line class=\"grid\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{y1}\" y2=\"{y0}\"/>\
                 <text class=\"tick x\" x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                y0 + 16.0,
                esc(label)
            );
        }
        let _ = writeln!(
            s,
            "<text class=\"axis-label\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">snapshot id</text>",
            (x0 + x1) / 2.0,
            y0 + 36.0
        );
        let _ = writeln!(
            s,
            "<text class=\"axis-label\" transform=\"translate(14 {:.1}) rotate(-90)\" \
             text-anchor=\"middle\">{}</text>",
            (y0 + y1) / 2.0,
            esc(self.y_label)
        );
        if n_points == 0 {
            let _ = writeln!(
                s,
                "<text class=\"no-data\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">no data</text>",
                (x0 + x1) / 2.0,
                (y0 + y1) / 2.0
            );
        }
        let markers = n_points <= MARKERS_MAX;
        for (i, series) in self.series.iter().enumerate() {
            let coords: Vec<String> = series
                .points
                .iter()
                .map(|p| format!("{:.1},{:.1}", px(p.x), py(p.y)))
                .collect();
            let _ = writeln!(
                s,
                "<polyline class=\"series {}\" data-series=\"{i}\" stroke=\"{}\"{} points=\"{}\">\
                 <title>{}</title></polyline>",
                series.class,
                series.color,
                if series.dashed {
                    " stroke-dasharray=\"6 4\""
                } else {
                    ""
                },
                coords.join(" "),
                esc(&series.name)
            );
            if markers && !series.dashed {
                for p in &series.points {
                    let _ = writeln!(
                        s,
                        "<circle class=\"point{}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{}\">\
                         <title>{}</title></circle>",
                        if p.bad { " bad" } else { "" },
                        px(p.x),
                        py(p.y),
                        series.color,
                        esc(&p.title)
                    );
                }
            }
        }
        if legend_rows > 0 {
            let shown = if self.series.len() > LEGEND_MAX {
                LEGEND_MAX - 1
            } else {
                self.series.len()
            };
            let col_width = (x1 - x0) / LEGEND_COLUMNS as f64;
            let row_y = |row: usize| y0 + BOTTOM + LEGEND_GAP + row as f64 * LEGEND_ROW;
            for (i, series) in self.series.iter().take(shown).enumerate() {
                let x = x0 + (i % LEGEND_COLUMNS) as f64 * col_width;
                let y = row_y(i / LEGEND_COLUMNS);
                let _ = writeln!(
                    s,
                    "<g class=\"legend\"><line x1=\"{x:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" \
                     stroke=\"{}\" stroke-width=\"3\"{}/><text x=\"{:.1}\" y=\"{y:.1}\">{}</text></g>",
                    x + 18.0,
                    y - 4.0,
                    y - 4.0,
                    series.color,
                    if series.dashed {
                        " stroke-dasharray=\"4 3\""
                    } else {
                        ""
                    },
                    x + 24.0,
                    esc(&series.name)
                );
            }
            if shown < self.series.len() {
                let _ = writeln!(
                    s,
                    "<text class=\"legend more\" x=\"{x0}\" y=\"{:.1}\">… and {} more (hover a line \
                     for its name)</text>",
                    row_y(shown.div_ceil(LEGEND_COLUMNS)),
                    self.series.len() - shown
                );
            }
        }
        s.push_str("</svg>\n");
        s
    }
}

/// An axis: its drawn range and its ticks (position, exact decimal label).
#[derive(Debug)]
struct Axis {
    lo: f64,
    hi: f64,
    ticks: Vec<(f64, String)>,
}

impl Axis {
    /// An axis over `values` with about `target` ticks at 1, 2 or 5 × 10^e. `integer`: ticks
    /// at whole numbers only. `extend`: widen the range out to the ticks around it (else the
    /// range is exactly the values' and the ticks fall inside). A single value gets room around.
    fn new(values: &[f64], integer: bool, extend: bool, target: usize) -> Axis {
        let finite = values.iter().copied().filter(|v| v.is_finite());
        let (mut min, mut max) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
        if min > max {
            (min, max) = (0.0, 1.0);
        }
        if max - min <= max.abs().max(min.abs()) * 1e-12 {
            let pad = if integer || max == 0.0 {
                1.0
            } else {
                max.abs() / 1000.0
            };
            let nonnegative = min >= 0.0;
            (min, max) = (min - pad, max + pad);
            if nonnegative && min < 0.0 {
                min = 0.0;
            }
        }
        let rough = (max - min) / target.max(1) as f64;
        let mut exp = rough.log10().floor() as i32;
        let f = rough / 10f64.powi(exp);
        let mut mantissa: i128 = if f <= 1.0 {
            1
        } else if f <= 2.0 {
            2
        } else if f <= 5.0 {
            5
        } else {
            exp += 1;
            1
        };
        if integer && exp < 0 {
            (mantissa, exp) = (1, 0);
        }
        let step = mantissa as f64 * 10f64.powi(exp);
        let (k_lo, k_hi) = if extend {
            ((min / step).floor(), (max / step).ceil())
        } else {
            ((min / step - 1e-9).ceil(), (max / step + 1e-9).floor())
        };
        let (lo, hi) = if extend {
            (k_lo * step, k_hi * step)
        } else {
            (min, max)
        };
        let ticks = (k_lo as i128..=k_hi as i128)
            .take(4 * target + 4)
            .map(|k| (k as f64 * step, decimal(k * mantissa, exp)))
            .collect();
        Axis { lo, hi, ticks }
    }

    /// Maps `v` from the axis range onto `from..to` (pixels).
    fn scale(&self, v: f64, from: f64, to: f64) -> f64 {
        if self.hi > self.lo {
            from + (v - self.lo) / (self.hi - self.lo) * (to - from)
        } else {
            (from + to) / 2.0
        }
    }
}

/// `n × 10^exp` as an exact decimal with digit groups ("4,000,000", "0.25", "-1.5").
fn decimal(n: i128, exp: i32) -> String {
    let sign = if n < 0 { "-" } else { "" };
    let digits = n.unsigned_abs().to_string();
    if exp >= 0 {
        let zeros = if n == 0 { 0 } else { exp as usize };
        return format!("{sign}{}", group_digits(&(digits + &"0".repeat(zeros))));
    }
    let places = exp.unsigned_abs() as usize;
    let padded = format!("{digits:0>width$}", width = places + 1);
    let (int, frac) = padded.split_at(padded.len() - places);
    format!("{sign}{}.{frac}", group_digits(int))
}

/// Groups the digits of a decimal integer string in threes ("4000000" → "4,000,000"); anything
/// after the leading digits is kept as it is.
fn group_digits(s: &str) -> String {
    let (sign, rest) = match s.strip_prefix('-') {
        Some(r) => ("-", r),
        None => ("", s),
    };
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let (int, tail) = rest.split_at(end);
    let mut out = String::with_capacity(s.len() + int.len() / 3);
    out.push_str(sign);
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out.push_str(tail);
    out
}

/// Escapes text for HTML and SVG content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Microseconds as milliseconds with one decimal ("4.1 ms").
fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

fn rfc3339(us: Micros) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_micros(us)).to_string()
}

/// A distinct colour for series `i` of `n`: the ten Tableau colours, then golden-angle hues.
fn color(i: usize, n: usize) -> String {
    const TABLEAU: [&str; 10] = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
        "#bcbd22", "#17becf",
    ];
    if n <= TABLEAU.len() {
        TABLEAU[i % TABLEAU.len()].to_string()
    } else {
        let hue = (i as f64 * 137.508) % 360.0;
        let light = 35 + (i % 3) * 10;
        format!("hsl({hue:.0},65%,{light}%)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{ChannelRecord, LocalPart};
    use crate::types::{BranchId, Seq, SnapshotId};

    /// A snapshot of `balances.len()` branches with `in_flight` money on the channel towards
    /// branch 0 and `sent` as the last seq on each outgoing channel of every branch.
    fn global(
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
                recorded_at: started_ms * 1000,
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
            started_at: 1_700_000_000_000_000 + started_ms * 1000,
            completed_at: 1_700_000_000_000_000 + (started_ms + took_ms) * 1000,
            expected_total: 4_000,
            total,
            parts,
        }
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("127.0.0.1:{}", 8000 + i)).collect()
    }

    fn report(globals: &[GlobalSnapshot]) -> Report {
        let n = globals.first().map_or(0, |g| g.parts.len());
        Report::new(names(n), 0, "data".into(), globals).expect("snapshots")
    }

    /// The part of `html` from `<svg id="{id}"` to its `</svg>`.
    fn svg<'a>(html: &'a str, id: &str) -> &'a str {
        let start = html
            .find(&format!("<svg id=\"{id}\""))
            .unwrap_or_else(|| panic!("svg {id}"));
        let len = html[start..].find("</svg>").expect("svg end");
        &html[start..start + len]
    }

    #[test]
    fn no_snapshots_no_report() {
        assert!(Report::new(names(4), 0, "data".into(), &[]).is_none());
    }

    #[test]
    fn rate_is_transfers_between_cuts_over_time_between_starts() {
        // Ids with a gap, given out of order; each branch sends on 3 channels.
        let r = report(&[
            global(9, 3000, 5, &[1000; 4], 0, 150),
            global(5, 1000, 5, &[1000; 4], 0, 50),
            global(10, 3500, 5, &[1000; 4], 0, 150),
        ]);
        assert_eq!(
            r.snapshots.iter().map(|s| s.id).collect::<Vec<_>>(),
            [5, 9, 10]
        );
        assert_eq!(r.snapshots[0].sent, 4 * 3 * 50);
        assert_eq!(r.rates.len(), 2);
        // (4·3·150 − 4·3·50) transfers in 2 s.
        assert_eq!((r.rates[0].from, r.rates[0].to), (5, 9));
        assert_eq!(r.rates[0].transfers, 1200);
        assert_eq!(r.rates[0].interval_us, 2_000_000);
        assert!((r.rates[0].per_sec - 600.0).abs() < 1e-9);
        assert_eq!(r.rates[1].transfers, 0);
        assert_eq!(r.rates_skipped, 0);
    }

    #[test]
    fn counters_going_back_give_no_rate() {
        let r = report(&[
            global(1, 1000, 5, &[1000; 4], 0, 500),
            global(2, 2000, 5, &[1000; 4], 0, 100), // after a restore to an older cut
            global(3, 2000, 5, &[1000; 4], 0, 200), // no time passed
            global(4, 3000, 5, &[1000; 4], 0, 300),
        ]);
        assert_eq!(r.rates.len(), 1);
        assert_eq!((r.rates[0].from, r.rates[0].to), (3, 4));
        assert_eq!(r.rates_skipped, 2);
        assert!(r.html().contains("2 intervals without a rate"));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), Some(50));
        assert_eq!(percentile(&v, 99), Some(99));
        assert_eq!(percentile(&v, 100), Some(100));
        assert_eq!(percentile(&v, 0), Some(1));
        assert_eq!(percentile(&[7], 99), Some(7));
        assert_eq!(percentile(&[1, 2, 3], 50), Some(2));
        assert_eq!(percentile(&[], 50), None);

        let r = report(&[
            global(1, 0, 4, &[1000; 4], 0, 1),
            global(2, 100, 2, &[1000; 4], 0, 2),
            global(3, 200, 30, &[1000; 4], 0, 3),
        ]);
        let st = r.duration_stats();
        assert_eq!(
            (st.p50_us, st.p99_us, st.max_us, st.max_id),
            (4000, 30000, 30000, 3)
        );
        let html = r.html();
        assert!(html.contains("p50 4.0 ms, p99 30.0 ms, max 30.0 ms (snapshot 3)"));
    }

    #[test]
    fn verdict_names_the_snapshots_that_do_not_conserve() {
        let good = [
            global(1, 0, 1, &[1000; 4], 0, 1),
            global(2, 100, 1, &[990, 1000, 1000, 1000], 10, 2),
        ];
        let r = report(&good);
        assert_eq!(r.verdict(), "money conserved in all 2 snapshots");
        // 10 in flight makes up for the balances' 3,990.
        assert_eq!(r.snapshots[1].balance_sum(), 3990);
        assert_eq!(r.snapshots[1].in_flight(), 10);
        assert_eq!(r.snapshots[1].total, 4000);
        // Without the money in flight, snapshot 2 lost 10.
        let mut bad = good.to_vec();
        bad[1] = global(2, 100, 1, &[990, 1000, 1000, 1000], 0, 2);
        bad.push(global(3, 200, 1, &[1000; 4], 0, 3));
        let r = report(&bad);
        assert_eq!(
            r.verdict(),
            "money NOT conserved in 1 of 3 snapshots: 2 (total 3,990, expected 4,000)"
        );
        let html = r.html();
        assert!(html.contains("class=\"verdict bad\""));
        assert_eq!(
            svg(&html, "chart-total")
                .matches("class=\"point bad\"")
                .count(),
            1
        );
        assert_eq!(
            report(&[global(7, 0, 1, &[1000; 4], 0, 1)]).verdict(),
            "money conserved in the only snapshot"
        );
    }

    #[test]
    fn html_has_four_charts_with_a_line_per_branch() {
        let gs: Vec<GlobalSnapshot> = (0..5)
            .map(|i| {
                global(
                    100 + i,
                    i * 100,
                    3 + i,
                    &[1000 - i, 1000, 1000, 1000 + i],
                    0,
                    i,
                )
            })
            .collect();
        let html = report(&gs).html();
        assert_eq!(html.matches("<svg ").count(), 4);
        let balances = svg(&html, "chart-balances");
        assert_eq!(balances.matches("class=\"series branch\"").count(), 4);
        assert_eq!(balances.matches("class=\"point\"").count(), 20);
        let total = svg(&html, "chart-total");
        assert_eq!(total.matches("class=\"series total\"").count(), 1);
        assert_eq!(total.matches("class=\"series reference\"").count(), 1);
        assert_eq!(total.matches("class=\"point\"").count(), 5);
        assert_eq!(
            svg(&html, "chart-durations")
                .matches("class=\"point\"")
                .count(),
            5
        );
        assert_eq!(
            svg(&html, "chart-rate").matches("class=\"point\"").count(),
            4
        );
        assert!(html.contains("Money conserved in all 5 snapshots"));
        assert!(html.contains("4,000 (expected 4,000)"));
        // Self-contained: no script, nothing fetched.
        assert!(!html.contains("<script"));
        assert!(!html.contains("href="));
        assert!(!html.contains("src="));
        assert!(!html.contains("url("));
    }

    #[test]
    fn one_snapshot_still_renders() {
        let html = report(&[global(42, 0, 3, &[1000; 4], 0, 9)]).html();
        assert_eq!(html.matches("<svg ").count(), 4);
        assert!(svg(&html, "chart-rate").contains("no data"));
        assert!(html.contains("this needs two completed snapshots"));
        assert!(!html.contains("NaN") && !html.contains("inf"));
    }

    #[test]
    fn many_branches_get_a_line_each_and_a_capped_legend() {
        let gs: Vec<GlobalSnapshot> = (0..3)
            .map(|i| global(i + 1, i * 100, 5, &[62; 64], 0, i))
            .collect();
        let html = report(&gs).html();
        let balances = svg(&html, "chart-balances");
        assert_eq!(balances.matches("class=\"series branch\"").count(), 64);
        assert_eq!(
            balances.matches("<g class=\"legend\">").count(),
            LEGEND_MAX - 1
        );
        assert!(balances.contains("… and 49 more"));
    }

    #[test]
    fn text_is_escaped() {
        let mut r = report(&[global(1, 0, 1, &[1000; 4], 0, 1)]);
        r.branches[1] = "<b>&\"x'</b>".into();
        let html = r.html();
        assert!(!html.contains("<b>"));
        assert!(html.contains("&lt;b&gt;&amp;&quot;x&#39;&lt;/b&gt;"));
    }

    #[test]
    fn tick_labels_are_exact_decimals() {
        assert_eq!(decimal(4_000, 3), "4,000,000");
        assert_eq!(decimal(0, 5), "0");
        assert_eq!(decimal(25, -2), "0.25");
        assert_eq!(decimal(-15, -1), "-1.5");
        assert_eq!(decimal(5, -3), "0.005");
        assert_eq!(group_digits("1234567.5"), "1,234,567.5");
        assert_eq!(group_digits("-1000"), "-1,000");
        assert_eq!(group_digits("999"), "999");

        let a = Axis::new(&[3_999_000.0, 4_001_000.0], false, true, 5);
        let labels: Vec<&str> = a.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(
            labels,
            [
                "3,999,000",
                "3,999,500",
                "4,000,000",
                "4,000,500",
                "4,001,000"
            ]
        );
        // A flat line gets room around it and stays exact.
        let flat = Axis::new(&[4_000_000.0; 3], false, true, 5);
        assert!(flat.lo < 4_000_000.0 && flat.hi > 4_000_000.0);
        assert!(flat.ticks.iter().any(|(_, l)| l == "4,000,000"));
        // Fractional milliseconds, and a u128-sized total.
        let small = Axis::new(&[0.0, 0.3], false, true, 5);
        let labels: Vec<&str> = small.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["0.0", "0.1", "0.2", "0.3"]);
        let big = Axis::new(&[0.0, 6.4e20], false, true, 5);
        assert!(big
            .ticks
            .iter()
            .any(|(_, l)| l == "200,000,000,000,000,000,000"));
        // Snapshot ids: whole numbers only, within the values' range.
        let ids = Axis::new(&[7.0, 9.0], true, false, 8);
        let labels: Vec<&str> = ids.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["7", "8", "9"]);
        let one = Axis::new(&[1.0], true, false, 8);
        assert_eq!(one.ticks.len(), 3);
        assert_eq!(
            Axis::new(&[], false, true, 5)
                .ticks
                .first()
                .map(|t| t.1.as_str()),
            Some("0.0")
        );
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
