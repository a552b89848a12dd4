//! The catalog (what a catalog plugin returns), gateway-mode resolution with Consul's precedence, and
//! the two compilations built on them: a mesh gateway's routes, and a sidecar's upstream plan (its
//! targets in [`crate::resolver`]'s order, each with next hops and whether its service is healthy).

use crate::model::{ConfigEntry, EntryKind, GatewayMode, Health, Service, ServiceKind, Upstream};
use crate::names::{self, SniName};
pub use crate::resolver::{Origin, TargetId};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Meta key that marks a gateway as exposing Consul servers over WAN federation.
pub const WAN_FEDERATION_META: &str = "consul-wan-federation";

/// One registered instance in one datacenter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Instance {
    /// Its datacenter.
    pub datacenter: String,
    /// Its node's address (used when the service has none).
    pub node_address: String,
    /// The registration.
    pub service: Service,
}

impl Instance {
    /// `host:port` to reach it inside its datacenter.
    pub fn endpoint(&self) -> String {
        self.service.endpoint(&self.node_address)
    }

    /// Passing and warning instances receive traffic; critical and maintenance ones do not. This is
    /// Consul's rule for mesh gateways and sidecar upstreams (a warning check changes the weight, it
    /// does not take the instance out; consul-live-api.md §4.4).
    pub fn healthy(&self) -> bool {
        matches!(self.service.health(), Health::Passing | Health::Warning)
    }

    /// The service whose mesh traffic this instance receives: a sidecar's destination, or the service
    /// itself when it is Connect-native; `None` for gateways and plain services.
    pub fn mesh_service(&self) -> Option<&str> {
        let s = &self.service;
        match (s.kind, &s.proxy) {
            (ServiceKind::ConnectProxy, Some(p)) => Some(&p.destination_service_name),
            (ServiceKind::Typical, _) if s.connect_native => Some(&s.name),
            _ => None,
        }
    }

    /// Its tagged address (`wan`, `lan`) as `host:port`, else its own endpoint.
    pub fn tagged_or_endpoint(&self, tag: &str) -> String {
        self.service.tagged(tag).unwrap_or_else(|| self.endpoint())
    }
}

/// Sorted, without repeats: route endpoints are compared and shown in a stable order.
fn sorted_unique(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

/// Everything routing needs to know about the mesh.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Catalog {
    /// `<cluster-uuid>.consul`.
    pub trust_domain: String,
    /// Every instance in every datacenter (sidecars and gateways included).
    pub instances: Vec<Instance>,
    /// Config entries (global: they replicate from the primary).
    pub config_entries: Vec<ConfigEntry>,
}

/// Which level decided a gateway mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModeSource {
    /// `upstreams[].mesh_gateway`.
    Upstream,
    /// The proxy registration's `proxy.mesh_gateway`.
    ServiceInstance,
    /// The service's `service-defaults` entry.
    ServiceDefaults,
    /// `proxy-defaults` (`global`).
    ProxyDefaults,
    /// Nothing set: `none`.
    Default,
}

impl ModeSource {
    /// The level's name as metrics and logs show it.
    pub fn label(self) -> &'static str {
        match self {
            ModeSource::Upstream => "upstream",
            ModeSource::ServiceInstance => "service-instance",
            ModeSource::ServiceDefaults => "service-defaults",
            ModeSource::ProxyDefaults => "proxy-defaults",
            ModeSource::Default => "default",
        }
    }
}

/// Consul's precedence: upstream > service instance > service-defaults > proxy-defaults > `none`.
pub fn resolve_mode(
    upstream: Option<GatewayMode>,
    instance: Option<GatewayMode>,
    service_defaults: Option<GatewayMode>,
    proxy_defaults: Option<GatewayMode>,
) -> (GatewayMode, ModeSource) {
    [
        (upstream, ModeSource::Upstream),
        (instance, ModeSource::ServiceInstance),
        (service_defaults, ModeSource::ServiceDefaults),
        (proxy_defaults, ModeSource::ProxyDefaults),
    ]
    .into_iter()
    .find_map(|(m, s)| m.map(|m| (m, s)))
    .unwrap_or((GatewayMode::None, ModeSource::Default))
}

/// A route a gateway should serve: an SNI pattern and its endpoints (`host:port`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteDef {
    /// Exact name or `*.suffix`.
    pub pattern: String,
    /// Endpoints, all of equal priority (may be empty when `failover` is not).
    pub endpoints: Vec<String>,
    /// Further groups, tried in order when every attempt on the previous one failed or is known down
    /// (see `dc_failover`); empty unless a `datacenter_failover` policy applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<Vec<String>>,
    /// Why this route exists (`local service api`, `datacenter dc2`...).
    pub reason: String,
}

impl Catalog {
    fn entry(&self, kind: EntryKind, name: &str) -> Option<&ConfigEntry> {
        self.config_entries
            .iter()
            .find(|e| e.kind == kind && e.name == name)
    }

    /// Healthy mesh gateways of a datacenter.
    pub fn gateways<'a>(&'a self, datacenter: &'a str) -> impl Iterator<Item = &'a Instance> + 'a {
        self.instances.iter().filter(move |i| {
            i.datacenter == datacenter && i.service.kind == ServiceKind::MeshGateway && i.healthy()
        })
    }

    /// Healthy mesh-capable endpoints of a service in a datacenter: its sidecar proxies, or the service
    /// itself when it is Connect-native.
    pub fn service_endpoints(
        &self,
        service: &str,
        namespace: &str,
        datacenter: &str,
    ) -> Vec<String> {
        sorted_unique(
            self.instances
                .iter()
                .filter(|i| {
                    i.datacenter == datacenter
                        && i.service.namespace == namespace
                        && i.healthy()
                        && i.mesh_service() == Some(service)
                })
                .map(Instance::endpoint)
                .collect(),
        )
    }

    /// The routes of a mesh gateway in `local_dc`, Consul's way: each local service's SNI to its healthy
    /// sidecars; `*.<dc>.internal.<td>` for every other datacenter to that datacenter's healthy gateways
    /// (WAN addresses); with WAN federation, Consul server names too. Anything else is not routed.
    pub fn gateway_routes(&self, local_dc: &str, wan_federation: bool) -> Vec<RouteDef> {
        let mut routes = self.local_service_routes(local_dc, None);
        self.remote_routes(local_dc, wan_federation, &mut routes);
        routes
    }

    /// The routes [`Catalog::gateway_routes`] gives to local services (each one's SNI, and its
    /// subsets'), for the services named in `only` (every one when `None`): what a change to those
    /// services' instances can change, when no gateway and no config entry moved with it.
    pub fn local_service_routes(
        &self,
        local_dc: &str,
        only: Option<&BTreeSet<String>>,
    ) -> Vec<RouteDef> {
        let all: Vec<&Instance> = self.instances.iter().collect();
        self.local_service_routes_among(&all, local_dc, only)
    }

    /// As [`Catalog::local_service_routes`], looking only at `instances` (this catalog's config
    /// entries still apply): given every instance that serves the services in `only` — their own and
    /// their sidecars' — it answers what looking at the whole catalog would, without walking it.
    pub fn local_service_routes_among(
        &self,
        instances: &[&Instance],
        local_dc: &str,
        only: Option<&BTreeSet<String>>,
    ) -> Vec<RouteDef> {
        let td = &self.trust_domain;
        let wanted = |svc: &str| only.is_none_or(|o| o.contains(svc));
        let mut routes = Vec::new();
        // A resolver's `DefaultSubset`: the plain service name routes to that subset only (Consul's
        // gateway builds the plain name's cluster from the default subset's filter).
        let default_subset = |svc: &str| {
            let e = self.entry(EntryKind::ServiceResolver, svc)?;
            let name = e.default_subset.as_deref()?;
            e.subsets.iter().find(|s| s.name == name).map(|s| &s.parsed)
        };
        // One pass over the local instances: every mesh-capable service, with its healthy endpoints.
        let mut services: BTreeMap<(&str, &str), Vec<String>> = BTreeMap::new();
        for i in instances
            .iter()
            .copied()
            .filter(|i| i.datacenter == local_dc)
        {
            let Some(svc) = i.mesh_service().filter(|s| wanted(s)) else {
                continue;
            };
            let endpoints = services
                .entry((svc, i.service.namespace.as_str()))
                .or_default();
            if i.healthy() && default_subset(svc).is_none_or(|f| f.matches(&i.service)) {
                endpoints.push(i.endpoint());
            }
        }
        // Subsets (service-resolver entries for local services): the healthy instances their filter keeps.
        for entry in self
            .config_entries
            .iter()
            .filter(|e| e.kind == EntryKind::ServiceResolver && wanted(&e.name))
        {
            for subset in &entry.subsets {
                let endpoints = sorted_unique(
                    instances
                        .iter()
                        .copied()
                        .filter(|i| {
                            i.datacenter == local_dc
                                && i.healthy()
                                && i.service.kind == ServiceKind::ConnectProxy
                                && i.mesh_service() == Some(entry.name.as_str())
                                && subset.parsed.matches(&i.service)
                        })
                        .map(Instance::endpoint)
                        .collect(),
                );
                if endpoints.is_empty() {
                    continue;
                }
                routes.push(RouteDef {
                    failover: Vec::new(),
                    pattern: SniName::Service {
                        subset: Some(subset.name.clone()),
                        service: entry.name.clone(),
                        namespace: names::DEFAULT.to_owned(),
                        partition: names::DEFAULT.to_owned(),
                        datacenter: local_dc.to_owned(),
                        trust_domain: td.clone(),
                    }
                    .to_string(),
                    endpoints,
                    reason: format!("subset {} of local service {}", subset.name, entry.name),
                });
            }
        }
        for ((svc, ns), endpoints) in services {
            if endpoints.is_empty() {
                // No healthy instance: no route, so the gateway refuses (fails closed) and counts it.
                continue;
            }
            let endpoints = sorted_unique(endpoints);
            routes.push(RouteDef {
                failover: Vec::new(),
                pattern: SniName::service(svc, ns, local_dc, td).to_string(),
                endpoints,
                reason: format!("local service {svc}"),
            });
        }
        routes
    }

    /// The routes to other datacenters' gateways (and, with WAN federation, to Consul servers).
    fn remote_routes(&self, local_dc: &str, wan_federation: bool, routes: &mut Vec<RouteDef>) {
        let td = &self.trust_domain;
        // One pass over the gateways too: WAN endpoints of every datacenter's healthy gateways.
        let mut gateways: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for g in self
            .instances
            .iter()
            .filter(|i| i.service.kind == ServiceKind::MeshGateway)
        {
            let eps = gateways.entry(g.datacenter.as_str()).or_default();
            if g.healthy() {
                eps.push(g.tagged_or_endpoint("wan"));
            }
        }
        for (dc, endpoints) in gateways {
            if dc == local_dc {
                continue;
            }
            let endpoints = sorted_unique(endpoints);
            if endpoints.is_empty() {
                continue;
            }
            routes.push(RouteDef {
                failover: Vec::new(),
                pattern: format!("*.{dc}.internal.{td}"),
                endpoints: endpoints.clone(),
                reason: format!("datacenter {dc}"),
            });
            if wan_federation {
                routes.push(RouteDef {
                    failover: Vec::new(),
                    pattern: format!("*.server.{dc}.{}", names::DEFAULT_DOMAIN),
                    endpoints,
                    reason: format!("consul servers in {dc}"),
                });
            }
        }
        if wan_federation {
            for i in self
                .instances
                .iter()
                .filter(|i| i.datacenter == local_dc && i.service.name == "consul" && i.healthy())
            {
                let node = i
                    .service
                    .meta
                    .get("node")
                    .cloned()
                    .unwrap_or_else(|| i.service.id.clone());
                routes.push(RouteDef {
                    failover: Vec::new(),
                    pattern: SniName::Server {
                        node: Some(node.clone()),
                        datacenter: local_dc.to_owned(),
                        domain: names::DEFAULT_DOMAIN.to_owned(),
                    }
                    .to_string(),
                    endpoints: vec![i.endpoint()],
                    reason: format!("local consul server {node}"),
                });
            }
        }
    }

    /// Healthy gateways of `dc` by their `tag` address (`wan`, `lan`), else their address.
    pub fn gateway_endpoints(&self, dc: &str, tag: &str) -> Vec<String> {
        sorted_unique(
            self.gateways(dc)
                .map(|g| g.tagged_or_endpoint(tag))
                .collect(),
        )
    }

    /// The upstream plan of a sidecar registered in `local_dc`: per upstream, the resolved gateway mode
    /// and the targets its connections try in order (see [`crate::resolver`]), each with its SNI, the
    /// identity to expect and where to dial. The plan's own `sni`, `identity`, `datacenter`,
    /// `via_gateway` and `next_hops` are those of the first target tried.
    pub fn upstream_plan(&self, local_dc: &str, sidecar: &Service) -> Vec<UpstreamPlan> {
        let Some(proxy) = &sidecar.proxy else {
            return Vec::new();
        };
        let source = &proxy.destination_service_name;
        let service_defaults = self
            .entry(EntryKind::ServiceDefaults, source)
            .and_then(|e| e.mesh_gateway);
        let proxy_defaults = self
            .entry(EntryKind::ProxyDefaults, "global")
            .and_then(|e| e.mesh_gateway);
        proxy
            .upstreams
            .iter()
            .map(|u| {
                let dc = u.datacenter.clone().unwrap_or_else(|| local_dc.to_owned());
                let ns = u
                    .destination_namespace
                    .clone()
                    .unwrap_or_else(|| names::DEFAULT.to_owned());
                let (mode, mode_source) = resolve_mode(
                    u.mesh_gateway,
                    proxy.mesh_gateway,
                    service_defaults,
                    proxy_defaults,
                );
                let targets = self.targets(local_dc, &u.destination_name, &ns, &dc, mode);
                let first = targets
                    .iter()
                    .find(|t| t.skipped.is_none())
                    .or(targets.first());
                UpstreamPlan {
                    upstream: u.clone(),
                    datacenter: first.map_or(dc.clone(), |t| t.id.datacenter.clone()),
                    sni: first.map(|t| t.sni.clone()).unwrap_or_default(),
                    identity: first.map(|t| t.identity.clone()).unwrap_or_default(),
                    mode,
                    mode_source,
                    via_gateway: first.is_some_and(|t| t.via_gateway),
                    next_hops: first.map(|t| t.next_hops.clone()).unwrap_or_default(),
                    targets,
                }
            })
            .collect()
    }

    /// The targets of an upstream to `service` in `namespace` and `datacenter`, in the order they are
    /// tried, with their SNI, identity and next hops by `mode`. A target without a healthy instance is
    /// marked skipped, unless no target has one: then the first is kept, so connections fail clearly.
    pub fn targets(
        &self,
        local_dc: &str,
        service: &str,
        namespace: &str,
        datacenter: &str,
        mode: GatewayMode,
    ) -> Vec<Target> {
        let resolved = crate::resolver::resolve(
            |svc| self.entry(EntryKind::ServiceResolver, svc),
            &TargetId {
                service: service.to_owned(),
                subset: None,
                namespace: namespace.to_owned(),
                datacenter: datacenter.to_owned(),
            },
        );
        let mut targets: Vec<Target> = resolved
            .into_iter()
            .map(|(id, origin)| {
                let healthy = self.target_endpoints(&id);
                // Intra-datacenter targets never use a gateway, whatever the mode says.
                let cross = id.datacenter != local_dc;
                let next_hops = match (cross, mode, &healthy) {
                    (_, _, Err(_)) => Vec::new(),
                    (false, _, Ok(eps)) | (true, GatewayMode::None, Ok(eps)) => eps.clone(),
                    (true, GatewayMode::Local, Ok(_)) => self.gateway_endpoints(local_dc, "lan"),
                    (true, GatewayMode::Remote, Ok(_)) => {
                        self.gateway_endpoints(&id.datacenter, "wan")
                    }
                };
                let skipped = match &healthy {
                    Err(why) => Some(why.clone()),
                    Ok(eps) if eps.is_empty() => Some(format!(
                        "no healthy instance of {} in {}",
                        id.describe(),
                        id.datacenter
                    )),
                    Ok(_) => None,
                };
                Target {
                    sni: id.sni(&self.trust_domain),
                    identity: names::spiffe_id(
                        &self.trust_domain,
                        &id.namespace,
                        &id.datacenter,
                        &id.service,
                    ),
                    via_gateway: cross && mode != GatewayMode::None,
                    next_hops,
                    skipped,
                    origin,
                    id,
                }
            })
            .collect();
        // Nothing healthy anywhere: keep the primary, so connections go where the service belongs and
        // fail there (a gateway or sidecar says why) rather than nowhere.
        if targets.iter().all(|t| t.skipped.is_some()) {
            if let Some(first) = targets.first_mut() {
                first.skipped = None;
                if first.next_hops.is_empty() {
                    let cross = first.id.datacenter != local_dc;
                    first.next_hops = match (cross, mode) {
                        (true, GatewayMode::Local) => self.gateway_endpoints(local_dc, "lan"),
                        (true, GatewayMode::Remote) => {
                            self.gateway_endpoints(&first.id.datacenter, "wan")
                        }
                        _ => Vec::new(),
                    };
                }
            }
        }
        targets
    }

    /// Healthy mesh endpoints of a target (its subset's filter applied), or why it cannot have any.
    fn target_endpoints(&self, id: &TargetId) -> Result<Vec<String>, String> {
        let filter = match &id.subset {
            None => None,
            Some(name) => {
                let subset = self
                    .entry(EntryKind::ServiceResolver, &id.service)
                    .and_then(|e| e.subsets.iter().find(|s| &s.name == name));
                match subset {
                    Some(s) => Some(&s.parsed),
                    None => {
                        return Err(format!(
                            "subset {name} is not defined by a service-resolver for {}",
                            id.service
                        ))
                    }
                }
            }
        };
        Ok(sorted_unique(
            self.instances
                .iter()
                .filter(|i| {
                    i.datacenter == id.datacenter
                        && i.service.namespace == id.namespace
                        && i.healthy()
                        && i.mesh_service() == Some(id.service.as_str())
                        && filter.is_none_or(|f| f.matches(&i.service))
                })
                .map(Instance::endpoint)
                .collect(),
        ))
    }
}

/// How one upstream of a sidecar is reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpstreamPlan {
    /// The upstream as registered.
    pub upstream: Upstream,
    /// Destination datacenter.
    pub datacenter: String,
    /// SNI the sidecar sends.
    pub sni: String,
    /// SPIFFE identity the destination must present.
    pub identity: String,
    /// Resolved gateway mode.
    pub mode: GatewayMode,
    /// Which level decided it.
    pub mode_source: ModeSource,
    /// Whether the connection goes through a gateway (cross-datacenter and mode not `none`).
    pub via_gateway: bool,
    /// Addresses to dial, in any order (empty: nowhere to go).
    pub next_hops: Vec<String>,
    /// Every target, in the order connections try them (skipped ones included, marked).
    pub targets: Vec<Target>,
}

/// One place an upstream's connections may go: a service (or subset) in a namespace and datacenter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    /// Which service, subset, namespace and datacenter.
    #[serde(flatten)]
    pub id: TargetId,
    /// Why it is in the list.
    pub origin: Origin,
    /// SNI the sidecar sends (`<subset>.<svc>.<ns>.<dc>.internal.<td>` when a subset applies).
    pub sni: String,
    /// SPIFFE identity the destination must present.
    pub identity: String,
    /// Whether the next hop is a mesh gateway.
    pub via_gateway: bool,
    /// Addresses to dial, in any order.
    pub next_hops: Vec<String>,
    /// Why the plan leaves it out (`None`: tried in order).
    pub skipped: Option<String>,
}
