//! Consul's SNI names: building and parsing every form a mesh gateway sees.
//!
//! | form | SNI |
//! |---|---|
//! | service | `<svc>.<ns>.<dc>.internal.<td>` |
//! | service subset | `<subset>.<svc>.<ns>.<dc>.internal.<td>` |
//! | service in a partition | `[<subset>.]<svc>.<ns>.<partition>.<dc>.internal-v1.<td>` |
//! | service from a peer | `[<subset>.]<svc>.<ns>.<partition>.<peer>.external.<td>` |
//! | prepared query | `<query>.default.<dc>.query.<td>` |
//! | a whole datacenter (its gateways) | `<dc>.internal.<td>` or `<partition>.<dc>.internal-v1.<td>` |
//! | Consul servers over WAN federation | `server.<dc>.<domain>`, `<node>.server.<dc>.<domain>` |
//! | peering control plane | `server.<dc>.peering.<td>` |
//!
//! The trust domain `<td>` is `<cluster-uuid>.consul`; namespace and partition default to `default`.

use std::fmt;

/// The default namespace and partition.
pub const DEFAULT: &str = "default";
/// Default Consul DNS domain for server names.
pub const DEFAULT_DOMAIN: &str = "consul";

/// A parsed Consul SNI.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SniName {
    /// A service in a datacenter (`internal`, or `internal-v1` when the partition is not default).
    Service {
        /// Subset name, if any.
        subset: Option<String>,
        /// Service name.
        service: String,
        /// Namespace.
        namespace: String,
        /// Admin partition.
        partition: String,
        /// Datacenter.
        datacenter: String,
        /// Trust domain.
        trust_domain: String,
    },
    /// A service exported by a cluster peer.
    Peered {
        /// Subset name, if any.
        subset: Option<String>,
        /// Service name.
        service: String,
        /// Namespace.
        namespace: String,
        /// Admin partition.
        partition: String,
        /// Peer name.
        peer: String,
        /// Trust domain.
        trust_domain: String,
    },
    /// A prepared query.
    PreparedQuery {
        /// Query name.
        query: String,
        /// Datacenter.
        datacenter: String,
        /// Trust domain.
        trust_domain: String,
    },
    /// A whole datacenter: what a gateway uses to reach another datacenter's gateways.
    Datacenter {
        /// Admin partition.
        partition: String,
        /// Datacenter.
        datacenter: String,
        /// Trust domain.
        trust_domain: String,
    },
    /// Consul servers over WAN federation: all of a datacenter's (`node` = None) or one node.
    Server {
        /// Server node name.
        node: Option<String>,
        /// Datacenter.
        datacenter: String,
        /// DNS domain (`consul` by default).
        domain: String,
    },
    /// The peering control plane of a datacenter.
    PeeringServer {
        /// Datacenter.
        datacenter: String,
        /// Trust domain.
        trust_domain: String,
    },
}

impl SniName {
    /// A service in the default partition.
    pub fn service(service: &str, namespace: &str, datacenter: &str, trust_domain: &str) -> Self {
        SniName::Service {
            subset: None,
            service: service.to_owned(),
            namespace: namespace.to_owned(),
            partition: DEFAULT.to_owned(),
            datacenter: datacenter.to_owned(),
            trust_domain: trust_domain.to_owned(),
        }
    }

    /// Parses a (normalised, lowercase) SNI. `None` when it is not one of Consul's forms.
    pub fn parse(sni: &str) -> Option<SniName> {
        let labels: Vec<&str> = sni.split('.').collect();
        if labels.iter().any(|l| l.is_empty()) {
            return None;
        }
        let own = |s: &str| s.to_owned();
        let rest = |i: usize| labels[i..].join(".");
        for (i, marker) in labels.iter().enumerate() {
            if i + 1 >= labels.len() {
                break;
            }
            let head = &labels[..i];
            let td = rest(i + 1);
            let found = match (*marker, head) {
                ("internal", [dc]) => Some(SniName::Datacenter {
                    partition: own(DEFAULT),
                    datacenter: own(dc),
                    trust_domain: td,
                }),
                ("internal", [svc, ns, dc]) | ("internal", [_, svc, ns, dc]) => {
                    Some(SniName::Service {
                        subset: (head.len() == 4).then(|| own(head[0])),
                        service: own(svc),
                        namespace: own(ns),
                        partition: own(DEFAULT),
                        datacenter: own(dc),
                        trust_domain: td,
                    })
                }
                ("internal-v1", [ap, dc]) => Some(SniName::Datacenter {
                    partition: own(ap),
                    datacenter: own(dc),
                    trust_domain: td,
                }),
                ("internal-v1", [svc, ns, ap, dc]) | ("internal-v1", [_, svc, ns, ap, dc]) => {
                    Some(SniName::Service {
                        subset: (head.len() == 5).then(|| own(head[0])),
                        service: own(svc),
                        namespace: own(ns),
                        partition: own(ap),
                        datacenter: own(dc),
                        trust_domain: td,
                    })
                }
                ("external", [svc, ns, ap, peer]) | ("external", [_, svc, ns, ap, peer]) => {
                    Some(SniName::Peered {
                        subset: (head.len() == 5).then(|| own(head[0])),
                        service: own(svc),
                        namespace: own(ns),
                        partition: own(ap),
                        peer: own(peer),
                        trust_domain: td,
                    })
                }
                ("query", [q, "default", dc]) => Some(SniName::PreparedQuery {
                    query: own(q),
                    datacenter: own(dc),
                    trust_domain: td,
                }),
                ("peering", ["server", dc]) => Some(SniName::PeeringServer {
                    datacenter: own(dc),
                    trust_domain: td,
                }),
                _ => None,
            };
            if found.is_some() {
                return found;
            }
        }
        match labels.as_slice() {
            ["server", dc, domain @ ..] if !domain.is_empty() => Some(SniName::Server {
                node: None,
                datacenter: own(dc),
                domain: domain.join("."),
            }),
            [node, "server", dc, domain @ ..] if !domain.is_empty() => Some(SniName::Server {
                node: Some(own(node)),
                datacenter: own(dc),
                domain: domain.join("."),
            }),
            _ => None,
        }
    }

    /// The datacenter the name points into, if it names one.
    pub fn datacenter(&self) -> Option<&str> {
        match self {
            SniName::Service { datacenter, .. }
            | SniName::PreparedQuery { datacenter, .. }
            | SniName::Datacenter { datacenter, .. }
            | SniName::Server { datacenter, .. }
            | SniName::PeeringServer { datacenter, .. } => Some(datacenter),
            SniName::Peered { .. } => None,
        }
    }
}

impl fmt::Display for SniName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let subset = |f: &mut fmt::Formatter<'_>, s: &Option<String>| match s {
            Some(s) => write!(f, "{s}."),
            None => Ok(()),
        };
        match self {
            SniName::Service {
                subset: s,
                service,
                namespace,
                partition,
                datacenter,
                trust_domain,
            } => {
                subset(f, s)?;
                if partition == DEFAULT {
                    write!(
                        f,
                        "{service}.{namespace}.{datacenter}.internal.{trust_domain}"
                    )
                } else {
                    write!(
                        f,
                        "{service}.{namespace}.{partition}.{datacenter}.internal-v1.{trust_domain}"
                    )
                }
            }
            SniName::Peered {
                subset: s,
                service,
                namespace,
                partition,
                peer,
                trust_domain,
            } => {
                subset(f, s)?;
                write!(
                    f,
                    "{service}.{namespace}.{partition}.{peer}.external.{trust_domain}"
                )
            }
            SniName::PreparedQuery {
                query,
                datacenter,
                trust_domain,
            } => write!(f, "{query}.default.{datacenter}.query.{trust_domain}"),
            SniName::Datacenter {
                partition,
                datacenter,
                trust_domain,
            } => {
                if partition == DEFAULT {
                    write!(f, "{datacenter}.internal.{trust_domain}")
                } else {
                    write!(f, "{partition}.{datacenter}.internal-v1.{trust_domain}")
                }
            }
            SniName::Server {
                node,
                datacenter,
                domain,
            } => match node {
                Some(n) => write!(f, "{n}.server.{datacenter}.{domain}"),
                None => write!(f, "server.{datacenter}.{domain}"),
            },
            SniName::PeeringServer {
                datacenter,
                trust_domain,
            } => write!(f, "server.{datacenter}.peering.{trust_domain}"),
        }
    }
}

/// The SPIFFE identity of a service: `spiffe://<td>/ns/<ns>/dc/<dc>/svc/<svc>`.
pub fn spiffe_id(trust_domain: &str, namespace: &str, datacenter: &str, service: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/dc/{datacenter}/svc/{service}")
}

/// Parses a SPIFFE service identity into (trust domain, namespace, datacenter, service).
pub fn parse_spiffe_id(uri: &str) -> Option<(&str, &str, &str, &str)> {
    let rest = uri.strip_prefix("spiffe://")?;
    let (td, path) = rest.split_once('/')?;
    match path.split('/').collect::<Vec<_>>().as_slice() {
        ["ns", ns, "dc", dc, "svc", svc] if !svc.is_empty() => Some((td, ns, dc, svc)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TD: &str = "5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul";

    #[test]
    fn reference_examples() {
        let s = SniName::service("api", "default", "dc2", TD);
        assert_eq!(
            s.to_string(),
            "api.default.dc2.internal.5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul"
        );
        let cases = [
            format!("api.default.dc2.internal.{TD}"),
            format!("v1.api.default.dc2.internal.{TD}"),
            format!("api.ns1.part1.dc2.internal-v1.{TD}"),
            format!("v2.api.ns1.part1.dc2.internal-v1.{TD}"),
            format!("api.default.default.peer1.external.{TD}"),
            format!("geo.default.dc1.query.{TD}"),
            format!("dc2.internal.{TD}"),
            format!("part1.dc2.internal-v1.{TD}"),
            "server.dc2.consul".to_owned(),
            "node-1.server.dc1.consul".to_owned(),
            format!("server.dc1.peering.{TD}"),
        ];
        for c in &cases {
            let parsed = SniName::parse(c).unwrap_or_else(|| panic!("{c} did not parse"));
            assert_eq!(&parsed.to_string(), c);
        }
        assert!(matches!(
            SniName::parse(&cases[1]),
            Some(SniName::Service { subset: Some(s), .. }) if s == "v1"
        ));
        // A service named like a marker still parses by position.
        assert!(matches!(
            SniName::parse(&format!("internal.default.dc1.internal.{TD}")),
            Some(SniName::Service { service, .. }) if service == "internal"
        ));
        assert_eq!(SniName::parse("www.example.com"), None);
        assert_eq!(SniName::parse("a..b"), None);
    }

    #[test]
    fn spiffe() {
        let id = spiffe_id(TD, "default", "dc1", "web");
        assert_eq!(id, format!("spiffe://{TD}/ns/default/dc/dc1/svc/web"));
        assert_eq!(parse_spiffe_id(&id), Some((TD, "default", "dc1", "web")));
        assert_eq!(parse_spiffe_id("spiffe://td/ns/default/dc/dc1"), None);
    }

    fn label() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9-]{0,10}".prop_filter("not a marker", |l| {
            !matches!(
                l.as_str(),
                "internal"
                    | "internal-v1"
                    | "external"
                    | "query"
                    | "peering"
                    | "server"
                    | "default"
            )
        })
    }

    proptest! {
        #[test]
        fn service_names_round_trip(subset in proptest::option::of(label()), svc in label(), ns in label(),
                                    ap in prop_oneof![Just(DEFAULT.to_owned()), label()], dc in label()) {
            let name = SniName::Service { subset, service: svc, namespace: ns, partition: ap,
                                          datacenter: dc, trust_domain: TD.to_owned() };
            prop_assert_eq!(SniName::parse(&name.to_string()), Some(name));
        }

        #[test]
        fn peered_and_dc_names_round_trip(subset in proptest::option::of(label()), svc in label(), ns in label(),
                                          ap in label(), peer in label(), dc in label()) {
            let peered = SniName::Peered { subset, service: svc, namespace: ns, partition: ap.clone(),
                                           peer, trust_domain: TD.to_owned() };
            prop_assert_eq!(SniName::parse(&peered.to_string()), Some(peered));
            let whole = SniName::Datacenter { partition: ap, datacenter: dc, trust_domain: TD.to_owned() };
            prop_assert_eq!(SniName::parse(&whole.to_string()), Some(whole));
        }
    }
}
