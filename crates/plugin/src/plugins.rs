//! The typed handle of each kind of plugin — catalog, watch-fed catalog, router, connection hook — whose methods are the
//! world's exports, each called under the sandbox's rules.

use crate::bindings::{catalog_world, hook_world, router_world, watch_world};
use crate::sandbox::{call, configure, live, Loaded};
use crate::{types, PluginError, State};
use wasmtime::Store;

/// A loaded catalog plugin.
pub struct CatalogPlugin {
    pub(crate) loaded: Loaded,
    pub(crate) live: Option<(Store<State>, catalog_world::CatalogPlugin)>,
}

impl CatalogPlugin {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.loaded.name
    }

    /// Runs the plugin's `configure` on a fresh instance with `settings`, which every later instance
    /// gets too. Refused settings leave the plugin as it was.
    pub fn configure(&mut self, settings: &[(String, String)]) -> Result<(), PluginError> {
        configure(&mut self.loaded, &mut self.live, settings)
    }

    pub(crate) fn instance(
        &mut self,
    ) -> Result<&mut (Store<State>, catalog_world::CatalogPlugin), PluginError> {
        live(&self.loaded, &mut self.live)
    }

    /// Asks for the catalog; `since` is the version the caller has (0: none).
    pub fn fetch(
        &mut self,
        settings: &[(String, String)],
        since: u64,
    ) -> Result<types::CatalogUpdate, PluginError> {
        call(&self.loaded, &mut self.live, |store, inst| {
            inst.call_fetch(store, &settings.to_vec(), since)
        })
    }
}

/// A loaded watch-catalog plugin: it names the agent reads it needs, the host runs them, and the plugin
/// turns their answers into a catalog.
pub struct WatchCatalogPlugin {
    pub(crate) loaded: Loaded,
    pub(crate) live: Option<(Store<State>, watch_world::WatchCatalogPlugin)>,
}

impl WatchCatalogPlugin {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.loaded.name
    }

    /// Runs the plugin's `configure` on a fresh instance with `settings`, which every later instance
    /// gets too. Refused settings leave the plugin as it was.
    pub fn configure(&mut self, settings: &[(String, String)]) -> Result<(), PluginError> {
        configure(&mut self.loaded, &mut self.live, settings)
    }

    pub(crate) fn instance(
        &mut self,
    ) -> Result<&mut (Store<State>, watch_world::WatchCatalogPlugin), PluginError> {
        live(&self.loaded, &mut self.live)
    }

    /// The watches to run and, once the answers suffice, the catalog.
    pub fn plan(
        &mut self,
        settings: &[(String, String)],
        answers: &[types::WatchAnswer],
    ) -> Result<types::WatchPlan, PluginError> {
        call(&self.loaded, &mut self.live, |store, inst| {
            inst.call_plan(store, &settings.to_vec(), answers)
        })
    }
}

/// A loaded router plugin.
pub struct RouterPlugin {
    pub(crate) loaded: Loaded,
    pub(crate) live: Option<(Store<State>, router_world::RouterPlugin)>,
}

impl RouterPlugin {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.loaded.name
    }

    /// Runs the plugin's `configure` on a fresh instance with `settings`, which every later instance
    /// gets too. Refused settings leave the plugin as it was.
    pub fn configure(&mut self, settings: &[(String, String)]) -> Result<(), PluginError> {
        configure(&mut self.loaded, &mut self.live, settings)
    }

    pub(crate) fn instance(
        &mut self,
    ) -> Result<&mut (Store<State>, router_world::RouterPlugin), PluginError> {
        live(&self.loaded, &mut self.live)
    }

    /// A gateway's routes for `catalog` in `local_dc`.
    pub fn gateway_routes(
        &mut self,
        settings: &[(String, String)],
        catalog: &types::Catalog,
        local_dc: &str,
    ) -> Result<Vec<types::Route>, PluginError> {
        call(&self.loaded, &mut self.live, |store, inst| {
            inst.call_gateway_routes(store, &settings.to_vec(), catalog, local_dc)
        })
    }

    /// The plan of the sidecar fronting `service` in `local_dc`.
    pub fn sidecar_plan(
        &mut self,
        settings: &[(String, String)],
        catalog: &types::Catalog,
        local_dc: &str,
        service: &str,
        proxy_id: Option<&str>,
    ) -> Result<types::SidecarPlan, PluginError> {
        call(&self.loaded, &mut self.live, |store, inst| {
            inst.call_sidecar_plan(
                store,
                &settings.to_vec(),
                catalog,
                local_dc,
                service,
                proxy_id,
            )
        })
    }
}

/// A loaded connection hook: one per data-plane core.
pub struct HookPlugin {
    pub(crate) loaded: Loaded,
    pub(crate) live: Option<(Store<State>, hook_world::ConnectionHook)>,
}

impl HookPlugin {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.loaded.name
    }

    /// Runs the plugin's `configure` on a fresh instance with `settings`, which every later instance
    /// gets too. Refused settings leave the plugin as it was.
    pub fn configure(&mut self, settings: &[(String, String)]) -> Result<(), PluginError> {
        configure(&mut self.loaded, &mut self.live, settings)
    }

    /// One connection's verdict.
    pub fn decide(
        &mut self,
        settings: &[(String, String)],
        sni: Option<&str>,
        alpn: &[String],
        source: &str,
    ) -> Result<types::Verdict, PluginError> {
        // A hook cannot refuse: its answer is a verdict.
        call(&self.loaded, &mut self.live, |store, inst| {
            inst.call_decide(store, &settings.to_vec(), sni, alpn, source)
                .map(Ok)
        })
    }
}
