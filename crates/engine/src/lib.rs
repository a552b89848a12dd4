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

mod conn;
pub mod hook;
mod poller;

/// Per-core building blocks shared with meshgate's other data planes (the sidecar).
pub mod cores {
    use crate::sys;
    pub use crate::sys::listen;
    use std::future::Future;
    use thiserror::Error;

    /// glommio refuses to create an executor when `RLIMIT_MEMLOCK` is below this (its own check).
    pub const MIN_MEMLOCK: u64 = 512 * 1024;

    /// Why no executor can start in this process. Found before any core starts, so the message says
    /// what to change instead of glommio's error from inside a core thread.
    #[derive(Debug, Error)]
    #[non_exhaustive]
    pub enum CoreError {
        /// This process may not use io_uring.
        #[error("io_uring is unavailable to this process (io_uring_setup: {source}): {hint}")]
        IoUring {
            /// What `io_uring_setup(2)` returned.
            source: std::io::Error,
            /// The likely cause and what to do about it.
            hint: String,
        },
        /// The locked-memory limit is below glommio's minimum and may not be raised.
        #[error("the locked-memory limit (RLIMIT_MEMLOCK) is {limit} bytes and cannot be raised ({source}); glommio needs at least {MIN_MEMLOCK} bytes: raise it (docker run --ulimit memlock=-1, systemd LimitMEMLOCK=infinity, ulimit -l unlimited)")]
        MemLock {
            /// The soft limit in force.
            limit: u64,
            /// Why raising it failed.
            source: std::io::Error,
        },
    }

    /// Checks that this process may create an io_uring, and if not, says why in terms an operator can
    /// act on. Container runtimes block io_uring in their default seccomp profiles (Docker since 25.0,
    /// containerd since 2.0); `kernel.io_uring_disabled` can turn it off host-wide.
    pub fn probe_io_uring() -> Result<(), CoreError> {
        let Err(source) = sys::probe_io_uring() else {
            return Ok(());
        };
        let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
            .ok()
            .and_then(|s| s.trim().parse::<u8>().ok())
            .unwrap_or(0);
        let hint = match source.raw_os_error() {
            Some(libc::EPERM) if disabled > 0 => format!(
                "the sysctl kernel.io_uring_disabled is {disabled}; set it to 0 (or, at 1, run as a member of kernel.io_uring_group)"
            ),
            Some(libc::EPERM) => "blocked, most likely by a seccomp profile: container runtimes block io_uring by default (Docker since 25.0, containerd since 2.0); run with a profile that allows io_uring_setup, io_uring_enter and io_uring_register (see docs/container.md)".to_owned(),
            Some(libc::ENOSYS) => "this kernel has no io_uring; meshgate needs Linux 5.8 or newer with CONFIG_IO_URING".to_owned(),
            Some(libc::ENOMEM) => "not enough lockable memory; raise RLIMIT_MEMLOCK (docker run --ulimit memlock=-1)".to_owned(),
            _ => "meshgate's executors run on io_uring and cannot start without it".to_owned(),
        };
        Err(CoreError::IoUring { source, hint })
    }

    /// `f`'s output, or `None` once `limit` has passed (on the current executor's timer).
    pub async fn within<T>(limit: std::time::Duration, f: impl Future<Output = T>) -> Option<T> {
        futures_lite::future::or(async { Some(f.await) }, async {
            glommio::timer::Timer::new(limit).await;
            None
        })
        .await
    }

    /// Where a data plane's executors run: one per worker, pinned round robin to the CPUs this process
    /// may use, each with `io_memory` bytes of glommio io memory.
    #[derive(Debug, Clone)]
    pub struct CorePlan {
        cpus: Vec<usize>,
        workers: usize,
        io_memory: usize,
    }

    impl CorePlan {
        /// `workers` executors (default: one per allowed CPU); checks io_uring and raises `RLIMIT_MEMLOCK`
        /// to fit them.
        pub fn new(workers: Option<usize>, io_memory: usize) -> Result<CorePlan, CoreError> {
            probe_io_uring()?;
            let cpus = sys::allowed_cpus();
            let workers = workers.unwrap_or(cpus.len()).max(1);
            // glommio locks its io memory plus ring buffers; leave room for both on every core.
            let memlock = (workers * (io_memory + 512 * 1024)) as u64;
            if let Err(source) = sys::ensure_memlock(memlock) {
                let limit = sys::memlock_limit().unwrap_or(0);
                if limit < MIN_MEMLOCK {
                    return Err(CoreError::MemLock { limit, source });
                }
                // Above glommio's floor: cores start, with less room for registered buffers.
                tracing::warn!(error = %source, limit, wanted = memlock, "could not raise RLIMIT_MEMLOCK to the wanted size");
            }
            Ok(CorePlan {
                cpus,
                workers,
                io_memory,
            })
        }

        /// How many executors.
        pub fn workers(&self) -> usize {
            self.workers
        }

        /// Starts executor `core`, named `<prefix>-<core>`, running `run`.
        pub fn spawn<G, F, T>(
            &self,
            core: usize,
            prefix: &str,
            run: G,
        ) -> Result<glommio::ExecutorJoinHandle<T>, String>
        where
            G: FnOnce() -> F + Send + 'static,
            F: Future<Output = T> + 'static,
            T: Send + 'static,
        {
            let cpu = self
                .cpus
                .get(core % self.cpus.len().max(1))
                .copied()
                .unwrap_or(0);
            glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(cpu))
                .name(&format!("{prefix}-{core}"))
                .io_memory(self.io_memory)
                .spawn(run)
                .map_err(|e| e.to_string())
        }
    }
}
mod relay;
pub mod stats;
mod sys;
mod worker;

use arc_swap::ArcSwap;
use meshgate_config::GatewaySettings;
use meshgate_route::RouteTable;
use stats::{ControlStats, CoreStats, EngineMetrics};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
}

/// State shared by the cores and the control plane. Cores only read it.
#[derive(Debug)]
pub(crate) struct Shared {
    snapshot: ArcSwap<Snapshot>,
    /// Bumped after each new snapshot; cores compare it with their own copy per connection.
    generation: AtomicU64,
    shutdown: AtomicBool,
    listening: AtomicUsize,
    exited: AtomicUsize,
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
}

impl Engine {
    /// Starts one executor per worker, binds every listener on every core, and returns once all cores
    /// listen (or the first error).
    pub fn start(settings: GatewaySettings, table: RouteTable) -> Result<Engine, EngineError> {
        Self::start_with_hook(settings, table, None)
    }

    /// Like [`Engine::start`], with a per-connection hook on every core.
    pub fn start_with_hook(
        settings: GatewaySettings,
        table: RouteTable,
        hook: Option<hook::HookFactory>,
    ) -> Result<Engine, EngineError> {
        let plan = cores::CorePlan::new(settings.workers, settings.io_memory_kib * 1024)?;
        let workers = plan.workers();
        let listeners: Arc<[String]> = settings.listen.iter().map(|a| a.to_string()).collect();
        let cores: Arc<[CoreStats]> = (0..workers)
            .map(|_| CoreStats::new(settings.listen.len()))
            .collect();
        let control = Arc::new(ControlStats::default());
        control.routes.store(table.len() as u64, Ordering::Relaxed);
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(Snapshot {
                table,
                settings: settings.clone(),
            }),
            generation: AtomicU64::new(0),
            shutdown: AtomicBool::new(false),
            listening: AtomicUsize::new(0),
            exited: AtomicUsize::new(0),
        });
        let metrics = EngineMetrics {
            cores,
            listeners,
            control,
        };
        let (tx, rx) = std::sync::mpsc::channel::<Result<(), EngineError>>();
        let mut handles = Vec::with_capacity(workers);
        for core in 0..workers {
            let shared = shared.clone();
            let stats = metrics.cores.clone();
            let tx = tx.clone();
            let addrs = settings.listen.clone();
            let backlog = settings.backlog;
            let hook = hook.clone();
            let handle = plan
                .spawn(core, "meshgate-core", move || {
                    worker::run(core, shared, stats, addrs, backlog, tx, hook)
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
        self.shared
            .snapshot
            .store(Arc::new(Snapshot { table, settings }));
        self.shared.generation.fetch_add(1, Ordering::Release);
    }

    /// The snapshot in force.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.load_full()
    }

    /// True while every core listens and the engine is not draining.
    pub fn ready(&self) -> bool {
        !self.shared.shutdown.load(Ordering::Relaxed)
            && self.shared.listening.load(Ordering::Relaxed) == self.workers
    }

    /// Metrics view (cheap to clone, summed at scrape).
    pub fn metrics(&self) -> EngineMetrics {
        self.metrics.clone()
    }

    /// Number of data-plane cores.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Begins a graceful shutdown: listeners close, live connections get the drain timeout.
    pub fn shutdown(&self) {
        self.metrics.control.draining.store(true, Ordering::Relaxed);
        self.shared.shutdown.store(true, Ordering::Relaxed);
    }

    /// True once every core has finished (after [`Engine::shutdown`]).
    pub fn finished(&self) -> bool {
        self.shared.exited.load(Ordering::Relaxed) == self.workers
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
