//! `snapctl reshape`: a stopped cluster becomes another one (branches added, removed, moved)
//! from a completed snapshot, as a new epoch; money is conserved across the boundary and the
//! audit proves it, epoch by epoch.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const TOTAL: u64 = 4_000_000;

use common::output_text as text;

/// Runs the cluster until the initiator has logged `more` snapshots complete beyond what it had,
/// with every one conserving money.
fn run_snapshots(c: &Cluster, more: usize) {
    let before = completed_snapshots(&c.log(0)).len();
    assert!(
        c.wait_log(0, Duration::from_secs(30), |l| completed_snapshots(l).len()
            >= before + more),
        "{}",
        c.log(0)
    );
    assert!(completed_snapshots(&c.log(0)).iter().all(|(_, ok)| *ok));
}

/// The latest completed snapshot of the stopped cluster and each branch's money at its cut.
fn last_snapshot(c: &Cluster) -> (u64, Vec<u64>) {
    let out = c.snapctl(&["snapshots", "--json"]);
    let doc: Value = serde_json::from_slice(&out.stdout).expect("json");
    let last = doc["completed"]
        .as_array()
        .and_then(|l| l.last())
        .expect("a snapshot")
        .clone();
    let cut = last["branches"]
        .as_array()
        .expect("branches")
        .iter()
        .map(|b| b["balance"].as_u64().unwrap_or(0) + b["channel_money"].as_u64().unwrap_or(0))
        .collect();
    (last["id"].as_u64().expect("id"), cut)
}

/// Writes a host.list of `addrs` (the first `:S`) at `path`.
fn write_list(path: &Path, addrs: &[String]) {
    std::fs::write(path, snapbank_testkit::host_list_text(addrs)).expect("write host.list");
}

/// `snapctl reshape ARGS --data-dir DATA --hosts OLD` with `env`.
fn reshape(c: &Cluster, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(SNAPCTL)
        .arg("reshape")
        .args(args)
        .arg("--data-dir")
        .arg(c.data())
        .arg("--hosts")
        .arg(c.hosts())
        .envs(env.iter().copied())
        .output()
        .expect("run snapctl reshape")
}

/// The cluster now runs the new list: host.list replaced, branches renumbered (their old logs
/// kept aside under the epoch's name).
fn become_list(c: &mut Cluster, list: &Path, addrs: Vec<String>, epoch: u64) {
    assert!(c.children.iter().all(|ch| ch.is_none()));
    for i in 0..c.len() {
        let _ = std::fs::rename(
            c.log_path(i),
            c.dir.path().join(format!("epoch{}-bank{i}.log", epoch - 1)),
        );
    }
    std::fs::copy(list, c.hosts()).expect("new host.list");
    let n = addrs.len();
    c.addrs = addrs;
    c.children = (0..n).map(|_| None).collect();
    c.started_at = vec![None; n];
}

use common::audit_balances as balances;

fn new_addrs(n: usize) -> Vec<String> {
    free_ports(n)
        .into_iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect()
}

/// Must-show 1: 4 branches → 6 (two funded from the old ones) → 3 (three closed, their money to
/// a named branch, one branch moved to a new address and made the initiator); after each step
/// the audit is consistent within each epoch and across each boundary, with the exact totals;
/// a kill -9 in the new epoch recovers.
#[test]
fn four_to_six_to_three_conserves_every_unit_across_the_epochs() {
    let mut c = Cluster::new(
        4,
        &["--transfer-interval", "0s", "--snapshot-interval", "200ms"],
    );
    c.start_all();
    run_snapshots(&c, 4);
    // A running cluster is not reshaped.
    let list6 = c.dir.path().join("six.list");
    let mut six = c.addrs.clone();
    six.extend(new_addrs(2));
    write_list(&list6, &six);
    let busy = reshape(
        &c,
        &["--snapshot", "1", "--to", list6.to_str().unwrap()],
        &[],
    );
    assert_eq!(busy.status.code(), Some(2), "{}", text(&busy));
    assert!(
        text(&busy).contains("in use by a running branch"),
        "{}",
        text(&busy)
    );
    c.stop_all();
    let (code, a) = c.audit();
    assert_eq!(code, 0, "{a:#}");
    assert_eq!(a["epoch"], 0);
    let (k1, cut1) = last_snapshot(&c);
    assert_eq!(cut1.iter().sum::<u64>(), TOTAL);

    // 4 → 6: the two new branches funded by branches 0 and 1.
    let (f4, f5) = (cut1[0] / 3, cut1[1] / 4);
    let fund4 = format!("{}={f4},{}", six[4], six[0]);
    let fund5 = format!("{}={f5},{}", six[5], six[1]);
    let k1s = k1.to_string();
    let out = reshape(
        &c,
        &[
            "--snapshot",
            &k1s,
            "--to",
            list6.to_str().unwrap(),
            "--fund",
            &fund4,
            "--fund",
            &fund5,
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("epoch 1 of 6 branches"),
        "{}",
        text(&out)
    );
    // The key file now holds six branches.
    let key = std::fs::read_to_string(c.data().join("cluster.key")).expect("key file");
    assert_eq!(key.lines().filter(|l| l.starts_with("branch ")).count(), 6);
    assert!(c.data().join("epochs/0/cluster.key").is_file());
    become_list(&mut c, &list6, six.clone(), 1);
    let (code, a) = c.audit();
    assert_eq!(code, 0, "{a:#}");
    assert_eq!(a["epoch"], 1);
    assert_eq!(a["expected_total"], TOTAL);
    assert_eq!(a["current_total"], TOTAL);
    let want1 = vec![cut1[0] - f4, cut1[1] - f5, cut1[2], cut1[3], f4, f5];
    assert_eq!(balances(&a), want1, "{a:#}");
    let epochs = a["epochs"].as_array().expect("epochs");
    assert_eq!(epochs.len(), 2, "{a:#}");
    assert_eq!(epochs[0]["stores"], "retired");
    assert_eq!(epochs[0]["consistent"], true);
    assert_eq!(epochs[1]["began"]["snapshot"].as_u64(), Some(k1));
    assert_eq!(epochs[1]["began"]["checked_against"], "snapshot");
    assert_eq!(epochs[1]["began"]["consistent"], true, "{a:#}");

    // Epoch 1 runs; a kill -9 of a branch recovers.
    c.start_all();
    run_snapshots(&c, 3);
    let snaps = completed_snapshots(&c.log(0));
    assert!(snaps.iter().all(|(id, _)| *id > k1), "{snaps:?}");
    c.kill9(3);
    sleep(300);
    c.start(3);
    run_snapshots(&c, 3);
    c.stop_all();
    let (code, a) = c.audit();
    assert_eq!(code, 0, "{a:#}");
    assert_eq!(a["current_total"], TOTAL);
    assert!(a["transfers"].as_u64().unwrap_or(0) > 0);
    let backup1 = c.dir.path().join("epoch1-backup");
    copy_dir(&c.data(), &backup1);

    // 6 → 3: branches 2, 3 and 5 close, their money to branch 0; branch 1 moves to a new
    // address and becomes the initiator; branch 4 stays.
    let (k2, cut2) = last_snapshot(&c);
    let moved = new_addrs(1).remove(0);
    let three = vec![moved.clone(), six[0].clone(), six[4].clone()];
    let list3 = c.dir.path().join("three.list");
    write_list(&list3, &three);
    let k2s = k2.to_string();
    let mv = format!("{}={moved}", six[1]);
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "--snapshot",
            &k2s,
            "--to",
            list3.to_str().unwrap(),
            "--move",
            &mv,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    // Giving the money to a branch that closes is refused, nothing written.
    let bad = args(&["--give-to", &six[2]]);
    let bad: Vec<&str> = bad.iter().map(|s| s.as_str()).collect();
    let out = reshape(&c, &bad, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("is one of the branches being removed"),
        "{}",
        text(&out)
    );
    assert_eq!(text(&out).trim().lines().count(), 1, "{}", text(&out));
    let good = args(&["--give-to", &six[0]]);
    let good: Vec<&str> = good.iter().map(|s| s.as_str()).collect();
    let out = reshape(&c, &good, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let moved_line = format!("{} -> {moved}", six[1]);
    assert!(
        text(&out)
            .lines()
            .any(|l| l.starts_with("moved") && l.ends_with(&moved_line)),
        "{}",
        text(&out)
    );
    become_list(&mut c, &list3, three.clone(), 2);
    let (code, a) = c.audit();
    assert_eq!(code, 0, "{a:#}");
    assert_eq!(a["epoch"], 2);
    assert_eq!(a["current_total"], TOTAL);
    let want2 = vec![cut2[1], cut2[0] + cut2[2] + cut2[3] + cut2[5], cut2[4]];
    assert_eq!(balances(&a), want2, "{a:#}");
    let epochs = a["epochs"].as_array().expect("epochs");
    assert_eq!(epochs.len(), 3, "{a:#}");
    for e in epochs {
        assert_eq!(e["consistent"], true, "{e:#}");
        if let Some(b) = e.get("began").filter(|b| !b.is_null()) {
            assert_eq!(b["consistent"], true, "{e:#}");
        }
    }
    // The closed branches' stores are kept, retired: no branch starts on them.
    let retired = c.data().join("epochs/1").join(six[2].replace(':', "_"));
    assert!(retired.join("db").is_file());

    // Epoch 2 runs; a branch of epoch 1 started from a copy of its old store is refused by the
    // branches of epoch 2, in one line naming both epochs, and moves no money.
    c.start_all();
    run_snapshots(&c, 3);
    let rogue_log = c.dir.path().join("rogue.log");
    let log = std::fs::File::create(&rogue_log).expect("log");
    let old_list = c.dir.path().join("six.list");
    let mut rogue = Command::new(BANK)
        .arg(&six[2])
        .arg("--hosts")
        .arg(&old_list)
        .arg("--data-dir")
        .arg(&backup1)
        .args(["--transfer-interval", "0s"])
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start the old branch");
    let refused = |l: &str| l.contains("is of epoch 1") && l.contains("this branch of epoch 2");
    let seen = c.wait_log(1, Duration::from_secs(15), refused);
    let _ = rogue.kill();
    let _ = rogue.wait();
    assert!(seen, "{}", c.log(1));
    c.kill9(2);
    sleep(300);
    c.start(2);
    run_snapshots(&c, 3);
    c.stop_all();
    let (code, a) = c.audit();
    assert_eq!(code, 0, "{a:#}");
    assert_eq!(a["current_total"], TOTAL);
    assert!(a["last_snapshot"].as_u64().unwrap_or(0) > k2);
    shows_the_epochs(&c, k1, k2);

    // A retired epoch that cannot be read is a violation of its boundary, not an audit that
    // gives up: the other epochs are still checked.
    let store0 = c.data().join("epochs/0").join(six[0].replace(':', "_"));
    let store0_aside = c.dir.path().join("store0-aside");
    std::fs::rename(&store0, &store0_aside).expect("move a retired store aside");
    let (code, a) = c.audit();
    assert_eq!(code, 1, "{a:#}");
    assert_eq!(a["epochs"][0]["stores"], "unreadable", "{a:#}");
    assert!(
        a["epochs"][1]["began"]["violations"][0]
            .as_str()
            .is_some_and(|v| v.contains("cannot be read")),
        "{a:#}"
    );
    assert_eq!(a["epochs"][2]["began"]["consistent"], true, "{a:#}");
    std::fs::rename(&store0_aside, &store0).expect("put it back");

    // Purged: the boundaries are checked against the records alone. A purge that stopped
    // part-way left a `<e>.purging` directory, which nothing reads and the next purge deletes.
    let half = c.data().join("epochs/7.purging/some-store");
    std::fs::create_dir_all(&half).expect("a half-deleted epoch");
    let (code, a) = c.audit();
    assert_eq!(code, 0, "{a:#}");
    let out = c.snapctl(&["reshape", "--purge"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!c.data().join("epochs/0").exists());
    assert!(!c.data().join("epochs/7.purging").exists());
    let (code, a) = c.audit();
    assert_eq!(code, 0, "{a:#}");
    let epochs = a["epochs"].as_array().expect("epochs");
    assert_eq!(
        epochs[epochs.len() - 1]["began"]["checked_against"],
        "record"
    );
}

/// A stopped 3-branch cluster with moved money, its latest snapshot and a 4-branch list.
/// The ids of the completed snapshots in `snapctl snapshots --json`.
fn completed_ids(doc: &Value) -> Vec<u64> {
    doc["completed"]
        .as_array()
        .expect("completed")
        .iter()
        .filter_map(|g| g["id"].as_u64())
        .collect()
}

/// `snapctl snapshots` and `snapctl report` list the three epochs, how each began and its
/// snapshots, and `--epoch` shows a retired one.
fn shows_the_epochs(c: &Cluster, k1: u64, k2: u64) {
    let out = c.snapctl(&["snapshots", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["epoch"], 2);
    let epochs = doc["epochs"].as_array().expect("epochs");
    let stores: Vec<&str> = epochs.iter().filter_map(|e| e["stores"].as_str()).collect();
    assert_eq!(stores, ["retired", "retired", "current"], "{doc:#}");
    let sizes: Vec<usize> = epochs
        .iter()
        .map(|e| e["branches"].as_array().map_or(0, |b| b.len()))
        .collect();
    assert_eq!(sizes, [4, 6, 3]);
    for e in epochs {
        assert_eq!(e["expected_total"], TOTAL, "{e:#}");
        assert_eq!(e["conserved"], true, "{e:#}");
    }
    assert!(epochs[0]["began"].is_null());
    assert_eq!(epochs[1]["began"]["snapshot"].as_u64(), Some(k1));
    assert_eq!(epochs[2]["began"]["snapshot"].as_u64(), Some(k2));
    assert_eq!(epochs[2]["began"]["from_epoch"], 1);
    // Each epoch's snapshot ids continue after the one it began from.
    let ids = |e: &Value| -> Vec<u64> {
        e["snapshots"]
            .as_array()
            .expect("ids")
            .iter()
            .filter_map(Value::as_u64)
            .collect()
    };
    assert!(ids(&epochs[0]).contains(&k1));
    assert!(ids(&epochs[1]).iter().all(|&i| i > k1) && ids(&epochs[1]).contains(&k2));
    assert!(ids(&epochs[2]).iter().all(|&i| i > k2));
    let current = completed_ids(&doc);
    assert_eq!(current, ids(&epochs[2]));
    let table = text(&c.snapctl(&["snapshots"]));
    assert!(
        table.contains(&format!("snapshot {k1} of epoch 0")),
        "{table}"
    );
    assert!(table.contains("epoch 2 (current):"), "{table}");

    // --epoch 1: the retired epoch's own snapshots.
    let out = c.snapctl(&["snapshots", "--json", "--epoch", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["epoch"], 1);
    let retired = completed_ids(&doc);
    assert_eq!(retired, ids(&epochs[1]));
    let out = c.snapctl(&["snapshots", "--epoch", "7"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("holds epochs 0, 1, 2"),
        "{}",
        text(&out)
    );

    // The report: the epochs table, the current epoch charted; --epoch 0 charts the first.
    let page = c.dir.path().join("report.html");
    let out = c.snapctl(&["report", "--out", page.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let html = std::fs::read_to_string(&page).expect("report");
    assert!(html.contains("<table id=\"epochs\">"), "{html}");
    assert_eq!(html.matches("<tr class=\"charted\"><td>2</td>").count(), 1);
    assert!(html.contains("epoch 2 · 3 branches"), "{html}");
    let out = c.snapctl(&["report", "--epoch", "0", "--out", page.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let html = std::fs::read_to_string(&page).expect("report");
    assert!(html.contains("epoch 0 · 4 branches"), "{html}");
}

fn small_cluster() -> (Cluster, u64, PathBuf, Vec<String>) {
    let mut c = Cluster::new(
        3,
        &["--transfer-interval", "0s", "--snapshot-interval", "200ms"],
    );
    c.start_all();
    run_snapshots(&c, 3);
    c.stop_all();
    let (k, _) = last_snapshot(&c);
    let list = c.dir.path().join("four.list");
    let mut four = c.addrs.clone();
    four.extend(new_addrs(1));
    write_list(&list, &four);
    (c, k, list, four)
}

/// Must-show 2: killed after every one of its durable writes, a reshape leaves the old cluster
/// (before its commit) or a committed one that no branch starts on (after it), never a mix, and
/// running it again finishes it with the same result as an uninterrupted run.
#[test]
fn a_reshape_killed_after_any_write_leaves_old_or_new_and_finishes_when_run_again() {
    let (c, k, list, four) = small_cluster();
    let pristine = c.dir.path().join("pristine");
    copy_dir(&c.data(), &pristine);
    let ks = k.to_string();
    let fund = format!("{}=1000,{}", four[3], four[0]);
    let args = [
        "--snapshot",
        &ks,
        "--to",
        list.to_str().unwrap(),
        "--fund",
        &fund,
        "--mint",
        "500",
    ];
    // The uninterrupted run, for comparison.
    let out = reshape(&c, &args, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let (code, want) = audit_of(&c, &list);
    assert_eq!(code, 0, "{want:#}");
    assert_eq!(want["expected_total"], 3_000_500);
    let want_balances = balances(&want);
    let mut committed = 0;
    let mut n = 1;
    loop {
        std::fs::remove_dir_all(c.data()).expect("clear");
        copy_dir(&pristine, &c.data());
        let crash = reshape(
            &c,
            &args,
            &[("SNAPBANK_RESHAPE_CRASH_AFTER", &n.to_string())],
        );
        if crash.status.success() {
            break; // fewer writes than n: the whole reshape ran
        }
        assert!(text(&crash).contains("test hook"), "{n}: {}", text(&crash));
        if c.data().join("reshape-in-progress").exists() {
            committed += 1;
            // Committed, unfinished: neither list's branches start, the audit refuses.
            let (code, _) = audit_raw(&c, &list);
            assert_eq!(code, 2, "after write {n}");
            let bank = Command::new(BANK)
                .arg(&four[0])
                .arg("--hosts")
                .arg(&list)
                .arg("--data-dir")
                .arg(c.data())
                .output()
                .expect("bank");
            assert!(!bank.status.success(), "after write {n}");
            assert!(
                text(&bank).contains("unfinished `snapctl reshape` to epoch 1"),
                "{}",
                text(&bank)
            );
        } else if c.data().join("reshape-staging").exists() || !c.data().join("epochs").exists() {
            // Not committed: the old cluster as it was.
            let (code, a) = c.audit();
            assert_eq!(code, 0, "after write {n}: {a:#}");
            assert_eq!(a["epoch"], 0);
            assert_eq!(a["expected_total"], 3_000_000);
        } else {
            // Killed after its last write: done (and running it again says so).
            let (code, a) = audit_of(&c, &list);
            assert_eq!(code, 0, "after write {n}: {a:#}");
        }
        let again = reshape(&c, &args, &[]);
        assert!(again.status.success(), "after write {n}: {}", text(&again));
        let (code, a) = audit_of(&c, &list);
        assert_eq!(code, 0, "after write {n}: {a:#}");
        assert_eq!(balances(&a), want_balances, "after write {n}");
        assert_eq!(a["epochs"][1]["began"]["consistent"], true, "{a:#}");
        assert!(!c.data().join("reshape-staging").exists());
        n += 1;
    }
    assert!(
        n > 10 && committed > 5,
        "{n} writes, {committed} after the commit"
    );
}

fn audit_raw(c: &Cluster, hosts: &Path) -> (i32, String) {
    let out = Command::new(SNAPCTL)
        .args(["audit", "--json", "--data-dir"])
        .arg(c.data())
        .arg("--hosts")
        .arg(hosts)
        .output()
        .expect("audit");
    (out.status.code().unwrap_or(-1), text(&out))
}

fn audit_of(c: &Cluster, hosts: &Path) -> (i32, Value) {
    audit_json(Path::new(SNAPCTL), &c.data(), hosts)
}

/// Every bad request is one line, exit 2, and writes nothing.
#[test]
fn bad_reshapes_are_one_line_and_write_nothing() {
    let (c, k, list, four) = small_cluster();
    let ks = k.to_string();
    let l = list.to_str().unwrap();
    let same = c.hosts();
    let same = same.to_str().unwrap();
    let too_much = format!("{}=99000000,{}", four[3], four[0]);
    let ok_fund = format!("{}=10,{}", four[3], four[0]);
    let not_new = format!("{}=10,{}", four[1], four[0]);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--snapshot", "999999", "--to", l, "--fund", &ok_fund],
            "is not a completed snapshot",
        ),
        (vec!["--snapshot", &ks, "--to", same], "nothing to reshape"),
        (
            vec!["--snapshot", &ks, "--to", l, "--fund", &too_much],
            "but it held",
        ),
        (
            vec!["--snapshot", &ks, "--to", l],
            "would begin with nothing",
        ),
        (
            vec![
                "--snapshot",
                &ks,
                "--to",
                l,
                "--fund",
                &not_new,
                "--fund",
                &ok_fund,
            ],
            "is no new branch",
        ),
        (
            vec![
                "--snapshot",
                &ks,
                "--to",
                l,
                "--fund",
                &ok_fund,
                "--give-to",
                &four[0],
            ],
            "no branch is removed",
        ),
        (
            vec!["--snapshot", &ks, "--to", l, "--fund", "x=1,y"],
            "is not an address",
        ),
        (
            vec!["--snapshot", &ks, "--to", "/nonexistent/list"],
            "cannot read",
        ),
    ];
    let before = listing(&c.data());
    for (args, want) in cases {
        let out = reshape(&c, &args, &[]);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {t}");
        assert!(t.contains(want), "{args:?}: {t}");
        assert!(
            t.lines().filter(|l| !l.trim().is_empty()).count() <= 2
                && t.lines()
                    .next()
                    .is_some_and(|l| l.starts_with("snapctl: error: ") || l.starts_with("error: ")),
            "{args:?}: {t}"
        );
        assert_eq!(listing(&c.data()), before, "{args:?} wrote something");
    }
    // What would stop it after its commit is refused before: a leftover epochs/0, a
    // directory where the new branch's store goes, a missing key file.
    let good = [
        "--snapshot",
        ks.as_str(),
        "--to",
        l,
        "--fund",
        ok_fund.as_str(),
    ];
    let in_the_way: Vec<(PathBuf, &str)> = vec![
        (c.data().join("epochs/0"), "exists already"),
        (
            c.data().join(four[3].replace(':', "_")),
            "is in the way of the new branch's store",
        ),
    ];
    for (dir, want) in in_the_way {
        std::fs::create_dir_all(&dir).expect("a directory in the way");
        let before = listing(&c.data());
        let out = reshape(&c, &good, &[]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(text(&out).contains(want), "{}", text(&out));
        assert_eq!(text(&out).trim().lines().count(), 1, "{}", text(&out));
        assert_eq!(listing(&c.data()), before);
        std::fs::remove_dir_all(&dir).expect("clear");
        if dir.ends_with("0") {
            std::fs::remove_dir(c.data().join("epochs")).expect("clear");
        }
    }
    let key = c.data().join("cluster.key");
    let aside = c.dir.path().join("cluster.key.aside");
    std::fs::rename(&key, &aside).expect("move the key aside");
    let before = listing(&c.data());
    let out = reshape(&c, &good, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("not found") && text(&out).contains("--insecure"),
        "{}",
        text(&out)
    );
    assert_eq!(listing(&c.data()), before);
    std::fs::rename(&aside, &key).expect("put the key back");
    let (code, a) = c.audit();
    assert_eq!(code, 0, "{a:#}");
    assert_eq!(a["epoch"], 0);
}

/// Every file under `dir`, sorted (a refused reshape adds or removes none; sled itself may
/// rewrite its files as it opens them to read).
fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A cluster whose hosts each hold only their own private keys (`keygen --per-host`): the
/// reshape refuses a key file that lacks a kept branch's private key (one line, nothing
/// written) and with the other hosts' files under `--old-keys` every kept branch keeps its key
/// pair; a key file of another cluster there is refused.
#[test]
fn per_host_key_files_keep_every_kept_branchs_key_pair() {
    use snapbank::secure::ClusterKey;
    use std::os::unix::fs::PermissionsExt;
    let (c, k, list, four) = small_cluster();
    let full_path = c.data().join("cluster.key");
    let full = ClusterKey::load(&full_path).expect("key file");
    let write = |path: &Path, key: &ClusterKey| {
        key.write(path, true).expect("write key");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("mode");
    };
    // This host's file holds no branch's private key (they all "live" elsewhere: 127.0.0.2).
    let other_host: std::net::IpAddr = "127.0.0.2".parse().expect("ip");
    let mine = c.dir.path().join("this-host.key");
    write(&mine, &full.for_host(other_host));
    let ks = k.to_string();
    let base = [
        "--snapshot",
        &ks,
        "--to",
        list.to_str().unwrap(),
        "--mint",
        "1000",
    ];
    let mut args: Vec<&str> = base.to_vec();
    args.extend(["--key", mine.to_str().unwrap()]);
    let before = listing(&c.data());
    let out = reshape(&c, &args, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("holds no private key for") && text(&out).contains("--old-keys"),
        "{}",
        text(&out)
    );
    assert_eq!(text(&out).trim().lines().count(), 1, "{}", text(&out));
    assert_eq!(listing(&c.data()), before);

    // A key file of another cluster among the old keys: refused, nothing written.
    let foreign = c.dir.path().join("foreign");
    std::fs::create_dir_all(&foreign).expect("dir");
    let hosts = snapbank::hosts::HostList::load(&c.hosts()).expect("host.list");
    write(
        &foreign.join("127.0.0.1.key"),
        &ClusterKey::generate(&hosts),
    );
    let mut bad = args.clone();
    bad.extend(["--old-keys", foreign.to_str().unwrap()]);
    let out = reshape(&c, &bad, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("is not of this cluster's key"),
        "{}",
        text(&out)
    );
    assert_eq!(listing(&c.data()), before);

    // With the other host's file: done, and the kept branches keep their key pairs.
    let old = c.dir.path().join("old-keys");
    std::fs::create_dir_all(&old).expect("dir");
    write(
        &old.join("127.0.0.1.key"),
        &full.for_host("127.0.0.1".parse().expect("ip")),
    );
    let per_host = c.dir.path().join("new-keys");
    std::fs::create_dir_all(&per_host).expect("dir");
    let mut good = args.clone();
    good.extend([
        "--old-keys",
        old.to_str().unwrap(),
        "--per-host",
        per_host.to_str().unwrap(),
    ]);
    let out = reshape(&c, &good, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let new = ClusterKey::load(&per_host.join("127.0.0.1.key")).expect("new per-host key");
    assert_eq!(new.branches.len(), four.len());
    for b in &full.branches {
        let n = new
            .branches
            .iter()
            .find(|n| n.addr == b.addr)
            .expect("kept");
        assert_eq!(n.public, b.public, "{}", b.addr);
        assert!(n.private.is_some() && n.private == b.private, "{}", b.addr);
    }
    assert!(new.branches.iter().all(|b| b.private.is_some()));
    let (code, a) = audit_of(&c, &list);
    assert_eq!(code, 0, "{a:#}");
    assert_eq!(a["epoch"], 1);
    // Epoch 0 purged: the record of it still ties down its cluster id and total.
    let out = Command::new(SNAPCTL)
        .args(["reshape", "--purge", "--data-dir"])
        .arg(c.data())
        .output()
        .expect("purge");
    assert!(out.status.success(), "{}", text(&out));
    let (code, a) = audit_of(&c, &list);
    assert_eq!(code, 0, "{a:#}");
    assert_eq!(a["epochs"][0]["stores"], "purged", "{a:#}");
    assert_eq!(a["epochs"][1]["began"]["checked_against"], "record");
    assert_eq!(a["epochs"][1]["began"]["consistent"], true, "{a:#}");
}
