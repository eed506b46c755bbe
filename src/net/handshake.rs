//! The handshake I/O of both link kinds and of operators' connections: the preamble, Noise
//! (`KKpsk0` between branches, `NKpsk0` with an operator) and the `Hello` frames, and the checks
//! of who a caller claims to be. Owns no state: the callers (`outgoing`, `inbound`, `control`)
//! hold the sockets and the deadlines.

use super::{kind, metrics, NodeConfig};
use crate::secure::{self, FrameCodec, Preamble, Security, PREAMBLE_LEN};
use crate::types::BranchId;
use crate::wire::{Message, MessageCodec, WireError};
use futures::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// Time a peer gets to complete the handshake and send its `Hello` (and a dial to connect).
pub(super) const HANDSHAKE_TIME_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub(super) enum HandshakeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("{0}")]
    Secure(#[from] secure::HandshakeError),
    #[error("handshake not completed within {HANDSHAKE_TIME_MAX:?}")]
    Timeout,
    #[error("closed during handshake: the peer refused us (its log says why; do both run with the same host.list and cluster key file?)")]
    Closed,
    #[error("{0}")]
    Refused(String),
}

fn closed_as(e: std::io::Error) -> HandshakeError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        HandshakeError::Closed
    } else {
        HandshakeError::Io(e)
    }
}

/// Reads a u16-length-prefixed handshake message of at most [`secure::HANDSHAKE_MESSAGE_MAX`].
pub(super) async fn read_handshake_message(
    stream: &mut TcpStream,
) -> Result<Vec<u8>, HandshakeError> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.map_err(closed_as)?;
    let len = u16::from_be_bytes(len) as usize;
    if len > secure::HANDSHAKE_MESSAGE_MAX {
        return Err(secure::HandshakeError::Malformed(len).into());
    }
    let mut msg = vec![0u8; len];
    stream.read_exact(&mut msg).await.map_err(closed_as)?;
    Ok(msg)
}

pub(super) fn with_length(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + msg.len());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

/// The dialler's side of the key exchange: preamble, then (with a key) Noise KKpsk0.
async fn secure_dial(
    stream: &mut TcpStream,
    cfg: &NodeConfig,
    peer: BranchId,
) -> Result<FrameCodec, HandshakeError> {
    let pre = Preamble {
        mode: cfg.security.mode(),
        cluster: cfg.cluster_id,
        epoch: cfg.epoch,
        from: cfg.core.me,
        to: peer,
    };
    match &cfg.security {
        Security::Insecure => {
            stream.write_all(&pre.encode()).await?;
            Ok(FrameCodec::Plain(MessageCodec::default()))
        }
        Security::Noise(keys) => {
            let (init, msg1) = secure::initiate(keys, &pre)?;
            let mut first = pre.encode().to_vec();
            first.extend_from_slice(&with_length(&msg1));
            stream.write_all(&first).await?;
            let msg2 = read_handshake_message(stream).await?;
            Ok(FrameCodec::Secure(init.finish(&msg2)?))
        }
    }
}

/// The listener's side: reads and checks the preamble (who calls, from where, in which mode),
/// then runs the listener's half of Noise. Returns the caller's branch and the codec.
pub(super) async fn secure_accept(
    stream: &mut TcpStream,
    cfg: &NodeConfig,
    remote: SocketAddr,
) -> Result<(BranchId, FrameCodec), HandshakeError> {
    let mut raw = [0u8; PREAMBLE_LEN];
    stream.read_exact(&mut raw).await.map_err(closed_as)?;
    let pre = Preamble::decode(&raw)?;
    // An operator (snapctl) is no branch: the cluster's pre-shared key is its proof.
    let peer = if pre.from == secure::OPERATOR && pre.to == cfg.core.me {
        secure::OPERATOR
    } else {
        check_claim(cfg, pre.cluster, Some(pre.epoch), pre.from, pre.to, remote)
            .map_err(HandshakeError::Refused)?
    };
    let ours = cfg.security.mode();
    if pre.mode != ours {
        return Err(secure::HandshakeError::ModeMismatch {
            theirs: pre.mode,
            ours,
        }
        .into());
    }
    match &cfg.security {
        Security::Insecure => Ok((peer, FrameCodec::Plain(MessageCodec::default()))),
        Security::Noise(keys) => {
            let msg1 = read_handshake_message(stream).await?;
            let (msg2, codec) = secure::respond(keys, &pre, &msg1).map_err(|e| {
                HandshakeError::Refused(if peer == secure::OPERATOR {
                    format!("{e}; an operator (snapctl) without this cluster's key file")
                } else {
                    format!("{e}; it claimed to be {}", cfg.hosts.addr(pre.from))
                })
            })?;
            stream.write_all(&with_length(&msg2)).await?;
            Ok((peer, FrameCodec::Secure(codec)))
        }
    }
}

/// The whole dialler's handshake on a connected `stream`: key exchange, then our `Hello` and the
/// peer's, each within [`HANDSHAKE_TIME_MAX`].
pub(super) async fn dial(
    mut stream: TcpStream,
    cfg: &NodeConfig,
    peer: BranchId,
    counters: &metrics::LinkCounters,
) -> Result<Framed<metrics::Counted<TcpStream>, FrameCodec>, HandshakeError> {
    let me = cfg.core.me;
    let codec = tokio::time::timeout(HANDSHAKE_TIME_MAX, secure_dial(&mut stream, cfg, peer))
        .await
        .map_err(|_| HandshakeError::Timeout)??;
    let mut framed = Framed::new(counters.count(stream), codec);
    framed
        .send(Message::Hello {
            cluster: cfg.cluster_id,
            from: me,
            to: peer,
        })
        .await?;
    let reply = tokio::time::timeout(HANDSHAKE_TIME_MAX, framed.next())
        .await
        .map_err(|_| HandshakeError::Timeout)?;
    match reply {
        Some(Ok(Message::Hello { cluster, from, to }))
            if cluster == cfg.cluster_id && from == peer && to == me =>
        {
            Ok(framed)
        }
        Some(Ok(Message::Hello { cluster, from, .. })) => Err(HandshakeError::Refused(format!(
            "refused: answered as {from} of cluster {cluster:016x}, expected {peer} of {:016x}",
            cfg.cluster_id
        ))),
        Some(Ok(other)) => Err(HandshakeError::Refused(format!(
            "refused: answered {} instead of Hello",
            kind(&other)
        ))),
        Some(Err(e)) => Err(e.into()),
        None => Err(HandshakeError::Closed),
    }
}

/// Whether the first frame of an accepted connection is a `Hello` from a branch that may call.
pub(super) fn check_hello(
    cfg: &NodeConfig,
    hello: &Message,
    remote: SocketAddr,
) -> Result<BranchId, String> {
    let Message::Hello { cluster, from, to } = hello else {
        return Err(format!("first frame is {}, not Hello", kind(hello)));
    };
    check_claim(cfg, *cluster, None, *from, *to, remote)
}

/// Whether a caller claiming to be `from` of `cluster`, calling `to`, from `remote` may be it.
fn check_claim(
    cfg: &NodeConfig,
    cluster: u64,
    epoch: Option<u64>,
    from: BranchId,
    to: BranchId,
    remote: SocketAddr,
) -> Result<BranchId, String> {
    let me = cfg.core.me;
    if from == secure::OPERATOR {
        return Err(format!(
            "an operator (snapctl) asked for branch {to}, this is {me}; does its host.list differ?"
        ));
    }
    match epoch {
        Some(e) if cluster != cfg.cluster_id && e != cfg.epoch => {
            return Err(format!(
                "{} is of epoch {e} (cluster {cluster:016x}), this branch of epoch {} (cluster {:016x}); run every branch on the stores `snapctl reshape` wrote for one epoch",
                cfg.hosts
                    .branches
                    .get(from.index())
                    .map_or_else(|| from.to_string(), |a| a.to_string()),
                cfg.epoch,
                cfg.cluster_id
            ))
        }
        _ if cluster != cfg.cluster_id => {
            return Err(format!(
                "cluster {cluster:016x} (epoch {}) is not ours ({:016x}, epoch {}); check host.list and --initial-balance",
                epoch.map_or_else(|| "?".to_string(), |e| e.to_string()),
                cfg.cluster_id,
                cfg.epoch
            ))
        }
        _ => {}
    }
    if from.index() >= cfg.hosts.len() || from == me {
        return Err(format!("unknown branch {from}"));
    }
    if to != me {
        return Err(format!("it wanted branch {to}, this is {me}"));
    }
    let expected_ip = cfg.hosts.addr(from).ip();
    if remote.ip() != expected_ip {
        return Err(format!(
            "claims to be {} but connects from {}",
            cfg.hosts.addr(from),
            remote.ip()
        ));
    }
    Ok(from)
}
