//! Transfer latency for `snapctl report --stats DIR`. A store holds no per-transfer time (a
//! debit's commit and the acknowledgement covering it are not recorded with times), so latency
//! comes from the branches' `--stats-file` JSON (`crate::net::stats::StatsFile`): each file is one
//! `bank` process's histogram of durable debit → covering acknowledgement, over its lifetime.
//! Every `*.json` file of DIR is one row; the rows' buckets merge into the cluster's percentiles.

use super::figures::percentile_of_buckets;
use crate::net::stats::StatsFile;
use std::path::Path;
use std::time::UNIX_EPOCH;

/// Stats files read at most (a directory with more is refused rather than read for minutes).
pub const STATS_FILES_MAX: usize = 10_000;

/// One stats file: one `bank` process.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessLatency {
    /// The file's name in the directory.
    pub file: String,
    /// When the file was last written (Unix µs), if the file system says.
    pub written_at: Option<u64>,
    pub stats: StatsFile,
}

/// The latency rows and what merges them.
#[derive(Clone, Debug, PartialEq)]
pub struct Latency {
    /// The directory read.
    pub source: String,
    /// Sorted by branch, then by when they were written.
    pub processes: Vec<ProcessLatency>,
}

impl Latency {
    /// Reads every `*.json` file of `dir` as a stats file; one line naming the directory or the
    /// file on any failure, or when there is none.
    pub fn read_dir(dir: &Path) -> Result<Latency, String> {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| format!("cannot read the stats directory {}: {e}", dir.display()))?;
        let mut processes = Vec::new();
        for entry in entries {
            let entry = entry
                .map_err(|e| format!("cannot list the stats directory {}: {e}", dir.display()))?;
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") || !path.is_file() {
                continue;
            }
            if processes.len() == STATS_FILES_MAX {
                return Err(format!(
                    "the stats directory {} has more than {STATS_FILES_MAX} .json files; give a \
                     directory of one cluster's --stats-file files",
                    dir.display()
                ));
            }
            let stats = StatsFile::read(&path).map_err(|e| {
                format!(
                    "stats file {}: {e} (expected the JSON a branch writes with bank --stats-file)",
                    path.display()
                )
            })?;
            let written_at = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_micros() as u64);
            processes.push(ProcessLatency {
                file: entry.file_name().to_string_lossy().into_owned(),
                written_at,
                stats,
            });
        }
        if processes.is_empty() {
            return Err(format!(
                "no .json stats files in {} (run the branches with bank --stats-file {}/NAME.json)",
                dir.display(),
                dir.display()
            ));
        }
        processes.sort_by(|a, b| {
            (&a.stats.branch, a.written_at, &a.file).cmp(&(&b.stats.branch, b.written_at, &b.file))
        });
        Ok(Latency {
            source: dir.display().to_string(),
            processes,
        })
    }

    /// Transfers measured over all files.
    pub fn count(&self) -> u64 {
        self.processes
            .iter()
            .map(|p| p.stats.latency_us.count)
            .sum()
    }

    /// p50, p90, p99, p99.9 and max over all files, µs, from their merged buckets (bucket upper
    /// bounds, nearest rank); `None` when no transfer was measured.
    pub fn merged(&self) -> Option<[u64; 5]> {
        let mut buckets: Vec<(u64, u64)> = self
            .processes
            .iter()
            .flat_map(|p| p.stats.latency_us.buckets.iter().copied())
            .collect();
        buckets.sort_unstable();
        let q = |p| percentile_of_buckets(&buckets, p);
        Some([q(500)?, q(900)?, q(990)?, q(999)?, buckets.last()?.0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::stats::LatencySummary;

    fn stats(branch: &str, buckets: Vec<(u64, u64)>) -> StatsFile {
        StatsFile {
            branch: branch.into(),
            pid: 7,
            uptime_s: 3.0,
            store_open_ms: None,
            first_transfer_ms: None,
            mesh_up_ms: None,
            mesh_up_unix_ms: None,
            transfers_sent: 0,
            transfers_applied: 0,
            latency_us: LatencySummary {
                count: buckets.iter().map(|b| b.1).sum(),
                buckets,
                ..Default::default()
            },
            commit_us: LatencySummary::default(),
            snapshots: vec![],
            phases: None,
        }
    }

    #[test]
    fn stats_files_merge_and_bad_ones_are_one_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = Latency::read_dir(dir.path()).unwrap_err();
        assert!(e.starts_with("no .json stats files in"), "{e}");
        let write = |name: &str, s: &StatsFile| {
            let json = serde_json::to_vec(s).expect("json");
            std::fs::write(dir.path().join(name), json).expect("write");
        };
        write("1.json", &stats("b:2", vec![(100, 98), (5000, 2)]));
        write("0.json", &stats("a:1", vec![(200, 100)]));
        std::fs::write(dir.path().join("notes.txt"), "ignored").expect("write");
        let l = Latency::read_dir(dir.path()).expect("read");
        assert_eq!(l.processes.len(), 2);
        assert_eq!(l.processes[0].stats.branch, "a:1");
        assert_eq!(l.count(), 200);
        // 200 transfers, 98 ≤ 100 µs, 100 more ≤ 200 µs: p50 is the 100th (≤ 200 µs), p99 the
        // 198th (≤ 200 µs), p99.9 the 200th (≤ 5 ms).
        assert_eq!(l.merged(), Some([200, 200, 200, 5000, 5000]));
        std::fs::write(dir.path().join("2.json"), "{").expect("write");
        let e = Latency::read_dir(dir.path()).unwrap_err();
        assert!(e.contains("2.json") && e.contains("--stats-file"), "{e}");
        assert_eq!(e.lines().count(), 1);
        let e = Latency::read_dir(&dir.path().join("none")).unwrap_err();
        assert!(e.starts_with("cannot read the stats directory"), "{e}");
    }
}
