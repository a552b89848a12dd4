//! Waiting for a condition with a bound instead of sleeping: poll it, give up at a deadline.

use std::time::{Duration, Instant};

/// Polls `f` every 10 ms until it returns `Some`, for at most `limit`.
pub fn wait_for<T>(limit: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    poll_until(limit, f).unwrap_or_else(|| panic!("timed out waiting for {what}"))
}

/// `f`'s first answer within `limit`, asked every 10 ms (and once more at the limit); `None` if it
/// gave none.
pub fn poll_until<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
