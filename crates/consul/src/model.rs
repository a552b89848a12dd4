//! The answers a mesh gateway and a sidecar read from Consul 1.8's HTTP API, as serde types (pure, no
//! IO), plus the two request bodies meshgate sends: the mesh gateway's registration — the exact JSON
//! `consul connect envoy -gateway=mesh -register` sends ([`MeshGatewayRegistration`], consul-live-api.md
//! §5) — and the sidecar's `connect/authorize` call.
//!
//! Consul writes `null` for empty lists and maps (`"Meta": null`, `"Checks": null`) and omits what is
//! unset; every collection here reads both as empty, and unknown fields are ignored.

use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Reads `null` as the type's default (Consul's Go encoder writes nil slices and maps as `null`).
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `GET /v1/catalog/services`: service name → tags. Only the keys matter to a gateway.
pub type ServiceNames = BTreeMap<String, Option<Vec<String>>>;

/// `GET /v1/catalog/datacenters` (ordered by round-trip time: the order means nothing).
pub type Datacenters = Vec<String>;

/// `GET /v1/internal/federation-states/mesh-gateways`: datacenter → its mesh gateways (not filtered
/// by health: the checks come along).
pub type FederationStateGateways = BTreeMap<String, Vec<CheckServiceNode>>;

/// One entry of `/v1/health/connect/<svc>`, `/v1/health/service/<svc>` and the federation states: a
/// service instance with its node and every check (node checks included).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CheckServiceNode {
    /// The node the instance runs on.
    #[serde(deserialize_with = "nullable")]
    pub node: Node,
    /// The instance.
    #[serde(deserialize_with = "nullable")]
    pub service: Service,
    /// Node and service checks.
    #[serde(deserialize_with = "nullable")]
    pub checks: Vec<HealthCheck>,
}

/// A catalog node.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Node {
    /// Node ID (a UUID).
    #[serde(rename = "ID")]
    pub id: String,
    /// Node name.
    pub node: String,
    /// The node's LAN address.
    pub address: String,
    /// The node's datacenter.
    pub datacenter: String,
    /// `lan`, `wan`, `lan_ipv4`, … → address.
    #[serde(deserialize_with = "nullable")]
    pub tagged_addresses: BTreeMap<String, String>,
    /// Node metadata.
    #[serde(deserialize_with = "nullable")]
    pub meta: BTreeMap<String, String>,
}

/// A service instance (Consul's `NodeService`; also the answer of `/v1/agent/service/<id>`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Service {
    /// `""` (typical), `connect-proxy`, `mesh-gateway`, …
    pub kind: String,
    /// Instance ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Service name.
    pub service: String,
    /// Tags (a sidecar inherits its parent's).
    #[serde(deserialize_with = "nullable")]
    pub tags: Vec<String>,
    /// Service address; empty means the node's.
    pub address: String,
    /// `lan`, `wan`, `lan_ipv4`, … → address and port.
    #[serde(deserialize_with = "nullable")]
    pub tagged_addresses: BTreeMap<String, ServiceAddress>,
    /// Metadata (a sidecar inherits its parent's; resolver subsets filter on it).
    #[serde(deserialize_with = "nullable")]
    pub meta: BTreeMap<String, String>,
    /// Port.
    pub port: u16,
    /// Load-balancing weights; `None` means passing 1, warning 1.
    pub weights: Option<Weights>,
    /// Proxy settings of a `connect-proxy` or `mesh-gateway`.
    pub proxy: Option<Proxy>,
    /// Namespace (Enterprise; empty in OSS).
    pub namespace: String,
    /// Datacenter (in `/v1/agent/service/<id>` answers).
    pub datacenter: String,
    /// Content hash (in `/v1/agent/service/<id>` answers, for hash-based blocking).
    pub content_hash: String,
    /// Connect settings: whether the service speaks mTLS itself (Connect-native).
    #[serde(deserialize_with = "nullable")]
    pub connect: ServiceConnect,
}

/// A service's `Connect` block (what a gateway needs of it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceConnect {
    /// The service terminates mesh mTLS itself: it is its own connect endpoint, no sidecar.
    pub native: bool,
}

/// One node of `GET /v1/internal/ui/nodes` (Consul's `NodeInfo`): the node, every service instance on
/// it and every check (node checks have an empty `ServiceID`). The whole local catalog in one
/// blocking query; its nodes carry no datacenter (it is the agent's).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NodeInfo {
    /// Node ID (a UUID).
    #[serde(rename = "ID")]
    pub id: String,
    /// Node name.
    pub node: String,
    /// The node's LAN address.
    pub address: String,
    /// `lan`, `wan`, … → address.
    #[serde(deserialize_with = "nullable")]
    pub tagged_addresses: BTreeMap<String, String>,
    /// Node metadata.
    #[serde(deserialize_with = "nullable")]
    pub meta: BTreeMap<String, String>,
    /// Every service instance on the node.
    #[serde(deserialize_with = "nullable")]
    pub services: Vec<Service>,
    /// Every check on the node.
    #[serde(deserialize_with = "nullable")]
    pub checks: Vec<HealthCheck>,
}

impl NodeInfo {
    /// The node's connect endpoints as `health/connect/<destination>` would list them, by destination:
    /// each `connect-proxy` under the service it fronts, each Connect-native service under its own
    /// name, with the node (in datacenter `dc`) and the node's and the instance's checks.
    pub fn connect_endpoints(
        &self,
        dc: &str,
    ) -> impl Iterator<Item = (&str, CheckServiceNode)> + '_ {
        let node = Node {
            id: self.id.clone(),
            node: self.node.clone(),
            address: self.address.clone(),
            datacenter: dc.to_owned(),
            tagged_addresses: self.tagged_addresses.clone(),
            meta: self.meta.clone(),
        };
        self.services.iter().filter_map(move |s| {
            let destination = match s.kind.as_str() {
                "connect-proxy" => s.proxy.as_ref()?.destination_service_name.as_str(),
                "" if s.connect.native => s.service.as_str(),
                _ => return None,
            };
            let checks = self
                .checks
                .iter()
                .filter(|c| c.service_id.is_empty() || c.service_id == s.id)
                .cloned()
                .collect();
            Some((
                destination,
                CheckServiceNode {
                    node: node.clone(),
                    service: s.clone(),
                    checks,
                },
            ))
        })
    }
}

/// A tagged service address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceAddress {
    /// Host or IP.
    pub address: String,
    /// Port (0: the service's port).
    pub port: u16,
}

/// Weights an instance gets when all checks pass / when one warns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Weights {
    /// Weight when every check passes.
    pub passing: i64,
    /// Weight when a check warns.
    pub warning: i64,
}

/// A proxy's configuration (sidecars and gateways).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Proxy {
    /// The service a sidecar fronts: its identity.
    pub destination_service_name: String,
    /// The instance a sidecar fronts.
    #[serde(rename = "DestinationServiceID")]
    pub destination_service_id: String,
    /// Where the application listens.
    pub local_service_address: String,
    /// Where the application listens.
    pub local_service_port: u16,
    /// Opaque proxy configuration (`connect_timeout_ms`, `envoy_gateway_*`, `protocol`, …).
    #[serde(deserialize_with = "nullable")]
    pub config: serde_json::Map<String, serde_json::Value>,
    /// Upstreams of a sidecar.
    #[serde(deserialize_with = "nullable")]
    pub upstreams: Vec<Upstream>,
    /// The instance's gateway mode.
    #[serde(deserialize_with = "nullable")]
    pub mesh_gateway: MeshGatewayConfig,
}

/// A sidecar upstream.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Upstream {
    /// `service` (default) or `prepared_query`.
    pub destination_type: String,
    /// Namespace (Enterprise).
    pub destination_namespace: String,
    /// The upstream service.
    pub destination_name: String,
    /// Target datacenter; empty means the local one.
    pub datacenter: String,
    /// Local listener address.
    pub local_bind_address: String,
    /// Local listener port.
    pub local_bind_port: u16,
    /// Opaque upstream configuration.
    #[serde(deserialize_with = "nullable")]
    pub config: serde_json::Map<String, serde_json::Value>,
    /// The upstream's gateway mode.
    #[serde(deserialize_with = "nullable")]
    pub mesh_gateway: MeshGatewayConfig,
}

/// `{"Mode": "local" | "remote" | "none" | ""}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct MeshGatewayConfig {
    /// The mode; empty means "not set here".
    pub mode: String,
}

/// A health check as the health endpoints report it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct HealthCheck {
    /// Node name.
    pub node: String,
    /// Check ID (`serfHealth` is the node's, `_service_maintenance:<id>` is maintenance mode).
    #[serde(rename = "CheckID")]
    pub check_id: String,
    /// Check name.
    pub name: String,
    /// `passing`, `warning` or `critical`.
    pub status: String,
    /// The service instance it belongs to; empty for node checks.
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    /// Notes (maintenance mode puts the reason here).
    pub notes: String,
    /// The last output.
    pub output: String,
}

/// Check statuses.
pub mod status {
    /// All good.
    pub const PASSING: &str = "passing";
    /// Still serving (Envoy keeps warning instances).
    pub const WARNING: &str = "warning";
    /// Out of rotation.
    pub const CRITICAL: &str = "critical";
}

impl CheckServiceNode {
    /// The endpoint's load-balancing weight if it is healthy, `None` if not, by the rules of Consul's
    /// mesh gateway (`calculateEndpointHealthAndWeight`, consul-live-api.md §4.4): any critical check
    /// (node checks and maintenance included) → unhealthy; with `only_passing`, any non-passing check
    /// → unhealthy; the weight is `Weights.Passing` (1 by default), `Weights.Warning` when a check warns;
    /// a weight below 1 → unhealthy; capped at 128.
    pub fn healthy_weight(&self, only_passing: bool) -> Option<u32> {
        let mut weight = self.service.weights.map_or(1, |w| w.passing);
        for check in &self.checks {
            if check.status == status::CRITICAL {
                return None;
            }
            if only_passing && check.status != status::PASSING {
                return None;
            }
            if check.status == status::WARNING {
                if let Some(w) = self.service.weights {
                    weight = w.warning;
                }
            }
        }
        if weight < 1 {
            return None;
        }
        Some(weight.min(128) as u32)
    }

    /// The address another proxy should dial (`CheckServiceNode.BestAddress`, §4.3). For `wan`
    /// (a gateway in another datacenter): the service's `wan` tagged address (its port if non-zero),
    /// else the service address; when still empty, the node's `wan` tagged address, else the node
    /// address. For the LAN: the service address, else the node address. The port is the service's
    /// unless the `wan` tagged address gave one. `lan_ipv4`/`wan_ipv4` are never used: Consul fills them
    /// with the LAN address.
    pub fn best_address(&self, wan: bool) -> (String, u16) {
        let mut addr = self.service.address.as_str();
        let mut port = self.service.port;
        if wan {
            if let Some(tagged) = self.service.tagged_addresses.get("wan") {
                addr = &tagged.address;
                if tagged.port != 0 {
                    port = tagged.port;
                }
            }
        }
        if addr.is_empty() {
            addr = match self.node.tagged_addresses.get("wan") {
                Some(node_wan) if wan => node_wan,
                _ => &self.node.address,
            };
        }
        (addr.to_string(), port)
    }
}

/// `GET /v1/agent/connect/ca/roots`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CaRoots {
    /// ID of the root that signs new leaves.
    #[serde(rename = "ActiveRootID")]
    pub active_root_id: String,
    /// `<cluster-uuid>.consul`: the SNI suffix is `internal.<TrustDomain>`.
    pub trust_domain: String,
    /// Every root; during a rotation, old and new.
    #[serde(deserialize_with = "nullable")]
    pub roots: Vec<CaRoot>,
}

/// One CA root.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CaRoot {
    /// The root's ID (colon-hex of its key ID).
    #[serde(rename = "ID")]
    pub id: String,
    /// Display name.
    pub name: String,
    /// Serial number.
    pub serial_number: u64,
    /// Trust domain without `.consul`.
    pub external_trust_domain: String,
    /// Not valid before (RFC 3339).
    pub not_before: String,
    /// Not valid after (RFC 3339).
    pub not_after: String,
    /// The root certificate (PEM).
    pub root_cert: String,
    /// Intermediates (PEM); a secondary datacenter's chain to the primary's root.
    #[serde(deserialize_with = "nullable")]
    pub intermediate_certs: Vec<String>,
    /// Whether this root signs new leaves.
    pub active: bool,
    /// `ec` or `rsa`.
    pub private_key_type: String,
    /// Key size.
    pub private_key_bits: u32,
}

impl CaRoots {
    /// Every root certificate (PEM): a sidecar trusts all of them, not only the active one (§3.8).
    pub fn trust_bundle(&self) -> Vec<&str> {
        self.roots.iter().map(|r| r.root_cert.as_str()).collect()
    }

    /// The SNI suffix of this trust domain's mesh names: `internal.<TrustDomain>`.
    pub fn sni_suffix(&self) -> String {
        format!("internal.{}", self.trust_domain)
    }
}

/// `GET /v1/agent/connect/ca/leaf/<service>`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct LeafCert {
    /// Hex serial number.
    pub serial_number: String,
    /// The leaf, then its intermediates (in a secondary datacenter, the intermediate may repeat).
    #[serde(rename = "CertPEM")]
    pub cert_pem: String,
    /// The leaf's private key (PEM).
    #[serde(rename = "PrivateKeyPEM")]
    pub private_key_pem: String,
    /// The service the leaf names.
    pub service: String,
    /// `spiffe://<td>/ns/<ns>/dc/<dc>/svc/<service>`.
    #[serde(rename = "ServiceURI")]
    pub service_uri: String,
    /// Not valid before (RFC 3339).
    pub valid_after: String,
    /// Not valid after (RFC 3339): never use the leaf past it.
    pub valid_before: String,
    /// Raft index the leaf was made at.
    pub create_index: u64,
    /// The leaf watch's index.
    pub modify_index: u64,
}

impl LeafCert {
    /// The certificates of `CertPEM` as separate PEM blocks, leaf first, with repeats dropped (dc2's
    /// answer carries its intermediate twice, §3.9).
    pub fn chain(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for block in pem_blocks(&self.cert_pem, "CERTIFICATE") {
            if !out.contains(&block) {
                out.push(block);
            }
        }
        out
    }

    /// The leaf's datacenter, from its SPIFFE URI (a token without `agent:read` learns it this way).
    pub fn datacenter(&self) -> Option<&str> {
        let mut parts = self.service_uri.split('/');
        parts.find(|p| *p == "dc")?;
        parts.next().filter(|dc| !dc.is_empty())
    }
}

/// The `-----BEGIN <label>-----` … `-----END <label>-----` blocks of `pem`, normalised to end in `\n`.
fn pem_blocks(pem: &str, label: &str) -> Vec<String> {
    let (begin, end) = (
        format!("-----BEGIN {label}-----"),
        format!("-----END {label}-----"),
    );
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(&begin) {
        let Some(stop) = rest[start..].find(&end) else {
            break;
        };
        let stop = start + stop + end.len();
        out.push(format!("{}\n", rest[start..stop].trim()));
        rest = &rest[stop..];
    }
    out
}

/// `POST /v1/agent/connect/authorize` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AuthorizeRequest {
    /// The sidecar's own service (the token needs `service:write` on it).
    pub target: String,
    /// The caller's SPIFFE URI (first URI SAN of its leaf).
    #[serde(rename = "ClientCertURI")]
    pub client_cert_uri: String,
    /// Colon-hex serial of the caller's leaf.
    pub client_cert_serial: String,
}

impl AuthorizeRequest {
    /// A request for `target`, with the caller's URI and its serial bytes (written as colon-hex).
    pub fn new(target: &str, client_cert_uri: &str, serial: &[u8]) -> AuthorizeRequest {
        let serial = serial
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        AuthorizeRequest {
            target: target.to_string(),
            client_cert_uri: client_cert_uri.to_string(),
            client_cert_serial: serial,
        }
    }
}

/// `POST /v1/agent/connect/authorize` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AuthorizeResponse {
    /// The verdict.
    pub authorized: bool,
    /// Which intention (or default) decided.
    pub reason: String,
}

/// One permission of the ACL preflight `POST /v1/internal/acl/authorize` (§3.12): the request
/// lists them (at most 64), the answer echoes each with `Allow`. It turns Consul's silent filtering (200
/// with empty results when `node:read` is missing) into a clear error at start.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AclCheck {
    /// `service`, `node`, `agent`, `operator`, …
    pub resource: String,
    /// The name the rule applies to. Consul leaves it out of the answer when it is empty (Go's
    /// `omitempty`), which is how a `service_prefix ""` / `node_prefix ""` rule is asked about.
    #[serde(default)]
    pub segment: String,
    /// `read` or `write`.
    pub access: String,
    /// The verdict (answers only).
    #[serde(default, skip_serializing)]
    pub allow: bool,
}

impl AclCheck {
    /// `resource:access on segment`.
    pub fn new(resource: &str, segment: &str, access: &str) -> AclCheck {
        AclCheck {
            resource: resource.into(),
            segment: segment.into(),
            access: access.into(),
            allow: false,
        }
    }

    /// What a mesh gateway's token needs (§7.1): `service:write` on its own name, `service:read` on
    /// the services it routes (checked on `probe_service`), and `node:read` on `node` — without it
    /// Consul answers health queries with empty lists instead of an error.
    pub fn gateway_preflight(gateway: &str, probe_service: &str, node: &str) -> Vec<AclCheck> {
        vec![
            AclCheck::new("service", gateway, "write"),
            AclCheck::new("service", probe_service, "read"),
            AclCheck::new("node", node, "read"),
        ]
    }

    /// The refused permissions of an answer, each as `service:write on mesh-gateway`.
    pub fn missing(answer: &[AclCheck]) -> Vec<String> {
        answer
            .iter()
            .filter(|c| !c.allow)
            .map(|c| format!("{}:{} on {}", c.resource, c.access, c.segment))
            .collect()
    }
}

/// One summary of `GET /v1/internal/ui/services` (gateway names per datacenter by kind).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct UiService {
    /// Service kind.
    pub kind: String,
    /// Service name.
    pub name: String,
    /// Nodes it runs on.
    #[serde(deserialize_with = "nullable")]
    pub nodes: Vec<String>,
    /// Instances.
    pub instance_count: u32,
    /// Passing checks.
    pub checks_passing: u32,
    /// Warning checks.
    pub checks_warning: u32,
    /// Critical checks.
    pub checks_critical: u32,
}

/// `service-resolver` config entry (`/v1/config/service-resolver` lists them).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceResolver {
    /// The service it resolves.
    pub name: String,
    /// Subset the unnamed name goes to.
    pub default_subset: String,
    /// Named subsets.
    #[serde(deserialize_with = "nullable")]
    pub subsets: BTreeMap<String, ResolverSubset>,
    /// Go duration (`"3s"`); empty = unset.
    pub connect_timeout: String,
    /// Redirect: the service resolves as another (service, subset, namespace, datacenter).
    pub redirect: Option<ResolverRedirect>,
    /// Failover by subset name or `*`: where a sidecar's connections go when the primary target has no
    /// healthy instance (a gateway only ever sees the final SNI).
    #[serde(deserialize_with = "nullable")]
    pub failover: BTreeMap<String, ResolverFailover>,
    /// Raft index.
    pub modify_index: u64,
}

impl ServiceResolver {
    /// `ConnectTimeout` as a duration; `Ok(None)` when unset.
    pub fn connect_timeout(&self) -> Result<Option<Duration>, String> {
        if self.connect_timeout.is_empty() {
            return Ok(None);
        }
        parse_go_duration(&self.connect_timeout).map(Some)
    }
}

/// A resolver's `Failover` value (`ServiceResolverFailover`); empty fields keep the primary's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ResolverFailover {
    /// Another service.
    pub service: String,
    /// A subset of it.
    pub service_subset: String,
    /// Another namespace.
    pub namespace: String,
    /// Datacenters, tried in order.
    #[serde(deserialize_with = "nullable")]
    pub datacenters: Vec<String>,
}

/// A resolver's `Redirect` (`ServiceResolverRedirect`); empty fields keep the upstream's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ResolverRedirect {
    /// Another service.
    pub service: String,
    /// A subset of it.
    pub service_subset: String,
    /// Another namespace.
    pub namespace: String,
    /// Another datacenter.
    pub datacenter: String,
}

/// A resolver subset: a bexpr filter over the proxy's `CheckServiceNode`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ResolverSubset {
    /// The filter (`Service.Meta.version == 1`); empty keeps every instance.
    pub filter: String,
    /// Only instances whose every check passes.
    pub only_passing: bool,
}

/// One intention of `GET /v1/connect/intentions` (Consul 1.8: the list is sorted by precedence, most
/// specific first, which is the order they are tried in).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Intention {
    /// Intention ID (a UUID).
    #[serde(rename = "ID")]
    pub id: String,
    /// Source namespace (`default` in OSS; `*` for any).
    #[serde(rename = "SourceNS")]
    pub source_ns: String,
    /// Source service, or `*`.
    pub source_name: String,
    /// Destination namespace.
    #[serde(rename = "DestinationNS")]
    pub destination_ns: String,
    /// Destination service, or `*`.
    pub destination_name: String,
    /// `consul` (the only type in 1.8 OSS).
    pub source_type: String,
    /// `allow` or `deny`.
    pub action: String,
    /// Consul's precedence (higher is tried first).
    pub precedence: i64,
}

/// `proxy-defaults` config entry (`/v1/config/proxy-defaults/global`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ProxyDefaults {
    /// Always `global`.
    pub name: String,
    /// Opaque proxy configuration (`protocol`, …).
    #[serde(deserialize_with = "nullable")]
    pub config: serde_json::Map<String, serde_json::Value>,
    /// The default gateway mode.
    #[serde(deserialize_with = "nullable")]
    pub mesh_gateway: MeshGatewayConfig,
    /// Raft index.
    pub modify_index: u64,
}

/// `service-defaults` config entry (`/v1/config/service-defaults[/<name>]`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceDefaults {
    /// The service.
    pub name: String,
    /// `tcp`, `http`, …
    pub protocol: String,
    /// The service's gateway mode.
    #[serde(deserialize_with = "nullable")]
    pub mesh_gateway: MeshGatewayConfig,
    /// Raft index.
    pub modify_index: u64,
}

/// Any config entry, by its `Kind` (`/v1/config/<kind>/<name>` answers).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "Kind")]
pub enum ConfigEntry {
    /// `service-resolver`.
    #[serde(rename = "service-resolver")]
    ServiceResolver(ServiceResolver),
    /// `proxy-defaults`.
    #[serde(rename = "proxy-defaults")]
    ProxyDefaults(ProxyDefaults),
    /// `service-defaults`.
    #[serde(rename = "service-defaults")]
    ServiceDefaults(ServiceDefaults),
    /// A kind meshgate does not read (`service-router`, `service-splitter`, …).
    #[serde(other)]
    Other,
}

/// Parses a Go duration (`"3s"`, `"1m30s"`, `"250ms"`, `"1.5h"`): the form Consul's config entries use.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration (like \"5s\" or \"1m30s\")");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// The Meta key that makes a mesh gateway also carry WAN federation (`-expose-servers`).
pub const WAN_FEDERATION_META: &str = "consul-wan-federation";

/// The body of `PUT /v1/agent/service/register` for a mesh gateway, as `consul connect envoy
/// -gateway=mesh -register` builds it (§5): kind `mesh-gateway`, ID = name, `-address` as Address/Port
/// and the `lan` tagged address, `-wan-address` as the `wan` one (443 when a port is missing — the
/// caller passes ports explicitly), a TCP check on the LAN address every 10 s deregistering after 6 h
/// critical, the WAN-federation meta with `-expose-servers`, and the bind options in `Proxy.Config`.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshGatewayRegistration {
    name: String,
    lan: Option<(String, u16)>,
    wan: Option<(String, u16)>,
    expose_servers: bool,
    bind_tagged_addresses: Option<bool>,
    bind_addresses: BTreeMap<String, (String, u16)>,
    meta: BTreeMap<String, String>,
    check_interval: String,
    deregister_critical_after: String,
}

/// Port Consul's command uses when `-address` gives none.
pub const DEFAULT_GATEWAY_PORT: u16 = 443;

impl MeshGatewayRegistration {
    /// The gateway service `name` (`-service`; Consul's default is `mesh-gateway`).
    pub fn new(name: impl Into<String>) -> MeshGatewayRegistration {
        MeshGatewayRegistration {
            name: name.into(),
            lan: None,
            wan: None,
            expose_servers: false,
            bind_tagged_addresses: None,
            bind_addresses: BTreeMap::new(),
            meta: BTreeMap::new(),
            check_interval: "10s".into(),
            deregister_critical_after: "6h".into(),
        }
    }

    /// `-address host:port`: the LAN address the gateway listens on.
    pub fn address(mut self, host: impl Into<String>, port: u16) -> Self {
        self.lan = Some((host.into(), port));
        self
    }

    /// `-wan-address host:port`: what other datacenters dial.
    pub fn wan_address(mut self, host: impl Into<String>, port: u16) -> Self {
        self.wan = Some((host.into(), port));
        self
    }

    /// `-expose-servers`: Meta `consul-wan-federation = "1"`.
    pub fn expose_servers(mut self, on: bool) -> Self {
        self.expose_servers = on;
        self
    }

    /// Whether the proxy binds each tagged address instead of the service address. Consul's command
    /// turns it on when both the LAN and the WAN addresses are local interface addresses; by default
    /// this builder turns it on when both are given.
    pub fn bind_tagged_addresses(mut self, on: bool) -> Self {
        self.bind_tagged_addresses = Some(on);
        self
    }

    /// `-bind-address name=host:port` (repeatable): explicit binds, instead of the tagged addresses.
    pub fn bind_address(
        mut self,
        name: impl Into<String>,
        host: impl Into<String>,
        port: u16,
    ) -> Self {
        self.bind_addresses.insert(name.into(), (host.into(), port));
        self
    }

    /// Adds service metadata. Consul refuses `consul-*` keys on a mesh gateway except the federation
    /// key, so those are refused here, before the agent says so.
    pub fn meta(
        mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self, String> {
        let key = key.into();
        if key.starts_with("consul-") && key != WAN_FEDERATION_META {
            return Err(format!(
                "meta key {key:?}: the prefix 'consul-' is reserved by Consul"
            ));
        }
        self.meta.insert(key, value.into());
        Ok(self)
    }

    /// `-deregister-after-critical` (a Go duration; default `6h`).
    pub fn deregister_critical_after(mut self, after: impl Into<String>) -> Self {
        self.deregister_critical_after = after.into();
        self
    }

    /// The service ID (= name, as Consul's command registers it).
    pub fn id(&self) -> &str {
        &self.name
    }

    /// The JSON body, field for field as Consul's command sends it.
    pub fn body(&self) -> impl Serialize + '_ {
        let tagged = |a: &(String, u16)| ServiceAddress {
            address: a.0.clone(),
            port: a.1,
        };
        // Consul sets the tagged addresses only when -address was given.
        let mut tagged_addresses = BTreeMap::new();
        if let Some(lan) = &self.lan {
            tagged_addresses.insert("lan", tagged(lan));
            if let Some(wan) = &self.wan {
                tagged_addresses.insert("wan", tagged(wan));
            }
        }
        let mut meta = self.meta.clone();
        if self.expose_servers {
            meta.insert(WAN_FEDERATION_META.into(), "1".into());
        }
        let mut config = serde_json::Map::new();
        if !self.bind_addresses.is_empty() {
            let binds: serde_json::Map<String, serde_json::Value> = self
                .bind_addresses
                .iter()
                .map(|(name, a)| {
                    (
                        name.clone(),
                        serde_json::json!({"Address": a.0, "Port": a.1}),
                    )
                })
                .collect();
            config.insert("envoy_gateway_no_default_bind".into(), true.into());
            config.insert("envoy_gateway_bind_addresses".into(), binds.into());
        } else if self
            .bind_tagged_addresses
            .unwrap_or(self.lan.is_some() && self.wan.is_some())
        {
            config.insert("envoy_gateway_no_default_bind".into(), true.into());
            config.insert("envoy_gateway_bind_tagged_addresses".into(), true.into());
        }
        let (check_host, port) = match &self.lan {
            Some((host, port)) => (host.as_str(), *port),
            None => ("127.0.0.1", DEFAULT_GATEWAY_PORT),
        };
        RegistrationBody {
            kind: "mesh-gateway",
            id: &self.name,
            name: &self.name,
            port,
            address: self.lan.as_ref().map(|(h, _)| h.as_str()),
            tagged_addresses,
            meta,
            check: RegistrationCheck {
                name: "mesh-gateway listening",
                interval: &self.check_interval,
                tcp: join_host_port(check_host, port),
                deregister_critical_service_after: &self.deregister_critical_after,
            },
            checks: None,
            proxy: (!config.is_empty()).then_some(RegistrationProxy {
                config,
                mesh_gateway: serde_json::Map::new(),
                expose: serde_json::Map::new(),
            }),
        }
    }
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RegistrationBody<'a> {
    kind: &'static str,
    #[serde(rename = "ID")]
    id: &'a str,
    name: &'a str,
    port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<&'a str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    tagged_addresses: BTreeMap<&'static str, ServiceAddress>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    meta: BTreeMap<String, String>,
    check: RegistrationCheck<'a>,
    /// Consul's command sends `"Checks": null`.
    checks: Option<Vec<()>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    proxy: Option<RegistrationProxy>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RegistrationCheck<'a> {
    name: &'static str,
    interval: &'a str,
    #[serde(rename = "TCP")]
    tcp: String,
    deregister_critical_service_after: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RegistrationProxy {
    config: serde_json::Map<String, serde_json::Value>,
    mesh_gateway: serde_json::Map<String, serde_json::Value>,
    expose: serde_json::Map<String, serde_json::Value>,
}

#[cfg(test)]
mod tests;
