//! What a Redis broker knows about its server being down, shared by every task of the
//! process (ingest, consumers, the deferred mover, `/healthz`). They retry with
//! `broker::backoff`.
//!
//! The log says when an outage starts (one warning, with the reason), reminds every
//! `REMIND_EVERY` while it lasts, and says when it ends (with how long it lasted): one line
//! per event, however many consumers retry and requests fail meanwhile. Each retry is
//! logged at debug level only.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::broker::BrokerError;

/// How often a warning repeats while Redis stays unreachable.
const REMIND_EVERY: Duration = super::defaults::OUTAGE_REMIND_EVERY;

pub(crate) use crate::broker::backoff::{jittered, BACKOFF_START};

#[derive(Default)]
pub(crate) struct Outage {
    /// Fast path for `recovered`, called after every successful command.
    down: AtomicBool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    since: Option<Instant>,
    last_warned: Option<Instant>,
    failures: u64,
    reason: String,
    /// The first success since the outage began. A command sent before Redis went away can
    /// still succeed just after (a reply already on its way), so one success does not end
    /// the outage: only successes for `SETTLE` with no failure do.
    recovering_since: Option<Instant>,
}

/// How long commands must keep succeeding before an outage counts as over.
const SETTLE: Duration = super::defaults::OUTAGE_SETTLE;

impl Outage {
    /// Records a failed command. `what` says who failed ("ingest", "consumer", ...).
    pub(crate) fn failed(&self, what: &str, error: &BrokerError) {
        let reason = describe(error);
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.failures += 1;
        if let Some(recovering) = state.recovering_since.take() {
            if now - recovering >= SETTLE {
                // Up long enough before this failure: that outage was over, this is a new one.
                state.since = None;
                state.failures = 1;
                state.last_warned = None;
            }
        }
        match state.since {
            None => {
                state.since = Some(now);
                state.last_warned = Some(now);
                self.down.store(true, Ordering::Release);
                warn!(%reason, first_failure = what, "redis unreachable: ingest answers 503 and subscribers retry with backoff until it is back");
            }
            Some(since) if state.last_warned.is_none_or(|t| now - t >= REMIND_EVERY) => {
                state.last_warned = Some(now);
                warn!(%reason, down_for = ?(now - since).as_secs(), failed_attempts = state.failures, "redis still unreachable");
            }
            Some(_) => debug!(%reason, what, "redis command failed"),
        }
        state.reason = reason;
    }

    /// Records a command that succeeded; logs the end of an outage once.
    pub(crate) fn recovered(&self) {
        if !self.down.load(Ordering::Acquire) {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let recovering = *state.recovering_since.get_or_insert(now);
        if now - recovering < SETTLE {
            return;
        }
        state.recovering_since = None;
        if let Some(since) = state.since.take() {
            self.down.store(false, Ordering::Release);
            info!(
                down_for_ms = since.elapsed().as_millis() as u64,
                failed_attempts = state.failures,
                "redis reachable again; work goes on"
            );
            state.failures = 0;
            state.last_warned = None;
        }
    }

    /// Since when and why Redis is down, if it is.
    pub(crate) fn down(&self) -> Option<(Duration, String)> {
        if !self.down.load(Ordering::Acquire) {
            return None;
        }
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.recovering_since.is_some() {
            // Commands succeed again (not yet for `SETTLE`): serving.
            return None;
        }
        state.since.map(|s| (s.elapsed(), state.reason.clone()))
    }
}

/// The error and its cause in one line (never the URL: Redis's failures do not quote it,
/// and URL errors are redacted before they get here).
pub(crate) fn describe(error: &BrokerError) -> String {
    match error {
        BrokerError::Unavailable { source } => source.to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{FailureKind, ServerFailure};

    #[test]
    fn an_outage_is_down_until_a_command_succeeds() {
        let outage = Outage::default();
        assert!(outage.down().is_none());
        let error = BrokerError::Unavailable {
            source: ServerFailure::new(FailureKind::Unreachable, "connection refused"),
        };
        outage.failed("test", &error);
        outage.failed("test", &error);
        let (_, reason) = outage.down().expect("down");
        assert!(reason.contains("refused"), "{reason}");
        outage.recovered();
        assert!(outage.down().is_none());
    }

    #[test]
    fn a_success_right_after_a_failure_does_not_end_the_outage() {
        let refused = || BrokerError::Unavailable {
            source: ServerFailure::new(FailureKind::Unreachable, "connection refused"),
        };
        let outage = Outage::default();
        outage.failed("mover", &refused());
        // A reply that was already on its way when Redis went away, then another failure:
        // the same outage (one warning), not a recovery and a second outage.
        outage.recovered();
        outage.failed("consumer", &refused());
        assert!(outage.down().is_some());
        assert_eq!(outage.state.lock().unwrap().failures, 2);
    }
}
