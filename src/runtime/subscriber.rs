//! A running subscriber: `concurrency` workers competing on one consumer group, each
//! running the handler for one event at a time.
//!
//! Per event: run the script (inline, bounded by the sandbox limits), then commit its
//! effects together with the ack. A failed run commits nothing; the event is retried after
//! a backoff and, after the last attempt, dead-lettered with the error attached. A worker
//! asked to stop finishes the event it holds (or, if it is waiting out a backoff, gives
//! the event back to the broker), so stopping never loses an event.
//!
//! A commit that fails because the broker is unreachable (Redis down or stalled) is
//! retried with backoff (50 ms doubling to 2 s, jittered) until it lands, with the same
//! effects: the handler does not run again, and the broker's commit is idempotent, so a
//! retry of a commit that did run (its reply lost) applies nothing twice. A worker asked
//! to stop gives up retrying and leaves the event pending, for another process to claim.

use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn, Instrument};

use crate::broker::{Broker, BrokerError, Consumer, Delivery, Effects, Reply};
use crate::event::{Event, REPLY_TO_EXTENSION};
use crate::flow::model::{SubscriberConfig, SubscriberInput};
use crate::otel::RunSpan;
use crate::runtime::dead_letter;
use crate::runtime::metrics::SubscriberMetrics;
use crate::runtime::Shared;
use crate::script::{script_event, Ahead, CompiledScript, ScriptError, ScriptOutput, StoreEnv};
use crate::store::ReadAhead;

/// The handler code a subscriber runs and the generation it belongs to; swapped in place
/// when only the script changed (and re-sent with the new generation on every reload).
#[derive(Clone, Debug)]
pub struct HandlerCode {
    /// `None`: print the article's consumer output.
    pub script: Option<Arc<CompiledScript>>,
    pub generation: u64,
}

/// The CloudEvents extension attribute recording which flow generation's code emitted an
/// event (so a test can prove which version of a handler ran).
pub const GENERATION_EXTENSION: &str = "edaflowgeneration";

/// Deliveries a worker handles in a row at most, committing them in one go (see
/// `SubscriberTask::handle_row`).
const IN_A_ROW: usize = 32;

/// Rounds of reads made ahead for one run at most (each round: the reads that depend on
/// the ones made in the round before); past them the run reads as it goes.
const READ_AHEAD_ROUNDS: usize = 4;

/// What the workers of one subscriber share.
pub(crate) struct SubscriberTask<B: Broker> {
    pub shared: Arc<Shared<B>>,
    pub name: Arc<str>,
    pub config: SubscriberConfig,
    pub source: String,
    pub code: watch::Receiver<HandlerCode>,
    pub metrics: Arc<SubscriberMetrics>,
    /// For queue subscribers with `poll`: look for due items only at this interval.
    pub poll: Option<Duration>,
    /// With `poll`: take at most this many items at each look (`None`: every due item).
    pub per_poll: Option<usize>,
    /// Do not print the article's output for script-less subscribers.
    pub quiet: bool,
    /// The handler ran past `Limits::inline_time` lately: its runs start on a thread of
    /// their own (see `run_offloaded`).
    pub slow: std::sync::atomic::AtomicBool,
}

/// Spawns the workers of a subscriber on `tracker`; they stop when `token` is cancelled.
pub(crate) async fn spawn<B: Broker>(
    task: SubscriberTask<B>,
    tracker: &TaskTracker,
    token: &CancellationToken,
) -> Result<(), BrokerError> {
    let task = Arc::new(task);
    let n = task.config.concurrency;
    let consumers = match &task.config.input {
        SubscriberInput::Topics(_) => {
            let group = task.config.group.clone();
            crate::runtime::off_thread(&task.shared.broker, move |b| b.consumers(&group, n)).await?
        }
        SubscriberInput::Queue(queue) => {
            let queue = queue.clone();
            crate::runtime::off_thread(&task.shared.broker, move |b| b.queue_consumers(&queue, n))
                .await?
        }
    };
    for (worker, consumer) in consumers.into_iter().enumerate() {
        let span = tracing::info_span!("subscriber", component = %task.name, worker);
        match task.poll {
            Some(every) => tracker.spawn(
                run_polling_worker(task.clone(), consumer, every, token.clone()).instrument(span),
            ),
            None => {
                tracker.spawn(run_worker(task.clone(), consumer, token.clone()).instrument(span))
            }
        };
    }
    Ok(())
}

/// A worker that looks at its queue only every `every` (the article's consumer checks every
/// 10 s): at each tick it takes and handles every item due (at most `per_poll` of them),
/// then waits for the next tick.
async fn run_polling_worker<B: Broker>(
    task: Arc<SubscriberTask<B>>,
    mut consumer: B::Consumer,
    every: Duration,
    token: CancellationToken,
) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = token.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let mut taken = 0usize;
        loop {
            if token.is_cancelled() {
                consumer.close().await;
                return;
            }
            if task.per_poll.is_some_and(|most| taken >= most) {
                break;
            }
            taken += 1;
            match consumer.try_next().await {
                Ok(Some(delivery)) => task.handle(delivery, &token).await,
                Ok(None) => break,
                Err(e) => {
                    debug!(error = %e, "consumer closed");
                    return;
                }
            }
        }
    }
    consumer.close().await;
}

async fn run_worker<B: Broker>(
    task: Arc<SubscriberTask<B>>,
    mut consumer: B::Consumer,
    token: CancellationToken,
) {
    // Where the broker commits runs together, a worker takes with each event what its
    // consumer's last read brought beyond it (see `handle_row`).
    let broker = &task.shared.broker;
    let rows = broker.ordered_commit().is_some() && broker.read_ahead().is_some();
    loop {
        // A handler slow enough to leave the runtime's threads runs one event per worker,
        // so that its workers run side by side.
        let most = if rows && !task.slow.load(Ordering::Relaxed) {
            IN_A_ROW
        } else {
            1
        };
        let row = tokio::select! {
            biased;
            _ = token.cancelled() => break,
            next = consumer.next_row(most) => next,
        };
        match row {
            Ok(mut row) if row.len() == 1 => {
                if let Some(delivery) = row.pop() {
                    task.handle(delivery, &token).await;
                }
            }
            Ok(row) => task.handle_row(row, &token).await,
            Err(e) => {
                debug!(error = %e, "consumer closed");
                break;
            }
        }
    }
    consumer.close().await;
}

/// One run of a handler, not yet committed: its span, the code it ran, and its effects or
/// its error.
struct Ran {
    span: Option<RunSpan>,
    code: HandlerCode,
    result: Result<Effects, ScriptError>,
}

/// Why a commit did not happen.
#[derive(Debug)]
enum Refused {
    /// The broker refused the effects (a full queue): retry the run later.
    Retry(String),
    /// The broker could not take the commit at all.
    Fatal(BrokerError),
    /// The worker was asked to stop while the commit waited: nothing was committed.
    Stopping,
}

impl<B: Broker> SubscriberTask<B> {
    async fn handle(&self, delivery: Delivery, token: &CancellationToken) {
        self.count_in(&delivery);
        self.handle_from(delivery, None, token).await;
    }

    fn count_in(&self, delivery: &Delivery) {
        self.metrics.events_in.fetch_add(1, Ordering::Relaxed);
        self.shared.metrics.handed_out(&delivery.event.topic);
    }

    /// Runs the handler on `delivery` and commits what it did, retrying and dead-lettering
    /// as the module docs say; `first` is its first run when that was made already.
    async fn handle_from(&self, delivery: Delivery, first: Option<Ran>, token: &CancellationToken) {
        let retry = self.config.retry;
        let mut attempt = delivery.redeliveries.saturating_add(1);
        let mut first = first;
        loop {
            let Ran { span, code, result } = match first.take() {
                Some(ran) => ran,
                None => self.run(&delivery, attempt).await,
            };
            // A run's effects are committed with the ack; a commit the broker refuses (a
            // full or missing queue) counts as a failed run, so nothing is half-done.
            let error = match result {
                Ok(effects) => match self.settle(&delivery, effects, token).await {
                    Ok(()) => {
                        self.handled(&delivery, span);
                        return;
                    }
                    Err(Refused::Retry(message)) => ScriptError::Failed { message },
                    Err(Refused::Stopping) => {
                        end_span(span, "error", Some("stopped before the commit"));
                        let _ = self.shared.broker.nack(delivery).await;
                        return;
                    }
                    Err(Refused::Fatal(e)) => {
                        end_span(span, "error", Some(&e.to_string()));
                        warn!(error = %e, "could not commit; giving the event back");
                        let _ = self.shared.broker.nack(delivery).await;
                        return;
                    }
                },
                Err(error) => error,
            };
            self.metrics.errors.fetch_add(1, Ordering::Relaxed);
            self.metrics
                .record_error(&delivery.event, attempt, &error.to_string());
            if attempt >= retry.attempts || !error.is_retryable() {
                if matches!(error, ScriptError::HopLimit { .. }) {
                    self.metrics.hop_limited.fetch_add(1, Ordering::Relaxed);
                }
                warn!(event = %delivery.event.id, topic = %delivery.event.topic, attempt, dead_letter = %self.config.dead_letter, %error, "handler failed for the last time; dead-lettering the event");
                self.metrics.dead_letters.fetch_add(1, Ordering::Relaxed);
                let mut dead = self.dead_letter(&delivery, attempt, &error, code.generation);
                if let Some(span) = &span {
                    span.stamp(dead.events_mut());
                }
                end_span(span, "dead", Some(&error.to_string()));
                if let Err(e) = self.settle(&delivery, dead, token).await {
                    if !matches!(e, Refused::Stopping) {
                        warn!(error = ?e, "could not dead-letter the event; giving it back");
                    }
                    let _ = self.shared.broker.nack(delivery).await;
                }
                return;
            }
            end_span(span, "retry", Some(&error.to_string()));
            let delay = retry.jittered_delay_after(attempt, fastrand::f64());
            warn!(event = %delivery.event.id, topic = %delivery.event.topic, attempt, retry_in = ?delay, %error, "handler failed; will retry");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = token.cancelled() => {
                    let _ = self.shared.broker.nack(delivery).await;
                    return;
                }
            }
            attempt += 1;
        }
    }

    /// One run of the handler on `delivery`, reading the stores it asks for ahead.
    async fn run(&self, delivery: &Delivery, attempt: u32) -> Ran {
        let started = Instant::now();
        let span = self.span(delivery, attempt);
        let code = self.code.borrow().clone();
        let result = self
            .run_reading_ahead(&code, &delivery.event, attempt)
            .await;
        self.metrics.latency.observe(started.elapsed());
        self.ran(delivery, span, code, result)
    }

    /// With export on, each run is a span, and what the run emits names it as the parent
    /// (`crate::otel`); off, nothing is built here.
    fn span(&self, delivery: &Delivery, attempt: u32) -> Option<RunSpan> {
        self.shared
            .tracing
            .as_ref()
            .map(|tracing| tracing.handler_span(&self.name, &delivery.event, attempt))
    }

    /// What a run's output comes to: its effects, stamped with its span.
    fn ran(
        &self,
        delivery: &Delivery,
        span: Option<RunSpan>,
        code: HandlerCode,
        result: Result<ScriptOutput, ScriptError>,
    ) -> Ran {
        let mut result =
            result.and_then(|output| self.effects(&delivery.event, output, code.generation));
        if let (Ok(effects), Some(span)) = (&mut result, &span) {
            span.stamp(effects.events_mut());
        }
        Ran { span, code, result }
    }

    /// A run committed: counted, shown to the `handled` tap, its span ended.
    fn handled(&self, delivery: &Delivery, span: Option<RunSpan>) {
        end_span(span, "ok", None);
        self.metrics.handled.fetch_add(1, Ordering::Relaxed);
        if let Some(tap) = self.shared.handled.get() {
            let _ = tap.try_send((self.name.clone(), delivery.event.clone()));
        }
    }

    /// Handles the deliveries of `row` in order, committing runs together: the runs that need no store read and succeed wait for the next commit,
    /// which carries them all in one go (`CommitInOrder`). A run that reads a store (it
    /// must see what the runs before it wrote), fails, or is too slow to run inline has
    /// what waits committed first, then is handled as `handle` would. What the commit
    /// leaves uncommitted (a refusal, a failed round trip) is committed one by one, in
    /// order, with the retries of `handle`.
    async fn handle_row(&self, row: Vec<Delivery>, token: &CancellationToken) {
        let mut waiting: Vec<(Delivery, Ran)> = Vec::with_capacity(row.len());
        for delivery in row {
            self.count_in(&delivery);
            let attempt = delivery.redeliveries.saturating_add(1);
            match self.run_plain(&delivery, attempt) {
                Some(ran) if ran.result.is_ok() => waiting.push((delivery, ran)),
                ran => {
                    self.commit_waiting(&mut waiting, token).await;
                    self.handle_from(delivery, ran, token).await;
                }
            }
        }
        self.commit_waiting(&mut waiting, token).await;
    }

    /// A run made inline with no store read, or `None` when the handler asked to read a
    /// store or ran too long for a runtime thread (nothing was done then: the run is made
    /// again the usual way).
    fn run_plain(&self, delivery: &Delivery, attempt: u32) -> Option<Ran> {
        let code = self.code.borrow().clone();
        let started = Instant::now();
        let result = match &code.script {
            None => self.run_once(&code, &delivery.event, attempt, None),
            Some(script) => {
                let offloads = super::offloading();
                if offloads && self.slow.load(Ordering::Relaxed) {
                    return None;
                }
                let stores = StoreEnv {
                    ahead: Some(Arc::new(ReadAhead::default())),
                    ..self.store_env()
                };
                let inline_time = offloads.then_some(self.shared.engine.limits().inline_time);
                match self.shared.engine.run_ahead(
                    script,
                    Some(script_event(&delivery.event, attempt)),
                    stores,
                    inline_time,
                ) {
                    Ahead::Done(result) => result,
                    Ahead::Offload => {
                        self.mark_slow();
                        return None;
                    }
                    Ahead::Wants(_) => return None,
                }
            }
        };
        self.metrics.latency.observe(started.elapsed());
        let span = self.span(delivery, attempt);
        Some(self.ran(delivery, span, code, result))
    }

    /// Commits the runs `waiting` in one go, in order (see `handle_row`).
    async fn commit_waiting(&self, waiting: &mut Vec<(Delivery, Ran)>, token: &CancellationToken) {
        let runs = std::mem::take(waiting);
        let committer = self.shared.broker.ordered_commit();
        let (Some(committer), true) = (committer, runs.len() > 1) else {
            for (delivery, ran) in runs {
                self.handle_from(delivery, Some(ran), token).await;
            }
            return;
        };
        let generation = self.code.borrow().generation;
        let mut pairs = Vec::with_capacity(runs.len());
        for (delivery, ran) in &runs {
            if let Ok(effects) = &ran.result {
                for event in effects.events() {
                    self.shared
                        .history
                        .record(event, &self.name, Some(generation));
                }
                pairs.push((delivery, effects));
            }
        }
        let results = match committer.commit_in_order(&pairs).await {
            Ok(results) => results,
            Err(e) => {
                debug!(error = %e, runs = pairs.len(), "commit of runs in a row failed; committing them one by one");
                Vec::new()
            }
        };
        drop(pairs);
        let mut runs = runs.into_iter();
        for result in results {
            let Some((delivery, ran)) = runs.next() else {
                break;
            };
            match (result, &ran.result) {
                (Ok(()), Ok(effects)) => {
                    for event in effects.events() {
                        self.shared.metrics.published(&event.topic);
                    }
                    self.handled(&delivery, ran.span);
                }
                // Refused: committed again on its own, which retries as `handle` does.
                _ => self.handle_from(delivery, Some(ran), token).await,
            }
        }
        // Not committed: one by one, in order.
        for (delivery, ran) in runs {
            self.handle_from(delivery, Some(ran), token).await;
        }
    }

    /// This subscriber's runs start on threads of their own from now on, until one is
    /// quick again (see `run_offloaded`).
    fn mark_slow(&self) {
        if !self.slow.swap(true, Ordering::Relaxed) {
            debug!(
                inline_ms = self.shared.engine.limits().inline_time.as_millis() as u64,
                "handler runs long; running it off the runtime's threads"
            );
        }
        self.metrics.offloaded.fetch_add(1, Ordering::Relaxed);
    }

    /// Commits effects with the ack of `delivery`, retrying while the broker is
    /// unreachable (see the module docs).
    async fn settle(
        &self,
        delivery: &Delivery,
        effects: Effects,
        token: &CancellationToken,
    ) -> Result<(), Refused> {
        let published: Vec<String> = effects.events().map(|e| e.topic.clone()).collect();
        let generation = self.code.borrow().generation;
        for event in effects.events() {
            self.shared
                .history
                .record(event, &self.name, Some(generation));
        }
        let mut backoff = crate::broker::backoff::BACKOFF_START;
        let broker = &self.shared.broker;
        let committed = if let Some(retryable) = broker.retryable_commit() {
            loop {
                match retryable.commit_retryable(delivery, &effects).await {
                    Err(e) if e.is_transient() && !token.is_cancelled() => {
                        let pause = crate::broker::backoff::jittered(&mut backoff);
                        debug!(event = %delivery.event.id, error = %e, retry_in_ms = pause.as_millis() as u64, "commit failed; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = token.cancelled() => {}
                        }
                    }
                    other => break other,
                }
            }
        } else {
            // A commit may wait for room in a full group (at most the broker's `full_wait`);
            // a worker asked to stop gives up waiting, and the event goes back.
            tokio::select! {
                // First: a commit that need not wait lands even when stopping.
                biased;
                committed = broker.commit(delivery.clone(), effects) => committed,
                _ = token.cancelled() => return Err(Refused::Stopping),
            }
        };
        match committed {
            Ok(()) => {
                for topic in &published {
                    self.shared.metrics.published(topic);
                }
                Ok(())
            }
            Err(e @ BrokerError::Full { .. }) => {
                self.metrics.full_waits.fetch_add(1, Ordering::Relaxed);
                Err(Refused::Retry(format!(
                    "commit refused: {e}, still after waiting"
                )))
            }
            Err(
                e @ (BrokerError::QueueFull { .. }
                | BrokerError::OverBudget { .. }
                | BrokerError::UnknownQueue { .. }
                | BrokerError::DelayTooLong { .. }
                | BrokerError::Undelayable { .. }
                | BrokerError::OutOfMemory),
            ) => Err(Refused::Retry(format!("commit refused: {e}"))),
            Err(e) => Err(Refused::Fatal(e)),
        }
    }

    /// Runs the handler once; on a broker that reads ahead, as many times as it takes to
    /// make the store reads the runs want (see `crate::store`): each round makes all the
    /// reads the last run wanted in one go. A handler whose reads depend on each other
    /// more than `READ_AHEAD_ROUNDS` deep makes its last run's reads as it goes.
    async fn run_reading_ahead(
        &self,
        code: &HandlerCode,
        event: &Arc<Event>,
        attempt: u32,
    ) -> Result<ScriptOutput, ScriptError> {
        let Some(script) = &code.script else {
            return self.run_once(code, event, attempt, None);
        };
        let offloads = super::offloading();
        if offloads && self.slow.load(Ordering::Relaxed) {
            return self.run_offloaded(script, event, attempt, None).await;
        }
        let inline_time = offloads.then_some(self.shared.engine.limits().inline_time);
        let broker = &self.shared.broker;
        let reader = broker.read_ahead();
        let mut ahead = ReadAhead::default();
        for _ in 0..READ_AHEAD_ROUNDS {
            let stores = StoreEnv {
                ahead: reader
                    .is_some()
                    .then(|| Arc::new(std::mem::take(&mut ahead))),
                ..self.store_env()
            };
            let run = self.shared.engine.run_ahead(
                script,
                Some(script_event(event, attempt)),
                stores.clone(),
                inline_time,
            );
            let wants = match run {
                Ahead::Done(result) => return result,
                Ahead::Offload => {
                    // Too slow for a runtime thread: this subscriber's runs go to threads
                    // of their own until one is quick again.
                    self.mark_slow();
                    let known = stores.ahead.map(Arc::unwrap_or_clone);
                    return self.run_offloaded(script, event, attempt, known).await;
                }
                Ahead::Wants(wants) => wants,
            };
            ahead = stores.ahead.map(Arc::unwrap_or_clone).unwrap_or_default();
            // Only runs given an `ahead` ask for reads (see `StoreEnv`).
            let Some(reader) = reader else {
                return Err(ScriptError::Failed {
                    message: "this broker does not read ahead".into(),
                });
            };
            let fetched =
                reader
                    .read_ahead(wants.clone())
                    .await
                    .map_err(|e| ScriptError::Failed {
                        message: e.to_string(),
                    })?;
            for (want, answer) in wants.into_iter().zip(fetched) {
                ahead.insert(want, answer);
            }
        }
        if offloads {
            // The last run reads as it goes: off the runtime's threads, where waiting on a
            // read holds nobody up.
            return self
                .run_offloaded(script, event, attempt, Some(ahead))
                .await;
        }
        self.run_once(code, event, attempt, Some(ahead))
    }

    /// Runs the handler on a thread that may block (tokio's blocking pool), with the whole
    /// of its limits; `known` answers the reads made ahead so far. The worker waits for
    /// it, so a subscriber holds at most `concurrency` such threads.
    async fn run_offloaded(
        &self,
        script: &Arc<CompiledScript>,
        event: &Arc<Event>,
        attempt: u32,
        known: Option<ReadAhead>,
    ) -> Result<ScriptOutput, ScriptError> {
        let shared = self.shared.clone();
        let (script, event) = (script.clone(), event.clone());
        let stores = self.store_env();
        let inline_time = shared.engine.limits().inline_time;
        let span = tracing::Span::current();
        let run = tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let started = Instant::now();
            let event = Some(script_event(&event, attempt));
            let result = match known {
                Some(known) => shared.engine.run_known(&script, event, stores, known),
                None => shared.engine.run_with(&script, event, stores),
            };
            (result, started.elapsed() < inline_time)
        });
        match run.await {
            Ok((result, quick)) => {
                if quick {
                    self.slow.store(false, Ordering::Relaxed);
                }
                result
            }
            // The run itself catches panics (`script::stack`): this is the pool failing.
            Err(e) => Err(ScriptError::Failed {
                message: format!("the handler's thread failed: {e}"),
            }),
        }
    }

    fn store_env(&self) -> StoreEnv {
        StoreEnv {
            reader: self.shared.broker.stores(),
            declared: self.shared.declared_stores.borrow().clone(),
            ahead: None,
        }
    }

    /// One run; with `known`, reads answered there are not made again.
    fn run_once(
        &self,
        code: &HandlerCode,
        event: &Arc<Event>,
        attempt: u32,
        known: Option<ReadAhead>,
    ) -> Result<ScriptOutput, ScriptError> {
        match &code.script {
            Some(script) => {
                let stores = self.store_env();
                match known {
                    // Reads beyond what is known are made as the run goes.
                    Some(known) => self.shared.engine.run_known(
                        script,
                        Some(script_event(event, attempt)),
                        stores,
                        known,
                    ),
                    None => self.shared.engine.run_with(
                        script,
                        Some(script_event(event, attempt)),
                        stores,
                    ),
                }
            }
            None if self.quiet => Ok(ScriptOutput::default()),
            None => {
                print_article_consumer(
                    event,
                    matches!(self.config.input, SubscriberInput::Queue(_)),
                );
                Ok(ScriptOutput::default())
            }
        }
    }

    /// Turns what a run recorded into effects. An `enqueue` to a queue that does not exist
    /// fails the run (nothing is committed), like any other handler error.
    fn effects(
        &self,
        parent: &Event,
        output: ScriptOutput,
        generation: u64,
    ) -> Result<Effects, ScriptError> {
        let mut effects = Effects::default();
        let max_hops = self.shared.max_hops.load(Ordering::Relaxed);
        if parent.hops >= max_hops && !(output.emits.is_empty() && output.enqueues.is_empty()) {
            return Err(ScriptError::HopLimit {
                hops: parent.hops.saturating_add(1),
                max: max_hops,
            });
        }
        if !output.enqueues.is_empty() {
            let queues = self.shared.queues.borrow().clone();
            for item in output.enqueues {
                let Some(queue) = queues.get(&item.queue) else {
                    let mut known: Vec<&str> = queues.keys().map(String::as_str).collect();
                    known.sort_unstable();
                    return Err(ScriptError::Failed {
                        message: format!(
                            "enqueue: no queue named {:?} (declared: {})",
                            item.queue,
                            known.join(", ")
                        ),
                    });
                };
                let delay = item.delay.unwrap_or(queue.delay);
                let mut event = parent.caused(item.queue.clone(), self.source.clone(), item.data);
                event
                    .extensions
                    .insert(GENERATION_EXTENSION.into(), generation.into());
                effects.enqueue.push((item.queue, event, delay));
            }
        }
        if !output.emits.is_empty() {
            let schemas = self.shared.schemas.borrow();
            if !schemas.emits.is_empty() {
                for emitted in &output.emits {
                    let Some(schema) = schemas.emits.get(&emitted.topic) else {
                        continue;
                    };
                    if let Err(violation) = schema.check(&emitted.data) {
                        return Err(ScriptError::InvalidEmit {
                            topic: emitted.topic.clone(),
                            violation,
                        });
                    }
                }
            }
        }
        self.metrics.events_out.fetch_add(
            (output.emits.len() + effects.enqueue.len()) as u64,
            Ordering::Relaxed,
        );
        for emitted in output.emits {
            let mut event = parent.caused(emitted.topic, self.source.clone(), emitted.data);
            event
                .extensions
                .insert(GENERATION_EXTENSION.into(), generation.into());
            if let Some(key) = emitted.key {
                event.extensions.insert("partitionkey".into(), key.into());
            }
            match emitted.delay {
                Some(delay) if !delay.is_zero() => effects.deferred.push((event, delay)),
                _ => effects.publish.push(event),
            }
        }
        effects.store_writes = output.store_writes;
        // Only a run that answered looks for whom to answer.
        if let Some((data, to)) = output
            .reply
            .and_then(|data| Some((data, reply_to(parent)?)))
        {
            effects.reply = Some(Reply {
                to,
                result: Ok(data),
            });
        }
        Ok(effects)
    }

    fn dead_letter(
        &self,
        delivery: &Delivery,
        attempts: u32,
        error: &ScriptError,
        generation: u64,
    ) -> Effects {
        let event = &delivery.event;
        let reason = error.to_string();
        let mut dead = dead_letter::build(
            event,
            &dead_letter::Failure {
                topic: &self.config.dead_letter,
                source: &self.source,
                component: &self.name,
                attempts,
                reason: &reason,
                queue: delivery.from_queue.then_some(&*delivery.group),
            },
        );
        dead.extensions
            .insert(GENERATION_EXTENSION.into(), generation.into());
        // A query whose handler gave up gets a safe answer now rather than a timeout.
        let reply = reply_to(event).map(|to| Reply {
            to,
            result: Err(format!("the query handler failed (event {})", event.id)),
        });
        Effects {
            dead_letter: Some(dead),
            reply,
            ..Effects::default()
        }
    }
}

/// Ends a run's span, when export is on.
fn end_span(span: Option<RunSpan>, outcome: &'static str, error: Option<&str>) {
    if let Some(span) = span {
        span.end(outcome, error);
    }
}

/// The request id of a query event (`POST /query/…` sets the `replyto` extension).
fn reply_to(event: &Event) -> Option<String> {
    event
        .extensions
        .get(REPLY_TO_EXTENSION)?
        .as_str()
        .map(str::to_owned)
}

/// The article's consumer output, byte for byte: the topic consumer's two lines, or the
/// deferred worker's `Processing event:` line.
/// The payload is printed as it arrived when it came as bare bytes (the article's curl),
/// so what was POSTed is what is printed.
fn print_article_consumer(event: &Event, from_queue: bool) {
    let text = if from_queue {
        format!("Processing event: {}\n", event.article_payload())
    } else {
        format!(
            "Received event on topic: {}\nEvent data: {}\n",
            event.topic,
            event.article_payload()
        )
    };
    let mut stdout = std::io::stdout().lock();
    // A closed stdout (a pipe whose reader went away) must not fail the event.
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}
