//! The typed handle of each kind of plugin — catalog, watch-fed catalog, router, connection hook — whose methods are the
//! world's exports, each called under the sandbox's rules.

use crate::bindings::{
    catalog_world, hook_world, incremental_router_world, router_world, watch_world, World,
};
use crate::sandbox::{call, configure, live, Loaded};
use crate::{types, PluginError, State};
use wasmtime::component::{Component, Linker};
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

    /// Asks for the catalog; `since` is the version the caller has (0: none). `changed_files` is what
    /// the plugin's `changed-files` answers during this call (`None`: the host cannot tell).
    pub fn fetch(
        &mut self,
        settings: &[(String, String)],
        since: u64,
        changed_files: Option<Vec<String>>,
    ) -> Result<types::CatalogUpdate, PluginError> {
        call(&self.loaded, &mut self.live, |store, inst| {
            store.data_mut().changed_files = changed_files;
            let answer = inst.call_fetch(&mut *store, &settings.to_vec(), since);
            store.data_mut().changed_files = None;
            answer
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
    pub(crate) live: Option<(Store<State>, RouterInstance)>,
}

/// A router instance, by the world its component implements.
pub(crate) enum RouterInstance {
    Whole(router_world::RouterPlugin),
    Incremental(incremental_router_world::IncrementalRouterPlugin),
}

/// Whether a component exports `update-routes` (the `incremental-router-plugin` world).
pub(crate) fn is_incremental_router(engine: &wasmtime::Engine, component: &Component) -> bool {
    component
        .component_type()
        .exports(engine)
        .any(|(name, _)| name == "update-routes")
}

impl World for RouterInstance {
    fn instantiate(
        store: &mut Store<State>,
        component: &Component,
        linker: &Linker<State>,
    ) -> wasmtime::Result<Self> {
        if is_incremental_router(store.engine(), component) {
            incremental_router_world::IncrementalRouterPlugin::instantiate(store, component, linker)
                .map(RouterInstance::Incremental)
        } else {
            router_world::RouterPlugin::instantiate(store, component, linker)
                .map(RouterInstance::Whole)
        }
    }

    fn configure(
        &self,
        store: &mut Store<State>,
        settings: &[(String, String)],
    ) -> wasmtime::Result<Result<(), String>> {
        match self {
            RouterInstance::Whole(i) => i.call_configure(store, &settings.to_vec()),
            RouterInstance::Incremental(i) => i.call_configure(store, &settings.to_vec()),
        }
    }
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

    pub(crate) fn instance(&mut self) -> Result<&mut (Store<State>, RouterInstance), PluginError> {
        live(&self.loaded, &mut self.live)
    }

    /// Whether the plugin exports `update-routes` (world `incremental-router-plugin`).
    pub fn is_incremental(&self) -> bool {
        is_incremental_router(&self.loaded.engine, &self.loaded.component)
    }

    /// A gateway's routes for `catalog` in `local_dc`.
    pub fn gateway_routes(
        &mut self,
        settings: &[(String, String)],
        catalog: &types::Catalog,
        local_dc: &str,
    ) -> Result<Vec<types::Route>, PluginError> {
        call(&self.loaded, &mut self.live, |store, inst| match inst {
            RouterInstance::Whole(i) => {
                i.call_gateway_routes(store, &settings.to_vec(), catalog, local_dc)
            }
            RouterInstance::Incremental(i) => {
                i.call_gateway_routes(store, &settings.to_vec(), catalog, local_dc)
            }
        })
    }

    /// An incremental router's answer to `change` (see the `incremental-router-plugin` world). The
    /// caller must send the whole catalog to a new instance: [`RouterPlugin::is_live`] says whether
    /// the instance that answered the previous call is still there. A router without the export
    /// refuses.
    pub fn update_routes(
        &mut self,
        settings: &[(String, String)],
        change: &types::CatalogChange,
        local_dc: &str,
    ) -> Result<types::RouteChanges, PluginError> {
        let name = self.loaded.name.clone();
        call(&self.loaded, &mut self.live, |store, inst| match inst {
            RouterInstance::Incremental(i) => {
                i.call_update_routes(store, &settings.to_vec(), change, local_dc)
            }
            RouterInstance::Whole(_) => {
                Ok(Err(format!("plugin {name} does not export update-routes")))
            }
        })
    }

    /// Whether an instance is running (none: the next call makes a fresh one, which holds nothing).
    pub fn is_live(&self) -> bool {
        self.live.is_some()
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
        let settings = settings.to_vec();
        call(&self.loaded, &mut self.live, |store, inst| match inst {
            RouterInstance::Whole(i) => {
                i.call_sidecar_plan(store, &settings, catalog, local_dc, service, proxy_id)
            }
            RouterInstance::Incremental(i) => {
                i.call_sidecar_plan(store, &settings, catalog, local_dc, service, proxy_id)
            }
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
