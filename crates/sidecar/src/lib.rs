//! meshgate's sidecar data plane.
pub mod tls;
