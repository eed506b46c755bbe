//! What the report computes from the completed snapshots: each snapshot's figures and the time
//! of its cut, the transfer rates between cuts (all branches and per branch), the duration
//! percentiles, the verdict, the shaded bands (fault periods, restarts), and the series of each
//! chart (as [`LineChart`]s for `chart.rs` to draw). Every x is wall-clock time.

use super::chart::{clock_time, color, group_digits, Band, LineChart, Point, Series};
use super::faults::FaultKind;
use super::Report;
use crate::snapshot::GlobalSnapshot;
use crate::types::Micros;

/// Lines break where consecutive snapshots are more than this many times the median interval
/// between cuts apart (and at least [`GAP_MIN_US`]).
const GAP_MEDIANS: u64 = 5;
/// The least gap that breaks a line: 1 s.
const GAP_MIN_US: u64 = 1_000_000;

/// One completed global snapshot, reduced to the figures the report charts.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotFigures {
    pub id: u64,
    pub started_at: Micros,
    pub completed_at: Micros,
    /// When the cut was taken: the mean of the parts' `recorded_at` (each branch records its
    /// state when it takes part; the started_at when there is no part).
    pub cut_at: Micros,
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
    /// The same per branch: the transfers it had sent at its cut.
    pub sent_by: Vec<Option<u128>>,
}

impl SnapshotFigures {
    /// Reduces a global snapshot; parts naming a branch outside `0..branches` are ignored.
    pub fn new(g: &GlobalSnapshot, branches: usize) -> SnapshotFigures {
        let mut balances = vec![None; branches];
        let mut money = vec![None; branches];
        let mut sent_by = vec![None; branches];
        let part_sent = |p: &crate::snapshot::LocalPart| -> u128 {
            p.sent.iter().map(|(_, s)| s.0 as u128).sum()
        };
        for p in &g.parts {
            if let Some(slot) = balances.get_mut(p.branch.index()) {
                *slot = Some(p.balance);
                money[p.branch.index()] = Some(p.money());
                sent_by[p.branch.index()] = Some(part_sent(p));
            }
        }
        let cut_at = match g.parts.len() as u128 {
            0 => g.started_at,
            n => (g.parts.iter().map(|p| p.recorded_at as u128).sum::<u128>() / n) as u64,
        };
        SnapshotFigures {
            id: g.snapshot.0,
            started_at: g.started_at,
            completed_at: g.completed_at,
            cut_at,
            sent_by,
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

/// Transfer throughput between the cuts of two consecutive completed snapshots.
#[derive(Clone, Debug, PartialEq)]
pub struct Rate {
    /// The earlier snapshot's id.
    pub from: u64,
    /// The later snapshot's id.
    pub to: u64,
    /// The later cut's time (where the chart plots the rate).
    pub at: Micros,
    /// Transfers sent between the two cuts (growth of Σ sent seqs).
    pub transfers: u128,
    /// Time between the two cuts (not between the snapshots' starts: a snapshot started soon
    /// after a slow one has its cut much later than its start).
    pub interval_us: u64,
    /// `transfers` per second of `interval_us`.
    pub per_sec: f64,
    /// The same per branch, by branch index (`None`: no part from it at one of the cuts, or
    /// its count went back).
    pub per_branch: Vec<Option<f64>>,
}

/// A `bank` start on a branch's store after its first (from the store's start records).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restart {
    pub branch: usize,
    /// Which start of the store it was (1: the first restart).
    pub n: u64,
    /// Unix µs.
    pub at: Micros,
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

/// The transfer rate between each consecutive pair of `snapshots` (in id order) where time passed
/// and the transfer count did not go back, and how many pairs had none.
pub(super) fn rates(snapshots: &[SnapshotFigures]) -> (Vec<Rate>, usize) {
    let mut rates = Vec::new();
    let mut rates_skipped = 0;
    for w in snapshots.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let interval_us = b.cut_at.saturating_sub(a.cut_at);
        let secs = interval_us as f64 / 1e6;
        match b.sent.checked_sub(a.sent) {
            Some(transfers) if interval_us > 0 => rates.push(Rate {
                from: a.id,
                to: b.id,
                at: b.cut_at,
                transfers,
                interval_us,
                per_sec: transfers as f64 / secs,
                per_branch: a
                    .sent_by
                    .iter()
                    .zip(&b.sent_by)
                    .map(|(x, y)| Some(y.as_ref()?.checked_sub(*x.as_ref()?)? as f64 / secs))
                    .collect(),
            }),
            _ => rates_skipped += 1,
        }
    }
    (rates, rates_skipped)
}

/// Micros as Unix seconds (the charts' x).
fn secs(us: Micros) -> f64 {
    us as f64 / 1e6
}

impl Report {
    /// The time every chart spans (Unix seconds): from the first snapshot's start (or the
    /// first fault's, if earlier) to the last one's completion (or the last fault's end). Start
    /// records outside it are not drawn (a long-lived store remembers restarts from long ago).
    pub(super) fn x_span(&self) -> (f64, f64) {
        let mut lo = self
            .snapshots
            .iter()
            .map(|s| s.started_at.min(s.cut_at))
            .min();
        let mut hi = self
            .snapshots
            .iter()
            .map(|s| s.completed_at.max(s.cut_at))
            .max();
        for f in &self.faults {
            let end = f.end_ms.unwrap_or(f.start_ms).saturating_mul(1000);
            lo = lo.map(|l| l.min(f.start_ms.saturating_mul(1000)));
            hi = hi.map(|h| h.max(end));
        }
        (secs(lo.unwrap_or(0)), secs(hi.unwrap_or(0)))
    }

    /// Where lines break: consecutive points further apart than [`GAP_MEDIANS`] × the median
    /// interval between cuts, and at least [`GAP_MIN_US`]; µs.
    pub fn gap_us(&self) -> u64 {
        let mut d: Vec<u64> = self
            .snapshots
            .windows(2)
            .map(|w| w[1].cut_at.saturating_sub(w[0].cut_at))
            .collect();
        d.sort_unstable();
        percentile(&d, 50)
            .unwrap_or(0)
            .saturating_mul(GAP_MEDIANS)
            .max(GAP_MIN_US)
    }

    /// The restarts inside the charts' time span, and how many fall outside it.
    pub fn restarts_shown(&self) -> (Vec<&Restart>, usize) {
        let (lo, hi) = self.x_span();
        let (inside, outside): (Vec<&Restart>, Vec<&Restart>) = self
            .restarts
            .iter()
            .partition(|r| (lo..=hi).contains(&secs(r.at)));
        (inside, outside.len())
    }

    /// The shaded bands of every chart: the faults file's periods and instants, then the
    /// restarts from the stores' start records.
    pub(super) fn bands(&self) -> Vec<Band> {
        let clock = |ms: u64| clock_time(ms as f64 / 1000.0, 1);
        let mut bands: Vec<Band> = self
            .faults
            .iter()
            .map(|f| {
                let end = f.end_ms.unwrap_or(f.start_ms);
                let who = if f.branches.is_empty() {
                    "the cluster".to_string()
                } else {
                    f.branches.join(" | ")
                };
                let (class, color, legend) = match f.kind {
                    FaultKind::Kill => ("fault kill", "#d62728", "killed until restarted"),
                    FaultKind::Partition => {
                        ("fault partition", "#ff7f0e", "partitioned until healed")
                    }
                    FaultKind::Restart => ("fault restart", "#2ca02c", "restart (faults file)"),
                    FaultKind::Heal => ("fault heal", "#8c564b", "heal (faults file)"),
                };
                let title = if f.kind.is_period() {
                    format!(
                        "{} {who}: {} → {} ({:.1} s)",
                        f.kind.name(),
                        clock(f.start_ms),
                        clock(end),
                        end.saturating_sub(f.start_ms) as f64 / 1000.0
                    )
                } else {
                    format!("{} {who} at {}", f.kind.name(), clock(f.start_ms))
                };
                Band {
                    x0: f.start_ms as f64 / 1000.0,
                    x1: end as f64 / 1000.0,
                    class,
                    color,
                    legend,
                    title,
                }
            })
            .collect();
        let (restarts, _) = self.restarts_shown();
        bands.extend(restarts.into_iter().map(|r| Band {
            x0: secs(r.at),
            x1: secs(r.at),
            class: "restart",
            color: "#6a3d9a",
            legend: "branch restarted (store)",
            title: format!(
                "{} started again (start {} of its store) at {}",
                self.branches.get(r.branch).map_or("?", |s| s.as_str()),
                r.n + 1,
                clock_time(secs(r.at), 3)
            ),
        }));
        bands
    }

    /// A chart over the page's time span, with its gaps and bands.
    fn chart(
        &self,
        id: &'static str,
        title: &'static str,
        y_label: &'static str,
        y_from_zero: bool,
        series: Vec<Series>,
    ) -> LineChart {
        LineChart {
            id,
            title,
            y_label,
            y_from_zero,
            y_log: false,
            x_span: self.x_span(),
            gap_s: Some(self.gap_us() as f64 / 1e6),
            bands: self.bands(),
            series,
        }
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

    /// The `chart-balances` chart.
    pub(super) fn balances_chart(&self) -> LineChart {
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
                            x: secs(s.cut_at),
                            y: v as f64,
                            bad: false,
                            title: format!(
                                "{name}, snapshot {} (cut {}): {}",
                                s.id,
                                clock_time(secs(s.cut_at), 3),
                                group_digits(&v.to_string())
                            ),
                        })
                    })
                    .collect(),
            })
            .collect();
        self.chart(
            "chart-balances",
            "Balance per branch",
            "balance (units)",
            false,
            series,
        )
    }

    /// The `chart-total` chart.
    pub(super) fn total_chart(&self) -> LineChart {
        let point = |s: &SnapshotFigures, v: u128, what: &str| Point {
            x: secs(s.cut_at),
            y: v as f64,
            bad: !s.conserved(),
            title: format!(
                "snapshot {} (cut {}): {what} {}",
                s.id,
                clock_time(secs(s.cut_at), 3),
                group_digits(&v.to_string())
            ),
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
        self.chart(
            "chart-total",
            "Total money per snapshot",
            "total (units)",
            false,
            vec![total, expected],
        )
    }

    /// The `chart-durations` chart: each snapshot at its start, on a log axis (a linear one puts
    /// p50 on the floor under one slow snapshot).
    pub(super) fn durations_chart(&self) -> LineChart {
        let st = self.duration_stats();
        let (first, last) = self.x_span();
        let level = |name: &str, us: u64, color: &str| Series {
            name: format!("{name} {}", ms(us)),
            class: "reference",
            color: color.into(),
            dashed: true,
            points: [first, last]
                .iter()
                .map(|&x| Point {
                    x,
                    y: us as f64 / 1000.0,
                    bad: false,
                    title: format!("{name} {}", ms(us)),
                })
                .collect(),
        };
        let durations = Series {
            name: "duration".into(),
            class: "duration",
            color: "#2ca02c".into(),
            dashed: false,
            points: self
                .snapshots
                .iter()
                .map(|s| Point {
                    x: secs(s.started_at),
                    y: s.duration_us() as f64 / 1000.0,
                    bad: false,
                    title: format!(
                        "snapshot {} (started {}): {}",
                        s.id,
                        clock_time(secs(s.started_at), 3),
                        ms(s.duration_us())
                    ),
                })
                .collect(),
        };
        LineChart {
            y_log: true,
            ..self.chart(
                "chart-durations",
                "Snapshot duration",
                "duration (ms, log scale)",
                false,
                vec![
                    durations,
                    level("p50", st.p50_us, "#888"),
                    level("p99", st.p99_us, "#d62728"),
                ],
            )
        }
    }

    /// The tooltip of a rate point.
    fn rate_title(r: &Rate, who: &str, per_sec: f64) -> String {
        format!(
            "{who}, snapshots {}→{} (cuts {:.1} ms apart, to {}): {}/s",
            r.from,
            r.to,
            r.interval_us as f64 / 1000.0,
            clock_time(secs(r.at), 3),
            group_digits(&format!("{per_sec:.0}"))
        )
    }

    /// The `chart-rate` chart.
    pub(super) fn rate_chart(&self) -> LineChart {
        let series = Series {
            name: "transfers/s".into(),
            class: "rate",
            color: "#9467bd".into(),
            dashed: false,
            points: self
                .rates
                .iter()
                .map(|r| Point {
                    x: secs(r.at),
                    y: r.per_sec,
                    bad: false,
                    title: format!(
                        "{} ({} transfers)",
                        Self::rate_title(r, "all branches", r.per_sec),
                        group_digits(&r.transfers.to_string())
                    ),
                })
                .collect(),
        };
        self.chart(
            "chart-rate",
            "Transfer rate",
            "transfers/s",
            true,
            vec![series],
        )
    }

    /// The `chart-branch-rate` chart: a line per branch.
    pub(super) fn branch_rate_chart(&self) -> LineChart {
        let series = self
            .branches
            .iter()
            .enumerate()
            .map(|(b, name)| Series {
                name: name.clone(),
                class: "branch-rate",
                color: color(b, self.branches.len()),
                dashed: false,
                points: self
                    .rates
                    .iter()
                    .filter_map(|r| {
                        let v = r.per_branch.get(b).copied().flatten()?;
                        Some(Point {
                            x: secs(r.at),
                            y: v,
                            bad: false,
                            title: Self::rate_title(r, name, v),
                        })
                    })
                    .collect(),
            })
            .collect();
        self.chart(
            "chart-branch-rate",
            "Transfer rate per branch",
            "transfers/s sent",
            true,
            series,
        )
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

/// Nearest-rank percentile `permille` (0..=1000) of histogram `buckets` (upper bound, count),
/// ascending: the upper bound of the bucket holding that rank; `None` when they count nothing.
pub(super) fn percentile_of_buckets(buckets: &[(u64, u64)], permille: u64) -> Option<u64> {
    let n: u64 = buckets.iter().map(|b| b.1).sum();
    if n == 0 {
        return None;
    }
    let rank = permille
        .min(1000)
        .saturating_mul(n)
        .div_ceil(1000)
        .clamp(1, n);
    let mut seen = 0;
    buckets.iter().find_map(|&(bound, count)| {
        seen += count;
        (seen >= rank).then_some(bound)
    })
}

/// Microseconds as milliseconds with one decimal ("4.1 ms").
pub(super) fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures::*;

    #[test]
    fn rate_is_transfers_between_cuts_over_time_between_cuts() {
        // Ids with a gap, given out of order; each branch sends on 3 channels; cuts at start.
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
        assert_eq!(r.snapshots[0].sent_by, vec![Some(3 * 50); 4]);
        assert_eq!(r.rates.len(), 2);
        // (4·3·150 − 4·3·50) transfers in 2 s.
        assert_eq!((r.rates[0].from, r.rates[0].to), (5, 9));
        assert_eq!(r.rates[0].transfers, 1200);
        assert_eq!(r.rates[0].interval_us, 2_000_000);
        assert_eq!(r.rates[0].at, r.snapshots[1].cut_at);
        assert!((r.rates[0].per_sec - 600.0).abs() < 1e-9);
        // Per branch: 300 of them each.
        assert_eq!(r.rates[0].per_branch, vec![Some(150.0); 4]);
        assert_eq!(r.rates[1].transfers, 0);
        assert_eq!(r.rates_skipped, 0);
        let html = r.html();
        assert_eq!(
            svg(&html, "chart-branch-rate")
                .matches("class=\"series branch-rate\"")
                .count(),
            4
        );
    }

    #[test]
    fn rate_of_two_snapshots_started_11_ms_apart_uses_their_cuts() {
        // Snapshot 1 starts at 1000 ms and its branches record at 1004..1007 ms (mean 1005.5);
        // snapshot 2 starts only 11 ms later, at 1011 ms, but its branches record at
        // 1054..1057 ms (mean 1055.5): the cuts are 50 ms apart. 4 branches × 3 channels × 50
        // more seqs = 600 transfers between the cuts.
        let a = with_cuts(global(1, 1000, 2, &[1000; 4], 0, 100), 1004);
        let b = with_cuts(global(2, 1011, 50, &[1000; 4], 0, 150), 1054);
        let r = report(&[a, b]);
        assert_eq!(
            r.snapshots[1].cut_at - r.snapshots[0].cut_at,
            50_000,
            "mean of the parts' recorded_at"
        );
        assert_eq!(r.rates.len(), 1);
        let rate = &r.rates[0];
        assert_eq!(rate.transfers, 600);
        assert_eq!(rate.interval_us, 50_000);
        // Δtransfers / Δcut-time = 600 / 0.05 s; over the 11 ms between the starts it would
        // have been 54,545/s, 4.5 times as much.
        assert!((rate.per_sec - 12_000.0).abs() < 1e-6, "{}", rate.per_sec);
        let by_starts = 600.0 / 0.011;
        assert!(by_starts / rate.per_sec > 4.5);
        for b in &rate.per_branch {
            assert!((b.expect("every branch") - 3_000.0).abs() < 1e-6);
        }
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
}
