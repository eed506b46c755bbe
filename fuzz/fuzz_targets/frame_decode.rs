//! Arbitrary bytes as a stream of plain frames (`MessageCodec`) and as one CBOR message
//! (`Message::decode`).
//!
//! Input: `cut: u16`, `stride: u8`, then the stream. The stream is fed to a codec in pieces (the
//! first `cut % (len + 1)` bytes, then `stride` bytes at a time, or the rest at once when `stride`
//! is 0), and to another codec in one piece: both must give the same outcomes. Every message a
//! decoder returns must pass `validate()` and re-encode to itself.

#![no_main]

mod common;

use bytes::BytesMut;
use common::*;
use libfuzzer_sys::fuzz_target;
use snapbank::wire::{Message, MessageCodec};
use tokio_util::codec::{Decoder, Encoder};

/// Feeds `pieces` one after the other and decodes everything complete after each. A refused frame
/// is consumed and decoding goes on; an error that consumes nothing (a length over the limit)
/// leaves the stream stuck, and the connection would close: stop there.
fn run<'a>(pieces: impl Iterator<Item = &'a [u8]>) -> Vec<Outcome> {
    let mut codec = MessageCodec::default();
    let mut src = BytesMut::new();
    let mut out = Vec::new();
    for piece in pieces {
        src.extend_from_slice(piece);
        loop {
            let before = src.len();
            match codec.decode(&mut src) {
                Ok(Some(m)) => {
                    check_decoded(&m);
                    // And through the codec itself.
                    let mut again = BytesMut::new();
                    MessageCodec::default()
                        .encode(m.clone(), &mut again)
                        .expect("a decoded message re-encodes");
                    let back = MessageCodec::default().decode(&mut again);
                    assert!(
                        matches!(&back, Ok(Some(b)) if *b == m) && again.is_empty(),
                        "codec round trip of {m:?} gave {back:?}"
                    );
                    out.push(Outcome::Msg(m));
                }
                Ok(None) => break,
                Err(e) => {
                    out.push(error_outcome(&e));
                    if src.len() == before {
                        return out;
                    }
                }
            }
        }
    }
    // End of stream: a partial frame left over is an error, never a panic.
    let _ = codec.decode_eof(&mut src);
    out
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor { data };
    let cut = c.u16() as usize;
    let stride = c.u8() as usize;
    let stream = c.data;

    // Alone, as one message.
    if let Ok(m) = Message::decode(stream) {
        check_decoded(&m);
    }

    // As frames: in one piece, and in pieces.
    let whole = run(std::iter::once(stream));
    let cut = cut % (stream.len() + 1);
    let (head, tail) = stream.split_at(cut);
    let pieces: Vec<&[u8]> = if stride == 0 {
        vec![head, tail]
    } else {
        std::iter::once(head).chain(tail.chunks(stride)).collect()
    };
    let split = run(pieces.into_iter());
    assert_eq!(
        whole, split,
        "splitting the stream changed what it decodes to"
    );
});
