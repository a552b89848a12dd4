//! Catalog deltas on the host's side (WIT `catalog-delta`): applying a catalog plugin's delta to the
//! catalog the host keeps, folding the deltas that arrive before the router is next asked into one,
//! and the delta between two whole catalogs (a watch-fed catalog answers whole ones), so that an
//! incremental router is told only what moved. No IO.

use meshgate_plugin::types::{Catalog, CatalogDelta, Instance, NamedInstances};
use std::collections::{HashMap, HashSet};

/// What moved in the host's catalog since the router was last told.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Change {
    /// Nothing.
    #[default]
    Nothing,
    /// Something the host cannot describe as a delta (a whole new catalog): tell the router everything.
    Whole,
    /// These instances and entries.
    Delta(CatalogDelta),
}

impl Change {
    /// This change followed by `later`.
    pub fn then(&mut self, later: Change) {
        *self = match (std::mem::take(self), later) {
            (Change::Whole, _) | (_, Change::Whole) => Change::Whole,
            (Change::Nothing, c) | (c, Change::Nothing) => c,
            (Change::Delta(mut a), Change::Delta(b)) => {
                merge(&mut a, b);
                Change::Delta(a)
            }
        };
    }
}

/// Below this many names a delta's names are compared one by one (cheaper than hashing every instance
/// of a 20,000-instance catalog).
const LINEAR_KEYS: usize = 16;

/// Applies `delta` to `catalog`: the instances of each name it lists are replaced by its list (at the
/// end), and the config entries when it has them. Refused (and `catalog` untouched) when an instance
/// does not carry the datacenter and name it is listed under, or a name is listed twice: the host's
/// catalog would no longer say what the plugin's does.
pub fn apply(catalog: &mut Catalog, delta: &CatalogDelta) -> Result<(), String> {
    let mut keys: Vec<(&str, &str)> = Vec::with_capacity(delta.instances.len());
    for named in &delta.instances {
        let key = (named.datacenter.as_str(), named.name.as_str());
        if let Some(i) = named
            .instances
            .iter()
            .find(|i| (i.datacenter.as_str(), i.name.as_str()) != key)
        {
            return Err(format!(
                "a delta lists instance {} ({} in {}) under {} in {}",
                i.id, i.name, i.datacenter, key.1, key.0
            ));
        }
        if keys.contains(&key) {
            return Err(format!("a delta lists {} in {} twice", key.1, key.0));
        }
        keys.push(key);
    }
    if keys.len() <= LINEAR_KEYS {
        catalog
            .instances
            .retain(|i| !keys.contains(&(i.datacenter.as_str(), i.name.as_str())));
    } else {
        let set: HashSet<(&str, &str)> = keys.iter().copied().collect();
        catalog
            .instances
            .retain(|i| !set.contains(&(i.datacenter.as_str(), i.name.as_str())));
    }
    for named in &delta.instances {
        catalog.instances.extend(named.instances.iter().cloned());
    }
    if let Some(entries) = &delta.config_entries {
        catalog.config_entries.clone_from(entries);
    }
    Ok(())
}

/// Folds `later` into `into`: a name either lists wins with `later`'s instances, and so do its entries.
pub fn merge(into: &mut CatalogDelta, later: CatalogDelta) {
    let mut at: HashMap<(String, String), usize> = into
        .instances
        .iter()
        .enumerate()
        .map(|(n, named)| ((named.datacenter.clone(), named.name.clone()), n))
        .collect();
    for named in later.instances {
        match at.get(&(named.datacenter.clone(), named.name.clone())) {
            Some(&n) => into.instances[n] = named,
            None => {
                at.insert(
                    (named.datacenter.clone(), named.name.clone()),
                    into.instances.len(),
                );
                into.instances.push(named);
            }
        }
    }
    if later.config_entries.is_some() {
        into.config_entries = later.config_entries;
    }
}

/// The delta that turns `old` into `new` (the same trust domain): every name whose instances differ
/// (in content or order), with its instances in `new`, and the entries when they differ. Empty when
/// the two are equal.
pub fn diff(old: &Catalog, new: &Catalog) -> CatalogDelta {
    fn by_name(c: &Catalog) -> HashMap<(&str, &str), Vec<&Instance>> {
        let mut out: HashMap<(&str, &str), Vec<&Instance>> = HashMap::new();
        for i in &c.instances {
            out.entry((i.datacenter.as_str(), i.name.as_str()))
                .or_default()
                .push(i);
        }
        out
    }
    let (before, after) = (by_name(old), by_name(new));
    let mut instances = Vec::new();
    // In `new`'s order, then the names gone in `old`'s: the same catalogs give the same delta.
    let mut seen = HashSet::new();
    for i in &new.instances {
        let key = (i.datacenter.as_str(), i.name.as_str());
        if !seen.insert(key) {
            continue;
        }
        let now = after.get(&key).map_or(&[][..], Vec::as_slice);
        if before.get(&key).map(Vec::as_slice) != Some(now) {
            instances.push(NamedInstances {
                datacenter: key.0.to_owned(),
                name: key.1.to_owned(),
                instances: now.iter().map(|i| (*i).clone()).collect(),
            });
        }
    }
    for i in &old.instances {
        let key = (i.datacenter.as_str(), i.name.as_str());
        if !after.contains_key(&key) && seen.insert(key) {
            instances.push(NamedInstances {
                datacenter: key.0.to_owned(),
                name: key.1.to_owned(),
                instances: Vec::new(),
            });
        }
    }
    CatalogDelta {
        instances,
        config_entries: (old.config_entries != new.config_entries)
            .then(|| new.config_entries.clone()),
    }
}

/// Whether a delta says nothing.
pub fn is_empty(delta: &CatalogDelta) -> bool {
    delta.instances.is_empty() && delta.config_entries.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_plugin::types::{ConfigEntry, EntryKind, Health, ServiceKind};
    use proptest::prelude::*;

    fn inst(dc: &str, name: &str, id: &str, port: u16) -> Instance {
        Instance {
            datacenter: dc.into(),
            node_address: "127.0.0.1".into(),
            id: id.into(),
            name: name.into(),
            kind: ServiceKind::Typical,
            namespace: "default".into(),
            address: String::new(),
            port,
            tags: Vec::new(),
            meta: Vec::new(),
            lan: None,
            wan: None,
            proxy: None,
            connect_native: false,
            health: Health::Passing,
        }
    }

    fn entry(name: &str) -> ConfigEntry {
        ConfigEntry {
            kind: EntryKind::ServiceDefaults,
            name: name.into(),
            mesh_gateway: None,
            subsets: Vec::new(),
            default_subset: None,
            sources: Vec::new(),
            failover: Vec::new(),
            redirect: None,
        }
    }

    fn catalog(instances: Vec<Instance>) -> Catalog {
        Catalog {
            trust_domain: "td".into(),
            instances,
            config_entries: Vec::new(),
        }
    }

    /// A catalog's content regardless of order.
    fn content(c: &Catalog) -> (Vec<String>, Vec<ConfigEntry>) {
        let mut v: Vec<String> = c.instances.iter().map(|i| format!("{i:?}")).collect();
        v.sort();
        (v, c.config_entries.clone())
    }

    #[test]
    fn a_delta_replaces_the_named_instances_and_nothing_else() {
        let mut c = catalog(vec![
            inst("dc1", "api", "api-1", 1),
            inst("dc1", "api", "api-2", 2),
            inst("dc2", "api", "api-1", 3),
            inst("dc1", "web", "web-1", 4),
        ]);
        let delta = CatalogDelta {
            instances: vec![
                NamedInstances {
                    datacenter: "dc1".into(),
                    name: "api".into(),
                    instances: vec![inst("dc1", "api", "api-3", 5)],
                },
                NamedInstances {
                    datacenter: "dc1".into(),
                    name: "web".into(),
                    instances: Vec::new(),
                },
            ],
            config_entries: Some(vec![entry("api")]),
        };
        apply(&mut c, &delta).expect("apply");
        let ports: Vec<u16> = c.instances.iter().map(|i| i.port).collect();
        assert_eq!(
            ports,
            vec![3, 5],
            "dc2's api stays, dc1's api replaced, web gone"
        );
        assert_eq!(c.config_entries, vec![entry("api")]);
    }

    #[test]
    fn a_delta_that_misfiles_an_instance_or_repeats_a_name_is_refused_whole() {
        let mut c = catalog(vec![inst("dc1", "api", "api-1", 1)]);
        let before = c.clone();
        let named = |dc: &str, name: &str, i: Vec<Instance>| NamedInstances {
            datacenter: dc.into(),
            name: name.into(),
            instances: i,
        };
        let misfiled = CatalogDelta {
            instances: vec![named("dc1", "api", vec![inst("dc1", "web", "web-1", 2)])],
            config_entries: None,
        };
        assert!(apply(&mut c, &misfiled)
            .expect_err("misfiled")
            .contains("web-1"));
        let twice = CatalogDelta {
            instances: vec![
                named("dc1", "api", Vec::new()),
                named("dc1", "api", Vec::new()),
            ],
            config_entries: None,
        };
        assert!(apply(&mut c, &twice).expect_err("twice").contains("twice"));
        assert_eq!(c, before);
    }

    fn arb_catalog() -> impl Strategy<Value = Catalog> {
        (
            proptest::collection::vec((0..2usize, 0..5usize, 0..3u16), 0..14),
            proptest::collection::vec(0..3usize, 0..3),
        )
            .prop_map(|(instances, entries)| {
                let dcs = ["dc1", "dc2"];
                let names = ["api", "web", "db", "api-sidecar-proxy", "mesh-gateway"];
                let mut c = catalog(
                    instances
                        .into_iter()
                        .enumerate()
                        .map(|(n, (dc, name, port))| {
                            inst(dcs[dc], names[name], &format!("{}-{n}", names[name]), port)
                        })
                        .collect(),
                );
                c.config_entries = entries
                    .into_iter()
                    .map(|e| entry(["api", "web", "db"][e]))
                    .collect();
                c
            })
    }

    proptest! {
        /// The diff of two catalogs, applied to the first, gives the second's content; folded deltas
        /// applied at once give what applying them one by one gives.
        #[test]
        fn a_diff_applied_gives_the_new_catalog_and_merged_deltas_compose(
            a in arb_catalog(), b in arb_catalog(), c in arb_catalog(),
        ) {
            let ab = diff(&a, &b);
            let mut x = a.clone();
            apply(&mut x, &ab).expect("apply");
            prop_assert_eq!(content(&x), content(&b));
            prop_assert_eq!(is_empty(&diff(&a, &a)), true);

            let bc = diff(&b, &c);
            let mut merged = Change::Delta(ab);
            merged.then(Change::Delta(bc));
            let Change::Delta(ac) = merged else { unreachable!("two deltas fold into one") };
            let mut y = a.clone();
            apply(&mut y, &ac).expect("apply");
            prop_assert_eq!(content(&y), content(&c));
        }
    }

    #[test]
    fn changes_fold() {
        let d = CatalogDelta {
            instances: Vec::new(),
            config_entries: None,
        };
        let mut c = Change::Nothing;
        c.then(Change::Delta(d.clone()));
        assert_eq!(c, Change::Delta(d.clone()));
        c.then(Change::Whole);
        assert_eq!(c, Change::Whole);
        c.then(Change::Delta(d));
        assert_eq!(c, Change::Whole, "a whole change stays whole until taken");
    }
}
