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

/// One event. Cheap to share: brokers hand out `Arc<Event>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Always "1.0".
    pub specversion: String,
    /// A ULID: unique and sortable by creation time.
    pub id: String,
    /// Who produced it, e.g. `edaflow://orders/api`.
    pub source: String,
    /// The topic.
    #[serde(rename = "type")]
    pub topic: String,
    /// Creation time, RFC 3339 on the wire.
    #[serde(with = "rfc3339")]
    pub time: SystemTime,
    /// Always `application/json` for events edaflow creates.
    #[serde(default = "json_content_type")]
    pub datacontenttype: String,
    /// The payload.
    #[serde(default)]
    pub data: serde_json::Value,
    /// The id of the first event of the journey this event belongs to.
    #[serde(rename = "correlationid")]
    pub correlation_id: String,
    /// The id of the event whose handling emitted this one (absent for the first).
    #[serde(
        rename = "causationid",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub causation_id: Option<String>,
    /// Other CloudEvents extension attributes (e.g. the dead-letter details).
    #[serde(flatten)]
    pub extensions: BTreeMap<String, serde_json::Value>,
    /// The payload exactly as it arrived, when it came as bare bytes (the article's curl
    /// body, a Redis pub/sub message, a plain-list item). Not part of the envelope (never
    /// serialised) and ignored by `==`: it only lets the article's wire format and output
    /// repeat a client's bytes unchanged instead of re-writing `data`.
    #[serde(skip)]
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

fn json_content_type() -> String {
    "application/json".to_owned()
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
            extensions: BTreeMap::new(),
            raw: RawPayload::default(),
        }
    }

    /// An event caused by handling `self`: it inherits the correlation id and records
    /// `self` as its cause.
    pub fn caused(
        &self,
        topic: impl Into<String>,
        source: impl Into<String>,
        data: serde_json::Value,
    ) -> Event {
        let mut child = Event::new(topic, source, data);
        child.correlation_id = self.correlation_id.clone();
        child.causation_id = Some(self.id.clone());
        child
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

    pub fn serialize<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*time))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
