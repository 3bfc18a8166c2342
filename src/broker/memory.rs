//! The embedded in-memory broker: the default, nothing to install.
//!
//! Each consumer group is a bounded FIFO (`GroupQueue`) that all of the group's consumers
//! pop from, so they compete; publishing pushes the event into every group whose patterns
//! match (a per-topic route cache makes that a hash lookup). Full buffers push back:
//! `Backpressure::Wait` waits for room, `Reject` fails at once. Delayed publishes sit in a
//! `BTreeMap<(Instant, seq), Event>` that one task drains when items fall due (tokio time,
//! so paused-time tests are exact). Nothing survives the process.
//!
//! Locks are `std::sync::Mutex`/`RwLock`, held for a few instructions and never across an
//! `.await`; waiting is done on `Notify`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use crate::broker::{
    Backpressure, Broker, BrokerError, Consumer, Delivery, Effects, GroupSpec, GroupStats,
};
use crate::event::Event;
use crate::flow::pattern::TopicPattern;

/// Settings of the memory broker.
#[derive(Clone, Copy, Debug)]
pub struct MemoryOptions {
    /// Events each group buffers before publishers are pushed back.
    pub group_capacity: usize,
}

impl Default for MemoryOptions {
    fn default() -> Self {
        MemoryOptions {
            group_capacity: 10_000,
        }
    }
}

/// The in-memory broker. Clones share one broker.
#[derive(Clone)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

struct Inner {
    options: MemoryOptions,
    groups: RwLock<HashMap<String, Arc<GroupQueue>>>,
    /// topic -> the groups it fans out to; cleared whenever groups change.
    routes: RwLock<HashMap<String, Arc<[Arc<GroupQueue>]>>>,
    taps: Mutex<Vec<(TopicPattern, mpsc::Sender<Arc<Event>>)>>,
    tap_count: AtomicUsize,
    schedule: Mutex<BTreeMap<(Instant, u64), Event>>,
    schedule_changed: Arc<Notify>,
    schedule_seq: AtomicU64,
}

/// Routes are cached per topic; an unbounded number of topic names (HTTP ingest accepts
/// any) must not grow the cache without limit.
const ROUTE_CACHE_LIMIT: usize = 4096;

struct GroupQueue {
    name: Arc<str>,
    patterns: RwLock<Vec<TopicPattern>>,
    state: Mutex<GroupState>,
    items_ready: Notify,
    space_ready: Notify,
    capacity: usize,
}

#[derive(Default)]
struct GroupState {
    items: VecDeque<(Arc<Event>, u32)>,
    in_flight: usize,
    removed: bool,
}

impl GroupQueue {
    fn matches(&self, topic: &str) -> bool {
        // A poisoned lock only means a panic elsewhere; the patterns are still valid data.
        let patterns = self.patterns.read().unwrap_or_else(|e| e.into_inner());
        patterns.iter().any(|p| p.matches(topic))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GroupState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn has_room(&self) -> bool {
        self.lock().items.len() < self.capacity
    }

    /// Pushes without checking capacity (the caller did, or it is a nack).
    fn push(&self, event: Arc<Event>, redeliveries: u32, front: bool) {
        {
            let mut state = self.lock();
            if state.removed {
                return;
            }
            if front {
                state.items.push_front((event, redeliveries));
            } else {
                state.items.push_back((event, redeliveries));
            }
        }
        self.items_ready.notify_one();
    }

    /// Pushes, waiting for room.
    async fn push_waiting(&self, event: Arc<Event>) -> Result<(), BrokerError> {
        loop {
            let notified = self.space_ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                if state.removed {
                    return Ok(());
                }
                if state.items.len() < self.capacity {
                    state.items.push_back((event, 0));
                    drop(state);
                    self.items_ready.notify_one();
                    return Ok(());
                }
            }
            notified.await;
        }
    }
}

impl MemoryBroker {
    /// Creates a broker and starts its scheduler task (which ends when the last clone of
    /// the broker is dropped). Must be called inside a tokio runtime.
    pub fn new(options: MemoryOptions) -> MemoryBroker {
        let inner = Arc::new(Inner {
            options,
            groups: RwLock::new(HashMap::new()),
            routes: RwLock::new(HashMap::new()),
            taps: Mutex::new(Vec::new()),
            tap_count: AtomicUsize::new(0),
            schedule: Mutex::new(BTreeMap::new()),
            schedule_changed: Arc::new(Notify::new()),
            schedule_seq: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&inner);
        // Tracked by ownership: the task holds only a Weak and exits when the broker is gone.
        tokio::spawn(run_schedule(weak));
        MemoryBroker { inner }
    }

    fn groups_read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<GroupQueue>>> {
        self.inner.groups.read().unwrap_or_else(|e| e.into_inner())
    }

    fn clear_routes(&self) {
        self.inner
            .routes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    fn route(&self, topic: &str) -> Arc<[Arc<GroupQueue>]> {
        if let Some(found) = self
            .inner
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
        {
            return found.clone();
        }
        let groups: Arc<[Arc<GroupQueue>]> = self
            .groups_read()
            .values()
            .filter(|g| g.matches(topic))
            .cloned()
            .collect();
        let mut routes = self.inner.routes.write().unwrap_or_else(|e| e.into_inner());
        if routes.len() >= ROUTE_CACHE_LIMIT {
            routes.clear();
        }
        routes.insert(topic.to_owned(), groups.clone());
        groups
    }

    fn feed_taps(&self, event: &Arc<Event>) {
        if self.inner.tap_count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut taps = self.inner.taps.lock().unwrap_or_else(|e| e.into_inner());
        taps.retain(|(pattern, tx)| {
            if tx.is_closed() {
                return false;
            }
            if pattern.matches(&event.topic) {
                // A full tap drops the event for that reader: taps are lossy by contract.
                let _ = tx.try_send(event.clone());
            }
            true
        });
        self.inner.tap_count.store(taps.len(), Ordering::Relaxed);
    }

    /// True when no event is queued, in flight or scheduled anywhere.
    pub fn is_idle(&self) -> bool {
        self.scheduled() == 0
            && self.groups_read().values().all(|g| {
                let s = g.lock();
                s.items.is_empty() && s.in_flight == 0
            })
    }

    async fn publish_inner(&self, event: Event, mode: Backpressure) -> Result<(), BrokerError> {
        let groups = self.route(&event.topic);
        let event = Arc::new(event);
        self.feed_taps(&event);
        match mode {
            Backpressure::Reject => {
                if let Some(full) = groups.iter().find(|g| !g.has_room()) {
                    return Err(BrokerError::Full {
                        group: full.name.to_string(),
                    });
                }
                for group in groups.iter() {
                    group.push(event.clone(), 0, false);
                }
            }
            Backpressure::Wait => {
                for group in groups.iter() {
                    group.push_waiting(event.clone()).await?;
                }
            }
        }
        Ok(())
    }
}

async fn run_schedule(weak: Weak<Inner>) {
    let Some(changed_signal) = weak.upgrade().map(|inner| inner.schedule_changed.clone()) else {
        return;
    };
    loop {
        let changed = changed_signal.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let next = {
            let Some(inner) = weak.upgrade() else { return };
            let broker = MemoryBroker { inner };
            let now = Instant::now();
            let (due, next) = {
                let mut schedule = broker
                    .inner
                    .schedule
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let later = schedule.split_off(&(now, u64::MAX));
                let due = std::mem::replace(&mut *schedule, later);
                (due, schedule.keys().next().map(|(at, _)| *at))
            };
            for (_, event) in due {
                // A removed destination simply drops the event, as a publish would.
                let _ = broker.publish_inner(event, Backpressure::Wait).await;
            }
            next
        };
        match next {
            Some(at) if at <= Instant::now() => continue,
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = &mut changed => {}
                    _ = closed(&weak) => return,
                }
            }
            None => {
                tokio::select! {
                    _ = &mut changed => {}
                    _ = closed(&weak) => return,
                }
            }
        }
    }
}

/// Resolves once the broker has been dropped. Checked every second, which bounds how long
/// an idle scheduler task outlives its broker.
async fn closed(weak: &Weak<Inner>) {
    loop {
        if weak.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

impl Broker for MemoryBroker {
    type Consumer = MemoryConsumer;

    async fn declare_group(&self, spec: &GroupSpec) -> Result<(), BrokerError> {
        {
            let mut groups = self.inner.groups.write().unwrap_or_else(|e| e.into_inner());
            match groups.get(&spec.name) {
                Some(existing) => {
                    *existing.patterns.write().unwrap_or_else(|e| e.into_inner()) =
                        spec.patterns.clone();
                }
                None => {
                    groups.insert(
                        spec.name.clone(),
                        Arc::new(GroupQueue {
                            name: spec.name.as_str().into(),
                            patterns: RwLock::new(spec.patterns.clone()),
                            state: Mutex::new(GroupState::default()),
                            items_ready: Notify::new(),
                            space_ready: Notify::new(),
                            capacity: self.inner.options.group_capacity,
                        }),
                    );
                }
            }
        }
        self.clear_routes();
        Ok(())
    }

    async fn remove_group(&self, name: &str) -> Result<(), BrokerError> {
        let removed = self
            .inner
            .groups
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        self.clear_routes();
        if let Some(group) = removed {
            {
                let mut state = group.lock();
                state.removed = true;
                state.items.clear();
            }
            group.items_ready.notify_waiters();
            group.space_ready.notify_waiters();
        }
        Ok(())
    }

    async fn publish(&self, event: Event, mode: Backpressure) -> Result<(), BrokerError> {
        self.publish_inner(event, mode).await
    }

    async fn publish_later(&self, event: Event, delay: Duration) -> Result<(), BrokerError> {
        if delay.is_zero() {
            return self.publish_inner(event, Backpressure::Wait).await;
        }
        let seq = self.inner.schedule_seq.fetch_add(1, Ordering::Relaxed);
        self.inner
            .schedule
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((Instant::now() + delay, seq), event);
        self.inner.schedule_changed.notify_one();
        Ok(())
    }

    fn consumer(&self, group: &str) -> Result<MemoryConsumer, BrokerError> {
        let queue =
            self.groups_read()
                .get(group)
                .cloned()
                .ok_or_else(|| BrokerError::UnknownGroup {
                    group: group.to_owned(),
                })?;
        Ok(MemoryConsumer { queue })
    }

    async fn commit(&self, delivery: Delivery, effects: Effects) -> Result<(), BrokerError> {
        for event in effects.publish {
            self.publish_inner(event, Backpressure::Wait).await?;
        }
        for (event, delay) in effects.deferred {
            self.publish_later(event, delay).await?;
        }
        self.settle(&delivery);
        Ok(())
    }

    async fn nack(&self, delivery: Delivery) -> Result<(), BrokerError> {
        let group = self.groups_read().get(&*delivery.group).cloned();
        if let Some(group) = group {
            {
                let mut state = group.lock();
                state.in_flight = state.in_flight.saturating_sub(1);
            }
            group.push(delivery.event, delivery.redeliveries + 1, true);
        }
        Ok(())
    }

    fn tap(&self, pattern: TopicPattern, buffer: usize) -> mpsc::Receiver<Arc<Event>> {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let mut taps = self.inner.taps.lock().unwrap_or_else(|e| e.into_inner());
        taps.push((pattern, tx));
        self.inner.tap_count.store(taps.len(), Ordering::Relaxed);
        rx
    }

    fn stats(&self) -> Vec<GroupStats> {
        let mut stats: Vec<GroupStats> = self
            .groups_read()
            .values()
            .map(|g| {
                let state = g.lock();
                GroupStats {
                    name: g.name.to_string(),
                    queued: state.items.len(),
                    in_flight: state.in_flight,
                    capacity: g.capacity,
                }
            })
            .collect();
        stats.sort_by(|a, b| a.name.cmp(&b.name));
        stats
    }

    fn scheduled(&self) -> usize {
        self.inner
            .schedule
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

impl MemoryBroker {
    fn settle(&self, delivery: &Delivery) {
        if let Some(group) = self.groups_read().get(&*delivery.group) {
            let mut state = group.lock();
            state.in_flight = state.in_flight.saturating_sub(1);
        }
    }
}

/// One consumer of a memory group.
pub struct MemoryConsumer {
    queue: Arc<GroupQueue>,
}

impl Consumer for MemoryConsumer {
    async fn next(&mut self) -> Result<Delivery, BrokerError> {
        let queue = &self.queue;
        loop {
            let notified = queue.items_ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = queue.lock();
                if state.removed {
                    return Err(BrokerError::UnknownGroup {
                        group: queue.name.to_string(),
                    });
                }
                if let Some((event, redeliveries)) = state.items.pop_front() {
                    state.in_flight += 1;
                    let more = !state.items.is_empty();
                    drop(state);
                    queue.space_ready.notify_one();
                    if more {
                        // Pass the baton: another consumer may be waiting for the next item.
                        queue.items_ready.notify_one();
                    }
                    return Ok(Delivery {
                        event,
                        group: queue.name.clone(),
                        redeliveries,
                        tag: String::new(),
                    });
                }
            }
            notified.await;
        }
    }
}
