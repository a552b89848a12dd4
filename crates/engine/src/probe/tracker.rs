//! One probed endpoint's verdict, IO-free: up/down with hysteresis, a smoothed RTT, when the state last
//! changed, and when to probe next. The prober feeds it results and the time; nothing here reads a clock.

use meshgate_route::Liveness;
use std::time::Duration;

/// A new RTT sample weighs 1/this in the moving average (1/4: a single slow connect moves it a little).
const EWMA_DIVISOR: u32 = 4;

/// An endpoint's state as the probes decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No verdict yet: tried like any endpoint.
    Unknown,
    /// Reachable.
    Up,
    /// Unreachable: connections skip it.
    Down,
}

/// How many results change a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Consecutive failures that mark an endpoint (up or unknown) down.
    pub down_after: u32,
    /// Consecutive successes that mark a down endpoint up (an unknown one is up after its first).
    pub up_after: u32,
}

/// One endpoint's verdict and counters.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracker {
    state: State,
    /// Consecutive results of the same kind as the last one (positive: successes, negative: failures).
    streak: i64,
    rtt: Option<Duration>,
    /// When the state last changed, as the caller's wall clock (seconds since the Unix epoch).
    last_change: Option<f64>,
    /// Probes that succeeded and failed, since the endpoint became a target.
    pub ok: u64,
    /// See `ok`.
    pub failed: u64,
}

impl Default for Tracker {
    fn default() -> Self {
        Self::new()
    }
}

impl Tracker {
    /// A fresh endpoint: no verdict.
    pub fn new() -> Self {
        Self {
            state: State::Unknown,
            streak: 0,
            rtt: None,
            last_change: None,
            ok: 0,
            failed: 0,
        }
    }

    /// The state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Smoothed connect time (kept, not reset, while down: the last known distance).
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// When the state last changed (seconds since the epoch), if it ever did.
    pub fn last_change(&self) -> Option<f64> {
        self.last_change
    }

    /// What the data plane routes by.
    pub fn liveness(&self) -> Liveness {
        match self.state {
            State::Unknown => Liveness::Unknown,
            State::Down => Liveness::Down,
            State::Up => Liveness::Up {
                rtt_micros: self
                    .rtt
                    .map_or(0, |r| u32::try_from(r.as_micros()).unwrap_or(u32::MAX)),
            },
        }
    }

    /// Records one probe: `Some(rtt)` when it connected. Returns true when the state changed.
    pub fn record(&mut self, result: Option<Duration>, t: Thresholds, now_unix: f64) -> bool {
        match result {
            Some(rtt) => {
                self.ok += 1;
                self.streak = if self.streak > 0 { self.streak + 1 } else { 1 };
                self.rtt = Some(match self.rtt {
                    Some(old) => (old * (EWMA_DIVISOR - 1) + rtt) / EWMA_DIVISOR,
                    None => rtt,
                });
            }
            None => {
                self.failed += 1;
                self.streak = if self.streak < 0 { self.streak - 1 } else { -1 };
            }
        }
        let next = match self.state {
            State::Unknown if self.streak > 0 => State::Up,
            State::Down if self.streak >= i64::from(t.up_after) => State::Up,
            State::Unknown | State::Up if -self.streak >= i64::from(t.down_after) => State::Down,
            s => s,
        };
        let changed = next != self.state;
        if changed {
            self.state = next;
            self.last_change = Some(now_unix);
        }
        changed
    }

    /// True while results disagree with the state (a failure while up, a success while down) or there
    /// is no verdict yet: the prober probes again after the short recheck interval, not the full one.
    pub fn deciding(&self) -> bool {
        match self.state {
            State::Unknown => true,
            State::Up => self.streak < 0,
            State::Down => self.streak > 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds {
        down_after: 3,
        up_after: 2,
    };
    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn unknown_is_up_after_one_success_and_down_after_n_failures() {
        let mut a = Tracker::new();
        assert!(a.deciding());
        assert!(a.record(Some(MS), T, 1.0));
        assert_eq!((a.state(), a.last_change()), (State::Up, Some(1.0)));
        assert!(!a.deciding());
        let mut b = Tracker::new();
        assert!(!b.record(None, T, 1.0));
        assert!(!b.record(None, T, 2.0));
        assert_eq!(b.liveness(), Liveness::Unknown);
        assert!(b.record(None, T, 3.0));
        assert_eq!((b.state(), b.last_change()), (State::Down, Some(3.0)));
    }

    #[test]
    fn hysteresis_both_ways() {
        let mut a = Tracker::new();
        a.record(Some(MS), T, 0.0);
        // Two failures and a success: still up, and the streak starts again.
        assert!(!a.record(None, T, 1.0));
        assert!(a.deciding(), "a failure while up asks for a recheck");
        assert!(!a.record(None, T, 2.0));
        assert!(!a.record(Some(MS), T, 3.0));
        assert!(!a.deciding());
        assert!(!a.record(None, T, 4.0));
        assert!(!a.record(None, T, 5.0));
        assert_eq!(a.state(), State::Up);
        assert!(a.record(None, T, 6.0));
        assert_eq!((a.state(), a.last_change()), (State::Down, Some(6.0)));
        assert!(!a.deciding());
        // One success is not enough to come back; a failure in between starts over.
        assert!(!a.record(Some(MS), T, 7.0));
        assert!(a.deciding());
        assert!(!a.record(None, T, 8.0));
        assert!(!a.record(Some(MS), T, 9.0));
        assert!(a.record(Some(MS), T, 10.0));
        assert_eq!((a.state(), a.last_change()), (State::Up, Some(10.0)));
        assert_eq!((a.ok, a.failed), (5, 6));
    }

    #[test]
    fn rtt_is_a_moving_average_kept_while_down() {
        let mut a = Tracker::new();
        a.record(Some(Duration::from_millis(8)), T, 0.0);
        assert_eq!(a.liveness(), Liveness::Up { rtt_micros: 8_000 });
        a.record(Some(Duration::from_millis(4)), T, 0.0);
        assert_eq!(a.liveness(), Liveness::Up { rtt_micros: 7_000 });
        for _ in 0..3 {
            a.record(None, T, 0.0);
        }
        assert_eq!(a.liveness(), Liveness::Down);
        assert_eq!(a.rtt(), Some(Duration::from_millis(7)));
    }

    #[test]
    fn thresholds_of_one_flip_at_once() {
        let t = Thresholds {
            down_after: 1,
            up_after: 1,
        };
        let mut a = Tracker::new();
        assert!(a.record(None, t, 0.0));
        assert!(a.record(Some(MS), t, 0.0));
        assert!(a.record(None, t, 0.0));
        assert_eq!(a.state(), State::Down);
    }
}
