//! Shared by the fuzz targets: fixed, deterministic keys (no OsRng), so a run is reproducible.

#![allow(dead_code)]

use snapbank::hosts::HostList;
use snapbank::secure::keys::{public_of, BranchKey};
use snapbank::secure::{initiate, respond, BranchKeys, ClusterKey, Mode, Preamble, SecureCodec};
use snapbank::types::BranchId;
use snapbank::wire::{Message, WireError};
use std::path::Path;
use std::sync::OnceLock;

pub const HOSTS: &str = "127.0.0.1:8000:S\n127.0.0.1:8001\n127.0.0.1:8002\n";
pub const CLUSTER: u64 = 0x5eed_0000_0000_0007;
/// The branch the fuzzed listener plays.
pub const LISTENER: BranchId = BranchId(1);

pub fn hosts() -> HostList {
    HostList::parse(HOSTS, "fuzz host.list").expect("fixed host.list parses")
}

/// The cluster key: psk `0x5a…` and private key `[0x11 * (i+1); 32]` for branch `i`.
pub fn cluster_key() -> ClusterKey {
    let hosts = hosts();
    ClusterKey {
        psk: [0x5a; 32],
        branches: hosts
            .branches
            .iter()
            .enumerate()
            .map(|(i, &addr)| {
                let private = [0x11u8.wrapping_mul(i as u8 + 1); 32];
                BranchKey {
                    addr,
                    public: public_of(&private),
                    private: Some(private),
                }
            })
            .collect(),
    }
}

/// Every branch's keys, built once.
pub fn keys() -> &'static [BranchKeys] {
    static KEYS: OnceLock<Vec<BranchKeys>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let hosts = hosts();
        let k = cluster_key();
        (0..hosts.len() as u16)
            .map(|b| {
                k.branch_keys(&hosts, BranchId(b), Path::new("fuzz key"))
                    .expect("fixed key fits the fixed host.list")
            })
            .collect()
    })
}

/// The preamble of the honest channel 0 → 1.
pub fn preamble() -> Preamble {
    Preamble {
        mode: Mode::Noise,
        cluster: CLUSTER,
        epoch: 0,
        from: BranchId(0),
        to: LISTENER,
    }
}

/// A complete honest handshake on channel 0 → 1: (dialler's codec, listener's codec).
pub fn session() -> (SecureCodec, SecureCodec) {
    let p = preamble();
    let k = keys();
    let (init, msg1) = initiate(&k[0], &p).expect("honest initiate");
    let (msg2, listener) = respond(&k[1], &p, &msg1).expect("honest respond");
    (init.finish(&msg2).expect("honest finish"), listener)
}

/// Checks a message a decoder returned: valid, and its encoding decodes to itself.
pub fn check_decoded(m: &Message) {
    if let Err(e) = m.validate() {
        panic!("decoder returned a message validate() refuses ({e}): {m:?}");
    }
    match Message::decode(&m.encode()) {
        Ok(back) => assert_eq!(&back, m, "re-encoded message decodes differently"),
        Err(e) => panic!("re-encoded message does not decode ({e}): {m:?}"),
    }
}

/// A comparable summary of a decoder's answer.
#[derive(Debug, PartialEq, Eq, Clone)]
pub enum Outcome {
    Msg(Message),
    TooLarge(usize),
    Malformed,
    Invalid,
    Unauthentic,
    Io,
}

pub fn outcome(r: Result<Message, WireError>) -> Outcome {
    match r {
        Ok(m) => Outcome::Msg(m),
        Err(e) => error_outcome(&e),
    }
}

pub fn error_outcome(e: &WireError) -> Outcome {
    match e {
        WireError::TooLarge(n) => Outcome::TooLarge(*n),
        WireError::Malformed(_) => Outcome::Malformed,
        WireError::Invalid(_) => Outcome::Invalid,
        WireError::Unauthentic => Outcome::Unauthentic,
        WireError::Io(_) => Outcome::Io,
    }
}

/// Reads fuzzer input front to back; runs dry as zeros.
pub struct Cursor<'a> {
    pub data: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    /// Up to `n` bytes (fewer when the input runs out).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (b, rest) = self.data.split_at(n);
        self.data = rest;
        b
    }
}
