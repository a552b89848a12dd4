//! A Consul lab for tests and `meshgate demo --consul` (feature `lab`): real Consul 1.8 `-dev` agents on fresh loopback
//! ports, one datacenter or two joined over WAN, optionally with ACLs in default-deny mode, and the few
//! writes a test makes to them (services with sidecars, check flips, config entries, intentions, ACL
//! policies and tokens). Every test that talks to a real agent starts it here, so port races, readiness
//! and the ACL recipe are handled once.
//!
//! Readiness is waited for, never slept on: an agent is ready when it knows a leader and (in the primary
//! datacenter) its Connect CA answers with a root; with ACLs, when the master token is accepted. A
//! two-datacenter lab is ready when both sides list both datacenters and dc2 has the primary's trust
//! domain (its CA replicated from dc1).
//!
//! What `-dev` keeps across [`DevAgent::restart`]: **nothing**. The restarted agent is a new cluster on
//! the same ports: a new CA and trust domain, an empty catalog, no registered services, no config
//! entries or intentions. A gateway that outlives its agent must therefore register again (the
//! contract's hash-blocking watch on its own registration does that), and a test reads the trust
//! domain again after a restart. A production agent persists its services and Raft data, so there a
//! restart is gentler than here.
//!
//! The Consul binary: `MESHGATE_CONSUL`, else `<target>/tools/consul`, which
//! `scripts/install-consul.sh` installs on first use (Debian 11's package; needs apt and the network).
//! `MESHGATE_SKIP_CONSUL=1` lets a test skip itself ([`skip_requested`]).

use crate::model::{CaRoots, LeafCert, Service};
use crate::{Agent, Client, Request};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The ACL master token of a lab agent started with [`Options::acl`] (1.8's `acl.tokens.master`; it is
/// also the agent token, so the agent can sync its node and services under default deny).
pub const MASTER_TOKEN: &str = "3f1e7c52-58d6-4a43-9d3c-2b6f6f0c1a11";
/// Fresh ports are tried this many times: a port picked free can be taken before the agent binds it.
pub const START_ATTEMPTS: u32 = 3;
/// Bound on one agent's start (leader elected, CA root made, ACLs up).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a WAN join settling (both sides list both datacenters, dc2's CA replicated).
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How often readiness conditions are polled.
const POLL: Duration = Duration::from_millis(50);
/// Cap on the agent log quoted in an error: enough for the last few lines that say why.
const LOG_TAIL: usize = 4 << 10;

/// Why the lab could not do what a test asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// No Consul binary and it could not be installed.
    #[error("consul binary: {0}")]
    Binary(String),
    /// An agent did not start or become ready; the tail of its log says why.
    #[error("consul agent {name}: {what}\n--- agent log (tail) ---\n{log}")]
    Agent {
        /// `node@dc`.
        name: String,
        /// What went wrong.
        what: String,
        /// The end of the agent's log.
        log: String,
    },
    /// A condition did not hold within its bound.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// The condition.
        what: String,
        /// The bound.
        after: Duration,
    },
    /// An agent's answer lacked what the lab needs from it.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
    /// A call to an agent failed.
    #[error(transparent)]
    Consul(#[from] crate::Error),
    /// A local file or process operation failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A `Result` with [`LabError`].
pub type Result<T, E = LabError> = std::result::Result<T, E>;

/// Whether `MESHGATE_SKIP_CONSUL` asks tests against a real agent to skip (prints why when it does).
pub fn skip_requested() -> bool {
    let skip = std::env::var_os("MESHGATE_SKIP_CONSUL").is_some_and(|v| !v.is_empty());
    if skip {
        eprintln!("MESHGATE_SKIP_CONSUL set: skipping a test against a real Consul agent");
    }
    skip
}

/// Bound on installing Consul on first use (apt's download and unpacking).
const INSTALL_TIMEOUT_SECS: u32 = 300;

/// The Consul binary: `MESHGATE_CONSUL`, else `<target>/tools/consul` of the running test or binary,
/// installed on first use (bounded: 300 s).
pub fn consul_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("MESHGATE_CONSUL") {
        return Ok(PathBuf::from(p));
    }
    let tools = target_dir()?.join("tools");
    let bin = tools.join("consul");
    if !bin.exists() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/install-consul.sh");
        let status = Command::new("timeout")
            .arg(INSTALL_TIMEOUT_SECS.to_string())
            .arg(&script)
            .arg(&tools)
            .status()
            .map_err(|e| LabError::Binary(format!("{}: {e}", script.display())))?;
        if !status.success() || !bin.exists() {
            return Err(LabError::Binary(format!(
                "{} {} failed ({status}); set MESHGATE_CONSUL to a consul 1.8 binary",
                script.display(),
                tools.display()
            )));
        }
    }
    Ok(bin)
}

/// The cargo target directory of the running program: `CARGO_TARGET_DIR`, else the one above the
/// executable's profile directory: three levels up for a test (`<target>/<profile>/deps/<test>`), two
/// for a binary such as a benchmark (`<target>/<profile>/<bin>`; three would be the workspace itself,
/// where a Consul binary must not land). Also works for a shared target directory.
fn target_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        if dir.is_absolute() {
            return Ok(dir);
        }
    }
    let exe = std::env::current_exe()?;
    let in_deps = exe
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|d| d == "deps");
    exe.ancestors()
        .nth(if in_deps { 3 } else { 2 })
        .map(Path::to_path_buf)
        .ok_or_else(|| LabError::Binary(format!("no target directory above {}", exe.display())))
}

/// A loopback port that binds now, from below the kernel's ephemeral range (32768 and up by default).
/// A port the kernel hands out for `:0` comes from that range, where any process's outgoing connection
/// (an agent's, a gateway's upstream, a client) may take it before the listener it was picked for binds —
/// seen as a sidecar failing to bind its admin port while another test's process answered there. Below
/// it, only the tests' own listeners pick ports: one counter per process (the lab's agents and the
/// end-to-end tests' gateways share this one) keeps a port from being picked twice, and the start depends
/// on the process id so that two test processes start apart.
pub fn free_port() -> Result<u16> {
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let Ok(port) = u16::try_from(LOW + (start + n) % SPAN) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(LabError::Io(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free loopback port in {LOW}..{}", LOW + SPAN),
    )))
}

/// Polls `f` every 50 ms until it gives `Some`, for at most `limit` (and once more at the limit).
pub fn wait_until<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= end {
            return Err(LabError::Timeout {
                what: what.to_string(),
                after: limit,
            });
        }
        std::thread::sleep(POLL);
    }
}

/// How to start one agent.
#[derive(Debug, Clone)]
pub struct Options {
    /// Datacenter name.
    pub datacenter: String,
    /// Node name (distinct per agent: gossip refuses duplicates).
    pub node: String,
    /// `primary_datacenter`; `None` makes this datacenter its own primary.
    pub primary_datacenter: Option<String>,
    /// ACLs on, default deny, with [`MASTER_TOKEN`] as master and agent token (§7.2's deterministic
    /// recipe: no bootstrap call, the token is known before the agent starts).
    pub acl: bool,
    /// Extra HCL snippets passed with `-hcl`.
    pub hcl: Vec<String>,
}

impl Options {
    /// Datacenter `dc` with node `node-<dc>`, its own primary, no ACLs.
    pub fn dc(dc: &str) -> Options {
        Options {
            datacenter: dc.to_string(),
            node: format!("node-{dc}"),
            primary_datacenter: None,
            acl: false,
            hcl: Vec::new(),
        }
    }

    /// ACLs on in default-deny mode with [`MASTER_TOKEN`].
    pub fn acl(mut self) -> Options {
        self.acl = true;
        self
    }

    /// A secondary datacenter whose primary is `primary`.
    pub fn primary(mut self, primary: &str) -> Options {
        self.primary_datacenter = Some(primary.to_string());
        self
    }

    /// Adds an `-hcl` snippet.
    pub fn hcl(mut self, snippet: impl Into<String>) -> Options {
        self.hcl.push(snippet.into());
        self
    }

    fn is_primary(&self) -> bool {
        self.primary_datacenter
            .as_deref()
            .is_none_or(|p| p == self.datacenter)
    }

    fn name(&self) -> String {
        format!("{}@{}", self.node, self.datacenter)
    }
}

/// The ports one agent listens on (all on 127.0.0.1; DNS and gRPC are off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// HTTP API.
    pub http: u16,
    /// LAN gossip (TCP and UDP).
    pub serf_lan: u16,
    /// WAN gossip, the address another datacenter joins.
    pub serf_wan: u16,
    /// Server RPC.
    pub server: u16,
}

impl Ports {
    fn fresh() -> Result<Ports> {
        Ok(Ports {
            http: free_port()?,
            serf_lan: free_port()?,
            serf_wan: free_port()?,
            server: free_port()?,
        })
    }
}

/// Numbers lab directories within one test process.
static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// One `consul agent -dev`, killed (and its directory removed) on drop.
#[derive(Debug)]
pub struct DevAgent {
    bin: PathBuf,
    options: Options,
    ports: Ports,
    child: Option<Child>,
    dir: PathBuf,
    log: PathBuf,
    client: Client,
}

impl Drop for DevAgent {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl DevAgent {
    /// Starts an agent on fresh ports ([`START_ATTEMPTS`] times at most) and waits until it is ready.
    pub fn start(options: Options) -> Result<DevAgent> {
        let bin = consul_binary()?;
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            let ports = Ports::fresh()?;
            let mut agent = DevAgent::new(bin.clone(), options.clone(), ports)?;
            match agent.spawn_and_wait() {
                Ok(()) => return Ok(agent),
                // Another attempt on other ports; this one's log goes with the error if all fail.
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| LabError::Agent {
            name: options.name(),
            what: "never attempted".into(),
            log: String::new(),
        }))
    }

    fn new(bin: PathBuf, options: Options, ports: Ports) -> Result<DevAgent> {
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "meshgate-lab-{}-{n}-{}",
            std::process::id(),
            options.node
        ));
        std::fs::create_dir_all(&dir)?;
        let log = dir.join("consul.log");
        let mut agent = Agent::new(&format!("127.0.0.1:{}", ports.http))?;
        // Lab calls are local and small; a stuck agent should fail the test quickly.
        agent.request_timeout = Duration::from_secs(5);
        if options.acl {
            agent = agent.with_token(MASTER_TOKEN);
        }
        Ok(DevAgent {
            bin,
            options,
            ports,
            child: None,
            dir,
            log,
            client: Client::new(agent)?,
        })
    }

    fn spawn_and_wait(&mut self) -> Result<()> {
        self.spawn()?;
        let ready = self.wait_ready();
        if ready.is_err() {
            self.kill();
        }
        ready
    }

    fn spawn(&mut self) -> Result<()> {
        let out = File::options().create(true).append(true).open(&self.log)?;
        let err = out.try_clone()?;
        let p = self.ports;
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "agent",
            "-dev",
            "-bind",
            "127.0.0.1",
            "-client",
            "127.0.0.1",
        ])
        .args(["-datacenter", &self.options.datacenter])
        .args(["-node", &self.options.node])
        .args(["-dns-port", "-1", "-grpc-port", "-1"])
        .args(["-http-port", &p.http.to_string()])
        .args(["-serf-lan-port", &p.serf_lan.to_string()])
        .args(["-serf-wan-port", &p.serf_wan.to_string()])
        .args(["-server-port", &p.server.to_string()]);
        if let Some(primary) = &self.options.primary_datacenter {
            cmd.args(["-hcl", &format!("primary_datacenter = \"{primary}\"")]);
        }
        if self.options.acl {
            cmd.args([
                "-hcl",
                &format!(
                    "acl {{ enabled = true, default_policy = \"deny\", down_policy = \"extend-cache\", \
                     tokens {{ master = \"{MASTER_TOKEN}\", agent = \"{MASTER_TOKEN}\" }} }}"
                ),
            ]);
        }
        for snippet in &self.options.hcl {
            cmd.args(["-hcl", snippet]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| LabError::Binary(format!("{}: {e}", self.bin.display())))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until a leader is known, the CA answers (primary) and the master token works (ACLs). An
    /// agent that exits (a port taken) ends the wait at once.
    fn wait_ready(&mut self) -> Result<()> {
        let end = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(self.failure(format!("exited during start ({status})")));
            }
            if self.is_ready() {
                return Ok(());
            }
            if Instant::now() >= end {
                return Err(self.failure(format!("not ready within {START_TIMEOUT:?}")));
            }
            std::thread::sleep(POLL);
        }
    }

    fn is_ready(&self) -> bool {
        let leader: Option<String> = self.client.get_json("/v1/status/leader").ok();
        if leader.is_none_or(|l| l.is_empty()) {
            return false;
        }
        // A secondary's CA needs the primary: checked after the WAN join (TwoDcLab::start).
        if self.options.is_primary() && !self.roots().is_ok_and(|r| !r.roots.is_empty()) {
            return false;
        }
        // The master token exists once the leader has initialised ACLs.
        !self.options.acl || self.client.get_json::<Value>("/v1/acl/token/self").is_ok()
    }

    fn failure(&self, what: String) -> LabError {
        LabError::Agent {
            name: self.options.name(),
            what,
            log: self.log_tail(),
        }
    }

    /// The last few KiB of the agent's log (every start of it, appended).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(LOG_TAIL);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        text[start..].to_string()
    }

    /// Kills the agent (SIGKILL: an outage, not a leave) and reaps it. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the agent process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the agent if it runs and starts it again **on the same ports**, waiting until it is ready.
    /// `-dev` keeps nothing (see the module doc): a new trust domain, an empty catalog, and no WAN
    /// membership (join again with [`DevAgent::join_wan`]). A port taken meanwhile is retried for at
    /// most [`START_TIMEOUT`].
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        let end = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= end => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// The options it was started with.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Its ports.
    pub fn ports(&self) -> Ports {
        self.ports
    }

    /// Its HTTP API address.
    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.http))
    }

    /// Its datacenter.
    pub fn datacenter(&self) -> &str {
        &self.options.datacenter
    }

    /// Its node name.
    pub fn node(&self) -> &str {
        &self.options.node
    }

    /// A client for its HTTP API (with [`MASTER_TOKEN`] when ACLs are on).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A client without a token (the agent's default token, else anonymous).
    pub fn anonymous(&self) -> Result<Client> {
        let mut agent = self.client.agent().clone();
        agent.token = crate::TokenSource::None;
        Ok(Client::new(agent)?)
    }

    /// A client sending `token`.
    pub fn client_with_token(&self, token: &str) -> Result<Client> {
        Ok(Client::new(self.client.agent().clone().with_token(token))?)
    }

    /// `PUT path` with an optional JSON body; non-2xx is an error.
    pub fn put(&self, path: &str, body: Option<&Value>) -> Result<()> {
        let mut request = Request::put(path);
        if let Some(b) = body {
            request = request.json(b)?;
        }
        self.client.call(&request)?;
        Ok(())
    }

    /// `GET path` as JSON.
    pub fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        Ok(self.client.get_json(path)?)
    }

    /// The CA roots (`/v1/agent/connect/ca/roots`).
    pub fn roots(&self) -> Result<CaRoots> {
        self.get("/v1/agent/connect/ca/roots")
    }

    /// The trust domain of its CA (changes after a [`DevAgent::restart`]).
    pub fn trust_domain(&self) -> Result<String> {
        Ok(self.roots()?.trust_domain)
    }

    /// A leaf certificate for service `name` (`/v1/agent/connect/ca/leaf/<name>`).
    pub fn leaf(&self, name: &str) -> Result<LeafCert> {
        self.get(&format!("/v1/agent/connect/ca/leaf/{name}"))
    }

    /// `/v1/catalog/datacenters`, sorted (Consul orders it by round-trip time).
    pub fn datacenters(&self) -> Result<Vec<String>> {
        let mut dcs: Vec<String> = self.get("/v1/catalog/datacenters")?;
        dcs.sort();
        Ok(dcs)
    }

    /// The agent's local services by ID (`/v1/agent/services`).
    pub fn agent_services(&self) -> Result<BTreeMap<String, Service>> {
        self.get("/v1/agent/services")
    }

    /// Registers a service with the agent: `body` is the JSON of `PUT /v1/agent/service/register`.
    pub fn register(&self, body: &Value) -> Result<()> {
        self.put("/v1/agent/service/register", Some(body))
    }

    /// Registers `instance` with a Connect sidecar (`Connect.SidecarService`) whose only check is the
    /// TTL check [`Instance::check_id`], passing.
    pub fn register_with_sidecar(&self, instance: &Instance) -> Result<()> {
        self.register(&instance.with_sidecar_body())
    }

    /// Registers `instance`'s proxy as a `connect-proxy` service of its own (no parent registration),
    /// with the same TTL check.
    pub fn register_connect_proxy(&self, instance: &Instance) -> Result<()> {
        self.register(&instance.connect_proxy_body())
    }

    /// Deregisters service `id` (and a sidecar it registered). Unknown IDs are fine (Consul says 200).
    pub fn deregister(&self, id: &str) -> Result<()> {
        self.put(&format!("/v1/agent/service/deregister/{id}"), None)
    }

    /// Sets TTL check `check_id` passing.
    pub fn check_pass(&self, check_id: &str) -> Result<()> {
        self.put(&format!("/v1/agent/check/pass/{check_id}"), None)
    }

    /// Sets TTL check `check_id` warning.
    pub fn check_warn(&self, check_id: &str) -> Result<()> {
        self.put(&format!("/v1/agent/check/warn/{check_id}"), None)
    }

    /// Sets TTL check `check_id` critical.
    pub fn check_fail(&self, check_id: &str) -> Result<()> {
        self.put(&format!("/v1/agent/check/fail/{check_id}"), None)
    }

    /// Turns maintenance (a critical check) on or off for service `id`.
    pub fn maintenance(&self, id: &str, enable: bool) -> Result<()> {
        let request = Request::put(format!("/v1/agent/service/maintenance/{id}"))
            .query("enable", if enable { "true" } else { "false" })
            .query("reason", "meshgate lab");
        self.client.call(&request)?;
        Ok(())
    }

    /// `consul config write`: `PUT /v1/config` with the entry's JSON (`Kind`, `Name`, …).
    pub fn config_write(&self, entry: &Value) -> Result<()> {
        self.put("/v1/config", Some(entry))
    }

    /// Creates an intention `source → destination` (`allow` or `deny`); its ID.
    pub fn intention(&self, source: &str, destination: &str, action: &str) -> Result<String> {
        let created: Value = self.client.post_json(
            "/v1/connect/intentions",
            &json!({"SourceName": source, "DestinationName": destination, "Action": action}),
        )?;
        Ok(created["ID"].as_str().unwrap_or_default().to_string())
    }

    /// Creates ACL policy `name` with `rules` (HCL). Retried while the ACL system is still settling.
    pub fn create_policy(&self, name: &str, rules: &str) -> Result<()> {
        let body = json!({"Name": name, "Rules": rules});
        wait_until(START_TIMEOUT, &format!("ACL policy {name}"), || {
            self.client.put_json("/v1/acl/policy", &body).ok()
        })?;
        Ok(())
    }

    /// Creates a token with the named policies; its secret.
    pub fn create_token(&self, policies: &[&str]) -> Result<String> {
        let policies: Vec<Value> = policies.iter().map(|p| json!({"Name": p})).collect();
        let token: Value = self
            .client
            .call(
                &Request::put("/v1/acl/token")
                    .json(&json!({"Description": "meshgate lab", "Policies": policies}))?,
            )?
            .json("/v1/acl/token")?;
        token["SecretID"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| LabError::Unexpected(format!("no SecretID in {token}")))
    }

    /// Joins `other` over WAN (`consul join -wan`).
    pub fn join_wan(&self, other: &DevAgent) -> Result<()> {
        let request = Request::put(format!("/v1/agent/join/127.0.0.1:{}", other.ports.serf_wan))
            .query("wan", "1");
        self.client.call(&request)?;
        Ok(())
    }
}

/// A service instance with a sidecar, as a test registers it.
#[derive(Debug, Clone)]
pub struct Instance {
    /// Service name.
    pub name: String,
    /// Instance ID (the sidecar's is `<id>-sidecar-proxy`).
    pub id: String,
    /// The application's port (nothing needs to listen there: only the sidecar is dialled).
    pub port: u16,
    /// The sidecar's port: what a gateway routes to.
    pub sidecar_port: u16,
    /// Tags (the sidecar inherits them).
    pub tags: Vec<String>,
    /// Meta (the sidecar inherits it; resolver subsets filter on it).
    pub meta: BTreeMap<String, String>,
}

impl Instance {
    /// Instance `id` of `name` whose sidecar listens on `sidecar_port`.
    pub fn new(name: &str, id: &str, sidecar_port: u16) -> Instance {
        Instance {
            name: name.to_string(),
            id: id.to_string(),
            port: 1,
            sidecar_port,
            tags: Vec::new(),
            meta: BTreeMap::new(),
        }
    }

    /// Adds a meta entry.
    pub fn meta(mut self, key: &str, value: &str) -> Instance {
        self.meta.insert(key.to_string(), value.to_string());
        self
    }

    /// Adds a tag.
    pub fn tag(mut self, tag: &str) -> Instance {
        self.tags.push(tag.to_string());
        self
    }

    /// The sidecar's service ID.
    pub fn sidecar_id(&self) -> String {
        format!("{}-sidecar-proxy", self.id)
    }

    /// The sidecar's TTL check (flip it with [`DevAgent::check_fail`] / [`DevAgent::check_pass`]).
    pub fn check_id(&self) -> String {
        format!("{}-sidecar-ttl", self.id)
    }

    fn ttl_check(&self) -> Value {
        // A TTL check flips at once on request; Consul's default sidecar checks (TCP every 10 s and an
        // alias) would make health changes as slow as their interval. Giving a check replaces them.
        json!({"CheckID": self.check_id(), "Name": "sidecar ttl", "TTL": "10m", "Status": "passing"})
    }

    /// `PUT /v1/agent/service/register` body with `Connect.SidecarService`.
    pub fn with_sidecar_body(&self) -> Value {
        json!({
            "Name": self.name, "ID": self.id, "Port": self.port, "Address": "127.0.0.1",
            "Tags": self.tags, "Meta": self.meta,
            "Connect": {"SidecarService": {
                "Port": self.sidecar_port, "Address": "127.0.0.1", "Checks": [self.ttl_check()]
            }}
        })
    }

    /// `PUT /v1/agent/service/register` body of the proxy alone, `Kind: connect-proxy`.
    pub fn connect_proxy_body(&self) -> Value {
        json!({
            "Kind": "connect-proxy", "Name": format!("{}-sidecar-proxy", self.name),
            "ID": self.sidecar_id(), "Port": self.sidecar_port, "Address": "127.0.0.1",
            "Tags": self.tags, "Meta": self.meta,
            "Proxy": {"DestinationServiceName": self.name, "DestinationServiceID": self.id,
                      "LocalServiceAddress": "127.0.0.1", "LocalServicePort": self.port},
            "Check": self.ttl_check()
        })
    }
}

/// A `PUT /v1/agent/service/register` body for service `name` (ID = name) whose application listens on
/// `app_port`, with a `Connect.SidecarService` on `sidecar_port` forwarding to it, these `upstreams`
/// (Consul's JSON: `DestinationName`, `Datacenter`, `LocalBindPort`, `MeshGateway`…), and a passing TTL
/// check in place of Consul's default sidecar checks (a TCP check would wait for its interval).
pub fn sidecar_registration(
    name: &str,
    app_port: u16,
    sidecar_port: u16,
    upstreams: Value,
) -> Value {
    json!({
        "Name": name, "ID": name, "Port": app_port, "Address": "127.0.0.1",
        "Connect": {"SidecarService": {
            "Port": sidecar_port, "Address": "127.0.0.1",
            "Checks": [{"CheckID": format!("{name}-sidecar-ttl"), "Name": "ttl", "TTL": "24h", "Status": "passing"}],
            "Proxy": {"LocalServiceAddress": "127.0.0.1", "LocalServicePort": app_port, "Upstreams": upstreams}
        }}
    })
}

/// dc1 (primary) and dc2 (`primary_datacenter = "dc1"`) joined over WAN, both ready.
#[derive(Debug)]
pub struct TwoDcLab {
    /// The primary datacenter's agent.
    pub dc1: DevAgent,
    /// The secondary datacenter's agent.
    pub dc2: DevAgent,
}

impl TwoDcLab {
    /// Starts both agents (concurrently), joins dc1 to dc2 over WAN and waits until each lists both
    /// datacenters and dc2's CA carries dc1's trust domain, for at most [`JOIN_TIMEOUT`] after the
    /// start.
    pub fn start() -> Result<TwoDcLab> {
        let (dc1, dc2) = std::thread::scope(|s| {
            let dc2 = s.spawn(|| DevAgent::start(Options::dc("dc2").primary("dc1")));
            let dc1 = DevAgent::start(Options::dc("dc1"));
            let dc2 = dc2
                .join()
                .unwrap_or_else(|_| Err(LabError::Binary("the dc2 start thread panicked".into())));
            (dc1, dc2)
        });
        let lab = TwoDcLab {
            dc1: dc1?,
            dc2: dc2?,
        };
        lab.dc1.join_wan(&lab.dc2)?;
        let both = ["dc1".to_string(), "dc2".to_string()];
        wait_until(
            JOIN_TIMEOUT,
            "both datacenters listed on both sides",
            || {
                (lab.dc1.datacenters().ok()? == both && lab.dc2.datacenters().ok()? == both)
                    .then_some(())
            },
        )?;
        let td = lab.dc1.trust_domain()?;
        wait_until(JOIN_TIMEOUT, "dc2's CA replicated from dc1", || {
            lab.dc2
                .roots()
                .ok()
                .filter(|r| !r.roots.is_empty() && r.trust_domain == td)
        })
        .map_err(|e| LabError::Agent {
            name: lab.dc2.options.name(),
            what: e.to_string(),
            log: lab.dc2.log_tail(),
        })?;
        Ok(lab)
    }

    /// The trust domain both datacenters share.
    pub fn trust_domain(&self) -> Result<String> {
        self.dc1.trust_domain()
    }
}
