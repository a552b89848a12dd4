//! `meshgate plugin build`: cargo builds the crate for `wasm32-unknown-unknown` (the target is added
//! with rustup when missing), the core module becomes a component in process, and the component is loaded
//! the way the gateway loads plugins, so a build that succeeds is a plugin the gateway accepts.

use crate::AuthorError;
use meshgate_plugin::{PluginHost, PluginKind};
use serde::Deserialize;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What a build made.
#[derive(Debug, Clone)]
pub struct Built {
    /// The component.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: usize,
    /// The world it implements, as the gateway sees it.
    pub kind: PluginKind,
}

#[derive(Deserialize)]
struct Manifest {
    package: Option<PackageName>,
}

#[derive(Deserialize)]
struct PackageName {
    name: String,
}

/// The package name in `dir/Cargo.toml`.
pub fn package_name(dir: &Path) -> Result<String, AuthorError> {
    let path = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&path).map_err(|source| AuthorError::Io {
        path: path.clone(),
        source,
    })?;
    let m: Manifest = toml::from_str(&text).map_err(|e| AuthorError::Manifest {
        path: path.clone(),
        message: e.to_string(),
    })?;
    m.package.map(|p| p.name).ok_or(AuthorError::Manifest {
        path,
        message: "no [package] (run `meshgate plugin build` in the plugin's crate)".into(),
    })
}

/// Builds the crate in `dir` and writes its component to `out` (default: `<target>/<name>.wasm`).
pub fn build(dir: &Path, out: Option<&Path>) -> Result<Built, AuthorError> {
    let name = package_name(dir)?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    ensure_wasm_target()?;
    let target_dir =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| dir.join("target"), PathBuf::from);
    let status = Command::new(&cargo)
        .args(["build", "--release", "--target", "wasm32-unknown-unknown"])
        .arg("--manifest-path")
        .arg(dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .status()
        .map_err(|e| AuthorError::Tool {
            what: "cargo build".into(),
            message: e.to_string(),
        })?;
    if !status.success() {
        return Err(AuthorError::Tool {
            what: "cargo build --target wasm32-unknown-unknown".into(),
            message: format!("failed ({status}); its errors are above"),
        });
    }
    let module = target_dir
        .join("wasm32-unknown-unknown/release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    let bytes = std::fs::read(&module).map_err(|source| AuthorError::Io {
        path: module.clone(),
        source,
    })?;
    let component = componentize(&bytes).map_err(|message| AuthorError::Component {
        path: module.clone(),
        message,
    })?;
    let path = out.map_or_else(
        || target_dir.join(format!("{name}.wasm")),
        Path::to_path_buf,
    );
    let kind = kind_of(&component).map_err(|message| AuthorError::Component {
        path: path.clone(),
        message,
    })?;
    std::fs::write(&path, &component).map_err(|source| AuthorError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(Built {
        path,
        bytes: component.len(),
        kind,
    })
}

pub use crate::toolchain::componentize;

/// Which world a component implements, by compiling it as the gateway does.
pub fn kind_of(component: &[u8]) -> Result<PluginKind, String> {
    let host = PluginHost::new().map_err(|e| e.to_string())?;
    let c = host.compile(component).map_err(|e| e.to_string())?;
    host.kind_of(&c).ok_or_else(|| {
        "exports none of the plugin worlds (catalog, watch catalog, router, connection hook)".into()
    })
}

/// Adds the Wasm target with rustup when this toolchain lacks it.
fn ensure_wasm_target() -> Result<(), AuthorError> {
    if crate::toolchain::ensure_wasm_target(|m| eprintln!("{m}")) {
        Ok(())
    } else {
        Err(AuthorError::Tool {
            what: "rustup target add wasm32-unknown-unknown".into(),
            message: "failed; install the target by hand".into(),
        })
    }
}
