//! Support for the end-to-end tests: run the real `meshgate` binary on a config file, talk to its admin
//! endpoint, stand up upstreams that behave (or misbehave) on purpose, and wait for conditions with a
//! bound instead of sleeping.
//!
//! Parts: [`process`] (spawning meshgate and other processes, admin polling), [`waits`] (bounded
//! polling), [`net`] (ports and plain clients), [`backends`] (upstreams), [`sidecars`] (certificates and
//! sidecar configs), [`netns`] (network namespaces), [`consul`] (gateways beside the Consul lab's agents). Everything is re-exported here, so a test says
//! `use common::*`.
#![allow(dead_code)]

pub mod backends;
pub mod consul;
pub mod net;
pub mod netns;
pub mod process;
pub mod sidecars;
pub mod waits;

// Each test binary uses a part of the support module (hence also `dead_code` above).
#[allow(unused_imports)]
pub use backends::*;
#[allow(unused_imports)]
pub use net::*;
#[allow(unused_imports)]
pub use netns::*;
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use sidecars::*;
#[allow(unused_imports)]
pub use waits::*;

/// Trust domain used in test names.
pub const TD: &str = "11111111-2222-3333-4444-555555555555.consul";
