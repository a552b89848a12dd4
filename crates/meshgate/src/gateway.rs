//! `meshgate gateway` and `meshgate check`: load the config, start the engine and the admin endpoint,
//! and turn signals into reloads and drains.

use crate::control::{Control, PluginMetrics};
use meshgate_admin::AdminSource;
use meshgate_config::{Config, GatewaySettings};
use meshgate_engine::Engine;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Exit code for a configuration that cannot be used.
const EXIT_CONFIG: u8 = 2;
/// Exit code when the engine cannot start or fails.
const EXIT_RUNTIME: u8 = 1;

/// The admin endpoint's view of a running gateway.
pub(crate) struct Admin {
    engine: Arc<Engine>,
    plugins: Arc<PluginMetrics>,
}

impl AdminSource for Admin {
    fn metrics(&self) -> String {
        let mut text = self.engine.metrics().render();
        text.push_str(&self.plugins.render());
        text
    }
    fn ready(&self) -> bool {
        self.engine.ready() && self.plugins.table_ready.load(Ordering::Relaxed)
    }
    fn routes_json(&self) -> String {
        let snap = self.engine.snapshot();
        serde_json::to_string_pretty(&snap.table)
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// `meshgate check FILE`: a gateway or sidecar config, or a Consul registration / config entry in any
/// format.
pub(crate) fn check(file: &Path) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let is_gateway_config = meshgate_mesh::Format::detect(file, &text)
        == meshgate_mesh::Format::Toml
        && text.lines().any(|l| l.trim() == "[gateway]");
    if is_gateway_config {
        return check_gateway(file, &text);
    }
    let is_toml = meshgate_mesh::Format::detect(file, &text) == meshgate_mesh::Format::Toml;
    if is_toml && text.lines().any(|l| l.trim() == "[sidecar]") {
        return match meshgate_config::SidecarConfig::parse(&text, file) {
            Ok(c) => {
                println!("{}: valid", file.display());
                println!(
                    "sidecar for {} in {}: admin {}, default intention {:?}, certificate {}",
                    c.sidecar.service,
                    c.sidecar.datacenter,
                    c.sidecar.admin,
                    c.sidecar.default_intention,
                    c.path(&c.tls.cert_file).display()
                );
                println!(
                    "  catalog plugin {}, router plugin {}; listeners come from the registration",
                    c.catalog.plugin,
                    c.router_section().plugin
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_CONFIG)
            }
        };
    }
    match meshgate_mesh::load_document(&text, file) {
        Ok(doc) => {
            println!("{}: valid", file.display());
            print!("{}", describe(&doc));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn check_gateway(file: &Path, text: &str) -> ExitCode {
    match Config::parse(text, file) {
        Ok(config) => {
            let g = &config.gateway;
            println!("{}: valid", file.display());
            println!(
                "gateway {} in {}: listen {:?}, admin {}",
                g.name,
                g.datacenter,
                g.listen,
                g.admin.map_or("off".to_owned(), |a| a.to_string())
            );
            if let Some(c) = &config.catalog {
                println!(
                    "  catalog plugin {} (settings {:?})",
                    c.plugin,
                    c.settings()
                );
            }
            if let Some(r) = config.router_section() {
                println!("  router plugin {} (settings {:?})", r.plugin, r.settings());
            }
            match config.route_table() {
                Ok(table) => {
                    for r in table.routes() {
                        let groups: Vec<String> = r
                            .groups
                            .iter()
                            .map(|g| format!("{:?}", g.endpoints))
                            .collect();
                        println!(
                            "  route {} -> {} ({:?})",
                            r.pattern,
                            groups.join(" then "),
                            r.lb
                        );
                    }
                }
                Err(e) => println!("  routes: {e}"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// What meshgate understood of a Consul file, for humans.
fn describe(doc: &meshgate_mesh::Document) -> String {
    use meshgate_mesh::Document;
    use std::fmt::Write;
    let mode =
        |m: Option<meshgate_mesh::GatewayMode>| m.map_or("(not set)".to_owned(), |m| m.to_string());
    let mut out = String::new();
    match doc {
        Document::ConfigEntry(e) => {
            let kind = e.kind.label();
            let _ = writeln!(
                out,
                "config entry {kind} {:?}: mesh gateway mode {}",
                e.name,
                mode(e.mesh_gateway)
            );
            for subset in &e.subsets {
                let _ = writeln!(out, "  subset {}: {}", subset.name, subset.filter);
            }
            for source in &e.sources {
                let _ = writeln!(
                    out,
                    "  source {}/{}: {:?}",
                    source.namespace, source.name, source.action
                );
            }
            if !e.other.is_empty() {
                let keys: Vec<&String> = e.other.keys().collect();
                let _ = writeln!(out, "  other fields kept: {keys:?}");
            }
        }
        Document::Services {
            services,
            datacenter,
            ..
        } => {
            if let Some(dc) = datacenter {
                let _ = writeln!(out, "datacenter {dc}");
            }
            let mut all = Vec::new();
            for s in services {
                all.push(("", s));
                if let Some(sc) = &s.sidecar {
                    all.push(("  inline sidecar of the above: ", sc.as_ref()));
                }
            }
            for (prefix, s) in all {
                let kind = match s.kind {
                    meshgate_mesh::ServiceKind::Typical => "service",
                    other => other.label(),
                };
                let _ = writeln!(
                    out,
                    "{prefix}{kind} {:?} (id {:?}, port {}, health {:?})",
                    s.name,
                    s.id,
                    s.port,
                    s.health()
                );
                for (tag, a) in &s.tagged_addresses {
                    let _ = writeln!(out, "    {tag} address {}:{}", a.address, a.port);
                }
                if let Some(p) = &s.proxy {
                    let _ = writeln!(
                        out,
                        "    proxy for {:?}, instance mesh gateway mode {}",
                        p.destination_service_name,
                        mode(p.mesh_gateway)
                    );
                    for u in &p.upstreams {
                        let _ = writeln!(
                            out,
                            "    upstream {} (namespace {}, datacenter {}) on {}:{}, mesh gateway mode {}",
                            u.destination_name,
                            u.destination_namespace.as_deref().unwrap_or("default"),
                            u.datacenter.as_deref().unwrap_or("local"),
                            u.local_bind_address.as_deref().unwrap_or("127.0.0.1"),
                            u.local_bind_port,
                            mode(u.mesh_gateway)
                        );
                    }
                }
            }
        }
    }
    out
}

/// A running gateway: its engine, admin endpoint and control thread.
pub(crate) struct Running {
    pub(crate) engine: Arc<Engine>,
    pub(crate) admin: Option<meshgate_admin::AdminServer>,
    control: std::sync::mpsc::Sender<Config>,
}

impl Running {
    /// Hands a new configuration to the control thread.
    pub(crate) fn reload(&self, config: Config) {
        let _ = self.control.send(config);
    }
}

/// Starts the control plane (plugins, first table), the engine and the admin endpoint.
pub(crate) fn start(config: &Config) -> Result<Running, StartError> {
    let mut control = Control::new(config.clone())?;
    let table = control.initial_table()?;
    let hook = crate::hook::factory(config)?;
    let engine = Arc::new(
        Engine::start_with_hook(config.gateway.clone(), table, hook).map_err(|e| match e {
            // The host, not the file: locked-memory limit, io_uring, a core's failure.
            meshgate_engine::EngineError::Cores(_)
            | meshgate_engine::EngineError::Executor { .. }
            | meshgate_engine::EngineError::Core(..) => StartError::Runtime(e.to_string()),
            _ => StartError::Config(e.to_string()),
        })?,
    );
    let plugins = control.metrics.clone();
    let admin = match config.gateway.admin {
        Some(addr) => Some(
            meshgate_admin::serve(
                addr,
                Arc::new(Admin {
                    engine: engine.clone(),
                    plugins,
                }),
            )
            .map_err(|e| format!("admin endpoint {addr}: {e}"))?,
        ),
        None => None,
    };
    let (tx, rx) = std::sync::mpsc::channel::<Config>();
    let eng = engine.clone();
    std::thread::Builder::new()
        .name("meshgate-control".into())
        .spawn(move || loop {
            match rx.recv_timeout(control.poll_interval()) {
                Ok(config) => {
                    let counters = eng.metrics().control;
                    if control.reload(config, &eng) {
                        counters.reloads_ok.fetch_add(1, Ordering::Relaxed);
                        tracing::info!("configuration reloaded");
                    } else {
                        counters.reloads_failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => control.tick(&eng),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            }
        })
        .map_err(|e| StartError::Runtime(e.to_string()))?;
    Ok(Running {
        engine,
        admin,
        control: tx,
    })
}

/// Why a gateway did not start: something in its configuration (exit 2), or in the host (exit 1).
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Runtime(String),
}

impl From<String> for StartError {
    fn from(message: String) -> StartError {
        StartError::Config(message)
    }
}

/// `meshgate gateway --config FILE`.
pub(crate) fn run(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let gw = match start(&config) {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("{}: {e}", path.display());
            return ExitCode::from(match e {
                StartError::Config(_) => EXIT_CONFIG,
                StartError::Runtime(_) => EXIT_RUNTIME,
            });
        }
    };
    tracing::info!(
        gateway = %config.gateway.name,
        datacenter = %config.gateway.datacenter,
        listen = ?config.gateway.listen,
        admin = ?gw.admin.as_ref().map(|a| a.local_addr()),
        workers = gw.engine.workers(),
        routes = gw.engine.snapshot().table.len(),
        "meshgate gateway ready"
    );
    let path = path.to_owned();
    let mut running = config.gateway.clone();
    serve_signals(&gw.engine, || reload(&gw, &path, &mut running));
    finish(gw.engine)
}

/// Handles SIGHUP (calls `on_hup`) until SIGTERM/SIGINT, then starts the drain. A second SIGTERM/SIGINT
/// during the drain exits at once.
pub(crate) fn serve_signals(engine: &Arc<Engine>, mut on_hup: impl FnMut()) {
    let mut signals = match signal_hook::iterator::Signals::new([SIGHUP, SIGTERM, SIGINT]) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install signal handlers");
            return;
        }
    };
    for signal in signals.forever() {
        match signal {
            SIGHUP => on_hup(),
            _ => break,
        }
    }
    tracing::info!("shutting down: readiness 503, listeners closing, draining live connections");
    engine.shutdown();
    std::thread::spawn(move || {
        if signals.forever().any(|s| s == SIGTERM || s == SIGINT) {
            tracing::warn!("second signal: exiting without waiting for the drain");
            std::process::exit(i32::from(EXIT_RUNTIME));
        }
    });
}

/// SIGHUP: re-read the file; a valid one goes to the control thread, an invalid one is counted and logged.
fn reload(gw: &Running, path: &Path, running: &mut GatewaySettings) {
    match Config::load(path) {
        Ok(config) => {
            let new = &config.gateway;
            if new.listen != running.listen
                || new.admin != running.admin
                || new.workers != running.workers
                || new.io_memory_kib != running.io_memory_kib
                || new.backlog != running.backlog
            {
                tracing::warn!("reload: listen, admin, workers, backlog and io_memory_kib apply only after a restart");
            }
            *running = config.gateway.clone();
            gw.reload(config);
        }
        Err(e) => {
            gw.engine
                .metrics()
                .control
                .reloads_failed
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "reload refused; the running configuration stays");
        }
    }
}

/// Waits for the drain to end.
pub(crate) fn finish(engine: Arc<Engine>) -> ExitCode {
    // The admin thread holds a reference; wait for the cores rather than for the last reference.
    while !engine.finished() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    match Arc::try_unwrap(engine) {
        Ok(engine) => match engine.wait() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "engine failed");
                ExitCode::from(EXIT_RUNTIME)
            }
        },
        Err(_) => {
            tracing::info!("drained");
            ExitCode::SUCCESS
        }
    }
}
