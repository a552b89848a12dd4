//! `meshgate-hops`: what a mesh gateway hop costs a service call. Two datacenters on loopback, as in the
//! demo: web's sidecar reaches api's sidecar (mTLS, SPIFFE identities, intentions) three ways —
//! directly (mode `none`, the direct mTLS baseline; loopback routes everywhere), through dc2's gateway
//! (`remote`, one hop) and through both gateways (`local`, two hops). For each: a new connection per call
//! (TCP + mTLS handshake through the path + one request/response) and calls on one kept-open connection;
//! p50/p99 latency and what each hop adds to the direct path's p50. Every process is meshgate (release
//! build, one core each); the application is an echo thread.
//!
//! `cargo build --release -p meshgate -p meshgate-bench && target/release/meshgate-hops [--calls N]
//! [--rounds R]`

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TD: &str = "11111111-2222-3333-4444-555555555555.consul";

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn write(dir: &Path, rel: &str, text: &str) -> std::io::Result<()> {
    let p = dir.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(p, text)
}

fn gateway_hcl(port: u16) -> String {
    format!("service {{\n  name = \"mesh-gateway\"\n  kind = \"mesh-gateway\"\n  address = \"127.0.0.1\"\n  port = {port}\n  tagged_addresses {{\n    lan {{ address = \"127.0.0.1\", port = {port} }}\n    wan {{ address = \"127.0.0.1\", port = {port} }}\n  }}\n}}\n")
}

fn gateway_toml(dc: &str, port: u16, admin: u16) -> String {
    format!("[gateway]\ndatacenter = \"{dc}\"\nlisten = [\"127.0.0.1:{port}\"]\nadmin = \"127.0.0.1:{admin}\"\nworkers = 1\n\n[catalog]\nplugin = \"file-catalog\"\nconfig = {{ dir = \"catalog/{dc}\", datacenter = \"{dc}\", trust_domain = \"{TD}\" }}\nallow_dirs = [\"catalog/{dc}\"]\n")
}

fn sidecar_toml(svc: &str, dc: &str, admin: u16) -> String {
    format!("[sidecar]\nservice = \"{svc}\"\ndatacenter = \"{dc}\"\nadmin = \"127.0.0.1:{admin}\"\ndefault_intention = \"deny\"\n\n[tls]\ncert_file = \"certs/{svc}/cert.pem\"\nkey_file = \"certs/{svc}/key.pem\"\nroots_file = \"certs/{svc}/roots.pem\"\n\n[catalog]\nplugin = \"file-catalog\"\nconfig = {{ dir = \"catalog/{dc}\", datacenter = \"{dc}\", trust_domain = \"{TD}\" }}\nallow_dirs = [\"catalog/{dc}\"]\n")
}

fn ready(admin: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", admin)) else {
        return false;
    };
    let _ = s.write_all(b"GET /ready HTTP/1.0\r\n\r\n");
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).is_ok() && line.contains("200")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `calls` new connections, each one request/response; sorted latencies.
fn new_connections(port: u16, calls: usize) -> std::io::Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"ping\n")?;
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line)?;
        if line.is_empty() {
            return Err(std::io::Error::other("closed without an answer"));
        }
        out.push(t.elapsed());
    }
    out.sort();
    Ok(out)
}

/// `calls` request/responses on one connection; sorted latencies.
fn kept_open(port: u16, calls: usize) -> std::io::Result<Vec<Duration>> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(s.try_clone()?);
    let mut w = s;
    let mut out = Vec::with_capacity(calls);
    let mut line = String::new();
    for _ in 0..calls {
        let t = Instant::now();
        w.write_all(b"ping\n")?;
        line.clear();
        reader.read_line(&mut line)?;
        if line.is_empty() {
            return Err(std::io::Error::other("closed"));
        }
        out.push(t.elapsed());
    }
    out.sort();
    Ok(out)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (calls, rounds) = (opt("--calls", 2000), opt("--rounds", 3));
    let bin = std::env::var_os("MESHGATE_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/meshgate"),
        PathBuf::from,
    );
    let dir = std::env::temp_dir().join(format!("meshgate-hops-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = |rel: &str| dir.join(rel).display().to_string();
    let run = |args: &[&str]| -> Result<(), Box<dyn std::error::Error>> {
        let out = Command::new(&bin).args(args).output()?;
        if !out.status.success() {
            return Err(format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        Ok(())
    };
    run(&["ca", "init", "--trust-domain", TD, "--out", &d("ca/dc1")])?;
    run(&[
        "ca",
        "intermediate",
        "--ca",
        &d("ca/dc1"),
        "--datacenter",
        "dc2",
        "--out",
        &d("ca/dc2"),
    ])?;
    run(&[
        "ca",
        "issue",
        "--ca",
        &d("ca/dc1"),
        "--service",
        "web",
        "--datacenter",
        "dc1",
        "--out",
        &d("certs/web"),
    ])?;
    run(&[
        "ca",
        "issue",
        "--ca",
        &d("ca/dc2"),
        "--service",
        "api",
        "--datacenter",
        "dc2",
        "--out",
        &d("certs/api"),
    ])?;

    let (gw1, gw2) = (free_port(), free_port());
    let (api_public, web_public) = (free_port(), free_port());
    let paths = [
        ("direct mTLS (mode none)", "none", 0, free_port()),
        ("1 gateway hop (remote)", "remote", 1, free_port()),
        ("2 gateway hops (local)", "local", 2, free_port()),
    ];
    let admins = [free_port(), free_port(), free_port(), free_port()];
    // The application.
    let app = TcpListener::bind("127.0.0.1:0")?;
    let app_port = app.local_addr()?.port();
    std::thread::spawn(move || {
        for s in app.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut r = BufReader::new(&s);
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if (&s).write_all(line.as_bytes()).is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
    let ups: Vec<String> = paths
        .iter()
        .map(|(_, mode, _, port)| format!("{{ destination_name = \"api\", datacenter = \"dc2\", local_bind_port = {port}, mesh_gateway {{ mode = \"{mode}\" }} }}"))
        .collect();
    let api_hcl = format!("service {{\n  name = \"api\"\n  port = {app_port}\n  connect {{ sidecar_service {{\n    address = \"127.0.0.1\"\n    port = {api_public}\n  }} }}\n}}\n");
    write(&dir, "catalog/dc1/web.hcl", &format!("service {{\n  name = \"web\"\n  port = 1\n  connect {{ sidecar_service {{\n    address = \"127.0.0.1\"\n    port = {web_public}\n    proxy {{ upstreams = [{}] }}\n  }} }}\n}}\n", ups.join(", ")))?;
    write(&dir, "catalog/dc1/gateway.hcl", &gateway_hcl(gw1))?;
    write(&dir, "catalog/dc1/dc2/gateway.hcl", &gateway_hcl(gw2))?;
    write(&dir, "catalog/dc1/dc2/api.hcl", &api_hcl)?;
    write(&dir, "catalog/dc2/api.hcl", &api_hcl)?;
    write(&dir, "catalog/dc2/intentions.hcl", "Kind = \"service-intentions\"\nName = \"api\"\nSources = [{ Name = \"web\", Action = \"allow\" }]\n")?;
    write(&dir, "catalog/dc2/gateway.hcl", &gateway_hcl(gw2))?;
    write(&dir, "catalog/dc2/dc1/gateway.hcl", &gateway_hcl(gw1))?;
    write(&dir, "gw1.toml", &gateway_toml("dc1", gw1, admins[0]))?;
    write(&dir, "gw2.toml", &gateway_toml("dc2", gw2, admins[1]))?;
    write(&dir, "api.toml", &sidecar_toml("api", "dc2", admins[2]))?;
    write(&dir, "web.toml", &sidecar_toml("web", "dc1", admins[3]))?;

    let mut procs = Procs(Vec::new());
    for (cmd, file) in [
        ("gateway", "gw1.toml"),
        ("gateway", "gw2.toml"),
        ("sidecar", "api.toml"),
        ("sidecar", "web.toml"),
    ] {
        procs.0.push(
            Command::new(&bin)
                .args([cmd, "--config", &d(file)])
                .env("MESHGATE_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()?,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !admins.iter().all(|a| ready(*a)) {
        if Instant::now() > deadline {
            return Err("meshgate processes did not become ready".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    println!("# meshgate-hops: {calls} calls x {rounds} rounds per path (medians of the rounds' percentiles)\n");
    println!(
        "| path | new connection p50 | p99 | added p50 | kept-open call p50 | p99 | added p50 |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut base = (0.0, 0.0);
    for (name, _, hops, port) in paths {
        // Warm up: TLS session caches, page faults, the catalog's first use.
        new_connections(port, 100)?;
        let (mut n50, mut n99, mut k50, mut k99) = (vec![], vec![], vec![], vec![]);
        for _ in 0..rounds {
            let n = new_connections(port, calls)?;
            let k = kept_open(port, calls)?;
            n50.push(percentile(&n, 0.5));
            n99.push(percentile(&n, 0.99));
            k50.push(percentile(&k, 0.5));
            k99.push(percentile(&k, 0.99));
        }
        let (n50, n99, k50, k99) = (
            us(median(n50)),
            us(median(n99)),
            us(median(k50)),
            us(median(k99)),
        );
        if hops == 0 {
            base = (n50, k50);
        }
        println!(
            "| {name} | {n50:.0} µs | {n99:.0} µs | {:+.0} µs | {k50:.1} µs | {k99:.1} µs | {:+.1} µs |",
            n50 - base.0,
            k50 - base.1
        );
    }
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
