//! The client side of `/ready`: what `meshgate health` (the image's `HEALTHCHECK`) runs, so a minimal
//! image needs no `curl`. One `GET` over plain HTTP/1.1 with one deadline for the whole exchange; the
//! answer is the status line's code, and only `200` is healthy.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How long a probe waits for the whole exchange by default: the endpoint answers `/ready` within
/// [`crate::HEAD_DEADLINE`] whatever other clients do, so twice that is slow enough to mean unhealthy.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(2);

/// Longest answer a probe reads, in bytes: `/ready`'s is a status line, three headers and one word.
const MAX_ANSWER: u64 = 4 * 1024;

/// Why a probe did not find the endpoint healthy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// Nothing answered at the address (refused, unreachable, or the deadline passed while connecting).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The admin address probed.
        addr: SocketAddr,
        /// What connecting said.
        source: io::Error,
    },
    /// The connection was made but the exchange failed or passed the deadline.
    #[error("{addr}: {source}")]
    Exchange {
        /// The admin address probed.
        addr: SocketAddr,
        /// What reading or writing said.
        source: io::Error,
    },
    /// The answer did not start with an HTTP status line.
    #[error("{addr}: not an HTTP answer: {line:?}")]
    NotHttp {
        /// The admin address probed.
        addr: SocketAddr,
        /// The first line received (of at most 4 KiB read).
        line: String,
    },
    /// The endpoint answered with another status than 200 (`/ready` says 503 while not ready or draining).
    #[error("{addr}{path}: {status}")]
    Status {
        /// The admin address probed.
        addr: SocketAddr,
        /// The path asked for.
        path: String,
        /// The status line after the version, e.g. `503 Service Unavailable`.
        status: String,
    },
}

/// `GET path` on the admin endpoint at `addr`, all of it within `deadline`: `Ok` on a 200 answer.
pub fn probe(addr: SocketAddr, path: &str, deadline: Duration) -> Result<(), ProbeError> {
    let end = Instant::now() + deadline;
    let mut s = TcpStream::connect_timeout(&addr, deadline)
        .map_err(|source| ProbeError::Connect { addr, source })?;
    let exchange = |s: &mut TcpStream| -> io::Result<String> {
        let left = end
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "deadline passed"))?;
        s.set_write_timeout(Some(left))?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: meshgate\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )?;
        let mut answer = Vec::new();
        let mut limited = Read::take(&mut *s, MAX_ANSWER);
        let mut buf = [0u8; 512];
        // Until the first line is in or the endpoint closes: reads are bounded by what is left of the
        // deadline, not per read.
        while !answer.contains(&b'\n') {
            let left = end
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
                .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "deadline passed"))?;
            limited.get_ref().set_read_timeout(Some(left))?;
            match limited.read(&mut buf)? {
                0 => break,
                n => answer.extend_from_slice(&buf[..n]),
            }
        }
        Ok(String::from_utf8_lossy(&answer).into_owned())
    };
    let answer = exchange(&mut s).map_err(|source| ProbeError::Exchange { addr, source })?;
    let line = answer.lines().next().unwrap_or("").trim_end();
    let status = line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| line.strip_prefix("HTTP/1.0 "))
        .ok_or_else(|| ProbeError::NotHttp {
            addr,
            line: line.to_owned(),
        })?;
    if status.starts_with("200") {
        Ok(())
    } else {
        Err(ProbeError::Status {
            addr,
            path: path.to_owned(),
            status: status.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-connection server that answers `answer` after reading the request head.
    fn answering(answer: &'static str) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = s.write_all(answer.as_bytes());
            }
        });
        addr
    }

    #[test]
    fn only_200_is_healthy() {
        let ok = answering("HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nready\n");
        assert!(probe(ok, "/ready", PROBE_DEADLINE).is_ok());
        let draining = answering("HTTP/1.1 503 Service Unavailable\r\n\r\nnot ready\n");
        let e = probe(draining, "/ready", PROBE_DEADLINE).expect_err("503");
        assert!(
            e.to_string().ends_with("/ready: 503 Service Unavailable"),
            "{e}"
        );
        let junk = answering("SSH-2.0-OpenSSH\r\n");
        assert!(matches!(
            probe(junk, "/ready", PROBE_DEADLINE),
            Err(ProbeError::NotHttp { .. })
        ));
    }

    #[test]
    fn a_silent_endpoint_fails_at_the_deadline_and_nothing_listening_fails_at_once() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let start = Instant::now();
        let e = probe(addr, "/ready", Duration::from_millis(200)).expect_err("silent");
        assert!(matches!(e, ProbeError::Exchange { .. }), "{e}");
        assert!(start.elapsed() < Duration::from_secs(2));
        drop(l);
        assert!(matches!(
            probe(addr, "/ready", PROBE_DEADLINE),
            Err(ProbeError::Connect { .. })
        ));
    }
}
