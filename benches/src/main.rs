//! `meshgate-bench`: meshgate against the routers users would otherwise deploy — HAProxy, nginx
//! (`ssl_preread`), sniproxy — and the direct connection, **in one run**, in front of the same TLS backend
//! on loopback. Every figure is a median of several rounds; every comparison is a ratio within the run.
//! The router's CPU time per unit of work is the headline: client, backend and router share two cores.
//!
//! Workloads (each bounded by a count and a duration):
//! 1. new TLS connections: TCP connect, TLS 1.3 handshake, a request line and its answer, close — with 4
//!    clients (loaded) and 1 client (one at a time);
//! 2. keep-alive: 4 persistent TLS connections doing 64-byte request/response round trips;
//! 3. bulk: one TLS stream, and 4 in parallel;
//! 4. memory: resident memory per established idle connection (raw TCP after a ClientHello);
//! 5. route-table scaling (meshgate): connection cost with 10, 10k and 1M routes;
//! 6. worker scaling: 1 and 2 workers.
//!
//! Usage: `benches/run.sh [--quick]` (see `docs/performance.md`).

mod common;
// Shared by the bench binaries; each uses a part.
#[allow(dead_code)]
mod procfs;
mod routers;

use meshgate_tlskit::{Backend, ClientConfig, Pki};
use routers::{Kind, Router, Spec};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SNI: &str = "api.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul";
/// Upper bound on operations per client per measurement, whatever the duration.
const MAX_OPS_PER_CLIENT: usize = 1_000_000;

struct Options {
    rounds: usize,
    seconds: f64,
    bulk_mib: u64,
    idle: Vec<usize>,
    route_counts: Vec<usize>,
    out: Option<std::path::PathBuf>,
    /// Routers to measure (direct is always measured: every ratio needs it).
    routers: Option<Vec<String>>,
    /// Worker counts to measure.
    workers: Vec<usize>,
    /// Only the connection, keep-alive and bulk tables (no memory, route-scaling or hook sections).
    core_only: bool,
    /// Only the memory-per-idle-connection table.
    idle_only: bool,
    /// Count each router's system calls per new connection and per keep-alive request (`strace -c`,
    /// one extra pass per workload with 1 worker; strace slows the router, so no timing is taken).
    syscalls: bool,
}

/// System calls per operation of each router, from `strace -c -f` attached for one extra pass of each
/// workload (strace slows the router: only the counts are used). The five most frequent calls are
/// named; "total" counts them all.
fn syscall_table(routers: &[Router], client: &Arc<ClientConfig>, seconds: f64) -> String {
    let mut out = String::from("### System calls per operation (1 router worker, `strace -c -f`)\n\n| router | workload | total per op | most frequent (per op) |\n|---|---|---|---|\n");
    for r in routers {
        let workloads: [(&str, &dyn Fn() -> Sample); 2] = [
            ("new connection (4 clients)", &|| {
                new_connections(r, client, 4, seconds)
            }),
            ("keep-alive request (4 conns)", &|| {
                keep_alive(r, client, 4, seconds)
            }),
        ];
        for (what, run) in workloads {
            eprintln!("syscalls: {}, {what}", r.kind.name());
            match strace_counts(r, run) {
                Some((ops, counts)) if ops > 0.0 => {
                    let total = counts
                        .iter()
                        .find(|(n, _)| n == "total")
                        .map_or(0.0, |c| c.1);
                    let top: Vec<String> = counts
                        .iter()
                        .filter(|(n, _)| n != "total")
                        .take(5)
                        .map(|(n, c)| format!("{n} {:.2}", c / ops))
                        .collect();
                    out.push_str(&format!(
                        "| {} | {what} | {:.1} | {} |\n",
                        r.kind.name(),
                        total / ops,
                        top.join(", ")
                    ));
                }
                _ => out.push_str(&format!(
                    "| {} | {what} | – | strace unavailable |\n",
                    r.kind.name()
                )),
            }
        }
    }
    out.push('\n');
    out
}

/// Runs `run` with `strace -c -f` attached to every process of `router`; the operations done and
/// (syscall, calls) sorted by calls, "total" included.
fn strace_counts(router: &Router, run: &dyn Fn() -> Sample) -> Option<(f64, Vec<(String, f64)>)> {
    let file =
        std::env::temp_dir().join(format!("meshgate-bench-strace-{}.txt", std::process::id()));
    let mut cmd = std::process::Command::new("strace");
    cmd.args(["-c", "-f", "-q", "-o"]).arg(&file);
    for pid in router.pids() {
        cmd.args(["-p", &pid.to_string()]);
    }
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    // Attaching takes a moment; the first operations may be missed, the count stays per operation.
    std::thread::sleep(Duration::from_millis(500));
    let sample = run();
    // strace writes its summary when interrupted.
    let pid = i32::try_from(child.id()).ok()?;
    let _ = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status();
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        if child.try_wait().ok().flatten().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&file).ok()?;
    let _ = std::fs::remove_file(&file);
    let mut counts: Vec<(String, f64)> = text
        .lines()
        .filter_map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            // `% time  seconds  usecs/call  calls  [errors]  syscall` (the total line too).
            let name = (*t.last()?).to_owned();
            let calls = t.get(3)?;
            Some((name, calls.parse::<f64>().ok()?))
        })
        .collect();
    counts.sort_by(|a, b| b.1.total_cmp(&a.1));
    Some((sample.ops, counts))
}

/// Appends the targets table: meshgate against the best peer of this run, one row per target.
fn push_targets(report: &mut String, rows: &[String]) {
    if rows.is_empty() {
        return;
    }
    report.push_str("\n### Targets: meshgate against the best peer in this run\n\n| workers | what | meshgate | best peer | ratio | target |\n|---|---|---|---|---|---|\n");
    for r in rows {
        report.push_str(r);
        report.push('\n');
    }
}

fn options() -> Options {
    let mut o = Options {
        rounds: 3,
        seconds: 3.0,
        bulk_mib: 1024,
        // This workplace caps open files at 20000 per process (hard limit), and each relayed connection
        // holds two sockets in the router: about 9000 is the most any router can hold here.
        idle: vec![4_000, 9_000],
        route_counts: vec![10, 10_000, 1_000_000],
        out: None,
        routers: None,
        workers: vec![1, 2],
        core_only: false,
        idle_only: false,
        syscalls: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        let list = |v: &str| {
            v.split(',')
                .filter_map(|x| x.parse().ok())
                .collect::<Vec<usize>>()
        };
        match args[i].as_str() {
            "--quick" => {
                o.rounds = 1;
                o.seconds = 1.0;
                o.bulk_mib = 256;
                o.idle = vec![2_000];
                o.route_counts = vec![10, 10_000];
                i += 1;
                continue;
            }
            "--bench" => {
                i += 1;
                continue;
            }
            "--idle-only" => {
                o.idle_only = true;
                i += 1;
                continue;
            }
            "--core-only" => {
                o.core_only = true;
                i += 1;
                continue;
            }
            "--syscalls" => {
                o.syscalls = true;
                i += 1;
                continue;
            }
            "--routers" => o.routers = Some(v.split(',').map(str::to_owned).collect()),
            "--workers" => o.workers = list(&v),
            "--rounds" => o.rounds = v.parse().unwrap_or(o.rounds),
            "--seconds" => o.seconds = v.parse().unwrap_or(o.seconds),
            "--bulk-mib" => o.bulk_mib = v.parse().unwrap_or(o.bulk_mib),
            "--idle" => o.idle = list(&v),
            "--routes" => o.route_counts = list(&v),
            "--out" => o.out = Some(v.into()),
            other => {
                eprintln!("unknown option {other}");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    o
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One measurement: a rate, latency percentiles (µs), and router CPU per operation (µs).
#[derive(Clone, Copy)]
struct Sample {
    rate: f64,
    p50: f64,
    p99: f64,
    cpu_per_op: f64,
    /// Operations completed.
    ops: f64,
    /// Times the router's threads were switched out (went to sleep or were preempted) per operation.
    switches_per_op: f64,
}

/// Runs `clients` threads calling `op` repeatedly for `seconds`; `op` returns false to stop early.
fn drive(
    router: &Router,
    clients: usize,
    seconds: f64,
    op: impl Fn(usize) -> Box<dyn FnMut() -> bool + Send> + Sync,
) -> Sample {
    let stop = Arc::new(AtomicBool::new(false));
    let cpu0 = router.cpu_ns();
    let sw0 = router.switches();
    let start = Instant::now();
    let lat: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let stop = stop.clone();
                let mut f = op(c);
                s.spawn(move || {
                    let mut lat = Vec::new();
                    while !stop.load(Ordering::Relaxed) && lat.len() < MAX_OPS_PER_CLIENT {
                        let t0 = Instant::now();
                        if !f() {
                            break;
                        }
                        lat.push(t0.elapsed().as_secs_f64() * 1e6);
                    }
                    lat
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs_f64(seconds));
        stop.store(true, Ordering::Relaxed);
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu0
        .zip(router.cpu_ns())
        .map(|(a, b)| b.saturating_sub(a) as f64 / 1e3);
    let mut lat = lat;
    lat.sort_by(f64::total_cmp);
    let n = lat.len().max(1) as f64;
    let switches = sw0
        .zip(router.switches())
        .map(|(a, b)| b.saturating_sub(a) as f64);
    Sample {
        rate: lat.len() as f64 / elapsed,
        ops: lat.len() as f64,
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        cpu_per_op: cpu.map_or(f64::NAN, |c| c / n),
        switches_per_op: switches.map_or(f64::NAN, |c| c / n),
    }
}

/// New TLS connections, each: connect, handshake, request line, answer, close.
fn new_connections(
    router: &Router,
    client: &Arc<ClientConfig>,
    clients: usize,
    seconds: f64,
) -> Sample {
    let addr = router.addr;
    let probe = router.probe();
    drive(router, clients, seconds, |_| {
        let client = client.clone();
        Box::new(
            move || match meshgate_tlskit::hello(addr, SNI, client.clone()) {
                Ok(_) => true,
                Err(e) => {
                    eprintln!("connection failed: {e}; router: {}", probe.describe());
                    false
                }
            },
        )
    })
}

/// Persistent TLS connections doing 64-byte request/response round trips.
fn keep_alive(router: &Router, client: &Arc<ClientConfig>, clients: usize, seconds: f64) -> Sample {
    let addr = router.addr;
    let probe = router.probe();
    drive(router, clients, seconds, |_| {
        // A connection that cannot be set up is reported and its client measures nothing (a panic here
        // would end the whole run).
        let tls = meshgate_tlskit::connect(addr, SNI, client.clone()).and_then(|mut tls| {
            tls.write_all(b"ECHO\n")?;
            Ok(tls)
        });
        let mut tls = match tls {
            Ok(t) => t,
            Err(e) => {
                eprintln!(
                    "keep-alive connection failed: {e}; router: {}",
                    probe.describe()
                );
                return Box::new(|| false);
            }
        };
        let req = [b'x'; 64];
        let mut resp = [0u8; 64];
        Box::new(move || tls.write_all(&req).is_ok() && tls.read_exact(&mut resp).is_ok())
    })
}

/// `streams` TLS streams of `mib` MiB each, backend to client, in parallel: (Gbit/s, router CPU s/GB),
/// NaN when a transfer failed (reported, not fatal: a peer may lack half-close).
/// One bulk measurement, per GB moved: the router's CPU, and what its two endpoints paid — the
/// receiving client's threads, and the rest of this process (the sending backend) — and the TCP
/// segments every sender on the machine sent (`OutSegs`, /proc/net/snmp).
#[derive(Debug, Clone, Copy)]
struct Bulk {
    gbit: f64,
    router: f64,
    client: f64,
    backend: f64,
    segments: f64,
    /// Times the receiving client went to sleep waiting for bytes, per MB.
    client_sleeps: f64,
}

impl Bulk {
    const FAILED: Bulk = Bulk {
        gbit: f64::NAN,
        router: f64::NAN,
        client: f64::NAN,
        backend: f64::NAN,
        segments: f64::NAN,
        client_sleeps: f64::NAN,
    };
}

/// CPU time of the calling thread so far, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    procfs::schedstat_ns("/proc/thread-self/schedstat")
}

/// CPU time of this whole process so far, threads that have ended included, in nanoseconds.
fn own_cpu_ns() -> u64 {
    procfs::stat_cpu_ns("/proc/self")
}

/// Times the calling thread went to sleep so far.
fn thread_sleeps() -> u64 {
    procfs::status_count("/proc/thread-self/status", "voluntary_ctxt_switches")
}

/// TCP segments sent by the whole machine so far.
fn tcp_out_segments() -> u64 {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "OutSegs")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

fn bulk(router: &Router, client: &Arc<ClientConfig>, mib: u64, streams: usize) -> Bulk {
    let cpu0 = router.cpu_ns();
    let (own0, segs0) = (own_cpu_ns(), tcp_out_segments());
    let start = Instant::now();
    let client_cpu = std::sync::atomic::AtomicU64::new(0);
    let client_sleeps = std::sync::atomic::AtomicU64::new(0);
    let ok = std::thread::scope(|s| {
        let handles: Vec<_> = (0..streams)
            .map(|_| {
                let client = client.clone();
                let addr = router.addr;
                let (client_cpu, client_sleeps) = (&client_cpu, &client_sleeps);
                // Named so a profiler can pick the receiving client out (`perf report --comm`).
                let spawned = std::thread::Builder::new().name("bulk-client".into());
                spawned
                    .spawn_scoped(s, move || {
                        let (t0, z0) = (thread_cpu_ns(), thread_sleeps());
                        let r = meshgate_tlskit::bulk(addr, SNI, client, 0, mib << 20);
                        client_cpu.fetch_add(thread_cpu_ns().saturating_sub(t0), Ordering::Relaxed);
                        client_sleeps
                            .fetch_add(thread_sleeps().saturating_sub(z0), Ordering::Relaxed);
                        r
                    })
                    .expect("spawn a bulk client thread")
            })
            .collect();
        let mut ok = true;
        for h in handles {
            match h.join() {
                Ok(Ok(r)) if r.received_intact && r.received_len == mib << 20 => {}
                Ok(Ok(_)) => {
                    eprintln!("{}: bulk data corrupted or short", router.kind.name());
                    ok = false;
                }
                Ok(Err(e)) => {
                    eprintln!("{}: bulk transfer failed: {e}", router.kind.name());
                    ok = false;
                }
                Err(_) => ok = false,
            }
        }
        ok
    });
    if !ok {
        return Bulk::FAILED;
    }
    let secs = start.elapsed().as_secs_f64();
    let bytes = (mib << 20) as f64 * streams as f64;
    let gb = bytes / 1e9;
    let cpu = cpu0
        .zip(router.cpu_ns())
        .map_or(f64::NAN, |(a, b)| b.saturating_sub(a) as f64 / 1e9);
    let client_s = client_cpu.load(Ordering::Relaxed) as f64 / 1e9;
    let own_s = own_cpu_ns().saturating_sub(own0) as f64 / 1e9;
    Bulk {
        gbit: bytes * 8.0 / secs / 1e9,
        router: cpu / gb,
        client: client_s / gb,
        // Everything else this process ran meanwhile: the backend's sending threads (the main thread
        // only waits).
        backend: (own_s - client_s).max(0.0) / gb,
        segments: tcp_out_segments().saturating_sub(segs0) as f64 / gb,
        client_sleeps: client_sleeps.load(Ordering::Relaxed) as f64 / (bytes / 1e6),
    }
}

/// A backend that accepts and holds connections without reading (for the idle-connection test).
/// A backend that accepts and holds connections until dropped (the bench runs several idle tests in one
/// process: held sockets must not pile up against its descriptor limit).
struct Sink {
    addr: SocketAddr,
    held: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Sink {
    fn start() -> Sink {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind sink");
        let addr = l.local_addr().expect("addr");
        let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (h, st) = (held.clone(), stop.clone());
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                if st.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                if let Ok(mut v) = h.lock() {
                    v.push(s);
                }
            }
        });
        Sink { addr, held, stop }
    }

    fn count(&self) -> usize {
        self.held.lock().map_or(0, |v| v.len())
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut v) = self.held.lock() {
            v.clear();
        }
        // Wakes the accept loop so it sees the flag and closes the listener.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Resident memory per idle connection: open `n` raw connections that send a ClientHello and wait.
fn idle_memory(kind: Kind, n: usize) -> Option<(f64, usize)> {
    let sink = Sink::start();
    let backend = sink.addr;
    let router = Router::start(
        kind,
        &Spec {
            sni: SNI,
            backend,
            workers: 1,
            extra_routes: 0,
            hook: None,
        },
    );
    let hello = meshgate_sni_hello();
    let rss0 = router.rss_bytes()?;
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        // Spread clients over source addresses so ephemeral ports never run out.
        let src = SocketAddr::from(([127, 0, 1, (i % 200 + 2) as u8], 0));
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
        if sock.bind(&src.into()).is_err() || sock.connect(&router.addr.into()).is_err() {
            eprintln!("{}: stopped at {i} connections", kind.name());
            break;
        }
        let mut s: TcpStream = sock.into();
        let _ = s.write_all(&hello);
        conns.push(s);
    }
    // Every connection relayed: the backend holds as many as the clients opened (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink.count() < conns.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let relayed = sink.count();
    if relayed < conns.len() {
        eprintln!(
            "{}: only {relayed} of {} connections reached the backend",
            kind.name(),
            conns.len()
        );
    }
    // Then until resident memory stops moving (bounded).
    let mut last = 0;
    while Instant::now() < deadline {
        let rss = router.rss_bytes()?;
        if rss == last {
            break;
        }
        last = rss;
        std::thread::sleep(Duration::from_millis(250));
    }
    let rss1 = router.rss_bytes()?;
    let per = (rss1.saturating_sub(rss0)) as f64 / relayed.max(1) as f64;
    Some((per, relayed))
}

/// A real ClientHello (rustls) for the benchmark SNI; the handshake is never completed.
fn meshgate_sni_hello() -> Vec<u8> {
    let pki = Pki::new("idle").expect("pki");
    let cfg = pki.client_config(&[]).expect("cfg");
    meshgate_tlskit::client_hello_bytes(cfg, SNI).expect("hello")
}

fn main() {
    let o = options();
    let pki = Pki::new("bench CA").expect("CA");
    let backend = Backend::start(
        "backend",
        "127.0.0.1:0".parse().expect("addr"),
        pki.issue(&[SNI]).expect("leaf"),
    )
    .expect("backend");
    let client = pki.client_config(&[]).expect("client config");
    let kinds: Vec<Kind> = [
        Kind::Direct,
        Kind::Haproxy,
        Kind::Nginx,
        Kind::Sniproxy,
        Kind::Meshgate,
        Kind::MeshgateNoLog,
        Kind::MeshgateBuffered,
        Kind::MeshgateKernelBalance,
    ]
    .into_iter()
    .filter(|k| {
        *k == Kind::Direct
            || o.routers
                .as_ref()
                .is_none_or(|r| r.iter().any(|n| n == k.name()))
    })
    .collect();
    let mut report = String::new();
    report.push_str(&format!(
        "Medians of {} rounds, {:.0} s per measurement, on {} CPUs. Ratios are to direct in the same run.\n\n",
        o.rounds,
        o.seconds,
        std::thread::available_parallelism().map_or(1, usize::from)
    ));

    // Rows of the targets table (issue 14), and meshgate's CPU per new connection per worker count.
    let mut targets: Vec<String> = Vec::new();
    let mut per_conn: Vec<(usize, f64)> = Vec::new();
    let core_workers: &[usize] = if o.idle_only { &[] } else { &o.workers };
    for &workers in core_workers {
        let routers: Vec<Router> = kinds
            .iter()
            .filter(|&&k| workers > 1 || k != Kind::MeshgateKernelBalance)
            .map(|&k| {
                Router::start(
                    k,
                    &Spec {
                        sni: SNI,
                        backend: backend.addr(),
                        workers,
                        extra_routes: 0,
                        hook: None,
                    },
                )
            })
            .collect();
        let mut loaded: Vec<Vec<Sample>> = vec![Vec::new(); routers.len()];
        let mut single: Vec<Vec<Sample>> = vec![Vec::new(); routers.len()];
        let mut ka: Vec<Vec<Sample>> = vec![Vec::new(); routers.len()];
        let mut bulk1: Vec<Vec<Bulk>> = vec![Vec::new(); routers.len()];
        let mut bulk4: Vec<Vec<Bulk>> = vec![Vec::new(); routers.len()];
        for round in 0..o.rounds {
            for (i, r) in routers.iter().enumerate() {
                eprintln!(
                    "workers {workers}, round {}/{}: {}",
                    round + 1,
                    o.rounds,
                    r.kind.name()
                );
                loaded[i].push(new_connections(r, &client, 4, o.seconds));
                single[i].push(new_connections(r, &client, 1, o.seconds));
                ka[i].push(keep_alive(r, &client, 4, o.seconds));
                bulk1[i].push(bulk(r, &client, o.bulk_mib, 1));
                bulk4[i].push(bulk(r, &client, o.bulk_mib / 4, 4));
            }
        }
        let med = |v: &[Sample], f: fn(&Sample) -> f64| median(v.iter().map(f).collect());
        let medp = |v: &[Bulk], f: fn(&Bulk) -> f64| median(v.iter().map(f).collect());
        let fmt = |x: f64, d: usize| {
            if x.is_nan() {
                "–".to_owned()
            } else {
                format!("{x:.d$}")
            }
        };
        let plural = if workers == 1 { "" } else { "s" };
        report.push_str(&format!(
            "### New TLS connections ({workers} router worker{plural})\n\n"
        ));
        report.push_str("| router | conns/s (4 clients) | vs direct | router CPU µs/conn | conns/s (1 client) | p50 ms | p99 ms | added p50 ms |\n|---|---|---|---|---|---|---|---|\n");
        let d_cps = med(&loaded[0], |s| s.rate);
        let d_p50 = med(&single[0], |s| s.p50);
        for (i, r) in routers.iter().enumerate() {
            let cps = med(&loaded[i], |s| s.rate);
            let p50 = med(&single[i], |s| s.p50);
            report.push_str(&format!(
                "| {} | {:.0} | {:.2}× | {} | {:.0} | {:.3} | {:.3} | {} |\n",
                r.kind.name(),
                cps,
                cps / d_cps,
                fmt(med(&loaded[i], |s| s.cpu_per_op), 1),
                med(&single[i], |s| s.rate),
                p50 / 1e3,
                med(&single[i], |s| s.p99) / 1e3,
                if i == 0 {
                    "–".to_owned()
                } else {
                    format!("{:.3}", (p50 - d_p50) / 1e3)
                },
            ));
        }
        report.push_str(&format!(
            "\n### Keep-alive requests ({workers} router worker{plural})\n\n"
        ));
        report.push_str("| router | req/s (4 conns) | vs direct | p50 µs | p99 µs | router CPU µs/req |\n|---|---|---|---|---|---|\n");
        let d_rps = med(&ka[0], |s| s.rate);
        for (i, r) in routers.iter().enumerate() {
            let rps = med(&ka[i], |s| s.rate);
            report.push_str(&format!(
                "| {} | {:.0} | {:.2}× | {:.0} | {:.0} | {} |\n",
                r.kind.name(),
                rps,
                rps / d_rps,
                med(&ka[i], |s| s.p50),
                med(&ka[i], |s| s.p99),
                fmt(med(&ka[i], |s| s.cpu_per_op), 2),
            ));
        }
        report.push_str(&format!("\n### Bulk ({workers} router worker{plural})\n\n"));
        report.push_str("| router | 1 stream Gbit/s | vs direct | CPU s/GB | 4 streams Gbit/s | vs direct | CPU s/GB |\n|---|---|---|---|---|---|---|\n");
        let (d1, d4) = (medp(&bulk1[0], |b| b.gbit), medp(&bulk4[0], |b| b.gbit));
        for (i, r) in routers.iter().enumerate() {
            let (g1, g4) = (medp(&bulk1[i], |b| b.gbit), medp(&bulk4[i], |b| b.gbit));
            report.push_str(&format!(
                "| {} | {:.2} | {:.2}× | {} | {:.2} | {:.2}× | {} |\n",
                r.kind.name(),
                g1,
                g1 / d1,
                fmt(medp(&bulk1[i], |b| b.router), 3),
                g4,
                g4 / d4,
                fmt(medp(&bulk4[i], |b| b.router), 3),
            ));
        }
        report.push_str(&format!(
            "\n### What the endpoints pay per GB (1 stream, {workers} router worker{plural})\n\n"
        ));
        report.push_str("| router | router CPU s/GB | receiving client s/GB | sending backend s/GB | whole path s/GB | TCP segments per MB (all senders) | client sleeps per MB |\n|---|---|---|---|---|---|---|\n");
        for (i, r) in routers.iter().enumerate() {
            let (ro, cl, be) = (
                medp(&bulk1[i], |b| b.router),
                medp(&bulk1[i], |b| b.client),
                medp(&bulk1[i], |b| b.backend),
            );
            report.push_str(&format!(
                "| {} | {} | {cl:.3} | {be:.3} | {:.3} | {:.0} | {:.1} |\n",
                r.kind.name(),
                fmt(ro, 3),
                if ro.is_nan() { cl + be } else { ro + cl + be },
                medp(&bulk1[i], |b| b.segments) / 1e3,
                medp(&bulk1[i], |b| b.client_sleeps),
            ));
        }
        report.push('\n');
        eprint!("{report}");

        report.push_str(&format!("### Wake-ups of the router per operation ({workers} router worker{plural})\n\nContext switches of all the router's threads (voluntary and not) per operation, from /proc.\n\n| router | per new connection (4 clients) | per new connection (1 client) | per keep-alive request |\n|---|---|---|---|\n"));
        for (i, r) in routers.iter().enumerate().skip(1) {
            report.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                r.kind.name(),
                fmt(med(&loaded[i], |s| s.switches_per_op), 2),
                fmt(med(&single[i], |s| s.switches_per_op), 2),
                fmt(med(&ka[i], |s| s.switches_per_op), 2),
            ));
        }
        report.push('\n');
        if o.syscalls && workers == 1 {
            report.push_str(&syscall_table(&routers[1..], &client, o.seconds.min(3.0)));
        }

        // Issue 14's targets for this worker count: meshgate against the best peer of this run.
        let at = |k: Kind| routers.iter().position(|r| r.kind == k);
        let peers: Vec<usize> = [Kind::Haproxy, Kind::Nginx, Kind::Sniproxy]
            .into_iter()
            .filter_map(at)
            .collect();
        let best = |f: &dyn Fn(usize) -> f64, lowest: bool| {
            peers
                .iter()
                .map(|&i| (f(i), routers[i].kind.name()))
                .filter(|(x, _)| x.is_finite())
                .fold(None, |b: Option<(f64, &str)>, (x, n)| match b {
                    Some((y, _)) if (lowest && y <= x) || (!lowest && y >= x) => b,
                    _ => Some((x, n)),
                })
        };
        if let Some(m) = at(Kind::Meshgate) {
            let mut row = |what: &str, f: &dyn Fn(usize) -> f64, lowest: bool, goal: &str| {
                if let Some((b, name)) = best(f, lowest) {
                    targets.push(format!(
                        "| {workers} | {what} | {} | {} ({name}) | {:.2}× | {goal} |",
                        fmt(f(m), 3),
                        fmt(b, 3),
                        f(m) / b
                    ));
                }
            };
            row(
                "router CPU µs per new connection",
                &|i| med(&loaded[i], |s| s.cpu_per_op),
                true,
                "≤ 0.8×",
            );
            row(
                "added p50 ms, one connection at a time",
                &|i| (med(&single[i], |s| s.p50) - d_p50) / 1e3,
                true,
                "≤ 1.0×",
            );
            row(
                "router CPU µs per keep-alive request",
                &|i| med(&ka[i], |s| s.cpu_per_op),
                true,
                "≤ 0.8×",
            );
            row(
                "keep-alive req/s",
                &|i| med(&ka[i], |s| s.rate),
                false,
                "≥ 1.0×",
            );
            row(
                "router CPU s/GB, 1 stream",
                &|i| medp(&bulk1[i], |b| b.router),
                true,
                "≤ 0.5×",
            );
            row(
                "router CPU s/GB, 4 streams",
                &|i| medp(&bulk4[i], |b| b.router),
                true,
                "≤ 0.5×",
            );
            row(
                "endpoints' CPU s/GB (client + backend), 1 stream",
                &|i| medp(&bulk1[i], |b| b.client + b.backend),
                true,
                "≤ 1.0×",
            );
            row(
                "whole path CPU s/GB (router + endpoints), 1 stream",
                &|i| medp(&bulk1[i], |b| b.router + b.client + b.backend),
                true,
                "< 1.0×",
            );
            per_conn.push((workers, med(&loaded[m], |s| s.cpu_per_op)));
            if let Some(q) = at(Kind::MeshgateNoLog) {
                let (on, off) = (
                    med(&loaded[m], |s| s.cpu_per_op),
                    med(&loaded[q], |s| s.cpu_per_op),
                );
                targets.push(format!(
                    "| {workers} | access log's share of a new connection's CPU | {on:.1} µs with, {off:.1} without | – | {:+.1} % | ≤ 5 % |",
                    (on / off - 1.0) * 100.0
                ));
            }
        }
    }
    if let (Some(&(1, one)), Some(&(2, two))) = (
        per_conn.iter().find(|(w, _)| *w == 1),
        per_conn.iter().find(|(w, _)| *w == 2),
    ) {
        targets.push(format!(
            "| 2 vs 1 | router CPU µs per new connection, two workers against one | {two:.1} | {one:.1} (meshgate, 1 worker) | {:.2}× | ≤ 1.1× |",
            two / one
        ));
    }

    if o.core_only {
        push_targets(&mut report, &targets);
        println!("{report}");
        return;
    }
    report.push_str("### Memory per idle connection (1 worker)\n\n| router | connections | resident bytes per connection |\n|---|---|---|\n");
    for &n in &o.idle {
        let mut haproxy = None;
        for kind in [Kind::Haproxy, Kind::Nginx, Kind::Sniproxy, Kind::Meshgate] {
            eprintln!("idle {n}: {}", kind.name());
            match idle_memory(kind, n) {
                Some((per, reached)) => {
                    report.push_str(&format!("| {} | {reached} | {per:.0} |\n", kind.name()));
                    if kind == Kind::Haproxy {
                        haproxy = Some(per);
                    }
                    if let (Kind::Meshgate, Some(h)) = (kind, haproxy) {
                        targets.push(format!(
                            "| 1 | resident bytes per idle connection ({reached}) | {per:.0} | {h:.0} (HAProxy) | {:.2}× | ≤ 0.6× |",
                            per / h
                        ));
                    }
                }
                None => report.push_str(&format!("| {} | {n} | – |\n", kind.name())),
            }
        }
    }

    if o.idle_only {
        push_targets(&mut report, &targets);
        println!("{report}");
        return;
    }
    report.push_str("\n### Route-table scaling (meshgate, 1 worker, 4 clients)\n\n| routes | conns/s | router CPU µs/conn | vs 10 routes |\n|---|---|---|---|\n");
    let mut base = f64::NAN;
    for &n in &o.route_counts {
        eprintln!("routes {n}");
        let r = Router::start(
            Kind::Meshgate,
            &Spec {
                sni: SNI,
                backend: backend.addr(),
                workers: 1,
                extra_routes: n.saturating_sub(1),
                hook: None,
            },
        );
        let samples: Vec<Sample> = (0..o.rounds)
            .map(|_| new_connections(&r, &client, 4, o.seconds))
            .collect();
        let cpu = median(samples.iter().map(|s| s.cpu_per_op).collect());
        if base.is_nan() {
            base = cpu;
        }
        report.push_str(&format!(
            "| {n} | {:.0} | {cpu:.1} | {:.2}× |\n",
            median(samples.iter().map(|s| s.rate).collect()),
            cpu / base
        ));
        if n != o.route_counts[0] {
            targets.push(format!(
                "| 1 | router CPU µs per new connection, {n} routes | {cpu:.1} | {base:.1} ({} routes) | {:.2}× | ≤ 1.02× |",
                o.route_counts[0],
                cpu / base
            ));
        }
    }
    report.push_str("\n### Per-connection hook (meshgate, 1 worker, 4 clients, 10 routes)\n\n| hook | conns/s | router CPU µs/conn |\n|---|---|---|\n");
    for (label, hook) in [
        ("none (no Wasm call per connection)", None),
        ("sni-denylist, verdict cached per SNI", Some("[hook]\nplugin = \"sni-denylist\"\nconfig = { deny = \"blocked.example\" }\n")),
        ("sni-denylist, called on every connection", Some("[hook]\nplugin = \"sni-denylist\"\nconfig = { deny = \"blocked.example\", cache = \"false\" }\n")),
    ] {
        eprintln!("hook: {label}");
        let r = Router::start(Kind::Meshgate, &Spec { sni: SNI, backend: backend.addr(), workers: 1, extra_routes: 9, hook });
        let samples: Vec<Sample> = (0..o.rounds).map(|_| new_connections(&r, &client, 4, o.seconds)).collect();
        report.push_str(&format!(
            "| {label} | {:.0} | {:.1} |\n",
            median(samples.iter().map(|s| s.rate).collect()),
            median(samples.iter().map(|s| s.cpu_per_op).collect())
        ));
    }
    push_targets(&mut report, &targets);
    println!("{report}");
    if let Some(path) = o.out {
        if let Err(e) = std::fs::write(&path, &report) {
            eprintln!("{}: {e}", path.display());
        }
    }
}
