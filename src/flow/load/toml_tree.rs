//! A flow file's TOML as a tree of spanned values that the loader takes apart key by key.
//!
//! The `toml` crate parses (its spanned parse tree, `toml::de::DeTable`); this module turns
//! that tree into values the loader owns and can take out of a table one at a time, each
//! with the byte span miette's labels point at. It also turns the parser's syntax errors
//! into spans and labels, and finds where a duplicated key was first defined.

use std::borrow::Cow;
use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned as TomlSpanned;

/// A byte range in the flow file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Span {
        Span { start, end }
    }
}

impl From<Range<usize>> for Span {
    fn from(range: Range<usize>) -> Span {
        Span::new(range.start, range.end)
    }
}

/// A value read out of the file, with where it was.
#[derive(Clone, Debug, PartialEq)]
pub struct Spanned<T> {
    pub value: T,
    pub span: Span,
}

impl<T> Spanned<T> {
    pub fn with_span(value: T, span: Span) -> Spanned<T> {
        Spanned { value, span }
    }
}

/// A table's key, with where it was written.
#[derive(Clone, Debug)]
pub struct Key<'de> {
    pub name: Cow<'de, str>,
    pub span: Span,
}

/// A table's entries, in the order the parser keeps them (`Fields` sorts by position).
pub type Table<'de> = Vec<(Key<'de>, Value<'de>)>;

/// One value; taken out whole (`take`) by the reader that consumes it.
#[derive(Debug)]
pub struct Value<'de> {
    inner: Option<ValueInner<'de>>,
    pub span: Span,
}

/// What a value holds.
#[derive(Debug)]
pub enum ValueInner<'de> {
    String(Cow<'de, str>),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    /// A date or time: valid TOML, but no flow-file key takes one.
    Datetime,
    Array(Vec<Value<'de>>),
    Table(Table<'de>),
}

impl ValueInner<'_> {
    /// The type's name, for "expected …, found …" messages.
    pub fn type_str(&self) -> &'static str {
        match self {
            ValueInner::String(_) => "string",
            ValueInner::Integer(_) => "integer",
            ValueInner::Float(_) => "float",
            ValueInner::Boolean(_) => "boolean",
            ValueInner::Datetime => "datetime",
            ValueInner::Array(_) => "array",
            ValueInner::Table(_) => "table",
        }
    }
}

impl<'de> Value<'de> {
    fn new(inner: ValueInner<'de>, span: Span) -> Value<'de> {
        Value {
            inner: Some(inner),
            span,
        }
    }

    /// Takes the value out; every value comes from the parsed tree and is read once.
    pub fn take(&mut self) -> ValueInner<'de> {
        self.inner
            .take()
            .expect("a flow-file value is read exactly once")
    }

    /// What the value holds, without taking it.
    pub fn as_ref(&self) -> &ValueInner<'de> {
        self.inner
            .as_ref()
            .expect("a flow-file value is read exactly once")
    }

    pub fn as_integer(&self) -> Option<i64> {
        match self.inner {
            Some(ValueInner::Integer(n)) => Some(n),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value<'de>]> {
        match &self.inner {
            Some(ValueInner::Array(items)) => Some(items),
            _ => None,
        }
    }

    pub fn as_table(&self) -> Option<&Table<'de>> {
        match &self.inner {
            Some(ValueInner::Table(table)) => Some(table),
            _ => None,
        }
    }
}

/// A syntax error: where, what the parser says, and what the label says.
#[derive(Debug)]
pub struct SyntaxError {
    pub message: String,
    pub span: Span,
    /// A short label for the span ("duplicate key", "string not closed", …).
    pub label: &'static str,
    /// Where a duplicated key or table was first defined.
    pub first: Option<Span>,
}

/// Parses a flow file into its root table, or every syntax error found in it.
pub fn parse(text: &str) -> Result<Table<'_>, Vec<SyntaxError>> {
    let (root, errors) = DeTable::parse_recoverable(text);
    if errors.is_empty() {
        return Ok(table(text, root.into_inner()));
    }
    let root = root.into_inner();
    Err(errors
        .into_iter()
        .map(|error| syntax_error(text, &root, &error))
        .collect())
}

fn convert<'de>(text: &str, value: TomlSpanned<DeValue<'de>>) -> Value<'de> {
    let mut span = Span::from(value.span());
    let inner = match value.into_inner() {
        DeValue::String(s) => {
            span = inside_quotes(text, span);
            ValueInner::String(s)
        }
        DeValue::Integer(n) => match i64::from_str_radix(n.as_str(), n.radix()) {
            Ok(n) => ValueInner::Integer(n),
            // Past i64: kept as text, so it is a type error where a key wants a number.
            Err(_) => ValueInner::String(Cow::Owned(n.to_string())),
        },
        DeValue::Float(f) => ValueInner::Float(parse_float(f.as_str())),
        DeValue::Boolean(b) => ValueInner::Boolean(b),
        DeValue::Datetime(_) => ValueInner::Datetime,
        DeValue::Array(items) => {
            ValueInner::Array(items.into_iter().map(|item| convert(text, item)).collect())
        }
        DeValue::Table(entries) => ValueInner::Table(table(text, entries)),
    };
    Value::new(inner, span)
}

fn table<'de>(text: &str, entries: DeTable<'de>) -> Table<'de> {
    entries
        .into_iter()
        .map(|(key, value)| {
            // A quoted key (`[topics."orders.created"]`) is labelled on its name.
            let span = inside_quotes(text, Span::from(key.span()));
            (
                Key {
                    name: key.into_inner(),
                    span,
                },
                convert(text, value),
            )
        })
        .collect()
}

/// A string's span without its quotes (`"…"`, `'…'`, `"""…"""`, `'''…'''`): labels point
/// at what was written inside them.
fn inside_quotes(text: &str, span: Span) -> Span {
    let Some(written) = text.get(span.start..span.end) else {
        return span;
    };
    for quote in ["\"\"\"", "'''", "\"", "'"] {
        // An empty string keeps its quotes: a label needs something to point at.
        if written.len() > 2 * quote.len() && written.starts_with(quote) && written.ends_with(quote)
        {
            return Span::new(span.start + quote.len(), span.end - quote.len());
        }
    }
    span
}

/// A TOML float's text (`1.5`, `1e3`, `inf`, `-nan`, with `_` between digits) as an `f64`.
fn parse_float(text: &str) -> f64 {
    let text: String = text.chars().filter(|c| *c != '_').collect();
    match text.trim_start_matches(['+', '-']) {
        "inf" | "nan" => {
            let negative = text.starts_with('-');
            let magnitude = if text.ends_with("inf") {
                f64::INFINITY
            } else {
                f64::NAN
            };
            if negative {
                -magnitude
            } else {
                magnitude
            }
        }
        _ => text.parse().unwrap_or(f64::NAN),
    }
}

fn syntax_error(text: &str, root: &DeTable<'_>, error: &toml::de::Error) -> SyntaxError {
    let message = error.message().trim().to_owned();
    let span = error
        .span()
        .map(Span::from)
        .unwrap_or_else(|| Span::new(text.len(), text.len()));
    let lower = message.to_lowercase();
    let label = if lower.starts_with("duplicate key") {
        "duplicate key"
    } else if lower.starts_with("invalid basic string")
        || lower.starts_with("invalid literal string")
    {
        "string not closed on this line"
    } else if lower.starts_with("unclosed") {
        "not closed"
    } else if lower.starts_with("string values must be quoted") {
        if span.start == span.end {
            "a value is missing here"
        } else {
            "put this string in quotes"
        }
    } else if lower.starts_with("unquoted keys cannot be empty") {
        "a key is missing here"
    } else {
        "here"
    };
    let mut message = message;
    let mut first = None;
    if label == "duplicate key" {
        if let Some(name) = text.get(span.start..span.end) {
            let name = name.trim().trim_matches(['"', '\'']);
            first = first_definition(root, name, span.start)
                .or_else(|| written_before(text, name, span.start));
            message = format!("duplicate key `{name}`");
        }
    }
    SyntaxError {
        message,
        span,
        label,
        first,
    }
}

/// The last key named `name` defined before `before`, anywhere in the recovered tree (the
/// parser keeps the first definition of a duplicate).
fn first_definition(root: &DeTable<'_>, name: &str, before: usize) -> Option<Span> {
    fn walk(table: &DeTable<'_>, name: &str, before: usize, best: &mut Option<Span>) {
        for (key, value) in table.iter() {
            let span = Span::from(key.span());
            if key.get_ref() == name
                && span.start < before
                && best.is_none_or(|b| span.start > b.start)
            {
                *best = Some(span);
            }
            walk_value(value.get_ref(), name, before, best);
        }
    }
    fn walk_value(value: &DeValue<'_>, name: &str, before: usize, best: &mut Option<Span>) {
        match value {
            DeValue::Table(table) => walk(table, name, before, best),
            DeValue::Array(items) => {
                for item in items.iter() {
                    walk_value(item.get_ref(), name, before, best);
                }
            }
            _ => {}
        }
    }
    let mut best = None;
    walk(root, name, before, &mut best);
    best
}

/// Where `name` was last written as a key before `before` (followed by `=`, `.` or `]`):
/// the first definition of a table header defined again, which the parser does not keep.
fn written_before(text: &str, name: &str, before: usize) -> Option<Span> {
    let is_key_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let head = text.get(..before)?;
    head.match_indices(name)
        .filter(|(at, _)| {
            let prior = head[..*at].chars().next_back();
            let after = text[at + name.len()..].trim_start_matches(['"', '\'', ' ', '\t']);
            !prior.is_some_and(is_key_char)
                && !text[at + name.len()..].starts_with(is_key_char)
                && after.starts_with(['=', '.', ']'])
        })
        .last()
        .map(|(at, _)| Span::new(at, at + name.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_their_spans_and_types() {
        let text = "[flow]\nname = \"orders\"\nmax_hops = 0x10\nratio = 1_000.5\n";
        let root = parse(text).expect("valid TOML");
        let (key, mut flow) = root.into_iter().next().expect("one table");
        assert_eq!(key.name, "flow");
        let ValueInner::Table(entries) = flow.take() else {
            panic!("a table")
        };
        let find = |name: &str| entries.iter().find(|(k, _)| k.name == name).unwrap();
        let (name_key, name) = find("name");
        assert_eq!(&text[name_key.span.start..name_key.span.end], "name");
        assert_eq!(&text[name.span.start..name.span.end], "orders");
        assert_eq!(find("max_hops").1.as_integer(), Some(16));
        assert!(matches!(find("ratio").1.as_ref(), ValueInner::Float(f) if *f == 1000.5));
    }

    #[test]
    fn floats_parse_as_toml_writes_them() {
        assert_eq!(parse_float("1e3"), 1000.0);
        assert_eq!(parse_float("-inf"), f64::NEG_INFINITY);
        assert!(parse_float("+nan").is_nan());
    }

    #[test]
    fn a_duplicate_key_points_at_its_first_definition() {
        let text = "[flow]\nname = \"a\"\nname = \"b\"\n";
        let errors = parse(text).expect_err("a duplicate key");
        let error = &errors[0];
        assert_eq!(error.label, "duplicate key");
        let first = error.first.expect("the first definition");
        assert_eq!(first.start, text.find("name").unwrap());
        assert!(error.span.start > first.start);
    }

    #[test]
    fn every_syntax_error_is_reported() {
        let errors = parse("a = \nb = [1,\n").expect_err("broken");
        assert!(!errors.is_empty());
        assert!(errors.iter().all(|e| !e.message.is_empty()));
    }

    #[test]
    fn a_table_defined_again_points_at_its_first_header() {
        let text = "[subscribers.a]\ntopic = \"x\"\n\n[subscribers.a]\n";
        let error = &parse(text).expect_err("a table defined again")[0];
        assert_eq!(error.label, "duplicate key");
        let first = error.first.expect("the first header");
        assert_eq!(first.start, text.find(".a]").unwrap() + 1);
        assert!(error.message.contains("`a`"), "{}", error.message);
    }
}
