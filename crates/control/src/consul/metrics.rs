//! The Consul metric families and the per-watch health they are computed from. Staleness is computed
//! when scraped (not when a watch next fails), so it keeps rising while the agent is gone even though
//! the watches back off for up to a minute between attempts.

use super::endpoint_label;
use crate::error::ControlError;
use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

/// How one running watch is doing, shared between its thread and the metrics.
#[derive(Debug)]
pub struct WatchHealth {
    /// Since when the view it feeds is current (its last successful round; its start before any).
    last_ok: Mutex<Instant>,
    /// Whether its last round failed (or none succeeded yet).
    failing: Mutex<bool>,
    /// Whether a round ever succeeded.
    answered: Mutex<bool>,
    /// Whether the current failure streak was reported.
    reported: Mutex<bool>,
}

impl WatchHealth {
    fn new() -> WatchHealth {
        WatchHealth {
            last_ok: Mutex::new(Instant::now()),
            failing: Mutex::new(true),
            answered: Mutex::new(false),
            reported: Mutex::new(false),
        }
    }

    /// A round succeeded. Returns whether the watch had been failing after answering once (a first
    /// answer is not a recovery).
    pub fn ok(&self) -> bool {
        let recovered = {
            let Ok(mut t) = self.last_ok.lock() else {
                return false;
            };
            let failing = self
                .failing
                .lock()
                .map(|mut f| std::mem::replace(&mut *f, false))
                .unwrap_or(false);
            let answered = self
                .answered
                .lock()
                .map(|mut a| std::mem::replace(&mut *a, true))
                .unwrap_or(true);
            *t = Instant::now();
            if let Ok(mut r) = self.reported.lock() {
                *r = false;
            }
            failing && answered
        };
        recovered
    }

    /// A round failed. Returns whether this starts a failure streak (the first failure since the last
    /// success, or since the start: once per streak is how often it is worth a log line).
    pub fn failed(&self) -> bool {
        if let Ok(mut f) = self.failing.lock() {
            *f = true;
        }
        self.reported
            .lock()
            .map(|mut r| !std::mem::replace(&mut *r, true))
            .unwrap_or(false)
    }

    /// Seconds the view may be behind: 0 while the last round succeeded.
    pub fn stale_seconds(&self, now: Instant) -> f64 {
        let failing = self.failing.lock().map(|f| *f).unwrap_or(true);
        if !failing {
            return 0.0;
        }
        self.last_ok
            .lock()
            .map(|t| now.saturating_duration_since(*t).as_secs_f64())
            .unwrap_or(0.0)
    }
}

/// Consul metrics of one process, registered into the admin endpoint's registry.
pub struct ConsulMetrics {
    requests: IntCounterVec,
    stale: Gauge,
    watches: IntGauge,
    /// 1 while the gateway's registration is known to be in the agent.
    pub registered: IntGauge,
    /// Registrations sent (the first, and each after the agent forgot it).
    pub registrations: IntCounter,
    /// Catalogs the watch-catalog plugin produced that differed from the one in force.
    pub catalog_changes: IntCounter,
    /// Set once the agent said the token may do what the gateway does (or ACLs are off): until then
    /// an empty catalog may only mean the token cannot read it, and the gateway is not ready.
    pub preflight_passed: std::sync::atomic::AtomicBool,
    tracked: Mutex<Vec<Weak<WatchHealth>>>,
}

impl ConsulMetrics {
    /// Creates the families and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Arc<ConsulMetrics>, ControlError> {
        Self::build(registry)
            .map(Arc::new)
            .map_err(|e| ControlError::Host(format!("metrics: {e}")))
    }

    fn build(registry: &Registry) -> Result<ConsulMetrics, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "meshgate_consul_requests_total",
                "HTTP requests to the Consul agent, by endpoint (names removed) and outcome (ok, error, forbidden).",
            ),
            &["endpoint", "outcome"],
        )?;
        let stale = Gauge::new(
            "meshgate_consul_stale_seconds",
            "How far behind Consul the gateway's view may be: 0 while every watch's last round succeeded, else seconds since the longest-failing watch last did.",
        )?;
        let watches = IntGauge::new(
            "meshgate_consul_watches",
            "Consul watches (blocking queries) running.",
        )?;
        let registered = IntGauge::new(
            "meshgate_consul_registered",
            "1 while this gateway's own registration is in the Consul agent.",
        )?;
        let registrations = IntCounter::new(
            "meshgate_consul_registrations_total",
            "Registrations of this gateway sent to the agent (again each time the agent had forgotten it).",
        )?;
        let catalog_changes = IntCounter::new(
            "meshgate_consul_catalog_changes_total",
            "Catalogs built from Consul's answers that differed from the one in force.",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(stale.clone()))?;
        registry.register(Box::new(watches.clone()))?;
        registry.register(Box::new(registered.clone()))?;
        registry.register(Box::new(registrations.clone()))?;
        registry.register(Box::new(catalog_changes.clone()))?;
        Ok(ConsulMetrics {
            requests,
            stale,
            watches,
            registered,
            registrations,
            catalog_changes,
            preflight_passed: std::sync::atomic::AtomicBool::new(false),
            tracked: Mutex::new(Vec::new()),
        })
    }

    /// Counts one request by its path and outcome.
    pub fn request(&self, path: &str, outcome: &str) {
        self.requests
            .with_label_values(&[&endpoint_label(path), outcome])
            .inc();
    }

    /// Requests counted so far for an endpoint label and outcome.
    pub fn requests(&self, endpoint: &str, outcome: &str) -> u64 {
        self.requests.with_label_values(&[endpoint, outcome]).get()
    }

    /// The health of a new watch, tracked until it is dropped.
    pub fn track(&self) -> Arc<WatchHealth> {
        let h = Arc::new(WatchHealth::new());
        if let Ok(mut t) = self.tracked.lock() {
            t.retain(|w| w.strong_count() > 0);
            t.push(Arc::downgrade(&h));
        }
        h
    }

    /// Brings the computed gauges up to date (call before gathering).
    pub fn refresh(&self) {
        let now = Instant::now();
        let Ok(mut t) = self.tracked.lock() else {
            return;
        };
        t.retain(|w| w.strong_count() > 0);
        let live: Vec<Arc<WatchHealth>> = t.iter().filter_map(Weak::upgrade).collect();
        self.watches
            .set(i64::try_from(live.len()).unwrap_or(i64::MAX));
        let stale = live
            .iter()
            .map(|h| h.stale_seconds(now))
            .fold(0.0, f64::max);
        self.stale.set(stale);
    }

    /// The staleness gauge as last refreshed.
    pub fn stale_seconds(&self) -> f64 {
        self.refresh();
        self.stale.get()
    }
}

/// The outcome label of a failed request.
pub fn outcome(e: &meshgate_consul::Error) -> &'static str {
    match e.status() {
        Some(403) => "forbidden",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streak_is_reported_once_and_a_first_answer_is_no_recovery() {
        let h = WatchHealth::new();
        assert!(h.failed(), "the first failure, even before any answer");
        assert!(!h.failed());
        assert!(!h.ok(), "a first answer is not a recovery");
        assert_eq!(h.stale_seconds(Instant::now()), 0.0);
        assert!(h.failed());
        assert!(h.stale_seconds(Instant::now() + std::time::Duration::from_secs(3)) >= 3.0);
        assert!(h.ok(), "answering again after failing");
        assert!(!h.ok());
    }
}
