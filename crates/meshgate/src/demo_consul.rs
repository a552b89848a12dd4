//! `meshgate demo --consul`: the demo's two-datacenter story with everything taken from two real
//! Consul dev agents on loopback instead of files (needs a `consul` 1.8 binary: `MESHGATE_CONSUL`, else
//! `consul` on the `PATH`, else `target/tools/consul` from `scripts/install-consul.sh`).
//!
//! dc1 (the primary, the mesh CA) and dc2 are joined over WAN. The demo registers `web` (dc1) and
//! `api` (dc2) with their sidecars, writes `proxy-defaults` (mode `local`) and the intention web → api
//! — Consul's own API, as `consul services register`, `consul config write` and `consul intention
//! create` would — and runs two meshgate gateways that register themselves and route from the agents'
//! blocking queries, and two meshgate sidecars whose listeners, upstreams, modes, certificates and
//! intentions all come from the agents. Then it plays web, as `meshgate demo` does: once in `local`
//! mode (two gateway hops), then again after a `service-defaults` entry turns web's mode `remote` (one).

use crate::demo::{self, Error};
use meshgate_config::{Config, SidecarConfig};
use meshgate_consul::lab::{self, TwoDcLab};
use meshgate_control::signals::{Signal, Signals};
use meshgate_control::{gateway, sidecar};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Bound on each gateway's first table from its agent.
const READY: Duration = Duration::from_secs(30);

pub(crate) fn run(once: bool) -> ExitCode {
    match consul_binary().and_then(|bin| demo(&bin, once)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo --consul failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The consul binary the lab starts: `MESHGATE_CONSUL`, `consul` on the `PATH`, or the one
/// `scripts/install-consul.sh target/tools` installed.
fn consul_binary() -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os("MESHGATE_CONSUL") {
        return Ok(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("consul"))
            .find(|p| p.is_file())
    });
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools/consul");
    on_path
        .or_else(|| tools.is_file().then_some(tools))
        .ok_or_else(|| {
            "no consul binary: put consul 1.8 on the PATH, set MESHGATE_CONSUL, or run scripts/install-consul.sh target/tools"
                .into()
        })
}

fn demo(bin: &Path, once: bool) -> Result<(), Error> {
    // The lab reads MESHGATE_CONSUL; set before any thread starts.
    std::env::set_var("MESHGATE_CONSUL", bin);
    println!(
        "meshgate demo --consul: two Consul dev agents ({}) joined over WAN",
        bin.display()
    );
    let lab = TwoDcLab::start()?;
    let td = lab.trust_domain()?;
    println!(
        "  dc1 agent http://{}, dc2 agent http://{}; trust domain {td}",
        lab.dc1.http_addr(),
        lab.dc2.http_addr()
    );
    demo::api_app()?;
    lab.dc2
        .register(&lab::sidecar_registration("api", 9090, 21001, json!([])))?;
    lab.dc1.register(&lab::sidecar_registration(
        "web",
        1,
        21000,
        // Consul refuses two upstreams for one service in one datacenter: the second path is shown by
        // changing the mode with a config entry instead.
        json!([{"DestinationName": "api", "Datacenter": "dc2", "LocalBindPort": 10000}]),
    ))?;
    lab.dc1.config_write(
        &json!({"Kind": "proxy-defaults", "Name": "global", "MeshGateway": {"Mode": "local"}}),
    )?;
    lab.dc1.intention("web", "api", "allow")?;
    println!("  registered web (dc1) and api (dc2) with sidecars; proxy-defaults mode local; intention web -> api allow");

    let dir = std::env::temp_dir().join(format!("meshgate-demo-consul-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let write = |name: &str, text: String| -> Result<PathBuf, Error> {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    };
    let gateway_toml = |dc: &str, port: u16, admin: u16, agent: std::net::SocketAddr| {
        format!(
            "[gateway]\ndatacenter = \"{dc}\"\nlisten = [\"127.0.0.1:{port}\"]\nadmin = \"127.0.0.1:{admin}\"\nworkers = 1\n\n\
             [consul]\naddress = \"{agent}\"\n\n[consul.register]\n\n[catalog]\nplugin = \"consul-catalog\"\n"
        )
    };
    let dc1 = Config::load(&write(
        "dc1-gateway.toml",
        gateway_toml("dc1", 8443, 19000, lab.dc1.http_addr()),
    )?)?;
    let dc2 = Config::load(&write(
        "dc2-gateway.toml",
        gateway_toml("dc2", 8444, 19001, lab.dc2.http_addr()),
    )?)?;
    let running2 = gateway::start_with(&dc2, true, Box::new(|| {}))?;
    let running1 = gateway::start_with(&dc1, true, Box::new(|| {}))?;
    for (dc, gw) in [("dc1", &running1), ("dc2", &running2)] {
        let end = Instant::now() + READY;
        while !gw.metrics().table_ready.load(Ordering::Relaxed) {
            if let Some(why) = gw.fatal() {
                return Err(why.into());
            }
            if Instant::now() > end {
                return Err(format!(
                    "the {dc} gateway had no table from its agent after {READY:?}"
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        println!("  {dc} gateway registered itself in consul and routes from its agent:");
        for r in gw.engine.snapshot().table.routes() {
            println!("    {} -> {:?}", r.pattern, r.groups[0].endpoints);
        }
    }
    let signals = if once {
        let (stop, signals) = Signals::channel();
        // A sidecar waits for its first plan until told to stop: bound the one-shot demo.
        std::thread::spawn(move || {
            std::thread::sleep(READY * 2);
            let _ = stop.send(Signal::Stop);
        });
        signals
    } else {
        Signals::install()?
    };
    let sidecar_toml = |service: &str, dc: &str, admin: u16, agent: std::net::SocketAddr| {
        format!(
            "[sidecar]\nservice = \"{service}\"\ndatacenter = \"{dc}\"\nadmin = \"127.0.0.1:{admin}\"\n\n\
             [consul]\naddress = \"{agent}\"\n\n[catalog]\nplugin = \"consul-catalog\"\nconfig = {{ service = \"{service}\" }}\n"
        )
    };
    let start_sidecar = |file: PathBuf| -> Result<sidecar::RunningSidecar, Error> {
        let config = SidecarConfig::load(&file)?;
        sidecar::start(&config, &signals)?.ok_or_else(|| "stopped".into())
    };
    let api = start_sidecar(write(
        "api-sidecar.toml",
        sidecar_toml("api", "dc2", 19101, lab.dc2.http_addr()),
    )?)?;
    let web = start_sidecar(write(
        "web-sidecar.toml",
        sidecar_toml("web", "dc1", 19100, lab.dc1.http_addr()),
    )?)?;
    println!("  sidecars: certificates, listeners, upstreams and intentions from the agents");
    // A gateway appears in the other datacenters' views (federation states) about a second after it
    // registers: wait for web's next hop, dc1's route to dc2 and api's intention before the first call.
    let end = Instant::now() + READY;
    let to_dc2 = format!("*.dc2.internal.{td}");
    let routed = |gw: &gateway::Gateway| {
        gw.engine
            .snapshot()
            .table
            .routes()
            .iter()
            .any(|r| r.pattern == to_dc2)
    };
    while web
        .sidecar
        .plan()
        .upstreams
        .iter()
        .any(|u| !u.has_next_hop())
        || api.sidecar.plan().intentions.is_empty()
        || !routed(&running1)
    {
        if Instant::now() > end {
            return Err(
                "no path from web to api yet (next hop, dc1's route to dc2, or api's intention)"
                    .into(),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (gw1, gw2) = (running1.engine.clone(), running2.engine.clone());
    let gateways = [
        ("dc1", &gw1, dc1.gateway.listen[0]),
        ("dc2", &gw2, dc2.gateway.listen[0]),
    ];
    if let Err(e) = demo::call(&gateways, &web, &api, 10000, &td) {
        println!("  FAILED: {e}");
    }
    println!("\nconsul config write: service-defaults for web with mesh gateway mode remote");
    lab.dc1.config_write(
        &json!({"Kind": "service-defaults", "Name": "web", "Protocol": "tcp", "MeshGateway": {"Mode": "remote"}}),
    )?;
    let end = Instant::now() + READY;
    while !web
        .sidecar
        .plan()
        .upstreams
        .iter()
        .any(|u| u.mode == "remote" && u.has_next_hop())
    {
        if Instant::now() > end {
            return Err("web's sidecar did not take the new mode".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Err(e) = demo::call(&gateways, &web, &api, 10000, &td) {
        println!("  FAILED: {e}");
    }
    demo::excerpt(&gw1, &gw2, &web, &api);
    if !once {
        println!("\nTry it yourself (Ctrl-C to stop):");
        println!("  echo hi | nc -q1 127.0.0.1 10000         web -> api through the gateways");
        println!(
            "  CONSUL_HTTP_ADDR={} consul intention create -deny -replace web api   then try again",
            lab.dc1.http_addr()
        );
        println!(
            "  CONSUL_HTTP_ADDR={} consul catalog services     the gateways registered themselves",
            lab.dc1.http_addr()
        );
        while let Some(Signal::Reload) = signals.recv() {}
        signals.exit_on_second_stop();
    }
    demo::stop_all([running1, running2], [gw1, gw2], [web, api])?;
    let _ = std::fs::remove_dir_all(&dir);
    // The agents go last, after everything that watches them.
    drop(lab);
    Ok(())
}
