//! Metric-family builders shared by meshgate's data planes (gateway and sidecar), so every scrape goes
//! through the same encoder (label escaping, HELP/TYPE lines).

pub use prometheus::proto::MetricType;
use prometheus::proto::{Counter as PCounter, Gauge as PGauge, LabelPair, Metric, MetricFamily};

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
