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
//!
//! Deltas (WIT 0.6.0): when the host asks from the version this instance answered last, the answer is
//! what moved — every instance of each (datacenter, name) a changed file held before or holds now, and
//! the config entries when a changed file has any — not the whole catalog. And then, when the host
//! can name the files that changed since (`changed-files`, from its directory watch), only those are
//! looked at (`file-info`), not every file listed: one edit among 10,000 files costs one `stat`, one
//! parse and a delta of one service. A name the plugin cannot place (not under `dir` as written here)
//! makes it list everything, as does every periodic poll (the host names no files then).

use meshgate_guest::host;
use meshgate_guest::types::{self as wit, DirEntry};
use meshgate_mesh::catalog::{Catalog, Instance};
use meshgate_mesh::Document;
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, HashSet};

wit_bindgen::generate!({
    world: "catalog-plugin",
    path: "../wit",
    with: {
        "meshgate:plugin/types@0.6.0": meshgate_guest::types,
        "meshgate:plugin/host@0.6.0": meshgate_guest::host,
    },
});

const EXTENSIONS: [&str; 5] = ["hcl", "json", "yaml", "yml", "toml"];

struct FileCatalog;

/// One file as last parsed: what identified that version, and what it holds in WIT form (what `fetch`
/// answers is then a concatenation of clones, with no conversion).
struct Parsed {
    size: u64,
    modified_ms: u64,
    /// [`file_version`] of this version: the catalog's version is their sum.
    version: u64,
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
    /// (datacenter, name) of every instance -> the files that hold one: what a delta lists for a name.
    index: HashMap<(String, String), BTreeSet<String>>,
    /// The wrapping sum of the files' versions.
    sum: u64,
    /// The version this instance last answered, which the files now cached are (0: none, or the cache
    /// moved without an answer: a failed fetch). Only a host asking from this version gets a delta.
    answered: u64,
}

/// What moved in the cache during one fetch.
#[derive(Default)]
struct Touched {
    names: BTreeSet<(String, String)>,
    entries: bool,
}

impl Touched {
    fn add(&mut self, p: &Parsed) {
        for i in &p.instances {
            self.names.insert((i.datacenter.clone(), i.name.clone()));
        }
        self.entries |= !p.entries.is_empty();
    }
}

impl Cache {
    fn forget(&mut self, path: &str, touched: &mut Touched) {
        let Some(old) = self.files.remove(path) else {
            return;
        };
        self.sum = self.sum.wrapping_sub(old.version);
        for i in &old.instances {
            let key = (i.datacenter.clone(), i.name.clone());
            if let Some(paths) = self.index.get_mut(&key) {
                paths.remove(path);
                if paths.is_empty() {
                    self.index.remove(&key);
                }
            }
        }
        touched.add(&old);
    }

    fn keep(&mut self, path: String, parsed: Parsed, touched: &mut Touched) {
        self.forget(&path, touched);
        self.sum = self.sum.wrapping_add(parsed.version);
        for i in &parsed.instances {
            self.index
                .entry((i.datacenter.clone(), i.name.clone()))
                .or_default()
                .insert(path.clone());
        }
        touched.add(&parsed);
        self.files.insert(path, parsed);
    }

    /// Whether `path` is cached as this version.
    fn holds(&self, path: &str, dc: &str, e: &DirEntry) -> bool {
        self.files.get(path).is_some_and(|p| {
            p.size == e.size && p.modified_ms == e.modified_ms && p.datacenter == dc
        })
    }

    /// The whole catalog, files in (datacenter, path) order.
    fn catalog(&self, trust_domain: &str) -> wit::Catalog {
        let mut order: Vec<(&str, &str)> = self
            .files
            .iter()
            .map(|(path, p)| (p.datacenter.as_str(), path.as_str()))
            .collect();
        order.sort_unstable();
        let mut catalog = wit::Catalog {
            trust_domain: trust_domain.to_owned(),
            instances: Vec::new(),
            config_entries: self.entries(),
        };
        for (_, path) in order {
            if let Some(p) = self.files.get(path) {
                catalog.instances.extend_from_slice(&p.instances);
            }
        }
        catalog
    }

    /// Every config entry, files in (datacenter, path) order.
    fn entries(&self) -> Vec<wit::ConfigEntry> {
        let mut with: Vec<(&str, &str, &Parsed)> = self
            .files
            .iter()
            .filter(|(_, p)| !p.entries.is_empty())
            .map(|(path, p)| (p.datacenter.as_str(), path.as_str(), p))
            .collect();
        with.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        with.into_iter()
            .flat_map(|(_, _, p)| p.entries.iter().cloned())
            .collect()
    }

    /// What moved, as a delta: every instance of each name touched, and the entries if any moved.
    fn delta(&self, touched: &Touched) -> wit::CatalogDelta {
        let instances = touched
            .names
            .iter()
            .map(|(dc, name)| wit::NamedInstances {
                datacenter: dc.clone(),
                name: name.clone(),
                instances: self
                    .index
                    .get(&(dc.clone(), name.clone()))
                    .into_iter()
                    .flatten()
                    .filter_map(|path| self.files.get(path))
                    .flat_map(|p| p.instances.iter())
                    .filter(|i| i.datacenter == *dc && i.name == *name)
                    .cloned()
                    .collect(),
            })
            .collect();
        wit::CatalogDelta {
            instances,
            config_entries: touched.entries.then(|| self.entries()),
        }
    }
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
    e: &DirEntry,
    version: u64,
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
        size: e.size,
        modified_ms: e.modified_ms,
        version,
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
        CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.node_address != node_address {
                *cache = Cache::default();
                node_address.clone_into(&mut cache.node_address);
            }
            // A delta only from what this instance answered; the host's list of changed files spares
            // the listing, but only then (it covers the time since this plugin's previous call).
            let can_delta = since != 0 && since == cache.answered;
            let hinted = if can_delta {
                host::changed_files().and_then(|files| targets(&dir, local_dc, &files))
            } else {
                None
            };
            let moved = match hinted {
                Some(targets) => targets,
                None => {
                    let (version, moved) = listed(&dir, local_dc, &cache)?;
                    if version == since {
                        return Ok(CatalogUpdate::Unchanged);
                    }
                    moved
                }
            };
            let mut touched = Touched::default();
            for (dc, path, entry) in moved {
                let result = match entry {
                    None => {
                        cache.forget(&path, &mut touched);
                        Ok(())
                    }
                    Some((_, e)) if cache.holds(&path, &dc, &e) => Ok(()),
                    Some((dir_path, e)) => {
                        let version = file_version(&dc, &dir_path, &e);
                        parse(&path, &dc, node_address, &e, version)
                            .map(|p| cache.keep(path, p, &mut touched))
                    }
                };
                if let Err(message) = result {
                    // Files parsed meanwhile stay cached, but no answer describes the cache now.
                    cache.answered = 0;
                    return Err(message);
                }
            }
            let version = cache.sum.max(1);
            if version == since {
                return Ok(CatalogUpdate::Unchanged);
            }
            let answer = if can_delta {
                CatalogUpdate::Delta((version, cache.delta(&touched)))
            } else {
                CatalogUpdate::Changed((version, cache.catalog(trust_domain)))
            };
            cache.answered = version;
            Ok(answer)
        })
    }
}

/// A file that moved: its datacenter, its path, and (unless it is gone) the directory it is listed in
/// and its entry there.
type Moved = (String, String, Option<(String, DirEntry)>);

/// The files the host says changed, as moves, or `None` when a name cannot be placed (a path that is
/// not under `dir` as this plugin writes it, a directory): then everything is listed.
fn targets(dir: &str, local_dc: &str, files: &[String]) -> Option<Vec<Moved>> {
    let mut out = Vec::new();
    let unique: BTreeSet<&str> = files.iter().map(String::as_str).collect();
    for path in unique {
        let rest = path.strip_prefix(dir)?.strip_prefix('/')?;
        let (dc, dir_path, name) = match rest.split_once('/') {
            None => (local_dc.to_owned(), dir.to_owned(), rest),
            Some((sub, name)) if !name.contains('/') => {
                if sub.starts_with('.') {
                    continue;
                }
                (sub.to_owned(), format!("{dir}/{sub}"), name)
            }
            // Deeper than a datacenter's directory: not a catalog file.
            Some(_) => continue,
        };
        let probe = DirEntry {
            name: name.to_owned(),
            is_dir: false,
            size: 0,
            modified_ms: 0,
        };
        if !wanted(&probe) {
            continue;
        }
        match host::file_info(path).ok()? {
            None => out.push((dc, path.to_owned(), None)),
            Some(e) if e.is_dir => return None,
            Some(e) => out.push((dc, path.to_owned(), Some((dir_path, e)))),
        }
    }
    Some(out)
}

/// Lists every file: the catalog's version, and the files that are not cached as listed (new or
/// changed) or cached but no longer listed.
fn listed(dir: &str, local_dc: &str, cache: &Cache) -> Result<(u64, Vec<Moved>), String> {
    // The top directory's files belong to `datacenter`, each subdirectory's to the one it names.
    let top = host::list_dir(dir)?;
    let mut places = vec![(local_dc.to_owned(), dir.to_owned(), Vec::new())];
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
    if version == cache.answered {
        // What this instance answered last: nothing to read (the common, unchanged, poll).
        return Ok((version, Vec::new()));
    }
    let mut moved = Vec::new();
    let mut listed = HashSet::new();
    for (dc, path, entries) in places {
        for e in entries.into_iter().filter(wanted) {
            let file = format!("{path}/{}", e.name);
            if !cache.holds(&file, &dc, &e) {
                moved.push((dc.clone(), file.clone(), Some((path.clone(), e))));
            }
            listed.insert(file);
        }
    }
    for (path, p) in &cache.files {
        if !listed.contains(path) {
            moved.push((p.datacenter.clone(), path.clone(), None));
        }
    }
    // Sorted, so a bad file among many is reported the same way every time.
    moved.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    Ok((version, moved))
}

export!(FileCatalog);
