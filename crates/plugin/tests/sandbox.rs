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

fn names(delta: &meshgate_plugin::types::CatalogDelta) -> Vec<(String, String, usize)> {
    let mut out: Vec<_> = delta
        .instances
        .iter()
        .map(|n| (n.datacenter.clone(), n.name.clone(), n.instances.len()))
        .collect();
    out.sort();
    out
}

/// The incremental path end to end through real components: the file catalog answers a delta for the
/// files the host names (and lists everything when it cannot place a name), the Consul router patches
/// its routes from that delta, and every way the two could disagree falls back to a whole answer.
#[test]
fn file_catalog_deltas_feed_the_incremental_router() {
    use meshgate_plugin::types::CatalogChange;
    let host = PluginHost::new().expect("host");
    let dir = TempDir::new("delta");
    let cat_dir = dir.0.join("dc1");
    std::fs::create_dir_all(cat_dir.join("dc2")).expect("mkdir");
    let web = |port: u32| {
        format!(
            "service {{\n  name = \"web\"\n  port = 8080\n  connect {{ sidecar_service {{ port = {port} }} }}\n}}\n"
        )
    };
    std::fs::write(cat_dir.join("web.hcl"), web(21000)).expect("write");
    std::fs::write(
        cat_dir.join("dc2/gateway.json"),
        r#"{"service": {"name": "mesh-gateway", "kind": "mesh-gateway", "port": 8443,
            "tagged_addresses": {"wan": {"address": "127.0.0.2", "port": 8444}}}}"#,
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
    let hint = |files: &[&str]| Some(files.iter().map(|f| f.to_string()).collect::<Vec<_>>());
    // Hints before any answer are not enough: the first answer is whole.
    let (v1, whole) = match catalog.fetch(&cfg, 0, hint(&[])).expect("fetch") {
        CatalogUpdate::Changed(answer) => answer,
        other => panic!("first fetch must answer the whole catalog: {other:?}"),
    };
    assert_eq!(whole.instances.len(), 3);

    let mut router = host
        .router("consul-router", sandbox.clone())
        .expect("consul-router");
    assert!(router.is_incremental());
    assert!(!host
        .router("export-control", sandbox.clone())
        .expect("export-control")
        .is_incremental());
    let web_sni = format!("web.default.dc1.internal.{TD}");
    let e = router
        .update_routes(
            &[],
            &CatalogChange::Delta(meshgate_plugin::types::CatalogDelta {
                instances: vec![],
                config_entries: None,
            }),
            "dc1",
        )
        .expect_err("a delta before the whole catalog");
    assert!(e.to_string().contains("before the whole catalog"), "{e}");
    let first = router
        .update_routes(&[], &CatalogChange::Whole(whole.clone()), "dc1")
        .expect("whole");
    assert!(first.removed.is_empty());
    let mut patterns: Vec<_> = first.upserts.iter().map(|r| r.pattern.clone()).collect();
    patterns.sort();
    assert_eq!(
        patterns,
        vec![format!("*.dc2.internal.{TD}"), web_sni.clone()]
    );

    // An edit named by the host: a delta of web and its sidecar only, no config entries.
    std::fs::write(cat_dir.join("web.hcl"), web(2100)).expect("write");
    let (v2, delta) = match catalog
        .fetch(&cfg, v1, hint(&["dc1/web.hcl", "dc1/web.hcl"]))
        .expect("fetch")
    {
        CatalogUpdate::Delta(answer) => answer,
        other => panic!("an edit after an answer is a delta: {other:?}"),
    };
    assert_ne!(v2, v1);
    assert!(delta.config_entries.is_none());
    assert_eq!(
        names(&delta),
        vec![
            ("dc1".into(), "web".into(), 1),
            ("dc1".into(), "web-sidecar-proxy".into(), 1)
        ]
    );
    let patch = router
        .update_routes(&[], &CatalogChange::Delta(delta), "dc1")
        .expect("patch");
    assert!(patch.removed.is_empty());
    assert_eq!(patch.upserts.len(), 1, "only web's route: {patch:?}");
    assert_eq!(patch.upserts[0].pattern, web_sni);
    assert_eq!(
        patch.upserts[0].endpoints,
        vec!["127.0.0.1:2100".to_string()]
    );

    // The host's hints are trusted: a file it did not name is not looked for...
    std::fs::write(
        cat_dir.join("db.hcl"),
        "service {\n  name = \"db\"\n  port = 5432\n}\n",
    )
    .expect("write");
    assert!(matches!(
        catalog.fetch(&cfg, v2, hint(&[])).expect("fetch"),
        CatalogUpdate::Unchanged
    ));
    // ...until the host cannot say (no hints): then everything is listed.
    let v3 = match catalog.fetch(&cfg, v2, None).expect("fetch") {
        CatalogUpdate::Delta((v, d)) => {
            assert_eq!(names(&d), vec![("dc1".into(), "db".into(), 1)]);
            v
        }
        other => panic!("a new file is a delta: {other:?}"),
    };
    // A name the plugin cannot place (outside its directory) lists everything too; a deleted file is
    // its services with no instances, and the router removes the route.
    std::fs::remove_file(cat_dir.join("web.hcl")).expect("rm");
    let (v4, delta) = match catalog
        .fetch(&cfg, v3, hint(&["elsewhere/x.hcl"]))
        .expect("fetch")
    {
        CatalogUpdate::Delta(answer) => answer,
        other => panic!("a deletion is a delta: {other:?}"),
    };
    assert_eq!(
        names(&delta),
        vec![
            ("dc1".into(), "web".into(), 0),
            ("dc1".into(), "web-sidecar-proxy".into(), 0)
        ]
    );
    let patch = router
        .update_routes(&[], &CatalogChange::Delta(delta), "dc1")
        .expect("patch");
    assert_eq!((patch.upserts.len(), patch.removed), (0, vec![web_sni]));

    // An answer the host does not hold (a stale version) is answered whole again.
    match catalog.fetch(&cfg, v1, None).expect("fetch") {
        CatalogUpdate::Changed((v, c)) => {
            assert_eq!(v, v4);
            assert_eq!(c.instances.len(), 2, "db and dc2's gateway");
        }
        other => panic!("a stale version is answered whole: {other:?}"),
    }
    // A config entry rides in the delta whole (entries are few and change together).
    std::fs::write(
        cat_dir.join("proxy-defaults.yaml"),
        "Kind: proxy-defaults\nName: global\nMeshGateway:\n- Mode: local\n",
    )
    .expect("write");
    match catalog
        .fetch(&cfg, v4, hint(&["dc1/proxy-defaults.yaml"]))
        .expect("fetch")
    {
        CatalogUpdate::Delta((_, d)) => {
            assert!(d.instances.is_empty());
            assert_eq!(d.config_entries.map(|e| e.len()), Some(1));
        }
        other => panic!("a new entry is a delta: {other:?}"),
    }
}
