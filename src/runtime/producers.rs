//! The producers that are not HTTP: `interval` (a timer, with a fixed event or a script),
//! `lines` (JSON lines from a file or stdin) and `generator` (N events as fast as the
//! broker takes them, for benchmarks). Each is one tracked task that stops when its token
//! is cancelled. A bad input line is reported with its number and skipped.

use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::broker::{Backpressure, Broker};
use crate::event::Event;
use crate::flow::model::{GeneratorProducer, IntervalProducer, LinesProducer};
use crate::runtime::{RuntimeError, Shared};
use crate::script::CompiledScript;

/// What a producer task needs.
pub(crate) struct ProducerContext<B: Broker> {
    pub shared: Arc<Shared<B>>,
    pub name: Arc<str>,
    pub source: String,
    pub token: CancellationToken,
}

impl<B: Broker> ProducerContext<B> {
    /// Publishes, waiting for room in full groups, but never past the producer's stop:
    /// a producer asked to stop (a reload, shutdown) gives up the event it waits with.
    async fn publish(&self, event: Event) -> bool {
        let topic = event.topic.clone();
        let pending = crate::runtime::history::Pending::of(&event, &self.name, None);
        let published = tokio::select! {
            published = self.shared.broker.publish(event, Backpressure::Wait) => published,
            _ = self.token.cancelled() => {
                debug!(topic, "producer stopped while waiting for room; the event was not published");
                return false;
            }
        };
        match published {
            Ok(()) => {
                self.shared.metrics.published(&topic);
                self.shared.history.insert(pending);
                true
            }
            Err(e) => {
                warn!(error = %e, "publish failed");
                false
            }
        }
    }
}

/// Starts an `interval` producer: first event after one period.
pub(crate) fn spawn_interval<B: Broker>(
    cx: ProducerContext<B>,
    config: IntervalProducer,
    script: Option<Arc<CompiledScript>>,
    tracker: &TaskTracker,
) {
    let span = tracing::info_span!("producer", component = %cx.name);
    tracker.spawn(
        async move {
            let start = tokio::time::Instant::now() + config.every;
            let mut ticks = tokio::time::interval_at(start, config.every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cx.token.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                if let Some(topic) = &config.topic {
                    cx.publish(Event::new(topic.clone(), cx.source.clone(), config.data.clone())).await;
                }
                if let Some(script) = &script {
                    // Once per tick: always off the runtime's threads, which serve HTTP too.
                    let ran = if super::offloading() {
                        let (shared, script) = (cx.shared.clone(), script.clone());
                        tokio::task::spawn_blocking(move || shared.engine.run(&script, None))
                            .await
                            .unwrap_or_else(|e| Err(crate::script::ScriptError::Failed { message: format!("the script's thread failed: {e}") }))
                    } else {
                        cx.shared.engine.run(script, None)
                    };
                    match ran {
                        Ok(output) => {
                            for emitted in output.emits {
                                let event = Event::new(emitted.topic, cx.source.clone(), emitted.data);
                                match emitted.delay {
                                    Some(delay) => {
                                        cx.shared.metrics.published(&event.topic);
                                        if let Err(e) = cx.shared.broker.publish_later(event, delay).await {
                                            warn!(error = %e, "publish failed");
                                        }
                                    }
                                    None => {
                                        cx.publish(event).await;
                                    }
                                }
                            }
                        }
                        Err(e) => warn!(error = %e, "interval script failed; nothing emitted for this tick"),
                    }
                }
            }
        }
        .instrument(span),
    );
}

/// Starts a `lines` producer. The file is opened here, so a missing file fails the start.
pub(crate) async fn spawn_lines<B: Broker>(
    cx: ProducerContext<B>,
    config: LinesProducer,
    tracker: &TaskTracker,
) -> Result<(), RuntimeError> {
    let reader: Box<dyn AsyncRead + Send + Unpin> =
        match &config.path {
            Some(path) => Box::new(tokio::fs::File::open(path).await.map_err(|source| {
                RuntimeError::Open {
                    producer: cx.name.to_string(),
                    path: path.clone(),
                    source,
                }
            })?),
            None => Box::new(tokio::io::stdin()),
        };
    let span = tracing::info_span!("producer", component = %cx.name);
    tracker.spawn(
        async move {
            let mut lines = BufReader::new(reader).lines();
            let mut number = 0u64;
            let mut published = 0u64;
            loop {
                let line = tokio::select! {
                    _ = cx.token.cancelled() => return,
                    line = lines.next_line() => line,
                };
                number += 1;
                match line {
                    Ok(Some(line)) if line.trim().is_empty() => {}
                    Ok(Some(line)) => match serde_json::from_str::<serde_json::Value>(&line) {
                        Ok(data) => {
                            if cx
                                .publish(Event::new(config.topic.clone(), cx.source.clone(), data))
                                .await
                            {
                                published += 1;
                            }
                        }
                        Err(e) => {
                            warn!(line = number, error = %e, "skipping a line that is not JSON")
                        }
                    },
                    Ok(None) => {
                        info!(published, "end of input");
                        return;
                    }
                    Err(e) => {
                        warn!(line = number, error = %e, "cannot read input; stopping");
                        return;
                    }
                }
            }
        }
        .instrument(span),
    );
    Ok(())
}

/// Starts a `generator`: `count` events, as fast as the broker accepts them.
/// Events a generator has on their way to the broker at once.
const GENERATOR_IN_FLIGHT: usize = 64;

pub(crate) fn spawn_generator<B: Broker>(
    cx: ProducerContext<B>,
    config: GeneratorProducer,
    tracker: &TaskTracker,
) {
    let span = tracing::info_span!("producer", component = %cx.name);
    tracker.spawn(
        async move {
            let started = Instant::now();
            // Up to GENERATOR_IN_FLIGHT publishes at once: on Redis they share one pipelined
            // connection instead of waiting a round trip each.
            let mut publishes = futures_util::stream::iter(0..config.count)
                .map(|_| {
                    cx.publish(Event::new(
                        config.topic.clone(),
                        cx.source.clone(),
                        config.data.clone(),
                    ))
                })
                .buffered(GENERATOR_IN_FLIGHT);
            while let Some(published) = publishes.next().await {
                if !published || cx.token.is_cancelled() {
                    return;
                }
            }
            info!(
                events = config.count,
                took_ms = started.elapsed().as_millis() as u64,
                "generator done"
            );
        }
        .instrument(span),
    );
}
