//! Applying a flow set: the one path from the running generation to the next, and the
//! one path to the first (applying onto nothing). The `FlowDiff` decides; this module
//! acts on it in phases, each of which the next relies on:
//!
//! 1. declare what everything else needs: the wire format, every queue, and the
//!    generation's settings (queues, stores, topics, max hops, retention);
//! 2. stop the subscribers, relays and chain trackers removed or changed, and wait for
//!    each to finish the event it holds;
//! 3. declare the consumer groups (before old ones go, so nothing waiting is lost);
//! 4. move the backlog of what went to its successor, or drop it and say so;
//! 5. hand subscribers that keep running their code (new, or the same under the new
//!    generation), then start what is added or changed: subscribers, chain trackers,
//!    relays;
//! 6. producers last, so ingest resumes onto a flow that is whole.
//!
//! A phase that fails leaves what was applied so far: the caller restores the previous
//! set through this same path (see `reload`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::warn;

use crate::broker::{Broker, GroupSpec, QueueSpec, WireSpec};
use crate::flow::diff::{CodeChanges, ComponentKey, FlowDiff, Kind};
use crate::flow::model::{FlowSet, ProducerKind, SubscriberInput, TopicMode};
use crate::pattern::TopicPattern;
use crate::runtime::components::{handler_code, ComponentConfig, Running};
use crate::runtime::FlowView;
use crate::runtime::{chains, relay, Prepared, ReloadOutcome, Runtime, RuntimeError};

impl<B: Broker> Runtime<B> {
    /// Applies `next` as `generation`, touching only what the diff from the running set
    /// names.
    pub(super) async fn apply_as(
        &mut self,
        next: Prepared,
        generation: u64,
    ) -> Result<ReloadOutcome, RuntimeError> {
        let started = Instant::now();
        let code = CodeChanges {
            imports: self.imports_changed(&next),
            unsure: std::mem::replace(&mut self.code_unsure, true),
        };
        let previous = self.running_view();
        let diff = FlowDiff::between(previous.as_ref(), &next.flows, &self.selection, &code);
        let mut outcome = ReloadOutcome::of(&diff, generation);
        let flows = next.flows.clone();

        self.declare(&flows).await?;
        let stopped = self.stop_components(&diff).await;
        let groups = self.declare_groups(&flows).await?;
        self.move_backlogs(&diff, &stopped, &groups, &flows, &mut outcome)
            .await?;
        self.send_code(&diff, &next, generation);
        self.start_components(&diff, &next, generation).await?;
        // Counted before the producers restart, so that a restarted HTTP producer never
        // answers with the generation it replaces (a failed restart rolls back, and the
        // rollback counts the previous one again).
        self.shared
            .status
            .generation
            .store(generation, Ordering::SeqCst);
        self.shared.flows.send_replace(Arc::new(FlowView {
            generation,
            flows: next.flows.clone(),
            files: next.files.clone().into(),
        }));
        self.restart_producers(&diff, &next).await?;

        self.warn_exposed_without_token();
        self.code_unsure = false;
        outcome.took_ms = started.elapsed().as_secs_f64() * 1000.0;
        self.current = Some(next);
        self.set_last_reload(outcome.clone());
        Ok(outcome)
    }

    /// What runs now, as a flow set for the next one to be diffed against: the configs
    /// of the running components, and the queues, topics and stores of the set last
    /// applied. After an apply that failed half-way this is what actually runs, which is
    /// what the rollback must undo. `None` while nothing was ever started.
    fn running_view(&self) -> Option<FlowSet> {
        if self.current.is_none() && self.running.is_empty() {
            return None;
        }
        let applied = self.current.as_ref().map(|c| &*c.flows);
        let mut view = FlowSet {
            queues: applied.map(|f| f.queues.clone()).unwrap_or_default(),
            topics: applied.map(|f| f.topics.clone()).unwrap_or_default(),
            stores: applied.map(|f| f.stores.clone()).unwrap_or_default(),
            ..FlowSet::default()
        };
        for (key, running) in &self.running {
            let name = key.name.clone();
            match running.config.clone() {
                ComponentConfig::Subscriber(c) => {
                    view.subscribers.insert(name, c);
                }
                ComponentConfig::Relay(c) => {
                    view.relays.insert(name, c);
                }
                ComponentConfig::Chain(c) => {
                    view.chains.insert(name, c);
                }
                ComponentConfig::Producer(c) => {
                    view.producers.insert(name, c);
                }
            }
        }
        Some(view)
    }

    /// The subscribers, relays and producers of `next` whose script imports a module
    /// whose text changed since the running set.
    fn imports_changed(&self, next: &Prepared) -> BTreeSet<ComponentKey> {
        let modules = self.changed_modules(next);
        let flows = &next.flows;
        let scripted = flows.subscribers.keys().map(|n| (Kind::Subscriber, n));
        let scripted = scripted
            .chain(flows.relays.keys().map(|n| (Kind::Relay, n)))
            .chain(flows.producers.keys().map(|n| (Kind::Producer, n)));
        scripted
            .map(|(kind, name)| ComponentKey::new(kind, name.as_str()))
            .filter(|key| {
                next.scripts
                    .by_component
                    .get(&key.to_string())
                    .is_some_and(|s| s.imports.iter().any(|i| modules.contains(i)))
            })
            .collect()
    }

    /// Imported module files whose text differs between the running set and `next`.
    fn changed_modules(&self, next: &Prepared) -> BTreeSet<PathBuf> {
        match &self.current {
            None => next.module_texts.keys().cloned().collect(),
            Some(current) => current
                .module_texts
                .iter()
                .filter(|(path, text)| next.module_texts.get(*path) != Some(*text))
                .map(|(path, _)| path.clone())
                .chain(
                    next.module_texts
                        .keys()
                        .filter(|p| !current.module_texts.contains_key(*p))
                        .cloned(),
                )
                .collect(),
        }
    }

    /// Phase 1: the article's wire format first (groups and queues depend on it), then
    /// every queue (before anything that feeds or reads one starts), then the settings
    /// components and the HTTP API read from the running generation.
    async fn declare(&self, flows: &FlowSet) -> Result<(), RuntimeError> {
        let broker = &self.shared.broker;
        let wire = wire_spec(flows);
        if let Some(carrier) = broker.wire() {
            carrier.declare_wire(&wire);
        } else if !wire.is_empty() {
            warn!(
                pubsub_topics = ?wire.pubsub,
                topic_mode_pubsub = wire.pubsub_by_default,
                list_queues = ?wire.lists.keys().collect::<Vec<_>>(),
                "`mode = \"pubsub\"` topics and `list` queues are Redis wire formats; this broker ignores them"
            );
        }
        for (name, queue) in &flows.queues {
            let spec = QueueSpec {
                name: name.clone(),
                capacity: queue.capacity,
                poll: queue.poll,
            };
            broker.declare_queue(&spec).await?;
        }
        let shared = &self.shared;
        shared.queues.send_replace(Arc::new(flows.queues.clone()));
        shared.stores.send_replace(Arc::new(flows.stores.clone()));
        shared
            .declared_stores
            .send_replace(Arc::new(flows.stores.keys().cloned().collect()));
        shared.topics.send_replace(Arc::new(flows.topics.clone()));
        shared.schemas.send_replace(Arc::new(flows.event_schemas()));
        shared.max_hops.store(flows.max_hops(), Ordering::Relaxed);
        // Pub/sub topics have no stream to trim.
        let retention: Vec<(String, Duration)> = flows
            .topics
            .iter()
            .filter(|(topic, _)| flows.topic_mode(topic) == TopicMode::Stream)
            .filter_map(|(topic, config)| Some((topic.clone(), config.retention?)))
            .collect();
        if let Some(kept) = broker.retention() {
            kept.set_retention(&retention);
        }
        if let Some(placement) = broker.placement() {
            let placed: Vec<(String, usize)> = flows
                .topics
                .iter()
                .filter_map(|(topic, config)| Some((topic.clone(), config.shard?)))
                .collect();
            placement.place_topics(&placed);
        }
        Ok(())
    }

    /// Phase 2: stops every running subscriber, relay and chain tracker that the diff
    /// changes or removes, all at once, and waits until each has finished what it held.
    /// A chain stops feeding on steps at once; a removed one's figures go too.
    async fn stop_components(&mut self, diff: &FlowDiff) -> Vec<(ComponentKey, Running)> {
        let mut stopping = Vec::new();
        for kind in [Kind::Subscriber, Kind::Relay, Kind::Chain] {
            for key in diff.changed_or_removed(kind) {
                if kind == Kind::Chain {
                    if diff.removed.contains(key) {
                        self.shared.metrics.forget_chain(&key.name);
                    }
                    self.shared.steps.unregister(&key.name);
                }
                if let Some(running) = self.running.remove(key) {
                    running.stop();
                    stopping.push((key.clone(), running));
                }
            }
        }
        for (_, running) in &stopping {
            running.stopped().await;
        }
        stopping
    }

    /// Phase 3: declares every consumer group of `flows` with its patterns.
    async fn declare_groups(
        &self,
        flows: &FlowSet,
    ) -> Result<BTreeMap<String, Vec<TopicPattern>>, RuntimeError> {
        let groups = self.group_patterns(flows);
        for (group, patterns) in &groups {
            let spec = GroupSpec {
                name: group.clone(),
                patterns: patterns.clone(),
            };
            self.shared.broker.declare_group(&spec).await?;
        }
        Ok(groups)
    }

    /// The patterns each consumer group receives: the union over its subscribers, plus one
    /// group per relay and, on a broker that keeps chain state, one per chain.
    fn group_patterns(&self, flows: &FlowSet) -> BTreeMap<String, Vec<TopicPattern>> {
        let mut groups: BTreeMap<String, Vec<TopicPattern>> = BTreeMap::new();
        let subscribers = flows
            .subscribers
            .values()
            .filter(|c| self.selection.runs_subscriber(c));
        for config in subscribers {
            if let SubscriberInput::Topics(patterns) = &config.input {
                let entry = groups.entry(config.group.clone()).or_default();
                for p in patterns {
                    if !entry.contains(p) {
                        entry.push(p.clone());
                    }
                }
            }
        }
        for (name, relay) in &flows.relays {
            groups.insert(relay::group_name(name), vec![relay.from.clone()]);
        }
        // Elsewhere the step registry feeds the trackers (see `chains`).
        let chain_groups = self.shared.broker.chains().is_some();
        for (name, chain) in flows.chains.iter().filter(|_| chain_groups) {
            let steps = chain
                .steps
                .iter()
                .filter_map(|s| TopicPattern::parse(s).ok())
                .collect();
            groups.insert(chains::group_name(name), steps);
        }
        groups
    }

    /// Phase 4: what waits for a component that went moves to its successor (the same
    /// subscriber under a new group, or whichever component says `renamed_from` the old
    /// name) or is dropped, and the outcome says which.
    async fn move_backlogs(
        &self,
        diff: &FlowDiff,
        stopped: &[(ComponentKey, Running)],
        groups: &BTreeMap<String, Vec<TopicPattern>>,
        flows: &FlowSet,
        outcome: &mut ReloadOutcome,
    ) -> Result<(), RuntimeError> {
        let broker = &self.shared.broker;
        let runs = |name: &str| {
            flows
                .subscribers
                .get(name)
                .filter(|c| self.selection.runs_subscriber(c))
        };
        // A stopped subscriber's group that no subscriber reads any more.
        let mut gone = BTreeSet::new();
        for (key, running) in stopped {
            let ComponentConfig::Subscriber(config) = &running.config else {
                continue;
            };
            gone.insert(key.name.as_str());
            if groups.contains_key(&config.group) {
                continue;
            }
            let heir = match runs(&key.name) {
                Some(_) => Some(key),
                None => diff.successor(key),
            };
            let heir_group = heir.and_then(|h| runs(&h.name)).map(|c| c.group.as_str());
            let removed = broker.remove_group(&config.group, heir_group).await?;
            outcome.backlog(key, heir, removed);
        }
        for kind in [Kind::Relay, Kind::Chain, Kind::Queue] {
            for key in diff.removed.iter().filter(|k| k.kind == kind) {
                let heir = diff.successor(key);
                let removed = match kind {
                    Kind::Relay => {
                        let to = heir.map(|h| relay::group_name(&h.name));
                        broker
                            .remove_group(&relay::group_name(&key.name), to.as_deref())
                            .await?
                    }
                    Kind::Chain => {
                        broker
                            .remove_group(&chains::group_name(&key.name), None)
                            .await?
                    }
                    _ => {
                        let to = heir.map(|h| h.name.as_str());
                        broker.remove_queue(&key.name, to).await?
                    }
                };
                outcome.backlog(key, heir, removed);
            }
        }
        // A rename whose former name never ran here (the first generation): a durable
        // broker may still hold what an earlier run left under that name, and it moves
        // too (a no-op on the memory broker).
        for kind in [Kind::Subscriber, Kind::Relay, Kind::Queue] {
            let renames = diff
                .renamed
                .iter()
                .filter(|(old, _)| old.kind == kind && !diff.removed.contains(*old));
            for (old, new) in renames {
                let removed = match kind {
                    Kind::Subscriber => {
                        let Some(config) = runs(&new.name) else {
                            continue;
                        };
                        if groups.contains_key(&old.name) || gone.contains(old.name.as_str()) {
                            continue;
                        }
                        broker.remove_group(&old.name, Some(&config.group)).await?
                    }
                    Kind::Relay => {
                        broker
                            .remove_group(
                                &relay::group_name(&old.name),
                                Some(&relay::group_name(&new.name)),
                            )
                            .await?
                    }
                    _ => broker.remove_queue(&old.name, Some(&new.name)).await?,
                };
                outcome.backlog(old, Some(new), removed);
            }
        }
        Ok(())
    }

    /// Phase 5, first half: every subscriber that keeps running gets the generation's
    /// code: the new code where the diff swaps it, else the same code under the new
    /// generation number.
    fn send_code(&mut self, diff: &FlowDiff, next: &Prepared, generation: u64) {
        let subscribers = self
            .running
            .iter_mut()
            .filter(|(key, _)| key.kind == Kind::Subscriber);
        for (key, running) in subscribers {
            if !diff.swapped.contains(key) {
                running.keep_code(generation);
                continue;
            }
            running.send_code(handler_code(next, key, generation));
            if let Some(config) = next.flows.subscribers.get(&key.name) {
                running.config = ComponentConfig::Subscriber(config.clone());
            }
        }
    }

    /// Phase 5, second half: starts the subscribers, chain trackers and relays the diff
    /// adds or changes, in that order.
    async fn start_components(
        &mut self,
        diff: &FlowDiff,
        next: &Prepared,
        generation: u64,
    ) -> Result<(), RuntimeError> {
        for kind in [Kind::Subscriber, Kind::Chain, Kind::Relay] {
            for key in diff.added_or_changed(kind) {
                if let Some(running) = self.start(key, next, generation).await? {
                    self.running.insert(key.clone(), running);
                }
            }
        }
        Ok(())
    }

    /// Phase 6: producers removed or changed stop one at a time, then those added or
    /// changed start. `--listen` goes to the first HTTP producer started, `--token` to
    /// every one.
    async fn restart_producers(
        &mut self,
        diff: &FlowDiff,
        next: &Prepared,
    ) -> Result<(), RuntimeError> {
        for key in diff.changed_or_removed(Kind::Producer) {
            if let Some(producer) = self.running.remove(key) {
                producer.stop();
                producer.stopped().await;
                self.http_addrs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&key.name);
            }
        }
        let mut first_http = true;
        for key in diff.added_or_changed(Kind::Producer) {
            let Some(declared) = next.flows.producers.get(&key.name) else {
                continue;
            };
            let mut config = declared.clone();
            if let ProducerKind::Http(http) = &mut config.kind {
                if let (Some(listen), true) = (&self.options.listen, first_http) {
                    http.listen = listen.clone();
                    first_http = false;
                }
                if let Some(token) = &self.options.token {
                    http.token = Some(token.clone());
                }
            }
            let running = self
                .start_producer(&key.name, config, declared.clone(), next)
                .await?;
            self.running.insert(key.clone(), running);
        }
        Ok(())
    }

    /// Warns about every HTTP producer that listens on more than loopback without a
    /// token: anyone who can reach it may publish, replay dead letters and reload. Said at
    /// start and again on every reload that keeps it so.
    fn warn_exposed_without_token(&self) {
        let addrs = self.http_addrs.lock().unwrap_or_else(|e| e.into_inner());
        for (key, running) in &self.running {
            let ComponentConfig::Producer(producer) = &running.config else {
                continue;
            };
            let ProducerKind::Http(http) = &producer.kind else {
                continue;
            };
            let Some(addr) = addrs.get(&key.name) else {
                continue;
            };
            if !addr.ip().is_loopback() && http.token.is_none() && self.options.token.is_none() {
                warn!(
                    producer = %key.name,
                    %addr,
                    "the HTTP API listens beyond this machine without a token: anyone who reaches it can publish, replay dead letters and reload; set `token` on the producer, or pass --token or EDAFLOW_TOKEN"
                );
            }
        }
    }
}

/// Which topics and queues use the article's wire format (Redis pub/sub, plain lists).
pub fn wire_spec(flows: &FlowSet) -> WireSpec {
    let declared = |mode: TopicMode| {
        flows
            .topics
            .iter()
            .filter(move |(_, t)| t.mode_set && t.mode == mode)
            .map(|(name, _)| name.clone())
            .collect()
    };
    WireSpec {
        pubsub_by_default: flows.default_topic_mode() == TopicMode::Pubsub,
        pubsub: declared(TopicMode::Pubsub),
        streams: declared(TopicMode::Stream),
        lists: flows
            .queues
            .iter()
            .filter_map(|(name, q)| Some((name.clone(), q.list.clone()?)))
            .collect(),
    }
}
