//! `meshgate demo`: service-to-service mesh traffic across two datacenters on loopback, from
//! `configs/demo` (embedded at build time and written to a temporary directory, so the command works from
//! anywhere).
//!
//! - One mesh CA made the way `meshgate ca` makes it: the root in dc1 (the primary), an intermediate for
//!   dc2, a leaf for `web` (dc1) and one for `api` (dc2).
//! - dc1: the `web` sidecar (public mTLS port 21000; upstream `api` on 10000 and again on 10001) and dc1's
//!   mesh gateway (8443). dc2: the `api` application (9090, plaintext), its sidecar (21001, default deny,
//!   an intention allows web) and dc2's mesh gateway (8444). Each reads its own catalog directory with the
//!   shipped `file-catalog` plugin; `consul-router` plans routes and upstreams.
//! - The demo plays `web`: it writes to 10000 (`local` mode from proxy-defaults: two gateway hops) and to
//!   10001 (`remote`, set on the upstream: one hop), and prints each path as the gateways' own counters
//!   recorded it, the answer from api, and the metrics. Neither gateway holds a key.

use meshgate_ca::{Authority, LeafRequest, DEFAULT_LEAF_LIFETIME};
use meshgate_config::{Config, SidecarConfig};
use meshgate_control::signals::{Signal, Signals};
use meshgate_control::{gateway, sidecar};
use meshgate_engine::Engine;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `configs/demo`, file by file.
const FILES: [(&str, &str); 13] = [
    (
        "dc1-gateway.toml",
        include_str!("../../../configs/demo/dc1-gateway.toml"),
    ),
    (
        "dc2-gateway.toml",
        include_str!("../../../configs/demo/dc2-gateway.toml"),
    ),
    (
        "web-sidecar.toml",
        include_str!("../../../configs/demo/web-sidecar.toml"),
    ),
    (
        "api-sidecar.toml",
        include_str!("../../../configs/demo/api-sidecar.toml"),
    ),
    (
        "catalog/dc1/web.hcl",
        include_str!("../../../configs/demo/catalog/dc1/web.hcl"),
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
        "catalog/dc2/api-intentions.hcl",
        include_str!("../../../configs/demo/catalog/dc2/api-intentions.hcl"),
    ),
    (
        "catalog/dc2/mesh-gateway.hcl",
        include_str!("../../../configs/demo/catalog/dc2/mesh-gateway.hcl"),
    ),
    (
        "catalog/dc2/dc1/mesh-gateway.hcl",
        include_str!("../../../configs/demo/catalog/dc2/dc1/mesh-gateway.hcl"),
    ),
    ("README.md", include_str!("../../../configs/demo/README.md")),
];
/// The demo catalogs' trust domain.
const TD: &str = "11111111-2222-3333-4444-555555555555.consul";
/// Where the `api` application listens (its registration says port 9090).
const API_APP: &str = "127.0.0.1:9090";

pub(crate) type Error = Box<dyn std::error::Error + Send + Sync>;

pub(crate) fn run(once: bool) -> ExitCode {
    match demo(once) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The CA of the demo, made as `meshgate ca init / intermediate / issue` make it.
fn make_ca(dir: &std::path::Path) -> Result<(), Error> {
    let root = Authority::init(Some(TD))?;
    root.save(&dir.join("ca/dc1"))?;
    root.intermediate("dc2")?.save(&dir.join("ca/dc2"))?;
    for (ca, service, dc) in [("ca/dc1", "web", "dc1"), ("ca/dc2", "api", "dc2")] {
        let message = crate::ca::issue(
            &dir.join(ca),
            &LeafRequest {
                service: service.into(),
                namespace: "default".into(),
                datacenter: dc.into(),
                lifetime: DEFAULT_LEAF_LIFETIME,
            },
            &dir.join("certs").join(service),
        )?;
        println!("  {message}");
    }
    Ok(())
}

/// The `api` application: answers one line per connection, in plaintext (its sidecar did the mTLS).
pub(crate) fn api_app() -> Result<(), Error> {
    let listener = TcpListener::bind(API_APP)
        .map_err(|e| format!("the api application's address {API_APP}: {e}"))?;
    std::thread::Builder::new()
        .name("demo-api-app".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                std::thread::spawn(move || {
                    let mut line = String::new();
                    let mut reader = BufReader::new(&stream);
                    if reader.read_line(&mut line).is_ok() {
                        let _ = (&stream)
                            .write_all(format!("api (dc2) answered: {}\n", line.trim()).as_bytes());
                    }
                });
            }
        })?;
    Ok(())
}

/// The counters of one metric family, by label set.
fn counters(engine: &Engine, family: &str) -> BTreeMap<String, u64> {
    engine
        .metrics()
        .render()
        .lines()
        .filter_map(|l| l.strip_prefix(family))
        .filter_map(|l| {
            let (labels, value) = l.rsplit_once(' ')?;
            Some((labels.to_owned(), value.parse::<f64>().ok()? as u64))
        })
        .collect()
}

/// What changed in a family between two reads.
fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> Vec<(String, u64)> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v.saturating_sub(before.get(k).copied().unwrap_or(0));
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

fn label<'a>(labels: &'a str, name: &str) -> &'a str {
    labels
        .split(&format!("{name}=\""))
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or("")
}

/// Ends a demo: both gateways start draining, the sidecars stop, then the drains finish (the engines'
/// extra handles are dropped first, so each drain can take its engine back).
pub(crate) fn stop_all(
    gateways: [gateway::Gateway; 2],
    engines: [Arc<Engine>; 2],
    sidecars: [sidecar::RunningSidecar; 2],
) -> Result<(), Error> {
    for g in &gateways {
        g.shutdown();
    }
    for s in sidecars {
        s.stop();
    }
    drop(engines);
    for g in gateways {
        g.finish()?;
    }
    Ok(())
}

/// The non-zero lines of the families that show the path a call took.
pub(crate) fn excerpt(
    gw1: &Engine,
    gw2: &Engine,
    web: &sidecar::RunningSidecar,
    api: &sidecar::RunningSidecar,
) {
    println!("\nmetrics (non-zero excerpt):");
    let show = |who: &str, text: String, families: &[&str]| {
        for line in text.lines() {
            if !line.starts_with('#')
                && families.iter().any(|f| line.starts_with(f))
                && !line.ends_with(" 0")
            {
                println!("  {who:<12} {line}");
            }
        }
    };
    let gw_families = [
        "meshgate_routed_connections_total",
        "meshgate_destination_connections_total",
    ];
    show("dc1 gateway", gw1.metrics().render(), &gw_families);
    show("dc2 gateway", gw2.metrics().render(), &gw_families);
    show(
        "web sidecar",
        web.sidecar.metrics().render(),
        &["meshgate_sidecar_upstream_connections_total"],
    );
    show(
        "api sidecar",
        api.sidecar.metrics().render(),
        &["meshgate_sidecar_inbound_connections_total"],
    );
}

/// One request from web through an upstream port; prints the path the gateways recorded.
pub(crate) fn call(
    gateways: &[(&str, &Arc<Engine>, SocketAddr)],
    web: &sidecar::RunningSidecar,
    api: &sidecar::RunningSidecar,
    port: u16,
    td: &str,
) -> Result<String, Error> {
    use meshgate_sidecar::stats::Inbound;
    let allowed_before = api.sidecar.metrics().inbound_total(Inbound::Allowed);
    let plan = web.sidecar.plan();
    let up = plan
        .upstreams
        .iter()
        .find(|u| u.bind.port() == port)
        .ok_or("no such upstream")?;
    println!(
        "\nweb -> {} in {} through upstream {}: mode {} (decided by {})",
        up.service,
        up.first().map_or("?", |t| t.datacenter.as_str()),
        up.bind,
        up.mode,
        up.mode_source
    );
    let family = "meshgate_destination_connections_total";
    let before: Vec<_> = gateways
        .iter()
        .map(|(_, e, _)| counters(e, family))
        .collect();
    let mut s = TcpStream::connect(up.bind)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("hello from web via port {port}\n").as_bytes())?;
    let mut answer = String::new();
    BufReader::new(&s).read_line(&mut answer)?;
    // The gateways publish per-destination counters a few times a second: wait for the hop to show.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut hops = Vec::new();
    while Instant::now() < deadline {
        hops = gateways
            .iter()
            .zip(&before)
            .flat_map(|((name, e, addr), b)| {
                delta(b, &counters(e, family))
                    .into_iter()
                    .map(move |(labels, n)| (*name, *addr, labels, n))
            })
            .collect();
        let expected = if up.first().is_some_and(|t| t.via_gateway) && up.mode == "local" {
            2
        } else {
            1
        };
        if hops.len() >= expected {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut from = "web sidecar".to_owned();
    for (i, (name, addr, labels, _)) in hops.iter().enumerate() {
        let sni = format!(
            "{}.{}.{}.internal.{td}",
            label(labels, "service"),
            label(labels, "namespace"),
            label(labels, "datacenter")
        );
        println!(
            "  hop {}: {from} -> {name} gateway {addr}, which saw SNI {sni} (TLS untouched)",
            i + 1
        );
        from = format!("{name} gateway");
    }
    let api_plan = api.sidecar.plan();
    let verdict = if api.sidecar.metrics().inbound_total(Inbound::Allowed) > allowed_before {
        "verified web's certificate and allowed it by intention"
    } else {
        "did not let web in"
    };
    println!(
        "  hop {}: {from} -> api sidecar {}, which {verdict} -> api application {API_APP}",
        hops.len() + 1,
        api_plan.public
    );
    println!("  answer: {}", answer.trim());
    Ok(answer)
}

fn demo(once: bool) -> Result<(), Error> {
    let dir = std::env::temp_dir().join(format!("meshgate-demo-{}", std::process::id()));
    for (name, text) in FILES {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text)?;
    }
    println!(
        "meshgate demo: two datacenters on loopback, files in {}",
        dir.display()
    );
    println!("mesh CA (trust domain {TD}): root in dc1 (the primary), intermediate for dc2");
    make_ca(&dir)?;
    api_app()?;

    let dc1 = Config::load(&dir.join("dc1-gateway.toml"))?;
    let dc2 = Config::load(&dir.join("dc2-gateway.toml"))?;
    let running2 = gateway::start(&dc2)?;
    let running1 = gateway::start(&dc1)?;
    let (gw1, gw2) = (running1.engine.clone(), running2.engine.clone());
    // Ctrl-C before the sidecars have their first plan ends the demo; afterwards it starts the drain.
    let signals = if once {
        Signals::channel().1
    } else {
        Signals::install()?
    };
    let start_sidecar = |file: &str| -> Result<sidecar::RunningSidecar, Error> {
        let config = SidecarConfig::load(&dir.join(file))?;
        sidecar::start(&config, &signals)?.ok_or_else(|| "stopped".into())
    };
    let api = start_sidecar("api-sidecar.toml")?;
    let web = start_sidecar("web-sidecar.toml")?;
    for (dc, engine) in [("dc1", &gw1), ("dc2", &gw2)] {
        for r in engine.snapshot().table.routes() {
            println!(
                "  {dc} gateway route {} -> {:?}",
                r.pattern, r.groups[0].endpoints
            );
        }
    }
    let gateways = [
        ("dc1", &gw1, dc1.gateway.listen[0]),
        ("dc2", &gw2, dc2.gateway.listen[0]),
    ];
    for port in [10000, 10001] {
        if let Err(e) = call(&gateways, &web, &api, port, TD) {
            println!("  FAILED: {e}");
        }
    }

    excerpt(&gw1, &gw2, &web, &api);

    if !once {
        println!("\nTry it yourself (Ctrl-C to stop):");
        println!("  echo hi | nc -q1 127.0.0.1 10000         web -> api, two gateway hops");
        println!("  echo hi | nc -q1 127.0.0.1 10001         web -> api, one gateway hop");
        println!("  curl -s 127.0.0.1:19100/routes           web sidecar's plan (upstreams, modes, next hops)");
        println!("  curl -s 127.0.0.1:19000/metrics          dc1 gateway metrics (19001: dc2; 19101: api sidecar)");
        println!(
            "  edit {} (modes, intentions, health) and watch it apply within a second",
            dir.join("catalog").display()
        );
        while let Some(Signal::Reload) = signals.recv() {}
        signals.exit_on_second_stop();
    }
    stop_all([running1, running2], [gw1, gw2], [web, api])?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
