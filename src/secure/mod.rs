//! Authenticated, encrypted channels between branches.
//!
//! Every connection opens with a fixed 22-byte [`Preamble`] (magic, version, mode, cluster id,
//! claimed sender and receiver branch) so each side can refuse a stranger with a precise reason
//! before doing any work. In the default mode a Noise `KKpsk0` handshake follows
//! (`Noise_KKpsk0_25519_ChaChaPoly_BLAKE2s`, via the `snow` crate):
//!
//! - **KK**: both sides know each other's static X25519 public key from the cluster key file, so
//!   the dialler proves it holds the private key of the branch it claims to be, and the listener
//!   proves it is the branch that was dialled. With per-host key files (`snapctl keygen
//!   --per-host`) a host holds only its own branches' private keys and cannot pass for a branch
//!   of another host; a single cluster key file holds them all, so its holders are one trust
//!   domain.
//! - **psk0**: the cluster's pre-shared key is mixed in first: without the key file nobody
//!   completes a handshake, and keys of another cluster never work here.
//! - The preamble is the Noise prologue, so changing any byte of it fails the handshake.
//!
//! After two 48-byte handshake messages every frame travels as ChaCha20-Poly1305 records with
//! implicit, strictly increasing nonces and a key per direction ([`SecureCodec`]): a forged,
//! tampered, replayed, reordered or reflected record fails authentication and ends the
//! connection. A replayed first handshake message leads nowhere, since the replayer cannot derive
//! the session keys; the listener acts on nothing until the dialler's first encrypted frame.
//!
//! With `--insecure` the preamble is followed by plain frames ([`crate::wire::MessageCodec`]).
//!
//! **Operators** (`snapctl status`, `snapctl snapshot`) are no branch: their preamble names
//! [`OPERATOR`] as the caller and the handshake is Noise `NKpsk0`: the operator knows the
//! branch's public key from the key file (so it talks to the real branch), and the cluster's
//! pre-shared key proves the operator holds a key file of this cluster. Any key file of the
//! cluster will do, a per-host one too: it holds the psk and every branch's public key.

mod codec;
pub mod keys;

pub use codec::{FrameCodec, SecureCodec};
pub use keys::{BranchKeys, ClusterKey, KeyError, OperatorKeys};

use crate::types::BranchId;
use std::sync::Arc;

/// The Noise protocol every branch speaks.
pub const NOISE_PARAMS: &str = "Noise_KKpsk0_25519_ChaChaPoly_BLAKE2s";
/// The Noise protocol of an operator's control connection.
pub const NOISE_OPERATOR_PARAMS: &str = "Noise_NKpsk0_25519_ChaChaPoly_BLAKE2s";
/// The caller named in the preamble of an operator's control connection.
pub const OPERATOR: BranchId = BranchId(u16::MAX);
/// Length of the preamble.
pub const PREAMBLE_LEN: usize = 30;
/// Handshake messages are 48 bytes; anything much longer is refused before reading it.
pub const HANDSHAKE_MESSAGE_MAX: usize = 256;
const MAGIC: &[u8; 8] = b"SNAPBANK";
/// 2: the preamble names the caller's cluster epoch (`snapctl reshape`).
const VERSION: u8 = 2;
const PROLOGUE_TAG: &[u8] = b"snapbank/1 Noise_KKpsk0_25519_ChaChaPoly_BLAKE2s ";

/// How a branch protects its connections.
#[derive(Clone, Debug)]
pub enum Security {
    /// Plain frames, no authentication (`--insecure`).
    Insecure,
    /// Noise KKpsk0 with these keys.
    Noise(Arc<BranchKeys>),
}

impl Security {
    pub fn mode(&self) -> Mode {
        match self {
            Security::Insecure => Mode::Insecure,
            Security::Noise(_) => Mode::Noise,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Insecure = 0,
    Noise = 1,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Insecure => "--insecure (no key)",
            Mode::Noise => "the cluster key",
        })
    }
}

/// The first bytes on every connection, sent by the dialler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preamble {
    pub mode: Mode,
    pub cluster: u64,
    /// The caller's cluster epoch (0 until the first `snapctl reshape`), so a refusal can
    /// name both.
    pub epoch: u64,
    pub from: BranchId,
    pub to: BranchId,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("not a snapbank branch (its first bytes are not a snapbank preamble)")]
    NotSnapbank,
    #[error("speaks snapbank protocol version {0}, this branch speaks {VERSION}")]
    Version(u8),
    #[error("unknown connection mode {0}")]
    UnknownMode(u8),
    #[error(
        "it runs with {theirs} but this branch runs with {ours}; run every branch the same way"
    )]
    ModeMismatch { theirs: Mode, ours: Mode },
    #[error("handshake message of {0} bytes is malformed")]
    Malformed(usize),
    #[error("failed authentication: it does not hold this cluster's key for {} (another cluster's key file, or a forged or replayed handshake)", party(*.0))]
    Unauthentic(BranchId),
    #[error("unknown branch {0}")]
    UnknownBranch(BranchId),
}

/// Who `b` is in an error message: `branch #2`, or the operator (whose [`OPERATOR`] id is no
/// branch's, and printed as `branch #65535` would only puzzle).
fn party(b: BranchId) -> String {
    if b == OPERATOR {
        "an operator (snapctl)".to_string()
    } else {
        format!("branch {b}")
    }
}

impl Preamble {
    pub fn encode(&self) -> [u8; PREAMBLE_LEN] {
        let mut b = [0u8; PREAMBLE_LEN];
        b[..8].copy_from_slice(MAGIC);
        b[8] = VERSION;
        b[9] = self.mode as u8;
        b[10..18].copy_from_slice(&self.cluster.to_be_bytes());
        b[18..20].copy_from_slice(&self.from.0.to_be_bytes());
        b[20..22].copy_from_slice(&self.to.0.to_be_bytes());
        b[22..30].copy_from_slice(&self.epoch.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8; PREAMBLE_LEN]) -> Result<Preamble, HandshakeError> {
        if &b[..8] != MAGIC {
            return Err(HandshakeError::NotSnapbank);
        }
        if b[8] != VERSION {
            return Err(HandshakeError::Version(b[8]));
        }
        let mode = match b[9] {
            0 => Mode::Insecure,
            1 => Mode::Noise,
            m => return Err(HandshakeError::UnknownMode(m)),
        };
        let u16_at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let mut cluster = [0u8; 8];
        cluster.copy_from_slice(&b[10..18]);
        let mut epoch = [0u8; 8];
        epoch.copy_from_slice(&b[22..30]);
        Ok(Preamble {
            mode,
            cluster: u64::from_be_bytes(cluster),
            epoch: u64::from_be_bytes(epoch),
            from: BranchId(u16_at(18)),
            to: BranchId(u16_at(20)),
        })
    }

    fn prologue(&self) -> Vec<u8> {
        let mut p = PROLOGUE_TAG.to_vec();
        p.extend_from_slice(&self.encode());
        p
    }
}

fn params(operator: bool) -> snow::params::NoiseParams {
    // Constants that parse: covered by every handshake test.
    if operator {
        NOISE_OPERATOR_PARAMS
            .parse()
            .expect("NOISE_OPERATOR_PARAMS is a valid Noise pattern")
    } else {
        NOISE_PARAMS
            .parse()
            .expect("NOISE_PARAMS is a valid Noise pattern")
    }
}

fn public_key(keys: &BranchKeys, b: BranchId) -> Result<&keys::Key, HandshakeError> {
    keys.publics
        .get(b.index())
        .ok_or(HandshakeError::UnknownBranch(b))
}

/// A Noise `KKpsk0` state for `keys.me`, the dialler (`initiator`) or the listener of the
/// connection `pre` describes; the other side's static key is the one the key file pins for it.
fn handshake_state(
    keys: &BranchKeys,
    pre: &Preamble,
    initiator: bool,
) -> Result<snow::HandshakeState, HandshakeError> {
    let other = if initiator { pre.to } else { pre.from };
    let prologue = pre.prologue();
    if pre.from == OPERATOR {
        // The listener of an operator's connection: NKpsk0, the caller has no static key.
        let built = snow::Builder::new(params(true))
            .local_private_key(&keys.private)
            .psk(0, &keys.psk)
            .prologue(&prologue)
            .build_responder();
        return built.map_err(|_| HandshakeError::Unauthentic(OPERATOR));
    }
    let builder = snow::Builder::new(params(false))
        .local_private_key(&keys.private)
        .remote_public_key(public_key(keys, other)?)
        .psk(0, &keys.psk)
        .prologue(&prologue);
    let built = if initiator {
        builder.build_initiator()
    } else {
        builder.build_responder()
    };
    built.map_err(|_| HandshakeError::Unauthentic(other))
}

/// The dialler's side, between sending its first message and reading the answer.
pub struct Initiator {
    state: snow::HandshakeState,
    peer: BranchId,
}

/// Starts a handshake from `keys.me` to `pre.to`; returns the first message (send it after the
/// preamble, prefixed by its length as a big-endian u16).
pub fn initiate(keys: &BranchKeys, pre: &Preamble) -> Result<(Initiator, Vec<u8>), HandshakeError> {
    first_message(handshake_state(keys, pre, true)?, pre.to)
}

/// Writes the dialler's first handshake message to `peer`.
fn first_message(
    mut state: snow::HandshakeState,
    peer: BranchId,
) -> Result<(Initiator, Vec<u8>), HandshakeError> {
    let mut msg = vec![0u8; HANDSHAKE_MESSAGE_MAX];
    let n = state
        .write_message(&[], &mut msg)
        .map_err(|_| HandshakeError::Unauthentic(peer))?;
    msg.truncate(n);
    Ok((Initiator { state, peer }, msg))
}

/// Starts an operator's handshake (Noise `NKpsk0`) with branch `pre.to`, whose preamble must
/// name [`OPERATOR`] as the caller.
pub fn initiate_operator(
    keys: &OperatorKeys,
    pre: &Preamble,
) -> Result<(Initiator, Vec<u8>), HandshakeError> {
    let server = keys
        .publics
        .get(pre.to.index())
        .ok_or(HandshakeError::UnknownBranch(pre.to))?;
    let prologue = pre.prologue();
    let state = snow::Builder::new(params(true))
        .remote_public_key(server)
        .psk(0, &keys.psk)
        .prologue(&prologue)
        .build_initiator()
        .map_err(|_| HandshakeError::Unauthentic(pre.to))?;
    first_message(state, pre.to)
}

impl Initiator {
    /// Reads the listener's answer; on success the connection is authenticated both ways.
    pub fn finish(mut self, msg2: &[u8]) -> Result<SecureCodec, HandshakeError> {
        if msg2.len() > HANDSHAKE_MESSAGE_MAX {
            return Err(HandshakeError::Malformed(msg2.len()));
        }
        let mut payload = [0u8; HANDSHAKE_MESSAGE_MAX];
        let n = self
            .state
            .read_message(msg2, &mut payload)
            .map_err(|_| HandshakeError::Unauthentic(self.peer))?;
        if n != 0 || !self.state.is_handshake_finished() {
            return Err(HandshakeError::Malformed(msg2.len()));
        }
        let t = self
            .state
            .into_transport_mode()
            .map_err(|_| HandshakeError::Unauthentic(self.peer))?;
        Ok(SecureCodec::new(t))
    }
}

/// The listener's side: checks the dialler's first message against the public key of the branch
/// it claims to be (`pre.from`) and answers. Returns the answer to send (u16-length-prefixed)
/// and the codec for the connection.
pub fn respond(
    keys: &BranchKeys,
    pre: &Preamble,
    msg1: &[u8],
) -> Result<(Vec<u8>, SecureCodec), HandshakeError> {
    if msg1.len() > HANDSHAKE_MESSAGE_MAX {
        return Err(HandshakeError::Malformed(msg1.len()));
    }
    let mut state = handshake_state(keys, pre, false)?;
    let mut payload = [0u8; HANDSHAKE_MESSAGE_MAX];
    let n = state
        .read_message(msg1, &mut payload)
        .map_err(|_| HandshakeError::Unauthentic(pre.from))?;
    if n != 0 {
        return Err(HandshakeError::Malformed(msg1.len()));
    }
    let mut msg2 = vec![0u8; HANDSHAKE_MESSAGE_MAX];
    let n = state
        .write_message(&[], &mut msg2)
        .map_err(|_| HandshakeError::Unauthentic(pre.from))?;
    msg2.truncate(n);
    let t = state
        .into_transport_mode()
        .map_err(|_| HandshakeError::Unauthentic(pre.from))?;
    Ok((msg2, SecureCodec::new(t)))
}

#[cfg(test)]
mod tests;
