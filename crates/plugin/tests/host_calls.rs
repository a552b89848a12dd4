//! Issue 11, items 3 and 4, against real wasmtime: every host call a plugin makes is bounded by the
//! call's deadline (a FIFO in a granted directory, an HTTP origin that drips), and granted HTTP is a
//! request the host builds (no CR/LF smuggling, no other origin: nothing reaches the server).

use meshgate_plugin::types::Catalog;
use meshgate_plugin::{Grants, PluginError, PluginHost, RouterPlugin, Sandbox};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> Self {
        let d =
            std::env::temp_dir().join(format!("meshgate-plugin-hc-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("mkdir");
        TempDir(d)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn testbed(host: &PluginHost, deadline: Duration, grants: Grants) -> RouterPlugin {
    let component = host
        .compile(meshgate_plugin::TESTBED)
        .expect("compile testbed");
    let sandbox = Sandbox {
        deadline,
        memory: 16 << 20,
        grants,
    };
    host.router_from("testbed".into(), component, sandbox)
        .expect("instantiate")
}

fn call(p: &mut RouterPlugin, pairs: &[(&str, &str)]) -> Result<(), PluginError> {
    let settings: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let catalog = Catalog {
        trust_domain: "11111111-2222-3333-4444-555555555555.consul".into(),
        instances: vec![],
        config_entries: vec![],
    };
    p.gateway_routes(&settings, &catalog, "dc1").map(|_| ())
}

/// Runs one plugin call on its own thread and waits for it at most `bound`: a call that blocks in the
/// host fails the test instead of hanging it.
fn within(
    bound: Duration,
    mut p: RouterPlugin,
    pairs: &'static [(&'static str, &'static str)],
) -> (Result<(), PluginError>, Duration) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let started = Instant::now();
        let r = call(&mut p, pairs);
        let _ = tx.send((r, started.elapsed()));
    });
    match rx.recv_timeout(bound) {
        Ok(done) => done,
        Err(_) => panic!(
            "the plugin call did not return within {bound:?}: a host call escaped its deadline"
        ),
    }
}

fn is_deadline(e: &PluginError) -> bool {
    matches!(e, PluginError::Deadline { .. }) || e.to_string().contains("deadline")
}

#[test]
fn a_fifo_in_a_granted_directory_is_refused_within_the_deadline() {
    let dir = TempDir::new("fifo");
    std::fs::create_dir_all(dir.0.join("allowed")).expect("mkdir");
    let fifo = dir.0.join("allowed/web.hcl");
    // No writer ever opens it: a blocking open for reading would wait forever.
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(status.success(), "mkfifo failed");
    let host = PluginHost::new().expect("host");
    let deadline = Duration::from_millis(500);
    let grants = Grants {
        base: dir.0.clone(),
        dirs: vec![PathBuf::from("allowed")],
        ..Grants::default()
    };
    let p = testbed(&host, deadline, grants);
    let (r, took) = within(
        deadline + Duration::from_secs(2),
        p,
        &[("behaviour", "read"), ("path", "allowed/web.hcl")],
    );
    let e = r.expect_err("a FIFO is not read");
    assert!(e.to_string().contains("not a regular file"), "{e}");
    assert!(took < deadline + Duration::from_secs(2), "took {took:?}");
}

/// A server that accepts one connection, reads the request head, then answers one byte every 300 ms
/// for up to 30 s (or until the client goes away).
fn dripping_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let answer = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nslow body ...........................................................";
        for byte in answer.iter().take(100) {
            if s.write_all(&[*byte]).is_err() {
                return;
            }
            // The drip is the misbehaviour under test, not synchronisation.
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    addr
}

#[test]
fn a_dripping_http_origin_fails_the_call_at_its_deadline() {
    let addr = dripping_server();
    let host = PluginHost::new().expect("host");
    let dir = TempDir::new("drip");
    let deadline = Duration::from_millis(1000);
    let grants = Grants {
        base: dir.0.clone(),
        origins: vec![format!("http://{addr}")],
        ..Grants::default()
    };
    let p = testbed(&host, deadline, grants);
    let url: &'static str = Box::leak(format!("http://{addr}/v1/catalog").into_boxed_str());
    let pairs: &'static [(&str, &str)] = Box::leak(Box::new([("behaviour", "http"), ("url", url)]));
    let (r, took) = within(deadline + Duration::from_secs(2), p, pairs);
    let e = r.expect_err("the drip outlasts the deadline");
    assert!(is_deadline(&e), "{e}");
    assert!(took < deadline + Duration::from_secs(2), "took {took:?}");
}

#[test]
fn granted_http_is_a_request_the_host_builds() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let host = PluginHost::new().expect("host");
    let dir = TempDir::new("smuggle");
    let grants = Grants {
        base: dir.0.clone(),
        origins: vec![format!("http://{addr}")],
        ..Grants::default()
    };
    let mut p = testbed(&host, Duration::from_secs(1), grants);
    let port = addr.port();
    let refused = [
        // The smuggle: a pipelined PUT with an injected token header behind a GET-only grant.
        format!(
            "http://{addr}/v1/catalog HTTP/1.1\r\nHost: x\r\n\r\nPUT /v1/agent/service/deregister/web HTTP/1.1\r\nX-Consul-Token: stolen\r\n\r\n"
        ),
        format!("http://{addr}/v1/catalog\r\nX-Consul-Token: stolen"),
        format!("http://{addr}/v1/cat\nalog"),
        format!("http://{addr}/v1/cat alog"),
        format!("http://{addr}/v1/cat\u{0}alog"),
        format!("http://{addr}/v1/cat\u{7f}alog"),
        format!("http://{addr}/v1/catalog?q=%zz"),
        format!("http://{addr}/v1/catalog?q=%4"),
        format!("http://{addr}/v1/catalog#frag"),
        format!("http://{addr}/v1/caté"),
        // Other origins, or the granted one in disguise.
        format!("http://localhost:{port}/v1/catalog"),
        format!("http://127.0.0.1:{}/v1/catalog", port.wrapping_add(1)),
        format!("http://user@{addr}/v1/catalog"),
        format!("http://{addr}@127.0.0.2:{port}/v1/catalog"),
        format!("https://{addr}/v1/catalog"),
        format!("HTTP://{addr}\r\n/v1/catalog"),
        "http://127.0.0.1/v1/catalog".to_string(),
        format!("http://{addr}:80/v1/catalog"),
    ];
    for url in &refused {
        let e = call(&mut p, &[("behaviour", "http"), ("url", url)]).expect_err(url);
        assert!(matches!(e, PluginError::Refused { .. }), "{url:?}: {e}");
    }
    // Nothing reached the server: the connect would be queued on the listener by now.
    listener.set_nonblocking(true).expect("nonblocking");
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Ok((_, peer)) => panic!("a refused URL reached the server (from {peer})"),
        Err(e) => panic!("accept: {e}"),
    }
    listener.set_nonblocking(false).expect("blocking");

    // A well-formed URL (percent-encoding included) goes out as exactly the request the host builds.
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\nok");
        String::from_utf8_lossy(&head).into_owned()
    });
    let url = format!("http://{addr}/v1/health/service/web%2Dapi?dc=dc1&passing=1");
    call(&mut p, &[("behaviour", "http"), ("url", &url)]).expect("well-formed URL");
    let head = server.join().expect("server");
    assert_eq!(
        head,
        format!(
            "GET /v1/health/service/web%2Dapi?dc=dc1&passing=1 HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: meshgate\r\nConnection: close\r\n\r\n"
        )
    );
}
