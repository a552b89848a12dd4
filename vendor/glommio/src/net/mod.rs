// Unless explicitly stated otherwise all files in this repository are licensed
// under the MIT/Apache-2.0 License, at your convenience
//
// This product includes software developed at Datadog (https://www.datadoghq.com/). Copyright 2020 Datadog, Inc.
//
//! This module provides glommio's networking support.
use crate::sys;
use nix::sys::socket::{MsgFlags, SockaddrLike};
use std::{io, os::unix::io::RawFd};

fn yolo_accept(fd: RawFd) -> Option<io::Result<RawFd>> {
    let flags =
        nix::fcntl::OFlag::from_bits(nix::fcntl::fcntl(fd, nix::fcntl::F_GETFL).unwrap()).unwrap();
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::F_SETFL(flags | nix::fcntl::OFlag::O_NONBLOCK),
    )
    .unwrap();
    let r = sys::accept_syscall(fd);
    nix::fcntl::fcntl(fd, nix::fcntl::F_SETFL(flags)).unwrap();
    match r {
        Ok(x) => Some(Ok(x)),
        Err(err) => match err.kind() {
            io::ErrorKind::WouldBlock => None,
            _ => Some(Err(err)),
        },
    }
}

fn yolo_send(fd: RawFd, buf: &[u8]) -> Option<io::Result<usize>> {
    match sys::send_syscall(fd, buf.as_ptr(), buf.len(), MsgFlags::MSG_DONTWAIT.bits()) {
        Ok(x) => Some(Ok(x)),
        Err(err) => match err.kind() {
            io::ErrorKind::WouldBlock => None,
            _ => Some(Err(err)),
        },
    }
}

fn yolo_peek(fd: RawFd, buf: &mut [u8]) -> Option<io::Result<usize>> {
    match sys::recv_syscall(
        fd,
        buf.as_mut_ptr(),
        buf.len(),
        (MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_PEEK).bits(),
    ) {
        Ok(x) => Some(Ok(x)),
        Err(err) => match err.kind() {
            io::ErrorKind::WouldBlock => None,
            _ => Some(Err(err)),
        },
    }
}

fn yolo_recv(fd: RawFd, buf: &mut [u8]) -> Option<io::Result<usize>> {
    match sys::recv_syscall(
        fd,
        buf.as_mut_ptr(),
        buf.len(),
        MsgFlags::MSG_DONTWAIT.bits(),
    ) {
        Ok(x) => Some(Ok(x)),
        Err(err) => match err.kind() {
            io::ErrorKind::WouldBlock => None,
            _ => Some(Err(err)),
        },
    }
}

fn yolo_recvmsg<T: SockaddrLike>(
    fd: RawFd,
    buf: &mut [u8],
    flags: MsgFlags,
) -> Option<io::Result<(usize, T)>> {
    match sys::recvmsg_syscall(
        fd,
        buf.as_mut_ptr(),
        buf.len(),
        (flags | MsgFlags::MSG_DONTWAIT).bits(),
    ) {
        Ok(x) => Some(Ok(x)),
        Err(err) => match err.kind() {
            io::ErrorKind::WouldBlock => None,
            _ => Some(Err(err)),
        },
    }
}

fn yolo_sendmsg(
    fd: RawFd,
    buf: &[u8],
    addr: &impl nix::sys::socket::SockaddrLike,
) -> Option<io::Result<usize>> {
    match sys::sendmsg_syscall(
        fd,
        buf.as_ptr(),
        buf.len(),
        addr,
        MsgFlags::MSG_DONTWAIT.bits(),
    ) {
        Ok(x) => Some(Ok(x)),
        Err(err) => match err.kind() {
            io::ErrorKind::WouldBlock => None,
            _ => Some(Err(err)),
        },
    }
}

mod datagram;
mod stream;
mod tcp_socket;
mod udp_socket;
mod unix;
pub use self::{
    stream::{Buffered, Preallocated},
    tcp_socket::{AcceptedTcpStream, TcpListener, TcpStream},
    udp_socket::UdpSocket,
    unix::{AcceptedUnixStream, UnixDatagram, UnixListener, UnixStream},
};

// ---- meshgate patch (see vendor/README.md) --------------------------------
// glommio 0.9 keeps the reactor's readiness polls crate-private. A proxy that
// splices between sockets with splice(2) needs to wait for "readable" and
// "writable" on a raw file descriptor without reading or writing through
// glommio, so these two functions expose the existing io_uring POLL_ADD path.
// They add no new mechanism: the same `poll_read_ready`/`poll_write_ready`
// sources that `TcpStream::poll_read`/`poll_write` use internally.

/// Waits until `fd` is readable (or has an error or hang-up pending).
///
/// Must be called from inside a glommio executor. Dropping the future cancels
/// the poll. The caller keeps ownership of `fd` and must keep it open until
/// the future completes or is dropped.
pub async fn wait_readable(fd: RawFd) -> io::Result<()> {
    let source = crate::executor().reactor().poll_read_ready(fd);
    source.collect_rw().await.map(|_| ())
}

/// Waits until `fd` is writable (or has an error or hang-up pending).
///
/// Same contract as [`wait_readable`].
pub async fn wait_writable(fd: RawFd) -> io::Result<()> {
    let source = crate::executor().reactor().poll_write_ready(fd);
    source.collect_rw().await.map(|_| ())
}

// ---- meshgate patch (see vendor/README.md) --------------------------------
// When an executor has nothing to run, glommio sleeps in io_uring_enter on its
// main ring, after arming a poll there on the latency ring. A proxy whose
// sockets sit in its own epoll set then pays, per wake-up, an io_uring poll
// on that set plus the sleep, and a second system call to read the set. These
// two functions let the executor sleep in the caller's wait instead.

/// Makes the current executor sleep by calling `waiter` instead of waiting in
/// its io_uring (`None` puts the io_uring sleep back).
///
/// `waiter(timeout)` must return within `timeout` (`None`: no limit,
/// `Some(Duration::ZERO)`: do not block), and as soon as any descriptor of
/// [`reactor_fds`] is readable (the simplest way: keep them in the epoll set
/// it waits on, level-triggered); it may return earlier. It returns how many
/// tasks it woke. The executor calls it to sleep, and without blocking on any
/// turn that runs tasks and did not call it since the last such turn, so
/// what it reports is seen while the executor is busy too. It runs inside the
/// reactor: it may wake wakers and make system calls, but must not create or
/// drop glommio I/O or timers, spawn, or call this function.
///
/// This relies on how the rings are set up (no `IORING_SETUP_COOP_TASKRUN` or
/// `IORING_SETUP_DEFER_TASKRUN`): a completion the kernel posts through task
/// work interrupts the waiter's wait (`EINTR`) and is in the ring when it
/// returns. A rebase that sets either flag must wake the waiter another way.
///
/// Must be called from inside a glommio executor.
pub fn set_idle_waiter(waiter: Option<Box<dyn FnMut(Option<std::time::Duration>) -> usize>>) {
    crate::executor().reactor().sys.set_idle_waiter(waiter);
}

/// The current executor's io_uring descriptors that an idle waiter must
/// watch for readability (see [`set_idle_waiter`]).
///
/// Must be called from inside a glommio executor.
pub fn reactor_fds() -> [RawFd; 2] {
    crate::executor().reactor().sys.ring_fds()
}
