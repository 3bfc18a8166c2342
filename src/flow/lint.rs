//! The CQRS lint: the checks that need both the flow set and what its handler scripts do.
//! A command topic has exactly one handling group; a query handler replies, from code that
//! can run; a store some handler writes is read by a query (or exposed), a store a query
//! reads is written, and a declared store is used at all.
//!
//! Pure data in, diagnostics out: the facts about each script (`ScriptFacts`) are read off
//! its compiled syntax tree by `script::facts`, and the prepare step
//! (`runtime::prepare`) hands them here with what the load kept for the lint.

use std::collections::{BTreeMap, BTreeSet};

use crate::flow::diagnostic::{FlowError, FlowWarning};
use crate::flow::load::findings::{Findings, Located};
use crate::flow::load::Loaded;
use crate::flow::model::{FlowSet, TopicKind};
use crate::pattern::TopicPattern;

/// What the lint needs to know about one handler script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptFacts {
    pub reply: ReplyFact,
    /// Every store opened by a string literal (`store("orders")`), by name.
    pub stores: BTreeMap<String, StoreUse>,
    /// The script may use stores the tree does not show: `store(name)` of a variable, or a
    /// call into an imported module.
    pub stores_unknown: bool,
    /// Every queue named by a string literal in an `enqueue("…", …)` call of code that can
    /// run (`edaflow graph` draws these edges). A computed queue name is not listed.
    pub enqueues: BTreeSet<String>,
}

/// Whether, and how, a script calls `reply`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyFact {
    /// Some `reply` call can run.
    Replies,
    /// No `reply` call anywhere in the script.
    Never,
    /// There are `reply` calls, but none of them can run. The first one (in source order)
    /// and why it cannot run.
    Unreachable { line: usize, why: String },
    /// No `reply` that surely can run, but the script calls code the analysis cannot see
    /// (an imported module, a function pointer built from a computed name), which might.
    Unknown,
}

/// How sure the analysis is that something happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Use {
    #[default]
    No,
    /// The store handle goes where the analysis cannot follow it (a function argument, a
    /// reassigned variable), so it may be read or written there.
    Maybe,
    /// A `get`/`scan` (reads) or `set`/`remove`/`incr` (writes) is called on it.
    Yes,
}

/// One store's use by one script.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct StoreUse {
    pub reads: Use,
    pub writes: Use,
}

/// What the load keeps for the lint: where each subscriber's patterns and each store's
/// name were written, so the lint's diagnostics point there.
#[derive(Clone, Debug, Default)]
pub struct LintInput {
    pub(crate) subscriber_patterns: Vec<(String, Located<TopicPattern>)>,
    pub(crate) store_names: Vec<Located<String>>,
}

/// The facts of each subscriber's script, by subscriber name: `None` for a script that did
/// not compile. Subscribers without a script are absent.
pub type Facts = BTreeMap<String, Option<ScriptFacts>>;

/// Runs the lint over a loaded set and its scripts' facts.
///
/// # Errors
/// The lint's errors (a command handled twice, a query that never replies), in file order.
pub fn lint(loaded: &Loaded, facts: &Facts) -> Result<Vec<FlowWarning>, Vec<FlowError>> {
    let mut found = Findings::default();
    let queries = check_cqrs(&loaded.flows, &loaded.lint, facts, &mut found);
    check_stores(
        &loaded.flows,
        facts,
        &queries,
        &loaded.lint.store_names,
        &mut found,
    );
    if found.is_clean() {
        Ok(found.take_warnings())
    } else {
        Err(found.into_errors())
    }
}

/// The default pattern that marks command topics (besides `[topics.X] kind = "command"`).
const COMMAND_PATTERN: &str = "*.command.*";
/// The default pattern that marks query topics (besides `kind = "query"`).
const QUERY_PATTERN: &str = "*.query.*";

fn topic_kind_is(set: &FlowSet, topic: &str, kind: TopicKind, pattern: &str) -> bool {
    match set.topics.get(topic) {
        Some(config) if config.kind != TopicKind::Event => config.kind == kind,
        _ => TopicPattern::parse(pattern).is_ok_and(|p| p.matches(topic)),
    }
}

/// CQRS rules: a command topic has exactly one handling group; a query handler replies,
/// from code that can run. Returns the query handlers (exact subscribers of query topics).
fn check_cqrs(
    set: &FlowSet,
    input: &LintInput,
    facts: &Facts,
    found: &mut Findings,
) -> BTreeSet<String> {
    let mut queries = BTreeSet::new();
    let patterns = &input.subscriber_patterns;
    let mut topics: BTreeSet<&str> = set.topics.keys().map(String::as_str).collect();
    topics.extend(
        patterns
            .iter()
            .filter(|(_, p)| p.value.is_literal())
            .map(|(_, p)| p.value.as_str()),
    );
    topics.extend(
        set.subscribers
            .values()
            .flat_map(|s| s.emits.iter().map(String::as_str)),
    );
    for topic in topics {
        if topic_kind_is(set, topic, TopicKind::Command, COMMAND_PATTERN) {
            let mut groups: Vec<&str> = Vec::new();
            for (subscriber, pattern) in patterns {
                let Some(config) = set.subscribers.get(subscriber) else {
                    continue;
                };
                // Only exact subscriptions handle a command; `orders.>` monitors just watch.
                if pattern.value.as_str() != topic || groups.contains(&config.group.as_str()) {
                    continue;
                }
                groups.push(&config.group);
                if groups.len() > 1 {
                    found.push(
                        pattern.file,
                        pattern.span.offset(),
                        FlowError::CommandHandledTwice {
                            topic: topic.to_owned(),
                            first: groups[0].to_owned(),
                            src: pattern.src.clone(),
                            span: pattern.span,
                        },
                    );
                }
            }
        }
        if topic_kind_is(set, topic, TopicKind::Query, QUERY_PATTERN) {
            for (subscriber, pattern) in patterns {
                let Some(config) = set.subscribers.get(subscriber) else {
                    continue;
                };
                if pattern.value.as_str() != topic {
                    continue;
                }
                queries.insert(subscriber.clone());
                let fact = match (&config.script, facts.get(subscriber)) {
                    (None, _) => ReplyFact::Never,
                    (Some(_), Some(Some(f))) => f.reply.clone(),
                    // Unparsable: the compile step reports it; judge the text meanwhile.
                    (Some(s), _) if s.text.contains("reply(") => ReplyFact::Replies,
                    (Some(_), _) => ReplyFact::Never,
                };
                if let ReplyFact::Unreachable { line, why } = fact {
                    let script = config.script.as_ref().map_or_else(String::new, |s| {
                        let path = s.path.strip_prefix(&s.base_dir).unwrap_or(&s.path);
                        path.display().to_string()
                    });
                    found.warn(
                        pattern.file,
                        pattern.span.offset(),
                        FlowWarning::UnreachableReply {
                            topic: topic.to_owned(),
                            subscriber: subscriber.clone(),
                            at: format!("{script}:{line} never runs: {why}"),
                            src: pattern.src.clone(),
                            span: pattern.span,
                        },
                    );
                } else if fact == ReplyFact::Never {
                    found.push(
                        pattern.file,
                        pattern.span.offset(),
                        FlowError::QueryWithoutReply {
                            topic: topic.to_owned(),
                            subscriber: subscriber.clone(),
                            src: pattern.src.clone(),
                            span: pattern.span,
                        },
                    );
                }
            }
        }
    }
    queries
}

/// The store rule: a store some handler writes is read by some query handler (or exposed
/// over HTTP), a store a query reads is written by some handler, and a declared store is
/// used at all. Only `store("literal")` calls are seen; when any script may use stores the
/// analysis cannot see (a computed name, a module call, a script that does not parse), the
/// warnings that such a use could contradict are not given.
fn check_stores(
    set: &FlowSet,
    facts: &Facts,
    queries: &BTreeSet<String>,
    names: &[Located<String>],
    found: &mut Findings,
) {
    let blind = |f: &Option<ScriptFacts>| f.as_ref().is_none_or(|f| f.stores_unknown);
    let any_blind = facts.values().any(blind);
    let query_blind = facts
        .iter()
        .any(|(name, f)| queries.contains(name) && blind(f));
    let mut seen = BTreeSet::new();
    for name in names {
        let store = name.value.as_str();
        let Some(config) = set.stores.get(store) else {
            continue;
        };
        if !seen.insert(store) {
            continue;
        }
        let mut used = false;
        let mut writers = Vec::new();
        let mut may_be_written = false;
        let mut readers = Vec::new();
        let mut may_be_queried = config.expose;
        for (subscriber, f) in facts {
            let Some(uses) = f.as_ref().and_then(|f| f.stores.get(store)) else {
                continue;
            };
            used = true;
            may_be_written |= uses.writes >= Use::Maybe;
            if uses.writes == Use::Yes {
                writers.push(format!("`{subscriber}`"));
            }
            if queries.contains(subscriber) {
                may_be_queried |= uses.reads >= Use::Maybe;
                if uses.reads == Use::Yes {
                    readers.push(format!("`{subscriber}`"));
                }
            }
        }
        let (file, offset, src, span) = (name.file, name.span.offset(), &name.src, name.span);
        if !used && !any_blind {
            let warning = FlowWarning::StoreUnused {
                store: store.to_owned(),
                src: src.clone(),
                span,
            };
            found.warn(file, offset, warning);
        }
        if !writers.is_empty() && !may_be_queried && !query_blind {
            let warning = FlowWarning::StoreNotQueried {
                store: store.to_owned(),
                writers: writers.join(", "),
                src: src.clone(),
                span,
            };
            found.warn(file, offset, warning);
        }
        if !readers.is_empty() && !may_be_written && !any_blind {
            let warning = FlowWarning::StoreNeverWritten {
                store: store.to_owned(),
                queries: readers.join(", "),
                src: src.clone(),
                span,
            };
            found.warn(file, offset, warning);
        }
    }
}
