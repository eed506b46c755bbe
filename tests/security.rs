//! Only holders of the cluster key get in, and a branch cannot act as another: refused strangers,
//! replayed frames and false identities move no money. Plus every bad key file, one clear line.

mod common;

use bytes::BytesMut;
use common::*;
use snapbank::hosts::HostList;
use snapbank::secure::{self, BranchKeys, ClusterKey, Mode, Preamble};
use snapbank::types::{BranchId, Seq, SnapshotId};
use snapbank::wire::{Message, MessageCodec};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio_util::codec::{Decoder, Encoder};

const BANK: &str = env!("CARGO_BIN_EXE_bank");

fn key_of(c: &Cluster) -> (HostList, ClusterKey) {
    let hosts = HostList::load(&c.hosts()).expect("host.list");
    let key = ClusterKey::load(&c.data().join("cluster.key")).expect("cluster key");
    (hosts, key)
}

fn keys(hosts: &HostList, key: &ClusterKey, b: u16) -> BranchKeys {
    key.branch_keys(hosts, BranchId(b), Path::new("k"))
        .expect("branch keys")
}

fn cluster_id(c: &Cluster) -> u64 {
    let hosts = HostList::load(&c.hosts()).expect("host.list");
    snapbank::store::Identity::new(&hosts, BranchId(0), 1_000_000).cluster_id
}

/// Connects to `to` from `from_ip` (a loopback address of ours).
fn dial(from_ip: &str, to: &str) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let to: SocketAddr = to.parse().expect("addr");
    let stream = rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4().expect("socket");
        s.bind(SocketAddr::new(from_ip.parse().expect("ip"), 0))
            .expect("bind");
        s.connect(to).await.expect("connect")
    });
    let std = stream.into_std().expect("std stream");
    std.set_nonblocking(false).expect("blocking");
    std.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    std
}

/// Reads until the peer closes the connection (or 3 s pass); true if it closed.
fn closed_by_peer(s: &mut TcpStream) -> bool {
    let end = Instant::now() + Duration::from_secs(3);
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    false
}

/// The audit of a stopped cluster: (exit code, balance and applied of each branch).
fn money(c: &Cluster) -> (i32, Vec<(u64, u64)>, serde_json::Value) {
    let (code, a) = c.audit();
    let per = a["branches"]
        .as_array()
        .expect("branches")
        .iter()
        .map(|b| {
            (
                b["balance"].as_u64().expect("balance"),
                b["applied"].as_u64().expect("applied"),
            )
        })
        .collect();
    (code, per, a)
}

fn length_prefixed(msg: &[u8]) -> Vec<u8> {
    let mut v = (msg.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(msg);
    v
}

/// The Noise handshake a client runs: preamble, message 1, then reads message 2.
fn handshake(
    s: &mut TcpStream,
    keys: &BranchKeys,
    pre: Preamble,
) -> Result<secure::SecureCodec, String> {
    let (init, msg1) = secure::initiate(keys, &pre).map_err(|e| e.to_string())?;
    let mut first = pre.encode().to_vec();
    first.extend_from_slice(&length_prefixed(&msg1));
    s.write_all(&first).map_err(|e| e.to_string())?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len)
        .map_err(|e| format!("no answer: {e}"))?;
    let mut msg2 = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut msg2).map_err(|e| e.to_string())?;
    init.finish(&msg2).map_err(|e| e.to_string())
}

fn transfers(first: u64, amounts: Vec<u64>) -> Message {
    Message::Transfers {
        first: Seq(first),
        amounts,
    }
}

/// A cluster of `n` branches that make no transfers of their own (1 h apart).
fn quiet_cluster(n: usize) -> Cluster {
    Cluster::new(
        n,
        &["--transfer-interval", "1h", "--snapshot-interval", "500ms"],
    )
}

#[test]
fn a_client_without_the_key_is_refused_and_moves_no_money() {
    let mut c = quiet_cluster(2);
    c.start_all();
    assert!(
        c.wait_log(0, Duration::from_secs(15), |l| !completed_snapshots(l)
            .is_empty())
    );
    let (hosts, _) = key_of(&c);
    let cluster = cluster_id(&c);
    let pre = Preamble {
        mode: Mode::Noise,
        cluster,
        epoch: 0,
        from: BranchId(0),
        to: BranchId(1),
    };

    // 1. A well-formed handshake with another cluster's key file.
    let stranger = ClusterKey::generate(&hosts);
    let mut s = dial("127.0.0.1", &c.addr(1));
    let r = handshake(&mut s, &keys(&hosts, &stranger, 0), pre);
    assert!(r.is_err(), "a stranger's handshake completed");
    // 2. Plain frames, as an --insecure branch or the original would send them.
    let mut s = dial("127.0.0.1", &c.addr(1));
    let mut plain = Preamble {
        mode: Mode::Insecure,
        ..pre
    }
    .encode()
    .to_vec();
    let mut codec = MessageCodec::default();
    let mut buf = BytesMut::new();
    for m in [
        Message::Hello {
            cluster,
            from: BranchId(0),
            to: BranchId(1),
        },
        transfers(1, vec![100; 50]),
    ] {
        codec.encode(m, &mut buf).expect("encode");
    }
    plain.extend_from_slice(&buf);
    let _ = s.write_all(&plain);
    assert!(closed_by_peer(&mut s), "plain client not cut off");
    // 3. Bare frames with no preamble, and random bytes.
    let mut s = dial("127.0.0.1", &c.addr(1));
    let _ = s.write_all(&buf);
    assert!(closed_by_peer(&mut s), "bare frames not cut off");
    let mut s = dial("127.0.0.1", &c.addr(1));
    let _ = s.write_all(&[0x5a; 300]);
    assert!(closed_by_peer(&mut s), "garbage not cut off");

    assert!(
        c.wait_log(1, Duration::from_secs(5), |l| {
            l.contains("failed authentication")
                && l.contains(
                    "runs with --insecure (no key) but this branch runs with the cluster key",
                )
                && l.contains("not a snapbank branch")
        }),
        "each refusal is logged with its reason:\n{}",
        c.log(1)
    );
    c.stop_all();
    let (code, per, a) = money(&c);
    assert_eq!(code, 0, "{a:#}");
    assert_eq!(per, vec![(1_000_000, 0), (1_000_000, 0)], "{a:#}");
}

/// Plays branch 1 towards the real branch 0 to capture what 0 sends on the wire (encrypted), then
/// replays the capture to the real branch 1: as a whole connection, and as records inside a fresh
/// handshake made with the cluster key. Neither moves money; the transfers still arrive exactly
/// once when the real branches meet.
#[test]
fn a_replayed_transfer_frame_moves_no_money() {
    let mut c = Cluster::new(2, &["--transfer-interval", "1ms..2ms"]);
    let (hosts, key) = key_of(&c);
    let listener = TcpListener::bind(c.addr(1)).expect("bind branch 1's port");
    c.start(0);
    let (mut conn, _) = listener.accept().expect("branch 0 dials");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut raw = Vec::new();
    let mut pre = [0u8; secure::PREAMBLE_LEN];
    conn.read_exact(&mut pre).expect("preamble");
    raw.extend_from_slice(&pre);
    let pre = Preamble::decode(&pre).expect("a snapbank preamble");
    let mut len = [0u8; 2];
    conn.read_exact(&mut len).expect("msg1 length");
    let mut msg1 = vec![0u8; u16::from_be_bytes(len) as usize];
    conn.read_exact(&mut msg1).expect("msg1");
    raw.extend_from_slice(&len);
    raw.extend_from_slice(&msg1);
    let (msg2, mut codec) = secure::respond(&keys(&hosts, &key, 1), &pre, &msg1).expect("respond");
    conn.write_all(&length_prefixed(&msg2)).expect("msg2");
    let mut hello = BytesMut::new();
    codec
        .encode(
            Message::Hello {
                cluster: pre.cluster,
                from: BranchId(1),
                to: BranchId(0),
            },
            &mut hello,
        )
        .expect("encode hello");
    conn.write_all(&hello).expect("hello");
    // Branch 0 opens with its position and sends transfers only once the receiver's first
    // acknowledgement agrees with its store: a fresh receiver has applied nothing.
    let mut ack = BytesMut::new();
    codec
        .encode(
            Message::Ack {
                applied: Seq(0),
                marker: SnapshotId(0),
                part: SnapshotId(0),
            },
            &mut ack,
        )
        .expect("encode ack");
    conn.write_all(&ack).expect("first ack");
    // Record everything until a Transfers frame decrypts (never acknowledged).
    let handshake_len = raw.len();
    let mut stream = BytesMut::new();
    let mut saw_transfers = 0;
    let mut buf = [0u8; 65536];
    let end = Instant::now() + Duration::from_secs(10);
    while saw_transfers == 0 && Instant::now() < end {
        let n = match conn.read(&mut buf) {
            Ok(n) => n,
            // A signal to this test process (another test's child exiting) or the read timeout.
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::Interrupted | ErrorKind::WouldBlock | ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => panic!("read from branch 0: {e}"),
        };
        assert!(n > 0, "branch 0 closed");
        raw.extend_from_slice(&buf[..n]);
        stream.extend_from_slice(&buf[..n]);
        while let Some(m) = codec.decode(&mut stream).expect("genuine frames decrypt") {
            if let Message::Transfers { amounts, .. } = m {
                saw_transfers += amounts.len();
            }
        }
    }
    assert!(saw_transfers > 0, "captured a transfer frame");
    c.kill9(0);
    drop(conn);
    drop(listener);

    c.start(1);
    assert!(c.wait_log(1, Duration::from_secs(10), |l| l.contains("up:")));
    // Replay 1: the captured connection byte for byte.
    let mut s = dial("127.0.0.1", &c.addr(1));
    let _ = s.write_all(&raw);
    assert!(closed_by_peer(&mut s), "replayed connection not cut off");
    // Replay 2: a genuine handshake as branch 0 (this client holds the key file), then the
    // captured transfer records.
    let mut s = dial("127.0.0.1", &c.addr(1));
    let mut fresh = handshake(&mut s, &keys(&hosts, &key, 0), pre).expect("handshake with the key");
    let mut hello = BytesMut::new();
    fresh
        .encode(
            Message::Hello {
                cluster: pre.cluster,
                from: BranchId(0),
                to: BranchId(1),
            },
            &mut hello,
        )
        .expect("hello");
    let _ = s.write_all(&hello);
    let _ = s.write_all(&raw[handshake_len..]);
    assert!(closed_by_peer(&mut s), "replayed records not cut off");
    assert!(
        c.wait_log(1, Duration::from_secs(5), |l| l
            .matches("failed authentication")
            .count()
            >= 1
            && l.contains("frame failed authentication")),
        "the replays are refused and logged:\n{}",
        c.log(1)
    );
    c.stop_all();
    let (code, per, a) = money(&c);
    assert_eq!(code, 0, "{a:#}");
    assert_eq!(per[1].1, 0, "branch 1 applied a replayed transfer: {a:#}");

    // The real branches meet: branch 0's unacknowledged transfers arrive, exactly once.
    c.start_all();
    assert!(
        c.wait_log(0, Duration::from_secs(20), |l| completed_snapshots(l).len()
            >= 2)
    );
    c.stop_all();
    let (code, per, a) = money(&c);
    assert_eq!(code, 0, "{a:#}");
    assert!(per[1].1 >= saw_transfers as u64, "{a:#}");
}

/// With per-host key files (`snapctl keygen --per-host`), the holder of one host's file cannot
/// pass for a branch of another host, from either IP.
#[test]
fn a_branch_cannot_claim_another_branchs_identity() {
    let mut c = Cluster::on_ips(
        &["127.0.0.21", "127.0.0.22", "127.0.0.23"],
        &["--transfer-interval", "1h", "--snapshot-interval", "500ms"],
    );
    c.start_all();
    assert!(
        c.wait_log(0, Duration::from_secs(15), |l| !completed_snapshots(l)
            .is_empty())
    );
    let (hosts, key) = key_of(&c);
    // What host 127.0.0.23 holds: branch 2's private key only.
    let host3 = key.for_host("127.0.0.23".parse().expect("ip"));
    let mine = keys(&hosts, &host3, 2);
    let liar = BranchKeys {
        me: BranchId(0),
        ..mine.clone()
    };
    let pre = Preamble {
        mode: Mode::Noise,
        cluster: cluster_id(&c),
        epoch: 0,
        from: BranchId(0),
        to: BranchId(1),
    };
    // From branch 0's own IP, with branch 2's key: the handshake fails.
    let mut s = dial("127.0.0.21", &c.addr(1));
    assert!(handshake(&mut s, &liar, pre).is_err());
    // From its own IP, claiming branch 0: refused before any cryptography.
    let mut s = dial("127.0.0.23", &c.addr(1));
    assert!(handshake(&mut s, &liar, pre).is_err());
    // An address that is not in host.list does not even get a handshake slot.
    let mut s = dial("127.0.0.99", &c.addr(1));
    let _ = s.write_all(&pre.encode());
    assert!(closed_by_peer(&mut s), "a stranger's address is cut off");
    // Its own identity still works (it is a branch), which shows the refusals were about identity.
    let mut s = dial("127.0.0.23", &c.addr(1));
    let own = Preamble {
        from: BranchId(2),
        ..pre
    };
    assert!(handshake(&mut s, &mine, own).is_ok());
    drop(s);
    assert!(
        c.wait_log(1, Duration::from_secs(5), |l| {
            l.contains("failed authentication: it does not hold this cluster's key for branch #0")
                && l.contains("claims to be 127.0.0.21")
        }),
        "{}",
        c.log(1)
    );
    // And a per-host file cannot start a branch of another host.
    let file = c.data().join("host3.key");
    host3.write(&file, false).expect("write");
    let out = Command::new(BANK)
        .arg(c.addr(0))
        .arg("--hosts")
        .arg(c.hosts())
        .arg("--data-dir")
        .arg(c.data().join("elsewhere"))
        .arg("--key")
        .arg(&file)
        .output()
        .expect("run bank");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("does not hold the private key of 127.0.0.21"),
        "{err}"
    );
    c.stop_all();
    let (code, per, a) = money(&c);
    assert_eq!(code, 0, "{a:#}");
    assert!(
        per.iter()
            .all(|&(bal, applied)| bal == 1_000_000 && applied == 0),
        "{a:#}"
    );
}

/// Runs `bank` for branch 0 of a fresh 2-branch cluster with a key file prepared by `prep`;
/// returns (exit code, stderr).
fn bank_with_key(prep: impl FnOnce(&Path, &HostList) -> Vec<String>) -> (i32, String) {
    let c = quiet_cluster(2);
    let hosts = HostList::load(&c.hosts()).expect("host.list");
    let args = prep(&c.data(), &hosts);
    let out = Command::new(BANK)
        .arg(c.addr(0))
        .arg("--hosts")
        .arg(c.hosts())
        .arg("--data-dir")
        .arg(c.data())
        .args(&args)
        .output()
        .expect("run bank");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn one_error_line(err: &str, needles: &[&str]) {
    let errors: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "one error line: {err}");
    for n in needles {
        assert!(errors[0].contains(n), "'{n}' in: {err}");
    }
}

#[test]
fn missing_wrong_and_unsafe_key_files_are_clear_errors() {
    // Missing, named explicitly.
    let (code, err) =
        bank_with_key(|data, _| vec!["--key".into(), data.join("nope.key").display().to_string()]);
    assert_ne!(code, 0);
    one_error_line(
        &err,
        &["no cluster key file at", "nope.key", "snapctl keygen"],
    );
    // Readable by others.
    let (code, err) = bank_with_key(|data, _| {
        use std::os::unix::fs::PermissionsExt;
        let p = data.join("cluster.key");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        vec![]
    });
    assert_ne!(code, 0);
    one_error_line(&err, &["open to other users", "chmod 600"]);
    // Garbage.
    let (code, err) = bank_with_key(|data, _| {
        let p = data.join("garbage.key");
        std::fs::write(&p, b"\x00\x01 not a key\n").expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        vec!["--key".into(), p.display().to_string()]
    });
    assert_ne!(code, 0);
    one_error_line(&err, &["garbage.key:1", "snapbank-cluster-key v1"]);
    // Truncated (a line cut in half).
    let (code, err) = bank_with_key(|data, _| {
        let p = data.join("cluster.key");
        let text = std::fs::read_to_string(&p).expect("read");
        let cut = &text[..text.len() - 20];
        std::fs::write(&p, cut).expect("write");
        vec![]
    });
    assert_ne!(code, 0);
    one_error_line(&err, &["cluster.key:", "key"]);
    // A key made for another host.list.
    let (code, err) = bank_with_key(|data, _| {
        let other = HostList::parse("127.0.0.1:1:S\n127.0.0.1:2\n", "x").expect("parse");
        let p = data.join("other.key");
        ClusterKey::generate(&other)
            .write(&p, false)
            .expect("write");
        vec!["--key".into(), p.display().to_string()]
    });
    assert_ne!(code, 0);
    one_error_line(
        &err,
        &["other.key does not fit this host.list", "snapctl keygen"],
    );
    // --key with --insecure.
    let (code, err) = bank_with_key(|data, _| {
        vec![
            "--insecure".into(),
            "--key".into(),
            data.join("cluster.key").display().to_string(),
        ]
    });
    assert_eq!(code, 2);
    assert!(err.contains("--insecure") && err.contains("--key"), "{err}");
}

/// A branch with the wrong key (another cluster's) cannot join: its links are refused on both
/// sides with a reason, and no money moves between them.
#[test]
fn a_branch_with_another_clusters_key_cannot_join() {
    let mut c = Cluster::new(2, &["--snapshot-interval", "300ms"]);
    let (hosts, _) = key_of(&c);
    let wrong = c.data().join("wrong.key");
    ClusterKey::generate(&hosts)
        .write(&wrong, false)
        .expect("write");
    c.start(0);
    let log1 = std::fs::File::create(c.log_path(1)).expect("log");
    let mut b1 = Command::new(BANK)
        .arg(c.addr(1))
        .arg("--hosts")
        .arg(c.hosts())
        .arg("--data-dir")
        .arg(c.data())
        .arg("--key")
        .arg(&wrong)
        .stderr(log1)
        .spawn()
        .expect("spawn");
    let refused = c.wait_log(0, Duration::from_secs(15), |l| {
        l.contains("failed authentication") && l.contains("closed during handshake")
    });
    let _ = Command::new("kill")
        .args(["-TERM", &b1.id().to_string()])
        .status();
    let st = wait_timeout(&mut b1, Duration::from_secs(30)).expect("exits");
    assert!(st.success());
    assert!(refused, "branch 0 refuses and is refused:\n{}", c.log(0));
    let l1 = c.log(1);
    assert!(l1.contains("failed authentication"), "{l1}");
    assert!(completed_snapshots(&c.log(0)).is_empty());
    c.stop_all();
    let (code, per, a) = money(&c);
    assert_eq!(code, 0, "{a:#}");
    assert_eq!(per.iter().map(|p| p.1).sum::<u64>(), 0, "{a:#}");
}

/// `--insecure` clusters still work (with a warning), and `snapctl keygen` refuses to overwrite.
#[test]
fn insecure_runs_warn_and_keygen_refuses_to_overwrite() {
    let mut c = Cluster::new(2, &["--insecure", "--snapshot-interval", "300ms"]);
    std::fs::remove_file(c.data().join("cluster.key")).expect("no key at all");
    c.start_all();
    assert!(
        c.wait_log(0, Duration::from_secs(15), |l| completed_snapshots(l).len()
            >= 2)
    );
    c.stop_all();
    assert!(c.log(0).contains("running --insecure"), "{}", c.log(0));
    let (code, _, a) = money(&c);
    assert_eq!(code, 0, "{a:#}");

    let out = c.snapctl(&["keygen"]);
    assert!(out.status.success(), "{out:?}");
    let out = c.snapctl(&["keygen"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    one_error_line(&err, &["already exists", "--force"]);
}

/// Branches of a new cluster started without a key file make one together (as the original's
/// `bank` needed no set-up); a branch that already has a store never replaces a lost key file.
#[test]
fn a_new_cluster_makes_its_key_but_a_lost_key_is_not_replaced() {
    let mut c = Cluster::new(3, &["--snapshot-interval", "300ms"]);
    let key = c.data().join("cluster.key");
    std::fs::remove_file(&key).expect("start without a key");
    c.start_all();
    assert!(
        c.wait_log(0, Duration::from_secs(15), |l| completed_snapshots(l).len()
            >= 2)
    );
    c.stop_all();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key)
        .expect("key written")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let made = (0..3)
        .filter(|&i| c.log(i).contains("wrote a new cluster key"))
        .count();
    assert_eq!(
        made, 1,
        "exactly one branch wrote the key, the others adopted it"
    );
    let (code, _, a) = money(&c);
    assert_eq!(code, 0, "{a:#}");

    std::fs::remove_file(&key).expect("lose the key");
    let out = Command::new(BANK)
        .arg(c.addr(1))
        .arg("--hosts")
        .arg(c.hosts())
        .arg("--data-dir")
        .arg(c.data())
        .output()
        .expect("run bank");
    assert_ne!(out.status.code(), Some(0));
    one_error_line(
        &String::from_utf8_lossy(&out.stderr),
        &["no cluster key file at", "cluster.key"],
    );
    assert!(!key.exists(), "no new key was made for an existing store");
}
