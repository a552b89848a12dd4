//! `meshgate-soak`: the reliability runs behind `docs/reliability.md`, on loopback against the release
//! binary, each printing a Markdown report (also written under `benches/results/`).
//!
//! - `soak [--minutes N]` (default 30): mixed load — new connections, keep-alive echo, bulk transfers with
//!   hash checks, slowloris and junk clients — while the catalog changes every second (an instance flips
//!   between passing and critical) and the config reloads every 10 s (one in ten invalid). Reports bytes
//!   checked and altered, success rates, latency, and the gateway's resident memory, descriptors and
//!   threads sampled every 10 s; the longest new-connection latency per sample window shows a stalled core.
//! - `faults [--seconds N]` (default 20 per phase): the same honest load (new connections and bulk) with
//!   no fault, then beside each fault in turn — a connection hook that loops, traps, allocates without end
//!   or blocks in a host call; a router plugin that loops on reload; upstreams that reset or black-hole;
//!   clients that never read; clients that take every connection slot; SIGTERM in the middle of transfers.
//!   Reports the honest clients' success rate and p99 per phase against the no-fault phase.
//!
//! Usage: `benches/reliability.sh soak|faults [options]` (builds the release binary first).

// Shared by the bench binaries; each uses a part.
#[allow(dead_code)]
mod common;
mod load;

use load::{sni, Gateway, Stop, Tally, TD};
use meshgate_tlskit::{Backend, ClientConfig};
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str, default: u64| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1)?.parse().ok())
            .unwrap_or(default)
    };
    let report = match args.first().map(String::as_str) {
        Some("soak") => soak(Duration::from_secs(60 * value("--minutes", 30))),
        Some("faults") => faults(Duration::from_secs(value("--seconds", 20))),
        _ => {
            eprintln!("usage: meshgate-soak soak [--minutes N] | faults [--seconds N]");
            std::process::exit(2);
        }
    };
    println!("{report}");
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results");
    let _ = std::fs::create_dir_all(&out);
    let file = out.join(format!("{}.md", args[0]));
    std::fs::write(&file, &report).expect("write report");
    eprintln!("written to {}", file.display());
}

fn work_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meshgate-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("catalog")).expect("work dir");
    dir
}

/// Two api instances (the second passing or critical), as Consul sidecar registrations.
fn api_catalog(a: SocketAddr, b: SocketAddr, b_passing: bool) -> String {
    let b_status = if b_passing { "passing" } else { "critical" };
    format!(
        "services = [\n  {{ name = \"api-sidecar-proxy\", id = \"api-1\", kind = \"connect-proxy\", port = {}\n     proxy {{ destination_service_name = \"api\" }}\n     check {{ id = \"api-1-alive\", status = \"passing\" }} }},\n  {{ name = \"api-sidecar-proxy\", id = \"api-2\", kind = \"connect-proxy\", port = {}\n     proxy {{ destination_service_name = \"api\" }}\n     check {{ id = \"api-2-alive\", status = \"{b_status}\" }} }},\n]\n",
        a.port(),
        b.port()
    )
}

fn write_atomic(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn soak_config(backend: SocketAddr, generation: u64) -> String {
    if generation % 10 == 9 {
        // One reload in ten is refused: a type error with a line to name.
        return format!(
            "[gateway]\nlisten = [\"{{listen}}\"]\nadmin = \"{{admin}}\"\nworkers = 2\nhello_timeout_ms = \"soon\"\n\n[[routes]]\nsni = \"reload-{generation}.example\"\nendpoints = [\"{backend}\"]\n"
        );
    }
    format!(
        "[gateway]\ndatacenter = \"dc1\"\nlisten = [\"{{listen}}\"]\nadmin = \"{{admin}}\"\nworkers = 2\nhello_timeout_ms = 3000\nconnect_timeout_ms = 2000\n\n[[routes]]\nsni = \"reload-{generation}.example\"\nendpoints = [\"{backend}\"]\n\n[catalog]\nplugin = \"file-catalog\"\nallow_dirs = [\"catalog\"]\npoll_ms = 250\nconfig = {{ dir = \"catalog\", datacenter = \"dc1\", trust_domain = \"{TD}\" }}\n\n[router]\nplugin = \"consul-router\"\n"
    )
}

struct Sample {
    at_s: u64,
    rss_kib: u64,
    fds: u64,
    threads: u64,
    worst_new_conn_ms: f64,
}

fn soak(length: Duration) -> String {
    let (pki, client) = load::pki();
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let name = sni("api");
    let a = Backend::start("api-1", any, pki.issue(&[&name]).expect("leaf")).expect("api-1");
    let b = Backend::start("api-2", any, pki.issue(&[&name]).expect("leaf")).expect("api-2");
    let dir = work_dir("soak");
    write_atomic(
        &dir.join("catalog/api.hcl"),
        &api_catalog(a.addr(), b.addr(), true),
    );
    let gw = Gateway::start(&dir, &soak_config(a.addr(), 0));
    let hello = meshgate_tlskit::client_hello_bytes(client.clone(), &name).expect("hello bytes");

    let stop = Stop::after(length);
    let tallies: Vec<(&str, Arc<Tally>)> = [
        "new connection",
        "keep-alive round trip",
        "bulk 8+8 MiB",
        "slowloris",
        "junk",
    ]
    .into_iter()
    .map(|k| (k, Arc::new(Tally::default())))
    .collect();
    let mut threads = Vec::new();
    for i in 0..2 {
        let (s, t, c, n) = (
            stop.clone(),
            tallies[0].1.clone(),
            client.clone(),
            name.clone(),
        );
        let addr = gw.listen;
        threads.push(load::spawn(&format!("new-{i}"), move || {
            load::hello_loop(addr, n, c, s, t)
        }));
    }
    for i in 0..2 {
        let (s, t, c, n) = (
            stop.clone(),
            tallies[1].1.clone(),
            client.clone(),
            name.clone(),
        );
        let addr = gw.listen;
        threads.push(load::spawn(&format!("ka-{i}"), move || {
            load::keepalive_loop(addr, n, c, s, t)
        }));
    }
    {
        let (s, t, c, n) = (
            stop.clone(),
            tallies[2].1.clone(),
            client.clone(),
            name.clone(),
        );
        let addr = gw.listen;
        threads.push(load::spawn("bulk", move || {
            load::bulk_loop(addr, n, c, 8, s, t)
        }));
    }
    for i in 0..4 {
        let (s, t, h) = (stop.clone(), tallies[3].1.clone(), hello.clone());
        let addr = gw.listen;
        threads.push(load::spawn(&format!("slow-{i}"), move || {
            load::slowloris_loop(addr, h, Duration::from_millis(700), s, t);
        }));
    }
    {
        let (s, t) = (stop.clone(), tallies[4].1.clone());
        let addr = gw.listen;
        threads.push(load::spawn("junk", move || load::junk_loop(addr, s, t)));
    }

    // The control-plane churn and the samples, on this thread.
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut seen = 0usize;
    let (mut flips, mut reloads, mut bad_reloads) = (0u64, 0u64, 0u64);
    let (mut next_flip, mut next_reload, mut next_sample) = (1u64, 10u64, 0u64);
    let mut reload_errors = Vec::new();
    while !stop.done() {
        let now = start.elapsed().as_secs();
        if now >= next_sample {
            let (worst, len) = tallies[0].1.max_since_ms(seen);
            seen = len;
            samples.push(Sample {
                at_s: now,
                rss_kib: gw.rss_kib(),
                fds: gw.fds(),
                threads: gw.threads(),
                worst_new_conn_ms: worst,
            });
            next_sample += 10;
        }
        if now >= next_flip {
            flips += 1;
            write_atomic(
                &dir.join("catalog/api.hcl"),
                &api_catalog(a.addr(), b.addr(), flips % 2 == 0),
            );
            next_flip += 1;
        }
        if now >= next_reload {
            reloads += 1;
            let want_ok = gw.metric("meshgate_config_reloads_total{result=\"ok\"}");
            let want_failed = gw.metric("meshgate_config_reloads_total{result=\"failed\"}");
            let bad = reloads % 10 == 9;
            bad_reloads += u64::from(bad);
            gw.reload(&soak_config(a.addr(), reloads));
            let (series, want) = if bad {
                (
                    "meshgate_config_reloads_total{result=\"failed\"}",
                    want_failed + 1.0,
                )
            } else {
                (
                    "meshgate_config_reloads_total{result=\"ok\"}",
                    want_ok + 1.0,
                )
            };
            let got = gw.wait_metric(series, want, Duration::from_secs(5));
            if got < want {
                reload_errors.push(format!("reload {reloads}: {series} stayed at {got}"));
            }
            next_reload += 10;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.now();
    for t in threads {
        let _ = t.join();
    }
    let elapsed = start.elapsed();
    let (final_ok, final_failed) = (
        gw.metric("meshgate_config_reloads_total{result=\"ok\"}"),
        gw.metric("meshgate_config_reloads_total{result=\"failed\"}"),
    );

    let mut r = String::new();
    let _ = writeln!(
        r,
        "# Soak: {:.1} minutes of mixed load with reloads and catalog churn\n",
        elapsed.as_secs_f64() / 60.0
    );
    let _ = writeln!(r, "2 workers; the catalog flipped an api instance {flips} times; {reloads} reloads ({bad_reloads} invalid); gateway counted {final_ok} ok, {final_failed} failed; reload mismatches: {}.\n", reload_errors.len());
    let _ = writeln!(r, "| client | ok | failed | altered | success % | p50 ms | p99 ms | max ms | bytes checked |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (kind, t) in &tallies {
        let _ = writeln!(
            r,
            "| {kind} | {} | {} | {} | {:.3} | {:.2} | {:.2} | {:.1} | {} |",
            t.ok.load(Relaxed),
            t.failed.load(Relaxed),
            t.corrupt.load(Relaxed),
            t.success_pct(),
            t.percentile_ms(50.0),
            t.percentile_ms(99.0),
            t.percentile_ms(100.0),
            t.bytes.load(Relaxed)
        );
    }
    let _ = writeln!(r, "\n| t (s) | RSS KiB | fds | threads | worst new connection in window (ms) |\n|---:|---:|---:|---:|---:|");
    let step = (samples.len() / 12).max(1);
    for (i, s) in samples.iter().enumerate() {
        if i % step == 0 || i + 1 == samples.len() {
            let _ = writeln!(
                r,
                "| {} | {} | {} | {} | {:.1} |",
                s.at_s, s.rss_kib, s.fds, s.threads, s.worst_new_conn_ms
            );
        }
    }
    let settled: Vec<&Sample> = samples.iter().skip(samples.len() / 10).collect();
    if let (Some(lo), Some(hi)) = (
        settled.iter().map(|s| s.rss_kib).min(),
        settled.iter().map(|s| s.rss_kib).max(),
    ) {
        let _ = writeln!(r, "\nAfter the first tenth: RSS {lo}–{hi} KiB; fds {}–{}; worst new-connection latency in any 10 s window {:.1} ms.",
            settled.iter().map(|s| s.fds).min().unwrap_or(0),
            settled.iter().map(|s| s.fds).max().unwrap_or(0),
            settled.iter().map(|s| s.worst_new_conn_ms).fold(0.0, f64::max));
    }
    for (kind, t) in &tallies {
        for e in t.errors() {
            let _ = writeln!(r, "- {kind}: {e}");
        }
    }
    for e in &reload_errors {
        let _ = writeln!(r, "- {e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    r
}

/// Honest clients of one fault phase.
struct Honest {
    new: Arc<Tally>,
    bulk: Arc<Tally>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn honest(addr: SocketAddr, client: &Arc<ClientConfig>, stop: &Stop) -> Honest {
    let new = Arc::new(Tally::default());
    let bulk = Arc::new(Tally::default());
    let mut threads = Vec::new();
    for i in 0..2 {
        let (s, t, c) = (stop.clone(), new.clone(), client.clone());
        threads.push(load::spawn(&format!("honest-{i}"), move || {
            load::hello_loop(addr, sni("api"), c, s, t)
        }));
    }
    let (s, t, c) = (stop.clone(), bulk.clone(), client.clone());
    threads.push(load::spawn("honest-bulk", move || {
        load::bulk_loop(addr, sni("api"), c, 4, s, t)
    }));
    Honest { new, bulk, threads }
}

/// A listener that accepts and resets every connection (SO_LINGER 0).
fn resetting_upstream(stop: Stop) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    l.set_nonblocking(true).expect("nonblocking");
    load::spawn("resetter", move || {
        while !stop.done() {
            match l.accept() {
                Ok((s, _)) => {
                    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    });
    addr
}

/// A listener whose accept queue is full and never drained: further SYNs are dropped, so a connect to
/// it hangs until the dialer's timeout — a black hole on loopback.
fn black_hole() -> (SocketAddr, Vec<TcpStream>, socket2::Socket) {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    s.bind(&addr.into()).expect("bind");
    s.listen(0).expect("listen");
    let addr = s.local_addr().expect("addr").as_socket().expect("inet");
    // Backlog 0 holds one; a couple more fill the SYN-ACK slack.
    let fill: Vec<TcpStream> = (0..2)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok())
        .collect();
    (addr, fill, s)
}

/// A listener that accepts and then never answers (a host call that blocks until its deadline).
fn silent_origin(stop: Stop) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    l.set_nonblocking(true).expect("nonblocking");
    load::spawn("silent", move || {
        let mut held = Vec::new();
        while !stop.done() {
            match l.accept() {
                Ok((s, _)) if held.len() < 10_000 => held.push(s),
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    });
    addr
}

fn faults_config(
    api: SocketAddr,
    reset: SocketAddr,
    hole: SocketAddr,
    origin: SocketAddr,
    router: Option<&str>,
) -> String {
    let mut c = format!(
        "[gateway]\ndatacenter = \"dc1\"\nlisten = [\"{{listen}}\"]\nadmin = \"{{admin}}\"\nworkers = 2\nhello_timeout_ms = 3000\nconnect_timeout_ms = 1000\nmax_connections = 600\ndrain_timeout_secs = 20\n\n[[routes]]\nsni = \"{}\"\nendpoints = [\"{api}\"]\n\n[[routes]]\nsni = \"{}\"\nendpoints = [\"{reset}\"]\n\n[[routes]]\nsni = \"{}\"\nendpoints = [\"{hole}\"]\n\n[[routes]]\nsni = \"*.hook.example\"\nendpoints = [\"{api}\"]\n\n[hook]\nplugin = \"testbed-hook.wasm\"\nconfig = {{ block_url = \"http://{origin}/\" }}\nallow_origins = [\"http://{origin}\"]\ndeadline_ms = 10\nmemory_mib = 16\non_failure = \"deny\"\n",
        sni("api"),
        sni("reset"),
        sni("hole"),
    );
    if let Some(behaviour) = router {
        let _ = write!(
            c,
            "\n[catalog]\nplugin = \"file-catalog\"\nallow_dirs = [\"catalog\"]\nconfig = {{ dir = \"catalog\", datacenter = \"dc1\", trust_domain = \"{TD}\" }}\n\n[router]\nplugin = \"testbed.wasm\"\ndeadline_ms = 200\nconfig = {{ behaviour = \"{behaviour}\" }}\n"
        );
    }
    c
}

struct Phase {
    name: &'static str,
    what: String,
    new: Arc<Tally>,
    bulk: Arc<Tally>,
    hostile: Option<Arc<Tally>>,
    note: String,
}

#[allow(clippy::too_many_lines)]
fn faults(length: Duration) -> String {
    let (pki, client) = load::pki();
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let names = [
        sni("api"),
        sni("reset"),
        sni("hole"),
        "*.hook.example".to_owned(),
    ];
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let api = Backend::start("api", any, pki.issue(&refs).expect("leaf")).expect("api");
    let forever = Stop::after(Duration::from_secs(24 * 3600));
    let reset = resetting_upstream(forever.clone());
    let (hole, _fill, _hole_socket) = black_hole();
    let origin = silent_origin(forever.clone());
    let dir = work_dir("faults");
    std::fs::write(dir.join("testbed-hook.wasm"), meshgate_plugin::TESTBED_HOOK).expect("hook");
    std::fs::write(dir.join("testbed.wasm"), meshgate_plugin::TESTBED).expect("router");
    let config = faults_config(api.addr(), reset, hole, origin, None);
    eprintln!("starting the gateway in {}", dir.display());
    let mut gw = Gateway::start(&dir, &config);
    let mut phases: Vec<Phase> = Vec::new();

    // Phases where hostile clients connect with a name over and over.
    let hostile_names: [(&'static str, String, String); 8] = [
        ("no fault", String::new(), "the same honest load alone".into()),
        ("hook loops", "loop.hook.example".into(), "a connection hook spins forever for the hostile name (deadline 10 ms, on_failure = deny)".into()),
        ("hook traps", "trap.hook.example".into(), "the hook panics for the hostile name".into()),
        ("hook allocates", "alloc.hook.example".into(), "the hook allocates without end for the hostile name (16 MiB cap)".into()),
        ("hook blocks in a host call", "block.hook.example".into(), "the hook's HTTP GET goes to an origin that never answers".into()),
        ("upstream resets", sni("reset"), "the hostile name's upstream resets every connection".into()),
        ("upstream black hole", sni("hole"), "the hostile name's upstream drops SYNs (connect timeout 1 s)".into()),
        ("new connections at a second core's worth", sni("api"), "4 more clients making new connections to the honest service (overload, not a fault: the scale of the others)".into()),
    ];
    for (name, hostile_sni, what) in hostile_names {
        eprintln!("phase: {name}");
        let failures_before = gw.metric("meshgate_hook_failures_total");
        let stop = Stop::after(length);
        let h = honest(gw.listen, &client, &stop);
        let mut extra = Vec::new();
        let hostile = (!hostile_sni.is_empty()).then(|| Arc::new(Tally::default()));
        if let Some(t) = &hostile {
            for i in 0..4 {
                let (s, t, c, n) = (stop.clone(), t.clone(), client.clone(), hostile_sni.clone());
                let addr = gw.listen;
                extra.push(load::spawn(&format!("hostile-{i}"), move || {
                    load::hello_loop(addr, n, c, s, t)
                }));
            }
        }
        for t in h.threads.into_iter().chain(extra) {
            let _ = t.join();
        }
        let note = format!(
            "hook failures: {}",
            gw.metric("meshgate_hook_failures_total") - failures_before
        );
        phases.push(Phase {
            name,
            what,
            new: h.new,
            bulk: h.bulk,
            hostile,
            note,
        });
    }

    // A router plugin that loops on reload: the reload fails, the table in service stays.
    {
        let stop = Stop::after(length);
        let failed_before = gw.metric("meshgate_config_reloads_total{result=\"failed\"}");
        let h = honest(gw.listen, &client, &stop);
        std::thread::sleep(length / 4);
        gw.reload(&faults_config(
            api.addr(),
            reset,
            hole,
            origin,
            Some("loop"),
        ));
        let failed = gw.wait_metric(
            "meshgate_config_reloads_total{result=\"failed\"}",
            failed_before + 1.0,
            Duration::from_secs(10),
        );
        for t in h.threads {
            let _ = t.join();
        }
        phases.push(Phase {
            name: "router plugin loops on reload",
            what: "SIGHUP to a config whose router plugin spins (deadline 200 ms)".into(),
            new: h.new,
            bulk: h.bulk,
            hostile: None,
            note: format!("reloads failed: {}", failed - failed_before),
        });
        let ok_before = gw.metric("meshgate_config_reloads_total{result=\"ok\"}");
        gw.reload(&config);
        gw.wait_metric(
            "meshgate_config_reloads_total{result=\"ok\"}",
            ok_before + 1.0,
            Duration::from_secs(10),
        );
    }

    // Slow readers: downloads nobody reads, holding their connections and the gateway's buffers.
    {
        let mut held = Vec::new();
        for _ in 0..100 {
            if let Ok(mut tls) = meshgate_tlskit::connect(gw.listen, &sni("api"), client.clone()) {
                use std::io::Write;
                let _ = tls.write_all(b"BULK 1073741824\n");
                tls.conn.send_close_notify();
                let _ = tls.flush();
                held.push(tls);
            }
        }
        let stop = Stop::after(length);
        let h = honest(gw.listen, &client, &stop);
        for t in h.threads {
            let _ = t.join();
        }
        phases.push(Phase {
            name: "slow readers",
            what: format!("{} clients ask for 1 GiB each and never read", held.len()),
            new: h.new,
            bulk: h.bulk,
            hostile: None,
            note: String::new(),
        });
    }

    // Every connection slot taken by idle clients (max_connections = 600).
    {
        let mut held = Vec::new();
        for _ in 0..700 {
            match meshgate_tlskit::connect(gw.listen, &sni("api"), client.clone()) {
                Ok(tls) => held.push(tls),
                Err(_) => break,
            }
            if held.len() >= 595 {
                break;
            }
        }
        let stop = Stop::after(length);
        let h = honest(gw.listen, &client, &stop);
        for t in h.threads {
            let _ = t.join();
        }
        phases.push(Phase {
            name: "connection slots exhausted",
            what: format!("{} idle TLS connections held against max_connections = 600 (2 workers: 300 per core)", held.len()),
            new: h.new,
            bulk: h.bulk,
            hostile: None,
            note: format!("gateway fds while held: {}", gw.fds()),
        });
    }

    // SIGTERM in the middle of bulk transfers: in-flight transfers finish intact, new ones are refused.
    {
        let stop = Stop::after(length);
        let inflight = Arc::new(Tally::default());
        let mut transfers = Vec::new();
        for i in 0..4 {
            let (t, c, addr) = (inflight.clone(), client.clone(), gw.listen);
            transfers.push(load::spawn(&format!("inflight-{i}"), move || {
                let n = 64u64 << 20;
                let start = Instant::now();
                match meshgate_tlskit::bulk(addr, &sni("api"), c, n, n) {
                    Ok(r)
                        if r.sent == r.backend_received
                            && r.received_len == n
                            && r.received_intact =>
                    {
                        t.bytes.fetch_add(2 * n, Relaxed);
                        t.success(start.elapsed());
                    }
                    Ok(_) => t.corruption("in-flight transfer altered".into()),
                    Err(e) => t.failure(format!("in-flight: {e}")),
                }
            }));
        }
        // Each transfer has started once the gateway counts four routed connections more.
        let routed = gw.metric("meshgate_routed_connections_total");
        gw.wait_metric(
            "meshgate_routed_connections_total",
            routed + 4.0,
            Duration::from_secs(5),
        );
        let h = honest(gw.listen, &client, &stop);
        let term_at = Instant::now();
        gw.signal("TERM");
        let code = gw.wait_exit(Duration::from_secs(40));
        let exit_after = term_at.elapsed();
        stop.now();
        for t in transfers.into_iter().chain(h.threads) {
            let _ = t.join();
        }
        phases.push(Phase {
            name: "SIGTERM under load",
            what: "SIGTERM while 4 transfers of 64+64 MiB are in flight and the honest load runs".into(),
            new: h.new,
            bulk: h.bulk,
            hostile: Some(inflight),
            note: format!(
                "exit code {code:?} after {:.2} s (drain_grace_ms 1000, then the drain); the hostile column is the 4 in-flight transfers",
                exit_after.as_secs_f64()
            ),
        });
    }
    forever.now();

    let base_p99 = phases
        .first()
        .map_or(f64::NAN, |p| p.new.percentile_ms(99.0));
    let mut r = String::new();
    let _ = writeln!(r, "# Faults during traffic: what honest clients saw\n");
    let _ = writeln!(r, "Each phase {} s; 2 workers; honest load: 2 clients making new TLS connections (HELLO and its answer) and 1 client moving 4+4 MiB transfers with hash checks.\n", length.as_secs());
    let _ = writeln!(r, "| phase | honest new conns ok | success % | p50 ms | p99 ms | p99 vs no fault | bulk ok / failed / altered | hostile ok / failed / altered | notes |\n|---|---:|---:|---:|---:|---:|---|---|---|");
    for p in &phases {
        let hostile = p.hostile.as_ref().map_or("–".to_owned(), |t| {
            format!(
                "{} / {} / {}",
                t.ok.load(Relaxed),
                t.failed.load(Relaxed),
                t.corrupt.load(Relaxed)
            )
        });
        let _ = writeln!(
            r,
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2}× | {} / {} / {} | {} | {} |",
            p.name,
            p.new.ok.load(Relaxed),
            p.new.success_pct(),
            p.new.percentile_ms(50.0),
            p.new.percentile_ms(99.0),
            p.new.percentile_ms(99.0) / base_p99,
            p.bulk.ok.load(Relaxed),
            p.bulk.failed.load(Relaxed),
            p.bulk.corrupt.load(Relaxed),
            hostile,
            p.note
        );
    }
    let _ = writeln!(r, "\nWhat each phase does:\n");
    for p in &phases {
        let _ = writeln!(r, "- **{}**: {}.", p.name, p.what);
        for e in p.new.errors().iter().chain(p.bulk.errors().iter()).take(3) {
            let _ = writeln!(r, "  - honest failure: {e}");
        }
    }
    let log = gw.log();
    let _ = writeln!(
        r,
        "\nGateway log lines at warn and above: {}.",
        log.lines().count()
    );
    let _ = std::fs::remove_dir_all(&dir);
    r
}
