//! A cluster of real `bank` processes on loopback addresses.
//!
//! Its directory holds `host.list` (the first branch the initiator), `data/` (the stores, one
//! directory per branch, and `data/cluster.key` unless insecure) and `bank<i>.log` (each branch's
//! stdout and stderr, appended to across restarts). Every branch runs as
//! `bank ADDR --hosts DIR/host.list --data-dir DIR/data ARGS... EXTRA...`.

use crate::process::{send, signal_named, wait_timeout, wait_until};
use crate::{free_ports, Completed};
use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// The programs a cluster runs. Tests pass cargo's (`env!("CARGO_BIN_EXE_bank")`, ...); the
/// tools take the ones beside their own executable.
#[derive(Clone, Debug)]
pub struct Bins {
    pub bank: PathBuf,
    pub snapctl: PathBuf,
    pub start_bank: PathBuf,
}

impl Bins {
    /// `bank`, `snapctl` and `start_bank` in `dir`.
    pub fn in_dir(dir: &Path) -> Bins {
        Bins {
            bank: dir.join("bank"),
            snapctl: dir.join("snapctl"),
            start_bank: dir.join("start_bank"),
        }
    }

    /// The programs in the directory of the running executable (`target/release/` for a tool
    /// built there).
    pub fn beside_current_exe() -> io::Result<Bins> {
        let exe = std::env::current_exe()?;
        let dir = exe.parent().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} has no directory", exe.display()),
            )
        })?;
        Ok(Bins::in_dir(dir))
    }
}

/// Where a cluster keeps its files.
#[derive(Debug)]
pub enum Dir {
    /// A new temporary directory, removed with the cluster.
    Temp(tempfile::TempDir),
    /// A directory that stays.
    Kept(PathBuf),
}

impl Dir {
    pub fn temp() -> io::Result<Dir> {
        tempfile::tempdir().map(Dir::Temp)
    }

    pub fn path(&self) -> &Path {
        match self {
            Dir::Temp(t) => t.path(),
            Dir::Kept(p) => p,
        }
    }
}

/// The text of a host.list of `addrs`, the first the initiator (`:S`).
pub fn host_list_text(addrs: &[String]) -> String {
    addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{a}{}\n", if i == 0 { ":S" } else { "" }))
        .collect()
}

/// How a branch ended when the cluster stopped it.
pub type Stopped = (usize, Option<ExitStatus>);

/// Branches, their files and their processes. Dropping it kills (SIGKILL) and reaps every branch
/// still running.
pub struct Cluster {
    pub bins: Bins,
    pub dir: Dir,
    /// `IP:PORT` of each branch, in host.list order.
    pub addrs: Vec<String>,
    /// The running process of each branch.
    pub children: Vec<Option<Child>>,
    /// Arguments for every bank, after `--hosts` and `--data-dir`.
    pub args: Vec<String>,
    /// When each branch was last started (monotonic and wall clock).
    pub started_at: Vec<Option<(Instant, SystemTime)>>,
    /// The kernel kills (SIGKILL) a branch when the thread that started it ends (the tools set
    /// it, so a `kill -9` of the tool leaves no branch behind; a test thread would kill
    /// branches it hands over).
    pub kill_with_parent: bool,
}

impl Cluster {
    /// One branch per entry of `ips`, each on a [`free_ports`] port, the first the initiator:
    /// writes `dir/host.list` and, if `key`, a new cluster key at `dir/data/cluster.key`
    /// (replacing one left there). No branch runs yet.
    pub fn create(bins: Bins, dir: Dir, ips: &[impl AsRef<str>], key: bool) -> io::Result<Cluster> {
        let ports = free_ports(ips.len())?;
        let addrs: Vec<String> = ips
            .iter()
            .zip(&ports)
            .map(|(ip, p)| format!("{}:{p}", ip.as_ref()))
            .collect();
        let text = host_list_text(&addrs);
        let root = dir.path();
        snapbank::durable::create_dir_all(&root.join("data"))?;
        snapbank::durable::write_atomic(&root.join("host.list"), text.as_bytes(), None)?;
        if key {
            let hosts = snapbank::hosts::HostList::parse(&text, "host.list")
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
            snapbank::secure::ClusterKey::generate(&hosts)
                .write(&root.join("data").join("cluster.key"), true)
                .map_err(|e| io::Error::other(e.to_string()))?;
        }
        let n = addrs.len();
        Ok(Cluster {
            bins,
            dir,
            addrs,
            children: (0..n).map(|_| None).collect(),
            args: Vec::new(),
            started_at: vec![None; n],
            kill_with_parent: false,
        })
    }

    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
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

    /// Branch `i`'s store directory (`data/IP_PORT`).
    pub fn store_dir(&self, i: usize) -> PathBuf {
        self.data().join(self.addrs[i].replace(':', "_"))
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("bank{i}.log"))
    }

    /// Branch `i`'s log so far (empty if there is none).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    /// The snapshots the initiator's log reports complete.
    pub fn completed(&self) -> Vec<Completed> {
        crate::completed_snapshots(&self.log(0))
    }

    /// Starts branch `i` with the program at `bank`, this cluster's arguments and then `extra`.
    pub fn try_start_with(&mut self, i: usize, bank: &Path, extra: &[&OsStr]) -> io::Result<()> {
        if self.children[i].is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("branch {} is already running", self.addrs[i]),
            ));
        }
        let path = self.log_path(i);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))?;
        let err = log.try_clone()?;
        let mut cmd = Command::new(bank);
        cmd.arg(self.addr(i))
            .arg("--hosts")
            .arg(self.hosts())
            .arg("--data-dir")
            .arg(self.data())
            .args(&self.args)
            .args(extra);
        if self.kill_with_parent {
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                use std::os::unix::process::CommandExt;
                cmd.pre_exec(|| {
                    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                        .map_err(io::Error::from)
                });
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("start {}: {e}", bank.display())))?;
        self.started_at[i] = Some((Instant::now(), SystemTime::now()));
        self.children[i] = Some(child);
        Ok(())
    }

    /// Starts branch `i` (`bins.bank`).
    pub fn try_start(&mut self, i: usize) -> io::Result<()> {
        let bank = self.bins.bank.clone();
        self.try_start_with(i, &bank, &[])
    }

    /// Starts branch `i`; panics if it runs already or cannot start.
    pub fn start(&mut self, i: usize) {
        self.try_start(i)
            .unwrap_or_else(|e| panic!("start branch {i}: {e}"));
    }

    /// Like [`Cluster::start`], with the `bank` program at `bank`.
    pub fn start_with(&mut self, i: usize, bank: &Path) {
        self.try_start_with(i, bank, &[])
            .unwrap_or_else(|e| panic!("start branch {i}: {e}"));
    }

    pub fn start_all(&mut self) {
        for i in 0..self.len() {
            self.start(i);
        }
    }

    /// Branch `i`'s pid; panics if it is not running.
    pub fn pid(&self, i: usize) -> i32 {
        let id = self.children[i].as_ref().expect("running").id();
        i32::try_from(id).expect("a pid fits i32")
    }

    /// The pid of branch `i` if it is a running child of ours (started, not exited).
    pub fn live_pid(&mut self, i: usize) -> Option<u32> {
        let c = self.children[i].as_mut()?;
        match c.try_wait() {
            Ok(None) => Some(c.id()),
            _ => None,
        }
    }

    /// Sends `kill -NAME` (`TERM`, `STOP`, `CONT`, ...) to branch `i`; panics if it is not
    /// running or the signal cannot be sent.
    pub fn signal(&self, i: usize, name: &str) {
        let sig = signal_named(name).unwrap_or_else(|| panic!("no signal {name}"));
        let c = self.children[i].as_ref().expect("running");
        send(c, sig).unwrap_or_else(|e| panic!("kill -{name} branch {i}: {e}"));
    }

    /// `kill -9` branch `i` and reap it; how it ended (`None`: it was not running).
    pub fn kill9(&mut self, i: usize) -> Option<ExitStatus> {
        let mut c = self.children[i].take()?;
        let _ = c.kill();
        c.wait().ok()
    }

    /// The exit status of branch `i` if it has exited by itself (reaped; it is then no longer
    /// running), `None` while it runs.
    pub fn exited(&mut self, i: usize) -> Option<ExitStatus> {
        let st = self.children[i].as_mut()?.try_wait().ok()??;
        self.children[i] = None;
        Some(st)
    }

    /// SIGTERM and wait for branch `i` to exit; panics if it does not within 30 s.
    pub fn stop(&mut self, i: usize) -> ExitStatus {
        self.signal(i, "TERM");
        let mut c = self.children[i].take().expect("running");
        wait_timeout(&mut c, Duration::from_secs(30)).expect("bank exits after SIGTERM")
    }

    /// SIGTERM to every running branch, then waits up to `timeout` from the signal for them to
    /// exit, and kills (SIGKILL) and reaps those still running then. Returns each branch that
    /// was running and how it ended (`None`: killed after the timeout).
    pub fn terminate_all(&mut self, timeout: Duration) -> Vec<Stopped> {
        for c in self.children.iter().flatten() {
            let _ = send(c, nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        let mut stopped = Vec::new();
        for (i, slot) in self.children.iter_mut().enumerate() {
            if let Some(mut c) = slot.take() {
                stopped.push((i, wait_until(&mut c, deadline)));
            }
        }
        stopped
    }

    /// SIGTERM every branch; panics unless each exits 0 within 30 s.
    pub fn stop_all(&mut self) {
        for (i, st) in self.terminate_all(Duration::from_secs(30)) {
            let st = st.expect("bank exits after SIGTERM");
            assert!(st.success(), "branch {i} exit status {st}\n{}", self.log(i));
        }
    }

    /// Runs `snapctl ARGS --data-dir DATA --hosts HOST.LIST`.
    pub fn snapctl(&self, args: &[&str]) -> Output {
        Command::new(&self.bins.snapctl)
            .args(args)
            .arg("--data-dir")
            .arg(self.data())
            .arg("--hosts")
            .arg(self.hosts())
            .output()
            .expect("run snapctl")
    }

    /// `snapctl audit --json`: (exit code, parsed report); panics if it printed no JSON.
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

    /// `snapctl audit --json` of the stores with the `snapctl` program at `snapctl`: its exit
    /// code and parsed report, or what it printed instead of JSON.
    pub fn audit_with(&self, snapctl: &Path) -> (i32, Result<serde_json::Value, String>) {
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
