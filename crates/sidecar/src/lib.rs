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
//!
//! The cores run on the engine's runtime ([`meshgate_engine::cores`]) and follow its rules: executors
//! placed by its `CorePlan`, lifecycle and drain by its `Lifecycle` and `drain`, accept paused by its
//! `AcceptBackoff` when descriptors run out, idleness judged by its `idle_watch` from byte counts (no
//! clock read per transfer), a reset or error on one side of a connection passed on as a reset to the
//! other, and counters written by their core only ([`stats`]).

pub mod stats;
pub mod tls;

use arc_swap::ArcSwap;
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use meshgate_engine::cores::{
    drain, idle_watch, reset_on_close, run_until_shutdown, within, AcceptBackoff, AcceptFailure,
    Lifecycle,
};
use meshgate_mesh::model::{IntentionAction, IntentionSource};
use rustls::pki_types::ServerName;
use stats::{CoreStats, Inbound, Metrics, Outbound};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
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
    /// Concurrent connections (inbound and outbound) for the whole sidecar, divided evenly among cores;
    /// excess connections wait in the kernel's accept backlog.
    pub max_connections: usize,
    /// Who decides inbound callers instead of the plan's intentions (a Consul agent); `None`: the plan.
    pub authorize: Option<Arc<dyn Authorize>>,
}

/// Asks, outside the data plane, whether a caller may connect — Consul's
/// `/v1/agent/connect/authorize`. Called on a core, so it must not block: it hands the question on
/// and answers later on `reply` (`None`: no verdict could be had).
pub trait Authorize: Send + Sync + std::fmt::Debug {
    /// Sends one question.
    fn ask(&self, question: Question, reply: futures_channel::oneshot::Sender<Option<bool>>);
}

/// One authorization question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// The service being called (this sidecar's).
    pub target: String,
    /// The caller's SPIFFE URI, from its verified certificate.
    pub client_uri: String,
    /// The caller certificate's serial (colon-hex).
    pub serial: String,
}

/// A verdict is reused this long without asking again: a caller opening many connections costs the
/// agent one question a second, and a new deny applies within a second.
const VERDICT_FRESH: Duration = Duration::from_secs(1);
/// An older verdict still decides while the agent cannot answer (a hiccup must not stop callers it
/// has already let in); past this, a caller with no verdict is refused.
const VERDICT_STALE: Duration = Duration::from_secs(300);
/// Bound on one question.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Verdicts kept per core; the oldest go first past it.
const VERDICTS_MAX: usize = 10_000;

/// One upstream, compiled.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Destination service, as the upstream names it.
    pub service: String,
    /// Where the application connects.
    pub bind: SocketAddr,
    /// `none`, `local` or `remote`.
    pub mode: String,
    /// Which level decided the mode.
    pub mode_source: String,
    /// Where connections go, tried in order (a resolver's redirect and failover); empty: nowhere.
    pub targets: Vec<Target>,
}

impl Upstream {
    /// The first target (where connections go while it answers).
    pub fn first(&self) -> Option<&Target> {
        self.targets.first()
    }

    /// Whether the first target has somewhere to dial.
    pub fn has_next_hop(&self) -> bool {
        self.first().is_some_and(|t| !t.next_hops.is_empty())
    }
}

/// One place an upstream's connections may go: a service in a datacenter, with its own SNI, identity
/// check and next hops.
#[derive(Debug, Clone)]
pub struct Target {
    /// The service (another one after a redirect or a failover to another service).
    pub service: String,
    /// Its datacenter.
    pub datacenter: String,
    /// SNI to send.
    pub sni: ServerName<'static>,
    /// mTLS towards it (the check that the server is this target's service included).
    pub client: Arc<rustls::ClientConfig>,
    /// Where to dial.
    pub next_hops: Vec<SocketAddr>,
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
    life: Lifecycle,
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
            life: Lifecycle::new(workers),
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
        #[allow(
            clippy::disallowed_methods,
            reason = "start-up on the caller's thread, before the data plane serves: no core is blocked"
        )]
        {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !sidecar.ready() {
                if let Some((addr, message)) = sidecar.metrics.first_bind_error() {
                    sidecar.shutdown();
                    return Err(SidecarError::Listen { addr, message });
                }
                if std::time::Instant::now() > deadline || sidecar.finished() {
                    sidecar.shutdown();
                    return Err(SidecarError::Core(
                        0,
                        "cores did not start listening".into(),
                    ));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
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
        !self.shared.life.shutting_down()
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
        self.shared.life.shutdown();
    }

    /// True once every core has exited.
    pub fn finished(&self) -> bool {
        self.shared.life.finished()
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
    /// Authorizer verdicts by caller URI: (allowed, when asked).
    verdicts: RefCell<HashMap<String, (bool, std::time::Instant)>>,
    /// This core's share of `max_connections`.
    limit: Rc<glommio::sync::Semaphore>,
}

async fn run_core(core: usize, shared: Arc<Shared>, stats: Arc<CoreStats>) {
    let share = (shared.settings.max_connections)
        .div_ceil(shared.settings.workers.max(1))
        .max(1);
    let core = Rc::new(Core {
        index: core,
        shared,
        stats,
        cursor: Cell::new(core),
        active: Cell::new(0),
        verdicts: RefCell::new(HashMap::new()),
        limit: Rc::new(glommio::sync::Semaphore::new(share as u64)),
    });
    let mut listeners: HashMap<SocketAddr, Listener> = HashMap::new();
    let mut seen = 0;
    let mut follow_plan = || {
        let generation = core.shared.generation.load(Ordering::Acquire);
        if generation != seen {
            let plan = core.shared.plan.load_full();
            if reconcile(&core, &mut listeners, &plan) {
                seen = generation;
                core.shared.bound[core.index].store(generation, Ordering::Release);
            }
        }
    };
    follow_plan();
    run_until_shutdown(&core.shared.life, RECONCILE_INTERVAL, follow_plan).await;
    // Dropping the accept tasks closes the listeners; connections drain.
    listeners.clear();
    let left = drain(
        || core.active.get(),
        core.shared.settings.drain_timeout,
        RECONCILE_INTERVAL,
        || {},
    )
    .await;
    if left > 0 {
        tracing::warn!(
            core = core.index,
            live = left,
            "drain timeout: closing remaining connections"
        );
    }
    core.shared.life.exited();
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
    let mut backoff = AcceptBackoff::default();
    loop {
        let stream = match listener.accept().await {
            Ok(s) => {
                backoff.accepted();
                s
            }
            Err(e) => {
                let e = io::Error::from(e);
                match backoff.failed(&e).await {
                    // Out of descriptors: the backoff paused (and said so); try again.
                    AcceptFailure::Transient | AcceptFailure::Exhausted => {}
                    AcceptFailure::Other => {
                        tracing::warn!(%addr, error = %e, "accept failed");
                        glommio::timer::Timer::new(Duration::from_millis(10)).await;
                    }
                }
                continue;
            }
        };
        // Over the limit, this loop holds the one connection it took and accepts no more: the rest
        // wait in the kernel backlog. (Taking the permit before accepting would let each idle
        // listener sit on one.)
        let Ok(permit) = core.limit.acquire_static_permit(1).await else {
            return;
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
            drop(permit);
        })
        .detach();
    }
}

/// The authorizer's verdict for `caller`: a fresh cached one, else the authorizer's answer (bounded),
/// else a stale cached one, else none (the caller is refused).
async fn verdict(
    verdicts: &RefCell<HashMap<String, (bool, std::time::Instant)>>,
    auth: &dyn Authorize,
    target: &str,
    caller: &str,
    serial: String,
) -> Option<bool> {
    #[allow(
        clippy::disallowed_methods,
        reason = "read once per inbound connection that an authorizer decides"
    )]
    let now = std::time::Instant::now();
    let cached = verdicts.borrow().get(caller).copied();
    if let Some((allowed, at)) = cached {
        if now.saturating_duration_since(at) < VERDICT_FRESH {
            return Some(allowed);
        }
    }
    let (tx, rx) = futures_channel::oneshot::channel();
    auth.ask(
        Question {
            target: target.to_owned(),
            client_uri: caller.to_owned(),
            serial,
        },
        tx,
    );
    match within(ASK_TIMEOUT, rx).await {
        Some(Ok(Some(allowed))) => {
            let mut v = verdicts.borrow_mut();
            if v.len() >= VERDICTS_MAX && !v.contains_key(caller) {
                // Full: start over rather than track age order; a refill costs one question each.
                v.clear();
            }
            v.insert(caller.to_owned(), (allowed, now));
            Some(allowed)
        }
        _ => cached
            .filter(|(_, at)| now.saturating_duration_since(*at) < VERDICT_STALE)
            .map(|(allowed, _)| allowed),
    }
}

async fn inbound(core: &Core, stream: TcpStream, plan: &Plan) {
    let settings = &core.shared.settings;
    let peer = stream.peer_addr().ok();
    core.stats.active(stats::Direction::Inbound, true);
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
        let asked = match &settings.authorize {
            Some(auth) if !foreign => {
                let serial = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| meshgate_ca::serial_hex(c))
                    .unwrap_or_default();
                Some(
                    verdict(
                        &core.verdicts,
                        auth.as_ref(),
                        &plan.service,
                        &caller.to_string(),
                        serial,
                    )
                    .await,
                )
            }
            _ => None,
        };
        let action = match asked {
            _ if foreign => IntentionAction::Deny,
            Some(Some(true)) => IntentionAction::Allow,
            Some(_) => IntentionAction::Deny,
            None => rule.map_or(plan.default_action, |r| r.action),
        };
        // Formatted only when a log line is written: allowed connections do not pay for it.
        let because = || match rule {
            _ if foreign => format!(
                "caller's trust domain {} is not {}",
                caller.trust_domain,
                plan.tls.identity().trust_domain
            ),
            _ if asked == Some(None) => "the agent gave no verdict (fail closed)".to_owned(),
            _ if asked.is_some() => "the agent's authorize verdict".to_owned(),
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
        core.stats.active(stats::Direction::Inbound, false);
        return;
    };
    core.stats.inbound(outcome);
    core.stats.active(stats::Direction::Inbound, false);
}

async fn outbound(core: &Core, app: TcpStream, up: &Upstream) {
    let settings = &core.shared.settings;
    core.stats.active(stats::Direction::Outbound, true);
    let _ = app.set_nodelay(true);
    let Some(first) = up.targets.first() else {
        tracing::warn!(upstream = %up.service, mode = %up.mode, "no target for upstream; closed");
        core.stats.active(stats::Direction::Outbound, false);
        return;
    };
    let mut ended = (first, Outbound::NoRoute);
    for (i, target) in up.targets.iter().enumerate() {
        match connect_target(core, up, target).await {
            Ok((hop, tls)) => {
                tracing::info!(
                    target: "meshgate::access",
                    upstream = %up.service,
                    service = %target.service,
                    datacenter = %target.datacenter,
                    sni = ?target.sni,
                    next_hop = %hop,
                    mode = %up.mode,
                    mode_source = %up.mode_source,
                    via_gateway = target.via_gateway,
                    target = i,
                    "upstream connection"
                );
                core.stats.outbound(up, target, Outbound::Ok);
                relay(tls, app, settings.idle_timeout).await;
                core.stats.active(stats::Direction::Outbound, false);
                return;
            }
            Err(outcome) => {
                // Nothing of the application's was sent yet (the handshake comes first), so the next
                // target gets the connection as if it were the first.
                if let Some(next) = up.targets.get(i + 1) {
                    tracing::info!(
                        upstream = %up.service,
                        from = %target.sni.to_str(),
                        to = %next.sni.to_str(),
                        ?outcome,
                        "failing over to the next target"
                    );
                    core.stats.failover(up, target, outcome);
                }
                ended = (target, outcome);
            }
        }
    }
    core.stats.outbound(up, ended.0, ended.1);
    core.stats.active(stats::Direction::Outbound, false);
}

/// Dials one target's next hops (up to [`MAX_HOP_ATTEMPTS`], starting at this core's cursor) and
/// completes mTLS with the first that accepts; the outcome says why not.
async fn connect_target(
    core: &Core,
    up: &Upstream,
    target: &Target,
) -> Result<(SocketAddr, futures_rustls::client::TlsStream<TcpStream>), Outbound> {
    let settings = &core.shared.settings;
    if target.next_hops.is_empty() {
        tracing::warn!(upstream = %up.service, datacenter = %target.datacenter, mode = %up.mode, "no next hop for target");
        return Err(Outbound::NoRoute);
    }
    let start = core.cursor.get();
    core.cursor.set(start.wrapping_add(1));
    let n = target.next_hops.len();
    let mut dialed = None;
    for k in 0..n.min(MAX_HOP_ATTEMPTS) {
        let hop = target.next_hops[(start + k) % n];
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
        tracing::warn!(upstream = %up.service, datacenter = %target.datacenter, mode = %up.mode, hops = ?target.next_hops, "no next hop reachable");
        return Err(Outbound::ConnectFailed);
    };
    let _ = stream.set_nodelay(true);
    let connector = futures_rustls::TlsConnector::from(target.client.clone());
    match within(
        settings.handshake_timeout,
        connector.connect(target.sni.clone(), stream),
    )
    .await
    {
        Some(Ok(t)) => Ok((hop, t)),
        Some(Err(e)) => {
            tracing::warn!(upstream = %up.service, datacenter = %target.datacenter, %hop, error = %e, "upstream handshake failed");
            Err(Outbound::HandshakeFailed)
        }
        None => {
            tracing::warn!(upstream = %up.service, datacenter = %target.datacenter, %hop, "upstream handshake timed out");
            Err(Outbound::HandshakeFailed)
        }
    }
}

/// Bytes moved per read while relaying (TLS records are at most 16 KiB of plaintext).
const RELAY_CHUNK: usize = 16 * 1024;

/// A relayed stream whose TCP socket can be told to reset on close.
trait Socket {
    /// The TCP connection under the stream.
    fn tcp(&self) -> &TcpStream;
}

impl Socket for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Socket for futures_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

impl Socket for futures_rustls::client::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// One direction's access to a stream both directions use. The stream lives on one core and each poll
/// borrows it only for that call, so the borrows never overlap (no lock, unlike a thread-safe split).
struct Half<T>(Rc<RefCell<T>>);

impl<T: AsyncRead + Unpin> AsyncRead for Half<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Half<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_close(cx)
    }
}

/// Which side of a direction failed, for reset propagation.
#[derive(Debug)]
enum PumpError {
    /// Reading the source failed (its peer reset or errored).
    Source(io::Error),
    /// Writing the destination failed.
    Destination(io::Error),
}

/// Copies `from` to `to` until EOF, then half-closes `to`; counts the bytes moved.
async fn pump<R, W>(mut from: R, mut to: W, moved: &Cell<u64>) -> Result<(), PumpError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    use futures_lite::AsyncReadExt;
    let mut buf = vec![0u8; RELAY_CHUNK];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => break,
            // A FIN without TLS close_notify is a truncation (the peer, or someone on the path, cut
            // the stream): the other side is reset, so the application never takes a cut request or
            // answer for a whole one.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(PumpError::Source(e)),
            Ok(n) => n,
        };
        to.write_all(&buf[..n])
            .await
            .map_err(PumpError::Destination)?;
        moved.set(moved.get() + n as u64);
    }
    // Passes the end on (close_notify and FIN on a TLS side); a failure here ends nothing more.
    let _ = to.close().await;
    Ok(())
}

/// Bound on closing both sides gracefully after an idle timeout.
const IDLE_CLOSE: Duration = Duration::from_secs(1);

/// Copies both ways until both sides are done (each side's end is passed on as a half-close), one side
/// fails (the other is then reset, not closed cleanly), or nothing has moved either way for `idle`.
async fn relay<A, B>(a: A, b: B, idle: Duration)
where
    A: AsyncRead + AsyncWrite + Unpin + Socket,
    B: AsyncRead + AsyncWrite + Unpin + Socket,
{
    let a = Rc::new(RefCell::new(a));
    let b = Rc::new(RefCell::new(b));
    let moved = Cell::new(0u64);
    let pumps = futures_lite::future::try_zip(
        async {
            pump(Half(a.clone()), Half(b.clone()), &moved)
                .await
                .map_err(|e| (true, e))
        },
        async {
            pump(Half(b.clone()), Half(a.clone()), &moved)
                .await
                .map_err(|e| (false, e))
        },
    );
    let ended = futures_lite::future::or(async { Some(pumps.await) }, async {
        idle_watch(|| moved.get(), idle, None).await;
        None
    })
    .await;
    match ended {
        None => {
            tracing::debug!(idle = ?idle, "idle connection closed");
            // A graceful end both ways (close_notify and FIN on a TLS side), so the peer sidecar sees an
            // end, not a truncation it would have to reset; bounded, a peer may not be reading.
            let _ = within(IDLE_CLOSE, async {
                let _ = Half(a.clone()).close().await;
                let _ = Half(b.clone()).close().await;
            })
            .await;
        }
        Some(Ok(_)) => {}
        Some(Err((a_to_b, err))) => {
            // A source failure is the reading side's; a destination failure the writing side's.
            let (a_failed, error) = match err {
                PumpError::Source(e) => (a_to_b, e),
                PumpError::Destination(e) => (!a_to_b, e),
            };
            let reset = if a_failed {
                reset_on_close(b.borrow().tcp())
            } else {
                reset_on_close(a.borrow().tcp())
            };
            tracing::debug!(error = %error, reset = ?reset.err(), "relay side failed; resetting the other");
        }
    }
}

// Everything runs on one executor: the relay as a task, its peers as glommio sockets on loopback. Every
// wait is bounded by `within`; nothing asserts on time.
#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::AsyncReadExt;
    use glommio::net::TcpListener;

    const BOUND: Duration = Duration::from_secs(20);

    fn on_executor<Fut: std::future::Future<Output = ()> + 'static>(
        f: impl FnOnce() -> Fut + Send + 'static,
    ) {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(512 * 1024)
            .spawn(f)
            .expect("executor")
            .join()
            .expect("join");
    }

    /// A connected pair: (the near end, the far end).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let near = TcpStream::connect(addr).await.expect("connect");
        let far = listener.accept().await.expect("accept");
        (near, far)
    }

    /// client ⇄ a …relay… b ⇄ server, the relay running as a task.
    async fn relayed(idle: Duration) -> (TcpStream, TcpStream, glommio::task::JoinHandle<()>) {
        let (client, a) = pair().await;
        let (b, server) = pair().await;
        let task = glommio::spawn_local(relay(a, b, idle)).detach();
        (client, server, task)
    }

    async fn read_some(s: &mut TcpStream) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; 64];
        let n = within(BOUND, s.read(&mut buf))
            .await
            .expect("a read within the bound")?;
        buf.truncate(n);
        Ok(buf)
    }

    /// A source that yields `data`, then fails as rustls does on a FIN without close_notify.
    struct Truncated(Option<Vec<u8>>);

    impl AsyncRead for Truncated {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<io::Result<usize>> {
            std::task::Poll::Ready(match self.0.take() {
                Some(d) => {
                    buf[..d.len()].copy_from_slice(&d);
                    Ok(d.len())
                }
                None => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "no close_notify",
                )),
            })
        }
    }

    /// A destination that records what it got and whether it was closed.
    #[derive(Default)]
    struct Sink {
        got: Vec<u8>,
        closed: bool,
    }

    impl AsyncWrite for Sink {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            self.got.extend_from_slice(buf);
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_close(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            self.closed = true;
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// Answers every question with `answer`, or drops the reply (an agent that cannot answer).
    #[derive(Debug)]
    struct Fixed(Option<bool>, std::sync::atomic::AtomicUsize);

    impl Authorize for Fixed {
        fn ask(&self, _: Question, reply: futures_channel::oneshot::Sender<Option<bool>>) {
            self.1.fetch_add(1, Ordering::Relaxed);
            if let Some(a) = self.0 {
                let _ = reply.send(Some(a));
            }
        }
    }

    #[test]
    #[allow(
        clippy::disallowed_methods,
        reason = "a test ages cached verdicts by backdating them"
    )]
    fn verdicts_are_asked_cached_briefly_and_fail_closed() {
        on_executor(|| async {
            let cache = RefCell::new(HashMap::new());
            let uri = "spiffe://td/ns/default/dc/dc1/svc/web";
            let allow = Fixed(Some(true), Default::default());
            assert_eq!(
                verdict(&cache, &allow, "api", uri, String::new()).await,
                Some(true)
            );
            // Fresh: answered from the cache, not asked again.
            assert_eq!(
                verdict(&cache, &allow, "api", uri, String::new()).await,
                Some(true)
            );
            assert_eq!(allow.1.load(Ordering::Relaxed), 1);
            // The agent gone: a recent verdict still decides (a hiccup does not stop callers)...
            let gone = Fixed(None, Default::default());
            cache.borrow_mut().insert(
                uri.to_owned(),
                (true, std::time::Instant::now() - VERDICT_FRESH * 2),
            );
            assert_eq!(
                verdict(&cache, &gone, "api", uri, String::new()).await,
                Some(true)
            );
            // ...a caller never decided is refused, and so is one decided too long ago.
            let other = "spiffe://td/ns/default/dc/dc1/svc/db";
            assert_eq!(
                verdict(&cache, &gone, "api", other, String::new()).await,
                None
            );
            cache.borrow_mut().insert(
                uri.to_owned(),
                (true, std::time::Instant::now() - VERDICT_STALE * 2),
            );
            assert_eq!(
                verdict(&cache, &gone, "api", uri, String::new()).await,
                None
            );
            // A deny is a verdict like any other.
            let deny = Fixed(Some(false), Default::default());
            assert_eq!(
                verdict(&cache, &deny, "api", other, String::new()).await,
                Some(false)
            );
        });
    }

    #[test]
    fn a_truncated_tls_stream_is_a_failure_not_an_end() {
        on_executor(|| async {
            let mut sink = Sink::default();
            let moved = Cell::new(0);
            let r = pump(Truncated(Some(b"half a req".to_vec())), &mut sink, &moved).await;
            assert!(
                matches!(r, Err(PumpError::Source(ref e)) if e.kind() == io::ErrorKind::UnexpectedEof),
                "a truncation must fail the pump (so the other side is reset)"
            );
            assert_eq!(sink.got, b"half a req");
            assert!(!sink.closed, "no clean end passed on");
        });
    }

    #[test]
    fn half_close_keeps_the_other_direction() {
        on_executor(|| async {
            let (mut client, mut server, task) = relayed(BOUND).await;
            client.write_all(b"ping").await.expect("write");
            client.close().await.expect("half-close");
            let mut got = Vec::new();
            within(BOUND, server.read_to_end(&mut got))
                .await
                .expect("bound")
                .expect("request, then EOF");
            assert_eq!(got, b"ping");
            server
                .write_all(b"pong")
                .await
                .expect("write after the half-close");
            server.close().await.expect("half-close");
            let mut back = Vec::new();
            within(BOUND, client.read_to_end(&mut back))
                .await
                .expect("bound")
                .expect("response, then EOF");
            assert_eq!(back, b"pong");
            assert!(within(BOUND, task).await.is_some(), "relay ended");
        });
    }

    fn reset_propagates(from_client: bool) {
        on_executor(move || async move {
            let (mut client, mut server, task) = relayed(BOUND).await;
            client.write_all(b"ping").await.expect("write");
            assert_eq!(read_some(&mut server).await.expect("read"), b"ping");
            let mut survivor = if from_client {
                reset_on_close(&client).expect("linger");
                drop(client);
                server
            } else {
                reset_on_close(&server).expect("linger");
                drop(server);
                client
            };
            match read_some(&mut survivor).await {
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
                Ok(b) => panic!("a clean end ({b:?}) instead of a reset"),
            }
            assert!(within(BOUND, task).await.is_some(), "relay ended");
        });
    }

    #[test]
    fn client_reset_resets_the_server() {
        reset_propagates(true);
    }

    #[test]
    fn server_reset_resets_the_client() {
        reset_propagates(false);
    }

    #[test]
    fn idle_connection_is_closed_cleanly() {
        on_executor(|| async {
            let (mut client, mut server, task) = relayed(Duration::from_millis(20)).await;
            assert!(within(BOUND, task).await.is_some(), "relay ended as idle");
            assert_eq!(read_some(&mut client).await.expect("clean close"), b"");
            assert_eq!(read_some(&mut server).await.expect("clean close"), b"");
        });
    }
}
