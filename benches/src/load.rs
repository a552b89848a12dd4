//! What the soak and fault runs share: a meshgate process driven through its config file, signals and
//! admin endpoint; the honest and hostile clients (each a loop bounded by a stop flag, a deadline and a
//! count); and the tallies they keep. Everything is loopback and real sockets; the clients speak TLS to the
//! tlskit backend through the gateway and check every byte they get back.

use crate::common::{admin_get, free_addr, meshgate_bin};
use meshgate_tlskit::{ClientConfig, Pki};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Trust domain of the mesh names the runs use.
pub const TD: &str = "11111111-2222-3333-4444-555555555555.consul";

/// Upper bound on operations of any one client loop, whatever the duration.
pub const MAX_OPS: u64 = 50_000_000;

/// A running gateway, configured through `dir/gateway.toml`.
pub struct Gateway {
    child: Child,
    /// Its working directory (config, catalog, plugins, log).
    pub dir: PathBuf,
    /// Where clients connect.
    pub listen: SocketAddr,
    /// `/metrics`, `/ready`.
    pub admin: SocketAddr,
}

impl Gateway {
    /// Writes `config` (with `{listen}` and `{admin}` filled in) and starts the gateway; returns when
    /// `/ready` answers 200 (at most 30 s).
    pub fn start(dir: &Path, config: &str) -> Gateway {
        let listen = free_addr();
        let admin = free_addr();
        std::fs::create_dir_all(dir).expect("gateway dir");
        let gw_config = config
            .replace("{listen}", &listen.to_string())
            .replace("{admin}", &admin.to_string());
        std::fs::write(dir.join("gateway.toml"), gw_config).expect("write config");
        let log = std::fs::File::create(dir.join("gateway.log")).expect("log file");
        let child = Command::new(meshgate_bin())
            .args(["gateway", "--config", "gateway.toml"])
            .current_dir(dir)
            .env("MESHGATE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", meshgate_bin().display()));
        let gw = Gateway {
            child,
            dir: dir.to_owned(),
            listen,
            admin,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !gw
            .get("/ready")
            .is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
        {
            assert!(
                Instant::now() < deadline,
                "gateway not ready in 30 s; log:\n{}",
                gw.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        gw
    }

    /// Rewrites the config (placeholders filled as at start) and sends SIGHUP.
    pub fn reload(&self, config: &str) {
        let text = config
            .replace("{listen}", &self.listen.to_string())
            .replace("{admin}", &self.admin.to_string());
        let tmp = self.dir.join("gateway.toml.new");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, self.dir.join("gateway.toml")).expect("replace config");
        self.signal("HUP");
    }

    /// Sends a signal by name (`HUP`, `TERM`).
    pub fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status();
    }

    /// One admin request; the whole response.
    pub fn get(&self, path: &str) -> std::io::Result<String> {
        admin_get(self.admin, path)
    }

    /// Sum of the samples whose series starts with `series` (name plus, optionally, a label prefix).
    pub fn metric(&self, series: &str) -> f64 {
        let Ok(text) = self.get("/metrics") else {
            return f64::NAN;
        };
        text.lines()
            .filter(|l| l.starts_with(series))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits (at most `limit`) until `series` reaches `want`; the value last seen.
    pub fn wait_metric(&self, series: &str, want: f64, limit: Duration) -> f64 {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.metric(series);
            if v >= want || Instant::now() >= deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory, KiB.
    pub fn rss_kib(&self) -> u64 {
        proc_status(self.child.id(), "VmRSS:")
    }

    /// Threads.
    pub fn threads(&self) -> u64 {
        proc_status(self.child.id(), "Threads:")
    }

    /// Open descriptors.
    pub fn fds(&self) -> u64 {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count() as u64)
            .unwrap_or(0)
    }

    /// The gateway's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default()
    }

    /// Waits (at most `limit`) for the process to exit; its exit code, `None` if it had to be killed.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proc_status(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The mesh name of a service in dc1.
pub fn sni(service: &str) -> String {
    format!("{service}.default.dc1.internal.{TD}")
}

/// A PKI whose backends answer for every name the runs use.
pub fn pki() -> (Pki, Arc<ClientConfig>) {
    let pki = Pki::new("meshgate-soak").expect("pki");
    let client = pki.client_config(&["h2"]).expect("client config");
    (pki, client)
}

/// Tallies of one kind of client.
#[derive(Default)]
pub struct Tally {
    /// Operations that did what they should.
    pub ok: AtomicU64,
    /// Operations that failed (connect, TLS, a closed stream, a timeout).
    pub failed: AtomicU64,
    /// Operations whose bytes came back altered or short: must stay 0.
    pub corrupt: AtomicU64,
    /// Bytes checked end to end.
    pub bytes: AtomicU64,
    /// Latencies of the successful operations, µs (bounded count).
    latencies: Mutex<Vec<u32>>,
    /// First few failure messages.
    errors: Mutex<Vec<String>>,
}

/// Latency samples kept per tally.
const MAX_SAMPLES: usize = 4_000_000;

impl Tally {
    /// Records a success taking `took`.
    pub fn success(&self, took: Duration) {
        self.ok.fetch_add(1, Relaxed);
        let mut l = self.latencies.lock().expect("latencies");
        if l.len() < MAX_SAMPLES {
            l.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
        }
    }

    /// Records a failure.
    pub fn failure(&self, why: String) {
        self.failed.fetch_add(1, Relaxed);
        let mut e = self.errors.lock().expect("errors");
        if e.len() < 5 {
            e.push(why);
        }
    }

    /// Records altered bytes.
    pub fn corruption(&self, why: String) {
        self.corrupt.fetch_add(1, Relaxed);
        self.failure(why);
    }

    /// Success rate in percent (100 with no operation).
    pub fn success_pct(&self) -> f64 {
        let ok = self.ok.load(Relaxed) as f64;
        let total = ok + self.failed.load(Relaxed) as f64;
        if total == 0.0 {
            100.0
        } else {
            100.0 * ok / total
        }
    }

    /// Latency percentile (0–100), ms.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        let mut l = self.latencies.lock().expect("latencies").clone();
        if l.is_empty() {
            return f64::NAN;
        }
        l.sort_unstable();
        let i = ((p / 100.0) * (l.len() - 1) as f64).round() as usize;
        f64::from(l[i.min(l.len() - 1)]) / 1000.0
    }

    /// Latencies recorded from index `from` on: their maximum, ms, and the new length.
    pub fn max_since_ms(&self, from: usize) -> (f64, usize) {
        let l = self.latencies.lock().expect("latencies");
        let max = l.get(from..).and_then(|s| s.iter().max().copied());
        (max.map_or(0.0, |m| f64::from(m) / 1000.0), l.len())
    }

    /// The first failure messages.
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().expect("errors").clone()
    }
}

/// When client loops stop: a flag and a deadline.
#[derive(Clone)]
pub struct Stop {
    flag: Arc<AtomicBool>,
    deadline: Instant,
}

impl Stop {
    /// Stops after `limit` or when [`Stop::now`] is called.
    pub fn after(limit: Duration) -> Stop {
        Stop {
            flag: Arc::new(AtomicBool::new(false)),
            deadline: Instant::now() + limit,
        }
    }

    /// Stop now.
    pub fn now(&self) {
        self.flag.store(true, Relaxed);
    }

    /// Whether to stop.
    pub fn done(&self) -> bool {
        self.flag.load(Relaxed) || Instant::now() >= self.deadline
    }
}

/// New connections: connect, handshake, `HELLO`, check the answer names our SNI, close.
pub fn hello_loop(
    addr: SocketAddr,
    name: String,
    client: Arc<ClientConfig>,
    stop: Stop,
    t: Arc<Tally>,
) {
    for _ in 0..MAX_OPS {
        if stop.done() {
            return;
        }
        let start = Instant::now();
        match meshgate_tlskit::hello(addr, &name, client.clone()) {
            Ok(line) if line.contains(&format!("sni={name}")) => t.success(start.elapsed()),
            Ok(line) => t.corruption(format!("hello answered {line:?}")),
            Err(e) => t.failure(format!("hello: {e}")),
        }
    }
}

/// Keep-alive: one TLS connection doing echo round trips of varied sizes, checked byte for byte; a new
/// connection every 500 round trips.
pub fn keepalive_loop(
    addr: SocketAddr,
    name: String,
    client: Arc<ClientConfig>,
    stop: Stop,
    t: Arc<Tally>,
) {
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64 ^ u64::from(addr.port());
    let mut ops = 0u64;
    'outer: while !stop.done() && ops < MAX_OPS {
        let mut tls = match meshgate_tlskit::connect(addr, &name, client.clone()) {
            Ok(t) => t,
            Err(e) => {
                t.failure(format!("keep-alive connect: {e}"));
                continue;
            }
        };
        if let Err(e) = tls.write_all(b"ECHO\n") {
            t.failure(format!("keep-alive: {e}"));
            continue;
        }
        for _ in 0..500 {
            if stop.done() {
                break 'outer;
            }
            ops += 1;
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let len = 16 + (rng % 4000) as usize;
            let msg = meshgate_tlskit::pattern_slice(rng, len);
            let start = Instant::now();
            let mut back = vec![0u8; len];
            let r = tls.write_all(msg).and_then(|()| tls.read_exact(&mut back));
            match r {
                Ok(()) if back == msg => {
                    t.bytes.fetch_add(len as u64, Relaxed);
                    t.success(start.elapsed());
                }
                Ok(()) => t.corruption("echo came back altered".into()),
                Err(e) => {
                    t.failure(format!("keep-alive: {e}"));
                    continue 'outer;
                }
            }
        }
    }
}

/// Bulk: `mib` MiB each way per transfer, SHA-256 of the upload checked by the backend and every byte of
/// the download checked against the pattern.
pub fn bulk_loop(
    addr: SocketAddr,
    name: String,
    client: Arc<ClientConfig>,
    mib: u64,
    stop: Stop,
    t: Arc<Tally>,
) {
    let n = mib << 20;
    for _ in 0..MAX_OPS {
        if stop.done() {
            return;
        }
        let start = Instant::now();
        match meshgate_tlskit::bulk(addr, &name, client.clone(), n, n) {
            Ok(r) if r.sent == r.backend_received && r.received_len == n && r.received_intact => {
                t.bytes.fetch_add(2 * n, Relaxed);
                t.success(start.elapsed());
            }
            Ok(r) => t.corruption(format!(
                "bulk altered: upload hash {}, download {} of {n} bytes, intact {}",
                if r.sent == r.backend_received {
                    "ok"
                } else {
                    "WRONG"
                },
                r.received_len,
                r.received_intact
            )),
            Err(e) => t.failure(format!("bulk: {e}")),
        }
    }
}

/// Slowloris: sends the first bytes of a real ClientHello one every `drip`, and counts a success when the
/// gateway closes the connection before the hello is complete (it must never wait forever).
pub fn slowloris_loop(addr: SocketAddr, hello: Vec<u8>, drip: Duration, stop: Stop, t: Arc<Tally>) {
    for _ in 0..MAX_OPS {
        if stop.done() {
            return;
        }
        let start = Instant::now();
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
            t.failure("slowloris connect".into());
            continue;
        };
        let _ = s.set_read_timeout(Some(drip));
        let mut closed = false;
        // Never the whole hello: the last byte is kept back.
        for b in hello.iter().take(hello.len().saturating_sub(1)) {
            if stop.done() {
                return;
            }
            if s.write_all(&[*b]).is_err() {
                closed = true;
                break;
            }
            let mut buf = [0u8; 64];
            match s.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(_) => {
                    t.corruption("slowloris got bytes back".into());
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        if closed {
            t.success(start.elapsed());
        } else {
            t.failure("slowloris outlived its hello".into());
        }
    }
}

/// Junk: random bytes instead of a ClientHello; the gateway must close (within 5 s) and send nothing.
pub fn junk_loop(addr: SocketAddr, stop: Stop, t: Arc<Tally>) {
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..MAX_OPS {
        if stop.done() {
            return;
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let junk = meshgate_tlskit::pattern_slice(rng, 64 + (rng % 1024) as usize);
        let start = Instant::now();
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
            t.failure("junk connect".into());
            continue;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.write_all(junk);
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => t.success(start.elapsed()),
            Ok(_) => t.corruption("junk got bytes back".into()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => t.success(start.elapsed()),
            Err(e) => t.failure(format!("junk not closed: {e}")),
        }
    }
}

/// Spawns a named client thread.
pub fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .expect("spawn client thread")
}
