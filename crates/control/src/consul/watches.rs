//! The watches a watch-catalog plugin names, each run as a blocking query on a thread of its own (as
//! Consul's own agent cache runs one goroutine per watch): a long poll never holds a plugin call, the
//! control thread or another watch. A changed answer is queued for the control thread and a waker
//! tells it to plan again. Removing a watch raises its stop flag; a thread parked in a long poll ends
//! when that round does, and whatever it then delivers is discarded by its generation.

use super::metrics::ConsulMetrics;
use meshgate_consul::watch::Mode;
use meshgate_consul::{Client, Watch};
use meshgate_plugin::types::{Watch as WatchSpec, WatchAnswer, WatchMode};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

/// Most watches one plugin may run: a plan naming more is refused (a runaway plugin must not spawn
/// threads without bound). Each holds a socket to the agent, so the gateway keeps that many
/// descriptors out of its connection budget. A catalog of more services needs a plugin that watches
/// less per service.
pub const MAX_WATCHES: usize = 1024;

/// Wakes whoever plans from the answers (the control thread).
pub type Waker = Arc<dyn Fn() + Send + Sync>;

struct Delivery {
    key: String,
    generation: u64,
    answer: WatchAnswer,
}

struct Running {
    spec: WatchSpec,
    generation: u64,
    stop: Arc<AtomicBool>,
}

/// The running watches of one plugin and their latest answers.
pub struct WatchSet {
    client: Arc<Client>,
    metrics: Arc<ConsulMetrics>,
    waker: Waker,
    running: BTreeMap<String, Running>,
    answers: BTreeMap<String, WatchAnswer>,
    tx: Sender<Delivery>,
    rx: Receiver<Delivery>,
    next_generation: u64,
}

impl WatchSet {
    /// An empty set reading through `client`.
    pub fn new(client: Arc<Client>, metrics: Arc<ConsulMetrics>, waker: Waker) -> WatchSet {
        let (tx, rx) = std::sync::mpsc::channel();
        WatchSet {
            client,
            metrics,
            waker,
            running: BTreeMap::new(),
            answers: BTreeMap::new(),
            tx,
            rx,
            next_generation: 1,
        }
    }

    /// The latest answer of every running watch, by key.
    pub fn answers(&self) -> Vec<WatchAnswer> {
        self.answers.values().cloned().collect()
    }

    /// Takes the answers that arrived; returns how many changed an answer.
    pub fn drain(&mut self) -> usize {
        let mut changed = 0;
        while let Ok(d) = self.rx.try_recv() {
            changed += usize::from(self.accept(d));
        }
        changed
    }

    /// Waits up to `timeout` for one answer, then takes any others queued; returns how many arrived.
    pub fn wait(&mut self, timeout: Duration) -> usize {
        match self.rx.recv_timeout(timeout) {
            Ok(d) => usize::from(self.accept(d)) + self.drain(),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => 0,
        }
    }

    fn accept(&mut self, d: Delivery) -> bool {
        match self.running.get(&d.key) {
            Some(r) if r.generation == d.generation => {
                self.answers.insert(d.key, d.answer);
                true
            }
            // A watch removed or replaced since: its answer describes a query no one asks any more.
            _ => false,
        }
    }

    /// Makes the running set match `wanted`: starts new keys (and keys whose path or mode changed),
    /// stops keys not named, keeps the rest with their index. Refuses a plan with an endpoint outside the
    /// allowed ones, a duplicate key or too many watches, and then changes nothing.
    pub fn reconcile(&mut self, wanted: &[WatchSpec]) -> Result<(), String> {
        if wanted.len() > MAX_WATCHES {
            return Err(format!(
                "the plan names {} watches; at most {MAX_WATCHES} may run",
                wanted.len()
            ));
        }
        let mut built = BTreeMap::new();
        for spec in wanted {
            if built.contains_key(&spec.key) {
                return Err(format!("watch key {:?} is named twice", spec.key));
            }
            let same = self.running.get(&spec.key).is_some_and(|r| r.spec == *spec);
            let watch = if same { None } else { Some(build(spec)?) };
            built.insert(spec.key.clone(), (spec, watch));
        }
        let stale: Vec<String> = self
            .running
            .keys()
            .filter(|k| built.get(*k).is_none_or(|(_, w)| w.is_some()))
            .cloned()
            .collect();
        for key in stale {
            if let Some(r) = self.running.remove(&key) {
                r.stop.store(true, Ordering::Relaxed);
            }
            self.answers.remove(&key);
        }
        for (key, (spec, watch)) in built {
            let Some(watch) = watch else { continue };
            let generation = self.next_generation;
            self.next_generation += 1;
            let stop = Arc::new(AtomicBool::new(false));
            self.spawn(key.clone(), generation, watch, stop.clone())?;
            self.running.insert(
                key,
                Running {
                    spec: spec.clone(),
                    generation,
                    stop,
                },
            );
        }
        Ok(())
    }

    fn spawn(
        &self,
        key: String,
        generation: u64,
        watch: Watch,
        stop: Arc<AtomicBool>,
    ) -> Result<(), String> {
        let tx = self.tx.clone();
        let waker = self.waker.clone();
        super::spawn_watch(
            "meshgate-consul-watch",
            self.client.clone(),
            watch,
            self.metrics.clone(),
            stop,
            "the last good view keeps serving",
            move |_, round| {
                let super::Round::Answered(Some(a)) = round else {
                    return true;
                };
                let answer = WatchAnswer {
                    key: key.clone(),
                    status: a.status,
                    index: a.index.unwrap_or(0),
                    body: a.body,
                };
                let sent = tx.send(Delivery {
                    key: key.clone(),
                    generation,
                    answer,
                });
                waker();
                sent.is_ok()
            },
        )
    }

    /// Watches running.
    pub fn len(&self) -> usize {
        self.running.len()
    }

    /// Whether none runs.
    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }
}

impl Drop for WatchSet {
    fn drop(&mut self) {
        for r in self.running.values() {
            r.stop.store(true, Ordering::Relaxed);
        }
    }
}

/// A [`Watch`] for a plugin's spec, or why the spec is refused.
fn build(spec: &WatchSpec) -> Result<Watch, String> {
    let refuse = |why: &str| format!("watch {:?} ({}): {why}", spec.key, spec.path);
    let (path, query) = spec.path.split_once('?').unwrap_or((&spec.path, ""));
    meshgate_consul::reads::check(path).map_err(refuse)?;
    let mut watch = Watch::new(path);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if ["index", "wait", "hash", "token"].contains(&k) {
            return Err(refuse(&format!("`{k}` is the host's to set")));
        }
        let v = percent_decode(v).ok_or_else(|| refuse("bad %-escape in the query"))?;
        watch = watch.query(k, v);
    }
    watch = match spec.mode {
        WatchMode::Index => watch,
        WatchMode::Hash => watch.mode(Mode::Hash),
        WatchMode::Poll(ms) => {
            watch.mode(Mode::Poll(Duration::from_millis(u64::from(ms).max(1000))))
        }
    };
    if path.starts_with("/v1/config/") || path.starts_with("/v1/agent/service/") {
        // A config entry not written yet (or a registration not made yet) is an answer: 404.
        watch = watch.allow_not_found();
    }
    // The request itself is checked (characters, dot segments) before anything is sent.
    watch
        .next_request()
        .target()
        .map_err(|e| refuse(&e.to_string()))?;
    Ok(watch)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(key: &str, path: &str) -> WatchSpec {
        WatchSpec {
            key: key.into(),
            path: path.into(),
            mode: WatchMode::Index,
        }
    }

    #[test]
    fn only_read_endpoints_are_watched() {
        for ok in [
            "/v1/health/connect/api?dc=dc2&cached",
            "/v1/catalog/services",
            "/v1/config/service-defaults/api",
            "/v1/internal/ui/services?filter=Service.Kind%20%3D%3D%20%22mesh-gateway%22",
            "/v1/agent/service/mesh-gateway",
        ] {
            let w = build(&spec("k", ok)).expect(ok);
            assert!(w.next_request().target().is_ok(), "{ok}");
        }
        for bad in [
            "/v1/agent/service/register",
            "/v1/kv/secret",
            "/v1/acl/tokens",
            "/v1/agent/self",
            "/v1/health/connect/",
            "/v1/health/connect/../../kv/x",
            "/v1/health/connect/api?index=5",
            "/v1/health/connect/api?token=x",
            "/v1/health/connect/a\r\nX: y",
            "/v1/catalog/services?dc=%zz",
            "http://evil/v1/catalog/services",
        ] {
            assert!(build(&spec("k", bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_query_is_decoded_then_encoded_again() {
        let w = build(&spec(
            "k",
            "/v1/internal/ui/services?dc=dc2&filter=Service.Kind%20%3D%3D%20%22mesh-gateway%22",
        ))
        .expect("valid");
        let target = w.next_request().target().expect("target");
        assert_eq!(
            target,
            "/v1/internal/ui/services?dc=dc2&filter=Service.Kind%20%3D%3D%20%22mesh-gateway%22"
        );
    }
}
