//! Health of the other datacenters' gateways this gateway routes to. Owns: which endpoints are probed
//! (the first group of every `*.<dc>.internal.<td>` route of a datacenter other than ours), the prober
//! thread (one per gateway, off the data-plane cores: a TCP connect per endpoint per interval, closed
//! at once without a byte), each endpoint's verdict ([`tracker`]: hysteresis, smoothed RTT), the
//! liveness view the cores route by (published like tables: an immutable snapshot and a generation
//! bump, read with one atomic load per connection), and the report `/metrics` renders.
//!
//! Why a TCP connect and not a ClientHello: it proves what a connection needs first (the far gateway's
//! listener takes connections), costs the far gateway nothing (meshgate's listeners use
//! `TCP_DEFER_ACCEPT`, and a connect ended by a reset without a byte never wakes its cores; it is the
//! same check Consul registers for a gateway), needs no name the far side must answer, and never sends
//! a byte an upstream could see. A ClientHello would also prove the far process reads, but it must
//! name something the far gateway either forwards (a connection to one of its services per probe) or
//! refuses (indistinguishable from a failure).
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "the prober is its own thread, never a data-plane core: a blocking connect bounded by \
              the probe timeout, and clock reads once per probe"
)]

pub mod tracker;

use arc_swap::ArcSwap;
use meshgate_config::ProbeSettings;
use meshgate_route::{Liveness, RouteTable};
use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracker::{State, Thresholds, Tracker};

/// Probes run in parallel, at most this many at once (one short-lived thread each).
const MAX_PARALLEL: usize = 32;
/// How long the prober waits when it has nothing to probe (a command wakes it at once).
const IDLE: Duration = Duration::from_secs(3600);

/// One probed endpoint and the datacenter whose gateway it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The datacenter named by the route.
    pub datacenter: String,
    /// The endpoint.
    pub addr: SocketAddr,
}

/// The datacenter a `*.<dc>.internal.<td>` (or `*.<partition>.<dc>.internal-v1.<td>`) pattern names.
fn remote_datacenter(pattern: &str) -> Option<&str> {
    let rest = pattern.strip_prefix("*.")?;
    let labels: Vec<&str> = rest.splitn(4, '.').collect();
    match labels.as_slice() {
        [dc, "internal", _td, ..] => Some(dc),
        [_partition, dc, "internal-v1", _td] => Some(dc),
        _ => None,
    }
}

/// The endpoints to probe: the first group of every route for another datacenter's names (its gateways;
/// later groups are failover targets, probed through their own datacenter's route). An endpoint in two
/// datacenters' routes is probed once, under the first datacenter in name order.
pub fn targets(table: &RouteTable, local_dc: &str) -> Vec<Target> {
    let mut out: Vec<Target> = table
        .routes()
        .iter()
        .filter_map(|r| {
            let dc = remote_datacenter(&r.pattern)?;
            (dc != local_dc).then(|| (dc, r.groups.first()))
        })
        .flat_map(|(dc, g)| {
            g.into_iter().flat_map(move |g| {
                g.endpoints.iter().map(move |&addr| Target {
                    datacenter: dc.to_owned(),
                    addr,
                })
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.datacenter, a.addr).cmp(&(&b.datacenter, b.addr)));
    let mut seen = HashSet::new();
    out.retain(|t| seen.insert(t.addr));
    out
}

/// Per route id: whether any of its endpoints is probed (only those routes' plans consult liveness,
/// so a route to local instances pays nothing).
pub fn probed_routes(table: &RouteTable, targets: &[Target]) -> Vec<bool> {
    let probed: HashSet<SocketAddr> = targets.iter().map(|t| t.addr).collect();
    table
        .routes()
        .iter()
        .map(|r| {
            r.groups
                .iter()
                .any(|g| g.endpoints.iter().any(|e| probed.contains(e)))
        })
        .collect()
}

/// The liveness of probed endpoints, as the cores route by it. Immutable; the prober publishes a new one.
#[derive(Debug, Default)]
pub struct HealthView {
    map: HashMap<SocketAddr, Liveness>,
}

impl HealthView {
    /// An endpoint's liveness (`Unknown` when not probed).
    pub fn get(&self, addr: &SocketAddr) -> Liveness {
        self.map.get(addr).copied().unwrap_or_default()
    }
}

/// One probed endpoint, for `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointReport {
    /// The datacenter whose gateway it is.
    pub datacenter: String,
    /// The endpoint.
    pub endpoint: SocketAddr,
    /// Its state.
    pub state: State,
    /// Smoothed connect time.
    pub rtt: Option<Duration>,
    /// When the state last changed, seconds since the epoch.
    pub last_change: Option<f64>,
    /// Probes that connected.
    pub ok: u64,
    /// Probes that failed or timed out.
    pub failed: u64,
}

/// Every probed endpoint, for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct ProbeReport {
    /// In datacenter, then address order.
    pub endpoints: Vec<EndpointReport>,
}

enum Command {
    Configure(Vec<Target>, ProbeSettings),
}

/// The prober thread's handle: tell it the targets; dropping it ends the thread.
#[derive(Debug)]
pub(crate) struct Prober {
    tx: Sender<Command>,
}

impl Prober {
    /// Starts the thread. `publish` hands each new view to the cores; `report` is what `/metrics` reads.
    pub(crate) fn start(
        publish: Box<dyn Fn(HealthView) + Send>,
        report: Arc<ArcSwap<ProbeReport>>,
    ) -> std::io::Result<Prober> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("meshgate-probe".into())
            .spawn(move || run(&rx, &*publish, &report))?;
        Ok(Prober { tx })
    }

    /// Probe these targets with these settings from now on (verdicts of kept endpoints stay).
    pub(crate) fn configure(&self, targets: Vec<Target>, settings: ProbeSettings) {
        let _ = self.tx.send(Command::Configure(targets, settings));
    }
}

struct Entry {
    target: Target,
    tracker: Tracker,
    due: Instant,
}

fn run(rx: &Receiver<Command>, publish: &dyn Fn(HealthView), report: &ArcSwap<ProbeReport>) {
    let mut settings = ProbeSettings::default();
    let mut entries: Vec<Entry> = Vec::new();
    loop {
        let now = Instant::now();
        let wait = entries
            .iter()
            .map(|e| e.due.saturating_duration_since(now))
            .min()
            .unwrap_or(IDLE);
        match rx.recv_timeout(wait) {
            Ok(Command::Configure(targets, s)) => {
                let targets = if s.enabled { targets } else { Vec::new() };
                let mut old: HashMap<SocketAddr, Entry> =
                    entries.drain(..).map(|e| (e.target.addr, e)).collect();
                entries = targets
                    .into_iter()
                    .map(|target| match old.remove(&target.addr) {
                        Some(e) => Entry { target, ..e },
                        None => Entry {
                            target,
                            tracker: Tracker::new(),
                            due: now,
                        },
                    })
                    .collect();
                settings = s;
                publish_all(&entries, publish, report);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
        }
        let now = Instant::now();
        let due: Vec<usize> = (0..entries.len())
            .filter(|&i| entries[i].due <= now)
            .collect();
        if due.is_empty() {
            continue;
        }
        let addrs: Vec<SocketAddr> = due.iter().map(|&i| entries[i].target.addr).collect();
        let results = probe_all(&addrs, settings.timeout());
        let after = Instant::now();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let thresholds = Thresholds {
            down_after: settings.down_after,
            up_after: settings.up_after,
        };
        for (&i, result) in due.iter().zip(results) {
            let e = &mut entries[i];
            if e.tracker.record(result, thresholds, wall) {
                let (dc, addr) = (&e.target.datacenter, e.target.addr);
                match e.tracker.state() {
                    State::Down => {
                        tracing::warn!(target: "meshgate::probe", datacenter = %dc, endpoint = %addr, failures = settings.down_after, "remote gateway down: connections skip it")
                    }
                    _ => {
                        tracing::info!(target: "meshgate::probe", datacenter = %dc, endpoint = %addr, rtt_ms = e.tracker.rtt().map_or(0.0, |r| r.as_secs_f64() * 1e3), "remote gateway up")
                    }
                }
            }
            e.due = after
                + if e.tracker.deciding() {
                    settings.recheck()
                } else {
                    settings.interval()
                };
        }
        publish_all(&entries, publish, report);
    }
}

fn publish_all(entries: &[Entry], publish: &dyn Fn(HealthView), report: &ArcSwap<ProbeReport>) {
    publish(HealthView {
        map: entries
            .iter()
            .map(|e| (e.target.addr, e.tracker.liveness()))
            .collect(),
    });
    report.store(Arc::new(ProbeReport {
        endpoints: entries
            .iter()
            .map(|e| EndpointReport {
                datacenter: e.target.datacenter.clone(),
                endpoint: e.target.addr,
                state: e.tracker.state(),
                rtt: e.tracker.rtt(),
                last_change: e.tracker.last_change(),
                ok: e.tracker.ok,
                failed: e.tracker.failed,
            })
            .collect(),
    }));
}

/// One probe: `Some(connect time)` when a TCP connection was established within `timeout`. Closed with a
/// reset, not a FIN: a far gateway's `TCP_DEFER_ACCEPT` listener hands a connection to its core when
/// data *or a FIN* arrives (a FIN-closed probe was accepted, counted and read there, seen as an extra
/// accepted connection per probe in the namespace test); a reset drops it in the kernel unaccepted.
fn probe(addr: SocketAddr, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    let stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    let rtt = start.elapsed();
    let socket = socket2::Socket::from(stream);
    let _ = socket.set_linger(Some(Duration::ZERO));
    drop(socket);
    Some(rtt)
}

/// Probes every address, in parallel (a round lasts at most about one timeout).
fn probe_all(addrs: &[SocketAddr], timeout: Duration) -> Vec<Option<Duration>> {
    if let [one] = addrs {
        return vec![probe(*one, timeout)];
    }
    let mut out = Vec::with_capacity(addrs.len());
    for chunk in addrs.chunks(MAX_PARALLEL) {
        std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|&a| {
                    std::thread::Builder::new()
                        .name("meshgate-probe".into())
                        .spawn_scoped(s, move || probe(a, timeout))
                        .map_err(|_| a)
                })
                .collect();
            for h in handles {
                out.push(match h {
                    Ok(h) => h.join().unwrap_or(None),
                    // No thread to be had: probe in line rather than not at all.
                    Err(a) => probe(a, timeout),
                });
            }
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_route::{RouteSpec, RouteTableBuilder};

    fn a(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    fn table() -> RouteTable {
        let mut b = RouteTableBuilder::new();
        let mut dc2 = RouteSpec::new("*.dc2.internal.td.consul", vec![a(2), a(3)]);
        dc2.groups.push(vec![a(30)]);
        b.add(dc2).expect("dc2");
        b.add(RouteSpec::new("*.dc3.internal.td.consul", vec![a(30)]))
            .expect("dc3");
        b.add(RouteSpec::new("*.dc1.internal.td.consul", vec![a(1)]))
            .expect("own dc");
        b.add(RouteSpec::new(
            "api.default.dc1.internal.td.consul",
            vec![a(9)],
        ))
        .expect("local");
        let mut failover = RouteSpec::new("api.default.dc2.internal.td.consul", vec![a(2)]);
        failover.groups.push(vec![a(9)]);
        b.add(failover).expect("exact dc2");
        b.add(RouteSpec::new("*.p1.dc4.internal-v1.td.consul", vec![a(4)]))
            .expect("partition");
        b.build()
    }

    #[test]
    fn probes_the_first_group_of_other_datacenters_routes() {
        let t = table();
        let got: Vec<(String, u16)> = targets(&t, "dc1")
            .into_iter()
            .map(|t| (t.datacenter, t.addr.port()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("dc2".into(), 2),
                ("dc2".into(), 3),
                ("dc3".into(), 30),
                ("dc4".into(), 4)
            ]
        );
        // Routes holding a probed endpoint consult liveness; local ones do not.
        let probed = probed_routes(&t, &targets(&t, "dc1"));
        assert_eq!(probed, vec![true, true, false, false, true, true]);
    }

    #[test]
    fn patterns_that_name_no_remote_datacenter() {
        for p in [
            "api.default.dc2.internal.td.consul",
            "*.default.dc2.internal.td.consul",
            "*.server.dc2.consul",
            "*.example.com",
        ] {
            assert_eq!(remote_datacenter(p), None, "{p}");
        }
        assert_eq!(remote_datacenter("*.dc2.internal.td.consul"), Some("dc2"));
    }
}
