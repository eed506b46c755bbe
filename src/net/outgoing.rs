//! The outgoing link to one peer: a task ([`OutgoingLink`]) that dials it (retrying forever with
//! exponential backoff and jitter, from [`REDIAL_FIRST`] up to `redial_max`, and at once when the
//! peer connects in: it is up), handshakes, writes the core's messages for that peer and reads
//! its acknowledgements; and the core loop's end of it ([`OutLink`]), a bounded queue.
//!
//! Each connection is an epoch (1, 2, …): the core stamps every message with the epoch it was
//! meant for, and the link writes only those of its current connection, so nothing queued for a
//! broken connection reaches the next one (the core resends it after the next position exchange).

use super::handshake::{self, HandshakeError, HANDSHAKE_TIME_MAX};
use super::{metrics, Event, Inbox, NodeConfig, STOP_FLUSH_TIME_MAX};
use crate::secure::FrameCodec;
use crate::types::BranchId;
use crate::wire::Message;
use futures::{Sink, SinkExt, StreamExt};
use rand::Rng;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::{watch, Notify};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Messages queued for one peer's link. The core's flow control keeps far fewer in it: per
/// connection, one `Position`, the unacknowledged transfers (at most `--unacked-max`, 8192 by
/// default, each sent once and resent once per reconnect), one marker, part and compaction
/// notice per snapshot in flight (at most 64); old connections' leftovers are skipped unwritten.
/// If it fills anyway (a peer that reads slowly, with a large `--unacked-max`), the core loop
/// drops the rest of that connection's messages and the link breaks the connection: the core
/// resends everything unacknowledged (transfers, markers, parts) once it reconnects, and a
/// missed compaction notice is caught up by the next one, so nothing is lost.
pub(super) const OUTGOING_QUEUE_MESSAGES_MAX: usize = 64 * 1024;

/// Positions, markers and parts queued for one peer's link: their priority lane, written
/// before the transfers queued ahead of them (one position per connection, one marker and one
/// part per snapshot in flight, at most 64 each, and their resends).
pub(super) const URGENT_QUEUE_MESSAGES_MAX: usize = 4 * 1024;

/// Unacknowledged data older than this breaks a link (then it redials and resends), instead of
/// TCP's exponential backoff stretching a healed partition into minutes.
const LINK_UNACKED_MS_MAX: u32 = 10_000;

/// The first wait before redialling (after a failed attempt or a broken connection); each
/// further failure doubles it, up to `NodeConfig::redial_max`, and every wait is drawn from its
/// upper half (jitter: branches started together do not dial in lockstep).
pub(super) const REDIAL_FIRST: Duration = Duration::from_millis(5);

/// A message for the peer and the epoch (connection) it was meant for.
type Queued = (u64, Message);

/// Whether `msg` rides the priority lane: markers and parts overtake queued transfers and
/// compaction notices (the receiver records on a marker at once and closes the channel when
/// the transfers it follows arrive; a part does not depend on the channel at all). A
/// connection's `Position` rides it too, so that nothing overtakes it: the receiver's first
/// ack may open the channel before the position is written, and what the core sends then must
/// still come after it.
fn is_urgent(msg: &Message) -> bool {
    matches!(
        msg,
        Message::Position(_) | Message::Marker { .. } | Message::Part(_)
    )
}

/// The link's ends of its two queues.
pub(super) struct Queues {
    normal: mpsc::Receiver<Queued>,
    urgent: mpsc::Receiver<Queued>,
}

impl Queues {
    /// The next message, the priority lane first; `None` once the core loop is gone.
    async fn recv(&mut self) -> Option<Queued> {
        tokio::select! {
            biased;
            Some(m) = self.urgent.recv() => Some(m),
            m = self.normal.recv() => m,
        }
    }

    /// A message queued now, the priority lane first.
    fn try_recv(&mut self) -> Option<Queued> {
        self.urgent
            .try_recv()
            .or_else(|_| self.normal.try_recv())
            .ok()
    }
}

/// The core loop's end of one peer's link.
pub(super) struct OutLink {
    addr: SocketAddr,
    queue: mpsc::Sender<Queued>,
    urgent: mpsc::Sender<Queued>,
    /// The epoch whose connection the link must drop: its queue overflowed.
    reset: watch::Sender<u64>,
    /// The epoch whose messages are being dropped since its queue overflowed.
    dropped: Option<u64>,
    /// Wakes the link from its wait to redial: the peer just connected in, so it is up.
    redial_now: Arc<Notify>,
}

impl OutLink {
    /// The link to `peer`: the core loop's end, and the task to spawn.
    pub(super) fn new(
        cfg: &NodeConfig,
        peer: BranchId,
        inbox: Inbox,
        stop: CancellationToken,
    ) -> (OutLink, OutgoingLink) {
        let addr = cfg.hosts.addr(peer);
        let (end, rx, reset_rx) = OutLink::with_queue(addr, OUTGOING_QUEUE_MESSAGES_MAX);
        let task = OutgoingLink {
            redial_now: end.redial_now.clone(),
            cfg: cfg.clone(),
            peer,
            addr,
            rx,
            reset: reset_rx,
            inbox,
            stop,
            epoch: 0,
            failures: 0,
            last_failure: None,
        };
        (end, task)
    }

    /// The core loop's end, with the link's ends of the queue (of `capacity` messages) and of
    /// the reset signal.
    fn with_queue(addr: SocketAddr, capacity: usize) -> (OutLink, Queues, watch::Receiver<u64>) {
        let (queue, normal) = mpsc::channel(capacity);
        let (urgent, urgent_rx) = mpsc::channel(URGENT_QUEUE_MESSAGES_MAX.min(capacity));
        let (reset, reset_rx) = watch::channel(0);
        let rx = Queues {
            normal,
            urgent: urgent_rx,
        };
        let end = OutLink {
            addr,
            queue,
            urgent,
            reset,
            dropped: None,
            redial_now: Arc::new(Notify::new()),
        };
        (end, rx, reset_rx)
    }

    /// The peer connected in: if the link is waiting to redial, it dials now (a permit is kept
    /// if it is not waiting, so the next wait ends at once).
    pub(super) fn peer_is_up(&self) {
        self.redial_now.notify_one();
    }

    /// Queues `msg` for connection `epoch`. If the queue is full, this and every later message
    /// for `epoch` is dropped and the link told to drop that connection (see
    /// [`OUTGOING_QUEUE_MESSAGES_MAX`]); what it had queued before stays in order.
    pub(super) fn send(&mut self, epoch: u64, msg: Message) {
        if self.dropped == Some(epoch) {
            return;
        }
        let lane = if is_urgent(&msg) {
            &self.urgent
        } else {
            &self.queue
        };
        match lane.try_send((epoch, msg)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                warn!(
                    "link to {}: its queue is full ({OUTGOING_QUEUE_MESSAGES_MAX} messages, {URGENT_QUEUE_MESSAGES_MAX} markers and parts: it reads too slowly); dropping the connection, to resend after reconnecting",
                    self.addr
                );
                self.dropped = Some(epoch);
                self.reset.send_replace(epoch);
            }
            // The link stopped (the branch is stopping).
            Err(TrySendError::Closed(_)) => {}
        }
    }
}

/// The task of one outgoing link: dials the peer forever; while connected, writes the core's
/// messages for it and reads its acks.
pub(super) struct OutgoingLink {
    cfg: NodeConfig,
    peer: BranchId,
    addr: SocketAddr,
    rx: Queues,
    reset: watch::Receiver<u64>,
    inbox: Inbox,
    stop: CancellationToken,
    /// The current (or last) connection's number.
    epoch: u64,
    /// Failed attempts since the last connection, and the last one's reason.
    failures: u64,
    last_failure: Option<String>,
    redial_now: Arc<Notify>,
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
            if !self.wait_to_redial().await {
                return;
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
                "connecting to {}: {e}; retrying (backing off up to {:?}, at once when it connects in)",
                self.addr, self.cfg.redial_max
            );
        }
    }

    /// Waits [`redial_wait`] for the failures so far, or until the peer connects in, dropping
    /// anything queued for the dead link (resent after reconnect). Returns whether to dial again
    /// (not when the branch stops).
    async fn wait_to_redial(&mut self) -> bool {
        let jitter = rand::thread_rng().gen_range(0.5..=1.0);
        let wait = tokio::time::sleep(redial_wait(self.failures, self.cfg.redial_max, jitter));
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return false,
                _ = &mut wait => return true,
                _ = self.redial_now.notified() => {
                    // The peer is up: the next failure starts the backoff afresh.
                    self.failures = 0;
                    return true;
                }
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
                r = self.reset.changed() => match r {
                    Ok(()) => {
                        if *self.reset.borrow_and_update() == self.epoch {
                            return Some(format!("its queue of {OUTGOING_QUEUE_MESSAGES_MAX} messages filled up"));
                        }
                    }
                    // The core loop is gone.
                    Err(_) => return None,
                },
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
/// the priority lane first at every message, then flushes.
async fn write_queued<S>(
    rx: &mut Queues,
    epoch: u64,
    sink: &mut S,
    first: Message,
) -> Result<(), String>
where
    S: Sink<Message> + Unpin,
    S::Error: std::fmt::Display,
{
    sink.feed(first).await.map_err(|e| e.to_string())?;
    while let Some((e, msg)) = rx.try_recv() {
        if e == epoch {
            sink.feed(msg).await.map_err(|e| e.to_string())?;
        }
    }
    sink.flush().await.map_err(|e| e.to_string())
}

/// How long to wait before the next attempt after `failures` failed ones (0: the connection
/// broke): [`REDIAL_FIRST`] doubled per failure, at most `max`, times `jitter` (in `0.5..=1`).
fn redial_wait(failures: u64, max: Duration, jitter: f64) -> Duration {
    let doubled = REDIAL_FIRST.saturating_mul(1u32 << failures.min(20));
    doubled.min(max).mul_f64(jitter.clamp(0.5, 1.0))
}

fn set_user_timeout(socket: &TcpSocket) {
    use nix::sys::socket::{setsockopt, sockopt::TcpUserTimeout};
    if let Err(e) = setsockopt(socket, TcpUserTimeout, &LINK_UNACKED_MS_MAX) {
        debug!("TCP_USER_TIMEOUT not set: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Seq, SnapshotId};

    fn ack(n: u64) -> Message {
        Message::Ack {
            applied: Seq(n),
            marker: SnapshotId(0),
            part: SnapshotId(0),
        }
    }

    fn marker(k: u64) -> Message {
        Message::Marker {
            snapshot: SnapshotId(k),
            after: Seq(0),
        }
    }

    /// Positions, markers and parts are taken before the other messages queued ahead of them,
    /// and keep their own order.
    #[test]
    fn markers_overtake_what_was_queued_before_them_but_not_the_position() {
        let addr: SocketAddr = ([127, 0, 0, 1], 8000).into();
        let (mut end, mut rx, _reset) = OutLink::with_queue(addr, 8);
        let position = Message::Position(Default::default());
        end.send(1, ack(1));
        end.send(1, position.clone());
        end.send(1, marker(1));
        end.send(1, ack(2));
        end.send(1, marker(2));
        let order: Vec<Message> = std::iter::from_fn(|| rx.try_recv().map(|(_, m)| m)).collect();
        assert_eq!(order, vec![position, marker(1), marker(2), ack(1), ack(2)]);
    }

    fn applied(q: Option<Queued>) -> Option<(u64, u64)> {
        match q? {
            (e, Message::Ack { applied, .. }) => Some((e, applied.0)),
            _ => None,
        }
    }

    /// A full queue drops that message and every later one of its connection (what was queued
    /// before stays, in order, with no gap), tells the link to drop the connection, and takes
    /// the next connection's messages again.
    #[test]
    fn a_full_queue_drops_the_rest_of_its_connection_and_resets_the_link() {
        let addr: SocketAddr = ([127, 0, 0, 1], 8000).into();
        let (mut end, mut rx, mut reset) = OutLink::with_queue(addr, 2);
        end.send(1, ack(1));
        end.send(1, ack(2));
        assert!(
            !reset.has_changed().unwrap_or(true),
            "no reset before it is full"
        );
        end.send(1, ack(3));
        assert!(reset.has_changed().unwrap_or(false), "reset when full");
        assert_eq!(
            *reset.borrow_and_update(),
            1,
            "the full connection is reset"
        );
        assert_eq!(applied(rx.try_recv()), Some((1, 1)));
        // Room again, but connection 1 stays cut after its gap.
        end.send(1, ack(4));
        assert_eq!(applied(rx.try_recv()), Some((1, 2)));
        assert!(
            rx.try_recv().is_none(),
            "nothing after the gap of connection 1"
        );
        end.send(2, ack(5));
        assert_eq!(
            applied(rx.try_recv()),
            Some((2, 5)),
            "connection 2 is carried"
        );
        assert!(
            !reset.has_changed().unwrap_or(true),
            "connection 2 is not reset"
        );
    }

    /// The backoff starts at `REDIAL_FIRST`, doubles per failure, stops at the cap, and the
    /// jitter only shortens it (to no less than half).
    #[test]
    fn redial_backs_off_exponentially_up_to_the_cap() {
        let max = Duration::from_secs(2);
        assert_eq!(redial_wait(0, max, 1.0), REDIAL_FIRST);
        assert_eq!(redial_wait(1, max, 1.0), REDIAL_FIRST * 2);
        assert_eq!(redial_wait(3, max, 1.0), REDIAL_FIRST * 8);
        assert_eq!(redial_wait(9, max, 1.0), max);
        assert_eq!(redial_wait(u64::MAX, max, 1.0), max);
        assert_eq!(redial_wait(0, max, 0.5), REDIAL_FIRST / 2);
        assert_eq!(redial_wait(0, max, 0.0), REDIAL_FIRST / 2, "jitter clamped");
        assert_eq!(
            redial_wait(2, Duration::from_millis(1), 1.0),
            Duration::from_millis(1)
        );
    }

    /// A peer connecting in ends the wait at once, even one signalled before the wait began.
    #[tokio::test]
    async fn a_peer_that_connects_in_ends_the_wait_to_redial() {
        let addr: SocketAddr = ([127, 0, 0, 1], 8000).into();
        let (end, _rx, _reset) = OutLink::with_queue(addr, 4);
        end.peer_is_up();
        let waited = tokio::time::timeout(Duration::from_secs(5), end.redial_now.notified()).await;
        assert!(waited.is_ok(), "the kept permit ends the next wait");
    }

    /// The queue the core loop uses is the named bound.
    #[test]
    fn the_queue_holds_outgoing_queue_messages_max() {
        let addr: SocketAddr = ([127, 0, 0, 1], 8000).into();
        let (end, _rx, _reset) = OutLink::with_queue(addr, OUTGOING_QUEUE_MESSAGES_MAX);
        assert_eq!(end.queue.max_capacity(), OUTGOING_QUEUE_MESSAGES_MAX);
    }
}
