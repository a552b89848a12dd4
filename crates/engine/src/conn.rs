//! One downstream connection, start to end: read the ClientHello under a total deadline, route it,
//! connect upstream (retrying and failing over while nothing has been forwarded), forward the buffered
//! hello, relay, and write one access-log line.
//!
//! Two phases, awaited one after the other so their states share the connection task's memory: the
//! first (hello, route, connect) keeps what routing needs, the second (relay) only the two sockets and
//! what the access-log line says ([`Routed`]). An idle connection spends its life in the second. The
//! task's size is guarded by a test: 1,944 bytes before this split, 1,392 after.

use crate::cores::within;
use crate::hook::HookDecision;
use crate::poller::Side;
use crate::relay::{self, Relay};
use crate::state::Core;
use crate::stats::{End, HelloOutcome};
use crate::sys;
use crate::Snapshot;
use meshgate_route::{EndpointGroup, LbPolicy, Plan, Route};
use meshgate_sni::{ClientHello, HelloReader, Limits, Progress, Reject};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the ClientHello phase ended without a hello.
enum HelloFailure {
    Rejected(Reject),
    Timeout,
    Eof,
    Io(io::Error),
}

/// Serves one accepted connection on listener `li`, holding `permits` (its share of the connection
/// limits) until it ends. This is the connection's whole task: nothing wraps it, so nothing holds its
/// arguments a second time.
#[allow(
    clippy::manual_async_fn,
    reason = "an `async fn` would hold each argument twice in its future"
)]
pub(crate) fn handle<P>(
    core: Rc<Core>,
    down: OwnedFd,
    peer: Option<SocketAddr>,
    li: usize,
    permits: P,
) -> impl Future<Output = ()> {
    // An `async` block, not an `async fn`: an `async fn` moves every argument into a local of its own
    // first, so the task would hold each of them twice.
    async move {
        let core = &*core;
        let stats = core.stats();
        stats.listeners[li].accepted.inc();
        stats.listeners[li].active.inc();
        core.live.set(core.live.get() + 1);
        // Once per connection, for its duration histogram, access-log line and maximum-duration deadline.
        #[allow(
            clippy::disallowed_methods,
            reason = "one clock read per connection, not per byte"
        )]
        let started = Instant::now();
        let down = Side::new(core.poller(), down);
        let end = match route(core, &down, &peer, &started).await {
            Ok(routed) => relay_routed(core, &down, routed, &peer, &started).await,
            Err(end) => end,
        };
        stats.end(end);
        stats.listeners[li].active.dec();
        core.live.set(core.live.get() - 1);
        drop(permits);
        if let Some(b) = core.balance() {
            b.ended(core.index);
        }
    }
}

/// A connection routed and connected, its hello forwarded: what the relay and the access log need.
struct Routed<'c> {
    up: Side<'c>,
    upstream: SocketAddr,
    attempts: u32,
    /// The table it was routed by, and the route's id there (one past the table's: the hook's).
    snapshot: Arc<Snapshot>,
    route_id: usize,
    sni: Option<String>,
    alpn: String,
    /// Bytes of the hello's records, already forwarded.
    hello_bytes: usize,
}

/// Relays a routed connection, then writes its access-log line.
#[allow(
    clippy::manual_async_fn,
    reason = "an `async fn` would hold each argument twice in its future"
)]
fn relay_routed<'a>(
    core: &'a Core,
    down: &'a Side<'a>,
    routed: Routed<'a>,
    peer: &'a Option<SocketAddr>,
    started: &'a Instant,
) -> impl Future<Output = End> + 'a {
    // Not an `async fn`, for the reason `handle` gives.
    async move {
        let (peer, started) = (*peer, *started);
        let stats = core.stats();
        let settings = &routed.snapshot.settings;
        let with = Relay {
            pipes: &core.pipes,
            to_upstream: &stats.bytes_to_upstream,
            to_downstream: &stats.bytes_to_downstream,
            splice_fallbacks: &stats.splice_fallbacks,
            mode: settings.relay,
            idle: settings.idle_timeout(),
            deadline: settings.max_connection_duration().map(|d| started + d),
        };
        let mut outcome = relay::relay(down, &routed.up, &with).await;
        outcome.to_upstream += routed.hello_bytes as u64;
        core.endpoint_closed(routed.upstream);
        stats.duration.observe(started.elapsed().as_secs_f64());
        let pattern = routed
            .snapshot
            .table
            .routes()
            .get(routed.route_id)
            .map_or(HOOK_ROUTE, |r| r.pattern.as_str());
        tracing::info!(
            target: "meshgate::access",
            peer = ?peer,
            sni = routed.sni.as_deref().unwrap_or(""),
            alpn = %routed.alpn,
            route = %pattern,
            upstream = %routed.upstream,
            attempts = routed.attempts,
            bytes_to_upstream = outcome.to_upstream,
            bytes_to_downstream = outcome.to_downstream,
            duration_ms = started.elapsed().as_millis() as u64,
            end = outcome.end.label(),
            "relayed"
        );
        outcome.end
    }
}

/// The pattern a connection routed by the hook is logged and counted under.
const HOOK_ROUTE: &str = "<hook>";

/// Reads the hello, routes it, connects upstream and forwards the hello; how it ended otherwise.
async fn route<'c>(
    core: &'c Core,
    down: &Side<'_>,
    peer: &Option<SocketAddr>,
    started: &Instant,
) -> Result<Routed<'c>, End> {
    let (peer, started) = (*peer, *started);
    let stats = core.stats();
    let snapshot = core.snapshot();
    let settings = &snapshot.settings;

    // 1. The ClientHello, under one total deadline.
    let mut reader = HelloReader::new(Limits::with_max_hello_bytes(
        settings.max_client_hello_bytes,
    ));
    let hello = match within(
        settings.hello_timeout(),
        read_hello(core, down, &mut reader),
    )
    .await
    .unwrap_or(Err(HelloFailure::Timeout))
    {
        Ok(h) => h,
        Err(failure) => {
            let (outcome, detail) = match &failure {
                HelloFailure::Rejected(r) => (HelloOutcome::rejected(r), r.to_string()),
                HelloFailure::Timeout => (
                    HelloOutcome::Timeout,
                    "no complete ClientHello in time".to_owned(),
                ),
                HelloFailure::Eof => (
                    HelloOutcome::Eof,
                    "client closed before a complete ClientHello".to_owned(),
                ),
                HelloFailure::Io(e) => (HelloOutcome::Eof, e.to_string()),
            };
            stats.hello(outcome);
            if matches!(failure, HelloFailure::Eof) && reader.buffered().is_empty() {
                // Connected and closed without a byte: a TCP health check (Consul's every 10 s) or a
                // port probe. Counted like any other, logged only at debug.
                tracing::debug!(target: "meshgate::access", peer = ?peer, outcome = outcome.label(), detail = %detail, end = End::HelloFailed.label(), "connection closed without a byte");
            } else {
                tracing::info!(target: "meshgate::access", peer = ?peer, outcome = outcome.label(), detail = %detail, end = End::HelloFailed.label(), "connection refused");
            }
            return Err(End::HelloFailed);
        }
    };
    stats.hello(HelloOutcome::complete(hello.sni.is_some()));
    stats.hello_size.observe(hello.size as f64);

    // 2. The hook, if any, then the table.
    let hooked = match core.hook_decide(hello.sni.as_deref(), &hello.alpn, peer) {
        Some(HookDecision::Deny) => {
            tracing::info!(target: "meshgate::access", peer = ?peer, sni = hello.sni.as_deref().unwrap_or(""), alpn = %hello.alpn_display(), end = End::Denied.label(), "denied by the connection hook");
            return Err(End::Denied);
        }
        Some(HookDecision::Forward(endpoints)) if !endpoints.is_empty() => Some(Route {
            pattern: HOOK_ROUTE.to_owned(),
            groups: vec![EndpointGroup::new(endpoints)],
            lb: LbPolicy::RoundRobin,
            connect_timeout: None,
            source: "connection hook".to_owned(),
        }),
        _ => None,
    };
    let found = match (&hooked, &hello.sni) {
        // One id past the table's: the hook's route gets its own round-robin cursor.
        (Some(r), _) => Some((r, snapshot.table.len())),
        (None, Some(name)) => snapshot.table.lookup(name).route(),
        (None, None) => snapshot.table.no_sni().route(),
    };
    let Some((route, route_id)) = found else {
        tracing::info!(target: "meshgate::access", peer = ?peer, sni = hello.sni.as_deref().unwrap_or(""), alpn = %hello.alpn_display(), end = End::NoRoute.label(), "no route");
        return Err(End::NoRoute);
    };
    core.count_routed(&route.pattern, hello.sni.as_deref());

    // 3. Connect: each endpoint of the plan in turn; safe to retry, nothing was forwarded yet.
    let timeout = route.connect_timeout.unwrap_or(settings.connect_timeout());
    let mut plan = Plan::new(route_id);
    let mut attempts = 0u32;
    // Routes to probed endpoints (other datacenters' gateways) skip those known down; one view for
    // the whole connection, so its plan is consistent.
    let health = (hooked.is_none() && snapshot.is_probed(route_id)).then(|| core.health());
    let first = reader.into_buffered();
    debug_assert!(first.len() >= hello.consumed);
    let (up, upstream) = loop {
        let next = match &health {
            Some(h) => plan.next_with_health(
                route,
                &mut core.lb.borrow_mut(),
                |a| core.active_to(a),
                |a| h.get(a),
            ),
            None => plan.next(route, &mut core.lb.borrow_mut(), |a| core.active_to(a)),
        };
        let Some(addr) = next else {
            if attempts == 0 && health.is_some() {
                stats.known_down.inc();
                tracing::info!(target: "meshgate::access", peer = ?peer, sni = hello.sni.as_deref().unwrap_or(""), route = %route.pattern, attempts, end = End::UpstreamUnavailable.label(), "every upstream is known down");
                return Err(End::UpstreamUnavailable);
            }
            tracing::info!(target: "meshgate::access", peer = ?peer, sni = hello.sni.as_deref().unwrap_or(""), route = %route.pattern, attempts, end = End::UpstreamUnavailable.label(), "all upstreams failed");
            return Err(End::UpstreamUnavailable);
        };
        attempts += 1;
        stats.connect_attempts.inc();
        match connect(core, addr, timeout, &first).await {
            Ok(s) => break (s, addr),
            Err(e) => {
                stats.connect_failures.inc();
                if e.kind() == io::ErrorKind::TimedOut {
                    stats.connect_timeouts.inc();
                }
                tracing::debug!(upstream = %addr, error = %e, "upstream connect failed");
            }
        }
    };
    core.endpoint_opened(upstream);
    // Bounded like the connect it follows: an upstream that accepts but never reads (a zero window)
    // must not hold the connection for the idle timeout.
    let written = within(
        settings.connect_timeout(),
        relay::write_all(&up.side, &first[up.sent..]),
    )
    .await;
    if let Some(Err(_)) | None = written {
        let error = written.map_or_else(
            || format!("not taken within {:?}", settings.connect_timeout()),
            |r| r.err().map(|e| e.to_string()).unwrap_or_default(),
        );
        tracing::debug!(%error, "writing the ClientHello upstream failed");
        let _ = sys::set_linger_zero(down.fd());
        core.endpoint_closed(upstream);
        stats.duration.observe(started.elapsed().as_secs_f64());
        tracing::info!(target: "meshgate::access", peer = ?peer, sni = hello.sni.as_deref().unwrap_or(""), alpn = %hello.alpn_display(), route = %route.pattern, upstream = %upstream, attempts, duration_ms = started.elapsed().as_millis() as u64, end = End::UpstreamError.label(), "the upstream did not take the ClientHello");
        return Err(End::UpstreamError);
    }
    stats.bytes_to_upstream.add(first.len() as u64);
    let alpn = hello.alpn_display();
    Ok(Routed {
        up: up.side,
        upstream,
        attempts,
        snapshot,
        route_id,
        sni: hello.sni,
        alpn,
        hello_bytes: hello.consumed,
    })
}

/// An upstream socket whose connect ended, and how much of the first bytes it already took.
struct Connected<'c> {
    side: Side<'c>,
    sent: usize,
}

/// Connects to `addr` within `timeout`, waiting on the core's readiness set, and sends what it can of
/// `first` (the ClientHello).
///
/// To a loopback address the send is tried right after `connect` returns: the kernel runs the whole
/// handshake inside the `connect` call there, so the socket takes the bytes at once and needs no wait
/// for "writable" (an `epoll_ctl` to arm it, a turn of the set to report it and one to disarm it). A
/// socket still connecting refuses with `EAGAIN` and is waited for as usual; one whose connect already
/// failed returns its error, a connect failure like any other (nothing was sent). To any other address
/// a connect takes at least a round trip, so the send could only fail: it is not tried.
async fn connect<'c>(
    core: &'c Core,
    addr: SocketAddr,
    timeout: Duration,
    first: &[u8],
) -> io::Result<Connected<'c>> {
    let fd = sys::connect_start(addr)?;
    if addr.ip().is_loopback() {
        match sys::send(fd.as_fd(), first) {
            Ok(sent) => {
                return Ok(Connected {
                    side: Side::new(core.poller(), fd),
                    sent,
                })
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let side = Side::connecting(core.poller(), fd);
    let connected = match within(timeout, side.writable()).await {
        None => Err(io::ErrorKind::TimedOut.into()),
        Some(Err(e)) => Err(e),
        // A failed connect is reported as an error or hang-up; only then ask the socket which.
        Some(Ok(())) if side.may_have_failed() => sys::connect_result(side.fd()),
        Some(Ok(())) => Ok(()),
    };
    connected.map(|()| Connected { side, sent: 0 })
}

/// Reads until the reader has a whole ClientHello (or refuses the bytes).
async fn read_hello(
    core: &Core,
    down: &Side<'_>,
    reader: &mut HelloReader,
) -> Result<ClientHello, HelloFailure> {
    loop {
        // The scratch buffer is per core and never held across an await.
        let read = {
            let mut scratch = core.scratch.borrow_mut();
            match sys::recv(down.fd(), &mut scratch) {
                Ok(0) => return Err(HelloFailure::Eof),
                Ok(n) => Some(reader.feed(&scratch[..n])),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(HelloFailure::Io(e)),
            }
        };
        match read {
            Some(Ok(Progress::Done(hello))) => return Ok(hello),
            Some(Ok(Progress::NeedMore)) => {}
            Some(Err(reject)) => return Err(HelloFailure::Rejected(reject)),
            None => down.readable().await.map_err(HelloFailure::Io)?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, from its type alone (nothing is made or run).
    fn future_size<A, F: std::future::Future>(_: &impl FnOnce(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A connection's task is its whole memory in the gateway besides its two sockets' slots: an idle
    /// connection costs about this plus ~1 KB (measured per connection in `meshgate-bench`). Guarded
    /// here because the compiler lays futures out silently: an `async fn` holding its arguments twice,
    /// or a combinator holding its future twice, each cost this task 200–300 bytes before.
    #[test]
    fn a_connection_task_stays_within_its_budget() {
        let task = |(core, fd, peer, li, permits): (
            Rc<Core>,
            OwnedFd,
            Option<SocketAddr>,
            usize,
            crate::worker::Permits,
        )| handle(core, fd, peer, li, permits);
        let size = future_size(&task);
        assert!(
            size <= 1_536,
            "a connection's task is {size} bytes (budget 1,536)"
        );
    }
}
