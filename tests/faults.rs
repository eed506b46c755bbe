//! Real faults on real processes: an nftables partition on loopback, and several hosts in network
//! namespaces. Need root, nftables and iproute2; outside CI they skip with a visible message.

mod common;

use common::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Drops all traffic to and from one loopback address while alive (recipe A of FAULTS.md).
struct Partition {
    table: String,
}

impl Partition {
    fn isolate(ip: &str) -> Partition {
        let table = format!("snapbank_part_{}", std::process::id());
        sh("nft", &["add", "table", "inet", &table]);
        let p = Partition { table };
        sh(
            "nft",
            &[
                "add",
                "chain",
                "inet",
                &p.table,
                "out",
                "{ type filter hook output priority 0; policy accept; }",
            ],
        );
        for dir in ["saddr", "daddr"] {
            sh(
                "nft",
                &[
                    "add", "rule", "inet", &p.table, "out", "ip", dir, ip, "drop",
                ],
            );
        }
        p
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}

/// The original's "pull the Ethernet cable": one branch cut off at full speed mid-snapshot.
#[test]
fn partitioned_branch_holds_snapshots_until_healed() {
    if !fault_tools_available("partitioned_branch_holds_snapshots_until_healed") {
        return;
    }
    let ips = ["127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.14"];
    let mut c = Cluster::on_ips(
        &ips,
        &[
            "--transfer-interval",
            "0s",
            "--snapshot-interval",
            "200ms",
            "--snapshot-warn-after",
            "1s",
            "--status-interval",
            "250ms",
        ],
    );
    c.start_all();
    assert!(
        c.wait_log(0, Duration::from_secs(20), |l| completed_snapshots(l).len()
            >= 3)
    );

    let cut = Partition::isolate(ips[3]);
    sleep(1000);
    let done_before = completed_snapshots(&c.log(0)).len();
    let applied_before = *applied_counts(&c.log(3)).last().unwrap_or(&0);
    sleep(3000);
    let done_during = completed_snapshots(&c.log(0)).len();
    let applied_during = *applied_counts(&c.log(3)).last().unwrap_or(&0);
    assert_eq!(
        done_during, done_before,
        "no snapshot completes while a branch is cut off"
    );
    assert_eq!(
        applied_during, applied_before,
        "transfers to the cut branch pause"
    );
    let log0 = c.log(0);
    assert!(
        log0.lines()
            .any(|l| l.contains("pending for") && l.contains(&c.addr(3))),
        "the initiator reports what the snapshot waits for:\n{log0}"
    );
    drop(cut);

    assert!(
        c.wait_log(0, Duration::from_secs(40), |l| completed_snapshots(l).len()
            >= done_during + 3),
        "snapshots complete after the heal:\n{}",
        c.log(0)
    );
    assert!(
        c.wait_log(3, Duration::from_secs(20), |l| applied_counts(l).last()
            > Some(&applied_during)),
        "transfers to the healed branch resume"
    );
    c.stop_all();
    let ids: Vec<u64> = completed_snapshots(&c.log(0)).iter().map(|s| s.0).collect();
    let last = *ids.last().unwrap_or(&0);
    assert_eq!(
        ids,
        (1..=last).collect::<Vec<_>>(),
        "the held-up snapshots completed too"
    );
    let (code, a) = c.audit();
    assert_eq!(code, 0, "{a:#}");
    assert_eq!(a["consistent"], true);
    assert!(a["snapshots_checked"].as_u64().unwrap_or(0) >= last);
}

/// Several hosts in network namespaces on a bridge (recipe B of FAULTS.md).
struct Hosts {
    tag: String,
    count: usize,
}

impl Hosts {
    fn new(count: usize) -> Hosts {
        let tag = format!("{}", std::process::id());
        let h = Hosts { tag, count };
        let sw = h.sw();
        sh("ip", &["netns", "add", &sw]);
        sh("ip", &["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        sh("ip", &["-n", &sw, "link", "set", "br0", "up"]);
        for i in 1..=count {
            let ns = h.ns(i);
            let port = format!("p{i}");
            sh("ip", &["netns", "add", &ns]);
            sh(
                "ip",
                &[
                    "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                    "netns", &sw,
                ],
            );
            sh("ip", &["-n", &sw, "link", "set", &port, "master", "br0"]);
            sh("ip", &["-n", &sw, "link", "set", &port, "up"]);
            sh(
                "ip",
                &[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("10.99.0.{i}/24"),
                    "dev",
                    "eth0",
                ],
            );
            sh("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
            sh("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        }
        h
    }

    fn sw(&self) -> String {
        format!("sbsw{}", self.tag)
    }

    fn ns(&self, i: usize) -> String {
        format!("sbh{i}_{}", self.tag)
    }

    fn link(&self, i: usize, up: bool) {
        sh(
            "ip",
            &[
                "-n",
                &self.sw(),
                "link",
                "set",
                &format!("p{i}"),
                if up { "up" } else { "down" },
            ],
        );
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for i in 1..=self.count {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(i)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.sw()])
            .status();
    }
}

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The original's two-machine example, with three hosts, two branches each, one shared host.list,
/// `start_bank <its IP>` on each, and one host's link taken down and up mid-run.
#[test]
fn multi_host_cluster_in_namespaces_survives_a_link_down() {
    if !fault_tools_available("multi_host_cluster_in_namespaces_survives_a_link_down") {
        return;
    }
    let hosts = Hosts::new(3);
    let dir = tempfile::tempdir().expect("tmp");
    let list = dir.path().join("host.list");
    let mut text = String::new();
    for i in 1..=3 {
        for port in [7000, 7001] {
            let s = if i == 1 && port == 7000 { ":S" } else { "" };
            text.push_str(&format!("10.99.0.{i}:{port}{s} "));
        }
        text.push('\n');
    }
    std::fs::write(&list, text).expect("write host.list");
    // One key file per host, each with the private keys of that host's branches only.
    let keys = dir.path().join("keys");
    let out = Command::new(SNAPCTL)
        .args(["keygen", "--hosts"])
        .arg(&list)
        .arg("--per-host")
        .arg(&keys)
        .output()
        .expect("snapctl keygen");
    assert!(out.status.success(), "{out:?}");
    let data = dir.path().join("data");
    let logs: Vec<std::path::PathBuf> = (1..=3)
        .map(|i| dir.path().join(format!("host{i}.log")))
        .collect();
    let mut procs = Procs(Vec::new());
    for i in 1..=3 {
        let log = std::fs::File::create(&logs[i - 1]).expect("log");
        // Everything that talks to a namespace address runs inside a namespace.
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &hosts.ns(i),
                START_BANK,
                &format!("10.99.0.{i}"),
            ])
            .arg("--hosts")
            .arg(&list)
            .arg("--data-dir")
            .arg(&data)
            .arg("--key")
            .arg(keys.join(format!("10.99.0.{i}.key")))
            .args([
                "--transfer-interval",
                "0s",
                "--snapshot-interval",
                "200ms",
                "--snapshot-warn-after",
                "1s",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone"))
            .stderr(log)
            .spawn()
            .expect("spawn start_bank in a namespace");
        procs.0.push(child);
    }
    let read = |i: usize| std::fs::read_to_string(&logs[i]).unwrap_or_default();
    let wait_snaps = |n: usize, t: u64| {
        let end = Instant::now() + Duration::from_secs(t);
        while Instant::now() < end {
            if completed_snapshots(&read(0)).len() >= n {
                return true;
            }
            sleep(100);
        }
        false
    };
    assert!(
        wait_snaps(3, 30),
        "mesh of 6 branches on 3 hosts takes snapshots:\n{}",
        read(0)
    );
    hosts.link(2, false);
    sleep(1000);
    let during = completed_snapshots(&read(0)).len();
    sleep(2500);
    assert_eq!(
        completed_snapshots(&read(0)).len(),
        during,
        "host 2 down holds snapshots"
    );
    hosts.link(2, true);
    assert!(
        wait_snaps(during + 3, 40),
        "snapshots resume after the link is up:\n{}",
        read(0)
    );
    for c in &procs.0 {
        sh("kill", &["-TERM", &c.id().to_string()]);
    }
    for (i, c) in procs.0.iter_mut().enumerate() {
        let st = wait_timeout(c, Duration::from_secs(30)).expect("start_bank exits");
        assert!(st.success(), "host {} start_bank: {st}\n{}", i + 1, read(i));
    }
    let out = Command::new(SNAPCTL)
        .args(["audit", "--json", "--hosts"])
        .arg(&list)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .expect("snapctl");
    let a: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(out.status.code(), Some(0), "{a:#}");
    assert_eq!(a["consistent"], true);
    assert_eq!(a["expected_total"], 6_000_000);
    assert!(a["snapshots_checked"].as_u64().unwrap_or(0) >= 6);
}
