//! Sidecar counters, on the engine's rules: per core, each written by its core only (the engine's
//! single-writer [`Counter`]: a relaxed load and store, no lock, no locked instruction), summed at scrape
//! into Prometheus text through the engine's metric-family builders.
//!
//! Counters with open-ended labels (per upstream) live in a map the core republishes only when a new
//! label set appears; the counts themselves are shared cells, so a scrape sees every connection at once.

use crate::{Target, Upstream};
use arc_swap::ArcSwap;
use meshgate_engine::stats::{counter, encode, family, gauge, label, Counter};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

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
    /// Every outcome.
    const ALL: [Inbound; 6] = [
        Inbound::Allowed,
        Inbound::Denied,
        Inbound::HandshakeFailed,
        Inbound::NoIdentity,
        Inbound::NoApplication,
        Inbound::ApplicationUnreachable,
    ];

    /// Position in [`Inbound::ALL`].
    const fn index(self) -> usize {
        match self {
            Inbound::Allowed => 0,
            Inbound::Denied => 1,
            Inbound::HandshakeFailed => 2,
            Inbound::NoIdentity => 3,
            Inbound::NoApplication => 4,
            Inbound::ApplicationUnreachable => 5,
        }
    }

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
    pub(crate) fn label(self) -> &'static str {
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
/// (upstream, service and datacenter of the target left, why).
type FailoverKey = (String, String, String, &'static str);

/// A per-label-set counter map, republished by its single writer when a new label set appears.
fn bump<K: Clone + Eq + std::hash::Hash>(map: &ArcSwap<HashMap<K, Arc<Counter>>>, key: K) {
    let published = map.load();
    if let Some(c) = published.get(&key) {
        c.inc();
        return;
    }
    // A new label set. Single writer: nobody else publishes between this load and store.
    let first = Arc::new(Counter::default());
    first.inc();
    let mut grown = HashMap::clone(&published);
    grown.insert(key, first);
    map.store(Arc::new(grown));
}

/// One core's counters. Written by that core only; read by the scraper.
#[derive(Default)]
pub struct CoreStats {
    inbound: [Counter; Inbound::ALL.len()],
    /// Per outbound label set. Republished (a new map) only when the core meets a new label set.
    outbound: ArcSwap<HashMap<OutboundKey, Arc<Counter>>>,
    /// Connections that left a target for the next one, per label set.
    failovers: ArcSwap<HashMap<FailoverKey, Arc<Counter>>>,
    /// Opened minus closed, per direction.
    active_inbound: Counter,
    active_outbound: Counter,
    /// Listen addresses this core could not bind; republished on each new one (rare).
    bind_errors: ArcSwap<Vec<(SocketAddr, String)>>,
}

impl CoreStats {
    pub(crate) fn inbound(&self, outcome: Inbound) {
        self.inbound[outcome.index()].inc();
    }

    /// How a connection ended its setup, labelled by the target it ended on.
    pub(crate) fn outbound(&self, up: &Upstream, target: &Target, outcome: Outbound) {
        let key = (
            up.service.clone(),
            target.datacenter.clone(),
            up.mode.clone(),
            up.mode_source.clone(),
            target.via_gateway,
            outcome.label(),
        );
        bump(&self.outbound, key);
    }

    /// A connection left `target` for the next one because of `why`.
    pub(crate) fn failover(&self, up: &Upstream, target: &Target, why: Outbound) {
        let key = (
            up.service.clone(),
            target.service.clone(),
            target.datacenter.clone(),
            why.label(),
        );
        bump(&self.failovers, key);
    }

    pub(crate) fn active(&self, direction: Direction, opened: bool) {
        let gauge = match direction {
            Direction::Inbound => &self.active_inbound,
            Direction::Outbound => &self.active_outbound,
        };
        if opened {
            gauge.inc();
        } else {
            gauge.dec();
        }
    }

    pub(crate) fn bind_error(&self, addr: SocketAddr, message: String) {
        let mut errors = Vec::clone(&self.bind_errors.load());
        errors.push((addr, message));
        self.bind_errors.store(Arc::new(errors));
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
            .find_map(|c| c.bind_errors.load().first().cloned())
    }

    /// Inbound connections that ended setup with `outcome`, all cores.
    pub fn inbound_total(&self, outcome: Inbound) -> u64 {
        self.cores
            .iter()
            .map(|c| c.inbound[outcome.index()].get())
            .fold(0, u64::wrapping_add)
    }

    /// Prometheus text.
    pub fn render(&self) -> String {
        use meshgate_engine::stats::MetricType::{COUNTER, GAUGE};
        let mut inbound: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut outbound: BTreeMap<OutboundKey, u64> = BTreeMap::new();
        let mut failovers: BTreeMap<FailoverKey, u64> = BTreeMap::new();
        let (mut active_in, mut active_out) = (0u64, 0u64);
        for c in self.cores.iter() {
            // Only outcomes seen so far are listed, as before the counters moved off a lock.
            for o in Inbound::ALL {
                let n = c.inbound[o.index()].get();
                if n > 0 {
                    *inbound.entry(o.label()).or_default() += n;
                }
            }
            for (k, v) in c.outbound.load().iter() {
                *outbound.entry(k.clone()).or_default() += v.get();
            }
            for (k, v) in c.failovers.load().iter() {
                *failovers.entry(k.clone()).or_default() += v.get();
            }
            active_in = active_in.wrapping_add(c.active_inbound.get());
            active_out = active_out.wrapping_add(c.active_outbound.get());
        }
        // Opens minus closes, kept in wrapping unsigned cells.
        let (active_in, active_out) = (active_in as i64, active_out as i64);
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
                "meshgate_sidecar_upstream_failovers_total",
                "Outbound connections that left a target (service, datacenter) for the upstream's next one, by why (no_route, connect_failed, handshake_failed).",
                COUNTER,
                failovers
                    .into_iter()
                    .map(|((up, svc, dc, why), n)| {
                        counter(
                            vec![
                                label("upstream", &up),
                                label("service", &svc),
                                label("datacenter", &dc),
                                label("reason", why),
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;

    fn upstream(service: &str, via_gateway: bool) -> (Upstream, Target) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let target = Target {
            service: service.to_owned(),
            datacenter: "dc1".to_owned(),
            sni: ServerName::try_from("api.default.dc1.internal.td.consul").expect("name"),
            client: Arc::new(client),
            next_hops: vec![],
            via_gateway,
        };
        let up = Upstream {
            service: service.to_owned(),
            bind: ([127, 0, 0, 1], 9000).into(),
            mode: "local".to_owned(),
            mode_source: "proxy-defaults".to_owned(),
            targets: vec![target.clone()],
        };
        (up, target)
    }

    #[test]
    fn sums_cores_without_locks_and_keeps_names_and_labels() {
        let m = Metrics::new(2);
        let (c0, c1) = (m.core(0), m.core(1));
        c0.inbound(Inbound::Allowed);
        c1.inbound(Inbound::Allowed);
        c1.inbound(Inbound::Denied);
        let (api, api_dc1) = upstream("api", true);
        c0.outbound(&api, &api_dc1, Outbound::Ok);
        c1.outbound(&api, &api_dc1, Outbound::Ok);
        c1.outbound(&api, &api_dc1, Outbound::Ok);
        c0.failover(&api, &api_dc1, Outbound::HandshakeFailed);
        c1.failover(&api, &api_dc1, Outbound::HandshakeFailed);
        let (web, web_dc1) = upstream("web", false);
        c0.outbound(&web, &web_dc1, Outbound::ConnectFailed);
        c0.active(Direction::Inbound, true);
        c1.active(Direction::Inbound, true);
        c0.active(Direction::Inbound, false);
        c1.active(Direction::Outbound, true);
        c1.active(Direction::Outbound, false);
        m.set_cert_expiry(1_700_000_000);
        assert_eq!(m.inbound_total(Inbound::Allowed), 2);
        let text = m.render();
        for line in [
            "meshgate_sidecar_inbound_connections_total{outcome=\"allowed\"} 2",
            "meshgate_sidecar_inbound_connections_total{outcome=\"denied\"} 1",
            "meshgate_sidecar_upstream_connections_total{upstream=\"api\",datacenter=\"dc1\",mode=\"local\",mode_source=\"proxy-defaults\",via_gateway=\"true\",outcome=\"ok\"} 3",
            "meshgate_sidecar_upstream_connections_total{upstream=\"web\",datacenter=\"dc1\",mode=\"local\",mode_source=\"proxy-defaults\",via_gateway=\"false\",outcome=\"connect_failed\"} 1",
            "meshgate_sidecar_upstream_failovers_total{upstream=\"api\",service=\"api\",datacenter=\"dc1\",reason=\"handshake_failed\"} 2",
            "meshgate_sidecar_active_connections{direction=\"inbound\"} 1",
            "meshgate_sidecar_active_connections{direction=\"outbound\"} 0",
            "meshgate_sidecar_certificate_expiry_timestamp_seconds 1700000000",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        // Outcomes never seen are not listed (as before).
        assert!(!text.contains("outcome=\"no_identity\""), "{text}");
    }

    #[test]
    fn the_first_bind_error_is_reported() {
        let m = Metrics::new(2);
        assert!(m.first_bind_error().is_none());
        let addr: SocketAddr = ([127, 0, 0, 1], 1).into();
        m.core(1).bind_error(addr, "in use".to_owned());
        assert_eq!(m.first_bind_error(), Some((addr, "in use".to_owned())));
    }
}
