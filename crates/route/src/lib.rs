//! The SNI route table: which upstream endpoints a server name goes to. Pure data, no IO, no clock.
//!
//! A [`RouteTable`] is built once by [`RouteTableBuilder`], validated, and never mutated afterwards; the
//! data plane holds it behind an `Arc` and swaps in a whole new table on reload. A catalog change that
//! touches a few routes makes its new table with [`RouteTable::patched`]: the routes are shared
//! (`Arc`) between the two tables, so the copy costs a reference count per route, not a rebuild.
//! Lookup rules:
//! - an exact name beats any wildcard (one hash lookup);
//! - `*.suffix` matches any name with one or more labels before `suffix` (so `*.dc2.internal.td.consul`
//!   covers `api.default.dc2.internal.td.consul`), and the longest matching suffix wins (one hash lookup per
//!   label of the name, so lookup cost does not grow with the number of routes);
//! - otherwise the table's default action applies: reject, or a fallback route.
//!
//! A connection without SNI has its own action ([`RouteTable::no_sni`]), rejected unless configured.
//!
//! Each route carries endpoint groups in priority order (failover) and a load-balancing policy; a
//! group may weigh its endpoints (a canary split: [`EndpointGroup::weights`]). The [`plan`](Plan) of
//! a connection — which endpoints to try, in which order — is also computed here, from state the
//! caller owns (per core), so that it is testable without sockets.
#![forbid(unsafe_code)]

mod plan;

pub use plan::{LbState, Liveness, Plan, MAX_ATTEMPTS_PER_GROUP, NEAR_FACTOR, NEAR_SLACK_MICROS};

use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Index of a route in its table; stable for the table's life (per-core state is keyed by it).
pub type RouteId = usize;

/// How a route spreads connections over the endpoints of one priority group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Each core walks the endpoints in turn.
    #[default]
    RoundRobin,
    /// Power of two random choices, picking the one with fewer active connections (counted per core).
    LeastConnections,
}

/// Endpoints of equal priority.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointGroup {
    /// Addresses to connect to.
    pub endpoints: Vec<SocketAddr>,
    /// Share of new connections each endpoint gets, parallel to `endpoints`; empty: all equal. A
    /// connection's first attempt goes to endpoint `i` with probability `weights[i] / sum` (exactly so
    /// over every `sum` consecutive connections of a core under round robin); retries go on to the
    /// other endpoints in list order. Weight 0 is a standby: never a first attempt, still a retry.
    /// The builder guarantees the length matches, some weight is positive and the sum fits a `u32`; a
    /// group that breaks one of these (built by hand) is planned as if unweighted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub weights: Vec<u32>,
}

impl EndpointGroup {
    /// An unweighted group.
    pub fn new(endpoints: Vec<SocketAddr>) -> Self {
        Self {
            endpoints,
            weights: Vec::new(),
        }
    }

    /// The weights and their sum when the group is weighted (and well formed, see
    /// [`EndpointGroup::weights`]).
    pub(crate) fn weights_in_force(&self) -> Option<(&[u32], u32)> {
        if self.weights.is_empty() || self.weights.len() != self.endpoints.len() {
            return None;
        }
        let total = weight_sum(&self.weights)?;
        (total > 0).then_some((self.weights.as_slice(), total))
    }
}

/// The sum of a group's weights, `None` when it does not fit a `u32`: the per-core round-robin cursor
/// is a `u32`, so a longer cycle could never complete (and the plan's arithmetic stays in `u64`).
fn weight_sum(weights: &[u32]) -> Option<u32> {
    weights.iter().try_fold(0u32, |acc, &w| acc.checked_add(w))
}

/// What a name is sent to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    /// The pattern as configured (`name` or `*.suffix`), or `<default>` / `<no-sni>`.
    pub pattern: String,
    /// Groups in priority order: the next is tried only when every attempt in the previous one failed.
    /// A group may be empty (passed over), but not every group.
    pub groups: Vec<EndpointGroup>,
    /// Load-balancing policy within a group.
    pub lb: LbPolicy,
    /// Upstream connect timeout for this route; `None` uses the gateway's default.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_ms")]
    pub connect_timeout: Option<Duration>,
    /// Where the route came from (`config`, a plugin name...), for `/routes` and logs.
    pub source: String,
}

fn ser_routes<S: serde::Serializer>(routes: &[Arc<Route>], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(routes.iter().map(|r| &**r))
}

fn ser_ms<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        None => s.serialize_none(),
    }
}

/// Description of a route handed to the builder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// `name`, `*.suffix`.
    pub pattern: String,
    /// Endpoint groups in priority order.
    pub groups: Vec<Vec<SocketAddr>>,
    /// Weights per group, parallel to `groups` (see [`EndpointGroup::weights`]): empty for no weights
    /// anywhere; an empty entry, or a missing one at the end, leaves that group unweighted.
    pub weights: Vec<Vec<u32>>,
    /// Load-balancing policy.
    pub lb: LbPolicy,
    /// Per-route connect timeout.
    pub connect_timeout: Option<Duration>,
    /// Origin label.
    pub source: String,
}

impl RouteSpec {
    /// A round-robin route with one group.
    pub fn new(pattern: impl Into<String>, endpoints: Vec<SocketAddr>) -> Self {
        Self {
            pattern: pattern.into(),
            groups: vec![endpoints],
            weights: Vec::new(),
            lb: LbPolicy::RoundRobin,
            connect_timeout: None,
            source: "config".to_owned(),
        }
    }
}

/// Why a table could not be built. The builder refuses the whole table: a half-built table never serves.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The pattern is neither a valid host name nor `*.` followed by one.
    #[error("route `{pattern}`: {reason}")]
    InvalidPattern {
        /// The offending pattern.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two routes with the same pattern (after normalisation).
    #[error("route `{0}` is defined twice")]
    Duplicate(String),
    /// A route without any endpoint.
    #[error("route `{0}` has no endpoints")]
    NoEndpoints(String),
    /// A group's weights are not one per endpoint.
    #[error("route `{pattern}`: group {group} has {weights} weights for {endpoints} endpoints (one weight per endpoint, in the same order)")]
    WeightsMismatch {
        /// The route's pattern.
        pattern: String,
        /// Index of the group in priority order (0: the first).
        group: usize,
        /// Number of weights given.
        weights: usize,
        /// Number of endpoints in the group.
        endpoints: usize,
    },
    /// Weights given for more groups than the route has.
    #[error("route `{pattern}` has weights for {weights} groups but {groups} endpoint groups")]
    WeightsWithoutGroup {
        /// The route's pattern.
        pattern: String,
        /// Number of endpoint groups.
        groups: usize,
        /// Number of weight lists given.
        weights: usize,
    },
    /// Every weight of a weighted group is 0: no endpoint would ever take a first attempt.
    #[error("route `{pattern}`: every weight of group {group} is 0 (at least one endpoint must take new connections; 0 marks a standby)")]
    ZeroWeights {
        /// The route's pattern.
        pattern: String,
        /// Index of the group in priority order (0: the first).
        group: usize,
    },
    /// A group's weights add up to more than `u32::MAX`.
    #[error("route `{pattern}`: the weights of group {group} add up to more than {max}; use smaller weights", max = u32::MAX)]
    WeightsTooLarge {
        /// The route's pattern.
        pattern: String,
        /// Index of the group in priority order (0: the first).
        group: usize,
    },
}

/// What happens to names no route matches, and to connections without SNI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Fallback {
    /// Close the connection (the default).
    Reject,
    /// Send it to this route.
    Forward(Route),
}

/// The result of a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match<'t> {
    /// A route matched the name exactly.
    Exact(&'t Route, RouteId),
    /// A wildcard route matched.
    Wildcard(&'t Route, RouteId),
    /// Nothing matched; the fallback route applies.
    Fallback(&'t Route, RouteId),
    /// Nothing matched and the action is reject.
    Reject,
}

impl<'t> Match<'t> {
    /// The route and its id, if the connection is to be forwarded.
    pub fn route(&self) -> Option<(&'t Route, RouteId)> {
        match *self {
            Match::Exact(r, id) | Match::Wildcard(r, id) | Match::Fallback(r, id) => Some((r, id)),
            Match::Reject => None,
        }
    }
}

/// An immutable, validated route table. Cloning it shares its routes (a reference count each).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RouteTable {
    /// All routes; ids index this vector (in the order added; a patch moves the last route into a
    /// removed one's place).
    #[serde(serialize_with = "ser_routes")]
    routes: Vec<Arc<Route>>,
    #[serde(skip)]
    exact: HashMap<Arc<str>, RouteId>,
    /// Keyed by the suffix after `*.`.
    #[serde(skip)]
    wildcard: HashMap<Arc<str>, RouteId>,
    /// Route for unmatched names, if any.
    #[serde(skip)]
    default_route: Option<RouteId>,
    /// Route for connections without SNI, if any.
    #[serde(skip)]
    no_sni_route: Option<RouteId>,
}

impl RouteTable {
    /// Looks a normalised name up: exact, then the longest wildcard suffix, then the default action.
    pub fn lookup(&self, name: &str) -> Match<'_> {
        if let Some(&id) = self.exact.get(name) {
            return Match::Exact(&self.routes[id], id);
        }
        if !self.wildcard.is_empty() {
            // Suffixes after each dot, longest first.
            for (i, b) in name.bytes().enumerate() {
                if b == b'.' {
                    if let Some(&id) = self.wildcard.get(&name[i + 1..]) {
                        return Match::Wildcard(&self.routes[id], id);
                    }
                }
            }
        }
        self.fallback(self.default_route)
    }

    /// The action for a connection that sent no SNI.
    pub fn no_sni(&self) -> Match<'_> {
        self.fallback(self.no_sni_route)
    }

    fn fallback(&self, id: Option<RouteId>) -> Match<'_> {
        match id {
            Some(id) => Match::Fallback(&self.routes[id], id),
            None => Match::Reject,
        }
    }

    /// Every route, ids in order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// Whether a route with this pattern (after normalisation) is in the table (fallbacks are not
    /// patterns).
    pub fn contains(&self, pattern: &str) -> bool {
        match parse_pattern(pattern) {
            Ok(Pattern::Exact(n)) => self.exact.contains_key(n.as_str()),
            Ok(Pattern::Wildcard(s)) => self.wildcard.contains_key(s.as_str()),
            Err(_) => false,
        }
    }

    /// A new table: this one without the routes of `removed` (patterns not in it are ignored), with
    /// each of `upserts` added, or replacing the route of the same pattern. The routes not named are
    /// shared with this table, so the cost is a reference count per route plus the named ones' work.
    /// Validated as the builder validates; an error leaves no table (this one is untouched).
    pub fn patched(
        &self,
        removed: &[String],
        upserts: Vec<RouteSpec>,
    ) -> Result<RouteTable, BuildError> {
        let mut table = self.clone();
        for pattern in removed {
            let Ok(parsed) = parse_pattern(pattern) else {
                continue;
            };
            let (map, key) = match &parsed {
                Pattern::Exact(n) => (&mut table.exact, n.as_str()),
                Pattern::Wildcard(s) => (&mut table.wildcard, s.as_str()),
            };
            if let Some(id) = map.remove(key) {
                table.remove_id(id);
            }
        }
        for spec in upserts {
            let parsed = parse_pattern(&spec.pattern)?;
            let (map, key, shown) = match parsed {
                Pattern::Exact(n) => (&mut table.exact, n.clone(), n),
                Pattern::Wildcard(s) => (&mut table.wildcard, s.clone(), format!("*.{s}")),
            };
            let route = Arc::new(make_route(shown, spec)?);
            match map.get(key.as_str()) {
                Some(&id) => table.routes[id] = route,
                None => {
                    let id = table.routes.len();
                    map.insert(Arc::from(key), id);
                    table.routes.push(route);
                }
            }
        }
        Ok(table)
    }

    /// Drops route `id` (already out of its map): the last route takes its id.
    fn remove_id(&mut self, id: RouteId) {
        let last = self.routes.len() - 1;
        self.routes.swap_remove(id);
        if id == last {
            return;
        }
        // The route that moved answers under its new id, wherever it is referred to.
        let moved = &self.routes[id].pattern;
        for slot in [&mut self.default_route, &mut self.no_sni_route] {
            if *slot == Some(last) {
                *slot = Some(id);
                return;
            }
        }
        let entry = match parse_pattern(moved) {
            Ok(Pattern::Exact(n)) => self.exact.get_mut(n.as_str()),
            Ok(Pattern::Wildcard(s)) => self.wildcard.get_mut(s.as_str()),
            Err(_) => None,
        };
        if let Some(slot) = entry {
            *slot = id;
        }
    }

    /// Number of routes (fallbacks included).
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// True when the table has no route at all (every connection is rejected).
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// Builds a [`RouteTable`], validating every route.
#[derive(Debug, Default)]
pub struct RouteTableBuilder {
    table: RouteTable,
}

impl RouteTableBuilder {
    /// An empty builder (default action: reject).
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a route with this pattern (after normalisation) is already present.
    pub fn contains(&self, pattern: &str) -> bool {
        self.table.contains(pattern)
    }

    /// Routes added so far (fallbacks included).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when nothing was added yet.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Adds a route; a duplicate or invalid pattern is an error.
    pub fn add(&mut self, spec: RouteSpec) -> Result<RouteId, BuildError> {
        let pattern = parse_pattern(&spec.pattern)?;
        let (map, key, shown) = match pattern {
            Pattern::Exact(n) => (&mut self.table.exact, n.clone(), n),
            Pattern::Wildcard(s) => (&mut self.table.wildcard, s.clone(), format!("*.{s}")),
        };
        if map.contains_key(key.as_str()) {
            return Err(BuildError::Duplicate(shown));
        }
        let route = make_route(shown, spec)?;
        let id = self.table.routes.len();
        map.insert(Arc::from(key), id);
        self.table.routes.push(Arc::new(route));
        Ok(id)
    }

    /// Sends names that match no route to these endpoints instead of rejecting them.
    pub fn default_route(&mut self, spec: RouteSpec) -> Result<RouteId, BuildError> {
        let id = self.table.routes.len();
        self.table
            .routes
            .push(Arc::new(make_route("<default>".to_owned(), spec)?));
        self.table.default_route = Some(id);
        Ok(id)
    }

    /// Sends connections without SNI to these endpoints instead of rejecting them.
    pub fn no_sni_route(&mut self, spec: RouteSpec) -> Result<RouteId, BuildError> {
        let id = self.table.routes.len();
        self.table
            .routes
            .push(Arc::new(make_route("<no-sni>".to_owned(), spec)?));
        self.table.no_sni_route = Some(id);
        Ok(id)
    }

    /// The finished table.
    pub fn build(self) -> RouteTable {
        self.table
    }
}

fn make_route(pattern: String, spec: RouteSpec) -> Result<Route, BuildError> {
    if spec.groups.iter().all(Vec::is_empty) {
        return Err(BuildError::NoEndpoints(pattern));
    }
    // Weights are checked against the groups as given, so an error's group index is the caller's.
    if spec.weights.len() > spec.groups.len() {
        return Err(BuildError::WeightsWithoutGroup {
            pattern,
            groups: spec.groups.len(),
            weights: spec.weights.len(),
        });
    }
    for (group, (endpoints, weights)) in spec.groups.iter().zip(&spec.weights).enumerate() {
        if weights.is_empty() {
            continue;
        }
        if weights.len() != endpoints.len() {
            return Err(BuildError::WeightsMismatch {
                pattern,
                group,
                weights: weights.len(),
                endpoints: endpoints.len(),
            });
        }
        match weight_sum(weights) {
            None => return Err(BuildError::WeightsTooLarge { pattern, group }),
            Some(0) => return Err(BuildError::ZeroWeights { pattern, group }),
            Some(_) => {}
        }
    }
    let mut weights = spec.weights.into_iter();
    // Empty groups are kept (a plan passes over them): a route whose own datacenter has no gateway left
    // but which fails over elsewhere still says so, and its first group stays its own datacenter's.
    let mut groups: Vec<EndpointGroup> = spec
        .groups
        .into_iter()
        .map(|endpoints| EndpointGroup {
            endpoints,
            weights: weights.next().unwrap_or_default(),
        })
        .collect();
    while groups.last().is_some_and(|g| g.endpoints.is_empty()) {
        groups.pop();
    }
    Ok(Route {
        pattern,
        groups,
        lb: spec.lb,
        connect_timeout: spec.connect_timeout,
        source: spec.source,
    })
}

enum Pattern {
    Exact(String),
    Wildcard(String),
}

fn parse_pattern(pattern: &str) -> Result<Pattern, BuildError> {
    let invalid = |reason: String| BuildError::InvalidPattern {
        pattern: pattern.to_owned(),
        reason,
    };
    let (wild, name) = match pattern.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, pattern),
    };
    if name.contains('*') {
        return Err(invalid(
            "`*` is only allowed as the whole first label (`*.suffix`)".to_owned(),
        ));
    }
    let name =
        meshgate_sni::normalize_host_name(name.as_bytes()).map_err(|e| invalid(e.to_string()))?;
    Ok(if wild {
        Pattern::Wildcard(name)
    } else {
        Pattern::Exact(name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(port: u16) -> Vec<SocketAddr> {
        vec![SocketAddr::from(([127, 0, 0, 1], port))]
    }

    fn table() -> RouteTable {
        let mut b = RouteTableBuilder::new();
        b.add(RouteSpec::new("api.default.dc1.internal.td.consul", ep(1)))
            .expect("add");
        b.add(RouteSpec::new("*.dc2.internal.td.consul", ep(2)))
            .expect("add");
        b.add(RouteSpec::new("*.internal.td.consul", ep(3)))
            .expect("add");
        b.add(RouteSpec::new("*.default.dc2.internal.td.consul", ep(4)))
            .expect("add");
        b.add(RouteSpec::new("exact.dc2.internal.td.consul", ep(5)))
            .expect("add");
        b.build()
    }

    fn port(m: Match<'_>) -> Option<u16> {
        m.route().map(|(r, _)| r.groups[0].endpoints[0].port())
    }

    #[test]
    fn exact_beats_wildcard_and_longest_suffix_wins() {
        let t = table();
        assert_eq!(
            port(t.lookup("api.default.dc1.internal.td.consul")),
            Some(1)
        );
        assert_eq!(port(t.lookup("exact.dc2.internal.td.consul")), Some(5));
        assert_eq!(
            port(t.lookup("api.default.dc2.internal.td.consul")),
            Some(4)
        );
        assert_eq!(
            port(t.lookup("v1.api.default.dc2.internal.td.consul")),
            Some(4)
        );
        assert_eq!(port(t.lookup("api.other.dc2.internal.td.consul")), Some(2));
        assert_eq!(
            port(t.lookup("web.default.dc3.internal.td.consul")),
            Some(3)
        );
        assert!(matches!(
            t.lookup("dc2.internal.td.consul"),
            Match::Wildcard(..)
        ));
        assert_eq!(t.lookup("internal.td.consul"), Match::Reject);
        assert_eq!(t.lookup("unknown.example"), Match::Reject);
        assert_eq!(t.no_sni(), Match::Reject);
    }

    #[test]
    fn wildcard_does_not_match_its_own_suffix() {
        let mut b = RouteTableBuilder::new();
        b.add(RouteSpec::new("*.example", ep(1))).expect("add");
        let t = b.build();
        assert_eq!(t.lookup("example"), Match::Reject);
        assert!(matches!(t.lookup("a.example"), Match::Wildcard(..)));
        assert!(matches!(t.lookup("a.b.c.example"), Match::Wildcard(..)));
    }

    #[test]
    fn fallbacks() {
        let mut b = RouteTableBuilder::new();
        b.default_route(RouteSpec::new("", ep(7))).expect("default");
        b.no_sni_route(RouteSpec::new("", ep(8))).expect("no sni");
        let t = b.build();
        assert_eq!(port(t.lookup("anything.example")), Some(7));
        assert!(matches!(t.lookup("x.example"), Match::Fallback(..)));
        assert_eq!(port(t.no_sni()), Some(8));
    }

    #[test]
    fn patterns_are_normalised_and_validated() {
        let mut b = RouteTableBuilder::new();
        b.add(RouteSpec::new("API.Example.", ep(1))).expect("add");
        assert_eq!(
            b.add(RouteSpec::new("api.example", ep(2))),
            Err(BuildError::Duplicate("api.example".into()))
        );
        for bad in [
            "a.*.example",
            "*",
            "*.",
            "10.0.0.1",
            "a..b",
            "**.example",
            "",
        ] {
            assert!(
                matches!(
                    b.add(RouteSpec::new(bad, ep(3))),
                    Err(BuildError::InvalidPattern { .. })
                ),
                "{bad}"
            );
        }
        assert_eq!(
            b.add(RouteSpec::new("empty.example", vec![])),
            Err(BuildError::NoEndpoints("empty.example".into()))
        );
        let t = b.build();
        assert_eq!(port(t.lookup("api.example")), Some(1));
    }

    #[test]
    fn weights_are_validated() {
        let spec = |weights: Vec<Vec<u32>>| {
            let mut s = RouteSpec::new("w.example", vec![ep(1)[0], ep(2)[0]]);
            s.groups.push(ep(3));
            s.weights = weights;
            s
        };
        let mut b = RouteTableBuilder::new();
        assert_eq!(
            b.add(spec(vec![vec![1, 2, 3]])),
            Err(BuildError::WeightsMismatch {
                pattern: "w.example".into(),
                group: 0,
                weights: 3,
                endpoints: 2,
            })
        );
        let e = b.add(spec(vec![vec![0, 0]])).expect_err("all zero");
        assert_eq!(
            e,
            BuildError::ZeroWeights {
                pattern: "w.example".into(),
                group: 0
            }
        );
        assert!(e.to_string().contains("w.example"), "{e}");
        assert!(matches!(
            b.add(spec(vec![vec![u32::MAX, 1]])),
            Err(BuildError::WeightsTooLarge { group: 0, .. })
        ));
        assert!(matches!(
            b.add(spec(vec![vec![], vec![1, 1]])),
            Err(BuildError::WeightsMismatch { group: 1, .. })
        ));
        assert!(matches!(
            b.add(spec(vec![vec![], vec![], vec![1]])),
            Err(BuildError::WeightsWithoutGroup {
                groups: 2,
                weights: 3,
                ..
            })
        ));
        // Weights for the first group only, a standby among them; an empty list is no weights.
        b.add(spec(vec![vec![0, 1]])).expect("weighted");
        let t = b.build();
        let (r, _) = t.lookup("w.example").route().expect("route");
        assert_eq!(r.groups[0].weights, vec![0, 1]);
        assert!(r.groups[1].weights.is_empty());
        let mut b = RouteTableBuilder::new();
        b.add(spec(vec![vec![], vec![]])).expect("unweighted");
        assert!(b.build().routes()[0]
            .groups
            .iter()
            .all(|g| g.weights.is_empty()));
    }

    #[test]
    fn serialises_for_the_admin_endpoint() {
        let json = serde_json::to_value(table()).expect("json");
        assert_eq!(json["routes"][1]["pattern"], "*.dc2.internal.td.consul");
        assert_eq!(
            json["routes"][0]["groups"][0]["endpoints"][0],
            "127.0.0.1:1"
        );
        assert_eq!(json["routes"][0]["lb"], "round_robin");
        assert!(json["routes"][0]["groups"][0].get("weights").is_none());

        let mut spec = RouteSpec::new("w.example", vec![ep(1)[0], ep(2)[0]]);
        spec.weights = vec![vec![9, 1]];
        let mut b = RouteTableBuilder::new();
        b.add(spec).expect("add");
        let json = serde_json::to_value(b.build()).expect("json");
        assert_eq!(
            json["routes"][0]["groups"][0]["weights"],
            serde_json::json!([9, 1])
        );
    }

    /// What a name resolves to, comparable across tables (ids differ between a patched table and one
    /// built whole).
    fn resolved(t: &RouteTable, name: &str) -> Option<(String, Vec<EndpointGroup>)> {
        t.lookup(name)
            .route()
            .map(|(r, _)| (r.pattern.clone(), r.groups.clone()))
    }

    #[test]
    fn a_patch_removes_replaces_and_adds_and_keeps_the_fallbacks() {
        let mut b = RouteTableBuilder::new();
        for (i, p) in ["a.td", "b.td", "*.dc2.td", "c.td"].iter().enumerate() {
            b.add(RouteSpec::new(*p, ep(u16::try_from(i).expect("small") + 1)))
                .expect("add");
        }
        b.default_route(RouteSpec::new("x", ep(90)))
            .expect("default");
        b.no_sni_route(RouteSpec::new("x", ep(91))).expect("no sni");
        let before = b.build();
        let after = before
            .patched(
                // The first route, a wildcard, one that is not there, one that is not a pattern.
                &[
                    "A.td".into(),
                    "*.dc2.td".into(),
                    "gone.td".into(),
                    "*x*".into(),
                ],
                vec![
                    RouteSpec::new("b.td", ep(20)),
                    RouteSpec::new("d.td", ep(40)),
                ],
            )
            .expect("patch");
        assert_eq!(
            port(after.lookup("a.td")),
            Some(90),
            "removed: the default answers"
        );
        assert_eq!(port(after.lookup("b.td")), Some(20), "replaced");
        assert_eq!(port(after.lookup("c.td")), Some(4), "kept, though it moved");
        assert_eq!(port(after.lookup("d.td")), Some(40), "added");
        assert_eq!(port(after.lookup("api.dc2.td")), Some(90));
        assert_eq!(port(after.no_sni()), Some(91));
        assert!(!after.contains("a.td") && after.contains("B.TD") && !after.contains("*.dc2.td"));
        assert_eq!(after.len(), 5);
        // The table it was made from is untouched.
        assert_eq!(port(before.lookup("a.td")), Some(1));
        assert_eq!(port(before.lookup("b.td")), Some(2));
        // An invalid route refuses the whole patch.
        assert!(before
            .patched(&[], vec![RouteSpec::new("bad*.td", ep(1))])
            .is_err());
        assert!(before
            .patched(&[], vec![RouteSpec::new("e.td", Vec::new())])
            .is_err());
    }

    proptest::proptest! {
        /// Any sequence of patches answers every name exactly as the same routes built whole.
        #[test]
        fn patches_answer_as_a_table_built_whole(
            start in proptest::collection::btree_map(0u8..24, 1u16..100, 0..16),
            steps in proptest::collection::vec(
                (proptest::collection::vec(0u8..24, 0..6),
                 proptest::collection::btree_map(0u8..24, 100u16..200, 0..6)),
                1..6),
            fallback in proptest::bool::ANY,
        ) {
            // Names 0..12 exact, 12..24 wildcards over a suffix a few names fall under.
            let pattern = |k: u8| if k < 12 { format!("n{k}.dc.td") } else { format!("*.w{}.td", k - 12) };
            let build = |routes: &std::collections::BTreeMap<u8, u16>| {
                let mut b = RouteTableBuilder::new();
                for (k, p) in routes {
                    b.add(RouteSpec::new(pattern(*k), ep(*p))).expect("add");
                }
                if fallback {
                    b.default_route(RouteSpec::new("x", ep(999))).expect("default");
                }
                b.build()
            };
            let mut model = start.clone();
            let mut table = build(&start);
            for (removed, upserts) in steps {
                for k in &removed {
                    model.remove(k);
                }
                for (k, p) in &upserts {
                    model.insert(*k, *p);
                }
                let removed: Vec<String> = removed.iter().map(|k| pattern(*k)).collect();
                let upserts = upserts.iter().map(|(k, p)| RouteSpec::new(pattern(*k), ep(*p))).collect();
                table = table.patched(&removed, upserts).expect("patch");
                let whole = build(&model);
                proptest::prop_assert_eq!(table.len(), whole.len());
                for k in 0..24u8 {
                    let name = if k < 12 { format!("n{k}.dc.td") } else { format!("a.w{}.td", k - 12) };
                    proptest::prop_assert_eq!(resolved(&table, &name), resolved(&whole, &name));
                }
            }
        }
    }
}
