//! A store put back in time (a disk that lied about a flush, a backup put back): the branch must
//! not carry on as if nothing happened. Either nobody had seen what it lost and the cluster runs
//! on exactly, or the branch stops with one line naming itself, the channel and both positions
//! (its healthy peers refuse it and stay up); `snapctl restore` then brings the cluster back to a
//! consistent state with the exact total.

mod common;

use common::*;
use std::time::Duration;

const TOTAL: u64 = 3_000_000;

/// Runs 3 branches at the default pace; copies branch 1's store while it is stopped, lets it
/// work `work_ms` more, then puts the copy back and starts it again.
fn put_back_after(work_ms: u64) {
    let mut c = Cluster::new(3, &["--snapshot-interval", "200ms"]);
    c.start_all();
    assert!(
        c.wait_log(0, Duration::from_secs(20), |l| completed_snapshots(l).len()
            >= 3),
        "snapshots complete: {}",
        c.log(0)
    );
    assert!(c.stop(1).success(), "{}", c.log(1));
    let backup = c.dir.path().join("backup-of-branch-1");
    copy_dir(&c.store_dir(1), &backup);
    c.start(1);
    sleep(work_ms);
    c.kill9(1);
    std::fs::remove_dir_all(c.store_dir(1)).expect("remove the store");
    copy_dir(&backup, &c.store_dir(1));
    let log_before = c.log(1).len();
    c.start(1);

    let me = c.addr(1);
    let mut child = c.children[1].take().expect("branch 1 runs");
    let stopped = wait_timeout(&mut child, Duration::from_secs(20));
    match stopped {
        Some(st) => {
            assert!(!st.success(), "a branch behind the cluster exits non-zero");
            let log = c.log(1);
            let last = log[log_before..]
                .lines()
                .last()
                .unwrap_or_default()
                .to_string();
            assert!(
                last.contains("bank: error:")
                    && last.contains("store is behind")
                    && last.contains(&format!("{me}: store is behind"))
                    && last.contains(&format!("{me}'s store has"))
                    && last.contains("channel")
                    && last.contains("snapctl restore"),
                "one line naming the branch, the channel, both positions and the remedy: {last}"
            );
            println!("branch {me} stopped: {last}");
            // Its healthy peers were never the ones blamed, and are still up.
            for i in [0, 2] {
                let peer_log = c.log(i);
                assert!(
                    !peer_log.contains("this branch stops"),
                    "healthy branch {} blamed itself: {peer_log}",
                    c.addr(i)
                );
                let pid = c.pid(i);
                assert!(
                    std::path::Path::new(&format!("/proc/{pid}")).exists(),
                    "healthy branch {} is up",
                    c.addr(i)
                );
            }
            c.stop_all();
            let out = c.snapctl(&["snapshots", "--json"]);
            let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
            let k = doc["completed"]
                .as_array()
                .and_then(|l| l.last())
                .and_then(|g| g["id"].as_u64())
                .expect("a completed snapshot")
                .to_string();
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
                    >= before + 3),
                "snapshots complete after the restore"
            );
        }
        None => {
            // Nobody had seen what the copy lacks: it carried on exactly.
            c.children[1] = Some(child);
            println!("branch {me} carried on from its older store");
            sleep(1000);
        }
    }
    c.stop_all();
    let (code, a) = c.audit();
    assert_eq!(code, 0, "{a:#}");
    assert_eq!(a["consistent"], true, "{a:#}");
    assert_eq!(a["current_total"], TOTAL, "{a:#}");
    assert_eq!(a["expected_total"], TOTAL, "{a:#}");
}

#[test]
fn a_store_put_back_after_half_a_second_of_work_stops_its_branch_or_runs_on_exactly() {
    put_back_after(500);
}

#[test]
fn a_store_put_back_after_several_seconds_of_work_stops_its_branch_or_runs_on_exactly() {
    put_back_after(4000);
}
