//! The table built from the recorded lab answers (tests/fixtures), checked name by name against what
//! Consul's own mesh gateway routes.

use super::*;
use crate::model::{status, CaRoots, HealthCheck, ServiceResolver};

const TD: &str = "b550e914-fd49-990c-a806-901069b0e799.consul";

macro_rules! fixture {
    ($name:literal) => {
        serde_json::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/",
            $name
        )))
        .expect("fixture decodes")
    };
}

struct Lab {
    services: BTreeMap<String, Vec<CheckServiceNode>>,
    resolvers: Vec<ServiceResolver>,
    gateways: BTreeMap<String, Vec<CheckServiceNode>>,
    fed: FederationStateGateways,
    servers: Vec<CheckServiceNode>,
}

impl Lab {
    fn new() -> Lab {
        let names: crate::model::ServiceNames = fixture!("catalog-services.json");
        // Every name is watched; only api and web have connect endpoints.
        let mut services: BTreeMap<String, Vec<CheckServiceNode>> =
            names.keys().map(|n| (n.clone(), Vec::new())).collect();
        services.insert("api".into(), fixture!("health-connect-api.json"));
        services.insert("web".into(), fixture!("health-connect-web.json"));
        let mut gateways = BTreeMap::new();
        gateways.insert(
            "dc2".to_string(),
            fixture!("health-service-mesh-gateway-dc2.json"),
        );
        Lab {
            services,
            resolvers: fixture!("config-service-resolver.json"),
            gateways,
            fed: fixture!("federation-states-mesh-gateways.json"),
            servers: fixture!("health-service-consul.json"),
        }
    }

    fn table(&self, wan_federation: bool) -> Table {
        let roots: CaRoots = fixture!("agent-connect-ca-roots.json");
        assert_eq!(roots.trust_domain, TD);
        build(&Inputs {
            local_dc: "dc1",
            trust_domain: &roots.trust_domain,
            domain: "consul",
            services: &self.services,
            resolvers: &self.resolvers,
            gateways: &self.gateways,
            federation_states: &self.fed,
            wan_federation,
            servers: &self.servers,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        })
    }
}

fn exact(name: &str) -> Sni {
    Sni::Exact(name.to_string())
}

fn addrs(table: &Table, sni: &Sni) -> Vec<String> {
    table
        .get(sni)
        .map(|r| r.endpoints.iter().map(ToString::to_string).collect())
        .unwrap_or_default()
}

#[test]
fn the_lab_table() {
    let table = build_default();
    let names: Vec<String> = table.routes.iter().map(|r| r.sni.to_string()).collect();
    assert_eq!(
        names,
        [
            format!("*.dc2.internal.{TD}"),
            format!("api.default.dc1.internal.{TD}"),
            format!("dc2.internal.{TD}"),
            format!("v1.api.default.dc1.internal.{TD}"),
            format!("web.default.dc1.internal.{TD}"),
        ],
        "{table:#?}"
    );
    assert!(table.problems.is_empty(), "{:?}", table.problems);
    // api: the resolver's default subset v1 → api-1 only (api-2 is v2 and critical anyway), 3 s timeout.
    let api = table
        .get(&exact(&format!("api.default.dc1.internal.{TD}")))
        .expect("api");
    assert_eq!(addrs(&table, &api.sni), ["127.0.0.1:21001"]);
    assert_eq!(api.connect_timeout, Duration::from_secs(3));
    assert_eq!(
        api.target,
        Target::Service {
            service: "api".into(),
            subset: None
        }
    );
    // v2 has only the critical api-2: no route, so the name is closed.
    assert!(table
        .get(&exact(&format!("v2.api.default.dc1.internal.{TD}")))
        .is_none());
    // web's sidecar warns: kept (never ?passing), at the node address, with the default timeout.
    let web = table
        .get(&exact(&format!("web.default.dc1.internal.{TD}")))
        .expect("web");
    assert_eq!(addrs(&table, &web.sni), ["127.0.0.1:21000"]);
    assert_eq!(web.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    // dc2: its gateway's WAN address (not wan_ipv4's LAN port); the local dc1 gateway is not a route.
    assert_eq!(
        addrs(&table, &exact(&format!("dc2.internal.{TD}"))),
        ["127.0.0.1:29443"]
    );
    assert_eq!(
        addrs(&table, &Sni::Wildcard(format!("dc2.internal.{TD}"))),
        ["127.0.0.1:29443"]
    );
}

fn build_default() -> Table {
    Lab::new().table(false)
}

#[test]
fn sni_resolution_follows_the_gateway_precedence() {
    let table = build_default();
    let target = |name: &str| table.resolve(name).map(|r| r.target.clone());
    assert_eq!(
        target(&format!("api.default.dc2.internal.{TD}")),
        Some(Target::Datacenter("dc2".into()))
    );
    assert_eq!(
        target(&format!("v1.api.default.dc2.internal.{TD}")),
        Some(Target::Datacenter("dc2".into()))
    );
    assert_eq!(
        target(&format!("dc2.internal.{TD}")),
        Some(Target::Datacenter("dc2".into()))
    );
    assert_eq!(
        target(&format!("v1.api.default.dc1.internal.{TD}")),
        Some(Target::Service {
            service: "api".into(),
            subset: Some("v1".into())
        })
    );
    assert_eq!(
        target(&format!("db.default.dc1.internal.{TD}")),
        None,
        "unknown: closed"
    );
    assert_eq!(target(&format!("api.default.dc3.internal.{TD}")), None);
    assert_eq!(
        target("api.default.dc2.internal.other-trust-domain.consul"),
        None
    );
    assert_eq!(
        target(&format!("xdc2.internal.{TD}")),
        None,
        "a wildcard matches whole labels"
    );
}

#[test]
fn federation_states_fill_in_and_are_health_filtered() {
    let mut lab = Lab::new();
    lab.gateways.clear();
    let table = lab.table(false);
    // gw-noaddr is critical: only mesh-gateway's WAN address remains.
    assert_eq!(
        addrs(&table, &exact(&format!("dc2.internal.{TD}"))),
        ["127.0.0.1:29443"]
    );
    // Every dc2 gateway critical: no dc2 route at all.
    for gw in lab.fed.get_mut("dc2").expect("dc2") {
        gw.checks.push(HealthCheck {
            status: status::CRITICAL.into(),
            ..HealthCheck::default()
        });
    }
    let table = lab.table(false);
    assert!(table
        .resolve(&format!("api.default.dc2.internal.{TD}"))
        .is_none());
}

#[test]
fn a_critical_instance_leaves_and_a_warning_one_stays() {
    let mut lab = Lab::new();
    let api_1 = &mut lab.services.get_mut("api").expect("api")[0];
    api_1.checks[1].status = status::WARNING.into();
    let table = lab.table(false);
    assert_eq!(
        addrs(&table, &exact(&format!("api.default.dc1.internal.{TD}"))),
        ["127.0.0.1:21001"]
    );
    let api_1 = &mut lab.services.get_mut("api").expect("api")[0];
    api_1.checks[1].status = status::CRITICAL.into();
    let table = lab.table(false);
    assert!(table
        .get(&exact(&format!("api.default.dc1.internal.{TD}")))
        .is_none());
    // Without a resolver, api-2 healthy again: the unnamed name has every healthy instance.
    lab.resolvers.clear();
    for c in &mut lab.services.get_mut("api").expect("api")[1].checks {
        c.status = status::PASSING.into();
    }
    let table = lab.table(false);
    assert_eq!(
        addrs(&table, &exact(&format!("api.default.dc1.internal.{TD}"))),
        ["127.0.0.1:21002"]
    );
}

#[test]
fn only_passing_subsets_drop_warning_instances() {
    let mut lab = Lab::new();
    for c in &mut lab.services.get_mut("api").expect("api")[1].checks {
        c.status = status::WARNING.into();
    }
    let table = lab.table(false);
    assert!(
        table
            .get(&exact(&format!("v2.api.default.dc1.internal.{TD}")))
            .is_none(),
        "v2 is OnlyPassing"
    );
    lab.resolvers[0]
        .subsets
        .get_mut("v2")
        .expect("v2")
        .only_passing = false;
    let table = lab.table(false);
    assert_eq!(
        addrs(&table, &exact(&format!("v2.api.default.dc1.internal.{TD}"))),
        ["127.0.0.1:21002"]
    );
}

#[test]
fn bad_subset_filters_are_reported_not_guessed() {
    let mut lab = Lab::new();
    lab.resolvers[0].subsets.get_mut("v1").expect("v1").filter =
        "Service.Meta.version matches \"1\"".into();
    let table = lab.table(false);
    assert!(table
        .get(&exact(&format!("v1.api.default.dc1.internal.{TD}")))
        .is_none());
    assert!(
        table
            .get(&exact(&format!("api.default.dc1.internal.{TD}")))
            .is_none(),
        "v1 is the default subset"
    );
    assert_eq!(table.problems.len(), 2, "{:?}", table.problems);
}

#[test]
fn wan_federation_adds_the_server_names() {
    let table = Lab::new().table(true);
    assert_eq!(
        addrs(&table, &exact("server.dc2.consul")),
        ["127.0.0.1:29443"]
    );
    assert_eq!(
        addrs(&table, &Sni::Wildcard("server.dc2.consul".into())),
        ["127.0.0.1:29443"]
    );
    assert_eq!(
        addrs(&table, &exact("node-dc1.server.dc1.consul")),
        ["127.0.0.1:18300"]
    );
    assert_eq!(
        addrs(&table, &exact("server.dc1.consul")),
        ["127.0.0.1:18300"]
    );
    assert_eq!(
        table
            .resolve("node-dc2.server.dc2.consul")
            .map(|r| r.target.clone()),
        Some(Target::Servers("dc2".into()))
    );
}

#[test]
fn gateway_connect_timeout_from_proxy_config() {
    let mut svc = crate::model::Service::default();
    assert_eq!(gateway_connect_timeout(&svc), DEFAULT_CONNECT_TIMEOUT);
    let mut proxy = crate::model::Proxy::default();
    proxy
        .config
        .insert("connect_timeout_ms".into(), 1500.into());
    svc.proxy = Some(proxy);
    assert_eq!(gateway_connect_timeout(&svc), Duration::from_millis(1500));
}

proptest::proptest! {
    /// Whatever the checks say, a route holds exactly the instances with no critical check, and no
    /// route is ever empty.
    #[test]
    fn endpoints_are_exactly_the_non_critical_instances(
        statuses in proptest::collection::vec(proptest::collection::vec(0u8..3, 0..4), 0..8)
    ) {
        let mut lab = Lab::new();
        lab.resolvers.clear();
        let template = lab.services["api"][0].clone();
        let instances: Vec<CheckServiceNode> = statuses
            .iter()
            .enumerate()
            .map(|(i, checks)| {
                let mut c = template.clone();
                c.service.port = 30000 + i as u16;
                c.checks = checks
                    .iter()
                    .map(|s| HealthCheck {
                        status: [status::PASSING, status::WARNING, status::CRITICAL][*s as usize].into(),
                        ..HealthCheck::default()
                    })
                    .collect();
                c
            })
            .collect();
        let expected: Vec<String> = statuses
            .iter()
            .enumerate()
            .filter(|(_, checks)| !checks.contains(&2))
            .map(|(i, _)| format!("127.0.0.1:{}", 30000 + i))
            .collect();
        lab.services.insert("api".into(), instances);
        let table = lab.table(false);
        proptest::prop_assert_eq!(addrs(&table, &exact(&format!("api.default.dc1.internal.{TD}"))), expected);
        proptest::prop_assert!(table.routes.iter().all(|r| !r.endpoints.is_empty()));
    }
}
