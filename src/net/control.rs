//! Control connections: an operator (`snapctl status`, `snapctl snapshot`) asks a running branch.
//!
//! The operator dials the branch's port like a branch would, with [`secure::OPERATOR`] as the
//! caller in the preamble, then (unless the cluster runs `--insecure`) a Noise `NKpsk0`
//! handshake: the branch proves it holds its private key, the operator proves it holds the
//! cluster's pre-shared key. Then `Request` frames go one way and `Reply` frames the other. The
//! branch's core answers in its own loop (see `Event::Control`), so the reply is a consistent
//! view of one step.
//!
//! A branch answers operators only from the IPs of host.list (its listener closes other
//! connections before any handshake, see [`refused_stranger`]). An operator on a host with
//! several addresses picks one that host.list lists with [`Operator::from`] (`snapctl --from
//! IP`); one whose connection leaves from an address host.list does not list is told so at
//! once, naming that address, instead of waiting for an answer that cannot come.

use super::handshake::{read_handshake_message, with_length, HandshakeError};
use super::{Event, Inbox};
use crate::core::Branch;
use crate::core::DurableState;
use crate::hosts::HostList;
use crate::secure::{self, FrameCodec, Mode, OperatorKeys, Preamble, OPERATOR};
use crate::store::{SledStore, StoreError};
use crate::types::{BranchId, Micros, Seq, SnapshotId};
use crate::wire::{
    BranchStatus, Message, MessageCodec, RangeSum, Reply, Request, Retention, FRAME_BYTES_MAX,
};
use futures::{SinkExt, StreamExt};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// How an operator reaches the branches of a cluster.
#[derive(Clone, Debug)]
pub struct Operator {
    pub hosts: HostList,
    /// The cluster's keys; `None` when the cluster runs `--insecure`.
    pub keys: Option<OperatorKeys>,
    /// The local address to connect from (`None`: the one the system picks).
    pub from: Option<IpAddr>,
}

/// Why a request to a branch failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{addr}: cannot connect: {why}")]
    Connect { addr: SocketAddr, why: String },
    #[error("{addr}: no answer within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("{addr}: {why}")]
    Refused { addr: SocketAddr, why: String },
    #[error("{addr}: this host connects from {from}, which host.list does not list, and branches answer operators only from the IPs of host.list: pass --from with an address of this host that host.list lists, or run snapctl on a host of the cluster")]
    Stranger { addr: SocketAddr, from: IpAddr },
}

/// Sends `req` to branch `to` and waits (at most `timeout` in all) for its reply.
pub async fn ask(
    op: &Operator,
    to: BranchId,
    req: Request,
    timeout: Duration,
) -> Result<Reply, ControlError> {
    let addr = op.hosts.addr(to);
    match tokio::time::timeout(timeout, exchange(op, to, addr, req)).await {
        Ok(r) => r,
        Err(_) => Err(ControlError::Timeout { addr, timeout }),
    }
}

async fn exchange(
    op: &Operator,
    to: BranchId,
    addr: SocketAddr,
    req: Request,
) -> Result<Reply, ControlError> {
    let refused = |why: String| ControlError::Refused { addr, why };
    let mut stream = connect(addr, op.from).await?;
    // The branch would close a connection from anywhere else without a word.
    if let Ok(local) = stream.local_addr() {
        if !op.hosts.branches.iter().any(|b| b.ip() == local.ip()) {
            return Err(ControlError::Stranger {
                addr,
                from: local.ip(),
            });
        }
    }
    let _ = stream.set_nodelay(true);
    // The operator does not know the cluster id (it depends on the initial balance); the
    // pre-shared key is what proves it belongs to this cluster.
    let pre = Preamble {
        mode: if op.keys.is_some() {
            Mode::Noise
        } else {
            Mode::Insecure
        },
        cluster: 0,
        epoch: 0,
        from: OPERATOR,
        to,
    };
    let codec = match &op.keys {
        None => {
            stream
                .write_all(&pre.encode())
                .await
                .map_err(|e| refused(e.to_string()))?;
            FrameCodec::Plain(MessageCodec::default())
        }
        Some(keys) => {
            let (init, msg1) =
                secure::initiate_operator(keys, &pre).map_err(|e| refused(e.to_string()))?;
            let mut first = pre.encode().to_vec();
            first.extend_from_slice(&with_length(&msg1));
            stream
                .write_all(&first)
                .await
                .map_err(|e| refused(e.to_string()))?;
            let msg2 = read_handshake_message(&mut stream)
                .await
                .map_err(|e| refused(handshake_failure(e)))?;
            FrameCodec::Secure(init.finish(&msg2).map_err(|e| refused(e.to_string()))?)
        }
    };
    let mut framed = Framed::new(stream, codec);
    framed
        .send(Message::Request(req))
        .await
        .map_err(|e| refused(e.to_string()))?;
    match framed.next().await {
        Some(Ok(Message::Reply(r))) => Ok(r),
        Some(Ok(other)) => Err(refused(format!("answered {other:?} instead of a reply"))),
        Some(Err(e)) => Err(refused(e.to_string())),
        None => Err(refused(
            "closed the connection (its log says why: another cluster's key file, or one branch runs --insecure and the other not?)"
                .to_string(),
        )),
    }
}

/// Connects to `addr`, from `from` if given.
async fn connect(addr: SocketAddr, from: Option<IpAddr>) -> Result<TcpStream, ControlError> {
    let failed = |why: String| ControlError::Connect { addr, why };
    let Some(ip) = from else {
        return TcpStream::connect(addr)
            .await
            .map_err(|e| failed(e.to_string()));
    };
    if ip.is_ipv4() != addr.is_ipv4() {
        return Err(failed(format!(
            "--from {ip} and the branch's address are not of the same IP version"
        )));
    }
    let socket = if ip.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| failed(e.to_string()))?;
    socket
        .bind(SocketAddr::new(ip, 0))
        .map_err(|e| failed(format!("--from {ip}: {e} (is it an address of this host?)")))?;
    socket
        .connect(addr)
        .await
        .map_err(|e| failed(e.to_string()))
}

/// The listener closed a connection from `remote`, whose IP host.list does not list. Logged at
/// info (an operator who runs snapctl from another host learns why it gets no answer), at most
/// once per [`STRANGER_REPORT_EVERY`] so that a scan of the port cannot flood the log; the
/// rest at debug, and counted in the next info line.
pub(super) fn refused_stranger(remote: SocketAddr) {
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    static QUIET: AtomicU64 = AtomicU64::new(0);
    let due = match LAST.lock() {
        Ok(mut last) => {
            let due = match *last {
                None => true,
                Some(t) => t.elapsed() >= STRANGER_REPORT_EVERY,
            };
            if due {
                *last = Some(Instant::now());
            }
            due
        }
        Err(_) => true,
    };
    if !due {
        QUIET.fetch_add(1, Ordering::Relaxed);
        debug!("connection from {remote} closed: not an address of host.list");
        return;
    }
    let quiet = QUIET.swap(0, Ordering::Relaxed);
    let more = if quiet > 0 {
        format!(" ({quiet} more since the last such line)")
    } else {
        String::new()
    };
    info!(
        "connection from {remote} closed: {} is not an address of host.list; an operator must run snapctl on a host of host.list (snapctl --from IP picks which of its addresses){more}",
        remote.ip()
    );
}

/// How often at most [`refused_stranger`] logs at info.
const STRANGER_REPORT_EVERY: Duration = Duration::from_secs(10);

fn handshake_failure(e: HandshakeError) -> String {
    match e {
        HandshakeError::Closed => "refused the handshake (its log says why: another cluster's key file, or --insecure on one side only?)".to_string(),
        other => other.to_string(),
    }
}

/// A request waiting for the branch's core, and where its answer goes.
#[derive(Debug)]
pub(super) struct Pending {
    pub req: Request,
    pub reply: oneshot::Sender<Reply>,
}

/// Serves an operator's connection once its handshake is done: each request goes to the core's
/// loop, each answer back, until the operator closes or the branch stops.
pub(super) async fn serve(
    mut framed: Framed<TcpStream, FrameCodec>,
    remote: SocketAddr,
    inbox: Inbox,
    stop: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return,
            f = framed.next() => f,
        };
        let req = match next {
            Some(Ok(Message::Request(req))) => req,
            Some(Ok(other)) => {
                debug!("operator connection from {remote} closed: it sent {other:?}");
                return;
            }
            Some(Err(e)) => {
                debug!("operator connection from {remote} closed: {e}");
                return;
            }
            None => return,
        };
        let (tx, rx) = oneshot::channel();
        if inbox
            .send(Event::Control(Pending { req, reply: tx }))
            .await
            .is_err()
        {
            return;
        }
        let reply = tokio::select! {
            _ = stop.cancelled() => Reply::Refused("the branch is stopping".to_string()),
            r = rx => r.unwrap_or_else(|_| Reply::Refused("the branch is stopping".to_string())),
        };
        if framed.send(fit_in_frame(reply)).await.is_err() {
            return;
        }
    }
}

/// The reply as a message, or, if it would not fit in one frame, a refusal that says so (the
/// operator asks for less at a time) instead of a connection closed without a word.
fn fit_in_frame(reply: Reply) -> Message {
    let msg = Message::Reply(reply);
    let len = msg.encode().len();
    if len <= FRAME_BYTES_MAX {
        return msg;
    }
    Message::Reply(Reply::Refused(format!(
        "the answer would take {len} bytes, over the frame limit of {FRAME_BYTES_MAX}; ask for less at a time"
    )))
}

/// What a branch no longer keeps, as the operator channel reports it.
pub fn retention(st: &DurableState, identity: &crate::store::Identity) -> Retention {
    Retention {
        genesis: identity
            .genesis_balances()
            .get(identity.me.index())
            .copied(),
        history_from: st.history_from,
        pruned_below: st.pruned_below,
        compacted: st.out.iter().map(|o| o.compacted).collect(),
    }
}

/// What the shell keeps for operators: when the branch started, how often it restarted, and
/// who waits for which snapshot.
pub(super) struct Console {
    started: std::time::Instant,
    restarts: u64,
    waiting: Vec<(SnapshotId, oneshot::Sender<Reply>)>,
}

impl Console {
    pub fn new(started: std::time::Instant, restarts: u64) -> Console {
        Console {
            started,
            restarts,
            waiting: Vec::new(),
        }
    }

    /// Answers a status request from the core's state at once; a snapshot request (initiator
    /// only) starts a snapshot in this step and is answered when it completes.
    pub fn handle(
        &mut self,
        core: &mut Branch,
        store: &SledStore,
        p: Pending,
        inbound_up: Vec<BranchId>,
        hosts: &HostList,
        now: Micros,
    ) {
        let failed = |e: StoreError| Reply::Refused(format!("cannot read the store: {e}"));
        match p.req {
            Request::Global { .. } if !core.is_initiator() => {
                let init = hosts.addr(core.config().initiator);
                let _ = p.reply.send(Reply::Refused(format!(
                    "this branch is not the initiator; ask {init}"
                )));
            }
            Request::Global { snapshot } => {
                let reply = match store.global(snapshot) {
                    Ok(g) => Reply::Global(g),
                    Err(e) => failed(e),
                };
                let _ = p.reply.send(reply);
            }
            Request::Part { snapshot } => {
                let reply = match store.part(snapshot) {
                    Ok(part) => Reply::Part(part),
                    Err(e) => failed(e),
                };
                let _ = p.reply.send(reply);
            }
            Request::LogSums { ranges } => {
                let st = core.state();
                let sums: Result<Vec<RangeSum>, StoreError> = ranges
                    .iter()
                    .map(|&(peer, after, upto)| {
                        let Some(out) = st.out.get(peer.index()).filter(|_| upto >= after) else {
                            return Ok(RangeSum {
                                count: 0,
                                money: 0,
                                whole: false,
                                compacted: Seq(u64::MAX),
                            });
                        };
                        let s = store.log_sum(peer, after, upto)?;
                        Ok(RangeSum {
                            count: s.count,
                            money: s.money,
                            whole: s.dense,
                            compacted: out.compacted,
                        })
                    })
                    .collect();
                let _ = p.reply.send(match sums {
                    Ok(s) => Reply::LogSums(s),
                    Err(e) => failed(e),
                });
            }
            Request::Parts { snapshots } => {
                let parts: Result<Vec<_>, StoreError> =
                    snapshots.iter().map(|&k| store.part(k)).collect();
                let _ = p.reply.send(match parts {
                    Ok(parts) => Reply::Parts {
                        parts,
                        retention: retention(core.state(), store.identity()),
                    },
                    Err(e) => failed(e),
                });
            }
            Request::Status => {
                let _ = p.reply.send(Reply::Status(self.status(core, inbound_up)));
            }
            Request::Snapshot if !core.is_initiator() => {
                let init = hosts.addr(core.config().initiator);
                let _ = p.reply.send(Reply::Refused(format!(
                    "this branch is not the initiator; ask {init}"
                )));
            }
            Request::Snapshot => {
                let k = core.state().next_snapshot;
                core.on_snapshot_tick(now);
                if core.state().next_snapshot == k {
                    let _ = p.reply.send(Reply::Refused(format!(
                        "{} snapshots are still in flight; try again later",
                        core.snapshots_pending()
                    )));
                } else {
                    self.waiting.push((k, p.reply));
                    // Each waits for a distinct snapshot in flight (snapshots complete in order,
                    // and each completion answers its own): the core's limit bounds them.
                    debug_assert!(self.waiting.len() <= core.config().live_snapshots_max);
                }
            }
        }
    }

    /// Snapshot `snapshot` is complete and durable: answer whoever asked for it.
    pub fn completed(
        &mut self,
        snapshot: SnapshotId,
        duration_us: u64,
        total: u128,
        expected: u64,
    ) {
        let (done, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(k, _)| *k == snapshot);
        self.waiting = rest;
        for (_, reply) in done {
            let _ = reply.send(Reply::SnapshotDone {
                snapshot,
                duration_us,
                total,
                expected,
            });
        }
    }

    fn status(&self, core: &Branch, inbound_up: Vec<BranchId>) -> BranchStatus {
        let st = core.state();
        let me = core.config().me;
        BranchStatus {
            branch: me,
            initiator: core.is_initiator(),
            balance: st.balance,
            links_up: core.links_up_to(),
            inbound_up,
            sent: st.out.iter().map(|o| o.sent.0).sum(),
            applied: st.inc.iter().map(|i| i.applied.0).sum(),
            unacked: core.unacked_total() as u64,
            unacked_money: core.unacked_money(),
            last_snapshot: if core.is_initiator() {
                st.completed
            } else {
                st.parts_done
            },
            pending: core.pending(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            restarts: self.restarts,
            history_from: st.history_from,
            unconserved_since: st.unconserved_since,
        }
    }
}
