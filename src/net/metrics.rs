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
use crate::hosts::HostList;
use crate::types::{BranchId, SnapshotId};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    prometheus_text, text, DescriptorEncoder, EncodeMetric, NoLabelSet,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
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
    /// This branch's peers (every branch but this one), by branch id.
    peers: Vec<BranchId>,
    /// Peer addresses by branch id, for `/readyz`.
    addrs: Vec<SocketAddr>,
    transfers_sent: Counter,
    transfers_applied: Counter,
    parts_recorded: Counter,
    restarts: Counter,
    balance: Gauge<u64, AtomicU64>,
    unacked_transfers: Gauge<u64, AtomicU64>,
    unacked_money: Gauge<u64, AtomicU64>,
    links_up: Gauge<u64, AtomicU64>,
    /// Per branch id (this branch's own entry unused): outgoing link up (1) or down (0).
    link_up_out: Vec<Gauge<u64, AtomicU64>>,
    /// Per branch id: incoming link up (1) or down (0).
    link_up_in: Vec<Gauge<u64, AtomicU64>>,
    /// Per branch id: unacknowledged transfers and money on the channel to that peer.
    channel_unacked: Vec<Gauge<u64, AtomicU64>>,
    channel_unacked_money: Vec<Gauge<u64, AtomicU64>>,
    snapshots_in_flight: Gauge<u64, AtomicU64>,
    oldest_pending_age: Gauge<f64, AtomicU64>,
    commit_duration: Histogram,
    transfer_latency: Arc<LatencyHistogram>,
    /// Registered only at the initiator (the other branches never complete a snapshot).
    initiator: Option<InitiatorMetrics>,
    /// Links this branch dialled.
    pub outgoing: LinkCounters,
    /// Links its peers dialled.
    pub incoming: LinkCounters,
    /// The store is open and the core loop has observed it (`/readyz`).
    store_open: std::sync::atomic::AtomicBool,
    /// A scrape wants fresh values from the core loop.
    wanted: Notify,
    /// Bumped by every [`Metrics::observe`].
    observed: watch::Sender<u64>,
}

/// The series only the initiator has: it starts, assembles and checks the global snapshots.
#[derive(Debug)]
struct InitiatorMetrics {
    snapshots_completed: Counter,
    snapshots_unconserved: Counter,
    unconserved_since: Gauge<u64, AtomicU64>,
    snapshots_pending: Gauge<u64, AtomicU64>,
    snapshot_duration: Histogram,
    last_id: Gauge<u64, AtomicU64>,
    last_total: Gauge<u64, AtomicU64>,
    last_expected: Gauge<u64, AtomicU64>,
    last_completed_at: Gauge<f64, AtomicU64>,
}

/// The last completed global snapshot, as the initiator exports it.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotDone {
    pub snapshot: SnapshotId,
    pub duration_us: u64,
    pub total: u128,
    pub expected: u64,
    /// When it completed, wall-clock microseconds since the Unix epoch.
    pub completed_at_us: u64,
}

/// Label set of the per-peer series: `peer="IP:PORT"`, and a direction for the link state.
type PeerLabels = Vec<(&'static str, String)>;

impl Metrics {
    /// The metrics of branch `me` of `hosts`, whose process started at `started`.
    pub fn new(hosts: &HostList, me: BranchId, started: Instant) -> Arc<Metrics> {
        let branch = hosts.addr(me);
        let is_initiator = hosts.initiator == me;
        let mut root = Registry::with_labels(
            [(Cow::Borrowed("branch"), Cow::Owned(branch.to_string()))].into_iter(),
        );
        // The process_* series every Prometheus client exports, from /proc at each scrape.
        root.register_collector(Box::new(ProcessCollector::new(started)));
        let registry = root.sub_registry_with_prefix("snapbank");
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
        let info = Family::<Vec<(&'static str, String)>, Gauge>::default();
        registry.register(
            "build_info",
            "Always 1: the version and git commit of this bank binary",
            info.clone(),
        );
        info.get_or_create(&vec![
            ("version", env!("CARGO_PKG_VERSION").to_string()),
            (
                "commit",
                option_env!("SNAPBANK_GIT_COMMIT")
                    .unwrap_or("unknown")
                    .to_string(),
            ),
        ])
        .set(1);
        let role = Family::<Vec<(&'static str, String)>, Gauge>::default();
        registry.register(
            "role_info",
            "Always 1: role=\"initiator\" at the branch that starts the snapshots (marked :S in host.list), else role=\"branch\"",
            role.clone(),
        );
        role.get_or_create(&vec![(
            "role",
            if is_initiator { "initiator" } else { "branch" }.to_string(),
        )])
        .set(1);
        let transfers_sent = counter(
            registry,
            "transfers_sent",
            "Transfers this branch sent (debited durably) over its store's lifetime: the sum of its outgoing channels' sequence numbers, so it carries on across restarts",
        );
        let transfers_applied = counter(
            registry,
            "transfers_applied",
            "Transfers from other branches this branch applied (credited durably, each exactly once) over its store's lifetime; carries on across restarts",
        );
        let restarts = counter(
            registry,
            "restarts",
            "Times bank had started this branch on its store before this start (0 at the first start); kept in the store",
        );
        let balance = gauge(registry, "balance", "Money this branch holds (durable)");
        let unacked_transfers = gauge(
            registry,
            "unacknowledged_transfers",
            "Transfers this branch sent that their receivers have not acknowledged yet",
        );
        let unacked_money = gauge(
            registry,
            "unacknowledged_money",
            "Money of the unacknowledged transfers (in flight, or applied and not yet acknowledged)",
        );
        let links_up = gauge(
            registry,
            "links_up",
            "Outgoing links up (handshake done); branches minus one when the cluster is whole. Which ones: snapbank_link_up",
        );
        let peers: Vec<BranchId> = (0..hosts.len() as u16)
            .map(BranchId)
            .filter(|b| *b != me)
            .collect();
        // One series per peer, made now so that each exists (at 0) from the first scrape.
        let per_peer = |family: &Family<PeerLabels, Gauge<u64, AtomicU64>>,
                        direction: Option<&'static str>| {
            (0..hosts.len() as u16)
                .map(|b| {
                    let b = BranchId(b);
                    if b == me {
                        return Gauge::default();
                    }
                    let mut labels = vec![("peer", hosts.addr(b).to_string())];
                    if let Some(d) = direction {
                        labels.push(("direction", d.to_string()));
                    }
                    family.get_or_create_owned(&labels)
                })
                .collect::<Vec<_>>()
        };
        let link_up = Family::<PeerLabels, Gauge<u64, AtomicU64>>::default();
        registry.register(
            "link_up",
            "1 if the link with this peer is up (handshake done), else 0: direction=\"outgoing\" is the link this branch dialled (it sends transfers on it), \"incoming\" the one the peer dialled",
            link_up.clone(),
        );
        let link_up_out = per_peer(&link_up, Some("outgoing"));
        let link_up_in = per_peer(&link_up, Some("incoming"));
        let unacked_family = Family::<PeerLabels, Gauge<u64, AtomicU64>>::default();
        registry.register(
            "channel_unacknowledged_transfers",
            "Transfers this branch sent to this peer that the peer has not acknowledged yet (the channel's backlog)",
            unacked_family.clone(),
        );
        let channel_unacked = per_peer(&unacked_family, None);
        let unacked_money_family = Family::<PeerLabels, Gauge<u64, AtomicU64>>::default();
        registry.register(
            "channel_unacknowledged_money",
            "Money of the transfers to this peer not acknowledged yet",
            unacked_money_family.clone(),
        );
        let channel_unacked_money = per_peer(&unacked_money_family, None);
        let snapshots_in_flight = gauge(
            registry,
            "snapshots_in_flight",
            "Snapshots this branch has recorded its state for and still records channels of",
        );
        let oldest_pending_age = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "snapshot_oldest_pending_age",
            "Age of the oldest snapshot this branch still waits on (markers to come here; at the initiator also parts to come from the others); 0 when none. Grows without bound while a snapshot hangs",
            Unit::Seconds,
            oldest_pending_age.clone(),
        );
        let parts_recorded = counter(
            registry,
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
        let transfer_latency = Arc::new(LatencyHistogram::default());
        registry.register_collector(Box::new(transfer_latency.clone()));
        let initiator = is_initiator.then(|| {
            let m = InitiatorMetrics {
                snapshot_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
                snapshots_completed: Counter::default(),
                snapshots_unconserved: Counter::default(),
                unconserved_since: Gauge::default(),
                snapshots_pending: Gauge::default(),
                last_id: Gauge::default(),
                last_total: Gauge::default(),
                last_expected: Gauge::default(),
                last_completed_at: Gauge::default(),
            };
            // Registered before its counter: a scrape reads the histogram first, and the
            // counter is counted first, so the scraped count never exceeds the scraped counter.
            registry.register_with_unit(
                "snapshot_duration",
                "Time from starting a global snapshot to holding every branch's part, for the snapshots completed since this process started",
                Unit::Seconds,
                m.snapshot_duration.clone(),
            );
            registry.register(
                "snapshots_completed",
                "Global snapshots completed since this process started",
                m.snapshots_completed.clone(),
            );
            registry.register(
                "snapshots_unconserved",
                "Global snapshots completed since this process started whose total was not the expected one (money lost or created: alert on any increase)",
                m.snapshots_unconserved.clone(),
            );
            registry.register(
                "unconserved_since_snapshot",
                "The first completed snapshot whose total was not the expected one, kept in the store (0: none). While non-zero, compaction and pruning are stopped so the last conserving snapshot and everything after it stay for the audit",
                m.unconserved_since.clone(),
            );
            registry.register(
                "snapshots_pending",
                "Snapshots started and not complete globally",
                m.snapshots_pending.clone(),
            );
            registry.register(
                "snapshot_last_id",
                "Id of the last completed global snapshot (kept in the store: carries on across restarts; 0: none yet)",
                m.last_id.clone(),
            );
            registry.register(
                "snapshot_last_money",
                "Money the last completed global snapshot found (balances plus money in flight at one consistent cut): the exact conservation signal, equal to snapbank_snapshot_last_expected_money while no unit was lost or created",
                m.last_total.clone(),
            );
            registry.register(
                "snapshot_last_expected_money",
                "Money the cluster holds by construction: branches times --initial-balance",
                m.last_expected.clone(),
            );
            registry.register_with_unit(
                "snapshot_last_completed_timestamp",
                "When the last completed global snapshot completed, Unix time (0: none yet). time() minus this is how long the bank has gone unaudited",
                Unit::Seconds,
                m.last_completed_at.clone(),
            );
            m
        });
        let family = |r: &mut Registry, name: &str, help: &str, unit: Option<Unit>| {
            let f = Family::<DirectionLabel, Counter>::default();
            match unit {
                Some(u) => r.register_with_unit(name, help, u, f.clone()),
                None => r.register(name, help, f.clone()),
            }
            f
        };
        let sent = family(
            registry,
            "link_sent",
            "Bytes written to established links (frames or encrypted records; handshakes not counted) since this process started",
            Some(Unit::Bytes),
        );
        let received = family(
            registry,
            "link_received",
            "Bytes read from established links (frames or encrypted records; handshakes not counted) since this process started",
            Some(Unit::Bytes),
        );
        let connections = family(
            registry,
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
            registry: root,
            peers,
            addrs: (0..hosts.len() as u16)
                .map(|b| hosts.addr(BranchId(b)))
                .collect(),
            transfers_sent,
            transfers_applied,
            parts_recorded,
            restarts,
            balance,
            unacked_transfers,
            unacked_money,
            links_up,
            link_up_out,
            link_up_in,
            channel_unacked,
            channel_unacked_money,
            snapshots_in_flight,
            oldest_pending_age,
            commit_duration,
            transfer_latency,
            initiator,
            outgoing,
            incoming,
            store_open: std::sync::atomic::AtomicBool::new(false),
            wanted: Notify::new(),
            observed: watch::channel(0).0,
        })
    }

    /// The store says `bank` had started this branch `before` times before this start, and
    /// (initiator) `last` is the last global snapshot it completed.
    pub fn store_opened(&self, before: u64, last: Option<SnapshotDone>) {
        advance(&self.restarts, before);
        if let (Some(i), Some(last)) = (&self.initiator, last) {
            i.set_last(&last);
        }
    }

    /// Sets the counters and gauges from the core's state. Run by the core loop between steps,
    /// when everything the core holds is durable, so the transfer counters never run ahead of
    /// the store (after a crash they resume from at least what was scraped). `incoming_up`:
    /// the peers whose incoming link is up; `latency`: the transfer latencies so far (µs).
    pub fn observe(
        &self,
        core: &Branch,
        incoming_up: &[BranchId],
        latency: &hdrhistogram::Histogram<u64>,
        now_us: u64,
    ) {
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
        let out_up = core.links_up_to();
        for &p in &self.peers {
            self.link_up_out[p.index()].set(u64::from(out_up.contains(&p)));
            self.link_up_in[p.index()].set(u64::from(incoming_up.contains(&p)));
        }
        for (p, (count, money)) in core.unacked_by_peer().into_iter().enumerate() {
            if let (Some(c), Some(m)) = (
                self.channel_unacked.get(p),
                self.channel_unacked_money.get(p),
            ) {
                c.set(count as u64);
                m.set(u64::try_from(money).unwrap_or(u64::MAX));
            }
        }
        if let Some(i) = &self.initiator {
            i.snapshots_pending.set(core.snapshots_pending());
            i.unconserved_since.set(st.unconserved_since.0);
        }
        self.snapshots_in_flight
            .set(core.snapshots_in_flight() as u64);
        let oldest = core
            .pending()
            .iter()
            .map(|p| p.since)
            .filter(|s| *s > 0)
            .min();
        self.oldest_pending_age
            .set(oldest.map_or(0.0, |since| now_us.saturating_sub(since) as f64 / 1e6));
        self.transfer_latency.set_from(latency);
        self.store_open
            .store(true, std::sync::atomic::Ordering::Relaxed);
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

    /// The initiator completed global snapshot `done`; `unconserved_since`: the first
    /// completed snapshot whose total was not the expected one, if any.
    pub fn snapshot_completed(&self, done: &SnapshotDone, unconserved_since: Option<SnapshotId>) {
        let Some(i) = &self.initiator else {
            return;
        };
        i.snapshots_completed.inc();
        if done.total != u128::from(done.expected) {
            i.snapshots_unconserved.inc();
        }
        if let Some(k) = unconserved_since {
            i.unconserved_since.set(k.0);
        }
        i.snapshot_duration.observe(done.duration_us as f64 / 1e6);
        i.set_last(done);
    }

    /// This branch recorded its part of a snapshot.
    pub fn part_recorded(&self) {
        self.parts_recorded.inc();
    }

    /// Asks the core loop for fresh values and waits for them (at most [`REFRESH_WAIT`]).
    /// Returns whether the core loop answered.
    async fn refresh(&self) -> bool {
        let mut seen = self.observed.subscribe();
        seen.borrow_and_update();
        self.wanted.notify_one();
        matches!(
            tokio::time::timeout(REFRESH_WAIT, seen.changed()).await,
            Ok(Ok(()))
        )
    }

    /// `/readyz`: `Ok` when the store is open and every link, both ways, is up; else what
    /// is missing.
    fn readiness(&self) -> Result<(), String> {
        if !self.store_open.load(std::sync::atomic::Ordering::Relaxed) {
            return Err("store not open yet".to_string());
        }
        let mut down = Vec::new();
        for &p in &self.peers {
            for (gauges, dir) in [
                (&self.link_up_out, "outgoing"),
                (&self.link_up_in, "incoming"),
            ] {
                if gauges[p.index()].get() == 0 {
                    down.push(format!("{} ({dir})", self.addrs[p.index()]));
                }
            }
        }
        if down.is_empty() {
            Ok(())
        } else {
            Err(format!("links down: {}", down.join(", ")))
        }
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

impl InitiatorMetrics {
    fn set_last(&self, done: &SnapshotDone) {
        self.last_id.set(done.snapshot.0);
        self.last_total
            .set(u64::try_from(done.total).unwrap_or(u64::MAX));
        self.last_expected.set(done.expected);
        self.last_completed_at
            .set(done.completed_at_us as f64 / 1e6);
    }
}

/// Upper bounds of the transfer-latency buckets, in seconds: 100 µs doubling to about 52 s.
fn latency_bounds() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0001, 2.0, 20)
}

/// `snapbank_transfer_latency_seconds`: time from a transfer's durable debit to the
/// acknowledgement that covers it, over every transfer this process sent. The core loop's
/// statistics keep the exact distribution (an HDR histogram, fed a whole acknowledgement's
/// transfers at once); a scrape turns it into Prometheus buckets, so the hot path pays nothing.
#[derive(Debug, Default)]
struct LatencyHistogram {
    buckets: std::sync::Mutex<Buckets>,
}

/// `(sum of seconds, count, cumulative bucket counts by upper bound)`.
type Buckets = (f64, u64, Vec<(f64, u64)>);

impl LatencyHistogram {
    fn set_from(&self, h: &hdrhistogram::Histogram<u64>) {
        let mut counts: Vec<(f64, u64)> = latency_bounds().map(|b| (b, 0)).collect();
        let mut sum = 0.0;
        for v in h.iter_recorded() {
            let us = v.value_iterated_to();
            let n = v.count_at_value();
            sum += us as f64 / 1e6 * n as f64;
            let s = us as f64 / 1e6;
            if let Some(first) = counts.iter().position(|(b, _)| s <= *b) {
                counts[first].1 += n;
            }
        }
        let mut running = 0;
        for c in &mut counts {
            running += c.1;
            c.1 = running;
        }
        counts.push((f64::INFINITY, h.len()));
        if let Ok(mut b) = self.buckets.lock() {
            *b = (sum, h.len(), counts);
        }
    }
}

impl Collector for LatencyHistogram {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = match self.buckets.lock() {
            Ok(b) => b.clone(),
            Err(_) => return Ok(()),
        };
        let buckets = if buckets.is_empty() {
            latency_bounds()
                .map(|b| (b, 0))
                .chain(std::iter::once((f64::INFINITY, 0)))
                .collect()
        } else {
            buckets
        };
        let m = encoder.encode_descriptor(
            "transfer_latency",
            "Time from a transfer's durable debit to the acknowledgement that covers it (the receiver credited it durably), for the transfers this process sent",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        let mut m = m;
        m.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

/// `process_*`: CPU time, memory, file descriptors, threads and start time of this process,
/// read from `/proc/self` at each scrape (the names every Prometheus client library uses).
#[derive(Debug)]
struct ProcessCollector {
    /// Unix time the process started, in seconds.
    start_time: f64,
}

impl ProcessCollector {
    fn new(started: Instant) -> ProcessCollector {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        ProcessCollector {
            start_time: now.saturating_sub(started.elapsed()).as_secs_f64(),
        }
    }
}

/// What `/proc/self` says of this process.
#[derive(Debug, Default, PartialEq)]
struct ProcStat {
    cpu_seconds: f64,
    threads: u64,
    virtual_bytes: u64,
    resident_bytes: u64,
}

/// Parses `/proc/self/stat` (fields after the parenthesised command name, which may hold
/// spaces): utime and stime in clock ticks, threads, vsize in bytes, rss in pages.
fn parse_proc_stat(text: &str, ticks_per_s: f64, page_size: u64) -> Option<ProcStat> {
    let after = text.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state): field N is f[N - 3].
    let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(ProcStat {
        cpu_seconds: (num(14)? + num(15)?) as f64 / ticks_per_s,
        threads: num(20)?,
        virtual_bytes: num(23)?,
        resident_bytes: num(24)?.saturating_mul(page_size),
    })
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use nix::unistd::{sysconf, SysconfVar};
        let ticks = sysconf(SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
        let page = sysconf(SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .unwrap_or(4096) as u64;
        let stat = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|t| parse_proc_stat(&t, ticks, page));
        let fds = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count() as u64)
            .ok();
        let max_fds = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .ok()
            .map(|(soft, _)| soft);
        if let Some(s) = &stat {
            let c = ConstCounter::new(s.cpu_seconds);
            let m = encoder.encode_descriptor(
                "process_cpu",
                "Total user and system CPU time spent",
                Some(&Unit::Seconds),
                c.metric_type(),
            )?;
            c.encode(m)?;
        }
        let mut gauges: Vec<(&str, &str, Option<Unit>, f64)> = Vec::new();
        if let Some(s) = &stat {
            gauges.push((
                "process_resident_memory",
                "Resident memory size",
                Some(Unit::Bytes),
                s.resident_bytes as f64,
            ));
            gauges.push((
                "process_virtual_memory",
                "Virtual memory size",
                Some(Unit::Bytes),
                s.virtual_bytes as f64,
            ));
            gauges.push((
                "process_threads",
                "OS threads of the process",
                None,
                s.threads as f64,
            ));
        }
        if let Some(n) = fds {
            // read_dir holds one descriptor of its own while it counts.
            gauges.push((
                "process_open_fds",
                "Open file descriptors",
                None,
                n.saturating_sub(1) as f64,
            ));
        }
        if let Some(n) = max_fds {
            gauges.push((
                "process_max_fds",
                "Limit of open file descriptors",
                None,
                n as f64,
            ));
        }
        gauges.push((
            "process_start_time",
            "Start time of the process since the Unix epoch",
            Some(Unit::Seconds),
            self.start_time,
        ));
        for (name, help, unit, v) in gauges {
            let g = ConstGauge::new(v);
            let m = encoder.encode_descriptor(name, help, unit.as_ref(), g.metric_type())?;
            g.encode(m)?;
        }
        Ok(())
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
/// the Prometheus text format. `GET /healthz`: 200 while the core loop answers (503 when it
/// has not for [`REFRESH_WAIT`]). `GET /readyz`: 200 once the store is open and every link,
/// both ways, is up; else 503 and what is missing. Anything else: 404 or 405.
async fn respond(metrics: &Metrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics, health at /healthz and /readyz\n",
        );
    }
    if req.method() != Method::GET {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    match path {
        "/healthz" => {
            return if metrics.refresh().await {
                plain(StatusCode::OK, "ok\n")
            } else {
                plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!(
                        "unhealthy: the branch's core loop has not answered for {REFRESH_WAIT:?} (opening its store, or stuck in a store commit)\n"
                    ),
                )
            };
        }
        "/readyz" => {
            metrics.refresh().await;
            return match metrics.readiness() {
                Ok(()) => plain(StatusCode::OK, "ready\n"),
                Err(why) => plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("not ready: {why}\n"),
                ),
            };
        }
        _ => {}
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

    fn hosts() -> HostList {
        HostList::parse(
            "127.0.0.1:8000:S\n127.0.0.1:8001\n127.0.0.1:8002\n",
            "host.list",
        )
        .expect("host list")
    }

    #[test]
    fn exposition_names_and_labels() {
        let m = Metrics::new(&hosts(), BranchId(0), Instant::now());
        m.store_opened(2, None);
        let done = SnapshotDone {
            snapshot: SnapshotId(7),
            duration_us: 4_000,
            total: 3_000_000,
            expected: 3_000_000,
            completed_at_us: 1_700_000_000_000_000,
        };
        m.snapshot_completed(&done, None);
        m.outgoing.connected();
        let text = m.encode(false).expect("encode");
        let b = "branch=\"127.0.0.1:8000\"";
        for line in [
            format!("snapbank_restarts_total{{{b}}} 2"),
            format!("snapbank_snapshots_completed_total{{{b}}} 1"),
            format!("snapbank_snapshots_unconserved_total{{{b}}} 0"),
            format!("snapbank_snapshot_duration_seconds_count{{{b}}} 1"),
            format!("snapbank_snapshot_last_id{{{b}}} 7"),
            format!("snapbank_snapshot_last_money{{{b}}} 3000000"),
            format!("snapbank_snapshot_last_expected_money{{{b}}} 3000000"),
            format!("snapbank_snapshot_last_completed_timestamp_seconds{{{b}}} 1700000000.0"),
            format!("snapbank_link_connections_total{{{b},direction=\"outgoing\"}} 1"),
            format!("snapbank_link_sent_bytes_total{{{b},direction=\"incoming\"}} 0"),
            format!("snapbank_link_up{{{b},peer=\"127.0.0.1:8002\",direction=\"incoming\"}} 0"),
            format!("snapbank_channel_unacknowledged_transfers{{{b},peer=\"127.0.0.1:8001\"}} 0"),
            format!("snapbank_role_info{{{b},role=\"initiator\"}} 1"),
            format!("snapbank_transfer_latency_seconds_count{{{b}}} 0"),
            "# TYPE snapbank_balance gauge".to_string(),
            "# TYPE snapbank_store_commit_duration_seconds histogram".to_string(),
            "# TYPE snapbank_transfer_latency_seconds histogram".to_string(),
            "# TYPE process_cpu_seconds_total counter".to_string(),
            "# TYPE process_resident_memory_bytes gauge".to_string(),
            "# TYPE process_start_time_seconds gauge".to_string(),
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
        assert!(
            text.contains("snapbank_build_info{") && text.contains("commit=\""),
            "{text}"
        );
        let om = m.encode(true).expect("encode");
        assert!(om.ends_with("# EOF\n"), "{om}");
    }

    #[test]
    fn initiator_series_only_at_the_initiator() {
        let m = Metrics::new(&hosts(), BranchId(1), Instant::now());
        let text = m.encode(false).expect("encode");
        for name in [
            "snapbank_snapshot_duration_seconds",
            "snapbank_snapshots_completed",
            "snapbank_snapshots_unconserved",
            "snapbank_snapshots_pending",
            "snapbank_snapshot_last_",
            "snapbank_unconserved_since_snapshot",
        ] {
            assert!(!text.contains(name), "{name} at a branch:\n{text}");
        }
        assert!(text.contains("role=\"branch\"} 1"), "{text}");
        assert!(
            text.contains("snapbank_snapshot_oldest_pending_age_seconds"),
            "{text}"
        );
    }

    #[test]
    fn latency_buckets_are_cumulative() {
        let h = LatencyHistogram::default();
        let mut hdr =
            hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000_000, 2).expect("bounds");
        hdr.record_n(50, 3).expect("record");
        hdr.record_n(1_000, 2).expect("record");
        hdr.record(10_000_000).expect("record");
        h.set_from(&hdr);
        let (sum, count, buckets) = h.buckets.lock().expect("lock").clone();
        assert_eq!(count, 6);
        assert!((sum - (150e-6 + 2e-3 + 10.0)).abs() < 0.1, "{sum}");
        let at = |bound: f64| {
            buckets
                .iter()
                .find(|(b, _)| (*b - bound).abs() < 1e-9)
                .map(|(_, c)| *c)
        };
        assert_eq!(at(0.0001), Some(3));
        assert_eq!(at(0.0016), Some(5));
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, 6)));
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1));
    }

    #[test]
    fn proc_stat_with_spaces_in_the_name() {
        let text = "1234 (bank x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 5 0 100 123456789 3000 18446744073709551615";
        let s = parse_proc_stat(text, 100.0, 4096).expect("parsed");
        assert_eq!(
            s,
            ProcStat {
                cpu_seconds: 3.0,
                threads: 5,
                virtual_bytes: 123_456_789,
                resident_bytes: 3000 * 4096,
            }
        );
        assert_eq!(parse_proc_stat("garbage", 100.0, 4096), None);
    }

    #[test]
    fn counters_only_advance() {
        let c = Counter::default();
        advance(&c, 5);
        advance(&c, 3);
        assert_eq!(c.get(), 5);
    }
}
