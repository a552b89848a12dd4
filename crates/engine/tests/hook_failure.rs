//! A connection hook is a policy (a deny-list, an export control): when it cannot decide, or cannot be
//! made on a core, the engine must not quietly route around it. A failed call denies the connection
//! unless the hook says to fail open, and a core whose hook cannot be made stops the engine's start.

// Plain threads and std sockets play the client and the backend; the engine under test runs its cores.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;
use common::free_port;
use meshgate_config::Config;
use meshgate_engine::hook::{ConnectionHook, HookDecision, HookFactory, HookVerdict};
use meshgate_engine::{Engine, EngineError};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

const NAME: &str = "api.default.dc1.internal.td.consul";

/// A hook that never manages to decide, with the given failure policy.
struct Broken(Option<HookDecision>);

impl ConnectionHook for Broken {
    fn decide(
        &mut self,
        _: Option<&str>,
        _: &[Vec<u8>],
        _: Option<SocketAddr>,
    ) -> Result<HookVerdict, String> {
        Err("wasm trap: interrupt".into())
    }
    fn on_failure(&self) -> HookDecision {
        self.0.clone().unwrap_or(HookDecision::Deny)
    }
}

/// A backend that reports each connection's first bytes (or nothing, if none arrives).
fn backend() -> (SocketAddr, mpsc::Receiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = vec![0; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            buf.truncate(n);
            if tx.send(buf).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

fn start(
    workers: usize,
    upstream: SocketAddr,
    hook: HookFactory,
) -> Result<(Engine, u16), EngineError> {
    let port = free_port();
    let text = format!(
        "[gateway]\nlisten = [\"127.0.0.1:{port}\"]\nworkers = {workers}\n\n[[routes]]\nsni = \"{NAME}\"\nendpoints = [\"{upstream}\"]\n"
    );
    let config = Config::parse(&text, Path::new("gw.toml")).expect("config");
    let table = config.route_table().expect("table");
    Engine::start_with_hook(config.gateway.clone(), table, Some(hook)).map(|e| (e, port))
}

/// Sends a ClientHello for NAME; true when the gateway closed the connection without an answer.
fn closed_after_hello(port: u16) -> bool {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(&meshgate_sni::synth::HelloSpec::new(Some(NAME)).build())
        .expect("hello");
    let mut byte = [0u8; 1];
    matches!(s.read(&mut byte), Ok(0) | Err(_))
}

fn metric(engine: &Engine, name: &str) -> f64 {
    engine
        .metrics()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn stop(engine: Engine) {
    engine.shutdown();
    let _ = engine.wait();
}

#[test]
fn a_failing_hook_denies_by_default() {
    let (upstream, arrived) = backend();
    let (engine, port) =
        start(1, upstream, Arc::new(|_| Ok(Box::new(Broken(None)) as _))).expect("start");
    assert!(closed_after_hello(port), "denied connections get no answer");
    assert!(
        arrived.recv_timeout(Duration::from_millis(500)).is_err(),
        "nothing may reach the upstream"
    );
    assert_eq!(metric(&engine, "meshgate_hook_failures_total"), 1.0);
    stop(engine);
}

/// A failed call is as slow as the hook's deadline, on the core's only thread: repeating a name that makes
/// the hook fail must not buy a call per connection. The name's next connections are decided by
/// `on_failure` without a call (counted as cache hits), then the hook is asked again.
#[test]
fn a_name_that_made_the_hook_fail_is_not_asked_again_for_a_while() {
    let (upstream, _arrived) = backend();
    let (engine, port) =
        start(1, upstream, Arc::new(|_| Ok(Box::new(Broken(None)) as _))).expect("start");
    let repeat = meshgate_engine::hook::HOOK_FAILURE_REPEAT;
    for _ in 0..=repeat {
        assert!(closed_after_hello(port), "still denied");
    }
    assert_eq!(metric(&engine, "meshgate_hook_failures_total"), 1.0);
    assert_eq!(metric(&engine, "meshgate_hook_calls_total"), 1.0);
    assert_eq!(
        metric(&engine, "meshgate_hook_cache_hits_total"),
        f64::from(repeat)
    );
    // Then the hook is asked again.
    assert!(closed_after_hello(port));
    assert_eq!(metric(&engine, "meshgate_hook_calls_total"), 2.0);
    assert_eq!(metric(&engine, "meshgate_hook_failures_total"), 2.0);
    stop(engine);
}

#[test]
fn a_hook_configured_to_fail_open_lets_the_table_answer() {
    let (upstream, arrived) = backend();
    let (engine, port) = start(
        1,
        upstream,
        Arc::new(|_| Ok(Box::new(Broken(Some(HookDecision::UseTable))) as _)),
    )
    .expect("start");
    let client = std::thread::spawn(move || closed_after_hello(port));
    let first = arrived
        .recv_timeout(Duration::from_secs(10))
        .expect("the table routed it");
    assert_eq!(
        first,
        meshgate_sni::synth::HelloSpec::new(Some(NAME)).build()
    );
    let _ = client.join();
    assert_eq!(metric(&engine, "meshgate_hook_failures_total"), 1.0);
    stop(engine);
}

#[test]
fn a_hook_that_cannot_be_made_on_a_core_stops_the_start() {
    let (upstream, _arrived) = backend();
    let factory: HookFactory = Arc::new(|core| {
        if core == 1 {
            Err("wasm trap: interrupt".into())
        } else {
            Ok(Box::new(Broken(None)) as _)
        }
    });
    match start(2, upstream, factory) {
        Err(EngineError::Hook { core, message }) => {
            assert_eq!(core, 1);
            assert!(message.contains("interrupt"), "{message}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok((engine, _)) => {
            stop(engine);
            panic!("the engine must not start without its hook on every core");
        }
    }
}
