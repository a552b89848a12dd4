//! meshgate's data plane: accept mesh connections, read the SNI without decrypting, pick an upstream from
//! the route table, and relay raw bytes both ways with zero copies.
//!
//! # Shape
//! - One glommio executor per core, pinned, each with its **own SO_REUSEPORT listener** on every listen
//!   address; the kernel spreads connections. A connection lives and dies on the core that accepted it.
//! - Nothing on the per-connection path is shared between cores: load-balancing state, per-endpoint
//!   connection counts, pipe pools and counters are per core. The only cross-core read is one relaxed
//!   atomic load per connection to notice a new route-table snapshot ([`Engine::install`]).
//! - Relay: `splice(2)` socket → pipe → socket (pipes pooled per core); a buffered copy where no pipe can
//!   be made, or when configured.
//! - Readiness: a core's sockets (listeners, accepted and upstream connections) sit in one epoll set per
//!   core, itself waited on through a single io_uring poll (`poller`); accept is `accept4` drained while
//!   the listener is readable, connect is non-blocking. glommio runs the tasks and timers.
//! - glommio locks memory for io_uring buffers per executor; TCP does not use them, so `io_memory_kib`
//!   defaults to glommio's minimum (512 KiB) and [`Engine::start`] raises `RLIMIT_MEMLOCK` to fit.
//!
//! # Non-goals
//! No TLS termination, no private keys, no L7: the gateway never sees plaintext.
//!
//! The control plane (config reloads, plugins, admin HTTP) lives outside this crate and talks to it only
//! through [`Engine`].
//!
//! # Modules
//! Each module uses only those below it (a DAG; no module reaches back up):
//!
//! ```text
//! lib (Engine, Shared, Snapshot)
//!  └─ worker      one core's run: listeners, accept loops, limits, tick, drain
//!      └─ conn    one connection: hello, hook, route, connect, forward, access log
//!          ├─ state   one core's private state (Core): snapshot copy, LB cursors, endpoint counts,
//!          │          pipe pool, readiness set, hook cache, labelled counters
//!          └─ relay   bytes both ways between two sockets; takes pipes, counters, idle and deadline
//!              ├─ pipes    the per-core splice pipe pool and its leases
//!              ├─ poller   readiness of a core's sockets (epoll set behind one io_uring poll), Side
//!              ├─ cores    the runtime shared with the sidecar: CorePlan, Lifecycle, drain, accept
//!              │           backoff, idle watch, within, reset_on_close
//!              └─ stats    per-core counters, typed outcomes, metric families, the scrape
//! hook (the per-connection policy trait), sys (every system call and all `unsafe`) sit at the bottom;
//! every module may use them. probe (the remote gateways' health: its own thread, publishing a
//! liveness view the way tables are published) sits beside worker and uses only route and config.
//! ```

mod balance;
pub mod budget;
mod conn;
pub mod cores;
pub mod hook;
mod pipes;
mod poller;
pub mod probe;

mod relay;
mod state;
pub mod stats;
mod sys;
mod worker;

use arc_swap::ArcSwap;
use meshgate_config::GatewaySettings;
use meshgate_route::RouteTable;
use stats::{ControlStats, CoreStats, EngineMetrics};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use thiserror::Error;

/// What the cores route with: a table and the settings that apply to new connections. Immutable; a
/// reload publishes a new one.
#[derive(Debug)]
pub struct Snapshot {
    /// The route table.
    pub table: RouteTable,
    /// Timeouts and limits for new connections.
    pub settings: GatewaySettings,
    /// Per route id: whether its plan consults the probes' liveness view (see [`probe::probed_routes`]).
    pub probed: Vec<bool>,
}

impl Snapshot {
    fn new(table: RouteTable, settings: GatewaySettings, targets: &[probe::Target]) -> Snapshot {
        let probed = probe::probed_routes(&table, targets);
        Snapshot {
            table,
            settings,
            probed,
        }
    }

    /// Whether route `id`'s plan consults liveness.
    pub fn is_probed(&self, id: meshgate_route::RouteId) -> bool {
        self.probed.get(id).copied().unwrap_or(false)
    }
}

/// State shared by the cores and the control plane. Cores only read it.
#[derive(Debug)]
pub(crate) struct Shared {
    snapshot: ArcSwap<Snapshot>,
    /// Bumped after each new snapshot; cores compare it with their own copy per connection.
    generation: AtomicU64,
    life: cores::Lifecycle,
    /// Set by [`Engine::stop_ready`]: readiness is 503 while the listeners still accept.
    unready: std::sync::atomic::AtomicBool,
    /// Splice pipes each core may hold, leased and idle (from the descriptor budget).
    pipe_pool: usize,
    /// The probes' liveness view of remote gateways; replaced whole by the prober thread.
    health: ArcSwap<probe::HealthView>,
    /// Bumped after each new view; cores compare it with their own copy per probed connection.
    health_generation: AtomicU64,
    /// The hook factory in force (`None`: no hook), replaced by [`Engine::set_hook`].
    hook: ArcSwap<hook::Installed>,
    /// Bumped after each [`Engine::set_hook`]; a core makes its new instance at its next connection.
    hook_generation: AtomicU64,
    /// The cores' connection counts and hand-over inboxes (`[gateway] balance = "connections"` with
    /// more than one core).
    balance: Option<balance::Balance>,
}

/// The engine could not start or failed while running.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EngineError {
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// An executor could not be created (often: locked-memory limit too low).
    #[error("cannot start core {core}: {message}")]
    Executor {
        /// Core index.
        core: usize,
        /// glommio's message.
        message: String,
    },
    /// A core thread panicked or failed.
    #[error("core {0} failed: {1}")]
    Core(usize, String),
    /// The descriptor limit cannot be read, or leaves no room for connections.
    #[error("{0}")]
    Descriptors(String),
    /// The connection hook could not be made on a core.
    #[error("[hook] cannot load on core {core}: {message}")]
    Hook {
        /// Core index.
        core: usize,
        /// Why.
        message: String,
    },
    /// The prober thread could not be started.
    #[error("cannot start the remote-gateway prober: {0}")]
    Prober(std::io::Error),
    /// This process cannot run executors (io_uring or locked-memory limit).
    #[error(transparent)]
    Cores(#[from] cores::CoreError),
}

/// A running data plane.
#[derive(Debug)]
pub struct Engine {
    shared: Arc<Shared>,
    metrics: EngineMetrics,
    workers: usize,
    handles: Vec<glommio::ExecutorJoinHandle<()>>,
    prober: probe::Prober,
}

impl Engine {
    /// Starts one executor per worker, binds every listener on every core, and returns once all cores
    /// listen (or the first error).
    pub fn start(settings: GatewaySettings, table: RouteTable) -> Result<Engine, EngineError> {
        Self::start_with_hook(settings, table, None)
    }

    /// Like [`Engine::start`], with a per-connection hook on every core.
    pub fn start_with_hook(
        mut settings: GatewaySettings,
        table: RouteTable,
        hook: Option<hook::HookFactory>,
    ) -> Result<Engine, EngineError> {
        let plan = cores::CorePlan::new(settings.workers, settings.io_memory_kib * 1024)?;
        let workers = plan.workers();
        let nofile = sys::raise_nofile().map_err(|e| EngineError::Descriptors(e.to_string()))?;
        let fit = budget::budget(
            settings.max_connections,
            workers,
            settings.relay,
            nofile,
            settings.control_fds,
        )
        .map_err(EngineError::Descriptors)?;
        if fit.lowered {
            let message = "max_connections lowered to what the descriptor limit allows; excess connections wait in the backlog (raise RLIMIT_NOFILE to serve more)";
            // The default asks for more than most hosts allow: say so quietly; a configured limit loudly.
            if settings.max_connections == meshgate_config::DEFAULT_MAX_CONNECTIONS {
                tracing::info!(
                    configured = settings.max_connections,
                    serving = fit.max_connections,
                    rlimit_nofile = nofile,
                    pipes_per_core = fit.pipes_per_core,
                    "{message}"
                );
            } else {
                tracing::warn!(
                    configured = settings.max_connections,
                    serving = fit.max_connections,
                    rlimit_nofile = nofile,
                    pipes_per_core = fit.pipes_per_core,
                    "{message}"
                );
            }
        }
        settings.max_connections = fit.max_connections;
        let listeners: Arc<[String]> = settings.listen.iter().map(|a| a.to_string()).collect();
        let cores: Arc<[CoreStats]> = (0..workers)
            .map(|_| CoreStats::new(settings.listen.len()))
            .collect();
        let control = Arc::new(ControlStats::default());
        control.routes.store(table.len() as u64, Ordering::Relaxed);
        control
            .connection_limit
            .store(u64::from(settings.max_connections), Ordering::Relaxed);
        let targets = probe::targets(&table, &settings.datacenter);
        let (balance, mut inboxes) =
            match (settings.balance == meshgate_config::Balance::Connections && workers > 1)
                .then(|| {
                    // A core's share of the limit, less the permit each accept loop holds while
                    // it waits.
                    let share = worker::core_share(settings.max_connections, workers);
                    let share = usize::try_from(share).unwrap_or(usize::MAX);
                    balance::Balance::new(workers, share.saturating_sub(settings.listen.len()))
                })
                .transpose()
            {
                Ok(Some((b, inboxes))) => (Some(b), inboxes),
                Ok(None) => (None, Vec::new()),
                Err(e) => {
                    return Err(EngineError::Descriptors(format!(
                        "cannot make the cores' hand-over inboxes: {e}"
                    )))
                }
            };
        // Taken from the back, one per core in reverse order.
        inboxes.reverse();
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(Snapshot::new(table, settings.clone(), &targets)),
            generation: AtomicU64::new(0),
            life: cores::Lifecycle::new(workers),
            unready: std::sync::atomic::AtomicBool::new(false),
            pipe_pool: fit.pipes_per_core,
            health: ArcSwap::from_pointee(probe::HealthView::default()),
            health_generation: AtomicU64::new(0),
            hook: ArcSwap::from_pointee(hook::Installed(hook.clone())),
            hook_generation: AtomicU64::new(0),
            balance,
        });
        let metrics = EngineMetrics {
            cores,
            listeners,
            control,
            probes: Arc::default(),
        };
        let to_cores = Arc::downgrade(&shared);
        let prober = probe::Prober::start(
            Box::new(move |view| {
                if let Some(shared) = to_cores.upgrade() {
                    shared.health.store(Arc::new(view));
                    shared.health_generation.fetch_add(1, Ordering::Release);
                }
            }),
            metrics.probes.clone(),
        )
        .map_err(EngineError::Prober)?;
        prober.configure(targets, settings.probe.clone());
        let (tx, rx) = std::sync::mpsc::channel::<Result<(), EngineError>>();
        let mut handles = Vec::with_capacity(workers);
        for core in 0..workers {
            let shared = shared.clone();
            let stats = metrics.cores.clone();
            let start = worker::Start {
                index: core,
                addrs: settings.listen.clone(),
                backlog: settings.backlog,
                ready: tx.clone(),
                hook: hook.clone(),
                inbox: inboxes.pop(),
            };
            let handle = plan
                .spawn(core, "meshgate-core", move || {
                    worker::run(shared, stats, start)
                })
                .map_err(|message| EngineError::Executor { core, message })?;
            handles.push(handle);
        }
        drop(tx);
        let engine = Engine {
            shared,
            metrics,
            workers,
            handles,
            prober,
        };
        for _ in 0..workers {
            match rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    engine.shutdown();
                    let _ = engine.wait();
                    return Err(e);
                }
                Err(_) => {
                    // A core ended without reporting: glommio's own error is in its join handle.
                    engine.shutdown();
                    let why = engine
                        .handles
                        .into_iter()
                        .enumerate()
                        .find_map(|(core, h)| h.join().err().map(|e| (core, e.to_string())));
                    let (core, message) = why.unwrap_or((0, "core exited during start-up".into()));
                    return Err(EngineError::Core(core, message));
                }
            }
        }
        Ok(engine)
    }

    /// Publishes a new table and settings; connections accepted from now on use them, live ones keep
    /// the snapshot they started with.
    pub fn install(&self, table: RouteTable, settings: GatewaySettings) {
        self.metrics
            .control
            .routes
            .store(table.len() as u64, Ordering::Relaxed);
        let targets = probe::targets(&table, &settings.datacenter);
        let probe_settings = settings.probe.clone();
        self.shared
            .snapshot
            .store(Arc::new(Snapshot::new(table, settings, &targets)));
        self.shared.generation.fetch_add(1, Ordering::Release);
        self.prober.configure(targets, probe_settings);
    }

    /// Replaces the connection hook (SIGHUP with a changed `[hook]` or hook file; `None` removes it).
    /// Each core makes its own instance from `hook` at its next connection, on its own thread, and
    /// drops the old one and its cached verdicts; live connections are not affected. A core that cannot
    /// make the new instance keeps its old hook and says so in the log: the caller has made and
    /// configured one instance already, so this is a resource failure, not a bad plugin.
    pub fn set_hook(&self, hook: Option<hook::HookFactory>) {
        self.shared.hook.store(Arc::new(hook::Installed(hook)));
        self.shared.hook_generation.fetch_add(1, Ordering::Release);
    }

    /// The snapshot in force.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.load_full()
    }

    /// True while every core listens and the engine is not draining (nor about to).
    pub fn ready(&self) -> bool {
        self.shared.life.all_listening() && !self.shared.unready.load(Ordering::Relaxed)
    }

    /// Metrics view (cheap to clone, summed at scrape).
    pub fn metrics(&self) -> EngineMetrics {
        self.metrics.clone()
    }

    /// Number of data-plane cores.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The first step of a graceful shutdown: readiness turns 503 (and `meshgate_draining` 1) while
    /// the listeners keep accepting, so load balancers and peers stop choosing this gateway before
    /// connections already queued in the kernel would be reset by closing the listeners.
    pub fn stop_ready(&self) {
        self.metrics.control.draining.store(true, Ordering::Relaxed);
        self.shared.unready.store(true, Ordering::Relaxed);
    }

    /// Begins a graceful shutdown: listeners close, live connections get the drain timeout.
    pub fn shutdown(&self) {
        self.metrics.control.draining.store(true, Ordering::Relaxed);
        self.shared.life.shutdown();
    }

    /// True once every core has finished (after [`Engine::shutdown`]).
    pub fn finished(&self) -> bool {
        self.shared.life.finished()
    }

    /// Waits for every core to finish.
    pub fn wait(self) -> Result<(), EngineError> {
        for (core, handle) in self.handles.into_iter().enumerate() {
            handle
                .join()
                .map_err(|e| EngineError::Core(core, e.to_string()))?;
        }
        Ok(())
    }
}
