//! `consul-router`: a mesh gateway's routes the way Consul computes them (see `meshgate_mesh::catalog`):
//! local services' SNIs to their healthy sidecars, `*.<dc>.internal.<td>` to other datacenters' gateways,
//! and Consul server names when `wan_federation = "true"`; with `datacenter_failover = "dc2=dc3"`
//! (opt-in), failover groups for other datacenters' names (see `meshgate_mesh::dc_failover`); and a
//! sidecar's plan (upstreams by gateway
//! mode, intentions), see `meshgate_mesh::sidecar`.

wit_bindgen::generate!({
    world: "router-plugin",
    path: "../wit",
    with: {
        "meshgate:plugin/types@0.5.0": meshgate_guest::types,
        "meshgate:plugin/host@0.5.0": meshgate_guest::host,
    },
});

struct ConsulRouter;

/// Every key this plugin reads.
const KNOWN: &[&str] = &["wan_federation", meshgate_mesh::dc_failover::SETTING];

impl Guest for ConsulRouter {
    fn configure(settings: Vec<(String, String)>) -> Result<(), String> {
        meshgate_guest::sdk::init();
        let config = meshgate_guest::sdk::Config::new(&settings);
        config.only(KNOWN)?;
        config.bool_or("wan_federation", false)?;
        if let Some(policy) = config.str(meshgate_mesh::dc_failover::SETTING) {
            meshgate_mesh::DatacenterFailover::parse(policy)
                .map_err(|e| format!("setting `{}`: {e}", meshgate_mesh::dc_failover::SETTING))?;
        }
        Ok(())
    }
    fn gateway_routes(
        settings: Vec<(String, String)>,
        catalog: Catalog,
        local_datacenter: String,
    ) -> Result<Vec<Route>, String> {
        let wan = meshgate_guest::setting(&settings, "wan_federation") == Some("true");
        // Opt-in: without the setting, exactly Consul's routes.
        let policy = meshgate_guest::setting(&settings, meshgate_mesh::dc_failover::SETTING)
            .map(meshgate_mesh::DatacenterFailover::parse)
            .transpose()
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        let catalog = meshgate_guest::catalog_from_wit(catalog);
        Ok(meshgate_guest::routes_to_wit(
            catalog.gateway_routes_with_failover(&local_datacenter, wan, &policy),
        ))
    }

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

export!(ConsulRouter);
