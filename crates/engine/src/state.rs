//! One core's private state, shared by its tasks: snapshot copy, load-balancing cursors, per-endpoint
//! connection counts, the pipe pool, the readiness set, the hook and its verdict cache, labelled counters.
//! Lives in an `Rc` on its core; nothing here crosses threads.

use crate::hook::{ConnectionHook, HookDecision, HOOK_CACHE_MAX, HOOK_FAILURE_REPEAT};
use crate::pipes::PipePool;
use crate::poller::Poller;
use crate::probe::HealthView;
use crate::stats::{CoreStats, Labelled};
use crate::{Shared, Snapshot};
use meshgate_route::LbState;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Scratch buffer for reading ClientHello bytes, per core.
const SCRATCH: usize = 16 * 1024;

/// This core's private state. Lives in an `Rc`: never crosses threads.
pub(crate) struct Core {
    pub(crate) index: usize,
    shared: Arc<Shared>,
    stats: Arc<[CoreStats]>,
    snapshot: RefCell<Arc<Snapshot>>,
    generation: Cell<u64>,
    health: RefCell<Arc<HealthView>>,
    health_generation: Cell<u64>,
    pub(crate) lb: RefCell<LbState>,
    endpoint_active: RefCell<HashMap<SocketAddr, u32>>,
    pub(crate) pipes: PipePool,
    pub(crate) scratch: RefCell<Vec<u8>>,
    labelled: RefCell<Labelled>,
    labelled_dirty: Cell<bool>,
    pub(crate) live: Cell<usize>,
    hook: RefCell<Option<Box<dyn ConnectionHook>>>,
    /// The `Shared::hook_generation` this core's hook was made for.
    hook_generation: Cell<u64>,
    hook_cache: RefCell<HashMap<String, HookDecision>>,
    /// Names whose last hook call failed: how many more connections `on_failure` decides without a call.
    hook_failed: RefCell<HashMap<String, u32>>,
    /// Readiness of relayed sockets; `None` if the epoll set could not be made (glommio polls instead).
    poller: Option<Rc<Poller>>,
}

impl Core {
    /// Core `index`'s state, with the snapshot in force now and, if it can be made, a readiness set.
    pub(crate) fn new(
        index: usize,
        shared: Arc<Shared>,
        stats: Arc<[CoreStats]>,
        hook: Option<Box<dyn ConnectionHook>>,
    ) -> Core {
        let snapshot = shared.snapshot.load_full();
        let generation = shared.generation.load(Ordering::Acquire);
        let health_generation = shared.health_generation.load(Ordering::Acquire);
        let health = shared.health.load_full();
        let hook_generation = shared.hook_generation.load(Ordering::Acquire);
        let pipe_pool = shared.pipe_pool;
        Core {
            index,
            shared,
            stats,
            lb: RefCell::new(LbState::new(
                snapshot.table.len(),
                0x9e37_79b9_7f4a_7c15 ^ (index as u64 + 1),
            )),
            snapshot: RefCell::new(snapshot),
            generation: Cell::new(generation),
            health: RefCell::new(health),
            health_generation: Cell::new(health_generation),
            endpoint_active: RefCell::new(HashMap::new()),
            pipes: PipePool::with_cap(pipe_pool),
            scratch: RefCell::new(vec![0; SCRATCH]),
            labelled: RefCell::new(Labelled::default()),
            labelled_dirty: Cell::new(false),
            live: Cell::new(0),
            hook: RefCell::new(hook),
            hook_generation: Cell::new(hook_generation),
            hook_cache: RefCell::new(HashMap::new()),
            hook_failed: RefCell::new(HashMap::new()),
            poller: match Poller::new() {
                Ok(p) => Some(Rc::new(p)),
                Err(e) => {
                    tracing::warn!(core = index, error = %e, "no epoll set; relayed sockets are polled through io_uring");
                    None
                }
            },
        }
    }

    /// Starts serving the readiness set for the executor's life (see [`Poller::start`]); `None`
    /// without a set.
    pub(crate) fn start_poller(&self) -> Option<crate::poller::Waiting> {
        self.poller.as_ref().map(Poller::start)
    }

    pub(crate) fn poller(&self) -> Option<&Poller> {
        self.poller.as_deref()
    }

    /// The cores' connection counts and inboxes, when connections are balanced over several cores.
    pub(crate) fn balance(&self) -> Option<&crate::balance::Balance> {
        self.shared.balance.as_ref()
    }

    pub(crate) fn stats(&self) -> &CoreStats {
        &self.stats[self.index]
    }

    /// The snapshot for a new connection: refreshed when the control plane has published a newer one.
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        let generation = self.shared.generation.load(Ordering::Acquire);
        if generation != self.generation.get() {
            let fresh = self.shared.snapshot.load_full();
            self.lb.borrow_mut().reset(fresh.table.len());
            // Cached hook verdicts were given against the old table.
            self.hook_cache.borrow_mut().clear();
            *self.snapshot.borrow_mut() = fresh;
            self.generation.set(generation);
        }
        self.snapshot.borrow().clone()
    }

    /// The probes' liveness view for a connection to a probed route: refreshed when the prober has
    /// published a newer one (one atomic load otherwise).
    pub(crate) fn health(&self) -> Arc<HealthView> {
        let generation = self.shared.health_generation.load(Ordering::Acquire);
        if generation != self.health_generation.get() {
            *self.health.borrow_mut() = self.shared.health.load_full();
            self.health_generation.set(generation);
        }
        self.health.borrow().clone()
    }

    /// The hook's decision for a connection (`None`: no hook). A failed call decides what the hook's
    /// `on_failure` says, and is counted.
    pub(crate) fn hook_decide(
        &self,
        sni: Option<&str>,
        alpn: &[Vec<u8>],
        peer: Option<SocketAddr>,
    ) -> Option<HookDecision> {
        self.swap_hook_if_replaced();
        let mut hook = self.hook.borrow_mut();
        let hook = hook.as_mut()?;
        let stats = self.stats();
        if let Some(name) = sni {
            if let Some(d) = self.hook_cache.borrow().get(name) {
                stats.hook_cache_hits.inc();
                return Some(d.clone());
            }
            let mut failed = self.hook_failed.borrow_mut();
            if let Some(left) = failed.get_mut(name) {
                if *left > 0 {
                    *left -= 1;
                    stats.hook_cache_hits.inc();
                    return Some(hook.on_failure());
                }
                failed.remove(name);
            }
        }
        stats.hook_calls.inc();
        match hook.decide(sni, alpn, peer) {
            Ok(v) => {
                if let (true, Some(name)) = (v.cacheable, sni) {
                    let mut cache = self.hook_cache.borrow_mut();
                    if cache.len() >= HOOK_CACHE_MAX {
                        cache.clear();
                    }
                    cache.insert(name.to_owned(), v.decision.clone());
                }
                Some(v.decision)
            }
            Err(e) => {
                stats.hook_failures.inc();
                let decision = hook.on_failure();
                tracing::debug!(error = %e, ?decision, "connection hook failed");
                if let Some(name) = sni {
                    let mut failed = self.hook_failed.borrow_mut();
                    if failed.len() >= HOOK_CACHE_MAX {
                        failed.clear();
                    }
                    failed.insert(name.to_owned(), HOOK_FAILURE_REPEAT);
                }
                Some(decision)
            }
        }
    }

    /// Makes this core's instance of a hook the control plane replaced (one atomic load otherwise).
    fn swap_hook_if_replaced(&self) {
        let generation = self.shared.hook_generation.load(Ordering::Acquire);
        if generation == self.hook_generation.get() {
            return;
        }
        self.hook_generation.set(generation);
        let made = match &self.shared.hook.load_full().0 {
            None => Ok(None),
            Some(make) => make(self.index).map(Some),
        };
        match made {
            Ok(hook) => {
                tracing::info!(
                    core = self.index,
                    hook = hook.is_some(),
                    "connection hook replaced"
                );
                *self.hook.borrow_mut() = hook;
                self.hook_cache.borrow_mut().clear();
                self.hook_failed.borrow_mut().clear();
            }
            Err(e) => {
                tracing::error!(core = self.index, error = %e, "the new connection hook cannot be made on this core; the old one stays");
            }
        }
    }

    /// Open connections from this core to `addr`.
    pub(crate) fn active_to(&self, addr: &SocketAddr) -> u32 {
        self.endpoint_active
            .borrow()
            .get(addr)
            .copied()
            .unwrap_or(0)
    }

    pub(crate) fn endpoint_opened(&self, addr: SocketAddr) {
        *self.endpoint_active.borrow_mut().entry(addr).or_insert(0) += 1;
    }

    pub(crate) fn endpoint_closed(&self, addr: SocketAddr) {
        let mut map = self.endpoint_active.borrow_mut();
        if let Some(n) = map.get_mut(&addr) {
            *n -= 1;
            if *n == 0 {
                map.remove(&addr);
            }
        }
    }

    /// Counts a routed connection per route and per Consul destination (capped label sets).
    pub(crate) fn count_routed(&self, route: &str, sni: Option<&str>) {
        self.labelled.borrow_mut().count_routed(route, sni);
        self.labelled_dirty.set(true);
    }

    /// Hands the labelled counts to the scraper, if they changed since the last time.
    pub(crate) fn publish_labelled(&self) {
        if self.labelled_dirty.replace(false) {
            let copy = self.labelled.borrow().clone();
            self.stats().labelled.store(Arc::new(copy));
        }
    }
}
