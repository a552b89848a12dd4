//! Which of the agent's endpoints a plugin may have the host read for it (pure): GET only, and only
//! what a gateway and a sidecar need — nothing that writes, reveals secrets (ACL tokens, KV) or changes
//! the agent. The host refuses a watch outside these before sending anything; plugin tests check their
//! plans against the same list.

/// Read endpoints: exact paths, or prefixes (ending in `/`) followed by one more path.
pub const ALLOWED: [&str; 11] = [
    "/v1/agent/connect/ca/roots",
    "/v1/agent/service/",
    "/v1/catalog/services",
    "/v1/catalog/datacenters",
    "/v1/health/connect/",
    "/v1/health/service/",
    "/v1/config/",
    "/v1/connect/intentions",
    "/v1/internal/federation-states/mesh-gateways",
    "/v1/internal/ui/services",
    "/v1/internal/ui/nodes",
];

/// Whether `path` (without its query) is a read a plugin may have watched; why not if it is not.
pub fn check(path: &str) -> Result<(), &'static str> {
    let allowed = ALLOWED.iter().any(|a| {
        if a.ends_with('/') {
            path.starts_with(a) && path.len() > a.len()
        } else {
            path == *a
        }
    });
    if !allowed {
        return Err("not an endpoint a plugin may watch (docs/plugins.md lists them)");
    }
    if let Some(id) = path.strip_prefix("/v1/agent/service/") {
        // One service ID, not the agent's write endpoints under the same prefix.
        if id.contains('/') || ["register", "deregister", "maintenance"].contains(&id) {
            return Err("not an endpoint a plugin may watch");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn reads_only() {
        for ok in [
            "/v1/health/connect/api",
            "/v1/config/service-defaults/api",
            "/v1/agent/service/mesh-gateway",
            "/v1/catalog/services",
        ] {
            assert!(check(ok).is_ok(), "{ok}");
        }
        for bad in [
            "/v1/agent/service/register",
            "/v1/agent/service/maintenance/gw",
            "/v1/kv/secret",
            "/v1/acl/tokens",
            "/v1/agent/self",
            "/v1/health/connect/",
            "/v1/catalog/services/extra",
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }
}
