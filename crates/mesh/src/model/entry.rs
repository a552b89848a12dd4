//! Config entries meshgate reads: `proxy-defaults`, `service-defaults`, `service-resolver` subsets,
//! failover and redirect, and `service-intentions` sources.

use super::GatewayMode;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// A config entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigEntry {
    /// `proxy-defaults` or `service-defaults`.
    pub kind: EntryKind,
    /// `global` for proxy-defaults; the service name for service-defaults.
    pub name: String,
    /// `MeshGateway.Mode`.
    pub mesh_gateway: Option<GatewayMode>,
    /// `Subsets` of a service-resolver, by name.
    pub subsets: Vec<Subset>,
    /// `DefaultSubset` of a service-resolver: the subset the plain service name routes to.
    pub default_subset: Option<String>,
    /// `Sources` of a service-intentions entry, as written.
    pub sources: Vec<IntentionSource>,
    /// `Failover` of a service-resolver, one per key (a subset name or `*`), sorted by key.
    pub failover: Vec<Failover>,
    /// `Redirect` of a service-resolver: the upstream resolves to this instead.
    pub redirect: Option<Redirect>,
    /// Every other field, kept as written.
    pub other: BTreeMap<String, Value>,
}

/// Config entry kinds meshgate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryKind {
    /// `proxy-defaults` (Name = "global").
    ProxyDefaults,
    /// `service-defaults`.
    ServiceDefaults,
    /// `service-resolver` (its `Subsets`, `DefaultSubset`, `Failover` and `Redirect` are read; other
    /// fields kept).
    ServiceResolver,
    /// `service-intentions` (its `Sources`: who may call the service named by `Name`).
    ServiceIntentions,
}

impl EntryKind {
    /// Every kind.
    pub const ALL: [EntryKind; 4] = [
        EntryKind::ProxyDefaults,
        EntryKind::ServiceDefaults,
        EntryKind::ServiceResolver,
        EntryKind::ServiceIntentions,
    ];

    /// The `Kind` value as Consul writes it.
    pub fn label(self) -> &'static str {
        match self {
            EntryKind::ProxyDefaults => "proxy-defaults",
            EntryKind::ServiceDefaults => "service-defaults",
            EntryKind::ServiceResolver => "service-resolver",
            EntryKind::ServiceIntentions => "service-intentions",
        }
    }
}

/// What an intention does with a matching caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IntentionAction {
    /// Let the connection through.
    Allow,
    /// Close it.
    Deny,
}

/// One source of a `service-intentions` entry: a calling service (`*`: any) in a namespace (`*`: any).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IntentionSource {
    /// Source service name, or `*`.
    pub name: String,
    /// Source namespace (`default` when not written), or `*`.
    pub namespace: String,
    /// Allow or deny.
    pub action: IntentionAction,
}

/// A named subset of a service's instances (`service-resolver` `Subsets`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subset {
    /// Subset name (the first label of its SNI).
    pub name: String,
    /// The filter as written.
    pub filter: String,
    /// The filter, parsed.
    #[serde(skip)]
    pub parsed: crate::filter::Filter,
}

/// One `Failover` of a service-resolver: where connections for `key` (a subset, or `*` for any) go when
/// the primary target has no healthy instance. Empty fields keep the primary's value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Failover {
    /// The subset this applies to, or `*`.
    pub key: String,
    /// Another service.
    pub service: Option<String>,
    /// A subset of that service.
    pub service_subset: Option<String>,
    /// Another namespace.
    pub namespace: Option<String>,
    /// Datacenters to try, in order (empty: the primary's datacenter).
    pub datacenters: Vec<String>,
}

/// The `Redirect` of a service-resolver: the service is resolved as this one instead. Empty fields keep
/// the original's value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Redirect {
    /// Another service.
    pub service: Option<String>,
    /// A subset of it.
    pub service_subset: Option<String>,
    /// Another namespace.
    pub namespace: Option<String>,
    /// Another datacenter.
    pub datacenter: Option<String>,
}
