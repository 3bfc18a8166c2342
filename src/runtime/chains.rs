//! Tracked choreography: each `[chains.NAME]` gets a tracker that follows its instances by
//! correlation id. The first step starts an instance, each later step is recorded with the
//! time it took, the last step completes it; an instance that does not complete within the
//! chain's `timeout` emits `on_timeout` with the chain's context (correlation id, steps
//! reached, the last event), which is the hook for compensation.
//!
//! On the memory broker (no `Broker::chains`) one process sees every step, and
//! the tracker keeps the instances in its own memory, bounded (`MAX_INSTANCES`); a
//! restarted tracker forgets instances in flight. It has no consumer group: the broker
//! reports each event it accepts to the runtime's `StepRegistry`
//! (`AcceptFeed::observe_accepted`), which hands the chain's steps to the tracker's
//! `StepInbox` as compact `Step` records (see `step_registry`). The publishing task pays
//! a map lookup, and for a step a hash of the correlation id and a push; the tracker
//! keys its instances by that hash, takes what waits in one go, then
//! lets steps gather for `GATHER` before it looks again, and flushes its stats once per
//! batch. Every way an event reaches the broker counts: HTTP ingest and `/query`,
//! producers, handler emits and dead letters (when their commit lands), a chain's own
//! `on_timeout`, and anything published straight to the broker (`edaflow test`). An event
//! the broker refuses (`Backpressure::Reject` on a full group) is no step, and the broker
//! reports an event before any consumer can take it, so a journey's steps reach the
//! tracker in order. A delayed emit (`emit` with a delay) is a step when it falls due and
//! is published, as the subscribers see it; its duration comes from its event time, which
//! is when it was emitted. Items entering work queues (relays, `enqueue`) are not topic
//! events and are never steps.
//!
//! On a broker that keeps chain state (Redis, where the trackers of several processes
//! share the consumer group `chain:NAME` and each reads only some of the steps),
//! instances live in the broker (`SharedChains::observe`), timed-out ones are taken by one
//! tracker each, and each process mirrors the shared counters for `/chains` and metrics.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::broker::{
    Backpressure, Broker, BrokerError, ChainCounts, ChainSpec, ChainStep, Consumer, Delivery,
    Effects,
};
use crate::event::Event;
use crate::flow::model::ChainConfig;
use crate::runtime::step_registry::{CorrelationId, Step, StepInbox};
use crate::runtime::Shared;

/// Instances tracked at once per chain; past it the oldest is forgotten (and logged).
const MAX_INSTANCES: usize = 100_000;

/// Durations kept per chain for percentiles.
const DURATION_SAMPLES: usize = 1024;

/// The consumer group a chain tracker reads through on a broker that keeps chain state.
pub fn group_name(chain: &str) -> String {
    format!("chain:{chain}")
}

/// Counters of one chain, shared with `/chains` and `/metrics`.
#[derive(Debug, Default)]
pub struct ChainStats {
    pub started: AtomicU64,
    pub completed: AtomicU64,
    pub timed_out: AtomicU64,
    pub in_flight: AtomicU64,
    /// Recent whole-chain durations in milliseconds (newest last).
    durations_ms: Mutex<VecDeque<f64>>,
    /// Per step (index of the step reached): recent step durations in milliseconds.
    step_ms: Mutex<BTreeMap<usize, VecDeque<f64>>>,
}

/// What `/chains` reports for one chain.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ChainReport {
    pub chain: String,
    pub steps: Vec<String>,
    pub started: u64,
    pub completed: u64,
    pub timed_out: u64,
    pub in_flight: u64,
    /// Whole-chain duration percentiles over recent completions, in milliseconds.
    pub duration_ms: Option<Percentiles>,
    /// Per step after the first: how long it took to be reached from the previous one.
    pub step_ms: BTreeMap<String, Percentiles>,
}

/// p50/p90/p99/max of a sample.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub samples: usize,
}

fn percentiles(sample: &VecDeque<f64>) -> Option<Percentiles> {
    if sample.is_empty() {
        return None;
    }
    let mut sorted: Vec<f64> = sample.iter().copied().collect();
    sorted.sort_by(f64::total_cmp);
    let at =
        |p: f64| sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
    Some(Percentiles {
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        max: at(1.0),
        samples: sorted.len(),
    })
}

/// Milliseconds from `from` to `to` (0 when the clock says `to` came first).
fn ms_between(from: SystemTime, to: SystemTime) -> f64 {
    to.duration_since(from)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn push_sample(sample: &mut VecDeque<f64>, value: f64) {
    if sample.len() == DURATION_SAMPLES {
        sample.pop_front();
    }
    sample.push_back(value);
}

impl ChainStats {
    /// Takes the counters a broker shares between processes (Redis) as this process's view.
    pub fn mirror(&self, counts: &ChainCounts) {
        self.started.store(counts.started, Ordering::Relaxed);
        self.completed.store(counts.completed, Ordering::Relaxed);
        self.timed_out.store(counts.timed_out, Ordering::Relaxed);
        self.in_flight.store(counts.in_flight, Ordering::Relaxed);
        *self.durations_ms.lock().unwrap_or_else(|e| e.into_inner()) =
            counts.durations_ms.iter().copied().collect();
        *self.step_ms.lock().unwrap_or_else(|e| e.into_inner()) = counts
            .step_ms
            .iter()
            .map(|(step, sample)| (*step, sample.iter().copied().collect()))
            .collect();
    }

    /// The report for `/chains`.
    pub fn report(&self, chain: &str, steps: &[String]) -> ChainReport {
        let durations = self.durations_ms.lock().unwrap_or_else(|e| e.into_inner());
        let per_step = self.step_ms.lock().unwrap_or_else(|e| e.into_inner());
        ChainReport {
            chain: chain.to_owned(),
            steps: steps.to_vec(),
            started: self.started.load(Ordering::Relaxed),
            completed: self.completed.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            duration_ms: percentiles(&durations),
            step_ms: per_step
                .iter()
                .filter_map(|(i, s)| Some((steps.get(*i)?.clone(), percentiles(s)?)))
                .collect(),
        }
    }
}

struct Instance {
    correlation: CorrelationId,
    /// When the tracker saw its first step (timeouts run from here).
    started: Instant,
    /// (step index, the step event's own time) of every step seen, in order. Durations
    /// come from the events' times, so the tracker reading steps in batches (later than
    /// they happened) does not skew them.
    reached: Vec<(usize, SystemTime)>,
    /// The last step event, kept only when the chain has an `on_timeout` to carry it:
    /// holding every chain's latest event would keep it alive (and freed here, on the
    /// tracker's thread) for nothing.
    last: Option<Arc<Event>>,
    /// The key of its pending timeout in `Tracked::deadlines`.
    deadline: Option<(Instant, u64)>,
}

/// Hashes an instance key, which is already a seeded hash (`Step::key`), to itself.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }
}

/// What a tracker needs.
pub(crate) struct ChainTask<B: Broker> {
    pub shared: Arc<Shared<B>>,
    pub name: Arc<str>,
    pub config: ChainConfig,
    pub source: String,
    pub stats: Arc<ChainStats>,
}

/// Starts the tracker of one chain: on a broker that keeps chain state, reading the
/// chain's consumer group (which must be declared); otherwise fed by the runtime's step
/// registry.
pub(crate) async fn spawn<B: Broker>(
    task: ChainTask<B>,
    tracker: &TaskTracker,
    token: &CancellationToken,
) -> Result<(), BrokerError> {
    let span = tracing::info_span!("chain", component = %task.name);
    if task.shared.broker.chains().is_some() {
        let group = group_name(&task.name);
        let consumer =
            crate::runtime::off_thread(&task.shared.broker, move |b| b.consumer(&group)).await?;
        tracker.spawn(run_shared(task, consumer, token.clone()).instrument(span));
    } else {
        if !task.shared.steps_reported {
            warn!(chain = %task.name, "this broker does not report the events it accepts to this runtime; the chain will see no steps");
        }
        let inbox = task
            .shared
            .steps
            .register(&task.name, &task.config.steps, task.keeps_last());
        tracker.spawn(run_local(task, inbox, token.clone()).instrument(span));
    }
    Ok(())
}

/// The instances a tracker follows.
#[derive(Default)]
struct Tracked {
    /// By instance key (`Step::key`).
    instances: HashMap<u64, Instance, BuildHasherDefault<KeyHasher>>,
    /// Durations observed since the last flush into the shared stats (one lock per batch
    /// of steps rather than one per step): (step, ms) and whole-chain ms.
    step_samples: Vec<(usize, f64)>,
    chain_samples: Vec<f64>,
    /// Pending timeouts (to instance keys); an instance removes its own when it completes.
    deadlines: BTreeMap<(Instant, u64), u64>,
    seq: u64,
}

/// On the memory broker: a batch this large means the tracker is behind, and it looks
/// again at once instead of letting steps gather. On a broker that keeps chain state:
/// steps read per wake-up before looking at the clock again.
const BATCH: usize = 1024;

/// How long the tracker lets steps gather after a batch that did not fill `BATCH`.
const GATHER: std::time::Duration = std::time::Duration::from_millis(1);

/// How often a tracker on a broker that keeps chain state (Redis) looks for timed-out
/// instances; its counters are refreshed every `MIRROR_TICKS` of these.
const SHARED_TICK: std::time::Duration = std::time::Duration::from_millis(100);
const MIRROR_TICKS: u32 = 5;

/// The tracker when the broker keeps the instances: every process's tracker reads its share
/// of the steps and records them in the broker; timed-out instances are taken by one
/// tracker each, which emits `on_timeout`.
async fn run_shared<B: Broker>(
    task: ChainTask<B>,
    mut consumer: B::Consumer,
    token: CancellationToken,
) {
    let broker = task.shared.broker.clone();
    // Started only for a broker that keeps chain state (see `spawn`).
    let Some(chains) = broker.chains() else {
        return;
    };
    let spec = ChainSpec {
        name: task.name.to_string(),
        steps: task.config.steps.len(),
        timeout: task.config.timeout,
    };
    let mut tick = tokio::time::interval(SHARED_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u32;
    let mut failing = false;
    loop {
        tokio::select! {
            biased;
            _ = token.cancelled() => break,
            _ = tick.tick() => {
                ticks = ticks.wrapping_add(1);
                if spec.timeout.is_some() {
                    match chains.expire(&spec, BATCH).await {
                        Ok(expired) => {
                            for e in expired {
                                let reached = e.reached.iter().filter_map(|i| task.config.steps.get(*i).map(String::as_str)).collect();
                                task.emit_timeout(&e.correlation, reached, e.waited, Some(&e.last)).await;
                            }
                        }
                        Err(e) => {
                            if !std::mem::replace(&mut failing, true) {
                                warn!(error = %e, "chain tracker cannot reach the broker; retrying");
                            }
                            continue;
                        }
                    }
                }
                if ticks.is_multiple_of(MIRROR_TICKS) {
                    match chains.counts(&spec).await {
                        Ok(counts) => task.stats.mirror(&counts),
                        Err(e) => debug!(error = %e, "could not read the chain's counters"),
                    }
                }
                failing = false;
            }
            delivery = consumer.next() => {
                let mut next = match delivery {
                    Ok(d) => Some(d),
                    Err(e) => {
                        debug!(error = %e, "chain consumer closed");
                        break;
                    }
                };
                let mut batch: Vec<Delivery> = Vec::new();
                while let Some(delivery) = next.take() {
                    batch.push(delivery);
                    if batch.len() < BATCH {
                        next = consumer.try_next().await.ok().flatten();
                    }
                }
                let steps: Vec<ChainStep> = batch
                    .iter()
                    .filter_map(|d| {
                        let step = task.config.steps.iter().position(|s| *s == d.event.topic)?;
                        Some(ChainStep { step, event: d.event.clone() })
                    })
                    .collect();
                match chains.observe(&spec, &steps).await {
                    Ok(()) => {
                        for delivery in batch {
                            if let Err(e) = broker.commit(delivery, Effects::default()).await {
                                warn!(error = %e, "could not acknowledge a chain step");
                            }
                        }
                    }
                    Err(e) => {
                        // Not recorded: give the steps back, to be read again.
                        warn!(error = %e, steps = batch.len(), "could not record chain steps; they will be read again");
                        for delivery in batch {
                            let _ = broker.nack(delivery).await;
                        }
                        tokio::time::sleep(SHARED_TICK).await;
                    }
                }
            }
        }
    }
    consumer.close().await;
}

/// The tracker when it keeps the instances itself (the memory broker: one process sees
/// every step, handed over through `inbox`).
async fn run_local<B: Broker>(task: ChainTask<B>, inbox: Arc<StepInbox>, token: CancellationToken) {
    let mut tracked = Tracked::default();
    let mut batch: Vec<Step> = Vec::new();
    loop {
        let next_deadline = tracked.deadlines.keys().next().map(|(at, _)| *at);
        let sleep = async {
            match next_deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = token.cancelled() => break,
            _ = sleep => {
                let now = Instant::now();
                while let Some(entry) = tracked.deadlines.first_entry() {
                    if entry.key().0 > now {
                        break;
                    }
                    let key = entry.remove();
                    if let Some(instance) = tracked.instances.remove(&key) {
                        task.time_out(instance).await;
                    }
                }
            }
            _ = inbox.ready() => {
                // Everything waiting, in one go: one wake-up per batch.
                inbox.take(&mut batch);
                let taken = batch.len();
                for step in batch.drain(..) {
                    task.observe(&mut tracked, step);
                }
                task.flush_samples(&mut tracked);
                let dropped = inbox.take_dropped();
                if dropped > 0 {
                    warn!(chain = %task.name, dropped, limit = crate::runtime::step_registry::INBOX_LIMIT, "chain tracker fell behind; steps dropped");
                }
                // Let steps gather before the next look: one wake-up per few hundred steps
                // under load instead of one per step (durations come from the events' own
                // times, so this does not skew them).
                if taken < BATCH {
                    tokio::time::sleep(GATHER).await;
                }
            }
        }
    }
    inbox.close();
}

impl<B: Broker> ChainTask<B> {
    /// Whether instances keep their last step event: only an `on_timeout` needs it.
    fn keeps_last(&self) -> bool {
        self.config.on_timeout.is_some()
    }

    /// Moves the durations observed since the last call into the shared stats.
    fn flush_samples(&self, tracked: &mut Tracked) {
        if !tracked.step_samples.is_empty() {
            let mut per_step = self.stats.step_ms.lock().unwrap_or_else(|e| e.into_inner());
            for (step, ms) in tracked.step_samples.drain(..) {
                push_sample(per_step.entry(step).or_default(), ms);
            }
        }
        if !tracked.chain_samples.is_empty() {
            let completed = tracked.chain_samples.len() as u64;
            let mut durations = self
                .stats
                .durations_ms
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for ms in tracked.chain_samples.drain(..) {
                push_sample(&mut durations, ms);
            }
            drop(durations);
            // After the durations, so that a reader who sees the count sees its samples.
            self.stats.completed.fetch_add(completed, Ordering::Relaxed);
            self.stats.in_flight.fetch_sub(completed, Ordering::Relaxed);
        }
    }

    /// Follows one step.
    fn observe(&self, tracked: &mut Tracked, step: Step) {
        let at = step.time;
        match tracked.instances.get_mut(&step.key) {
            None if step.index == 0 => {
                let Some(correlation) = step.correlation else {
                    return;
                };
                if tracked.instances.len() >= MAX_INSTANCES {
                    self.forget_one(tracked);
                }
                let now = Instant::now();
                let deadline = self.config.timeout.map(|t| {
                    tracked.seq += 1;
                    let key = (now + t, tracked.seq);
                    tracked.deadlines.insert(key, step.key);
                    key
                });
                self.stats.started.fetch_add(1, Ordering::Relaxed);
                self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
                let mut reached = Vec::with_capacity(self.config.steps.len());
                reached.push((0, at));
                tracked.instances.insert(
                    step.key,
                    Instance {
                        correlation,
                        started: now,
                        reached,
                        last: step.event,
                        deadline,
                    },
                );
            }
            None => {} // a journey that started before this tracker did
            Some(instance) => {
                let previous = instance.reached.last().map_or(at, |(_, t)| *t);
                instance.reached.push((step.index, at));
                if step.event.is_some() {
                    instance.last = step.event;
                }
                tracked
                    .step_samples
                    .push((step.index, ms_between(previous, at)));
                if step.index + 1 == self.config.steps.len() {
                    if let Some(done) = tracked.instances.remove(&step.key) {
                        if let Some(key) = done.deadline {
                            tracked.deadlines.remove(&key);
                        }
                        let first = done.reached.first().map_or(at, |(_, t)| *t);
                        // Counted with its duration at the next flush.
                        tracked.chain_samples.push(ms_between(first, at));
                    }
                }
            }
        }
    }

    /// Makes room: forgets the instance closest to timing out (or any, without timeouts).
    fn forget_one(&self, tracked: &mut Tracked) {
        let oldest = match tracked.deadlines.pop_first() {
            Some((_, key)) => key,
            None => match tracked.instances.keys().next() {
                Some(key) => *key,
                None => return,
            },
        };
        if let Some(forgotten) = tracked.instances.remove(&oldest) {
            self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
            warn!(chain = %self.name, correlation = %forgotten.correlation.as_str(), limit = MAX_INSTANCES, "too many chain instances in flight; forgetting one");
        }
    }

    async fn time_out(&self, instance: Instance) {
        self.stats.timed_out.fetch_add(1, Ordering::Relaxed);
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        let steps = &self.config.steps;
        let reached: Vec<&str> = instance
            .reached
            .iter()
            .filter_map(|(i, _)| steps.get(*i).map(String::as_str))
            .collect();
        let waited = Instant::now() - instance.started;
        self.emit_timeout(
            instance.correlation.as_str(),
            reached,
            waited,
            instance.last.as_deref(),
        )
        .await;
    }

    /// Logs a timed-out instance and publishes its `on_timeout` event, if the chain has one.
    async fn emit_timeout(
        &self,
        correlation: &str,
        reached: Vec<&str>,
        waited: std::time::Duration,
        last: Option<&Event>,
    ) {
        info!(chain = %self.name, %correlation, reached = ?reached, waited_ms = waited.as_millis() as u64, "chain timed out");
        let (Some(topic), Some(last)) = (&self.config.on_timeout, last) else {
            return;
        };
        let data = json!({
            "chain": &*self.name,
            "correlation_id": correlation,
            "steps_reached": reached,
            "waited_ms": u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
            "last_event": { "topic": &last.topic, "id": &last.id, "data": &last.data },
        });
        let event = last.caused(topic.clone(), self.source.clone(), data);
        self.shared.metrics.published(topic);
        self.shared.history.record(&event, &self.name, None);
        if let Err(e) = self.shared.broker.publish(event, Backpressure::Wait).await {
            warn!(error = %e, "could not publish the chain's on_timeout event");
        }
    }
}
