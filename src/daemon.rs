//! The branch daemon behind `bank IP:PORT` (and behind `start_bank`, which runs it in a child
//! process of its own binary when no `bank` binary was built next to it).
//!
//! Signals: SIGINT and SIGTERM stop the branch gracefully (`--settle`, then exit 0); SIGHUP is
//! logged and ignored (there is nothing to reload: host.list, the key and the flags are read once,
//! at start). Under systemd (`tools/deploy/bank@.service`, `Type=notify`) the branch says
//! `READY=1` once it serves, `STATUS=` now and then, `WATCHDOG=1` at half of `$WATCHDOG_USEC` from
//! the thread that runs the core loop (a core loop that hangs stops the pings), and `STOPPING=1`
//! when it starts to stop ([`notify`]).

mod notify;

use crate::cli::{error_line, init_logging, BranchFlags, DataDir, KeyArgs};
use crate::core::{CoreConfig, Timing};
use crate::hosts::HostList;
use crate::net::{metrics, run_branch, Metrics, NodeConfig};
use crate::secure::{ClusterKey, Security};
use crate::store::{branch_dir, Identity, SledStore, StoreError};
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often a branch under systemd refreshes its `STATUS=` line.
const STATUS_EVERY: Duration = Duration::from_secs(30);

/// Longest wait between two attempts to connect to a peer (the redial backoff's cap).
const REDIAL_MAX: Duration = Duration::from_secs(2);

/// Run one branch of a snapbank cluster: move money to the other branches exactly once, durably,
/// and take part in Chandy–Lamport snapshots.
#[derive(Parser, Debug)]
#[command(name = "bank", version = crate::cli::VERSION)]
struct Args {
    /// This branch's address as written in host.list, e.g. 127.0.0.1:8000 or [::1]:8000.
    branch: String,
    /// The cluster's branch list.
    #[arg(
        long,
        env = "SNAPBANK_HOSTS",
        default_value = "host.list",
        value_name = "FILE"
    )]
    hosts: PathBuf,
    #[command(flatten)]
    data: DataDir,
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    flags: BranchFlags,
    /// Write this branch's measurements (transfer latency, snapshot durations, start-up times)
    /// as JSON to FILE every --status-interval and at exit (read by tools/bench).
    #[arg(long, value_name = "FILE")]
    stats_file: Option<PathBuf>,
    /// Benchmarks: start snapshots only in even-numbered wall-clock phases of this length, so
    /// throughput with and without snapshots can be compared in one run.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    snapshot_phases: Option<Duration>,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9100 (off by default;
    /// anyone who reaches ADDR can read them: prefer a loopback or private address).
    #[arg(long, value_name = "HOST:PORT", value_parser = crate::cli::parse_host_port)]
    metrics: Option<SocketAddr>,
}

/// `bank`'s command line, for its man page (`snapctl man`).
pub fn command() -> clap::Command {
    <Args as clap::CommandFactory>::command()
}

/// Runs `bank` with these arguments (the first is the program name).
pub fn main<I, T>(argv: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let started = Instant::now();
    let args = Args::parse_from(argv);
    if let Err(e) = init_logging(&args.flags, &args.branch) {
        crate::cli::write_stderr(&format!("bank: error: {e}"));
        return ExitCode::from(2);
    }
    match run(args, started) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            crate::cli::write_stderr(&format!("bank: error: {}", error_line(&e)));
            if is_refusal(&e) {
                ExitCode::from(EXIT_REFUSED)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Exit status of a branch that refuses to run for a reason only an operator can mend (`EX_CONFIG`
/// of sysexits.h): a bad host.list, key or address; a store of another cluster or branch, corrupt,
/// of a newer schema, behind its peers, or part of an unfinished restore. Starting it again
/// changes nothing, so `start_bank --restart` and the systemd unit (`RestartPreventExitStatus`)
/// leave it stopped; other failures (a store still locked, a full disk, a port in use) exit 1
/// and are restarted.
pub const EXIT_REFUSED: u8 = 78;

/// A refusal of `bank` for something in its command line or host.list (see [`EXIT_REFUSED`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refusal(String);

fn refuse(msg: String) -> anyhow::Error {
    anyhow::Error::new(Refusal(msg))
}

/// Whether `e` is a refusal that a restart would meet again.
fn is_refusal(e: &anyhow::Error) -> bool {
    let store = |s: &StoreError| !matches!(s, StoreError::Locked(_) | StoreError::Io { .. });
    e.chain().any(|c| {
        if let Some(s) = c.downcast_ref::<StoreError>() {
            return store(s);
        }
        if let Some(n) = c.downcast_ref::<crate::net::NodeError>() {
            return match n {
                crate::net::NodeError::Store(s) => store(s),
                crate::net::NodeError::StoreBehind(_) => true,
                crate::net::NodeError::Listen { .. } => false,
            };
        }
        c.is::<Refusal>()
            || c.is::<crate::hosts::HostListError>()
            || c.is::<crate::secure::KeyError>()
    })
}

fn run(args: Args, started: Instant) -> anyhow::Result<()> {
    let notifier = notify::Notifier::from_env().map_err(|e| {
        anyhow::anyhow!("{e} (unset NOTIFY_SOCKET unless a service manager started the branch)")
    })?;
    let hosts = HostList::load(&args.hosts)?;
    let addr: SocketAddr = args.branch.parse().map_err(|_| {
        refuse(format!(
            "'{}' is not an address like 127.0.0.1:8000",
            args.branch
        ))
    })?;
    let me = hosts.id_of(addr).ok_or_else(|| {
        refuse(format!(
            "{addr} is not a branch in {} ({})",
            args.hosts.display(),
            hosts
        ))
    })?;
    let f = &args.flags;
    let n = hosts.len() as u64;
    if f.initial_balance.checked_mul(n).is_none() {
        return Err(refuse(format!(
            "--initial-balance {} times {n} branches overflows",
            f.initial_balance
        )));
    }
    // Before anything is written: a cluster whose restore is unfinished stays stopped (the
    // store's own mark is checked once it is open).
    crate::restore::refuse_if_unfinished(
        &args.data.data_dir,
        &branch_dir(&args.data.data_dir, addr),
    )?;
    // Before anything is written or any money moves: a port in use is one error line.
    let metrics_listener = match args.metrics {
        Some(at) => Some(
            metrics::bind(at)
                .map_err(|e| anyhow::anyhow!("--metrics {at}: cannot listen there: {e}"))?,
        ),
        None => None,
    };
    let security = if args.key.insecure {
        tracing::warn!(
            "branch {addr}: running --insecure: links are neither authenticated nor encrypted; any process that reaches this port can move money"
        );
        Security::Insecure
    } else {
        let path = args.key.path(&args.data);
        let fresh = !branch_dir(&args.data.data_dir, addr).exists();
        let key = load_or_make_key(&path, &hosts, fresh && args.key.key.is_none())?;
        Security::Noise(std::sync::Arc::new(key.branch_keys(&hosts, me, &path)?))
    };
    let seed = f.seed.unwrap_or_else(rand::random);
    let identity = Identity::new(&hosts, me, f.initial_balance);
    let dir = branch_dir(&args.data.data_dir, addr);
    crate::durable::create_dir_all(&args.data.data_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create data directory {}: {}",
            args.data.data_dir.display(),
            crate::store::describe_io(&e)
        )
    })?;
    info!(
        "branch {addr}: store {}, seed {seed}, transfer interval {}, snapshot interval {}",
        dir.display(),
        f.transfer_interval,
        humantime::format_duration(f.snapshot_interval)
    );
    let metrics = Metrics::new(&hosts, me, started);
    let cfg = NodeConfig {
        core: CoreConfig {
            me,
            branches: hosts.len() as u16,
            initiator: hosts.initiator,
            initial_balance: f.initial_balance,
            epoch_total: None,
            amount_max: f.max_amount,
            unacked_per_channel_max: f
                .unacked_max
                .unwrap_or_else(|| crate::cli::default_unacked_max(hosts.len()))
                as usize,
            live_snapshots_max: 64,
            seed,
            snapshots_kept: f.keep_snapshots,
            timing: Timing {
                snapshot_interval_us: micros(f.snapshot_interval),
                snapshot_warn_after_us: micros(f.snapshot_warn_after),
                snapshot_phases_us: args.snapshot_phases.map(micros),
            },
        },
        cluster_id: identity.cluster_id,
        epoch: 0,
        security,
        hosts,
        pace: f.transfer_interval,
        redial_max: REDIAL_MAX,
        settle: f.settle,
        commit_window: f.commit_window,
        status_interval: f.status_interval,
        started,
        stats_file: args.stats_file.clone(),
        snapshot_phases: args.snapshot_phases,
        metrics,
        ready: std::sync::Arc::new(tokio::sync::Notify::new()),
    };
    cfg.core
        .validate()
        .map_err(|e| refuse(format!("branch {addr}: {e}")))?;
    // One worker for the links (the core loop runs on this thread, and commits in place): on
    // 2 cores shared by every branch, a second worker only added cross-thread wake-ups (bench,
    // with sled's smaller pool and no flusher: N=32 612 k -> 711 k transfers/s, N=4 +5-11 %).
    // Multi-threaded all the same: the core loop's commits use `block_in_place`.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
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
        let mut hup = signal(SignalKind::hangup())?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                info!(
                    "branch {addr}: SIGHUP ignored: nothing to reload (host.list, the key and the flags are read at start; restart the branch to change them, SIGTERM stops it)"
                );
            }
        });
        if let Some(listener) = metrics_listener {
            let at = listener
                .local_addr()
                .map_or_else(|_| "?".to_string(), |a| a.to_string());
            metrics::serve(listener, cfg.metrics.clone())
                .map_err(|e| anyhow::anyhow!("--metrics {at}: cannot serve: {e}"))?;
        }
        notifier.send_or_warn(&format!("STATUS=opening store {}", dir.display()));
        let store = tokio::task::block_in_place(|| open_with_retry(&dir, &identity))?;
        let ready = cfg.ready.clone();
        let settle = cfg.settle;
        // Polled on this thread with the core loop: the watchdog's pings stop if it hangs.
        tokio::select! {
            ran = run_branch(cfg, store, shutdown.clone()) => Ok::<_, anyhow::Error>(ran?),
            never = tell_service_manager(&notifier, &ready, &shutdown, addr, settle) => match never {},
        }
    })?;
    Ok(())
}

/// Tells systemd (if it asked, [`notify::Notifier`]) how the branch is doing: `READY=1` once it
/// serves, `STATUS=` lines, `WATCHDOG=1` at the watchdog's half-period, `STOPPING=1` once it is
/// asked to stop. Never returns: it ends with the branch it runs beside.
async fn tell_service_manager(
    notifier: &notify::Notifier,
    ready: &tokio::sync::Notify,
    shutdown: &CancellationToken,
    addr: SocketAddr,
    settle: Duration,
) -> std::convert::Infallible {
    if !notifier.enabled() {
        return std::future::pending().await;
    }
    let far = Duration::from_secs(86400 * 365);
    let mut watchdog = tokio::time::interval(notifier.watchdog_every().unwrap_or(far));
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut status =
        tokio::time::interval_at(tokio::time::Instant::now() + STATUS_EVERY, STATUS_EVERY);
    let (mut serving, mut stopping) = (None, false);
    loop {
        tokio::select! {
            _ = ready.notified(), if serving.is_none() => {
                serving = Some(Instant::now());
                notifier.send_or_warn(&format!(
                    "READY=1\nSTATUS=serving {addr}: store open, listening"
                ));
            }
            _ = shutdown.cancelled(), if !stopping => {
                stopping = true;
                notifier.send_or_warn(&format!(
                    "STOPPING=1\nSTATUS=stopping {addr}: settling in-flight transfers for {}",
                    humantime::format_duration(settle)
                ));
            }
            _ = watchdog.tick(), if notifier.watchdog_every().is_some() => {
                notifier.send_or_warn("WATCHDOG=1");
            }
            _ = status.tick(), if !stopping => {
                if let Some(since) = serving {
                    let up = Duration::from_secs(since.elapsed().as_secs());
                    notifier.send_or_warn(&format!(
                        "STATUS=serving {addr} for {}",
                        humantime::format_duration(up)
                    ));
                }
            }
        }
    }
}

impl notify::Notifier {
    /// Sends `state`, logging a failure (the first one only: a service manager that went away
    /// must neither stop the branch nor flood its log).
    fn send_or_warn(&self, state: &str) {
        static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if let Err(e) = self.send(state) {
            if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                warn!("cannot notify the service manager (NOTIFY_SOCKET): {e}");
            }
        }
    }
}

/// Loads the cluster key. A new branch (no store yet) without `--key` whose data directory has
/// no key file makes one, as the first `start_bank` does: branches starting together on one
/// host share whichever was written first. A branch that already has a store never makes one:
/// a lost key file must be copied back from another host, not replaced.
fn load_or_make_key(
    path: &std::path::Path,
    hosts: &HostList,
    may_make: bool,
) -> anyhow::Result<ClusterKey> {
    if !may_make {
        return Ok(ClusterKey::load(path)?);
    }
    let (key, created) = ClusterKey::load_or_create(path, hosts)?;
    if created {
        info!(
            "wrote a new cluster key to {} (mode 0600); copy it to every host of the cluster, like host.list",
            path.display()
        );
    }
    Ok(key)
}

/// A restart can race the previous process's exit for sled's lock: retry briefly. A store an
/// unfinished `snapctl restore` marked is refused.
fn open_with_retry(dir: &std::path::Path, identity: &Identity) -> anyhow::Result<SledStore> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match SledStore::open(dir, Some(identity)) {
            Err(StoreError::Locked(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            other => {
                let store = other?;
                store.refuse_if_restoring()?;
                return Ok(store);
            }
        }
    }
}

/// A duration as the core's microseconds (saturating: clap already refuses absurd ones).
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
