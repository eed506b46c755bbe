//! Reading the branches' `--stats-file`s ([`StatsFile`], the format the branch writes).

use crate::clock::pause;
use crate::cluster::Cluster;
use anyhow::Result;
use snapbank::net::stats::StatsFile;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

/// One branch's stats file as read at one moment.
#[derive(Clone)]
pub struct Stats {
    pub file: StatsFile,
    /// When the branch last rewrote it.
    pub modified: Option<SystemTime>,
}

impl Stats {
    /// The file at `path`, if there is one and it parses.
    pub fn read(path: &Path) -> Option<Stats> {
        let file = StatsFile::read(path).ok()?;
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        Some(Stats { file, modified })
    }

    pub fn pid(&self) -> u32 {
        self.file.pid
    }

    /// Latency histogram buckets: upper bound in µs -> count.
    pub fn buckets(&self) -> BTreeMap<u64, u64> {
        let mut m = BTreeMap::new();
        for &(upper, count) in &self.file.latency_us.buckets {
            *m.entry(upper).or_insert(0) += count;
        }
        m
    }

    /// Completed snapshots (initiator): id -> duration in µs.
    pub fn snapshots(&self) -> BTreeMap<u64, u64> {
        self.file
            .snapshots
            .iter()
            .map(|s| (s.id, s.duration_us))
            .collect()
    }

    /// Transfers per phase index, and the phase length in ms.
    pub fn phases(&self) -> Option<(u64, &BTreeMap<u64, u64>)> {
        let p = self.file.phases.as_ref()?;
        Some((p.length_ms, &p.transfers))
    }

    fn written_since(&self, after: SystemTime) -> bool {
        self.modified.is_some_and(|m| m >= after)
    }
}

pub fn read_all_stats(cluster: &Cluster) -> Vec<Option<Stats>> {
    cluster.stats.iter().map(|p| Stats::read(p)).collect()
}

/// Waits until every branch's stats file was written at or after `after` (so it holds counts of
/// every phase that ended by then); returns what it read.
pub fn fresh_stats(
    cluster: &mut Cluster,
    after: SystemTime,
    timeout: Duration,
) -> Result<Vec<Option<Stats>>> {
    let end = Instant::now() + timeout;
    loop {
        cluster.check_alive()?;
        let all = read_all_stats(cluster);
        let fresh = all
            .iter()
            .all(|s| s.as_ref().is_some_and(|s| s.written_since(after)));
        if fresh || Instant::now() >= end {
            if !fresh {
                let stale: Vec<&str> = all
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| !s.as_ref().is_some_and(|s| s.written_since(after)))
                    .map(|(i, _)| cluster.addr(i))
                    .collect();
                eprintln!(
                    "bench: stats files not rewritten within {timeout:?}: {}",
                    stale.join(", ")
                );
            }
            return Ok(all);
        }
        pause(Duration::from_millis(50))?;
    }
}
