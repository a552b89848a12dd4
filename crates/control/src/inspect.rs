//! `meshgate check`: what meshgate understands of a file — a gateway or sidecar config, or a Consul
//! registration or config entry in any format — as text for humans, or where and why it stopped.

use crate::error::ControlError;
use meshgate_config::Config;
use std::fmt::Write;
use std::path::Path;

/// `meshgate check FILE`: a gateway or sidecar config, or a Consul registration / config entry in any
/// format.
pub fn check(file: &Path) -> Result<String, ControlError> {
    let mut out = String::new();
    let text = std::fs::read_to_string(file)
        .map_err(|e| ControlError::Config(format!("{}: {e}", file.display())))?;
    let is_gateway_config = meshgate_mesh::Format::detect(file, &text)
        == meshgate_mesh::Format::Toml
        && text.lines().any(|l| l.trim() == "[gateway]");
    if is_gateway_config {
        return check_gateway(file, &text);
    }
    let is_toml = meshgate_mesh::Format::detect(file, &text) == meshgate_mesh::Format::Toml;
    if is_toml && text.lines().any(|l| l.trim() == "[sidecar]") {
        return match meshgate_config::SidecarConfig::parse(&text, file) {
            Ok(c) => {
                let _ = writeln!(out, "{}: valid", file.display());
                let _ = writeln!(
                    out,
                    "sidecar for {} in {}: admin {}, default intention {:?}, certificate {}",
                    c.sidecar.service,
                    c.sidecar.datacenter,
                    c.sidecar.admin,
                    c.sidecar.default_intention,
                    c.tls.as_ref().map_or_else(
                        || "from the Consul agent".to_owned(),
                        |t| c.path(&t.cert_file).display().to_string()
                    )
                );
                let _ =
                    writeln!(out,
                    "  catalog plugin {}, router plugin {}; listeners come from the registration",
                    c.catalog.plugin,
                    c.router_section().plugin
                );
                // The file is valid whatever its catalog holds; a catalog that cannot be read is said.
                match crate::sidecar::explain(&c) {
                    Ok(t) => out.push_str(&t),
                    Err(e) => {
                        let _ = writeln!(out, "  upstream targets not computed: {e}");
                    }
                }
                Ok(out)
            }
            Err(e) => Err(ControlError::Config(e.to_string())),
        };
    }
    match meshgate_mesh::load_document(&text, file) {
        Ok(doc) => {
            let _ = writeln!(out, "{}: valid", file.display());
            out.push_str(&describe(&doc));
            Ok(out)
        }
        Err(e) => Err(ControlError::Config(e.to_string())),
    }
}

fn check_gateway(file: &Path, text: &str) -> Result<String, ControlError> {
    let mut out = String::new();
    match Config::parse(text, file) {
        Ok(config) => {
            let g = &config.gateway;
            let _ = writeln!(out, "{}: valid", file.display());
            let _ = writeln!(
                out,
                "gateway {} in {}: listen {:?}, admin {}",
                g.name,
                g.datacenter,
                g.listen,
                g.admin.map_or("off".to_owned(), |a| a.to_string())
            );
            if let Some(c) = &config.catalog {
                let _ = writeln!(
                    out,
                    "  catalog plugin {} (settings {:?})",
                    c.plugin,
                    c.settings()
                );
            }
            let consul_catalog = config
                .catalog
                .as_ref()
                .is_some_and(|c| c.plugin == "consul-catalog");
            if config.consul.is_some() || consul_catalog {
                // Where watches and the registration would go (no request is made here).
                match crate::consul::agent(config.consul.as_ref(), &config.base_dir) {
                    Ok(a) => {
                        let token = match &a.token {
                            meshgate_consul::TokenSource::None => "no token".to_owned(),
                            meshgate_consul::TokenSource::Value(_) => "a token".to_owned(),
                            meshgate_consul::TokenSource::File(f) => {
                                format!("token file {}", f.display())
                            }
                        };
                        let scheme = match a.scheme {
                            meshgate_consul::Scheme::Http => "http",
                            meshgate_consul::Scheme::Https => "https",
                        };
                        let _ =
                            writeln!(out, "  consul agent {scheme}://{} ({token})", a.authority());
                    }
                    Err(e) => return Err(e.in_file(file)),
                }
            }
            match crate::consul::register::registration(&config, false) {
                Ok(Some(reg)) => {
                    let _ = writeln!(
                        out,
                        "  registers in consul as mesh-gateway {:?}: {}",
                        reg.id(),
                        serde_json::to_string(&reg.body()).unwrap_or_default()
                    );
                }
                Ok(None) => {}
                Err(e) => return Err(e.in_file(file)),
            }
            if let Some(r) = config.router_section() {
                let _ = writeln!(
                    out,
                    "  router plugin {} (settings {:?})",
                    r.plugin,
                    r.settings()
                );
            }
            if let Some(h) = &config.hook {
                let _ = writeln!(
                    out,
                    "  hook plugin {} (settings {:?}, on failure {:?})",
                    h.plugin,
                    h.settings(),
                    h.on_failure
                );
            }
            out.push_str(&check_plugins(file, text, &config)?);
            match config.route_table() {
                Ok(table) => {
                    for r in table.routes() {
                        let groups: Vec<String> = r
                            .groups
                            .iter()
                            .map(|g| {
                                if g.weights.is_empty() {
                                    format!("{:?}", g.endpoints)
                                } else {
                                    format!("{:?} weights {:?}", g.endpoints, g.weights)
                                }
                            })
                            .collect();
                        let _ = writeln!(
                            out,
                            "  route {} -> {} ({:?})",
                            r.pattern,
                            groups.join(" then "),
                            r.lb
                        );
                    }
                }
                Err(e) => {
                    let _ = writeln!(out, "  routes: {e}");
                }
            }
            Ok(out)
        }
        Err(e) => Err(ControlError::Config(e.to_string())),
    }
}

/// Loads every plugin a gateway config names, as the gateway would, runs each one's `configure` with its
/// settings, and says what each is; a plugin that is missing, is not a component, is of the wrong kind
/// for its section or refuses its settings is an error naming the file, the line and the field.
fn check_plugins(file: &Path, text: &str, config: &Config) -> Result<String, ControlError> {
    use meshgate_plugin::PluginKind;
    let mut sections: Vec<(&str, meshgate_config::PluginSection, &[PluginKind])> = Vec::new();
    // With the settings the gateway adds (`wan_federation` when it exposes servers).
    match crate::gateway::plugin_sections(config) {
        Some((c, r)) => {
            sections.push((
                "catalog",
                c,
                &[PluginKind::Catalog, PluginKind::WatchCatalog],
            ));
            sections.push(("router", r, &[PluginKind::Router]));
        }
        None => {
            if let Some(r) = config.router_section() {
                sections.push(("router", r, &[PluginKind::Router]));
            }
        }
    }
    if let Some(h) = &config.hook {
        sections.push(("hook", h.clone(), &[PluginKind::Hook]));
    }
    if sections.is_empty() {
        return Ok(String::new());
    }
    let host = crate::plugins::host()?;
    let mut out = String::new();
    for (section, p, want) in sections {
        let fail = |message: String| {
            let at = line_of(text, section, "plugin")
                .map_or_else(String::new, |line| format!(":{line}"));
            ControlError::Config(format!(
                "{}{at}: [{section}] plugin = {:?}: {message}",
                file.display(),
                p.plugin
            ))
        };
        let (name, component) = host
            .component(&p.plugin, &config.base_dir)
            .map_err(|e| fail(e.to_string()))?;
        let kind = host.kind_of(&component).ok_or_else(|| {
            fail("a component, but of no plugin world (catalog, router, connection hook)".into())
        })?;
        if !want.contains(&kind) {
            return Err(fail(format!(
                "a {} plugin, not a {section} plugin",
                kind.label()
            )));
        }
        // Made and configured as the gateway would: a refused setting fails here, not at start.
        let sandbox = crate::plugins::sandbox(&p, &config.base_dir, None);
        let settings = p.settings();
        let configured = match kind {
            PluginKind::Catalog => host
                .catalog_from(name.clone(), component, sandbox)
                .and_then(|mut x| x.configure(&settings)),
            PluginKind::WatchCatalog => host
                .watch_catalog_from(name.clone(), component, sandbox)
                .and_then(|mut x| x.configure(&settings)),
            PluginKind::Router => host
                .router_from(name.clone(), component, sandbox)
                .and_then(|mut x| x.configure(&settings)),
            PluginKind::Hook => host
                .hook_from(name.clone(), component, sandbox)
                .and_then(|mut x| x.configure(&settings)),
        };
        if let Err(e) = configured {
            let at = line_of(text, section, "config")
                .or_else(|| line_of(text, section, "plugin"))
                .map_or_else(String::new, |line| format!(":{line}"));
            return Err(ControlError::Config(format!(
                "{}{at}: [{section}] config: {e}",
                file.display()
            )));
        }
        let from = if meshgate_plugin::SHIPPED.iter().any(|(n, _)| *n == p.plugin) {
            "shipped".to_owned()
        } else {
            config.base_dir.join(&p.plugin).display().to_string()
        };
        let _ = writeln!(
            out,
            "  {section} plugin {name}: loads, a {} plugin ({from}), settings accepted",
            kind.label()
        );
    }
    Ok(out)
}

/// The 1-based line of `key = ...` inside `[section]` of a TOML text, if written there.
fn line_of(text: &str, section: &str, key: &str) -> Option<usize> {
    let header = format!("[{section}]");
    let mut inside = false;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            inside = t == header;
        } else if inside
            && t.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            return Some(i + 1);
        }
    }
    None
}

/// What meshgate understood of a Consul file, for humans.
fn describe(doc: &meshgate_mesh::Document) -> String {
    use meshgate_mesh::Document;
    let mode =
        |m: Option<meshgate_mesh::GatewayMode>| m.map_or("(not set)".to_owned(), |m| m.to_string());
    let mut out = String::new();
    match doc {
        Document::ConfigEntry(e) => {
            let kind = e.kind.label();
            let _ = writeln!(
                out,
                "config entry {kind} {:?}: mesh gateway mode {}",
                e.name,
                mode(e.mesh_gateway)
            );
            for subset in &e.subsets {
                let _ = writeln!(out, "  subset {}: {}", subset.name, subset.filter);
            }
            if let Some(d) = &e.default_subset {
                let _ = writeln!(out, "  default subset {d}");
            }
            let or_same = |v: &Option<String>| v.clone().unwrap_or_else(|| "(same)".to_owned());
            if let Some(r) = &e.redirect {
                let _ = writeln!(
                    out,
                    "  redirect to service {}, subset {}, namespace {}, datacenter {}",
                    or_same(&r.service),
                    or_same(&r.service_subset),
                    or_same(&r.namespace),
                    or_same(&r.datacenter)
                );
            }
            for f in &e.failover {
                let dcs = if f.datacenters.is_empty() {
                    "(same)".to_owned()
                } else {
                    f.datacenters.join(" then ")
                };
                let _ = writeln!(
                    out,
                    "  failover for {}: service {}, subset {}, namespace {}, datacenters {dcs}",
                    f.key,
                    or_same(&f.service),
                    or_same(&f.service_subset),
                    or_same(&f.namespace)
                );
            }
            for source in &e.sources {
                let _ = writeln!(
                    out,
                    "  source {}/{}: {:?}",
                    source.namespace, source.name, source.action
                );
            }
            if !e.other.is_empty() {
                let keys: Vec<&String> = e.other.keys().collect();
                let _ = writeln!(out, "  other fields kept: {keys:?}");
            }
        }
        Document::Services {
            services,
            datacenter,
            ..
        } => {
            if let Some(dc) = datacenter {
                let _ = writeln!(out, "datacenter {dc}");
            }
            let mut all = Vec::new();
            for s in services {
                all.push(("", s));
                if let Some(sc) = &s.sidecar {
                    all.push(("  inline sidecar of the above: ", sc.as_ref()));
                }
            }
            for (prefix, s) in all {
                let kind = match s.kind {
                    meshgate_mesh::ServiceKind::Typical => "service",
                    other => other.label(),
                };
                let _ = writeln!(
                    out,
                    "{prefix}{kind} {:?} (id {:?}, port {}, health {:?})",
                    s.name,
                    s.id,
                    s.port,
                    s.health()
                );
                for (tag, a) in &s.tagged_addresses {
                    let _ = writeln!(out, "    {tag} address {}:{}", a.address, a.port);
                }
                if let Some(p) = &s.proxy {
                    let _ = writeln!(
                        out,
                        "    proxy for {:?}, instance mesh gateway mode {}",
                        p.destination_service_name,
                        mode(p.mesh_gateway)
                    );
                    for u in &p.upstreams {
                        let _ = writeln!(
                            out,
                            "    upstream {} (namespace {}, datacenter {}) on {}:{}, mesh gateway mode {}",
                            u.destination_name,
                            u.destination_namespace.as_deref().unwrap_or("default"),
                            u.datacenter.as_deref().unwrap_or("local"),
                            u.local_bind_address.as_deref().unwrap_or("127.0.0.1"),
                            u.local_bind_port,
                            mode(u.mesh_gateway)
                        );
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TempDir;

    #[test]
    fn check_shows_the_agent_and_the_registration_or_names_the_field() {
        let dir = TempDir::new("inspect-consul");
        let good = dir.0.join("gw.toml");
        std::fs::write(
            &good,
            "[gateway]\nlisten = [\"127.0.0.1:8443\"]\n[consul]\naddress = \"https://127.0.0.1:8501\"\ntoken_file = \"tok\"\n[consul.register]\nwan_address = \"198.51.100.1:443\"\n",
        )
        .expect("write");
        let out = check(&good).expect("valid");
        assert!(
            out.contains("consul agent https://127.0.0.1:8501 (token file"),
            "{out}"
        );
        assert!(
            out.contains("\"wan\":{\"Address\":\"198.51.100.1\",\"Port\":443}"),
            "{out}"
        );
        let bad = dir.0.join("bad.toml");
        std::fs::write(
            &bad,
            "[gateway]\nlisten = [\"0.0.0.0:8443\"]\n[consul]\n[consul.register]\n",
        )
        .expect("write");
        let e = check(&bad).expect_err("unspecified listen address");
        assert!(
            e.to_string()
                .contains("[consul.register] address is required"),
            "{e}"
        );
        assert_eq!(e.exit_code(), crate::error::EXIT_CONFIG);
    }
}
