//! The gateway routing a datacenter from a catalog: the shipped file-catalog plugin reads Consul
//! registrations from a directory, the consul-router plugin applies Consul's rules, and edits apply while
//! live connections continue. Real TLS backends stand in for sidecars and for dc2's gateway.

mod common;

use common::*;
use meshgate_tlskit::{Backend, Pki};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn api(dc: &str) -> String {
    format!("api.default.{dc}.internal.{TD}")
}

fn sidecars(a: SocketAddr, a_status: &str, b: SocketAddr, b_status: &str) -> String {
    format!(
        r#"services = [
  {{ name = "api-sidecar-proxy", id = "api-1", kind = "connect-proxy", port = {}
     proxy {{ destination_service_name = "api" }}
     check {{ id = "api-1-alive", status = "{a_status}" }} }},
  {{ name = "api-sidecar-proxy", id = "api-2", kind = "connect-proxy", port = {}
     proxy {{ destination_service_name = "api" }}
     check {{ id = "api-2-alive", status = "{b_status}" }} }},
]
"#,
        a.port(),
        b.port()
    )
}

fn catalog_section(router: &str) -> String {
    format!(
        "[catalog]\nplugin = \"file-catalog\"\nallow_dirs = [\"catalog\"]\nconfig = {{ dir = \"catalog\", datacenter = \"dc1\", trust_domain = \"{TD}\" }}\n{router}"
    )
}

#[test]
fn catalog_routes_follow_edits_while_live_connections_continue() {
    let pki = Pki::new("test CA").expect("ca");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let a = Backend::start("api-1", any, pki.issue(&[&api("dc1")]).expect("leaf")).expect("a");
    let b = Backend::start("api-2", any, pki.issue(&[&api("dc1")]).expect("leaf")).expect("b");
    let dc2 = Backend::start(
        "dc2-gateway",
        any,
        pki.issue(&[&format!("*.default.dc2.internal.{TD}")])
            .expect("leaf"),
    )
    .expect("dc2");
    let gw2 = format!(
        "{{\"service\": {{\"name\": \"mesh-gateway\", \"kind\": \"mesh-gateway\", \"port\": 8443, \"tagged_addresses\": {{\"wan\": {{\"address\": \"127.0.0.1\", \"port\": {}}}}}}}}}",
        dc2.addr().port()
    );
    let gw = Gateway::start_with_files(
        "",
        &catalog_section(""),
        &[
            (
                "catalog/api.hcl",
                &sidecars(a.addr(), "passing", b.addr(), "critical"),
            ),
            ("catalog/dc2/mesh-gateway.json", &gw2),
        ],
    );
    let client = pki.client_config(&[]).expect("client");

    // The healthy instance gets every connection; the critical one gets nothing.
    for _ in 0..6 {
        let answer = meshgate_tlskit::hello(gw.listen, &api("dc1"), client.clone()).expect("api");
        assert!(answer.starts_with("backend=api-1 "), "{answer}");
    }
    // A dc2 name goes to dc2's gateway (its WAN address from the catalog).
    let answer = meshgate_tlskit::hello(gw.listen, &api("dc2"), client.clone()).expect("dc2");
    assert!(answer.starts_with("backend=dc2-gateway "), "{answer}");
    let routes = gw.get("/routes").expect("routes");
    assert!(routes.contains("plugin consul-router"), "{routes}");

    // A live connection to api-1...
    let mut live = meshgate_tlskit::connect(gw.listen, &api("dc1"), client.clone()).expect("live");
    live.write_all(b"HELLO\n").expect("hello");
    let mut live = BufReader::new(live);
    let mut line = String::new();
    live.read_line(&mut line).expect("answer");

    // ...then api-1 fails its check and api-2 recovers: new connections move within a second.
    let edited = Instant::now();
    gw.write_file(
        "catalog/api.hcl",
        &sidecars(a.addr(), "critical", b.addr(), "passing"),
    );
    let moved = wait_for(
        Duration::from_secs(10),
        "routes to follow the catalog",
        || {
            let answer = meshgate_tlskit::hello(gw.listen, &api("dc1"), client.clone()).ok()?;
            answer
                .starts_with("backend=api-2 ")
                .then(|| edited.elapsed())
        },
    );
    assert!(
        moved < Duration::from_secs(1),
        "catalog edit took {moved:?} to apply"
    );
    // The live connection still talks to api-1.
    live.get_mut().write_all(b"still here\n").expect("write");
    let mut echo = String::new();
    live.read_line(&mut echo).expect("echo");
    assert_eq!(echo, "still here\n");

    // A broken file: the catalog is refused and counted, the last good table keeps serving.
    gw.write_file(
        "catalog/broken.hcl",
        "service {\n  name = \"x\"\n  port = \n}\n",
    );
    gw.wait_metric(
        "meshgate_plugin_failures_total{plugin=\"file-catalog\",reason=\"error\"}",
        1.0,
    );
    let answer = meshgate_tlskit::hello(gw.listen, &api("dc1"), client).expect("still served");
    assert!(answer.starts_with("backend=api-2 "), "{answer}");
    assert!(gw.get("/ready").expect("ready").starts_with("HTTP/1.1 200"));
}

#[test]
fn export_control_plugin_denies_unexported_services() {
    let pki = Pki::new("test CA").expect("ca");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let a = Backend::start("api-1", any, pki.issue(&[&api("dc1")]).expect("leaf")).expect("a");
    let web = format!("web.default.dc1.internal.{TD}");
    let w = Backend::start("web-1", any, pki.issue(&[&web]).expect("leaf")).expect("w");
    let web_hcl = format!(
        "service {{\n  name = \"web\"\n  port = 8080\n  connect {{ sidecar_service {{ port = {} }} }}\n}}\n",
        w.addr().port()
    );
    let gw = Gateway::start_with_files(
        "",
        &catalog_section("[router]\nplugin = \"export-control\"\nconfig = { export = \"web\" }\n"),
        &[
            (
                "catalog/api.hcl",
                &sidecars(a.addr(), "passing", a.addr(), "passing"),
            ),
            ("catalog/web.hcl", &web_hcl),
        ],
    );
    let client = pki.client_config(&[]).expect("client");
    let answer = meshgate_tlskit::hello(gw.listen, &web, client.clone()).expect("web exported");
    assert!(answer.starts_with("backend=web-1 "), "{answer}");
    assert!(
        meshgate_tlskit::hello(gw.listen, &api("dc1"), client).is_err(),
        "api is not exported"
    );
    gw.wait_metric(
        "meshgate_connections_closed_total{reason=\"no_route\"}",
        1.0,
    );
}

#[test]
fn unknown_plugin_is_refused_at_start() {
    let dir = TempDir::new("badplugin");
    let config = dir.0.join("gw.toml");
    std::fs::write(
        &config,
        "[gateway]\nlisten = [\"127.0.0.1:1\"]\nadmin = \"127.0.0.1:0\"\n\n[catalog]\nplugin = \"plugins/nope.wasm\"\n",
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(["gateway", "--config"])
        .arg(&config)
        .env("MESHGATE_LOG", "off")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gw.toml") && err.contains("[catalog]") && err.contains("nope.wasm"),
        "{err}"
    );
}

#[test]
fn check_refuses_intention_scopes_it_cannot_enforce() {
    // Dropping `Peer` would turn "allow web from peer cluster-b" into "allow the local web".
    let dir = TempDir::new("scoped-intention");
    let file = dir.0.join("api-intentions.hcl");
    std::fs::write(
        &file,
        "Kind = \"service-intentions\"\nName = \"api\"\nSources = [\n  {\n    Name = \"web\"\n    Peer = \"cluster-b\"\n    Action = \"allow\"\n  }\n]\n",
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .arg("check")
        .arg(&file)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("api-intentions.hcl:6:") && err.contains("Sources[0].Peer"),
        "{err}"
    );
}
