//! `snapctl report` end to end: the report of a real 4-branch cluster with a `kill -9`ed and
//! restarted branch and a fault timeline, checked as HTML and rendered by headless Chromium
//! (Debian `chromium`). Without Chromium the rendering test skips
//! with a visible message outside CI and fails in CI (`CI` set), like the fault tests.

mod common;

use common::*;
use snapbank::hosts::HostList;
use snapbank::store::{Identity, SledStore};
use snapbank::types::BranchId;
use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const CHARTS: [&str; 5] = [
    "chart-balances",
    "chart-total",
    "chart-durations",
    "chart-rate",
    "chart-branch-rate",
];

/// The x tick labels of a chart.
fn x_ticks(svg: &str) -> Vec<&str> {
    svg.split("<text class=\"tick x\"")
        .skip(1)
        .filter_map(|t| t.split_once('>')?.1.split_once('<').map(|l| l.0))
        .collect()
}

/// `HH:MM:SS`, maybe with decimals.
fn is_clock_time(l: &str) -> bool {
    let b = l.as_bytes();
    b.len() >= 8
        && b[2] == b':'
        && b[5] == b':'
        && [0, 1, 3, 4, 6, 7].iter().all(|&i| b[i].is_ascii_digit())
        && (b.len() == 8 || (b[8] == b'.' && b[9..].iter().all(u8::is_ascii_digit)))
}

fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The part of `html` from `<svg id="{id}"` to its `</svg>`.
fn chart<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html
        .find(&format!("<svg id=\"{id}\""))
        .unwrap_or_else(|| panic!("no <svg id=\"{id}\"> in the page"));
    let len = html[start..]
        .find("</svg>")
        .unwrap_or_else(|| panic!("<svg id=\"{id}\"> is not closed"));
    &html[start..start + len]
}

/// Whether Debian's `chromium` runs here. Outside CI a missing browser skips the test with a
/// visible message; in CI (`CI` set) it fails the test.
fn chromium_available(test: &str) -> bool {
    let runs = Command::new("chromium")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if runs {
        return true;
    }
    let msg = format!("SKIPPED {test}: needs chromium (install Debian's chromium package)");
    if std::env::var_os("CI").is_some() {
        panic!("{msg}; CI must run it");
    }
    eprintln!("{msg}");
    false
}

/// Runs headless Chromium on `page` with `args` and a fresh profile under `dir`; returns its
/// standard output (written to a file, so a large DOM cannot block it).
fn chromium(dir: &Path, page: &Path, args: &[&str]) -> String {
    let profile = tempfile::tempdir_in(dir).expect("chromium profile dir");
    let out_path = profile.path().join("stdout");
    let err_path = profile.path().join("stderr");
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!(
            "--user-data-dir={}",
            profile.path().join("p").display()
        ))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("chromium stdout file"))
        .stderr(File::create(&err_path).expect("chromium stderr file"))
        .spawn()
        .expect("start chromium");
    let status = wait_timeout(&mut child, Duration::from_secs(90));
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("chromium did not finish in 90 s:\n{stderr}"));
    assert!(status.success(), "chromium {args:?}: {status}\n{stderr}");
    std::fs::read_to_string(&out_path).expect("read chromium's output")
}

/// Width and height from a PNG's IHDR chunk, or `None` if `bytes` is not a PNG.
fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.len() < 24 || &bytes[..8] != b"\x89PNG\r\n\x1a\n" || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let be =
        |i: usize| -> Option<u32> { Some(u32::from_be_bytes(bytes[i..i + 4].try_into().ok()?)) };
    Some((be(16)?, be(20)?))
}

/// Screenshots `page` at 1200×1600 into `png` and returns the file's bytes.
fn screenshot(dir: &Path, page: &Path, png: &Path) -> Vec<u8> {
    chromium(
        dir,
        page,
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1200,1600",
        ],
    );
    let bytes = std::fs::read(png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
    assert_eq!(
        png_size(&bytes),
        Some((1200, 1600)),
        "{} is a 1200×1600 PNG",
        png.display()
    );
    bytes
}

#[test]
fn report_of_a_four_branch_cluster_charts_it_and_renders_in_chromium() {
    let mut c = Cluster::new(
        4,
        &["--transfer-interval", "1ms", "--snapshot-interval", "80ms"],
    );
    c.start_all();
    assert!(
        c.wait_log(0, Duration::from_secs(30), |l| completed_snapshots(l).len()
            >= 10),
        "10 snapshots complete:\n{}",
        c.log(0)
    );
    // Branch 2 is killed and restarted: its store records the start with its time.
    let killed_at = std::time::SystemTime::now();
    c.kill9(2);
    sleep(400);
    c.start(2);
    let restarted_at = std::time::SystemTime::now();
    let done = completed_snapshots(&c.log(0)).len();
    assert!(
        c.wait_log(0, Duration::from_secs(30), |l| completed_snapshots(l).len()
            >= done + 5),
        "5 more snapshots complete after the restart:\n{}",
        c.log(0)
    );
    sleep(1000);
    c.stop_all();
    let (code, a) = c.audit();
    assert_eq!(code, 0, "{a:#}");

    let list = c.snapctl(&["snapshots", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&list.stdout).expect("snapshots JSON");
    let n = doc["completed"].as_array().expect("completed").len();
    assert!(n >= 10, "{doc:#}");

    // The fault timeline: the kill as chaos would write it, and a made-up partition.
    let faults = c.dir.path().join("faults.jsonl");
    let (k0, k1) = (unix_ms(killed_at), unix_ms(restarted_at));
    std::fs::write(
        &faults,
        format!(
            "{{\"kind\":\"kill\",\"branches\":[\"{}\"],\"start_ms\":{k0},\"end_ms\":{k1}}}\n\
             {{\"kind\":\"partition\",\"branches\":[\"{}\",\"{}\"],\"start_ms\":{},\"end_ms\":{}}}\n",
            c.addrs[2],
            c.addrs[0],
            c.addrs[1],
            k1 + 100,
            k1 + 300
        ),
    )
    .expect("write the faults file");
    let page = c.dir.path().join("report.html");
    let out = c.snapctl(&[
        "report",
        "--out",
        &page.display().to_string(),
        "--faults",
        &faults.display().to_string(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("money conserved in all {n} snapshots")),
        "{stdout}"
    );

    // The page: five charts, a line per branch, a point per snapshot, the verdict.
    let html = std::fs::read_to_string(&page).expect("read the report");
    assert_eq!(html.matches("<svg ").count(), 5, "five charts");
    for id in CHARTS {
        let svg = chart(&html, id);
        // Wall-clock time on x, the date in the axis label.
        let ticks = x_ticks(svg);
        assert!(ticks.len() >= 3, "{id}: {ticks:?}");
        assert!(ticks.iter().all(|l| is_clock_time(l)), "{id}: {ticks:?}");
        assert!(svg.contains("time (UTC) on 20"), "{id}: the date");
        // The restart from branch 2's start record; the two faults of the file.
        assert_eq!(svg.matches("class=\"band restart\"").count(), 1, "{id}");
        assert_eq!(svg.matches("class=\"band fault").count(), 2, "{id}");
        assert_eq!(svg.matches("class=\"band fault kill\"").count(), 1, "{id}");
    }
    assert!(chart(&html, "chart-durations").contains("log scale"));
    assert_eq!(
        chart(&html, "chart-branch-rate")
            .matches("class=\"series branch-rate\"")
            .count(),
        4
    );
    assert!(html.contains("1 kills (red, until the restart), 1 partitions"));
    let balances = chart(&html, "chart-balances");
    assert_eq!(balances.matches("class=\"series branch\"").count(), 4);
    for addr in &c.addrs {
        assert!(balances.contains(addr.as_str()), "legend names {addr}");
    }
    let total = chart(&html, "chart-total");
    assert_eq!(total.matches("class=\"point\"").count(), n);
    assert!(!total.contains("point bad"));
    assert!(
        total.contains("class=\"series reference\""),
        "expected total drawn"
    );
    assert_eq!(
        chart(&html, "chart-durations")
            .matches("class=\"point\"")
            .count(),
        n
    );
    assert_eq!(
        chart(&html, "chart-rate")
            .matches("class=\"point\"")
            .count(),
        n - 1
    );
    assert!(
        html.contains(&format!(
            "class=\"verdict ok\">Money conserved in all {n} snapshots"
        )),
        "verdict"
    );
    assert!(html.contains("4,000,000 (expected 4,000,000)"));
    assert!(html.contains("Not shown: the stores hold no time per transfer"));
    for resource in ["<script", "src=", "href=", "url(", "@import"] {
        assert!(!html.contains(resource), "self-contained: {resource}");
    }

    // A place that cannot be written: one line naming it, exit 2, nothing left behind.
    let nowhere = c.dir.path().join("no-such-dir").join("report.html");
    let out = c.snapctl(&["report", "--out", &nowhere.display().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&nowhere.display().to_string()), "{stderr}");

    // A malformed faults file, or none there: one line naming it, exit 2, no page.
    let bad = c.dir.path().join("bad-faults.jsonl");
    std::fs::write(
        &bad,
        "{\"kind\":\"kill\",\"start_ms\":1}\n{\"kind\":\"kill\"\n",
    )
    .expect("write");
    let other = c.dir.path().join("other.html");
    for (faults, says) in [
        (bad.clone(), "line 2"),
        (
            c.dir.path().join("no-faults.jsonl"),
            "cannot read the faults file",
        ),
    ] {
        let out = c.snapctl(&[
            "report",
            "--out",
            &other.display().to_string(),
            "--faults",
            &faults.display().to_string(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(&faults.display().to_string()), "{stderr}");
        assert!(
            stderr.contains(says) && stderr.contains("tools/chaos"),
            "{stderr}"
        );
        assert!(!other.exists(), "no page written");
    }

    let test = "report_of_a_four_branch_cluster_charts_it_and_renders_in_chromium";
    if !chromium_available(test) {
        return;
    }
    // Chromium parses it into the charts...
    let dom = chromium(c.dir.path(), &page, &["--dump-dom"]);
    for id in CHARTS {
        assert!(dom.contains(&format!("<svg id=\"{id}\"")), "DOM has {id}");
    }
    assert_eq!(
        dom.matches("class=\"series branch\"").count(),
        4,
        "DOM lines"
    );
    assert!(dom.contains(&format!("Money conserved in all {n} snapshots")));
    // ...and draws them: the screenshot is far from the near-empty PNG of a blank page.
    let blank = c.dir.path().join("blank.html");
    std::fs::write(&blank, "<!DOCTYPE html><html><body></body></html>").expect("blank page");
    let blank_png = screenshot(c.dir.path(), &blank, &c.dir.path().join("blank.png"));
    let shot = c.dir.path().join("report.png");
    let report_png = screenshot(c.dir.path(), &page, &shot);
    assert!(
        report_png.len() > 5 * blank_png.len(),
        "the report's screenshot ({} bytes) has much more in it than a blank page's ({} bytes)",
        report_png.len(),
        blank_png.len()
    );
}

#[test]
fn report_without_completed_snapshots_is_a_one_line_error() {
    // Stores of a cluster that never ran: no snapshot completed.
    let c = Cluster::new(2, &[]);
    let hosts = HostList::load(&c.hosts()).expect("host.list");
    for i in 0..2 {
        let identity = Identity::new(&hosts, BranchId(i as u16), 1_000_000);
        drop(SledStore::open(&c.store_dir(i), Some(&identity)).expect("create a store"));
    }
    let page = c.dir.path().join("report.html");
    let out = c.snapctl(&["report", "--out", &page.display().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no completed snapshots"), "{stderr}");
    assert!(!page.exists(), "no page written");

    // A data directory that is not there: one line naming it.
    let missing = c.dir.path().join("nothing-here");
    let out = Command::new(SNAPCTL)
        .args(["report", "--out"])
        .arg(&page)
        .arg("--data-dir")
        .arg(&missing)
        .output()
        .expect("run snapctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
}

/// `snapctl report --live` charts a running cluster from its initiator's latest completed
/// snapshots over the control channel (its stores are locked by the branches), says that
/// restarts are not drawn, and is refused with one line when nothing is reachable.
#[test]
fn report_live_charts_a_running_cluster() {
    let mut c = Cluster::new(
        3,
        &[
            "--transfer-interval",
            "1ms..3ms",
            "--snapshot-interval",
            "150ms",
        ],
    );
    c.start_all();
    let page = c.dir.path().join("live.html");
    let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let out = loop {
        let out = c.snapctl(&[
            "report",
            "--live",
            "--snapshots",
            "5",
            "--out",
            &page.display().to_string(),
        ]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() && text.contains(": 5 completed snapshots") {
            break out;
        }
        assert!(
            std::time::Instant::now() < end,
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        sleep(200);
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("money conserved in all 5 snapshots"),
        "{text}"
    );
    let html = std::fs::read_to_string(&page).expect("page");
    assert!(
        html.contains("Made from the running cluster"),
        "the live note"
    );
    for id in CHARTS {
        let svg = chart(&html, id);
        assert!(x_ticks(svg).iter().all(|l| is_clock_time(l)), "{id}");
    }
    c.stop_all();
    // Nobody answers now: one line, exit 2, no page.
    let gone = c.dir.path().join("gone.html");
    let out = c.snapctl(&[
        "report",
        "--live",
        "--timeout",
        "1s",
        "--out",
        &gone.display().to_string(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("report --live"), "{err}");
    assert!(!gone.exists());
}
