//! The mesh gateway's route table from the watched answers (pure): consul-live-api.md §4.5, i.e. what
//! Consul 1.8's own mesh gateway gives Envoy. Local services (and their resolver subsets) → their
//! healthy connect endpoints at LAN addresses; every other datacenter → its gateways' WAN addresses
//! under `<dc>.internal.<trust-domain>` and `*.` that; with the WAN-federation meta, the Consul server
//! names too. Health and weights as §4.4 (passing and warning kept, critical dropped); a name with no
//! healthy endpoint gets no route, so its connections are closed (fail closed).

use crate::model::{CheckServiceNode, FederationStateGateways, ServiceResolver};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

/// Consul's default connect timeout for gateway clusters.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the table is built from (each field is one watch's latest answer).
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The gateway's own datacenter.
    pub local_dc: &'a str,
    /// `TrustDomain` of `/v1/agent/connect/ca/roots`.
    pub trust_domain: &'a str,
    /// The agent's DNS domain without the trailing dot (`consul`), for the WAN-federation names.
    pub domain: &'a str,
    /// `/v1/health/connect/<svc>` for every name of `/v1/catalog/services`.
    pub services: &'a BTreeMap<String, Vec<CheckServiceNode>>,
    /// `/v1/config/service-resolver`.
    pub resolvers: &'a [ServiceResolver],
    /// Per remote datacenter, `/v1/health/service/<gateway>?dc=` (the direct, health-current view).
    pub gateways: &'a BTreeMap<String, Vec<CheckServiceNode>>,
    /// `/v1/internal/federation-states/mesh-gateways`, used for a datacenter missing from `gateways`.
    pub federation_states: &'a FederationStateGateways,
    /// The gateway's own registration carries Meta `consul-wan-federation = "1"`.
    pub wan_federation: bool,
    /// `/v1/health/service/consul` (only read with `wan_federation`).
    pub servers: &'a [CheckServiceNode],
    /// `connect_timeout_ms` of the gateway's own `Proxy.Config`, else [`DEFAULT_CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
}

/// How a route matches the SNI.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Sni {
    /// This exact name.
    Exact(String),
    /// Any name ending in `.<suffix>` (any number of labels before it): meshgate's `*.suffix`.
    Wildcard(String),
}

impl fmt::Display for Sni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sni::Exact(name) => f.write_str(name),
            Sni::Wildcard(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

/// What a route delivers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A local service, or one of its resolver subsets.
    Service {
        /// Service name.
        service: String,
        /// Subset name, if any.
        subset: Option<String>,
    },
    /// Another datacenter's mesh gateways.
    Datacenter(String),
    /// Consul servers: a remote datacenter's (through its gateways) or the local ones (WAN federation).
    Servers(String),
}

/// One place to dial, with its load-balancing weight.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    /// Host or IP.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Weight (1..=128).
    pub weight: u32,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// One route the gateway would install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The SNI it matches.
    pub sni: Sni,
    /// Healthy endpoints, never empty.
    pub endpoints: Vec<Endpoint>,
    /// Connect timeout to those endpoints.
    pub connect_timeout: Duration,
    /// What it delivers to.
    pub target: Target,
}

/// The table, sorted by SNI, and what could not be routed and why (bad filters, bad timeouts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// The routes, sorted by SNI.
    pub routes: Vec<Route>,
    /// One line per problem met (the affected name is left unrouted or takes the default).
    pub problems: Vec<String>,
}

impl Table {
    /// The route for exactly this SNI pattern.
    pub fn get(&self, sni: &Sni) -> Option<&Route> {
        self.routes.iter().find(|r| &r.sni == sni)
    }

    /// Which route a connection with `name` as its SNI takes: an exact route, else the longest
    /// matching wildcard, else none (closed) — meshgate's and Envoy's precedence.
    pub fn resolve(&self, name: &str) -> Option<&Route> {
        if let Some(r) = self.get(&Sni::Exact(name.to_string())) {
            return Some(r);
        }
        self.routes
            .iter()
            .filter(|r| match &r.sni {
                Sni::Wildcard(suffix) => name
                    .strip_suffix(suffix.as_str())
                    .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
                Sni::Exact(_) => false,
            })
            .max_by_key(|r| match &r.sni {
                Sni::Wildcard(s) => s.len(),
                Sni::Exact(_) => 0,
            })
    }
}

/// `connect_timeout_ms` from a gateway's `Proxy.Config`, else [`DEFAULT_CONNECT_TIMEOUT`].
pub fn gateway_connect_timeout(own: &crate::model::Service) -> Duration {
    own.proxy
        .as_ref()
        .and_then(|p| p.config.get("connect_timeout_ms"))
        .and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        .filter(|ms| *ms > 0)
        .map_or(DEFAULT_CONNECT_TIMEOUT, Duration::from_millis)
}

/// Builds the table.
pub fn build(inputs: &Inputs<'_>) -> Table {
    let mut table = Table::default();
    let td = inputs.trust_domain;
    let local = inputs.local_dc;
    let resolvers: BTreeMap<&str, &ServiceResolver> = inputs
        .resolvers
        .iter()
        .map(|r| (r.name.as_str(), r))
        .collect();

    for (service, instances) in inputs.services {
        // Sidecar, gateway and `consul` names come back empty from health/connect: no route.
        if instances.is_empty() {
            continue;
        }
        let resolver = resolvers.get(service.as_str()).copied();
        let timeout = match resolver.map(ServiceResolver::connect_timeout) {
            Some(Ok(Some(t))) if !t.is_zero() => t,
            Some(Err(e)) => {
                table
                    .problems
                    .push(format!("service-resolver {service}: ConnectTimeout {e}"));
                inputs.connect_timeout
            }
            _ => inputs.connect_timeout,
        };
        let name = format!("{service}.default.{local}.internal.{td}");
        // The unnamed name: all instances, or the default subset's.
        let (filter, only_passing) = match resolver {
            Some(r) if !r.default_subset.is_empty() => r
                .subsets
                .get(&r.default_subset)
                .map_or(("", false), |s| (s.filter.as_str(), s.only_passing)),
            _ => ("", false),
        };
        let target = Target::Service {
            service: service.clone(),
            subset: None,
        };
        push_local(
            &mut table,
            Sni::Exact(name.clone()),
            instances,
            filter,
            only_passing,
            timeout,
            target,
        );
        if let Some(r) = resolver {
            for (subset, def) in &r.subsets {
                let target = Target::Service {
                    service: service.clone(),
                    subset: Some(subset.clone()),
                };
                let sni = Sni::Exact(format!("{subset}.{name}"));
                push_local(
                    &mut table,
                    sni,
                    instances,
                    &def.filter,
                    def.only_passing,
                    timeout,
                    target,
                );
            }
        }
    }

    let remote: BTreeSet<&String> = inputs
        .gateways
        .iter()
        .chain(inputs.federation_states.iter())
        .filter(|(dc, gws)| dc.as_str() != local && !gws.is_empty())
        .map(|(dc, _)| dc)
        .collect();
    for dc in remote {
        let gateways = match inputs.gateways.get(dc) {
            Some(g) if !g.is_empty() => g,
            _ => &inputs.federation_states[dc],
        };
        let endpoints = healthy(gateways, true, false);
        if endpoints.is_empty() {
            continue;
        }
        let cluster = format!("{dc}.internal.{td}");
        let mut names = vec![(Sni::Exact(cluster.clone()), Target::Datacenter(dc.clone()))];
        names.push((Sni::Wildcard(cluster), Target::Datacenter(dc.clone())));
        if inputs.wan_federation {
            let servers = format!("server.{dc}.{}", inputs.domain);
            names.push((Sni::Exact(servers.clone()), Target::Servers(dc.clone())));
            names.push((Sni::Wildcard(servers), Target::Servers(dc.clone())));
        }
        for (sni, target) in names {
            table.routes.push(Route {
                sni,
                endpoints: endpoints.clone(),
                connect_timeout: inputs.connect_timeout,
                target,
            });
        }
    }

    if inputs.wan_federation {
        // Local servers: health UNKNOWN in Consul, so not filtered; their RPC port is the service port.
        let mut all = Vec::new();
        for server in inputs.servers {
            let (host, port) = server.best_address(false);
            if host.is_empty() || port == 0 {
                continue;
            }
            let endpoint = Endpoint {
                host,
                port,
                weight: 1,
            };
            all.push(endpoint.clone());
            table.routes.push(Route {
                sni: Sni::Exact(format!(
                    "{}.server.{local}.{}",
                    server.node.node, inputs.domain
                )),
                endpoints: vec![endpoint],
                connect_timeout: inputs.connect_timeout,
                target: Target::Servers(local.to_string()),
            });
        }
        if !all.is_empty() {
            table.routes.push(Route {
                sni: Sni::Exact(format!("server.{local}.{}", inputs.domain)),
                endpoints: all,
                connect_timeout: inputs.connect_timeout,
                target: Target::Servers(local.to_string()),
            });
        }
    }
    table.routes.sort_by_cached_key(|r| r.sni.to_string());
    table.routes.dedup_by(|a, b| a.sni == b.sni);
    table
}

fn push_local(
    table: &mut Table,
    sni: Sni,
    instances: &[CheckServiceNode],
    filter: &str,
    only_passing: bool,
    connect_timeout: Duration,
    target: Target,
) {
    let selected: Vec<CheckServiceNode> = if filter.trim().is_empty() {
        instances.to_vec()
    } else {
        match crate::filter::Filter::parse(filter) {
            Ok(f) => instances.iter().filter(|c| f.matches(c)).cloned().collect(),
            Err(e) => {
                table
                    .problems
                    .push(format!("{sni}: subset filter {filter:?}: {e}"));
                return;
            }
        }
    };
    let endpoints = healthy(&selected, false, only_passing);
    if !endpoints.is_empty() {
        table.routes.push(Route {
            sni,
            endpoints,
            connect_timeout,
            target,
        });
    }
}

fn healthy(instances: &[CheckServiceNode], wan: bool, only_passing: bool) -> Vec<Endpoint> {
    instances
        .iter()
        .filter_map(|c| {
            let weight = c.healthy_weight(only_passing)?;
            let (host, port) = c.best_address(wan);
            (!host.is_empty() && port != 0).then_some(Endpoint { host, port, weight })
        })
        .collect()
}

#[cfg(test)]
mod tests;
