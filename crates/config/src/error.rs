//! Configuration errors and where they are: the typed errors callers see, and the helpers that turn a
//! byte span of the file into `file:line:column: field: message`.

use std::ops::Range;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A configuration problem, located in its file.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{}:{line}:{column}: {field}: {message}", file.display())]
pub struct ConfigError {
    /// The file read.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Dotted path of the field (`gateway.workers`, `routes[2].sni`), or `-` when unknown.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Reading or validating a configuration failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file could not be read.
    #[error("{}: {source}", file.display())]
    Io {
        /// The file.
        file: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file is not a valid configuration.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

/// The static routes could not be compiled ([`crate::Config::route_table`]); a configuration read by
/// [`crate::Config::parse`] has been checked for both, with the error located in its file.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RoutesError {
    /// The route table refused a route (bad pattern, duplicate, no endpoints, bad weights).
    #[error(transparent)]
    Build(#[from] meshgate_route::BuildError),
    /// A route's first group is not in one of its two forms (`endpoints`, or `split`).
    #[error("{field}: {message}")]
    Shape {
        /// Dotted path of the field (`routes[2].split`).
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// Builds an error at a byte span; without a known field, the field is read off the file: the key on
/// that line, under the nearest `[table]` header above it.
pub(crate) fn locate(
    text: &str,
    file: &Path,
    span: Range<usize>,
    field: Option<&str>,
    message: String,
) -> ConfigError {
    let start = span.start.min(text.len());
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    let field = match field {
        Some(f) => f.to_owned(),
        None => field_at(text, line_start, start),
    };
    ConfigError {
        file: file.to_owned(),
        line,
        column,
        field,
        message,
    }
}

/// `table.key` for the value at byte `at` of the line starting at `line_start`: the keys that lead
/// to it through arrays and inline tables (`routes.split.weight`), a key at `at` itself (an unknown
/// field) included; otherwise the key on that line, under the nearest `[table]` header above it.
pub(crate) fn field_at(text: &str, line_start: usize, at: usize) -> String {
    let line = text[line_start..].lines().next().unwrap_or("");
    let header = line.trim_start().starts_with('[');
    let mut body = 0;
    let mut offset = 0;
    for l in text[..line_start].split_inclusive('\n') {
        offset += l.len();
        if l.trim_start().starts_with('[') {
            body = offset;
        }
    }
    let path = if header || at < body || at > text.len() {
        Vec::new()
    } else {
        value_keys(&text[body..at], &text[at..])
    };
    let key = if path.is_empty() {
        line.split_once('=')
            .map(|(k, _)| k.trim().trim_matches('"').to_owned())
            .filter(|k| !k.is_empty() && !k.starts_with('['))
    } else {
        Some(path.join("."))
    };
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    match (table, key) {
        (Some(t), Some(k)) => format!("{t}.{k}"),
        (None, Some(k)) => k,
        (Some(t), None) => t,
        (None, None) => "-".to_owned(),
    }
}

/// The keys leading to the end of `body` (a table's text up to a value): those of the arrays and inline
/// tables still open there, then the key being assigned, then the key `rest` starts with, if any.
/// A light scan (strings and comments skipped), enough to name a field in an error.
fn value_keys(body: &str, rest: &str) -> Vec<String> {
    let mut open: Vec<Option<String>> = Vec::new();
    let mut key: Option<String> = None;
    let mut word = String::new();
    let mut word_ended = false;
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' => {
                word.clear();
                while let Some(d) = chars.next() {
                    match d {
                        _ if d == c => break,
                        '\\' if c == '"' => word.extend(chars.next()),
                        _ => word.push(d),
                    }
                }
                word_ended = true;
            }
            '#' => {
                chars.by_ref().find(|&d| d == '\n');
                if open.is_empty() {
                    key = None;
                }
            }
            '=' => key = Some(std::mem::take(&mut word)),
            '[' | '{' => {
                open.push(key.take());
                word.clear();
            }
            ']' | '}' => {
                open.pop();
                key = None;
                word.clear();
            }
            ',' => {
                key = None;
                word.clear();
            }
            '\n' if open.is_empty() => {
                key = None;
                word.clear();
            }
            c if c.is_alphanumeric() || matches!(c, '_' | '-' | '.') => {
                if word_ended {
                    word.clear();
                    word_ended = false;
                }
                word.push(c);
            }
            _ => word_ended = true,
        }
    }
    let mut keys: Vec<String> = open.into_iter().flatten().chain(key).collect();
    // An unknown field is reported at its key.
    let name: String = rest
        .chars()
        .take_while(|&c| c.is_alphanumeric() || matches!(c, '_' | '-'))
        .collect();
    if !name.is_empty() && rest[name.len()..].trim_start().starts_with('=') {
        keys.push(name);
    }
    keys.retain(|k| !k.is_empty());
    keys
}

/// Span of `key = ...` inside `[table]`, or of the table header, or the start of the file.
pub(crate) fn find_key(text: &str, table: &str, key: &str) -> Range<usize> {
    let mut offset = 0;
    let mut in_table = false;
    let mut header = None;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if t.starts_with('[') {
            in_table = t.trim_matches(|c| c == '[' || c == ']').trim() == table;
            if in_table {
                header = Some(offset..offset + line.len());
            }
        } else if in_table && t.split_once('=').map(|(k, _)| k.trim()) == Some(key) {
            let indent = line.len() - line.trim_start().len();
            return offset + indent..offset + line.len();
        }
        offset += line.len();
    }
    header.unwrap_or(0..0)
}

#[cfg(test)]
mod tests {
    use crate::test_support::{parse, GOOD};

    #[test]
    fn unknown_field_names_line_and_field() {
        let text = GOOD.replace("admin = ", "admn = ");
        let e = parse(&text).expect_err("unknown field");
        assert_eq!(e.line, 6, "{e}");
        assert_eq!(e.field, "gateway.admn", "{e}");
        assert!(e.message.contains("unknown field"), "{e}");
        assert!(e.to_string().starts_with("gw.toml:6:"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let text = GOOD.replace(
            "datacenter = \"dc1\"",
            "datacenter = \"dc1\"\nworkers = \"two\"",
        );
        let e = parse(&text).expect_err("bad type");
        assert_eq!((e.line, e.field.as_str()), (5, "gateway.workers"), "{e}");
    }

    #[test]
    fn bad_address_is_located() {
        let text = GOOD.replace("127.0.0.1:9443", "127.0.0.1:99999");
        let e = parse(&text).expect_err("bad addr");
        assert_eq!(e.line, 14, "{e}");
        assert_eq!(e.field, "routes.endpoints", "{e}");
    }
}
