//! The tokio shell around a [`Branch`] core: it shuttles bytes and time, and decides nothing.
//!
//! Tasks:
//! - one **core loop** ([`run_branch`]) owns the core and the store: it drains events from a
//!   bounded inbox, feeds them to the core, commits the resulting [`WriteBatch`] (one atomic,
//!   flushed batch per step: group commit), and only then hands the messages to the links;
//! - one **outgoing link** task per peer dials it (retrying every 2 s, forever), handshakes, writes
//!   the core's messages for that peer and reads its acknowledgements;
//! - a **listener** accepts peers' connections; each inbound connection reads transfers, markers
//!   and parts, and writes our acknowledgements back;
//! - with `--metrics`, an HTTP server ([`metrics`]) serves Prometheus metrics; the core loop
//!   refreshes them only when scraped.
//!
//! [`WriteBatch`]: crate::core::WriteBatch

pub mod control;
pub mod metrics;
mod pace;
pub mod ready;
pub mod stats;

pub use metrics::Metrics;
pub use pace::Pace;
use stats::Stats;

use crate::core::{Branch, CoreConfig, Link, Notice, ProtocolError, Ready, Remedy};
use crate::hosts::HostList;
use crate::secure::{self, FrameCodec, Preamble, Security, PREAMBLE_LEN};
use crate::store::{SledStore, StoreError};
use crate::types::{BranchId, Micros, SeededRng, SnapshotId};
use crate::wire::{Message, MessageCodec, Request, WireError};
use futures::{SinkExt, StreamExt};
use rand::SeedableRng;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// Bound on events queued for the core loop (back-pressure on readers).
const INBOX_EVENTS_MAX: usize = 16 * 1024;
/// Events handled per step before committing.
const EVENTS_PER_STEP_MAX: usize = 4096;
/// Transfers made per step at full speed.
const TRANSFERS_PER_STEP_MAX: usize = 512;
/// Time a peer gets to complete the handshake and send its `Hello`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Inbound connections still in their handshake at once; more are closed at once (strangers
/// cannot tie up more than this many tasks for more than [`HANDSHAKE_TIMEOUT`]).
const HANDSHAKES_PENDING_MAX: usize = 128;

/// How a branch runs, beyond the core's own configuration.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub hosts: HostList,
    pub core: CoreConfig,
    pub cluster_id: u64,
    /// Noise with the cluster key, or `--insecure` plain frames.
    pub security: Security,
    pub pace: Pace,
    /// Wait between connection attempts to a peer.
    pub reconnect_interval: Duration,
    /// On shutdown, how long in-flight transfers get to be acknowledged.
    pub settle: Duration,
    /// How often to log a status line.
    pub status_interval: Duration,
    /// When the process started (start-up timings are measured from it).
    pub started: std::time::Instant,
    /// Where to write [`Stats`] every `status_interval` and at exit.
    pub stats_file: Option<std::path::PathBuf>,
    /// Benchmarks: the core starts snapshots only in even wall-clock phases of this length
    /// (`core.timing`); the stats file sorts latencies by phase with it.
    pub snapshot_phases: Option<Duration>,
    /// The branch's metrics, kept up to date by the core loop and the links (served over HTTP
    /// by [`metrics::serve`] with `--metrics`).
    pub metrics: Arc<Metrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    StoreBehind(String),
}

/// What a branch did, reported when it stops.
#[derive(Clone, Debug, Default)]
pub struct RunSummary {
    pub balance: u64,
    pub transfers_sent: u64,
    pub transfers_applied: u64,
    pub unacked: usize,
    pub snapshots_completed: u64,
}

enum Event {
    Message {
        from: BranchId,
        msg: Message,
    },
    LinkUp {
        peer: BranchId,
        epoch: u64,
    },
    LinkDown {
        peer: BranchId,
    },
    InboundUp {
        peer: BranchId,
    },
    /// A sender's `Position`, read on inbound connection `conn`. Checked only if `conn` is the
    /// peer's current connection: an old connection's reader may still hand one over after a
    /// newer connection's transfers were applied, and against those its counters look behind.
    Position {
        from: BranchId,
        conn: u64,
        msg: Message,
    },
    /// An operator's request (`snapctl status`, `snapctl snapshot`).
    Control(control::Pending),
}

/// Acknowledgement slot of the current inbound connection from each peer. Acks are cumulative,
/// so a slot holds only the latest: a peer that stops reading cannot make it grow.
type InboundWriters = Arc<Mutex<Vec<Option<(u64, watch::Sender<Option<Message>>)>>>>;

/// The tokio instant of the core's deadline `at` (wall-clock micros; `None`: `far`).
fn instant_at(at: Option<Micros>, far: tokio::time::Instant) -> tokio::time::Instant {
    match at {
        None => far,
        Some(at) => {
            tokio::time::Instant::now() + Duration::from_micros(at.saturating_sub(now_us()))
        }
    }
}

fn now_us() -> Micros {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Runs one branch until `shutdown` is cancelled; then stops making transfers, lets in-flight
/// work settle for `settle`, flushes and returns. It counts its start in the store.
pub async fn run_branch(
    cfg: NodeConfig,
    mut store: SledStore,
    shutdown: CancellationToken,
) -> Result<RunSummary, NodeError> {
    let me = cfg.core.me;
    let my_addr = cfg.hosts.addr(me);
    let listener = TcpListener::bind(my_addr)
        .await
        .map_err(|source| NodeError::Listen {
            addr: my_addr,
            source,
        })?;
    let recovered = store.recover(&cfg.core)?;
    let mut core = Branch::new(cfg.core.clone(), recovered);
    // Counts this start durably; `restarts` is how many came before it.
    let restarts = tokio::task::block_in_place(|| store.count_start())?;
    let metrics = cfg.metrics.clone();
    metrics.set_restarts(restarts);
    metrics.observe(&core);
    let n = cfg.hosts.len();
    let mut stats = Stats::new(cfg.stats_file.clone(), cfg.started, n, cfg.snapshot_phases);
    stats.store_opened(core.state());
    info!(
        "branch {my_addr} ({me}) up: balance {}, {} unacknowledged transfers, last snapshot part {}; store open {:.1} ms after start",
        core.balance(),
        core.unacked_total(),
        core.state().parts_done,
        cfg.started.elapsed().as_secs_f64() * 1000.0
    );
    let addr_text = my_addr.to_string();
    let (inbox_tx, mut inbox) = mpsc::channel::<Event>(INBOX_EVENTS_MAX);
    let mut console = control::Console::new(cfg.started, restarts);
    let links_stop = CancellationToken::new();
    let inbound: InboundWriters = Arc::new(Mutex::new(vec![None; n]));

    tokio::spawn(accept_loop(
        listener,
        cfg.clone(),
        inbox_tx.clone(),
        inbound.clone(),
        links_stop.clone(),
    ));
    let mut out_links: Vec<Option<mpsc::UnboundedSender<(u64, Message)>>> = vec![None; n];
    for p in 0..n as u16 {
        let peer = BranchId(p);
        if peer == me {
            continue;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        out_links[peer.index()] = Some(tx);
        tokio::spawn(outgoing_link(
            cfg.clone(),
            peer,
            rx,
            inbox_tx.clone(),
            links_stop.clone(),
        ));
    }
    drop(inbox_tx);

    let mut pace_rng = SeededRng::seed_from_u64(cfg.core.seed ^ 0x5eed);
    let mut next_transfer = cfg
        .pace
        .next_wait(&mut pace_rng)
        .map(|w| tokio::time::Instant::now() + w);
    let mut status_timer = tokio::time::interval(cfg.status_interval);
    status_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let full_speed = cfg.pace == Pace::FullSpeed;
    let mut can_transfer = true;
    let mut stop_at: Option<tokio::time::Instant> = None;
    let far = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
    // Operators' requests of this step, answered after its commit.
    let mut questions: Vec<control::Pending> = Vec::new();
    // Per peer, the last refusal logged (each different one is logged once).
    let mut refusals: Vec<Option<String>> = vec![None; n];

    loop {
        let stopping = stop_at.is_some();
        let wake_at = instant_at(core.poll_timeout(), far);
        let work_ready = full_speed && can_transfer && !stopping;
        // Biased: stop and timers first (they fire rarely), so a busy inbox cannot starve them.
        tokio::select! {
            biased;
            _ = shutdown.cancelled(), if !stopping => {
                info!("branch {my_addr}: stopping; settling in-flight transfers");
                stop_at = Some(tokio::time::Instant::now() + cfg.settle);
            }
            _ = tokio::time::sleep_until(stop_at.unwrap_or(far)), if stopping => break,
            // The core's timers (snapshots, pending warnings): fired after the events below.
            _ = tokio::time::sleep_until(wake_at), if !stopping => {}
            _ = tokio::time::sleep_until(next_transfer.unwrap_or(far)), if next_transfer.is_some() && !stopping => {
                next_transfer = paced_transfers(&mut core, &cfg.pace, &mut pace_rng, next_transfer);
            }
            _ = status_timer.tick() => {
                log_status(&core, my_addr);
                stats.write(&addr_text);
            }
            // Between steps everything the core holds is durable: a scrape sees committed state.
            _ = metrics.refresh_wanted() => metrics.observe(&core),
            _ = std::future::ready(()), if work_ready => {}
            _ = tokio::time::sleep(Duration::from_millis(2)), if full_speed && !can_transfer && !stopping => {}
            ev = inbox.recv() => match ev {
                Some(ev) => handle_event(&mut core, ev, &inbound, &cfg.hosts, &mut console, &store, &mut questions, &mut refusals)?,
                None => break,
            },
        }
        for _ in 0..EVENTS_PER_STEP_MAX {
            match inbox.try_recv() {
                Ok(ev) => handle_event(
                    &mut core,
                    ev,
                    &inbound,
                    &cfg.hosts,
                    &mut console,
                    &store,
                    &mut questions,
                    &mut refusals,
                )?,
                Err(_) => break,
            }
        }
        let now = now_us();
        if !stopping && core.poll_timeout().is_some_and(|due| due <= now) {
            core.handle_timeout(now);
        }
        if full_speed && !stopping {
            can_transfer = false;
            for _ in 0..TRANSFERS_PER_STEP_MAX {
                if !core.on_transfer_tick() {
                    break;
                }
                can_transfer = true;
            }
        }
        let ready = core.take_ready();
        let completed: Vec<(SnapshotId, u64, u128, u64)> = ready
            .notices
            .iter()
            .filter_map(|n| match n {
                Notice::SnapshotComplete {
                    snapshot,
                    duration_us,
                    total,
                    expected,
                    ..
                } => Some((*snapshot, *duration_us, *total, *expected)),
                _ => None,
            })
            .collect();
        commit_then_send(
            &mut store, ready, &out_links, &inbound, &cfg.hosts, my_addr, &mut stats, &metrics,
        )?;
        for (k, us, total, expected) in completed {
            console.completed(k, us, total, expected);
        }
        // Operators' questions are answered from committed state only: what a crash now would
        // leave (their events arrived during the step, before its commit).
        for p in questions.drain(..) {
            let up = inbound_up(&inbound);
            console.handle(&mut core, &store, p, up, &cfg.hosts, now_us());
        }
        if let Some(t) = stats.after_step(core.state()) {
            info!(
                "branch {my_addr}: first transfer sent {:.1} ms after start",
                t.as_secs_f64() * 1000.0
            );
        }
        if stopping && core.unacked_total() == 0 && core.snapshots_in_flight() == 0 {
            break;
        }
    }
    links_stop.cancel();
    store.flush()?;
    stats.write(&addr_text);
    let st = core.state();
    let summary = RunSummary {
        balance: st.balance,
        transfers_sent: st.out.iter().map(|o| o.sent.0).sum(),
        transfers_applied: st.inc.iter().map(|i| i.applied.0).sum(),
        unacked: core.unacked_total(),
        snapshots_completed: st.completed.0,
    };
    info!(
        "branch {my_addr} stopped: balance {}, sent {}, applied {}, unacknowledged {}",
        summary.balance, summary.transfers_sent, summary.transfers_applied, summary.unacked
    );
    Ok(summary)
}

/// A paced branch makes every transfer whose time has come: transfer `k + 1` is due one drawn
/// interval after transfer `k` was *due* (not after it was made), so an interval shorter than the
/// timer's millisecond resolution still gives its rate (`13333ns`: 75,000 transfers/s), in
/// bursts of at most [`TRANSFERS_PER_STEP_MAX`]. A branch that falls more than
/// [`PACE_BACKLOG_MAX`] behind drops the backlog instead of bursting to catch up. A transfer the
/// core declines (no balance, channels full) is skipped, as at any pace.
fn paced_transfers(
    core: &mut Branch,
    pace: &Pace,
    rng: &mut SeededRng,
    due: Option<tokio::time::Instant>,
) -> Option<tokio::time::Instant> {
    let now = tokio::time::Instant::now();
    let mut due = due?;
    for _ in 0..TRANSFERS_PER_STEP_MAX {
        if due > now {
            break;
        }
        core.on_transfer_tick();
        due += pace.next_wait(rng)?;
    }
    if now.saturating_duration_since(due) > PACE_BACKLOG_MAX {
        due = now;
    }
    Some(due)
}

/// How far a paced branch may fall behind its schedule before it forgets the backlog.
const PACE_BACKLOG_MAX: Duration = Duration::from_millis(50);

/// The peers whose inbound connection to this branch is up.
fn inbound_up(inbound: &InboundWriters) -> Vec<BranchId> {
    let w = inbound.lock().unwrap_or_else(|p| p.into_inner());
    (0..w.len())
        .filter(|i| w[*i].is_some())
        .map(|i| BranchId(i as u16))
        .collect()
}

/// Feeds one event to the core and carries out the remedy the core names for a peer's fault.
/// Operators' requests that only read are put in `questions`, to be answered after the commit.
#[allow(clippy::too_many_arguments)]
fn handle_event(
    core: &mut Branch,
    ev: Event,
    inbound: &InboundWriters,
    hosts: &HostList,
    console: &mut control::Console,
    store: &SledStore,
    questions: &mut Vec<control::Pending>,
    refusals: &mut [Option<String>],
) -> Result<(), NodeError> {
    let ev = match ev {
        Event::Position { from, conn, msg } => {
            let current = {
                let w = inbound.lock().unwrap_or_else(|p| p.into_inner());
                matches!(&w[from.index()], Some((id, _)) if *id == conn)
            };
            if !current {
                debug!(
                    "position from an old connection of {} ignored",
                    hosts.addr(from)
                );
                return Ok(());
            }
            Event::Message { from, msg }
        }
        ev => ev,
    };
    match ev {
        Event::Position { .. } => {}
        Event::Message { from, msg } => {
            let inbound_msg = !matches!(msg, Message::Ack { .. });
            if let Err(e) = core.on_message(from, msg, now_us()) {
                let peer = hosts.addr(from);
                let name = |b: BranchId| hosts.addr(b).to_string();
                match (e.remedy(), &e) {
                    (Remedy::Stop, ProtocolError::SelfBehind(b)) => {
                        return Err(NodeError::StoreBehind(format!(
                            "{}; this branch stops, as carrying on would create or destroy money (its store was rolled back, replaced, or lost writes it had acknowledged). Stop the cluster and run `snapctl restore --snapshot K` with a completed snapshot K (`snapctl snapshots` lists them)",
                            b.describe(&name)
                        )))
                    }
                    (_, ProtocolError::PeerBehind(b)) => {
                        let line = format!(
                            "refusing {peer}: {}; {peer} must stop and the cluster be restored (`snapctl restore`)",
                            b.describe(&name)
                        );
                        if refusals[from.index()].as_deref() != Some(line.as_str()) {
                            error!("{line}");
                            refusals[from.index()] = Some(line);
                        }
                    }
                    (Remedy::Reconnect, _) if inbound_msg => {
                        warn!("protocol error from {peer}: {e}; message refused, reconnecting to resend in order");
                        // Dropping the ack writer ends that connection; the peer redials.
                        let mut w = inbound.lock().unwrap_or_else(|p| p.into_inner());
                        w[from.index()] = None;
                    }
                    _ => error!("protocol error from {peer}: {e}; message ignored"),
                }
            }
        }
        Event::LinkUp { peer, epoch } => core.on_link_up(peer, epoch),
        Event::LinkDown { peer } => core.on_link_down(peer),
        Event::InboundUp { peer } => {
            refusals[peer.index()] = None;
            core.on_inbound_up(peer)
        }
        // A snapshot request is an input to this step; everything else only reads.
        Event::Control(p) if matches!(p.req, Request::Snapshot) => {
            console.handle(core, store, p, inbound_up(inbound), hosts, now_us())
        }
        Event::Control(p) => questions.push(p),
    }
    Ok(())
}

/// Carries out a step's [`Ready`] through [`ready::apply_ready`] (persist, then send), then
/// logs its notices.
#[allow(clippy::too_many_arguments)]
fn commit_then_send(
    store: &mut SledStore,
    ready: Ready,
    out_links: &[Option<mpsc::UnboundedSender<(u64, Message)>>],
    inbound: &InboundWriters,
    hosts: &HostList,
    my_addr: SocketAddr,
    stats: &mut Stats,
    metrics: &Metrics,
) -> Result<(), StoreError> {
    let acks = if ready.send.is_empty() {
        None
    } else {
        Some(inbound.clone())
    };
    let applied = tokio::task::block_in_place(|| {
        let mut acks = acks
            .as_ref()
            .map(|a| a.lock().unwrap_or_else(|p| p.into_inner()));
        ready::apply_ready(store, ready, &mut |out| {
            match out.link {
                Link::Out { epoch } => {
                    if let Some(tx) = &out_links[out.to.index()] {
                        let _ = tx.send((epoch, out.msg));
                    }
                }
                Link::In => {
                    if let Some((_, tx)) = acks.as_mut().and_then(|a| a[out.to.index()].as_ref()) {
                        tx.send_replace(Some(out.msg));
                    }
                }
            }
            std::ops::ControlFlow::Continue(())
        })
    })?;
    if let Some(took) = applied.commit_took {
        stats.commit_took(took);
        metrics.commit_took(took);
    }
    for notice in applied.notices {
        match notice {
            Notice::SnapshotComplete {
                snapshot,
                duration_us,
                total,
                expected,
                unconserved_since,
            } => {
                stats.snapshot_completed(snapshot.0, duration_us);
                metrics.snapshot_completed(
                    duration_us,
                    total == expected as u128,
                    unconserved_since,
                );
                let ms = duration_us as f64 / 1000.0;
                match unconserved_since {
                    None => info!("snapshot {snapshot} complete in {ms:.1} ms: total {total} (expected {expected})"),
                    Some(first) if total != expected as u128 => error!(
                        "snapshot {snapshot} complete in {ms:.1} ms: total {total} (expected {expected}): MONEY NOT CONSERVED (first at snapshot {first}); compaction and pruning have stopped, keeping the last conserving snapshot and all after it: stop the cluster, run `snapctl audit`, then `snapctl restore`"
                    ),
                    Some(first) => error!(
                        "snapshot {snapshot} complete in {ms:.1} ms: total {total} (expected {expected}), but snapshot {first} did not conserve money; compaction and pruning stay stopped: stop the cluster, run `snapctl audit`, then `snapctl restore`"
                    ),
                }
            }
            Notice::SnapshotStarted(k) => debug!("snapshot {k} started"),
            Notice::PartRecorded(k) => {
                metrics.part_recorded();
                debug!("branch {my_addr}: part of snapshot {k} recorded")
            }
            Notice::SnapshotHeld { unverified } => {
                debug!("snapshot held: {unverified} peers have not acknowledged since the start")
            }
            Notice::SnapshotDeferred { live } => {
                warn!("snapshot deferred: {live} snapshots still in flight")
            }
            Notice::SnapshotSlow { pending, waited_us } => {
                let names = |ids: &[BranchId]| {
                    ids.iter()
                        .map(|b| hosts.addr(*b).to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let mut what = Vec::new();
                if !pending.markers_from.is_empty() {
                    what.push(format!(
                        "markers on channels from {}",
                        names(&pending.markers_from)
                    ));
                }
                if !pending.parts_from.is_empty() {
                    what.push(format!("parts from {}", names(&pending.parts_from)));
                }
                warn!(
                    "snapshot {} pending for {:.1} s: waiting for {}",
                    pending.snapshot,
                    waited_us as f64 / 1e6,
                    what.join("; ")
                );
            }
        }
    }
    Ok(())
}

fn log_status(core: &Branch, addr: SocketAddr) {
    let st = core.state();
    info!(
        "branch {addr}: balance {}, sent {}, applied {}, unacknowledged {}, snapshot parts {}{}",
        st.balance,
        st.out.iter().map(|o| o.sent.0).sum::<u64>(),
        st.inc.iter().map(|i| i.applied.0).sum::<u64>(),
        core.unacked_total(),
        st.parts_done,
        if core.is_initiator() {
            format!(
                ", snapshots completed {}, pending {}",
                st.completed,
                core.snapshots_pending()
            )
        } else {
            String::new()
        }
    );
}

/// Dials `peer` forever; while connected, writes the core's messages for it and reads its acks.
async fn outgoing_link(
    cfg: NodeConfig,
    peer: BranchId,
    mut rx: mpsc::UnboundedReceiver<(u64, Message)>,
    inbox: mpsc::Sender<Event>,
    stop: CancellationToken,
) {
    let me = cfg.core.me;
    let addr = cfg.hosts.addr(peer);
    let counters = &cfg.metrics.outgoing;
    let local_ip = cfg.hosts.addr(me).ip();
    let mut epoch = 0u64;
    let mut failures = 0u64;
    let mut last_failure: Option<String> = None;
    loop {
        let attempt = async {
            let socket = if local_ip.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            // Bind to our own address so the peer sees which branch is calling.
            socket.bind(SocketAddr::new(local_ip, 0))?;
            set_user_timeout(&socket);
            // A silent partition drops SYNs: give up after a while instead of the kernel's ~2 min.
            let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, socket.connect(addr))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                })??;
            stream.set_nodelay(true)?;
            handshake_dial(stream, &cfg, peer, counters).await
        };
        let framed = tokio::select! {
            _ = stop.cancelled() => return,
            r = attempt => r,
        };
        let framed = match framed {
            Ok(f) => f,
            Err(e) => {
                failures += 1;
                // Log the first failure, every change of reason, and every 30th repeat.
                let reason = e.to_string();
                let changed = last_failure.as_deref() != Some(reason.as_str());
                last_failure = Some(reason);
                if failures == 1 || changed || failures % 30 == 0 {
                    info!(
                        "connecting to {addr}: {e}; retrying every {:?}",
                        cfg.reconnect_interval
                    );
                }
                // Wait, dropping anything queued for the dead link (resent after reconnect).
                let wait = tokio::time::sleep(cfg.reconnect_interval);
                tokio::pin!(wait);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = &mut wait => break,
                        m = rx.recv() => if m.is_none() { return },
                    }
                }
                continue;
            }
        };
        failures = 0;
        last_failure = None;
        counters.connected();
        epoch += 1;
        debug!("link to {addr} up (epoch {epoch})");
        if inbox.send(Event::LinkUp { peer, epoch }).await.is_err() {
            return;
        }
        let (mut sink, mut stream) = framed.split();
        let reason: String = loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    let _ = sink.flush().await;
                    return;
                }
                m = rx.recv() => {
                    let Some((e, msg)) = m else { return };
                    if e != epoch {
                        continue;
                    }
                    if let Err(err) = sink.feed(msg).await {
                        break err.to_string();
                    }
                    let mut failed = None;
                    while let Ok((e, msg)) = rx.try_recv() {
                        if e == epoch {
                            if let Err(err) = sink.feed(msg).await {
                                failed = Some(err.to_string());
                                break;
                            }
                        }
                    }
                    if let Some(err) = failed {
                        break err;
                    }
                    if let Err(err) = sink.flush().await {
                        break err.to_string();
                    }
                }
                f = stream.next() => match f {
                    Some(Ok(msg @ Message::Ack { .. })) => {
                        if inbox.send(Event::Message { from: peer, msg }).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(other)) => break format!("unexpected {} from the receiver", kind(&other)),
                    Some(Err(e)) => break e.to_string(),
                    None => break "closed by peer".to_string(),
                }
            }
        };
        info!("link to {addr} broken: {reason}; reconnecting");
        if inbox.send(Event::LinkDown { peer }).await.is_err() {
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// Unacknowledged data older than this breaks a link (then it redials and resends), instead of
/// TCP's exponential backoff stretching a healed partition into minutes.
const LINK_USER_TIMEOUT_MS: u32 = 10_000;

fn set_user_timeout(socket: &TcpSocket) {
    use nix::sys::socket::{setsockopt, sockopt::TcpUserTimeout};
    if let Err(e) = setsockopt(socket, TcpUserTimeout, &LINK_USER_TIMEOUT_MS) {
        debug!("TCP_USER_TIMEOUT not set: {e}");
    }
}

fn kind(m: &Message) -> &'static str {
    match m {
        Message::Hello { .. } => "Hello",
        Message::Transfers { .. } => "Transfers",
        Message::Marker { .. } => "Marker",
        Message::Part(_) => "Part",
        Message::Ack { .. } => "Ack",
        Message::Compact { .. } => "Compact",
        Message::Position(_) => "Position",
        Message::Request(_) => "Request",
        Message::Reply(_) => "Reply",
    }
}

#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("{0}")]
    Secure(#[from] secure::HandshakeError),
    #[error("handshake not completed within {HANDSHAKE_TIMEOUT:?}")]
    Timeout,
    #[error("closed during handshake: the peer refused us (its log says why; do both run with the same host.list and cluster key file?)")]
    Closed,
    #[error("{0}")]
    Refused(String),
}

fn closed_as(e: std::io::Error) -> HandshakeError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        HandshakeError::Closed
    } else {
        HandshakeError::Io(e)
    }
}

/// Reads a u16-length-prefixed handshake message of at most [`secure::HANDSHAKE_MESSAGE_MAX`].
async fn read_handshake_message(stream: &mut TcpStream) -> Result<Vec<u8>, HandshakeError> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.map_err(closed_as)?;
    let len = u16::from_be_bytes(len) as usize;
    if len > secure::HANDSHAKE_MESSAGE_MAX {
        return Err(secure::HandshakeError::Malformed(len).into());
    }
    let mut msg = vec![0u8; len];
    stream.read_exact(&mut msg).await.map_err(closed_as)?;
    Ok(msg)
}

fn with_length(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + msg.len());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

/// The dialler's side of the key exchange: preamble, then (with a key) Noise KKpsk0.
async fn secure_dial(
    stream: &mut TcpStream,
    cfg: &NodeConfig,
    peer: BranchId,
) -> Result<FrameCodec, HandshakeError> {
    let pre = Preamble {
        mode: cfg.security.mode(),
        cluster: cfg.cluster_id,
        from: cfg.core.me,
        to: peer,
    };
    match &cfg.security {
        Security::Insecure => {
            stream.write_all(&pre.encode()).await?;
            Ok(FrameCodec::Plain(MessageCodec::default()))
        }
        Security::Noise(keys) => {
            let (init, msg1) = secure::initiate(keys, &pre)?;
            let mut first = pre.encode().to_vec();
            first.extend_from_slice(&with_length(&msg1));
            stream.write_all(&first).await?;
            let msg2 = read_handshake_message(stream).await?;
            Ok(FrameCodec::Secure(init.finish(&msg2)?))
        }
    }
}

/// The listener's side: reads and checks the preamble (who calls, from where, in which mode),
/// then runs the listener's half of Noise. Returns the caller's branch and the codec.
async fn secure_accept(
    stream: &mut TcpStream,
    cfg: &NodeConfig,
    remote: SocketAddr,
) -> Result<(BranchId, FrameCodec), HandshakeError> {
    let mut raw = [0u8; PREAMBLE_LEN];
    stream.read_exact(&mut raw).await.map_err(closed_as)?;
    let pre = Preamble::decode(&raw)?;
    // An operator (snapctl) is no branch: the cluster's pre-shared key is its proof.
    let peer = if pre.from == secure::OPERATOR && pre.to == cfg.core.me {
        secure::OPERATOR
    } else {
        check_claim(cfg, pre.cluster, pre.from, pre.to, remote).map_err(HandshakeError::Refused)?
    };
    let ours = cfg.security.mode();
    if pre.mode != ours {
        return Err(secure::HandshakeError::ModeMismatch {
            theirs: pre.mode,
            ours,
        }
        .into());
    }
    match &cfg.security {
        Security::Insecure => Ok((peer, FrameCodec::Plain(MessageCodec::default()))),
        Security::Noise(keys) => {
            let msg1 = read_handshake_message(stream).await?;
            let (msg2, codec) = secure::respond(keys, &pre, &msg1).map_err(|e| {
                HandshakeError::Refused(if peer == secure::OPERATOR {
                    format!("{e}; an operator (snapctl) without this cluster's key file")
                } else {
                    format!("{e}; it claimed to be {}", cfg.hosts.addr(pre.from))
                })
            })?;
            stream.write_all(&with_length(&msg2)).await?;
            Ok((peer, FrameCodec::Secure(codec)))
        }
    }
}

async fn handshake_dial(
    mut stream: TcpStream,
    cfg: &NodeConfig,
    peer: BranchId,
    counters: &metrics::LinkCounters,
) -> Result<Framed<metrics::Counted<TcpStream>, FrameCodec>, HandshakeError> {
    let me = cfg.core.me;
    let codec = tokio::time::timeout(HANDSHAKE_TIMEOUT, secure_dial(&mut stream, cfg, peer))
        .await
        .map_err(|_| HandshakeError::Timeout)??;
    let mut framed = Framed::new(counters.count(stream), codec);
    framed
        .send(Message::Hello {
            cluster: cfg.cluster_id,
            from: me,
            to: peer,
        })
        .await?;
    let reply = tokio::time::timeout(HANDSHAKE_TIMEOUT, framed.next())
        .await
        .map_err(|_| HandshakeError::Timeout)?;
    match reply {
        Some(Ok(Message::Hello { cluster, from, to }))
            if cluster == cfg.cluster_id && from == peer && to == me =>
        {
            Ok(framed)
        }
        Some(Ok(Message::Hello { cluster, from, .. })) => Err(HandshakeError::Refused(format!(
            "refused: answered as {from} of cluster {cluster:016x}, expected {peer} of {:016x}",
            cfg.cluster_id
        ))),
        Some(Ok(other)) => Err(HandshakeError::Refused(format!(
            "refused: answered {} instead of Hello",
            kind(&other)
        ))),
        Some(Err(e)) => Err(e.into()),
        None => Err(HandshakeError::Closed),
    }
}

static CONN_IDS: AtomicU64 = AtomicU64::new(1);

async fn accept_loop(
    listener: TcpListener,
    cfg: NodeConfig,
    inbox: mpsc::Sender<Event>,
    inbound: InboundWriters,
    stop: CancellationToken,
) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_PENDING_MAX));
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, remote)) => {
                // Only the IPs of host.list may hold a handshake slot: strangers cannot use up
                // the slots and block the branches' own reconnects.
                if !cfg.hosts.branches.iter().any(|a| a.ip() == remote.ip()) {
                    debug!("connection from {remote} closed: not an address of host.list");
                    continue;
                }
                let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                    debug!("connection from {remote} closed: {HANDSHAKES_PENDING_MAX} handshakes already pending");
                    continue;
                };
                tokio::spawn(inbound_conn(
                    stream,
                    remote,
                    permit,
                    cfg.clone(),
                    inbox.clone(),
                    inbound.clone(),
                    stop.clone(),
                ));
            }
            Err(e) => {
                warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One connection a peer dialled to us: handshake, then transfers/markers/parts in, acks out.
async fn inbound_conn(
    mut stream: TcpStream,
    remote: SocketAddr,
    permit: tokio::sync::OwnedSemaphorePermit,
    cfg: NodeConfig,
    inbox: mpsc::Sender<Event>,
    inbound: InboundWriters,
    stop: CancellationToken,
) {
    let me = cfg.core.me;
    let _ = stream.set_nodelay(true);
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let (claimed, codec) =
        match tokio::time::timeout_at(deadline, secure_accept(&mut stream, &cfg, remote)).await {
            Ok(Ok(c)) => c,
            Ok(Err(HandshakeError::Closed)) => {
                debug!("connection from {remote} closed during the handshake");
                return;
            }
            Ok(Err(e)) => {
                warn!("connection from {remote} refused: {e}");
                return;
            }
            Err(_) => {
                warn!(
                    "connection from {remote} refused: no handshake within {HANDSHAKE_TIMEOUT:?}"
                );
                return;
            }
        };
    if claimed == secure::OPERATOR {
        drop(permit);
        control::serve(Framed::new(stream, codec), remote, inbox, stop).await;
        return;
    }
    let mut framed = Framed::new(cfg.metrics.incoming.count(stream), codec);
    // The first encrypted frame proves the dialler holds the session keys (a replayed handshake
    // cannot produce it): nothing is acted on before it.
    let hello = match tokio::time::timeout_at(deadline, framed.next()).await {
        Ok(Some(Ok(m))) => m,
        Ok(Some(Err(e))) => {
            warn!("connection from {remote} refused: bad first frame: {e}");
            return;
        }
        Ok(None) => return,
        Err(_) => {
            warn!("connection from {remote} refused: no Hello within {HANDSHAKE_TIMEOUT:?}");
            return;
        }
    };
    let peer = match check_hello(&cfg, &hello, remote) {
        Ok(p) if p == claimed => p,
        Ok(p) => {
            warn!("connection from {remote} refused: its preamble claimed {claimed} but its Hello {p}");
            return;
        }
        Err(why) => {
            warn!("connection from {remote} refused: {why}");
            return;
        }
    };
    drop(permit);
    let reply = Message::Hello {
        cluster: cfg.cluster_id,
        from: me,
        to: peer,
    };
    if framed.send(reply).await.is_err() {
        return;
    }
    cfg.metrics.incoming.connected();
    let conn_id = CONN_IDS.fetch_add(1, Ordering::Relaxed);
    let (ack_tx, mut ack_rx) = watch::channel::<Option<Message>>(None);
    {
        let mut w = inbound.lock().unwrap_or_else(|p| p.into_inner());
        // A newer connection from the same peer replaces the old one; the old reader stops.
        w[peer.index()] = Some((conn_id, ack_tx));
    }
    if inbox.send(Event::InboundUp { peer }).await.is_err() {
        return;
    }
    let (mut sink, mut stream) = framed.split();
    let reason = loop {
        tokio::select! {
            _ = stop.cancelled() => {
                let _ = sink.flush().await;
                return;
            }
            changed = ack_rx.changed() => match changed {
                Ok(()) => {
                    let latest = ack_rx.borrow_and_update().clone();
                    if let Some(msg) = latest {
                        if let Err(e) = sink.send(msg).await {
                            break e.to_string();
                        }
                    }
                }
                // Replaced by a newer connection from the same peer.
                Err(_) => break "replaced by a newer connection".to_string(),
            },
            f = stream.next() => match f {
                Some(Ok(msg @ Message::Position(_))) => {
                    if inbox.send(Event::Position { from: peer, conn: conn_id, msg }).await.is_err() {
                        return;
                    }
                }
                Some(Ok(msg @ (Message::Transfers { .. } | Message::Marker { .. } | Message::Part(_) | Message::Compact { .. }))) => {
                    if inbox.send(Event::Message { from: peer, msg }).await.is_err() {
                        return;
                    }
                }
                Some(Ok(other)) => break format!("unexpected {} from the sender", kind(&other)),
                Some(Err(e)) => break e.to_string(),
                None => break "closed by peer".to_string(),
            }
        }
    };
    debug!("inbound connection from {remote} ({peer}) ended: {reason}");
    let mut w = inbound.lock().unwrap_or_else(|p| p.into_inner());
    if matches!(&w[peer.index()], Some((id, _)) if *id == conn_id) {
        w[peer.index()] = None;
    }
}

fn check_hello(cfg: &NodeConfig, hello: &Message, remote: SocketAddr) -> Result<BranchId, String> {
    let Message::Hello { cluster, from, to } = hello else {
        return Err(format!("first frame is {}, not Hello", kind(hello)));
    };
    check_claim(cfg, *cluster, *from, *to, remote)
}

/// Whether a caller claiming to be `from` of `cluster`, calling `to`, from `remote` may be it.
fn check_claim(
    cfg: &NodeConfig,
    cluster: u64,
    from: BranchId,
    to: BranchId,
    remote: SocketAddr,
) -> Result<BranchId, String> {
    let me = cfg.core.me;
    if cluster != cfg.cluster_id {
        return Err(format!(
            "cluster {cluster:016x} is not ours ({:016x}); check host.list and --initial-balance",
            cfg.cluster_id
        ));
    }
    if from.index() >= cfg.hosts.len() || from == me {
        return Err(format!("unknown branch {from}"));
    }
    if to != me {
        return Err(format!("it wanted branch {to}, this is {me}"));
    }
    let expected_ip = cfg.hosts.addr(from).ip();
    if remote.ip() != expected_ip {
        return Err(format!(
            "claims to be {} but connects from {}",
            cfg.hosts.addr(from),
            remote.ip()
        ));
    }
    Ok(from)
}
