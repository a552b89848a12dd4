//! Gateway-mode precedence over every combination of the four levels, and the compilation of a catalog
//! into gateway routes and sidecar upstream plans, as Consul does it.

use meshgate_mesh::catalog::{resolve_mode, Catalog, Instance, ModeSource};
use meshgate_mesh::model::{ConfigEntry, EntryKind, GatewayMode, Health};
use meshgate_mesh::{load_document, Document};
use std::path::Path;

const TD: &str = "11111111-2222-3333-4444-555555555555.consul";

fn instances(dc: &str, node: &str, hcl: &str) -> Vec<Instance> {
    match load_document(hcl, Path::new("t.hcl")).expect("valid") {
        Document::Services { services, .. } => services
            .into_iter()
            .flat_map(|s| {
                let sidecar = s.sidecar.clone();
                std::iter::once(*Box::new(s)).chain(sidecar.map(|b| *b))
            })
            .map(|service| Instance {
                datacenter: dc.to_owned(),
                node_address: node.to_owned(),
                service,
            })
            .collect(),
        other => panic!("{other:?}"),
    }
}

fn entry(kind: EntryKind, name: &str, mode: Option<GatewayMode>) -> ConfigEntry {
    ConfigEntry {
        kind,
        name: name.to_owned(),
        mesh_gateway: mode,
        subsets: vec![],
        default_subset: None,
        sources: vec![],
        failover: Vec::new(),
        redirect: None,
        other: Default::default(),
    }
}

const MODES: [Option<GatewayMode>; 4] = [
    None,
    Some(GatewayMode::None),
    Some(GatewayMode::Local),
    Some(GatewayMode::Remote),
];

#[test]
fn precedence_every_combination() {
    for u in MODES {
        for i in MODES {
            for s in MODES {
                for p in MODES {
                    let (mode, source) = resolve_mode(u, i, s, p);
                    let want = if let Some(m) = u {
                        (m, ModeSource::Upstream)
                    } else if let Some(m) = i {
                        (m, ModeSource::ServiceInstance)
                    } else if let Some(m) = s {
                        (m, ModeSource::ServiceDefaults)
                    } else if let Some(m) = p {
                        (m, ModeSource::ProxyDefaults)
                    } else {
                        (GatewayMode::None, ModeSource::Default)
                    };
                    assert_eq!((mode, source), want, "{u:?} {i:?} {s:?} {p:?}");
                }
            }
        }
    }
}

/// dc1: web (+sidecar), db (+sidecar), a gateway; dc2: api (+sidecar, one healthy one critical), a gateway.
fn mesh() -> Catalog {
    let mut c = Catalog {
        trust_domain: TD.to_owned(),
        ..Default::default()
    };
    c.instances.extend(instances(
        "dc1",
        "10.1.0.5",
        r#"
        services = [
          { name = "web", port = 8080, connect { sidecar_service {
              port = 21000
              proxy { upstreams = [
                { destination_name = "api", datacenter = "dc2", local_bind_port = 10000 },
                { destination_name = "db", local_bind_port = 10001, mesh_gateway { mode = "remote" } },
              ] } } } },
          { name = "db", port = 5432, connect { sidecar_service { port = 21001 } } },
          { name = "mesh-gateway", kind = "mesh-gateway", port = 8443,
            tagged_addresses { lan { address = "10.1.0.5", port = 8443 }
                               wan { address = "198.51.100.1", port = 443 } } },
        ]"#,
    ));
    c.instances.extend(instances(
        "dc2",
        "10.2.0.7",
        r#"
        services = [
          { name = "api", port = 9090, connect { sidecar_service { port = 21000 } } },
          { name = "api-sidecar-proxy", id = "api-2-sidecar", kind = "connect-proxy", address = "10.2.0.8", port = 21000,
            proxy { destination_service_name = "api" }, check { id = "down", status = "critical" } },
          { name = "mesh-gateway", kind = "mesh-gateway", port = 8443,
            tagged_addresses { wan { address = "198.51.100.2", port = 443 } } },
        ]"#,
    ));
    c
}

#[test]
fn gateway_routes_follow_consul() {
    let c = mesh();
    let routes = c.gateway_routes("dc1", false);
    let table: Vec<(&str, Vec<&str>)> = routes
        .iter()
        .map(|r| {
            (
                r.pattern.as_str(),
                r.endpoints.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    let db = format!("db.default.dc1.internal.{TD}");
    let web = format!("web.default.dc1.internal.{TD}");
    let dc2 = format!("*.dc2.internal.{TD}");
    assert_eq!(
        table,
        vec![
            (db.as_str(), vec!["10.1.0.5:21001"]),
            (web.as_str(), vec!["10.1.0.5:21000"]),
            (dc2.as_str(), vec!["198.51.100.2:443"]),
        ]
    );
    // dc2's gateway: its api has one healthy sidecar of two.
    let routes = c.gateway_routes("dc2", false);
    let api = routes
        .iter()
        .find(|r| r.pattern.starts_with("api."))
        .expect("api route");
    assert_eq!(api.endpoints, vec!["10.2.0.7:21000"]);
    assert!(routes
        .iter()
        .any(|r| r.pattern == format!("*.dc1.internal.{TD}")
            && r.endpoints == vec!["198.51.100.1:443"]));
}

#[test]
fn unhealthy_service_gets_no_route() {
    let mut c = mesh();
    for i in &mut c.instances {
        if i.datacenter == "dc2" && i.service.name == "api-sidecar-proxy" {
            i.service.checks = vec![meshgate_mesh::model::Check {
                name: "down".into(),
                status: Health::Critical,
            }];
        }
    }
    assert!(!c
        .gateway_routes("dc2", false)
        .iter()
        .any(|r| r.pattern.starts_with("api.")));
}

/// Sets the status of every instance of `name` in `dc` (one check).
fn set_health(c: &mut Catalog, dc: &str, name: &str, status: Health) {
    for i in &mut c.instances {
        if i.datacenter == dc && i.service.name == name {
            i.service.checks = vec![meshgate_mesh::model::Check {
                name: "check".into(),
                status,
            }];
        }
    }
}

#[test]
fn warning_instances_keep_receiving_traffic() {
    // Consul's rule (§4.4): a warning check lowers the weight, it does not take the instance out.
    let mut c = mesh();
    set_health(&mut c, "dc2", "api-sidecar-proxy", Health::Warning);
    set_health(&mut c, "dc1", "mesh-gateway", Health::Warning);
    assert!(c
        .instances
        .iter()
        .any(|i| i.service.health() == Health::Warning && i.healthy()));
    let routes = c.gateway_routes("dc2", false);
    let api = routes
        .iter()
        .find(|r| r.pattern.starts_with("api."))
        .expect("api still routed while warning");
    assert_eq!(
        api.endpoints.len(),
        2,
        "both sidecars, warning ones included"
    );
    assert!(routes
        .iter()
        .any(|r| r.pattern == format!("*.dc1.internal.{TD}")));
    assert_eq!(c.gateway_endpoints("dc1", "wan").len(), 1);

    // Maintenance and critical still take it out.
    for status in [Health::Critical, Health::Maintenance] {
        set_health(&mut c, "dc2", "api-sidecar-proxy", status);
        assert!(
            !c.gateway_routes("dc2", false)
                .iter()
                .any(|r| r.pattern.starts_with("api.")),
            "{status:?}"
        );
        assert!(c.service_endpoints("api", "default", "dc2").is_empty());
    }
}

#[test]
fn upstream_plans_by_mode() {
    let mut c = mesh();
    let web_sidecar = c
        .instances
        .iter()
        .find(|i| i.service.name == "web-sidecar-proxy")
        .expect("sidecar")
        .service
        .clone();

    // Nothing set: none → dial api's instances in dc2 directly.
    let plan = c.upstream_plan("dc1", &web_sidecar);
    assert_eq!(plan[0].sni, format!("api.default.dc2.internal.{TD}"));
    assert_eq!(
        plan[0].identity,
        format!("spiffe://{TD}/ns/default/dc/dc2/svc/api")
    );
    assert_eq!(
        (plan[0].mode, plan[0].mode_source),
        (GatewayMode::None, ModeSource::Default)
    );
    assert_eq!(plan[0].next_hops, vec!["10.2.0.7:21000"]);
    // db is intra-datacenter: never through a gateway, even with mode remote.
    assert_eq!(plan[1].mode, GatewayMode::Remote);
    assert!(!plan[1].via_gateway);
    assert_eq!(plan[1].next_hops, vec!["10.1.0.5:21001"]);

    // proxy-defaults local → dc1's gateway (LAN).
    c.config_entries.push(entry(
        EntryKind::ProxyDefaults,
        "global",
        Some(GatewayMode::Local),
    ));
    let plan = c.upstream_plan("dc1", &web_sidecar);
    assert_eq!(
        (plan[0].mode, plan[0].mode_source),
        (GatewayMode::Local, ModeSource::ProxyDefaults)
    );
    assert_eq!(plan[0].next_hops, vec!["10.1.0.5:8443"]);

    // service-defaults for web (the source) remote → dc2's gateway (WAN) wins over proxy-defaults.
    c.config_entries.push(entry(
        EntryKind::ServiceDefaults,
        "web",
        Some(GatewayMode::Remote),
    ));
    let plan = c.upstream_plan("dc1", &web_sidecar);
    assert_eq!(
        (plan[0].mode, plan[0].mode_source),
        (GatewayMode::Remote, ModeSource::ServiceDefaults)
    );
    assert_eq!(plan[0].next_hops, vec!["198.51.100.2:443"]);
    // service-defaults of another service does not apply.
    c.config_entries
        .retain(|e| e.kind != EntryKind::ServiceDefaults);
    c.config_entries.push(entry(
        EntryKind::ServiceDefaults,
        "api",
        Some(GatewayMode::Remote),
    ));
    let plan = c.upstream_plan("dc1", &web_sidecar);
    assert_eq!(plan[0].mode_source, ModeSource::ProxyDefaults);
}

#[test]
fn wan_federation_routes_servers() {
    let mut c = mesh();
    c.instances.extend(instances(
        "dc1",
        "10.1.0.9",
        r#"service { name = "consul", id = "server-1", port = 8300, meta { node = "server-1" } }"#,
    ));
    let routes = c.gateway_routes("dc1", true);
    assert!(routes.iter().any(|r| r.pattern == "*.server.dc2.consul"));
    assert!(
        routes
            .iter()
            .any(|r| r.pattern == "server-1.server.dc1.consul"
                && r.endpoints == vec!["10.1.0.9:8300"])
    );
}

#[test]
fn the_plain_name_routes_to_the_default_subset() {
    let mut c = mesh();
    c.instances.extend(instances(
        "dc1",
        "10.1.0.6",
        r#"
        services = [
          { name = "db", id = "db-2", port = 5432, meta { version = "v2" },
            connect { sidecar_service { port = 21002 } } },
        ]"#,
    ));
    let resolver = "Kind = \"service-resolver\"\nName = \"db\"\nDefaultSubset = \"v2\"\n\
                    Subsets = { v2 = { Filter = \"Service.Meta.version == v2\" } }\n";
    match load_document(resolver, Path::new("r.hcl")).expect("resolver") {
        Document::ConfigEntry(e) => c.config_entries.push(e),
        other => panic!("{other:?}"),
    }
    let routes = c.gateway_routes("dc1", false);
    let plain = routes
        .iter()
        .find(|r| r.pattern == format!("db.default.dc1.internal.{TD}"))
        .expect("service route");
    // As Consul's gateway: the plain name is the default subset's cluster.
    assert_eq!(plain.endpoints, vec!["10.1.0.6:21002"]);
}

#[test]
fn resolver_subsets_route_to_matching_healthy_instances() {
    let mut c = mesh();
    c.instances.extend(instances(
        "dc1",
        "10.1.0.6",
        r#"
        services = [
          { name = "db", id = "db-2", port = 5432, meta { version = "v2" },
            connect { sidecar_service { port = 21002 } } },
        ]"#,
    ));
    let resolver = r#"
Kind = "service-resolver"
Name = "db"
DefaultSubset = "v1"
Subsets = {
  v2 = {
    Filter = "Service.Meta.version == v2"
  }
}
"#;
    match load_document(resolver, Path::new("r.hcl")).expect("resolver") {
        Document::ConfigEntry(e) => {
            assert_eq!(e.subsets.len(), 1);
            assert_eq!(e.default_subset.as_deref(), Some("v1"));
            assert!(!e.other.contains_key("DefaultSubset"));
            c.config_entries.push(e);
        }
        other => panic!("{other:?}"),
    }
    let routes = c.gateway_routes("dc1", false);
    let v2 = routes
        .iter()
        .find(|r| r.pattern == format!("v2.db.default.dc1.internal.{TD}"))
        .expect("subset route");
    // Only db-2's sidecar (it inherited meta version=v2 from its parent).
    assert_eq!(v2.endpoints, vec!["10.1.0.6:21002"]);
    let all = routes
        .iter()
        .find(|r| r.pattern == format!("db.default.dc1.internal.{TD}"))
        .expect("service route");
    assert_eq!(all.endpoints.len(), 2);

    let bad = resolver.replace("Service.Meta.version == v2", "Service.Meta.version > 2");
    let e = load_document(&bad, Path::new("r.hcl")).expect_err("unsupported filter");
    assert_eq!(e.field.as_deref(), Some("Subsets.v2.Filter"), "{e}");
}

fn config_entry(hcl: &str) -> ConfigEntry {
    match load_document(hcl, Path::new("entry.hcl")).expect("valid entry") {
        Document::ConfigEntry(e) => e,
        other => panic!("{other:?}"),
    }
}

#[test]
fn sidecar_plan_and_intentions() {
    use meshgate_mesh::model::IntentionAction::{Allow, Deny};
    use meshgate_mesh::sidecar::{authorize, PlanError};
    let mut c = mesh();
    let plan = c.sidecar_plan("dc1", "web", None).expect("web's sidecar");
    assert_eq!(plan.proxy_id, "web-sidecar-proxy");
    assert_eq!(plan.public, "10.1.0.5:21000");
    assert_eq!(plan.local_app.as_deref(), Some("127.0.0.1:8080"));
    assert_eq!(plan.upstreams.len(), 2);
    assert_eq!(
        plan.upstreams[0].upstream.local_bind_address.as_deref(),
        Some("127.0.0.1")
    );
    assert!(plan.intentions.is_empty());

    // Two sidecars front api in dc2: one must be named.
    assert!(matches!(
        c.sidecar_plan("dc2", "api", None),
        Err(PlanError::Ambiguous { count: 2, .. })
    ));
    let plan = c
        .sidecar_plan("dc2", "api", Some("api-2-sidecar"))
        .expect("named");
    assert_eq!(plan.public, "10.2.0.8:21000");
    assert!(matches!(
        c.sidecar_plan("dc1", "api", None),
        Err(PlanError::NoSidecar { .. })
    ));

    c.config_entries.push(config_entry(
        r#"
        Kind = "service-intentions"
        Name = "api"
        Sources = [
          { Name = "*", Action = "allow" },
          { Name = "web", Action = "deny" },
        ]"#,
    ));
    c.config_entries.push(config_entry(
        r#"
        Kind = "service-intentions"
        Name = "*"
        Sources = [{ Name = "db", Namespace = "*", Action = "deny" }]"#,
    ));
    let rules = c.intentions_for("api");
    // The exact source comes first though written second; the `*` destination's rules come last.
    assert_eq!(
        rules.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["web", "*", "db"]
    );
    assert_eq!(authorize(&rules, "default", "web", Allow), Deny);
    assert_eq!(authorize(&rules, "default", "db", Deny), Allow);
    assert_eq!(authorize(&rules, "other", "db", Allow), Deny);
    assert_eq!(authorize(&c.intentions_for("web"), "x", "db", Allow), Deny);
}

#[test]
fn intention_entries_are_checked() {
    for (hcl, want) in [
        (
            r#"Kind = "service-intentions"
Name = "api"
Sources = [{ Name = "web", Action = "maybe" }]"#,
            "Sources[0].Action",
        ),
        (
            r#"Kind = "service-intentions"
Name = "api"
Sources = [{ Name = "web" }]"#,
            "missing Action",
        ),
        (
            r#"Kind = "service-intentions"
Name = "api"
Sources = [{ Name = "web", Permissions = [{ Action = "allow" }] }]"#,
            "L7 permissions",
        ),
        (
            r#"Kind = "service-defaults"
Name = "api"
Sources = [{ Name = "web", Action = "allow" }]"#,
            "only service-intentions",
        ),
    ] {
        let e = load_document(hcl, Path::new("bad.hcl")).expect_err(hcl);
        assert!(e.to_string().contains(want), "{e}");
    }
    // Scopes we do not implement are refused at their line, never dropped (which would widen the rule
    // to the local service of the same name).
    for (key, value, scope) in [
        ("Peer", "\"cluster-b\"", "a cluster peer"),
        ("Partition", "\"finance\"", "an admin partition"),
        ("SamenessGroup", "\"sg\"", "a sameness group"),
    ] {
        let hcl = format!(
            "Kind = \"service-intentions\"\nName = \"api\"\nSources = [\n  {{\n    Name = \"web\"\n    {key} = {value}\n    Action = \"allow\"\n  }}\n]\n"
        );
        let e = load_document(&hcl, Path::new("scoped.hcl")).expect_err(&hcl);
        let text = e.to_string();
        assert!(text.starts_with("scoped.hcl:6:"), "{text}");
        assert!(text.contains(&format!("Sources[0].{key}")), "{text}");
        assert!(text.contains(scope), "{text}");
    }
}

/// `mesh()` plus dc3: api (+sidecar) and a gateway.
fn mesh3() -> Catalog {
    let mut c = mesh();
    c.instances.extend(instances(
        "dc3",
        "10.3.0.9",
        r#"
        services = [
          { name = "api", port = 9090, connect { sidecar_service { port = 21000 } } },
          { name = "mesh-gateway", kind = "mesh-gateway", port = 8443,
            tagged_addresses { wan { address = "198.51.100.3", port = 443 } } },
        ]"#,
    ));
    c
}

fn groups(r: &meshgate_mesh::RouteDef) -> Vec<Vec<&str>> {
    std::iter::once(&r.endpoints)
        .chain(&r.failover)
        .map(|g| g.iter().map(String::as_str).collect())
        .collect()
}

#[test]
fn datacenter_failover_policy_adds_groups_at_the_origin_and_local_instances_at_the_target() {
    use meshgate_mesh::DatacenterFailover;
    let c = mesh3();
    let policy = DatacenterFailover::parse("dc2=dc3").expect("policy");
    // Without a policy: exactly Consul's routes.
    assert_eq!(
        c.gateway_routes_with_failover("dc1", false, &DatacenterFailover::default()),
        c.gateway_routes("dc1", false)
    );
    // dc1 (the origin): dc2's names go to dc2's gateway, then dc3's.
    let dc2 = format!("*.dc2.internal.{TD}");
    let routes = c.gateway_routes_with_failover("dc1", false, &policy);
    let r = routes.iter().find(|r| r.pattern == dc2).expect("dc2 route");
    assert_eq!(
        groups(r),
        vec![vec!["198.51.100.2:443"], vec!["198.51.100.3:443"]]
    );
    // dc3 (the target): api's dc2 name goes to dc2's gateway, then to dc3's own api; dc3's `*.dc2`
    // never goes to a third datacenter (no loops).
    let routes = c.gateway_routes_with_failover("dc3", false, &policy);
    let api2 = format!("api.default.dc2.internal.{TD}");
    let r = routes
        .iter()
        .find(|r| r.pattern == api2)
        .expect("api route");
    assert_eq!(
        groups(r),
        vec![vec!["198.51.100.2:443"], vec!["10.3.0.9:21000"]]
    );
    let r = routes.iter().find(|r| r.pattern == dc2).expect("dc2 route");
    assert_eq!(groups(r), vec![vec!["198.51.100.2:443"]]);
    // dc2 itself ignores its own entry.
    assert_eq!(
        c.gateway_routes_with_failover("dc2", false, &policy),
        c.gateway_routes("dc2", false)
    );
    // dc2 without a healthy gateway: the origin still routes dc2's names, to dc3 only.
    let mut down = mesh3();
    down.instances
        .retain(|i| !(i.datacenter == "dc2" && i.service.name == "mesh-gateway"));
    let routes = down.gateway_routes_with_failover("dc1", false, &policy);
    let r = routes.iter().find(|r| r.pattern == dc2).expect("dc2 route");
    assert_eq!(groups(r), vec![vec![], vec!["198.51.100.3:443"]]);
}
