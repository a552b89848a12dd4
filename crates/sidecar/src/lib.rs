//! meshgate's sidecar data plane: one service's proxy into and out of the mesh, on the same glommio
//! thread-per-core shape as the gateway.
//!
//! - **Inbound** (the public listener): terminate mTLS with the service's leaf, require a mesh client
//!   certificate, authorise the caller's SPIFFE identity against the intentions (first match, else the
//!   default policy), then relay plaintext to the local application.
//! - **Outbound** (one listener per upstream, on its `local_bind_port`): take the application's plaintext
//!   connection, dial a next hop (a healthy instance, or a mesh gateway, as the gateway mode decided),
//!   originate mTLS with the destination's SNI and verify the server is the destination service.
//!
//! The control plane compiles the catalog and certificates into a [`Plan`] and publishes it with
//! [`Sidecar::install`]; each core notices the new generation, binds or closes listeners to match, and
//! uses the new plan for new connections. Live connections keep the plan they started with, so
//! certificate rotation and catalog changes never cut a connection.

pub mod stats;
pub mod tls;

use arc_swap::ArcSwap;
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use meshgate_engine::cores::within;
use meshgate_mesh::model::{IntentionAction, IntentionSource};
use rustls::pki_types::ServerName;
use stats::{CoreStats, Inbound, Metrics, Outbound};
use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// How often a core looks for a new plan (listener changes only; connections read it directly).
pub const RECONCILE_INTERVAL: Duration = Duration::from_millis(50);
/// Next hops tried per outbound connection before giving up.
pub const MAX_HOP_ATTEMPTS: usize = 3;
/// Backlog of every listener.
pub const BACKLOG: u32 = 1024;

/// Process-wide settings (a restart changes them).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Data-plane cores.
    pub workers: usize,
    /// glommio io memory per core, bytes.
    pub io_memory: usize,
    /// Dialing a next hop or the application.
    pub connect_timeout: Duration,
    /// A TLS handshake, either side.
    pub handshake_timeout: Duration,
    /// How long live connections get after [`Sidecar::shutdown`].
    pub drain_timeout: Duration,
    /// A connection with no byte moving either way for this long is closed.
    pub idle_timeout: Duration,
}

/// One upstream, compiled.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Destination service.
    pub service: String,
    /// Destination datacenter.
    pub datacenter: String,
    /// Where the application connects.
    pub bind: SocketAddr,
    /// SNI to send.
    pub sni: ServerName<'static>,
    /// mTLS towards the destination (identity check included).
    pub client: Arc<rustls::ClientConfig>,
    /// Where to dial.
    pub next_hops: Vec<SocketAddr>,
    /// `none`, `local` or `remote`.
    pub mode: String,
    /// Which level decided the mode.
    pub mode_source: String,
    /// Whether the next hop is a gateway.
    pub via_gateway: bool,
}

/// Everything a core needs for new connections. Immutable; the control plane publishes new ones.
#[derive(Debug)]
pub struct Plan {
    /// The service this sidecar fronts.
    pub service: String,
    /// Certificates.
    pub tls: Arc<tls::MeshTls>,
    /// The public mTLS listener.
    pub public: SocketAddr,
    /// The application (none: inbound connections are refused after authorisation).
    pub local_app: Option<SocketAddr>,
    /// Intentions in the order they are tried.
    pub intentions: Vec<IntentionSource>,
    /// When none matches.
    pub default_action: IntentionAction,
    /// Upstreams.
    pub upstreams: Vec<Upstream>,
}

impl Plan {
    /// Every address to listen on, with what it is.
    fn listeners(&self) -> Vec<(SocketAddr, Role)> {
        std::iter::once((self.public, Role::Public))
            .chain(self.upstreams.iter().map(|u| (u.bind, Role::Upstream)))
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Public,
    Upstream,
}

/// The sidecar could not start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SidecarError {
    /// An executor could not be created.
    #[error("cannot start core {core}: {message}")]
    Executor {
        /// Core index.
        core: usize,
        /// Why.
        message: String,
    },
    /// A listener of the first plan could not be bound.
    #[error("cannot listen on {addr}: {message}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        message: String,
    },
    /// A core failed.
    #[error("core {0} failed: {1}")]
    Core(usize, String),
    /// This process cannot run executors (io_uring or locked-memory limit).
    #[error(transparent)]
    Cores(#[from] meshgate_engine::cores::CoreError),
}

struct Shared {
    plan: ArcSwap<Plan>,
    generation: AtomicU64,
    /// Per core: the generation whose listeners are all bound.
    bound: Vec<AtomicU64>,
    shutdown: AtomicBool,
    exited: AtomicUsize,
    settings: Settings,
}

/// A running sidecar data plane.
pub struct Sidecar {
    shared: Arc<Shared>,
    metrics: Metrics,
    handles: Vec<glommio::ExecutorJoinHandle<()>>,
}

impl Sidecar {
    /// Starts the cores and returns once each has bound the first plan's listeners.
    pub fn start(settings: Settings, plan: Plan) -> Result<Sidecar, SidecarError> {
        let cores =
            meshgate_engine::cores::CorePlan::new(Some(settings.workers), settings.io_memory)?;
        let workers = cores.workers();
        let metrics = Metrics::new(workers);
        metrics.set_cert_expiry(plan.tls.not_after());
        let shared = Arc::new(Shared {
            plan: ArcSwap::from_pointee(plan),
            generation: AtomicU64::new(1),
            bound: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            shutdown: AtomicBool::new(false),
            exited: AtomicUsize::new(0),
            settings: settings.clone(),
        });
        let mut handles = Vec::with_capacity(workers);
        for core in 0..workers {
            let shared = shared.clone();
            let stats = metrics.core(core);
            let handle = cores
                .spawn(core, "meshgate-sidecar", move || {
                    run_core(core, shared, stats)
                })
                .map_err(|message| SidecarError::Executor { core, message })?;
            handles.push(handle);
        }
        let sidecar = Sidecar {
            shared,
            metrics,
            handles,
        };
        // Ready when every core bound the first plan, or the first bind error is reported.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sidecar.ready() {
            if let Some((addr, message)) = sidecar.metrics.first_bind_error() {
                sidecar.shutdown();
                return Err(SidecarError::Listen { addr, message });
            }
            if Instant::now() > deadline || sidecar.finished() {
                sidecar.shutdown();
                return Err(SidecarError::Core(
                    0,
                    "cores did not start listening".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(sidecar)
    }

    /// Publishes a new plan: new connections use it; listeners follow within [`RECONCILE_INTERVAL`].
    pub fn install(&self, plan: Plan) {
        self.metrics.set_cert_expiry(plan.tls.not_after());
        self.shared.plan.store(Arc::new(plan));
        self.shared.generation.fetch_add(1, Ordering::Release);
    }

    /// The plan in force.
    pub fn plan(&self) -> Arc<Plan> {
        self.shared.plan.load_full()
    }

    /// True when every core listens on everything the current plan names, and not draining.
    pub fn ready(&self) -> bool {
        let generation = self.shared.generation.load(Ordering::Acquire);
        !self.shared.shutdown.load(Ordering::Relaxed)
            && self
                .shared
                .bound
                .iter()
                .all(|b| b.load(Ordering::Acquire) == generation)
    }

    /// Metrics view.
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// Stop listening; live connections get the drain timeout.
    pub fn shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::Relaxed);
    }

    /// True once every core has exited.
    pub fn finished(&self) -> bool {
        self.shared.exited.load(Ordering::Relaxed) == self.handles.len()
    }

    /// Waits for every core.
    pub fn wait(self) -> Result<(), SidecarError> {
        for (core, h) in self.handles.into_iter().enumerate() {
            h.join()
                .map_err(|e| SidecarError::Core(core, e.to_string()))?;
        }
        Ok(())
    }
}

/// An accept loop; dropping it stops accepting and closes the socket.
struct Listener {
    role: Role,
    task: glommio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.cancel();
    }
}

/// State of one core, shared by its tasks (never across cores).
struct Core {
    index: usize,
    shared: Arc<Shared>,
    stats: Arc<CoreStats>,
    /// Round-robin cursor over next hops.
    cursor: Cell<usize>,
    active: Cell<usize>,
}

async fn run_core(core: usize, shared: Arc<Shared>, stats: Arc<CoreStats>) {
    let core = Rc::new(Core {
        index: core,
        shared,
        stats,
        cursor: Cell::new(core),
        active: Cell::new(0),
    });
    let mut listeners: HashMap<SocketAddr, Listener> = HashMap::new();
    let mut seen = 0;
    while !core.shared.shutdown.load(Ordering::Relaxed) {
        let generation = core.shared.generation.load(Ordering::Acquire);
        if generation != seen {
            let plan = core.shared.plan.load_full();
            if reconcile(&core, &mut listeners, &plan) {
                seen = generation;
                core.shared.bound[core.index].store(generation, Ordering::Release);
            }
        }
        glommio::timer::Timer::new(RECONCILE_INTERVAL).await;
    }
    // Dropping the accept tasks closes the listeners; connections drain.
    listeners.clear();
    let deadline = Instant::now() + core.shared.settings.drain_timeout;
    while core.active.get() > 0 && Instant::now() < deadline {
        glommio::timer::Timer::new(RECONCILE_INTERVAL).await;
    }
    core.shared.exited.fetch_add(1, Ordering::Relaxed);
}

/// Makes the core's listeners match the plan; false if some address could not be bound (retried).
fn reconcile(core: &Rc<Core>, listeners: &mut HashMap<SocketAddr, Listener>, plan: &Plan) -> bool {
    let wanted = plan.listeners();
    listeners.retain(|addr, l| wanted.iter().any(|(a, r)| a == addr && *r == l.role));
    let mut all = true;
    for (addr, role) in wanted {
        if listeners.contains_key(&addr) {
            continue;
        }
        // Only TLS clients speak first; an application's protocol may have the server speak first.
        match meshgate_engine::cores::listen(addr, BACKLOG, role == Role::Public) {
            Ok(listener) => {
                let task =
                    glommio::spawn_local(accept_loop(core.clone(), listener, addr, role)).detach();
                listeners.insert(addr, Listener { role, task });
                tracing::info!(%addr, role = ?role, core = core.index, "listening");
            }
            Err(e) => {
                all = false;
                core.stats.bind_error(addr, e.to_string());
                tracing::error!(%addr, error = %e, "cannot listen; retrying");
            }
        }
    }
    all
}

async fn accept_loop(
    core: Rc<Core>,
    listener: glommio::net::TcpListener,
    addr: SocketAddr,
    role: Role,
) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%addr, error = %e, "accept failed");
                glommio::timer::Timer::new(Duration::from_millis(10)).await;
                continue;
            }
        };
        let plan = core.shared.plan.load_full();
        let core = core.clone();
        glommio::spawn_local(async move {
            core.active.set(core.active.get() + 1);
            match role {
                Role::Public => inbound(&core, stream, &plan).await,
                Role::Upstream => match plan.upstreams.iter().find(|u| u.bind == addr) {
                    Some(up) => outbound(&core, stream, up).await,
                    None => drop(stream),
                },
            }
            core.active.set(core.active.get() - 1);
        })
        .detach();
    }
}

async fn inbound(core: &Core, stream: TcpStream, plan: &Plan) {
    let settings = &core.shared.settings;
    let peer = stream.peer_addr().ok();
    core.stats.active(stats::Direction::Inbound, 1);
    let acceptor = futures_rustls::TlsAcceptor::from(plan.tls.server_config());
    let outcome = 'conn: {
        let tls = match within(settings.handshake_timeout, acceptor.accept(stream)).await {
            Some(Ok(t)) => t,
            Some(Err(e)) => {
                tracing::debug!(?peer, error = %e, "inbound handshake failed");
                break 'conn Inbound::HandshakeFailed;
            }
            None => break 'conn Inbound::HandshakeFailed,
        };
        let Some(caller) = tls::peer_identity(tls.get_ref().1) else {
            tracing::warn!(?peer, destination = %plan.service, "caller presented no service identity; closed");
            break 'conn Inbound::NoIdentity;
        };
        let rule = meshgate_mesh::sidecar::matching_intention(
            &plan.intentions,
            &caller.namespace,
            &caller.service,
        );
        let foreign = caller.trust_domain != plan.tls.identity().trust_domain;
        let action = if foreign {
            IntentionAction::Deny
        } else {
            rule.map_or(plan.default_action, |r| r.action)
        };
        // Formatted only when a log line is written: allowed connections do not pay for it.
        let because = || match rule {
            _ if foreign => format!(
                "caller's trust domain {} is not {}",
                caller.trust_domain,
                plan.tls.identity().trust_domain
            ),
            Some(r) => format!(
                "intention {}/{} → {}: {:?}",
                r.namespace, r.name, plan.service, r.action
            ),
            None => format!("default policy: {:?}", plan.default_action),
        };
        if action == IntentionAction::Deny {
            tracing::warn!(
                target: "meshgate::intentions",
                source = %caller,
                destination = %plan.service,
                ?peer,
                reason = %because(),
                "connection denied by intention"
            );
            break 'conn Inbound::Denied;
        }
        tracing::debug!(source = %caller, reason = %because(), "connection allowed");
        let Some(app) = plan.local_app else {
            break 'conn Inbound::NoApplication;
        };
        let app_stream = match within(settings.connect_timeout, TcpStream::connect(app)).await {
            Some(Ok(s)) => s,
            other => {
                tracing::warn!(%app, error = ?other.map(|r| r.err()), "application unreachable");
                break 'conn Inbound::ApplicationUnreachable;
            }
        };
        let _ = app_stream.set_nodelay(true);
        core.stats.inbound(Inbound::Allowed);
        relay(tls, app_stream, settings.idle_timeout).await;
        core.stats.active(stats::Direction::Inbound, -1);
        return;
    };
    core.stats.inbound(outcome);
    core.stats.active(stats::Direction::Inbound, -1);
}

async fn outbound(core: &Core, app: TcpStream, up: &Upstream) {
    let settings = &core.shared.settings;
    core.stats.active(stats::Direction::Outbound, 1);
    let _ = app.set_nodelay(true);
    let outcome = 'conn: {
        if up.next_hops.is_empty() {
            tracing::warn!(upstream = %up.service, datacenter = %up.datacenter, mode = %up.mode, "no next hop for upstream; closed");
            break 'conn Outbound::NoRoute;
        }
        let start = core.cursor.get();
        core.cursor.set(start.wrapping_add(1));
        let n = up.next_hops.len();
        let mut dialed = None;
        for k in 0..n.min(MAX_HOP_ATTEMPTS) {
            let hop = up.next_hops[(start + k) % n];
            match within(settings.connect_timeout, TcpStream::connect(hop)).await {
                Some(Ok(s)) => {
                    dialed = Some((hop, s));
                    break;
                }
                Some(Err(e)) => tracing::debug!(%hop, error = %e, "next hop refused"),
                None => tracing::debug!(%hop, "next hop timed out"),
            }
        }
        let Some((hop, stream)) = dialed else {
            tracing::warn!(upstream = %up.service, mode = %up.mode, hops = ?up.next_hops, "no next hop reachable");
            break 'conn Outbound::ConnectFailed;
        };
        let _ = stream.set_nodelay(true);
        let connector = futures_rustls::TlsConnector::from(up.client.clone());
        let tls = match within(
            settings.handshake_timeout,
            connector.connect(up.sni.clone(), stream),
        )
        .await
        {
            Some(Ok(t)) => t,
            Some(Err(e)) => {
                tracing::warn!(upstream = %up.service, %hop, error = %e, "upstream handshake failed");
                break 'conn Outbound::HandshakeFailed;
            }
            None => {
                tracing::warn!(upstream = %up.service, %hop, "upstream handshake timed out");
                break 'conn Outbound::HandshakeFailed;
            }
        };
        tracing::info!(
            target: "meshgate::access",
            upstream = %up.service,
            datacenter = %up.datacenter,
            sni = ?up.sni,
            next_hop = %hop,
            mode = %up.mode,
            mode_source = %up.mode_source,
            via_gateway = up.via_gateway,
            "upstream connection"
        );
        core.stats.outbound(up, Outbound::Ok);
        relay(tls, app, settings.idle_timeout).await;
        core.stats.active(stats::Direction::Outbound, -1);
        return;
    };
    core.stats.outbound(up, outcome);
    core.stats.active(stats::Direction::Outbound, -1);
}

/// Bytes moved per read while relaying (TLS records are at most 16 KiB of plaintext).
const RELAY_CHUNK: usize = 16 * 1024;

/// Copies `from` to `to` until EOF or an error, then half-closes `to`; notes the time of every transfer.
async fn pump<R, W>(mut from: R, mut to: W, last: &Cell<Instant>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    use futures_lite::AsyncReadExt;
    let mut buf = vec![0u8; RELAY_CHUNK];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                last.set(Instant::now());
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.close().await;
}

/// Copies both ways until both sides are done (each side's end is passed on as a half-close), or until
/// nothing has moved either way for `idle`.
async fn relay<A, B>(a: A, b: B, idle: Duration)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let last = Cell::new(Instant::now());
    let (a_read, a_write) = futures_lite::io::split(a);
    let (b_read, b_write) = futures_lite::io::split(b);
    let both =
        futures_lite::future::zip(pump(a_read, b_write, &last), pump(b_read, a_write, &last));
    let watchdog = async {
        loop {
            let quiet = last.get().elapsed();
            if quiet >= idle {
                tracing::debug!(idle = ?idle, "idle connection closed");
                return;
            }
            glommio::timer::Timer::new(idle - quiet).await;
        }
    };
    futures_lite::future::or(
        async {
            both.await;
        },
        watchdog,
    )
    .await;
}
