//! The Prometheus view of the engine: every core's cells summed at scrape time.

use super::core::{ControlStats, CoreStats, ListenerStats};
use super::counter::Histogram;
use super::families::{counter, encode, family, gauge, label, MetricType};
use super::outcome::{End, HelloOutcome};
use prometheus::proto::{Bucket, Histogram as PHistogram, Metric, MetricFamily};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// The Prometheus view of the engine: sums every core at scrape time.
#[derive(Debug, Clone)]
pub struct EngineMetrics {
    /// One per core.
    pub cores: Arc<[CoreStats]>,
    /// Listener labels, in order.
    pub listeners: Arc<[String]>,
    /// Control-plane values.
    pub control: Arc<ControlStats>,
    /// The remote gateways' probes, as the prober last published them.
    pub probes: Arc<arc_swap::ArcSwap<crate::probe::ProbeReport>>,
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
            "meshgate_core_connections_active",
            "Downstream connections open now, per data-plane core.",
            GAUGE,
            self.cores
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let v = c
                        .listeners
                        .iter()
                        .map(|l| l.active.get())
                        .fold(0, u64::wrapping_add);
                    gauge(vec![label("core", &i.to_string())], v as f64)
                })
                .collect(),
        ));
        out.push(family(
            "meshgate_client_hello_total",
            "ClientHellos read, by outcome (ok, no_sni, timeout, eof, or the rejection reason).",
            COUNTER,
            HelloOutcome::ALL
                .iter()
                .map(|o| {
                    counter(
                        vec![label("outcome", o.label())],
                        self.sum(|c| c.hello[o.index()].get()),
                    )
                })
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
                "meshgate_upstream_known_down_total",
                "Connections refused at once, no connect tried, because every endpoint of their route was known down.",
                &|c: &CoreStats| c.known_down.get(),
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
            (
                "meshgate_connections_handed_over_total",
                "Connections accepted on one core and handed to a core serving fewer ([gateway] balance = \"connections\").",
                &|c: &CoreStats| c.handed_over.get(),
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
            "meshgate_log_lines_dropped_total",
            "Log lines (access log included) dropped because the log writer's queue was full; a core never waits for the log.",
            COUNTER,
            vec![counter(Vec::new(), super::log_drops())],
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
            "meshgate_connection_limit",
            "Connections served at once: max_connections, lowered at start when RLIMIT_NOFILE cannot hold it.",
            GAUGE,
            vec![gauge(vec![], ctl.connection_limit.load(Relaxed) as f64)],
        ));
        self.gather_probes(&mut out);
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

    fn gather_probes(&self, out: &mut Vec<MetricFamily>) {
        use MetricType::{COUNTER, GAUGE};
        let report = self.probes.load();
        let labels = |e: &crate::probe::EndpointReport| {
            vec![
                label("datacenter", &e.datacenter),
                label("endpoint", &e.endpoint.to_string()),
            ]
        };
        let judged = || {
            report
                .endpoints
                .iter()
                .filter(|e| e.state != crate::probe::tracker::State::Unknown)
        };
        out.push(family(
            "meshgate_remote_gateway_up",
            "1 while probes reach this remote gateway endpoint, 0 once it is marked down (connections skip it); absent before the first verdict.",
            GAUGE,
            judged()
                .map(|e| {
                    let up = e.state == crate::probe::tracker::State::Up;
                    gauge(labels(e), if up { 1.0 } else { 0.0 })
                })
                .collect(),
        ));
        out.push(family(
            "meshgate_remote_gateway_rtt_seconds",
            "Smoothed TCP connect time to a remote gateway endpoint (kept while it is down).",
            GAUGE,
            report
                .endpoints
                .iter()
                .filter_map(|e| Some(gauge(labels(e), e.rtt?.as_secs_f64())))
                .collect(),
        ));
        out.push(family(
            "meshgate_remote_gateway_last_change_timestamp_seconds",
            "When a remote gateway endpoint was last marked up or down, seconds since the Unix epoch.",
            GAUGE,
            report
                .endpoints
                .iter()
                .filter_map(|e| Some(gauge(labels(e), e.last_change?)))
                .collect(),
        ));
        out.push(family(
            "meshgate_remote_gateway_probes_total",
            "Probes of a remote gateway endpoint, by result (ok, failed).",
            COUNTER,
            report
                .endpoints
                .iter()
                .flat_map(|e| {
                    let mut ok = labels(e);
                    ok.push(label("result", "ok"));
                    let mut failed = labels(e);
                    failed.push(label("result", "failed"));
                    [counter(ok, e.ok), counter(failed, e.failed)]
                })
                .collect(),
        ));
    }

    /// The Prometheus text exposition of [`EngineMetrics::gather`].
    pub fn render(&self) -> String {
        encode(self.gather())
    }
}
