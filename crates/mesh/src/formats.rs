//! Reading a file in any of the formats Consul users write — HCL (HCL1), JSON (API casing or snake_case),
//! YAML (including the list-of-one-map rendering of blocks) and TOML — into one JSON value tree, with
//! syntax errors located by line and column.

use serde_json::Value;
use std::fmt;
use std::path::Path;

/// File formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Consul's HCL (HCL1).
    Hcl,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
    /// TOML.
    Toml,
}

impl Format {
    /// From the file extension, else from the content (JSON starts with `{`, YAML with `key:`).
    pub fn detect(path: &Path, text: &str) -> Format {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("hcl") => return Format::Hcl,
            Some("json") => return Format::Json,
            Some("yaml" | "yml") => return Format::Yaml,
            Some("toml") => return Format::Toml,
            _ => {}
        }
        let first = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("//"))
            .unwrap_or("");
        if first.starts_with('{') {
            Format::Json
        } else if first.starts_with('[') {
            Format::Toml
        } else if first
            .split_once(':')
            .is_some_and(|(k, _)| !k.contains(['=', ' ', '"']))
        {
            Format::Yaml
        } else {
            Format::Hcl
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Hcl => "HCL",
            Format::Json => "JSON",
            Format::Yaml => "YAML",
            Format::Toml => "TOML",
        })
    }
}

/// A syntax error in some format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// The format that was being read.
    pub format: Format,
    /// 1-based line, 0 when the parser gave none.
    pub line: usize,
    /// 1-based column, 0 when unknown.
    pub column: usize,
    /// What went wrong (what was expected).
    pub message: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {} syntax: {}",
            self.line, self.column, self.format, self.message
        )
    }
}

/// Parses `text` as `format` into a value tree.
pub fn parse(text: &str, format: Format) -> Result<Value, SyntaxError> {
    // YAML also breaks lines at a lone CR, so its line can lie past what an editor shows: keep the
    // location inside the file (found by fuzzing).
    let last_line = text.matches('\n').count() + 1;
    let err = |line: usize, column: usize, message: String| SyntaxError {
        format,
        line: line.min(last_line),
        column: if line > last_line { 0 } else { column },
        message,
    };
    match format {
        Format::Hcl => crate::hcl::parse(text).map_err(|e| {
            err(
                e.line,
                e.column,
                format!("expected {}, found {}", e.expected, e.found),
            )
        }),
        Format::Json => serde_json::from_str(text)
            .map_err(|e| err(e.line(), e.column(), strip_location(&e.to_string()))),
        Format::Yaml => serde_norway::from_str::<Value>(text).map_err(|e| {
            let (l, c) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
            err(l, c, strip_location(&e.to_string()))
        }),
        Format::Toml => toml::from_str::<Value>(text).map_err(|e| {
            let (l, c) = e.span().map_or((0, 0), |s| line_col(text, s.start));
            err(l, c, e.message().trim().to_owned())
        }),
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn strip_location(msg: &str) -> String {
    // serde_json and serde_norway append " at line L column C"; we report the location separately.
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}
