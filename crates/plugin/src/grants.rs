//! What a plugin may reach and the host functions that enforce it: the only imports a plugin has (log,
//! files under granted directories, HTTP GET to granted origins, granted environment variables). No WASI
//! is linked, so there is no other way out of the sandbox.
//!
//! Every host call is bounded by what remains of the plugin call's deadline: the epoch that interrupts a
//! looping plugin does not reach a host function blocked in a read, so each one checks the clock itself.
//! Files are opened without blocking and without following a last symlink, and only regular files are
//! read (a FIFO would block the open forever, a device would never end). HTTP is a GET the host writes
//! itself, from a URL it has parsed and checked against the grant, with one deadline for connect, write
//! and read together.

use crate::bindings::catalog_world;
use crate::sandbox::Limiter;
use crate::types;
use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Longest a plugin's HTTP request may take in total (connect, write and read), when the call's deadline
/// leaves more.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest URL a plugin may ask for, in bytes.
pub const MAX_URL: usize = 8 * 1024;
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

/// Per-store state: the plugin's grants, its memory limiter, and when the current call must end.
pub struct State {
    pub(crate) plugin: String,
    pub(crate) grants: Grants,
    pub(crate) limiter: Limiter,
    /// The current call's deadline; host calls get only what remains of it.
    pub(crate) deadline: Instant,
    /// The plugin's log budget, shared by its instances.
    pub(crate) log_budget: std::sync::Arc<std::sync::Mutex<LogBudget>>,
    /// What `changed-files` answers during the current call (set by the caller for this call only).
    pub(crate) changed_files: Option<Vec<String>>,
}

impl types::Host for State {}

/// The log target of every line a plugin writes (`--log-level meshgate::plugin=debug,info` shows a
/// plugin's debug lines without the gateway's own).
pub const LOG_TARGET: &str = "meshgate::plugin";
/// Lines a plugin may write in a burst, and per second after it: a plugin that logs (or panics) on
/// every call must not flood the gateway's log.
pub const LOG_BURST: u32 = 20;
/// See [`LOG_BURST`].
pub const LOG_PER_SECOND: u32 = 5;

/// A plugin's log budget: a token bucket shared by all its instances (an instance is remade after a
/// trap, so a per-instance budget would let a plugin that panics on every call log on every call).
#[derive(Debug)]
pub(crate) struct LogBudget {
    tokens: f64,
    last: Instant,
    dropped: u64,
}

impl Default for LogBudget {
    fn default() -> LogBudget {
        LogBudget::new()
    }
}

impl LogBudget {
    pub(crate) fn new() -> LogBudget {
        LogBudget {
            tokens: f64::from(LOG_BURST),
            last: Instant::now(),
            dropped: 0,
        }
    }

    /// Whether a line may go out now; `Some(n)`: yes, and `n` lines were dropped before it.
    fn take(&mut self, now: Instant) -> Option<u64> {
        let refill =
            now.saturating_duration_since(self.last).as_secs_f64() * f64::from(LOG_PER_SECOND);
        self.tokens = (self.tokens + refill).min(f64::from(LOG_BURST));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Some(std::mem::take(&mut self.dropped))
        } else {
            self.dropped += 1;
            None
        }
    }
}

impl catalog_world::meshgate::plugin::host::Host for State {
    fn log(&mut self, level: types::LogLevel, message: String) {
        let plugin = &self.plugin;
        let dropped = match self.log_budget.lock() {
            Ok(mut b) => b.take(Instant::now()),
            Err(_) => Some(0),
        };
        let Some(dropped) = dropped else { return };
        if dropped > 0 {
            tracing::warn!(target: LOG_TARGET, plugin, dropped, "plugin log lines dropped (over {LOG_BURST} lines, then {LOG_PER_SECOND}/s)");
        }
        match level {
            types::LogLevel::Error => tracing::error!(target: LOG_TARGET, plugin, "{message}"),
            types::LogLevel::Warn => tracing::warn!(target: LOG_TARGET, plugin, "{message}"),
            types::LogLevel::Info => tracing::info!(target: LOG_TARGET, plugin, "{message}"),
            types::LogLevel::Debug => tracing::debug!(target: LOG_TARGET, plugin, "{message}"),
        }
    }

    fn read_file(&mut self, path: String) -> Result<Vec<u8>, String> {
        self.remaining().map_err(|e| format!("{path}: {e}"))?;
        let p = self.granted_path(&path)?;
        read_regular(&p, self.deadline).map_err(|e| format!("{path}: {e}"))
    }

    fn list_dir(&mut self, path: String) -> Result<Vec<types::DirEntry>, String> {
        self.remaining().map_err(|e| format!("{path}: {e}"))?;
        let p = self.granted_path(&path)?;
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&p).map_err(|e| format!("{path}: {e}"))? {
            // A huge directory (or a slow file system) must not outlast the call either.
            self.remaining().map_err(|e| format!("{path}: {e}"))?;
            let entry = entry.map_err(|e| format!("{path}: {e}"))?;
            let Ok(meta) = entry.metadata() else { continue };
            out.push(types::DirEntry {
                name: entry.file_name().to_string_lossy().into_owned(),
                is_dir: meta.is_dir(),
                size: meta.len(),
                modified_ms: modified_ms(&meta),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn file_info(&mut self, path: String) -> Result<Option<types::DirEntry>, String> {
        self.remaining().map_err(|e| format!("{path}: {e}"))?;
        // A file that is not there is an answer, not an error: the path is checked as far as it goes.
        let p = match self.granted_path(&path) {
            Ok(p) => p,
            Err(e) => {
                let raw = Path::new(&path);
                let parent_granted = raw
                    .parent()
                    .and_then(|d| d.to_str())
                    .is_some_and(|d| self.granted_path(d).is_ok());
                let missing = !self.grants.base.join(raw).exists();
                return if parent_granted && missing {
                    Ok(None)
                } else {
                    Err(e)
                };
            }
        };
        let meta = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{path}: {e}")),
        };
        Ok(Some(types::DirEntry {
            name: p
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            is_dir: meta.is_dir(),
            size: meta.len(),
            modified_ms: modified_ms(&meta),
        }))
    }

    fn changed_files(&mut self) -> Option<Vec<String>> {
        self.changed_files.take()
    }

    fn http_get(&mut self, url: String) -> Result<types::HttpResponse, String> {
        // The URL is echoed in errors: escaped, so a plugin cannot forge log lines through it.
        let shown = url.escape_debug().to_string();
        let target = Url::parse(&url).map_err(|e| format!("{shown}: {e}"))?;
        if !self
            .grants
            .origins
            .iter()
            .filter_map(|o| Origin::parse(o).ok())
            .any(|o| o == target.origin)
        {
            return Err(format!(
                "{} is not granted to plugin {}",
                target.origin, self.plugin
            ));
        }
        // One budget for the whole exchange: what remains of the call, at most HTTP_TIMEOUT.
        let deadline = self.deadline.min(Instant::now() + HTTP_TIMEOUT);
        http_get(&target, deadline).map_err(|e| format!("{shown}: {e}"))
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
    /// What remains of the current call's deadline; an error once it has passed.
    fn remaining(&self) -> Result<Duration, String> {
        remaining(self.deadline).map_err(|e| e.to_string())
    }

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

/// A file's modification time in milliseconds since the Unix epoch (0 when the system cannot say).
fn modified_ms(meta: &std::fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What remains until `deadline`; a `TimedOut` error once it has passed.
fn remaining(deadline: Instant) -> std::io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the plugin call's deadline has passed",
        ))
    } else {
        Ok(left)
    }
}

/// Reads a regular file, at most [`MAX_READ`] bytes, before `deadline`.
///
/// `O_NONBLOCK`: opening a FIFO that has no writer returns at once instead of waiting for one (on a
/// regular file the flag does nothing). `O_NOFOLLOW`: the path was resolved and checked against the
/// grant; a symlink swapped in since is refused rather than followed. Then `fstat` on the open file
/// decides, so what is read is what was checked.
fn read_regular(path: &Path, deadline: Instant) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(std::io::Error::other(
            "not a regular file (FIFOs, sockets and devices are never read)",
        ));
    }
    if meta.len() > MAX_READ as u64 {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_READ} bytes"
        )));
    }
    let mut out = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    let mut limited = file.take(MAX_READ as u64 + 1);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        remaining(deadline)?;
        let n = match limited.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.extend_from_slice(&chunk[..n]);
    }
    if out.len() > MAX_READ {
        // It grew while being read.
        return Err(std::io::Error::other(format!(
            "larger than {MAX_READ} bytes"
        )));
    }
    Ok(out)
}

/// An HTTP origin: scheme `http`, a host (lower-cased) and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    /// As written in the Host header and for connecting: a name, an IPv4 address or `[IPv6]`.
    host: String,
    port: u16,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}:{}", self.host, self.port)
    }
}

impl Origin {
    /// Parses a granted origin, `http://host[:port][/]`.
    fn parse(s: &str) -> Result<Origin, String> {
        let url = Url::parse(s)?;
        if url.target != "/" {
            return Err(format!("{s}: an origin has no path"));
        }
        Ok(url.origin)
    }

    /// Parses `host[:port]`: no user info, a name or an address, a port in 1..=65535 (80 if none).
    fn parse_authority(authority: &str) -> Result<Origin, String> {
        if authority.contains('@') {
            return Err("user info is not allowed in the URL".into());
        }
        let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
            let (v6, after) = rest.split_once(']').ok_or("unterminated [IPv6] address")?;
            v6.parse::<std::net::Ipv6Addr>()
                .map_err(|_| format!("bad IPv6 address `{v6}`"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or("bad port")?),
            };
            (format!("[{v6}]"), port)
        } else {
            let (host, port) = match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            };
            let valid = !host.is_empty()
                && host.len() <= 253
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !valid {
                return Err(format!("bad host `{host}`"));
            }
            (host.to_ascii_lowercase(), port)
        };
        let port = match port {
            None => 80,
            Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("bad port `{p}`"))?,
            Some(p) => return Err(format!("bad port `{p}`")),
        };
        Ok(Origin { host, port })
    }

    /// The addresses to connect to; a name is resolved off-thread so resolution cannot outlast the
    /// deadline either.
    fn resolve(&self, deadline: Instant) -> std::io::Result<Vec<SocketAddr>> {
        let bare = self.host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let (host, port) = (self.host.clone(), self.port);
        std::thread::Builder::new()
            .name("meshgate-resolve".into())
            .spawn(move || {
                let _ = tx.send((host.as_str(), port).to_socket_addrs().map(Vec::from_iter));
            })?;
        rx.recv_timeout(remaining(deadline)?).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "name resolution ran past the plugin call's deadline",
            )
        })?
    }
}

/// A URL a plugin asked for, parsed and checked: `http://host[:port][/path][?query]`.
#[derive(Debug)]
struct Url {
    origin: Origin,
    /// The request target: the path (`/` if none) and the query, every byte a legal one.
    target: String,
}

impl Url {
    fn parse(url: &str) -> Result<Url, String> {
        if url.len() > MAX_URL {
            return Err(format!("longer than {MAX_URL} bytes"));
        }
        let rest = match url.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case("http://") => &url[7..],
            _ => return Err("only http:// URLs are supported".into()),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let origin = Origin::parse_authority(&rest[..end])?;
        let tail = &rest[end..];
        if tail.contains('#') {
            return Err("a fragment is never sent: remove the `#...`".into());
        }
        check_target(tail)?;
        let target = if tail.starts_with('/') {
            tail.to_owned()
        } else {
            format!("/{tail}")
        };
        Ok(Url { origin, target })
    }
}

/// Path and query may hold only RFC 3986 characters (unreserved, sub-delims, `:@/?`) and well-formed
/// percent-escapes: no space, no CR/LF or other control character, nothing outside ASCII. That is what
/// makes it impossible to end the request line early and smuggle headers or a second request.
fn check_target(target: &str) -> Result<(), String> {
    let bytes = target.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hex = |j: usize| bytes.get(j).is_some_and(u8::is_ascii_hexdigit);
                if !(hex(i + 1) && hex(i + 2)) {
                    return Err(format!("bad percent-escape at byte {}", i + 7));
                }
                i += 3;
                continue;
            }
            b if b.is_ascii_alphanumeric() => {}
            b'-' | b'.' | b'_' | b'~' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+'
            | b',' | b';' | b'=' | b':' | b'@' | b'/' | b'?' => {}
            other => {
                return Err(format!(
                    "character {:?} is not allowed in a URL path or query (percent-encode it)",
                    char::from(other)
                ))
            }
        }
        i += 1;
    }
    Ok(())
}

/// One GET, HTTP/1.0, connect + write + read all before `deadline`. The host writes the request line and
/// every header itself; only the checked target comes from the plugin.
fn http_get(url: &Url, deadline: Instant) -> std::io::Result<types::HttpResponse> {
    use std::io::Write;
    let addrs = url.origin.resolve(deadline)?;
    let mut last = std::io::Error::other("no address");
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, remaining(deadline)?) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let mut s = stream.ok_or(last)?;
    let origin = &url.origin;
    // HTTP/1.0: the server closes after the body, no chunked encoding to undo. One write: a server that
    // answers after its first read must see the whole request, or its close resets our read.
    let request = format!(
        "GET {} HTTP/1.0\r\nHost: {}:{}\r\nUser-Agent: meshgate\r\nConnection: close\r\n\r\n",
        url.target, origin.host, origin.port
    );
    s.set_write_timeout(Some(remaining(deadline)?))?;
    s.write_all(request.as_bytes())?;
    let cap = MAX_READ + 64 * 1024;
    let mut raw = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        // Each read may wait only for what remains of the one budget: a server dripping a byte at a
        // time cannot stretch the exchange.
        s.set_read_timeout(Some(remaining(deadline)?))?;
        let n = match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                remaining(deadline)?;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        if raw.len() + n > cap {
            return Err(std::io::Error::other(format!(
                "response larger than {MAX_READ} bytes"
            )));
        }
        raw.extend_from_slice(&chunk[..n]);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_budget_allows_a_burst_then_a_rate_and_counts_what_it_drops() {
        let mut b = LogBudget::new();
        let t0 = b.last;
        for _ in 0..LOG_BURST {
            assert_eq!(b.take(t0), Some(0));
        }
        assert_eq!(b.take(t0), None);
        assert_eq!(b.take(t0), None);
        // One line's worth of time later, one line goes out and reports the two dropped.
        let later = t0 + Duration::from_millis(1000 / u64::from(LOG_PER_SECOND) + 1);
        assert_eq!(b.take(later), Some(2));
        assert_eq!(b.take(later), None);
    }
}
