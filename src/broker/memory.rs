//! The embedded in-memory broker: the default, nothing to install.
//!
//! Each consumer group is a bounded FIFO (`GroupQueue`) that all of the group's consumers
//! pop from, so they compete; publishing pushes the event into every group whose patterns
//! match (a per-topic route cache makes that a hash lookup), into all of them as one step
//! under their locks, so a group gets an event before anything another group's handler
//! emits in reaction to it (`push_to_all`). Full buffers push back:
//! `Backpressure::Wait` waits for room, `Reject` fails at once. Delayed publishes sit in a
//! `BTreeMap<(Instant, seq), Event>` that one task drains when items fall due (tokio time,
//! so paused-time tests are exact). Nothing survives the process.
//!
//! An `AcceptObserver` (the runtime's chain trackers) sees each published event as it is
//! accepted: under the lock of the first group buffer it enters, so before any consumer
//! can take it, and not at all when `Reject` refuses it.
//!
//! Locks are `std::sync::Mutex`/`RwLock`, held for a few instructions and never across an
//! `.await`; waiting is done on `Notify`. Only a fan-out holds several group locks at once,
//! taken in address order.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

use crate::broker::memory_queue::WorkQueue;
use crate::broker::tap::TapFeed;
use crate::broker::{
    AcceptFeed, AcceptObserver, Backpressure, Broker, BrokerError, Consumer, DeadFilter, Delivery,
    Effects, GroupSpec, GroupStats, QueueSpec, QueueStats, Removed, Replies, ReplyResult,
};
use crate::event::Event;
use crate::pattern::TopicPattern;
use crate::store::{MemoryStores, StoreRead};

/// Settings of the memory broker.
#[derive(Clone, Copy, Debug)]
pub struct MemoryOptions {
    /// Events each group buffers before publishers are pushed back.
    pub group_capacity: usize,
    /// Bytes of events (`Event::approx_bytes`) each group buffers before publishers are
    /// pushed back; a group that holds nothing takes one event of any size.
    pub group_bytes: usize,
    /// How long a handler's commit waits for room in a full group before it fails with
    /// `BrokerError::Full` (the runtime then retries the run with backoff).
    pub full_wait: Duration,
    /// Bytes of items each work queue holds (serialised ones counted as such) before
    /// enqueueing fails; a queue holding nothing takes one item of any size.
    pub queue_bytes: usize,
    /// Bytes of events published with a delay (`emit(…, #{ delay })`) held until they
    /// fall due, before such publishes fail.
    pub scheduled_bytes: usize,
}

impl Default for MemoryOptions {
    fn default() -> Self {
        MemoryOptions {
            group_capacity: 10_000,
            group_bytes: 64 << 20,
            full_wait: Duration::from_secs(5),
            queue_bytes: 512 << 20,
            scheduled_bytes: 256 << 20,
        }
    }
}

/// The in-memory broker. Clones share one broker.
#[derive(Clone)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

/// The groups each topic routes to, looked up per publish: foldhash (randomly seeded)
/// rather than SipHash.
type Routes = HashMap<String, Arc<[Arc<GroupQueue>]>, foldhash::fast::RandomState>;

struct Inner {
    options: MemoryOptions,
    groups: RwLock<HashMap<String, Arc<GroupQueue>>>,
    /// topic -> the groups it fans out to; cleared whenever groups change.
    routes: RwLock<Routes>,
    /// Incremented whenever groups change (see `clear_routes`).
    routes_version: AtomicU64,
    taps: Mutex<Vec<(TopicPattern, TapFeed)>>,
    tap_count: AtomicUsize,
    schedule: Mutex<Schedule>,
    schedule_changed: Arc<Notify>,
    schedule_seq: AtomicU64,
    queues: RwLock<HashMap<String, Arc<WorkQueue>>>,
    /// Dead letters, oldest first, at most `DEAD_LETTER_LIMIT`.
    dead: Mutex<DeadStore>,
    stores: Arc<MemoryStores>,
    /// Requests waiting for their reply, by request id.
    replies: Mutex<HashMap<String, oneshot::Sender<Result<serde_json::Value, String>>>>,
    /// Sees every accepted event (`AcceptFeed::observe_accepted`); set at most once.
    observer: OnceLock<Arc<dyn AcceptObserver>>,
}

/// How often a commit waiting for room in a full group looks again.
const FULL_POLL: Duration = Duration::from_millis(5);

/// Dead letters kept in memory; past this, the oldest are dropped (and logged).
const DEAD_LETTER_LIMIT: usize = 10_000;
/// Bytes of dead letters kept in memory (`Event::approx_bytes`); past them, the oldest are
/// dropped (and logged), whatever their count.
const DEAD_LETTER_BYTES: usize = 64 << 20;

/// Events published with a delay, by due time, and their size.
#[derive(Default)]
struct Schedule {
    items: BTreeMap<(Instant, u64), Event>,
    /// `Event::approx_bytes` of `items`, summed.
    bytes: usize,
}

/// The dead letters, oldest first, and their size.
#[derive(Default)]
struct DeadStore {
    letters: VecDeque<Event>,
    bytes: usize,
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
    /// The byte budget (`MemoryOptions::group_bytes`).
    budget: usize,
}

/// An event waiting in a group: the event, its redeliveries, its size.
type Waiting = (Arc<Event>, u32, usize);

#[derive(Default)]
struct GroupState {
    items: VecDeque<Waiting>,
    /// The sizes of `items`, summed.
    bytes: usize,
    in_flight: usize,
    removed: bool,
}

impl GroupState {
    /// Whether `n` more events of `bytes` fit (a group holding nothing takes anything).
    fn fits(&self, n: usize, bytes: usize, capacity: usize, budget: usize) -> bool {
        self.items.is_empty() || (self.items.len() + n <= capacity && self.bytes + bytes <= budget)
    }
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

    fn has_room_for(&self, n: usize, bytes: usize) -> bool {
        self.lock().fits(n, bytes, self.capacity, self.budget)
    }

    /// Pushes without checking capacity (the caller did, or it is a nack); false when the
    /// group has been removed (the caller re-routes). `observe` sees the event under the
    /// group's lock, before any consumer can take it.
    fn push(
        &self,
        event: Arc<Event>,
        redeliveries: u32,
        bytes: usize,
        front: bool,
        observe: Option<&dyn AcceptObserver>,
    ) -> bool {
        {
            let mut state = self.lock();
            if state.removed {
                return false;
            }
            if let Some(observer) = observe {
                observer.accepted(&event);
            }
            state.bytes += bytes;
            if front {
                state.items.push_front((event, redeliveries, bytes));
            } else {
                state.items.push_back((event, redeliveries, bytes));
            }
        }
        self.items_ready.notify_one();
        true
    }
}

impl MemoryBroker {
    fn schedule(&self) -> std::sync::MutexGuard<'_, Schedule> {
        self.inner
            .schedule
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Fails unless delayed events of `bytes` in all fit the schedule's budget (an empty
    /// schedule takes anything).
    fn check_schedule(&self, bytes: usize) -> Result<(), BrokerError> {
        let schedule = self.schedule();
        if !schedule.items.is_empty() && schedule.bytes + bytes > self.inner.options.scheduled_bytes
        {
            return Err(BrokerError::OverBudget {
                held: "the delayed events".into(),
                bytes: self.inner.options.scheduled_bytes,
            });
        }
        Ok(())
    }

    /// Schedules `event` to be published at `due` (the caller checked the budget).
    fn schedule_at(&self, event: Event, due: Instant) {
        let seq = self.inner.schedule_seq.fetch_add(1, Ordering::Relaxed);
        {
            let mut schedule = self.schedule();
            schedule.bytes += event.approx_bytes();
            schedule.items.insert((due, seq), event);
        }
        self.inner.schedule_changed.notify_one();
    }

    /// Creates a broker and starts its scheduler task (which ends when the last clone of
    /// the broker is dropped). Must be called inside a tokio runtime.
    pub fn new(options: MemoryOptions) -> MemoryBroker {
        let inner = Arc::new(Inner {
            options,
            groups: RwLock::new(HashMap::new()),
            routes: RwLock::new(HashMap::default()),
            routes_version: AtomicU64::new(0),
            taps: Mutex::new(Vec::new()),
            tap_count: AtomicUsize::new(0),
            schedule: Mutex::new(Schedule::default()),
            schedule_changed: Arc::new(Notify::new()),
            schedule_seq: AtomicU64::new(0),
            queues: RwLock::new(HashMap::new()),
            dead: Mutex::new(DeadStore::default()),
            stores: Arc::new(MemoryStores::default()),
            replies: Mutex::new(HashMap::new()),
            observer: OnceLock::new(),
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
        let mut routes = self.inner.routes.write().unwrap_or_else(|e| e.into_inner());
        // Bumped under the routes lock: a route computed before this cannot be cached after.
        self.inner.routes_version.fetch_add(1, Ordering::SeqCst);
        routes.clear();
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
        let version = self.inner.routes_version.load(Ordering::SeqCst);
        let groups: Arc<[Arc<GroupQueue>]> = self
            .groups_read()
            .values()
            .filter(|g| g.matches(topic))
            .cloned()
            .collect();
        let mut routes = self.inner.routes.write().unwrap_or_else(|e| e.into_inner());
        // Groups changed while this route was computed: use it once, do not cache it.
        if self.inner.routes_version.load(Ordering::SeqCst) != version {
            return groups;
        }
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
        taps.retain_mut(|(pattern, feed)| {
            if feed.is_closed() {
                return false;
            }
            if pattern.matches(&event.topic) {
                // A full tap drops the event for that reader: taps are lossy by contract.
                feed.offer(event);
            }
            true
        });
        self.inner.tap_count.store(taps.len(), Ordering::Relaxed);
    }

    /// True when no topic event waits, nothing is in flight, and no delayed publish is due:
    /// the flow has settled until time moves on (`edaflow test` waits for this). Queue
    /// items that are due but not yet taken do not count: a `poll` queue holds them until
    /// its workers' next look.
    pub fn is_idle(&self) -> bool {
        let now = Instant::now();
        let nothing_due = self
            .schedule()
            .items
            .keys()
            .next()
            .is_none_or(|(at, _)| *at > now);
        nothing_due
            && self.groups_read().values().all(|g| {
                let s = g.lock();
                s.items.is_empty() && s.in_flight == 0
            })
            && self.queues_read().values().all(|q| q.is_idle())
    }

    fn queues_read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<WorkQueue>>> {
        self.inner.queues.read().unwrap_or_else(|e| e.into_inner())
    }

    fn work_queue(&self, name: &str) -> Result<Arc<WorkQueue>, BrokerError> {
        self.queues_read()
            .get(name)
            .cloned()
            .ok_or_else(|| BrokerError::UnknownQueue {
                queue: name.to_owned(),
            })
    }

    /// Where a work queue sends an item it cannot decode: the dead-letter store.
    fn dead_sink(&self) -> crate::broker::memory_queue::DeadSink {
        let weak = Arc::downgrade(&self.inner);
        Arc::new(move |dead: Event| {
            if let Some(inner) = weak.upgrade() {
                MemoryBroker { inner }.store_dead(dead);
            }
        })
    }

    fn store_dead(&self, event: Event) {
        let mut dead = self.inner.dead.lock().unwrap_or_else(|e| e.into_inner());
        dead.bytes += event.approx_bytes();
        dead.letters.push_back(event);
        while dead.letters.len() > DEAD_LETTER_LIMIT
            || (dead.bytes > DEAD_LETTER_BYTES && dead.letters.len() > 1)
        {
            let Some(oldest) = dead.letters.pop_front() else {
                break;
            };
            dead.bytes = dead.bytes.saturating_sub(oldest.approx_bytes());
            tracing::warn!(id = %oldest.id, most = DEAD_LETTER_LIMIT, most_bytes = DEAD_LETTER_BYTES, "dead-letter store full; dropping the oldest dead letter");
        }
    }

    async fn publish_inner(&self, event: Event, mode: Admit) -> Result<(), BrokerError> {
        let mut groups = self.route(&event.topic);
        let bytes = if groups.is_empty() {
            0
        } else {
            event.approx_bytes()
        };
        if mode == Admit::Wait {
            // Room in every group first, then all of them at once: a publisher that gives
            // up waiting (its future dropped) has published to none.
            self.wait_for_room(std::slice::from_ref(&event), None)
                .await?;
        }
        let event = Arc::new(event);
        if mode == Admit::Reject {
            if let Some(full) = groups.iter().find(|g| !g.has_room_for(1, bytes)) {
                return Err(BrokerError::Full {
                    group: full.name.to_string(),
                });
            }
        }
        // A group removed after the route was taken (a reload renaming it) refuses the
        // push: take the route again and deliver to the groups not reached yet, so an
        // event published during a reload reaches the groups that exist after it.
        let mut reached: Vec<Arc<str>> = Vec::with_capacity(groups.len());
        // Observed as it enters its first group (see `GroupQueue::push`), or at the end
        // when no group takes it.
        let observer = self.inner.observer.get().map(|o| &**o);
        let mut observed = observer.is_none();
        loop {
            let observe = if observed { None } else { observer };
            let stale = match &*groups {
                [] => false,
                // The first try at a route of one group (after a stale one, `push_to_all`
                // skips the groups already reached).
                [group] if reached.is_empty() => {
                    let pushed = group.push(event.clone(), 0, bytes, false, observe);
                    if pushed {
                        reached.push(group.name.clone());
                    }
                    !pushed
                }
                many => push_to_all(many, &mut reached, &event, bytes, observe),
            };
            observed |= !reached.is_empty();
            if !stale {
                break;
            }
            groups = self.route(&event.topic);
        }
        if let (false, Some(observer)) = (observed, observer) {
            observer.accepted(&event);
        }
        // Only what was accepted is shown to taps.
        self.feed_taps(&event);
        Ok(())
    }
}

/// Pushes `event` into each of `groups` not in `reached` as one step, and adds the ones it
/// entered to `reached`; true when one of them has been removed (the caller routes again).
///
/// Every group's lock is held until the event is in all of them, so no consumer can take
/// it from one group, handle it and publish what it caused before it is in the others. A
/// subscriber of several topics therefore sees an event before the events it caused, even
/// when another group's worker on another thread reacts to it first (the saga's
/// `track_order` relies on this). The locks are taken in address order, so two fan-outs
/// sharing groups cannot deadlock; nothing else holds two group locks at once.
fn push_to_all(
    groups: &[Arc<GroupQueue>],
    reached: &mut Vec<Arc<str>>,
    event: &Arc<Event>,
    bytes: usize,
    observe: Option<&dyn AcceptObserver>,
) -> bool {
    let mut targets: Vec<&Arc<GroupQueue>> = groups
        .iter()
        .filter(|g| !reached.contains(&g.name))
        .collect();
    targets.sort_by_key(|g| Arc::as_ptr(g) as usize);
    let mut stale = false;
    let mut entered: Vec<&Arc<GroupQueue>> = Vec::with_capacity(targets.len());
    {
        let mut held = Vec::with_capacity(targets.len());
        for group in targets {
            let state = group.lock();
            if state.removed {
                stale = true;
                continue;
            }
            held.push(state);
            entered.push(group);
        }
        if let (false, Some(observer)) = (held.is_empty(), observe) {
            observer.accepted(event);
        }
        for state in &mut held {
            state.bytes += bytes;
            state.items.push_back((event.clone(), 0, bytes));
        }
    }
    for group in entered {
        group.items_ready.notify_one();
        reached.push(group.name.clone());
    }
    stale
}

/// How `publish_inner` admits an event into full groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Admit {
    /// Refuse at once (`Backpressure::Reject`).
    Reject,
    /// Wait for room as long as it takes (`Backpressure::Wait`).
    Wait,
    /// Push without looking at room: the caller waited for it already (a commit), or the
    /// event must never be refused (a dead letter).
    Force,
}

impl From<Backpressure> for Admit {
    fn from(mode: Backpressure) -> Admit {
        match mode {
            Backpressure::Reject => Admit::Reject,
            Backpressure::Wait => Admit::Wait,
        }
    }
}

/// `now + delay`, or `DelayTooLong` past what the clock can represent.
fn due_after(now: Instant, delay: Duration) -> Result<Instant, BrokerError> {
    now.checked_add(delay).ok_or(BrokerError::DelayTooLong {
        delay_ms: delay.as_millis(),
    })
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
                let mut schedule = broker.schedule();
                let later = schedule.items.split_off(&(now, u64::MAX));
                let due = std::mem::replace(&mut schedule.items, later);
                let freed: usize = due.values().map(Event::approx_bytes).sum();
                schedule.bytes = schedule.bytes.saturating_sub(freed);
                (due, schedule.items.keys().next().map(|(at, _)| *at))
            };
            for (_, event) in due {
                // A removed destination simply drops the event, as a publish would.
                let _ = broker.publish_inner(event, Admit::Wait).await;
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

    fn kind(&self) -> &'static str {
        "memory"
    }

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
                            budget: self.inner.options.group_bytes,
                        }),
                    );
                }
            }
        }
        self.clear_routes();
        Ok(())
    }

    async fn remove_group(
        &self,
        name: &str,
        successor: Option<&str>,
    ) -> Result<Removed, BrokerError> {
        let (removed, heir) = {
            let mut groups = self.inner.groups.write().unwrap_or_else(|e| e.into_inner());
            let removed = groups.remove(name);
            (removed, successor.and_then(|s| groups.get(s).cloned()))
        };
        self.clear_routes();
        let mut outcome = Removed::default();
        if let Some(group) = removed {
            let left = {
                let mut state = group.lock();
                state.removed = true;
                state.bytes = 0;
                std::mem::take(&mut state.items)
            };
            group.items_ready.notify_waiters();
            group.space_ready.notify_waiters();
            let n = left.len() as u64;
            if heir.is_some() {
                outcome.moved = n;
            } else {
                outcome.dropped = n;
            }
            if let Some(heir) = heir {
                // Events published while both groups existed are in both: move only the
                // others. The heir may go over capacity by what it inherits; nothing is dropped.
                let held: std::collections::HashSet<String> = heir
                    .lock()
                    .items
                    .iter()
                    .map(|(e, _, _)| e.id.clone())
                    .collect();
                for (event, redeliveries, bytes) in left {
                    if !held.contains(&event.id) {
                        heir.push(event, redeliveries, bytes, false, None);
                    }
                }
            }
        }
        Ok(outcome)
    }

    async fn publish(&self, event: Event, mode: Backpressure) -> Result<(), BrokerError> {
        self.publish_inner(event, mode.into()).await
    }

    async fn publish_later(&self, event: Event, delay: Duration) -> Result<(), BrokerError> {
        if delay.is_zero() {
            return self.publish_inner(event, Admit::Wait).await;
        }
        let due = due_after(Instant::now(), delay)?;
        self.check_schedule(event.approx_bytes())?;
        self.schedule_at(event, due);
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
        Ok(MemoryConsumer(Source::Group(queue)))
    }

    async fn commit(&self, delivery: Delivery, effects: Effects) -> Result<(), BrokerError> {
        // Queues first: a full queue fails the commit before anything else is visible,
        // and the caller can retry the whole handler run.
        let now = Instant::now();
        let mut queued = Vec::with_capacity(effects.enqueue.len());
        let mut per_queue: HashMap<String, (Arc<WorkQueue>, usize, usize)> = HashMap::new();
        for (queue, item, delay) in effects.enqueue {
            let target = self.work_queue(&queue)?;
            let need = per_queue
                .entry(queue)
                .or_insert_with(|| (target.clone(), 0, 0));
            need.1 += 1;
            need.2 += item.approx_bytes();
            queued.push((target, Arc::new(item), due_after(now, delay)?));
        }
        // Every delay is checked before anything is visible: a commit refused for one
        // (`DelayTooLong`) must not have published the rest, or its retry would repeat them.
        let deferred = effects
            .deferred
            .into_iter()
            .map(|(event, delay)| {
                Ok((
                    event,
                    (!delay.is_zero())
                        .then(|| due_after(now, delay))
                        .transpose()?,
                ))
            })
            .collect::<Result<Vec<_>, BrokerError>>()?;
        // Check every queue before adding to any: the commit lands whole or not at all.
        for (target, n, bytes) in per_queue.values() {
            target.check_room(*n, *bytes)?;
        }
        // The run's store writes land before anything it emits or enqueues is visible: a
        // handler of what it emitted reads the state the run wrote, never an older one.
        self.inner.stores.apply(&effects.store_writes);
        let delayed: usize = deferred
            .iter()
            .filter(|(_, due)| due.is_some())
            .map(|(event, _)| event.approx_bytes())
            .sum();
        if delayed > 0 {
            self.check_schedule(delayed)?;
        }
        // Room in every group the events enter, waited for (at most `full_wait`) before
        // anything is visible; past this point nothing waits, so a commit given up (the
        // future dropped) has done nothing.
        let (now_events, later): (Vec<_>, Vec<_>) =
            deferred.into_iter().partition(|(_, due)| due.is_none());
        let publish: Vec<Event> = effects
            .publish
            .into_iter()
            .chain(now_events.into_iter().map(|(event, _)| event))
            .collect();
        let deadline = Instant::now() + self.inner.options.full_wait;
        self.wait_for_room(&publish, Some(deadline)).await?;
        for (target, n, bytes) in per_queue.values() {
            target.check_room(*n, *bytes)?;
        }
        for (target, item, due) in queued {
            target.push_checked(item.clone(), due)?;
            self.feed_taps(&item);
        }
        for event in publish {
            self.publish_inner(event, Admit::Force).await?;
        }
        for (event, due) in later {
            if let Some(due) = due {
                self.schedule_at(event, due);
            }
        }
        if let Some(reply) = effects.reply {
            let waiting = self
                .inner
                .replies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&reply.to);
            // Nobody waits when the request timed out already (or another process asked).
            if let Some(waiting) = waiting {
                let _ = waiting.send(reply.result);
            }
        }
        if let Some(dead) = effects.dead_letter {
            self.store_dead(dead.clone());
            // Never refused: a dead letter ends an event's journey.
            self.publish_inner(dead, Admit::Force).await?;
        }
        self.settle(&delivery);
        Ok(())
    }

    async fn nack(&self, delivery: Delivery) -> Result<(), BrokerError> {
        if delivery.from_queue {
            if let Ok(queue) = self.work_queue(&delivery.group) {
                queue.give_back(delivery.event, delivery.redeliveries + 1);
            }
            return Ok(());
        }
        let group = self.groups_read().get(&*delivery.group).cloned();
        if let Some(group) = group {
            {
                let mut state = group.lock();
                state.in_flight = state.in_flight.saturating_sub(1);
            }
            let bytes = delivery.event.approx_bytes();
            group.push(delivery.event, delivery.redeliveries + 1, bytes, true, None);
        }
        Ok(())
    }

    fn accept_feed(&self) -> Option<&dyn AcceptFeed> {
        Some(self)
    }

    fn tap_within(
        &self,
        pattern: TopicPattern,
        buffer: usize,
        bytes: usize,
    ) -> mpsc::Receiver<Arc<Event>> {
        let (feed, rx) = TapFeed::channel(buffer, bytes);
        let mut taps = self.inner.taps.lock().unwrap_or_else(|e| e.into_inner());
        taps.push((pattern, feed));
        self.inner.tap_count.store(taps.len(), Ordering::Relaxed);
        rx
    }

    async fn stats(&self) -> Vec<GroupStats> {
        MemoryBroker::stats(self)
    }

    async fn declare_queue(&self, spec: &QueueSpec) -> Result<(), BrokerError> {
        let mut queues = self.inner.queues.write().unwrap_or_else(|e| e.into_inner());
        match queues.get(&spec.name) {
            Some(queue) => queue.set_capacity(spec.capacity),
            None => {
                queues.insert(
                    spec.name.clone(),
                    Arc::new(WorkQueue::new(
                        &spec.name,
                        spec.capacity,
                        self.inner.options.queue_bytes,
                        self.dead_sink(),
                    )),
                );
            }
        }
        Ok(())
    }

    async fn remove_queue(
        &self,
        name: &str,
        successor: Option<&str>,
    ) -> Result<Removed, BrokerError> {
        let (removed, heir) = {
            let mut queues = self.inner.queues.write().unwrap_or_else(|e| e.into_inner());
            let removed = queues.remove(name);
            let heir = successor
                .filter(|s| *s != name)
                .and_then(|s| queues.get(s).cloned());
            (removed, heir)
        };
        let Some(queue) = removed else {
            return Ok(Removed::default());
        };
        let left = queue.remove();
        let n = left.count() as u64;
        let in_flight = left.in_flight as u64;
        Ok(match heir {
            Some(heir) => {
                heir.inherit(left);
                Removed {
                    moved: n,
                    dropped: in_flight,
                }
            }
            None => Removed {
                moved: 0,
                dropped: n + in_flight,
            },
        })
    }

    async fn enqueue(&self, queue: &str, item: Event, delay: Duration) -> Result<(), BrokerError> {
        let target = self.work_queue(queue)?;
        let item = Arc::new(item);
        target.push(item.clone(), due_after(Instant::now(), delay)?)?;
        self.feed_taps(&item);
        Ok(())
    }

    fn queue_consumer(&self, queue: &str) -> Result<MemoryConsumer, BrokerError> {
        Ok(MemoryConsumer(Source::Queue(self.work_queue(queue)?)))
    }

    async fn queue_stats(&self) -> Vec<QueueStats> {
        MemoryBroker::queue_stats(self)
    }

    async fn dead_letters(&self, filter: &DeadFilter) -> Result<Vec<Event>, BrokerError> {
        let dead = self.inner.dead.lock().unwrap_or_else(|e| e.into_inner());
        Ok(dead
            .letters
            .iter()
            .filter(|e| filter.matches(e))
            .cloned()
            .collect())
    }

    async fn take_dead_letters(&self, filter: &DeadFilter) -> Result<Vec<Event>, BrokerError> {
        let mut dead = self.inner.dead.lock().unwrap_or_else(|e| e.into_inner());
        let (taken, kept): (VecDeque<Event>, VecDeque<Event>) =
            dead.letters.drain(..).partition(|e| filter.matches(e));
        dead.bytes = kept.iter().map(Event::approx_bytes).sum();
        dead.letters = kept;
        Ok(taken.into())
    }

    fn stores(&self) -> Option<Arc<dyn StoreRead>> {
        Some(self.inner.stores.clone())
    }

    fn replies(&self) -> Option<&dyn Replies> {
        Some(self)
    }

    async fn scheduled(&self) -> usize {
        MemoryBroker::scheduled(self)
    }
}

impl Replies for MemoryBroker {
    /// The request's id itself: one process holds every waiting request.
    fn reply_address(&self, id: &str) -> String {
        id.to_owned()
    }

    fn await_reply(&self, id: &str) -> oneshot::Receiver<ReplyResult> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .replies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned(), tx);
        rx
    }

    fn forget_reply(&self, id: &str) {
        self.inner
            .replies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

impl AcceptFeed for MemoryBroker {
    fn observe_accepted(&self, observer: Arc<dyn AcceptObserver>) -> bool {
        self.inner.observer.set(observer).is_ok()
    }
}

impl MemoryBroker {
    /// The state of every group, read at once: the memory broker answers `Broker::stats`
    /// without waiting, and tests on it read this snapshot directly.
    pub fn stats(&self) -> Vec<GroupStats> {
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

    /// The state of every queue, read at once (see `stats`).
    pub fn queue_stats(&self) -> Vec<QueueStats> {
        let mut stats: Vec<QueueStats> = self.queues_read().values().map(|q| q.stats()).collect();
        stats.sort_by(|a, b| a.name.cmp(&b.name));
        stats
    }

    /// Events scheduled by `publish_later` and not published yet, read at once (see
    /// `stats`).
    pub fn scheduled(&self) -> usize {
        self.schedule().items.len()
    }

    /// Waits until every group that `events` enter has room for all of them (counting
    /// events and bytes), until `deadline` if there is one.
    ///
    /// # Errors
    /// `BrokerError::Full` naming a group still full at the deadline.
    async fn wait_for_room(
        &self,
        events: &[Event],
        deadline: Option<Instant>,
    ) -> Result<(), BrokerError> {
        if events.is_empty() {
            return Ok(());
        }
        loop {
            let mut needs: Vec<(Arc<GroupQueue>, usize, usize)> = Vec::new();
            for event in events {
                let groups = self.route(&event.topic);
                if groups.is_empty() {
                    continue;
                }
                let bytes = event.approx_bytes();
                for group in groups.iter() {
                    match needs.iter_mut().find(|(g, _, _)| Arc::ptr_eq(g, group)) {
                        Some(need) => {
                            need.1 += 1;
                            need.2 += bytes;
                        }
                        None => needs.push((group.clone(), 1, bytes)),
                    }
                }
            }
            let Some((full, _, _)) = needs
                .iter()
                .find(|(g, n, bytes)| !g.has_room_for(*n, *bytes))
            else {
                return Ok(());
            };
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Err(BrokerError::Full {
                    group: full.name.to_string(),
                });
            }
            // Woken when a consumer takes an event; also every few milliseconds, since a
            // wake-up taken by another waiter that still lacked room is not passed on.
            let pause = deadline.map_or(FULL_POLL, |d| FULL_POLL.min(d - now));
            let notified = full.space_ready.notified();
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    fn settle(&self, delivery: &Delivery) {
        if delivery.from_queue {
            if let Ok(queue) = self.work_queue(&delivery.group) {
                queue.settle();
            }
            return;
        }
        if let Some(group) = self.groups_read().get(&*delivery.group) {
            let mut state = group.lock();
            state.in_flight = state.in_flight.saturating_sub(1);
        }
    }
}

/// One consumer of a memory group or work queue.
pub struct MemoryConsumer(Source);

enum Source {
    Group(Arc<GroupQueue>),
    Queue(Arc<WorkQueue>),
}

impl GroupQueue {
    /// Takes the next item if there is one.
    fn try_pop(&self) -> Result<Option<Delivery>, BrokerError> {
        let mut state = self.lock();
        if state.removed {
            return Err(BrokerError::UnknownGroup {
                group: self.name.to_string(),
            });
        }
        let Some((event, redeliveries, bytes)) = state.items.pop_front() else {
            return Ok(None);
        };
        state.bytes = state.bytes.saturating_sub(bytes);
        state.in_flight += 1;
        let more = !state.items.is_empty();
        drop(state);
        self.space_ready.notify_one();
        if more {
            // Pass the baton: another consumer may be waiting for the next item.
            self.items_ready.notify_one();
        }
        Ok(Some(Delivery {
            event,
            group: self.name.clone(),
            from_queue: false,
            redeliveries,
            tag: String::new(),
        }))
    }

    async fn pop(&self) -> Result<Delivery, BrokerError> {
        loop {
            let notified = self.items_ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(delivery) = self.try_pop()? {
                return Ok(delivery);
            }
            notified.await;
        }
    }
}

impl Consumer for MemoryConsumer {
    async fn next(&mut self) -> Result<Delivery, BrokerError> {
        match &self.0 {
            Source::Group(group) => group.pop().await,
            Source::Queue(queue) => queue.next().await,
        }
    }

    async fn try_next(&mut self) -> Result<Option<Delivery>, BrokerError> {
        match &self.0 {
            Source::Group(group) => group.try_pop(),
            Source::Queue(queue) => queue.try_next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn big(topic: &str) -> Event {
        Event::new(topic, "test", json!({ "blob": "x".repeat(10_000) }))
    }

    #[tokio::test(start_paused = true)]
    async fn a_group_is_full_by_bytes_before_it_is_by_count() {
        let broker = MemoryBroker::new(MemoryOptions {
            group_bytes: 50_000,
            ..MemoryOptions::default()
        });
        broker
            .declare_group(&GroupSpec {
                name: "g".into(),
                patterns: vec![TopicPattern::parse("t").unwrap()],
            })
            .await
            .unwrap();
        let mut accepted = 0;
        while broker.publish(big("t"), Backpressure::Reject).await.is_ok() {
            accepted += 1;
            assert!(accepted < 100, "bytes never bound the group");
        }
        assert!(
            (4..=5).contains(&accepted),
            "{accepted} events of 10 kB in 50 kB"
        );
        // Taking one makes room again.
        let mut consumer = broker.consumer("g").unwrap();
        consumer.next().await.unwrap();
        broker
            .publish(big("t"), Backpressure::Reject)
            .await
            .unwrap();
    }

    /// Reads a store as each event is accepted.
    struct ReadsOnAccept {
        stores: Arc<dyn StoreRead>,
        seen: std::sync::Mutex<Vec<Option<serde_json::Value>>>,
    }

    impl AcceptObserver for ReadsOnAccept {
        fn accepted(&self, event: &Arc<Event>) {
            if event.topic == "charged" {
                let value = self.stores.get("orders", "order:1").unwrap();
                self.seen.lock().unwrap().push(value);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn what_a_commit_emits_is_accepted_after_its_store_writes() {
        let broker = MemoryBroker::new(MemoryOptions::default());
        for (name, topic) in [("charge", "reserved"), ("ship", "charged")] {
            broker
                .declare_group(&GroupSpec {
                    name: name.into(),
                    patterns: vec![TopicPattern::parse(topic).unwrap()],
                })
                .await
                .unwrap();
        }
        let observer = Arc::new(ReadsOnAccept {
            stores: broker.stores().unwrap(),
            seen: Default::default(),
        });
        assert!(broker
            .accept_feed()
            .expect("the memory broker reports what it accepts")
            .observe_accepted(observer.clone()));
        let reserved = Event::new("reserved", "test", json!({}));
        broker
            .publish(reserved, Backpressure::Reject)
            .await
            .unwrap();
        let delivery = broker.consumer("charge").unwrap().next().await.unwrap();
        let effects = Effects {
            publish: vec![Event::new("charged", "test", json!({}))],
            store_writes: vec![crate::store::StoreWrite {
                store: "orders".into(),
                key: "order:1".into(),
                op: crate::store::StoreOp::Set(json!("charged")),
            }],
            ..Effects::default()
        };
        broker.commit(delivery, effects).await.unwrap();
        assert_eq!(*observer.seen.lock().unwrap(), [Some(json!("charged"))]);
    }

    /// A publish waiting for room holds the route it took; when a group of it is removed
    /// meanwhile (a reload renaming it), the event reaches the successor once.
    #[tokio::test(start_paused = true)]
    async fn a_publish_routed_before_a_rename_reaches_the_successor_once() {
        let broker = MemoryBroker::new(MemoryOptions {
            group_capacity: 1,
            ..MemoryOptions::default()
        });
        for name in ["old", "heir"] {
            broker
                .declare_group(&GroupSpec {
                    name: name.into(),
                    patterns: vec![TopicPattern::parse("t").unwrap()],
                })
                .await
                .unwrap();
        }
        let first = Event::new("t", "test", json!(1));
        broker.publish(first, Backpressure::Reject).await.unwrap();
        // Both groups are full: the second publish waits, holding the route [old, heir].
        let waiting = tokio::spawn({
            let broker = broker.clone();
            async move {
                let second = Event::new("t", "test", json!(2));
                broker.publish(second, Backpressure::Wait).await
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the second publish waits for room");
        let removed = broker.remove_group("old", Some("heir")).await.unwrap();
        assert_eq!(
            removed.moved, 1,
            "the first event, which the heir holds already"
        );
        let mut heir = broker.consumer("heir").unwrap();
        let delivery = heir.next().await.unwrap();
        assert_eq!(delivery.event.data, json!(1));
        broker.commit(delivery, Effects::default()).await.unwrap();
        waiting.await.unwrap().unwrap();
        let mut after = Vec::new();
        while let Some(delivery) = heir.try_next().await.unwrap() {
            after.push(delivery.event.data.clone());
            broker.commit(delivery, Effects::default()).await.unwrap();
        }
        assert_eq!(after, [json!(2)], "the second event, once");
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_events_hold_at_most_their_budget() {
        let broker = MemoryBroker::new(MemoryOptions {
            scheduled_bytes: 50_000,
            ..MemoryOptions::default()
        });
        let mut held = 0;
        let refused = loop {
            match broker
                .publish_later(big("t"), Duration::from_secs(60))
                .await
            {
                Ok(()) => held += 1,
                Err(e) => break e,
            }
            assert!(held < 100, "the budget never bound the schedule");
        };
        assert!(
            matches!(refused, BrokerError::OverBudget { .. }),
            "{refused}"
        );
        assert_eq!(broker.scheduled(), held);
        // Once they fall due (nobody subscribes: they are dropped), there is room again.
        tokio::time::sleep(Duration::from_secs(61)).await;
        tokio::task::yield_now().await;
        assert_eq!(broker.scheduled(), 0);
        broker
            .publish_later(big("t"), Duration::from_secs(60))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn the_dead_letter_store_keeps_its_byte_budget() {
        let broker = MemoryBroker::new(MemoryOptions::default());
        let huge = Event::new("dead.x", "test", json!({ "blob": "x".repeat(1 << 20) }));
        for _ in 0..100 {
            broker.store_dead(huge.clone());
        }
        let dead = broker.inner.dead.lock().unwrap();
        assert!(dead.bytes <= DEAD_LETTER_BYTES, "{}", dead.bytes);
        assert!(dead.letters.len() < 100 && !dead.letters.is_empty());
        let counted: usize = dead.letters.iter().map(Event::approx_bytes).sum();
        assert_eq!(dead.bytes, counted);
    }
}

#[cfg(test)]
mod fan_out_order {
    //! An event fanned out to several groups is in all of them before a consumer of any
    //! can react to it: a subscriber of two topics sees the cause before the effect.
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    /// Groups that take both topics: the reactor is very likely ahead of one of them in the
    /// cause's fan-out (the order is a hash map's).
    const WATCHERS: usize = 24;
    /// Groups that take only the cause: they make the fan-out long enough that the reactor,
    /// on the other runtime thread, would otherwise publish its effect into a watcher
    /// before the cause got there.
    const FILLERS: usize = 1500;
    const EVENTS: u64 = 200;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_group_gets_a_cause_before_the_effects_of_another_group_handling_it() {
        let broker = MemoryBroker::new(MemoryOptions::default());
        let spec = |name: String, topics: &[&str]| GroupSpec {
            name,
            patterns: topics
                .iter()
                .map(|t| TopicPattern::parse(t).unwrap())
                .collect(),
        };
        broker
            .declare_group(&spec("reactor".into(), &["cause"]))
            .await
            .unwrap();
        for i in 0..WATCHERS {
            broker
                .declare_group(&spec(format!("watcher{i}"), &["cause", "effect"]))
                .await
                .unwrap();
        }
        for i in 0..FILLERS {
            broker
                .declare_group(&spec(format!("filler{i}"), &["cause"]))
                .await
                .unwrap();
        }
        // The reactor handles each cause on its own task and commits an effect, as a
        // subscriber's worker does.
        let reactor = {
            let broker = broker.clone();
            let mut consumer = broker.consumer("reactor").unwrap();
            tokio::spawn(async move {
                for _ in 0..EVENTS {
                    let delivery = consumer.next().await.unwrap();
                    let n = delivery.event.data["n"].clone();
                    let effects = Effects {
                        publish: vec![Event::new("effect", "test", json!({ "n": n }))],
                        ..Effects::default()
                    };
                    broker.commit(delivery, effects).await.unwrap();
                }
            })
        };
        for n in 0..EVENTS {
            let cause = Event::new("cause", "test", json!({ "n": n }));
            broker.publish(cause, Backpressure::Reject).await.unwrap();
            tokio::task::yield_now().await;
        }
        tokio::time::timeout(Duration::from_secs(60), reactor)
            .await
            .expect("the reactor handles every cause within a minute")
            .unwrap();
        let mut out_of_order = 0;
        for i in 0..WATCHERS {
            let mut consumer = broker.consumer(&format!("watcher{i}")).unwrap();
            let mut seen: HashMap<u64, &str> = HashMap::new();
            while let Some(delivery) = consumer.try_next().await.unwrap() {
                let n = delivery.event.data["n"].as_u64().unwrap();
                match (delivery.event.topic.as_str(), seen.get(&n)) {
                    ("cause", None) => {
                        seen.insert(n, "cause");
                    }
                    ("effect", Some(&"cause")) | ("cause", Some(&"early")) => {
                        seen.insert(n, "effect");
                    }
                    ("effect", None) => {
                        out_of_order += 1;
                        seen.insert(n, "early");
                    }
                    (topic, state) => panic!("watcher{i}: {topic} {n} after {state:?}"),
                }
            }
            assert_eq!(seen.len() as u64, EVENTS, "watcher{i} missed events");
            assert!(
                seen.values().all(|s| *s == "effect"),
                "watcher{i} missed some"
            );
        }
        assert_eq!(
            out_of_order, 0,
            "effects reached groups before their causes"
        );
    }
}
