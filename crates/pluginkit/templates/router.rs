//! `{{name}}`: a meshgate router (world `router-plugin`). The gateway calls `gateway-routes` whenever the
//! catalog changes and serves the routes it returns; connections never call it.
//!
//! This one routes each local service's SNI (`<service>.<namespace>.<dc>.internal.<trust-domain>`) to
//! its healthy sidecars (passing or warning), like Consul's gateway does for local services.
//!
//! An instance whose service meta has `weight = "N"` gets that share of new connections against its
//! service's other instances (default 1; `0`: a standby, used only when the others fail): give a canary
//! instance `weight = "1"` and the stable ones `"9"` for a 10 % split.
//!
//! Settings (`[router] config = { ... }`), checked by `configure` before the router serves:
//! - `allow = "web, api"`: only these services get routes (unset: every local service).

mod sdk;

wit_bindgen::generate!({ world: "router-plugin", path: "wit" });

// `Catalog`, `Route` and `SidecarPlan` come from the world (generate! defines them at the crate root);
// other types from their interface.
use meshgate::plugin::types::{Health, Instance, ServiceKind};
use sdk::{Config, SettingError};
use std::collections::BTreeMap;

/// Every key this plugin reads.
const KNOWN: &[&str] = &["allow"];

/// `host:port` of an instance (its own address, else its node's).
fn endpoint(i: &Instance) -> String {
    let host = if i.address.is_empty() { &i.node_address } else { &i.address };
    if host.contains(':') {
        format!("[{host}]:{}", i.port)
    } else {
        format!("{host}:{}", i.port)
    }
}

/// An instance's `weight` service meta (1 when absent).
fn weight(i: &Instance) -> Result<u32, SettingError> {
    match i.meta.iter().find(|(k, _)| k == "weight") {
        None => Ok(1),
        Some((_, v)) => v.trim().parse().map_err(|_| SettingError {
            key: format!("meta.weight of instance {}", i.id),
            problem: format!("{v:?} is not an unsigned integer"),
        }),
    }
}

/// The routes for `local_dc`: a pure function, so `cargo test` checks it without a gateway.
pub fn routes(
    settings: &Config<'_>,
    catalog: &Catalog,
    local_dc: &str,
) -> Result<Vec<Route>, SettingError> {
    settings.only(KNOWN)?;
    let allow = settings.list("allow");
    let mut services: BTreeMap<(String, String), Vec<(String, u32)>> = BTreeMap::new();
    for i in &catalog.instances {
        let Some(proxy) = i.proxy.as_ref().filter(|_| i.kind == ServiceKind::ConnectProxy) else {
            continue;
        };
        let service = &proxy.destination_service_name;
        if i.datacenter != local_dc || !(allow.is_empty() || allow.contains(&service.as_str())) {
            continue;
        }
        let namespace = if i.namespace.is_empty() { "default" } else { &i.namespace };
        let endpoints = services
            .entry((service.clone(), namespace.to_owned()))
            .or_default();
        if matches!(i.health, Health::Passing | Health::Warning) {
            endpoints.push((endpoint(i), weight(i)?));
        }
    }
    Ok(services
        .into_iter()
        // A service with no healthy sidecar gets no route: its connections are refused, not stalled.
        .filter(|(_, endpoints)| !endpoints.is_empty())
        .map(|((service, namespace), weighted)| {
            // Equal weights need no list: the gateway then spreads connections evenly.
            let weights: Vec<u32> = if weighted.iter().all(|(_, w)| *w == 1) {
                Vec::new()
            } else {
                weighted.iter().map(|(_, w)| *w).collect()
            };
            let endpoints = weighted.into_iter().map(|(e, _)| e).collect();
            Route {
            pattern: format!(
                "{service}.{namespace}.{local_dc}.internal.{}",
                catalog.trust_domain
            ),
            endpoints,
            // Further endpoint groups, tried when every endpoint before them failed or is known down.
            failover: Vec::new(),
            // Weights of `endpoints`, in order (empty: equal).
            weights,
            reason: format!("local service {service} ({{name}})"),
        }})
        .collect())
}

struct Plugin;

impl Guest for Plugin {
    fn configure(settings: Vec<(String, String)>) -> Result<(), String> {
        sdk::init();
        Config::new(&settings).only(KNOWN)?;
        Ok(())
    }
    fn gateway_routes(
        settings: Vec<(String, String)>,
        catalog: Catalog,
        local_datacenter: String,
    ) -> Result<Vec<Route>, String> {
        sdk::init();
        let routes = routes(&Config::new(&settings), &catalog, &local_datacenter)?;
        log_debug!("{} routes for {local_datacenter}", routes.len());
        Ok(routes)
    }

    fn sidecar_plan(
        _settings: Vec<(String, String)>,
        _catalog: Catalog,
        _local_datacenter: String,
        _service: String,
        _proxy_id: Option<String>,
    ) -> Result<SidecarPlan, String> {
        sdk::init();
        Err("{{name}} routes gateways only; use consul-router for sidecars".into())
    }
}

export!(Plugin);

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate::plugin::types::Proxy;

    fn sidecar(service: &str, dc: &str, port: u16, health: Health) -> Instance {
        Instance {
            datacenter: dc.into(),
            node_address: "127.0.0.1".into(),
            id: format!("{service}-{port}"),
            name: format!("{service}-sidecar-proxy"),
            kind: ServiceKind::ConnectProxy,
            namespace: String::new(),
            address: String::new(),
            port,
            tags: Vec::new(),
            meta: Vec::new(),
            lan: None,
            wan: None,
            proxy: Some(Proxy {
                destination_service_name: service.into(),
                local_service_address: None,
                local_service_port: None,
                mesh_gateway: None,
                upstreams: Vec::new(),
            }),
            connect_native: false,
            health,
        }
    }

    #[test]
    fn healthy_local_sidecars_of_allowed_services() {
        let catalog = Catalog {
            trust_domain: "td.consul".into(),
            instances: vec![
                sidecar("web", "dc1", 1, Health::Passing),
                sidecar("web", "dc1", 2, Health::Critical),
                sidecar("api", "dc1", 3, Health::Warning),
                sidecar("db", "dc1", 4, Health::Passing),
                sidecar("web", "dc2", 5, Health::Passing),
            ],
            config_entries: Vec::new(),
        };
        let raw = vec![("allow".to_string(), "web, api".to_string())];
        let got = routes(&Config::new(&raw), &catalog, "dc1").unwrap();
        let got: Vec<(&str, &[String])> =
            got.iter().map(|r| (r.pattern.as_str(), r.endpoints.as_slice())).collect();
        assert_eq!(
            got,
            [
                ("api.default.dc1.internal.td.consul", &["127.0.0.1:3".to_string()][..]),
                ("web.default.dc1.internal.td.consul", &["127.0.0.1:1".to_string()][..]),
            ]
        );
        assert!(routes(&Config::new(&[("alow".into(), "web".into())]), &catalog, "dc1").is_err());
    }

    #[test]
    fn a_weight_meta_makes_a_split() {
        let mut canary = sidecar("api", "dc1", 2, Health::Passing);
        canary.meta.push(("weight".into(), "1".into()));
        let mut stable = sidecar("api", "dc1", 1, Health::Passing);
        stable.meta.push(("weight".into(), "9".into()));
        let catalog = Catalog {
            trust_domain: "td.consul".into(),
            instances: vec![stable, canary],
            config_entries: Vec::new(),
        };
        let got = routes(&Config::new(&[]), &catalog, "dc1").unwrap();
        assert_eq!(got[0].weights, [9, 1]);
    }
}
