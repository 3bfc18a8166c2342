//! The circuit breaker of a Redis broker: fast refusals while Redis cannot be reached.
//!
//! Every command that fails to reach Redis (refused, reset, timed out) counts; a command
//! that gets an answer, whatever it is, resets the count. After `OPEN_AFTER` failures in a
//! row the circuit opens: publishes, enqueues, commits, nacks, declarations and consumers'
//! reads then fail at once with `Unavailable` (a transient error: ingest answers 503,
//! commits and reads retry with their backoff), without opening a connection or waiting
//! for a timeout. One probe task alone tries Redis, every `PROBE_EVERY`, with a `PING` on a
//! connection of its own; the first answer closes the circuit, and the broker looks at
//! once whether Redis kept its state (see `epoch`).
//!
//! This module owns the circuit's state, the probe task and what follows a close; which
//! commands go through the circuit is the broker's (see `health`).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::{AsyncConnectionConfig, Value};
use tracing::{debug, info, Instrument};

use super::{defaults, failure, Inner, ShardBroker};
use crate::broker::{BrokerError, ServerFailure};

/// The circuit breaker's state (see `ShardBroker::circuit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CircuitState {
    /// Commands are refused at once until a probe gets an answer.
    pub open: bool,
    /// Times it opened so far.
    pub opened: u64,
    /// Commands refused at once so far (none of them tried to reach Redis).
    pub refused: u64,
}

/// Failed commands in a row that open the circuit.
pub(super) const OPEN_AFTER: u32 = defaults::CIRCUIT_OPEN_AFTER;
/// How often the probe tries Redis while the circuit is open.
pub(super) const PROBE_EVERY: Duration = defaults::CIRCUIT_PROBE_EVERY;

#[derive(Default)]
pub(crate) struct Circuit {
    /// Failures to reach Redis in a row.
    failures: AtomicU32,
    open: AtomicBool,
    /// A probe task runs (one at most).
    probing: AtomicBool,
    /// Commands refused at once while open, over the life of the broker.
    refused: AtomicU64,
    /// Times the circuit opened.
    opened: AtomicU64,
    /// Why it opened (the last failure's reason), for the refusals' message.
    reason: Mutex<String>,
}

/// What a failure did to the circuit.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Failed {
    /// Not a failure to reach Redis, or not enough of them in a row yet.
    Counted,
    /// This failure opened the circuit: start the probe.
    Opened,
}

impl Circuit {
    /// Whether a command may go to Redis now; `Err` (at once) while the circuit is open.
    pub(super) fn admit(&self) -> Result<(), BrokerError> {
        if !self.open.load(Ordering::Acquire) {
            return Ok(());
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        let reason = self
            .reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Err(failure::unreachable(format!(
            "{reason} (refused at once: the circuit is open until Redis answers a probe)"
        )))
    }

    pub(super) fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Commands refused at once so far.
    pub(super) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Times the circuit opened so far.
    pub(super) fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// A command got an answer from Redis: the failures in a row start again from zero
    /// (an open circuit stays open: only the probe closes it).
    pub(super) fn answered(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// A command failed; counts it when it failed to reach Redis.
    pub(super) fn failed(&self, error: &ServerFailure) -> Failed {
        if !error.is_unreachable() || self.is_open() {
            return Failed::Counted;
        }
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures < OPEN_AFTER {
            return Failed::Counted;
        }
        *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = error.to_string();
        if self.open.swap(true, Ordering::AcqRel) {
            return Failed::Counted;
        }
        self.opened.fetch_add(1, Ordering::Relaxed);
        info!(
            failures,
            reason = %error,
            probe_every_ms = PROBE_EVERY.as_millis() as u64,
            "redis circuit open: commands are refused at once while a probe tries Redis"
        );
        Failed::Opened
    }

    /// Claims the right to run the probe task; false when one runs already.
    pub(super) fn start_probing(&self) -> bool {
        !self.probing.swap(true, Ordering::AcqRel)
    }

    /// The probe task ends (the circuit closed, or the broker is gone).
    pub(super) fn stop_probing(&self) {
        self.probing.store(false, Ordering::Release);
    }

    /// A probe got an answer: the circuit closes.
    pub(super) fn close(&self) {
        self.failures.store(0, Ordering::Relaxed);
        if self.open.swap(false, Ordering::AcqRel) {
            info!("redis circuit closed: Redis answered a probe; commands go to it again");
        }
    }
}

impl ShardBroker {
    /// Whether the circuit is open, how many times it opened, and how many commands it
    /// refused at once (for tests and tools).
    pub(crate) fn circuit(&self) -> CircuitState {
        let circuit = &self.inner.circuit;
        CircuitState {
            open: circuit.is_open(),
            opened: circuit.opened(),
            refused: circuit.refused(),
        }
    }

    /// Starts the probe that closes the circuit once Redis answers (one at a time).
    pub(super) fn start_probe(&self) {
        if !self.inner.circuit.start_probing() {
            return;
        }
        let span = tracing::info_span!("redis_probe", component = "broker");
        // Tracked by ownership: it holds a Weak and ends once the broker is gone or the
        // circuit is closed.
        tokio::spawn(run_probe(Arc::downgrade(&self.inner)).instrument(span));
    }

    /// One `PING` on a connection of its own, within a short timeout: does Redis answer?
    async fn probe(&self) -> bool {
        let wait = self.inner.options.response_timeout.min(defaults::PING_WAIT);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(wait))
            .set_response_timeout(Some(wait));
        let connected = self
            .inner
            .node
            .client()
            .get_multiplexed_async_connection_with_config(&config)
            .await;
        match connected {
            Ok(mut conn) => redis::cmd("PING")
                .query_async::<Value>(&mut conn)
                .await
                .is_ok(),
            Err(e) => {
                debug!(error = %e, "probe: redis still unreachable");
                false
            }
        }
    }
}

/// The circuit's probe: tries Redis every `PROBE_EVERY` until it answers, then closes the
/// circuit and has the watcher check at once whether Redis kept its state (see `epoch`).
async fn run_probe(weak: Weak<Inner>) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let Some(inner) = weak.upgrade() else { return };
        let broker = ShardBroker { inner };
        let circuit = &broker.inner.circuit;
        if !circuit.is_open() {
            circuit.stop_probing();
            return;
        }
        if broker.probe().await {
            // Stopped first: a failure once closed opens it again with a probe of its own.
            circuit.stop_probing();
            circuit.close();
            broker.inner.epoch.check_now.notify_one();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> ServerFailure {
        failure::describe(&redis::RedisError::from(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )))
    }

    #[test]
    fn two_failures_in_a_row_open_it_and_an_answer_in_between_resets() {
        let circuit = Circuit::default();
        assert_eq!(circuit.failed(&refused()), Failed::Counted);
        circuit.answered();
        assert_eq!(circuit.failed(&refused()), Failed::Counted);
        assert!(circuit.admit().is_ok());
        assert_eq!(circuit.failed(&refused()), Failed::Opened);
        assert!(circuit.is_open());
        // Once open, more failures change nothing and do not start a second probe.
        assert_eq!(circuit.failed(&refused()), Failed::Counted);
        assert_eq!(circuit.opened(), 1);
    }

    #[test]
    fn an_open_circuit_refuses_at_once_with_a_transient_error_until_closed() {
        let circuit = Circuit::default();
        circuit.failed(&refused());
        circuit.failed(&refused());
        let error = circuit.admit().expect_err("open");
        assert!(error.is_transient(), "{error:?}");
        assert!(error.to_string().contains("unavailable"), "{error}");
        assert_eq!(circuit.refused(), 1);
        // An answer to some other command does not close it: only the probe does.
        circuit.answered();
        assert!(circuit.admit().is_err());
        circuit.close();
        assert!(circuit.admit().is_ok());
        assert_eq!(circuit.refused(), 2);
    }

    #[test]
    fn answers_that_are_errors_do_not_count() {
        let circuit = Circuit::default();
        let wrong_type = failure::describe(&redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "WRONGTYPE",
        )));
        for _ in 0..5 {
            assert_eq!(circuit.failed(&wrong_type), Failed::Counted);
        }
        assert!(!circuit.is_open());
    }

    #[test]
    fn only_one_probe_runs() {
        let circuit = Circuit::default();
        assert!(circuit.start_probing());
        assert!(!circuit.start_probing());
        circuit.stop_probing();
        assert!(circuit.start_probing());
    }
}
