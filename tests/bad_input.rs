//! Bad input of every kind gets a clear one-line error naming the thing, a non-zero exit where it
//! is fatal, and never moves money: every refusal on existing stores is followed by an audit that
//! must equal the one taken before.

mod common;

use common::*;
use snapbank::hosts::HostList;
use snapbank::store::{Identity, Kv, Op, SledKv, SledStore, SCHEMA_VERSION};
use snapbank::types::BranchId;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs `bin args` to its end: (exit code, stdout, stderr). A program that should refuse its input
/// but runs on fails the test after 15 s instead of hanging it.
fn run(bin: &str, args: &[&str]) -> (i32, String, String) {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let out = read(Box::new(child.stdout.take().expect("stdout")));
    let err = read(Box::new(child.stderr.take().expect("stderr")));
    let Some(status) = wait_timeout(&mut child, Duration::from_secs(15)) else {
        let _ = child.wait();
        panic!("{bin} {args:?} still ran after 15 s (killed)");
    };
    (
        status.code().unwrap_or(-1),
        out.join().expect("stdout reader"),
        err.join().expect("stderr reader"),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// Exactly one line of `stderr` reports an error (in any case, or a panic) and it names every
/// needle.
fn one_line_error(stderr: &str, needles: &[&str]) {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            let l = l.to_lowercase();
            l.contains("error") || l.contains("panicked")
        })
        .collect();
    assert_eq!(lines.len(), 1, "exactly one error line in:\n{stderr}");
    for n in needles {
        assert!(
            lines[0].contains(n),
            "error line {:?} should contain {n:?}",
            lines[0]
        );
    }
}

/// `bin args` fails with exactly one error line naming every needle; returns its exit code.
fn refused(bin: &str, args: &[&str], needles: &[&str]) -> i32 {
    let (code, out, err) = run(bin, args);
    let name = Path::new(bin).file_name().and_then(|n| n.to_str());
    assert_ne!(code, 0, "{name:?} {args:?} must fail:\n{out}\n{err}");
    assert!(
        !err.contains("panicked"),
        "{name:?} {args:?} panicked:\n{err}"
    );
    one_line_error(&err, needles);
    code
}

/// A usage error of the argument parser: exit 2, one error line naming every needle, and no data
/// directory created.
fn flag_refused(bin: &str, args: &[&str], needles: &[&str]) {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let mut all = args.to_vec();
    all.extend(["--data-dir", s(&data)]);
    assert_eq!(refused(bin, &all, needles), 2, "{args:?}");
    assert!(!data.exists(), "{args:?} wrote {}", data.display());
}

/// A broken host.list (`None`: no file at all): `bank`, `start_bank` and `snapctl audit --hosts`
/// each refuse it with one error line naming the file and every needle, and write nothing.
fn host_list_refused(text: Option<&str>, needles: &[&str]) {
    let dir = tempfile::tempdir().expect("tmp");
    let hosts = dir.path().join("host.list");
    if let Some(t) = text {
        std::fs::write(&hosts, t).expect("write host.list");
    }
    let data = dir.path().join("data");
    let (h, d) = (s(&hosts), s(&data));
    let mut needles = needles.to_vec();
    needles.push(h);
    refused(
        BANK,
        &["127.0.0.1:8000", "--hosts", h, "--data-dir", d],
        &needles,
    );
    refused(
        START_BANK,
        &["127.0.0.1", "--hosts", h, "--data-dir", d, "--for", "1s"],
        &needles,
    );
    let code = refused(SNAPCTL, &["audit", "--hosts", h, "--data-dir", d], &needles);
    assert_eq!(code, 2, "snapctl cannot read");
    no_store_written(&data);
}

#[test]
fn host_list_with_a_bad_ip_names_the_line() {
    host_list_refused(
        Some("127.0.0.1:8000:S\n127.0.0.300:8001\n"),
        &["host.list:2:", "'127.0.0.300' is not an IP address"],
    );
    host_list_refused(
        Some("127.0.0.1:8000:S\n\nbank.example:8001 # by name\n"),
        &["host.list:3:", "'bank.example' is not an IP address"],
    );
}

#[test]
fn host_list_with_a_bad_port_names_the_line() {
    for (text, what) in [
        ("127.0.0.1:8000:S\n127.0.0.1:70000\n", "bad port '70000'"),
        ("127.0.0.1:8000:S\n127.0.0.1:0\n", "bad port 0"),
        ("127.0.0.1:8000:S\n127.0.0.1:80a\n", "bad port '80a'"),
        ("127.0.0.1:8000:S\n127.0.0.1\n", "expected HOST:PORT"),
    ] {
        host_list_refused(Some(text), &["host.list:2:", what]);
    }
}

#[test]
fn host_list_with_a_duplicate_branch_names_both_lines() {
    host_list_refused(
        Some("127.0.0.1:8000:S\n127.0.0.1:8001\n127.0.0.1:8001\n"),
        &[
            "host.list:3:",
            "duplicate branch 127.0.0.1:8001",
            "first on line 2",
        ],
    );
    // The initiator listed again, unmarked, on its own line.
    host_list_refused(
        Some("127.0.0.1:8000:S 127.0.0.1:8001\n127.0.0.1:8000\n"),
        &["host.list:2:", "duplicate branch 127.0.0.1:8000"],
    );
}

#[test]
fn host_list_with_two_initiators_names_the_second() {
    host_list_refused(
        Some("127.0.0.1:8000:S\n127.0.0.1:8001:S\n"),
        &[
            "host.list:2:",
            "second snapshot initiator 127.0.0.1:8001",
            "line 1",
        ],
    );
    host_list_refused(
        Some("127.0.0.1:8000:S 127.0.0.1:8001 127.0.0.1:8002:S\n"),
        &["host.list:1:", "exactly one branch may be marked :S"],
    );
}

#[test]
fn host_list_without_an_initiator_is_refused() {
    host_list_refused(
        Some("127.0.0.1:8000\n127.0.0.1:8001\n"),
        &["no branch is marked :S"],
    );
}

#[test]
fn empty_host_list_is_refused() {
    host_list_refused(Some(""), &["names no branch"]);
    host_list_refused(Some("# branches go here\n\n   \n"), &["names no branch"]);
}

#[test]
fn missing_host_list_is_named() {
    host_list_refused(None, &["cannot read", "No such file"]);
}

/// No store was created under `data` (which may hold a cluster key file).
fn no_store_written(data: &Path) {
    let stores: Vec<_> = std::fs::read_dir(data)
        .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        stores.iter().all(|p| !p.is_dir()),
        "nothing may be written: {stores:?}"
    );
}

/// A stopped two-branch cluster whose stores hold moved money, and their audit.
fn stopped_cluster() -> (Cluster, serde_json::Value) {
    let c = Cluster::new(2, &[]);
    let before = c.populate(1500);
    (c, before)
}

/// The stores hold exactly what they held before: same balances, transfers, snapshots.
fn unchanged(c: &Cluster, before: &serde_json::Value) {
    let (code, after) = c.audit();
    assert_eq!(code, 0, "{after:#}");
    assert_eq!(&after, before, "the stores changed");
    assert_eq!(store_dirs(c).len(), 2, "no store was added");
}

fn store_dirs(c: &Cluster) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(c.data())
        .expect("data dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `bank ADDR --hosts H --data-dir D`, `--insecure` where the build has cluster keys (the key is
/// not what these tests are about), then `extra`.
fn bank_args<'a>(addr: &'a str, h: &'a str, d: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![addr, "--hosts", h, "--data-dir", d];
    a.extend(insecure_args());
    a.extend(extra);
    a
}

/// `start_bank 127.0.0.1 --hosts H --data-dir D --for 1s` (`--for`: a branch that should have
/// been refused cannot run on), `--insecure` where the build has cluster keys, then `extra`.
fn start_bank_args<'a>(h: &'a str, d: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["127.0.0.1", "--hosts", h, "--data-dir", d, "--for", "1s"];
    a.extend(insecure_args());
    a.extend(extra);
    a
}

/// Every existing branch of `c` that `text` (another host.list) still names is refused by
/// `bank`; `start_bank` and `snapctl audit --hosts` refuse it too; no store changes or appears.
fn other_host_list_refused(c: &Cluster, before: &serde_json::Value, text: &str, names: &[usize]) {
    let other = c.dir.path().join("other.list");
    std::fs::write(&other, text).expect("write host.list");
    let (data, o) = (c.data(), s(&other).to_string());
    let d = s(&data);
    for &i in names {
        let (addr, store) = (c.addr(i), c.store_dir(i));
        refused(
            BANK,
            &bank_args(&addr, &o, d, &[]),
            &[
                s(&store),
                "belongs to another cluster",
                "made with host.list",
            ],
        );
    }
    refused(
        START_BANK,
        &start_bank_args(&o, d, &[]),
        &[d, "belongs to another cluster", "made with host.list"],
    );
    let code = refused(SNAPCTL, &["audit", "--hosts", &o, "--data-dir", d], &[d]);
    assert_eq!(code, 2);
    unchanged(c, before);
}

#[test]
fn host_list_with_an_added_branch_is_refused_by_the_stores() {
    let (c, before) = stopped_cluster();
    let new = free_ports(1)[0];
    let text = format!("{}:S\n{}\n127.0.0.1:{new}\n", c.addr(0), c.addr(1));
    other_host_list_refused(&c, &before, &text, &[0, 1]);
}

#[test]
fn host_list_with_a_removed_branch_is_refused_by_the_stores() {
    let (c, before) = stopped_cluster();
    let text = format!("{}:S\n", c.addr(0));
    other_host_list_refused(&c, &before, &text, &[0]);
    // The removed branch itself is no branch of it.
    let (hosts, data) = (c.dir.path().join("other.list"), c.data());
    refused(
        BANK,
        &bank_args(&c.addr(1), s(&hosts), s(&data), &[]),
        &[&c.addr(1), "is not a branch in", s(&hosts)],
    );
    unchanged(&c, &before);
}

#[test]
fn host_list_with_reordered_branches_is_refused_by_the_stores() {
    let (c, before) = stopped_cluster();
    // Same entries, other order (so other branch ids).
    let text = format!("{}\n{}:S\n", c.addr(1), c.addr(0));
    other_host_list_refused(&c, &before, &text, &[0, 1]);
    // Same order, the initiator moved.
    let text = format!("{}\n{}:S\n", c.addr(0), c.addr(1));
    other_host_list_refused(&c, &before, &text, &[0, 1]);
}

#[test]
fn store_of_another_host_list_is_refused() {
    let (c, before) = stopped_cluster();
    // Same data dir, same address, a different cluster.
    let text = format!("{}:S\n127.0.0.1:1\n127.0.0.1:2\n", c.addr(0));
    other_host_list_refused(&c, &before, &text, &[0]);
}

#[test]
fn store_of_another_initial_balance_is_refused() {
    let (c, before) = stopped_cluster();
    let (hosts, data) = (c.hosts(), c.data());
    let (h, d) = (s(&hosts), s(&data));
    let want = [
        "belongs to another cluster",
        "made with --initial-balance 1000000, not 5",
    ];
    for i in 0..2 {
        let (addr, store) = (c.addr(i), c.store_dir(i));
        let mut needles = want.to_vec();
        needles.push(s(&store));
        refused(
            BANK,
            &bank_args(&addr, h, d, &["--initial-balance", "5"]),
            &needles,
        );
    }
    refused(
        START_BANK,
        &start_bank_args(h, d, &["--initial-balance", "5"]),
        &want,
    );
    unchanged(&c, &before);
}

/// Replaces the store in `store` by the saved copy in `backup`.
fn put_back(backup: &Path, store: &Path) {
    std::fs::remove_dir_all(store).expect("remove store");
    copy_dir(backup, store);
}

#[test]
fn store_of_another_cluster_in_the_data_dir_is_refused() {
    let (c, before) = stopped_cluster();
    let (hosts, data, store) = (c.hosts(), c.data(), c.store_dir(1));
    let (h, d) = (s(&hosts), s(&data));
    let backup = c.dir.path().join("backup");
    copy_dir(&store, &backup);
    // Branch 1's store of a cluster with the same host.list but another initial balance.
    std::fs::remove_dir_all(&store).expect("remove store");
    let list = HostList::load(&hosts).expect("host.list");
    drop(SledStore::open(&store, Some(&Identity::new(&list, BranchId(1), 5))).expect("create"));
    let needles = [s(&store), "made with --initial-balance 5, not 1000000"];
    refused(BANK, &bank_args(&c.addr(1), h, d, &[]), &needles);
    refused(START_BANK, &start_bank_args(h, d, &[]), &needles);
    for args in [
        &["audit", "--data-dir", d][..],
        &["audit", "--json", "--hosts", h, "--data-dir", d],
    ] {
        let code = refused(SNAPCTL, args, &[s(&store), "belongs to another cluster"]);
        assert_eq!(code, 2, "{args:?}");
    }
    put_back(&backup, &store);
    unchanged(&c, &before);
}

/// Writes `m:schema` of the stopped store in `dir` (the version key of the store layout).
fn set_schema(dir: &Path, version: u32) {
    let mut kv = SledKv::open(dir, false).expect("open store");
    let mut bytes = Vec::new();
    ciborium::into_writer(&version, &mut bytes).expect("encode");
    kv.apply(vec![Op::Put(b"m:schema".to_vec(), bytes)], true)
        .expect("write schema");
}

#[test]
fn store_of_a_newer_schema_is_refused() {
    let (c, before) = stopped_cluster();
    let (hosts, data, store) = (c.hosts(), c.data(), c.store_dir(1));
    let (h, d) = (s(&hosts), s(&data));
    let newer = SCHEMA_VERSION + 1;
    set_schema(&store, newer);
    let found = format!("schema v{newer}, newer than this build supports (v{SCHEMA_VERSION})");
    let needles = [s(&store), found.as_str()];
    refused(BANK, &bank_args(&c.addr(1), h, d, &[]), &needles);
    refused(START_BANK, &start_bank_args(h, d, &[]), &needles);
    for args in [
        &["audit", "--data-dir", d][..],
        &["audit", "--json", "--hosts", h, "--data-dir", d],
    ] {
        assert_eq!(refused(SNAPCTL, args, &needles), 2, "{args:?}");
    }
    set_schema(&store, SCHEMA_VERSION);
    unchanged(&c, &before);
}

/// The store of branch 1 of `c` is damaged: `bank`, `start_bank` and `snapctl audit` (with and
/// without `--hosts`) refuse it with one error line naming it, twice over (a refusal must not
/// leave it looking like a fresh store either).
fn damaged_store_refused(c: &Cluster) {
    let (hosts, data, store) = (c.hosts(), c.data(), c.store_dir(1));
    let (h, d) = (s(&hosts), s(&data));
    let needles = [s(&store), "corrupt"];
    for _ in 0..2 {
        refused(BANK, &bank_args(&c.addr(1), h, d, &[]), &needles);
        refused(START_BANK, &start_bank_args(h, d, &[]), &needles);
        for args in [
            &["audit", "--data-dir", d][..],
            &["audit", "--json", "--hosts", h, "--data-dir", d],
        ] {
            assert_eq!(refused(SNAPCTL, args, &needles), 2, "{args:?}");
        }
    }
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

fn sled_snapshot_files(store: &Path) -> Vec<std::path::PathBuf> {
    let files: Vec<_> = std::fs::read_dir(store)
        .expect("store dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("snap."))
        })
        .collect();
    assert!(!files.is_empty(), "sled keeps a snap.* file in {store:?}");
    files
}

#[test]
fn truncated_store_is_refused_by_bank_and_audit() {
    let (c, before) = stopped_cluster();
    let store = c.store_dir(1);
    let backup = c.dir.path().join("backup");
    copy_dir(&store, &backup);
    let len = std::fs::metadata(store.join("db")).expect("db").len();
    for keep in [0, 1000, len / 2] {
        put_back(&backup, &store);
        let db = std::fs::OpenOptions::new()
            .write(true)
            .open(store.join("db"))
            .expect("open db");
        db.set_len(keep).expect("truncate");
        drop(db);
        // Cut in the middle, sled may still read every record (its snapshot file holds what
        // the cut-off half of the log held): then the store is intact, not damaged, and must
        // read exactly as before. Any other outcome must be a refusal.
        if keep == len / 2 {
            let audit = c.snapctl(&["audit", "--json"]);
            let after: Option<serde_json::Value> = serde_json::from_slice(&audit.stdout).ok();
            if audit.status.success() && after.as_ref() == Some(&before) {
                println!(
                    "db cut to {keep} of {len} bytes: every record still readable, store intact"
                );
                continue;
            }
        }
        damaged_store_refused(&c);
    }
    // sled's snapshot file cut short.
    put_back(&backup, &store);
    for f in sled_snapshot_files(&store) {
        let len = std::fs::metadata(&f).expect("snap").len();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&f)
            .expect("open snap");
        file.set_len(len / 2).expect("truncate");
    }
    damaged_store_refused(&c);
    put_back(&backup, &store);
    unchanged(&c, &before);
}

#[test]
fn garbage_store_is_refused_by_bank_and_audit() {
    let (c, before) = stopped_cluster();
    let store = c.store_dir(1);
    let backup = c.dir.path().join("backup");
    copy_dir(&store, &backup);
    let len = std::fs::metadata(store.join("db")).expect("db").len() as usize;
    // The log overwritten.
    std::fs::write(store.join("db"), garbage(len)).expect("write");
    damaged_store_refused(&c);
    // The log overwritten and sled's snapshot file gone: sled then reads an empty database,
    // which a branch must not start over at the initial balance.
    put_back(&backup, &store);
    std::fs::write(store.join("db"), garbage(len)).expect("write");
    for f in sled_snapshot_files(&store) {
        std::fs::remove_file(f).expect("rm snap");
    }
    damaged_store_refused(&c);
    // Zeros instead of the log, no snapshot file.
    put_back(&backup, &store);
    std::fs::write(store.join("db"), vec![0u8; len]).expect("write");
    for f in sled_snapshot_files(&store) {
        std::fs::remove_file(f).expect("rm snap");
    }
    damaged_store_refused(&c);
    // sled's snapshot file overwritten.
    put_back(&backup, &store);
    for f in sled_snapshot_files(&store) {
        let len = std::fs::metadata(&f).expect("snap").len() as usize;
        std::fs::write(f, garbage(len)).expect("write");
    }
    damaged_store_refused(&c);
    // Every file replaced by junk.
    std::fs::remove_dir_all(&store).expect("rm store");
    std::fs::create_dir_all(&store).expect("mkdir");
    std::fs::write(store.join("conf"), b"garbage garbage").expect("write");
    std::fs::write(store.join("db"), vec![0xa5u8; 4096]).expect("write");
    damaged_store_refused(&c);
    put_back(&backup, &store);
    unchanged(&c, &before);
}

#[test]
fn audit_of_missing_or_garbage_stores_cannot_read() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path().join("nothing");
    let code = refused(SNAPCTL, &["audit", "--data-dir", s(&d)], &[s(&d)]);
    assert_eq!(code, 2);
    assert!(!d.exists());
    // A directory that looks like a store but holds garbage.
    let junk = dir.path().join("data/127.0.0.1_9");
    std::fs::create_dir_all(&junk).expect("mkdir");
    std::fs::write(junk.join("conf"), b"garbage garbage").expect("write");
    std::fs::write(junk.join("db"), vec![0xa5u8; 4096]).expect("write");
    let data = dir.path().join("data");
    let code = refused(SNAPCTL, &["audit", "--data-dir", s(&data)], &[s(&junk)]);
    assert_eq!(code, 2);
}

#[test]
fn port_in_use_is_a_clear_error() {
    let (c, before) = stopped_cluster();
    let (hosts, data) = (c.hosts(), c.data());
    let squatter = TcpListener::bind(c.addr(1)).expect("bind");
    refused(
        BANK,
        &bank_args(&c.addr(1), s(&hosts), s(&data), &[]),
        &["cannot listen on", &c.addr(1), "already in use"],
    );
    drop(squatter);
    unchanged(&c, &before);
}

#[test]
fn bank_with_an_address_not_in_host_list_is_refused() {
    let c = Cluster::new(2, &[]);
    let (hosts, data) = (c.hosts(), c.data());
    let (h, d) = (s(&hosts), s(&data));
    refused(
        BANK,
        &bank_args("127.0.0.1:1", h, d, &[]),
        &["127.0.0.1:1", "is not a branch in", h],
    );
    for addr in ["nonsense", "127.0.0.1", "127.0.0.1:99999"] {
        refused(
            BANK,
            &bank_args(addr, h, d, &[]),
            &[&format!("'{addr}' is not an address")],
        );
    }
    no_store_written(&data);
}

#[test]
fn start_bank_with_an_ip_that_has_no_branch_is_refused() {
    let c = Cluster::new(2, &[]);
    let (hosts, data) = (c.hosts(), c.data());
    let (h, d) = (s(&hosts), s(&data));
    let mut args = start_bank_args(h, d, &[]);
    args[0] = "127.0.0.9";
    refused(START_BANK, &args, &["no branch of", h, "is on 127.0.0.9"]);
    args[0] = "nonsense";
    assert_eq!(
        refused(START_BANK, &args, &["invalid value 'nonsense'", "<IP>"]),
        2
    );
    no_store_written(&data);
}

/// A branch whose address this machine does not have (192.0.2.1 is TEST-NET-1).
#[test]
fn branch_on_an_ip_this_machine_lacks_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_ports(2);
    let ours = format!("127.0.0.1:{}", port[1]);
    let theirs = format!("192.0.2.1:{}", port[0]);
    let hosts = dir.path().join("host.list");
    std::fs::write(&hosts, format!("{theirs}:S\n{ours}\n")).expect("write");
    let data = dir.path().join("data");
    let (h, d) = (s(&hosts), s(&data));
    let needles = [&format!("cannot listen on {theirs}")[..], "Cannot assign"];
    refused(BANK, &bank_args(&theirs, h, d, &[]), &needles);
    let mut args = start_bank_args(h, d, &[]);
    args[0] = "192.0.2.1";
    refused(START_BANK, &args, &needles);
}

#[test]
fn unknown_flag_is_refused_by_bank() {
    flag_refused(
        BANK,
        &["127.0.0.1:8000", "--no-such-flag"],
        &["unexpected argument '--no-such-flag'"],
    );
    flag_refused(
        BANK,
        &["127.0.0.1:8000", "--snapshot-intreval", "5s"],
        &["unexpected argument '--snapshot-intreval'"],
    );
}

#[test]
fn unknown_flag_is_refused_by_start_bank() {
    flag_refused(
        START_BANK,
        &["127.0.0.1", "--no-such-flag"],
        &["unexpected argument '--no-such-flag'"],
    );
}

#[test]
fn unknown_flag_is_refused_by_snapctl() {
    flag_refused(
        SNAPCTL,
        &["audit", "--no-such-flag"],
        &["unexpected argument '--no-such-flag'"],
    );
    flag_refused(
        SNAPCTL,
        &["snapshots", "--no-such-flag"],
        &["unexpected argument '--no-such-flag'"],
    );
    flag_refused(
        SNAPCTL,
        &["--no-such-flag", "audit"],
        &["unexpected argument '--no-such-flag'"],
    );
    flag_refused(SNAPCTL, &["audits"], &["unrecognized subcommand 'audits'"]);
}

#[test]
fn snapshot_interval_in_parsecs_is_refused() {
    let needles = [
        "'5 parsecs'",
        "--snapshot-interval",
        "unknown time unit \"parsecs\"",
    ];
    flag_refused(
        BANK,
        &["127.0.0.1:8000", "--snapshot-interval", "5 parsecs"],
        &needles,
    );
    flag_refused(
        START_BANK,
        &["127.0.0.1", "--snapshot-interval", "5 parsecs"],
        &needles,
    );
}

#[test]
fn zero_snapshot_interval_is_refused() {
    let needles = ["'0s'", "--snapshot-interval", "must be greater than zero"];
    flag_refused(
        BANK,
        &["127.0.0.1:8000", "--snapshot-interval", "0s"],
        &needles,
    );
    flag_refused(
        START_BANK,
        &["127.0.0.1", "--snapshot-interval", "0s"],
        &needles,
    );
}

#[test]
fn backwards_transfer_interval_is_refused() {
    let needles = ["'5ms..1ms'", "--transfer-interval", "runs backwards"];
    flag_refused(
        BANK,
        &["127.0.0.1:8000", "--transfer-interval", "5ms..1ms"],
        &needles,
    );
    flag_refused(
        START_BANK,
        &["127.0.0.1", "--transfer-interval", "5ms..1ms"],
        &needles,
    );
}

#[test]
fn start_bank_for_a_non_duration_is_refused() {
    for v in ["abc", "5 parsecs", "-1s"] {
        flag_refused(
            START_BANK,
            &["127.0.0.1", "--for", v],
            &[&format!("invalid value '{v}'"), "--for"],
        );
    }
}

#[test]
fn bad_flags_are_refused_with_usage_errors() {
    for (flag, value) in [
        ("--transfer-interval", "fast"),
        ("--transfer-interval", "5s..2s"),
        ("--max-amount", "0"),
        ("--initial-balance", "-5"),
        ("--initial-balance", "lots"),
        ("--unacked-max", "0"),
        ("--seed", "x"),
        ("--status-interval", "0s"),
        ("--snapshot-warn-after", "never"),
        ("--settle", "1 fortnight"),
    ] {
        let needles = [flag, value];
        flag_refused(BANK, &["127.0.0.1:8000", flag, value], &needles);
        flag_refused(START_BANK, &["127.0.0.1", flag, value], &needles);
    }
}

#[test]
fn audit_of_a_running_branch_says_so() {
    let c = Cluster::new(2, &[]);
    let (hosts, data) = (c.hosts(), c.data());
    let log = c.dir.path().join("start_bank.log");
    let mut args = start_bank_args(s(&hosts), s(&data), &["--transfer-interval", "5ms"]);
    args[6] = "20s"; // --for: a safety net, it is stopped below
    let mut child = Command::new(START_BANK)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start_bank");
    let up = |l: &str| l.matches(" up: ").count() >= 2;
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while !up(&std::fs::read_to_string(&log).unwrap_or_default()) {
        assert!(std::time::Instant::now() < end, "branches not up");
        sleep(50);
    }
    let out = c.snapctl(&["audit", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    one_line_error(&err, &[s(&data), "in use by a running branch"]);
    sh("kill", &["-TERM", &child.id().to_string()]);
    let st = wait_timeout(&mut child, Duration::from_secs(30)).expect("start_bank stops");
    assert!(
        st.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let (code, a) = c.audit();
    assert_eq!(code, 0, "{a:#}");
}

/// Strangers get refused and move no money.
#[test]
fn unknown_peers_and_malformed_frames_are_refused() {
    let mut c = Cluster::new(
        2,
        &["--transfer-interval", "2ms", "--snapshot-interval", "200ms"],
    );
    c.start_all();
    assert!(
        c.wait_log(0, Duration::from_secs(10), |l| !completed_snapshots(l)
            .is_empty())
    );
    let target = c.addr(1);
    // Garbage bytes, a huge length prefix, and a well-formed Hello from another cluster.
    let attempts: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.0\r\n\r\n".to_vec(),
        vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3],
        {
            let hello = snapbank::wire::Message::Hello {
                cluster: 12345,
                from: snapbank::types::BranchId(0),
                to: snapbank::types::BranchId(1),
            }
            .encode();
            let mut f = (hello.len() as u32).to_be_bytes().to_vec();
            f.extend(hello);
            f
        },
    ];
    for bytes in attempts {
        let mut s = TcpStream::connect(&target).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(6)))
            .expect("timeout");
        let _ = s.write_all(&bytes);
        let mut buf = [0u8; 64];
        // The branch closes the connection without answering.
        assert!(
            matches!(s.read(&mut buf), Ok(0) | Err(_)),
            "connection refused"
        );
    }
    assert!(
        c.wait_log(1, Duration::from_secs(5), |l| l.matches("refused").count()
            >= 3),
        "{}",
        c.log(1)
    );
    sleep(500);
    c.stop_all();
    let (code, a) = c.audit();
    assert_eq!(code, 0, "{a:#}");
    assert_eq!(a["current_total"], 2_000_000);
}

#[test]
fn start_bank_runs_every_branch_of_its_ip_and_audits() {
    let c = Cluster::new(3, &[]);
    let out = Command::new(START_BANK)
        .args([
            "127.0.0.1",
            "--hosts",
            c.hosts().to_str().expect("utf8"),
            "--data-dir",
            c.data().to_str().expect("utf8"),
            "--for",
            "3s",
            "--snapshot-interval",
            "500ms",
            "--seed",
            "7",
        ])
        .output()
        .expect("run start_bank");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("audit: CONSISTENT"), "{stdout}");
    assert!(completed_snapshots(&stderr).len() >= 3, "{stderr}");
    for i in 0..3 {
        assert!(
            stderr.contains(&format!("started bank {}", c.addr(i))),
            "{stderr}"
        );
        assert!(
            stderr.contains(&format!("seed {}", 7 + i)),
            "seeds logged: {stderr}"
        );
    }
}

/// `cargo run --bin start_bank` on a fresh clone builds only start_bank: it must still run the
/// branches (as its own binary in branch mode).
#[test]
fn start_bank_without_a_bank_binary_beside_it_runs_itself_as_the_branches() {
    let c = Cluster::new(2, &[]);
    let alone = c.dir.path().join("alone");
    std::fs::create_dir_all(&alone).expect("mkdir");
    let exe = alone.join("start_bank");
    std::fs::copy(START_BANK, &exe).expect("copy start_bank");
    let out = Command::new(&exe)
        .args([
            "127.0.0.1",
            "--hosts",
            c.hosts().to_str().expect("utf8"),
            "--data-dir",
            c.data().to_str().expect("utf8"),
            "--for",
            "3s",
            "--snapshot-interval",
            "300ms",
        ])
        .output()
        .expect("run start_bank");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("audit: CONSISTENT"), "{stdout}");
    assert!(!completed_snapshots(&stderr).is_empty(), "{stderr}");
}
