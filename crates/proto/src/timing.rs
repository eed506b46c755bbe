//! The branch's timing policy: when it wants to be woken and what it does then. The shell (and
//! the simulator, on its virtual clock) asks [`Branch::poll_timeout`](crate::branch::Branch::poll_timeout)
//! for the next deadline, sleeps until it, and calls
//! [`Branch::handle_timeout`](crate::branch::Branch::handle_timeout); the core decides:
//! - the initiator's **first snapshot** as soon as its links to every branch are up (the moment
//!   it can reach them all), then one per [`Timing::snapshot_interval_us`] from there (a late
//!   wake-up delays the next one rather than bunching them);
//! - **pending warnings**: every [`PENDING_CHECK_US`] (or the warning limit, if shorter), each snapshot waiting longer than
//!   [`Timing::snapshot_warn_after_us`] is reported once per multiple of it, naming what it
//!   waits for ([`Notice::SnapshotSlow`](crate::branch::Notice::SnapshotSlow)).
//!
//! Time is the shell's [`Micros`] (wall-clock microseconds in the daemon), so nothing here reads
//! a clock.

use crate::snapshot::Pending;
use crate::types::{Micros, SnapshotId};
use std::collections::BTreeMap;

/// How often a branch looks for snapshots that wait too long.
pub const PENDING_CHECK_US: Micros = 1_000_000;

/// When a branch's timers fire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Initiator: time between the snapshots it starts on its own.
    pub snapshot_interval_us: Micros,
    /// A snapshot still waiting after this long is reported (again at each multiple).
    pub snapshot_warn_after_us: Micros,
    /// Benchmarks: the initiator starts snapshots only in even phases of this length of the
    /// clock (`now / len` even), so runs alternate phases with and without them.
    pub snapshot_phases_us: Option<Micros>,
}

impl Default for Timing {
    /// The daemon's defaults: a snapshot every 5 s, warnings after 10 s.
    fn default() -> Timing {
        Timing {
            snapshot_interval_us: 5_000_000,
            snapshot_warn_after_us: 10_000_000,
            snapshot_phases_us: None,
        }
    }
}

impl Timing {
    /// How often to look for snapshots waiting too long.
    pub fn pending_check_us(&self) -> Micros {
        PENDING_CHECK_US.min(self.snapshot_warn_after_us).max(1)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.snapshot_interval_us == 0 || self.snapshot_warn_after_us == 0 {
            return Err(format!(
                "the snapshot interval ({} µs) and the pending-snapshot warning (--snapshot-warn-after, {} µs) must be above zero",
                self.snapshot_interval_us, self.snapshot_warn_after_us
            ));
        }
        if self.snapshot_phases_us == Some(0) {
            return Err("snapshot phases must be longer than zero".into());
        }
        Ok(())
    }

    /// Whether snapshots may start at `now` (always, unless phases are set).
    pub fn snapshots_allowed_at(&self, now: Micros) -> bool {
        self.snapshot_phases_us
            .map_or(true, |len| (now / len.max(1)) % 2 == 0)
    }
}

/// The timers' state: not durable (a restarted branch arms them afresh).
#[derive(Clone, Debug, Default)]
pub struct Timers {
    /// Initiator: when the next interval snapshot is due; `None` until the first wake-up arms it.
    pub snapshot_at: Option<Micros>,
    /// Initiator: the first snapshot (taken once every link is up) is still to come.
    pub first_snapshot_due: bool,
    /// When to look for slow snapshots next; `None` until armed.
    pub pending_check_at: Option<Micros>,
    /// Per snapshot id, the warning level (multiples of the limit) last reported.
    pub warned: BTreeMap<u64, u64>,
}

/// A snapshot that has waited past a multiple of the warning limit, not reported at that
/// level yet.
pub fn slow_snapshots(
    timing: &Timing,
    warned: &mut BTreeMap<u64, u64>,
    pending: Vec<Pending>,
    now: Micros,
) -> Vec<(Pending, Micros)> {
    let limit = timing.snapshot_warn_after_us.max(1);
    warned.retain(|k, _| pending.iter().any(|p| p.snapshot == SnapshotId(*k)));
    let mut out = Vec::new();
    for p in pending {
        let waited = now.saturating_sub(p.since);
        let level = waited / limit;
        if level == 0 || warned.get(&p.snapshot.0) == Some(&level) {
            continue;
        }
        warned.insert(p.snapshot.0, level);
        out.push((p, waited));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::BranchId;

    fn pending(k: u64, since: Micros) -> Pending {
        Pending {
            snapshot: SnapshotId(k),
            since,
            markers_from: vec![BranchId(1)],
            parts_from: Vec::new(),
        }
    }

    #[test]
    fn a_slow_snapshot_is_reported_once_per_multiple_of_the_limit() {
        let t = Timing {
            snapshot_warn_after_us: 10,
            ..Timing::default()
        };
        let mut warned = BTreeMap::new();
        assert!(slow_snapshots(&t, &mut warned, vec![pending(1, 100)], 105).is_empty());
        let first = slow_snapshots(&t, &mut warned, vec![pending(1, 100)], 110);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].1, 10);
        assert!(slow_snapshots(&t, &mut warned, vec![pending(1, 100)], 119).is_empty());
        assert_eq!(
            slow_snapshots(&t, &mut warned, vec![pending(1, 100)], 120).len(),
            1
        );
        // Completed snapshots are forgotten.
        assert!(slow_snapshots(&t, &mut warned, Vec::new(), 200).is_empty());
        assert!(warned.is_empty());
    }

    #[test]
    fn phases_alternate() {
        let t = Timing {
            snapshot_phases_us: Some(100),
            ..Timing::default()
        };
        assert!(t.snapshots_allowed_at(0));
        assert!(t.snapshots_allowed_at(99));
        assert!(!t.snapshots_allowed_at(100));
        assert!(t.snapshots_allowed_at(200));
        assert!(Timing::default().snapshots_allowed_at(150));
    }

    #[test]
    fn zero_intervals_are_refused() {
        let t = Timing {
            snapshot_interval_us: 0,
            ..Timing::default()
        };
        assert!(t.validate().is_err());
        assert!(Timing::default().validate().is_ok());
    }
}
