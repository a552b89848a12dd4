//! `{{name}}`: a meshgate catalog plugin (world `catalog-plugin`). The gateway calls `fetch` every poll
//! interval with the version it has; the plugin answers `unchanged` or a new catalog, which the router
//! (by default `consul-router`) turns into routes.
//!
//! This one makes its catalog from its settings; a real one reads files under a directory the config
//! grants (`host::read_file`, `host::list_dir`) or an HTTP API on a granted origin (`host::http_get`).
//!
//! Settings (`[catalog] config = { ... }`):
//! - `datacenter = "dc1"` (required), `trust_domain = "<cluster-uuid>.consul"` (required);
//! - `services = "web=127.0.0.1:21000, api=127.0.0.1:21001"`: one passing sidecar per entry.

mod sdk;

wit_bindgen::generate!({ world: "catalog-plugin", path: "wit" });

// `CatalogUpdate` comes from the world (generate! defines it at the crate root); other types from their
// interface.
use meshgate::plugin::types::{Catalog, Health, Instance, Proxy, ServiceKind};
use sdk::{Config, SettingError};

/// Every key this plugin reads.
const KNOWN: &[&str] = &["datacenter", "trust_domain", "services"];

/// The catalog the settings describe: a pure function, so `cargo test` checks it without a gateway.
pub fn catalog(settings: &Config<'_>) -> Result<Catalog, SettingError> {
    settings.only(KNOWN)?;
    let dc = settings.required("datacenter")?;
    let mut instances = Vec::new();
    for entry in settings.list("services") {
        let bad = |problem: String| SettingError {
            key: "services".into(),
            problem,
        };
        let (service, addr) = entry
            .split_once('=')
            .ok_or_else(|| bad(format!("{entry:?} is not service=host:port")))?;
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| bad(format!("{addr:?} is not host:port")))?;
        let port: u16 = port
            .parse()
            .map_err(|_| bad(format!("{port:?} is not a port")))?;
        let service = service.trim();
        instances.push(Instance {
            datacenter: dc.into(),
            node_address: host.into(),
            id: format!("{service}-sidecar-proxy-{port}"),
            name: format!("{service}-sidecar-proxy"),
            kind: ServiceKind::ConnectProxy,
            namespace: "default".into(),
            address: host.into(),
            port,
            tags: Vec::new(),
            meta: Vec::new(),
            lan: None,
            wan: None,
            proxy: Some(Proxy {
                destination_service_name: service.into(),
                local_service_address: None,
                local_service_port: None,
                mesh_gateway: None,
                upstreams: Vec::new(),
            }),
            connect_native: false,
            health: Health::Passing,
        });
    }
    Ok(Catalog {
        trust_domain: settings.required("trust_domain")?.into(),
        instances,
        config_entries: Vec::new(),
    })
}

/// A version for the catalog: it only changes when the settings do (FNV-1a over them, never 0).
fn version(settings: &[(String, String)]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in settings {
        for b in k.bytes().chain([0]).chain(v.bytes()).chain([0]) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h.max(1)
}

struct Plugin;

impl Guest for Plugin {
    /// Called on each new instance before `fetch`: the whole catalog is made once from the settings,
    /// so a bad one refuses the config before the gateway serves.
    fn configure(settings: Vec<(String, String)>) -> Result<(), String> {
        sdk::init();
        catalog(&Config::new(&settings))?;
        Ok(())
    }
    fn fetch(settings: Vec<(String, String)>, since: u64) -> Result<CatalogUpdate, String> {
        sdk::init();
        let v = version(&settings);
        if since == v {
            return Ok(CatalogUpdate::Unchanged);
        }
        let catalog = catalog(&Config::new(&settings))?;
        log_info!("catalog version {v}: {} instances", catalog.instances.len());
        Ok(CatalogUpdate::Changed((v, catalog)))
    }
}

export!(Plugin);

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn one_passing_sidecar_per_service() {
        let raw = kv(&[
            ("datacenter", "dc1"),
            ("trust_domain", "td.consul"),
            ("services", "web=127.0.0.1:21000, api=127.0.0.1:21001"),
        ]);
        let c = catalog(&Config::new(&raw)).unwrap();
        assert_eq!(c.instances.len(), 2);
        assert_eq!(c.instances[1].port, 21001);
        assert!(version(&raw) != 0);
    }

    #[test]
    fn errors_name_the_key() {
        let raw = kv(&[("datacenter", "dc1"), ("trust_domain", "td"), ("services", "web")]);
        assert_eq!(catalog(&Config::new(&raw)).unwrap_err().key, "services");
        let raw = kv(&[("trust_domain", "td")]);
        assert_eq!(catalog(&Config::new(&raw)).unwrap_err().key, "datacenter");
    }
}
