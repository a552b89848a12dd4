//! meshgate's side of a live Consul agent: which agent and token a config means ([`agent`]), the
//! watches a watch-catalog plugin asks for, run as blocking queries on threads of their own
//! ([`watches::WatchSet`]), the gateway's own registration ([`register::Registrar`]), and the metrics
//! an operator reads to know how current the view is ([`ConsulMetrics`]). No data-plane core ever waits
//! on the agent: answers reach the control thread, which turns them into route tables.

pub mod authorize;
pub mod certs;
pub mod metrics;
pub mod register;
pub mod watches;

pub use metrics::ConsulMetrics;

use crate::error::ControlError;
use meshgate_config::ConsulSection;
use meshgate_consul::{Agent, Client};
use std::path::Path;

/// What a watch thread is told of each round.
pub(crate) enum Round {
    /// The agent answered: the answer if it changed.
    Answered(Option<meshgate_consul::Answer>),
    /// The round failed (the last good view stays).
    Failed(meshgate_consul::Error),
}

/// Starts a thread that runs `watch` until `stop` (or until `on_round` returns false): every round
/// counted by endpoint and outcome, its health tracked for the staleness gauge, a failure streak logged
/// once (`what` names the consequence) and its recovery once. A round that fails after `stop` is not
/// reported: the watch was removed, or the agent went away at shutdown.
pub(crate) fn spawn_watch(
    name: &str,
    client: std::sync::Arc<Client>,
    mut watch: meshgate_consul::Watch,
    metrics: std::sync::Arc<ConsulMetrics>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    what: &'static str,
    mut on_round: impl FnMut(&str, Round) -> bool + Send + 'static,
) -> Result<(), String> {
    use std::sync::atomic::Ordering;
    let health = metrics.track();
    std::thread::Builder::new()
        .name(name.into())
        // One bounded HTTP exchange at a time.
        .stack_size(256 << 10)
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let round = match watch.poll(&*client) {
                    Ok(answer) => {
                        metrics.request(watch.path(), "ok");
                        if health.ok() {
                            tracing::info!(path = %watch.path(), "consul watch answering again");
                        }
                        Round::Answered(answer)
                    }
                    Err(e) => {
                        metrics.request(watch.path(), metrics::outcome(&e));
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        if health.failed() {
                            tracing::warn!(path = %watch.path(), error = %e, "consul watch failing; {what}");
                        }
                        Round::Failed(e)
                    }
                };
                if stop.load(Ordering::Relaxed) || !on_round(watch.path(), round) {
                    return;
                }
            }
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start a watch thread: {e}"))
}

/// The agent a config names: `[consul]` keys first, then the `CONSUL_*` environment, then
/// `127.0.0.1:8500`. Relative file paths start at the config file's directory.
pub fn agent(section: Option<&ConsulSection>, base_dir: &Path) -> Result<Agent, ControlError> {
    agent_from(section, base_dir, |name| std::env::var(name).ok())
}

/// As [`agent`], with the environment read through `var` (tests).
pub fn agent_from(
    section: Option<&ConsulSection>,
    base_dir: &Path,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Agent, ControlError> {
    let bad = |e: meshgate_consul::Error| ControlError::Config(format!("[consul] {e}"));
    let mut agent = Agent::from_vars(&var).map_err(bad)?;
    let Some(s) = section else {
        return Ok(agent);
    };
    if let Some(addr) = &s.address {
        // The address moves; the credentials the environment gave still apply.
        agent.set_address(addr).map_err(bad)?;
    }
    let at = |p: &Path| base_dir.join(p);
    if let Some(t) = &s.token {
        agent = agent.with_token(t.trim());
    }
    if let Some(f) = &s.token_file {
        agent = agent.with_token_file(at(f));
    }
    if let Some(f) = &s.ca_file {
        agent = agent.with_ca_file(at(f));
    }
    if let (Some(c), Some(k)) = (&s.cert_file, &s.key_file) {
        agent = agent.with_client_cert(at(c), at(k));
    }
    if let Some(n) = &s.tls_server_name {
        agent.tls_server_name = Some(n.clone());
    }
    Ok(agent)
}

/// A client for the agent a config names.
pub fn client(section: Option<&ConsulSection>, base_dir: &Path) -> Result<Client, ControlError> {
    Client::new(agent(section, base_dir)?)
        .map_err(|e| ControlError::Config(format!("[consul] {e}")))
}

/// The `endpoint` label of a request path: the endpoint without the names in it, so the label set
/// stays bounded whatever the catalog holds (`/v1/health/connect/api` → `/v1/health/connect`).
pub fn endpoint_label(path: &str) -> String {
    let path = path.split('?').next().unwrap_or(path);
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let keep = match segments.as_slice() {
        ["v1", "agent", "service", "register" | "deregister" | "maintenance", ..] => 4,
        ["v1", "agent", "connect", "ca", ..] => 5,
        ["v1", "agent", "connect", ..] => 4,
        ["v1", "internal", "federation-states", ..] => 4,
        ["v1", "internal", "ui", ..] => 4,
        ["v1", "internal", "acl", ..] => 4,
        ["v1", "config", ..] => 3,
        ["v1", ..] => 3,
        _ => 1,
    };
    let mut label = String::new();
    for s in segments.iter().take(keep) {
        label.push('/');
        label.push_str(s);
    }
    label
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    #[test]
    fn config_keys_win_over_the_environment() {
        let env: BTreeMap<&str, &str> = [
            ("CONSUL_HTTP_ADDR", "10.0.0.1:8500"),
            ("CONSUL_HTTP_TOKEN", "from-env"),
            ("CONSUL_CACERT", "/etc/consul/ca.pem"),
        ]
        .into();
        let var = |k: &str| env.get(k).map(|v| v.to_string());
        let a = agent_from(None, Path::new("/cfg"), var).expect("env");
        assert_eq!((a.host.as_str(), a.port), ("10.0.0.1", 8500));
        assert_eq!(
            a.token,
            meshgate_consul::TokenSource::Value("from-env".into())
        );

        let section = ConsulSection {
            address: Some("https://127.0.0.1:8501".into()),
            token_file: Some("token".into()),
            ..Default::default()
        };
        let a = agent_from(Some(&section), Path::new("/cfg"), var).expect("section");
        assert_eq!(a.scheme, meshgate_consul::Scheme::Https);
        assert_eq!(a.port, 8501);
        assert_eq!(
            a.token,
            meshgate_consul::TokenSource::File(PathBuf::from("/cfg/token"))
        );
        // Not overridden by the section: still the environment's.
        assert_eq!(a.ca_file, Some(PathBuf::from("/etc/consul/ca.pem")));
        let none = agent_from(None, Path::new("/"), |_| None).expect("default");
        assert_eq!((none.host.as_str(), none.port), ("127.0.0.1", 8500));
    }

    #[test]
    fn endpoint_labels_drop_names() {
        for (path, label) in [
            ("/v1/health/connect/api?dc=dc2&cached", "/v1/health/connect"),
            ("/v1/health/service/consul", "/v1/health/service"),
            ("/v1/catalog/services", "/v1/catalog/services"),
            (
                "/v1/config/service-defaults/api",
                "/v1/config/service-defaults",
            ),
            ("/v1/agent/service/mesh-gateway", "/v1/agent/service"),
            ("/v1/agent/service/register", "/v1/agent/service/register"),
            (
                "/v1/agent/service/maintenance/gw",
                "/v1/agent/service/maintenance",
            ),
            ("/v1/agent/connect/ca/roots", "/v1/agent/connect/ca/roots"),
            ("/v1/agent/connect/ca/leaf/web", "/v1/agent/connect/ca/leaf"),
            (
                "/v1/internal/federation-states/mesh-gateways",
                "/v1/internal/federation-states/mesh-gateways",
            ),
            ("/v1/internal/acl/authorize", "/v1/internal/acl/authorize"),
        ] {
            assert_eq!(endpoint_label(path), label, "{path}");
        }
    }
}
