//! End-to-end tests of `meshgate gateway`: the real binary, real TLS backends with distinct certificates
//! (rustls), real clients that verify them, all on loopback.

mod common;

use common::*;
use meshgate_sni::synth::{refragment, HelloSpec};
use meshgate_tlskit::{Backend, Pki};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

fn sni(svc: &str, dc: &str) -> String {
    format!("{svc}.default.{dc}.internal.{TD}")
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

/// A backend named `name` whose certificate covers `names`.
fn backend(pki: &Pki, name: &str, names: &[&str]) -> Backend {
    Backend::start(name, any_port(), pki.issue(names).expect("issue")).expect("backend")
}

fn route(pattern: &str, endpoints: &[SocketAddr]) -> String {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "[[routes]]\nsni = \"{pattern}\"\nendpoints = [{}]\n",
        eps.join(", ")
    )
}

#[test]
fn routes_by_sni_to_servers_with_distinct_certificates() {
    let pki = Pki::new("test CA").expect("ca");
    let api_name = sni("api", "dc1");
    let api = backend(&pki, "api", &[&api_name]);
    let dc2 = backend(
        &pki,
        "dc2-gateway",
        &[&format!("*.default.dc2.internal.{TD}")],
    );
    let gw = Gateway::start(
        "",
        &format!(
            "{}{}",
            route(&api_name, &[api.addr()]),
            route(&format!("*.dc2.internal.{TD}"), &[dc2.addr()])
        ),
    );
    let client = pki.client_config(&["h2", "http/1.1"]).expect("client");

    // Exact route; the client verified api's certificate for this name.
    let answer = meshgate_tlskit::hello(gw.listen, &api_name, client.clone()).expect("api");
    assert_eq!(answer, format!("backend=api sni={api_name} alpn=h2"));

    // Wildcard route, any number of labels before the suffix.
    let web2 = sni("web", "dc2");
    let answer = meshgate_tlskit::hello(gw.listen, &web2, client.clone()).expect("dc2");
    assert_eq!(answer, format!("backend=dc2-gateway sni={web2} alpn=h2"));

    // Mixed-case SNI is normalised by the gateway (the backend sees what the client sent).
    let upper = api_name.to_uppercase();
    let answer = meshgate_tlskit::hello(gw.listen, &upper, client.clone()).expect("upper");
    assert!(answer.starts_with("backend=api "), "{answer}");

    // Sending api's name to the dc2 backend would fail verification: the gateway is what picked api.
    assert!(meshgate_tlskit::hello(dc2.addr(), &api_name, client).is_err());

    gw.wait_metric("meshgate_client_hello_total{outcome=\"ok\"}", 3.0);
    gw.wait_metric(
        &format!("meshgate_routed_connections_total{{route=\"*.dc2.internal.{TD}\"}}"),
        1.0,
    );
    gw.wait_metric(
        "meshgate_destination_connections_total{datacenter=\"dc1\",namespace=\"default\",service=\"api\"}",
        2.0,
    );
    let routes = gw.get("/routes").expect("routes");
    assert!(routes.contains(&api_name), "{routes}");
}

#[test]
fn bad_hellos_are_closed_and_counted() {
    let pki = Pki::new("test CA").expect("ca");
    let api_name = sni("api", "dc1");
    let api = backend(&pki, "api", &[&api_name]);
    let gw = Gateway::start("", &route(&api_name, &[api.addr()]));

    // Unknown SNI: a real TLS client is cut off.
    let client = pki.client_config(&[]).expect("client");
    assert!(meshgate_tlskit::hello(gw.listen, &sni("nope", "dc1"), client).is_err());
    // No SNI, not TLS, SSLv2, oversized, two host names.
    assert!(closed_after_sending(
        gw.listen,
        &HelloSpec::new(None).build()
    ));
    assert!(closed_after_sending(
        gw.listen,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    ));
    assert!(closed_after_sending(
        gw.listen,
        &[0x80, 0x2e, 0x01, 0x03, 0x01]
    ));
    let big = HelloSpec::new(Some(&api_name)).padding(20_000).build();
    assert!(closed_after_sending(gw.listen, &big));
    let two = HelloSpec::new(Some(&api_name))
        .extra_host_name("b.example")
        .build();
    assert!(closed_after_sending(gw.listen, &two));

    for (outcome, n) in [
        ("no_sni", 1.0),
        ("not_tls", 1.0),
        ("sslv2", 1.0),
        ("too_large", 1.0),
        ("multiple_host_names", 1.0),
    ] {
        gw.wait_metric(
            &format!("meshgate_client_hello_total{{outcome=\"{outcome}\"}}"),
            n,
        );
    }
    gw.wait_metric(
        "meshgate_connections_closed_total{reason=\"no_route\"}",
        2.0,
    );
    gw.wait_metric(
        "meshgate_connections_closed_total{reason=\"hello_failed\"}",
        4.0,
    );
    // The gateway still serves.
    let client = pki.client_config(&[]).expect("client");
    assert!(meshgate_tlskit::hello(gw.listen, &api_name, client).is_ok());
}

#[test]
fn slow_hello_hits_the_total_deadline() {
    let (capture, _rx) = capture_server(1);
    let gw = Gateway::start("hello_timeout_ms = 300", &route("a.example", &[capture]));
    let hello = HelloSpec::new(Some("a.example")).build();
    let mut s = TcpStream::connect(gw.listen).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // Half a hello, then nothing: the deadline covers the whole hello, not each read.
    s.write_all(&hello[..hello.len() / 2]).expect("write");
    let mut buf = [0u8; 8];
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    gw.wait_metric("meshgate_client_hello_total{outcome=\"timeout\"}", 1.0);
}

#[test]
fn multi_record_hello_is_forwarded_verbatim() {
    let hello = HelloSpec::new(Some("pq.example"))
        .post_quantum()
        .padding(400)
        .build();
    let split = refragment(&hello, &[100, 700]).expect("refragment");
    let (capture, rx) = capture_server(split.len() + 5);
    let gw = Gateway::start("", &route("pq.example", &[capture]));
    let mut s = TcpStream::connect(gw.listen).expect("connect");
    // In three writes, with bytes after the hello that must follow it unchanged.
    let mut stream = split.clone();
    stream.extend_from_slice(b"after");
    s.write_all(&stream[..50]).expect("write");
    s.flush().expect("flush");
    s.write_all(&stream[50..900]).expect("write");
    s.write_all(&stream[900..]).expect("write");
    let got = rx.recv_timeout(Duration::from_secs(10)).expect("captured");
    assert_eq!(got, stream);
}

#[test]
fn hundred_concurrent_clients() {
    let pki = Pki::new("test CA").expect("ca");
    let name = sni("api", "dc1");
    let a = backend(&pki, "a", &[&name]);
    let b = backend(&pki, "b", &[&name]);
    let gw = Gateway::start("", &route(&name, &[a.addr(), b.addr()]));
    let client = pki.client_config(&[]).expect("client");
    let listen = gw.listen;
    let barrier = Arc::new(std::sync::Barrier::new(100));
    let threads: Vec<_> = (0..100)
        .map(|i| {
            let client = client.clone();
            let name = name.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut tls = meshgate_tlskit::connect(listen, &name, client).expect("connect");
                tls.write_all(b"HELLO\n").expect("hello");
                let mut reader = BufReader::new(tls);
                let mut line = String::new();
                reader.read_line(&mut line).expect("answer");
                // All 100 are open at once here.
                barrier.wait();
                let msg = format!("client {i}\n");
                reader.get_mut().write_all(msg.as_bytes()).expect("write");
                let mut echo = String::new();
                reader.read_line(&mut echo).expect("echo");
                assert_eq!(echo, msg);
                line
            })
        })
        .collect();
    let mut per_backend = [0; 2];
    for t in threads {
        let line = t.join().expect("client thread");
        per_backend[usize::from(line.starts_with("backend=b "))] += 1;
    }
    assert_eq!(per_backend[0] + per_backend[1], 100);
    assert!(
        per_backend[0] > 10 && per_backend[1] > 10,
        "{per_backend:?}"
    );
    gw.wait_metric(
        &format!(
            "meshgate_downstream_connections_total{{listener=\"{}\"}}",
            gw.listen
        ),
        100.0,
    );
}

fn bulk_through(relay: &str, bytes: u64) {
    let pki = Pki::new("test CA").expect("ca");
    let name = sni("bulk", "dc1");
    let b = backend(&pki, "bulk", &[&name]);
    let gw = Gateway::start(&format!("relay = \"{relay}\""), &route(&name, &[b.addr()]));
    let client = pki.client_config(&[]).expect("client");
    let r = meshgate_tlskit::bulk(gw.listen, &name, client, bytes, bytes).expect("bulk");
    assert_eq!(r.sent, r.backend_received, "upstream direction corrupted");
    assert_eq!(r.received_len, bytes);
    assert!(r.received_intact, "downstream direction corrupted");
    gw.wait_metric(
        "meshgate_bytes_total{direction=\"to_upstream\"}",
        bytes as f64,
    );
    gw.wait_metric(
        "meshgate_bytes_total{direction=\"to_downstream\"}",
        bytes as f64,
    );
    gw.wait_metric(
        "meshgate_connections_closed_total{reason=\"completed\"}",
        1.0,
    );
}

/// 100 MiB each way through splice, with the client half-closing before the backend answers.
#[test]
fn bulk_100_mib_each_way_with_half_close_splice() {
    bulk_through("splice", 100 << 20);
}

#[test]
fn bulk_with_half_close_buffered() {
    bulk_through("buffered", 16 << 20);
}

#[test]
fn failover_to_next_endpoint_and_group() {
    let pki = Pki::new("test CA").expect("ca");
    let name = sni("api", "dc1");
    let live = backend(&pki, "live", &[&name]);
    let other = sni("db", "dc1");
    let spare = backend(&pki, "spare", &[&other]);
    let gw = Gateway::start(
        "",
        &format!(
            "{}[[routes]]\nsni = \"{other}\"\nendpoints = [\"{}\"]\nfailover = [[\"{}\"]]\n",
            route(&name, &[dead_addr(), live.addr()]),
            dead_addr(),
            spare.addr()
        ),
    );
    let client = pki.client_config(&[]).expect("client");
    for _ in 0..4 {
        let a =
            meshgate_tlskit::hello(gw.listen, &name, client.clone()).expect("failover in group");
        assert!(a.starts_with("backend=live "), "{a}");
    }
    let a = meshgate_tlskit::hello(gw.listen, &other, client).expect("failover to group 2");
    assert!(a.starts_with("backend=spare "), "{a}");
    gw.wait_metric("meshgate_upstream_connect_failures_total", 3.0);
}

/// A listener whose accept queue is full, and the connection that fills it: the kernel drops the SYNs
/// of further connects, which stay connecting.
fn full_listener() -> (socket2::Socket, std::net::TcpStream) {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    listener
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    // A backlog of 0 queues one connection.
    listener.listen(0).expect("listen");
    let addr = listener
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("inet");
    let filler = std::net::TcpStream::connect(addr).expect("fill the queue");
    (listener, filler)
}

#[test]
fn an_upstream_still_connecting_is_waited_for_until_the_connect_timeout() {
    // The ClientHello is sent right after connect when the connect has already ended; here it has
    // not, so the send is refused and the gateway waits for the connect, gives up at the route's
    // connect timeout and takes the next endpoint.
    let pki = Pki::new("test CA").expect("ca");
    let name = sni("api", "dc1");
    let live = backend(&pki, "live", &[&name]);
    let (full, _filler) = full_listener();
    let full = full.local_addr().expect("addr").as_socket().expect("inet");
    let gw = Gateway::start(
        "",
        &format!(
            "{}connect_timeout_ms = 300
",
            route(&name, &[full, live.addr()])
        ),
    );
    let client = pki.client_config(&[]).expect("client");
    for _ in 0..4 {
        let a = meshgate_tlskit::hello(gw.listen, &name, client.clone()).expect("next endpoint");
        assert!(a.starts_with("backend=live "), "{a}");
    }
    gw.wait_metric("meshgate_upstream_connect_timeouts_total", 1.0);
}

#[test]
fn all_endpoints_down_closes_and_counts() {
    let gw = Gateway::start("", &route("down.example", &[dead_addr(), dead_addr()]));
    assert!(closed_after_sending(
        gw.listen,
        &HelloSpec::new(Some("down.example")).build()
    ));
    gw.wait_metric(
        "meshgate_connections_closed_total{reason=\"upstream_unavailable\"}",
        1.0,
    );
    gw.wait_metric("meshgate_upstream_connect_failures_total", 2.0);
}

#[test]
fn idle_connections_time_out() {
    let pki = Pki::new("test CA").expect("ca");
    let name = sni("api", "dc1");
    let b = backend(&pki, "api", &[&name]);
    let gw = Gateway::start("idle_timeout_secs = 1", &route(&name, &[b.addr()]));
    let client = pki.client_config(&[]).expect("client");
    let mut tls = meshgate_tlskit::connect(gw.listen, &name, client).expect("connect");
    tls.write_all(b"HELLO\n").expect("write");
    let mut reader = BufReader::new(tls);
    let mut line = String::new();
    reader.read_line(&mut line).expect("answer");
    // Now silent: the gateway closes after one idle second.
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    gw.wait_metric(
        "meshgate_connections_closed_total{reason=\"idle_timeout\"}",
        1.0,
    );
}

#[test]
fn sighup_reload_swaps_routes_and_keeps_live_connections() {
    let pki = Pki::new("test CA").expect("ca");
    let name = sni("api", "dc1");
    let old = backend(&pki, "old", &[&name]);
    let new = backend(&pki, "new", &[&name]);
    let gw = Gateway::start("", &route(&name, &[old.addr()]));
    let client = pki.client_config(&[]).expect("client");

    let mut live = meshgate_tlskit::connect(gw.listen, &name, client.clone()).expect("connect");
    live.write_all(b"HELLO\n").expect("hello");
    let mut live = BufReader::new(live);
    let mut line = String::new();
    live.read_line(&mut line).expect("answer");
    assert!(line.starts_with("backend=old "));

    // A broken file is refused; the old table keeps serving.
    std::fs::write(
        &gw.config,
        "[gateway]\nlisten = [\"127.0.0.1:1\"]\nbogus = 1\n",
    )
    .expect("write");
    gw.signal("HUP");
    gw.wait_metric("meshgate_config_reloads_total{result=\"failed\"}", 1.0);
    let a = meshgate_tlskit::hello(gw.listen, &name, client.clone()).expect("still routed");
    assert!(a.starts_with("backend=old "), "{a}");

    gw.rewrite("", &route(&name, &[new.addr()]));
    gw.signal("HUP");
    gw.wait_metric("meshgate_config_reloads_total{result=\"ok\"}", 1.0);
    let a = meshgate_tlskit::hello(gw.listen, &name, client).expect("new route");
    assert!(a.starts_with("backend=new "), "{a}");

    // The connection opened before both reloads still talks to the old backend.
    live.get_mut().write_all(b"still here\n").expect("write");
    let mut echo = String::new();
    live.read_line(&mut echo).expect("echo");
    assert_eq!(echo, "still here\n");
}

#[test]
fn sigterm_drains_live_connections_then_exits_zero() {
    let pki = Pki::new("test CA").expect("ca");
    let name = sni("api", "dc1");
    let b = backend(&pki, "api", &[&name]);
    let mut gw = Gateway::start(
        "drain_timeout_secs = 20\ndrain_grace_ms = 5000",
        &route(&name, &[b.addr()]),
    );
    let client = pki.client_config(&[]).expect("client");
    let mut live = meshgate_tlskit::connect(gw.listen, &name, client.clone()).expect("connect");
    live.write_all(b"HELLO\n").expect("hello");
    let mut live = BufReader::new(live);
    let mut line = String::new();
    live.read_line(&mut line).expect("answer");

    gw.signal("TERM");
    // First not ready, while the listener still accepts and routes (peers and load balancers get the
    // grace period to notice; a connection that arrives meanwhile is served, not reset).
    wait_for(Duration::from_secs(4), "readiness 503", || {
        http_get(gw.admin, "/ready")
            .filter(|r| r == "not ready\n")
            .map(|_| ())
    });
    let mut late =
        meshgate_tlskit::connect(gw.listen, &name, client).expect("accepted during the grace");
    late.write_all(b"HELLO\n").expect("late hello");
    let mut late = BufReader::new(late);
    let mut answer = String::new();
    late.read_line(&mut answer).expect("late answer");
    assert!(answer.starts_with("backend=api "), "{answer}");
    drop(late);
    // Then the listener closes; the live connection keeps working.
    wait_for(Duration::from_secs(10), "listener closed", || {
        TcpStream::connect(gw.listen).is_err().then_some(())
    });
    let payload = vec![b'x'; 1 << 20];
    let tls = live.get_mut();
    tls.write_all(&payload).expect("write during drain");
    tls.write_all(b"\n").expect("newline");
    let mut echo = Vec::new();
    live.read_until(b'\n', &mut echo)
        .expect("echo during drain");
    assert_eq!(echo.len(), payload.len() + 1);
    // Closing the last connection lets the process finish well before the drain timeout.
    drop(live);
    let status = gw.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status}");
}

#[test]
fn check_command_reports_file_line_and_field() {
    let dir = TempDir::new("check");
    let good = dir.0.join("good.toml");
    std::fs::write(&good, "[gateway]\nlisten = [\"127.0.0.1:8443\"]\n\n[[routes]]\nsni = \"a.example\"\nendpoints = [\"127.0.0.1:1\"]\n").expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .arg("check")
        .arg(&good)
        .output()
        .expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("route a.example"));

    let bad = dir.0.join("bad.toml");
    std::fs::write(&bad, "[gateway]\nlisten = [\"127.0.0.1:8443\"]\n\n[[routes]]\nsni = \"a.*.example\"\nendpoints = [\"127.0.0.1:1\"]\n").expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .arg("check")
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:5:7: routes[0].sni:"), "{err}");

    // Consul files in any format: what meshgate understood, or where it stopped.
    let seed = |f: &str| format!("{}/../mesh/testdata/seed/{f}", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(["check", &seed("per-upstream-modes.hcl")])
        .output()
        .expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("connect-proxy \"web-sidecar-proxy\""),
        "{text}"
    );
    assert!(text.contains("upstream db (namespace default, datacenter local) on 127.0.0.1:10001, mesh gateway mode local"), "{text}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(["check", &seed("proxy-defaults.yaml")])
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("config entry proxy-defaults \"global\": mesh gateway mode local"));
    let demo = format!(
        "{}/../../configs/demo/catalog/dc2/api-intentions.hcl",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = common::meshgate_ok(&["check", &demo]);
    assert!(
        text.contains("config entry service-intentions \"api\""),
        "{text}"
    );
    assert!(text.contains("  source default/web: Allow"), "{text}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(["check", &seed("broken-list-closed-with-brace.hcl")])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broken-list-closed-with-brace.hcl:12:") && err.contains("`,` or `]`"),
        "{err}"
    );

    // The shipped configs are valid.
    for f in [
        "configs/demo/dc1-gateway.toml",
        "configs/demo/dc2-gateway.toml",
        "configs/gateway.example.toml",
        "configs/demo/catalog/dc1/web.hcl",
        "configs/demo/catalog/dc2/api-intentions.hcl",
        "configs/demo/web-sidecar.toml",
        "configs/sidecar.example.toml",
        "configs/demo/api-sidecar.toml",
    ] {
        let path = format!("{}/../../{f}", env!("CARGO_MANIFEST_DIR"));
        common::meshgate_ok(&["check", &path]);
    }
}

#[test]
fn demo_runs_once() {
    // The README's run command, in its one-shot form. Uses fixed demo ports, so it runs alone here.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(["demo", "--once"])
        .output()
        .expect("run demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Local mode: two gateway hops; remote mode: one; both answered by api through its sidecar.
    let local = text
        .split("through upstream 127.0.0.1:10000")
        .nth(1)
        .and_then(|t| t.split("through upstream").next())
        .unwrap_or_default();
    assert!(
        local.contains("mode local (decided by proxy-defaults)"),
        "{text}"
    );
    assert!(
        local.contains("-> dc1 gateway 127.0.0.1:8443, which saw SNI api.default.dc2.internal."),
        "{text}"
    );
    assert!(
        local.contains("hop 2: dc1 gateway -> dc2 gateway 127.0.0.1:8444"),
        "{text}"
    );
    assert!(
        local.contains(
            "hop 3: dc2 gateway -> api sidecar 127.0.0.1:21001, which verified web's certificate"
        ),
        "{text}"
    );
    assert!(
        local.contains("answer: api (dc2) answered: hello from web via port 10000"),
        "{text}"
    );
    let remote = text
        .split("through upstream 127.0.0.1:10001")
        .nth(1)
        .unwrap_or_default();
    assert!(
        remote.contains("mode remote (decided by upstream)"),
        "{text}"
    );
    assert!(
        remote.contains("hop 1: web sidecar -> dc2 gateway 127.0.0.1:8444"),
        "{text}"
    );
    assert!(
        remote.contains("hop 2: dc2 gateway -> api sidecar"),
        "{text}"
    );
    assert!(
        remote.contains("answered: hello from web via port 10001"),
        "{text}"
    );
    assert!(
        text.contains("meshgate_sidecar_inbound_connections_total{outcome=\"allowed\"} 2"),
        "{text}"
    );

    // The same story from two real Consul agents (same fixed ports, so here, after the first).
    if meshgate_consul::lab::skip_requested() {
        return;
    }
    let consul = meshgate_consul::lab::consul_binary().expect("consul binary");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(["demo", "--consul", "--once"])
        .env("MESHGATE_CONSUL", consul)
        .output()
        .expect("run demo --consul");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (local, remote) = text
        .split_once("consul config write: service-defaults for web")
        .unwrap_or_default();
    for want in [
        "registered itself in consul",
        "mode local (decided by proxy-defaults)",
        "hop 2: dc1 gateway -> dc2 gateway 127.0.0.1:8444",
        "which verified web's certificate and allowed it by intention",
        "answer: api (dc2) answered: hello from web via port 10000",
    ] {
        assert!(local.contains(want), "{want}:\n{text}");
    }
    for want in [
        "mode remote (decided by service-defaults)",
        "hop 1: web sidecar -> dc2 gateway 127.0.0.1:8444",
        "answer: api (dc2) answered: hello from web via port 10000",
    ] {
        assert!(remote.contains(want), "{want}:\n{text}");
    }
}

/// A plain TCP backend that reads the first bytes of each connection, then resets it (SO_LINGER 0).
fn resetting_backend() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf);
            let _ = socket_linger_zero(&s);
            drop(s);
        }
    });
    addr
}

/// Makes the next close send RST (std has no stable SO_LINGER setter).
fn socket_linger_zero(s: &TcpStream) -> std::io::Result<()> {
    socket2::SockRef::from(s).set_linger(Some(Duration::ZERO))
}

#[test]
fn upstream_reset_reaches_the_client_promptly() {
    let gw = Gateway::start("", &route("reset.example", &[resetting_backend()]));
    let mut s = TcpStream::connect(gw.listen).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(&HelloSpec::new(Some("reset.example")).build())
        .expect("hello");
    let mut buf = [0u8; 16];
    let got = s.read(&mut buf);
    assert!(
        matches!(&got, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "expected a reset, got {got:?}"
    );
    gw.wait_metric(
        "meshgate_connections_closed_total{reason=\"upstream_error\"}",
        1.0,
    );
}

#[test]
fn connection_limit_queues_excess_in_the_backlog() {
    let pki = Pki::new("test CA").expect("ca");
    let name = sni("api", "dc1");
    let b = backend(&pki, "api", &[&name]);
    // One core, one connection at a time.
    let gw = Gateway::start(
        "max_connections = 1\nworkers = 1",
        &route(&name, &[b.addr()]),
    );
    let client = pki.client_config(&[]).expect("client");
    let first = meshgate_tlskit::connect(gw.listen, &name, client.clone()).expect("first");

    // The second connection is accepted by the kernel but not served while the first is open.
    let listen = gw.listen;
    let (tx, rx) = std::sync::mpsc::channel();
    let c2 = client.clone();
    let n2 = name.clone();
    std::thread::spawn(move || {
        let _ = tx.send(meshgate_tlskit::hello(listen, &n2, c2).map_err(|e| e.to_string()));
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "served beyond the limit"
    );
    assert_eq!(
        gw.metric(&format!(
            "meshgate_downstream_connections_active{{listener=\"{listen}\"}}"
        )),
        1.0
    );
    // Closing the first lets the queued one through; nothing was dropped.
    drop(first);
    let answer = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("queued connection served")
        .expect("hello");
    assert!(answer.starts_with("backend=api "), "{answer}");
}

#[test]
fn maximum_connection_duration_closes_busy_connections() {
    let pki = Pki::new("test CA").expect("ca");
    let name = sni("api", "dc1");
    let b = backend(&pki, "api", &[&name]);
    let gw = Gateway::start(
        "max_connection_duration_secs = 1",
        &route(&name, &[b.addr()]),
    );
    let client = pki.client_config(&[]).expect("client");
    let mut tls = meshgate_tlskit::connect(gw.listen, &name, client).expect("connect");
    tls.write_all(b"ECHO\n").expect("echo");
    // Keep it busy: echo every 50 ms until the gateway cuts it (bounded by 200 rounds = 10 s).
    let mut cut = false;
    for _ in 0..200 {
        if tls.write_all(b"ping").is_err() || tls.flush().is_err() {
            cut = true;
            break;
        }
        let mut buf = [0u8; 4];
        if tls.read_exact(&mut buf).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(cut, "connection outlived its maximum duration");
    gw.wait_metric(
        "meshgate_connections_closed_total{reason=\"max_duration\"}",
        1.0,
    );
}

#[test]
fn a_descriptor_limit_lowers_max_connections_and_the_rest_wait_in_the_backlog() {
    let pki = Pki::new("test CA").expect("ca");
    let name = sni("api", "dc1");
    let b = backend(&pki, "api", &[&name]);
    let rest = route(&name, &[b.addr()]);
    // 300 descriptors: 256 reserved, 10 for splice pipes, 2 per connection -> 17 connections (the
    // default is 100,000).
    let gw = Gateway::start_with_fd_limit("workers = 1", &rest, Some(300));
    assert_eq!(gw.metric("meshgate_connection_limit"), 17.0);
    let client = pki.client_config(&[]).expect("client");
    let mut live = Vec::new();
    for _ in 0..17 {
        let mut tls = meshgate_tlskit::connect(gw.listen, &name, client.clone()).expect("connect");
        tls.write_all(b"HELLO\n").expect("hello");
        let mut tls = BufReader::new(tls);
        let mut line = String::new();
        tls.read_line(&mut line).expect("answer");
        assert!(line.starts_with("backend=api "), "{line}");
        live.push(tls);
    }
    // The next waits in the kernel backlog: not served, and not closed either.
    let (listen, c, n) = (gw.listen, client.clone(), name.clone());
    let eighth =
        on_thread(move || meshgate_tlskit::hello(listen, &n, c).map_err(|e| e.to_string()));
    assert!(
        eighth.recv_timeout(Duration::from_millis(700)).is_err(),
        "served over the descriptor budget"
    );
    // One closes: the eighth is served, and nothing was refused for want of descriptors.
    drop(live.pop());
    let answer = eighth
        .recv_timeout(Duration::from_secs(15))
        .expect("served once a connection closed")
        .expect("hello");
    assert!(answer.starts_with("backend=api "), "{answer}");
    assert_eq!(
        gw.metric("meshgate_connections_closed_total{reason=\"upstream_unavailable\"}"),
        0.0
    );
    drop(live);
    // A limit with no room at all is refused at start, naming it.
    let dir = TempDir::new("nofile");
    let config = dir.0.join("gw.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nlisten = [\"127.0.0.1:{}\"]\nadmin = \"127.0.0.1:{}\"\nworkers = 1\n{rest}",
            free_port(),
            free_port()
        ),
    )
    .expect("write");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 200 && exec \"$0\" gateway --config \"$1\"")
        .arg(env!("CARGO_BIN_EXE_meshgate"))
        .arg(&config)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("RLIMIT_NOFILE") && err.contains("200"),
        "{err}"
    );
}

#[test]
fn connection_hook_denies_listed_names_and_caches_verdicts() {
    let pki = Pki::new("test CA").expect("ca");
    let api = sni("api", "dc1");
    let web = sni("web", "dc1");
    let a = backend(&pki, "api", &[&api]);
    let w = backend(&pki, "web", &[&web]);
    let gw = Gateway::start(
        "workers = 1",
        &format!(
            "{}{}[hook]\nplugin = \"sni-denylist\"\nconfig = {{ deny = \"{api}\" }}\n",
            route(&api, &[a.addr()]),
            route(&web, &[w.addr()])
        ),
    );
    let client = pki.client_config(&[]).expect("client");
    assert!(
        meshgate_tlskit::hello(gw.listen, &api, client.clone()).is_err(),
        "api must be denied"
    );
    for _ in 0..3 {
        let answer = meshgate_tlskit::hello(gw.listen, &web, client.clone()).expect("web");
        assert!(answer.starts_with("backend=web "), "{answer}");
    }
    gw.wait_metric("meshgate_connections_closed_total{reason=\"denied\"}", 1.0);
    // Two distinct names: two calls; the other connections were answered from the cache.
    assert_eq!(gw.metric("meshgate_hook_calls_total"), 2.0);
    assert_eq!(gw.metric("meshgate_hook_cache_hits_total"), 2.0);
}

/// A canary split in configuration: `split` between two groups of endpoints, exact over every cycle
/// of connections on a core, and a failing canary falls back to the stable group.
#[test]
fn a_split_route_sends_the_configured_share_to_the_canary() {
    let pki = Pki::new("test CA").expect("ca");
    let api = sni("api", "dc1");
    let stable = [
        backend(&pki, "stable-1", &[&api]),
        backend(&pki, "stable-2", &[&api]),
    ];
    let canary = backend(&pki, "canary", &[&api]);
    let split = |canary_addr: SocketAddr| {
        format!(
            "[[routes]]\nsni = \"{api}\"\nsplit = [\n  {{ weight = 80, endpoints = [\"{}\", \"{}\"] }},\n  {{ weight = 20, endpoints = [\"{canary_addr}\"] }},\n]\n",
            stable[0].addr(),
            stable[1].addr()
        )
    };
    // One core: its cursor alone decides, so 10 connections are one whole cycle (4:4:2).
    let gw = Gateway::start("workers = 1", &split(canary.addr()));
    let client = pki.client_config(&[]).expect("client");
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..10 {
        let answer = meshgate_tlskit::hello(gw.listen, &api, client.clone()).expect("served");
        let name = answer.split_whitespace().next().unwrap_or("").to_owned();
        *seen.entry(name).or_insert(0) += 1;
    }
    assert_eq!(
        seen,
        [
            ("backend=canary".to_owned(), 2),
            ("backend=stable-1".to_owned(), 4),
            ("backend=stable-2".to_owned(), 4),
        ]
        .into()
    );
    let routes = gw.get("/routes").expect("routes");
    let compact: String = routes.split_whitespace().collect();
    assert!(compact.contains("\"weights\":[2,2,1]"), "{routes}");

    // The canary's address refuses connections: its share goes to the stable group, nothing fails.
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    gw.rewrite("workers = 1", &split(dead));
    gw.signal("HUP");
    gw.wait_metric("meshgate_config_reloads_total{result=\"ok\"}", 1.0);
    for _ in 0..10 {
        let answer = meshgate_tlskit::hello(gw.listen, &api, client.clone()).expect("served");
        assert!(answer.starts_with("backend=stable-"), "{answer}");
    }
}

/// SIGHUP applies a changed `[hook]` on every core (no restart), and a hook whose `configure` refuses
/// its settings refuses the reload: the running hook keeps deciding.
#[test]
fn sighup_swaps_the_connection_hook_and_refuses_one_that_rejects_its_settings() {
    let pki = Pki::new("test CA").expect("ca");
    let api = sni("api", "dc1");
    let web = sni("web", "dc1");
    let a = backend(&pki, "api", &[&api]);
    let w = backend(&pki, "web", &[&web]);
    let routes = format!("{}{}", route(&api, &[a.addr()]), route(&web, &[w.addr()]));
    let hook = |settings: &str| {
        format!("{routes}[hook]\nplugin = \"sni-denylist\"\nconfig = {{ {settings} }}\n")
    };
    // Two cores: each must make its own instance of the new hook.
    let gw = Gateway::start("workers = 2", &hook(&format!("deny = \"{api}\"")));
    let client = pki.client_config(&[]).expect("client");
    let served = |name: &str| meshgate_tlskit::hello(gw.listen, name, client.clone()).is_ok();
    // Enough connections that both cores have decided (and cached) each name.
    let all = |name: &str, want: bool| (0..8).all(|_| served(name) == want);
    assert!(all(&api, false) && all(&web, true));

    // A misspelt key: refused by the plugin's `configure`, the running hook stays.
    gw.rewrite("workers = 2", &hook(&format!("denny = \"{web}\"")));
    gw.signal("HUP");
    gw.wait_metric("meshgate_config_reloads_total{result=\"failed\"}", 1.0);
    assert!(all(&api, false) && all(&web, true));

    // The deny-list moves to web: applied on both cores, cached verdicts dropped.
    gw.rewrite("workers = 2", &hook(&format!("deny = \"{web}\"")));
    gw.signal("HUP");
    gw.wait_metric("meshgate_config_reloads_total{result=\"ok\"}", 1.0);
    assert!(all(&api, true) && all(&web, false));

    // No `[hook]` any more: nothing is denied.
    gw.rewrite("workers = 2", &routes);
    gw.signal("HUP");
    gw.wait_metric("meshgate_config_reloads_total{result=\"ok\"}", 2.0);
    assert!(all(&api, true) && all(&web, true));
}

/// Runs `f` on its own thread and hands back its result on a channel, so a test can check whether a
/// blocked client has finished without waiting for it.
fn on_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> std::sync::mpsc::Receiver<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx
}

/// An upstream that takes the ClientHello and then goes silent: while it stalls, the same core serves
/// other connections in full; the stalled client is closed by the idle timeout, and that is counted.
#[test]
fn stalled_upstream_is_closed_by_the_idle_timeout_while_others_are_served() {
    let pki = Pki::new("test CA").expect("ca");
    let live_name = sni("api", "dc1");
    let live = backend(&pki, "api", &[&live_name]);
    let stuck_name = sni("stuck", "dc1");
    let (stuck, events) = stalling_upstream();
    let routes = format!(
        "{}{}",
        route(&live_name, &[live.addr()]),
        route(&stuck_name, &[stuck])
    );
    // One core: the stalled connection and the others share it. An idle timeout of an hour first, so
    // that "still stalled while the other was served" holds whatever the machine's speed.
    let gw = Gateway::start("workers = 1\nidle_timeout_secs = 3600", &routes);
    let client = pki.client_config(&[]).expect("client");
    let stalled_client = |client: Arc<meshgate_tlskit::ClientConfig>| {
        let (listen, name) = (gw.listen, stuck_name.clone());
        on_thread(move || {
            meshgate_tlskit::connect(listen, &name, client).map_err(|e| e.to_string())
        })
    };

    let first = stalled_client(client.clone());
    let event = events
        .recv_timeout(Duration::from_secs(10))
        .expect("the ClientHello reached the stalling upstream");
    assert!(
        matches!(event, StallEvent::Stalled(0, n) if n > 5),
        "{event:?}"
    );
    // Meanwhile a second client completes a whole TLS exchange through the same core.
    let answer = meshgate_tlskit::hello(gw.listen, &live_name, client.clone()).expect("served");
    assert!(answer.starts_with("backend=api "), "{answer}");
    assert!(
        first.try_recv().is_err(),
        "the stalled handshake ended while nothing closed it"
    );
    assert_eq!(
        events.try_recv().ok(),
        None,
        "the stalled upstream was closed"
    );

    // New connections get a one-second idle timeout (a reload applies to new connections).
    gw.rewrite("workers = 1\nidle_timeout_secs = 1", &routes);
    gw.signal("HUP");
    gw.wait_metric("meshgate_config_reloads_total{result=\"ok\"}", 1.0);
    let second = stalled_client(client.clone());
    let event = events
        .recv_timeout(Duration::from_secs(10))
        .expect("the second ClientHello reached the stalling upstream");
    assert!(matches!(event, StallEvent::Stalled(1, _)), "{event:?}");
    // The gateway closes both sides: the client's handshake fails, the upstream sees the close.
    let outcome = second
        .recv_timeout(Duration::from_secs(15))
        .expect("the stalled client was closed within 15 s");
    assert!(
        outcome.is_err(),
        "a handshake completed through a silent upstream"
    );
    let event = events
        .recv_timeout(Duration::from_secs(15))
        .expect("the stalling upstream saw the gateway close");
    assert_eq!(event, StallEvent::Closed(1));
    gw.wait_metric(
        "meshgate_connections_closed_total{reason=\"idle_timeout\"}",
        1.0,
    );
    // The connection made before the reload keeps its hour, and the gateway still serves.
    assert!(
        first.try_recv().is_err(),
        "the first stalled connection was closed too"
    );
    let answer = meshgate_tlskit::hello(gw.listen, &live_name, client).expect("still served");
    assert!(answer.starts_with("backend=api "), "{answer}");
}

/// An upstream that answers one byte per millisecond: every byte arrives intact and in order, and the
/// drip — several idle periods long — never trips the one-second idle timeout while bytes keep flowing.
#[test]
fn dripping_upstream_arrives_intact_without_tripping_the_idle_timeout() {
    let pki = Pki::new("test CA").expect("ca");
    let name = sni("drip", "dc1");
    let b = backend(&pki, "drip", &[&name]);
    let (drip, dripped) = dripping_upstream(b.addr(), Duration::from_millis(1));
    let gw = Gateway::start("idle_timeout_secs = 1", &route(&name, &[drip]));
    let client = pki.client_config(&[]).expect("client");
    // 1 KiB up; 2 KiB of answer (plus the 32-byte hash and the TLS handshake, all dripped): the drip
    // lasts at least as many milliseconds as bytes, more than two idle periods.
    let down = 2048;
    let r = meshgate_tlskit::bulk(gw.listen, &name, client, 1024, down).expect("bulk");
    assert_eq!(r.sent, r.backend_received, "upstream direction corrupted");
    assert_eq!(r.received_len, down);
    assert!(r.received_intact, "dripped bytes corrupted or reordered");
    let dripped = dripped.load(std::sync::atomic::Ordering::Relaxed);
    // Everything the client read came through the drip (the hash and answer, the handshake too).
    assert!(dripped > 32 + down, "only {dripped} bytes dripped");
    gw.wait_metric(
        "meshgate_bytes_total{direction=\"to_downstream\"}",
        dripped as f64,
    );
    gw.wait_metric(
        "meshgate_connections_closed_total{reason=\"completed\"}",
        1.0,
    );
    assert_eq!(
        gw.metric("meshgate_connections_closed_total{reason=\"idle_timeout\"}"),
        0.0
    );
}

/// Issue 11 item 2, through the binary: more clients than the admin endpoint's connection cap (64), each
/// dripping one byte of an endless request head every 100 ms and reconnecting whenever closed, while an
/// orchestrator probes `/ready` and scrapes `/metrics`: every probe answers 200 within a second.
#[test]
fn admin_probes_answer_within_a_second_while_slow_clients_flood_it() {
    let rest = route(&sni("api", "dc1"), &[dead_addr()]);
    let gw = Gateway::start("", &rest);
    let admin = gw.admin;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (connected_tx, connected_rx) = std::sync::mpsc::channel();
    let drippers = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let head = b"GET /ready HTTP/1.1\r\nX-Slow: ";
            let connect = || {
                let mut s = TcpStream::connect_timeout(&admin, Duration::from_millis(500)).ok()?;
                s.write_all(&head[..1]).ok()?;
                Some((s, 1usize))
            };
            let mut conns: Vec<Option<(TcpStream, usize)>> = (0..100).map(|_| connect()).collect();
            let _ = connected_tx.send(conns.iter().filter(|c| c.is_some()).count());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100)); // the drip rate
                for c in conns.iter_mut() {
                    let alive = match c {
                        Some((s, sent)) => {
                            let byte = head.get(*sent).copied().unwrap_or(b'a');
                            *sent += 1;
                            s.write_all(&[byte]).is_ok()
                        }
                        None => false,
                    };
                    if !alive {
                        *c = connect();
                    }
                }
            }
        })
    };
    let connected = connected_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("drippers");
    assert_eq!(connected, 100, "every dripper connects");
    let mut slowest = Duration::ZERO;
    for i in 0..10 {
        let t0 = std::time::Instant::now();
        let ready = gw.get("/ready");
        let took = t0.elapsed();
        slowest = slowest.max(took);
        match ready {
            Ok(r) => assert!(r.starts_with("HTTP/1.1 200 OK"), "probe {i}: {r:?}"),
            Err(e) => panic!("probe {i} failed after {took:?}: {e}"),
        }
        assert!(took < Duration::from_secs(1), "probe {i} took {took:?}");
        let metrics = gw.get("/metrics").expect("metrics");
        assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
        std::thread::sleep(Duration::from_millis(300)); // the probe period
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drippers.join().expect("drippers");
    eprintln!("slowest admin probe under the flood: {slowest:?}");
}

#[test]
fn check_loads_every_plugin_and_names_what_is_wrong_with_one() {
    let dir = TempDir::new("check-plugins");
    let base = "[gateway]\nlisten = [\"127.0.0.1:8443\"]\n\n";
    let check = |name: &str, text: &str| {
        let file = dir.0.join(name);
        std::fs::write(&file, format!("{base}{text}")).expect("write");
        std::process::Command::new(env!("CARGO_BIN_EXE_meshgate"))
            .arg("check")
            .arg(&file)
            .output()
            .expect("run")
    };
    // Shipped plugins of the right kinds: each reported by name and kind.
    let out = check(
        "good.toml",
        "[catalog]\nplugin = \"file-catalog\"\nconfig = { dir = \"c\", datacenter = \"dc1\", trust_domain = \"td\" }\n\n[hook]\nplugin = \"sni-denylist\"\nconfig = { deny = \"bad.example\" }\n",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("hook plugin sni-denylist (settings"),
        "{text}"
    );
    assert!(
        text.contains("catalog plugin file-catalog: loads, a catalog plugin (shipped)"),
        "{text}"
    );
    assert!(
        text.contains("router plugin consul-router: loads, a router plugin (shipped)"),
        "{text}"
    );
    assert!(
        text.contains(
            "hook plugin sni-denylist: loads, a hook plugin (shipped), settings accepted"
        ),
        "{text}"
    );
    // Settings a plugin's `configure` refuses: the file, the line of `config` and the plugin's words.
    let out = check(
        "settings.toml",
        "[hook]\nplugin = \"sni-denylist\"\nconfig = { deny_no_sni = \"yes\" }\n",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("settings.toml:6: [hook] config: plugin sni-denylist: refused its settings: setting `deny_no_sni`"),
        "{err}"
    );

    // A missing hook file, a file that is not a component, a router where a hook belongs.
    std::fs::write(dir.0.join("junk.wasm"), b"not wasm").expect("junk");
    for (name, plugin, why) in [
        ("missing.toml", "nowhere.wasm", "nowhere.wasm: No such file"),
        ("junk.toml", "junk.wasm", "junk.wasm"),
        (
            "kind.toml",
            "consul-router",
            "a router plugin, not a hook plugin",
        ),
    ] {
        let out = check(name, &format!("[hook]\nplugin = \"{plugin}\"\n"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(
            err.contains(&format!("{name}:5: [hook] plugin = \"{plugin}\"")),
            "{err}"
        );
        assert!(err.contains(why), "{err}");
    }
}

/// `[gateway] balance = "connections"` (the default): long-lived connections spread over both cores
/// whichever core SO_REUSEPORT's hash gave each. 16 keep-alive connections opened one at a time: after
/// each, the cores' open connections differ by at most one (the kernel's hash alone keeps that up
/// through 16 arrivals in about 1 run of 256), every connection still answers, and once all are
/// closed the counts return to zero and the next 16 spread the same way.
#[test]
fn long_lived_connections_spread_over_the_cores_however_the_kernel_hashed_them() {
    let pki = Pki::new("test CA").expect("ca");
    let name = sni("api", "dc1");
    let b = backend(&pki, "api", &[&name]);
    let gw = Gateway::start("workers = 2", &route(&name, &[b.addr()]));
    let client = pki.client_config(&[]).expect("client");
    let per_core = || {
        (
            gw.metric("meshgate_core_connections_active{core=\"0\"}"),
            gw.metric("meshgate_core_connections_active{core=\"1\"}"),
        )
    };
    for round in 0..2 {
        let mut open = Vec::new();
        for i in 0..16 {
            let mut tls =
                meshgate_tlskit::connect(gw.listen, &name, client.clone()).expect("connect");
            tls.write_all(b"HELLO\n").expect("hello");
            let mut reader = BufReader::new(tls);
            let mut line = String::new();
            reader.read_line(&mut line).expect("answer");
            assert!(line.starts_with("backend=api "), "{line}");
            open.push(reader);
            let (a, b) = per_core();
            assert_eq!(
                a + b,
                (i + 1) as f64,
                "round {round}: every connection counted"
            );
            assert!(
                (a - b).abs() <= 1.0,
                "round {round}, after {} connections: {a} on core 0, {b} on core 1",
                i + 1
            );
        }
        assert_eq!(per_core(), (8.0, 8.0));
        // Handed over or not, each connection is relayed both ways.
        for (i, reader) in open.iter_mut().enumerate() {
            let ping = format!("ping {i}\n");
            reader.get_mut().write_all(ping.as_bytes()).expect("ping");
            let mut line = String::new();
            reader.read_line(&mut line).expect("echo");
            assert_eq!(line, ping);
        }
        drop(open);
        wait_for(Duration::from_secs(10), "connections closed", || {
            (per_core() == (0.0, 0.0)).then_some(())
        });
    }
    eprintln!(
        "handed over: {} of 32",
        gw.metric("meshgate_connections_handed_over_total")
    );
}
