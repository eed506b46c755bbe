//! The messages branches exchange, their checks and their CBOR encoding (the framing that
//! carries them over a connection is the shell's: `snapbank::wire`).
//!
//! A frame on the wire is a 4-byte big-endian length followed by that many bytes of CBOR encoding
//! one [`Message`]. Frames larger than [`FRAME_BYTES_MAX`] are refused before any allocation.
//! Each TCP connection is dialled by the sender of one channel `i → j`: `i` sends `Hello`, then
//! its `Position`, waits for `j`'s first `Ack`, then sends `Transfers`, `Marker`, `Part` and (from
//! the initiator) `Compact`; `j` answers `Hello` once and then only `Ack`. An operator's control
//! connection (`snapctl status`, `snapctl snapshot`)
//! carries `Request`s one way and `Reply`s the other.

use crate::snapshot::{GlobalSnapshot, LocalPart, Pending};
use crate::types::{Amount, BranchId, Seq, SnapshotId};
use serde::{Deserialize, Serialize};

/// Largest frame accepted or sent.
pub const FRAME_BYTES_MAX: usize = 1 << 20;
/// Most transfers carried by one `Transfers` message.
pub const TRANSFERS_PER_FRAME_MAX: usize = 1024;

/// Most branches a cluster may have. The largest message is one global snapshot
/// (`Reply::Global`): a part per branch, each with a channel record and a `sent` entry per peer,
/// so it grows with the square of the cluster; at this size it still fits in one frame (the
/// assertion below, and the test that encodes the worst case).
pub const BRANCHES_MAX: usize = 100;
/// Bytes of one CBOR-encoded `ChannelRecord` (field names included) with every number at its
/// largest; `sent` entries of a part are [`SENT_ENTRY_BYTES_MAX`]. Tests check both.
pub const CHANNEL_RECORD_BYTES_MAX: usize = 84;
pub const SENT_ENTRY_BYTES_MAX: usize = 16;
/// Bytes of a part's own fields and of a message's envelope, beside the per-peer entries.
pub const PART_FIELDS_BYTES_MAX: usize = 128;
pub const ENVELOPE_BYTES_MAX: usize = 256;

const _: () = assert!(
    ENVELOPE_BYTES_MAX
        + BRANCHES_MAX
            * (PART_FIELDS_BYTES_MAX
                + (BRANCHES_MAX - 1) * (CHANNEL_RECORD_BYTES_MAX + SENT_ENTRY_BYTES_MAX))
        <= FRAME_BYTES_MAX,
    "a global snapshot of BRANCHES_MAX branches must fit in one frame"
);
const _: () = assert!(
    ENVELOPE_BYTES_MAX + TRANSFERS_PER_FRAME_MAX * 9 <= FRAME_BYTES_MAX,
    "a full Transfers message must fit in one frame"
);
const _: () = assert!(BRANCHES_MAX <= u16::MAX as usize, "branch ids are u16");

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// First frame on a connection, both ways: who is talking, to whom, in which cluster.
    Hello {
        cluster: u64,
        from: BranchId,
        to: BranchId,
    },
    /// Transfers `first, first+1, …` on the sender's channel to the receiver.
    Transfers { first: Seq, amounts: Vec<Amount> },
    /// Chandy–Lamport marker for `snapshot`, placed after transfer `after` on this channel.
    Marker { snapshot: SnapshotId, after: Seq },
    /// A branch's completed part of a snapshot, sent to the initiator.
    Part(LocalPart),
    /// Cumulative acknowledgement from the receiver: everything up to these is durable.
    Ack {
        applied: Seq,
        marker: SnapshotId,
        part: SnapshotId,
    },
    /// From the initiator: global snapshot `snapshot` is complete; `below` lists, per receiver
    /// of the addressee's channels (in branch order), the watermark that receiver recorded in
    /// it. The addressee may drop its transfer log up to there (once acknowledged).
    Compact {
        snapshot: SnapshotId,
        below: Vec<(BranchId, Seq)>,
    },
    /// From an operator, on a control connection.
    Request(Request),
    /// A branch's answer to a [`Request`].
    Reply(Reply),
    /// First message of the sender on every new connection of its channel `i → j`: where its
    /// store says the channel stands. The sender sends nothing else on the connection until the
    /// receiver's first [`Message::Ack`] told it where the receiver stands, so two ends whose
    /// stores disagree (one went back in time: rolled back, replaced, or a power cut took writes
    /// it had acknowledged) find out before either acts on it.
    Position(Position),
}

/// Where a channel `i → j` stands, as its sender `i`'s store has it: the sender's own counters
/// (which the receiver's can never exceed) and what the receiver acknowledged (which the
/// receiver's can never be below).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Transfers the sender ever sent on the channel.
    pub sent: Seq,
    /// Highest snapshot the sender recorded (its markers on the channel go no further).
    pub last_recorded: SnapshotId,
    /// Highest snapshot part the sender completed (towards the initiator).
    pub parts_done: SnapshotId,
    /// Highest transfer the receiver acknowledged as applied.
    pub acked: Seq,
    /// Highest marker the receiver acknowledged.
    pub marker_acked: SnapshotId,
    /// Highest part the receiver (the initiator) acknowledged.
    pub part_acked: SnapshotId,
}

/// What an operator can ask a running branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// How the branch is doing: [`BranchStatus`].
    Status,
    /// Initiator only: start a snapshot now and answer when it is complete.
    Snapshot,
    /// Initiator only: a completed global snapshot it keeps (`None`: the latest).
    Global { snapshot: Option<SnapshotId> },
    /// This branch's own part of a snapshot, if it keeps it.
    Part { snapshot: SnapshotId },
    /// Count and money of this branch's logged transfers `(after, upto]` to each `peer`.
    LogSums { ranges: Vec<(BranchId, Seq, Seq)> },
    /// This branch's own parts of these snapshots (those it keeps), and what it has compacted
    /// and pruned, in one step: [`Reply::Parts`].
    Parts { snapshots: Vec<SnapshotId> },
}

/// Most ranges one [`Request::LogSums`] may ask for.
pub const LOG_RANGES_MAX: usize = 4096;
/// Most snapshots one [`Request::Parts`] may ask for.
pub const PARTS_PER_REQUEST_MAX: usize = 256;

/// One answer of [`Reply::LogSums`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeSum {
    pub count: u64,
    pub money: u128,
    /// The log holds every transfer of the range.
    pub whole: bool,
    /// The channel's `compacted` when the sum was taken: the log holds `(compacted, sent]`, so
    /// a range that is not whole and starts below it was compacted, one at or above it lost.
    #[serde(default)]
    pub compacted: Seq,
}

/// What a branch no longer keeps: the start of its history, the snapshots it pruned and, per
/// outgoing channel, how far its transfer log may have been compacted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// The transfer log and the ledger are complete from this snapshot's cut on.
    pub history_from: SnapshotId,
    /// Parts (and, at the initiator, global snapshots) older than this have been pruned.
    pub pruned_below: SnapshotId,
    /// Per peer (own index unused): log entries up to this seq may have been dropped.
    pub compacted: Vec<Seq>,
    /// What this branch held at its epoch's genesis, where its ledger begins (`None` from
    /// builds before epochs: the initial balance, the same at every branch).
    #[serde(default)]
    pub genesis: Option<Amount>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Status(BranchStatus),
    /// The snapshot a [`Request::Snapshot`] started is complete (and durable).
    SnapshotDone {
        snapshot: SnapshotId,
        duration_us: u64,
        total: u128,
        expected: Amount,
    },
    /// The request cannot be served here, and why.
    Refused(String),
    Global(Option<GlobalSnapshot>),
    Part(Option<LocalPart>),
    /// One sum per requested range, in order.
    LogSums(Vec<RangeSum>),
    /// One answer per requested snapshot, in order (`None`: not kept), and what the branch
    /// had compacted and pruned when it answered.
    Parts {
        parts: Vec<Option<LocalPart>>,
        retention: Retention,
    },
}

/// A running branch's answer to [`Request::Status`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchStatus {
    pub branch: BranchId,
    pub initiator: bool,
    pub balance: Amount,
    /// Peers this branch's outgoing links are connected to.
    pub links_up: Vec<BranchId>,
    /// Peers connected to this branch (their outgoing links).
    pub inbound_up: Vec<BranchId>,
    /// Transfers sent, and applied from others, since genesis.
    pub sent: u64,
    pub applied: u64,
    /// Sent and not yet acknowledged.
    pub unacked: u64,
    pub unacked_money: u128,
    /// The initiator: the last global snapshot completed; others: the last part completed.
    pub last_snapshot: SnapshotId,
    /// Snapshots this branch waits on, and for what.
    pub pending: Vec<Pending>,
    pub uptime_ms: u64,
    /// Times this branch's store was opened by `bank` before this start.
    pub restarts: u64,
    /// Start of the history the transfer logs still hold (the last compaction's snapshot).
    pub history_from: SnapshotId,
    /// Initiator: the first completed snapshot that did not conserve money (0: none); from it
    /// on nothing is compacted or pruned.
    #[serde(default)]
    pub unconserved_since: SnapshotId,
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("frame of {0} bytes exceeds the limit of {FRAME_BYTES_MAX}")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("invalid message: {0}")]
    Invalid(String),
    #[error("frame failed authentication (forged, tampered, replayed, reordered or reflected)")]
    Unauthentic,
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
}

impl Message {
    /// Checks what the types cannot: bounds and non-zero amounts.
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            Message::Transfers { first, amounts } => {
                if amounts.is_empty() || amounts.len() > TRANSFERS_PER_FRAME_MAX {
                    return Err(WireError::Invalid(format!(
                        "Transfers carries {} amounts (1..={TRANSFERS_PER_FRAME_MAX})",
                        amounts.len()
                    )));
                }
                if first.0 == 0 || first.0.checked_add(amounts.len() as u64).is_none() {
                    return Err(WireError::Invalid(format!(
                        "Transfers starts at seq {first}"
                    )));
                }
                if amounts.contains(&0) {
                    return Err(WireError::Invalid("Transfers carries amount 0".into()));
                }
                Ok(())
            }
            Message::Marker { snapshot, .. } if snapshot.0 == 0 => {
                Err(WireError::Invalid("Marker for snapshot 0".into()))
            }
            Message::Part(p) if p.snapshot.0 == 0 => {
                Err(WireError::Invalid("Part of snapshot 0".into()))
            }
            Message::Compact { snapshot, .. } if snapshot.0 == 0 => {
                Err(WireError::Invalid("Compact for snapshot 0".into()))
            }
            Message::Position(p) if p.acked > p.sent => Err(WireError::Invalid(format!(
                "Position: seq {} acknowledged of only {} sent",
                p.acked, p.sent
            ))),
            Message::Position(p) if p.marker_acked > p.last_recorded => {
                Err(WireError::Invalid(format!(
                    "Position: marker {} acknowledged of only {} recorded",
                    p.marker_acked, p.last_recorded
                )))
            }
            Message::Position(p) if p.part_acked > p.parts_done => {
                Err(WireError::Invalid(format!(
                    "Position: part {} acknowledged of only {} done",
                    p.part_acked, p.parts_done
                )))
            }
            Message::Reply(Reply::SnapshotDone { snapshot, .. }) if snapshot.0 == 0 => {
                Err(WireError::Invalid("SnapshotDone for snapshot 0".into()))
            }
            Message::Request(Request::LogSums { ranges }) if ranges.len() > LOG_RANGES_MAX => Err(
                WireError::Invalid(format!("LogSums asks for {} ranges", ranges.len())),
            ),
            Message::Request(Request::Parts { snapshots })
                if snapshots.len() > PARTS_PER_REQUEST_MAX =>
            {
                Err(WireError::Invalid(format!(
                    "Parts asks for {} snapshots",
                    snapshots.len()
                )))
            }
            _ => Ok(()),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        // Writing into a Vec cannot fail and every message type serializes.
        ciborium::into_writer(self, &mut out).expect("CBOR encoding into a Vec");
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Message, WireError> {
        let mut rest = bytes;
        let msg: Message =
            ciborium::from_reader(&mut rest).map_err(|e| WireError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(WireError::Malformed(format!(
                "{} bytes after the message",
                rest.len()
            )));
        }
        msg.validate()?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::ChannelRecord;

    fn worst_record(from: u16) -> ChannelRecord {
        ChannelRecord {
            from: BranchId(from),
            applied_at_record: Seq(u64::MAX),
            until: Seq(u64::MAX),
            money: Amount::MAX,
            count: u64::MAX,
        }
    }

    fn cbor_len<T: Serialize>(v: &T) -> usize {
        let mut out = Vec::new();
        ciborium::into_writer(v, &mut out).expect("encode");
        out.len()
    }

    #[test]
    fn the_size_bounds_hold_for_the_largest_values() {
        assert!(cbor_len(&worst_record(u16::MAX)) <= CHANNEL_RECORD_BYTES_MAX);
        assert!(cbor_len(&(BranchId(u16::MAX), Seq(u64::MAX))) <= SENT_ENTRY_BYTES_MAX);
        let bare = LocalPart {
            snapshot: SnapshotId(u64::MAX),
            branch: BranchId(u16::MAX),
            recorded_at: u64::MAX,
            balance: Amount::MAX,
            sent: Vec::new(),
            channels: Vec::new(),
        };
        assert!(cbor_len(&bare) <= PART_FIELDS_BYTES_MAX);
    }

    /// The largest message there is: a global snapshot of `BRANCHES_MAX` branches, every number
    /// at its largest, fits in one frame.
    #[test]
    fn a_global_snapshot_of_the_largest_cluster_fits_in_a_frame() {
        let n = BRANCHES_MAX as u16;
        let parts = (0..n)
            .map(|b| LocalPart {
                snapshot: SnapshotId(u64::MAX),
                branch: BranchId(b),
                recorded_at: u64::MAX,
                balance: Amount::MAX,
                sent: (0..n)
                    .filter(|p| *p != b)
                    .map(|p| (BranchId(p), Seq(u64::MAX)))
                    .collect(),
                channels: (0..n).filter(|p| *p != b).map(worst_record).collect(),
            })
            .collect();
        let g = GlobalSnapshot {
            snapshot: SnapshotId(u64::MAX),
            started_at: u64::MAX,
            completed_at: u64::MAX,
            expected_total: Amount::MAX,
            total: u128::MAX,
            parts,
        };
        let len = Message::Reply(Reply::Global(Some(g))).encode().len();
        assert!(len <= FRAME_BYTES_MAX, "{len} bytes");
        println!("a global snapshot of {n} branches: {len} of {FRAME_BYTES_MAX} bytes");
    }
}
