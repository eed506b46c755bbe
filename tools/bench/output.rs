//! What bench prints: a table per run and the summary table.

use crate::results::{BranchResult, Report, RunResult};

fn f(x: Option<f64>, decimals: usize) -> String {
    match x {
        Some(x) if x.is_finite() => format!("{x:.decimals$}"),
        _ => "-".to_string(),
    }
}

fn mib(x: f64) -> f64 {
    x / (1024.0 * 1024.0)
}

/// " (max: ADDR)" naming the branch with the largest `key`, the initiator as such.
fn which_max(r: &RunResult, key: impl Fn(&BranchResult) -> u64) -> String {
    r.per_branch
        .iter()
        .enumerate()
        .max_by_key(|(_, b)| key(b))
        .map(|(i, b)| {
            let role = match i {
                0 => ", the initiator",
                1 => ", restarted",
                _ => "",
            };
            format!("  (max: {}{role})", b.addr)
        })
        .unwrap_or_default()
}

pub fn print_run(r: &RunResult) {
    let mut rows: Vec<(String, String)> = Vec::new();
    if let Some(w) = r.warmup_s {
        rows.push(("warm-up (to first snapshot)".into(), format!("{w:.1} s")));
    }
    match &r.throughput {
        Some(t) => {
            let mut v = format!(
                "{:.0}  ({} transfers in {:.1} s, {}",
                t.transfers_per_s, t.transfers, t.seconds, t.source
            );
            if let Some(c) = t.counters_transfers_per_s {
                if t.source != "stats counters" {
                    v.push_str(&format!("; counters say {c:.0}"));
                }
            }
            v.push(')');
            rows.push(("transfers/s (cluster)".into(), v));
            rows.push((
                "transfers/s per branch".into(),
                format!("{:.0}", t.transfers_per_s / r.branches as f64),
            ));
        }
        None => rows.push(("transfers/s (cluster)".into(), "unavailable".into())),
    }
    rows.push((
        "transfer latency p50 / p99".into(),
        match &r.latency {
            Some(l) => format!(
                "{:.2} ms / {:.2} ms  ({} transfers, {})",
                l.p50_us as f64 / 1e3,
                l.p99_us as f64 / 1e3,
                l.count,
                l.source
            ),
            None => "unavailable".into(),
        },
    ));
    rows.push((
        "snapshot latency p50 / p99".into(),
        match &r.snapshots {
            Some(s) => format!(
                "{:.1} ms / {:.1} ms  ({} snapshots, {:.1}/s, max {:.1} ms, {})",
                s.p50_ms, s.p99_ms, s.count, s.per_s, s.max_ms, s.source
            ),
            None => "unavailable".into(),
        },
    ));
    rows.push((
        "snapshot overhead (on/off)".into(),
        match &r.overhead {
            Some(o) => format!(
                "{:.3}  (on {:.0}/s in {} phases, off {:.0}/s in {} phases)",
                o.ratio, o.on_transfers_per_s, o.on_phases, o.off_transfers_per_s, o.off_phases
            ),
            None => "unavailable".into(),
        },
    ));
    rows.push((
        "recovery after kill -9".into(),
        match &r.recovery {
            Some(rc) => format!(
                "{}: store open {} ms, mesh up {} ms, first transfer {} ms (observed {} ms)",
                rc.branch,
                f(rc.store_open_ms, 1),
                f(rc.mesh_up_ms, 1),
                f(rc.first_transfer_ms, 1),
                f(rc.observed_ms, 0)
            ),
            None => "unavailable".into(),
        },
    ));
    rows.push((
        "mesh up after the last start".into(),
        format!("{} ms", f(r.mesh_up_ms, 0)),
    ));
    if let Some(c) = &r.cpu {
        rows.push((
            "CPU (window)".into(),
            format!(
                "{:.2} cores, {} µs per transfer, at most {} threads per branch",
                c.cores,
                f(c.us_per_transfer, 2),
                c.threads_max.map_or("-".to_string(), |t| t.to_string())
            ),
        ));
    }
    if let Some(s) = r.peak_rss_kb {
        rows.push((
            "peak RSS per branch".into(),
            format!(
                "min {:.1} / mean {:.1} / max {:.1} MiB{}",
                s.min / 1024.0,
                s.mean / 1024.0,
                s.max / 1024.0,
                which_max(r, |b| b.peak_rss_kb.unwrap_or(0))
            ),
        ));
    }
    if let Some(s) = r.store_bytes {
        rows.push((
            "store per branch".into(),
            format!(
                "min {:.1} / mean {:.1} / max {:.1} MiB{}",
                mib(s.min),
                mib(s.mean),
                mib(s.max),
                which_max(r, |b| b.store_bytes)
            ),
        ));
    }
    rows.push((
        "audit".into(),
        match &r.audit {
            Some(a) if a.consistent => format!(
                "CONSISTENT ({} transfers, {} snapshots checked, {} pending)",
                a.transfers, a.snapshots_checked, a.snapshots_pending
            ),
            Some(a) => format!(
                "INCONSISTENT: {}",
                a.violations
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            None => "not run".into(),
        },
    ));
    let (w, e) = r
        .per_branch
        .iter()
        .fold((0, 0), |(w, e), b| (w + b.log_warnings, e + b.log_errors));
    rows.push(("log warnings / errors".into(), format!("{w} / {e}")));
    rows.push((
        "verdict".into(),
        if r.ok {
            "OK".to_string()
        } else {
            format!("FAILED: {}", r.failures.join("; "))
        },
    ));
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(10);
    println!("\n== N = {} ({})", r.branches, r.dir);
    for (k, v) in rows {
        println!("  {k:<width$}  {v}");
    }
    for note in &r.notes {
        println!("  note: {note}");
    }
}

pub fn print_summary(report: &Report) {
    println!("\n== summary");
    let head = [
        "N", "tx/s", "lat p50", "lat p99", "snap p50", "snap p99", "overhead", "mesh", "open",
        "first tx", "CPU/tx", "RSS max", "store", "audit",
    ];
    let mut rows: Vec<Vec<String>> = vec![head.iter().map(|s| s.to_string()).collect()];
    rows.push(
        [
            "", "", "ms", "ms", "ms", "ms", "on/off", "ms", "ms", "ms", "µs", "MiB", "MiB/br", "",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    );
    for r in &report.runs {
        rows.push(vec![
            r.branches.to_string(),
            f(r.throughput.as_ref().map(|t| t.transfers_per_s), 0),
            f(r.latency.as_ref().map(|l| l.p50_us as f64 / 1e3), 2),
            f(r.latency.as_ref().map(|l| l.p99_us as f64 / 1e3), 2),
            f(r.snapshots.as_ref().map(|s| s.p50_ms), 1),
            f(r.snapshots.as_ref().map(|s| s.p99_ms), 1),
            f(r.overhead.as_ref().map(|o| o.ratio), 3),
            f(r.mesh_up_ms, 0),
            f(r.recovery.as_ref().and_then(|x| x.store_open_ms), 1),
            f(r.recovery.as_ref().and_then(|x| x.first_transfer_ms), 1),
            f(r.cpu.as_ref().and_then(|c| c.us_per_transfer), 2),
            f(r.peak_rss_kb.map(|s| s.max / 1024.0), 1),
            f(r.store_bytes.map(|s| mib(s.mean)), 1),
            match (&r.audit, r.ok) {
                (Some(a), true) if a.consistent => "OK".to_string(),
                (Some(a), false) if a.consistent => "consistent, run FAILED".to_string(),
                (Some(_), _) => "INCONSISTENT".to_string(),
                (None, _) => "FAILED".to_string(),
            },
        ]);
    }
    let cols = head.len();
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, v)| {
                if c == cols - 1 {
                    v.clone()
                } else {
                    format!("{v:>w$}", w = widths[c])
                }
            })
            .collect();
        println!("  {}", line.join("  "));
    }
}
