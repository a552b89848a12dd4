//! The client against scripted servers on loopback: framing, headers, limits, the total deadline, refusal
//! of smuggling-prone requests, tokens and HTTPS with a client certificate.

use super::*;
use std::io::BufRead;
use std::net::TcpListener;
use std::thread::JoinHandle;

/// A server that accepts one connection, reads the request head (and a Content-Length body), hands the
/// raw request to the test through the join handle, then runs `answer` on the socket.
fn serve_once(answer: impl FnOnce(&mut TcpStream) + Send + 'static) -> (Agent, JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handle = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let request = read_request(&mut s);
        answer(&mut s);
        request
    });
    (Agent::new(&addr.to_string()).expect("agent"), handle)
}

fn read_request(s: &mut impl Read) -> String {
    let mut reader = std::io::BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).expect("read") == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("body");
    head + "\r\n" + &String::from_utf8_lossy(&body)
}

fn reply(bytes: &'static [u8]) -> impl FnOnce(&mut TcpStream) + Send + 'static {
    move |s| {
        let _ = s.write_all(bytes);
    }
}

#[test]
fn content_length_answer_with_consul_headers() {
    let (agent, server) = serve_once(reply(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Consul-Index: 52\r\n\
          X-Consul-Knownleader: true\r\nX-Consul-Lastcontact: 7\r\nX-Cache: HIT\r\n\
          Content-Length: 15\r\n\r\n{\"web\": [\"v1\"]}",
    ));
    let client = Client::new(agent.with_token("s3cret")).expect("client");
    let r = client
        .call(
            &Request::get("/v1/catalog/services")
                .query("index", "51")
                .query("wait", "5s"),
        )
        .expect("answer");
    assert_eq!(r.status, 200);
    assert_eq!(r.index, Some(52));
    assert_eq!(r.known_leader, Some(true));
    assert_eq!(r.last_contact, Some(Duration::from_millis(7)));
    assert_eq!(r.cache_hit, Some(true));
    let names: std::collections::BTreeMap<String, Vec<String>> =
        r.json("/v1/catalog/services").expect("json");
    assert_eq!(names["web"], ["v1"]);
    let request = server.join().expect("server");
    assert!(
        request.starts_with("GET /v1/catalog/services?index=51&wait=5s HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(
        request.contains("\r\nX-Consul-Token: s3cret\r\n"),
        "{request}"
    );
    assert!(request.contains("\r\nConnection: close\r\n"), "{request}");
}

#[test]
fn chunked_answer_with_extensions_and_trailers() {
    let (agent, server) = serve_once(reply(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Consul-Index: 9\r\n\r\n\
          4;ext=1\r\n[\"dc\r\nA\r\n1\", \"dc2\"]\r\n0\r\nX-Trailer: x\r\n\r\n",
    ));
    let client = Client::new(agent).expect("client");
    let r = client
        .call(&Request::get("/v1/catalog/datacenters"))
        .expect("answer");
    assert_eq!(r.body, b"[\"dc1\", \"dc2\"]");
    assert_eq!(r.index, Some(9));
    server.join().expect("server");
}

#[test]
fn put_sends_json_and_content_length() {
    let (agent, server) = serve_once(reply(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
    let client = Client::new(agent).expect("client");
    client
        .put_json(
            "/v1/agent/service/register",
            &serde_json::json!({"Name": "web"}),
        )
        .expect("put");
    let request = server.join().expect("server");
    assert!(
        request.starts_with("PUT /v1/agent/service/register HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(
        request.contains("Content-Type: application/json\r\n"),
        "{request}"
    );
    assert!(request.ends_with("\r\n\r\n{\"Name\":\"web\"}"), "{request}");
    assert!(!request.contains("X-Consul-Token"), "{request}");
}

#[test]
fn forbidden_answer_names_what_was_refused() {
    let (agent, server) = serve_once(reply(
        b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 56\r\n\r\n\
          Permission denied: Missing service:write on mesh-gateway",
    ));
    let client = Client::new(agent).expect("client");
    let e = client
        .put_json("/v1/agent/service/register", &serde_json::json!({}))
        .expect_err("403");
    assert_eq!(e.status(), Some(403));
    assert_eq!(
        e.missing_permission(),
        Some("service:write on mesh-gateway")
    );
    server.join().expect("server");
}

#[test]
fn not_found_is_an_answer_for_send() {
    let (agent, server) = serve_once(reply(
        b"HTTP/1.1 404 Not Found\r\nX-Consul-Index: 12\r\nContent-Length: 9\r\n\r\nnot found",
    ));
    let client = Client::new(agent).expect("client");
    let r = client
        .send(&Request::get("/v1/config/service-defaults/nope"))
        .expect("send");
    assert_eq!((r.status, r.index), (404, Some(12)));
    server.join().expect("server");
}

#[test]
fn body_cap_applies_to_every_framing() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"[..],
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n01234567\r\n8\r\n01234567\r\n0\r\n\r\n"[..],
        &b"HTTP/1.1 200 OK\r\n\r\n0123456789abcdef0123"[..],
    ] {
        let (mut agent, server) = serve_once(reply(answer));
        agent.max_body = 10;
        let client = Client::new(agent).expect("client");
        let e = client.call(&Request::get("/v1/catalog/services")).expect_err("too large");
        assert!(matches!(e, Error::BodyTooLarge { limit: 10, .. }), "{e}");
        server.join().expect("server");
    }
}

#[test]
fn malformed_answers_are_protocol_errors() {
    for answer in [
        &b"SMTP ready\r\n\r\n"[..],
        &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"[..],
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
        &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"[..],
    ] {
        let (agent, server) = serve_once(reply(answer));
        let client = Client::new(agent).expect("client");
        let e = client
            .call(&Request::get("/v1/catalog/services"))
            .expect_err("malformed");
        assert!(matches!(e, Error::Protocol { .. }), "{e}");
        assert!(e.is_transient());
        server.join().expect("server");
    }
}

#[test]
fn a_dripping_server_cannot_stretch_the_deadline() {
    // One byte of a valid head every 20 ms: each read succeeds well within any per-read timeout, so only
    // a total deadline ends this request.
    let (agent, server) = serve_once(|s| {
        for b in b"HTTP/1.1 200 OK\r\nX-Padding: "
            .iter()
            .chain(std::iter::repeat(&b'x'))
        {
            if s.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let client = Client::new(agent).expect("client");
    let started = Instant::now();
    let e = client
        .call(&Request::get("/v1/catalog/services").timeout(Duration::from_millis(400)))
        .expect_err("deadline");
    let took = started.elapsed();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(e.is_transient());
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    drop(client);
    server.join().expect("server");
}

#[test]
fn a_silent_server_times_out() {
    let (agent, server) = serve_once(|s| {
        // Hold the connection open, answer nothing, until the client gives up and closes.
        let _ = s.read(&mut [0u8; 1]);
    });
    let client = Client::new(agent).expect("client");
    let e = client
        .call(&Request::get("/v1/health/connect/web").timeout(Duration::from_millis(200)))
        .expect_err("timeout");
    assert!(
        matches!(
            e,
            Error::Timeout {
                phase: "waiting for the answer's headers",
                ..
            }
        ),
        "{e}"
    );
    server.join().expect("server");
}

#[test]
fn a_closed_port_is_unreachable() {
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let client =
        Client::new(Agent::new(&format!("127.0.0.1:{port}")).expect("agent")).expect("client");
    let e = client
        .call(&Request::get("/v1/status/leader"))
        .expect_err("refused");
    assert!(matches!(e, Error::Unreachable { .. }), "{e}");
    assert!(e.is_transient());
}

#[test]
fn smuggling_prone_requests_are_refused_before_connecting() {
    // Port 9 (discard) is never dialled: every case fails in validation.
    let client = Client::new(Agent::new("127.0.0.1:9").expect("agent")).expect("client");
    for request in [
        Request::get("/v1/health/connect/web HTTP/1.1\r\nHost: evil"),
        Request::get("/v1/health/connect/we b"),
        Request::get("/v1/health/connect/web\n"),
        Request::get("/v1/health/connect/web?index=1"),
        Request::get("/v1/health/connect/../../agent/self"),
        Request::get("v1/catalog/services"),
        Request::get("/v1/catalog/services").query("wait", "5s\r\nX-Evil: 1"),
        Request::get("/v1/catalog/services").query("wa it", "5s"),
    ] {
        let e = client.send(&request).expect_err("refused");
        assert!(matches!(e, Error::InvalidRequest(_)), "{request:?}: {e}");
    }
    let token = Client::new(
        Agent::new("127.0.0.1:9")
            .expect("agent")
            .with_token("a\r\nX-Evil: 1"),
    )
    .expect("client");
    assert!(matches!(
        token.send(&Request::get("/v1/catalog/services")),
        Err(Error::Config(_))
    ));
}

#[test]
fn query_values_are_percent_encoded() {
    let target = Request::get("/v1/internal/ui/services")
        .query("dc", "dc2")
        .query("filter", "Service.Kind == \"mesh-gateway\"")
        .query("cached", "")
        .target()
        .expect("target");
    assert_eq!(
        target,
        "/v1/internal/ui/services?dc=dc2&filter=Service.Kind%20%3D%3D%20%22mesh-gateway%22&cached"
    );
}

#[test]
fn token_file_is_sent_and_reread() {
    let dir =
        std::env::temp_dir().join(format!("meshgate-consul-http-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("token");
    std::fs::write(&path, "one\n").expect("write");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = std::thread::spawn(move || {
        (0..2)
            .map(|_| {
                let (mut s, _) = listener.accept().expect("accept");
                let request = read_request(&mut s);
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                    .expect("write");
                request
            })
            .collect::<Vec<_>>()
    });
    let client = Client::new(
        Agent::new(&addr.to_string())
            .expect("agent")
            .with_token_file(&path),
    )
    .expect("client");
    client
        .call(&Request::get("/v1/acl/token/self"))
        .expect("first");
    std::fs::write(&path, "rotated-2").expect("write");
    client
        .call(&Request::get("/v1/acl/token/self"))
        .expect("second");
    let requests = server.join().expect("server");
    assert!(
        requests[0].contains("X-Consul-Token: one\r\n"),
        "{}",
        requests[0]
    );
    assert!(
        requests[1].contains("X-Consul-Token: rotated-2\r\n"),
        "{}",
        requests[1]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn https_with_ca_file_and_client_certificate() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let dir = std::env::temp_dir().join(format!("meshgate-consul-https-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issue = |name: &str| {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec![name.to_string()])
            .expect("params")
            .signed_by(&key, &ca, &ca_key)
            .expect("sign");
        (cert, key)
    };
    let (server_cert, server_key) = issue("127.0.0.1");
    let (client_cert, client_key) = issue("client.consul");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
    std::fs::write(dir.join("client.pem"), client_cert.pem()).expect("write");
    std::fs::write(dir.join("client-key.pem"), client_key.serialize_pem()).expect("write");

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).expect("root");
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("verifier");
    let server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![server_cert.der().clone()],
            PrivateKeyDer::try_from(server_key.serialize_der()).expect("key"),
        )
        .expect("server config");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().expect("accept");
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let conn = rustls::ServerConnection::new(Arc::new(server_config)).expect("conn");
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let request = read_request(&mut tls);
        let client_seen = tls.conn.peer_certificates().map(|c| c.len()).unwrap_or(0);
        tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Consul-Index: 3\r\n\r\n[]")
            .expect("write");
        tls.conn.send_close_notify();
        let _ = tls.flush();
        (request, client_seen)
    });
    let agent = Agent::from_vars(|name| match name {
        "CONSUL_HTTP_ADDR" => Some(format!("https://{addr}")),
        "CONSUL_CACERT" => Some(dir.join("ca.pem").display().to_string()),
        "CONSUL_CLIENT_CERT" => Some(dir.join("client.pem").display().to_string()),
        "CONSUL_CLIENT_KEY" => Some(dir.join("client-key.pem").display().to_string()),
        _ => None,
    })
    .expect("agent");
    let client = Client::new(agent).expect("client");
    let r = client
        .call(&Request::get("/v1/health/connect/web"))
        .expect("https answer");
    assert_eq!((r.body.as_slice(), r.index), (&b"[]"[..], Some(3)));
    let (request, client_certs) = server.join().expect("server");
    assert!(
        request.starts_with("GET /v1/health/connect/web HTTP/1.1\r\n"),
        "{request}"
    );
    assert_eq!(client_certs, 1, "the server saw the client certificate");

    // No CA file: a clear configuration error at construction, not a TLS failure later.
    let e = Client::new(Agent::new(&format!("https://{addr}")).expect("agent")).expect_err("no CA");
    assert!(e.to_string().contains("CONSUL_CACERT"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
