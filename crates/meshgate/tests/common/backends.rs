//! Plaintext upstreams and applications the gateway and sidecars forward to: one that captures the
//! first bytes it gets, and a line-echoing application.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
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
