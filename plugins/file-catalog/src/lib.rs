//! `file-catalog`: the catalog from a directory of Consul registrations and config entries, in any format
//! `meshgate_mesh` reads (HCL, JSON, YAML, TOML).
//!
//! Layout: files directly in `dir` belong to the gateway's own datacenter (setting `datacenter`); files in
//! a subdirectory belong to the datacenter it is named after (`dir/dc2/api.hcl`). A file may also say
//! `datacenter = "..."` at its top. Settings: `dir` (required; the host must grant it), `trust_domain`
//! (required), `datacenter`, `node_address` (default 127.0.0.1, for registrations without an address).
//!
//! Changes are noticed by names, sizes and modification times: `fetch` answers `unchanged` without reading
//! a file when none of them moved. When some moved, only those are read and parsed again: the instance
//! keeps every file's registrations, already in WIT form, keyed by its path, size and modification time
//! (to the millisecond), so one edit among 10,000 files costs one parse, not 10,000. The cache is only
//! an optimisation: a new instance (at load, on a reload, after a trap) starts empty and reads every file
//! once. A rewrite that keeps both a file's size and its modification time to the millisecond goes
//! unnoticed (as it always did for `unchanged`). One bad file refuses the whole catalog (the host keeps the last good one);
//! the good files read meanwhile stay cached, so while it stays bad each poll re-parses only it.

use meshgate_guest::host;
use meshgate_guest::types::{self as wit, DirEntry};
use meshgate_mesh::catalog::{Catalog, Instance};
use meshgate_mesh::Document;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

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

/// One file as last parsed: what identified that version, and what it holds in WIT form (what `fetch`
/// answers is then a concatenation of clones, with no conversion).
struct Parsed {
    size: u64,
    modified_ms: u64,
    /// The datacenter its place gave it (a `datacenter = ...` in the file wins over it).
    datacenter: String,
    instances: Vec<wit::Instance>,
    entries: Vec<wit::ConfigEntry>,
}

/// The files parsed by this instance, and the setting their instances were made with.
#[derive(Default)]
struct Cache {
    node_address: String,
    files: HashMap<String, Parsed>,
}

thread_local! {
    // Lives as long as the instance; the host drops the instance after a trap, and the cache with it.
    static CACHE: RefCell<Cache> = RefCell::default();
}

/// Reads and parses one file (listed with `size` and `modified_ms`) into its instances (each service,
/// then its inline sidecar) and entries.
fn parse(
    path: &str,
    datacenter: &str,
    node_address: &str,
    size: u64,
    modified_ms: u64,
) -> Result<Parsed, String> {
    let bytes = host::read_file(path)?;
    let text = String::from_utf8(bytes).map_err(|_| format!("{path}: not UTF-8 text"))?;
    let mut file = Catalog::default();
    match meshgate_mesh::load_document(&text, std::path::Path::new(path))
        .map_err(|e| e.to_string())?
    {
        Document::Services {
            services,
            datacenter: file_dc,
            node_address: file_node,
        } => {
            let dc = file_dc.unwrap_or_else(|| datacenter.to_owned());
            let node = file_node.unwrap_or_else(|| node_address.to_owned());
            for mut service in services {
                let sidecar = service.sidecar.take();
                for s in std::iter::once(service).chain(sidecar.map(|b| *b)) {
                    file.instances.push(Instance {
                        datacenter: dc.clone(),
                        node_address: node.clone(),
                        service: s,
                    });
                }
            }
        }
        Document::ConfigEntry(entry) => file.config_entries.push(entry),
    }
    let wit = meshgate_guest::catalog_to_wit(&file);
    Ok(Parsed {
        size,
        modified_ms,
        datacenter: datacenter.to_owned(),
        instances: wit.instances,
        entries: wit.config_entries,
    })
}

fn wanted(e: &DirEntry) -> bool {
    !e.is_dir
        && !e.name.starts_with('.')
        && e.name
            .rsplit_once('.')
            .is_some_and(|(_, ext)| EXTENSIONS.iter().any(|x| ext.eq_ignore_ascii_case(x)))
}

/// FNV-1a over what identifies a file version.
fn fnv(hash: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *hash ^= u64::from(*b);
        *hash = hash.wrapping_mul(0x100_0000_01b3);
    }
}

/// What identifies one version of the file `dir/name` in datacenter `dc`. The catalog's version is the
/// wrapping sum of these: it does not depend on listing order, and an unchanged poll (the common case)
/// computes it without sorting or allocating.
fn file_version(dc: &str, dir: &str, e: &DirEntry) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for part in [
        dc.as_bytes(),
        b"\0",
        dir.as_bytes(),
        b"/",
        e.name.as_bytes(),
    ] {
        fnv(&mut hash, part);
    }
    fnv(&mut hash, &e.size.to_le_bytes());
    fnv(&mut hash, &e.modified_ms.to_le_bytes());
    hash
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

        // The top directory's files belong to `datacenter`, each subdirectory's to the one it names.
        let top = host::list_dir(&dir)?;
        let mut places = vec![(local_dc.to_owned(), dir.clone(), Vec::new())];
        for e in &top {
            if e.is_dir && !e.name.starts_with('.') {
                let sub = format!("{dir}/{}", e.name);
                let entries = host::list_dir(&sub)?;
                places.push((e.name.clone(), sub, entries));
            }
        }
        places[0].2 = top;
        let mut version = 0u64;
        for (dc, path, entries) in &places {
            for e in entries.iter().filter(|e| wanted(e)) {
                version = version.wrapping_add(file_version(dc, path, e));
            }
        }
        let version = version.max(1);
        if version == since {
            return Ok(CatalogUpdate::Unchanged);
        }

        // (datacenter, path, size, modified) of every file, sorted: the catalog lists them in this order.
        let mut files: Vec<(&str, String, u64, u64)> = Vec::new();
        for (dc, path, entries) in &places {
            for e in entries.iter().filter(|e| wanted(e)) {
                files.push((
                    dc.as_str(),
                    format!("{path}/{}", e.name),
                    e.size,
                    e.modified_ms,
                ));
            }
        }
        files.sort();

        let mut catalog = wit::Catalog {
            trust_domain: trust_domain.to_owned(),
            instances: Vec::new(),
            config_entries: Vec::new(),
        };
        CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.node_address != node_address {
                cache.files.clear();
                node_address.clone_into(&mut cache.node_address);
            }
            // Files gone from the listing leave the cache.
            let listed: HashSet<&str> = files.iter().map(|f| f.1.as_str()).collect();
            cache.files.retain(|path, _| listed.contains(path.as_str()));
            for (dc, path, size, modified) in &files {
                let hit = cache.files.get(path).is_some_and(|p| {
                    p.size == *size && p.modified_ms == *modified && p.datacenter == *dc
                });
                if !hit {
                    // Kept at once: the files parsed before a bad one need not be parsed again.
                    let parsed = parse(path, dc, node_address, *size, *modified)?;
                    cache.files.insert(path.clone(), parsed);
                }
                if let Some(p) = cache.files.get(path) {
                    catalog.instances.extend_from_slice(&p.instances);
                    catalog.config_entries.extend_from_slice(&p.entries);
                }
            }
            Ok::<(), String>(())
        })?;
        Ok(CatalogUpdate::Changed((version, catalog)))
    }
}

export!(FileCatalog);
