//! `meshgate plugin new`: the files of a standalone plugin crate, made from templates (`templates/`) and
//! this gateway's own WIT. Pure: it returns paths and contents; the caller writes them.
//!
//! The crate builds anywhere (it names no path dependency and is its own workspace); its `Cargo.lock` is
//! the shipped plugins' lockfile cut down to what `wit-bindgen` needs, so a new plugin builds with the
//! versions meshgate itself was tested with.

use crate::AuthorError;
use serde::Deserialize;
use std::collections::{BTreeSet, VecDeque};
use std::path::PathBuf;

/// The WIT package every plugin is built against (this gateway's interface).
pub const WIT: &str = include_str!("../../../plugins/wit/meshgate.wit");
/// The shipped plugins' lockfile: the versions a new plugin starts from.
const PLUGINS_LOCK: &str = include_str!("../../../plugins/Cargo.lock");

const SDK: &str = include_str!("../templates/sdk.rs");
const MANIFEST: &str = include_str!("../templates/Cargo.toml.in");
const HOOK: &str = include_str!("../templates/hook.rs");
const ROUTER: &str = include_str!("../templates/router.rs");
const CATALOG: &str = include_str!("../templates/catalog.rs");

/// The kinds of plugin `plugin new` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum World {
    /// `catalog-plugin`: supplies the catalog.
    Catalog,
    /// `router-plugin`: turns the catalog into routes.
    Router,
    /// `connection-hook`: decides per connection.
    Hook,
}

impl World {
    /// The world's name in the WIT.
    pub fn wit_name(self) -> &'static str {
        match self {
            World::Catalog => "catalog-plugin",
            World::Router => "router-plugin",
            World::Hook => "connection-hook",
        }
    }

    /// The section of the gateway's config that loads it.
    pub fn section(self) -> &'static str {
        match self {
            World::Catalog => "catalog",
            World::Router => "router",
            World::Hook => "hook",
        }
    }

    fn template(self) -> &'static str {
        match self {
            World::Catalog => CATALOG,
            World::Router => ROUTER,
            World::Hook => HOOK,
        }
    }
}

/// The interface version the WIT declares (`package meshgate:plugin@X;`).
pub fn interface_version() -> &'static str {
    WIT.lines()
        .find_map(|l| l.trim().strip_prefix("package meshgate:plugin@"))
        .map_or("?", |v| v.trim_end_matches(';'))
}

/// Checks that `name` can be a crate name and a file stem.
pub fn check_name(name: &str) -> Result<(), AuthorError> {
    let why = if name.is_empty() || name.len() > 64 {
        Some("must be 1 to 64 characters")
    } else if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        Some("must start with a lowercase letter")
    } else if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        Some("may hold only lowercase letters, digits, `-` and `_`")
    } else {
        None
    };
    match why {
        Some(why) => Err(AuthorError::Name {
            name: name.to_owned(),
            why,
        }),
        None => Ok(()),
    }
}

/// Every file of a new plugin crate named `name`, as (path relative to the crate, contents).
pub fn files(world: World, name: &str) -> Result<Vec<(PathBuf, String)>, AuthorError> {
    check_name(name)?;
    let locked = pinned_lock(name)?;
    let wit_bindgen = locked
        .iter()
        .find(|p| p.name == "wit-bindgen")
        .map(|p| p.version.clone())
        .ok_or_else(|| lock_error("no wit-bindgen in the shipped plugins' lockfile"))?;
    let fill = |t: &str| {
        t.replace("{{name}}", name)
            .replace("{{world}}", world.wit_name())
            .replace("{{kind}}", world.section())
            .replace("{{version}}", interface_version())
            .replace("{{wit_bindgen}}", &wit_bindgen)
    };
    let readme = format!(
        "# {name}\n\nA meshgate {kind} plugin (world `{world}`, interface `meshgate:plugin@{version}`), made by \
         `meshgate plugin new`.\n\n```sh\ncargo test                       # the example's logic, on the host\n\
         meshgate plugin build            # -> target/{name}.wasm (a component)\n```\n\nLoad it from a gateway's \
         config:\n\n```toml\n[{kind}]\nplugin = \"path/to/target/{name}.wasm\"\nconfig = {{ }}   # the settings the \
         plugin reads (see src/lib.rs)\n```\n\n`src/sdk.rs` is a small guest SDK (panic hook, log macros, typed \
         settings); `wit/meshgate.wit` is the interface this gateway speaks. Plugin log lines appear under the \
         `meshgate::plugin` log target.\n",
        kind = world.section(),
        world = world.wit_name(),
        version = interface_version(),
    );
    Ok(vec![
        ("Cargo.toml".into(), fill(MANIFEST)),
        ("Cargo.lock".into(), render_lock(name, &locked)),
        (".gitignore".into(), "/target\n".into()),
        ("README.md".into(), readme),
        ("wit/meshgate.wit".into(), WIT.to_owned()),
        ("src/lib.rs".into(), fill(world.template())),
        ("src/sdk.rs".into(), SDK.to_owned()),
    ])
}

#[derive(Debug, Clone, Deserialize)]
struct Lockfile {
    package: Vec<Package>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
struct Package {
    name: String,
    version: String,
    source: Option<String>,
    checksum: Option<String>,
    #[serde(default)]
    dependencies: Vec<String>,
}

fn lock_error(message: &str) -> AuthorError {
    AuthorError::Manifest {
        path: "plugins/Cargo.lock (built into meshgate)".into(),
        message: message.to_owned(),
    }
}

/// The packages `wit-bindgen` needs, from the shipped plugins' lockfile.
fn pinned_lock(_name: &str) -> Result<Vec<Package>, AuthorError> {
    let lock: Lockfile = toml::from_str(PLUGINS_LOCK).map_err(|e| lock_error(&e.to_string()))?;
    let find = |dep: &str| -> Option<&Package> {
        // A dependency is written `name`, or `name version` when several versions are locked.
        let mut parts = dep.split(' ');
        let name = parts.next()?;
        let version = parts.next();
        lock.package
            .iter()
            .find(|p| p.name == name && version.is_none_or(|v| p.version == v))
    };
    let mut seen = BTreeSet::new();
    let mut queue = VecDeque::from(["wit-bindgen".to_owned()]);
    let mut out = Vec::new();
    while let Some(dep) = queue.pop_front() {
        let p = find(&dep).ok_or_else(|| lock_error(&format!("{dep} is not locked")))?;
        if seen.insert((p.name.clone(), p.version.clone())) {
            queue.extend(p.dependencies.iter().cloned());
            out.push(p.clone());
        }
    }
    out.sort();
    Ok(out)
}

/// A Cargo.lock for the new crate: its own entry and the pinned packages, their dependencies written as
/// the shipped lockfile writes them (a subset of an unambiguous lockfile stays unambiguous). Cargo adds
/// what a plugin's own new dependencies need.
fn render_lock(name: &str, packages: &[Package]) -> String {
    let mut out = String::from(
        "# This file is automatically @generated by Cargo.\n# It is not intended for manual editing.\nversion = 4\n",
    );
    let root = Package {
        name: name.to_owned(),
        version: "0.1.0".into(),
        source: None,
        checksum: None,
        dependencies: vec!["wit-bindgen".into()],
    };
    let mut all: Vec<&Package> = packages.iter().chain([&root]).collect();
    all.sort();
    for p in all {
        out.push_str(&format!(
            "\n[[package]]\nname = \"{}\"\nversion = \"{}\"\n",
            p.name, p.version
        ));
        if let Some(s) = &p.source {
            out.push_str(&format!("source = \"{s}\"\n"));
        }
        if let Some(c) = &p.checksum {
            out.push_str(&format!("checksum = \"{c}\"\n"));
        }
        if !p.dependencies.is_empty() {
            out.push_str("dependencies = [\n");
            for d in &p.dependencies {
                out.push_str(&format!(" \"{d}\",\n"));
            }
            out.push_str("]\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_cannot_be_crates_are_refused() {
        for bad in ["", "Upper", "1abc", "a b", "a/b", "ä"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "canary-split", "allow_list2"] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn every_world_fills_every_placeholder() {
        for world in [World::Catalog, World::Router, World::Hook] {
            let files = files(world, "my-plugin").expect("files");
            for (path, text) in &files {
                assert!(
                    !text.contains("{{"),
                    "{} keeps a placeholder",
                    path.display()
                );
            }
            let lib = &files
                .iter()
                .find(|(p, _)| p.ends_with("src/lib.rs"))
                .expect("lib")
                .1;
            assert!(lib.contains(&format!("world: \"{}\"", world.wit_name())));
            let manifest = &files[0].1;
            assert!(manifest.contains("name = \"my-plugin\""));
        }
    }

    #[test]
    fn the_lock_pins_wit_bindgen_and_what_it_needs() {
        let lock = pinned_lock("x").expect("lock");
        assert!(lock.iter().any(|p| p.name == "wit-bindgen"));
        assert!(lock.iter().any(|p| p.name == "wit-bindgen-rust-macro"));
        // Nothing the shipped plugins need beyond wit-bindgen (their own crates, serde_json...).
        assert!(!lock.iter().any(|p| p.name.starts_with("meshgate")));
        let text = render_lock("x", &lock);
        let parsed: Lockfile = toml::from_str(&text).expect("a lockfile cargo can read");
        assert_eq!(parsed.package.len(), lock.len() + 1);
    }

    #[test]
    fn the_interface_version_is_read_from_the_wit() {
        let v = interface_version();
        assert!(v.split('.').count() == 3, "{v}");
    }
}
