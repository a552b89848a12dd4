//! What a sidecar needs from the catalog, compiled once per catalog change: where it listens, where its
//! application is, each upstream's plan (SNI, expected identity, gateway mode, next hops), and the
//! intentions that authorise its callers, in the order they are tried.
//!
//! Intentions follow Consul's `service-intentions` entries: the entry for the destination's own name is
//! tried before a `*` entry; inside an entry an exact source beats `*` in the source's namespace, which beats
//! `*` in any namespace. The first match decides; when none matches, the sidecar's default policy does.

use crate::catalog::{Catalog, Instance, UpstreamPlan};
use crate::model::{EntryKind, IntentionAction, IntentionSource, ServiceKind};
use crate::names;
use serde::Serialize;

/// Where the application listens when its registration gives only a port.
pub const DEFAULT_LOCAL_APP_ADDRESS: &str = "127.0.0.1";

/// A sidecar's view of the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SidecarPlan {
    /// The service the sidecar fronts.
    pub service: String,
    /// Its namespace.
    pub namespace: String,
    /// Its datacenter.
    pub datacenter: String,
    /// The sidecar's registration id.
    pub proxy_id: String,
    /// The public (mTLS) listener, `host:port`: the sidecar's registered address and port.
    pub public: String,
    /// The application, `host:port`: inbound connections end here in plaintext.
    pub local_app: Option<String>,
    /// One plan per upstream.
    pub upstreams: Vec<UpstreamPlan>,
    /// Intentions for callers of this service, in the order they are tried.
    pub intentions: Vec<IntentionSource>,
}

/// Why a sidecar plan cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// No sidecar registration for the service in the datacenter.
    #[error("no connect-proxy registration for service {service} in datacenter {datacenter}")]
    NoSidecar {
        /// The service.
        service: String,
        /// The datacenter.
        datacenter: String,
    },
    /// Several sidecars front the service and no proxy id says which one this is.
    #[error("{count} sidecars front service {service}; name one by its id ({ids})")]
    Ambiguous {
        /// The service.
        service: String,
        /// How many.
        count: usize,
        /// Their ids.
        ids: String,
    },
}

/// How specific an intention source is: lower is tried first.
fn source_rank(s: &IntentionSource) -> u8 {
    match (s.namespace == "*", s.name == "*") {
        (false, false) => 0,
        (false, true) => 1,
        (true, _) => 2,
    }
}

/// The first intention matching a caller, or `None` (the default policy decides).
pub fn matching_intention<'a>(
    intentions: &'a [IntentionSource],
    source_namespace: &str,
    source_service: &str,
) -> Option<&'a IntentionSource> {
    intentions.iter().find(|i| {
        (i.namespace == "*" || i.namespace == source_namespace)
            && (i.name == "*" || i.name == source_service)
    })
}

/// The decision for a caller: the matching intention's action, else `default`.
pub fn authorize(
    intentions: &[IntentionSource],
    source_namespace: &str,
    source_service: &str,
    default: IntentionAction,
) -> IntentionAction {
    matching_intention(intentions, source_namespace, source_service).map_or(default, |i| i.action)
}

impl Catalog {
    /// Intentions guarding `service`, in the order they are tried.
    pub fn intentions_for(&self, service: &str) -> Vec<IntentionSource> {
        let mut out = Vec::new();
        for name in [service, "*"] {
            let mut rules: Vec<IntentionSource> = self
                .config_entries
                .iter()
                .filter(|e| e.kind == EntryKind::ServiceIntentions && e.name == name)
                .flat_map(|e| e.sources.iter().cloned())
                .collect();
            // Stable: equally specific sources keep their written order.
            rules.sort_by_key(source_rank);
            out.extend(rules);
            if service == "*" {
                break;
            }
        }
        out
    }

    /// The plan of the sidecar fronting `service` in `local_dc`; `proxy_id` picks one when several do.
    pub fn sidecar_plan(
        &self,
        local_dc: &str,
        service: &str,
        proxy_id: Option<&str>,
    ) -> Result<SidecarPlan, PlanError> {
        let candidates: Vec<&Instance> = self
            .instances
            .iter()
            .filter(|i| {
                i.datacenter == local_dc
                    && i.service.kind == ServiceKind::ConnectProxy
                    && i.mesh_service() == Some(service)
                    && proxy_id.is_none_or(|id| i.service.id == id)
            })
            .collect();
        let sidecar = match candidates.as_slice() {
            [one] => *one,
            [] => {
                return Err(PlanError::NoSidecar {
                    service: service.to_owned(),
                    datacenter: local_dc.to_owned(),
                })
            }
            many => {
                return Err(PlanError::Ambiguous {
                    service: service.to_owned(),
                    count: many.len(),
                    ids: many
                        .iter()
                        .map(|i| i.service.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                })
            }
        };
        let proxy = sidecar.service.proxy.as_ref();
        let local_app = proxy.and_then(|p| {
            let port = p.local_service_port?;
            let host = p
                .local_service_address
                .as_deref()
                .filter(|a| !a.is_empty())
                .unwrap_or(DEFAULT_LOCAL_APP_ADDRESS);
            Some(format!("{host}:{port}"))
        });
        let mut upstreams = self.upstream_plan(local_dc, &sidecar.service);
        for u in &mut upstreams {
            if u.upstream.local_bind_address.is_none() {
                u.upstream.local_bind_address = Some(DEFAULT_LOCAL_APP_ADDRESS.to_owned());
            }
        }
        Ok(SidecarPlan {
            service: service.to_owned(),
            namespace: if sidecar.service.namespace.is_empty() {
                names::DEFAULT.to_owned()
            } else {
                sidecar.service.namespace.clone()
            },
            datacenter: local_dc.to_owned(),
            proxy_id: sidecar.service.id.clone(),
            public: sidecar.endpoint(),
            local_app,
            upstreams,
            intentions: self.intentions_for(service),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::IntentionAction::{Allow, Deny};

    fn src(ns: &str, name: &str, action: IntentionAction) -> IntentionSource {
        IntentionSource {
            name: name.into(),
            namespace: ns.into(),
            action,
        }
    }

    #[test]
    fn exact_source_beats_wildcards() {
        let rules = [
            src("*", "*", Allow),
            src("default", "*", Deny),
            src("default", "web", Allow),
        ];
        let mut sorted = rules.to_vec();
        sorted.sort_by_key(source_rank);
        assert_eq!(authorize(&sorted, "default", "web", Deny), Allow);
        assert_eq!(authorize(&sorted, "default", "db", Allow), Deny);
        assert_eq!(authorize(&sorted, "other", "db", Deny), Allow);
        assert_eq!(authorize(&[], "default", "db", Deny), Deny);
        assert_eq!(authorize(&[], "default", "db", Allow), Allow);
    }
}
