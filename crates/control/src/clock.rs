//! Time as the control loops see it: a [`Clock`] to read and a [`Schedule`] that says when the next
//! catalog poll is due. Injected, so tests move time by hand instead of sleeping.

use std::time::{Duration, Instant};

/// A source of the current instant.
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> Instant;
}

/// The process's monotonic clock.
#[derive(Copy, Clone, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A periodic deadline: polls happen every `interval`, and a late poll does not make the next ones
/// bunch up (the next deadline counts from when the poll ran).
#[derive(Clone, Debug)]
pub struct Schedule {
    interval: Duration,
    next: Instant,
}

impl Schedule {
    /// A schedule whose first poll is due one interval after `now`.
    pub fn new(interval: Duration, now: Instant) -> Schedule {
        Schedule {
            interval,
            next: now + interval,
        }
    }

    /// The interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// A new interval, counted from `now`.
    pub fn set_interval(&mut self, interval: Duration, now: Instant) {
        self.interval = interval;
        self.next = now + interval;
    }

    /// How long to wait from `now` until the next poll (zero when it is due).
    pub fn wait(&self, now: Instant) -> Duration {
        self.next.saturating_duration_since(now)
    }

    /// True when a poll is due at `now`; the next one is then scheduled an interval later.
    pub fn due(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.next = now + self.interval;
        true
    }
}

#[cfg(test)]
pub(crate) mod manual {
    //! A clock the test moves.
    use super::Clock;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    /// A clock that only moves when told to.
    pub(crate) struct ManualClock(Mutex<Instant>);

    impl ManualClock {
        pub(crate) fn new() -> ManualClock {
            ManualClock(Mutex::new(Instant::now()))
        }
        pub(crate) fn advance(&self, by: Duration) {
            if let Ok(mut t) = self.0.lock() {
                *t += by;
            }
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> Instant {
            self.0
                .lock()
                .map(|t| *t)
                .unwrap_or_else(|e| *e.into_inner())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::manual::ManualClock;
    use super::*;

    #[test]
    fn polls_come_one_interval_apart_and_late_polls_do_not_bunch() {
        let clock = ManualClock::new();
        let mut s = Schedule::new(Duration::from_millis(500), clock.now());
        assert!(!s.due(clock.now()));
        assert_eq!(s.wait(clock.now()), Duration::from_millis(500));
        clock.advance(Duration::from_millis(499));
        assert!(!s.due(clock.now()));
        clock.advance(Duration::from_millis(1));
        assert!(s.due(clock.now()));
        assert!(!s.due(clock.now()), "one poll per deadline");
        // Three intervals late: one poll now, then a full interval.
        clock.advance(Duration::from_millis(1500));
        assert!(s.due(clock.now()));
        assert!(!s.due(clock.now()));
        assert_eq!(s.wait(clock.now()), Duration::from_millis(500));
        s.set_interval(Duration::from_millis(100), clock.now());
        clock.advance(Duration::from_millis(100));
        assert_eq!(s.wait(clock.now()), Duration::ZERO);
        assert!(s.due(clock.now()));
    }
}
