//! The declared wiring of a flow set as a picture: producers, topics, subscribers, queues,
//! relays, stores and chains, rendered as Mermaid or Graphviz dot. Only what the flow files
//! declare is drawn (`emits` for handler outputs; store edges come from the scripts'
//! `store("…")` calls); live counts can be laid over it.
//!
//! Pure: no I/O, no runtime. `edaflow graph` calls it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::flow::model::{FlowSet, ProducerKind, SubscriberInput};

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GraphFormat {
    Mermaid,
    Dot,
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

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Producer,
    Topic,
    Subscriber,
    Queue,
    Relay,
    Store,
}

struct Graph {
    nodes: BTreeMap<String, (Kind, String)>,
    edges: BTreeSet<(String, String, String)>,
}

fn id(kind: &str, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{kind}_{clean}")
}

impl Graph {
    fn node(&mut self, kind: Kind, prefix: &str, name: &str, label: String) -> String {
        let key = id(prefix, name);
        self.nodes.entry(key.clone()).or_insert((kind, label));
        key
    }

    fn topic(&mut self, name: &str, live: &LiveCounts) -> String {
        let label = match live.topics.get(name) {
            Some(n) => format!("{name}<br/>{n} events"),
            None => name.to_owned(),
        };
        self.node(Kind::Topic, "topic", name, label)
    }

    fn edge(&mut self, from: &str, to: &str, label: &str) {
        self.edges
            .insert((from.to_owned(), to.to_owned(), label.to_owned()));
    }
}

fn build(flows: &FlowSet, live: &LiveCounts) -> Graph {
    let mut g = Graph {
        nodes: BTreeMap::new(),
        edges: BTreeSet::new(),
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
        let (kind, topic) = match &producer.kind {
            ProducerKind::Http(h) => (format!("http {}", h.listen), None),
            ProducerKind::Interval(i) => (
                format!("every {}", crate::duration::format_duration(i.every)),
                i.topic.clone(),
            ),
            ProducerKind::Lines(l) => ("lines".to_owned(), Some(l.topic.clone())),
            ProducerKind::Generator(gen) => {
                (format!("generator x{}", gen.count), Some(gen.topic.clone()))
            }
        };
        let node = g.node(
            Kind::Producer,
            "producer",
            name,
            format!("{name}<br/>{kind}"),
        );
        if let Some(topic) = topic {
            produced.insert(topic.clone());
            let t = g.topic(&topic, live);
            g.edge(&node, &t, "");
        }
    }
    for (name, relay) in &flows.relays {
        let node = g.node(Kind::Relay, "relay", name, format!("{name}<br/>relay"));
        let from = g.topic(relay.from.as_str(), live);
        g.edge(&from, &node, "");
        let queue = g.node(
            Kind::Queue,
            "queue",
            &relay.to,
            format!("{}<br/>queue", relay.to),
        );
        g.edge(&node, &queue, "");
    }
    for (name, queue) in &flows.queues {
        let mut label = format!("{name}<br/>queue");
        if let Some(poll) = queue.poll {
            let _ = write!(label, ", poll {}", crate::duration::format_duration(poll));
        }
        g.nodes.insert(id("queue", name), (Kind::Queue, label));
    }
    for (name, store) in &flows.stores {
        let label = if store.expose {
            format!("{name}<br/>store, exposed")
        } else {
            format!("{name}<br/>store")
        };
        g.node(Kind::Store, "store", name, label);
    }
    let http_ingest: Vec<String> = flows
        .producers
        .iter()
        .filter(|(_, p)| matches!(p.kind, ProducerKind::Http(_)))
        .map(|(name, _)| id("producer", name))
        .collect();
    for (name, sub) in &flows.subscribers {
        let mut label = name.clone();
        if let Some(role) = &sub.role {
            let _ = write!(label, "<br/>{role}");
        }
        if let Some(n) = live.subscribers.get(name) {
            let _ = write!(label, "<br/>{n} handled");
        }
        let node = g.node(Kind::Subscriber, "sub", name, label);
        match &sub.input {
            SubscriberInput::Topics(patterns) => {
                for p in patterns {
                    let t = g.topic(p.as_str(), live);
                    g.edge(&t, &node, "");
                    if p.is_literal() && !produced.contains(p.as_str()) {
                        for http in &http_ingest {
                            g.edge(http, &t, "");
                        }
                    }
                }
            }
            SubscriberInput::Queue(q) => {
                let queue = g.node(Kind::Queue, "queue", q, format!("{q}<br/>queue"));
                g.edge(&queue, &node, "");
            }
        }
        for topic in &sub.emits {
            let t = g.topic(topic, live);
            g.edge(&node, &t, "");
        }
        if let Some(script) = &sub.script {
            for store in flows.stores.keys() {
                let s = id("store", store);
                match store_use(&script.text, store) {
                    Some(StoreUse::Writes) => g.edge(&node, &s, "writes"),
                    Some(StoreUse::Reads) => g.edge(&s, &node, "reads"),
                    None => {}
                }
            }
        }
    }
    for (name, chain) in &flows.chains {
        for pair in chain.steps.windows(2) {
            let from = g.topic(&pair[0], live);
            let to = g.topic(&pair[1], live);
            g.edge(&from, &to, name);
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
            g.edge(&last, &t, &label);
        }
    }
    g
}

/// Renders the flow set's wiring.
pub fn render(flows: &FlowSet, format: GraphFormat, live: &LiveCounts) -> String {
    let g = build(flows, live);
    let mut out = String::new();
    match format {
        GraphFormat::Mermaid => {
            out.push_str("flowchart LR\n");
            for (key, (kind, label)) in &g.nodes {
                let label = label.replace('"', "'");
                let shape = match kind {
                    Kind::Producer => format!("{key}[/\"{label}\"/]"),
                    Kind::Topic => format!("{key}([\"{label}\"])"),
                    Kind::Subscriber => format!("{key}[\"{label}\"]"),
                    Kind::Queue => format!("{key}[(\"{label}\")]"),
                    Kind::Relay => format!("{key}{{{{\"{label}\"}}}}"),
                    Kind::Store => format!("{key}[(\"{label}\")]"),
                };
                let _ = writeln!(out, "  {shape}");
            }
            for (from, to, label) in &g.edges {
                if label.is_empty() {
                    let _ = writeln!(out, "  {from} --> {to}");
                } else {
                    let _ = writeln!(out, "  {from} -. \"{}\" .-> {to}", label.replace('"', "'"));
                }
            }
        }
        GraphFormat::Dot => {
            out.push_str("digraph edaflow {\n  rankdir=LR;\n  node [fontname=\"Helvetica\"];\n");
            for (key, (kind, label)) in &g.nodes {
                let shape = match kind {
                    Kind::Producer => "parallelogram",
                    Kind::Topic => "ellipse",
                    Kind::Subscriber => "box",
                    Kind::Queue | Kind::Store => "cylinder",
                    Kind::Relay => "hexagon",
                };
                let label = label.replace("<br/>", "\\n").replace('"', "\\\"");
                let _ = writeln!(out, "  {key} [shape={shape}, label=\"{label}\"];");
            }
            for (from, to, label) in &g.edges {
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
