//! The real `meshgate gateway` as Consul's mesh gateway (issue 12: one meshgate command replaces
//! `consul connect envoy -gateway=mesh -register`), end to end against real Consul 1.8.7 agents from
//! `meshgate_consul::lab`, written against the contract's config surface (`[consul]`,
//! `[consul.register]` / `--register`, `[catalog] plugin = "consul-catalog"`) and metrics:
//!
//! - `two_datacenters_routed_from_consul_alone`: gateways in dc1 and dc2 register themselves, route
//!   only from Consul; a TLS client through dc1's gateway reaches api's sidecar in dc2; a late service
//!   is routed within 1 s, a critical instance stops being routed within 1 s, resolver subsets route by
//!   filter; both gateways are mesh-gateway services with the right tagged addresses;
//! - `agent_outage_keeps_the_last_table_and_recovers`: the agent killed mid-traffic, then restarted;
//! - `sigterm_enters_maintenance_drains_and_deregisters`;
//! - `acl_tokens_minimal_works_missing_permissions_exit_2`;
//! - `catalog_change_to_route_latency`: 50 changes, p50/p99 and HTTP requests per change printed;
//! - `a_catalog_past_the_agents_connection_limit_is_read_in_one_query`: 150 services on a default agent.
//!
//! Each test has its own lab, so they stay independent and may run in parallel (cargo's default on
//! this 2-core machine is 2 at a time: at most 4 agents of ~60 MB and 4 single-core gateways). Only
//! the first needs two datacenters; the others are about one gateway and its local agent, so they use
//! one agent: a second would add memory and WAN gossip with nothing to assert.
//!
//! Waits are bounded polls of a condition (admin `/routes`, `/ready`, `/metrics`, the agent's API),
//! never bare sleeps. Timings are printed with `eprintln!` for the report; only the contract's claims
//! (1 s for a catalog change) and loose bounds are asserted.

mod common;

use common::consul::{MeshGw, Register};
use common::{free_port, metric, poll_until, wait_for, DumpOnPanic};
use meshgate_consul::lab::{self, DevAgent, Instance, Options, TwoDcLab};
use meshgate_consul::model::{CheckServiceNode, Service};
use meshgate_tlskit::{Backend, Pki};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bound on set-up changes the tests do not time (config entry replication from the primary, a
/// registration reaching the catalog).
const SETTLE: Duration = Duration::from_secs(30);
/// The claim under test: a catalog change reaches the gateway's table within this.
const CHANGE_BOUND: Duration = Duration::from_secs(1);
/// Bound on the gateway's exit after SIGTERM or a refused start.
const EXIT: Duration = Duration::from_secs(15);
/// Bound on the gateway finding a restarted agent: its retry backoff is capped at 60 s (contract:
/// "retrying with backoff"), plus jitter.
const RECONNECT: Duration = Duration::from_secs(90);
/// How stale (seconds) the outage test lets the gateway's view get before the agent comes back.
const OUTAGE_STALE: f64 = 2.0;

/// `<svc>.default.<dc>.internal.<td>`.
fn sni(svc: &str, dc: &str, td: &str) -> String {
    format!("{svc}.default.{dc}.internal.{td}")
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A TLS backend answering as `name` with a certificate for `names` (the gateway does not terminate
/// TLS, so the client verifies the backend itself: a wrong route fails the handshake).
fn backend(pki: &Pki, name: &str, names: &[&str]) -> Backend {
    Backend::start(name, any_port(), pki.issue(names).expect("issue")).expect("backend")
}

/// Opens a TLS `HELLO` through `via` for `name`; the backend's answer, or `None` if the gateway closed
/// the connection (no route).
fn hello(via: SocketAddr, name: &str, pki: &Pki) -> Option<String> {
    let client = pki.client_config(&[]).expect("client config");
    meshgate_tlskit::hello(via, name, client).ok()
}

/// The `/v1/health/service/<name>` entries of mesh-gateway kind in the agent's datacenter.
fn catalog_gateways(agent: &DevAgent) -> Vec<CheckServiceNode> {
    agent
        .get::<Vec<CheckServiceNode>>("/v1/health/service/mesh-gateway")
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.service.kind == "mesh-gateway")
        .collect()
}

fn tagged(service: &Service, key: &str) -> Option<SocketAddr> {
    let a = service.tagged_addresses.get(key)?;
    format!("{}:{}", a.address, a.port).parse().ok()
}

#[test]
fn two_datacenters_routed_from_consul_alone() {
    if lab::skip_requested() {
        return;
    }
    let lab = TwoDcLab::start().expect("two-datacenter lab");
    let td = lab.trust_domain().expect("trust domain");
    let pki = Pki::new("consul-mesh backends").expect("pki");
    let api = sni("api", "dc2", &td);
    let (v1, v2) = (format!("v1.{api}"), format!("v2.{api}"));
    let api1 = backend(&pki, "api-v1", &[&api, &v1]);
    let api1_instance = Instance::new("api", "api-1", api1.addr().port()).meta("version", "1");
    lab.dc2
        .register_with_sidecar(&api1_instance)
        .expect("register api-1");

    let gw2 = MeshGw::start(&lab.dc2, Register::ConfigWithWan, None, "");
    let gw1 = MeshGw::start(&lab.dc1, Register::Flag, None, "");
    let _dump = DumpOnPanic::new(&[&gw1.proc, &gw2.proc]);

    // Both are mesh-gateway services in their datacenter's catalog, with their LAN and WAN addresses.
    for (agent, gw) in [(&lab.dc1, &gw1), (&lab.dc2, &gw2)] {
        let nodes = wait_for(SETTLE, "the gateway in the catalog", || {
            Some(catalog_gateways(agent)).filter(|n| n.len() == 1)
        });
        let s = &nodes[0].service;
        assert_eq!(
            (s.id.as_str(), s.service.as_str()),
            ("mesh-gateway", "mesh-gateway")
        );
        assert_eq!(
            (s.address.as_str(), s.port),
            ("127.0.0.1", gw.listen.port())
        );
        assert_eq!(tagged(s, "lan"), Some(gw.listen), "{s:?}");
        assert_eq!(tagged(s, "wan"), Some(gw.wan), "{s:?}");
    }
    assert_ne!(gw2.wan, gw2.listen);

    // dc1's gateway sends dc2's names to dc2's gateway's WAN address; dc2's sends api to its sidecar.
    let remote = format!("*.dc2.internal.{td}");
    gw1.wait_route(&remote, SETTLE, |eps| eps == [gw2.wan]);
    gw2.wait_route(&api, SETTLE, |eps| eps == [api1.addr()]);
    assert_eq!(
        hello(gw1.listen, &api, &pki).as_deref(),
        Some(format!("backend=api-v1 sni={api} alpn=").as_str())
    );

    // A service registered later is routed within a second.
    let billing_name = sni("billing", "dc2", &td);
    let billing = backend(&pki, "billing", &[&billing_name]);
    let t0 = Instant::now();
    lab.dc2
        .register_with_sidecar(&Instance::new(
            "billing",
            "billing-1",
            billing.addr().port(),
        ))
        .expect("register billing");
    gw2.wait_route(&billing_name, SETTLE, |eps| eps == [billing.addr()]);
    let routed = t0.elapsed();
    let answer = wait_for(SETTLE, "billing through dc1's gateway", || {
        hello(gw1.listen, &billing_name, &pki)
    });
    let reachable = t0.elapsed();
    assert!(answer.starts_with("backend=billing "), "{answer}");
    eprintln!(
        "late registration in dc2: in dc2's gateway table after {routed:?}, reachable through dc1's gateway after {reachable:?}"
    );
    assert!(routed < CHANGE_BOUND, "billing routed after {routed:?}");

    // api's only instance goes critical: new connections stop within a second.
    assert!(hello(gw1.listen, &api, &pki).is_some(), "api routed before");
    let t0 = Instant::now();
    lab.dc2
        .check_fail(&api1_instance.check_id())
        .expect("fail check");
    wait_for(SETTLE, "api no longer reachable", || {
        hello(gw1.listen, &api, &pki).is_none().then_some(())
    });
    let stopped = t0.elapsed();
    eprintln!("critical instance: new connections refused after {stopped:?}");
    assert!(stopped < CHANGE_BOUND, "still routed after {stopped:?}");
    lab.dc2
        .check_pass(&api1_instance.check_id())
        .expect("pass check");
    wait_for(SETTLE, "api reachable again", || {
        hello(gw1.listen, &api, &pki)
    });

    // Resolver subsets route by their filter on the sidecar's (inherited) meta.
    let api2 = backend(&pki, "api-v2", &[&api, &v2]);
    lab.dc2
        .register_with_sidecar(
            &Instance::new("api", "api-2", api2.addr().port()).meta("version", "2"),
        )
        .expect("register api-2");
    let mut both = vec![api1.addr(), api2.addr()];
    both.sort();
    gw2.wait_route(&api, SETTLE, |eps| eps == both.as_slice());
    // Config entries are written in the primary and replicated to dc2.
    lab.dc1
        .config_write(&serde_json::json!({
            "Kind": "service-resolver", "Name": "api",
            "Subsets": {
                "v1": {"Filter": "Service.Meta.version == 1"},
                "v2": {"Filter": "Service.Meta.version == 2"}
            }
        }))
        .expect("service-resolver");
    gw2.wait_route(&v1, SETTLE, |eps| eps == [api1.addr()]);
    gw2.wait_route(&v2, SETTLE, |eps| eps == [api2.addr()]);
    for (name, who) in [(&v1, "api-v1"), (&v2, "api-v2")] {
        let answer = hello(gw1.listen, name, &pki).expect("subset through dc1");
        assert_eq!(answer, format!("backend={who} sni={name} alpn="));
    }
}

/// An `ECHO` session through the gateway, kept busy by a thread until stopped: the number of round
/// trips that succeeded, and the first error if any.
struct LiveTransfer {
    stop: Arc<AtomicBool>,
    trips: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<Result<(), String>>,
}

impl LiveTransfer {
    fn start(via: SocketAddr, name: &str, pki: &Pki) -> LiveTransfer {
        let client = pki.client_config(&[]).expect("client config");
        let mut tls = meshgate_tlskit::connect(via, name, client).expect("live connection");
        tls.write_all(b"ECHO\n").expect("echo");
        let stop = Arc::new(AtomicBool::new(false));
        let trips = Arc::new(AtomicU64::new(0));
        let (stop2, trips2) = (stop.clone(), trips.clone());
        let thread = std::thread::spawn(move || {
            let mut tls = BufReader::new(tls);
            // Bounded: the test stops it long before; a stuck loop still ends.
            for i in 0..1_000_000u64 {
                if stop2.load(Ordering::SeqCst) {
                    return Ok(());
                }
                let line = format!("round {i}\n");
                tls.get_mut()
                    .write_all(line.as_bytes())
                    .map_err(|e| format!("write {i}: {e}"))?;
                let mut back = String::new();
                tls.read_line(&mut back)
                    .map_err(|e| format!("read {i}: {e}"))?;
                if back != line {
                    return Err(format!("round {i}: got {back:?}"));
                }
                trips2.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        });
        LiveTransfer {
            stop,
            trips,
            thread,
        }
    }

    fn trips(&self) -> u64 {
        self.trips.load(Ordering::SeqCst)
    }

    /// Waits until `n` more round trips than now have been made (at most 10 s).
    fn advance(&self, n: u64) {
        let target = self.trips() + n;
        wait_for(Duration::from_secs(10), "live transfer progress", || {
            (self.trips() >= target).then_some(())
        });
    }

    fn finish(self) -> (u64, Result<(), String>) {
        self.stop.store(true, Ordering::SeqCst);
        let result = self
            .thread
            .join()
            .unwrap_or_else(|_| Err("transfer thread panicked".into()));
        (self.trips.load(Ordering::SeqCst), result)
    }
}

#[test]
fn agent_outage_keeps_the_last_table_and_recovers() {
    if lab::skip_requested() {
        return;
    }
    let mut consul = DevAgent::start(Options::dc("dc1")).expect("consul dev agent");
    let td = consul.trust_domain().expect("trust domain");
    let pki = Pki::new("consul-mesh backends").expect("pki");
    let web = sni("web", "dc1", &td);
    let web_backend = backend(&pki, "web", &[&web]);
    consul
        .register_with_sidecar(&Instance::new("web", "web-1", web_backend.addr().port()))
        .expect("register web");
    let gw = MeshGw::start(&consul, Register::Flag, None, "");
    let _dump = DumpOnPanic::new(&[&gw.proc]);
    gw.wait_route(&web, SETTLE, |eps| eps == [web_backend.addr()]);
    wait_for(SETTLE, "registered", || {
        (gw.gauge("meshgate_consul_registered") == 1.0).then_some(())
    });
    let live = LiveTransfer::start(gw.listen, &web, &pki);
    live.advance(10);

    // The agent dies (SIGKILL: no leave, no goodbye).
    let killed = Instant::now();
    consul.kill();
    // The live transfer keeps going, new connections are routed on the last table, /ready stays 200.
    live.advance(100);
    // Kept down until the staleness shows a real outage (OUTAGE_STALE), probing all along.
    let mut routed_during = 0u32;
    let mut stale = None;
    wait_for(
        SETTLE,
        "meshgate_consul_stale_seconds >= OUTAGE_STALE",
        || {
            assert_eq!(gw.ready(), Some(200), "/ready during the outage");
            let answer = hello(gw.listen, &web, &pki).expect("routed on the last table");
            assert!(answer.starts_with("backend=web "), "{answer}");
            routed_during += 1;
            let value = gw.gauge("meshgate_consul_stale_seconds");
            if value > 0.0 && stale.is_none() {
                stale = Some(killed.elapsed());
            }
            (value >= OUTAGE_STALE).then_some(())
        },
    );
    let stale = stale.expect("stale > 0");
    let stale_value = gw.gauge("meshgate_consul_stale_seconds");
    assert!(gw.routes().contains_key(&web), "the last table is kept");
    live.advance(10);
    let outage = killed.elapsed();

    // The agent comes back on the same ports, empty (-dev keeps nothing): the gateway registers again
    // and its watches resume.
    let restarted_at = Instant::now();
    consul.restart().expect("restart the agent");
    let agent_up = restarted_at.elapsed();
    let reregistered = wait_for(RECONNECT, "the gateway registered again", || {
        let services = consul.agent_services().ok()?;
        services
            .values()
            .any(|s| s.kind == "mesh-gateway" && s.port == gw.listen.port())
            .then(|| restarted_at.elapsed())
    });
    let td2 = consul.trust_domain().expect("trust domain after restart");
    let late = sni("late", "dc1", &td2);
    let late_backend = backend(&pki, "late", &[&late]);
    let t0 = Instant::now();
    consul
        .register_with_sidecar(&Instance::new("late", "late-1", late_backend.addr().port()))
        .expect("register late");
    gw.wait_route(&late, RECONNECT, |eps| eps == [late_backend.addr()]);
    let routed = t0.elapsed();
    let resumed = restarted_at.elapsed();
    assert!(hello(gw.listen, &late, &pki)
        .expect("late service through the gateway")
        .starts_with("backend=late "));
    wait_for(SETTLE, "stale back to 0 and registered", || {
        (gw.gauge("meshgate_consul_stale_seconds") == 0.0
            && gw.gauge("meshgate_consul_registered") == 1.0)
            .then_some(())
    });
    live.advance(10);
    let (trips, result) = live.finish();
    assert_eq!(
        result,
        Ok(()),
        "the live transfer broke after {trips} round trips"
    );
    eprintln!(
        "agent outage: stale metric > 0 after {stale:?}, {stale_value:.2} s when the agent came back; \
         {routed_during} new connections routed on the last table (and /ready 200) during the {outage:?} outage; \
         agent ready again {agent_up:?} after its restart; gateway registered again {reregistered:?} \
         after the restart; a new service routed {routed:?} after its registration ({resumed:?} after \
         the restart); live transfer {trips} round trips, none lost; trust domain {td} -> {td2}"
    );
}

#[test]
fn sigterm_enters_maintenance_drains_and_deregisters() {
    if lab::skip_requested() {
        return;
    }
    let consul = DevAgent::start(Options::dc("dc1")).expect("consul dev agent");
    let td = consul.trust_domain().expect("trust domain");
    let pki = Pki::new("consul-mesh backends").expect("pki");
    let web = sni("web", "dc1", &td);
    let web_backend = backend(&pki, "web", &[&web]);
    consul
        .register_with_sidecar(&Instance::new("web", "web-1", web_backend.addr().port()))
        .expect("register web");
    let mut gw = MeshGw::start(&consul, Register::Flag, None, "drain_timeout_secs = 20");
    let _dump = DumpOnPanic::new(&[&gw.proc]);
    gw.wait_route(&web, SETTLE, |eps| eps == [web_backend.addr()]);
    wait_for(SETTLE, "registered", || {
        consul
            .agent_services()
            .ok()?
            .contains_key("mesh-gateway")
            .then_some(())
    });
    // A live connection holds the drain open, so the maintenance phase can be seen.
    let live = LiveTransfer::start(gw.listen, &web, &pki);
    live.advance(5);

    let termed = Instant::now();
    gw.term();
    let maintenance = wait_for(SETTLE, "maintenance on during the drain", || {
        let checks: BTreeMap<String, serde_json::Value> = consul.get("/v1/agent/checks").ok()?;
        let check = checks.get("_service_maintenance:mesh-gateway")?;
        assert_eq!(check["Status"], "critical");
        Some(termed.elapsed())
    });
    assert!(
        consul
            .agent_services()
            .expect("services")
            .contains_key("mesh-gateway"),
        "still registered (in maintenance) while connections drain"
    );
    assert!(gw.proc.exited().is_none(), "draining, not gone");
    live.advance(10);
    let (trips, result) = live.finish();
    assert_eq!(
        result,
        Ok(()),
        "the live connection was cut during the drain"
    );

    let status = gw.wait_exit(EXIT);
    let exited = termed.elapsed();
    assert!(status.success(), "{status}");
    // The deregistration is a synchronous call to the agent made before exiting.
    assert!(
        !consul
            .agent_services()
            .expect("services")
            .contains_key("mesh-gateway"),
        "deregistered before exit"
    );
    eprintln!(
        "SIGTERM: maintenance seen after {maintenance:?}; exit 0 after {exited:?} ({trips} round trips drained)"
    );
}

/// §7.1's minimal mesh-gateway policy.
const GATEWAY_RULES: &str = r#"
service "mesh-gateway" { policy = "write" }
service_prefix ""      { policy = "read" }
node_prefix ""         { policy = "read" }
"#;

#[test]
fn acl_tokens_minimal_works_missing_permissions_exit_2() {
    if lab::skip_requested() {
        return;
    }
    let consul = DevAgent::start(Options::dc("dc1").acl()).expect("ACL consul dev agent");
    let td = consul.trust_domain().expect("trust domain");
    consul
        .create_policy("mesh-gateway", GATEWAY_RULES)
        .expect("policy");
    consul
        .create_policy(
            "gw-no-node-read",
            "service \"mesh-gateway\" { policy = \"write\" }\nservice_prefix \"\" { policy = \"read\" }",
        )
        .expect("policy");
    let minimal = consul.create_token(&["mesh-gateway"]).expect("token");
    let no_node_read = consul.create_token(&["gw-no-node-read"]).expect("token");

    // No token: registration is refused; the process says which permission and exits 2.
    let mut gw = MeshGw::spawn(&consul, Register::Flag, None, "");
    let dump = DumpOnPanic::new(&[&gw.proc]);
    let status = gw.wait_exit(EXIT);
    drop(dump);
    let log = gw.proc.log();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("lacks service:write"), "{log}");

    // A token without node:read: the preflight names it, exit 2.
    let mut gw = MeshGw::spawn(&consul, Register::Flag, Some(&no_node_read), "");
    let dump = DumpOnPanic::new(&[&gw.proc]);
    let status = gw.wait_exit(EXIT);
    drop(dump);
    let log = gw.proc.log();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("lacks node:read"), "{log}");
    assert!(!log.contains("lacks service:write"), "{log}");
    assert!(
        !consul
            .agent_services()
            .expect("services")
            .contains_key("mesh-gateway"),
        "a refused gateway leaves no registration behind"
    );

    // The minimal token registers and routes.
    let pki = Pki::new("consul-mesh backends").expect("pki");
    let web = sni("web", "dc1", &td);
    let web_backend = backend(&pki, "web", &[&web]);
    consul
        .register_with_sidecar(&Instance::new("web", "web-1", web_backend.addr().port()))
        .expect("register web");
    let gw = MeshGw::start(&consul, Register::Flag, Some(&minimal), "");
    let _dump = DumpOnPanic::new(&[&gw.proc]);
    wait_for(SETTLE, "registered with the minimal token", || {
        consul
            .agent_services()
            .ok()?
            .get("mesh-gateway")
            .filter(|s| s.kind == "mesh-gateway")
            .map(|_| ())
    });
    gw.wait_route(&web, SETTLE, |eps| eps == [web_backend.addr()]);
    let answer = hello(gw.listen, &web, &pki).expect("web through the gateway");
    assert!(answer.starts_with("backend=web "), "{answer}");
    assert_eq!(
        metric(
            &gw.metrics(),
            "meshgate_consul_requests_total",
            &["outcome=\"forbidden\""]
        ),
        0,
        "the minimal token is refused nothing"
    );
}

/// What one measured change does, and what the table shows after it.
#[derive(Clone, Copy, Debug)]
enum Change {
    Register,
    Fail,
    Pass,
    Deregister,
}

#[test]
fn catalog_change_to_route_latency() {
    if lab::skip_requested() {
        return;
    }
    const CHANGES: usize = 50;
    let consul = DevAgent::start(Options::dc("dc1")).expect("consul dev agent");
    let td = consul.trust_domain().expect("trust domain");
    let gw = MeshGw::start(&consul, Register::Flag, None, "");
    let _dump = DumpOnPanic::new(&[&gw.proc]);
    // Nothing needs to listen on the sidecar port: the measurement reads the table, not traffic.
    let port = free_port();
    // Quiet start: the gateway's own registration has settled into the table's inputs.
    wait_for(SETTLE, "registered", || {
        (gw.gauge("meshgate_consul_registered") == 1.0).then_some(())
    });
    let requests_before = gw.consul_requests();
    let mut latencies = Vec::with_capacity(CHANGES);
    let mut by_kind: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    let cycle = [
        Change::Register,
        Change::Fail,
        Change::Pass,
        Change::Deregister,
    ];
    for i in 0..CHANGES {
        // A new service name each cycle: a registration also starts a new watch, as in production.
        let instance = Instance::new(&format!("m{}", i / 4), &format!("m{}-1", i / 4), port);
        let name = sni(&instance.name, "dc1", &td);
        let change = cycle[i % 4];
        let t0 = Instant::now();
        match change {
            Change::Register => consul.register_with_sidecar(&instance),
            Change::Fail => consul.check_fail(&instance.check_id()),
            Change::Pass => consul.check_pass(&instance.check_id()),
            Change::Deregister => consul.deregister(&instance.id),
        }
        .expect("change");
        let present = matches!(change, Change::Register | Change::Pass);
        let seen = poll_until(Duration::from_secs(10), || {
            (gw.routes().contains_key(&name) == present).then(|| t0.elapsed())
        });
        let took =
            seen.unwrap_or_else(|| panic!("change {i} ({change:?} {name}) not seen within 10 s"));
        latencies.push(took);
        by_kind.entry(format!("{change:?}")).or_default().push(took);
    }
    let requests = gw.consul_requests() - requests_before;
    latencies.sort();
    let pick = |q: f64| {
        latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    let (p50, p99, max) = (pick(0.5), pick(0.99), latencies[latencies.len() - 1]);
    let per_change = requests as f64 / CHANGES as f64;
    eprintln!(
        "catalog change -> /routes over {CHANGES} changes (register/fail/pass/deregister): p50 {p50:?}, p99 {p99:?}, max {max:?}; {requests} Consul HTTP requests, {per_change:.2} per change"
    );
    for (kind, mut times) in by_kind {
        times.sort();
        eprintln!(
            "  {kind}: median {:?}, max {:?} over {}",
            times[times.len() / 2],
            times[times.len() - 1],
            times.len()
        );
    }
    // Loose bounds: the claim is "well under a second"; the tail follows the machine's load.
    assert!(p50 < CHANGE_BOUND, "p50 {p50:?}");
    assert!(p99 < Duration::from_secs(5), "p99 {p99:?}");
    assert!(per_change < 20.0, "{per_change} requests per change");
}

#[test]
fn two_gateways_in_one_datacenter_both_carry_traffic() {
    if lab::skip_requested() {
        return;
    }
    let lab = TwoDcLab::start().expect("two-datacenter lab");
    let td = lab.trust_domain().expect("trust domain");
    let pki = Pki::new("consul-mesh backends").expect("pki");
    let api = sni("api", "dc2", &td);
    let api1 = backend(&pki, "api", &[&api]);
    lab.dc2
        .register_with_sidecar(&Instance::new("api", "api-1", api1.addr().port()))
        .expect("register api-1");
    // Two gateway hosts in dc2 (one agent here, so two service names: the ID is the name).
    let gw2a = MeshGw::start_as("mesh-gateway", &lab.dc2, Register::ConfigWithWan, None, "");
    let gw2b = MeshGw::start_as(
        "mesh-gateway-b",
        &lab.dc2,
        Register::ConfigWithWan,
        None,
        "",
    );
    let gw1 = MeshGw::start(&lab.dc1, Register::Flag, None, "");
    let _dump = DumpOnPanic::new(&[&gw1.proc, &gw2a.proc, &gw2b.proc]);
    let mut both = vec![gw2a.wan, gw2b.wan];
    both.sort();
    gw1.wait_route(&format!("*.dc2.internal.{td}"), SETTLE, |eps| eps == both);
    for i in 0..8 {
        let answer =
            hello(gw1.listen, &api, &pki).unwrap_or_else(|| panic!("call {i} through dc1"));
        assert!(answer.starts_with("backend=api "), "{answer}");
    }
    let counted = |gw: &MeshGw| {
        gw.gauge("meshgate_destination_connections_total{datacenter=\"dc2\",namespace=\"default\",service=\"api\"}")
    };
    wait_for(SETTLE, "both dc2 gateways carried calls", || {
        (counted(&gw2a) + counted(&gw2b) == 8.0).then_some(())
    });
    assert!(
        counted(&gw2a) >= 1.0 && counted(&gw2b) >= 1.0,
        "one gateway took everything: {} / {}",
        counted(&gw2a),
        counted(&gw2b)
    );
}

/// A catalog larger than one watch per service allows: 150 services with sidecars are 302 listed names,
/// and the agent takes at most 200 connections from one client (its default
/// `http_max_conns_per_client`, which this lab keeps), one per blocking query. The gateway reads the
/// whole local catalog in one query (`discovery = "auto"` above 128 names): it gets ready, routes every
/// service, carries a real TLS connection to one, follows a health change, and runs a handful of
/// watches, not hundreds.
#[test]
fn a_catalog_past_the_agents_connection_limit_is_read_in_one_query() {
    if lab::skip_requested() {
        return;
    }
    const SERVICES: usize = 150;
    let consul = DevAgent::start(Options::dc("dc1")).expect("consul dev agent");
    let td = consul.trust_domain().expect("trust domain");
    let pki = Pki::new("large catalog").expect("pki");
    let name = |i: usize| format!("bulk{i}");
    let served = backend(&pki, "bulk0", &[&sni(&name(0), "dc1", &td)]);
    let idle_port = free_port();
    let registering = Instant::now();
    for i in 0..SERVICES {
        let port = if i == 0 {
            served.addr().port()
        } else {
            idle_port
        };
        consul
            .register_with_sidecar(&Instance::new(&name(i), &format!("{}-1", name(i)), port))
            .expect("register");
    }
    eprintln!(
        "{SERVICES} services registered in {:?}",
        registering.elapsed()
    );
    let gw = MeshGw::start(&consul, Register::Flag, None, "");
    let _dump = DumpOnPanic::new(&[&gw.proc]);
    let all = wait_for(SETTLE, "every service routed", || {
        let routes = gw.routes();
        (0..SERVICES)
            .all(|i| routes.contains_key(&sni(&name(i), "dc1", &td)))
            .then_some(routes.len())
    });
    let watches = gw.gauge("meshgate_consul_watches");
    eprintln!("{all} routes from {watches} watches");
    assert!(
        watches <= 8.0,
        "{watches} watches for {SERVICES} services: not one query for the catalog"
    );
    let via = gw.listen;
    let answered = hello(via, &sni(&name(0), "dc1", &td), &pki);
    assert!(
        answered
            .as_deref()
            .is_some_and(|a| a.starts_with("backend=bulk0 ")),
        "{answered:?}"
    );

    // A health change anywhere in the catalog reaches the table.
    let changed = Instance::new(&name(7), &format!("{}-1", name(7)), idle_port);
    let routed = |present: bool| {
        poll_until(Duration::from_secs(10), || {
            (gw.routes().contains_key(&sni(&name(7), "dc1", &td)) == present).then_some(())
        })
    };
    let t0 = Instant::now();
    consul.check_fail(&changed.check_id()).expect("fail");
    routed(false).expect("a critical service leaves the table");
    let out = t0.elapsed();
    let t0 = Instant::now();
    consul.check_pass(&changed.check_id()).expect("pass");
    routed(true).expect("a passing service comes back");
    eprintln!(
        "one check among {SERVICES} services: out of the table in {out:?}, back in {:?}",
        t0.elapsed()
    );
    let answered = hello(via, &sni(&name(0), "dc1", &td), &pki);
    assert!(
        answered
            .as_deref()
            .is_some_and(|a| a.starts_with("backend=bulk0 ")),
        "{answered:?} after the change"
    );
    assert!(
        gw.gauge("meshgate_consul_watches") <= 8.0,
        "still a handful of watches"
    );
}
