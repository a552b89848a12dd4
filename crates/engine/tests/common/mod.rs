//! What the engine's integration tests share: a loopback port for a listener to bind.

// Std sockets in a test, not on a data-plane core.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// A loopback port that binds now, from below the kernel's ephemeral range (32768 and up by default):
/// a port the kernel hands out for `:0` may be taken by another test's outgoing connection before the
/// engine binds it (the engine then fails to start). Below the range only these tests pick ports; a
/// counter keeps a port from being picked twice. (The end-to-end tests share the Consul lab's picker
/// instead; this crate does not depend on it.)
pub fn free_port() -> u16 {
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let Ok(port) = u16::try_from(LOW + (start + n) % SPAN) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN)
}
