//! The self-contained HTML page: summary, verdict, what is shaded, the five charts with their
//! captions, the table of the last snapshot, transfer latency, inline CSS; no script and nothing
//! loaded from elsewhere.

use super::chart::{clock_time, esc, group_digits};
use super::faults::FaultKind;
use super::figures::ms;
use super::Report;
use crate::types::Micros;
use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

/// The whole page: HTML with inline CSS and SVG, nothing loaded from elsewhere.
pub(super) fn html(r: &Report) -> String {
    let first = &r.snapshots[0];
    let last = &r.snapshots[r.snapshots.len() - 1];
    let n = r.snapshots.len();
    let mut h = String::new();
    let epoch = if r.epochs.is_empty() {
        String::new()
    } else {
        format!("epoch {} · ", r.epoch)
    };
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    h.push_str("<title>snapbank report</title>\n<style>\n");
    h.push_str(CSS);
    h.push_str("</style>\n</head>\n<body>\n<h1>snapbank report</h1>\n");
    let _ = writeln!(
        h,
        "<p class=\"summary\">{epoch}{} branches (initiator {}) · {n} completed snapshot{} \
         (ids {}–{}) · {} to {}</p>",
        r.branches.len(),
        esc(r.branches.get(r.initiator).map_or("?", |s| s.as_str())),
        if n == 1 { "" } else { "s" },
        first.id,
        last.id,
        rfc3339(first.started_at),
        rfc3339(last.completed_at),
    );
    let ok = r.unconserved().is_empty();
    let _ = writeln!(
        h,
        "<p id=\"verdict\" class=\"verdict {}\">{}</p>",
        if ok { "ok" } else { "bad" },
        esc(&capitalize(&r.verdict()))
    );
    let _ = writeln!(
        h,
        "<p id=\"timeline\" class=\"timeline\">{}</p>",
        esc(&timeline_text(r))
    );
    let charts = [
        (r.balances_chart(), balances_caption(r)),
        (r.total_chart(), total_caption(r)),
        (r.durations_chart(), durations_caption(r)),
        (r.rate_chart(), rate_caption(r)),
        (r.branch_rate_chart(), branch_rate_caption(r)),
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
    section_last(r, &mut h);
    section_epochs(r, &mut h);
    section_latency(r, &mut h);
    let _ = writeln!(
        h,
        "<footer>Made by <code>snapctl report</code> from the stores under {}.</footer>",
        esc(&r.source)
    );
    h.push_str("</body>\n</html>\n");
    h
}

/// A table of each branch's figures at the last snapshot, with the exact total.
fn section_last(r: &Report, h: &mut String) {
    let last = &r.snapshots[r.snapshots.len() - 1];
    let _ = writeln!(
        h,
        "<section>\n<h2>At the last snapshot ({})</h2>\n<table id=\"last-snapshot\">\n\
         <tr><th>branch</th><th>balance</th><th>in flight towards it</th><th>money</th></tr>",
        last.id
    );
    for (b, name) in r.branches.iter().enumerate() {
        let bal = last.balances.get(b).copied().flatten();
        let money = last.money.get(b).copied().flatten();
        let cell = |v: Option<u128>| v.map_or("–".to_string(), |v| group_digits(&v.to_string()));
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

/// A table of the data directory's epochs (after a `snapctl reshape`), the charted one marked.
fn section_epochs(r: &Report, h: &mut String) {
    if r.epochs.is_empty() {
        return;
    }
    h.push_str(
        "<section>\n<h2>Epochs</h2>\n<table id=\"epochs\">\n<tr><th>epoch</th><th>stores</th>\
         <th>branches</th><th>expected total</th><th>began from</th><th>snapshots</th>\
         <th>conserved</th></tr>\n",
    );
    for e in &r.epochs {
        let conserved = match e.conserved {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "–",
        };
        let _ = writeln!(
            h,
            "<tr{}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if e.epoch == r.epoch { " class=\"charted\"" } else { "" },
            e.epoch,
            e.stores,
            esc(&e.branches.join(" ")),
            group_digits(&e.expected_total.to_string()),
            esc(&e.began_text()),
            esc(&e.snapshots_text()),
            conserved
        );
    }
    let _ = writeln!(
        h,
        "</table>\n<p class=\"caption\">The charts show epoch {}; <code>snapctl report --epoch E</code> \
         charts a retired one, <code>snapctl audit</code> checks every epoch and each boundary.</p>\n</section>",
        r.epoch
    );
}

/// What the x axis is and what the bands mean.
fn timeline_text(r: &Report) -> String {
    let mut t = format!(
        "Every chart runs on UTC clock time; a line breaks where no snapshot completed for \
         more than {:.1} s. ",
        r.gap_us() as f64 / 1e6
    );
    match &r.faults_source {
        Some(src) => {
            let count = |k: FaultKind| r.faults.iter().filter(|f| f.kind == k).count();
            let _ = write!(
                t,
                "Shaded from the fault timeline {src}: {} kills (red, until the restart), {} \
                 partitions (orange, until the heal)",
                count(FaultKind::Kill),
                count(FaultKind::Partition)
            );
            let instants = count(FaultKind::Restart) + count(FaultKind::Heal);
            if instants > 0 {
                let _ = write!(t, ", {instants} restarts and heals (thin bands)");
            }
            t.push_str(". ");
        }
        None => t.push_str(
            "No fault timeline given (snapctl report --faults FILE shades what tools/chaos did). ",
        ),
    }
    let (shown, outside) = r.restarts_shown();
    let _ = write!(
        t,
        "Purple lines: {} restart{} from the stores' start records",
        shown.len(),
        if shown.len() == 1 { "" } else { "s" }
    );
    if outside > 0 {
        let _ = write!(t, " ({outside} more outside this time span)");
    }
    t.push('.');
    if r.live {
        t.push_str(
            " Made from the running cluster: restarts are not drawn (the branches hold their \
             stores; run the report again on the stopped cluster to see them).",
        );
    }
    if r.restarts_unrecorded {
        t.push_str(
            " Some stores counted starts before they recorded their times (older builds): \
             those restarts are not drawn.",
        );
    }
    t
}

/// Transfer latency from the stats files, or why there is none.
fn section_latency(r: &Report, h: &mut String) {
    h.push_str("<section>\n<h2>Transfer latency</h2>\n");
    let Some(l) = &r.latency else {
        h.push_str(
            "<p id=\"latency\" class=\"caption\">Not shown: the stores hold no time per \
             transfer (a debit and the acknowledgement covering it are committed without \
             timestamps), so a stopped cluster's stores cannot tell latency. Run the branches \
             with <code>bank --stats-file DIR/NAME.json</code> and give \
             <code>snapctl report --stats DIR</code>.</p>\n</section>\n",
        );
        return;
    };
    let us = |v: u64| ms(v);
    let _ = writeln!(
        h,
        "<table id=\"latency\">\n<tr><th>branch</th><th>process (file)</th><th>last written</th>\
         <th>uptime</th><th>transfers measured</th><th>p50</th><th>p90</th><th>p99</th>\
         <th>p99.9</th><th>max</th></tr>"
    );
    for p in &l.processes {
        let q = &p.stats.latency_us;
        // A process that measured nothing has no percentiles (its summary says 0).
        let us = |v: u64| {
            if q.count == 0 {
                "–".to_string()
            } else {
                ms(v)
            }
        };
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>pid {} ({})</td><td>{}</td><td>{:.1} s</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&p.stats.branch),
            p.stats.pid,
            esc(&p.file),
            p.written_at
                .map_or("?".into(), |t| clock_time(t as f64 / 1e6, 1)),
            p.stats.uptime_s,
            group_digits(&q.count.to_string()),
            us(q.p50),
            us(q.p90),
            us(q.p99),
            us(q.p999),
            us(q.max)
        );
    }
    let merged = l.merged();
    let cell = |i: usize| merged.map_or("–".to_string(), |m| us(m[i]));
    let _ = writeln!(
        h,
        "<tr class=\"sum\"><td>all</td><td>{} files</td><td></td><td></td><td>{}</td><td>{}</td>\
         <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n</table>",
        l.processes.len(),
        group_digits(&l.count().to_string()),
        cell(0),
        cell(1),
        cell(2),
        cell(3),
        cell(4)
    );
    let _ = writeln!(
        h,
        "<p class=\"caption\">From a debit being durable to the acknowledgement that covers it, \
         as each bank process measured it over its lifetime (one row per --stats-file in {}; a \
         process killed with SIGKILL keeps what it last wrote, every --status-interval). The \
         last row merges the histograms' buckets, so its percentiles are bucket upper bounds \
         (2 significant digits).</p>\n</section>",
        esc(&l.source)
    );
}

/// The caption under `chart-balances`.
fn balances_caption(r: &Report) -> String {
    let last = &r.snapshots[r.snapshots.len() - 1];
    format!(
        "The balance each branch recorded at its cut of each completed snapshot, at the cut's \
         time (the mean of the branches' recording times). These \
         lines alone need not add up to the total: money in flight on a channel at the cut \
         ({} units at snapshot {}) is recorded with the channel, in no balance. Balance \
         plus the money in flight towards each branch is what makes the total below flat.",
        group_digits(&last.in_flight().to_string()),
        last.id
    )
}

/// The caption under `chart-total`.
fn total_caption(r: &Report) -> String {
    let expected_text = {
        let mut e: Vec<u128> = r.snapshots.iter().map(|s| s.expected_total).collect();
        e.dedup();
        e.iter()
            .map(|v| group_digits(&v.to_string()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "Σ over branches of (balance + money recorded in flight towards it) at each \
         snapshot, against the expected total {expected_text} (branches × initial \
         balance, dashed). A flat line on the dashed one is the proof that no money was \
         lost or created. {}.",
        capitalize(&r.verdict())
    )
}

/// The caption under `chart-durations`.
fn durations_caption(r: &Report) -> String {
    let st = r.duration_stats();
    format!(
        "From the initiator starting a snapshot to it holding every branch's part, plotted at \
         the start, on a logarithmic axis (each decade the same height, so p50 stays readable \
         under the slowest). Over {} snapshots: p50 {}, p99 {}, max {} (snapshot {}).",
        r.snapshots.len(),
        ms(st.p50_us),
        ms(st.p99_us),
        ms(st.max_us),
        st.max_id
    )
}

/// The caption under `chart-rate`.
fn rate_caption(r: &Report) -> String {
    let mut text = String::from(
        "Transfers sent by all branches between the cuts of consecutive completed snapshots \
         (the growth of Σ last sequence numbers on every outgoing channel at the cut) divided \
         by the time between the two cuts (each cut's time: the mean of the times its parts \
         were recorded), plotted at the later cut. The time between the snapshots' starts \
         would overstate it when a snapshot starts right after a slow one. ",
    );
    if r.rates.is_empty() {
        text.push_str("No interval to measure: this needs two completed snapshots.");
    } else {
        let transfers: u128 = r.rates.iter().map(|q| q.transfers).sum();
        let us: u64 = r.rates.iter().map(|q| q.interval_us).sum();
        let max = r.rates.iter().map(|q| q.per_sec).fold(0.0, f64::max);
        let _ = write!(
            text,
            "Over {} intervals: {} transfers in {:.1} s, {}/s on average, at most {}/s.",
            r.rates.len(),
            group_digits(&transfers.to_string()),
            us as f64 / 1e6,
            group_digits(&format!("{:.0}", transfers as f64 / (us as f64 / 1e6))),
            group_digits(&format!("{max:.0}")),
        );
    }
    if r.rates_skipped > 0 {
        let _ = write!(
            text,
            " {} interval{} without a rate (no time passed or fewer transfers counted, as \
             across a restore).",
            r.rates_skipped,
            if r.rates_skipped == 1 { "" } else { "s" }
        );
    }
    text
}

/// The caption under `chart-branch-rate`.
fn branch_rate_caption(r: &Report) -> String {
    let mut text = String::from(
        "The same rate per branch: the growth of Σ last sequence numbers on the branch's own \
         outgoing channels between its parts of consecutive snapshots, over the time between \
         the cuts. A branch that is down or cut off sends nothing and drops to 0.",
    );
    if let Some(slowest) = (0..r.branches.len())
        .filter_map(|b| {
            let v: Vec<f64> = r
                .rates
                .iter()
                .filter_map(|q| q.per_branch.get(b).copied().flatten())
                .collect();
            (!v.is_empty()).then(|| (b, v.iter().sum::<f64>() / v.len() as f64))
        })
        .min_by(|a, b| a.1.total_cmp(&b.1))
    {
        let _ = write!(
            text,
            " Lowest mean: {} at {}/s.",
            r.branches[slowest.0],
            group_digits(&format!("{:.0}", slowest.1))
        );
    }
    text
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
svg .band{fill-opacity:.16}
svg .band.restart,svg .band.fault.restart,svg .band.fault.heal{fill-opacity:.75}
svg .swatch{fill-opacity:.35}
.timeline{color:#444;font-size:13px;margin:8px 0 0;max-width:960px}
code{font-size:12px}
svg .series.reference{stroke-width:1.2;stroke-dasharray:6 4}
svg .point.bad{fill:#d62728;stroke:#d62728}
svg .no-data{fill:#888;font-size:14px}
table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}
tr.sum td{font-weight:bold}
tr.charted td{background:#eef3ff}
footer{margin-top:24px;color:#777;font-size:12px}
";

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn rfc3339(us: Micros) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_micros(us)).to_string()
}

#[cfg(test)]
mod tests {
    use crate::report::fixtures::*;
    use crate::report::{parse_faults, Restart, LEGEND_MAX};
    use crate::snapshot::GlobalSnapshot;

    /// The x tick labels of one chart.
    fn x_ticks(svg: &str) -> Vec<&str> {
        svg.split("<text class=\"tick x\"")
            .skip(1)
            .filter_map(|t| t.split_once('>')?.1.split_once('<').map(|l| l.0))
            .collect()
    }

    /// Whether `l` is a clock time `HH:MM:SS` (maybe with decimals).
    fn is_clock_time(l: &str) -> bool {
        let b = l.as_bytes();
        b.len() >= 8
            && b[2] == b':'
            && b[5] == b':'
            && [0, 1, 3, 4, 6, 7].iter().all(|&i| b[i].is_ascii_digit())
            && (b.len() == 8 || (b[8] == b'.' && b[9..].iter().all(u8::is_ascii_digit)))
    }

    /// Snapshots every 200 ms for 10 s, none from 4 s to 8 s (an outage).
    fn with_outage() -> Vec<GlobalSnapshot> {
        (0..50u64)
            .filter(|i| !(20..40).contains(i))
            .map(|i| global(i + 1, i * 200, 5 + i % 7, &[1000; 4], 0, i * 10))
            .collect()
    }

    #[test]
    fn the_x_axis_is_clock_time_and_an_outage_is_a_gap() {
        let html = report(&with_outage()).html();
        for id in [
            "chart-balances",
            "chart-total",
            "chart-durations",
            "chart-rate",
            "chart-branch-rate",
        ] {
            let chart = svg(&html, id);
            let ticks = x_ticks(chart);
            assert!(ticks.len() >= 4, "{id}: {ticks:?}");
            assert!(ticks.iter().all(|l| is_clock_time(l)), "{id}: {ticks:?}");
            assert!(chart.contains("time (UTC) on 2023-11-14"), "{id}: the date");
            assert!(!chart.contains("snapshot id"), "{id}");
        }
        // 22:13:20 + 0..10 s: whole seconds.
        assert_eq!(x_ticks(svg(&html, "chart-total"))[0], "22:13:20");
        // Each branch's line is two pieces: the outage is not bridged.
        let balances = svg(&html, "chart-balances");
        let d = balances
            .split("class=\"series branch\"")
            .nth(1)
            .and_then(|p| p.split(" d=\"").nth(1))
            .and_then(|p| p.split('"').next())
            .expect("a path");
        assert_eq!(d.matches('M').count(), 2, "{d}");
        assert!(html.contains("more than 1.0 s"));
    }

    #[test]
    fn durations_are_on_a_log_axis() {
        let html = report(&with_outage()).html();
        let chart = svg(&html, "chart-durations");
        assert!(chart.contains("duration (ms, log scale)"));
        // 5..11 ms: the decade ticks 1 and 10 and 100 with 2 and 5 between.
        let y_ticks: Vec<&str> = chart
            .split("<text class=\"tick y\"")
            .skip(1)
            .filter_map(|t| t.split_once('>')?.1.split_once('<').map(|l| l.0))
            .collect();
        assert_eq!(y_ticks, ["1", "2", "5", "10", "20", "50", "100"]);
        assert!(html.contains("logarithmic axis"));
    }

    #[test]
    fn restarts_and_faults_are_shaded_bands() {
        let mut r = report(&with_outage());
        // A restart of branch 2 at 5 s (in the outage), one long before the snapshots.
        r.restarts = vec![
            Restart {
                branch: 2,
                n: 1,
                at: EPOCH_US - 3_600_000_000,
            },
            Restart {
                branch: 2,
                n: 2,
                at: EPOCH_US + 5_000_000,
            },
        ];
        let t = |ms: u64| 1_700_000_000_000 + ms;
        r.faults = parse_faults(&format!(
            "{{\"kind\":\"kill\",\"branches\":[\"127.0.0.1:8002\"],\"start_ms\":{},\"end_ms\":{}}}\n\
             {{\"kind\":\"partition\",\"branches\":[\"127.0.0.1:8000\",\"127.0.0.1:8001\"],\"start_ms\":{},\"end_ms\":{}}}\n\
             {{\"kind\":\"heal\",\"start_ms\":{}}}\n",
            t(4000),
            t(5000),
            t(6000),
            t(7500),
            t(7500)
        ))
        .expect("faults");
        r.faults_source = Some("faults.jsonl".into());
        let html = r.html();
        for id in ["chart-balances", "chart-durations", "chart-branch-rate"] {
            let chart = svg(&html, id);
            assert_eq!(chart.matches("class=\"band fault").count(), 3, "{id}");
            assert_eq!(chart.matches("class=\"band fault kill\"").count(), 1);
            assert_eq!(chart.matches("class=\"band fault partition\"").count(), 1);
            assert_eq!(chart.matches("class=\"band restart\"").count(), 1, "{id}");
            assert!(chart.contains("killed until restarted"), "{id}: legend");
            assert!(chart.contains("kill 127.0.0.1:8002: 22:13:24.0 → 22:13:25.0 (1.0 s)"));
        }
        // The kill band spans 1 s of the 10 s axis: about a tenth of the plot's width.
        let chart = svg(&html, "chart-total");
        let kill = chart
            .split("class=\"band fault kill\"")
            .nth(1)
            .expect("kill band");
        let width: f64 = kill
            .split("width=\"")
            .nth(1)
            .and_then(|w| w.split('"').next())
            .and_then(|w| w.parse().ok())
            .expect("width");
        assert!((70.0..110.0).contains(&width), "{width}");
        assert!(html.contains("1 kills (red, until the restart), 1 partitions"));
        assert!(html.contains("Purple lines: 1 restart from the stores"));
        assert!(html.contains("(1 more outside this time span)"));
    }

    #[test]
    fn html_has_five_charts_with_a_line_per_branch() {
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
        assert_eq!(html.matches("<svg ").count(), 5);
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
        assert_eq!(html.matches("<svg ").count(), 5);
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
}
