//! What a branch measures about itself for `--stats-file` (read by `tools/bench`): transfer
//! latency from durable debit to the acknowledgement that covers it, snapshot durations, start-up
//! timings, and transfers per wall-clock phase. Measured in the shell; the core only exposes
//! its sequence numbers.
//!
//! [`StatsFile`] is the file's one definition: the branch writes it, the bench reads it.

use crate::core::DurableState;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Snapshot durations kept (the newest).
const SNAPSHOTS_KEPT_MAX: usize = 10_000;
/// Phases whose counts are kept (the newest).
const PHASES_KEPT_MAX: usize = 10_000;

pub struct Stats {
    path: Option<PathBuf>,
    started: Instant,
    store_open: Option<Duration>,
    first_transfer: Option<Duration>,
    /// Per peer: (last seq of a committed run of new transfers, when it was committed).
    unacked: Vec<VecDeque<(u64, Instant)>>,
    /// Per peer: sent and acked as of the last step.
    sent: Vec<u64>,
    acked: Vec<u64>,
    applied_total: u64,
    applied_at_start: Option<u64>,
    transfers_sent: u64,
    latency: Histogram<u64>,
    /// Time each step's batch took to become durable (apply plus flush), µs.
    commits: Histogram<u64>,
    snapshots: VecDeque<SnapshotTime>,
    phase: Option<Duration>,
    phases: BTreeMap<u64, u64>,
    /// Per peer (own index: already `true`): has the outgoing / inbound link been up yet.
    out_seen: Vec<bool>,
    in_seen: Vec<bool>,
    /// Process start to the first moment every link, both ways, had been up.
    mesh_up: Option<Duration>,
    mesh_up_unix_ms: Option<u64>,
}

/// The `--stats-file` JSON, rewritten (atomically) every `--status-interval` and at exit. The
/// keys are documented in the README (`--stats-file`); a file from a bank before `commit_us`
/// existed reads with it empty.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatsFile {
    /// The branch's address, as in host.list.
    pub branch: String,
    /// The process that wrote the file (a restarted branch writes a new pid).
    pub pid: u32,
    /// Seconds since the process started.
    pub uptime_s: f64,
    /// Process start to store opened and recovered, ms.
    pub store_open_ms: Option<f64>,
    /// Process start to the first new transfer committed and handed to its link, ms.
    pub first_transfer_ms: Option<f64>,
    /// Process start to the first moment every link of the mesh had come up, both ways (its
    /// outgoing link to each peer and each peer's link to it), ms; and that moment, Unix ms.
    #[serde(default)]
    pub mesh_up_ms: Option<f64>,
    #[serde(default)]
    pub mesh_up_unix_ms: Option<u64>,
    /// New transfers committed (debits) by this process.
    pub transfers_sent: u64,
    /// Transfers applied (credits) by this process.
    pub transfers_applied: u64,
    /// Durable debit to the acknowledgement that covers it, µs.
    pub latency_us: LatencySummary,
    /// Durations of the store commits (one per step that wrote anything), µs.
    #[serde(default)]
    pub commit_us: LatencySummary,
    /// The initiator's completed snapshots (the newest 10,000).
    pub snapshots: Vec<SnapshotTime>,
    /// Transfers per wall-clock phase, with `--snapshot-phases` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phases: Option<Phases>,
}

/// One completed snapshot: start to global completion at the initiator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotTime {
    pub id: u64,
    pub duration_us: u64,
}

/// A histogram's summary, µs (count: values recorded).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    /// (upper bound in µs, count) of each non-empty bucket, for merging across branches.
    pub buckets: Vec<(u64, u64)>,
}

/// Transfers sent per wall-clock phase of `length_ms` (key: the phase's index, Unix ms divided
/// by `length_ms`; the newest 10,000 phases).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Phases {
    pub length_ms: u64,
    pub transfers: BTreeMap<u64, u64>,
}

impl StatsFile {
    /// Reads and parses a stats file.
    pub fn read(path: &std::path::Path) -> std::io::Result<StatsFile> {
        let bytes = std::fs::read(path)?;
        serde_json::from_slice(&bytes).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Index of the wall-clock phase of length `len` we are in.
pub fn phase_index(len: Duration) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    now / (len.as_millis() as u64).max(1)
}

impl Stats {
    /// Stats of branch `me` of `peers` branches (own index included).
    pub fn new(
        path: Option<PathBuf>,
        started: Instant,
        peers: usize,
        me: usize,
        phase: Option<Duration>,
    ) -> Stats {
        let mut seen = vec![false; peers];
        if let Some(own) = seen.get_mut(me) {
            *own = true;
        }
        let lone = peers <= 1;
        Stats {
            out_seen: seen.clone(),
            in_seen: seen,
            mesh_up: lone.then_some(Duration::ZERO),
            mesh_up_unix_ms: lone.then(unix_ms_now),
            path,
            started,
            store_open: None,
            first_transfer: None,
            unacked: vec![VecDeque::new(); peers],
            sent: vec![0; peers],
            acked: vec![0; peers],
            applied_total: 0,
            applied_at_start: None,
            transfers_sent: 0,
            // 1 µs .. 10 min, 2 significant figures: a few KiB.
            latency: Histogram::new_with_bounds(1, 600_000_000, 2)
                .expect("constant histogram bounds are valid"),
            commits: Histogram::new_with_bounds(1, 600_000_000, 2)
                .expect("constant histogram bounds are valid"),
            snapshots: VecDeque::new(),
            phase,
            phases: BTreeMap::new(),
        }
    }

    /// Every transfer's latency so far, in µs: durable debit to the acknowledgement covering it.
    pub fn latency(&self) -> &Histogram<u64> {
        &self.latency
    }

    /// The store is open and recovered; `st` is where it stands.
    pub fn store_opened(&mut self, st: &DurableState) {
        self.store_open = Some(self.started.elapsed());
        for (p, o) in st.out.iter().enumerate() {
            self.sent[p] = o.sent.0;
            self.acked[p] = o.acked.0;
        }
        self.applied_at_start = Some(st.inc.iter().map(|i| i.applied.0).sum());
    }

    /// After a step's batch is durable and its messages handed to the links. Returns the time
    /// since start when this step sent the process's first new transfer.
    pub fn after_step(&mut self, st: &DurableState) -> Option<Duration> {
        let now = Instant::now();
        let mut new = 0;
        for (p, o) in st.out.iter().enumerate() {
            if o.sent.0 > self.sent[p] {
                new += o.sent.0 - self.sent[p];
                self.unacked[p].push_back((o.sent.0, now));
                self.sent[p] = o.sent.0;
            }
            if o.acked.0 > self.acked[p] {
                let mut from = self.acked[p];
                let acked = o.acked.0;
                while let Some(&(last, at)) = self.unacked[p].front() {
                    let upto = last.min(acked);
                    if upto > from {
                        let us = now.duration_since(at).as_micros().max(1) as u64;
                        let _ = self.latency.record_n(us, upto - from);
                        from = upto;
                    }
                    if last <= acked {
                        self.unacked[p].pop_front();
                    } else {
                        break;
                    }
                }
                self.acked[p] = acked;
            }
        }
        let mut first = None;
        if new > 0 {
            self.transfers_sent += new;
            if self.first_transfer.is_none() {
                self.first_transfer = Some(self.started.elapsed());
                first = self.first_transfer;
            }
            if let Some(len) = self.phase {
                *self.phases.entry(phase_index(len)).or_default() += new;
                while self.phases.len() > PHASES_KEPT_MAX {
                    self.phases.pop_first();
                }
            }
        }
        self.applied_total = st.inc.iter().map(|i| i.applied.0).sum();
        first
    }

    /// The link to (`outgoing`) or from `peer` came up.
    pub fn link_up(&mut self, peer: usize, outgoing: bool) {
        let seen = if outgoing {
            &mut self.out_seen
        } else {
            &mut self.in_seen
        };
        if let Some(s) = seen.get_mut(peer) {
            *s = true;
        }
        if self.mesh_up.is_none() && self.out_seen.iter().chain(&self.in_seen).all(|s| *s) {
            self.mesh_up = Some(self.started.elapsed());
            self.mesh_up_unix_ms = Some(unix_ms_now());
        }
    }

    /// Process start to the first moment every link had been up.
    pub fn mesh_up(&self) -> Option<Duration> {
        self.mesh_up
    }

    /// A step's batch took `d` to become durable.
    pub fn commit_took(&mut self, d: Duration) {
        let _ = self.commits.record(d.as_micros().max(1) as u64);
    }

    /// The initiator saw snapshot `id` complete, `duration_us` after it started it.
    pub fn snapshot_completed(&mut self, id: u64, duration_us: u64) {
        self.snapshots.push_back(SnapshotTime { id, duration_us });
        if self.snapshots.len() > SNAPSHOTS_KEPT_MAX {
            self.snapshots.pop_front();
        }
    }

    /// Rewrites the stats file (atomically), if there is one.
    pub fn write(&self, branch: &str) {
        let Some(path) = &self.path else { return };
        let summary = |h: &Histogram<u64>| LatencySummary {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            buckets: h
                .iter_recorded()
                .map(|v| {
                    (
                        h.highest_equivalent(v.value_iterated_to()),
                        v.count_at_value(),
                    )
                })
                .collect(),
        };
        let file = StatsFile {
            branch: branch.to_string(),
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            store_open_ms: self.store_open.map(ms),
            first_transfer_ms: self.first_transfer.map(ms),
            mesh_up_ms: self.mesh_up.map(ms),
            mesh_up_unix_ms: self.mesh_up_unix_ms,
            transfers_sent: self.transfers_sent,
            transfers_applied: self
                .applied_total
                .saturating_sub(self.applied_at_start.unwrap_or(self.applied_total)),
            latency_us: summary(&self.latency),
            commit_us: summary(&self.commits),
            snapshots: self.snapshots.iter().cloned().collect(),
            phases: self.phase.map(|len| Phases {
                length_ms: len.as_millis() as u64,
                transfers: self.phases.clone(),
            }),
        };
        let written = serde_json::to_vec(&file)
            .map_err(std::io::Error::other)
            .and_then(|bytes| crate::durable::write_atomic(path, &bytes, None));
        if let Err(e) = written {
            tracing::warn!("cannot write stats file {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mesh is up once every link, both ways, has been up once; not before.
    #[test]
    fn the_mesh_is_up_when_every_link_both_ways_has_been() {
        let mut s = Stats::new(None, Instant::now(), 3, 1, None);
        s.link_up(0, true);
        s.link_up(2, true);
        s.link_up(0, false);
        assert_eq!(s.mesh_up(), None, "the link from 2 is missing");
        s.link_up(2, false);
        assert!(s.mesh_up().is_some());
        assert!(
            Stats::new(None, Instant::now(), 1, 0, None)
                .mesh_up()
                .is_some(),
            "a lone branch"
        );
    }

    fn sample(phases: bool) -> StatsFile {
        let summary = LatencySummary {
            count: 3,
            p50: 10,
            p90: 20,
            p99: 30,
            p999: 30,
            max: 31,
            buckets: vec![(10, 1), (31, 2)],
        };
        StatsFile {
            branch: "127.0.0.1:7000".into(),
            pid: 42,
            uptime_s: 1.5,
            store_open_ms: Some(2.25),
            first_transfer_ms: None,
            mesh_up_ms: Some(12.5),
            mesh_up_unix_ms: Some(1_700_000_000_000),
            transfers_sent: 7,
            transfers_applied: 5,
            latency_us: summary.clone(),
            commit_us: summary,
            snapshots: vec![SnapshotTime {
                id: 1,
                duration_us: 900,
            }],
            phases: phases.then(|| Phases {
                length_ms: 2000,
                transfers: BTreeMap::from([(864_000_000, 3), (864_000_001, 4)]),
            }),
        }
    }

    #[test]
    fn the_file_keeps_its_keys_and_reads_back() {
        let f = sample(true);
        let v = serde_json::to_value(&f).expect("encode");
        let keys: Vec<&str> = v
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "branch",
                "commit_us",
                "first_transfer_ms",
                "latency_us",
                "mesh_up_ms",
                "mesh_up_unix_ms",
                "phases",
                "pid",
                "snapshots",
                "store_open_ms",
                "transfers_applied",
                "transfers_sent",
                "uptime_s"
            ]
        );
        assert_eq!(v["first_transfer_ms"], serde_json::Value::Null);
        assert_eq!(
            v["latency_us"]["buckets"],
            serde_json::json!([[10, 1], [31, 2]])
        );
        assert_eq!(
            v["snapshots"],
            serde_json::json!([{"id": 1, "duration_us": 900}])
        );
        assert_eq!(
            v["phases"],
            serde_json::json!({"length_ms": 2000, "transfers": {"864000000": 3, "864000001": 4}})
        );
        let back: StatsFile = serde_json::from_value(v).expect("decode");
        assert_eq!(back, f);
    }

    #[test]
    fn no_phases_no_key_and_an_older_file_reads() {
        let f = sample(false);
        let mut v = serde_json::to_value(&f).expect("encode");
        assert!(v.get("phases").is_none());
        // A bank from before `commit_us`.
        let obj = v.as_object_mut().expect("an object");
        for key in ["commit_us", "mesh_up_ms", "mesh_up_unix_ms"] {
            obj.remove(key);
        }
        let back: StatsFile = serde_json::from_value(v).expect("decode");
        assert_eq!(back.commit_us, LatencySummary::default());
        assert_eq!(back.mesh_up_ms, None);
        assert_eq!(back.latency_us, f.latency_us);
    }
}
