//! A running relay: the article's "master node". It reads a topic (or pattern) through
//! its own consumer group and moves each event into a work queue, optionally filtered by a
//! Rhai expression and transformed by a script. Moving is one commit: the queue item and
//! the ack land together, so an event is never both lost and never queued twice by one
//! process.
//!
//! A filter that throws is counted and logged and the event is not queued; the relay goes
//! on. A transform evaluates to the new data, or to `()` to drop the event.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn, Instrument};

use crate::broker::{Broker, BrokerError, Consumer, Delivery, Effects};
use crate::flow::model::RelayConfig;
use crate::runtime::metrics::RelayMetrics;
use crate::runtime::Shared;
use crate::script::host::to_json;
use crate::script::{script_event, CompiledScript};

/// The consumer group a relay reads through.
pub fn group_name(relay: &str) -> String {
    format!("relay:{relay}")
}

/// What a relay's worker needs.
pub(crate) struct RelayTask<B: Broker> {
    pub shared: Arc<Shared<B>>,
    pub name: Arc<str>,
    pub config: RelayConfig,
    pub source: String,
    pub filter: Option<Arc<CompiledScript>>,
    pub transform: Option<Arc<CompiledScript>>,
    pub metrics: Arc<RelayMetrics>,
}

/// Starts the relay's worker on `tracker`.
pub(crate) fn spawn<B: Broker>(
    task: RelayTask<B>,
    tracker: &TaskTracker,
    token: &CancellationToken,
) -> Result<(), BrokerError> {
    let consumer = task.shared.broker.consumer(&group_name(&task.name))?;
    let span = tracing::info_span!("relay", component = %task.name);
    tracker.spawn(run(Arc::new(task), consumer, token.clone()).instrument(span));
    Ok(())
}

async fn run<B: Broker>(
    task: Arc<RelayTask<B>>,
    mut consumer: B::Consumer,
    token: CancellationToken,
) {
    loop {
        let delivery = tokio::select! {
            biased;
            _ = token.cancelled() => break,
            next = consumer.next() => next,
        };
        match delivery {
            Ok(delivery) => task.relay(delivery, &token).await,
            Err(e) => {
                debug!(error = %e, "consumer closed");
                break;
            }
        }
    }
}

impl<B: Broker> RelayTask<B> {
    /// Decides what to queue for one event: `None` when it is filtered out or dropped.
    fn item(&self, delivery: &Delivery) -> Option<serde_json::Value> {
        let event = &delivery.event;
        if let Some(filter) = &self.filter {
            match self
                .shared
                .engine
                .eval(filter, &self.name, script_event(event, 1))
            {
                Ok(keep) if keep.as_bool().unwrap_or(false) => {}
                Ok(keep) if keep.is_bool() => {
                    self.metrics.filtered.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                Ok(other) => {
                    self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                    warn!(event = %event.id, found = other.type_name(), "relay filter must evaluate to a bool; event not queued");
                    return None;
                }
                Err(error) => {
                    self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                    warn!(event = %event.id, %error, "relay filter failed; event not queued");
                    return None;
                }
            }
        }
        let Some(transform) = &self.transform else {
            return Some(event.data.clone());
        };
        match self
            .shared
            .engine
            .eval(transform, &self.name, script_event(event, 1))
        {
            Ok(value) if value.is_unit() => {
                self.metrics.dropped.fetch_add(1, Ordering::Relaxed);
                None
            }
            Ok(value) => match to_json(&value) {
                Ok(data) => Some(data),
                Err(error) => {
                    self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                    warn!(event = %event.id, %error, "relay script returned data that is not JSON; event not queued");
                    None
                }
            },
            Err(error) => {
                self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                warn!(event = %event.id, %error, "relay script failed; event not queued");
                None
            }
        }
    }

    async fn relay(&self, delivery: Delivery, token: &CancellationToken) {
        let mut effects = Effects::default();
        if let Some(data) = self.item(&delivery) {
            let default_delay = self
                .shared
                .queues
                .borrow()
                .get(&self.config.to)
                .map_or(Duration::ZERO, |q| q.delay);
            let delay = self.config.delay.unwrap_or(default_delay);
            let mut item = delivery
                .event
                .caused(self.config.to.clone(), self.source.clone(), data);
            if self.transform.is_none() {
                // Unchanged data: the item keeps the bytes it arrived as (the article's
                // master node moves the POSTed body as it is).
                item.raw = delivery.event.raw.clone();
            }
            self.shared.history.record(&item, &self.name, None);
            effects.enqueue.push((self.config.to.clone(), item, delay));
        }
        let queued = !effects.enqueue.is_empty();
        // A full queue pushes back: wait and try again rather than drop the event.
        let mut backoff = Duration::from_millis(10);
        let mut pending = Some((delivery, effects));
        while let Some((delivery, effects)) = pending.take() {
            let retry = (delivery.clone(), effects.clone());
            match self.shared.broker.commit(delivery, effects).await {
                Ok(()) => {
                    if queued {
                        self.metrics.relayed.fetch_add(1, Ordering::Relaxed);
                        self.shared.metrics.published(&self.config.to);
                    }
                }
                Err(BrokerError::QueueFull { queue, capacity }) => {
                    warn!(queue, capacity, retry_in = ?backoff, "queue full; the relay waits");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = token.cancelled() => {
                            let _ = self.shared.broker.nack(retry.0).await;
                            return;
                        }
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    pending = Some(retry);
                }
                Err(error) => {
                    warn!(%error, "relay could not commit; giving the event back");
                    let _ = self.shared.broker.nack(retry.0).await;
                }
            }
        }
    }
}
