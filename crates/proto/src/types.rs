//! Newtypes shared by every layer: who, which snapshot, which position on a channel.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A branch's index in `host.list` (0-based, in file order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BranchId(pub u16);

impl BranchId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for BranchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A global snapshot's id. Ids start at 1 and only grow, also across restarts.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct SnapshotId(pub u64);

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A transfer's position on its channel i→j. Transfers are numbered densely from 1;
/// `Seq(0)` means "nothing yet".
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Seq(pub u64);

impl Seq {
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Money, in indivisible units.
pub type Amount = u64;

/// Wall-clock time in microseconds since the Unix epoch, passed *into* the core by its shell.
pub type Micros = u64;

/// The seeded generator of the core's transfers and of the simulator: ChaCha8, whose stream
/// `rand_chacha` fixes for a given seed (rand's `StdRng` may change between versions), so a
/// printed seed replays.
pub type SeededRng = rand_chacha::ChaCha8Rng;
