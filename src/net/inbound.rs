//! The inbound side: the [`Listener`] accepts peers' (and operators') connections, and each
//! [`InboundConn`] reads transfers, markers and parts from its peer and writes our
//! acknowledgements back, taking the latest from the peer's slot in [`AckSlots`].

use super::handshake::{self, HandshakeError, HANDSHAKE_TIME_MAX};
use super::{control, kind, metrics, Event, Inbox, NodeConfig, STOP_FLUSH_TIME_MAX};
use crate::secure::{self, FrameCodec};
use crate::types::BranchId;
use crate::wire::Message;
use futures::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// Inbound connections still in their handshake at once; more are closed at once (strangers
/// cannot tie up more than this many tasks for more than [`HANDSHAKE_TIME_MAX`]).
const HANDSHAKES_PENDING_MAX: usize = 128;

/// Pause after a failed `accept` (out of file descriptors, say) before the next.
const ACCEPT_RETRY_PAUSE: Duration = Duration::from_millis(50);

static CONN_IDS: AtomicU64 = AtomicU64::new(1);

/// One peer's current inbound connection: its id and where the core loop puts its next ack.
type Slot = Option<(u64, watch::Sender<Option<Message>>)>;

/// The acknowledgement slot of the current inbound connection from each peer, shared by the
/// core loop (which fills it) and the connections (which register, write and clear it). Acks
/// are cumulative, so a slot holds only the latest: a peer that stops reading cannot make it
/// grow.
#[derive(Clone)]
pub(super) struct AckSlots(Arc<Mutex<Vec<Slot>>>);

/// The slots, locked: one lock for all of a step's acks.
pub(super) struct AckSlotsGuard<'a>(MutexGuard<'a, Vec<Slot>>);

impl AckSlotsGuard<'_> {
    /// Makes `msg` the next ack the current connection from `to` writes (if there is one).
    pub(super) fn send(&self, to: BranchId, msg: Message) {
        if let Some((_, tx)) = &self.0[to.index()] {
            tx.send_replace(Some(msg));
        }
    }
}

impl AckSlots {
    pub(super) fn new(branches: usize) -> AckSlots {
        AckSlots(Arc::new(Mutex::new(vec![None; branches])))
    }

    pub(super) fn lock(&self) -> AckSlotsGuard<'_> {
        AckSlotsGuard(self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The peers whose inbound connection to this branch is up.
    pub(super) fn up(&self) -> Vec<BranchId> {
        let w = self.lock();
        (0..w.0.len())
            .filter(|i| w.0[*i].is_some())
            .map(|i| BranchId(i as u16))
            .collect()
    }

    /// Whether `conn` is `peer`'s current connection.
    pub(super) fn is_current(&self, peer: BranchId, conn: u64) -> bool {
        matches!(&self.lock().0[peer.index()], Some((id, _)) if *id == conn)
    }

    /// Drops `peer`'s ack writer, which ends its connection (the peer redials).
    pub(super) fn close(&self, peer: BranchId) {
        self.lock().0[peer.index()] = None;
    }

    /// Makes `conn` `peer`'s current connection: a newer connection from the same peer
    /// replaces the old one, whose reader then stops.
    fn open(&self, peer: BranchId, conn: u64) -> watch::Receiver<Option<Message>> {
        let (tx, rx) = watch::channel(None);
        self.lock().0[peer.index()] = Some((conn, tx));
        rx
    }

    /// Connection `conn` from `peer` ended: clears its slot unless a newer one took it.
    fn release(&self, peer: BranchId, conn: u64) {
        let mut w = self.lock();
        if matches!(&w.0[peer.index()], Some((id, _)) if *id == conn) {
            w.0[peer.index()] = None;
        }
    }
}

/// Accepts connections until the branch stops; spawns an [`InboundConn`] for each on `tasks`.
pub(super) struct Listener {
    pub listener: TcpListener,
    pub cfg: NodeConfig,
    pub inbox: Inbox,
    pub acks: AckSlots,
    pub stop: CancellationToken,
    pub tasks: TaskTracker,
}

impl Listener {
    pub(super) async fn run(self) {
        let handshakes = Arc::new(Semaphore::new(HANDSHAKES_PENDING_MAX));
        loop {
            let accepted = tokio::select! {
                _ = self.stop.cancelled() => return,
                a = self.listener.accept() => a,
            };
            match accepted {
                Ok((stream, remote)) => {
                    // Only the IPs of host.list may hold a handshake slot: strangers cannot use
                    // up the slots and block the branches' own reconnects.
                    if !self
                        .cfg
                        .hosts
                        .branches
                        .iter()
                        .any(|a| a.ip() == remote.ip())
                    {
                        control::refused_stranger(remote);
                        continue;
                    }
                    let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                        debug!("connection from {remote} closed: {HANDSHAKES_PENDING_MAX} handshakes already pending");
                        continue;
                    };
                    let conn = InboundConn {
                        remote,
                        cfg: self.cfg.clone(),
                        inbox: self.inbox.clone(),
                        acks: self.acks.clone(),
                        stop: self.stop.clone(),
                    };
                    self.tasks.spawn(conn.run(stream, permit));
                }
                Err(e) => {
                    warn!("accept failed: {e}");
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        _ = tokio::time::sleep(ACCEPT_RETRY_PAUSE) => {}
                    }
                }
            }
        }
    }
}

/// One connection a peer dialled to us: handshake, then transfers/markers/parts in, acks out.
struct InboundConn {
    remote: SocketAddr,
    cfg: NodeConfig,
    inbox: Inbox,
    acks: AckSlots,
    stop: CancellationToken,
}

/// A branch's connection, handshake done.
type Linked = Framed<metrics::Counted<TcpStream>, FrameCodec>;

/// Who called, handshake done.
enum Accepted {
    Branch(BranchId, Linked),
    /// An operator (`snapctl`): served by [`control::serve`].
    Operator(Framed<TcpStream, FrameCodec>),
}

impl InboundConn {
    async fn run(self, stream: TcpStream, permit: OwnedSemaphorePermit) {
        let accepted = tokio::select! {
            _ = self.stop.cancelled() => return,
            a = self.handshake(stream, permit) => a,
        };
        match accepted {
            Some(Accepted::Branch(peer, framed)) => self.serve(peer, framed).await,
            Some(Accepted::Operator(framed)) => {
                control::serve(framed, self.remote, self.inbox, self.stop).await
            }
            None => {}
        }
    }

    /// Runs the listener's side of the handshake within [`HANDSHAKE_TIME_MAX`] and, for a
    /// branch, answers its `Hello`; logs why if it refuses. The handshake slot `permit` is
    /// given back as soon as the caller is known.
    async fn handshake(
        &self,
        mut stream: TcpStream,
        permit: OwnedSemaphorePermit,
    ) -> Option<Accepted> {
        let (remote, cfg) = (self.remote, &self.cfg);
        let _ = stream.set_nodelay(true);
        let deadline = tokio::time::Instant::now() + HANDSHAKE_TIME_MAX;
        let accepted =
            tokio::time::timeout_at(deadline, handshake::secure_accept(&mut stream, cfg, remote))
                .await;
        let (claimed, codec) = match accepted {
            Ok(Ok(c)) => c,
            Ok(Err(HandshakeError::Closed)) => {
                debug!("connection from {remote} closed during the handshake");
                return None;
            }
            Ok(Err(e)) => {
                warn!("connection from {remote} refused: {e}");
                return None;
            }
            Err(_) => {
                warn!(
                    "connection from {remote} refused: no handshake within {HANDSHAKE_TIME_MAX:?}"
                );
                return None;
            }
        };
        if claimed == secure::OPERATOR {
            drop(permit);
            return Some(Accepted::Operator(Framed::new(stream, codec)));
        }
        let mut framed = Framed::new(cfg.metrics.incoming.count(stream), codec);
        // The first encrypted frame proves the dialler holds the session keys (a replayed
        // handshake cannot produce it): nothing is acted on before it.
        let hello = match tokio::time::timeout_at(deadline, framed.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => {
                warn!("connection from {remote} refused: bad first frame: {e}");
                return None;
            }
            Ok(None) => return None,
            Err(_) => {
                warn!("connection from {remote} refused: no Hello within {HANDSHAKE_TIME_MAX:?}");
                return None;
            }
        };
        let peer = match handshake::check_hello(cfg, &hello, remote) {
            Ok(p) if p == claimed => p,
            Ok(p) => {
                warn!("connection from {remote} refused: its preamble claimed {claimed} but its Hello {p}");
                return None;
            }
            Err(why) => {
                warn!("connection from {remote} refused: {why}");
                return None;
            }
        };
        drop(permit);
        let reply = Message::Hello {
            cluster: cfg.cluster_id,
            from: cfg.core.me,
            to: peer,
        };
        if framed.send(reply).await.is_err() {
            return None;
        }
        Some(Accepted::Branch(peer, framed))
    }

    /// Reads the peer's transfers, markers and parts into the inbox and writes the latest ack
    /// from its slot, until either side closes, a newer connection replaces this one, or the
    /// branch stops.
    async fn serve(self, peer: BranchId, framed: Linked) {
        self.cfg.metrics.incoming.connected();
        let conn = CONN_IDS.fetch_add(1, Ordering::Relaxed);
        let mut ack_rx = self.acks.open(peer, conn);
        if self.inbox.send(Event::InboundUp { peer }).await.is_err() {
            return;
        }
        let (mut sink, mut stream) = framed.split();
        let reason = loop {
            tokio::select! {
                _ = self.stop.cancelled() => {
                    let _ = tokio::time::timeout(STOP_FLUSH_TIME_MAX, sink.flush()).await;
                    return;
                }
                changed = ack_rx.changed() => match changed {
                    Ok(()) => {
                        let latest = ack_rx.borrow_and_update().clone();
                        if let Some(msg) = latest {
                            let sent = tokio::select! {
                                _ = self.stop.cancelled() => return,
                                r = sink.send(msg) => r,
                            };
                            if let Err(e) = sent {
                                break e.to_string();
                            }
                        }
                    }
                    // Replaced by a newer connection from the same peer.
                    Err(_) => break "replaced by a newer connection".to_string(),
                },
                f = stream.next() => match f {
                    Some(Ok(msg @ Message::Position(_))) => {
                        if self.inbox.send(Event::Position { from: peer, conn, msg }).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(msg @ (Message::Transfers { .. } | Message::Marker { .. } | Message::Part(_) | Message::Compact { .. }))) => {
                        if self.inbox.send(Event::Message { from: peer, msg }).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(other)) => break format!("unexpected {} from the sender", kind(&other)),
                    Some(Err(e)) => break e.to_string(),
                    None => break "closed by peer".to_string(),
                }
            }
        };
        debug!(
            "inbound connection from {} ({peer}) ended: {reason}",
            self.remote
        );
        self.acks.release(peer, conn);
    }
}
