//! The plugin host: one wasmtime engine per process with the epoch ticker that enforces deadlines, the
//! plugins embedded in meshgate, and loading a plugin (shipped or from a path) into a typed handle.

use crate::bindings::catalog_world;
use crate::sandbox::{live, Loaded, EPOCH_TICK};
use crate::{CatalogPlugin, HookPlugin, PluginError, RouterPlugin, Sandbox, WatchCatalogPlugin};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::Engine;

/// The plugins built from `plugins/` and embedded in meshgate, by name.
pub const SHIPPED: [(&str, &[u8]); 5] = [
    (
        "file-catalog",
        include_bytes!(concat!(env!("OUT_DIR"), "/file_catalog.wasm")),
    ),
    (
        "consul-catalog",
        include_bytes!(concat!(env!("OUT_DIR"), "/consul_catalog.wasm")),
    ),
    (
        "consul-router",
        include_bytes!(concat!(env!("OUT_DIR"), "/consul_router.wasm")),
    ),
    (
        "export-control",
        include_bytes!(concat!(env!("OUT_DIR"), "/export_control.wasm")),
    ),
    (
        "sni-denylist",
        include_bytes!(concat!(env!("OUT_DIR"), "/sni_denylist.wasm")),
    ),
];

/// A deliberately misbehaving router plugin, for tests (see `plugins/testbed`).
#[doc(hidden)]
pub const TESTBED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/testbed.wasm"));

/// A connection hook that misbehaves for chosen names, for the fault runs (see `plugins/testbed-hook`).
#[doc(hidden)]
pub const TESTBED_HOOK: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/testbed_hook.wasm"));

/// The world a plugin component implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginKind {
    /// `catalog-plugin` (polled `fetch`).
    Catalog,
    /// `watch-catalog-plugin` (`plan` over watches the host runs).
    WatchCatalog,
    /// `router-plugin`.
    Router,
    /// `connection-hook`.
    Hook,
}

impl PluginKind {
    /// How the docs and the config name it: the config section that loads it, for the catalogs with how
    /// they are fed.
    pub fn label(self) -> &'static str {
        match self {
            PluginKind::Catalog => "catalog",
            PluginKind::WatchCatalog => "catalog (watch-fed)",
            PluginKind::Router => "router",
            PluginKind::Hook => "hook",
        }
    }
}

/// Compiles components and ticks the epoch that enforces deadlines. One per process.
#[derive(Clone)]
pub struct PluginHost {
    engine: Engine,
    _ticker: Arc<Ticker>,
}

/// Stops the epoch thread when the last holder goes. Every loaded plugin holds it too: a hook instance
/// lives on its core long after the host that compiled it is dropped, and without ticks its deadline
/// would never fire (a looping hook held a core forever — found by the fault runs).
pub(crate) struct Ticker(Arc<AtomicBool>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl PluginHost {
    /// A host with its epoch ticker thread.
    pub fn new() -> Result<PluginHost, PluginError> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true).wasm_component_model(true);
        let engine = Engine::new(&config).map_err(|e| PluginError::Load {
            plugin: "-".into(),
            message: e.to_string(),
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let (e, s) = (engine.clone(), stop.clone());
        std::thread::Builder::new()
            .name("meshgate-epoch".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    e.increment_epoch();
                }
            })
            .map_err(|e| PluginError::Load {
                plugin: "-".into(),
                message: e.to_string(),
            })?;
        Ok(PluginHost {
            engine,
            _ticker: Arc::new(Ticker(stop)),
        })
    }

    /// Reads a plugin: a shipped name, or a path to a `.wasm` component.
    pub fn component(
        &self,
        name_or_path: &str,
        base: &Path,
    ) -> Result<(String, Component), PluginError> {
        let fail = |message: String| PluginError::Load {
            plugin: name_or_path.to_owned(),
            message,
        };
        if let Some((name, bytes)) = SHIPPED.iter().find(|(n, _)| *n == name_or_path) {
            let c = Component::new(&self.engine, bytes).map_err(|e| fail(format!("{e:#}")))?;
            return Ok(((*name).to_owned(), c));
        }
        let path = base.join(name_or_path);
        let bytes = std::fs::read(&path).map_err(|e| {
            fail(format!(
                "{}: {e} (not a shipped plugin either: {})",
                path.display(),
                SHIPPED.map(|(n, _)| n).join(", ")
            ))
        })?;
        let c = Component::new(&self.engine, &bytes)
            .map_err(|e| fail(format!("{}: {e:#}", path.display())))?;
        let name = path.file_stem().map_or_else(
            || name_or_path.to_owned(),
            |s| s.to_string_lossy().into_owned(),
        );
        Ok((name, c))
    }

    fn loaded(
        &self,
        name: String,
        component: Component,
        sandbox: Sandbox,
    ) -> Result<Loaded, PluginError> {
        let mut linker = Linker::new(&self.engine);
        catalog_world::meshgate::plugin::host::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .and_then(|()| {
                catalog_world::meshgate::plugin::types::add_to_linker::<_, HasSelf<_>>(
                    &mut linker,
                    |s| s,
                )
            })
            .map_err(|e| PluginError::Load {
                plugin: name.clone(),
                message: format!("{e:#}"),
            })?;
        Ok(Loaded {
            name,
            _ticker: self._ticker.clone(),
            engine: self.engine.clone(),
            component,
            linker,
            sandbox,
            log_budget: Default::default(),
            settings: None,
        })
    }

    /// A catalog plugin.
    pub fn catalog(
        &self,
        name_or_path: &str,
        sandbox: Sandbox,
    ) -> Result<CatalogPlugin, PluginError> {
        let (name, component) = self.component(name_or_path, &sandbox.grants.base)?;
        // Instantiated now, so a component that does not fit the world fails at load time.
        self.catalog_from(name, component, sandbox)
    }

    /// A watch-catalog plugin (the host runs its watches): a shipped name or a path.
    pub fn watch_catalog(
        &self,
        name_or_path: &str,
        sandbox: Sandbox,
    ) -> Result<WatchCatalogPlugin, PluginError> {
        let (name, component) = self.component(name_or_path, &sandbox.grants.base)?;
        self.watch_catalog_from(name, component, sandbox)
    }

    /// A watch-catalog plugin from a compiled component (the host runs its watches).
    pub fn watch_catalog_from(
        &self,
        name: String,
        component: Component,
        sandbox: Sandbox,
    ) -> Result<WatchCatalogPlugin, PluginError> {
        let loaded = self.loaded(name, component, sandbox)?;
        let mut p = WatchCatalogPlugin { loaded, live: None };
        p.instance()?;
        Ok(p)
    }

    /// A polled catalog plugin from a compiled component.
    pub fn catalog_from(
        &self,
        name: String,
        component: Component,
        sandbox: Sandbox,
    ) -> Result<CatalogPlugin, PluginError> {
        let loaded = self.loaded(name, component, sandbox)?;
        let mut p = CatalogPlugin { loaded, live: None };
        p.instance()?;
        Ok(p)
    }

    /// Whether a component is a watch-catalog plugin (exports `plan`) rather than a polled one: the
    /// `[catalog]` section takes either.
    pub fn is_watch_catalog(&self, component: &Component) -> bool {
        component
            .component_type()
            .exports(&self.engine)
            .any(|(name, _)| name == "plan")
    }

    /// Which world a component implements, from its exports (`None`: none of them).
    pub fn kind_of(&self, component: &Component) -> Option<PluginKind> {
        let exports: Vec<String> = component
            .component_type()
            .exports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let has = |n: &str| exports.iter().any(|e| e == n);
        if has("plan") {
            Some(PluginKind::WatchCatalog)
        } else if has("fetch") {
            Some(PluginKind::Catalog)
        } else if has("gateway-routes") && has("sidecar-plan") {
            Some(PluginKind::Router)
        } else if has("decide") {
            Some(PluginKind::Hook)
        } else {
            None
        }
    }

    /// A router plugin.
    pub fn router(
        &self,
        name_or_path: &str,
        sandbox: Sandbox,
    ) -> Result<RouterPlugin, PluginError> {
        let (name, component) = self.component(name_or_path, &sandbox.grants.base)?;
        self.router_from(name, component, sandbox)
    }

    /// A router plugin from an already compiled component (tests, benchmarks).
    pub fn router_from(
        &self,
        name: String,
        component: Component,
        sandbox: Sandbox,
    ) -> Result<RouterPlugin, PluginError> {
        let loaded = self.loaded(name, component, sandbox)?;
        let mut p = RouterPlugin { loaded, live: None };
        p.instance()?;
        Ok(p)
    }

    /// A connection hook from a compiled component; call once per core (each gets its own instance).
    pub fn hook_from(
        &self,
        name: String,
        component: Component,
        sandbox: Sandbox,
    ) -> Result<HookPlugin, PluginError> {
        let loaded = self.loaded(name, component, sandbox)?;
        let mut p = HookPlugin { loaded, live: None };
        live(&p.loaded, &mut p.live)?;
        Ok(p)
    }

    /// Compiles component bytes (tests, benchmarks).
    pub fn compile(&self, bytes: &[u8]) -> Result<Component, PluginError> {
        Component::new(&self.engine, bytes).map_err(|e| PluginError::Load {
            plugin: "-".into(),
            message: format!("{e:#}"),
        })
    }
}
