//! Shared code for meshgate plugins written in Rust: the host imports (generated once from
//! `plugins/wit`), settings lookup, and conversions between the WIT types and `meshgate_mesh`'s model, so a
//! plugin can use Consul's semantics from `meshgate_mesh` directly.

wit_bindgen::generate!({
    world: "guest-common",
    path: "../wit",
});

pub use meshgate::plugin::host;
pub use meshgate::plugin::types;

use meshgate_mesh::catalog::{Catalog, Instance, RouteDef};
use meshgate_mesh::model::{
    ConfigEntry, EntryKind, Failover, GatewayMode, Health, HostPort, IntentionAction,
    IntentionSource, Proxy, Redirect, Service, ServiceKind, Upstream,
};
use meshgate_mesh::sidecar::SidecarPlan;

/// The guest SDK `meshgate plugin new` writes beside a new plugin (`crates/pluginkit/templates/sdk.rs`):
/// the shipped plugins use the very same file, so they are built the way a user's plugin is.
#[path = "../../../crates/pluginkit/templates/sdk.rs"]
pub mod sdk;

/// A setting from the plugin's `config = { .. }`.
pub fn setting<'a>(settings: &'a [(String, String)], key: &str) -> Option<&'a str> {
    settings
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Logs through the host.
pub fn log(level: types::LogLevel, message: &str) {
    host::log(level, message);
}

fn mode_to(m: GatewayMode) -> types::GatewayMode {
    match m {
        GatewayMode::None => types::GatewayMode::None,
        GatewayMode::Local => types::GatewayMode::Local,
        GatewayMode::Remote => types::GatewayMode::Remote,
    }
}

fn mode_from(m: types::GatewayMode) -> GatewayMode {
    match m {
        types::GatewayMode::None => GatewayMode::None,
        types::GatewayMode::Local => GatewayMode::Local,
        types::GatewayMode::Remote => GatewayMode::Remote,
    }
}

fn upstream_to(u: &Upstream) -> types::Upstream {
    types::Upstream {
        destination_type: u.destination_type.clone(),
        destination_name: u.destination_name.clone(),
        destination_namespace: u.destination_namespace.clone(),
        datacenter: u.datacenter.clone(),
        local_bind_address: u.local_bind_address.clone(),
        local_bind_port: u.local_bind_port,
        mesh_gateway: u.mesh_gateway.map(mode_to),
    }
}

fn upstream_from(u: types::Upstream) -> Upstream {
    Upstream {
        destination_type: u.destination_type,
        destination_name: u.destination_name,
        destination_namespace: u.destination_namespace,
        datacenter: u.datacenter,
        local_bind_address: u.local_bind_address,
        local_bind_port: u.local_bind_port,
        mesh_gateway: u.mesh_gateway.map(mode_from),
    }
}

/// The WIT form of a catalog.
pub fn catalog_to_wit(c: &Catalog) -> types::Catalog {
    types::Catalog {
        trust_domain: c.trust_domain.clone(),
        instances: c
            .instances
            .iter()
            .map(|i| {
                let s = &i.service;
                let hp = |t: &str| {
                    s.tagged_addresses.get(t).map(|a| types::HostPort {
                        address: a.address.clone(),
                        port: a.port,
                    })
                };
                types::Instance {
                    datacenter: i.datacenter.clone(),
                    node_address: i.node_address.clone(),
                    id: s.id.clone(),
                    name: s.name.clone(),
                    kind: match s.kind {
                        ServiceKind::Typical => types::ServiceKind::Typical,
                        ServiceKind::ConnectProxy => types::ServiceKind::ConnectProxy,
                        ServiceKind::MeshGateway => types::ServiceKind::MeshGateway,
                    },
                    namespace: s.namespace.clone(),
                    address: s.address.clone(),
                    port: s.port,
                    tags: s.tags.clone(),
                    meta: s.meta.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    lan: hp("lan"),
                    wan: hp("wan"),
                    proxy: s.proxy.as_ref().map(|p| types::Proxy {
                        destination_service_name: p.destination_service_name.clone(),
                        local_service_address: p.local_service_address.clone(),
                        local_service_port: p.local_service_port,
                        mesh_gateway: p.mesh_gateway.map(mode_to),
                        upstreams: p.upstreams.iter().map(upstream_to).collect(),
                    }),
                    connect_native: s.connect_native,
                    health: match s.health() {
                        Health::Passing => types::Health::Passing,
                        Health::Warning => types::Health::Warning,
                        Health::Critical => types::Health::Critical,
                        Health::Maintenance => types::Health::Maintenance,
                    },
                }
            })
            .collect(),
        config_entries: c
            .config_entries
            .iter()
            .map(|e| types::ConfigEntry {
                kind: match e.kind {
                    EntryKind::ProxyDefaults => types::EntryKind::ProxyDefaults,
                    EntryKind::ServiceDefaults => types::EntryKind::ServiceDefaults,
                    EntryKind::ServiceResolver => types::EntryKind::ServiceResolver,
                    EntryKind::ServiceIntentions => types::EntryKind::ServiceIntentions,
                },
                name: e.name.clone(),
                mesh_gateway: e.mesh_gateway.map(mode_to),
                subsets: e
                    .subsets
                    .iter()
                    .map(|s| (s.name.clone(), s.filter.clone()))
                    .collect(),
                default_subset: e.default_subset.clone(),
                sources: e.sources.iter().map(intention_to).collect(),
                failover: e.failover.iter().map(failover_to).collect(),
                redirect: e.redirect.as_ref().map(redirect_to),
            })
            .collect(),
    }
}

/// The model form of a catalog received from the host.
pub fn catalog_from_wit(c: types::Catalog) -> Catalog {
    Catalog {
        trust_domain: c.trust_domain,
        instances: c.instances.into_iter().map(instance_from_wit).collect(),
        config_entries: c.config_entries.into_iter().map(entry_from_wit).collect(),
    }
}

/// The model form of one instance received from the host.
pub fn instance_from_wit(i: types::Instance) -> Instance {
    let mut tagged = std::collections::BTreeMap::new();
    for (tag, hp) in [("lan", i.lan), ("wan", i.wan)] {
        if let Some(hp) = hp {
            tagged.insert(
                tag.to_owned(),
                HostPort {
                    address: hp.address,
                    port: hp.port,
                },
            );
        }
    }
    let status = match i.health {
        types::Health::Passing => Health::Passing,
        types::Health::Warning => Health::Warning,
        types::Health::Critical => Health::Critical,
        types::Health::Maintenance => Health::Maintenance,
    };
    Instance {
        datacenter: i.datacenter,
        node_address: i.node_address,
        service: Service {
            id: i.id,
            name: i.name,
            kind: match i.kind {
                types::ServiceKind::Typical => ServiceKind::Typical,
                types::ServiceKind::ConnectProxy => ServiceKind::ConnectProxy,
                types::ServiceKind::MeshGateway => ServiceKind::MeshGateway,
            },
            namespace: i.namespace,
            address: i.address,
            port: i.port,
            tags: i.tags,
            meta: i.meta.into_iter().collect(),
            tagged_addresses: tagged,
            proxy: i.proxy.map(|p| Proxy {
                destination_service_name: p.destination_service_name,
                destination_service_id: None,
                local_service_address: p.local_service_address,
                local_service_port: p.local_service_port,
                mesh_gateway: p.mesh_gateway.map(mode_from),
                upstreams: p.upstreams.into_iter().map(upstream_from).collect(),
            }),
            sidecar: None,
            connect_native: i.connect_native,
            checks: vec![meshgate_mesh::model::Check {
                name: "catalog".to_owned(),
                status,
            }],
        },
    }
}

/// The model form of one config entry received from the host.
pub fn entry_from_wit(e: types::ConfigEntry) -> ConfigEntry {
    ConfigEntry {
        kind: match e.kind {
            types::EntryKind::ProxyDefaults => EntryKind::ProxyDefaults,
            types::EntryKind::ServiceDefaults => EntryKind::ServiceDefaults,
            types::EntryKind::ServiceResolver => EntryKind::ServiceResolver,
            types::EntryKind::ServiceIntentions => EntryKind::ServiceIntentions,
        },
        name: e.name,
        mesh_gateway: e.mesh_gateway.map(mode_from),
        // Filters were validated when the catalog read them; one that no longer parses is dropped.
        subsets: e
            .subsets
            .into_iter()
            .filter_map(|(name, filter)| {
                let parsed = meshgate_mesh::filter::Filter::parse(&filter).ok()?;
                Some(meshgate_mesh::model::Subset {
                    name,
                    filter,
                    parsed,
                })
            })
            .collect(),
        default_subset: e.default_subset,
        sources: e
            .sources
            .into_iter()
            .map(|s| IntentionSource {
                name: s.name,
                namespace: s.namespace,
                action: match s.action {
                    types::IntentionAction::Allow => IntentionAction::Allow,
                    types::IntentionAction::Deny => IntentionAction::Deny,
                },
            })
            .collect(),
        failover: e.failover.into_iter().map(failover_from).collect(),
        redirect: e.redirect.map(redirect_from),
        other: Default::default(),
    }
}

/// The WIT form of a resolver's failover.
pub fn failover_to(f: &Failover) -> types::ResolverFailover {
    types::ResolverFailover {
        key: f.key.clone(),
        service: f.service.clone(),
        service_subset: f.service_subset.clone(),
        namespace: f.namespace.clone(),
        datacenters: f.datacenters.clone(),
    }
}

fn failover_from(f: types::ResolverFailover) -> Failover {
    Failover {
        key: f.key,
        service: f.service,
        service_subset: f.service_subset,
        namespace: f.namespace,
        datacenters: f.datacenters,
    }
}

/// The WIT form of a resolver's redirect.
pub fn redirect_to(r: &Redirect) -> types::ResolverRedirect {
    types::ResolverRedirect {
        service: r.service.clone(),
        service_subset: r.service_subset.clone(),
        namespace: r.namespace.clone(),
        datacenter: r.datacenter.clone(),
    }
}

fn redirect_from(r: types::ResolverRedirect) -> Redirect {
    Redirect {
        service: r.service,
        service_subset: r.service_subset,
        namespace: r.namespace,
        datacenter: r.datacenter,
    }
}

fn target_to(t: meshgate_mesh::Target) -> types::UpstreamTarget {
    types::UpstreamTarget {
        origin: t.origin.to_string(),
        service: t.id.service,
        subset: t.id.subset,
        namespace: t.id.namespace,
        datacenter: t.id.datacenter,
        sni: t.sni,
        identity: t.identity,
        via_gateway: t.via_gateway,
        next_hops: t.next_hops,
        skipped: t.skipped,
    }
}

/// The WIT form of compiled routes.
pub fn routes_to_wit(routes: Vec<RouteDef>) -> Vec<types::Route> {
    routes
        .into_iter()
        .map(|r| types::Route {
            pattern: r.pattern,
            endpoints: r.endpoints,
            reason: r.reason,
            failover: r.failover,
            // Consul weights no gateway route: every healthy instance is equal.
            weights: Vec::new(),
        })
        .collect()
}

fn intention_to(s: &IntentionSource) -> types::IntentionSource {
    types::IntentionSource {
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        action: match s.action {
            IntentionAction::Allow => types::IntentionAction::Allow,
            IntentionAction::Deny => types::IntentionAction::Deny,
        },
    }
}

/// The WIT form of a sidecar plan.
fn sidecar_plan_to_wit(p: SidecarPlan) -> types::SidecarPlan {
    types::SidecarPlan {
        service: p.service,
        namespace: p.namespace,
        datacenter: p.datacenter,
        proxy_id: p.proxy_id,
        public: p.public,
        local_app: p.local_app,
        upstreams: p
            .upstreams
            .into_iter()
            .map(|u| types::UpstreamPlan {
                destination_namespace: u
                    .upstream
                    .destination_namespace
                    .unwrap_or_else(|| meshgate_mesh::names::DEFAULT.to_owned()),
                destination_name: u.upstream.destination_name,
                datacenter: u.datacenter,
                local_bind_address: u.upstream.local_bind_address.unwrap_or_default(),
                local_bind_port: u.upstream.local_bind_port,
                sni: u.sni,
                identity: u.identity,
                mode: mode_to(u.mode),
                mode_source: u.mode_source.label().to_owned(),
                via_gateway: u.via_gateway,
                next_hops: u.next_hops,
                targets: u.targets.into_iter().map(target_to).collect(),
            })
            .collect(),
        intentions: p.intentions.iter().map(intention_to).collect(),
    }
}

/// A sidecar plan computed Consul's way (`meshgate_mesh::sidecar`), for routers that do not change it.
pub fn consul_sidecar_plan(
    catalog: types::Catalog,
    local_datacenter: &str,
    service: &str,
    proxy_id: Option<&str>,
) -> Result<types::SidecarPlan, String> {
    catalog_from_wit(catalog)
        .sidecar_plan(local_datacenter, service, proxy_id)
        .map(sidecar_plan_to_wit)
        .map_err(|e| e.to_string())
}
