//! The model decoded from the recorded answers (tests/fixtures), and the registration body compared with
//! the exact JSON Consul's own command sends.

use super::*;
use std::collections::BTreeSet;

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/",
            $name
        ))
    };
}

fn decode<T: serde::de::DeserializeOwned>(text: &str) -> T {
    serde_json::from_str(text).expect("fixture decodes")
}

#[test]
fn catalog_services_and_datacenters() {
    let names: ServiceNames = decode(fixture!("catalog-services.json"));
    assert_eq!(names.len(), 6);
    assert_eq!(names["web"].as_deref(), Some(&["v1".to_string()][..]));
    let dcs: Datacenters = decode(fixture!("catalog-datacenters.json"));
    assert_eq!(dcs, ["dc2", "dc1"]);
}

#[test]
fn health_connect_keeps_checks_meta_and_proxy() {
    let api: Vec<CheckServiceNode> = decode(fixture!("health-connect-api.json"));
    assert_eq!(api.len(), 2);
    let (one, two) = (&api[0], &api[1]);
    assert_eq!(one.service.kind, "connect-proxy");
    assert_eq!(one.service.id, "api-1-sidecar-proxy");
    assert_eq!(one.service.meta["version"], "1");
    let proxy = one.service.proxy.as_ref().expect("proxy");
    assert_eq!(
        (
            proxy.destination_service_name.as_str(),
            proxy.destination_service_id.as_str()
        ),
        ("api", "api-1")
    );
    assert_eq!(one.node.datacenter, "dc1");
    assert_eq!(one.checks.len(), 3);
    assert_eq!(one.healthy_weight(false), Some(1));
    // api-2's sidecar does not listen: critical, out.
    assert!(
        two.node.meta.is_empty() && two.service.tags.is_empty(),
        "nulls read as empty"
    );
    assert_eq!(two.healthy_weight(false), None);
    assert_eq!(one.best_address(false), ("127.0.0.1".into(), 21001));

    let web: Vec<CheckServiceNode> = decode(fixture!("health-connect-web.json"));
    let web = &web[0];
    // Warning stays in (Envoy keeps it), with the warning weight; only-passing drops it.
    assert_eq!(web.healthy_weight(false), Some(1));
    assert_eq!(web.healthy_weight(true), None);
    // No service address: the node's.
    assert_eq!(web.best_address(false), ("127.0.0.1".into(), 21000));
    let upstream = &web.service.proxy.as_ref().expect("proxy").upstreams[0];
    assert_eq!(
        (
            upstream.destination_name.as_str(),
            upstream.datacenter.as_str(),
            upstream.local_bind_port
        ),
        ("api", "dc2", 10000)
    );
    assert_eq!(upstream.mesh_gateway.mode, "remote");
}

#[test]
fn weights_follow_consul() {
    let web: Vec<CheckServiceNode> = decode(fixture!("health-connect-web.json"));
    let mut csn = web.into_iter().next().expect("one");
    csn.checks.retain(|c| c.status == status::PASSING);
    assert_eq!(csn.healthy_weight(false), Some(3), "Weights.Passing");
    csn.service.weights = Some(Weights {
        passing: 500,
        warning: 1,
    });
    assert_eq!(csn.healthy_weight(false), Some(128), "capped");
    csn.service.weights = Some(Weights {
        passing: 0,
        warning: 1,
    });
    assert_eq!(csn.healthy_weight(false), None, "weight 0 is unhealthy");
    csn.service.weights = None;
    assert_eq!(csn.healthy_weight(false), Some(1));
    csn.checks.push(HealthCheck {
        check_id: "_service_maintenance:web-sidecar-proxy".into(),
        status: status::CRITICAL.into(),
        ..HealthCheck::default()
    });
    assert_eq!(
        csn.healthy_weight(false),
        None,
        "maintenance is a critical check"
    );
}

#[test]
fn remote_gateway_addresses_prefer_wan() {
    let gws: Vec<CheckServiceNode> = decode(fixture!("health-service-mesh-gateway-dc2.json"));
    let gw = &gws[0];
    assert_eq!(gw.service.kind, "mesh-gateway");
    assert_eq!(gw.service.meta[WAN_FEDERATION_META], "1");
    // wan tagged address with its own port; wan_ipv4 (the LAN port) is ignored.
    assert_eq!(gw.best_address(true), ("127.0.0.1".into(), 29443));
    assert_eq!(gw.best_address(false), ("127.0.0.1".into(), 28443));

    let fed: FederationStateGateways = decode(fixture!("federation-states-mesh-gateways.json"));
    assert_eq!(fed.keys().collect::<Vec<_>>(), ["dc1", "dc2"]);
    let noaddr = &fed["dc2"][0];
    assert_eq!(noaddr.service.id, "gw-noaddr");
    // No service address and no wan tag: the node's wan address with the service port.
    assert_eq!(noaddr.best_address(true), ("127.0.0.1".into(), 443));
    assert_eq!(noaddr.healthy_weight(false), None);
    assert_eq!(
        fed["dc2"][1].best_address(true),
        ("127.0.0.1".into(), 29443)
    );

    let mut node_wan = noaddr.clone();
    node_wan
        .node
        .tagged_addresses
        .insert("wan".into(), "203.0.113.9".into());
    node_wan.node.address = "10.0.0.9".into();
    assert_eq!(node_wan.best_address(true), ("203.0.113.9".into(), 443));
    assert_eq!(node_wan.best_address(false), ("10.0.0.9".into(), 443));
}

#[test]
fn gateway_names_by_kind() {
    let ui: Vec<UiService> = decode(fixture!("ui-services-mesh-gateways-dc2.json"));
    assert_eq!(
        ui.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["gw-noaddr", "mesh-gateway"]
    );
    assert_eq!(ui[0].checks_critical, 1);
}

#[test]
fn config_entries() {
    let resolvers: Vec<ServiceResolver> = decode(fixture!("config-service-resolver.json"));
    let api = &resolvers[0];
    assert_eq!(
        (api.name.as_str(), api.default_subset.as_str()),
        ("api", "v1")
    );
    assert_eq!(api.connect_timeout(), Ok(Some(Duration::from_secs(3))));
    assert_eq!(
        api.subsets["v1"],
        ResolverSubset {
            filter: "Service.Meta.version == 1".into(),
            only_passing: false
        }
    );
    assert!(api.subsets["v2"].only_passing);

    let entry: ConfigEntry = decode(fixture!("config-proxy-defaults-global.json"));
    let ConfigEntry::ProxyDefaults(pd) = entry else {
        panic!("proxy-defaults: {entry:?}")
    };
    assert_eq!(
        (pd.name.as_str(), pd.mesh_gateway.mode.as_str()),
        ("global", "local")
    );
    assert_eq!(pd.config["protocol"], "tcp");

    let defaults: Vec<ServiceDefaults> = decode(fixture!("config-service-defaults.json"));
    assert_eq!(
        (
            defaults[0].name.as_str(),
            defaults[0].mesh_gateway.mode.as_str()
        ),
        ("api", "remote")
    );
    let listed: Vec<ConfigEntry> = decode(fixture!("config-service-resolver.json"));
    assert!(matches!(&listed[0], ConfigEntry::ServiceResolver(r) if r.name == "api"));
    let other: ConfigEntry = decode(r#"{"Kind": "service-router", "Name": "api", "Routes": []}"#);
    assert_eq!(other, ConfigEntry::Other);
}

#[test]
fn go_durations() {
    for (text, want) in [
        ("3s", Duration::from_secs(3)),
        ("250ms", Duration::from_millis(250)),
        ("1m30s", Duration::from_secs(90)),
        ("1.5h", Duration::from_secs(5400)),
        ("0", Duration::ZERO),
        ("10us", Duration::from_micros(10)),
    ] {
        assert_eq!(parse_go_duration(text), Ok(want), "{text}");
    }
    for bad in ["", "3", "s", "3x", "-1s", "1..2s"] {
        assert!(parse_go_duration(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn ca_roots_and_leaf() {
    let roots: CaRoots = decode(fixture!("agent-connect-ca-roots.json"));
    assert_eq!(
        roots.trust_domain,
        "b550e914-fd49-990c-a806-901069b0e799.consul"
    );
    assert_eq!(
        roots.sni_suffix(),
        "internal.b550e914-fd49-990c-a806-901069b0e799.consul"
    );
    assert_eq!(
        roots.trust_bundle().len(),
        2,
        "every root is trusted, not only the active one"
    );
    assert!(roots.roots[0].active && roots.roots[0].intermediate_certs.is_empty());
    assert_eq!(roots.roots[1].intermediate_certs.len(), 1);

    let leaf: LeafCert = decode(fixture!("agent-connect-ca-leaf-billing-dc2.json"));
    assert_eq!(leaf.service, "billing");
    assert_eq!(leaf.datacenter(), Some("dc2"));
    let chain = leaf.chain();
    assert_eq!(
        chain.len(),
        2,
        "the repeated intermediate is dropped: {chain:?}"
    );
    assert!(chain[0].contains("TEVBRg==") && chain[1].contains("SU5URVJNRURJQVRF"));
    assert!(leaf.private_key_pem.contains("EC PRIVATE KEY"));
}

#[test]
fn authorize_request_and_answers() {
    let req = AuthorizeRequest::new(
        "api",
        "spiffe://b550e914-fd49-990c-a806-901069b0e799.consul/ns/default/dc/dc1/svc/web",
        &[0x04, 0x00],
    );
    assert_eq!(
        serde_json::to_string(&req).expect("json"),
        r#"{"Target":"api","ClientCertURI":"spiffe://b550e914-fd49-990c-a806-901069b0e799.consul/ns/default/dc/dc1/svc/web","ClientCertSerial":"04:00"}"#
    );
    let allow: AuthorizeResponse = decode(fixture!("agent-connect-authorize-allow.json"));
    let deny: AuthorizeResponse = decode(fixture!("agent-connect-authorize-deny.json"));
    assert!(allow.authorized && allow.reason.contains("ALLOW default/web => default/api"));
    assert!(!deny.authorized && deny.reason.contains("DENY"));
}

#[test]
fn registration_matches_consul_connect_envoy_exactly() {
    // -address 127.0.0.1:28443 -wan-address 127.0.0.1:29443 -expose-servers
    let full = MeshGatewayRegistration::new("mesh-gateway")
        .address("127.0.0.1", 28443)
        .wan_address("127.0.0.1", 29443)
        .expose_servers(true);
    assert_eq!(
        serde_json::to_string(&full.body()).expect("json"),
        concat!(
            r#"{"Kind":"mesh-gateway","ID":"mesh-gateway","Name":"mesh-gateway","Port":28443,"Address":"127.0.0.1","#,
            r#""TaggedAddresses":{"lan":{"Address":"127.0.0.1","Port":28443},"wan":{"Address":"127.0.0.1","Port":29443}},"#,
            r#""Meta":{"consul-wan-federation":"1"},"#,
            r#""Check":{"Name":"mesh-gateway listening","Interval":"10s","TCP":"127.0.0.1:28443","DeregisterCriticalServiceAfter":"6h"},"#,
            r#""Checks":null,"#,
            r#""Proxy":{"Config":{"envoy_gateway_bind_tagged_addresses":true,"envoy_gateway_no_default_bind":true},"MeshGateway":{},"Expose":{}}}"#
        )
    );
    // No flags but -service gw-noaddr.
    let bare = MeshGatewayRegistration::new("gw-noaddr");
    assert_eq!(bare.id(), "gw-noaddr");
    assert_eq!(
        serde_json::to_string(&bare.body()).expect("json"),
        concat!(
            r#"{"Kind":"mesh-gateway","ID":"gw-noaddr","Name":"gw-noaddr","Port":443,"#,
            r#""Check":{"Name":"mesh-gateway listening","Interval":"10s","TCP":"127.0.0.1:443","DeregisterCriticalServiceAfter":"6h"},"Checks":null}"#
        )
    );
}

#[test]
fn registration_options() {
    let reg = MeshGatewayRegistration::new("gw")
        .address("::1", 8443)
        .bind_address("lan", "0.0.0.0", 8443)
        .deregister_critical_after("30m")
        .meta("meshgate-version", "0.1.0")
        .expect("meta");
    let v: serde_json::Value = serde_json::to_value(reg.body()).expect("json");
    assert_eq!(v["Check"]["TCP"], "[::1]:8443");
    assert_eq!(v["Check"]["DeregisterCriticalServiceAfter"], "30m");
    assert_eq!(v["Meta"]["meshgate-version"], "0.1.0");
    assert_eq!(v["TaggedAddresses"]["lan"]["Port"], 8443);
    assert!(v["TaggedAddresses"].get("wan").is_none());
    assert_eq!(v["Proxy"]["Config"]["envoy_gateway_no_default_bind"], true);
    assert_eq!(
        v["Proxy"]["Config"]["envoy_gateway_bind_addresses"]["lan"]["Address"],
        "0.0.0.0"
    );
    assert!(v["Proxy"]["Config"]
        .get("envoy_gateway_bind_tagged_addresses")
        .is_none());
    // Only -address: nothing to bind by tag unless asked.
    let lan_only = MeshGatewayRegistration::new("gw").address("10.0.0.1", 443);
    let v: serde_json::Value = serde_json::to_value(lan_only.body()).expect("json");
    assert!(v.get("Proxy").is_none(), "{v}");
    assert!(MeshGatewayRegistration::new("gw")
        .meta("consul-version", "1")
        .is_err());
    assert!(MeshGatewayRegistration::new("gw")
        .meta(WAN_FEDERATION_META, "1")
        .is_ok());
}

#[test]
fn unknown_fields_and_nulls_are_tolerated() {
    let csn: CheckServiceNode = decode(
        r#"{"Node": null, "Service": {"ID": "x", "Service": "x", "Port": 1, "Future": {"a": 1}, "TaggedAddresses": null}, "Checks": null}"#,
    );
    assert_eq!(csn.service.id, "x");
    assert!(csn.checks.is_empty());
    assert_eq!(csn.healthy_weight(false), Some(1), "no checks: healthy");
}

#[test]
fn acl_preflight_names_what_is_missing() {
    let checks = AclCheck::gateway_preflight("mesh-gateway", "api", "node-acl");
    assert_eq!(
        serde_json::to_string(&checks[0]).expect("json"),
        r#"{"Resource":"service","Segment":"mesh-gateway","Access":"write"}"#
    );
    // A service:read-only token, as recorded: write refused, read allowed, node read refused.
    let answer: Vec<AclCheck> = decode(
        r#"[{"Resource":"service","Segment":"mesh-gateway","Access":"write","Allow":false},
            {"Resource":"service","Segment":"api","Access":"read","Allow":true},
            {"Resource":"node","Segment":"node-acl","Access":"read","Allow":false}]"#,
    );
    assert_eq!(
        AclCheck::missing(&answer),
        ["service:write on mesh-gateway", "node:read on node-acl"]
    );
}

#[test]
fn acl_answer_without_segment_is_the_prefix_rule() {
    // Recorded from Consul 1.8.7 (anonymous, default deny): an empty Segment is left out of the answer.
    let answer: Vec<AclCheck> = decode(
        r#"[{"Resource": "service", "Segment": "mesh-gateway", "Access": "write", "Allow": false},
            {"Resource": "service", "Access": "read", "Allow": false},
            {"Resource": "node", "Access": "read", "Allow": false}]"#,
    );
    assert_eq!(answer[1], AclCheck::new("service", "", "read"));
    assert_eq!(
        AclCheck::missing(&answer),
        [
            "service:write on mesh-gateway",
            "service:read on ",
            "node:read on "
        ]
    );
}

#[test]
fn resolver_failover_and_redirect_are_typed() {
    let resolvers: Vec<ServiceResolver> = decode(
        r#"[
  {"Kind": "service-resolver", "Name": "api",
   "Failover": {"*": {"Datacenters": ["dc2", "dc3"]},
                "v1": {"Service": "api-backup", "ServiceSubset": "blue", "Namespace": "ops"}},
   "CreateIndex": 7, "ModifyIndex": 7},
  {"Kind": "service-resolver", "Name": "old", "Redirect": {"Service": "new", "Datacenter": "dc3"},
   "Failover": null, "CreateIndex": 8, "ModifyIndex": 8}
]"#,
    );
    assert_eq!(
        resolvers[0].failover["*"],
        ResolverFailover {
            datacenters: vec!["dc2".into(), "dc3".into()],
            ..Default::default()
        }
    );
    assert_eq!(
        resolvers[0].failover["v1"],
        ResolverFailover {
            service: "api-backup".into(),
            service_subset: "blue".into(),
            namespace: "ops".into(),
            datacenters: vec![],
        }
    );
    assert_eq!(resolvers[0].redirect, None);
    assert_eq!(
        resolvers[1].redirect,
        Some(ResolverRedirect {
            service: "new".into(),
            datacenter: "dc3".into(),
            ..Default::default()
        })
    );
    assert!(resolvers[1].failover.is_empty());
}

/// The whole-catalog view gives each connect destination exactly what `health/connect/<svc>` answers
/// from the same agent state: the sidecar under the service it fronts, the Connect-native instance under
/// its own name, each with its node's checks and its own (compared as sets: the order differs).
#[test]
fn node_view_connect_endpoints_are_the_health_connect_answers() {
    let nodes: Vec<NodeInfo> = decode(fixture!("internal-ui-nodes.json"));
    let mut by_destination: BTreeMap<String, Vec<CheckServiceNode>> = BTreeMap::new();
    for node in &nodes {
        for (destination, endpoint) in node.connect_endpoints("dc1") {
            by_destination
                .entry(destination.to_owned())
                .or_default()
                .push(endpoint);
        }
    }
    let sorted = |mut v: Vec<CheckServiceNode>| {
        for e in &mut v {
            e.checks.sort_by(|a, b| a.check_id.cmp(&b.check_id));
        }
        v
    };
    let web: Vec<CheckServiceNode> = decode(fixture!("internal-ui-nodes.health-connect-web.json"));
    let payments: Vec<CheckServiceNode> =
        decode(fixture!("internal-ui-nodes.health-connect-payments.json"));
    assert_eq!(
        by_destination.keys().collect::<Vec<_>>(),
        ["payments", "web"],
        "typical services (web, consul) are no one's endpoint"
    );
    assert_eq!(sorted(by_destination["web"].clone()), sorted(web));
    assert_eq!(sorted(by_destination["payments"].clone()), sorted(payments));
    let sidecar = &by_destination["web"][0];
    assert_eq!(sidecar.service.kind, "connect-proxy");
    assert_eq!(
        sidecar
            .checks
            .iter()
            .map(|c| c.check_id.as_str())
            .collect::<BTreeSet<_>>(),
        BTreeSet::from(["serfHealth", "web-1-sidecar-ttl"]),
        "the node's check and its own, not web-1's"
    );
    assert!(by_destination["payments"][0].service.connect.native);
}
