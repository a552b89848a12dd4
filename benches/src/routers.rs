//! Starting the routers under test as child processes, each an SNI passthrough router in front of the
//! same backend: meshgate, HAProxy (`req_ssl_sni`), nginx (`ssl_preread`), sniproxy — and the direct
//! path. Every process is killed by PID on drop; CPU and memory are read from /proc for the whole process
//! tree (nginx and HAProxy fork workers).

use crate::common::{admin_get, admin_ready, free_addr, meshgate_bin};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// No router: clients connect to the backend.
    Direct,
    /// meshgate with splice relay, access log on (its default), written to a file.
    Meshgate,
    /// meshgate with splice relay and no access log (`warn`): what the access log costs.
    MeshgateNoLog,
    /// meshgate with the buffered relay.
    MeshgateBuffered,
    /// meshgate with `balance = "kernel"`: each connection stays on the core SO_REUSEPORT chose (rows
    /// with more than one worker only).
    MeshgateKernelBalance,
    /// HAProxy in TCP mode with `req_ssl_sni`.
    Haproxy,
    /// nginx stream module with `ssl_preread`.
    Nginx,
    /// sniproxy.
    Sniproxy,
}

impl Kind {
    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Meshgate => "meshgate",
            Kind::MeshgateNoLog => "meshgate (no access log)",
            Kind::MeshgateBuffered => "meshgate (buffered)",
            Kind::MeshgateKernelBalance => "meshgate (balance kernel)",
            Kind::Haproxy => "HAProxy",
            Kind::Nginx => "nginx",
            Kind::Sniproxy => "sniproxy",
        }
    }
}

/// A running router.
pub struct Router {
    /// Which.
    pub kind: Kind,
    /// Where clients connect.
    pub addr: SocketAddr,
    child: Option<Child>,
    dir: Option<PathBuf>,
    admin: Option<SocketAddr>,
}

/// What can be asked of a running router from a client thread when an operation fails: its counters
/// (meshgate's admin endpoint) and what its threads are blocked in.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    listen: SocketAddr,
    admin: Option<SocketAddr>,
    pid: Option<u32>,
}

impl Probe {
    /// One line: meshgate's connection counters, who listens on the router's port, the router's epoll
    /// sets and io_uring queues, and each of its threads with its state and kernel wait channel.
    pub fn describe(self) -> String {
        let mut out = String::new();
        if let Some(admin) = self.admin {
            let body = admin_get(admin, "/metrics")
                .unwrap_or_else(|e| format!("metrics unavailable: {e}"));
            for line in body.lines().filter(|l| {
                [
                    "meshgate_downstream_connections_",
                    "meshgate_client_hello_total",
                    "meshgate_upstream_connect_",
                    "meshgate_connections_closed_total",
                    "meshgate_accept_",
                ]
                .iter()
                .any(|p| l.starts_with(p))
            }) {
                let _ = write!(out, "{line}; ");
            }
        }
        // Every process listening on the router's port (SO_REUSEPORT lets several share one).
        if let Ok(o) = Command::new("ss")
            .args(["-Hltnp", &format!("sport = :{}", self.listen.port())])
            .output()
        {
            let _ = write!(
                out,
                "listening: {} ",
                String::from_utf8_lossy(&o.stdout).trim()
            );
        }
        if let Some(pid) = self.pid {
            // Each epoll set of the router: the descriptors in it and the events each is armed for.
            let fds = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
                .into_iter()
                .flatten();
            for f in fds.flatten() {
                let info = std::fs::read_to_string(f.path()).unwrap_or_default();
                let items: Vec<String> = info
                    .lines()
                    .filter(|l| l.starts_with("tfd:"))
                    .map(|l| {
                        let w: Vec<&str> = l.split_whitespace().collect();
                        format!("{}:{}", w.get(1).unwrap_or(&"?"), w.get(3).unwrap_or(&"?"))
                    })
                    .collect();
                if !items.is_empty() {
                    let _ = write!(
                        out,
                        "epoll fd {} (fd:events) {} ",
                        f.file_name().to_string_lossy(),
                        items.join(",")
                    );
                }
                // Each io_uring: its queue positions and the polls armed in it. A core asleep with
                // no poll on its epoll set (only glommio's ring link) has work queued in user space.
                if info.contains("CqHead:") {
                    let field = |k: &str| {
                        info.lines()
                            .find_map(|l| l.strip_prefix(k))
                            .map_or("?", str::trim)
                            .to_owned()
                    };
                    let polls: Vec<&str> = info
                        .lines()
                        .filter_map(|l| l.trim().strip_prefix("op="))
                        .map(|l| l.split(',').next().unwrap_or("?"))
                        .collect();
                    let _ = write!(
                        out,
                        "io_uring fd {} sq {}/{} cq {}/{} armed ops [{}] ",
                        f.file_name().to_string_lossy(),
                        field("SqHead:"),
                        field("SqTail:"),
                        field("CqHead:"),
                        field("CqTail:"),
                        polls.join(",")
                    );
                }
            }
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten();
            for t in tasks.flatten() {
                let path = t.path();
                let read = |f: &str| std::fs::read_to_string(path.join(f)).unwrap_or_default();
                let stat = read("stat");
                let state = stat
                    .rsplit(") ")
                    .next()
                    .and_then(|r| r.split(' ').next())
                    .unwrap_or("?")
                    .to_owned();
                let _ = write!(
                    out,
                    "[{} {} {}] ",
                    read("comm").trim(),
                    state,
                    read("wchan").trim()
                );
            }
        }
        out
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let pid = c.id();
            // Workers first (nginx, HAProxy), then the parent.
            for child in descendants(pid) {
                let _ = Command::new("kill")
                    .args(["-KILL", &child.to_string()])
                    .status();
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Options for starting a router.
pub struct Spec<'a> {
    /// SNI routed to the backend.
    pub sni: &'a str,
    /// The backend.
    pub backend: SocketAddr,
    /// Worker threads / processes.
    pub workers: usize,
    /// meshgate only: extra exact routes (`svcN.bench.example`) and wildcard routes to add.
    pub extra_routes: usize,
    /// meshgate only: a `[hook]` section to add (TOML), e.g. the shipped sni-denylist.
    pub hook: Option<&'a str>,
}

impl Router {
    /// The direct path.
    pub fn direct(backend: SocketAddr) -> Router {
        Router {
            kind: Kind::Direct,
            addr: backend,
            child: None,
            dir: None,
            admin: None,
        }
    }

    /// Starts `kind` and waits until it accepts connections (bounded).
    pub fn start(kind: Kind, spec: &Spec<'_>) -> Router {
        if kind == Kind::Direct {
            return Router::direct(spec.backend);
        }
        let listen = free_addr();
        let dir = std::env::temp_dir().join(format!(
            "meshgate-bench-{}-{}",
            std::process::id(),
            listen.port()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let (sni, backend, workers) = (spec.sni, spec.backend, spec.workers);
        let mut ready_probe: Option<SocketAddr> = None;
        let child = match kind {
            Kind::Meshgate
            | Kind::MeshgateNoLog
            | Kind::MeshgateBuffered
            | Kind::MeshgateKernelBalance => {
                let admin = free_addr();
                ready_probe = Some(admin);
                let relay = if kind != Kind::MeshgateBuffered {
                    "splice"
                } else {
                    "buffered"
                };
                let balance = if kind == Kind::MeshgateKernelBalance {
                    "kernel"
                } else {
                    "connections"
                };
                let mut text = format!(
                    "[gateway]\nlisten = [\"{listen}\"]\nadmin = \"{admin}\"\nworkers = {workers}\nrelay = \"{relay}\"\nbalance = \"{balance}\"\nmax_connections = 400000\n\n[[routes]]\nsni = \"{sni}\"\nendpoints = [\"{backend}\"]\n"
                );
                // Half exact names, half wildcards, none matching the benchmark's SNI.
                for i in 0..spec.extra_routes {
                    if i % 2 == 0 {
                        let _ = write!(text, "[[routes]]\nsni = \"svc{i}.bench.example\"\nendpoints = [\"{backend}\"]\n");
                    } else {
                        let _ = write!(text, "[[routes]]\nsni = \"*.zone{i}.bench.example\"\nendpoints = [\"{backend}\"]\n");
                    }
                }
                if let Some(hook) = spec.hook {
                    text.push_str(hook);
                }
                let config = dir.join("gateway.toml");
                std::fs::write(&config, text).expect("write config");
                // The access log as deployed: one line per connection at `info`, to a file (a
                // collector reading stderr costs the router the same writes).
                let level = if kind == Kind::MeshgateNoLog {
                    "warn"
                } else {
                    "info"
                };
                let log = std::fs::File::create(dir.join("gateway.log")).expect("log file");
                Command::new(meshgate_bin())
                    .args(["gateway", "--config"])
                    .arg(&config)
                    .env("MESHGATE_LOG", level)
                    .stdin(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .unwrap_or_else(|e| {
                        panic!(
                            "start {}: {e} (cargo build --release)",
                            meshgate_bin().display()
                        )
                    })
            }
            Kind::Haproxy => {
                let config = dir.join("haproxy.cfg");
                std::fs::write(
                    &config,
                    format!(
                        "global\n  maxconn 9000\n  nbthread {workers}\n\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n\nfrontend fe\n  bind {listen}\n  tcp-request inspect-delay 10s\n  tcp-request content accept if {{ req_ssl_hello_type 1 }}\n  use_backend be if {{ req_ssl_sni -i {sni} }}\n\nbackend be\n  server s1 {backend}\n"
                    ),
                )
                .expect("write config");
                Command::new("haproxy")
                    .arg("-db")
                    .arg("-f")
                    .arg(&config)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start haproxy (apt-get install haproxy)")
            }
            Kind::Nginx => {
                let config = dir.join("nginx.conf");
                std::fs::write(
                    &config,
                    format!(
                        "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\nworker_processes {workers};\nworker_rlimit_nofile 20000;\ndaemon off;\npid {pid};\nerror_log {err} error;\nevents {{ worker_connections 9000; }}\nstream {{\n  map_hash_bucket_size 256;\n  map $ssl_preread_server_name $up {{ {sni} backend; default reject; }}\n  upstream backend {{ server {backend}; }}\n  upstream reject {{ server 127.0.0.1:1; }}\n  server {{ listen {listen} reuseport; ssl_preread on; proxy_pass $up; proxy_timeout 1h; proxy_half_close on; }}\n}}\n",
                        pid = dir.join("nginx.pid").display(),
                        err = dir.join("error.log").display(),
                    ),
                )
                .expect("write config");
                Command::new("nginx")
                    .arg("-p")
                    .arg(&dir)
                    .arg("-c")
                    .arg(&config)
                    .arg("-e")
                    .arg(dir.join("error.log"))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start nginx (apt-get install nginx-light libnginx-mod-stream)")
            }
            Kind::Sniproxy => {
                let config = dir.join("sniproxy.conf");
                // sniproxy matches table entries as regular expressions; the name's dots match themselves too.
                let pattern = sni;
                std::fs::write(
                    &config,
                    format!(
                        "user root\npidfile {pid}\nerror_log {{\n  filename {err}\n  priority error\n}}\nlistener {ip} {port} {{\n  protocol tls\n  table t\n}}\ntable t {{\n  {pattern} {bip} {bport}\n}}\n",
                        pid = dir.join("sniproxy.pid").display(),
                        err = dir.join("error.log").display(),
                        ip = listen.ip(),
                        port = listen.port(),
                        bip = backend.ip(),
                        bport = backend.port(),
                    ),
                )
                .expect("write config");
                Command::new("sniproxy")
                    .arg("-f")
                    .arg("-c")
                    .arg(&config)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start sniproxy (apt-get install sniproxy)")
            }
            Kind::Direct => unreachable!("handled above"),
        };
        let router = Router {
            kind,
            addr: listen,
            child: Some(child),
            dir: Some(dir),
            admin: ready_probe,
        };
        // Large route tables take a while to parse: allow a second per 10k routes on top.
        let deadline =
            Instant::now() + Duration::from_secs(20 + (spec.extra_routes / 10_000) as u64);
        loop {
            let ready = match ready_probe {
                Some(admin) => admin_ready(admin),
                None => std::net::TcpStream::connect(listen).is_ok(),
            };
            if ready {
                break;
            }
            if Instant::now() >= deadline {
                let log = router
                    .dir
                    .as_ref()
                    .and_then(|d| std::fs::read_to_string(d.join("error.log")).ok())
                    .unwrap_or_default();
                panic!("{} did not start: {log}", kind.name());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        router
    }

    /// How to look inside the router when something fails.
    pub fn probe(&self) -> Probe {
        Probe {
            listen: self.addr,
            admin: self.admin,
            pid: self.child.as_ref().map(Child::id),
        }
    }

    /// PIDs of the router's processes (parent and workers).
    pub fn pids(&self) -> Vec<u32> {
        match &self.child {
            Some(c) => {
                let mut v = vec![c.id()];
                v.extend(descendants(c.id()));
                v
            }
            None => Vec::new(),
        }
    }

    /// CPU time of all its processes and threads so far, in nanoseconds; `None` for the direct path.
    pub fn cpu_ns(&self) -> Option<u64> {
        self.child.as_ref()?;
        Some(
            self.pids()
                .into_iter()
                .map(|p| crate::procfs::tasks_cpu_ns(&format!("/proc/{p}")))
                .sum(),
        )
    }

    /// Context switches of all its threads so far (voluntary: went to sleep; involuntary: preempted);
    /// `None` for the direct path.
    pub fn switches(&self) -> Option<u64> {
        self.child.as_ref()?;
        Some(
            self.pids()
                .into_iter()
                .map(|p| crate::procfs::tasks_switches(&format!("/proc/{p}")))
                .sum(),
        )
    }

    /// Resident memory of all its processes, in bytes.
    pub fn rss_bytes(&self) -> Option<u64> {
        self.child.as_ref()?;
        Some(
            self.pids()
                .into_iter()
                .filter_map(|p| {
                    let status = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
                    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
                    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
                    Some(kb * 1024)
                })
                .sum(),
        )
    }
}

/// Every process whose ancestry leads to `pid`.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
            if let Some(ppid) = after
                .split_whitespace()
                .nth(1)
                .and_then(|x| x.parse::<u32>().ok())
            {
                parent_of.push((p, ppid));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for &(child, parent) in &parent_of {
            if parent == p {
                out.push(child);
                frontier.push(child);
            }
        }
    }
    out
}
