//! `bank --metrics ADDR`: real branches' Prometheus endpoints scraped over plain HTTP/1.1, across
//! a `kill -9` and restart; bad `--metrics` values refused; no extra port without the flag.

mod common;

use common::*;
use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MAX_AMOUNT: u64 = 100;
const ARGS: &[&str] = &[
    "--transfer-interval",
    "1ms..3ms",
    "--snapshot-interval",
    "200ms",
    "--max-amount",
    "100",
];
const BRANCHES: usize = 4;
const GENESIS_TOTAL: f64 = 1_000_000.0 * BRANCHES as f64;

/// One scrape: the response's content type and body, and every sample by its series
/// (`name{labels}`).
struct Scrape {
    content_type: String,
    body: String,
    series: BTreeMap<String, f64>,
}

impl Scrape {
    /// The value of the one series named `name` whose labels contain `label` (may be empty).
    fn get(&self, name: &str, label: &str) -> f64 {
        let found: Vec<f64> = self
            .series
            .iter()
            .filter(|(k, _)| k.split('{').next() == Some(name) && k.contains(label))
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one series {name} with {label:?} in:\n{}",
            self.body
        );
        found[0]
    }
}

/// `GET /metrics` from `addr` (with an `Accept` header if given), over a plain TcpStream.
fn scrape_with(addr: &str, accept: Option<&str>) -> Result<Scrape, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )
    .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {raw:?}"))?;
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("status {status:?}"));
    }
    let content_type = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let series = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l
                .rsplit_once(' ')
                .ok_or_else(|| format!("sample line {l:?}"))?;
            let v: f64 = v.parse().map_err(|_| format!("sample value in {l:?}"))?;
            Ok((k.to_string(), v))
        })
        .collect::<Result<_, String>>()?;
    Ok(Scrape {
        content_type,
        body: body.to_string(),
        series,
    })
}

fn scrape(addr: &str) -> Scrape {
    scrape_with(addr, None).unwrap_or_else(|e| panic!("scrape {addr}: {e}"))
}

/// Scrapes `addr` until `pred` holds; the scrape that satisfied it.
fn scrape_until(
    addr: &str,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&Scrape) -> bool,
) -> Scrape {
    let end = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < end {
        match scrape_with(addr, None) {
            Ok(s) if pred(&s) => return s,
            Ok(s) => last = s.body,
            Err(e) => last = e,
        }
        sleep(100);
    }
    panic!("{addr}: {what} within {timeout:?}; last scrape:\n{last}");
}

/// TCP ports process `pid` listens on (from /proc: its socket inodes in LISTEN state).
fn listening_ports(pid: i32) -> Vec<u16> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read the process's fds")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|t| {
            let t = t.to_string_lossy().into_owned();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                let port = f[1].rsplit(':').next().unwrap_or_default();
                ports.push(u16::from_str_radix(port, 16).expect("hex port"));
            }
        }
    }
    ports.sort_unstable();
    ports
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port")
}

/// The "must show": the metrics endpoint of a real 4-branch cluster scraped, its figures
/// consistent with each other and with the money, and a restart counted.
#[test]
fn metrics_endpoints_are_scraped_across_a_kill9_restart() {
    let mut c = Cluster::new(BRANCHES, ARGS);
    let at = metrics_addrs(&c, BRANCHES);
    for (i, a) in at.iter().enumerate() {
        start_with_metrics(&mut c, i, a);
    }
    // Every link up everywhere, and the initiator has completed snapshots.
    for a in &at {
        scrape_until(a, Duration::from_secs(30), "all links up", |s| {
            s.get("snapbank_links_up", "") == (BRANCHES - 1) as f64
        });
    }
    scrape_until(
        &at[0],
        Duration::from_secs(30),
        "2 snapshots complete",
        |s| s.get("snapbank_snapshots_completed_total", "") >= 2.0,
    );

    // The format: Prometheus text by default, OpenMetrics when asked for.
    let plain = scrape(&at[1]);
    assert!(
        plain.content_type.starts_with("text/plain; version=0.0.4"),
        "{}",
        plain.content_type
    );
    assert!(plain
        .body
        .contains("# TYPE snapbank_transfers_sent_total counter"));
    let om = scrape_with(&at[1], Some("application/openmetrics-text; version=1.0.0"))
        .expect("OpenMetrics scrape");
    assert!(
        om.content_type.starts_with("application/openmetrics-text"),
        "{}",
        om.content_type
    );
    assert!(om.body.ends_with("# EOF\n"), "{}", om.body);

    // Three rounds over all branches: round B's balances are checked, rounds A and C bound the
    // money that moved while round B was taken (scrapes of different branches are not one cut).
    let round = || at.iter().map(|a| scrape(a)).collect::<Vec<_>>();
    let (ra, rb, rc) = (round(), round(), round());
    let moved: f64 = (0..BRANCHES)
        .map(|i| {
            let d = |s: &[Scrape], n: &str| s[i].get(n, "");
            (d(&rc, "snapbank_transfers_sent_total") - d(&ra, "snapbank_transfers_sent_total"))
                + (d(&rc, "snapbank_transfers_applied_total")
                    - d(&ra, "snapbank_transfers_applied_total"))
        })
        .sum();
    let slack = moved * MAX_AMOUNT as f64;
    let balances: f64 = rb.iter().map(|s| s.get("snapbank_balance", "")).sum();
    let unacked: f64 = rb
        .iter()
        .map(|s| s.get("snapbank_unacknowledged_money", ""))
        .sum();
    assert!(
        balances <= GENESIS_TOTAL + slack,
        "Σ balances {balances} ≤ {GENESIS_TOTAL} (+{slack} moved while scraping)"
    );
    assert!(
        balances + unacked >= GENESIS_TOTAL - slack,
        "Σ balances {balances} + unacknowledged money {unacked} ≥ {GENESIS_TOTAL} (−{slack})"
    );
    for (i, s) in rb.iter().enumerate() {
        let branch = format!("branch=\"{}\"", c.addr(i));
        assert!(
            s.series.keys().all(|k| k.contains(&branch)),
            "every series labelled {branch}:\n{}",
            s.body
        );
        assert!(s.get("snapbank_transfers_sent_total", "") > 0.0);
        assert!(s.get("snapbank_transfers_applied_total", "") > 0.0);
        assert_eq!(s.get("snapbank_restarts_total", ""), 0.0, "first start");
        assert_eq!(s.get("snapbank_links_up", ""), (BRANCHES - 1) as f64);
        assert!(s.get("snapbank_snapshot_parts_recorded_total", "") > 0.0);
        assert!(s.get("snapbank_store_commit_duration_seconds_count", "") > 0.0);
        assert!(s.get("process_start_time_seconds", "") > 1.6e9);
        assert!(s.get("process_resident_memory_bytes", "") > 1e6);
        assert!(s.get("process_open_fds", "") >= BRANCHES as f64);
        assert!(s.get("snapbank_transfer_latency_seconds_count", "") > 0.0);
        let role = if i == 0 { "initiator" } else { "branch" };
        assert_eq!(
            s.get("snapbank_role_info", &format!("role=\"{role}\"")),
            1.0
        );
        // Which link is up, per peer and direction, and each channel's backlog.
        for j in (0..BRANCHES).filter(|j| *j != i) {
            let peer = format!("peer=\"{}\"", c.addr(j));
            for dir in ["outgoing", "incoming"] {
                let l = format!("{peer},direction=\"{dir}\"");
                assert_eq!(s.get("snapbank_link_up", &l), 1.0, "{l}");
            }
            s.get("snapbank_channel_unacknowledged_transfers", &peer);
        }
        for dir in ["direction=\"outgoing\"", "direction=\"incoming\""] {
            assert!(s.get("snapbank_link_sent_bytes_total", dir) > 0.0, "{dir}");
            assert!(
                s.get("snapbank_link_received_bytes_total", dir) > 0.0,
                "{dir}"
            );
            assert!(
                s.get("snapbank_link_connections_total", dir) >= (BRANCHES - 1) as f64,
                "{dir}"
            );
        }
        if i == 0 {
            let durations = s.get("snapbank_snapshot_duration_seconds_count", "");
            let completed = s.get("snapbank_snapshots_completed_total", "");
            assert!(durations > 0.0, "the initiator timed its snapshots");
            assert!(
                durations <= completed,
                "{durations} durations, {completed} completed"
            );
            assert_eq!(s.get("snapbank_snapshot_last_money", ""), GENESIS_TOTAL);
            assert_eq!(
                s.get("snapbank_snapshot_last_expected_money", ""),
                GENESIS_TOTAL
            );
            assert!(s.get("snapbank_snapshot_last_id", "") >= 1.0);
            assert_eq!(s.get("snapbank_snapshots_unconserved_total", ""), 0.0);
        } else {
            // Only the initiator completes snapshots: the other branches have none of its
            // series (rather than zeros and NaN quantiles).
            for name in [
                "snapbank_snapshot_duration_seconds",
                "snapbank_snapshots_completed",
                "snapbank_snapshots_pending",
                "snapbank_snapshot_last_money",
            ] {
                assert!(
                    !s.series.keys().any(|k| k.starts_with(name)),
                    "{name} at {}",
                    c.addr(i)
                );
            }
        }
    }

    // The counters grow.
    sleep(500);
    let rd = round();
    for i in 0..BRANCHES {
        for name in [
            "snapbank_transfers_sent_total",
            "snapbank_transfers_applied_total",
        ] {
            assert!(
                rd[i].get(name, "") > ra[i].get(name, ""),
                "{name} of {} grows",
                c.addr(i)
            );
        }
    }

    // Metrics on: the branch's own port and the metrics port, nothing else.
    let victim = 2;
    let mut expected = vec![port_of(&c.addr(victim)), port_of(&at[victim])];
    expected.sort_unstable();
    assert_eq!(listening_ports(c.pid(victim)), expected);

    // kill -9 and restart: one restart counted, transfer counters carry on from the store.
    let before = scrape(&at[victim]);
    c.kill9(victim);
    sleep(300);
    start_with_metrics(&mut c, victim, &at[victim]);
    let after = scrape_until(&at[victim], Duration::from_secs(20), "restarted", |s| {
        s.get("snapbank_restarts_total", "") == 1.0
    });
    for name in [
        "snapbank_transfers_sent_total",
        "snapbank_transfers_applied_total",
    ] {
        assert!(
            after.get(name, "") >= before.get(name, ""),
            "{name} kept across the restart: {} then {}",
            before.get(name, ""),
            after.get(name, "")
        );
    }
    let sent_before = before.get("snapbank_transfers_sent_total", "");
    scrape_until(&at[victim], Duration::from_secs(20), "sending again", |s| {
        s.get("snapbank_transfers_sent_total", "") > sent_before
            && s.get("snapbank_links_up", "") == (BRANCHES - 1) as f64
    });
    // The initiator reconnected both ways to the restarted branch; it did not restart itself.
    let s0 = scrape_until(&at[0], Duration::from_secs(20), "reconnected", |s| {
        s.get("snapbank_links_up", "") == (BRANCHES - 1) as f64
            && s.get("snapbank_link_connections_total", "direction=\"outgoing\"")
                > (BRANCHES - 1) as f64
            && s.get("snapbank_link_connections_total", "direction=\"incoming\"")
                > (BRANCHES - 1) as f64
    });
    assert_eq!(s0.get("snapbank_restarts_total", ""), 0.0);

    c.stop_all();
    let (code, a) = c.audit();
    assert_eq!(code, 0, "{a:#}");
}

/// Runs `bank args` to its end (15 s at most): exit code and stderr.
fn run_bank(args: &[&str]) -> (i32, String) {
    let mut child = Command::new(BANK)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run bank");
    let mut pipe = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    });
    let status = wait_timeout(&mut child, Duration::from_secs(15));
    let _ = child.wait();
    let err = reader.join().expect("stderr reader");
    let status = status.unwrap_or_else(|| panic!("bank {args:?} still ran after 15 s:\n{err}"));
    (status.code().unwrap_or(-1), err)
}

/// Exactly one error line in `stderr`, naming every needle.
fn one_error_line(stderr: &str, needles: &[&str]) {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.to_lowercase().contains("error") || l.contains("panicked"))
        .collect();
    assert_eq!(lines.len(), 1, "one error line in:\n{stderr}");
    for n in needles {
        assert!(lines[0].contains(n), "{:?} names {n:?}", lines[0]);
    }
}

#[test]
fn bad_metrics_address_or_port_in_use_is_refused_before_any_money_moves() {
    let c = Cluster::new(2, &[]);
    let (hosts, data) = (c.hosts(), c.data());
    let (h, d) = (hosts.to_str().expect("utf8"), data.to_str().expect("utf8"));
    let branch = c.addr(1);
    let bank = |metrics: &str| {
        let mut a = vec![branch.as_str(), "--hosts", h, "--data-dir", d];
        a.extend(["--metrics", metrics]);
        run_bank(&a)
    };
    for bad in ["not-an-addr", "127.0.0.1", "127.0.0.1:99999"] {
        let (code, err) = bank(bad);
        assert_eq!(code, 2, "{bad}: {err}");
        one_error_line(&err, &["--metrics", bad]);
    }
    let squatter = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = squatter.local_addr().expect("addr").to_string();
    let (code, err) = bank(&taken);
    assert_ne!(code, 0, "{err}");
    one_error_line(&err, &["--metrics", &taken, "in use"]);
    drop(squatter);
    assert!(
        !c.store_dir(1).exists(),
        "no store was created: the branch never started"
    );
}

#[test]
fn without_metrics_a_branch_listens_on_its_own_port_only() {
    let mut c = Cluster::new(2, ARGS);
    c.start_all();
    assert!(
        c.wait_log(1, Duration::from_secs(20), |l| l.contains(" up: balance ")),
        "branch up:\n{}",
        c.log(1)
    );
    assert_eq!(listening_ports(c.pid(1)), vec![port_of(&c.addr(1))]);
    assert!(!c.log(1).contains("metrics at"), "{}", c.log(1));
    c.stop_all();
}

/// `/healthz` answers while the core loop runs; `/readyz` says which links are missing until
/// every link both ways is up, then 200; the initiator-only series stay at the initiator.
#[test]
fn health_and_readiness_endpoints() {
    let mut c = Cluster::new(3, ARGS);
    let at = metrics_addrs(&c, 3);
    start_with_metrics(&mut c, 1, &at[1]);
    let end = Instant::now() + Duration::from_secs(20);
    let (code, body) = loop {
        match http_get(&at[1], "/readyz") {
            Ok((503, body)) if body.contains("links down") => break (503, body),
            Ok(other) if Instant::now() > end => panic!("/readyz alone: {other:?}"),
            Err(e) if Instant::now() > end => panic!("/readyz alone: {e}"),
            _ => sleep(100),
        }
    };
    assert_eq!(code, 503);
    for peer in [c.addr(0), c.addr(2)] {
        assert!(body.contains(&peer), "{peer} named in {body:?}");
    }
    assert_eq!(
        http_get(&at[1], "/healthz").expect("healthz"),
        (200, "ok\n".to_string())
    );
    let (code, body) = http_get(&at[1], "/nothing").expect("404");
    assert_eq!(code, 404, "{body}");
    assert!(
        body.contains("/metrics") && body.contains("/readyz"),
        "{body}"
    );

    start_with_metrics(&mut c, 0, &at[0]);
    start_with_metrics(&mut c, 2, &at[2]);
    for a in &at {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            match http_get(a, "/readyz") {
                Ok((200, body)) => {
                    assert_eq!(body, "ready\n");
                    break;
                }
                other if Instant::now() > end => panic!("{a} /readyz: {other:?}"),
                _ => sleep(100),
            }
        }
    }
    c.stop_all();
}
