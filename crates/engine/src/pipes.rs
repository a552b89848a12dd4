//! The per-core pool of splice pipes, and the lease a relay direction holds while bytes are in flight.
//!
//! A pipe is leased only while bytes sit in it: an idle direction gives its (empty) pipe back before it
//! waits, so the pool is sized by the connections moving data, not by the connections open.

use crate::sys::{self, Pipe};
use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

/// Most pipes per core when no budget says otherwise (tests).
pub(crate) const PIPE_POOL_MAX: usize = crate::budget::MAX_PIPES_PER_CORE;
/// Capacity asked for each pipe, in bytes (the kernel default).
pub(crate) const PIPE_SIZE: usize = 64 * 1024;

/// One core's pipes: the idle ones, and a count of all (leased too). Lives on its core (`RefCell`,
/// never across threads).
pub(crate) struct PipePool {
    idle: RefCell<Vec<Pipe>>,
    /// Most pipes, leased and idle together (the core's share of the descriptor budget): past it a
    /// direction relays through a buffer instead.
    cap: usize,
    /// Pipes open now, leased or idle.
    open: Cell<usize>,
    /// The fewest pipes idle at any moment since the last [`PipePool::trim`]: that many were not
    /// needed during the whole interval.
    low: Cell<usize>,
}

impl Default for PipePool {
    fn default() -> Self {
        PipePool::with_cap(PIPE_POOL_MAX)
    }
}

impl PipePool {
    /// A pool of at most `cap` pipes.
    pub(crate) fn with_cap(cap: usize) -> PipePool {
        PipePool {
            idle: RefCell::new(Vec::new()),
            cap,
            open: Cell::new(0),
            low: Cell::new(0),
        }
    }

    /// A pipe from the pool, or a new one while under the cap.
    fn take(&self) -> io::Result<Pipe> {
        let mut idle = self.idle.borrow_mut();
        let taken = idle.pop();
        self.low.set(self.low.get().min(idle.len()));
        match taken {
            Some(p) => Ok(p),
            None if self.open.get() >= self.cap => Err(io::Error::other(
                "this core's pipes are all in use (descriptor budget)",
            )),
            None => {
                let p = sys::pipe(PIPE_SIZE)?;
                self.open.set(self.open.get() + 1);
                Ok(p)
            }
        }
    }

    /// Closes a pipe of this pool.
    fn close(&self, pipe: Pipe) {
        drop(pipe);
        self.open.set(self.open.get().saturating_sub(1));
    }

    /// Closes the pipes no connection needed since the last trim (a burst's leftovers), keeping what
    /// the interval's busiest moment used; called every few seconds on the core's tick.
    pub(crate) fn trim(&self) {
        let unused: Vec<Pipe> = {
            let mut idle = self.idle.borrow_mut();
            let unused = self.low.get().min(idle.len());
            let keep = idle.len() - unused;
            let gone = idle.split_off(keep);
            self.low.set(idle.len());
            gone
        };
        for p in unused {
            self.close(p);
        }
    }

    /// Returns a pipe known to be empty (its last splice drained it).
    fn give_empty(&self, pipe: Pipe) {
        self.idle.borrow_mut().push(pipe);
    }

    /// Returns a pipe if it is empty; a pipe with bytes left in it is closed.
    fn give(&self, pipe: Pipe) {
        if matches!(sys::pipe_pending(pipe.read.as_fd()), Ok(0)) {
            self.give_empty(pipe);
        } else {
            self.close(pipe);
        }
    }

    /// Pipes waiting in the pool.
    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        self.idle.borrow().len()
    }

    /// An empty lease on this pool.
    pub(crate) fn lease(&self) -> Lease<'_> {
        Lease {
            pool: self,
            pipe: None,
        }
    }
}

/// A pipe borrowed from a pool (or none yet); goes back on drop, or is closed if bytes are stuck in it.
pub(crate) struct Lease<'p> {
    pool: &'p PipePool,
    pipe: Option<Pipe>,
}

impl Lease<'_> {
    /// Makes sure a pipe is held: taken from the pool or made.
    pub(crate) fn hold(&mut self) -> io::Result<()> {
        if self.pipe.is_none() {
            self.pipe = Some(self.pool.take()?);
        }
        Ok(())
    }

    /// The write end, if a pipe is held.
    pub(crate) fn write_end(&self) -> Option<BorrowedFd<'_>> {
        self.pipe.as_ref().map(|p| p.write.as_fd())
    }

    /// The read end, if a pipe is held.
    pub(crate) fn read_end(&self) -> Option<BorrowedFd<'_>> {
        self.pipe.as_ref().map(|p| p.read.as_fd())
    }

    /// Gives back a pipe known to be empty (nothing pending in it), without checking.
    pub(crate) fn release_empty(&mut self) {
        if let Some(p) = self.pipe.take() {
            self.pool.give_empty(p);
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.pipe.take() {
            self.pool.give(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Holds `n` leases at once, then gives them all back.
    fn burst(pool: &PipePool, n: usize) {
        let mut leases: Vec<Lease<'_>> = (0..n).map(|_| pool.lease()).collect();
        for l in &mut leases {
            l.hold().expect("pipe");
        }
    }

    #[test]
    fn pipes_idle_for_a_whole_interval_are_closed() {
        let pool = PipePool::default();
        burst(&pool, 8);
        assert_eq!(pool.idle(), 8);
        // The burst was in this interval: nothing was idle throughout, nothing goes.
        pool.trim();
        assert_eq!(pool.idle(), 8);
        // Next interval, at most 3 were in use at once: the 5 never taken are closed.
        burst(&pool, 3);
        burst(&pool, 2);
        pool.trim();
        assert_eq!(pool.idle(), 3);
        // A quiet interval: all go.
        pool.trim();
        assert_eq!(pool.idle(), 0);
        burst(&pool, 1);
        assert_eq!(pool.idle(), 1);
    }

    #[test]
    fn past_the_cap_no_pipe_is_made() {
        let pool = PipePool::with_cap(2);
        let mut a = pool.lease();
        let mut b = pool.lease();
        let mut c = pool.lease();
        a.hold().expect("first");
        b.hold().expect("second");
        assert!(c.hold().is_err(), "a third pipe over the cap");
        drop(a);
        c.hold().expect("the returned one");
    }
}
