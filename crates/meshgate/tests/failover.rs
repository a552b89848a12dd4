//! A `service-resolver`'s `Failover` and `Redirect` end to end on loopback: three datacenters, each
//! with its meshgate gateway, all reading one file catalog (one subdirectory per datacenter); web in
//! dc1 calls api through its sidecar in `local` and `remote` gateway modes.
//!
//! - api's dc1 instance goes critical in the catalog → web's next call reaches api in dc2 through the
//!   gateways, and comes back to dc1 when it passes again;
//! - api's dc1 sidecar killed while the catalog still says passing, and dc3's instance unreachable
//!   behind its gateway → the call still reaches dc2 (the sidecar moves to the next target when no
//!   next hop of one connects, or when its handshake fails);
//! - a `Redirect` sends api's calls to api-v2 in dc3;
//! - `meshgate check` on web's sidecar config lists the targets in order and why one is skipped.
//!
//! The time from a catalog change to the first call answered by the other datacenter is printed
//! (`--nocapture`), never asserted.

mod common;

use common::{
    call_line, free_port, http_get, line_app, meshgate_ok, metric, poll_until, wait_for,
    DumpOnPanic, Proc, TempDir, TD,
};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// The tests of this file run one at a time: each starts seven processes, and the figures they print
/// should not measure each other.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Bound on readiness and on each switch (generous: CI machines are shared).
const WAIT: Duration = Duration::from_secs(60);
const DCS: [&str; 3] = ["dc1", "dc2", "dc3"];

/// Write-then-rename, so a poller never sees half a file.
fn put(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// Calls until one is answered by an app whose line starts with `prefix`; how long that took.
fn until_answered_by(port: u16, prefix: &str) -> Duration {
    let t0 = Instant::now();
    let got = poll_until(WAIT, || {
        call_line(port, "hi").filter(|a| a.starts_with(prefix))
    });
    assert!(
        got.is_some(),
        "port {port}: no answer from {prefix} within {WAIT:?}"
    );
    t0.elapsed()
}

fn gateway_hcl(port: u16) -> String {
    format!(
        "service {{\n  name = \"mesh-gateway\"\n  kind = \"mesh-gateway\"\n  port = {port}\n  tagged_addresses {{\n    lan {{ address = \"127.0.0.1\", port = {port} }}\n    wan {{ address = \"127.0.0.1\", port = {port} }}\n  }}\n}}\n"
    )
}

/// A service with its inline sidecar on `public`, the sidecar's check in `status`.
fn service_hcl(name: &str, app: u16, public: u16, status: &str) -> String {
    format!(
        "service {{\n  name = \"{name}\"\n  port = {app}\n  connect {{ sidecar_service {{\n    address = \"127.0.0.1\"\n    port = {public}\n    check {{ id = \"{name}-alive\", status = \"{status}\" }}\n  }} }}\n}}\n"
    )
}

const RESOLVER_FAILOVER: &str =
    "Kind = \"service-resolver\"\nName = \"api\"\nFailover = {\n  \"*\" = { Datacenters = [\"dc2\"] }\n}\n";
const RESOLVER_REDIRECT: &str =
    "Kind = \"service-resolver\"\nName = \"api\"\nRedirect {\n  Service = \"api-v2\"\n  Datacenter = \"dc3\"\n}\n";

/// Three datacenters' gateways, web's sidecar in dc1, api's sidecars in dc1 and dc2, api-v2's in dc3.
struct Mesh {
    _serial: std::sync::MutexGuard<'static, ()>,
    dir: TempDir,
    procs: Vec<Proc>,
    web_admin: SocketAddr,
    /// web → api through `local` (dc1's gateway, then the target's) and `remote` (the target's).
    up_local: u16,
    up_remote: u16,
    api1_app: u16,
    api1_public: u16,
}

impl Mesh {
    fn d(&self, rel: &str) -> String {
        self.dir.0.join(rel).display().to_string()
    }

    fn start(tag: &str) -> Mesh {
        // A test that failed while holding it leaves it poisoned; the next one still runs.
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let dir = TempDir::new(tag);
        let d = |rel: &str| dir.0.join(rel).display().to_string();
        meshgate_ok(&["ca", "init", "--trust-domain", TD, "--out", &d("ca/dc1")]);
        for dc in ["dc2", "dc3"] {
            meshgate_ok(&[
                "ca",
                "intermediate",
                "--ca",
                &d("ca/dc1"),
                "--datacenter",
                dc,
                "--out",
                &d(&format!("ca/{dc}")),
            ]);
        }
        // (sidecar name, service, datacenter)
        let sidecars = [
            ("web", "web", "dc1"),
            ("api-dc1", "api", "dc1"),
            ("api-dc2", "api", "dc2"),
            ("api-v2-dc3", "api-v2", "dc3"),
        ];
        for (name, svc, dc) in sidecars {
            meshgate_ok(&[
                "ca",
                "issue",
                "--ca",
                &d(&format!("ca/{dc}")),
                "--service",
                svc,
                "--datacenter",
                dc,
                "--out",
                &d(&format!("certs/{name}")),
            ]);
        }
        let cat = dir.0.join("catalog");
        let gw_ports: Vec<(u16, u16)> = DCS.iter().map(|_| (free_port(), free_port())).collect();
        for (dc, (port, _)) in DCS.iter().zip(&gw_ports) {
            put(&cat.join(dc).join("mesh-gateway.hcl"), &gateway_hcl(*port));
        }
        let (web_public, up_local, up_remote) = (free_port(), free_port(), free_port());
        put(
            &cat.join("dc1/web.hcl"),
            &format!("service {{\n  name = \"web\"\n  port = 1\n  connect {{ sidecar_service {{\n    address = \"127.0.0.1\"\n    port = {web_public}\n    proxy {{ upstreams = [\n      {{ destination_name = \"api\", local_bind_port = {up_local}, mesh_gateway {{ mode = \"local\" }} }},\n      {{ destination_name = \"api\", local_bind_port = {up_remote}, mesh_gateway {{ mode = \"remote\" }} }},\n    ] }}\n  }} }}\n}}\n"),
        );
        let (api1_app, api2_app, v2_app) = (
            line_app("api-dc1: "),
            line_app("api-dc2: "),
            line_app("api-v2-dc3: "),
        );
        let (api1_public, api2_public, v2_public) = (free_port(), free_port(), free_port());
        put(
            &cat.join("dc1/api.hcl"),
            &service_hcl("api", api1_app, api1_public, "passing"),
        );
        put(
            &cat.join("dc2/api.hcl"),
            &service_hcl("api", api2_app, api2_public, "passing"),
        );
        put(
            &cat.join("dc3/api-v2.hcl"),
            &service_hcl("api-v2", v2_app, v2_public, "passing"),
        );
        // Config entries are global: they sit at the top of the catalog.
        put(&cat.join("api-resolver.hcl"), RESOLVER_FAILOVER);
        for dest in ["api", "api-v2"] {
            put(
                &cat.join(format!("intentions-{dest}.hcl")),
                &format!("Kind = \"service-intentions\"\nName = \"{dest}\"\nSources = [{{ Name = \"web\", Action = \"allow\" }}]\n"),
            );
        }
        let catalog = |dc: &str| {
            format!("[catalog]\nplugin = \"file-catalog\"\nconfig = {{ dir = \"catalog\", datacenter = \"{dc}\", trust_domain = \"{TD}\" }}\nallow_dirs = [\"catalog\"]\npoll_ms = 100\n")
        };
        let bin = env!("CARGO_BIN_EXE_meshgate");
        let mut procs = Vec::new();
        let mut admins = Vec::new();
        for (dc, (port, admin)) in DCS.iter().zip(&gw_ports) {
            let path = dir.0.join(format!("gateway-{dc}.toml"));
            put(
                &path,
                &format!("[gateway]\nname = \"mesh-gateway\"\ndatacenter = \"{dc}\"\nlisten = [\"127.0.0.1:{port}\"]\nadmin = \"127.0.0.1:{admin}\"\nworkers = 1\n\n{}\n[router]\nplugin = \"consul-router\"\n", catalog(dc)),
            );
            let name: &'static str = match *dc {
                "dc1" => "dc1 gateway",
                "dc2" => "dc2 gateway",
                _ => "dc3 gateway",
            };
            procs.push(Proc::start_in(
                name,
                None,
                &[bin, "gateway", "--config", &path.display().to_string()],
            ));
            admins.push(SocketAddr::from(([127, 0, 0, 1], *admin)));
        }
        let mut web_admin = None;
        for (name, svc, dc) in sidecars {
            let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let path = dir.0.join(format!("{name}.toml"));
            put(
                &path,
                &format!("[sidecar]\nservice = \"{svc}\"\ndatacenter = \"{dc}\"\nadmin = \"{admin}\"\ndefault_intention = \"deny\"\nworkers = 1\n\n[tls]\ncert_file = \"certs/{name}/cert.pem\"\nkey_file = \"certs/{name}/key.pem\"\nroots_file = \"certs/{name}/roots.pem\"\n\n{}", catalog(dc)),
            );
            let label: &'static str = match name {
                "web" => "web sidecar",
                "api-dc1" => "api dc1 sidecar",
                "api-dc2" => "api dc2 sidecar",
                _ => "api-v2 dc3 sidecar",
            };
            procs.push(Proc::start_in(
                label,
                None,
                &[bin, "sidecar", "--config", &path.display().to_string()],
            ));
            if name == "web" {
                web_admin = Some(admin);
            }
            admins.push(admin);
        }
        for (admin, p) in admins.iter().zip(&procs) {
            let ready = poll_until(WAIT, || {
                http_get(*admin, "/ready").filter(|b| b.starts_with("ready"))
            });
            assert!(
                ready.is_some(),
                "{admin} never ready; its log:\n{}",
                p.log()
            );
        }
        // Ready on its admin port, and alive: not someone else answering on a port it failed to bind.
        for p in &mut procs {
            assert!(
                p.exited().is_none(),
                "exited at start; its log:\n{}",
                p.log()
            );
        }
        Mesh {
            _serial: serial,
            dir,
            procs,
            web_admin: web_admin.expect("web"),
            up_local,
            up_remote,
            api1_app,
            api1_public,
        }
    }

    fn set_api_dc1(&self, status: &str) {
        put(
            &self.dir.0.join("catalog/dc1/api.hcl"),
            &service_hcl("api", self.api1_app, self.api1_public, status),
        );
    }

    fn web_metrics(&self) -> String {
        http_get(self.web_admin, "/metrics").unwrap_or_default()
    }

    fn check_web(&self) -> String {
        meshgate_ok(&["check", &self.d("web.toml")])
    }
}

#[test]
fn failover_to_another_datacenter_when_critical_and_back_when_passing() {
    let mesh = Mesh::start("failover");
    let procs: Vec<&Proc> = mesh.procs.iter().collect();
    let _dump = DumpOnPanic::new(&procs);
    for port in [mesh.up_local, mesh.up_remote] {
        until_answered_by(port, "api-dc1: ");
    }
    let explained = mesh.check_web();
    println!("meshgate check web.toml (all passing):\n{explained}");
    assert!(
        explained.contains(&format!("1. api.default.dc1.internal.{TD} [dc1, primary]"))
            && explained.contains(&format!(
                "2. api.default.dc2.internal.{TD} [dc2, failover[*]]"
            )),
        "{explained}"
    );

    // dc1's api goes critical: the next calls go to dc2 through the gateways, in both modes.
    mesh.set_api_dc1("critical");
    let t0 = Instant::now();
    let local = until_answered_by(mesh.up_local, "api-dc2: ");
    let remote = until_answered_by(mesh.up_remote, "api-dc2: ");
    println!(
        "critical in the catalog → first call answered in dc2: local mode {local:?}, then remote mode {remote:?} more ({:?} from the change)",
        t0.elapsed()
    );
    let explained = mesh.check_web();
    println!("meshgate check web.toml (dc1 critical):\n{explained}");
    assert!(
        explained.contains("skipped: no healthy instance of api in dc1")
            && explained.contains(&format!(
                "1. api.default.dc2.internal.{TD} [dc2, failover[*]]"
            )),
        "{explained}"
    );
    let m = mesh.web_metrics();
    for mode in ["local", "remote"] {
        assert!(
            metric(
                &m,
                "meshgate_sidecar_upstream_connections_total",
                &[
                    "datacenter=\"dc2\"",
                    &format!("mode=\"{mode}\""),
                    "via_gateway=\"true\"",
                    "outcome=\"ok\""
                ]
            ) >= 1,
            "{m}"
        );
    }

    // Passing again: back to dc1.
    mesh.set_api_dc1("passing");
    let t0 = Instant::now();
    let local = until_answered_by(mesh.up_local, "api-dc1: ");
    let remote = until_answered_by(mesh.up_remote, "api-dc1: ");
    println!(
        "passing again → first call answered in dc1: local mode {local:?}, then remote mode {remote:?} more ({:?} from the change)",
        t0.elapsed()
    );
}

#[test]
fn dead_instances_still_passing_fail_over_at_connect_and_at_handshake() {
    let mut mesh = Mesh::start("failover-dead");
    // dc3 first, then dc2. api is registered in dc3 (passing) but nothing listens there: dc3's
    // gateway accepts the connection, cannot reach the instance and closes it, so web's handshake
    // with that target fails and the connection moves on to dc2.
    put(
        &mesh.dir.0.join("catalog/dc3/api.hcl"),
        &service_hcl("api", free_port(), free_port(), "passing"),
    );
    put(
        &mesh.dir.0.join("catalog/api-resolver.hcl"),
        "Kind = \"service-resolver\"\nName = \"api\"\nFailover = { \"*\" = { Datacenters = [\"dc3\", \"dc2\"] } }\n",
    );
    let dc3 = format!("api.default.dc3.internal.{TD}");
    wait_for(WAIT, "web's plan to list dc3", || {
        http_get(mesh.web_admin, "/routes").filter(|r| r.contains(&dc3))
    });
    for port in [mesh.up_local, mesh.up_remote] {
        until_answered_by(port, "api-dc1: ");
    }
    // The catalog still says passing; the process is gone (connections to it are refused).
    // Started in this order: three gateways, then web's, api's dc1, api's dc2 and api-v2's sidecars.
    let victim = &mut mesh.procs[4];
    std::process::Command::new("kill")
        .args(["-KILL", &victim.pid().to_string()])
        .status()
        .expect("kill");
    victim.wait_exit();
    let procs: Vec<&Proc> = mesh.procs.iter().collect();
    let _dump = DumpOnPanic::new(&procs);
    for port in [mesh.up_local, mesh.up_remote] {
        // The very first call after the kill is answered: no retry by the client.
        let t0 = Instant::now();
        let answer = call_line(port, "after kill");
        println!(
            "dc1 sidecar killed (still passing), dc3 unreachable behind its gateway: a call answered by {answer:?} in {:?}",
            t0.elapsed()
        );
        assert!(
            answer
                .as_deref()
                .is_some_and(|a| a.starts_with("api-dc2: ")),
            "{answer:?}"
        );
    }
    // Each call left dc1 and dc3 once. dc1's port is usually refused (`connect_failed`), but once
    // free it may be taken by a listener of a test running beside this one, and then its handshake
    // fails instead: either way the call moved on, which is what is checked.
    let m = mesh.web_metrics();
    let left = |dc: &str, reason: &str| {
        metric(
            &m,
            "meshgate_sidecar_upstream_failovers_total",
            &[
                "upstream=\"api\"",
                &format!("datacenter=\"{dc}\""),
                &format!("reason=\"{reason}\""),
            ],
        )
    };
    assert_eq!(
        left("dc1", "connect_failed") + left("dc1", "handshake_failed"),
        2,
        "{m}"
    );
    assert!(left("dc1", "connect_failed") >= 1, "{m}");
    assert_eq!(left("dc3", "handshake_failed"), 2, "{m}");
}

#[test]
fn redirect_sends_the_upstream_to_another_service() {
    let mesh = Mesh::start("redirect");
    let procs: Vec<&Proc> = mesh.procs.iter().collect();
    let _dump = DumpOnPanic::new(&procs);
    until_answered_by(mesh.up_local, "api-dc1: ");
    put(
        &mesh.dir.0.join("catalog/api-resolver.hcl"),
        RESOLVER_REDIRECT,
    );
    let t0 = Instant::now();
    until_answered_by(mesh.up_local, "api-v2-dc3: ");
    until_answered_by(mesh.up_remote, "api-v2-dc3: ");
    println!(
        "redirect written → first call answered by api-v2 in dc3: {:?}",
        t0.elapsed()
    );
    let explained = mesh.check_web();
    assert!(
        explained.contains(&format!(
            "1. api-v2.default.dc3.internal.{TD} [dc3, redirect (1 hop)]"
        )) && explained.contains(&format!(
            "identity spiffe://{TD}/ns/default/dc/dc3/svc/api-v2"
        )),
        "{explained}"
    );
}
