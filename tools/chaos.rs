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

use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use snapbank::audit::{audit, Cluster as Stores};
use snapbank::cli::format_audit;
use std::fs::{File, OpenOptions};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

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
}

struct Node {
    addr: String,
    child: Option<Child>,
    log: PathBuf,
}

struct Cluster {
    bank: PathBuf,
    hosts: PathBuf,
    data: PathBuf,
    nodes: Vec<Node>,
    snapshot_interval: Duration,
}

impl Cluster {
    fn start(&mut self, i: usize) -> Result<(), String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.nodes[i].log)
            .map_err(|e| format!("log: {e}"))?;
        let err = log.try_clone().map_err(|e| format!("log: {e}"))?;
        let child = Command::new(&self.bank)
            .arg(&self.nodes[i].addr)
            .arg("--hosts")
            .arg(&self.hosts)
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--transfer-interval", "0s", "--snapshot-warn-after", "5s"])
            .arg("--snapshot-interval")
            .arg(humantime::format_duration(self.snapshot_interval).to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bank.display()))?;
        self.nodes[i].child = Some(child);
        Ok(())
    }

    fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM everyone; returns the branches that did not exit 0.
    fn stop_all(&mut self) -> Vec<String> {
        for n in &self.nodes {
            if let Some(c) = &n.child {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(c.id().to_string())
                    .status();
            }
        }
        let mut bad = Vec::new();
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let end = Instant::now() + Duration::from_secs(30);
                let st = loop {
                    match c.try_wait() {
                        Ok(Some(st)) => break Some(st),
                        _ if Instant::now() > end => {
                            let _ = c.kill();
                            break None;
                        }
                        _ => std::thread::sleep(Duration::from_millis(20)),
                    }
                };
                if !st.is_some_and(|s| s.success()) {
                    bad.push(format!("{} ({:?})", n.addr, st));
                }
            }
        }
        bad
    }

    fn completed(&self) -> Vec<u64> {
        let log = std::fs::read_to_string(&self.nodes[0].log).unwrap_or_default();
        log.lines()
            .filter_map(|l| {
                let rest = &l[l.find("snapshot ")? + 9..];
                let (id, rest) = rest.split_once(' ')?;
                rest.starts_with("complete").then(|| id.parse().ok())?
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
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

fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    ls.iter()
        .map(|l| l.local_addr().map(|a| a.port()).map_err(|e| e.to_string()))
        .collect()
}

fn nft_usable() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    root && Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
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
    let bank = std::env::current_exe()
        .map_err(|e| e.to_string())?
        .parent()
        .map(|d| d.join("bank"))
        .filter(|p| p.is_file())
        .ok_or("cannot find the `bank` binary next to chaos (cargo build --release)")?;
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
    let ports = free_ports(n)?;
    let ips: Vec<String> = (0..n).map(|i| format!("127.0.0.{}", 11 + i)).collect();
    let addrs: Vec<String> = ips
        .iter()
        .zip(&ports)
        .map(|(ip, p)| format!("{ip}:{p}"))
        .collect();
    let hosts = dir.join("host.list");
    let text: String = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{a}{}\n", if i == 0 { ":S" } else { "" }))
        .collect();
    std::fs::write(&hosts, &text).map_err(|e| e.to_string())?;
    let list = snapbank::hosts::HostList::parse(&text, "host.list").map_err(|e| e.to_string())?;
    snapbank::secure::ClusterKey::generate(&list)
        .write(&dir.join("data").join("cluster.key"), true)
        .map_err(|e| e.to_string())?;
    let mut cluster = Cluster {
        bank,
        hosts,
        data: dir.join("data"),
        nodes: (0..n)
            .map(|i| Node {
                addr: addrs[i].clone(),
                child: None,
                log: dir.join(format!("bank{i}.log")),
            })
            .collect(),
        snapshot_interval: args.snapshot_interval,
    };
    for i in 0..n {
        let _ = File::create(&cluster.nodes[i].log);
        cluster.start(i)?;
    }
    println!(
        "chaos: {n} branches, {} of faults, seed {seed}, files in {}",
        humantime::format_duration(args.duration),
        dir.display()
    );

    let start = Instant::now();
    let mut kills = 0u64;
    let mut cuts = 0u64;
    let mut cut: Option<(Cut, Instant)> = None;
    let mut down: Vec<(usize, Instant)> = Vec::new();
    let mean = args.fault_every.as_millis().max(10) as u64;
    while start.elapsed() < args.duration {
        std::thread::sleep(Duration::from_millis(
            rng.gen_range(mean / 4..=mean * 7 / 4),
        ));
        let now = Instant::now();
        // Restart branches whose downtime is over, heal a partition whose time is up.
        down.retain(|(i, at)| {
            if *at <= now {
                if let Err(e) = cluster.start(*i) {
                    eprintln!("chaos: restart: {e}");
                }
                false
            } else {
                true
            }
        });
        if cut.as_ref().is_some_and(|(_, until)| *until <= now) {
            cut = None;
            println!("[{:>6.1}s] healed", start.elapsed().as_secs_f64());
        }
        let want_cut = partitions && cut.is_none() && rng.gen_bool(0.4);
        if want_cut {
            let a = rng.gen_range(0..n);
            let pairs: Vec<(String, String)> = if rng.gen_bool(0.5) {
                // Isolate branch a from everyone.
                (0..n)
                    .filter(|&b| b != a)
                    .map(|b| (ips[a].clone(), ips[b].clone()))
                    .collect()
            } else {
                let b = (a + rng.gen_range(1..n)) % n;
                vec![(ips[a].clone(), ips[b].clone())]
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
                        start.elapsed().as_secs_f64()
                    );
                    cut = Some((c, now + hold));
                }
                Err(e) => return Err(format!("partition failed: {e}")),
            }
        } else {
            let i = rng.gen_range(0..n);
            if down.iter().any(|(d, _)| *d == i) {
                continue;
            }
            cluster.kill9(i);
            kills += 1;
            let back = Duration::from_millis(rng.gen_range(0..=1500));
            println!(
                "[{:>6.1}s] kill -9 {}{} (back in {back:?})",
                start.elapsed().as_secs_f64(),
                cluster.nodes[i].addr,
                if i == 0 { " (initiator)" } else { "" }
            );
            down.push((i, now + back));
        }
    }
    // Faults stop: heal, restart, and require snapshots to complete again.
    drop(cut.take());
    for (i, _) in std::mem::take(&mut down) {
        cluster.start(i)?;
    }
    let done_at_heal = cluster.completed().last().copied().unwrap_or(0);
    println!(
        "[{:>6.1}s] faults over: healed and restarted everything; last snapshot so far {done_at_heal}",
        start.elapsed().as_secs_f64()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut live = false;
    while Instant::now() < deadline {
        if cluster
            .completed()
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
    let bad_exits = cluster.stop_all();
    let completed = cluster.completed();
    let report = audit(&cluster.data, None).map_err(|e| format!("audit: {e}"))?;
    print!("{}", format_audit(&report));
    // From the store, not the log: a kill between commit and log line leaves a line unwritten.
    // The initiator keeps the latest --keep-snapshots, so its ids must be one unbroken run that
    // ends at the last snapshot it completed.
    let ids: Vec<u64> = Stores::open(&cluster.data, None)
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
