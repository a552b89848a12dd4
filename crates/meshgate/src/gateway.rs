//! `meshgate gateway` and `meshgate check`: load the config, start the engine and the admin endpoint,
//! and turn signals into reloads and drains.

use meshgate_admin::AdminSource;
use meshgate_config::{Config, GatewaySettings};
use meshgate_engine::Engine;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Exit code for a configuration that cannot be used.
const EXIT_CONFIG: u8 = 2;
/// Exit code when the engine cannot start or fails.
const EXIT_RUNTIME: u8 = 1;

/// The admin endpoint's view of a running gateway.
pub(crate) struct Admin(pub(crate) Arc<Engine>);

impl AdminSource for Admin {
    fn metrics(&self) -> String {
        self.0.metrics().render()
    }
    fn ready(&self) -> bool {
        self.0.ready()
    }
    fn routes_json(&self) -> String {
        let snap = self.0.snapshot();
        serde_json::to_string_pretty(&snap.table)
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// `meshgate check FILE`.
pub(crate) fn check(file: &Path) -> ExitCode {
    match Config::load(file) {
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

/// Starts an engine and its admin endpoint from a parsed config.
pub(crate) fn start(
    config: &Config,
) -> Result<(Arc<Engine>, Option<meshgate_admin::AdminServer>), String> {
    let table = config.route_table().map_err(|e| e.to_string())?;
    let engine = Arc::new(Engine::start(config.gateway.clone(), table).map_err(|e| e.to_string())?);
    let admin = match config.gateway.admin {
        Some(addr) => Some(
            meshgate_admin::serve(addr, Arc::new(Admin(engine.clone())))
                .map_err(|e| format!("admin endpoint {addr}: {e}"))?,
        ),
        None => None,
    };
    Ok((engine, admin))
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
    let (engine, admin) = match start(&config) {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    tracing::info!(
        gateway = %config.gateway.name,
        datacenter = %config.gateway.datacenter,
        listen = ?config.gateway.listen,
        admin = ?admin.as_ref().map(|a| a.local_addr()),
        workers = engine.workers(),
        routes = engine.snapshot().table.len(),
        "meshgate gateway ready"
    );
    serve_signals(&engine, Some(path.to_owned()), config.gateway);
    finish(engine)
}

/// Handles SIGHUP (reload `path`) until SIGTERM/SIGINT, then starts the drain. A second SIGTERM/SIGINT
/// during the drain exits at once.
pub(crate) fn serve_signals(
    engine: &Arc<Engine>,
    path: Option<PathBuf>,
    mut running: GatewaySettings,
) {
    let mut signals = match signal_hook::iterator::Signals::new([SIGHUP, SIGTERM, SIGINT]) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install signal handlers");
            return;
        }
    };
    for signal in signals.forever() {
        match signal {
            SIGHUP => match &path {
                Some(p) => reload(engine, p, &mut running),
                None => tracing::info!("SIGHUP: nothing to reload"),
            },
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

fn reload(engine: &Engine, path: &Path, running: &mut GatewaySettings) {
    let control = engine.metrics().control;
    match Config::load(path).and_then(|c| {
        let table = c.route_table().map_err(|e| {
            meshgate_config::LoadError::Invalid(meshgate_config::ConfigError {
                file: path.to_owned(),
                line: 0,
                column: 0,
                field: "routes".into(),
                message: e.to_string(),
            })
        })?;
        Ok((c, table))
    }) {
        Ok((config, table)) => {
            let new = &config.gateway;
            if new.listen != running.listen
                || new.admin != running.admin
                || new.workers != running.workers
                || new.io_memory_kib != running.io_memory_kib
                || new.backlog != running.backlog
            {
                tracing::warn!("reload: listen, admin, workers, backlog and io_memory_kib apply only after a restart");
            }
            let routes = table.len();
            engine.install(table, config.gateway.clone());
            *running = config.gateway;
            control.reloads_ok.fetch_add(1, Ordering::Relaxed);
            tracing::info!(file = %path.display(), routes, "configuration reloaded");
        }
        Err(e) => {
            control.reloads_failed.fetch_add(1, Ordering::Relaxed);
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
