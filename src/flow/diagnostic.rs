//! Flow diagnostics: every problem found while loading and validating flows, with the
//! file, a label on the offending value, a stable code and help where there is advice.
//!
//! Errors and warnings are separate types: warnings never fail validation. A load collects
//! all errors and returns them together in one `FlowReport`. This module only describes
//! problems; finding them is `load`'s job. `problems` and `warning_problems` turn them into
//! plain `Problem`s (file, line, column, code, severity, message, labels) for readers that
//! are not terminals.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::{
    Diagnostic, GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, SourceCode,
    SourceSpan,
};
use serde::Serialize;

use crate::duration::DurationError;
use crate::pattern::PatternError;

/// A source file miette can render; cheap to clone (one per flow or script file).
pub type SourceFile = NamedSource<Arc<str>>;

/// A `SourceFile` shared by every diagnostic about that file. Sharing keeps `FlowError`
/// small enough to return by value (clippy's `result_large_err`).
pub type SharedSource = Arc<SourceFile>;

/// Makes a `SourceFile` from a display name and the file's text.
pub fn source_file(name: impl AsRef<str>, text: Arc<str>) -> SourceFile {
    NamedSource::new(name, text)
}

/// One problem that makes a flow set invalid.
#[derive(Debug, Clone, thiserror::Error, Diagnostic)]
pub enum FlowError {
    /// A Rhai script does not compile; the label points into the `.rhai` file.
    #[error("script {script} does not compile: {message}")]
    #[diagnostic(code(edaflow::script::compile))]
    ScriptCompile {
        script: String,
        message: String,
        #[source_code]
        src: SharedSource,
        #[label("{message}")]
        span: SourceSpan,
    },

    /// A path given on the command line does not exist.
    #[error("flow path {path} does not exist")]
    #[diagnostic(
        code(edaflow::flow::path_not_found),
        help("give a flow file (`orders.toml`) or a folder of them (`flows/`)")
    )]
    PathNotFound { path: PathBuf },

    /// A flow file or folder exists but cannot be read.
    #[error("cannot read {path}")]
    #[diagnostic(code(edaflow::flow::read_failed))]
    ReadFailed {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },

    /// A folder was given, but holds no `*.toml` file.
    #[error("no flow files (`*.toml`) in {path}")]
    #[diagnostic(code(edaflow::flow::no_flow_files))]
    NoFlowFiles { path: PathBuf },

    /// The file is not valid TOML.
    #[error("invalid TOML: {reason}")]
    #[diagnostic(code(edaflow::flow::toml_syntax))]
    Syntax {
        reason: String,
        #[source_code]
        src: SharedSource,
        #[label("{label}")]
        span: SourceSpan,
        /// What the primary label says, e.g. "duplicate key".
        label: &'static str,
        /// Where a duplicated key or table was first defined.
        #[label("first defined here")]
        first: Option<SourceSpan>,
    },

    /// A key that this table does not accept.
    #[error("unknown key `{key}` in `{table}`")]
    #[diagnostic(code(edaflow::flow::unknown_key))]
    UnknownKey {
        key: String,
        /// Where the key is, e.g. `subscribers.audit` or `subscribers.audit.retry`.
        table: String,
        #[help]
        help: Box<Suggestion>,
        #[source_code]
        src: SharedSource,
        #[label("unknown key")]
        span: SourceSpan,
    },

    /// A value of the wrong TOML type.
    #[error("`{key}` must be {expected}, found {found}")]
    #[diagnostic(code(edaflow::flow::wrong_type))]
    WrongType {
        key: String,
        expected: &'static str,
        found: &'static str,
        #[source_code]
        src: SharedSource,
        #[label("expected {expected}")]
        span: SourceSpan,
    },

    /// A required key is absent.
    #[error("`{table}` is missing `{key}`")]
    #[diagnostic(code(edaflow::flow::missing_key))]
    MissingKey {
        key: &'static str,
        table: String,
        #[help]
        help: Option<&'static str>,
        #[source_code]
        src: SharedSource,
        #[label("`{key}` is required here")]
        span: SourceSpan,
    },

    /// None of a set of keys, one of which is required, is present.
    #[error("`{table}` needs one of {}", KeyList(keys))]
    #[diagnostic(code(edaflow::flow::missing_one_of))]
    MissingOneOf {
        keys: &'static [&'static str],
        table: String,
        #[help]
        help: Option<&'static str>,
        #[source_code]
        src: SharedSource,
        #[label("none of {} is set", KeyList(keys))]
        span: SourceSpan,
    },

    /// Two keys that exclude each other are both present.
    #[error("`{table}` sets both `{first}` and `{second}`")]
    #[diagnostic(code(edaflow::flow::conflicting_keys))]
    ConflictingKeys {
        first: &'static str,
        second: &'static str,
        table: String,
        #[help]
        help: Option<&'static str>,
        #[source_code]
        src: SharedSource,
        #[label("`{second}` conflicts with `{first}`")]
        span: SourceSpan,
        #[label("`{first}` is set here")]
        first_span: SourceSpan,
    },

    /// A duration string that does not parse.
    #[error("`{key}` is not a valid duration: {reason}")]
    #[diagnostic(
        code(edaflow::flow::invalid_duration),
        help(
            "write a number and a unit (ms, s, m, h, d), such as \"250ms\", \"10s\" or \"1m30s\""
        )
    )]
    InvalidDuration {
        key: String,
        value: String,
        reason: DurationError,
        #[source_code]
        src: SharedSource,
        #[label("invalid duration")]
        span: SourceSpan,
    },

    /// A duration that must be longer than zero (a timeout) is zero.
    #[error("`{key}` must be longer than zero")]
    #[diagnostic(
        code(edaflow::flow::zero_duration),
        help("a zero timeout would refuse every client; write e.g. \"10s\" (the default is {default})")
    )]
    ZeroDuration {
        key: String,
        /// The key's default, as written in a flow file.
        default: &'static str,
        #[source_code]
        src: SharedSource,
        #[label("zero")]
        span: SourceSpan,
    },

    /// The HTTP producer's `token` cannot be used as a bearer token.
    #[error("`token` is not a usable bearer token: {reason}")]
    #[diagnostic(
        code(edaflow::flow::invalid_token),
        help("use letters, digits and punctuation, e.g. from `openssl rand -hex 32`; or leave `token` out and pass --token or EDAFLOW_TOKEN")
    )]
    InvalidToken {
        reason: crate::flow::TokenError,
        #[source_code]
        src: SharedSource,
        #[label("this token")]
        span: SourceSpan,
    },

    /// A `${VAR}` reference to a variable that is not set, without a default.
    #[error("`{key}` refers to environment variable `{name}`, which is not set")]
    #[diagnostic(
        code(edaflow::flow::env_missing),
        help(
            "set `{name}` in the environment of edaflow, or give a default: `${{{name}:-value}}`"
        )
    )]
    EnvMissing {
        key: String,
        name: String,
        #[source_code]
        src: SharedSource,
        #[label("`{name}` is not set")]
        span: SourceSpan,
    },

    /// A `${` in a value that takes environment variables, not written as a reference.
    #[error("`{key}` has a malformed environment variable reference: {reason}")]
    #[diagnostic(
        code(edaflow::flow::env_malformed),
        help("write `${{NAME}}` or `${{NAME:-default}}` (a name is letters, digits and `_`, not starting with a digit), or `$${{` for a literal `${{`")
    )]
    EnvMalformed {
        key: String,
        reason: String,
        #[source_code]
        src: SharedSource,
        #[label("this reference")]
        span: SourceSpan,
    },

    /// A byte size (such as `body_limit`) that does not parse.
    #[error("`{key}` is not a valid size: `{value}`")]
    #[diagnostic(
        code(edaflow::flow::invalid_size),
        help("write a number of bytes (1048576) or a number and a unit (B, KB, KiB, MB, MiB, GB, GiB), such as \"512KiB\"")
    )]
    InvalidSize {
        key: String,
        value: String,
        #[source_code]
        src: SharedSource,
        #[label("invalid size")]
        span: SourceSpan,
    },

    /// A number below the smallest accepted value (`concurrency = 0`, ...).
    #[error("`{key}` must be at least {min}, found {value}")]
    #[diagnostic(code(edaflow::flow::too_small))]
    TooSmall {
        key: String,
        value: i64,
        min: i64,
        #[source_code]
        src: SharedSource,
        #[label("must be at least {min}")]
        span: SourceSpan,
    },

    /// A script file that cannot be read.
    #[error("cannot read script {path}")]
    #[diagnostic(
        code(edaflow::flow::missing_script),
        help("script paths are relative to the flow file's folder")
    )]
    MissingScript {
        /// The path as resolved against the flow file's folder.
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
        #[source_code]
        src: SharedSource,
        #[label("this script")]
        span: SourceSpan,
    },

    /// `[topics.NAME] schema` names a file that cannot be read.
    #[error("cannot read event schema {path}")]
    #[diagnostic(
        code(edaflow::flow::missing_schema),
        help("schema paths are relative to the flow file's folder")
    )]
    MissingSchema {
        /// The path as resolved against the flow file's folder.
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
        #[source_code]
        src: SharedSource,
        #[label("this schema")]
        span: SourceSpan,
    },

    /// `[topics.NAME] schema` names a file that is not a usable JSON Schema.
    #[error("invalid event schema {path}: {reason}")]
    #[diagnostic(
        code(edaflow::flow::invalid_schema),
        help("an event schema is a JSON Schema document (draft 2020-12 unless its `$schema` says otherwise); its `$ref`s must stay inside the file")
    )]
    InvalidSchema {
        /// The path as resolved against the flow file's folder.
        path: PathBuf,
        /// What is wrong: the JSON syntax error, or why the schema does not compile.
        reason: String,
        #[source_code]
        src: SharedSource,
        #[label("this schema")]
        span: SourceSpan,
    },

    /// `kind = "…"` of a producer names no known kind.
    #[error("unknown producer kind `{kind}`")]
    #[diagnostic(code(edaflow::flow::unknown_producer_kind))]
    UnknownProducerKind {
        kind: String,
        #[help]
        help: Box<Suggestion>,
        #[source_code]
        src: SharedSource,
        #[label("unknown kind")]
        span: SourceSpan,
    },

    /// A string key with a fixed set of values (`mode`, `kind` of a topic) has another one.
    #[error("`{key}` cannot be `{value}`")]
    #[diagnostic(code(edaflow::flow::unknown_value))]
    UnknownValue {
        key: String,
        value: String,
        #[help]
        help: Box<Suggestion>,
        #[source_code]
        src: SharedSource,
        #[label("not a valid `{key}`")]
        span: SourceSpan,
    },

    /// A concrete topic name (`emits`, `dead_letter`, chain steps, …) breaks the topic syntax.
    #[error("invalid topic name `{topic}`: {reason}")]
    #[diagnostic(
        code(edaflow::flow::invalid_topic),
        help("topic names are dot-separated segments of letters, digits, `_`, `-` and `:`; wildcards (`*`, `>`) only go in subscriptions")
    )]
    InvalidTopic {
        topic: String,
        reason: PatternError,
        #[source_code]
        src: SharedSource,
        #[label("invalid topic name")]
        span: SourceSpan,
    },

    /// A topic pattern (`topic`, `topics`, relay `from`) breaks the pattern syntax.
    #[error("invalid topic pattern `{pattern}`: {reason}")]
    #[diagnostic(
        code(edaflow::flow::invalid_pattern),
        help("`*` matches one segment (`order.*`), `>` one or more trailing segments (`order.>`)")
    )]
    InvalidPattern {
        pattern: String,
        reason: PatternError,
        #[source_code]
        src: SharedSource,
        #[label("invalid pattern")]
        span: SourceSpan,
    },

    /// `[topics.orders.created]`: a dotted topic name without quotes, which TOML reads as
    /// nested tables.
    #[error("topic `{name}` needs quotes in a table header")]
    #[diagnostic(
        code(edaflow::flow::unquoted_topic_name),
        help("TOML splits unquoted keys at dots; write `[topics.\"{name}\"]`")
    )]
    UnquotedTopicName {
        /// The whole dotted name, as it was probably meant.
        name: String,
        #[source_code]
        src: SharedSource,
        #[label("read as a nested table")]
        span: SourceSpan,
    },

    /// A component name that cannot be used (it becomes part of topic and key names).
    #[error("invalid {} name `{name}`: {reason}", singular(section))]
    #[diagnostic(
        code(edaflow::flow::invalid_name),
        help("component names use letters, digits, `_`, `-`, `:` and `.`")
    )]
    InvalidName {
        section: &'static str,
        name: String,
        reason: PatternError,
        #[source_code]
        src: SharedSource,
        #[label("invalid name")]
        span: SourceSpan,
    },

    /// The same component name declared twice in one section, across flow files.
    #[error("`[{section}.{name}]` is already declared in {first_file}")]
    #[diagnostic(
        code(edaflow::flow::duplicate_name),
        help(
            "component names must be unique per section across all flow files; rename one of them"
        )
    )]
    DuplicateName {
        section: &'static str,
        name: String,
        /// The file that declared it first.
        first_file: String,
        #[source_code]
        src: SharedSource,
        #[label("declared again here")]
        span: SourceSpan,
    },

    /// `renamed_from` names a component that is still declared (or the component itself).
    #[error("`[{section}.{name}]` says it was renamed from `{old}`, but `[{section}.{old}]` is still declared")]
    #[diagnostic(
        code(edaflow::flow::renamed_from_declared),
        help("`renamed_from` moves the backlog of a component that is gone; remove `[{section}.{old}]`, or drop `renamed_from`")
    )]
    RenamedFromDeclared {
        section: &'static str,
        name: String,
        old: String,
        #[source_code]
        src: SharedSource,
        #[label("still declared")]
        span: SourceSpan,
    },

    /// Two components claim the same former name.
    #[error(
        "`[{section}.{name}]` and `[{section}.{first}]` both say they were renamed from `{old}`"
    )]
    #[diagnostic(
        code(edaflow::flow::renamed_twice),
        help("a backlog moves to one successor: keep `renamed_from = \"{old}\"` on one of them")
    )]
    RenamedTwice {
        section: &'static str,
        name: String,
        first: String,
        old: String,
        #[source_code]
        src: SharedSource,
        #[label("claimed again here")]
        span: SourceSpan,
    },

    /// `queue = "…"` or relay `to = "…"` names a queue that no `[queues.NAME]` declares.
    #[error("no `[queues.{queue}]` declares queue `{queue}`")]
    #[diagnostic(code(edaflow::flow::unknown_queue))]
    UnknownQueue {
        queue: String,
        #[help]
        help: Box<Suggestion>,
        #[source_code]
        src: SharedSource,
        #[label("unknown queue")]
        span: SourceSpan,
    },

    /// A chain with fewer than two steps.
    #[error("chain `{chain}` has {steps} step(s); a chain needs at least 2")]
    #[diagnostic(
        code(edaflow::flow::chain_too_short),
        help("list the topics of the choreography in order, e.g. steps = [\"orderCreated\", \"orderShipped\"]")
    )]
    ChainTooShort {
        chain: String,
        steps: usize,
        #[source_code]
        src: SharedSource,
        #[label("too few steps")]
        span: SourceSpan,
    },

    /// A command topic handled by more than one consumer group.
    #[error("command topic `{topic}` is handled by more than one group")]
    #[diagnostic(
        code(edaflow::flow::command_handled_twice),
        help("a command has exactly one handler; `{first}` handles it already. Use `group = \"{first}\"` to share the work, or an event topic to fan out")
    )]
    CommandHandledTwice {
        topic: String,
        first: String,
        #[source_code]
        src: SharedSource,
        #[label("a second handler")]
        span: SourceSpan,
    },

    /// A subscriber of a query topic whose script never calls `reply`.
    #[error("`{subscriber}` handles query topic `{topic}` but never calls `reply`")]
    #[diagnostic(
        code(edaflow::flow::query_without_reply),
        help("a query handler answers with `reply(data)`; without it every query on `{topic}` times out")
    )]
    QueryWithoutReply {
        topic: String,
        subscriber: String,
        #[source_code]
        src: SharedSource,
        #[label("no reply from this handler")]
        span: SourceSpan,
    },

    /// A chain step that no handler of the previous step declares it emits.
    #[error("chain `{chain}`: nothing that handles `{from}` emits `{to}`")]
    #[diagnostic(
        code(edaflow::flow::broken_chain),
        help("add `{to}` to the `emits` of a subscriber of `{from}`, or fix the step order ({emitters})")
    )]
    BrokenChainLink {
        chain: String,
        from: String,
        to: String,
        emitters: String,
        #[source_code]
        src: SharedSource,
        #[label("not reachable from `{from}`")]
        span: SourceSpan,
    },
}

/// A problem that does not fail validation.
#[derive(Debug, Clone, thiserror::Error, Diagnostic)]
pub enum FlowWarning {
    /// A topic is emitted (declared in `emits`, by a producer, or as a chain's `on_timeout`)
    /// but no subscriber or relay listens to it.
    #[error("topic `{topic}` is emitted but never consumed")]
    #[diagnostic(
        code(edaflow::flow::never_consumed),
        severity(Warning),
        help("add a subscriber or relay for `{topic}`, or stop emitting it")
    )]
    NeverConsumed {
        topic: String,
        #[source_code]
        src: SharedSource,
        #[label("no subscriber or relay matches this topic")]
        span: SourceSpan,
    },

    /// A subscriber (or relay) listens to a topic that nothing in the flow set produces.
    #[error("topic `{topic}` is consumed but never produced")]
    #[diagnostic(
        code(edaflow::flow::never_produced),
        severity(Warning),
        help("declare it in some subscriber's `emits`, give it a producer, or add an `http` producer to ingest it")
    )]
    NeverProduced {
        topic: String,
        #[source_code]
        src: SharedSource,
        #[label("nothing emits this topic")]
        span: SourceSpan,
    },

    /// A query handler whose `reply` calls all sit where they cannot run: after an
    /// unconditional `return`/`throw`/`fail`, under `if false`, in a function nothing calls.
    #[error("`{subscriber}` handles query topic `{topic}` but none of its `reply` calls can run")]
    #[diagnostic(
        code(edaflow::flow::unreachable_reply),
        severity(Warning),
        help("the `reply` at {at}. Move it where a run reaches it, or every query on `{topic}` times out")
    )]
    UnreachableReply {
        topic: String,
        subscriber: String,
        /// `script:line never runs: why`, for the help.
        at: String,
        #[source_code]
        src: SharedSource,
        #[label("this handler never gets to `reply`")]
        span: SourceSpan,
    },

    /// A store that handlers write but no query handler reads (and HTTP does not expose).
    #[error("store `{store}` is written but no query reads it")]
    #[diagnostic(
        code(edaflow::flow::store_not_queried),
        severity(Warning),
        help("a read model is there to be queried: read it with `store(\"{store}\").get(…)` or `.scan(…)` in a handler of a query topic (`kind = \"query\"` or `*.query.*`), or set `expose = true` to read it over HTTP")
    )]
    StoreNotQueried {
        store: String,
        /// The handlers that write it, quoted and joined.
        writers: String,
        #[source_code]
        src: SharedSource,
        #[label("written by {writers}")]
        span: SourceSpan,
    },

    /// A store that a query handler reads but no handler writes.
    #[error("store `{store}` is read by query {queries} but nothing writes it")]
    #[diagnostic(
        code(edaflow::flow::store_never_written),
        severity(Warning),
        help("no handler calls `.set`, `.remove` or `.incr` on `store(\"{store}\")`, so queries always find it empty; write it from a projection (a handler of the events the query is about)")
    )]
    StoreNeverWritten {
        store: String,
        /// The query handlers that read it, quoted and joined.
        queries: String,
        #[source_code]
        src: SharedSource,
        #[label("never written")]
        span: SourceSpan,
    },

    /// Subscribers whose declared `emits` feed each other in a ring (or one that emits to
    /// a topic it reads): each event of the ring can start the next one for ever.
    #[error("emit loop: {ring}")]
    #[diagnostic(
        code(edaflow::flow::emit_loop),
        severity(Warning),
        help("every event here can cause another around the ring; at run time a journey longer than {max_hops} hops (`[flow] max_hops`) is dead-lettered. Make sure the handlers stop the loop, or break it")
    )]
    EmitLoop {
        /// The ring, written `a` -> `b` -> `a`.
        ring: String,
        max_hops: u32,
        #[source_code]
        src: SharedSource,
        #[label("emitted here, and consumed again around the ring")]
        span: SourceSpan,
    },

    /// A declared store that no handler reads or writes.
    #[error("store `{store}` is declared but no handler uses it")]
    #[diagnostic(
        code(edaflow::flow::store_unused),
        severity(Warning),
        help("use it from a handler with `store(\"{store}\")`, or remove `[stores.{store}]`")
    )]
    StoreUnused {
        store: String,
        #[source_code]
        src: SharedSource,
        #[label("no handler calls `store(\"{store}\")`")]
        span: SourceSpan,
    },
}

/// All the errors of one load, reported at once.
#[derive(Debug, Clone, thiserror::Error, Diagnostic)]
#[error("{summary}")]
#[diagnostic(code(edaflow::flow::invalid))]
pub struct FlowReport {
    /// For example "flows/orders.toml: 3 errors".
    pub summary: String,
    #[related]
    pub errors: Vec<FlowError>,
}

impl FlowReport {
    /// Wraps a list of errors, summarising them against the given file names.
    pub fn new(files: &[String], errors: Vec<FlowError>) -> FlowReport {
        let n = errors.len();
        let plural = if n == 1 { "" } else { "s" };
        FlowReport {
            summary: format!("{}: {n} error{plural}", files.join(", ")),
            errors,
        }
    }
}

/// "producers" → "producer", for messages about one component of a section.
fn singular(section: &str) -> &str {
    section.strip_suffix('s').unwrap_or(section)
}

/// Help for a name that matched nothing: the closest known name when one is close enough,
/// otherwise the list of names that would have been accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suggestion {
    /// What the names are, singular: "key", "kind", "queue".
    pub noun: &'static str,
    /// The known name closest to what was written, if any is close.
    pub closest: Option<String>,
    /// Every accepted name, in a stable order.
    pub known: Vec<String>,
}

impl Suggestion {
    /// Picks the closest of `known` to `found` (by edit distance, ignoring case).
    pub fn new<S: AsRef<str>>(noun: &'static str, found: &str, known: &[S]) -> Suggestion {
        let known: Vec<String> = known.iter().map(|k| k.as_ref().to_owned()).collect();
        let closest = closest_name(found, &known).map(str::to_owned);
        Suggestion {
            noun,
            closest,
            known,
        }
    }
}

impl fmt::Display for Suggestion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(closest) = &self.closest {
            return write!(f, "did you mean `{closest}`?");
        }
        if self.known.is_empty() {
            return write!(f, "no {} is declared", self.noun);
        }
        write!(f, "expected a {}: {}", self.noun, KeyList(&self.known))
    }
}

/// Formats names as "`a`, `b` or `c`".
struct KeyList<'a, S>(&'a [S]);

impl<S: AsRef<str>> fmt::Display for KeyList<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let last = self.0.len().saturating_sub(1);
        for (i, name) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(if i == last { " or " } else { ", " })?;
            }
            write!(f, "`{}`", name.as_ref())?;
        }
        Ok(())
    }
}

/// Edit distance over chars counting a swap of two neighbours as one edit (the commonest
/// typo: `nmae` for `name`): the "optimal string alignment" variant.
use strsim::osa_distance as edit_distance;

/// The known name nearest to `found`, when it is near enough to be a likely typo.
fn closest_name<'a>(found: &str, known: &'a [String]) -> Option<&'a str> {
    let found_lower = found.to_lowercase();
    // A short name tolerates fewer edits: "to" vs "of" is not a typo.
    let limit = (found.chars().count() / 3).clamp(1, 2);
    known
        .iter()
        .map(|k| (edit_distance(&found_lower, &k.to_lowercase()), k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.as_str())
}

/// Renders a diagnostic (an error, a warning or a whole `FlowReport`) as text, without
/// colours or hyperlinks, wrapped at `width`: the same input gives the same bytes, so the
/// CLI and snapshot tests share it.
pub fn render(diagnostic: &dyn Diagnostic, width: usize) -> String {
    let handler = GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
        .with_width(width)
        .with_links(false)
        .without_syntax_highlighting();
    let mut out = String::new();
    if handler.render_report(&mut out, diagnostic).is_err() {
        // Rendering only fails if a source span is out of range, which `load` prevents by
        // clamping; fall back to the plain message rather than losing the problem.
        out = diagnostic.to_string();
    }
    out
}

/// One problem (an error of a failed load, or a warning) as plain data: where it is and
/// what it says, for an editor that marks the line rather than a terminal that draws the
/// source. Serialized by the console's reload report and `edaflow validate --format json`:
/// fields are only added, a renamed or removed field is a changelog line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The file the problem is in, named as the diagnostic names it (relative to the
    /// working directory when inside it); `None` when the problem is about no file.
    #[serde(serialize_with = "path_as_text")]
    pub file: Option<PathBuf>,
    /// 1-based line of the primary label; `None` when the problem has no place.
    pub line: Option<usize>,
    /// 1-based column (in characters) of the primary label; `None` with `line`.
    pub column: Option<usize>,
    /// The stable code, e.g. `edaflow::script::compile`.
    pub code: String,
    /// Whether it fails validation.
    pub severity: Severity,
    /// The diagnostic's text, with its primary label when the label says more.
    pub message: String,
    /// The diagnostic's advice, if it has any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    /// Every place the diagnostic marks, the primary one first (empty when it has no
    /// place).
    pub labels: Vec<Label>,
}

/// How bad a `Problem` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The flow set is invalid: it does not load or run.
    Error,
    /// Worth a look; the flow set still loads and runs.
    Warning,
}

/// One place a `Problem` marks in a source file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Label {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What the label says there (`unknown key`, `first defined here`), if anything.
    pub text: Option<String>,
}

/// Every error of `report` as a `Problem`, in the report's order.
pub fn problems(report: &FlowReport) -> Vec<Problem> {
    report.errors.iter().map(problem).collect()
}

/// Every warning as a `Problem`, in order.
pub fn warning_problems(warnings: &[FlowWarning]) -> Vec<Problem> {
    warnings
        .iter()
        .map(|warning| problem_of(warning, Severity::Warning, None))
        .collect()
}

fn problem(error: &FlowError) -> Problem {
    let path = match error {
        // About a path, not a place in a file's text.
        FlowError::PathNotFound { path }
        | FlowError::ReadFailed { path, .. }
        | FlowError::NoFlowFiles { path } => Some(path.clone()),
        _ => None,
    };
    problem_of(error, Severity::Error, path)
}

/// `diagnostic` as a `Problem`; `path`, when given, is its file (for problems about a
/// path rather than a place in a file's text).
fn problem_of(diagnostic: &dyn Diagnostic, severity: Severity, path: Option<PathBuf>) -> Problem {
    let label = primary_label(diagnostic);
    let source = diagnostic.source_code();
    let primary = source
        .zip(label.as_ref())
        .and_then(|(source, label)| place(source, label.inner()));
    let mut labels: Vec<LabeledSpan> = diagnostic.labels().into_iter().flatten().collect();
    // The primary label first, the others in their order.
    labels.sort_by_key(|l| !l.primary() && Some(l) != label.as_ref());
    let labels = labels
        .iter()
        .filter_map(|l| {
            let at = place(source?, l.inner())?;
            Some(Label {
                line: at.line,
                column: at.column,
                text: l.label().map(str::to_owned),
            })
        })
        .collect();
    Problem {
        file: path.or_else(|| primary.as_ref().and_then(|p| p.file.clone())),
        line: primary.as_ref().map(|p| p.line),
        column: primary.as_ref().map(|p| p.column),
        code: diagnostic.code().map_or_else(
            || "edaflow::flow::invalid".to_owned(),
            |code| code.to_string(),
        ),
        severity,
        message: message(diagnostic, label.as_ref().and_then(LabeledSpan::label)),
        help: diagnostic.help().map(|help| help.to_string()),
        labels,
    }
}

/// The label marked primary, or else the first: the one the problem is about.
fn primary_label(diagnostic: &dyn Diagnostic) -> Option<LabeledSpan> {
    let labels: Vec<LabeledSpan> = diagnostic.labels()?.collect();
    let primary = labels.iter().position(LabeledSpan::primary).unwrap_or(0);
    labels.into_iter().nth(primary)
}

/// Where a span starts in its source.
struct Place {
    file: Option<PathBuf>,
    line: usize,
    column: usize,
}

fn place(source: &dyn SourceCode, span: &SourceSpan) -> Option<Place> {
    let start = SourceSpan::from((span.offset(), 0));
    let at = source.read_span(&start, 0, 0).ok()?;
    // miette counts the column in bytes; an editor counts characters.
    let column_bytes = at.column();
    let line_start = span.offset().checked_sub(column_bytes)?;
    let before = source
        .read_span(&SourceSpan::from((line_start, column_bytes)), 0, 0)
        .ok()?;
    let before = before.data().get(..column_bytes).unwrap_or(before.data());
    let column = String::from_utf8_lossy(before).chars().count();
    Some(Place {
        file: at.name().map(PathBuf::from),
        line: at.line() + 1,
        column: column + 1,
    })
}

/// The diagnostic's text, plus its label where the label adds to it ("expected an
/// integer"), plus the chain of causes (an I/O error's reason).
fn message(error: &dyn Diagnostic, label: Option<&str>) -> String {
    let mut message = error.to_string();
    if let Some(label) = label.map(str::trim).filter(|l| !l.is_empty()) {
        if !message.to_lowercase().contains(&label.to_lowercase()) {
            message = format!("{message}: {label}");
        }
    }
    let mut cause = error.source();
    while let Some(error) = cause {
        let text = error.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        cause = error.source();
    }
    message
}

/// Serializes a path as text (lossily: a path that is not UTF-8 still shows).
fn path_as_text<S: serde::Serializer>(
    path: &Option<PathBuf>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match path {
        Some(path) => serializer.serialize_str(&Path::to_string_lossy(path)),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_stay_small_enough_to_return_by_value() {
        assert!(std::mem::size_of::<FlowError>() <= 128);
        assert!(std::mem::size_of::<FlowWarning>() <= 128);
    }

    #[test]
    fn edit_distance_counts_single_edits_and_swaps_as_one() {
        assert_eq!(edit_distance("topic", "topic"), 0);
        assert_eq!(edit_distance("topc", "topic"), 1);
        assert_eq!(edit_distance("scirpt", "script"), 1);
        assert_eq!(edit_distance("queue", "topic"), 5);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("nmae", "name"), 1);
        assert_eq!(edit_distance("dtaa", "data"), 1);
        assert_eq!(edit_distance("ab", ""), 2);
    }

    #[test]
    fn suggestion_picks_a_close_name_or_lists_them() {
        let known = ["topic", "topics", "queue", "script"];
        let s = Suggestion::new("key", "scirpt", &known);
        assert_eq!(s.to_string(), "did you mean `script`?");
        let s = Suggestion::new("key", "banana", &known);
        assert_eq!(
            s.to_string(),
            "expected a key: `topic`, `topics`, `queue` or `script`"
        );
        let s = Suggestion::new::<&str>("queue", "x", &[]);
        assert_eq!(s.to_string(), "no queue is declared");
        // Case slips are typos too.
        assert_eq!(
            Suggestion::new("kind", "HTTP", &["http", "lines"])
                .closest
                .as_deref(),
            Some("http")
        );
    }

    /// Loads (and compiles) `files` written into a temp dir, which must fail; the
    /// problems, and the dir to name files by.
    fn problems_of(files: &[(&str, &str)]) -> (tempfile::TempDir, Vec<Problem>) {
        let dir = tempfile::TempDir::new().expect("temp dir");
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().expect("a file in the dir")).expect("mkdir");
            std::fs::write(&path, text).expect("write");
        }
        let flow = vec![dir.path().join(files[0].0)];
        let report = match crate::runtime::prepare(&flow) {
            Ok(_) => panic!("{files:?} should not load"),
            Err(report) => report,
        };
        let problems = problems(&report);
        (dir, problems)
    }

    #[test]
    fn a_toml_syntax_error_points_at_its_line() {
        let (dir, problems) = problems_of(&[(
            "flow.toml",
            "[flow]\nname = \"p\"\n\n[topics.a]\nkind = \"event\n",
        )]);
        let [problem] = problems.as_slice() else {
            panic!("one problem: {problems:#?}");
        };
        assert_eq!(problem.file, Some(dir.path().join("flow.toml")));
        assert_eq!(problem.code, "edaflow::flow::toml_syntax");
        // Where the string should have been closed: the end of line 5.
        assert_eq!((problem.line, problem.column), (Some(5), Some(14)));
        assert!(problem.message.starts_with("invalid TOML"), "{problem:#?}");
    }

    #[test]
    fn a_script_that_does_not_compile_points_into_the_script() {
        let flow = "[flow]\nname = \"p\"\n\n[subscribers.w]\ntopic = \"t\"\nscript = \"handlers/w.rhai\"\n";
        let (dir, problems) = problems_of(&[
            ("flow.toml", flow),
            ("handlers/w.rhai", "let a = 1;\n// é\nlet é = ;\n"),
        ]);
        let [problem] = problems.as_slice() else {
            panic!("one problem: {problems:#?}");
        };
        assert_eq!(problem.file, Some(dir.path().join("handlers/w.rhai")));
        assert_eq!(problem.code, "edaflow::script::compile");
        // At the `é` (the fifth character; the sixth byte).
        assert_eq!((problem.line, problem.column), (Some(3), Some(5)));
        assert!(problem.message.contains("does not compile"), "{problem:#?}");
        // The label repeats the compiler's message, already in the text.
        assert_eq!(problem.message.matches(':').count(), 1, "{problem:#?}");
    }

    #[test]
    fn an_unknown_key_has_its_place_and_the_suggestion() {
        let flow =
            "[flow]\nname = \"p\"\n\n[subscribers.w]\ntopic = \"t\"\n  scirpt = \"w.rhai\"\n";
        let (dir, problems) = problems_of(&[("flow.toml", flow)]);
        let problem = problems
            .iter()
            .find(|p| p.code == "edaflow::flow::unknown_key")
            .unwrap_or_else(|| panic!("an unknown key: {problems:#?}"));
        assert_eq!(
            problem,
            &Problem {
                file: Some(dir.path().join("flow.toml")),
                line: Some(6),
                column: Some(3),
                code: "edaflow::flow::unknown_key".to_owned(),
                severity: Severity::Error,
                message: "unknown key `scirpt` in `subscribers.w`".to_owned(),
                help: Some("did you mean `script`?".to_owned()),
                labels: vec![Label {
                    line: 6,
                    column: 3,
                    text: Some("unknown key".to_owned()),
                }],
            }
        );
    }

    #[test]
    fn columns_count_characters_and_labels_that_add_are_kept() {
        let text: Arc<str> = "a = 1\nnamé = \"x\" = \"y\"\n".into();
        let at = text.find("= \"y").expect("in the text");
        let error = FlowError::WrongType {
            key: "namé".to_owned(),
            expected: "a string",
            found: "an integer",
            src: Arc::new(source_file("f.toml", text.clone())),
            span: (at, 1).into(),
        };
        let [problem] = problems(&FlowReport::new(&[], vec![error]))
            .try_into()
            .expect("one");
        assert_eq!((problem.line, problem.column), (Some(2), Some(12)));
        assert_eq!(problem.file, Some(PathBuf::from("f.toml")));
        assert_eq!(
            problem.message,
            "`namé` must be a string, found an integer: expected a string"
        );
    }

    #[test]
    fn a_problem_without_a_place_names_its_path_only() {
        let missing = PathBuf::from("/nonexistent/flows");
        let report = match crate::runtime::prepare(std::slice::from_ref(&missing)) {
            Ok(_) => panic!("a missing path should not load"),
            Err(report) => report,
        };
        let problems = problems(&report);
        assert_eq!(
            problems,
            [Problem {
                file: Some(missing),
                line: None,
                column: None,
                code: "edaflow::flow::path_not_found".to_owned(),
                severity: Severity::Error,
                message: "flow path /nonexistent/flows does not exist".to_owned(),
                help: Some(
                    "give a flow file (`orders.toml`) or a folder of them (`flows/`)".to_owned()
                ),
                labels: Vec::new(),
            }]
        );
        let json = serde_json::to_value(&problems[0]).expect("serializes");
        assert_eq!(json["file"], "/nonexistent/flows");
        assert_eq!(json["line"], serde_json::Value::Null);
        assert_eq!(json["column"], serde_json::Value::Null);
    }

    #[test]
    fn every_label_is_placed_primary_first() {
        let text: Arc<str> = "[a]\nx = 1\n[a]\ny = 2\n".into();
        let error = FlowError::Syntax {
            reason: "duplicate key".to_owned(),
            src: Arc::new(source_file("f.toml", text)),
            span: (6 + 4, 3).into(),
            label: "duplicate key",
            first: Some((0, 3).into()),
        };
        let [problem] = problems(&FlowReport::new(&[], vec![error]))
            .try_into()
            .expect("one");
        assert_eq!(
            problem.labels,
            [
                Label {
                    line: 3,
                    column: 1,
                    text: Some("duplicate key".to_owned())
                },
                Label {
                    line: 1,
                    column: 1,
                    text: Some("first defined here".to_owned())
                },
            ]
        );
        let json = serde_json::to_value(&problem).expect("serializes");
        assert_eq!(json["severity"], "error");
        assert_eq!(json["labels"][1]["text"], "first defined here");
    }

    #[test]
    fn warnings_are_problems_of_their_own_severity() {
        let text: Arc<str> = "[stores.views]\n".into();
        let warning = FlowWarning::StoreUnused {
            store: "views".to_owned(),
            src: Arc::new(source_file("f.toml", text)),
            span: (8, 5).into(),
        };
        let [problem] = warning_problems(&[warning]).try_into().expect("one");
        assert_eq!(problem.severity, Severity::Warning);
        assert_eq!(problem.code, "edaflow::flow::store_unused");
        assert_eq!((problem.line, problem.column), (Some(1), Some(9)));
        assert_eq!(problem.file, Some(PathBuf::from("f.toml")));
        assert!(problem.help.is_some_and(|h| h.contains("[stores.views]")));
    }

    #[test]
    fn a_read_failure_says_why() {
        let error = FlowError::ReadFailed {
            path: PathBuf::from("f.toml"),
            source: Arc::new(std::io::Error::other("disk on fire")),
        };
        let [problem] = problems(&FlowReport::new(&[], vec![error]))
            .try_into()
            .expect("one");
        assert_eq!(problem.message, "cannot read f.toml: disk on fire");
        assert_eq!(problem.line, None);
        assert_eq!(problem.file, Some(PathBuf::from("f.toml")));
    }
}
