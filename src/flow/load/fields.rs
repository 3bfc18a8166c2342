//! Reading TOML values one key at a time: typed getters that turn a wrong type, an unknown
//! key or a bad value into a `FlowError` with a span, record it, and let the caller go on.
//!
//! Nothing here knows the flow-file schema (that is `sections`); this module only knows
//! how to read a string, a duration, a topic, a script, … out of a `toml_span::Value`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use miette::SourceSpan;
use toml_span::value::{Key, Table, ValueInner};
use toml_span::{Span, Spanned, Value};

use crate::flow::diagnostic::{FlowError, SharedSource, Suggestion};
use crate::flow::duration::parse_duration;
use crate::flow::model::ScriptSource;
use crate::flow::pattern::{validate_topic, TopicPattern};

/// Everything found while loading, across files: errors (with where they are, so they can be
/// reported in file order), the files read, and the topic and queue references that are
/// only checked once every file is in.
#[derive(Default)]
pub(super) struct Findings {
    /// `(file index, byte offset, error)`; errors without a file use `(0, 0)`.
    errors: Vec<(usize, usize, FlowError)>,
    /// Every flow and script file read, absolute, without repeats.
    pub files_read: Vec<PathBuf>,
    pub refs: TopicRefs,
}

impl Findings {
    /// Records an error found at `offset` in file number `file`.
    pub fn push(&mut self, file: usize, offset: usize, error: FlowError) {
        self.errors.push((file, offset, error));
    }

    /// True when no error has been found so far.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }

    /// Notes a file as read (for the watcher).
    pub fn read(&mut self, path: &Path) {
        if !self.files_read.iter().any(|p| p == path) {
            self.files_read.push(path.to_path_buf());
        }
    }

    /// The errors in file order, then in source order within a file.
    pub fn into_errors(mut self) -> Vec<FlowError> {
        // Stable: errors at the same place keep the order they were found in.
        self.errors
            .sort_by_key(|(file, offset, _)| (*file, *offset));
        self.errors.into_iter().map(|(_, _, e)| e).collect()
    }
}

/// A value with the file and span it came from, for checks that run after all files are read.
#[derive(Clone, Debug)]
pub(super) struct Located<T> {
    pub value: T,
    pub file: usize,
    pub src: SharedSource,
    pub span: SourceSpan,
}

/// The topic and queue references of the whole set, checked once every file is read.
#[derive(Default)]
pub(super) struct TopicRefs {
    /// `queue = "…"` of subscribers and `to = "…"` of relays.
    pub queues_used: Vec<Located<String>>,
    /// Topics that something emits and that should have a consumer: `emits`, producer topics,
    /// chain `on_timeout`.
    pub emitted: Vec<Located<String>>,
    /// Topics that are produced but never warned about: dead letters, `deferred_topic`.
    pub produced_quietly: Vec<String>,
    /// Subscriber `topic`/`topics` and relay `from`.
    pub consumed: Vec<Located<TopicPattern>>,
    /// An `http` producer can publish to any topic.
    pub has_http: bool,
}

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

/// The keys of one table, taken one by one; what is left at the end is unknown.
pub(super) struct Fields<'de> {
    /// Where the table is, for messages: `subscribers.audit`, `subscribers.audit.retry`.
    pub path: String,
    /// What a "missing key" label points at: the table's name or its first line.
    pub at: Span,
    /// In source order, so unknown keys are reported top to bottom.
    entries: Vec<(Key<'de>, Value<'de>)>,
}

impl<'de> Fields<'de> {
    /// Wraps a table for reading.
    pub fn new(path: String, at: Span, table: Table<'de>) -> Fields<'de> {
        let mut entries: Vec<_> = table.into_iter().collect();
        entries.sort_by_key(|(key, _)| key.span.start);
        Fields { path, at, entries }
    }

    /// True when the key is present (and not yet taken).
    pub fn has(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, _)| k.name == key)
    }

    /// The keys and values not taken yet, in source order.
    pub fn into_entries(self) -> Vec<(Key<'de>, Value<'de>)> {
        self.entries
    }

    /// Puts back a key taken with `take_entry` or `into_entries`.
    pub fn put(&mut self, key: Key<'de>, value: Value<'de>) {
        self.entries.push((key, value));
    }

    /// Removes and returns a key's value.
    pub fn take(&mut self, key: &str) -> Option<Value<'de>> {
        self.take_entry(key).map(|(_, value)| value)
    }

    /// Removes and returns a key with its value.
    pub fn take_entry(&mut self, key: &str) -> Option<(Key<'de>, Value<'de>)> {
        let at = self.entries.iter().position(|(k, _)| k.name == key)?;
        Some(self.entries.remove(at))
    }

    /// Reports every key not taken and not in `known` as unknown.
    pub fn finish(self, r: &mut Reader<'_>, known: &[&str]) {
        for (key, _) in self.entries {
            if known.contains(&key.name.as_ref()) {
                continue;
            }
            let help = Box::new(Suggestion::new("key", &key.name, known));
            let table = self.path.clone();
            r.report(key.span, |src, span| FlowError::UnknownKey {
                key: key.name.to_string(),
                table,
                help,
                src,
                span,
            });
        }
    }
}

/// Reads values out of one flow file, recording every problem in the shared `Findings`.
pub(super) struct Reader<'a> {
    pub file: &'a FlowSource,
    pub found: &'a mut Findings,
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

    /// Any TOML value, as JSON (tables keep their source order).
    pub fn json(&mut self, key: &str, mut value: Value<'_>) -> Option<serde_json::Value> {
        use serde_json::Value as Json;
        let at = value.span;
        match value.take() {
            ValueInner::String(s) => Some(Json::String(s.into_owned())),
            ValueInner::Integer(n) => Some(Json::from(n)),
            ValueInner::Boolean(b) => Some(Json::Bool(b)),
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
