//! The event envelope: CloudEvents 1.0 in JSON structured mode, with the `correlationid`
//! and `causationid` extensions. The topic of an event is its `type`.
//!
//! This module owns identity (time-sortable ULIDs), lineage (who caused what) and the wire
//! form. It knows nothing about brokers, flows or scripts.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// The CloudEvents version edaflow speaks.
pub const SPEC_VERSION: &str = "1.0";

/// Bounds on what clients and handlers may put in an event. Ingest refuses events past
/// them (400), handlers' emits fail the run, and every broker reads back whatever stays
/// within them (serde_json reads at most 128 levels; an envelope adds one).
pub mod limits {
    /// Bytes in an event id, a correlation id or a causation id.
    pub const MAX_ID_BYTES: usize = 256;
    /// Bytes in a topic (or queue) name, wherever one is written: flow files, patterns,
    /// ingest URLs, emits and stored entries.
    pub const MAX_TOPIC_BYTES: usize = 255;
    /// Bytes in the `source` attribute.
    pub const MAX_SOURCE_BYTES: usize = 1024;
    /// Bytes in an extension attribute's name.
    pub const MAX_EXTENSION_NAME_BYTES: usize = 64;
    /// Bytes in an extension attribute's value (as JSON text).
    pub const MAX_EXTENSION_VALUE_BYTES: usize = 4096;
    /// Extension attributes on one event.
    pub const MAX_EXTENSIONS: usize = 64;
    /// Nesting of arrays and objects in an event's `data` (`{"a": 1}` is 1 deep).
    pub const MAX_DATA_DEPTH: usize = 64;
}

/// The extension attributes of a dead letter: why and where its event failed (see
/// `runtime::dead_letter`, which builds them).
pub mod dead_letter {
    /// Why the event was dead-lettered (the error's text).
    pub const REASON: &str = "deadletterreason";
    /// How many runs were tried.
    pub const ATTEMPTS: &str = "deadletterattempts";
    /// The component that gave up (a subscriber or a relay).
    pub const SUBSCRIBER: &str = "deadlettersubscriber";
    /// The topic the event came from.
    pub const TOPIC: &str = "deadlettertopic";
    /// The id of the original event.
    pub const ID: &str = "deadletterid";
    /// The queue the event came from, when it came from one.
    pub const QUEUE: &str = "deadletterqueue";
}

/// How deeply arrays and objects nest in `value` (a scalar is 0 deep, `[]` and `{}` 1).
/// Iterative, so a value nested past any limit is measured without recursion.
pub fn data_depth(value: &serde_json::Value) -> usize {
    let mut deepest = 0;
    let mut stack: Vec<(&serde_json::Value, usize)> = vec![(value, 0)];
    while let Some((value, depth)) = stack.pop() {
        match value {
            serde_json::Value::Array(items) => {
                deepest = deepest.max(depth + 1);
                stack.extend(items.iter().map(|v| (v, depth + 1)));
            }
            serde_json::Value::Object(map) => {
                deepest = deepest.max(depth + 1);
                stack.extend(map.values().map(|v| (v, depth + 1)));
            }
            _ => {}
        }
    }
    deepest
}

/// One event. Cheap to share: brokers hand out `Arc<Event>`.
///
/// Binary data (which came as CloudEvents' `data_base64`) is kept as the `data_base64`
/// attribute in `extensions`, with `data` null; the envelope then leaves `data` out, as
/// the JSON format requires of an event with `data_base64`.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Always "1.0".
    pub specversion: String,
    /// A ULID: unique and sortable by creation time.
    pub id: String,
    /// Who produced it, e.g. `edaflow://orders/api`.
    pub source: String,
    /// The topic.
    pub topic: String,
    /// Creation time, RFC 3339 on the wire.
    pub time: SystemTime,
    /// `application/json` for events edaflow creates; a client's own type for what it
    /// sent (binary data: `application/octet-stream` unless it said otherwise).
    pub datacontenttype: String,
    /// The payload.
    pub data: serde_json::Value,
    /// The id of the first event of the journey this event belongs to.
    pub correlation_id: String,
    /// The id of the event whose handling emitted this one (absent for the first).
    pub causation_id: Option<String>,
    /// How many events of its journey lie between this one and the journey's first
    /// (0 for the first). Handlers' emits are refused past the flow set's `max_hops`, so a
    /// loop of handlers emitting to each other ends in a dead letter.
    pub hops: u32,
    /// Other CloudEvents extension attributes (e.g. the dead-letter details).
    pub extensions: BTreeMap<String, serde_json::Value>,
    /// The payload exactly as it arrived, when it came as bare bytes (the article's curl
    /// body, a Redis pub/sub message, a plain-list item). Not part of the envelope (never
    /// serialised) and ignored by `==`: it only lets the article's wire format and output
    /// repeat a client's bytes unchanged instead of re-writing `data`.
    pub raw: RawPayload,
}

/// See `Event::raw`. Always equal to any other, so two events differ by their envelope only.
#[derive(Clone, Debug, Default)]
pub struct RawPayload(pub Option<Arc<str>>);

impl PartialEq for RawPayload {
    fn eq(&self, _: &RawPayload) -> bool {
        true
    }
}

impl RawPayload {
    /// The bytes as they arrived, if known.
    pub fn get(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

/// The extension attribute carrying `Event::hops`.
pub const HOPS_EXTENSION: &str = "edaflowhops";

/// The extension attribute carrying a query's request id: `POST /query/…` sets it, the
/// subscriber that handles the query replies to it, and a client may not set it.
pub const REPLY_TO_EXTENSION: &str = "replyto";

/// The attribute carrying binary data as base64 (CloudEvents' JSON format), held in
/// `Event::extensions`.
pub const DATA_BASE64: &str = "data_base64";

fn is_zero(hops: &u32) -> bool {
    *hops == 0
}

fn json_content_type() -> String {
    "application/json".to_owned()
}

/// Read by hand rather than derived: a derived reader of a struct with a flattened map
/// buffers every field before it looks at any, which made reading an event a broker
/// carries cost twice what it does here. It reads what the derived one did: the envelope's
/// attributes (`specversion`, `id`, `source`, `type`, `time` and `correlationid` required;
/// `datacontenttype`, `data` and `causationid` optional), every other attribute into
/// `extensions`, and no attribute twice.
impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Event, D::Error> {
        d.deserialize_map(EventVisitor)
    }
}

/// An attribute name: one of the envelope's, or an extension's.
enum Attribute {
    SpecVersion,
    Id,
    Source,
    Type,
    Time,
    DataContentType,
    Data,
    CorrelationId,
    CausationId,
    Hops,
    Extension(String),
}

impl<'de> Deserialize<'de> for Attribute {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Attribute, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = Attribute;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an attribute name")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Attribute, E> {
                Ok(match name {
                    "specversion" => Attribute::SpecVersion,
                    "id" => Attribute::Id,
                    "source" => Attribute::Source,
                    "type" => Attribute::Type,
                    "time" => Attribute::Time,
                    "datacontenttype" => Attribute::DataContentType,
                    "data" => Attribute::Data,
                    "correlationid" => Attribute::CorrelationId,
                    "causationid" => Attribute::CausationId,
                    HOPS_EXTENSION => Attribute::Hops,
                    other => Attribute::Extension(other.to_owned()),
                })
            }
        }
        d.deserialize_identifier(Name)
    }
}

struct EventVisitor;

impl<'de> serde::de::Visitor<'de> for EventVisitor {
    type Value = Event;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a CloudEvents JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Event, A::Error> {
        use serde::de::Error;
        /// Sets a slot read once; a second value for it is an error.
        fn once<T, E: Error>(slot: &mut Option<T>, value: T, name: &'static str) -> Result<(), E> {
            if slot.is_some() {
                return Err(E::duplicate_field(name));
            }
            *slot = Some(value);
            Ok(())
        }
        let (mut specversion, mut id, mut source, mut topic) = (None, None, None, None);
        let (mut time, mut datacontenttype, mut data) = (None, None, None);
        let (mut correlation_id, mut causation_id, mut hops) = (None, None, None);
        let mut extensions = BTreeMap::new();
        while let Some(attribute) = map.next_key::<Attribute>()? {
            match attribute {
                Attribute::SpecVersion => once(&mut specversion, map.next_value()?, "specversion")?,
                Attribute::Id => once(&mut id, map.next_value()?, "id")?,
                Attribute::Source => once(&mut source, map.next_value()?, "source")?,
                Attribute::Type => once(&mut topic, map.next_value()?, "type")?,
                Attribute::Time => {
                    let at = map.next_value::<rfc3339::Time>()?;
                    once(&mut time, at.0, "time")?;
                }
                Attribute::DataContentType => {
                    once(&mut datacontenttype, map.next_value()?, "datacontenttype")?;
                }
                Attribute::Data => once(&mut data, map.next_value()?, "data")?,
                Attribute::CorrelationId => {
                    once(&mut correlation_id, map.next_value()?, "correlationid")?;
                }
                Attribute::CausationId => {
                    once(
                        &mut causation_id,
                        map.next_value::<Option<String>>()?,
                        "causationid",
                    )?;
                }
                Attribute::Hops => once(&mut hops, map.next_value::<u32>()?, HOPS_EXTENSION)?,
                Attribute::Extension(name) => {
                    extensions.insert(name, map.next_value()?);
                }
            }
        }
        Ok(Event {
            specversion: specversion.ok_or_else(|| A::Error::missing_field("specversion"))?,
            id: id.ok_or_else(|| A::Error::missing_field("id"))?,
            source: source.ok_or_else(|| A::Error::missing_field("source"))?,
            topic: topic.ok_or_else(|| A::Error::missing_field("type"))?,
            time: time.ok_or_else(|| A::Error::missing_field("time"))?,
            datacontenttype: datacontenttype.unwrap_or_else(json_content_type),
            data: data.unwrap_or_default(),
            correlation_id: correlation_id
                .ok_or_else(|| A::Error::missing_field("correlationid"))?,
            causation_id: causation_id.flatten(),
            hops: hops.unwrap_or(0),
            extensions,
            raw: RawPayload::default(),
        })
    }
}

/// A fresh time-sortable id.
pub fn new_id() -> String {
    ulid::Ulid::new().to_string()
}

impl Event {
    /// The first event of a journey: it is its own correlation id.
    pub fn new(
        topic: impl Into<String>,
        source: impl Into<String>,
        data: serde_json::Value,
    ) -> Event {
        let id = new_id();
        Event {
            specversion: SPEC_VERSION.to_owned(),
            correlation_id: id.clone(),
            id,
            source: source.into(),
            topic: topic.into(),
            time: SystemTime::now(),
            datacontenttype: json_content_type(),
            data,
            causation_id: None,
            hops: 0,
            extensions: BTreeMap::new(),
            raw: RawPayload::default(),
        }
    }

    /// An event caused by handling `self`: it inherits the correlation id and the trace
    /// context (`traceparent`, `tracestate`), and records `self` as its cause.
    pub fn caused(
        &self,
        topic: impl Into<String>,
        source: impl Into<String>,
        data: serde_json::Value,
    ) -> Event {
        let mut child = Event::new(topic, source, data);
        child.correlation_id = self.correlation_id.clone();
        child.causation_id = Some(self.id.clone());
        child.hops = self.hops.saturating_add(1);
        crate::tracecontext::inherit(&self.extensions, &mut child.extensions);
        child
    }

    /// About how many bytes the event holds in memory: its strings, its data and a fixed
    /// overhead per value. What byte budgets count (group buffers, taps); one walk of
    /// `data`, which costs little next to making the event.
    pub fn approx_bytes(&self) -> usize {
        const ENVELOPE: usize = 256;
        const PER_VALUE: usize = 32;
        let strings = self.id.len()
            + self.source.len()
            + self.topic.len()
            + self.correlation_id.len()
            + self.causation_id.as_ref().map_or(0, String::len)
            + self.raw.get().map_or(0, str::len);
        let mut data = 0;
        let mut stack: Vec<&serde_json::Value> = vec![&self.data];
        stack.extend(self.extensions.values());
        data += self.extensions.keys().map(String::len).sum::<usize>();
        while let Some(value) = stack.pop() {
            data += PER_VALUE;
            match value {
                serde_json::Value::String(s) => data += s.len(),
                serde_json::Value::Array(items) => stack.extend(items),
                serde_json::Value::Object(map) => {
                    for (key, value) in map {
                        data += key.len() + PER_VALUE;
                        stack.push(value);
                    }
                }
                _ => {}
            }
        }
        ENVELOPE + strings + data
    }

    /// The payload as bytes for the article's wire format: the raw bytes it arrived as,
    /// else `data` as compact JSON.
    pub fn raw_payload(&self) -> String {
        match self.raw.get() {
            Some(raw) => raw.to_owned(),
            None => self.data.to_string(),
        }
    }

    /// The payload as the article's consumer prints it: the raw bytes it arrived as, else
    /// `data` written the way the article shows JSON.
    pub fn article_payload(&self) -> String {
        match self.raw.get() {
            Some(raw) => raw.to_owned(),
            None => to_article_json(&self.data),
        }
    }

    /// The structured-mode JSON form.
    pub fn to_json(&self) -> String {
        // Serialising a struct of strings and a `serde_json::Value` cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The JSON a broker stores: `to_json`'s, with the time to the nanosecond (the wire
    /// form keeps milliseconds), so that the event read back equals the one written.
    /// Written in one pass into a buffer sized for a typical event: it is made for every
    /// event a remote broker carries.
    pub fn to_stored_json(&self) -> String {
        let mut out = Vec::with_capacity(384);
        // As `to_json`: this cannot fail, and serde_json writes UTF-8 only.
        if serde_json::to_writer(&mut out, &Envelope::of(self, true)).is_err() {
            return self.to_json();
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// Whether the event's data is binary (held as `data_base64`).
    pub fn has_binary_data(&self) -> bool {
        self.data.is_null() && self.extensions.contains_key(DATA_BASE64)
    }
}

impl Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Envelope::of(self, false).serialize(s)
    }
}

/// `Event`'s envelope, borrowed: what both its wire form (time to the millisecond) and its
/// stored form (to the nanosecond, see `Event::to_stored_json`) write.
#[derive(Serialize)]
struct Envelope<'a> {
    specversion: &'a str,
    id: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    topic: &'a str,
    #[serde(serialize_with = "rfc3339::serialize_precise")]
    time: (SystemTime, bool),
    datacontenttype: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a serde_json::Value>,
    #[serde(rename = "correlationid")]
    correlation_id: &'a str,
    #[serde(rename = "causationid", skip_serializing_if = "Option::is_none")]
    causation_id: Option<&'a str>,
    #[serde(rename = "edaflowhops", skip_serializing_if = "is_zero")]
    hops: u32,
    #[serde(flatten)]
    extensions: &'a BTreeMap<String, serde_json::Value>,
}

impl<'a> Envelope<'a> {
    fn of(event: &'a Event, nanos: bool) -> Envelope<'a> {
        Envelope {
            specversion: &event.specversion,
            id: &event.id,
            source: &event.source,
            topic: &event.topic,
            time: (event.time, nanos),
            datacontenttype: &event.datacontenttype,
            data: (!event.has_binary_data()).then_some(&event.data),
            correlation_id: &event.correlation_id,
            causation_id: event.causation_id.as_deref(),
            hops: event.hops,
            extensions: &event.extensions,
        }
    }
}

/// Writes `value` the way the article's consumer prints payloads:
/// `{"order_id": 123, "customer": "John Doe", "total": 49.99}`.
pub fn to_article_json(value: &serde_json::Value) -> String {
    let mut out = Vec::with_capacity(64);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, SpacedFormatter);
    // Writing into a Vec cannot fail and a Value always serialises.
    if value.serialize(&mut ser).is_err() {
        return value.to_string();
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Compact JSON with a space after `:` and `,`, as Python's `json.dumps` writes it.
struct SpacedFormatter;

impl serde_json::ser::Formatter for SpacedFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
}

mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    /// A time to the millisecond, or to the nanosecond when the flag says so.
    pub fn serialize_precise<S: Serializer>(
        (time, nanos): &(SystemTime, bool),
        s: S,
    ) -> Result<S::Ok, S::Error> {
        if *nanos {
            s.collect_str(&humantime::format_rfc3339_nanos(*time))
        } else {
            s.collect_str(&humantime::format_rfc3339_millis(*time))
        }
    }

    /// A time read from its RFC 3339 text where it lies (no copy of the text).
    pub struct Time(pub SystemTime);

    impl<'de> Deserialize<'de> for Time {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Time, D::Error> {
            struct Text;
            impl serde::de::Visitor<'_> for Text {
                type Value = Time;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an RFC 3339 time")
                }
                fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Time, E> {
                    humantime::parse_rfc3339_weak(text)
                        .map(Time)
                        .map_err(E::custom)
                }
            }
            d.deserialize_str(Text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn data_depth_counts_nested_arrays_and_objects() {
        assert_eq!(data_depth(&json!(1)), 0);
        assert_eq!(data_depth(&json!({})), 1);
        assert_eq!(data_depth(&json!({"a": [1, {"b": []}], "c": 2})), 4);
        let mut deep = json!(null);
        for _ in 0..100_000 {
            deep = serde_json::Value::Array(vec![deep]);
        }
        assert_eq!(data_depth(&deep), 100_000);
        // Dropped without recursion either: serde_json's own drop of a value this deep
        // would overflow a thread's stack.
        let mut items = vec![deep];
        while let Some(value) = items.pop() {
            if let serde_json::Value::Array(inner) = value {
                items.extend(inner);
            }
        }
    }

    #[test]
    fn article_json_matches_the_article() {
        let data = json!({"order_id": 123, "customer": "John Doe", "total": 49.99});
        assert_eq!(
            to_article_json(&data),
            r#"{"order_id": 123, "customer": "John Doe", "total": 49.99}"#
        );
        assert_eq!(to_article_json(&json!([1, [2, 3]])), "[1, [2, 3]]");
    }

    #[test]
    fn caused_events_share_the_correlation_id() {
        let first = Event::new("orderCreated", "test", json!({}));
        assert_eq!(first.correlation_id, first.id);
        let second = first.caused("inventoryReserved", "test", json!({}));
        let third = second.caused("paymentCharged", "test", json!({}));
        assert_eq!(third.correlation_id, first.id);
        assert_eq!(third.causation_id.as_deref(), Some(second.id.as_str()));
        assert!(second.id > first.id || second.id.len() == first.id.len());
    }

    /// `to_stored_json` writes `to_json`'s envelope (same fields, same order) with only the
    /// time more precise, and reads back as the very event written.
    #[test]
    fn stored_json_is_the_wire_json_with_the_time_to_the_nanosecond() {
        let first = Event::new(
            "orderCreated",
            "edaflow://orders/api",
            json!({"a": [1, "x\"y"]}),
        );
        let mut second = first.caused("inventoryReserved", "edaflow://orders/reserve", json!(null));
        second
            .extensions
            .insert("edaflowgeneration".into(), json!(2));
        second
            .extensions
            .insert("deadletterreason".into(), json!("it \"failed\""));
        for event in [first, second] {
            let stored = event.to_stored_json();
            let millis = humantime::format_rfc3339_millis(event.time).to_string();
            let nanos = humantime::format_rfc3339_nanos(event.time).to_string();
            assert_eq!(
                stored,
                event.to_json().replacen(&millis, &nanos, 1),
                "{stored}"
            );
            let back: Event = serde_json::from_str(&stored).unwrap();
            assert_eq!(back, event);
            assert_eq!(back.time, event.time);
        }
    }

    #[test]
    fn events_are_read_with_defaults_extensions_and_strict_attributes() {
        let text = r#"{"specversion":"1.0","id":"a","source":"s","type":"t",
            "time":"2026-11-27T06:03:08.943542046Z","correlationid":"a","causationid":null,
            "x\u0061":{"deep":[1]},"data":{"k":"v"}}"#;
        let event: Event = serde_json::from_str(text).unwrap();
        assert_eq!(event.topic, "t");
        assert_eq!(event.datacontenttype, "application/json");
        assert_eq!(event.causation_id, None);
        assert_eq!(event.data, json!({"k": "v"}));
        assert_eq!(event.extensions.get("xa"), Some(&json!({"deep": [1]})));
        assert_eq!(
            humantime::format_rfc3339_nanos(event.time).to_string(),
            "2026-11-27T06:03:08.943542046Z"
        );
        // Read from a `serde_json::Value` too (flow tests and fixtures do).
        let value: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::from_value::<Event>(value).unwrap(), event);

        let missing = serde_json::from_str::<Event>(r#"{"specversion":"1.0","id":"a"}"#);
        assert!(missing
            .unwrap_err()
            .to_string()
            .contains("missing field `source`"));
        let twice =
            serde_json::from_str::<Event>(&text.replace(r#""id":"a","#, r#""id":"a","id":"b","#));
        assert!(twice
            .unwrap_err()
            .to_string()
            .contains("duplicate field `id`"));
        let bad_time = serde_json::from_str::<Event>(&text.replace("2026-11-27T", "yesterday "));
        assert!(bad_time.is_err());
        assert!(serde_json::from_str::<Event>("[1]").is_err());
    }

    #[test]
    fn envelope_round_trips_as_cloudevents() {
        let mut event = Event::new("orderCreated", "edaflow://orders/api", json!({"a": 1}));
        event
            .extensions
            .insert("deadletterattempts".into(), json!(3));
        let text = event.to_json();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["specversion"], "1.0");
        assert_eq!(value["type"], "orderCreated");
        assert_eq!(value["correlationid"], event.id.as_str());
        assert!(value.get("causationid").is_none());
        assert_eq!(value["deadletterattempts"], 3);
        let back: Event = serde_json::from_str(&text).unwrap();
        assert_eq!(back.id, event.id);
        assert_eq!(back.extensions, event.extensions);
    }
}
