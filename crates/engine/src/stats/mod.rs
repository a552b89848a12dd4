//! Per-core counters and histograms, and the Prometheus view that sums them at scrape time.
//!
//! Each core writes only its own [`CoreStats`] (single writer: a relaxed load and store, no locked
//! read-modify-write and no cache line shared with another core); a scrape reads every core's values and
//! adds them up. Counters with open-ended labels (per route, per Consul destination) are kept in a
//! core-local map and published to the scraper about once a second, with a cap on distinct labels.
//!
//! Parts: [`counter`](mod@counter) (the single-writer cells), [`outcome`] (typed outcomes whose labels are the metric
//! labels), `core` (what a core and the control thread count), [`families`] (metric-family builders shared
//! with the sidecar), `gather` (the engine's scrape).

mod core;
pub mod counter;
pub mod families;
mod gather;
pub mod outcome;

pub use self::core::{
    ControlStats, CoreStats, Labelled, ListenerStats, MAX_LABEL_VALUES, MAX_WILDCARD_DESTINATIONS,
};
pub use counter::{Counter, Histogram, DURATION_BUCKETS, HELLO_SIZE_BUCKETS};
pub use families::{counter, encode, family, gauge, label, MetricType};
pub use gather::EngineMetrics;
pub use outcome::{End, HelloOutcome, HELLO_OUTCOMES};

use std::sync::OnceLock;

type DropCount = Box<dyn Fn() -> u64 + Send + Sync>;

/// Log lines dropped by the process's log writer (set once by the binary that installs it).
static LOG_DROPS: OnceLock<DropCount> = OnceLock::new();

/// Tells the metrics how to read the log writer's count of dropped lines: the writer never makes a
/// core wait, so when its queue is full it drops lines, and a scrape must say so.
pub fn set_log_drops(count: impl Fn() -> u64 + Send + Sync + 'static) {
    let _ = LOG_DROPS.set(Box::new(count));
}

/// Log lines dropped so far (0 when no counting writer is installed).
pub fn log_drops() -> u64 {
    LOG_DROPS.get().map_or(0, |count| count())
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_sni::Reject;
    use std::sync::Arc;

    #[test]
    fn consul_destinations_use_the_mesh_parser() {
        let mut l = Labelled::default();
        l.count_routed("r", Some("api.default.dc2.internal.abc.consul"));
        l.count_routed("r", Some("v1.api.default.dc2.internal.abc.consul"));
        l.count_routed("r", Some("dc2.internal.abc.consul"));
        l.count_routed("r", Some("www.example.com"));
        l.count_routed("r", None);
        let key = ("api".to_owned(), "default".to_owned(), "dc2".to_owned());
        assert_eq!(l.destinations.get(&key), Some(&2));
        assert_eq!(l.destinations.len(), 1);
        assert_eq!(l.routes.get("r"), Some(&5));
    }

    #[test]
    fn junk_names_under_a_wildcard_cannot_take_the_labels_of_listed_services() {
        let mut l = Labelled::default();
        let wild = "*.dc2.internal.abc.consul";
        for i in 0..5_000 {
            l.count_routed(
                wild,
                Some(&format!("junk{i}.default.dc2.internal.abc.consul")),
            );
        }
        // A service the table lists exactly still gets its own series after the flood.
        l.count_routed(
            "api.default.dc1.internal.abc.consul",
            Some("api.default.dc1.internal.abc.consul"),
        );
        let api = ("api".to_owned(), "default".to_owned(), "dc1".to_owned());
        assert_eq!(l.destinations.get(&api), Some(&1));
        let other = ("other".to_owned(), "other".to_owned(), "dc2".to_owned());
        assert_eq!(
            l.destinations.get(&other),
            Some(&(5_000 - MAX_WILDCARD_DESTINATIONS as u64))
        );
        assert_eq!(l.destinations.len(), MAX_WILDCARD_DESTINATIONS + 2);
    }

    #[test]
    fn hello_outcomes_have_distinct_positions_and_labels() {
        for (i, o) in HelloOutcome::ALL.iter().enumerate() {
            assert_eq!(o.index(), i);
            assert_eq!(HELLO_OUTCOMES[i], o.label());
        }
        for (i, e) in End::ALL.iter().enumerate() {
            assert_eq!(e.index(), i);
        }
    }

    #[test]
    fn rejections_keep_their_labels() {
        let known = [
            Reject::NotTls,
            Reject::Sslv2,
            Reject::Ssl3,
            Reject::NotClientHello,
            Reject::TooLarge { size: 2, limit: 1 },
            Reject::TooManyRecords,
            Reject::Malformed("x"),
            Reject::MultipleHostNames,
        ];
        for r in &known {
            assert_eq!(HelloOutcome::rejected(r).label(), r.label());
        }
    }

    #[test]
    fn sums_cores_and_renders() {
        let cores: Arc<[CoreStats]> = vec![CoreStats::new(1), CoreStats::new(1)].into();
        cores[0].listeners[0].accepted.add(2);
        cores[1].listeners[0].accepted.add(3);
        cores[0].hello(HelloOutcome::NotTls);
        cores[1].hello_outcome("no_sni");
        cores[1].hello_size.observe(300.0);
        cores[0].end(End::NoRoute);
        let m = EngineMetrics {
            cores,
            listeners: vec!["127.0.0.1:8443".to_owned()].into(),
            control: Arc::default(),
            probes: Arc::default(),
        };
        let text = m.render();
        for line in [
            "meshgate_downstream_connections_total{listener=\"127.0.0.1:8443\"} 5",
            "meshgate_client_hello_total{outcome=\"not_tls\"} 1",
            "meshgate_client_hello_total{outcome=\"no_sni\"} 1",
            "meshgate_client_hello_total{outcome=\"invalid_host_name\"} 0",
            "meshgate_client_hello_bytes_bucket{le=\"512\"} 1",
            "meshgate_connections_closed_total{reason=\"no_route\"} 1",
            // Families after the (empty) per-route ones are present too.
            "meshgate_draining 0",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
