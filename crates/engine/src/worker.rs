//! One core: its listeners, its accept loops and connection limits, its private state (snapshot copy,
//! load-balancing cursors, per-endpoint connection counts, pipe pool, labelled counters), and its drain.

use crate::hook::{ConnectionHook, HookDecision, HookFactory, HOOK_CACHE_MAX};
use crate::poller::Poller;
use crate::stats::{CoreStats, Labelled, MAX_LABEL_VALUES};
use crate::sys::{self, Pipe};
use crate::{EngineError, Shared, Snapshot};
use glommio::sync::Semaphore;
use glommio::timer::Timer;
use meshgate_route::LbState;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a core looks at the shutdown flag and republishes labelled counters.
const TICK: Duration = Duration::from_millis(50);
/// Labelled counters are republished (when changed) every this many ticks (200 ms).
const PUBLISH_EVERY_TICKS: u32 = 4;
/// First pause when accept fails for lack of file descriptors; doubles up to [`MAX_ACCEPT_BACKOFF`].
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// Longest pause between accept attempts while out of file descriptors.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// Pipes kept for reuse per core. Connections lease a pipe only while bytes are in flight, so this bounds
/// the pipes kept around after a burst, not the connections served.
const PIPE_POOL_MAX: usize = 1024;
/// Capacity asked for each pipe, in bytes (the kernel default is 64 KiB; 256 KiB moves bulk data in
/// fewer splice calls).
pub(crate) const PIPE_SIZE: usize = 64 * 1024;
/// Scratch buffer for reading ClientHello bytes, per core.
const SCRATCH: usize = 16 * 1024;

/// This core's private state. Lives in an `Rc`: never crosses threads.
pub(crate) struct Core {
    pub(crate) index: usize,
    shared: Arc<Shared>,
    stats: Arc<[CoreStats]>,
    snapshot: RefCell<Arc<Snapshot>>,
    generation: Cell<u64>,
    pub(crate) lb: RefCell<LbState>,
    endpoint_active: RefCell<HashMap<SocketAddr, u32>>,
    pipes: RefCell<Vec<Pipe>>,
    pub(crate) scratch: RefCell<Vec<u8>>,
    labelled: RefCell<Labelled>,
    labelled_dirty: Cell<bool>,
    pub(crate) live: Cell<usize>,
    hook: RefCell<Option<Box<dyn ConnectionHook>>>,
    hook_cache: RefCell<HashMap<String, HookDecision>>,
    /// Readiness of relayed sockets; `None` if the epoll set could not be made (glommio polls instead).
    poller: Option<Rc<Poller>>,
}

impl Core {
    pub(crate) fn poller(&self) -> Option<&Poller> {
        self.poller.as_deref()
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

    /// The hook's decision for a connection (`None`: no hook, or it failed: use the table).
    pub(crate) fn hook_decide(
        &self,
        sni: Option<&str>,
        alpn: &[Vec<u8>],
        peer: Option<SocketAddr>,
    ) -> Option<HookDecision> {
        let mut hook = self.hook.borrow_mut();
        let hook = hook.as_mut()?;
        let stats = self.stats();
        if let Some(name) = sni {
            if let Some(d) = self.hook_cache.borrow().get(name) {
                stats.hook_cache_hits.inc();
                return Some(d.clone());
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
                tracing::debug!(error = %e, "connection hook failed; the table decides");
                None
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

    /// A pipe from the pool, or a new one.
    pub(crate) fn take_pipe(&self) -> io::Result<Pipe> {
        match self.pipes.borrow_mut().pop() {
            Some(p) => Ok(p),
            None => sys::pipe(PIPE_SIZE),
        }
    }

    /// Returns a pipe known to be empty (its last splice drained it) to the pool.
    pub(crate) fn give_empty_pipe(&self, pipe: Pipe) {
        let mut pool = self.pipes.borrow_mut();
        if pool.len() < PIPE_POOL_MAX {
            pool.push(pipe);
        }
    }

    /// Returns a pipe to the pool if it is empty; a pipe with bytes left in it is closed.
    pub(crate) fn give_pipe(&self, pipe: Pipe) {
        let empty = matches!(
            sys::pipe_pending(std::os::fd::AsFd::as_fd(&pipe.read)),
            Ok(0)
        );
        let mut pool = self.pipes.borrow_mut();
        if empty && pool.len() < PIPE_POOL_MAX {
            pool.push(pipe);
        }
    }

    /// Counts a routed connection per route and per Consul destination (capped label sets).
    pub(crate) fn count_routed(&self, route: &str, sni: Option<&str>) {
        let mut l = self.labelled.borrow_mut();
        bump(&mut l.routes, route);
        if let Some((svc, ns, dc)) = sni.and_then(crate::stats::consul_destination) {
            let key = (svc.to_owned(), ns.to_owned(), dc.to_owned());
            if l.destinations.len() < MAX_LABEL_VALUES || l.destinations.contains_key(&key) {
                *l.destinations.entry(key).or_insert(0) += 1;
            } else {
                let other = ("other".to_owned(), "other".to_owned(), "other".to_owned());
                *l.destinations.entry(other).or_insert(0) += 1;
            }
        }
        self.labelled_dirty.set(true);
    }

    fn publish_labelled(&self) {
        if self.labelled_dirty.replace(false) {
            let copy = self.labelled.borrow().clone();
            self.stats().labelled.store(Arc::new(copy));
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

/// The body of one core's executor.
pub(crate) async fn run(
    index: usize,
    shared: Arc<Shared>,
    stats: Arc<[CoreStats]>,
    addrs: Vec<SocketAddr>,
    backlog: u32,
    ready: Sender<Result<(), EngineError>>,
    hook: Option<HookFactory>,
) {
    let hook = hook.and_then(|make| {
        let h = make(index);
        if h.is_none() {
            tracing::warn!(
                core = index,
                "connection hook unavailable on this core; routing by the table"
            );
        }
        h
    });
    let snapshot = shared.snapshot.load_full();
    let settings = snapshot.settings.clone();
    let generation = shared.generation.load(Ordering::Acquire);
    let workers = stats.len() as u64;
    let core = Rc::new(Core {
        index,
        shared: shared.clone(),
        stats,
        lb: RefCell::new(LbState::new(
            snapshot.table.len(),
            0x9e37_79b9_7f4a_7c15 ^ (index as u64 + 1),
        )),
        snapshot: RefCell::new(snapshot),
        generation: Cell::new(generation),
        endpoint_active: RefCell::new(HashMap::new()),
        pipes: RefCell::new(Vec::new()),
        scratch: RefCell::new(vec![0; SCRATCH]),
        labelled: RefCell::new(Labelled::default()),
        labelled_dirty: Cell::new(false),
        live: Cell::new(0),
        hook: RefCell::new(hook),
        hook_cache: RefCell::new(HashMap::new()),
        poller: match Poller::new() {
            Ok(p) => Some(Rc::new(p)),
            Err(e) => {
                tracing::warn!(core = index, error = %e, "no epoll set; relayed sockets are polled through io_uring");
                None
            }
        },
    });
    // Lives as long as the executor: dropped with it when the core's run ends.
    if let Some(p) = &core.poller {
        glommio::spawn_local(p.clone().drive()).detach();
    }

    let mut listeners = Vec::with_capacity(addrs.len());
    for &addr in &addrs {
        match sys::listen_raw(addr, backlog, true) {
            Ok(l) => listeners.push(l),
            Err(source) => {
                let _ = ready.send(Err(EngineError::Listen { addr, source }));
                shared.exited.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
    // Limits are split evenly per core: no shared counter on the accept path.
    let per_core = |total: u32| u64::from(total).div_ceil(workers).max(1);
    let global = Rc::new(Semaphore::new(per_core(settings.max_connections)));
    shared.listening.fetch_add(1, Ordering::Relaxed);
    let _ = ready.send(Ok(()));
    tracing::debug!(core = index, listeners = addrs.len(), "core listening");

    let accepting: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(li, listener)| {
            let limit = (settings.max_connections_per_listener > 0).then(|| {
                Rc::new(Semaphore::new(per_core(
                    settings.max_connections_per_listener,
                )))
            });
            glommio::spawn_local(accept_loop(
                core.clone(),
                listener,
                li,
                global.clone(),
                limit,
            ))
        })
        .collect();

    // Tick until shutdown: republish labelled counters meanwhile.
    let mut ticks = 0u32;
    while !shared.shutdown.load(Ordering::Relaxed) {
        Timer::new(TICK).await;
        ticks += 1;
        if ticks % PUBLISH_EVERY_TICKS == 0 {
            core.publish_labelled();
        }
    }
    shared.listening.fetch_sub(1, Ordering::Relaxed);
    // Stop accepting: cancelling the accept loops drops (closes) the listeners.
    for task in accepting {
        task.cancel().await;
    }
    let drain = core.snapshot().settings.drain_timeout();
    let deadline = Instant::now() + drain;
    tracing::info!(
        core = index,
        live = core.live.get(),
        drain_secs = drain.as_secs(),
        "draining"
    );
    while core.live.get() > 0 && Instant::now() < deadline {
        Timer::new(TICK.min(deadline.saturating_duration_since(Instant::now()))).await;
        ticks += 1;
        if ticks % PUBLISH_EVERY_TICKS == 0 {
            core.publish_labelled();
        }
    }
    core.publish_labelled();
    if core.live.get() > 0 {
        tracing::warn!(
            core = index,
            live = core.live.get(),
            "drain timeout: closing remaining connections"
        );
    }
    shared.exited.fetch_add(1, Ordering::Relaxed);
}

async fn accept_loop(
    core: Rc<Core>,
    listener: std::os::fd::OwnedFd,
    li: usize,
    global: Rc<Semaphore>,
    per_listener: Option<Rc<Semaphore>>,
) {
    let listener = crate::poller::Side::new(&core, listener);
    let mut backoff = MIN_ACCEPT_BACKOFF;
    loop {
        // Take the permits before accepting: over the limit, connections wait in the kernel backlog and
        // live ones are never evicted.
        let Ok(global_permit) = global.acquire_static_permit(1).await else {
            return;
        };
        let listener_permit = match &per_listener {
            Some(s) => match s.acquire_static_permit(1).await {
                Ok(p) => Some(p),
                Err(_) => return,
            },
            None => None,
        };
        let accepted = loop {
            match sys::accept(listener.fd()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = listener.readable().await {
                        break Err(e);
                    }
                }
                // The client gave up while queued, or a signal: take the next one.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ECONNABORTED | libc::EINTR)) => {}
                other => break other,
            }
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = MIN_ACCEPT_BACKOFF;
                let core = core.clone();
                glommio::spawn_local(async move {
                    crate::conn::handle(&core, stream, peer, li).await;
                    drop((global_permit, listener_permit));
                })
                .detach();
            }
            Err(e) => {
                let stats = core.stats();
                match e.raw_os_error() {
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                        stats.accept_backoffs.inc();
                        tracing::warn!(error = %e, pause_ms = backoff.as_millis() as u64, "accept: out of resources, pausing");
                        Timer::new(backoff).await;
                        backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                    }
                    _ => {
                        stats.accept_errors.inc();
                        tracing::debug!(error = %e, "accept failed");
                    }
                }
            }
        }
    }
}
