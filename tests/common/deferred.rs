//! Timing what a tap sees, for deferred execution: on paused tokio time the instants are
//! virtual, so a test can assert due times to the millisecond without sleeping.

use std::sync::Arc;
use std::time::Duration;

use edaflow::event::Event;
use tokio::sync::mpsc;

/// The next event of a tap and the tokio time it arrived, measured from `since`; panics
/// after `within` of (virtual) time.
pub async fn next_timed(
    tap: &mut mpsc::Receiver<Arc<Event>>,
    since: tokio::time::Instant,
    within: Duration,
) -> (Arc<Event>, Duration) {
    match tokio::time::timeout(within, tap.recv()).await {
        Ok(Some(event)) => (event, since.elapsed()),
        Ok(None) => panic!("the tap closed"),
        Err(_) => panic!("no event within {within:?}"),
    }
}

/// Asserts `at` is `expected` give or take `slack`.
pub fn assert_near(what: &str, at: Duration, expected: Duration, slack: Duration) {
    let low = expected.saturating_sub(slack);
    let high = expected + slack;
    assert!(
        at >= low && at <= high,
        "{what}: at {at:?}, expected {expected:?} ± {slack:?}"
    );
}
