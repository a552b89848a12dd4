//! Moving bytes both ways once a connection is routed.
//!
//! Each direction is a pump: wait until the source is readable, move what is there to the destination,
//! wait until the destination is writable when it is full. With splice the bytes go socket → pipe →
//! socket and never enter user space; the buffered pump copies through a 16 KiB buffer. Readiness comes
//! from the connection's sockets (`poller::Side`).
//!
//! Endings: EOF on one side half-closes the other (FIN is passed on, the other direction keeps going);
//! a reset or error on one side resets the other promptly (SO_LINGER 0); an idle timeout or the maximum
//! duration closes both.

use crate::cores::{idle_watch, Verdict};
use crate::pipes::{PipePool, PIPE_SIZE};
use crate::poller::Side;
use crate::stats::{Counter, End};
use crate::sys;
use meshgate_config::RelayMode;
use std::cell::Cell;
use std::io;
use std::time::{Duration, Instant};

/// Bytes asked of one splice(2) call: the pipe's capacity.
const SPLICE_CHUNK: usize = PIPE_SIZE;
/// A read shorter than this is taken as "the peer is waiting for an answer" (request/response
/// traffic): the pump waits for readiness instead of trying to read again. Bulk flows read more at a
/// time and keep reading while data is there, which measured cheaper for them.
const SMALL_READ: usize = 16 * 1024;
/// User-space buffer per direction on the buffered path.
const BUFFER: usize = 16 * 1024;

/// How a relay ended and what it moved.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outcome {
    pub(crate) end: End,
    pub(crate) to_upstream: u64,
    pub(crate) to_downstream: u64,
}

/// Which socket failed, for reset propagation and the end reason.
#[derive(Debug)]
enum PumpError {
    /// Reading the source failed (the source's peer reset or errored).
    Source(io::Error),
    /// Writing the destination failed.
    Destination(io::Error),
}

/// One direction's bookkeeping. No clock is read per move: the idle watchdog compares byte counts.
struct Flow<'a> {
    counter: &'a Counter,
    moved: Cell<u64>,
}

impl Flow<'_> {
    fn moved(&self, n: usize) {
        self.counter.add(n as u64);
        self.moved.set(self.moved.get() + n as u64);
    }
}

/// What a relay uses besides its two sockets: the core's pipes, counters and the connection's limits.
pub(crate) struct Relay<'a> {
    /// The core's splice pipes.
    pub(crate) pipes: &'a PipePool,
    /// Bytes moved downstream → upstream.
    pub(crate) to_upstream: &'a Counter,
    /// Bytes moved upstream → downstream.
    pub(crate) to_downstream: &'a Counter,
    /// Directions that fell back to copying because no pipe could be made.
    pub(crate) splice_fallbacks: &'a Counter,
    /// Splice or copy.
    pub(crate) mode: RelayMode,
    /// No byte either way for this long closes the connection.
    pub(crate) idle: Duration,
    /// When the connection must end whatever it does (maximum duration).
    pub(crate) deadline: Option<Instant>,
}

/// Relays between `down` and `up` until both directions finish, one fails, or a timeout fires.
pub(crate) async fn relay(down: &Side<'_>, up: &Side<'_>, with: &Relay<'_>) -> Outcome {
    let to_up = Flow {
        counter: with.to_upstream,
        moved: Cell::new(0),
    };
    let to_down = Flow {
        counter: with.to_downstream,
        moved: Cell::new(0),
    };
    let eofs = Eofs(Cell::new(0));
    // Pinned here, awaited by reference below: moved into the `or` block it would be stored twice in the
    // connection's task (once captured, once awaited), ~0.8 KB more per connection.
    let mut pumps = std::pin::pin!(async {
        match with.mode {
            RelayMode::Splice => {
                futures_lite::future::try_zip(
                    async {
                        splice_pump(with, down, up, &to_up, &eofs)
                            .await
                            .map_err(|e| (true, e))
                    },
                    async {
                        splice_pump(with, up, down, &to_down, &eofs)
                            .await
                            .map_err(|e| (false, e))
                    },
                )
                .await
            }
            // Boxed: only connections of a buffered gateway pay for the buffered pumps' larger state.
            RelayMode::Buffered => {
                Box::pin(futures_lite::future::try_zip(
                    async {
                        buffered_pump(down, up, &to_up, &eofs)
                            .await
                            .map_err(|e| (true, e))
                    },
                    async {
                        buffered_pump(up, down, &to_down, &eofs)
                            .await
                            .map_err(|e| (false, e))
                    },
                ))
                .await
            }
        }
    });
    // Which side's failure it was decides both the label and whom to reset.
    let result = futures_lite::future::or(
        async {
            match pumps.as_mut().await {
                Ok(_) => End::Completed,
                Err((from_down, err)) => {
                    let (failed_down, other, error) = match err {
                        PumpError::Source(e) => {
                            (from_down, if from_down { up.fd() } else { down.fd() }, e)
                        }
                        PumpError::Destination(e) => {
                            (!from_down, if from_down { down.fd() } else { up.fd() }, e)
                        }
                    };
                    tracing::debug!(error = %error, downstream = failed_down, "relay side failed; resetting the other");
                    let _ = sys::set_linger_zero(other);
                    if failed_down {
                        End::DownstreamError
                    } else {
                        End::UpstreamError
                    }
                }
            }
        },
        async {
            let moved = || to_up.moved.get() + to_down.moved.get();
            match idle_watch(moved, with.idle, with.deadline).await {
                Verdict::Idle => End::IdleTimeout,
                Verdict::MaxDuration => End::MaxDuration,
            }
        },
    )
    .await;
    Outcome {
        end: result,
        to_upstream: to_up.moved.get(),
        to_downstream: to_down.moved.get(),
    }
}

/// End-of-stream bookkeeping shared by the two directions.
struct Eofs(Cell<u8>);

impl Eofs {
    /// The source of one direction reached EOF: pass the FIN on to `dst`. The second direction to end
    /// skips the `shutdown`: both sockets close right after the relay returns, and that close sends
    /// the FIN (every byte was read, so it cannot turn into a reset) — one system call less per
    /// connection.
    fn reached(&self, dst: &Side<'_>) {
        if self.0.get() == 0 {
            let _ = sys::shutdown_write(dst.fd());
        }
        self.0.set(self.0.get() + 1);
    }
}

/// Zero-copy direction: src → pipe → dst.
///
/// The pipe is leased from the pool only while bytes are in flight: when the source has nothing
/// to read, the (empty) pipe goes back before waiting, so an idle connection holds no pipe at all and
/// the pool is sized by the connections moving data, not by the connections open.
async fn splice_pump(
    with: &Relay<'_>,
    src: &Side<'_>,
    dst: &Side<'_>,
    flow: &Flow<'_>,
    eofs: &Eofs,
) -> Result<(), PumpError> {
    let mut lease = with.pipes.lease();
    let mut pending = 0usize;
    // A small read means the socket's queue was drained: wait for readiness instead of trying (and
    // failing) another splice first. The poll completes at once if bytes arrived meanwhile. Starts
    // true: when the relay begins, the client has just sent its hello and waits for the server's
    // answer, and the server has not answered yet.
    let mut drained = true;
    loop {
        if pending == 0 && drained {
            drained = false;
            lease.release_empty();
            src.readable().await.map_err(PumpError::Source)?;
        }
        if pending == 0 {
            if let Err(e) = lease.hold() {
                // Out of descriptors or pipe pages: copy through user space instead.
                tracing::debug!(error = %e, "no pipe; relaying this direction through a buffer");
                with.splice_fallbacks.inc();
                // Boxed: the rare path should not size every connection's task.
                return Box::pin(buffered_pump(src, dst, flow, eofs)).await;
            }
            let Some(write_end) = lease.write_end() else {
                continue;
            };
            match sys::splice(src.fd(), write_end, SPLICE_CHUNK) {
                Ok(0) => {
                    // Nothing is pending: the pipe is empty and goes back without a check.
                    lease.release_empty();
                    eofs.reached(dst);
                    return Ok(());
                }
                Ok(n) => {
                    pending = n;
                    drained = n < SMALL_READ;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    lease.release_empty();
                    src.readable().await.map_err(PumpError::Source)?;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(PumpError::Source(e)),
            }
        }
        let Some(read_end) = lease.read_end() else {
            pending = 0;
            continue;
        };
        match sys::splice(read_end, dst.fd(), pending) {
            Ok(n) => {
                pending -= n;
                flow.moved(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                dst.writable().await.map_err(PumpError::Destination)?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(PumpError::Destination(e)),
        }
    }
}

/// Copying direction: src → buffer → dst.
async fn buffered_pump(
    src: &Side<'_>,
    dst: &Side<'_>,
    flow: &Flow<'_>,
    eofs: &Eofs,
) -> Result<(), PumpError> {
    let mut buf = vec![0u8; BUFFER];
    // Starts waiting, as `splice_pump` does.
    let mut drained = true;
    loop {
        if drained {
            // A short read drained the socket: wait rather than try again (see `splice_pump`).
            drained = false;
            src.readable().await.map_err(PumpError::Source)?;
        }
        let n = match sys::recv(src.fd(), &mut buf) {
            Ok(0) => {
                eofs.reached(dst);
                return Ok(());
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                src.readable().await.map_err(PumpError::Source)?;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(PumpError::Source(e)),
        };
        write_all(dst, &buf[..n])
            .await
            .map_err(PumpError::Destination)?;
        flow.moved(n);
        drained = n < buf.len();
    }
}

/// Writes all of `bytes` to a non-blocking socket.
pub(crate) async fn write_all(dst: &Side<'_>, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match sys::send(dst.fd(), bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable().await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

// The peers are plain blocking sockets on loopback, on the test's thread; the relay runs on an executor
// of its own. Every wait is bounded (read timeouts, `within`), and nothing asserts on time.
#[cfg(test)]
#[allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    reason = "the tests' peers are blocking std sockets on loopback, outside any core"
)]
mod tests {
    use super::*;
    use crate::cores::within;
    use crate::poller::Poller;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::os::fd::OwnedFd;
    use std::rc::Rc;

    /// Bound on every wait: a broken relay fails the test instead of hanging it.
    const BOUND: Duration = Duration::from_secs(20);

    /// The relay's two sockets and their peers: client ⇄ down …relay… up ⇄ server.
    struct Wires {
        client: TcpStream,
        server: TcpStream,
        down: OwnedFd,
        up: OwnedFd,
    }

    fn wires() -> Wires {
        let connected = || {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let near = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
            let (far, _) = listener.accept().expect("accept");
            near.set_read_timeout(Some(BOUND)).expect("timeout");
            far.set_read_timeout(Some(BOUND)).expect("timeout");
            (near, far)
        };
        let (client, down) = connected();
        let (up, server) = connected();
        down.set_nonblocking(true).expect("nonblocking");
        up.set_nonblocking(true).expect("nonblocking");
        Wires {
            client,
            server,
            down: down.into(),
            up: up.into(),
        }
    }

    /// What the relay reported, what its counters say, and pipes back in the pool afterwards.
    struct Report {
        outcome: Option<Outcome>,
        counted: (u64, u64),
        pooled: usize,
    }

    /// Relays `down` ⇄ `up` on an executor of its own, with a readiness set and a pipe pool.
    fn start(
        down: OwnedFd,
        up: OwnedFd,
        mode: RelayMode,
        idle: Duration,
    ) -> glommio::ExecutorJoinHandle<Report> {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(512 * 1024)
            .spawn(move || async move {
                let poller = Rc::new(Poller::new().expect("epoll"));
                poller.start();
                let pipes = PipePool::default();
                let (to_up, to_down, fallbacks) =
                    (Counter::default(), Counter::default(), Counter::default());
                let with = Relay {
                    pipes: &pipes,
                    to_upstream: &to_up,
                    to_downstream: &to_down,
                    splice_fallbacks: &fallbacks,
                    mode,
                    idle,
                    deadline: None,
                };
                let outcome = {
                    let down = Side::new(Some(&poller), down);
                    let up = Side::new(Some(&poller), up);
                    within(BOUND, relay(&down, &up, &with)).await
                };
                assert_eq!(fallbacks.get(), 0);
                Report {
                    outcome,
                    counted: (to_up.get(), to_down.get()),
                    pooled: pipes.idle(),
                }
            })
            .expect("executor")
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn finished(relay: glommio::ExecutorJoinHandle<Report>) -> (Outcome, Report) {
        let report = relay.join().expect("relay executor");
        let outcome = report.outcome.expect("the relay ended within the bound");
        (outcome, report)
    }

    /// One side shuts down writing: its FIN reaches the other side after every byte, the other
    /// direction keeps flowing, and the relay ends cleanly once both have ended.
    fn half_close(mode: RelayMode) {
        let Wires {
            client,
            server,
            down,
            up,
        } = wires();
        let relay = start(down, up, mode, BOUND);
        let request = pattern(3 << 20, 7);
        let response = pattern((2 << 20) + 13, 11);
        std::thread::scope(|s| {
            let writer = s.spawn(|| {
                (&client).write_all(&request).expect("write request");
                client.shutdown(Shutdown::Write).expect("half-close");
            });
            let mut got = Vec::new();
            (&server).read_to_end(&mut got).expect("request, then EOF");
            assert!(got == request, "request altered ({} bytes)", got.len());
            writer.join().expect("writer");
            // The client has half-closed; the answer still flows back.
            let writer = s.spawn(|| {
                (&server).write_all(&response).expect("write response");
                server.shutdown(Shutdown::Write).expect("half-close");
            });
            let mut back = Vec::new();
            (&client)
                .read_to_end(&mut back)
                .expect("response, then EOF");
            assert!(back == response, "response altered ({} bytes)", back.len());
            writer.join().expect("writer");
        });
        let (outcome, report) = finished(relay);
        assert_eq!(outcome.end, End::Completed);
        assert_eq!(outcome.to_upstream, request.len() as u64);
        assert_eq!(outcome.to_downstream, response.len() as u64);
        assert_eq!(
            report.counted,
            (request.len() as u64, response.len() as u64)
        );
        if mode == RelayMode::Splice {
            assert!(report.pooled >= 1, "leased pipes went back to the pool");
        }
    }

    #[test]
    fn half_close_spliced() {
        half_close(RelayMode::Splice);
    }

    #[test]
    fn half_close_buffered() {
        half_close(RelayMode::Buffered);
    }

    fn reset(sock: TcpStream) {
        socket2::SockRef::from(&sock)
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
        drop(sock);
    }

    fn assert_reset(sock: &TcpStream) {
        let mut buf = [0u8; 16];
        match (&*sock).read(&mut buf) {
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
            Ok(n) => panic!("a clean end ({n} bytes) instead of a reset"),
        }
    }

    /// A reset on one side is passed on as a reset (not a FIN) to the other, and named in the end.
    fn reset_propagates(mode: RelayMode, from_client: bool) {
        let Wires {
            client,
            server,
            down,
            up,
        } = wires();
        let relay = start(down, up, mode, BOUND);
        // Bytes first, so the relay is past its start in both directions.
        (&client).write_all(b"ping").expect("write");
        let mut buf = [0u8; 4];
        (&server).read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"ping");
        (&server).write_all(b"pong").expect("write");
        (&client).read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"pong");
        let (survivor, expected) = if from_client {
            reset(client);
            (server, End::DownstreamError)
        } else {
            reset(server);
            (client, End::UpstreamError)
        };
        assert_reset(&survivor);
        let (outcome, _) = finished(relay);
        assert_eq!(outcome.end, expected);
        assert_eq!((outcome.to_upstream, outcome.to_downstream), (4, 4));
    }

    #[test]
    fn client_reset_resets_the_server() {
        reset_propagates(RelayMode::Splice, true);
        reset_propagates(RelayMode::Buffered, true);
    }

    #[test]
    fn server_reset_resets_the_client() {
        reset_propagates(RelayMode::Splice, false);
        reset_propagates(RelayMode::Buffered, false);
    }

    /// No byte either way for the idle time: the relay ends as idle, and both peers see a clean close.
    #[test]
    fn idle_connection_is_closed_as_idle() {
        let Wires {
            client,
            server,
            down,
            up,
        } = wires();
        let relay = start(down, up, RelayMode::Splice, Duration::from_millis(20));
        let (outcome, report) = finished(relay);
        assert_eq!(outcome.end, End::IdleTimeout);
        assert_eq!(report.counted, (0, 0));
        let mut buf = [0u8; 1];
        assert_eq!((&client).read(&mut buf).expect("clean close"), 0);
        assert_eq!((&server).read(&mut buf).expect("clean close"), 0);
    }
}
