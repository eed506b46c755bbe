//! Power loss on real processes: every store lives on [LazyFS](../tools/lazyfs/README.md), a FUSE
//! file system that keeps written data in its own page cache until `fsync`/`fdatasync` and drops
//! whatever is not synced on `lazyfs::clear-cache`, as a power cut would. Four branches run at full
//! speed with snapshots every 200 ms; each round cuts the power and restarts, then the test checks
//! that no branch refused a restart, snapshots complete after the last cut, and the audit of the
//! stopped stores conserves money.
//!
//! - `whole_host_power_cuts_lose_nothing`: all four stores on ONE mount; each round kill -9s all
//!   four, clears the cache and restarts them.
//! - `one_branch_power_cuts_lose_nothing`: a mount per branch; each round one branch (random from
//!   a seed that is printed) is kill -9'd, its mount's cache cleared, and it restarts while the
//!   others keep running.
//! - `reshape_power_cuts_leave_the_old_cluster_or_the_new_one`: a `snapctl reshape` on a
//!   LazyFS data directory, killed after each of its durable writes in turn and the cache
//!   cleared: the state it reached survives the cut, and running it again finishes it.
//!
//! Needs root and `/dev/fuse`; outside CI they print `SKIPPED …` and pass, with `CI` set they fail.
//! The tests of this file run one at a time (each keeps two cores busy).
//!
//! Environment:
//! - `LAZYFS_BIN`: the LazyFS binary (`.ci/run` builds it and sets this); without it the test runs
//!   `tools/lazyfs/build.sh`, which returns at once when `$LAZYFS_CACHE` (default
//!   `/tmp/lazyfs-cache`) holds a build, or builds it there (apt-get, about 40 s).
//! - `SNAPBANK_BIN_DIR`: a directory with the `bank` and `snapctl` to test instead of the
//!   cargo-built ones. This is how the test shows it has teeth: run it against a build without
//!   fsync (the commit before durability, 72d1688) and it fails:
//!
//!   ```text
//!   git worktree add --detach /work/scratch-h1 72d1688
//!   (cd /work/scratch-h1 && cargo build --release --bin bank --bin snapctl)
//!   SNAPBANK_BIN_DIR=/work/scratch-h1/target/release cargo test --release --test power_loss
//!   ```
//! - `POWER_LOSS_ROUNDS` (5), `POWER_LOSS_UP_MS` (4000: how long the cluster runs between cuts),
//!   `POWER_LOSS_SEED` (random: the one-branch test's choice of victims);
//!   `POWER_LOSS_KILL_ONLY=1`: a control, kill -9 without clearing the cache (nothing is lost).
//!   `tools/power-soak.sh` runs these tests for hundreds of rounds.
//!
//! Each test prints one line starting `power_loss:` with its figures and its verdict.

mod common;

use common::*;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const BRANCHES: usize = 4;
const BANK_ARGS: &[&str] = &[
    "--transfer-interval",
    "0s",
    "--snapshot-interval",
    "200ms",
    "--status-interval",
    "1s",
];
/// Snapshots that must complete after the last cut.
const SNAPSHOTS_AFTER_LAST_CUT: usize = 3;

/// The tests of this file run one at a time: each keeps both cores busy.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn whole_host_power_cuts_lose_nothing() {
    run("whole_host_power_cuts_lose_nothing", Layout::OneMount);
}

#[test]
fn one_branch_power_cuts_lose_nothing() {
    run("one_branch_power_cuts_lose_nothing", Layout::MountPerBranch);
}

#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// Every store on one mount; a cut takes down every branch.
    OneMount,
    /// A mount per branch; a cut takes down one branch.
    MountPerBranch,
}

/// One LazyFS mount: `mnt` shows `root` through LazyFS's cache. Unmounted (and the LazyFS process
/// ended) when dropped; drop it only once nothing uses the mount.
struct LazyFs {
    mnt: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// The command fifo, held open so a command written is never discarded.
    commands: Option<File>,
    /// Lines LazyFS writes to its completion fifo.
    completed: Receiver<String>,
}

impl LazyFs {
    /// Mounts `root` at `mnt` with LazyFS `bin` (its fifos, config and log go in `work`, named
    /// after `name`), and waits until the mount is up.
    fn mount(bin: &Path, work: &Path, name: &str, root: &Path, mnt: &Path) -> LazyFs {
        let fifo = work.join(format!("lazyfs.{name}.fifo"));
        let done = work.join(format!("lazyfs.{name}.done"));
        let config = work.join(format!("lazyfs.{name}.toml"));
        let log = work.join(format!("lazyfs.{name}.log"));
        std::fs::create_dir_all(root).expect("create the LazyFS root");
        std::fs::create_dir_all(mnt).expect("create the LazyFS mount point");
        sh(
            "mkfifo",
            &[&fifo.to_string_lossy(), &done.to_string_lossy()],
        );
        std::fs::write(
            &config,
            format!(
                "[faults]\nfifo_path=\"{}\"\nfifo_path_completed=\"{}\"\n\
                 [cache]\napply_eviction=false\n\
                 [cache.simple]\ncustom_size=\"1gb\"\nblocks_per_page=1\n\
                 [filesystem]\nlog_all_operations=false\nlogfile=\"\"\n",
                fifo.display(),
                done.display()
            ),
        )
        .expect("write the LazyFS config");
        // Open the completion fifo before LazyFS starts (it opens it for writing and would wait
        // for a reader); read and write, so the open does not wait for LazyFS either.
        let done_fifo = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&done)
            .expect("open the LazyFS completion fifo");
        let (tx, completed) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(done_fifo).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let out = File::create(&log).expect("create the LazyFS log");
        let child = Command::new(bin)
            .arg(mnt)
            .arg("--config-path")
            .arg(&config)
            .args(["-o", "allow_other", "-o", "modules=subdir", "-o"])
            .arg(format!("subdir={}", root.display()))
            // Foreground, and single-threaded: LazyFS (a47a5ba) is not safe with concurrent
            // writes. `lfs_write` reads the cache's file map (`Cache::get_content_metadata`,
            // no lock) while another write inserts into the maps (`_create_item`,
            // `CustomCacheEngine::_update_owner_pages`); with four branches at full speed on one
            // multi-threaded mount it segfaulted about once per 200 rounds (in
            // `std::string::size` under `unordered_map::at`), and the next clear-cache went
            // unanswered.
            .args(["-f", "-s"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone the LazyFS log"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start LazyFS {}: {e}", bin.display()));
        let mut fs = LazyFs {
            mnt: mnt.to_path_buf(),
            log,
            child: Some(child),
            commands: None,
            completed,
        };
        let end = Instant::now() + Duration::from_secs(15);
        while !is_mount_point(mnt) {
            let exited = fs.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none() && Instant::now() < end,
                "LazyFS did not mount {} ({}):\n{}",
                mnt.display(),
                exited.map_or("still not mounted after 15 s".into(), |s| s.to_string()),
                fs.log_tail()
            );
            sleep(50);
        }
        fs.commands = Some(
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&fifo)
                .expect("open the LazyFS command fifo"),
        );
        fs
    }

    /// A power cut of this mount: drops every write not yet synced, and returns once LazyFS
    /// confirms it (`finished::clear-cache` on the completion fifo).
    fn clear_cache(&mut self) {
        self.assert_running("before clear-cache");
        while self.completed.try_recv().is_ok() {}
        self.commands
            .as_mut()
            .expect("mounted")
            .write_all(b"lazyfs::clear-cache\n")
            .expect("write to the LazyFS command fifo");
        let sent = Instant::now();
        loop {
            match self.completed.recv_timeout(Duration::from_millis(250)) {
                Ok(line) if line.trim() == "finished::clear-cache" => return,
                Ok(line) => panic!(
                    "LazyFS answered {line:?} to clear-cache of {}",
                    self.mnt.display()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "the LazyFS completion fifo of {} closed",
                        self.mnt.display()
                    )
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            self.assert_running("waiting for clear-cache");
            assert!(
                sent.elapsed() < Duration::from_secs(30),
                "LazyFS did not confirm clear-cache of {} within 30 s:\n{}",
                self.mnt.display(),
                self.log_tail()
            );
        }
    }

    /// Panics if LazyFS has exited: its mount is then dead, and whatever fails on it next is
    /// LazyFS's failure, not the bank's.
    fn assert_running(&mut self, when: &str) {
        let exited = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        if let Some(st) = exited {
            panic!(
                "LazyFS serving {} exited by itself ({st}), noticed {when}; its log:\n{}",
                self.mnt.display(),
                self.log_tail()
            );
        }
    }

    fn log_tail(&self) -> String {
        tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 15)
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let fusermount = |flag: &str| {
            Command::new("fusermount3")
                .arg(flag)
                .arg(&self.mnt)
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        if !fusermount("-u") {
            fusermount("-uz");
        }
        // Unmounted, a foreground LazyFS exits by itself; `wait_timeout` kills it if not.
        if wait_timeout(&mut child, Duration::from_secs(10)).is_none() {
            let _ = child.wait();
        }
    }
}

/// Whether `dir` is the root of a mount (another device than its parent's).
fn is_mount_point(dir: &Path) -> bool {
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    match (dev(dir), dir.parent().and_then(dev)) {
        (Some(d), Some(p)) => d != p,
        _ => false,
    }
}

/// A cluster whose stores are on LazyFS. Dropping it (also on panic) kills the branches it
/// runs, then unmounts its mounts.
struct PowerCluster {
    c: Cluster,
    mounts: Vec<LazyFs>,
    bank: PathBuf,
}

impl Drop for PowerCluster {
    fn drop(&mut self) {
        for i in 0..self.c.children.len() {
            self.c.kill9(i);
        }
        self.mounts.clear();
    }
}

/// The LazyFS binary, if the power-loss tests can run here (root, `/dev/fuse`, `fusermount3`,
/// LazyFS). Outside CI a missing prerequisite skips the test with a visible message; in CI (`CI`
/// set) it fails the test.
fn lazyfs_available(test: &str) -> Option<PathBuf> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let missing = if !root {
        Some("root".to_string())
    } else if !Path::new("/dev/fuse").exists() {
        Some("/dev/fuse".to_string())
    } else {
        match find_lazyfs() {
            Err(why) => Some(why),
            Ok(_) if !runs("fusermount3", "-V") => Some("fusermount3 (Debian fuse3)".to_string()),
            Ok(bin) => return Some(bin),
        }
    };
    let msg = format!(
        "SKIPPED {test}: needs {} (run as root on a host with FUSE; see tools/lazyfs/README.md)",
        missing.unwrap_or_default()
    );
    if std::env::var_os("CI").is_some() {
        panic!("{msg}; CI must run it");
    }
    eprintln!("{msg}");
    None
}

fn runs(tool: &str, flag: &str) -> bool {
    Command::new(tool)
        .arg(flag)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// `LAZYFS_BIN`, or what `tools/lazyfs/build.sh` prints (a cached build, or a new one).
fn find_lazyfs() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("LAZYFS_BIN").filter(|b| !b.is_empty()) {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!("LazyFS at LAZYFS_BIN={}", bin.display()))
        };
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/lazyfs/build.sh");
    let out = Command::new(&script)
        .output()
        .map_err(|e| format!("LazyFS ({}: {e})", script.display()))?;
    let path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .trim()
        .to_string();
    if out.status.success() && Path::new(&path).is_file() {
        Ok(PathBuf::from(path))
    } else {
        Err(format!(
            "LazyFS (tools/lazyfs/build.sh failed: {})",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a number")),
        Err(_) => default,
    }
}

impl PowerCluster {
    /// Branch `i` exited by itself: the round, its exit status and its log's last error line.
    fn check_alive(&mut self, round: &str, problems: &mut Vec<String>) {
        for m in &mut self.mounts {
            m.assert_running(round);
        }
        for i in 0..BRANCHES {
            if let Some(st) = self.c.exited(i) {
                let log = self.c.log(i);
                problems.push(format!(
                    "{round}: branch {i} ({}) exited by itself ({st}) after its restart: {}",
                    self.c.addr(i),
                    last_error_line(&log).unwrap_or("no error line in its log")
                ));
                // Start it again, as an operator would, so the run goes on.
                self.start(i);
            }
        }
    }

    fn start(&mut self, i: usize) {
        let bank = self.bank.clone();
        self.c.start_with(i, &bank);
    }

    fn initiator_log_len(&self) -> usize {
        self.c.log(0).len()
    }
}

/// The cuts of `layout` on a 4-branch cluster, then the checks; panics with every problem found.
fn run(test: &str, layout: Layout) {
    let Some(lazyfs) = lazyfs_available(test) else {
        return;
    };
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let started = Instant::now();
    let rounds = env_u64("POWER_LOSS_ROUNDS", 5);
    let up_ms = env_u64("POWER_LOSS_UP_MS", 4000);
    let kill_only = std::env::var_os("POWER_LOSS_KILL_ONLY").is_some_and(|v| v != "0");
    let seed = env_u64(
        "POWER_LOSS_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let what = match (layout, kill_only) {
        (Layout::OneMount, false) => "whole-host power cuts (4 branches on one LazyFS mount)",
        (Layout::MountPerBranch, false) => "one-branch power cuts (a LazyFS mount per branch)",
        (Layout::OneMount, true) => "whole-host kill -9, no cache cleared (control)",
        (Layout::MountPerBranch, true) => "one-branch kill -9, no cache cleared (control)",
    };
    let bank = bank_bin();
    let snapctl = snapctl_bin();
    println!(
        "power_loss: {what}: {rounds} rounds, {up_ms} ms between cuts, seed {seed} \
         (POWER_LOSS_SEED={seed} repeats the victims), bank {}",
        bank.display()
    );

    let c = Cluster::new(BRANCHES, BANK_ARGS);
    let work = c.dir.path().to_path_buf();
    let mut mounts = Vec::new();
    match layout {
        Layout::OneMount => {
            // The data directory (with the cluster key) becomes the root LazyFS shows at `data`.
            let root = work.join("root.all");
            std::fs::rename(c.data(), &root).expect("move the data directory");
            mounts.push(LazyFs::mount(&lazyfs, &work, "all", &root, &c.data()));
        }
        Layout::MountPerBranch => {
            for i in 0..BRANCHES {
                let root = work.join(format!("root.{i}"));
                let name = format!("b{i}");
                mounts.push(LazyFs::mount(&lazyfs, &work, &name, &root, &c.store_dir(i)));
            }
        }
    }
    let mut pc = PowerCluster { c, mounts, bank };
    for i in 0..BRANCHES {
        pc.start(i);
    }
    assert!(
        pc.c.wait_log(0, Duration::from_secs(30), |l| !completed_snapshots(l)
            .is_empty()),
        "no snapshot completed within 30 s of the start:\n{}",
        pc.c.log(0)
    );
    let mut problems = Vec::new();
    sleep(up_ms);
    pc.check_alive("start", &mut problems);

    let mut last_cut = (0, String::new());
    for r in 1..=rounds {
        let victims: Vec<usize> = match layout {
            Layout::OneMount => (0..BRANCHES).collect(),
            Layout::MountPerBranch => vec![rng.gen_range(0..BRANCHES)],
        };
        for &v in &victims {
            pc.c.kill9(v);
        }
        if !kill_only {
            let m = if layout == Layout::OneMount {
                0
            } else {
                victims[0]
            };
            pc.mounts[m].clear_cache();
        }
        last_cut = (
            pc.initiator_log_len(),
            format!("round {r}, branches {victims:?}"),
        );
        for &v in &victims {
            pc.start(v);
        }
        sleep(up_ms);
        pc.check_alive(&format!("round {r}"), &mut problems);
    }

    // Snapshots complete again after the last cut.
    let after_cut = |log: &str| -> Vec<(u64, bool)> {
        let from = last_cut.0.min(log.len());
        completed_snapshots(&String::from_utf8_lossy(&log.as_bytes()[from..]))
    };
    pc.c.wait_log(0, Duration::from_secs(20), |l| {
        after_cut(l).len() >= SNAPSHOTS_AFTER_LAST_CUT
    });
    pc.check_alive("after the last round", &mut problems);
    let since_cut = after_cut(&pc.c.log(0)).len();
    if since_cut < SNAPSHOTS_AFTER_LAST_CUT {
        problems.push(format!(
            "{since_cut} snapshots completed in 20 s after the last cut ({}), expected at least \
             {SNAPSHOTS_AFTER_LAST_CUT}; the initiator's last lines:\n{}",
            last_cut.1,
            tail(&pc.c.log(0), 8)
        ));
    }

    // Graceful stop, then the audit of the stores.
    for i in 0..BRANCHES {
        if pc.c.children[i].is_some() {
            pc.c.signal(i, "TERM");
        }
    }
    for i in 0..BRANCHES {
        let Some(mut child) = pc.c.children[i].take() else {
            continue;
        };
        match wait_timeout(&mut child, Duration::from_secs(30)) {
            Some(st) if st.success() => {}
            st => {
                let _ = child.wait();
                let log = pc.c.log(i);
                problems.push(format!(
                    "branch {i} did not stop cleanly after SIGTERM ({}): {}",
                    st.map_or("still running after 30 s".into(), |s| s.to_string()),
                    last_error_line(&log).unwrap_or("no error line in its log")
                ));
            }
        }
    }
    let snapshots = completed_snapshots(&pc.c.log(0));
    let not_conserved = snapshots.iter().filter(|s| !s.1).count();
    if not_conserved > 0 {
        problems.push(format!(
            "{not_conserved} snapshots completed with MONEY NOT CONSERVED (initiator's log)"
        ));
    }
    let (code, audit) = pc.c.audit_with(&snapctl);
    let audit_figures = match &audit {
        Ok(a) => {
            let violations = a["violations"].as_array().cloned().unwrap_or_default();
            if code != 0
                || a["consistent"] != true
                || a["current_total"] != a["expected_total"]
                || !a["current_total"].is_number()
            {
                problems.push(format!(
                    "audit: exit {code}, consistent {}, total {}/{}, {} violations{}",
                    a["consistent"],
                    a["current_total"],
                    a["expected_total"],
                    violations.len(),
                    violations
                        .iter()
                        .take(5)
                        .map(|v| format!("\n  violation: {v}"))
                        .collect::<String>()
                ));
            }
            format!(
                "audit exit {code} consistent {} total {}/{} ({} snapshots checked)",
                a["consistent"], a["current_total"], a["expected_total"], a["snapshots_checked"]
            )
        }
        Err(e) => {
            problems.push(format!("audit: exit {code}: {e}"));
            format!("audit exit {code} unreadable")
        }
    };
    let transfers = audit
        .as_ref()
        .ok()
        .and_then(|a| a["transfers"].as_u64())
        .unwrap_or(0);
    let refusals = problems
        .iter()
        .filter(|p| p.contains("exited by itself"))
        .count();
    println!(
        "power_loss: {what}: rounds {rounds}, transfers {transfers}, snapshots completed {} \
         ({since_cut} after the last cut), refused restarts {refusals}, {audit_figures}, \
         {:.1} s, verdict {}",
        snapshots.len(),
        started.elapsed().as_secs_f64(),
        if problems.is_empty() { "OK" } else { "FAILED" }
    );
    drop(pc);
    assert!(
        problems.is_empty(),
        "{what} (seed {seed}): {} problems:\n{}",
        problems.len(),
        problems
            .iter()
            .take(12)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What a reshape left in a data directory, from its files alone.
#[derive(Clone, Copy, Debug, PartialEq)]
enum ReshapeState {
    /// No commit mark, no ended epoch: the old cluster.
    Old,
    /// The commit mark: the new epoch is decided, unfinished.
    Committed,
    /// No mark, the old epoch's stores kept under `epochs/0`: done.
    Finished,
}

fn reshape_state(data: &Path) -> ReshapeState {
    if data.join("reshape-in-progress").exists() {
        ReshapeState::Committed
    } else if data.join("epochs/0").exists() && !data.join("reshape-staging").exists() {
        ReshapeState::Finished
    } else {
        ReshapeState::Old
    }
}

/// `fsync`s every file and directory under `dir`, so that a copy made on LazyFS survives its
/// next clear-cache.
fn sync_tree(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("read the copy") {
        let p = entry.expect("entry").path();
        if p.is_dir() {
            sync_tree(&p);
        } else {
            File::open(&p)
                .and_then(|f| f.sync_all())
                .unwrap_or_else(|e| panic!("fsync {}: {e}", p.display()));
        }
    }
    // A directory's fsync may be unsupported by the FUSE layer; its entries are not cached.
    let _ = File::open(dir).and_then(|f| f.sync_all());
}

/// A `snapctl reshape` (3 branches → 4, one funded, some minted) whose data directory is on
/// LazyFS, killed after each of its durable writes in turn and then the power cut: what it had
/// reached before the cut is what is there after it (the old cluster, the committed new epoch
/// or the finished one: every write it counted was on stable storage), the old cluster is
/// intact to the unit, a committed one gives no verdict, and running the reshape again finishes
/// it with exactly the balances of an uninterrupted run.
#[test]
fn reshape_power_cuts_leave_the_old_cluster_or_the_new_one() {
    let test = "reshape_power_cuts_leave_the_old_cluster_or_the_new_one";
    let Some(lazyfs) = lazyfs_available(test) else {
        return;
    };
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let started = Instant::now();
    let snapctl = snapctl_bin();
    let mut c = Cluster::new(3, BANK_ARGS);
    c.start_all();
    assert!(
        c.wait_log(0, Duration::from_secs(30), |l| completed_snapshots(l).len()
            >= 3),
        "{}",
        c.log(0)
    );
    c.stop_all();
    let (code, old) = c.audit();
    assert_eq!(code, 0, "{old:#}");
    let old_balances = audit_balances(&old);
    let k = old["last_snapshot"].as_u64().expect("a completed snapshot");
    let work = c.dir.path().to_path_buf();
    let pristine = work.join("pristine");
    copy_dir(&c.data(), &pristine);
    let mut four = c.addrs.clone();
    four.push(format!("127.0.0.1:{}", free_ports(1)[0]));
    let list = work.join("four.list");
    std::fs::write(&list, snapbank_testkit::host_list_text(&four)).expect("write the list");
    let ks = k.to_string();
    let fund = format!("{}=1000,{}", four[3], four[0]);
    let reshape = |data: &Path, crash_after: Option<u64>| {
        let mut cmd = Command::new(&snapctl);
        cmd.args(["reshape", "--snapshot", &ks, "--to"])
            .arg(&list)
            .args(["--fund", &fund, "--mint", "500", "--data-dir"])
            .arg(data)
            .arg("--hosts")
            .arg(c.hosts());
        if let Some(n) = crash_after {
            cmd.env("SNAPBANK_RESHAPE_CRASH_AFTER", n.to_string());
        }
        cmd.output().expect("run snapctl reshape")
    };
    let text = output_text;

    let root = work.join("root.reshape");
    let mnt = work.join("mnt");
    let mut fs = LazyFs::mount(&lazyfs, &work, "reshape", &root, &mnt);
    // The uninterrupted reshape, for comparison.
    let reference = mnt.join("reference");
    copy_dir(&pristine, &reference);
    sync_tree(&reference);
    let out = reshape(&reference, None);
    assert!(out.status.success(), "{}", text(&out));
    let (code, want) = audit_json(&snapctl, &reference, &list);
    assert_eq!(code, 0, "{want:#}");
    let want_balances = audit_balances(&want);
    assert_eq!(want_balances.iter().sum::<u64>(), 3_000_500);

    let mut problems = Vec::new();
    let mut seen = std::collections::BTreeMap::new();
    let mut n = 1;
    loop {
        let data = mnt.join(format!("cut-after-{n}"));
        copy_dir(&pristine, &data);
        sync_tree(&data);
        let crash = reshape(&data, Some(n));
        let ran_through = crash.status.success();
        if !ran_through && !text(&crash).contains("test hook") {
            problems.push(format!("write {n}: reshape failed: {}", text(&crash)));
        }
        let before = reshape_state(&data);
        fs.clear_cache();
        let after = reshape_state(&data);
        *seen.entry(format!("{after:?}")).or_insert(0) += 1;
        if before != after {
            problems.push(format!(
                "write {n}: {before:?} before the power cut, {after:?} after it (a write it \
                 counted as durable was not)"
            ));
        }
        match after {
            ReshapeState::Old => {
                let (code, a) = audit_json(&snapctl, &data, &c.hosts());
                if code != 0 || a["epoch"] != 0 || audit_balances(&a) != old_balances {
                    problems.push(format!(
                        "write {n}: the old cluster after the cut: audit exit {code}, epoch {}, \
                         balances {:?} (were {old_balances:?})",
                        a["epoch"],
                        audit_balances(&a)
                    ));
                }
            }
            ReshapeState::Committed => {
                let (code, _) = audit_json(&snapctl, &data, &list);
                if code != 2 {
                    problems.push(format!(
                        "write {n}: a committed, unfinished reshape got audit exit {code}, not 2"
                    ));
                }
            }
            ReshapeState::Finished => {}
        }
        let again = reshape(&data, None);
        let (code, a) = audit_json(&snapctl, &data, &list);
        if !again.status.success()
            || code != 0
            || a["epoch"] != 1
            || audit_balances(&a) != want_balances
            || a["epochs"][1]["began"]["consistent"] != true
        {
            problems.push(format!(
                "write {n}: run again: {} audit exit {code}, epoch {}, balances {:?} (want \
                 {want_balances:?}), boundary consistent {}",
                text(&again).lines().last().unwrap_or(""),
                a["epoch"],
                audit_balances(&a),
                a["epochs"][1]["began"]["consistent"]
            ));
        }
        let _ = std::fs::remove_dir_all(&data);
        if ran_through || n >= 64 {
            break;
        }
        n += 1;
    }
    println!(
        "power_loss: reshape: a power cut after each of {n} durable writes: states after the \
         cut {seen:?}, {:.1} s, verdict {}",
        started.elapsed().as_secs_f64(),
        if problems.is_empty() { "OK" } else { "FAILED" }
    );
    drop(fs);
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(
        seen.len() == 3 && n > 8,
        "expected every state among {n} cuts: {seen:?}"
    );
}
