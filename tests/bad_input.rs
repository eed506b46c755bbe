//! Bad input of every kind gets a clear one-line error naming the thing, a non-zero exit where it
//! is fatal, and never moves money.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

fn run(bin: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin).args(args).output().expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn one_line_error(stderr: &str, needles: &[&str]) {
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(lines.len(), 1, "exactly one error line in:\n{stderr}");
    for n in needles {
        assert!(
            lines[0].contains(n),
            "error line {:?} should contain {n:?}",
            lines[0]
        );
    }
}

#[test]
fn broken_host_list_names_the_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let hosts = dir.path().join("host.list");
    std::fs::write(&hosts, "127.0.0.1:8000:S\n127.0.0.1:70000\n").expect("write");
    let h = hosts.to_str().expect("utf8");
    let d = dir.path().join("data");
    let (code, _, err) = run(
        BANK,
        &[
            "127.0.0.1:8000",
            "--hosts",
            h,
            "--data-dir",
            d.to_str().expect("utf8"),
        ],
    );
    assert_ne!(code, 0);
    one_line_error(&err, &["host.list:2", "bad port"]);
    let (code, _, err) = run(START_BANK, &["127.0.0.1", "--hosts", h]);
    assert_ne!(code, 0);
    one_line_error(&err, &["host.list:2", "bad port"]);
    std::fs::write(&hosts, "127.0.0.1:8000:S 127.0.0.1:8001:S\n").expect("write");
    let (code, _, err) = run(BANK, &["127.0.0.1:8000", "--hosts", h]);
    assert_ne!(code, 0);
    one_line_error(&err, &["host.list:1", "initiator"]);
    let (code, _, err) = run(
        BANK,
        &["127.0.0.1:8000", "--hosts", "/nonexistent/host.list"],
    );
    assert_ne!(code, 0);
    one_line_error(&err, &["/nonexistent/host.list"]);
}

#[test]
fn unknown_branch_and_unknown_ip_are_errors() {
    let c = Cluster::new(2, &[]);
    let h = c.hosts();
    let (code, _, err) = run(BANK, &["127.0.0.1:1", "--hosts", h.to_str().expect("utf8")]);
    assert_ne!(code, 0);
    one_line_error(&err, &["127.0.0.1:1", "not a branch"]);
    let (code, _, err) = run(BANK, &["nonsense", "--hosts", h.to_str().expect("utf8")]);
    assert_ne!(code, 0);
    one_line_error(&err, &["nonsense"]);
    let (code, _, err) = run(
        START_BANK,
        &["127.0.0.9", "--hosts", h.to_str().expect("utf8")],
    );
    assert_ne!(code, 0);
    one_line_error(&err, &["127.0.0.9", "no branch"]);
}

#[test]
fn bad_flags_are_refused_with_usage_errors() {
    for args in [
        &["127.0.0.1:8000", "--transfer-interval", "fast"][..],
        &["127.0.0.1:8000", "--transfer-interval", "5s..2s"],
        &["127.0.0.1:8000", "--snapshot-interval", "0s"],
        &["127.0.0.1:8000", "--max-amount", "0"],
        &["127.0.0.1:8000", "--initial-balance", "-5"],
        &["127.0.0.1:8000", "--no-such-flag"],
    ] {
        let (code, _, err) = run(BANK, args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("error:"), "{args:?}: {err}");
    }
    let (code, _, err) = run(START_BANK, &["127.0.0.1", "--for", "soon"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run(SNAPCTL, &["audit", "--bogus"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn store_of_another_host_list_is_refused() {
    let mut c = Cluster::new(2, &["--transfer-interval", "5ms"]);
    c.start(0);
    sleep(500);
    c.stop(0);
    // Same data dir, same address, a different cluster.
    let other = c.dir.path().join("other.list");
    std::fs::write(
        &other,
        format!("{}:S\n127.0.0.1:1\n127.0.0.1:2\n", c.addr(0)),
    )
    .expect("write");
    let (code, _, err) = run(
        BANK,
        &[
            &c.addr(0),
            "--hosts",
            other.to_str().expect("utf8"),
            "--data-dir",
            c.data().to_str().expect("utf8"),
        ],
    );
    assert_ne!(code, 0);
    one_line_error(&err, &["host.list", "another cluster"]);
    // A different initial balance is another cluster too.
    let (code, _, err) = run(
        BANK,
        &[
            &c.addr(0),
            "--hosts",
            c.hosts().to_str().expect("utf8"),
            "--data-dir",
            c.data().to_str().expect("utf8"),
            "--initial-balance",
            "5",
        ],
    );
    assert_ne!(code, 0);
    one_line_error(&err, &["initial-balance"]);
}

#[test]
fn audit_of_a_running_branch_says_so() {
    let mut c = Cluster::new(2, &["--transfer-interval", "5ms"]);
    c.start_all();
    assert!(c.wait_log(0, Duration::from_secs(10), |l| l.contains(" up: ")));
    sleep(300);
    let out = c.snapctl(&["audit", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    one_line_error(&err, &["in use by a running branch"]);
    c.stop_all();
}

#[test]
fn audit_of_missing_or_garbage_stores_cannot_read() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path().join("nothing");
    let (code, _, err) = run(SNAPCTL, &["audit", "--data-dir", d.to_str().expect("utf8")]);
    assert_eq!(code, 2);
    one_line_error(&err, &["nothing"]);
    // A directory that looks like a store but holds garbage.
    let junk = dir.path().join("data/127.0.0.1_9");
    std::fs::create_dir_all(&junk).expect("mkdir");
    std::fs::write(junk.join("conf"), b"garbage garbage").expect("write");
    std::fs::write(junk.join("db"), vec![0xa5u8; 4096]).expect("write");
    let data = dir.path().join("data");
    let (code, _, err) = run(
        SNAPCTL,
        &["audit", "--data-dir", data.to_str().expect("utf8")],
    );
    assert_eq!(code, 2, "{err}");
    one_line_error(&err, &["127.0.0.1_9"]);
}

#[test]
fn port_in_use_is_a_clear_error() {
    let c = Cluster::new(2, &[]);
    let _squatter = std::net::TcpListener::bind(c.addr(1)).expect("bind");
    let (code, _, err) = run(
        BANK,
        &[
            &c.addr(1),
            "--hosts",
            c.hosts().to_str().expect("utf8"),
            "--data-dir",
            c.data().to_str().expect("utf8"),
        ],
    );
    assert_ne!(code, 0);
    one_line_error(&err, &["cannot listen", &c.addr(1)]);
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
