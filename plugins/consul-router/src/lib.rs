//! `consul-router`: a mesh gateway's routes the way Consul computes them (see `meshgate_mesh::catalog`):
//! local services' SNIs to their healthy sidecars, `*.<dc>.internal.<td>` to other datacenters' gateways,
//! and Consul server names when `wan_federation = "true"`; with `datacenter_failover = "dc2=dc3"`
//! (opt-in), failover groups for other datacenters' names (see `meshgate_mesh::dc_failover`); and a
//! sidecar's plan (upstreams by gateway
//! mode, intentions), see `meshgate_mesh::sidecar`.
//!
//! Incremental (world `incremental-router-plugin`): the instance keeps the catalog and its routes
//! (`meshgate_mesh::incremental`), so a delta that moves one service's sidecars recomputes that
//! service's routes only; the host starts every new instance with the whole catalog.

use meshgate_mesh::incremental::{Delta, GatewayRoutes, Named};
use std::cell::RefCell;

wit_bindgen::generate!({
    world: "incremental-router-plugin",
    path: "../wit",
    with: {
        "meshgate:plugin/types@0.6.0": meshgate_guest::types,
        "meshgate:plugin/host@0.6.0": meshgate_guest::host,
    },
});

struct ConsulRouter;

thread_local! {
    // Lives as long as the instance: the host sends a new one the whole catalog first.
    static KEPT: RefCell<Option<GatewayRoutes>> = const { RefCell::new(None) };
}

/// The settings a gateway's routes depend on.
fn gateway_settings(
    settings: &[(String, String)],
) -> Result<(bool, meshgate_mesh::DatacenterFailover), String> {
    let wan = meshgate_guest::setting(settings, "wan_federation") == Some("true");
    // Opt-in: without the setting, exactly Consul's routes.
    let policy = meshgate_guest::setting(settings, meshgate_mesh::dc_failover::SETTING)
        .map(meshgate_mesh::DatacenterFailover::parse)
        .transpose()
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    Ok((wan, policy))
}

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
        let (wan, policy) = gateway_settings(&settings)?;
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

    fn update_routes(
        settings: Vec<(String, String)>,
        change: CatalogChange,
        local_datacenter: String,
    ) -> Result<RouteChanges, String> {
        let (wan, policy) = gateway_settings(&settings)?;
        KEPT.with(|kept| {
            let mut kept = kept.borrow_mut();
            match change {
                CatalogChange::Whole(catalog) => {
                    let routes = GatewayRoutes::new(
                        meshgate_guest::catalog_from_wit(catalog),
                        &local_datacenter,
                        wan,
                        policy,
                    );
                    let upserts = meshgate_guest::routes_to_wit(routes.routes().cloned().collect());
                    *kept = Some(routes);
                    Ok(RouteChanges {
                        upserts,
                        removed: Vec::new(),
                    })
                }
                CatalogChange::Delta(delta) => {
                    let routes = kept
                        .as_mut()
                        .filter(|r| r.made_for(&local_datacenter, wan, &policy))
                        .ok_or("a delta before the whole catalog (or for another gateway)")?;
                    let delta = Delta {
                        instances: delta
                            .instances
                            .into_iter()
                            .map(|n| Named {
                                datacenter: n.datacenter,
                                name: n.name,
                                instances: n
                                    .instances
                                    .into_iter()
                                    .map(meshgate_guest::instance_from_wit)
                                    .collect(),
                            })
                            .collect(),
                        config_entries: delta
                            .config_entries
                            .map(|e| e.into_iter().map(meshgate_guest::entry_from_wit).collect()),
                    };
                    let changes = routes.apply(delta);
                    Ok(RouteChanges {
                        upserts: meshgate_guest::routes_to_wit(changes.upserts),
                        removed: changes.removed,
                    })
                }
            }
        })
    }
}

export!(ConsulRouter);
