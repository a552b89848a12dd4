//! The mesh model — service registrations (typical, `connect-proxy`, `mesh-gateway`, and the inline
//! `connect { sidecar_service { .. } }` form) and config entries (`proxy-defaults`, `service-defaults`) —
//! and its decoding from a value tree in any casing Consul accepts.
//!
//! Keys match regardless of case and of `_`/`-` (`DestinationName`, `destination_name` and
//! `destination-name` are one key), and a list holding one object stands for that object (HCL1 blocks
//! and Consul's YAML rendering both produce such lists). Unknown keys are ignored in registrations and kept
//! in config entries.

use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;

/// How a sidecar's upstream connection leaves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GatewayMode {
    /// Straight to the destination's instances.
    None,
    /// Through a mesh gateway in the sidecar's own datacenter.
    Local,
    /// Through a mesh gateway in the destination's datacenter.
    Remote,
}

impl GatewayMode {
    /// Parses Consul's values; `""` and `default` mean "not set here".
    pub fn parse(s: &str) -> Result<Option<GatewayMode>, String> {
        match s.to_ascii_lowercase().as_str() {
            "" | "default" => Ok(None),
            "none" => Ok(Some(GatewayMode::None)),
            "local" => Ok(Some(GatewayMode::Local)),
            "remote" => Ok(Some(GatewayMode::Remote)),
            other => Err(format!(
                "unknown mesh gateway mode `{other}` (expected none, local, remote or default)"
            )),
        }
    }
}

impl fmt::Display for GatewayMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GatewayMode::None => "none",
            GatewayMode::Local => "local",
            GatewayMode::Remote => "remote",
        })
    }
}

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
    /// `Sources` of a service-intentions entry, as written.
    pub sources: Vec<IntentionSource>,
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
    /// `service-resolver` (its `Subsets` are read; other fields kept).
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

/// What one file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Document {
    /// Service registrations, with the datacenter (and node address) given in the file, if any.
    Services {
        /// The registrations.
        services: Vec<Service>,
        /// `datacenter` at the top of the file.
        datacenter: Option<String>,
        /// `node_address` / `address` at the top of a catalog-style file.
        node_address: Option<String>,
    },
    /// A config entry.
    ConfigEntry(ConfigEntry),
}

/// A decoding error, with the path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Dotted path, e.g. `service.proxy.upstreams[0].mesh_gateway.mode`.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// The offending value as written (used to find its line), if scalar.
    pub value: Option<String>,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A key in canonical form: case and `_`/`-` ignored, as Consul's decoder does.
pub(crate) fn norm(k: &str) -> String {
    k.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// A view of an object that finds keys in any casing and tracks its path for errors.
#[derive(Clone, Copy)]
struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: &'a str,
}

type R<T> = Result<T, DecodeError>;

fn fail<T>(path: &str, message: impl Into<String>, value: Option<&Value>) -> R<T> {
    Err(DecodeError {
        path: path.to_owned(),
        message: message.into(),
        value: value.and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }),
    })
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// A list holding one object stands for the object.
fn as_object(v: &Value) -> Option<&Map<String, Value>> {
    match v {
        Value::Object(m) => Some(m),
        Value::Array(a) if a.len() == 1 => a[0].as_object(),
        _ => None,
    }
}

impl<'a> Obj<'a> {
    fn get(&self, key: &str) -> Option<(&'a str, &'a Value)> {
        let want = norm(key);
        self.map
            .iter()
            .find(|(k, _)| norm(k) == want)
            .map(|(k, v)| (k.as_str(), v))
    }

    fn string(&self, key: &str) -> R<Option<String>> {
        match self.get(key) {
            None | Some((_, Value::Null)) => Ok(None),
            Some((_, Value::String(s))) => Ok(Some(s.clone())),
            Some((_, v @ (Value::Number(_) | Value::Bool(_)))) => Ok(Some(v.to_string())),
            Some((k, v)) => fail(&join(self.path, k), "expected a string", Some(v)),
        }
    }

    fn port(&self, key: &str) -> R<Option<u16>> {
        match self.get(key) {
            None | Some((_, Value::Null)) => Ok(None),
            Some((k, v)) => {
                let n = match v {
                    Value::Number(n) => n.as_u64(),
                    Value::String(s) => s.parse().ok(),
                    _ => None,
                };
                match n.and_then(|n| u16::try_from(n).ok()) {
                    Some(p) => Ok(Some(p)),
                    None => fail(
                        &join(self.path, k),
                        "expected a port number (0-65535)",
                        Some(v),
                    ),
                }
            }
        }
    }

    fn boolean(&self, key: &str) -> R<bool> {
        match self.get(key) {
            None | Some((_, Value::Null)) => Ok(false),
            Some((_, Value::Bool(b))) => Ok(*b),
            Some((_, Value::String(s))) if s == "true" || s == "false" => Ok(s == "true"),
            Some((k, v)) => fail(&join(self.path, k), "expected true or false", Some(v)),
        }
    }

    /// A nested object; `f` gets a view with the nested path.
    fn object<T>(&self, key: &str, f: impl FnOnce(Obj<'_>) -> R<T>) -> R<Option<T>> {
        match self.get(key) {
            None | Some((_, Value::Null)) => Ok(None),
            Some((k, v)) => match as_object(v) {
                Some(map) => {
                    let path = join(self.path, k);
                    f(Obj { map, path: &path }).map(Some)
                }
                None => fail(&join(self.path, k), "expected a block (an object)", Some(v)),
            },
        }
    }

    /// A list of objects (a single object counts as a list of one).
    fn objects<T>(&self, key: &str, mut f: impl FnMut(Obj<'_>) -> R<T>) -> R<Vec<T>> {
        let Some((k, v)) = self.get(key) else {
            return Ok(Vec::new());
        };
        let items: Vec<&Value> = match v {
            Value::Array(a) => a.iter().collect(),
            Value::Object(_) => vec![v],
            Value::Null => Vec::new(),
            other => {
                return fail(
                    &join(self.path, k),
                    "expected a list of blocks",
                    Some(other),
                )
            }
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let path = format!("{}[{i}]", join(self.path, k));
            match item.as_object() {
                Some(map) => out.push(f(Obj { map, path: &path })?),
                None => return fail(&path, "expected a block (an object)", Some(item)),
            }
        }
        Ok(out)
    }

    fn strings(&self, key: &str) -> R<Vec<String>> {
        match self.get(key) {
            None | Some((_, Value::Null)) => Ok(Vec::new()),
            Some((k, Value::Array(a))) => a
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => fail(
                        &join(self.path, k),
                        "expected a list of strings",
                        Some(other),
                    ),
                })
                .collect(),
            Some((k, v)) => fail(&join(self.path, k), "expected a list of strings", Some(v)),
        }
    }

    fn string_map(&self, key: &str) -> R<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        if let Some((k, v)) = self.get(key) {
            let Some(map) = as_object(v) else {
                return fail(&join(self.path, k), "expected a map of strings", Some(v));
            };
            for (mk, mv) in map {
                match mv {
                    Value::String(s) => {
                        out.insert(mk.clone(), s.clone());
                    }
                    other => {
                        return fail(
                            &join(&join(self.path, k), mk),
                            "expected a string",
                            Some(other),
                        )
                    }
                }
            }
        }
        Ok(out)
    }

    fn mode(&self, key: &str) -> R<Option<GatewayMode>> {
        self.object(key, |o| match o.get("mode") {
            None => Ok(None),
            Some((k, v @ Value::String(s))) => {
                GatewayMode::parse(s).or_else(|m| fail(&join(o.path, k), m, Some(v)))
            }
            Some((k, v)) => fail(&join(o.path, k), "expected a string", Some(v)),
        })
        .map(Option::flatten)
    }
}

fn decode_upstream(o: Obj<'_>) -> R<Upstream> {
    let Some(name) = o.string("destination_name")? else {
        return fail(o.path, "missing destination_name", None);
    };
    let Some(port) = o.port("local_bind_port")? else {
        return fail(o.path, "missing local_bind_port", None);
    };
    Ok(Upstream {
        destination_type: o
            .string("destination_type")?
            .unwrap_or_else(|| "service".to_owned()),
        destination_name: name,
        destination_namespace: o.string("destination_namespace")?,
        datacenter: o.string("datacenter")?.filter(|d| !d.is_empty()),
        local_bind_address: o.string("local_bind_address")?,
        local_bind_port: port,
        mesh_gateway: o.mode("mesh_gateway")?,
    })
}

fn decode_proxy(o: Obj<'_>) -> R<Proxy> {
    Ok(Proxy {
        destination_service_name: o.string("destination_service_name")?.unwrap_or_default(),
        destination_service_id: o.string("destination_service_id")?,
        local_service_address: o.string("local_service_address")?,
        local_service_port: o.port("local_service_port")?,
        mesh_gateway: o.mode("mesh_gateway")?,
        upstreams: o.objects("upstreams", decode_upstream)?,
    })
}

fn decode_check(o: Obj<'_>) -> R<Check> {
    let status = match o
        .string("status")?
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("passing") => Health::Passing,
        Some("warning") => Health::Warning,
        Some("critical") => Health::Critical,
        Some("maintenance") => Health::Maintenance,
        Some(other) => {
            return fail(
                &join(o.path, "status"),
                format!("unknown check status `{other}` (expected passing, warning or critical)"),
                None,
            )
        }
    };
    let name = o
        .string("id")?
        .or(o.string("check_id")?)
        .or(o.string("name")?)
        .unwrap_or_default();
    Ok(Check { name, status })
}

fn decode_tagged(o: Obj<'_>) -> R<BTreeMap<String, HostPort>> {
    let mut out = BTreeMap::new();
    for (k, v) in o.map {
        let path = join(o.path, k);
        let Some(map) = as_object(v) else {
            return fail(&path, "expected a block with address and port", Some(v));
        };
        let inner = Obj { map, path: &path };
        out.insert(
            k.to_ascii_lowercase(),
            HostPort {
                address: inner.string("address")?.unwrap_or_default(),
                port: inner.port("port")?.unwrap_or(0),
            },
        );
    }
    Ok(out)
}

fn decode_service(o: Obj<'_>) -> R<Service> {
    let Some(name) = o.string("name")? else {
        return fail(o.path, "missing name", None);
    };
    let written = o.string("kind")?.unwrap_or_default();
    let kind = if written.is_empty() {
        ServiceKind::Typical
    } else {
        match ServiceKind::ALL.into_iter().find(|v| v.label() == written) {
            Some(k) => k,
            None => {
                return fail(
                    &join(o.path, "kind"),
                    format!(
                    "unsupported kind `{written}` (expected connect-proxy, mesh-gateway or none)"
                ),
                    None,
                )
            }
        }
    };
    let mut checks = o.objects("check", decode_check)?;
    checks.extend(o.objects("checks", decode_check)?);
    let proxy = o.object("proxy", decode_proxy)?;
    if kind == ServiceKind::ConnectProxy
        && proxy
            .as_ref()
            .is_none_or(|p| p.destination_service_name.is_empty())
    {
        return fail(
            o.path,
            "a connect-proxy needs proxy.destination_service_name",
            None,
        );
    }
    let mut service = Service {
        id: o.string("id")?.unwrap_or_else(|| name.clone()),
        name,
        kind,
        namespace: o
            .string("namespace")?
            .unwrap_or_else(|| crate::names::DEFAULT.to_owned()),
        address: o.string("address")?.unwrap_or_default(),
        port: o.port("port")?.unwrap_or(0),
        tags: o.strings("tags")?,
        meta: o.string_map("meta")?,
        tagged_addresses: o
            .object("tagged_addresses", decode_tagged)?
            .unwrap_or_default(),
        proxy,
        sidecar: None,
        connect_native: false,
        checks,
    };
    let connect = o.object("connect", |c| {
        let native = c.boolean("native")?;
        let sidecar = c.object("sidecar_service", |s| decode_sidecar(s, &service))?;
        Ok((native, sidecar))
    })?;
    if let Some((native, sidecar)) = connect {
        service.connect_native = native;
        service.sidecar = sidecar.map(Box::new);
    }
    Ok(service)
}

/// The inline sidecar: Consul fills in name, id, kind, destination and port defaults from the parent.
fn decode_sidecar(o: Obj<'_>, parent: &Service) -> R<Service> {
    let mut map = o.map.clone();
    if (Obj {
        map: &map,
        path: "",
    })
    .get("name")
    .is_none()
    {
        map.insert(
            "name".into(),
            Value::String(format!("{}-sidecar-proxy", parent.name)),
        );
    }
    let view = Obj {
        map: &map,
        path: o.path,
    };
    let mut proxy = view.object("proxy", decode_proxy)?.unwrap_or_default();
    if proxy.destination_service_name.is_empty() {
        proxy.destination_service_name = parent.name.clone();
    }
    if proxy.destination_service_id.is_none() {
        proxy.destination_service_id = Some(parent.id.clone());
    }
    if proxy.local_service_port.is_none() && parent.port != 0 {
        proxy.local_service_port = Some(parent.port);
    }
    let mut checks = view.objects("check", decode_check)?;
    checks.extend(view.objects("checks", decode_check)?);
    let name = view.string("name")?.unwrap_or_default();
    Ok(Service {
        id: view
            .string("id")?
            .unwrap_or_else(|| format!("{}-sidecar-proxy", parent.id)),
        name,
        kind: ServiceKind::ConnectProxy,
        namespace: parent.namespace.clone(),
        address: view.string("address")?.unwrap_or_default(),
        // Consul assigns a port from its sidecar range when none is given; 21000 is the range's start.
        port: view.port("port")?.unwrap_or(21000),
        // Consul: a sidecar inherits its parent's tags and meta unless it sets its own.
        tags: match view.get("tags") {
            Some(_) => view.strings("tags")?,
            None => parent.tags.clone(),
        },
        meta: match view.get("meta") {
            Some(_) => view.string_map("meta")?,
            None => parent.meta.clone(),
        },
        tagged_addresses: BTreeMap::new(),
        proxy: Some(proxy),
        sidecar: None,
        connect_native: false,
        checks,
    })
}

fn decode_entry(o: Obj<'_>, kind: EntryKind) -> R<ConfigEntry> {
    let Some(name) = o.string("name")? else {
        return fail(o.path, "missing Name", None);
    };
    if kind == EntryKind::ProxyDefaults && name != "global" {
        return fail(
            &join(o.path, "Name"),
            "proxy-defaults must be named \"global\"",
            Some(&Value::String(name)),
        );
    }
    let mut other = BTreeMap::new();
    for (k, v) in o.map {
        if !matches!(
            norm(k).as_str(),
            "kind" | "name" | "meshgateway" | "subsets" | "sources"
        ) {
            other.insert(k.clone(), v.clone());
        }
    }
    let subsets = o
        .object("subsets", |s| {
            let mut out = Vec::new();
            for (name, v) in s.map {
                let path = join(s.path, name);
                let Some(map) = as_object(v) else {
                    return fail(&path, "expected a block with Filter", Some(v));
                };
                let inner = Obj { map, path: &path };
                let filter = inner.string("filter")?.unwrap_or_default();
                let parsed = crate::filter::Filter::parse(&filter).or_else(|m| {
                    fail(
                        &join(&path, "Filter"),
                        m,
                        Some(&Value::String(filter.clone())),
                    )
                })?;
                out.push(Subset {
                    name: name.clone(),
                    filter,
                    parsed,
                });
            }
            Ok(out)
        })?
        .unwrap_or_default();
    let sources = o.objects("sources", decode_intention_source)?;
    if kind != EntryKind::ServiceIntentions && !sources.is_empty() {
        return fail(
            &join(o.path, "Sources"),
            "only service-intentions entries have Sources",
            None,
        );
    }
    Ok(ConfigEntry {
        kind,
        name,
        mesh_gateway: o.mode("mesh_gateway")?,
        subsets,
        sources,
        other,
    })
}

fn decode_intention_source(o: Obj<'_>) -> R<IntentionSource> {
    let Some(name) = o.string("name")? else {
        return fail(o.path, "missing Name (a service name or \"*\")", None);
    };
    if o.get("permissions").is_some() {
        // L7 permissions need HTTP parsing; a sidecar that ignored them would allow too much.
        return fail(
            &join(o.path, "Permissions"),
            "L7 permissions are not supported; use Action (allow or deny) by source identity",
            None,
        );
    }
    let action = match o.get("action") {
        Some((_, Value::String(a))) if a.eq_ignore_ascii_case("allow") => IntentionAction::Allow,
        Some((_, Value::String(a))) if a.eq_ignore_ascii_case("deny") => IntentionAction::Deny,
        Some((k, v)) => return fail(&join(o.path, k), "expected \"allow\" or \"deny\"", Some(v)),
        None => return fail(o.path, "missing Action (\"allow\" or \"deny\")", None),
    };
    Ok(IntentionSource {
        name,
        namespace: o
            .string("namespace")?
            .unwrap_or_else(|| crate::names::DEFAULT.to_owned()),
        action,
    })
}

/// Decodes one file's value tree.
pub fn decode(v: &Value) -> Result<Document, DecodeError> {
    let Some(map) = v.as_object() else {
        return fail("", "expected an object at the top of the file", None);
    };
    let top = Obj { map, path: "" };
    let datacenter = top.string("datacenter")?;
    let node_address = top.string("node_address")?;
    if let Some(kind) = top.string("kind")? {
        if let Some(k) = EntryKind::ALL.into_iter().find(|k| k.label() == kind) {
            return Ok(Document::ConfigEntry(decode_entry(top, k)?));
        }
    }
    let mut services = top.objects("service", decode_service)?;
    services.extend(top.objects("services", decode_service)?);
    if services.is_empty() && top.get("name").is_some() {
        // The agent API's flat form: the file is the service itself.
        services.push(decode_service(top)?);
    }
    if services.is_empty() {
        return fail(
            "",
            "expected a `service` block, a `services` list, or a config entry (Kind = proxy-defaults / service-defaults)",
            None,
        );
    }
    Ok(Document::Services {
        services,
        datacenter,
        node_address,
    })
}
