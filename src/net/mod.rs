//! The tokio shell around a [`Branch`](crate::core::Branch) core: it shuttles bytes and time,
//! and decides nothing.
//!
//! It is split into rooms, each a struct owning its state; a room calls only what its line names,
//! and the links reach the core only through the core loop's bounded inbox of [`Event`]s:
//! - `core_loop` (`CoreLoop`): owns the core, the store, the console, stats, the metrics handle,
//!   the peers' outgoing queues, the inbound ack slots and the tracker of every task; steps the
//!   core and commits before it sends. Calls [`ready`], [`control`], `stats`, [`metrics`],
//!   `outgoing`, `inbound`.
//! - `outgoing` (`OutLink`, `OutgoingLink`): owns one peer's bounded queue and its connection;
//!   dials, retries, writes the core's messages, reads acks. Calls `handshake`.
//! - `inbound` (`Listener`, `InboundConn`, `AckSlots`): owns the listening socket, the handshake
//!   slots and one accepted connection each; reads transfers, markers and parts, writes acks.
//!   Calls `handshake`, `control::serve`.
//! - `handshake`: owns nothing; the preamble, Noise and `Hello` I/O and the checks of a caller's
//!   claims. Calls `crate::secure`.
//! - [`control`]: operators' requests in, replies out (its `Console` lives in the core loop);
//!   [`ready`]: persist, then send (shared with the simulator); [`metrics`]: Prometheus over
//!   HTTP with `--metrics`, refreshed by the core loop only when scraped.

pub mod control;
mod core_loop;
mod handshake;
mod inbound;
pub mod metrics;
mod outgoing;
mod pace;
pub mod ready;
pub mod stats;

pub use core_loop::run_branch;
pub use metrics::Metrics;
pub use pace::Pace;

use crate::core::CoreConfig;
use crate::hosts::HostList;
use crate::secure::Security;
use crate::store::StoreError;
use crate::types::BranchId;
use crate::wire::Message;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// On shutdown, how long a link gets to flush what it already wrote into its buffer (a peer that
/// stopped reading cannot hold the exit up).
const STOP_FLUSH_TIME_MAX: Duration = Duration::from_millis(500);

/// How a branch runs, beyond the core's own configuration.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub hosts: HostList,
    pub core: CoreConfig,
    /// The cluster id every peer must share: the store's (an epoch `snapctl reshape` made has
    /// its own, [`NodeConfig::adopt`]).
    pub cluster_id: u64,
    /// The cluster epoch (0 until the first reshape), named in refusals.
    pub epoch: u64,
    /// Noise with the cluster key, or `--insecure` plain frames.
    pub security: Security,
    pub pace: Pace,
    /// Longest wait between connection attempts to a peer (the backoff's cap).
    pub redial_max: Duration,
    /// A paced branch's group-commit window (`--commit-window`; zero: every step commits).
    pub commit_window: Duration,
    /// On shutdown, how long in-flight transfers get to be acknowledged.
    pub settle: Duration,
    /// How often to log a status line.
    pub status_interval: Duration,
    /// When the process started (start-up timings are measured from it).
    pub started: std::time::Instant,
    /// Where to write [`Stats`](stats::Stats) every `status_interval` and at exit.
    pub stats_file: Option<std::path::PathBuf>,
    /// Benchmarks: the core starts snapshots only in even wall-clock phases of this length
    /// (`core.timing`); the stats file sorts latencies by phase with it.
    pub snapshot_phases: Option<Duration>,
    /// The branch's metrics, kept up to date by the core loop and the links (served over HTTP
    /// by [`metrics::serve`] with `--metrics`).
    pub metrics: Arc<Metrics>,
    /// Notified once the branch serves (store recovered, port listening; links may still be
    /// coming up): the daemon tells systemd `READY=1` then.
    pub ready: Arc<tokio::sync::Notify>,
}

impl NodeConfig {
    /// Runs as the cluster the store belongs to: a reshaped store carries its epoch's cluster
    /// id and expected total, whatever `--initial-balance` says.
    pub fn adopt(&mut self, identity: &crate::store::Identity) {
        self.cluster_id = identity.cluster_id;
        self.epoch = identity.epoch_number();
        self.core.epoch_total = identity.epoch.as_ref().map(|e| e.expected_total);
    }
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

/// What the links and the operators' connections hand the core loop, through its bounded inbox.
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

/// Most events waiting in the inbox's priority lane (a connection's start and position, and the
/// markers and parts it carries: a few per connection and snapshot in flight).
const INBOX_URGENT_EVENTS_MAX: usize = 4 * 1024;

impl Event {
    /// Whether the event rides the inbox's priority lane, taken before anything queued in the
    /// other: a marker or part overtakes the transfers read before it (the core records on an
    /// early marker and closes the channel when they arrive). A connection's start and its
    /// position ride it too, so that nothing it carries overtakes them.
    fn is_urgent(&self) -> bool {
        matches!(
            self,
            Event::InboundUp { .. }
                | Event::Position { .. }
                | Event::Message {
                    msg: Message::Marker { .. } | Message::Part(_),
                    ..
                }
        )
    }

    /// Whether the step that handles this event commits at once, whatever a paced branch's
    /// `--commit-window`: what rides the inbox's priority lane, operators' requests and link
    /// changes.
    fn commits_at_once(&self) -> bool {
        self.is_urgent()
            || matches!(
                self,
                Event::Control(_) | Event::LinkUp { .. } | Event::LinkDown { .. }
            )
    }
}

/// The core loop's inbox as the links and the operators' connections hold it: two bounded
/// lanes, the priority lane ([`Event::is_urgent`]) and the rest.
#[derive(Clone)]
struct Inbox {
    normal: tokio::sync::mpsc::Sender<Event>,
    urgent: tokio::sync::mpsc::Sender<Event>,
}

/// The core loop's end of its [`Inbox`].
struct InboxRx {
    normal: tokio::sync::mpsc::Receiver<Event>,
    urgent: tokio::sync::mpsc::Receiver<Event>,
}

/// The inbox of `normal_max` ordinary events and [`INBOX_URGENT_EVENTS_MAX`] urgent ones.
fn inbox(normal_max: usize) -> (Inbox, InboxRx) {
    let (normal, normal_rx) = tokio::sync::mpsc::channel(normal_max);
    let (urgent, urgent_rx) = tokio::sync::mpsc::channel(INBOX_URGENT_EVENTS_MAX);
    (
        Inbox { normal, urgent },
        InboxRx {
            normal: normal_rx,
            urgent: urgent_rx,
        },
    )
}

impl Inbox {
    /// Hands `ev` to the core loop, waiting while its lane is full; an error once it is gone.
    async fn send(&self, ev: Event) -> Result<(), tokio::sync::mpsc::error::SendError<Event>> {
        if ev.is_urgent() {
            self.urgent.send(ev).await
        } else {
            self.normal.send(ev).await
        }
    }
}

impl InboxRx {
    /// The next event, the priority lane first; `None` once every sender is gone.
    async fn recv(&mut self) -> Option<Event> {
        tokio::select! {
            biased;
            Some(ev) = self.urgent.recv() => Some(ev),
            ev = self.normal.recv() => ev,
        }
    }

    /// An event waiting now, the priority lane first.
    fn try_recv(&mut self) -> Option<Event> {
        self.urgent
            .try_recv()
            .or_else(|_| self.normal.try_recv())
            .ok()
    }

    fn close(&mut self) {
        self.urgent.close();
        self.normal.close();
    }
}

/// The name of a message's kind, for log lines.
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
