//! Builds the plugins that ship with meshgate (`plugins/`) from source for `wasm32-unknown-unknown` and
//! turns each core module into a component (`wit-component`), so the gateway embeds them and a fresh clone
//! needs nothing but `rustup target add wasm32-unknown-unknown`.
//!
//! The plugins are a separate Cargo workspace built into `target/wasm-plugins` (its own target dir, so the
//! nested build never waits on the outer build's lock).

use std::path::{Path, PathBuf};
use std::process::Command;

// The same target check and componentizing as `meshgate plugin build`: the shipped plugins are built
// the way a user's plugin is.
#[path = "../pluginkit/src/toolchain.rs"]
mod toolchain;

/// Shipped plugins: (crate name, file stem of the built module).
const PLUGINS: [(&str, &str); 7] = [
    ("file-catalog", "file_catalog"),
    ("consul-catalog", "consul_catalog"),
    ("consul-router", "consul_router"),
    ("export-control", "export_control"),
    ("sni-denylist", "sni_denylist"),
    // Misbehaves on request; embedded for the sandbox tests only.
    ("testbed", "testbed"),
    // Misbehaves for chosen names; embedded for the fault runs (benches/src/faults.rs) only.
    ("testbed-hook", "testbed_hook"),
];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest.join("../..");
    let plugins = root.join("plugins");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    println!(
        "cargo:rerun-if-changed={}",
        manifest.join("../pluginkit/src/toolchain.rs").display()
    );
    for p in ["wit", "guest/src", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", plugins.join(p).display());
    }
    for (name, _) in PLUGINS {
        println!(
            "cargo:rerun-if-changed={}",
            plugins.join(name).join("src").display()
        );
        println!(
            "cargo:rerun-if-changed={}",
            plugins.join(name).join("Cargo.toml").display()
        );
    }
    // Path crates the plugins build from (consul-catalog uses meshgate-consul's pure half).
    // ... and the guest SDK, which `plugins/guest` takes from pluginkit's templates.
    println!(
        "cargo:rerun-if-changed={}",
        root.join("crates/pluginkit/templates/sdk.rs").display()
    );
    for krate in ["crates/mesh", "crates/consul"] {
        println!(
            "cargo:rerun-if-changed={}",
            root.join(krate).join("src").display()
        );
        println!(
            "cargo:rerun-if-changed={}",
            root.join(krate).join("Cargo.toml").display()
        );
    }

    // target/<profile>/build/<pkg>/out -> target/wasm-plugins
    let target_dir = out
        .ancestors()
        .nth(4)
        .map(|t| t.join("wasm-plugins"))
        .unwrap_or_else(|| out.join("wasm-plugins"));
    toolchain::ensure_wasm_target(|m| println!("cargo:warning={m}"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--release",
        "--locked",
        "--target",
        "wasm32-unknown-unknown",
    ])
    .arg("--manifest-path")
    .arg(plugins.join("Cargo.toml"))
    .arg("--target-dir")
    .arg(&target_dir);
    // The outer build's settings (clippy as wrapper, its flags, its target) must not leak into the guests.
    for (key, _) in std::env::vars() {
        if key.starts_with("CARGO_") && key != "CARGO_HOME"
            || key.starts_with("RUST") && key != "RUSTUP_HOME" && key != "RUSTUP_TOOLCHAIN"
        {
            cmd.env_remove(key);
        }
    }
    let status = cmd.status().expect("run cargo for the plugins");
    if !status.success() {
        panic!(
            "building the plugins failed; is the target installed? `rustup target add wasm32-unknown-unknown`"
        );
    }
    for (name, stem) in PLUGINS {
        let module = target_dir
            .join("wasm32-unknown-unknown/release")
            .join(format!("{stem}.wasm"));
        let component = componentize(&module).unwrap_or_else(|e| panic!("{name}: {e}"));
        std::fs::write(out.join(format!("{stem}.wasm")), component).expect("write component");
    }
}

fn componentize(module: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(module).map_err(|e| format!("{}: {e}", module.display()))?;
    toolchain::componentize(&bytes)
}
