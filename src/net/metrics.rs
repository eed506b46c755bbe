//! `bank --metrics ADDR`: Prometheus metrics of one branch, served at `http://ADDR/metrics`.
//!
//! The registry, the metric types and the text exposition come from `prometheus-client` (the
//! official Prometheus client for Rust); HTTP/1.1 is hyper's. Nothing here is on the hot path:
//! - counters of transfers and the gauges are set from the core's state by [`Metrics::observe`],
//!   which the core loop runs only when a scrape asks for it ([`Metrics::refresh_wanted`]), so an
//!   unscraped branch pays nothing for them and a scrape sees the state as of its own instant;
//!   transfer counters are sums of the durable sequence numbers, so they carry on across
//!   restarts;
//! - link byte counters are one relaxed atomic add per socket read or write ([`Counted`]);
//! - the two histograms get one observation per store commit and per completed snapshot.
//!
//! Every metric is named `snapbank_…` and labelled `branch="IP:PORT"`.

use crate::core::Branch;
use crate::types::SnapshotId;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::{prometheus_text, text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::borrow::Cow;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, Notify, Semaphore};
use tracing::{debug, info};

/// How long a scrape waits for the core loop to refresh the values before it serves the last
/// ones (the loop may be inside a long store commit, or stopping).
const REFRESH_WAIT: Duration = Duration::from_secs(1);
/// HTTP connections served at once; more are closed at once.
const HTTP_CONNECTIONS_MAX: usize = 16;
/// Time a client gets to send a request's headers.
const HTTP_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection (kept alive across scrapes) is closed after this long; scrapers reconnect.
const HTTP_CONNECTION_LIFETIME_MAX: Duration = Duration::from_secs(60);

/// Content type of the OpenMetrics text format, served when the scraper asks for it.
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Label set of the link metrics: `direction="outgoing"` (links this branch dialled: it sends
/// transfers, markers and parts, receives acknowledgements) or `"incoming"` (links its peers
/// dialled: the other way round).
type DirectionLabel = [(&'static str, &'static str); 1];

/// Counters of one direction of links, shared by every link task of that direction.
#[derive(Clone, Debug, Default)]
pub struct LinkCounters {
    sent_bytes: Counter,
    received_bytes: Counter,
    connections: Counter,
}

impl LinkCounters {
    /// A link of this direction completed its handshake.
    pub fn connected(&self) {
        self.connections.inc();
    }

    /// `stream`, counting the bytes read from and written to it.
    pub fn count<S>(&self, stream: S) -> Counted<S> {
        Counted {
            inner: stream,
            read: self.received_bytes.clone(),
            written: self.sent_bytes.clone(),
        }
    }
}

/// A stream that adds the bytes it reads and writes to two counters.
#[derive(Debug)]
pub struct Counted<S> {
    inner: S,
    read: Counter,
    written: Counter,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.read
                .inc_by(buf.filled().len().saturating_sub(before) as u64);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.written.inc_by(n as u64);
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            this.written.inc_by(n as u64);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// One branch's metrics and their registry. Built whether or not `--metrics` serves them (they
/// cost a few atomics); shared by the core loop, the link tasks and the HTTP server.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    started: Instant,
    transfers_sent: Counter,
    transfers_applied: Counter,
    snapshots_completed: Counter,
    snapshots_unconserved: Counter,
    unconserved_since: Gauge<u64, AtomicU64>,
    parts_recorded: Counter,
    restarts: Counter,
    balance: Gauge<u64, AtomicU64>,
    unacked_transfers: Gauge<u64, AtomicU64>,
    unacked_money: Gauge<u64, AtomicU64>,
    links_up: Gauge<u64, AtomicU64>,
    snapshots_pending: Gauge<u64, AtomicU64>,
    snapshots_in_flight: Gauge<u64, AtomicU64>,
    uptime: Gauge<f64, AtomicU64>,
    snapshot_duration: Histogram,
    commit_duration: Histogram,
    /// Links this branch dialled.
    pub outgoing: LinkCounters,
    /// Links its peers dialled.
    pub incoming: LinkCounters,
    /// A scrape wants fresh values from the core loop.
    wanted: Notify,
    /// Bumped by every [`Metrics::observe`].
    observed: watch::Sender<u64>,
}

impl Metrics {
    /// The metrics of branch `branch`, whose process started at `started`.
    pub fn new(branch: SocketAddr, started: Instant) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix_and_labels(
            "snapbank",
            [(Cow::Borrowed("branch"), Cow::Owned(branch.to_string()))].into_iter(),
        );
        let counter = |r: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            r.register(name, help, c.clone());
            c
        };
        let gauge = |r: &mut Registry, name: &str, help: &str| {
            let g = Gauge::<u64, AtomicU64>::default();
            r.register(name, help, g.clone());
            g
        };
        let transfers_sent = counter(
            &mut registry,
            "transfers_sent",
            "Transfers this branch sent (debited durably) over its store's lifetime: the sum of its outgoing channels' sequence numbers, so it carries on across restarts",
        );
        let transfers_applied = counter(
            &mut registry,
            "transfers_applied",
            "Transfers from other branches this branch applied (credited durably, each exactly once) over its store's lifetime; carries on across restarts",
        );
        let restarts = counter(
            &mut registry,
            "restarts",
            "Times bank had started this branch on its store before this start (0 at the first start); kept in the store",
        );
        let balance = gauge(
            &mut registry,
            "balance",
            "Money this branch holds (durable)",
        );
        let unacked_transfers = gauge(
            &mut registry,
            "unacknowledged_transfers",
            "Transfers this branch sent that their receivers have not acknowledged yet",
        );
        let unacked_money = gauge(
            &mut registry,
            "unacknowledged_money",
            "Money of the unacknowledged transfers (in flight, or applied and not yet acknowledged)",
        );
        let links_up = gauge(
            &mut registry,
            "links_up",
            "Outgoing links up (handshake done); branches minus one when the cluster is whole",
        );
        let snapshots_pending = gauge(
            &mut registry,
            "snapshots_pending",
            "Initiator: snapshots started and not complete globally (0 at other branches)",
        );
        let snapshots_in_flight = gauge(
            &mut registry,
            "snapshots_in_flight",
            "Snapshots this branch has recorded its state for and still records channels of",
        );
        let uptime = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "uptime",
            "Time since this bank process started",
            Unit::Seconds,
            uptime.clone(),
        );
        // Registered before its counter: a scrape reads the histogram first, and the counter
        // is counted first, so the scraped count never exceeds the scraped counter.
        let snapshot_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register_with_unit(
            "snapshot_duration",
            "Initiator: time from starting a global snapshot to holding every branch's part, for the snapshots completed since this process started",
            Unit::Seconds,
            snapshot_duration.clone(),
        );
        let snapshots_completed = counter(
            &mut registry,
            "snapshots_completed",
            "Initiator: global snapshots completed since this process started",
        );
        let snapshots_unconserved = counter(
            &mut registry,
            "snapshots_unconserved",
            "Initiator: global snapshots completed since this process started whose total was not the expected one (money lost or created: alert on any increase)",
        );
        let unconserved_since = gauge(
            &mut registry,
            "unconserved_since_snapshot",
            "Initiator: the first completed snapshot whose total was not the expected one, kept in the store (0: none). While non-zero, compaction and pruning are stopped so the last conserving snapshot and everything after it stay for the audit",
        );
        let parts_recorded = counter(
            &mut registry,
            "snapshot_parts_recorded",
            "Snapshot parts (this branch's state and incoming channels) recorded since this process started",
        );
        let commit_duration = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register_with_unit(
            "store_commit_duration",
            "Time a step's writes took to become durable on stable storage (one atomic batch, flush and fdatasync of the store's log: survives a power cut)",
            Unit::Seconds,
            commit_duration.clone(),
        );
        let family = |r: &mut Registry, name: &str, help: &str, unit: Option<Unit>| {
            let f = Family::<DirectionLabel, Counter>::default();
            match unit {
                Some(u) => r.register_with_unit(name, help, u, f.clone()),
                None => r.register(name, help, f.clone()),
            }
            f
        };
        let sent = family(
            &mut registry,
            "link_sent",
            "Bytes written to established links (frames or encrypted records; handshakes not counted) since this process started",
            Some(Unit::Bytes),
        );
        let received = family(
            &mut registry,
            "link_received",
            "Bytes read from established links (frames or encrypted records; handshakes not counted) since this process started",
            Some(Unit::Bytes),
        );
        let connections = family(
            &mut registry,
            "link_connections",
            "Links established (handshake done) since this process started; each one after a direction's first per peer is a reconnect",
            None,
        );
        let direction = |d: &'static str| {
            let label = [("direction", d)];
            LinkCounters {
                sent_bytes: sent.get_or_create_owned(&label),
                received_bytes: received.get_or_create_owned(&label),
                connections: connections.get_or_create_owned(&label),
            }
        };
        let (outgoing, incoming) = (direction("outgoing"), direction("incoming"));
        Arc::new(Metrics {
            registry,
            started,
            transfers_sent,
            transfers_applied,
            snapshots_completed,
            snapshots_unconserved,
            unconserved_since,
            parts_recorded,
            restarts,
            balance,
            unacked_transfers,
            unacked_money,
            links_up,
            snapshots_pending,
            snapshots_in_flight,
            uptime,
            snapshot_duration,
            commit_duration,
            outgoing,
            incoming,
            wanted: Notify::new(),
            observed: watch::channel(0).0,
        })
    }

    /// The store says `bank` had started this branch `before` times before this start.
    pub fn set_restarts(&self, before: u64) {
        advance(&self.restarts, before);
    }

    /// Sets the counters and gauges from the core's state. Run by the core loop between steps,
    /// when everything the core holds is durable, so the transfer counters never run ahead of
    /// the store (after a crash they resume from at least what was scraped).
    pub fn observe(&self, core: &Branch) {
        let st = core.state();
        advance(&self.transfers_sent, st.out.iter().map(|o| o.sent.0).sum());
        advance(
            &self.transfers_applied,
            st.inc.iter().map(|i| i.applied.0).sum(),
        );
        self.balance.set(st.balance);
        self.unacked_transfers.set(core.unacked_total() as u64);
        self.unacked_money
            .set(u64::try_from(core.unacked_money()).unwrap_or(u64::MAX));
        self.links_up.set(core.links_up() as u64);
        self.snapshots_pending.set(if core.is_initiator() {
            core.snapshots_pending()
        } else {
            0
        });
        self.snapshots_in_flight
            .set(core.snapshots_in_flight() as u64);
        self.unconserved_since.set(st.unconserved_since.0);
        self.uptime.set(self.started.elapsed().as_secs_f64());
        self.observed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Resolves when a scrape wants [`Metrics::observe`] to run (the core loop selects on it).
    pub async fn refresh_wanted(&self) {
        self.wanted.notified().await
    }

    /// A step's writes took `d` to become durable.
    pub fn commit_took(&self, d: Duration) {
        self.commit_duration.observe(d.as_secs_f64());
    }

    /// The initiator completed a global snapshot `duration_us` after starting it; `conserved`:
    /// its total was the expected one; `unconserved_since`: the first one whose was not.
    pub fn snapshot_completed(
        &self,
        duration_us: u64,
        conserved: bool,
        unconserved_since: Option<SnapshotId>,
    ) {
        self.snapshots_completed.inc();
        if !conserved {
            self.snapshots_unconserved.inc();
        }
        if let Some(k) = unconserved_since {
            self.unconserved_since.set(k.0);
        }
        self.snapshot_duration.observe(duration_us as f64 / 1e6);
    }

    /// This branch recorded its part of a snapshot.
    pub fn part_recorded(&self) {
        self.parts_recorded.inc();
    }

    /// Asks the core loop for fresh values and waits for them (at most [`REFRESH_WAIT`]).
    async fn refresh(&self) {
        let mut seen = self.observed.subscribe();
        seen.borrow_and_update();
        self.wanted.notify_one();
        let _ = tokio::time::timeout(REFRESH_WAIT, seen.changed()).await;
    }

    /// The registry in the Prometheus text format (0.0.4), or OpenMetrics text.
    fn encode(&self, openmetrics: bool) -> Result<String, std::fmt::Error> {
        let mut body = String::with_capacity(8 * 1024);
        if openmetrics {
            text::encode(&mut body, &self.registry)?;
        } else {
            prometheus_text::encode(&mut body, &self.registry)?;
        }
        Ok(body)
    }
}

/// Raises `counter` to `total` (a counter only goes up).
fn advance(counter: &Counter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

/// Binds the metrics listener (before the branch starts, so a bad address or a port in use stops
/// it with one error line). Call [`serve`] on it inside the runtime.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves `GET /metrics` on `listener` until the runtime stops; returns the address it serves.
pub fn serve(listener: std::net::TcpListener, metrics: Arc<Metrics>) -> io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let addr = listener.local_addr()?;
    info!("metrics at http://{addr}/metrics");
    tokio::spawn(accept_loop(listener, metrics));
    Ok(addr)
}

async fn accept_loop(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(Semaphore::new(HTTP_CONNECTIONS_MAX));
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                debug!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            debug!("metrics: connection from {remote} closed: {HTTP_CONNECTIONS_MAX} already open");
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(respond(&metrics, &req).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HTTP_HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            // A connection past its lifetime is dropped: the scraper reconnects.
            if let Ok(Err(e)) = tokio::time::timeout(HTTP_CONNECTION_LIFETIME_MAX, conn).await {
                debug!("metrics: connection from {remote}: {e}");
            }
        });
    }
}

/// `GET /metrics`: the fresh metrics, as OpenMetrics text if the scraper accepts it, else in
/// the Prometheus text format. Anything else: 404 or 405.
async fn respond(metrics: &Metrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        );
    }
    if req.method() != Method::GET {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    let openmetrics = req.headers().get_all(ACCEPT).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.contains("application/openmetrics-text"))
    });
    metrics.refresh().await;
    match metrics.encode(openmetrics) {
        Ok(body) => {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            let content_type = if openmetrics {
                OPENMETRICS_CONTENT_TYPE
            } else {
                prometheus_text::CONTENT_TYPE
            };
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            r
        }
        Err(e) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot encode the metrics: {e}\n"),
        ),
    }
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_and_labels() {
        let m = Metrics::new("127.0.0.1:8000".parse().expect("addr"), Instant::now());
        m.set_restarts(2);
        m.snapshot_completed(4_000, true, None);
        m.outgoing.connected();
        let text = m.encode(false).expect("encode");
        for line in [
            "snapbank_restarts_total{branch=\"127.0.0.1:8000\"} 2",
            "snapbank_snapshots_completed_total{branch=\"127.0.0.1:8000\"} 1",
            "snapbank_snapshot_duration_seconds_count{branch=\"127.0.0.1:8000\"} 1",
            "snapbank_link_connections_total{branch=\"127.0.0.1:8000\",direction=\"outgoing\"} 1",
            "snapbank_link_sent_bytes_total{branch=\"127.0.0.1:8000\",direction=\"incoming\"} 0",
            "# TYPE snapbank_balance gauge",
            "# TYPE snapbank_store_commit_duration_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
        let om = m.encode(true).expect("encode");
        assert!(om.ends_with("# EOF\n"), "{om}");
    }

    #[test]
    fn counters_only_advance() {
        let c = Counter::default();
        advance(&c, 5);
        advance(&c, 3);
        assert_eq!(c.get(), 5);
    }
}
