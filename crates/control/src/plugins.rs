//! What both control planes do with plugins: load a catalog and a router plugin in the sandboxes their
//! sections ask for, poll the catalog plugin for changes (or, for a watch-catalog plugin, plan from
//! the answers of the Consul watches run for it), count calls and failures by plugin and reason,
//! and log a failure once per distinct message.

use crate::consul::watches::{Waker, WatchSet};
use crate::consul::ConsulMetrics;
use crate::delta::Change;
use crate::error::ControlError;
use meshgate_config::{ConsulSection, PluginSection};
use meshgate_plugin::types::{Catalog, CatalogUpdate};
use meshgate_plugin::{
    CatalogPlugin, Grants, PluginError, PluginHost, RouterPlugin, Sandbox, WatchCatalogPlugin,
};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Plugin metrics and readiness, shared with the admin endpoint.
pub struct PluginMetrics {
    registry: Registry,
    failures: IntCounterVec,
    calls: IntCounterVec,
    catalog_version: IntGauge,
    pub(crate) plugin_routes: IntGauge,
    consul: OnceLock<Arc<ConsulMetrics>>,
    /// False while plugins are configured but no plugin table has been installed yet.
    pub table_ready: AtomicBool,
}

impl PluginMetrics {
    /// Registers the plugin metric families.
    pub fn new() -> Result<Self, ControlError> {
        Self::build().map_err(|e| ControlError::Host(format!("metrics: {e}")))
    }

    fn build() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let failures = IntCounterVec::new(
            Opts::new(
                "meshgate_plugin_failures_total",
                "Plugin calls that failed, by plugin and reason (load, config, trap, deadline, memory, error, invalid).",
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
            consul: OnceLock::new(),
            table_ready: AtomicBool::new(true),
        })
    }

    /// The Consul families, registered on first use (a gateway without Consul does not export them).
    pub fn consul(&self) -> Result<Arc<ConsulMetrics>, ControlError> {
        if let Some(m) = self.consul.get() {
            return Ok(m.clone());
        }
        let m = ConsulMetrics::register(&self.registry)?;
        Ok(self.consul.get_or_init(|| m).clone())
    }

    /// The Consul families, if registered.
    pub fn consul_if_used(&self) -> Option<Arc<ConsulMetrics>> {
        self.consul.get().cloned()
    }

    /// Prometheus text of these metrics.
    pub fn render(&self) -> String {
        if let Some(c) = self.consul.get() {
            c.refresh();
        }
        meshgate_engine::stats::encode(self.registry.gather())
    }

    /// Counts one call of `plugin`.
    pub fn called(&self, plugin: &str) {
        self.calls.with_label_values(&[plugin]).inc();
    }

    /// Counts one failure of `plugin`, by the error's reason.
    pub fn failed(&self, e: &PluginError, plugin: &str) {
        self.failures.with_label_values(&[plugin, e.reason()]).inc();
    }

    /// Calls so far of `plugin`.
    pub fn calls(&self, plugin: &str) -> u64 {
        self.calls.with_label_values(&[plugin]).get()
    }

    /// Failures so far of `plugin` for `reason`.
    pub fn failures(&self, plugin: &str, reason: &str) -> u64 {
        self.failures.with_label_values(&[plugin, reason]).get()
    }
}

/// Logs a failure once per distinct message: control loops poll every few hundred milliseconds and
/// would repeat it; `consequence` says what keeps running meanwhile.
pub struct Reporter {
    consequence: &'static str,
    last: Option<String>,
}

impl Reporter {
    /// A reporter whose log lines end with `consequence`.
    pub fn new(consequence: &'static str) -> Reporter {
        Reporter {
            consequence,
            last: None,
        }
    }

    /// Logs `message` unless it repeats the last one. Returns true when it was logged.
    pub fn report(&mut self, message: String) -> bool {
        if self.last.as_deref() == Some(message.as_str()) {
            return false;
        }
        tracing::warn!(error = %message, "{}", self.consequence);
        self.last = Some(message);
        true
    }

    /// A success: the next failure is logged even if it repeats the last one.
    pub fn clear(&mut self) {
        self.last = None;
    }
}

/// The sandbox a plugin section asks for; `max_deadline` caps the deadline (connection hooks).
pub fn sandbox(
    section: &PluginSection,
    base_dir: &Path,
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

/// Where a catalog comes from: a plugin polled every `poll_ms`, or a watch-catalog plugin fed by
/// the Consul watches the host runs for it (answers wake the control thread; no polling).
enum Source {
    Polled(CatalogPlugin),
    Watched {
        plugin: WatchCatalogPlugin,
        watches: WatchSet,
        metrics: Arc<ConsulMetrics>,
        /// Whether `plan` has run since the last answer arrived.
        planned: bool,
        version: u64,
    },
}

/// What a watch-catalog plugin needs from the process: the agent, the metrics, who to wake.
pub struct ConsulLink<'a> {
    /// `[consul]`, if the file has one (else the environment, else 127.0.0.1:8500).
    pub section: Option<&'a ConsulSection>,
    /// Wakes the control thread when an answer arrives.
    pub waker: Waker,
}

/// A catalog plugin, the section that configures it, and its latest answer.
pub struct CatalogWatch {
    source: Source,
    section: PluginSection,
    current: Option<(u64, Catalog)>,
    /// What moved since [`CatalogWatch::take_change`] was last called; `None`: not tracked (a
    /// sidecar's control plane reads the whole catalog every time).
    change: Option<Change>,
}

impl CatalogWatch {
    /// The catalog in force, if any has been read.
    pub fn current(&self) -> Option<&Catalog> {
        self.current.as_ref().map(|c| &c.1)
    }

    /// The section's poll interval. A watch-fed catalog is cheap to poll (it plans only when answers
    /// arrived), and with a waker its answers do not wait for the poll at all.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.section.poll_ms)
    }

    fn name(&self) -> &str {
        match &self.source {
            Source::Polled(p) => p.name(),
            Source::Watched { plugin, .. } => plugin.name(),
        }
    }

    /// From now on, remember what moved between calls of [`CatalogWatch::take_change`] (an incremental
    /// router is told only that). The first take answers [`Change::Whole`].
    pub fn track_changes(&mut self) {
        self.change = Some(Change::Whole);
    }

    /// What moved since the previous call ([`Change::Whole`] when not tracked).
    pub fn take_change(&mut self) -> Change {
        match &mut self.change {
            Some(c) => std::mem::take(c),
            None => Change::Whole,
        }
    }

    fn moved(&mut self, change: Change) {
        if let Some(c) = &mut self.change {
            c.then(change);
        }
    }

    /// Forgets the catalog read so far: the next poll fetches it whole.
    pub fn forget(&mut self) {
        self.current = None;
        self.moved(Change::Whole);
        if let Source::Watched { planned, .. } = &mut self.source {
            *planned = false;
        }
    }

    /// One poll: `Ok(true)` when the catalog changed. `changed_files` is what the plugin's
    /// `changed-files` answers (the directory watch's names since the previous poll; `None`: unknown).
    pub fn poll(
        &mut self,
        metrics: &PluginMetrics,
        changed_files: Option<Vec<String>>,
    ) -> Result<bool, PluginError> {
        let since = self.current.as_ref().map_or(0, |c| c.0);
        let name = self.name().to_owned();
        let settings = self.section.settings();
        let tracking = self.change.is_some();
        let mut diffed = None;
        let update = match &mut self.source {
            Source::Polled(plugin) => {
                metrics.called(&name);
                plugin.fetch(&settings, since, changed_files)
            }
            Source::Watched {
                plugin,
                watches,
                metrics: consul,
                planned,
                version,
            } => {
                let arrived = watches.drain();
                if *planned && arrived == 0 {
                    return Ok(false);
                }
                metrics.called(&name);
                let plan = plugin.plan(&settings, &watches.answers());
                *planned = true;
                plan.and_then(|plan| {
                    watches
                        .reconcile(&plan.watches)
                        .map_err(|message| PluginError::Invalid {
                            plugin: name.clone(),
                            message,
                        })?;
                    Ok(match plan.catalog {
                        Some(c) if self.current.as_ref().map(|x| &x.1) != Some(&c) => {
                            *version += 1;
                            consul.catalog_changes.inc();
                            // A watch-fed catalog answers whole catalogs; what moved is their
                            // difference (same trust domain), for an incremental router.
                            if tracking {
                                if let Some((_, old)) = &self.current {
                                    if old.trust_domain == c.trust_domain {
                                        diffed = Some(crate::delta::diff(old, &c));
                                    }
                                }
                            }
                            CatalogUpdate::Changed((*version, c))
                        }
                        _ => CatalogUpdate::Unchanged,
                    })
                })
            }
        };
        match update {
            Ok(CatalogUpdate::Unchanged) => Ok(false),
            Ok(CatalogUpdate::Changed((version, catalog))) => {
                tracing::info!(plugin = %name, version, instances = catalog.instances.len(), "catalog changed");
                metrics
                    .catalog_version
                    .set(i64::try_from(version & (u64::MAX >> 1)).unwrap_or(0));
                self.current = Some((version, catalog));
                self.moved(diffed.map_or(Change::Whole, Change::Delta));
                Ok(true)
            }
            Ok(CatalogUpdate::Delta((version, delta))) => {
                let invalid = |message: String| PluginError::Invalid {
                    plugin: name.clone(),
                    message,
                };
                let applied = match &mut self.current {
                    Some((v, catalog)) if since > 0 && *v == since => {
                        crate::delta::apply(catalog, &delta).map(|()| *v = version)
                    }
                    _ => Err(format!(
                        "a delta from version {since}, which the host does not have"
                    )),
                };
                if let Err(message) = applied {
                    // The next poll asks for the whole catalog.
                    self.current = None;
                    self.moved(Change::Whole);
                    let e = invalid(message);
                    metrics.failed(&e, &name);
                    return Err(e);
                }
                tracing::info!(plugin = %name, version, names = delta.instances.len(), entries = delta.config_entries.is_some(), "catalog changed (delta)");
                metrics
                    .catalog_version
                    .set(i64::try_from(version & (u64::MAX >> 1)).unwrap_or(0));
                self.moved(Change::Delta(delta));
                Ok(true)
            }
            Err(e) => {
                metrics.failed(&e, &name);
                Err(e)
            }
        }
    }

    /// Polls until a catalog is in force or `within` has passed (a watch-fed catalog needs its answers
    /// first); `Ok(false)` when none came in time.
    pub fn prime(
        &mut self,
        metrics: &PluginMetrics,
        within: Duration,
    ) -> Result<bool, PluginError> {
        let end = std::time::Instant::now() + within;
        loop {
            self.poll(metrics, None)?;
            if self.current.is_some() {
                return Ok(true);
            }
            let left = end.saturating_duration_since(std::time::Instant::now());
            match &mut self.source {
                Source::Watched {
                    watches, planned, ..
                } if !left.is_zero() => {
                    if watches.wait(left) > 0 {
                        // Taken by `wait`, so the next poll must plan without seeing them arrive.
                        *planned = false;
                    }
                }
                _ => return Ok(false),
            }
        }
    }
}

/// A router plugin and the section that configures it.
pub struct Router {
    /// The plugin.
    pub plugin: RouterPlugin,
    /// Its section.
    pub section: PluginSection,
}

/// Loads a catalog and a router plugin in their sandboxes and runs each one's `configure` with its
/// section's settings; an error names the section. A catalog
/// component exporting `plan` is a watch-catalog plugin: its watches go to the agent `consul` names.
pub fn load_catalog_and_router(
    host: &PluginHost,
    catalog: &PluginSection,
    router: &PluginSection,
    base_dir: &Path,
    metrics: &PluginMetrics,
    consul: &ConsulLink<'_>,
) -> Result<(CatalogWatch, Router), ControlError> {
    let in_catalog = |source| ControlError::Plugin {
        section: "[catalog]",
        source,
    };
    let sandbox = sandbox(catalog, base_dir, None);
    let (name, component) = host
        .component(&catalog.plugin, &sandbox.grants.base)
        .map_err(in_catalog)?;
    let settings = catalog.settings();
    let source = if host.is_watch_catalog(&component) {
        let mut plugin = host
            .watch_catalog_from(name, component, sandbox)
            .map_err(in_catalog)?;
        plugin.configure(&settings).map_err(in_catalog)?;
        let consul_metrics = metrics.consul()?;
        let client = Arc::new(crate::consul::client(consul.section, base_dir)?);
        Source::Watched {
            plugin,
            watches: WatchSet::new(client, consul_metrics.clone(), consul.waker.clone()),
            metrics: consul_metrics,
            planned: false,
            version: 0,
        }
    } else {
        let mut plugin = host
            .catalog_from(name, component, sandbox)
            .map_err(in_catalog)?;
        plugin.configure(&settings).map_err(in_catalog)?;
        Source::Polled(plugin)
    };
    let in_router = |source| ControlError::Plugin {
        section: "[router]",
        source,
    };
    let mut router_plugin = host
        .router(&router.plugin, self::sandbox(router, base_dir, None))
        .map_err(in_router)?;
    router_plugin
        .configure(&router.settings())
        .map_err(in_router)?;
    Ok((
        CatalogWatch {
            source,
            section: catalog.clone(),
            current: None,
            change: None,
        },
        Router {
            plugin: router_plugin,
            section: router.clone(),
        },
    ))
}

/// A plugin host, or why the host cannot run one.
pub fn host() -> Result<PluginHost, ControlError> {
    PluginHost::new().map_err(|e| ControlError::Host(format!("plugin host: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reporter_logs_each_distinct_failure_once_until_cleared() {
        let mut r = Reporter::new("test");
        assert!(r.report("a".into()));
        assert!(!r.report("a".into()));
        assert!(r.report("b".into()));
        assert!(r.report("a".into()));
        r.clear();
        assert!(r.report("a".into()));
    }
}
