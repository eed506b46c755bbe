//! The branch as a daemon and `start_bank` as its supervisor, with real processes: SIGHUP, the
//! systemd notification protocol, `start_bank --restart`, the parent-death signal, the escalation
//! of a stop that does not finish, and the unit file checked by `systemd-analyze verify`.

mod common;

use common::*;
use snapbank_testkit::wait_exited;
use std::fs::File;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Slow enough for two shared cores, fast enough to move money in a second.
const PACED: &[&str] = &[
    "--transfer-interval",
    "2ms..5ms",
    "--snapshot-interval",
    "300ms",
    "--settle",
    "300ms",
    "--status-interval",
    "1s",
];

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits up to `t` until `pred(text of path)` holds.
fn wait_file(path: &Path, t: Duration, pred: impl Fn(&str) -> bool) -> bool {
    let end = Instant::now() + t;
    while Instant::now() < end {
        if pred(&read(path)) {
            return true;
        }
        sleep(50);
    }
    false
}

/// The pids start_bank logged for `addr` (`started …` then each `restarted …`), in order.
fn pids_of(log: &str, addr: &str) -> Vec<u32> {
    log.lines()
        .filter(|l| {
            l.starts_with(&format!("start_bank: started bank {addr} "))
                || l.starts_with(&format!("start_bank: restarted bank {addr} "))
        })
        .filter_map(|l| l.rsplit_once("(pid ")?.1.strip_suffix(')')?.parse().ok())
        .collect()
}

fn kill(pid: u32, sig: &str) {
    sh("kill", &[&format!("-{sig}"), &pid.to_string()]);
}

/// `start_bank 127.0.0.1` for the cluster `c` (its host.list, stores and key) with `extra`
/// flags, its output (and its branches') to `DIR/start_bank.log`.
fn start_bank(c: &Cluster, program: &Path, extra: &[&str]) -> (Child, PathBuf) {
    let log = c.dir.path().join("start_bank.log");
    let child = Command::new(program)
        .arg("127.0.0.1")
        .arg("--hosts")
        .arg(c.hosts())
        .arg("--data-dir")
        .arg(c.data())
        .args(PACED)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(File::create(c.dir.path().join("start_bank.out")).expect("stdout file"))
        .stderr(File::create(&log).expect("log file"))
        .spawn()
        .expect("start start_bank");
    (child, log)
}

fn assert_consistent(c: &Cluster) {
    let (code, a) = c.audit();
    assert_eq!(code, 0, "{a:#}");
    assert_eq!(a["consistent"], true, "{a:#}");
    assert_eq!(a["current_total"], a["expected_total"], "{a:#}");
}

/// SIGHUP, which once killed a branch at once (exit 129, no settle, no log line), is logged and
/// ignored: the branch keeps moving money, and SIGTERM still stops it gracefully (exit 0).
#[test]
fn sighup_is_logged_and_ignored() {
    let mut c = Cluster::new(2, PACED);
    c.start_all();
    assert!(
        c.wait_log(0, Duration::from_secs(20), |l| !completed_snapshots(l)
            .is_empty()),
        "a snapshot completes:\n{}",
        c.log(0)
    );
    c.signal(1, "HUP");
    assert!(
        c.wait_log(1, Duration::from_secs(5), |l| l.contains("SIGHUP ignored")),
        "the branch says it ignored SIGHUP:\n{}",
        c.log(1)
    );
    let applied = |c: &Cluster| applied_counts(&c.log(1)).last().copied().unwrap_or(0);
    let before = applied(&c);
    // Status lines come every second: wait for one that shows transfers applied after SIGHUP.
    assert!(
        c.wait_log(1, Duration::from_secs(10), |l| applied_counts(l)
            .last()
            .is_some_and(|&n| n > before)),
        "the branch keeps applying transfers after SIGHUP:\n{}",
        c.log(1)
    );
    assert!(c.exited(1).is_none(), "still running after SIGHUP");
    c.stop_all();
    assert!(c.log(1).contains("stopped: balance"), "{}", c.log(1));
    assert_consistent(&c);
}

/// `NOTIFY_SOCKET` (as systemd sets it for `Type=notify`): `READY=1` once the store is open and
/// the port listens (with its peer down: readiness does not wait for links), `WATCHDOG=1` at half
/// of `WATCHDOG_USEC`, `STOPPING=1` on SIGTERM, then exit 0.
#[test]
fn bank_notifies_ready_watchdog_and_stopping() {
    let c = Cluster::new(2, PACED);
    let sock_path = c.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let log = c.log_path(0);
    let mut bank = Command::new(BANK)
        .arg(c.addr(0))
        .arg("--hosts")
        .arg(c.hosts())
        .arg("--data-dir")
        .arg(c.data())
        .args(PACED)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000")
        .stdin(Stdio::null())
        .stderr(File::create(&log).expect("log"))
        .spawn()
        .expect("start bank");
    let mut got: Vec<String> = Vec::new();
    let recv_until = |end: Instant, got: &mut Vec<String>, done: &dyn Fn(&[String]) -> bool| {
        let mut buf = [0u8; 512];
        while Instant::now() < end && !done(got) {
            if let Ok(n) = sock.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    };
    let watchdogs = |g: &[String]| g.iter().filter(|m| *m == "WATCHDOG=1").count();
    recv_until(
        Instant::now() + Duration::from_secs(10),
        &mut got,
        &|g: &[String]| g.iter().any(|m| m.starts_with("READY=1")) && watchdogs(g) >= 3,
    );
    let ready = got
        .iter()
        .position(|m| m.starts_with("READY=1"))
        .unwrap_or_else(|| panic!("READY=1 sent: {got:?}\n{}", read(&log)));
    assert!(
        got[ready].contains("STATUS=serving"),
        "a STATUS line with READY: {got:?}"
    );
    assert!(watchdogs(&got) >= 3, "WATCHDOG=1 every 100 ms: {got:?}");
    assert!(
        read(&log).contains(" up: balance"),
        "ready after the store is open:\n{}",
        read(&log)
    );
    kill(bank.id(), "TERM");
    recv_until(
        Instant::now() + Duration::from_secs(5),
        &mut got,
        &|g: &[String]| g.iter().any(|m| m.starts_with("STOPPING=1")),
    );
    assert!(
        got.iter().any(|m| m.starts_with("STOPPING=1")),
        "STOPPING=1 on SIGTERM: {got:?}"
    );
    let st = wait_timeout(&mut bank, Duration::from_secs(20)).expect("bank exits");
    assert!(st.success(), "{st}\n{}", read(&log));
}

/// `start_bank --restart`: a branch killed by a signal start_bank did not send comes back after
/// 100 ms, then (crashing again at once) after 200 ms, each restart logged, carrying on from its
/// store; a branch that an operator stops (SIGTERM to it alone, exit 0) is not restarted; a
/// SIGHUP to start_bank is logged and ignored; SIGTERM stops the rest, exit 0, audit consistent.
#[test]
fn start_bank_restart_restarts_a_crashed_branch_with_backoff() {
    let c = Cluster::new(2, &[]);
    let (a0, a1) = (c.addr(0), c.addr(1));
    let (mut sb, log) = start_bank(&c, Path::new(START_BANK), &["--restart"]);
    let up = |n: usize| move |l: &str| l.matches(" up: balance").count() >= n;
    assert!(
        wait_file(&log, Duration::from_secs(20), up(2)),
        "{}",
        read(&log)
    );
    let first = pids_of(&read(&log), &a0);
    assert_eq!(first.len(), 1, "{}", read(&log));
    kill(first[0], "KILL");
    assert!(
        wait_file(&log, Duration::from_secs(10), |l| pids_of(l, &a0).len()
            == 2
            && up(3)(l)),
        "restarted once:\n{}",
        read(&log)
    );
    let second = pids_of(&read(&log), &a0)[1];
    assert_ne!(second, first[0]);
    kill(second, "KILL");
    assert!(
        wait_file(&log, Duration::from_secs(10), |l| pids_of(l, &a0).len()
            == 3
            && up(4)(l)),
        "restarted twice:\n{}",
        read(&log)
    );
    let text = read(&log);
    assert!(
        text.contains(&format!("restarting bank {a0} in 100ms"))
            && text.contains(&format!("restarting bank {a0} in 200ms")),
        "backoff 100 ms, then 200 ms:\n{text}"
    );
    assert_eq!(
        startup_balances(&text).len(),
        4,
        "each restart carries on from its store:\n{text}"
    );

    // An operator's SIGTERM to one branch is a stop, not a crash.
    let b1 = pids_of(&text, &a1)[0];
    kill(b1, "TERM");
    assert!(wait_exited(b1, Duration::from_secs(10)), "branch 1 stops");
    assert!(
        wait_file(&log, Duration::from_secs(5), |l| l
            .contains(&format!("bank {a1} exited: exit status: 0"))),
        "{}",
        read(&log)
    );
    kill(sb.id(), "HUP");
    assert!(
        wait_file(&log, Duration::from_secs(5), |l| l
            .contains("start_bank: SIGHUP ignored")),
        "{}",
        read(&log)
    );
    sleep(500);
    assert!(
        !read(&log).contains(&format!("restarting bank {a1}")),
        "a branch that exited 0 is not restarted:\n{}",
        read(&log)
    );
    assert_eq!(pids_of(&read(&log), &a1).len(), 1);

    kill(sb.id(), "TERM");
    let st = wait_timeout(&mut sb, Duration::from_secs(20)).expect("start_bank stops");
    assert!(st.success(), "{st}\n{}", read(&log));
    assert_consistent(&c);
}

/// `kill -9` of start_bank: its branches get the parent-death signal (SIGTERM) and stop
/// gracefully within a few seconds, leaving consistent stores.
#[test]
fn kill9_of_start_bank_stops_its_branches() {
    let c = Cluster::new(2, &[]);
    let (mut sb, log) = start_bank(&c, Path::new(START_BANK), &[]);
    assert!(
        wait_file(&log, Duration::from_secs(20), |l| l
            .matches(" up: balance")
            .count()
            >= 2),
        "{}",
        read(&log)
    );
    let text = read(&log);
    let pids: Vec<u32> = (0..2).flat_map(|i| pids_of(&text, &c.addr(i))).collect();
    assert_eq!(pids.len(), 2, "{text}");
    sleep(500);
    let _ = sb.kill();
    let _ = sb.wait();
    for pid in &pids {
        assert!(
            wait_exited(*pid, Duration::from_secs(5)),
            "branch {pid} still running 5 s after kill -9 of start_bank:\n{}",
            read(&log)
        );
    }
    assert_eq!(
        read(&log).matches("stopped: balance").count(),
        2,
        "both settled and stopped gracefully:\n{}",
        read(&log)
    );
    assert_consistent(&c);
}

/// `start_bank --for` once waited forever on a SIGSTOPped branch: now the stop signal is followed
/// by SIGCONT, so the branch stops gracefully, and start_bank audits and exits 0.
#[test]
fn start_bank_for_finishes_with_a_stopped_branch() {
    let c = Cluster::new(2, &[]);
    let (mut sb, log) = start_bank(&c, Path::new(START_BANK), &["--for", "3s"]);
    assert!(
        wait_file(&log, Duration::from_secs(20), |l| l
            .matches(" up: balance")
            .count()
            >= 2),
        "{}",
        read(&log)
    );
    let victim = pids_of(&read(&log), &c.addr(1))[0];
    kill(victim, "STOP");
    let st = wait_timeout(&mut sb, Duration::from_secs(30)).expect("start_bank --for finishes");
    let out = read(&c.dir.path().join("start_bank.out"));
    assert!(st.success(), "{st}\n{out}\n{}", read(&log));
    assert!(out.contains("audit: CONSISTENT"), "{out}");
    assert!(wait_exited(victim, Duration::from_secs(1)));
}

/// A branch that does not stop (here a stand-in `bank` that ignores SIGTERM) is killed with
/// SIGKILL `--settle` + `--stop-grace` after the stop signal, logged, and start_bank exits
/// non-zero, naming it.
#[test]
fn start_bank_escalates_a_stop_that_does_not_finish() {
    let c = Cluster::new(2, &[]);
    // A stand-in that ignores SIGTERM (an ignored signal stays ignored across exec).
    let program = beside_fake_bank(
        &c,
        "trap '' TERM INT
exec sleep 60",
    );
    let began = Instant::now();
    let (mut sb, log) = start_bank(&c, &program, &["--for", "1s", "--stop-grace", "700ms"]);
    let st = wait_timeout(&mut sb, Duration::from_secs(20)).expect("start_bank finishes");
    let took = began.elapsed();
    let text = read(&log);
    assert!(!st.success(), "a killed branch is a failure: {st}\n{text}");
    for i in 0..2 {
        let addr = c.addr(i);
        assert!(
            text.contains(&format!(
                "bank {addr} still running 1s after the stop signal (--settle 300ms + --stop-grace 700ms); killing it (SIGKILL)"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!("bank {addr} failed (signal: 9 (SIGKILL))")),
            "{text}"
        );
        let pid = pids_of(&text, &addr)[0];
        assert!(wait_exited(pid, Duration::from_secs(2)), "{pid} killed");
    }
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(10),
        "--for 1s, then 1 s to the SIGKILL: {took:?}\n{text}"
    );
}

/// Whether Debian's `systemd-analyze` runs here. Outside CI a missing one skips the test with a
/// visible message; in CI (`CI` set) it fails the test.
fn systemd_analyze_available(test: &str) -> bool {
    let runs = Command::new("systemd-analyze")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    if runs {
        return true;
    }
    let msg = format!("SKIPPED {test}: needs systemd-analyze (install Debian's systemd package)");
    if std::env::var_os("CI").is_some() {
        panic!("{msg}; CI must run it");
    }
    eprintln!("{msg}");
    false
}

/// `systemd-analyze verify` of the unit `text` as instance `bank@127.0.0.1:8000.service`:
/// (exit code, everything it printed). The instance is named with verify's `FILE:NAME` form: the
/// colon of the address would otherwise be read as that separator.
fn verify_unit(dir: &Path, text: &str) -> (i32, String) {
    let template = dir.join("bank@.service");
    std::fs::write(&template, text).expect("write unit");
    let mut arg = template.into_os_string();
    arg.push(":bank@127.0.0.1:8000.service");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(arg)
        .stdin(Stdio::null())
        .output()
        .expect("run systemd-analyze");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), said)
}

/// The shipped unit template, instantiated for a branch with `ExecStart` pointing at this build's
/// `bank`, passes `systemd-analyze verify` with nothing to say; a broken copy does not (so the
/// check can fail). Its settings are the ones the daemon relies on.
#[test]
fn unit_file_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/deploy/bank@.service"),
    )
    .expect("read tools/deploy/bank@.service");
    let setting = |key: &str| -> Option<String> {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_string)
    };
    assert_eq!(setting("Type").as_deref(), Some("notify"));
    assert_eq!(setting("Restart").as_deref(), Some("on-failure"));
    assert!(setting("WatchdogSec").is_some());
    let stop = setting("TimeoutStopSec").expect("TimeoutStopSec");
    let stop = humantime::parse_duration(&stop).expect("TimeoutStopSec is a duration");
    assert!(
        stop > Duration::from_secs(5),
        "above --settle 1s and the flush"
    );
    let exec = setting("ExecStart").expect("ExecStart");
    assert!(exec.starts_with("/usr/local/bin/bank %I "), "{exec}");
    if !systemd_analyze_available("unit_file_passes_systemd_analyze_verify") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let ours = unit.replace("/usr/local/bin/bank", BANK);
    let (code, said) = verify_unit(dir.path(), &ours);
    assert!(
        code == 0 && said.trim().is_empty(),
        "systemd-analyze verify (exit {code}):\n{said}"
    );
    let broken = ours
        .replace(BANK, "/nonexistent/bank")
        .replace("Type=notify", "Type=notfy");
    let (code, said) = verify_unit(dir.path(), &broken);
    assert!(
        code != 0 && said.contains("notfy") && said.contains("/nonexistent/bank"),
        "verify reports a broken unit (exit {code}):\n{said}"
    );
}

/// `bank` exits 78 (EX_CONFIG) when it refuses for a reason a restart would meet again, and 1
/// for a failure that may pass (here its port in use), so that `start_bank --restart` and the
/// unit's `RestartPreventExitStatus=78` tell them apart.
#[test]
fn bank_exits_78_on_a_refusal_and_1_on_a_failure_that_may_pass() {
    let c = Cluster::new(2, &[]);
    c.populate(300);
    let bank = |args: &[&str]| {
        Command::new(BANK)
            .args(args)
            .arg("--hosts")
            .arg(c.hosts())
            .arg("--data-dir")
            .arg(c.data())
            .args(insecure_args())
            .stdin(Stdio::null())
            .output()
            .expect("run bank")
    };
    let a0 = c.addr(0);
    // Not a branch of host.list.
    let out = bank(&["127.0.0.1:1"]);
    assert_eq!(
        out.status.code(),
        Some(78),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A store made with another initial balance: another cluster.
    let out = bank(&[&a0, "--initial-balance", "5"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("another cluster"), "{err}");
    // Its port taken by someone else: may pass, so a plain failure.
    let _holder = std::net::TcpListener::bind(&a0).expect("hold the branch's port");
    let out = bank(&[&a0, "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2), "a bad flag is a usage error");
    let out = bank(&[&a0]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot listen"), "{err}");
}

/// `start_bank --restart` leaves a branch that refused (exit 78) stopped and says why.
#[test]
fn start_bank_restart_does_not_restart_a_refusal() {
    let c = Cluster::new(2, &[]);
    let program = beside_fake_bank(&c, "echo 'bank: error: refused' >&2\nexit 78");
    let (mut sb, log) = start_bank(&c, &program, &["--restart", "--for", "1500ms"]);
    let st = wait_timeout(&mut sb, Duration::from_secs(20)).expect("start_bank finishes");
    let text = read(&log);
    assert!(!st.success(), "{text}");
    for i in 0..2 {
        let addr = c.addr(i);
        assert!(
            text.contains(&format!(
                "start_bank: not restarting bank {addr}: it refused to run (exit 78)"
            )),
            "{text}"
        );
        assert_eq!(pids_of(&text, &addr).len(), 1, "started once: {text}");
    }
}

/// A copy of start_bank beside a stand-in `bank`, the shell script `body` (start_bank runs the
/// `bank` beside it); the copy's path.
fn beside_fake_bank(c: &Cluster, body: &str) -> PathBuf {
    let bin = c.dir.path().join("bin");
    std::fs::create_dir(&bin).expect("mkdir");
    std::fs::copy(START_BANK, bin.join("start_bank")).expect("copy start_bank");
    let fake = bin.join("bank");
    std::fs::write(&fake, format!("#!/bin/sh\n{body}\n")).expect("write");
    sh("chmod", &["+x", &fake.to_string_lossy()]);
    bin.join("start_bank")
}
