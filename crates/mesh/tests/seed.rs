//! Every seed example of the reference, in every format, reads to the same model; the broken copies are
//! refused with their line and what was expected.

use meshgate_mesh::model::{EntryKind, GatewayMode};
use meshgate_mesh::{load_document, ConfigEntry, Document, Service, ServiceKind};
use std::path::{Path, PathBuf};

fn path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/seed")
        .join(name)
}

fn load(name: &str) -> Result<Document, meshgate_mesh::LoadError> {
    let p = path(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    load_document(&text, &p)
}

fn entry(name: &str) -> ConfigEntry {
    match load(name) {
        Ok(Document::ConfigEntry(e)) => e,
        other => panic!("{name}: {other:?}"),
    }
}

fn services(name: &str) -> Vec<Service> {
    match load(name) {
        Ok(Document::Services { services, .. }) => services,
        other => panic!("{name}: {other:?}"),
    }
}

#[test]
fn proxy_defaults_in_every_format() {
    let want = entry("proxy-defaults.hcl");
    assert_eq!(want.kind, EntryKind::ProxyDefaults);
    assert_eq!(want.name, "global");
    assert_eq!(want.mesh_gateway, Some(GatewayMode::Local));
    for f in [
        "proxy-defaults.yaml",
        "proxy-defaults.json",
        "proxy-defaults.toml",
    ] {
        assert_eq!(entry(f), want, "{f}");
    }
}

#[test]
fn service_defaults_in_hcl_and_yaml() {
    let want = entry("service-defaults.hcl");
    assert_eq!(want.kind, EntryKind::ServiceDefaults);
    assert_eq!(want.name, "web");
    assert_eq!(want.mesh_gateway, Some(GatewayMode::Local));
    assert_eq!(entry("service-defaults.yaml"), want);
}

#[test]
fn sidecar_with_instance_mode_in_every_format() {
    let want = services("sidecar-instance-mode.hcl");
    assert_eq!(want.len(), 1);
    let s = &want[0];
    assert_eq!(s.kind, ServiceKind::ConnectProxy);
    assert_eq!((s.name.as_str(), s.port), ("web-sidecar-proxy", 8181));
    let p = s.proxy.as_ref().expect("proxy");
    assert_eq!(p.destination_service_name, "web");
    assert_eq!(p.mesh_gateway, Some(GatewayMode::Remote));
    assert_eq!(p.upstreams.len(), 1);
    let u = &p.upstreams[0];
    assert_eq!(
        (
            u.destination_name.as_str(),
            u.datacenter.as_deref(),
            u.local_bind_port,
            u.mesh_gateway
        ),
        ("api", Some("secondary"), 10000, None)
    );
    for f in [
        "sidecar-instance-mode.yaml",
        "sidecar-instance-mode.json",
        "sidecar-api.json",
        "sidecar-instance-mode.toml",
    ] {
        assert_eq!(services(f), want, "{f}");
    }
}

#[test]
fn inline_sidecar_is_the_twin_of_the_proxy_registration() {
    let proxy_form = &services("sidecar-instance-mode.hcl")[0];
    let inline = &services("sidecar-inline.hcl")[0];
    assert_eq!(
        (inline.name.as_str(), inline.kind),
        ("web", ServiceKind::Typical)
    );
    let sidecar = inline.sidecar.as_ref().expect("sidecar_service");
    assert_eq!(sidecar.name, proxy_form.name);
    assert_eq!(sidecar.kind, ServiceKind::ConnectProxy);
    let (a, b) = (
        sidecar.proxy.as_ref().expect("proxy"),
        proxy_form.proxy.as_ref().expect("proxy"),
    );
    assert_eq!(a.destination_service_name, b.destination_service_name);
    assert_eq!(a.mesh_gateway, b.mesh_gateway);
    assert_eq!(a.upstreams, b.upstreams);
    // Consul's defaults for the inline form: the parent's port is the local service port.
    assert_eq!(a.local_service_port, Some(8181));
}

#[test]
fn per_upstream_modes_with_trailing_comma() {
    let s = &services("per-upstream-modes.hcl")[0];
    let modes: Vec<(&str, Option<GatewayMode>)> = s
        .proxy
        .as_ref()
        .expect("proxy")
        .upstreams
        .iter()
        .map(|u| (u.destination_name.as_str(), u.mesh_gateway))
        .collect();
    assert_eq!(
        modes,
        vec![
            ("api", Some(GatewayMode::Remote)),
            ("db", Some(GatewayMode::Local)),
            ("logging", Some(GatewayMode::None)),
        ]
    );
}

#[test]
fn broken_copies_are_refused_with_line_and_expectation() {
    let e = load("broken-missing-upstreams.hcl").expect_err("refused");
    assert_eq!(e.line, 7, "{e}");
    assert!(e.message.contains("expected a key or `}`"), "{e}");
    assert!(
        e.to_string().contains("broken-missing-upstreams.hcl:7:7:"),
        "{e}"
    );

    let e = load("broken-list-closed-with-brace.hcl").expect_err("refused");
    assert_eq!(e.line, 12, "{e}");
    assert!(e.message.contains("`,` or `]`"), "{e}");
}

#[test]
fn bad_values_name_the_field_and_line() {
    let text = std::fs::read_to_string(path("per-upstream-modes.hcl"))
        .expect("read")
        .replace("mode = \"local\"", "mode = \"sideways\"");
    let e = load_document(&text, Path::new("x.hcl")).expect_err("refused");
    assert_eq!(
        e.field.as_deref(),
        Some("service[0].proxy.upstreams[1].mesh_gateway.mode"),
        "{e}"
    );
    assert_eq!(e.line, 19, "{e}");
    assert!(e.message.contains("sideways"), "{e}");

    let e = load_document(
        "Kind = \"proxy-defaults\"\nName = \"web\"\n",
        Path::new("p.hcl"),
    )
    .expect_err("refused");
    assert!(e.message.contains("global"), "{e}");
    assert_eq!(e.line, 2, "{e}");

    let e = load_document(
        "{\"service\": {\"name\": \"x\", \"port\": 70000}}",
        Path::new("s.json"),
    )
    .expect_err("refused");
    assert_eq!(e.field.as_deref(), Some("service[0].port"), "{e}");

    let e =
        load_document("service:\n  name: [unclosed\n", Path::new("s.yaml")).expect_err("refused");
    assert!(e.line >= 2, "{e}");
}
