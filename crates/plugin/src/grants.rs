//! What a plugin may reach and the host functions that enforce it: the only imports a plugin has (log,
//! files under granted directories, HTTP GET to granted origins, granted environment variables). No WASI
//! is linked, so there is no other way out of the sandbox.

use crate::bindings::catalog_world;
use crate::sandbox::Limiter;
use crate::types;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Timeout of a plugin's HTTP request (connect, and each read or write).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest file or HTTP body handed to a plugin, in bytes.
pub const MAX_READ: usize = 16 << 20;

/// What a plugin may reach.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// Relative paths a plugin uses are resolved against this directory (the config file's).
    pub base: PathBuf,
    /// Directories the plugin may read (recursively).
    pub dirs: Vec<PathBuf>,
    /// HTTP origins (`http://host:port`) the plugin may GET.
    pub origins: Vec<String>,
    /// Environment variables the plugin may read.
    pub env: Vec<String>,
}

/// Per-store state: the plugin's grants and its memory limiter.
pub struct State {
    pub(crate) plugin: String,
    pub(crate) grants: Grants,
    pub(crate) limiter: Limiter,
}

impl types::Host for State {}

impl catalog_world::meshgate::plugin::host::Host for State {
    fn log(&mut self, level: types::LogLevel, message: String) {
        let plugin = &self.plugin;
        match level {
            types::LogLevel::Error => tracing::error!(plugin, "{message}"),
            types::LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            types::LogLevel::Info => tracing::info!(plugin, "{message}"),
            types::LogLevel::Debug => tracing::debug!(plugin, "{message}"),
        }
    }

    fn read_file(&mut self, path: String) -> Result<Vec<u8>, String> {
        let p = self.granted_path(&path)?;
        let meta = std::fs::metadata(&p).map_err(|e| format!("{path}: {e}"))?;
        if meta.len() > MAX_READ as u64 {
            return Err(format!("{path}: larger than {MAX_READ} bytes"));
        }
        std::fs::read(&p).map_err(|e| format!("{path}: {e}"))
    }

    fn list_dir(&mut self, path: String) -> Result<Vec<types::DirEntry>, String> {
        let p = self.granted_path(&path)?;
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&p).map_err(|e| format!("{path}: {e}"))? {
            let entry = entry.map_err(|e| format!("{path}: {e}"))?;
            let Ok(meta) = entry.metadata() else { continue };
            let modified_ms = meta
                .modified()
                .ok()
                .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            out.push(types::DirEntry {
                name: entry.file_name().to_string_lossy().into_owned(),
                is_dir: meta.is_dir(),
                size: meta.len(),
                modified_ms,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn http_get(&mut self, url: String) -> Result<types::HttpResponse, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let origin = format!("http://{authority}");
        if !self
            .grants
            .origins
            .iter()
            .any(|o| o.trim_end_matches('/') == origin)
        {
            return Err(format!("{origin} is not granted to plugin {}", self.plugin));
        }
        http_get(authority, path).map_err(|e| format!("{url}: {e}"))
    }

    fn get_env(&mut self, key: String) -> Option<String> {
        if self.grants.env.contains(&key) {
            std::env::var(&key).ok()
        } else {
            tracing::debug!(plugin = %self.plugin, key, "environment variable not granted");
            None
        }
    }
}

impl State {
    /// Resolves `path` (relative to the config's directory), then requires it inside a granted directory.
    fn granted_path(&self, path: &str) -> Result<PathBuf, String> {
        let raw = Path::new(path);
        let full = if raw.is_absolute() {
            raw.to_owned()
        } else {
            self.grants.base.join(raw)
        };
        let canonical = full.canonicalize().map_err(|e| format!("{path}: {e}"))?;
        let allowed = self.grants.dirs.iter().any(|d| {
            let d = if d.is_absolute() {
                d.clone()
            } else {
                self.grants.base.join(d)
            };
            d.canonicalize().is_ok_and(|d| canonical.starts_with(d))
        });
        if allowed {
            Ok(canonical)
        } else {
            Err(format!(
                "{path} is not under a directory granted to plugin {}",
                self.plugin
            ))
        }
    }
}

fn http_get(authority: &str, path: &str) -> std::io::Result<types::HttpResponse> {
    use std::io::{Read, Write};
    let addr = authority
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
    s.set_read_timeout(Some(HTTP_TIMEOUT))?;
    s.set_write_timeout(Some(HTTP_TIMEOUT))?;
    // HTTP/1.0: the server closes after the body, no chunked encoding to undo. One write: a server that
    // answers after its first read must see the whole request, or its close resets our read.
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: meshgate\r\n\r\n");
    s.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    s.take(MAX_READ as u64 + 64 * 1024).read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(types::HttpResponse {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}
