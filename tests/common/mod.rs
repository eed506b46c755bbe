//! A loopback cluster of real `bank` processes for end-to-end tests: the test kit's
//! ([`snapbank_testkit`]) with this build's programs, and the helpers only tests need.
// Each test binary uses a part of this module (and of what it re-exports).
#![allow(dead_code, unused_imports)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

pub use snapbank_testkit::{fault_tools_available, wait_timeout, Bins, Cluster, Dir};

pub const BANK: &str = env!("CARGO_BIN_EXE_bank");
pub const SNAPCTL: &str = env!("CARGO_BIN_EXE_snapctl");
pub const START_BANK: &str = env!("CARGO_BIN_EXE_start_bank");

/// This build's programs.
pub fn bins() -> Bins {
    Bins {
        bank: BANK.into(),
        snapctl: SNAPCTL.into(),
        start_bank: START_BANK.into(),
    }
}

/// Ports free right now on 127.0.0.1 ([`snapbank_testkit::free_ports`]).
pub fn free_ports(n: usize) -> Vec<u16> {
    snapbank_testkit::free_ports(n).expect("free ports on 127.0.0.1")
}

/// The tests' constructors of the kit's [`Cluster`] (in a new temporary directory, with this
/// build's programs and a cluster key) and what only tests do with one.
pub trait TestCluster {
    /// `n` branches on 127.0.0.1, the first the initiator; `args` are passed to every bank.
    fn new(n: usize, args: &[&str]) -> Self;
    /// One branch per entry of `ips` (free ports), the first the initiator.
    fn on_ips(ips: &[&str], args: &[&str]) -> Self;
    /// Runs every branch for `ms` with `start_bank --for` (fast transfers, frequent snapshots),
    /// so each store holds moved money, and returns the audit of the stores, which must be
    /// consistent.
    fn populate(&self, ms: u64) -> serde_json::Value;
}

impl TestCluster for Cluster {
    fn new(n: usize, args: &[&str]) -> Cluster {
        Cluster::on_ips(&vec!["127.0.0.1"; n], args)
    }

    fn on_ips(ips: &[&str], args: &[&str]) -> Cluster {
        let dir = Dir::temp().expect("tempdir");
        let mut c = Cluster::create(bins(), dir, ips, true).expect("write host.list and the key");
        c.args = args.iter().map(|s| s.to_string()).collect();
        c
    }

    fn populate(&self, ms: u64) -> serde_json::Value {
        let out = Command::new(START_BANK)
            .arg("127.0.0.1")
            .arg("--hosts")
            .arg(self.hosts())
            .arg("--data-dir")
            .arg(self.data())
            .args(insecure_args())
            .args(["--for", &format!("{ms}ms"), "--settle", "300ms"])
            .args(["--transfer-interval", "1ms", "--snapshot-interval", "200ms"])
            .output()
            .expect("run start_bank");
        assert!(
            out.status.success(),
            "start_bank: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let (code, a) = self.audit();
        assert_eq!(code, 0, "{a:#}");
        assert!(
            a["transfers"].as_u64().unwrap_or(0) > 0,
            "no money moved: {a:#}"
        );
        a
    }
}

/// Applied-transfer counts from a branch's status lines ("…, applied N, …"), in order.
pub fn applied_counts(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains(": balance ") && !l.contains(" up: "))
        .filter_map(|l| {
            let rest = &l[l.find(", applied ")? + 10..];
            rest.split(',').next()?.trim().parse().ok()
        })
        .collect()
}

/// Runs a command, panicking with its output if it fails.
pub fn sh(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Ids of the snapshots the initiator logged as complete (and whether each conserved money).
pub fn completed_snapshots(log: &str) -> Vec<(u64, bool)> {
    snapbank_testkit::completed_snapshots(log)
        .into_iter()
        .map(|c| (c.id, c.conserved))
        .collect()
}

/// Balances logged at each start ("branch … up: balance N, …").
pub fn startup_balances(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find(" up: balance ")? + 13..];
            rest.split(',').next()?.trim().parse().ok()
        })
        .collect()
}

/// `--insecure` if this build's `bank` takes it (links with a cluster key otherwise need a key
/// file): for tests about something else than the key, run with it.
pub fn insecure_args() -> &'static [&'static str] {
    static ARGS: std::sync::OnceLock<&'static [&'static str]> = std::sync::OnceLock::new();
    ARGS.get_or_init(|| {
        let help = Command::new(BANK)
            .arg("--help")
            .output()
            .expect("bank --help");
        if String::from_utf8_lossy(&help.stdout).contains("--insecure") {
            &["--insecure"]
        } else {
            &[]
        }
    })
}

/// Copies a directory tree (a stopped branch's store).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("dir entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

pub fn sleep(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// The directory of the `bank` and `snapctl` to run instead of the cargo-built ones, from env
/// `SNAPBANK_BIN_DIR` (e.g. another commit's `target/release`, to run a test's faults against
/// that build).
pub fn bin_dir_override() -> Option<PathBuf> {
    std::env::var_os("SNAPBANK_BIN_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
}

/// `bank`: the cargo-built one, or the one in `SNAPBANK_BIN_DIR` (see [`bin_dir_override`]).
pub fn bank_bin() -> PathBuf {
    bin_dir_override().map_or_else(|| PathBuf::from(BANK), |d| d.join("bank"))
}

/// `snapctl`: the cargo-built one, or the one in `SNAPBANK_BIN_DIR` (see [`bin_dir_override`]).
pub fn snapctl_bin() -> PathBuf {
    bin_dir_override().map_or_else(|| PathBuf::from(SNAPCTL), |d| d.join("snapctl"))
}

/// The last line of a log that reports an error, a refusal or a panic (for failure messages).
pub fn last_error_line(log: &str) -> Option<&str> {
    log.lines().rev().find(|l| {
        let l = l.to_ascii_lowercase();
        l.contains("error") || l.contains("refus") || l.contains("panic")
    })
}

/// `n` free loopback ports for metrics, none of them a branch's.
pub fn metrics_addrs(c: &Cluster, n: usize) -> Vec<String> {
    free_ports(n + c.addrs.len())
        .into_iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .filter(|a| !c.addrs.contains(a))
        .take(n)
        .collect()
}

/// Starts branch `i` of `c` with `--metrics at` (besides the cluster's arguments).
pub fn start_with_metrics(c: &mut Cluster, i: usize, at: &str) {
    let common = c.args.clone();
    c.args.extend(["--metrics".to_string(), at.to_string()]);
    c.start(i);
    c.args = common;
}

/// `GET path` from `addr` over plain HTTP/1.0 (so that no server chunks the body): the status
/// code and the body.
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {raw:?}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("status line of {head:?}"))?;
    Ok((code, body.to_string()))
}

/// A finished command's stdout then stderr, for assertions and their messages.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `snapctl audit --json` of the stores in `data` against `hosts`: the exit code and the JSON
/// (`Null` when the output is none).
pub fn audit_json(
    snapctl: &std::path::Path,
    data: &std::path::Path,
    hosts: &std::path::Path,
) -> (i32, serde_json::Value) {
    let out = Command::new(snapctl)
        .args(["audit", "--json", "--data-dir"])
        .arg(data)
        .arg("--hosts")
        .arg(hosts)
        .output()
        .expect("run snapctl audit");
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), v)
}

/// Each branch's balance in an audit's JSON, in branch order.
pub fn audit_balances(a: &serde_json::Value) -> Vec<u64> {
    a["branches"]
        .as_array()
        .map(|b| b.iter().filter_map(|b| b["balance"].as_u64()).collect())
        .unwrap_or_default()
}
