//! Cross-datacenter mesh traffic end to end, in network namespaces the test builds: one per datacenter and
//! one WAN segment (a bridge). Services live on their datacenter's LAN addresses and loopback;
//! each gateway has one leg on its LAN and one on the WAN; nothing else routes between datacenters.
//!
//! ```text
//!   ns dc1: web app (the test), web sidecar 10.1.0.10, db sidecar 10.1.0.11, gateway 10.1.0.2 + 10.99.0.1
//!   ns wan: bridge br0 (captured)
//!   ns dc2: api app (the test), api sidecar 10.2.0.10, gateway 10.2.0.2 + 10.99.0.2
//! ```
//!
//! Needs root and `ip`, `tcpdump` (`.ci/run` installs them). Set `MESHGATE_SKIP_NETNS=1` to skip on a
//! machine without them; otherwise a missing prerequisite fails the test.

mod common;

use common::{
    in_ns, issue_leaf, meshgate_ok, metric, serve_lines, sh, sidecar_toml, wait_admin, Netns, Proc,
    TD,
};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const WAIT: Duration = common::NETNS_WAIT;

/// The namespaces and links; removed on drop (deleting a namespace removes its interfaces).
struct Topology {
    dc1: String,
    dc2: String,
    wan: String,
    _spaces: [Netns; 3],
}

impl Topology {
    fn build() -> Topology {
        let id = std::process::id() % 100_000;
        let spaces = ["dc1", "dc2", "wan"].map(|n| Netns::new(format!("mg{id}-{n}")));
        let t = Topology {
            dc1: spaces[0].name.clone(),
            dc2: spaces[1].name.clone(),
            wan: spaces[2].name.clone(),
            _spaces: spaces,
        };
        sh(&["ip", "-n", &t.wan, "link", "add", "br0", "type", "bridge"]);
        sh(&["ip", "-n", &t.wan, "link", "set", "br0", "up"]);
        for (ns, leg, wan_ip, lan_ips) in [
            (
                &t.dc1,
                "w1",
                "10.99.0.1/24",
                ["10.1.0.2/32", "10.1.0.10/32", "10.1.0.11/32"],
            ),
            (
                &t.dc2,
                "w2",
                "10.99.0.2/24",
                ["10.2.0.2/32", "10.2.0.10/32", "10.2.0.11/32"],
            ),
        ] {
            // WAN leg: a veth from the datacenter to the WAN bridge.
            sh(&[
                "ip", "link", "add", "wan0", "netns", ns, "type", "veth", "peer", "name", leg,
                "netns", &t.wan,
            ]);
            sh(&["ip", "-n", &t.wan, "link", "set", leg, "master", "br0"]);
            sh(&["ip", "-n", &t.wan, "link", "set", leg, "up"]);
            sh(&["ip", "-n", ns, "addr", "add", wan_ip, "dev", "wan0"]);
            sh(&["ip", "-n", ns, "link", "set", "wan0", "up"]);
            // LAN: the datacenter's own addresses, reachable from nowhere else (on the namespace's
            // loopback device: kernels without the dummy driver have it too).
            for ip in lan_ips {
                sh(&["ip", "-n", ns, "addr", "add", ip, "dev", "lo"]);
            }
        }
        t
    }
}

/// Starts a long-lived thread inside `ns`.
fn spawn_in_ns(ns: &str, f: impl FnOnce() + Send + 'static) {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    });
}

/// The web application: one request through a web sidecar upstream port; the answer, or None when the
/// mesh closed the connection without one.
fn call(ns: &str, port: u16, message: &str) -> Option<String> {
    let message = message.to_owned();
    in_ns(ns, move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        s.write_all(format!("{message}\n").as_bytes()).ok()?;
        let mut answer = String::new();
        BufReader::new(&s).read_line(&mut answer).ok()?;
        (!answer.is_empty()).then(|| answer.trim().to_owned())
    })
}

/// A plaintext application inside `ns`: answers each line with `<name> got: <line>` and reports it.
fn app(ns: &str, addr: &'static str, prefix: &'static str) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    spawn_in_ns(ns, move || {
        let listener = TcpListener::bind(addr).expect("app bind");
        let _ = ready_tx.send(());
        serve_lines(listener, prefix, Some(tx));
    });
    ready_rx.recv_timeout(WAIT).expect("app listening");
    rx
}

struct Files {
    dir: PathBuf,
}

impl Files {
    fn write(&self, rel: &str, text: &str) {
        let path = self.dir.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        // Write then rename: the catalog plugin never reads a half-written file.
        let tmp = path.with_extension("tmp~");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
    }
    fn remove(&self, rel: &str) {
        let _ = std::fs::remove_file(self.dir.join(rel));
    }
    fn path(&self, rel: &str) -> String {
        self.dir.join(rel).display().to_string()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn gateway_toml(dc: &str, lan: &str, wan: &str) -> String {
    format!(
        r#"[gateway]
datacenter = "{dc}"
listen = ["{lan}:8443", "{wan}:8443"]
admin = "127.0.0.1:19000"
workers = 1

[catalog]
plugin = "file-catalog"
config = {{ dir = "catalog/{dc}", datacenter = "{dc}", trust_domain = "{TD}" }}
allow_dirs = ["catalog/{dc}"]
poll_ms = 100
"#
    )
}

/// web's registration: upstream api in dc2 on 10000 (with an optional upstream-level mode), db on 10002;
/// an optional instance-level mode on the sidecar's proxy.
fn web_hcl(instance_mode: Option<&str>, upstream_mode: Option<&str>) -> String {
    let block = |m: Option<&str>| {
        m.map_or(String::new(), |m| {
            format!("mesh_gateway {{ mode = \"{m}\" }}")
        })
    };
    format!(
        r#"service {{
  name = "web"
  port = 8080
  connect {{ sidecar_service {{
    address = "10.1.0.10"
    port = 21000
    proxy {{
      {}
      upstreams = [
        {{ destination_name = "api", datacenter = "dc2", local_bind_port = 10000, {} }},
        {{ destination_name = "db", local_bind_port = 10002 }},
      ]
    }}
  }} }}
}}
"#,
        block(instance_mode),
        block(upstream_mode)
    )
}

fn api_hcl(status: &str) -> String {
    format!(
        r#"service {{
  name = "api"
  port = 9090
  connect {{ sidecar_service {{
    address = "10.2.0.10"
    port = 21000
    check {{ id = "api-sidecar", status = "{status}" }}
  }} }}
}}
"#
    )
}

fn mode_entry(kind: &str, name: &str, mode: &str) -> String {
    format!("Kind = \"{kind}\"\nName = \"{name}\"\nMeshGateway {{ Mode = \"{mode}\" }}\n")
}

fn gateway_hcl(lan: &str, wan: &str) -> String {
    format!(
        r#"service {{
  name = "mesh-gateway"
  kind = "mesh-gateway"
  address = "{lan}"
  port = 8443
  tagged_addresses {{
    lan {{ address = "{lan}", port = 8443 }}
    wan {{ address = "{wan}", port = 8443 }}
  }}
}}
"#
    )
}

#[test]
fn cross_datacenter_mesh_in_namespaces() {
    if common::skip_netns(&["ip", "tcpdump"]) {
        return;
    }
    let files = Files {
        dir: std::env::temp_dir().join(format!("meshgate-netns-{}", std::process::id())),
    };
    let _ = std::fs::remove_dir_all(&files.dir);
    // One mesh CA: dc1 holds the root, dc2 an intermediate.
    let (ca1, ca2) = (files.path("ca/dc1"), files.path("ca/dc2"));
    meshgate_ok(&["ca", "init", "--trust-domain", TD, "--out", &ca1]);
    meshgate_ok(&[
        "ca",
        "intermediate",
        "--ca",
        &ca1,
        "--datacenter",
        "dc2",
        "--out",
        &ca2,
    ]);
    issue_leaf(&ca1, "web", "dc1", &files.path("certs/web"));
    issue_leaf(&ca1, "db", "dc1", &files.path("certs/db"));
    issue_leaf(&ca2, "api", "dc2", &files.path("certs/api"));
    // Catalogs: each datacenter sees its own services and both gateways (the other's by WAN address).
    files.write("catalog/dc1/web.hcl", &web_hcl(None, None));
    files.write(
        "catalog/dc1/db.hcl",
        "service {\n  name = \"db\"\n  port = 5432\n  connect { sidecar_service {\n    address = \"10.1.0.11\"\n    port = 21000\n  } }\n}\n",
    );
    files.write(
        "catalog/dc1/gateway.hcl",
        &gateway_hcl("10.1.0.2", "10.99.0.1"),
    );
    files.write(
        "catalog/dc1/dc2/gateway.hcl",
        &gateway_hcl("10.2.0.2", "10.99.0.2"),
    );
    // dc1 also knows api's instance in dc2 (Consul answers cross-datacenter catalog queries): in mode
    // none a sidecar dials it directly, and finds no route.
    files.write("catalog/dc1/dc2/api.hcl", &api_hcl("passing"));
    files.write(
        "catalog/dc1/proxy-defaults.hcl",
        &mode_entry("proxy-defaults", "global", "local"),
    );
    files.write("catalog/dc2/api.hcl", &api_hcl("passing"));
    files.write(
        "catalog/dc2/gateway.hcl",
        &gateway_hcl("10.2.0.2", "10.99.0.2"),
    );
    files.write(
        "catalog/dc2/dc1/gateway.hcl",
        &gateway_hcl("10.1.0.2", "10.99.0.1"),
    );
    files.write("gw1.toml", &gateway_toml("dc1", "10.1.0.2", "10.99.0.1"));
    files.write("gw2.toml", &gateway_toml("dc2", "10.2.0.2", "10.99.0.2"));
    files.write(
        "web.toml",
        &sidecar_toml(
            "web",
            "dc1",
            "127.0.0.1:19100",
            "catalog/dc1",
            TD,
            "allow",
            "",
        ),
    );
    files.write(
        "db.toml",
        &sidecar_toml(
            "db",
            "dc1",
            "127.0.0.1:19101",
            "catalog/dc1",
            TD,
            "allow",
            "",
        ),
    );
    files.write(
        "api.toml",
        &sidecar_toml(
            "api",
            "dc2",
            "127.0.0.1:19100",
            "catalog/dc2",
            TD,
            "allow",
            "",
        ),
    );

    let topo = Topology::build();
    let (dc1, dc2) = (topo.dc1.clone(), topo.dc2.clone());
    // Capture everything that crosses the WAN, from before the first byte.
    let pcap = files.dir.join("wan.pcap");
    let mut capture = Proc::start_in(
        "tcpdump",
        Some(&topo.wan),
        &[
            "tcpdump",
            "-i",
            "br0",
            // Each packet to the file as it arrives: without it libpcap holds packets in a ring block
            // until the block fills or a second passes, and stopping tcpdump loses that block.
            "--immediate-mode",
            "-U",
            "-s",
            "0",
            "-w",
            &pcap.display().to_string(),
        ],
    );
    capture.wait_log(&["listening on"]);

    let api_seen = app(&dc2, "127.0.0.1:9090", "api got: ");
    let db_seen = app(&dc1, "127.0.0.1:5432", "db got: ");
    let gw1 = Proc::meshgate(
        "dc1 gateway",
        &dc1,
        &["gateway", "--config", &files.path("gw1.toml")],
    );
    let gw2 = Proc::meshgate(
        "dc2 gateway",
        &dc2,
        &["gateway", "--config", &files.path("gw2.toml")],
    );
    let api = Proc::meshgate(
        "api sidecar",
        &dc2,
        &["sidecar", "--config", &files.path("api.toml")],
    );
    let web = Proc::meshgate(
        "web sidecar",
        &dc1,
        &["sidecar", "--config", &files.path("web.toml")],
    );
    let db = Proc::meshgate(
        "db sidecar",
        &dc1,
        &["sidecar", "--config", &files.path("db.toml")],
    );
    for (ns, admin) in [
        (&dc1, "127.0.0.1:19000"),
        (&dc2, "127.0.0.1:19000"),
        (&dc2, "127.0.0.1:19100"),
        (&dc1, "127.0.0.1:19100"),
        (&dc1, "127.0.0.1:19101"),
    ] {
        // The body, not only an answer: a starting process answers "not ready" (503) first.
        wait_admin(ns, admin, "/ready", "ready", |b| b.starts_with("ready"));
    }
    let _keep = (&gw1, &gw2, &db);
    let _dump = common::DumpOnPanic::new(&[&gw1, &gw2, &api, &web, &db]);

    // Connections each gateway accepted: counted at accept (no publication delay), so once web has its
    // answer every hop has been counted.
    let accepted = |ns: &str| -> u64 {
        let body = wait_admin(ns, "127.0.0.1:19000", "/metrics", "metrics", |_| true);
        metric(&body, "meshgate_downstream_connections_total", &[])
    };
    // Waits until web's sidecar plans upstream api with this mode and source, then calls it; returns the
    // answer and how many connections each gateway accepted for it.
    // Waits until web's sidecar plans upstream api (its first) with this mode, decided at this level.
    let wait_plan = |mode: &str, source: &str| {
        let (mode_s, source_s) = (
            format!("\"mode\": \"{mode}\""),
            format!("\"mode_source\": \"{source}\""),
        );
        wait_admin(
            &dc1,
            "127.0.0.1:19100",
            "/routes",
            &format!("{mode} from {source}"),
            move |b| {
                b.split("\"destination\"").nth(1).is_some_and(|api| {
                    api.contains("\"api\"") && api.contains(&mode_s) && api.contains(&source_s)
                })
            },
        );
    };
    // Calls api once the plan is in place; the answer and the connections each gateway accepted for it.
    let mut n = 0;
    let mut hops = |mode: &str, source: &str| -> (Option<String>, u64, u64) {
        wait_plan(mode, source);
        let (b1, b2) = (accepted(&dc1), accepted(&dc2));
        n += 1;
        let answer = call(&dc1, 10000, &format!("call {n}"));
        (answer, accepted(&dc1) - b1, accepted(&dc2) - b2)
    };

    // 1. proxy-defaults local: web sidecar -> dc1 gateway -> dc2 gateway -> api sidecar (two hops).
    let marker = format!("PLAINTEXT-MARKER-{}", std::process::id());
    let (answer, d1, d2) = hops("local", "proxy-defaults");
    assert_eq!(answer.as_deref(), Some("api got: call 1"));
    assert_eq!((d1, d2), (1, 1), "local mode crosses both gateways");
    assert_eq!(api_seen.recv_timeout(WAIT).as_deref(), Ok("call 1"));
    // The marker crosses the WAN inside TLS only.
    let answer = call(&dc1, 10000, &marker);
    assert_eq!(answer, Some(format!("api got: {marker}")));
    assert_eq!(api_seen.recv_timeout(WAIT).as_deref(), Ok(marker.as_str()));

    // 2. service-defaults for web (remote) beats proxy-defaults (local): one hop.
    files.write(
        "catalog/dc1/web-defaults.hcl",
        &mode_entry("service-defaults", "web", "remote"),
    );
    let (answer, d1, d2) = hops("remote", "service-defaults");
    assert!(answer.is_some(), "remote via service-defaults");
    assert_eq!((d1, d2), (0, 1), "remote mode skips dc1's gateway");

    // 3. The service instance (the sidecar's proxy.mesh_gateway, local) beats service-defaults.
    files.write("catalog/dc1/web.hcl", &web_hcl(Some("local"), None));
    let (answer, d1, d2) = hops("local", "service-instance");
    assert!(answer.is_some(), "local via the instance");
    assert_eq!((d1, d2), (1, 1));

    // 4. The upstream (remote) beats the instance.
    files.write(
        "catalog/dc1/web.hcl",
        &web_hcl(Some("local"), Some("remote")),
    );
    let (answer, d1, d2) = hops("remote", "upstream");
    assert!(answer.is_some(), "remote via the upstream");
    assert_eq!((d1, d2), (0, 1));

    // 5. none: the sidecar dials api's sidecar directly, and nothing routes dc1 to dc2's LAN.
    files.write("catalog/dc1/web.hcl", &web_hcl(Some("local"), Some("none")));
    let (answer, d1, d2) = hops("none", "upstream");
    assert_eq!(answer, None, "mode none cannot cross datacenters");
    assert_eq!((d1, d2), (0, 0));
    web.wait_log(&["no next hop reachable", "api"]);

    // 6. Inside a datacenter no gateway is used, whatever the mode.
    files.write("catalog/dc1/web.hcl", &web_hcl(Some("remote"), None));
    wait_plan("remote", "service-instance");
    let (b1, b2) = (accepted(&dc1), accepted(&dc2));
    assert_eq!(call(&dc1, 10002, "to db").as_deref(), Some("db got: to db"));
    assert_eq!(db_seen.recv_timeout(WAIT).as_deref(), Ok("to db"));
    assert_eq!((accepted(&dc1) - b1, accepted(&dc2) - b2), (0, 0));

    // 7. A deny intention on api stops web at api's sidecar, with a log line saying who and why.
    files.write(
        "catalog/dc2/api-intentions.hcl",
        "Kind = \"service-intentions\"\nName = \"api\"\nSources = [{ Name = \"web\", Action = \"deny\" }]\n",
    );
    wait_admin(&dc2, "127.0.0.1:19100", "/routes", "deny intention", |b| {
        b.contains("\"deny\"")
    });
    assert_eq!(call(&dc1, 10000, "denied call"), None);
    let line = api.wait_log(&["connection denied by intention"]);
    assert!(
        line.contains(&format!("spiffe://{TD}/ns/default/dc/dc1/svc/web"))
            && line.contains("default/web"),
        "{line}"
    );
    files.remove("catalog/dc2/api-intentions.hcl");
    wait_admin(&dc2, "127.0.0.1:19100", "/routes", "no intentions", |b| {
        !b.contains("\"deny\"")
    });

    // 8. api's only instance unhealthy: dc2's gateway has no route, refuses (fails closed) and counts it;
    // when it recovers, traffic flows again without a restart.
    let no_route = |ns: &str| {
        let body = wait_admin(ns, "127.0.0.1:19000", "/metrics", "metrics", |_| true);
        metric(
            &body,
            "meshgate_connections_closed_total",
            &["reason=\"no_route\""],
        )
    };
    let refused_before = no_route(&dc2);
    files.write("catalog/dc2/api.hcl", &api_hcl("critical"));
    wait_admin(&dc2, "127.0.0.1:19000", "/routes", "api route gone", |b| {
        !b.contains("api.default.dc2")
    });
    assert_eq!(call(&dc1, 10000, "while unhealthy"), None);
    let deadline = Instant::now() + WAIT;
    while no_route(&dc2) == refused_before {
        assert!(
            Instant::now() < deadline,
            "dc2 gateway did not count the refusal"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    files.write("catalog/dc2/api.hcl", &api_hcl("passing"));
    wait_admin(&dc2, "127.0.0.1:19000", "/routes", "api route back", |b| {
        b.contains("api.default.dc2")
    });
    assert_eq!(
        call(&dc1, 10000, "recovered").as_deref(),
        Some("api got: recovered")
    );

    // What crossed the WAN: TLS records whose ClientHellos name api (the capture works), never the marker.
    // Every connection dc2's gateway accepted came over the WAN with one such hello: once the file holds
    // that many, the capture has caught up with the test's traffic.
    let sni = b"api.default.dc2.internal.";
    let count = |bytes: &[u8]| bytes.windows(sni.len()).filter(|w| w == sni).count() as u64;
    let crossed = accepted(&dc2);
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = count(&std::fs::read(&pcap).unwrap_or_default());
        if seen >= crossed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the capture saw {seen} ClientHellos naming api; dc2's gateway accepted {crossed} connections"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    capture.stop();
    let bytes = std::fs::read(&pcap).expect("pcap");
    let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(!contains(marker.as_bytes()), "plaintext crossed the WAN");
    assert!(!contains(b"api got:"), "plaintext answers crossed the WAN");
    drop(topo);
}

impl Proc {
    fn meshgate(name: &'static str, ns: &str, args: &[&str]) -> Proc {
        let mut cmd = vec![env!("CARGO_BIN_EXE_meshgate")];
        cmd.extend_from_slice(args);
        Proc::start_in(name, Some(ns), &cmd)
    }
}
