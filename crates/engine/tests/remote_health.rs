//! The remote gateways' health at the gateway: a dc2 gateway that dies is probed down within a bounded
//! time, connections then skip it (no connect is tried on it: the attempt counter proves it) and fail
//! over to the next group or are refused at once, and it is used again once it is back. Also measures
//! what probing costs (printed, not asserted).

// Plain threads and std sockets play the remote gateways and the client; the engine runs its cores.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;
use common::free_port;
use meshgate_config::Config;
use meshgate_engine::Engine;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const TD: &str = "td.consul";

fn name(dc: &str) -> String {
    format!("api.default.{dc}.internal.{TD}")
}

/// A stand-in for a remote gateway: accepts on `addr`, reports each connection's first bytes with its
/// tag, and closes its listener (connects are then refused) when stopped.
struct FakeGateway {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeGateway {
    fn start(addr: SocketAddr, tag: &'static str, seen: mpsc::Sender<&'static str>) -> FakeGateway {
        let l = TcpListener::bind(addr).expect("bind");
        let addr = l.local_addr().expect("addr");
        l.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        let seen = seen.clone();
                        std::thread::spawn(move || {
                            let _ = s.set_nonblocking(false);
                            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                            let mut buf = [0u8; 1];
                            // Probes send nothing; a routed connection sends its hello.
                            if matches!(s.read(&mut buf), Ok(1)) {
                                let _ = seen.send(tag);
                                let _ = s.write_all(tag.as_bytes());
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        FakeGateway {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// Closes the listener; returns once it is closed.
    fn kill(mut self) -> SocketAddr {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.addr
    }
}

impl Drop for FakeGateway {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn start(routes: &str, probe: &str) -> (Engine, u16) {
    let port = free_port();
    let text = format!(
        "[gateway]\ndatacenter = \"dc1\"\nlisten = [\"127.0.0.1:{port}\"]\nworkers = 1\nconnect_timeout_ms = 2000\n\n[gateway.probe]\n{probe}\n{routes}"
    );
    let config = Config::parse(&text, Path::new("gw.toml")).expect("config");
    let table = config.route_table().expect("table");
    (
        Engine::start(config.gateway.clone(), table).expect("engine"),
        port,
    )
}

/// Sends a ClientHello for `sni`; the upstream's answer (its tag), or `None` when closed unanswered.
fn call(port: u16, sni: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(&meshgate_sni::synth::HelloSpec::new(Some(sni)).build())
        .expect("hello");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    (!answer.is_empty()).then_some(answer)
}

fn series(engine: &Engine, prefix: &str) -> Option<f64> {
    engine
        .metrics()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
}

fn up_series(dc: &str, addr: SocketAddr) -> String {
    format!("meshgate_remote_gateway_up{{datacenter=\"{dc}\",endpoint=\"{addr}\"}}")
}

/// Polls `f` every 5 ms for at most `limit`.
fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

const PROBE: &str =
    "interval_ms = 100\nrecheck_ms = 20\ntimeout_ms = 200\ndown_after = 2\nup_after = 2\n";

#[test]
fn a_dead_remote_gateway_is_skipped_then_used_again_when_it_returns() {
    let (tx, seen) = mpsc::channel();
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let gw2 = FakeGateway::start(any, "dc2", tx.clone());
    let gw3 = FakeGateway::start(any, "dc3", tx.clone());
    let dead4 = FakeGateway::start(any, "dc4", tx.clone()).kill();
    let routes = format!(
        "[[routes]]\nsni = \"*.dc2.internal.{TD}\"\nendpoints = [\"{}\"]\nfailover = [[\"{}\"]]\n\n\
         [[routes]]\nsni = \"*.dc3.internal.{TD}\"\nendpoints = [\"{}\"]\n\n\
         [[routes]]\nsni = \"*.dc4.internal.{TD}\"\nendpoints = [\"{dead4}\"]\n",
        gw2.addr, gw3.addr, gw3.addr
    );
    let (engine, port) = start(&routes, PROBE);
    let limit = Duration::from_secs(10);
    wait_for(limit, "dc2 up", || {
        (series(&engine, &up_series("dc2", gw2.addr))? == 1.0).then_some(())
    });
    assert_eq!(call(port, &name("dc2")).as_deref(), Some("dc2"));
    let rtt = format!(
        "meshgate_remote_gateway_rtt_seconds{{datacenter=\"dc2\",endpoint=\"{}\"}}",
        gw2.addr
    );
    assert!(series(&engine, &rtt).is_some_and(|s| s > 0.0 && s < 1.0));

    // dc4's only gateway is dead from the start: refused at once, no connect tried.
    wait_for(limit, "dc4 down", || {
        (series(&engine, &up_series("dc4", dead4))? == 0.0).then_some(())
    });
    let attempts = series(&engine, "meshgate_upstream_connect_attempts_total").unwrap_or(0.0);
    let t = Instant::now();
    assert_eq!(call(port, &name("dc4")), None);
    println!(
        "a dc4 name, every gateway known down: refused in {:?}",
        t.elapsed()
    );
    assert_eq!(
        series(&engine, "meshgate_upstream_connect_attempts_total"),
        Some(attempts),
        "no connect may be tried on an endpoint known dead"
    );
    assert_eq!(
        series(&engine, "meshgate_upstream_known_down_total"),
        Some(1.0)
    );

    // dc2's gateway dies: marked down in a bounded time, then dc2 names go to the failover group
    // (dc3) with a single connect attempt.
    let addr2 = gw2.kill();
    let killed = Instant::now();
    wait_for(limit, "dc2 down", || {
        (series(&engine, &up_series("dc2", addr2))? == 0.0).then_some(())
    });
    println!(
        "dc2's gateway killed → marked down in {:?}",
        killed.elapsed()
    );
    let change = series(
        &engine,
        &format!("meshgate_remote_gateway_last_change_timestamp_seconds{{datacenter=\"dc2\",endpoint=\"{addr2}\"}}"),
    );
    assert!(change.is_some_and(|t| t > 1.0e9), "{change:?}");
    while seen.try_recv().is_ok() {}
    let attempts = series(&engine, "meshgate_upstream_connect_attempts_total").unwrap_or(0.0);
    let t = Instant::now();
    assert_eq!(call(port, &name("dc2")).as_deref(), Some("dc3"));
    println!(
        "a dc2 name with dc2 down: answered by dc3 in {:?}",
        t.elapsed()
    );
    assert_eq!(
        series(&engine, "meshgate_upstream_connect_attempts_total"),
        Some(attempts + 1.0),
        "straight to the failover group"
    );

    // Back on the same address: marked up after `up_after` probes, and used again.
    let gw2 = FakeGateway::start(addr2, "dc2", tx.clone());
    let back = Instant::now();
    wait_for(limit, "dc2 up again", || {
        (series(&engine, &up_series("dc2", gw2.addr))? == 1.0).then_some(())
    });
    println!(
        "dc2's gateway restarted → marked up in {:?}",
        back.elapsed()
    );
    assert_eq!(call(port, &name("dc2")).as_deref(), Some("dc2"));
    let ok = series(
        &engine,
        &format!("meshgate_remote_gateway_probes_total{{datacenter=\"dc2\",endpoint=\"{addr2}\",result=\"ok\"}}"),
    );
    assert!(ok.is_some_and(|n| n >= 3.0), "{ok:?}");
    engine.shutdown();
    let _ = engine.wait();
    drop(gw3);
}

#[test]
fn probing_disabled_probes_nothing_and_tries_every_endpoint() {
    let (tx, _seen) = mpsc::channel();
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let dead = FakeGateway::start(any, "dead", tx.clone()).kill();
    let gw3 = FakeGateway::start(any, "dc3", tx);
    let routes = format!(
        "[[routes]]\nsni = \"*.dc2.internal.{TD}\"\nendpoints = [\"{dead}\"]\nfailover = [[\"{}\"]]\n",
        gw3.addr
    );
    let (engine, port) = start(&routes, "enabled = false\n");
    let attempts = series(&engine, "meshgate_upstream_connect_attempts_total").unwrap_or(0.0);
    assert_eq!(call(port, &name("dc2")).as_deref(), Some("dc3"));
    assert_eq!(
        series(&engine, "meshgate_upstream_connect_attempts_total"),
        Some(attempts + 2.0),
        "the dead endpoint is tried first when nothing is probed"
    );
    assert!(!engine
        .metrics()
        .render()
        .contains("meshgate_remote_gateway_"));
    engine.shutdown();
    let _ = engine.wait();
}

/// On-CPU nanoseconds of this process's threads named `name` (from /proc/self/task/*/schedstat).
fn thread_cpu_ns(name: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .filter_map(|t| {
            let s = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
            s.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

/// What probing costs: probes per second per remote gateway and CPU per probe, over a bounded run with
/// a short interval (printed for docs/failover.md; nothing is asserted about timing).
#[test]
fn probing_cost_is_measured() {
    let (tx, _seen) = mpsc::channel();
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let gws: Vec<FakeGateway> = (0..4)
        .map(|_| FakeGateway::start(any, "gw", tx.clone()))
        .collect();
    let endpoints: Vec<String> = gws.iter().map(|g| format!("\"{}\"", g.addr)).collect();
    let routes = format!(
        "[[routes]]\nsni = \"*.dc2.internal.{TD}\"\nendpoints = [{}]\n",
        endpoints.join(", ")
    );
    for (interval, n) in [(10u64, 1usize), (10, 4)] {
        let routes = if n == 1 {
            format!(
                "[[routes]]\nsni = \"*.dc2.internal.{TD}\"\nendpoints = [{}]\n",
                endpoints[0]
            )
        } else {
            routes.clone()
        };
        let (engine, _port) = start(&routes, &format!("interval_ms = {interval}\n"));
        let probes = |e: &Engine| -> f64 {
            e.metrics()
                .render()
                .lines()
                .filter(|l| l.starts_with("meshgate_remote_gateway_probes_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        wait_for(Duration::from_secs(5), "first probes", || {
            (probes(&engine) >= n as f64).then_some(())
        });
        let (p0, c0, t0) = (
            probes(&engine),
            thread_cpu_ns("meshgate-probe"),
            Instant::now(),
        );
        std::thread::sleep(Duration::from_secs(2));
        let (p1, c1, secs) = (
            probes(&engine),
            thread_cpu_ns("meshgate-probe"),
            t0.elapsed().as_secs_f64(),
        );
        let done = p1 - p0;
        println!(
            "probing {n} endpoint(s) every {interval} ms: {:.1} probes/s per endpoint; prober CPU {:.1} µs per probe (long-lived prober thread; per-probe threads of a parallel round are not counted)",
            done / secs / n as f64,
            (c1.saturating_sub(c0)) as f64 / 1e3 / done.max(1.0),
        );
        engine.shutdown();
        let _ = engine.wait();
    }
}
