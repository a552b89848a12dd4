//! Readiness of relayed sockets, per core: one level-triggered epoll set holds the core's relayed
//! sockets, and the core sleeps in `epoll_wait` on that set when it has nothing to run.
//!
//! Why not a glommio poll per wait: each one allocates a poll source and submits an io_uring poll, two
//! per idle connection and one per message on a busy one. Here a socket joins the set once; a pump that
//! waits leaves its waker in the socket's slot, and one `epoll_wait` per wake-up of the core serves every
//! socket that became ready. Interest follows the waiters: reading stays armed while a pump reads (the
//! steady state of request/response traffic makes no `epoll_ctl` call at all), writing is armed only
//! for one wait for room, and a report nobody waits for disarms its direction, because a level-triggered
//! set would repeat it. Hang-up and error cannot be masked, so a socket that reports them with nobody
//! waiting leaves the set until a pump waits on it again.
//!
//! How the core waits ([`Poller::start`]): the set also holds glommio's two ring descriptors (readable
//! while a ring has completions), and the executor's idle wait is `epoll_wait` on the set (the vendored
//! glommio's `set_idle_waiter`): a wake-up is one system call, as in an epoll loop, where waiting through
//! io_uring took an io_uring poll on the set, the ring's wait and then the `epoll_wait`. While tasks keep
//! running, the executor looks at the set without blocking once per turn. If the set cannot take the
//! ring descriptors, a task waits on the set through one io_uring poll at a time instead.
//!
//! [`Side`] is how the rest of the engine holds a socket: the descriptor, its place in the set, and
//! glommio's own poll as the fallback when the set cannot take it. Everything here lives on the core
//! that made it (`Rc`, `RefCell`, never across threads).

use crate::sys;
use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

const IN: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
const OUT: u32 = libc::EPOLLOUT as u32;
const HANGUP: u32 = (libc::EPOLLHUP | libc::EPOLLERR) as u32;
/// Reports taken per `epoll_wait`; more ready sockets are taken on the next turn (the set stays
/// readable while any are left).
const BATCH: usize = 256;
/// How often a failing `epoll_wait` is logged, and how long a blocking wait pauses after one.
const ERROR_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
const ERROR_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);
/// Tag of glommio's ring descriptors in the set: no slot has this index, so `dispatch` skips them (the
/// executor reaps the rings itself once the wait returns).
const RINGS: u64 = u64::MAX;

/// One registered socket's state.
#[derive(Default)]
struct Slot {
    /// Bumped on each reuse of the slot: a report for an earlier socket is recognised and dropped.
    generation: u32,
    fd: RawFd,
    /// Interest registered in the set; `None` while the socket is not in the set.
    interest: Option<u32>,
    reader: Option<Waker>,
    writer: Option<Waker>,
    /// A report arrived since the last wait: the next wait (or the woken one) returns at once.
    read_ready: bool,
    write_ready: bool,
    /// An error or hang-up was reported (a connect that failed says so this way).
    failed: bool,
}

#[derive(Default)]
struct Slots {
    all: Vec<Slot>,
    free: Vec<u32>,
}

/// A core's epoll set and the slots of the sockets in it.
pub(crate) struct Poller {
    epoll: OwnedFd,
    slots: RefCell<Slots>,
    /// Wake-ups of the driver that found reports (for tests: a socket nobody waits on must not make
    /// the driver spin).
    rounds: std::cell::Cell<u64>,
    /// Blocking waits of the core in the set (for tests: an idle core sleeps, it does not spin).
    sleeps: std::cell::Cell<u64>,
    /// When a failed `epoll_wait` was last logged.
    error_said: std::cell::Cell<Option<std::time::Instant>>,
}

/// How a core waits for its set's reports (what [`Poller::start`] managed to set up).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Waiting {
    /// The executor sleeps in `epoll_wait` on the set, which also holds glommio's rings.
    InTheSet,
    /// A task waits for the set through an io_uring poll, the executor sleeps in io_uring.
    ThroughIoUring,
}

fn token(index: u32, generation: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(index)
}

impl Poller {
    pub(crate) fn new() -> io::Result<Poller> {
        Ok(Poller {
            epoll: sys::epoll_create()?,
            slots: RefCell::new(Slots::default()),
            rounds: std::cell::Cell::new(0),
            sleeps: std::cell::Cell::new(0),
            error_said: std::cell::Cell::new(None),
        })
    }

    /// Adds `fd` to the set with a first `interest` (reading; a connecting socket also writing, which
    /// saves arming it in a second call); it leaves the set when the registration drops, which must
    /// happen before `fd` is closed.
    fn register(&self, fd: BorrowedFd<'_>, interest: u32) -> io::Result<Registration<'_>> {
        let mut slots = self.slots.borrow_mut();
        let index = match slots.free.pop() {
            Some(i) => i,
            None => {
                let i = u32::try_from(slots.all.len()).map_err(|_| io::Error::other("slots"))?;
                slots.all.push(Slot::default());
                i
            }
        };
        let Some(slot) = slots.all.get_mut(index as usize) else {
            return Err(io::Error::other("slot"));
        };
        let generation = slot.generation.wrapping_add(1);
        *slot = Slot {
            generation,
            fd: fd.as_raw_fd(),
            ..Slot::default()
        };
        let added = sys::epoll_ctl(
            self.epoll.as_fd(),
            libc::EPOLL_CTL_ADD,
            fd.as_raw_fd(),
            interest,
            token(index, generation),
        );
        match added {
            Ok(()) => slot.interest = Some(interest),
            Err(e) => {
                slots.free.push(index);
                return Err(e);
            }
        }
        Ok(Registration {
            poller: self,
            index,
        })
    }

    /// Ready at once if a report came since the last wait; otherwise leaves the waker and makes sure the
    /// set reports this direction.
    fn poll_ready(&self, index: u32, read: bool, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut slots = self.slots.borrow_mut();
        let Some(slot) = slots.all.get_mut(index as usize) else {
            return Poll::Ready(Err(io::Error::other("unregistered socket")));
        };
        let (ready, waiter, bit) = if read {
            (&mut slot.read_ready, &mut slot.reader, IN)
        } else {
            (&mut slot.write_ready, &mut slot.writer, OUT)
        };
        if std::mem::take(ready) {
            *waiter = None;
            return Poll::Ready(Ok(()));
        }
        match waiter {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => *waiter = Some(cx.waker().clone()),
        }
        let want = slot.interest.unwrap_or(0) | bit;
        if slot.interest != Some(want) {
            let op = if slot.interest.is_some() {
                libc::EPOLL_CTL_MOD
            } else {
                libc::EPOLL_CTL_ADD
            };
            let tag = token(index, slot.generation);
            if let Err(e) = sys::epoll_ctl(self.epoll.as_fd(), op, slot.fd, want, tag) {
                if read {
                    slot.reader = None;
                } else {
                    slot.writer = None;
                }
                return Poll::Ready(Err(e));
            }
            slot.interest = Some(want);
        }
        Poll::Pending
    }

    /// Frees the slot; takes the socket out of the set unless `closing` (closing the socket's last
    /// descriptor removes it from the set anyway: the engine never shares or forks its sockets).
    fn unregister(&self, index: u32, closing: bool) {
        let mut slots = self.slots.borrow_mut();
        if let Some(slot) = slots.all.get_mut(index as usize) {
            if slot.interest.take().is_some() && !closing {
                let _ = sys::epoll_ctl(self.epoll.as_fd(), libc::EPOLL_CTL_DEL, slot.fd, 0, 0);
            }
            slot.reader = None;
            slot.writer = None;
            slots.free.push(index);
        }
    }

    /// Serves the set's reports on the current executor for the executor's life: makes the executor
    /// sleep in the set, or if the set cannot take glommio's ring descriptors, spawns a task that waits
    /// on the set through io_uring (and says so in the log).
    pub(crate) fn start(self: &Rc<Self>) -> Waiting {
        match self.sleep_in_the_set() {
            Ok(()) => Waiting::InTheSet,
            Err(e) => {
                tracing::warn!(error = %e, "the core cannot sleep in its epoll set; it waits on the set through io_uring");
                self.start_through_io_uring()
            }
        }
    }

    /// The io_uring way of [`Poller::start`] (also for tests of both).
    pub(crate) fn start_through_io_uring(self: &Rc<Self>) -> Waiting {
        glommio::spawn_local(self.clone().drive()).detach();
        Waiting::ThroughIoUring
    }

    fn sleep_in_the_set(self: &Rc<Self>) -> io::Result<()> {
        let rings = glommio::net::reactor_fds();
        for (i, &fd) in rings.iter().enumerate() {
            let added = sys::epoll_ctl(
                self.epoll.as_fd(),
                libc::EPOLL_CTL_ADD,
                fd,
                libc::EPOLLIN as u32,
                RINGS,
            );
            if let Err(e) = added {
                for &fd in &rings[..i] {
                    let _ = sys::epoll_ctl(self.epoll.as_fd(), libc::EPOLL_CTL_DEL, fd, 0, 0);
                }
                return Err(e);
            }
        }
        // The executor's reactor keeps this for the executor's life (and with it the set).
        let poller = self.clone();
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; BATCH];
        let mut wake = Vec::new();
        glommio::net::set_idle_waiter(Some(Box::new(move |timeout| {
            poller.serve(&mut events, &mut wake, timeout)
        })));
        Ok(())
    }

    /// The io_uring way: waits until the set has reports, serves them, and goes back to waiting.
    async fn drive(self: Rc<Self>) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; BATCH];
        let mut wake: Vec<Waker> = Vec::new();
        loop {
            if let Err(e) = glommio::net::wait_readable(self.epoll.as_raw_fd()).await {
                // Not expected on an epoll descriptor; pause instead of spinning.
                tracing::error!(error = %e, "waiting on the core's epoll set failed");
                glommio::timer::Timer::new(std::time::Duration::from_millis(10)).await;
                continue;
            }
            self.serve(&mut events, &mut wake, Some(std::time::Duration::ZERO));
        }
    }

    /// One wait of at most `timeout` on the set; hands each report to its waiter (or keeps it for the
    /// next wait). Returns how many waiters it woke.
    fn serve(
        &self,
        events: &mut [libc::epoll_event],
        wake: &mut Vec<Waker>,
        timeout: Option<std::time::Duration>,
    ) -> usize {
        if timeout != Some(std::time::Duration::ZERO) {
            self.sleeps.set(self.sleeps.get() + 1);
        }
        let n = match sys::epoll_wait(self.epoll.as_fd(), events, timeout) {
            Ok(n) => n,
            // A signal, or io_uring task work for this thread (a ring completion on its way).
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return 0,
            Err(e) => {
                // Not expected on the core's own set. Said once a second at most, and a wait that may
                // block pauses (at most 10 ms) rather than letting the executor spin on the error.
                #[allow(clippy::disallowed_methods)] // the error path only, never per event
                let now = std::time::Instant::now();
                if self
                    .error_said
                    .get()
                    .is_none_or(|t| now.duration_since(t) >= ERROR_EVERY)
                {
                    self.error_said.set(Some(now));
                    tracing::error!(error = %e, "epoll_wait on the core's set failed");
                }
                if let Some(pause) = timeout.map_or(Some(ERROR_PAUSE), |t| {
                    (!t.is_zero()).then(|| t.min(ERROR_PAUSE))
                }) {
                    #[allow(clippy::disallowed_methods)] // as above: bounded, on the error path
                    std::thread::sleep(pause);
                }
                return 0;
            }
        };
        let events = &events[..n];
        if events.iter().any(|e| e.u64 != RINGS) {
            self.rounds.set(self.rounds.get() + 1);
            self.dispatch(events, wake);
        }
        let woke = wake.len();
        // Woken outside the borrow: a waker may run code that registers or waits.
        for w in wake.drain(..) {
            w.wake();
        }
        woke
    }

    fn dispatch(&self, events: &[libc::epoll_event], wake: &mut Vec<Waker>) {
        let mut slots = self.slots.borrow_mut();
        for event in events {
            let (mask, tag) = (event.events, event.u64);
            let (index, generation) = ((tag & 0xffff_ffff) as usize, (tag >> 32) as u32);
            let Some(slot) = slots.all.get_mut(index) else {
                continue;
            };
            let Some(interest) = slot.interest.filter(|_| slot.generation == generation) else {
                continue;
            };
            let mut keep = interest;
            if mask & HANGUP != 0 {
                slot.failed = true;
            }
            // The flag is what the woken wait finds when it is polled again.
            if mask & (IN | HANGUP) != 0 {
                slot.read_ready = true;
                match slot.reader.take() {
                    Some(w) => wake.push(w),
                    None => keep &= !IN,
                }
            }
            if mask & (OUT | HANGUP) != 0 {
                slot.write_ready = true;
                wake.extend(slot.writer.take());
                // Room to write is the usual state: armed for one wait only.
                keep &= !OUT;
            }
            let op = if mask & HANGUP != 0 && slot.reader.is_none() && slot.writer.is_none() {
                // Reported whatever the interest: out of the set until someone waits again.
                slot.interest = None;
                Some(libc::EPOLL_CTL_DEL)
            } else if keep != interest {
                slot.interest = Some(keep);
                Some(libc::EPOLL_CTL_MOD)
            } else {
                None
            };
            if let Some(op) = op {
                let tag = token(index as u32, generation);
                if let Err(e) = sys::epoll_ctl(self.epoll.as_fd(), op, slot.fd, keep, tag) {
                    tracing::debug!(error = %e, "epoll_ctl failed");
                }
            }
        }
    }
}

/// A socket in its core's set; leaves the set on drop.
pub(crate) struct Registration<'a> {
    poller: &'a Poller,
    index: u32,
}

impl Registration<'_> {
    /// Until the socket is readable, at end of stream, or in error.
    pub(crate) async fn readable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poller.poll_ready(self.index, true, cx)).await
    }

    /// Until the socket has room to write, or is in error.
    pub(crate) async fn writable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poller.poll_ready(self.index, false, cx)).await
    }

    /// Whether the set has reported an error or hang-up on the socket.
    fn failed(&self) -> bool {
        let slots = self.poller.slots.borrow();
        slots.all.get(self.index as usize).is_none_or(|s| s.failed)
    }

    /// Frees the slot without an `epoll_ctl`: for a socket whose only descriptor closes next.
    fn release_before_close(self) {
        self.poller.unregister(self.index, true);
        std::mem::forget(self);
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.poller.unregister(self.index, false);
    }
}

/// A socket of the connection, owned, and how to wait on it: through the core's epoll set, or through
/// glommio's io_uring poll if it could not join the set.
pub(crate) struct Side<'a> {
    registration: Option<Registration<'a>>,
    fd: OwnedFd,
}

impl<'a> Side<'a> {
    /// Takes `fd` and joins the core's epoll set (until dropped), or waits through glommio if there is
    /// no set or it cannot take the socket.
    pub(crate) fn new(poller: Option<&'a Poller>, fd: OwnedFd) -> Side<'a> {
        Self::with_interest(poller, fd, IN)
    }

    /// A socket whose non-blocking connect is under way: joins the set waiting for reading and
    /// writing (writable = the connect ended).
    pub(crate) fn connecting(poller: Option<&'a Poller>, fd: OwnedFd) -> Side<'a> {
        Self::with_interest(poller, fd, IN | OUT)
    }

    fn with_interest(poller: Option<&'a Poller>, fd: OwnedFd, interest: u32) -> Side<'a> {
        let registration = poller.and_then(|p| {
            p.register(fd.as_fd(), interest)
                .inspect_err(|e| tracing::debug!(error = %e, "epoll registration failed; polling through io_uring"))
                .ok()
        });
        Side { registration, fd }
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Until readable, at end of stream, or in error (for a listener: a connection is waiting).
    pub(crate) async fn readable(&self) -> io::Result<()> {
        match &self.registration {
            Some(r) => r.readable().await,
            None => glommio::net::wait_readable(self.fd.as_raw_fd()).await,
        }
    }

    /// Until there is room to write, or in error (for a connecting socket: the connect ended).
    pub(crate) async fn writable(&self) -> io::Result<()> {
        match &self.registration {
            Some(r) => r.writable().await,
            None => glommio::net::wait_writable(self.fd.as_raw_fd()).await,
        }
    }

    /// False only when the socket is known not to have reported an error or hang-up; a connect that
    /// became writable without one succeeded, and needs no `SO_ERROR` query.
    pub(crate) fn may_have_failed(&self) -> bool {
        self.registration.as_ref().is_none_or(Registration::failed)
    }
}

impl Drop for Side<'_> {
    fn drop(&mut self) {
        // `fd` closes right after this (fields drop after `drop`), which takes it out of the set.
        if let Some(r) = self.registration.take() {
            r.release_before_close();
        }
    }
}

// The tests' peers are plain blocking sockets on loopback.
#[cfg(test)]
#[allow(clippy::disallowed_types, clippy::disallowed_methods)]
mod tests {
    use super::*;
    use crate::cores::within;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    /// Runs `f` on a glommio executor of its own.
    fn on_executor<F, Fut>(f: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(512 * 1024)
            .spawn(f)
            .expect("executor")
            .join()
            .expect("join");
    }

    /// Runs `f` on an executor of its own once for each way a core can wait for its set.
    fn each_way<F, Fut>(f: F)
    where
        F: Fn(Waiting) -> Fut + Send + Clone + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        for way in [Waiting::InTheSet, Waiting::ThroughIoUring] {
            let f = f.clone();
            on_executor(move || f(way));
        }
    }

    /// A poller serving its set on the current executor, the way asked.
    fn driven(way: Waiting) -> Rc<Poller> {
        let poller = Rc::new(Poller::new().expect("epoll"));
        let started = match way {
            Waiting::InTheSet => poller.start(),
            Waiting::ThroughIoUring => poller.start_through_io_uring(),
        };
        assert_eq!(started, way);
        poller
    }

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        server.set_nonblocking(true).expect("nonblocking");
        (client, server)
    }

    #[test]
    fn waits_until_readable_and_writable() {
        each_way(|way| async move {
            let poller = driven(way);
            let (mut client, server) = pair();
            let reg = poller.register(server.as_fd(), IN).expect("register");
            // Nothing sent: not readable.
            assert!(within(Duration::from_millis(50), reg.readable())
                .await
                .is_none());
            client.write_all(b"ping").expect("write");
            assert!(within(Duration::from_secs(5), reg.readable())
                .await
                .is_some());
            let mut buf = [0u8; 4];
            (&server).read_exact(&mut buf).expect("read");
            assert_eq!(&buf, b"ping");
            // An empty send buffer has room.
            assert!(within(Duration::from_secs(5), reg.writable())
                .await
                .is_some());
        });
    }

    #[test]
    fn a_connect_reports_failure_only_when_it_failed() {
        each_way(|way| async move {
            let poller = driven(way);
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let open = listener.local_addr().expect("addr");
            let ok = sys::connect_start(open).expect("connect");
            let reg = poller.register(ok.as_fd(), IN | OUT).expect("register");
            assert!(within(Duration::from_secs(5), reg.writable())
                .await
                .is_some());
            assert!(!reg.failed(), "a connect that succeeded reported a failure");
            drop(reg);
            // Nobody listens on this port any more: the connect is refused.
            drop(listener);
            let refused = match sys::connect_start(open) {
                Ok(fd) => fd,
                // Refused within the call (the kernel may finish a loopback handshake inline).
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::ECONNREFUSED));
                    return;
                }
            };
            let reg = poller
                .register(refused.as_fd(), IN | OUT)
                .expect("register");
            assert!(within(Duration::from_secs(5), reg.writable())
                .await
                .is_some());
            assert!(reg.failed(), "a refused connect reported no failure");
            assert!(sys::connect_result(refused.as_fd()).is_err());
        });
    }

    #[test]
    fn a_report_nobody_waits_for_is_kept_and_disarmed() {
        each_way(|way| async move {
            let poller = driven(way);
            let (mut client, server) = pair();
            let reg = poller.register(server.as_fd(), IN).expect("register");
            client.write_all(b"x").expect("write");
            // Let the driver see the report while no one waits.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while poller.rounds.get() == 0 && std::time::Instant::now() < deadline {
                glommio::timer::Timer::new(Duration::from_millis(1)).await;
            }
            let seen = poller.rounds.get();
            assert!(seen >= 1);
            // Level-triggered and unread, yet the driver does not spin: the direction was disarmed.
            glommio::timer::Timer::new(Duration::from_millis(50)).await;
            assert!(poller.rounds.get() <= seen + 1, "driver spun");
            // The kept report answers the next wait at once.
            assert!(within(Duration::from_secs(5), reg.readable())
                .await
                .is_some());
        });
    }

    #[test]
    fn hang_up_wakes_the_reader_and_does_not_spin() {
        each_way(|way| async move {
            let poller = driven(way);
            let (client, server) = pair();
            let reg = poller.register(server.as_fd(), IN).expect("register");
            drop(client);
            assert!(within(Duration::from_secs(5), reg.readable())
                .await
                .is_some());
            let mut buf = [0u8; 8];
            assert_eq!((&server).read(&mut buf).expect("eof"), 0);
            // Also shut our side: hang-up is now reported whatever the interest, and nobody waits.
            server
                .shutdown(std::net::Shutdown::Write)
                .expect("shutdown");
            let before = poller.rounds.get();
            glommio::timer::Timer::new(Duration::from_millis(50)).await;
            assert!(
                poller.rounds.get() <= before + 2,
                "driver spun on a hang-up"
            );
            // Waiting again re-joins the set and sees the end at once.
            assert!(within(Duration::from_secs(5), reg.readable())
                .await
                .is_some());
            drop(reg);
            assert!(poller.slots.borrow().free.contains(&0));
        });
    }

    #[test]
    fn an_idle_core_sleeps_in_the_set_and_io_uring_completions_wake_it() {
        on_executor(|| async {
            let poller = driven(Waiting::InTheSet);
            // Idle for 30 ms: a few sleeps (the timer's, the executor's own), not a spin.
            let sleeps_before = poller.sleeps.get();
            glommio::timer::Timer::new(Duration::from_millis(30)).await;
            let slept = poller.sleeps.get() - sleeps_before;
            assert!((1..=10).contains(&slept), "{slept} sleeps in 30 ms");
            // A wait glommio serves through io_uring (a socket outside the set) completes while the
            // core sleeps in the set: the ring's descriptor is in it.
            let (mut client, server) = pair();
            let writer = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                client.write_all(b"x").expect("write");
                client
            });
            let woke = before(
                Duration::from_secs(5),
                glommio::net::wait_readable(server.as_raw_fd()),
            )
            .await;
            assert!(matches!(woke, Some(Ok(()))), "io_uring poll not seen");
            drop(writer.join().expect("writer"));
        });
    }

    /// `f`'s output if it is ready before `limit`; `None` if the limit's timer is (the timer is polled
    /// first, so a wake-up that was missed and only caught when the timer woke the core fails).
    async fn before<F: std::future::Future>(limit: Duration, f: F) -> Option<F::Output> {
        futures_lite::future::or(
            async {
                glommio::timer::Timer::new(limit).await;
                None
            },
            async { Some(f.await) },
        )
        .await
    }

    #[test]
    fn a_wake_from_another_thread_ends_the_sleep_in_the_set() {
        use std::sync::{Arc, Mutex};
        on_executor(|| async {
            let _poller = driven(Waiting::InTheSet);
            // The task's waker, handed to another thread that wakes it while the core sleeps.
            let slot: Arc<Mutex<Option<Waker>>> = Arc::default();
            let theirs = slot.clone();
            let waker = std::thread::spawn(move || {
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                while std::time::Instant::now() < deadline {
                    let taken = theirs.lock().expect("lock").take();
                    if let Some(w) = taken {
                        std::thread::sleep(Duration::from_millis(20));
                        w.wake();
                        return true;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                false
            });
            let mut polled = false;
            let woken = std::future::poll_fn(|cx| {
                if std::mem::replace(&mut polled, true) {
                    return Poll::Ready(());
                }
                *slot.lock().expect("lock") = Some(cx.waker().clone());
                Poll::Pending
            });
            let woke = before(Duration::from_secs(5), woken).await;
            assert!(
                waker.join().expect("waker thread"),
                "the waker was never handed over"
            );
            assert!(
                woke.is_some(),
                "a wake-up from another thread was not seen while sleeping"
            );
        });
    }
}
