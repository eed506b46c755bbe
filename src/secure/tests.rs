use super::*;
use crate::hosts::HostList;
use crate::snapshot::{ChannelRecord, LocalPart};
use crate::types::{Seq, SnapshotId};
use crate::wire::{Message, WireError};
use bytes::BytesMut;
use std::path::Path;
use tokio_util::codec::{Decoder, Encoder};

fn hosts() -> HostList {
    HostList::parse("127.0.0.1:8000:S\n127.0.0.1:8001\n127.0.0.1:8002\n", "h").unwrap()
}

fn keys_of(k: &ClusterKey, b: u16) -> BranchKeys {
    k.branch_keys(&hosts(), BranchId(b), Path::new("k"))
        .unwrap()
}

fn pre(from: u16, to: u16) -> Preamble {
    Preamble {
        mode: Mode::Noise,
        cluster: 7,
        epoch: 0,
        from: BranchId(from),
        to: BranchId(to),
    }
}

/// A full handshake from `from` to `to`: (dialler's codec, listener's codec).
fn session(k: &ClusterKey, from: u16, to: u16) -> (SecureCodec, SecureCodec) {
    let p = pre(from, to);
    let (init, msg1) = initiate(&keys_of(k, from), &p).unwrap();
    let (msg2, listener) = respond(&keys_of(k, to), &p, &msg1).unwrap();
    (init.finish(&msg2).unwrap(), listener)
}

fn transfer(first: u64) -> Message {
    Message::Transfers {
        first: Seq(first),
        amounts: vec![5, 6, 7],
    }
}

fn seal(c: &mut SecureCodec, m: Message) -> BytesMut {
    let mut b = BytesMut::new();
    c.encode(m, &mut b).unwrap();
    b
}

#[test]
fn preamble_round_trips_and_rejects_strangers() {
    let p = pre(1, 2);
    assert_eq!(Preamble::decode(&p.encode()), Ok(p));
    let mut b = p.encode();
    b[0] = b'X';
    assert_eq!(Preamble::decode(&b), Err(HandshakeError::NotSnapbank));
    let mut b = p.encode();
    b[8] = 9;
    assert_eq!(Preamble::decode(&b), Err(HandshakeError::Version(9)));
    let mut b = p.encode();
    b[9] = 7;
    assert_eq!(Preamble::decode(&b), Err(HandshakeError::UnknownMode(7)));
}

#[test]
fn holders_of_the_key_talk_both_ways() {
    let k = ClusterKey::generate(&hosts());
    let (mut a, mut b) = session(&k, 0, 1);
    let mut wire = seal(&mut a, transfer(1));
    wire.extend_from_slice(&seal(&mut a, transfer(4)));
    assert_eq!(b.decode(&mut wire).unwrap(), Some(transfer(1)));
    assert_eq!(b.decode(&mut wire).unwrap(), Some(transfer(4)));
    assert_eq!(b.decode(&mut wire).unwrap(), None);
    let ack = Message::Ack {
        applied: Seq(6),
        marker: SnapshotId(0),
        part: SnapshotId(0),
    };
    let mut back = seal(&mut b, ack.clone());
    assert_eq!(a.decode(&mut back).unwrap(), Some(ack));
}

#[test]
fn without_the_cluster_key_the_handshake_fails() {
    let k = ClusterKey::generate(&hosts());
    let stranger = ClusterKey::generate(&hosts());
    let p = pre(0, 1);
    let (_, msg1) = initiate(&keys_of(&stranger, 0), &p).unwrap();
    assert_eq!(
        respond(&keys_of(&k, 1), &p, &msg1).err(),
        Some(HandshakeError::Unauthentic(BranchId(0)))
    );
    // Same branch keys but another psk: still refused.
    let mut other_psk = k.clone();
    other_psk.psk[0] ^= 1;
    let (_, msg1) = initiate(&keys_of(&other_psk, 0), &p).unwrap();
    assert!(respond(&keys_of(&k, 1), &p, &msg1).is_err());
    // And the dialler refuses a listener without the key.
    let (init, msg1) = initiate(&keys_of(&k, 0), &p).unwrap();
    let mut fake = keys_of(&k, 1);
    fake.psk[3] ^= 1;
    match respond(&fake, &p, &msg1) {
        Err(_) => {}
        Ok((msg2, _)) => assert!(init.finish(&msg2).is_err()),
    }
}

#[test]
fn a_branch_cannot_claim_another_branchs_identity() {
    let k = ClusterKey::generate(&hosts());
    // Branch 2 holds the psk and its own private key, and claims to be branch 0 when calling 1.
    let liar = BranchKeys {
        me: BranchId(0),
        ..keys_of(&k, 2)
    };
    let p = pre(0, 1);
    let (_, msg1) = initiate(&liar, &p).unwrap();
    assert_eq!(
        respond(&keys_of(&k, 1), &p, &msg1).err(),
        Some(HandshakeError::Unauthentic(BranchId(0)))
    );
    // A listener that is not the dialled branch cannot answer for it either.
    let (init, msg1) = initiate(&keys_of(&k, 0), &p).unwrap();
    let impostor = BranchKeys {
        me: BranchId(1),
        ..keys_of(&k, 2)
    };
    match respond(&impostor, &p, &msg1) {
        Err(_) => {}
        Ok((msg2, _)) => assert!(init.finish(&msg2).is_err()),
    }
}

#[test]
fn a_changed_preamble_fails_the_handshake() {
    let k = ClusterKey::generate(&hosts());
    let p = pre(0, 1);
    let (_, msg1) = initiate(&keys_of(&k, 0), &p).unwrap();
    let altered = Preamble { cluster: 8, ..p };
    assert!(respond(&keys_of(&k, 1), &altered, &msg1).is_err());
}

#[test]
fn tampered_replayed_reordered_and_reflected_records_are_refused() {
    let k = ClusterKey::generate(&hosts());
    // Tampered: flip one bit anywhere in the record.
    let (mut a, _) = session(&k, 0, 1);
    let clean = seal(&mut a, transfer(1));
    for i in 2..clean.len() {
        let (mut a, mut b) = session(&k, 0, 1);
        let mut wire = seal(&mut a, transfer(1));
        wire[i] ^= 0x40;
        assert!(
            matches!(b.decode(&mut wire), Err(WireError::Unauthentic)),
            "bit flip at {i}"
        );
    }
    // Replayed within the session.
    let (mut a, mut b) = session(&k, 0, 1);
    let one = seal(&mut a, transfer(1));
    let mut wire = one.clone();
    assert_eq!(b.decode(&mut wire).unwrap(), Some(transfer(1)));
    let mut again = one.clone();
    assert!(matches!(b.decode(&mut again), Err(WireError::Unauthentic)));
    // And nothing after a failure is accepted, even a genuine record.
    let mut next = seal(&mut a, transfer(4));
    assert!(b.decode(&mut next).is_err());
    // Reordered.
    let (mut a, mut b) = session(&k, 0, 1);
    let first = seal(&mut a, transfer(1));
    let mut second = seal(&mut a, transfer(4));
    assert!(matches!(b.decode(&mut second), Err(WireError::Unauthentic)));
    drop(first);
    // Reflected: the listener's own record sent back to it.
    let (_, mut b) = session(&k, 0, 1);
    let mut own = seal(&mut b, transfer(1));
    assert!(matches!(b.decode(&mut own), Err(WireError::Unauthentic)));
    // Replayed into another session (captured from an earlier connection).
    let (mut a1, _) = session(&k, 0, 1);
    let mut captured = seal(&mut a1, transfer(1));
    let (_, mut b2) = session(&k, 0, 1);
    assert!(matches!(
        b2.decode(&mut captured),
        Err(WireError::Unauthentic)
    ));
    // Cross-channel: a record of channel 0→1 fed to channel 2→1.
    let (mut a, _) = session(&k, 0, 1);
    let (_, mut c) = session(&k, 2, 1);
    let mut wire = seal(&mut a, transfer(1));
    assert!(c.decode(&mut wire).is_err());
}

#[test]
fn a_replayed_first_handshake_message_yields_no_usable_session() {
    let k = ClusterKey::generate(&hosts());
    let p = pre(0, 1);
    let (init, msg1) = initiate(&keys_of(&k, 0), &p).unwrap();
    let (msg2, _) = respond(&keys_of(&k, 1), &p, &msg1).unwrap();
    let mut a = init.finish(&msg2).unwrap();
    let mut captured = seal(&mut a, transfer(1));
    // The attacker replays msg1 to the listener (which answers with fresh ephemeral keys), then
    // the captured transfer record.
    let (_, mut replayed) = respond(&keys_of(&k, 1), &p, &msg1).unwrap();
    assert!(matches!(
        replayed.decode(&mut captured),
        Err(WireError::Unauthentic)
    ));
}

#[test]
fn frames_larger_than_one_record_are_split_and_reassembled() {
    let k = ClusterKey::generate(&hosts());
    let (mut a, mut b) = session(&k, 0, 1);
    let channels: Vec<ChannelRecord> = (0..6000)
        .map(|i| ChannelRecord {
            from: BranchId(i % 60),
            applied_at_record: Seq(u64::MAX - i as u64),
            until: Seq(u64::MAX - 1),
            money: u64::MAX / 3,
            count: i as u64,
        })
        .collect();
    let part = Message::Part(LocalPart {
        snapshot: SnapshotId(9),
        branch: BranchId(0),
        recorded_at: 1,
        balance: 2,
        sent: vec![],
        channels,
    });
    let mut wire = seal(&mut a, part.clone());
    assert!(wire.len() > 2 * 65_535, "{}", wire.len());
    // Byte by byte: incomplete until the last record is in.
    let mut buf = BytesMut::new();
    let total = wire.len();
    for i in 0..total {
        buf.extend_from_slice(&wire.split_to(1));
        let got = b.decode(&mut buf).unwrap();
        if i + 1 < total {
            assert!(got.is_none(), "early message at byte {i}");
        } else {
            assert_eq!(got, Some(part.clone()));
        }
    }
}

#[test]
fn garbage_after_the_handshake_never_panics() {
    let k = ClusterKey::generate(&hosts());
    let (_, mut b) = session(&k, 0, 1);
    for len in [0usize, 1, 2, 3, 17, 18, 100] {
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&(len as u16).to_be_bytes());
        wire.extend_from_slice(&vec![0xa5; len]);
        let _ = b.decode(&mut wire);
    }
    // Malformed handshake messages are errors, not panics.
    let p = pre(0, 1);
    for len in [0usize, 1, 47, 48, 49, 300] {
        assert!(respond(&keys_of(&k, 1), &p, &vec![7; len]).is_err());
        let (init, _) = initiate(&keys_of(&k, 0), &p).unwrap();
        assert!(init.finish(&vec![7; len]).is_err());
    }
    // A preamble naming a branch beyond host.list.
    assert_eq!(
        respond(&keys_of(&k, 1), &pre(40, 1), &[0; 48]).err(),
        Some(HandshakeError::UnknownBranch(BranchId(40)))
    );
}

#[test]
fn an_operator_with_the_cluster_key_reaches_the_branch_it_dialled_and_no_other() {
    let k = ClusterKey::generate(&hosts());
    let op = k.operator_keys(&hosts(), Path::new("k")).unwrap();
    let p = pre(OPERATOR.0, 2);
    let (init, msg1) = initiate_operator(&op, &p).unwrap();
    let (msg2, mut listener) = respond(&keys_of(&k, 2), &p, &msg1).unwrap();
    let mut dialler = init.finish(&msg2).unwrap();
    let req = Message::Request(crate::wire::Request::Status);
    let mut wire = seal(&mut dialler, req.clone());
    assert_eq!(listener.decode(&mut wire).unwrap(), Some(req));

    // Branch 1 answering a call meant for branch 2 cannot complete it: the operator pinned
    // branch 2's public key.
    let (init, msg1) = initiate_operator(&op, &p).unwrap();
    match respond(&keys_of(&k, 1), &p, &msg1) {
        Err(_) => {}
        Ok((msg2, _)) => assert!(init.finish(&msg2).is_err()),
    }
}

#[test]
fn an_operator_without_this_clusters_key_is_refused() {
    let k = ClusterKey::generate(&hosts());
    let other = ClusterKey::generate(&hosts());
    let op = other.operator_keys(&hosts(), Path::new("k")).unwrap();
    let p = pre(OPERATOR.0, 0);
    let (_, msg1) = initiate_operator(&op, &p).unwrap();
    assert_eq!(
        respond(&keys_of(&k, 0), &p, &msg1).err(),
        Some(HandshakeError::Unauthentic(OPERATOR))
    );
    // A changed preamble (the prologue) fails too, even with the right key.
    let op = k.operator_keys(&hosts(), Path::new("k")).unwrap();
    let (_, msg1) = initiate_operator(&op, &p).unwrap();
    let mut changed = p;
    changed.cluster ^= 1;
    assert!(respond(&keys_of(&k, 0), &changed, &msg1).is_err());
}
