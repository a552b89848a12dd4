//! The configuration the unit tests start from, and a parser that names it `gw.toml`.

use crate::{Config, ConfigError};
use std::path::Path;

pub(crate) const GOOD: &str = r#"
[gateway]
name = "mesh-gateway"
datacenter = "dc1"
listen = ["127.0.0.1:8443"]
admin = "127.0.0.1:19000"

[[routes]]
sni = "api.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul"
endpoints = ["127.0.0.1:9001", "127.0.0.1:9002"]

[[routes]]
sni = "*.dc2.internal.11111111-2222-3333-4444-555555555555.consul"
endpoints = ["127.0.0.1:9443"]
failover = [["127.0.0.1:9444"]]
lb = "least_connections"
connect_timeout_ms = 250
"#;

pub(crate) fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("gw.toml"))
}
