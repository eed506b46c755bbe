//! The figures: throughput, latencies, snapshot overhead, from the stats files read at both
//! ends of the window or, for a bank without `--stats-file`, from the logs.
//!
//! Percentiles are nearest-rank everywhere: [`snapbank::report::percentile`] (rank ⌈p·n/100⌉ of
//! the sorted values, in integers) for snapshot durations, and [`hist_percentile`], the same
//! rank over a histogram's bucket counts, for transfer latency (millions of transfers: their
//! buckets are merged, not their values listed).

use crate::args::Args;
use crate::clock::secs_between;
use crate::cluster::Cluster;
use crate::logs::{completed_snapshots, status_sent};
use crate::results::{
    Latency, Overhead, PhaseRate, RunResult, SnapshotLatency, Spread, Throughput, Window,
};
use crate::stats::Stats;
use snapbank::net::stats::LatencySummary;
use snapbank::report::percentile;
use std::collections::BTreeMap;
use std::time::SystemTime;

/// Nearest-rank percentile `p` (0..=100) of the values a histogram counts (`h`: bucket upper
/// bound -> count): the bucket holding the value of rank ⌈p·n/100⌉ (at least 1) of the n
/// counted, as [`snapbank::report::percentile`] ranks them; `None` when it counts nothing.
pub fn hist_percentile(h: &BTreeMap<u64, u64>, p: u32) -> Option<u64> {
    let total: u64 = h.values().sum();
    if total == 0 {
        return None;
    }
    let rank = (u64::from(p.min(100)) * total)
        .div_ceil(100)
        .clamp(1, total);
    let mut cum = 0;
    for (&upper, &c) in h {
        cum += c;
        if cum >= rank {
            return Some(upper);
        }
    }
    h.keys().next_back().copied()
}

pub fn spread(v: &[f64]) -> Option<Spread> {
    if v.is_empty() {
        return None;
    }
    Some(Spread {
        min: v.iter().copied().fold(f64::INFINITY, f64::min),
        mean: v.iter().sum::<f64>() / v.len() as f64,
        max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    })
}

/// Throughput, latency, snapshots and overhead from the stats files read at both window ends;
/// which snapshots completed inside the window comes from the initiator's log.
pub fn from_stats(
    args: &Args,
    has_phases: bool,
    window: Window,
    stats0: &[Option<Stats>],
    stats1: &[Option<Stats>],
    log0: &str,
    r: &mut RunResult,
) {
    let n = stats1.len();
    // Counters: per branch (sent at end - sent at start) / (uptime at end - uptime at start).
    let mut counter_rate = 0.0;
    let mut counter_ok = true;
    for i in 0..n {
        let (Some(a), Some(b)) = (
            stats0.get(i).and_then(Option::as_ref),
            stats1.get(i).and_then(Option::as_ref),
        ) else {
            counter_ok = false;
            continue;
        };
        let (s0, s1) = (a.file.transfers_sent, b.file.transfers_sent);
        let (u0, u1) = (a.file.uptime_s, b.file.uptime_s);
        if u1 > u0 && a.pid() == b.pid() {
            r.per_branch[i].transfers_sent_window = Some(s1.saturating_sub(s0));
            counter_rate += s1.saturating_sub(s0) as f64 / (u1 - u0);
        } else {
            counter_ok = false;
        }
    }
    let counters = counter_ok.then_some(counter_rate);

    // Phases fully inside the window.
    let len_ms = (args.phase.as_millis() as u64).max(1);
    let first = window.start_unix_ms.div_ceil(len_ms);
    let last_end = window.end_unix_ms / len_ms; // phases < last_end end by t1
    let mut phases = Vec::new();
    let mut phase_note = None;
    if has_phases {
        let per_branch: Vec<Option<(u64, &BTreeMap<u64, u64>)>> = stats1
            .iter()
            .map(|s| s.as_ref().and_then(Stats::phases))
            .collect();
        let usable = per_branch
            .iter()
            .all(|p| p.as_ref().is_some_and(|(l, _)| *l == len_ms));
        if !usable {
            phase_note = Some(
                "some stats files have no phases (or another phase length); throughput from counters"
                    .to_string(),
            );
        } else {
            for p in first..last_end {
                let t: u64 = per_branch
                    .iter()
                    .flatten()
                    .map(|(_, m)| m.get(&p).copied().unwrap_or(0))
                    .sum();
                phases.push(PhaseRate {
                    index: p,
                    snapshots_on: p % 2 == 0,
                    transfers: t,
                    transfers_per_s: t as f64 * 1000.0 / len_ms as f64,
                });
            }
            if phases.is_empty() {
                phase_note = Some(format!(
                    "no complete {len_ms} ms phase inside the window; throughput from counters"
                ));
            }
        }
    }
    if let Some(note) = phase_note {
        r.notes.push(note);
    }
    if !phases.is_empty() {
        let total: u64 = phases.iter().map(|p| p.transfers).sum();
        let secs = phases.len() as f64 * len_ms as f64 / 1000.0;
        let mean = |on: bool| {
            let v: Vec<f64> = phases
                .iter()
                .filter(|p| p.snapshots_on == on)
                .map(|p| p.transfers_per_s)
                .collect();
            (!v.is_empty()).then(|| (v.iter().sum::<f64>() / v.len() as f64, v.len()))
        };
        if let (Some((on, non)), Some((off, noff))) = (mean(true), mean(false)) {
            r.overhead = Some(Overhead {
                ratio: if off > 0.0 { on / off } else { f64::NAN },
                on_transfers_per_s: on,
                off_transfers_per_s: off,
                on_phases: non,
                off_phases: noff,
            });
        } else {
            r.notes.push(
                "snapshot overhead needs at least one complete on and one complete off phase"
                    .to_string(),
            );
        }
        r.throughput = Some(Throughput {
            transfers_per_s: total as f64 / secs,
            transfers: total,
            seconds: secs,
            source: "stats phases".to_string(),
            counters_transfers_per_s: counters,
            phases,
        });
    } else if let Some(rate) = counters {
        let total = r
            .per_branch
            .iter()
            .filter_map(|b| b.transfers_sent_window)
            .sum();
        r.throughput = Some(Throughput {
            transfers_per_s: rate,
            transfers: total,
            seconds: window.seconds,
            source: "stats counters".to_string(),
            counters_transfers_per_s: Some(rate),
            phases: Vec::new(),
        });
    } else {
        r.failures
            .push("no throughput: stats files incomplete at the window ends".to_string());
    }

    // Latency: merge bucket counts over branches, the window's share where the start file allows.
    let mut merged: BTreeMap<u64, u64> = BTreeMap::new();
    let mut usable = true;
    let mut windowed = true;
    for (i, s1) in stats1.iter().enumerate() {
        let Some(b1) = s1.as_ref().map(Stats::buckets) else {
            usable = false;
            break;
        };
        let b0 = stats0
            .get(i)
            .and_then(Option::as_ref)
            .filter(|s0| Some(s0.pid()) == s1.as_ref().map(Stats::pid))
            .map(Stats::buckets);
        let diffable = b0
            .as_ref()
            .is_some_and(|b0| b0.iter().all(|(k, c)| b1.get(k).is_some_and(|c1| c1 >= c)));
        for (k, c) in &b1 {
            let sub = if diffable {
                b0.as_ref().and_then(|b0| b0.get(k)).copied().unwrap_or(0)
            } else {
                0
            };
            *merged.entry(*k).or_insert(0) += c - sub;
        }
        windowed &= diffable;
    }
    let count: u64 = merged.values().sum();
    if usable && count > 0 {
        if let (Some(p50), Some(p99)) = (hist_percentile(&merged, 50), hist_percentile(&merged, 99))
        {
            r.latency = Some(Latency {
                p50_us: p50,
                p99_us: p99,
                count,
                source: if windowed {
                    "merged histograms (window)".to_string()
                } else {
                    "merged histograms (since start)".to_string()
                },
            });
        }
    }
    if r.latency.is_none() {
        let p = |k: fn(&LatencySummary) -> u64| {
            stats1.iter().flatten().map(|s| k(&s.file.latency_us)).max()
        };
        let count = stats1
            .iter()
            .flatten()
            .map(|s| s.file.latency_us.count)
            .sum();
        if let (Some(p50), Some(p99)) = (p(|l| l.p50), p(|l| l.p99)) {
            r.latency = Some(Latency {
                p50_us: p50,
                p99_us: p99,
                count,
                source: "max of per-branch (buckets unusable), since start".to_string(),
            });
        } else {
            r.notes
                .push("no transfer latency in the stats files".to_string());
        }
    }

    // Snapshots completed inside the window: their completion times from the initiator's log,
    // their durations from its stats (µs); by id difference of the stats when the log has none.
    let durations = stats1
        .first()
        .and_then(Option::as_ref)
        .map(Stats::snapshots)
        .unwrap_or_default();
    let (t0, t1) = window.bounds();
    let logged: Vec<(Option<SystemTime>, u64, f64)> = completed_snapshots(log0);
    let mut ms: Vec<f64>;
    let source;
    if !logged.is_empty() {
        ms = logged
            .iter()
            .filter(|(t, _, _)| t.is_some_and(|t| t >= t0 && t <= t1))
            .map(|(_, id, log_ms)| durations.get(id).map_or(*log_ms, |us| *us as f64 / 1e3))
            .collect();
        source = "initiator stats, completed in the window (log times)";
    } else {
        let before = stats0
            .first()
            .and_then(Option::as_ref)
            .map(Stats::snapshots)
            .unwrap_or_default();
        ms = durations
            .iter()
            .filter(|(id, _)| !before.contains_key(id))
            .map(|(_, us)| *us as f64 / 1000.0)
            .collect();
        source = "initiator stats, new between the window-end reads";
    }
    snapshot_latency(&mut ms, window.seconds, source, r);
    let phase_ms = args.phase.as_secs_f64() * 1e3;
    if let (Some(sn), Some(_)) = (&r.snapshots, &r.overhead) {
        if sn.p50_ms > phase_ms / 4.0 {
            r.notes.push(format!(
                "snapshots take {:.0} ms (p50), a large part of a {phase_ms:.0} ms phase: they spill into the off phases, so the overhead is understated; try a longer --phase",
                sn.p50_ms
            ));
        }
    }
}

/// Snapshot latency of the snapshots that took `ms` each.
fn snapshot_latency(ms: &mut [f64], seconds: f64, source: &str, r: &mut RunResult) {
    if ms.is_empty() {
        r.notes
            .push("no snapshot completed inside the window".to_string());
        return;
    }
    ms.sort_by(f64::total_cmp);
    // Percentiles of the durations in whole µs (what the stats files hold; the logs' 0.1 ms
    // round-trips exactly), by the report's nearest rank.
    let us: Vec<u64> = ms.iter().map(|m| (m * 1e3).round() as u64).collect();
    let p = |p| percentile(&us, p).map_or(f64::NAN, |us| us as f64 / 1e3);
    r.snapshots = Some(SnapshotLatency {
        count: ms.len(),
        per_s: ms.len() as f64 / seconds.max(1e-9),
        p50_ms: p(50),
        p99_ms: p(99),
        mean_ms: ms.iter().sum::<f64>() / ms.len() as f64,
        max_ms: ms.last().copied().unwrap_or(f64::NAN),
        source: source.to_string(),
    });
}

/// Fallback without --stats-file: transfers/s from the status lines, snapshot latency from the
/// initiator's `complete in` lines inside the window.
pub fn from_logs(cluster: &Cluster, window: Window, r: &mut RunResult) {
    let (t0, t1) = window.bounds();
    let mut rate = 0.0;
    let mut total = 0;
    let mut spans = Vec::new();
    let mut complete = true;
    for i in 0..cluster.len() {
        let log = std::fs::read_to_string(cluster.log(i)).unwrap_or_default();
        let pts: Vec<(SystemTime, u64)> = status_sent(&log, cluster.addr(i))
            .into_iter()
            .filter(|(t, _)| *t >= t0 && *t <= t1)
            .collect();
        match (pts.first(), pts.last()) {
            (Some(a), Some(b)) if b.0 > a.0 => {
                let sent = b.1.saturating_sub(a.1);
                r.per_branch[i].transfers_sent_window = Some(sent);
                total += sent;
                spans.push(secs_between(a.0, b.0));
                rate += sent as f64 / secs_between(a.0, b.0);
            }
            _ => complete = false,
        }
    }
    if complete {
        r.throughput = Some(Throughput {
            transfers_per_s: rate,
            transfers: total,
            // Each branch's first to last status line inside the window, on average.
            seconds: spans.iter().sum::<f64>() / spans.len().max(1) as f64,
            source: "log status lines".to_string(),
            counters_transfers_per_s: None,
            phases: Vec::new(),
        });
    } else {
        r.failures
            .push("no throughput: too few status lines inside the window".to_string());
    }
    let log0 = std::fs::read_to_string(cluster.log(0)).unwrap_or_default();
    let mut ms: Vec<f64> = completed_snapshots(&log0)
        .into_iter()
        .filter(|(t, _, _)| t.is_some_and(|t| t >= t0 && t <= t1))
        .map(|(_, _, ms)| ms)
        .collect();
    snapshot_latency(&mut ms, window.seconds, "initiator log (window)", r);
    r.notes.push(
        "bank has no --stats-file: transfer latency, snapshot overhead and time to first transfer unavailable"
            .to_string(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The histogram's percentile is the report's percentile of the values it counts.
    #[test]
    fn histogram_percentile_is_the_reports_nearest_rank() {
        let hists: [&[(u64, u64)]; 5] = [
            &[(10, 1)],
            &[(10, 1), (20, 1)],
            &[(5, 3), (7, 0), (9, 96), (40, 1)],
            &[(1, 50), (2, 50)],
            &[(3, 7), (11, 13), (12, 1), (500, 179)],
        ];
        for h in hists {
            let map: BTreeMap<u64, u64> = h.iter().copied().collect();
            let values: Vec<u64> = h
                .iter()
                .flat_map(|&(v, c)| std::iter::repeat(v).take(c as usize))
                .collect();
            for p in [0, 1, 50, 90, 99, 100] {
                assert_eq!(
                    hist_percentile(&map, p),
                    percentile(&values, p),
                    "{h:?} p{p}"
                );
            }
        }
        assert_eq!(hist_percentile(&BTreeMap::new(), 50), None);
        assert_eq!(hist_percentile(&BTreeMap::from([(4, 0)]), 50), None);
    }
}
