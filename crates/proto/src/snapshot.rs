//! What a snapshot is made of: each branch's local part and the initiator's global assembly.
//! Plain data, shared by the protocol core, the wire, the store and the audit.

use crate::types::{Amount, BranchId, Micros, Seq, SnapshotId};
use serde::{Deserialize, Serialize};

/// The recorded state of one incoming channel `from → branch` for a snapshot: every transfer
/// with a sequence number in `(applied_at_record, until]`, i.e. those the receiver applied after it
/// recorded its own state and before the channel's marker arrived.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelRecord {
    pub from: BranchId,
    /// The receiver's watermark on this channel when it recorded its state.
    pub applied_at_record: Seq,
    /// The sender's last sequence number when *it* recorded its state (carried by the marker).
    pub until: Seq,
    /// Money in flight on the channel at the cut.
    pub money: Amount,
    /// How many transfers that money is made of (`until - applied_at_record`).
    pub count: u64,
}

/// One branch's part of snapshot `snapshot`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalPart {
    pub snapshot: SnapshotId,
    pub branch: BranchId,
    /// When the branch recorded its state.
    pub recorded_at: Micros,
    pub balance: Amount,
    /// Last sequence number on each outgoing channel at the cut.
    pub sent: Vec<(BranchId, Seq)>,
    /// Each incoming channel's recorded state.
    pub channels: Vec<ChannelRecord>,
}

impl LocalPart {
    /// Money this part accounts for: the balance plus what was in flight towards this branch.
    pub fn money(&self) -> u128 {
        self.balance as u128 + self.channels.iter().map(|c| c.money as u128).sum::<u128>()
    }

    pub fn sent_to(&self, peer: BranchId) -> Option<Seq> {
        self.sent.iter().find(|(p, _)| *p == peer).map(|(_, s)| *s)
    }

    pub fn channel_from(&self, peer: BranchId) -> Option<&ChannelRecord> {
        self.channels.iter().find(|c| c.from == peer)
    }
}

/// A completed global snapshot, assembled and kept whole by the initiator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalSnapshot {
    pub snapshot: SnapshotId,
    pub started_at: Micros,
    pub completed_at: Micros,
    pub expected_total: Amount,
    pub total: u128,
    /// One part per branch, in branch order.
    pub parts: Vec<LocalPart>,
}

impl GlobalSnapshot {
    pub fn duration_us(&self) -> u64 {
        self.completed_at.saturating_sub(self.started_at)
    }

    pub fn conserves_money(&self) -> bool {
        self.total == self.expected_total as u128
    }
}

/// A snapshot this branch is still waiting on, and what for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub snapshot: SnapshotId,
    /// When this branch recorded its state for it (initiator: when it started it).
    pub since: Micros,
    /// Incoming channels whose marker has not arrived.
    pub markers_from: Vec<BranchId>,
    /// Initiator: branches whose part has not arrived.
    pub parts_from: Vec<BranchId>,
}
