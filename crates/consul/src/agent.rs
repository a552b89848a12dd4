//! Where the local Consul agent is and how to talk to it: address, scheme, ACL token (a value or a file
//! that is re-read when it changes), TLS files and limits — from explicit values or from the `CONSUL_*`
//! environment variables Consul's own CLI and API client read.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Consul's default HTTP address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8500";
/// Default total deadline for a non-blocking request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default cap on an answer's body. The largest answer a gateway reads is the whole local catalog
/// (`/v1/internal/ui/nodes`): about 1.5 KB per service with its sidecar and checks, twice that from a
/// `-dev` agent, which indents its JSON; 10,000 services are ~15 MB (~30 MB indented).
pub const DEFAULT_MAX_BODY: usize = 64 << 20;
/// Cap on a token file: a secret is a UUID; anything large is a wrong path.
const MAX_TOKEN_FILE: u64 = 64 << 10;

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP (a dev agent, or an agent on loopback).
    Http,
    /// HTTPS with rustls (the norm in production).
    Https,
}

/// The ACL token sent as `X-Consul-Token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// No header: the agent uses its default token, else anonymous.
    None,
    /// A fixed secret.
    Value(String),
    /// A file holding the secret (trimmed), re-read whenever its size or modification time changes.
    File(PathBuf),
}

/// The local agent's coordinates and the client's limits.
#[derive(Debug, Clone)]
pub struct Agent {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// Host name or IP (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// The ACL token.
    pub token: TokenSource,
    /// PEM file of the CAs that sign the agent's HTTPS certificate (`CONSUL_CACERT`).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain for agents with `verify_incoming` (`CONSUL_CLIENT_CERT`).
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert` (`CONSUL_CLIENT_KEY`).
    pub client_key: Option<PathBuf>,
    /// Name checked in the agent's certificate (`CONSUL_TLS_SERVER_NAME`); default: `host`.
    pub tls_server_name: Option<String>,
    /// Total deadline of a non-blocking request.
    pub request_timeout: Duration,
    /// Largest accepted answer body.
    pub max_body: usize,
}

impl Agent {
    /// An agent at `addr`: `host:port`, `http://host:port` or `https://host:port` (a trailing `/` is
    /// allowed; a missing port means 80/443 as in any URL). `unix://` sockets are refused.
    pub fn new(addr: &str) -> Result<Agent> {
        let (scheme, host, port) = parse_addr(addr)?;
        Ok(Agent {
            scheme,
            host,
            port,
            token: TokenSource::None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            tls_server_name: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_body: DEFAULT_MAX_BODY,
        })
    }

    /// The agent Consul's own tools would use, from the process environment.
    pub fn from_env() -> Result<Agent> {
        Agent::from_vars(|name| std::env::var(name).ok())
    }

    /// As [`Agent::from_env`], reading variables through `var` (tests pass a map). Empty values count
    /// as unset. `CONSUL_HTTP_TOKEN_FILE` wins over `CONSUL_HTTP_TOKEN`, as in Consul's API client.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Agent> {
        let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let addr = get("CONSUL_HTTP_ADDR").unwrap_or_else(|| DEFAULT_ADDR.to_string());
        let mut agent = Agent::new(addr.trim())?;
        if let Some(ssl) = get("CONSUL_HTTP_SSL") {
            if parse_bool("CONSUL_HTTP_SSL", &ssl)? {
                agent.scheme = Scheme::Https;
            }
        }
        if let Some(verify) = get("CONSUL_HTTP_SSL_VERIFY") {
            if !parse_bool("CONSUL_HTTP_SSL_VERIFY", &verify)? {
                // Turning verification off would make the token readable by anyone on the path.
                return Err(Error::Config(
                    "CONSUL_HTTP_SSL_VERIFY=false is not supported: give the agent's CA with CONSUL_CACERT".into(),
                ));
            }
        }
        agent.token = match (get("CONSUL_HTTP_TOKEN_FILE"), get("CONSUL_HTTP_TOKEN")) {
            (Some(file), _) => TokenSource::File(PathBuf::from(file)),
            (None, Some(token)) => TokenSource::Value(token.trim().to_string()),
            (None, None) => TokenSource::None,
        };
        agent.ca_file = get("CONSUL_CACERT").map(PathBuf::from);
        agent.client_cert = get("CONSUL_CLIENT_CERT").map(PathBuf::from);
        agent.client_key = get("CONSUL_CLIENT_KEY").map(PathBuf::from);
        agent.tls_server_name = get("CONSUL_TLS_SERVER_NAME");
        if get("CONSUL_CAPATH").is_some() && agent.ca_file.is_none() {
            return Err(Error::Config(
                "CONSUL_CAPATH (a directory) is not supported: point CONSUL_CACERT at a PEM file"
                    .into(),
            ));
        }
        Ok(agent)
    }

    /// Moves the agent to `addr` (as [`Agent::new`] reads it), keeping the token, TLS files and limits.
    pub fn set_address(&mut self, addr: &str) -> Result<()> {
        let (scheme, host, port) = parse_addr(addr)?;
        self.scheme = scheme;
        self.host = host;
        self.port = port;
        Ok(())
    }

    /// Uses `token` as the ACL token.
    pub fn with_token(mut self, token: impl Into<String>) -> Agent {
        self.token = TokenSource::Value(token.into());
        self
    }

    /// Reads the ACL token from `path` (re-read on change).
    pub fn with_token_file(mut self, path: impl Into<PathBuf>) -> Agent {
        self.token = TokenSource::File(path.into());
        self
    }

    /// Verifies the agent's HTTPS certificate with the CAs in `path`.
    pub fn with_ca_file(mut self, path: impl Into<PathBuf>) -> Agent {
        self.ca_file = Some(path.into());
        self
    }

    /// Presents this client certificate and key to an agent that verifies incoming TLS.
    pub fn with_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Agent {
        self.client_cert = Some(cert.into());
        self.client_key = Some(key.into());
        self
    }

    /// `host:port` as it goes into the `Host` header (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn parse_bool(name: &str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "t" | "true" => Ok(true),
        "0" | "f" | "false" => Ok(false),
        other => Err(Error::Config(format!("{name}={other:?} is not a boolean"))),
    }
}

fn parse_addr(addr: &str) -> Result<(Scheme, String, u16)> {
    let bad = |why: &str| Error::Config(format!("CONSUL_HTTP_ADDR {addr:?}: {why}"));
    let (scheme, rest) = match addr.split_once("://") {
        None => (Scheme::Http, addr),
        Some(("http", rest)) => (Scheme::Http, rest),
        Some(("https", rest)) => (Scheme::Https, rest),
        Some(("unix", _)) => {
            return Err(bad(
                "unix sockets are not supported; give the agent's TCP address (host:port)",
            ))
        }
        Some((other, _)) => return Err(bad(&format!("unknown scheme {other:?}"))),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty()
        || rest.contains(['/', '?', '#', '@'])
        || rest.chars().any(char::is_whitespace)
    {
        return Err(bad("expected host:port"));
    }
    let default_port = match scheme {
        Scheme::Http => 80,
        Scheme::Https => 443,
    };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        match after {
            "" => (host, None),
            p => (
                host,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad("expected ':' after ']'"))?,
                ),
            ),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => return Err(bad("IPv6 addresses go in brackets")),
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => return Err(bad(&format!("bad port {p:?}"))),
        },
    };
    Ok((scheme, host.to_string(), port))
}

/// Resolves a [`TokenSource`] to the secret to send, re-reading a token file only when its size or
/// modification time changed (one `stat` per request).
#[derive(Debug)]
pub(crate) struct TokenCache {
    source: TokenSource,
    last: Mutex<Option<(FileStamp, String)>>,
}

type FileStamp = (Option<SystemTime>, u64);

impl TokenCache {
    pub(crate) fn new(source: TokenSource) -> TokenCache {
        TokenCache {
            source,
            last: Mutex::new(None),
        }
    }

    /// The token to send now, if any.
    pub(crate) fn current(&self) -> Result<Option<String>> {
        let token = match &self.source {
            TokenSource::None => return Ok(None),
            TokenSource::Value(v) => v.clone(),
            TokenSource::File(path) => self.read_file(path)?,
        };
        if token.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(Error::Config(
                "the ACL token holds spaces or control characters".into(),
            ));
        }
        Ok((!token.is_empty()).then_some(token))
    }

    fn read_file(&self, path: &Path) -> Result<String> {
        let err = |source| Error::TokenFile {
            path: path.display().to_string(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(err)?;
        let stamp = (meta.modified().ok(), meta.len());
        // A poisoned lock only means another thread panicked mid-read; the cache is still coherent.
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((seen, token)) = last.as_ref() {
            if *seen == stamp {
                return Ok(token.clone());
            }
        }
        if meta.len() > MAX_TOKEN_FILE {
            return Err(err(std::io::Error::other("larger than 64 KiB")));
        }
        let token = std::fs::read_to_string(path)
            .map_err(err)?
            .trim()
            .to_string();
        *last = Some((stamp, token.clone()));
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn addresses() {
        let a = Agent::new("127.0.0.1:8500").expect("plain");
        assert_eq!(
            (a.scheme, a.host.as_str(), a.port),
            (Scheme::Http, "127.0.0.1", 8500)
        );
        let a = Agent::new("https://consul.service:8501/").expect("https");
        assert_eq!(
            (a.scheme, a.host.as_str(), a.port),
            (Scheme::Https, "consul.service", 8501)
        );
        let a = Agent::new("http://[::1]:8500").expect("v6");
        assert_eq!(
            (a.host.as_str(), a.port, a.authority()),
            ("::1", 8500, "[::1]:8500".into())
        );
        assert_eq!(Agent::new("https://example").expect("no port").port, 443);
        for bad in [
            "",
            "127.0.0.1:0",
            "127.0.0.1:x",
            "ftp://a:1",
            "a:1/v1",
            "::1:8500",
            "[::1",
            "a b:1",
        ] {
            assert!(Agent::new(bad).is_err(), "{bad:?} accepted");
        }
        let e = Agent::new("unix:///var/run/consul.sock").expect_err("unix");
        assert!(
            e.to_string().contains("unix sockets are not supported"),
            "{e}"
        );
    }

    #[test]
    fn moving_the_address_keeps_the_credentials() {
        let mut a = Agent::new("127.0.0.1:8500")
            .expect("agent")
            .with_token("secret")
            .with_ca_file("/etc/consul/ca.pem");
        a.request_timeout = Duration::from_secs(3);
        a.set_address("https://10.0.0.1:8501").expect("moved");
        assert_eq!(
            (a.scheme, a.host.as_str(), a.port),
            (Scheme::Https, "10.0.0.1", 8501)
        );
        assert_eq!(a.token, TokenSource::Value("secret".into()));
        assert_eq!(a.ca_file, Some(PathBuf::from("/etc/consul/ca.pem")));
        assert_eq!(a.request_timeout, Duration::from_secs(3));
        assert!(a.set_address("unix:///tmp/consul.sock").is_err());
    }

    #[test]
    fn environment() {
        let a = Agent::from_vars(vars(&[])).expect("defaults");
        assert_eq!(
            (a.scheme, a.authority(), &a.token),
            (Scheme::Http, DEFAULT_ADDR.into(), &TokenSource::None)
        );
        let a = Agent::from_vars(vars(&[
            ("CONSUL_HTTP_ADDR", "10.0.0.1:8501"),
            ("CONSUL_HTTP_SSL", "true"),
            ("CONSUL_HTTP_TOKEN", " secret \n"),
            ("CONSUL_CACERT", "/etc/consul/ca.pem"),
            ("CONSUL_CLIENT_CERT", "/etc/consul/c.pem"),
            ("CONSUL_CLIENT_KEY", "/etc/consul/k.pem"),
            ("CONSUL_TLS_SERVER_NAME", "server.dc1.consul"),
        ]))
        .expect("full");
        assert_eq!(a.scheme, Scheme::Https);
        assert_eq!(a.token, TokenSource::Value("secret".into()));
        assert_eq!(a.ca_file.as_deref(), Some(Path::new("/etc/consul/ca.pem")));
        assert_eq!(
            a.client_key.as_deref(),
            Some(Path::new("/etc/consul/k.pem"))
        );
        assert_eq!(a.tls_server_name.as_deref(), Some("server.dc1.consul"));
        let a = Agent::from_vars(vars(&[
            ("CONSUL_HTTP_TOKEN", "value"),
            ("CONSUL_HTTP_TOKEN_FILE", "/run/token"),
        ]))
        .expect("file wins");
        assert_eq!(a.token, TokenSource::File("/run/token".into()));
        assert!(Agent::from_vars(vars(&[("CONSUL_HTTP_SSL", "maybe")])).is_err());
        assert!(Agent::from_vars(vars(&[("CONSUL_HTTP_SSL_VERIFY", "false")])).is_err());
        assert!(Agent::from_vars(vars(&[("CONSUL_HTTP_ADDR", "unix:///x")])).is_err());
    }

    #[test]
    fn token_file_is_reread_when_it_changes() {
        let dir =
            std::env::temp_dir().join(format!("meshgate-consul-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("token");
        std::fs::write(&path, "first\n").expect("write");
        let cache = TokenCache::new(TokenSource::File(path.clone()));
        assert_eq!(cache.current().expect("read").as_deref(), Some("first"));
        // A different length changes the stamp even when the clock's resolution hides the write.
        std::fs::write(&path, "second-token").expect("write");
        assert_eq!(
            cache.current().expect("reread").as_deref(),
            Some("second-token")
        );
        std::fs::write(&path, "bad token").expect("write");
        assert!(cache.current().is_err());
        std::fs::remove_file(&path).expect("rm");
        assert!(matches!(cache.current(), Err(Error::TokenFile { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
