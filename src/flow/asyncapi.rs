//! `edaflow asyncapi`: an AsyncAPI 3.0.0 document of a flow set, built from the validated
//! model. Each topic and each queue is a channel; each producer and each subscriber's
//! `emits` is a `send` operation, each subscriber a `receive` operation; a topic with a
//! `schema` gives its message a payload (in `components.schemas`). Pure data: nothing here
//! reads files or starts anything.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use crate::flow::model::{FlowSet, ProducerKind, SubscriberInput};

/// The AsyncAPI version written.
pub const ASYNCAPI_VERSION: &str = "3.0.0";

/// A channel, operation or component key: AsyncAPI 3.0.0 allows letters, digits, `.`, `-`
/// and `_` there; anything else becomes `_` (the channel's `address` keeps the real name).
fn key(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// One channel: a topic or a queue.
struct Channel {
    address: String,
    description: String,
}

/// The document for `flows`.
pub fn document(flows: &FlowSet) -> Value {
    let mut channels: BTreeMap<String, Channel> = BTreeMap::new();
    let add_topic = |channels: &mut BTreeMap<String, Channel>, topic: &str| {
        channels.entry(key(topic)).or_insert_with(|| Channel {
            address: topic.to_owned(),
            description: format!("Topic `{topic}`."),
        });
    };
    // Every concrete topic the set names.
    for topic in flows.topics.keys() {
        add_topic(&mut channels, topic);
    }
    for producer in flows.producers.values() {
        if let Some(topic) = producer.kind.topic() {
            add_topic(&mut channels, topic);
        }
    }
    for subscriber in flows.subscribers.values() {
        if let SubscriberInput::Topics(patterns) = &subscriber.input {
            for pattern in patterns.iter().filter(|p| p.is_literal()) {
                add_topic(&mut channels, pattern.as_str());
            }
        }
        for topic in &subscriber.emits {
            add_topic(&mut channels, topic);
        }
        add_topic(&mut channels, &subscriber.dead_letter);
    }
    for chain in flows.chains.values() {
        for step in chain.steps.iter().chain(&chain.on_timeout) {
            add_topic(&mut channels, step);
        }
    }
    let topics: Vec<String> = channels.values().map(|c| c.address.clone()).collect();
    // Patterns that match none of those topics are channels of their own.
    for subscriber in flows.subscribers.values() {
        if let SubscriberInput::Topics(patterns) = &subscriber.input {
            for pattern in patterns.iter().filter(|p| !p.is_literal()) {
                if !topics.iter().any(|t| pattern.matches(t)) {
                    channels
                        .entry(key(pattern.as_str()))
                        .or_insert_with(|| Channel {
                            address: pattern.as_str().to_owned(),
                            description: format!("Topics matching `{}`.", pattern.as_str()),
                        });
                }
            }
        }
    }
    let mut queue_channels: BTreeMap<String, String> = BTreeMap::new();
    for name in flows.queues.keys() {
        let mut channel_key = format!("queue.{}", key(name));
        while channels.contains_key(&channel_key) {
            channel_key.push('_');
        }
        channels.insert(
            channel_key.clone(),
            Channel {
                address: name.clone(),
                description: format!("Deferred queue `{name}`."),
            },
        );
        queue_channels.insert(name.clone(), channel_key);
    }
    let topic_channel = |topic: &str| key(topic);

    // Messages: one per channel, with the topic's schema as payload when it has one.
    let mut schemas = Map::new();
    let mut messages = Map::new();
    let mut channel_docs = Map::new();
    for (channel_key, channel) in &channels {
        let mut message = json!({
            "name": channel.address,
            "contentType": "application/json",
        });
        let topic = flows.topics.get(&channel.address);
        let is_queue = queue_channels.get(&channel.address) == Some(channel_key);
        if let (Some(schema), false) = (topic.and_then(|t| t.schema.as_ref()), is_queue) {
            schemas.insert(channel_key.clone(), (*schema.document).clone());
            message["payload"] = json!({"$ref": format!("#/components/schemas/{channel_key}")});
        }
        messages.insert(channel_key.clone(), message);
        channel_docs.insert(
            channel_key.clone(),
            json!({
                "address": channel.address,
                "description": channel.description,
                "messages": {
                    channel_key.clone(): {"$ref": format!("#/components/messages/{channel_key}")}
                }
            }),
        );
    }

    let mut operations = Map::new();
    let mut operation = |id: String, action: &str, channel_key: &str, description: String| {
        let mut id = key(&id);
        while operations.contains_key(&id) {
            id.push('_');
        }
        operations.insert(
            id,
            json!({
                "action": action,
                "description": description,
                "channel": {"$ref": format!("#/channels/{channel_key}")},
                "messages": [{"$ref": format!("#/channels/{channel_key}/messages/{channel_key}")}]
            }),
        );
    };
    for (name, producer) in &flows.producers {
        match &producer.kind {
            ProducerKind::Http(_) => {
                // The ingest API takes any topic: it sends on every channel the set reads.
                let read: BTreeSet<String> = flows
                    .subscribers
                    .values()
                    .filter_map(|s| match &s.input {
                        SubscriberInput::Topics(patterns) => Some(patterns),
                        SubscriberInput::Queue(_) => None,
                    })
                    .flatten()
                    .flat_map(|pattern| {
                        channels
                            .iter()
                            .filter(|(k, c)| {
                                !queue_channels.values().any(|q| q == *k)
                                    && (pattern.matches(&c.address)
                                        || pattern.as_str() == c.address)
                            })
                            .map(|(k, _)| k.clone())
                            .collect::<Vec<_>>()
                    })
                    .collect();
                for channel_key in read {
                    let description = format!(
                        "The `{name}` HTTP producer publishes on `{}` (POST /topics/…).",
                        channels[&channel_key].address
                    );
                    operation(
                        format!("{name}.send.{channel_key}"),
                        "send",
                        &channel_key,
                        description,
                    );
                }
            }
            kind => {
                if let Some(topic) = kind.topic() {
                    let description = format!("The `{name}` producer publishes on `{topic}`.");
                    operation(
                        format!("{name}.send"),
                        "send",
                        &topic_channel(topic),
                        description,
                    );
                }
            }
        }
    }
    for (name, subscriber) in &flows.subscribers {
        let inputs: Vec<String> = match &subscriber.input {
            SubscriberInput::Queue(queue) => {
                queue_channels.get(queue).cloned().into_iter().collect()
            }
            SubscriberInput::Topics(patterns) => {
                let mut inputs = BTreeSet::new();
                for pattern in patterns {
                    for (channel_key, channel) in &channels {
                        let queue = queue_channels.values().any(|q| q == channel_key);
                        if !queue
                            && (pattern.as_str() == channel.address
                                || pattern.matches(&channel.address))
                        {
                            inputs.insert(channel_key.clone());
                        }
                    }
                }
                inputs.into_iter().collect()
            }
        };
        for channel_key in inputs {
            let description = format!(
                "Subscriber `{name}` (group `{}`) handles `{}`.",
                subscriber.group, channels[&channel_key].address
            );
            operation(
                format!("{name}.receive.{channel_key}"),
                "receive",
                &channel_key,
                description,
            );
        }
        for topic in &subscriber.emits {
            let description = format!("Subscriber `{name}`'s handler emits on `{topic}`.");
            operation(
                format!("{name}.send.{}", key(topic)),
                "send",
                &topic_channel(topic),
                description,
            );
        }
    }
    for (name, relay) in &flows.relays {
        if let Some(channel_key) = queue_channels.get(&relay.to) {
            let description = format!(
                "Relay `{name}` moves events matching `{}` into queue `{}`.",
                relay.from.as_str(),
                relay.to
            );
            operation(format!("{name}.send"), "send", channel_key, description);
        }
    }

    let names: Vec<&str> = flows.files.iter().map(|f| f.name.as_str()).collect();
    let mut document = json!({
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": names.join(", "),
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!("The events of the flows {}, as edaflow runs them: each topic and queue is a channel.", names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")),
        },
        "defaultContentType": "application/json",
        "channels": channel_docs,
        "operations": operations,
        "components": {"messages": messages}
    });
    if !schemas.is_empty() {
        document["components"]["schemas"] = Value::Object(schemas);
    }
    document
}
