//! Service registrations: typical services, `connect-proxy` sidecars (their `proxy` block and upstreams),
//! mesh gateways, their checks and tagged addresses, and what routing asks of an instance.

use super::GatewayMode;
use serde::Serialize;
use std::collections::BTreeMap;

/// What a registration is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceKind {
    /// An application service.
    Typical,
    /// A sidecar proxy.
    ConnectProxy,
    /// A mesh gateway.
    MeshGateway,
}

impl ServiceKind {
    /// Every kind.
    pub const ALL: [ServiceKind; 3] = [
        ServiceKind::Typical,
        ServiceKind::ConnectProxy,
        ServiceKind::MeshGateway,
    ];

    /// The `kind` value as Consul writes it (`typical` for services without one).
    pub fn label(self) -> &'static str {
        match self {
            ServiceKind::Typical => "typical",
            ServiceKind::ConnectProxy => "connect-proxy",
            ServiceKind::MeshGateway => "mesh-gateway",
        }
    }
}

/// Health of an instance or a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Passing.
    Passing,
    /// Warning.
    Warning,
    /// Critical.
    Critical,
    /// In maintenance.
    Maintenance,
}

/// An address and port (tagged addresses, bind addresses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostPort {
    /// Host or IP.
    pub address: String,
    /// Port.
    pub port: u16,
}

/// A health check as registered; only its status matters to routing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Check id or name.
    pub name: String,
    /// Current (or initial) status.
    pub status: Health,
}

/// One upstream of a sidecar proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Upstream {
    /// `service` (default) or `prepared_query`.
    pub destination_type: String,
    /// Destination service (or query) name.
    pub destination_name: String,
    /// Destination namespace (default `default`).
    pub destination_namespace: Option<String>,
    /// Destination datacenter (default: the sidecar's).
    pub datacenter: Option<String>,
    /// Where the sidecar listens for this upstream (default 127.0.0.1).
    pub local_bind_address: Option<String>,
    /// The sidecar's local port for this upstream.
    pub local_bind_port: u16,
    /// Upstream-level gateway mode, the most specific of the four levels.
    pub mesh_gateway: Option<GatewayMode>,
}

/// The `proxy` block of a sidecar registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Proxy {
    /// The service this proxy fronts.
    pub destination_service_name: String,
    /// That service's instance id, if given.
    pub destination_service_id: Option<String>,
    /// Where the application listens (default 127.0.0.1).
    pub local_service_address: Option<String>,
    /// The application's port.
    pub local_service_port: Option<u16>,
    /// Instance-level gateway mode.
    pub mesh_gateway: Option<GatewayMode>,
    /// Upstreams.
    pub upstreams: Vec<Upstream>,
}

/// A service registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    /// Instance id (defaults to the name).
    pub id: String,
    /// Service name.
    pub name: String,
    /// Kind.
    pub kind: ServiceKind,
    /// Namespace (default `default`).
    pub namespace: String,
    /// Address; empty means the node's address.
    pub address: String,
    /// Port.
    pub port: u16,
    /// Tags.
    pub tags: Vec<String>,
    /// Meta.
    pub meta: BTreeMap<String, String>,
    /// Tagged addresses (`lan`, `wan`, ...).
    pub tagged_addresses: BTreeMap<String, HostPort>,
    /// Proxy configuration (connect-proxy and mesh-gateway kinds).
    pub proxy: Option<Proxy>,
    /// The inline sidecar (`connect { sidecar_service { .. } }`), completed with Consul's defaults.
    pub sidecar: Option<Box<Service>>,
    /// `connect { native = true }`.
    pub connect_native: bool,
    /// Health checks.
    pub checks: Vec<Check>,
}

impl Service {
    /// Worst status among the checks; passing without checks.
    pub fn health(&self) -> Health {
        self.checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(Health::Passing)
    }

    /// The address to reach this instance: its own, else the node's, and its port.
    pub fn endpoint(&self, node_address: &str) -> String {
        let host = if self.address.is_empty() {
            node_address
        } else {
            &self.address
        };
        format!("{host}:{}", self.port)
    }

    /// A tagged address (`wan`, `lan`) as `host:port`.
    pub fn tagged(&self, tag: &str) -> Option<String> {
        self.tagged_addresses
            .get(tag)
            .map(|a| format!("{}:{}", a.address, a.port))
    }
}
