//! A gateway's control plane: it owns the configuration and the plugins, turns catalog changes and
//! reloads into new route-table snapshots for the engine, and counts plugin failures. It runs on its own
//! thread; nothing here touches a data-plane core except [`Engine::install`].
//!
//! Table = the static `[[routes]]` (and fallbacks) first, then the router plugin's routes; a pattern
//! defined statically wins over the same pattern from the plugin. A failing or misbehaving plugin never
//! replaces a good table: the last one keeps serving and the failure is counted by plugin and reason.

use meshgate_config::{Config, PluginSection};
use meshgate_engine::Engine;
use meshgate_plugin::types::{Catalog, CatalogUpdate};
use meshgate_plugin::{CatalogPlugin, Grants, PluginError, PluginHost, RouterPlugin, Sandbox};
use meshgate_route::{LbPolicy, RouteSpec, RouteTable};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Plugin metrics and readiness, shared with the admin endpoint.
pub(crate) struct PluginMetrics {
    registry: Registry,
    failures: IntCounterVec,
    pub(crate) calls: IntCounterVec,
    catalog_version: IntGauge,
    plugin_routes: IntGauge,
    /// False while plugins are configured but no plugin table has been installed yet.
    pub(crate) table_ready: AtomicBool,
}

impl PluginMetrics {
    pub(crate) fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let failures = IntCounterVec::new(
            Opts::new(
                "meshgate_plugin_failures_total",
                "Plugin calls that failed, by plugin and reason (load, trap, deadline, memory, error, invalid).",
            ),
            &["plugin", "reason"],
        )?;
        let calls = IntCounterVec::new(
            Opts::new("meshgate_plugin_calls_total", "Plugin calls, by plugin."),
            &["plugin"],
        )?;
        let catalog_version = IntGauge::new(
            "meshgate_catalog_version",
            "Version of the catalog in force, as the catalog plugin numbers it (low 63 bits).",
        )?;
        let plugin_routes = IntGauge::new(
            "meshgate_plugin_routes",
            "Routes in the active table that came from the router plugin.",
        )?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(calls.clone()))?;
        registry.register(Box::new(catalog_version.clone()))?;
        registry.register(Box::new(plugin_routes.clone()))?;
        Ok(Self {
            registry,
            failures,
            calls,
            catalog_version,
            plugin_routes,
            table_ready: AtomicBool::new(true),
        })
    }

    /// Prometheus text of these metrics.
    pub(crate) fn render(&self) -> String {
        meshgate_engine::stats::encode(self.registry.gather())
    }

    pub(crate) fn failed(&self, e: &PluginError, plugin: &str) {
        self.failures.with_label_values(&[plugin, e.reason()]).inc();
    }
}

struct Plugins {
    catalog: CatalogPlugin,
    catalog_section: PluginSection,
    router: RouterPlugin,
    router_section: PluginSection,
}

/// Logs a failure once per distinct message: control loops poll every few hundred milliseconds and
/// would repeat it; `consequence` says what keeps running meanwhile.
pub(crate) struct Reporter {
    consequence: &'static str,
    last: Option<String>,
}

impl Reporter {
    pub(crate) fn new(consequence: &'static str) -> Reporter {
        Reporter {
            consequence,
            last: None,
        }
    }

    pub(crate) fn report(&mut self, message: String) {
        if self.last.as_deref() != Some(message.as_str()) {
            tracing::warn!(error = %message, "{}", self.consequence);
            self.last = Some(message);
        }
    }

    /// A success: the next failure is logged even if it repeats the last one.
    pub(crate) fn clear(&mut self) {
        self.last = None;
    }
}

/// Loads a catalog and a router plugin in their sandboxes; an error names the section.
pub(crate) fn load_catalog_and_router(
    host: &PluginHost,
    catalog: &PluginSection,
    router: &PluginSection,
    base_dir: &std::path::Path,
) -> Result<(CatalogPlugin, RouterPlugin), String> {
    let catalog = host
        .catalog(&catalog.plugin, sandbox(catalog, base_dir, None))
        .map_err(|e| format!("[catalog] {e}"))?;
    let router = host
        .router(&router.plugin, sandbox(router, base_dir, None))
        .map_err(|e| format!("[router] {e}"))?;
    Ok((catalog, router))
}

/// The catalog plugin's latest answer.
pub(crate) type Versioned = Option<(u64, Catalog)>;

/// One poll of a catalog plugin: `Ok(true)` when a new catalog replaced `current`.
pub(crate) fn poll_catalog(
    plugin: &mut CatalogPlugin,
    section: &PluginSection,
    current: &mut Versioned,
    metrics: &PluginMetrics,
) -> Result<bool, String> {
    let since = current.as_ref().map_or(0, |c| c.0);
    let name = plugin.name().to_owned();
    metrics.calls.with_label_values(&[&name]).inc();
    match plugin.fetch(&section.settings(), since) {
        Ok(CatalogUpdate::Unchanged) => Ok(false),
        Ok(CatalogUpdate::Changed((version, catalog))) => {
            tracing::info!(plugin = %name, version, instances = catalog.instances.len(), "catalog changed");
            metrics
                .catalog_version
                .set(i64::try_from(version & (u64::MAX >> 1)).unwrap_or(0));
            *current = Some((version, catalog));
            Ok(true)
        }
        Err(e) => {
            metrics.failed(&e, &name);
            Err(e.to_string())
        }
    }
}

/// The control plane of one gateway.
pub(crate) struct Control {
    config: Config,
    host: Option<PluginHost>,
    plugins: Option<Plugins>,
    catalog: Option<(u64, Catalog)>,
    /// A catalog or config arrived that is not in the installed table yet.
    dirty: bool,
    errors: Reporter,
    pub(crate) metrics: Arc<PluginMetrics>,
}

/// The sandbox a plugin section asks for; `max_deadline` caps the deadline (connection hooks).
pub(crate) fn sandbox(
    section: &PluginSection,
    base_dir: &std::path::Path,
    max_deadline: Option<Duration>,
) -> Sandbox {
    let deadline = Duration::from_millis(section.deadline_ms);
    Sandbox {
        deadline: max_deadline.map_or(deadline, |m| deadline.min(m)),
        memory: usize::try_from(section.memory_mib << 20).unwrap_or(usize::MAX),
        grants: Grants {
            base: base_dir.to_owned(),
            dirs: section.allow_dirs.clone(),
            origins: section.allow_origins.clone(),
            env: section.allow_env.clone(),
        },
    }
}

impl Control {
    /// Loads the plugins the config names (a plugin that cannot load is a config error).
    pub(crate) fn new(config: Config) -> Result<Control, String> {
        let metrics = Arc::new(PluginMetrics::new().map_err(|e| e.to_string())?);
        let mut control = Control {
            config,
            host: None,
            plugins: None,
            catalog: None,
            dirty: true,
            errors: Reporter::new("plugin failure; the last good route table keeps serving"),
            metrics,
        };
        control.plugins = control.load_plugins(&control.config.clone())?;
        if control.plugins.is_some() {
            control.metrics.table_ready.store(false, Ordering::Relaxed);
        }
        Ok(control)
    }

    fn load_plugins(&mut self, config: &Config) -> Result<Option<Plugins>, String> {
        let (Some(catalog_section), Some(router_section)) =
            (config.catalog.clone(), config.router_section())
        else {
            return Ok(None);
        };
        if self.host.is_none() {
            self.host = Some(PluginHost::new().map_err(|e| e.to_string())?);
        }
        let host = self.host.as_ref().ok_or("no plugin host")?;
        let (catalog, router) =
            load_catalog_and_router(host, &catalog_section, &router_section, &config.base_dir)?;
        Ok(Some(Plugins {
            catalog,
            catalog_section,
            router,
            router_section,
        }))
    }

    /// How often to poll the catalog.
    pub(crate) fn poll_interval(&self) -> Duration {
        self.plugins
            .as_ref()
            .map_or(Duration::from_secs(3600), |p| {
                Duration::from_millis(p.catalog_section.poll_ms)
            })
    }

    /// The table to start with: static routes plus whatever the plugins give on a first try.
    pub(crate) fn initial_table(&mut self) -> Result<RouteTable, String> {
        self.poll_catalog();
        match self.compute() {
            Ok(t) => {
                if self.catalog.is_some() {
                    self.metrics.table_ready.store(true, Ordering::Relaxed);
                }
                self.dirty = self.plugins.is_some() && self.catalog.is_none();
                Ok(t)
            }
            Err(e) => {
                tracing::warn!(error = %e, "starting with the static routes only");
                self.config.route_table().map_err(|e| e.to_string())
            }
        }
    }

    /// One poll: fetch the catalog and install a new table if anything changed.
    pub(crate) fn tick(&mut self, engine: &Engine) {
        self.poll_catalog();
        if self.dirty {
            self.recompute(engine);
        }
    }

    /// A new configuration (SIGHUP). Returns false when it was refused.
    pub(crate) fn reload(&mut self, config: Config, engine: &Engine) -> bool {
        let sections_changed = config.catalog != self.config.catalog
            || config.router_section() != self.config.router_section()
            || config.base_dir != self.config.base_dir;
        if sections_changed {
            match self.load_plugins(&config) {
                Ok(p) => {
                    self.plugins = p;
                    self.catalog = None;
                }
                Err(e) => {
                    tracing::error!(error = %e, "reload refused: plugin cannot load; the running configuration stays");
                    return false;
                }
            }
        }
        self.config = config;
        self.poll_catalog();
        self.recompute(engine);
        true
    }

    fn poll_catalog(&mut self) {
        let Some(p) = &mut self.plugins else { return };
        match poll_catalog(
            &mut p.catalog,
            &p.catalog_section,
            &mut self.catalog,
            &self.metrics,
        ) {
            Ok(changed) => self.dirty |= changed,
            Err(e) => self.errors.report(e),
        }
    }

    fn recompute(&mut self, engine: &Engine) {
        match self.compute() {
            Ok(table) => {
                let routes = table.len();
                engine.install(table, self.config.gateway.clone());
                if self.catalog.is_some() || self.plugins.is_none() {
                    self.dirty = false;
                    self.metrics.table_ready.store(true, Ordering::Relaxed);
                }
                self.errors.clear();
                tracing::info!(routes, "route table installed");
            }
            Err(e) => self.errors.report(e),
        }
    }

    /// Static routes, then the router plugin's.
    fn compute(&mut self) -> Result<RouteTable, String> {
        let mut builder = self.config.route_builder().map_err(|e| e.to_string())?;
        let mut from_plugin = 0;
        if let (Some(p), Some((_, catalog))) = (&mut self.plugins, &self.catalog) {
            let name = p.router.name().to_owned();
            self.metrics.calls.with_label_values(&[&name]).inc();
            let routes = p
                .router
                .gateway_routes(
                    &p.router_section.settings(),
                    catalog,
                    &self.config.gateway.datacenter,
                )
                .inspect_err(|e| self.metrics.failed(e, &name))
                .map_err(|e| e.to_string())?;
            let invalid = |message: String| {
                let e = PluginError::Invalid {
                    plugin: name.clone(),
                    message,
                };
                self.metrics.failed(&e, &name);
                e.to_string()
            };
            for r in routes {
                if builder.contains(&r.pattern) {
                    tracing::debug!(pattern = %r.pattern, "static route wins over the plugin's");
                    continue;
                }
                let mut endpoints = Vec::new();
                for e in &r.endpoints {
                    let addrs = e.to_socket_addrs().map_err(|err| {
                        invalid(format!("route {}: endpoint {e}: {err}", r.pattern))
                    })?;
                    endpoints.extend(addrs);
                }
                builder
                    .add(RouteSpec {
                        pattern: r.pattern.clone(),
                        groups: vec![endpoints],
                        lb: LbPolicy::RoundRobin,
                        connect_timeout: None,
                        source: format!("plugin {name}: {}", r.reason),
                    })
                    .map_err(|err| invalid(err.to_string()))?;
                from_plugin += 1;
            }
        }
        self.metrics.plugin_routes.set(from_plugin);
        Ok(builder.build())
    }
}
