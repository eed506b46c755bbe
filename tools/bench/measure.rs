//! One run's measurement: warm-up to the first snapshot, the window (stats files or logs read at
//! both ends), then the recovery probe (kill -9 of branch 1 and its restart, timed).

use crate::args::Args;
use crate::clock::{pause, secs_between, unix_ms};
use crate::cluster::Cluster;
use crate::figures::{from_logs, from_stats};
use crate::logs::{completed_snapshots, log_tail};
use crate::probes::{cpu_seconds, peak_rss_kb, threads};
use crate::results::{BranchResult, Cpu, Recovery, RunResult, Window};
use crate::stats::{fresh_stats, Stats};
use anyhow::{anyhow, bail, Context, Result};
use snapbank_testkit::line_time;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Warm-up, the measurement window, the recovery probe. Fills `r` as it goes.
pub fn measure(
    args: &Args,
    cluster: &mut Cluster,
    has_stats: bool,
    has_phases: bool,
    r: &mut RunResult,
) -> Result<()> {
    let n = cluster.len();
    r.per_branch = (0..n)
        .map(|i| BranchResult {
            addr: cluster.addr(i).to_string(),
            ..Default::default()
        })
        .collect();
    // Counted from the last branch's start: at N = 64 on two cores, starting them all can take
    // half a minute while the first ones already run at full speed.
    let started = (0..n)
        .filter_map(|i| cluster.started_at(i))
        .max()
        .unwrap_or_else(Instant::now);

    // Warm-up: until the initiator completes its first snapshot (every link up).
    let warmup_limit = Duration::from_secs_f64(10.0 + 1.0 * n as f64);
    loop {
        cluster.check_alive()?;
        let log = std::fs::read_to_string(cluster.log(0)).unwrap_or_default();
        if !completed_snapshots(&log).is_empty() {
            break;
        }
        if started.elapsed() > warmup_limit {
            let (mut broken, mut refused) = (0, 0);
            for i in 0..n {
                let l = std::fs::read_to_string(cluster.log(i)).unwrap_or_default();
                broken += l.matches("broken").count();
                refused += l.matches("refused").count();
            }
            bail!(
                "no snapshot completed within {warmup_limit:?} of start ({broken} 'broken' and {refused} 'refused' log lines); initiator log ends: {}",
                log_tail(&cluster.log(0), 3)
            );
        }
        pause(Duration::from_millis(100))?;
    }
    r.warmup_s = Some(started.elapsed().as_secs_f64());
    println!(
        "bench: N={n}: first snapshot complete after {:.1} s; measuring for {}",
        started.elapsed().as_secs_f64(),
        humantime::format_duration(args.duration)
    );

    // The window: from a phase boundary (so it holds whole phases) for --duration, wall clock.
    let now_ms = unix_ms(SystemTime::now());
    let t0_ms = if has_phases {
        let len = (args.phase.as_millis() as u64).max(1);
        now_ms.div_ceil(len) * len
    } else {
        now_ms
    };
    let t1_ms = t0_ms + args.duration.as_millis() as u64;
    wait_until_unix_ms(cluster, t0_ms)?;
    let cpu0 = cpu_all(cluster);
    // Stats at the start: the first file each branch writes from t0 on (the end is read the same
    // way, so counters and histograms cover about --duration, shifted by under a status interval).
    let stats0 = if has_stats {
        let w = fresh_stats(
            cluster,
            UNIX_EPOCH + Duration::from_millis(t0_ms),
            Duration::from_secs_f64(5.0 + 0.1 * n as f64),
        )?;
        let missing = w.iter().filter(|s| s.is_none()).count();
        if missing > 0 {
            r.notes.push(format!(
                "{missing} branches had no readable stats file at the window start"
            ));
        }
        w
    } else {
        Vec::new()
    };
    wait_until_unix_ms(cluster, t1_ms)?;
    let cpu1 = cpu_all(cluster);
    let threads_max = (0..n)
        .filter_map(|i| cluster.live_pid(i).and_then(threads))
        .max();
    let t1 = UNIX_EPOCH + Duration::from_millis(t1_ms);
    let window = Window {
        start_unix_ms: t0_ms,
        end_unix_ms: t1_ms,
        seconds: (t1_ms - t0_ms) as f64 / 1000.0,
    };
    r.window = Some(window);

    if has_stats {
        let stats1 = fresh_stats(cluster, t1, Duration::from_secs_f64(5.0 + 0.1 * n as f64))?;
        // Keep the stats as they were at the end of the window (branch 1's file is replaced by
        // its restarted process's).
        for path in &cluster.stats {
            let _ = std::fs::copy(path, path.with_extension("window-end.json"));
        }
        let log0 = std::fs::read_to_string(cluster.log(0)).unwrap_or_default();
        from_stats(args, has_phases, window, &stats0, &stats1, &log0, r);
        r.mesh_up_ms = mesh_up_ms(cluster, &stats0);
    } else {
        from_logs(cluster, window, r);
    }
    let cpu_s: Option<f64> = cpu0
        .iter()
        .zip(&cpu1)
        .map(|(a, b)| Some(b.as_ref()? - a.as_ref()?))
        .sum();
    match cpu_s {
        Some(cpu_s) => {
            let transfers = r.throughput.as_ref().map(|t| t.transfers);
            r.cpu = Some(Cpu {
                cpu_s,
                cores: cpu_s / window.seconds,
                us_per_transfer: transfers.filter(|t| *t > 0).map(|t| cpu_s * 1e6 / t as f64),
                threads_max,
            });
        }
        None => r
            .notes
            .push("CPU time unreadable for some branch at a window end".to_string()),
    }

    // Recovery probe: kill -9 branch 1, restart it, time it.
    recovery(cluster, has_stats, r)?;
    // Let it run a moment so its peak RSS reflects catching up.
    pause(Duration::from_secs(1))?;
    cluster.check_alive()?;
    Ok(())
}

/// Every branch's CPU seconds so far (`None`: not running or unreadable).
fn cpu_all(cluster: &mut Cluster) -> Vec<Option<f64>> {
    (0..cluster.len())
        .map(|i| cluster.live_pid(i).and_then(cpu_seconds))
        .collect()
}

/// From the last branch's spawn to the last branch having had its whole mesh up (`None`: a
/// branch's stats file does not say).
fn mesh_up_ms(cluster: &Cluster, stats: &[Option<Stats>]) -> Option<f64> {
    let last_start = (0..cluster.len())
        .filter_map(|i| cluster.kit.started_at[i].map(|(_, wall)| unix_ms(wall)))
        .max()?;
    let up: Option<Vec<u64>> = stats
        .iter()
        .map(|s| s.as_ref().and_then(|s| s.file.mesh_up_unix_ms))
        .collect();
    let last_up = up?.into_iter().max()?;
    Some(last_up.saturating_sub(last_start) as f64)
}

/// Sleeps until the wall clock reaches `ms` (Unix ms), checking that every branch still runs.
fn wait_until_unix_ms(cluster: &mut Cluster, ms: u64) -> Result<()> {
    let mut next_check = Instant::now();
    loop {
        let now = unix_ms(SystemTime::now());
        if now >= ms {
            return Ok(());
        }
        if Instant::now() >= next_check {
            cluster.check_alive()?;
            next_check = Instant::now() + Duration::from_millis(500);
        }
        pause(Duration::from_millis((ms - now).min(100)))?;
    }
}

/// kill -9 branch 1, restart it with the same arguments, and time its start-up.
fn recovery(cluster: &mut Cluster, has_stats: bool, r: &mut RunResult) -> Result<()> {
    let n = cluster.len();
    let i = 1;
    let before_kb = cluster.live_pid(i).and_then(peak_rss_kb);
    r.per_branch[i].peak_rss_kb_before_kill = before_kb;
    cluster.kill9(i);
    let stats = cluster.stats[i].clone();
    let log = cluster.log(i);
    let old = stats.with_extension("killed.json");
    if stats.exists() {
        std::fs::rename(&stats, &old).with_context(|| format!("move {} aside", stats.display()))?;
    }
    if let Ok(mut f) = OpenOptions::new().append(true).open(&log) {
        let _ = writeln!(f, "===== bench: kill -9 and restart =====");
    }
    let marker_at = std::fs::read_to_string(&log).map(|s| s.len()).unwrap_or(0);
    let addr = cluster.addr(i).to_string();
    println!("bench: N={n}: recovery probe: kill -9 {addr}, restarting");
    cluster.start(i)?;
    let (spawned, spawned_wall) =
        cluster.kit.started_at[i].ok_or_else(|| anyhow!("branch {addr} has no start time"))?;
    let pid = cluster.kit.children[i]
        .as_ref()
        .map(|c| c.id())
        .ok_or_else(|| anyhow!("branch {addr} is not running"))?;
    let limit = Duration::from_secs_f64(20.0 + 0.5 * n as f64);
    let mut rec = Recovery {
        branch: addr.clone(),
        ..Default::default()
    };
    loop {
        cluster.check_alive()?;
        if has_stats {
            if let Some(s) = Stats::read(&stats) {
                if s.pid() == pid {
                    rec.store_open_ms = s.file.store_open_ms;
                    rec.mesh_up_ms = s.file.mesh_up_ms;
                    if let Some(ft) = s.file.first_transfer_ms {
                        rec.first_transfer_ms = Some(ft);
                        rec.observed_ms = Some(spawned.elapsed().as_secs_f64() * 1e3);
                        rec.source = "restarted process's stats file".to_string();
                        break;
                    }
                }
            }
        } else {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            let up = log
                .get(marker_at..)
                .unwrap_or("")
                .lines()
                .find(|l| l.contains(" up: balance "))
                .and_then(line_time);
            if let Some(t) = up {
                rec.store_open_ms = Some(secs_between(spawned_wall, t) * 1e3);
                rec.observed_ms = Some(spawned.elapsed().as_secs_f64() * 1e3);
                rec.source = "log: spawn to the `up` line (store opened and recovered)".to_string();
                break;
            }
        }
        if spawned.elapsed() > limit {
            r.recovery = Some(rec);
            bail!(
                "restarted {addr} did not {} within {limit:?}; its log ends: {}",
                if has_stats {
                    "report a first transfer"
                } else {
                    "log `up`"
                },
                log_tail(&log, 3)
            );
        }
        pause(Duration::from_millis(20))?;
    }
    r.recovery = Some(rec);
    Ok(())
}
