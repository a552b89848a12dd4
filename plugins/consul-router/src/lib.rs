//! `consul-router`: a mesh gateway's routes the way Consul computes them (see `meshgate_mesh::catalog`):
//! local services' SNIs to their healthy sidecars, `*.<dc>.internal.<td>` to other datacenters' gateways,
//! and Consul server names when `wan_federation = "true"`; and a sidecar's plan (upstreams by gateway
//! mode, intentions), see `meshgate_mesh::sidecar`.

wit_bindgen::generate!({
    world: "router-plugin",
    path: "../wit",
    with: {
        "meshgate:plugin/types@0.4.0": meshgate_guest::types,
        "meshgate:plugin/host@0.4.0": meshgate_guest::host,
    },
});

struct ConsulRouter;

impl Guest for ConsulRouter {
    fn gateway_routes(
        settings: Vec<(String, String)>,
        catalog: Catalog,
        local_datacenter: String,
    ) -> Result<Vec<Route>, String> {
        let wan = meshgate_guest::setting(&settings, "wan_federation") == Some("true");
        let catalog = meshgate_guest::catalog_from_wit(catalog);
        Ok(meshgate_guest::routes_to_wit(
            catalog.gateway_routes(&local_datacenter, wan),
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
