//! A plugin author's path, run as a user would: `meshgate plugin new` makes a crate of each world in a
//! directory outside the workspace, its own `cargo test` passes, `meshgate plugin build` makes the
//! component, `meshgate plugin test` shows its decisions without a gateway, and a real gateway routes real
//! TLS connections with it. A panic in a plugin reaches the gateway's log with its message.
//!
//! The three plugin crates share one cargo target directory (target/plugin-authoring), so wit-bindgen is
//! compiled once per run.

mod common;

use common::*;
use meshgate_tlskit::{Backend, Pki};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn web() -> String {
    format!("web.default.dc1.internal.{TD}")
}

/// The cargo target directory the plugin crates share.
fn shared_target() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/plugin-authoring")
}

/// A command as a user's shell would run it: none of the outer cargo's variables (its target dir, flags,
/// package) leak into the plugin's build.
fn clean(mut cmd: Command) -> Command {
    for (key, _) in std::env::vars() {
        if key.starts_with("CARGO_") && key != "CARGO_HOME"
            || key.starts_with("RUST") && key != "RUSTUP_HOME" && key != "RUSTUP_TOOLCHAIN"
        {
            cmd.env_remove(key);
        }
    }
    cmd.env("CARGO_TARGET_DIR", shared_target());
    cmd
}

fn run(mut cmd: Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    text
}

fn meshgate() -> Command {
    clean(Command::new(env!("CARGO_BIN_EXE_meshgate")))
}

/// `plugin new` in a fresh directory outside the workspace, then the crate's own tests, then `plugin
/// build`; `edit` may change src/lib.rs first. Returns the component's path.
fn make(dir: &Path, world: &str, name: &str, edit: impl FnOnce(String) -> String) -> PathBuf {
    let crate_dir = dir.join(name);
    let text = run(
        {
            let mut c = meshgate();
            c.args(["plugin", "new", "--world", world, name, "--dir"])
                .arg(&crate_dir);
            c
        },
        "plugin new",
    );
    assert!(text.contains("meshgate plugin build"), "{text}");
    // Refuses to write over it.
    let mut again = meshgate();
    again
        .args(["plugin", "new", "--world", world, name, "--dir"])
        .arg(&crate_dir);
    assert!(!again.status().expect("plugin new again").success());

    let lib = crate_dir.join("src/lib.rs");
    let source = std::fs::read_to_string(&lib).expect("lib.rs");
    std::fs::write(&lib, edit(source)).expect("edit lib.rs");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut test = clean(Command::new(cargo));
    test.arg("test").current_dir(&crate_dir);
    let text = run(test, &format!("cargo test in the new {world} plugin"));
    assert!(text.contains("test result: ok"), "{text}");

    let mut build = meshgate();
    build.args(["plugin", "build"]).arg(&crate_dir);
    let text = run(build, "plugin build");
    assert!(text.contains(&format!("a {world} plugin")), "{text}");
    let component = shared_target().join(format!("{name}.wasm"));
    assert!(component.is_file(), "{text}");
    component
}

#[test]
fn a_plugin_of_each_world_from_an_empty_directory_to_routed_connections() {
    let dir = TempDir::new("plugin-authoring");
    let pki = Pki::new("test CA").expect("ca");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let backend = Backend::start("web-1", any, pki.issue(&[&web()]).expect("leaf")).expect("web");
    let client = pki.client_config(&[]).expect("client");

    // A hook, with a bug planted the way authors plant them: it panics for one name.
    let hook = make(&dir.0, "hook", "deny-hook", |src| {
        // In `decide` (the first `sdk::init()` is `configure`'s).
        let planted = src.replacen(
            "        sdk::init();\n        match decision",
            "        sdk::init();\n        if sni.as_deref() == Some(\"boom.example\") {\n            panic!(\"planted bug for {sni:?}\");\n        }\n        match decision",
            1,
        );
        assert_ne!(
            planted, src,
            "the template's `decide` changed: plant the bug elsewhere"
        );
        planted
    });
    // Without a gateway: the hook's verdicts over ten connections, and how they split.
    let mut trial = meshgate();
    trial
        .args(["plugin", "test"])
        .arg(&hook)
        .args(["--set", "deny=bad.example", "--sni", "bad.example", "--sni"])
        .arg(web())
        .args(["--connections", "10"]);
    let text = run(trial, "plugin test (hook)");
    assert!(text.contains("deny-hook: a hook plugin"), "{text}");
    assert!(
        text.contains("connection 1: sni Some(\"bad.example\") -> deny"),
        "{text}"
    );
    assert!(text.contains("deny: 5 (50.0 %)"), "{text}");
    assert!(text.contains("use-table: 5 (50.0 %)"), "{text}");
    assert!(text.contains("configure: settings accepted"), "{text}");
    // A misspelt key: the plugin's `configure` refuses it, naming the key, before any decision.
    let out = meshgate()
        .args(["plugin", "test"])
        .arg(&hook)
        .args(["--set", "denny=bad.example", "--sni", "bad.example"])
        .output()
        .expect("plugin test");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("refused its settings: setting `denny`: unknown key"),
        "{err}"
    );

    let gw = Gateway::start_logged(
        "",
        &format!(
            "[[routes]]\nsni = \"{web}\"\nendpoints = [\"{addr}\"]\n[[routes]]\nsni = \"bad.example\"\nendpoints = [\"{addr}\"]\n[[routes]]\nsni = \"boom.example\"\nendpoints = [\"{addr}\"]\n\n[hook]\nplugin = \"{hook}\"\nconfig = {{ deny = \"bad.example\" }}\n",
            web = web(),
            addr = backend.addr(),
            hook = hook.display()
        ),
        &[],
    );
    let answer = meshgate_tlskit::hello(gw.listen, &web(), client.clone()).expect("web via hook");
    assert!(answer.starts_with("backend=web-1 "), "{answer}");
    assert!(
        meshgate_tlskit::hello(gw.listen, "bad.example", client.clone()).is_err(),
        "the hook denies bad.example"
    );
    let _ = meshgate_tlskit::hello(gw.listen, "boom.example", client.clone());
    let logged = wait_for(
        Duration::from_secs(10),
        "the panic in the gateway's log",
        || {
            let log = gw.log();
            log.contains("planted bug for Some(\"boom.example\")")
                .then_some(log)
        },
    );
    assert!(logged.contains("meshgate::plugin"), "{logged}");
    assert!(logged.contains("deny-hook"), "{logged}");
    drop(gw);

    // A router: only allowed services get routes from the catalog's healthy sidecars, weighted by
    // their `weight` meta (web-1 3, its canary web-2 1).
    let router = make(&dir.0, "router", "allow-router", |s| s);
    let canary = Backend::start("web-2", any, pki.issue(&[&web()]).expect("leaf")).expect("web-2");
    let catalog = format!(
        "services = [\n  {{ name = \"web-sidecar-proxy\", id = \"web-1\", kind = \"connect-proxy\", port = {port}, meta = {{ weight = \"3\" }}\n     proxy {{ destination_service_name = \"web\" }} }},\n  {{ name = \"web-sidecar-proxy\", id = \"web-2\", kind = \"connect-proxy\", port = {canary_port}, meta = {{ weight = \"1\" }}\n     proxy {{ destination_service_name = \"web\" }} }},\n  {{ name = \"db-sidecar-proxy\", id = \"db-1\", kind = \"connect-proxy\", port = {port}\n     proxy {{ destination_service_name = \"db\" }} }},\n]\n",
        port = backend.addr().port(),
        canary_port = canary.addr().port(),
    );
    // Without a gateway: the router's routes for the catalog directory, and the route a name gets.
    std::fs::create_dir_all(dir.0.join("catalog")).expect("catalog dir");
    std::fs::write(dir.0.join("catalog/services.hcl"), &catalog).expect("catalog file");
    let mut trial = meshgate();
    trial
        .args(["plugin", "test"])
        .arg(&router)
        .args(["--set", "allow=web", "--trust-domain", TD, "--catalog"])
        .arg(dir.0.join("catalog"))
        .args(["--sni"])
        .arg(web())
        .args(["--sni", &format!("db.default.dc1.internal.{TD}")]);
    let text = run(trial, "plugin test (router)");
    assert!(text.contains("1 routes for dc1"), "{text}");
    assert!(
        text.contains(&format!(
            "sni {} -> [\"{}\", \"{}\"]",
            web(),
            backend.addr(),
            canary.addr()
        )),
        "{text}"
    );
    assert!(text.contains("weights [3, 1]"), "{text}");
    assert!(text.contains("db.default.dc1.internal"), "{text}");
    assert!(text.contains("-> no route (closed)"), "{text}");

    // One core, so the split is exact: every 4 consecutive connections, 3 to web-1 and 1 to web-2.
    let gw = Gateway::start_with_files(
        "workers = 1",
        &format!(
            "[catalog]\nplugin = \"file-catalog\"\nallow_dirs = [\"catalog\"]\nconfig = {{ dir = \"catalog\", datacenter = \"dc1\", trust_domain = \"{TD}\" }}\n[router]\nplugin = \"{}\"\nconfig = {{ allow = \"web\" }}\n",
            router.display()
        ),
        &[("catalog/services.hcl", &catalog)],
    );
    let mut split = std::collections::BTreeMap::new();
    for _ in 0..8 {
        let answer =
            meshgate_tlskit::hello(gw.listen, &web(), client.clone()).expect("web via router");
        let backend = answer.split_whitespace().next().unwrap_or("").to_owned();
        *split.entry(backend).or_insert(0) += 1;
    }
    assert_eq!(
        split,
        [
            ("backend=web-1".to_owned(), 6),
            ("backend=web-2".to_owned(), 2)
        ]
        .into(),
        "the router's 3:1 weights over 8 connections"
    );
    let routes = gw.get("/routes").expect("routes");
    assert!(routes.contains("\"weights\""), "{routes}");
    assert!(routes.contains("allow-router"), "{routes}");
    assert!(
        !routes.contains("db.default.dc1"),
        "db is not allowed: {routes}"
    );
    drop(gw);

    // A catalog: the services come from the plugin's settings; the default router routes them.
    let catalog = make(&dir.0, "catalog", "settings-catalog", |s| s);
    let gw = Gateway::start(
        "",
        &format!(
            "[catalog]\nplugin = \"{}\"\nconfig = {{ datacenter = \"dc1\", trust_domain = \"{TD}\", services = \"web={}\" }}\n",
            catalog.display(),
            backend.addr()
        ),
    );
    let answer = meshgate_tlskit::hello(gw.listen, &web(), client).expect("web via catalog");
    assert!(answer.starts_with("backend=web-1 "), "{answer}");
}
