//! `meshgate plugin test`: one plugin run against given inputs, without a gateway or sockets — the same
//! host, sandbox and calls the gateway makes, and a plain-text account of every decision and a summary
//! (for a hook: how the connections split between its decisions).
//!
//! A router is fed a catalog read from a directory by the shipped `file-catalog` plugin (Consul
//! registrations and config entries in HCL, JSON, YAML or TOML), as a gateway with `[catalog] plugin =
//! "file-catalog"` would read it.

use crate::AuthorError;
use meshgate_plugin::types::{Catalog, CatalogUpdate, Decision, Health, Route};
use meshgate_plugin::{Grants, PluginHost, PluginKind, Sandbox};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Upper bound on simulated connections (each is one plugin call).
pub const MAX_CONNECTIONS: u64 = 1_000_000;
/// Connections listed one per line; past this only the summary is printed.
const LISTED: u64 = 20;

/// What to run a plugin against.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// The plugin's settings (`config = { ... }`), as strings.
    pub settings: Vec<(String, String)>,
    /// Names to ask about (a hook: connections cycle through them; a router: which route each gets).
    pub snis: Vec<String>,
    /// Client address a hook sees.
    pub source: String,
    /// Simulated connections (a hook); at least one per name.
    pub connections: u64,
    /// A catalog directory (a router's input), read by the shipped file-catalog.
    pub catalog: Option<PathBuf>,
    /// The gateway's datacenter.
    pub datacenter: String,
    /// The mesh's trust domain (for the catalog directory).
    pub trust_domain: String,
    /// Directories the plugin may read.
    pub allow_dirs: Vec<PathBuf>,
}

/// Printed once `configure` accepted the settings (a refusal fails the run with the plugin's message).
const CONFIGURED: &str = "configure: settings accepted\n";

fn fail(path: &Path, message: impl std::fmt::Display) -> AuthorError {
    AuthorError::Component {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Runs the plugin in `file` against `inputs`; the report, as text.
pub fn run(file: &Path, inputs: &Inputs) -> Result<String, AuthorError> {
    let host = PluginHost::new().map_err(|e| fail(file, e))?;
    let bytes = std::fs::read(file).map_err(|source| AuthorError::Io {
        path: file.to_path_buf(),
        source,
    })?;
    let component = host.compile(&bytes).map_err(|e| fail(file, e))?;
    let kind = host
        .kind_of(&component)
        .ok_or_else(|| fail(file, "exports none of the plugin worlds"))?;
    let name = file
        .file_stem()
        .map_or_else(|| "plugin".into(), |s| s.to_string_lossy().into_owned());
    let base = file.parent().unwrap_or(Path::new(".")).to_path_buf();
    let sandbox = Sandbox {
        grants: Grants {
            base: std::env::current_dir().unwrap_or(base),
            dirs: inputs.allow_dirs.clone(),
            ..Grants::default()
        },
        ..Sandbox::default()
    };
    let mut out = format!("{name}: a {} plugin\n", kind.label());
    match kind {
        PluginKind::Hook => {
            let mut hook = host
                .hook_from(name, component, sandbox)
                .map_err(|e| fail(file, e))?;
            hook.configure(&inputs.settings)
                .map_err(|e| fail(file, e))?;
            out.push_str(CONFIGURED);
            let n = inputs
                .connections
                .max(inputs.snis.len() as u64)
                .clamp(1, MAX_CONNECTIONS);
            let mut split: BTreeMap<String, u64> = BTreeMap::new();
            for i in 0..n {
                let sni = (!inputs.snis.is_empty())
                    .then(|| inputs.snis[(i % inputs.snis.len() as u64) as usize].as_str());
                let decision = match hook.decide(&inputs.settings, sni, &[], &inputs.source) {
                    Ok(v) => match v.decision {
                        Decision::UseTable => "use-table".to_owned(),
                        Decision::Deny => "deny".to_owned(),
                        Decision::Forward(to) => format!("forward {}", to.join(",")),
                    },
                    Err(e) => format!("failed ({e})"),
                };
                if i < LISTED {
                    let _ = writeln!(out, "  connection {}: sni {:?} -> {decision}", i + 1, sni);
                }
                *split.entry(decision).or_default() += 1;
            }
            if n > LISTED {
                let _ = writeln!(out, "  ... {} more connections", n - LISTED);
            }
            let _ = writeln!(out, "summary over {n} connections:");
            for (decision, count) in split {
                let _ = writeln!(
                    out,
                    "  {decision}: {count} ({:.1} %)",
                    100.0 * count as f64 / n as f64
                );
            }
        }
        PluginKind::Router => {
            let dir = inputs.catalog.as_ref().ok_or_else(|| {
                fail(
                    file,
                    "a router needs a catalog: --catalog DIR (Consul registrations)",
                )
            })?;
            let catalog = read_catalog(&host, dir, inputs)?;
            let mut router = host
                .router_from(name, component, sandbox)
                .map_err(|e| fail(file, e))?;
            router
                .configure(&inputs.settings)
                .map_err(|e| fail(file, e))?;
            out.push_str(CONFIGURED);
            let routes = router
                .gateway_routes(&inputs.settings, &catalog, &inputs.datacenter)
                .map_err(|e| fail(file, e))?;
            let _ = writeln!(out, "{} routes for {}:", routes.len(), inputs.datacenter);
            for r in &routes {
                let _ = writeln!(out, "  {} -> {:?} ({})", r.pattern, r.endpoints, r.reason);
                if !r.weights.is_empty() {
                    let _ = writeln!(out, "      weights {:?}", r.weights);
                }
                for group in &r.failover {
                    let _ = writeln!(out, "      then {group:?}");
                }
            }
            for sni in &inputs.snis {
                match best_route(&routes, sni) {
                    Some(r) => {
                        let _ =
                            writeln!(out, "sni {sni} -> {:?} (route {})", r.endpoints, r.pattern);
                    }
                    None => {
                        let _ = writeln!(out, "sni {sni} -> no route (closed)");
                    }
                }
            }
        }
        PluginKind::Catalog => {
            let mut catalog = host
                .catalog_from(name, component, sandbox)
                .map_err(|e| fail(file, e))?;
            catalog
                .configure(&inputs.settings)
                .map_err(|e| fail(file, e))?;
            out.push_str(CONFIGURED);
            match catalog
                .fetch(&inputs.settings, 0, None)
                .map_err(|e| fail(file, e))?
            {
                CatalogUpdate::Unchanged => {
                    let _ = writeln!(
                        out,
                        "unchanged (asked with version 0: a catalog plugin should answer one)"
                    );
                }
                CatalogUpdate::Changed((version, c)) => {
                    let _ = writeln!(out, "version {version}:");
                    out.push_str(&describe(&c));
                }
                CatalogUpdate::Delta((version, _)) => {
                    let _ = writeln!(
                        out,
                        "a delta to version {version} (asked with version 0: a catalog plugin should answer the whole catalog)"
                    );
                }
            }
        }
        PluginKind::WatchCatalog => {
            host.watch_catalog_from(name, component, sandbox)
                .and_then(|mut p| p.configure(&inputs.settings))
                .map_err(|e| fail(file, e))?;
            out.push_str(CONFIGURED);
            let _ = writeln!(
                out,
                "a watch-fed catalog runs against a Consul agent; test it with a gateway (docs/plugins.md)"
            );
        }
    }
    Ok(out)
}

/// A catalog directory read by the shipped file-catalog.
fn read_catalog(host: &PluginHost, dir: &Path, inputs: &Inputs) -> Result<Catalog, AuthorError> {
    let sandbox = Sandbox {
        grants: Grants {
            base: std::env::current_dir().unwrap_or_default(),
            dirs: vec![dir.to_path_buf()],
            ..Grants::default()
        },
        ..Sandbox::default()
    };
    let settings = vec![
        ("datacenter".to_owned(), inputs.datacenter.clone()),
        ("dir".to_owned(), dir.display().to_string()),
        ("trust_domain".to_owned(), inputs.trust_domain.clone()),
    ];
    let mut files = host
        .catalog("file-catalog", sandbox)
        .map_err(|e| fail(dir, e))?;
    files.configure(&settings).map_err(|e| fail(dir, e))?;
    match files.fetch(&settings, 0, None).map_err(|e| fail(dir, e))? {
        CatalogUpdate::Changed((_, c)) => Ok(c),
        CatalogUpdate::Unchanged | CatalogUpdate::Delta(_) => Err(fail(
            dir,
            "file-catalog answered `unchanged` or a delta to version 0",
        )),
    }
}

/// The route a name gets: the exact pattern, else the longest `*.suffix` that covers it.
fn best_route<'a>(routes: &'a [Route], sni: &str) -> Option<&'a Route> {
    let sni = sni.to_ascii_lowercase();
    routes
        .iter()
        .find(|r| r.pattern.eq_ignore_ascii_case(&sni))
        .or_else(|| {
            routes
                .iter()
                .filter(|r| {
                    r.pattern.strip_prefix("*.").is_some_and(|suffix| {
                        sni.len() > suffix.len() + 1
                            && sni.ends_with(&suffix.to_ascii_lowercase())
                            && sni.as_bytes()[sni.len() - suffix.len() - 1] == b'.'
                    })
                })
                .max_by_key(|r| r.pattern.len())
        })
}

/// A catalog, summarised: instances per datacenter, service and health; config entries.
fn describe(c: &Catalog) -> String {
    let mut out = format!("  trust domain {}\n", c.trust_domain);
    let mut by: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for i in &c.instances {
        let e = by
            .entry((i.datacenter.clone(), i.name.clone()))
            .or_default();
        if matches!(i.health, Health::Passing | Health::Warning) {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    for ((dc, name), (healthy, not)) in by {
        let _ = writeln!(out, "  {dc}/{name}: {healthy} healthy, {not} not");
    }
    for e in &c.config_entries {
        let _ = writeln!(out, "  config entry {:?} {}", e.kind, e.name);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(p: &str) -> Route {
        Route {
            pattern: p.into(),
            endpoints: vec![p.into()],
            failover: Vec::new(),
            reason: String::new(),
            weights: Vec::new(),
        }
    }

    #[test]
    fn exact_then_longest_wildcard() {
        let routes = [route("*.b.c"), route("*.c"), route("a.b.c")];
        assert_eq!(
            best_route(&routes, "a.b.c").map(|r| r.pattern.as_str()),
            Some("a.b.c")
        );
        assert_eq!(
            best_route(&routes, "x.b.c").map(|r| r.pattern.as_str()),
            Some("*.b.c")
        );
        assert_eq!(
            best_route(&routes, "x.c").map(|r| r.pattern.as_str()),
            Some("*.c")
        );
        assert!(best_route(&routes, "c").is_none());
        assert!(best_route(&routes, "xb.c").map(|r| r.pattern.as_str()) == Some("*.c"));
    }
}
