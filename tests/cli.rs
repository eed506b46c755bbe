//! The programs' command lines and output (issue 14, items 3 and 4): a closed pipe ends
//! `snapctl` quietly, completions and man pages, SNAPBANK_* environment variables, JSON errors
//! under `--json`, `--log-format json` with the branch on every line, and bad log levels or
//! RUST_LOG refused in one line.

mod common;

use common::*;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Runs `bin args` with `env` set and stdin closed; panics after 15 s.
/// `start_bank 127.0.0.1` on cluster `c`'s host.list and data directory, with `extra`.
fn start_bank_on(c: &Cluster, extra: &[&str]) -> Output {
    let (d, h) = (c.data(), c.hosts());
    let mut args = vec!["127.0.0.1", "--hosts", s(&h), "--data-dir", s(&d)];
    args.extend_from_slice(extra);
    run_env(START_BANK, &args, &[])
}

fn run_env(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut o = Vec::new();
        let _ = out.read_to_end(&mut o);
        o
    });
    let mut e = Vec::new();
    let _ = err.read_to_end(&mut e);
    let status = wait_timeout(&mut child, Duration::from_secs(15))
        .unwrap_or_else(|| panic!("{bin} {args:?} still ran after 15 s"));
    Output {
        status,
        stdout: reader.join().expect("reader"),
        stderr: e,
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Runs `snapctl args` with its stdout a pipe whose reading end is closed before it writes:
/// (exit code, stderr).
fn snapctl_into_closed_pipe(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(SNAPCTL)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn snapctl");
    // Closing our end now: the child's first write finds no reader.
    drop(child.stdout.take());
    let mut err = String::new();
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err);
    let st = wait_timeout(&mut child, Duration::from_secs(15)).expect("snapctl ended");
    (st.code(), err)
}

#[test]
fn a_closed_pipe_ends_snapctl_quietly() {
    let c = Cluster::new(2, &[]);
    c.populate(1500);
    let (d, h) = (c.data(), c.hosts());
    let stores = ["--data-dir", s(&d), "--hosts", s(&h)];
    let runs: Vec<Vec<&str>> = vec![
        [&["snapshots"][..], &stores].concat(),
        [&["snapshots", "--json"][..], &stores].concat(),
        [&["audit"][..], &stores].concat(),
        [&["audit", "--json"][..], &stores].concat(),
        vec!["completions", "bash"],
        vec!["man"],
    ];
    for args in runs {
        let (code, err) = snapctl_into_closed_pipe(&args);
        assert!(
            !err.contains("panicked"),
            "snapctl {args:?} panicked: {err}"
        );
        assert!(err.is_empty(), "snapctl {args:?} is quiet: {err}");
        // The command's own verdict: the stores are consistent.
        assert_eq!(code, Some(0), "snapctl {args:?}: {err}");
    }
}

#[test]
fn completions_for_bash_zsh_and_fish_name_the_subcommands_and_flags() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run_env(SNAPCTL, &["completions", shell], &[]);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        assert!(script.len() > 500, "{shell}: {script}");
        for sub in ["audit", "snapshots", "status", "snapshot", "restore", "man"] {
            assert!(script.contains(sub), "{shell} script names {sub}");
        }
        assert!(script.contains("--data-dir"), "{shell}");
    }
    // bank's and start_bank's own flags (start_bank's script comes from the start_bank beside
    // snapctl).
    for (program, name, flag) in [
        ("bank", "bank", "commit-window"),
        ("start-bank", "start_bank", "metrics-base"),
    ] {
        for shell in ["bash", "zsh", "fish"] {
            let out = run_env(SNAPCTL, &["completions", shell, "--program", program], &[]);
            assert!(
                out.status.success(),
                "{program} {shell}: {}",
                text(&out.stderr)
            );
            let script = text(&out.stdout);
            assert!(
                script.contains(name) && script.contains(flag),
                "{program} {shell}: {script}"
            );
        }
    }
    let bad = run_env(SNAPCTL, &["completions", "tcsh"], &[]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("tcsh"), "{}", text(&bad.stderr));
}

#[test]
fn man_pages_for_snapctl_bank_and_start_bank() {
    let out = run_env(SNAPCTL, &["man"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let page = text(&out.stdout);
    assert!(page.contains(".TH snapctl 1"), "{page}");
    assert!(
        page.contains("status") && page.contains("snapshots"),
        "{page}"
    );
    assert!(
        page.contains("commit "),
        "the version names the commit: {page}"
    );

    let dir = tempfile::tempdir().expect("tmp");
    let out = run_env(SNAPCTL, &["man", "--dir", s(dir.path())], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        out.stderr.is_empty(),
        "every page written: {}",
        text(&out.stderr)
    );
    let read = |name: &str| {
        std::fs::read_to_string(dir.path().join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}; wrote {}", text(&out.stdout)))
    };
    assert!(read("snapctl.1").contains(".TH snapctl"));
    let status = read("snapctl-status.1");
    assert!(status.contains("\\-\\-watch"), "{status}");
    let bank = read("bank.1");
    assert!(
        bank.contains(".TH bank") && bank.contains("\\-\\-metrics"),
        "{bank}"
    );
    assert!(bank.contains("\\-\\-log\\-format"), "{bank}");
    let start_bank = read("start_bank.1");
    assert!(
        start_bank.contains(".TH start_bank") && start_bank.contains("\\-\\-for"),
        "{start_bank}"
    );
    // start_bank's hidden flag prints the same page.
    let own = run_env(START_BANK, &["--man-page"], &[]);
    assert!(own.status.success());
    assert_eq!(text(&own.stdout), start_bank);
}

#[test]
fn version_names_the_commit() {
    for (bin, name) in [
        (SNAPCTL, "snapctl"),
        (BANK, "bank"),
        (START_BANK, "start_bank"),
    ] {
        let out = run_env(bin, &["--version"], &[]);
        let v = text(&out.stdout);
        assert!(out.status.success(), "{name}");
        assert!(
            v.starts_with(&format!("{name} 0.")) && v.contains("(commit "),
            "{v}"
        );
    }
}

/// start_bank takes SNAPBANK_HOSTS for --hosts, and refuses a bad RUST_LOG itself, in one
/// line, before any branch starts.
#[test]
fn start_bank_reads_snapbank_hosts_and_refuses_a_bad_rust_log_once() {
    let c = Cluster::new(2, &[]);
    let elsewhere = tempfile::tempdir().expect("tmp");
    let out = Command::new(START_BANK)
        .current_dir(elsewhere.path())
        .args(["127.0.0.1", "--for", "300ms", "--insecure"])
        .env("SNAPBANK_HOSTS", c.hosts())
        .env("SNAPBANK_DATA_DIR", c.data())
        .env_remove("RUST_LOG")
        .output()
        .expect("start_bank");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("audit: CONSISTENT"),
        "{}",
        text(&out.stdout)
    );
    let out = Command::new(START_BANK)
        .args(["127.0.0.1", "--for", "300ms", "--insecure"])
        .env("SNAPBANK_HOSTS", c.hosts())
        .env("SNAPBANK_DATA_DIR", c.data())
        .env("RUST_LOG", "verbose")
        .output()
        .expect("start_bank");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("RUST_LOG") && err.contains("verbose"), "{err}");
    assert!(!err.contains("started bank"), "{err}");
}

#[test]
fn environment_variables_stand_in_for_data_dir_hosts_and_key() {
    let c = Cluster::new(2, &[]);
    c.populate(800);
    let (d, h) = (c.data(), c.hosts());
    let elsewhere = tempfile::tempdir().expect("tmp");
    // No --data-dir: SNAPBANK_DATA_DIR says where the stores are (the directory it runs in has
    // none).
    let mut cmd = Command::new(SNAPCTL);
    cmd.current_dir(elsewhere.path())
        .args(["audit", "--json"])
        .env("SNAPBANK_DATA_DIR", &d)
        .env("SNAPBANK_HOSTS", &h);
    let out = cmd.output().expect("snapctl");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["consistent"], true, "{v:#}");
    assert_eq!(v["branches"][1]["branch"], c.addr(1), "{v:#}");
    // A flag wins over its variable.
    let out = run_env(
        SNAPCTL,
        &["audit", "--data-dir", "/nonexistent/data"],
        &[("SNAPBANK_DATA_DIR", s(&d))],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent/data"));
    // SNAPBANK_HOSTS is the host.list the stores are checked against.
    let out = run_env(
        SNAPCTL,
        &["audit"],
        &[
            ("SNAPBANK_DATA_DIR", s(&d)),
            ("SNAPBANK_HOSTS", "/nonexistent/host.list"),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("/nonexistent/host.list"),
        "{}",
        text(&out.stderr)
    );
    // SNAPBANK_KEY is the key file operators use.
    let out = run_env(
        SNAPCTL,
        &["status", "--hosts", s(&h)],
        &[("SNAPBANK_KEY", "/nonexistent/cluster.key")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("/nonexistent/cluster.key"),
        "{}",
        text(&out.stderr)
    );
    // --help names the variables.
    let help = text(&run_env(SNAPCTL, &["status", "--help"], &[]).stdout);
    for var in ["SNAPBANK_HOSTS", "SNAPBANK_DATA_DIR", "SNAPBANK_KEY"] {
        assert!(help.contains(var), "{help}");
    }
}

/// The JSON error document of a failed `--json` command.
fn json_error(out: &Output, code: u8) -> String {
    assert_eq!(
        out.status.code(),
        Some(code as i32),
        "{}",
        text(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out.stdout)));
    assert_eq!(v["exit_code"], code, "{v}");
    let e = v["error"].as_str().expect("error message").to_string();
    // The usual line is on stderr as well, for people and for scripts that read it there.
    let err = text(&out.stderr);
    assert_eq!(
        err.lines().filter(|l| l.contains("error")).count(),
        1,
        "{err}"
    );
    if !e.starts_with("invalid value") {
        assert_eq!(err.trim_end(), format!("snapctl: error: {e}"), "{err}");
    }
    e
}

#[test]
fn a_failing_json_command_prints_a_json_error() {
    let out = run_env(
        SNAPCTL,
        &["snapshots", "--json", "--data-dir", "/nonexistent/data"],
        &[],
    );
    assert!(json_error(&out, 2).contains("/nonexistent/data"));
    let out = run_env(
        SNAPCTL,
        &["audit", "--json", "--data-dir", "/nonexistent/data"],
        &[],
    );
    assert!(json_error(&out, 2).contains("/nonexistent/data"));
    let out = run_env(
        SNAPCTL,
        &["status", "--json", "--hosts", "/nonexistent/host.list"],
        &[],
    );
    assert!(json_error(&out, 2).contains("/nonexistent/host.list"));
    // A command line clap refuses, too.
    let out = run_env(SNAPCTL, &["status", "--json", "--timeout", "soon"], &[]);
    let e = json_error(&out, 2);
    assert!(e.contains("--timeout") && e.contains("soon"), "{e}");
    // Without --json, the usual one line on stderr.
    let out = run_env(
        SNAPCTL,
        &["snapshots", "--data-dir", "/nonexistent/data"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert_eq!(
        text(&out.stderr).lines().count(),
        1,
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn start_bank_lines_are_json_with_log_format_json() {
    let c = Cluster::new(2, &[]);
    let out = start_bank_on(&c, &["--for", "800ms", "--log-format", "json"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    let mut own = 0;
    for l in err.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
        let msg = v["fields"]["message"].as_str().unwrap_or_default();
        if v["program"] == "start_bank" {
            own += 1;
        } else {
            assert!(v["branch"].is_string(), "{l}");
        }
        assert!(!msg.starts_with("start_bank: "), "{l}");
    }
    assert!(own >= 3, "started x2, elapsed: {err}");
}

#[test]
fn log_format_json_names_the_branch_on_every_line() {
    let mut c = Cluster::new(2, &["--log-format", "json", "--status-interval", "200ms"]);
    c.start_all();
    assert!(c.wait_log(0, Duration::from_secs(20), |l| l.contains("every link up")));
    c.stop_all();
    for i in 0..2 {
        let log = c.log(i);
        let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(lines.len() >= 4, "{log}");
        for l in lines {
            let v: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("branch {i}: not a JSON line ({e}): {l}"));
            assert_eq!(v["branch"], c.addr(i), "{l}");
            assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
            assert!(v["fields"]["message"].is_string(), "{l}");
        }
    }
}

#[test]
fn every_line_under_start_bank_names_its_branch() {
    let c = Cluster::new(3, &[]);
    let out = start_bank_on(
        &c,
        &[
            "--for",
            "1500ms",
            "--snapshot-interval",
            "200ms",
            "--status-interval",
            "300ms",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    let addrs: Vec<String> = (0..3).map(|i| format!("branch {}", c.addr(i))).collect();
    let lines: Vec<&str> = err.lines().collect();
    assert!(lines.len() > 10, "{err}");
    // Every line is whole: a branch's (with a level) or start_bank's own.
    for l in &lines {
        assert!(
            l.starts_with("start_bank: ")
                || [" ERROR ", " WARN ", " INFO ", " DEBUG "]
                    .iter()
                    .any(|lv| l.contains(lv)),
            "a line neither a branch's nor start_bank's: {l}"
        );
    }
    let logged: Vec<&&str> = lines
        .iter()
        .filter(|l| {
            [" ERROR ", " WARN ", " INFO ", " DEBUG "]
                .iter()
                .any(|lv| l.contains(lv))
        })
        .collect();
    assert!(logged.len() > 10, "{err}");
    for l in logged {
        assert!(
            addrs.iter().any(|a| l.contains(a.as_str())),
            "names no branch: {l}"
        );
        assert!(!l.contains("65535"), "{l}");
    }
    // A snapshot line, which said no branch before, now says the initiator's.
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("{}: snapshot 1 complete", addrs[0]))),
        "{err}"
    );
}

/// Exactly one line of `stderr`, and it names every needle.
fn one_line(stderr: &str, needles: &[&str]) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let errors: Vec<&&str> = lines
        .iter()
        .filter(|l| l.to_lowercase().contains("error") || l.contains("panicked"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line in:\n{stderr}");
    for n in needles {
        assert!(errors[0].contains(n), "{:?} names {n:?}", errors[0]);
    }
}

#[test]
fn a_bad_log_level_or_rust_log_is_a_one_line_error() {
    let c = Cluster::new(2, &[]);
    let (d, h) = (c.data(), c.hosts());
    let branch = c.addr(1);
    let base = [branch.as_str(), "--hosts", s(&h), "--data-dir", s(&d)];
    for bad in [
        "verbose",
        "info,snapbank=loud",
        "info,,debug",
        "[span]=info",
    ] {
        let out = run_env(BANK, &[&base[..], &["--log-level", bad]].concat(), &[]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", text(&out.stderr));
        one_line(&text(&out.stderr), &["--log-level", bad]);
    }
    for bad in ["verbose", "info,foo=bar", "snapbank::net"] {
        let out = run_env(BANK, &base, &[("RUST_LOG", bad)]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", text(&out.stderr));
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        one_line(&err, &["RUST_LOG", bad]);
    }
    // start_bank refuses a bad --log-level before it starts any branch.
    let out = run_env(
        START_BANK,
        &[
            "127.0.0.1",
            "--hosts",
            s(&h),
            "--data-dir",
            s(&d),
            "--log-level",
            "verbose",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    one_line(&text(&out.stderr), &["--log-level", "verbose"]);
    assert!(!c.store_dir(0).exists(), "no branch started");
    // A bad --log-format, the same way.
    let out = run_env(BANK, &[&base[..], &["--log-format", "xml"]].concat(), &[]);
    assert_eq!(out.status.code(), Some(2));
    one_line(&text(&out.stderr), &["--log-format", "xml"]);
}
