//! The TOML schema of a gateway's configuration file: one type per table, what each key means, and the
//! conversions of file values into the data plane's and the router's types. Unknown keys are refused
//! (`deny_unknown_fields`), so a typo or a key meshgate has no place for (a private key) is an error.

use crate::defaults::{
    default_catalog_poll_ms, default_plugin_deadline_ms, default_plugin_memory_mib, DEFAULT_ADMIN,
    DEFAULT_BACKLOG, DEFAULT_CATALOG_POLL_MS, DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_DATACENTER,
    DEFAULT_DRAIN_GRACE_MS, DEFAULT_DRAIN_TIMEOUT_SECS, DEFAULT_HELLO_TIMEOUT_MS,
    DEFAULT_IDLE_TIMEOUT_SECS, DEFAULT_IO_MEMORY_KIB, DEFAULT_MAX_CONNECTIONS, DEFAULT_NAME,
    DEFAULT_PLUGIN_DEADLINE_MS, DEFAULT_PLUGIN_MEMORY_MIB, DEFAULT_PROBE_DOWN_AFTER,
    DEFAULT_PROBE_INTERVAL_MS, DEFAULT_PROBE_RECHECK_MS, DEFAULT_PROBE_TIMEOUT_MS,
    DEFAULT_PROBE_UP_AFTER, DEFAULT_ROUTER_PLUGIN,
};
use meshgate_route::LbPolicy;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

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

/// Which core serves a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// The core the kernel chose (SO_REUSEPORT hashes the connection's addresses) keeps it unless
    /// another core serves fewer connections; then it is handed to the core serving fewest. Long-lived
    /// connections spread evenly over the cores however they hash.
    #[default]
    Connections,
    /// Always the core the kernel chose.
    Kernel,
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
    /// The local Consul agent and the gateway's registration in it.
    #[serde(default)]
    pub consul: Option<crate::consul::ConsulSection>,
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
    /// `[hook]` only: what a connection gets when the hook fails (trap, deadline). Unset means
    /// [`HookFailure::Deny`].
    #[serde(default)]
    pub on_failure: Option<HookFailure>,
}

/// What a connection gets when the connection hook fails to decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookFailure {
    /// Close it (fail closed): the safe default for a policy hook such as a deny-list.
    #[default]
    Deny,
    /// Route it by the table, as if there were no hook (fail open).
    UseTable,
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
            on_failure: None,
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

/// `[gateway]`: settings that apply to the whole process. Changing `listen`, `admin`, `workers`,
/// `balance` or `io_memory_kib` needs a restart; everything else applies on reload to new connections.
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
    /// After SIGTERM/SIGINT, how long readiness is 503 (and the Consul registration in maintenance)
    /// while the listeners still accept, before they close and the drain starts, in milliseconds.
    pub drain_grace_ms: u64,
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
    /// Which core serves a new connection (restart to change).
    pub balance: Balance,
    /// Memory glommio registers per executor for io_uring buffers, in KiB (minimum 512).
    pub io_memory_kib: usize,
    /// `[gateway.probe]`: health probes of the other datacenters' gateways this gateway routes to.
    pub probe: ProbeSettings,
    /// Descriptors the control plane needs beyond the engine's own reserve (a socket per Consul
    /// watch); not a file setting: the control plane sets it before the engine starts.
    #[serde(skip)]
    pub control_fds: u64,
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
            drain_grace_ms: DEFAULT_DRAIN_GRACE_MS,
            max_client_hello_bytes: meshgate_sni::DEFAULT_MAX_HELLO_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_listener: 0,
            backlog: DEFAULT_BACKLOG,
            relay: RelayMode::Splice,
            balance: Balance::Connections,
            io_memory_kib: DEFAULT_IO_MEMORY_KIB,
            probe: ProbeSettings::default(),
            control_fds: 0,
        }
    }
}

/// `[gateway.probe]`: how the gateway probes the endpoints of routes to other datacenters (a TCP connect,
/// closed at once: no byte is sent). An endpoint is marked down after `down_after` consecutive failures
/// and up after `up_after` consecutive successes; connections skip endpoints marked down. Applies on
/// reload.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeSettings {
    /// Probe at all (`false`: every endpoint is tried as if unknown, as before probing existed).
    pub enabled: bool,
    /// Interval between probes of one endpoint whose state is settled, in milliseconds.
    pub interval_ms: u64,
    /// Bound on one probe, in milliseconds.
    pub timeout_ms: u64,
    /// Interval while the last result disagrees with the state (deciding), in milliseconds.
    pub recheck_ms: u64,
    /// Consecutive failures that mark an endpoint down.
    pub down_after: u32,
    /// Consecutive successes that mark a down endpoint up.
    pub up_after: u32,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_ms: DEFAULT_PROBE_INTERVAL_MS,
            timeout_ms: DEFAULT_PROBE_TIMEOUT_MS,
            recheck_ms: DEFAULT_PROBE_RECHECK_MS,
            down_after: DEFAULT_PROBE_DOWN_AFTER,
            up_after: DEFAULT_PROBE_UP_AFTER,
        }
    }
}

impl ProbeSettings {
    /// Interval between probes of a settled endpoint.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
    /// Bound on one probe.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
    /// Interval while deciding.
    pub fn recheck(&self) -> Duration {
        Duration::from_millis(self.recheck_ms)
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
    /// Time between readiness turning 503 and the listeners closing.
    pub fn drain_grace(&self) -> Duration {
        Duration::from_millis(self.drain_grace_ms)
    }
}

/// `[[routes]]`: one SNI pattern and where it goes.
///
/// The first group is given in one of two forms: `endpoints` (with optional `weights`, one per
/// endpoint), or `split`, a weighted split between sets of endpoints (a canary). Either form may be
/// followed by `failover` groups.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// `name` or `*.suffix` (any number of labels before the suffix).
    pub sni: Spanned<String>,
    /// The first-priority endpoints (or `split`).
    #[serde(default)]
    pub endpoints: Option<Spanned<Vec<SocketAddr>>>,
    /// Share of new connections each of `endpoints` gets, in the same order; absent: all equal.
    #[serde(default)]
    pub weights: Option<Spanned<Vec<u32>>>,
    /// The first-priority endpoints as weighted parts (instead of `endpoints`).
    #[serde(default)]
    pub split: Option<Spanned<Vec<SplitPart>>>,
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

/// `[default]` / `[no_sni]`: a fallback destination; its first group takes the same two forms as a
/// route's.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackConfig {
    /// Endpoints of the first group (or `split`).
    #[serde(default)]
    pub endpoints: Option<Spanned<Vec<SocketAddr>>>,
    /// Weights of `endpoints`, in the same order; absent: all equal.
    #[serde(default)]
    pub weights: Option<Spanned<Vec<u32>>>,
    /// The first group as weighted parts (instead of `endpoints`).
    #[serde(default)]
    pub split: Option<Spanned<Vec<SplitPart>>>,
    /// Further groups.
    #[serde(default)]
    pub failover: Vec<Vec<SocketAddr>>,
    /// Load-balancing policy.
    #[serde(default)]
    pub lb: LbConfig,
}

/// One part of a `split`: its share of new connections, shared equally by its endpoints. A part of
/// weight 0 is a standby (tried only on a retry).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitPart {
    /// The part's share, relative to the other parts' (90 and 10 send 90% and 10%).
    pub weight: u32,
    /// The part's endpoints (at least one).
    pub endpoints: Spanned<Vec<SocketAddr>>,
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

impl Config {
    /// The router section in force: `[router]`, or `consul-router` when only `[catalog]` is set.
    pub fn router_section(&self) -> Option<PluginSection> {
        match (&self.catalog, &self.router) {
            (_, Some(r)) => Some(r.clone()),
            (Some(_), None) => Some(PluginSection::shipped(DEFAULT_ROUTER_PLUGIN)),
            (None, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::GOOD;
    use crate::Config;
    use std::path::Path;

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
}
