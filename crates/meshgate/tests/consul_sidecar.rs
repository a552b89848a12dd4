//! `meshgate sidecar` in agent mode against real Consul 1.8.7 agents (two datacenters on loopback,
//! `meshgate_consul::lab`), beside Consul's own built-in proxy: listeners, upstreams and gateway modes
//! from the proxy registrations and the config entries as Consul resolves them, the leaf and the roots
//! from the agent (no `[tls]` files), intentions from Consul, next hops through meshgate gateways that
//! registered themselves. Nothing is written by hand but Consul registrations, config entries and
//! intentions:
//!
//! - web (dc1, meshgate sidecar) → api (dc2, meshgate sidecar) in `local` mode (`proxy-defaults`): two
//!   gateway hops on the gateways' own counters; after `service-defaults` for web says `remote`: one;
//! - web → billing (dc2) fronted by `consul connect proxy -sidecar-for billing`, which verifies web's
//!   Consul leaf and authorizes it with the agent;
//! - a CA rotation in the primary reaches both sidecars' trust bundles without a restart, and calls keep
//!   working;
//! - the intention web → api turned to deny through Consul's API: web's next call is refused (api's
//!   sidecar asks its agent's `/v1/agent/connect/authorize`, as Consul's own proxy does).

mod common;

use common::consul::{MeshGw, Register};
use common::{free_port, http_get, line_app, poll_until, wait_for, DumpOnPanic, Proc, TempDir};
use meshgate_consul::lab::{self, DevAgent, TwoDcLab};
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Bound on set-up (registrations, replication of config entries and intentions to dc2).
const SETTLE: Duration = Duration::from_secs(30);
/// Bound on a CA rotation reaching both sidecars (dc2's roots come by replication from dc1).
const ROTATION: Duration = Duration::from_secs(60);

/// `meshgate sidecar` for `service`, everything from `agent`.
fn sidecar(agent: &DevAgent, service: &str, dir: &TempDir) -> (Proc, SocketAddr) {
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = dir.0.join(format!("{service}.toml"));
    std::fs::write(
        &config,
        format!(
            "[sidecar]\nservice = \"{service}\"\ndatacenter = \"{}\"\nadmin = \"{admin}\"\n\n\
             [consul]\naddress = \"{}\"\n\n[catalog]\nplugin = \"consul-catalog\"\nconfig = {{ service = \"{service}\" }}\n",
            agent.datacenter(),
            agent.http_addr()
        ),
    )
    .expect("write sidecar config");
    let bin = env!("CARGO_BIN_EXE_meshgate");
    let proc = Proc::start_in(
        "meshgate sidecar",
        None,
        &[bin, "sidecar", "--config", &config.display().to_string()],
    );
    (proc, admin)
}

/// One line through an upstream port: the answer, or `None` if the mesh closed the connection.
fn ask(port: u16, line: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("{line}\n").as_bytes()).ok()?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).ok()?;
    (!answer.is_empty()).then(|| answer.trim().to_owned())
}

const API_DC2: &str =
    "meshgate_destination_connections_total{datacenter=\"dc2\",namespace=\"default\",service=\"api\"}";

#[test]
fn sidecars_from_the_agent_follow_consul_modes_and_intentions() {
    if lab::skip_requested() {
        return;
    }
    let lab = TwoDcLab::start().expect("two-datacenter lab");
    let dir = TempDir::new("consul-sidecar");
    let (api_app, billing_app) = (line_app("api: "), line_app("billing: "));
    let (api_public, billing_public, web_public, api_up, billing_up) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    lab.dc2
        .register(&lab::sidecar_registration(
            "api",
            api_app,
            api_public,
            json!([]),
        ))
        .expect("register api");
    lab.dc2
        .register(&lab::sidecar_registration(
            "billing",
            billing_app,
            billing_public,
            json!([]),
        ))
        .expect("register billing");
    lab.dc1
        .register(&lab::sidecar_registration(
            "web",
            1,
            web_public,
            json!([
                {"DestinationName": "api", "Datacenter": "dc2", "LocalBindPort": api_up},
                {"DestinationName": "billing", "Datacenter": "dc2", "LocalBindPort": billing_up}
            ]),
        ))
        .expect("register web");
    lab.dc1
        .config_write(
            &json!({"Kind": "proxy-defaults", "Name": "global", "MeshGateway": {"Mode": "local"}}),
        )
        .expect("proxy-defaults");
    let allow_api = lab.dc1.intention("web", "api", "allow").expect("intention");
    lab.dc1
        .intention("web", "billing", "allow")
        .expect("intention");

    let gw2 = MeshGw::start(&lab.dc2, Register::ConfigWithWan, None, "");
    let gw1 = MeshGw::start(&lab.dc1, Register::Flag, None, "");
    let (api, api_admin) = sidecar(&lab.dc2, "api", &dir);
    let (web, web_admin) = sidecar(&lab.dc1, "web", &dir);
    // Consul's own proxy fronts billing: it verifies callers' Consul leaves and asks the agent.
    let consul = lab::consul_binary().expect("consul");
    let dc2_http = format!("http://{}", lab.dc2.http_addr());
    let builtin = Proc::start_in(
        "consul connect proxy",
        None,
        &[
            &consul.display().to_string(),
            "connect",
            "proxy",
            "-sidecar-for",
            "billing",
            "-http-addr",
            &dc2_http,
        ],
    );
    let _dump = DumpOnPanic::new(&[&gw1.proc, &gw2.proc, &api, &web, &builtin]);
    for admin in [api_admin, web_admin] {
        wait_for(SETTLE, "sidecar ready", || {
            http_get(admin, "/ready").filter(|b| b.starts_with("ready"))
        });
    }

    // Local mode (proxy-defaults): web's sidecar → dc1's gateway → dc2's gateway → api's sidecar. The
    // gateways learn each other from the federation states about a second after registering, and the
    // intention reaches dc2 by replication: the first answer may take a moment.
    let answer = wait_for(SETTLE, "api through the local-mode upstream", || {
        ask(api_up, "one")
    });
    assert_eq!(answer, "api: one");
    // Counters are published a few times a second: let the first call show on both before counting.
    wait_for(SETTLE, "the first call on both gateways", || {
        (gw1.gauge(API_DC2) >= 1.0 && gw2.gauge(API_DC2) >= 1.0).then_some(())
    });
    let (before1, before2) = (gw1.gauge(API_DC2), gw2.gauge(API_DC2));
    assert_eq!(ask(api_up, "two").as_deref(), Some("api: two"));
    let counted = poll_until(SETTLE, || {
        (gw1.gauge(API_DC2) == before1 + 1.0 && gw2.gauge(API_DC2) == before2 + 1.0).then_some(())
    });
    assert!(
        counted.is_some(),
        "local mode: dc1 {before1} -> {}, dc2 {before2} -> {}; web's plan: {:?}",
        gw1.gauge(API_DC2),
        gw2.gauge(API_DC2),
        http_get(web_admin, "/routes")
    );

    // `consul config write` service-defaults for web, mode remote: straight to dc2's gateway.
    lab.dc1
        .config_write(&json!({"Kind": "service-defaults", "Name": "web", "Protocol": "tcp", "MeshGateway": {"Mode": "remote"}}))
        .expect("service-defaults");
    let changed = Instant::now();
    wait_for(SETTLE, "a call through dc2's gateway only", || {
        let (b1, b2) = (gw1.gauge(API_DC2), gw2.gauge(API_DC2));
        (ask(api_up, "three").as_deref() == Some("api: three")).then_some(())?;
        poll_until(Duration::from_secs(2), || {
            (gw2.gauge(API_DC2) > b2).then_some(())
        })?;
        (gw1.gauge(API_DC2) == b1).then_some(())
    });
    eprintln!(
        "service-defaults mode remote in effect after {:?}",
        changed.elapsed()
    );

    // Consul's built-in proxy in front of billing accepts web's Consul leaf, presented by meshgate.
    let answer = wait_for(SETTLE, "billing through Consul's built-in proxy", || {
        ask(billing_up, "four")
    });
    assert_eq!(answer, "billing: four");

    // A CA rotation (a new root key for the primary, as `consul connect ca set-config` does): both
    // sidecars take the new trust bundle from their agents without a restart (each installs its TLS
    // material again), and calls keep working across it. (Consul renews the leaves themselves later,
    // within its own jittered window: not waited for here.)
    let loaded = |p: &Proc| p.log().matches("certificates loaded").count();
    let (web_before, api_before) = (loaded(&web), loaded(&api));
    let key = rcgen::KeyPair::generate().expect("key");
    lab.dc1
        .put(
            "/v1/connect/ca/configuration",
            Some(&json!({"Provider": "consul", "Config": {"PrivateKey": key.serialize_pem()}})),
        )
        .expect("rotate the CA");
    let rotated = Instant::now();
    wait_for(ROTATION, "both sidecars on the new trust bundle", || {
        (loaded(&web) > web_before && loaded(&api) > api_before).then_some(())
    });
    eprintln!(
        "CA rotation: both sidecars reloaded after {:?}",
        rotated.elapsed()
    );
    let answer = wait_for(SETTLE, "api after the rotation", || ask(api_up, "rotated"));
    assert_eq!(answer, "api: rotated");

    // The intention web → api turned to deny: api's sidecar refuses web's next call.
    lab.dc1
        .put(
            &format!("/v1/connect/intentions/{allow_api}"),
            Some(&json!({"SourceName": "web", "DestinationName": "api", "Action": "deny"})),
        )
        .expect("deny");
    let denied = Instant::now();
    let refused = poll_until(SETTLE, || ask(api_up, "five").is_none().then_some(()));
    assert!(refused.is_some(), "a denied caller still reached api");
    eprintln!(
        "deny seen by api's sidecar in dc2 after {:?}",
        denied.elapsed()
    );
    // api's sidecar asked its agent (`/v1/agent/connect/authorize`), as Consul's own proxy does.
    let asked = http_get(api_admin, "/metrics").unwrap_or_default();
    assert!(
        common::metric(
            &asked,
            "meshgate_consul_requests_total",
            &["endpoint=\"/v1/agent/connect/authorize\"", "outcome=\"ok\""]
        ) >= 2,
        "{asked}"
    );
}
