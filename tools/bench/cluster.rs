//! One run's cluster: the kit's launcher ([`snapbank_testkit::Cluster`]) in `DIR/n<N>`, plus
//! each branch's stats file and how its last process ended. Every branch it started is killed
//! when it is dropped (and by the kernel if bench itself dies).

use crate::args::Args;
use crate::logs::log_tail;
use anyhow::{anyhow, bail, Context, Result};
use snapbank_testkit::{Bins, Dir};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Marks a directory as a bench run (which a new run may replace).
const RUN_MARKER: &str = ".snapbank-bench-run";

pub struct Cluster {
    pub kit: snapbank_testkit::Cluster,
    /// Whether the branches write `--stats-file`.
    pub stats_file: bool,
    /// Branch `i`'s stats file (`DIR/n<N>/stats/<i>.json`).
    pub stats: Vec<PathBuf>,
    /// How branch `i`'s last process ended, once it did.
    pub exit: Vec<Option<String>>,
}

impl Cluster {
    pub fn len(&self) -> usize {
        self.kit.len()
    }

    pub fn addr(&self, i: usize) -> &str {
        &self.kit.addrs[i]
    }

    pub fn log(&self, i: usize) -> PathBuf {
        self.kit.log_path(i)
    }

    /// When branch `i` was last started.
    pub fn started_at(&self, i: usize) -> Option<Instant> {
        self.kit.started_at[i].map(|(at, _)| at)
    }

    pub fn start(&mut self, i: usize) -> Result<()> {
        let bank = self.kit.bins.bank.clone();
        let extra: Vec<&OsStr> = if self.stats_file {
            vec![OsStr::new("--stats-file"), self.stats[i].as_os_str()]
        } else {
            Vec::new()
        };
        self.kit.try_start_with(i, &bank, &extra)?;
        self.exit[i] = None;
        Ok(())
    }

    /// The pid of branch `i` if it is a running child of ours (not yet reaped).
    pub fn live_pid(&mut self, i: usize) -> Option<u32> {
        self.kit.live_pid(i)
    }

    /// An error naming every branch that exited on its own, with the end of its log.
    pub fn check_alive(&mut self) -> Result<()> {
        let mut dead = Vec::new();
        for i in 0..self.len() {
            if let Some(st) = self.kit.exited(i) {
                self.exit[i] = Some(st.to_string());
                dead.push(format!(
                    "{} exited ({st}): {}",
                    self.addr(i),
                    log_tail(&self.log(i), 3)
                ));
            }
        }
        if dead.is_empty() {
            Ok(())
        } else {
            Err(anyhow!("branches died: {}", dead.join(" | ")))
        }
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(st) = self.kit.kill9(i) {
            self.exit[i] = Some(st.to_string());
        }
    }

    /// SIGTERM to every running branch, then waits up to `wait` (from the signal) for each;
    /// kills what is left. Returns the branches that did not exit 0.
    pub fn stop_all(&mut self, wait: Duration) -> Vec<String> {
        let mut bad = Vec::new();
        for (i, st) in self.kit.terminate_all(wait) {
            let addr = self.addr(i).to_string();
            match st {
                Some(st) if st.success() => self.exit[i] = Some(st.to_string()),
                Some(st) => {
                    self.exit[i] = Some(st.to_string());
                    bad.push(format!("{addr} exited {st}: {}", log_tail(&self.log(i), 2)));
                }
                None => {
                    self.exit[i] = Some(format!("killed after {wait:?} without exiting"));
                    bad.push(format!("{addr} did not exit within {wait:?} of SIGTERM"));
                }
            }
        }
        bad
    }
}

/// Makes `run_dir` a new run (replacing an old run there), writes host.list and the key, and
/// starts the branches.
pub fn setup(
    args: &Args,
    bins: &Bins,
    has_stats: bool,
    has_phases: bool,
    n: usize,
    run_dir: &Path,
) -> Result<Cluster> {
    if run_dir.exists() {
        if run_dir.join(RUN_MARKER).is_file() {
            std::fs::remove_dir_all(run_dir)
                .with_context(|| format!("remove the old run {}", run_dir.display()))?;
        } else if std::fs::read_dir(run_dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
        {
            bail!(
                "{} exists and is not a bench run; choose another --dir",
                run_dir.display()
            );
        }
    }
    std::fs::create_dir_all(run_dir.join("stats"))
        .with_context(|| format!("create {}", run_dir.display()))?;
    std::fs::write(run_dir.join(RUN_MARKER), "")?;
    let mut kit = snapbank_testkit::Cluster::create(
        bins.clone(),
        Dir::Kept(run_dir.to_path_buf()),
        &vec!["127.0.0.1"; n],
        !args.insecure,
    )
    .with_context(|| format!("write host.list and the key in {}", run_dir.display()))?;
    kit.kill_with_parent = true;
    kit.args = vec![
        "--transfer-interval".into(),
        args.transfer_interval.clone(),
        "--snapshot-interval".into(),
        humantime::format_duration(args.snapshot_interval).to_string(),
        "--status-interval".into(),
        "1s".into(),
    ];
    if has_phases {
        kit.args.push("--snapshot-phases".into());
        kit.args
            .push(humantime::format_duration(args.phase).to_string());
    }
    if args.insecure {
        kit.args.push("--insecure".into());
    }
    kit.args
        .extend(args.extra_bank_args.split_whitespace().map(str::to_string));
    let mut cluster = Cluster {
        kit,
        stats_file: has_stats,
        stats: (0..n)
            .map(|i| run_dir.join("stats").join(format!("{i}.json")))
            .collect(),
        exit: vec![None; n],
    };
    for i in 0..n {
        cluster.start(i)?;
    }
    Ok(cluster)
}
