//! The one consistency checker: every check that no money was lost or created, written once and
//! called by `snapctl audit` (stopped stores), `snapctl audit --live` (what running branches
//! report) and the simulator (after every step).
//!
//! It reads a [`View`] of the cluster (per branch: its current durable state if known, its own
//! parts and what it pruned; the initiator's kept global snapshots) and asks a [`LogSource`] for
//! sums of the senders' transfer logs. Each finding is a typed [`Violation`]:
//! - **snapshots**: each kept global snapshot has one part per branch, correctly labelled, with
//!   one channel record and one cut per peer ([`Malformed`](ViolationKind::Malformed)); it adds
//!   up to the genesis total ([`WrongTotal`](ViolationKind::WrongTotal)); no recorded balance
//!   exceeds that total ([`Negative`](ViolationKind::Negative)); every branch that has not pruned
//!   it holds its own part ([`MissingPart`](ViolationKind::MissingPart)), equal to the
//!   initiator's copy ([`PartDiffers`](ViolationKind::PartDiffers));
//! - **channels**: each channel record `(applied_at_record, until]` closes at the sender's cut,
//!   does not start beyond it ([`AppliedTwiceOrInvented`](ViolationKind::AppliedTwiceOrInvented))
//!   and holds exactly the money and count of the sender's logged transfers of that range
//!   ([`ChannelMismatch`](ViolationKind::ChannelMismatch));
//! - **ledgers**: from genesis to the first kept snapshot, from snapshot to snapshot and from the
//!   latest to now, each branch's money (at a cut: balance plus what was in flight towards it)
//!   is the previous money plus what it received minus what it sent
//!   ([`LedgerMismatch`](ViolationKind::LedgerMismatch), or [`Negative`](ViolationKind::Negative)
//!   when the transfers give less than nothing); its channel positions never go back
//!   ([`WentBack`](ViolationKind::WentBack));
//! - **current state** (when the branches' states are known): no receiver applied more than its
//!   sender sent ([`AppliedTwiceOrInvented`](ViolationKind::AppliedTwiceOrInvented)), no sender
//!   counts as acknowledged what its receiver did not apply ([`Lost`](ViolationKind::Lost)), no
//!   balance exceeds the genesis total, and Σ balances + Σ transfers not yet applied = the genesis
//!   total ([`WrongTotal`](ViolationKind::WrongTotal)).
//!
//! **Compacted is not missing.** A sender's log holds `(compacted, sent]` of each channel, where
//! `compacted = min(receiver's watermark in the latest completed snapshot, acknowledged)`. A range
//! the log holds whole is checked, whatever its age; one it does not hold whole is *compacted*
//! (unchecked, and counted so) if it starts below `compacted`, and
//! [`HistoryMissing`](ViolationKind::HistoryMissing) if it starts at or above it: the log must
//! still hold it. So the latest kept snapshot's channels (which start at the very watermarks
//! compaction stops at) and the ledger from it to now are always checked; older ones as far as
//! the logs still reach. [`Counts`] says how much was checked and how much was compacted.

use crate::core::DurableState;
use crate::snapshot::{GlobalSnapshot, LocalPart};
use crate::store::{BankStore, Identity, Kv, StoreError};
use crate::types::{Amount, BranchId, Seq, SnapshotId};
use crate::wire::RangeSum;
use serde::Serialize;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;

/// What kind of inconsistency a [`Violation`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    /// A sender counts as acknowledged a transfer its receiver did not apply.
    Lost,
    /// A receiver applied (or a channel record starts) beyond what its sender sent.
    AppliedTwiceOrInvented,
    /// A snapshot, or the current state, does not add up to the genesis total.
    WrongTotal,
    /// A balance larger than the bank's total (a negative one that wrapped), or transfers that
    /// give a branch less than nothing.
    Negative,
    /// A branch lacks its part of a kept snapshot it has not pruned.
    MissingPart,
    /// A branch's own part differs from the initiator's copy of it.
    PartDiffers,
    /// A snapshot of the wrong shape: parts, labels, channel lists.
    Malformed,
    /// A channel record disagrees with the sender's cut or with the sender's logged transfers.
    ChannelMismatch,
    /// A branch's money does not follow from its transfers: created or lost there.
    LedgerMismatch,
    /// A branch's channel positions are behind where an earlier snapshot saw them (its store
    /// went back).
    WentBack,
    /// A transfer log lacks entries it must still hold (not compacted), or the history starts at
    /// a snapshot the initiator does not hold.
    HistoryMissing,
}

impl ViolationKind {
    pub const ALL: [ViolationKind; 11] = [
        ViolationKind::Lost,
        ViolationKind::AppliedTwiceOrInvented,
        ViolationKind::WrongTotal,
        ViolationKind::Negative,
        ViolationKind::MissingPart,
        ViolationKind::PartDiffers,
        ViolationKind::Malformed,
        ViolationKind::ChannelMismatch,
        ViolationKind::LedgerMismatch,
        ViolationKind::WentBack,
        ViolationKind::HistoryMissing,
    ];

    /// The name used in JSON (`violation_counts`, `violations_typed[].kind`).
    pub fn as_str(self) -> &'static str {
        match self {
            ViolationKind::Lost => "lost",
            ViolationKind::AppliedTwiceOrInvented => "applied_twice_or_invented",
            ViolationKind::WrongTotal => "wrong_total",
            ViolationKind::Negative => "negative",
            ViolationKind::MissingPart => "missing_part",
            ViolationKind::PartDiffers => "part_differs",
            ViolationKind::Malformed => "malformed",
            ViolationKind::ChannelMismatch => "channel_mismatch",
            ViolationKind::LedgerMismatch => "ledger_mismatch",
            ViolationKind::WentBack => "went_back",
            ViolationKind::HistoryMissing => "history_missing",
        }
    }
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One inconsistency, naming what it is found in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub kind: ViolationKind,
    /// The snapshot it is found in; `None`: the current state (or the history as a whole).
    pub snapshot: Option<SnapshotId>,
    /// The branch it names, if one.
    pub branch: Option<BranchId>,
    /// The channel `(from, to)` it names, if one.
    pub channel: Option<(BranchId, BranchId)>,
    /// What is wrong, naming branches by address.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.snapshot {
            Some(k) => write!(f, "snapshot {k}: {}", self.detail),
            None => f.write_str(&self.detail),
        }
    }
}

/// How much was checked, and how much could not be because the logs no longer hold it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Branches' own parts compared with the initiator's copies.
    pub parts_checked: usize,
    /// Parts a branch pruned (older than its kept snapshots): not compared.
    pub parts_pruned: usize,
    /// Snapshot channel records checked against the senders' logs.
    pub channels_checked: usize,
    /// Snapshot channel records whose transfers compaction dropped from the sender's log.
    pub channels_compacted: usize,
    /// Ledger steps checked: one per branch from genesis or a snapshot to the next snapshot,
    /// and (with current states) from the latest snapshot to now.
    pub ledgers_checked: usize,
    /// Ledger steps that need transfers compaction dropped.
    pub ledgers_compacted: usize,
}

/// The current state's figures of one branch (with current states only).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CurrentBranch {
    pub balance: Amount,
    /// Transfers sent, over all outgoing channels.
    pub sent: u64,
    /// Transfers applied from others.
    pub applied: u64,
    /// Transfers this branch sent that their receivers have not applied yet, and their money.
    pub in_flight: u64,
    pub in_flight_money: u128,
}

/// The current state as a whole (with current states only).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Current {
    /// Σ balances + Σ transfers in flight.
    pub total: u128,
    pub branches: Vec<CurrentBranch>,
}

/// What a check found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Findings {
    pub violations: Vec<Violation>,
    pub counts: Counts,
    /// The latest snapshot any branch's history starts at (the last compaction, or a restore).
    pub history_from: SnapshotId,
    /// The current state's figures, when the branches' states were given.
    pub current: Option<Current>,
}

impl Findings {
    pub fn consistent(&self) -> bool {
        self.violations.is_empty()
    }

    /// The violations as one-line strings.
    pub fn strings(&self) -> Vec<String> {
        self.violations.iter().map(|v| v.to_string()).collect()
    }

    /// How many violations of each kind (kinds with none left out).
    pub fn counts_by_kind(&self) -> BTreeMap<ViolationKind, usize> {
        let mut m = BTreeMap::new();
        for v in &self.violations {
            *m.entry(v.kind).or_insert(0) += 1;
        }
        m
    }

    pub fn of_kind(&self, kind: ViolationKind) -> impl Iterator<Item = &Violation> {
        self.violations.iter().filter(move |v| v.kind == kind)
    }
}

/// A stretch `(after, upto]` of sender `from`'s transfer log to `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogRange {
    pub from: BranchId,
    pub to: BranchId,
    pub after: Seq,
    pub upto: Seq,
}

/// Where the checker reads the senders' transfer logs.
pub trait LogSource {
    /// Count and money of sender `from`'s logged transfers `(after, upto]` to `to`, whether the
    /// log holds all of them (`whole`), and the channel's `compacted` when it was read.
    fn range(&self, r: LogRange) -> Result<RangeSum, StoreError>;
}

/// One branch as the checker sees it.
#[derive(Clone, Debug)]
pub struct BranchView<'a> {
    /// Its current durable state; `None` when it is not known (the live audit): the current
    /// state and the ledger to now are then not checked.
    pub state: Option<&'a DurableState>,
    /// Its own parts (any order; a snapshot without one here is missing or pruned).
    pub parts: &'a [LocalPart],
    /// It pruned the parts older than this.
    pub pruned_below: SnapshotId,
    /// Its history starts at this snapshot.
    pub history_from: SnapshotId,
}

impl<'a> BranchView<'a> {
    /// A branch whose state is known: pruning and history as its state says.
    pub fn stored(state: &'a DurableState, parts: &'a [LocalPart]) -> BranchView<'a> {
        BranchView {
            state: Some(state),
            parts,
            pruned_below: state.pruned_below,
            history_from: state.history_from,
        }
    }
}

/// The cluster as the checker sees it.
#[derive(Clone, Debug)]
pub struct View<'a> {
    /// Branch addresses, in branch order (for the messages).
    pub names: &'a [String],
    /// What each branch held at genesis (the epoch's start), in branch order.
    pub genesis: Vec<Amount>,
    /// The initiator's kept global snapshots, oldest first.
    pub globals: &'a [GlobalSnapshot],
    /// One per branch, in branch order.
    pub branches: Vec<BranchView<'a>>,
}

/// Checks `view` against the logs `logs` reads. Errors are only the log source's (a store that
/// cannot be read); everything inconsistent is a [`Violation`].
pub fn check<L: LogSource + ?Sized>(view: &View<'_>, logs: &L) -> Result<Findings, StoreError> {
    let mut c = Checker::new(view, logs);
    c.run()?;
    Ok(c.out)
}

/// Every log range [`check`] reads for `view`, sorted, each once: what a log source must be
/// able to answer (the live audit asks the branches for exactly these; [`StoreLogs`] indexes
/// them in one pass per channel).
pub fn plan(view: &View<'_>) -> Vec<LogRange> {
    let rec = Recorder::default();
    // The recorder never fails, and the checker asks for the same ranges whatever the answers.
    let _ = check(view, &rec);
    let mut ranges = rec.0.into_inner();
    ranges.sort_unstable();
    ranges.dedup();
    ranges
}

/// Answers every range as compacted (so no violation is worked out) and notes it.
#[derive(Default)]
struct Recorder(RefCell<Vec<LogRange>>);

impl LogSource for Recorder {
    fn range(&self, r: LogRange) -> Result<RangeSum, StoreError> {
        self.0.borrow_mut().push(r);
        Ok(RangeSum {
            count: 0,
            money: 0,
            whole: false,
            compacted: Seq(u64::MAX),
        })
    }
}

/// One branch of a stopped cluster (or of the simulator): its store, its durable state (as the
/// store holds it) and its own parts (as [`BankStore::parts`] returns them).
pub struct StoredBranch<'a, K: Kv> {
    pub store: &'a BankStore<K>,
    pub state: &'a DurableState,
    pub parts: &'a [LocalPart],
}

/// Checks a cluster of stores: every kept snapshot, its channels against the logs, every ledger
/// step to now, and the current state. `branches` in branch order; `globals` the initiator's
/// ([`BankStore::globals`]). Reads each channel's log once.
pub fn check_stored<K: Kv>(
    branches: &[StoredBranch<'_, K>],
    globals: &[GlobalSnapshot],
) -> Result<Findings, StoreError> {
    let Some(first) = branches.first() else {
        return Ok(Findings::default());
    };
    let names = names_of(first.store.identity());
    let view = stored_view(first.store.identity(), &names, branches, globals);
    let stores: Vec<&BankStore<K>> = branches.iter().map(|b| b.store).collect();
    let states: Vec<&DurableState> = branches.iter().map(|b| b.state).collect();
    let logs = StoreLogs::build(&stores, &states, &plan(&view))?;
    check(&view, &logs)
}

/// The checker's view of a cluster of stores (as [`check_stored`] checks it), for a caller with
/// its own [`LogSource`] (the simulator's mirror of the logs).
pub fn stored_view<'a, K: Kv>(
    id: &Identity,
    names: &'a [String],
    branches: &[StoredBranch<'a, K>],
    globals: &'a [GlobalSnapshot],
) -> View<'a> {
    View {
        names,
        genesis: id.genesis_balances(),
        globals,
        branches: branches
            .iter()
            .map(|b| BranchView::stored(b.state, b.parts))
            .collect(),
    }
}

/// Branch addresses for the checker's messages: the identity's, without the initiator's `:S`.
pub fn names_of(id: &Identity) -> Vec<String> {
    names(&id.branches)
}

/// Branch list entries (`IP:PORT`, the initiator's `IP:PORT:S`) as addresses.
pub fn names(entries: &[String]) -> Vec<String> {
    entries
        .iter()
        .map(|b| b.strip_suffix(":S").unwrap_or(b).to_string())
        .collect()
}

/// The transfer logs of a cluster's stores, indexed for a known set of ranges: per channel,
/// prefix sums at the ranges' ends, built in one scan of that channel's log (a long-running
/// cluster's logs may hold millions of entries). A range it was not built for is read from the
/// store.
pub struct StoreLogs<'a, K: Kv> {
    stores: Vec<&'a BankStore<K>>,
    /// `[from][to]`: the channel's `compacted`.
    compacted: Vec<Vec<Seq>>,
    /// `[from][to]`.
    sums: Vec<Vec<ChannelSums>>,
}

/// Sorted boundary seqs of one channel, and (count, money) of its log entries after the first
/// boundary and up to each.
type ChannelSums = (Vec<u64>, Vec<(u64, u128)>);

impl<'a, K: Kv> StoreLogs<'a, K> {
    pub fn build(
        stores: &[&'a BankStore<K>],
        states: &[&DurableState],
        ranges: &[LogRange],
    ) -> Result<StoreLogs<'a, K>, StoreError> {
        let n = stores.len();
        let mut bounds: Vec<Vec<Vec<u64>>> = vec![vec![Vec::new(); n]; n];
        for r in ranges {
            if let Some(b) = bounds
                .get_mut(r.from.index())
                .and_then(|row| row.get_mut(r.to.index()))
            {
                b.push(r.after.0);
                b.push(r.upto.0);
            }
        }
        let mut sums = Vec::with_capacity(n);
        for (i, row) in bounds.into_iter().enumerate() {
            let mut out = Vec::with_capacity(n);
            for (j, mut b) in row.into_iter().enumerate() {
                b.sort_unstable();
                b.dedup();
                let mut cum = Vec::with_capacity(b.len());
                if let (Some(&lo), Some(&hi)) = (b.first(), b.last()) {
                    let (mut count, mut money, mut next) = (0u64, 0u128, 0usize);
                    stores[i].scan_log(BranchId(j as u16), Seq(lo), Seq(hi), &mut |seq, a| {
                        while next < b.len() && b[next] < seq.0 {
                            cum.push((count, money));
                            next += 1;
                        }
                        count += 1;
                        money += a as u128;
                    })?;
                    while cum.len() < b.len() {
                        cum.push((count, money));
                    }
                }
                out.push((b, cum));
            }
            sums.push(out);
        }
        let compacted = states
            .iter()
            .map(|s| s.out.iter().map(|o| o.compacted).collect())
            .collect();
        Ok(StoreLogs {
            stores: stores.to_vec(),
            compacted,
            sums,
        })
    }
}

impl<K: Kv> LogSource for StoreLogs<'_, K> {
    fn range(&self, r: LogRange) -> Result<RangeSum, StoreError> {
        let (i, j) = (r.from.index(), r.to.index());
        let compacted = self
            .compacted
            .get(i)
            .and_then(|row| row.get(j))
            .copied()
            .unwrap_or_default();
        if let Some((bounds, cum)) = self.sums.get(i).and_then(|row| row.get(j)) {
            let at = |s: Seq| bounds.binary_search(&s.0).ok().map(|k| cum[k]);
            if let (Some(a), Some(b)) = (at(r.after), at(r.upto)) {
                if r.upto >= r.after {
                    let count = b.0 - a.0;
                    return Ok(RangeSum {
                        count,
                        money: b.1 - a.1,
                        whole: count == r.upto.0 - r.after.0,
                        compacted,
                    });
                }
            }
        }
        let Some(store) = self.stores.get(i) else {
            return Ok(RangeSum {
                count: 0,
                money: 0,
                whole: false,
                compacted: Seq(u64::MAX),
            });
        };
        let s = store.log_sum(r.to, r.after, r.upto)?;
        Ok(RangeSum {
            count: s.count,
            money: s.money,
            whole: s.dense,
            compacted,
        })
    }
}

/// Where a branch's ledger stands: the money it holds (at a cut: its balance plus what was in
/// flight towards it) and the channel positions that goes with.
#[derive(Clone)]
struct Point {
    money: u128,
    /// Per peer: last seq sent to it.
    sent: Vec<Seq>,
    /// Per peer: last seq applied from it (at a cut: the sender's cut, in-flight delivered).
    applied: Vec<Seq>,
    /// Where it is: `None` genesis, else the snapshot.
    at: Option<SnapshotId>,
}

impl Point {
    fn since(&self) -> String {
        match self.at {
            None => "genesis".to_string(),
            Some(k) => format!("snapshot {k}"),
        }
    }
}

struct Checker<'v, 'a, L: ?Sized> {
    view: &'v View<'a>,
    logs: &'v L,
    n: usize,
    expected: u128,
    out: Findings,
}

fn id(b: usize) -> BranchId {
    BranchId(b as u16)
}

impl<'v, 'a, L: LogSource + ?Sized> Checker<'v, 'a, L> {
    fn new(view: &'v View<'a>, logs: &'v L) -> Self {
        let n = view.branches.len();
        Checker {
            view,
            logs,
            n,
            expected: view.genesis.iter().map(|&g| g as u128).sum(),
            out: Findings::default(),
        }
    }

    fn name(&self, b: usize) -> String {
        self.view
            .names
            .get(b)
            .cloned()
            .unwrap_or_else(|| id(b).to_string())
    }

    fn chan(&self, i: usize, j: usize) -> String {
        format!("{}→{}", self.name(i), self.name(j))
    }

    fn push(
        &mut self,
        kind: ViolationKind,
        snapshot: Option<SnapshotId>,
        branch: Option<usize>,
        channel: Option<(usize, usize)>,
        detail: String,
    ) {
        self.out.violations.push(Violation {
            kind,
            snapshot,
            branch: branch.map(id),
            channel: channel.map(|(i, j)| (id(i), id(j))),
            detail,
        });
    }

    fn range(&self, from: usize, to: usize, after: Seq, upto: Seq) -> Result<RangeSum, StoreError> {
        self.logs.range(LogRange {
            from: id(from),
            to: id(to),
            after,
            upto,
        })
    }

    fn run(&mut self) -> Result<(), StoreError> {
        let n = self.n;
        let states: Option<Vec<&DurableState>> =
            self.view.branches.iter().map(|b| b.state).collect();
        let h = self
            .view
            .branches
            .iter()
            .map(|b| b.history_from)
            .max()
            .unwrap_or_default();
        self.out.history_from = h;
        // Racy while branches run (a newer snapshot may complete meanwhile): stores only.
        if states.is_some() && h.0 > 0 && !self.view.globals.iter().any(|g| g.snapshot == h) {
            self.push(
                ViolationKind::HistoryMissing,
                None,
                None,
                None,
                format!("history starts at snapshot {h}, which the initiator does not hold"),
            );
        }
        let mut base: Vec<Point> = (0..n)
            .map(|b| Point {
                money: self.view.genesis.get(b).copied().unwrap_or_default() as u128,
                sent: vec![Seq(0); n],
                applied: vec![Seq(0); n],
                at: None,
            })
            .collect();
        let own: Vec<BTreeMap<SnapshotId, &LocalPart>> = self
            .view
            .branches
            .iter()
            .map(|b| b.parts.iter().map(|p| (p.snapshot, p)).collect())
            .collect();
        for g in self.view.globals {
            if !self.snapshot(g, &own) {
                continue;
            }
            self.channels(g)?;
            for (b, p) in g.parts.iter().enumerate() {
                let point = Point {
                    money: p.money(),
                    sent: (0..n)
                        .map(|x| p.sent_to(id(x)).unwrap_or_default())
                        .collect(),
                    applied: (0..n)
                        .map(|x| p.channel_from(id(x)).map(|c| c.until).unwrap_or_default())
                        .collect(),
                    at: Some(g.snapshot),
                };
                self.ledger(b, &base[b], &point)?;
                base[b] = point;
            }
        }
        if let Some(states) = states {
            self.current(&states, &base)?;
        }
        Ok(())
    }

    /// Shape, totals and copies of global snapshot `g`. Returns whether its channels and
    /// ledgers can be checked (it is well formed).
    fn snapshot(&mut self, g: &GlobalSnapshot, own: &[BTreeMap<SnapshotId, &LocalPart>]) -> bool {
        let n = self.n;
        let k = Some(g.snapshot);
        if g.parts.len() != n {
            self.push(
                ViolationKind::Malformed,
                k,
                None,
                None,
                format!("has {} parts for {n} branches", g.parts.len()),
            );
            return false;
        }
        let total: u128 = g.parts.iter().map(|p| p.money()).sum();
        if total != g.total || total != self.expected || g.expected_total as u128 != self.expected {
            self.push(
                ViolationKind::WrongTotal,
                k,
                None,
                None,
                format!(
                    "total {total} (recorded {}), expected {}",
                    g.total, self.expected
                ),
            );
        }
        let mut ok = true;
        for (b, gp) in g.parts.iter().enumerate() {
            match own[b].get(&g.snapshot) {
                None if g.snapshot < self.view.branches[b].pruned_below => {
                    self.out.counts.parts_pruned += 1
                }
                None => self.push(
                    ViolationKind::MissingPart,
                    k,
                    Some(b),
                    None,
                    format!("missing at branch {}", self.name(b)),
                ),
                Some(p) if *p != gp => {
                    self.out.counts.parts_checked += 1;
                    self.push(
                        ViolationKind::PartDiffers,
                        k,
                        Some(b),
                        None,
                        format!(
                            "branch {}'s own part differs from the initiator's copy",
                            self.name(b)
                        ),
                    )
                }
                Some(_) => self.out.counts.parts_checked += 1,
            }
            if gp.branch.index() != b || gp.snapshot != g.snapshot {
                self.push(
                    ViolationKind::Malformed,
                    k,
                    Some(b),
                    None,
                    format!(
                        "part {b} is labelled branch {} of snapshot {}",
                        gp.branch, gp.snapshot
                    ),
                );
                ok = false;
            }
            if gp.balance as u128 > self.expected {
                self.push(
                    ViolationKind::Negative,
                    k,
                    Some(b),
                    None,
                    format!(
                        "branch {} recorded balance {}, more than the bank's total {} (a negative balance wrapped)",
                        self.name(b),
                        gp.balance,
                        self.expected
                    ),
                );
            }
            let peers = |x: &usize| *x != b;
            let lacks_cut = (0..n).filter(peers).find(|&x| gp.sent_to(id(x)).is_none());
            let lacks_channel = (0..n)
                .filter(peers)
                .find(|&x| gp.channel_from(id(x)).is_none());
            let stray = gp
                .channels
                .iter()
                .map(|c| c.from)
                .chain(gp.sent.iter().map(|(x, _)| *x))
                .find(|x| x.index() >= n || x.index() == b);
            let shape = if let Some(x) = lacks_cut {
                Some(format!("records no cut of its channel to {}", self.name(x)))
            } else if let Some(x) = lacks_channel {
                Some(format!("records no channel from {}", self.name(x)))
            } else if let Some(x) = stray {
                Some(format!("records a channel with {x}"))
            } else if gp.channels.len() != n - 1 || gp.sent.len() != n - 1 {
                Some(format!(
                    "records {} incoming and {} outgoing channels for {} peers",
                    gp.channels.len(),
                    gp.sent.len(),
                    n - 1
                ))
            } else {
                None
            };
            if let Some(what) = shape {
                self.push(
                    ViolationKind::Malformed,
                    k,
                    Some(b),
                    None,
                    format!("branch {} {what}", self.name(b)),
                );
                ok = false;
            }
        }
        ok
    }

    /// Each channel record of `g` against the sender's cut and logged transfers.
    fn channels(&mut self, g: &GlobalSnapshot) -> Result<(), StoreError> {
        let k = Some(g.snapshot);
        for (j, part) in g.parts.iter().enumerate() {
            for ch in &part.channels {
                let i = ch.from.index();
                let chan = self.chan(i, j);
                let at = Some((i, j));
                let cut = g.parts[i].sent_to(id(j)).unwrap_or_default();
                let (a, u) = (ch.applied_at_record, ch.until);
                if cut != u {
                    self.out.counts.channels_checked += 1;
                    self.push(
                        ViolationKind::ChannelMismatch,
                        k,
                        None,
                        at,
                        format!("channel {chan} closed at seq {u} but the sender recorded {cut}"),
                    );
                    continue;
                }
                if a > u {
                    self.out.counts.channels_checked += 1;
                    self.push(
                        ViolationKind::AppliedTwiceOrInvented,
                        k,
                        None,
                        at,
                        format!("channel {chan}: receiver had applied seq {a} beyond the sender's {u} (applied twice or invented)"),
                    );
                    continue;
                }
                let r = self.range(i, j, a, u)?;
                if r.whole {
                    self.out.counts.channels_checked += 1;
                    if r.money != ch.money as u128 || r.count != ch.count {
                        self.push(
                            ViolationKind::ChannelMismatch,
                            k,
                            None,
                            at,
                            format!(
                                "channel {chan} recorded {} in {} transfers, but seqs {}..={u} carry {} in {}",
                                ch.money, ch.count, a.0 + 1, r.money, r.count
                            ),
                        );
                    }
                } else if a >= r.compacted {
                    self.out.counts.channels_checked += 1;
                    self.push(
                        ViolationKind::HistoryMissing,
                        k,
                        None,
                        at,
                        format!(
                            "channel {chan}: sender's log lacks transfers {}..={u} (it compacted only up to {})",
                            a.0 + 1,
                            r.compacted
                        ),
                    );
                } else {
                    self.out.counts.channels_compacted += 1;
                }
            }
        }
        Ok(())
    }

    /// Branch `b`'s money at `to` must be its money at `from` plus what it received minus what
    /// it sent in between.
    fn ledger(&mut self, b: usize, from: &Point, to: &Point) -> Result<(), StoreError> {
        let k = to.at;
        for x in (0..self.n).filter(|x| *x != b) {
            let back = if to.sent[x] < from.sent[x] {
                Some(("sent to", from.sent[x], to.sent[x]))
            } else if to.applied[x] < from.applied[x] {
                Some(("applied from", from.applied[x], to.applied[x]))
            } else {
                None
            };
            if let Some((what, was, is)) = back {
                self.out.counts.ledgers_checked += 1;
                let now = match k {
                    None => "now".to_string(),
                    Some(k) => format!("at snapshot {k}"),
                };
                self.push(
                    ViolationKind::WentBack,
                    k,
                    Some(b),
                    Some(if what == "sent to" { (b, x) } else { (x, b) }),
                    format!(
                        "branch {} {what} {} up to seq {was} at {}, but {now} only up to {is} (its store went back?)",
                        self.name(b),
                        self.name(x),
                        from.since()
                    ),
                );
                return Ok(());
            }
        }
        // Every range first, then the verdict: the ranges asked never depend on the answers.
        let mut money: i128 = from.money as i128;
        let mut missing: Option<(usize, usize, Seq, Seq)> = None;
        let mut compacted = false;
        for x in (0..self.n).filter(|x| *x != b) {
            let out = self.range(b, x, from.sent[x], to.sent[x])?;
            let inc = self.range(x, b, from.applied[x], to.applied[x])?;
            for (r, (s, t, a, u)) in [
                (out, (b, x, from.sent[x], to.sent[x])),
                (inc, (x, b, from.applied[x], to.applied[x])),
            ] {
                if !r.whole {
                    if a >= r.compacted {
                        missing.get_or_insert((s, t, a, u));
                    } else {
                        compacted = true;
                    }
                }
            }
            money += inc.money as i128 - out.money as i128;
        }
        let since = from.since();
        let what = match k {
            None => format!("current state: branch {}", self.name(b)),
            Some(_) => format!("branch {}", self.name(b)),
        };
        if let Some((s, t, a, u)) = missing {
            self.out.counts.ledgers_checked += 1;
            self.push(
                ViolationKind::HistoryMissing,
                k,
                Some(b),
                Some((s, t)),
                format!(
                    "{what}'s ledger since {since} is unchecked: the log of {} lacks transfers {}..={u}",
                    self.chan(s, t),
                    a.0 + 1
                ),
            );
            return Ok(());
        }
        if compacted {
            self.out.counts.ledgers_compacted += 1;
            return Ok(());
        }
        self.out.counts.ledgers_checked += 1;
        let held = to.money as i128;
        if money < 0 {
            self.push(
                ViolationKind::Negative,
                k,
                Some(b),
                None,
                format!("{what}'s transfers since {since} give {money}: it sent more than it held"),
            );
        } else if money != held {
            self.push(
                ViolationKind::LedgerMismatch,
                k,
                Some(b),
                None,
                format!(
                    "{what} holds {held}, but its transfers since {since} give {money} ({} by {})",
                    if held > money {
                        "money created"
                    } else {
                        "money lost"
                    },
                    (held - money).abs()
                ),
            );
        }
        Ok(())
    }

    /// The current state: channel order, what is in flight, conservation, and each branch's
    /// ledger from the latest snapshot (or genesis) to now.
    fn current(&mut self, states: &[&DurableState], base: &[Point]) -> Result<(), StoreError> {
        let n = self.n;
        let mut cur = Current {
            total: 0,
            branches: Vec::with_capacity(n),
        };
        for (i, st) in states.iter().enumerate() {
            let mut fig = CurrentBranch {
                balance: st.balance,
                sent: st.out.iter().map(|o| o.sent.0).sum(),
                applied: (0..n)
                    .filter(|&j| j != i)
                    .filter_map(|j| st.inc.get(j))
                    .map(|c| c.applied.0)
                    .sum(),
                ..CurrentBranch::default()
            };
            if st.balance as u128 > self.expected {
                self.push(
                    ViolationKind::Negative,
                    None,
                    Some(i),
                    None,
                    format!(
                        "current state: branch {} holds {}, more than the bank's total {} (a negative balance wrapped)",
                        self.name(i),
                        st.balance,
                        self.expected
                    ),
                );
            }
            cur.total += st.balance as u128;
            for (j, receiver) in states.iter().enumerate().filter(|(j, _)| *j != i) {
                let (Some(o), Some(inc)) = (st.out.get(j), receiver.inc.get(i)) else {
                    continue;
                };
                let (s, w) = (o.sent, inc.applied);
                let chan = self.chan(i, j);
                if w > s {
                    self.push(
                        ViolationKind::AppliedTwiceOrInvented,
                        None,
                        None,
                        Some((i, j)),
                        format!("channel {chan}: receiver applied up to seq {w} but the sender sent only {s} (applied twice or invented)"),
                    );
                    continue;
                }
                if o.acked > w {
                    self.push(
                        ViolationKind::Lost,
                        None,
                        None,
                        Some((i, j)),
                        format!(
                            "channel {chan}: sender counts seq {} as acknowledged but the receiver applied only {w} (lost)",
                            o.acked
                        ),
                    );
                }
                let r = self.range(i, j, w, s)?;
                if !r.whole && w >= r.compacted {
                    self.push(
                        ViolationKind::HistoryMissing,
                        None,
                        None,
                        Some((i, j)),
                        format!(
                            "channel {chan}: sender's log lacks transfers not yet applied ({}..={s})",
                            w.0 + 1
                        ),
                    );
                }
                fig.in_flight += r.count;
                fig.in_flight_money += r.money;
            }
            cur.total += fig.in_flight_money;
            cur.branches.push(fig);
        }
        for (b, st) in states.iter().enumerate() {
            let now = Point {
                money: st.balance as u128,
                sent: (0..n)
                    .map(|x| st.out.get(x).map(|o| o.sent).unwrap_or_default())
                    .collect(),
                applied: (0..n)
                    .map(|x| st.inc.get(x).map(|c| c.applied).unwrap_or_default())
                    .collect(),
                at: None,
            };
            self.ledger(b, &base[b], &now)?;
        }
        if cur.total != self.expected {
            self.push(
                ViolationKind::WrongTotal,
                None,
                None,
                None,
                format!(
                    "current state: Σ balances + Σ transfers in flight = {}, expected {}",
                    cur.total, self.expected
                ),
            );
        }
        self.out.current = Some(cur);
        Ok(())
    }
}

/// A small in-memory bank for tests: real cores over real stores (any [`Kv`]), every link up,
/// messages delivered one at a time from a random non-empty FIFO queue per ordered pair. Stores
/// compact on every commit, so what compaction drops is gone at once.
#[cfg(test)]
pub(crate) mod testbank {
    use crate::core::{Branch, CoreConfig};
    use crate::snapshot::{GlobalSnapshot, LocalPart};
    use crate::store::{BankStore, Identity, Kv};
    use crate::types::SeededRng as StdRng;
    use crate::types::{Amount, BranchId, Micros};
    use crate::wire::Message;
    use rand::{Rng, SeedableRng};
    use std::collections::{BTreeMap, VecDeque};

    pub const INITIAL: Amount = 1000;

    pub fn config(n: usize, me: usize, kept: u64) -> CoreConfig {
        CoreConfig {
            me: BranchId(me as u16),
            branches: n as u16,
            initiator: BranchId(0),
            initial_balance: INITIAL,
            epoch_total: None,
            amount_max: 40,
            unacked_per_channel_max: 64,
            live_snapshots_max: 4,
            snapshots_kept: kept,
            timing: Default::default(),
            seed: 7 + me as u64,
        }
    }

    pub fn identity(n: usize, me: usize) -> Identity {
        let entries: Vec<String> = (0..n)
            .map(|i| format!("127.0.0.1:{}{}", 7000 + i, if i == 0 { ":S" } else { "" }))
            .collect();
        Identity {
            cluster_id: crate::store::cluster_id(&entries, INITIAL),
            branches: entries,
            me: BranchId(me as u16),
            initial_balance: INITIAL,
            epoch: None,
        }
    }

    pub struct TestBank<K: Kv> {
        pub cores: Vec<Branch>,
        pub stores: Vec<BankStore<K>>,
        queues: BTreeMap<(usize, usize), VecDeque<Message>>,
        now: Micros,
        rng: StdRng,
    }

    impl<K: Kv> TestBank<K> {
        pub fn new(mut stores: Vec<BankStore<K>>, kept: u64, seed: u64) -> TestBank<K> {
            let n = stores.len();
            let mut cores = Vec::with_capacity(n);
            for (me, s) in stores.iter_mut().enumerate() {
                s.compact_on_every_commit();
                let cfg = config(n, me, kept);
                cores.push(Branch::new(cfg.clone(), s.recover(&cfg).expect("recover")));
            }
            let mut bank = TestBank {
                cores,
                stores,
                queues: BTreeMap::new(),
                now: 1_000_000,
                rng: StdRng::seed_from_u64(seed),
            };
            for i in 0..n {
                for p in (0..n).filter(|p| *p != i) {
                    bank.cores[i].on_link_up(BranchId(p as u16), 1);
                    bank.cores[i].on_inbound_up(BranchId(p as u16));
                }
                bank.step(i);
            }
            bank
        }

        /// The contract: persist the step, then send its messages.
        fn step(&mut self, i: usize) {
            let ready = self.cores[i].take_ready();
            self.stores[i].commit(&ready.persist).expect("commit");
            for out in ready.send {
                self.queues
                    .entry((i, out.to.index()))
                    .or_default()
                    .push_back(out.msg);
            }
        }

        /// Delivers one message from a random non-empty queue; false when all are empty.
        pub fn deliver_one(&mut self) -> bool {
            let busy: Vec<(usize, usize)> = self
                .queues
                .iter()
                .filter(|(_, q)| !q.is_empty())
                .map(|(k, _)| *k)
                .collect();
            if busy.is_empty() {
                return false;
            }
            let (from, to) = busy[self.rng.gen_range(0..busy.len())];
            let msg = self
                .queues
                .get_mut(&(from, to))
                .and_then(|q| q.pop_front())
                .expect("non-empty");
            self.now += 10;
            self.cores[to]
                .on_message(BranchId(from as u16), msg, self.now)
                .expect("protocol");
            self.step(to);
            true
        }

        /// `steps` random actions: transfers, deliveries, and now and then a snapshot.
        pub fn run(&mut self, steps: usize) {
            let n = self.cores.len();
            for _ in 0..steps {
                self.now += 100;
                match self.rng.gen_range(0..100) {
                    0..=44 => {
                        let i = self.rng.gen_range(0..n);
                        self.cores[i].on_transfer_tick();
                        self.step(i);
                    }
                    45..=95 => {
                        self.deliver_one();
                    }
                    _ => {
                        let now = self.now;
                        self.cores[0].on_snapshot_tick(now);
                        self.step(0);
                    }
                }
            }
        }

        pub fn globals(&self) -> Vec<GlobalSnapshot> {
            self.stores[0].globals().expect("globals")
        }

        pub fn parts(&self) -> Vec<Vec<LocalPart>> {
            self.stores
                .iter()
                .map(|s| s.parts().expect("parts"))
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testbank::{identity, TestBank, INITIAL};
    use super::*;
    use crate::core::WriteBatch;
    use crate::store::{MemKv, MemStore};

    const N: usize = 3;

    /// A 3-branch bank keeping 3 snapshots, after several snapshots (so the logs are compacted
    /// and old snapshots pruned), with transfers and markers still in flight.
    fn bank() -> TestBank<MemKv> {
        let stores = (0..N)
            .map(|me| MemStore::new_mem(&identity(N, me)))
            .collect();
        let mut bank = TestBank::new(stores, 3, 11);
        bank.run(1500);
        bank
    }

    /// What the checker reads of a bank, to tamper with before checking.
    struct Read {
        states: Vec<DurableState>,
        parts: Vec<Vec<LocalPart>>,
        globals: Vec<GlobalSnapshot>,
    }

    fn read(bank: &TestBank<MemKv>) -> Read {
        Read {
            states: bank
                .stores
                .iter()
                .map(|s| s.state().expect("state").expect("committed"))
                .collect(),
            parts: bank.parts(),
            globals: bank.globals(),
        }
    }

    fn check_read(bank: &TestBank<MemKv>, r: &Read) -> Findings {
        let branches: Vec<StoredBranch<'_, MemKv>> = (0..N)
            .map(|b| StoredBranch {
                store: &bank.stores[b],
                state: &r.states[b],
                parts: &r.parts[b],
            })
            .collect();
        check_stored(&branches, &r.globals).expect("check")
    }

    fn kinds(f: &Findings) -> Vec<ViolationKind> {
        let mut k: Vec<ViolationKind> = f.violations.iter().map(|v| v.kind).collect();
        k.dedup();
        k
    }

    /// The latest kept snapshot's channel record that carries the most transfers, as
    /// `(receiver, index in its channels)`.
    fn busiest_channel(g: &GlobalSnapshot) -> (usize, usize) {
        let mut best = (0, 0, 0);
        for (j, p) in g.parts.iter().enumerate() {
            for (c, ch) in p.channels.iter().enumerate() {
                if ch.count >= best.2 {
                    best = (j, c, ch.count);
                }
            }
        }
        assert!(best.2 > 0, "the fixture has money in flight at the cut");
        (best.0, best.1)
    }

    #[test]
    fn a_running_bank_is_consistent_and_its_latest_snapshot_is_checked_against_the_logs() {
        let bank = bank();
        let r = read(&bank);
        let g = r.globals.last().expect("snapshots completed");
        assert!(g.snapshot.0 > 3, "several snapshots, {}", g.snapshot);
        assert_eq!(r.globals.len(), 3, "pruned to 3");
        assert_eq!(
            r.states[0].history_from, g.snapshot,
            "compacted from the latest"
        );
        assert!(r
            .states
            .iter()
            .any(|s| s.out.iter().any(|o| o.compacted.0 > 0)));
        busiest_channel(g);
        let f = check_read(&bank, &r);
        assert!(f.consistent(), "{:#?}", f.violations);
        let c = f.counts;
        // Every channel record of the latest snapshot is in the logs, and so is every ledger
        // step from it to now.
        assert!(c.channels_checked >= N * (N - 1), "{c:?}");
        assert!(c.ledgers_checked >= N, "{c:?}");
        assert_eq!(c.parts_checked, 3 * N, "{c:?}");
        assert_eq!(
            c.channels_checked + c.channels_compacted,
            3 * N * (N - 1),
            "{c:?}"
        );
        assert_eq!(c.ledgers_checked + c.ledgers_compacted, 4 * N, "{c:?}");
        let cur = f.current.expect("current state");
        assert_eq!(cur.total, (N as u128) * INITIAL as u128);
        assert_eq!(f.history_from, g.snapshot);
    }

    #[test]
    fn after_every_step_of_a_running_bank_the_durable_state_is_consistent() {
        // As the simulator calls it: each branch's durable state, store and parts, and the
        // initiator's globals, after every step; nothing is reported mid-run.
        let n = 4;
        let stores = (0..n)
            .map(|me| MemStore::new_mem(&identity(n, me)))
            .collect();
        let mut bank = TestBank::new(stores, 2, 3);
        let mut checked = 0;
        for step in 0..1200 {
            bank.run(1);
            let states: Vec<DurableState> = bank
                .stores
                .iter()
                .map(|s| {
                    s.state()
                        .expect("state")
                        .unwrap_or_else(|| DurableState::genesis(n, INITIAL))
                })
                .collect();
            let parts = bank.parts();
            let globals = bank.globals();
            let branches: Vec<StoredBranch<'_, MemKv>> = (0..n)
                .map(|b| StoredBranch {
                    store: &bank.stores[b],
                    state: &states[b],
                    parts: &parts[b],
                })
                .collect();
            let f = check_stored(&branches, &globals).expect("check");
            assert!(f.consistent(), "step {step}: {:#?}", f.violations);
            checked += f.counts.channels_checked;
        }
        assert!(bank.globals().len() == 2 && checked > 0);
    }

    #[test]
    fn a_corrupted_channel_record_in_the_latest_kept_snapshot_is_reported() {
        let mut bank = bank();
        let mut g = bank.globals().pop().expect("a snapshot");
        let (j, c) = busiest_channel(&g);
        // The receiver recorded one unit too many in flight and one too few in its balance: the
        // total, and its own copy, agree; only the sender's log says otherwise.
        let p = &mut g.parts[j];
        p.channels[c].money += 1;
        p.balance -= 1;
        let tampered = p.clone();
        let i = tampered.channels[c].from.index();
        bank.stores[0]
            .commit(&WriteBatch {
                globals: vec![g.clone()],
                ..WriteBatch::default()
            })
            .expect("commit");
        bank.stores[j]
            .commit(&WriteBatch {
                parts: vec![tampered],
                ..WriteBatch::default()
            })
            .expect("commit");
        let f = check_read(&bank, &read(&bank));
        assert_eq!(kinds(&f), vec![ViolationKind::ChannelMismatch], "{f:#?}");
        let v = &f.violations[0];
        assert_eq!(v.snapshot, Some(g.snapshot));
        assert_eq!(v.channel, Some((id(i), id(j))));
        let line = v.to_string();
        assert!(
            line.starts_with(&format!(
                "snapshot {}: channel 127.0.0.1:{}→127.0.0.1:{}",
                g.snapshot,
                7000 + i,
                7000 + j
            )),
            "{line}"
        );
    }

    #[test]
    fn each_kind_of_violation_is_found_and_named() {
        let bank = bank();
        let clean = read(&bank);
        let g = clean.globals.last().expect("a snapshot").clone();
        let k = Some(g.snapshot);
        let latest = clean.globals.len() - 1;
        let seen = RefCell::new(std::collections::BTreeSet::new());
        let case = |what: &str, tamper: &dyn Fn(&mut Read)| -> Findings {
            let mut r = read(&bank);
            tamper(&mut r);
            let f = check_read(&bank, &r);
            assert!(!f.consistent(), "{what}: found nothing");
            seen.borrow_mut()
                .extend(f.violations.iter().map(|v| v.kind));
            f
        };
        let has = |f: &Findings,
                   kind: ViolationKind,
                   snapshot: Option<SnapshotId>,
                   branch: Option<usize>,
                   channel: Option<(usize, usize)>| {
            assert!(
                f.violations.iter().any(|v| v.kind == kind
                    && v.snapshot == snapshot
                    && v.branch == branch.map(id)
                    && v.channel == channel.map(|(i, j)| (id(i), id(j)))),
                "{kind} at {snapshot:?} {branch:?} {channel:?} not in {:#?}",
                f.violations
            );
        };

        // Lost: the sender counts as acknowledged what the receiver did not apply.
        let f = case("lost", &|r| {
            let w = r.states[2].inc[1].applied;
            r.states[1].out[2].acked = w.next();
            r.states[1].out[2].sent = r.states[1].out[2].sent.max(w.next());
        });
        has(&f, ViolationKind::Lost, None, None, Some((1, 2)));

        // Applied twice or invented: the receiver applied beyond what was sent.
        let f = case("applied twice", &|r| {
            r.states[0].inc[2].applied = r.states[2].out[0].sent.next()
        });
        has(
            &f,
            ViolationKind::AppliedTwiceOrInvented,
            None,
            None,
            Some((2, 0)),
        );
        let f = case("recorded beyond the cut", &|r| {
            let g = &mut r.globals[latest];
            let c = g.parts[1].channels.iter_mut().find(|c| c.from == id(0));
            let c = c.expect("channel from 0");
            c.applied_at_record = c.until.next();
        });
        has(
            &f,
            ViolationKind::AppliedTwiceOrInvented,
            k,
            None,
            Some((0, 1)),
        );

        // Wrong total: a snapshot's recorded total, and the current state's.
        let f = case("snapshot total", &|r| r.globals[latest].total += 1);
        has(&f, ViolationKind::WrongTotal, k, None, None);
        let f = case("current total", &|r| r.states[1].balance += 7);
        has(&f, ViolationKind::WrongTotal, None, None, None);
        // ... which is also money created at that branch, by its ledger.
        has(&f, ViolationKind::LedgerMismatch, None, Some(1), None);
        assert!(f
            .strings()
            .iter()
            .any(|s| s.contains("127.0.0.1:7001") && s.contains("money created by 7")));

        // Negative: a balance that wrapped below zero.
        let f = case("negative", &|r| r.states[2].balance = u64::MAX - 3);
        has(&f, ViolationKind::Negative, None, Some(2), None);
        let f = case("negative at a cut", &|r| {
            r.globals[latest].parts[2].balance = u64::MAX - 3
        });
        has(&f, ViolationKind::Negative, k, Some(2), None);

        // Missing part, part differs (a branch's own copy against the initiator's).
        let f = case("missing part", &|r| {
            r.parts[1].retain(|p| p.snapshot != g.snapshot)
        });
        has(&f, ViolationKind::MissingPart, k, Some(1), None);
        let f = case("part differs", &|r| {
            if let Some(p) = r.parts[2].iter_mut().find(|p| p.snapshot == g.snapshot) {
                p.recorded_at += 1;
            }
        });
        has(&f, ViolationKind::PartDiffers, k, Some(2), None);

        // Malformed: a part missing from the global, a part under another branch's label.
        let f = case("too few parts", &|r| {
            r.globals[latest].parts.pop();
        });
        has(&f, ViolationKind::Malformed, k, None, None);
        let f = case("mislabelled part", &|r| {
            r.globals[latest].parts[1].branch = id(2)
        });
        has(&f, ViolationKind::Malformed, k, Some(1), None);
        let f = case("channel list", &|r| {
            r.globals[latest].parts[1].channels.pop();
        });
        has(&f, ViolationKind::Malformed, k, Some(1), None);

        // Channel mismatch: a record that closes elsewhere than the sender's cut.
        let f = case("channel cut", &|r| {
            let g = &mut r.globals[latest];
            let c = g.parts[2].channels.iter_mut().find(|c| c.from == id(1));
            c.expect("channel from 1").until.0 += 1;
        });
        has(&f, ViolationKind::ChannelMismatch, k, None, Some((1, 2)));

        // Ledger mismatch at a cut: a recorded balance its transfers do not give (the total is
        // kept by moving the unit to another branch). The step before the cut may need
        // compacted transfers; the one from it to now is always in the logs.
        let f = case("ledger at a cut", &|r| {
            let g = &mut r.globals[latest];
            g.parts[1].balance += 1;
            g.parts[2].balance -= 1;
        });
        has(&f, ViolationKind::LedgerMismatch, None, Some(1), None);
        has(&f, ViolationKind::LedgerMismatch, None, Some(2), None);
        assert!(f.strings().iter().any(|s| s.contains("127.0.0.1:7002")
            && s.contains(&format!("since snapshot {}", g.snapshot))
            && s.contains("money created by 1")));

        // Went back: a branch's store behind the latest snapshot.
        let f = case("went back", &|r| {
            let cut = r.globals[latest].parts[1]
                .sent_to(id(0))
                .unwrap_or_default();
            assert!(cut.0 > 0);
            r.states[1].out[0].sent = Seq(cut.0 - 1);
            r.states[1].out[0].acked = r.states[1].out[0].acked.min(Seq(cut.0 - 1));
        });
        has(&f, ViolationKind::WentBack, None, Some(1), Some((1, 0)));

        // History missing: the history starts at a snapshot the initiator does not hold.
        let f = case("history", &|r| r.states[2].history_from = SnapshotId(999));
        has(&f, ViolationKind::HistoryMissing, None, None, None);

        // Every kind was produced (and the clean bank has none).
        assert!(check_read(&bank, &clean).consistent());
        let seen: Vec<ViolationKind> = seen.into_inner().into_iter().collect();
        assert_eq!(seen, ViolationKind::ALL.to_vec());
    }

    #[test]
    fn a_log_that_lacks_what_it_must_hold_is_missing_and_what_was_compacted_is_not() {
        let mut bank = bank();
        let r = read(&bank);
        let g = r.globals.last().expect("a snapshot").clone();
        let (j, c) = busiest_channel(&g);
        let ch = g.parts[j].channels[c].clone();
        let i = ch.from.index();
        // Drop the sender's log up to its end behind the state's back: the latest snapshot's
        // channel (above `compacted`) is gone, which the log had to keep.
        let sent = r.states[i].out[j].sent;
        bank.stores[i]
            .commit(&WriteBatch {
                compact: vec![(id(j), sent)],
                ..WriteBatch::default()
            })
            .expect("commit");
        let missing = check_read(&bank, &read(&bank));
        assert!(
            missing
                .of_kind(ViolationKind::HistoryMissing)
                .any(|v| v.snapshot == Some(g.snapshot) && v.channel == Some((id(i), id(j)))),
            "{missing:#?}"
        );
        // The same gap under a state that says it compacted that far is compacted: unchecked,
        // counted, no violation of the snapshot's channel.
        let mut r = read(&bank);
        r.states[i].out[j].compacted = sent;
        let f = check_read(&bank, &r);
        assert!(
            !f.violations.iter().any(|v| v.snapshot.is_some()),
            "{:#?}",
            f.violations
        );
        assert!(f.counts.channels_compacted > missing.counts.channels_compacted);
    }

    /// Records the ranges a check reads.
    struct Tap<'a, L: LogSource>(&'a L, RefCell<Vec<LogRange>>);

    impl<L: LogSource> LogSource for Tap<'_, L> {
        fn range(&self, r: LogRange) -> Result<RangeSum, StoreError> {
            self.1.borrow_mut().push(r);
            self.0.range(r)
        }
    }

    #[test]
    fn the_plan_is_exactly_what_the_check_reads_and_each_log_is_read_once() {
        let bank = bank();
        let r = read(&bank);
        let names: Vec<String> = (0..N).map(|b| format!("b{b}")).collect();
        let view = View {
            names: &names,
            genesis: vec![INITIAL; N],
            globals: &r.globals,
            branches: (0..N)
                .map(|b| BranchView::stored(&r.states[b], &r.parts[b]))
                .collect(),
        };
        let planned = plan(&view);
        let stores: Vec<&MemStore> = bank.stores.iter().collect();
        let states: Vec<&DurableState> = r.states.iter().collect();
        let logs = StoreLogs::build(&stores, &states, &planned).expect("index");
        let tap = Tap(&logs, RefCell::new(Vec::new()));
        let f = check(&view, &tap).expect("check");
        assert!(f.consistent(), "{:#?}", f.violations);
        let mut read = tap.1.into_inner();
        read.sort_unstable();
        read.dedup();
        assert_eq!(read, planned);
        // Every planned range is answered from the index, equal to the store's own sum.
        for q in &planned {
            let a = logs.range(*q).expect("indexed");
            let s = bank.stores[q.from.index()]
                .log_sum(q.to, q.after, q.upto)
                .expect("sum");
            assert_eq!(
                (a.count, a.money, a.whole),
                (s.count, s.money, s.dense),
                "{q:?}"
            );
        }
    }

    #[test]
    fn a_view_with_nothing_in_the_logs_checks_nothing_and_says_so_in_its_counts() {
        // The live audit's view: no states; every range answered as compacted.
        let bank = bank();
        let r = read(&bank);
        let names: Vec<String> = (0..N).map(|b| format!("b{b}")).collect();
        let view = View {
            names: &names,
            genesis: vec![INITIAL; N],
            globals: &r.globals,
            branches: (0..N)
                .map(|b| BranchView {
                    state: None,
                    parts: &r.parts[b],
                    pruned_below: r.states[b].pruned_below,
                    history_from: r.states[b].history_from,
                })
                .collect(),
        };
        let f = check(&view, &Recorder::default()).expect("check");
        assert!(f.consistent());
        assert_eq!(f.counts.channels_checked + f.counts.ledgers_checked, 0);
        assert_eq!(f.counts.channels_compacted, 3 * N * (N - 1));
        assert!(f.current.is_none());
        // Answered by the stores, the latest snapshot's channels are all checked.
        let stores: Vec<&MemStore> = bank.stores.iter().collect();
        let states: Vec<&DurableState> = r.states.iter().collect();
        let logs = StoreLogs::build(&stores, &states, &plan(&view)).expect("index");
        let f = check(&view, &logs).expect("check");
        assert!(f.consistent(), "{:#?}", f.violations);
        assert!(f.counts.channels_checked >= N * (N - 1));
    }
}
