//! A sidecar's certificates from the local Consul agent instead of files: the leaf of the service it
//! fronts (`/v1/agent/connect/ca/leaf/<service>`: the identity is the destination service, not the
//! proxy) and the trust bundle (`/v1/agent/connect/ca/roots`: every root, so a CA rotation never drops
//! a peer). Both are blocking queries on threads of their own, so a renewal or a rotation reaches the
//! sidecar within one round trip and without a restart; the control thread picks up the newest PEM.

use super::metrics::ConsulMetrics;
use meshgate_consul::model::{CaRoots, LeafCert};
use meshgate_consul::{Client, Watch};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The newest leaf (chain + key) and roots, as PEM.
#[derive(Default)]
struct Latest {
    leaf: Option<(Vec<u8>, Vec<u8>)>,
    roots: Option<Vec<u8>>,
    error: Option<String>,
}

/// Leaf and roots watched on the agent.
pub struct AgentCerts {
    latest: Arc<Mutex<Latest>>,
    stop: Arc<AtomicBool>,
}

impl AgentCerts {
    /// Starts the two watches for `service`'s leaf and the roots.
    pub fn start(
        client: Arc<Client>,
        service: &str,
        metrics: Arc<ConsulMetrics>,
    ) -> Result<AgentCerts, String> {
        let latest = Arc::new(Mutex::new(Latest::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let leaf = Watch::new(format!("/v1/agent/connect/ca/leaf/{service}"));
        leaf.next_request()
            .target()
            .map_err(|e| format!("leaf for {service:?}: {e}"))?;
        spawn(
            client.clone(),
            leaf,
            metrics.clone(),
            latest.clone(),
            stop.clone(),
            |latest, body, path| {
                let leaf: LeafCert =
                    serde_json::from_slice(body).map_err(|e| format!("{path}: {e}"))?;
                let chain = leaf.chain().join("");
                latest.leaf = Some((chain.into_bytes(), leaf.private_key_pem.into_bytes()));
                Ok(())
            },
        )?;
        spawn(
            client,
            Watch::new("/v1/agent/connect/ca/roots"),
            metrics,
            latest.clone(),
            stop.clone(),
            |latest, body, path| {
                let roots: CaRoots =
                    serde_json::from_slice(body).map_err(|e| format!("{path}: {e}"))?;
                if roots.roots.is_empty() {
                    return Err(format!("{path}: no roots yet"));
                }
                // Each root and the intermediates it carries (a secondary's chain to the primary).
                let mut bundle = String::new();
                for r in &roots.roots {
                    bundle.push_str(r.root_cert.trim_end());
                    bundle.push('\n');
                }
                latest.roots = Some(bundle.into_bytes());
                Ok(())
            },
        )?;
        Ok(AgentCerts { latest, stop })
    }

    /// `[chain, key, roots]` once both watches have answered; `None` while they have not (their own
    /// failures are logged by the watches); an error when an answer could not be used.
    pub fn current(&self) -> Result<Option<[Vec<u8>; 3]>, String> {
        let l = self
            .latest
            .lock()
            .map_err(|_| "certificate state poisoned".to_string())?;
        match (&l.leaf, &l.roots, &l.error) {
            (Some((chain, key)), Some(roots), _) => {
                Ok(Some([chain.clone(), key.clone(), roots.clone()]))
            }
            (_, _, Some(e)) => Err(e.clone()),
            _ => Ok(None),
        }
    }
}

impl Drop for AgentCerts {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

type Apply = fn(&mut Latest, &[u8], &str) -> Result<(), String>;

fn spawn(
    client: Arc<Client>,
    watch: Watch,
    metrics: Arc<ConsulMetrics>,
    latest: Arc<Mutex<Latest>>,
    stop: Arc<AtomicBool>,
    apply: Apply,
) -> Result<(), String> {
    super::spawn_watch(
        "meshgate-consul-certs",
        client,
        watch,
        metrics,
        stop,
        "the current certificates stay",
        move |path, round| {
            if let Ok(mut l) = latest.lock() {
                let applied = match round {
                    super::Round::Answered(Some(a)) => {
                        apply(&mut l, &a.body, path).inspect_err(|e| {
                            tracing::warn!(error = %e, "consul certificate answer not usable; the current certificates stay");
                        })
                    }
                    super::Round::Answered(None) => Ok(()),
                    super::Round::Failed(e) => Err(e.to_string()),
                };
                match applied {
                    Ok(()) => l.error = None,
                    Err(e) => l.error = Some(e),
                }
            }
            true
        },
    )
}
