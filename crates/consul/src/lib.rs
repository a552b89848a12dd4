//! meshgate's link to a real Consul, as a self-contained foundation for the gateway and the sidecar:
//!
//! - [`agent`] and [`http`]: where the local agent is (explicit or `CONSUL_*`) and a bounded HTTP/1.1
//!   client for it (one total deadline per request, body cap, HTTPS with rustls);
//! - [`watch`]: blocking-query watches with Consul's index rules, capped jittered backoff and a churn
//!   limit;
//! - [`model`]: the answers a mesh gateway and a sidecar read, and the gateway's registration body;
//! - [`routes`] (with [`filter`] for resolver subsets): the route table Consul's own mesh gateway would
//!   build from those answers;
//! - [`reads`]: the agent endpoints a plugin may have the host watch;
//! - [`state`]: the gateway's view of Consul with the lifecycle rules of Consul's own gateway;
//! - `lab` (feature `lab`): real Consul dev agents, one or two datacenters, for tests and `meshgate demo --consul`.
//!
//! A gateway's control thread, in outline (one thread per watch, or one loop per watch group):
//!
//! ```no_run
//! use meshgate_consul::state::{watches, GatewayState, Update};
//! use meshgate_consul::{Agent, Client};
//!
//! # fn main() -> meshgate_consul::Result<()> {
//! let client = Client::new(Agent::from_env()?)?;
//! let mut state = GatewayState::new("dc1", "consul");
//! let mut roots = watches::roots();
//! let mut names = watches::service_names();
//! if let Some(answer) = roots.poll(&client)? {
//!     state.apply(Update::Roots(answer.json(roots.path())?));
//! }
//! if let Some(answer) = names.poll(&client)? {
//!     state.apply(Update::ServiceNames(answer.json(names.path())?));
//! }
//! // … one `watches::service_health(name)` per name of `state.wanted().services`, and so on …
//! if let Some(table) = state.table() {
//!     for route in &table.routes {
//!         println!("{} -> {:?}", route.sni, route.endpoints);
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Everything here runs on control threads with blocking std IO (or, the pure half, inside the
//! `consul-catalog` plugin on the control thread); nothing touches a data-plane core.
//! `model`, `filter`, `routes` and `state` are pure, so the decisions are unit-tested over recorded
//! answers.
//!
//! Cargo feature `client` (on by default) gates the IO half: [`agent`], [`http`] (and rustls),
//! [`watch`], [`error`] and [`state::watches`]. Without it the crate is the pure half alone — `model`,
//! `filter`, `routes` and `state` (minus `watches`) — which builds for `wasm32-unknown-unknown`: the
//! shipped `consul-catalog` plugin makes the same decisions inside the sandbox, over answers the host
//! fetched.

#![forbid(unsafe_code)]

#[cfg(feature = "client")]
pub mod agent;
#[cfg(feature = "client")]
pub mod error;
pub mod filter;
#[cfg(feature = "client")]
pub mod http;
#[cfg(feature = "lab")]
#[doc(hidden)]
pub mod lab;
pub mod model;
pub mod reads;
pub mod routes;
pub mod state;
#[cfg(feature = "client")]
pub mod watch;

#[cfg(feature = "client")]
pub use agent::{Agent, Scheme, TokenSource};
#[cfg(feature = "client")]
pub use error::{Error, Result};
#[cfg(feature = "client")]
pub use http::{Client, Method, Request, Response, Transport};
#[cfg(feature = "client")]
pub use watch::{Answer, Clock, Policy, SystemClock, Watch};
