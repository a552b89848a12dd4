//! What every benchmark binary shares: free loopback addresses, the meshgate binary under test, and one
//! bounded request to an admin endpoint.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

/// A free loopback address.
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// The release binary (`MESHGATE_BIN` overrides).
pub fn meshgate_bin() -> PathBuf {
    std::env::var_os("MESHGATE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/meshgate")
        })
}

/// Whether the admin endpoint at `admin` answers `/ready` with 200.
pub fn admin_ready(admin: SocketAddr) -> bool {
    admin_get(admin, "/ready").is_ok_and(|r| r.lines().next().is_some_and(|l| l.contains(" 200 ")))
}

/// One request to an admin endpoint; the whole response, status line first. Connect and every read
/// are bounded (2 s).
pub fn admin_get(admin: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    Ok(response)
}
