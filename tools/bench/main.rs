//! `bench`: how fast is a snapbank cluster, and does it stay correct at that speed?
//!
//! For each N of `--branches` (default 4, 16, 32, 64) it starts N `bank` processes on 127.0.0.1
//! at full speed (`--transfer-interval 0s`) with a snapshot every `--snapshot-interval`, waits for
//! the first snapshot to complete, measures for `--duration`, then kills branch 1 with SIGKILL and
//! restarts it (recovery probe), reads every branch's peak RSS, stops the cluster with SIGTERM,
//! sums each branch's store size and audits the stores. It reports, per N and as a summary table,
//! and as JSON (`--json`, default `DIR/bench.json`):
//!
//! - transfers/s across the cluster (transfers sent, i.e. debits committed);
//! - per-transfer latency p50/p99 (debit commit to the acknowledgement covering it), from the
//!   branches' merged latency histograms;
//! - snapshot latency p50/p99 (start to global completion at the initiator) under that load;
//! - snapshot overhead: with `--snapshot-phases`, `bank` starts snapshots only in even wall-clock
//!   phases of `--phase`, so transfers/s in "on" phases divided by transfers/s in "off" phases,
//!   measured in the same run, is the cost of taking snapshots every `--snapshot-interval`;
//! - recovery: after `kill -9` of branch 1, the restarted process's time from start to store
//!   opened and recovered, and to its first new transfer handed to a link;
//! - peak RSS (VmHWM) and store bytes per branch at the end;
//! - the audit verdict: a run whose stores do not audit consistent is a failed run.
//!
//! The figures come from `bank --stats-file` (JSON rewritten every `--status-interval`). With a
//! `bank` that has no `--stats-file`, transfers/s and snapshot latency come from the logs' status
//! and `snapshot K complete in X ms` lines, and latency, overhead and time to first transfer are
//! reported as unavailable.
//!
//!     cargo build --release && ./target/release/bench --branches 4,16 --duration 10s
//!
//! Exit status: 0 every run consistent and measured, 1 a run failed (audit, crash, timeout),
//! 2 cannot run, 130 interrupted (every `bank` it started is stopped first).

mod args;
mod clock;
mod cluster;
mod figures;
mod logs;
mod measure;
mod output;
mod probes;
mod results;
mod run;
mod stats;

use anyhow::{bail, Context, Result};
use args::Args;
use clap::Parser;
use clock::{install_signal_handlers, interrupted, unix_ms};
use output::{print_run, print_summary};
use results::{write_json, Report};
use run::run_one;
use snapbank_testkit::Bins;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::SystemTime;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn bank_features(bank: &Path) -> Result<(bool, bool)> {
    let out = Command::new(bank)
        .arg("--help")
        .output()
        .with_context(|| format!("run {} --help", bank.display()))?;
    let help = String::from_utf8_lossy(&out.stdout);
    Ok((
        help.contains("--stats-file"),
        help.contains("--snapshot-phases"),
    ))
}

fn run(args: Args) -> Result<ExitCode> {
    install_signal_handlers()?;
    let bins = Bins::beside_current_exe().context("where is bench")?;
    if !bins.bank.is_file() {
        bail!("cannot find the `bank` binary next to bench (cargo build --release)");
    }
    let bank = &bins.bank;
    let (mut has_stats, mut has_phases) = bank_features(bank)?;
    if args.from_logs {
        (has_stats, has_phases) = (false, false);
    }
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("snapbank-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let json_path = args.json.clone().unwrap_or_else(|| dir.join("bench.json"));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "bench: branches {:?}, {} per run, snapshots every {} in alternating {} phases, {} cpus, files in {}",
        args.branches,
        humantime::format_duration(args.duration),
        humantime::format_duration(args.snapshot_interval),
        humantime::format_duration(args.phase),
        cpus,
        dir.display()
    );
    if !has_stats {
        println!("bench: this bank has no --stats-file: transfers/s and snapshot latency come from the logs; latency, overhead and time to first transfer are unavailable");
    } else if !has_phases {
        println!("bench: this bank has no --snapshot-phases: snapshot overhead is unavailable");
    }
    let mut report = Report {
        started_unix_ms: unix_ms(SystemTime::now()),
        cpus,
        bank: bank.display().to_string(),
        bank_has_stats_file: has_stats,
        bank_has_snapshot_phases: has_phases,
        duration_s: args.duration.as_secs_f64(),
        transfer_interval: args.transfer_interval.clone(),
        snapshot_interval_ms: args.snapshot_interval.as_secs_f64() * 1e3,
        phase_ms: args.phase.as_secs_f64() * 1e3,
        insecure: args.insecure,
        extra_bank_args: args
            .extra_bank_args
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        dir: dir.display().to_string(),
        ok: true,
        runs: Vec::new(),
    };
    for &n in &args.branches {
        if interrupted() {
            break;
        }
        let r = run_one(&args, &bins, has_stats, has_phases, n as usize, &dir);
        print_run(&r);
        report.ok &= r.ok;
        report.runs.push(r);
        write_json(&json_path, &report)?;
    }
    print_summary(&report);
    write_json(&json_path, &report)?;
    println!("bench: results in {}", json_path.display());
    if interrupted() {
        println!("bench: interrupted");
        return Ok(ExitCode::from(130));
    }
    println!("bench: verdict {}", if report.ok { "OK" } else { "FAILED" });
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
