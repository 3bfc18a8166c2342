//! Reading TOML values out of one flow file: typed getters that turn a wrong type or a bad
//! value into a `FlowError` with a span, record it, and let the caller go on.
//!
//! Nothing here knows the flow-file schema (that is `sections`); this module only knows
//! how to read a string, a duration, a topic, a script, … out of a spanned TOML value (`toml_tree::Value`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::flow::load::toml_tree::{Span, Spanned, Value, ValueInner};
use miette::SourceSpan;

use crate::duration::parse_duration;
use crate::flow::diagnostic::{FlowError, SharedSource, Suggestion};
use crate::flow::env::{expand, ExpandErrorKind};
use crate::flow::load::fields::Fields;
use crate::flow::load::findings::{Findings, Located};
use crate::flow::model::{ScriptSource, TopicSchema};
use crate::pattern::{validate_topic, TopicPattern};

/// One flow file: where it is (as given and absolute) and its text.
pub(super) struct FlowSource {
    /// Position in the set (`FlowSet::files`).
    pub index: usize,
    /// The path as the user gave it (or as found in a folder they gave): used in messages.
    pub shown: PathBuf,
    /// The path joined onto the working directory: stored in the model and watched.
    pub absolute: PathBuf,
    pub text: Arc<str>,
    pub src: SharedSource,
}

impl FlowSource {
    /// The folder of the file as given, for paths in messages.
    pub fn dir_shown(&self) -> &Path {
        self.shown.parent().unwrap_or(Path::new(""))
    }

    /// The folder of the file, absolute: relative paths in the file resolve against it.
    pub fn dir_absolute(&self) -> &Path {
        self.absolute.parent().unwrap_or(Path::new(""))
    }
}

/// Looks an environment variable up for `${VAR}` references (the process's, or a test's).
pub(super) type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Reads values out of one flow file, recording every problem in the shared `Findings`.
pub(super) struct Reader<'a> {
    pub file: &'a FlowSource,
    pub found: &'a mut Findings,
    pub env: EnvLookup<'a>,
}

impl Reader<'_> {
    /// Converts a TOML span to a label span, clamped to the file (the parser may point one
    /// past the end at end of file).
    pub fn span(&self, at: Span) -> SourceSpan {
        let len = self.file.text.len();
        let start = at.start.min(len);
        let end = at.end.clamp(start, len);
        SourceSpan::from(start..end)
    }

    /// Records an error at `at`; `make` gets the file and the label span.
    pub fn report(&mut self, at: Span, make: impl FnOnce(SharedSource, SourceSpan) -> FlowError) {
        let error = make(self.file.src.clone(), self.span(at));
        self.found.push(self.file.index, at.start, error);
    }

    /// Attaches this file and a span to a value.
    pub fn locate<T>(&self, value: T, at: Span) -> Located<T> {
        Located {
            value,
            file: self.file.index,
            src: self.file.src.clone(),
            span: self.span(at),
        }
    }

    /// The first line of a table's span (a `[[tests]]` header rather than the whole block).
    pub fn first_line(&self, at: Span) -> Span {
        let text = self.file.text.get(at.start..).unwrap_or("");
        let whole = at.end.saturating_sub(at.start);
        let line = text.find('\n').map_or(text.len(), |n| n).min(whole);
        Span::new(at.start, at.start + line)
    }

    /// Reports a required key as missing from `fields`.
    pub fn missing(&mut self, fields: &Fields<'_>, key: &'static str, help: Option<&'static str>) {
        let table = fields.path.clone();
        self.report(fields.at, |src, span| FlowError::MissingKey {
            key,
            table,
            help,
            src,
            span,
        });
    }

    /// Takes a required key, reporting it if absent.
    pub fn required<'de>(
        &mut self,
        fields: &mut Fields<'de>,
        key: &'static str,
    ) -> Option<Value<'de>> {
        let value = fields.take(key);
        if value.is_none() {
            self.missing(fields, key, None);
        }
        value
    }

    fn wrong_type(&mut self, key: &str, expected: &'static str, found: &'static str, at: Span) {
        let key = key.to_owned();
        self.report(at, |src, span| FlowError::WrongType {
            key,
            expected,
            found,
            src,
            span,
        });
    }

    /// A string.
    pub fn string(&mut self, key: &str, mut value: Value<'_>) -> Option<Spanned<String>> {
        let at = value.span;
        // Each value comes straight from the parsed table and is taken exactly once.
        match value.take() {
            ValueInner::String(s) => Some(Spanned::with_span(s.into_owned(), at)),
            other => {
                self.wrong_type(key, "a string", other.type_str(), at);
                None
            }
        }
    }

    /// A string in which `${VAR}` and `${VAR:-default}` are replaced from the environment
    /// (`flow::env`). Only the keys listed in docs/flow-files.md read their value this way.
    /// An error's label points at the reference as written in the file; no diagnostic shows
    /// what a variable holds.
    pub fn expanded(&mut self, key: &str, value: Value<'_>) -> Option<Spanned<String>> {
        let text = self.string(key, value)?;
        match expand(&text.value, self.env) {
            Ok(value) => Some(Spanned::with_span(value, text.span)),
            Err(error) => {
                let at = self.reference_span(&text, error.span);
                let key = key.to_owned();
                self.report(at, |src, span| match error.kind {
                    ExpandErrorKind::Missing { name } => FlowError::EnvMissing {
                        key,
                        name,
                        src,
                        span,
                    },
                    reason => FlowError::EnvMalformed {
                        key,
                        reason: reason.to_string(),
                        src,
                        span,
                    },
                });
                None
            }
        }
    }

    /// Where a reference at `within` of a string value is in the file. A string written
    /// with escapes (`\u0024{…}`, a line-ending `\`) decodes to other offsets than its
    /// source: its label covers the whole value instead.
    fn reference_span(&self, text: &Spanned<String>, within: std::ops::Range<usize>) -> Span {
        let written = self.file.text.get(text.span.start..text.span.end);
        if written == Some(text.value.as_str()) {
            Span::new(text.span.start + within.start, text.span.start + within.end)
        } else {
            text.span
        }
    }

    /// An integer.
    pub fn integer(&mut self, key: &str, mut value: Value<'_>) -> Option<Spanned<i64>> {
        let at = value.span;
        match value.take() {
            ValueInner::Integer(n) => Some(Spanned::with_span(n, at)),
            other => {
                self.wrong_type(key, "an integer", other.type_str(), at);
                None
            }
        }
    }

    /// An integer of at least `min`, that fits `T`.
    pub fn at_least<T: TryFrom<i64>>(
        &mut self,
        key: &str,
        value: Value<'_>,
        min: i64,
    ) -> Option<T> {
        let n = self.integer(key, value)?;
        if n.value < min {
            let key = key.to_owned();
            self.report(n.span, |src, span| FlowError::TooSmall {
                key,
                value: n.value,
                min,
                src,
                span,
            });
            return None;
        }
        match T::try_from(n.value) {
            Ok(v) => Some(v),
            Err(_) => {
                self.wrong_type(key, "a smaller integer", "one out of range", n.span);
                None
            }
        }
    }

    /// A boolean.
    pub fn boolean(&mut self, key: &str, mut value: Value<'_>) -> Option<bool> {
        let at = value.span;
        match value.take() {
            ValueInner::Boolean(b) => Some(b),
            other => {
                self.wrong_type(key, "a boolean", other.type_str(), at);
                None
            }
        }
    }

    /// A table, wrapped for reading; `at` is what "missing key" labels point at.
    pub fn table<'de>(
        &mut self,
        path: String,
        at: Option<Span>,
        mut value: Value<'de>,
    ) -> Option<Fields<'de>> {
        let span = value.span;
        match value.take() {
            ValueInner::Table(table) => {
                let at = at.unwrap_or_else(|| self.first_line(span));
                Some(Fields::new(path, at, table))
            }
            other => {
                self.wrong_type(&path, "a table", other.type_str(), span);
                None
            }
        }
    }

    /// An array.
    pub fn array<'de>(&mut self, key: &str, mut value: Value<'de>) -> Option<Vec<Value<'de>>> {
        let at = value.span;
        match value.take() {
            ValueInner::Array(items) => Some(items),
            other => {
                self.wrong_type(key, "an array", other.type_str(), at);
                None
            }
        }
    }

    /// An array of strings.
    pub fn strings(&mut self, key: &str, value: Value<'_>) -> Option<Vec<Spanned<String>>> {
        let items = self.array(key, value)?;
        let n = items.len();
        let strings: Vec<_> = items
            .into_iter()
            .enumerate()
            .filter_map(|(i, item)| self.string(&format!("{key}[{i}]"), item))
            .collect();
        (strings.len() == n).then_some(strings)
    }

    /// A duration string such as `"250ms"`.
    pub fn duration(&mut self, key: &str, value: Value<'_>) -> Option<Duration> {
        let text = self.string(key, value)?;
        match parse_duration(&text.value) {
            Ok(d) => Some(d),
            Err(reason) => {
                let key = key.to_owned();
                self.report(text.span, |src, span| FlowError::InvalidDuration {
                    key,
                    value: text.value,
                    reason,
                    src,
                    span,
                });
                None
            }
        }
    }

    /// A duration longer than zero (a timeout); `default` is shown in the help of a zero.
    pub fn positive_duration(
        &mut self,
        key: &str,
        value: Value<'_>,
        default: &'static str,
    ) -> Option<Duration> {
        let at = value.span;
        let duration = self.duration(key, value)?;
        if duration.is_zero() {
            let key = key.to_owned();
            self.report(at, |src, span| FlowError::ZeroDuration {
                key,
                default,
                src,
                span,
            });
            return None;
        }
        Some(duration)
    }

    /// A byte size: an integer number of bytes or a string with a unit (`"512KiB"`), at least 1.
    pub fn size(&mut self, key: &str, value: Value<'_>) -> Option<usize> {
        if value.as_integer().is_some() {
            return self.at_least(key, value, 1);
        }
        let text = self.string(key, value)?;
        match parse_size(&text.value) {
            Some(0) => {
                let key = key.to_owned();
                self.report(text.span, |src, span| FlowError::TooSmall {
                    key,
                    value: 0,
                    min: 1,
                    src,
                    span,
                });
                None
            }
            Some(bytes) => Some(bytes),
            None => {
                let key = key.to_owned();
                self.report(text.span, |src, span| FlowError::InvalidSize {
                    key,
                    value: text.value,
                    src,
                    span,
                });
                None
            }
        }
    }

    /// A concrete topic name.
    pub fn topic(&mut self, key: &str, value: Value<'_>) -> Option<Spanned<String>> {
        let name = self.string(key, value)?;
        self.check_topic(name)
    }

    /// Checks a string already read as a concrete topic name.
    pub fn check_topic(&mut self, name: Spanned<String>) -> Option<Spanned<String>> {
        match validate_topic(&name.value) {
            Ok(()) => Some(name),
            Err(reason) => {
                let topic = name.value;
                self.report(name.span, |src, span| FlowError::InvalidTopic {
                    topic,
                    reason,
                    src,
                    span,
                });
                None
            }
        }
    }

    /// An array of concrete topic names.
    pub fn topics(&mut self, key: &str, value: Value<'_>) -> Option<Vec<Spanned<String>>> {
        let names = self.strings(key, value)?;
        let n = names.len();
        let topics: Vec<_> = names
            .into_iter()
            .filter_map(|name| self.check_topic(name))
            .collect();
        (topics.len() == n).then_some(topics)
    }

    /// A topic pattern.
    pub fn pattern(&mut self, key: &str, value: Value<'_>) -> Option<Spanned<TopicPattern>> {
        let text = self.string(key, value)?;
        match TopicPattern::parse(&text.value) {
            Ok(pattern) => Some(Spanned::with_span(pattern, text.span)),
            Err(reason) => {
                let pattern = text.value;
                self.report(text.span, |src, span| FlowError::InvalidPattern {
                    pattern,
                    reason,
                    src,
                    span,
                });
                None
            }
        }
    }

    /// A script path, resolved against the flow file's folder and read.
    pub fn script(&mut self, key: &str, value: Value<'_>) -> Option<ScriptSource> {
        let relative = self.string(key, value)?;
        let base_dir = self.file.dir_absolute().to_path_buf();
        let path = base_dir.join(&relative.value);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                self.found.read(&path);
                Some(ScriptSource {
                    path,
                    base_dir,
                    text: text.into(),
                })
            }
            Err(error) => {
                let shown = self.file.dir_shown().join(&relative.value);
                self.report(relative.span, |src, span| FlowError::MissingScript {
                    path: shown,
                    source: Arc::new(error),
                    src,
                    span,
                });
                None
            }
        }
    }

    /// An event schema path, resolved against the flow file's folder, read, parsed and
    /// compiled.
    pub fn event_schema(&mut self, key: &str, value: Value<'_>) -> Option<TopicSchema> {
        let relative = self.string(key, value)?;
        let path = self.file.dir_absolute().join(&relative.value);
        let shown = self.file.dir_shown().join(&relative.value);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) => {
                self.report(relative.span, |src, span| FlowError::MissingSchema {
                    path: shown,
                    source: Arc::new(error),
                    src,
                    span,
                });
                return None;
            }
        };
        // Watched from now on, whether it compiles or not: fixing it is a reload.
        self.found.read(&path);
        let compiled = serde_json::from_str::<serde_json::Value>(&text)
            .map_err(|e| format!("not JSON: {e}"))
            .and_then(|document| match jsonschema::validator_for(&document) {
                Ok(validator) => Ok((document, validator)),
                Err(e) => Err(e.to_string()),
            });
        match compiled {
            Ok((document, validator)) => Some(TopicSchema {
                path,
                text: text.into(),
                document: Arc::new(document),
                validator: Arc::new(validator),
            }),
            Err(reason) => {
                self.report(relative.span, |src, span| FlowError::InvalidSchema {
                    path: shown,
                    reason,
                    src,
                    span,
                });
                None
            }
        }
    }

    /// Any TOML value, as JSON (tables keep their source order).
    pub fn json(&mut self, key: &str, mut value: Value<'_>) -> Option<serde_json::Value> {
        use serde_json::Value as Json;
        let at = value.span;
        match value.take() {
            ValueInner::String(s) => Some(Json::String(s.into_owned())),
            ValueInner::Integer(n) => Some(Json::from(n)),
            ValueInner::Boolean(b) => Some(Json::Bool(b)),
            ValueInner::Datetime => {
                self.wrong_type(
                    key,
                    "a string, number, boolean, array or table",
                    "datetime",
                    at,
                );
                None
            }
            ValueInner::Float(f) => match serde_json::Number::from_f64(f) {
                Some(n) => Some(Json::Number(n)),
                None => {
                    self.wrong_type(key, "a finite number", "nan or inf", at);
                    None
                }
            },
            ValueInner::Array(items) => {
                let n = items.len();
                let values: Vec<_> = items
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, item)| self.json(&format!("{key}[{i}]"), item))
                    .collect();
                (values.len() == n).then_some(Json::Array(values))
            }
            ValueInner::Table(table) => {
                let mut entries: Vec<_> = table.into_iter().collect();
                entries.sort_by_key(|(k, _)| k.span.start);
                let n = entries.len();
                let object: serde_json::Map<String, Json> = entries
                    .into_iter()
                    .filter_map(|(k, v)| {
                        let value = self.json(&format!("{key}.{}", k.name), v)?;
                        Some((k.name.into_owned(), value))
                    })
                    .collect();
                (object.len() == n).then_some(Json::Object(object))
            }
        }
    }

    /// One of a fixed set of strings; reports the others with a suggestion.
    pub fn choice<'c>(
        &mut self,
        key: &str,
        value: Value<'_>,
        choices: &[&'c str],
    ) -> Option<&'c str> {
        let text = self.string(key, value)?;
        if let Some(choice) = choices.iter().find(|c| **c == text.value) {
            return Some(choice);
        }
        let help = Box::new(Suggestion::new(key_noun(key), &text.value, choices));
        let key = key.to_owned();
        self.report(text.span, |src, span| FlowError::UnknownValue {
            key,
            value: text.value,
            help,
            src,
            span,
        });
        None
    }
}

/// The noun used in "expected a …" help for a key with a fixed set of values.
fn key_noun(key: &str) -> &'static str {
    match key {
        "mode" => "mode",
        "kind" => "kind",
        _ => "value",
    }
}

/// Parses `"1MiB"`, `"512 KiB"`, `"1000B"` or `"4096"` into bytes.
pub(super) fn parse_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: usize = number.parse().ok()?;
    let scale: usize = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("1MiB"), Some(1 << 20));
        assert_eq!(parse_size("512 KiB"), Some(512 * 1024));
        assert_eq!(parse_size("2MB"), Some(2_000_000));
        assert_eq!(parse_size("1 parsec"), None);
        assert_eq!(parse_size("MiB"), None);
        assert_eq!(parse_size("-1B"), None);
    }
}
