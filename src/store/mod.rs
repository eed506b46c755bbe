//! Durable state of one branch: one key-value tree, values in CBOR.
//!
//! The key layout (schema v4, see `migrations/0004_epochs.md`) keeps every write of a step
//! in one tree so a whole [`WriteBatch`] is applied atomically and flushed once (group commit):
//!
//! | key                          | value                          |
//! |------------------------------|--------------------------------|
//! | `m:schema`                   | schema version (u32)           |
//! | `m:identity`                 | [`Identity`]                   |
//! | `m:starts`                   | times `bank` started a branch on this store (u64); absent: 0 |
//! | `m:start` n(u64 BE)          | when start `n` (0: the first) happened, Unix µs (u64); written with `m:starts`, the latest [`START_RECORDS_MAX`] kept; absent in stores started only by older builds |
//! | `m:restoring`                | while `snapctl restore` rewrites the cluster: the snapshot it restores (u64); no branch starts on the store |
//! | `m:retired`                  | set by `snapctl reshape` on every store of the epoch it ended: the epoch that replaced it (u64); no branch starts on the store, the audit still reads it |
//! | `s`                          | [`DurableState`]               |
//! | `r` peer(u16 BE) first(u64 BE) | a run of outgoing transfers `first, first+1, …`: their amounts; compacted once acknowledged and before the latest completed snapshot's cut |
//! | `p` snapshot(u64 BE)         | this branch's [`LocalPart`] (the latest `--keep-snapshots`) |
//! | `c` snapshot(u64 BE) branch(u16 BE) | initiator: a collected part |
//! | `g` snapshot(u64 BE)         | initiator: a [`GlobalSnapshot`] (the latest `--keep-snapshots`) |
//!
//! [`BankStore`] holds the layout over any [`Kv`]: [`SledKv`] on disk, [`MemKv`] in memory (its
//! twin for tests and the simulator: same keys, same encoding, same checks).

pub mod epoch;
mod kv;
pub mod migrate;

pub use kv::{describe_io, Kv, KvError, MemKv, Op, SledKv};

use crate::core::{CoreConfig, DurableState, Recovered, WriteBatch};
use crate::hosts::HostList;
use crate::snapshot::{GlobalSnapshot, LocalPart};
use crate::types::{Amount, BranchId, Seq, SnapshotId};
use crate::wire::fnv1a;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = 4;

/// Most transfers in one run value (a step's transfers to one peer form one run, split at this).
pub const RUN_TRANSFERS_MAX: usize = 4096;

pub(crate) const KEY_SCHEMA: &[u8] = b"m:schema";
/// Present while an upgrade is under way: the schema version it upgrades from.
pub(crate) const KEY_UPGRADING: &[u8] = b"m:upgrading";
const KEY_IDENTITY: &[u8] = b"m:identity";
/// How many times `bank` started a branch on this store (u64; absent in a store never started).
const KEY_STARTS: &[u8] = b"m:starts";
/// Prefix of the per-start records: `m:start` + start number (u64 BE) → Unix µs (u64).
/// `m:starts` sorts among them (`s` is 0x73); [`BankStore::starts`] skips it by its length.
const KEY_START_PREFIX: &[u8] = b"m:start";
/// Start records kept per store (the latest): a branch restarting in a loop does not grow its
/// store without bound.
pub const START_RECORDS_MAX: u64 = 4096;
/// Present while `snapctl restore` rewrites the cluster: the snapshot it restores (u64). No
/// branch starts on a store that has it (see `crate::restore`).
const KEY_RESTORING: &[u8] = b"m:restoring";
/// Set by `snapctl reshape` on the stores of the epoch it ended: the epoch that replaced them
/// (u64). No branch starts on such a store (see `crate::reshape`).
const KEY_RETIRED: &[u8] = b"m:retired";
pub(crate) const KEY_STATE: &[u8] = b"s";

/// Which cluster and which branch a store belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Stable hash of the branch list and initial balance; also checked in every handshake.
    pub cluster_id: u64,
    /// The host.list entries, canonical, in order.
    pub branches: Vec<String>,
    pub me: BranchId,
    /// Epoch 0: what every branch started with. A reshaped store keeps its epoch 0's value
    /// (the genesis balances are [`Identity::epoch`]'s).
    pub initial_balance: Amount,
    /// `None`: epoch 0, made from `host.list` and `--initial-balance`. Else the epoch
    /// `snapctl reshape` made (its `cluster_id` is [`epoch::epoch_cluster_id`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<epoch::Epoch>,
}

impl Identity {
    pub fn new(hosts: &HostList, me: BranchId, initial_balance: Amount) -> Identity {
        let branches = hosts.canonical();
        Identity {
            cluster_id: cluster_id(&branches, initial_balance),
            branches,
            me,
            initial_balance,
            epoch: None,
        }
    }

    /// The identity of branch `me` of a reshaped cluster.
    pub fn of_epoch(
        branches: Vec<String>,
        me: BranchId,
        initial_balance: Amount,
        epoch: epoch::Epoch,
    ) -> Identity {
        Identity {
            cluster_id: epoch::epoch_cluster_id(&epoch, &branches),
            branches,
            me,
            initial_balance,
            epoch: Some(epoch),
        }
    }

    /// What every snapshot of this cluster must total.
    pub fn genesis_total(&self) -> Amount {
        match &self.epoch {
            Some(e) => e.expected_total,
            None => self.initial_balance * self.branches.len() as Amount,
        }
    }

    /// What each branch held when this epoch began, in branch order.
    pub fn genesis_balances(&self) -> Vec<Amount> {
        match &self.epoch {
            Some(e) => e.genesis.clone(),
            None => vec![self.initial_balance; self.branches.len()],
        }
    }

    /// The epoch's number: 0 until the first `snapctl reshape`.
    pub fn epoch_number(&self) -> u64 {
        self.epoch.as_ref().map_or(0, |e| e.number)
    }

    /// Epoch and cluster id, as the messages name them: `epoch 2 (cluster 1f…)`.
    pub fn epoch_name(&self) -> String {
        format!(
            "epoch {} (cluster {:016x})",
            self.epoch_number(),
            self.cluster_id
        )
    }

    pub fn initiator(&self) -> BranchId {
        let i = self.branches.iter().position(|b| b.ends_with(":S"));
        BranchId(i.unwrap_or(0) as u16)
    }

    /// The directory name of a branch's store: `<ip>_<port>`.
    pub fn branch_dir_name(entry: &str) -> String {
        let addr = entry.strip_suffix(":S").unwrap_or(entry);
        match addr.parse::<std::net::SocketAddr>() {
            Ok(a) => dir_name(a),
            Err(_) => addr.replace([':', '[', ']'], "_"),
        }
    }
}

pub fn cluster_id(branches: &[String], initial_balance: Amount) -> u64 {
    let text = format!("{}|{}", branches.join(" "), initial_balance);
    fnv1a(text.as_bytes())
}

/// The store directory of branch `addr` under `data_dir`: `<ip>_<port>`.
pub fn branch_dir(data_dir: &Path, addr: std::net::SocketAddr) -> PathBuf {
    data_dir.join(dir_name(addr))
}

fn dir_name(addr: std::net::SocketAddr) -> String {
    format!("{}_{}", addr.ip(), addr.port())
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {0} is in use by a running branch (stop it first; sled allows one process per store)")]
    Locked(PathBuf),
    #[error("store {0} does not exist")]
    NotFound(PathBuf),
    #[error("{0} is not a snapbank store: {1}")]
    NotAStore(PathBuf, String),
    /// The way back names `snapctl restore`, which sets the files aside (it never deletes them)
    /// and rebuilds the store from the initiator's copies of its snapshot parts; the initiator's
    /// own store holds those copies, so only a copy of it can bring it back.
    #[error("store {path} is corrupt: {what}; the way back: stop the cluster and run `snapctl restore --snapshot K` (K: a completed snapshot the initiator logged), which keeps these files aside and rebuilds the store from the initiator's copies (if this is the initiator's store, put back a copy of it instead)")]
    Corrupt { path: PathBuf, what: String },
    #[error("store {path} has schema v{found}, newer than this build supports (v{supported}); run a newer snapbank")]
    NewerSchema {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("store {path} belongs to another cluster or branch: {what}")]
    Mismatch { path: PathBuf, what: String },
    #[error("store {path}: {what}")]
    Io { path: PathBuf, what: String },
    /// `snapctl restore` started rewriting the cluster's stores and did not finish: this store
    /// may or may not be rewritten yet, so no branch may start on it.
    #[error("store {path} is part of an unfinished `snapctl restore --snapshot {snapshot}`; run it again to finish")]
    RestoreUnfinished { path: PathBuf, snapshot: SnapshotId },
    /// `snapctl reshape` committed a new epoch and has not put its stores in place yet.
    #[error("store {path} is part of an unfinished `snapctl reshape` to epoch {epoch}; run that reshape again (same --snapshot and --to) to finish it")]
    ReshapeUnfinished { path: PathBuf, epoch: u64 },
    /// A store of an epoch that `snapctl reshape` ended: kept for the audit only.
    #[error("store {path} was retired when `snapctl reshape` made epoch {epoch}: it is kept only for `snapctl audit` (and `snapctl reshape --purge` deletes it); start the branches on the stores of epoch {epoch}")]
    Retired { path: PathBuf, epoch: u64 },
}

/// A branch's store over a key-value backend.
pub struct BankStore<K: Kv> {
    kv: K,
    path: PathBuf,
    identity: Identity,
    /// Compaction still to do: per peer, the runs ending at or before this seq are to go. Each
    /// commit deletes a bounded number of them (a compaction after a long pause would otherwise
    /// read and delete the whole pause's log in one batch: a memory spike); reopening resumes
    /// from the state's `compacted`.
    compact_todo: std::collections::BTreeMap<BranchId, Seq>,
    /// Commits so far in this process: compaction runs on every `compact_every`-th.
    commits: u64,
    compact_every: u64,
}

/// Compaction runs on one commit in this many: each pass opens a range scan per channel, which
/// on every commit cost a 16-branch cluster about a sixth of its throughput (tools/bench).
const COMPACT_EVERY: u64 = 16;

/// Transfer runs deleted per channel per compaction pass, at most. A step writes about one run
/// per channel, so this is 16 runs per commit on average: compaction keeps up, and a backlog
/// (after a pause in snapshots) drains over a few hundred steps without a memory spike.
const COMPACT_RUNS_PER_PASS: usize = 256;

pub type SledStore = BankStore<SledKv>;
pub type MemStore = BankStore<MemKv>;

impl SledStore {
    /// Opens the store in `dir` for reading or running. With `create`, a missing store is created
    /// for that identity and an existing one must match it; without, it must exist.
    pub fn open(dir: &Path, create: Option<&Identity>) -> Result<SledStore, StoreError> {
        let kv = SledKv::open(dir, create.is_some()).map_err(|e| kv_err(dir, e))?;
        BankStore::with_kv(kv, dir.to_path_buf(), create)
    }

    /// Checks, creating nothing, that a branch of `identity` could open the store in `dir`: `Ok`
    /// when there is no store yet (the branch creates it) or it is a readable store of that
    /// branch; else the error the branch would stop with. Lets `start_bank` refuse before it
    /// starts any branch. Like opening it, this upgrades a store of an older schema in place.
    pub fn check(dir: &Path, identity: &Identity) -> Result<(), StoreError> {
        if !dir.join("db").is_file() {
            return Ok(());
        }
        let kv = SledKv::open(dir, true).map_err(|e| kv_err(dir, e))?;
        if kv.is_empty().map_err(|e| kv_err(dir, e))? {
            return Ok(());
        }
        let store = BankStore::with_kv(kv, dir.to_path_buf(), None)?;
        check_identity(dir, store.identity(), identity)?;
        store.refuse_if_restoring()
    }
}

impl MemStore {
    pub fn new_mem(identity: &Identity) -> MemStore {
        BankStore::with_kv(MemKv::default(), PathBuf::from("<memory>"), Some(identity))
            .expect("a fresh in-memory store opens")
    }

    /// The store's contents as they are now (the simulator keeps copies of earlier moments to
    /// put a store back in time, as a disk that lied or a backup put back would).
    pub fn contents(&self) -> &MemKv {
        &self.kv
    }

    /// Opens the store `kv` holds, as a branch restarting on it would.
    pub fn reopen_mem(kv: MemKv) -> Result<MemStore, StoreError> {
        BankStore::with_kv(kv, PathBuf::from("<memory>"), None)
    }
}

fn kv_err(path: &Path, e: KvError) -> StoreError {
    match e {
        KvError::Locked => StoreError::Locked(path.to_path_buf()),
        KvError::NotFound => StoreError::NotFound(path.to_path_buf()),
        KvError::NotAStore(w) => StoreError::NotAStore(path.to_path_buf(), w),
        KvError::Corrupt(w) => StoreError::Corrupt {
            path: path.to_path_buf(),
            what: w,
        },
        KvError::Io(w) => StoreError::Io {
            path: path.to_path_buf(),
            what: w,
        },
    }
}

/// Key of the run of transfers to `peer` that starts at `first`.
pub(crate) fn key_run(peer: BranchId, first: Seq) -> [u8; 11] {
    let mut k = [0u8; 11];
    k[0] = b'r';
    k[1..3].copy_from_slice(&peer.0.to_be_bytes());
    k[3..11].copy_from_slice(&first.0.to_be_bytes());
    k
}

/// The first sequence number of a run key.
pub(crate) fn run_first(key: &[u8]) -> Result<Seq, KvError> {
    key.get(3..11)
        .and_then(|b| b.try_into().ok())
        .map(|b| Seq(u64::from_be_bytes(b)))
        .ok_or_else(|| KvError::Corrupt("transfer run key of wrong length".into()))
}

/// Splits `(peer, seq, amount)` entries (each peer's in order) into runs of consecutive
/// sequence numbers: `(peer, first, amounts)`, at most [`RUN_TRANSFERS_MAX`] each.
pub(crate) fn runs_of(entries: &[(BranchId, Seq, Amount)]) -> Vec<(BranchId, Seq, Vec<Amount>)> {
    let mut runs: Vec<(BranchId, Seq, Vec<Amount>)> = Vec::new();
    let mut open: std::collections::BTreeMap<BranchId, usize> = std::collections::BTreeMap::new();
    for &(peer, seq, amount) in entries {
        if let Some(&i) = open.get(&peer) {
            let (_, first, amounts) = &mut runs[i];
            if first.0 + amounts.len() as u64 == seq.0 && amounts.len() < RUN_TRANSFERS_MAX {
                amounts.push(amount);
                continue;
            }
        }
        open.insert(peer, runs.len());
        runs.push((peer, seq, vec![amount]));
    }
    runs
}

fn key_part(k: SnapshotId) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = b'p';
    key[1..9].copy_from_slice(&k.0.to_be_bytes());
    key
}

fn key_global(k: SnapshotId) -> [u8; 9] {
    let mut key = key_part(k);
    key[0] = b'g';
    key
}

fn key_collected(k: SnapshotId, b: BranchId) -> [u8; 11] {
    let mut key = [0u8; 11];
    key[0] = b'c';
    key[1..9].copy_from_slice(&k.0.to_be_bytes());
    key[9..11].copy_from_slice(&b.0.to_be_bytes());
    key
}

/// Key of the record of start `n`: `m:start` + `n` (u64 BE).
fn key_start(n: u64) -> Vec<u8> {
    let mut key = KEY_START_PREFIX.to_vec();
    key.extend_from_slice(&n.to_be_bytes());
    key
}

/// The last possible key under a one-byte prefix (every key here is at most 11 bytes).
pub(crate) fn prefix_end(prefix: u8) -> [u8; 11] {
    let mut k = [0xff; 11];
    k[0] = prefix;
    k
}

pub(crate) fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).expect("CBOR encoding into a Vec");
    out
}

/// Sums of a stretch of the transfer log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogSum {
    /// Entries found.
    pub count: u64,
    pub money: u128,
    /// Whether the entries found are exactly `after+1 ..= upto`.
    pub dense: bool,
}

impl<K: Kv> BankStore<K> {
    fn with_kv(mut kv: K, path: PathBuf, create: Option<&Identity>) -> Result<Self, StoreError> {
        let err = |e| kv_err(&path, e);
        let schema: Option<u32> = match kv.get(KEY_SCHEMA).map_err(err)? {
            Some(bytes) => Some(decode(&path, "schema version", &bytes)?),
            None => None,
        };
        let identity = match (schema, create) {
            (None, Some(id)) if kv.is_empty().map_err(err)? => {
                kv.apply(
                    vec![
                        Op::Put(KEY_SCHEMA.to_vec(), enc(&SCHEMA_VERSION)),
                        Op::Put(KEY_IDENTITY.to_vec(), enc(id)),
                    ],
                    true,
                )
                .map_err(err)?;
                id.clone()
            }
            (None, _) => {
                return Err(StoreError::NotAStore(
                    path,
                    "it holds no snapbank schema version".into(),
                ))
            }
            (Some(v), _) => {
                if v > SCHEMA_VERSION {
                    return Err(StoreError::NewerSchema {
                        path,
                        found: v,
                        supported: SCHEMA_VERSION,
                    });
                }
                if v < SCHEMA_VERSION || kv.get(KEY_UPGRADING).map_err(err)?.is_some() {
                    migrate::upgrade(&mut kv, v).map_err(err)?;
                }
                let bytes =
                    kv.get(KEY_IDENTITY)
                        .map_err(err)?
                        .ok_or_else(|| StoreError::Corrupt {
                            path: path.clone(),
                            what: "identity record missing".into(),
                        })?;
                let found: Identity = decode(&path, "identity", &bytes)?;
                if let Some(want) = create {
                    check_identity(&path, &found, want)?;
                }
                found
            }
        };
        let mut store = BankStore {
            kv,
            path,
            identity,
            compact_todo: Default::default(),
            commits: 0,
            compact_every: COMPACT_EVERY,
        };
        // Finish what compaction had left when the store was last open (none in a new store).
        if let Some(st) = store.state()? {
            for (p, out) in st.out.iter().enumerate() {
                if out.compacted.0 > 0 {
                    store.compact_todo.insert(BranchId(p as u16), out.compacted);
                }
            }
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tests and the simulator: run a compaction pass on every commit, so what a compaction
    /// drops is gone at once.
    pub fn compact_on_every_commit(&mut self) {
        self.compact_every = 1;
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    fn corrupt(&self, what: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            what,
        }
    }

    fn kv_error(&self, e: KvError) -> StoreError {
        kv_err(&self.path, e)
    }

    /// The persisted state, if the branch ever committed one.
    pub fn state(&self) -> Result<Option<DurableState>, StoreError> {
        match self.kv.get(KEY_STATE).map_err(|e| self.kv_error(e))? {
            Some(b) => {
                let st: DurableState = decode(&self.path, "branch state", &b)?;
                let n = self.identity.branches.len();
                if st.out.len() != n || st.inc.len() != n {
                    return Err(self.corrupt(format!(
                        "state has {} channels for {n} branches",
                        st.out.len()
                    )));
                }
                if let Some(o) = st.out.iter().find(|o| o.acked > o.sent) {
                    return Err(self.corrupt(format!(
                        "a channel acknowledged seq {} of only {} sent",
                        o.acked, o.sent
                    )));
                }
                if let Some(o) = st.out.iter().find(|o| o.compacted > o.acked) {
                    return Err(self.corrupt(format!(
                        "a channel's log is compacted to seq {}, beyond the acknowledged {}",
                        o.compacted, o.acked
                    )));
                }
                if let Some((k, _)) = st
                    .recording
                    .iter()
                    .find(|(_, r)| r.inc.len() != n || r.sent.len() != n)
                {
                    return Err(self.corrupt(format!("snapshot {k} in progress has wrong shape")));
                }
                Ok(Some(st))
            }
            None => Ok(None),
        }
    }

    /// Reloads everything a branch needs to carry on; a fresh store gives the genesis state.
    pub fn recover(&self, cfg: &CoreConfig) -> Result<Recovered, StoreError> {
        let Some(state) = self.state()? else {
            return Ok(Recovered::genesis(cfg));
        };
        let mut rec = Recovered::genesis(cfg);
        for p in 0..cfg.branches {
            let peer = BranchId(p);
            let out = &state.out[peer.index()];
            let entries = self.log_entries(peer, out.acked, out.sent)?;
            if entries.len() as u64 != out.sent.0 - out.acked.0 {
                return Err(self.corrupt(format!(
                    "transfer log to {peer} lacks unacknowledged entries ({} of {})",
                    entries.len(),
                    out.sent.0 - out.acked.0
                )));
            }
            rec.unacked[peer.index()] = entries;
        }
        if cfg.me != cfg.initiator {
            let acked = state.out[cfg.initiator.index()].part_acked;
            rec.unsent_parts = self
                .parts()?
                .into_iter()
                .filter(|p| p.snapshot > acked)
                .collect();
        }
        rec.collected = self.collected()?;
        rec.state = state;
        Ok(rec)
    }

    /// Calls `f(seq, amount)` for each log entry `(after, upto]` to `peer`, in order.
    pub fn scan_log(
        &self,
        peer: BranchId,
        after: Seq,
        upto: Seq,
        f: &mut dyn FnMut(Seq, Amount),
    ) -> Result<(), StoreError> {
        if upto <= after {
            return Ok(());
        }
        // Start at the run holding `after + 1` (the last one starting at or before it).
        let start = self
            .kv
            .last_key_in(&key_run(peer, Seq(0)), &key_run(peer, after.next()))
            .map_err(|e| self.kv_error(e))?
            .unwrap_or_else(|| key_run(peer, after.next()).to_vec());
        let to = key_run(peer, upto);
        let path = self.path.clone();
        self.kv
            .for_range(&start, &to, &mut |k, v| {
                let first = run_first(k)?;
                let amounts: Vec<Amount> = decode(&path, "transfer run", v)
                    .map_err(|e| KvError::Corrupt(e.to_string()))?;
                for (i, amount) in amounts.into_iter().enumerate() {
                    let seq = first.0 + i as u64;
                    if seq > after.0 && seq <= upto.0 {
                        f(Seq(seq), amount);
                    }
                }
                Ok(())
            })
            .map_err(|e| self.kv_error(e))
    }

    /// Log entries `(after, upto]` to `peer`, in order.
    pub fn log_entries(
        &self,
        peer: BranchId,
        after: Seq,
        upto: Seq,
    ) -> Result<Vec<(Seq, Amount)>, StoreError> {
        let mut out = Vec::new();
        self.scan_log(peer, after, upto, &mut |s, a| out.push((s, a)))?;
        Ok(out)
    }

    /// Count and money of the log entries `(after, upto]` to `peer`.
    pub fn log_sum(&self, peer: BranchId, after: Seq, upto: Seq) -> Result<LogSum, StoreError> {
        let mut sum = LogSum {
            dense: true,
            ..LogSum::default()
        };
        let mut expect = after.next().0;
        self.scan_log(peer, after, upto, &mut |seq, amount| {
            if seq.0 != expect {
                sum.dense = false;
            }
            expect = seq.0 + 1;
            sum.count += 1;
            sum.money += amount as u128;
        })?;
        if sum.count != upto.0.saturating_sub(after.0) {
            sum.dense = false;
        }
        Ok(sum)
    }

    /// This branch's completed local parts, by snapshot id.
    pub fn parts(&self) -> Result<Vec<LocalPart>, StoreError> {
        self.scan_values(b'p', "local part")
    }

    /// Initiator: the completed global snapshots, by id.
    pub fn globals(&self) -> Result<Vec<GlobalSnapshot>, StoreError> {
        self.scan_values(b'g', "global snapshot")
    }

    /// Initiator: completed global snapshot `k` if kept (`None`: the latest kept).
    pub fn global(&self, k: Option<SnapshotId>) -> Result<Option<GlobalSnapshot>, StoreError> {
        let key = match k {
            Some(k) => Some(key_global(k).to_vec()),
            None => self
                .kv
                .last_key_in(
                    &key_global(SnapshotId(0)),
                    &key_global(SnapshotId(u64::MAX)),
                )
                .map_err(|e| self.kv_error(e))?,
        };
        let Some(key) = key else {
            return Ok(None);
        };
        match self.kv.get(&key).map_err(|e| self.kv_error(e))? {
            Some(b) => Ok(Some(decode(&self.path, "global snapshot", &b)?)),
            None => Ok(None),
        }
    }

    /// This branch's own part of snapshot `k`, if kept.
    pub fn part(&self, k: SnapshotId) -> Result<Option<LocalPart>, StoreError> {
        match self.kv.get(&key_part(k)).map_err(|e| self.kv_error(e))? {
            Some(b) => Ok(Some(decode(&self.path, "local part", &b)?)),
            None => Ok(None),
        }
    }

    /// Initiator: parts collected for snapshots not yet complete.
    pub fn collected(&self) -> Result<Vec<LocalPart>, StoreError> {
        self.scan_values(b'c', "collected part")
    }

    fn scan_values<T: DeserializeOwned>(
        &self,
        prefix: u8,
        what: &str,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        let path = self.path.clone();
        self.kv
            .for_range(&[prefix], &prefix_end(prefix), &mut |_, v| {
                out.push(decode(&path, what, v).map_err(|e| KvError::Corrupt(e.to_string()))?);
                Ok(())
            })
            .map_err(|e| self.kv_error(e))?;
        Ok(out)
    }

    /// Makes a step's writes durable, atomically.
    pub fn commit(&mut self, batch: &WriteBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut ops = Vec::with_capacity(8);
        for (peer, first, amounts) in runs_of(&batch.transfers) {
            ops.push(Op::Put(key_run(peer, first).to_vec(), enc(&amounts)));
        }
        // Snapshots this very batch prunes (several completed in one step) are not written.
        let kept = |k: SnapshotId| batch.prune_below.map_or(true, |below| k >= below);
        for part in batch.parts.iter().filter(|p| kept(p.snapshot)) {
            ops.push(Op::Put(key_part(part.snapshot).to_vec(), enc(part)));
        }
        for part in &batch.collected {
            ops.push(Op::Put(
                key_collected(part.snapshot, part.branch).to_vec(),
                enc(part),
            ));
        }
        for g in batch.globals.iter().filter(|g| kept(g.snapshot)) {
            ops.push(Op::Put(key_global(g.snapshot).to_vec(), enc(g)));
        }
        for k in &batch.uncollect {
            for b in 0..self.identity.branches.len() as u16 {
                ops.push(Op::Del(key_collected(*k, BranchId(b)).to_vec()));
            }
        }
        for &(peer, upto) in &batch.compact {
            let todo = self.compact_todo.entry(peer).or_default();
            *todo = (*todo).max(upto);
        }
        self.commits += 1;
        if self.commits % self.compact_every == 0 {
            self.compaction(&mut ops)?;
        }
        if let Some(below) = batch.prune_below {
            for prefix in [key_part, key_global] {
                self.kv
                    .for_range(&prefix(SnapshotId(0)), &prefix(below), &mut |k, _| {
                        if k != prefix(below) {
                            ops.push(Op::Del(k.to_vec()));
                        }
                        Ok(())
                    })
                    .map_err(|e| self.kv_error(e))?;
            }
        }
        if let Some(st) = &batch.state {
            ops.push(Op::Put(KEY_STATE.to_vec(), enc(st)));
        }
        self.kv.apply(ops, true).map_err(|e| self.kv_error(e))
    }

    /// Deletes of at most [`COMPACT_RUNS_PER_PASS`] transfer runs per channel that end at or
    /// before the channel's compaction target. The runs of a channel are contiguous, so every
    /// run starting at or before `upto + 1` ends before the next one starts: of those, all but
    /// the last may go (the last may hold `upto + 1`). A target is done when that is all.
    fn compaction(&mut self, ops: &mut Vec<Op>) -> Result<(), StoreError> {
        let mut done = Vec::new();
        for (&peer, &upto) in &self.compact_todo {
            let mut keys = self
                .kv
                .keys_in(
                    &key_run(peer, Seq(0)),
                    &key_run(peer, Seq(upto.0.saturating_add(1))),
                    COMPACT_RUNS_PER_PASS + 1,
                )
                .map_err(|e| kv_err(&self.path, e))?;
            if keys.len() <= COMPACT_RUNS_PER_PASS {
                done.push(peer);
            }
            keys.truncate(keys.len().saturating_sub(1));
            ops.extend(keys.into_iter().map(Op::Del));
        }
        for peer in done {
            self.compact_todo.remove(&peer);
        }
        Ok(())
    }

    /// Rewrites a stopped branch's store to a snapshot's cut, atomically: `state` replaces the
    /// state; transfer-log entries beyond `state.out[p].sent`, parts and global snapshots after
    /// `keep_upto` and every collected part are deleted; `parts` are added.
    /// With `wipe`, the whole transfer log and every part go too (a store that no longer
    /// matches the cut is rebuilt from `parts`).
    pub fn rewrite_to_cut(
        &mut self,
        state: &DurableState,
        keep_upto: SnapshotId,
        parts: &[LocalPart],
        wipe: bool,
    ) -> Result<(), StoreError> {
        let mut dead: Vec<Vec<u8>> = Vec::new();
        // Runs that straddle a channel's new end are cut there.
        let mut trimmed: Vec<Op> = Vec::new();
        for (p, out) in state.out.iter().enumerate() {
            let peer = BranchId(p as u16);
            let path = self.path.clone();
            self.kv
                .for_range(
                    &key_run(peer, Seq(0)),
                    &key_run(peer, Seq(u64::MAX)),
                    &mut |k, v| {
                        let first = run_first(k)?;
                        if wipe || first > out.sent {
                            dead.push(k.to_vec());
                            return Ok(());
                        }
                        let amounts: Vec<Amount> = decode(&path, "transfer run", v)
                            .map_err(|e| KvError::Corrupt(e.to_string()))?;
                        let keep = (out.sent.0 - first.0 + 1) as usize;
                        if amounts.len() > keep {
                            trimmed.push(Op::Put(k.to_vec(), enc(&amounts[..keep].to_vec())));
                        }
                        Ok(())
                    },
                )
                .map_err(|e| kv_err(&self.path, e))?;
        }
        let mut collect = |from: &[u8], to: &[u8]| {
            self.kv.for_range(from, to, &mut |k, _| {
                dead.push(k.to_vec());
                Ok(())
            })
        };
        let after = SnapshotId(keep_upto.0.saturating_add(1));
        let parts_from = if wipe { SnapshotId(0) } else { after };
        collect(&key_part(parts_from), &key_part(SnapshotId(u64::MAX)))
            .map_err(|e| kv_err(&self.path, e))?;
        collect(&key_global(after), &key_global(SnapshotId(u64::MAX)))
            .map_err(|e| kv_err(&self.path, e))?;
        collect(b"c", &prefix_end(b'c')).map_err(|e| kv_err(&self.path, e))?;
        let mut ops: Vec<Op> = dead.into_iter().map(Op::Del).collect();
        ops.extend(trimmed);
        for part in parts {
            ops.push(Op::Put(key_part(part.snapshot).to_vec(), enc(part)));
        }
        ops.push(Op::Put(KEY_STATE.to_vec(), enc(state)));
        self.kv.apply(ops, true).map_err(|e| self.kv_error(e))
    }

    /// Writes `state` as is (tools and tests that edit a stopped store).
    pub fn put_state(&mut self, state: &DurableState) -> Result<(), StoreError> {
        self.kv
            .apply(vec![Op::Put(KEY_STATE.to_vec(), enc(state))], true)
            .map_err(|e| self.kv_error(e))
    }

    /// Records, durably, that `bank` starts a branch on this store, and returns how many times
    /// it had done so before (0 at the first start): the `snapbank_restarts_total` metric. The
    /// same commit records when (the wall clock now, see [`BankStore::count_start_at`]).
    pub fn count_start(&mut self) -> Result<u64, StoreError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        self.count_start_at(now)
    }

    /// [`BankStore::count_start`] at `now_us` (Unix µs): in one atomic, durable batch, the
    /// count `m:starts` goes up by one and the record `m:start` + (count before) holds `now_us`;
    /// the record [`START_RECORDS_MAX`] starts older is deleted.
    pub fn count_start_at(&mut self, now_us: u64) -> Result<u64, StoreError> {
        let before: u64 = match self.kv.get(KEY_STARTS).map_err(|e| self.kv_error(e))? {
            Some(bytes) => decode(&self.path, "start count", &bytes)?,
            None => 0,
        };
        let mut ops = vec![
            Op::Put(KEY_STARTS.to_vec(), enc(&before.saturating_add(1))),
            Op::Put(key_start(before), enc(&now_us)),
        ];
        if let Some(old) = before.checked_sub(START_RECORDS_MAX) {
            ops.push(Op::Del(key_start(old)));
        }
        self.kv.apply(ops, true).map_err(|e| self.kv_error(e))?;
        Ok(before)
    }

    /// The start records, oldest first: (start number, 0 being the store's first start; Unix
    /// µs). Empty for a store whose branches were started only by builds before the records.
    pub fn starts(&self) -> Result<Vec<(u64, u64)>, StoreError> {
        let mut out = Vec::new();
        let mut bad = None;
        let from = key_start(0);
        let to = key_start(u64::MAX);
        self.kv
            .for_range(&from, &to, &mut |k, v| {
                if k == KEY_STARTS {
                    return Ok(());
                }
                let n = k
                    .get(KEY_START_PREFIX.len()..)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes);
                match (n, ciborium::from_reader::<u64, _>(v)) {
                    (Some(n), Ok(us)) => out.push((n, us)),
                    (_, e) => {
                        bad = Some(format!(
                            "undecodable start record {k:?}: {}",
                            e.err().map_or("bad key".into(), |e| e.to_string())
                        ));
                        return Err(KvError::Corrupt("start record".into()));
                    }
                }
                Ok(())
            })
            .map_err(|e| match bad.take() {
                Some(what) => StoreError::Corrupt {
                    path: self.path.clone(),
                    what,
                },
                None => self.kv_error(e),
            })?;
        Ok(out)
    }

    /// The snapshot an unfinished `snapctl restore` is restoring this store to, if any.
    pub fn restoring(&self) -> Result<Option<SnapshotId>, StoreError> {
        match self.kv.get(KEY_RESTORING).map_err(|e| self.kv_error(e))? {
            Some(bytes) => Ok(Some(decode(&self.path, "restore marker", &bytes)?)),
            None => Ok(None),
        }
    }

    /// Marks the store, durably, as part of a restore to snapshot `k` (`None`: clears it).
    pub fn set_restoring(&mut self, k: Option<SnapshotId>) -> Result<(), StoreError> {
        let op = match k {
            Some(k) => Op::Put(KEY_RESTORING.to_vec(), enc(&k)),
            None => Op::Del(KEY_RESTORING.to_vec()),
        };
        self.kv.apply(vec![op], true).map_err(|e| self.kv_error(e))
    }

    /// The error a branch stops with on a store an unfinished restore marked, or one a reshape
    /// retired.
    pub fn refuse_if_restoring(&self) -> Result<(), StoreError> {
        if let Some(snapshot) = self.restoring()? {
            return Err(StoreError::RestoreUnfinished {
                path: self.path.clone(),
                snapshot,
            });
        }
        match self.retired()? {
            Some(epoch) => Err(StoreError::Retired {
                path: self.path.clone(),
                epoch,
            }),
            None => Ok(()),
        }
    }

    /// The epoch that replaced this store's, if `snapctl reshape` retired it.
    pub fn retired(&self) -> Result<Option<u64>, StoreError> {
        match self.kv.get(KEY_RETIRED).map_err(|e| self.kv_error(e))? {
            Some(bytes) => Ok(Some(decode(&self.path, "retired mark", &bytes)?)),
            None => Ok(None),
        }
    }

    /// Marks the store, durably, as retired by the reshape that made `epoch`.
    pub fn set_retired(&mut self, epoch: u64) -> Result<(), StoreError> {
        self.kv
            .apply(vec![Op::Put(KEY_RETIRED.to_vec(), enc(&epoch))], true)
            .map_err(|e| self.kv_error(e))
    }

    /// Flushes everything to disk.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        self.kv.flush().map_err(|e| self.kv_error(e))
    }
}

fn check_identity(path: &Path, found: &Identity, want: &Identity) -> Result<(), StoreError> {
    let mismatch = |what: String| {
        Err(StoreError::Mismatch {
            path: path.to_path_buf(),
            what,
        })
    };
    if found.branches != want.branches {
        return mismatch(format!(
            "it was made with host.list [{}], but this host.list names [{}]{}",
            found.branches.join(" "),
            want.branches.join(" "),
            match &found.epoch {
                Some(e) => format!(
                    " (`snapctl reshape` made it for epoch {}: run the branches with the host.list it was given)",
                    e.number
                ),
                None => String::new(),
            }
        ));
    }
    if found.me != want.me {
        return mismatch(format!(
            "it is the store of branch {}, not of {}",
            found.branches[found.me.index().min(found.branches.len() - 1)],
            want.branches[want.me.index().min(want.branches.len() - 1)]
        ));
    }
    // A reshaped store's genesis is its epoch's, whatever --initial-balance says now; the
    // branch takes its identity (and the cluster id its peers must share) from the store.
    if found.epoch.is_some() && want.epoch.is_none() {
        return Ok(());
    }
    if found.epoch.is_none() && found.initial_balance != want.initial_balance {
        return mismatch(format!(
            "it was made with --initial-balance {}, not {}",
            found.initial_balance, want.initial_balance
        ));
    }
    if found.cluster_id != want.cluster_id {
        return mismatch(format!(
            "it is of {}, not of {}",
            found.epoch_name(),
            want.epoch_name()
        ));
    }
    Ok(())
}

fn decode<T: DeserializeOwned>(path: &Path, what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    ciborium::from_reader(bytes).map_err(|e| StoreError::Corrupt {
        path: path.to_path_buf(),
        what: format!("undecodable {what}: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{CoreConfig, Recovered};

    fn identity(me: u16) -> Identity {
        let hosts = HostList::parse("127.0.0.1:1:S 127.0.0.1:2 127.0.0.1:3", "t").unwrap();
        Identity::new(&hosts, BranchId(me), 1000)
    }

    fn cfg(me: u16) -> CoreConfig {
        CoreConfig {
            me: BranchId(me),
            branches: 3,
            initiator: BranchId(0),
            initial_balance: 1000,
            epoch_total: None,
            amount_max: 10,
            unacked_per_channel_max: 100,
            live_snapshots_max: 4,
            snapshots_kept: 1_000_000,
            timing: Default::default(),
            seed: 1,
        }
    }

    #[test]
    fn start_count_is_durable_and_counts_earlier_starts() {
        let dir = tempfile::tempdir().unwrap();
        let id = identity(1);
        for expected in 0..3u64 {
            let mut s = SledStore::open(dir.path(), Some(&id)).unwrap();
            assert_eq!(s.count_start().unwrap(), expected);
        }
        // Reading a store (snapctl) does not count as a start.
        let s = SledStore::open(dir.path(), None).unwrap();
        assert_eq!(
            s.kv.get(KEY_STARTS)
                .unwrap()
                .map(|b| decode::<u64>(s.path(), "n", &b).unwrap()),
            Some(3)
        );
        // Each start left its record, with a wall-clock time, in the same commit.
        let starts = s.starts().unwrap();
        assert_eq!(starts.iter().map(|s| s.0).collect::<Vec<_>>(), [0, 1, 2]);
        assert!(starts.windows(2).all(|w| w[0].1 <= w[1].1));
        assert!(starts[0].1 > 1_600_000_000_000_000, "Unix µs: {starts:?}");
    }

    #[test]
    fn start_records_keep_their_times_and_only_the_latest() {
        let mut s = MemStore::new_mem(&identity(1));
        assert_eq!(s.starts().unwrap(), [], "never started: no record");
        // A store whose earlier starts were counted by a build without the records.
        s.kv.apply(vec![Op::Put(KEY_STARTS.to_vec(), enc(&5u64))], true)
            .unwrap();
        assert_eq!(s.count_start_at(1_700_000_000_000_000).unwrap(), 5);
        assert_eq!(s.starts().unwrap(), [(5, 1_700_000_000_000_000)]);
        for i in 0..START_RECORDS_MAX + 2 {
            s.count_start_at(1_700_000_000_000_001 + i).unwrap();
        }
        let starts = s.starts().unwrap();
        assert_eq!(starts.len() as u64, START_RECORDS_MAX);
        assert_eq!(starts[0].0, 5 + 3, "the oldest went first");
        assert_eq!(starts.last().map(|s| s.0), Some(5 + START_RECORDS_MAX + 2));
        // A corrupt record is a corrupt store, named.
        s.kv.apply(vec![Op::Put(key_start(1), b"\xff".to_vec())], true)
            .unwrap();
        let e = s.starts().unwrap_err();
        assert!(e.to_string().contains("undecodable start record"), "{e}");
    }

    #[test]
    fn fresh_store_recovers_genesis() {
        let s = MemStore::new_mem(&identity(1));
        assert_eq!(s.recover(&cfg(1)).unwrap(), Recovered::genesis(&cfg(1)));
        assert_eq!(s.identity().genesis_total(), 3000);
        assert_eq!(s.identity().initiator(), BranchId(0));
    }

    #[test]
    fn commit_then_recover_round_trips_and_log_sums_detect_gaps() {
        let mut s = MemStore::new_mem(&identity(1));
        let mut st = Recovered::genesis(&cfg(1)).state;
        st.balance = 990;
        st.out[2].sent = Seq(3);
        st.out[2].acked = Seq(1);
        let batch = WriteBatch {
            state: Some(st.clone()),
            transfers: vec![
                (BranchId(2), Seq(1), 4),
                (BranchId(2), Seq(2), 5),
                (BranchId(2), Seq(3), 1),
            ],
            ..WriteBatch::default()
        };
        s.commit(&batch).unwrap();
        let rec = s.recover(&cfg(1)).unwrap();
        assert_eq!(rec.state, st);
        assert_eq!(rec.unacked[2], vec![(Seq(2), 5), (Seq(3), 1)]);
        let all = s.log_sum(BranchId(2), Seq(0), Seq(3)).unwrap();
        assert_eq!((all.count, all.money, all.dense), (3, 10, true));
        let beyond = s.log_sum(BranchId(2), Seq(1), Seq(5)).unwrap();
        assert!(!beyond.dense, "seqs 4 and 5 are missing");
    }

    #[test]
    fn compaction_drops_whole_runs_up_to_the_bound_and_pruning_drops_old_snapshots() {
        let mut s = MemStore::new_mem(&identity(1));
        s.compact_on_every_commit();
        let to = BranchId(2);
        // Three runs: 1..=3, 4..=6, 7..=9 (one batch each).
        for first in [1u64, 4, 7] {
            let batch = WriteBatch {
                transfers: (first..first + 3).map(|q| (to, Seq(q), q)).collect(),
                ..WriteBatch::default()
            };
            s.commit(&batch).unwrap();
        }
        let mut part = |k: u64| LocalPart {
            snapshot: SnapshotId(k),
            branch: BranchId(1),
            recorded_at: 0,
            balance: 0,
            sent: Vec::new(),
            channels: Vec::new(),
        };
        let parts: Vec<LocalPart> = (1..=4).map(&mut part).collect();
        s.commit(&WriteBatch {
            parts,
            ..WriteBatch::default()
        })
        .unwrap();
        let seqs = |s: &MemStore| -> Vec<u64> {
            let log = s.log_entries(to, Seq(0), Seq(9)).unwrap();
            log.iter().map(|(q, _)| q.0).collect()
        };
        // Up to 5: only the run 1..=3 ends there; 4..=6 holds 6 and stays.
        let compact = |upto: u64| WriteBatch {
            compact: vec![(to, Seq(upto))],
            ..WriteBatch::default()
        };
        s.commit(&compact(5)).unwrap();
        assert_eq!(seqs(&s), (4..=9).collect::<Vec<_>>());
        // Up to 6: 4..=6 goes too; what follows the bound is whole.
        s.commit(&compact(6)).unwrap();
        assert_eq!(seqs(&s), vec![7, 8, 9]);
        assert!(s.log_sum(to, Seq(6), Seq(9)).unwrap().dense);
        // Up to the end: the run holding the last seq stays (it is where the next one starts).
        s.commit(&compact(9)).unwrap();
        assert_eq!(seqs(&s), vec![7, 8, 9]);
        // Pruning below 3 drops parts 1 and 2; a part the same batch prunes is not written.
        s.commit(&WriteBatch {
            parts: vec![part(2), part(5)],
            prune_below: Some(SnapshotId(3)),
            ..WriteBatch::default()
        })
        .unwrap();
        let ids: Vec<u64> = s.parts().unwrap().iter().map(|p| p.snapshot.0).collect();
        assert_eq!(ids, vec![3, 4, 5]);
    }

    #[test]
    fn a_compaction_backlog_drains_a_bounded_number_of_runs_per_commit_and_resumes_on_open() {
        let mut s = MemStore::new_mem(&identity(1));
        s.compact_on_every_commit();
        let to = BranchId(2);
        let runs = 2 * COMPACT_RUNS_PER_PASS as u64 + 5;
        for q in 1..=runs {
            let batch = WriteBatch {
                transfers: vec![(to, Seq(q), 1)],
                ..WriteBatch::default()
            };
            s.commit(&batch).unwrap();
        }
        let left = |s: &MemStore| s.log_entries(to, Seq(0), Seq(runs)).unwrap().len() as u64;
        let mut st = Recovered::genesis(&cfg(1)).state;
        st.out[2].sent = Seq(runs);
        st.out[2].acked = Seq(runs);
        st.out[2].compacted = Seq(runs);
        s.commit(&WriteBatch {
            state: Some(st),
            compact: vec![(to, Seq(runs))],
            ..WriteBatch::default()
        })
        .unwrap();
        assert_eq!(left(&s), runs - COMPACT_RUNS_PER_PASS as u64);
        // A crash now: the reopened store finds the target in the state and carries on.
        let mut s = BankStore::with_kv(s.kv.clone(), s.path.clone(), None).unwrap();
        s.compact_on_every_commit();
        let other = WriteBatch {
            transfers: vec![(BranchId(0), Seq(1), 1)],
            ..WriteBatch::default()
        };
        s.commit(&other).unwrap();
        assert_eq!(left(&s), runs - 2 * COMPACT_RUNS_PER_PASS as u64);
        s.commit(&other).unwrap();
        assert_eq!(left(&s), 1, "all but the run holding the last seq");
        assert!(s.compact_todo.is_empty());
    }

    #[test]
    fn missing_unacked_entries_are_corruption() {
        let mut s = MemStore::new_mem(&identity(1));
        let mut st = Recovered::genesis(&cfg(1)).state;
        st.out[0].sent = Seq(2);
        s.put_state(&st).unwrap();
        let err = s.recover(&cfg(1)).unwrap_err().to_string();
        assert!(err.contains("lacks unacknowledged"), "{err}");
    }

    #[test]
    fn identity_mismatch_newer_schema_and_foreign_data_are_refused() {
        let mut kv = MemKv::default();
        kv.apply(
            vec![
                Op::Put(KEY_SCHEMA.to_vec(), enc(&1u32)),
                Op::Put(KEY_IDENTITY.to_vec(), enc(&identity(1))),
            ],
            true,
        )
        .unwrap();
        let p = PathBuf::from("x");
        assert!(BankStore::with_kv(kv.clone(), p.clone(), Some(&identity(1))).is_ok());
        let e = BankStore::with_kv(kv.clone(), p.clone(), Some(&identity(2)))
            .err()
            .unwrap();
        assert!(e.to_string().contains("store of branch 127.0.0.1:2"), "{e}");
        let other = Identity::new(
            &HostList::parse("127.0.0.1:1:S 127.0.0.1:2", "t").unwrap(),
            BranchId(1),
            1000,
        );
        let e = BankStore::with_kv(kv.clone(), p.clone(), Some(&other))
            .err()
            .unwrap();
        assert!(e.to_string().contains("host.list"), "{e}");

        let mut newer = kv.clone();
        newer
            .apply(vec![Op::Put(KEY_SCHEMA.to_vec(), enc(&7u32))], true)
            .unwrap();
        let e = BankStore::with_kv(newer, p.clone(), None).err().unwrap();
        assert!(matches!(e, StoreError::NewerSchema { found: 7, .. }), "{e}");

        let mut foreign = MemKv::default();
        foreign
            .apply(vec![Op::Put(b"hello".to_vec(), b"world".to_vec())], true)
            .unwrap();
        let e = BankStore::with_kv(foreign, p.clone(), Some(&identity(1)))
            .err()
            .unwrap();
        assert!(matches!(e, StoreError::NotAStore(..)), "{e}");

        // A garbled state is refused at open: by the upgrade of an old store (which rewrites
        // the state), and at the current schema by the read of what compaction left to do.
        let mut garbled = kv;
        garbled
            .apply(vec![Op::Put(KEY_STATE.to_vec(), vec![0xff, 0x00])], true)
            .unwrap();
        let e = BankStore::with_kv(garbled.clone(), p.clone(), None)
            .err()
            .unwrap();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
        garbled
            .apply(
                vec![Op::Put(KEY_SCHEMA.to_vec(), enc(&SCHEMA_VERSION))],
                true,
            )
            .unwrap();
        let e = BankStore::with_kv(garbled, p, None).err().unwrap();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
    }

    #[test]
    fn sled_store_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b");
        {
            let mut s = SledStore::open(&path, Some(&identity(0))).unwrap();
            let mut st = Recovered::genesis(&cfg(0)).state;
            st.balance = 7;
            s.commit(&WriteBatch {
                state: Some(st),
                ..WriteBatch::default()
            })
            .unwrap();
        }
        let s = SledStore::open(&path, None).unwrap();
        assert_eq!(s.state().unwrap().unwrap().balance, 7);
        let locked = SledStore::open(&path, None).err().unwrap();
        assert!(matches!(locked, StoreError::Locked(_)), "{locked}");
        assert!(matches!(
            SledStore::open(&dir.path().join("none"), None)
                .err()
                .unwrap(),
            StoreError::NotFound(_)
        ));
    }
}
