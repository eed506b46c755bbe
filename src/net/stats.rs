//! What a branch measures about itself for `--stats-file` (read by `tools/bench`): transfer
//! latency from durable debit to the acknowledgement that covers it, snapshot durations, start-up
//! timings, and transfers per wall-clock phase. Measured in the shell; the core only exposes
//! its sequence numbers.

use crate::core::DurableState;
use hdrhistogram::Histogram;
use serde::Serialize;
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
}

#[derive(Clone, Serialize)]
struct SnapshotTime {
    id: u64,
    duration_us: u64,
}

#[derive(Serialize)]
struct Latency {
    count: u64,
    p50: u64,
    p90: u64,
    p99: u64,
    p999: u64,
    max: u64,
    /// (upper bound in µs, count) of each non-empty bucket, for merging across branches.
    buckets: Vec<(u64, u64)>,
}

#[derive(Serialize)]
struct Phases {
    length_ms: u64,
    transfers: BTreeMap<String, u64>,
}

#[derive(Serialize)]
struct File<'a> {
    branch: &'a str,
    pid: u32,
    uptime_s: f64,
    store_open_ms: Option<f64>,
    first_transfer_ms: Option<f64>,
    transfers_sent: u64,
    transfers_applied: u64,
    latency_us: Latency,
    /// Durations of the store commits (one per step that wrote anything).
    commit_us: Latency,
    snapshots: Vec<SnapshotTime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    phases: Option<Phases>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
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
    pub fn new(
        path: Option<PathBuf>,
        started: Instant,
        peers: usize,
        phase: Option<Duration>,
    ) -> Stats {
        Stats {
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
        let summary = |h: &Histogram<u64>| Latency {
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
        let file = File {
            branch,
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            store_open_ms: self.store_open.map(ms),
            first_transfer_ms: self.first_transfer.map(ms),
            transfers_sent: self.transfers_sent,
            transfers_applied: self
                .applied_total
                .saturating_sub(self.applied_at_start.unwrap_or(self.applied_total)),
            latency_us: summary(&self.latency),
            commit_us: summary(&self.commits),
            snapshots: self.snapshots.iter().cloned().collect(),
            phases: self.phase.map(|len| Phases {
                length_ms: len.as_millis() as u64,
                transfers: self
                    .phases
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect(),
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
