//! What one core counts ([`CoreStats`]) and what the control thread sets ([`ControlStats`]).

use super::counter::{Counter, Histogram, DURATION_BUCKETS, HELLO_SIZE_BUCKETS};
use super::outcome::{End, HelloOutcome};
use arc_swap::ArcSwap;
use meshgate_mesh::names::SniName;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};

/// Most distinct label values kept per core for `route` and for Consul destinations; the rest are
/// counted under `other`, so a flood of names cannot blow up a scrape.
pub const MAX_LABEL_VALUES: usize = 1_000;
/// Of those, most destinations named through a wildcard route (`*.dc2.internal.…`), where the client
/// picks the name: junk names fill this share only, never the one of names the table lists exactly.
pub const MAX_WILDCARD_DESTINATIONS: usize = 200;

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
    /// How many of `destinations` came through wildcard routes.
    wildcard_destinations: usize,
}

impl Labelled {
    /// Counts a connection routed by `route`, and by Consul destination when the SNI names a Consul
    /// service (meshgate-mesh's parser; subsets count for their service). Label sets are capped at
    /// [`MAX_LABEL_VALUES`], names under a wildcard route at [`MAX_WILDCARD_DESTINATIONS`]; the rest
    /// are counted under `other` (in their datacenter, which the wildcard fixes).
    pub fn count_routed(&mut self, route: &str, sni: Option<&str>) {
        bump(&mut self.routes, route);
        if let Some(SniName::Service {
            service,
            namespace,
            datacenter,
            ..
        }) = sni.and_then(SniName::parse)
        {
            let wildcard = route.starts_with("*.");
            let key = (service, namespace, datacenter);
            if let Some(v) = self.destinations.get_mut(&key) {
                *v += 1;
                return;
            }
            let room = self.destinations.len() < MAX_LABEL_VALUES
                && (!wildcard || self.wildcard_destinations < MAX_WILDCARD_DESTINATIONS);
            if room {
                self.wildcard_destinations += usize::from(wildcard);
                self.destinations.insert(key, 1);
            } else {
                let other = ("other".to_owned(), "other".to_owned(), key.2);
                *self.destinations.entry(other).or_insert(0) += 1;
            }
        }
    }
}

fn bump(map: &mut HashMap<String, u64>, key: &str) {
    if let Some(v) = map.get_mut(key) {
        *v += 1;
    } else if map.len() < MAX_LABEL_VALUES {
        map.insert(key.to_owned(), 1);
    } else {
        *map.entry("other".to_owned()).or_insert(0) += 1;
    }
}

/// Everything one core counts. Aligned so two cores' stats never share a cache line.
#[derive(Debug)]
#[repr(align(128))]
pub struct CoreStats {
    /// Per listener, in the order of `gateway.listen`.
    pub listeners: Box<[ListenerStats]>,
    /// ClientHello outcomes, indexed by [`HelloOutcome::index`].
    pub hello: [Counter; HelloOutcome::ALL.len()],
    /// ClientHello sizes.
    pub hello_size: Histogram,
    /// Upstream connect attempts.
    pub connect_attempts: Counter,
    /// Upstream connect failures (refused, unreachable, timed out).
    pub connect_failures: Counter,
    /// Upstream connect timeouts (also counted as failures).
    pub connect_timeouts: Counter,
    /// Connections refused with no connect attempt because every endpoint of their route was known
    /// down (the probes' verdict).
    pub known_down: Counter,
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
    /// Connections this core accepted and handed to a core serving fewer (`[gateway] balance`).
    pub handed_over: Counter,
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
            known_down: Counter::default(),
            bytes_to_upstream: Counter::default(),
            bytes_to_downstream: Counter::default(),
            duration: Histogram::new(&DURATION_BUCKETS),
            ended: Default::default(),
            accept_errors: Counter::default(),
            accept_backoffs: Counter::default(),
            splice_fallbacks: Counter::default(),
            handed_over: Counter::default(),
            hook_calls: Counter::default(),
            hook_failures: Counter::default(),
            hook_cache_hits: Counter::default(),
            labelled: ArcSwap::from_pointee(Labelled::default()),
        }
    }

    /// Counts a ClientHello outcome.
    pub fn hello(&self, outcome: HelloOutcome) {
        self.hello[outcome.index()].inc();
    }

    /// Counts a ClientHello outcome by label (unknown labels are ignored); [`CoreStats::hello`] is the
    /// typed form.
    pub fn hello_outcome(&self, label: &str) {
        if let Some(o) = HelloOutcome::ALL.iter().find(|o| o.label() == label) {
            self.hello(*o);
        }
    }

    /// Counts a connection end.
    pub fn end(&self, end: End) {
        self.ended[end.index()].inc();
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
    /// Connections served at once (`max_connections`, lowered to fit the descriptor limit).
    pub connection_limit: AtomicU64,
}
