//! The runtime both data planes (the gateway here, and meshgate-sidecar) share: where cores run
//! ([`CorePlan`]), their lifecycle and drain ([`Lifecycle`], [`run_until_shutdown`], [`drain`]), the
//! accept backoff when descriptors run out ([`AcceptBackoff`]), the idle watch ([`idle_watch`]), bounded
//! waits ([`within`]) and resets passed on to a peer ([`reset_on_close`]).
//!
//! The rules these encode: a core writes only its own counters; a reset or error on one side of a
//! connection resets the other instead of closing it cleanly; running out of descriptors pauses
//! accepting (doubling, up to a second) instead of spinning or closing listeners; no clock is read per
//! byte (idleness is judged by byte counts at timer expiry).

use crate::sys;
pub use crate::sys::listen;
use glommio::timer::Timer;
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use thiserror::Error;

/// glommio refuses to create an executor when `RLIMIT_MEMLOCK` is below this (its own check).
pub const MIN_MEMLOCK: u64 = 512 * 1024;

/// Why no executor can start in this process. Found before any core starts, so the message says
/// what to change instead of glommio's error from inside a core thread.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CoreError {
    /// This process may not use io_uring.
    #[error("io_uring is unavailable to this process (io_uring_setup: {source}): {hint}")]
    IoUring {
        /// What `io_uring_setup(2)` returned.
        source: std::io::Error,
        /// The likely cause and what to do about it.
        hint: String,
    },
    /// The locked-memory limit is below glommio's minimum and may not be raised.
    #[error("the locked-memory limit (RLIMIT_MEMLOCK) is {limit} bytes and cannot be raised ({source}); glommio needs at least {MIN_MEMLOCK} bytes: raise it (docker run --ulimit memlock=-1, systemd LimitMEMLOCK=infinity, ulimit -l unlimited)")]
    MemLock {
        /// The soft limit in force.
        limit: u64,
        /// Why raising it failed.
        source: std::io::Error,
    },
}

/// Checks that this process may create an io_uring, and if not, says why in terms an operator can
/// act on. Container runtimes block io_uring in their default seccomp profiles (Docker since 25.0,
/// containerd since 2.0); `kernel.io_uring_disabled` can turn it off host-wide.
pub fn probe_io_uring() -> Result<(), CoreError> {
    let Err(source) = sys::probe_io_uring() else {
        return Ok(());
    };
    #[allow(
        clippy::disallowed_methods,
        reason = "set-up before any core starts: explains why executors cannot be created"
    )]
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|s| s.trim().parse::<u8>().ok())
        .unwrap_or(0);
    #[allow(
        clippy::disallowed_methods,
        reason = "set-up before any core starts: explains why executors cannot be created"
    )]
    let filtered = std::fs::read_to_string("/proc/self/status")
        .ok()
        .is_some_and(|s| seccomp_filtered(&s));
    let hint = io_uring_hint(source.raw_os_error(), disabled, filtered);
    Err(CoreError::IoUring { source, hint })
}

/// What to tell an operator whose `io_uring_setup` failed with `errno`, given the sysctl
/// `kernel.io_uring_disabled` and whether a seccomp filter confines the process. A filter answers
/// EPERM (Docker's, containerd's) or ENOSYS (podman's, from containers/common, and any profile whose
/// default action is `SCMP_ACT_ERRNO` with errno 38), so ENOSYS under a filter is the filter, not the
/// kernel.
fn io_uring_hint(errno: Option<i32>, disabled: u8, filtered: bool) -> String {
    const SECCOMP: &str = "blocked, most likely by a seccomp profile: container runtimes block io_uring by default (Docker since 25.0, containerd since 2.0, podman); run with a profile that allows io_uring_setup, io_uring_enter and io_uring_register, such as deploy/seccomp/meshgate.json (see docs/container.md)";
    match errno {
        Some(libc::EPERM) if disabled > 0 => format!(
            "the sysctl kernel.io_uring_disabled is {disabled}; set it to 0 (or, at 1, run as a member of kernel.io_uring_group)"
        ),
        Some(libc::EPERM) => SECCOMP.to_owned(),
        Some(libc::ENOSYS) if filtered => SECCOMP.to_owned(),
        Some(libc::ENOSYS) => "this kernel has no io_uring; meshgate needs Linux 5.8 or newer with CONFIG_IO_URING".to_owned(),
        Some(libc::ENOMEM) => "not enough lockable memory; raise RLIMIT_MEMLOCK (docker run --ulimit memlock=-1)".to_owned(),
        _ => "meshgate's executors run on io_uring and cannot start without it".to_owned(),
    }
}

/// Whether `/proc/self/status` (its text) says a seccomp filter confines the process (`Seccomp: 2`).
fn seccomp_filtered(status: &str) -> bool {
    status
        .lines()
        .filter_map(|l| l.strip_prefix("Seccomp:"))
        .any(|v| v.trim() == "2")
}

/// `f`'s output, or `None` once `limit` has passed (on the current executor's timer; call it on an
/// executor, where the timer is made).
pub fn within<F: Future>(limit: std::time::Duration, f: F) -> Within<F> {
    Within {
        f,
        timer: glommio::timer::Timer::new(limit),
    }
}

pin_project_lite::pin_project! {
    /// [`within`]'s future: the work and its timer side by side. A struct rather than an `async` block
    /// racing two others, which would hold `f` twice (captured, then awaited): ~300 bytes more in
    /// every connection's task for the hello's deadline alone.
    #[must_use = "futures do nothing unless awaited"]
    pub struct Within<F> {
        #[pin]
        f: F,
        timer: glommio::timer::Timer,
    }
}

impl<F: Future> Future for Within<F> {
    type Output = Option<F::Output>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        if let std::task::Poll::Ready(v) = this.f.poll(cx) {
            return std::task::Poll::Ready(Some(v));
        }
        match std::pin::Pin::new(this.timer).poll(cx) {
            std::task::Poll::Ready(_) => std::task::Poll::Ready(None),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

/// Where a data plane's executors run: one per worker, pinned round robin to the CPUs this process
/// may use, each with `io_memory` bytes of glommio io memory.
#[derive(Debug, Clone)]
pub struct CorePlan {
    cpus: Vec<usize>,
    workers: usize,
    io_memory: usize,
}

impl CorePlan {
    /// `workers` executors (default: one per allowed CPU); checks io_uring and raises `RLIMIT_MEMLOCK`
    /// to fit them.
    pub fn new(workers: Option<usize>, io_memory: usize) -> Result<CorePlan, CoreError> {
        probe_io_uring()?;
        let cpus = sys::allowed_cpus();
        let workers = workers.unwrap_or(cpus.len()).max(1);
        // glommio locks its io memory plus ring buffers; leave room for both on every core.
        let memlock = (workers * (io_memory + 512 * 1024)) as u64;
        if let Err(source) = sys::ensure_memlock(memlock) {
            let limit = sys::memlock_limit().unwrap_or(0);
            if limit < MIN_MEMLOCK {
                return Err(CoreError::MemLock { limit, source });
            }
            // Above glommio's floor: cores start, with less room for registered buffers.
            tracing::warn!(error = %source, limit, wanted = memlock, "could not raise RLIMIT_MEMLOCK to the wanted size");
        }
        Ok(CorePlan {
            cpus,
            workers,
            io_memory,
        })
    }

    /// How many executors.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Starts executor `core`, named `<prefix>-<core>`, running `run`.
    pub fn spawn<G, F, T>(
        &self,
        core: usize,
        prefix: &str,
        run: G,
    ) -> Result<glommio::ExecutorJoinHandle<T>, String>
    where
        G: FnOnce() -> F + Send + 'static,
        F: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let cpu = self
            .cpus
            .get(core % self.cpus.len().max(1))
            .copied()
            .unwrap_or(0);
        glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(cpu))
            .name(&format!("{prefix}-{core}"))
            .io_memory(self.io_memory)
            .spawn(run)
            .map_err(|e| e.to_string())
    }
}

/// How an [`idle_watch`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A whole idle period passed without a byte either way.
    Idle,
    /// The deadline passed.
    MaxDuration,
}

/// Fires on idle timeout or at the deadline; never returns otherwise. `moved` is the connection's byte
/// count, both ways.
///
/// Idleness is judged by byte counts at timer expiry rather than by a clock read per move: a connection is
/// closed once a whole idle period passed without a byte, which is between one and two idle periods after
/// its last byte.
#[allow(
    clippy::manual_async_fn,
    reason = "an `async fn` would hold each argument twice in its future"
)]
pub fn idle_watch(
    moved: impl Fn() -> u64,
    idle: Duration,
    deadline: Option<Instant>,
) -> impl Future<Output = Verdict> {
    // An `async` block, not an `async fn`, which would hold its arguments twice (in every connection).
    async move {
        let mut last = moved();
        loop {
            let wake = match deadline {
                Some(d) => match d.checked_duration_since(deadline_clock()) {
                    Some(left) if !left.is_zero() => idle.min(left),
                    _ => return Verdict::MaxDuration,
                },
                None => idle,
            };
            Timer::new(wake).await;
            if deadline.is_some_and(|d| deadline_clock() >= d) {
                return Verdict::MaxDuration;
            }
            let current = moved();
            if current == last && wake == idle {
                return Verdict::Idle;
            }
            last = current;
        }
    }
}

/// The clock deadlines are checked against: read per timer expiry (watch, drain), never per byte.
#[allow(
    clippy::disallowed_methods,
    reason = "the runtime's one clock for deadlines, read per timer expiry, never per byte"
)]
fn deadline_clock() -> Instant {
    Instant::now()
}

/// Where a data plane's cores are in their life, shared by its cores and its control thread: how many
/// listen, whether shutdown began, how many have exited.
#[derive(Debug)]
pub struct Lifecycle {
    workers: usize,
    shutdown: AtomicBool,
    listening: AtomicUsize,
    exited: AtomicUsize,
}

impl Lifecycle {
    /// Nothing started yet, for `workers` cores.
    pub fn new(workers: usize) -> Lifecycle {
        Lifecycle {
            workers,
            shutdown: AtomicBool::new(false),
            listening: AtomicUsize::new(0),
            exited: AtomicUsize::new(0),
        }
    }

    /// Begins shutdown: cores stop accepting and drain.
    pub fn shutdown(&self) {
        self.shutdown.store(true, Ordering::Relaxed);
    }

    /// True once shutdown began.
    pub fn shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    /// A core listens on everything it should.
    pub fn listening(&self) {
        self.listening.fetch_add(1, Ordering::Relaxed);
    }

    /// A core stopped listening.
    pub fn stopped_listening(&self) {
        self.listening.fetch_sub(1, Ordering::Relaxed);
    }

    /// True while every core listens and shutdown has not begun.
    pub fn all_listening(&self) -> bool {
        !self.shutting_down() && self.listening.load(Ordering::Relaxed) == self.workers
    }

    /// A core's run ended.
    pub fn exited(&self) {
        self.exited.fetch_add(1, Ordering::Relaxed);
    }

    /// True once every core's run ended.
    pub fn finished(&self) -> bool {
        self.exited.load(Ordering::Relaxed) == self.workers
    }
}

/// On a core: calls `tick` every `every` until shutdown begins.
pub async fn run_until_shutdown(life: &Lifecycle, every: Duration, mut tick: impl FnMut()) {
    while !life.shutting_down() {
        Timer::new(every).await;
        tick();
    }
}

/// On a core, after its listeners closed: waits until `live()` is zero or `timeout` has passed, calling
/// `tick` every `every` meanwhile. Returns how many connections were still live (they close with the
/// executor).
pub async fn drain(
    live: impl Fn() -> usize,
    timeout: Duration,
    every: Duration,
    mut tick: impl FnMut(),
) -> usize {
    let now = deadline_clock;
    let deadline = now() + timeout;
    while live() > 0 && now() < deadline {
        Timer::new(every.min(deadline.saturating_duration_since(now()))).await;
        tick();
    }
    live()
}

/// First pause when accept fails for lack of resources; doubles up to [`MAX_ACCEPT_BACKOFF`].
pub const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// Longest pause between accept attempts while out of resources.
pub const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// What a failed accept was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptFailure {
    /// Worth retrying at once (the client gave up while queued, or a signal).
    Transient,
    /// Out of descriptors or memory: paused before returning.
    Exhausted,
    /// Anything else (counted, then the loop goes on).
    Other,
}

/// An accept loop's pause while the process is out of file descriptors (EMFILE, ENFILE) or buffers:
/// doubling from [`MIN_ACCEPT_BACKOFF`] to [`MAX_ACCEPT_BACKOFF`], reset by the next success. Live
/// connections closing is what frees descriptors, so waiting beats spinning on accept or closing the
/// listener.
#[derive(Debug)]
pub struct AcceptBackoff {
    pause: Duration,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff {
            pause: MIN_ACCEPT_BACKOFF,
        }
    }
}

impl AcceptBackoff {
    /// A connection was accepted: the next exhaustion starts from the shortest pause.
    pub fn accepted(&mut self) {
        self.pause = MIN_ACCEPT_BACKOFF;
    }

    /// Classifies a failed accept; when out of resources, pauses (on the core's timer) first.
    pub async fn failed(&mut self, e: &io::Error) -> AcceptFailure {
        match e.raw_os_error() {
            Some(libc::ECONNABORTED | libc::EINTR) => AcceptFailure::Transient,
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                tracing::warn!(error = %e, pause_ms = self.pause.as_millis() as u64, "accept: out of resources, pausing");
                Timer::new(self.pause).await;
                self.pause = (self.pause * 2).min(MAX_ACCEPT_BACKOFF);
                AcceptFailure::Exhausted
            }
            _ => AcceptFailure::Other,
        }
    }
}

/// Makes the socket's close send a reset instead of a FIN (SO_LINGER 0): how a reset or error on one side
/// of a relayed connection is passed on to the other.
pub fn reset_on_close(socket: &impl AsRawFd) -> io::Result<()> {
    sys::set_linger_zero_raw(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enosys_under_a_seccomp_filter_names_the_profile_not_the_kernel() {
        let podman = io_uring_hint(Some(libc::ENOSYS), 0, true);
        assert!(
            podman.contains("seccomp") && podman.contains("deploy/seccomp/meshgate.json"),
            "{podman}"
        );
        let old_kernel = io_uring_hint(Some(libc::ENOSYS), 0, false);
        assert!(old_kernel.contains("no io_uring"), "{old_kernel}");
        assert!(io_uring_hint(Some(libc::EPERM), 0, true).contains("seccomp"));
        assert!(io_uring_hint(Some(libc::EPERM), 2, false).contains("io_uring_disabled is 2"));
    }

    #[test]
    fn seccomp_mode_is_read_from_the_status_line() {
        assert!(seccomp_filtered(
            "Name:\tmeshgate\nSeccomp:\t2\nSeccomp_filters:\t1\n"
        ));
        assert!(!seccomp_filtered("Name:\tmeshgate\nSeccomp:\t0\n"));
        assert!(!seccomp_filtered(""));
    }
}
