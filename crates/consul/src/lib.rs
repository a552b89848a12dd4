//! meshgate's link to a real Consul, as a self-contained foundation for the gateway and the sidecar:
//!
//! - [`agent`] and [`http`]: where the local agent is (explicit or `CONSUL_*`) and a bounded HTTP/1.1
//!   client for it (one total deadline per request, body cap, HTTPS with rustls);
//! - [`watch`]: blocking-query watches with Consul's index rules, capped jittered backoff and a churn
//!   limit;
//! - [`model`]: the answers a mesh gateway and a sidecar read, and the gateway's registration body;
//! - [`routes`] (with [`filter`] for resolver subsets): the route table Consul's own mesh gateway would
//!   build from those answers;
//! - [`state`]: the gateway's view of Consul with the lifecycle rules of Consul's own gateway;
//! - `lab` (feature `test-support`, hidden): real Consul dev agents, one or two datacenters, for tests.
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
//! Everything here runs on control threads with blocking std IO; nothing touches a data-plane core.
//! `model`, `filter`, `routes` and `state` are pure, so the decisions are unit-tested over recorded
//! answers.

#![forbid(unsafe_code)]

pub mod agent;
pub mod error;
pub mod filter;
pub mod http;
#[cfg(feature = "test-support")]
#[doc(hidden)]
pub mod lab;
pub mod model;
pub mod routes;
pub mod state;
pub mod watch;

pub use agent::{Agent, Scheme, TokenSource};
pub use error::{Error, Result};
pub use http::{Client, Method, Request, Response, Transport};
pub use watch::{Answer, Clock, Policy, SystemClock, Watch};
