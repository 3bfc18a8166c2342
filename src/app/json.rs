//! What `validate`, `test` and `trace` print with `--format json`: one JSON document on
//! stdout, built from the structs here (`edaflow graph --format json` is
//! `flow::graph::GraphJson`). These structs are a contract with the tools that read them
//! (docs/cli.md lists every field): fields are only added; a field renamed or removed, or
//! a meaning changed, is a line in the changelog.

use std::collections::HashSet;
use std::time::SystemTime;

use serde::Serialize;

use crate::flow::diagnostic::Problem;
use crate::flowtest::TestReport;
use crate::runtime::history::TraceEntry;
use crate::runtime::Prepared;

/// `edaflow validate --format json`.
#[derive(Debug, Serialize)]
pub struct ValidateJson {
    /// True when the flows load (warnings allowed); the exit code says the same.
    pub ok: bool,
    pub summary: ValidateSummary,
    /// The errors of a set that does not load, or else its warnings, in file order.
    pub diagnostics: Vec<Problem>,
}

/// The counts of `ValidateJson`.
#[derive(Debug, Serialize)]
pub struct ValidateSummary {
    pub errors: usize,
    pub warnings: usize,
    /// What the flows declare; `null` when they do not load.
    pub declared: Option<Declared>,
}

/// How many of each thing a loaded flow set declares.
#[derive(Debug, Serialize)]
pub struct Declared {
    pub files: usize,
    pub producers: usize,
    pub subscribers: usize,
    pub queues: usize,
    pub relays: usize,
    pub chains: usize,
    pub stores: usize,
    pub tests: usize,
}

impl Declared {
    pub fn of(prepared: &Prepared) -> Declared {
        let f = &prepared.flows;
        Declared {
            files: f.files.len(),
            producers: f.producers.len(),
            subscribers: f.subscribers.len(),
            queues: f.queues.len(),
            relays: f.relays.len(),
            chains: f.chains.len(),
            stores: f.stores.len(),
            tests: f.tests.len(),
        }
    }
}

impl ValidateJson {
    /// A flow set that loaded, with its warnings.
    pub fn valid(prepared: &Prepared, warnings: Vec<Problem>) -> ValidateJson {
        ValidateJson {
            ok: true,
            summary: ValidateSummary {
                errors: 0,
                warnings: warnings.len(),
                declared: Some(Declared::of(prepared)),
            },
            diagnostics: warnings,
        }
    }

    /// A flow set that did not load, with its errors (its warnings are not known).
    pub fn invalid(errors: Vec<Problem>) -> ValidateJson {
        ValidateJson {
            ok: false,
            summary: ValidateSummary {
                errors: errors.len(),
                warnings: 0,
                declared: None,
            },
            diagnostics: errors,
        }
    }
}

/// `edaflow test --format json`.
#[derive(Debug, Serialize)]
pub struct TestRunJson {
    /// True when the flows loaded and every test passed; the exit code says the same.
    pub passed: bool,
    pub summary: TestSummary,
    /// Each test, in file order.
    pub tests: Vec<TestJson>,
    /// The errors of flows that do not load (then `tests` is empty), or else their
    /// warnings.
    pub diagnostics: Vec<Problem>,
}

/// The counts of `TestRunJson`.
#[derive(Debug, Serialize)]
pub struct TestSummary {
    pub total: usize,
    pub passed: usize,
    pub failed: usize,
    /// The real time all tests took, in milliseconds.
    pub duration_ms: f64,
}

/// One flow test's result.
#[derive(Debug, Serialize)]
pub struct TestJson {
    /// The flow file that declares it.
    pub file: String,
    /// Its `name`.
    pub name: String,
    pub passed: bool,
    /// The real time it took, in milliseconds (its virtual time runs faster).
    pub duration_ms: f64,
    /// Why it failed, as `edaflow test` prints it; `null` when it passed.
    pub failure: Option<String>,
}

impl TestRunJson {
    pub fn of(reports: &[TestReport], warnings: Vec<Problem>) -> TestRunJson {
        let tests: Vec<TestJson> = reports
            .iter()
            .map(|r| TestJson {
                file: r.file.clone(),
                name: r.name.clone(),
                passed: r.failure.is_none(),
                duration_ms: millis(r.duration),
                failure: r.failure.clone(),
            })
            .collect();
        let failed = tests.iter().filter(|t| !t.passed).count();
        TestRunJson {
            passed: failed == 0,
            summary: TestSummary {
                total: tests.len(),
                passed: tests.len() - failed,
                failed,
                duration_ms: reports.iter().map(|r| millis(r.duration)).sum(),
            },
            tests,
            diagnostics: warnings,
        }
    }

    /// Flows that did not load: no test ran.
    pub fn invalid(errors: Vec<Problem>) -> TestRunJson {
        TestRunJson {
            passed: false,
            summary: TestSummary {
                total: 0,
                passed: 0,
                failed: 0,
                duration_ms: 0.0,
            },
            tests: Vec::new(),
            diagnostics: errors,
        }
    }
}

/// `edaflow trace --format json`: the journey's events as a flat list in the order of the
/// text tree (each event before the events it caused, depth first), each with its parent's
/// id, so a tool can read it as a list or rebuild the tree.
#[derive(Debug, Serialize)]
pub struct TraceJson {
    /// The journey asked for (its first event's id).
    pub correlation_id: String,
    pub events: Vec<TraceEventJson>,
}

/// One event of a journey.
#[derive(Debug, Serialize)]
pub struct TraceEventJson {
    pub id: String,
    /// The id of the event that caused it (its causation id), when that event is in the
    /// journey; `null` for a root.
    pub parent_id: Option<String>,
    /// 0 for a root, its parent's depth + 1 otherwise.
    pub depth: usize,
    pub topic: String,
    /// The component that published it (a subscriber, producer, relay or chain).
    pub emitted_by: String,
    /// The flow generation whose code emitted it; `null` for a producer's own events.
    pub generation: Option<u64>,
    /// When it was published, RFC 3339 in UTC with microseconds.
    pub time: String,
    /// Milliseconds from its parent's time; `null` for a root.
    pub delta_ms: Option<f64>,
    /// Its W3C `traceparent`; left out when it carries none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl TraceJson {
    pub fn of(correlation_id: &str, entries: &[TraceEntry]) -> TraceJson {
        let ids: HashSet<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        let parent_of = |e: &TraceEntry| e.causation_id.clone().filter(|c| ids.contains(&**c));
        let mut events = Vec::with_capacity(entries.len());
        let mut seen = HashSet::new();
        // Depth first from each root, as the text tree; `seen` guards against a cycle.
        let mut stack: Vec<(usize, usize)> = entries
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, e)| parent_of(e).is_none())
            .map(|(i, _)| (i, 0))
            .collect();
        while let Some((index, depth)) = stack.pop() {
            if !seen.insert(index) {
                continue;
            }
            let e = &entries[index];
            let parent_id = parent_of(e);
            let parent_time = parent_id
                .as_deref()
                .and_then(|p| entries.iter().find(|x| x.id == p))
                .map(|p| p.time);
            events.push(TraceEventJson {
                id: e.id.clone(),
                parent_id,
                depth,
                topic: e.topic.clone(),
                emitted_by: e.emitted_by.clone(),
                generation: e.generation,
                time: humantime::format_rfc3339_micros(e.time).to_string(),
                delta_ms: parent_time.map(|p| delta_ms(p, e.time)),
                traceparent: e.traceparent.clone(),
            });
            let children = entries
                .iter()
                .enumerate()
                .rev()
                .filter(|(_, c)| c.causation_id.as_deref() == Some(e.id.as_str()));
            stack.extend(children.map(|(i, _)| (i, depth + 1)));
        }
        TraceJson {
            correlation_id: correlation_id.to_owned(),
            events,
        }
    }
}

fn millis(duration: std::time::Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// `to - from` in milliseconds, negative when `to` is earlier (clocks of two processes).
fn delta_ms(from: SystemTime, to: SystemTime) -> f64 {
    match to.duration_since(from) {
        Ok(d) => millis(d),
        Err(e) => -millis(e.duration()),
    }
}

/// `value` as pretty JSON and a newline, as the commands print it.
pub fn to_text(value: &impl Serialize) -> String {
    // These structs hold only strings, numbers and options: serializing cannot fail.
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry(id: &str, cause: Option<&str>, ms: u64) -> TraceEntry {
        TraceEntry {
            id: id.into(),
            causation_id: cause.map(str::to_owned),
            topic: format!("t{id}"),
            emitted_by: "x".into(),
            generation: cause.map(|_| 2),
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(ms),
            traceparent: None,
        }
    }

    #[test]
    fn a_trace_is_flat_in_tree_order_with_parent_ids() {
        // Recorded out of tree order, with a parent from outside the journey.
        let entries = [
            entry("a", None, 0),
            entry("c", Some("a"), 3),
            entry("d", Some("b"), 5),
            entry("b", Some("a"), 2),
            entry("z", Some("elsewhere"), 9),
        ];
        let json = TraceJson::of("a", &entries);
        let order: Vec<(&str, Option<&str>, usize)> = json
            .events
            .iter()
            .map(|e| (e.id.as_str(), e.parent_id.as_deref(), e.depth))
            .collect();
        assert_eq!(
            order,
            [
                ("a", None, 0),
                ("c", Some("a"), 1),
                ("b", Some("a"), 1),
                ("d", Some("b"), 2),
                ("z", None, 0),
            ]
        );
        assert_eq!(json.events[3].delta_ms, Some(3.0));
        assert_eq!(json.events[0].delta_ms, None);
        assert_eq!(json.events[0].time, "1970-01-01T00:00:00.000000Z");
        assert_eq!(json.events[1].generation, Some(2));
    }

    #[test]
    fn test_results_count_and_time() {
        let report = |name: &str, failure: Option<&str>, ms: u64| TestReport {
            name: name.into(),
            file: "f.toml".into(),
            failure: failure.map(str::to_owned),
            duration: Duration::from_millis(ms),
        };
        let json = TestRunJson::of(
            &[report("one", None, 2), report("two", Some("no"), 3)],
            Vec::new(),
        );
        assert!(!json.passed);
        assert_eq!(
            (json.summary.total, json.summary.passed, json.summary.failed),
            (2, 1, 1)
        );
        assert_eq!(json.summary.duration_ms, 5.0);
        assert_eq!(json.tests[1].failure.as_deref(), Some("no"));
        assert!(json.tests[0].passed && !json.tests[1].passed);
    }
}
