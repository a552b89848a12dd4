//! The vendored glommio executor must not go to sleep while one of its own task queues holds
//! runnable work. It did, when its latency-preemption timer fired between polling the rings and
//! running the queues: the scheduler read "preempted before running anything" as "nothing to run" and
//! parked with no I/O or timer armed to wake it (seen as a gateway core that stopped serving under
//! load, its listener's accept queue growing). A preemption timer of a few microseconds makes that
//! ordering the common case, so a task that yields in a loop hangs the executor within a few
//! iterations unless the patch in `vendor/glommio/src/executor/mod.rs` is in place.

// The watchdog is a plain thread and channel: the executor under test may be the thing that hangs.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::sync::mpsc;
use std::time::Duration;

/// Yields this many times; with the bug, far fewer are enough to park for good.
const YIELDS: u32 = 20_000;
/// Ample for `YIELDS` turns of the executor (each a few microseconds); a parked executor never ends.
const LIMIT: Duration = Duration::from_secs(20);

fn finishes(preempt: Duration) -> bool {
    let (done, finished) = mpsc::channel();
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(512 * 1024)
        .preempt_timer(preempt)
        .spawn(move || async move {
            for _ in 0..YIELDS {
                glommio::executor().yield_now().await;
            }
            let _ = done.send(());
        })
        .expect("executor");
    let ok = finished.recv_timeout(LIMIT).is_ok();
    if ok {
        executor.join().expect("join");
    }
    // A hung executor thread is left behind: the test process ends with it.
    ok
}

#[test]
fn a_preempted_executor_with_runnable_tasks_does_not_park() {
    assert!(
        finishes(Duration::from_micros(1)),
        "the executor parked with a runnable task (preempted before running its queues)"
    );
}

#[test]
fn the_default_preemption_timer_runs_to_the_end() {
    assert!(finishes(Duration::from_millis(100)));
}
