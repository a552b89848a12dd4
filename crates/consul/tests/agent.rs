//! The crate against a real Consul 1.8.7 dev agent on free loopback ports: the gateway registration
//! is accepted and reads back as a mesh gateway; a registered service with a Connect sidecar reaches a
//! watch; blocking queries block until a change and return early on one; a config entry that does not
//! exist yet can be watched; a critical check drops an instance from the route table and a warning one
//! stays; and the change-to-answer latency of a watch over 50 changes, printed (p50/p99, requests per
//! change).
//!
//! The agents come from `meshgate_consul::lab` (feature `lab`), which finds or installs the
//! Consul binary (`MESHGATE_CONSUL`, else `<target>/tools/consul`); `MESHGATE_SKIP_CONSUL=1` skips the
//! test with a printed reason.

use meshgate_consul::lab::{self, DevAgent, Instance, Options};
use meshgate_consul::model::{
    CaRoots, CheckServiceNode, MeshGatewayRegistration, Service, ServiceNames,
};
use meshgate_consul::routes::{self, Inputs, Sni, Table};
use meshgate_consul::watch::{Policy, Watch};
use meshgate_consul::{Client, Request, Response, Transport};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Bound on any single expected change reaching a watch.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

fn free_port() -> u16 {
    lab::free_port().expect("free port")
}

/// Polls `f` every 50 ms until it gives `Some`, for at most `timeout`.
fn poll_until<T>(timeout: Duration, f: impl FnMut() -> Option<T>) -> Option<T> {
    lab::wait_until(timeout, "a condition", f).ok()
}

/// Registers `api-<n>` with a Connect sidecar on port 2100<n> whose only check is the TTL check
/// `api-<n>-sidecar-ttl`, passing until the test says otherwise.
fn register_api(consul: &DevAgent, n: u16) {
    consul
        .register_with_sidecar(
            &Instance::new("api", &format!("api-{n}"), 21000 + n).meta("version", &n.to_string()),
        )
        .expect("register api");
}

/// The route table from the agent's current answers, with `health` as health/connect/api.
fn table_with(consul: &DevAgent, api_health: Vec<CheckServiceNode>) -> Table {
    let c = consul.client();
    let roots: CaRoots = c.get_json("/v1/agent/connect/ca/roots").expect("roots");
    let names: ServiceNames = c.get_json("/v1/catalog/services").expect("services");
    let mut services = BTreeMap::new();
    for name in names.keys() {
        let health = if name == "api" {
            api_health.clone()
        } else {
            c.get_json(&format!("/v1/health/connect/{name}"))
                .expect("health")
        };
        services.insert(name.clone(), health);
    }
    let resolvers: Vec<meshgate_consul::model::ServiceResolver> = c
        .get_json("/v1/config/service-resolver")
        .expect("resolvers");
    let fed = c
        .get_json("/v1/internal/federation-states/mesh-gateways")
        .unwrap_or_default();
    routes::build(&Inputs {
        local_dc: "dc1",
        trust_domain: &roots.trust_domain,
        domain: "consul",
        services: &services,
        resolvers: &resolvers,
        gateways: &BTreeMap::new(),
        federation_states: &fed,
        wan_federation: false,
        servers: &[],
        connect_timeout: routes::DEFAULT_CONNECT_TIMEOUT,
    })
}

fn api_endpoints(table: &Table, td: &str) -> Vec<String> {
    table
        .get(&Sni::Exact(format!("api.default.dc1.internal.{td}")))
        .map(|r| r.endpoints.iter().map(|e| e.to_string()).collect())
        .unwrap_or_default()
}

/// Polls `watch` until an answer satisfies `accept`, for at most [`CHANGE_TIMEOUT`].
fn wait_for_answer<T: serde::de::DeserializeOwned>(
    watch: &mut Watch,
    client: &Client,
    accept: impl Fn(&T) -> bool,
) -> T {
    let end = Instant::now() + CHANGE_TIMEOUT;
    while Instant::now() < end {
        if let Some(answer) = watch.poll(client).expect("watch round") {
            let value: T = answer.json(watch.path()).expect("json");
            if accept(&value) {
                return value;
            }
        }
    }
    panic!(
        "{}: the expected answer did not come within {CHANGE_TIMEOUT:?}",
        watch.path()
    );
}

fn short_policy(wait: Duration) -> Policy {
    Policy {
        wait,
        margin: Duration::from_secs(2),
        ..Policy::default()
    }
}

#[test]
fn against_a_real_consul_agent() {
    if lab::skip_requested() {
        return;
    }
    let consul = DevAgent::start(Options::dc("dc1")).expect("consul dev agent");
    let roots: CaRoots = consul
        .client()
        .get_json("/v1/agent/connect/ca/roots")
        .expect("roots");
    let td = roots.trust_domain.clone();

    gateway_registration_reads_back(&consul);
    let timing = watch_sees_registration_and_blocks(&consul);
    config_entry_not_found_yet_is_watchable(&consul);
    gateway_watches_are_accepted(&consul);
    critical_drops_from_routes(&consul, &td);
    eprintln!("{timing}");
    for cached in [false, true] {
        let (p50, p99, max, per_change, n) = change_to_answer_latency(&consul, cached, 50);
        eprintln!(
            "change-to-answer latency, /v1/health/connect/api{} over {n} changes: p50 {p50:?}, p99 {p99:?}, max {max:?}; {per_change:.2} HTTP requests per change",
            if cached { "?cached" } else { "" }
        );
        // The median holds the claim ("well under a second"); the tail is printed, not asserted: on
        // 2 shared cores it follows the machine's load (0.7 s seen while others compiled).
        assert!(p50 < Duration::from_millis(500), "p50 {p50:?}");
    }
    drop(consul);
    acl_refusals_are_named();
}

/// With ACLs on and default deny: a refused registration names the missing permission; a token
/// without `node:read` gets empty health answers (200) and the preflight names what it lacks; a token
/// file is re-read when it is rewritten.
fn acl_refusals_are_named() {
    let consul = DevAgent::start(Options::dc("dc1").acl()).expect("ACL consul dev agent");
    let agent = consul.client().agent().clone();
    let anonymous = consul.anonymous().expect("client");
    let reg = MeshGatewayRegistration::new("mesh-gateway").address("127.0.0.1", free_port());
    let e = anonymous
        .put_json("/v1/agent/service/register", &reg.body())
        .expect_err("anonymous is refused");
    assert_eq!(e.status(), Some(403), "{e}");
    assert_eq!(
        e.missing_permission(),
        Some("service:write on mesh-gateway"),
        "{e}"
    );
    assert!(
        e.to_string().contains("service:write on mesh-gateway"),
        "{e}"
    );

    // A gateway policy without node:read, its token written to a file.
    let master = consul.client();
    let rules = "service \"mesh-gateway\" { policy = \"write\" }\nservice_prefix \"\" { policy = \"read\" }";
    consul
        .create_policy("gw-no-node-read", rules)
        .expect("policy");
    let secret = consul.create_token(&["gw-no-node-read"]).expect("token");
    let dir = std::env::temp_dir().join(format!("meshgate-consul-acl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{secret}\n")).expect("write");
    let gateway = Client::new(agent.with_token_file(&token_file)).expect("client");

    gateway
        .put_json("/v1/agent/service/register", &reg.body())
        .expect("the gateway token may register its own name");
    let preflight = |client: &Client| -> Vec<String> {
        let answer: Vec<meshgate_consul::model::AclCheck> = client
            .post_json(
                "/v1/internal/acl/authorize",
                &meshgate_consul::model::AclCheck::gateway_preflight(
                    "mesh-gateway",
                    "api",
                    consul.node(),
                ),
            )
            .expect("preflight");
        meshgate_consul::model::AclCheck::missing(&answer)
    };
    assert_eq!(
        preflight(&gateway),
        [format!("node:read on {}", consul.node())]
    );
    // Without node:read the catalog is silently empty: the own service is in the catalog (the master
    // token sees it), yet this token gets 200 with nothing.
    let synced = poll_until(CHANGE_TIMEOUT, || {
        master
            .get_json::<Vec<CheckServiceNode>>("/v1/health/service/mesh-gateway")
            .ok()
            .filter(|v| v.len() == 1)
    });
    assert!(
        synced.is_some(),
        "the registration never reached the catalog"
    );
    let seen: Vec<CheckServiceNode> = gateway
        .get_json("/v1/health/service/mesh-gateway")
        .expect("health");
    assert!(seen.is_empty(), "filtered without node:read: {seen:?}");

    // The file now holds the master token: the next request uses it.
    std::fs::write(&token_file, lab::MASTER_TOKEN).expect("rewrite");
    assert_eq!(preflight(&gateway), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(&dir);
}

fn gateway_registration_reads_back(consul: &DevAgent) {
    let (lan, wan) = (free_port(), free_port());
    let reg = MeshGatewayRegistration::new("mesh-gateway")
        .address("127.0.0.1", lan)
        .wan_address("127.0.0.1", wan)
        .expose_servers(true);
    consul
        .client()
        .put_json("/v1/agent/service/register", &reg.body())
        .expect("the agent accepts the registration body");
    let stored: Service = consul
        .client()
        .get_json(&format!("/v1/agent/service/{}", reg.id()))
        .expect("read back");
    assert_eq!(stored.kind, "mesh-gateway");
    assert_eq!(
        (stored.id.as_str(), stored.service.as_str(), stored.port),
        ("mesh-gateway", "mesh-gateway", lan)
    );
    assert_eq!(stored.tagged_addresses["lan"].port, lan);
    assert_eq!(stored.tagged_addresses["wan"].port, wan);
    assert_eq!(stored.meta["consul-wan-federation"], "1");
    let proxy = stored.proxy.expect("proxy");
    assert_eq!(proxy.config["envoy_gateway_bind_tagged_addresses"], true);
    assert!(
        !stored.content_hash.is_empty(),
        "hash-blocking is available"
    );
    // The same body again is an idempotent replace.
    consul
        .client()
        .put_json("/v1/agent/service/register", &reg.body())
        .expect("re-register");
    // The agent refuses reserved meta keys: the builder refuses them first.
    assert!(MeshGatewayRegistration::new("gw")
        .meta("consul-x", "1")
        .is_err());
    let e = consul
        .client()
        .put_json(
            "/v1/agent/service/register",
            &serde_json::json!({"Kind": "mesh-gateway", "Name": "gw", "Port": 0}),
        )
        .expect_err("port 0");
    assert_eq!(e.status(), Some(400), "{e}");
}

/// Returns a line of timings for the report.
fn watch_sees_registration_and_blocks(consul: &DevAgent) -> String {
    let client = consul.client();
    let mut watch =
        Watch::new("/v1/health/connect/web").policy(short_policy(Duration::from_secs(1)));
    let first = watch
        .poll(client)
        .expect("first round")
        .expect("first answer");
    assert_eq!(
        first
            .json::<Vec<CheckServiceNode>>("web")
            .expect("json")
            .len(),
        0
    );
    let index = watch.index();
    assert!(index >= 1);

    // Nothing changes: the query blocks for `wait` and comes back unchanged with the same index. A
    // write elsewhere (the gateway's catalog sync, its first check run) can wake it early with a new
    // index and the same answer — also "unchanged" — so up to 5 rounds are given to see a quiet one.
    let mut index = watch.index();
    let quiet = (0..5).find_map(|_| {
        let started = Instant::now();
        assert!(
            watch.poll(client).expect("blocked round").is_none(),
            "nothing changed"
        );
        let blocked = started.elapsed();
        let same = watch.index() == index;
        index = watch.index();
        (same && blocked >= Duration::from_millis(900)).then_some(blocked)
    });
    let blocked = quiet.expect("no round blocked for its full wait with an unchanged index");

    // A registration while the query blocks (wait = 30 s) returns it early with a higher index.
    let mut watch = watch.policy(short_policy(Duration::from_secs(30)));
    let registered = std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel();
        let handle = s.spawn(move || {
            let _ = tx.send(());
            let started = Instant::now();
            let answer = watch.poll(client).expect("round").expect("changed");
            (answer, started.elapsed(), watch)
        });
        rx.recv_timeout(CHANGE_TIMEOUT).expect("watch started");
        consul
            .register(&serde_json::json!({
                "Name": "web", "ID": "web", "Port": 8080, "Tags": ["v1"],
                "Connect": {"SidecarService": {"Port": 21000, "Checks": [
                    {"CheckID": "web-ttl", "Name": "sidecar ttl", "TTL": "10m", "Status": "passing"}
                ]}}
            }))
            .expect("register web");
        handle.join().expect("watch thread")
    });
    let (answer, took, watch) = registered;
    assert!(took < Duration::from_secs(10), "the change took {took:?}");
    assert!(watch.index() > index, "index {} → {}", index, watch.index());
    let web: Vec<CheckServiceNode> = answer.json("web").expect("json");
    assert_eq!(web.len(), 1);
    assert_eq!(web[0].service.id, "web-sidecar-proxy");
    assert_eq!(web[0].service.port, 21000);
    assert_eq!(
        web[0].service.tags,
        ["v1"],
        "sidecars inherit the parent's tags"
    );
    format!(
        "blocking query: unchanged after {blocked:?} (wait=1s); registration seen after {took:?} (wait=30s)"
    )
}

fn config_entry_not_found_yet_is_watchable(consul: &DevAgent) {
    let client = consul.client();
    let mut watch = Watch::new("/v1/config/service-defaults/api")
        .allow_not_found()
        .policy(short_policy(Duration::from_secs(30)));
    let first = watch
        .poll(client)
        .expect("404 round")
        .expect("first answer");
    assert!(!first.found());
    assert!(watch.index() >= 1, "a missing entry still has an index");
    consul
        .config_write(
            &serde_json::json!({"Kind": "service-defaults", "Name": "api", "Protocol": "tcp"}),
        )
        .expect("config write");
    let entry: meshgate_consul::model::ServiceDefaults = wait_for_answer(
        &mut watch,
        client,
        |e: &meshgate_consul::model::ServiceDefaults| e.name == "api",
    );
    assert_eq!(entry.protocol, "tcp");
}

/// Every watch of `state::watches` is a request the real agent answers, and the view they feed becomes
/// ready with the routes of what is registered.
fn gateway_watches_are_accepted(consul: &DevAgent) {
    use meshgate_consul::state::{watches, GatewayState, Update};
    let client = consul.client();
    let mut state = GatewayState::new("dc1", "consul");
    let first = |mut w: Watch| {
        let answer = w
            .poll(client)
            .unwrap_or_else(|e| panic!("{}: {e}", w.path()));
        let answer = answer.unwrap_or_else(|| panic!("{}: no first answer", w.path()));
        (w, answer)
    };
    let (_, roots) = first(watches::roots());
    state.apply(Update::Roots(roots.json("roots").expect("roots")));
    let (_, names) = first(watches::service_names());
    state.apply(Update::ServiceNames(
        names.json("services").expect("services"),
    ));
    let (_, dcs) = first(watches::datacenters());
    state.apply(Update::Datacenters(dcs.json("datacenters").expect("dcs")));
    let (_, fed) = first(watches::federation_states());
    state.apply(Update::FederationStates(fed.json("fed").expect("fed")));
    let (_, resolvers) = first(watches::resolvers());
    state.apply(Update::Resolvers(
        resolvers.json("resolvers").expect("resolvers"),
    ));
    let (_, servers) = first(watches::servers());
    let servers: Vec<CheckServiceNode> = servers.json("servers").expect("servers");
    assert_eq!(servers.len(), 1, "one dev server");
    // The kind filter is accepted (a bad one would be a 500) and keeps only mesh gateways.
    let (_, gws) = first(watches::gateways("dc1", "mesh-gateway"));
    let gws: Vec<CheckServiceNode> = gws.json("gateways").expect("gateways");
    assert!(gws.iter().all(|g| g.service.kind == "mesh-gateway") && gws.len() == 1);
    // The own registration, hash-blocking: the next round carries the hash and blocks until `wait`.
    let (own_watch, own) = first(watches::own("mesh-gateway"));
    state.apply(Update::Own(own.json("own").expect("own")));
    let mut own_watch = own_watch.policy(short_policy(Duration::from_secs(1)));
    assert!(own_watch.next_request().query_value("hash").is_some());
    let started = Instant::now();
    assert!(own_watch.poll(client).expect("hash round").is_none());
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    // The gateway registered with -expose-servers: ready only with the servers.
    assert!(state.wan_federation() && !state.ready());
    state.apply(Update::Servers(servers));
    assert!(state.ready());
    for service in state.wanted().services {
        let (_, health) = first(watches::service_health(&service));
        state.apply(Update::ServiceHealth {
            service,
            nodes: health.json("health").expect("health"),
        });
    }
    let table = state.table().expect("table");
    assert!(
        table.get(&Sni::Exact("server.dc1.consul".into())).is_some(),
        "{table:#?}"
    );
}

fn critical_drops_from_routes(consul: &DevAgent, td: &str) {
    let client = consul.client();
    register_api(consul, 1);
    register_api(consul, 2);
    let mut watch =
        Watch::new("/v1/health/connect/api").policy(short_policy(Duration::from_secs(30)));
    let both = wait_for_answer(&mut watch, client, |h: &Vec<CheckServiceNode>| h.len() == 2);
    assert_eq!(
        api_endpoints(&table_with(consul, both), td),
        ["127.0.0.1:21001", "127.0.0.1:21002"]
    );

    consul.check_fail("api-2-sidecar-ttl").expect("fail");
    let failed = wait_for_answer(&mut watch, client, |h: &Vec<CheckServiceNode>| {
        h.iter().any(|c| c.healthy_weight(false).is_none())
    });
    assert_eq!(
        api_endpoints(&table_with(consul, failed), td),
        ["127.0.0.1:21001"]
    );

    // Warning stays routed (as in Envoy; `?passing` would drop it).
    consul.check_warn("api-1-sidecar-ttl").expect("warn");
    let warned = wait_for_answer(&mut watch, client, |h: &Vec<CheckServiceNode>| {
        h.iter()
            .flat_map(|c| &c.checks)
            .any(|c| c.status == "warning")
    });
    assert_eq!(
        api_endpoints(&table_with(consul, warned), td),
        ["127.0.0.1:21001"]
    );

    // Maintenance mode is a critical check too: nothing healthy is left, the name is not routed.
    consul
        .maintenance("api-1-sidecar-proxy", true)
        .expect("maintenance");
    let none = wait_for_answer(&mut watch, client, |h: &Vec<CheckServiceNode>| {
        h.iter().all(|c| c.healthy_weight(false).is_none())
    });
    assert!(api_endpoints(&table_with(consul, none), td).is_empty());

    // Back to passing for the latency measurement.
    consul
        .maintenance("api-1-sidecar-proxy", false)
        .expect("maintenance");
    consul.check_pass("api-1-sidecar-ttl").expect("pass");
    consul.check_pass("api-2-sidecar-ttl").expect("pass");
}

/// Tells the test when a watch round starts.
struct Signalling<'a> {
    client: &'a Client,
    round: AtomicU64,
    started: mpsc::Sender<u64>,
}

impl Transport for Signalling<'_> {
    fn send(&self, request: &Request) -> meshgate_consul::Result<Response> {
        let round = self.round.fetch_add(1, Ordering::SeqCst) + 1;
        let _ = self.started.send(round);
        self.client.send(request)
    }
}

/// Toggles maintenance on api-1's sidecar `n` times while a watch of health/connect/api blocks, and
/// measures from just before each PUT to the watch's changed answer. Returns p50, p99, max, HTTP
/// requests per change, n.
fn change_to_answer_latency(
    consul: &DevAgent,
    cached: bool,
    n: usize,
) -> (Duration, Duration, Duration, f64, usize) {
    let stop = AtomicBool::new(false);
    let (started_tx, started_rx) = mpsc::channel::<u64>();
    let (answer_tx, answer_rx) = mpsc::channel::<(u64, Instant)>();
    let transport = Signalling {
        client: consul.client(),
        round: AtomicU64::new(0),
        started: started_tx,
    };
    let mut latencies = Vec::with_capacity(n);
    let (requests, changes) = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let mut watch =
                Watch::new("/v1/health/connect/api").policy(short_policy(Duration::from_secs(2)));
            if cached {
                watch = watch.query("cached", "");
            }
            while !stop.load(Ordering::SeqCst) {
                match watch.poll(&transport) {
                    Ok(Some(_)) => {
                        let round = transport.round.load(Ordering::SeqCst);
                        if answer_tx.send((round, Instant::now())).is_err() {
                            break;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => panic!("watch round: {e}"),
                }
            }
            (watch.stats().requests, watch.stats().changes)
        });
        let (mut last_round, _) = answer_rx
            .recv_timeout(CHANGE_TIMEOUT)
            .expect("first answer");
        for i in 0..n {
            // Wait until the next round is on its way (pacing for the measurement only: a change that
            // lands before the query arrives is returned at once, which would flatter the figure).
            loop {
                let round = started_rx.recv_timeout(CHANGE_TIMEOUT).expect("next round");
                if round > last_round {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(30));
            let t0 = Instant::now();
            consul
                .maintenance("api-1-sidecar-proxy", i % 2 == 0)
                .expect("maintenance");
            let (round, at) = answer_rx
                .recv_timeout(CHANGE_TIMEOUT)
                .expect("changed answer");
            latencies.push(at.saturating_duration_since(t0));
            last_round = round;
        }
        // The watcher sees the flag after its current round (at most `wait` = 2 s).
        stop.store(true, Ordering::SeqCst);
        drop(answer_rx);
        watcher.join().expect("watch thread")
    });
    latencies.sort();
    let pick = |q: f64| {
        latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    // The first answer (the starting state) is not a change caused by the test.
    let per_change = requests.saturating_sub(1) as f64 / (changes.max(2) - 1) as f64;
    (
        pick(0.5),
        pick(0.99),
        latencies[latencies.len() - 1],
        per_change,
        n,
    )
}

/// The lab's two datacenters: joined over WAN, one trust domain, a service in dc2 visible from dc1;
/// `-connect-proxy` registrations and intentions accepted; an agent restarted on the same ports comes
/// back empty with a new trust domain (what `-dev` keeps: nothing).
#[test]
fn two_datacenter_lab() {
    if lab::skip_requested() {
        return;
    }
    let started = Instant::now();
    let mut lab = lab::TwoDcLab::start().expect("two-datacenter lab");
    eprintln!("two-datacenter lab ready in {:?}", started.elapsed());
    let td = lab.trust_domain().expect("trust domain");
    assert_eq!(lab.dc2.trust_domain().expect("dc2 roots"), td);
    for agent in [&lab.dc1, &lab.dc2] {
        assert_eq!(agent.datacenters().expect("dcs"), ["dc1", "dc2"]);
    }
    let billing = Instance::new("billing", "billing-1", free_port());
    lab.dc2.register_connect_proxy(&billing).expect("proxy");
    let seen = poll_until(CHANGE_TIMEOUT, || {
        let request = Request::get("/v1/health/connect/billing").query("dc", "dc2");
        let answer = lab.dc1.client().call(&request).ok()?;
        answer
            .json::<Vec<CheckServiceNode>>("health")
            .ok()
            .filter(|v| v.len() == 1)
    })
    .expect("dc2's billing from dc1");
    assert_eq!(seen[0].service.kind, "connect-proxy");
    assert_eq!(seen[0].node.datacenter, "dc2");
    let leaf = lab.dc2.leaf("billing").expect("leaf");
    assert_eq!(leaf.datacenter(), Some("dc2"));
    assert!(!lab
        .dc1
        .intention("web", "billing", "allow")
        .expect("intention")
        .is_empty());

    let ports = lab.dc2.ports();
    lab.dc2.kill();
    assert!(!lab.dc2.is_running());
    let restarted = Instant::now();
    lab.dc2.restart().expect("restart");
    eprintln!(
        "dc2 restarted on the same ports in {:?}",
        restarted.elapsed()
    );
    assert_eq!(lab.dc2.ports(), ports);
    assert!(
        lab.dc2.agent_services().expect("services").is_empty(),
        "-dev keeps nothing"
    );
}
