//! The plugin host against real components built from `plugins/`: the shipped file catalog and Consul
//! router, and a test plugin that traps, loops, hoards memory, returns garbage and reaches for what it was
//! not granted.

use meshgate_plugin::types::{Catalog, CatalogUpdate};
use meshgate_plugin::{Grants, PluginError, PluginHost, RouterPlugin, Sandbox};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const TD: &str = "11111111-2222-3333-4444-555555555555.consul";

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("meshgate-plugin-{tag}-{}", std::process::id()));
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

fn settings(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn empty_catalog() -> Catalog {
    Catalog {
        trust_domain: TD.into(),
        instances: vec![],
        config_entries: vec![],
    }
}

fn testbed(host: &PluginHost, dir: &TempDir) -> RouterPlugin {
    let component = host
        .compile(meshgate_plugin::TESTBED)
        .expect("compile testbed");
    let sandbox = Sandbox {
        deadline: Duration::from_millis(200),
        memory: 16 << 20,
        grants: Grants {
            base: dir.0.clone(),
            dirs: vec![PathBuf::from("allowed")],
            origins: vec![],
            env: vec!["MESHGATE_TEST_GRANTED".into()],
        },
    };
    host.router_from("testbed".into(), component, sandbox)
        .expect("instantiate")
}

fn call(
    p: &mut RouterPlugin,
    pairs: &[(&str, &str)],
) -> Result<Vec<meshgate_plugin::types::Route>, PluginError> {
    p.gateway_routes(&settings(pairs), &empty_catalog(), "dc1")
}

/// A plugin outlives the host that compiled it (a connection hook stays on its core after start-up drops
/// the host); its deadline must still fire. Before the fix the epoch thread stopped with the host and a
/// looping call never returned: the call runs on a thread so that a regression fails instead of hanging.
#[test]
fn deadline_fires_after_the_host_is_dropped() {
    let dir = TempDir::new("orphan");
    let mut p = {
        let host = PluginHost::new().expect("host");
        testbed(&host, &dir)
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(call(&mut p, &[("behaviour", "loop")]).map(|_| ()));
    });
    let answer = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("a looping call returned within 20 s (deadline 200 ms)");
    let e = answer.expect_err("deadline");
    assert!(matches!(e, PluginError::Deadline { .. }), "{e}");
}

#[test]
fn misbehaving_plugins_are_contained() {
    let host = PluginHost::new().expect("host");
    let dir = TempDir::new("sandbox");
    std::fs::create_dir_all(dir.0.join("allowed")).expect("mkdir");
    std::fs::write(dir.0.join("allowed/ok.txt"), "fine").expect("write");
    std::fs::write(dir.0.join("secret.txt"), "secret").expect("write");
    let mut p = testbed(&host, &dir);
    let ok = [
        ("behaviour", "ok"),
        ("pattern", "a.example"),
        ("endpoint", "127.0.0.1:1"),
    ];
    assert_eq!(call(&mut p, &ok).expect("ok")[0].pattern, "a.example");

    let e = call(&mut p, &[("behaviour", "trap")]).expect_err("trap");
    assert!(matches!(e, PluginError::Trap { .. }), "{e}");
    assert_eq!(e.reason(), "trap");
    // The next call gets a fresh instance.
    assert!(call(&mut p, &ok).is_ok());

    let started = Instant::now();
    let e = call(&mut p, &[("behaviour", "loop")]).expect_err("deadline");
    assert!(matches!(e, PluginError::Deadline { .. }), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "deadline not enforced"
    );
    assert!(call(&mut p, &ok).is_ok());

    let e = call(&mut p, &[("behaviour", "alloc")]).expect_err("memory");
    assert!(matches!(e, PluginError::Memory { .. }), "{e}");
    assert!(call(&mut p, &ok).is_ok());

    // Garbage comes back as data; validating it is the caller's job (see the gateway tests).
    let routes = call(&mut p, &[("behaviour", "garbage")]).expect("garbage returned");
    assert_eq!(routes[0].pattern, "a.*.b");

    // Files: only under the granted directory, whatever the path says.
    assert!(call(&mut p, &[("behaviour", "read"), ("path", "allowed/ok.txt")]).is_ok());
    for path in ["secret.txt", "allowed/../secret.txt", "/etc/passwd"] {
        let e = call(&mut p, &[("behaviour", "read"), ("path", path)]).expect_err(path);
        assert!(
            e.to_string().contains("not under a directory granted"),
            "{path}: {e}"
        );
    }
    std::os::unix::fs::symlink(dir.0.join("secret.txt"), dir.0.join("allowed/link"))
        .expect("symlink");
    let e = call(&mut p, &[("behaviour", "read"), ("path", "allowed/link")]).expect_err("symlink");
    assert!(
        e.to_string().contains("not under a directory granted"),
        "{e}"
    );

    // URLs: no origin granted.
    let e = call(
        &mut p,
        &[("behaviour", "http"), ("url", "http://127.0.0.1:9/x")],
    )
    .expect_err("http");
    assert!(e.to_string().contains("is not granted"), "{e}");

    // Environment: only granted keys.
    std::env::set_var("MESHGATE_TEST_GRANTED", "yes");
    std::env::set_var("MESHGATE_TEST_SECRET", "no");
    let e = call(
        &mut p,
        &[("behaviour", "env"), ("key", "MESHGATE_TEST_GRANTED")],
    )
    .expect_err("env");
    assert!(e.to_string().contains("env=Some(\"yes\")"), "{e}");
    let e = call(
        &mut p,
        &[("behaviour", "env"), ("key", "MESHGATE_TEST_SECRET")],
    )
    .expect_err("env");
    assert!(e.to_string().contains("env=None"), "{e}");
}

#[test]
fn granted_http_origin_is_reachable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        if let Ok((mut s, _)) = listener.accept() {
            // Read the whole request head before answering: closing with unread bytes would reset.
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello");
        }
    });
    let host = PluginHost::new().expect("host");
    let dir = TempDir::new("http");
    let component = host.compile(meshgate_plugin::TESTBED).expect("compile");
    let sandbox = Sandbox {
        grants: Grants {
            base: dir.0.clone(),
            origins: vec![format!("http://{addr}")],
            ..Grants::default()
        },
        ..Sandbox::default()
    };
    let mut p = host
        .router_from("testbed".into(), component, sandbox)
        .expect("instantiate");
    let url = format!("http://{addr}/v1/catalog");
    if let Err(e) = call(&mut p, &[("behaviour", "http"), ("url", &url)]) {
        panic!("granted fetch failed: {e}");
    }
}

#[test]
fn file_catalog_and_consul_router() {
    let host = PluginHost::new().expect("host");
    let dir = TempDir::new("catalog");
    let cat_dir = dir.0.join("dc1");
    std::fs::create_dir_all(cat_dir.join("dc2")).expect("mkdir");
    std::fs::write(
        cat_dir.join("web.hcl"),
        r#"service {
  name = "web"
  port = 8080
  connect { sidecar_service {
    port = 21000
    proxy { upstreams = [{ destination_name = "api", datacenter = "dc2", local_bind_port = 9191 }] }
  } }
}"#,
    )
    .expect("write");
    std::fs::write(
        cat_dir.join("dc2/gateway.json"),
        r#"{"service": {"name": "mesh-gateway", "kind": "mesh-gateway", "port": 8443,
            "tagged_addresses": {"wan": {"address": "127.0.0.2", "port": 8444}}}}"#,
    )
    .expect("write");
    std::fs::write(
        cat_dir.join("proxy-defaults.yaml"),
        "Kind: proxy-defaults\nName: global\nMeshGateway:\n- Mode: local\n",
    )
    .expect("write");
    let sandbox = Sandbox {
        grants: Grants {
            base: dir.0.clone(),
            dirs: vec![PathBuf::from("dc1")],
            ..Grants::default()
        },
        ..Sandbox::default()
    };
    let mut catalog = host
        .catalog("file-catalog", sandbox.clone())
        .expect("file-catalog");
    let cfg = settings(&[("dir", "dc1"), ("trust_domain", TD), ("datacenter", "dc1")]);
    let (version, cat) = match catalog.fetch(&cfg, 0, None).expect("fetch") {
        CatalogUpdate::Changed((v, c)) => (v, c),
        other => panic!("first fetch must answer the whole catalog: {other:?}"),
    };
    assert_eq!(cat.instances.len(), 3, "web, its sidecar, dc2's gateway");
    assert_eq!(cat.config_entries.len(), 1);
    assert!(matches!(
        catalog.fetch(&cfg, version, None).expect("fetch"),
        CatalogUpdate::Unchanged
    ));

    let mut router = host
        .router("consul-router", sandbox.clone())
        .expect("consul-router");
    let routes = router.gateway_routes(&[], &cat, "dc1").expect("routes");
    let got: Vec<(String, Vec<String>)> = routes
        .into_iter()
        .map(|r| (r.pattern, r.endpoints))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                format!("web.default.dc1.internal.{TD}"),
                vec!["127.0.0.1:21000".to_string()]
            ),
            (
                format!("*.dc2.internal.{TD}"),
                vec!["127.0.0.2:8444".to_string()]
            ),
        ]
    );

    // The sidecar plan crosses the WIT boundary whole: proxy-defaults local → dc1's gateways, which
    // this catalog does not have, so no next hop (fail closed).
    let plan = router
        .sidecar_plan(&[], &cat, "dc1", "web", None)
        .expect("plan");
    assert_eq!(plan.public, "127.0.0.1:21000");
    assert_eq!(plan.local_app.as_deref(), Some("127.0.0.1:8080"));
    let up = &plan.upstreams[0];
    assert_eq!(up.sni, format!("api.default.dc2.internal.{TD}"));
    assert_eq!(
        up.identity,
        format!("spiffe://{TD}/ns/default/dc/dc2/svc/api")
    );
    assert_eq!(
        (up.local_bind_address.as_str(), up.local_bind_port),
        ("127.0.0.1", 9191)
    );
    assert_eq!(up.mode_source, "proxy-defaults");
    assert!(up.via_gateway && up.next_hops.is_empty());
    let e = router
        .sidecar_plan(&[], &cat, "dc1", "api", None)
        .expect_err("no sidecar for api in dc1");
    assert!(
        e.to_string().contains("no connect-proxy registration"),
        "{e}"
    );

    // export-control keeps only exported local services.
    let mut export = host
        .router("export-control", sandbox)
        .expect("export-control");
    let routes = export
        .gateway_routes(&settings(&[("export", "api")]), &cat, "dc1")
        .expect("routes");
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].pattern, format!("*.dc2.internal.{TD}"));

    // An edit is a new version; a broken file refuses the whole catalog with its location.
    std::fs::write(
        cat_dir.join("web.hcl"),
        "service {\n  name = \"web\"\n  port = \n}\n",
    )
    .expect("write");
    let e = catalog.fetch(&cfg, version, None).expect_err("broken file");
    assert!(matches!(e, PluginError::Refused { .. }), "{e}");
    assert!(e.to_string().contains("web.hcl:4:1"), "{e}");
}
