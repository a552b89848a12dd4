//! `[consul]`: where the local Consul agent is and how to authenticate to it, and `[consul.register]`:
//! the gateway's own registration in it (what `consul connect envoy -gateway=mesh -register` sends).
//! Every agent key is optional; an absent one falls back to the `CONSUL_*` variable Consul's own tools
//! read (resolved by the control plane, not here: this crate does no IO beyond reading the file).

use crate::error::{find_key, locate};
use crate::ConfigError;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// `[consul]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsulSection {
    /// `host:port`, `http://host:port` or `https://host:port` (`CONSUL_HTTP_ADDR`, else 127.0.0.1:8500).
    pub address: Option<String>,
    /// The ACL token (`CONSUL_HTTP_TOKEN`). Prefer `token_file`: a config file is often world-readable.
    pub token: Option<String>,
    /// A file holding the token, re-read when it changes (`CONSUL_HTTP_TOKEN_FILE`).
    pub token_file: Option<PathBuf>,
    /// PEM CAs of the agent's HTTPS certificate (`CONSUL_CACERT`).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for an agent that verifies incoming TLS (`CONSUL_CLIENT_CERT`).
    pub cert_file: Option<PathBuf>,
    /// Its private key (`CONSUL_CLIENT_KEY`).
    pub key_file: Option<PathBuf>,
    /// Name to verify in the agent's certificate (`CONSUL_TLS_SERVER_NAME`).
    pub tls_server_name: Option<String>,
    /// The gateway's own registration; absent: not registered (unless `--register`).
    pub register: Option<RegisterSection>,
}

/// `[consul.register]`: the mesh-gateway service meshgate registers for itself.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterSection {
    /// Service name and ID (`-service`); default: `[gateway] name`.
    pub service: Option<String>,
    /// LAN `host:port` (`-address`); default: the first `[gateway] listen` address.
    pub address: Option<String>,
    /// WAN `host:port` other datacenters dial (`-wan-address`); default: `address`.
    pub wan_address: Option<String>,
    /// Also carry WAN federation (`-expose-servers`): Meta `consul-wan-federation = "1"`.
    #[serde(default)]
    pub expose_servers: bool,
    /// How long the check may stay critical before Consul removes the service (a Go duration).
    pub deregister_critical_after: Option<String>,
}

impl ConsulSection {
    /// Checks what can be checked without the agent; errors point at the key.
    pub fn validate(&self, text: &str, file: &Path) -> Result<(), ConfigError> {
        let at = |table: &str, key: &str, message: String| {
            locate(
                text,
                file,
                find_key(text, table, key),
                Some(&format!("{table}.{key}")),
                message,
            )
        };
        if let Some(addr) = &self.address {
            let rest = addr
                .strip_prefix("https://")
                .or_else(|| addr.strip_prefix("http://"))
                .unwrap_or(addr)
                .trim_end_matches('/');
            if rest.is_empty() || rest.contains(['/', ' ', '?', '#', '@']) {
                return Err(at(
                    "consul",
                    "address",
                    format!("{addr:?} is not host:port, http://host:port or https://host:port"),
                ));
            }
        }
        if self.token.is_some() && self.token_file.is_some() {
            return Err(at(
                "consul",
                "token",
                "give token or token_file, not both".into(),
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(at(
                "consul",
                if self.cert_file.is_some() {
                    "cert_file"
                } else {
                    "key_file"
                },
                "cert_file and key_file go together".into(),
            ));
        }
        if let Some(r) = &self.register {
            for (key, value) in [("address", &r.address), ("wan_address", &r.wan_address)] {
                if let Some(v) = value {
                    if split_host_port(v).is_none() {
                        return Err(at(
                            "consul.register",
                            key,
                            format!("{v:?} is not host:port"),
                        ));
                    }
                }
            }
            if let Some(name) = &r.service {
                if name.is_empty()
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                {
                    return Err(at(
                        "consul.register",
                        "service",
                        format!("{name:?}: a service name is letters, digits, '-' and '_'"),
                    ));
                }
            }
            if let Some(d) = &r.deregister_critical_after {
                if !is_go_duration(d) {
                    return Err(at(
                        "consul.register",
                        "deregister_critical_after",
                        format!("{d:?} is not a duration such as 90s, 30m or 6h"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `host:port` with a numeric port (IPv6 hosts in brackets), split.
pub fn split_host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains([' ', '/', '[', ']']) {
        return None;
    }
    Some((host.to_owned(), port))
}

/// A Go duration as Consul takes one: numbers each followed by a unit (`1h30m`, `90s`, `500ms`).
fn is_go_duration(text: &str) -> bool {
    let mut rest = text;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ns", "us", "µs", "ms", "s", "m", "h"]
            .iter()
            .filter(|u| rest.starts_with(**u))
            .max_by_key(|u| u.len());
        match unit {
            Some(u) => rest = &rest[u.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    fn parse(extra: &str) -> Result<Config, ConfigError> {
        let text = format!("[gateway]\nlisten = [\"127.0.0.1:8443\"]\n{extra}");
        Config::parse(&text, Path::new("gw.toml"))
    }

    #[test]
    fn a_full_section_parses() {
        let c = parse(
            "[consul]\naddress = \"https://127.0.0.1:8501\"\ntoken_file = \"t\"\nca_file = \"ca.pem\"\n\
             [consul.register]\nservice = \"gw\"\naddress = \"10.0.0.1:8443\"\nwan_address = \"[2001:db8::1]:443\"\n\
             expose_servers = true\nderegister_critical_after = \"1h30m\"\n",
        )
        .expect("valid");
        let consul = c.consul.expect("section");
        let r = consul.register.expect("register");
        assert_eq!(r.service.as_deref(), Some("gw"));
        assert!(r.expose_servers);
        assert_eq!(
            split_host_port(r.wan_address.as_deref().unwrap_or_default()),
            Some(("2001:db8::1".into(), 443))
        );
    }

    #[test]
    fn errors_name_the_line_and_field() {
        let cases = [
            (
                "[consul]\naddress = \"unix:///tmp/c.sock\"\n",
                "consul.address",
                4,
            ),
            (
                "[consul]\ntoken = \"a\"\ntoken_file = \"b\"\n",
                "consul.token",
                4,
            ),
            ("[consul]\ncert_file = \"c\"\n", "consul.cert_file", 4),
            (
                "[consul]\n[consul.register]\naddress = \"10.0.0.1\"\n",
                "consul.register.address",
                5,
            ),
            (
                "[consul]\n[consul.register]\nservice = \"a b\"\n",
                "consul.register.service",
                5,
            ),
            (
                "[consul]\n[consul.register]\nderegister_critical_after = \"6 hours\"\n",
                "consul.register.deregister_critical_after",
                5,
            ),
        ];
        for (extra, field, line) in cases {
            let e = parse(extra).expect_err(extra).to_string();
            assert!(e.contains(field), "{e}");
            assert!(e.contains(&format!("gw.toml:{line}:")), "{e}");
        }
        let e = parse("[consul]\nadress = \"x\"\n")
            .expect_err("typo")
            .to_string();
        assert!(e.contains("adress"), "{e}");
    }

    #[test]
    fn durations() {
        for ok in ["6h", "90s", "1h30m", "500ms", "1.5h"] {
            assert!(is_go_duration(ok), "{ok}");
        }
        for bad in ["", "6", "h", "6 h", "-1s", "6d"] {
            assert!(!is_go_duration(bad), "{bad}");
        }
    }
}
