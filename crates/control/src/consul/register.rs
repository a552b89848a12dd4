//! The gateway's own life in Consul: an ACL preflight when the agent first answers (Consul filters
//! what a token cannot read into empty 200s, so a missing `node:read` would otherwise look like an empty
//! mesh), the registration `consul connect envoy -gateway=mesh -register` would send, registering again
//! whenever the agent forgets it (an agent restart), and leaving: maintenance first so peers stop
//! choosing this gateway, then — after the drain — deregistration (Consul's own command never does).

use super::metrics::ConsulMetrics;
use crate::error::ControlError;
use meshgate_config::{Config, RegisterSection};
use meshgate_consul::model::{AclCheck, MeshGatewayRegistration};
use meshgate_consul::watch::Mode;
use meshgate_consul::{Client, Request, Watch};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Deadline of each request made while leaving: a dead agent must not hold the shutdown.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Retry interval while the agent cannot be reached (doubling up to the cap).
const RETRY_BASE: Duration = Duration::from_millis(500);
const RETRY_CAP: Duration = Duration::from_secs(30);

/// The registration a config asks for: `[consul.register]`, or the defaults when `force` (the
/// `--register` flag) is set without one. `None`: do not register.
pub fn registration(
    config: &Config,
    force: bool,
) -> Result<Option<MeshGatewayRegistration>, ControlError> {
    let section = config.consul.as_ref().and_then(|c| c.register.clone());
    let Some(r) = section.or_else(|| force.then(RegisterSection::default)) else {
        return Ok(None);
    };
    let name = r
        .service
        .clone()
        .unwrap_or_else(|| config.gateway.name.clone());
    let lan = match &r.address {
        Some(a) => meshgate_config::consul::split_host_port(a)
            .ok_or_else(|| ControlError::Config(format!("[consul.register] address {a:?}")))?,
        None => {
            let first: SocketAddr = *config
                .gateway
                .listen
                .first()
                .ok_or_else(|| ControlError::Config("[gateway] listen is empty".into()))?;
            if first.ip().is_unspecified() {
                return Err(ControlError::Config(format!(
                    "[consul.register] address is required: the listen address {first} is not one other hosts can dial"
                )));
            }
            (first.ip().to_string(), first.port())
        }
    };
    let wan = match &r.wan_address {
        Some(a) => meshgate_config::consul::split_host_port(a)
            .ok_or_else(|| ControlError::Config(format!("[consul.register] wan_address {a:?}")))?,
        None => lan.clone(),
    };
    let mut reg = MeshGatewayRegistration::new(name)
        .address(lan.0, lan.1)
        .wan_address(wan.0, wan.1)
        .expose_servers(r.expose_servers);
    if let Some(after) = &r.deregister_critical_after {
        reg = reg.deregister_critical_after(after.clone());
    }
    Ok(Some(reg))
}

/// Why the preflight failed.
#[derive(Debug)]
enum Refusal {
    /// The token cannot do what the gateway needs: stop.
    Fatal(String),
    /// The agent could not be asked (yet): retry.
    Retry(meshgate_consul::Error),
}

/// Asks the agent whether the token may do what the gateway does. An agent without ACLs answers 401
/// (`ACL support disabled`): everything is allowed.
fn preflight(
    client: &Client,
    gateway: Option<&str>,
    metrics: &ConsulMetrics,
) -> Result<(), Refusal> {
    let path = "/v1/internal/acl/authorize";
    // Empty segments: `service_prefix ""` / `node_prefix ""` rules (what §7.1 grants) cover them.
    let mut checks = vec![
        AclCheck::new("service", "", "read"),
        AclCheck::new("node", "", "read"),
    ];
    if let Some(g) = gateway {
        checks.insert(0, AclCheck::new("service", g, "write"));
    }
    let request = Request::post(path).json(&checks).map_err(Refusal::Retry)?;
    let response = match client.call(&request) {
        Ok(r) => {
            metrics.request(path, "ok");
            r
        }
        Err(e) => {
            metrics.request(path, super::metrics::outcome(&e));
            return match e.status() {
                Some(401) => Ok(()),
                Some(403) => Err(Refusal::Fatal(format!(
                    "the consul token was refused ({e}): is it the right token for this datacenter?"
                ))),
                _ if e.is_transient() => Err(Refusal::Retry(e)),
                _ => Err(Refusal::Fatal(format!("consul ACL preflight: {e}"))),
            };
        }
    };
    let answer: Vec<AclCheck> = response.json(path).map_err(Refusal::Retry)?;
    let missing = AclCheck::missing(&answer);
    if missing.is_empty() {
        return Ok(());
    }
    let missing: Vec<String> = missing
        .iter()
        .map(|m| m.trim_end_matches(" on ").to_owned())
        .collect();
    Err(Refusal::Fatal(format!(
        "the consul token lacks {} (a mesh gateway needs service:write on its own name, and service:read and node:read on everything it routes: docs/consul.md)",
        missing.join(", ")
    )))
}

/// The preflight and registration thread, and the way out.
pub struct Registrar {
    client: Arc<Client>,
    id: Option<String>,
    metrics: Arc<ConsulMetrics>,
    stop: Arc<AtomicBool>,
    /// Held while registering, so leaving cannot interleave with a registration in flight.
    turn: Arc<Mutex<()>>,
    fatal: Arc<Mutex<Option<String>>>,
    /// Whether the agent ever took the registration: with nothing registered there is nothing to
    /// put in maintenance or deregister.
    registered_once: Arc<AtomicBool>,
}

impl Registrar {
    /// Starts the thread: preflight (with `service:write` on the gateway when it registers), then the
    /// registration if any, kept in the agent until [`Registrar::leave`]. A refusal before the first
    /// registration is fatal: it is stored and `on_fatal` is called (the runner then stops, exit 2).
    pub fn start(
        client: Arc<Client>,
        registration: Option<MeshGatewayRegistration>,
        metrics: Arc<ConsulMetrics>,
        on_fatal: Box<dyn Fn() + Send>,
    ) -> Result<Registrar, ControlError> {
        let r = Registrar {
            client,
            id: registration.as_ref().map(|r| r.id().to_owned()),
            metrics,
            stop: Arc::new(AtomicBool::new(false)),
            turn: Arc::new(Mutex::new(())),
            fatal: Arc::new(Mutex::new(None)),
            registered_once: Arc::new(AtomicBool::new(false)),
        };
        let (client, metrics, stop, turn, fatal, registered_once) = (
            r.client.clone(),
            r.metrics.clone(),
            r.stop.clone(),
            r.turn.clone(),
            r.fatal.clone(),
            r.registered_once.clone(),
        );
        let fail = move |message: String| {
            tracing::error!("{message}");
            if let Ok(mut f) = fatal.lock() {
                *f = Some(message);
            }
            on_fatal();
        };
        std::thread::Builder::new()
            .name("meshgate-consul-register".into())
            .spawn(move || {
                let gateway = registration.as_ref().map(|r| r.id().to_owned());
                let mut retry = Retry::default();
                loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    match preflight(&client, gateway.as_deref(), &metrics) {
                        Ok(()) => {
                            metrics.preflight_passed.store(true, Ordering::Relaxed);
                            break;
                        }
                        Err(Refusal::Fatal(m)) => return fail(m),
                        Err(Refusal::Retry(e)) => retry.wait(&e, "consul ACL preflight", &stop),
                    }
                }
                let Some(reg) = registration else { return };
                keep_registered(
                    &client,
                    &reg,
                    &metrics,
                    &stop,
                    &turn,
                    &registered_once,
                    fail,
                );
            })
            .map_err(|e| ControlError::Host(format!("consul registration thread: {e}")))?;
        Ok(r)
    }

    /// Why the gateway must stop, if Consul refused it.
    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().ok().and_then(|f| f.clone())
    }

    /// Before the drain: no more re-registration, and the service in maintenance so sidecars and remote
    /// gateways stop choosing it (they see it within one blocking round, ~1 s).
    pub fn begin_leaving(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let Some(id) = &self.id else { return };
        if !self.registered_once.load(Ordering::Relaxed) {
            return;
        }
        let _turn = self.turn.lock();
        let path = format!("/v1/agent/service/maintenance/{id}");
        let request = Request::put(path.clone())
            .query("enable", "true")
            .query("reason", "meshgate is draining")
            .timeout(LEAVE_TIMEOUT);
        match self.client.call(&request) {
            Ok(_) => {
                self.metrics.request(&path, "ok");
                tracing::info!(service = %id, "consul: in maintenance while draining");
            }
            Err(e) => {
                self.metrics.request(&path, super::metrics::outcome(&e));
                tracing::warn!(service = %id, error = %e, "consul: could not enter maintenance");
            }
        }
    }

    /// After the drain: deregister.
    pub fn leave(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let Some(id) = &self.id else { return };
        if !self.registered_once.load(Ordering::Relaxed) {
            return;
        }
        let _turn = self.turn.lock();
        let path = format!("/v1/agent/service/deregister/{id}");
        match self
            .client
            .call(&Request::put(path.clone()).timeout(LEAVE_TIMEOUT))
        {
            Ok(_) => {
                self.metrics.request(&path, "ok");
                self.metrics.registered.set(0);
                tracing::info!(service = %id, "consul: deregistered");
            }
            Err(e) => {
                self.metrics.request(&path, super::metrics::outcome(&e));
                tracing::warn!(service = %id, error = %e, "consul: could not deregister; the agent removes the service once its check has been critical for deregister_critical_after");
            }
        }
    }
}

impl Drop for Registrar {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Registers, then watches the registration (hash-blocking) and registers again whenever it is gone.
fn keep_registered(
    client: &Client,
    reg: &MeshGatewayRegistration,
    metrics: &ConsulMetrics,
    stop: &AtomicBool,
    turn: &Mutex<()>,
    registered_once: &AtomicBool,
    fail: impl Fn(String),
) {
    let path = "/v1/agent/service/register";
    let mut ever = false;
    let mut retry = Retry::default();
    loop {
        {
            let _turn = turn.lock();
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let sent = Request::put(path)
                .query("replace-existing-checks", "true")
                .json(&reg.body())
                .and_then(|r| client.call(&r));
            metrics.registrations.inc();
            match sent {
                Ok(_) => {
                    metrics.request(path, "ok");
                    metrics.registered.set(1);
                    tracing::info!(service = %reg.id(), "consul: registered");
                    ever = true;
                    registered_once.store(true, Ordering::Relaxed);
                    retry = Retry::default();
                }
                Err(e) => {
                    metrics.request(path, super::metrics::outcome(&e));
                    if !ever && e.status().is_some_and(|s| (400..500).contains(&s)) {
                        let what = e
                            .missing_permission()
                            .map_or_else(|| e.to_string(), |m| format!("the token lacks {m}"));
                        return fail(format!("consul refused to register {}: {what}", reg.id()));
                    }
                    // Later (a rotated token, an agent restarting): keep serving, retry, say so once.
                    if retry.failures == 0 {
                        tracing::warn!(service = %reg.id(), error = %e, "consul: registering failed; retrying");
                    }
                }
            }
        }
        if metrics.registered.get() == 0 {
            retry.wait_quietly(stop);
            continue;
        }
        let mut own = Watch::new(format!("/v1/agent/service/{}", reg.id()))
            .mode(Mode::Hash)
            .allow_not_found();
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match own.poll(client) {
                Ok(Some(a)) if !a.found() => {
                    metrics.request(own.path(), "ok");
                    metrics.registered.set(0);
                    if stop.load(Ordering::Relaxed) {
                        // Our own deregistration, seen by the watch.
                        return;
                    }
                    tracing::warn!(service = %reg.id(), "consul: the agent no longer has this gateway (restarted?); registering again");
                    break;
                }
                Ok(_) => {
                    metrics.request(own.path(), "ok");
                    metrics.registered.set(1);
                }
                Err(e) => {
                    metrics.request(own.path(), super::metrics::outcome(&e));
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if e.is_transient() && metrics.registered.get() == 1 {
                        tracing::warn!(service = %reg.id(), error = %e, "consul: agent unreachable; will register again if it forgot this gateway");
                    }
                    // Unknown until the agent answers again.
                    metrics.registered.set(0);
                }
            }
        }
    }
}

/// Doubling retry delay, reset on success; sleeps in short steps so a stop is seen.
#[derive(Default)]
struct Retry {
    failures: u32,
}

impl Retry {
    fn wait(&mut self, e: &meshgate_consul::Error, what: &str, stop: &AtomicBool) {
        if self.failures == 0 {
            tracing::warn!(error = %e, "{what}: the agent does not answer yet; retrying");
        }
        self.wait_quietly(stop);
    }

    fn wait_quietly(&mut self, stop: &AtomicBool) {
        let delay = RETRY_BASE
            .saturating_mul(1u32 << self.failures.min(16))
            .min(RETRY_CAP);
        self.failures = self.failures.saturating_add(1);
        let step = Duration::from_millis(50);
        let mut slept = Duration::ZERO;
        while slept < delay && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(step);
            slept += step;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(extra: &str) -> Config {
        let text = format!("[gateway]\nname = \"gw-a\"\nlisten = [\"127.0.0.1:18443\"]\n{extra}");
        Config::parse(&text, Path::new("gw.toml")).expect("valid")
    }

    fn body(reg: &MeshGatewayRegistration) -> serde_json::Value {
        serde_json::to_value(reg.body()).expect("json")
    }

    #[test]
    fn register_flag_uses_the_gateway_name_and_listen_address() {
        assert!(registration(&config(""), false).expect("ok").is_none());
        let reg = registration(&config(""), true)
            .expect("ok")
            .expect("registration");
        let b = body(&reg);
        assert_eq!(b["ID"], "gw-a");
        assert_eq!(b["Kind"], "mesh-gateway");
        assert_eq!(b["Port"], 18443);
        assert_eq!(b["TaggedAddresses"]["wan"]["Port"], 18443);
        assert_eq!(b["Check"]["TCP"], "127.0.0.1:18443");
    }

    #[test]
    fn the_section_overrides_and_an_unspecified_listen_needs_an_address() {
        let reg = registration(
            &config("[consul]\n[consul.register]\nservice = \"mgw\"\nwan_address = \"198.51.100.7:443\"\nexpose_servers = true\n"),
            false,
        )
        .expect("ok")
        .expect("registration");
        let b = body(&reg);
        assert_eq!(b["Name"], "mgw");
        assert_eq!(b["TaggedAddresses"]["wan"]["Address"], "198.51.100.7");
        assert_eq!(b["Meta"]["consul-wan-federation"], "1");
        let any = Config::parse(
            "[gateway]\nlisten = [\"0.0.0.0:8443\"]\n",
            Path::new("gw.toml"),
        )
        .expect("valid");
        let e = registration(&any, true).expect_err("needs an address");
        assert!(e.to_string().contains("[consul.register] address"), "{e}");
    }

    /// A scripted agent: answers each request (one per connection, as the client sends them) with what
    /// `script` returns for it, and records every request line.
    struct FakeAgent {
        addr: std::net::SocketAddr,
        seen: Arc<Mutex<Vec<String>>>,
    }

    impl FakeAgent {
        fn start(
            script: impl Fn(&str, &str) -> (u16, String, String) + Send + 'static,
        ) -> FakeAgent {
            use std::io::{BufRead, BufReader, Read, Write};
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().expect("addr");
            let seen = Arc::new(Mutex::new(Vec::new()));
            let log = seen.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(mut stream) = stream else { return };
                    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                    let mut line = String::new();
                    if reader.read_line(&mut line).is_err() {
                        continue;
                    }
                    let mut length = 0;
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    let _ = reader.read_exact(&mut body);
                    let target = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                    let method = line.split_whitespace().next().unwrap_or("").to_owned();
                    log.lock().expect("log").push(format!("{method} {target}"));
                    let (status, headers, answer) = script(
                        &method,
                        &format!("{target} {}", String::from_utf8_lossy(&body)),
                    );
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n{answer}",
                        answer.len()
                    );
                }
            });
            FakeAgent { addr, seen }
        }

        fn client(&self) -> Arc<Client> {
            let agent = meshgate_consul::Agent::new(&self.addr.to_string()).expect("agent");
            Arc::new(Client::new(agent).expect("client"))
        }

        fn seen(&self) -> Vec<String> {
            self.seen.lock().expect("log").clone()
        }

        fn wait_for(&self, what: &str, pred: impl Fn(&[String]) -> bool) -> Vec<String> {
            let end = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let seen = self.seen();
                if pred(&seen) {
                    return seen;
                }
                assert!(std::time::Instant::now() < end, "{what}: {seen:#?}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    fn metrics() -> Arc<ConsulMetrics> {
        ConsulMetrics::register(&prometheus::Registry::new()).expect("metrics")
    }

    #[test]
    fn registers_again_when_the_agent_forgets_and_leaves_by_maintenance_then_deregister() {
        let polls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let p = polls.clone();
        let agent = FakeAgent::start(move |method, target| {
            if target.starts_with("/v1/internal/acl/authorize") {
                return (401, String::new(), "ACL support disabled".into());
            }
            if method == "GET" && target.starts_with("/v1/agent/service/gw-a") {
                // Present, then forgotten once (an agent restart), then present with the same hash:
                // a blocking round that comes back unchanged.
                let n = p.fetch_add(1, Ordering::Relaxed);
                return if n == 1 {
                    (404, String::new(), "unknown service ID".into())
                } else {
                    std::thread::sleep(Duration::from_millis(if n > 2 { 200 } else { 0 }));
                    (
                        200,
                        "X-Consul-ContentHash: h1\r\n".into(),
                        "{\"ID\":\"gw-a\"}".into(),
                    )
                };
            }
            (200, String::new(), String::new())
        });
        let reg = registration(&config(""), true).expect("ok");
        let m = metrics();
        let r = Registrar::start(agent.client(), reg, m.clone(), Box::new(|| {})).expect("start");
        let seen = agent.wait_for("two registrations", |s| {
            s.iter()
                .filter(|l| l.starts_with("PUT /v1/agent/service/register"))
                .count()
                >= 2
        });
        assert!(
            seen[0].starts_with("POST /v1/internal/acl/authorize"),
            "{seen:?}"
        );
        agent.wait_for("registered again and watched", |_| m.registered.get() == 1);
        assert_eq!(m.registrations.get(), 2);
        r.begin_leaving();
        r.leave();
        let seen = agent.seen();
        let tail: Vec<&String> = seen
            .iter()
            .filter(|l| l.starts_with("PUT"))
            .skip(2)
            .collect();
        assert_eq!(tail.len(), 2, "{seen:#?}");
        assert!(
            tail[0].starts_with("PUT /v1/agent/service/maintenance/gw-a?enable=true"),
            "{tail:?}"
        );
        assert_eq!(tail[1], "PUT /v1/agent/service/deregister/gw-a");
        assert_eq!(m.registered.get(), 0);
        assert!(r.fatal().is_none());
    }

    /// Starts a registrar for `--register` against `agent`, waits (bounded) for it to call the runner's
    /// fatal hook, and returns why.
    fn fatal_reason(agent: &FakeAgent) -> String {
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = Mutex::new(tx);
        let r = Registrar::start(
            agent.client(),
            registration(&config(""), true).expect("ok"),
            metrics(),
            Box::new(move || {
                let _ = tx.lock().map(|t| t.send(()));
            }),
        )
        .expect("start");
        rx.recv_timeout(Duration::from_secs(10)).expect("fatal");
        r.fatal().expect("fatal message")
    }

    #[test]
    fn a_token_without_node_read_is_fatal_and_named() {
        let agent = FakeAgent::start(|_, target| {
            if target.starts_with("/v1/internal/acl/authorize") {
                let body = r#"[{"Resource":"service","Segment":"gw-a","Access":"write","Allow":true},
                    {"Resource":"service","Segment":"","Access":"read","Allow":true},
                    {"Resource":"node","Segment":"","Access":"read","Allow":false}]"#;
                return (200, String::new(), body.into());
            }
            (200, String::new(), String::new())
        });
        let why = fatal_reason(&agent);
        // Only what is missing is listed.
        assert!(
            why.starts_with("the consul token lacks node:read ("),
            "{why}"
        );
        // Nothing was registered with a token that cannot see the mesh.
        assert!(!agent.seen().iter().any(|l| l.contains("/register")));
    }

    #[test]
    fn a_refused_first_registration_is_fatal_and_names_the_permission() {
        let agent = FakeAgent::start(|_, target| {
            if target.starts_with("/v1/internal/acl/authorize") {
                return (401, String::new(), "ACL support disabled".into());
            }
            if target.starts_with("/v1/agent/service/register") {
                return (
                    403,
                    String::new(),
                    "Permission denied: Missing service:write on gw-a".into(),
                );
            }
            (200, String::new(), String::new())
        });
        let why = fatal_reason(&agent);
        assert!(why.contains("service:write on gw-a"), "{why}");
    }
}
