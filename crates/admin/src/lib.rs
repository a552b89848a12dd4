//! The admin HTTP endpoint: `/metrics` (Prometheus text format), `/ready` (200 or 503), `/routes` (the
//! active table as JSON), and `/` (an index).
//!
//! It runs on its own thread with blocking sockets, far from the data-plane cores: scrapes are rare, and a
//! slow scraper must never touch a core. Requests are served one at a time with short socket timeouts;
//! only `GET` and `HEAD` are answered. Bind it to loopback (the default) or a private interface: it is
//! unauthenticated, like Envoy's admin port.
#![forbid(unsafe_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a client gets to send its request and read the answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request head accepted, in bytes.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// What the endpoint serves; implemented by the binary over the engine and the control plane.
pub trait AdminSource: Send + Sync + 'static {
    /// Prometheus text exposition.
    fn metrics(&self) -> String;
    /// Whether the gateway accepts traffic (every core listens, a table is loaded, not draining).
    fn ready(&self) -> bool;
    /// The active route table as JSON.
    fn routes_json(&self) -> String;
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

/// Binds `addr` and serves `source` on a background thread.
pub fn serve(addr: SocketAddr, source: Arc<dyn AdminSource>) -> io::Result<AdminServer> {
    let listener = TcpListener::bind(addr)?;
    let addr = listener.local_addr()?;
    let thread = std::thread::Builder::new()
        .name("meshgate-admin".into())
        .spawn(move || {
            // A descriptor held in reserve: when the process runs out (the moment an operator most wants
            // metrics), it is released to accept one admin connection, then taken back.
            let mut reserve = std::fs::File::open("/dev/null").ok();
            loop {
                match listener.accept() {
                    Ok((s, _)) => {
                        if let Err(e) = handle(s, source.as_ref()) {
                            tracing::debug!(error = %e, "admin request failed");
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

fn is_out_of_descriptors(e: &io::Error) -> bool {
    // EMFILE (24) and ENFILE (23) on Linux.
    matches!(e.raw_os_error(), Some(23 | 24))
}

fn handle(stream: TcpStream, source: &dyn AdminSource) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    // Read through a shared reference: no duplicated descriptor, so this works when descriptors are short.
    let mut reader = BufReader::new(&stream).take(MAX_REQUEST_HEAD as u64);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Read (and ignore) the headers, so the client sees its request consumed.
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("");
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            source.metrics(),
        ),
        ("GET" | "HEAD", "/ready") => {
            if source.ready() {
                ("200 OK", "text/plain", "ready\n".to_owned())
            } else {
                ("503 Service Unavailable", "text/plain", "not ready\n".to_owned())
            }
        }
        ("GET" | "HEAD", "/routes") => ("200 OK", "application/json", source.routes_json()),
        ("GET" | "HEAD", "/") => (
            "200 OK",
            "text/plain",
            "meshgate admin\n/metrics  Prometheus metrics\n/ready    readiness (200/503)\n/routes   active route table (JSON)\n".to_owned(),
        ),
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        _ => ("405 Method Not Allowed", "text/plain", "only GET and HEAD\n".to_owned()),
    };
    let mut out = &stream;
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if method != "HEAD" {
        out.write_all(body.as_bytes())?;
    }
    out.flush()
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
        assert!(m.ends_with("meshgate_up 1\n"), "{m}");
        assert!(get(addr, "/ready").starts_with("HTTP/1.1 200"));
        fake.0.store(false, Ordering::Relaxed);
        assert!(get(addr, "/ready").starts_with("HTTP/1.1 503"));
        assert!(get(addr, "/routes").contains("{\"routes\":[]}"));
        assert!(get(addr, "/nope").starts_with("HTTP/1.1 404"));
    }
}
