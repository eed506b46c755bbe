//! Global restore: rewind a stopped cluster to a completed snapshot, rebuilding a lost store.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn lost_store_is_rebuilt_from_the_last_snapshot_and_the_cluster_runs_on() {
    let mut c = Cluster::new(
        4,
        &["--transfer-interval", "0s", "--snapshot-interval", "200ms"],
    );
    c.start_all();
    assert!(
        c.wait_log(0, Duration::from_secs(20), |l| completed_snapshots(l).len()
            >= 4)
    );
    sleep(700);
    // Restoring a running cluster is refused.
    let busy = c.snapctl(&["restore", "--snapshot", "1"]);
    assert_eq!(busy.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&busy.stderr).contains("in use by a running branch"));
    c.stop_all();

    let out = c.snapctl(&["snapshots", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let last = doc["completed"]
        .as_array()
        .and_then(|l| l.last())
        .expect("a snapshot")
        .clone();
    let k = last["id"].as_u64().expect("id");
    let expected: Vec<u64> = last["branches"]
        .as_array()
        .expect("branches")
        .iter()
        .map(|b| b["balance"].as_u64().unwrap_or(0) + b["channel_money"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(expected.iter().sum::<u64>(), 4_000_000);

    std::fs::remove_dir_all(c.store_dir(2)).expect("delete a store");
    let (code, _) = {
        let out = c.snapctl(&["audit", "--json"]);
        (out.status.code(), out)
    };
    assert_eq!(code, Some(2), "a missing store cannot be audited");

    let bad = c.snapctl(&["restore", "--snapshot", "999999"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a completed snapshot"));

    let out = c.snapctl(&["restore", "--snapshot", &k.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("store rebuilt") && text.contains(&c.addr(2)),
        "{text}"
    );

    // Right after the restore: the cut itself, nothing in flight, total intact.
    let (code, a) = c.audit();
    assert_eq!(code, 0, "{a:#}");
    assert_eq!(a["current_total"], 4_000_000);
    assert_eq!(a["last_snapshot"].as_u64(), Some(k));
    for (i, b) in a["branches"]
        .as_array()
        .expect("branches")
        .iter()
        .enumerate()
    {
        assert_eq!(b["balance"].as_u64(), Some(expected[i]), "branch {i}: {b}");
        assert_eq!(b["in_flight"].as_u64(), Some(0), "branch {i}: {b}");
    }

    // Run again from the restored cut.
    c.start_all();
    for (i, want) in expected.iter().enumerate() {
        assert!(
            c.wait_log(i, Duration::from_secs(10), |l| startup_balances(l).len()
                >= 2),
            "{}",
            c.log(i)
        );
        assert_eq!(
            startup_balances(&c.log(i)).last(),
            Some(want),
            "branch {i} starts from the cut"
        );
    }
    let before = completed_snapshots(&c.log(0)).len();
    assert!(
        c.wait_log(0, Duration::from_secs(20), |l| completed_snapshots(l).len()
            >= before + 3),
        "{}",
        c.log(0)
    );
    c.stop_all();
    let (code, a) = c.audit();
    assert_eq!(code, 0, "{a:#}");
    assert_eq!(a["consistent"], true);
    assert!(a["last_snapshot"].as_u64().unwrap_or(0) > k, "{a:#}");
    assert!(a["transfers"].as_u64().unwrap_or(0) > 0);
}

/// A branch restarted without its store must not start over from genesis (that would create
/// money): the first acknowledgement beyond what it sent stops it with a clear error, and a
/// restore from the last snapshot puts the cluster back together.
#[test]
fn branch_restarted_without_its_store_stops_and_restore_recovers() {
    let mut c = Cluster::new(
        3,
        &["--transfer-interval", "0s", "--snapshot-interval", "200ms"],
    );
    c.start_all();
    assert!(
        c.wait_log(0, Duration::from_secs(20), |l| completed_snapshots(l).len()
            >= 3)
    );
    sleep(500);
    c.kill9(2);
    std::fs::remove_dir_all(c.store_dir(2)).expect("delete the store");
    c.start(2);
    let mut child = c.children[2].take().expect("running");
    let st = wait_timeout(&mut child, Duration::from_secs(20)).expect("the branch stops by itself");
    assert!(!st.success());
    let log = c.log(2);
    let err = log.lines().last().unwrap_or_default();
    assert!(
        err.contains("bank: error:")
            && err.contains("store is behind")
            && err.contains("snapctl restore"),
        "one clear line: {log}"
    );
    c.stop_all();
    let out = c.snapctl(&["snapshots", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let k = doc["completed"]
        .as_array()
        .and_then(|l| l.last())
        .and_then(|g| g["id"].as_u64());
    let k = k.expect("a completed snapshot").to_string();
    let out = c.snapctl(&["restore", "--snapshot", &k]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = completed_snapshots(&c.log(0)).len();
    c.start_all();
    assert!(
        c.wait_log(0, Duration::from_secs(20), |l| completed_snapshots(l).len()
            >= before + 3)
    );
    c.stop_all();
    let (code, a) = c.audit();
    assert_eq!(code, 0, "{a:#}");
    assert_eq!(a["current_total"], 3_000_000);
}
