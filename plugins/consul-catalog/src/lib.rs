//! `consul-catalog`: the mesh catalog from a Consul 1.8 agent, as a watch-catalog plugin. The plugin owns
//! the decisions — which reads to run (Consul's own gateway's watches, consul-live-api.md §1) and how
//! their answers become a catalog (health from the checks, addresses by Consul's `BestAddress`) — and the
//! host owns the IO: it runs each named read as a blocking query against the local agent and calls
//! [`plan`](Guest::plan) again with the latest answers. `plan` is a pure function of its arguments.
//!
//! Roles, by setting:
//! - gateway (default): CA roots, the service list, the local connect endpoints, every datacenter's
//!   gateways from the federation states, the `service-resolver` entries, and with
//!   `wan_federation = "true"` the local Consul servers. The endpoints (`discovery`): one
//!   `health/connect` per listed service, as Consul's own gateway watches them (`per-service`; names
//!   another answer shows to be a sidecar or a gateway are not watched), or the whole local catalog
//!   in one `/v1/internal/ui/nodes` query (`catalog`), since every blocking query holds a connection
//!   and the agent takes 200 per client by default; `auto` (the default) watches per service up to
//!   `max_service_watches` listed names (128). The lifecycle (a name leaving the list drops its watch
//!   and its instances; an empty answer drops its entry; readiness) is
//!   `meshgate_consul::state::GatewayState`'s, the same code the native gateway runs.
//! - sidecar (`service = "<name>"`, optional `proxy_id`): CA roots, the service's own connect endpoints
//!   (its proxy registrations with their upstreams), each upstream's connect endpoints in its datacenter,
//!   the federation states (gateways for `local`/`remote` modes), `proxy-defaults/global` and
//!   `service-defaults` of the service and each upstream (404 = not written), the intentions as
//!   `service-intentions` entries, and the `service-resolver` entries with the connect endpoints of
//!   every target their `Redirect` and `Failover` give an upstream (`?dc=` for other datacenters), so
//!   the router can tell which targets have healthy instances.
//!
//! Optional `datacenter`: the datacenter of an instance whose node does not say (Consul always says).
//!
//! The catalog comes only once every watch the plan names has an answer, so a new watch holds the catalog
//! back for one round trip instead of publishing a service with no endpoints (the host's contract).

mod convert;

use convert::{gateway_instance, instance, PlanError};
use meshgate_consul::model::{
    CaRoots, CheckServiceNode, FederationStateGateways, Intention, NodeInfo, ProxyDefaults,
    Service, ServiceDefaults, ServiceNames, ServiceResolver, WAN_FEDERATION_META,
};
use meshgate_consul::state::{GatewayState, Update};
use meshgate_guest::types::{
    Catalog, ConfigEntry, EntryKind, Instance, IntentionAction, IntentionSource, Watch, WatchMode,
};
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet};

wit_bindgen::generate!({
    world: "watch-catalog-plugin",
    path: "../wit",
    with: {
        "meshgate:plugin/types@0.6.0": meshgate_guest::types,
        "meshgate:plugin/host@0.6.0": meshgate_guest::host,
    },
});

const ROOTS: &str = "/v1/agent/connect/ca/roots";
const SERVICES: &str = "/v1/catalog/services";
const FEDERATION_STATES: &str = "/v1/internal/federation-states/mesh-gateways";
const RESOLVERS: &str = "/v1/config/service-resolver";
const SERVERS: &str = "/v1/health/service/consul";
const PROXY_DEFAULTS: &str = "/v1/config/proxy-defaults/global";
const INTENTIONS: &str = "/v1/connect/intentions";
const NODES: &str = "/v1/internal/ui/nodes";

/// Listed service names above which a gateway reads the catalog in one query (`discovery = "auto"`).
/// Every blocking query holds a connection to the agent, and the agent accepts 200 per client address
/// by default (`limits.http_max_conns_per_client`), shared with whatever else runs on the host.
const DEFAULT_MAX_SERVICE_WATCHES: usize = 128;
/// The largest `max_service_watches`: room under the host's 1,024 watches for the fixed ones.
const MAX_SERVICE_WATCHES_LIMIT: usize = 1000;

/// How a gateway learns the local connect endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Discovery {
    /// One `health/connect/<name>` per listed service (Consul's own gateway's watches, served from
    /// the agent's cache): each change reads one service. Connections grow with the catalog.
    PerService,
    /// One `/v1/internal/ui/nodes` for the whole catalog: a constant number of connections, each
    /// change reads the whole local catalog.
    Catalog,
    /// Per service while at most this many names are listed, else the catalog query; back to per
    /// service below three quarters of it, so a catalog at the edge does not flip between the two.
    Auto(usize),
}

impl Discovery {
    fn from_settings<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Result<Discovery, String> {
        let max = match get("max_service_watches") {
            None => DEFAULT_MAX_SERVICE_WATCHES,
            Some(v) => v.parse::<usize>().map_err(|_| {
                format!("setting `max_service_watches`: {v:?} is not a whole number")
            })?,
        };
        match get("discovery") {
            None | Some("auto") => Ok(Discovery::Auto(max)),
            Some("per-service") => Ok(Discovery::PerService),
            Some("catalog") => Ok(Discovery::Catalog),
            Some(other) => Err(format!(
                "setting `discovery`: {other:?} is not \"auto\", \"per-service\" or \"catalog\""
            )),
        }
    }

    /// Whether to read the whole catalog, with `listed` names and the catalog query `running`.
    fn whole_catalog(self, listed: usize, running: bool) -> bool {
        match self {
            Discovery::PerService => false,
            Discovery::Catalog => true,
            Discovery::Auto(max) if running => listed > max - max / 4,
            Discovery::Auto(max) => listed > max,
        }
    }
}

struct ConsulCatalog;

impl Guest for ConsulCatalog {
    fn configure(settings: Vec<(String, String)>) -> Result<(), String> {
        meshgate_guest::sdk::init();
        let config = meshgate_guest::sdk::Config::new(&settings);
        config.only(&[
            "datacenter",
            "service",
            "proxy_id",
            "wan_federation",
            "discovery",
            "max_service_watches",
        ])?;
        config.bool_or("wan_federation", false)?;
        if let Discovery::Auto(max) = Discovery::from_settings(|k| config.str(k))? {
            if max > MAX_SERVICE_WATCHES_LIMIT {
                return Err(format!(
                    "setting `max_service_watches`: {max} is above {MAX_SERVICE_WATCHES_LIMIT} (the \
                     host runs at most 1,024 watches, and the agent takes 200 connections per \
                     client by default)"
                ));
            }
        }
        if config.str("service") == Some("") {
            return Err("setting `service`: empty (name the service this sidecar fronts)".into());
        }
        Ok(())
    }
    fn plan(
        settings: Vec<(String, String)>,
        answers: Vec<WatchAnswer>,
    ) -> Result<WatchPlan, String> {
        plan(&settings, &answers).map_err(|e| e.to_string())
    }
}

export!(ConsulCatalog);

fn plan(settings: &[(String, String)], answers: &[WatchAnswer]) -> Result<WatchPlan, PlanError> {
    let get = |k: &str| meshgate_guest::setting(settings, k);
    let answers = Answers(answers.iter().map(|a| (a.key.as_str(), a)).collect());
    let fallback_dc = get("datacenter").unwrap_or("");
    match get("service") {
        None => {
            let wan_federation = match get("wan_federation") {
                None | Some("false") => false,
                Some("true") => true,
                Some(other) => {
                    return Err(PlanError::Setting(format!(
                        "wan_federation = {other:?}: expected \"true\" or \"false\""
                    )))
                }
            };
            let discovery = Discovery::from_settings(get).map_err(PlanError::Setting)?;
            gateway(&answers, wan_federation, fallback_dc, discovery)
        }
        Some("") => Err(PlanError::Setting("service is empty".into())),
        Some(service) => sidecar(&answers, service, get("proxy_id"), fallback_dc),
    }
}

/// The latest answer of each watch, by key (the key is the watch's path).
struct Answers<'a>(BTreeMap<&'a str, &'a WatchAnswer>);

impl Answers<'_> {
    /// The decoded answer; `None` while unanswered. Only 200 is an answer here.
    fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, PlanError> {
        Ok(self.get_or_absent(key, false)?.flatten())
    }

    /// Like [`get`](Self::get), for a config entry that may not be written: `Some(None)` for a 404.
    fn get_or_absent<T: DeserializeOwned>(
        &self,
        key: &str,
        may_be_absent: bool,
    ) -> Result<Option<Option<T>>, PlanError> {
        let Some(answer) = self.0.get(key) else {
            return Ok(None);
        };
        match answer.status {
            200 => serde_json::from_slice(&answer.body)
                .map(|v| Some(Some(v)))
                .map_err(|source| PlanError::Json {
                    key: key.to_owned(),
                    source,
                }),
            404 if may_be_absent => Ok(Some(None)),
            status => Err(PlanError::Status {
                key: key.to_owned(),
                status,
            }),
        }
    }

    fn has(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }
}

/// The watches of a plan, in order, each once.
#[derive(Default)]
struct Watches {
    list: Vec<Watch>,
    keys: BTreeSet<String>,
}

impl Watches {
    /// Adds a blocking (`X-Consul-Index`) watch keyed by its path.
    fn add(&mut self, path: String) {
        if self.keys.insert(path.clone()) {
            self.list.push(Watch {
                key: path.clone(),
                path,
                mode: WatchMode::Index,
            });
        }
    }

    fn answered(&self, answers: &Answers<'_>) -> bool {
        self.list.iter().all(|w| answers.has(&w.key))
    }
}

/// A path segment, percent-encoded so a name cannot leave its place in the path (`/`, `?`, `..`).
fn segment(name: &str) -> String {
    let dots = name == "." || name == "..";
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~') || b == b'.' && !dots {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `/v1/health/connect/<svc>[?dc=<dc>]&cached`: never `?passing`, warning instances stay routed (§4.4).
fn health_connect(service: &str, dc: Option<&str>) -> String {
    match dc {
        Some(dc) => format!(
            "/v1/health/connect/{}?dc={}&cached",
            segment(service),
            segment(dc)
        ),
        None => format!("/v1/health/connect/{}?cached", segment(service)),
    }
}

fn service_defaults(service: &str) -> String {
    format!("/v1/config/service-defaults/{}", segment(service))
}

/// The trust domain from the roots answer; an empty one means Connect is off on the agent.
fn trust_domain(roots: &CaRoots) -> Result<String, PlanError> {
    if roots.trust_domain.is_empty() {
        return Err(PlanError::Field {
            key: ROOTS.into(),
            message: "TrustDomain is empty (is Connect enabled on the agent?)".into(),
        });
    }
    Ok(roots.trust_domain.clone())
}

fn gateway(
    answers: &Answers<'_>,
    wan_federation: bool,
    fallback_dc: &str,
    discovery: Discovery,
) -> Result<WatchPlan, PlanError> {
    // The state's local datacenter only matters to its own route table, which is not used here.
    let mut state = GatewayState::new(fallback_dc, "consul");
    if wan_federation {
        // The state reads WAN federation from the gateway's own registration meta.
        let mut own = Service::default();
        own.meta.insert(WAN_FEDERATION_META.into(), "1".into());
        state.apply(Update::Own(own));
    }
    let mut watches = Watches::default();
    watches.add(ROOTS.into());
    watches.add(SERVICES.into());
    watches.add(FEDERATION_STATES.into());
    watches.add(RESOLVERS.into());
    if let Some(roots) = answers.get::<CaRoots>(ROOTS)? {
        trust_domain(&roots)?;
        state.apply(Update::Roots(roots));
    }
    if let Some(names) = answers.get::<ServiceNames>(SERVICES)? {
        state.apply(Update::ServiceNames(names));
    }
    let fed = answers.get::<FederationStateGateways>(FEDERATION_STATES)?;
    // `consul` is listed but has no connect endpoints; every other name might.
    let wanted = state.wanted().services;
    let listed = wanted.iter().filter(|s| *s != "consul");
    let mut whole = discovery.whole_catalog(wanted.len(), answers.has(NODES));
    // The catalog query's nodes carry no datacenter: without one known, per service it is.
    let dc = if whole {
        local_datacenter(answers, &mut watches, fallback_dc)?
    } else {
        Dc::Pending
    };
    if dc == Dc::Unknown {
        meshgate_guest::log(
            meshgate_guest::types::LogLevel::Warn,
            "consul-catalog: /v1/health/service/consul lists no Consul server, so the datacenter of \
             the whole-catalog query's nodes is unknown; watching per service instead (set \
             `datacenter` to read the catalog in one query)",
        );
        whole = false;
    }
    if whole {
        watches.add(NODES.into());
        if let (Some(dump), Dc::Known(dc)) = (answers.get::<Vec<NodeInfo>>(NODES)?, dc) {
            let mut by_service: BTreeMap<&str, Vec<CheckServiceNode>> = BTreeMap::new();
            for node in &dump {
                for (service, endpoint) in node.connect_endpoints(&dc) {
                    by_service.entry(service).or_default().push(endpoint);
                }
            }
            for service in listed {
                let nodes = by_service.remove(service.as_str()).unwrap_or_default();
                state.apply(Update::ServiceHealth {
                    service: service.clone(),
                    nodes,
                });
            }
        }
    } else {
        // Names known not to be connect destinations need no watch: the sidecars and native
        // services another service's answer lists, and the mesh gateways.
        let mut not_destinations = BTreeSet::new();
        for service in wanted.iter() {
            let key = health_connect(service, None);
            if let Some(nodes) = answers.get::<Vec<CheckServiceNode>>(&key)? {
                for n in nodes.iter().filter(|n| n.service.kind == "connect-proxy") {
                    if n.service.service != *service {
                        not_destinations.insert(n.service.service.clone());
                    }
                }
                state.apply(Update::ServiceHealth {
                    service: service.clone(),
                    nodes,
                });
            }
        }
        for nodes in fed.iter().flat_map(|f| f.values()) {
            not_destinations.extend(nodes.iter().map(|n| n.service.service.clone()));
        }
        for service in listed.filter(|s| !not_destinations.contains(*s)) {
            watches.add(health_connect(service, None));
        }
    }
    if let Some(fed) = fed {
        state.apply(Update::FederationStates(fed));
    }
    if let Some(resolvers) = answers.get::<Vec<ServiceResolver>>(RESOLVERS)? {
        state.apply(Update::Resolvers(resolvers));
    }
    if state.wanted().servers {
        watches.add(SERVERS.into());
        if let Some(servers) = answers.get::<Vec<CheckServiceNode>>(SERVERS)? {
            state.apply(Update::Servers(servers));
        }
    }
    let catalog = match state.roots() {
        Some(roots) if watches.answered(answers) && state.ready() => {
            let mut instances = Vec::new();
            for (service, nodes) in state.services() {
                // The watch an error names.
                let key = if whole {
                    NODES.to_owned()
                } else {
                    health_connect(service, None)
                };
                for node in nodes {
                    instances.extend(instance(node, fallback_dc, true, &key)?);
                }
            }
            gateways(state.federation_states(), &mut instances)?;
            for server in state.servers() {
                // meshgate_mesh names a server's route by its `node` meta (`<node>.server.<dc>.consul`).
                let named = instance(server, fallback_dc, false, SERVERS)?.map(|mut i| {
                    if !i.meta.iter().any(|(k, _)| k == "node") {
                        i.meta.push(("node".into(), server.node.node.clone()));
                    }
                    i
                });
                instances.extend(named);
            }
            let config_entries = state.resolvers().iter().map(resolver_entry).collect();
            Some(Catalog {
                trust_domain: trust_domain(roots)?,
                instances,
                config_entries,
            })
        }
        _ => None,
    };
    Ok(WatchPlan {
        watches: watches.list,
        catalog,
    })
}

/// What is known of the local datacenter.
#[derive(Debug, PartialEq, Eq)]
enum Dc {
    Known(String),
    /// The servers' answer has not come yet.
    Pending,
    /// The servers' answer lists none (a token that cannot read `consul`, say).
    Unknown,
}

/// The datacenter of the catalog query's nodes (which carry none): the `datacenter` setting, else the
/// local Consul servers' (`/v1/health/service/consul`, watched for it).
fn local_datacenter(
    answers: &Answers<'_>,
    watches: &mut Watches,
    fallback_dc: &str,
) -> Result<Dc, PlanError> {
    if !fallback_dc.is_empty() {
        return Ok(Dc::Known(fallback_dc.to_owned()));
    }
    watches.add(SERVERS.into());
    let Some(servers) = answers.get::<Vec<CheckServiceNode>>(SERVERS)? else {
        return Ok(Dc::Pending);
    };
    Ok(servers
        .iter()
        .find(|s| !s.node.datacenter.is_empty())
        .map_or(Dc::Unknown, |s| Dc::Known(s.node.datacenter.clone())))
}

/// Every datacenter's mesh gateways (the federation-state key is their datacenter).
fn gateways(fed: &FederationStateGateways, out: &mut Vec<Instance>) -> Result<(), PlanError> {
    for (dc, nodes) in fed {
        for node in nodes {
            out.extend(gateway_instance(node, dc, FEDERATION_STATES)?);
        }
    }
    Ok(())
}

/// A `service-resolver` as the catalog carries it: its subsets as (name, filter).
fn resolver_entry(r: &ServiceResolver) -> ConfigEntry {
    ConfigEntry {
        kind: EntryKind::ServiceResolver,
        name: r.name.clone(),
        mesh_gateway: None,
        subsets: r
            .subsets
            .iter()
            .map(|(name, s)| (name.clone(), s.filter.clone()))
            .collect(),
        default_subset: Some(r.default_subset.clone()).filter(|d| !d.is_empty()),
        sources: Vec::new(),
        failover: r
            .failover
            .iter()
            .map(|(key, f)| convert::failover(key, f))
            .collect(),
        redirect: r.redirect.as_ref().map(convert::redirect),
    }
}

/// The part of a resolver that orders an upstream's targets (redirect, default subset, failover).
fn resolver_model(r: &ServiceResolver) -> meshgate_mesh::model::ConfigEntry {
    let wit = resolver_entry(r);
    meshgate_mesh::model::ConfigEntry {
        kind: meshgate_mesh::EntryKind::ServiceResolver,
        name: wit.name,
        mesh_gateway: None,
        subsets: Vec::new(),
        default_subset: wit.default_subset,
        sources: Vec::new(),
        failover: r
            .failover
            .iter()
            .map(|(key, f)| {
                let f = convert::failover(key, f);
                meshgate_mesh::model::Failover {
                    key: f.key,
                    service: f.service,
                    service_subset: f.service_subset,
                    namespace: f.namespace,
                    datacenters: f.datacenters,
                }
            })
            .collect(),
        redirect: r.redirect.as_ref().map(|r| {
            let r = convert::redirect(r);
            meshgate_mesh::model::Redirect {
                service: r.service,
                service_subset: r.service_subset,
                namespace: r.namespace,
                datacenter: r.datacenter,
            }
        }),
        other: Default::default(),
    }
}

fn sidecar(
    answers: &Answers<'_>,
    service: &str,
    proxy_id: Option<&str>,
    fallback_dc: &str,
) -> Result<WatchPlan, PlanError> {
    let own_key = health_connect(service, None);
    let mut watches = Watches::default();
    watches.add(ROOTS.into());
    watches.add(own_key.clone());
    watches.add(FEDERATION_STATES.into());
    watches.add(PROXY_DEFAULTS.into());
    watches.add(service_defaults(service));
    watches.add(INTENTIONS.into());
    watches.add(RESOLVERS.into());

    let roots = answers.get::<CaRoots>(ROOTS)?;
    let resolvers = answers.get::<Vec<ServiceResolver>>(RESOLVERS)?;
    // The model's form of the resolvers, for the targets' order (meshgate_mesh::resolver).
    let model_resolvers: Vec<meshgate_mesh::model::ConfigEntry> =
        resolvers.iter().flatten().map(resolver_model).collect();
    let own = answers
        .get::<Vec<CheckServiceNode>>(&own_key)?
        .unwrap_or_default();
    // This sidecar's registration(s): the proxies of `service`, or the one named by `proxy_id`.
    let proxies: Vec<&CheckServiceNode> = own
        .iter()
        .filter(|c| {
            c.service.kind == "connect-proxy"
                && c.service
                    .proxy
                    .as_ref()
                    .is_some_and(|p| p.destination_service_name == service)
                && proxy_id.is_none_or(|id| c.service.id == id)
        })
        .collect();
    let local_dc = proxies
        .iter()
        .map(|c| c.node.datacenter.as_str())
        .find(|dc| !dc.is_empty())
        .unwrap_or(fallback_dc);
    // Upstream watches: the destination's connect endpoints in its datacenter, and its defaults.
    let mut upstream_keys = Vec::new();
    for proxy in proxies.iter().filter_map(|c| c.service.proxy.as_ref()) {
        for u in &proxy.upstreams {
            if !(u.destination_type.is_empty() || u.destination_type == "service") {
                continue; // prepared queries are not resolved here
            }
            let dc = Some(u.datacenter.as_str()).filter(|dc| !dc.is_empty() && *dc != local_dc);
            let key = health_connect(&u.destination_name, dc);
            watches.add(key.clone());
            watches.add(service_defaults(&u.destination_name));
            upstream_keys.push((key, u.datacenter.clone()));
            // Every target a resolver gives this upstream: its health decides whether it is tried.
            let upstream = meshgate_mesh::TargetId {
                service: u.destination_name.clone(),
                subset: None,
                namespace: meshgate_mesh::names::DEFAULT.to_owned(),
                datacenter: dc.unwrap_or(local_dc).to_owned(),
            };
            let find = |name: &str| model_resolvers.iter().find(|e| e.name == name);
            for (t, _) in meshgate_mesh::resolver::resolve(find, &upstream) {
                let dc = Some(t.datacenter.as_str()).filter(|dc| *dc != local_dc);
                let key = health_connect(&t.service, dc);
                if !upstream_keys.iter().any(|(k, _)| *k == key) {
                    watches.add(key.clone());
                    upstream_keys.push((key, t.datacenter.clone()));
                }
            }
        }
    }

    // Decode everything named, so a malformed answer is reported even before the catalog is ready.
    let fed = answers.get::<FederationStateGateways>(FEDERATION_STATES)?;
    let proxy_defaults = answers.get_or_absent::<ProxyDefaults>(PROXY_DEFAULTS, true)?;
    let intentions = answers.get::<Vec<Intention>>(INTENTIONS)?;
    let mut defaults = Vec::new();
    let mut upstream_nodes = Vec::new();
    for w in &watches.list {
        if w.key.starts_with("/v1/config/service-defaults/") {
            defaults.push((
                w.key.as_str(),
                answers.get_or_absent::<ServiceDefaults>(&w.key, true)?,
            ));
        }
    }
    for (key, _) in &upstream_keys {
        if key != &own_key {
            if let Some(nodes) = answers.get::<Vec<CheckServiceNode>>(key)? {
                upstream_nodes.push((key.clone(), nodes));
            }
        }
    }

    let catalog = match roots {
        Some(roots) if watches.answered(answers) => {
            let mut instances = Vec::new();
            for node in &own {
                instances.extend(instance(node, local_dc, true, &own_key)?);
            }
            for (key, nodes) in &upstream_nodes {
                for node in nodes {
                    instances.extend(instance(node, local_dc, true, key)?);
                }
            }
            gateways(&fed.unwrap_or_default(), &mut instances)?;
            let mut config_entries = Vec::new();
            if let Some(Some(pd)) = proxy_defaults {
                config_entries.push(ConfigEntry {
                    kind: EntryKind::ProxyDefaults,
                    name: if pd.name.is_empty() {
                        "global".into()
                    } else {
                        pd.name.clone()
                    },
                    mesh_gateway: convert::mode(&pd.mesh_gateway.mode, PROXY_DEFAULTS)?,
                    subsets: Vec::new(),
                    default_subset: None,
                    sources: Vec::new(),
                    failover: Vec::new(),
                    redirect: None,
                });
            }
            for (key, entry) in defaults {
                if let Some(Some(sd)) = entry {
                    config_entries.push(ConfigEntry {
                        kind: EntryKind::ServiceDefaults,
                        name: sd.name.clone(),
                        mesh_gateway: convert::mode(&sd.mesh_gateway.mode, key)?,
                        subsets: Vec::new(),
                        default_subset: None,
                        sources: Vec::new(),
                        failover: Vec::new(),
                        redirect: None,
                    });
                }
            }
            config_entries.extend(intention_entries(service, &intentions.unwrap_or_default())?);
            config_entries.extend(resolvers.iter().flatten().map(resolver_entry));
            Some(Catalog {
                trust_domain: trust_domain(&roots)?,
                instances,
                config_entries,
            })
        }
        _ => None,
    };
    Ok(WatchPlan {
        watches: watches.list,
        catalog,
    })
}

/// The intentions guarding `service` as `service-intentions` entries: one for `service`, one for `*`,
/// each with its sources in Consul's order (the list comes sorted by precedence).
fn intention_entries(
    service: &str,
    intentions: &[Intention],
) -> Result<Vec<ConfigEntry>, PlanError> {
    let mut out = Vec::new();
    for destination in [service, "*"] {
        let mut sources = Vec::new();
        for i in intentions
            .iter()
            .filter(|i| i.destination_name == destination)
        {
            let action = match i.action.as_str() {
                "allow" => IntentionAction::Allow,
                "deny" => IntentionAction::Deny,
                other => {
                    return Err(PlanError::Field {
                        key: INTENTIONS.into(),
                        message: format!("intention {}: unknown Action {other:?}", i.id),
                    })
                }
            };
            sources.push(IntentionSource {
                name: i.source_name.clone(),
                namespace: if i.source_ns.is_empty() {
                    meshgate_mesh::names::DEFAULT.into()
                } else {
                    i.source_ns.clone()
                },
                action,
            });
        }
        if !sources.is_empty() {
            out.push(ConfigEntry {
                kind: EntryKind::ServiceIntentions,
                name: destination.to_owned(),
                mesh_gateway: None,
                subsets: Vec::new(),
                default_subset: None,
                sources,
                failover: Vec::new(),
                redirect: None,
            });
        }
        if service == "*" {
            break;
        }
    }
    Ok(out)
}
