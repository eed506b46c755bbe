//! The branch daemon behind `bank IP:PORT` (and behind `start_bank`, which runs it in a child
//! process of its own binary when no `bank` binary was built next to it).

use crate::cli::{init_logging, BranchFlags, DataDir};
use crate::core::CoreConfig;
use crate::hosts::HostList;
use crate::net::{run_branch, NodeConfig};
use crate::store::{branch_dir, Identity, SledStore, StoreError};
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Run one branch of a snapbank cluster: move money to the other branches exactly once, durably,
/// and take part in Chandy–Lamport snapshots.
#[derive(Parser, Debug)]
#[command(name = "bank", version)]
struct Args {
    /// This branch's address as written in host.list, e.g. 127.0.0.1:8000 or [::1]:8000.
    branch: String,
    /// The cluster's branch list.
    #[arg(long, default_value = "host.list", value_name = "FILE")]
    hosts: PathBuf,
    #[command(flatten)]
    data: DataDir,
    #[command(flatten)]
    flags: BranchFlags,
}

/// Runs `bank` with these arguments (the first is the program name).
pub fn main<I, T>(argv: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args = Args::parse_from(argv);
    if let Err(e) = init_logging(args.flags.log_level.as_deref()) {
        eprintln!("bank: error: {e}");
        return ExitCode::from(2);
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bank: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let hosts = HostList::load(&args.hosts)?;
    let addr: SocketAddr = args
        .branch
        .parse()
        .map_err(|_| anyhow::anyhow!("'{}' is not an address like 127.0.0.1:8000", args.branch))?;
    let me = hosts.id_of(addr).ok_or_else(|| {
        anyhow::anyhow!(
            "{addr} is not a branch in {} ({})",
            args.hosts.display(),
            hosts
        )
    })?;
    let f = &args.flags;
    let n = hosts.len() as u64;
    if f.initial_balance.checked_mul(n).is_none() {
        anyhow::bail!(
            "--initial-balance {} times {n} branches overflows",
            f.initial_balance
        );
    }
    let seed = f.seed.unwrap_or_else(rand::random);
    let identity = Identity::new(&hosts, me, f.initial_balance);
    let dir = branch_dir(&args.data.data_dir, addr);
    std::fs::create_dir_all(&args.data.data_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create data directory {}: {e}",
            args.data.data_dir.display()
        )
    })?;
    info!(
        "branch {addr}: store {}, seed {seed}, transfer interval {}, snapshot interval {}",
        dir.display(),
        f.transfer_interval,
        humantime::format_duration(f.snapshot_interval)
    );
    let cfg = NodeConfig {
        core: CoreConfig {
            me,
            branches: hosts.len() as u16,
            initiator: hosts.initiator,
            initial_balance: f.initial_balance,
            max_amount: f.max_amount,
            unacked_per_channel_max: f.unacked_max as usize,
            live_snapshots_max: 64,
            seed,
        },
        cluster_id: identity.cluster_id,
        hosts,
        pace: f.transfer_interval,
        snapshot_interval: f.snapshot_interval,
        reconnect_interval: Duration::from_secs(2),
        settle: f.settle,
        status_interval: f.status_interval,
        snapshot_warn_after: f.snapshot_warn_after,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        use tokio::signal::unix::{signal, SignalKind};
        // Handlers before anything slow: a SIGTERM while the store opens still stops cleanly.
        for kind in [SignalKind::interrupt(), SignalKind::terminate()] {
            let mut sig = signal(kind)?;
            let trigger = shutdown.clone();
            tokio::spawn(async move {
                sig.recv().await;
                trigger.cancel();
            });
        }
        let store = tokio::task::block_in_place(|| open_with_retry(&dir, &identity))?;
        Ok::<_, anyhow::Error>(run_branch(cfg, store, shutdown).await?)
    })?;
    Ok(())
}

/// A restart can race the previous process's exit for sled's lock: retry briefly.
fn open_with_retry(dir: &std::path::Path, identity: &Identity) -> anyhow::Result<SledStore> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match SledStore::open(dir, Some(identity)) {
            Err(StoreError::Locked(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            other => return Ok(other?),
        }
    }
}
