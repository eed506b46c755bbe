//! The core loop: the one task that owns the [`Branch`] core and the store. It drains events
//! from a bounded inbox, feeds them to the core, commits the resulting [`WriteBatch`] (one
//! atomic, flushed batch per step: group commit), and only then hands the messages to the links.
//! It spawns the links and the listener on its [`TaskTracker`] and, when it stops, waits for
//! them all (for at most [`TASKS_STOP_TIME_MAX`]).
//!
//! [`WriteBatch`]: crate::core::WriteBatch

use super::inbound::{AckSlots, Listener};
use super::metrics::SnapshotDone;
use super::outgoing::OutLink;
use super::stats::Stats;
use super::{control, ready, Event, InboxRx, Metrics, NodeConfig, NodeError, Pace, RunSummary};
use crate::core::{Branch, Link, Notice, ProtocolError, Ready, Remedy};
use crate::store::{SledStore, StoreError};
use crate::types::{BranchId, Micros, SeededRng, SnapshotId};
use crate::wire::{Message, Request};
use rand::SeedableRng;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

/// Bound on events queued for the core loop (back-pressure on readers).
const INBOX_EVENTS_MAX: usize = 16 * 1024;
/// Events handled per step before committing.
const EVENTS_PER_STEP_MAX: usize = 4096;
/// Transfers made per step at full speed.
const TRANSFERS_PER_STEP_MAX: usize = 512;
/// How far a paced branch may fall behind its schedule before it forgets the backlog.
const PACE_BACKLOG_MAX: Duration = Duration::from_millis(50);
/// On exit, how long the links, the listener and the connections get to end once told to: a
/// task stuck on a socket is left behind (and named in a warning) rather than hang the exit.
const TASKS_STOP_TIME_MAX: Duration = Duration::from_secs(2);
/// At full speed with the channels full, how long to wait before trying transfers again.
const CHANNELS_FULL_PAUSE: Duration = Duration::from_millis(2);
/// At full speed a branch makes no new transfers for this long after it starts recording a
/// snapshot (or until its part is done, if sooner): the CPU and the disk go to the snapshot's
/// markers and parts. Bench, 3 pairs at N=4: snapshot p50 0.83x, throughput unchanged; N=32:
/// p50 0.85x, throughput 0.94x. Longer pauses buy little: pausing until the part is done
/// (up to 1 s) left N=32 at p50 263 ms, bound by the shared disk's fsync queue.
const SNAPSHOT_FIRST_MAX: Duration = Duration::from_millis(10);

/// Runs one branch until `shutdown` is cancelled; then stops making transfers, lets in-flight
/// work settle for `settle`, stops every task it spawned, flushes and returns. It counts its
/// start in the store.
pub async fn run_branch(
    cfg: NodeConfig,
    store: SledStore,
    shutdown: CancellationToken,
) -> Result<RunSummary, NodeError> {
    let my_addr = cfg.hosts.addr(cfg.core.me);
    let listener = TcpListener::bind(my_addr)
        .await
        .map_err(|source| NodeError::Listen {
            addr: my_addr,
            source,
        })?;
    let mut cfg = cfg;
    cfg.adopt(store.identity());
    let ready = cfg.ready.clone();
    let mut core_loop = CoreLoop::open(cfg, store, listener)?;
    core_loop.observe_metrics();
    ready.notify_one();
    let ran = core_loop.run(&shutdown).await;
    core_loop.stop_tasks().await;
    ran?;
    core_loop.finish()
}

/// The core, the store, and everything the shell keeps between steps.
struct CoreLoop {
    cfg: NodeConfig,
    my_addr: SocketAddr,
    addr_text: String,
    core: Branch,
    store: SledStore,
    console: control::Console,
    stats: Stats,
    metrics: Arc<Metrics>,
    inbox: InboxRx,
    /// Per peer, the core loop's end of its outgoing link (own index: `None`).
    out_links: Vec<Option<OutLink>>,
    /// The ack slot of each peer's current inbound connection.
    acks: AckSlots,
    /// Operators' requests of this step, answered after its commit.
    questions: Vec<control::Pending>,
    /// Events handled since the last step, and whether one of them must be committed at once.
    events_in_step: usize,
    urgent_in_step: bool,
    /// Per peer, the last refusal logged (each different one is logged once).
    refusals: Vec<Option<String>>,
    pace_rng: SeededRng,
    /// When the next paced transfer is due (`None`: full speed, or no pace).
    next_transfer: Option<tokio::time::Instant>,
    /// Every task this loop spawned (listener, connections, links), and how to stop them.
    tasks: TaskTracker,
    links_stop: CancellationToken,
}

impl CoreLoop {
    /// Recovers the core from the store, counts this start, and spawns the listener and one
    /// outgoing link per peer.
    fn open(
        cfg: NodeConfig,
        mut store: SledStore,
        listener: TcpListener,
    ) -> Result<CoreLoop, NodeError> {
        let me = cfg.core.me;
        let my_addr = cfg.hosts.addr(me);
        let recovered = store.recover(&cfg.core)?;
        let core = Branch::new(cfg.core.clone(), recovered);
        // Counts this start durably; `restarts` is how many came before it.
        let restarts = tokio::task::block_in_place(|| store.count_start())?;
        let metrics = cfg.metrics.clone();
        let last = if core.is_initiator() {
            tokio::task::block_in_place(|| store.global(None))?.map(|g| SnapshotDone {
                snapshot: g.snapshot,
                duration_us: g.duration_us(),
                total: g.total,
                expected: g.expected_total,
                completed_at_us: g.completed_at,
            })
        } else {
            None
        };
        metrics.store_opened(restarts, last);
        let n = cfg.hosts.len();
        let mut stats = Stats::new(
            cfg.stats_file.clone(),
            cfg.started,
            n,
            me.index(),
            cfg.snapshot_phases,
        );
        stats.store_opened(core.state());
        info!(
            "branch {my_addr} ({me}) up: balance {}, {} unacknowledged transfers, last snapshot part {}; store open {:.1} ms after start",
            core.balance(),
            core.unacked_total(),
            core.state().parts_done,
            cfg.started.elapsed().as_secs_f64() * 1000.0
        );
        let (inbox_tx, inbox) = super::inbox(INBOX_EVENTS_MAX);
        let console = control::Console::new(cfg.started, restarts);
        let links_stop = CancellationToken::new();
        let acks = AckSlots::new(n);
        let tasks = TaskTracker::new();

        tasks.spawn(
            Listener {
                listener,
                cfg: cfg.clone(),
                inbox: inbox_tx.clone(),
                acks: acks.clone(),
                stop: links_stop.clone(),
                tasks: tasks.clone(),
            }
            .run(),
        );
        let mut out_links: Vec<Option<OutLink>> = (0..n).map(|_| None).collect();
        for p in 0..n as u16 {
            let peer = BranchId(p);
            if peer == me {
                continue;
            }
            let (end, link) = OutLink::new(&cfg, peer, inbox_tx.clone(), links_stop.clone());
            out_links[peer.index()] = Some(end);
            tasks.spawn(link.run());
        }
        drop(inbox_tx);

        let mut pace_rng = SeededRng::seed_from_u64(cfg.core.seed ^ 0x5eed);
        let next_transfer = cfg
            .pace
            .next_wait(&mut pace_rng)
            .map(|w| tokio::time::Instant::now() + w);
        Ok(CoreLoop {
            addr_text: my_addr.to_string(),
            my_addr,
            core,
            store,
            console,
            stats,
            metrics,
            inbox,
            out_links,
            acks,
            questions: Vec::new(),
            events_in_step: 0,
            urgent_in_step: false,
            refusals: vec![None; n],
            pace_rng,
            next_transfer,
            tasks,
            links_stop,
            cfg,
        })
    }

    /// Steps the core until `shutdown` and the settle time after it (or until nothing is left
    /// in flight), or until the core names a fault that stops the branch.
    async fn run(&mut self, shutdown: &CancellationToken) -> Result<(), NodeError> {
        let my_addr = self.my_addr;
        let mut status_timer = tokio::time::interval(self.cfg.status_interval);
        status_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let full_speed = self.cfg.pace == Pace::FullSpeed;
        let mut can_transfer = true;
        let mut stop_at: Option<tokio::time::Instant> = None;
        let far = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
        // A paced step waiting for company: when it commits at the latest.
        let mut commit_due: Option<tokio::time::Instant> = None;

        // Since when this branch records a snapshot (full speed pauses for it, a while).
        let mut recording_since: Option<(SnapshotId, tokio::time::Instant)> = None;

        loop {
            let stopping = stop_at.is_some();
            let waiting = commit_due.is_some();
            let wake_at = instant_at(self.core.poll_timeout(), far);
            let snapshot_first = full_speed && self.snapshot_first(&mut recording_since);
            let work_ready = full_speed && can_transfer && !stopping && !snapshot_first;
            let next_transfer = self.next_transfer;
            // Biased: stop and timers first (they fire rarely), so a busy inbox cannot starve them.
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if !stopping => {
                    info!("branch {my_addr}: stopping; settling in-flight transfers");
                    stop_at = Some(tokio::time::Instant::now() + self.cfg.settle);
                }
                _ = tokio::time::sleep_until(stop_at.unwrap_or(far)), if stopping => break,
                // The core's timers (snapshots, pending warnings): fired after the events below.
                _ = tokio::time::sleep_until(wake_at), if !stopping => {}
                _ = tokio::time::sleep_until(commit_due.unwrap_or(far)), if waiting => {}
                // While a step waits, the transfers due meanwhile are made when it commits.
                _ = tokio::time::sleep_until(next_transfer.unwrap_or(far)), if next_transfer.is_some() && !stopping && !waiting => {
                    self.paced_transfers();
                }
                _ = status_timer.tick() => {
                    self.log_status();
                    self.stats.write(&self.addr_text);
                }
                // Between steps everything the core holds is durable: a scrape sees committed state.
                _ = self.metrics.refresh_wanted(), if !waiting => self.observe_metrics(),
                _ = std::future::ready(()), if work_ready => {}
                _ = tokio::time::sleep(CHANNELS_FULL_PAUSE), if full_speed && !can_transfer && !stopping && !snapshot_first => {}
                _ = tokio::time::sleep_until(recording_since.map_or(far, |(_, t)| t) + SNAPSHOT_FIRST_MAX), if snapshot_first => {}
                ev = self.inbox.recv() => match ev {
                    Some(ev) => self.handle_event(ev)?,
                    None => break,
                },
            }
            for _ in 0..EVENTS_PER_STEP_MAX {
                match self.inbox.try_recv() {
                    Some(ev) => self.handle_event(ev)?,
                    None => break,
                }
            }
            let now = now_us();
            if !stopping && self.core.poll_timeout().is_some_and(|due| due <= now) {
                self.core.handle_timeout(now);
                self.urgent_in_step = true;
            }
            if full_speed && !stopping && !self.snapshot_first(&mut recording_since) {
                can_transfer = false;
                for _ in 0..TRANSFERS_PER_STEP_MAX {
                    if !self.core.on_transfer_tick() {
                        break;
                    }
                    can_transfer = true;
                }
            }
            // A paced branch (`--commit-window`) lets a step's transfers, credits and acks wait
            // for more: one commit (and `fdatasync`) for all instead of one per event.
            // Connection starts, positions, markers, parts, link changes, operators' requests
            // and the core's timers commit at once; so does every step while this branch
            // records a snapshot (a channel closes when the transfers before its marker are
            // applied: they must not wait a window per hop); at full speed every step does
            // (steps are full anyway).
            let paced_window = !full_speed
                && !self.cfg.commit_window.is_zero()
                && !stopping
                && !self.urgent_in_step
                && self.core.snapshots_in_flight() == 0
                && self.events_in_step < EVENTS_PER_STEP_MAX
                && (self.events_in_step > 0 || waiting || self.core.has_pending_ready());
            if paced_window {
                let due = *commit_due
                    .get_or_insert_with(|| tokio::time::Instant::now() + self.cfg.commit_window);
                if tokio::time::Instant::now() < due {
                    continue;
                }
            }
            if commit_due.take().is_some() {
                self.paced_transfers();
            }
            self.events_in_step = 0;
            self.urgent_in_step = false;
            self.step()?;
            if stopping && self.core.unacked_total() == 0 && self.core.snapshots_in_flight() == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Ends a step: commits and sends what the core made ready, answers operators from the
    /// committed state.
    fn step(&mut self) -> Result<(), StoreError> {
        let ready = self.core.take_ready();
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
        self.commit_then_send(ready)?;
        for (k, us, total, expected) in completed {
            self.console.completed(k, us, total, expected);
        }
        // Operators' questions are answered from committed state only: what a crash now would
        // leave (their events arrived during the step, before its commit). At most one per
        // event of the step.
        debug_assert!(self.questions.len() <= EVENTS_PER_STEP_MAX + 1);
        for p in self.questions.drain(..) {
            let up = self.acks.up();
            self.console.handle(
                &mut self.core,
                &self.store,
                p,
                up,
                &self.cfg.hosts,
                now_us(),
            );
        }
        if let Some(t) = self.stats.after_step(self.core.state()) {
            info!(
                "branch {}: first transfer sent {:.1} ms after start",
                self.my_addr,
                t.as_secs_f64() * 1000.0
            );
        }
        Ok(())
    }

    /// Tells every task to stop and waits (at most [`TASKS_STOP_TIME_MAX`]) until they have.
    async fn stop_tasks(&mut self) {
        self.links_stop.cancel();
        // Links blocked handing the inbox an event see it closed.
        self.inbox.close();
        self.tasks.close();
        if tokio::time::timeout(TASKS_STOP_TIME_MAX, self.tasks.wait())
            .await
            .is_err()
        {
            warn!(
                "branch {}: {} of its tasks (links, connections, listener) did not stop within {TASKS_STOP_TIME_MAX:?}; exiting without them",
                self.my_addr,
                self.tasks.len()
            );
        }
    }

    /// Flushes the store, writes the stats file one last time and reports what the branch did.
    fn finish(mut self) -> Result<RunSummary, NodeError> {
        self.store.flush()?;
        self.stats.write(&self.addr_text);
        let st = self.core.state();
        let summary = RunSummary {
            balance: st.balance,
            transfers_sent: st.out.iter().map(|o| o.sent.0).sum(),
            transfers_applied: st.inc.iter().map(|i| i.applied.0).sum(),
            unacked: self.core.unacked_total(),
            snapshots_completed: st.completed.0,
        };
        info!(
            "branch {} stopped: balance {}, sent {}, applied {}, unacknowledged {}",
            self.my_addr,
            summary.balance,
            summary.transfers_sent,
            summary.transfers_applied,
            summary.unacked
        );
        Ok(summary)
    }

    /// Whether a branch at full speed holds back new transfers for a snapshot it records (for
    /// at most [`SNAPSHOT_FIRST_MAX`] since it started recording; `since` tracks that).
    fn snapshot_first(&self, since: &mut Option<(SnapshotId, tokio::time::Instant)>) -> bool {
        let Some(k) = self.core.newest_recording() else {
            *since = None;
            return false;
        };
        let now = tokio::time::Instant::now();
        let began = match *since {
            Some((seen, began)) if seen == k => began,
            _ => since.insert((k, now)).1,
        };
        now < began + SNAPSHOT_FIRST_MAX
    }

    /// A paced branch makes every transfer whose time has come: transfer `k + 1` is due one
    /// drawn interval after transfer `k` was *due* (not after it was made), so an interval
    /// shorter than the timer's millisecond resolution still gives its rate (`13333ns`: 75,000
    /// transfers/s), in bursts of at most [`TRANSFERS_PER_STEP_MAX`]. A branch that falls more
    /// than [`PACE_BACKLOG_MAX`] behind drops the backlog instead of bursting to catch up. A
    /// transfer the core declines (no balance, channels full) is skipped, as at any pace.
    fn paced_transfers(&mut self) {
        let Some(mut due) = self.next_transfer else {
            return;
        };
        let now = tokio::time::Instant::now();
        for _ in 0..TRANSFERS_PER_STEP_MAX {
            if due > now {
                break;
            }
            self.core.on_transfer_tick();
            let Some(wait) = self.cfg.pace.next_wait(&mut self.pace_rng) else {
                self.next_transfer = None;
                return;
            };
            due += wait;
        }
        if now.saturating_duration_since(due) > PACE_BACKLOG_MAX {
            due = now;
        }
        self.next_transfer = Some(due);
    }

    /// Feeds one event to the core and carries out the remedy the core names for a peer's
    /// fault. Operators' requests that only read are put in `questions`, to be answered after
    /// the commit.
    fn handle_event(&mut self, ev: Event) -> Result<(), NodeError> {
        self.events_in_step += 1;
        if ev.commits_at_once() {
            self.urgent_in_step = true;
        }
        let hosts = &self.cfg.hosts;
        let ev = match ev {
            Event::Position { from, conn, msg } => {
                if !self.acks.is_current(from, conn) {
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
                if let Err(e) = self.core.on_message(from, msg, now_us()) {
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
                            let logged = &mut self.refusals[from.index()];
                            if logged.as_deref() != Some(line.as_str()) {
                                error!("{line}");
                                *logged = Some(line);
                            }
                        }
                        (Remedy::Reconnect, _) if inbound_msg => {
                            warn!("protocol error from {peer}: {e}; message refused, reconnecting to resend in order");
                            // Dropping the ack writer ends that connection; the peer redials.
                            self.acks.close(from);
                        }
                        _ => error!("protocol error from {peer}: {e}; message ignored"),
                    }
                }
            }
            Event::LinkUp { peer, epoch } => {
                self.note_link_up(peer, true);
                self.core.on_link_up(peer, epoch)
            }
            Event::LinkDown { peer } => self.core.on_link_down(peer),
            Event::InboundUp { peer } => {
                self.refusals[peer.index()] = None;
                // It is up: our link to it, if waiting to redial, dials back now.
                if let Some(link) = &self.out_links[peer.index()] {
                    link.peer_is_up();
                }
                self.note_link_up(peer, false);
                self.core.on_inbound_up(peer)
            }
            // A snapshot request is an input to this step; everything else only reads.
            Event::Control(p) if matches!(p.req, Request::Snapshot) => {
                let up = self.acks.up();
                self.console
                    .handle(&mut self.core, &self.store, p, up, hosts, now_us())
            }
            Event::Control(p) => self.questions.push(p),
        }
        Ok(())
    }

    /// Sets the metrics from the core's committed state (a scrape asked).
    fn observe_metrics(&self) {
        self.metrics
            .observe(&self.core, &self.acks.up(), self.stats.latency(), now_us());
    }

    /// Counts a link up for the stats, and logs when the whole mesh first is.
    fn note_link_up(&mut self, peer: BranchId, outgoing: bool) {
        let before = self.stats.mesh_up().is_some();
        self.stats.link_up(peer.index(), outgoing);
        if let (false, Some(t)) = (before, self.stats.mesh_up()) {
            info!(
                "branch {}: every link up, both ways, {:.1} ms after start",
                self.my_addr,
                t.as_secs_f64() * 1000.0
            );
        }
    }

    /// Carries out a step's [`Ready`] through [`ready::apply_ready`] (persist, then send), then
    /// logs its notices.
    fn commit_then_send(&mut self, ready: Ready) -> Result<(), StoreError> {
        let CoreLoop {
            store,
            out_links,
            acks,
            ..
        } = self;
        let applied = tokio::task::block_in_place(|| {
            // Locked once, for all of the step's acks, after the commit.
            let mut slots = None;
            ready::apply_ready(store, ready, &mut |out| {
                match out.link {
                    Link::Out { epoch } => {
                        if let Some(link) = &mut out_links[out.to.index()] {
                            link.send(epoch, out.msg);
                        }
                    }
                    Link::In => slots
                        .get_or_insert_with(|| acks.lock())
                        .send(out.to, out.msg),
                }
                std::ops::ControlFlow::Continue(())
            })
        })?;
        if let Some(took) = applied.commit_took {
            self.stats.commit_took(took);
            self.metrics.commit_took(took);
        }
        for notice in applied.notices {
            self.log_notice(notice);
        }
        Ok(())
    }

    fn log_notice(&mut self, notice: Notice) {
        match notice {
            Notice::SnapshotComplete {
                snapshot,
                duration_us,
                total,
                expected,
                unconserved_since,
            } => {
                self.stats.snapshot_completed(snapshot.0, duration_us);
                let done = SnapshotDone {
                    snapshot,
                    duration_us,
                    total,
                    expected,
                    completed_at_us: now_us(),
                };
                self.metrics.snapshot_completed(&done, unconserved_since);
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
                self.metrics.part_recorded();
                debug!("branch {}: part of snapshot {k} recorded", self.my_addr)
            }
            Notice::SnapshotHeld { unverified } => {
                debug!("snapshot held: {unverified} peers have not acknowledged since the start")
            }
            Notice::SnapshotDeferred { live } => {
                warn!("snapshot deferred: {live} snapshots still in flight")
            }
            Notice::SnapshotSlow { pending, waited_us } => {
                let hosts = &self.cfg.hosts;
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

    fn log_status(&self) {
        let (core, st) = (&self.core, self.core.state());
        info!(
            "branch {}: balance {}, sent {}, applied {}, unacknowledged {}, snapshot parts {}{}",
            self.my_addr,
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
}

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
