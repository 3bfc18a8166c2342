//! Reading an event from a request body (and headers), as the CloudEvents 1.0 spec and its
//! HTTP binding say: plain JSON (the article's curl: the body is the data), structured
//! mode (`application/cloudevents+json`: the body is the envelope) and binary mode (the
//! body is the data, the attributes are `ce-*` headers).
//!
//! Checked here, before anything is published:
//! - `specversion` is `1.0`; `type` is the URL's topic; `id`, `source`, `correlationid` and
//!   `causationid` are non-empty strings within `event::limits`;
//! - `time` is RFC 3339 with any offset (normalised to UTC, see `http::rfc3339`);
//! - extension names are 1 to 64 lowercase letters and digits, their values strings,
//!   numbers or booleans within 4096 bytes, at most 64 of them; `edaflowhops` is no
//!   extension but the event's hop count (a non-negative integer);
//! - `data` is nested at most `MAX_DATA_DEPTH` deep (checked on the bytes before parsing,
//!   so a deeper body costs no recursion).
//!
//! Binary data is kept byte for byte: `data_base64` (structured) or a non-JSON body
//! (binary mode) becomes the event's `data_base64` attribute, with `data` absent and the
//! client's `datacontenttype` (`application/octet-stream` when none). When the
//! `datacontenttype` is JSON, `data_base64` is decoded and its JSON becomes `data`, the
//! same event as one sent with `data`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use axum::http::HeaderMap;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

use crate::event::{
    data_depth, limits, new_id, Event, RawPayload, DATA_BASE64, HOPS_EXTENSION, REPLY_TO_EXTENSION,
    SPEC_VERSION,
};
use crate::http::error::{ApiError, LimitedField};
use crate::http::{base64, rfc3339};

/// The `datacontenttype` of binary data that came without one.
const OCTET_STREAM: &str = "application/octet-stream";

/// The article's plain JSON: `bytes` are the data.
pub(crate) fn plain(topic: String, source: &str, bytes: &[u8]) -> Result<Event, ApiError> {
    let data = parse_data(bytes)?;
    let mut event = Event::new(topic, source, data);
    // Valid JSON, so valid UTF-8: kept so the article's wire repeats it unchanged.
    event.raw = RawPayload(std::str::from_utf8(bytes).ok().map(Arc::from));
    Ok(event)
}

/// Whether a media type (parameters allowed) is JSON: `application/json`, `text/json` or
/// any `…/…+json`.
pub(crate) fn is_json_type(content_type: &str) -> bool {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || media == "text/json" || media.ends_with("+json")
}

/// How deeply arrays and objects nest in the JSON text `bytes` (outside strings), counted
/// without parsing and given up past `limit` (then `limit + 1`).
fn nesting(bytes: &[u8], limit: usize) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
                if deepest > limit {
                    return deepest;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// JSON data, refused past `MAX_DATA_DEPTH` before it is parsed.
fn parse_data(bytes: &[u8]) -> Result<serde_json::Value, ApiError> {
    if nesting(bytes, limits::MAX_DATA_DEPTH) > limits::MAX_DATA_DEPTH {
        return Err(too_deep());
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::InvalidJson {
        detail: e.to_string(),
    })
}

fn too_deep() -> ApiError {
    ApiError::DataTooDeep {
        limit: limits::MAX_DATA_DEPTH,
    }
}

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::InvalidEvent {
        detail: detail.into(),
    }
}

/// A string attribute edaflow keeps: non-empty and at most `limit` bytes.
fn bounded(
    name: &str,
    value: String,
    field: LimitedField,
    limit: usize,
) -> Result<String, ApiError> {
    if value.is_empty() {
        return Err(invalid(format!("`{name}` must not be empty")));
    }
    if value.len() > limit {
        return Err(ApiError::TooLong { field, limit });
    }
    Ok(value)
}

/// An extension attribute's name, as the spec has it.
fn check_extension_name(name: &str) -> Result<(), ApiError> {
    if name.len() > limits::MAX_EXTENSION_NAME_BYTES {
        return Err(ApiError::TooLong {
            field: LimitedField::ExtensionName,
            limit: limits::MAX_EXTENSION_NAME_BYTES,
        });
    }
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(ApiError::InvalidExtensionName {
            name: name.to_owned(),
        });
    }
    if name == REPLY_TO_EXTENSION {
        return Err(invalid(format!(
            "`{REPLY_TO_EXTENSION}` is edaflow's own (the reply address of a query); a client cannot set it"
        )));
    }
    Ok(())
}

fn check_extension_value(name: &str, value: &serde_json::Value) -> Result<(), ApiError> {
    let text_len = match value {
        serde_json::Value::String(s) => s.len() + 2,
        serde_json::Value::Number(n) => n.to_string().len(),
        serde_json::Value::Bool(_) => 5,
        _ => {
            return Err(ApiError::InvalidExtensionValue {
                name: name.to_owned(),
                detail: "extension values are strings, numbers or booleans".to_owned(),
            })
        }
    };
    if text_len > limits::MAX_EXTENSION_VALUE_BYTES {
        return Err(ApiError::TooLong {
            field: LimitedField::ExtensionValue,
            limit: limits::MAX_EXTENSION_VALUE_BYTES,
        });
    }
    Ok(())
}

/// The attributes of one event, gathered from either mode, before they are checked as a
/// whole.
#[derive(Default)]
struct Attributes {
    id: Option<String>,
    source: Option<String>,
    time: Option<SystemTime>,
    correlation_id: Option<String>,
    causation_id: Option<String>,
    hops: u32,
    extensions: BTreeMap<String, serde_json::Value>,
}

impl Attributes {
    fn extension(&mut self, name: String, value: serde_json::Value) -> Result<(), ApiError> {
        check_extension_name(&name)?;
        if value.is_null() {
            // A null attribute is an absent one.
            return Ok(());
        }
        check_extension_value(&name, &value)?;
        if self.extensions.len() >= limits::MAX_EXTENSIONS {
            return Err(ApiError::TooLong {
                field: LimitedField::Extensions,
                limit: limits::MAX_EXTENSIONS,
            });
        }
        self.extensions.insert(name, value);
        Ok(())
    }

    fn into_event(
        self,
        topic: String,
        default_source: &str,
        datacontenttype: String,
        data: Data,
    ) -> Event {
        let id = self.id.unwrap_or_else(new_id);
        let mut extensions = self.extensions;
        let (data, raw) = match data {
            Data::Json { value, raw } => (value, raw),
            Data::Bytes(text) => {
                extensions.insert(DATA_BASE64.to_owned(), serde_json::Value::String(text));
                (serde_json::Value::Null, None)
            }
        };
        Event {
            specversion: SPEC_VERSION.to_owned(),
            correlation_id: self.correlation_id.unwrap_or_else(|| id.clone()),
            id,
            source: self.source.unwrap_or_else(|| default_source.to_owned()),
            topic,
            time: self.time.unwrap_or_else(SystemTime::now),
            datacontenttype,
            data,
            causation_id: self.causation_id,
            hops: self.hops,
            extensions,
            raw: RawPayload(raw.map(Arc::from)),
        }
    }
}

/// An event's data as it will be kept.
enum Data {
    /// JSON (`raw`: the text as it arrived, when it came as bytes of its own).
    Json {
        value: serde_json::Value,
        raw: Option<String>,
    },
    /// Bytes, as canonical base64.
    Bytes(String),
}

fn check_type(topic: &str, ty: &str) -> Result<(), ApiError> {
    if ty == topic {
        Ok(())
    } else {
        Err(invalid(format!(
            "type {ty:?} does not match the topic {topic:?} of the URL"
        )))
    }
}

fn check_specversion(version: &str) -> Result<(), ApiError> {
    if version == SPEC_VERSION {
        Ok(())
    } else {
        Err(invalid(format!(
            "specversion {version:?} is not supported (1.0 is)"
        )))
    }
}

fn parse_time(text: &str) -> Result<SystemTime, ApiError> {
    rfc3339::parse(text).map_err(|e| invalid(format!("time {text:?}: {e}")))
}

fn parse_hops_text(text: &str) -> Result<u32, ApiError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(hops_refused());
    }
    text.parse().map_err(|_| hops_refused())
}

fn hops_refused() -> ApiError {
    invalid(format!(
        "`{HOPS_EXTENSION}` is a non-negative integer (the journey's hop count) of at most {}",
        u32::MAX
    ))
}

// ---------------------------------------------------------------------------------------
// Structured mode

/// A JSON object's members in order, with a repeated name refused.
struct Members(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Members, D::Error> {
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a CloudEvent: a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members: Vec<(String, serde_json::Value)> = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    if members.iter().any(|(n, _)| *n == name) {
                        return Err(serde::de::Error::custom(format_args!(
                            "attribute `{name}` appears twice"
                        )));
                    }
                    let value = map.next_value()?;
                    members.push((name, value));
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(Object)
    }
}

fn string_attribute(name: &str, value: serde_json::Value) -> Result<Option<String>, ApiError> {
    match value {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) => Ok(Some(s)),
        _ => Err(invalid(format!("`{name}` must be a string"))),
    }
}

/// A structured-mode CloudEvent (`application/cloudevents+json`).
pub(crate) fn structured(topic: String, bytes: &[u8]) -> Result<Event, ApiError> {
    // The envelope is one level; its data may nest `MAX_DATA_DEPTH` more.
    if nesting(bytes, limits::MAX_DATA_DEPTH + 1) > limits::MAX_DATA_DEPTH + 1 {
        return Err(too_deep());
    }
    let Members(members) = serde_json::from_slice(bytes).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            ApiError::InvalidJson {
                detail: e.to_string(),
            }
        } else {
            invalid(e.to_string())
        }
    })?;
    let mut attributes = Attributes::default();
    let (mut specversion, mut ty, mut datacontenttype) = (None, None, None);
    let (mut data, mut data_base64) = (None, None);
    for (name, value) in members {
        match name.as_str() {
            "specversion" => specversion = string_attribute(&name, value)?,
            "type" => ty = string_attribute(&name, value)?,
            "id" => {
                attributes.id = string_attribute(&name, value)?
                    .map(|v| bounded("id", v, LimitedField::Id, limits::MAX_ID_BYTES))
                    .transpose()?;
            }
            "source" => {
                attributes.source = string_attribute(&name, value)?
                    .map(|v| bounded("source", v, LimitedField::Source, limits::MAX_SOURCE_BYTES))
                    .transpose()?;
            }
            "time" => {
                attributes.time = string_attribute(&name, value)?
                    .map(|t| parse_time(&t))
                    .transpose()?;
            }
            "correlationid" => {
                attributes.correlation_id = string_attribute(&name, value)?
                    .map(|v| {
                        bounded(
                            "correlationid",
                            v,
                            LimitedField::CorrelationId,
                            limits::MAX_ID_BYTES,
                        )
                    })
                    .transpose()?;
            }
            "causationid" => {
                attributes.causation_id = string_attribute(&name, value)?
                    .map(|v| {
                        bounded(
                            "causationid",
                            v,
                            LimitedField::CausationId,
                            limits::MAX_ID_BYTES,
                        )
                    })
                    .transpose()?;
            }
            "datacontenttype" => datacontenttype = string_attribute(&name, value)?,
            "data" => data = Some(value),
            DATA_BASE64 => data_base64 = string_attribute(&name, value)?,
            HOPS_EXTENSION => {
                attributes.hops = match &value {
                    serde_json::Value::Null => 0,
                    serde_json::Value::Number(n) => n
                        .as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(hops_refused)?,
                    _ => return Err(hops_refused()),
                };
            }
            _ => attributes.extension(name, value)?,
        }
    }
    let specversion = specversion.ok_or_else(|| invalid("`specversion` is missing"))?;
    check_specversion(&specversion)?;
    let ty = ty.ok_or_else(|| invalid("`type` is missing"))?;
    check_type(&topic, &ty)?;
    if attributes.source.is_none() {
        return Err(invalid("`source` is missing"));
    }
    let json_type = datacontenttype.as_deref().is_none_or(is_json_type);
    let data = match (data, data_base64) {
        (Some(_), Some(_)) => {
            return Err(invalid("`data` and `data_base64` cannot both be present"))
        }
        (None, Some(text)) => {
            let bytes = base64::decode(&text)
                .map_err(|e| invalid(format!("`data_base64` is not base64: {e}")))?;
            if json_type && datacontenttype.is_some() {
                let value = parse_data(&bytes).map_err(|e| match e {
                    ApiError::InvalidJson { detail } => invalid(format!(
                        "`data_base64` holds no JSON, though `datacontenttype` says it does: {detail}"
                    )),
                    e => e,
                })?;
                Data::Json {
                    value,
                    raw: String::from_utf8(bytes).ok(),
                }
            } else {
                Data::Bytes(text)
            }
        }
        (Some(value), None) => {
            if !json_type && !value.is_string() {
                return Err(invalid(
                    "with a `datacontenttype` that is not JSON, `data` is a string (or use `data_base64`)",
                ));
            }
            if data_depth(&value) > limits::MAX_DATA_DEPTH {
                return Err(too_deep());
            }
            Data::Json { value, raw: None }
        }
        (None, None) => Data::Json {
            value: serde_json::Value::Null,
            raw: None,
        },
    };
    let datacontenttype = match (&data, datacontenttype) {
        (_, Some(ct)) => ct,
        (Data::Bytes(_), None) => OCTET_STREAM.to_owned(),
        (Data::Json { .. }, None) => "application/json".to_owned(),
    };
    Ok(attributes.into_event(topic, "", datacontenttype, data))
}

// ---------------------------------------------------------------------------------------
// Binary mode

/// Percent-decodes a `ce-*` header value (the HTTP binding encodes what a header cannot
/// carry as is). Strict where the decoder is lenient: only printable ASCII, spaces and
/// tabs, every `%` followed by two hex digits, and UTF-8 once decoded.
fn percent_decode(header: &str, value: &[u8]) -> Result<String, ApiError> {
    let not_text = || {
        invalid(format!(
            "header `{header}` is not percent-encoded UTF-8 text"
        ))
    };
    let text = value
        .iter()
        .all(|&b| b == b' ' || b == b'\t' || b.is_ascii_graphic());
    let escapes_whole = value.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || value
                .get(i + 1..i + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if !text || !escapes_whole {
        return Err(not_text());
    }
    percent_encoding::percent_decode(value)
        .decode_utf8()
        .map(std::borrow::Cow::into_owned)
        .map_err(|_| not_text())
}

/// A binary-mode CloudEvent: attributes in `ce-*` headers, the body as data.
pub(crate) fn binary(
    topic: String,
    headers: &HeaderMap,
    content_type: Option<&str>,
    bytes: &[u8],
    default_source: &str,
) -> Result<Event, ApiError> {
    let mut attributes = Attributes::default();
    let mut specversion = None;
    for name in headers.keys() {
        let Some(attribute) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        let mut values = headers.get_all(name).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err(invalid(format!("header `{name}` appears twice")));
        };
        let value = percent_decode(name.as_str(), value.as_bytes())?;
        match attribute {
            "specversion" => specversion = Some(value),
            "type" => check_type(&topic, &value)?,
            "id" => attributes.id = Some(bounded("id", value, LimitedField::Id, limits::MAX_ID_BYTES)?),
            "source" => {
                attributes.source = Some(bounded(
                    "source",
                    value,
                    LimitedField::Source,
                    limits::MAX_SOURCE_BYTES,
                )?);
            }
            "time" => attributes.time = Some(parse_time(&value)?),
            "correlationid" => {
                attributes.correlation_id = Some(bounded(
                    "correlationid",
                    value,
                    LimitedField::CorrelationId,
                    limits::MAX_ID_BYTES,
                )?);
            }
            "causationid" => {
                attributes.causation_id = Some(bounded(
                    "causationid",
                    value,
                    LimitedField::CausationId,
                    limits::MAX_ID_BYTES,
                )?);
            }
            HOPS_EXTENSION => attributes.hops = parse_hops_text(&value)?,
            "datacontenttype" => {
                return Err(invalid(
                    "in binary mode the data's type is the `Content-Type` header, not `ce-datacontenttype`",
                ))
            }
            _ => attributes.extension(attribute.to_owned(), serde_json::Value::String(value))?,
        }
    }
    check_specversion(specversion.as_deref().unwrap_or(""))?;
    let json = content_type.is_none_or(is_json_type);
    let data = if bytes.is_empty() {
        // An event without data.
        Data::Json {
            value: serde_json::Value::Null,
            raw: None,
        }
    } else if json {
        Data::Json {
            value: parse_data(bytes)?,
            raw: std::str::from_utf8(bytes).ok().map(str::to_owned),
        }
    } else {
        Data::Bytes(base64::encode(bytes))
    };
    let datacontenttype = content_type.map_or_else(|| "application/json".to_owned(), str::to_owned);
    Ok(attributes.into_event(topic, default_source, datacontenttype, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_is_counted_outside_strings() {
        assert_eq!(nesting(b"1", 64), 0);
        assert_eq!(nesting(br#"{"a": [1, {"b": []}]}"#, 64), 4);
        assert_eq!(nesting(br#"{"a": "[[[[\"[[[", "b": {}}"#, 64), 2);
        assert_eq!(nesting(br#"["\\", [[]]]"#, 64), 3);
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(nesting(deep.as_bytes(), 64), 65);
    }

    #[test]
    fn json_types_are_recognised() {
        for t in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "text/json",
            "application/vnd.acme+json",
        ] {
            assert!(is_json_type(t), "{t}");
        }
        for t in [
            "text/plain",
            "application/octet-stream",
            "application/jsonx",
            "",
        ] {
            assert!(!is_json_type(t), "{t}");
        }
    }

    #[test]
    fn header_values_are_percent_decoded() {
        assert_eq!(
            percent_decode("ce-x", b"a%20b%C3%A9").ok().as_deref(),
            Some("a bé")
        );
        assert!(percent_decode("ce-x", b"%zz").is_err());
        assert!(percent_decode("ce-x", b"%C3").is_err());
        assert!(percent_decode("ce-x", b"%4").is_err());
        assert!(percent_decode("ce-x", "é".as_bytes()).is_err());
    }
}
