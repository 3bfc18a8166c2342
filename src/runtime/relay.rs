//! A running relay: the article's "master node". It reads a topic (or pattern) through
//! its own consumer group and moves each event into a work queue, optionally filtered by a
//! Rhai expression and transformed by a script. Moving is one commit: the queue item and
//! the ack land together, so an event is never both lost and never queued twice by one
//! process.
//!
//! A transform evaluates to the new data, or to `()` to drop the event. A filter or a
//! transform that fails (throws, exceeds a limit, returns something that is not a bool or
//! JSON data) dead-letters the event on `dead.RELAY` with the reason; so does an event
//! whose journey is already `max_hops` long. The relay goes on either way.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn, Instrument};

use crate::broker::{Broker, BrokerError, Consumer, Delivery, Effects};
use crate::flow::model::RelayConfig;
use crate::runtime::dead_letter;
use crate::runtime::metrics::RelayMetrics;
use crate::runtime::Shared;
use crate::script::{script_event, CompiledScript, Evaluated};

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
pub(crate) async fn spawn<B: Broker>(
    task: RelayTask<B>,
    tracker: &TaskTracker,
    token: &CancellationToken,
) -> Result<(), BrokerError> {
    let group = group_name(&task.name);
    let consumer =
        crate::runtime::off_thread(&task.shared.broker, move |b| b.consumer(&group)).await?;
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

/// What a relay does with one event.
enum Decision {
    /// Queue this data.
    Queue(serde_json::Value),
    /// The filter rejected it, or the transform dropped it: ack it, queue nothing.
    Skip,
    /// The filter or the transform failed: dead-letter the event with this reason.
    Fail(String),
}

impl<B: Broker> RelayTask<B> {
    /// Decides what to do with one event.
    fn decide(&self, delivery: &Delivery) -> Decision {
        let event = &delivery.event;
        if let Some(filter) = &self.filter {
            match self.shared.engine.eval(filter, script_event(event, 1)) {
                Ok(Evaluated::Bool(true)) => {}
                Ok(Evaluated::Bool(false)) => {
                    self.metrics.filtered.fetch_add(1, Ordering::Relaxed);
                    return Decision::Skip;
                }
                Ok(other) => {
                    return Decision::Fail(format!(
                        "relay filter must evaluate to a bool, not {}",
                        evaluated_type(&other)
                    ))
                }
                Err(error) => return Decision::Fail(format!("relay filter failed: {error}")),
            }
        }
        let Some(transform) = &self.transform else {
            return Decision::Queue(event.data.clone());
        };
        match self.shared.engine.eval(transform, script_event(event, 1)) {
            Ok(Evaluated::Unit) => {
                self.metrics.dropped.fetch_add(1, Ordering::Relaxed);
                Decision::Skip
            }
            Ok(Evaluated::Bool(b)) => Decision::Queue(b.into()),
            Ok(Evaluated::Json(data)) => Decision::Queue(data),
            Ok(Evaluated::NotJson { type_name, reason }) => Decision::Fail(format!(
                "relay script returned {type_name}, which is not JSON data: {reason}"
            )),
            Err(error) => Decision::Fail(format!("relay script failed: {error}")),
        }
    }

    async fn relay(&self, delivery: Delivery, token: &CancellationToken) {
        let mut effects = Effects::default();
        let mut decision = self.decide(&delivery);
        let max_hops = self.shared.max_hops.load(Ordering::Relaxed);
        if matches!(decision, Decision::Queue(_)) && delivery.event.hops >= max_hops {
            decision = Decision::Fail(format!(
                "journey longer than {max_hops} hops: the queue item would be hop {}; is there an emit loop?",
                delivery.event.hops.saturating_add(1)
            ));
        }
        if let Decision::Fail(reason) = &decision {
            self.metrics.errors.fetch_add(1, Ordering::Relaxed);
            self.metrics.record_error(&delivery.event, reason);
            let topic = format!("dead.{}", self.name);
            warn!(event = %delivery.event.id, %reason, dead_letter = %topic, "relay failed; dead-lettering the event");
            effects.dead_letter = Some(dead_letter::build(
                &delivery.event,
                &dead_letter::Failure {
                    topic: &topic,
                    source: &self.source,
                    component: &self.name,
                    attempts: 1,
                    reason,
                    queue: None,
                },
            ));
        }
        if let Decision::Queue(data) = decision {
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
                Err(e @ (BrokerError::QueueFull { .. } | BrokerError::OverBudget { .. })) => {
                    warn!(error = %e, retry_in = ?backoff, "queue full; the relay waits");
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

fn evaluated_type(value: &Evaluated) -> String {
    match value {
        Evaluated::Unit => "()".into(),
        Evaluated::Bool(_) => "a bool".into(),
        Evaluated::Json(v) => match v {
            serde_json::Value::Null => "null".into(),
            serde_json::Value::Number(_) => "a number".into(),
            serde_json::Value::String(_) => "a string".into(),
            serde_json::Value::Array(_) => "an array".into(),
            serde_json::Value::Object(_) => "a map".into(),
            serde_json::Value::Bool(_) => "a bool".into(),
        },
        Evaluated::NotJson { type_name, .. } => type_name.clone(),
    }
}
