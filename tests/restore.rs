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

/// The latest completed snapshot of a stopped cluster: its id and each branch's restored
/// balance (recorded balance plus the money in flight towards it).
fn latest_snapshot(c: &Cluster) -> (u64, Vec<u64>) {
    let out = c.snapctl(&["snapshots", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "snapshots --json ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let last = doc["completed"]
        .as_array()
        .and_then(|l| l.last())
        .expect("a completed snapshot")
        .clone();
    let balances = last["branches"]
        .as_array()
        .expect("branches")
        .iter()
        .map(|b| b["balance"].as_u64().unwrap_or(0) + b["channel_money"].as_u64().unwrap_or(0))
        .collect();
    (last["id"].as_u64().expect("id"), balances)
}

/// `snapctl restore --snapshot k`, with the test hook that kills it after `crash_after` writes.
fn restore_cmd(c: &Cluster, k: u64, crash_after: Option<u64>) -> std::process::Output {
    let mut cmd = std::process::Command::new(SNAPCTL);
    cmd.args(["restore", "--snapshot", &k.to_string()])
        .arg("--data-dir")
        .arg(c.data())
        .arg("--hosts")
        .arg(c.hosts());
    match crash_after {
        Some(n) => cmd.env("SNAPBANK_RESTORE_CRASH_AFTER", n.to_string()),
        None => cmd.env_remove("SNAPBANK_RESTORE_CRASH_AFTER"),
    };
    cmd.output().expect("run snapctl restore")
}

/// Lines of a log that report an error (not `INFO …: Connection refused (os error 111)`).
fn error_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            l.contains(" ERROR ") || l.to_lowercase().contains("error:") || l.contains("panicked")
        })
        .collect()
}

/// Branch `i` refuses to start: it exits non-zero by itself with one error line holding every
/// needle.
fn refuses_to_start(c: &mut Cluster, i: usize, needles: &[&str]) -> String {
    let before = c.log(i).len();
    c.start(i);
    let mut child = c.children[i].take().expect("running");
    let st = wait_timeout(&mut child, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("branch {i} started:\n{}", c.log(i)));
    let log = c.log(i);
    let new = &log[before..];
    assert!(!st.success(), "branch {i} must not start: {st}\n{new}");
    let lines = error_lines(new);
    assert_eq!(lines.len(), 1, "one error line from branch {i}:\n{new}");
    for n in needles {
        assert!(lines[0].contains(n), "{n:?} missing from {:?}", lines[0]);
    }
    lines[0].to_string()
}

/// Right after a restore to `k`: the cut itself, nothing in flight, the total intact.
fn audit_is_the_cut(c: &Cluster, k: u64, expected: &[u64]) {
    let (code, a) = c.audit();
    assert_eq!(code, 0, "{a:#}");
    assert_eq!(a["current_total"], expected.iter().sum::<u64>(), "{a:#}");
    assert_eq!(a["last_snapshot"].as_u64(), Some(k), "{a:#}");
    for (i, b) in a["branches"]
        .as_array()
        .expect("branches")
        .iter()
        .enumerate()
    {
        assert_eq!(b["balance"].as_u64(), Some(expected[i]), "branch {i}: {b}");
        assert_eq!(b["in_flight"].as_u64(), Some(0), "branch {i}: {b}");
    }
}

/// Starts the cluster, lets it complete 3 more snapshots, stops it: the audit is consistent
/// with the exact total and has gone beyond `k`.
fn runs_on_consistently(c: &mut Cluster, k: u64, total: u64) {
    let before = completed_snapshots(&c.log(0)).len();
    c.start_all();
    assert!(
        c.wait_log(0, Duration::from_secs(30), |l| completed_snapshots(l).len()
            >= before + 3),
        "{}",
        c.log(0)
    );
    c.stop_all();
    let (code, a) = c.audit();
    assert_eq!(code, 0, "{a:#}");
    assert_eq!(a["consistent"], true, "{a:#}");
    assert_eq!(a["current_total"], total, "{a:#}");
    assert!(a["last_snapshot"].as_u64().unwrap_or(0) > k, "{a:#}");
}

/// `snapctl restore` killed after each of its durable writes in turn (the test hook): until it
/// is run again, no branch starts, neither on a store it rewrote, nor on one it had not reached,
/// nor where it was to rebuild a lost store; run again, it finishes with the same result as an
/// uninterrupted restore, and the cluster runs on from the cut.
#[test]
fn an_interrupted_restore_keeps_every_branch_stopped_until_it_is_run_again() {
    let began = std::time::Instant::now();
    let mut c = Cluster::new(
        3,
        &["--transfer-interval", "0s", "--snapshot-interval", "200ms"],
    );
    c.start_all();
    assert!(
        c.wait_log(0, Duration::from_secs(20), |l| completed_snapshots(l).len()
            >= 4)
    );
    sleep(500);
    c.stop_all();
    let (k, expected) = latest_snapshot(&c);
    assert_eq!(expected.iter().sum::<u64>(), 3_000_000);
    // A lost store as well: the restore creates and rebuilds it.
    std::fs::remove_dir_all(c.store_dir(2)).expect("delete a store");
    let pristine = c.dir.path().join("pristine");
    copy_dir(&c.data(), &pristine);
    let marker = c.data().join("restore-in-progress");
    let unfinished = format!(
        "is part of an unfinished `snapctl restore --snapshot {k}`; run it again to finish"
    );

    let mut writes = 0;
    for n in 1.. {
        std::fs::remove_dir_all(c.data()).expect("reset the data dir");
        copy_dir(&pristine, &c.data());
        let out = restore_cmd(&c, k, Some(n));
        if out.status.success() {
            // Fewer writes than n: the restore ran to the end.
            writes = n - 1;
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(9), "killed by the hook: {err}");
        assert!(err.contains("(test hook)"), "{err}");
        if marker.exists() {
            let store2 = c.store_dir(2);
            let existed = store2.exists();
            for i in 0..3 {
                let store = c.store_dir(i);
                let line =
                    refuses_to_start(&mut c, i, &[store.to_str().expect("utf-8"), &unfinished]);
                if n == 4 && i < 2 {
                    // Store 0 rewritten, store 1 not yet: both refused alike.
                    eprintln!("after {n} writes, branch {i}: {line}");
                }
            }
            assert_eq!(
                store2.exists(),
                existed,
                "a refused branch creates no store"
            );
            // start_bank refuses before it starts any branch.
            let sb = std::process::Command::new(START_BANK)
                .arg("127.0.0.1")
                .arg("--hosts")
                .arg(c.hosts())
                .arg("--data-dir")
                .arg(c.data())
                .output()
                .expect("run start_bank");
            let sb_err = String::from_utf8_lossy(&sb.stderr);
            assert!(
                !sb.status.success() && sb_err.contains(&unfinished),
                "{sb_err}"
            );
            assert!(!sb_err.contains("started bank"), "{sb_err}");
            // The audit gives no verdict on a half-restored cluster.
            let audit = c.snapctl(&["audit"]);
            let audit_err = String::from_utf8_lossy(&audit.stderr);
            assert_eq!(audit.status.code(), Some(2), "{audit_err}");
            assert!(audit_err.contains(&unfinished), "{audit_err}");
            // Another snapshot is refused until this restore is finished.
            let other = restore_cmd(&c, k - 1, None);
            let other_err = String::from_utf8_lossy(&other.stderr);
            assert_eq!(other.status.code(), Some(2), "{other_err}");
            assert!(
                other_err.contains(&format!(
                    "an unfinished `snapctl restore --snapshot {k}` must be finished first"
                )),
                "{other_err}"
            );
        }
        // Run again, it finishes.
        let again = restore_cmd(&c, k, None);
        assert!(
            again.status.success(),
            "after {n} writes: {}",
            String::from_utf8_lossy(&again.stderr)
        );
        assert!(!marker.exists());
        audit_is_the_cut(&c, k, &expected);
    }
    assert!(writes >= 10, "the restore made {writes} durable writes");
    eprintln!("restore killed after each of its {writes} writes, then run again");

    // The stores' own marks hold even without the file (stores copied elsewhere): kill the
    // restore after it rewrote store 0 and lose the file.
    std::fs::remove_dir_all(c.data()).expect("reset the data dir");
    copy_dir(&pristine, &c.data());
    let out = restore_cmd(&c, k, Some(4));
    assert!(!out.status.success());
    std::fs::remove_file(&marker).expect("the marker file");
    for i in 0..2 {
        let store = c.store_dir(i);
        refuses_to_start(&mut c, i, &[store.to_str().expect("utf-8"), &unfinished]);
    }
    let again = restore_cmd(&c, k, None);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    audit_is_the_cut(&c, k, &expected);
    runs_on_consistently(&mut c, k, 3_000_000);
    eprintln!(
        "interrupted restore test: {:.1} s",
        began.elapsed().as_secs_f64()
    );
}

/// Bytes no store holds: a fixed pseudo-random sequence.
fn garbage(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A corrupt store says so and names the way back; `snapctl restore` keeps its files aside and
/// rebuilds it from the initiator's copies. The initiator's own store cannot be rebuilt that
/// way: the restore refuses, touching nothing.
#[test]
fn a_corrupt_store_is_set_aside_and_rebuilt_by_restore() {
    let mut c = Cluster::new(
        3,
        &["--transfer-interval", "0s", "--snapshot-interval", "200ms"],
    );
    c.start_all();
    assert!(
        c.wait_log(0, Duration::from_secs(20), |l| completed_snapshots(l).len()
            >= 4)
    );
    sleep(500);
    c.stop_all();
    let (k, expected) = latest_snapshot(&c);
    let store = c.store_dir(1);
    let db = store.join("db");
    let len = std::fs::metadata(&db).expect("db").len() as usize;
    std::fs::write(&db, garbage(len)).expect("overwrite the log");
    let line = refuses_to_start(
        &mut c,
        1,
        &[
            store.to_str().expect("utf-8"),
            "is corrupt",
            "snapctl restore --snapshot K",
            "rebuilds the store from the initiator's copies",
        ],
    );
    eprintln!("corrupt store: {line}");
    assert!(!line.to_lowercase().contains("delete"), "{line}");

    let out = restore_cmd(&c, k, None);
    let (text, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{text}\n{err}");
    assert!(
        text.contains("store rebuilt") && text.contains(&c.addr(1)),
        "{text}"
    );
    let kept = c.data().join("corrupt").join(format!(
        "{}.1",
        store.file_name().and_then(|n| n.to_str()).expect("name")
    ));
    assert!(err.contains(kept.to_str().expect("utf-8")), "{err}");
    // Kept as sled left them (opening a damaged log, sled cuts it after the last entry it
    // could read: the garbage is not all there any more).
    assert!(kept.join("db").is_file(), "the corrupt files are kept");
    assert!(kept.join("conf").is_file(), "the corrupt files are kept");
    audit_is_the_cut(&c, k, &expected);
    runs_on_consistently(&mut c, k, 3_000_000);

    // The initiator's store corrupt: refused, nothing moved.
    let init = c.store_dir(0);
    let len = std::fs::metadata(init.join("db")).expect("db").len() as usize;
    std::fs::write(init.join("db"), garbage(len)).expect("overwrite the log");
    let out = restore_cmd(&c, k + 1, None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("the initiator's store") && err.contains("put back a copy"),
        "{err}"
    );
    assert!(
        init.join("db").is_file(),
        "the initiator's files stay where they are"
    );
    assert!(!c.data().join("restore-in-progress").exists());
}
