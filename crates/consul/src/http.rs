//! A small HTTP/1.1 client for the local Consul agent, on blocking std IO (it runs on control threads,
//! never on a data-plane core). One connection per request (`Connection: close`), one TOTAL deadline per
//! request covering connect, TLS handshake, write, headers and body — a server that drips bytes cannot
//! stretch it — a cap on the body, Content-Length and chunked bodies, and Consul's response headers.
//! Requests are checked before anything is sent: no CR/LF, spaces or control bytes can reach the request
//! line or a header (request smuggling), query values are percent-encoded.

use crate::agent::{Agent, Scheme, TokenCache};
use crate::error::{excerpt, Error, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest accepted response head (status line and headers).
const MAX_HEAD: usize = 64 << 10;
/// Largest accepted chunk-size or trailer line.
const MAX_LINE: usize = 4 << 10;

/// The methods Consul's HTTP API needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Reads, including blocking queries.
    Get,
    /// Registration, maintenance, deregistration, config writes.
    Put,
    /// `connect/authorize`, ACL preflight.
    Post,
}

impl Method {
    /// The method's token on the request line.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Post => "POST",
        }
    }
}

/// One request: method, path, query, optional JSON body, optional deadline (else the agent's).
#[derive(Debug, Clone)]
pub struct Request {
    method: Method,
    path: String,
    query: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    timeout: Option<Duration>,
}

impl Request {
    /// A request for `path` (starting with `/`, without a query: add those with [`Request::query`]).
    pub fn new(method: Method, path: impl Into<String>) -> Request {
        Request {
            method,
            path: path.into(),
            query: Vec::new(),
            body: None,
            timeout: None,
        }
    }

    /// `GET path`.
    pub fn get(path: impl Into<String>) -> Request {
        Request::new(Method::Get, path)
    }

    /// `PUT path`.
    pub fn put(path: impl Into<String>) -> Request {
        Request::new(Method::Put, path)
    }

    /// `POST path`.
    pub fn post(path: impl Into<String>) -> Request {
        Request::new(Method::Post, path)
    }

    /// Adds `key=value` to the query (the value is percent-encoded when sent; a flag such as `cached`
    /// takes an empty value).
    pub fn query(mut self, key: impl Into<String>, value: impl Into<String>) -> Request {
        self.query.push((key.into(), value.into()));
        self
    }

    /// Sets the body to `body` as JSON.
    pub fn json<T: serde::Serialize + ?Sized>(mut self, body: &T) -> Result<Request> {
        let bytes = serde_json::to_vec(body).map_err(|source| Error::Json {
            path: self.path.clone(),
            source,
        })?;
        self.body = Some(bytes);
        Ok(self)
    }

    /// Sets the total deadline of this request (a blocking query needs more than the default).
    pub fn timeout(mut self, timeout: Duration) -> Request {
        self.timeout = Some(timeout);
        self
    }

    /// The method.
    pub fn method(&self) -> Method {
        self.method
    }

    /// The path, without the query.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The value of query parameter `key`, if set.
    pub fn query_value(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The request target (`/path?k=v&…`), or why it must not be sent.
    pub fn target(&self) -> Result<String> {
        let refuse = |why: String| Error::InvalidRequest(why);
        if !self.path.starts_with('/') {
            return Err(refuse(format!(
                "path {:?} does not start with '/'",
                self.path
            )));
        }
        if let Some(c) = self.path.chars().find(|c| !is_path_char(*c)) {
            return Err(refuse(format!("path {:?} holds {c:?}", self.path)));
        }
        // "." and ".." would let a name from the catalog climb into another endpoint.
        if self.path.split('/').any(|seg| seg == "." || seg == "..") {
            return Err(refuse(format!("path {:?} has a dot segment", self.path)));
        }
        let mut target = self.path.clone();
        for (i, (k, v)) in self.query.iter().enumerate() {
            if k.is_empty()
                || !k
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(refuse(format!("query key {k:?}")));
            }
            if v.chars().any(char::is_control) {
                return Err(refuse(format!(
                    "query value for {k:?} holds a control character"
                )));
            }
            target.push(if i == 0 { '?' } else { '&' });
            target.push_str(k);
            if !v.is_empty() {
                target.push('=');
                percent_encode(v, &mut target);
            }
        }
        Ok(target)
    }
}

/// Characters allowed raw in a path: RFC 3986 `pchar` and `/`. No space, CR, LF, `?` or `#`.
fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/%".contains(c)
}

fn percent_encode(value: &str, out: &mut String) {
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// An answer, whatever its status, with Consul's headers decoded.
#[derive(Debug, Clone, Default)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// `X-Consul-Index`: the blocking-query index of this answer.
    pub index: Option<u64>,
    /// `X-Consul-KnownLeader`: whether the answering server knew a leader.
    pub known_leader: Option<bool>,
    /// `X-Consul-LastContact`: how stale a `?stale` answer may be.
    pub last_contact: Option<Duration>,
    /// `X-Consul-ContentHash`: the hash for hash-based blocking on agent-local endpoints.
    pub content_hash: Option<String>,
    /// `X-Cache: HIT|MISS` on `?cached` answers.
    pub cache_hit: Option<bool>,
    /// The body (at most the agent's `max_body`).
    pub body: Vec<u8>,
}

impl Response {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Decodes the body as JSON; `path` names the endpoint in the error.
    pub fn json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|source| Error::Json {
            path: path.to_string(),
            source,
        })
    }
}

/// Something that answers [`Request`]s: the real [`Client`], or a scripted stand-in in tests.
pub trait Transport {
    /// Sends `request` and returns the answer whatever its status; errors are transport failures only.
    fn send(&self, request: &Request) -> Result<Response>;
}

/// A client for one agent. Cheap to share between threads (`&Client` is all a call needs).
#[derive(Debug)]
pub struct Client {
    agent: Agent,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    token: TokenCache,
}

impl Client {
    /// A client for `agent`; reads and checks the TLS files now, so a wrong path fails at start.
    pub fn new(agent: Agent) -> Result<Client> {
        let tls = match agent.scheme {
            Scheme::Http => None,
            Scheme::Https => Some(tls_config(&agent)?),
        };
        Ok(Client {
            token: TokenCache::new(agent.token.clone()),
            agent,
            tls,
        })
    }

    /// The agent this client talks to.
    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// Sends `request`; a non-2xx answer becomes [`Error::Status`] with the start of its body.
    pub fn call(&self, request: &Request) -> Result<Response> {
        let response = self.send(request)?;
        if response.is_success() {
            Ok(response)
        } else {
            Err(Error::Status {
                method: request.method.as_str(),
                path: request.path.clone(),
                status: response.status,
                body: excerpt(&response.body),
            })
        }
    }

    /// `GET path` decoded as JSON (non-2xx is an error).
    pub fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(&Request::get(path))?.json(path)
    }

    /// `PUT path` with `body` as JSON (non-2xx is an error).
    pub fn put_json<B: serde::Serialize + ?Sized>(&self, path: &str, body: &B) -> Result<Response> {
        self.call(&Request::put(path).json(body)?)
    }

    /// `POST path` with `body` as JSON, the answer decoded as JSON (non-2xx is an error).
    pub fn post_json<B: serde::Serialize + ?Sized, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T> {
        self.call(&Request::post(path).json(body)?)?.json(path)
    }

    fn head(&self, request: &Request, target: &str) -> Result<Vec<u8>> {
        let mut head = format!(
            "{} {target} HTTP/1.1\r\nHost: {}\r\nUser-Agent: meshgate-consul/{}\r\nAccept: application/json\r\nConnection: close\r\n",
            request.method.as_str(),
            self.agent.authority(),
            env!("CARGO_PKG_VERSION"),
        );
        if let Some(token) = self.token.current()? {
            head.push_str(&format!("X-Consul-Token: {token}\r\n"));
        }
        match &request.body {
            Some(body) => head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            )),
            None if request.method != Method::Get => head.push_str("Content-Length: 0\r\n"),
            None => {}
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if let Some(body) = &request.body {
            bytes.extend_from_slice(body);
        }
        Ok(bytes)
    }
}

impl Transport for Client {
    fn send(&self, request: &Request) -> Result<Response> {
        let target = request.target()?;
        let bytes = self.head(request, &target)?;
        let budget = request.timeout.unwrap_or(self.agent.request_timeout);
        let deadline = Deadline {
            end: Instant::now() + budget,
            budget,
            method: request.method.as_str(),
            path: &request.path,
        };
        let tcp = self.connect(&deadline)?;
        let stream = match &self.tls {
            None => Stream::Plain(tcp),
            Some((config, name)) => {
                let conn = rustls::ClientConnection::new(config.clone(), name.clone())
                    .map_err(|e| Error::Tls(e.to_string()))?;
                Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp)))
            }
        };
        let mut io = TimedIo {
            stream,
            deadline,
            buf: Vec::new(),
            pos: 0,
        };
        io.write_all(&bytes)?;
        io.read_response(request.method, self.agent.max_body)
    }
}

impl Client {
    fn connect(&self, deadline: &Deadline<'_>) -> Result<TcpStream> {
        let addr = self.agent.authority();
        let unreachable = |source| Error::Unreachable {
            addr: addr.clone(),
            source,
        };
        // IP literals need no resolver; a host name goes through the system's (not bounded by the
        // deadline: give the agent as an IP where DNS may hang).
        let addrs: Vec<SocketAddr> = match self.agent.host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, self.agent.port)],
            Err(_) => (self.agent.host.as_str(), self.agent.port)
                .to_socket_addrs()
                .map_err(unreachable)?
                .collect(),
        };
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
        for a in addrs {
            let remaining = deadline.remaining("connecting")?;
            match TcpStream::connect_timeout(&a, remaining) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    return Err(deadline.timeout("connecting"))
                }
                Err(e) => last = e,
            }
        }
        Err(unreachable(last))
    }
}

fn tls_config(agent: &Agent) -> Result<(Arc<rustls::ClientConfig>, ServerName<'static>)> {
    let ca = agent.ca_file.as_ref().ok_or_else(|| {
        Error::Config(
            "an https agent needs its CA certificate (CONSUL_CACERT): system roots are not used"
                .into(),
        )
    })?;
    let file_err = |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
        Error::Tls(format!("{what} {}: {e}", path.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| file_err("CA file", ca, &e))? {
        let cert = cert.map_err(|e| file_err("CA file", ca, &e))?;
        roots
            .add(cert)
            .map_err(|e| file_err("CA certificate in", ca, &e))?;
    }
    if roots.is_empty() {
        return Err(Error::Tls(format!(
            "CA file {}: no certificate",
            ca.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&agent.client_cert, &agent.client_key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| file_err("client certificate", cert, &e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| file_err("client certificate", cert, &e))?;
            if chain.is_empty() {
                return Err(Error::Tls(format!(
                    "client certificate {}: no certificate",
                    cert.display()
                )));
            }
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| file_err("client key", key, &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| Error::Tls(format!("client certificate and key: {e}")))?
        }
        _ => {
            return Err(Error::Config(
                "CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY go together".into(),
            ))
        }
    };
    let name = agent.tls_server_name.as_deref().unwrap_or(&agent.host);
    let name = ServerName::try_from(name.to_string())
        .map_err(|e| Error::Tls(format!("server name {name:?}: {e}")))?;
    Ok((Arc::new(config), name))
}

/// The request's one deadline, and how its expiry is reported.
struct Deadline<'a> {
    end: Instant,
    budget: Duration,
    method: &'static str,
    path: &'a str,
}

impl Deadline<'_> {
    fn remaining(&self, phase: &'static str) -> Result<Duration> {
        let left = self.end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(self.timeout(phase))
        } else {
            Ok(left)
        }
    }

    fn timeout(&self, phase: &'static str) -> Error {
        Error::Timeout {
            method: self.method,
            path: self.path.to_string(),
            phase,
            after: self.budget,
        }
    }

    fn io(&self, phase: &'static str, e: std::io::Error) -> Error {
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => self.timeout(phase),
            _ => Error::Io {
                method: self.method,
                path: self.path.to_string(),
                phase,
                source: e,
            },
        }
    }

    fn protocol(&self, detail: impl Into<String>) -> Error {
        Error::Protocol {
            method: self.method,
            path: self.path.to_string(),
            detail: detail.into(),
        }
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }
}

/// The connection plus a read buffer; every read and write first shrinks the socket timeouts to what
/// is left of the deadline, so the sum of all waits never exceeds it.
struct TimedIo<'a> {
    stream: Stream,
    deadline: Deadline<'a>,
    buf: Vec<u8>,
    pos: usize,
}

impl TimedIo<'_> {
    fn arm(&self, phase: &'static str) -> Result<()> {
        let left = self.deadline.remaining(phase)?;
        let tcp = self.stream.tcp();
        tcp.set_read_timeout(Some(left))
            .and_then(|_| tcp.set_write_timeout(Some(left)))
            .map_err(|e| self.deadline.io(phase, e))
    }

    fn write_all(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            self.arm("sending the request")?;
            let n = match &mut self.stream {
                Stream::Plain(s) => s.write(bytes),
                Stream::Tls(s) => s.write(bytes),
            }
            .map_err(|e| self.deadline.io("sending the request", e))?;
            if n == 0 {
                return Err(self.deadline.protocol("connection closed while sending"));
            }
            bytes = &bytes[n..];
        }
        loop {
            self.arm("sending the request")?;
            let flushed = match &mut self.stream {
                Stream::Plain(s) => s.flush(),
                Stream::Tls(s) => s.flush(),
            };
            match flushed {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.deadline.io("sending the request", e)),
            }
        }
    }

    /// Reads more bytes into the buffer; `Ok(0)` at end of stream.
    fn fill(&mut self, phase: &'static str) -> Result<usize> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        let mut chunk = [0u8; 16 << 10];
        loop {
            self.arm(phase)?;
            let read = match &mut self.stream {
                Stream::Plain(s) => s.read(&mut chunk),
                Stream::Tls(s) => s.read(&mut chunk),
            };
            match read {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // A TLS peer that closes without close_notify: the end of a read-to-EOF body.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(self.deadline.io(phase, e)),
            }
        }
    }

    /// One CRLF-terminated line (without the CRLF), at most `max` bytes.
    fn line(&mut self, max: usize, phase: &'static str) -> Result<Vec<u8>> {
        loop {
            if let Some(i) = find(&self.buf[self.pos..], b"\r\n") {
                let line = self.buf[self.pos..self.pos + i].to_vec();
                self.pos += i + 2;
                return Ok(line);
            }
            if self.buf.len() - self.pos > max {
                return Err(self
                    .deadline
                    .protocol(format!("line longer than {max} bytes")));
            }
            if self.fill(phase)? == 0 {
                return Err(self.deadline.protocol("connection closed mid-line"));
            }
        }
    }

    /// Exactly `n` more body bytes appended to `out`.
    fn exact(&mut self, n: usize, out: &mut Vec<u8>) -> Result<()> {
        let mut need = n;
        while need > 0 {
            if self.pos == self.buf.len() && self.fill("reading the body")? == 0 {
                return Err(self.deadline.protocol("connection closed mid-body"));
            }
            let take = need.min(self.buf.len() - self.pos);
            out.extend_from_slice(&self.buf[self.pos..self.pos + take]);
            self.pos += take;
            need -= take;
        }
        Ok(())
    }

    fn read_response(&mut self, method: Method, max_body: usize) -> Result<Response> {
        loop {
            let head = self.read_head()?;
            let mut response = Response::default();
            let framing = self.parse_head(&head, &mut response)?;
            // Interim answers (100 Continue) are followed by the real one.
            if (100..200).contains(&response.status) {
                continue;
            }
            let too_large = || Error::BodyTooLarge {
                method: method.as_str(),
                path: self.deadline.path.to_string(),
                limit: max_body,
            };
            let no_body = matches!(response.status, 204 | 304);
            response.body = match framing {
                _ if no_body => Vec::new(),
                Framing::Chunked => self.chunked(max_body)?,
                Framing::Length(n) if n > max_body => return Err(too_large()),
                Framing::Length(n) => {
                    let mut body = Vec::with_capacity(n);
                    self.exact(n, &mut body)?;
                    body
                }
                Framing::Close => {
                    let mut body = self.buf[self.pos..].to_vec();
                    self.pos = self.buf.len();
                    while body.len() <= max_body {
                        let before = self.buf.len();
                        if self.fill("reading the body")? == 0 {
                            break;
                        }
                        body.extend_from_slice(&self.buf[before..]);
                        self.pos = self.buf.len();
                    }
                    if body.len() > max_body {
                        return Err(too_large());
                    }
                    body
                }
            };
            return Ok(response);
        }
    }

    fn read_head(&mut self) -> Result<Vec<u8>> {
        loop {
            if let Some(i) = find(&self.buf[self.pos..], b"\r\n\r\n") {
                let head = self.buf[self.pos..self.pos + i].to_vec();
                self.pos += i + 4;
                return Ok(head);
            }
            if self.buf.len() - self.pos > MAX_HEAD {
                return Err(self
                    .deadline
                    .protocol(format!("headers longer than {MAX_HEAD} bytes")));
            }
            if self.fill("waiting for the answer's headers")? == 0 {
                return Err(self
                    .deadline
                    .protocol("connection closed before the headers ended"));
            }
        }
    }

    fn parse_head(&self, head: &[u8], out: &mut Response) -> Result<Framing> {
        let head =
            std::str::from_utf8(head).map_err(|_| self.deadline.protocol("non-UTF-8 headers"))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let (version, code) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        if !version.starts_with("HTTP/1.") || code.len() != 3 {
            return Err(self
                .deadline
                .protocol(format!("status line {status_line:?}")));
        }
        out.status = code.parse().map_err(|_| {
            self.deadline
                .protocol(format!("status line {status_line:?}"))
        })?;
        let mut length: Option<usize> = None;
        let mut chunked = false;
        for line in lines {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| self.deadline.protocol(format!("header line {line:?}")))?;
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => {
                    let n: usize = value
                        .parse()
                        .map_err(|_| self.deadline.protocol(format!("Content-Length {value:?}")))?;
                    // Two different lengths: which one frames the body is ambiguous; refuse.
                    if length.is_some_and(|l| l != n) {
                        return Err(self.deadline.protocol("conflicting Content-Length headers"));
                    }
                    length = Some(n);
                }
                "transfer-encoding" => {
                    let last = value.rsplit(',').next().unwrap_or_default().trim();
                    if !last.eq_ignore_ascii_case("chunked") {
                        return Err(self
                            .deadline
                            .protocol(format!("Transfer-Encoding {value:?}")));
                    }
                    chunked = true;
                }
                "x-consul-index" => out.index = value.parse().ok(),
                "x-consul-knownleader" => out.known_leader = value.parse().ok(),
                "x-consul-lastcontact" => {
                    out.last_contact = value.parse().ok().map(Duration::from_millis)
                }
                "x-consul-contenthash" => out.content_hash = Some(value.to_string()),
                "x-cache" => out.cache_hit = Some(value.eq_ignore_ascii_case("HIT")),
                _ => {}
            }
        }
        // Chunked framing wins over a Content-Length (RFC 9112 §6.3).
        Ok(match (chunked, length) {
            (true, _) => Framing::Chunked,
            (false, Some(n)) => Framing::Length(n),
            (false, None) => Framing::Close,
        })
    }

    /// A chunked body of at most `max` bytes.
    fn chunked(&mut self, max: usize) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.line(MAX_LINE, "reading the body")?;
            let size = std::str::from_utf8(&line)
                .ok()
                .map(|l| l.split(';').next().unwrap_or_default().trim())
                .and_then(|hex| usize::from_str_radix(hex, 16).ok())
                .ok_or_else(|| self.deadline.protocol("bad chunk size"))?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !self.line(MAX_LINE, "reading the body")?.is_empty() {}
                return Ok(body);
            }
            if size > max.saturating_sub(body.len()) {
                return Err(Error::BodyTooLarge {
                    method: self.deadline.method,
                    path: self.deadline.path.to_string(),
                    limit: max,
                });
            }
            self.exact(size, &mut body)?;
            if !self.line(2, "reading the body")?.is_empty() {
                return Err(self.deadline.protocol("chunk not followed by CRLF"));
            }
        }
    }
}

enum Framing {
    Length(usize),
    Chunked,
    Close,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests;
