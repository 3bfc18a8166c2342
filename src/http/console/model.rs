//! `GET /console/model`: the running flow set as the console draws it: a node per
//! component and topic, an edge per declared wire, the chains' steps, and the files the
//! set was loaded from, each named by a file id.
//!
//! `model_of` is pure (a `FlowView` and the roots in, the model out). Edges are what the
//! flow files declare, as `flow::graph` draws them: `emits` for handler outputs, relays
//! into their queue, and what a script's text shows it uses (`store("…")`,
//! `enqueue("…")`). An `http` producer publishes to every topic that something reads and
//! nothing declared produces (the topics its clients feed). Settings are the components'
//! own, durations written as in flow files (`"5s"`); a token is never part of them.
//!
//! A file id is `R/relative/path`: `R` the index of the root (flow folder) the file is
//! in, the path relative to it with `/` separators. Files outside every root have no id
//! and are not listed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::files::file_id;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Serialize;
use serde_json::{json, Value};

use crate::broker::Broker;
use crate::duration::format_duration;
use crate::flow::graph::{store_use, StoreUse};
use crate::flow::model::{
    FlowSet, ProducerKind, ScriptSource, SubscriberInput, TopicKind, TopicMode,
};
use crate::http::{json_response, ApiError, ApiState};
use crate::runtime::FlowView;

/// The graph model of one generation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Model {
    pub generation: u64,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    pub chains: Vec<Chain>,
    pub files: Vec<FileEntry>,
}

/// A component or a topic.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Node {
    /// `KIND_PLURAL.NAME`, e.g. `subscribers.reserve`.
    pub id: String,
    pub kind: &'static str,
    pub name: String,
    /// The flow (`[flow] name`) that declares it; `None` for a topic only referred to.
    pub flow: Option<String>,
    /// The id of the flow file that declares it.
    pub file: Option<String>,
    pub settings: Value,
    /// The id of its script file (`None`: no script, an inline one, or outside the roots).
    pub script: Option<String>,
}

/// A declared wire between two nodes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub(crate) struct Edge {
    pub from: String,
    pub to: String,
    pub kind: &'static str,
}

/// A chain and its steps.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Chain {
    pub name: String,
    pub steps: Vec<ChainStep>,
    /// The whole chain's deadline, from its first step to its last.
    pub timeout_ms: Option<u64>,
    pub on_timeout: Option<String>,
}

/// One step of a chain: the chain's deadline is on its last step.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct ChainStep {
    pub topic: String,
    pub timeout_ms: Option<u64>,
}

/// A file the generation was loaded from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct FileEntry {
    pub id: String,
    /// `flow` (`.toml`) or `script` (`.rhai`: handlers and imported modules).
    pub kind: &'static str,
}

/// The answer of `GET /console/model`: the model and who serves it.
#[derive(Serialize)]
struct ModelAnswer {
    process: ProcessRef,
    #[serde(flatten)]
    model: Model,
}

#[derive(Serialize)]
struct ProcessRef {
    id: String,
    broker: &'static str,
}

/// `GET /console/model`.
pub(super) async fn model<B: Broker>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.authorize(&headers)?;
    let view = state.runtime.flows.borrow().clone();
    let answer = ModelAnswer {
        process: ProcessRef {
            id: state.runtime.status.this_process().id,
            broker: state.runtime.broker.kind(),
        },
        model: model_of(&view, &state.runtime.roots),
    };
    Ok(json_response(
        StatusCode::OK,
        serde_json::to_string(&answer).unwrap_or_default(),
    ))
}

/// The graph model of `view`, with file ids under `roots`.
pub(crate) fn model_of(view: &FlowView, roots: &[PathBuf]) -> Model {
    let mut builder = Builder {
        flows: &view.flows,
        roots,
        nodes: BTreeMap::new(),
        edges: BTreeSet::new(),
    };
    builder.build();
    let flows = &view.flows;
    let chains = flows
        .chains
        .iter()
        .map(|(name, chain)| {
            let timeout_ms = chain.timeout.map(millis);
            let last = chain.steps.len().saturating_sub(1);
            Chain {
                name: name.clone(),
                steps: chain
                    .steps
                    .iter()
                    .enumerate()
                    .map(|(i, topic)| ChainStep {
                        topic: topic.clone(),
                        timeout_ms: timeout_ms.filter(|_| i == last && i > 0),
                    })
                    .collect(),
                timeout_ms,
                on_timeout: chain.on_timeout.clone(),
            }
        })
        .collect();
    let mut files: Vec<FileEntry> = view
        .files
        .iter()
        .filter_map(|path| {
            let kind = match path.extension().and_then(|e| e.to_str()) {
                Some("toml") => "flow",
                Some("rhai") => "script",
                _ => return None,
            };
            Some(FileEntry {
                id: file_id(roots, path)?,
                kind,
            })
        })
        .collect();
    files.sort_by(|a, b| a.id.cmp(&b.id));
    files.dedup();
    Model {
        generation: view.generation,
        nodes: builder.nodes.into_values().collect(),
        edges: builder.edges.into_iter().collect(),
        chains,
        files,
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn duration(d: std::time::Duration) -> Value {
    Value::String(format_duration(d))
}

fn optional_duration(d: Option<std::time::Duration>) -> Value {
    d.map_or(Value::Null, duration)
}

/// Collects the nodes (by id) and the edges.
struct Builder<'a> {
    flows: &'a FlowSet,
    roots: &'a [PathBuf],
    nodes: BTreeMap<String, Node>,
    edges: BTreeSet<Edge>,
}

impl Builder<'_> {
    fn build(&mut self) {
        self.producers();
        self.subscribers();
        self.queues();
        self.relays();
        self.chains();
        self.stores();
        self.declared_topics();
        self.ingest();
    }

    /// Adds a component node declared in file `file` of the set.
    fn component(
        &mut self,
        kind: &'static str,
        name: &str,
        file: usize,
        settings: Value,
        script: Option<&ScriptSource>,
    ) -> String {
        let id = format!("{kind}s.{name}");
        let declared = self.flows.files.get(file);
        let node = Node {
            id: id.clone(),
            kind,
            name: name.to_owned(),
            flow: declared.map(|f| f.name.clone()),
            file: declared.and_then(|f| file_id(self.roots, &f.path)),
            settings,
            script: script.and_then(|s| file_id(self.roots, &s.path)),
        };
        self.nodes.insert(id.clone(), node);
        id
    }

    /// The node of a topic (or topic pattern), added bare if it is not there yet
    /// (`declared_topics` fills in the declared ones).
    fn topic(&mut self, name: &str) -> String {
        let id = format!("topics.{name}");
        self.nodes.entry(id.clone()).or_insert_with(|| Node {
            id: id.clone(),
            kind: "topic",
            name: name.to_owned(),
            flow: None,
            file: None,
            settings: json!({ "declared": false, "mode": mode_name(self.flows.topic_mode(name)) }),
            script: None,
        });
        id
    }

    fn edge(&mut self, from: &str, to: &str, kind: &'static str) {
        self.edges.insert(Edge {
            from: from.to_owned(),
            to: to.to_owned(),
            kind,
        });
    }

    fn producers(&mut self) {
        for (name, producer) in &self.flows.producers {
            let (settings, topic, script) = match &producer.kind {
                ProducerKind::Http(http) => (
                    json!({
                        "kind": "http",
                        "listen": http.listen,
                        "token_set": http.token.is_some(),
                        "body_limit": http.body_limit,
                        "header_timeout": duration(http.header_timeout),
                        "body_timeout": duration(http.body_timeout),
                        "idle_timeout": duration(http.idle_timeout),
                        "max_connections": http.max_connections,
                    }),
                    None,
                    None,
                ),
                ProducerKind::Interval(interval) => (
                    json!({
                        "kind": "interval",
                        "every": duration(interval.every),
                        "topic": interval.topic,
                        "data": interval.data,
                    }),
                    interval.topic.clone(),
                    interval.script.as_ref(),
                ),
                ProducerKind::Lines(lines) => (
                    json!({
                        "kind": "lines",
                        "path": lines.path.as_ref().map_or_else(|| "-".to_owned(), |p| p.display().to_string()),
                        "topic": lines.topic,
                    }),
                    Some(lines.topic.clone()),
                    None,
                ),
                ProducerKind::Generator(generator) => (
                    json!({
                        "kind": "generator",
                        "topic": generator.topic,
                        "count": generator.count,
                        "data": generator.data,
                    }),
                    Some(generator.topic.clone()),
                    None,
                ),
            };
            let mut settings = settings;
            settings["role"] = json!(producer.role);
            let node = self.component("producer", name, producer.file, settings, script);
            if let Some(topic) = topic {
                let topic = self.topic(&topic);
                self.edge(&node, &topic, "publishes");
            }
        }
    }

    fn subscribers(&mut self) {
        for (name, sub) in &self.flows.subscribers {
            let mut settings = json!({
                "emits": sub.emits,
                "concurrency": sub.concurrency,
                "retry": {
                    "attempts": sub.retry.attempts,
                    "backoff": duration(sub.retry.backoff),
                    "max_backoff": duration(sub.retry.max_backoff),
                    "jitter": sub.retry.jitter,
                },
                "dead_letter": sub.dead_letter,
                "group": sub.group,
                "role": sub.role,
                "renamed_from": sub.renamed_from,
            });
            match &sub.input {
                SubscriberInput::Topics(patterns) => {
                    settings["topics"] =
                        json!(patterns.iter().map(|p| p.as_str()).collect::<Vec<_>>());
                }
                SubscriberInput::Queue(queue) => settings["queue"] = json!(queue),
            }
            let node = self.component("subscriber", name, sub.file, settings, sub.script.as_ref());
            match &sub.input {
                SubscriberInput::Topics(patterns) => {
                    for pattern in patterns {
                        let topic = self.topic(pattern.as_str());
                        self.edge(&topic, &node, "subscribes");
                    }
                }
                SubscriberInput::Queue(queue) => {
                    let queue = format!("queues.{queue}");
                    self.edge(&queue, &node, "feeds");
                }
            }
            for emitted in &sub.emits {
                let topic = self.topic(emitted);
                self.edge(&node, &topic, "emits");
            }
            let Some(script) = &sub.script else {
                continue;
            };
            for queue in self.flows.queues.keys() {
                if script.text.contains(&format!("enqueue(\"{queue}\"")) {
                    self.edge(&node, &format!("queues.{queue}"), "enqueues");
                }
            }
            for store in self.flows.stores.keys() {
                let kind = match store_use(&script.text, store) {
                    Some(StoreUse::Reads) => "reads",
                    Some(StoreUse::Writes) => "writes",
                    None => continue,
                };
                self.edge(&node, &format!("stores.{store}"), kind);
            }
        }
    }

    fn queues(&mut self) {
        for (name, queue) in &self.flows.queues {
            let settings = json!({
                "delay": duration(queue.delay),
                "poll": optional_duration(queue.poll),
                "capacity": queue.capacity,
                "per_poll": queue.per_poll,
                "list": queue.list,
                "renamed_from": queue.renamed_from,
            });
            self.component("queue", name, queue.file, settings, None);
        }
    }

    fn relays(&mut self) {
        for (name, relay) in &self.flows.relays {
            let settings = json!({
                "from": relay.from.as_str(),
                "to": relay.to,
                "delay": optional_duration(relay.delay),
                "filter": relay.filter,
                "renamed_from": relay.renamed_from,
            });
            let node = self.component("relay", name, relay.file, settings, relay.script.as_ref());
            let from = self.topic(relay.from.as_str());
            self.edge(&from, &node, "relays");
            self.edge(&node, &format!("queues.{}", relay.to), "enqueues");
        }
    }

    fn chains(&mut self) {
        for (name, chain) in &self.flows.chains {
            let settings = json!({
                "steps": chain.steps,
                "timeout": optional_duration(chain.timeout),
                "on_timeout": chain.on_timeout,
            });
            let node = self.component("chain", name, chain.file, settings, None);
            for step in &chain.steps {
                let topic = self.topic(step);
                self.edge(&topic, &node, "step");
            }
            if let Some(on_timeout) = &chain.on_timeout {
                let topic = self.topic(on_timeout);
                self.edge(&node, &topic, "emits");
            }
        }
    }

    fn stores(&mut self) {
        for (name, store) in &self.flows.stores {
            let settings = json!({ "expose": store.expose });
            self.component("store", name, store.file, settings, None);
        }
    }

    /// `[topics.NAME]` tables: their settings and file, over the bare node if any.
    fn declared_topics(&mut self) {
        for (name, topic) in &self.flows.topics {
            let settings = json!({
                "declared": true,
                "mode": mode_name(self.flows.topic_mode(name)),
                "kind": match topic.kind {
                    TopicKind::Event => "event",
                    TopicKind::Command => "command",
                    TopicKind::Query => "query",
                },
                "retention": optional_duration(topic.retention),
                "timeout": optional_duration(topic.timeout),
            });
            self.component("topic", name, topic.file, settings, None);
        }
    }

    /// `http` producers publish to every literal topic that something reads and nothing
    /// declared produces.
    fn ingest(&mut self) {
        let http: Vec<String> = self
            .flows
            .producers
            .iter()
            .filter(|(_, p)| matches!(p.kind, ProducerKind::Http(_)))
            .map(|(name, _)| format!("producers.{name}"))
            .collect();
        if http.is_empty() {
            return;
        }
        let produced: BTreeSet<&str> = self
            .edges
            .iter()
            .filter(|e| e.kind == "emits" || e.kind == "publishes")
            .map(|e| e.to.as_str())
            .collect();
        let fed: BTreeSet<String> = self
            .edges
            .iter()
            .filter(|e| e.kind == "subscribes" || e.kind == "relays")
            .map(|e| &e.from)
            .filter(|topic| !produced.contains(topic.as_str()))
            .filter(|topic| {
                self.nodes.get(*topic).is_some_and(|n| {
                    crate::pattern::TopicPattern::parse(&n.name).is_ok_and(|p| p.is_literal())
                })
            })
            .cloned()
            .collect();
        for producer in &http {
            for topic in &fed {
                self.edge(producer, topic, "publishes");
            }
        }
    }
}

fn mode_name(mode: TopicMode) -> &'static str {
    match mode {
        TopicMode::Stream => "stream",
        TopicMode::Pubsub => "pubsub",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view_of(paths: &[PathBuf]) -> FlowView {
        let prepared = crate::runtime::prepare(paths)
            .unwrap_or_else(|report| panic!("{}", crate::flow::diagnostic::render(&report, 100)));
        FlowView {
            generation: 3,
            flows: prepared.flows,
            files: prepared.files.into(),
        }
    }

    fn demo(file: &str) -> Model {
        let flows = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("flows");
        model_of(&view_of(&[flows.join(file)]), &[flows])
    }

    fn node<'a>(model: &'a Model, id: &str) -> &'a Node {
        model
            .nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id} in {:#?}", model.nodes))
    }

    fn has_edge(model: &Model, from: &str, to: &str, kind: &str) -> bool {
        model
            .edges
            .iter()
            .any(|e| e.from == from && e.to == to && e.kind == kind)
    }

    #[test]
    fn the_orders_demo_is_a_graph_of_its_components() {
        let model = demo("orders.toml");
        assert_eq!(model.generation, 3);
        let reserve = node(&model, "subscribers.reserve_inventory");
        assert_eq!(reserve.kind, "subscriber");
        assert_eq!(reserve.name, "reserve_inventory");
        assert_eq!(reserve.flow.as_deref(), Some("orders"));
        assert_eq!(reserve.file.as_deref(), Some("0/orders.toml"));
        assert_eq!(
            reserve.script.as_deref(),
            Some("0/handlers/reserve_inventory.rhai")
        );
        assert_eq!(reserve.settings["topics"], json!(["orderCreated"]));
        assert_eq!(reserve.settings["concurrency"], 2);
        assert_eq!(reserve.settings["retry"]["backoff"], "100ms");
        assert_eq!(reserve.settings["retry"]["max_backoff"], "2s");
        assert_eq!(node(&model, "subscribers.log_orders").script, None);
        assert_eq!(node(&model, "producers.api").kind, "producer");
        assert_eq!(node(&model, "topics.orderCreated").kind, "topic");
        assert_eq!(node(&model, "chains.fulfilment").settings["timeout"], "30s");
        for (from, to, kind) in [
            ("producers.api", "topics.orderCreated", "publishes"),
            (
                "topics.orderCreated",
                "subscribers.reserve_inventory",
                "subscribes",
            ),
            (
                "subscribers.reserve_inventory",
                "topics.inventoryReserved",
                "emits",
            ),
            ("topics.paymentCharged", "chains.fulfilment", "step"),
            ("chains.fulfilment", "topics.orderStalled", "emits"),
        ] {
            assert!(
                has_edge(&model, from, to, kind),
                "no {kind} edge {from} -> {to}"
            );
        }
        // Nothing outside feeds what a handler emits.
        assert!(!has_edge(
            &model,
            "producers.api",
            "topics.inventoryReserved",
            "publishes"
        ));
        let chain = &model.chains[0];
        assert_eq!(chain.name, "fulfilment");
        assert_eq!(chain.steps[0].topic, "orderCreated");
        assert_eq!(chain.steps[0].timeout_ms, None);
        assert_eq!(chain.steps[3].timeout_ms, Some(30_000));
        let files: Vec<(&str, &str)> = model
            .files
            .iter()
            .map(|f| (f.id.as_str(), f.kind))
            .collect();
        assert!(files.contains(&("0/orders.toml", "flow")), "{files:?}");
        assert!(
            files.contains(&("0/handlers/ship_order.rhai", "script")),
            "{files:?}"
        );
        assert!(
            files.contains(&("0/lib/orders.rhai", "script")),
            "{files:?}"
        );
    }

    #[test]
    fn relays_queues_and_stores_are_wired() {
        let model = demo("deferred.toml");
        for (from, to, kind) in [
            ("producers.api", "topics.master", "publishes"),
            ("topics.master", "relays.master", "relays"),
            ("relays.master", "queues.tasks", "enqueues"),
            ("queues.tasks", "subscribers.worker", "feeds"),
        ] {
            assert!(
                has_edge(&model, from, to, kind),
                "no {kind} edge {from} -> {to}: {:#?}",
                model.edges
            );
        }
        assert_eq!(node(&model, "queues.tasks").settings["poll"], "10s");
        assert_eq!(
            node(&model, "subscribers.worker").settings["queue"],
            "tasks"
        );

        let model = demo("cqrs.toml");
        assert!(has_edge(
            &model,
            "subscribers.project_orders",
            "stores.orders",
            "writes"
        ));
        assert!(has_edge(
            &model,
            "subscribers.get_order",
            "stores.orders",
            "reads"
        ));
        let query = node(&model, "topics.orders.query.get");
        assert_eq!(query.settings["kind"], "query");
        assert_eq!(query.settings["timeout"], "2s");
        assert_eq!(query.file.as_deref(), Some("0/cqrs.toml"));
        assert_eq!(node(&model, "stores.orders").settings["expose"], true);
    }

    #[test]
    fn a_token_never_reaches_the_model() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let flow = dir.path().join("flow.toml");
        std::fs::write(
            &flow,
            indoc::indoc! {r#"
                [flow]
                name = "guarded"

                [producers.api]
                kind = "http"
                token = "s3cret-token-value"

                [subscribers.log]
                topic = "seen"
            "#},
        )
        .expect("write the flow");
        let model = model_of(&view_of(&[flow]), &[dir.path().to_path_buf()]);
        let text = serde_json::to_string(&model).expect("serializes");
        assert!(!text.contains("s3cret"), "{text}");
        assert_eq!(node(&model, "producers.api").settings["token_set"], true);
        assert!(has_edge(
            &model,
            "producers.api",
            "topics.seen",
            "publishes"
        ));
    }
}
