//! What both control planes do with plugins: load a catalog and a router plugin in the sandboxes their
//! sections ask for, poll the catalog plugin for changes, count calls and failures by plugin and reason,
//! and log a failure once per distinct message.

use crate::error::ControlError;
use meshgate_config::PluginSection;
use meshgate_plugin::types::{Catalog, CatalogUpdate};
use meshgate_plugin::{CatalogPlugin, Grants, PluginError, PluginHost, RouterPlugin, Sandbox};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// Plugin metrics and readiness, shared with the admin endpoint.
pub struct PluginMetrics {
    registry: Registry,
    failures: IntCounterVec,
    calls: IntCounterVec,
    catalog_version: IntGauge,
    pub(crate) plugin_routes: IntGauge,
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
    pub fn render(&self) -> String {
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

/// A catalog plugin, the section that configures it, and its latest answer.
pub struct CatalogWatch {
    plugin: CatalogPlugin,
    section: PluginSection,
    current: Option<(u64, Catalog)>,
}

impl CatalogWatch {
    /// The catalog in force, if any has been read.
    pub fn current(&self) -> Option<&Catalog> {
        self.current.as_ref().map(|c| &c.1)
    }

    /// The section's poll interval.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.section.poll_ms)
    }

    /// Forgets the catalog read so far: the next poll fetches it whole.
    pub fn forget(&mut self) {
        self.current = None;
    }

    /// One poll: `Ok(true)` when a new catalog replaced the current one.
    pub fn poll(&mut self, metrics: &PluginMetrics) -> Result<bool, PluginError> {
        let since = self.current.as_ref().map_or(0, |c| c.0);
        let name = self.plugin.name().to_owned();
        metrics.called(&name);
        match self.plugin.fetch(&self.section.settings(), since) {
            Ok(CatalogUpdate::Unchanged) => Ok(false),
            Ok(CatalogUpdate::Changed((version, catalog))) => {
                tracing::info!(plugin = %name, version, instances = catalog.instances.len(), "catalog changed");
                metrics
                    .catalog_version
                    .set(i64::try_from(version & (u64::MAX >> 1)).unwrap_or(0));
                self.current = Some((version, catalog));
                Ok(true)
            }
            Err(e) => {
                metrics.failed(&e, &name);
                Err(e)
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

/// Loads a catalog and a router plugin in their sandboxes; an error names the section.
pub fn load_catalog_and_router(
    host: &PluginHost,
    catalog: &PluginSection,
    router: &PluginSection,
    base_dir: &Path,
) -> Result<(CatalogWatch, Router), ControlError> {
    let plugin = host
        .catalog(&catalog.plugin, sandbox(catalog, base_dir, None))
        .map_err(|source| ControlError::Plugin {
            section: "[catalog]",
            source,
        })?;
    let router_plugin = host
        .router(&router.plugin, sandbox(router, base_dir, None))
        .map_err(|source| ControlError::Plugin {
            section: "[router]",
            source,
        })?;
    Ok((
        CatalogWatch {
            plugin,
            section: catalog.clone(),
            current: None,
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
