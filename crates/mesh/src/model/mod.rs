//! The mesh model — service registrations (typical, `connect-proxy`, `mesh-gateway`, and the inline
//! `connect { sidecar_service { .. } }` form) and config entries (`proxy-defaults`, `service-defaults`) —
//! and its decoding from a value tree in any casing Consul accepts.
//!
//! Keys match regardless of case and of `_`/`-` (`DestinationName`, `destination_name` and
//! `destination-name` are one key), and a list holding one object stands for that object (HCL1 blocks
//! and Consul's YAML rendering both produce such lists). Unknown keys are ignored in registrations and kept
//! in config entries.
//!
//! Parts: `service` (registrations), `entry` (config entries), `keys` (the case-insensitive view of a
//! value tree, and decoding errors), `decode` (a file's value tree into a [`Document`]). This module holds
//! what they share: the gateway mode and what one file holds.

mod decode;
mod entry;
mod keys;
mod service;

pub use decode::decode;
pub use entry::{
    ConfigEntry, EntryKind, Failover, IntentionAction, IntentionSource, Redirect, Subset,
};
pub(crate) use keys::norm;
pub use keys::DecodeError;
pub use service::{Check, Health, HostPort, Proxy, Service, ServiceKind, Upstream};

use serde::Serialize;
use std::fmt;

/// How a sidecar's upstream connection leaves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GatewayMode {
    /// Straight to the destination's instances.
    None,
    /// Through a mesh gateway in the sidecar's own datacenter.
    Local,
    /// Through a mesh gateway in the destination's datacenter.
    Remote,
}

impl GatewayMode {
    /// Parses Consul's values; `""` and `default` mean "not set here".
    pub fn parse(s: &str) -> Result<Option<GatewayMode>, String> {
        match s.to_ascii_lowercase().as_str() {
            "" | "default" => Ok(None),
            "none" => Ok(Some(GatewayMode::None)),
            "local" => Ok(Some(GatewayMode::Local)),
            "remote" => Ok(Some(GatewayMode::Remote)),
            other => Err(format!(
                "unknown mesh gateway mode `{other}` (expected none, local, remote or default)"
            )),
        }
    }
}

impl fmt::Display for GatewayMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GatewayMode::None => "none",
            GatewayMode::Local => "local",
            GatewayMode::Remote => "remote",
        })
    }
}

/// What one file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Document {
    /// Service registrations, with the datacenter (and node address) given in the file, if any.
    Services {
        /// The registrations.
        services: Vec<Service>,
        /// `datacenter` at the top of the file.
        datacenter: Option<String>,
        /// `node_address` / `address` at the top of a catalog-style file.
        node_address: Option<String>,
    },
    /// A config entry.
    ConfigEntry(ConfigEntry),
}
