//! Blocking-query watches with Consul's rules (consul-live-api.md §2): one index per watch, sent back as
//! `?index=&wait=`; a client deadline above the server's jitter (`wait + wait/16 + margin`); an index
//! below 1 treated as 1; an index that goes backwards resets the watch to 0, and so does losing the
//! connection to the agent (see [`Watch::poll`]); errors back off
//! exponentially with full jitter up to a cap and reset on success; and a minimum interval between
//! successive requests, so a churning catalog (or a server that stops blocking) cannot spin the loop.
//!
//! [`Watch::poll`] does one bounded round and says "changed" (`Some(Answer)`) or "unchanged" (`None`).
//! "Changed" means the answer differs from the last one delivered: Consul's index also moves for writes
//! that leave this query's answer as it was, and those are not worth a route-table rebuild.
//! Time (now, sleep, randomness) comes through [`Clock`], so the waits are unit-tested without real time.

use crate::error::{Error, Result};
use crate::http::{Request, Response, Transport};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Consul clamps `wait` to 10 minutes (`MaxQueryTime`).
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// How often an index watch whose endpoint answers without `X-Consul-Index` (it does not block) asks
/// again: proxycfg's poll interval for `/v1/catalog/datacenters`.
pub const UNBLOCKED_INTERVAL: Duration = Duration::from_secs(30);

/// Time and randomness, injected so the watch's waits can be tested without real time.
pub trait Clock {
    /// The current instant.
    fn now(&self) -> Instant;
    /// Blocks the calling thread for `d`.
    fn sleep(&self, d: Duration);
    /// A uniformly random duration in `[0, max]`.
    fn jitter(&self, max: Duration) -> Duration;
}

/// Real time, and a small xorshift generator seeded from the clock and the process (jitter only spreads
/// retries; it guards nothing).
#[derive(Debug)]
pub struct SystemClock {
    state: AtomicU64,
}

impl Default for SystemClock {
    fn default() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        SystemClock {
            state: AtomicU64::new((nanos ^ (u64::from(std::process::id()) << 32)) | 1),
        }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }

    fn jitter(&self, max: Duration) -> Duration {
        let mut x = self.state.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state.store(x, Ordering::Relaxed);
        let nanos = max.as_nanos().min(u128::from(u64::MAX)) as u64;
        Duration::from_nanos(if nanos == 0 { 0 } else { x % (nanos + 1) })
    }
}

/// The knobs of a watch. The defaults follow consul-live-api.md §2.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `wait` sent with each blocking query (clamped to [`MAX_WAIT`]).
    pub wait: Duration,
    /// Added to `wait + wait/16` for the client's deadline of a blocking round.
    pub margin: Duration,
    /// Deadline of a non-blocking round (the first one, after a reset, and polled endpoints).
    pub request_timeout: Duration,
    /// Minimum interval between the starts of two successive requests: caps churn at one answer per
    /// interval, and keeps a server that answers at once (not blocking) from spinning the loop.
    pub min_interval: Duration,
    /// First error backoff; doubles with each consecutive failure.
    pub backoff_base: Duration,
    /// Largest error backoff.
    pub backoff_cap: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            wait: Duration::from_secs(300),
            margin: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            min_interval: Duration::from_millis(50),
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(60),
        }
    }
}

impl Policy {
    /// The `wait` actually sent: within [1 s, [`MAX_WAIT`]] (Consul reads `wait=0s` as its 5 min
    /// default, which would outlast a deadline computed from 0).
    pub fn effective_wait(&self) -> Duration {
        self.wait.clamp(Duration::from_secs(1), MAX_WAIT)
    }

    /// The client deadline of a blocking round: above the server's `wait/16` jitter.
    pub fn blocking_timeout(&self) -> Duration {
        let wait = self.effective_wait();
        wait + wait / 16 + self.margin
    }

    /// The upper bound of the backoff after `failures` consecutive failures (≥ 1): base × 2^(n-1), capped.
    pub fn backoff_ceiling(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.backoff_base
            .saturating_mul(1u32 << doublings)
            .min(self.backoff_cap)
    }
}

/// How a watch blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `?index=<X-Consul-Index>&wait=` (catalog, health, config, CA endpoints).
    Index,
    /// `?hash=<X-Consul-ContentHash>&wait=` (agent-local endpoints such as `/v1/agent/service/<id>`).
    Hash,
    /// No blocking: ask again after this interval (`/v1/catalog/datacenters`).
    Poll(Duration),
}

/// One answer that differs from the previous one delivered.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status: 200, or 404 on a watch that allows "not found" (a config entry not written yet).
    pub status: u16,
    /// The answer's `X-Consul-Index`, if any.
    pub index: Option<u64>,
    /// The body.
    pub body: Vec<u8>,
    /// When it arrived (by the watch's clock).
    pub received_at: Instant,
}

impl Answer {
    /// Whether the watched thing exists (not a 404).
    pub fn found(&self) -> bool {
        self.status != 404
    }

    /// The body decoded as JSON; `path` names the endpoint in the error.
    pub fn json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|source| Error::Json {
            path: path.to_string(),
            source,
        })
    }
}

/// Counters of a watch, for metrics and for the "requests per change" figure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests sent.
    pub requests: u64,
    /// Answers delivered as changed.
    pub changes: u64,
    /// Failed rounds (transport errors and unexpected statuses).
    pub errors: u64,
    /// Times the index went backwards and the watch reset to 0.
    pub resets: u64,
}

/// One watched query with its own index. Not shared: one owner polls it in a loop.
#[derive(Debug)]
pub struct Watch<C: Clock = SystemClock> {
    path: String,
    query: Vec<(String, String)>,
    mode: Mode,
    allow_not_found: bool,
    policy: Policy,
    clock: C,
    /// 0 = no index yet (or reset): the next round does not block.
    index: u64,
    hash: Option<String>,
    /// Fingerprint of the last delivered answer.
    last: Option<u64>,
    failures: u32,
    not_before: Option<Instant>,
    last_success: Option<Instant>,
    stats: Stats,
}

impl Watch<SystemClock> {
    /// An index-blocking watch of `path` (the query goes in [`Watch::query`]).
    pub fn new(path: impl Into<String>) -> Watch<SystemClock> {
        Watch {
            path: path.into(),
            query: Vec::new(),
            mode: Mode::Index,
            allow_not_found: false,
            policy: Policy::default(),
            clock: SystemClock::default(),
            index: 0,
            hash: None,
            last: None,
            failures: 0,
            not_before: None,
            last_success: None,
            stats: Stats::default(),
        }
    }
}

impl<C: Clock> Watch<C> {
    /// Adds a fixed query parameter (`dc`, `cached`, `filter`…).
    pub fn query(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.query.push((key.into(), value.into()));
        self
    }

    /// Sets how the watch blocks.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// A 404 carrying an index is an answer ("not found yet"), as for config entries (§2, §9.7).
    pub fn allow_not_found(mut self) -> Self {
        self.allow_not_found = true;
        self
    }

    /// Replaces the policy.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Uses `clock` for time and randomness.
    pub fn with_clock<D: Clock>(self, clock: D) -> Watch<D> {
        Watch {
            path: self.path,
            query: self.query,
            mode: self.mode,
            allow_not_found: self.allow_not_found,
            policy: self.policy,
            clock,
            index: self.index,
            hash: self.hash,
            last: self.last,
            failures: self.failures,
            not_before: self.not_before,
            last_success: self.last_success,
            stats: self.stats,
        }
    }

    /// The watched path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The index the next round blocks on (0: it does not block).
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Consecutive failures so far (0 after a success).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// How long since the last successful round (changed or not), by the watch's clock; `None` before
    /// the first. This is how stale the watcher's view may be.
    pub fn staleness(&self) -> Option<Duration> {
        self.last_success
            .map(|t| self.clock.now().saturating_duration_since(t))
    }

    /// The request the next round sends.
    pub fn next_request(&self) -> Request {
        let mut request = Request::get(self.path.clone());
        for (k, v) in &self.query {
            request = request.query(k.clone(), v.clone());
        }
        let wait = format_wait(self.policy.effective_wait());
        match self.mode {
            Mode::Index if self.index > 0 => request
                .query("index", self.index.to_string())
                .query("wait", wait)
                .timeout(self.policy.blocking_timeout()),
            Mode::Hash if self.hash.is_some() => request
                .query("hash", self.hash.clone().unwrap_or_default())
                .query("wait", wait)
                .timeout(self.policy.blocking_timeout()),
            _ => request.timeout(self.policy.request_timeout),
        }
    }

    /// One bounded round: waits out a pending backoff / rate limit / poll interval, sends one request
    /// and says whether the answer changed. On error the caller keeps its last good data; the next
    /// round waits the backoff first, and after a lost connection (agent unreachable, connection
    /// cut) it does not block.
    pub fn poll(&mut self, transport: &impl Transport) -> Result<Option<Answer>> {
        if let Some(at) = self.not_before {
            let now = self.clock.now();
            if at > now {
                self.clock.sleep(at - now);
            }
        }
        let started = self.clock.now();
        self.not_before = Some(started + self.policy.min_interval);
        self.stats.requests += 1;
        let request = self.next_request();
        let outcome = transport
            .send(&request)
            .and_then(|r| self.accept(&request, r));
        match outcome {
            Ok(response) => {
                self.failures = 0;
                Ok(self.observe(started, response))
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                self.stats.errors += 1;
                if matches!(e, Error::Unreachable { .. } | Error::Io { .. }) {
                    // The agent went away and may come back as a new cluster (a rebuilt one, a -dev
                    // agent) whose indexes start lower: blocking on the old index would hold the first
                    // answer for the whole `wait`. One unblocked round finds the current index; an
                    // unchanged answer is still reported as unchanged.
                    self.index = 0;
                }
                let delay = self
                    .clock
                    .jitter(self.policy.backoff_ceiling(self.failures))
                    .max(self.policy.min_interval);
                self.not_before = Some(self.clock.now() + delay);
                tracing::debug!(path = %self.path, failures = self.failures, ?delay, error = %e, "consul watch round failed");
                Err(e)
            }
        }
    }

    fn accept(&self, request: &Request, r: Response) -> Result<Response> {
        let not_found_ok = self.allow_not_found && r.status == 404;
        if r.is_success() || not_found_ok {
            Ok(r)
        } else {
            Err(Error::Status {
                method: request.method().as_str(),
                path: self.path.clone(),
                status: r.status,
                body: crate::error::excerpt(&r.body),
            })
        }
    }

    fn observe(&mut self, started: Instant, r: Response) -> Option<Answer> {
        let now = self.clock.now();
        self.last_success = Some(now);
        match self.mode {
            Mode::Index => match r.index {
                // Consul never sends 0; treat anything below 1 as 1 so the next round blocks.
                Some(i) => {
                    let i = i.max(1);
                    if self.index > 0 && i < self.index {
                        // Snapshot restore, a new agent, …: start over with a non-blocking round.
                        tracing::debug!(path = %self.path, from = self.index, to = i, "consul index went backwards: reset");
                        self.stats.resets += 1;
                        self.index = 0;
                    } else {
                        self.index = i;
                    }
                }
                // An endpoint that does not block: do not hammer it.
                None => {
                    self.index = 0;
                    self.not_before = Some(started + UNBLOCKED_INTERVAL);
                }
            },
            Mode::Hash => self.hash = r.content_hash.clone(),
            Mode::Poll(interval) => {
                self.not_before = Some(started + interval.max(self.policy.min_interval))
            }
        }
        let fingerprint = fingerprint(r.status, &r.body);
        if self.last == Some(fingerprint) {
            return None;
        }
        self.last = Some(fingerprint);
        self.stats.changes += 1;
        Some(Answer {
            status: r.status,
            index: r.index,
            body: r.body,
            received_at: now,
        })
    }
}

fn fingerprint(status: u16, body: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    status.hash(&mut h);
    body.hash(&mut h);
    h.finish()
}

/// A Go duration Consul parses: whole seconds as `300s`, else milliseconds.
fn format_wait(wait: Duration) -> String {
    if wait.subsec_millis() == 0 {
        format!("{}s", wait.as_secs())
    } else {
        format!("{}ms", wait.as_millis())
    }
}

#[cfg(test)]
mod tests;
