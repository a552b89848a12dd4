//! A sidecar's control plane and its runner. [`SidecarControl`] polls the catalog plugin, asks the
//! router plugin for the sidecar's plan (listeners, upstreams by gateway mode, intentions), watches the
//! certificate files, and compiles a [`meshgate_sidecar::Plan`] whenever any of them changes in a way
//! that concerns this sidecar; [`start`] applies each new plan to the data plane on a control thread
//! (new connections use it, live ones continue), and [`run`] is `meshgate sidecar`.

use crate::consul::certs::AgentCerts;
use crate::error::ControlError;
use crate::plugins::{self, CatalogWatch, PluginMetrics, Reporter, Router};
use crate::signals::{Signal, Signals};
use meshgate_config::sidecar::DefaultIntention;
use meshgate_config::sidecar::TlsFiles;
use meshgate_config::SidecarConfig;
use meshgate_mesh::model::{IntentionAction, IntentionSource};
use meshgate_plugin::types;
use meshgate_sidecar::tls::{Expected, MeshTls};
use meshgate_sidecar::{Plan, Settings, Sidecar, Target, Upstream};
use rustls::pki_types::ServerName;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// The certificate files and the bytes they held when last loaded. Change detection compares contents,
/// not timestamps: a rotation that rewrites a file within the filesystem's timestamp granularity, or
/// keeps its size, is still seen.
pub struct CertFiles {
    source: CertSource,
    loaded: Option<[Vec<u8>; 3]>,
}

/// Files named by `[tls]`, or the leaf and roots watched on the Consul agent.
enum CertSource {
    Files([PathBuf; 3]),
    Agent(AgentCerts),
}

impl CertFiles {
    /// The certificate, key and roots files a sidecar config names.
    pub fn new(config: &SidecarConfig, tls: &TlsFiles) -> CertFiles {
        CertFiles {
            source: CertSource::Files([
                config.path(&tls.cert_file),
                config.path(&tls.key_file),
                config.path(&tls.roots_file),
            ]),
            loaded: None,
        }
    }

    /// The leaf of the config's service and the roots, from the agent.
    pub fn from_agent(certs: AgentCerts) -> CertFiles {
        CertFiles {
            source: CertSource::Agent(certs),
            loaded: None,
        }
    }

    /// New TLS material if the files (or the agent's answers) changed since the last successful load.
    pub fn reload(&mut self) -> Result<Option<MeshTls>, String> {
        let (now, what) = match &self.source {
            CertSource::Files([cert, key, roots]) => {
                let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
                (
                    [read(cert)?, read(key)?, read(roots)?],
                    format!(
                        "{} / {} / {}",
                        cert.display(),
                        key.display(),
                        roots.display()
                    ),
                )
            }
            CertSource::Agent(agent) => match agent.current()? {
                Some(pem) => (pem, "consul leaf and roots".to_owned()),
                None => return Ok(None),
            },
        };
        if self.loaded.as_ref() == Some(&now) {
            return Ok(None);
        }
        let tls =
            MeshTls::from_pem(&now[0], &now[1], &now[2]).map_err(|e| format!("{what}: {e}"))?;
        self.loaded = Some(now);
        Ok(Some(tls))
    }

    /// Forgets what was loaded: the next [`CertFiles::reload`] loads the files again.
    pub fn forget(&mut self) {
        self.loaded = None;
    }
}

/// The admin endpoint's view of a sidecar.
struct Admin {
    sidecar: OnceLock<Arc<Sidecar>>,
    plugins: Arc<PluginMetrics>,
    plan_json: Mutex<String>,
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
pub struct SidecarControl {
    config: SidecarConfig,
    catalog: CatalogWatch,
    router: Router,
    certs: CertFiles,
    tls: Option<Arc<MeshTls>>,
    /// The installed plan as `/routes` shows it: an unchanged plan is not compiled and installed again
    /// (that would rebuild every upstream's TLS client and drop its session cache).
    installed: Option<String>,
    errors: Reporter,
    metrics: Arc<PluginMetrics>,
    /// With `[consul]`: inbound callers are decided by the agent (`/v1/agent/connect/authorize`).
    authorizer: Option<Arc<dyn meshgate_sidecar::Authorize>>,
}

/// A compiled plan, ready to install, with what `/routes` shows of it.
pub struct NewPlan {
    /// The plan for the data plane.
    pub plan: Plan,
    /// The plan as `/routes` shows it.
    pub json: String,
    /// How many upstreams it has.
    pub upstreams: usize,
}

fn resolve(what: &str, hostport: &str) -> Result<SocketAddr, String> {
    hostport
        .to_socket_addrs()
        .map_err(|e| format!("{what} {hostport}: {e}"))?
        .next()
        .ok_or_else(|| format!("{what} {hostport}: no address"))
}

impl SidecarControl {
    /// Loads the plugins the config names.
    pub fn new(config: SidecarConfig) -> Result<SidecarControl, ControlError> {
        let metrics = Arc::new(PluginMetrics::new()?);
        let (catalog, router) = load_plugins(&config, &metrics)?;
        let certs = match &config.tls {
            Some(tls) => CertFiles::new(&config, tls),
            None => {
                let client = Arc::new(crate::consul::client(
                    config.consul.as_ref(),
                    &config.base_dir,
                )?);
                CertFiles::from_agent(
                    AgentCerts::start(client, &config.sidecar.service, metrics.consul()?)
                        .map_err(ControlError::Config)?,
                )
            }
        };
        let authorizer: Option<Arc<dyn meshgate_sidecar::Authorize>> = match &config.consul {
            Some(section) => {
                let client = Arc::new(crate::consul::client(Some(section), &config.base_dir)?);
                Some(Arc::new(
                    crate::consul::authorize::ConsulAuthorizer::start(client, metrics.consul()?)
                        .map_err(|e| ControlError::Host(format!("authorize thread: {e}")))?,
                ))
            }
            None => None,
        };
        Ok(SidecarControl {
            authorizer,
            certs,
            config,
            catalog,
            router,
            tls: None,
            installed: None,
            errors: Reporter::new("sidecar update failed; the running plan stays"),
            metrics,
        })
    }

    /// The plugin metrics, for the admin endpoint.
    pub fn metrics(&self) -> Arc<PluginMetrics> {
        self.metrics.clone()
    }

    /// How often to poll the catalog and the certificate files.
    pub fn poll_interval(&self) -> Duration {
        self.catalog.poll_interval()
    }

    /// Forgets the catalog and certificates read so far, so the next tick tries everything again
    /// (before the first plan, nothing is retried without a change otherwise).
    pub fn forget(&mut self) {
        self.catalog.forget();
        self.certs.forget();
    }

    /// One poll: a new plan when the catalog, the router's answer or the certificates changed.
    pub fn tick(&mut self) -> Option<NewPlan> {
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
            Err(e) => {
                self.errors.report(e);
            }
        }
        match self.catalog.poll(&self.metrics, None) {
            Ok(c) => changed |= c,
            Err(e) => {
                self.errors.report(e.to_string());
            }
        }
        if !changed {
            return None;
        }
        let (Some(tls), Some(catalog)) = (&self.tls, self.catalog.current()) else {
            return None;
        };
        let s = &self.config.sidecar;
        let name = self.router.plugin.name().to_owned();
        self.metrics.called(&name);
        let wit = match self.router.plugin.sidecar_plan(
            &self.router.section.settings(),
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
        // A router that lists no targets (written before 0.4.0's targets) still means its one SNI.
        let single = [types::UpstreamTarget {
            service: u.destination_name.clone(),
            subset: None,
            namespace: u.destination_namespace.clone(),
            datacenter: u.datacenter.clone(),
            origin: "primary".to_owned(),
            sni: u.sni.clone(),
            identity: u.identity.clone(),
            via_gateway: u.via_gateway,
            next_hops: u.next_hops.clone(),
            skipped: None,
        }];
        let listed = if u.targets.is_empty() {
            &single[..]
        } else {
            &u.targets[..]
        };
        let mut targets = Vec::new();
        for t in listed.iter().filter(|t| t.skipped.is_none()) {
            let what = format!("upstream {} target {}", u.destination_name, t.sni);
            // Each target is verified as its own service: a failover to another service (or a
            // redirect) must present that service's identity, not the upstream's.
            let expect = Expected::from_spiffe(&t.identity)
                .ok_or_else(|| format!("{what}: bad identity {}", t.identity))?;
            let client = tls.client_config(expect).map_err(|e| e.to_string())?;
            let sni =
                ServerName::try_from(t.sni.clone()).map_err(|e| format!("{what}: SNI: {e}"))?;
            let next_hops = t
                .next_hops
                .iter()
                .map(|h| resolve("next hop", h))
                .collect::<Result<Vec<_>, _>>()?;
            targets.push(Target {
                service: t.service.clone(),
                datacenter: t.datacenter.clone(),
                sni,
                client,
                next_hops,
                via_gateway: t.via_gateway,
            });
        }
        upstreams.push(Upstream {
            service: u.destination_name.clone(),
            bind: resolve(
                "local bind",
                &format!("{}:{}", u.local_bind_address, u.local_bind_port),
            )?,
            mode: mode_label(u.mode).to_owned(),
            mode_source: u.mode_source.clone(),
            targets,
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
                "targets": u.targets.iter().map(|t| serde_json::json!({
                    "service": t.service,
                    "subset": t.subset,
                    "namespace": t.namespace,
                    "datacenter": t.datacenter,
                    "origin": t.origin,
                    "sni": t.sni,
                    "identity": t.identity,
                    "via_gateway": t.via_gateway,
                    "next_hops": t.next_hops,
                    "skipped": t.skipped,
                })).collect::<Vec<_>>(),
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

/// The catalog and router plugins a sidecar config names, loaded.
fn load_plugins(
    config: &SidecarConfig,
    metrics: &PluginMetrics,
) -> Result<(plugins::CatalogWatch, plugins::Router), ControlError> {
    plugins::load_catalog_and_router(
        &plugins::host()?,
        &config.catalog,
        &config.router_section(),
        &config.base_dir,
        metrics,
        &plugins::ConsulLink {
            section: config.consul.as_ref(),
            // The sidecar polls its catalog every poll_ms; answers wait for the next poll.
            waker: Arc::new(|| {}),
        },
    )
}

/// What `meshgate check` says of a sidecar config's upstreams: the plan its router makes from one read
/// of its catalog, each upstream's targets in the order connections try them, and why a target is left
/// out. A catalog fed by a Consul agent's watches is not read here (that needs the agent).
pub fn explain(config: &SidecarConfig) -> Result<String, ControlError> {
    if config.catalog.plugin == "consul-catalog" {
        return Ok(
            "  upstream targets: from the Consul agent's catalog at run time (see /routes)\n"
                .into(),
        );
    }
    let metrics = PluginMetrics::new()?;
    let (mut catalog, mut router) = load_plugins(config, &metrics)?;
    catalog
        .poll(&metrics, None)
        .map_err(|e| ControlError::Config(format!("catalog: {e}")))?;
    let Some(current) = catalog.current() else {
        return Ok("  upstream targets: the catalog gave nothing yet\n".into());
    };
    let s = &config.sidecar;
    let wit = router
        .plugin
        .sidecar_plan(
            &router.section.settings(),
            current,
            &s.datacenter,
            &s.service,
            s.proxy_id.as_deref(),
        )
        .map_err(|e| ControlError::Config(format!("router: {e}")))?;
    Ok(explain_plan(&wit))
}

/// Each upstream's targets as text: numbered in the order tried, skipped ones marked with why.
fn explain_plan(wit: &types::SidecarPlan) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for u in &wit.upstreams {
        let _ = writeln!(
            out,
            "  upstream {} (listens {}:{}): gateway mode {} (from {})",
            u.destination_name,
            u.local_bind_address,
            u.local_bind_port,
            mode_label(u.mode),
            u.mode_source
        );
        let mut n = 0;
        for t in &u.targets {
            let hops = if t.next_hops.is_empty() {
                "no next hop".to_owned()
            } else {
                format!(
                    "next hops {} ({})",
                    t.next_hops.join(", "),
                    if t.via_gateway {
                        "gateways"
                    } else {
                        "instances"
                    }
                )
            };
            match &t.skipped {
                None => {
                    n += 1;
                    let _ = writeln!(
                        out,
                        "    {n}. {} [{}, {}]: {hops}; identity {}",
                        t.sni, t.datacenter, t.origin, t.identity
                    );
                }
                Some(why) => {
                    let _ = writeln!(
                        out,
                        "    -  {} [{}, {}]: skipped: {why}",
                        t.sni, t.datacenter, t.origin
                    );
                }
            }
        }
    }
    out
}

/// A running sidecar: data plane, admin endpoint and control thread.
pub struct RunningSidecar {
    /// The data plane.
    pub sidecar: Arc<Sidecar>,
    _admin: meshgate_admin::AdminServer,
    stop: Sender<()>,
    control: Option<std::thread::JoinHandle<()>>,
}

impl RunningSidecar {
    /// Stops the control thread, closes the listeners and waits for the drain.
    pub fn stop(mut self) {
        let _ = self.stop.send(());
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

/// Loads the plugins, waits for the first plan (catalog + certificates, polled; readiness 503 until
/// then), starts the data plane, and keeps applying changes on a control thread until
/// [`RunningSidecar::stop`]. `Ok(None)`: a stop arrived on `signals` before there was a plan.
pub fn start(
    config: &SidecarConfig,
    signals: &Signals,
) -> Result<Option<RunningSidecar>, ControlError> {
    let mut control = SidecarControl::new(config.clone())?;
    let admin = Arc::new(Admin {
        sidecar: OnceLock::new(),
        plugins: control.metrics(),
        plan_json: Mutex::new("{}".into()),
    });
    let admin_server = meshgate_admin::serve(config.sidecar.admin, admin.clone())
        .map_err(|e| ControlError::Host(format!("admin endpoint {}: {e}", config.sidecar.admin)))?;
    let s = &config.sidecar;
    let settings = Settings {
        workers: s.workers,
        io_memory: s.io_memory_kib * 1024,
        connect_timeout: s.connect_timeout(),
        handshake_timeout: s.handshake_timeout(),
        drain_timeout: s.drain_timeout(),
        idle_timeout: s.idle_timeout(),
        max_connections: s.max_connections,
        authorize: control.authorizer.clone(),
    };
    let poll = control.poll_interval();
    let first = loop {
        if let Some(p) = control.tick() {
            break p;
        }
        control.forget();
        match signals.recv_timeout(poll) {
            Ok(None) => {}
            Ok(Some(Signal::Reload)) => log_reload(),
            Ok(Some(Signal::Stop)) | Err(()) => return Ok(None),
        }
    };
    let sidecar = Arc::new(Sidecar::start(settings, first.plan)?);
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
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let sc = sidecar.clone();
    let thread = std::thread::Builder::new()
        .name("meshgate-sidecar-control".into())
        .spawn(move || loop {
            match stopped.recv_timeout(poll) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
            if let Some(new) = control.tick() {
                sc.install(new.plan);
                if let Ok(mut j) = admin.plan_json.lock() {
                    *j = new.json;
                }
                tracing::info!(upstreams = new.upstreams, "sidecar plan installed");
            }
        })
        .map_err(|e| ControlError::Host(format!("control thread: {e}")))?;
    Ok(Some(RunningSidecar {
        sidecar,
        _admin: admin_server,
        stop,
        control: Some(thread),
    }))
}

fn log_reload() {
    tracing::info!("SIGHUP: certificates and the catalog are followed continuously; changes to the config file itself apply after a restart");
}

/// `meshgate sidecar --config FILE`: runs until SIGTERM/SIGINT and the drain after it.
pub fn run(path: &Path) -> Result<(), ControlError> {
    let config = SidecarConfig::load(path)?;
    let signals = Signals::install()?;
    let Some(running) = start(&config, &signals).map_err(|e| e.in_file(path))? else {
        return Ok(());
    };
    while let Some(Signal::Reload) = signals.recv() {
        log_reload();
    }
    signals.exit_on_second_stop();
    running.stop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::{TempDir, TD};
    use meshgate_ca::{Authority, LeafRequest, DEFAULT_LEAF_LIFETIME};

    fn issue(ca: &Authority, dir: &TempDir) {
        let leaf = ca
            .issue(&LeafRequest {
                service: "web".into(),
                namespace: "default".into(),
                datacenter: "dc1".into(),
                lifetime: DEFAULT_LEAF_LIFETIME,
            })
            .expect("leaf");
        leaf.save(&dir.0.join("certs")).expect("save leaf");
    }

    /// web's sidecar in dc1 on a copy of the demo catalog, with a fresh leaf.
    fn setup(what: &str) -> (TempDir, Authority, SidecarControl) {
        let dir = TempDir::with_demo_catalog(what, "dc1");
        let ca = Authority::init(Some(TD)).expect("root");
        issue(&ca, &dir);
        let text = format!(
            "[sidecar]\nservice = \"web\"\ndatacenter = \"dc1\"\nadmin = \"127.0.0.1:0\"\n\n\
             [tls]\ncert_file = \"certs/cert.pem\"\nkey_file = \"certs/key.pem\"\nroots_file = \"certs/roots.pem\"\n\n\
             [catalog]\nplugin = \"file-catalog\"\n\
             config = {{ dir = \"catalog\", datacenter = \"dc1\", trust_domain = \"{TD}\" }}\n\
             allow_dirs = [\"catalog\"]\n\n[router]\nplugin = \"consul-router\"\n"
        );
        let file = dir.0.join("web.toml");
        std::fs::write(&file, &text).expect("write config");
        let config = SidecarConfig::parse(&text, &file).expect("valid config");
        let control = SidecarControl::new(config).expect("plugins load");
        (dir, ca, control)
    }

    #[test]
    fn the_first_tick_plans_and_an_unchanged_plan_is_not_reinstalled() {
        let (dir, _ca, mut control) = setup("sidecar-unchanged");
        let first = control.tick().expect("first plan");
        assert_eq!(first.upstreams, 2);
        assert!(first.json.contains("\"mode\": \"local\""), "{}", first.json);
        assert!(control.tick().is_none(), "nothing changed");
        // A catalog change that does not concern web's sidecar: no new plan.
        dir.register_db();
        assert!(control.tick().is_none(), "db is not web's upstream");
        // One that does: proxy-defaults' mode moves the first upstream to remote.
        dir.write(
            "catalog/proxy-defaults.hcl",
            "Kind = \"proxy-defaults\"\nName = \"global\"\nMeshGateway {\n  Mode = \"remote\"\n}\n",
        );
        let next = control.tick().expect("a new plan");
        assert!(!next.json.contains("\"mode\": \"local\""), "{}", next.json);
        assert!(control.tick().is_none());
    }

    #[test]
    fn certificate_changes_are_seen_by_content_and_rewrites_of_the_same_bytes_are_not() {
        let (dir, ca, mut control) = setup("sidecar-certs");
        let first = control.tick().expect("first plan");
        let identity = first.plan.tls.identity().to_string();
        // The same bytes written again (a new modification time): nothing to install.
        for name in ["cert.pem", "key.pem", "roots.pem"] {
            let path = dir.0.join("certs").join(name);
            let bytes = std::fs::read(&path).expect("read");
            std::fs::write(&path, bytes).expect("rewrite");
        }
        assert!(control.tick().is_none());
        // A rotated leaf (same identity, same sizes as likely as not): a new plan with it.
        let before = std::fs::read(dir.0.join("certs/cert.pem")).expect("read");
        issue(&ca, &dir);
        assert_ne!(
            before,
            std::fs::read(dir.0.join("certs/cert.pem")).expect("read")
        );
        let rotated = control.tick().expect("rotation installs a plan");
        assert_eq!(rotated.plan.tls.identity().to_string(), identity);
        assert!(control.tick().is_none());
        // A broken file is reported, and the running plan stays (no plan, no panic).
        std::fs::write(dir.0.join("certs/key.pem"), "not a key").expect("write");
        assert!(control.tick().is_none());
    }

    #[test]
    fn without_certificates_there_is_no_plan_until_they_appear() {
        let (dir, ca, mut control) = setup("sidecar-nocerts");
        std::fs::remove_dir_all(dir.0.join("certs")).expect("rm certs");
        assert!(control.tick().is_none());
        control.forget();
        assert!(control.tick().is_none());
        issue(&ca, &dir);
        control.forget();
        assert!(control.tick().is_some());
    }
}
