//! Upstreams and applications the gateway and sidecars forward to, at the TCP level: one that captures the
//! first bytes it gets, a line-echoing application, one that stalls after the ClientHello, and one that
//! drips its answer a byte at a time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// A plain TCP server that records the first `n` bytes of each connection and sends them back on a
/// channel (for checking what the gateway forwards verbatim).
pub fn capture_server(n: usize) -> (SocketAddr, std::sync::mpsc::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut buf = vec![0u8; n];
                if s.read_exact(&mut buf).is_ok() {
                    let _ = tx.send(buf);
                }
            });
        }
    });
    (addr, rx)
}

/// A plaintext application on `listener`: on every connection, each line is answered with `prefix` and
/// the line, until EOF, and reported on `report`. Runs the accept loop on the calling thread.
pub fn serve_lines(
    listener: TcpListener,
    prefix: &'static str,
    report: Option<std::sync::mpsc::Sender<String>>,
) {
    use std::io::BufRead;
    for stream in listener.incoming().map_while(Result::ok) {
        let report = report.clone();
        std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(&stream);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                let got = line.trim_end().to_owned();
                if (&stream)
                    .write_all(format!("{prefix}{got}\n").as_bytes())
                    .is_err()
                {
                    return;
                }
                if let Some(r) = &report {
                    let _ = r.send(got);
                }
                line.clear();
            }
        });
    }
}

/// [`serve_lines`] on a loopback port, on a thread of its own; the port.
pub fn line_app(prefix: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || serve_lines(listener, prefix, None));
    port
}

/// What a [`stalling_upstream`] saw on its `n`th connection (0-based, in accept order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallEvent {
    /// Connection `n` delivered a whole first TLS record of this many bytes (the ClientHello), and the
    /// upstream went silent.
    Stalled(usize, usize),
    /// Connection `n` was closed by its peer (the gateway) while stalled.
    Closed(usize),
}

/// An upstream that accepts, reads the ClientHello (one whole TLS record), then neither reads nor
/// writes: the client's handshake hangs until someone closes the connection. Reports each step on the
/// channel. Closure is noticed with `peek`, which takes nothing off the socket.
pub fn stalling_upstream() -> (SocketAddr, std::sync::mpsc::Receiver<StallEvent>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut s) = stream else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                // Bounded: a stalled connection the test forgot ends with the test process anyway.
                let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
                let mut header = [0u8; 5];
                if s.read_exact(&mut header).is_err() {
                    return;
                }
                let mut body = vec![0u8; usize::from(u16::from_be_bytes([header[3], header[4]]))];
                if s.read_exact(&mut body).is_err() {
                    return;
                }
                let _ = tx.send(StallEvent::Stalled(n, header.len() + body.len()));
                let mut probe = [0u8; 1];
                loop {
                    match s.peek(&mut probe) {
                        Ok(0) => break,
                        // Our own bound ran out: not a close by the peer.
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) =>
                        {
                            return
                        }
                        Err(_) => break,
                        // The client sends nothing more while it waits for a ServerHello; should it,
                        // the bytes stay unread and this keeps waiting for the close.
                        Ok(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
                let _ = tx.send(StallEvent::Closed(n));
            });
        }
    });
    (addr, rx)
}

/// A TCP proxy in front of `upstream` that passes the client's bytes on as they come but answers one
/// byte at a time, pausing `pause` after each (half-closes are passed on both ways). The drip covers
/// everything the upstream sends, the TLS handshake included. The counter is the bytes dripped so far.
pub fn dripping_upstream(
    upstream: SocketAddr,
    pause: Duration,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::net::Shutdown;
    use std::sync::atomic::Ordering;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let dripped = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = dripped.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(down) = stream else { continue };
            let Ok(up) = TcpStream::connect(upstream) else {
                continue;
            };
            // One segment per byte: the gateway sees the drip as it is, not coalesced by Nagle.
            let _ = down.set_nodelay(true);
            let (Ok(mut down_r), Ok(mut up_w)) = (down.try_clone(), up.try_clone()) else {
                continue;
            };
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut down_r, &mut up_w);
                let _ = up_w.shutdown(Shutdown::Write);
            });
            let count = count.clone();
            std::thread::spawn(move || {
                let (mut up_r, mut down_w) = (up, down);
                let mut buf = [0u8; 4096];
                loop {
                    let n = match up_r.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    for byte in &buf[..n] {
                        if down_w.write_all(std::slice::from_ref(byte)).is_err() {
                            return;
                        }
                        count.fetch_add(1, Ordering::Relaxed);
                        // The upstream's behaviour under test, not a synchronisation.
                        std::thread::sleep(pause);
                    }
                }
                let _ = down_w.shutdown(Shutdown::Write);
            });
        }
    });
    (addr, dripped)
}
