//! One TOML table read key by key: what the schema takes is removed, and what is left at
//! the end is reported as unknown, with a "did you mean" suggestion.

use crate::flow::load::toml_tree::{Key, Span, Table, Value};

use crate::flow::diagnostic::{FlowError, Suggestion};
use crate::flow::load::reader::Reader;

/// The keys of one table, taken one by one; what is left at the end is unknown.
pub(super) struct Fields<'de> {
    /// Where the table is, for messages: `subscribers.audit`, `subscribers.audit.retry`.
    pub path: String,
    /// What a "missing key" label points at: the table's name or its first line.
    pub at: Span,
    /// In source order, so unknown keys are reported top to bottom.
    entries: Vec<(Key<'de>, Value<'de>)>,
    /// The keys taken so far: `finish` checks that its `known` list names each, so the
    /// lists (which the flow-file JSON Schema is checked against) cannot miss a key.
    #[cfg(debug_assertions)]
    taken: Vec<String>,
}

impl<'de> Fields<'de> {
    /// Wraps a table for reading.
    pub fn new(path: String, at: Span, table: Table<'de>) -> Fields<'de> {
        let mut entries: Vec<_> = table.into_iter().collect();
        entries.sort_by_key(|(key, _)| key.span.start);
        Fields {
            path,
            at,
            entries,
            #[cfg(debug_assertions)]
            taken: Vec::new(),
        }
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
        #[cfg(debug_assertions)]
        self.taken.push(key.to_owned());
        Some(self.entries.remove(at))
    }

    /// Reports every key not taken and not in `known` as unknown.
    pub fn finish(self, r: &mut Reader<'_>, known: &[&str]) {
        #[cfg(debug_assertions)]
        for key in &self.taken {
            assert!(
                known.contains(&key.as_str()),
                "`{}` reads key `{key}` that its list of known keys lacks",
                self.path
            );
        }
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
