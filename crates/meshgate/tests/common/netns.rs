//! Network namespaces for the multi-datacenter tests: making and deleting them, running code and
//! polling admin endpoints inside them, and skipping (or saying plainly what is missing) without root.

use super::net::http_get;
use super::process::sh;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `f` on a thread inside network namespace `ns` (a name under /var/run/netns) and returns its
/// result. Sockets made there stay in that namespace, whichever thread uses them later.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("namespace thread")
}

/// True when this process runs as root (network namespaces, dropping privileges).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}

/// How long the namespace tests wait for a process inside a namespace to get somewhere.
pub const NETNS_WAIT: Duration = Duration::from_secs(15);

/// True when the namespace tests should not run (`MESHGATE_SKIP_NETNS` set); otherwise requires root and
/// each of `tools`, saying plainly what is missing instead of failing on the first `ip` call.
pub fn skip_netns(tools: &[&str]) -> bool {
    if std::env::var_os("MESHGATE_SKIP_NETNS").is_some() {
        eprintln!("MESHGATE_SKIP_NETNS set: skipping the namespace tests");
        return true;
    }
    assert!(
        is_root(),
        "the namespace tests need root (CI runs as root); set MESHGATE_SKIP_NETNS=1 to skip them"
    );
    for tool in tools {
        let found = Command::new(tool).arg("-V").output().is_ok()
            || Command::new(tool).arg("--version").output().is_ok();
        assert!(
            found,
            "the namespace tests need `{tool}` (apt-get install iproute2 tcpdump; .ci/run does); set MESHGATE_SKIP_NETNS=1 to skip them"
        );
    }
    false
}

/// A network namespace with its loopback up, made by the test (a stale one of the same name is
/// replaced) and deleted on drop, which removes its interfaces too.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Polls an admin endpoint inside `ns` until `ok` accepts its body (at most [`NETNS_WAIT`]); returns it.
pub fn wait_admin(
    ns: &str,
    admin: &str,
    path: &str,
    what: &str,
    ok: impl Fn(&str) -> bool + Send + 'static,
) -> String {
    let (ns, admin, path, what) = (
        ns.to_owned(),
        admin.to_owned(),
        path.to_owned(),
        what.to_owned(),
    );
    in_ns(&ns.clone(), move || {
        let addr: SocketAddr = admin.parse().expect("admin address");
        let deadline = Instant::now() + NETNS_WAIT;
        let mut last = None;
        loop {
            if let Some(body) = http_get(addr, &path) {
                if ok(&body) {
                    return body;
                }
                last = Some(body);
            }
            assert!(
                Instant::now() < deadline,
                "{ns} {admin}{path}: never {what}; last: {last:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}
