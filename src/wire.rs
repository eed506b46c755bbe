//! The framing of [`Message`]s on a connection: a 4-byte big-endian length, then that many
//! bytes of CBOR (the messages themselves, their checks and encoding live in the protocol
//! crate, [`snapbank_proto::message`], re-exported here).

use bytes::{Bytes, BytesMut};
pub use snapbank_proto::message::*;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

/// Length-prefixed CBOR frames carrying [`Message`]s.
pub struct MessageCodec {
    frames: LengthDelimitedCodec,
}

impl Default for MessageCodec {
    fn default() -> Self {
        MessageCodec {
            frames: LengthDelimitedCodec::builder()
                .length_field_length(4)
                .max_frame_length(FRAME_BYTES_MAX)
                .new_codec(),
        }
    }
}

impl Decoder for MessageCodec {
    type Item = Message;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, WireError> {
        match self.frames.decode(src) {
            Ok(Some(frame)) => Message::decode(&frame).map(Some),
            Ok(None) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                Err(WireError::TooLarge(peek_len(src)))
            }
            Err(e) => Err(WireError::Io(e)),
        }
    }
}

fn peek_len(src: &BytesMut) -> usize {
    match src.get(..4) {
        Some(b) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize,
        None => 0,
    }
}

impl Encoder<Message> for MessageCodec {
    type Error = WireError;

    fn encode(&mut self, msg: Message, dst: &mut BytesMut) -> Result<(), WireError> {
        let bytes = msg.encode();
        if bytes.len() > FRAME_BYTES_MAX {
            return Err(WireError::TooLarge(bytes.len()));
        }
        self.frames
            .encode(Bytes::from(bytes), dst)
            .map_err(WireError::Io)
    }
}

/// A stable 64-bit FNV-1a hash, used for the cluster id (must not change across builds).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{ChannelRecord, LocalPart, Pending};
    use crate::types::{BranchId, Seq, SnapshotId};

    fn samples() -> Vec<Message> {
        vec![
            Message::Hello {
                cluster: 42,
                from: BranchId(1),
                to: BranchId(2),
            },
            Message::Transfers {
                first: Seq(7),
                amounts: vec![1, 100, 55],
            },
            Message::Marker {
                snapshot: SnapshotId(3),
                after: Seq(0),
            },
            Message::Part(LocalPart {
                snapshot: SnapshotId(3),
                branch: BranchId(1),
                recorded_at: 99,
                balance: 1000,
                sent: vec![(BranchId(0), Seq(4))],
                channels: vec![ChannelRecord {
                    from: BranchId(0),
                    applied_at_record: Seq(1),
                    until: Seq(3),
                    money: 20,
                    count: 2,
                }],
            }),
            Message::Ack {
                applied: Seq(5),
                marker: SnapshotId(2),
                part: SnapshotId(1),
            },
            Message::Compact {
                snapshot: SnapshotId(9),
                below: vec![(BranchId(0), Seq(12)), (BranchId(2), Seq(0))],
            },
            Message::Request(Request::Status),
            Message::Request(Request::Snapshot),
            Message::Request(Request::Global { snapshot: None }),
            Message::Request(Request::Part {
                snapshot: SnapshotId(2),
            }),
            Message::Request(Request::LogSums {
                ranges: vec![(BranchId(1), Seq(3), Seq(9))],
            }),
            Message::Reply(Reply::Part(None)),
            Message::Reply(Reply::Global(None)),
            Message::Reply(Reply::LogSums(vec![RangeSum {
                count: 6,
                money: 60,
                whole: true,
                compacted: Seq(2),
            }])),
            Message::Request(Request::Parts {
                snapshots: vec![SnapshotId(2), SnapshotId(3)],
            }),
            Message::Reply(Reply::Parts {
                parts: vec![None],
                retention: Retention {
                    history_from: SnapshotId(3),
                    pruned_below: SnapshotId(1),
                    compacted: vec![Seq(0), Seq(4)],
                    genesis: Some(1000),
                },
            }),
            Message::Reply(Reply::Status(BranchStatus {
                branch: BranchId(1),
                initiator: false,
                balance: 10,
                links_up: vec![BranchId(0)],
                inbound_up: vec![BranchId(0), BranchId(2)],
                sent: 5,
                applied: 4,
                unacked: 1,
                unacked_money: 7,
                last_snapshot: SnapshotId(3),
                pending: vec![Pending {
                    snapshot: SnapshotId(4),
                    since: 12,
                    markers_from: vec![BranchId(2)],
                    parts_from: vec![],
                }],
                uptime_ms: 1000,
                restarts: 2,
                history_from: SnapshotId(3),
                unconserved_since: SnapshotId(0),
            })),
            Message::Reply(Reply::SnapshotDone {
                snapshot: SnapshotId(4),
                duration_us: 1500,
                total: 30,
                expected: 30,
            }),
            Message::Reply(Reply::Refused("not the initiator".into())),
        ]
    }

    #[test]
    fn every_message_round_trips_through_the_codec() {
        let mut codec = MessageCodec::default();
        let mut buf = BytesMut::new();
        for m in samples() {
            codec.encode(m, &mut buf).unwrap();
        }
        for m in samples() {
            assert_eq!(codec.decode(&mut buf).unwrap(), Some(m));
        }
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn partial_frame_is_incomplete_not_an_error() {
        let mut codec = MessageCodec::default();
        let mut full = BytesMut::new();
        codec.encode(samples()[1].clone(), &mut full).unwrap();
        for cut in 0..full.len() {
            // The codec keeps the length it already read, so each cut gets a fresh one.
            let mut fresh = MessageCodec::default();
            let mut part = BytesMut::from(&full[..cut]);
            assert!(fresh.decode(&mut part).unwrap().is_none(), "cut {cut}");
            // Feeding the rest completes the frame.
            part.extend_from_slice(&full[cut..]);
            assert_eq!(fresh.decode(&mut part).unwrap(), Some(samples()[1].clone()));
        }
    }

    #[test]
    fn oversized_length_is_refused_without_allocating() {
        let mut codec = MessageCodec::default();
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(WireError::TooLarge(_))
        ));
    }

    #[test]
    fn garbage_and_invalid_messages_are_errors() {
        assert!(Message::decode(&[0xff, 0x00, 0x13]).is_err());
        let zero = Message::Transfers {
            first: Seq(1),
            amounts: vec![0],
        };
        assert!(Message::decode(&zero.encode()).is_err());
        let empty = Message::Transfers {
            first: Seq(1),
            amounts: vec![],
        };
        assert!(Message::decode(&empty.encode()).is_err());
        let seq0 = Message::Transfers {
            first: Seq(0),
            amounts: vec![1],
        };
        assert!(Message::decode(&seq0.encode()).is_err());
    }

    #[test]
    fn trailing_bytes_after_a_message_are_refused() {
        let mut bytes = samples()[4].encode();
        bytes.extend_from_slice(b"trailing junk");
        assert!(matches!(
            Message::decode(&bytes),
            Err(WireError::Malformed(m)) if m.contains("13 bytes after")
        ));
    }

    #[test]
    fn truncated_frames_never_panic() {
        for m in samples() {
            let bytes = m.encode();
            for cut in 0..bytes.len() {
                let _ = Message::decode(&bytes[..cut]);
            }
        }
    }
}
