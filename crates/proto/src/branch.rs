//! The branch protocol as a pure state machine: no sockets, no disk, no clock, no global RNG.
//!
//! # Contract
//! A shell feeds events in through the `on_*` methods and then calls [`Branch::take_ready`],
//! which returns a [`Ready`]: a [`WriteBatch`] to make durable, messages to send and notices to
//! log. **The shell must make `persist` durable before it sends any message of the same `Ready`.**
//! That single rule gives every ordering the bank relies on:
//! - a debit, its channel's sequence number and the unacknowledged transfer are durable before the
//!   transfer leaves;
//! - a credit and the channel watermark are durable before the acknowledgement leaves;
//! - a recorded local state is durable before its markers leave, and a received marker or part is
//!   durable before it is acknowledged.
//!
//! # Channels
//! Channel `i → j` numbers transfers densely from 1. The receiver applies a transfer only if it is
//! the next in sequence (duplicates are dropped and re-acknowledged, gaps dropped and resent later),
//! so delivery is exactly-once and in order however often a connection breaks. Acknowledgements
//! are cumulative. After a link comes up, the sender resends everything unacknowledged in channel
//! order before anything new.
//!
//! # Snapshots (Chandy–Lamport over sequenced channels)
//! A marker carries `after`: the sender's last sequence number when it recorded its state, so the
//! marker's place in the channel is explicit and survives resends. On its first marker for `k` a
//! branch records its balance and every channel's watermarks and sends a marker on every outgoing
//! channel. Each incoming channel is recorded (money of the transfers applied from it) until its
//! marker arrives; the channel's state is exactly the transfers `(applied_at_record, after]`.
//! When all incoming channels are closed the branch's part is durable and sent to the initiator,
//! which assembles and keeps the global snapshot.

use crate::message::{Message, Position, BRANCHES_MAX, TRANSFERS_PER_FRAME_MAX};
pub use crate::snapshot::Pending;
use crate::snapshot::{ChannelRecord, GlobalSnapshot, LocalPart};
use crate::timing::Timers;
pub use crate::timing::Timing;
use crate::types::{Amount, BranchId, Micros, SeededRng, Seq, SnapshotId};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// Static facts a branch runs with.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub me: BranchId,
    pub branches: u16,
    pub initiator: BranchId,
    /// Money every branch starts with.
    pub initial_balance: Amount,
    /// What every snapshot must total in a cluster `snapctl reshape` made (whose branches began
    /// with unequal balances, recorded in their stores); `None`: `initial_balance` × branches.
    pub epoch_total: Option<Amount>,
    /// Largest single transfer.
    pub amount_max: Amount,
    /// Unacknowledged transfers allowed per outgoing channel before that channel stops taking
    /// new transfers (bounds memory while a peer is away).
    pub unacked_per_channel_max: usize,
    /// Snapshots in flight at the initiator before it defers starting another.
    pub live_snapshots_max: usize,
    /// Seed of the transfer generator.
    pub seed: u64,
    /// Completed snapshots whose parts (and, at the initiator, global copies) are kept; older
    /// ones are pruned as newer ones complete. At least 1.
    pub snapshots_kept: u64,
    /// When the branch's timers fire (snapshots, pending warnings).
    pub timing: Timing,
}

impl CoreConfig {
    pub fn genesis_total(&self) -> Amount {
        self.epoch_total
            .unwrap_or(self.initial_balance * self.branches as Amount)
    }

    /// Checks what the types cannot, naming the setting: the cluster size against
    /// [`BRANCHES_MAX`], the indexes against it, every limit at least 1, and a bank whose total
    /// money fits an [`Amount`]. [`Branch::new`] asserts it; the daemon reports it as an error.
    pub fn validate(&self) -> Result<(), String> {
        let n = self.branches as usize;
        if !(1..=BRANCHES_MAX).contains(&n) {
            return Err(format!(
                "a cluster has 1..={BRANCHES_MAX} branches, not {n}"
            ));
        }
        if self.me.index() >= n || self.initiator.index() >= n {
            return Err(format!(
                "branch {} and initiator {} must be below the {n} branches",
                self.me, self.initiator
            ));
        }
        if self.initial_balance.checked_mul(n as Amount).is_none() {
            return Err(format!(
                "initial balance {} × {n} branches does not fit in a u64: choose a smaller --initial-balance",
                self.initial_balance
            ));
        }
        if self.amount_max == 0 {
            return Err("the largest transfer (--max-amount) must be at least 1".into());
        }
        if self.unacked_per_channel_max == 0 {
            return Err(
                "unacknowledged transfers per channel (--unacked-max) must be at least 1".into(),
            );
        }
        if self.live_snapshots_max == 0 || self.snapshots_kept == 0 {
            return Err(format!(
                "snapshots in flight ({}) and kept (--keep-snapshots {}) must be at least 1",
                self.live_snapshots_max, self.snapshots_kept
            ));
        }
        self.timing.validate()
    }

    fn peers(&self) -> impl Iterator<Item = BranchId> + '_ {
        (0..self.branches)
            .map(BranchId)
            .filter(move |b| *b != self.me)
    }
}

/// Everything about a branch that must survive a crash, apart from the transfer log, parts and
/// global snapshots (which the store keeps under keys of their own). Written whole per batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurableState {
    pub balance: Amount,
    /// Outgoing channel state, indexed by peer (own index unused).
    pub out: Vec<OutChannel>,
    /// Incoming channel state, indexed by peer (own index unused).
    pub inc: Vec<InChannel>,
    /// Initiator: the id the next snapshot gets.
    pub next_snapshot: SnapshotId,
    /// Highest snapshot this branch has recorded its state for.
    pub last_recorded: SnapshotId,
    /// Snapshots recorded here whose incoming channels are not all closed yet.
    pub recording: BTreeMap<u64, Recording>,
    /// Highest snapshot whose local part is complete (and stored).
    pub parts_done: SnapshotId,
    /// Initiator: highest global snapshot completed.
    pub completed: SnapshotId,
    /// The transfer log and the ledger are complete from this snapshot's cut on (0: from
    /// genesis). Advanced by compaction (the initiator's latest completed snapshot), and set when
    /// a store is rebuilt from a snapshot by `snapctl restore`.
    #[serde(default)]
    pub history_from: SnapshotId,
    /// Parts (and, at the initiator, global snapshots) older than this have been pruned.
    #[serde(default)]
    pub pruned_below: SnapshotId,
    /// Initiator: the first completed snapshot whose total was not the expected one (0: none).
    /// From then on nothing is compacted or pruned any more: the last snapshot that conserved
    /// money and everything after it stay for the audit, and every later completion is reported
    /// as an error.
    #[serde(default)]
    pub unconserved_since: SnapshotId,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutChannel {
    /// Last sequence number assigned (= transfers ever sent on this channel).
    pub sent: Seq,
    /// Highest sequence number the receiver acknowledged.
    pub acked: Seq,
    /// Markers not yet acknowledged, with their place in the channel.
    pub markers: Vec<(SnapshotId, Seq)>,
    pub marker_acked: SnapshotId,
    /// Towards the initiator: highest part it acknowledged.
    pub part_acked: SnapshotId,
    /// Log entries up to this seq may have been dropped by compaction: the log holds
    /// `(compacted, sent]`. Never above `acked`.
    #[serde(default)]
    pub compacted: Seq,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InChannel {
    /// Highest sequence number applied (credited) from this peer.
    pub applied: Seq,
    /// Highest marker received from this peer.
    pub marker: SnapshotId,
    /// Initiator: highest part received from this peer.
    pub part: SnapshotId,
}

/// A snapshot in progress at this branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recording {
    pub recorded_at: Micros,
    pub balance: Amount,
    /// `out[p].sent` at the cut, indexed by peer.
    pub sent: Vec<Seq>,
    /// Incoming channels, indexed by peer.
    pub inc: Vec<ChannelRecording>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelRecording {
    pub applied_at_record: Seq,
    /// `Some(after)` once the channel's marker arrived.
    pub until: Option<Seq>,
    pub money: Amount,
    pub count: u64,
}

/// What a branch reloads after a restart.
#[derive(Clone, Debug, PartialEq)]
pub struct Recovered {
    pub state: DurableState,
    /// Per peer, the transfers `(acked, sent]` from the log, in order.
    pub unacked: Vec<Vec<(Seq, Amount)>>,
    /// Parts not yet acknowledged by the initiator (not at the initiator itself).
    pub unsent_parts: Vec<LocalPart>,
    /// Initiator: parts collected for snapshots not yet complete.
    pub collected: Vec<LocalPart>,
}

impl Recovered {
    /// The state of a branch that has never run.
    pub fn genesis(cfg: &CoreConfig) -> Recovered {
        let n = cfg.branches as usize;
        Recovered {
            state: DurableState::genesis(n, cfg.initial_balance),
            unacked: vec![Vec::new(); n],
            unsent_parts: Vec::new(),
            collected: Vec::new(),
        }
    }
}

impl DurableState {
    /// The state of a branch of `branches` that has never run.
    pub fn genesis(branches: usize, initial_balance: Amount) -> DurableState {
        DurableState {
            balance: initial_balance,
            out: vec![OutChannel::default(); branches],
            inc: vec![InChannel::default(); branches],
            next_snapshot: SnapshotId(1),
            last_recorded: SnapshotId(0),
            recording: BTreeMap::new(),
            parts_done: SnapshotId(0),
            completed: SnapshotId(0),
            history_from: SnapshotId(0),
            pruned_below: SnapshotId(0),
            unconserved_since: SnapshotId(0),
        }
    }
}

/// Durable writes of one step. Applied atomically by the store.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WriteBatch {
    /// The whole [`DurableState`], if it changed.
    pub state: Option<DurableState>,
    /// New transfer-log entries `(to, seq, amount)`.
    pub transfers: Vec<(BranchId, Seq, Amount)>,
    /// Local parts completed.
    pub parts: Vec<LocalPart>,
    /// Initiator: parts collected.
    pub collected: Vec<LocalPart>,
    /// Initiator: global snapshots completed.
    pub globals: Vec<GlobalSnapshot>,
    /// Initiator: snapshots whose collected parts can be dropped (now kept whole in `globals`).
    pub uncollect: Vec<SnapshotId>,
    /// Compaction: per peer, the transfer-log entries `<= seq` on the channel to it are no
    /// longer needed (acknowledged, and before the audited history); the store may drop them.
    pub compact: Vec<(BranchId, Seq)>,
    /// Parts (and, at the initiator, global snapshots) older than this may be deleted.
    pub prune_below: Option<SnapshotId>,
}

impl WriteBatch {
    pub fn is_empty(&self) -> bool {
        self.state.is_none()
            && self.transfers.is_empty()
            && self.parts.is_empty()
            && self.collected.is_empty()
            && self.globals.is_empty()
            && self.uncollect.is_empty()
            && self.compact.is_empty()
            && self.prune_below.is_none()
    }
}

/// Which connection a message goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// The connection this branch dialled to the peer, in its `epoch`-th incarnation.
    Out { epoch: u64 },
    /// The reverse direction of the connection the peer dialled to this branch.
    In,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Outgoing {
    pub to: BranchId,
    pub link: Link,
    pub msg: Message,
}

/// Things worth telling an operator.
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    SnapshotStarted(SnapshotId),
    /// The initiator did not start a snapshot because `live` are still in flight.
    SnapshotDeferred {
        live: usize,
    },
    /// The initiator did not start a snapshot: since it started, `unverified` peers have not yet
    /// told it where they stand (their first acknowledgement), so its store could still be
    /// behind and reuse a snapshot id they have seen.
    SnapshotHeld {
        unverified: usize,
    },
    PartRecorded(SnapshotId),
    /// A snapshot has waited `waited_us` (past a multiple of the warning limit) for what
    /// `pending` names.
    SnapshotSlow {
        pending: Pending,
        waited_us: Micros,
    },
    SnapshotComplete {
        snapshot: SnapshotId,
        duration_us: u64,
        total: u128,
        expected: Amount,
        /// The first snapshot that did not conserve money, if one did not (this one or earlier):
        /// compaction and pruning have stopped since.
        unconserved_since: Option<SnapshotId>,
    },
}

/// Output of a step. Persist first, then send, then log.
#[derive(Debug, Default)]
pub struct Ready {
    pub persist: WriteBatch,
    pub send: Vec<Outgoing>,
    pub notices: Vec<Notice>,
}

/// A peer broke the protocol; the message was ignored and nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("unexpected {0} on this connection")]
    Unexpected(&'static str),
    /// This branch's store is behind what a peer saw of it: it was rolled back, replaced, or lost
    /// writes it had acknowledged (a power cut under a disk that lied). Carrying on would create
    /// or destroy money.
    #[error("{0}")]
    SelfBehind(Behind),
    /// The peer's store is behind what this branch saw of it; the peer is refused until it comes
    /// back with a store that is not (it stops itself when it learns it).
    #[error("{0}")]
    PeerBehind(Behind),
    #[error("marker {0} for a snapshot already completed here")]
    StaleMarker(SnapshotId),
    #[error("credit would overflow the balance")]
    Overflow,
    #[error("malformed part: {0}")]
    BadPart(String),
    #[error("malformed compaction notice: {0}")]
    BadCompact(String),
}

/// Which of a channel's counters the two ends disagree on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionKind {
    /// Transfer sequence numbers: sent (sender) against applied (receiver).
    Transfers,
    /// Snapshot markers: recorded (sender) against received (receiver).
    Markers,
    /// Snapshot parts towards the initiator: done (sender) against received (initiator).
    Parts,
    /// Snapshots the initiator started (receiver) against a marker or part of one (sender).
    Started,
}

/// Which end of a channel is behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Sender,
    Receiver,
}

/// The two ends of channel `from → to` disagree in a way only a store that went back in time
/// explains: the `behind` end's store holds `store_has`, but the other end saw `other_saw` from
/// it (a receiver applied more than its sender's store says was sent, or a sender holds an
/// acknowledgement for more than its receiver's store says was applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Behind {
    pub from: BranchId,
    pub to: BranchId,
    pub kind: PositionKind,
    pub behind: End,
    pub store_has: u64,
    pub other_saw: u64,
}

impl Behind {
    /// The branch whose store is behind.
    pub fn branch(&self) -> BranchId {
        match self.behind {
            End::Sender => self.from,
            End::Receiver => self.to,
        }
    }

    /// One sentence, with branches named by `name`.
    pub fn describe(&self, name: &dyn Fn(BranchId) -> String) -> String {
        let (from, to) = (name(self.from), name(self.to));
        let (has, saw) = (self.store_has, self.other_saw);
        let what = match (self.kind, self.behind) {
            (PositionKind::Transfers, End::Sender) => format!(
                "{from}'s store has sent transfers up to seq {has}, but {to} applied up to seq {saw}"
            ),
            (PositionKind::Transfers, End::Receiver) => format!(
                "{to}'s store has applied transfers up to seq {has}, but {from} holds {to}'s acknowledgement up to seq {saw}"
            ),
            (PositionKind::Markers, End::Sender) => format!(
                "{from}'s store has recorded snapshots up to {has}, but {to} received {from}'s marker of snapshot {saw}"
            ),
            (PositionKind::Markers, End::Receiver) => format!(
                "{to}'s store has received markers up to snapshot {has}, but {from} holds {to}'s acknowledgement of marker {saw}"
            ),
            (PositionKind::Parts, End::Sender) => format!(
                "{from}'s store has completed snapshot parts up to {has}, but {to} received {from}'s part of snapshot {saw}"
            ),
            (PositionKind::Parts, End::Receiver) => format!(
                "{to}'s store has received parts up to snapshot {has}, but {from} holds {to}'s acknowledgement of part {saw}"
            ),
            (PositionKind::Started, _) => format!(
                "{to}'s store has started snapshots up to {has}, but {from} sent its share of snapshot {saw}"
            ),
        };
        format!(
            "{}: store is behind the cluster on channel {from} -> {to}: {what}",
            name(self.branch())
        )
    }
}

impl std::fmt::Display for Behind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe(&|b| b.to_string()))
    }
}

/// What the shell must do about a [`ProtocolError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remedy {
    /// Close the connection the message came on: the peer reconnects and resends in order,
    /// which repairs the gap the refused message left.
    Reconnect,
    /// This branch's store is behind what the cluster saw (see [`ProtocolError::SelfBehind`]):
    /// stop, and have the operator restore the cluster.
    Stop,
    /// The peer's store is behind: tell the operator; the core already ignores the peer on this
    /// connection.
    Refuse,
}

impl ProtocolError {
    pub fn remedy(&self) -> Remedy {
        match self {
            ProtocolError::SelfBehind(_) => Remedy::Stop,
            ProtocolError::PeerBehind(_) => Remedy::Refuse,
            _ => Remedy::Reconnect,
        }
    }
}

/// One bank branch.
pub struct Branch {
    cfg: CoreConfig,
    state: DurableState,
    /// Per peer: transfers sent but not acknowledged, in seq order.
    unacked: Vec<VecDeque<(Seq, Amount)>>,
    unsent_parts: VecDeque<LocalPart>,
    /// Initiator: parts per snapshot in progress.
    collected: BTreeMap<SnapshotId, BTreeMap<BranchId, LocalPart>>,
    /// Per peer: the epoch of the outgoing link if it is up and the receiver's position on it
    /// is known (its first acknowledgement arrived): only then does the channel carry anything.
    out_link: Vec<Option<u64>>,
    /// Per peer: the epoch of an outgoing link that is connected, has sent its [`Position`], and
    /// waits for the receiver's first acknowledgement.
    link_pending: Vec<Option<u64>>,
    /// Per peer: its current inbound connection is refused (its store is behind); nothing it
    /// sends there is taken until it connects again.
    refused_in: Vec<bool>,
    /// Per peer: an acknowledgement from it arrived since this core was built from its store and
    /// agreed with the store. Until then no new transfer goes to it (a store put back in time
    /// would reuse sequence numbers the peer already applied, even while the peer is out of
    /// reach), and the initiator starts no snapshot.
    verified: Vec<bool>,
    /// The core was built from a store that never committed anything: no snapshot id of it can
    /// have been seen, so the initiator need not hold its snapshots for the peers' positions.
    fresh: bool,
    /// Per peer: an acknowledgement should be sent at the end of this step.
    ack_due: Vec<bool>,
    /// Per peer: markers that overtook transfers they follow (`after` beyond what is applied),
    /// in snapshot order. Their snapshot is recorded; the channel closes when its transfers up
    /// to `after` are applied. Not durable: unacknowledged, the sender resends them.
    early_markers: Vec<VecDeque<(SnapshotId, Seq)>>,
    /// Per peer: index into `ready.send` of a `Transfers` message still open for appending.
    open_run: Vec<Option<usize>>,
    rng: SeededRng,
    timers: Timers,
    dirty: bool,
    ready: Ready,
    #[cfg(feature = "testing")]
    bug: Option<InjectedBug>,
    #[cfg(feature = "testing")]
    stale_state: Option<DurableState>,
}

/// Deliberately wrong orderings, switched on only in tests, to prove the simulator finds them.
#[cfg(feature = "testing")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectedBug {
    /// Acknowledge credits before they are durable: the state of a step is persisted only with
    /// the *next* step, while its acknowledgements leave with this one.
    AckBeforeDurable,
    /// Keep adding transfers to a channel's recorded money after its marker arrived.
    RecordPastMarker,
    /// No position exchange on a new connection (a link carries everything at once, as before
    /// it existed) and no check that acknowledgements only grow: a store that went back in time
    /// is caught only when a peer happens to acknowledge beyond what it sent.
    NoPositionCheck,
}

impl Branch {
    pub fn new(cfg: CoreConfig, rec: Recovered) -> Branch {
        if let Err(e) = cfg.validate() {
            panic!("invalid core configuration: {e}");
        }
        let n = cfg.branches as usize;
        let unacked: Vec<VecDeque<(Seq, Amount)>> =
            rec.unacked.into_iter().map(VecDeque::from).collect();
        let mut collected: BTreeMap<SnapshotId, BTreeMap<BranchId, LocalPart>> = BTreeMap::new();
        for part in rec.collected {
            collected
                .entry(part.snapshot)
                .or_default()
                .insert(part.branch, part);
        }
        let rng = SeededRng::seed_from_u64(cfg.seed);
        let fresh = rec.state == DurableState::genesis(n, cfg.initial_balance);
        let branch = Branch {
            fresh,
            state: rec.state,
            unacked,
            unsent_parts: rec.unsent_parts.into(),
            collected,
            out_link: vec![None; n],
            link_pending: vec![None; n],
            refused_in: vec![false; n],
            verified: vec![false; n],
            ack_due: vec![false; n],
            early_markers: vec![VecDeque::new(); n],
            open_run: vec![None; n],
            rng,
            timers: Timers {
                first_snapshot_due: cfg.me == cfg.initiator,
                ..Timers::default()
            },
            dirty: false,
            ready: Ready::default(),
            #[cfg(feature = "testing")]
            bug: None,
            #[cfg(feature = "testing")]
            stale_state: None,
            cfg,
        };
        // What the store handed over must already be a consistent branch.
        branch.assert_invariants();
        branch
    }

    /// Switches on a deliberate bug (tests only).
    #[cfg(feature = "testing")]
    pub fn inject_bug(&mut self, bug: InjectedBug) {
        self.bug = Some(bug);
    }

    #[cfg(feature = "testing")]
    fn has_bug(&self, bug: InjectedBug) -> bool {
        self.bug == Some(bug)
    }

    // ---- getters -------------------------------------------------------------------------

    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    pub fn state(&self) -> &DurableState {
        &self.state
    }

    pub fn balance(&self) -> Amount {
        self.state.balance
    }

    pub fn is_initiator(&self) -> bool {
        self.cfg.me == self.cfg.initiator
    }

    /// Transfers sent and not yet acknowledged, over all channels.
    pub fn unacked_total(&self) -> usize {
        self.unacked.iter().map(|q| q.len()).sum()
    }

    /// Money sent and not yet acknowledged (it may or may not be applied by now).
    pub fn unacked_money(&self) -> u128 {
        self.unacked
            .iter()
            .flat_map(|q| q.iter().map(|(_, a)| *a as u128))
            .sum()
    }

    /// Per peer (this branch included, with nothing): the transfers sent and not yet
    /// acknowledged, and their money.
    pub fn unacked_by_peer(&self) -> Vec<(usize, u128)> {
        self.unacked
            .iter()
            .map(|q| (q.len(), q.iter().map(|(_, a)| *a as u128).sum()))
            .collect()
    }

    /// Outgoing links currently up.
    pub fn links_up(&self) -> usize {
        self.out_link.iter().filter(|l| l.is_some()).count()
    }

    /// The peers whose outgoing link is up.
    pub fn links_up_to(&self) -> Vec<BranchId> {
        (0..self.cfg.branches)
            .map(BranchId)
            .filter(|b| self.out_link[b.index()].is_some())
            .collect()
    }

    pub fn snapshots_in_flight(&self) -> usize {
        self.state.recording.len()
    }

    /// The newest snapshot this branch records (its part not yet complete), if any.
    pub fn newest_recording(&self) -> Option<SnapshotId> {
        self.state
            .recording
            .keys()
            .next_back()
            .map(|&k| SnapshotId(k))
    }

    /// Snapshots this branch is waiting on: markers still to come here and, at the initiator,
    /// parts still to come from other branches.
    pub fn pending(&self) -> Vec<Pending> {
        let mut out: BTreeMap<SnapshotId, Pending> = BTreeMap::new();
        for (&k, rec) in &self.state.recording {
            out.insert(
                SnapshotId(k),
                Pending {
                    snapshot: SnapshotId(k),
                    since: rec.recorded_at,
                    markers_from: (0..self.cfg.branches)
                        .map(BranchId)
                        .filter(|b| rec.inc[b.index()].until.is_none())
                        .collect(),
                    parts_from: Vec::new(),
                },
            );
        }
        if self.is_initiator() {
            for k in self.state.completed.0 + 1..self.state.next_snapshot.0 {
                let k = SnapshotId(k);
                let have = self.collected.get(&k);
                let since = have
                    .and_then(|parts| parts.get(&self.cfg.me))
                    .map(|p| p.recorded_at)
                    .or_else(|| out.get(&k).map(|p| p.since))
                    .unwrap_or(0);
                let missing: Vec<BranchId> = (0..self.cfg.branches)
                    .map(BranchId)
                    .filter(|b| !have.is_some_and(|parts| parts.contains_key(b)))
                    .collect();
                let entry = out.entry(k).or_insert(Pending {
                    snapshot: k,
                    since,
                    markers_from: Vec::new(),
                    parts_from: Vec::new(),
                });
                entry.parts_from = missing;
            }
        }
        out.into_values().collect()
    }

    /// Initiator: snapshots started and not yet complete globally.
    pub fn snapshots_pending(&self) -> u64 {
        self.state.next_snapshot.0 - 1 - self.state.completed.0
    }

    /// Whether `peer` acknowledged (and agreed with this store) since this core was built.
    fn position_known(&self, peer: BranchId) -> bool {
        #[cfg(feature = "testing")]
        if self.has_bug(InjectedBug::NoPositionCheck) {
            return true;
        }
        self.verified[peer.index()]
    }

    // ---- inputs ----------------------------------------------------------------------------

    /// Makes one random transfer if the balance and the channels allow. Returns whether it did.
    pub fn on_transfer_tick(&mut self) -> bool {
        if self.state.balance == 0 || self.cfg.branches < 2 {
            return false;
        }
        let peers = self.cfg.branches as usize - 1;
        let start = self.rng.gen_range(0..peers);
        let to = (0..peers)
            .map(|i| {
                let k = ((start + i) % peers) as u16;
                BranchId(if k >= self.cfg.me.0 { k + 1 } else { k })
            })
            .find(|p| {
                self.position_known(*p)
                    && self.unacked[p.index()].len() < self.cfg.unacked_per_channel_max
            });
        let Some(to) = to else {
            return false;
        };
        let cap = self.cfg.amount_max.min(self.state.balance).max(1);
        let amount = self.rng.gen_range(1..=cap);
        self.send_transfer(to, amount);
        true
    }

    // ---- timers ([`crate::timing`]) --------------------------------------------------------

    /// When this branch next wants [`Branch::handle_timeout`] called (a time at or before now:
    /// at once). `None` only if it never will.
    pub fn poll_timeout(&self) -> Option<Micros> {
        let t = &self.timers;
        let (Some(pending_at), Some(snapshot_at)) = (t.pending_check_at, t.snapshot_at) else {
            return Some(0); // not armed yet
        };
        let mut due = pending_at;
        if self.is_initiator() {
            due = due.min(snapshot_at);
            if t.first_snapshot_due && self.links_up() + 1 == self.cfg.branches as usize {
                due = 0;
            }
        }
        Some(due)
    }

    /// Fires every timer due at `now` (arming them on the first call): the initiator's first
    /// snapshot once it reaches every branch and one per interval after, and the warnings about
    /// snapshots that wait too long.
    pub fn handle_timeout(&mut self, now: Micros) {
        let timing = self.cfg.timing.clone();
        let pending_at = *self
            .timers
            .pending_check_at
            .get_or_insert(now + timing.pending_check_us());
        let snapshot_at = *self
            .timers
            .snapshot_at
            .get_or_insert(now + timing.snapshot_interval_us);
        if self.is_initiator() {
            let reach_all = self.links_up() + 1 == self.cfg.branches as usize;
            if self.timers.first_snapshot_due && reach_all {
                self.timers.first_snapshot_due = false;
                self.on_snapshot_tick(now);
                self.timers.snapshot_at = Some(now + timing.snapshot_interval_us);
            } else if now >= snapshot_at {
                if timing.snapshots_allowed_at(now) {
                    self.on_snapshot_tick(now);
                }
                self.timers.snapshot_at = Some(now + timing.snapshot_interval_us);
            }
        }
        if now >= pending_at {
            self.timers.pending_check_at = Some(now + timing.pending_check_us());
            let pending = self.pending();
            let slow =
                crate::timing::slow_snapshots(&timing, &mut self.timers.warned, pending, now);
            for (pending, waited_us) in slow {
                self.ready
                    .notices
                    .push(Notice::SnapshotSlow { pending, waited_us });
            }
        }
    }

    /// Initiator: start the next snapshot now (unless too many are in flight). Its own timer
    /// ([`Branch::handle_timeout`]) and an operator's request (`snapctl snapshot`) call it.
    pub fn on_snapshot_tick(&mut self, now: Micros) {
        if !self.is_initiator() {
            return;
        }
        let unverified = self
            .cfg
            .peers()
            .filter(|p| !self.position_known(*p))
            .count();
        if unverified > 0 && !self.fresh {
            self.ready.notices.push(Notice::SnapshotHeld { unverified });
            return;
        }
        let live = self.snapshots_pending() as usize;
        if live >= self.cfg.live_snapshots_max {
            self.ready.notices.push(Notice::SnapshotDeferred { live });
            return;
        }
        let k = self.state.next_snapshot;
        self.state.next_snapshot = SnapshotId(k.0 + 1);
        self.ready.notices.push(Notice::SnapshotStarted(k));
        self.record(k, now);
        self.maybe_complete(k, now);
    }

    /// The outgoing link to `peer` is connected (its `epoch`-th time): say where this branch's
    /// store has the channel, and send nothing more until the receiver's first acknowledgement
    /// says where its store has it ([`Branch::on_message`] checks the two against each other).
    /// A sender whose store went back in time would otherwise reuse sequence numbers the receiver
    /// already applied, which it would drop as duplicates: money lost without a word.
    pub fn on_link_up(&mut self, peer: BranchId, epoch: u64) {
        #[cfg(feature = "testing")]
        if self.has_bug(InjectedBug::NoPositionCheck) {
            return self.open_link(peer, epoch);
        }
        self.out_link[peer.index()] = None;
        self.link_pending[peer.index()] = Some(epoch);
        self.open_run[peer.index()] = None;
        let out = &self.state.out[peer.index()];
        let position = Position {
            sent: out.sent,
            last_recorded: self.state.last_recorded,
            parts_done: self.state.parts_done,
            acked: out.acked,
            marker_acked: out.marker_acked,
            part_acked: out.part_acked,
        };
        self.ready.send.push(Outgoing {
            to: peer,
            link: Link::Out { epoch },
            msg: Message::Position(position),
        });
    }

    /// The receiver's position on the link to `peer` is known: the channel opens, and everything
    /// pending on it is resent in channel order (markers in their places), then any parts.
    fn open_link(&mut self, peer: BranchId, epoch: u64) {
        self.out_link[peer.index()] = Some(epoch);
        self.link_pending[peer.index()] = None;
        self.open_run[peer.index()] = None;
        let link = Link::Out { epoch };
        let mut markers = self.state.out[peer.index()].markers.iter().peekable();
        let mut transfers = self.unacked[peer.index()].iter().peekable();
        let mut run: Option<(Seq, Vec<Amount>)> = None;
        let flush = |run: &mut Option<(Seq, Vec<Amount>)>, send: &mut Vec<Outgoing>| {
            if let Some((first, amounts)) = run.take() {
                send.push(Outgoing {
                    to: peer,
                    link,
                    msg: Message::Transfers { first, amounts },
                });
            }
        };
        loop {
            let next_marker_first = match (markers.peek(), transfers.peek()) {
                (Some((_, after)), Some((seq, _))) => *after < *seq,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if next_marker_first {
                let (k, after) = *markers.next().expect("peeked");
                flush(&mut run, &mut self.ready.send);
                self.ready.send.push(Outgoing {
                    to: peer,
                    link,
                    msg: Message::Marker { snapshot: k, after },
                });
            } else {
                let (seq, amount) = *transfers.next().expect("peeked");
                match &mut run {
                    Some((_, amounts)) if amounts.len() < TRANSFERS_PER_FRAME_MAX => {
                        amounts.push(amount)
                    }
                    _ => {
                        flush(&mut run, &mut self.ready.send);
                        run = Some((seq, vec![amount]));
                    }
                }
            }
        }
        flush(&mut run, &mut self.ready.send);
        if peer == self.cfg.initiator {
            for part in &self.unsent_parts {
                self.ready.send.push(Outgoing {
                    to: peer,
                    link,
                    msg: Message::Part(part.clone()),
                });
            }
        }
    }

    /// The outgoing link to `peer` broke; nothing more is sent until it is up again.
    pub fn on_link_down(&mut self, peer: BranchId) {
        self.out_link[peer.index()] = None;
        self.link_pending[peer.index()] = None;
        self.open_run[peer.index()] = None;
    }

    /// `peer` connected to us: tell it at once how far we are, so it can check, prune and resend.
    pub fn on_inbound_up(&mut self, peer: BranchId) {
        self.ack_due[peer.index()] = true;
        self.refused_in[peer.index()] = false;
    }

    /// A message from `from`. `Ack` arrives on the link we dialled; the rest on the link `from`
    /// dialled. On error nothing changed.
    pub fn on_message(
        &mut self,
        from: BranchId,
        msg: Message,
        now: Micros,
    ) -> Result<(), ProtocolError> {
        if self.refused_in[from.index()] && !matches!(msg, Message::Ack { .. }) {
            // The peer's store is behind (already reported): take nothing from it.
            return Ok(());
        }
        match msg {
            Message::Position(p) => self.on_position(from, &p),
            Message::Transfers { first, amounts } => self.on_transfers(from, first, &amounts, now),
            Message::Marker { snapshot, after } => self.on_marker(from, snapshot, after, now),
            Message::Part(part) => self.on_part(from, part, now),
            Message::Ack {
                applied,
                marker,
                part,
            } => self.on_ack(from, applied, marker, part),
            Message::Compact { snapshot, below } => self.on_compact(from, snapshot, &below),
            Message::Hello { .. } => Err(ProtocolError::Unexpected("Hello")),
            Message::Request(_) | Message::Reply(_) => Err(ProtocolError::Unexpected(
                "control message on a branch link",
            )),
        }
    }

    /// Whether the inputs since the last [`Branch::take_ready`] produced anything to persist or
    /// send (a shell may wait for more before it takes it).
    pub fn has_pending_ready(&self) -> bool {
        self.dirty
            || !self.ready.send.is_empty()
            || !self.ready.persist.is_empty()
            || self.ack_due.iter().any(|a| *a)
    }

    /// Everything the inputs since the last call produced.
    pub fn take_ready(&mut self) -> Ready {
        for p in 0..self.cfg.branches as usize {
            if std::mem::take(&mut self.ack_due[p]) {
                let inc = &self.state.inc[p];
                self.ready.send.push(Outgoing {
                    to: BranchId(p as u16),
                    link: Link::In,
                    msg: Message::Ack {
                        applied: inc.applied,
                        marker: inc.marker,
                        part: inc.part,
                    },
                });
            }
        }
        #[cfg(feature = "testing")]
        if self.has_bug(InjectedBug::AckBeforeDurable) {
            // Persist the state as of the previous step only.
            self.ready.persist.state = self.stale_state.take();
            if std::mem::take(&mut self.dirty) {
                self.stale_state = Some(self.state.clone());
            }
            self.open_run.iter_mut().for_each(|r| *r = None);
            return std::mem::take(&mut self.ready);
        }
        if std::mem::take(&mut self.dirty) {
            self.ready.persist.state = Some(self.state.clone());
        }
        self.open_run.iter_mut().for_each(|r| *r = None);
        #[cfg(any(debug_assertions, feature = "testing"))]
        self.assert_invariants();
        std::mem::take(&mut self.ready)
    }

    /// Panics, naming the invariant, if the core's state is not one the protocol can reach:
    /// run after every step in debug builds and in the simulator (the `testing` feature).
    /// Each check is O(branches + snapshots in flight).
    pub fn assert_invariants(&self) {
        let n = self.cfg.branches as usize;
        let st = &self.state;
        assert_eq!(st.out.len(), n, "one outgoing channel per branch");
        assert_eq!(st.inc.len(), n, "one incoming channel per branch");
        assert_eq!(self.unacked.len(), n, "one unacknowledged queue per branch");
        for p in self.cfg.peers() {
            let (i, o) = (p.index(), &st.out[p.index()]);
            assert!(
                o.acked <= o.sent,
                "#{}: acked {} > sent {} to {p}",
                self.cfg.me,
                o.acked,
                o.sent
            );
            assert!(
                o.compacted <= o.acked,
                "#{}: log to {p} compacted to {} beyond acked {}",
                self.cfg.me,
                o.compacted,
                o.acked
            );
            let q = &self.unacked[i];
            assert_eq!(
                q.len() as u64,
                o.sent.0 - o.acked.0,
                "#{}: unacknowledged transfers to {p} cover (acked, sent]",
                self.cfg.me
            );
            if let (Some(first), Some(last)) = (q.front(), q.back()) {
                assert!(
                    first.0 .0 == o.acked.0 + 1 && last.0 == o.sent,
                    "#{}: unacknowledged transfers to {p} run {}..={}, not ({}, {}]",
                    self.cfg.me,
                    first.0,
                    last.0,
                    o.acked,
                    o.sent
                );
            }
            assert!(
                o.markers
                    .windows(2)
                    .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                "#{}: markers to {p} out of order",
                self.cfg.me
            );
            assert!(
                o.markers
                    .iter()
                    .all(|(k, after)| *k <= st.last_recorded && *after <= o.sent),
                "#{}: a marker to {p} for a snapshot not recorded here or beyond what was sent",
                self.cfg.me
            );
            let held = &self.early_markers[i];
            assert!(
                held.iter()
                    .zip(held.iter().skip(1))
                    .all(|(a, b)| a.0 < b.0 && a.1 <= b.1)
                    && held.iter().all(|(k, after)| {
                        *k > st.inc[i].marker
                            && *k <= st.last_recorded
                            && *after > st.inc[i].applied
                            && st
                                .recording
                                .get(&k.0)
                                .is_some_and(|r| r.inc[i].until.is_none())
                    }),
                "#{}: markers held from {p} out of order, passed, or of no open recording",
                self.cfg.me
            );
            assert!(
                o.part_acked <= st.parts_done,
                "#{}: part {} acknowledged of {} done",
                self.cfg.me,
                o.part_acked,
                st.parts_done
            );
        }
        assert!(
            st.parts_done <= st.last_recorded,
            "#{}: part {} done of {} recorded",
            self.cfg.me,
            st.parts_done,
            st.last_recorded
        );
        for (k, r) in &st.recording {
            assert!(
                *k > st.parts_done.0 && *k <= st.last_recorded.0,
                "#{}: recording {k} outside ({}, {}]",
                self.cfg.me,
                st.parts_done,
                st.last_recorded
            );
            assert!(
                r.sent.len() == n && r.inc.len() == n,
                "#{}: recording {k} has one entry per branch",
                self.cfg.me
            );
        }
        assert!(
            self.unsent_parts
                .iter()
                .all(|part| part.snapshot <= st.parts_done),
            "#{}: a part to send that is not done",
            self.cfg.me
        );
        if self.is_initiator() {
            assert!(
                st.completed < st.next_snapshot,
                "#{}: snapshot {} completed, next id {}",
                self.cfg.me,
                st.completed,
                st.next_snapshot
            );
        }
    }

    // ---- transfers -------------------------------------------------------------------------

    fn send_transfer(&mut self, to: BranchId, amount: Amount) {
        debug_assert!(amount >= 1 && amount <= self.state.balance);
        self.state.balance -= amount;
        let out = &mut self.state.out[to.index()];
        out.sent = out.sent.next();
        let seq = out.sent;
        self.unacked[to.index()].push_back((seq, amount));
        self.ready.persist.transfers.push((to, seq, amount));
        self.dirty = true;
        let Some(epoch) = self.out_link[to.index()] else {
            return;
        };
        if let Some(i) = self.open_run[to.index()] {
            if let Message::Transfers { first, amounts } = &mut self.ready.send[i].msg {
                if amounts.len() < TRANSFERS_PER_FRAME_MAX
                    && first.0 + amounts.len() as u64 == seq.0
                {
                    amounts.push(amount);
                    return;
                }
            }
        }
        self.open_run[to.index()] = Some(self.ready.send.len());
        self.ready.send.push(Outgoing {
            to,
            link: Link::Out { epoch },
            msg: Message::Transfers {
                first: seq,
                amounts: vec![amount],
            },
        });
    }

    fn on_transfers(
        &mut self,
        from: BranchId,
        first: Seq,
        amounts: &[Amount],
        now: Micros,
    ) -> Result<(), ProtocolError> {
        let p = from.index();
        // Validate everything this message would credit before changing anything.
        let applied = self.state.inc[p].applied;
        let skip = applied
            .0
            .saturating_sub(first.0.saturating_sub(1))
            .min(amounts.len() as u64) as usize;
        let fresh = if first.0 <= applied.0.saturating_add(1) {
            &amounts[skip..]
        } else {
            &[][..]
        };
        fresh
            .iter()
            .try_fold(self.state.balance, |b, a| b.checked_add(*a))
            .ok_or(ProtocolError::Overflow)?;
        let mut seq = first;
        for &amount in amounts {
            let applied = self.state.inc[p].applied;
            if seq <= applied {
                // Duplicate of something already credited: acknowledge again, apply never.
                self.ack_due[p] = true;
            } else if seq == applied.next() {
                // Cannot overflow: checked for the whole message above.
                self.state.balance += amount;
                self.state.inc[p].applied = seq;
                #[cfg(feature = "testing")]
                let past_marker = self.has_bug(InjectedBug::RecordPastMarker);
                #[cfg(not(feature = "testing"))]
                let past_marker = false;
                for rec in self.state.recording.values_mut() {
                    let ch = &mut rec.inc[p];
                    if ch.until.is_none() {
                        ch.money = ch.money.saturating_add(amount);
                        ch.count += 1;
                    } else if past_marker {
                        ch.money = ch.money.saturating_add(amount);
                    }
                }
                self.ack_due[p] = true;
                self.dirty = true;
                while let Some(&(k, after)) = self.early_markers[p].front() {
                    if after != seq {
                        debug_assert!(after > seq, "a held marker's place was passed");
                        break;
                    }
                    self.early_markers[p].pop_front();
                    self.close_channel(from, k, after, now);
                }
            } else {
                // A gap: an earlier transfer was lost with a connection; the sender resends
                // everything unacknowledged in order after reconnecting.
                break;
            }
            seq = seq.next();
        }
        Ok(())
    }

    fn on_ack(
        &mut self,
        from: BranchId,
        applied: Seq,
        marker: SnapshotId,
        part: SnapshotId,
    ) -> Result<(), ProtocolError> {
        let (me, p) = (self.cfg.me, from.index());
        let out = &self.state.out[p];
        // The receiver saw more from this branch than its store holds: this store is behind.
        let mine = [
            (PositionKind::Transfers, out.sent.0, applied.0),
            (PositionKind::Markers, self.state.last_recorded.0, marker.0),
            (PositionKind::Parts, self.state.parts_done.0, part.0),
        ];
        if let Some(&(kind, has, saw)) = mine.iter().find(|(_, has, saw)| saw > has) {
            return Err(ProtocolError::SelfBehind(Behind {
                from: me,
                to: from,
                kind,
                behind: End::Sender,
                store_has: has,
                other_saw: saw,
            }));
        }
        #[cfg(feature = "testing")]
        let checked = !self.has_bug(InjectedBug::NoPositionCheck);
        #[cfg(not(feature = "testing"))]
        let checked = true;
        // The receiver acknowledges less than it did before: its store is behind.
        let theirs = [
            (PositionKind::Transfers, applied.0, out.acked.0),
            (PositionKind::Markers, marker.0, out.marker_acked.0),
            (PositionKind::Parts, part.0, out.part_acked.0),
        ];
        if let Some(&(kind, has, saw)) = theirs.iter().find(|(_, has, saw)| checked && saw > has) {
            // Never opened to it: the link stays shut until the peer comes back with a store
            // that is not behind.
            self.out_link[p] = None;
            self.link_pending[p] = None;
            return Err(ProtocolError::PeerBehind(Behind {
                from: me,
                to: from,
                kind,
                behind: End::Receiver,
                store_has: has,
                other_saw: saw,
            }));
        }
        let out = &mut self.state.out[from.index()];
        if applied > out.acked {
            out.acked = applied;
            let q = &mut self.unacked[from.index()];
            while q.front().is_some_and(|(s, _)| *s <= applied) {
                q.pop_front();
            }
            self.dirty = true;
        }
        if marker > out.marker_acked {
            out.marker_acked = marker;
            out.markers.retain(|(k, _)| *k > marker);
            self.dirty = true;
        }
        if part > out.part_acked {
            out.part_acked = part;
            while self
                .unsent_parts
                .front()
                .is_some_and(|p| p.snapshot <= part)
            {
                self.unsent_parts.pop_front();
            }
            self.dirty = true;
        }
        self.verified[p] = true;
        if let Some(epoch) = self.link_pending[p] {
            self.open_link(from, epoch);
        }
        Ok(())
    }

    /// The sender's [`Position`] on a new connection of channel `from → me`: each of its counters
    /// against this branch's. What the sender holds as acknowledged this store must have; what
    /// this store applied the sender must have sent.
    fn on_position(&mut self, from: BranchId, pos: &Position) -> Result<(), ProtocolError> {
        let (me, p) = (self.cfg.me, from.index());
        let inc = &self.state.inc[p];
        let mine = [
            (PositionKind::Transfers, inc.applied.0, pos.acked.0),
            (PositionKind::Markers, inc.marker.0, pos.marker_acked.0),
            (PositionKind::Parts, inc.part.0, pos.part_acked.0),
        ];
        if let Some(&(kind, has, saw)) = mine.iter().find(|(_, has, saw)| saw > has) {
            return Err(ProtocolError::SelfBehind(Behind {
                from,
                to: me,
                kind,
                behind: End::Receiver,
                store_has: has,
                other_saw: saw,
            }));
        }
        // A held marker is seen too: its sender recorded that snapshot, and had sent up to its
        // place, durably before it left (kept across connections: an old connection's reader
        // may still deliver the transfers it waits for).
        let (held_k, held_after) = self.early_markers[p]
            .back()
            .map_or((0, 0), |(k, after)| (k.0, after.0));
        let theirs = [
            (
                PositionKind::Transfers,
                pos.sent.0,
                inc.applied.0.max(held_after),
            ),
            (
                PositionKind::Markers,
                pos.last_recorded.0,
                inc.marker.0.max(held_k),
            ),
            (PositionKind::Parts, pos.parts_done.0, inc.part.0),
        ];
        if let Some(&(kind, has, saw)) = theirs.iter().find(|(_, has, saw)| saw > has) {
            self.refused_in[p] = true;
            return Err(ProtocolError::PeerBehind(Behind {
                from,
                to: me,
                kind,
                behind: End::Sender,
                store_has: has,
                other_saw: saw,
            }));
        }
        Ok(())
    }

    // ---- snapshots -------------------------------------------------------------------------

    /// Chandy–Lamport marker-receiving rule.
    fn on_marker(
        &mut self,
        from: BranchId,
        k: SnapshotId,
        after: Seq,
        now: Micros,
    ) -> Result<(), ProtocolError> {
        let p = from.index();
        let applied = self.state.inc[p].applied;
        if k <= self.state.inc[p].marker {
            self.ack_due[p] = true;
            return Ok(());
        }
        if self.early_markers[p].iter().any(|(e, _)| *e == k) {
            // Held already (a resend on the same connection's heels).
            return Ok(());
        }
        let early = after > applied;
        if after < applied {
            // The sender recorded its state when it had sent `after`, but this branch applied
            // more from it: the sender's store went back in time.
            self.refused_in[p] = true;
            return Err(ProtocolError::PeerBehind(Behind {
                from,
                to: self.cfg.me,
                kind: PositionKind::Transfers,
                behind: End::Sender,
                store_has: after.0,
                other_saw: applied.0,
            }));
        }
        if self.is_initiator() && k >= self.state.next_snapshot {
            return Err(self.never_started(from, k));
        }
        if let Some(&(held, held_after)) = self.early_markers[p].back() {
            if k < held || after < held_after {
                // Markers on a channel come in snapshot and channel order.
                return Err(ProtocolError::Unexpected(
                    "a marker out of order on its channel",
                ));
            }
        }
        if !self.state.recording.contains_key(&k.0) {
            if k <= self.state.last_recorded {
                return Err(ProtocolError::StaleMarker(k));
            }
            // First marker for k: record our state, marker out on every channel. Even if it
            // overtook transfers: nothing the sender sent after its cut has been applied.
            self.record(k, now);
        }
        if early {
            // The transfers it follows are still on their way (queued behind it, or lost with
            // a connection and resent): the channel closes when they are applied.
            self.early_markers[p].push_back((k, after));
            return Ok(());
        }
        debug_assert!(self.early_markers[p].is_empty(), "held markers come first");
        self.close_channel(from, k, after, now);
        Ok(())
    }

    /// The channel from `from` is recorded for snapshot `k` up to `after` (its marker's place,
    /// now applied): it closes, and the part may be complete.
    fn close_channel(&mut self, from: BranchId, k: SnapshotId, after: Seq, now: Micros) {
        let p = from.index();
        debug_assert_eq!(self.state.inc[p].applied, after);
        self.state.inc[p].marker = k;
        self.ack_due[p] = true;
        let rec = self
            .state
            .recording
            .get_mut(&k.0)
            .expect("recording exists");
        let ch = &mut rec.inc[p];
        debug_assert!(ch.until.is_none(), "one marker per snapshot per channel");
        debug_assert_eq!(ch.applied_at_record.0 + ch.count, after.0);
        ch.until = Some(after);
        self.dirty = true;
        self.maybe_complete(k, now);
    }

    /// Records the local state for snapshot `k` and sends a marker on every outgoing channel.
    fn record(&mut self, k: SnapshotId, now: Micros) {
        assert!(
            k > self.state.last_recorded,
            "snapshots are recorded in order"
        );
        let me = self.cfg.me.index();
        let rec = Recording {
            recorded_at: now,
            balance: self.state.balance,
            sent: self.state.out.iter().map(|o| o.sent).collect(),
            inc: self
                .state
                .inc
                .iter()
                .enumerate()
                .map(|(p, c)| ChannelRecording {
                    applied_at_record: c.applied,
                    until: (p == me).then_some(c.applied),
                    money: 0,
                    count: 0,
                })
                .collect(),
        };
        self.state.recording.insert(k.0, rec);
        self.state.last_recorded = k;
        self.dirty = true;
        let peers: Vec<BranchId> = self.cfg.peers().collect();
        for to in peers {
            let out = &mut self.state.out[to.index()];
            let after = out.sent;
            out.markers.push((k, after));
            self.open_run[to.index()] = None;
            if let Some(epoch) = self.out_link[to.index()] {
                self.ready.send.push(Outgoing {
                    to,
                    link: Link::Out { epoch },
                    msg: Message::Marker { snapshot: k, after },
                });
            }
        }
    }

    /// If every incoming channel of `k` is closed, the local part is done.
    fn maybe_complete(&mut self, k: SnapshotId, now: Micros) {
        let Some(rec) = self.state.recording.get(&k.0) else {
            return;
        };
        if rec.inc.iter().any(|c| c.until.is_none()) {
            return;
        }
        let rec = self.state.recording.remove(&k.0).expect("present");
        let me = self.cfg.me;
        let part = LocalPart {
            snapshot: k,
            branch: me,
            recorded_at: rec.recorded_at,
            balance: rec.balance,
            sent: self.cfg.peers().map(|p| (p, rec.sent[p.index()])).collect(),
            channels: self
                .cfg
                .peers()
                .map(|p| {
                    let c = &rec.inc[p.index()];
                    let until = c.until.expect("closed");
                    assert_eq!(c.applied_at_record.0 + c.count, until.0, "channel record");
                    ChannelRecord {
                        from: p,
                        applied_at_record: c.applied_at_record,
                        until,
                        money: c.money,
                        count: c.count,
                    }
                })
                .collect(),
        };
        assert!(k > self.state.parts_done, "parts complete in order");
        self.state.parts_done = k;
        self.dirty = true;
        self.ready.notices.push(Notice::PartRecorded(k));
        self.ready.persist.parts.push(part.clone());
        if self.is_initiator() {
            self.collect(part, now);
        } else {
            let initiator = self.cfg.initiator;
            if let Some(epoch) = self.out_link[initiator.index()] {
                self.open_run[initiator.index()] = None;
                self.ready.send.push(Outgoing {
                    to: initiator,
                    link: Link::Out { epoch },
                    msg: Message::Part(part.clone()),
                });
            }
            self.unsent_parts.push_back(part);
        }
    }

    fn on_part(
        &mut self,
        from: BranchId,
        part: LocalPart,
        now: Micros,
    ) -> Result<(), ProtocolError> {
        if !self.is_initiator() {
            return Err(ProtocolError::Unexpected(
                "Part at a branch that is not the initiator",
            ));
        }
        let p = from.index();
        if part.snapshot <= self.state.inc[p].part {
            self.ack_due[p] = true;
            return Ok(());
        }
        self.check_part(from, &part)?;
        self.state.inc[p].part = part.snapshot;
        self.ack_due[p] = true;
        self.dirty = true;
        self.collect(part, now);
        Ok(())
    }

    /// Initiator: `from` sent a marker or part of snapshot `k`, which this store never started:
    /// the store went back in time.
    fn never_started(&self, from: BranchId, k: SnapshotId) -> ProtocolError {
        ProtocolError::SelfBehind(Behind {
            from,
            to: self.cfg.me,
            kind: PositionKind::Started,
            behind: End::Receiver,
            store_has: self.state.next_snapshot.0 - 1,
            other_saw: k.0,
        })
    }

    fn check_part(&self, from: BranchId, part: &LocalPart) -> Result<(), ProtocolError> {
        let bad = |what: String| Err(ProtocolError::BadPart(what));
        if part.branch != from {
            return bad(format!("part of {} sent by {}", part.branch, from));
        }
        if part.snapshot >= self.state.next_snapshot {
            return Err(self.never_started(from, part.snapshot));
        }
        let peers = self.cfg.branches as usize - 1;
        if part.sent.len() != peers || part.channels.len() != peers {
            return bad(format!(
                "{} channels, expected {peers}",
                part.channels.len()
            ));
        }
        let mut expect = (0..self.cfg.branches).map(BranchId).filter(|b| *b != from);
        for (c, e) in part.channels.iter().zip(expect.clone()) {
            if c.from != e || c.applied_at_record.0.checked_add(c.count) != Some(c.until.0) {
                return bad(format!("channel record from {} is inconsistent", c.from));
            }
        }
        if !part.sent.iter().all(|(b, _)| Some(*b) == expect.next()) {
            return bad("outgoing channel list".to_string());
        }
        Ok(())
    }

    /// Initiator: keep `part`; when all branches' parts of its snapshot are in, assemble it.
    fn collect(&mut self, part: LocalPart, now: Micros) {
        let k = part.snapshot;
        if k <= self.state.completed {
            return;
        }
        self.ready.persist.collected.push(part.clone());
        let parts = self.collected.entry(k).or_default();
        parts.insert(part.branch, part);
        if parts.len() < self.cfg.branches as usize {
            return;
        }
        let parts: Vec<LocalPart> = self
            .collected
            .remove(&k)
            .expect("present")
            .into_values()
            .collect();
        let total: u128 = parts.iter().map(|p| p.money()).sum();
        let started_at = parts[self.cfg.initiator.index()].recorded_at;
        let global = GlobalSnapshot {
            snapshot: k,
            started_at,
            completed_at: now.max(started_at),
            expected_total: self.cfg.genesis_total(),
            total,
            parts,
        };
        if total != global.expected_total as u128 && self.state.unconserved_since.0 == 0 {
            self.state.unconserved_since = k;
        }
        let unconserved = self.state.unconserved_since;
        self.ready.notices.push(Notice::SnapshotComplete {
            snapshot: k,
            duration_us: global.duration_us(),
            total,
            expected: global.expected_total,
            unconserved_since: (unconserved.0 != 0).then_some(unconserved),
        });
        self.state.completed = self.state.completed.max(k);
        self.dirty = true;
        // Compaction and pruning would drop the evidence: the last snapshot that conserved money
        // (where the history now starts) and everything after it are kept.
        if unconserved.0 == 0 {
            self.start_compaction(&global);
        }
        self.ready.persist.globals.push(global);
        self.ready.persist.uncollect.push(k);
    }

    // ---- compaction ------------------------------------------------------------------------

    /// Initiator: global snapshot `g` just completed and becomes the start of the audited
    /// history. On each channel `i → j` every later snapshot's channel state starts at or after
    /// the receiver's watermark recorded in `g` (watermarks only grow and snapshots are recorded
    /// in order), and the current state needs only what is unacknowledged: so sender `i` may drop
    /// its log up to the lower of the two. Each sender is told its receivers' watermarks; one
    /// that misses the notice (link down) catches up with the next.
    fn start_compaction(&mut self, g: &GlobalSnapshot) {
        let me = self.cfg.me;
        for sender in (0..self.cfg.branches).map(BranchId) {
            let below: Vec<(BranchId, Seq)> = g
                .parts
                .iter()
                .filter(|p| p.branch != sender)
                .filter_map(|p| {
                    p.channel_from(sender)
                        .map(|c| (p.branch, c.applied_at_record))
                })
                .collect();
            if sender == me {
                self.compact(g.snapshot, &below);
            } else if let Some(epoch) = self.out_link[sender.index()] {
                self.open_run[sender.index()] = None;
                self.ready.send.push(Outgoing {
                    to: sender,
                    link: Link::Out { epoch },
                    msg: Message::Compact {
                        snapshot: g.snapshot,
                        below,
                    },
                });
            }
        }
    }

    /// The initiator's compaction notice for completed snapshot `h`.
    fn on_compact(
        &mut self,
        from: BranchId,
        h: SnapshotId,
        below: &[(BranchId, Seq)],
    ) -> Result<(), ProtocolError> {
        if from != self.cfg.initiator || self.is_initiator() {
            return Err(ProtocolError::Unexpected(
                "Compact from a branch that is not the initiator",
            ));
        }
        // The initiator completes a snapshot only with this branch's part of it.
        if h > self.state.parts_done {
            return Err(ProtocolError::SelfBehind(Behind {
                from: self.cfg.me,
                to: from,
                kind: PositionKind::Parts,
                behind: End::Sender,
                store_has: self.state.parts_done.0,
                other_saw: h.0,
            }));
        }
        let mut peers = self.cfg.peers();
        for &(peer, w) in below {
            if Some(peer) != peers.next() {
                return Err(ProtocolError::BadCompact(format!(
                    "channel list out of order at {peer}"
                )));
            }
            let sent = self.state.out[peer.index()].sent;
            if w > sent {
                return Err(ProtocolError::SelfBehind(Behind {
                    from: self.cfg.me,
                    to: peer,
                    kind: PositionKind::Transfers,
                    behind: End::Sender,
                    store_has: sent.0,
                    other_saw: w.0,
                }));
            }
        }
        let missing = peers.next().is_some();
        drop(peers);
        if missing {
            return Err(ProtocolError::BadCompact(format!(
                "{} channels, expected {}",
                below.len(),
                self.cfg.branches - 1
            )));
        }
        // A stale notice (a newer one came first) is valid but changes nothing.
        self.compact(h, below);
        Ok(())
    }

    /// Makes completed snapshot `h` the start of this branch's history: drop the log on each
    /// channel up to `min(receiver's watermark at h, acknowledged)`, and prune snapshots older
    /// than the `snapshots_kept` latest.
    fn compact(&mut self, h: SnapshotId, below: &[(BranchId, Seq)]) {
        if h <= self.state.history_from {
            return;
        }
        self.state.history_from = h;
        for &(peer, w) in below {
            let out = &mut self.state.out[peer.index()];
            let upto = w.min(out.acked);
            if upto > out.compacted {
                out.compacted = upto;
                self.ready.persist.compact.push((peer, upto));
            }
        }
        let keep_from = SnapshotId((h.0 + 1).saturating_sub(self.cfg.snapshots_kept.max(1)));
        if keep_from > self.state.pruned_below {
            self.state.pruned_below = keep_from;
            self.ready.persist.prune_below = Some(keep_from);
        }
        self.dirty = true;
    }
}

/// Internals the scripted core tests (`snapbank::core`'s tests) drive and inspect; only with the
/// `testing` feature, which no production build enables.
#[cfg(feature = "testing")]
impl Branch {
    /// Sends one transfer now, bypassing the pacing of [`Branch::on_transfer_tick`].
    pub fn send_transfer_for_test(&mut self, to: BranchId, amount: Amount) {
        self.send_transfer(to, amount)
    }

    /// Per peer: the unacknowledged transfers `(seq, amount)`, oldest first.
    pub fn unacked_queues(&self) -> &[VecDeque<(Seq, Amount)>] {
        &self.unacked
    }

    /// Parts completed here and not yet acknowledged by the initiator.
    pub fn unsent_parts(&self) -> &VecDeque<LocalPart> {
        &self.unsent_parts
    }

    /// Initiator: parts collected per snapshot still being assembled.
    pub fn collected(&self) -> &BTreeMap<SnapshotId, BTreeMap<BranchId, LocalPart>> {
        &self.collected
    }

    /// The durable state, writable: to set up states no run reaches quickly.
    pub fn state_mut(&mut self) -> &mut DurableState {
        &mut self.state
    }
}
