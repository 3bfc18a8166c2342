//! Checks across the whole flow set, once every file is read: merging components by name
//! (duplicates are errors), queue references, chain links and the topic warnings ("emitted
//! but never consumed", "consumed but never produced").
//!
//! Per-value checks belong to `sections`; this module only sees names and references. What
//! needs the handler scripts too (the CQRS lint) is `flow::lint`, run once they are compiled.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::flow::diagnostic::{FlowError, FlowWarning, Suggestion};
use crate::flow::load::findings::{Findings, Located, TopicRefs};
use crate::flow::load::sections::{Component, RawFlowFile};
use crate::flow::model::{FlowSet, SubscriberInput};

/// Merges the files into one set; a name declared twice in one section, in two files, is an
/// error labelled in the second file. `shown` names each file for messages.
pub(super) fn merge(files: Vec<RawFlowFile>, shown: &[String], found: &mut Findings) -> FlowSet {
    let mut set = FlowSet::default();
    let mut producers = Vec::new();
    let mut subscribers = Vec::new();
    let mut queues = Vec::new();
    let mut relays = Vec::new();
    let mut chains = Vec::new();
    let mut topics = Vec::new();
    let mut stores = Vec::new();
    for file in files {
        set.files.push(file.flow);
        producers.extend(file.producers);
        subscribers.extend(file.subscribers);
        queues.extend(file.queues);
        relays.extend(file.relays);
        chains.extend(file.chains);
        topics.extend(file.topics);
        stores.extend(file.stores);
        set.tests.extend(file.tests);
    }
    let declared_queues: BTreeSet<String> = queues.iter().map(|q| q.name.value.clone()).collect();
    found.refs.store_names = stores.iter().map(|c| c.name.clone()).collect();
    set.producers = by_name("producers", producers, shown, found);
    set.subscribers = by_name("subscribers", subscribers, shown, found);
    set.queues = by_name("queues", queues, shown, found);
    set.relays = by_name("relays", relays, shown, found);
    set.chains = by_name("chains", chains, shown, found);
    set.topics = by_name("topics", topics, shown, found);
    set.stores = by_name("stores", stores, shown, found);
    check_queues(&declared_queues, found);
    check_renames(&set, found);
    check_chains(&set, found);
    set
}

/// Every step of a chain must be reachable from the one before: some subscriber that
/// consumes the earlier topic declares the later one in `emits` (directly, or through a
/// relay into a queue whose worker emits it). A broken link is labelled at the later step.
fn check_chains(set: &FlowSet, found: &mut Findings) {
    let steps = std::mem::take(&mut found.refs.chain_steps);
    for (chain, i, step) in &steps {
        if *i == 0 {
            continue;
        }
        let Some(config) = set.chains.get(chain) else {
            continue;
        };
        let Some(previous) = config.steps.get(i - 1) else {
            continue;
        };
        if reachable(set, previous, &step.value) {
            continue;
        }
        let emitters: Vec<String> = set
            .subscribers
            .iter()
            .filter(|(_, s)| s.emits.contains(&step.value))
            .map(|(name, _)| name.clone())
            .collect();
        found.push(
            step.file,
            step.span.offset(),
            FlowError::BrokenChainLink {
                chain: chain.clone(),
                from: previous.clone(),
                to: step.value.clone(),
                emitters: if emitters.is_empty() {
                    "no subscriber declares it in `emits`".to_owned()
                } else {
                    format!(
                        "it is emitted by {}, which do not consume `{previous}`",
                        emitters.join(", ")
                    )
                },
                src: step.src.clone(),
                span: step.span,
            },
        );
    }
    found.refs.chain_steps = steps;
}

/// Does some handler of `from` declare that it emits `to`?
fn reachable(set: &FlowSet, from: &str, to: &str) -> bool {
    let consumes_topic = |input: &SubscriberInput| match input {
        SubscriberInput::Topics(patterns) => patterns.iter().any(|p| p.matches(from)),
        SubscriberInput::Queue(_) => false,
    };
    let relayed_queues: Vec<&str> = set
        .relays
        .values()
        .filter(|r| r.from.matches(from))
        .map(|r| r.to.as_str())
        .collect();
    set.subscribers.values().any(|s| {
        let reads = consumes_topic(&s.input)
            || matches!(&s.input, SubscriberInput::Queue(q) if relayed_queues.contains(&q.as_str()));
        reads && s.emits.iter().any(|e| e == to)
    })
}

/// Collects one section's components, in file order, reporting repeated names.
fn by_name<T>(
    section: &'static str,
    components: Vec<Component<T>>,
    shown: &[String],
    found: &mut Findings,
) -> BTreeMap<String, T> {
    let mut first_file: HashMap<String, usize> = HashMap::new();
    let mut configs = BTreeMap::new();
    for component in components {
        let name = component.name;
        if let Some(&first) = first_file.get(&name.value) {
            let offset = name.span.offset();
            found.push(
                name.file,
                offset,
                FlowError::DuplicateName {
                    section,
                    name: name.value,
                    first_file: shown.get(first).cloned().unwrap_or_default(),
                    src: name.src,
                    span: name.span,
                },
            );
            continue;
        }
        first_file.insert(name.value.clone(), name.file);
        if let Some(config) = component.config {
            configs.insert(name.value, config);
        }
    }
    configs
}

/// A `renamed_from` must name a component that is gone (else two would share a backlog),
/// and each former name may be claimed by one component per section.
fn check_renames(set: &FlowSet, found: &mut Findings) {
    let renames = std::mem::take(&mut found.refs.renames);
    let mut claimed: HashMap<(&str, &str), &str> = HashMap::new();
    for (section, name, old) in &renames {
        let declared = match *section {
            "subscribers" => set.subscribers.contains_key(&old.value),
            "queues" => set.queues.contains_key(&old.value),
            _ => set.relays.contains_key(&old.value),
        };
        let error = if declared {
            Some(FlowError::RenamedFromDeclared {
                section,
                name: name.clone(),
                old: old.value.clone(),
                src: old.src.clone(),
                span: old.span,
            })
        } else {
            claimed
                .insert((section, &old.value), name)
                .map(|first| FlowError::RenamedTwice {
                    section,
                    name: name.clone(),
                    first: first.to_owned(),
                    old: old.value.clone(),
                    src: old.src.clone(),
                    span: old.span,
                })
        };
        if let Some(error) = error {
            found.push(old.file, old.span.offset(), error);
        }
    }
    found.refs.renames = renames;
}

/// Every `queue = "…"` and relay `to = "…"` must name a declared queue.
fn check_queues(declared: &BTreeSet<String>, found: &mut Findings) {
    let known: Vec<&String> = declared.iter().collect();
    let used = std::mem::take(&mut found.refs.queues_used);
    for queue in &used {
        if declared.contains(&queue.value) {
            continue;
        }
        found.push(
            queue.file,
            queue.span.offset(),
            FlowError::UnknownQueue {
                queue: queue.value.clone(),
                help: Box::new(Suggestion::new("queue", &queue.value, &known)),
                src: queue.src.clone(),
                span: queue.span,
            },
        );
    }
    found.refs.queues_used = used;
}

/// The topic warnings, one per topic, at its first mention (in file and source order).
pub(super) fn warnings(refs: &TopicRefs) -> Vec<FlowWarning> {
    let mut warnings = Vec::new();
    let mut warned = BTreeSet::new();
    for topic in ordered(&refs.emitted) {
        let consumed = refs.consumed.iter().any(|p| p.value.matches(&topic.value));
        if !consumed && warned.insert(topic.value.as_str()) {
            warnings.push(FlowWarning::NeverConsumed {
                topic: topic.value.clone(),
                src: topic.src.clone(),
                span: topic.span,
            });
        }
    }
    // HTTP ingest can publish to any topic, so with it nothing is "never produced".
    if refs.has_http {
        return warnings;
    }
    let produced: BTreeSet<&str> = refs
        .emitted
        .iter()
        .map(|t| t.value.as_str())
        .chain(refs.produced_quietly.iter().map(String::as_str))
        .collect();
    let mut warned = BTreeSet::new();
    for pattern in ordered(&refs.consumed) {
        let topic = pattern.value.as_str();
        if pattern.value.is_literal() && !produced.contains(topic) && warned.insert(topic) {
            warnings.push(FlowWarning::NeverProduced {
                topic: topic.to_owned(),
                src: pattern.src.clone(),
                span: pattern.span,
            });
        }
    }
    warnings
}

/// An edge of the emit graph: the node it leads to, and the `emits` entry it comes from
/// (none for a relay's edge into its queue's readers).
type Step<'a> = (String, Option<&'a Located<String>>);
/// Each node's outgoing edges.
type Edges<'a> = BTreeMap<String, Vec<Step<'a>>>;

/// One warning per ring of subscribers (and relays) whose declared outputs feed each
/// other: a subscriber emits a topic that another reads, directly or through a relay
/// into the queue it reads, and so on back to the first. Labelled at the `emits` entry
/// that starts the ring, at the first subscriber of the ring in file order.
pub(super) fn emit_loops(set: &FlowSet, refs: &TopicRefs) -> Vec<FlowWarning> {
    // Nodes: subscribers and relays, by name; relays as `relays.NAME` so names never clash.
    let reads = |subscriber: &str, topic: &str| -> bool {
        set.subscribers
            .get(subscriber)
            .is_some_and(|s| match &s.input {
                SubscriberInput::Topics(patterns) => patterns.iter().any(|p| p.matches(topic)),
                SubscriberInput::Queue(_) => false,
            })
    };
    let mut next: Edges<'_> = BTreeMap::new();
    for (from, topic) in &refs.subscriber_emits {
        let out = next.entry(from.clone()).or_default();
        for to in set.subscribers.keys().filter(|to| reads(to, &topic.value)) {
            out.push((to.clone(), Some(topic)));
        }
        for (relay, config) in &set.relays {
            if config.from.matches(&topic.value) {
                out.push((format!("relays.{relay}"), Some(topic)));
            }
        }
    }
    for (relay, config) in &set.relays {
        let out = next.entry(format!("relays.{relay}")).or_default();
        for (to, sub) in &set.subscribers {
            if matches!(&sub.input, SubscriberInput::Queue(q) if *q == config.to) {
                out.push((to.clone(), None));
            }
        }
    }
    let mut warnings = Vec::new();
    let mut in_a_ring: BTreeSet<String> = BTreeSet::new();
    // Subscribers in file order, then source order: the ring is reported from the first.
    let mut starts: Vec<(&String, &Located<String>)> =
        refs.subscriber_emits.iter().map(|(s, t)| (s, t)).collect();
    starts.sort_by_key(|(_, t)| (t.file, t.span.offset()));
    for (start, _) in starts {
        if in_a_ring.contains(start) {
            continue;
        }
        let Some(path) = ring_from(start, &next) else {
            continue;
        };
        let first_topic = path[0].1;
        in_a_ring.extend(path.iter().map(|(node, _)| node.clone()));
        let mut names: Vec<String> = path.iter().map(|(node, _)| format!("`{node}`")).collect();
        names.push(format!("`{start}`"));
        if let Some(topic) = first_topic {
            warnings.push(FlowWarning::EmitLoop {
                ring: names.join(" -> "),
                max_hops: set.max_hops(),
                src: topic.src.clone(),
                span: topic.span,
            });
        }
    }
    warnings
}

/// A shortest path of edges from `start` back to `start` (each step: the node left and the
/// emit that leaves it), if there is one. Breadth-first, without recursion.
fn ring_from<'a>(start: &str, next: &Edges<'a>) -> Option<Vec<Step<'a>>> {
    // node -> (the node before it, the emit between them)
    let mut came_from: HashMap<&str, (&str, Option<&'a Located<String>>)> = HashMap::new();
    let mut frontier = std::collections::VecDeque::from([start]);
    while let Some(node) = frontier.pop_front() {
        for (to, via) in next.get(node).into_iter().flatten() {
            if to == start {
                let mut path = vec![(node.to_owned(), *via)];
                let mut at = node;
                while at != start {
                    let (before, via) = came_from[at];
                    path.push((before.to_owned(), via));
                    at = before;
                }
                path.reverse();
                return Some(path);
            }
            if !came_from.contains_key(to.as_str()) {
                came_from.insert(to, (node, *via));
                frontier.push_back(to);
            }
        }
    }
    None
}

/// References sorted by file, then by position in the file.
fn ordered<T>(refs: &[Located<T>]) -> Vec<&Located<T>> {
    let mut sorted: Vec<_> = refs.iter().collect();
    sorted.sort_by_key(|r| (r.file, r.span.offset()));
    sorted
}
