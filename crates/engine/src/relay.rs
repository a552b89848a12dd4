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

use crate::poller::Side;
use crate::stats::{Counter, End};
use crate::sys::{self, Pipe};
use crate::worker::Core;
use glommio::timer::Timer;
use meshgate_config::{GatewaySettings, RelayMode};
use std::cell::Cell;
use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// Bytes asked of one splice(2) call: the pipe's capacity.
const SPLICE_CHUNK: usize = crate::worker::PIPE_SIZE;
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

impl Outcome {
    pub(crate) fn ended(end: End) -> Self {
        Self {
            end,
            to_upstream: 0,
            to_downstream: 0,
        }
    }
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

/// Relays between `down` and `up` until both directions finish, one fails, or a timeout fires.
pub(crate) async fn relay(
    core: &Core,
    down: &Side<'_>,
    up: &Side<'_>,
    settings: &GatewaySettings,
    deadline: Option<Instant>,
) -> Outcome {
    let stats = core.stats();
    let to_up = Flow {
        counter: &stats.bytes_to_upstream,
        moved: Cell::new(0),
    };
    let to_down = Flow {
        counter: &stats.bytes_to_downstream,
        moved: Cell::new(0),
    };
    let eofs = Eofs(Cell::new(0));
    // Pinned here, awaited by reference below: moved into the `or` block it would be stored twice in the
    // connection's task (once captured, once awaited), ~0.8 KB more per connection.
    let mut pumps = std::pin::pin!(async {
        match settings.relay {
            RelayMode::Splice => {
                futures_lite::future::try_zip(
                    async {
                        splice_pump(core, down, up, &to_up, &eofs)
                            .await
                            .map_err(|e| (true, e))
                    },
                    async {
                        splice_pump(core, up, down, &to_down, &eofs)
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
        watchdog(
            || to_up.moved.get() + to_down.moved.get(),
            settings.idle_timeout(),
            deadline,
        ),
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

/// Fires on idle timeout or at the deadline; never returns otherwise.
///
/// Idleness is judged by byte counts at timer expiry rather than by a clock read per move: a connection is
/// closed once a whole idle period passed without a byte, which is between one and two idle periods after
/// its last byte.
async fn watchdog(moved: impl Fn() -> u64, idle: Duration, deadline: Option<Instant>) -> End {
    let mut last = moved();
    loop {
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return End::MaxDuration;
        }
        let wake = deadline.map_or(idle, |d| idle.min(d - now));
        Timer::new(wake).await;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return End::MaxDuration;
        }
        let current = moved();
        if current == last && wake == idle {
            return End::IdleTimeout;
        }
        last = current;
    }
}

/// A pipe borrowed from the core's pool; goes back (or is closed, if bytes are stuck in it) on drop.
struct Lease<'c> {
    core: &'c Core,
    pipe: Option<Pipe>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.pipe.take() {
            self.core.give_pipe(p);
        }
    }
}

/// Zero-copy direction: src → pipe → dst.
///
/// The pipe is leased from the core's pool only while bytes are in flight: when the source has nothing
/// to read, the (empty) pipe goes back before waiting, so an idle connection holds no pipe at all and
/// the pool is sized by the connections moving data, not by the connections open.
async fn splice_pump(
    core: &Core,
    src: &Side<'_>,
    dst: &Side<'_>,
    flow: &Flow<'_>,
    eofs: &Eofs,
) -> Result<(), PumpError> {
    let mut lease = Lease { core, pipe: None };
    let mut pending = 0usize;
    // A small read means the socket's queue was drained: wait for readiness instead of trying (and
    // failing) another splice first. The poll completes at once if bytes arrived meanwhile. Starts
    // true: when the relay begins, the client has just sent its hello and waits for the server's
    // answer, and the server has not answered yet.
    let mut drained = true;
    loop {
        if pending == 0 && drained {
            drained = false;
            if let Some(p) = lease.pipe.take() {
                core.give_empty_pipe(p);
            }
            src.readable().await.map_err(PumpError::Source)?;
        }
        if pending == 0 {
            let pipe = match &lease.pipe {
                Some(p) => p,
                None => match core.take_pipe() {
                    Ok(p) => lease.pipe.insert(p),
                    Err(e) => {
                        // Out of descriptors or pipe pages: copy through user space instead.
                        tracing::debug!(error = %e, "no pipe; relaying this direction through a buffer");
                        core.stats().splice_fallbacks.inc();
                        // Boxed: the rare path should not size every connection's task.
                        return Box::pin(buffered_pump(src, dst, flow, eofs)).await;
                    }
                },
            };
            match sys::splice(src.fd(), pipe.write.as_fd(), SPLICE_CHUNK) {
                Ok(0) => {
                    // Nothing is pending: the pipe is empty and goes back without a check.
                    if let Some(p) = lease.pipe.take() {
                        core.give_empty_pipe(p);
                    }
                    eofs.reached(dst);
                    return Ok(());
                }
                Ok(n) => {
                    pending = n;
                    drained = n < SMALL_READ;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Some(p) = lease.pipe.take() {
                        core.give_empty_pipe(p);
                    }
                    src.readable().await.map_err(PumpError::Source)?;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(PumpError::Source(e)),
            }
        }
        let Some(pipe) = &lease.pipe else {
            pending = 0;
            continue;
        };
        match sys::splice(pipe.read.as_fd(), dst.fd(), pending) {
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
