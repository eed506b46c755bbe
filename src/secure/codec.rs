//! Frames on an established connection: plain ([`MessageCodec`]) or encrypted ([`SecureCodec`]).
//!
//! An encrypted frame is one or more records. A record is a 2-byte big-endian length and a Noise
//! transport message (at most 65,535 bytes) whose plaintext is a flag byte (`0`: more records
//! follow, `1`: last record of this frame) and a piece of the frame's CBOR bytes. The flag is
//! inside the authenticated plaintext, so records cannot be cut or spliced unnoticed. A frame is
//! reassembled up to [`FRAME_BYTES_MAX`] and never beyond.

use crate::wire::{Message, MessageCodec, WireError, FRAME_BYTES_MAX};
use bytes::{BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

/// Largest Noise message (the protocol's own limit).
const RECORD_BYTES_MAX: usize = 65_535;
/// Authentication tag added to each record.
const TAG_BYTES: usize = 16;
/// Frame bytes carried per record: the record minus the tag and the flag byte.
const CHUNK_BYTES_MAX: usize = RECORD_BYTES_MAX - TAG_BYTES - 1;
const MORE: u8 = 0;
const LAST: u8 = 1;

/// Encrypts and authenticates every frame with the session's keys.
pub struct SecureCodec {
    transport: snow::TransportState,
    records: LengthDelimitedCodec,
    /// The frame being reassembled from records.
    frame: Vec<u8>,
    /// Decrypted record (grows to the largest record seen).
    plain: Vec<u8>,
    /// Encrypted record being built.
    sealed: Vec<u8>,
    /// Once a record fails authentication the connection is dead: refuse everything after it.
    failed: bool,
}

impl SecureCodec {
    pub(super) fn new(transport: snow::TransportState) -> SecureCodec {
        SecureCodec {
            transport,
            records: LengthDelimitedCodec::builder()
                .length_field_length(2)
                .max_frame_length(RECORD_BYTES_MAX)
                .new_codec(),
            frame: Vec::new(),
            plain: Vec::new(),
            sealed: Vec::new(),
            failed: false,
        }
    }
}

impl SecureCodec {
    /// Seals one record with any flag byte and piece, authenticated as the real encoder would:
    /// for fuzzing and tests of the reassembly path (the encoder itself only makes valid ones).
    #[doc(hidden)]
    pub fn seal_record(
        &mut self,
        flag: u8,
        piece: &[u8],
        dst: &mut BytesMut,
    ) -> Result<(), WireError> {
        if piece.len() > CHUNK_BYTES_MAX {
            return Err(WireError::TooLarge(piece.len()));
        }
        self.plain.clear();
        self.plain.push(flag);
        self.plain.extend_from_slice(piece);
        self.sealed.resize(self.plain.len() + TAG_BYTES, 0);
        let n = self
            .transport
            .write_message(&self.plain, &mut self.sealed)
            .map_err(|e| WireError::Malformed(format!("cannot encrypt: {e}")))?;
        dst.reserve(2 + n);
        dst.put_u16(n as u16);
        dst.put_slice(&self.sealed[..n]);
        Ok(())
    }
}

impl Decoder for SecureCodec {
    type Item = Message;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, WireError> {
        if self.failed {
            return Err(WireError::Unauthentic);
        }
        loop {
            let record = match self.records.decode(src) {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(None),
                // A 2-byte length cannot exceed the limit; anything else is the connection's.
                Err(e) => return Err(WireError::Io(e)),
            };
            if record.len() < TAG_BYTES + 1 {
                self.failed = true;
                return Err(WireError::Unauthentic);
            }
            self.plain.resize(record.len(), 0);
            let n = match self.transport.read_message(&record, &mut self.plain) {
                Ok(n) => n,
                Err(_) => {
                    self.failed = true;
                    return Err(WireError::Unauthentic);
                }
            };
            let Some((&flag, piece)) = self.plain[..n].split_first() else {
                self.failed = true;
                return Err(WireError::Malformed("empty record".into()));
            };
            if self.frame.len() + piece.len() > FRAME_BYTES_MAX {
                self.failed = true;
                return Err(WireError::TooLarge(self.frame.len() + piece.len()));
            }
            self.frame.extend_from_slice(piece);
            match flag {
                MORE => continue,
                LAST => {
                    let msg = Message::decode(&self.frame);
                    self.frame.clear();
                    if self.frame.capacity() > CHUNK_BYTES_MAX {
                        self.frame.shrink_to(CHUNK_BYTES_MAX);
                    }
                    return msg.map(Some);
                }
                f => {
                    self.failed = true;
                    return Err(WireError::Malformed(format!("record flag {f}")));
                }
            }
        }
    }
}

impl Encoder<Message> for SecureCodec {
    type Error = WireError;

    fn encode(&mut self, msg: Message, dst: &mut BytesMut) -> Result<(), WireError> {
        let bytes = msg.encode();
        if bytes.len() > FRAME_BYTES_MAX {
            return Err(WireError::TooLarge(bytes.len()));
        }
        let chunks = bytes.chunks(CHUNK_BYTES_MAX).count();
        for (i, chunk) in bytes.chunks(CHUNK_BYTES_MAX).enumerate() {
            let flag = if i + 1 == chunks { LAST } else { MORE };
            self.seal_record(flag, chunk, dst)?;
        }
        Ok(())
    }
}

/// The codec of an established connection, whichever the mode.
#[allow(clippy::large_enum_variant)]
pub enum FrameCodec {
    Plain(MessageCodec),
    Secure(SecureCodec),
}

impl Decoder for FrameCodec {
    type Item = Message;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, WireError> {
        match self {
            FrameCodec::Plain(c) => c.decode(src),
            FrameCodec::Secure(c) => c.decode(src),
        }
    }
}

impl Encoder<Message> for FrameCodec {
    type Error = WireError;

    fn encode(&mut self, msg: Message, dst: &mut BytesMut) -> Result<(), WireError> {
        match self {
            FrameCodec::Plain(c) => c.encode(msg, dst),
            FrameCodec::Secure(c) => c.encode(msg, dst),
        }
    }
}
