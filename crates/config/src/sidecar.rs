//! `meshgate sidecar`'s configuration: which service it fronts, its certificate files, and the same
//! `[catalog]` / `[router]` plugin sections a gateway has. Listeners are not configured here: the public
//! port and the upstreams' `local_bind_port`s come from the service's registration in the catalog, as
//! with Consul.

use crate::error::{find_key, locate};
use crate::load::{base_dir, from_toml, read_file, validate_plugin_sections};
use crate::{
    ConfigError, LoadError, PluginSection, DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_DRAIN_TIMEOUT_SECS,
    DEFAULT_IDLE_TIMEOUT_SECS, DEFAULT_IO_MEMORY_KIB, DEFAULT_ROUTER_PLUGIN,
};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default admin address of a sidecar (a gateway's is 19000).
pub const DEFAULT_SIDECAR_ADMIN: &str = "127.0.0.1:19100";
/// Default limit on a TLS handshake, in milliseconds.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Default number of data-plane cores: a sidecar is one service's proxy.
pub const DEFAULT_SIDECAR_WORKERS: usize = 1;
/// Default cap on a sidecar's concurrent connections: one service's traffic, not a gateway's.
pub const DEFAULT_SIDECAR_MAX_CONNECTIONS: usize = 10_000;

/// What happens to a caller no intention matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefaultIntention {
    /// Consul's behaviour without ACLs (`acl.default_policy = "allow"`).
    Allow,
    /// Zero trust: only callers with an allow intention get through.
    Deny,
}

/// A whole sidecar configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SidecarConfig {
    /// `[sidecar]`.
    pub sidecar: SidecarSettings,
    /// `[tls]`: the service's certificate, key and the mesh roots. Absent with `[consul]`: the leaf and
    /// roots come from the agent.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// The local Consul agent (the same keys as a gateway's `[consul]`; `register` does not apply).
    #[serde(default)]
    pub consul: Option<crate::ConsulSection>,
    /// The catalog plugin.
    pub catalog: PluginSection,
    /// The router plugin (`consul-router` when absent).
    #[serde(default)]
    pub router: Option<PluginSection>,
    /// Directory of the config file: relative paths start here.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// `[sidecar]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SidecarSettings {
    /// The service this sidecar fronts (its `connect-proxy` registration names it).
    pub service: String,
    /// The local datacenter.
    pub datacenter: String,
    /// The sidecar's registration id, when several sidecars front the service.
    #[serde(default)]
    pub proxy_id: Option<String>,
    /// Listen on this host instead of the registered address (e.g. `0.0.0.0`); the port stays.
    #[serde(default)]
    pub public_listen_host: Option<String>,
    /// Admin HTTP address (`/metrics`, `/ready`, `/routes`).
    #[serde(default = "default_admin")]
    pub admin: SocketAddr,
    /// Decision for callers no intention matches. Deny unless the operator says otherwise: a sidecar
    /// that admits every mesh identity by default fails open when intentions are missing or unread.
    #[serde(default = "default_intention")]
    pub default_intention: DefaultIntention,
    /// Data-plane cores.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Connecting to a next hop or the application, in milliseconds.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// A TLS handshake, either side, in milliseconds.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// A connection with no byte moving either way for this long is closed, in seconds.
    #[serde(default = "default_idle_timeout_secs")]
    pub idle_timeout_secs: u64,
    /// On SIGTERM, how long live connections get before the process exits, in seconds.
    #[serde(default = "default_drain_timeout_secs")]
    pub drain_timeout_secs: u64,
    /// Concurrent connections, inbound and outbound together (split evenly per core); excess
    /// connections wait in the kernel's accept backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// glommio's registered-buffer memory per core, in KiB.
    #[serde(default = "default_io_memory_kib")]
    pub io_memory_kib: usize,
}

/// `[tls]`: PEM files, relative to the config file's directory.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The service's leaf, followed by any intermediates.
    pub cert_file: PathBuf,
    /// Its private key.
    pub key_file: PathBuf,
    /// The mesh's trust anchors (one or more roots).
    pub roots_file: PathBuf,
}

fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 19100))
}
fn default_intention() -> DefaultIntention {
    DefaultIntention::Deny
}
fn default_workers() -> usize {
    DEFAULT_SIDECAR_WORKERS
}
fn default_connect_timeout_ms() -> u64 {
    DEFAULT_CONNECT_TIMEOUT_MS
}
fn default_handshake_timeout_ms() -> u64 {
    DEFAULT_HANDSHAKE_TIMEOUT_MS
}
fn default_idle_timeout_secs() -> u64 {
    DEFAULT_IDLE_TIMEOUT_SECS
}
fn default_drain_timeout_secs() -> u64 {
    DEFAULT_DRAIN_TIMEOUT_SECS
}
fn default_max_connections() -> usize {
    DEFAULT_SIDECAR_MAX_CONNECTIONS
}
fn default_io_memory_kib() -> usize {
    DEFAULT_IO_MEMORY_KIB
}

impl SidecarSettings {
    /// Connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    /// Handshake timeout.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
    /// Idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
    /// Drain timeout.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }
}

impl SidecarConfig {
    /// Reads and validates a sidecar configuration file.
    pub fn load(path: &Path) -> Result<SidecarConfig, LoadError> {
        Ok(Self::parse(&read_file(path)?, path)?)
    }

    /// The router section in force.
    pub fn router_section(&self) -> PluginSection {
        self.router
            .clone()
            .unwrap_or_else(|| PluginSection::shipped(DEFAULT_ROUTER_PLUGIN))
    }

    /// A `[tls]` path resolved against the config's directory.
    pub fn path(&self, p: &Path) -> PathBuf {
        self.base_dir.join(p)
    }

    /// Parses and validates configuration text; `file` is used in errors only.
    pub fn parse(text: &str, file: &Path) -> Result<SidecarConfig, ConfigError> {
        let mut config: SidecarConfig = from_toml(text, file)?;
        config.base_dir = base_dir(file);
        let s = &config.sidecar;
        let at = |field: &str, message: String| {
            let span = find_key(text, "sidecar", field);
            locate(text, file, span, Some(&format!("sidecar.{field}")), message)
        };
        if s.service.is_empty() {
            return Err(at("service", "must name a service".into()));
        }
        if s.datacenter.is_empty() {
            return Err(at("datacenter", "must name a datacenter".into()));
        }
        if s.workers == 0 {
            return Err(at("workers", "must be at least 1".into()));
        }
        if s.max_connections == 0 {
            return Err(at("max_connections", "must be at least 1".into()));
        }
        for (field, value) in [
            ("connect_timeout_ms", s.connect_timeout_ms),
            ("handshake_timeout_ms", s.handshake_timeout_ms),
            ("idle_timeout_secs", s.idle_timeout_secs),
        ] {
            if value == 0 {
                return Err(at(field, "must be greater than 0".into()));
            }
        }
        if s.io_memory_kib < DEFAULT_IO_MEMORY_KIB {
            return Err(at(
                "io_memory_kib",
                format!("glommio needs at least {DEFAULT_IO_MEMORY_KIB} KiB"),
            ));
        }
        if config.tls.is_none() && config.consul.is_none() {
            return Err(at(
                "service",
                "a sidecar needs [tls] files, or [consul] to take its certificates from the agent"
                    .into(),
            ));
        }
        if let Some(consul) = &config.consul {
            if consul.register.is_some() {
                let span = find_key(text, "consul.register", "service");
                return Err(locate(
                    text,
                    file,
                    span,
                    Some("consul.register"),
                    "a sidecar is registered with its service (Consul's sidecar_service); [consul.register] is for gateways".into(),
                ));
            }
            consul.validate(text, file)?;
        }
        validate_plugin_sections(
            text,
            file,
            &[
                ("catalog", &Some(config.catalog.clone())),
                ("router", &config.router),
            ],
        )?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[sidecar]
service = "web"
datacenter = "dc1"
default_intention = "deny"

[tls]
cert_file = "certs/web/cert.pem"
key_file = "certs/web/key.pem"
roots_file = "certs/web/roots.pem"

[catalog]
plugin = "file-catalog"
config = { dir = "catalog/dc1" }
allow_dirs = ["catalog/dc1"]
"#;

    #[test]
    fn parses_with_defaults() {
        let c = SidecarConfig::parse(GOOD, Path::new("/etc/meshgate/web.toml")).expect("valid");
        assert_eq!(c.sidecar.service, "web");
        assert_eq!(c.sidecar.default_intention, DefaultIntention::Deny);
        // Left out, it is deny too (the safe default).
        let unset = GOOD.replace("default_intention = \"deny\"\n", "");
        assert_ne!(unset, GOOD);
        let u = SidecarConfig::parse(&unset, Path::new("web.toml")).expect("valid");
        assert_eq!(u.sidecar.default_intention, DefaultIntention::Deny);
        assert_eq!(c.sidecar.workers, DEFAULT_SIDECAR_WORKERS);
        assert_eq!(c.sidecar.admin.to_string(), DEFAULT_SIDECAR_ADMIN);
        assert_eq!(c.router_section().plugin, DEFAULT_ROUTER_PLUGIN);
        assert_eq!(
            c.path(&c.tls.as_ref().expect("tls").key_file),
            Path::new("/etc/meshgate/certs/web/key.pem")
        );
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let bad = GOOD.replace(
            "default_intention = \"deny\"",
            "default_intention = \"maybe\"",
        );
        let e = SidecarConfig::parse(&bad, Path::new("web.toml")).expect_err("bad");
        assert_eq!(
            (e.line, e.field.as_str()),
            (5, "sidecar.default_intention"),
            "{e}"
        );
        let bad = GOOD.replace("service = \"web\"", "service = \"web\"\nworkers = 0");
        let e = SidecarConfig::parse(&bad, Path::new("web.toml")).expect_err("bad");
        assert_eq!((e.line, e.field.as_str()), (4, "sidecar.workers"), "{e}");
        let bad = GOOD.replace("[tls]", "[tls]\nprivate = 1");
        let e = SidecarConfig::parse(&bad, Path::new("web.toml")).expect_err("bad");
        assert!(e.to_string().contains("web.toml:8:"), "{e}");
        assert!(e.message.contains("unknown field"), "{e}");
    }

    #[test]
    fn certificates_come_from_files_or_from_the_agent() {
        let start = GOOD.find("[tls]").expect("tls");
        let end = GOOD[start..]
            .find("\n\n")
            .map_or(GOOD.len(), |e| start + e + 1);
        let no_tls = format!("{}{}", &GOOD[..start], &GOOD[end..]);
        let e = SidecarConfig::parse(&no_tls, Path::new("web.toml")).expect_err("no certs");
        assert!(e.message.contains("[consul]"), "{e}");
        let agent = format!("{no_tls}\n[consul]\naddress = \"127.0.0.1:8500\"\n");
        let c = SidecarConfig::parse(&agent, Path::new("web.toml")).expect("agent certs");
        assert!(c.tls.is_none());
        let reg = format!("{agent}[consul.register]\nservice = \"web\"\n");
        let e = SidecarConfig::parse(&reg, Path::new("web.toml")).expect_err("register");
        assert_eq!(e.field, "consul.register", "{e}");
    }
}
