//! Reading a value tree as Consul does: keys in any casing and with `_` or `-`, a one-object list standing
//! for the object, and every error carrying the dotted path of the offending field.

use super::GatewayMode;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;

/// A decoding error, with the path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Dotted path, e.g. `service.proxy.upstreams[0].mesh_gateway.mode`.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// The offending value as written (used to find its line), if scalar.
    pub value: Option<String>,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A key in canonical form: case and `_`/`-` ignored, as Consul's decoder does.
pub(crate) fn norm(k: &str) -> String {
    k.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// A view of an object that finds keys in any casing and tracks its path for errors.
#[derive(Clone, Copy)]
pub(super) struct Obj<'a> {
    pub(super) map: &'a Map<String, Value>,
    pub(super) path: &'a str,
}

pub(super) type R<T> = Result<T, DecodeError>;

pub(super) fn fail<T>(path: &str, message: impl Into<String>, value: Option<&Value>) -> R<T> {
    Err(DecodeError {
        path: path.to_owned(),
        message: message.into(),
        value: value.and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }),
    })
}

pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// A list holding one object stands for the object.
pub(super) fn as_object(v: &Value) -> Option<&Map<String, Value>> {
    match v {
        Value::Object(m) => Some(m),
        Value::Array(a) if a.len() == 1 => a[0].as_object(),
        _ => None,
    }
}

impl<'a> Obj<'a> {
    pub(super) fn get(&self, key: &str) -> Option<(&'a str, &'a Value)> {
        let want = norm(key);
        self.map
            .iter()
            .find(|(k, _)| norm(k) == want)
            .map(|(k, v)| (k.as_str(), v))
    }

    pub(super) fn string(&self, key: &str) -> R<Option<String>> {
        match self.get(key) {
            None | Some((_, Value::Null)) => Ok(None),
            Some((_, Value::String(s))) => Ok(Some(s.clone())),
            Some((_, v @ (Value::Number(_) | Value::Bool(_)))) => Ok(Some(v.to_string())),
            Some((k, v)) => fail(&join(self.path, k), "expected a string", Some(v)),
        }
    }

    pub(super) fn port(&self, key: &str) -> R<Option<u16>> {
        match self.get(key) {
            None | Some((_, Value::Null)) => Ok(None),
            Some((k, v)) => {
                let n = match v {
                    Value::Number(n) => n.as_u64(),
                    Value::String(s) => s.parse().ok(),
                    _ => None,
                };
                match n.and_then(|n| u16::try_from(n).ok()) {
                    Some(p) => Ok(Some(p)),
                    None => fail(
                        &join(self.path, k),
                        "expected a port number (0-65535)",
                        Some(v),
                    ),
                }
            }
        }
    }

    pub(super) fn boolean(&self, key: &str) -> R<bool> {
        match self.get(key) {
            None | Some((_, Value::Null)) => Ok(false),
            Some((_, Value::Bool(b))) => Ok(*b),
            Some((_, Value::String(s))) if s == "true" || s == "false" => Ok(s == "true"),
            Some((k, v)) => fail(&join(self.path, k), "expected true or false", Some(v)),
        }
    }

    /// A nested object; `f` gets a view with the nested path.
    pub(super) fn object<T>(&self, key: &str, f: impl FnOnce(Obj<'_>) -> R<T>) -> R<Option<T>> {
        match self.get(key) {
            None | Some((_, Value::Null)) => Ok(None),
            Some((k, v)) => match as_object(v) {
                Some(map) => {
                    let path = join(self.path, k);
                    f(Obj { map, path: &path }).map(Some)
                }
                None => fail(&join(self.path, k), "expected a block (an object)", Some(v)),
            },
        }
    }

    /// A list of objects (a single object counts as a list of one).
    pub(super) fn objects<T>(&self, key: &str, mut f: impl FnMut(Obj<'_>) -> R<T>) -> R<Vec<T>> {
        let Some((k, v)) = self.get(key) else {
            return Ok(Vec::new());
        };
        let items: Vec<&Value> = match v {
            Value::Array(a) => a.iter().collect(),
            Value::Object(_) => vec![v],
            Value::Null => Vec::new(),
            other => {
                return fail(
                    &join(self.path, k),
                    "expected a list of blocks",
                    Some(other),
                )
            }
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let path = format!("{}[{i}]", join(self.path, k));
            match item.as_object() {
                Some(map) => out.push(f(Obj { map, path: &path })?),
                None => return fail(&path, "expected a block (an object)", Some(item)),
            }
        }
        Ok(out)
    }

    pub(super) fn strings(&self, key: &str) -> R<Vec<String>> {
        match self.get(key) {
            None | Some((_, Value::Null)) => Ok(Vec::new()),
            Some((k, Value::Array(a))) => a
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => fail(
                        &join(self.path, k),
                        "expected a list of strings",
                        Some(other),
                    ),
                })
                .collect(),
            Some((k, v)) => fail(&join(self.path, k), "expected a list of strings", Some(v)),
        }
    }

    pub(super) fn string_map(&self, key: &str) -> R<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        if let Some((k, v)) = self.get(key) {
            let Some(map) = as_object(v) else {
                return fail(&join(self.path, k), "expected a map of strings", Some(v));
            };
            for (mk, mv) in map {
                match mv {
                    Value::String(s) => {
                        out.insert(mk.clone(), s.clone());
                    }
                    other => {
                        return fail(
                            &join(&join(self.path, k), mk),
                            "expected a string",
                            Some(other),
                        )
                    }
                }
            }
        }
        Ok(out)
    }

    pub(super) fn mode(&self, key: &str) -> R<Option<GatewayMode>> {
        self.object(key, |o| match o.get("mode") {
            None => Ok(None),
            Some((k, v @ Value::String(s))) => {
                GatewayMode::parse(s).or_else(|m| fail(&join(o.path, k), m, Some(v)))
            }
            Some((k, v)) => fail(&join(o.path, k), "expected a string", Some(v)),
        })
        .map(Option::flatten)
    }
}
