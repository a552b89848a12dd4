//! meshgate's control planes, as a library beside the data planes. The binary parses the command line
//! and calls [`gateway::run`] or [`sidecar::run`]; everything they do between the file and the data
//! plane lives here, with unit tests that drive it without processes or real time:
//!
//! - [`gateway`]: plugin refresh, route-table compilation (static routes win), publication to the engine,
//!   reloads, the drain;
//! - [`sidecar`]: the same for a sidecar's plan, plus certificate watching;
//! - [`plugins`]: loading and polling the catalog and router plugins, their metrics;
//! - [`dirwatch`]: inotify on a polled catalog's directories, so an edit is polled at once, with the
//!   files it names (a hint the catalog plugin may use instead of listing everything);
//! - [`delta`]: catalog deltas on the host's side (apply, fold, diff) for an incremental router;
//! - [`consul`]: the live Consul agent: watches run for a watch-catalog plugin, the gateway's own
//!   registration (ACL preflight, re-registration, maintenance → drain → deregister), their metrics;
//! - [`hook`]: the Wasm connection hook adapted to the engine;
//! - [`signals`]: the one signal path (SIGHUP → reload, SIGTERM/SIGINT → drain);
//! - [`clock`]: the injected clock and the poll schedule;
//! - [`inspect`]: `meshgate check`;
//! - [`error`]: the one error type, whose variant says whose fault it was and gives the exit code.
//!
//! Nothing here touches a data-plane core except through the engine's and the sidecar's install calls.

pub mod clock;
pub mod consul;
pub mod delta;
pub mod dirwatch;
pub mod error;
pub mod gateway;
pub mod hook;
pub mod inspect;
pub mod plugins;
pub mod sidecar;
pub mod signals;

pub use error::ControlError;

#[cfg(test)]
mod testdir;
