//! The self-contained HTML page: summary, verdict, the four charts with their captions, the
//! table of the last snapshot, inline CSS; no script and nothing loaded from elsewhere.

use super::chart::{esc, group_digits};
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
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    h.push_str("<title>snapbank report</title>\n<style>\n");
    h.push_str(CSS);
    h.push_str("</style>\n</head>\n<body>\n<h1>snapbank report</h1>\n");
    let _ = writeln!(
        h,
        "<p class=\"summary\">{} branches (initiator {}) · {n} completed snapshot{} \
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
    let charts = [
        (r.balances_chart(), balances_caption(r)),
        (r.total_chart(), total_caption(r)),
        (r.durations_chart(), durations_caption(r)),
        (r.rate_chart(), rate_caption(r)),
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

/// The caption under `chart-balances`.
fn balances_caption(r: &Report) -> String {
    let last = &r.snapshots[r.snapshots.len() - 1];
    format!(
        "The balance each branch recorded at its cut of each completed snapshot. These \
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
        "From the initiator starting a snapshot to it holding every branch's part. Over {} \
         snapshots: p50 {}, p99 {}, max {} (snapshot {}).",
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
        "Transfers sent by all branches between consecutive completed snapshots (the growth \
         of Σ last sequence numbers on every channel at the cuts), divided by the time between \
         the two snapshots' starts; plotted at the later snapshot. ",
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
    use crate::report::LEGEND_MAX;
    use crate::snapshot::GlobalSnapshot;

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
}
