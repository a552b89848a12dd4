//! `meshgate-sidecars`: meshgate's sidecar against the proxies that do the same job in a Consul mesh —
//! Consul 1.8.7's built-in proxy (`consul connect proxy`) and stunnel4 — **in one run**, on loopback.
//! This binary owns the whole comparison: starting each pair of proxies, the workloads, the CPU
//! accounting, a look at the handshakes each pair actually does, and the tables.
//!
//! Each pair is an originating proxy (plain TCP in, mTLS out, presenting a client certificate and
//! verifying the server against the mesh CA) in front of a terminating proxy (mTLS in, client
//! certificate required and verified, plain TCP out) in front of an echo application in this process:
//! 1. **meshgate**: `meshgate sidecar` for web (upstream `api` on a local port) and for api (public mTLS
//!    listener, local app), file catalog, an allow intention, certificates from `meshgate ca`;
//! 2. **consul**: `consul connect proxy -service web -upstream api:<port>` and `consul connect proxy
//!    -service api -listen … -service-addr … -register`, against a `-dev` agent (ACLs off: intentions
//!    default to allow), certificates from the agent's CA;
//! 3. **stunnel**: two stunnel4 processes (client mode and server mode with `verifyChain` and
//!    `requireCert`), TLS 1.3 only, with the same certificates as meshgate.
//!
//! Plus **direct**: the client talks to the application. Workloads, each bounded by count and time,
//! medians of rounds: new connections (connect, one line, its echo, close) with 4 clients (CPU per
//! connection of both proxies, conns/s) and 1 client (p50/p99, added p50 against direct); bulk (one stream
//! of N MiB through the pair to an application that counts and acknowledges it: CPU s/GB, Gbit/s).
//! Every process started is killed by PID when the run ends or fails.
//!
//! `cargo build --release -p meshgate -p meshgate-bench && target/release/meshgate-sidecars [--quick]
//! [--rounds R] [--seconds S] [--bulk-mib M] [--pairs meshgate,consul,stunnel] [--out FILE]`

mod common;
// Shared by the bench binaries; each uses a part.
#[allow(dead_code)]
mod procfs;

use common::{admin_ready, free_addr, meshgate_bin};
use meshgate_consul::lab::{DevAgent, Options as LabOptions};
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Trust domain of the meshgate CA (and the stunnel pair, which uses the same certificates).
const TD: &str = "11111111-2222-3333-4444-555555555555.consul";
/// Upper bound on operations per client per measurement, whatever the duration.
const MAX_OPS_PER_CLIENT: usize = 1_000_000;
/// A client gives up after this many failed operations in one measurement (a broken pair must not spin).
const MAX_FAILURES: usize = 20;
/// Bound on any one socket read or write of the clients and the application.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a pair becoming able to carry one echo round trip end to end.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections made before measuring a pair (caches, page faults, the catalog's first use), during which
/// the handshakes are looked at.
const WARMUP: usize = 100;
/// Pause before each measurement: the previous one's connections finish closing (stunnel's
/// per-connection threads exit), so that each measurement's CPU is its own.
const SETTLE: Duration = Duration::from_millis(200);

/// Which pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Meshgate,
    Consul,
    Stunnel,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Meshgate, Kind::Consul, Kind::Stunnel];

    fn name(self) -> &'static str {
        match self {
            Kind::Meshgate => "meshgate",
            Kind::Consul => "consul connect proxy",
            Kind::Stunnel => "stunnel4",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Kind::Meshgate => "meshgate",
            Kind::Consul => "consul",
            Kind::Stunnel => "stunnel",
        }
    }
}

struct Options {
    rounds: usize,
    seconds: f64,
    bulk_mib: u64,
    pairs: Vec<Kind>,
    out: PathBuf,
}

fn options() -> Options {
    let mut o = Options {
        rounds: 3,
        seconds: 3.0,
        bulk_mib: 256,
        pairs: Kind::ALL.to_vec(),
        out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results/sidecars.md"),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--quick" => {
                o.rounds = 1;
                o.seconds = 1.0;
                o.bulk_mib = 64;
                i += 1;
                continue;
            }
            "--rounds" => o.rounds = v.parse().unwrap_or(o.rounds).max(1),
            "--seconds" => o.seconds = v.parse().unwrap_or(o.seconds),
            "--bulk-mib" => o.bulk_mib = v.parse().unwrap_or(o.bulk_mib).max(1),
            "--out" => o.out = v.into(),
            "--pairs" => {
                let mut pairs = Vec::new();
                for name in v.split(',').filter(|n| !n.is_empty()) {
                    match Kind::ALL.iter().find(|k| k.key() == name) {
                        Some(k) => pairs.push(*k),
                        None => {
                            eprintln!("unknown pair {name} (meshgate, consul, stunnel)");
                            std::process::exit(2);
                        }
                    }
                }
                o.pairs = pairs;
            }
            other => {
                eprintln!("unknown option {other}");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    o
}

// ---------------------------------------------------------------------------------------------------
// Processes

/// Child processes, killed (SIGKILL, by PID) and reaped on drop.
#[derive(Default)]
struct Procs {
    children: Vec<(String, Child)>,
}

impl Procs {
    fn spawn(&mut self, label: &str, cmd: &mut Command, log: &Path) -> Result<u32, String> {
        let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("start {label}: {e}"))?;
        let pid = child.id();
        self.children.push((label.to_owned(), child));
        Ok(pid)
    }

    /// The first child that has exited, with its status.
    fn exited(&mut self) -> Option<String> {
        self.children.iter_mut().find_map(|(label, c)| {
            c.try_wait()
                .ok()
                .flatten()
                .map(|s| format!("{label} exited ({s})"))
        })
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A running pair of proxies.
struct Pair {
    kind: Kind,
    /// Where clients connect: the originating proxy's plain-TCP port.
    entry: SocketAddr,
    /// The terminating proxy's mTLS port (its ServerHellos are looked at).
    public: u16,
    /// Both proxies, origin first.
    pids: [u32; 2],
    /// The Consul agent: the built-in proxy calls it twice per connection (`/v1/health/connect/<svc>`
    /// to resolve the upstream, `/v1/agent/connect/authorize` inbound), so its CPU is reported beside
    /// the proxies'.
    agent_pid: Option<u32>,
    /// The proxies; on drop they go before the agent they talk to.
    procs: Procs,
    /// The Consul pair's dev agent (killed and its directory removed on drop).
    agent: Option<DevAgent>,
    /// The pair's configs and logs, removed on drop.
    dir: PathBuf,
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.procs = Procs::default();
        self.agent = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The paths of one service's certificate files.
struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    roots: PathBuf,
}

/// `meshgate ca`: a root for [`TD`] and leaves for web and api (ECDSA P-256, SPIFFE URIs), used by the
/// meshgate and stunnel pairs.
fn make_certs(dir: &Path) -> Result<(CertFiles, CertFiles), String> {
    let bin = meshgate_bin();
    let run = |args: &[&str]| -> Result<(), String> {
        let out = Command::new(&bin)
            .args(args)
            .output()
            .map_err(|e| format!("{}: {e} (cargo build --release -p meshgate)", bin.display()))?;
        if !out.status.success() {
            return Err(format!(
                "meshgate {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    };
    let d = |rel: &str| dir.join(rel).display().to_string();
    run(&["ca", "init", "--trust-domain", TD, "--out", &d("ca")])?;
    for svc in ["web", "api"] {
        run(&[
            "ca",
            "issue",
            "--ca",
            &d("ca"),
            "--service",
            svc,
            "--datacenter",
            "dc1",
            "--out",
            &d(svc),
        ])?;
    }
    let files = |svc: &str| CertFiles {
        cert: dir.join(svc).join("cert.pem"),
        key: dir.join(svc).join("key.pem"),
        roots: dir.join(svc).join("roots.pem"),
    };
    Ok((files("web"), files("api")))
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// meshgate: two sidecars, one file catalog (dc1) naming both, an allow intention web → api.
fn start_meshgate(dir: &Path, certs: &Path, app: SocketAddr) -> Result<Pair, String> {
    let (entry, public) = (free_addr(), free_addr());
    let admins = [free_addr(), free_addr()];
    let catalog = format!("config = {{ dir = \"catalog\", datacenter = \"dc1\", trust_domain = \"{TD}\" }}\nallow_dirs = [\"catalog\"]\n");
    write(
        &dir.join("catalog/web.hcl"),
        &format!("service {{\n  name = \"web\"\n  port = 1\n  connect {{ sidecar_service {{\n    address = \"127.0.0.1\"\n    port = {}\n    proxy {{ upstreams = [{{ destination_name = \"api\", local_bind_port = {} }}] }}\n  }} }}\n}}\n", free_addr().port(), entry.port()),
    )?;
    write(
        &dir.join("catalog/api.hcl"),
        &format!("service {{\n  name = \"api\"\n  port = {}\n  connect {{ sidecar_service {{\n    address = \"127.0.0.1\"\n    port = {}\n  }} }}\n}}\n", app.port(), public.port()),
    )?;
    write(
        &dir.join("catalog/intentions.hcl"),
        "Kind = \"service-intentions\"\nName = \"api\"\nSources = [{ Name = \"web\", Action = \"allow\" }]\n",
    )?;
    let mut procs = Procs::default();
    let mut pids = [0; 2];
    for (i, (svc, admin)) in [("web", admins[0]), ("api", admins[1])]
        .into_iter()
        .enumerate()
    {
        let certs = certs.join(svc).display().to_string();
        let config = dir.join(format!("{svc}.toml"));
        write(
            &config,
            &format!("[sidecar]\nservice = \"{svc}\"\ndatacenter = \"dc1\"\nadmin = \"{admin}\"\ndefault_intention = \"deny\"\n\n[tls]\ncert_file = \"{certs}/cert.pem\"\nkey_file = \"{certs}/key.pem\"\nroots_file = \"{certs}/roots.pem\"\n\n[catalog]\nplugin = \"file-catalog\"\n{catalog}"),
        )?;
        pids[i] = procs.spawn(
            &format!("meshgate sidecar {svc}"),
            Command::new(meshgate_bin())
                .args(["sidecar", "--config"])
                .arg(&config)
                .env("MESHGATE_LOG", "warn"),
            &dir.join(format!("{svc}.log")),
        )?;
    }
    let deadline = Instant::now() + READY_TIMEOUT;
    while !admins.iter().all(|a| admin_ready(*a)) {
        if let Some(why) = procs.exited() {
            return Err(format!("{why}: {}", log_tail(dir, &["web.log", "api.log"])));
        }
        if Instant::now() > deadline {
            return Err("sidecars not ready".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut pair = Pair {
        kind: Kind::Meshgate,
        entry,
        public: public.port(),
        pids,
        agent_pid: None,
        procs,
        agent: None,
        dir: dir.to_owned(),
    };
    wait_echo(&mut pair, &["web.log", "api.log"])?;
    Ok(pair)
}

/// The PID of the agent whose HTTP API is on `http` (the lab does not expose its child).
fn agent_pid(http: u16) -> Option<u32> {
    let needle = format!("-http-port\0{http}\0");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline)
            .contains(&needle)
            .then_some(pid)
    })
}

/// Consul: a dev agent and two built-in proxies; api's registers itself so that web's resolves it.
fn start_consul(
    dir: &Path,
    consul: Result<&Path, &String>,
    app: SocketAddr,
) -> Result<Pair, String> {
    let bin = consul.map_err(|e| format!("no Consul binary: {e}"))?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let agent = DevAgent::start(LabOptions::dc("dc1")).map_err(|e| format!("dev agent: {e}"))?;
    let http = agent.http_addr().to_string();
    let (entry, public) = (free_addr(), free_addr());
    let mut procs = Procs::default();
    let api = procs.spawn(
        "consul connect proxy (api)",
        Command::new(bin).args([
            "connect",
            "proxy",
            "-http-addr",
            &http,
            "-log-level",
            "warn",
            "-service",
            "api",
            "-service-addr",
            &app.to_string(),
            "-listen",
            &public.to_string(),
            "-register",
        ]),
        &dir.join("api.log"),
    )?;
    let web = procs.spawn(
        "consul connect proxy (web)",
        Command::new(bin).args([
            "connect",
            "proxy",
            "-http-addr",
            &http,
            "-log-level",
            "warn",
            "-service",
            "web",
            "-upstream",
            &format!("api:{}", entry.port()),
        ]),
        &dir.join("web.log"),
    )?;
    let mut pair = Pair {
        kind: Kind::Consul,
        entry,
        public: public.port(),
        pids: [web, api],
        agent_pid: agent_pid(agent.http_addr().port()),
        procs,
        agent: Some(agent),
        dir: dir.to_owned(),
    };
    wait_echo(&mut pair, &["web.log", "api.log"])?;
    Ok(pair)
}

/// The stunnel binary on `PATH` (Debian names it `stunnel4`, with `stunnel` beside it).
fn stunnel_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find_map(|d| {
        ["stunnel4", "stunnel"]
            .iter()
            .map(|n| d.join(n))
            .find(|p| p.is_file())
    })
}

/// stunnel: a client-mode and a server-mode process with the meshgate pair's certificates.
fn start_stunnel(
    dir: &Path,
    web: &CertFiles,
    api: &CertFiles,
    app: SocketAddr,
) -> Result<Pair, String> {
    let bin =
        stunnel_binary().ok_or("stunnel4 not installed (apt-get install stunnel4)".to_owned())?;
    let (entry, public) = (free_addr(), free_addr());
    // No pid file, no syslog, errors only (a line per connection would be logging work the others skip);
    // TCP_NODELAY both ways as the other two set it (without it the handshake's small writes meet
    // delayed ACKs).
    let common = |accept: SocketAddr, connect: SocketAddr, c: &CertFiles| {
        format!(
            "cert = {}\nkey = {}\nCAfile = {}\nverifyChain = yes\nsslVersionMin = TLSv1.3\naccept = {accept}\nconnect = {connect}\nsocket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n",
            c.cert.display(),
            c.key.display(),
            c.roots.display()
        )
    };
    let global = "foreground = yes\npid =\nsyslog = no\ndebug = 3\n";
    write(
        &dir.join("web.conf"),
        &format!(
            "{global}\n[web]\nclient = yes\n{}",
            common(entry, public, web)
        ),
    )?;
    write(
        &dir.join("api.conf"),
        &format!(
            "{global}\n[api]\nrequireCert = yes\n{}",
            common(public, app, api)
        ),
    )?;
    let mut procs = Procs::default();
    let mut pids = [0; 2];
    for (i, svc) in ["web", "api"].into_iter().enumerate() {
        pids[i] = procs.spawn(
            &format!("stunnel {svc}"),
            Command::new(&bin).arg(dir.join(format!("{svc}.conf"))),
            &dir.join(format!("{svc}.log")),
        )?;
    }
    let mut pair = Pair {
        kind: Kind::Stunnel,
        entry,
        public: public.port(),
        pids,
        agent_pid: None,
        procs,
        agent: None,
        dir: dir.to_owned(),
    };
    wait_echo(&mut pair, &["web.log", "api.log"])?;
    Ok(pair)
}

fn log_tail(dir: &Path, files: &[&str]) -> String {
    files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            format!(
                "[{f}] {}",
                lines[lines.len().saturating_sub(5)..].join(" | ")
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Polls until one echo round trip through the pair works ([`READY_TIMEOUT`]); a proxy that exits ends
/// the wait at once.
fn wait_echo(pair: &mut Pair, logs: &[&str]) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(why) = pair.procs.exited() {
            return Err(format!("{why}: {}", log_tail(&pair.dir, logs)));
        }
        let last = match echo_once(pair.entry) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() > deadline {
            return Err(format!(
                "no echo through the pair in {READY_TIMEOUT:?} (last: {last}): {}",
                log_tail(&pair.dir, logs)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------------
// The application and the clients

/// The application: echoes lines; `BULK <n>` then n bytes are counted and answered `OK <n>`. A thread
/// per connection, as every pair sees the same one.
fn start_app() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind the application");
    let addr = l.local_addr().expect("application address");
    std::thread::spawn(move || {
        for s in l.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let _ = s.set_read_timeout(Some(IO_TIMEOUT));
                let _ = s.set_write_timeout(Some(IO_TIMEOUT));
                let mut r = BufReader::with_capacity(64 << 10, &s);
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                    let answer = match line.strip_prefix("BULK ") {
                        Some(n) => {
                            let want: u64 = n.trim().parse().unwrap_or(0);
                            let got = std::io::copy(&mut (&mut r).take(want), &mut std::io::sink())
                                .unwrap_or(0);
                            format!("OK {got}\n")
                        }
                        None => std::mem::take(&mut line),
                    };
                    if (&s).write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
    addr
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// Reads until a newline; the bytes read.
fn read_line(s: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while !buf[..n].contains(&b'\n') {
        if n == buf.len() {
            return Err(std::io::Error::other("answer too long"));
        }
        match s.read(&mut buf[n..])? {
            0 => return Err(std::io::Error::other("closed without an answer")),
            k => n += k,
        }
    }
    Ok(n)
}

/// One new connection: connect, `ping`, its echo, close.
fn echo_once(addr: SocketAddr) -> std::io::Result<()> {
    let mut s = connect(addr)?;
    s.write_all(b"ping\n")?;
    let mut buf = [0u8; 64];
    let n = read_line(&mut s, &mut buf)?;
    if &buf[..n] != b"ping\n" {
        return Err(std::io::Error::other(format!(
            "echo came back as {:?}",
            String::from_utf8_lossy(&buf[..n])
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// CPU accounting

/// One reading of a process's CPU time.
#[derive(Clone, Copy, Default)]
struct Cpu {
    /// Σ `/proc/PID/task/*/schedstat` run time: nanosecond-exact, but only threads alive now.
    live_ns: u64,
    /// utime + stime of `/proc/PID/stat`: clock ticks, but including threads that have exited.
    total_ns: u64,
}

fn cpu(pid: u32) -> Cpu {
    let proc = format!("/proc/{pid}");
    Cpu {
        live_ns: procfs::tasks_cpu_ns(&proc),
        total_ns: procfs::stat_cpu_ns(&proc),
    }
}

/// CPU seconds a process used between two readings. The exact per-thread sum, unless threads exited
/// meanwhile (stunnel runs a thread per connection): then the process total, whose 10 ms ticks are
/// small against what those threads used. Two ticks of rounding separate the two figures otherwise.
fn cpu_secs(a: Cpu, b: Cpu) -> f64 {
    let live = b.live_ns as f64 - a.live_ns as f64;
    let total = b.total_ns as f64 - a.total_ns as f64;
    let slack = 2.0 * procfs::tick_ns() as f64;
    if total > live + slack {
        total / 1e9
    } else {
        live.max(0.0) / 1e9
    }
}

/// Readings of a pair's proxies and of its agent.
struct CpuMark {
    proxies: Vec<Cpu>,
    agent: Option<Cpu>,
}

impl CpuMark {
    fn take(pair: Option<&Pair>) -> CpuMark {
        CpuMark {
            proxies: pair.map_or_else(Vec::new, |p| p.pids.iter().map(|&pid| cpu(pid)).collect()),
            agent: pair.and_then(|p| p.agent_pid).map(cpu),
        }
    }

    /// (both proxies' CPU seconds, the agent's) since `self`.
    fn since(&self, pair: Option<&Pair>) -> (f64, f64) {
        let now = CpuMark::take(pair);
        let proxies = self
            .proxies
            .iter()
            .zip(&now.proxies)
            .map(|(a, b)| cpu_secs(*a, *b))
            .sum();
        let agent = self
            .agent
            .zip(now.agent)
            .map_or(f64::NAN, |(a, b)| cpu_secs(a, b));
        (proxies, agent)
    }
}

// ---------------------------------------------------------------------------------------------------
// Workloads

/// One measurement of new connections.
#[derive(Clone, Copy)]
struct ConnSample {
    rate: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_us: f64,
    agent_us: f64,
    failed: usize,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `clients` threads making new connections for `seconds` (each bounded by [`MAX_OPS_PER_CLIENT`] and
/// [`MAX_FAILURES`]).
fn new_connections(
    addr: SocketAddr,
    pair: Option<&Pair>,
    clients: usize,
    seconds: f64,
) -> ConnSample {
    let stop = Arc::new(AtomicBool::new(false));
    let mark = CpuMark::take(pair);
    let start = Instant::now();
    let results: Vec<(Vec<f64>, usize, Option<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let stop = stop.clone();
                s.spawn(move || {
                    let (mut lat, mut failed, mut first_error) = (Vec::new(), 0, None);
                    while !stop.load(Ordering::Relaxed)
                        && lat.len() < MAX_OPS_PER_CLIENT
                        && failed < MAX_FAILURES
                    {
                        let t0 = Instant::now();
                        match echo_once(addr) {
                            Ok(()) => lat.push(t0.elapsed().as_secs_f64() * 1e6),
                            Err(e) => {
                                failed += 1;
                                first_error.get_or_insert_with(|| e.to_string());
                            }
                        }
                    }
                    (lat, failed, first_error)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs_f64(seconds));
        stop.store(true, Ordering::Relaxed);
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let (cpu, agent) = mark.since(pair);
    let failed = results.iter().map(|r| r.1).sum();
    if let Some(e) = results.iter().find_map(|r| r.2.clone()) {
        eprintln!("  {failed} connections failed, first: {e}");
    }
    let mut lat: Vec<f64> = results.into_iter().flat_map(|r| r.0).collect();
    lat.sort_by(f64::total_cmp);
    let n = lat.len().max(1) as f64;
    ConnSample {
        rate: lat.len() as f64 / elapsed,
        p50_us: percentile(&lat, 0.5),
        p99_us: percentile(&lat, 0.99),
        cpu_us: if pair.is_some() {
            cpu * 1e6 / n
        } else {
            f64::NAN
        },
        agent_us: agent * 1e6 / n,
        failed,
    }
}

/// One stream of `mib` MiB to the application, which acknowledges the count: (Gbit/s, proxies' CPU
/// s/GB). CPU is read once the acknowledgement arrives and before the connection closes, so a
/// per-connection thread (stunnel's) is still there to be read exactly.
fn bulk(addr: SocketAddr, pair: Option<&Pair>, mib: u64) -> Result<(f64, f64), String> {
    let n = mib << 20;
    let chunk = vec![0x5au8; 256 << 10];
    let mark = CpuMark::take(pair);
    let start = Instant::now();
    let mut s = connect(addr).map_err(|e| format!("connect: {e}"))?;
    let io = |e: std::io::Error| format!("bulk: {e}");
    s.write_all(format!("BULK {n}\n").as_bytes()).map_err(io)?;
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..k]).map_err(io)?;
        left -= k as u64;
    }
    let mut buf = [0u8; 64];
    let k = read_line(&mut s, &mut buf).map_err(io)?;
    let secs = start.elapsed().as_secs_f64();
    let (cpu, _) = mark.since(pair);
    drop(s);
    let answer = String::from_utf8_lossy(&buf[..k]);
    if answer.trim() != format!("OK {n}") {
        return Err(format!("the application answered {answer:?}"));
    }
    let gb = n as f64 / 1e9;
    let cpu_per_gb = if pair.is_some() { cpu / gb } else { f64::NAN };
    Ok((n as f64 * 8.0 / secs / 1e9, cpu_per_gb))
}

// ---------------------------------------------------------------------------------------------------
// What handshake each pair does: its terminating proxy's ServerHellos, seen on loopback

/// What one ServerHello says.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Hello {
    version: u16,
    suite: u16,
    group: Option<u16>,
    resumed: bool,
}

/// The ServerHello at the start of a TCP payload: the fixed fields (record and handshake headers,
/// version, random, session id, suite, compression), then the extensions that say TLS 1.3, the key
/// exchange group and a resumption (`pre_shared_key`); `None` when `p` does not start with one.
fn parse_server_hello(p: &[u8]) -> Option<Hello> {
    // Record: handshake (22), then the handshake message: ServerHello (2).
    if p.len() < 9 || p[0] != 22 || p[5] != 2 {
        return None;
    }
    let mut i = 9 + 2 + 32; // headers, legacy_version, random
    let sid = usize::from(*p.get(i)?);
    i += 1 + sid;
    let suite = u16::from_be_bytes([*p.get(i)?, *p.get(i + 1)?]);
    i += 3; // suite, compression
    let ext_len = usize::from(u16::from_be_bytes([*p.get(i)?, *p.get(i + 1)?]));
    i += 2;
    let end = (i + ext_len).min(p.len());
    let mut hello = Hello {
        version: u16::from_be_bytes([p[9], p[10]]),
        suite,
        group: None,
        resumed: false,
    };
    while i + 4 <= end {
        let kind = u16::from_be_bytes([p[i], p[i + 1]]);
        let len = usize::from(u16::from_be_bytes([p[i + 2], p[i + 3]]));
        let body = p.get(i + 4..i + 4 + len)?;
        match kind {
            0x002b if len == 2 => hello.version = u16::from_be_bytes([body[0], body[1]]),
            0x0033 if len >= 2 => hello.group = Some(u16::from_be_bytes([body[0], body[1]])),
            0x0029 => hello.resumed = true,
            _ => {}
        }
        i += 4 + len;
    }
    Some(hello)
}

/// The TCP payload of an IPv4 packet from source port `sport`, with (dport, seq) to tell the two copies
/// loopback shows of each packet apart from distinct packets.
fn tcp_payload(ip: &[u8], sport: u16) -> Option<((u16, u32), &[u8])> {
    if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 6 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    let tcp = ip.get(ihl..total)?;
    if tcp.len() < 20 || u16::from_be_bytes([tcp[0], tcp[1]]) != sport {
        return None;
    }
    let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let off = usize::from(tcp[12] >> 4) * 4;
    Some(((dport, seq), tcp.get(off..)?))
}

fn suite_name(s: u16) -> String {
    match s {
        0x1301 => "AES_128_GCM_SHA256".into(),
        0x1302 => "AES_256_GCM_SHA384".into(),
        0x1303 => "CHACHA20_POLY1305_SHA256".into(),
        other => format!("0x{other:04x}"),
    }
}

fn group_name(g: Option<u16>) -> String {
    match g {
        Some(0x001d) => "X25519".into(),
        Some(0x0017) => "P-256".into(),
        Some(0x0018) => "P-384".into(),
        Some(other) => format!("0x{other:04x}"),
        None => "–".into(),
    }
}

/// Makes the warm-up connections while a packet socket watches the terminating proxy's port; one table
/// row: protocol, suite, key exchange, resumed handshakes. Without CAP_NET_RAW only the warm-up runs.
fn warm_up_and_probe(pair: &Pair) -> String {
    let sock = socket2::Socket::new(
        socket2::Domain::PACKET,
        socket2::Type::DGRAM,
        // ETH_P_ALL in network byte order: every protocol, from the network header on.
        Some(socket2::Protocol::from(i32::from(0x0003u16.to_be()))),
    );
    let sock = match sock {
        Ok(s) => s,
        Err(e) => {
            for _ in 0..WARMUP {
                let _ = echo_once(pair.entry);
            }
            return format!(
                "| {} | not probed: packet socket: {e} | | | |\n",
                pair.kind.name()
            );
        }
    };
    let _ = sock.set_recv_buffer_size(8 << 20);
    let _ = sock.set_read_timeout(Some(Duration::from_millis(50)));
    let stop = AtomicBool::new(false);
    let public = pair.public;
    let hellos = std::thread::scope(|s| {
        let capture = s.spawn(|| {
            let mut seen = HashSet::new();
            let mut hellos = Vec::new();
            let mut buf = vec![0u8; 70_000];
            let end = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                let Ok(n) = (&sock).read(&mut buf) else {
                    continue;
                };
                let Some((id, payload)) = tcp_payload(&buf[..n], public) else {
                    continue;
                };
                if let Some(h) = parse_server_hello(payload) {
                    if seen.insert(id) {
                        hellos.push(h);
                    }
                }
            }
            hellos
        });
        // Let the capture thread start reading before the first handshake.
        std::thread::sleep(Duration::from_millis(100));
        for _ in 0..WARMUP {
            let _ = echo_once(pair.entry);
        }
        std::thread::sleep(Duration::from_millis(100));
        stop.store(true, Ordering::Relaxed);
        capture.join().unwrap_or_default()
    });
    let Some(first) = hellos.first() else {
        return format!("| {} | no ServerHello seen | | | |\n", pair.kind.name());
    };
    let kinds: HashSet<(u16, u16, Option<u16>)> = hellos
        .iter()
        .map(|h| (h.version, h.suite, h.group))
        .collect();
    let resumed = hellos.iter().filter(|h| h.resumed).count();
    format!(
        "| {} | {}{} | {} | {} | {resumed} of {} |\n",
        pair.kind.name(),
        match first.version {
            0x0304 => "TLS 1.3".to_owned(),
            0x0303 => "TLS 1.2".to_owned(),
            v => format!("0x{v:04x}"),
        },
        if kinds.len() > 1 { " (mixed)" } else { "" },
        suite_name(first.suite),
        group_name(first.group),
        hellos.len()
    )
}

// ---------------------------------------------------------------------------------------------------
// The run

fn fmt(x: f64, d: usize) -> String {
    if x.is_nan() {
        "–".to_owned()
    } else {
        format!("{x:.d$}")
    }
}

/// meshgate's figure against the best peer's (the lower for costs, the higher for rates).
fn ratio(ours: f64, peers: &[f64], lower_is_better: bool) -> String {
    let peers = peers.iter().copied().filter(|x| !x.is_nan());
    let best = if lower_is_better {
        peers.fold(f64::NAN, f64::min)
    } else {
        peers.fold(f64::NAN, f64::max)
    };
    if ours.is_nan() || best.is_nan() || best == 0.0 {
        "–".to_owned()
    } else {
        format!("{:.2}×", ours / best)
    }
}

/// Every measurement of one path (direct or a pair), one entry per round.
#[derive(Default)]
struct Results {
    loaded: Vec<ConnSample>,
    single: Vec<ConnSample>,
    bulk: Vec<(f64, f64)>,
}

impl Results {
    fn loaded(&self, f: fn(&ConnSample) -> f64) -> f64 {
        median(self.loaded.iter().map(f).collect())
    }
    fn single(&self, f: fn(&ConnSample) -> f64) -> f64 {
        median(self.single.iter().map(f).collect())
    }
    fn bulk(&self, f: fn(&(f64, f64)) -> f64) -> f64 {
        median(self.bulk.iter().map(f).collect())
    }
    fn failed(&self) -> usize {
        self.loaded
            .iter()
            .chain(&self.single)
            .map(|s| s.failed)
            .sum()
    }
}

fn main() {
    let o = options();
    let consul = if o.pairs.contains(&Kind::Consul) {
        meshgate_consul::lab::consul_binary().map_err(|e| e.to_string())
    } else {
        Err("not requested".into())
    };
    let dir = std::env::temp_dir().join(format!("meshgate-sidecars-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let app = start_app();
    let (web, api) = match make_certs(&dir.join("certs")) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("certificates: {e}");
            std::process::exit(1);
        }
    };

    let mut pairs: Vec<Pair> = Vec::new();
    let mut not_measured: Vec<(Kind, String)> = Vec::new();
    let mut handshakes = String::new();
    for &kind in &o.pairs {
        eprintln!("starting {}", kind.name());
        let d = dir.join(kind.key());
        let started = match kind {
            Kind::Meshgate => start_meshgate(&d, &dir.join("certs"), app),
            Kind::Consul => start_consul(&d, consul.as_deref(), app),
            Kind::Stunnel => start_stunnel(&d, &web, &api, app),
        };
        match started {
            Ok(p) => {
                handshakes.push_str(&warm_up_and_probe(&p));
                pairs.push(p);
            }
            Err(e) => {
                eprintln!("{}: not measured: {e}", kind.name());
                not_measured.push((kind, e));
            }
        }
    }

    // Index 0 is direct; then the pairs in order.
    let mut results: Vec<Results> = (0..=pairs.len()).map(|_| Results::default()).collect();
    for round in 0..o.rounds {
        for (i, r) in results.iter_mut().enumerate() {
            let pair = i.checked_sub(1).and_then(|j| pairs.get(j));
            let (name, addr) = pair.map_or(("direct", app), |p| (p.kind.name(), p.entry));
            eprintln!("round {}/{}: {name}", round + 1, o.rounds);
            std::thread::sleep(SETTLE);
            r.loaded.push(new_connections(addr, pair, 4, o.seconds));
            std::thread::sleep(SETTLE);
            r.single.push(new_connections(addr, pair, 1, o.seconds));
            std::thread::sleep(SETTLE);
            match bulk(addr, pair, o.bulk_mib) {
                Ok(b) => r.bulk.push(b),
                Err(e) => {
                    eprintln!("  bulk: {e}");
                    r.bulk.push((f64::NAN, f64::NAN));
                }
            }
        }
    }

    let names: Vec<&str> = std::iter::once("direct")
        .chain(pairs.iter().map(|p| p.kind.name()))
        .collect();
    let mg = pairs
        .iter()
        .position(|p| p.kind == Kind::Meshgate)
        .map(|i| i + 1);
    let peers: Vec<usize> = pairs
        .iter()
        .enumerate()
        .filter(|(_, p)| p.kind != Kind::Meshgate)
        .map(|(i, _)| i + 1)
        .collect();
    let vs = |i: usize, f: &dyn Fn(&Results) -> f64, lower: bool| -> String {
        if Some(i) != mg {
            return "–".to_owned();
        }
        let p: Vec<f64> = peers.iter().map(|&j| f(&results[j])).collect();
        ratio(f(&results[i]), &p, lower)
    };
    let missing: String = not_measured
        .iter()
        .map(|(k, why)| {
            format!(
                "| {} | not measured: {} |\n",
                k.name(),
                why.replace('\n', " ")
            )
        })
        .collect();

    let mut report = format!(
        "Medians of {} rounds, {:.0} s per connection measurement, {} MiB bulk, on {} CPUs. \"vs best \
         peer\" is meshgate's figure over the better of consul connect proxy and stunnel4 in the same run.\n\n",
        o.rounds,
        o.seconds,
        o.bulk_mib,
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    report.push_str("### Handshakes (the terminating proxy's ServerHellos during the warm-up)\n\n| pair | protocol | cipher suite | key exchange | resumed |\n|---|---|---|---|---|\n");
    report.push_str(&handshakes);
    report.push_str(&missing);

    report.push_str(
        "\n### New connections (plain TCP → origin proxy → mTLS → terminating proxy → app)\n\n",
    );
    report.push_str("| pair | conns/s (4 clients) | proxies' CPU µs/conn | vs best peer | Consul agent CPU µs/conn | p50 ms (1 client) | p99 ms | added p50 ms | vs best peer | failed |\n|---|---|---|---|---|---|---|---|---|---|\n");
    let d_p50 = results[0].single(|s| s.p50_us);
    let added = |r: &Results| r.single(|s| s.p50_us) - d_p50;
    for (i, r) in results.iter().enumerate() {
        report.push_str(&format!(
            "| {} | {:.0} | {} | {} | {} | {:.3} | {:.3} | {} | {} | {} |\n",
            names[i],
            r.loaded(|s| s.rate),
            fmt(r.loaded(|s| s.cpu_us), 1),
            vs(i, &|r| r.loaded(|s| s.cpu_us), true),
            fmt(r.loaded(|s| s.agent_us), 1),
            r.single(|s| s.p50_us) / 1e3,
            r.single(|s| s.p99_us) / 1e3,
            if i == 0 {
                "–".to_owned()
            } else {
                format!("{:.3}", added(r) / 1e3)
            },
            vs(i, &added, true),
            r.failed(),
        ));
    }
    report.push_str(&missing);

    report.push_str(&format!(
        "\n### Bulk (one stream of {} MiB, client → app)\n\n| pair | Gbit/s | vs best peer | proxies' CPU s/GB | vs best peer |\n|---|---|---|---|---|\n",
        o.bulk_mib
    ));
    for (i, r) in results.iter().enumerate() {
        report.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            names[i],
            fmt(r.bulk(|b| b.0), 2),
            vs(i, &|r| r.bulk(|b| b.0), false),
            fmt(r.bulk(|b| b.1), 3),
            vs(i, &|r| r.bulk(|b| b.1), true),
        ));
    }
    report.push_str(&missing);

    drop(pairs);
    let _ = std::fs::remove_dir_all(&dir);
    println!("{report}");
    if let Some(parent) = o.out.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    if let Err(e) = std::fs::write(&o.out, &report) {
        eprintln!("{}: {e}", o.out.display());
    }
}
