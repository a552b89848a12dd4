//! What a mesh gateway knows from Consul at a given moment, and the lifecycle rules of Consul's own
//! gateway (consul-live-api.md §1) for keeping it (pure, no IO): which per-service and per-datacenter
//! watches should run (from the service list and the datacenter list), stale entries deleted when a name
//! or a datacenter goes away (Consul leaves them behind; we do not), an empty answer deleting its
//! entry, readiness (roots and the first service list; plus servers with WAN federation), and the route
//! table from all of it. The control loop that runs the watches and feeds [`Update`]s in is the
//! gateway's (or, in the `consul-catalog` plugin, the plugin host's); `watches` (feature `client`)
//! builds each watch as §1 describes it.

use crate::model::{
    CaRoots, CheckServiceNode, FederationStateGateways, Service, ServiceNames, ServiceResolver,
    WAN_FEDERATION_META,
};
use crate::routes::{self, Inputs, Table};
use std::collections::{BTreeMap, BTreeSet};

/// One watch's new answer.
// Moved once per changed answer and never stored, so the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Update {
    /// `/v1/agent/connect/ca/roots`.
    Roots(CaRoots),
    /// `/v1/catalog/services`.
    ServiceNames(ServiceNames),
    /// `/v1/health/connect/<service>`.
    ServiceHealth {
        /// The watched service.
        service: String,
        /// Its connect endpoints.
        nodes: Vec<CheckServiceNode>,
    },
    /// `/v1/catalog/datacenters`.
    Datacenters(Vec<String>),
    /// One remote datacenter's gateways (per-dc health view).
    Gateways {
        /// The datacenter.
        dc: String,
        /// Its mesh gateways.
        nodes: Vec<CheckServiceNode>,
    },
    /// `/v1/internal/federation-states/mesh-gateways`.
    FederationStates(FederationStateGateways),
    /// `/v1/config/service-resolver`.
    Resolvers(Vec<ServiceResolver>),
    /// `/v1/health/service/consul` (WAN federation only).
    Servers(Vec<CheckServiceNode>),
    /// The gateway's own registration (`/v1/agent/service/<id>`): WAN-federation meta, timeouts.
    Own(Service),
}

/// The per-name watches that should be running.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    /// Services whose `health/connect` is watched.
    pub services: BTreeSet<String>,
    /// Remote datacenters whose gateways are watched.
    pub datacenters: BTreeSet<String>,
    /// Whether the Consul servers are watched (WAN federation).
    pub servers: bool,
}

/// The gateway's view of Consul.
#[derive(Debug, Clone)]
pub struct GatewayState {
    local_dc: String,
    domain: String,
    own: Option<Service>,
    roots: Option<CaRoots>,
    names: Option<BTreeSet<String>>,
    services: BTreeMap<String, Vec<CheckServiceNode>>,
    datacenters: BTreeSet<String>,
    gateways: BTreeMap<String, Vec<CheckServiceNode>>,
    federation_states: FederationStateGateways,
    resolvers: Vec<ServiceResolver>,
    servers: Vec<CheckServiceNode>,
}

impl GatewayState {
    /// An empty view for a gateway in `local_dc`, with the agent's DNS `domain` (`consul`).
    pub fn new(local_dc: impl Into<String>, domain: impl Into<String>) -> GatewayState {
        GatewayState {
            local_dc: local_dc.into(),
            domain: domain.into(),
            own: None,
            roots: None,
            names: None,
            services: BTreeMap::new(),
            datacenters: BTreeSet::new(),
            gateways: BTreeMap::new(),
            federation_states: BTreeMap::new(),
            resolvers: Vec::new(),
            servers: Vec::new(),
        }
    }

    /// Applies one answer.
    pub fn apply(&mut self, update: Update) {
        match update {
            Update::Roots(roots) => self.roots = Some(roots),
            Update::ServiceNames(names) => {
                let names: BTreeSet<String> = names.into_keys().collect();
                // A removed name's watch is cancelled and its endpoints forgotten.
                self.services.retain(|svc, _| names.contains(svc));
                self.names = Some(names);
            }
            Update::ServiceHealth { service, nodes } => {
                // A late answer of a watch cancelled meanwhile is ignored.
                let watched = self.names.as_ref().is_some_and(|n| n.contains(&service));
                if nodes.is_empty() || !watched {
                    self.services.remove(&service);
                } else {
                    self.services.insert(service, nodes);
                }
            }
            Update::Datacenters(dcs) => {
                let dcs: BTreeSet<String> =
                    dcs.into_iter().filter(|dc| *dc != self.local_dc).collect();
                self.gateways.retain(|dc, _| dcs.contains(dc));
                self.datacenters = dcs;
            }
            Update::Gateways { dc, nodes } => {
                if nodes.is_empty() || !self.datacenters.contains(&dc) {
                    self.gateways.remove(&dc);
                } else {
                    self.gateways.insert(dc, nodes);
                }
            }
            Update::FederationStates(fed) => self.federation_states = fed,
            Update::Resolvers(resolvers) => self.resolvers = resolvers,
            Update::Servers(servers) => self.servers = servers,
            Update::Own(own) => self.own = Some(own),
        }
    }

    /// The latest CA roots (the trust domain), if answered.
    pub fn roots(&self) -> Option<&CaRoots> {
        self.roots.as_ref()
    }

    /// Each watched service's connect endpoints (names with an empty answer or no longer listed are
    /// absent).
    pub fn services(&self) -> &BTreeMap<String, Vec<CheckServiceNode>> {
        &self.services
    }

    /// Every datacenter's mesh gateways from the federation states (checks included, not filtered).
    pub fn federation_states(&self) -> &FederationStateGateways {
        &self.federation_states
    }

    /// The `service-resolver` entries.
    pub fn resolvers(&self) -> &[ServiceResolver] {
        &self.resolvers
    }

    /// The local Consul servers (WAN federation).
    pub fn servers(&self) -> &[CheckServiceNode] {
        &self.servers
    }

    /// Whether the gateway's own registration asks for WAN federation.
    pub fn wan_federation(&self) -> bool {
        self.own
            .as_ref()
            .is_some_and(|s| s.meta.get(WAN_FEDERATION_META).is_some_and(|v| v == "1"))
    }

    /// The per-name watches that should be running now.
    pub fn wanted(&self) -> Wanted {
        Wanted {
            services: self.names.clone().unwrap_or_default(),
            datacenters: self.datacenters.clone(),
            servers: self.wan_federation(),
        }
    }

    /// Ready once the roots (the trust domain) and the first service list are in, and with WAN
    /// federation the servers too (Consul's `snapshot.go` rule). Before that no table is served.
    pub fn ready(&self) -> bool {
        self.roots
            .as_ref()
            .is_some_and(|r| !r.trust_domain.is_empty())
            && self.names.is_some()
            && (!self.wan_federation() || !self.servers.is_empty())
    }

    /// The route table, once [`ready`](Self::ready).
    pub fn table(&self) -> Option<Table> {
        if !self.ready() {
            return None;
        }
        let roots = self.roots.as_ref()?;
        Some(routes::build(&Inputs {
            local_dc: &self.local_dc,
            trust_domain: &roots.trust_domain,
            domain: &self.domain,
            services: &self.services,
            resolvers: &self.resolvers,
            gateways: &self.gateways,
            federation_states: &self.federation_states,
            wan_federation: self.wan_federation(),
            servers: &self.servers,
            connect_timeout: self.own.as_ref().map_or(
                routes::DEFAULT_CONNECT_TIMEOUT,
                routes::gateway_connect_timeout,
            ),
        }))
    }
}

/// The watches of §1, built as Consul's gateway would run them over HTTP (feature `client`).
#[cfg(feature = "client")]
pub mod watches {
    use crate::watch::{Mode, Watch};
    use std::time::Duration;

    /// `/v1/agent/connect/ca/roots` (trust domain).
    pub fn roots() -> Watch {
        Watch::new("/v1/agent/connect/ca/roots")
    }

    /// `/v1/catalog/services` (which services exist).
    pub fn service_names() -> Watch {
        Watch::new("/v1/catalog/services")
    }

    /// `/v1/health/connect/<service>?cached` — never `?passing`: warning instances stay routed.
    pub fn service_health(service: &str) -> Watch {
        Watch::new(format!("/v1/health/connect/{service}")).query("cached", "")
    }

    /// `/v1/catalog/datacenters`, polled every 30 s (it does not block).
    pub fn datacenters() -> Watch {
        Watch::new("/v1/catalog/datacenters").mode(Mode::Poll(Duration::from_secs(30)))
    }

    /// `/v1/health/service/<gateway>?dc=<dc>` restricted to mesh gateways (names vary: `-service`).
    pub fn gateways(dc: &str, gateway_name: &str) -> Watch {
        Watch::new(format!("/v1/health/service/{gateway_name}"))
            .query("dc", dc)
            .query("filter", "Service.Kind == \"mesh-gateway\"")
    }

    /// `/v1/internal/federation-states/mesh-gateways` (every datacenter's gateways in one query).
    pub fn federation_states() -> Watch {
        Watch::new("/v1/internal/federation-states/mesh-gateways")
    }

    /// `/v1/config/service-resolver`.
    pub fn resolvers() -> Watch {
        Watch::new("/v1/config/service-resolver")
    }

    /// `/v1/health/service/consul` (WAN federation only).
    pub fn servers() -> Watch {
        Watch::new("/v1/health/service/consul")
    }

    /// `/v1/agent/service/<id>` (hash-blocking): the gateway's own registration.
    pub fn own(service_id: &str) -> Watch {
        Watch::new(format!("/v1/agent/service/{service_id}")).mode(Mode::Hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::Sni;

    const TD: &str = "b550e914-fd49-990c-a806-901069b0e799.consul";

    macro_rules! fixture {
        ($name:literal) => {
            serde_json::from_str(include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/",
                $name
            )))
            .expect("fixture decodes")
        };
    }

    fn names(list: &[&str]) -> ServiceNames {
        list.iter().map(|n| (n.to_string(), None)).collect()
    }

    #[test]
    fn ready_needs_roots_and_the_service_list() {
        let mut s = GatewayState::new("dc1", "consul");
        assert!(!s.ready() && s.table().is_none());
        s.apply(Update::ServiceNames(names(&["api"])));
        assert!(!s.ready(), "no trust domain yet");
        s.apply(Update::Roots(fixture!("agent-connect-ca-roots.json")));
        assert!(s.ready());
        assert_eq!(
            s.table().expect("table").routes,
            [],
            "ready with nothing to route"
        );
    }

    #[test]
    fn lifecycle_follows_the_lists() {
        let mut s = GatewayState::new("dc1", "consul");
        s.apply(Update::Roots(fixture!("agent-connect-ca-roots.json")));
        s.apply(Update::ServiceNames(names(&["api", "web"])));
        s.apply(Update::Datacenters(vec!["dc2".into(), "dc1".into()]));
        assert_eq!(
            s.wanted().services,
            ["api".to_string(), "web".into()].into()
        );
        assert_eq!(
            s.wanted().datacenters,
            ["dc2".to_string()].into(),
            "the local dc is not watched"
        );
        s.apply(Update::ServiceHealth {
            service: "api".into(),
            nodes: fixture!("health-connect-api.json"),
        });
        s.apply(Update::Gateways {
            dc: "dc2".into(),
            nodes: fixture!("health-service-mesh-gateway-dc2.json"),
        });
        let api = Sni::Exact(format!("api.default.dc1.internal.{TD}"));
        let dc2 = Sni::Exact(format!("dc2.internal.{TD}"));
        let table = s.table().expect("table");
        assert!(table.get(&api).is_some() && table.get(&dc2).is_some());

        // api leaves the catalog: its entry goes (Consul keeps it; we do not), and a late answer of
        // its cancelled watch does not bring it back.
        s.apply(Update::ServiceNames(names(&["web"])));
        assert!(s.table().expect("table").get(&api).is_none());
        s.apply(Update::ServiceHealth {
            service: "api".into(),
            nodes: fixture!("health-connect-api.json"),
        });
        assert!(s.table().expect("table").get(&api).is_none());

        // dc2 leaves: its gateways go.
        s.apply(Update::Datacenters(vec!["dc1".into()]));
        assert!(s.table().expect("table").get(&dc2).is_none());
        assert!(s.wanted().datacenters.is_empty());
    }

    #[test]
    fn an_empty_answer_deletes_the_entry() {
        let mut s = GatewayState::new("dc1", "consul");
        s.apply(Update::Roots(fixture!("agent-connect-ca-roots.json")));
        s.apply(Update::ServiceNames(names(&["api"])));
        s.apply(Update::ServiceHealth {
            service: "api".into(),
            nodes: fixture!("health-connect-api.json"),
        });
        s.apply(Update::ServiceHealth {
            service: "api".into(),
            nodes: Vec::new(),
        });
        assert!(s.table().expect("table").routes.is_empty());
    }

    #[test]
    fn wan_federation_waits_for_the_servers_and_uses_the_own_timeout() {
        let mut s = GatewayState::new("dc1", "consul");
        s.apply(Update::Roots(fixture!("agent-connect-ca-roots.json")));
        s.apply(Update::ServiceNames(names(&[])));
        let gateways: Vec<CheckServiceNode> = fixture!("health-service-mesh-gateway-dc2.json");
        let mut own = gateways[0].service.clone();
        own.proxy
            .get_or_insert_with(Default::default)
            .config
            .insert("connect_timeout_ms".into(), 2500.into());
        s.apply(Update::Own(own));
        assert!(s.wan_federation() && s.wanted().servers);
        assert!(!s.ready(), "WAN federation needs the servers");
        s.apply(Update::Servers(fixture!("health-service-consul.json")));
        let table = s.table().expect("table");
        let server = table
            .get(&Sni::Exact("server.dc1.consul".into()))
            .expect("server route");
        assert_eq!(
            server.connect_timeout,
            std::time::Duration::from_millis(2500)
        );
    }

    #[cfg(feature = "client")]
    #[test]
    fn watch_requests_are_as_consul_runs_them() {
        let req = watches::service_health("api").next_request();
        assert_eq!(
            req.target().expect("target"),
            "/v1/health/connect/api?cached"
        );
        let req = watches::gateways("dc2", "mesh-gateway").next_request();
        assert_eq!(
            req.target().expect("target"),
            "/v1/health/service/mesh-gateway?dc=dc2&filter=Service.Kind%20%3D%3D%20%22mesh-gateway%22"
        );
        assert!(watches::service_health("../agent/self")
            .next_request()
            .target()
            .is_err());
    }
}
