//! Every system call the engine makes outside glommio, and the crate's only `unsafe` code.
//!
//! Each function is a thin, checked wrapper: file descriptors are borrowed (`BorrowedFd`) or owned
//! (`OwnedFd`), buffers are slices, and every return value is turned into an `io::Result`.
#![allow(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn check_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// A pipe used as the kernel-side buffer between two sockets.
#[derive(Debug)]
pub struct Pipe {
    /// Read end.
    pub read: OwnedFd,
    /// Write end.
    pub write: OwnedFd,
}

/// Creates a non-blocking pipe and asks for `size` bytes of capacity (the kernel may round or refuse the
/// size; the pipe is usable either way).
pub fn pipe(size: usize) -> io::Result<Pipe> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    unsafe {
        check(libc::pipe2(
            fds.as_mut_ptr(),
            libc::O_NONBLOCK | libc::O_CLOEXEC,
        ))?
    };
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    let pipe = unsafe {
        Pipe {
            read: OwnedFd::from_raw_fd(fds[0]),
            write: OwnedFd::from_raw_fd(fds[1]),
        }
    };
    if let Ok(size) = libc::c_int::try_from(size) {
        // SAFETY: fcntl on a descriptor we own. Failure (e.g. over /proc/sys/fs/pipe-max-size) is fine.
        unsafe { libc::fcntl(pipe.write.as_raw_fd(), libc::F_SETPIPE_SZ, size) };
    }
    Ok(pipe)
}

/// Moves up to `len` bytes from `from` to `to` without copying through user space. One of the two must
/// be a pipe. Never blocks: `WouldBlock` means "wait for readiness".
pub fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: null offsets (both ends are sockets or pipes); descriptors are valid for the call.
    check_size(unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    })
}

/// Bytes waiting in a pipe.
pub fn pipe_pending(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int to the pointer we pass.
    unsafe { check(libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n))? };
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Non-blocking receive into `buf`.
pub fn recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most buf.len() bytes into buf.
    check_size(unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    })
}

/// Non-blocking send of `buf`; never raises SIGPIPE.
pub fn send(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: the kernel reads at most buf.len() bytes from buf.
    check_size(unsafe {
        libc::send(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    })
}

/// Half-closes the write side (sends FIN after queued data).
pub fn shutdown_write(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: shutdown on a valid descriptor.
    unsafe { check(libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR))? };
    Ok(())
}

/// [`set_linger_zero`] for a socket owned by another type (a glommio stream).
pub fn set_linger_zero_raw(socket: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: `socket` is borrowed for the whole call, so the descriptor it owns stays open until
    // set_linger_zero returns; the BorrowedFd does not outlive the call.
    let fd = unsafe { BorrowedFd::borrow_raw(socket.as_raw_fd()) };
    set_linger_zero(fd)
}

/// Makes the next close send RST instead of FIN, to pass a peer's reset on promptly.
pub fn set_linger_zero(fd: BorrowedFd<'_>) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads size_of::<linger>() bytes from the struct we pass.
    unsafe {
        check(libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        ))?
    };
    Ok(())
}

/// Opens a listening socket with SO_REUSEPORT (one per core, the kernel spreads connections) and the given
/// backlog, owned by this core's executor.
/// `client_speaks_first` (TLS) enables TCP_DEFER_ACCEPT; leave it off for protocols where the server
/// speaks first.
pub fn listen(
    addr: SocketAddr,
    backlog: u32,
    client_speaks_first: bool,
) -> io::Result<glommio::net::TcpListener> {
    let socket = listen_socket(addr, backlog, client_speaks_first)?;
    // SAFETY: the descriptor is a bound, listening TCP socket whose ownership moves to glommio.
    Ok(unsafe { glommio::net::TcpListener::from_raw_fd(socket.into_raw_fd()) })
}

/// Like [`listen`], as a plain non-blocking socket (the gateway accepts with `accept4` on its own
/// readiness set; glommio's streams each arm a poll and two timers the gateway does not use).
pub fn listen_raw(
    addr: SocketAddr,
    backlog: u32,
    client_speaks_first: bool,
) -> io::Result<OwnedFd> {
    let socket = listen_socket(addr, backlog, client_speaks_first)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn listen_socket(
    addr: SocketAddr,
    backlog: u32,
    client_speaks_first: bool,
) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nodelay(true)?;
    socket.bind(&addr.into())?;
    // TLS clients speak first: have accept complete only once the ClientHello's first bytes are in, which
    // saves a readiness round trip per connection. A silent client is still accepted after the timeout
    // (and then meets the hello deadline).
    if client_speaks_first {
        let defer_secs: libc::c_int = 1;
        // SAFETY: setsockopt reads one c_int from the pointer we pass.
        unsafe {
            check(libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&defer_secs as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ))?
        };
    }
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket)
}

/// Accepts one connection, non-blocking and close-on-exec from the start, with the peer's address
/// (taken from the same call: no `getpeername` per connection).
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<(OwnedFd, Option<SocketAddr>)> {
    // SAFETY: an all-zero sockaddr_storage is a valid value of that plain-data type.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: accept4 writes at most `len` bytes of address into the storage we own and updates `len`;
    // on success we own the returned descriptor.
    let fd = check(unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    })?;
    // SAFETY: the kernel just returned this descriptor and nothing else holds it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: the kernel initialised `len` bytes of the storage as a socket address.
    let peer = unsafe { socket2::SockAddr::new(storage, len) }.as_socket();
    Ok((fd, peer))
}

/// Starts a non-blocking TCP connect (`TCP_NODELAY` set); the socket turns writable when it completes,
/// then [`connect_result`] says how.
pub fn connect_start(addr: SocketAddr) -> io::Result<OwnedFd> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    socket.set_nodelay(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(socket.into())
}

/// How a connect started by [`connect_start`] ended, once the socket is writable.
pub fn connect_result(fd: BorrowedFd<'_>) -> io::Result<()> {
    match socket2::SockRef::from(&fd).take_error()? {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// CPUs this process may run on (its affinity mask), in ascending order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return (0..std::thread::available_parallelism().map_or(1, usize::from)).collect();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// Raises the locked-memory limit to at least `bytes` (glommio locks its io_uring buffers).
pub fn ensure_memlock(bytes: u64) -> io::Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        check(libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim))?;
        if lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < bytes {
            lim.rlim_cur = bytes;
            if lim.rlim_max != libc::RLIM_INFINITY && lim.rlim_max < bytes {
                lim.rlim_max = bytes;
            }
            check(libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim))?;
        }
    }
    Ok(())
}

/// Raises the soft descriptor limit to the hard one; returns the soft limit in force afterwards.
pub fn raise_nofile() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        check(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim))?;
        if lim.rlim_cur != lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    Ok(if lim.rlim_cur == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        lim.rlim_cur
    })
}

/// A new epoll set (close-on-exec).
pub fn epoll_create() -> io::Result<OwnedFd> {
    // SAFETY: epoll_create1 takes flags only; on success we own the returned descriptor.
    let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
    // SAFETY: the kernel just returned this descriptor and nothing else holds it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `epoll_ctl(op)` for `fd` with interest `events`, tagged with `data`.
pub fn epoll_ctl(
    epoll: BorrowedFd<'_>,
    op: libc::c_int,
    fd: std::os::fd::RawFd,
    events: u32,
    data: u64,
) -> io::Result<()> {
    let mut event = libc::epoll_event { events, u64: data };
    // SAFETY: the kernel reads the event struct we own (ignored for EPOLL_CTL_DEL).
    check(unsafe { libc::epoll_ctl(epoll.as_raw_fd(), op, fd, &mut event) })?;
    Ok(())
}

/// Ready events of `epoll`, waiting for one at most `timeout` (`None`: no limit; zero: not at all);
/// how many were written into `events`. The wait is in whole milliseconds, rounded up: a timer due
/// in 0.2 ms is not woken for early.
pub fn epoll_wait(
    epoll: BorrowedFd<'_>,
    events: &mut [libc::epoll_event],
    timeout: Option<std::time::Duration>,
) -> io::Result<usize> {
    let max = libc::c_int::try_from(events.len()).unwrap_or(libc::c_int::MAX);
    let ms = match timeout {
        None => -1,
        Some(t) => {
            let ms = t.as_nanos().div_ceil(1_000_000);
            libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
        }
    };
    // SAFETY: the kernel writes at most `max` entries into the slice we own.
    let n = check(unsafe { libc::epoll_wait(epoll.as_raw_fd(), events.as_mut_ptr(), max, ms) })?;
    Ok(n as usize)
}

/// A non-blocking, close-on-exec eventfd starting at 0: a counter another thread adds to, which reads
/// as readable while it is above 0.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes an initial value and flags; on success we own the returned descriptor.
    let fd = check(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    // SAFETY: the kernel just returned this descriptor and nothing else holds it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds 1 to an eventfd's counter (wakes whoever waits for it to be readable).
pub fn eventfd_signal(fd: BorrowedFd<'_>) -> io::Result<()> {
    let one = 1u64.to_ne_bytes();
    // SAFETY: the kernel reads the 8 bytes of the array we own.
    check_size(unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), one.len()) })?;
    Ok(())
}

/// Resets an eventfd's counter to 0; `WouldBlock` when it already was.
pub fn eventfd_clear(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut count = [0u8; 8];
    // SAFETY: the kernel writes at most 8 bytes into the array we own.
    check_size(unsafe { libc::read(fd.as_raw_fd(), count.as_mut_ptr().cast(), count.len()) })?;
    Ok(())
}

/// Creates and closes a two-entry io_uring. glommio cannot run without one, and when the kernel refuses
/// it panics inside the executor thread with a message about old kernels; probing first lets the caller
/// say what is actually wrong (usually a container's seccomp profile).
pub fn probe_io_uring() -> io::Result<()> {
    // struct io_uring_params is 120 bytes on every architecture; zeroed means "no flags".
    let mut params = [0u64; 15];
    // SAFETY: io_uring_setup writes at most sizeof(io_uring_params) into `params`, which we own.
    let ret = unsafe { libc::syscall(libc::SYS_io_uring_setup, 2u32, params.as_mut_ptr()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(ret).map_err(|_| io::Error::other("descriptor out of range"))?;
    // SAFETY: the kernel just returned this descriptor to us and nothing else holds it.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(())
}

/// The soft locked-memory limit in bytes (`u64::MAX` for unlimited).
pub fn memlock_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we own.
    check(unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) })?;
    Ok(lim.rlim_cur)
}
