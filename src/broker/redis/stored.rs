//! Reading back what lies in Redis, and what becomes of an entry that cannot be read.
//!
//! Only edaflow writes its streams and queues, but anything can write to Redis: a buggy
//! tool, an operator with `redis-cli`, a version that wrote another format. An entry is
//! handed out only when it holds an event (field `e`, CloudEvents JSON) that parses and
//! keeps the bounds every broker keeps (`event::limits`: ids, topic and source lengths,
//! nesting of `data`), so that whatever a handler makes of it can be stored and read back
//! again. Anything else (no `e`, not JSON, not UTF-8, wrong types, nested too deep, over
//! `MAX_EVENT_BYTES`) becomes a dead letter (`dead_letter`): accepted means handled or
//! dead-lettered, never skipped with only a log line.
//!
//! This module owns those checks and the shape of such a dead letter; the consumer commits
//! it with the entry's ack.

use crate::event::{limits, Event};

/// The largest event JSON read back (far above what ingest or a handler can make).
pub(super) const MAX_EVENT_BYTES: usize = 64 << 20;
/// The most bytes of one field a dead letter shows.
const EXCERPT_BYTES: usize = 16 << 10;
/// The most fields a dead letter shows.
const MOST_FIELDS: usize = 32;

/// The event stored as `json`, or why it cannot be handed out.
pub(super) fn read(json: &[u8]) -> Result<Event, String> {
    if json.len() > MAX_EVENT_BYTES {
        return Err(format!(
            "its event is {} bytes (at most {MAX_EVENT_BYTES})",
            json.len()
        ));
    }
    // UTF-8 checked in one fast pass, then read without checking each string again.
    let parsed = match std::str::from_utf8(json) {
        Ok(text) => serde_json::from_str::<Event>(text),
        Err(_) => serde_json::from_slice::<Event>(json),
    };
    let event = parsed.map_err(|e| format!("its event cannot be read: {e}"))?;
    within_bounds(&event, json)?;
    Ok(event)
}

/// Whether an event keeps the bounds every broker reads back (see the module docs).
fn within_bounds(event: &Event, json: &[u8]) -> Result<(), String> {
    let long = |what: &str, len: usize, most: usize| {
        (len > most).then(|| format!("its {what} is {len} bytes (at most {most})"))
    };
    let too_long = long("id", event.id.len(), limits::MAX_ID_BYTES)
        .or_else(|| long("topic", event.topic.len(), limits::MAX_TOPIC_BYTES))
        .or_else(|| long("source", event.source.len(), limits::MAX_SOURCE_BYTES))
        .or_else(|| {
            long(
                "correlation id",
                event.correlation_id.len(),
                limits::MAX_ID_BYTES,
            )
        })
        .or_else(|| {
            event
                .causation_id
                .as_ref()
                .and_then(|c| long("causation id", c.len(), limits::MAX_ID_BYTES))
        });
    if let Some(reason) = too_long {
        return Err(reason);
    }
    // Data can nest past the limit only if the text opens that many arrays or objects:
    // most events are measured by this count alone.
    let opened = json.iter().filter(|b| matches!(b, b'[' | b'{')).count();
    if opened > limits::MAX_DATA_DEPTH {
        let depth = crate::event::data_depth(&event.data);
        if depth > limits::MAX_DATA_DEPTH {
            return Err(format!(
                "its data is nested {depth} levels deep (at most {})",
                limits::MAX_DATA_DEPTH
            ));
        }
    }
    Ok(())
}

/// At most `most` bytes of `bytes` as text (invalid UTF-8 shown as U+FFFD), saying how
/// many were left out.
pub(super) fn excerpt(bytes: &[u8], most: usize) -> String {
    if bytes.len() <= most {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    let mut cut = String::from_utf8_lossy(&bytes[..most]).into_owned();
    cut.push_str(&format!("… ({} more bytes)", bytes.len() - most));
    cut
}

/// The dead letter of an entry that cannot be handed out: on `dead.{name}` (the group, or
/// the queue when `is_queue`), its data the entry's id and fields as text (at most
/// `MOST_FIELDS` fields, `EXCERPT_BYTES` each), with why, the entry id (as
/// `deadletterid`), and the topic or queue it came from.
pub(super) fn dead_letter(
    name: &str,
    is_queue: bool,
    entry: &str,
    topic: Option<&str>,
    fields: &redis::Value,
    reason: &str,
) -> Event {
    use crate::event::dead_letter as attr;
    let mut shown = serde_json::Map::new();
    let pairs = match fields {
        redis::Value::Array(items) => items.as_slice(),
        _ => &[],
    };
    for pair in pairs.chunks(2).take(MOST_FIELDS) {
        let [field, value] = pair else { continue };
        shown.insert(
            excerpt(&bytes_of(field), 256),
            serde_json::Value::String(excerpt(&bytes_of(value), EXCERPT_BYTES)),
        );
    }
    let mut data = serde_json::json!({ "entry": entry, "fields": shown });
    if pairs.len() / 2 > MOST_FIELDS {
        data["fields_left_out"] = (pairs.len() / 2 - MOST_FIELDS).into();
    }
    let kind = if is_queue { "queue" } else { "group" };
    let mut dead = Event::new(
        format!("dead.{name}"),
        format!("edaflow://redis/{kind}/{name}"),
        data,
    );
    let ext = &mut dead.extensions;
    ext.insert(
        attr::REASON.into(),
        format!("undecodable stored entry: {reason}").into(),
    );
    ext.insert(attr::ATTEMPTS.into(), 0.into());
    ext.insert(attr::ID.into(), entry.into());
    if is_queue {
        ext.insert(attr::QUEUE.into(), name.into());
    } else {
        ext.insert(attr::SUBSCRIBER.into(), name.into());
    }
    if let Some(topic) = topic {
        ext.insert(attr::TOPIC.into(), topic.into());
    }
    dead
}

fn bytes_of(value: &redis::Value) -> Vec<u8> {
    match value {
        redis::Value::BulkString(bytes) => bytes.clone(),
        redis::Value::SimpleString(s) => s.clone().into_bytes(),
        redis::Value::Int(n) => n.to_string().into_bytes(),
        other => format!("{other:?}").into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event_json(data: serde_json::Value) -> String {
        Event::new("job", "test", data).to_stored_json()
    }

    #[test]
    fn an_event_within_bounds_is_read() {
        let json = event_json(serde_json::json!({"n": 1, "deep": [[[[1]]]]}));
        let event = read(json.as_bytes()).expect("readable");
        assert_eq!(event.topic, "job");
    }

    #[test]
    fn garbage_wrong_types_and_deep_data_are_refused_with_a_reason() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not json".to_vec(), "cannot be read"),
            (vec![0xff, 0xfe, b'{'], "cannot be read"),
            (
                br#"{"specversion":"1.0","id":5,"source":"s","type":"job","time":"2024-01-01T00:00:00Z","correlationid":"c"}"#
                    .to_vec(),
                "cannot be read",
            ),
            (b"[".repeat(300), "cannot be read"),
        ];
        for (json, says) in cases {
            let reason = read(&json).expect_err("refused");
            assert!(reason.contains(says), "{reason}");
        }
        let mut deep = serde_json::json!(1);
        for _ in 0..80 {
            deep = serde_json::json!([deep]);
        }
        let reason = read(event_json(deep).as_bytes()).expect_err("too deep");
        assert!(reason.contains("nested 80 levels"), "{reason}");
        let mut long = Event::new("job", "test", serde_json::Value::Null);
        long.id = "x".repeat(300);
        let reason = read(long.to_stored_json().as_bytes()).expect_err("long id");
        assert!(reason.contains("id is 300 bytes"), "{reason}");
    }

    #[test]
    fn a_dead_letter_shows_the_fields_bounded_and_reads_back() {
        let fields = redis::Value::Array(vec![
            redis::Value::BulkString(b"e".to_vec()),
            redis::Value::BulkString(vec![b'x'; 100_000]),
            redis::Value::BulkString(b"junk".to_vec()),
            redis::Value::BulkString(vec![0xff, 0x00, 0x41]),
        ]);
        let dead = dead_letter("work", false, "1-1", Some("job"), &fields, "why");
        assert_eq!(dead.topic, "dead.work");
        assert_eq!(dead.extensions["deadletterid"], "1-1");
        assert_eq!(dead.extensions["deadlettertopic"], "job");
        assert_eq!(dead.extensions["deadlettersubscriber"], "work");
        assert!(dead.extensions["deadletterreason"]
            .as_str()
            .unwrap()
            .contains("why"));
        let shown = dead.data["fields"]["e"].as_str().unwrap();
        assert!(
            shown.len() < 17_000 && shown.ends_with("(83616 more bytes)"),
            "{}",
            shown.len()
        );
        assert_eq!(dead.data["fields"]["junk"], "\u{fffd}\u{0}A");
        // What it shows is itself an event any broker reads back.
        let again = read(dead.to_stored_json().as_bytes()).expect("readable");
        assert_eq!((&again.id, &again.data), (&dead.id, &dead.data));
        let queued = dead_letter("jobs", true, "2-1", None, &fields, "why");
        assert_eq!(queued.extensions["deadletterqueue"], "jobs");
    }

    #[test]
    fn an_excerpt_says_what_it_left_out() {
        assert_eq!(excerpt(b"abc", 5), "abc");
        assert_eq!(excerpt(b"abcdef", 3), "abc… (3 more bytes)");
    }
}
