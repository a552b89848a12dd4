//! Certificates from a real Consul CA work in meshgate sidecars: a Consul 1.8.7 dev agent issues the
//! roots and the `web` and `api` leaves (its own trust domain, its own key types), two `meshgate sidecar`
//! processes use them, and web reaches api over mTLS with api's default-deny policy letting in only the
//! identity an intention names.
//!
//! The Consul binary comes from `MESHGATE_CONSUL`, else `target/tools/consul`, which
//! `scripts/install-consul.sh` installs on first use (Debian 11's package, a few seconds; needs apt).
//! `MESHGATE_SKIP_CONSUL=1` skips it on a machine that has neither.

mod common;

use common::{
    free_port, http_get, line_app, metric, poll_until, sidecar_toml, wait_for, Proc, TempDir,
};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

fn consul_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MESHGATE_CONSUL") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let tools = root.join("target/tools");
    let bin = tools.join("consul");
    if !bin.exists() {
        let script = root.join("scripts/install-consul.sh");
        common::sh(&[&script.display().to_string(), &tools.display().to_string()]);
    }
    bin
}

fn json_field(body: &str, key: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(body).expect("json");
    let mut out = Vec::new();
    fn walk(v: &serde_json::Value, key: &str, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    match x {
                        serde_json::Value::String(s) if k == key => out.push(s.clone()),
                        _ => walk(x, key, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, key, out)),
            _ => {}
        }
    }
    walk(&v, key, &mut out);
    out
}

/// Starts on fresh ports each time: ports picked free can be taken again before the agent binds them.
const CONSUL_ATTEMPTS: u32 = 3;

/// A Consul dev agent on loopback, its HTTP address and its CA roots once the Connect CA answers with
/// one (within 30 s); `None` if it exited or gave none.
fn start_consul(consul: &std::path::Path, attempt: u32) -> Option<(Proc, SocketAddr, String)> {
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (serf_lan, serf_wan, server) = (free_port(), free_port(), free_port());
    let consul_bin = consul.display().to_string();
    let (http_port, lan, wan, srv) = (
        http.port().to_string(),
        serf_lan.to_string(),
        serf_wan.to_string(),
        server.to_string(),
    );
    let mut agent = Proc::start_in(
        "consul",
        None,
        &[
            &consul_bin,
            "agent",
            "-dev",
            "-bind",
            "127.0.0.1",
            "-client",
            "127.0.0.1",
            "-http-port",
            &http_port,
            "-dns-port",
            "-1",
            "-grpc-port",
            "-1",
            "-serf-lan-port",
            &lan,
            "-serf-wan-port",
            &wan,
            "-server-port",
            &srv,
        ],
    );
    // Ready once the Connect CA answers with a root; an agent that exits will not.
    let outcome = poll_until(Duration::from_secs(30), || {
        match http_get(http, "/v1/agent/connect/ca/roots").filter(|b| b.contains("RootCert")) {
            Some(roots) => Some(Ok(roots)),
            None => agent.exited().map(Err),
        }
    });
    match outcome {
        Some(Ok(roots)) => Some((agent, http, roots)),
        Some(Err(status)) => {
            eprintln!(
                "consul attempt {attempt}: exited ({status}): {}",
                agent.log()
            );
            None
        }
        None => {
            eprintln!(
                "consul attempt {attempt}: no CA roots within 30 s: {}",
                agent.log()
            );
            None
        }
    }
}

#[test]
fn consul_ca_certificates_work_in_sidecars() {
    if std::env::var_os("MESHGATE_SKIP_CONSUL").is_some() {
        eprintln!("MESHGATE_SKIP_CONSUL set: skipping the Consul CA test");
        return;
    }
    let consul = consul_binary();
    let dir = TempDir::new("consul");
    let (_agent, http, roots) = (1..=CONSUL_ATTEMPTS)
        .find_map(|attempt| start_consul(&consul, attempt))
        .unwrap_or_else(|| {
            panic!("the Consul agent gave no CA roots in {CONSUL_ATTEMPTS} attempts")
        });
    let trust_domain = json_field(&roots, "TrustDomain")
        .pop()
        .expect("trust domain");
    let roots_pem = json_field(&roots, "RootCert").join("\n");
    for service in ["web", "api"] {
        let leaf = wait_for(Duration::from_secs(10), "consul leaf", || {
            http_get(http, &format!("/v1/agent/connect/ca/leaf/{service}"))
                .filter(|b| b.contains("CertPEM"))
        });
        let certs = dir.0.join("certs").join(service);
        std::fs::create_dir_all(&certs).expect("mkdir");
        std::fs::write(certs.join("cert.pem"), &json_field(&leaf, "CertPEM")[0]).expect("write");
        std::fs::write(
            certs.join("key.pem"),
            &json_field(&leaf, "PrivateKeyPEM")[0],
        )
        .expect("write");
        std::fs::write(certs.join("roots.pem"), &roots_pem).expect("write");
    }

    // One datacenter on loopback: web's sidecar dials api's sidecar directly (same datacenter).
    let (web_admin, api_admin) = (free_port(), free_port());
    let api_app = line_app("api got: ");
    let (api_public, web_up) = (free_port(), free_port());
    let catalog = dir.0.join("catalog");
    std::fs::create_dir_all(&catalog).expect("mkdir");
    std::fs::write(
        catalog.join("services.hcl"),
        format!(
            r#"services = [
  {{ name = "web", port = 1, connect {{ sidecar_service {{ address = "127.0.0.1", port = {}, proxy {{
      upstreams = [{{ destination_name = "api", local_bind_port = {web_up} }}] }} }} }} }},
  {{ name = "api", port = {api_app}, connect {{ sidecar_service {{ address = "127.0.0.1", port = {api_public} }} }} }},
]
"#,
            free_port()
        ),
    )
    .expect("write");
    std::fs::write(
        catalog.join("intentions.hcl"),
        "Kind = \"service-intentions\"\nName = \"api\"\nSources = [{ Name = \"web\", Action = \"allow\" }]\n",
    )
    .expect("write");
    for (service, admin) in [("web", web_admin), ("api", api_admin)] {
        std::fs::write(
            dir.0.join(format!("{service}.toml")),
            sidecar_toml(
                service,
                "dc1",
                &format!("127.0.0.1:{admin}"),
                "catalog",
                &trust_domain,
                "deny",
                "",
            ),
        )
        .expect("write");
    }
    let bin = env!("CARGO_BIN_EXE_meshgate");
    let sidecars: Vec<Proc> = ["api", "web"]
        .into_iter()
        .map(|s| {
            let config = dir.0.join(format!("{s}.toml")).display().to_string();
            Proc::start_in("sidecar", None, &[bin, "sidecar", "--config", &config])
        })
        .collect();
    for admin in [api_admin, web_admin] {
        let addr = SocketAddr::from(([127, 0, 0, 1], admin));
        wait_for(Duration::from_secs(15), "sidecar ready", || {
            http_get(addr, "/ready").filter(|b| b.starts_with("ready"))
        });
    }
    // The sidecars read the Consul leaves' identities.
    sidecars[0].wait_log(&[
        "certificates loaded",
        &format!("spiffe://{trust_domain}/ns/default/dc/dc1/svc/api"),
    ]);

    let mut s = TcpStream::connect(("127.0.0.1", web_up)).expect("web upstream");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"over consul certificates\n").expect("write");
    let mut answer = String::new();
    BufReader::new(&s).read_line(&mut answer).expect("answer");
    assert_eq!(answer.trim(), "api got: over consul certificates");
    let api_metrics =
        http_get(SocketAddr::from(([127, 0, 0, 1], api_admin)), "/metrics").expect("metrics");
    assert_eq!(
        metric(
            &api_metrics,
            "meshgate_sidecar_inbound_connections_total",
            &["allowed"]
        ),
        1,
        "{api_metrics}"
    );
}
