//! The watch's rules with a scripted transport and a fake clock: no real time passes.

use super::*;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

/// Time that moves only when the watch sleeps (or the test advances it); jitter returns a fixed fraction
/// of its bound so the test knows the exact delay.
struct FakeClock {
    now: Cell<Instant>,
    sleeps: RefCell<Vec<Duration>>,
    jitter_fraction: f64,
}

impl FakeClock {
    fn new(jitter_fraction: f64) -> FakeClock {
        FakeClock {
            now: Cell::new(Instant::now()),
            sleeps: RefCell::new(Vec::new()),
            jitter_fraction,
        }
    }
}

impl Clock for &FakeClock {
    fn now(&self) -> Instant {
        self.now.get()
    }
    fn sleep(&self, d: Duration) {
        self.sleeps.borrow_mut().push(d);
        self.now.set(self.now.get() + d);
    }
    fn jitter(&self, max: Duration) -> Duration {
        max.mul_f64(self.jitter_fraction)
    }
}

/// Answers from a script; each takes `latency` of fake time; records the requests.
struct Script<'c> {
    clock: &'c FakeClock,
    answers: RefCell<VecDeque<Result<Response>>>,
    sent: RefCell<Vec<Request>>,
    latency: Duration,
}

impl<'c> Script<'c> {
    fn new(clock: &'c FakeClock, answers: Vec<Result<Response>>) -> Script<'c> {
        Script {
            clock,
            answers: RefCell::new(answers.into()),
            sent: RefCell::new(Vec::new()),
            latency: Duration::from_millis(1),
        }
    }
    fn query(&self, i: usize, key: &str) -> Option<String> {
        self.sent.borrow()[i].query_value(key).map(str::to_string)
    }
}

impl Transport for Script<'_> {
    fn send(&self, request: &Request) -> Result<Response> {
        self.sent.borrow_mut().push(request.clone());
        self.clock.now.set(self.clock.now.get() + self.latency);
        self.answers
            .borrow_mut()
            .pop_front()
            .unwrap_or_else(|| Err(Error::Config("script exhausted".into())))
    }
}

fn ok(index: Option<u64>, body: &str) -> Result<Response> {
    Ok(Response {
        status: 200,
        index,
        body: body.as_bytes().to_vec(),
        ..Response::default()
    })
}

fn down() -> Result<Response> {
    Err(Error::Unreachable {
        addr: "127.0.0.1:8500".into(),
        source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
    })
}

#[test]
fn first_round_does_not_block_then_blocks_on_the_index() {
    let clock = FakeClock::new(1.0);
    let script = Script::new(
        &clock,
        vec![
            ok(Some(5), "a"),
            ok(Some(5), "a"),
            ok(Some(7), "b"),
            ok(Some(8), "b"),
        ],
    );
    let mut w = Watch::new("/v1/health/connect/api")
        .query("cached", "")
        .with_clock(&clock);
    let a = w.poll(&script).expect("first").expect("changed");
    assert_eq!((a.index, a.body.as_slice()), (Some(5), &b"a"[..]));
    assert!(
        w.poll(&script).expect("same").is_none(),
        "same index, same body: unchanged"
    );
    assert_eq!(w.poll(&script).expect("new").expect("changed").body, b"b");
    // The index moved but the answer did not (a write elsewhere): not worth a rebuild.
    assert!(w.poll(&script).expect("moved").is_none());
    assert_eq!(w.index(), 8);

    assert_eq!(script.query(0, "index"), None);
    assert_eq!(script.query(0, "cached").as_deref(), Some(""));
    assert_eq!(script.query(1, "index").as_deref(), Some("5"));
    assert_eq!(script.query(1, "wait").as_deref(), Some("300s"));
    assert_eq!(script.query(2, "index").as_deref(), Some("5"));
    assert_eq!(script.query(3, "index").as_deref(), Some("7"));
    // The client deadline covers the server's wait/16 jitter.
    let timeout = Policy::default().blocking_timeout();
    assert_eq!(
        timeout,
        Duration::from_secs(300) + Duration::from_millis(18_750) + Duration::from_secs(5)
    );
    assert_eq!(
        w.stats(),
        Stats {
            requests: 4,
            changes: 2,
            errors: 0,
            resets: 0
        }
    );
}

#[test]
fn index_below_one_counts_as_one() {
    let clock = FakeClock::new(1.0);
    let script = Script::new(&clock, vec![ok(Some(0), "[]"), ok(Some(1), "[]")]);
    let mut w = Watch::new("/v1/catalog/services").with_clock(&clock);
    assert!(w.poll(&script).expect("first").is_some());
    assert_eq!(w.index(), 1);
    assert!(w.poll(&script).expect("second").is_none());
    assert_eq!(script.query(1, "index").as_deref(), Some("1"));
}

#[test]
fn index_going_backwards_resets_to_zero() {
    let clock = FakeClock::new(1.0);
    let script = Script::new(
        &clock,
        vec![
            ok(Some(40), "old"),
            ok(Some(12), "restored"),
            ok(Some(12), "restored"),
            ok(Some(13), "next"),
        ],
    );
    let mut w = Watch::new("/v1/catalog/services").with_clock(&clock);
    w.poll(&script).expect("first");
    assert_eq!(
        w.poll(&script).expect("backwards").expect("changed").body,
        b"restored"
    );
    assert_eq!(w.index(), 0, "reset");
    assert_eq!(script.query(2 - 1, "index").as_deref(), Some("40"));
    // The round after a reset does not block, and repeats nothing to the caller.
    assert!(w.poll(&script).expect("after reset").is_none());
    assert_eq!(script.query(2, "index"), None);
    assert_eq!(
        w.poll(&script).expect("next").expect("changed").body,
        b"next"
    );
    assert_eq!(script.query(3, "index").as_deref(), Some("12"));
    assert_eq!(w.stats().resets, 1);
}

#[test]
fn errors_back_off_exponentially_with_jitter_up_to_the_cap_and_reset_on_success() {
    let clock = FakeClock::new(0.5);
    let mut answers: Vec<Result<Response>> = (0..9).map(|_| down()).collect();
    answers.push(ok(Some(3), "x"));
    answers.push(down());
    let script = Script::new(&clock, answers);
    let mut w = Watch::new("/v1/catalog/services").with_clock(&clock);
    for n in 1..=9u32 {
        let e = w.poll(&script).expect_err("down");
        assert!(e.is_transient());
        assert_eq!(w.failures(), n);
    }
    // Sleeps before rounds 2..=10: half (the fake jitter) of 1, 2, 4, … 60 s.
    let expected: Vec<Duration> = [1, 2, 4, 8, 16, 32, 60, 60, 60]
        .iter()
        .map(|s| Duration::from_secs(*s) / 2)
        .collect();
    assert!(w.poll(&script).expect("back").is_some());
    assert_eq!(*clock.sleeps.borrow(), expected);
    assert_eq!(w.failures(), 0);
    w.poll(&script).expect_err("down again");
    // The next round waits the first step again (plus nothing for the rate limit: it is longer).
    clock.sleeps.borrow_mut().clear();
    let _ = w.poll(&script);
    assert_eq!(*clock.sleeps.borrow(), [Duration::from_millis(500)]);
}

#[test]
fn backoff_never_waits_less_than_the_minimum_interval() {
    let clock = FakeClock::new(0.0);
    let script = Script::new(&clock, vec![down(), down()]);
    let mut w = Watch::new("/v1/catalog/services").with_clock(&clock);
    let _ = w.poll(&script);
    let _ = w.poll(&script);
    let slept: Duration = clock.sleeps.borrow().iter().sum();
    assert_eq!(slept, Policy::default().min_interval);
}

#[test]
fn churn_is_rate_limited_but_a_quiet_watch_never_sleeps() {
    let clock = FakeClock::new(1.0);
    let policy = Policy {
        min_interval: Duration::from_millis(200),
        ..Policy::default()
    };
    let mut script = Script::new(
        &clock,
        vec![
            ok(Some(1), "a"),
            ok(Some(2), "b"),
            ok(Some(3), "c"),
            ok(Some(4), "d"),
        ],
    );
    let mut w = Watch::new("/v1/catalog/services")
        .policy(policy)
        .with_clock(&clock);
    // Answers that come back at once: each next request waits out the rest of the interval.
    w.poll(&script).expect("a");
    w.poll(&script).expect("b");
    assert_eq!(*clock.sleeps.borrow(), [Duration::from_millis(199)]);
    // A change that arrives after blocking longer than the interval is asked for at once.
    script.latency = Duration::from_secs(30);
    w.poll(&script).expect("c");
    clock.sleeps.borrow_mut().clear();
    w.poll(&script).expect("d");
    assert!(
        clock.sleeps.borrow().is_empty(),
        "{:?}",
        clock.sleeps.borrow()
    );
}

#[test]
fn unexpected_status_is_an_error_but_not_found_can_be_an_answer() {
    let clock = FakeClock::new(1.0);
    let not_found = || {
        Ok(Response {
            status: 404,
            index: Some(12),
            body: b"Config entry not found".to_vec(),
            ..Response::default()
        })
    };
    let script = Script::new(&clock, vec![not_found(), not_found()]);
    let mut strict = Watch::new("/v1/config/service-defaults/api").with_clock(&clock);
    let e = strict.poll(&script).expect_err("404");
    assert_eq!(e.status(), Some(404));
    let mut lenient = Watch::new("/v1/config/service-defaults/api")
        .allow_not_found()
        .with_clock(&clock);
    let a = lenient.poll(&script).expect("404 answer").expect("changed");
    assert!(!a.found());
    assert_eq!(
        lenient.index(),
        12,
        "a missing entry still blocks on its index"
    );
}

#[test]
fn polled_and_unblocked_endpoints_wait_their_interval() {
    let clock = FakeClock::new(1.0);
    let script = Script::new(
        &clock,
        vec![ok(None, "[\"dc1\"]"), ok(None, "[\"dc1\"]"), ok(None, "[]")],
    );
    let mut w = Watch::new("/v1/catalog/datacenters")
        .mode(Mode::Poll(Duration::from_secs(30)))
        .with_clock(&clock);
    assert!(w.poll(&script).expect("first").is_some());
    assert!(w.poll(&script).expect("same").is_none());
    assert_eq!(
        *clock.sleeps.borrow(),
        [Duration::from_secs(30) - script.latency]
    );
    assert_eq!(script.query(1, "index"), None);
    assert_eq!(script.query(1, "wait"), None);

    // An index watch whose endpoint gives no index falls back to the same pace.
    let clock = FakeClock::new(1.0);
    let script = Script::new(&clock, vec![ok(None, "a"), ok(None, "a")]);
    let mut w = Watch::new("/v1/catalog/datacenters").with_clock(&clock);
    w.poll(&script).expect("first");
    w.poll(&script).expect("second");
    assert_eq!(
        *clock.sleeps.borrow(),
        [UNBLOCKED_INTERVAL - script.latency]
    );
}

#[test]
fn hash_mode_blocks_on_the_content_hash() {
    let clock = FakeClock::new(1.0);
    let with_hash = |h: &str, body: &str| {
        Ok(Response {
            status: 200,
            content_hash: Some(h.into()),
            body: body.as_bytes().to_vec(),
            ..Response::default()
        })
    };
    let script = Script::new(
        &clock,
        vec![with_hash("aa", "{}"), with_hash("bb", "{\"Port\":1}")],
    );
    let mut w = Watch::new("/v1/agent/service/web-sidecar-proxy")
        .mode(Mode::Hash)
        .with_clock(&clock);
    w.poll(&script).expect("first");
    assert!(w.poll(&script).expect("second").is_some());
    assert_eq!(script.query(0, "hash"), None);
    assert_eq!(script.query(1, "hash").as_deref(), Some("aa"));
    assert_eq!(script.query(1, "index"), None);
}

#[test]
fn staleness_counts_from_the_last_success() {
    let clock = FakeClock::new(1.0);
    let script = Script::new(&clock, vec![ok(Some(2), "a"), down()]);
    let mut w = Watch::new("/v1/catalog/services").with_clock(&clock);
    assert_eq!(w.staleness(), None);
    w.poll(&script).expect("first");
    let _ = w.poll(&script);
    clock.now.set(clock.now.get() + Duration::from_secs(5));
    let stale = w.staleness().expect("some");
    assert!(
        stale >= Duration::from_secs(5) && stale < Duration::from_secs(6),
        "{stale:?}"
    );
}

#[test]
fn system_clock_jitter_stays_in_bounds() {
    let clock = SystemClock::default();
    for max in [0u64, 1, 7, 1000, 60_000_000_000] {
        for _ in 0..100 {
            assert!(clock.jitter(Duration::from_nanos(max)) <= Duration::from_nanos(max));
        }
    }
}

proptest::proptest! {
    #[test]
    fn backoff_ceiling_is_monotonic_and_capped(n in 1u32..10_000) {
        let p = Policy::default();
        proptest::prop_assert!(p.backoff_ceiling(n) <= p.backoff_cap);
        proptest::prop_assert!(p.backoff_ceiling(n) <= p.backoff_ceiling(n + 1));
        proptest::prop_assert!(p.backoff_ceiling(n) >= p.backoff_base.min(p.backoff_cap));
    }
}

#[test]
fn wait_is_kept_within_what_consul_honours() {
    let p = |wait| Policy {
        wait,
        ..Policy::default()
    };
    assert_eq!(p(Duration::ZERO).effective_wait(), Duration::from_secs(1));
    assert_eq!(p(Duration::from_secs(3600)).effective_wait(), MAX_WAIT);
    let w = Watch::new("/v1/catalog/services").policy(p(Duration::from_millis(1500)));
    let clock = FakeClock::new(1.0);
    let script = Script::new(&clock, vec![ok(Some(4), "a")]);
    let mut w = w.with_clock(&clock);
    w.poll(&script).expect("first");
    assert_eq!(w.next_request().query_value("wait"), Some("1500ms"));
}

#[test]
fn a_lost_agent_is_asked_without_blocking_when_it_returns() {
    // A -dev agent restarted (or a rebuilt cluster) answers with lower indexes: blocking on index 40
    // would hold the first answer for the whole wait.
    let clock = FakeClock::new(1.0);
    let cut = Err(Error::Io {
        method: "GET",
        path: "/v1/catalog/services".into(),
        phase: "reading the answer",
        source: std::io::Error::from(std::io::ErrorKind::ConnectionReset),
    });
    let script = Script::new(
        &clock,
        vec![
            ok(Some(40), "a"),
            cut,
            down(),
            ok(Some(12), "a"),
            ok(Some(13), "b"),
        ],
    );
    let mut w = Watch::new("/v1/catalog/services").with_clock(&clock);
    w.poll(&script).expect("first");
    w.poll(&script).expect_err("cut");
    assert_eq!(w.index(), 0);
    w.poll(&script).expect_err("down");
    assert_eq!(script.query(2, "index"), None);
    // Back: not blocked, and the same answer is not a change.
    assert!(w.poll(&script).expect("back").is_none());
    assert_eq!(script.query(3, "index"), None);
    assert_eq!(w.index(), 12);
    assert_eq!(w.poll(&script).expect("next").expect("changed").body, b"b");
    assert_eq!(script.query(4, "index").as_deref(), Some("12"));
}
