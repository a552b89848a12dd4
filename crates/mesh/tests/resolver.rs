//! A `service-resolver`'s `Failover` and `Redirect`: read alike from HCL, JSON, YAML and TOML, bad
//! shapes refused with file, line and field; and an upstream plan's targets in Consul's order, with
//! their SNI, identity, next hops per gateway mode and plan-time health.

use meshgate_mesh::catalog::{Catalog, Instance};
use meshgate_mesh::model::{ConfigEntry, Failover, GatewayMode, Redirect};
use meshgate_mesh::resolver::Origin;
use meshgate_mesh::{load_document, Document};
use std::path::Path;

const TD: &str = "11111111-2222-3333-4444-555555555555.consul";

fn entry(name: &str, text: &str) -> ConfigEntry {
    match load_document(text, Path::new(name)) {
        Ok(Document::ConfigEntry(e)) => e,
        other => panic!("{name}: {other:?}"),
    }
}

const HCL: &str = r#"Kind = "service-resolver"
Name = "api"
DefaultSubset = "v1"
Subsets = {
  v1 = { Filter = "Service.Meta.version == 1" }
}
Failover = {
  "*" = {
    Datacenters = ["dc2", "dc3"]
  }
  v1 = {
    Service = "api-backup"
    ServiceSubset = "blue"
    Namespace = "ops"
  }
}
"#;

const JSON: &str = r#"{
  "Kind": "service-resolver",
  "Name": "api",
  "DefaultSubset": "v1",
  "Subsets": {"v1": {"Filter": "Service.Meta.version == 1"}},
  "Failover": {
    "*": {"Datacenters": ["dc2", "dc3"]},
    "v1": {"Service": "api-backup", "ServiceSubset": "blue", "Namespace": "ops"}
  }
}"#;

const YAML: &str = r#"Kind: service-resolver
Name: api
DefaultSubset: v1
Subsets:
  v1:
    Filter: Service.Meta.version == 1
Failover:
  "*":
    Datacenters: [dc2, dc3]
  v1:
    Service: api-backup
    ServiceSubset: blue
    Namespace: ops
"#;

const TOML: &str = r#"Kind = "service-resolver"
Name = "api"
DefaultSubset = "v1"
[Subsets.v1]
Filter = "Service.Meta.version == 1"
[Failover."*"]
Datacenters = ["dc2", "dc3"]
[Failover.v1]
Service = "api-backup"
ServiceSubset = "blue"
Namespace = "ops"
"#;

#[test]
fn failover_reads_alike_in_every_format() {
    let want = entry("r.hcl", HCL);
    assert_eq!(
        want.failover,
        vec![
            Failover {
                key: "*".into(),
                datacenters: vec!["dc2".into(), "dc3".into()],
                ..Default::default()
            },
            Failover {
                key: "v1".into(),
                service: Some("api-backup".into()),
                service_subset: Some("blue".into()),
                namespace: Some("ops".into()),
                datacenters: vec![],
            },
        ]
    );
    assert!(want.other.is_empty(), "{:?}", want.other);
    for (name, text) in [("r.json", JSON), ("r.yaml", YAML), ("r.toml", TOML)] {
        assert_eq!(entry(name, text), want, "{name}");
    }
}

#[test]
fn redirect_reads_alike_in_every_format_including_consul_blocks() {
    let want = entry(
        "r.hcl",
        "Kind = \"service-resolver\"\nName = \"api\"\nRedirect {\n  Service = \"api-v2\"\n  Datacenter = \"dc3\"\n}\n",
    );
    assert_eq!(
        want.redirect,
        Some(Redirect {
            service: Some("api-v2".into()),
            datacenter: Some("dc3".into()),
            ..Default::default()
        })
    );
    for (name, text) in [
        (
            "r.json",
            r#"{"Kind": "service-resolver", "Name": "api", "Redirect": {"Service": "api-v2", "Datacenter": "dc3", "Namespace": ""}}"#,
        ),
        // Consul's docs render a block as a list holding one map.
        (
            "r.yaml",
            "Kind: service-resolver\nName: api\nRedirect:\n- Service: api-v2\n  Datacenter: dc3\n",
        ),
        (
            "r.toml",
            "Kind = \"service-resolver\"\nName = \"api\"\n[Redirect]\nservice = \"api-v2\"\ndatacenter = \"dc3\"\n",
        ),
    ] {
        assert_eq!(entry(name, text), want, "{name}");
    }
}

fn refused(name: &str, text: &str) -> meshgate_mesh::LoadError {
    match load_document(text, Path::new(name)) {
        Err(e) => e,
        Ok(d) => panic!("{name} accepted: {d:?}"),
    }
}

#[test]
fn bad_shapes_name_the_file_line_and_field() {
    // A misspelt key would silently mean "no failover": refused.
    let e = refused(
        "api.hcl",
        "Kind = \"service-resolver\"\nName = \"api\"\nFailover = {\n  \"*\" = {\n    Datacenter = \"dc2\"\n  }\n}\n",
    );
    assert_eq!(e.field.as_deref(), Some("Failover.*.Datacenter"), "{e}");
    assert_eq!(e.line, 5, "{e}");
    assert!(e.to_string().starts_with("api.hcl:5:"), "{e}");

    let e = refused(
        "api.json",
        "{\n  \"Kind\": \"service-resolver\",\n  \"Name\": \"api\",\n  \"Failover\": {\"*\": {\"Datacenters\": \"dc2\"}}\n}\n",
    );
    assert_eq!(e.field.as_deref(), Some("Failover.*.Datacenters"), "{e}");
    assert_eq!(e.line, 4, "{e}");
    assert!(e.message.contains("list of strings"), "{e}");

    let e = refused(
        "api.yaml",
        "Kind: service-resolver\nName: api\nFailover:\n  v9:\n    Datacenters: [dc2]\n",
    );
    assert_eq!(e.field.as_deref(), Some("Failover.v9"), "{e}");
    assert!(e.message.contains("neither `*` nor a subset"), "{e}");

    let e = refused(
        "api.hcl",
        "Kind = \"service-resolver\"\nName = \"api\"\nFailover = {\n  \"*\" = {}\n}\n",
    );
    assert!(e.message.contains("at least one of"), "{e}");

    let e = refused(
        "api.hcl",
        "Kind = \"service-resolver\"\nName = \"api\"\nRedirect { Service = \"b\" }\nFailover = { \"*\" = { Datacenters = [\"dc2\"] } }\n",
    );
    assert_eq!(e.field.as_deref(), Some("Redirect"), "{e}");
    assert_eq!(e.line, 3, "{e}");

    let e = refused(
        "web.hcl",
        "Kind = \"service-defaults\"\nName = \"web\"\nRedirect { Service = \"b\" }\n",
    );
    assert!(e.message.contains("only service-resolver"), "{e}");

    let e = refused(
        "api.toml",
        "Kind = \"service-resolver\"\nName = \"api\"\n[Redirect]\nService = 3\nDatacenters = [\"dc2\"]\n",
    );
    assert_eq!(e.field.as_deref(), Some("Redirect.Datacenters"), "{e}");
    assert_eq!(e.line, 5, "{e}");
}

fn instances(dc: &str, text: &str) -> Vec<Instance> {
    match load_document(text, Path::new("t.hcl")).expect("valid") {
        Document::Services { services, .. } => services
            .into_iter()
            .flat_map(|s| {
                let sidecar = s.sidecar.clone();
                std::iter::once(s).chain(sidecar.map(|b| *b))
            })
            .map(|service| Instance {
                datacenter: dc.to_owned(),
                node_address: format!("10.{}.0.1", &dc[2..]),
                service,
            })
            .collect(),
        other => panic!("{other:?}"),
    }
}

fn gateway(dc: &str) -> Vec<Instance> {
    let n = &dc[2..];
    instances(
        dc,
        &format!("service {{\n name = \"mesh-gateway\"\n kind = \"mesh-gateway\"\n port = 8443\n tagged_addresses {{\n  lan {{ address = \"10.{n}.0.9\", port = 8443 }}\n  wan {{ address = \"192.0.2.{n}\", port = 443 }}\n }}\n}}\n"),
    )
}

fn api(dc: &str, name: &str, status: &str) -> Vec<Instance> {
    instances(
        dc,
        &format!("service {{\n name = \"{name}\"\n port = 8080\n connect {{ sidecar_service {{\n  port = 21000\n  check {{ id = \"alive\", status = \"{status}\" }}\n }} }}\n}}\n"),
    )
}

/// dc1, dc2, dc3 with a gateway each; web in dc1 with one upstream to api in `mode`; api in dc1 and
/// dc2 with the given health; the resolver in `resolver`.
fn mesh(dc1: &str, dc2: &str, mode: &str, resolver: &str) -> Catalog {
    let mut c = Catalog {
        trust_domain: TD.into(),
        ..Default::default()
    };
    for dc in ["dc1", "dc2", "dc3"] {
        c.instances.extend(gateway(dc));
    }
    c.instances.extend(instances(
        "dc1",
        &format!("service {{\n name = \"web\"\n port = 1\n connect {{ sidecar_service {{\n  port = 21001\n  proxy {{ upstreams = [{{ destination_name = \"api\", local_bind_port = 9000, mesh_gateway {{ mode = \"{mode}\" }} }}] }}\n }} }}\n}}\n"),
    ));
    c.instances.extend(api("dc1", "api", dc1));
    c.instances.extend(api("dc2", "api", dc2));
    c.instances.extend(api("dc3", "api-v2", "passing"));
    c.config_entries.push(entry("r.hcl", resolver));
    c
}

const FAILOVER_DC2: &str =
    "Kind = \"service-resolver\"\nName = \"api\"\nFailover = { \"*\" = { Datacenters = [\"dc2\"] } }\n";

fn plan(c: &Catalog) -> meshgate_mesh::UpstreamPlan {
    let web = c
        .instances
        .iter()
        .find(|i| i.service.name == "web-sidecar-proxy")
        .expect("web sidecar");
    c.upstream_plan("dc1", &web.service).remove(0)
}

#[test]
fn targets_in_order_with_next_hops_per_mode() {
    // Both healthy: dc1's instances first (same datacenter: never a gateway), then dc2's.
    for (mode, dc2_hops) in [
        ("none", "10.2.0.1:21000"),
        ("local", "10.1.0.9:8443"),
        ("remote", "192.0.2.2:443"),
    ] {
        let p = plan(&mesh("passing", "passing", mode, FAILOVER_DC2));
        let t = &p.targets;
        assert_eq!(t.len(), 2, "{mode}");
        assert_eq!(t[0].sni, format!("api.default.dc1.internal.{TD}"));
        assert_eq!(t[0].origin, Origin::Primary);
        assert_eq!(t[0].next_hops, vec!["10.1.0.1:21000"]);
        assert!(!t[0].via_gateway && t[0].skipped.is_none());
        assert_eq!(t[1].sni, format!("api.default.dc2.internal.{TD}"));
        assert_eq!(
            t[1].identity,
            format!("spiffe://{TD}/ns/default/dc/dc2/svc/api")
        );
        assert_eq!(t[1].origin, Origin::Failover { key: "*".into() });
        assert_eq!(t[1].next_hops, vec![dc2_hops], "{mode}");
        assert_eq!(t[1].via_gateway, mode != "none");
        // The plan's own fields are the first target's.
        assert_eq!(
            (p.sni.as_str(), p.datacenter.as_str()),
            (t[0].sni.as_str(), "dc1")
        );
    }
}

#[test]
fn an_unhealthy_target_is_skipped_unless_none_is_healthy() {
    for status in ["critical", "maintenance"] {
        let p = plan(&mesh(status, "passing", "local", FAILOVER_DC2));
        assert_eq!(
            p.targets[0].skipped.as_deref(),
            Some("no healthy instance of api in dc1")
        );
        assert_eq!(p.targets[1].skipped, None);
        assert_eq!(p.datacenter, "dc2");
        assert_eq!(p.sni, format!("api.default.dc2.internal.{TD}"));
        assert_eq!(p.next_hops, vec!["10.1.0.9:8443"]);
        assert_eq!(p.mode, GatewayMode::Local);
        assert!(p.via_gateway);
    }
    // Warning is healthy, as Consul decides it.
    let p = plan(&mesh("warning", "passing", "local", FAILOVER_DC2));
    assert_eq!(p.targets[0].skipped, None);
    assert_eq!(p.datacenter, "dc1");
    // Nothing healthy anywhere: the primary stays (no next hop: connections fail clearly), dc2 skipped.
    let p = plan(&mesh("critical", "critical", "local", FAILOVER_DC2));
    assert_eq!(p.targets[0].skipped, None);
    assert!(p.targets[0].next_hops.is_empty());
    assert!(p.targets[1].skipped.is_some());
    assert_eq!(p.datacenter, "dc1");
}

#[test]
fn redirect_to_another_service_and_datacenter() {
    let p = plan(&mesh(
        "passing",
        "passing",
        "remote",
        "Kind = \"service-resolver\"\nName = \"api\"\nRedirect { Service = \"api-v2\", Datacenter = \"dc3\" }\n",
    ));
    assert_eq!(p.targets.len(), 1);
    let t = &p.targets[0];
    assert_eq!(t.sni, format!("api-v2.default.dc3.internal.{TD}"));
    // The caller's identity check names the destination service, not the upstream's name.
    assert_eq!(
        t.identity,
        format!("spiffe://{TD}/ns/default/dc/dc3/svc/api-v2")
    );
    assert_eq!(t.origin, Origin::Redirect { hops: 1 });
    assert_eq!(t.next_hops, vec!["192.0.2.3:443"]);
}

#[test]
fn a_subset_target_has_the_subset_sni_and_filter() {
    let mut c = mesh(
        "passing",
        "passing",
        "remote",
        "Kind = \"service-resolver\"\nName = \"api\"\nDefaultSubset = \"v2\"\nSubsets = { v2 = { Filter = \"Service.Meta.version == 2\" } }\nFailover = { v2 = { Datacenters = [\"dc2\"] } }\n",
    );
    // Only dc2's api is version 2.
    for i in &mut c.instances {
        if i.datacenter == "dc2" && i.service.name == "api-sidecar-proxy" {
            i.service.meta.insert("version".into(), "2".into());
        }
    }
    let p = plan(&c);
    assert_eq!(
        p.targets[0].sni,
        format!("v2.api.default.dc1.internal.{TD}")
    );
    assert_eq!(
        p.targets[0].skipped.as_deref(),
        Some("no healthy instance of subset v2 of api in dc1")
    );
    assert_eq!(
        p.targets[1].sni,
        format!("v2.api.default.dc2.internal.{TD}")
    );
    assert_eq!(p.targets[1].skipped, None);
}
