//! `snapctl status` and `snapctl snapshot` against a running, keyed 4-branch cluster: over the
//! cluster's authenticated channel, with the cluster key file, and refused without it.

mod common;

use common::*;
use std::time::{Duration, Instant};

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `snapctl status --json` until every branch answers with all its links up.
fn status_when_meshed(c: &Cluster) -> serde_json::Value {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let out = c.snapctl(&["status", "--json"]);
        let doc = json(&out);
        let meshed = doc.as_array().is_some_and(|a| {
            a.iter().all(|b| {
                b["status"]["links_up"].as_array().map(|l| l.len()) == Some(3)
                    && b["status"]["inbound_up"].as_array().map(|l| l.len()) == Some(3)
            })
        });
        if meshed && out.status.success() {
            return doc;
        }
        assert!(Instant::now() < end, "never meshed: {doc:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn status_and_snapshot_ask_a_running_cluster() {
    let mut c = Cluster::new(
        4,
        &[
            "--transfer-interval",
            "1ms..3ms",
            "--snapshot-interval",
            "300ms",
        ],
    );
    c.start_all();
    let doc = status_when_meshed(&c);
    let branches = doc.as_array().expect("one entry per branch");
    assert_eq!(branches.len(), 4);
    let mut balances: u128 = 0;
    for (i, b) in branches.iter().enumerate() {
        assert_eq!(b["branch"], c.addr(i));
        let s = &b["status"];
        // Branches by address, everywhere in the document.
        assert_eq!(s["branch"], c.addr(i));
        let peers: Vec<serde_json::Value> = (0..4)
            .filter(|&j| j != i)
            .map(|j| c.addr(j).into())
            .collect();
        let mut links = s["links_up"].as_array().cloned().unwrap_or_default();
        links.sort_by_key(|v| v.to_string());
        let mut sorted = peers.clone();
        sorted.sort_by_key(|v| v.to_string());
        assert_eq!(links, sorted, "{s}");
        assert_eq!(s["initiator"], i == 0);
        assert_eq!(s["restarts"], 0, "{s}");
        assert!(s["uptime_ms"].as_u64().unwrap_or(0) > 0, "{s}");
        balances += s["balance"].as_u64().expect("balance") as u128;
        // Unacknowledged money is in flight or just applied elsewhere: bounded, never negative.
        assert!(s["unacked"].as_u64().is_some());
    }
    // Queried one after another, the balances cannot be summed exactly, but no branch holds
    // more than all the money.
    assert!(balances <= 4_000_000 + 4 * 100 * 4096, "{balances}");
    // Transfers flow: a second look shows more sent and applied.
    std::thread::sleep(Duration::from_millis(500));
    let later = json(&c.snapctl(&["status", "--json"]));
    for i in 0..4 {
        let (a, b) = (&branches[i]["status"], &later[i]["status"]);
        assert!(b["sent"].as_u64() > a["sent"].as_u64(), "{a} then {b}");
        assert!(
            b["applied"].as_u64() > a["applied"].as_u64(),
            "{a} then {b}"
        );
    }

    // A snapshot on demand, with its verdict.
    let before = later[0]["status"]["last_snapshot"].as_u64().unwrap_or(0);
    let out = c.snapctl(&["snapshot", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&out);
    assert_eq!(v["conserved"], true, "{v}");
    assert!(v["duration_ms"].as_f64().is_some_and(|d| d > 0.0), "{v}");
    assert!(v.get("duration_us").is_none(), "one unit convention: {v}");
    assert_eq!(v["total"], 4_000_000, "{v}");
    assert!(v["snapshot"].as_u64().unwrap_or(0) > before, "{v}");
    let human = c.snapctl(&["snapshot"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.status.success() && text.contains("money conserved"),
        "{text}"
    );

    // The live audit: the latest snapshots, checked over the control channel while it runs.
    let out = c.snapctl(&["audit", "--live", "--json", "--snapshots", "6"]);
    let v = json(&out);
    assert_eq!(out.status.code(), Some(0), "{v:#}");
    assert_eq!(v["consistent"], true, "{v:#}");
    assert_eq!(v["expected_total"], 4_000_000);
    let ids = v["snapshots"].as_array().expect("ids");
    assert!(!ids.is_empty() && ids.len() <= 6, "{v:#}");
    // Channel records are checked against the senders' logs (the latest snapshot's unless a
    // newer one compacted them meanwhile); the rest are counted as compacted, never as checked.
    let checked = v["channels_checked"].as_u64().unwrap_or(0);
    let compacted = v["channels_compacted"].as_u64().unwrap_or(0);
    assert!(checked >= 1, "{v:#}");
    assert_eq!(checked + compacted, 12 * ids.len() as u64, "{v:#}");
    assert_eq!(v["violations"].as_array().map(|a| a.len()), Some(0));
    // Every branch's own copy of each part, unless it pruned it; the typed list and the counts
    // by kind are there, and empty; the audit says what it checked.
    let parts = v["parts_checked"].as_u64().unwrap_or(0) + v["parts_pruned"].as_u64().unwrap_or(0);
    assert_eq!(parts, 4 * ids.len() as u64, "{v:#}");
    assert!(v["parts_checked"].as_u64().unwrap_or(0) >= 4, "{v:#}");
    assert!(v["ledgers_checked"].as_u64().is_some(), "{v:#}");
    assert!(v["nothing_checked"].is_null(), "{v:#}");
    assert_eq!(v["violations_typed"], serde_json::json!([]), "{v:#}");
    assert_eq!(v["violation_counts"], serde_json::json!({}), "{v:#}");
    assert_eq!(v["branches"].as_array().map(|a| a.len()), Some(4), "{v:#}");
    let human = c.snapctl(&["audit", "--live"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.status.success()
            && text.contains("live audit: CONSISTENT")
            && text.contains("channel records against the senders' logs"),
        "{text}"
    );

    // The human table names every branch and how many answered.
    let table = c.snapctl(&["status"]);
    let text = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(table.status.success(), "{text}");
    for i in 0..4 {
        assert!(text.contains(&c.addr(i)), "{text}");
    }
    assert!(text.contains("4 of 4 branches answered"), "{text}");
    assert!(
        text.lines().all(|l| l.chars().count() <= 100),
        "fits a terminal: {text}"
    );

    // Without this cluster's key: another cluster's key file, or none at all.
    let stranger = tempfile::tempdir().expect("tmp");
    let key = stranger.path().join("other.key");
    let keygen = c.snapctl(&["keygen", "--key", key.to_str().expect("utf-8")]);
    assert!(keygen.status.success());
    let out = c.snapctl(&[
        "status",
        "--key",
        key.to_str().expect("utf-8"),
        "--timeout",
        "2s",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("0 of 4 branches answered"), "{text}");
    assert!(c.wait_log(1, Duration::from_secs(5), |l| l
        .contains("failed authentication")));
    // The refusal names the operator, not its sentinel id.
    let log = c.log(1);
    let refusal = log
        .lines()
        .find(|l| l.contains("failed authentication"))
        .unwrap_or_default();
    assert!(
        refusal.contains("an operator (snapctl)") && !refusal.contains("65535"),
        "{refusal}"
    );
    let out = c.snapctl(&["status", "--insecure", "--timeout", "2s"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 of 4 branches answered"));
    // One branch by host name, resolved and found in host.list.
    let port = c.addr(3).rsplit(':').next().unwrap_or_default().to_string();
    let out = c.snapctl(&[
        "status",
        &format!("localhost:{port}"),
        "--from",
        "127.0.0.1",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&c.addr(3)) && text.contains("1 of 1 branches answered"),
        "{text}"
    );
    let out = c.snapctl(&["status", "localhost:1"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("localhost:1") && err.contains("not a branch of host.list"),
        "{err}"
    );
    // From an address host.list does not list: told at once, with the way out; the branch
    // logs the refusal at info.
    let out = c.snapctl(&["status", "--from", "127.0.0.2", "--timeout", "2s"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("connects from 127.0.0.2") && text.contains("--from"),
        "{text}"
    );
    assert!(text.lines().all(|l| l.chars().count() <= 100), "{text}");
    assert!(c.wait_log(2, Duration::from_secs(5), |l| l
        .lines()
        .any(|l| l.contains(" INFO ")
            && l.contains("127.0.0.2")
            && l.contains("not an address of host.list"))));
    // A key file that is not there is a one-line error, exit 2.
    let missing = c.snapctl(&["status", "--key", "/nonexistent/cluster.key"]);
    assert_eq!(missing.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&missing.stderr).lines().count(), 1);

    // A branch that is down is named; after its restart it counts one restart.
    c.kill9(2);
    let out = c.snapctl(&["status", "--timeout", "2s"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.lines()
            .any(|l| l.starts_with(&c.addr(2)) && l.contains("not answering")),
        "{text}"
    );
    assert!(text.contains("3 of 4 branches answered"), "{text}");
    let out = c.snapctl(&["audit", "--live", "--timeout", "2s"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a branch that cannot answer is an error"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&c.addr(2)) && err.lines().count() == 1,
        "{err}"
    );
    c.start(2);
    let doc = status_when_meshed(&c);
    assert_eq!(doc[2]["status"]["restarts"], 1, "{doc:#}");
    c.stop_all();
    let (code, audit) = c.audit();
    assert_eq!(code, 0, "{audit:#}");
    // The stopped stores: the latest kept snapshot's 12 channel records and the 4 ledgers from
    // it to now are checked against the logs.
    assert!(
        audit["channels_checked"].as_u64().unwrap_or(0) >= 12,
        "{audit:#}"
    );
    assert!(
        audit["ledgers_checked"].as_u64().unwrap_or(0) >= 4,
        "{audit:#}"
    );
    assert_eq!(
        audit["violation_counts"],
        serde_json::json!({}),
        "{audit:#}"
    );
}
