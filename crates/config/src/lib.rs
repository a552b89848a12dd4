//! meshgate's configuration file: the TOML schema, every default (a named constant with its unit), and
//! validation that fails at boot — or at reload, leaving the running table alone — with an error naming the
//! file, line, column and field.
//!
//! The data plane never sees this crate's types beyond [`GatewaySettings`]; routes are compiled into a
//! [`meshgate_route::RouteTable`] by [`Config::route_table`].
#![forbid(unsafe_code)]

use meshgate_route::{BuildError, LbPolicy, RouteSpec, RouteTable, RouteTableBuilder};
use serde::Deserialize;

pub mod sidecar;
pub use sidecar::SidecarConfig;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;
use toml::Spanned;

/// Default gateway name, as Consul registers mesh gateways.
pub const DEFAULT_NAME: &str = "mesh-gateway";
/// Default datacenter name.
pub const DEFAULT_DATACENTER: &str = "dc1";
/// Default admin (metrics, readiness) address: loopback only, Consul's/Envoy's admin port.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:19000";
/// Default total time a client has to deliver its whole ClientHello, in milliseconds.
pub const DEFAULT_HELLO_TIMEOUT_MS: u64 = 10_000;
/// Default upstream connect timeout per attempt, in milliseconds (Consul's `connect_timeout_ms`).
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Default idle timeout of a relayed connection, in seconds (Envoy's tcp_proxy default: 1 h).
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 3_600;
/// Default time live connections get to finish after SIGTERM, in seconds.
pub const DEFAULT_DRAIN_TIMEOUT_SECS: u64 = 30;
/// Default maximum of concurrent downstream connections for the whole gateway (split evenly per core).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 100_000;
/// Default memory glommio registers for io_uring buffers per executor, in KiB. TCP does not use those
/// buffers, and glommio locks this memory, so it is kept at the minimum glommio accepts (512 KiB).
pub const DEFAULT_IO_MEMORY_KIB: usize = 512;
/// Default listen backlog: connections over the limit wait here, in the kernel.
pub const DEFAULT_BACKLOG: u32 = 1024;
/// Default per-call deadline of a plugin, in milliseconds.
pub const DEFAULT_PLUGIN_DEADLINE_MS: u64 = 1_000;
/// Default linear-memory cap of a plugin, in MiB.
pub const DEFAULT_PLUGIN_MEMORY_MIB: u64 = 64;
/// Default interval between catalog polls, in milliseconds (a file catalog notices edits this fast).
pub const DEFAULT_CATALOG_POLL_MS: u64 = 250;
/// A connection hook's per-call deadline is at most this, in milliseconds, whatever `deadline_ms` says:
/// it runs on a data-plane core, in the connection's path.
pub const HOOK_MAX_DEADLINE_MS: u64 = 20;
/// The router used when `[catalog]` is set and `[router]` is not.
pub const DEFAULT_ROUTER_PLUGIN: &str = "consul-router";

/// How bytes are moved once a connection is routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayMode {
    /// Zero-copy: socket → pipe → socket with splice(2). Falls back to buffered per connection if the
    /// kernel refuses.
    #[default]
    Splice,
    /// Read into a user-space buffer and write it out.
    Buffered,
}

/// A whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Process-wide settings.
    #[serde(default)]
    pub gateway: GatewaySettings,
    /// Static routes.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Where names that match no route go; rejected when absent.
    #[serde(default)]
    pub default: Option<FallbackConfig>,
    /// Where connections without SNI go; rejected when absent.
    #[serde(default)]
    pub no_sni: Option<FallbackConfig>,
    /// The catalog plugin (services, gateways, config entries).
    #[serde(default)]
    pub catalog: Option<PluginSection>,
    /// The router plugin (catalog → routes); `consul-router` when a catalog is set and this is not.
    #[serde(default)]
    pub router: Option<PluginSection>,
    /// An optional per-connection hook plugin, consulted before the table (restart to change it).
    #[serde(default)]
    pub hook: Option<PluginSection>,
    /// Directory of the config file: relative paths in it (plugins, granted directories) start here.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// `[catalog]` / `[router]`: a Wasm plugin, its settings and what it may reach.
///
/// Routes from the router plugin are added after the static `[[routes]]`; a pattern defined statically
/// wins over the same pattern from the plugin (so an operator can always pin a route by hand).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSection {
    /// A shipped plugin's name (`file-catalog`, `consul-router`, `export-control`) or a path to a
    /// `.wasm` component.
    pub plugin: String,
    /// Settings handed to the plugin as strings.
    #[serde(default)]
    pub config: std::collections::BTreeMap<String, toml::Value>,
    /// Directories the plugin may read.
    #[serde(default)]
    pub allow_dirs: Vec<PathBuf>,
    /// HTTP origins (`http://host:port`) the plugin may GET.
    #[serde(default)]
    pub allow_origins: Vec<String>,
    /// Environment variables the plugin may read.
    #[serde(default)]
    pub allow_env: Vec<String>,
    /// Per-call deadline, in milliseconds.
    #[serde(default = "default_plugin_deadline_ms")]
    pub deadline_ms: u64,
    /// Linear-memory cap, in MiB.
    #[serde(default = "default_plugin_memory_mib")]
    pub memory_mib: u64,
    /// Catalog plugins: interval between polls, in milliseconds.
    #[serde(default = "default_catalog_poll_ms")]
    pub poll_ms: u64,
}

fn default_plugin_deadline_ms() -> u64 {
    DEFAULT_PLUGIN_DEADLINE_MS
}
fn default_plugin_memory_mib() -> u64 {
    DEFAULT_PLUGIN_MEMORY_MIB
}
fn default_catalog_poll_ms() -> u64 {
    DEFAULT_CATALOG_POLL_MS
}

impl PluginSection {
    /// A section for a shipped plugin with default limits and no grants.
    pub fn shipped(name: &str) -> Self {
        Self {
            plugin: name.to_owned(),
            config: Default::default(),
            allow_dirs: Vec::new(),
            allow_origins: Vec::new(),
            allow_env: Vec::new(),
            deadline_ms: DEFAULT_PLUGIN_DEADLINE_MS,
            memory_mib: DEFAULT_PLUGIN_MEMORY_MIB,
            poll_ms: DEFAULT_CATALOG_POLL_MS,
        }
    }

    /// The settings as the plugin sees them: key/value strings, sorted by key.
    pub fn settings(&self) -> Vec<(String, String)> {
        self.config
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect()
    }
}

/// `[gateway]`: settings that apply to the whole process. Changing `listen`, `admin`, `workers` or
/// `io_memory_kib` needs a restart; everything else applies on reload to new connections.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySettings {
    /// Name of this gateway (logs, metrics).
    pub name: String,
    /// Datacenter this gateway serves.
    pub datacenter: String,
    /// Addresses to accept mesh connections on; every core listens on each (SO_REUSEPORT).
    pub listen: Vec<SocketAddr>,
    /// Admin HTTP address (`/metrics`, `/ready`, `/routes`). Keep it on loopback or a private network.
    pub admin: Option<SocketAddr>,
    /// Number of data-plane cores; default: every CPU this process may run on.
    pub workers: Option<usize>,
    /// Total time to receive a whole ClientHello, in milliseconds.
    pub hello_timeout_ms: u64,
    /// Upstream connect timeout per attempt, in milliseconds (a route may override it).
    pub connect_timeout_ms: u64,
    /// Close a relayed connection after this many seconds without a byte in either direction.
    pub idle_timeout_secs: u64,
    /// Close a relayed connection after this many seconds, busy or not (0: no limit).
    pub max_connection_duration_secs: u64,
    /// Time live connections get to finish after SIGTERM/SIGINT, in seconds.
    pub drain_timeout_secs: u64,
    /// Largest ClientHello accepted, in bytes (at most 65536).
    pub max_client_hello_bytes: usize,
    /// Concurrent downstream connections for the whole gateway, divided evenly among cores; excess
    /// connections wait in the kernel's accept backlog.
    pub max_connections: u32,
    /// Concurrent downstream connections per listen address (divided among cores; 0: only the global cap).
    pub max_connections_per_listener: u32,
    /// Listen backlog.
    pub backlog: u32,
    /// How bytes are moved.
    pub relay: RelayMode,
    /// Memory glommio registers per executor for io_uring buffers, in KiB (minimum 512).
    pub io_memory_kib: usize,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            name: DEFAULT_NAME.to_owned(),
            datacenter: DEFAULT_DATACENTER.to_owned(),
            listen: Vec::new(),
            admin: DEFAULT_ADMIN.parse().ok(),
            workers: None,
            hello_timeout_ms: DEFAULT_HELLO_TIMEOUT_MS,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            idle_timeout_secs: DEFAULT_IDLE_TIMEOUT_SECS,
            max_connection_duration_secs: 0,
            drain_timeout_secs: DEFAULT_DRAIN_TIMEOUT_SECS,
            max_client_hello_bytes: meshgate_sni::DEFAULT_MAX_HELLO_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_listener: 0,
            backlog: DEFAULT_BACKLOG,
            relay: RelayMode::Splice,
            io_memory_kib: DEFAULT_IO_MEMORY_KIB,
        }
    }
}

impl GatewaySettings {
    /// ClientHello deadline.
    pub fn hello_timeout(&self) -> Duration {
        Duration::from_millis(self.hello_timeout_ms)
    }
    /// Default connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    /// Idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
    /// Maximum connection duration, if any.
    pub fn max_connection_duration(&self) -> Option<Duration> {
        (self.max_connection_duration_secs > 0)
            .then(|| Duration::from_secs(self.max_connection_duration_secs))
    }
    /// Drain timeout.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }
}

/// `[[routes]]`: one SNI pattern and where it goes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// `name` or `*.suffix` (any number of labels before the suffix).
    pub sni: Spanned<String>,
    /// The first-priority endpoints.
    pub endpoints: Spanned<Vec<SocketAddr>>,
    /// Further groups, tried in order when every attempt on the previous group failed.
    #[serde(default)]
    pub failover: Vec<Vec<SocketAddr>>,
    /// `round_robin` (default) or `least_connections`.
    #[serde(default)]
    pub lb: LbConfig,
    /// Connect timeout for this route, in milliseconds.
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
}

/// `[default]` / `[no_sni]`: a fallback destination.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackConfig {
    /// Endpoints in priority order of groups (first group).
    pub endpoints: Spanned<Vec<SocketAddr>>,
    /// Further groups.
    #[serde(default)]
    pub failover: Vec<Vec<SocketAddr>>,
    /// Load-balancing policy.
    #[serde(default)]
    pub lb: LbConfig,
}

/// Load-balancing policy names in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LbConfig {
    /// Round robin per core.
    #[default]
    RoundRobin,
    /// Power of two choices on least active connections.
    LeastConnections,
}

impl From<LbConfig> for LbPolicy {
    fn from(c: LbConfig) -> Self {
        match c {
            LbConfig::RoundRobin => LbPolicy::RoundRobin,
            LbConfig::LeastConnections => LbPolicy::LeastConnections,
        }
    }
}

/// A configuration problem, located in its file.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{}:{line}:{column}: {field}: {message}", file.display())]
pub struct ConfigError {
    /// The file read.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Dotted path of the field (`gateway.workers`, `routes[2].sni`), or `-` when unknown.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Reading or validating a configuration failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file could not be read.
    #[error("{}: {source}", file.display())]
    Io {
        /// The file.
        file: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file is not a valid configuration.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        Ok(Self::parse(&read_file(path)?, path)?)
    }

    /// The router section in force: `[router]`, or `consul-router` when only `[catalog]` is set.
    pub fn router_section(&self) -> Option<PluginSection> {
        match (&self.catalog, &self.router) {
            (_, Some(r)) => Some(r.clone()),
            (Some(_), None) => Some(PluginSection::shipped(DEFAULT_ROUTER_PLUGIN)),
            (None, None) => None,
        }
    }

    /// Parses and validates configuration text; `file` is used in errors only.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = from_toml(text, file)?;
        config.base_dir = base_dir(file);
        config.validate(text, file)?;
        Ok(config)
    }

    fn validate(&self, text: &str, file: &Path) -> Result<(), ConfigError> {
        let g = &self.gateway;
        let whole = |field: &str, message: String| {
            let span = find_key(text, "gateway", field.rsplit('.').next().unwrap_or(field));
            locate(text, file, span, Some(field), message)
        };
        if g.listen.is_empty() {
            return Err(whole(
                "gateway.listen",
                "at least one listen address is required".into(),
            ));
        }
        if g.workers == Some(0) {
            return Err(whole("gateway.workers", "must be at least 1".into()));
        }
        if g.max_client_hello_bytes < 512
            || g.max_client_hello_bytes > meshgate_sni::MAX_HELLO_BYTES_LIMIT
        {
            return Err(whole(
                "gateway.max_client_hello_bytes",
                format!(
                    "must be between 512 and {} bytes",
                    meshgate_sni::MAX_HELLO_BYTES_LIMIT
                ),
            ));
        }
        for (field, value) in [
            ("gateway.hello_timeout_ms", g.hello_timeout_ms),
            ("gateway.connect_timeout_ms", g.connect_timeout_ms),
            ("gateway.idle_timeout_secs", g.idle_timeout_secs),
            ("gateway.max_connections", u64::from(g.max_connections)),
        ] {
            if value == 0 {
                return Err(whole(field, "must be greater than 0".into()));
            }
        }
        if g.io_memory_kib < DEFAULT_IO_MEMORY_KIB {
            return Err(whole(
                "gateway.io_memory_kib",
                format!("glommio needs at least {DEFAULT_IO_MEMORY_KIB} KiB"),
            ));
        }
        if self.router.is_some() && self.catalog.is_none() {
            let span = find_key(text, "router", "plugin");
            return Err(locate(
                text,
                file,
                span,
                Some("router"),
                "a router plugin needs a [catalog] plugin to route from".into(),
            ));
        }
        validate_plugin_sections(
            text,
            file,
            &[
                ("catalog", &self.catalog),
                ("router", &self.router),
                ("hook", &self.hook),
            ],
        )?;
        self.route_table_located(text, file).map(|_| ())
    }

    /// A builder holding the static routes and fallbacks, for callers that add routes of their own.
    pub fn route_builder(&self) -> Result<RouteTableBuilder, BuildError> {
        self.build_routes(|_, e| e)
    }

    /// Adds every static route and fallback to a new builder; `err` turns a refusal into the caller's
    /// error, told which entry of the file it came from.
    fn build_routes<E>(
        &self,
        err: impl Fn(RouteOrigin<'_>, BuildError) -> E,
    ) -> Result<RouteTableBuilder, E> {
        let mut b = RouteTableBuilder::new();
        for (i, r) in self.routes.iter().enumerate() {
            b.add(route_spec(r))
                .map_err(|e| err(RouteOrigin::Route(i, r), e))?;
        }
        if let Some(fb) = &self.default {
            b.default_route(fallback_spec(fb))
                .map_err(|e| err(RouteOrigin::Fallback("default", fb), e))?;
        }
        if let Some(fb) = &self.no_sni {
            b.no_sni_route(fallback_spec(fb))
                .map_err(|e| err(RouteOrigin::Fallback("no_sni", fb), e))?;
        }
        Ok(b)
    }

    /// Compiles the static routes into a route table.
    pub fn route_table(&self) -> Result<RouteTable, BuildError> {
        self.route_builder().map(RouteTableBuilder::build)
    }

    /// Like [`Config::route_table`], with errors located at the offending route.
    fn route_table_located(&self, text: &str, file: &Path) -> Result<RouteTable, ConfigError> {
        self.build_routes(|origin, e| {
            let (field, span) = match origin {
                RouteOrigin::Route(i, r) => match e {
                    BuildError::NoEndpoints(_) => {
                        (format!("routes[{i}].endpoints"), r.endpoints.span())
                    }
                    _ => (format!("routes[{i}].sni"), r.sni.span()),
                },
                RouteOrigin::Fallback(name, fb) => {
                    (format!("{name}.endpoints"), fb.endpoints.span())
                }
            };
            locate(text, file, span, Some(&field), e.to_string())
        })
        .map(RouteTableBuilder::build)
    }
}

/// Which entry of the file a route came from, for locating errors.
enum RouteOrigin<'a> {
    /// `[[routes]]` number `.0`.
    Route(usize, &'a RouteConfig),
    /// `[default]` or `[no_sni]`.
    Fallback(&'static str, &'a FallbackConfig),
}

fn route_spec(r: &RouteConfig) -> RouteSpec {
    let mut groups = vec![r.endpoints.get_ref().clone()];
    groups.extend(r.failover.iter().cloned());
    RouteSpec {
        pattern: r.sni.get_ref().clone(),
        groups,
        lb: r.lb.into(),
        connect_timeout: r.connect_timeout_ms.map(Duration::from_millis),
        source: "config".to_owned(),
    }
}

fn fallback_spec(f: &FallbackConfig) -> RouteSpec {
    let mut groups = vec![f.endpoints.get_ref().clone()];
    groups.extend(f.failover.iter().cloned());
    RouteSpec {
        pattern: String::new(),
        groups,
        lb: f.lb.into(),
        connect_timeout: None,
        source: "config".to_owned(),
    }
}

/// A config file's text.
fn read_file(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        file: path.to_owned(),
        source,
    })
}

/// Deserializes a config file's text; a TOML or schema error is located in `file`.
fn from_toml<T: serde::de::DeserializeOwned>(text: &str, file: &Path) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        locate(text, file, span, None, e.message().trim_end().to_owned())
    })
}

/// The directory relative paths in `file` start from.
fn base_dir(file: &Path) -> PathBuf {
    file.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_owned)
}

/// Plugin limits must be positive.
fn validate_plugin_sections(
    text: &str,
    file: &Path,
    sections: &[(&str, &Option<PluginSection>)],
) -> Result<(), ConfigError> {
    for (name, section) in sections {
        if let Some(s) = section {
            for (field, value) in [
                ("deadline_ms", s.deadline_ms),
                ("memory_mib", s.memory_mib),
                ("poll_ms", s.poll_ms),
            ] {
                if value == 0 {
                    let span = find_key(text, name, field);
                    return Err(locate(
                        text,
                        file,
                        span,
                        Some(&format!("{name}.{field}")),
                        "must be greater than 0".into(),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Builds an error at a byte span; without a known field, the field is read off the file: the key on
/// that line, under the nearest `[table]` header above it.
fn locate(
    text: &str,
    file: &Path,
    span: Range<usize>,
    field: Option<&str>,
    message: String,
) -> ConfigError {
    let start = span.start.min(text.len());
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    let field = match field {
        Some(f) => f.to_owned(),
        None => field_at(text, line_start),
    };
    ConfigError {
        file: file.to_owned(),
        line,
        column,
        field,
        message,
    }
}

/// `table.key` for the line starting at `line_start`.
fn field_at(text: &str, line_start: usize) -> String {
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"'))
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    match (table, key) {
        (Some(t), Some(k)) => format!("{t}.{k}"),
        (None, Some(k)) => k.to_owned(),
        (Some(t), None) => t,
        (None, None) => "-".to_owned(),
    }
}

/// Span of `key = ...` inside `[table]`, or of the table header, or the start of the file.
fn find_key(text: &str, table: &str, key: &str) -> Range<usize> {
    let mut offset = 0;
    let mut in_table = false;
    let mut header = None;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if t.starts_with('[') {
            in_table = t.trim_matches(|c| c == '[' || c == ']').trim() == table;
            if in_table {
                header = Some(offset..offset + line.len());
            }
        } else if in_table && t.split_once('=').map(|(k, _)| k.trim()) == Some(key) {
            let indent = line.len() - line.trim_start().len();
            return offset + indent..offset + line.len();
        }
        offset += line.len();
    }
    header.unwrap_or(0..0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[gateway]
name = "mesh-gateway"
datacenter = "dc1"
listen = ["127.0.0.1:8443"]
admin = "127.0.0.1:19000"

[[routes]]
sni = "api.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul"
endpoints = ["127.0.0.1:9001", "127.0.0.1:9002"]

[[routes]]
sni = "*.dc2.internal.11111111-2222-3333-4444-555555555555.consul"
endpoints = ["127.0.0.1:9443"]
failover = [["127.0.0.1:9444"]]
lb = "least_connections"
connect_timeout_ms = 250
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("gw.toml"))
    }

    #[test]
    fn gateway_config_has_no_place_for_a_key() {
        // A mesh gateway never terminates TLS: any attempt to hand it a key is refused, by name.
        for extra in [
            "\n[tls]\nkey_file = \"gw.key\"\n",
            "\n[gateway.tls]\ncert_file = \"gw.pem\"\n",
        ] {
            let text = format!("{GOOD}{extra}");
            let e = Config::parse(&text, Path::new("gw.toml")).expect_err("key refused");
            assert!(e.message.contains("unknown field"), "{e}");
        }
        let text = GOOD.replace(
            "name = \"mesh-gateway\"",
            "name = \"mesh-gateway\"\nkey_file = \"k.pem\"",
        );
        let e = Config::parse(&text, Path::new("gw.toml")).expect_err("key refused");
        assert_eq!(e.field, "gateway.key_file", "{e}");
    }

    #[test]
    fn parses_the_documented_example_with_defaults() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(c.gateway.hello_timeout_ms, DEFAULT_HELLO_TIMEOUT_MS);
        assert_eq!(c.gateway.relay, RelayMode::Splice);
        let t = c.route_table().expect("table");
        assert_eq!(t.len(), 2);
        let m = t.lookup("web.default.dc2.internal.11111111-2222-3333-4444-555555555555.consul");
        let (route, _) = m.route().expect("wildcard route");
        assert_eq!(route.groups.len(), 2);
        assert_eq!(route.lb, LbPolicy::LeastConnections);
        assert_eq!(route.connect_timeout, Some(Duration::from_millis(250)));
    }

    #[test]
    fn unknown_field_names_line_and_field() {
        let text = GOOD.replace("admin = ", "admn = ");
        let e = parse(&text).expect_err("unknown field");
        assert_eq!(e.line, 6, "{e}");
        assert_eq!(e.field, "gateway.admn", "{e}");
        assert!(e.message.contains("unknown field"), "{e}");
        assert!(e.to_string().starts_with("gw.toml:6:"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let text = GOOD.replace(
            "datacenter = \"dc1\"",
            "datacenter = \"dc1\"\nworkers = \"two\"",
        );
        let e = parse(&text).expect_err("bad type");
        assert_eq!((e.line, e.field.as_str()), (5, "gateway.workers"), "{e}");
    }

    #[test]
    fn bad_address_is_located() {
        let text = GOOD.replace("127.0.0.1:9443", "127.0.0.1:99999");
        let e = parse(&text).expect_err("bad addr");
        assert_eq!(e.line, 14, "{e}");
        assert_eq!(e.field, "routes.endpoints", "{e}");
    }

    #[test]
    fn bad_sni_and_duplicates_are_located() {
        let text = GOOD.replace("*.dc2.", "a.*.dc2.");
        let e = parse(&text).expect_err("bad sni");
        assert_eq!((e.line, e.field.as_str()), (13, "routes[1].sni"), "{e}");

        let text = format!(
            "{GOOD}\n[[routes]]\nsni = \"API.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul\"\nendpoints = [\"127.0.0.1:1\"]\n"
        );
        let e = parse(&text).expect_err("duplicate");
        assert_eq!(e.field, "routes[2].sni", "{e}");
        assert!(e.message.contains("twice"), "{e}");

        let text = GOOD.replace(
            "endpoints = [\"127.0.0.1:9443\"]\nfailover = [[\"127.0.0.1:9444\"]]",
            "endpoints = []",
        );
        let e = parse(&text).expect_err("no endpoints");
        assert_eq!(e.field, "routes[1].endpoints", "{e}");
    }

    #[test]
    fn gateway_values_are_checked() {
        let e = parse("[gateway]\nworkers = 0\nlisten = [\"127.0.0.1:1\"]\n").expect_err("workers");
        assert_eq!((e.line, e.field.as_str()), (2, "gateway.workers"), "{e}");
        let e = parse("[gateway]\nname = \"x\"\n").expect_err("listen");
        assert_eq!(e.field, "gateway.listen", "{e}");
        let e = parse("[gateway]\nlisten = [\"127.0.0.1:1\"]\nmax_client_hello_bytes = 100000\n")
            .expect_err("hello cap");
        assert_eq!(e.line, 3, "{e}");
        let e = parse("[gateway]\nlisten = [\"127.0.0.1:1\"]\nrelay = \"sendfile\"\n")
            .expect_err("relay");
        assert_eq!((e.line, e.field.as_str()), (3, "gateway.relay"), "{e}");
    }

    #[test]
    fn plugin_sections() {
        let text = format!("{GOOD}\n[catalog]\nplugin = \"file-catalog\"\nconfig = {{ dir = \"dc1\", poll = 3 }}\nallow_dirs = [\"dc1\"]\n");
        let c = Config::parse(&text, Path::new("configs/demo/gw.toml")).expect("valid");
        let cat = c.catalog.as_ref().expect("catalog");
        assert_eq!(
            cat.settings(),
            vec![("dir".into(), "dc1".into()), ("poll".into(), "3".into())]
        );
        assert_eq!(cat.deadline_ms, DEFAULT_PLUGIN_DEADLINE_MS);
        assert_eq!(
            c.router_section().expect("router").plugin,
            DEFAULT_ROUTER_PLUGIN
        );
        assert_eq!(c.base_dir, Path::new("configs/demo"));

        let e = parse(&format!("{GOOD}\n[router]\nplugin = \"consul-router\"\n"))
            .expect_err("router alone");
        assert_eq!(e.field, "router", "{e}");
        let e = parse(&format!(
            "{GOOD}\n[catalog]\nplugin = \"x\"\ndeadline_ms = 0\n"
        ))
        .expect_err("zero");
        assert_eq!(e.field, "catalog.deadline_ms", "{e}");
        let e = parse(&format!(
            "{GOOD}\n[catalog]\nplugin = \"x\"\nallow_dir = []\n"
        ))
        .expect_err("typo");
        assert!(e.message.contains("unknown field"), "{e}");
    }

    #[test]
    fn fallbacks() {
        let text = format!("{GOOD}\n[default]\nendpoints = [\"127.0.0.1:7000\"]\n[no_sni]\nendpoints = [\"127.0.0.1:7001\"]\n");
        let t = parse(&text).expect("valid").route_table().expect("table");
        assert!(t.lookup("x.example").route().is_some());
        assert!(t.no_sni().route().is_some());
    }
}
