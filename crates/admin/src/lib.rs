//! The admin HTTP endpoint: `/metrics` (Prometheus text format), `/ready` (200 or 503), `/routes` (the
//! active table as JSON), and `/` (an index).
//!
//! It runs on threads of its own with blocking sockets, far from the data-plane cores: scrapes are rare,
//! and a slow scraper must never touch a core. Only `GET` and `HEAD` are answered, one request per
//! connection (`Connection: close`). It is unauthenticated, like Envoy's admin port: bind it to loopback
//! (the default) or a private interface.
//!
//! An orchestrator's probe must answer within a second whatever other clients do, so:
//! - each connection is served on its own thread, at most [`MAX_CONNECTIONS`] at once (threads and
//!   descriptors are bounded);
//! - the whole request head must arrive within [`HEAD_DEADLINE`] (a deadline, not a per-read timeout: a
//!   client dripping a byte a second is closed after one second), and the whole response must be taken
//!   within [`WRITE_DEADLINE`];
//! - at the cap, a new connection evicts the oldest one still sending its head (else the oldest one
//!   being answered or closed). A probe sends its head in one segment, so it leaves that state within
//!   microseconds of being accepted, while a flood of slow clients is always older: to push a probe out,
//!   an attacker would need [`MAX_CONNECTIONS`] accepts in that window, and every connection it holds
//!   lives at most [`HEAD_DEADLINE`] anyway;
//! - the expensive bodies (`/metrics`, `/routes`) are rendered one at a time, so a scrape flood costs at
//!   most one CPU; `/ready` never waits for them;
//! - the request body, if any, is never read: after the answer, at most [`LINGER_BYTES`] are drained for
//!   at most [`LINGER_DEADLINE`] so the client reads the answer instead of a reset.
#![forbid(unsafe_code)]

mod probe;
pub use probe::{probe, ProbeError, PROBE_DEADLINE};

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a client gets to send its whole request head.
pub const HEAD_DEADLINE: Duration = Duration::from_secs(1);
/// How long a client gets to read the whole response.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(5);
/// How long, and how many bytes, the endpoint drains after answering before it closes.
pub const LINGER_DEADLINE: Duration = Duration::from_millis(500);
/// See [`LINGER_DEADLINE`].
pub const LINGER_BYTES: usize = 64 * 1024;
/// Longest request head accepted, in bytes.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Connections served at once; a new one beyond it evicts an old one (see the crate docs).
pub const MAX_CONNECTIONS: usize = 64;
/// Stack of each connection's thread (rendering is done by the [`AdminSource`], in plain Rust).
const THREAD_STACK: usize = 256 * 1024;

/// What the endpoint serves; implemented by the binary over the engine and the control plane.
pub trait AdminSource: Send + Sync + 'static {
    /// Prometheus text exposition.
    fn metrics(&self) -> String;
    /// Whether the gateway accepts traffic (every core listens, a table is loaded, not draining).
    fn ready(&self) -> bool;
    /// The active route table as JSON.
    fn routes_json(&self) -> String;
}

/// The readiness gauge every process with an admin endpoint exports, so an alert can tell "up but not
/// ready" (draining, no table yet) from "down", which the scrape's own `up` says.
pub const READY_METRIC: &str = "meshgate_ready";

/// `metrics` (the source's exposition) with [`READY_METRIC`] appended: what `/metrics` answers.
fn with_ready(mut metrics: String, ready: bool) -> String {
    if !metrics.is_empty() && !metrics.ends_with('\n') {
        metrics.push('\n');
    }
    metrics.push_str(&format!(
        "# HELP {READY_METRIC} 1 while /ready answers 200 (serving, not draining), else 0.\n# TYPE {READY_METRIC} gauge\n{READY_METRIC} {}\n",
        u8::from(ready)
    ));
    metrics
}

/// A running admin endpoint.
#[derive(Debug)]
pub struct AdminServer {
    addr: SocketAddr,
    _thread: JoinHandle<()>,
}

impl AdminServer {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Why a request ended without a complete answer.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("request head not complete within {HEAD_DEADLINE:?}")]
    HeadDeadline,
    #[error("response not taken within {WRITE_DEADLINE:?}")]
    WriteDeadline,
    #[error("closed to make room for a newer connection")]
    Evicted,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Where a connection is; decides which one is evicted at the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading the request head.
    Head,
    /// Writing the answer, or draining before the close.
    Answering,
    /// Waiting for its turn to render: evicting it frees nothing until that turn comes, so it goes last.
    Waiting,
    /// Rendering a body (holds the render lock): never evicted, so the lock is always released normally.
    Rendering,
}

impl Phase {
    /// Lower goes first: the slow head senders, then slow readers, then those waiting to render.
    fn eviction_rank(self) -> u8 {
        match self {
            Phase::Head => 0,
            Phase::Answering => 1,
            Phase::Waiting | Phase::Rendering => 2,
        }
    }
}

struct Entry {
    stream: Arc<TcpStream>,
    accepted: Instant,
    phase: Phase,
    evicted: bool,
}

/// The live connections, shared by the accept loop and the connection threads.
#[derive(Default)]
struct Registry {
    conns: Mutex<HashMap<u64, Entry>>,
    /// Signalled whenever a connection ends.
    freed: Condvar,
    /// Serialises the expensive bodies.
    render: Mutex<()>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Entry>> {
        // A panic elsewhere cannot leave the map inconsistent (each update is one statement).
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves connection `id` to `phase`; fails if it was evicted meanwhile.
    fn set_phase(&self, id: u64, phase: Phase) -> Result<(), RequestError> {
        match self.lock().get_mut(&id) {
            Some(e) if !e.evicted => {
                e.phase = phase;
                Ok(())
            }
            _ => Err(RequestError::Evicted),
        }
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
        self.freed.notify_all();
    }

    /// Makes room for one more connection: evicts one if at the cap and waits (briefly: an evicted
    /// connection's blocked read or write fails at once) until the count is under it. False if no room
    /// came within [`HEAD_DEADLINE`].
    fn make_room(&self) -> bool {
        let deadline = Instant::now() + HEAD_DEADLINE;
        let mut conns = self.lock();
        loop {
            if conns.len() < MAX_CONNECTIONS {
                return true;
            }
            // Evict only if no eviction is already on its way to freeing a slot (one blocked on a socket
            // frees it at once; one waiting to render, only after its turn).
            if !conns
                .values()
                .any(|e| e.evicted && e.phase != Phase::Waiting)
            {
                let victim = conns
                    .values_mut()
                    .filter(|e| !e.evicted && e.phase != Phase::Rendering)
                    .min_by_key(|e| (e.phase.eviction_rank(), e.accepted));
                if let Some(v) = victim {
                    v.evicted = true;
                    // Wakes its thread's blocked read or write; its descriptor closes when it exits.
                    let _ = v.stream.shutdown(Shutdown::Both);
                    tracing::debug!(
                        age = ?v.accepted.elapsed(),
                        phase = ?v.phase,
                        "admin: at {MAX_CONNECTIONS} connections, evicted the oldest"
                    );
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            conns = self
                .freed
                .wait_timeout(conns, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Binds `addr` and serves `source` on a background thread.
pub fn serve(addr: SocketAddr, source: Arc<dyn AdminSource>) -> io::Result<AdminServer> {
    let listener = TcpListener::bind(addr)?;
    let addr = listener.local_addr()?;
    let registry = Arc::new(Registry::default());
    let thread = std::thread::Builder::new()
        .name("meshgate-admin".into())
        .spawn(move || {
            // A descriptor held in reserve: when the process runs out (the moment an operator most wants
            // metrics), it is released to accept one admin connection, then taken back.
            let mut reserve = std::fs::File::open("/dev/null").ok();
            let mut next_id = 0u64;
            loop {
                match listener.accept() {
                    Ok((s, _)) => {
                        // At the cap, an old connection makes way (so the cap bounds threads and, but
                        // for this one, descriptors).
                        if registry.make_room() {
                            next_id += 1;
                            spawn_connection(next_id, s, &registry, &source);
                        } else {
                            tracing::debug!(
                                "admin: no connection slot freed; closed a new connection"
                            );
                        }
                    }
                    Err(e) if is_out_of_descriptors(&e) && reserve.is_some() => {
                        reserve = None;
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "admin accept failed");
                        // Don't spin on a persistent error.
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                if reserve.is_none() {
                    reserve = std::fs::File::open("/dev/null").ok();
                }
            }
        })?;
    Ok(AdminServer {
        addr,
        _thread: thread,
    })
}

fn spawn_connection(
    id: u64,
    stream: TcpStream,
    registry: &Arc<Registry>,
    source: &Arc<dyn AdminSource>,
) {
    let stream = Arc::new(stream);
    registry.lock().insert(
        id,
        Entry {
            stream: stream.clone(),
            accepted: Instant::now(),
            phase: Phase::Head,
            evicted: false,
        },
    );
    let (reg, src) = (registry.clone(), source.clone());
    let spawned = std::thread::Builder::new()
        .name("meshgate-admin-conn".into())
        .stack_size(THREAD_STACK)
        .spawn(move || {
            if let Err(e) = handle(id, &stream, &reg, src.as_ref()) {
                tracing::debug!(error = %e, "admin request failed");
            }
            drop(stream);
            reg.remove(id);
        });
    if let Err(e) = spawned {
        tracing::debug!(error = %e, "admin: no thread for a connection");
        registry.remove(id);
    }
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    // EMFILE (24) and ENFILE (23) on Linux.
    matches!(e.raw_os_error(), Some(23 | 24))
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Time left before `deadline`, or `err` if none: a socket timeout of zero would mean "forever".
fn left(deadline: Instant, err: fn() -> RequestError) -> Result<Duration, RequestError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(err())
    } else {
        Ok(left)
    }
}

/// Reads the request head (through the blank line, the end of the stream, or [`MAX_REQUEST_HEAD`]
/// bytes) by `deadline`.
fn read_head(stream: &TcpStream, deadline: Instant) -> Result<Vec<u8>, RequestError> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        stream.set_read_timeout(Some(left(deadline, || RequestError::HeadDeadline)?))?;
        let n = match (&*stream).read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if is_timeout(&e) => return Err(RequestError::HeadDeadline),
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Ok(head);
        }
        // Search from just before the new bytes: the terminator may straddle two reads.
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head_end(&head[from..]) {
            head.truncate(from + end);
            return Ok(head);
        }
        if head.len() >= MAX_REQUEST_HEAD {
            head.truncate(MAX_REQUEST_HEAD);
            return Ok(head);
        }
    }
}

/// The length through the end of the head (`\r\n\r\n` or `\n\n`) in `bytes`, if it is there.
fn head_end(bytes: &[u8]) -> Option<usize> {
    (0..bytes.len()).find_map(|i| {
        let rest = &bytes[i..];
        if rest.starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if rest.starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

/// Writes all of `bytes` by `deadline`.
fn write_by(stream: &TcpStream, mut bytes: &[u8], deadline: Instant) -> Result<(), RequestError> {
    while !bytes.is_empty() {
        stream.set_write_timeout(Some(left(deadline, || RequestError::WriteDeadline)?))?;
        match (&*stream).write(bytes) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Err(RequestError::WriteDeadline),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// After the answer: half-close, then read and discard what the client still sends (an unread body would
/// turn the close into a reset that can destroy the answer in flight), within the linger bounds.
fn linger(stream: &TcpStream) -> Result<(), RequestError> {
    stream.shutdown(Shutdown::Write)?;
    let deadline = Instant::now() + LINGER_DEADLINE;
    let mut drained = 0usize;
    let mut buf = [0u8; 4096];
    while drained < LINGER_BYTES {
        let Ok(t) = left(deadline, || RequestError::HeadDeadline) else {
            break;
        };
        stream.set_read_timeout(Some(t))?;
        match (&*stream).read(&mut buf) {
            Ok(0) => break,
            Ok(n) => drained += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    Ok(())
}

fn handle(
    id: u64,
    stream: &TcpStream,
    registry: &Registry,
    source: &dyn AdminSource,
) -> Result<(), RequestError> {
    let head = read_head(stream, Instant::now() + HEAD_DEADLINE)?;
    registry.set_phase(id, Phase::Answering)?;
    let head = String::from_utf8_lossy(&head);
    let request_line = head.lines().next().unwrap_or("");
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("");
    let path = path.split('?').next().unwrap_or("");
    // The expensive bodies, one at a time.
    let render = |f: &dyn Fn() -> String| -> Result<String, RequestError> {
        registry.set_phase(id, Phase::Waiting)?;
        let _turn = registry.render.lock().unwrap_or_else(|p| p.into_inner());
        registry.set_phase(id, Phase::Rendering)?;
        let body = f();
        registry.set_phase(id, Phase::Answering)?;
        Ok(body)
    };
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            render(&|| with_ready(source.metrics(), source.ready()))?,
        ),
        ("GET" | "HEAD", "/ready") => {
            if source.ready() {
                ("200 OK", "text/plain", "ready\n".to_owned())
            } else {
                ("503 Service Unavailable", "text/plain", "not ready\n".to_owned())
            }
        }
        ("GET" | "HEAD", "/routes") => ("200 OK", "application/json", render(&|| source.routes_json())?),
        ("GET" | "HEAD", "/") => (
            "200 OK",
            "text/plain",
            "meshgate admin\n/metrics  Prometheus metrics\n/ready    readiness (200/503)\n/routes   active route table (JSON)\n".to_owned(),
        ),
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        _ => ("405 Method Not Allowed", "text/plain", "only GET and HEAD\n".to_owned()),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        out.extend_from_slice(body.as_bytes());
    }
    write_by(stream, &out, Instant::now() + WRITE_DEADLINE)?;
    linger(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Fake(AtomicBool);
    impl AdminSource for Fake {
        fn metrics(&self) -> String {
            "meshgate_up 1\n".into()
        }
        fn ready(&self) -> bool {
            self.0.load(Ordering::Relaxed)
        }
        fn routes_json(&self) -> String {
            "{\"routes\":[]}".into()
        }
    }

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).expect("connect");
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out
    }

    #[test]
    fn serves_endpoints() {
        let fake = Arc::new(Fake(AtomicBool::new(true)));
        let server = serve("127.0.0.1:0".parse().expect("addr"), fake.clone()).expect("serve");
        let addr = server.local_addr();
        let m = get(addr, "/metrics");
        assert!(m.starts_with("HTTP/1.1 200 OK"), "{m}");
        assert!(m.contains("\r\n\r\nmeshgate_up 1\n"), "{m}");
        assert!(m.ends_with("\nmeshgate_ready 1\n"), "{m}");
        assert!(get(addr, "/ready").starts_with("HTTP/1.1 200"));
        fake.0.store(false, Ordering::Relaxed);
        assert!(get(addr, "/ready").starts_with("HTTP/1.1 503"));
        assert!(get(addr, "/metrics").ends_with("\nmeshgate_ready 0\n"));
        assert!(get(addr, "/routes").contains("{\"routes\":[]}"));
        assert!(get(addr, "/nope").starts_with("HTTP/1.1 404"));
    }
}
