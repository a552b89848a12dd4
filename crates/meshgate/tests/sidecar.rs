//! `meshgate sidecar` on loopback: certificate rotation, new and removed upstreams, and intention changes
//! all apply without a restart, while a connection opened before them keeps working.

mod common;

use common::{
    free_port, http_get, issue_leaf, line_app, meshgate_ok, metric, poll_until, sidecar_toml,
    wait_for, Proc, TempDir, TD,
};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

/// Write-then-rename, so a poller never sees half a file.
fn put(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// A connection from the web application through an upstream port.
struct Conn(BufReader<TcpStream>);

impl Conn {
    fn open(port: u16) -> Conn {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect upstream");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Conn(BufReader::new(s))
    }
    /// One round trip; `None` when the mesh closed the connection.
    fn ask(&mut self, line: &str) -> Option<String> {
        self.0
            .get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .ok()?;
        let mut answer = String::new();
        self.0.read_line(&mut answer).ok()?;
        (!answer.is_empty()).then(|| answer.trim().to_owned())
    }
}

fn web_hcl(public: u16, upstreams: &[u16]) -> String {
    let ups: Vec<String> = upstreams
        .iter()
        .map(|p| format!("{{ destination_name = \"api\", local_bind_port = {p} }}"))
        .collect();
    format!(
        "service {{\n  name = \"web\"\n  port = 1\n  connect {{ sidecar_service {{\n    address = \"127.0.0.1\"\n    port = {public}\n    proxy {{ upstreams = [{}] }}\n  }} }}\n}}\n",
        ups.join(", ")
    )
}

/// web and api sidecars on loopback (one datacenter), api behind an allow intention for web.
struct Mesh {
    dir: TempDir,
    api: Proc,
    _web: Proc,
    api_admin: SocketAddr,
    web_public: u16,
    up1: u16,
    up2: u16,
}

impl Mesh {
    fn d(&self, rel: &str) -> String {
        self.dir.0.join(rel).display().to_string()
    }

    fn start(tag: &str, extra_sidecar: &str) -> Mesh {
        let dir = TempDir::new(tag);
        let d = |rel: &str| dir.0.join(rel).display().to_string();
        meshgate_ok(&["ca", "init", "--trust-domain", TD, "--out", &d("ca")]);
        for svc in ["web", "api"] {
            issue_leaf(&d("ca"), svc, "dc1", &d(&format!("certs/{svc}")));
        }
        let app = line_app("api: ");
        let (web_public, api_public, up1, up2) =
            (free_port(), free_port(), free_port(), free_port());
        let (web_admin, api_admin) = (
            SocketAddr::from(([127, 0, 0, 1], free_port())),
            SocketAddr::from(([127, 0, 0, 1], free_port())),
        );
        put(&dir.0.join("catalog/web.hcl"), &web_hcl(web_public, &[up1]));
        put(
            &dir.0.join("catalog/api.hcl"),
            &format!("service {{\n  name = \"api\"\n  port = {app}\n  connect {{ sidecar_service {{\n    address = \"127.0.0.1\"\n    port = {api_public}\n  }} }}\n}}\n"),
        );
        put(&dir.0.join("catalog/intentions.hcl"), ALLOW);
        for (svc, admin) in [("web", web_admin), ("api", api_admin)] {
            put(
                &dir.0.join(format!("{svc}.toml")),
                &sidecar_toml(
                    svc,
                    "dc1",
                    &admin.to_string(),
                    "catalog",
                    TD,
                    "deny",
                    extra_sidecar,
                ),
            );
        }
        let bin = env!("CARGO_BIN_EXE_meshgate");
        let api = Proc::start_in(
            "api sidecar",
            None,
            &[bin, "sidecar", "--config", &d("api.toml")],
        );
        let web = Proc::start_in(
            "web sidecar",
            None,
            &[bin, "sidecar", "--config", &d("web.toml")],
        );
        for (admin, side) in [(api_admin, &api), (web_admin, &web)] {
            // A sidecar that never gets ready says why in its log (it failed once on CI, 15 s).
            let ready = poll_until(WAIT, || {
                http_get(admin, "/ready").filter(|b| b.starts_with("ready"))
            });
            assert!(
                ready.is_some(),
                "timed out waiting for sidecar ready; its log:\n{}",
                side.log()
            );
        }
        Mesh {
            dir,
            api,
            _web: web,
            api_admin,
            web_public,
            up1,
            up2,
        }
    }
}

const ALLOW: &str =
    "Kind = \"service-intentions\"\nName = \"api\"\nSources = [{ Name = \"web\", Action = \"allow\" }]\n";

#[test]
fn sighup_keeps_serving_and_sigterm_exits() {
    let mut mesh = Mesh::start("sidecar-signals", "");
    let pid = mesh.api.pid().to_string();
    let kill = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
    };
    kill("-HUP");
    mesh.api.wait_log(&["SIGHUP"]);
    assert_eq!(
        Conn::open(mesh.up1).ask("after HUP").as_deref(),
        Some("api: after HUP")
    );
    kill("-TERM");
    mesh.api.wait_log(&["shutting down"]);
    assert!(mesh.api.wait_exit().success());
}

#[test]
fn idle_connections_are_closed() {
    let mesh = Mesh::start("sidecar-idle", "idle_timeout_secs = 1\n");
    let mut conn = Conn::open(mesh.up1);
    assert_eq!(conn.ask("hello").as_deref(), Some("api: hello"));
    let quiet = std::time::Instant::now();
    // Nothing moves: a sidecar closes the connection after a second (the read timeout is 10 s).
    let mut rest = String::new();
    let n = conn.0.read_line(&mut rest).expect("closed, not timed out");
    assert_eq!(n, 0, "EOF expected, got {rest:?}");
    assert!(
        quiet.elapsed() >= Duration::from_millis(900),
        "{:?}",
        quiet.elapsed()
    );
}

#[test]
fn changes_apply_live_and_connections_continue() {
    let mesh = Mesh::start("sidecar", "");
    let (dir, api, api_admin, web_public, up1, up2) = (
        &mesh.dir,
        &mesh.api,
        mesh.api_admin,
        mesh.web_public,
        mesh.up1,
        mesh.up2,
    );
    let d = |rel: &str| mesh.d(rel);
    let allow = ALLOW;
    let expiry = || {
        let m = http_get(api_admin, "/metrics").unwrap_or_default();
        metric(
            &m,
            "meshgate_sidecar_certificate_expiry_timestamp_seconds",
            &[],
        )
    };

    // A connection opened before every change below.
    let mut live = Conn::open(up1);
    assert_eq!(live.ask("one").as_deref(), Some("api: one"));

    // 1. api's certificate is reissued (1 h instead of 72 h): loaded without a restart.
    let before = expiry();
    meshgate_ok(&[
        "ca",
        "issue",
        "--ca",
        &d("ca"),
        "--service",
        "api",
        "--datacenter",
        "dc1",
        "--hours",
        "1",
        "--out",
        &d("certs/api"),
    ]);
    wait_for(WAIT, "new api certificate", || {
        (expiry() + 3600 * 60 < before).then_some(())
    });
    assert_eq!(
        Conn::open(up1).ask("after rotation").as_deref(),
        Some("api: after rotation")
    );
    assert_eq!(live.ask("two").as_deref(), Some("api: two"));

    // 2. A new upstream gets its listener; a removed one loses it.
    put(
        &dir.0.join("catalog/web.hcl"),
        &web_hcl(web_public, &[up1, up2]),
    );
    let mut second = wait_for(WAIT, "second upstream listening", || {
        TcpStream::connect(("127.0.0.1", up2)).ok()
    });
    second.write_all(b"via the new upstream\n").expect("write");
    let mut answer = String::new();
    BufReader::new(&second)
        .read_line(&mut answer)
        .expect("read");
    assert_eq!(answer.trim(), "api: via the new upstream");
    put(&dir.0.join("catalog/web.hcl"), &web_hcl(web_public, &[up1]));
    wait_for(WAIT, "second upstream closed", || {
        TcpStream::connect(("127.0.0.1", up2))
            .is_err()
            .then_some(())
    });
    assert_eq!(live.ask("three").as_deref(), Some("api: three"));

    // 3. The intention goes away: api's default (deny) refuses new callers, with a log line; the live
    // connection, authorised when it began, continues.
    std::fs::remove_file(dir.0.join("catalog/intentions.hcl")).expect("rm");
    wait_for(WAIT, "intention gone", || {
        http_get(api_admin, "/routes").filter(|b| !b.contains("\"allow\""))
    });
    assert_eq!(Conn::open(up1).ask("refused"), None);
    let line = api.wait_log(&["connection denied by intention", "default policy"]);
    assert!(
        line.contains(&format!("spiffe://{TD}/ns/default/dc/dc1/svc/web")),
        "{line}"
    );
    assert_eq!(live.ask("four").as_deref(), Some("api: four"));
    put(&dir.0.join("catalog/intentions.hcl"), allow);
    wait_for(WAIT, "intention back", || {
        http_get(api_admin, "/routes").filter(|b| b.contains("\"allow\""))
    });
    assert_eq!(
        Conn::open(up1).ask("allowed again").as_deref(),
        Some("api: allowed again")
    );
}

#[test]
fn over_max_connections_a_connection_waits_in_the_backlog_until_one_closes() {
    // One connection at a time through web's sidecar (its whole budget, inbound and outbound).
    let mesh = Mesh::start("sidecar-limit", "max_connections = 1\n");
    let mut first = Conn::open(mesh.up1);
    assert_eq!(first.ask("one").as_deref(), Some("api: one"));
    // The second is accepted by the kernel only: nothing is relayed while the first is open.
    let second = TcpStream::connect(("127.0.0.1", mesh.up1)).expect("queued in the backlog");
    second
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut second = Conn(BufReader::new(second));
    second.0.get_mut().write_all(b"two\n").expect("write");
    let mut early = String::new();
    let waited = second.0.read_line(&mut early);
    assert!(
        matches!(&waited, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
        "served over the limit: {waited:?} {early:?}"
    );
    // Closing the first frees the permit: the queued connection is served, its bytes intact.
    drop(first);
    second
        .0
        .get_ref()
        .set_read_timeout(Some(WAIT))
        .expect("timeout");
    let mut answer = String::new();
    second
        .0
        .read_line(&mut answer)
        .expect("served once the first closed");
    assert_eq!(answer.trim(), "api: two");
}
