//! `meshgate-bench`: measures, in one run and on one machine, TLS connections per second and bulk
//! throughput through meshgate (splice and buffered relay) and directly to the same backend, plus the
//! router's CPU time per connection and per GiB. Every figure is the median of several rounds; ratios are
//! to the direct connection measured in the same run.
//!
//! Everything stays on loopback; every load loop is bounded by a count and a duration; every process it
//! starts is killed by PID when it ends.
//!
//! Usage: `cargo run --release -p meshgate-bench -- [--rounds N] [--seconds S] [--bulk-mib M]
//! [--workers W] [--out FILE]` (build `meshgate` in release first; `benches/run.sh` does both).

use meshgate_tlskit::{Backend, ClientConfig, Pki};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SNI: &str = "api.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul";
/// Upper bound on connections per handshake round, whatever the duration.
const MAX_CONNECTIONS_PER_ROUND: usize = 200_000;

struct Options {
    rounds: usize,
    seconds: f64,
    bulk_mib: u64,
    clients: usize,
    workers: usize,
    out: Option<PathBuf>,
}

fn options() -> Options {
    let mut o = Options {
        rounds: 3,
        seconds: 3.0,
        bulk_mib: 2048,
        clients: 4,
        workers: 1,
        out: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--rounds" => o.rounds = v.parse().unwrap_or(o.rounds),
            "--seconds" => o.seconds = v.parse().unwrap_or(o.seconds),
            "--bulk-mib" => o.bulk_mib = v.parse().unwrap_or(o.bulk_mib),
            "--clients" => o.clients = v.parse().unwrap_or(o.clients),
            "--workers" => o.workers = v.parse().unwrap_or(o.workers),
            "--out" => o.out = Some(PathBuf::from(v)),
            "--bench" => {
                i += 1;
                continue;
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

/// A router under test (or the direct path, with no process).
struct Target {
    name: String,
    addr: SocketAddr,
    child: Option<Child>,
    _dir: Option<PathBuf>,
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(d) = &self._dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

fn meshgate_bin() -> PathBuf {
    std::env::var_os("MESHGATE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/meshgate")
        })
}

fn start_meshgate(relay: &str, workers: usize, backend: SocketAddr) -> Target {
    let listen = free_addr();
    let admin = free_addr();
    let dir = std::env::temp_dir().join(format!(
        "meshgate-bench-{}-{}",
        std::process::id(),
        listen.port()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nlisten = [\"{listen}\"]\nadmin = \"{admin}\"\nworkers = {workers}\nrelay = \"{relay}\"\n\n[[routes]]\nsni = \"{SNI}\"\nendpoints = [\"{backend}\"]\n"
        ),
    )
    .expect("write config");
    let child = Command::new(meshgate_bin())
        .args(["gateway", "--config"])
        .arg(&config)
        .env("MESHGATE_LOG", "error")
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "start {}: {e} (build it: cargo build --release)",
                meshgate_bin().display()
            )
        });
    // Ready when /ready answers 200 (bounded).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = std::net::TcpStream::connect(admin)
            .and_then(|mut s| {
                s.write_all(b"GET /ready HTTP/1.1\r\n\r\n")?;
                let mut line = String::new();
                BufReader::new(s).read_line(&mut line)?;
                Ok(line.contains(" 200 "))
            })
            .unwrap_or(false);
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "meshgate did not become ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    Target {
        name: format!(
            "meshgate ({relay}, {workers} worker{})",
            if workers == 1 { "" } else { "s" }
        ),
        addr: listen,
        child: Some(child),
        _dir: Some(dir),
    }
}

/// CPU time of every thread of `pid` so far, in nanoseconds (/proc/PID/task/*/schedstat).
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

struct Handshakes {
    per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_us_per_conn: Option<f64>,
}

/// `clients` threads each open connection after connection for `seconds`: TCP connect, TLS 1.3
/// handshake, one request line and its answer, close.
fn handshakes(t: &Target, client: &Arc<ClientConfig>, clients: usize, seconds: f64) -> Handshakes {
    let stop = Arc::new(AtomicBool::new(false));
    let pid = t.child.as_ref().map(Child::id);
    let cpu0 = pid.map(cpu_ns);
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let stop = stop.clone();
            let client = client.clone();
            let addr = t.addr;
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                while !stop.load(Ordering::Relaxed) && lat.len() < MAX_CONNECTIONS_PER_ROUND / 4 {
                    let t0 = Instant::now();
                    match meshgate_tlskit::hello(addr, SNI, client.clone()) {
                        Ok(_) => lat.push(t0.elapsed().as_secs_f64() * 1e6),
                        Err(e) => {
                            eprintln!("connection failed: {e}");
                            break;
                        }
                    }
                }
                lat
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    let mut lat: Vec<f64> = threads
        .into_iter()
        .flat_map(|h| h.join().unwrap_or_default())
        .collect();
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = pid
        .zip(cpu0)
        .map(|(p, c0)| cpu_ns(p).saturating_sub(c0) as f64 / 1e3);
    lat.sort_by(f64::total_cmp);
    let n = lat.len().max(1);
    Handshakes {
        per_sec: lat.len() as f64 / elapsed,
        p50_us: lat.get(n / 2).copied().unwrap_or(0.0),
        p99_us: lat.get(n * 99 / 100).copied().unwrap_or(0.0),
        cpu_us_per_conn: cpu.map(|c| c / n as f64),
    }
}

struct Bulk {
    gbit_per_sec: f64,
    cpu_s_per_gib: Option<f64>,
}

/// One TLS stream moving `mib` MiB from the backend to the client.
fn bulk(t: &Target, client: &Arc<ClientConfig>, mib: u64) -> Bulk {
    let pid = t.child.as_ref().map(Child::id);
    let cpu0 = pid.map(cpu_ns);
    let start = Instant::now();
    let r =
        meshgate_tlskit::bulk(t.addr, SNI, client.clone(), 0, mib << 20).expect("bulk transfer");
    let secs = start.elapsed().as_secs_f64();
    assert!(
        r.received_intact && r.received_len == mib << 20,
        "bulk data corrupted"
    );
    let cpu = pid
        .zip(cpu0)
        .map(|(p, c0)| cpu_ns(p).saturating_sub(c0) as f64 / 1e9);
    Bulk {
        gbit_per_sec: (mib << 20) as f64 * 8.0 / secs / 1e9,
        cpu_s_per_gib: cpu.map(|c| c / (mib as f64 / 1024.0)),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
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
    let targets = [
        Target {
            name: "direct".into(),
            addr: backend.addr(),
            child: None,
            _dir: None,
        },
        start_meshgate("splice", o.workers, backend.addr()),
        start_meshgate("buffered", o.workers, backend.addr()),
    ];
    // rows[target] = per-round samples
    let mut hs: Vec<Vec<Handshakes>> = targets.iter().map(|_| Vec::new()).collect();
    let mut bl: Vec<Vec<Bulk>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..o.rounds {
        for (i, t) in targets.iter().enumerate() {
            eprintln!("round {}/{}: {}", round + 1, o.rounds, t.name);
            hs[i].push(handshakes(t, &client, o.clients, o.seconds));
            bl[i].push(bulk(t, &client, o.bulk_mib));
        }
    }
    let mut out = String::new();
    out.push_str(&format!(
        "Medians of {} rounds; {} client threads for {:.0} s per handshake round; one {} MiB TLS stream per bulk round.\n\n",
        o.rounds, o.clients, o.seconds, o.bulk_mib
    ));
    out.push_str("| path | TLS conns/s | vs direct | p50 ms | p99 ms | router CPU µs/conn | bulk Gbit/s | vs direct | router CPU s/GiB |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|\n");
    let direct_cps = median(hs[0].iter().map(|h| h.per_sec).collect());
    let direct_gbps = median(bl[0].iter().map(|b| b.gbit_per_sec).collect());
    for (i, t) in targets.iter().enumerate() {
        let cps = median(hs[i].iter().map(|h| h.per_sec).collect());
        let p50 = median(hs[i].iter().map(|h| h.p50_us).collect()) / 1e3;
        let p99 = median(hs[i].iter().map(|h| h.p99_us).collect()) / 1e3;
        let cpu_conn = hs[i]
            .iter()
            .filter_map(|h| h.cpu_us_per_conn)
            .collect::<Vec<_>>();
        let gbps = median(bl[i].iter().map(|b| b.gbit_per_sec).collect());
        let cpu_gib = bl[i]
            .iter()
            .filter_map(|b| b.cpu_s_per_gib)
            .collect::<Vec<_>>();
        let fmt_opt = |v: Vec<f64>, digits: usize| {
            if v.is_empty() {
                "–".to_owned()
            } else {
                format!("{:.*}", digits, median(v))
            }
        };
        out.push_str(&format!(
            "| {} | {:.0} | {:.2}× | {:.2} | {:.2} | {} | {:.2} | {:.2}× | {} |\n",
            t.name,
            cps,
            cps / direct_cps,
            p50,
            p99,
            fmt_opt(cpu_conn, 1),
            gbps,
            gbps / direct_gbps,
            fmt_opt(cpu_gib, 3),
        ));
    }
    print!("{out}");
    if let Some(path) = o.out {
        if let Err(e) = std::fs::write(&path, &out) {
            eprintln!("{}: {e}", path.display());
        }
    }
}
