//! `export-control`: an example router plugin, written the way a platform team would write one.
//!
//! Policy: **default-deny export**. A gateway routes its own datacenter's services only for callers in
//! other datacenters (local callers never go through their own gateway), so a local service's route is
//! the only door into it from outside. This plugin computes Consul's routes and keeps a local service's
//! route only if the service is listed in the `export` setting (comma-separated names, `*` for all).
//! Routes to other datacenters are untouched: what leaves is their gateways' business.
//!
//! Settings: `export = "api,web"`; `wan_federation = "true"` as for consul-router.

use meshgate_guest::types::LogLevel;
use meshgate_mesh::SniName;

wit_bindgen::generate!({
    world: "router-plugin",
    path: "../wit",
    with: {
        "meshgate:plugin/types@0.6.0": meshgate_guest::types,
        "meshgate:plugin/host@0.6.0": meshgate_guest::host,
    },
});

struct ExportControl;

impl Guest for ExportControl {
    fn configure(settings: Vec<(String, String)>) -> Result<(), String> {
        meshgate_guest::sdk::init();
        let config = meshgate_guest::sdk::Config::new(&settings);
        config.only(&["export", "wan_federation"])?;
        config.bool_or("wan_federation", false)?;
        Ok(())
    }
    fn gateway_routes(
        settings: Vec<(String, String)>,
        catalog: Catalog,
        local_datacenter: String,
    ) -> Result<Vec<Route>, String> {
        let exported: Vec<&str> = meshgate_guest::setting(&settings, "export")
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let wan = meshgate_guest::setting(&settings, "wan_federation") == Some("true");
        let catalog = meshgate_guest::catalog_from_wit(catalog);
        let mut routes = catalog.gateway_routes(&local_datacenter, wan);
        let before = routes.len();
        routes.retain(|r| match SniName::parse(&r.pattern) {
            Some(SniName::Service {
                service,
                datacenter,
                ..
            }) if datacenter == local_datacenter => {
                exported.contains(&"*") || exported.contains(&service.as_str())
            }
            _ => true,
        });
        meshgate_guest::log(
            LogLevel::Debug,
            &format!(
                "export-control: {} of {before} routes kept (export = {exported:?})",
                routes.len()
            ),
        );
        Ok(meshgate_guest::routes_to_wit(routes))
    }

    /// Export control is the gateway's business; sidecars are planned as Consul plans them.
    fn sidecar_plan(
        _settings: Vec<(String, String)>,
        catalog: Catalog,
        local_datacenter: String,
        service: String,
        proxy_id: Option<String>,
    ) -> Result<SidecarPlan, String> {
        meshgate_guest::consul_sidecar_plan(
            catalog,
            &local_datacenter,
            &service,
            proxy_id.as_deref(),
        )
    }
}

export!(ExportControl);
