//! Real TLS endpoints for meshgate's demo, end-to-end tests and benchmarks: a small certificate authority
//! (rcgen), TLS backends with their own certificates (rustls, one thread per connection), and TLS clients.
//!
//! A gateway never terminates TLS, so these are the parties on either side of it: a client that verifies
//! the backend's certificate for the SNI it sent proves the gateway routed it to the right place.
//!
//! Backend protocol, after the handshake (one command per connection):
//! - `HELLO\n` → `backend=<name> sni=<sni> alpn=<alpn>\n`, then an echo of anything else until EOF;
//! - `BULK <n>\n` → the backend reads the client's bytes to EOF (the client half-closes), hashing them, then
//!   sends the 32-byte SHA-256 of what it read followed by `n` bytes of [`pattern_slice`], and closes;
//! - `ECHO\n` → echoes every byte until EOF (request/response benchmarks).

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
pub use rustls::ClientConfig;
use rustls::{ClientConnection, RootCertStore, ServerConfig, ServerConnection, StreamOwned};
use sha2::{Digest, Sha256};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Errors from this kit (certificate generation or TLS setup).
pub type Error = Box<dyn std::error::Error + Send + Sync>;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate authority that issues backend certificates.
pub struct Pki {
    ca_key: rcgen::KeyPair,
    ca: rcgen::Certificate,
}

/// A certificate chain and its private key.
pub struct Identity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Pki {
    /// A fresh CA named `name`.
    pub fn new(name: &str) -> Result<Pki, Error> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let ca = params.self_signed(&ca_key)?;
        Ok(Pki { ca_key, ca })
    }

    /// A leaf certificate for these DNS names (wildcards allowed), signed by this CA.
    pub fn issue(&self, names: &[&str]) -> Result<Identity, Error> {
        let key = rcgen::KeyPair::generate()?;
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().copied().unwrap_or("backend"),
        );
        let cert = params.signed_by(&key, &self.ca, &self.ca_key)?;
        Ok(Identity {
            chain: vec![cert.der().clone(), self.ca.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }

    /// The CA certificate in PEM, for `openssl s_client -CAfile` and friends.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A client configuration that trusts only this CA, offering `alpn`.
    pub fn client_config(&self, alpn: &[&str]) -> Result<Arc<ClientConfig>, Error> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone())?;
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Ok(Arc::new(config))
    }
}

/// Period of the bulk pattern: a prime, so it never lines up with TLS records, pipe pages or read sizes.
const PATTERN_PERIOD: usize = 65_521;
/// Longest slice [`pattern_slice`] hands out.
pub const PATTERN_MAX_SLICE: usize = 64 * 1024;

fn pattern_table() -> &'static [u8] {
    static TABLE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = Vec::with_capacity(PATTERN_PERIOD + PATTERN_MAX_SLICE);
        let mut x: u64 = 0x243f_6a88_85a3_08d3;
        for _ in 0..PATTERN_PERIOD {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            table.push((x >> 24) as u8);
        }
        // Repeat the start so any slice up to the maximum is contiguous.
        for i in 0..PATTERN_MAX_SLICE {
            table.push(table[i]);
        }
        table
    })
}

/// The bytes of a bulk stream from offset `start`, `len` bytes (at most [`PATTERN_MAX_SLICE`]): both ends
/// can produce and check a stream of any length without storing it.
pub fn pattern_slice(start: u64, len: usize) -> &'static [u8] {
    let at = (start % PATTERN_PERIOD as u64) as usize;
    &pattern_table()[at..at + len.min(PATTERN_MAX_SLICE)]
}

/// A TLS backend serving the protocol above on its own thread.
pub struct Backend {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    /// Serves on `addr` (port 0 for any) as `name` with `identity`.
    pub fn start(name: &str, addr: SocketAddr, identity: Identity) -> Result<Backend, Error> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(identity.chain, identity.key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let config = Arc::new(config);
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let name = name.to_owned();
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("backend-{name}"))
            .spawn(move || {
                for stream in listener.incoming() {
                    if stop2.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let config = config.clone();
                    let name = name.clone();
                    let _ = std::thread::Builder::new()
                        .name("backend-conn".into())
                        .spawn(move || {
                            let _ = serve_one(stream, config, &name);
                        });
                }
            })?;
        Ok(Backend {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_one(stream: TcpStream, config: Arc<ServerConfig>, name: &str) -> Result<(), Error> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let conn = ServerConnection::new(config)?;
    let mut tls = BufReader::new(StreamOwned::new(conn, stream));
    let mut line = String::new();
    tls.read_line(&mut line)?;
    let mut words = line.split_whitespace();
    match words.next() {
        Some("HELLO") => {
            let inner = tls.get_mut();
            let sni = inner.conn.server_name().unwrap_or("").to_owned();
            let alpn = inner
                .conn
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_default();
            writeln!(inner, "backend={name} sni={sni} alpn={alpn}")?;
            inner.flush()?;
            echo(&mut tls)?;
        }
        Some("ECHO") => echo(&mut tls)?,
        Some("BULK") => {
            let n: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let k = tls.read(&mut buf)?;
                if k == 0 {
                    break;
                }
                hasher.update(&buf[..k]);
            }
            let inner = tls.get_mut();
            inner.write_all(&hasher.finalize())?;
            let mut sent = 0u64;
            while sent < n {
                let k = (n - sent).min(PATTERN_MAX_SLICE as u64) as usize;
                inner.write_all(pattern_slice(sent, k))?;
                sent += k as u64;
            }
            inner.conn.send_close_notify();
            inner.flush()?;
            let _ = inner.sock.shutdown(Shutdown::Write);
        }
        _ => {}
    }
    Ok(())
}

fn echo<S: Read + Write>(tls: &mut BufReader<S>) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Serve what BufReader already holds first.
        let k = tls.read(&mut buf)?;
        if k == 0 {
            return Ok(());
        }
        let inner = tls.get_mut();
        inner.write_all(&buf[..k])?;
        inner.flush()?;
    }
}

/// A TLS client stream.
pub type ClientStream = StreamOwned<ClientConnection, TcpStream>;

/// Connects to `addr` (the gateway, or a backend directly) and completes a handshake for `sni`.
pub fn connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<ClientConfig>,
) -> Result<ClientStream, Error> {
    let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    sock.set_nodelay(true)?;
    sock.set_read_timeout(Some(Duration::from_secs(30)))?;
    let name = ServerName::try_from(sni.to_owned())?;
    let conn = ClientConnection::new(config, name)?;
    let mut tls = StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// The ClientHello a client with `config` sends for `sni` (nothing is connected).
pub fn client_hello_bytes(config: Arc<ClientConfig>, sni: &str) -> Result<Vec<u8>, Error> {
    let name = ServerName::try_from(sni.to_owned())?;
    let mut conn = ClientConnection::new(config, name)?;
    let mut out = Vec::new();
    conn.write_tls(&mut out)?;
    Ok(out)
}

/// Sends `HELLO` and returns the backend's one-line answer (`backend=... sni=... alpn=...`).
pub fn hello(addr: SocketAddr, sni: &str, config: Arc<ClientConfig>) -> Result<String, Error> {
    let mut tls = connect(addr, sni, config)?;
    tls.write_all(b"HELLO\n")?;
    let mut reader = BufReader::new(tls);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let tls = reader.get_mut();
    tls.conn.send_close_notify();
    let _ = tls.flush();
    Ok(line.trim_end().to_owned())
}

/// Result of [`bulk`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkResult {
    /// SHA-256 of what the client sent.
    pub sent: [u8; 32],
    /// SHA-256 the backend computed over what it received.
    pub backend_received: [u8; 32],
    /// Bytes the client received after the hash.
    pub received_len: u64,
    /// Whether every received byte matched [`pattern_slice`].
    pub received_intact: bool,
}

/// Sends `up` bytes, half-closes (close_notify + FIN), then reads the backend's hash and `down` bytes.
pub fn bulk(
    addr: SocketAddr,
    sni: &str,
    config: Arc<ClientConfig>,
    up: u64,
    down: u64,
) -> Result<BulkResult, Error> {
    let mut tls = connect(addr, sni, config)?;
    writeln!(tls, "BULK {down}")?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    while sent < up {
        let k = (up - sent).min(PATTERN_MAX_SLICE as u64) as usize;
        // A different offset than the backend's stream, so a mix-up of directions cannot pass.
        let chunk = pattern_slice(sent + 7, k);
        hasher.update(chunk);
        tls.write_all(chunk)?;
        sent += k as u64;
    }
    tls.conn.send_close_notify();
    tls.flush()?;
    tls.sock.shutdown(Shutdown::Write)?;
    let mut backend_received = [0u8; 32];
    tls.read_exact(&mut backend_received)?;
    let mut received_len = 0u64;
    let mut intact = true;
    loop {
        let k = match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            // The backend closes right after close_notify; a reset after all bytes is not a failure here.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        };
        let mut off = 0;
        while off < k {
            let n = (k - off).min(PATTERN_MAX_SLICE);
            intact &= buf[off..off + n] == *pattern_slice(received_len + off as u64, n);
            off += n;
        }
        received_len += k as u64;
    }
    Ok(BulkResult {
        sent: hasher.finalize().into(),
        backend_received,
        received_len,
        received_intact: intact,
    })
}
