//! Certificates from a real Consul CA work in meshgate sidecars: a Consul 1.8.7 dev agent issues the
//! roots and the `web` and `api` leaves (its own trust domain, its own key types), two `meshgate sidecar`
//! processes use them, and web reaches api over mTLS with api's default-deny policy letting in only the
//! identity an intention names.
//!
//! The agent comes from `meshgate_consul::lab`, which finds or installs the Consul binary
//! (`MESHGATE_CONSUL`, else `<target>/tools/consul`); `MESHGATE_SKIP_CONSUL=1` skips the test.

mod common;

use common::{free_port, http_get, line_app, metric, sidecar_toml, wait_for, Proc, TempDir};
use meshgate_consul::lab::{self, DevAgent, Options};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[test]
fn consul_ca_certificates_work_in_sidecars() {
    if lab::skip_requested() {
        return;
    }
    let dir = TempDir::new("consul");
    let agent = DevAgent::start(Options::dc("dc1")).expect("consul dev agent");
    let roots = agent.roots().expect("roots");
    let trust_domain = roots.trust_domain.clone();
    let roots_pem = roots.trust_bundle().join("\n");
    for service in ["web", "api"] {
        let leaf = wait_for(Duration::from_secs(10), "consul leaf", || {
            agent.leaf(service).ok()
        });
        let certs = dir.0.join("certs").join(service);
        std::fs::create_dir_all(&certs).expect("mkdir");
        std::fs::write(certs.join("cert.pem"), &leaf.cert_pem).expect("write");
        std::fs::write(certs.join("key.pem"), &leaf.private_key_pem).expect("write");
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
