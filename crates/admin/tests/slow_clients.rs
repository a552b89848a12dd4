//! The admin endpoint under hostile clients, over real loopback sockets: a flood of clients dripping
//! their request heads (more of them than the connection cap) must not keep a probe from answering
//! within a second; a head dribbled past the deadline is closed; ordinary requests are answered as before.

use meshgate_admin::{serve, AdminServer, AdminSource, MAX_CONNECTIONS};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Fake;
impl AdminSource for Fake {
    fn metrics(&self) -> String {
        "meshgate_up 1\n".into()
    }
    fn ready(&self) -> bool {
        true
    }
    fn routes_json(&self) -> String {
        "{\"routes\":[]}".into()
    }
}

fn start() -> AdminServer {
    serve("127.0.0.1:0".parse().expect("addr"), Arc::new(Fake)).expect("serve")
}

/// Sends `request` in one write; the whole response, or the error.
fn exchange(addr: SocketAddr, request: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(request.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Clients that each send one byte of an endless request head every `pace`, reconnecting whenever the
/// server closes them, until dropped.
struct Drippers {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drippers {
    /// Starts `n` drippers; returns once every one has connected and sent its first byte.
    fn start(addr: SocketAddr, n: usize, pace: Duration) -> Drippers {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                // One byte at a time of a head that never ends: a request line, then header bytes forever.
                let head = b"GET /ready HTTP/1.1\r\nX-Slow: ";
                let connect = || {
                    let mut s =
                        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
                    s.write_all(&head[..1]).ok()?;
                    Some((s, 1usize))
                };
                let mut conns: Vec<Option<(TcpStream, usize)>> =
                    (0..n).map(|_| connect()).collect();
                let _ = ready_tx.send(conns.iter().filter(|c| c.is_some()).count());
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(pace); // the drip rate, not a synchronisation
                    for c in conns.iter_mut() {
                        let alive = match c {
                            Some((s, sent)) => {
                                let byte = head.get(*sent).copied().unwrap_or(b'a');
                                *sent += 1;
                                s.write_all(&[byte]).is_ok()
                            }
                            None => false,
                        };
                        if !alive {
                            *c = connect();
                        }
                    }
                }
            })
        };
        let connected = ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("drippers connected");
        assert_eq!(connected, n, "every dripper connects");
        Drippers {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Drippers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn probes_answer_within_a_second_while_more_slow_clients_than_the_cap_drip() {
    let server = start();
    let addr = server.local_addr();
    let drippers = Drippers::start(addr, MAX_CONNECTIONS + 36, Duration::from_millis(100));
    // Ten probes spread over ~3 s, longer than the head deadline: the flood is replaced while they run.
    let mut slowest = Duration::ZERO;
    for i in 0..10 {
        let t0 = Instant::now();
        let answer = exchange(addr, "GET /ready HTTP/1.1\r\nHost: admin\r\n\r\n");
        let took = t0.elapsed();
        slowest = slowest.max(took);
        match answer {
            Ok(a) => assert!(a.starts_with("HTTP/1.1 200 OK"), "probe {i}: {a:?}"),
            Err(e) => panic!("probe {i} failed after {took:?}: {e}"),
        }
        assert!(took < Duration::from_secs(1), "probe {i} took {took:?}");
        let m = exchange(addr, "GET /metrics HTTP/1.1\r\n\r\n").expect("metrics");
        // The source's metrics, then the server's own readiness gauge.
        assert!(m.contains("\r\n\r\nmeshgate_up 1\n"), "{m}");
        assert!(m.ends_with("\nmeshgate_ready 1\n"), "{m}");
        std::thread::sleep(Duration::from_millis(300)); // probe pace
    }
    drop(drippers);
    eprintln!("slowest probe under the flood: {slowest:?}");
}

#[test]
fn head_dribbled_past_the_deadline_is_closed() {
    let server = start();
    let mut s = TcpStream::connect(server.local_addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let head = b"GET /ready HTTP/1.1\r\nX-Slow: ";
    let t0 = Instant::now();
    let mut sent = 0usize;
    let mut buf = [0u8; 256];
    // One byte every 100 ms (the read timeout paces it); every byte is progress, so only a deadline on the
    // whole head ends it. Give up after 5 s.
    let closed = loop {
        if t0.elapsed() > Duration::from_secs(5) {
            break false;
        }
        let byte = head.get(sent).copied().unwrap_or(b'a');
        if s.write_all(&[byte]).is_err() {
            break true;
        }
        sent += 1;
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => panic!(
                "answered a head that never ended: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break true, // reset
        }
    };
    let took = t0.elapsed();
    assert!(closed, "still open after {took:?} and {sent} bytes");
    // Generous: the deadline is 1 s; the point is that it is not per read.
    assert!(took < Duration::from_secs(3), "closed only after {took:?}");
    eprintln!("dribbled head closed after {took:?}, {sent} bytes");
}

#[test]
fn ordinary_requests_are_answered_as_before() {
    let addr = start().local_addr();
    let get = exchange(addr, "GET /ready HTTP/1.1\r\nHost: x\r\n\r\n").expect("get");
    assert_eq!(
        get,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\nConnection: close\r\n\r\nready\n"
    );
    let head = exchange(addr, "HEAD /metrics HTTP/1.1\r\n\r\n").expect("head");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let body = exchange(addr, "GET /metrics HTTP/1.1\r\n\r\n").expect("metrics");
    let body_len = body.split_once("\r\n\r\n").map_or(0, |(_, b)| b.len());
    assert!(body_len > "meshgate_up 1\n".len(), "{body}");
    assert!(
        head.contains(&format!("Content-Length: {body_len}\r\n")),
        "{head}"
    );
    assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");
    let query = exchange(addr, "GET /routes?x=1 HTTP/1.0\r\n\r\n").expect("routes");
    assert!(query.ends_with("{\"routes\":[]}"), "{query}");
    let missing = exchange(addr, "GET /nope HTTP/1.1\r\n\r\n").expect("404");
    assert!(
        missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
        "{missing}"
    );
    let post = exchange(
        addr,
        "POST /ready HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    )
    .expect("405");
    assert!(
        post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
        "{post}"
    );
    // A head without its blank line, then the client's half-close: answered, as before.
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(b"GET / HTTP/1.0\r\n").expect("write");
    s.shutdown(std::net::Shutdown::Write).expect("half-close");
    let mut index = String::new();
    s.read_to_string(&mut index).expect("index");
    assert!(index.contains("/metrics"), "{index}");
}
