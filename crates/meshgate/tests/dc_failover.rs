//! Three datacenters on loopback, every hop real: web's sidecar in dc1 calls api in dc2 through dc1's
//! gateway (mode local). dc2's gateway is killed: dc1's gateway probes it down, and with the opt-in
//! policy `datacenter_failover = "dc2=dc3"` sends api's dc2 name to dc3's gateway, which serves it with
//! dc3's own api (after dc2's gateways, known dead) — mTLS end to end, web's sidecar verifying an api
//! identity issued in dc3 for a dc2 name. dc2's gateway restarted: probed up and used again. Prints the
//! times (loss → marked down, loss → first failed-over answer, restart → marked up); asserts none.

mod common;

use common::{
    call_line, free_port, http_get, issue_leaf, line_app, meshgate_ok, metric, poll_until,
    sidecar_toml, wait_for, DumpOnPanic, Proc, TempDir, TD,
};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

fn put(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

fn gateway_json(port: u16) -> String {
    format!(
        r#"{{"service": {{"name": "mesh-gateway", "kind": "mesh-gateway", "address": "127.0.0.1", "port": {port}, "tagged_addresses": {{"lan": {{"address": "127.0.0.1", "port": {port}}}, "wan": {{"address": "127.0.0.1", "port": {port}}}}}}}}}"#
    )
}

fn gateway_toml(dc: &str, listen: u16, admin: SocketAddr, catalog: &str) -> String {
    format!(
        r#"[gateway]
datacenter = "{dc}"
listen = ["127.0.0.1:{listen}"]
admin = "{admin}"
workers = 1
drain_grace_ms = 0
drain_timeout_secs = 1

[catalog]
plugin = "file-catalog"
config = {{ dir = "{catalog}", datacenter = "{dc}", trust_domain = "{TD}" }}
allow_dirs = ["{catalog}"]
poll_ms = 100

[router]
plugin = "consul-router"
config = {{ datacenter_failover = "dc2=dc3" }}
"#
    )
}

fn ready(admin: SocketAddr, who: &Proc) {
    let ok = poll_until(WAIT, || {
        http_get(admin, "/ready").filter(|b| b.starts_with("ready"))
    });
    assert!(ok.is_some(), "{admin} never ready; log:\n{}", who.log());
}

fn up(admin: SocketAddr, dc: &str, port: u16) -> Option<u64> {
    let body = http_get(admin, "/metrics")?;
    let endpoint = format!("endpoint=\"127.0.0.1:{port}\"");
    let dc = format!("datacenter=\"{dc}\"");
    body.lines()
        .any(|l| l.starts_with("meshgate_remote_gateway_up{") && l.contains(&endpoint))
        .then(|| metric(&body, "meshgate_remote_gateway_up", &[&dc, &endpoint]))
}

#[test]
fn dc2_lost_fails_over_to_dc3_through_real_tls_and_comes_back() {
    let dir = TempDir::new("dc-failover");
    let d = |rel: &str| dir.0.join(rel).display().to_string();
    meshgate_ok(&["ca", "init", "--trust-domain", TD, "--out", &d("ca/dc1")]);
    meshgate_ok(&[
        "ca",
        "intermediate",
        "--ca",
        &d("ca/dc1"),
        "--datacenter",
        "dc3",
        "--out",
        &d("ca/dc3"),
    ]);
    issue_leaf(&d("ca/dc1"), "web", "dc1", &d("certs/web"));
    issue_leaf(&d("ca/dc3"), "api", "dc3", &d("certs/api"));

    let (gw1, gw2, gw3) = (free_port(), free_port(), free_port());
    let admin = || SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (a1, a2, a3, web_admin, api_admin) = (admin(), admin(), admin(), admin(), admin());
    let (web_public, upstream, api_public) = (free_port(), free_port(), free_port());
    let app = line_app("api in dc3: ");

    // Each datacenter's view: its own registrations at the top, other datacenters' gateways below.
    for (cat, own, others) in [
        ("cat1", gw1, [("dc2", gw2), ("dc3", gw3)]),
        ("cat2", gw2, [("dc1", gw1), ("dc3", gw3)]),
        ("cat3", gw3, [("dc1", gw1), ("dc2", gw2)]),
    ] {
        put(
            &dir.0.join(format!("{cat}/mesh-gateway.json")),
            &gateway_json(own),
        );
        for (dc, port) in others {
            put(
                &dir.0.join(format!("{cat}/{dc}/mesh-gateway.json")),
                &gateway_json(port),
            );
        }
    }
    put(
        &dir.0.join("cat1/web.hcl"),
        &format!("service {{\n  name = \"web\"\n  port = 1\n  connect {{ sidecar_service {{\n    address = \"127.0.0.1\"\n    port = {web_public}\n    proxy {{ upstreams = [{{ destination_name = \"api\", datacenter = \"dc2\", local_bind_port = {upstream}, mesh_gateway {{ mode = \"local\" }} }}] }}\n  }} }}\n}}\n"),
    );
    put(
        &dir.0.join("cat3/api.hcl"),
        &format!("service {{\n  name = \"api\"\n  port = {app}\n  connect {{ sidecar_service {{\n    address = \"127.0.0.1\"\n    port = {api_public}\n  }} }}\n}}\n"),
    );
    put(
        &dir.0.join("cat3/intentions.hcl"),
        "Kind = \"service-intentions\"\nName = \"api\"\nSources = [{ Name = \"web\", Action = \"allow\" }]\n",
    );
    put(
        &dir.0.join("gw1.toml"),
        &gateway_toml("dc1", gw1, a1, "cat1"),
    );
    put(
        &dir.0.join("gw2.toml"),
        &gateway_toml("dc2", gw2, a2, "cat2"),
    );
    put(
        &dir.0.join("gw3.toml"),
        &gateway_toml("dc3", gw3, a3, "cat3"),
    );
    put(
        &dir.0.join("web.toml"),
        &sidecar_toml("web", "dc1", &web_admin.to_string(), "cat1", TD, "deny", ""),
    );
    put(
        &dir.0.join("api.toml"),
        &sidecar_toml("api", "dc3", &api_admin.to_string(), "cat3", TD, "deny", ""),
    );

    let bin = env!("CARGO_BIN_EXE_meshgate");
    let gateway = |name: &'static str, file: &str| {
        Proc::start_in(name, None, &[bin, "gateway", "--config", &d(file)])
    };
    let p1 = gateway("dc1 gateway", "gw1.toml");
    let mut p2 = gateway("dc2 gateway", "gw2.toml");
    let p3 = gateway("dc3 gateway", "gw3.toml");
    let api = Proc::start_in(
        "api sidecar",
        None,
        &[bin, "sidecar", "--config", &d("api.toml")],
    );
    let web = Proc::start_in(
        "web sidecar",
        None,
        &[bin, "sidecar", "--config", &d("web.toml")],
    );
    let _dump = DumpOnPanic::new(&[&p1, &p2, &p3, &api, &web]);
    for (a, p) in [
        (a1, &p1),
        (a2, &p2),
        (a3, &p3),
        (api_admin, &api),
        (web_admin, &web),
    ] {
        ready(a, p);
    }
    wait_for(WAIT, "dc1's gateway to see dc2's and dc3's up", || {
        (up(a1, "dc2", gw2)? == 1 && up(a1, "dc3", gw3)? == 1).then_some(())
    });
    wait_for(WAIT, "dc3's gateway to see dc2's up", || {
        (up(a3, "dc2", gw2)? == 1).then_some(())
    });
    // While dc2's gateway lives, api's dc2 name goes there (dc2 has no api: the call fails, but dc2's
    // gateway saw it).
    let _ = call_line(upstream, "hello");
    let body = http_get(a2, "/metrics").unwrap_or_default();
    assert!(
        metric(&body, "meshgate_client_hello_total", &["outcome=\"ok\""]) >= 1,
        "{body}"
    );

    // dc2's gateway dies.
    let _ = Command::new("kill")
        .args(["-KILL", &p2.pid().to_string()])
        .status();
    p2.wait_exit();
    let lost = Instant::now();
    // Calls start at once: before the verdict, dc1's gateway tries dc2's (refused) and fails over
    // within the same connection; after it, dc2's is skipped.
    let answer = wait_for(WAIT, "a failed-over answer", || {
        call_line(upstream, "hello from web").map(|a| (a, lost.elapsed()))
    });
    assert_eq!(answer.0, "api in dc3: hello from web");
    let down = wait_for(WAIT, "dc1's gateway to mark dc2's down", || {
        (up(a1, "dc2", gw2)? == 0).then(|| lost.elapsed())
    });
    println!(
        "dc2's gateway killed: first failed-over answer (web → dc1 gw → dc3 gw → api in dc3, mTLS) {:?} after the loss; marked down by dc1's gateway {down:?} after it",
        answer.1
    );
    // Known down: each call costs dc1's gateway one connect (to dc3's), none on dc2's.
    let attempts = |a| {
        metric(
            &http_get(a, "/metrics").unwrap_or_default(),
            "meshgate_upstream_connect_attempts_total",
            &[],
        )
    };
    let before = attempts(a1);
    let t = Instant::now();
    for i in 0..5 {
        assert_eq!(
            call_line(upstream, &format!("call {i}")).as_deref(),
            Some(format!("api in dc3: call {i}").as_str())
        );
    }
    println!(
        "5 failed-over calls, each a new mTLS connection: {:?}",
        t.elapsed()
    );
    assert_eq!(attempts(a1) - before, 5, "no connect on the dead gateway");
    let body = http_get(a1, "/metrics").unwrap_or_default();
    assert!(
        metric(
            &body,
            "meshgate_remote_gateway_probes_total",
            &["datacenter=\"dc2\"", "result=\"failed\""]
        ) >= 3,
        "{body}"
    );
    let api_metrics = http_get(api_admin, "/metrics").unwrap_or_default();
    assert!(
        metric(
            &api_metrics,
            "meshgate_sidecar_inbound_connections_total",
            &["outcome=\"allowed\""]
        ) >= 6,
        "{api_metrics}"
    );

    // dc2's gateway comes back: marked up, and dc2's names go to it again.
    let p2 = gateway("dc2 gateway", "gw2.toml");
    let back = Instant::now();
    ready(a2, &p2);
    let up_again = wait_for(WAIT, "dc2's gateway marked up again", || {
        (up(a1, "dc2", gw2)? == 1).then(|| back.elapsed())
    });
    println!("dc2's gateway restarted → marked up in {up_again:?}");
    let _ = call_line(upstream, "to dc2 again");
    let body = http_get(a2, "/metrics").unwrap_or_default();
    assert!(
        metric(&body, "meshgate_client_hello_total", &["outcome=\"ok\""]) >= 1,
        "dc2's gateway is used again: {body}"
    );
    drop(p2);
}

/// What probing costs a gateway process: 8 remote gateway endpoints probed every 10 ms (100 times the
/// default rate, so the CPU is measurable in clock ticks) for a bounded run, against the same gateway
/// with probing off; CPU from /proc (every thread, the short-lived per-probe ones included). Printed for
/// docs/failover.md; nothing is asserted about it.
#[test]
fn probing_load_is_measured() {
    use common::Gateway;
    use std::net::TcpListener;
    let endpoints: Vec<String> = (0..8)
        .map(|_| {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = l.local_addr().expect("addr");
            // Accept and close, as a far gateway does with a probe.
            std::thread::spawn(move || for _ in l.incoming() {});
            format!("\"{addr}\"")
        })
        .collect();
    let routes = format!(
        "[[routes]]\nsni = \"*.dc2.internal.{TD}\"\nendpoints = [{}]\n",
        endpoints.join(", ")
    );
    let probes = |gw: &Gateway| {
        metric(
            &gw.get("/metrics").unwrap_or_default(),
            "meshgate_remote_gateway_probes_total",
            &[],
        )
    };
    let run = Duration::from_secs(3);
    let mut cpu = Vec::new();
    for probe in ["enabled = false", "interval_ms = 10"] {
        let gw = Gateway::start(
            &format!("workers = 1\ndatacenter = \"dc1\"\n[gateway.probe]\n{probe}\n"),
            &routes,
        );
        let (p0, c0, t0) = (probes(&gw), gw.cpu_seconds(), Instant::now());
        std::thread::sleep(run);
        let (p1, c1, secs) = (probes(&gw), gw.cpu_seconds(), t0.elapsed().as_secs_f64());
        cpu.push((c1 - c0, p1.saturating_sub(p0), secs));
    }
    let (idle, _, _) = cpu[0];
    let (busy, n, secs) = cpu[1];
    println!(
        "8 endpoints probed every 10 ms for {secs:.1} s: {:.1} probes/s per endpoint; gateway CPU {:.3} s vs {:.3} s with probing off: {:.0} µs per probe (debug build); at the default 1 s interval that is {:.4} % of a core per remote gateway endpoint",
        n as f64 / secs / 8.0,
        busy,
        idle,
        (busy - idle) / n.max(1) as f64 * 1e6,
        (busy - idle) / n.max(1) as f64 * 100.0,
    );
}
