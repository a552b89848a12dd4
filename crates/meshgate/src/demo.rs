//! `meshgate demo`: two datacenters on loopback, from `configs/demo` (embedded at build time and written
//! to a temporary directory, so the command works from anywhere).
//!
//! Each gateway's routes come from its catalog directory (Consul registrations in HCL, JSON and YAML, read
//! by the shipped `file-catalog` plugin) and Consul's rules (the `consul-router` plugin): dc1's gateway
//! (127.0.0.1:8443) routes dc1's services to their sidecars and every dc2 name to dc2's gateway
//! (127.0.0.1:8444), which routes to dc2's sidecars. The sidecars here are TLS backends with their own
//! certificates from a demo CA; clients verify them, so a line like `backend=api-dc2-1 sni=api.default.dc2...`
//! proves the connection crossed both gateways to the right place without either gateway holding a key.

use crate::gateway;
use meshgate_config::Config;
use meshgate_tlskit::{Backend, Pki};
use std::net::SocketAddr;
use std::process::ExitCode;

/// `configs/demo`, file by file.
const FILES: [(&str, &str); 10] = [
    (
        "dc1-gateway.toml",
        include_str!("../../../configs/demo/dc1-gateway.toml"),
    ),
    (
        "dc2-gateway.toml",
        include_str!("../../../configs/demo/dc2-gateway.toml"),
    ),
    (
        "catalog/dc1/web.hcl",
        include_str!("../../../configs/demo/catalog/dc1/web.hcl"),
    ),
    (
        "catalog/dc1/api.hcl",
        include_str!("../../../configs/demo/catalog/dc1/api.hcl"),
    ),
    (
        "catalog/dc1/mesh-gateway.hcl",
        include_str!("../../../configs/demo/catalog/dc1/mesh-gateway.hcl"),
    ),
    (
        "catalog/dc1/proxy-defaults.hcl",
        include_str!("../../../configs/demo/catalog/dc1/proxy-defaults.hcl"),
    ),
    (
        "catalog/dc1/dc2/mesh-gateway.json",
        include_str!("../../../configs/demo/catalog/dc1/dc2/mesh-gateway.json"),
    ),
    (
        "catalog/dc2/api.yaml",
        include_str!("../../../configs/demo/catalog/dc2/api.yaml"),
    ),
    (
        "catalog/dc2/mesh-gateway.hcl",
        include_str!("../../../configs/demo/catalog/dc2/mesh-gateway.hcl"),
    ),
    (
        "catalog/dc2/dc1/mesh-gateway.hcl",
        include_str!("../../../configs/demo/catalog/dc2/dc1/mesh-gateway.hcl"),
    ),
];
const TD: &str = "11111111-2222-3333-4444-555555555555.consul";

/// Service instances: (name, address, service SNI the certificate is for).
const INSTANCES: [(&str, &str, &str); 4] = [
    ("api-dc1-1", "127.0.0.1:9001", "api.default.dc1"),
    ("api-dc1-2", "127.0.0.1:9002", "api.default.dc1"),
    ("web-dc1-1", "127.0.0.1:9003", "web.default.dc1"),
    ("api-dc2-1", "127.0.0.1:9101", "api.default.dc2"),
];

pub(crate) fn run(once: bool) -> ExitCode {
    match demo(once) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn demo(once: bool) -> Result<(), meshgate_tlskit::Error> {
    let pki = Pki::new("meshgate demo CA")?;
    let mut backends = Vec::new();
    for (name, addr, svc) in INSTANCES {
        let sni = format!("{svc}.internal.{TD}");
        let addr: SocketAddr = addr.parse()?;
        backends.push(Backend::start(name, addr, pki.issue(&[&sni])?)?);
    }
    let dir = std::env::temp_dir().join(format!("meshgate-demo-{}", std::process::id()));
    for (name, text) in FILES {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text)?;
    }
    let dc1 = Config::load(&dir.join("dc1-gateway.toml"))?;
    let dc2 = Config::load(&dir.join("dc2-gateway.toml"))?;
    let running2 = gateway::start(&dc2)?;
    let running1 = gateway::start(&dc1)?;
    let (gw1, gw2) = (running1.engine.clone(), running2.engine.clone());
    println!(
        "catalogs: {} (Consul registrations, read by the file-catalog plugin)",
        dir.join("catalog").display()
    );
    for (dc, engine) in [("dc1", &gw1), ("dc2", &gw2)] {
        for r in engine.snapshot().table.routes() {
            println!(
                "  {dc} gateway route {} -> {:?}",
                r.pattern, r.groups[0].endpoints
            );
        }
    }
    let entry = dc1.gateway.listen[0];
    println!(
        "meshgate demo: dc1 gateway {entry} (admin {:?}), dc2 gateway {} (admin {:?})",
        dc1.gateway.admin.map(|a| a.to_string()).unwrap_or_default(),
        dc2.gateway.listen[0],
        dc2.gateway.admin.map(|a| a.to_string()).unwrap_or_default()
    );
    println!("instances: api x2 and web in dc1, api in dc2; every client verifies the instance's certificate\n");

    let client = pki.client_config(&["h2"])?;
    let asks = [
        (
            "api.default.dc1",
            "local service, round robin over 2 instances",
        ),
        ("api.default.dc1", "local service again"),
        ("web.default.dc1", "local service"),
        (
            "api.default.dc2",
            "dc2 service: dc1 gateway -> dc2 gateway -> instance",
        ),
    ];
    for (svc, what) in asks {
        let sni = format!("{svc}.internal.{TD}");
        match meshgate_tlskit::hello(entry, &sni, client.clone()) {
            Ok(answer) => println!("  {svc:<16} {what}\n      -> {answer}"),
            Err(e) => println!("  {svc:<16} {what}\n      -> FAILED: {e}"),
        }
    }
    let unknown = format!("db.default.dc1.internal.{TD}");
    match meshgate_tlskit::hello(entry, &unknown, client.clone()) {
        Ok(answer) => println!("  db.default.dc1   unexpected answer: {answer}"),
        Err(_) => println!(
            "  db.default.dc1   no such service -> closed by the gateway, counted as no_route"
        ),
    }
    // Let the last relays close and the per-route counters publish before showing metrics.
    settle(&gw1);
    settle(&gw2);
    println!("\ndc1 gateway metrics (excerpt):");
    print_metrics(&gw1.metrics().render());
    println!("dc2 gateway metrics (excerpt):");
    print_metrics(&gw2.metrics().render());

    let ca = std::env::temp_dir().join("meshgate-demo-ca.pem");
    std::fs::write(&ca, pki.ca_pem())?;
    if once {
        gw1.shutdown();
        gw2.shutdown();
        drop((running1, running2));
        gateway::finish(gw1);
        gateway::finish(gw2);
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(());
    }
    println!("\nTry it yourself (Ctrl-C to stop):");
    println!("  openssl s_client -connect {entry} -servername api.default.dc2.internal.{TD} -CAfile {} -quiet", ca.display());
    println!(
        "  curl -s http://{}/metrics | grep meshgate_",
        dc1.gateway.admin.map(|a| a.to_string()).unwrap_or_default()
    );
    println!(
        "  edit {} and watch the routes change within a second (curl .../routes)",
        dir.join("catalog").display()
    );
    gateway::serve_signals(&gw1, || {});
    gw2.shutdown();
    drop((running1, running2));
    gateway::finish(gw1);
    gateway::finish(gw2);
    drop(backends);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Waits (at most 2 s) until the engine has no open connection, plus one publication period.
fn settle(engine: &meshgate_engine::Engine) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::time::Instant::now() < deadline
        && engine
            .metrics()
            .render()
            .lines()
            .any(|l| l.starts_with("meshgate_downstream_connections_active") && !l.ends_with(" 0"))
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(250));
}

fn print_metrics(text: &str) {
    for line in text.lines() {
        let interesting = [
            "meshgate_downstream_connections_total",
            "meshgate_routed_connections_total",
            "meshgate_destination_connections_total",
            "meshgate_connections_closed_total",
            "meshgate_client_hello_total{outcome=\"ok\"}",
        ];
        if !line.starts_with('#')
            && interesting.iter().any(|p| line.starts_with(p))
            && !line.ends_with(" 0")
        {
            println!("  {line}");
        }
    }
}
