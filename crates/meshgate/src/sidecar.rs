//! `meshgate sidecar --config FILE`: one service's sidecar. The control thread polls the catalog plugin,
//! asks the router plugin for the sidecar's plan (listeners, upstreams by gateway mode, intentions),
//! watches the certificate files, and publishes a compiled [`meshgate_sidecar::Plan`] whenever any of them
//! changes; the data plane (`meshgate_sidecar`) applies it to new connections without a restart.

use crate::control::{load_catalog_and_router, poll_catalog, PluginMetrics, Reporter, Versioned};
use meshgate_config::sidecar::DefaultIntention;
use meshgate_config::SidecarConfig;
use meshgate_mesh::model::{IntentionAction, IntentionSource};
use meshgate_plugin::{types, CatalogPlugin, PluginHost, RouterPlugin};
use meshgate_sidecar::tls::{Expected, MeshTls};
use meshgate_sidecar::{Plan, Settings, Sidecar, Upstream};
use rustls::pki_types::ServerName;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

const EXIT_CONFIG: u8 = 2;
const EXIT_RUNTIME: u8 = 1;

/// Certificate files and what they held when last read.
struct CertFiles {
    paths: [PathBuf; 3],
    stamp: Option<Vec<(SystemTime, u64)>>,
}

impl CertFiles {
    fn new(config: &SidecarConfig) -> CertFiles {
        let t = &config.tls;
        CertFiles {
            paths: [
                config.path(&t.cert_file),
                config.path(&t.key_file),
                config.path(&t.roots_file),
            ],
            stamp: None,
        }
    }

    fn current_stamp(&self) -> Option<Vec<(SystemTime, u64)>> {
        self.paths
            .iter()
            .map(|p| {
                let m = std::fs::metadata(p).ok()?;
                Some((m.modified().ok()?, m.len()))
            })
            .collect()
    }

    /// New TLS material if the files changed since the last successful read.
    fn reload(&mut self) -> Result<Option<MeshTls>, String> {
        let stamp = self.current_stamp();
        if stamp.is_some() && stamp == self.stamp {
            return Ok(None);
        }
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let [cert, key, roots] = &self.paths;
        let tls = MeshTls::from_pem(&read(cert)?, &read(key)?, &read(roots)?).map_err(|e| {
            format!(
                "{} / {} / {}: {e}",
                cert.display(),
                key.display(),
                roots.display()
            )
        })?;
        self.stamp = stamp;
        Ok(Some(tls))
    }
}

/// The admin endpoint's view of a sidecar.
struct Admin {
    sidecar: OnceLock<Arc<Sidecar>>,
    plugins: Arc<PluginMetrics>,
    plan_json: std::sync::Mutex<String>,
}

impl meshgate_admin::AdminSource for Admin {
    fn metrics(&self) -> String {
        let mut text = self
            .sidecar
            .get()
            .map(|s| s.metrics().render())
            .unwrap_or_default();
        text.push_str(&self.plugins.render());
        text
    }
    fn ready(&self) -> bool {
        self.sidecar.get().is_some_and(|s| s.ready())
    }
    fn routes_json(&self) -> String {
        self.plan_json.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// The control plane of one sidecar.
struct Control {
    config: SidecarConfig,
    catalog_plugin: CatalogPlugin,
    router: RouterPlugin,
    catalog: Versioned,
    certs: CertFiles,
    tls: Option<Arc<MeshTls>>,
    /// The installed plan as `/routes` shows it: an unchanged plan is not compiled and installed again
    /// (that would rebuild every upstream's TLS client and drop its session cache).
    installed: Option<String>,
    errors: Reporter,
    metrics: Arc<PluginMetrics>,
}

/// A compiled plan, ready to install, with what `/routes` shows of it.
struct NewPlan {
    plan: Plan,
    json: String,
    upstreams: usize,
}

fn resolve(what: &str, hostport: &str) -> Result<SocketAddr, String> {
    hostport
        .to_socket_addrs()
        .map_err(|e| format!("{what} {hostport}: {e}"))?
        .next()
        .ok_or_else(|| format!("{what} {hostport}: no address"))
}

impl Control {
    fn new(config: SidecarConfig) -> Result<Control, String> {
        let metrics = Arc::new(PluginMetrics::new().map_err(|e| e.to_string())?);
        let host = PluginHost::new().map_err(|e| e.to_string())?;
        let (catalog_plugin, router) = load_catalog_and_router(
            &host,
            &config.catalog,
            &config.router_section(),
            &config.base_dir,
        )?;
        Ok(Control {
            certs: CertFiles::new(&config),
            config,
            catalog_plugin,
            router,
            catalog: None,
            tls: None,
            installed: None,
            errors: Reporter::new("sidecar update failed; the running plan stays"),
            metrics,
        })
    }

    /// One poll: a new plan when the catalog, the router's answer or the certificates changed.
    fn tick(&mut self) -> Option<NewPlan> {
        let mut changed = false;
        let mut new_certs = false;
        match self.certs.reload() {
            Ok(Some(tls)) => {
                tracing::info!(identity = %tls.identity(), not_after = tls.not_after(), "certificates loaded");
                self.tls = Some(Arc::new(tls));
                changed = true;
                new_certs = true;
            }
            Ok(None) => {}
            Err(e) => self.errors.report(e),
        }
        match poll_catalog(
            &mut self.catalog_plugin,
            &self.config.catalog,
            &mut self.catalog,
            &self.metrics,
        ) {
            Ok(c) => changed |= c,
            Err(e) => self.errors.report(e),
        }
        if !changed {
            return None;
        }
        let (Some(tls), Some((_, catalog))) = (&self.tls, &self.catalog) else {
            return None;
        };
        let s = &self.config.sidecar;
        let name = self.router.name().to_owned();
        self.metrics.calls.with_label_values(&[&name]).inc();
        let wit = match self.router.sidecar_plan(
            &self.config.router_section().settings(),
            catalog,
            &s.datacenter,
            &s.service,
            s.proxy_id.as_deref(),
        ) {
            Ok(p) => p,
            Err(e) => {
                self.metrics.failed(&e, &name);
                self.errors.report(e.to_string());
                return None;
            }
        };
        let json = plan_json(&wit);
        if !new_certs && self.installed.as_ref() == Some(&json) {
            // The catalog moved, but not in a way that concerns this sidecar.
            return None;
        }
        match compile(&wit, tls.clone(), &self.config) {
            Ok(plan) => {
                self.errors.clear();
                self.installed = Some(json.clone());
                Some(NewPlan {
                    plan,
                    json,
                    upstreams: wit.upstreams.len(),
                })
            }
            Err(e) => {
                self.errors.report(format!("plan from {name}: {e}"));
                None
            }
        }
    }
}

fn mode_label(m: types::GatewayMode) -> &'static str {
    match m {
        types::GatewayMode::None => "none",
        types::GatewayMode::Local => "local",
        types::GatewayMode::Remote => "remote",
    }
}

/// The router's plan and the certificates, compiled for the data plane.
fn compile(
    wit: &types::SidecarPlan,
    tls: Arc<MeshTls>,
    config: &SidecarConfig,
) -> Result<Plan, String> {
    let mut public = resolve("public listener", &wit.public)?;
    if let Some(host) = &config.sidecar.public_listen_host {
        public = resolve("public_listen_host", &format!("{host}:{}", public.port()))?;
    }
    let local_app = wit
        .local_app
        .as_deref()
        .map(|a| resolve("local application", a))
        .transpose()?;
    let mut upstreams = Vec::new();
    for u in &wit.upstreams {
        let expect = Expected::from_spiffe(&u.identity).ok_or_else(|| {
            format!(
                "upstream {}: bad identity {}",
                u.destination_name, u.identity
            )
        })?;
        let client = tls.client_config(expect).map_err(|e| e.to_string())?;
        let sni = ServerName::try_from(u.sni.clone())
            .map_err(|e| format!("upstream {}: SNI {}: {e}", u.destination_name, u.sni))?;
        let next_hops = u
            .next_hops
            .iter()
            .map(|h| resolve("next hop", h))
            .collect::<Result<Vec<_>, _>>()?;
        upstreams.push(Upstream {
            service: u.destination_name.clone(),
            datacenter: u.datacenter.clone(),
            bind: resolve(
                "local bind",
                &format!("{}:{}", u.local_bind_address, u.local_bind_port),
            )?,
            sni,
            client,
            next_hops,
            mode: mode_label(u.mode).to_owned(),
            mode_source: u.mode_source.clone(),
            via_gateway: u.via_gateway,
        });
    }
    let intentions = wit
        .intentions
        .iter()
        .map(|i| IntentionSource {
            name: i.name.clone(),
            namespace: i.namespace.clone(),
            action: match i.action {
                types::IntentionAction::Allow => IntentionAction::Allow,
                types::IntentionAction::Deny => IntentionAction::Deny,
            },
        })
        .collect();
    Ok(Plan {
        service: wit.service.clone(),
        tls,
        public,
        local_app,
        intentions,
        default_action: match config.sidecar.default_intention {
            DefaultIntention::Allow => IntentionAction::Allow,
            DefaultIntention::Deny => IntentionAction::Deny,
        },
        upstreams,
    })
}

/// The plan as `/routes` shows it.
fn plan_json(wit: &types::SidecarPlan) -> String {
    let upstreams: Vec<serde_json::Value> = wit
        .upstreams
        .iter()
        .map(|u| {
            serde_json::json!({
                "destination": u.destination_name,
                "namespace": u.destination_namespace,
                "datacenter": u.datacenter,
                "bind": format!("{}:{}", u.local_bind_address, u.local_bind_port),
                "sni": u.sni,
                "identity": u.identity,
                "mode": mode_label(u.mode),
                "mode_source": u.mode_source,
                "via_gateway": u.via_gateway,
                "next_hops": u.next_hops,
            })
        })
        .collect();
    let intentions: Vec<serde_json::Value> = wit
        .intentions
        .iter()
        .map(|i| {
            serde_json::json!({
                "source": format!("{}/{}", i.namespace, i.name),
                "action": match i.action {
                    types::IntentionAction::Allow => "allow",
                    types::IntentionAction::Deny => "deny",
                },
            })
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({
        "service": wit.service,
        "datacenter": wit.datacenter,
        "proxy_id": wit.proxy_id,
        "public": wit.public,
        "local_app": wit.local_app,
        "upstreams": upstreams,
        "intentions": intentions,
    }))
    .unwrap_or_default()
}

/// A running sidecar: data plane, admin endpoint and control thread.
pub(crate) struct RunningSidecar {
    pub(crate) sidecar: Arc<Sidecar>,
    _admin: meshgate_admin::AdminServer,
    stop: Arc<AtomicBool>,
    control: Option<std::thread::JoinHandle<()>>,
}

impl RunningSidecar {
    /// Stops the control thread, closes the listeners and waits for the drain.
    pub(crate) fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(c) = self.control.take() {
            let _ = c.join();
        }
        tracing::info!("shutting down: listeners closing, draining live connections");
        self.sidecar.shutdown();
        while !self.sidecar.finished() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Why a sidecar did not start.
pub(crate) enum StartError {
    /// The configuration or a plugin cannot be used.
    Config(String),
    /// The data plane could not start.
    Runtime(String),
    /// `stop` was set before there was a plan.
    Stopped,
}

/// Loads the plugins, waits for the first plan (catalog + certificates; polling, readiness 503 until
/// then), starts the data plane, and keeps applying changes on a control thread until `stop`.
pub(crate) fn start(
    config: &SidecarConfig,
    stop: Arc<AtomicBool>,
) -> Result<RunningSidecar, StartError> {
    let mut control = Control::new(config.clone()).map_err(StartError::Config)?;
    let admin = Arc::new(Admin {
        sidecar: OnceLock::new(),
        plugins: control.metrics.clone(),
        plan_json: std::sync::Mutex::new("{}".into()),
    });
    let admin_server = meshgate_admin::serve(config.sidecar.admin, admin.clone())
        .map_err(|e| StartError::Config(format!("admin endpoint {}: {e}", config.sidecar.admin)))?;
    let s = &config.sidecar;
    let settings = Settings {
        workers: s.workers,
        io_memory: s.io_memory_kib * 1024,
        connect_timeout: s.connect_timeout(),
        handshake_timeout: s.handshake_timeout(),
        drain_timeout: s.drain_timeout(),
        idle_timeout: s.idle_timeout(),
    };
    let poll = Duration::from_millis(config.catalog.poll_ms);
    let first = loop {
        if stop.load(Ordering::Relaxed) {
            return Err(StartError::Stopped);
        }
        if let Some(p) = control.tick() {
            break p;
        }
        // Nothing is retried without a change: forget what was read so the next tick tries again.
        control.catalog = None;
        control.certs.stamp = None;
        std::thread::sleep(poll);
    };
    let sidecar = Arc::new(
        Sidecar::start(settings, first.plan).map_err(|e| StartError::Runtime(e.to_string()))?,
    );
    if let Ok(mut j) = admin.plan_json.lock() {
        *j = first.json;
    }
    let _ = admin.sidecar.set(sidecar.clone());
    tracing::info!(
        service = %s.service,
        datacenter = %s.datacenter,
        public = %sidecar.plan().public,
        upstreams = first.upstreams,
        admin = %admin_server.local_addr(),
        "meshgate sidecar ready"
    );
    let (sc, flag) = (sidecar.clone(), stop.clone());
    let thread = std::thread::Builder::new()
        .name("meshgate-sidecar-control".into())
        .spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(poll);
                if let Some(new) = control.tick() {
                    sc.install(new.plan);
                    if let Ok(mut j) = admin.plan_json.lock() {
                        *j = new.json;
                    }
                    tracing::info!(upstreams = new.upstreams, "sidecar plan installed");
                }
            }
        })
        .map_err(|e| StartError::Runtime(e.to_string()))?;
    Ok(RunningSidecar {
        sidecar,
        _admin: admin_server,
        stop,
        control: Some(thread),
    })
}

/// `meshgate sidecar --config FILE`.
pub(crate) fn run(path: &Path) -> ExitCode {
    let config = match SidecarConfig::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGTERM, SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, stop.clone()) {
            tracing::error!(error = %e, "cannot install signal handlers");
        }
    }
    // SIGHUP is the usual "reload": it must not kill the sidecar (its default action would).
    let hup = Arc::new(AtomicBool::new(false));
    if let Err(e) = signal_hook::flag::register(SIGHUP, hup.clone()) {
        tracing::error!(error = %e, "cannot install the SIGHUP handler");
    }
    let running = match start(&config, stop.clone()) {
        Ok(r) => r,
        Err(StartError::Stopped) => return ExitCode::SUCCESS,
        Err(StartError::Config(e)) => {
            eprintln!("{}: {e}", path.display());
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(StartError::Runtime(e)) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("{}: {e}", path.display());
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    while !stop.load(Ordering::Relaxed) {
        if hup.swap(false, Ordering::Relaxed) {
            tracing::info!("SIGHUP: certificates and the catalog are followed continuously; changes to the config file itself apply after a restart");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    running.stop();
    ExitCode::SUCCESS
}
