//! Property tests of the wire: every `Message` variant round-trips through the plain codec, the
//! bare CBOR encoding and an encrypted session, whatever the split points of the byte stream;
//! invalid messages are refused everywhere; arbitrary bytes never panic a decoder.

use bytes::BytesMut;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use snapbank::hosts::HostList;
use snapbank::secure::{
    initiate, respond, BranchKeys, ClusterKey, Mode, Preamble, SecureCodec, PREAMBLE_LEN,
};
use snapbank::snapshot::{ChannelRecord, LocalPart};
use snapbank::types::{BranchId, Seq, SnapshotId};
use snapbank::wire::{
    Message, MessageCodec, Position, Reply, Request, WireError, FRAME_BYTES_MAX, LOG_RANGES_MAX,
    TRANSFERS_PER_FRAME_MAX,
};
use std::path::Path;
use std::sync::OnceLock;
use tokio_util::codec::{Decoder, Encoder};

// ---------------------------------------------------------------------------------------------
// Strategies

/// Any u64, with the edges drawn often.
fn edgy_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1u64),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        0..1_000u64,
        any::<u64>(),
    ]
}

fn nonzero_u64() -> impl Strategy<Value = u64> {
    prop_oneof![Just(1u64), Just(u64::MAX), 1..1_000u64, 1..=u64::MAX,]
}

fn branch() -> impl Strategy<Value = BranchId> {
    prop_oneof![Just(0u16), Just(u16::MAX), 0..64u16, any::<u16>()].prop_map(BranchId)
}

fn seq() -> impl Strategy<Value = Seq> {
    edgy_u64().prop_map(Seq)
}

fn snapshot_id() -> impl Strategy<Value = SnapshotId> {
    edgy_u64().prop_map(SnapshotId)
}

fn channel_record() -> impl Strategy<Value = ChannelRecord> {
    (branch(), seq(), seq(), edgy_u64(), edgy_u64()).prop_map(
        |(from, applied_at_record, until, money, count)| ChannelRecord {
            from,
            applied_at_record,
            until,
            money,
            count,
        },
    )
}

/// A part of snapshot `snapshot` with up to `channels_max` arbitrary channel records.
fn local_part(
    snapshot: impl Strategy<Value = SnapshotId>,
    channels_max: usize,
) -> impl Strategy<Value = LocalPart> {
    (
        snapshot,
        branch(),
        edgy_u64(),
        edgy_u64(),
        vec((branch(), seq()), 0..8),
        vec(channel_record(), 0..=channels_max),
    )
        .prop_map(
            |(snapshot, branch, recorded_at, balance, sent, channels)| LocalPart {
                snapshot,
                branch,
                recorded_at,
                balance,
                sent,
                channels,
            },
        )
}

/// Amount counts, mostly small but reaching the limit.
fn amounts_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        3 => 1..16usize,
        1 => Just(TRANSFERS_PER_FRAME_MAX),
        1 => 1..=TRANSFERS_PER_FRAME_MAX,
    ]
}

/// A `Transfers` that `validate` accepts: 1..=1024 non-zero amounts, `first` in
/// `1..=u64::MAX - len` (so the last sequence number cannot overflow).
fn valid_transfers() -> impl Strategy<Value = Message> {
    amounts_len()
        .prop_flat_map(|len| {
            let top = u64::MAX - len as u64;
            let first = prop_oneof![Just(1u64), Just(top), 1..=top];
            (first, vec(nonzero_u64(), len))
        })
        .prop_map(|(first, amounts)| Message::Transfers {
            first: Seq(first),
            amounts,
        })
}

fn valid_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u64>(), branch(), branch()).prop_map(|(cluster, from, to)| Message::Hello {
            cluster,
            from,
            to
        }),
        valid_transfers(),
        (nonzero_u64(), seq()).prop_map(|(s, after)| Message::Marker {
            snapshot: SnapshotId(s),
            after
        }),
        local_part(nonzero_u64().prop_map(SnapshotId), 12).prop_map(Message::Part),
        (seq(), snapshot_id(), snapshot_id()).prop_map(|(applied, marker, part)| Message::Ack {
            applied,
            marker,
            part
        }),
        (nonzero_u64(), vec((branch(), seq()), 0..70)).prop_map(|(s, below)| Message::Compact {
            snapshot: SnapshotId(s),
            below
        }),
        prop_oneof![Just(Request::Status), Just(Request::Snapshot)].prop_map(Message::Request),
        (nonzero_u64(), any::<u64>(), any::<u128>(), any::<u64>()).prop_map(
            |(s, duration_us, total, expected)| Message::Reply(Reply::SnapshotDone {
                snapshot: SnapshotId(s),
                duration_us,
                total,
                expected
            })
        ),
        ".{0,40}".prop_map(|why| Message::Reply(Reply::Refused(why))),
        vec((branch(), seq(), seq()), 0..50)
            .prop_map(|ranges| Message::Request(Request::LogSums { ranges })),
        nonzero_u64().prop_map(|s| Message::Request(Request::Part {
            snapshot: SnapshotId(s)
        })),
        valid_position().prop_map(Message::Position),
    ]
}

/// A sender's position: what it acknowledged never exceeds what it has.
fn valid_position() -> impl Strategy<Value = Position> {
    (
        (edgy_u64(), edgy_u64(), edgy_u64()),
        (any::<Index>(), any::<Index>(), any::<Index>()),
    )
        .prop_map(|((sent, rec, done), (a, m, p))| {
            let below = |top: u64, i: Index| {
                if top == u64::MAX {
                    i.index(usize::MAX) as u64
                } else {
                    i.index(top as usize + 1) as u64
                }
            };
            Position {
                sent: Seq(sent),
                last_recorded: SnapshotId(rec),
                parts_done: SnapshotId(done),
                acked: Seq(below(sent, a)),
                marker_acked: SnapshotId(below(rec, m)),
                part_acked: SnapshotId(below(done, p)),
            }
        })
}

/// Messages `validate` must refuse, one kind per arm.
fn invalid_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        // No amounts.
        edgy_u64().prop_map(|first| Message::Transfers {
            first: Seq(first),
            amounts: vec![],
        }),
        // Too many amounts.
        (
            1..1_000u64,
            vec(
                nonzero_u64(),
                TRANSFERS_PER_FRAME_MAX + 1..TRANSFERS_PER_FRAME_MAX + 64
            )
        )
            .prop_map(|(first, amounts)| Message::Transfers {
                first: Seq(first),
                amounts,
            }),
        // An amount of 0 somewhere.
        (1..1_000u64, vec(nonzero_u64(), 1..32), any::<Index>()).prop_map(
            |(first, mut amounts, at)| {
                let i = at.index(amounts.len());
                amounts[i] = 0;
                Message::Transfers {
                    first: Seq(first),
                    amounts,
                }
            }
        ),
        // Sequence number 0.
        vec(nonzero_u64(), 1..32).prop_map(|amounts| Message::Transfers {
            first: Seq(0),
            amounts,
        }),
        // The last sequence number would overflow.
        (vec(nonzero_u64(), 1..32), any::<Index>()).prop_map(|(amounts, at)| {
            let len = amounts.len() as u64;
            // first in u64::MAX - len + 1 ..= u64::MAX
            let first = u64::MAX - at.index(len as usize) as u64;
            Message::Transfers {
                first: Seq(first),
                amounts,
            }
        }),
        // Marker and Part of snapshot 0.
        seq().prop_map(|after| Message::Marker {
            snapshot: SnapshotId(0),
            after
        }),
        local_part(Just(SnapshotId(0)), 4).prop_map(Message::Part),
        // SnapshotDone for snapshot 0.
        (any::<u64>(), any::<u128>()).prop_map(|(duration_us, total)| Message::Reply(
            Reply::SnapshotDone {
                snapshot: SnapshotId(0),
                duration_us,
                total,
                expected: 1
            }
        )),
        // Compact for snapshot 0.
        vec((branch(), seq()), 0..8).prop_map(|below| Message::Compact {
            snapshot: SnapshotId(0),
            below
        }),
    ]
}

/// Any message, valid or not, with edge values everywhere.
fn any_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        valid_message(),
        invalid_message(),
        (edgy_u64(), vec(edgy_u64(), 0..40)).prop_map(|(first, amounts)| Message::Transfers {
            first: Seq(first),
            amounts
        }),
        (snapshot_id(), seq()).prop_map(|(snapshot, after)| Message::Marker { snapshot, after }),
        local_part(snapshot_id(), 3).prop_map(Message::Part),
        (snapshot_id(), vec((branch(), seq()), 0..8))
            .prop_map(|(snapshot, below)| Message::Compact { snapshot, below }),
        (
            (edgy_u64(), edgy_u64(), edgy_u64()),
            (edgy_u64(), edgy_u64(), edgy_u64())
        )
            .prop_map(
                |((sent, rec, done), (a, m, p))| Message::Position(Position {
                    sent: Seq(sent),
                    last_recorded: SnapshotId(rec),
                    parts_done: SnapshotId(done),
                    acked: Seq(a),
                    marker_acked: SnapshotId(m),
                    part_acked: SnapshotId(p),
                })
            ),
    ]
}

/// The rules of `Message::validate`, restated independently.
fn spec_valid(m: &Message) -> bool {
    match m {
        Message::Transfers { first, amounts } => {
            (1..=TRANSFERS_PER_FRAME_MAX).contains(&amounts.len())
                && first.0 >= 1
                && first.0 <= u64::MAX - amounts.len() as u64
                && amounts.iter().all(|&a| a != 0)
        }
        Message::Marker { snapshot, .. } => snapshot.0 != 0,
        Message::Part(p) => p.snapshot.0 != 0,
        Message::Compact { snapshot, .. } => snapshot.0 != 0,
        Message::Reply(Reply::SnapshotDone { snapshot, .. }) => snapshot.0 != 0,
        Message::Request(Request::LogSums { ranges }) => ranges.len() <= LOG_RANGES_MAX,
        Message::Request(_) | Message::Reply(_) => true,
        Message::Hello { .. } | Message::Ack { .. } => true,
        Message::Position(p) => {
            p.acked <= p.sent && p.marker_acked <= p.last_recorded && p.part_acked <= p.parts_done
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Feeds `stream` to `codec` in pieces cut at `cuts`, decoding every complete message after each
/// piece. Returns the messages, or the first error.
fn feed<D>(codec: &mut D, stream: &[u8], cuts: &[Index]) -> Result<Vec<Message>, WireError>
where
    D: Decoder<Item = Message, Error = WireError>,
{
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
    points.push(0);
    points.push(stream.len());
    points.sort_unstable();
    points.dedup();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for w in points.windows(2) {
        buf.extend_from_slice(&stream[w[0]..w[1]]);
        while let Some(m) = codec.decode(&mut buf)? {
            out.push(m);
        }
    }
    assert!(buf.is_empty(), "{} bytes left undecoded", buf.len());
    Ok(out)
}

/// Decodes whatever `codec` makes of `buf`, continuing after errors, for a bounded number of
/// calls: must not panic, and every message it returns must be valid.
fn drain<D>(codec: &mut D, buf: &mut BytesMut) -> Result<(), TestCaseError>
where
    D: Decoder<Item = Message, Error = WireError>,
{
    for _ in 0..buf.len() + 2 {
        match codec.decode(buf) {
            Ok(Some(m)) => prop_assert!(m.validate().is_ok(), "decoded invalid {m:?}"),
            Ok(None) => break,
            Err(_) => {}
        }
    }
    Ok(())
}

fn plain_stream(msgs: &[Message]) -> Vec<u8> {
    let mut codec = MessageCodec::default();
    let mut buf = BytesMut::new();
    for m in msgs {
        codec.encode(m.clone(), &mut buf).unwrap();
    }
    buf.to_vec()
}

fn hosts() -> HostList {
    HostList::parse("127.0.0.1:8000:S\n127.0.0.1:8001\n127.0.0.1:8002\n", "h").unwrap()
}

/// One cluster key for the whole file (generating is cheap, but the keys need not differ).
fn cluster_key() -> &'static ClusterKey {
    static KEY: OnceLock<ClusterKey> = OnceLock::new();
    KEY.get_or_init(|| ClusterKey::generate(&hosts()))
}

fn keys_of(b: u16) -> BranchKeys {
    cluster_key()
        .branch_keys(&hosts(), BranchId(b), Path::new("k"))
        .unwrap()
}

/// A fresh handshake from branch 0 to branch 1: (dialler's codec, listener's codec).
fn session() -> (SecureCodec, SecureCodec) {
    let p = Preamble {
        mode: Mode::Noise,
        cluster: 7,
        epoch: 0,
        from: BranchId(0),
        to: BranchId(1),
    };
    let (init, msg1) = initiate(&keys_of(0), &p).unwrap();
    let (msg2, listener) = respond(&keys_of(1), &p, &msg1).unwrap();
    (init.finish(&msg2).unwrap(), listener)
}

fn sealed_stream(codec: &mut SecureCodec, msgs: &[Message]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for m in msgs {
        codec.encode(m.clone(), &mut buf).unwrap();
    }
    buf.to_vec()
}

/// The largest piece one record carries (65,535 minus the tag and the flag byte).
const CHUNK_BYTES_MAX: usize = 65_535 - 16 - 1;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Valid messages round-trip

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn generated_valid_messages_are_valid(m in valid_message()) {
        prop_assert!(m.validate().is_ok(), "{:?}", m.validate());
        prop_assert!(spec_valid(&m));
    }

    #[test]
    fn valid_messages_round_trip_through_cbor(m in valid_message()) {
        let back = Message::decode(&m.encode()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, m);
    }

    #[test]
    fn valid_messages_round_trip_through_the_plain_codec(
        msgs in vec(valid_message(), 1..6),
        cuts in vec(any::<Index>(), 0..12),
    ) {
        let stream = plain_stream(&msgs);
        // In one piece.
        let whole = feed(&mut MessageCodec::default(), &stream, &[])
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&whole, &msgs);
        // Cut anywhere.
        let cut = feed(&mut MessageCodec::default(), &stream, &cuts)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&cut, &msgs);
    }

    #[test]
    fn valid_messages_round_trip_byte_by_byte(m in valid_message()) {
        let stream = plain_stream(std::slice::from_ref(&m));
        let mut codec = MessageCodec::default();
        let mut buf = BytesMut::new();
        for (i, b) in stream.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let got = codec.decode(&mut buf).map_err(|e| TestCaseError::fail(e.to_string()))?;
            if i + 1 < stream.len() {
                prop_assert!(got.is_none(), "message before the last byte ({i})");
            } else {
                prop_assert_eq!(got.as_ref(), Some(&m));
            }
        }
    }

    #[test]
    fn valid_messages_round_trip_through_a_secure_session(
        msgs in vec(valid_message(), 1..6),
        cuts in vec(any::<Index>(), 0..12),
    ) {
        let (mut dialler, mut listener) = session();
        let stream = sealed_stream(&mut dialler, &msgs);
        let got = feed(&mut listener, &stream, &cuts)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&got, &msgs);
        // And the other way, on the same session.
        let stream = sealed_stream(&mut listener, &msgs);
        let got = feed(&mut dialler, &stream, &cuts)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&got, &msgs);
    }

    /// A message split by hand into records of any sizes reassembles to itself.
    #[test]
    fn any_record_split_reassembles(
        m in valid_message(),
        cuts in vec(any::<Index>(), 0..10),
        feed_cuts in vec(any::<Index>(), 0..10),
    ) {
        let bytes = m.encode();
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        points.push(0);
        points.push(bytes.len());
        points.sort_unstable();
        points.dedup();
        let (mut dialler, mut listener) = session();
        let mut wire = BytesMut::new();
        let pieces = points.len() - 1;
        for (i, w) in points.windows(2).enumerate() {
            let flag = if i + 1 == pieces { 1 } else { 0 };
            dialler.seal_record(flag, &bytes[w[0]..w[1]], &mut wire).unwrap();
        }
        let got = feed(&mut listener, &wire, &feed_cuts)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(got, vec![m]);
    }
}

proptest! {
    // Parts too large for one record: a channel record is 47 to about 100 bytes of CBOR (its
    // five field names alone are 41), so 2000 of them are always more than one record holds.
    #![proptest_config(config(12))]

    #[test]
    fn large_parts_round_trip_across_records(
        p in local_part(nonzero_u64().prop_map(SnapshotId), 0).prop_flat_map(|p| {
            (Just(p), vec(channel_record(), 2000..4000))
        }),
        cuts in vec(any::<Index>(), 0..20),
    ) {
        let (mut p, channels) = p;
        p.channels = channels;
        let m = Message::Part(p);
        let plain = plain_stream(std::slice::from_ref(&m));
        prop_assert!(plain.len() > CHUNK_BYTES_MAX);
        let got = feed(&mut MessageCodec::default(), &plain, &cuts)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&got, std::slice::from_ref(&m));
        let (mut dialler, mut listener) = session();
        let sealed = sealed_stream(&mut dialler, std::slice::from_ref(&m));
        let got = feed(&mut listener, &sealed, &cuts)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(got, vec![m]);
    }
}

// ---------------------------------------------------------------------------------------------
// Invalid messages are refused

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn validate_follows_the_spec(m in any_message()) {
        prop_assert_eq!(m.validate().is_ok(), spec_valid(&m), "{:?}", m);
        match Message::decode(&m.encode()) {
            Ok(back) => {
                prop_assert!(spec_valid(&m));
                prop_assert_eq!(back, m);
            }
            Err(e) => {
                prop_assert!(!spec_valid(&m));
                prop_assert!(matches!(e, WireError::Invalid(_)), "{e}");
            }
        }
    }

    #[test]
    fn invalid_messages_are_refused_everywhere(m in invalid_message()) {
        prop_assert!(matches!(m.validate(), Err(WireError::Invalid(_))), "{:?}", m);
        prop_assert!(matches!(Message::decode(&m.encode()), Err(WireError::Invalid(_))));
        // Through the plain codec (the encoder does not validate; the decoder must).
        let stream = plain_stream(std::slice::from_ref(&m));
        let mut buf = BytesMut::from(&stream[..]);
        prop_assert!(matches!(
            MessageCodec::default().decode(&mut buf),
            Err(WireError::Invalid(_))
        ));
        // Through a secure session.
        let (mut dialler, mut listener) = session();
        let mut buf = BytesMut::from(&sealed_stream(&mut dialler, std::slice::from_ref(&m))[..]);
        prop_assert!(matches!(listener.decode(&mut buf), Err(WireError::Invalid(_))));
    }

    /// An invalid frame between valid ones is refused on its own: the frames around it decode.
    #[test]
    fn an_invalid_frame_does_not_swallow_its_neighbours(
        before in valid_message(),
        bad in invalid_message(),
        after in valid_message(),
    ) {
        let stream = plain_stream(&[before.clone(), bad, after.clone()]);
        let mut codec = MessageCodec::default();
        let mut buf = BytesMut::from(&stream[..]);
        prop_assert_eq!(codec.decode(&mut buf).ok().flatten(), Some(before));
        prop_assert!(matches!(codec.decode(&mut buf), Err(WireError::Invalid(_))));
        prop_assert_eq!(codec.decode(&mut buf).ok().flatten(), Some(after));
    }
}

// ---------------------------------------------------------------------------------------------
// Arbitrary bytes never panic

/// Bytes shaped like a frame: a length prefix (mostly matching what follows) and a body that is
/// either random or a real encoding with a few bytes changed.
fn frame_like() -> impl Strategy<Value = Vec<u8>> {
    let body = prop_oneof![
        vec(any::<u8>(), 0..200),
        (
            any_message(),
            vec((any::<Index>(), any::<u8>()), 1..4),
            any::<Index>()
        )
            .prop_map(|(m, edits, cut)| {
                let mut b = m.encode();
                for (at, v) in edits {
                    let i = at.index(b.len());
                    b[i] = v;
                }
                let keep = cut.index(b.len() + 1).max(b.len() / 2);
                b.truncate(keep);
                b
            }),
    ];
    (
        body,
        prop_oneof![3 => Just(None), 1 => any::<u32>().prop_map(Some)],
    )
        .prop_map(|(body, len)| {
            let len = len.unwrap_or(body.len() as u32);
            let mut f = len.to_be_bytes().to_vec();
            f.extend_from_slice(&body);
            f
        })
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn arbitrary_bytes_never_panic_message_decode(
        bytes in prop_oneof![vec(any::<u8>(), 0..300), frame_like().prop_map(|f| f[4..].to_vec())],
    ) {
        if let Ok(m) = Message::decode(&bytes) {
            prop_assert!(m.validate().is_ok());
            prop_assert_eq!(Message::decode(&m.encode()).ok(), Some(m));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_plain_codec(
        frames in vec(prop_oneof![frame_like(), vec(any::<u8>(), 0..64)], 1..5),
        cuts in vec(any::<Index>(), 0..6),
    ) {
        let stream: Vec<u8> = frames.concat();
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        points.push(0);
        points.push(stream.len());
        points.sort_unstable();
        let mut codec = MessageCodec::default();
        let mut buf = BytesMut::new();
        for w in points.windows(2) {
            buf.extend_from_slice(&stream[w[0]..w[1]]);
            drain(&mut codec, &mut buf)?;
        }
        prop_assert!(buf.len() <= stream.len());
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_secure_codec(
        chunks in vec(
            prop_oneof![
                vec(any::<u8>(), 0..64),
                // Shaped like a record: a length then (mostly) that many random bytes.
                (0..200u16, any::<bool>()).prop_flat_map(|(len, honest)| {
                    let body = if honest { len as usize } else { (len as usize) / 2 };
                    vec(any::<u8>(), body).prop_map(move |b| {
                        let mut r = len.to_be_bytes().to_vec();
                        r.extend_from_slice(&b);
                        r
                    })
                }),
            ],
            1..5,
        ),
    ) {
        let (_, mut listener) = session();
        let mut buf = BytesMut::new();
        for c in chunks {
            buf.extend_from_slice(&c);
            drain(&mut listener, &mut buf)?;
        }
    }

    /// Authentic records carrying any flags and pieces (what a peer holding the keys could send):
    /// the decoder follows the record rules exactly.
    #[test]
    fn authentic_records_with_any_flags_follow_the_rules(
        records in vec(
            (
                prop_oneof![4 => 0u8..=1, 1 => any::<u8>()],
                prop_oneof![
                    vec(any::<u8>(), 0..40),
                    valid_message().prop_map(|m| m.encode()),
                    any_message().prop_map(|m| m.encode()),
                ],
            ),
            1..8,
        ),
    ) {
        let (mut dialler, mut listener) = session();
        let mut frame: Vec<u8> = Vec::new();
        let mut dead = false;
        for (flag, piece) in records {
            let mut buf = BytesMut::new();
            dialler.seal_record(flag, &piece, &mut buf).unwrap();
            let got = listener.decode(&mut buf);
            if dead {
                prop_assert!(got.is_err(), "a record accepted after a fatal error");
                continue;
            }
            frame.extend_from_slice(&piece);
            match flag {
                0 => prop_assert!(matches!(got, Ok(None)), "{:?}", got),
                1 => {
                    match (Message::decode(&frame), got) {
                        (Ok(want), Ok(Some(m))) => prop_assert_eq!(m, want),
                        (Err(_), Err(WireError::Malformed(_) | WireError::Invalid(_))) => {}
                        (want, got) => prop_assert!(false, "want {want:?}, got {got:?}"),
                    }
                    frame.clear();
                }
                _ => {
                    prop_assert!(matches!(got, Err(WireError::Malformed(_))), "{:?}", got);
                    dead = true;
                }
            }
        }
    }

    #[test]
    fn arbitrary_handshake_bytes_never_panic(
        pre in vec(any::<u8>(), PREAMBLE_LEN),
        msg in vec(any::<u8>(), 0..300),
    ) {
        let pre: [u8; PREAMBLE_LEN] = pre.try_into().unwrap();
        let _ = Preamble::decode(&pre);
        let p = Preamble {
            mode: Mode::Noise,
            cluster: 7,
            epoch: 3,
            from: BranchId(0),
            to: BranchId(1),
        };
        prop_assert!(respond(&keys_of(1), &p, &msg).is_err());
        let (init, _) = initiate(&keys_of(0), &p).unwrap();
        prop_assert!(init.finish(&msg).is_err());
    }

    #[test]
    fn preambles_round_trip(
        noise in any::<bool>(),
        cluster in any::<u64>(),
        epoch in any::<u64>(),
        from in branch(),
        to in branch(),
    ) {
        let p = Preamble {
            mode: if noise { Mode::Noise } else { Mode::Insecure },
            cluster,
            epoch,
            from,
            to,
        };
        prop_assert_eq!(Preamble::decode(&p.encode()), Ok(p));
    }
}

/// Authentic records whose pieces add up to more than a frame are refused, and the connection
/// stays dead.
#[test]
fn reassembly_stops_at_the_frame_limit() {
    let (mut dialler, mut listener) = session();
    let piece = vec![0xa5u8; CHUNK_BYTES_MAX];
    let mut total = 0;
    while total + CHUNK_BYTES_MAX <= FRAME_BYTES_MAX {
        let mut buf = BytesMut::new();
        dialler.seal_record(0, &piece, &mut buf).unwrap();
        assert!(matches!(listener.decode(&mut buf), Ok(None)));
        total += CHUNK_BYTES_MAX;
    }
    let mut buf = BytesMut::new();
    dialler
        .seal_record(1, &piece[..FRAME_BYTES_MAX - total + 1], &mut buf)
        .unwrap();
    assert!(matches!(
        listener.decode(&mut buf),
        Err(WireError::TooLarge(n)) if n == FRAME_BYTES_MAX + 1
    ));
    let mut buf = BytesMut::new();
    dialler
        .seal_record(
            1,
            &Message::Marker {
                snapshot: SnapshotId(1),
                after: Seq(0),
            }
            .encode(),
            &mut buf,
        )
        .unwrap();
    assert!(listener.decode(&mut buf).is_err());
    // Exactly FRAME_BYTES_MAX is still reassembled (and then refused as CBOR, not as too large).
    let (mut dialler, mut listener) = session();
    let mut total = 0;
    while total < FRAME_BYTES_MAX {
        let n = CHUNK_BYTES_MAX.min(FRAME_BYTES_MAX - total);
        let flag = u8::from(total + n == FRAME_BYTES_MAX);
        let mut buf = BytesMut::new();
        dialler.seal_record(flag, &piece[..n], &mut buf).unwrap();
        let got = listener.decode(&mut buf);
        if flag == 0 {
            assert!(matches!(got, Ok(None)));
        } else {
            assert!(matches!(got, Err(WireError::Malformed(_))), "{got:?}");
        }
        total += n;
    }
}

/// A frame length one above the limit is refused, the limit itself is waited for.
#[test]
fn plain_frames_stop_at_the_frame_limit() {
    let mut buf = BytesMut::from(&((FRAME_BYTES_MAX + 1) as u32).to_be_bytes()[..]);
    assert!(matches!(
        MessageCodec::default().decode(&mut buf),
        Err(WireError::TooLarge(n)) if n == FRAME_BYTES_MAX + 1
    ));
    let mut buf = BytesMut::from(&(FRAME_BYTES_MAX as u32).to_be_bytes()[..]);
    assert!(matches!(MessageCodec::default().decode(&mut buf), Ok(None)));
}
