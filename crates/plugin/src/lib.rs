//! The Wasm plugin host: loads catalog and router plugins (WebAssembly components built for the worlds in
//! `plugins/wit`), runs them in a sandbox, and hands their answers to the control plane.
//!
//! # Sandbox
//! - **No ambient capability.** A plugin imports only the `host` interface; no WASI is linked. Each host
//!   function checks the plugin's [`Grants`]: regular files only under granted directories (after
//!   resolving symlinks and `..`), HTTP only to granted origins as a GET the host writes from a checked
//!   URL, environment only for granted keys.
//! - **Deadline.** Every call runs under an epoch deadline (default 1 s); a plugin that loops forever is
//!   interrupted, and every host function it calls gets only what remains of that deadline.
//! - **Memory cap.** All of an instance's linear memories together may not grow beyond the cap
//!   (default 64 MiB).
//! - **Failure is contained.** A trap, a deadline or a memory-cap hit fails that one call with a typed
//!   [`PluginError`]; the instance is dropped and a fresh one is made on the next call. The caller keeps
//!   serving its last good table.
//!
//! Plugins run on the control thread only, never on a data-plane core.
//!
//! Parts: `host` (the engine, its epoch ticker, the shipped plugins, loading), `sandbox` (limits and the
//! discipline of one call), `grants` (the host functions and what they let a plugin reach), `plugins`
//! (a typed handle per world), `bindings` (the generated world bindings), `error` ([`PluginError`]).

mod bindings;
mod error;
mod grants;
mod host;
mod plugins;
mod sandbox;

pub use bindings::{
    catalog_world, hook_world, incremental_router_world, router_world, watch_world,
};
pub use error::PluginError;
pub use grants::{
    Grants, State, HTTP_TIMEOUT, LOG_BURST, LOG_PER_SECOND, LOG_TARGET, MAX_READ, MAX_URL,
};
pub use host::{PluginHost, PluginKind, SHIPPED, TESTBED, TESTBED_HOOK};
pub use plugins::{CatalogPlugin, HookPlugin, RouterPlugin, WatchCatalogPlugin};
pub use sandbox::{deadline_ticks, Sandbox, DEFAULT_DEADLINE, DEFAULT_MEMORY_CAP, EPOCH_TICK};

pub use catalog_world::meshgate::plugin::types;
