//! An established encrypted session (fixed keys, see `common`) whose listener is fed authentic
//! records with arbitrary flags and pieces (as a peer holding the keys could send them, made
//! with the hidden `SecureCodec::seal_record`), raw garbage, in arbitrary deliveries.
//!
//! Input: a sequence of operations, each an opcode byte (taken modulo 4) and its arguments:
//! - `0 flag:u8 len:u16 bytes[len]`: an authentic record carrying these bytes
//! - `1 flag:u8 len:u16 fill:u8`: an authentic record carrying `len` (at most 65,518) `fill` bytes
//! - `2 len:u8 bytes[len]`: raw bytes on the wire, not sealed
//! - `3 len:u16`: deliver the next `len` bytes of the wire to the listener and decode
//!
//! then everything left is delivered. The listener must never panic and must behave exactly as
//! a model of the record rules says: pieces accumulate into a frame up to `FRAME_BYTES_MAX`
//! bytes and never beyond (a record that would exceed it ends the connection with `TooLarge`),
//! flag 1 decodes the frame (`Message::decode`: a refused frame does not end the connection),
//! flag 0 waits for more, any other flag ends the connection; after raw garbage reaches it, it
//! returns no message any more. Every message it returns passes `validate()`.

#![no_main]

mod common;

use bytes::BytesMut;
use common::*;
use libfuzzer_sys::fuzz_target;
use snapbank::wire::{Message, FRAME_BYTES_MAX};
use std::borrow::Cow;
use tokio_util::codec::Decoder;

/// Largest piece a record carries: the Noise limit minus the tag and the flag byte.
const CHUNK_BYTES_MAX: usize = 65_535 - 16 - 1;
/// Stop sealing beyond this: enough to cross the frame limit twice, and keeps runs fast.
const SEALED_BYTES_MAX: usize = 2 * FRAME_BYTES_MAX + 2 * CHUNK_BYTES_MAX;

/// What the listener must answer to the authentic records sent before any garbage.
#[derive(Default)]
struct Model {
    frame: Vec<u8>,
    /// The connection ended (an oversized frame or an unknown flag).
    dead: bool,
    /// Garbage was sent: what follows cannot be predicted, except that it yields no message.
    blind: bool,
    events: Vec<Outcome>,
}

impl Model {
    fn record(&mut self, flag: u8, piece: &[u8]) {
        if self.dead || self.blind {
            return;
        }
        let size = self.frame.len() + piece.len();
        if size > FRAME_BYTES_MAX {
            self.events.push(Outcome::TooLarge(size));
            self.dead = true;
            return;
        }
        self.frame.extend_from_slice(piece);
        match flag {
            0 => {}
            1 => {
                self.events.push(outcome(Message::decode(&self.frame)));
                self.frame.clear();
            }
            _ => {
                self.events.push(Outcome::Malformed);
                self.dead = true;
            }
        }
    }

    fn garbage(&mut self, len: usize) {
        if len > 0 {
            self.blind = true;
        }
    }
}

/// Decodes everything `src` holds. An error that consumes nothing means the codec already refused
/// the connection: it must be `Unauthentic`, after an earlier error.
fn decode_all(
    listener: &mut snapbank::secure::SecureCodec,
    src: &mut BytesMut,
    out: &mut Vec<Outcome>,
) {
    loop {
        let before = src.len();
        match listener.decode(src) {
            Ok(Some(m)) => {
                check_decoded(&m);
                out.push(Outcome::Msg(m));
            }
            Ok(None) => return,
            Err(e) => {
                let o = error_outcome(&e);
                if src.len() == before {
                    assert_eq!(o, Outcome::Unauthentic, "a stuck error that is not final");
                    assert!(
                        out.iter().any(|o| !matches!(o, Outcome::Msg(_))),
                        "refused without an earlier error"
                    );
                    return;
                }
                out.push(o);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (mut dialler, mut listener) = session();
    let mut c = Cursor { data };
    let mut model = Model::default();
    let mut wire = BytesMut::new();
    let mut src = BytesMut::new();
    let mut got = Vec::new();
    let mut sealed = 0usize;
    while !c.is_empty() && sealed <= SEALED_BYTES_MAX {
        let op = c.u8() % 4;
        match op {
            0 | 1 => {
                let flag = c.u8();
                let len = (c.u16() as usize).min(CHUNK_BYTES_MAX);
                let piece: Cow<[u8]> = if op == 0 {
                    Cow::Borrowed(c.bytes(len))
                } else {
                    Cow::Owned(vec![c.u8(); len])
                };
                dialler
                    .seal_record(flag, &piece, &mut wire)
                    .expect("a piece of at most 65,518 bytes seals");
                sealed += piece.len();
                model.record(flag, &piece);
            }
            2 => {
                let len = c.u8() as usize;
                let g = c.bytes(len);
                wire.extend_from_slice(g);
                model.garbage(g.len());
            }
            _ => {
                let len = (c.u16() as usize).min(wire.len());
                src.extend_from_slice(&wire.split_to(len));
                decode_all(&mut listener, &mut src, &mut got);
            }
        }
    }
    src.extend_from_slice(&wire);
    decode_all(&mut listener, &mut src, &mut got);

    let want = &model.events;
    if !model.blind {
        assert_eq!(&got, want, "the listener departs from the record rules");
    } else {
        assert!(
            got.len() >= want.len() && got[..want.len()] == want[..],
            "before the garbage the listener departs from the record rules:\n got {got:?}\nwant {want:?}"
        );
        let after = &got[want.len()..];
        assert!(
            after.len() <= 1 && after.iter().all(|o| *o == Outcome::Unauthentic),
            "after garbage: {after:?}"
        );
    }
});
