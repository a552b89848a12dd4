//! A mesh gateway's routes kept current through catalog deltas (what the `incremental-router-plugin`
//! world asks of a router): the catalog and the routes it gave are kept, a delta replaces the
//! instances of the names it lists, and only the routes that can have moved are computed again. A
//! delta that touches only services' own instances (sidecars, Connect-native services) recomputes just
//! those services' routes; one that moves a gateway, a config entry or a Consul server, or any delta
//! under a datacenter-failover policy, recomputes every route and answers the difference. Either way
//! the routes are exactly those [`Catalog::gateway_routes_with_failover`] gives for the catalog as it
//! now is (a property test holds it to that).

use crate::catalog::{Catalog, Instance, RouteDef};
use crate::model::{ConfigEntry, ServiceKind};
use crate::DatacenterFailover;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Every instance named `name` in `datacenter`, replacing all of that name there (empty: none left).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    /// The datacenter.
    pub datacenter: String,
    /// The instances' name (a service's, a sidecar's, a gateway's).
    pub name: String,
    /// Its instances now.
    pub instances: Vec<Instance>,
}

/// What moved in a catalog.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Delta {
    /// The names whose instances are replaced.
    pub instances: Vec<Named>,
    /// Every config entry, when any moved.
    pub config_entries: Option<Vec<ConfigEntry>>,
}

/// How the routes changed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteChanges {
    /// Routes added or replaced.
    pub upserts: Vec<RouteDef>,
    /// Patterns of routes gone.
    pub removed: Vec<String>,
}

/// A gateway's routes and the catalog they were computed from.
#[derive(Debug, Clone)]
pub struct GatewayRoutes {
    catalog: Catalog,
    /// Where each name's instances are in `catalog.instances`: datacenter → name → positions. A delta
    /// finds what it replaces here instead of walking the catalog.
    at: HashMap<String, HashMap<String, Vec<usize>>>,
    /// In the local datacenter: each mesh service → the names whose instances serve it (the service
    /// itself when Connect-native, its sidecars).
    serving: HashMap<String, BTreeSet<String>>,
    local_dc: String,
    wan_federation: bool,
    policy: DatacenterFailover,
    routes: BTreeMap<String, RouteDef>,
}

impl GatewayRoutes {
    /// The routes of a gateway in `local_dc` for a whole catalog (what the host sends first).
    pub fn new(
        catalog: Catalog,
        local_dc: &str,
        wan_federation: bool,
        policy: DatacenterFailover,
    ) -> GatewayRoutes {
        let mut this = GatewayRoutes {
            catalog: Catalog {
                instances: Vec::with_capacity(catalog.instances.len()),
                ..catalog
            },
            at: HashMap::new(),
            serving: HashMap::new(),
            local_dc: local_dc.to_owned(),
            wan_federation,
            policy,
            routes: BTreeMap::new(),
        };
        for i in catalog.instances {
            this.push(i);
        }
        this.routes = this
            .all()
            .into_iter()
            .map(|r| (r.pattern.clone(), r))
            .collect();
        this
    }

    /// Whether these routes were made for the same gateway (a delta made for another cannot apply).
    pub fn made_for(
        &self,
        local_dc: &str,
        wan_federation: bool,
        policy: &DatacenterFailover,
    ) -> bool {
        self.local_dc == local_dc && self.wan_federation == wan_federation && &self.policy == policy
    }

    /// The routes now, in pattern order.
    pub fn routes(&self) -> impl Iterator<Item = &RouteDef> {
        self.routes.values()
    }

    /// The catalog as the deltas so far made it (its instances in no particular order).
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    fn all(&self) -> Vec<RouteDef> {
        self.catalog
            .gateway_routes_with_failover(&self.local_dc, self.wan_federation, &self.policy)
    }

    /// The instances of `name` in `datacenter`.
    fn named(&self, datacenter: &str, name: &str) -> impl Iterator<Item = &Instance> {
        self.at
            .get(datacenter)
            .and_then(|names| names.get(name))
            .into_iter()
            .flatten()
            .map(|&p| &self.catalog.instances[p])
    }

    /// The routes of the local `services`, from the instances that serve them only.
    fn local_routes(&self, services: &BTreeSet<String>) -> Vec<RouteDef> {
        let names: BTreeSet<&String> = services
            .iter()
            .filter_map(|s| self.serving.get(s))
            .flatten()
            .collect();
        let among: Vec<&Instance> = names
            .into_iter()
            .flat_map(|n| self.named(&self.local_dc, n))
            .collect();
        self.catalog
            .local_service_routes_among(&among, &self.local_dc, Some(services))
    }

    /// Adds one instance to the catalog and the indexes.
    fn push(&mut self, i: Instance) {
        let at = self.catalog.instances.len();
        self.at
            .entry(i.datacenter.clone())
            .or_default()
            .entry(i.service.name.clone())
            .or_default()
            .push(at);
        if i.datacenter == self.local_dc {
            if let Some(svc) = i.mesh_service() {
                self.serving
                    .entry(svc.to_owned())
                    .or_default()
                    .insert(i.service.name.clone());
            }
        }
        self.catalog.instances.push(i);
    }

    /// Removes every instance of `name` in `datacenter` (the last instance moves into each hole).
    fn remove(&mut self, datacenter: &str, name: &str) {
        let Some(mut gone) = self.at.get_mut(datacenter).and_then(|m| m.remove(name)) else {
            return;
        };
        if datacenter == self.local_dc {
            for &p in &gone {
                if let Some(svc) = self.catalog.instances[p].mesh_service() {
                    if let Some(names) = self.serving.get_mut(svc) {
                        names.remove(name);
                        if names.is_empty() {
                            self.serving.remove(svc);
                        }
                    }
                }
            }
        }
        // Highest first: what moves into a hole is never one of the instances still to remove.
        gone.sort_unstable_by(|a, b| b.cmp(a));
        for p in gone {
            self.catalog.instances.swap_remove(p);
            let from = self.catalog.instances.len();
            if let Some(moved) = self.catalog.instances.get(p) {
                let slot = self
                    .at
                    .get_mut(&moved.datacenter)
                    .and_then(|m| m.get_mut(&moved.service.name))
                    .and_then(|ps| ps.iter_mut().find(|q| **q == from));
                if let Some(slot) = slot {
                    *slot = p;
                }
            }
        }
    }

    /// Applies `delta`; answers how the routes changed.
    pub fn apply(&mut self, delta: Delta) -> RouteChanges {
        // Whether only services' own routes can move, and which services.
        let mut local_only = delta.config_entries.is_none() && self.policy.is_empty();
        let mut services = BTreeSet::new();
        {
            let old = delta
                .instances
                .iter()
                .flat_map(|n| self.named(&n.datacenter, &n.name));
            let new = delta.instances.iter().flat_map(|n| n.instances.iter());
            for i in old.chain(new) {
                let server = self.wan_federation && i.service.name == "consul";
                if i.service.kind == ServiceKind::MeshGateway || server {
                    local_only = false;
                }
                if i.datacenter == self.local_dc {
                    if let Some(svc) = i.mesh_service() {
                        services.insert(svc.to_owned());
                    }
                }
            }
        }
        let before = local_only.then(|| self.local_routes(&services));
        for n in delta.instances {
            self.remove(&n.datacenter, &n.name);
            for i in n.instances {
                self.push(i);
            }
        }
        if let Some(entries) = delta.config_entries {
            self.catalog.config_entries = entries;
        }
        let (before, after): (BTreeSet<String>, Vec<RouteDef>) = match before {
            Some(before) => (
                before.into_iter().map(|r| r.pattern).collect(),
                self.local_routes(&services),
            ),
            None => (self.routes.keys().cloned().collect(), self.all()),
        };
        let mut changes = RouteChanges::default();
        let now: BTreeSet<&str> = after.iter().map(|r| r.pattern.as_str()).collect();
        for gone in before.iter().filter(|p| !now.contains(p.as_str())) {
            if self.routes.remove(gone).is_some() {
                changes.removed.push(gone.clone());
            }
        }
        for r in after {
            if self.routes.get(&r.pattern) != Some(&r) {
                self.routes.insert(r.pattern.clone(), r.clone());
                changes.upserts.push(r);
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Check, Health, Proxy, Service};
    use proptest::prelude::*;

    fn service(
        name: &str,
        kind: ServiceKind,
        port: u16,
        health: Health,
        dest: Option<&str>,
    ) -> Service {
        Service {
            id: format!("{name}-{port}"),
            name: name.to_owned(),
            kind,
            namespace: "default".to_owned(),
            address: String::new(),
            port,
            tags: Vec::new(),
            meta: BTreeMap::new(),
            tagged_addresses: BTreeMap::new(),
            proxy: dest.map(|d| Proxy {
                destination_service_name: d.to_owned(),
                ..Proxy::default()
            }),
            sidecar: None,
            connect_native: false,
            checks: vec![Check {
                name: "c".to_owned(),
                status: health,
            }],
        }
    }

    /// One instance from small numbers: datacenter, which name, port, health.
    fn instance(dc: usize, which: usize, port: u16, healthy: bool) -> Instance {
        let health = if healthy {
            Health::Passing
        } else {
            Health::Critical
        };
        let svc = ["api", "web", "db"][which % 3];
        let service = match which {
            0..=2 => service(
                &format!("{svc}-sidecar-proxy"),
                ServiceKind::ConnectProxy,
                port,
                health,
                Some(svc),
            ),
            3 | 4 => service(svc, ServiceKind::Typical, port, health, None),
            _ => service("mesh-gateway", ServiceKind::MeshGateway, port, health, None),
        };
        Instance {
            datacenter: ["dc1", "dc2"][dc].to_owned(),
            node_address: "127.0.0.1".to_owned(),
            service,
        }
    }

    fn arb_instances() -> impl Strategy<Value = Vec<Instance>> {
        proptest::collection::vec((0..2usize, 0..6usize, 1..6u16, any::<bool>()), 0..12).prop_map(
            |v| {
                v.into_iter()
                    .map(|(d, w, p, h)| instance(d, w, p, h))
                    .collect()
            },
        )
    }

    /// The names a delta replaces, with their instances taken from `pool`.
    fn delta_from(pool: Vec<Instance>, names: &[(usize, usize)]) -> Delta {
        let mut instances = Vec::new();
        for &(dc, which) in names {
            let probe = instance(dc, which, 1, true);
            let (dc, name) = (probe.datacenter, probe.service.name);
            if instances
                .iter()
                .any(|n: &Named| n.datacenter == dc && n.name == name)
            {
                continue;
            }
            let of: Vec<Instance> = pool
                .iter()
                .filter(|i| i.datacenter == dc && i.service.name == name)
                .cloned()
                .collect();
            instances.push(Named {
                datacenter: dc,
                name,
                instances: of,
            });
        }
        Delta {
            instances,
            config_entries: None,
        }
    }

    fn catalog(instances: Vec<Instance>) -> Catalog {
        Catalog {
            trust_domain: "td.consul".to_owned(),
            instances,
            config_entries: Vec::new(),
        }
    }

    proptest! {
        /// After any sequence of deltas, the routes kept are those of the whole catalog, and the
        /// changes answered turn the previous routes into them.
        #[test]
        fn deltas_keep_the_routes_of_the_whole_catalog(
            start in arb_instances(),
            steps in proptest::collection::vec(
                (arb_instances(), proptest::collection::vec((0..2usize, 0..6usize), 1..4)),
                1..5),
            wan in any::<bool>(),
        ) {
            // The catalog as the deltas make it, kept apart from the one under test.
            let mut model = start.clone();
            let mut kept = GatewayRoutes::new(catalog(start), "dc1", wan, DatacenterFailover::default());
            for (pool, names) in steps {
                let previous: BTreeMap<String, RouteDef> =
                    kept.routes().map(|r| (r.pattern.clone(), r.clone())).collect();
                let delta = delta_from(pool, &names);
                for n in &delta.instances {
                    model.retain(|i| (&i.datacenter, &i.service.name) != (&n.datacenter, &n.name));
                    model.extend(n.instances.iter().cloned());
                }
                let changes = kept.apply(delta);
                let mut held = kept.catalog().instances.clone();
                held.sort_by_cached_key(|i| format!("{i:?}"));
                let mut want = model.clone();
                want.sort_by_cached_key(|i| format!("{i:?}"));
                prop_assert_eq!(held, want);
                let whole: BTreeMap<String, RouteDef> = catalog(model.clone())
                    .gateway_routes("dc1", wan)
                    .into_iter()
                    .map(|r| (r.pattern.clone(), r))
                    .collect();
                let now: BTreeMap<String, RouteDef> =
                    kept.routes().map(|r| (r.pattern.clone(), r.clone())).collect();
                prop_assert_eq!(&now, &whole);
                let mut replayed = previous;
                for p in &changes.removed {
                    prop_assert!(replayed.remove(p).is_some(), "removed {} was not there", p);
                }
                for r in changes.upserts {
                    replayed.insert(r.pattern.clone(), r);
                }
                prop_assert_eq!(&replayed, &whole);
            }
        }
    }

    #[test]
    fn a_sidecar_change_answers_only_its_service() {
        let start = vec![
            instance(0, 0, 1, true),
            instance(0, 1, 2, true),
            instance(1, 5, 3, true),
        ];
        let mut kept =
            GatewayRoutes::new(catalog(start), "dc1", false, DatacenterFailover::default());
        assert_eq!(kept.routes().count(), 3, "api, web, dc2's gateways");
        let changes = kept.apply(delta_from(vec![instance(0, 0, 7, true)], &[(0, 0)]));
        assert_eq!(changes.removed, Vec::<String>::new());
        assert_eq!(changes.upserts.len(), 1);
        assert_eq!(
            changes.upserts[0].pattern,
            "api.default.dc1.internal.td.consul"
        );
        assert_eq!(changes.upserts[0].endpoints, vec!["127.0.0.1:7".to_owned()]);
        let changes = kept.apply(delta_from(vec![instance(0, 0, 7, false)], &[(0, 0)]));
        assert_eq!(
            changes.removed,
            vec!["api.default.dc1.internal.td.consul".to_owned()]
        );
        assert!(changes.upserts.is_empty());
        // The same again: nothing moves.
        let changes = kept.apply(delta_from(vec![instance(0, 0, 7, false)], &[(0, 0)]));
        assert_eq!(changes, RouteChanges::default());
    }
}
