//! meshgate gateways run beside the Consul lab's agents (`meshgate_consul::lab`), for the tests that
//! put meshgate in a real Consul mesh: the binary with `[consul]`, self-registration and the shipped
//! `consul-catalog` plugin, and its admin endpoint read back (readiness, routes, metrics).

use super::{free_port, metric, wait_for, DumpOnPanic, Proc, TempDir};
use meshgate_consul::lab::DevAgent;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

/// Bound on a gateway's first table from Consul (`/ready` 200).
pub const READY: Duration = Duration::from_secs(20);
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `[catalog] plugin`: the shipped `consul-catalog`, or the component `MESHGATE_TEST_CATALOG_PLUGIN`
/// names (a plugin build not shipped yet, run through these tests before it is).
pub fn catalog_plugin() -> String {
    std::env::var("MESHGATE_TEST_CATALOG_PLUGIN").unwrap_or_else(|_| "consul-catalog".to_owned())
}

/// How a gateway registers itself with its agent.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Register {
    /// `meshgate gateway --register` (addresses from the first `listen`).
    Flag,
    /// A `[consul.register]` section with a separate WAN listener.
    ConfigWithWan,
}

/// One `meshgate gateway` run beside a lab agent.
pub struct MeshGw {
    pub proc: Proc,
    /// The LAN address (first `listen`).
    pub listen: SocketAddr,
    /// The WAN address: a second listener with [`Register::ConfigWithWan`], else `listen`.
    pub wan: SocketAddr,
    pub admin: SocketAddr,
    _dir: TempDir,
}

impl MeshGw {
    /// Writes the config and starts the binary without waiting for readiness.
    pub fn spawn(agent: &DevAgent, register: Register, token: Option<&str>, extra: &str) -> MeshGw {
        MeshGw::spawn_as("mesh-gateway", agent, register, token, extra)
    }

    /// [`MeshGw::spawn`] for a gateway registered as service `name` (a second gateway on one agent
    /// needs a name of its own: the ID is the name).
    pub fn spawn_as(
        name: &str,
        agent: &DevAgent,
        register: Register,
        token: Option<&str>,
        extra: &str,
    ) -> MeshGw {
        let dc = agent.datacenter();
        let listen = loopback(free_port());
        let wan = match register {
            Register::Flag => listen,
            Register::ConfigWithWan => loopback(free_port()),
        };
        let admin = loopback(free_port());
        let dir = TempDir::new(&format!("consul-mesh-{dc}"));
        let listeners = if wan == listen {
            format!("\"{listen}\"")
        } else {
            format!("\"{listen}\", \"{wan}\"")
        };
        let token = token.map_or(String::new(), |t| format!("token = \"{t}\"\n"));
        let register_section = match register {
            Register::Flag => String::new(),
            Register::ConfigWithWan => format!(
                "\n[consul.register]\nservice = \"{name}\"\naddress = \"{listen}\"\nwan_address = \"{wan}\"\n"
            ),
        };
        let config = dir.0.join("gateway.toml");
        std::fs::write(
            &config,
            format!(
                "[gateway]\nname = \"{name}\"\ndatacenter = \"{dc}\"\nlisten = [{listeners}]\n\
                 admin = \"{admin}\"\nworkers = 1\n{extra}\n\n\
                 [consul]\naddress = \"{}\"\n{token}{register_section}\n\
                 [catalog]\nplugin = \"{}\"\n",
                agent.http_addr(),
                catalog_plugin()
            ),
        )
        .expect("write config");
        let bin = env!("CARGO_BIN_EXE_meshgate");
        let config = config.display().to_string();
        // `env -u`: the config alone says where the agent is and which token to use, whatever the
        // test runner's environment holds. `env` execs meshgate, so the pid is the gateway's.
        let mut argv = vec!["env"];
        for var in [
            "CONSUL_HTTP_ADDR",
            "CONSUL_HTTP_TOKEN",
            "CONSUL_HTTP_TOKEN_FILE",
            "CONSUL_HTTP_SSL",
            "CONSUL_CACERT",
            "CONSUL_CLIENT_CERT",
            "CONSUL_CLIENT_KEY",
            "CONSUL_TLS_SERVER_NAME",
        ] {
            argv.extend(["-u", var]);
        }
        argv.extend([bin, "gateway", "--config", &config]);
        if register == Register::Flag {
            argv.push("--register");
        }
        MeshGw {
            proc: Proc::start_in("meshgate", None, &argv),
            listen,
            wan,
            admin,
            _dir: dir,
        }
    }

    /// [`MeshGw::spawn`], then waits until `/ready` is 200 (the first catalog became a table).
    pub fn start(agent: &DevAgent, register: Register, token: Option<&str>, extra: &str) -> MeshGw {
        MeshGw::start_as("mesh-gateway", agent, register, token, extra)
    }

    /// [`MeshGw::start`] for a gateway registered as service `name`.
    pub fn start_as(
        name: &str,
        agent: &DevAgent,
        register: Register,
        token: Option<&str>,
        extra: &str,
    ) -> MeshGw {
        let mut gw = MeshGw::spawn_as(name, agent, register, token, extra);
        let dump = DumpOnPanic::new(&[&gw.proc]);
        wait_for(READY, "gateway /ready 200", || {
            if let Some(status) = gw.proc.exited() {
                panic!("gateway exited early: {status}");
            }
            (gw.ready() == Some(200)).then_some(())
        });
        drop(dump);
        gw
    }

    /// `GET path` on the admin endpoint: status and body.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&self.admin, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let status = out.split_whitespace().nth(1)?.parse().ok()?;
        let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
        Some((status, body))
    }

    /// `/ready`'s status, if the admin endpoint answers.
    pub fn ready(&self) -> Option<u16> {
        self.get("/ready").map(|(status, _)| status)
    }

    /// The route table: pattern → endpoints (every group).
    pub fn routes(&self) -> BTreeMap<String, Vec<SocketAddr>> {
        let Some((200, body)) = self.get("/routes") else {
            return BTreeMap::new();
        };
        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let mut out = BTreeMap::new();
        for route in json["routes"].as_array().into_iter().flatten() {
            let endpoints = route["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["endpoints"].as_array().into_iter().flatten())
                .filter_map(|e| e.as_str()?.parse().ok())
                .collect();
            if let Some(pattern) = route["pattern"].as_str() {
                out.insert(pattern.to_owned(), endpoints);
            }
        }
        out
    }

    /// Endpoints of route `pattern` (empty when it is not in the table).
    pub fn endpoints(&self, pattern: &str) -> Vec<SocketAddr> {
        self.routes().remove(pattern).unwrap_or_default()
    }

    /// Waits (at most `limit`) until `pattern`'s endpoints, sorted, satisfy `want`; how long it took.
    pub fn wait_route(
        &self,
        pattern: &str,
        limit: Duration,
        want: impl Fn(&[SocketAddr]) -> bool,
    ) -> Duration {
        let started = Instant::now();
        wait_for(limit, &format!("route {pattern}"), || {
            let mut eps = self.endpoints(pattern);
            eps.sort();
            want(&eps).then_some(())
        });
        started.elapsed()
    }

    /// The admin `/metrics` text.
    pub fn metrics(&self) -> String {
        self.get("/metrics").map(|(_, b)| b).unwrap_or_default()
    }

    /// The first sample of `series` (name with labels, or a bare name), as a float; 0 if absent.
    pub fn gauge(&self, series: &str) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0)
    }

    /// Sum of `meshgate_consul_requests_total` over every endpoint and outcome.
    pub fn consul_requests(&self) -> u64 {
        metric(&self.metrics(), "meshgate_consul_requests_total", &[])
    }

    pub fn term(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.proc.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits (at most `limit`) for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        wait_for(limit, "gateway exit", || self.proc.exited())
    }
}
