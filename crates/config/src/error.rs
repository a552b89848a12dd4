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
        None => field_at(text, line_start),
    };
    ConfigError {
        file: file.to_owned(),
        line,
        column,
        field,
        message,
    }
}

/// `table.key` for the line starting at `line_start`.
pub(crate) fn field_at(text: &str, line_start: usize) -> String {
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"'))
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    match (table, key) {
        (Some(t), Some(k)) => format!("{t}.{k}"),
        (None, Some(k)) => k.to_owned(),
        (Some(t), None) => t,
        (None, None) => "-".to_owned(),
    }
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
