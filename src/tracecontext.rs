//! W3C Trace Context on events: the `traceparent` and `tracestate` values, as HTTP carries
//! them (the headers of the same names) and as CloudEvents' distributed tracing extension
//! carries them (extension attributes of the same names).
//!
//! This module owns reading and writing `traceparent` (version 00), the checks a value
//! must pass to be kept, and the extension names. An invalid value is never an error: it
//! is dropped, and the event starts a new trace, as the W3C recommendation says a receiver
//! does. It knows nothing about OpenTelemetry (see `crate::otel`) or HTTP.

use std::collections::BTreeMap;
use std::fmt;

/// The extension attribute (and HTTP header) carrying the trace parent.
pub const TRACEPARENT: &str = "traceparent";
/// The extension attribute (and HTTP header) carrying vendors' trace state.
pub const TRACESTATE: &str = "tracestate";

/// Bytes of a `tracestate` value kept at most: the W3C recommendation asks a vendor to
/// propagate at least 512 and lets it drop a longer one.
pub const MAX_TRACESTATE_BYTES: usize = 512;

/// A parsed `traceparent`: `00-<trace-id>-<parent-id>-<flags>`, ids as lowercase hex.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    /// The span id of the caller (the parent of whatever runs next).
    pub parent_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    /// Whether the caller sampled its trace (flag bit 0).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// Reads a header value. Version 00 is read exactly (55 characters); a higher version
    /// is read by its first four fields when what follows them starts with `-`, as the
    /// recommendation says a version-00 reader does. Refused: version `ff`, upper-case hex,
    /// an all-zero trace id or parent id.
    pub fn parse(text: &str) -> Option<TraceParent> {
        let text = text.trim_matches(|c| c == ' ' || c == '\t');
        let bytes = text.as_bytes();
        if bytes.len() < 55 {
            return None;
        }
        let version = hex_byte(&bytes[0..2])?;
        if version == 0xff || (version == 0 && bytes.len() != 55) {
            return None;
        }
        if version != 0 && bytes.len() > 55 && bytes[55] != b'-' {
            return None;
        }
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        for (i, byte) in trace_id.iter_mut().enumerate() {
            *byte = hex_byte(&bytes[3 + 2 * i..5 + 2 * i])?;
        }
        let mut parent_id = [0u8; 8];
        for (i, byte) in parent_id.iter_mut().enumerate() {
            *byte = hex_byte(&bytes[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&bytes[53..55])?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            parent_id,
            flags,
        })
    }
}

/// The version-00 text: `00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`.
impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("00-")?;
        for b in self.trace_id {
            write!(f, "{b:02x}")?;
        }
        f.write_str("-")?;
        for b in self.parent_id {
            write!(f, "{b:02x}")?;
        }
        write!(f, "-{:02x}", self.flags)
    }
}

/// Two lowercase hex digits.
fn hex_byte(pair: &[u8]) -> Option<u8> {
    fn digit(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            _ => None,
        }
    }
    Some(digit(pair[0])? << 4 | digit(pair[1])?)
}

/// Whether a `tracestate` value is one to keep: at most `MAX_TRACESTATE_BYTES`, at most 32
/// comma-separated members, each `key=value` with printable ASCII and no `=` or `,` in the
/// value (empty members, from `a=1,,b=2`, are allowed and kept as sent).
pub fn valid_tracestate(text: &str) -> bool {
    if text.len() > MAX_TRACESTATE_BYTES || !text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return false;
    }
    let mut members = 0;
    for member in text.split(',') {
        let member = member.trim_matches(|c| c == ' ' || c == '\t');
        if member.is_empty() {
            continue;
        }
        members += 1;
        let Some((key, value)) = member.split_once('=') else {
            return false;
        };
        let key_ok = !key.is_empty()
            && key.len() <= 256
            && key.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'_' | b'-' | b'*' | b'/' | b'@')
            });
        if !key_ok || value.is_empty() || value.len() > 256 || value.contains('=') {
            return false;
        }
    }
    members <= 32
}

/// Keeps the trace context of `extensions` only if it is valid: an invalid `traceparent`
/// is removed with any `tracestate` (which means nothing without it), and an invalid
/// `tracestate` is removed alone. A value that is no string is invalid.
pub fn sanitize(extensions: &mut BTreeMap<String, serde_json::Value>) {
    let parent_ok = match extensions.get(TRACEPARENT) {
        None => true,
        Some(value) => value.as_str().and_then(TraceParent::parse).is_some(),
    };
    if !parent_ok || !extensions.contains_key(TRACEPARENT) {
        extensions.remove(TRACEPARENT);
        extensions.remove(TRACESTATE);
        return;
    }
    if !extensions
        .get(TRACESTATE)
        .is_none_or(|value| value.as_str().is_some_and(valid_tracestate))
    {
        extensions.remove(TRACESTATE);
    }
}

/// The `traceparent` of an event's extensions, when it has a valid one.
pub fn of(extensions: &BTreeMap<String, serde_json::Value>) -> Option<TraceParent> {
    extensions
        .get(TRACEPARENT)?
        .as_str()
        .and_then(TraceParent::parse)
}

/// Copies the trace context of `from` onto `to` (an event caused by `from`'s handling).
/// Nothing is allocated for an event that carries none.
pub fn inherit(
    from: &BTreeMap<String, serde_json::Value>,
    to: &mut BTreeMap<String, serde_json::Value>,
) {
    if from.is_empty() {
        return;
    }
    for name in [TRACEPARENT, TRACESTATE] {
        if let Some(value) = from.get(name) {
            to.insert(name.to_owned(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_version_00_traceparent_reads_and_writes_back() {
        let parent = TraceParent::parse(EXAMPLE).unwrap();
        assert_eq!(parent.trace_id[0], 0x4b);
        assert_eq!(parent.trace_id[15], 0x36);
        assert_eq!(
            parent.parent_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert!(parent.sampled());
        assert_eq!(parent.to_string(), EXAMPLE);
        let unsampled = TraceParent::parse(&EXAMPLE.replace("-01", "-00")).unwrap();
        assert!(!unsampled.sampled());
        // Surrounding blanks are allowed in a header value.
        assert_eq!(TraceParent::parse(&format!(" {EXAMPLE}\t")), Some(parent));
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        let zero_trace = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        let zero_parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01";
        for bad in [
            "",
            "garbage",
            zero_trace,
            zero_parent,
            &EXAMPLE.to_uppercase(),
            &EXAMPLE.replace("00-4bf", "ff-4bf"),
            &format!("{EXAMPLE}-extra"),
            &EXAMPLE.replace('-', "_"),
            &EXAMPLE[..54],
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_version_00_fields() {
        let later = EXAMPLE.replacen("00", "01", 1);
        assert!(TraceParent::parse(&later).is_some());
        assert!(TraceParent::parse(&format!("{later}-what-comes-next")).is_some());
        assert_eq!(TraceParent::parse(&format!("{later}x")), None);
    }

    #[test]
    fn tracestate_values_are_checked() {
        assert!(valid_tracestate("congo=t61rcWkgMzE"));
        assert!(valid_tracestate("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"));
        assert!(valid_tracestate("tenant@vendor=x, other=y,,"));
        assert!(!valid_tracestate("novalue"));
        assert!(!valid_tracestate("Upper=1"));
        assert!(!valid_tracestate("a=b=c"));
        assert!(!valid_tracestate("a=é"));
        assert!(!valid_tracestate(&"a=1,".repeat(33)));
        assert!(!valid_tracestate(&format!("a={}", "x".repeat(600))));
    }

    #[test]
    fn sanitize_drops_what_is_invalid_and_keeps_the_rest() {
        let mut good = BTreeMap::new();
        good.insert(TRACEPARENT.to_owned(), json!(EXAMPLE));
        good.insert(TRACESTATE.to_owned(), json!("congo=t61rcWkgMzE"));
        let mut kept = good.clone();
        sanitize(&mut kept);
        assert_eq!(kept, good);

        let mut bad_parent = good.clone();
        bad_parent.insert(TRACEPARENT.to_owned(), json!("00-zz"));
        sanitize(&mut bad_parent);
        assert!(bad_parent.is_empty(), "{bad_parent:?}");

        let mut not_a_string = good.clone();
        not_a_string.insert(TRACEPARENT.to_owned(), json!(7));
        sanitize(&mut not_a_string);
        assert!(not_a_string.is_empty());

        let mut bad_state = good.clone();
        bad_state.insert(TRACESTATE.to_owned(), json!("no value"));
        sanitize(&mut bad_state);
        assert_eq!(bad_state.get(TRACEPARENT), Some(&json!(EXAMPLE)));
        assert!(!bad_state.contains_key(TRACESTATE));

        let mut state_alone = BTreeMap::new();
        state_alone.insert(TRACESTATE.to_owned(), json!("a=1"));
        state_alone.insert("other".to_owned(), json!("kept"));
        sanitize(&mut state_alone);
        assert_eq!(state_alone.len(), 1);
        assert!(state_alone.contains_key("other"));
    }

    #[test]
    fn inherit_copies_the_trace_context_only() {
        let mut from = BTreeMap::new();
        from.insert(TRACEPARENT.to_owned(), json!(EXAMPLE));
        from.insert(TRACESTATE.to_owned(), json!("a=1"));
        from.insert("deadletterreason".to_owned(), json!("x"));
        let mut to = BTreeMap::new();
        inherit(&from, &mut to);
        assert_eq!(to.len(), 2);
        assert_eq!(of(&to), TraceParent::parse(EXAMPLE));
    }
}
