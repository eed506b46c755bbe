//! Arbitrary bytes as a dialler sends them to a listener: a 22-byte preamble, then the first
//! Noise handshake message (u16 big-endian length, then the message, as `net` reads it; when no
//! such message can be read, all the remaining bytes unframed), given to `respond`. The same
//! message is given as the listener's answer to an honest dialler (`Initiator::finish`). Keys are
//! fixed (see `common`), so runs reproduce.
//!
//! Checks: nothing panics; a preamble that decodes re-encodes to the same 22 bytes; no answer
//! from the fuzzer completes a dialler's handshake; and an honest first message with the bytes
//! after the preamble XORed into it (and any beyond its 48 appended) is accepted exactly when
//! that changes nothing, and then the session carries messages both ways.

#![no_main]

mod common;

use bytes::BytesMut;
use common::*;
use libfuzzer_sys::fuzz_target;
use snapbank::secure::{
    initiate, respond, Preamble, SecureCodec, HANDSHAKE_MESSAGE_MAX, PREAMBLE_LEN,
};
use snapbank::types::{BranchId, Seq, SnapshotId};
use snapbank::wire::Message;
use tokio_util::codec::{Decoder, Encoder};

/// The message after a u16 length, if the listener would read one (length within the limit and
/// all its bytes present).
fn framed(rest: &[u8]) -> Option<&[u8]> {
    let (len, body) = rest.split_first_chunk::<2>()?;
    let len = u16::from_be_bytes(*len) as usize;
    if len > HANDSHAKE_MESSAGE_MAX {
        return None;
    }
    body.get(..len)
}

/// One message from `from` to `to` on an honest session.
fn exchange(from: &mut SecureCodec, to: &mut SecureCodec, m: Message) {
    let mut wire = BytesMut::new();
    from.encode(m.clone(), &mut wire).expect("encode");
    let got = to.decode(&mut wire).expect("honest record decodes");
    assert_eq!(got, Some(m));
    assert!(wire.is_empty());
}

fuzz_target!(|data: &[u8]| {
    let mut raw = [0u8; PREAMBLE_LEN];
    let n = data.len().min(PREAMBLE_LEN);
    raw[..n].copy_from_slice(&data[..n]);
    let rest = &data[n..];
    let keys = keys();
    let known = |b: BranchId| b.index() < keys.len();

    let decoded = Preamble::decode(&raw);
    if let Ok(p) = decoded {
        assert_eq!(p.encode(), raw, "preamble does not re-encode to its bytes");
    }
    // Whatever the preamble claims, `respond` and `initiate` must refuse cleanly, never panic
    // (the real listener checks cluster, mode and branches first; these must not rely on it).
    let pre = decoded.unwrap_or_else(|_| preamble());
    // The message as the listener reads it (u16 length, at most HANDSHAKE_MESSAGE_MAX bytes);
    // when that fails, all the rest unframed, to reach `respond`'s own checks.
    let msg = framed(rest).unwrap_or(rest);

    // As the listener: the fuzz bytes as the dialler's first message.
    // Only a replayed honest message can pass (and its answer leads nowhere without the dialler's
    // ephemeral key): the fuzzer cannot forge one, but a corpus could hold one.
    if respond(&keys[LISTENER.index()], &pre, msg).is_ok() {
        assert_eq!(
            msg.len(),
            48,
            "a first message of unusual length was accepted"
        );
    }
    if !(known(pre.from) && known(pre.to)) {
        if let Ok((init, _)) = initiate(&keys[0], &pre) {
            assert!(init.finish(msg).is_err(), "a forged answer was accepted");
        }
    }

    // An honest dialler (on the claimed channel if both ends exist, else 0 -> 1) and its first
    // message, tampered with: XOR the fuzz bytes in, append any beyond it.
    let pre = if known(pre.from) && known(pre.to) {
        pre
    } else {
        preamble()
    };
    let (init, msg1) = initiate(&keys[pre.from.index()], &pre).expect("honest initiate");
    let mut tampered = msg1.clone();
    for (i, b) in rest.iter().enumerate() {
        match tampered.get_mut(i) {
            Some(t) => *t ^= b,
            None => tampered.push(*b),
        }
    }
    match respond(&keys[pre.to.index()], &pre, &tampered) {
        Err(_) => {
            assert_ne!(tampered, msg1, "the honest first message was refused");
            // The dialler then gets the fuzz bytes as the answer: it must refuse them.
            assert!(init.finish(msg).is_err(), "a forged answer was accepted");
        }
        Ok((msg2, mut listener)) => {
            assert_eq!(tampered, msg1, "a tampered first message was accepted");
            let mut dialler = init.finish(&msg2).expect("honest answer accepted");
            let hello = Message::Hello {
                cluster: pre.cluster,
                from: pre.from,
                to: pre.to,
            };
            let ack = Message::Ack {
                applied: Seq(1),
                marker: SnapshotId(0),
                part: SnapshotId(0),
            };
            exchange(&mut dialler, &mut listener, hello);
            exchange(&mut listener, &mut dialler, ack);
        }
    }
});
