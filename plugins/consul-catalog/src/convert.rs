//! One Consul answer entry (`CheckServiceNode`) as a catalog instance: kind, addresses by Consul's
//! `BestAddress` (consul-live-api.md §4.3), health from every check (§4.4), the proxy block; and the
//! plugin's typed errors.

use meshgate_consul::model::{status, CheckServiceNode, ResolverFailover, ResolverRedirect};
use meshgate_guest::types::{
    GatewayMode, Health, HostPort, Instance, Proxy, ResolverFailover as WitFailover,
    ResolverRedirect as WitRedirect, ServiceKind, Upstream,
};
use std::fmt;

/// Why a plan cannot be made; each names the watch key (its path) whose answer is at fault.
#[derive(Debug)]
pub enum PlanError {
    /// A setting is unusable.
    Setting(String),
    /// An answer's body is not the JSON the endpoint gives.
    Json {
        /// The watch.
        key: String,
        /// The decode error (line and column in the body).
        source: serde_json::Error,
    },
    /// An answer's status is not one this watch can have (200; 404 for a config entry).
    Status {
        /// The watch.
        key: String,
        /// The status.
        status: u16,
    },
    /// A well-formed answer with a value meshgate cannot use.
    Field {
        /// The watch.
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::Setting(m) => write!(f, "consul-catalog setting: {m}"),
            PlanError::Json { key, source } => {
                write!(f, "watch {key}: answer is not the expected JSON: {source}")
            }
            PlanError::Status { key, status } => {
                write!(f, "watch {key}: unexpected HTTP status {status}")
            }
            PlanError::Field { key, message } => write!(f, "watch {key}: {message}"),
        }
    }
}

impl std::error::Error for PlanError {}

/// Consul's gateway-mode strings (`""`/`default`: not set here).
pub fn mode(text: &str, key: &str) -> Result<Option<GatewayMode>, PlanError> {
    let parsed = meshgate_mesh::GatewayMode::parse(text).map_err(|message| PlanError::Field {
        key: key.to_owned(),
        message,
    })?;
    Ok(parsed.map(|m| match m {
        meshgate_mesh::GatewayMode::None => GatewayMode::None,
        meshgate_mesh::GatewayMode::Local => GatewayMode::Local,
        meshgate_mesh::GatewayMode::Remote => GatewayMode::Remote,
    }))
}

/// An instance's health from all its checks, node checks included: maintenance when a maintenance
/// check is present (it is critical too, so such an instance is never routed), else the worst status.
/// Like Consul's gateway, a load-balancing weight below 1 also takes the instance out. A status
/// Consul does not write is treated as critical (fail closed).
pub fn health(c: &CheckServiceNode) -> Health {
    let maintenance = c.checks.iter().any(|k| {
        k.check_id.starts_with("_service_maintenance:") || k.check_id == "_node_maintenance"
    });
    if maintenance {
        return Health::Maintenance;
    }
    let mut worst = Health::Passing;
    for check in &c.checks {
        match check.status.as_str() {
            status::PASSING => {}
            status::WARNING => worst = Health::Warning,
            _ => return Health::Critical,
        }
    }
    if c.healthy_weight(false).is_none() {
        return Health::Critical;
    }
    worst
}

fn host_port((address, port): (String, u16)) -> Option<HostPort> {
    (!address.is_empty() && port != 0).then_some(HostPort { address, port })
}

fn some(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// An entry of a `health/connect` (`native`: a typical-kind instance there is Connect-native) or
/// `health/service` answer; `None` for kinds the mesh does not route (ingress/terminating gateways).
/// `lan` and `wan` are Consul's `BestAddress(false)` and `BestAddress(true)`: the `wan` tagged address
/// first, the service address, then the node's; the `lan` tagged address is never consulted.
pub fn instance(
    c: &CheckServiceNode,
    fallback_dc: &str,
    native: bool,
    key: &str,
) -> Result<Option<Instance>, PlanError> {
    let dc = if c.node.datacenter.is_empty() {
        fallback_dc
    } else {
        &c.node.datacenter
    };
    convert(c, dc, native, key)
}

/// A mesh gateway of the federation states, in the datacenter its key names.
pub fn gateway_instance(
    c: &CheckServiceNode,
    dc: &str,
    key: &str,
) -> Result<Option<Instance>, PlanError> {
    if c.service.kind != "mesh-gateway" {
        return Ok(None);
    }
    convert(c, dc, false, key)
}

fn convert(
    c: &CheckServiceNode,
    dc: &str,
    native: bool,
    key: &str,
) -> Result<Option<Instance>, PlanError> {
    let s = &c.service;
    let kind = match s.kind.as_str() {
        "" => ServiceKind::Typical,
        "connect-proxy" => ServiceKind::ConnectProxy,
        "mesh-gateway" => ServiceKind::MeshGateway,
        _ => return Ok(None),
    };
    let proxy = match (&s.proxy, kind) {
        (Some(p), ServiceKind::ConnectProxy) => {
            let mut upstreams = Vec::new();
            for u in &p.upstreams {
                upstreams.push(Upstream {
                    destination_type: some(&u.destination_type).unwrap_or_else(|| "service".into()),
                    destination_name: u.destination_name.clone(),
                    destination_namespace: some(&u.destination_namespace),
                    datacenter: some(&u.datacenter),
                    local_bind_address: some(&u.local_bind_address),
                    local_bind_port: u.local_bind_port,
                    mesh_gateway: mode(&u.mesh_gateway.mode, key)?,
                });
            }
            Some(Proxy {
                destination_service_name: p.destination_service_name.clone(),
                local_service_address: some(&p.local_service_address),
                local_service_port: (p.local_service_port != 0).then_some(p.local_service_port),
                mesh_gateway: mode(&p.mesh_gateway.mode, key)?,
                upstreams,
            })
        }
        _ => None,
    };
    Ok(Some(Instance {
        datacenter: dc.to_owned(),
        node_address: c.node.address.clone(),
        id: s.id.clone(),
        name: s.service.clone(),
        kind,
        namespace: some(&s.namespace).unwrap_or_else(|| meshgate_mesh::names::DEFAULT.into()),
        address: s.address.clone(),
        port: s.port,
        tags: s.tags.clone(),
        meta: s.meta.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        lan: host_port(c.best_address(false)),
        wan: host_port(c.best_address(true)),
        proxy,
        connect_native: native && kind == ServiceKind::Typical,
        health: health(c),
    }))
}

/// Consul leaves a field empty to mean "the primary's value".
fn set(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// A resolver's failover under `key`, as the catalog carries it.
pub fn failover(key: &str, f: &ResolverFailover) -> WitFailover {
    WitFailover {
        key: key.to_owned(),
        service: set(&f.service),
        service_subset: set(&f.service_subset),
        namespace: set(&f.namespace),
        datacenters: f
            .datacenters
            .iter()
            .filter(|d| !d.is_empty())
            .cloned()
            .collect(),
    }
}

/// A resolver's redirect, as the catalog carries it.
pub fn redirect(r: &ResolverRedirect) -> WitRedirect {
    WitRedirect {
        service: set(&r.service),
        service_subset: set(&r.service_subset),
        namespace: set(&r.namespace),
        datacenter: set(&r.datacenter),
    }
}
