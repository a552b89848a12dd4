//! `meshgate-control-bench`: what one catalog change costs the control plane of a gateway whose catalog
//! holds 10,000 services (issue 14's target: visible in the route table within 100 ms p99, at most 5 ms
//! of CPU).
//!
//! Method: a file-catalog directory with one HCL registration per service, each with an inline connect
//! sidecar whose check is passing, plus the local mesh gateway. A real release gateway
//! (`meshgate gateway`, the shipped `file-catalog` and `consul-router` plugins, one worker) starts on it;
//! once `/ready` answers 200 the bench measures, in this order:
//! - idle: the `meshgate-control` thread's CPU (its `schedstat`) over a quiet period, per catalog poll
//!   (polls counted by `meshgate_plugin_calls_total`) — what an unchanged catalog costs;
//! - N changes, each after a random pause (so changes land at every phase of the poll cycle): one
//!   service's sidecar check flips between passing and critical (the file is written beside and renamed
//!   over, as configuration tools do), which adds or removes that service's route. The latency is from
//!   the rename to the first `/metrics` whose `meshgate_route_table_routes` shows it (polled every
//!   millisecond; `/routes` would render 10,000 routes per poll); the CPU is the control thread's over
//!   that window less its idle rate; the phases (the catalog plugin's fetch, the router plugin, the table
//!   build, the install) are the wall-clock times the gateway logs with each table it installs.
//!
//! With `--consul` the catalog is a Consul 1.8 dev agent instead (`meshgate_consul::lab`, default
//! limits): every service and its sidecar are registered in the catalog (`/v1/catalog/register`, on 50
//! nodes of their own: the agent's own API syncs its whole local state on every registration, which
//! made 10,000 take over 20 minutes), the sidecar with a passing check; the gateway runs the shipped
//! `consul-catalog` with its default discovery, and a change registers the sidecar's check again as
//! critical or passing. The plugin runs with its default limits unless `--plugin-memory-mib` is
//! given: a dev agent indents its JSON, so the whole local catalog is ~3 KB per service, ~30 MB at
//! 10,000, decoded in the plugin on every change.
//!
//! Usage: `cargo build --release -p meshgate -p meshgate-bench && target/release/meshgate-control-bench
//! [--quick] [--consul [--plugin-memory-mib N]] [--services 10000] [--changes 50] [--seconds 120] [--poll-ms MS] [--idle-seconds 5]
//! [--catalog-plugin FILE.wasm] [--label TEXT] [--append] [--out benches/results/control.md]`.
//! `--quick`: 10 changes after 2 s idle. Without `--poll-ms` the gateway's default poll interval
//! applies. `--catalog-plugin` runs another build of the catalog plugin (to compare plugin versions on
//! one gateway binary); `--append` adds this run's row to an existing table in `--out`.

mod common;
// Shared by the bench binaries; each uses a part.
#[allow(dead_code)]
mod procfs;

use common::{admin_get, admin_ready, free_addr, meshgate_bin};
use meshgate_consul::lab::{DevAgent, Options as LabOptions};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TD: &str = "11111111-2222-3333-4444-555555555555.consul";
/// How long one change may take to show before the run gives up on it.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(20);

struct Options {
    services: usize,
    changes: usize,
    seconds: f64,
    poll_ms: Option<u64>,
    idle_seconds: f64,
    catalog_plugin: Option<PathBuf>,
    /// The catalog in a Consul dev agent (`consul-catalog`) instead of a directory.
    consul: bool,
    /// With Consul: the catalog plugin's memory cap (`None`: the default).
    plugin_memory_mib: Option<u64>,
    label: String,
    append: bool,
    out: PathBuf,
}

fn options() -> Options {
    let mut o = Options {
        services: 10_000,
        changes: 50,
        seconds: 120.0,
        poll_ms: None,
        idle_seconds: 5.0,
        catalog_plugin: None,
        consul: false,
        plugin_memory_mib: None,
        label: "meshgate".into(),
        append: false,
        out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results/control.md"),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--append" => {
                o.append = true;
                i += 1;
                continue;
            }
            "--consul" => {
                o.consul = true;
                i += 1;
                continue;
            }
            "--quick" => {
                o.changes = 10;
                o.idle_seconds = 2.0;
                i += 1;
                continue;
            }
            "--bench" => {
                i += 1;
                continue;
            }
            "--services" => o.services = v.parse().unwrap_or(o.services),
            "--changes" => o.changes = v.parse().unwrap_or(o.changes),
            "--seconds" => o.seconds = v.parse().unwrap_or(o.seconds),
            "--poll-ms" => o.poll_ms = v.parse().ok(),
            "--idle-seconds" => o.idle_seconds = v.parse().unwrap_or(o.idle_seconds),
            "--catalog-plugin" => o.catalog_plugin = Some(v.into()),
            "--plugin-memory-mib" => o.plugin_memory_mib = v.parse().ok(),
            "--label" => o.label = v,
            "--out" => o.out = v.into(),
            other => {
                eprintln!("unknown option {other}");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    o
}

/// A small deterministic generator (xorshift): which service changes, and the pause before it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn service_name(i: usize) -> String {
    format!("svc-{i:05}")
}

/// Service `i` with its sidecar on 127.0.0.1:(20000 + i % 40000), its check `status`.
fn service_hcl(i: usize, status: &str) -> String {
    let name = service_name(i);
    let port = 20_000 + i % 40_000;
    format!(
        "service {{\n  name = \"{name}\"\n  port = 8080\n  connect {{\n    sidecar_service {{\n      port = {port}\n      checks = [\n        {{ name = \"alive\", status = \"{status}\" }},\n      ]\n    }}\n  }}\n}}\n"
    )
}

fn write_catalog(dir: &Path, services: usize) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("mesh-gateway.hcl"),
        "service {\n  name = \"mesh-gateway\"\n  kind = \"mesh-gateway\"\n  port = 8443\n  tagged_addresses {\n    lan { address = \"127.0.0.1\", port = 8443 }\n    wan { address = \"127.0.0.1\", port = 8443 }\n  }\n}\n",
    )?;
    for i in 0..services {
        std::fs::write(
            dir.join(format!("{}.hcl", service_name(i))),
            service_hcl(i, "passing"),
        )?;
    }
    Ok(())
}

/// Rewrites service `i` the way configuration tools do: a hidden file beside it (which the plugin
/// skips), renamed over the old one, so the plugin never reads half a file.
fn rewrite(dir: &Path, i: usize, status: &str) -> std::io::Result<()> {
    let name = service_name(i);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, service_hcl(i, status))?;
    std::fs::rename(tmp, dir.join(format!("{name}.hcl")))
}

/// Where the catalog lives, and how one service's sidecar check is flipped there.
enum Source {
    /// A file-catalog directory: the registration is rewritten.
    Files(PathBuf),
    /// A Consul 1.8 dev agent the `consul-catalog` plugin watches: the sidecar's check is registered again.
    Consul(Box<DevAgent>),
}

impl Source {
    fn flip(&self, i: usize, status: &str) -> Result<(), String> {
        match self {
            Source::Files(dir) => rewrite(dir, i, status).map_err(|e| e.to_string()),
            Source::Consul(agent) => agent
                .put("/v1/catalog/register", Some(&catalog_sidecar(i, status)))
                .map_err(|e| e.to_string()),
        }
    }
}

/// Nodes the Consul catalog's services are spread over.
const CONSUL_NODES: usize = 50;

/// The catalog node of service `i` (not the agent's own: its anti-entropy would remove them).
fn catalog_node(i: usize) -> serde_json::Value {
    serde_json::json!({
        "Node": format!("bulk-node-{}", i % CONSUL_NODES),
        "Address": "127.0.0.1",
        "TaggedAddresses": {"lan": "127.0.0.1", "wan": "127.0.0.1"},
    })
}

/// `PUT /v1/catalog/register` of service `i` (typical kind, no check).
fn catalog_service(i: usize) -> serde_json::Value {
    let mut body = catalog_node(i);
    body["Service"] = serde_json::json!({
        "ID": service_name(i), "Service": service_name(i), "Port": 8080,
    });
    body
}

/// `PUT /v1/catalog/register` of service `i`'s sidecar on 127.0.0.1:(20000 + i % 40000), with its one
/// check in `status`.
fn catalog_sidecar(i: usize, status: &str) -> serde_json::Value {
    let name = service_name(i);
    let id = format!("{name}-sidecar-proxy");
    let mut body = catalog_node(i);
    body["Service"] = serde_json::json!({
        "Kind": "connect-proxy", "ID": id, "Service": id, "Port": 20_000 + i % 40_000,
        "Proxy": {"DestinationServiceName": name, "DestinationServiceID": name,
                  "LocalServiceAddress": "127.0.0.1", "LocalServicePort": 8080},
    });
    body["Check"] = serde_json::json!({
        "CheckID": format!("{id}-check"), "Name": "sidecar", "ServiceID": id, "Status": status,
    });
    body
}

/// Registers `services` services, each with a sidecar, in the catalog (4 requests at a time).
fn register_in_consul(agent: &DevAgent, services: usize) -> Result<(), String> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= services {
                        return Ok(());
                    }
                    for body in [catalog_service(i), catalog_sidecar(i, "passing")] {
                        agent
                            .put("/v1/catalog/register", Some(&body))
                            .map_err(|e| format!("register {}: {e}", service_name(i)))?;
                    }
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .unwrap_or_else(|_| Err("a register thread panicked".into()))
        })
    })
}

/// The gateway under test; killed (by PID) and its directory removed on drop (then the agent, if any).
struct Gateway {
    child: Child,
    dir: PathBuf,
    admin: std::net::SocketAddr,
    /// Lines of its log that say a table was installed.
    log: Arc<Mutex<Vec<String>>>,
    /// Its last warnings and errors.
    warnings: Arc<Mutex<Vec<String>>>,
    source: Source,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Gateway {
    /// Starts the gateway on a new catalog and waits until it is ready: how long that took, or why it
    /// did not get ready (with the gateway, to measure nothing more).
    fn start(o: &Options) -> (Gateway, Result<Duration, String>) {
        let dir =
            std::env::temp_dir().join(format!("meshgate-control-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let started = Instant::now();
        let (listen, admin) = (free_addr(), free_addr());
        let mut text = format!(
            "[gateway]\nname = \"mesh-gateway\"\ndatacenter = \"dc1\"\nlisten = [\"{listen}\"]\nadmin = \"{admin}\"\nworkers = 1\n\n"
        );
        let source = if o.consul {
            // Default limits: 200 connections per client, which a watch per service would pass.
            let agent = DevAgent::start(LabOptions::dc("dc1"))
                .unwrap_or_else(|e| panic!("Consul dev agent: {e}"));
            let registering = Instant::now();
            register_in_consul(&agent, o.services).unwrap_or_else(|e| panic!("{e}"));
            eprintln!(
                "{} services and their sidecars registered in {:.1} s",
                o.services,
                registering.elapsed().as_secs_f64()
            );
            let _ = write!(
                text,
                "[consul]\naddress = \"{}\"\n\n[catalog]\nplugin = \"consul-catalog\"\n{}",
                agent.http_addr(),
                o.plugin_memory_mib
                    .map_or(String::new(), |m| format!("memory_mib = {m}\n"))
            );
            Source::Consul(Box::new(agent))
        } else {
            write_catalog(&dir.join("catalog"), o.services).expect("write the catalog");
            let plugin = match &o.catalog_plugin {
                Some(p) => std::fs::canonicalize(p)
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
                    .display()
                    .to_string(),
                None => "file-catalog".into(),
            };
            let _ = write!(
                text,
                "[catalog]\nplugin = \"{plugin}\"\nconfig = {{ dir = \"catalog\", datacenter = \"dc1\", trust_domain = \"{TD}\" }}\nallow_dirs = [\"catalog\"]\n"
            );
            Source::Files(dir.join("catalog"))
        };
        eprintln!(
            "registered {} services in {:.1} s",
            o.services,
            started.elapsed().as_secs_f64()
        );
        if let Some(ms) = o.poll_ms {
            let _ = writeln!(text, "poll_ms = {ms}");
        }
        let config = dir.join("gateway.toml");
        std::fs::write(&config, text).expect("write config");
        let started = Instant::now();
        let mut child = Command::new(meshgate_bin())
            .args(["gateway", "--config"])
            .arg(&config)
            .env("MESHGATE_LOG", "info")
            .env("MESHGATE_LOG_FORMAT", "text")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "start {}: {e} (cargo build --release -p meshgate)",
                    meshgate_bin().display()
                )
            });
        let log = Arc::new(Mutex::new(Vec::new()));
        let warnings = Arc::new(Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let (log, warnings) = (log.clone(), warnings.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("route table installed") {
                        log.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                    } else if line.contains("WARN") || line.contains("ERROR") {
                        eprintln!("gateway: {line}");
                        let mut w = warnings.lock().unwrap_or_else(|p| p.into_inner());
                        if w.len() == 5 {
                            w.remove(0);
                        }
                        w.push(line);
                    }
                }
            });
        }
        let gw = Gateway {
            child,
            dir,
            admin,
            log,
            warnings,
            source,
        };
        let deadline = Instant::now() + Duration::from_secs(if o.consul { 120 } else { 300 });
        loop {
            if admin_ready(admin) {
                break;
            }
            if Instant::now() >= deadline {
                let why = gw
                    .warnings
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .last()
                    .cloned()
                    .unwrap_or_default();
                let why = why.split_once("error=").map_or(why.as_str(), |(_, e)| e);
                return (
                    gw,
                    Err(format!(
                        "not ready in {} s: {why}",
                        deadline.duration_since(started).as_secs()
                    )),
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let took = started.elapsed();
        (gw, Ok(took))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn metrics(&self) -> String {
        admin_get(self.admin, "/metrics").unwrap_or_default()
    }

    /// Log lines that said a table was installed, so far.
    fn installs(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The value of the first sample of `name` (with `labels` in its label set, if given).
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The sum of every sample of `name`.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The task of `pid` named `name` (the kernel keeps the first 15 bytes of a thread's name).
fn thread_named(pid: u32, name: &str) -> Option<u32> {
    let comm = &name[..name.len().min(15)];
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .find(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == comm)
        })?
        .file_name()
        .to_str()?
        .parse()
        .ok()
}

/// CPU time of one thread so far, in nanoseconds (the first field of its schedstat).
fn thread_cpu_ns(pid: u32, tid: u32) -> u64 {
    procfs::schedstat_ns(format!("/proc/{pid}/task/{tid}/schedstat"))
}

/// `key=value` of a log line, as a number.
fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let i = ((s.len() as f64 - 1.0) * p).round() as usize;
    s[i.min(s.len() - 1)]
}

/// One change as measured.
struct Change {
    latency_ms: f64,
    cpu_ms: f64,
    /// fetch, router, build, install (ms), as the gateway logged them.
    phases: Option<[f64; 4]>,
}

/// What one run found.
struct Run {
    label: String,
    catalog: &'static str,
    services: usize,
    poll: String,
    ready_s: f64,
    routes: f64,
    idle_cpu_per_poll_ms: f64,
    idle_cpu_share: f64,
    changes: Vec<Change>,
    timeouts: usize,
    /// Plugin calls that failed meanwhile (a fetch past its deadline, say).
    failures: f64,
    /// Why nothing was measured.
    note: Option<String>,
}

fn measure(o: &Options) -> Run {
    let (gw, ready) = Gateway::start(o);
    let mut run = Run {
        label: o.label.clone(),
        catalog: if o.consul { "Consul" } else { "files" },
        services: o.services,
        poll: o.poll_ms.map_or("default".into(), |ms| format!("{ms} ms")),
        ready_s: f64::NAN,
        routes: f64::NAN,
        idle_cpu_per_poll_ms: f64::NAN,
        idle_cpu_share: f64::NAN,
        changes: Vec::new(),
        timeouts: 0,
        failures: 0.0,
        note: None,
    };
    let ready = match ready {
        Ok(r) => r,
        Err(why) => {
            eprintln!("{why}");
            run.note = Some(why);
            return run;
        }
    };
    run.ready_s = ready.as_secs_f64();
    let pid = gw.pid();
    // Spawned just after the admin endpoint starts answering.
    let control = (0..250)
        .find_map(|_| {
            let found = thread_named(pid, "meshgate-control");
            if found.is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            found
        })
        .expect("the gateway's meshgate-control thread");
    let text = gw.metrics();
    let routes = metric(&text, "meshgate_route_table_routes").expect("meshgate_route_table_routes");
    eprintln!(
        "ready after {:.1} s with {routes} routes",
        ready.as_secs_f64()
    );
    let failures0 = metric_sum(&text, "meshgate_plugin_failures_total");

    // Idle: nothing changes; the control thread only polls.
    let calls0 = metric_sum(&gw.metrics(), "meshgate_plugin_calls_total");
    let (cpu0, t0) = (thread_cpu_ns(pid, control), Instant::now());
    std::thread::sleep(Duration::from_secs_f64(o.idle_seconds));
    let (cpu1, t1) = (thread_cpu_ns(pid, control), Instant::now());
    let calls1 = metric_sum(&gw.metrics(), "meshgate_plugin_calls_total");
    let idle_ns_per_s = (cpu1 - cpu0) as f64 / (t1 - t0).as_secs_f64();
    let polls = (calls1 - calls0).max(1.0);
    let idle_cpu_per_poll_ms = (cpu1 - cpu0) as f64 / polls / 1e6;
    eprintln!(
        "idle: {polls} polls in {:.1} s, {idle_cpu_per_poll_ms:.2} ms CPU each ({:.1} % of a core)",
        (t1 - t0).as_secs_f64(),
        idle_ns_per_s / 1e7
    );

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut critical = std::collections::BTreeSet::new();
    let mut expected = routes;
    let mut changes = Vec::new();
    let mut timeouts = 0;
    // Up to one poll interval (at most a second): changes land at every phase of the poll cycle.
    let jitter_ms = o.poll_ms.unwrap_or(250).clamp(1, 1000);
    let end = Instant::now() + Duration::from_secs_f64(o.seconds);
    while changes.len() + timeouts < o.changes && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20 + rng.next() % jitter_ms));
        let i = (rng.next() % o.services as u64) as usize;
        let status = if critical.remove(&i) {
            expected += 1.0;
            "passing"
        } else {
            critical.insert(i);
            expected -= 1.0;
            "critical"
        };
        let logged = gw.installs().len();
        let cpu_before = thread_cpu_ns(pid, control);
        let written = Instant::now();
        gw.source
            .flip(i, status)
            .unwrap_or_else(|e| panic!("flip {}: {e}", service_name(i)));
        let seen = loop {
            let now = gw.metrics();
            if metric(&now, "meshgate_route_table_routes") == Some(expected) {
                break Some(written.elapsed());
            }
            if written.elapsed() > CHANGE_TIMEOUT {
                break None;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let Some(latency) = seen else {
            eprintln!(
                "change {}: not visible within {CHANGE_TIMEOUT:?}",
                changes.len()
            );
            timeouts += 1;
            expected = metric(&gw.metrics(), "meshgate_route_table_routes").unwrap_or(expected);
            continue;
        };
        // The log line follows the install by the writer thread's latency.
        let logged_by = Instant::now() + Duration::from_millis(500);
        let line = loop {
            let lines = gw.installs();
            if lines.len() > logged {
                break lines.last().cloned();
            }
            if Instant::now() > logged_by {
                break None;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let cpu_after = thread_cpu_ns(pid, control);
        let window = written.elapsed().as_secs_f64();
        let cpu_ms = ((cpu_after - cpu_before) as f64 - idle_ns_per_s * window).max(0.0) / 1e6;
        let phases = line.and_then(|l| {
            let f = |k| Some(field(&l, k)? / 1e3);
            Some([
                f("fetch_us")?,
                f("router_us")?,
                f("build_us")?,
                f("install_us")?,
            ])
        });
        eprintln!(
            "change {:>3}: {:>5} {:<8} {:>7.1} ms, {:>6.1} ms CPU, phases {:?}",
            changes.len(),
            i,
            status,
            latency.as_secs_f64() * 1e3,
            cpu_ms,
            phases
        );
        changes.push(Change {
            latency_ms: latency.as_secs_f64() * 1e3,
            cpu_ms,
            phases,
        });
    }
    run.failures = metric_sum(&gw.metrics(), "meshgate_plugin_failures_total") - failures0;
    run.routes = routes;
    run.idle_cpu_per_poll_ms = idle_cpu_per_poll_ms;
    run.idle_cpu_share = idle_ns_per_s / 1e9;
    run.changes = changes;
    run.timeouts = timeouts;
    run
}

const HEADER: &str = "| run | catalog | services | routes | poll | ready after | changes | latency p50 | latency p99 | CPU/change p50 | CPU/change p99 | fetch p50 | router p50 | build p50 | install p50 | poll wait p50 (est.) | idle CPU/poll | idle CPU | plugin failures |\n|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";

fn row(r: &Run) -> String {
    let lat: Vec<f64> = r.changes.iter().map(|c| c.latency_ms).collect();
    let cpu: Vec<f64> = r.changes.iter().map(|c| c.cpu_ms).collect();
    let phase = |k: usize| -> Vec<f64> {
        r.changes
            .iter()
            .filter_map(|c| Some(c.phases?[k]))
            .collect()
    };
    // What the latency holds beyond the work: the wait for the next poll (and the 1 ms /metrics poll).
    let wait: Vec<f64> = r
        .changes
        .iter()
        .filter_map(|c| Some(c.latency_ms - c.phases?.iter().sum::<f64>()))
        .collect();
    if let Some(note) = &r.note {
        return format!(
            "| {} | {} | {} | | {} | | {} |{}\n",
            r.label,
            r.catalog,
            r.services,
            r.poll,
            note.replace('|', "/"),
            " |".repeat(12)
        );
    }
    let changes = if r.timeouts > 0 {
        format!("{} (+{} timed out)", r.changes.len(), r.timeouts)
    } else {
        r.changes.len().to_string()
    };
    format!(
        "| {} | {} | {} | {} | {} | {:.1} s | {} | {:.1} ms | {:.1} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.1} ms | {:.3} ms | {:.2} % | {} |\n",
        r.label,
        r.catalog,
        r.services,
        r.routes,
        r.poll,
        r.ready_s,
        changes,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&cpu, 0.5),
        percentile(&cpu, 0.99),
        percentile(&phase(0), 0.5),
        percentile(&phase(1), 0.5),
        percentile(&phase(2), 0.5),
        percentile(&phase(3), 0.5),
        percentile(&wait, 0.5),
        r.idle_cpu_per_poll_ms,
        r.idle_cpu_share * 100.0,
        r.failures,
    )
}

fn main() {
    let o = options();
    let run = measure(&o);
    let row = row(&run);
    let existing = if o.append {
        std::fs::read_to_string(&o.out).ok()
    } else {
        None
    };
    let text = match existing {
        Some(mut t) if t.contains(HEADER) => {
            t.push_str(&row);
            t
        }
        _ => format!(
            "# Control plane: one catalog change among {} services (`meshgate-control-bench`)\n\n\
             Catalog: files (`file-catalog`) or a Consul 1.8 dev agent (`consul-catalog`), with \
             `consul-router`, one worker; one change = one service's sidecar check flipped (its file \
             renamed over, or its TTL check set). Latency: the change to the table on `/metrics`. \
             CPU: the `meshgate-control` thread's, net of its idle polling. Phases: the gateway's log \
             (wall clock). Poll wait = latency - phases.\n\n{HEADER}{row}",
            o.services
        ),
    };
    print!("{text}");
    if let Some(parent) = o.out.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(&o.out, text).unwrap_or_else(|e| panic!("{}: {e}", o.out.display()));
    eprintln!("written to {}", o.out.display());
}
