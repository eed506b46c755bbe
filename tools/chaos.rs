//! `chaos`: break a running cluster on purpose, then prove no money was lost or created.
//!
//! Starts N branches at full speed on their own loopback addresses (127.0.0.11, .12, …), and for
//! DURATION at random times kills random branches with SIGKILL (the initiator too) and restarts
//! them, and cuts a branch off or a pair apart with nftables and heals it. At the end it heals
//! everything, waits for snapshots to complete again, stops every branch gracefully and audits all
//! stores. Prints kills, partitions, transfers, snapshots and the verdict; exits 1 on any violation
//! (or if snapshots stop completing), 2 if it cannot run.
//!
//!     cargo build --release && ./target/release/chaos --duration 10m
//!
//! Partitions need root and nftables (`apt-get install nftables`); without them chaos only kills
//! (and says so).
//!
//! It writes the fault timeline `snapctl report --faults` shades, one JSON object a line
//! (`snapbank::report::Fault`): `kill` from the `kill -9` to the restart, `partition` from the cut
//! to the heal, Unix ms (`--faults FILE`, default `DIR/faults.jsonl`); and each branch process's
//! `--stats-file` as `DIR/stats/<branch>-<start>.json` (for `snapctl report --stats DIR/stats`).

use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use snapbank::audit::{audit, Cluster as Stores};
use snapbank::cli::format_audit;
use snapbank::report::{Fault, FaultKind};
use snapbank_testkit::{is_root, runs, Bins, Cluster, Dir};
use std::ffi::OsStr;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Parser, Debug)]
#[command(
    name = "chaos",
    version,
    about = "kill -9 and partition a snapbank cluster, then audit it"
)]
struct Args {
    /// Branches in the cluster.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(2..=32))]
    branches: u16,
    /// How long to break things.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Mean time between faults.
    #[arg(long, default_value = "1500ms", value_parser = humantime::parse_duration)]
    fault_every: Duration,
    /// Seed of the fault schedule (random if not given).
    #[arg(long)]
    seed: Option<u64>,
    /// Keep the cluster's files here (default: a temporary directory, removed on success).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Do not partition, only kill.
    #[arg(long)]
    no_partitions: bool,
    /// Snapshot interval of the cluster.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    snapshot_interval: Duration,
    /// Write the fault timeline here (JSON lines; default: faults.jsonl in the cluster's files).
    #[arg(long, value_name = "FILE")]
    faults: Option<PathBuf>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The fault timeline, one line per fault when it ends, flushed at once (a chaos run killed
/// part-way leaves whole lines).
struct Timeline {
    path: PathBuf,
    file: File,
}

impl Timeline {
    fn create(path: &Path) -> Result<Timeline, String> {
        let file = File::create(path)
            .map_err(|e| format!("cannot create the faults file {}: {e}", path.display()))?;
        Ok(Timeline {
            path: path.to_path_buf(),
            file,
        })
    }

    fn write(
        &mut self,
        kind: FaultKind,
        branches: Vec<String>,
        start_ms: u64,
    ) -> Result<(), String> {
        let f = Fault {
            kind,
            branches,
            start_ms,
            end_ms: Some(unix_ms().max(start_ms)),
        };
        writeln!(self.file, "{}", f.json_line())
            .and_then(|()| self.file.flush())
            .map_err(|e| format!("cannot write the faults file {}: {e}", self.path.display()))
    }
}

/// Starts branch `i` with its own stats file for this start: `stats/<i>-<start>.json`.
fn start(cluster: &mut Cluster, i: usize, starts: &mut [u32], stats: &Path) -> std::io::Result<()> {
    let file = stats.join(format!("{i}-{}.json", starts[i]));
    starts[i] += 1;
    let bank = cluster.bins.bank.clone();
    cluster.try_start_with(i, &bank, &[OsStr::new("--stats-file"), file.as_os_str()])
}

/// The initiator's completed snapshots, from its log.
fn completed(cluster: &Cluster) -> Vec<u64> {
    cluster.completed().iter().map(|c| c.id).collect()
}

/// An nftables table that drops traffic between address pairs; deleted on drop.
struct Cut {
    table: String,
}

impl Cut {
    fn new(pairs: &[(String, String)]) -> Result<Cut, String> {
        let table = format!("snapbank_chaos_{}", std::process::id());
        let mut script = format!(
            "add table inet {table}\nadd chain inet {table} out {{ type filter hook output priority 0; policy accept; }}\n"
        );
        for (a, b) in pairs {
            script.push_str(&format!(
                "add rule inet {table} out ip saddr {a} ip daddr {b} drop\n"
            ));
            script.push_str(&format!(
                "add rule inet {table} out ip saddr {b} ip daddr {a} drop\n"
            ));
        }
        let path = std::env::temp_dir().join(format!("{table}.nft"));
        std::fs::write(&path, script).map_err(|e| e.to_string())?;
        let st = Command::new("nft").arg("-f").arg(&path).status();
        let _ = std::fs::remove_file(&path);
        match st {
            Ok(s) if s.success() => Ok(Cut { table }),
            Ok(s) => Err(format!("nft exited {s}")),
            Err(e) => Err(format!("nft: {e}")),
        }
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}

fn nft_usable() -> bool {
    is_root() && runs("nft", "--version")
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("chaos: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<bool, String> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(seed);
    let bins = Bins::beside_current_exe().map_err(|e| e.to_string())?;
    if !bins.bank.is_file() {
        return Err("cannot find the `bank` binary next to chaos (cargo build --release)".into());
    }
    let tmp;
    let dir: &Path = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
            d
        }
        None => {
            tmp = std::env::temp_dir().join(format!("snapbank-chaos-{}", std::process::id()));
            std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
            &tmp
        }
    };
    let partitions = !args.no_partitions && nft_usable();
    if !args.no_partitions && !partitions {
        println!("chaos: partitions SKIPPED (need root and nftables); killing only");
    }
    let n = args.branches as usize;
    let ips: Vec<String> = (0..n).map(|i| format!("127.0.0.{}", 11 + i)).collect();
    let mut cluster = Cluster::create(bins, Dir::Kept(dir.to_path_buf()), &ips, true)
        .map_err(|e| e.to_string())?;
    cluster.args = vec![
        "--transfer-interval".into(),
        "0s".into(),
        "--snapshot-warn-after".into(),
        "5s".into(),
        "--snapshot-interval".into(),
        humantime::format_duration(args.snapshot_interval).to_string(),
        // Stats files fresh to the second (a killed process keeps what it last wrote).
        "--status-interval".into(),
        "1s".into(),
    ];
    let stats = dir.join("stats");
    std::fs::create_dir_all(&stats).map_err(|e| format!("{}: {e}", stats.display()))?;
    let faults_path = args
        .faults
        .clone()
        .unwrap_or_else(|| dir.join("faults.jsonl"));
    let mut timeline = Timeline::create(&faults_path)?;
    let mut starts = vec![0u32; n];
    for i in 0..n {
        let _ = File::create(cluster.log_path(i));
        start(&mut cluster, i, &mut starts, &stats).map_err(|e| e.to_string())?;
    }
    println!(
        "chaos: {n} branches, {} of faults, seed {seed}, files in {}, fault timeline {}",
        humantime::format_duration(args.duration),
        dir.display(),
        faults_path.display()
    );

    let begin = Instant::now();
    let mut kills = 0u64;
    let mut cuts = 0u64;
    // The partition in place: its nftables table, when it heals, whom it cut off and since when.
    let mut cut: Option<(Cut, Instant, Vec<String>, u64)> = None;
    // Killed branches: which, when they come back, since when (Unix ms).
    let mut down: Vec<(usize, Instant, u64)> = Vec::new();
    let mean = args.fault_every.as_millis().max(10) as u64;
    while begin.elapsed() < args.duration {
        std::thread::sleep(Duration::from_millis(
            rng.gen_range(mean / 4..=mean * 7 / 4),
        ));
        let now = Instant::now();
        // Restart branches whose downtime is over, heal a partition whose time is up.
        let (back, still): (Vec<_>, Vec<_>) = down.into_iter().partition(|(_, at, _)| *at <= now);
        down = still;
        for (i, _, since) in back {
            if let Err(e) = start(&mut cluster, i, &mut starts, &stats) {
                eprintln!("chaos: restart: {e}");
            }
            timeline.write(FaultKind::Kill, vec![cluster.addrs[i].clone()], since)?;
        }
        if cut.as_ref().is_some_and(|(_, until, _, _)| *until <= now) {
            if let Some((table, _, who, since)) = cut.take() {
                drop(table);
                timeline.write(FaultKind::Partition, who, since)?;
            }
            println!("[{:>6.1}s] healed", begin.elapsed().as_secs_f64());
        }
        let want_cut = partitions && cut.is_none() && rng.gen_bool(0.4);
        if want_cut {
            let a = rng.gen_range(0..n);
            let (pairs, who): (Vec<(String, String)>, Vec<String>) = if rng.gen_bool(0.5) {
                // Isolate branch a from everyone.
                let pairs = (0..n)
                    .filter(|&b| b != a)
                    .map(|b| (ips[a].clone(), ips[b].clone()))
                    .collect();
                (pairs, vec![cluster.addrs[a].clone()])
            } else {
                let b = (a + rng.gen_range(1..n)) % n;
                (
                    vec![(ips[a].clone(), ips[b].clone())],
                    vec![cluster.addrs[a].clone(), cluster.addrs[b].clone()],
                )
            };
            let hold = Duration::from_millis(rng.gen_range(500..=4000));
            let what = if pairs.len() == 1 {
                format!("cut {} | {}", pairs[0].0, pairs[0].1)
            } else {
                format!("isolated {}", ips[a])
            };
            match Cut::new(&pairs) {
                Ok(c) => {
                    cuts += 1;
                    println!(
                        "[{:>6.1}s] {what} for {hold:?}",
                        begin.elapsed().as_secs_f64()
                    );
                    cut = Some((c, now + hold, who, unix_ms()));
                }
                Err(e) => return Err(format!("partition failed: {e}")),
            }
        } else {
            let i = rng.gen_range(0..n);
            if down.iter().any(|(d, _, _)| *d == i) {
                continue;
            }
            let since = unix_ms();
            cluster.kill9(i);
            kills += 1;
            let back = Duration::from_millis(rng.gen_range(0..=1500));
            println!(
                "[{:>6.1}s] kill -9 {}{} (back in {back:?})",
                begin.elapsed().as_secs_f64(),
                cluster.addrs[i],
                if i == 0 { " (initiator)" } else { "" }
            );
            down.push((i, now + back, since));
        }
    }
    // Faults stop: heal, restart, and require snapshots to complete again.
    if let Some((table, _, who, since)) = cut.take() {
        drop(table);
        timeline.write(FaultKind::Partition, who, since)?;
    }
    for (i, _, since) in std::mem::take(&mut down) {
        start(&mut cluster, i, &mut starts, &stats).map_err(|e| e.to_string())?;
        timeline.write(FaultKind::Kill, vec![cluster.addrs[i].clone()], since)?;
    }
    let done_at_heal = completed(&cluster).last().copied().unwrap_or(0);
    println!(
        "[{:>6.1}s] faults over: healed and restarted everything; last snapshot so far {done_at_heal}",
        begin.elapsed().as_secs_f64()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut live = false;
    while Instant::now() < deadline {
        if completed(&cluster)
            .iter()
            .filter(|&&k| k > done_at_heal)
            .count()
            >= 3
        {
            live = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // SIGTERM everyone; the branches that did not exit 0 within 30 s.
    let bad_exits: Vec<String> = cluster
        .terminate_all(Duration::from_secs(30))
        .into_iter()
        .filter(|(_, st)| !st.is_some_and(|s| s.success()))
        .map(|(i, st)| format!("{} ({:?})", cluster.addrs[i], st))
        .collect();
    let completed = completed(&cluster);
    let data = cluster.data();
    let report = audit(&data, None).map_err(|e| format!("audit: {e}"))?;
    print!("{}", format_audit(&report));
    // From the store, not the log: a kill between commit and log line leaves a line unwritten.
    // The initiator keeps the latest --keep-snapshots, so its ids must be one unbroken run that
    // ends at the last snapshot it completed.
    let ids: Vec<u64> = Stores::open(&data, None)
        .and_then(|c| Ok(c.initiator().globals()?))
        .map_err(|e| format!("read the initiator's snapshots: {e}"))?
        .iter()
        .map(|g| g.snapshot.0)
        .collect();
    let contiguous = ids.windows(2).all(|w| w[1] == w[0] + 1)
        && ids.last().copied() == report.last_snapshot
        && ids.len() == report.snapshots_checked
        && !ids.is_empty();
    println!(
        "chaos: kills {kills}, partitions {cuts}, transfers {}, snapshots completed {} (checked {}), seed {seed}",
        report.transfers,
        completed.len(),
        report.snapshots_checked
    );
    let mut ok = report.consistent;
    if !live {
        println!(
            "chaos: FAIL: snapshots did not complete again within 60 s after the faults stopped"
        );
        ok = false;
    }
    if !contiguous {
        println!(
            "chaos: FAIL: the initiator's snapshots are not one unbroken run ending at the last ({:?}): {} held, ids {:?}..{:?}",
            report.last_snapshot,
            ids.len(),
            ids.first(),
            ids.last()
        );
        ok = false;
    }
    if !bad_exits.is_empty() {
        println!(
            "chaos: FAIL: branches did not stop cleanly: {}",
            bad_exits.join(", ")
        );
        ok = false;
    }
    println!(
        "chaos: verdict {}",
        if ok { "CONSISTENT" } else { "VIOLATION" }
    );
    if ok && args.dir.is_none() {
        let _ = std::fs::remove_dir_all(dir);
    } else if !ok {
        println!("chaos: logs and stores kept in {}", dir.display());
    }
    Ok(ok)
}
