//! A loopback cluster of real `bank` processes for end-to-end tests.
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub const BANK: &str = env!("CARGO_BIN_EXE_bank");
pub const SNAPCTL: &str = env!("CARGO_BIN_EXE_snapctl");
pub const START_BANK: &str = env!("CARGO_BIN_EXE_start_bank");

/// Ports free right now on 127.0.0.1 (the listeners are closed again before returning).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub addrs: Vec<String>,
    pub children: Vec<Option<Child>>,
    pub args: Vec<String>,
}

impl Cluster {
    /// `n` branches on 127.0.0.1, the first the initiator; `args` are passed to every bank.
    pub fn new(n: usize, args: &[&str]) -> Cluster {
        Cluster::on_ips(&vec!["127.0.0.1"; n], args)
    }

    /// One branch per entry of `ips` (free ports), the first the initiator.
    pub fn on_ips(ips: &[&str], args: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports = free_ports(ips.len());
        let addrs: Vec<String> = ips
            .iter()
            .zip(&ports)
            .map(|(ip, p)| format!("{ip}:{p}"))
            .collect();
        let text: String = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| {
                if i == 0 {
                    format!("{a}:S\n")
                } else {
                    format!("{a}\n")
                }
            })
            .collect();
        std::fs::write(dir.path().join("host.list"), &text).expect("write host.list");
        // The cluster key, where bank looks by default (DIR/cluster.key).
        let hosts = snapbank::hosts::HostList::parse(&text, "host.list").expect("host.list");
        snapbank::secure::ClusterKey::generate(&hosts)
            .write(&dir.path().join("data").join("cluster.key"), false)
            .expect("write the cluster key");
        Cluster {
            dir,
            addrs,
            children: (0..ips.len()).map(|_| None).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
        }
    }

    pub fn hosts(&self) -> PathBuf {
        self.dir.path().join("host.list")
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn addr(&self, i: usize) -> String {
        self.addrs[i].clone()
    }

    pub fn store_dir(&self, i: usize) -> PathBuf {
        self.data().join(self.addrs[i].replace(':', "_"))
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("bank{i}.log"))
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    pub fn start(&mut self, i: usize) {
        assert!(self.children[i].is_none(), "branch {i} already running");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .expect("open log");
        let err = log.try_clone().expect("clone log");
        let child = Command::new(BANK)
            .arg(self.addr(i))
            .arg("--hosts")
            .arg(self.hosts())
            .arg("--data-dir")
            .arg(self.data())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("spawn bank");
        self.children[i] = Some(child);
    }

    pub fn start_all(&mut self) {
        for i in 0..self.addrs.len() {
            self.start(i);
        }
    }

    pub fn pid(&self, i: usize) -> i32 {
        self.children[i].as_ref().expect("running").id() as i32
    }

    pub fn signal(&self, i: usize, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid(i).to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig} branch {i}");
    }

    /// kill -9 and reap.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self, i: usize) -> ExitStatus {
        self.signal(i, "TERM");
        let mut c = self.children[i].take().expect("running");
        wait_timeout(&mut c, Duration::from_secs(30)).expect("bank exits after SIGTERM")
    }

    pub fn stop_all(&mut self) {
        for i in 0..self.addrs.len() {
            if self.children[i].is_some() {
                self.signal(i, "TERM");
            }
        }
        for i in 0..self.addrs.len() {
            if let Some(mut c) = self.children[i].take() {
                let st = wait_timeout(&mut c, Duration::from_secs(30))
                    .expect("bank exits after SIGTERM");
                assert!(st.success(), "branch {i} exit status {st}\n{}", self.log(i));
            }
        }
    }

    pub fn snapctl(&self, args: &[&str]) -> Output {
        Command::new(SNAPCTL)
            .args(args)
            .arg("--data-dir")
            .arg(self.data())
            .arg("--hosts")
            .arg(self.hosts())
            .output()
            .expect("run snapctl")
    }

    /// `snapctl audit --json`: (exit code, parsed report).
    pub fn audit(&self) -> (i32, serde_json::Value) {
        let out = self.snapctl(&["audit", "--json"]);
        let code = out.status.code().unwrap_or(-1);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "audit output is not JSON ({e}): {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (code, v)
    }

    /// Waits until `pred(log of branch i)` holds.
    pub fn wait_log(&self, i: usize, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if pred(&self.log(i)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn wait_timeout(c: &mut Child, t: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + t;
    while Instant::now() < end {
        if let Ok(Some(st)) = c.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    None
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

/// Whether fault-injection tests can run here (root with nft and ip). Outside CI a missing
/// prerequisite skips the test with a visible message; in CI (`CI` set) it fails the test.
pub fn fault_tools_available(test: &str) -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let has = |tool: &str, flag: &str| {
        Command::new(tool)
            .arg(flag)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    let missing: Vec<&str> = [
        ("root", root),
        ("nft", has("nft", "--version")),
        ("ip", has("ip", "-V")),
    ]
    .iter()
    .filter(|(_, ok)| !ok)
    .map(|(n, _)| *n)
    .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "SKIPPED {test}: needs {} (install Debian nftables and iproute2, run as root)",
        missing.join(", ")
    );
    if std::env::var_os("CI").is_some() {
        panic!("{msg}; CI must run it");
    }
    eprintln!("{msg}");
    false
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
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find("snapshot ")? + 9..];
            let (id, rest) = rest.split_once(' ')?;
            if !rest.starts_with("complete") {
                return None;
            }
            Some((id.parse().ok()?, !l.contains("NOT CONSERVED")))
        })
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

impl Cluster {
    /// Runs every branch for `ms` with `start_bank --for` (fast transfers, frequent snapshots),
    /// so each store holds moved money, and returns the audit of the stores, which must be
    /// consistent.
    pub fn populate(&self, ms: u64) -> serde_json::Value {
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

impl Cluster {
    /// Like [`Cluster::start`], with the `bank` program at `bank`.
    pub fn start_with(&mut self, i: usize, bank: &std::path::Path) {
        assert!(self.children[i].is_none(), "branch {i} already running");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .expect("open log");
        let err = log.try_clone().expect("clone log");
        let child = Command::new(bank)
            .arg(self.addr(i))
            .arg("--hosts")
            .arg(self.hosts())
            .arg("--data-dir")
            .arg(self.data())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bank.display()));
        self.children[i] = Some(child);
    }

    /// The exit status of branch `i` if it has exited by itself (reaped; it is then no longer
    /// running), `None` while it runs.
    pub fn exited(&mut self, i: usize) -> Option<ExitStatus> {
        let st = self.children[i].as_mut()?.try_wait().expect("try_wait")?;
        self.children[i] = None;
        Some(st)
    }

    /// `snapctl audit --json` of the stores with the `snapctl` program at `snapctl`: its exit
    /// code and parsed report, or what it printed instead of JSON.
    pub fn audit_with(
        &self,
        snapctl: &std::path::Path,
    ) -> (i32, Result<serde_json::Value, String>) {
        let out = Command::new(snapctl)
            .args(["audit", "--json", "--data-dir"])
            .arg(self.data())
            .arg("--hosts")
            .arg(self.hosts())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", snapctl.display()));
        let code = out.status.code().unwrap_or(-1);
        let report = serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "audit output is not JSON ({e}): {} {}",
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )
        });
        (code, report)
    }
}
