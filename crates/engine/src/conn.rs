//! One downstream connection, start to end: read the ClientHello under a total deadline, route it,
//! connect upstream (retrying and failing over while nothing has been forwarded), forward the buffered
//! hello, relay, and write one access-log line.

use crate::cores::within;
use crate::hook::HookDecision;
use crate::poller::Side;
use crate::relay::{self, Outcome, Relay};
use crate::state::Core;
use crate::stats::{End, HelloOutcome};
use crate::sys;
use meshgate_route::{EndpointGroup, LbPolicy, Plan, Route};
use meshgate_sni::{ClientHello, HelloReader, Limits, Progress, Reject};
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// How the ClientHello phase ended without a hello.
enum HelloFailure {
    Rejected(Reject),
    Timeout,
    Eof,
    Io(io::Error),
}

/// Serves one accepted connection on listener `li`.
pub(crate) async fn handle(core: &Core, down: OwnedFd, peer: Option<SocketAddr>, li: usize) {
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
    let end = serve(core, &down, peer, started).await;
    stats.end(end);
    stats.listeners[li].active.dec();
    core.live.set(core.live.get() - 1);
}

async fn serve(core: &Core, down: &Side<'_>, peer: Option<SocketAddr>, started: Instant) -> End {
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
            return End::HelloFailed;
        }
    };
    stats.hello(HelloOutcome::complete(hello.sni.is_some()));
    stats.hello_size.observe(hello.size as f64);

    // 2. The hook, if any, then the table.
    let hooked = match core.hook_decide(hello.sni.as_deref(), &hello.alpn, peer) {
        Some(HookDecision::Deny) => {
            tracing::info!(target: "meshgate::access", peer = ?peer, sni = hello.sni.as_deref().unwrap_or(""), alpn = %hello.alpn_display(), end = End::Denied.label(), "denied by the connection hook");
            return End::Denied;
        }
        Some(HookDecision::Forward(endpoints)) if !endpoints.is_empty() => Some(Route {
            pattern: "<hook>".to_owned(),
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
        return End::NoRoute;
    };
    core.count_routed(&route.pattern, hello.sni.as_deref());

    // 3. Connect: each endpoint of the plan in turn; safe to retry, nothing was forwarded yet.
    let timeout = route.connect_timeout.unwrap_or(settings.connect_timeout());
    let mut plan = Plan::new(route_id);
    let mut attempts = 0u32;
    // Routes to probed endpoints (other datacenters' gateways) skip those known down; one view for
    // the whole connection, so its plan is consistent.
    let health = (hooked.is_none() && snapshot.is_probed(route_id)).then(|| core.health());
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
                return End::UpstreamUnavailable;
            }
            tracing::info!(target: "meshgate::access", peer = ?peer, sni = hello.sni.as_deref().unwrap_or(""), route = %route.pattern, attempts, end = End::UpstreamUnavailable.label(), "all upstreams failed");
            return End::UpstreamUnavailable;
        };
        attempts += 1;
        stats.connect_attempts.inc();
        match connect(core, addr, timeout).await {
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
    let outcome = forward(core, down, &up, reader, &hello, settings, started).await;
    core.endpoint_closed(upstream);
    stats.duration.observe(started.elapsed().as_secs_f64());
    tracing::info!(
        target: "meshgate::access",
        peer = ?peer,
        sni = hello.sni.as_deref().unwrap_or(""),
        alpn = %hello.alpn_display(),
        route = %route.pattern,
        upstream = %upstream,
        attempts,
        bytes_to_upstream = outcome.to_upstream,
        bytes_to_downstream = outcome.to_downstream,
        duration_ms = started.elapsed().as_millis() as u64,
        end = outcome.end.label(),
        "relayed"
    );
    outcome.end
}

/// Connects to `addr` within `timeout`, waiting on the core's readiness set.
async fn connect<'c>(core: &'c Core, addr: SocketAddr, timeout: Duration) -> io::Result<Side<'c>> {
    let up = Side::connecting(core.poller(), sys::connect_start(addr)?);
    match within(timeout, up.writable()).await {
        None => Err(io::ErrorKind::TimedOut.into()),
        Some(Err(e)) => Err(e),
        // A failed connect is reported as an error or hang-up; only then ask the socket which.
        Some(Ok(())) if up.may_have_failed() => sys::connect_result(up.fd()).map(|()| up),
        Some(Ok(())) => Ok(up),
    }
}

/// Sends the buffered hello upstream, then relays.
async fn forward(
    core: &Core,
    down: &Side<'_>,
    up: &Side<'_>,
    reader: HelloReader,
    hello: &ClientHello,
    settings: &meshgate_config::GatewaySettings,
    started: Instant,
) -> Outcome {
    let first = reader.into_buffered();
    debug_assert!(first.len() >= hello.consumed);
    // Bounded like the connect it follows: an upstream that accepts but never reads (a zero window)
    // must not hold the connection for the idle timeout.
    let written = within(settings.connect_timeout(), relay::write_all(up, &first)).await;
    if let Some(Err(_)) | None = written {
        let error = written.map_or_else(
            || format!("not taken within {:?}", settings.connect_timeout()),
            |r| r.err().map(|e| e.to_string()).unwrap_or_default(),
        );
        tracing::debug!(%error, "writing the ClientHello upstream failed");
        let _ = sys::set_linger_zero(down.fd());
        return Outcome::ended(End::UpstreamError);
    }
    core.stats().bytes_to_upstream.add(first.len() as u64);
    drop(first);
    let deadline = settings.max_connection_duration().map(|d| started + d);
    let stats = core.stats();
    let with = Relay {
        pipes: &core.pipes,
        to_upstream: &stats.bytes_to_upstream,
        to_downstream: &stats.bytes_to_downstream,
        splice_fallbacks: &stats.splice_fallbacks,
        mode: settings.relay,
        idle: settings.idle_timeout(),
        deadline,
    };
    let mut outcome = relay::relay(down, up, &with).await;
    outcome.to_upstream += hello.consumed as u64;
    outcome
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
