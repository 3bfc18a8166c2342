//! Where a connection stands: waiting for a head (on the header or the idle clock), or
//! with a request whose body may still be arriving and whose answer may still be going.
//! Shared by the socket (`socket::ConnIo`), which reads its clocks from it, and the
//! bodies (`service`), which tell it when a body ended and an answer was handed over.

use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};
use std::time::Duration;

use tokio::time::Instant;

use super::Timeouts;
use crate::runtime::metrics::Metrics;

/// How long past `body_timeout` the socket itself gives up on a body nobody reads (the
/// handler, which reads the body, answers 408 at `body_timeout`).
const BODY_BACKSTOP: Duration = Duration::from_secs(1);

/// Where the connection stands, shared by the socket (`ConnIo`) and the bodies.
pub(super) struct Progress {
    pub(super) timeouts: Timeouts,
    /// Where the clocks that run out are counted.
    pub(super) metrics: Arc<Metrics>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    stage: Stage,
    /// Whether everything written for the last answer has been flushed since it was
    /// complete: only then is a write in the `Head` stage one of hyper's own refusals
    /// (and only then may this module write a 408).
    flushed: bool,
    /// The task waiting on a read. hyper does not read again by itself when a request is
    /// over (its last read, made while answering, is still pending); woken then, it does,
    /// and the read finds the idle clock to run.
    reader: Option<Waker>,
}

#[derive(Clone, Copy, Debug)]
enum Stage {
    /// Waiting for a request head, which must be complete by `deadline`.
    Head {
        deadline: Instant,
        /// Some bytes of the head have arrived.
        started: bool,
        /// `deadline` is the header clock (else the idle one, until a byte arrives).
        header_clock: bool,
    },
    /// A request is with the router.
    Request {
        /// When its body must be in, while it is still arriving.
        body_deadline: Option<Instant>,
        /// Its answer has been handed over whole (its body dropped by hyper).
        answered: bool,
    },
}

/// What the socket does when its read clock runs out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Expiry {
    /// Close without a word: an idle connection, a body nobody reads.
    Close,
    /// Close without a word, counted as a slow head: nothing of it arrived (or an answer
    /// is still unflushed, which a 408 must not interleave with).
    SlowHead,
    /// Answer `408 header_timeout`, then close.
    HeaderTimeout,
}

impl Progress {
    pub(super) fn new(timeouts: Timeouts, metrics: Arc<Metrics>) -> Progress {
        Progress {
            timeouts,
            metrics,
            state: Mutex::new(State {
                // A new connection owes its first head within `header_timeout`.
                stage: Stage::Head {
                    deadline: Instant::now() + timeouts.header,
                    started: false,
                    header_clock: true,
                },
                flushed: true,
                reader: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes arrived.
    pub(super) fn read_some(&self) {
        let mut state = self.lock();
        if let Stage::Head {
            deadline,
            started,
            header_clock,
        } = &mut state.stage
        {
            *started = true;
            if !*header_clock {
                *header_clock = true;
                *deadline = Instant::now() + self.timeouts.header;
            }
        }
    }

    /// hyper handed a request over; `body_deadline` is `None` for a request without body.
    pub(super) fn request_started(&self, body_deadline: Option<Instant>) {
        let mut state = self.lock();
        state.stage = Stage::Request {
            body_deadline,
            answered: false,
        };
        state.flushed = false;
    }

    /// The request's body has arrived whole.
    pub(super) fn body_ended(&self) {
        let mut state = self.lock();
        if let Stage::Request {
            body_deadline,
            answered,
        } = &mut state.stage
        {
            *body_deadline = None;
            if *answered {
                self.go_idle(state);
            }
        }
    }

    /// hyper is done with the answer's body.
    pub(super) fn answered(&self) {
        let mut state = self.lock();
        if let Stage::Request {
            body_deadline,
            answered,
        } = &mut state.stage
        {
            *answered = true;
            if body_deadline.is_none() {
                self.go_idle(state);
            }
        }
    }

    /// The request is over: the idle clock runs, and the reader is woken to see it.
    fn go_idle(&self, mut state: std::sync::MutexGuard<'_, State>) {
        state.stage = Stage::Head {
            deadline: Instant::now() + self.timeouts.idle,
            started: false,
            header_clock: false,
        };
        let reader = state.reader.take();
        drop(state);
        if let Some(reader) = reader {
            reader.wake();
        }
    }

    /// A read is pending in `cx`'s task.
    pub(super) fn reading(&self, cx: &Context<'_>) {
        let mut state = self.lock();
        if !state
            .reader
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            state.reader = Some(cx.waker().clone());
        }
    }

    /// A flush went through.
    pub(super) fn flushed(&self) {
        let mut state = self.lock();
        if matches!(state.stage, Stage::Head { .. }) {
            state.flushed = true;
        }
    }

    /// Whether a write now is hyper refusing a head by itself.
    pub(super) fn writes_refusal(&self) -> bool {
        let state = self.lock();
        matches!(state.stage, Stage::Head { .. }) && state.flushed
    }

    /// When reading must have made progress by, and what happens then.
    pub(super) fn read_deadline(&self) -> Option<(Instant, Expiry)> {
        let state = self.lock();
        match state.stage {
            Stage::Head {
                deadline,
                started,
                header_clock,
            } => {
                let expiry = if !header_clock {
                    Expiry::Close
                } else if started && state.flushed {
                    Expiry::HeaderTimeout
                } else {
                    Expiry::SlowHead
                };
                Some((deadline, expiry))
            }
            Stage::Request { body_deadline, .. } => {
                body_deadline.map(|d| (d + BODY_BACKSTOP, Expiry::Close))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeouts() -> Timeouts {
        Timeouts {
            header: Duration::from_secs(10),
            body: Duration::from_secs(30),
            idle: Duration::from_secs(60),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_clocks_follow_the_request() {
        let start = Instant::now();
        let progress = Progress::new(timeouts(), Arc::default());
        // A new connection: its first head is due within the header timeout, and if
        // nothing came, it closes without a word.
        assert_eq!(
            progress.read_deadline(),
            Some((start + Duration::from_secs(10), Expiry::SlowHead))
        );
        progress.read_some();
        assert_eq!(
            progress.read_deadline(),
            Some((start + Duration::from_secs(10), Expiry::HeaderTimeout))
        );
        // A request with a body: the body's clock, plus the backstop.
        tokio::time::advance(Duration::from_secs(1)).await;
        progress.request_started(Some(Instant::now() + Duration::from_secs(30)));
        assert!(!progress.writes_refusal());
        assert_eq!(
            progress.read_deadline(),
            Some((start + Duration::from_secs(32), Expiry::Close))
        );
        // The body is in: no clock while the answer goes out (an open tail).
        progress.body_ended();
        assert_eq!(progress.read_deadline(), None);
        // Answered: the idle clock, until a byte of the next head starts the header one.
        tokio::time::advance(Duration::from_secs(100)).await;
        progress.answered();
        assert_eq!(
            progress.read_deadline(),
            Some((start + Duration::from_secs(161), Expiry::Close))
        );
        assert!(!progress.writes_refusal(), "the answer is not flushed yet");
        progress.flushed();
        assert!(progress.writes_refusal());
        tokio::time::advance(Duration::from_secs(5)).await;
        progress.read_some();
        assert_eq!(
            progress.read_deadline(),
            Some((start + Duration::from_secs(116), Expiry::HeaderTimeout))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_before_the_body_leaves_the_body_clock_running() {
        let start = Instant::now();
        let progress = Progress::new(timeouts(), Arc::default());
        progress.request_started(Some(start + Duration::from_secs(30)));
        progress.answered();
        assert_eq!(
            progress.read_deadline(),
            Some((start + Duration::from_secs(31), Expiry::Close))
        );
        progress.body_ended();
        assert_eq!(
            progress.read_deadline(),
            Some((start + Duration::from_secs(60), Expiry::Close))
        );
    }
}
