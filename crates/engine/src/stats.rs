//! Per-core counters and histograms, and the Prometheus collector that sums them at scrape time.
//!
//! Each core writes only its own [`CoreStats`] (single writer: a relaxed load and store, no locked
//! read-modify-write and no cache line shared with another core); a scrape reads every core's values and
//! adds them up. Counters with open-ended labels (per route, per Consul destination) are kept in a
//! core-local map and published to the scraper about once a second, with a cap on distinct labels.

use arc_swap::ArcSwap;
pub use prometheus::proto::MetricType;
use prometheus::proto::{
    Bucket, Counter as PCounter, Gauge as PGauge, Histogram as PHistogram, LabelPair, Metric,
    MetricFamily,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Most distinct label values kept per core for `route` and for Consul destinations; the rest are
/// counted under `other`, so a flood of names cannot blow up a scrape.
pub const MAX_LABEL_VALUES: usize = 1_000;

/// A counter written by one core only.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Single writer, so a load and a store suffice (no locked instruction).
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }
    /// Subtracts one (for gauges kept as counters of opens minus closes).
    #[inline]
    pub fn dec(&self) {
        self.0.store(self.0.load(Relaxed).wrapping_sub(1), Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Upper bounds of the ClientHello size histogram, in bytes.
pub const HELLO_SIZE_BUCKETS: [f64; 9] = [
    256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0, 65536.0,
];
/// Upper bounds of the connection duration histogram, in seconds.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 300.0, 1800.0, 3600.0,
];

/// A histogram written by one core only. The sum is kept in micro-units to stay an integer.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Box<[Counter]>,
    count: Counter,
    sum_micros: Counter,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: (0..bounds.len()).map(|_| Counter::default()).collect(),
            count: Counter::default(),
            sum_micros: Counter::default(),
        }
    }

    /// Records one observation.
    pub fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.buckets[i].inc();
        }
        self.count.inc();
        self.sum_micros.add((v * 1e6) as u64);
    }
}

/// Outcomes of reading a ClientHello; `reason` label values. The rejection labels are
/// [`meshgate_sni::Reject::label`]'s.
pub const HELLO_OUTCOMES: [&str; 13] = [
    "ok",
    "no_sni",
    "timeout",
    "eof",
    "not_tls",
    "sslv2",
    "ssl3",
    "not_client_hello",
    "too_large",
    "too_many_records",
    "malformed",
    "multiple_host_names",
    "invalid_host_name",
];

/// How a connection ended; `reason` label values of `meshgate_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both directions finished with FIN.
    Completed,
    /// The ClientHello was refused or never completed.
    HelloFailed,
    /// No route for the name (or no SNI and no no-SNI route).
    NoRoute,
    /// Every endpoint of every group failed.
    UpstreamUnavailable,
    /// The downstream client reset or errored.
    DownstreamError,
    /// The upstream reset or errored.
    UpstreamError,
    /// Idle timeout.
    IdleTimeout,
    /// Maximum connection duration.
    MaxDuration,
    /// Refused by the connection hook.
    Denied,
}

impl End {
    /// Every variant, in label order.
    pub const ALL: [End; 9] = [
        End::Completed,
        End::HelloFailed,
        End::NoRoute,
        End::UpstreamUnavailable,
        End::DownstreamError,
        End::UpstreamError,
        End::IdleTimeout,
        End::MaxDuration,
        End::Denied,
    ];

    /// Stable label.
    pub fn label(self) -> &'static str {
        match self {
            End::Completed => "completed",
            End::HelloFailed => "hello_failed",
            End::NoRoute => "no_route",
            End::UpstreamUnavailable => "upstream_unavailable",
            End::DownstreamError => "downstream_error",
            End::UpstreamError => "upstream_error",
            End::IdleTimeout => "idle_timeout",
            End::MaxDuration => "max_duration",
            End::Denied => "denied",
        }
    }
}

/// Counters of one listener on one core.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Connections accepted.
    pub accepted: Counter,
    /// Connections open now (accepted minus closed).
    pub active: Counter,
}

/// Labelled counts published by a core.
#[derive(Debug, Default, Clone)]
pub struct Labelled {
    /// Connections routed, per route pattern.
    pub routes: HashMap<String, u64>,
    /// Connections routed, per Consul destination `(service, namespace, datacenter)`.
    pub destinations: HashMap<(String, String, String), u64>,
}

/// Everything one core counts. Aligned so two cores' stats never share a cache line.
#[derive(Debug)]
#[repr(align(128))]
pub struct CoreStats {
    /// Per listener, in the order of `gateway.listen`.
    pub listeners: Box<[ListenerStats]>,
    /// ClientHello outcomes, indexed like [`HELLO_OUTCOMES`].
    pub hello: [Counter; HELLO_OUTCOMES.len()],
    /// ClientHello sizes.
    pub hello_size: Histogram,
    /// Upstream connect attempts.
    pub connect_attempts: Counter,
    /// Upstream connect failures (refused, unreachable, timed out).
    pub connect_failures: Counter,
    /// Upstream connect timeouts (also counted as failures).
    pub connect_timeouts: Counter,
    /// Bytes from downstream to upstream (ClientHello included).
    pub bytes_to_upstream: Counter,
    /// Bytes from upstream to downstream.
    pub bytes_to_downstream: Counter,
    /// Duration of relayed connections.
    pub duration: Histogram,
    /// Connection ends, indexed like [`End::ALL`].
    pub ended: [Counter; End::ALL.len()],
    /// accept(2) errors.
    pub accept_errors: Counter,
    /// Times accepting paused because the process ran out of file descriptors.
    pub accept_backoffs: Counter,
    /// Connections relayed with the buffered path because a pipe could not be made.
    pub splice_fallbacks: Counter,
    /// Calls into the connection hook.
    pub hook_calls: Counter,
    /// Hook calls that failed (the table decided instead).
    pub hook_failures: Counter,
    /// Connections decided from the per-core verdict cache, without calling the hook.
    pub hook_cache_hits: Counter,
    /// Labelled counts, republished by the core about once a second.
    pub labelled: ArcSwap<Labelled>,
}

impl CoreStats {
    /// Stats for a core with `listeners` listeners.
    pub fn new(listeners: usize) -> Self {
        Self {
            listeners: (0..listeners).map(|_| ListenerStats::default()).collect(),
            hello: Default::default(),
            hello_size: Histogram::new(&HELLO_SIZE_BUCKETS),
            connect_attempts: Counter::default(),
            connect_failures: Counter::default(),
            connect_timeouts: Counter::default(),
            bytes_to_upstream: Counter::default(),
            bytes_to_downstream: Counter::default(),
            duration: Histogram::new(&DURATION_BUCKETS),
            ended: Default::default(),
            accept_errors: Counter::default(),
            accept_backoffs: Counter::default(),
            splice_fallbacks: Counter::default(),
            hook_calls: Counter::default(),
            hook_failures: Counter::default(),
            hook_cache_hits: Counter::default(),
            labelled: ArcSwap::from_pointee(Labelled::default()),
        }
    }

    /// Counts a ClientHello outcome by label.
    pub fn hello_outcome(&self, label: &str) {
        if let Some(i) = HELLO_OUTCOMES.iter().position(|&l| l == label) {
            self.hello[i].inc();
        }
    }

    /// Counts a connection end.
    pub fn end(&self, end: End) {
        if let Some(i) = End::ALL.iter().position(|&e| e == end) {
            self.ended[i].inc();
        }
    }
}

/// Gateway-wide values written by the control thread (rarely), read at scrape.
#[derive(Debug, Default)]
pub struct ControlStats {
    /// Successful configuration reloads.
    pub reloads_ok: AtomicU64,
    /// Refused configuration reloads.
    pub reloads_failed: AtomicU64,
    /// Routes in the active table.
    pub routes: AtomicU64,
    /// Set while draining.
    pub draining: AtomicBool,
}

/// The Prometheus view of the engine: sums every core at scrape time.
#[derive(Debug, Clone)]
pub struct EngineMetrics {
    /// One per core.
    pub cores: Arc<[CoreStats]>,
    /// Listener labels, in order.
    pub listeners: Arc<[String]>,
    /// Control-plane values.
    pub control: Arc<ControlStats>,
}

// Building blocks for metric families, shared with meshgate's other data planes (the sidecar), so every
// scrape goes through the same encoder (label escaping, HELP/TYPE lines).

/// A label pair.
pub fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_owned());
    l.set_value(value.to_owned());
    l
}

/// A metric family of `kind` with its samples.
pub fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_owned());
    f.set_help(help.to_owned());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

/// A counter sample.
pub fn counter(labels: Vec<LabelPair>, v: u64) -> Metric {
    let mut c = PCounter::default();
    c.set_value(v as f64);
    let mut m = Metric::default();
    m.set_label(labels);
    m.set_counter(c);
    m
}

/// A gauge sample.
pub fn gauge(labels: Vec<LabelPair>, v: f64) -> Metric {
    let mut g = PGauge::default();
    g.set_value(v);
    let mut m = Metric::default();
    m.set_label(labels);
    m.set_gauge(g);
    m
}

impl EngineMetrics {
    fn sum(&self, f: impl Fn(&CoreStats) -> u64) -> u64 {
        self.cores.iter().map(f).fold(0, u64::wrapping_add)
    }

    fn histogram(&self, pick: impl Fn(&CoreStats) -> &Histogram) -> Metric {
        let first = pick(&self.cores[0]);
        let mut cumulative = 0;
        let buckets = first
            .bounds
            .iter()
            .enumerate()
            .map(|(i, &bound)| {
                cumulative += self.sum(|c| pick(c).buckets[i].get());
                let mut b = Bucket::default();
                b.set_upper_bound(bound);
                b.set_cumulative_count(cumulative);
                b
            })
            .collect();
        let mut h = PHistogram::default();
        h.set_bucket(buckets);
        h.set_sample_count(self.sum(|c| pick(c).count.get()));
        h.set_sample_sum(self.sum(|c| pick(c).sum_micros.get()) as f64 / 1e6);
        let mut m = Metric::default();
        m.set_histogram(h);
        m
    }

    /// Every metric family, summed over cores.
    pub fn gather(&self) -> Vec<MetricFamily> {
        use MetricType::{COUNTER, GAUGE, HISTOGRAM};
        let mut out = Vec::new();
        let per_listener = |f: &dyn Fn(&ListenerStats) -> u64| -> Vec<Metric> {
            self.listeners
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let v = self.sum(|c| c.listeners.get(i).map_or(0, f));
                    counter(vec![label("listener", name)], v)
                })
                .collect()
        };
        out.push(family(
            "meshgate_downstream_connections_total",
            "Downstream connections accepted, per listener.",
            COUNTER,
            per_listener(&|l| l.accepted.get()),
        ));
        let active = per_listener(&|l| l.active.get())
            .into_iter()
            .map(|m| {
                let v = m.get_counter().get_value();
                gauge(m.get_label().to_vec(), v)
            })
            .collect();
        out.push(family(
            "meshgate_downstream_connections_active",
            "Downstream connections open now, per listener.",
            GAUGE,
            active,
        ));
        out.push(family(
            "meshgate_client_hello_total",
            "ClientHellos read, by outcome (ok, no_sni, timeout, eof, or the rejection reason).",
            COUNTER,
            HELLO_OUTCOMES
                .iter()
                .enumerate()
                .map(|(i, r)| counter(vec![label("outcome", r)], self.sum(|c| c.hello[i].get())))
                .collect(),
        ));
        out.push(family(
            "meshgate_client_hello_bytes",
            "Size of complete ClientHello messages, in bytes.",
            HISTOGRAM,
            vec![self.histogram(|c| &c.hello_size)],
        ));
        let (mut routes, mut dests) = (HashMap::new(), HashMap::new());
        for core in self.cores.iter() {
            let l = core.labelled.load();
            for (k, v) in &l.routes {
                *routes.entry(k.clone()).or_insert(0u64) += v;
            }
            for (k, v) in &l.destinations {
                *dests.entry(k.clone()).or_insert(0u64) += v;
            }
        }
        let mut routes: Vec<_> = routes.into_iter().collect();
        routes.sort();
        out.push(family(
            "meshgate_routed_connections_total",
            "Connections routed, per route pattern.",
            COUNTER,
            routes
                .into_iter()
                .map(|(r, v)| counter(vec![label("route", &r)], v))
                .collect(),
        ));
        let mut dests: Vec<_> = dests.into_iter().collect();
        dests.sort();
        out.push(family(
            "meshgate_destination_connections_total",
            "Connections routed whose SNI follows Consul's scheme, per destination service.",
            COUNTER,
            dests
                .into_iter()
                .map(|((s, n, d), v)| {
                    counter(
                        vec![
                            label("datacenter", &d),
                            label("namespace", &n),
                            label("service", &s),
                        ],
                        v,
                    )
                })
                .collect(),
        ));
        for (name, help, f) in [
            (
                "meshgate_upstream_connect_attempts_total",
                "Upstream connect attempts.",
                &(|c: &CoreStats| c.connect_attempts.get()) as &dyn Fn(&CoreStats) -> u64,
            ),
            (
                "meshgate_upstream_connect_failures_total",
                "Upstream connect attempts that failed (timeouts included).",
                &|c: &CoreStats| c.connect_failures.get(),
            ),
            (
                "meshgate_upstream_connect_timeouts_total",
                "Upstream connect attempts that timed out.",
                &|c: &CoreStats| c.connect_timeouts.get(),
            ),
            (
                "meshgate_accept_errors_total",
                "accept(2) errors.",
                &|c: &CoreStats| c.accept_errors.get(),
            ),
            (
                "meshgate_accept_backoffs_total",
                "Pauses in accepting because the process ran out of file descriptors.",
                &|c: &CoreStats| c.accept_backoffs.get(),
            ),
            (
                "meshgate_hook_calls_total",
                "Calls into the per-connection hook plugin.",
                &|c: &CoreStats| c.hook_calls.get(),
            ),
            (
                "meshgate_hook_failures_total",
                "Hook calls that failed (trap, deadline...); the route table decided instead.",
                &|c: &CoreStats| c.hook_failures.get(),
            ),
            (
                "meshgate_hook_cache_hits_total",
                "Connections decided from the per-core cache of cacheable hook verdicts.",
                &|c: &CoreStats| c.hook_cache_hits.get(),
            ),
            (
                "meshgate_splice_fallbacks_total",
                "Connections relayed through user space because no pipe could be made.",
                &|c: &CoreStats| c.splice_fallbacks.get(),
            ),
        ] {
            out.push(family(
                name,
                help,
                COUNTER,
                vec![counter(vec![], self.sum(f))],
            ));
        }
        out.push(family(
            "meshgate_bytes_total",
            "Bytes relayed, by direction.",
            COUNTER,
            vec![
                counter(
                    vec![label("direction", "to_upstream")],
                    self.sum(|c| c.bytes_to_upstream.get()),
                ),
                counter(
                    vec![label("direction", "to_downstream")],
                    self.sum(|c| c.bytes_to_downstream.get()),
                ),
            ],
        ));
        out.push(family(
            "meshgate_connection_duration_seconds",
            "Duration of connections that were routed, in seconds.",
            HISTOGRAM,
            vec![self.histogram(|c| &c.duration)],
        ));
        out.push(family(
            "meshgate_connections_closed_total",
            "Connections closed, by how they ended.",
            COUNTER,
            End::ALL
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    counter(
                        vec![label("reason", e.label())],
                        self.sum(|c| c.ended[i].get()),
                    )
                })
                .collect(),
        ));
        let ctl = &self.control;
        out.push(family(
            "meshgate_config_reloads_total",
            "Configuration reloads, by result.",
            COUNTER,
            vec![
                counter(vec![label("result", "ok")], ctl.reloads_ok.load(Relaxed)),
                counter(
                    vec![label("result", "failed")],
                    ctl.reloads_failed.load(Relaxed),
                ),
            ],
        ));
        out.push(family(
            "meshgate_route_table_routes",
            "Routes in the active route table.",
            GAUGE,
            vec![gauge(vec![], ctl.routes.load(Relaxed) as f64)],
        ));
        out.push(family(
            "meshgate_workers",
            "Data-plane cores.",
            GAUGE,
            vec![gauge(vec![], self.cores.len() as f64)],
        ));
        out.push(family(
            "meshgate_draining",
            "1 while the gateway drains before exit.",
            GAUGE,
            vec![gauge(
                vec![],
                if ctl.draining.load(Relaxed) { 1.0 } else { 0.0 },
            )],
        ));
        out
    }

    /// The Prometheus text exposition of [`EngineMetrics::gather`].
    pub fn render(&self) -> String {
        encode(self.gather())
    }
}

/// Prometheus text for metric families. The encoder refuses a family without samples (e.g. no route seen
/// yet), so those are left out rather than cutting the whole scrape short.
pub fn encode(families: Vec<MetricFamily>) -> String {
    use prometheus::Encoder;
    let families: Vec<MetricFamily> = families
        .into_iter()
        .filter(|f| !f.get_metric().is_empty())
        .collect();
    let mut buf = Vec::new();
    if let Err(e) = prometheus::TextEncoder::new().encode(&families, &mut buf) {
        tracing::error!(error = %e, "metrics encoding failed");
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Splits a Consul service SNI `<svc>.<ns>.<dc>.internal.<trust-domain>` into (service, namespace,
/// datacenter); subsets (`<subset>.<svc>...`) count for their service. `None` for other names.
pub fn consul_destination(sni: &str) -> Option<(&str, &str, &str)> {
    let (head, _td) = sni.split_once(".internal.")?;
    let mut labels = head.rsplit('.');
    let dc = labels.next()?;
    let ns = labels.next()?;
    let svc = labels.next()?;
    Some((svc, ns, dc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consul_names() {
        assert_eq!(
            consul_destination("api.default.dc2.internal.abc.consul"),
            Some(("api", "default", "dc2"))
        );
        assert_eq!(
            consul_destination("v1.api.default.dc2.internal.abc.consul"),
            Some(("api", "default", "dc2"))
        );
        assert_eq!(consul_destination("dc2.internal.abc.consul"), None);
        assert_eq!(consul_destination("www.example.com"), None);
    }

    #[test]
    fn sums_cores_and_renders() {
        let cores: Arc<[CoreStats]> = vec![CoreStats::new(1), CoreStats::new(1)].into();
        cores[0].listeners[0].accepted.add(2);
        cores[1].listeners[0].accepted.add(3);
        cores[0].hello_outcome("not_tls");
        cores[1].hello_size.observe(300.0);
        cores[0].end(End::NoRoute);
        let m = EngineMetrics {
            cores,
            listeners: vec!["127.0.0.1:8443".to_owned()].into(),
            control: Arc::default(),
        };
        let text = m.render();
        assert!(
            text.contains("meshgate_downstream_connections_total{listener=\"127.0.0.1:8443\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("meshgate_client_hello_total{outcome=\"not_tls\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("meshgate_client_hello_bytes_bucket{le=\"512\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("meshgate_connections_closed_total{reason=\"no_route\"} 1"),
            "{text}"
        );
        // Families after the (empty) per-route ones are present too.
        assert!(text.contains("meshgate_draining 0"), "{text}");
    }
}
