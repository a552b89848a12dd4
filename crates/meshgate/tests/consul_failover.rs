//! A `service-resolver` written with `consul config write` drives a meshgate sidecar's targets, against
//! real Consul 1.8.7 agents (two datacenters on loopback, `meshgate_consul::lab`): web (dc1) calls api,
//! registered in dc1 and dc2, each fronted by a meshgate sidecar in agent mode, through meshgate
//! gateways in `local` mode. The resolver fails api over to dc2: api's dc1 sidecar check turned critical
//! → web's next calls reach api in dc2 (the consul-catalog plugin watches api's health in dc2 because
//! the resolver names it); passing again → back to dc1. The path to dc2 is used once first (a second
//! upstream names dc2), so the switch is timed on a mesh that is up. Times are printed, never asserted.

mod common;

use common::consul::{MeshGw, Register};
use common::{free_port, http_get, line_app, poll_until, wait_for, DumpOnPanic, Proc, TempDir};
use meshgate_consul::lab::{self, DevAgent, TwoDcLab};
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Bound on set-up and on each switch (registrations, replication of config entries to dc2).
const SETTLE: Duration = Duration::from_secs(30);

/// `meshgate sidecar` for `service`, everything from `agent`.
fn sidecar(
    agent: &DevAgent,
    service: &str,
    dir: &TempDir,
    name: &'static str,
) -> (Proc, SocketAddr) {
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = dir.0.join(format!("{service}-{}.toml", agent.datacenter()));
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
        name,
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

#[test]
fn a_resolver_written_with_consul_config_write_fails_over_to_dc2_and_back() {
    if lab::skip_requested() {
        return;
    }
    let lab = TwoDcLab::start().expect("two-datacenter lab");
    let dir = TempDir::new("consul-failover");
    let (api1_app, api2_app) = (line_app("api-dc1: "), line_app("api-dc2: "));
    let (api1_public, api2_public, web_public, up, up_dc2) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    lab.dc1
        .register(&lab::sidecar_registration(
            "api",
            api1_app,
            api1_public,
            json!([]),
        ))
        .expect("register api in dc1");
    lab.dc2
        .register(&lab::sidecar_registration(
            "api",
            api2_app,
            api2_public,
            json!([]),
        ))
        .expect("register api in dc2");
    lab.dc1
        .register(&lab::sidecar_registration(
            "web",
            1,
            web_public,
            // The second upstream names dc2 itself: it proves the path through both gateways (and
            // api's dc2 sidecar's first authorize) before the switch is timed.
            json!([{"DestinationName": "api", "LocalBindPort": up},
                   {"DestinationName": "api", "Datacenter": "dc2", "LocalBindPort": up_dc2}]),
        ))
        .expect("register web");
    lab.dc1
        .config_write(
            &json!({"Kind": "proxy-defaults", "Name": "global", "MeshGateway": {"Mode": "local"}}),
        )
        .expect("proxy-defaults");
    lab.dc1.intention("web", "api", "allow").expect("intention");
    // The resolver, as an operator writes it.
    let resolver = dir.0.join("api-resolver.hcl");
    std::fs::write(
        &resolver,
        "Kind = \"service-resolver\"\nName = \"api\"\nFailover = {\n  \"*\" = {\n    Datacenters = [\"dc2\"]\n  }\n}\n",
    )
    .expect("write resolver");
    let consul = lab::consul_binary().expect("consul");
    let out = std::process::Command::new(&consul)
        .args([
            "config",
            "write",
            &format!("-http-addr=http://{}", lab.dc1.http_addr()),
            &resolver.display().to_string(),
        ])
        .output()
        .expect("consul config write");
    assert!(
        out.status.success(),
        "consul config write: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let gw2 = MeshGw::start(&lab.dc2, Register::ConfigWithWan, None, "");
    let gw1 = MeshGw::start(&lab.dc1, Register::Flag, None, "");
    let (api1, api1_admin) = sidecar(&lab.dc1, "api", &dir, "api dc1 sidecar");
    let (api2, api2_admin) = sidecar(&lab.dc2, "api", &dir, "api dc2 sidecar");
    let (web, web_admin) = sidecar(&lab.dc1, "web", &dir, "web sidecar");
    let _dump = DumpOnPanic::new(&[&gw1.proc, &gw2.proc, &api1, &api2, &web]);
    for admin in [api1_admin, api2_admin, web_admin] {
        wait_for(SETTLE, "sidecar ready", || {
            http_get(admin, "/ready").filter(|b| b.starts_with("ready"))
        });
    }
    let answer = wait_for(SETTLE, "api in dc1", || {
        ask(up, "one").filter(|a| a.starts_with("api-dc1: "))
    });
    assert_eq!(answer, "api-dc1: one");
    // The plan lists dc2 as the failover target (its health comes from a `?dc=dc2` watch).
    let dc2_target = "api.default.dc2.internal.";
    let routes = wait_for(SETTLE, "dc2 in web's targets", || {
        http_get(web_admin, "/routes").filter(|r| r.contains(dc2_target))
    });
    assert!(routes.contains("failover[*]"), "{routes}");
    wait_for(SETTLE, "api in dc2 through both gateways", || {
        ask(up_dc2, "warm").filter(|a| a.starts_with("api-dc2: "))
    });

    lab.dc1
        .check_fail("api-sidecar-ttl")
        .expect("fail api in dc1");
    let t0 = Instant::now();
    // Where the time goes: the agent's own answer, web's plan, and the first call answered in dc2.
    let (mut agent_saw, mut plan_saw) = (None, None);
    // Calls made after web's plan changed that were closed instead of answered.
    let mut closed = 0;
    let switched = poll_until(SETTLE, || {
        if agent_saw.is_none() {
            let health: serde_json::Value = lab.dc1.get("/v1/health/connect/api").ok()?;
            if health.to_string().contains("\"critical\"") {
                agent_saw = Some(t0.elapsed());
            }
        }
        if plan_saw.is_none()
            && http_get(web_admin, "/routes").is_some_and(|r| r.contains("no healthy instance"))
        {
            plan_saw = Some(t0.elapsed());
        }
        let answer = ask(up, "two");
        if plan_saw.is_some() && answer.is_none() {
            closed += 1;
        }
        answer.filter(|a| a.starts_with("api-dc2: "))
    });
    assert!(
        switched.is_some(),
        "no call reached dc2; web's plan: {:?}",
        http_get(web_admin, "/routes")
    );
    eprintln!(
        "consul: api's dc1 check critical → agent's health/connect says critical after {agent_saw:?}, web's plan skips dc1 after {plan_saw:?}, first call answered in dc2 after {:?} ({closed} calls closed in between)",
        t0.elapsed()
    );

    lab.dc1
        .check_pass("api-sidecar-ttl")
        .expect("pass api in dc1");
    let t0 = Instant::now();
    wait_for(SETTLE, "api back in dc1", || {
        ask(up, "three").filter(|a| a.starts_with("api-dc1: "))
    });
    eprintln!(
        "consul: passing again → first call answered in dc1 after {:?}",
        t0.elapsed()
    );
}
