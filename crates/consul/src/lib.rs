//! meshgate's link to a real Consul: a bounded HTTP/1.1 client for the local agent ([`http`], configured
//! by [`agent`]), blocking-query watches with Consul's index rules, backoff and churn limits ([`watch`]),
//! the answers a mesh gateway and a sidecar read, and the gateway's registration ([`model`]), and the
//! route table Consul's own mesh gateway would build from those answers ([`routes`], with resolver subset
//! filters by [`filter`]).
//!
//! Everything here runs on control threads with blocking std IO; nothing touches a data-plane core.
//! `model` and `routes` are pure, so the decisions are unit-tested over recorded answers.

#![forbid(unsafe_code)]

pub mod agent;
pub mod error;
pub mod filter;
pub mod http;
pub mod model;
pub mod routes;
pub mod watch;

pub use agent::{Agent, Scheme, TokenSource};
pub use error::{Error, Result};
pub use http::{Client, Method, Request, Response, Transport};
pub use watch::{Answer, Clock, Policy, SystemClock, Watch};
