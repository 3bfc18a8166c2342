//! Signals: Ctrl-C and SIGTERM (counted, so a second one cuts a shutdown short) and SIGHUP
//! (a reload request on the one reload path). Handlers are installed when asked for, not
//! when first polled, so a signal that arrives while flows start is not fatal. This module
//! only turns signals into futures and requests; what they stop or reload is `run`'s job.

use std::future::Future;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::runtime::reload::{ReloadCause, ReloadRequest};

/// Counts Ctrl-C and SIGTERM: the first asks for a shutdown, the second for an exit now.
#[derive(Clone)]
pub(super) struct Signals(tokio::sync::watch::Receiver<u32>);

impl Signals {
    /// Starts listening (inside the tokio runtime); the listener lives as long as the
    /// runtime.
    pub(super) fn listen() -> Signals {
        let (count, seen) = tokio::sync::watch::channel(0u32);
        let signal = shutdown_signal_repeating();
        // Untracked on purpose: it must outlive every tracker, to see the second signal.
        tokio::spawn(async move {
            let mut signal = signal;
            loop {
                signal.recv().await;
                count.send_modify(|n| *n += 1);
            }
        });
        Signals(seen)
    }

    /// Resolves once `n` signals have arrived.
    pub(super) fn nth(&self, n: u32) -> impl Future<Output = ()> + use<> {
        let mut seen = self.0.clone();
        async move {
            if seen.wait_for(|count| *count >= n).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// SIGHUP asks for a reload, as for most daemons.
pub(super) fn spawn_sighup(
    requests: mpsc::Sender<ReloadRequest>,
    tracker: &TaskTracker,
    token: CancellationToken,
) {
    #[cfg(unix)]
    tracker.spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            return;
        };
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                signal = hup.recv() => {
                    if signal.is_none() || requests.send(ReloadRequest::new(ReloadCause::Signal)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    #[cfg(not(unix))]
    let _ = (requests, tracker, token);
}

/// Ctrl-C and SIGTERM, as many times as they come.
struct RepeatingSignal {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl RepeatingSignal {
    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            async fn wait(s: Option<&mut tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                _ = wait(self.interrupt.as_mut()) => {}
                _ = wait(self.terminate.as_mut()) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Installs the Ctrl-C and SIGTERM handlers now (so a signal that arrives while flows are
/// starting is not fatal). Call it inside the tokio runtime.
fn shutdown_signal_repeating() -> RepeatingSignal {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        RepeatingSignal {
            interrupt: signal(SignalKind::interrupt()).ok(),
            terminate: signal(SignalKind::terminate()).ok(),
        }
    }
    #[cfg(not(unix))]
    {
        RepeatingSignal {}
    }
}

/// Resolves on Ctrl-C or SIGTERM.
///
/// The handlers are installed when this is called, not when the future is first polled,
/// so a signal that arrives while flows are starting is not fatal. Call it inside the
/// tokio runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    let mut signal = shutdown_signal_repeating();
    async move { signal.recv().await }
}
