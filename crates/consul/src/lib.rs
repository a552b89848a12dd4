//! meshgate's link to a real Consul, as a self-contained foundation for the gateway and the sidecar:
//!
//! - [`agent`] and [`http`]: where the local agent is (explicit or `CONSUL_*`) and a bounded HTTP/1.1
//!   client for it (one total deadline per request, body cap, HTTPS with rustls);
//! - [`watch`]: blocking-query watches with Consul's index rules, capped jittered backoff and a churn
//!   limit;
//! - [`model`]: the answers a mesh gateway and a sidecar read, and the gateway's registration body;
//! - [`routes`] (with [`filter`] for resolver subsets): the route table Consul's own mesh gateway would
//!   build from those answers;
//! - [`state`]: the gateway's view of Consul with the lifecycle rules of Consul's own gateway.
//!
//! Everything here runs on control threads with blocking std IO; nothing touches a data-plane core.
//! `model`, `filter`, `routes` and `state` are pure, so the decisions are unit-tested over recorded
//! answers.

#![forbid(unsafe_code)]

pub mod agent;
pub mod error;
pub mod filter;
pub mod http;
pub mod model;
pub mod routes;
pub mod state;
pub mod watch;

pub use agent::{Agent, Scheme, TokenSource};
pub use error::{Error, Result};
pub use http::{Client, Method, Request, Response, Transport};
pub use watch::{Answer, Clock, Policy, SystemClock, Watch};
