//! Loopback addresses and the plain clients the tests probe with: free and dead ports, a connection
//! that expects to be closed, an HTTP/1.0 GET, and summing Prometheus samples.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A loopback port that binds now, below the kernel's ephemeral range: the Consul lab's picker, so the
/// lab's agents and these tests' gateways and sidecars draw from one counter (see `lab::free_port`).
pub fn free_port() -> u16 {
    meshgate_consul::lab::free_port().expect("a free loopback port")
}

/// An address on which nothing listens (connections are refused).
pub fn dead_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Connects to `addr`, writes `bytes`, and reports whether the peer closed the connection (EOF or reset)
/// within 10 s without sending anything.
pub fn closed_after_sending(addr: SocketAddr, bytes: &[u8]) -> bool {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _ = s.write_all(bytes);
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
    }
}

/// `GET path` over HTTP/1.0; the body, or `None` if the server is not answering yet.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}

/// Sum of a metric family's samples whose line contains every filter.
pub fn metric(body: &str, family: &str, filters: &[&str]) -> u64 {
    body.lines()
        .filter(|l| l.starts_with(family) && filters.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// One call from an application through a sidecar's upstream port (the line apps of
/// [`super::line_app`]): the answer line, trimmed, or `None` when the mesh closed the connection.
pub fn call_line(port: u16, line: &str) -> Option<String> {
    let s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut r = BufReader::new(s);
    r.get_mut().write_all(format!("{line}\n").as_bytes()).ok()?;
    let mut answer = String::new();
    r.read_line(&mut answer).ok()?;
    (!answer.is_empty()).then(|| answer.trim().to_owned())
}
