//! What the report computes from the completed snapshots: each snapshot's figures, the
//! transfer rates between them, the duration percentiles, the verdict, and the series of each
//! chart (as [`LineChart`]s for `chart.rs` to draw).

use super::chart::{color, group_digits, LineChart, Point, Series};
use super::Report;
use crate::snapshot::GlobalSnapshot;
use crate::types::Micros;

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

/// The transfer rate between each consecutive pair of `snapshots` (in id order) where time passed
/// and the transfer count did not go back, and how many pairs had none.
pub(super) fn rates(snapshots: &[SnapshotFigures]) -> (Vec<Rate>, usize) {
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
    (rates, rates_skipped)
}

impl Report {
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
        LineChart {
            id: "chart-balances",
            x_span: self.x_span(),
            title: "Balance per branch",
            y_label: "balance (units)",
            y_from_zero: false,
            series,
        }
    }

    /// The `chart-total` chart.
    pub(super) fn total_chart(&self) -> LineChart {
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
        LineChart {
            id: "chart-total",
            x_span: self.x_span(),
            title: "Total money per snapshot",
            y_label: "total (units)",
            y_from_zero: false,
            series: vec![total, expected],
        }
    }

    /// The `chart-durations` chart.
    pub(super) fn durations_chart(&self) -> LineChart {
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
        LineChart {
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
        }
    }

    /// The `chart-rate` chart.
    pub(super) fn rate_chart(&self) -> LineChart {
        LineChart {
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
        }
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

/// Microseconds as milliseconds with one decimal ("4.1 ms").
pub(super) fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures::*;

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
}
