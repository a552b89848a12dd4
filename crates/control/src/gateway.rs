//! A gateway's control plane and its runner. [`GatewayControl`] owns the configuration and the plugins
//! and turns catalog changes and reloads into route tables, which it hands to a [`Publish`] sink (the
//! engine, or a test). [`start`] wires it to the engine and the admin endpoint on a control thread of its
//! own; [`run`] is `meshgate gateway`: start, reload on SIGHUP, drain on SIGTERM. With a Consul agent
//! (`[consul]`, a watch-catalog plugin such as `consul-catalog`), answers of the Consul watches wake the
//! control thread at once, and the gateway registers itself (`[consul.register]` or `--register`),
//! enters maintenance before draining and deregisters after. With a polled catalog (a file catalog), an
//! edit under its granted directories wakes the control thread at once too ([`crate::dirwatch`]); each
//! installed table is logged with where its making spent the time (fetch, router, build, install).
//!
//! Table = the static `[[routes]]` (and fallbacks) first, then the router plugin's routes; a pattern
//! defined statically wins over the same pattern from the plugin. A failing or misbehaving plugin never
//! replaces a good table: the last one keeps serving and the failure is counted by plugin and reason.

use crate::clock::{Clock, Schedule, SystemClock};
use crate::consul::register::{self, Registrar};
use crate::consul::watches::Waker;
use crate::delta::Change;
use crate::dirwatch::DirWatch;
use crate::error::ControlError;
use crate::plugins::{self, CatalogWatch, ConsulLink, PluginMetrics, Reporter, Router};
use crate::signals::{Signal, Signals};
use meshgate_admin::AdminSource;
use meshgate_config::{Config, GatewaySettings, PluginSection};
use meshgate_engine::hook::HookFactory;
use meshgate_engine::Engine;
use meshgate_plugin::types::{CatalogChange, Route};
use meshgate_plugin::{PluginError, PluginHost};
use meshgate_route::{LbPolicy, RouteSpec, RouteTable, RouteTableBuilder};
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where new route tables (and a replaced connection hook) go.
pub trait Publish {
    /// Installs `table` (and the settings that apply to new connections) for new connections.
    fn install(&self, table: RouteTable, settings: GatewaySettings);

    /// Replaces the connection hook for new connections (`None`: no hook). A sink without a data
    /// plane (a test's) ignores it.
    fn set_hook(&self, _hook: Option<HookFactory>) {}
}

impl Publish for Engine {
    fn install(&self, table: RouteTable, settings: GatewaySettings) {
        Engine::install(self, table, settings);
    }

    fn set_hook(&self, hook: Option<HookFactory>) {
        Engine::set_hook(self, hook);
    }
}

/// The control plane of one gateway.
pub struct GatewayControl {
    config: Config,
    host: Option<PluginHost>,
    plugins: Option<(CatalogWatch, Router)>,
    /// A catalog or config arrived that is not in the installed table yet.
    dirty: bool,
    errors: Reporter,
    metrics: Arc<PluginMetrics>,
    waker: Waker,
    /// What the plugin files held when loaded (catalog, router, hook), so a SIGHUP notices a file
    /// rebuilt under the same name.
    files: PluginFiles,
    /// Where the table being made spent its time, logged with it (what a catalog change costs).
    phases: Phases,
    /// An incremental router's routes and the table they were patched into.
    incremental: Incremental,
}

/// What the gateway keeps for an incremental router (world `incremental-router-plugin`), so a catalog
/// delta costs the routes it touches: the router's routes by pattern, whether its instance holds the
/// catalog the host has, and the last table made (the base of the next patch).
#[derive(Default)]
struct Incremental {
    /// The router's routes, as given (a pattern the static routes define is kept here but not used).
    specs: HashMap<String, RouteSpec>,
    /// The router instance was told the host's catalog (whole, then every delta since).
    synced: bool,
    /// The last table made from the static routes and `specs`; `None`: make the next one whole (after
    /// a reload, whose static routes may differ, or a failure).
    table: Option<RouteTable>,
}

impl Incremental {
    /// Forget everything: the next table is made from the whole catalog.
    fn reset(&mut self) {
        *self = Incremental::default();
    }
}

/// Wall-clock time of each step from a catalog change to its installed table, on the control thread.
#[derive(Debug, Default, Clone, Copy)]
struct Phases {
    /// The catalog plugin's fetch (or plan) that brought the change, its answer lifted into the host.
    fetch: Duration,
    /// The router plugin's `gateway-routes`, the catalog lowered into it and its routes lifted back.
    router: Duration,
    /// Static routes plus the router's, compiled into a table.
    build: Duration,
}

/// How long a reload that changes the catalog source waits for the new one's first catalog.
const RELOAD_PRIME: Duration = Duration::from_secs(5);

impl GatewayControl {
    /// Loads the plugins the config names (a plugin that cannot load is the config's fault).
    pub fn new(config: Config) -> Result<GatewayControl, ControlError> {
        Self::with_waker(config, Arc::new(|| {}))
    }

    /// As [`GatewayControl::new`]; `waker` is called (from another thread) whenever a watch-fed
    /// catalog has new answers, so the caller can [`GatewayControl::tick`] at once.
    pub fn with_waker(config: Config, waker: Waker) -> Result<GatewayControl, ControlError> {
        let metrics = Arc::new(PluginMetrics::new()?);
        let mut control = GatewayControl {
            config,
            host: None,
            plugins: None,
            dirty: true,
            errors: Reporter::new("plugin failure; the last good route table keeps serving"),
            metrics,
            waker,
            files: PluginFiles::default(),
            phases: Phases::default(),
            incremental: Incremental::default(),
        };
        control.files = PluginFiles::of(&control.config);
        control.plugins = control.load_plugins(&control.config.clone())?;
        if control.plugins.is_some() {
            control.metrics.table_ready.store(false, Ordering::Relaxed);
        }
        Ok(control)
    }

    /// The plugin metrics and readiness, for the admin endpoint.
    pub fn metrics(&self) -> Arc<PluginMetrics> {
        self.metrics.clone()
    }

    fn load_plugins(
        &mut self,
        config: &Config,
    ) -> Result<Option<(CatalogWatch, Router)>, ControlError> {
        let Some((catalog, router)) = plugin_sections(config) else {
            return Ok(None);
        };
        // A clone (two reference counts) so the metrics and the waker can be borrowed beside it.
        let host = self.host()?.clone();
        let link = ConsulLink {
            section: config.consul.as_ref(),
            waker: self.waker.clone(),
        };
        let (mut watch, router) = plugins::load_catalog_and_router(
            &host,
            &catalog,
            &router,
            &config.base_dir,
            &self.metrics,
            &link,
        )?;
        if router.plugin.is_incremental() {
            watch.track_changes();
        }
        Ok(Some((watch, router)))
    }

    /// The process's plugin host, made on first use: the catalog, the router and the hook share its
    /// engine and epoch thread.
    fn host(&mut self) -> Result<&PluginHost, ControlError> {
        match self.host {
            Some(ref h) => Ok(h),
            None => Ok(self.host.insert(plugins::host()?)),
        }
    }

    /// The `[hook]` of `config`, made and configured with the shared plugin host (`None`: no hook).
    pub fn hook_factory(&mut self, config: &Config) -> Result<Option<HookFactory>, ControlError> {
        if config.hook.is_none() {
            return Ok(None);
        }
        crate::hook::factory(config, self.host()?)
    }

    /// How often to poll the catalog.
    pub fn poll_interval(&self) -> Duration {
        self.plugins
            .as_ref()
            .map_or(Duration::from_secs(3600), |(c, _)| c.poll_interval())
    }

    /// The table to start with: static routes plus whatever the plugins give on a first try.
    pub fn initial_table(&mut self) -> Result<RouteTable, ControlError> {
        self.poll_catalog(None);
        match self.compute() {
            Ok(t) => {
                let have_catalog = self.have_catalog();
                if have_catalog {
                    self.metrics.table_ready.store(true, Ordering::Relaxed);
                }
                self.dirty = self.plugins.is_some() && !have_catalog;
                Ok(t)
            }
            Err(e) => {
                tracing::warn!(error = %e, "starting with the static routes only");
                self.config
                    .route_table()
                    .map_err(|e| ControlError::Config(e.to_string()))
            }
        }
    }

    /// One poll: fetch the catalog and install a new table if anything changed.
    pub fn tick(&mut self, sink: &dyn Publish) {
        self.tick_with(sink, None);
    }

    /// As [`GatewayControl::tick`], telling the catalog plugin which files changed since the previous
    /// poll (`changed-files`; `None`: unknown, the plugin looks at everything).
    pub fn tick_with(&mut self, sink: &dyn Publish, changed_files: Option<Vec<String>>) {
        self.poll_catalog(changed_files);
        if self.dirty {
            self.recompute(sink);
        }
    }

    /// A new configuration (SIGHUP). Returns false when it was refused; then the running configuration,
    /// its plugins and the installed table all stay. A reload that changes the plugin sections is taken
    /// only once the new catalog plugin has answered and the new table compiles: a catalog that cannot
    /// be read must not replace the last good one with static routes alone.
    pub fn reload(&mut self, config: Config, sink: &dyn Publish) -> bool {
        let files = PluginFiles::of(&config);
        let sections_changed = config.catalog != self.config.catalog
            || config.router_section() != self.config.router_section()
            || config.base_dir != self.config.base_dir
            || config.consul != self.config.consul
            || files.catalog != self.files.catalog
            || files.router != self.files.router;
        // A changed `[hook]` or hook file: made, instantiated and configured here first, so a hook
        // that cannot load or refuses its settings refuses the reload and the running one stays.
        let hook = if config.hook != self.config.hook || files.hook != self.files.hook {
            match self.hook_factory(&config) {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::error!(error = %e, "reload refused: the connection hook cannot load; the running configuration stays");
                    return false;
                }
            }
        } else {
            None
        };
        let mut staged = None;
        if sections_changed {
            let mut plugins = match self.load_plugins(&config) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "reload refused: plugin cannot load; the running configuration stays");
                    return false;
                }
            };
            if let Some((watch, _)) = &mut plugins {
                match watch.prime(&self.metrics, RELOAD_PRIME) {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::error!(within = ?RELOAD_PRIME, "reload refused: the new catalog gave nothing in time; the running configuration and its table stay");
                        return false;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "reload refused: the new catalog cannot be read; the running configuration and its table stay");
                        return false;
                    }
                }
            }
            staged = Some(plugins);
        }
        let old_config = std::mem::replace(&mut self.config, config);
        let old_plugins = staged.map(|p| std::mem::replace(&mut self.plugins, p));
        // The static routes may differ, or the router: the next table is made whole.
        self.incremental.reset();
        if old_plugins.is_none() {
            self.poll_catalog(None);
        }
        match self.compute() {
            Ok(table) => {
                self.publish(table, sink);
                if let Some(hook) = hook {
                    tracing::info!(
                        hook = config_hook_name(&self.config),
                        "connection hook replaced"
                    );
                    sink.set_hook(hook);
                }
                self.files = files;
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "reload refused: the new route table does not compile; the running configuration and its table stay");
                self.config = old_config;
                if let Some(p) = old_plugins {
                    self.plugins = p;
                }
                false
            }
        }
    }

    /// Whether the catalog comes from a Consul agent (a watch-catalog plugin).
    pub fn uses_consul(&self) -> bool {
        self.metrics.consul_if_used().is_some()
    }

    fn have_catalog(&self) -> bool {
        self.plugins
            .as_ref()
            .is_some_and(|(c, _)| c.current().is_some())
    }

    fn poll_catalog(&mut self, changed_files: Option<Vec<String>>) {
        let Some((catalog, _)) = &mut self.plugins else {
            return;
        };
        let started = Instant::now();
        match catalog.poll(&self.metrics, changed_files) {
            Ok(changed) => {
                if changed {
                    self.phases.fetch = started.elapsed();
                }
                self.dirty |= changed;
            }
            Err(e) => {
                self.errors.report(e.to_string());
            }
        }
    }

    fn recompute(&mut self, sink: &dyn Publish) {
        match self.compute() {
            Ok(table) => self.publish(table, sink),
            Err(e) => {
                self.phases = Phases::default();
                self.errors.report(e.to_string());
            }
        }
    }

    fn publish(&mut self, table: RouteTable, sink: &dyn Publish) {
        let routes = table.len();
        let started = Instant::now();
        sink.install(table, self.config.gateway.clone());
        let install = started.elapsed();
        if self.have_catalog() || self.plugins.is_none() {
            self.dirty = false;
            self.metrics.table_ready.store(true, Ordering::Relaxed);
        }
        self.errors.clear();
        let phases = std::mem::take(&mut self.phases);
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        tracing::info!(
            routes,
            fetch_us = us(phases.fetch),
            router_us = us(phases.router),
            build_us = us(phases.build),
            install_us = us(install),
            "route table installed"
        );
    }

    /// Static routes, then the router plugin's.
    fn compute(&mut self) -> Result<RouteTable, ControlError> {
        let started = Instant::now();
        let mut router_time = Duration::ZERO;
        let builder = self
            .config
            .route_builder()
            .map_err(|e| ControlError::Config(e.to_string()))?;
        let static_len = builder.len();
        let incremental = self
            .plugins
            .as_ref()
            .is_some_and(|(w, r)| r.plugin.is_incremental() && w.current().is_some());
        let made = if incremental {
            self.compute_incremental(builder, &mut router_time)
        } else {
            self.compute_whole(builder, &mut router_time)
        };
        let table = match made {
            Ok(t) => t,
            Err(e) => {
                self.incremental.reset();
                return Err(e);
            }
        };
        self.metrics
            .plugin_routes
            .set(i64::try_from(table.len().saturating_sub(static_len)).unwrap_or(i64::MAX));
        self.phases.router = router_time;
        self.phases.build = started.elapsed().saturating_sub(router_time);
        Ok(table)
    }

    /// The table from the router's `gateway-routes` over the whole catalog (a router that is not
    /// incremental, or no catalog yet).
    fn compute_whole(
        &mut self,
        mut builder: RouteTableBuilder,
        router_time: &mut Duration,
    ) -> Result<RouteTable, ControlError> {
        let Some((watch, router)) = &mut self.plugins else {
            return Ok(builder.build());
        };
        let Some(catalog) = watch.current() else {
            return Ok(builder.build());
        };
        let name = router.plugin.name().to_owned();
        self.metrics.called(&name);
        let called = Instant::now();
        let routes = router
            .plugin
            .gateway_routes(
                &router.section.settings(),
                catalog,
                &self.config.gateway.datacenter,
            )
            .map_err(|e| router_error(&self.metrics, &name, e))?;
        *router_time = called.elapsed();
        for r in &routes {
            if builder.contains(&r.pattern) {
                tracing::debug!(pattern = %r.pattern, "static route wins over the plugin's");
                continue;
            }
            let spec = route_spec(r, &name).map_err(|m| invalid(&self.metrics, &name, m))?;
            builder
                .add(spec)
                .map_err(|err| invalid(&self.metrics, &name, err.to_string()))?;
        }
        Ok(builder.build())
    }

    /// The table from an incremental router: the whole catalog to an instance that does not hold it,
    /// else only what moved; the routes it answers patched into the last table (made whole when there
    /// is none to patch).
    fn compute_incremental(
        &mut self,
        builder: RouteTableBuilder,
        router_time: &mut Duration,
    ) -> Result<RouteTable, ControlError> {
        let Some((watch, router)) = &mut self.plugins else {
            return Ok(builder.build());
        };
        let change = watch.take_change();
        let Some(catalog) = watch.current() else {
            return Ok(builder.build());
        };
        let state = &mut self.incremental;
        let whole = !state.synced || !router.plugin.is_live() || change == Change::Whole;
        let change = if whole {
            Some(CatalogChange::Whole(catalog.clone()))
        } else {
            match change {
                Change::Delta(d) if !crate::delta::is_empty(&d) => Some(CatalogChange::Delta(d)),
                _ => None,
            }
        };
        let name = router.plugin.name().to_owned();
        let Some(change) = change else {
            // Nothing moved for the router (a reload of the static routes, or an empty delta).
            return match &state.table {
                Some(t) => Ok(t.clone()),
                None => whole_table(builder, &state.specs, &mut state.table),
            };
        };
        self.metrics.called(&name);
        let called = Instant::now();
        // Whatever happens next, the instance holds this change only if the host keeps it too.
        state.synced = false;
        let answer = router
            .plugin
            .update_routes(
                &router.section.settings(),
                &change,
                &self.config.gateway.datacenter,
            )
            .map_err(|e| router_error(&self.metrics, &name, e))?;
        *router_time = called.elapsed();
        let fail = |m: String| invalid(&self.metrics, &name, m);
        if whole {
            let mut specs = HashMap::with_capacity(answer.upserts.len());
            for r in &answer.upserts {
                let spec = route_spec(r, &name).map_err(fail)?;
                if specs.insert(r.pattern.clone(), spec).is_some() {
                    return Err(fail(format!("route `{}` is defined twice", r.pattern)));
                }
            }
            state.specs = specs;
            let table = whole_table(builder, &state.specs, &mut state.table)?;
            state.synced = true;
            return Ok(table);
        }
        let mut removed = Vec::new();
        for p in answer.removed {
            if state.specs.remove(&p).is_some() && !builder.contains(&p) {
                removed.push(p);
            }
        }
        let mut upserts = Vec::with_capacity(answer.upserts.len());
        for r in &answer.upserts {
            let spec = route_spec(r, &name).map_err(fail)?;
            if !builder.contains(&r.pattern) {
                upserts.push(spec.clone());
            }
            state.specs.insert(r.pattern.clone(), spec);
        }
        let table = match &state.table {
            Some(base) => base
                .patched(&removed, upserts)
                .map_err(|e| fail(e.to_string()))?,
            None => whole_table(builder, &state.specs, &mut state.table)?,
        };
        state.table = Some(table.clone());
        state.synced = true;
        Ok(table)
    }
}

/// The static routes, then every route of `specs` whose pattern they do not define (in pattern
/// order); kept in `last` as the next patch's base.
fn whole_table(
    mut builder: RouteTableBuilder,
    specs: &HashMap<String, RouteSpec>,
    last: &mut Option<RouteTable>,
) -> Result<RouteTable, ControlError> {
    let mut sorted: Vec<&RouteSpec> = specs.values().collect();
    sorted.sort_unstable_by(|a, b| a.pattern.cmp(&b.pattern));
    for spec in sorted {
        if builder.contains(&spec.pattern) {
            continue;
        }
        builder
            .add(spec.clone())
            .map_err(|e| ControlError::Plugin {
                section: "[router]",
                source: PluginError::Invalid {
                    plugin: spec.source.clone(),
                    message: e.to_string(),
                },
            })?;
    }
    let table = builder.build();
    *last = Some(table.clone());
    Ok(table)
}

/// A router call's failure, counted.
fn router_error(metrics: &PluginMetrics, name: &str, source: PluginError) -> ControlError {
    metrics.failed(&source, name);
    ControlError::Plugin {
        section: "[router]",
        source,
    }
}

/// A router's answer the host refuses, counted.
fn invalid(metrics: &PluginMetrics, name: &str, message: String) -> ControlError {
    router_error(
        metrics,
        name,
        PluginError::Invalid {
            plugin: name.to_owned(),
            message,
        },
    )
}

/// A router's route as the table takes it: each endpoint resolved (a name with several addresses
/// gives each the endpoint's weight), the failover groups after the first, in order.
fn route_spec(r: &Route, plugin: &str) -> Result<RouteSpec, String> {
    if !r.weights.is_empty() && r.weights.len() != r.endpoints.len() {
        return Err(format!(
            "route {}: {} weights for {} endpoints",
            r.pattern,
            r.weights.len(),
            r.endpoints.len()
        ));
    }
    let mut groups = Vec::with_capacity(1 + r.failover.len());
    let mut weights = Vec::new();
    for (g, group) in std::iter::once(&r.endpoints).chain(&r.failover).enumerate() {
        let mut endpoints = Vec::with_capacity(group.len());
        for (i, e) in group.iter().enumerate() {
            // An IP literal (what routers give) needs no resolver.
            let addrs: Vec<SocketAddr> = match e.parse::<SocketAddr>() {
                Ok(a) => vec![a],
                Err(_) => e
                    .to_socket_addrs()
                    .map_err(|err| format!("route {}: endpoint {e}: {err}", r.pattern))?
                    .collect(),
            };
            if g == 0 {
                if let Some(w) = r.weights.get(i) {
                    weights.extend(std::iter::repeat_n(*w, addrs.len()));
                }
            }
            endpoints.extend(addrs);
        }
        groups.push(endpoints);
    }
    Ok(RouteSpec {
        pattern: r.pattern.clone(),
        groups,
        // Only the first group is weighted (empty: all equal).
        weights: if weights.is_empty() {
            Vec::new()
        } else {
            vec![weights]
        },
        lb: LbPolicy::RoundRobin,
        connect_timeout: None,
        source: format!("plugin {plugin}: {}", r.reason),
    })
}

/// A digest of each plugin file a config names (`None` for a shipped plugin, or a file that cannot be
/// read: loading it says why).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct PluginFiles {
    catalog: Option<u64>,
    router: Option<u64>,
    hook: Option<u64>,
}

impl PluginFiles {
    fn of(config: &Config) -> PluginFiles {
        let digest = |section: Option<&PluginSection>| {
            let plugin = &section?.plugin;
            if meshgate_plugin::SHIPPED.iter().any(|(n, _)| n == plugin) {
                return None;
            }
            let bytes = std::fs::read(config.base_dir.join(plugin)).ok()?;
            let mut h = std::collections::hash_map::DefaultHasher::new();
            std::hash::Hash::hash(&bytes, &mut h);
            Some(std::hash::Hasher::finish(&h))
        };
        PluginFiles {
            catalog: digest(config.catalog.as_ref()),
            router: digest(config.router_section().as_ref()),
            hook: digest(config.hook.as_ref()),
        }
    }
}

fn config_hook_name(config: &Config) -> &str {
    config.hook.as_ref().map_or("(none)", |h| h.plugin.as_str())
}

/// The catalog and router sections as the plugins see them. A gateway registered with
/// `expose_servers` carries WAN federation (Consul's `-expose-servers`), so both plugins are told so
/// (`wan_federation = "true"`) unless their own `config` says otherwise.
pub fn plugin_sections(config: &Config) -> Option<(PluginSection, PluginSection)> {
    let (mut catalog, mut router) = (config.catalog.clone()?, config.router_section()?);
    let exposes = config
        .consul
        .as_ref()
        .and_then(|c| c.register.as_ref())
        .is_some_and(|r| r.expose_servers);
    if exposes {
        for section in [&mut catalog, &mut router] {
            section
                .config
                .entry("wan_federation".into())
                .or_insert_with(|| toml::Value::String("true".into()));
        }
    }
    Some((catalog, router))
}

/// The control plane's part of readiness: a table from the plugins and, with Consul, the ACL
/// preflight passed (a token that cannot read gets empty answers, which would otherwise look like a
/// ready, empty mesh until the preflight stops the gateway).
fn plugins_ready(plugins: &PluginMetrics) -> bool {
    plugins.table_ready.load(Ordering::Relaxed)
        && plugins
            .consul_if_used()
            .is_none_or(|c| c.preflight_passed.load(Ordering::Relaxed))
}

/// The admin endpoint's view of a running gateway.
struct Admin {
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
        self.engine.ready() && plugins_ready(&self.plugins)
    }
    fn routes_json(&self) -> String {
        let snap = self.engine.snapshot();
        serde_json::to_string_pretty(&snap.table)
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// What the control thread is told.
enum Event {
    /// SIGHUP: a new, already validated configuration.
    Reload(Box<Config>),
    /// Answers from Consul arrived: plan now rather than at the next poll.
    Wake,
}

/// A running gateway: its engine, admin endpoint, control thread and Consul registration.
pub struct Gateway {
    /// The data plane.
    pub engine: Arc<Engine>,
    /// The admin endpoint, when configured.
    pub admin: Option<meshgate_admin::AdminServer>,
    /// The control thread's only strong sender: dropping the gateway ends the thread (wakers hold weak
    /// references, so a watch answering late cannot keep it alive).
    control: Arc<Sender<Event>>,
    registrar: Option<Registrar>,
    metrics: Arc<PluginMetrics>,
}

/// Starts the control plane (plugins, first table), the engine and the admin endpoint.
pub fn start(config: &Config) -> Result<Gateway, ControlError> {
    start_with(config, false, Box::new(|| {}))
}

/// As [`start`]; `register` is `--register` (register even without `[consul.register]`), and
/// `on_fatal` is called when Consul refuses the gateway (a token without the permissions it needs):
/// the runner should then stop, and [`Gateway::fatal`] says why.
pub fn start_with(
    config: &Config,
    register: bool,
    on_fatal: Box<dyn Fn() + Send>,
) -> Result<Gateway, ControlError> {
    let (tx, rx) = std::sync::mpsc::channel::<Event>();
    let tx = Arc::new(tx);
    let weak = Arc::downgrade(&tx);
    let waker: Waker = Arc::new(move || {
        if let Some(tx) = weak.upgrade() {
            let _ = tx.send(Event::Wake);
        }
    });
    let registration = register::registration(config, register)?;
    let mut control = GatewayControl::with_waker(config.clone(), waker.clone())?;
    let table = control.initial_table()?;
    let hook = control.hook_factory(config)?;
    let mut settings = config.gateway.clone();
    if control.uses_consul() || registration.is_some() {
        // A socket per watch (and the registration's), out of the connections' descriptors.
        settings.control_fds = crate::consul::watches::MAX_WATCHES as u64 + 8;
    }
    let engine = Arc::new(Engine::start_with_hook(settings, table, hook)?);
    let metrics = control.metrics();
    let admin = match config.gateway.admin {
        Some(addr) => Some(
            meshgate_admin::serve(
                addr,
                Arc::new(Admin {
                    engine: engine.clone(),
                    plugins: metrics.clone(),
                }),
            )
            .map_err(|e| ControlError::Host(format!("admin endpoint {addr}: {e}")))?,
        ),
        None => None,
    };
    // Registered only now that the listeners are bound, so Consul's TCP check passes at once.
    let registrar = if registration.is_some() || control.uses_consul() {
        let client = Arc::new(crate::consul::client(
            config.consul.as_ref(),
            &config.base_dir,
        )?);
        Some(Registrar::start(
            client,
            registration,
            metrics.consul()?,
            on_fatal,
        )?)
    } else {
        None
    };
    let eng = engine.clone();
    let mut dirwatch = catalog_dirwatch(config, control.uses_consul(), &waker);
    std::thread::Builder::new()
        .name("meshgate-control".into())
        .spawn(move || {
            let clock = SystemClock;
            let mut schedule = Schedule::new(control.poll_interval(), clock.now());
            loop {
                match rx.recv_timeout(schedule.wait(clock.now())) {
                    Ok(Event::Reload(config)) => {
                        let counters = eng.metrics().control;
                        let watch_next = (*config).clone();
                        if control.reload(*config, &*eng) {
                            counters.reloads_ok.fetch_add(1, Ordering::Relaxed);
                            tracing::info!("configuration reloaded");
                            // The catalog's directories may have changed with it.
                            dirwatch = catalog_dirwatch(&watch_next, control.uses_consul(), &waker);
                        } else {
                            counters.reloads_failed.fetch_add(1, Ordering::Relaxed);
                        }
                        schedule.set_interval(control.poll_interval(), clock.now());
                    }
                    Ok(Event::Wake) => {
                        let changed = dirwatch.as_ref().and_then(DirWatch::taken);
                        control.tick_with(&*eng, changed);
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        if schedule.due(clock.now()) {
                            let changed = dirwatch.as_mut().and_then(DirWatch::for_timed_poll);
                            control.tick_with(&*eng, changed);
                        }
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        })
        .map_err(|e| ControlError::Host(format!("control thread: {e}")))?;
    Ok(Gateway {
        engine,
        admin,
        control: tx,
        registrar,
        metrics,
    })
}

/// Watches a polled catalog's granted directories, so an edit wakes the control thread at once (see
/// [`crate::dirwatch`]); none for a Consul-fed catalog, a catalog granted no directory, or where inotify
/// cannot watch (then the poll alone notices edits).
fn catalog_dirwatch(config: &Config, consul: bool, waker: &Waker) -> Option<DirWatch> {
    if consul {
        return None;
    }
    let (catalog, _) = plugin_sections(config)?;
    let dirs: Vec<(PathBuf, String)> = catalog
        .allow_dirs
        .iter()
        .map(|d| (config.base_dir.join(d), d.to_string_lossy().into_owned()))
        .collect();
    if dirs.is_empty() {
        return None;
    }
    match DirWatch::start(&dirs, waker.clone()) {
        Ok(watch) => Some(watch),
        Err(e) => {
            tracing::info!(error = %e, "catalog directories not watched; edits are noticed at the next poll");
            None
        }
    }
}

impl Gateway {
    /// Hands a new configuration to the control thread.
    pub fn reload(&self, config: Config) {
        let _ = self.control.send(Event::Reload(Box::new(config)));
    }

    /// SIGHUP: re-reads `path`; a valid file goes to the control thread, an invalid one is counted and
    /// logged and the running configuration stays. `running` is the configuration the process was started
    /// with: settings that only a restart applies are named in a warning when they changed.
    pub fn reload_file(&self, path: &Path, running: &mut Config) {
        match Config::load(path) {
            Ok(config) => {
                let pending = restart_only_changes(running, &config);
                if !pending.is_empty() {
                    tracing::warn!(
                        changed = %pending.join(", "),
                        "reload: these settings apply only after a restart; the running values stay"
                    );
                }
                *running = config.clone();
                self.reload(config);
            }
            Err(e) => {
                self.engine
                    .metrics()
                    .control
                    .reloads_failed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "reload refused; the running configuration stays");
            }
        }
    }

    /// The plugin (and Consul) metrics.
    pub fn metrics(&self) -> Arc<PluginMetrics> {
        self.metrics.clone()
    }

    /// Why Consul refused this gateway, if it did (the runner exits 2 with it).
    pub fn fatal(&self) -> Option<String> {
        self.registrar.as_ref().and_then(Registrar::fatal)
    }

    /// Starts the drain: readiness 503 and maintenance in Consul (peers stop choosing this gateway)
    /// while the listeners keep accepting for `drain_grace_ms`; then the listeners close and live
    /// connections get the drain timeout.
    pub fn shutdown(&self) {
        self.engine.stop_ready();
        if let Some(r) = &self.registrar {
            r.begin_leaving();
        }
        let grace = self.engine.snapshot().settings.drain_grace();
        tracing::info!(?grace, "shutting down: readiness 503; listeners close after the grace period, then live connections drain");
        std::thread::sleep(grace);
        self.engine.shutdown();
    }

    /// Waits for the drain to end, then leaves Consul's catalog.
    pub fn finish(self) -> Result<(), ControlError> {
        let result = finish_engine(self.engine);
        if let Some(r) = &self.registrar {
            r.leave();
        }
        result
    }
}

/// The settings whose change a reload cannot apply: the listeners, the admin endpoint, the cores and
/// what each core fixed at start (its connection limits). A changed `[hook]` is applied.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let (o, n) = (&old.gateway, &new.gateway);
    [
        ("listen", o.listen != n.listen),
        ("admin", o.admin != n.admin),
        ("workers", o.workers != n.workers),
        ("io_memory_kib", o.io_memory_kib != n.io_memory_kib),
        ("balance", o.balance != n.balance),
        ("backlog", o.backlog != n.backlog),
        ("max_connections", o.max_connections != n.max_connections),
        (
            "max_connections_per_listener",
            o.max_connections_per_listener != n.max_connections_per_listener,
        ),
        // The watches follow a changed agent at once; the registration stays with the first one.
        ("[consul] (the registration)", old.consul != new.consul),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect()
}

/// Waits for an engine's drain to end (the admin thread may still hold a reference to it).
pub fn finish_engine(engine: Arc<Engine>) -> Result<(), ControlError> {
    while !engine.finished() {
        std::thread::sleep(Duration::from_millis(20));
    }
    match Arc::try_unwrap(engine) {
        Ok(engine) => engine.wait().map_err(ControlError::from),
        Err(_) => {
            tracing::info!("drained");
            Ok(())
        }
    }
}

/// `meshgate gateway --config FILE [--register]`: runs until SIGTERM/SIGINT and the drain after it.
pub fn run(path: &Path, register: bool) -> Result<(), ControlError> {
    let config = Config::load(path)?;
    let signals = Signals::install()?;
    let stopper = signals.sender();
    let on_fatal = Box::new(move || {
        let _ = stopper.send(Signal::Stop);
    });
    let gw = start_with(&config, register, on_fatal).map_err(|e| e.in_file(path))?;
    tracing::info!(
        gateway = %config.gateway.name,
        datacenter = %config.gateway.datacenter,
        listen = ?config.gateway.listen,
        admin = ?gw.admin.as_ref().map(|a| a.local_addr()),
        workers = gw.engine.workers(),
        routes = gw.engine.snapshot().table.len(),
        "meshgate gateway ready"
    );
    let mut running = config.clone();
    while let Some(Signal::Reload) = signals.recv() {
        gw.reload_file(path, &mut running);
    }
    let fatal = gw.fatal();
    signals.exit_on_second_stop();
    gw.shutdown();
    let result = gw.finish();
    match fatal {
        Some(message) => Err(ControlError::Config(message)),
        None => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::{TempDir, TD};
    use std::cell::RefCell;
    use std::net::SocketAddr;

    /// Records what would have been installed in an engine (tables, and each hook replacement:
    /// whether it had a hook).
    #[derive(Default)]
    struct Recorder(RefCell<Vec<RouteTable>>, RefCell<Vec<bool>>);

    impl Publish for Recorder {
        fn install(&self, table: RouteTable, _: GatewaySettings) {
            self.0.borrow_mut().push(table);
        }

        fn set_hook(&self, hook: Option<HookFactory>) {
            self.1.borrow_mut().push(hook.is_some());
        }
    }

    impl Recorder {
        fn installs(&self) -> usize {
            self.0.borrow().len()
        }
        fn last_endpoints(&self, sni: &str) -> Option<(Vec<SocketAddr>, String)> {
            let tables = self.0.borrow();
            endpoints(tables.last()?, sni)
        }
    }

    fn endpoints(table: &RouteTable, sni: &str) -> Option<(Vec<SocketAddr>, String)> {
        let (route, _) = table.lookup(sni).route()?;
        Some((route.groups[0].endpoints.clone(), route.source.clone()))
    }

    /// dc1's demo gateway on the copied catalog, plus `extra` TOML.
    fn config(dir: &TempDir, extra: &str) -> Config {
        let text = format!(
            "[gateway]\nname = \"gw\"\ndatacenter = \"dc1\"\nlisten = [\"127.0.0.1:1\"]\n\n\
             [catalog]\nplugin = \"file-catalog\"\n\
             config = {{ dir = \"catalog\", datacenter = \"dc1\", trust_domain = \"{TD}\" }}\n\
             allow_dirs = [\"catalog\"]\n\n[router]\nplugin = \"consul-router\"\n{extra}"
        );
        let file = dir.0.join("gw.toml");
        std::fs::write(&file, &text).expect("write config");
        Config::parse(&text, &file).expect("valid config")
    }

    fn web() -> String {
        format!("web.default.dc1.internal.{TD}")
    }
    fn api_dc2() -> String {
        format!("api.default.dc2.internal.{TD}")
    }

    #[test]
    fn static_routes_win_over_the_plugins_and_both_are_in_the_table() {
        let dir = TempDir::with_demo_catalog("static-wins", "dc1");
        let wildcard = format!("*.dc2.internal.{TD}");
        let mut control = GatewayControl::new(config(
            &dir,
            &format!("\n[[routes]]\nsni = \"{wildcard}\"\nendpoints = [\"127.0.0.9:9\"]\n"),
        ))
        .expect("plugins load");
        let table = control.initial_table().expect("table");
        let (eps, source) = endpoints(&table, &api_dc2()).expect("dc2 routed");
        assert_eq!(eps, vec!["127.0.0.9:9".parse().expect("addr")]);
        assert!(!source.starts_with("plugin"), "static route: {source}");
        // The plugin's local route is there beside it.
        let (eps, source) = endpoints(&table, &web()).expect("web routed");
        assert_eq!(eps, vec!["127.0.0.1:21000".parse().expect("addr")]);
        assert!(source.starts_with("plugin consul-router"), "{source}");
        assert!(control.metrics().table_ready.load(Ordering::Relaxed));
    }

    #[test]
    fn the_routers_datacenter_failover_policy_becomes_failover_groups() {
        let dir = TempDir::with_demo_catalog("dc-failover", "dc1");
        dir.write(
            "catalog/dc3/mesh-gateway.json",
            r#"{"service": {"name": "mesh-gateway", "kind": "mesh-gateway", "port": 8445, "tagged_addresses": {"wan": {"address": "127.0.0.1", "port": 8445}}}}"#,
        );
        let mut control = GatewayControl::new(config(&dir, "")).expect("plugins load");
        let table = control.initial_table().expect("table");
        let (route, _) = table.lookup(&api_dc2()).route().expect("dc2 routed");
        assert_eq!(route.groups.len(), 1, "opt-in: no failover by default");
        let mut control = GatewayControl::new(config(
            &dir,
            "config = { datacenter_failover = \"dc2=dc3\" }\n",
        ))
        .expect("plugins load");
        let table = control.initial_table().expect("table");
        let (route, _) = table.lookup(&api_dc2()).route().expect("dc2 routed");
        let groups: Vec<Vec<SocketAddr>> =
            route.groups.iter().map(|g| g.endpoints.clone()).collect();
        assert_eq!(groups.len(), 2, "{groups:?}");
        assert_eq!(groups[1], vec!["127.0.0.1:8445".parse().expect("addr")]);
        // A policy the router cannot read is refused by its `configure`, before it serves.
        let err = GatewayControl::new(config(&dir, "config = { datacenter_failover = \"dc2\" }\n"))
            .err()
            .expect("refused at load")
            .to_string();
        assert!(
            err.contains("[router]") && err.contains("datacenter_failover"),
            "{err}"
        );
    }

    #[test]
    fn an_unchanged_catalog_installs_nothing_and_a_change_installs_once() {
        let dir = TempDir::with_demo_catalog("unchanged", "dc1");
        let mut control = GatewayControl::new(config(&dir, "")).expect("plugins load");
        control.initial_table().expect("table");
        let sink = Recorder::default();
        control.tick(&sink);
        control.tick(&sink);
        assert_eq!(sink.installs(), 0, "nothing changed");
        dir.register_db();
        control.tick(&sink);
        assert_eq!(sink.installs(), 1);
        let db = format!("db.default.dc1.internal.{TD}");
        let (eps, _) = sink.last_endpoints(&db).expect("db routed");
        assert_eq!(eps, vec!["127.0.0.1:21002".parse().expect("addr")]);
        control.tick(&sink);
        assert_eq!(sink.installs(), 1);
    }

    #[test]
    fn a_change_rereads_only_the_files_whose_size_or_time_moved() {
        let dir = TempDir::with_demo_catalog("reparse", "dc1");
        let mut control = GatewayControl::new(config(&dir, "")).expect("plugins load");
        control.initial_table().expect("table");
        let sink = Recorder::default();
        // web.hcl turned to garbage of the same size and modification time: the plugin, which keeps
        // each file parsed by (path, size, time), does not read it again when another file changes.
        let web_file = dir.0.join("catalog/web.hcl");
        let meta = std::fs::metadata(&web_file).expect("stat");
        let original = std::fs::read_to_string(&web_file).expect("read");
        let garbage = "#".repeat(usize::try_from(meta.len()).expect("size"));
        std::fs::write(&web_file, &garbage).expect("overwrite");
        let set_time = |t| {
            std::fs::File::options()
                .write(true)
                .open(&web_file)
                .and_then(|f| f.set_modified(t))
                .expect("set mtime");
        };
        set_time(meta.modified().expect("mtime"));
        dir.register_db();
        control.tick(&sink);
        assert_eq!(sink.installs(), 1);
        assert!(sink.last_endpoints(&web()).is_some(), "web from the cache");
        let db = format!("db.default.dc1.internal.{TD}");
        assert!(sink.last_endpoints(&db).is_some(), "db parsed");
        // Its time moves: it is read again, and its garbage refuses the catalog.
        set_time(std::time::SystemTime::now() + Duration::from_secs(5));
        control.tick(&sink);
        assert_eq!(sink.installs(), 1, "the bad file keeps the last table");
        assert_eq!(control.metrics().failures("file-catalog", "error"), 1);
        // Repaired, and a file removed: the removed file leaves the catalog.
        std::fs::write(&web_file, original).expect("restore");
        std::fs::remove_file(dir.0.join("catalog/db.hcl")).expect("rm");
        control.tick(&sink);
        assert_eq!(sink.installs(), 2);
        assert!(sink.last_endpoints(&web()).is_some(), "web read again");
        assert!(sink.last_endpoints(&db).is_none(), "db gone");
    }

    /// The table as lookups see it: every route, in pattern order.
    fn routes_of(table: &RouteTable) -> Vec<meshgate_route::Route> {
        let mut routes: Vec<meshgate_route::Route> =
            table.routes().iter().map(|r| (**r).clone()).collect();
        routes.sort_by(|a, b| a.pattern.cmp(&b.pattern));
        routes
    }

    /// What a control plane started afresh on the catalog as it is now would install.
    fn whole(dir: &TempDir, extra: &str) -> Vec<meshgate_route::Route> {
        let mut control = GatewayControl::new(config(dir, extra)).expect("plugins load");
        routes_of(&control.initial_table().expect("table"))
    }

    #[test]
    fn patched_tables_answer_as_tables_built_from_the_whole_catalog() {
        let dir = TempDir::with_demo_catalog("patched", "dc1");
        let extra = "\n[[routes]]\nsni = \"db.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul\"\nendpoints = [\"127.0.0.9:9\"]\n";
        let mut control = GatewayControl::new(config(&dir, extra)).expect("plugins load");
        assert!(control
            .plugins
            .as_ref()
            .is_some_and(|(_, r)| r.plugin.is_incremental()));
        control.initial_table().expect("table");
        let sink = Recorder::default();
        let hint = |names: &[&str]| Some(names.iter().map(|n| format!("catalog/{n}")).collect());
        let web_port = |port: u16| {
            format!("service {{\n  name = \"web\"\n  port = 8080\n  connect {{ sidecar_service {{ port = {port} }} }}\n}}\n")
        };
        // Each step: what changes, and the hints the directory watch would give (None: it cannot say).
        type Step<'a> = (Box<dyn Fn() + 'a>, Option<Vec<String>>);
        let steps: Vec<Step<'_>> = vec![
            (Box::new(|| dir.register_db()), hint(&["db.hcl"])),
            (
                Box::new(|| dir.write("catalog/web.hcl", &web_port(21009))),
                hint(&["web.hcl"]),
            ),
            (
                Box::new(|| {
                    dir.write(
                        "catalog/dc3/mesh-gateway.json",
                        r#"{"service": {"name": "mesh-gateway", "kind": "mesh-gateway", "port": 8445, "tagged_addresses": {"wan": {"address": "127.0.0.3", "port": 8445}}}}"#,
                    )
                }),
                None,
            ),
            (
                Box::new(|| std::fs::remove_file(dir.0.join("catalog/db.hcl")).expect("rm")),
                hint(&["db.hcl"]),
            ),
            (
                Box::new(|| dir.write("catalog/web.hcl", &web_port(2100))),
                None,
            ),
        ];
        for (i, (change, hints)) in steps.into_iter().enumerate() {
            change();
            control.tick_with(&sink, hints);
            assert_eq!(sink.installs(), i + 1, "step {i} installs once");
            let patched = routes_of(sink.0.borrow().last().expect("installed"));
            assert_eq!(patched, whole(&dir, extra), "step {i}");
        }
        // The static route stayed in force while db came and went in the catalog.
        let (eps, source) = sink
            .last_endpoints("db.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul")
            .expect("static db");
        assert_eq!((eps[0].port(), source.as_str()), (9, "config"));
        assert_eq!(sink.last_endpoints(&web()).expect("web").0[0].port(), 2100);
    }

    #[test]
    fn a_patch_the_table_refuses_keeps_the_last_table_and_the_next_change_resyncs_whole() {
        let dir = TempDir::with_demo_catalog("resync", "dc1");
        let mut control = GatewayControl::new(config(&dir, "")).expect("plugins load");
        let metrics = control.metrics();
        control.initial_table().expect("table");
        let sink = Recorder::default();
        // A label longer than DNS allows: the router names it, the table refuses the pattern.
        let long = "a".repeat(64);
        dir.write(
            "catalog/long.hcl",
            &format!("service {{\n  name = \"{long}\"\n  port = 1\n  connect {{ sidecar_service {{ port = 21003 }} }}\n}}\n"),
        );
        control.tick_with(&sink, Some(vec!["catalog/long.hcl".into()]));
        assert_eq!(sink.installs(), 0, "the last table stays");
        assert_eq!(
            metrics.failures("consul-router", "invalid"),
            1,
            "{}",
            metrics.render()
        );
        std::fs::remove_file(dir.0.join("catalog/long.hcl")).expect("rm");
        dir.register_db();
        control.tick_with(
            &sink,
            Some(vec!["catalog/long.hcl".into(), "catalog/db.hcl".into()]),
        );
        assert_eq!(sink.installs(), 1);
        let patched = routes_of(sink.0.borrow().last().expect("installed"));
        assert_eq!(patched, whole(&dir, ""));
        assert!(sink
            .last_endpoints(&format!("db.default.dc1.internal.{TD}"))
            .is_some());
    }

    #[test]
    fn a_failing_plugin_keeps_the_last_table_and_is_counted() {
        let dir = TempDir::with_demo_catalog("failing", "dc1");
        let mut control = GatewayControl::new(config(&dir, "")).expect("plugins load");
        let metrics = control.metrics();
        let first = control.initial_table().expect("table");
        assert!(endpoints(&first, &web()).is_some());
        let sink = Recorder::default();
        dir.write("catalog/broken.hcl", "service {\n  name = \n");
        for _ in 0..3 {
            control.tick(&sink);
        }
        assert_eq!(sink.installs(), 0, "a failed fetch installs nothing");
        let errors = metrics.failures("file-catalog", "error");
        assert_eq!(errors, 3, "{}", metrics.render());
        assert!(metrics.table_ready.load(Ordering::Relaxed), "still ready");
        // Fixed as it was: the catalog in force is that one already, nothing to install.
        std::fs::remove_file(dir.0.join("catalog/broken.hcl")).expect("rm");
        control.tick(&sink);
        assert_eq!(sink.installs(), 0);
        // A real change after the failure is installed at the next poll.
        dir.register_db();
        control.tick(&sink);
        assert_eq!(sink.installs(), 1);
        assert!(sink.last_endpoints(&web()).is_some());
        assert!(sink
            .last_endpoints(&format!("db.default.dc1.internal.{TD}"))
            .is_some());
    }

    #[test]
    fn a_reload_that_cannot_load_its_plugin_is_refused_and_the_table_stays() {
        let dir = TempDir::with_demo_catalog("reload", "dc1");
        let mut control = GatewayControl::new(config(&dir, "")).expect("plugins load");
        control.initial_table().expect("table");
        let sink = Recorder::default();
        let mut bad = config(&dir, "");
        bad.catalog = bad.catalog.map(|mut c| {
            c.plugin = "plugins/nope.wasm".into();
            c
        });
        assert!(!control.reload(bad, &sink));
        assert_eq!(sink.installs(), 0);
        // A good reload with a static route recomputes and installs at once.
        let good = config(
            &dir,
            "\n[[routes]]\nsni = \"a.example\"\nendpoints = [\"127.0.0.1:7\"]\n",
        );
        assert!(control.reload(good, &sink));
        assert_eq!(sink.installs(), 1);
        assert!(sink.last_endpoints("a.example").is_some());
        assert!(sink.last_endpoints(&web()).is_some());
    }

    #[test]
    fn a_router_that_refuses_its_settings_is_refused_at_start_and_on_reload() {
        let dir = TempDir::with_demo_catalog("configure", "dc1");
        let err = GatewayControl::new(config(&dir, "config = { wan_federaton = \"true\" }\n"))
            .err()
            .expect("a misspelt key is refused at load");
        let text = err.to_string();
        assert!(
            text.contains("[router]") && text.contains("wan_federaton"),
            "{text}"
        );
        assert!(text.contains("unknown key"), "{text}");
        let mut control = GatewayControl::new(config(&dir, "")).expect("plugins load");
        control.initial_table().expect("table");
        let sink = Recorder::default();
        let bad = config(&dir, "config = { datacenter_failover = \"dc2\" }\n");
        assert!(
            !control.reload(bad, &sink),
            "a bad policy refuses the reload"
        );
        assert_eq!(sink.installs(), 0);
    }

    #[test]
    fn a_reload_replaces_a_changed_hook_and_refuses_a_bad_one() {
        let dir = TempDir::with_demo_catalog("hook-swap", "dc1");
        let hook =
            |deny: &str| format!("\n[hook]\nplugin = \"sni-denylist\"\nconfig = {{ {deny} }}\n");
        let mut control =
            GatewayControl::new(config(&dir, &hook("deny = \"a.example\""))).expect("load");
        control.initial_table().expect("table");
        let sink = Recorder::default();
        // Same hook: nothing replaced.
        assert!(control.reload(config(&dir, &hook("deny = \"a.example\"")), &sink));
        assert!(sink.1.borrow().is_empty());
        // A hook refusing its settings refuses the whole reload; nothing is installed.
        assert!(!control.reload(config(&dir, &hook("denny = \"b.example\"")), &sink));
        assert!(sink.1.borrow().is_empty());
        assert_eq!(sink.installs(), 1);
        // Changed settings: replaced; removed: replaced by none.
        assert!(control.reload(config(&dir, &hook("deny = \"b.example\"")), &sink));
        assert_eq!(*sink.1.borrow(), [true]);
        assert!(control.reload(config(&dir, ""), &sink));
        assert_eq!(*sink.1.borrow(), [true, false]);
    }

    #[test]
    fn a_reload_notices_a_plugin_file_rebuilt_under_the_same_name() {
        let dir = TempDir::with_demo_catalog("hook-file", "dc1");
        std::fs::write(dir.0.join("hook.wasm"), meshgate_plugin::SHIPPED[4].1).expect("copy");
        let extra = "\n[hook]\nplugin = \"hook.wasm\"\n";
        let mut control = GatewayControl::new(config(&dir, extra)).expect("load");
        control.initial_table().expect("table");
        let sink = Recorder::default();
        assert!(control.reload(config(&dir, extra), &sink));
        assert!(sink.1.borrow().is_empty(), "same file, same hook");
        // A file that is no component: the reload is refused and the running hook stays.
        std::fs::write(dir.0.join("hook.wasm"), b"not wasm").expect("overwrite");
        assert!(!control.reload(config(&dir, extra), &sink));
        assert!(sink.1.borrow().is_empty());
        std::fs::write(dir.0.join("hook.wasm"), meshgate_plugin::TESTBED_HOOK).expect("rebuild");
        assert!(control.reload(config(&dir, extra), &sink));
        assert_eq!(*sink.1.borrow(), [true]);
    }

    #[test]
    fn a_reload_whose_new_catalog_cannot_be_read_keeps_the_last_good_table() {
        let dir = TempDir::with_demo_catalog("reload-badcat", "dc1");
        let mut control = GatewayControl::new(config(&dir, "")).expect("plugins load");
        control.initial_table().expect("table");
        let sink = Recorder::default();
        // A bad file is tolerated: the last good catalog keeps serving.
        dir.write("catalog/broken.hcl", "service {\n  name = \n");
        control.tick(&sink);
        assert_eq!(sink.installs(), 0);
        // A reload that changes only the catalog's poll interval must not drop that catalog.
        let mut slower = config(&dir, "");
        slower.catalog = slower.catalog.map(|mut c| {
            c.poll_ms += 1;
            c
        });
        assert!(!control.reload(slower, &sink), "reported as failed");
        assert_eq!(sink.installs(), 0, "nothing installed");
        // Still the old plugins and catalog: a later change is installed with every route.
        std::fs::remove_file(dir.0.join("catalog/broken.hcl")).expect("rm");
        dir.register_db();
        control.tick(&sink);
        assert_eq!(sink.installs(), 1);
        assert!(sink.last_endpoints(&web()).is_some());
    }

    #[test]
    fn a_plugin_that_cannot_load_at_start_is_the_configs_fault() {
        let dir = TempDir::with_demo_catalog("noload", "dc1");
        let mut c = config(&dir, "");
        c.catalog = c.catalog.map(|mut s| {
            s.plugin = "plugins/nope.wasm".into();
            s
        });
        let Err(e) = GatewayControl::new(c) else {
            panic!("a missing plugin must be refused");
        };
        assert_eq!(e.exit_code(), crate::error::EXIT_CONFIG);
        assert!(e.to_string().starts_with("[catalog] "), "{e}");
    }

    #[test]
    fn a_reload_names_what_only_a_restart_applies() {
        let parse = |text: &str| Config::parse(text, Path::new("gw.toml")).expect("valid");
        let old = parse("[gateway]\nlisten = [\"127.0.0.1:8443\"]\n");
        let same = parse("[gateway]\nlisten = [\"127.0.0.1:8443\"]\nidle_timeout_secs = 5\n");
        assert!(restart_only_changes(&old, &same).is_empty());
        let new = parse(
            "[gateway]\nlisten = [\"127.0.0.1:8443\"]\nmax_connections = 10\n[hook]\nplugin = \"sni-denylist\"\n",
        );
        // A changed `[hook]` is applied by the reload itself.
        assert_eq!(restart_only_changes(&old, &new), vec!["max_connections"]);
    }

    #[test]
    fn with_consul_not_ready_until_the_acl_preflight_passed() {
        let plugins = PluginMetrics::new().expect("metrics");
        assert!(plugins_ready(&plugins), "no plugins, no consul: ready");
        let consul = plugins.consul().expect("consul metrics");
        assert!(
            !plugins_ready(&plugins),
            "empty answers before the preflight"
        );
        consul.preflight_passed.store(true, Ordering::Relaxed);
        assert!(plugins_ready(&plugins));
    }

    #[test]
    fn expose_servers_tells_both_plugins_about_wan_federation() {
        let parse = |text: &str| Config::parse(text, Path::new("gw.toml")).expect("valid");
        let base =
            "[gateway]\nlisten = [\"127.0.0.1:8443\"]\n[catalog]\nplugin = \"consul-catalog\"\n";
        let (c, r) = plugin_sections(&parse(base)).expect("sections");
        assert!(c.settings().iter().all(|(k, _)| k != "wan_federation"));
        assert!(r.settings().iter().all(|(k, _)| k != "wan_federation"));
        let exposed = format!("{base}[consul]\n[consul.register]\nexpose_servers = true\n");
        let (c, r) = plugin_sections(&parse(&exposed)).expect("sections");
        for s in [c, r] {
            assert!(s
                .settings()
                .contains(&("wan_federation".into(), "true".into())));
        }
        // The plugin's own setting wins.
        let own = exposed.replace(
            "plugin = \"consul-catalog\"\n",
            "plugin = \"consul-catalog\"\nconfig = { wan_federation = \"false\" }\n",
        );
        let (c, _) = plugin_sections(&parse(&own)).expect("sections");
        assert!(c
            .settings()
            .contains(&("wan_federation".into(), "false".into())));
    }
}
