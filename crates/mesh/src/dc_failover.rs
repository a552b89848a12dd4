//! Gateway-side datacenter failover (opt-in): a policy such as `dc2=dc3` lets a gateway send `*.dc2`
//! names to dc3's gateways when every gateway of dc2 is down, and lets dc3's gateway serve
//! `<svc>.<ns>.dc2` names with its own instances of that service after dc2's gateways. Owns the policy's
//! syntax and how it extends [`Catalog::gateway_routes`] with failover groups.
//!
//! Loop-free when every gateway has the same policy: a gateway in a datacenter that the policy names as
//! a target for dcX never sends dcX's names to a third datacenter (only to dcX's gateways or its own
//! instances), so a failed-over connection makes at most two gateway hops.

use crate::catalog::{Catalog, RouteDef};
use crate::names::SniName;
use thiserror::Error;

/// The router setting that holds the policy.
pub const SETTING: &str = "datacenter_failover";

/// `from=to1,to2; from2=to3`: for each datacenter, the datacenters its names fail over to, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatacenterFailover {
    entries: Vec<(String, Vec<String>)>,
}

/// Why a policy was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// An entry is not `from=to[,to...]`.
    #[error("datacenter_failover: `{0}` is not `dc=target[,target...]`")]
    Syntax(String),
    /// A datacenter name that is empty or not made of letters, digits, `-` and `_`.
    #[error("datacenter_failover: `{0}` is not a datacenter name")]
    Name(String),
    /// A datacenter listed as its own failover target, or a target listed twice.
    #[error("datacenter_failover: `{0}` fails over to itself or lists a target twice")]
    Repeat(String),
    /// Two entries for one datacenter.
    #[error("datacenter_failover: `{0}` has two entries")]
    Duplicate(String),
}

fn check_name(n: &str) -> Result<String, PolicyError> {
    let ok = !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(n.to_owned())
    } else {
        Err(PolicyError::Name(n.to_owned()))
    }
}

impl DatacenterFailover {
    /// Parses `dc2=dc3; dc4=dc3,dc1` (entries split by `;` or new lines, spaces ignored). Empty: no
    /// failover.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let mut entries: Vec<(String, Vec<String>)> = Vec::new();
        for entry in text
            .split([';', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let (from, to) = entry
                .split_once('=')
                .ok_or_else(|| PolicyError::Syntax(entry.to_owned()))?;
            let from = check_name(from.trim())?;
            let targets = to
                .split(',')
                .map(|t| check_name(t.trim()))
                .collect::<Result<Vec<_>, _>>()?;
            let mut seen = vec![&from];
            for t in &targets {
                if seen.contains(&t) {
                    return Err(PolicyError::Repeat(entry.to_owned()));
                }
                seen.push(t);
            }
            if entries.iter().any(|(f, _)| *f == from) {
                return Err(PolicyError::Duplicate(from));
            }
            entries.push((from, targets));
        }
        Ok(Self { entries })
    }

    /// True when nothing fails over.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The targets of `dc`'s names, in order (empty: none).
    pub fn targets(&self, dc: &str) -> &[String] {
        self.entries
            .iter()
            .find(|(f, _)| f == dc)
            .map_or(&[], |(_, t)| t.as_slice())
    }
}

impl Catalog {
    /// [`Catalog::gateway_routes`], extended by `policy` for each datacenter dcX it names (other than
    /// `local_dc`):
    /// - where `local_dc` is not one of dcX's targets, `*.dcX.internal.<td>` gets one failover group per
    ///   target datacenter that has healthy gateways (their WAN addresses), in the policy's order; the
    ///   route exists even when dcX has no healthy gateway left (its first group is then empty);
    /// - where `local_dc` is one of dcX's targets, each local service's plain name in dcX
    ///   (`<svc>.<ns>.dcX.internal.<td>`) gets a route of its own: dcX's gateways first, this
    ///   datacenter's healthy instances of the service as the last group. Subsets are not failed over.
    pub fn gateway_routes_with_failover(
        &self,
        local_dc: &str,
        wan_federation: bool,
        policy: &DatacenterFailover,
    ) -> Vec<RouteDef> {
        let mut routes = self.gateway_routes(local_dc, wan_federation);
        let td = &self.trust_domain;
        let mut extra = Vec::new();
        for (from, targets) in &policy.entries {
            if from == local_dc {
                continue;
            }
            let own = self.gateway_endpoints(from, "wan");
            if targets.iter().any(|t| t == local_dc) {
                for r in &routes {
                    let Some(SniName::Service {
                        subset: None,
                        service,
                        namespace,
                        datacenter,
                        ..
                    }) = SniName::parse(&r.pattern)
                    else {
                        continue;
                    };
                    if datacenter != local_dc {
                        continue;
                    }
                    extra.push(RouteDef {
                        pattern: SniName::service(&service, &namespace, from, td).to_string(),
                        endpoints: own.clone(),
                        failover: vec![r.endpoints.clone()],
                        reason: format!(
                            "service {service} of {from}: {from}'s gateways, then local instances (datacenter_failover)"
                        ),
                    });
                }
                continue;
            }
            let groups: Vec<Vec<String>> = targets
                .iter()
                .filter(|t| *t != from)
                .map(|t| self.gateway_endpoints(t, "wan"))
                .filter(|g| !g.is_empty())
                .collect();
            if groups.is_empty() {
                continue;
            }
            let pattern = format!("*.{from}.internal.{td}");
            match routes.iter_mut().find(|r| r.pattern == pattern) {
                Some(r) => {
                    r.failover = groups;
                    r.reason = format!("{}, failing over to {}", r.reason, targets.join(", "));
                }
                None => extra.push(RouteDef {
                    pattern,
                    endpoints: Vec::new(),
                    failover: groups,
                    reason: format!(
                        "datacenter {from} (no healthy gateway), failing over to {}",
                        targets.join(", ")
                    ),
                }),
            }
        }
        routes.extend(extra);
        routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_bad_ones_are_refused_by_kind() {
        let p = DatacenterFailover::parse("dc2=dc3; dc4 = dc3 , dc1\n").expect("valid");
        assert_eq!(p.targets("dc2"), ["dc3".to_owned()]);
        assert_eq!(p.targets("dc4"), ["dc3".to_owned(), "dc1".to_owned()]);
        assert!(p.targets("dc1").is_empty());
        assert!(DatacenterFailover::parse("  ").expect("empty").is_empty());
        for (bad, want) in [
            ("dc2", PolicyError::Syntax("dc2".into())),
            ("dc2=", PolicyError::Name(String::new())),
            ("dc2=dc2", PolicyError::Repeat("dc2=dc2".into())),
            ("dc2=dc3,dc3", PolicyError::Repeat("dc2=dc3,dc3".into())),
            ("dc2=dc3;dc2=dc1", PolicyError::Duplicate("dc2".into())),
            ("dc2=d/c3", PolicyError::Name("d/c3".into())),
        ] {
            assert_eq!(DatacenterFailover::parse(bad), Err(want), "{bad}");
        }
    }
}
