//! The mesh model, following HashiCorp Consul so that Consul users can read meshgate's inputs without a
//! manual: SNI names ([`names`]), registrations and config entries ([`model`]) in HCL, JSON, YAML or TOML
//! ([`formats`], [`hcl`]), gateway-mode precedence, and the compilation of a catalog into a gateway's routes
//! or a sidecar's upstream plan ([`catalog`], with a resolver's redirect and failover targets from
//! [`resolver`]), and keeping a gateway's routes current through catalog deltas ([`incremental`]).
//!
//! Pure: no IO, no clock. Used natively by the gateway and inside Wasm plugins.
#![forbid(unsafe_code)]

pub mod catalog;
pub mod dc_failover;
pub mod filter;
pub mod formats;
pub mod hcl;
pub mod incremental;
pub mod model;
pub mod names;
pub mod resolver;
pub mod sidecar;

pub use catalog::{
    resolve_mode, Catalog, Instance, ModeSource, RouteDef, Target, TargetId, UpstreamPlan,
};
pub use dc_failover::DatacenterFailover;
pub use formats::Format;
pub use model::{ConfigEntry, Document, EntryKind, GatewayMode, Service, ServiceKind, Upstream};
pub use names::SniName;

use std::fmt;
use std::path::{Path, PathBuf};

/// A file that could not be read as a registration or config entry, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line (0: unknown).
    pub line: usize,
    /// 1-based column (0: unknown).
    pub column: usize,
    /// The field path, when the problem is a field's value.
    pub field: Option<String>,
    /// What is wrong or what was expected.
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for LoadError {}

/// Reads one registration or config-entry file (format by extension, else by content). A file with any
/// error is refused whole: never half-read.
pub fn load_document(text: &str, file: &Path) -> Result<Document, LoadError> {
    let format = Format::detect(file, text);
    let value = formats::parse(text, format).map_err(|e| LoadError {
        file: file.to_owned(),
        line: e.line,
        column: e.column,
        field: None,
        message: e.message,
    })?;
    model::decode(&value).map_err(|e| {
        let (line, column) = locate_field(text, &e.path, e.value.as_deref());
        LoadError {
            file: file.to_owned(),
            line,
            column,
            field: (!e.path.is_empty()).then(|| e.path.clone()),
            message: e.message,
        }
    })
}

/// Best-effort line of a field: the first line that names the field's last key (any casing) and, when
/// known, holds the offending value.
fn locate_field(text: &str, path: &str, value: Option<&str>) -> (usize, usize) {
    let key = path
        .rsplit('.')
        .next()
        .unwrap_or(path)
        .split('[')
        .next()
        .unwrap_or("");
    let norm = model::norm;
    let want = norm(key);
    if want.is_empty() {
        return (1, 1);
    }
    for (i, line) in text.lines().enumerate() {
        let l = norm(line);
        if l.contains(&want) && value.is_none_or(|v| line.contains(v)) {
            let col = line.len() - line.trim_start().len() + 1;
            return (i + 1, col);
        }
    }
    (0, 0)
}
