//! The declared wiring of a flow set as a picture: producers, topics, subscribers, queues,
//! relays, stores and chains, rendered as Mermaid, Graphviz dot or JSON (`GraphJson`, a
//! stable contract). Only what the flow files declare is drawn (`emits` for handler
//! outputs), plus what the scripts plainly do: store edges from their `store("…")` calls,
//! queue edges from their `enqueue("…", …)` calls (`ScriptFacts::enqueues`). Live counts
//! can be laid over it.
//!
//! Pure: no I/O, no runtime. `edaflow graph` calls it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;

use crate::flow::lint::Facts;
use crate::flow::model::{FlowSet, ProducerKind, SubscriberInput};

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GraphFormat {
    Mermaid,
    Dot,
    /// `GraphJson`: nodes and edges with their kinds, for tools.
    Json,
}

/// How a handler uses a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreUse {
    Reads,
    Writes,
}

/// How the script `text` uses `store`. Stores are not declared per subscriber: this reads
/// the script's `store("…")` calls, and a script that also calls set/incr/remove is taken
/// as writing.
pub fn store_use(text: &str, store: &str) -> Option<StoreUse> {
    if !text.contains(&format!("store(\"{store}\")")) {
        return None;
    }
    let writes = [".set(", ".incr(", ".remove("]
        .iter()
        .any(|w| text.contains(w));
    Some(if writes {
        StoreUse::Writes
    } else {
        StoreUse::Reads
    })
}

/// Optional numbers to print on the nodes (from a running instance's `/metrics`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LiveCounts {
    /// Events published per topic.
    pub topics: BTreeMap<String, u64>,
    /// Events handled per subscriber.
    pub subscribers: BTreeMap<String, u64>,
}

/// What a node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    Producer,
    Topic,
    Subscriber,
    Queue,
    Relay,
    Store,
}

/// What an edge means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeKind {
    /// A timer, lines or generator producer publishes to a topic.
    Produces,
    /// An HTTP producer ingests a topic that a subscriber reads and nothing declared
    /// produces.
    Ingests,
    /// A topic (or pattern) delivers to a subscriber.
    Subscribes,
    /// A subscriber declares it emits a topic (`emits`).
    Emits,
    /// A subscriber's script enqueues to a queue (`enqueue("…", …)`).
    Enqueues,
    /// A queue feeds its subscriber.
    Consumes,
    /// A relay reads a topic, or moves what it read into a queue.
    Relays,
    /// A subscriber's script reads a store.
    Reads,
    /// A subscriber's script writes a store.
    Writes,
    /// One step of a chain to the next (the label is the chain's name).
    Chain,
    /// A chain's first step to its `on_timeout` topic.
    ChainTimeout,
}

struct Node {
    kind: NodeKind,
    name: String,
    /// Lines under the name (kind, role, settings), without the live count.
    details: Vec<String>,
    /// The live count and what it counts ("events", "handled").
    count: Option<(u64, &'static str)>,
}

impl Node {
    fn lines(&self) -> Vec<String> {
        let mut lines = vec![self.name.clone()];
        lines.extend(self.details.iter().cloned());
        if let Some((n, what)) = self.count {
            lines.push(format!("{n} {what}"));
        }
        lines
    }
}

struct Graph {
    nodes: BTreeMap<String, Node>,
    /// (from, to, label) with what the edge means.
    edges: BTreeMap<(String, String, String), EdgeKind>,
}

fn id(kind: &str, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{kind}_{clean}")
}

impl Graph {
    fn node(&mut self, kind: NodeKind, prefix: &str, name: &str, details: &[&str]) -> String {
        let key = id(prefix, name);
        self.nodes.entry(key.clone()).or_insert_with(|| Node {
            kind,
            name: name.to_owned(),
            details: details.iter().map(|d| (*d).to_owned()).collect(),
            count: None,
        });
        key
    }

    fn topic(&mut self, name: &str, live: &LiveCounts) -> String {
        let key = self.node(NodeKind::Topic, "topic", name, &[]);
        if let (Some(n), Some(node)) = (live.topics.get(name), self.nodes.get_mut(&key)) {
            node.count = Some((*n, "events"));
        }
        key
    }

    fn queue(&mut self, name: &str) -> String {
        self.node(NodeKind::Queue, "queue", name, &["queue"])
    }

    fn edge(&mut self, from: &str, to: &str, label: &str, kind: EdgeKind) {
        self.edges
            .entry((from.to_owned(), to.to_owned(), label.to_owned()))
            .or_insert(kind);
    }
}

fn build(flows: &FlowSet, facts: &Facts, live: &LiveCounts) -> Graph {
    let mut g = Graph {
        nodes: BTreeMap::new(),
        edges: BTreeMap::new(),
    };
    // Topics produced by something declared; the rest of the consumed topics are fed from
    // outside (HTTP ingest, when there is an HTTP producer).
    let mut produced: BTreeSet<String> = flows
        .subscribers
        .values()
        .flat_map(|s| s.emits.iter().cloned())
        .chain(flows.chains.values().filter_map(|c| c.on_timeout.clone()))
        .collect();
    for (name, producer) in &flows.producers {
        let kind = match &producer.kind {
            ProducerKind::Http(h) => format!("http {}", h.listen),
            ProducerKind::Interval(i) => {
                format!("every {}", crate::duration::format_duration(i.every))
            }
            ProducerKind::Lines(_) => "lines".to_owned(),
            ProducerKind::Generator(gen) => format!("generator x{}", gen.count),
        };
        let node = g.node(NodeKind::Producer, "producer", name, &[&kind]);
        if let Some(topic) = producer.kind.topic() {
            produced.insert(topic.to_owned());
            let t = g.topic(topic, live);
            g.edge(&node, &t, "", EdgeKind::Produces);
        }
    }
    for (name, relay) in &flows.relays {
        let node = g.node(NodeKind::Relay, "relay", name, &["relay"]);
        let from = g.topic(relay.from.as_str(), live);
        g.edge(&from, &node, "", EdgeKind::Relays);
        let queue = g.queue(&relay.to);
        g.edge(&node, &queue, "", EdgeKind::Relays);
    }
    for (name, queue) in &flows.queues {
        let mut details = "queue".to_owned();
        if let Some(poll) = queue.poll {
            let _ = write!(details, ", poll {}", crate::duration::format_duration(poll));
        }
        let key = g.queue(name);
        if let Some(node) = g.nodes.get_mut(&key) {
            node.details = vec![details];
        }
    }
    for (name, store) in &flows.stores {
        let details = if store.expose {
            "store, exposed"
        } else {
            "store"
        };
        g.node(NodeKind::Store, "store", name, &[details]);
    }
    let http_ingest: Vec<String> = flows
        .producers
        .iter()
        .filter(|(_, p)| matches!(p.kind, ProducerKind::Http(_)))
        .map(|(name, _)| id("producer", name))
        .collect();
    for (name, sub) in &flows.subscribers {
        let role: Vec<&str> = sub.role.iter().map(String::as_str).collect();
        let node = g.node(NodeKind::Subscriber, "sub", name, &role);
        if let (Some(n), Some(entry)) = (live.subscribers.get(name), g.nodes.get_mut(&node)) {
            entry.count = Some((*n, "handled"));
        }
        match &sub.input {
            SubscriberInput::Topics(patterns) => {
                for p in patterns {
                    let t = g.topic(p.as_str(), live);
                    g.edge(&t, &node, "", EdgeKind::Subscribes);
                    if p.is_literal() && !produced.contains(p.as_str()) {
                        for http in &http_ingest {
                            g.edge(http, &t, "", EdgeKind::Ingests);
                        }
                    }
                }
            }
            SubscriberInput::Queue(q) => {
                let queue = g.queue(q);
                g.edge(&queue, &node, "", EdgeKind::Consumes);
            }
        }
        for topic in &sub.emits {
            let t = g.topic(topic, live);
            g.edge(&node, &t, "", EdgeKind::Emits);
        }
        let enqueues = facts.get(name).and_then(Option::as_ref);
        for queue in enqueues.into_iter().flat_map(|f| &f.enqueues) {
            let q = g.queue(queue);
            g.edge(&node, &q, "", EdgeKind::Enqueues);
        }
        if let Some(script) = &sub.script {
            for store in flows.stores.keys() {
                let s = id("store", store);
                match store_use(&script.text, store) {
                    Some(StoreUse::Writes) => g.edge(&node, &s, "writes", EdgeKind::Writes),
                    Some(StoreUse::Reads) => g.edge(&s, &node, "reads", EdgeKind::Reads),
                    None => {}
                }
            }
        }
    }
    for (name, chain) in &flows.chains {
        for pair in chain.steps.windows(2) {
            let from = g.topic(&pair[0], live);
            let to = g.topic(&pair[1], live);
            g.edge(&from, &to, name, EdgeKind::Chain);
        }
        if let Some(on_timeout) = &chain.on_timeout {
            // A chain times out when its last step is not reached in time after its first.
            let last = g.topic(chain.steps.first().map_or("", String::as_str), live);
            let t = g.topic(on_timeout, live);
            let label = match chain.timeout {
                Some(timeout) => format!(
                    "{name}: not done in {}",
                    crate::duration::format_duration(timeout)
                ),
                None => format!("{name}: on timeout"),
            };
            g.edge(&last, &t, &label, EdgeKind::ChainTimeout);
        }
    }
    g
}

/// `edaflow graph --format json`. A stable contract: fields are only added, and a renamed
/// or removed field is a changelog line.
#[derive(Debug, Serialize)]
pub struct GraphJson {
    /// Every node, ordered by id.
    pub nodes: Vec<GraphNode>,
    /// Every edge, ordered by (from, to, label).
    pub edges: Vec<GraphEdge>,
}

/// One node of `GraphJson`.
#[derive(Debug, Serialize)]
pub struct GraphNode {
    /// Unique within the graph: the kind's prefix and the name with every character that
    /// is not an ASCII letter or digit made `_` (`topic_orderCreated`, `sub_reserve`).
    pub id: String,
    pub kind: NodeKind,
    /// The name as the flow files write it (a topic pattern for a pattern subscription).
    pub name: String,
    /// What the text formats print under the name (the producer's kind, the role, …).
    pub details: Vec<String>,
    /// Topics, with `--live`: events published.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<u64>,
    /// Subscribers, with `--live`: events handled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handled: Option<u64>,
}

/// One edge of `GraphJson`.
#[derive(Debug, Serialize)]
pub struct GraphEdge {
    /// A node's `id`.
    pub from: String,
    /// A node's `id`.
    pub to: String,
    pub kind: EdgeKind,
    /// The chain's name (`chain`), its timeout (`chain_timeout`), `reads`/`writes`, or
    /// empty.
    pub label: String,
}

/// The flow set's wiring as data (what `render` prints for `GraphFormat::Json`).
pub fn to_json(flows: &FlowSet, facts: &Facts, live: &LiveCounts) -> GraphJson {
    let g = build(flows, facts, live);
    GraphJson {
        nodes: g
            .nodes
            .into_iter()
            .map(|(id, node)| GraphNode {
                id,
                kind: node.kind,
                name: node.name,
                details: node.details,
                events: node.count.filter(|c| c.1 == "events").map(|c| c.0),
                handled: node.count.filter(|c| c.1 == "handled").map(|c| c.0),
            })
            .collect(),
        edges: g
            .edges
            .into_iter()
            .map(|((from, to, label), kind)| GraphEdge {
                from,
                to,
                kind,
                label,
            })
            .collect(),
    }
}

/// Renders the flow set's wiring. `facts` are the subscribers' script facts (for the
/// `enqueue` edges); an empty map draws none.
pub fn render(flows: &FlowSet, facts: &Facts, format: GraphFormat, live: &LiveCounts) -> String {
    if format == GraphFormat::Json {
        let json = to_json(flows, facts, live);
        let mut out = serde_json::to_string_pretty(&json).unwrap_or_default();
        out.push('\n');
        return out;
    }
    let g = build(flows, facts, live);
    let mut out = String::new();
    match format {
        GraphFormat::Mermaid | GraphFormat::Json => {
            out.push_str("flowchart LR\n");
            for (key, node) in &g.nodes {
                let label = node.lines().join("<br/>").replace('"', "'");
                let shape = match node.kind {
                    NodeKind::Producer => format!("{key}[/\"{label}\"/]"),
                    NodeKind::Topic => format!("{key}([\"{label}\"])"),
                    NodeKind::Subscriber => format!("{key}[\"{label}\"]"),
                    NodeKind::Queue => format!("{key}[(\"{label}\")]"),
                    NodeKind::Relay => format!("{key}{{{{\"{label}\"}}}}"),
                    NodeKind::Store => format!("{key}[(\"{label}\")]"),
                };
                let _ = writeln!(out, "  {shape}");
            }
            for (from, to, label) in g.edges.keys() {
                if label.is_empty() {
                    let _ = writeln!(out, "  {from} --> {to}");
                } else {
                    let _ = writeln!(out, "  {from} -. \"{}\" .-> {to}", label.replace('"', "'"));
                }
            }
        }
        GraphFormat::Dot => {
            out.push_str("digraph edaflow {\n  rankdir=LR;\n  node [fontname=\"Helvetica\"];\n");
            for (key, node) in &g.nodes {
                let shape = match node.kind {
                    NodeKind::Producer => "parallelogram",
                    NodeKind::Topic => "ellipse",
                    NodeKind::Subscriber => "box",
                    NodeKind::Queue | NodeKind::Store => "cylinder",
                    NodeKind::Relay => "hexagon",
                };
                let label = node.lines().join("\\n").replace('"', "\\\"");
                let _ = writeln!(out, "  {key} [shape={shape}, label=\"{label}\"];");
            }
            for (from, to, label) in g.edges.keys() {
                if label.is_empty() {
                    let _ = writeln!(out, "  {from} -> {to};");
                } else {
                    let _ = writeln!(
                        out,
                        "  {from} -> {to} [style=dashed, label=\"{}\"];",
                        label.replace('"', "\\\"")
                    );
                }
            }
            out.push_str("}\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::load;

    fn orders() -> FlowSet {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        load(&[root.join("flows/orders.toml")])
            .expect("the demo loads")
            .flows
    }

    fn render(flows: &FlowSet, format: GraphFormat, live: &LiveCounts) -> String {
        super::render(flows, &Facts::new(), format, live)
    }

    /// A handler that enqueues (from its script only: nothing declares it), and the
    /// queue's worker.
    fn enqueuing() -> (tempfile::TempDir, crate::runtime::Prepared) {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let flow = "[flow]\nname = \"q\"\n\n[queues.shipping]\n\n[producers.api]\nkind = \"http\"\nlisten = \"127.0.0.1:0\"\n\n[subscribers.take]\ntopic = \"orderCreated\"\nscript = \"take.rhai\"\n\n[subscribers.ship]\nqueue = \"shipping\"\n";
        std::fs::write(dir.path().join("flow.toml"), flow).expect("write");
        std::fs::write(
            dir.path().join("take.rhai"),
            "if event.data.rush { enqueue(\"shipping\", event.data); } else { enqueue(\"shipping\", event.data, \"1h\"); }\n",
        )
        .expect("write");
        let prepared = crate::runtime::prepare(&[dir.path().join("flow.toml")])
            .unwrap_or_else(|report| panic!("{report:?}"));
        (dir, prepared)
    }

    #[test]
    fn enqueue_calls_are_drawn_in_every_format() {
        let (_dir, prepared) = enqueuing();
        let facts = prepared.facts();
        let none = LiveCounts::default();
        let mermaid = super::render(&prepared.flows, &facts, GraphFormat::Mermaid, &none);
        assert!(
            mermaid
                .lines()
                .any(|l| l == "  sub_take --> queue_shipping"),
            "{mermaid}"
        );
        assert!(
            mermaid
                .lines()
                .any(|l| l == "  queue_shipping --> sub_ship"),
            "{mermaid}"
        );
        let dot = super::render(&prepared.flows, &facts, GraphFormat::Dot, &none);
        assert!(dot.contains("  sub_take -> queue_shipping;"), "{dot}");
        let json = to_json(&prepared.flows, &facts, &none);
        let edge = json
            .edges
            .iter()
            .find(|e| e.from == "sub_take" && e.to == "queue_shipping")
            .unwrap_or_else(|| panic!("no enqueue edge in {json:#?}"));
        assert_eq!(edge.kind, EdgeKind::Enqueues);
        // Without the facts there is no such edge.
        let bare = render(&prepared.flows, GraphFormat::Mermaid, &none);
        assert!(!bare.contains("sub_take --> queue_shipping"), "{bare}");
    }

    #[test]
    fn json_names_every_node_and_edge_with_its_kind() {
        let live = LiveCounts {
            topics: [("orderCreated".to_owned(), 7)].into(),
            subscribers: [("ship_order".to_owned(), 5)].into(),
        };
        let value =
            serde_json::to_value(to_json(&orders(), &Facts::new(), &live)).expect("serializes");
        let nodes = value["nodes"].as_array().expect("nodes");
        let node = |id: &str| {
            nodes
                .iter()
                .find(|n| n["id"] == id)
                .unwrap_or_else(|| panic!("no node {id} in {value:#}"))
        };
        assert_eq!(node("producer_api")["kind"], "producer");
        assert_eq!(node("producer_api")["details"][0], "http 127.0.0.1:3000");
        assert_eq!(node("topic_orderCreated")["kind"], "topic");
        assert_eq!(node("topic_orderCreated")["events"], 7);
        assert_eq!(node("sub_ship_order")["kind"], "subscriber");
        assert_eq!(node("sub_ship_order")["handled"], 5);
        assert!(node("sub_ship_order").get("events").is_none());
        let edges = value["edges"].as_array().expect("edges");
        let kind_of = |from: &str, to: &str| {
            edges
                .iter()
                .find(|e| e["from"] == from && e["to"] == to)
                .map(|e| e["kind"].clone())
                .unwrap_or_else(|| panic!("no edge {from} -> {to} in {value:#}"))
        };
        assert_eq!(kind_of("producer_api", "topic_orderCreated"), "ingests");
        assert_eq!(
            kind_of("topic_orderCreated", "sub_reserve_inventory"),
            "subscribes"
        );
        assert_eq!(
            kind_of("sub_reserve_inventory", "topic_inventoryReserved"),
            "emits"
        );
        assert_eq!(
            kind_of("topic_orderCreated", "topic_inventoryReserved"),
            "chain"
        );
        assert_eq!(
            kind_of("topic_orderCreated", "topic_orderStalled"),
            "chain_timeout"
        );
        // Every edge joins two nodes.
        for edge in edges {
            node(edge["from"].as_str().expect("from"));
            node(edge["to"].as_str().expect("to"));
        }
    }

    #[test]
    fn mermaid_draws_the_demo_choreography() {
        let text = render(&orders(), GraphFormat::Mermaid, &LiveCounts::default());
        assert!(text.starts_with("flowchart LR\n"), "{text}");
        for line in [
            "  producer_api --> topic_orderCreated",
            "  topic_orderCreated --> sub_reserve_inventory",
            "  sub_reserve_inventory --> topic_inventoryReserved",
            "  sub_ship_order --> topic_orderShipped",
            "  topic_orderCreated -. \"fulfilment\" .-> topic_inventoryReserved",
            "  topic_orderCreated -. \"fulfilment: not done in 30s\" .-> topic_orderStalled",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // No edge from the HTTP producer to a topic a handler or a chain emits.
        assert!(
            !text.contains("producer_api --> topic_inventoryReserved"),
            "{text}"
        );
        assert!(
            !text.contains("producer_api --> topic_orderStalled"),
            "{text}"
        );
    }

    #[test]
    fn dot_is_a_digraph_with_the_same_edges() {
        let text = render(&orders(), GraphFormat::Dot, &LiveCounts::default());
        assert!(text.starts_with("digraph edaflow {"), "{text}");
        assert!(
            text.contains("  topic_orderCreated -> sub_log_orders;"),
            "{text}"
        );
        assert!(text.trim_end().ends_with('}'));
    }

    #[test]
    fn live_counts_are_laid_over_the_nodes() {
        let live = LiveCounts {
            topics: [("orderCreated".to_owned(), 7)].into(),
            subscribers: [("ship_order".to_owned(), 5)].into(),
        };
        let text = render(&orders(), GraphFormat::Mermaid, &live);
        assert!(
            text.contains("topic_orderCreated([\"orderCreated<br/>7 events\"])"),
            "{text}"
        );
        assert!(
            text.contains("sub_ship_order[\"ship_order<br/>5 handled\"]"),
            "{text}"
        );
    }
}
