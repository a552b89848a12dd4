//! meshgate's configuration file: the TOML schema, every default (a named constant with its unit), and
//! validation that fails at boot — or at reload, leaving the running table alone — with an error naming the
//! file, line, column and field.
//!
//! The data plane never sees this crate's types beyond [`GatewaySettings`]; routes are compiled into a
//! [`meshgate_route::RouteTable`] by [`Config::route_table`].
//!
//! Modules: `schema` (the types, one per table), `defaults` (every default), `load` (reading and
//! validating a whole file), `routes` (compiling the static routes), `error` (errors located at
//! file:line:column), and the sidecar's own file ([`sidecar`]).
#![forbid(unsafe_code)]

pub mod consul;
mod defaults;
mod error;
mod load;
mod routes;
mod schema;
pub mod sidecar;
#[cfg(test)]
mod test_support;

pub use consul::{ConsulSection, RegisterSection};
pub use defaults::{
    DEFAULT_ADMIN, DEFAULT_BACKLOG, DEFAULT_CATALOG_POLL_MS, DEFAULT_CONNECT_TIMEOUT_MS,
    DEFAULT_DATACENTER, DEFAULT_DRAIN_GRACE_MS, DEFAULT_DRAIN_TIMEOUT_SECS,
    DEFAULT_HELLO_TIMEOUT_MS, DEFAULT_IDLE_TIMEOUT_SECS, DEFAULT_IO_MEMORY_KIB,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_NAME, DEFAULT_PLUGIN_DEADLINE_MS, DEFAULT_PLUGIN_MEMORY_MIB,
    DEFAULT_PROBE_DOWN_AFTER, DEFAULT_PROBE_INTERVAL_MS, DEFAULT_PROBE_RECHECK_MS,
    DEFAULT_PROBE_TIMEOUT_MS, DEFAULT_PROBE_UP_AFTER, DEFAULT_ROUTER_PLUGIN, HOOK_MAX_DEADLINE_MS,
};
pub use error::{ConfigError, LoadError, RoutesError};
pub use schema::{
    Balance, Config, FallbackConfig, GatewaySettings, HookFailure, LbConfig, PluginSection,
    ProbeSettings, RelayMode, RouteConfig, SplitPart,
};
pub use sidecar::SidecarConfig;
