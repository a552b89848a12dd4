//! Sidecar counters: per core (each core writes only its own, behind an uncontended lock the scraper
//! shares), summed at scrape into Prometheus text.

use crate::Upstream;
use meshgate_engine::stats::{counter, encode, family, gauge, label};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// How an inbound connection ended its setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Inbound {
    /// Authorised and relayed to the application.
    Allowed,
    /// An intention (or the default policy) denied the caller.
    Denied,
    /// The handshake failed (no client certificate, not the mesh's, timeout, not TLS).
    HandshakeFailed,
    /// The client certificate carried no service identity.
    NoIdentity,
    /// No application port registered.
    NoApplication,
    /// The application did not accept.
    ApplicationUnreachable,
}

impl Inbound {
    fn label(self) -> &'static str {
        match self {
            Inbound::Allowed => "allowed",
            Inbound::Denied => "denied",
            Inbound::HandshakeFailed => "handshake_failed",
            Inbound::NoIdentity => "no_identity",
            Inbound::NoApplication => "no_application",
            Inbound::ApplicationUnreachable => "application_unreachable",
        }
    }
}

/// How an outbound connection ended its setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outbound {
    /// mTLS established with the destination; relaying.
    Ok,
    /// The plan has no next hop (no healthy instance or gateway).
    NoRoute,
    /// No next hop accepted the TCP connection.
    ConnectFailed,
    /// The TLS handshake failed (refused by a gateway, wrong identity, timeout).
    HandshakeFailed,
}

impl Outbound {
    fn label(self) -> &'static str {
        match self {
            Outbound::Ok => "ok",
            Outbound::NoRoute => "no_route",
            Outbound::ConnectFailed => "connect_failed",
            Outbound::HandshakeFailed => "handshake_failed",
        }
    }
}

/// Connection direction.
#[derive(Debug, Clone, Copy)]
pub enum Direction {
    /// From the mesh to the application.
    Inbound,
    /// From the application to an upstream.
    Outbound,
}

type OutboundKey = (String, String, String, String, bool, &'static str);

#[derive(Default)]
struct Counts {
    inbound: BTreeMap<&'static str, u64>,
    outbound: BTreeMap<OutboundKey, u64>,
    bind_errors: Vec<(SocketAddr, String)>,
}

/// One core's counters.
#[derive(Default)]
pub struct CoreStats {
    counts: Mutex<Counts>,
    active_inbound: AtomicI64,
    active_outbound: AtomicI64,
}

impl CoreStats {
    fn lock(&self) -> MutexGuard<'_, Counts> {
        // A poisoned lock only means a panic mid-increment; the counts are still usable.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn inbound(&self, outcome: Inbound) {
        *self.lock().inbound.entry(outcome.label()).or_default() += 1;
    }

    pub(crate) fn outbound(&self, up: &Upstream, outcome: Outbound) {
        let key = (
            up.service.clone(),
            up.datacenter.clone(),
            up.mode.clone(),
            up.mode_source.clone(),
            up.via_gateway,
            outcome.label(),
        );
        *self.lock().outbound.entry(key).or_default() += 1;
    }

    pub(crate) fn active(&self, direction: Direction, delta: i64) {
        let gauge = match direction {
            Direction::Inbound => &self.active_inbound,
            Direction::Outbound => &self.active_outbound,
        };
        gauge.fetch_add(delta, Ordering::Relaxed);
    }

    pub(crate) fn bind_error(&self, addr: SocketAddr, message: String) {
        self.lock().bind_errors.push((addr, message));
    }
}

/// All cores' counters; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    cores: Arc<[Arc<CoreStats>]>,
    cert_not_after: Arc<AtomicI64>,
}

impl Metrics {
    pub(crate) fn new(workers: usize) -> Metrics {
        Metrics {
            cores: (0..workers)
                .map(|_| Arc::new(CoreStats::default()))
                .collect(),
            cert_not_after: Arc::new(AtomicI64::new(0)),
        }
    }

    pub(crate) fn core(&self, i: usize) -> Arc<CoreStats> {
        self.cores[i].clone()
    }

    pub(crate) fn set_cert_expiry(&self, not_after: i64) {
        self.cert_not_after.store(not_after, Ordering::Relaxed);
    }

    pub(crate) fn first_bind_error(&self) -> Option<(SocketAddr, String)> {
        self.cores
            .iter()
            .find_map(|c| c.lock().bind_errors.first().cloned())
    }

    /// Inbound connections that ended setup with `outcome`, all cores.
    pub fn inbound_total(&self, outcome: Inbound) -> u64 {
        self.cores
            .iter()
            .map(|c| c.lock().inbound.get(outcome.label()).copied().unwrap_or(0))
            .sum()
    }

    /// Prometheus text.
    pub fn render(&self) -> String {
        use meshgate_engine::stats::MetricType::{COUNTER, GAUGE};
        let mut inbound: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut outbound: BTreeMap<OutboundKey, u64> = BTreeMap::new();
        let (mut active_in, mut active_out) = (0, 0);
        for c in self.cores.iter() {
            let counts = c.lock();
            for (k, v) in &counts.inbound {
                *inbound.entry(k).or_default() += v;
            }
            for (k, v) in &counts.outbound {
                *outbound.entry(k.clone()).or_default() += v;
            }
            active_in += c.active_inbound.load(Ordering::Relaxed);
            active_out += c.active_outbound.load(Ordering::Relaxed);
        }
        encode(vec![
            family(
                "meshgate_sidecar_inbound_connections_total",
                "Inbound mTLS connections by outcome (allowed, denied, handshake_failed, no_identity, no_application, application_unreachable).",
                COUNTER,
                inbound
                    .into_iter()
                    .map(|(outcome, n)| counter(vec![label("outcome", outcome)], n))
                    .collect(),
            ),
            family(
                "meshgate_sidecar_upstream_connections_total",
                "Outbound connections by upstream, resolved gateway mode, the level that decided it, and outcome.",
                COUNTER,
                outbound
                    .into_iter()
                    .map(|((svc, dc, mode, source, via, outcome), n)| {
                        counter(
                            vec![
                                label("upstream", &svc),
                                label("datacenter", &dc),
                                label("mode", &mode),
                                label("mode_source", &source),
                                label("via_gateway", if via { "true" } else { "false" }),
                                label("outcome", outcome),
                            ],
                            n,
                        )
                    })
                    .collect(),
            ),
            family(
                "meshgate_sidecar_active_connections",
                "Connections being relayed.",
                GAUGE,
                vec![
                    gauge(vec![label("direction", "inbound")], active_in as f64),
                    gauge(vec![label("direction", "outbound")], active_out as f64),
                ],
            ),
            family(
                "meshgate_sidecar_certificate_expiry_timestamp_seconds",
                "When the service's leaf expires.",
                GAUGE,
                vec![gauge(
                    vec![],
                    self.cert_not_after.load(Ordering::Relaxed) as f64,
                )],
            ),
        ])
    }
}
