//! The compilation of a configuration's static `[[routes]]`, `[default]` and `[no_sni]` into a
//! [`RouteTable`], with refusals located at the offending entry of the file.
//!
//! A first group is written either as `endpoints` (optionally with `weights`, one per endpoint) or as
//! a `split` between weighted parts; both compile to one weighted [`meshgate_route::EndpointGroup`], so
//! the data plane knows a single kind of weight. Failover groups are never weighted.

use crate::error::{find_key, locate};
use crate::{Config, ConfigError, FallbackConfig, RouteConfig, RoutesError, SplitPart};
use meshgate_route::{BuildError, RouteSpec, RouteTable, RouteTableBuilder};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;
use toml::Spanned;

impl Config {
    /// A builder holding the static routes and fallbacks, for callers that add routes of their own.
    pub fn route_builder(&self) -> Result<RouteTableBuilder, RoutesError> {
        self.build_routes(|origin, problem| match problem {
            Problem::Build(e) => RoutesError::Build(e),
            Problem::Shape(s) => RoutesError::Shape {
                field: origin.field(&s.key),
                message: s.message,
            },
        })
    }

    /// Adds every static route and fallback to a new builder; `err` turns a refusal into the caller's
    /// error, told which entry of the file it came from.
    fn build_routes<E>(
        &self,
        err: impl Fn(RouteOrigin<'_>, Problem) -> E,
    ) -> Result<RouteTableBuilder, E> {
        let mut b = RouteTableBuilder::new();
        for (i, r) in self.routes.iter().enumerate() {
            let origin = RouteOrigin::Route(i, r);
            let spec = route_spec(r).map_err(|s| err(origin, Problem::Shape(s)))?;
            b.add(spec).map_err(|e| err(origin, Problem::Build(e)))?;
        }
        for (name, fb) in [("default", &self.default), ("no_sni", &self.no_sni)] {
            let Some(fb) = fb else { continue };
            let origin = RouteOrigin::Fallback(name, fb);
            let spec = fallback_spec(fb).map_err(|s| err(origin, Problem::Shape(s)))?;
            let added = if name == "default" {
                b.default_route(spec)
            } else {
                b.no_sni_route(spec)
            };
            added.map_err(|e| err(origin, Problem::Build(e)))?;
        }
        Ok(b)
    }

    /// Compiles the static routes into a route table.
    pub fn route_table(&self) -> Result<RouteTable, RoutesError> {
        self.route_builder().map(RouteTableBuilder::build)
    }

    /// Like [`Config::route_table`], with errors located at the offending route.
    pub(crate) fn route_table_located(
        &self,
        text: &str,
        file: &Path,
    ) -> Result<RouteTable, ConfigError> {
        self.build_routes(|origin, problem| {
            let (key, span, message) = match problem {
                Problem::Shape(s) => (s.key, s.span, s.message),
                Problem::Build(e) => {
                    let key = origin.key_of(&e);
                    (key.to_owned(), origin.span_of(key), e.to_string())
                }
            };
            let span = span.unwrap_or_else(|| origin.anchor(text, &key));
            locate(text, file, span, Some(&origin.field(&key)), message)
        })
        .map(RouteTableBuilder::build)
    }
}

/// Why an entry could not become a [`RouteSpec`] or the builder refused it.
enum Problem {
    /// The entry's first group is not in one of its two forms.
    Shape(Shape),
    /// The route table refused the spec.
    Build(BuildError),
}

/// A first group written wrong: the key at fault (`split`, `split[1].endpoints`...), where, and why.
struct Shape {
    key: String,
    /// The value at fault; `None` when the key is missing.
    span: Option<Range<usize>>,
    message: String,
}

impl Shape {
    fn new(key: impl Into<String>, span: Option<Range<usize>>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            span,
            message: message.into(),
        }
    }
}

/// Which entry of the file a route came from, for locating errors.
#[derive(Clone, Copy)]
enum RouteOrigin<'a> {
    /// `[[routes]]` number `.0`.
    Route(usize, &'a RouteConfig),
    /// `[default]` or `[no_sni]`.
    Fallback(&'static str, &'a FallbackConfig),
}

impl<'a> RouteOrigin<'a> {
    /// The dotted field name of `key` in this entry: `routes[2].weights`, `default.split`.
    fn field(&self, key: &str) -> String {
        match self {
            RouteOrigin::Route(i, _) => format!("routes[{i}].{key}"),
            RouteOrigin::Fallback(name, _) => format!("{name}.{key}"),
        }
    }

    fn first(&self) -> FirstGroup<'a> {
        match *self {
            RouteOrigin::Route(_, r) => r.first_group(),
            RouteOrigin::Fallback(_, f) => f.first_group(),
        }
    }

    /// The key a refusal of the builder is about.
    fn key_of(&self, e: &BuildError) -> &'static str {
        let first = self.first();
        match e {
            BuildError::NoEndpoints(_) => "endpoints",
            BuildError::WeightsMismatch { .. }
            | BuildError::WeightsWithoutGroup { .. }
            | BuildError::ZeroWeights { .. }
            | BuildError::WeightsTooLarge { .. } => {
                if first.weights.is_some() || first.split.is_none() {
                    "weights"
                } else {
                    "split"
                }
            }
            _ => match self {
                RouteOrigin::Route(..) => "sni",
                RouteOrigin::Fallback(..) => "endpoints",
            },
        }
    }

    /// Where the value of a key set in the entry is.
    fn span_of(&self, key: &str) -> Option<Range<usize>> {
        let first = self.first();
        match (key, self) {
            ("sni", RouteOrigin::Route(_, r)) => Some(r.sni.span()),
            ("endpoints", _) => first.endpoints.map(Spanned::span),
            ("weights", _) => first.weights.map(Spanned::span),
            ("split", _) => first.split.map(Spanned::span),
            _ => None,
        }
    }

    /// Where to point when `key` is missing: the route's `sni`, or the fallback's table.
    fn anchor(&self, text: &str, key: &str) -> Range<usize> {
        match self {
            RouteOrigin::Route(_, r) => r.sni.span(),
            RouteOrigin::Fallback(name, _) => find_key(text, name, key),
        }
    }
}

impl RouteConfig {
    fn first_group(&self) -> FirstGroup<'_> {
        FirstGroup {
            endpoints: self.endpoints.as_ref(),
            weights: self.weights.as_ref(),
            split: self.split.as_ref(),
        }
    }
}

impl FallbackConfig {
    fn first_group(&self) -> FirstGroup<'_> {
        FirstGroup {
            endpoints: self.endpoints.as_ref(),
            weights: self.weights.as_ref(),
            split: self.split.as_ref(),
        }
    }
}

/// The first group of a route or fallback, as written.
struct FirstGroup<'a> {
    endpoints: Option<&'a Spanned<Vec<SocketAddr>>>,
    weights: Option<&'a Spanned<Vec<u32>>>,
    split: Option<&'a Spanned<Vec<SplitPart>>>,
}

impl FirstGroup<'_> {
    /// The group's endpoints and their weights (empty: unweighted). Lengths and zero weights of the
    /// `endpoints` form are left to the route builder, which checks every source of routes alike.
    fn compile(&self) -> Result<(Vec<SocketAddr>, Vec<u32>), Shape> {
        match (self.endpoints, self.split) {
            (Some(_), Some(split)) => Err(Shape::new(
                "split",
                Some(split.span()),
                "give `endpoints` or `split`, not both (a split lists its endpoints in its parts)",
            )),
            (None, None) => Err(Shape::new(
                "endpoints",
                None,
                "missing: give `endpoints = [...]` or `split = [{ weight = N, endpoints = [...] }, ...]`",
            )),
            (Some(endpoints), None) => Ok((
                endpoints.get_ref().clone(),
                self.weights.map(|w| w.get_ref().clone()).unwrap_or_default(),
            )),
            (None, Some(split)) => {
                if let Some(w) = self.weights {
                    return Err(Shape::new(
                        "weights",
                        Some(w.span()),
                        "`weights` go with `endpoints`; in a split each part has its own `weight`",
                    ));
                }
                compile_split(split)
            }
        }
    }
}

/// A split's endpoints, part after part, and weights that give each part its share.
fn compile_split(split: &Spanned<Vec<SplitPart>>) -> Result<(Vec<SocketAddr>, Vec<u32>), Shape> {
    let parts = split.get_ref();
    let whole = |message: &str| Shape::new("split", Some(split.span()), message);
    if parts.is_empty() {
        return Err(whole("a split needs at least one part"));
    }
    if let Some((j, part)) = parts
        .iter()
        .enumerate()
        .find(|(_, p)| p.endpoints.get_ref().is_empty())
    {
        return Err(Shape::new(
            format!("split[{j}].endpoints"),
            Some(part.endpoints.span()),
            "a part of a split needs at least one endpoint",
        ));
    }
    if parts.iter().all(|p| p.weight == 0) {
        return Err(whole(
            "every part weighs 0: at least one part must take new connections (0 marks a standby)",
        ));
    }
    let weights = split_weights(parts).ok_or_else(|| {
        whole(&format!(
            "the parts' weights and sizes need endpoint weights adding up to more than {}; use smaller \
             weights or parts of more even sizes",
            u32::MAX
        ))
    })?;
    let endpoints = parts
        .iter()
        .flat_map(|p| p.endpoints.get_ref().iter().copied())
        .collect();
    Ok((endpoints, weights))
}

/// Per-endpoint weights for the parts of a split, exactly: with `L` the least common multiple of the
/// parts' sizes, an endpoint of a part of weight `w` and size `n` weighs `w·L/n`, so each part's
/// endpoints add up to `w·L`, the part's share, in equal pieces. All are then divided by their greatest
/// common divisor, which keeps the proportions and makes the round-robin cycle (the weights' sum) as
/// short as the split allows: 90 on two endpoints and 10 on one become 9, 9, 2 (a cycle of 20, not 200).
/// `None` when the sum would not fit a `u32` (the route builder's limit). Parts must be non-empty.
fn split_weights(parts: &[SplitPart]) -> Option<Vec<u32>> {
    let lcm = parts.iter().try_fold(1u128, |l, p| {
        let n = p.endpoints.get_ref().len() as u128;
        (l / gcd(l, n)).checked_mul(n)
    })?;
    let mut raw = Vec::new();
    for p in parts {
        let n = p.endpoints.get_ref().len() as u128;
        let w = u128::from(p.weight).checked_mul(lcm / n)?;
        raw.extend(std::iter::repeat_n(w, p.endpoints.get_ref().len()));
    }
    let g = raw.iter().fold(0, |g, &w| gcd(g, w)).max(1);
    let mut sum = 0u32;
    raw.into_iter()
        .map(|w| {
            let w = u32::try_from(w / g).ok()?;
            sum = sum.checked_add(w)?;
            Some(w)
        })
        .collect()
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// A spec whose groups are the first group as written, then the failover groups (unweighted: the
/// builder reads a missing entry of `weights` as no weights).
fn spec_of(
    pattern: String,
    first: FirstGroup<'_>,
    failover: &[Vec<SocketAddr>],
) -> Result<RouteSpec, Shape> {
    let (endpoints, weights) = first.compile()?;
    let mut spec = RouteSpec::new(pattern, endpoints);
    spec.groups.extend(failover.iter().cloned());
    if !weights.is_empty() {
        spec.weights = vec![weights];
    }
    Ok(spec)
}

fn route_spec(r: &RouteConfig) -> Result<RouteSpec, Shape> {
    let mut spec = spec_of(r.sni.get_ref().clone(), r.first_group(), &r.failover)?;
    spec.lb = r.lb.into();
    spec.connect_timeout = r.connect_timeout_ms.map(Duration::from_millis);
    Ok(spec)
}

fn fallback_spec(f: &FallbackConfig) -> Result<RouteSpec, Shape> {
    let mut spec = spec_of(String::new(), f.first_group(), &f.failover)?;
    spec.lb = f.lb.into();
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::split_weights;
    use crate::test_support::{parse, GOOD};
    use crate::RelayMode;
    use crate::SplitPart;
    use crate::DEFAULT_HELLO_TIMEOUT_MS;
    use meshgate_route::LbPolicy;
    use std::time::Duration;

    #[test]
    fn parses_the_documented_example_with_defaults() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(c.gateway.hello_timeout_ms, DEFAULT_HELLO_TIMEOUT_MS);
        assert_eq!(c.gateway.relay, RelayMode::Splice);
        let t = c.route_table().expect("table");
        assert_eq!(t.len(), 2);
        let m = t.lookup("web.default.dc2.internal.11111111-2222-3333-4444-555555555555.consul");
        let (route, _) = m.route().expect("wildcard route");
        assert_eq!(route.groups.len(), 2);
        assert_eq!(route.lb, LbPolicy::LeastConnections);
        assert_eq!(route.connect_timeout, Some(Duration::from_millis(250)));
    }

    #[test]
    fn bad_sni_and_duplicates_are_located() {
        let text = GOOD.replace("*.dc2.", "a.*.dc2.");
        let e = parse(&text).expect_err("bad sni");
        assert_eq!((e.line, e.field.as_str()), (13, "routes[1].sni"), "{e}");

        let text = format!(
            "{GOOD}\n[[routes]]\nsni = \"API.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul\"\nendpoints = [\"127.0.0.1:1\"]\n"
        );
        let e = parse(&text).expect_err("duplicate");
        assert_eq!(e.field, "routes[2].sni", "{e}");
        assert!(e.message.contains("twice"), "{e}");

        let text = GOOD.replace(
            "endpoints = [\"127.0.0.1:9443\"]\nfailover = [[\"127.0.0.1:9444\"]]",
            "endpoints = []",
        );
        let e = parse(&text).expect_err("no endpoints");
        assert_eq!(e.field, "routes[1].endpoints", "{e}");
    }

    /// GOOD's first route (`api...`, two endpoints) with its endpoints line replaced by `first`.
    fn first_route(first: &str) -> String {
        GOOD.replace(
            "endpoints = [\"127.0.0.1:9001\", \"127.0.0.1:9002\"]",
            first,
        )
    }

    const API: &str = "api.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul";

    fn addrs(ports: &[u16]) -> Vec<std::net::SocketAddr> {
        ports
            .iter()
            .map(|&p| std::net::SocketAddr::from(([127, 0, 0, 1], p)))
            .collect()
    }

    #[test]
    fn weights_go_with_endpoints_in_order() {
        let text = first_route(
            "endpoints = [\"127.0.0.1:9001\", \"127.0.0.1:9002\", \"127.0.0.1:9003\"]\nweights = [45, 45, 10]\nfailover = [[\"127.0.0.1:9004\"]]",
        );
        let t = parse(&text).expect("valid").route_table().expect("table");
        let (r, _) = t.lookup(API).route().expect("route");
        assert_eq!(r.groups[0].endpoints, addrs(&[9001, 9002, 9003]));
        assert_eq!(r.groups[0].weights, vec![45, 45, 10]);
        assert_eq!(r.groups[1].endpoints, addrs(&[9004]));
        assert!(r.groups[1].weights.is_empty(), "failover is not weighted");
        // Without weights, nothing is weighted.
        let t = parse(GOOD).expect("valid").route_table().expect("table");
        assert!(t
            .routes()
            .iter()
            .flat_map(|r| &r.groups)
            .all(|g| g.weights.is_empty()));
    }

    #[test]
    fn a_split_is_one_group_whose_parts_get_their_shares() {
        let text = first_route(
            "split = [\n  { weight = 90, endpoints = [\"127.0.0.1:9001\", \"127.0.0.1:9002\"] },\n  { weight = 10, endpoints = [\"127.0.0.1:9003\"] },\n]\nfailover = [[\"127.0.0.1:9004\"]]",
        );
        let t = parse(&text).expect("valid").route_table().expect("table");
        let (r, _) = t.lookup(API).route().expect("route");
        assert_eq!(r.groups.len(), 2);
        assert_eq!(r.groups[0].endpoints, addrs(&[9001, 9002, 9003]));
        // 45% + 45% and 10%, in the smallest integers: a round-robin cycle of 20 connections.
        assert_eq!(r.groups[0].weights, vec![9, 9, 2]);
        assert_eq!(r.groups[1].endpoints, addrs(&[9004]));

        // Parts of sizes 2 and 3 at equal weight: 1/4 each for the first part's endpoints, 1/6 for
        // the second's (lcm 6: 3, 3 and 2, 2, 2); a standby part weighs 0.
        let text = first_route(
            "split = [\n  { weight = 1, endpoints = [\"127.0.0.1:1\", \"127.0.0.1:2\"] },\n  { weight = 1, endpoints = [\"127.0.0.1:3\", \"127.0.0.1:4\", \"127.0.0.1:5\"] },\n  { weight = 0, endpoints = [\"127.0.0.1:6\"] },\n]",
        );
        let t = parse(&text).expect("valid").route_table().expect("table");
        let (r, _) = t.lookup(API).route().expect("route");
        assert_eq!(r.groups[0].weights, vec![3, 3, 2, 2, 2, 0]);
    }

    #[test]
    fn split_weights_are_exact_or_refused() {
        let part = |weight: u32, n: u16| SplitPart {
            weight,
            endpoints: toml::Spanned::new(0..0, addrs(&(1..=n).collect::<Vec<_>>())),
        };
        let share = |w: &[u32], from: usize, to: usize| {
            let total: u64 = w.iter().map(|&x| u64::from(x)).sum();
            (
                w[from..to].iter().map(|&x| u64::from(x)).sum::<u64>(),
                total,
            )
        };
        // 7 on 3 endpoints, 5 on 4, 1 on 1: shares 7/13, 5/13, 1/13, equal inside each part.
        let w = split_weights(&[part(7, 3), part(5, 4), part(1, 1)]).expect("fits");
        let (a, total) = share(&w, 0, 3);
        let (b, _) = share(&w, 3, 7);
        let (c, _) = share(&w, 7, 8);
        assert_eq!(
            (a * 13, b * 13, c * 13),
            (7 * total, 5 * total, total),
            "{w:?}"
        );
        assert!(w[..3].iter().all(|&x| x == w[0]) && w[3..7].iter().all(|&x| x == w[3]));
        // Too fine for a u32 cycle.
        assert_eq!(split_weights(&[part(u32::MAX, 1), part(1, 1)]), None);
        assert_eq!(split_weights(&[part(u32::MAX / 2, 1), part(1, 3)]), None);
        // Large but reducible weights are fine.
        assert_eq!(
            split_weights(&[part(u32::MAX, 1), part(u32::MAX, 1)]),
            Some(vec![1, 1])
        );
    }

    #[test]
    fn weights_and_splits_written_wrong_are_located() {
        let cases: &[(&str, usize, &str, &str)] = &[
            ("endpoints = [\"127.0.0.1:9001\", \"127.0.0.1:9002\"]\nweights = [1, 2, 3]", 11, "routes[0].weights", "3 weights for 2 endpoints"),
            ("endpoints = [\"127.0.0.1:9001\", \"127.0.0.1:9002\"]\nweights = [0, 0]", 11, "routes[0].weights", "every weight"),
            ("endpoints = [\"127.0.0.1:9001\"]\nweights = [-1]", 11, "routes.weights", "expected u32"),
            ("endpoints = [\"127.0.0.1:9001\"]\nweights = [0.5]", 11, "routes.weights", "expected u32"),
            ("endpoints = [\"127.0.0.1:9001\"]\nsplit = [{ weight = 1, endpoints = [\"127.0.0.1:9002\"] }]", 11, "routes[0].split", "not both"),
            ("weights = [1]\nsplit = [{ weight = 1, endpoints = [\"127.0.0.1:9002\"] }]", 10, "routes[0].weights", "own `weight`"),
            ("lb = \"round_robin\"", 9, "routes[0].endpoints", "`split = ["),
            ("split = []", 10, "routes[0].split", "at least one part"),
            ("split = [\n  { weight = 1, endpoints = [\"127.0.0.1:9001\"] },\n  { weight = 1, endpoints = [] },\n]", 12, "routes[0].split[1].endpoints", "at least one endpoint"),
            ("split = [{ weight = 0, endpoints = [\"127.0.0.1:9001\"] }]", 10, "routes[0].split", "every part weighs 0"),
            ("split = [\n  { weight = 1, endpoints = [\"127.0.0.1:9001\"] },\n  { weight = -10, endpoints = [\"127.0.0.1:9002\"] },\n]", 12, "routes.split.weight", "expected u32"),
            ("split = [{ weight = 1.5, endpoints = [\"127.0.0.1:9001\"] }]", 10, "routes.split.weight", "expected u32"),
            ("split = [{ endpoints = [\"127.0.0.1:9001\"] }]", 10, "routes.split", "missing field `weight`"),
            ("split = [{ weight = 4294967295, endpoints = [\"127.0.0.1:9001\"] }, { weight = 1, endpoints = [\"127.0.0.1:9002\"] }]", 10, "routes[0].split", "more than 4294967295"),
        ];
        for &(first, line, field, message) in cases {
            let e = parse(&first_route(first)).expect_err(first);
            assert_eq!((e.line, e.field.as_str()), (line, field), "{e}");
            assert!(e.message.contains(message), "{e}");
        }
    }

    #[test]
    fn fallbacks_take_both_forms() {
        let text = format!(
            "{GOOD}\n[default]\nendpoints = [\"127.0.0.1:7000\", \"127.0.0.1:7001\"]\nweights = [3, 1]\n[no_sni]\nsplit = [{{ weight = 1, endpoints = [\"127.0.0.1:7002\"] }}, {{ weight = 3, endpoints = [\"127.0.0.1:7003\"] }}]\n"
        );
        let t = parse(&text).expect("valid").route_table().expect("table");
        let (d, _) = t.lookup("x.example").route().expect("default");
        assert_eq!(d.groups[0].weights, vec![3, 1]);
        let (n, _) = t.no_sni().route().expect("no sni");
        assert_eq!(n.groups[0].endpoints, addrs(&[7002, 7003]));
        assert_eq!(n.groups[0].weights, vec![1, 3]);

        let e = parse(&format!("{GOOD}\n[no_sni]\nlb = \"round_robin\"\n")).expect_err("none");
        assert_eq!((e.line, e.field.as_str()), (19, "no_sni.endpoints"), "{e}");
        let e = parse(&format!(
            "{GOOD}\n[default]\nendpoints = [\"127.0.0.1:7000\"]\nweights = [1, 1]\n"
        ))
        .expect_err("mismatch");
        assert_eq!((e.line, e.field.as_str()), (21, "default.weights"), "{e}");
    }

    #[test]
    fn the_example_config_is_valid() {
        // configs/gateway.example.toml documents every key, the weighted forms included.
        let text = include_str!("../../../configs/gateway.example.toml");
        let t = parse(text).expect("valid").route_table().expect("table");
        assert!(t
            .routes()
            .iter()
            .any(|r| r.groups.first().is_some_and(|g| !g.weights.is_empty())));
    }

    #[test]
    fn fallbacks() {
        let text = format!("{GOOD}\n[default]\nendpoints = [\"127.0.0.1:7000\"]\n[no_sni]\nendpoints = [\"127.0.0.1:7001\"]\n");
        let t = parse(&text).expect("valid").route_table().expect("table");
        assert!(t.lookup("x.example").route().is_some());
        assert!(t.no_sni().route().is_some());
    }
}
