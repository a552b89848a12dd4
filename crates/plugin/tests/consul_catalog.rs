//! The shipped `consul-catalog` plugin, driven through `PluginHost::watch_catalog(..).plan(..)` the way
//! the host runs it (no Consul needed): first with no answers, then with the answer of every watch the
//! last plan named, from recorded agent answers (crates/consul/tests/fixtures), until the plan is stable.
//! Its catalog then goes through the shipped `consul-router`, and the routes are compared with what the
//! native `meshgate_consul::state::GatewayState::table` computes from the same answers.

use meshgate_consul::model::ServiceNames;
use meshgate_consul::routes::{Sni, Table, Target};
use meshgate_consul::state::{GatewayState, Update};
use meshgate_plugin::types::{
    Catalog, EntryKind, GatewayMode, Health, IntentionAction, Route, ServiceKind, Watch,
    WatchAnswer, WatchMode, WatchPlan,
};
use meshgate_plugin::{PluginHost, RouterPlugin, Sandbox, WatchCatalogPlugin};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

const TD: &str = "b550e914-fd49-990c-a806-901069b0e799.consul";
const ROOTS: &str = "/v1/agent/connect/ca/roots";
const SERVICES: &str = "/v1/catalog/services";
const FED: &str = "/v1/internal/federation-states/mesh-gateways";
const RESOLVERS: &str = "/v1/config/service-resolver";
const SERVERS: &str = "/v1/health/service/consul";
const INTENTIONS: &str = "/v1/connect/intentions";
const PROXY_DEFAULTS: &str = "/v1/config/proxy-defaults/global";
const NODES: &str = "/v1/internal/ui/nodes";

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/../consul/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn health(service: &str) -> String {
    format!("/v1/health/connect/{service}?cached")
}

fn settings(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A recorded agent: path (with query) → status and body.
#[derive(Clone, Default)]
struct Agent(BTreeMap<String, (u16, Vec<u8>)>);

impl Agent {
    fn set(&mut self, path: &str, body: Value) {
        let body = serde_json::to_vec(&body).expect("encode");
        self.0.insert(path.to_owned(), (200, body));
    }

    fn not_found(&mut self, path: &str) {
        let body = b"Config entry not found".to_vec();
        self.0.insert(path.to_owned(), (404, body));
    }

    fn json(&self, path: &str) -> Value {
        let (_, body) = self
            .0
            .get(path)
            .unwrap_or_else(|| panic!("no answer for {path}"));
        serde_json::from_slice(body).expect("json")
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        serde_json::from_value(self.json(path)).expect("decodes")
    }

    /// What the host hands the plugin for a watch: its latest answer.
    fn answer(&self, w: &Watch) -> WatchAnswer {
        assert!(
            matches!(w.mode, WatchMode::Index),
            "{}: a blocking query",
            w.key
        );
        let path = w.path.split('?').next().unwrap_or(&w.path);
        assert!(
            meshgate_consul::reads::check(path).is_ok(),
            "{}: not an allowed watch path",
            w.path
        );
        let (status, body) = self
            .0
            .get(&w.path)
            .unwrap_or_else(|| panic!("the plugin asked for {} (no recorded answer)", w.path))
            .clone();
        WatchAnswer {
            key: w.key.clone(),
            status,
            index: 42,
            body,
        }
    }

    /// The dc1 lab as a gateway sees it (consul-live-api.md §3).
    fn gateway() -> Agent {
        let mut a = Agent::default();
        a.set(ROOTS, fixture("agent-connect-ca-roots.json"));
        a.set(SERVICES, fixture("catalog-services.json"));
        a.set(&health("api"), fixture("health-connect-api.json"));
        a.set(&health("web"), fixture("health-connect-web.json"));
        // Sidecar and gateway names come back empty from health/connect (§3.1).
        for empty in ["api-sidecar-proxy", "web-sidecar-proxy", "mesh-gateway"] {
            a.set(&health(empty), json!([]));
        }
        a.set(FED, fixture("federation-states-mesh-gateways.json"));
        a.set(RESOLVERS, fixture("config-service-resolver.json"));
        a.set(SERVERS, fixture("health-service-consul.json"));
        a
    }

    /// Edits the entry of `service_id` in the answer at `path`.
    fn edit(&mut self, path: &str, service_id: &str, f: impl Fn(&mut Value)) {
        let mut v = self.json(path);
        let entry = v
            .as_array_mut()
            .expect("a list")
            .iter_mut()
            .find(|e| e["Service"]["ID"] == service_id)
            .unwrap_or_else(|| panic!("{service_id} in {path}"));
        f(entry);
        self.set(path, v);
    }
}

/// The plan once stable, the answers it was made from, and the number of calls it took.
struct Driven {
    plan: WatchPlan,
    answers: Vec<WatchAnswer>,
    rounds: usize,
}

/// Calls `plan` as the host does until the named watches stop changing; on every call where a named
/// watch has no answer yet, there must be no catalog.
fn drive(p: &mut WatchCatalogPlugin, settings: &[(String, String)], agent: &Agent) -> Driven {
    let mut answers: Vec<WatchAnswer> = Vec::new();
    let mut last: Option<Vec<String>> = None;
    for round in 1..=8 {
        let plan = p.plan(settings, &answers).expect("plan");
        let keys: Vec<String> = plan.watches.iter().map(|w| w.key.clone()).collect();
        let unique: BTreeSet<&String> = keys.iter().collect();
        assert_eq!(unique.len(), keys.len(), "watch keys are unique: {keys:?}");
        let unanswered: Vec<&String> = keys
            .iter()
            .filter(|k| !answers.iter().any(|a| &a.key == *k))
            .collect();
        assert!(
            unanswered.is_empty() || plan.catalog.is_none(),
            "round {round}: a catalog while {unanswered:?} are unanswered"
        );
        if last.as_ref() == Some(&keys) {
            return Driven {
                plan,
                answers,
                rounds: round,
            };
        }
        answers = plan.watches.iter().map(|w| agent.answer(w)).collect();
        last = Some(keys);
    }
    panic!("the plan did not settle in 8 rounds");
}

fn host() -> PluginHost {
    PluginHost::new().expect("host")
}

fn consul_catalog(h: &PluginHost) -> WatchCatalogPlugin {
    h.watch_catalog("consul-catalog", Sandbox::default())
        .expect("load consul-catalog")
}

fn router(h: &PluginHost) -> RouterPlugin {
    h.router("consul-router", Sandbox::default())
        .expect("load consul-router")
}

fn catalog_of(d: &Driven) -> &Catalog {
    d.plan.catalog.as_ref().expect("a catalog once stable")
}

/// The native table from the same answers: `GatewayState`, as the native gateway would run it.
fn native(agent: &Agent, wan_federation: bool) -> Table {
    let mut s = GatewayState::new("dc1", "consul");
    if wan_federation {
        let mut own = meshgate_consul::model::Service::default();
        own.meta.insert("consul-wan-federation".into(), "1".into());
        s.apply(Update::Own(own));
        s.apply(Update::Servers(agent.decode(SERVERS)));
    }
    s.apply(Update::Roots(agent.decode(ROOTS)));
    let names: ServiceNames = agent.decode(SERVICES);
    s.apply(Update::ServiceNames(names.clone()));
    for name in names.keys().filter(|n| *n != "consul") {
        s.apply(Update::ServiceHealth {
            service: name.clone(),
            nodes: agent.decode(&health(name)),
        });
    }
    s.apply(Update::FederationStates(agent.decode(FED)));
    s.apply(Update::Resolvers(agent.decode(RESOLVERS)));
    s.table().expect("ready")
}

fn native_resolve(t: &Table, name: &str) -> BTreeSet<String> {
    t.resolve(name)
        .map(|r| r.endpoints.iter().map(ToString::to_string).collect())
        .unwrap_or_default()
}

/// meshgate's matching: the exact name, else the longest `*.suffix` (never the bare suffix).
fn plugin_resolve(routes: &[Route], name: &str) -> BTreeSet<String> {
    if let Some(r) = routes.iter().find(|r| r.pattern == name) {
        return r.endpoints.iter().cloned().collect();
    }
    routes
        .iter()
        .filter_map(|r| {
            let suffix = r.pattern.strip_prefix("*.")?;
            name.strip_suffix(suffix)
                .filter(|head| head.len() > 1 && head.ends_with('.'))
                .map(|_| (suffix.len(), r))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, r)| r.endpoints.iter().cloned().collect())
        .unwrap_or_default()
}

/// A name each route matches.
fn probe(pattern: &str) -> String {
    match pattern.strip_prefix("*.") {
        Some(suffix) => format!("probe.{suffix}"),
        None => pattern.to_owned(),
    }
}

/// SNI → endpoints agree on every name either table routes (plus `extra`). Known differences, left
/// out: the bare `<dc>.internal.<td>` (Consul routes it through its catch-all, meshgate_mesh's table has
/// only `*.<dc>.internal.<td>`), and the WAN-federation server names (compared by their own test).
fn assert_same(native: &Table, routes: &[Route], extra: &[&str]) {
    let mut names: BTreeSet<String> = extra.iter().map(|s| s.to_string()).collect();
    for r in &native.routes {
        match (&r.sni, &r.target) {
            (Sni::Exact(_), Target::Datacenter(_)) | (_, Target::Servers(_)) => {}
            (sni, _) => {
                names.insert(probe(&sni.to_string()));
            }
        }
    }
    for r in routes {
        if !r.pattern.contains(".server.") {
            names.insert(probe(&r.pattern));
        }
    }
    for name in &names {
        assert_eq!(
            plugin_resolve(routes, name),
            native_resolve(native, name),
            "{name}: plugin routes (left) vs GatewayState::table (right)"
        );
    }
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn instance_health(c: &Catalog, id: &str) -> Health {
    c.instances
        .iter()
        .find(|i| i.id == id)
        .unwrap_or_else(|| panic!("instance {id}"))
        .health
}

#[test]
fn gateway_catalog_routes_as_consul_computes_them() {
    let h = host();
    let mut p = consul_catalog(&h);
    let agent = Agent::gateway();
    let d = drive(&mut p, &[], &agent);
    // No answers → the fixed watches; their answers → one health watch per name but `consul` and the
    // gateways the federation states list; those → the catalog, and no watch for the names the answers
    // show to be sidecars (one more round to see the plan unchanged).
    assert_eq!(d.rounds, 4);
    let keys: BTreeSet<&str> = d.plan.watches.iter().map(|w| w.key.as_str()).collect();
    let want: BTreeSet<String> = [ROOTS, SERVICES, FED, RESOLVERS]
        .iter()
        .map(|s| s.to_string())
        .chain(["api", "web"].iter().map(|s| health(s)))
        .collect();
    assert_eq!(
        keys,
        want.iter().map(String::as_str).collect(),
        "one watch per connect destination"
    );
    let catalog = catalog_of(&d);
    assert_eq!(catalog.trust_domain, TD);

    let routes = router(&h)
        .gateway_routes(&[], catalog, "dc1")
        .expect("routes");
    let table = native(&agent, false);
    assert_same(&table, &routes, &[]);
    // And concretely (§3.2, §3.4, §4.3).
    let r = |name: &str| plugin_resolve(&routes, name);
    assert_eq!(
        r(&format!("api.default.dc1.internal.{TD}")),
        set(&["127.0.0.1:21001"])
    );
    assert_eq!(
        r(&format!("v1.api.default.dc1.internal.{TD}")),
        set(&["127.0.0.1:21001"])
    );
    assert!(
        r(&format!("v2.api.default.dc1.internal.{TD}")).is_empty(),
        "api-2 is critical"
    );
    assert_eq!(
        r(&format!("api.default.dc2.internal.{TD}")),
        set(&["127.0.0.1:29443"]),
        "dc2 through its gateway's wan address; gw-noaddr is critical"
    );
}

#[test]
fn warning_is_kept_critical_and_maintenance_are_dropped() {
    let h = host();
    let mut p = consul_catalog(&h);
    let mut router = router(&h);
    let web = format!("web.default.dc1.internal.{TD}");

    // The recorded web sidecar has a warning check: still routed (§4.4).
    let mut agent = Agent::gateway();
    let d = drive(&mut p, &[], &agent);
    let catalog = catalog_of(&d);
    assert_eq!(
        instance_health(catalog, "web-sidecar-proxy"),
        Health::Warning
    );
    assert_eq!(
        instance_health(catalog, "api-1-sidecar-proxy"),
        Health::Passing
    );
    assert_eq!(
        instance_health(catalog, "api-2-sidecar-proxy"),
        Health::Critical
    );
    assert_eq!(instance_health(catalog, "gw-noaddr"), Health::Critical);
    let routes = router.gateway_routes(&[], catalog, "dc1").expect("routes");
    assert_eq!(plugin_resolve(&routes, &web), set(&["127.0.0.1:21000"]));
    assert_same(&native(&agent, false), &routes, &[]);

    // Maintenance mode adds a critical `_service_maintenance:<id>` check (§3.11).
    agent.edit(&health("web"), "web-sidecar-proxy", |e| {
        e["Checks"].as_array_mut().expect("checks").push(json!({
            "CheckID": "_service_maintenance:web-sidecar-proxy", "Name": "Service Maintenance Mode",
            "Status": "critical", "Notes": "draining"}));
    });
    let d = drive(&mut p, &[], &agent);
    let catalog = catalog_of(&d);
    assert_eq!(
        instance_health(catalog, "web-sidecar-proxy"),
        Health::Maintenance
    );
    let routes = router.gateway_routes(&[], catalog, "dc1").expect("routes");
    assert!(plugin_resolve(&routes, &web).is_empty());
    assert_same(&native(&agent, false), &routes, &[&web]);

    // Node maintenance counts too; and a plain critical check.
    let mut agent = Agent::gateway();
    agent.edit(&health("web"), "web-sidecar-proxy", |e| {
        e["Checks"][1]["Status"] = json!("critical");
    });
    let d = drive(&mut p, &[], &agent);
    assert_eq!(
        instance_health(catalog_of(&d), "web-sidecar-proxy"),
        Health::Critical
    );
    let routes = router
        .gateway_routes(&[], catalog_of(&d), "dc1")
        .expect("routes");
    assert!(plugin_resolve(&routes, &web).is_empty());
    assert_same(&native(&agent, false), &routes, &[&web]);

    let mut agent = Agent::gateway();
    agent.edit(&health("web"), "web-sidecar-proxy", |e| {
        e["Checks"][1]["Status"] = json!("passing");
        e["Checks"].as_array_mut().expect("checks").push(json!({
            "CheckID": "_node_maintenance", "Status": "critical"}));
    });
    let d = drive(&mut p, &[], &agent);
    assert_eq!(
        instance_health(catalog_of(&d), "web-sidecar-proxy"),
        Health::Maintenance
    );
}

#[test]
fn a_service_leaving_the_list_drops_its_watch_and_route() {
    let h = host();
    let mut p = consul_catalog(&h);
    let mut router = router(&h);
    let mut agent = Agent::gateway();
    let d = drive(&mut p, &[], &agent);
    let api = format!("api.default.dc1.internal.{TD}");
    let routes = router
        .gateway_routes(&[], catalog_of(&d), "dc1")
        .expect("routes");
    assert!(!plugin_resolve(&routes, &api).is_empty());

    // api is deregistered: the service list changes. The host still holds api's last answer; even
    // handed in, it must not bring api back.
    let mut names = agent.json(SERVICES);
    names.as_object_mut().expect("map").remove("api");
    names
        .as_object_mut()
        .expect("map")
        .remove("api-sidecar-proxy");
    agent.set(SERVICES, names);
    let answers: Vec<WatchAnswer> = d
        .answers
        .iter()
        .map(|a| {
            if a.key == SERVICES {
                agent.answer(&Watch {
                    key: a.key.clone(),
                    path: SERVICES.into(),
                    mode: WatchMode::Index,
                })
            } else {
                a.clone()
            }
        })
        .collect();
    let plan = p.plan(&[], &answers).expect("plan");
    let keys: Vec<&str> = plan.watches.iter().map(|w| w.key.as_str()).collect();
    assert!(!keys.contains(&health("api").as_str()), "{keys:?}");
    assert!(!keys.contains(&health("api-sidecar-proxy").as_str()));
    let catalog = plan.catalog.expect("every remaining watch is answered");
    assert!(catalog.instances.iter().all(|i| i
        .proxy
        .as_ref()
        .is_none_or(|p| p.destination_service_name != "api")));
    let routes = router.gateway_routes(&[], &catalog, "dc1").expect("routes");
    assert!(plugin_resolve(&routes, &api).is_empty());
    assert!(plugin_resolve(&routes, &format!("v1.{api}")).is_empty());
    assert_same(&native(&agent, false), &routes, &[&api]);
}

#[test]
fn an_unknown_datacenter_is_not_routed() {
    let h = host();
    let mut p = consul_catalog(&h);
    let mut agent = Agent::gateway();
    // dc3 has a gateway, but it is critical: no route for dc3, as for a dc nobody knows.
    let mut fed = agent.json(FED);
    let mut gw = fed["dc2"][1].clone();
    gw["Node"]["Datacenter"] = json!("dc3");
    gw["Checks"][1]["Status"] = json!("critical");
    fed["dc3"] = json!([gw]);
    agent.set(FED, fed);
    let d = drive(&mut p, &[], &agent);
    let routes = router(&h)
        .gateway_routes(&[], catalog_of(&d), "dc1")
        .expect("routes");
    let table = native(&agent, false);
    let unknown = [
        format!("api.default.dc9.internal.{TD}"),
        format!("web.default.dc3.internal.{TD}"),
        "api.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul".to_string(),
        "api.default.dc2.internal.example.consul".to_string(),
    ];
    for name in &unknown {
        assert!(plugin_resolve(&routes, name).is_empty(), "{name}");
        assert!(native_resolve(&table, name).is_empty(), "{name}");
    }
    let extra: Vec<&str> = unknown.iter().map(String::as_str).collect();
    assert_same(&table, &routes, &extra);
}

#[test]
fn subsets_route_by_their_filter() {
    let h = host();
    let mut p = consul_catalog(&h);
    let mut agent = Agent::gateway();
    // Both api instances healthy: v1 and v2 then differ only by the filter on Service.Meta.version.
    agent.edit(&health("api"), "api-2-sidecar-proxy", |e| {
        for c in e["Checks"].as_array_mut().expect("checks") {
            c["Status"] = json!("passing");
        }
    });
    let d = drive(&mut p, &[], &agent);
    let catalog = catalog_of(&d);
    let resolver = catalog
        .config_entries
        .iter()
        .find(|e| matches!(e.kind, EntryKind::ServiceResolver) && e.name == "api")
        .expect("resolver entry");
    assert_eq!(
        resolver.subsets,
        vec![
            ("v1".to_string(), "Service.Meta.version == 1".to_string()),
            ("v2".to_string(), "Service.Meta.version == 2".to_string()),
        ]
    );
    let routes = router(&h)
        .gateway_routes(&[], catalog, "dc1")
        .expect("routes");
    let table = native(&agent, false);
    for (subset, endpoint) in [("v1", "127.0.0.1:21001"), ("v2", "127.0.0.1:21002")] {
        let name = format!("{subset}.api.default.dc1.internal.{TD}");
        assert_eq!(plugin_resolve(&routes, &name), set(&[endpoint]), "{name}");
        assert_eq!(native_resolve(&table, &name), set(&[endpoint]), "{name}");
    }
    // The plain name goes to the resolver's DefaultSubset (v1), as Consul's gateway sends it.
    assert_eq!(resolver.default_subset.as_deref(), Some("v1"));
    let unnamed = format!("api.default.dc1.internal.{TD}");
    assert_eq!(native_resolve(&table, &unnamed), set(&["127.0.0.1:21001"]));
    assert_eq!(plugin_resolve(&routes, &unnamed), set(&["127.0.0.1:21001"]));
}

#[test]
fn wan_federation_watches_the_servers() {
    let h = host();
    let mut p = consul_catalog(&h);
    let agent = Agent::gateway();
    let s = settings(&[("wan_federation", "true")]);
    let d = drive(&mut p, &s, &agent);
    assert!(d.plan.watches.iter().any(|w| w.key == SERVERS));
    let catalog = catalog_of(&d);
    let server = catalog
        .instances
        .iter()
        .find(|i| i.name == "consul")
        .expect("the local server");
    assert!(server
        .meta
        .contains(&("node".to_string(), "node-dc1".to_string())));
    let routes = router(&h)
        .gateway_routes(&s, catalog, "dc1")
        .expect("routes");
    let table = native(&agent, true);
    let name = "node-dc1.server.dc1.consul";
    assert_eq!(plugin_resolve(&routes, name), set(&["127.0.0.1:18300"]));
    assert_eq!(native_resolve(&table, name), plugin_resolve(&routes, name));
    let remote = "probe.server.dc2.consul";
    assert_eq!(
        native_resolve(&table, remote),
        plugin_resolve(&routes, remote)
    );

    let err = p
        .plan(&settings(&[("wan_federation", "yes")]), &[])
        .expect_err("a bad setting");
    assert!(err.to_string().contains("wan_federation"), "{err}");
}

/// The web sidecar's agent: its registration upstreams api (dc2, mode remote) and billing (dc2).
fn sidecar_agent() -> Agent {
    let mut a = Agent::default();
    a.set(ROOTS, fixture("agent-connect-ca-roots.json"));
    let mut web = fixture("health-connect-web.json");
    web[0]["Service"]["Proxy"]["Upstreams"]
        .as_array_mut()
        .expect("upstreams")
        .push(
            json!({"DestinationType": "service", "DestinationName": "billing",
                     "Datacenter": "dc2", "LocalBindPort": 10001}),
        );
    a.set(&health("web"), web);
    a.set(&health("api"), fixture("health-connect-api.json"));
    a.set(FED, fixture("federation-states-mesh-gateways.json"));
    a.set(PROXY_DEFAULTS, fixture("config-proxy-defaults-global.json"));
    a.not_found("/v1/config/service-defaults/web");
    a.set(
        "/v1/config/service-defaults/api",
        fixture("config-service-defaults-api.json"),
    );
    a.not_found("/v1/config/service-defaults/billing");
    a.set(INTENTIONS, fixture("connect-intentions.json"));
    a.set(RESOLVERS, json!([]));
    // The lab had no api in dc2 (§3.2): an empty answer.
    a.set("/v1/health/connect/api?dc=dc2&cached", json!([]));
    a.set(
        "/v1/health/connect/billing?dc=dc2&cached",
        fixture("health-connect-billing-dc2.json"),
    );
    a
}

#[test]
fn sidecar_role_yields_its_proxy_upstreams_and_intentions() {
    let h = host();
    let mut p = consul_catalog(&h);
    let mut router = router(&h);
    let agent = sidecar_agent();

    let s = settings(&[("service", "web")]);
    let d = drive(&mut p, &s, &agent);
    assert_eq!(d.rounds, 3);
    let keys: BTreeSet<&str> = d.plan.watches.iter().map(|w| w.key.as_str()).collect();
    for want in [
        ROOTS,
        "/v1/health/connect/web?cached",
        "/v1/health/connect/api?dc=dc2&cached",
        "/v1/health/connect/billing?dc=dc2&cached",
        FED,
        PROXY_DEFAULTS,
        "/v1/config/service-defaults/web",
        "/v1/config/service-defaults/api",
        "/v1/config/service-defaults/billing",
        INTENTIONS,
        RESOLVERS,
    ] {
        assert!(keys.contains(want), "{want} in {keys:?}");
    }
    assert_eq!(keys.len(), 11);
    let catalog = catalog_of(&d);
    let proxy = catalog
        .instances
        .iter()
        .find(|i| i.id == "web-sidecar-proxy")
        .expect("own proxy");
    assert!(matches!(proxy.kind, ServiceKind::ConnectProxy));
    assert_eq!(proxy.datacenter, "dc1");
    let upstreams = &proxy.proxy.as_ref().expect("proxy block").upstreams;
    assert_eq!(upstreams.len(), 2);
    assert_eq!(upstreams[0].mesh_gateway, Some(GatewayMode::Remote));
    let billing = catalog
        .instances
        .iter()
        .find(|i| i.id == "billing-sidecar-proxy")
        .expect("upstream instance");
    assert_eq!(billing.datacenter, "dc2");
    let modes: Vec<(String, Option<GatewayMode>)> = catalog
        .config_entries
        .iter()
        .filter(|e| !matches!(e.kind, EntryKind::ServiceIntentions))
        .map(|e| (e.name.clone(), e.mesh_gateway))
        .collect();
    assert_eq!(
        modes,
        vec![
            ("global".to_string(), Some(GatewayMode::Local)),
            ("api".to_string(), Some(GatewayMode::Remote)),
        ],
        "404 entries are absent"
    );

    let plan = router
        .sidecar_plan(&[], catalog, "dc1", "web", None)
        .expect("sidecar plan");
    assert_eq!(plan.public, "127.0.0.1:21000");
    assert_eq!(plan.local_app.as_deref(), Some("127.0.0.1:8080"));
    let by_name: BTreeMap<&str, _> = plan
        .upstreams
        .iter()
        .map(|u| (u.destination_name.as_str(), u))
        .collect();
    // api: mode remote on the upstream → dc2's gateway, wan address.
    assert!(by_name["api"].via_gateway);
    assert_eq!(by_name["api"].next_hops, vec!["127.0.0.1:29443"]);
    assert_eq!(by_name["api"].sni, format!("api.default.dc2.internal.{TD}"));
    // billing: proxy-defaults says local → dc1's own gateway, LAN address.
    assert_eq!(by_name["billing"].mode, GatewayMode::Local);
    assert_eq!(by_name["billing"].next_hops, vec!["127.0.0.1:8443"]);

    // api's sidecar (one of two, picked by proxy_id): the intentions guarding api, in Consul's order.
    let s = settings(&[("service", "api"), ("proxy_id", "api-1-sidecar-proxy")]);
    let d = drive(&mut p, &s, &agent);
    let catalog = catalog_of(&d);
    let entry = catalog
        .config_entries
        .iter()
        .find(|e| matches!(e.kind, EntryKind::ServiceIntentions))
        .expect("intentions entry");
    assert_eq!(entry.name, "api");
    let sources: Vec<(&str, &str, bool)> = entry
        .sources
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.namespace.as_str(),
                matches!(s.action, IntentionAction::Allow),
            )
        })
        .collect();
    assert_eq!(
        sources,
        vec![("web", "default", true), ("db", "default", false)]
    );
    let plan = router
        .sidecar_plan(&[], catalog, "dc1", "api", Some("api-1-sidecar-proxy"))
        .expect("sidecar plan");
    assert_eq!(plan.intentions.len(), 2);
    assert_eq!(plan.public, "127.0.0.1:21001");
}

#[test]
fn sidecar_role_watches_each_failover_target_and_the_router_orders_them() {
    let h = host();
    let mut p = consul_catalog(&h);
    let mut router = router(&h);
    let mut agent = sidecar_agent();
    // web's upstream api is in dc2, which has no api (§3.2); the resolver fails over to dc1.
    agent.set(
        RESOLVERS,
        json!([{"Kind": "service-resolver", "Name": "api",
                "Failover": {"*": {"Datacenters": ["dc1"]}}, "CreateIndex": 9, "ModifyIndex": 9}]),
    );
    let d = drive(&mut p, &settings(&[("service", "web")]), &agent);
    let keys: BTreeSet<&str> = d.plan.watches.iter().map(|w| w.key.as_str()).collect();
    // The failover target's health, in its own datacenter (here the local one: no `dc=`).
    assert!(keys.contains(health("api").as_str()), "{keys:?}");
    let catalog = catalog_of(&d);
    let resolver = catalog
        .config_entries
        .iter()
        .find(|e| matches!(e.kind, EntryKind::ServiceResolver))
        .expect("resolver entry");
    assert_eq!(resolver.failover[0].datacenters, vec!["dc1".to_string()]);
    let plan = router
        .sidecar_plan(&[], catalog, "dc1", "web", None)
        .expect("sidecar plan");
    let api = plan
        .upstreams
        .iter()
        .find(|u| u.destination_name == "api")
        .expect("api upstream");
    let targets: Vec<(&str, Option<&str>)> = api
        .targets
        .iter()
        .map(|t| (t.datacenter.as_str(), t.skipped.as_deref()))
        .collect();
    assert_eq!(
        targets,
        vec![
            ("dc2", Some("no healthy instance of api in dc2")),
            ("dc1", None)
        ]
    );
    // The plan's own fields are the first target tried: api in dc1, straight to its sidecars.
    assert_eq!(api.datacenter, "dc1");
    assert_eq!(api.sni, format!("api.default.dc1.internal.{TD}"));
    assert!(!api.via_gateway && !api.next_hops.is_empty());
}

#[test]
fn a_malformed_answer_is_an_error_naming_its_watch() {
    let h = host();
    let mut p = consul_catalog(&h);
    let agent = Agent::gateway();
    let d = drive(&mut p, &[], &agent);
    let with = |key: &str, status: u16, body: &[u8]| -> Vec<WatchAnswer> {
        d.answers
            .iter()
            .map(|a| {
                if a.key == key {
                    WatchAnswer {
                        status,
                        body: body.to_vec(),
                        ..a.clone()
                    }
                } else {
                    a.clone()
                }
            })
            .collect()
    };
    let cases: [(&str, u16, &[u8], &str); 5] = [
        (FED, 200, b"{\"dc1\": [", "EOF"),
        (FED, 200, b"{\"dc2\": \"mesh-gateway\"}", "invalid type"),
        (ROOTS, 200, b"{\"TrustDomain\": \"\"}", "TrustDomain"),
        (
            &health("api"),
            200,
            b"[{\"Service\": {\"Port\": \"21001\"}}]",
            "invalid type",
        ),
        (RESOLVERS, 500, b"No cluster leader", "500"),
    ];
    for (key, status, body, problem) in cases {
        let err = p
            .plan(&[], &with(key, status, body))
            .expect_err("malformed answer");
        let text = err.to_string();
        assert!(
            text.contains(key) && text.contains(problem),
            "{key}: {text}"
        );
    }
    // The plugin is still usable afterwards (an error is one call's, not the instance's).
    assert!(p.plan(&[], &d.answers).expect("plan").catalog.is_some());

    // Sidecar role: a 404 is "not written" for config entries only.
    let mut agent = sidecar_agent();
    agent.not_found(INTENTIONS);
    let err = match p.plan(&settings(&[("service", "web")]), &[]) {
        Ok(plan) => {
            let answers: Vec<WatchAnswer> = plan.watches.iter().map(|w| agent.answer(w)).collect();
            p.plan(&settings(&[("service", "web")]), &answers)
                .expect_err("404 on intentions")
        }
        Err(e) => panic!("first call: {e}"),
    };
    assert!(err.to_string().contains(INTENTIONS), "{err}");
}

#[test]
fn no_catalog_while_a_named_watch_is_unanswered() {
    let h = host();
    let mut p = consul_catalog(&h);
    for (s, agent) in [
        (settings(&[]), Agent::gateway()),
        (settings(&[("service", "web")]), sidecar_agent()),
    ] {
        let d = drive(&mut p, &s, &agent);
        assert!(d.plan.catalog.is_some());
        for missing in &d.answers {
            let fewer: Vec<WatchAnswer> = d
                .answers
                .iter()
                .filter(|a| a.key != missing.key)
                .cloned()
                .collect();
            let plan = p.plan(&s, &fewer).expect("plan");
            assert!(
                plan.watches.iter().any(|w| w.key == missing.key),
                "{}: still named",
                missing.key
            );
            assert!(
                plan.catalog.is_none(),
                "a catalog without the answer of {}",
                missing.key
            );
        }
    }
}

/// The agent's whole local catalog as `/v1/internal/ui/nodes` gives it, made from its `health/connect`
/// answers: each node once with every instance on it and every check, plus each sidecar's parent
/// service (a typical instance, which has no connect endpoint of its own) and the Consul server.
fn with_node_dump(mut agent: Agent) -> Agent {
    let names: ServiceNames = agent.decode(SERVICES);
    let mut nodes: BTreeMap<String, Value> = BTreeMap::new();
    for name in names.keys().filter(|n| *n != "consul") {
        for entry in agent.json(&health(name)).as_array().expect("a list") {
            let mut node = entry["Node"].clone();
            node.as_object_mut().expect("node").remove("Datacenter");
            let id = node["Node"].as_str().expect("node name").to_owned();
            let info = nodes.entry(id).or_insert_with(|| {
                node["Services"] = json!([{"ID": "consul", "Service": "consul", "Port": 8300}]);
                node["Checks"] = json!([]);
                node
            });
            let service = entry["Service"].clone();
            let parent = json!({"ID": format!("{name}-parent-of-{}", service["ID"].as_str().unwrap_or("")),
                "Service": name, "Port": 8080, "Connect": {}});
            for s in [service, parent] {
                info["Services"].as_array_mut().expect("services").push(s);
            }
            for check in entry["Checks"].as_array().expect("checks") {
                let mut check = check.clone();
                // Some recorded answers are trimmed of `ServiceID`, which the node view needs to
                // tell an instance's checks from the node's.
                if check.get("ServiceID").is_none() {
                    let node_check = ["serfHealth", "_node_maintenance"]
                        .contains(&check["CheckID"].as_str().unwrap_or(""));
                    check["ServiceID"] = if node_check {
                        json!("")
                    } else {
                        entry["Service"]["ID"].clone()
                    };
                }
                let checks = info["Checks"].as_array_mut().expect("checks");
                if !checks.iter().any(|c| c["CheckID"] == check["CheckID"]) {
                    checks.push(check);
                }
            }
        }
    }
    agent.set(NODES, Value::Array(nodes.into_values().collect()));
    agent
}

/// Sorted (pattern, endpoints) of a route list.
fn table_of(routes: &[Route]) -> Vec<(String, Vec<String>)> {
    let mut t: Vec<(String, Vec<String>)> = routes
        .iter()
        .map(|r| {
            let mut e = r.endpoints.clone();
            e.sort();
            (r.pattern.clone(), e)
        })
        .collect();
    t.sort();
    t
}

/// `discovery = "catalog"`: one `/v1/internal/ui/nodes` query instead of a watch per service (the
/// datacenter from the Consul servers' answer, or per service when that lists none), and the same
/// routes as watching each service.
#[test]
fn the_whole_catalog_in_one_query_routes_as_per_service_watches() {
    let h = host();
    let mut p = consul_catalog(&h);
    let mut router = router(&h);
    let agent = with_node_dump(Agent::gateway());
    let per_service = drive(&mut p, &settings(&[("discovery", "per-service")]), &agent);
    let whole = drive(&mut p, &settings(&[("discovery", "catalog")]), &agent);
    let keys: BTreeSet<&str> = whole.plan.watches.iter().map(|w| w.key.as_str()).collect();
    assert_eq!(
        keys,
        set(&[ROOTS, SERVICES, FED, RESOLVERS, NODES, SERVERS])
            .iter()
            .map(String::as_str)
            .collect()
    );
    let a = router
        .gateway_routes(&[], catalog_of(&per_service), "dc1")
        .expect("routes");
    let b = router
        .gateway_routes(&[], catalog_of(&whole), "dc1")
        .expect("routes");
    assert_eq!(table_of(&a), table_of(&b));
    assert_same(&native(&agent, false), &b, &[]);
    // Health comes from the node's checks and the instance's own, not from its neighbours'.
    assert_eq!(
        instance_health(catalog_of(&whole), "api-2-sidecar-proxy"),
        Health::Critical
    );
    assert_eq!(
        instance_health(catalog_of(&whole), "api-1-sidecar-proxy"),
        Health::Passing
    );
    let dcs: BTreeSet<&str> = catalog_of(&whole)
        .instances
        .iter()
        .map(|i| i.datacenter.as_str())
        .collect();
    assert!(dcs.contains("dc1") && !dcs.contains(""), "{dcs:?}");

    // A `datacenter` setting names it without the servers' answer.
    let named = drive(
        &mut p,
        &settings(&[("discovery", "catalog"), ("datacenter", "dc1")]),
        &agent,
    );
    assert!(!named.plan.watches.iter().any(|w| w.key == SERVERS));
    let c = router
        .gateway_routes(&[], catalog_of(&named), "dc1")
        .expect("routes");
    assert_eq!(table_of(&a), table_of(&c));

    // No server listed (a token that cannot read `consul`): the datacenter is unknown, so the plugin
    // watches per service instead (and says so in the log) rather than failing.
    let mut empty = agent.clone();
    empty.set(SERVERS, json!([]));
    let fallen = drive(&mut p, &settings(&[("discovery", "catalog")]), &empty);
    assert!(!fallen.plan.watches.iter().any(|w| w.key == NODES));
    assert!(fallen.plan.watches.iter().any(|w| w.key == health("api")));
    let d = router
        .gateway_routes(&[], catalog_of(&fallen), "dc1")
        .expect("routes");
    assert_eq!(table_of(&a), table_of(&d));
}

/// `discovery = "auto"` (the default): per service while the listed names are at most
/// `max_service_watches`, the catalog query above it; once the catalog query runs, back to per
/// service only below three quarters of the limit. Bad values are refused by `configure`.
#[test]
fn auto_discovery_switches_on_the_number_of_listed_names() {
    let h = host();
    let mut p = consul_catalog(&h);
    let agent = with_node_dump(Agent::gateway());
    // Six names are listed (consul included).
    let names: ServiceNames = agent.decode(SERVICES);
    assert_eq!(names.len(), 6);
    let whole = |d: &Driven| d.plan.watches.iter().any(|w| w.key == NODES);
    for (max, expect) in [("6", false), ("5", true), ("128", false)] {
        let d = drive(&mut p, &settings(&[("max_service_watches", max)]), &agent);
        assert_eq!(whole(&d), expect, "max_service_watches = {max}");
        assert!(d.plan.catalog.is_some());
    }
    // With the catalog query running, limit 7: 6 names are not above 7 - 7/4 = 6, back per service ...
    let s = settings(&[("max_service_watches", "7")]);
    let running = drive(&mut p, &settings(&[("discovery", "catalog")]), &agent);
    let plan = p.plan(&s, &running.answers).expect("plan");
    assert!(
        !plan.watches.iter().any(|w| w.key == NODES),
        "6 names, limit 7: back to per service"
    );
    // ... and at 6 of 6 it stays (above 6 - 6/4 = 5), where a fresh start would watch per service.
    let s = settings(&[("max_service_watches", "6")]);
    let plan = p.plan(&s, &running.answers).expect("plan");
    assert!(
        plan.watches.iter().any(|w| w.key == NODES),
        "6 names, limit 6, the catalog query running: kept"
    );
    for (k, v) in [
        ("discovery", "everything"),
        ("max_service_watches", "many"),
        ("max_service_watches", "5000"),
    ] {
        let err = p.configure(&settings(&[(k, v)])).expect_err("refused");
        assert!(err.to_string().contains(k), "{err}");
    }
}
