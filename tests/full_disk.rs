//! A full disk under a running branch: the branch stops with one clear line, a start on the
//! still-full disk fails the same way and leaves nothing behind that breaks a later start, and
//! once space is freed the branch carries on from its store and the cluster's audit is exact.
//!
//! The store lives on a small tmpfs of its own (mounting needs root: without it the tests print
//! `SKIPPED …` and pass, unless `CI` is set, when they fail).

mod common;

use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Size of the store's file system: room for a store at full speed (sled's log is a few MiB).
const TMPFS_SIZE: &str = "32m";

/// One cluster at full speed at a time: two of them would share the 2 cores of a CI runner.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A tmpfs mounted on a directory for the life of the value (unmounted lazily on drop, so a
/// failed test whose branches still hold files on it unmounts too).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mount point");
        sh(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                dir.to_str().expect("utf-8 path"),
            ],
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Whether this process may mount a tmpfs (root, and `mount` works here).
fn tmpfs_available(test: &str) -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let mounts = root && {
        let d = tempfile::tempdir().expect("tempdir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(d.path())
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            let _ = Command::new("umount").arg(d.path()).status();
        }
        ok
    };
    if mounts {
        return true;
    }
    let msg = format!("SKIPPED {test}: needs root and `mount -t tmpfs`");
    if std::env::var_os("CI").is_some() {
        panic!("{msg}; CI must run it");
    }
    eprintln!("{msg}");
    false
}

/// Lines of a branch's log that report an error: logged at level ERROR, the exit's `error:`
/// line, a panic (not `INFO connecting to …: Connection refused (os error 111)`).
fn error_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            l.contains(" ERROR ") || l.to_lowercase().contains("error:") || l.contains("panicked")
        })
        .collect()
}

/// The one line a branch stops with on a full disk: the store, the cause, the way out.
fn assert_full_disk_line(log: &str, store: &Path) {
    let lines = error_lines(log);
    assert_eq!(lines.len(), 1, "exactly one error line in:\n{log}");
    let line = lines[0];
    for needle in [
        "bank: error: store ",
        store.to_str().expect("utf-8 path"),
        "no space left on device",
        "the store is intact",
        "free some space and start again",
    ] {
        assert!(line.contains(needle), "{needle:?} missing from {line:?}");
    }
    assert!(!line.contains("Os {"), "no Debug dump: {line:?}");
}

/// Bytes in the files directly under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Writes `filler` until the file system is full; returns the bytes written.
fn fill(filler: &Path) -> u64 {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(filler)
        .expect("open filler");
    let chunk = vec![0x5au8; 1 << 20];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling {}: {e}", filler.display()),
        }
    }
    // Smaller pieces take what the last megabyte left.
    for _ in 0..64 {
        match f.write(&chunk[..4096]) {
            Ok(n) if n > 0 => written += n as u64,
            _ => break,
        }
    }
    written
}

/// Branch `i` exits by itself within `t` (while `keep_full` runs now and then); its status.
fn wait_exit(
    c: &mut Cluster,
    i: usize,
    t: Duration,
    keep_full: &mut dyn FnMut(),
) -> std::process::ExitStatus {
    let end = Instant::now() + t;
    loop {
        let child = c.children[i].as_mut().expect("running");
        if let Ok(Some(st)) = child.try_wait() {
            c.children[i] = None;
            return st;
        }
        assert!(
            Instant::now() < end,
            "branch {i} still runs on a full disk after {t:?}:\n{}",
            c.log(i)
        );
        keep_full();
        sleep(20);
    }
}

fn full_disk_under(victim: usize, test: &str) {
    if !tmpfs_available(test) {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let began = Instant::now();
    let mut c = Cluster::new(
        4,
        &["--transfer-interval", "0s", "--snapshot-interval", "200ms"],
    );
    let store = c.store_dir(victim);
    let _fs = Tmpfs::mount(&store, TMPFS_SIZE);
    c.start_all();
    // The disk fills while the store still grows. sled reuses its log's segments in place, so a
    // store at its working size (about 2.5 MiB, 2 s into a run at full speed here) may need no
    // new block for a long time on a full disk; it stops only when it next grows. Filling at
    // the first completed snapshot leaves it growing by megabytes.
    assert!(
        c.wait_log(0, Duration::from_secs(30), |l| !completed_snapshots(l)
            .is_empty()),
        "{}",
        c.log(0)
    );

    // The disk fills up while the cluster runs at full speed.
    let store_bytes = dir_bytes(&store);
    let filler = store.join("filler");
    let filled = fill(&filler);
    assert!(filled > 0, "the filler took no space");
    eprintln!("store at {store_bytes} bytes when the disk filled");
    let mut keep_full = || {
        // What sled frees (it punches holes in segments it no longer needs) goes too.
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&filler) {
            let _ = f.write(&[0u8; 65536]);
        }
    };
    let st = wait_exit(&mut c, victim, Duration::from_secs(60), &mut keep_full);
    assert!(!st.success(), "exit status {st}");
    let log = c.log(victim);
    assert_full_disk_line(&log, &store);
    let line = error_lines(&log)[0].to_string();
    eprintln!("full disk while running: {line}");
    for (i, child) in c.children.iter_mut().enumerate() {
        if let Some(child) = child {
            assert!(
                child.try_wait().expect("try_wait").is_none(),
                "branch {i} must keep running"
            );
        }
    }

    // Starts on the still-full disk fail the same way, twice over.
    for attempt in 0..2 {
        let before = c.log(victim).len();
        c.start(victim);
        let st = wait_exit(&mut c, victim, Duration::from_secs(60), &mut || {});
        assert!(!st.success(), "start {attempt} on a full disk: {st}");
        let log = c.log(victim);
        assert_full_disk_line(&log[before..], &store);
        if attempt == 0 {
            eprintln!("start on a full disk: {}", error_lines(&log[before..])[0]);
        }
    }

    // What the failed starts left (sled's half-written recovery snapshot, once read as a
    // corrupt store, is dropped at the next open).
    let mut left: Vec<String> = std::fs::read_dir(&store)
        .expect("store dir")
        .filter_map(|e| e.ok())
        .map(|e| {
            let len = e.metadata().map_or(0, |m| m.len());
            format!("{} ({len} bytes)", e.file_name().to_string_lossy())
        })
        .collect();
    left.sort();
    eprintln!("store after the failed starts: {}", left.join(", "));

    // Room again: the branch carries on from its store.
    std::fs::remove_file(&filler).expect("remove the filler");
    let starts = startup_balances(&c.log(victim)).len();
    let done = completed_snapshots(&c.log(0)).len();
    c.start(victim);
    assert!(
        c.wait_log(victim, Duration::from_secs(30), |l| startup_balances(l)
            .len()
            > starts),
        "{}",
        c.log(victim)
    );
    assert!(
        c.wait_log(0, Duration::from_secs(60), |l| completed_snapshots(l).len()
            >= done + 3),
        "snapshots complete again:\n{}",
        c.log(0)
    );
    assert!(
        completed_snapshots(&c.log(0)).iter().all(|(_, ok)| *ok),
        "every snapshot conserves money"
    );
    c.stop_all();
    let (code, a) = c.audit();
    assert_eq!(code, 0, "{a:#}");
    assert_eq!(a["consistent"], true, "{a:#}");
    assert_eq!(a["current_total"], 4_000_000, "{a:#}");
    assert_eq!(a["expected_total"], 4_000_000, "{a:#}");
    assert!(a["transfers"].as_u64().unwrap_or(0) > 0, "{a:#}");
    eprintln!(
        "{test}: {} transfers, last snapshot {}, {:.1} s",
        a["transfers"],
        a["last_snapshot"],
        began.elapsed().as_secs_f64()
    );
}

#[test]
fn a_full_disk_stops_a_branch_with_one_line_and_it_carries_on_once_there_is_room() {
    full_disk_under(
        2,
        "a_full_disk_stops_a_branch_with_one_line_and_it_carries_on_once_there_is_room",
    );
}

#[test]
fn a_full_disk_under_the_initiator_loses_no_snapshot() {
    full_disk_under(0, "a_full_disk_under_the_initiator_loses_no_snapshot");
}

/// A branch that never ran, started on a full disk: each start fails in one line, whether the
/// disk has no room at all or room for sled's first files but not for its log, and once there
/// is room the branch is created and joins the cluster (a store whose creation failed is not
/// taken for a corrupt one).
#[test]
fn a_new_branch_on_a_full_disk_starts_once_there_is_room() {
    let test = "a_new_branch_on_a_full_disk_starts_once_there_is_room";
    if !tmpfs_available(test) {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let began = Instant::now();
    let mut c = Cluster::new(
        3,
        &["--transfer-interval", "0s", "--snapshot-interval", "200ms"],
    );
    let victim = 1;
    let store = c.store_dir(victim);
    let _fs = Tmpfs::mount(&store, TMPFS_SIZE);
    let filler = store.join("filler");
    fill(&filler);
    c.start(0);
    c.start(2);
    let len = std::fs::metadata(&filler).expect("filler").len();
    // No room at all; room for the creation mark but not for sled's first files (which
    // left a store a later start took for corrupt); room for a first commit but not more.
    for free in [0u64, 4 << 10, 8 << 10, 16 << 10, 64 << 10, 0, 256 << 10] {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&filler)
            .and_then(|f| f.set_len(len - free))
            .expect("resize the filler");
        let before = c.log(victim).len();
        c.start(victim);
        let st = wait_exit(&mut c, victim, Duration::from_secs(60), &mut || {});
        assert!(!st.success(), "start with {free} bytes free: {st}");
        let log = c.log(victim);
        assert_full_disk_line(&log[before..], &store);
    }
    std::fs::remove_file(&filler).expect("remove the filler");
    c.start(victim);
    assert!(
        c.wait_log(victim, Duration::from_secs(30), |l| startup_balances(l)
            .contains(&1_000_000)),
        "{}",
        c.log(victim)
    );
    assert!(
        c.wait_log(0, Duration::from_secs(60), |l| completed_snapshots(l).len()
            >= 3),
        "snapshots complete:\n{}",
        c.log(0)
    );
    c.stop_all();
    let (code, a) = c.audit();
    assert_eq!(code, 0, "{a:#}");
    assert_eq!(a["consistent"], true, "{a:#}");
    assert_eq!(a["current_total"], 3_000_000, "{a:#}");
    eprintln!(
        "{test}: {} transfers, {:.1} s",
        a["transfers"],
        began.elapsed().as_secs_f64()
    );
}
