//! Stopping a runtime: ingest first, then a grace period for what is queued, then every
//! component after the event it holds, each step bounded so that a stuck component
//! cannot hold the process. What was left unfinished is counted and said. The process
//! leaves the broker's registry of processes as the stop begins.

use std::time::Duration;

use tracing::warn;

use crate::broker::Broker;
use crate::flow::diff::Kind;
use crate::runtime::components::Running;
use crate::runtime::Runtime;

/// How long a stopping runtime waits for its producers (an HTTP server closing its
/// connections, a timer between ticks).
pub const PRODUCERS_STOP: Duration = Duration::from_millis(500);
/// How long a stopping runtime waits, after the grace period, for its subscribers, relays
/// and chain trackers to finish what they hold (a handler run, a commit).
pub const COMPONENTS_STOP: Duration = Duration::from_secs(1);

/// How a shutdown went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Some component did not stop in time and was left behind.
    pub forced: bool,
    /// Events left unfinished in this process (dropped on the memory broker; pending on
    /// a durable one).
    pub unfinished: usize,
}

impl<B: Broker> Runtime<B> {
    /// Stops ingest, lets queued events drain for at most `grace`, then stops every
    /// subscriber after the event it holds. Always over within `grace` plus
    /// `PRODUCERS_STOP` and `COMPONENTS_STOP` (and `processes::REGISTRY_STOP` at worst,
    /// for a broker that does not answer), whatever is stuck: a component still going then
    /// is left behind, and what it had not finished is counted and logged.
    pub async fn shutdown(mut self, grace: Duration) -> ShutdownReport {
        // The entry is removed while the components stop; waited for at the end.
        let heartbeat = self.heartbeat.take();
        if let Some(heartbeat) = &heartbeat {
            heartbeat.cancel();
        }
        let (producers, components): (Vec<_>, Vec<_>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|(key, _)| key.kind == Kind::Producer);
        let producers: Vec<Running> = producers.into_iter().map(|(_, p)| p).collect();
        for p in &producers {
            p.stop();
        }
        let stopped = async {
            for p in &producers {
                p.stopped().await;
            }
        };
        let mut report = ShutdownReport::default();
        if tokio::time::timeout(PRODUCERS_STOP, stopped).await.is_err() {
            warn!(
                after_ms = PRODUCERS_STOP.as_millis() as u64,
                "a producer did not stop in time; going on without it"
            );
            report.forced = true;
        }
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let broker = &self.shared.broker;
            let busy = broker
                .stats()
                .await
                .iter()
                .map(|g| g.queued + g.in_flight)
                .sum::<usize>()
                + broker.scheduled().await;
            if busy == 0 {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                if !grace.is_zero() {
                    warn!(events = busy, "grace period over; events still queued are dropped (the memory broker keeps nothing)");
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.root.cancel();
        let components: Vec<Running> = components.into_iter().map(|(_, c)| c).collect();
        for component in &components {
            component.stop();
        }
        let stopped = async {
            for component in &components {
                component.stopped().await;
            }
        };
        if tokio::time::timeout(COMPONENTS_STOP, stopped)
            .await
            .is_err()
        {
            report.forced = true;
        }
        report.unfinished = self.unfinished().await;
        if let Some(heartbeat) = heartbeat {
            heartbeat.stop().await;
        }
        if report.forced || report.unfinished > 0 {
            if self.shared.broker.retryable_commit().is_some() {
                warn!(
                    in_flight = report.unfinished,
                    "stopped with events unfinished: they stay pending in the broker, and another process (or the next start) takes them after --claim-idle"
                );
            } else if report.unfinished > 0 {
                warn!(
                    events = report.unfinished,
                    "stopped with events unfinished (queued, in flight or scheduled); the memory broker keeps nothing, so they are dropped"
                );
            }
        }
        report
    }

    /// Events queued, in flight or scheduled in this process's broker, queue items
    /// included (for a remote broker: only what this process holds).
    async fn unfinished(&self) -> usize {
        let broker = &self.shared.broker;
        let groups: usize = broker
            .stats()
            .await
            .iter()
            .map(|g| g.queued + g.in_flight)
            .sum();
        let queues: usize = if broker.retryable_commit().is_some() {
            0
        } else {
            broker
                .queue_stats()
                .await
                .iter()
                .map(|q| q.depth + q.in_flight)
                .sum()
        };
        groups + broker.scheduled().await + queues
    }
}
