//! Subset filters of `service-resolver` config entries: the part of Consul's filter language that subsets
//! use — metadata equality and tag membership, joined by `and`:
//!
//! - `Service.Meta.version == "v1"`, `Service.Meta.version != "v1"`
//! - `"canary" in Service.Tags`, `"canary" not in Service.Tags`
//! - `Service.Tags contains "canary"`, `Service.Tags not contains "canary"`
//!
//! Anything else is refused when the entry is read (never silently matched). Values may be quoted or bare.
//! Filters are evaluated against the proxy registrations that carry traffic (a `sidecar_service` inherits
//! its parent's tags and meta, as in Consul).

use crate::model::Service;
use serde::Serialize;

/// One condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Clause {
    /// `Service.Meta.<key> == <value>`
    MetaEq(String, String),
    /// `Service.Meta.<key> != <value>`
    MetaNe(String, String),
    /// `<tag> in Service.Tags`
    HasTag(String),
    /// `<tag> not in Service.Tags`
    LacksTag(String),
}

/// A conjunction of clauses; empty matches every instance.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Filter {
    /// All must hold.
    pub clauses: Vec<Clause>,
}

fn value(s: &str) -> Option<String> {
    let s = s.trim();
    let v = s
        .strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .unwrap_or(s);
    (!v.is_empty() && !v.contains('"')).then(|| v.to_owned())
}

fn clause(text: &str) -> Result<Clause, String> {
    let t = text.trim();
    let unsupported = || {
        format!(
            "unsupported filter `{t}` (supported: Service.Meta.KEY == \"V\", Service.Meta.KEY != \"V\", \"TAG\" in Service.Tags, Service.Tags contains \"TAG\", and their negations, joined by `and`)"
        )
    };
    if let Some(rest) = t.strip_prefix("Service.Meta.") {
        for (op, negate) in [("==", false), ("!=", true)] {
            if let Some((key, v)) = rest.split_once(op) {
                let key = key.trim();
                let v = value(v).ok_or_else(unsupported)?;
                if key.is_empty() || key.contains(char::is_whitespace) {
                    return Err(unsupported());
                }
                return Ok(if negate {
                    Clause::MetaNe(key.to_owned(), v)
                } else {
                    Clause::MetaEq(key.to_owned(), v)
                });
            }
        }
        return Err(unsupported());
    }
    for (sep, negate) in [(" not in Service.Tags", true), (" in Service.Tags", false)] {
        if let Some(tag) = t.strip_suffix(sep) {
            let tag = value(tag).ok_or_else(unsupported)?;
            return Ok(if negate {
                Clause::LacksTag(tag)
            } else {
                Clause::HasTag(tag)
            });
        }
    }
    for (sep, negate) in [
        ("Service.Tags not contains ", true),
        ("Service.Tags contains ", false),
    ] {
        if let Some(tag) = t.strip_prefix(sep) {
            let tag = value(tag).ok_or_else(unsupported)?;
            return Ok(if negate {
                Clause::LacksTag(tag)
            } else {
                Clause::HasTag(tag)
            });
        }
    }
    Err(unsupported())
}

impl Filter {
    /// Parses a filter expression.
    pub fn parse(text: &str) -> Result<Filter, String> {
        if text.trim().is_empty() {
            return Ok(Filter::default());
        }
        let clauses = text
            .split(" and ")
            .map(clause)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Filter { clauses })
    }

    /// Whether an instance passes.
    pub fn matches(&self, s: &Service) -> bool {
        self.clauses.iter().all(|c| match c {
            Clause::MetaEq(k, v) => s.meta.get(k) == Some(v),
            Clause::MetaNe(k, v) => s.meta.get(k) != Some(v),
            Clause::HasTag(t) => s.tags.contains(t),
            Clause::LacksTag(t) => !s.tags.contains(t),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_supported_forms() {
        let f = Filter::parse("Service.Meta.version == \"v1\" and \"canary\" not in Service.Tags")
            .expect("valid");
        assert_eq!(
            f.clauses,
            vec![
                Clause::MetaEq("version".into(), "v1".into()),
                Clause::LacksTag("canary".into())
            ]
        );
        assert_eq!(
            Filter::parse("Service.Tags contains canary")
                .expect("valid")
                .clauses,
            vec![Clause::HasTag("canary".into())]
        );
        assert_eq!(
            Filter::parse("Service.Meta.zone != b")
                .expect("valid")
                .clauses,
            vec![Clause::MetaNe("zone".into(), "b".into())]
        );
        assert!(Filter::parse("").expect("empty").clauses.is_empty());
        for bad in [
            "Service.Meta.version > 1",
            "Node.Meta.x == y",
            "a or b",
            "Service.Meta. == \"x\"",
        ] {
            assert!(Filter::parse(bad).is_err(), "{bad}");
        }
    }
}
