//! Consul's `service-resolver` `Redirect` and `Failover` as an ordered list of targets, before any
//! health or gateway mode is looked at.
//!
//! The order follows Consul 1.8's discovery chain: the upstream's service is redirected first (a
//! redirected service resolves by its own resolver, hops bounded and loops stopped); the resulting
//! service's `DefaultSubset` applies when no subset was named; that is the primary target. Its
//! resolver's `Failover` for the subset (else for `*`) then adds one target per `Datacenters` entry, in
//! order, or one target for the other `Service` / `ServiceSubset` / `Namespace`. A failover target equal
//! to one already listed is dropped.
//!
//! Rewriting a target keeps each field that is not named, except that a new service or namespace
//! forgets the subset (a subset belongs to one service), as Consul does.

use crate::model::ConfigEntry;
use crate::names::SniName;
use serde::Serialize;

/// Redirects followed at most (Consul's chains are short; a longer one is a mistake or a loop).
pub const MAX_REDIRECTS: usize = 8;

/// A service (or one of its subsets) in a namespace and datacenter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct TargetId {
    /// Service name.
    pub service: String,
    /// Subset, when one applies.
    pub subset: Option<String>,
    /// Namespace.
    pub namespace: String,
    /// Datacenter.
    pub datacenter: String,
}

impl TargetId {
    /// The name Consul routes it by.
    pub fn sni(&self, trust_domain: &str) -> String {
        SniName::Service {
            subset: self.subset.clone(),
            service: self.service.clone(),
            namespace: self.namespace.clone(),
            partition: crate::names::DEFAULT.to_owned(),
            datacenter: self.datacenter.clone(),
            trust_domain: trust_domain.to_owned(),
        }
        .to_string()
    }

    /// `api`, or `subset v1 of api`.
    pub fn describe(&self) -> String {
        match &self.subset {
            Some(s) => format!("subset {s} of {}", self.service),
            None => self.service.clone(),
        }
    }

    /// Consul's rewrite: named fields replace the target's; a new service or namespace drops the subset
    /// unless one is named too.
    pub fn rewrite(
        &self,
        service: Option<&str>,
        subset: Option<&str>,
        namespace: Option<&str>,
        datacenter: Option<&str>,
    ) -> TargetId {
        let mut t = self.clone();
        if let Some(s) = service.filter(|s| *s != t.service) {
            t.service = s.to_owned();
            t.subset = None;
        }
        if let Some(ns) = namespace.filter(|ns| *ns != t.namespace) {
            t.namespace = ns.to_owned();
            t.subset = None;
        }
        if let Some(sub) = subset {
            t.subset = Some(sub.to_owned());
        }
        if let Some(dc) = datacenter {
            t.datacenter = dc.to_owned();
        }
        t
    }
}

/// Why a target is in an upstream's list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Origin {
    /// The upstream itself (after its resolver's `DefaultSubset`).
    Primary,
    /// The upstream after its resolver's `Redirect` (`hops` redirects followed).
    Redirect {
        /// Redirects followed.
        hops: usize,
    },
    /// A `Failover` of the primary's resolver, under `key` (the subset, or `*`).
    Failover {
        /// The failover's key.
        key: String,
    },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Primary => f.write_str("primary"),
            Origin::Redirect { hops } => write!(f, "redirect ({hops} hop{})", plural(*hops)),
            Origin::Failover { key } => write!(f, "failover[{key}]"),
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The targets of `upstream`, in the order connections try them. `resolver` finds a service's
/// `service-resolver` entry.
pub fn resolve<'a>(
    resolver: impl Fn(&str) -> Option<&'a ConfigEntry>,
    upstream: &TargetId,
) -> Vec<(TargetId, Origin)> {
    let mut t = upstream.clone();
    let mut seen = vec![t.clone()];
    for _ in 0..MAX_REDIRECTS {
        let Some(r) = resolver(&t.service).and_then(|e| e.redirect.as_ref()) else {
            break;
        };
        let next = t.rewrite(
            r.service.as_deref(),
            r.service_subset.as_deref(),
            r.namespace.as_deref(),
            r.datacenter.as_deref(),
        );
        // A redirect to where we are (the resolver of a service redirected to another datacenter is
        // asked again there) ends the chain; so does a loop.
        if next == t || seen.contains(&next) {
            break;
        }
        seen.push(next.clone());
        t = next;
    }
    let hops = seen.len() - 1;
    let entry = resolver(&t.service);
    let with_default = |mut t: TargetId, entry: Option<&ConfigEntry>| {
        if t.subset.is_none() {
            t.subset = entry.and_then(|e| e.default_subset.clone());
        }
        t
    };
    let primary = with_default(t, entry);
    let origin = if hops == 0 {
        Origin::Primary
    } else {
        Origin::Redirect { hops }
    };
    let mut out = vec![(primary.clone(), origin)];
    let Some(entry) = entry else {
        return out;
    };
    let key = primary.subset.as_deref().unwrap_or("*");
    let failover = entry
        .failover
        .iter()
        .find(|f| f.key == key)
        .or_else(|| entry.failover.iter().find(|f| f.key == "*"));
    let Some(f) = failover else {
        return out;
    };
    let rewrite = |dc: Option<&str>| {
        let t = primary.rewrite(
            f.service.as_deref(),
            f.service_subset.as_deref(),
            f.namespace.as_deref(),
            dc,
        );
        // Another service's target takes that service's default subset.
        let other = (t.service != primary.service)
            .then(|| resolver(&t.service))
            .flatten();
        if other.is_some() {
            with_default(t, other)
        } else {
            t
        }
    };
    let failovers: Vec<TargetId> = if f.datacenters.is_empty() {
        vec![rewrite(None)]
    } else {
        f.datacenters.iter().map(|dc| rewrite(Some(dc))).collect()
    };
    for t in failovers {
        if !out.iter().any(|(o, _)| *o == t) {
            out.push((t, Origin::Failover { key: f.key.clone() }));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EntryKind, Failover, Redirect};

    fn target(service: &str, dc: &str) -> TargetId {
        TargetId {
            service: service.into(),
            subset: None,
            namespace: "default".into(),
            datacenter: dc.into(),
        }
    }

    fn resolver(name: &str) -> ConfigEntry {
        ConfigEntry {
            kind: EntryKind::ServiceResolver,
            name: name.into(),
            mesh_gateway: None,
            subsets: vec![],
            default_subset: None,
            sources: vec![],
            failover: vec![],
            redirect: None,
            other: Default::default(),
        }
    }

    fn ids(out: &[(TargetId, Origin)]) -> Vec<String> {
        out.iter()
            .map(|(t, _)| {
                format!(
                    "{}{}.{}.{}",
                    t.subset
                        .as_deref()
                        .map(|s| format!("{s}."))
                        .unwrap_or_default(),
                    t.service,
                    t.namespace,
                    t.datacenter
                )
            })
            .collect()
    }

    #[test]
    fn datacenters_in_order_after_the_primary_without_repeating_it() {
        let mut api = resolver("api");
        api.failover.push(Failover {
            key: "*".into(),
            datacenters: vec!["dc2".into(), "dc1".into(), "dc3".into()],
            ..Default::default()
        });
        let entries = [api];
        let find = |s: &str| entries.iter().find(|e| e.name == s);
        let out = resolve(find, &target("api", "dc1"));
        assert_eq!(
            ids(&out),
            ["api.default.dc1", "api.default.dc2", "api.default.dc3"]
        );
        assert_eq!(out[0].1, Origin::Primary);
        assert_eq!(out[1].1, Origin::Failover { key: "*".into() });
    }

    #[test]
    fn a_subset_key_beats_the_wildcard_and_a_new_service_drops_the_subset() {
        let mut api = resolver("api");
        api.default_subset = Some("v1".into());
        api.failover = vec![
            Failover {
                key: "*".into(),
                datacenters: vec!["dc9".into()],
                ..Default::default()
            },
            Failover {
                key: "v1".into(),
                service: Some("api-backup".into()),
                ..Default::default()
            },
        ];
        let entries = [api];
        let find = |s: &str| entries.iter().find(|e| e.name == s);
        let out = resolve(find, &target("api", "dc1"));
        assert_eq!(ids(&out), ["v1.api.default.dc1", "api-backup.default.dc1"]);
    }

    #[test]
    fn redirect_comes_first_and_the_redirected_service_fails_over_by_its_own_resolver() {
        let mut api = resolver("api");
        api.redirect = Some(Redirect {
            service: Some("api-v2".into()),
            ..Default::default()
        });
        let mut v2 = resolver("api-v2");
        v2.failover.push(Failover {
            key: "*".into(),
            datacenters: vec!["dc2".into()],
            ..Default::default()
        });
        let entries = [api, v2];
        let find = |s: &str| entries.iter().find(|e| e.name == s);
        let out = resolve(find, &target("api", "dc1"));
        assert_eq!(ids(&out), ["api-v2.default.dc1", "api-v2.default.dc2"]);
        assert_eq!(out[0].1, Origin::Redirect { hops: 1 });
    }

    #[test]
    fn a_datacenter_redirect_is_asked_again_there_and_loops_stop() {
        let mut api = resolver("api");
        api.redirect = Some(Redirect {
            datacenter: Some("dc2".into()),
            ..Default::default()
        });
        let entries = [api];
        let find = |s: &str| entries.iter().find(|e| e.name == s);
        assert_eq!(
            ids(&resolve(find, &target("api", "dc1"))),
            ["api.default.dc2"]
        );

        let mut a = resolver("a");
        a.redirect = Some(Redirect {
            service: Some("b".into()),
            ..Default::default()
        });
        let mut b = resolver("b");
        b.redirect = Some(Redirect {
            service: Some("a".into()),
            ..Default::default()
        });
        let entries = [a, b];
        let find = |s: &str| entries.iter().find(|e| e.name == s);
        assert_eq!(ids(&resolve(find, &target("a", "dc1"))), ["b.default.dc1"]);
    }

    #[test]
    fn no_resolver_is_the_upstream_alone() {
        let out = resolve(|_| None, &target("api", "dc1"));
        assert_eq!(out, vec![(target("api", "dc1"), Origin::Primary)]);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever the failover says: the primary comes first, no target repeats, the
            /// datacenters keep their written order, and every target is the primary's service
            /// (no Service in the failover) in a datacenter the upstream or the failover names.
            #[test]
            fn failover_order(dcs in proptest::collection::vec("dc[0-4]", 0..6), home in "dc[0-4]") {
                let mut api = resolver("api");
                if !dcs.is_empty() {
                    api.failover.push(Failover { key: "*".into(), datacenters: dcs.clone(), ..Default::default() });
                }
                let entries = [api];
                let find = |s: &str| entries.iter().find(|e| e.name == s);
                let out = resolve(find, &target("api", &home));
                prop_assert_eq!(&out[0].0, &target("api", &home));
                let got: Vec<&str> = out.iter().map(|(t, _)| t.datacenter.as_str()).collect();
                let mut want: Vec<&str> = vec![home.as_str()];
                for d in &dcs {
                    if !want.contains(&d.as_str()) {
                        want.push(d);
                    }
                }
                prop_assert_eq!(got, want);
                prop_assert!(out.iter().all(|(t, _)| t.service == "api"));
            }
        }
    }
}
