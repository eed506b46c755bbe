//! The outgoing link to one peer: a task ([`OutgoingLink`]) that dials it (retrying every
//! `reconnect_interval`, forever), handshakes, writes the core's messages for that peer and reads
//! its acknowledgements; and the core loop's end of it ([`OutLink`]), its queue.
//!
//! Each connection is an epoch (1, 2, …): the core stamps every message with the epoch it was
//! meant for, and the link writes only those of its current connection, so nothing queued for a
//! broken connection reaches the next one (the core resends it after the next position exchange).

use super::handshake::{self, HandshakeError, HANDSHAKE_TIME_MAX};
use super::{metrics, Event, NodeConfig, STOP_FLUSH_TIME_MAX};
use crate::secure::FrameCodec;
use crate::types::BranchId;
use crate::wire::Message;
use futures::{Sink, SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// Unacknowledged data older than this breaks a link (then it redials and resends), instead of
/// TCP's exponential backoff stretching a healed partition into minutes.
const LINK_UNACKED_MS_MAX: u32 = 10_000;

/// Pause after a connection broke before redialling.
const REDIAL_PAUSE: Duration = Duration::from_millis(100);

/// A message for the peer and the epoch (connection) it was meant for.
type Queued = (u64, Message);

/// The core loop's end of one peer's link.
pub(super) struct OutLink {
    queue: mpsc::UnboundedSender<Queued>,
}

impl OutLink {
    /// The link to `peer`: the core loop's end, and the task to spawn.
    pub(super) fn new(
        cfg: &NodeConfig,
        peer: BranchId,
        inbox: mpsc::Sender<Event>,
        stop: CancellationToken,
    ) -> (OutLink, OutgoingLink) {
        let addr = cfg.hosts.addr(peer);
        let (queue, rx) = mpsc::unbounded_channel();
        let task = OutgoingLink {
            cfg: cfg.clone(),
            peer,
            addr,
            rx,
            inbox,
            stop,
            epoch: 0,
            failures: 0,
            last_failure: None,
        };
        (OutLink { queue }, task)
    }

    /// Queues `msg` for connection `epoch` (dropped if the link stopped: the branch is stopping).
    pub(super) fn send(&mut self, epoch: u64, msg: Message) {
        let _ = self.queue.send((epoch, msg));
    }
}

/// The task of one outgoing link: dials the peer forever; while connected, writes the core's
/// messages for it and reads its acks.
pub(super) struct OutgoingLink {
    cfg: NodeConfig,
    peer: BranchId,
    addr: SocketAddr,
    rx: mpsc::UnboundedReceiver<Queued>,
    inbox: mpsc::Sender<Event>,
    stop: CancellationToken,
    /// The current (or last) connection's number.
    epoch: u64,
    /// Failed attempts since the last connection, and the last one's reason.
    failures: u64,
    last_failure: Option<String>,
}

impl OutgoingLink {
    pub(super) async fn run(mut self) {
        loop {
            let dialled = tokio::select! {
                _ = self.stop.cancelled() => return,
                r = self.dial() => r,
            };
            let framed = match dialled {
                Ok(f) => f,
                Err(e) => {
                    self.dial_failed(&e);
                    if !self.wait_to_redial().await {
                        return;
                    }
                    continue;
                }
            };
            self.failures = 0;
            self.last_failure = None;
            self.cfg.metrics.outgoing.connected();
            self.epoch += 1;
            debug!("link to {} up (epoch {})", self.addr, self.epoch);
            let up = Event::LinkUp {
                peer: self.peer,
                epoch: self.epoch,
            };
            if self.inbox.send(up).await.is_err() {
                return;
            }
            let Some(reason) = self.carry(framed).await else {
                return;
            };
            info!("link to {} broken: {reason}; reconnecting", self.addr);
            if self
                .inbox
                .send(Event::LinkDown { peer: self.peer })
                .await
                .is_err()
            {
                return;
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(REDIAL_PAUSE) => {}
            }
        }
    }

    /// Connects from our own address (so the peer sees which branch calls) and handshakes.
    async fn dial(
        &self,
    ) -> Result<Framed<metrics::Counted<TcpStream>, FrameCodec>, HandshakeError> {
        let local_ip = self.cfg.hosts.addr(self.cfg.core.me).ip();
        let socket = if local_ip.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(local_ip, 0))?;
        set_user_timeout(&socket);
        // A silent partition drops SYNs: give up after a while instead of the kernel's ~2 min.
        let stream = tokio::time::timeout(HANDSHAKE_TIME_MAX, socket.connect(self.addr))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        stream.set_nodelay(true)?;
        handshake::dial(stream, &self.cfg, self.peer, &self.cfg.metrics.outgoing).await
    }

    /// Logs the first failure, every change of reason, and every 30th repeat.
    fn dial_failed(&mut self, e: &HandshakeError) {
        self.failures += 1;
        let reason = e.to_string();
        let changed = self.last_failure.as_deref() != Some(reason.as_str());
        self.last_failure = Some(reason);
        if self.failures == 1 || changed || self.failures % 30 == 0 {
            info!(
                "connecting to {}: {e}; retrying every {:?}",
                self.addr, self.cfg.reconnect_interval
            );
        }
    }

    /// Waits `reconnect_interval`, dropping anything queued for the dead link (resent after
    /// reconnect). Returns whether to dial again (not when the branch stops).
    async fn wait_to_redial(&mut self) -> bool {
        let wait = tokio::time::sleep(self.cfg.reconnect_interval);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return false,
                _ = &mut wait => return true,
                m = self.rx.recv() => if m.is_none() { return false },
            }
        }
    }

    /// Carries one connection: writes this epoch's messages, reads acks. Returns why it broke,
    /// or `None` when the branch stops.
    async fn carry(
        &mut self,
        framed: Framed<metrics::Counted<TcpStream>, FrameCodec>,
    ) -> Option<String> {
        let (mut sink, mut stream) = framed.split();
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => {
                    let _ = tokio::time::timeout(STOP_FLUSH_TIME_MAX, sink.flush()).await;
                    return None;
                }
                m = self.rx.recv() => {
                    let (e, msg) = m?;
                    if e != self.epoch {
                        continue;
                    }
                    let written = tokio::select! {
                        _ = self.stop.cancelled() => return None,
                        r = write_queued(&mut self.rx, self.epoch, &mut sink, msg) => r,
                    };
                    if let Err(err) = written {
                        return Some(err);
                    }
                }
                f = stream.next() => match f {
                    Some(Ok(msg @ Message::Ack { .. })) => {
                        if self.inbox.send(Event::Message { from: self.peer, msg }).await.is_err() {
                            return None;
                        }
                    }
                    Some(Ok(other)) => return Some(format!("unexpected {} from the receiver", super::kind(&other))),
                    Some(Err(e)) => return Some(e.to_string()),
                    None => return Some("closed by peer".to_string()),
                }
            }
        }
    }
}

/// Writes `first` and whatever else is queued for `epoch` (skipping other epochs' messages),
/// then flushes.
async fn write_queued<S>(
    rx: &mut mpsc::UnboundedReceiver<Queued>,
    epoch: u64,
    sink: &mut S,
    first: Message,
) -> Result<(), String>
where
    S: Sink<Message> + Unpin,
    S::Error: std::fmt::Display,
{
    sink.feed(first).await.map_err(|e| e.to_string())?;
    while let Ok((e, msg)) = rx.try_recv() {
        if e == epoch {
            sink.feed(msg).await.map_err(|e| e.to_string())?;
        }
    }
    sink.flush().await.map_err(|e| e.to_string())
}

fn set_user_timeout(socket: &TcpSocket) {
    use nix::sys::socket::{setsockopt, sockopt::TcpUserTimeout};
    if let Err(e) = setsockopt(socket, TcpUserTimeout, &LINK_UNACKED_MS_MAX) {
        debug!("TCP_USER_TIMEOUT not set: {e}");
    }
}
