//! Spreading connections over the cores whatever SO_REUSEPORT's hash did (`[gateway] balance =
//! "connections"`).
//!
//! The kernel picks the accepting core by a hash of the connection's addresses, so a few long-lived
//! connections (keep-alive pools between gateways and sidecars) can all land on one core while the
//! others idle. Here each core's count of the connections it serves is published in one atomic per
//! core, and a core that accepts a connection while another core serves fewer hands it over: the
//! descriptor goes into that core's inbox and an eventfd in that core's readiness set wakes it. A
//! connection never moves once served; only the choice of core for a new one changes, and only when
//! the counts differ, so with the counts equal nothing is handed over. With the counts read and updated
//! at every accept, the cores' counts stay within one of each other when connections arrive one at a
//! time.
//!
//! What crosses threads: the counts (written by their core and, for a hand-over, by the core handing
//! over; read by every core at accept), and the inboxes (a channel each, written only to hand over,
//! read only by the core it belongs to). The data path of a served connection touches neither.

use crate::sys;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, Sender};

/// One core's count, alone on its cache line(s), so cores counting do not contend for a line.
#[repr(align(128))]
#[derive(Default)]
struct Load(AtomicUsize);

/// A connection accepted on one core, for another to serve.
#[derive(Debug)]
pub(crate) struct Handed {
    /// The accepted socket.
    pub(crate) fd: OwnedFd,
    /// Its peer, as `accept` gave it.
    pub(crate) peer: Option<SocketAddr>,
    /// The listener (index into `[gateway] listen`) that accepted it.
    pub(crate) listener: usize,
}

/// The sending side of a core's inbox.
struct Door {
    send: Sender<Handed>,
    wake: OwnedFd,
}

/// A core's inbox, held by that core alone.
#[derive(Debug)]
pub(crate) struct Inbox {
    receive: Receiver<Handed>,
    wake: OwnedFd,
}

impl Inbox {
    /// The connections handed over since the last look (clears the wake-up first).
    pub(crate) fn collect(&self) -> Vec<Handed> {
        let _ = sys::eventfd_clear(self.wake.as_fd());
        self.receive.try_iter().collect()
    }

    /// A descriptor readable while connections wait here.
    pub(crate) fn wake_fd(&self) -> io::Result<OwnedFd> {
        self.wake.try_clone()
    }
}

/// The cores' connection counts and the doors of their inboxes.
pub(crate) struct Balance {
    load: Box<[Load]>,
    doors: Box<[Door]>,
    /// Cores that stopped taking connections (shutdown): never chosen, never handed to.
    retired: Box<[std::sync::atomic::AtomicBool]>,
    /// A core is only handed a connection while it counts fewer than this: its share of
    /// `max_connections` less the permits its accept loops hold while they wait, so a connection
    /// handed over finds room at once rather than waiting unread.
    room: usize,
}

impl std::fmt::Debug for Balance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let load: Vec<usize> = self.load.iter().map(|l| l.0.load(Relaxed)).collect();
        f.debug_struct("Balance").field("load", &load).finish()
    }
}

impl Balance {
    /// Counts for `cores` cores, and each core's inbox (in core order) for it to keep; a core is handed
    /// connections only while it counts fewer than `room`.
    pub(crate) fn new(cores: usize, room: usize) -> io::Result<(Balance, Vec<Inbox>)> {
        let mut doors = Vec::with_capacity(cores);
        let mut inboxes = Vec::with_capacity(cores);
        for _ in 0..cores {
            let (send, receive) = std::sync::mpsc::channel();
            let wake = sys::eventfd()?;
            inboxes.push(Inbox {
                receive,
                wake: wake.try_clone()?,
            });
            doors.push(Door { send, wake });
        }
        let balance = Balance {
            load: (0..cores).map(|_| Load::default()).collect(),
            doors: doors.into(),
            retired: (0..cores)
                .map(|_| std::sync::atomic::AtomicBool::new(false))
                .collect(),
            room,
        };
        Ok((balance, inboxes))
    }

    /// The core that serves a connection `core` just accepted, counted there: `core` itself unless
    /// another core serves fewer and has room (then the one serving fewest, the lowest index on a tie).
    pub(crate) fn assign(&self, core: usize) -> usize {
        let mut best = core;
        let mut least = self.load.get(core).map_or(0, |l| l.0.load(Relaxed));
        for (i, l) in self.load.iter().enumerate() {
            let n = l.0.load(Relaxed);
            if n < least && n < self.room && !self.is_retired(i) {
                (best, least) = (i, n);
            }
        }
        if let Some(l) = self.load.get(best) {
            l.0.fetch_add(1, Relaxed);
        }
        best
    }

    /// Counts a connection on `core` that [`assign`](Self::assign) placed elsewhere (a hand-over that
    /// could not be made).
    pub(crate) fn counted_here(&self, core: usize) {
        if let Some(l) = self.load.get(core) {
            l.0.fetch_add(1, Relaxed);
        }
    }

    /// `core` stops taking connections (it is shutting down): no core hands it one from now on.
    pub(crate) fn retire(&self, core: usize) {
        if let Some(r) = self.retired.get(core) {
            r.store(true, Relaxed);
        }
    }

    fn is_retired(&self, core: usize) -> bool {
        self.retired.get(core).is_some_and(|r| r.load(Relaxed))
    }

    /// A connection `core` served has ended.
    pub(crate) fn ended(&self, core: usize) {
        if let Some(l) = self.load.get(core) {
            l.0.fetch_sub(1, Relaxed);
        }
    }

    /// Queues `handed` for core `to` and wakes it. On failure (no such core, or its inbox is gone) the
    /// connection comes back, for the caller to serve itself.
    pub(crate) fn hand_over(&self, to: usize, handed: Handed) -> Result<(), Handed> {
        let Some(door) = self.doors.get(to).filter(|_| !self.is_retired(to)) else {
            return Err(handed);
        };
        door.send.send(handed).map_err(|e| e.0)?;
        // Written after the send: the collector clears the counter before it empties the channel, so a
        // connection queued after its last look is always followed by a wake-up.
        if sys::eventfd_signal(door.wake.as_fd()).is_err() {
            // The eventfd's counter cannot overflow at one per connection; should it fail anyway, the
            // connection is still queued and goes with the next wake-up.
            tracing::debug!(core = to, "hand-over wake-up not written");
        }
        Ok(())
    }

    /// The wake-up of `core`, borrowed (for tests).
    #[cfg(test)]
    fn wake(&self, core: usize) -> std::os::fd::BorrowedFd<'_> {
        self.doors[core].wake.as_fd()
    }

    /// How many connections `core` serves (for tests).
    #[cfg(test)]
    fn load(&self, core: usize) -> usize {
        self.load.get(core).map_or(0, |l| l.0.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handed(listener: usize) -> Handed {
        Handed {
            fd: sys::eventfd().expect("a descriptor to hand over"),
            peer: None,
            listener,
        }
    }

    /// Whether the wake-up is set (set again after looking: reading it clears it).
    fn readable(fd: std::os::fd::BorrowedFd<'_>) -> bool {
        let set = sys::eventfd_clear(fd).is_ok();
        if set {
            sys::eventfd_signal(fd).expect("set again");
        }
        set
    }

    /// Arrivals one at a time, each accepted by whichever core the kernel chose: the counts never
    /// differ by more than one, and a core is only chosen over the accepting one when it serves fewer.
    #[test]
    fn counts_stay_within_one_whatever_core_accepts() {
        let (b, _inboxes) = Balance::new(3, 100).expect("balance");
        // The kernel puts every connection on core 0.
        let placed: Vec<usize> = (0..9).map(|_| b.assign(0)).collect();
        assert_eq!(placed, [0, 1, 2, 0, 1, 2, 0, 1, 2]);
        assert_eq!((b.load(0), b.load(1), b.load(2)), (3, 3, 3));
        // Equal counts: the accepting core keeps it.
        assert_eq!(b.assign(2), 2);
        // Core 2's connections end; the next ones go there whoever accepts them.
        for _ in 0..4 {
            b.ended(2);
        }
        assert_eq!(b.load(2), 0);
        assert_eq!(b.assign(1), 2);
        assert_eq!(b.assign(0), 2);
        assert_eq!(b.assign(0), 2);
        assert_eq!(b.assign(0), 0, "3, 3, 3 again: kept");
        let (lo, hi) = (0..3)
            .map(|c| b.load(c))
            .fold((usize::MAX, 0), |(lo, hi), n| (lo.min(n), hi.max(n)));
        assert!(hi - lo <= 1, "{b:?}");
    }

    /// A core without room, or retired, is never chosen.
    #[test]
    fn full_or_retired_cores_are_not_chosen() {
        let (b, _inboxes) = Balance::new(3, 2).expect("balance");
        assert_eq!([b.assign(0), b.assign(0), b.assign(0)], [0, 1, 2]);
        assert_eq!([b.assign(0), b.assign(0), b.assign(0)], [0, 1, 2]);
        // Every core is at its room of 2: the accepting core keeps what it accepts.
        assert_eq!([b.assign(1), b.assign(2)], [1, 2]);
        b.ended(0);
        b.ended(0);
        b.retire(0);
        assert_eq!(b.assign(2), 2, "core 0 serves fewest but is retired");
    }

    /// A hand-over wakes the receiving core; collecting takes everything queued and clears the wake-up;
    /// nothing is lost when hand-overs and collections interleave.
    #[test]
    fn handed_connections_are_collected_once_with_a_wake_up() {
        let (b, inboxes) = Balance::new(2, 100).expect("balance");
        assert!(!readable(b.wake(1)));
        b.hand_over(1, handed(0)).expect("queued");
        b.hand_over(1, handed(1)).expect("queued");
        assert!(readable(b.wake(1)));
        assert!(!readable(b.wake(0)), "only the receiving core is woken");
        let got = inboxes[1].collect();
        assert_eq!(
            got.iter().map(|h| h.listener).collect::<Vec<_>>(),
            [0, 1],
            "in the order handed"
        );
        assert!(!readable(b.wake(1)), "collecting clears the wake-up");
        assert!(inboxes[1].collect().is_empty());
        // Queued after a look: woken again.
        b.hand_over(1, handed(2)).expect("queued");
        assert!(readable(b.wake(1)));
        assert_eq!(inboxes[1].collect().len(), 1);
        assert!(b.hand_over(5, handed(0)).is_err(), "no core 5: handed back");
        b.retire(1);
        assert!(b.hand_over(1, handed(0)).is_err(), "retired: handed back");
        drop(inboxes);
        assert!(
            b.hand_over(0, handed(0)).is_err(),
            "inbox gone: handed back"
        );
    }
}
