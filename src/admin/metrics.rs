//! Every metric of one daemon, on one prometheus-client registry, plus the per-link state
//! that `/status` and `/healthz` read. The link and forward code hold an `Arc<Metrics>` and
//! the small handles below; nothing here is a global.
//!
//! Label values come from the manifest or from fixed sets only (`LinkError::reason()`,
//! `HandshakeError::reason()`, the stream results): a peer name that arrived in an
//! unauthenticated preamble never becomes a label, so nobody can grow the series set from
//! the network.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::config::{PeerName, ServiceName};
use crate::link::{Direction, LinkError};

/// Every `HandshakeError::reason()` of the Noise and preamble stages; with every
/// `tls::reason()` ([`crate::tls::REASONS`]) they are created at zero, so `increase()` sees
/// the first one.
const HANDSHAKE_REASONS: &[&str] = &[
    "bad_magic",
    "bad_version",
    "mode_mismatch",
    "bad_name",
    "unknown_peer",
    "wrong_key",
    "decrypt",
    "replay",
    "oversized",
    "malformed",
    "timeout",
    "truncated",
    "rate_limited",
    "overloaded",
    "local",
    "pending_per_source",
];

/// Refusals at accept that are no `HandshakeError`: the source already holds its share
/// of pending handshakes.
pub const PENDING_PER_SOURCE: &str = "pending_per_source";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerDirectionLabels {
    peer: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerReasonLabels {
    peer: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    peer: String,
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamResultLabels {
    peer: String,
    service: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    peer: String,
    service: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HashLabels {
    hash: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

type RttFamily = Family<PeerLabels, Histogram, fn() -> Histogram>;

/// RTT buckets from 0.5 ms to ~4 s: a LAN hop, inter-datacenter links (5-15 ms) and a
/// congested path all land in distinct buckets.
fn rtt_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

/// How a stream ended, as the `result` label of `meshd_streams_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamResult {
    /// Both directions finished cleanly.
    Ok,
    /// Cut mid-way (reset by either side, link lost, local error).
    Aborted,
    /// Never opened: link down, refused by the peer, not allowed, target unreachable.
    Refused,
}

impl StreamResult {
    fn as_str(self) -> &'static str {
        match self {
            StreamResult::Ok => "ok",
            StreamResult::Aborted => "aborted",
            StreamResult::Refused => "refused",
        }
    }
}

/// The live state of one link (peer, direction), shared by its observers.
#[derive(Debug)]
pub(crate) struct LinkEntry {
    pub(crate) peer: PeerName,
    pub(crate) direction: Direction,
    /// This host dials it because it has forwards to the peer: `/healthz` fails without it.
    pub(crate) required: bool,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) streams: AtomicI64,
    pub(crate) state: Mutex<LinkState>,
}

/// The mutable part of a [`LinkEntry`].
#[derive(Debug, Default)]
pub(crate) struct LinkState {
    /// Links of this key running now (a superseded inbound link may overlap its successor).
    pub(crate) live: u32,
    pub(crate) rtt: Option<Duration>,
    pub(crate) last_handshake: Option<Instant>,
    /// Auth mode of the latest link (`noise`, `psk`, `tls`).
    pub(crate) auth: Option<&'static str>,
    pub(crate) established: u64,
    /// Key changes completed on this peer's links.
    pub(crate) rekeys: u64,
    pub(crate) last_error: Option<String>,
}

impl LinkEntry {
    pub(crate) fn state(&self) -> MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// All metrics of one daemon.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    link_up: Family<PeerDirectionLabels, Gauge>,
    link_rtt: RttFamily,
    link_established: Family<PeerLabels, Counter>,
    link_rekeys: Family<PeerLabels, Counter>,
    link_failures: Family<PeerReasonLabels, Counter>,
    handshake_failures: Family<ReasonLabels, Counter>,
    streams_active: Family<StreamLabels, Gauge>,
    streams_total: Family<StreamResultLabels, Counter>,
    bytes_total: Family<BytesLabels, Counter>,
    config_reloads: Family<ResultLabels, Counter>,
    config_info: Family<HashLabels, Gauge>,
    config_hash: Mutex<String>,
    tls_cert_expiry: Gauge,
    busy_poll: Counter<f64, std::sync::atomic::AtomicU64>,
    draining: Gauge,
    links: Mutex<BTreeMap<(PeerName, &'static str), Arc<LinkEntry>>>,
}

impl Metrics {
    /// Registers every metric; `config_hash` and `version` become the info gauges.
    pub fn new(config_hash: &str, version: &str) -> Self {
        let mut registry = Registry::default();
        let link_up = Family::<PeerDirectionLabels, Gauge>::default();
        registry.register(
            "meshd_link_up",
            "1 while the link to the peer is established, 0 while it is down",
            link_up.clone(),
        );
        let link_rtt = RttFamily::new_with_constructor(rtt_histogram);
        registry.register(
            "meshd_link_rtt_seconds",
            "Round-trip time of link keepalive pings",
            link_rtt.clone(),
        );
        let draining = Gauge::default();
        registry.register(
            "meshd_draining",
            "1 while meshd drains for shutdown: no new connections, open streams finishing",
            draining.clone(),
        );
        let link_established = Family::<PeerLabels, Counter>::default();
        registry.register(
            "meshd_link_established",
            "Links established (handshake completed), either direction",
            link_established.clone(),
        );
        let link_rekeys = Family::<PeerLabels, Counter>::default();
        registry.register(
            "meshd_link_rekeys",
            "Key changes completed on live links (both directions on new keys: a fresh \
             X25519 exchange on noise/psk links, a KeyUpdate each way on tls links)",
            link_rekeys.clone(),
        );
        let link_failures = Family::<PeerReasonLabels, Counter>::default();
        registry.register(
            "meshd_link_failures",
            "Failed dials and links that went down, by reason",
            link_failures.clone(),
        );
        let handshake_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "meshd_handshake_failures",
            "Inbound handshakes rejected by the mesh listener, by reason",
            handshake_failures.clone(),
        );
        let streams_active = Family::<StreamLabels, Gauge>::default();
        registry.register(
            "meshd_streams_active",
            "Streams open now",
            streams_active.clone(),
        );
        let streams_total = Family::<StreamResultLabels, Counter>::default();
        registry.register(
            "meshd_streams",
            "Streams ended, by result (ok, aborted, refused)",
            streams_total.clone(),
        );
        let bytes_total = Family::<BytesLabels, Counter>::default();
        registry.register(
            "meshd_bytes",
            "Stream payload bytes; out = sent by this host into the mesh, in = received from it",
            bytes_total.clone(),
        );
        let config_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "meshd_config_reloads",
            "Configuration reloads, by result",
            config_reloads.clone(),
        );
        let config_info = Family::<HashLabels, Gauge>::default();
        registry.register(
            "meshd_config_info",
            "Hash of the configuration files this daemon runs (always 1)",
            config_info.clone(),
        );
        let tls_cert_expiry = Gauge::default();
        registry.register(
            "meshd_tls_cert_expiry_timestamp_seconds",
            "notAfter of this host's TLS certificate, as a Unix time (absent without tls)",
            tls_cert_expiry.clone(),
        );
        let busy_poll = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "meshd_busy_poll_seconds",
            "Time the runtime thread spent polling for the next event instead of sleeping \
             (busy_poll_us)",
            busy_poll.clone(),
        );
        let build_info = Family::<VersionLabels, Gauge>::default();
        registry.register(
            "meshd_build_info",
            "meshd version (always 1)",
            build_info.clone(),
        );
        config_info
            .get_or_create(&HashLabels {
                hash: config_hash.to_owned(),
            })
            .set(1);
        build_info
            .get_or_create(&VersionLabels {
                version: version.to_owned(),
            })
            .set(1);
        // Series that alerts take increase() of exist from the start, at zero.
        for result in ["success", "failure"] {
            let _ = config_reloads.get_or_create_owned(&ResultLabels { result });
        }
        for reason in HANDSHAKE_REASONS.iter().chain(crate::tls::REASONS) {
            let _ = handshake_failures.get_or_create_owned(&ReasonLabels { reason });
        }
        Self {
            registry,
            link_up,
            link_rtt,
            link_established,
            link_rekeys,
            link_failures,
            handshake_failures,
            streams_active,
            streams_total,
            bytes_total,
            config_reloads,
            config_info,
            config_hash: Mutex::new(config_hash.to_owned()),
            tls_cert_expiry,
            busy_poll,
            draining,
            links: Mutex::new(BTreeMap::new()),
        }
    }

    /// The daemon started draining for shutdown: `/healthz` answers 503 from now on.
    pub fn set_draining(&self) {
        self.draining.set(1);
    }

    /// True once [`Metrics::set_draining`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining.get() != 0
    }

    /// The TLS certificate in use now expires at `not_after` (Unix seconds).
    pub fn set_tls_cert(&self, not_after: i64) {
        self.tls_cert_expiry.set(not_after);
    }

    /// The hash of the configuration running now.
    pub fn config_hash(&self) -> String {
        self.config_hash
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A reload made `hash` the running configuration: `meshd_config_info` and `/status`
    /// follow it.
    pub fn set_config_hash(&self, hash: &str) {
        let mut current = self.config_hash.lock().unwrap_or_else(|p| p.into_inner());
        if *current == hash {
            return;
        }
        self.config_info.remove(&HashLabels {
            hash: current.clone(),
        });
        self.config_info
            .get_or_create(&HashLabels {
                hash: hash.to_owned(),
            })
            .set(1);
        *current = hash.to_owned();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        // The poller counts process-wide; bring the counter up to its total.
        let polled = crate::busy_poll::polled_seconds();
        let counted = self.busy_poll.get();
        if polled > counted {
            self.busy_poll.inc_by(polled - counted);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    fn entry(&self, peer: &PeerName, direction: Direction, required: bool) -> Arc<LinkEntry> {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        links
            .entry((peer.clone(), direction.as_str()))
            .or_insert_with(|| {
                Arc::new(LinkEntry {
                    peer: peer.clone(),
                    direction,
                    required,
                    bytes_in: AtomicU64::new(0),
                    bytes_out: AtomicU64::new(0),
                    streams: AtomicI64::new(0),
                    state: Mutex::new(LinkState::default()),
                })
            })
            .clone()
    }

    /// Every link seen so far, ordered by peer then direction.
    pub(crate) fn links(&self) -> Vec<Arc<LinkEntry>> {
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        links.values().cloned().collect()
    }

    /// Streams open now, over every link.
    pub fn open_streams(&self) -> i64 {
        self.links()
            .iter()
            .map(|e| e.streams.load(Ordering::Relaxed))
            .sum()
    }

    fn up_gauge(&self, peer: &PeerName, direction: Direction) -> Gauge {
        self.link_up.get_or_create_owned(&PeerDirectionLabels {
            peer: peer.to_string(),
            direction: direction.as_str(),
        })
    }

    /// Declares a link this host dials (it has forwards to `peer`): reported down until it
    /// comes up, and `/healthz` fails while it is down.
    pub fn require_link(&self, peer: &PeerName) {
        self.entry(peer, Direction::Dialer, true);
        self.up_gauge(peer, Direction::Dialer).set(0);
        // prometheus-client leaves out families without series: show these from the start.
        let labels = PeerLabels {
            peer: peer.to_string(),
        };
        let _ = self.link_established.get_or_create_owned(&labels);
        let _ = self.link_rekeys.get_or_create_owned(&labels);
        let _ = self.link_rtt.get_or_create_owned(&labels);
    }

    /// A link to `peer` completed its handshake. The returned observer reports RTTs and,
    /// through [`LinkObserver::down`], the end of the link.
    pub fn link_up(self: &Arc<Self>, peer: &PeerName, direction: Direction) -> LinkObserver {
        let entry = self.entry(peer, direction, false);
        {
            let mut st = entry.state();
            st.live += 1;
            st.established += 1;
            st.last_handshake = Some(Instant::now());
        }
        self.up_gauge(peer, direction).set(1);
        self.link_established
            .get_or_create(&PeerLabels {
                peer: peer.to_string(),
            })
            .inc();
        let rtt = self.link_rtt.get_or_create_owned(&PeerLabels {
            peer: peer.to_string(),
        });
        let rekeys = self.link_rekeys.get_or_create_owned(&PeerLabels {
            peer: peer.to_string(),
        });
        LinkObserver {
            metrics: self.clone(),
            rtt: RttObserver {
                histogram: rtt,
                rekeys,
                entry: entry.clone(),
            },
            entry,
            ended: false,
        }
    }

    /// A dial of `peer` failed before a link existed (unreachable, handshake refused, …).
    pub fn dial_failed(&self, peer: &PeerName, err: &LinkError) {
        self.count_failure(peer, err);
        let entry = self.entry(peer, Direction::Dialer, true);
        entry.state().last_error = Some(err.to_string());
    }

    fn count_failure(&self, peer: &PeerName, err: &LinkError) {
        self.link_failures
            .get_or_create(&PeerReasonLabels {
                peer: peer.to_string(),
                reason: err.reason(),
            })
            .inc();
    }

    /// A configuration reload was applied (`ok`) or refused (the old config keeps running).
    pub fn config_reloaded(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.config_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// The mesh listener rejected a handshake. Only the reason is a label: the peer name
    /// of a rejected handshake is unauthenticated.
    pub fn handshake_rejected(&self, err: &LinkError) {
        self.handshake_failures
            .get_or_create(&ReasonLabels {
                reason: err.reason(),
            })
            .inc();
    }

    /// The mesh listener refused a connection before any handshake, for `reason`, one of
    /// the fixed set created at zero (such as [`PENDING_PER_SOURCE`]).
    pub fn handshake_refused(&self, reason: &'static str) {
        debug_assert!(HANDSHAKE_REASONS.contains(&reason), "{reason}");
        self.handshake_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// A stream to or from `peer`'s `service` never opened.
    pub fn stream_refused(&self, peer: &PeerName, service: &ServiceName) {
        self.streams_total
            .get_or_create(&StreamResultLabels {
                peer: peer.to_string(),
                service: service.to_string(),
                result: StreamResult::Refused.as_str(),
            })
            .inc();
    }

    /// A stream opened on the link (peer, direction): counts it active until the returned
    /// observer is finished or dropped, and gives its byte counters.
    pub fn stream_opened(
        &self,
        peer: &PeerName,
        service: &ServiceName,
        direction: Direction,
    ) -> StreamObserver {
        let entry = self.entry(peer, direction, false);
        entry.streams.fetch_add(1, Ordering::Relaxed);
        let active = self.streams_active.get_or_create_owned(&StreamLabels {
            peer: peer.to_string(),
            service: service.to_string(),
        });
        active.inc();
        let bytes = |direction| {
            self.bytes_total.get_or_create_owned(&BytesLabels {
                peer: peer.to_string(),
                service: service.to_string(),
                direction,
            })
        };
        let results = [StreamResult::Ok, StreamResult::Aborted].map(|r| {
            self.streams_total.get_or_create_owned(&StreamResultLabels {
                peer: peer.to_string(),
                service: service.to_string(),
                result: r.as_str(),
            })
        });
        StreamObserver {
            bytes: ByteCounters {
                out: bytes("out"),
                inbound: bytes("in"),
                link: Some(entry),
            },
            active,
            results,
        }
    }
}

/// Reports the RTTs and re-keys of one link; the driver owns one.
#[derive(Clone, Debug)]
pub struct RttObserver {
    histogram: Histogram,
    rekeys: Counter,
    entry: Arc<LinkEntry>,
}

impl RttObserver {
    /// The link completed a key change.
    pub fn rekeyed(&self) {
        self.rekeys.inc();
        self.entry.state().rekeys += 1;
    }

    /// A PONG answered a PING after `rtt`.
    pub fn observe(&self, rtt: Duration) {
        self.histogram.observe(rtt.as_secs_f64());
        self.entry.state().rtt = Some(rtt);
    }
}

/// One established link's view of the metrics. Dropping it without [`down`](Self::down)
/// still marks the link down (a task that ended another way).
#[derive(Debug)]
pub struct LinkObserver {
    metrics: Arc<Metrics>,
    entry: Arc<LinkEntry>,
    rtt: RttObserver,
    ended: bool,
}

impl LinkObserver {
    /// The RTT reporter for the link's driver.
    pub fn rtt(&self) -> RttObserver {
        self.rtt.clone()
    }

    /// Records how the link authenticated (`noise`, `psk`, `tls`), for `/status`.
    pub fn set_auth(&self, auth: &'static str) {
        self.entry.state().auth = Some(auth);
    }

    /// The link ended with `err`. An orderly close (shutdown, superseded, drained, or the
    /// peer's GOAWAY then close) is not a failure.
    pub fn down(mut self, err: &LinkError) {
        if !matches!(
            err,
            LinkError::Cancelled | LinkError::Drained | LinkError::PeerWentAway
        ) {
            self.metrics.count_failure(&self.entry.peer, err);
            self.entry.state().last_error = Some(err.to_string());
        }
        self.mark_down();
    }

    fn mark_down(&mut self) {
        if self.ended {
            return;
        }
        self.ended = true;
        let live = {
            let mut st = self.entry.state();
            st.live = st.live.saturating_sub(1);
            st.live
        };
        if live == 0 {
            self.metrics
                .up_gauge(&self.entry.peer, self.entry.direction)
                .set(0);
        }
    }
}

impl Drop for LinkObserver {
    fn drop(&mut self) {
        self.mark_down();
    }
}

/// The byte counters of one stream. `sent` and `received` are called as bytes move, so a
/// long transfer shows up in the metrics while it runs, not only when it ends.
#[derive(Clone, Debug, Default)]
pub struct ByteCounters {
    out: Counter,
    inbound: Counter,
    link: Option<Arc<LinkEntry>>,
}

impl ByteCounters {
    /// `n` bytes read from the local socket went into the mesh.
    pub fn sent(&self, n: u64) {
        self.out.inc_by(n);
        if let Some(link) = &self.link {
            link.bytes_out.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// `n` bytes from the mesh were written to the local socket.
    pub fn received(&self, n: u64) {
        self.inbound.inc_by(n);
        if let Some(link) = &self.link {
            link.bytes_in.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// One open stream's view of the metrics: active while it lives, counted once at its end.
#[derive(Debug)]
pub struct StreamObserver {
    bytes: ByteCounters,
    active: Gauge,
    results: [Counter; 2],
}

impl StreamObserver {
    /// The stream's byte counters, for `splice`.
    pub fn bytes(&self) -> &ByteCounters {
        &self.bytes
    }

    /// Counts the stream's end (`Ok` or `Aborted`) and stops counting it as active.
    pub fn finish(self, clean: bool) {
        self.results[usize::from(!clean)].inc();
    }
}

impl Drop for StreamObserver {
    fn drop(&mut self) {
        self.active.dec();
        if let Some(link) = &self.bytes.link {
            link.streams.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(s: &str) -> PeerName {
        PeerName::new(s).expect("name")
    }

    #[test]
    fn exposes_every_family_with_its_type() {
        let m = Arc::new(Metrics::new("0123456789abcdef", "9.9.9"));
        m.require_link(&peer("b"));
        m.dial_failed(&peer("b"), &LinkError::Closed);
        let svc = ServiceName::new("echo").expect("service");
        let s = m.stream_opened(&peer("b"), &svc, Direction::Dialer);
        s.bytes().sent(5);
        s.bytes().received(7);
        s.finish(true);
        let text = m.encode();
        for (name, kind) in [
            ("meshd_link_up", "gauge"),
            ("meshd_link_rtt_seconds", "histogram"),
            ("meshd_link_established", "counter"),
            ("meshd_link_rekeys", "counter"),
            ("meshd_link_failures", "counter"),
            ("meshd_handshake_failures", "counter"),
            ("meshd_streams_active", "gauge"),
            ("meshd_streams", "counter"),
            ("meshd_bytes", "counter"),
            ("meshd_config_reloads", "counter"),
            ("meshd_config_info", "gauge"),
            ("meshd_build_info", "gauge"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name}: {text}"
            );
        }
        assert!(
            text.contains("meshd_link_up{peer=\"b\",direction=\"dialer\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("meshd_config_info{hash=\"0123456789abcdef\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("meshd_build_info{version=\"9.9.9\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("meshd_bytes_total{peer=\"b\",service=\"echo\",direction=\"out\"} 5\n"),
            "{text}"
        );
        assert!(
            text.contains("meshd_bytes_total{peer=\"b\",service=\"echo\",direction=\"in\"} 7\n"),
            "{text}"
        );
        assert!(
            text.contains("meshd_streams_total{peer=\"b\",service=\"echo\",result=\"ok\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("meshd_streams_active{peer=\"b\",service=\"echo\"} 0\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn every_tls_reason_is_a_handshake_series_from_the_start() {
        let text = Metrics::new("h", "v").encode();
        for reason in crate::tls::REASONS {
            assert!(
                text.contains(&format!(
                    "meshd_handshake_failures_total{{reason=\"{reason}\"}} 0\n"
                )),
                "{reason}: {text}"
            );
        }
    }

    #[test]
    fn an_overlapping_link_keeps_the_gauge_up_until_the_last_one_ends() {
        let m = Arc::new(Metrics::new("h", "v"));
        let p = peer("a");
        let old = m.link_up(&p, Direction::Acceptor);
        let new = m.link_up(&p, Direction::Acceptor);
        old.down(&LinkError::Cancelled);
        assert!(m
            .encode()
            .contains("meshd_link_up{peer=\"a\",direction=\"acceptor\"} 1\n"));
        new.down(&LinkError::Closed);
        let text = m.encode();
        assert!(text.contains("meshd_link_up{peer=\"a\",direction=\"acceptor\"} 0\n"));
        assert!(text.contains("meshd_link_failures_total{peer=\"a\",reason=\"closed\"} 1\n"));
        assert!(!text.contains("reason=\"cancelled\""), "{text}");
        assert!(text.contains("meshd_link_established_total{peer=\"a\"} 2\n"));
    }
}
