//! The two steps every plugin build shares — making sure the toolchain has the Wasm target, and turning
//! the core module cargo built into a component — for `meshgate plugin build` and for the build script
//! that builds the shipped plugins (`crates/plugin/build.rs` includes this file), so both are built the
//! same way. Only `std` and `wit-component`: a build script can compile it as is.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

/// The target plugins are built for (not `wasm32-wasip2`: that imports WASI, which the host lacks).
pub const WASM_TARGET: &str = "wasm32-unknown-unknown";

/// Whether the toolchain (`RUSTC`, else `rustc`) has the Wasm target's standard library.
pub fn wasm_target_present() -> bool {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| OsString::from("rustc"));
    Command::new(rustc)
        .args(["--print", "target-libdir", "--target", WASM_TARGET])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .is_some_and(|o| Path::new(String::from_utf8_lossy(&o.stdout).trim()).exists())
}

/// Adds the Wasm target with rustup when the toolchain lacks it; false when it is still missing.
pub fn ensure_wasm_target(say: impl FnOnce(&str)) -> bool {
    if wasm_target_present() {
        return true;
    }
    say("adding the wasm32-unknown-unknown target (rustup target add)");
    Command::new("rustup")
        .args(["target", "add", WASM_TARGET])
        .status()
        .is_ok_and(|s| s.success())
}

/// A core module (with the component-type section wit-bindgen embeds) as a validated component.
pub fn componentize(module: &[u8]) -> Result<Vec<u8>, String> {
    wit_component::ComponentEncoder::default()
        .module(module)
        .map_err(|e| format!("not a module wit-bindgen made: {e:#}"))?
        .validate(true)
        .encode()
        .map_err(|e| format!("{e:#}"))
}
