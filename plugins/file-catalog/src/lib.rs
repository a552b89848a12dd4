//! `file-catalog`: the catalog from a directory of Consul registrations and config entries, in any format
//! `meshgate_mesh` reads (HCL, JSON, YAML, TOML).
//!
//! Layout: files directly in `dir` belong to the gateway's own datacenter (setting `datacenter`); files in
//! a subdirectory belong to the datacenter it is named after (`dir/dc2/api.hcl`). A file may also say
//! `datacenter = "..."` at its top. Settings: `dir` (required; the host must grant it), `trust_domain`
//! (required), `datacenter`, `node_address` (default 127.0.0.1, for registrations without an address).
//!
//! Changes are noticed by names, sizes and modification times: `fetch` answers `unchanged` without reading
//! a file when none of them moved. One bad file refuses the whole catalog (the host keeps the last good one).

use meshgate_guest::host;
use meshgate_guest::types::DirEntry;
use meshgate_mesh::catalog::{Catalog, Instance};
use meshgate_mesh::Document;

wit_bindgen::generate!({
    world: "catalog-plugin",
    path: "../wit",
    with: {
        "meshgate:plugin/types@0.5.0": meshgate_guest::types,
        "meshgate:plugin/host@0.5.0": meshgate_guest::host,
    },
});

const EXTENSIONS: [&str; 5] = ["hcl", "json", "yaml", "yml", "toml"];

struct FileCatalog;

fn wanted(e: &DirEntry) -> bool {
    !e.is_dir
        && !e.name.starts_with('.')
        && e.name
            .rsplit_once('.')
            .is_some_and(|(_, ext)| EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()))
}

/// FNV-1a over what identifies a file version.
fn fnv(hash: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *hash ^= u64::from(*b);
        *hash = hash.wrapping_mul(0x100_0000_01b3);
    }
}

impl Guest for FileCatalog {
    fn configure(settings: Vec<(String, String)>) -> Result<(), String> {
        meshgate_guest::sdk::init();
        let config = meshgate_guest::sdk::Config::new(&settings);
        // `wan_federation` is what the gateway tells both plugins when it exposes servers; a file
        // catalog has nothing to do with it.
        config.only(&[
            "dir",
            "trust_domain",
            "datacenter",
            "node_address",
            "wan_federation",
        ])?;
        config.required("dir")?;
        config.required("trust_domain")?;
        Ok(())
    }
    fn fetch(settings: Vec<(String, String)>, since: u64) -> Result<CatalogUpdate, String> {
        let get = |k: &str| meshgate_guest::setting(&settings, k);
        let dir = get("dir")
            .ok_or("setting `dir` is required")?
            .trim_end_matches('/')
            .to_owned();
        let trust_domain = get("trust_domain").ok_or("setting `trust_domain` is required")?;
        let local_dc = get("datacenter").unwrap_or("dc1");
        let node_address = get("node_address").unwrap_or("127.0.0.1");

        // (datacenter, path) of every file, sorted so the version does not depend on listing order.
        let mut files: Vec<(String, String, u64, u64)> = Vec::new();
        for e in host::list_dir(&dir)? {
            if e.is_dir && !e.name.starts_with('.') {
                let sub = format!("{dir}/{}", e.name);
                for f in host::list_dir(&sub)? {
                    if wanted(&f) {
                        files.push((
                            e.name.clone(),
                            format!("{sub}/{}", f.name),
                            f.size,
                            f.modified_ms,
                        ));
                    }
                }
            } else if wanted(&e) {
                files.push((
                    local_dc.to_owned(),
                    format!("{dir}/{}", e.name),
                    e.size,
                    e.modified_ms,
                ));
            }
        }
        files.sort();
        let mut version = 0xcbf2_9ce4_8422_2325u64;
        for (dc, path, size, modified) in &files {
            fnv(&mut version, dc.as_bytes());
            fnv(&mut version, path.as_bytes());
            fnv(&mut version, &size.to_le_bytes());
            fnv(&mut version, &modified.to_le_bytes());
        }
        let version = version.max(1);
        if version == since {
            return Ok(CatalogUpdate::Unchanged);
        }

        let mut catalog = Catalog {
            trust_domain: trust_domain.to_owned(),
            ..Default::default()
        };
        for (dc, path, _, _) in &files {
            let bytes = host::read_file(path)?;
            let text = String::from_utf8(bytes).map_err(|_| format!("{path}: not UTF-8 text"))?;
            match meshgate_mesh::load_document(&text, std::path::Path::new(path))
                .map_err(|e| e.to_string())?
            {
                Document::Services {
                    services,
                    datacenter,
                    node_address: file_node,
                } => {
                    let dc = datacenter.unwrap_or_else(|| dc.clone());
                    let node = file_node.unwrap_or_else(|| node_address.to_owned());
                    for mut service in services {
                        let sidecar = service.sidecar.take();
                        for s in std::iter::once(service).chain(sidecar.map(|b| *b)) {
                            catalog.instances.push(Instance {
                                datacenter: dc.clone(),
                                node_address: node.clone(),
                                service: s,
                            });
                        }
                    }
                }
                Document::ConfigEntry(entry) => catalog.config_entries.push(entry),
            }
        }
        Ok(CatalogUpdate::Changed((
            version,
            meshgate_guest::catalog_to_wit(&catalog),
        )))
    }
}

export!(FileCatalog);
