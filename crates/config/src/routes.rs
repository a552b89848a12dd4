//! The compilation of a configuration's static `[[routes]]`, `[default]` and `[no_sni]` into a
//! [`RouteTable`], with refusals located at the offending entry of the file.

use crate::error::locate;
use crate::{Config, ConfigError, FallbackConfig, RouteConfig};
use meshgate_route::{BuildError, RouteSpec, RouteTable, RouteTableBuilder};
use std::path::Path;
use std::time::Duration;

impl Config {
    /// A builder holding the static routes and fallbacks, for callers that add routes of their own.
    pub fn route_builder(&self) -> Result<RouteTableBuilder, BuildError> {
        self.build_routes(|_, e| e)
    }

    /// Adds every static route and fallback to a new builder; `err` turns a refusal into the caller's
    /// error, told which entry of the file it came from.
    fn build_routes<E>(
        &self,
        err: impl Fn(RouteOrigin<'_>, BuildError) -> E,
    ) -> Result<RouteTableBuilder, E> {
        let mut b = RouteTableBuilder::new();
        for (i, r) in self.routes.iter().enumerate() {
            b.add(route_spec(r))
                .map_err(|e| err(RouteOrigin::Route(i, r), e))?;
        }
        if let Some(fb) = &self.default {
            b.default_route(fallback_spec(fb))
                .map_err(|e| err(RouteOrigin::Fallback("default", fb), e))?;
        }
        if let Some(fb) = &self.no_sni {
            b.no_sni_route(fallback_spec(fb))
                .map_err(|e| err(RouteOrigin::Fallback("no_sni", fb), e))?;
        }
        Ok(b)
    }

    /// Compiles the static routes into a route table.
    pub fn route_table(&self) -> Result<RouteTable, BuildError> {
        self.route_builder().map(RouteTableBuilder::build)
    }

    /// Like [`Config::route_table`], with errors located at the offending route.
    pub(crate) fn route_table_located(
        &self,
        text: &str,
        file: &Path,
    ) -> Result<RouteTable, ConfigError> {
        self.build_routes(|origin, e| {
            let (field, span) = match origin {
                RouteOrigin::Route(i, r) => match e {
                    BuildError::NoEndpoints(_) => {
                        (format!("routes[{i}].endpoints"), r.endpoints.span())
                    }
                    _ => (format!("routes[{i}].sni"), r.sni.span()),
                },
                RouteOrigin::Fallback(name, fb) => {
                    (format!("{name}.endpoints"), fb.endpoints.span())
                }
            };
            locate(text, file, span, Some(&field), e.to_string())
        })
        .map(RouteTableBuilder::build)
    }
}

/// Which entry of the file a route came from, for locating errors.
enum RouteOrigin<'a> {
    /// `[[routes]]` number `.0`.
    Route(usize, &'a RouteConfig),
    /// `[default]` or `[no_sni]`.
    Fallback(&'static str, &'a FallbackConfig),
}

fn route_spec(r: &RouteConfig) -> RouteSpec {
    let mut groups = vec![r.endpoints.get_ref().clone()];
    groups.extend(r.failover.iter().cloned());
    RouteSpec {
        pattern: r.sni.get_ref().clone(),
        groups,
        lb: r.lb.into(),
        connect_timeout: r.connect_timeout_ms.map(Duration::from_millis),
        source: "config".to_owned(),
    }
}

fn fallback_spec(f: &FallbackConfig) -> RouteSpec {
    let mut groups = vec![f.endpoints.get_ref().clone()];
    groups.extend(f.failover.iter().cloned());
    RouteSpec {
        pattern: String::new(),
        groups,
        lb: f.lb.into(),
        connect_timeout: None,
        source: "config".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::{parse, GOOD};
    use crate::RelayMode;
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

    #[test]
    fn fallbacks() {
        let text = format!("{GOOD}\n[default]\nendpoints = [\"127.0.0.1:7000\"]\n[no_sni]\nendpoints = [\"127.0.0.1:7001\"]\n");
        let t = parse(&text).expect("valid").route_table().expect("table");
        assert!(t.lookup("x.example").route().is_some());
        assert!(t.no_sni().route().is_some());
    }
}
