//! End-to-end: real `bank` processes on loopback, audited from their stores with `snapctl`.

mod common;

use common::*;
use snapbank::store::SledStore;
use std::time::Duration;

const FAST: &[&str] = &["--transfer-interval", "0s", "--snapshot-interval", "200ms"];

fn assert_consistent(c: &Cluster, min_snapshots: u64) -> serde_json::Value {
    let (code, a) = c.audit();
    assert_eq!(code, 0, "audit exit code; report {a:#}");
    assert_eq!(a["consistent"], true, "{a:#}");
    assert_eq!(a["current_total"], a["expected_total"], "{a:#}");
    assert!(
        a["violations"].as_array().is_some_and(|v| v.is_empty()),
        "{a:#}"
    );
    assert!(
        a["snapshots_checked"].as_u64().unwrap_or(0) >= min_snapshots,
        "at least {min_snapshots} snapshots: {a:#}"
    );
    a
}

/// Must show 2(a): four branches at full speed, stopped, audit consistent with ≥ 3 snapshots.
#[test]
fn four_branches_at_full_speed_stay_consistent() {
    let mut c = Cluster::new(4, FAST);
    c.start_all();
    assert!(
        c.wait_log(0, Duration::from_secs(20), |l| completed_snapshots(l).len()
            >= 3),
        "3 snapshots complete:\n{}",
        c.log(0)
    );
    sleep(2000);
    c.stop_all();
    let snaps = completed_snapshots(&c.log(0));
    assert!(
        snaps.iter().all(|(_, ok)| *ok),
        "every logged snapshot conserved money"
    );
    let a = assert_consistent(&c, 3);
    assert!(
        a["transfers"].as_u64().unwrap_or(0) > 1000,
        "money moved: {a:#}"
    );
    assert_eq!(a["expected_total"], 4_000_000);
}

/// Must show 2(b): kill -9 a branch and then the initiator mid-run, restart both: snapshots
/// complete afterwards, audit consistent, restarted balances continue from their stores.
#[test]
fn kill9_branch_and_initiator_then_restart() {
    let mut c = Cluster::new(4, FAST);
    c.start_all();
    assert!(
        c.wait_log(0, Duration::from_secs(20), |l| completed_snapshots(l).len()
            >= 2)
    );
    sleep(1000);

    for victim in [2usize, 0] {
        c.kill9(victim);
        // What the store holds at the instant of death is what the branch must come back with.
        let stored = {
            let s = SledStore::open(&c.store_dir(victim), None).expect("open killed store");
            s.state()
                .expect("read state")
                .expect("state present")
                .balance
        };
        sleep(300);
        c.start(victim);
        assert!(
            c.wait_log(victim, Duration::from_secs(10), |l| startup_balances(l)
                .len()
                >= 2),
            "restarted:\n{}",
            c.log(victim)
        );
        let balances = startup_balances(&c.log(victim));
        assert_eq!(balances[0], 1_000_000, "first start from genesis");
        assert_eq!(
            *balances.last().unwrap_or(&0),
            stored,
            "restart continues from the stored balance"
        );
        sleep(1500);
    }
    // Snapshots complete after the initiator's restart.
    let before = completed_snapshots(&c.log(0)).len();
    assert!(
        c.wait_log(0, Duration::from_secs(20), |l| completed_snapshots(l).len()
            >= before + 3),
        "snapshots complete after restart:\n{}",
        c.log(0)
    );
    c.stop_all();
    let a = assert_consistent(&c, 5);
    let ids: Vec<u64> = completed_snapshots(&c.log(0)).iter().map(|s| s.0).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "snapshot ids only grow across restarts: {ids:?}"
    );
    assert_eq!(a["last_snapshot"].as_u64(), ids.last().copied());
}

/// Must show 2(c): connections broken while transfers flow (receiver restarted, killed, stalled):
/// no transfer lost or applied twice.
#[test]
fn broken_connections_lose_nothing_and_apply_nothing_twice() {
    let mut c = Cluster::new(3, FAST);
    c.start_all();
    assert!(
        c.wait_log(0, Duration::from_secs(20), |l| !completed_snapshots(l)
            .is_empty())
    );
    // Graceful restart, crash restart, and a stall, each while the others keep sending.
    sleep(800);
    let st = c.stop(1);
    assert!(st.success());
    c.start(1);
    sleep(1200);
    c.kill9(2);
    c.start(2);
    sleep(1200);
    c.signal(1, "STOP");
    sleep(1500);
    c.signal(1, "CONT");
    sleep(2500);
    c.stop_all();
    let a = assert_consistent(&c, 2);
    // Every branch sent and received across the breaks.
    for b in a["branches"].as_array().expect("branches") {
        assert!(b["sent"].as_u64().unwrap_or(0) > 100, "{b}");
        assert!(b["applied"].as_u64().unwrap_or(0) > 100, "{b}");
    }
    // The receivers saw duplicates after the reconnects and dropped them: the audit's ledger
    // check (balance = initial + received − sent, per branch) would name any double credit.
}

/// Must show 2(d): money added to a stopped store makes `snapctl audit` exit 1 naming the branch.
#[test]
fn tampered_store_fails_the_audit_naming_the_branch() {
    let mut c = Cluster::new(
        4,
        &["--transfer-interval", "1ms", "--snapshot-interval", "300ms"],
    );
    c.start_all();
    assert!(
        c.wait_log(0, Duration::from_secs(20), |l| completed_snapshots(l).len()
            >= 2)
    );
    c.stop_all();
    assert_consistent(&c, 2);
    {
        let mut s = SledStore::open(&c.store_dir(2), None).expect("open stopped store");
        let mut st = s.state().expect("read").expect("present");
        st.balance += 500;
        s.put_state(&st).expect("tamper");
    }
    let (code, a) = c.audit();
    assert_eq!(code, 1, "{a:#}");
    assert_eq!(a["consistent"], false);
    let victim = c.addr(2);
    let violations: Vec<String> = a["violations"]
        .as_array()
        .expect("violations")
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        violations
            .iter()
            .any(|v| v.contains(&victim) && v.contains("created")),
        "a violation names {victim}: {violations:#?}"
    );
    // The human table says so too.
    let out = c.snapctl(&["audit"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&victim));
}

/// `snapctl snapshots` lists what the initiator completed.
#[test]
fn snapctl_snapshots_lists_completed_snapshots() {
    let mut c = Cluster::new(
        2,
        &["--transfer-interval", "1ms", "--snapshot-interval", "200ms"],
    );
    c.start_all();
    assert!(
        c.wait_log(0, Duration::from_secs(20), |l| completed_snapshots(l).len()
            >= 2)
    );
    c.stop_all();
    let out = c.snapctl(&["snapshots", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let list = doc["completed"].as_array().expect("array");
    assert!(doc["pending"].is_array());
    assert!(list.len() >= 2);
    for s in list {
        assert_eq!(s["total"], 2_000_000, "{s}");
        assert_eq!(s["branches"].as_array().map(|b| b.len()), Some(2));
    }
    let table = c.snapctl(&["snapshots"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("2000000") && text.contains(&c.addr(1)),
        "{text}"
    );
}
