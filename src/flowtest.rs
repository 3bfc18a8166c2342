//! `edaflow test`: runs the `[[tests]]` of flow files in process, each in a fresh runtime
//! on its own memory broker, on paused virtual time (retries, backoffs and delays take no
//! real time). A test publishes its events, waits until nothing is queued, in flight or
//! scheduled, then looks for each expected event among those the handlers emitted.
//! `expect` matches `data` as a subset: listed fields must be present and equal.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::broker::{Backpressure, Broker, MemoryBroker, MemoryOptions};
use crate::event::{to_article_json, Event};
use crate::flow::model::{ExpectedEvent, FlowTest, TestStep};
use crate::pattern::TopicPattern;
use crate::runtime::{Prepared, Runtime, RuntimeError, RuntimeOptions};

/// How long (virtual time) a test may take to settle.
const SETTLE_LIMIT: Duration = Duration::from_secs(3600);

/// The result of one test.
#[derive(Debug)]
pub struct TestReport {
    pub name: String,
    /// The flow file that declares it, relative to the working directory when inside it.
    pub file: String,
    /// `None` when it passed; otherwise a readable explanation.
    pub failure: Option<String>,
    /// How long it took to run, in real time (its virtual time runs faster).
    pub duration: Duration,
}

/// Runs every test of a prepared flow set. Must run on a tokio runtime with paused time
/// (`edaflow test` builds one); it also works on real time, only slower.
///
/// # Errors
/// A runtime that cannot start.
pub async fn run_all(prepared: &Prepared) -> Result<Vec<TestReport>, RuntimeError> {
    let mut reports = Vec::new();
    for test in &prepared.flows.tests {
        // As the diagnostics name it: relative to the working directory when inside it.
        let cwd = std::env::current_dir().unwrap_or_default();
        let file = prepared
            .flows
            .files
            .get(test.file)
            .map(|f| {
                f.path
                    .strip_prefix(&cwd)
                    .unwrap_or(&f.path)
                    .display()
                    .to_string()
            })
            .unwrap_or_default();
        let started = std::time::Instant::now();
        let failure = run_one(prepared, test).await?;
        reports.push(TestReport {
            name: test.name.clone(),
            file,
            failure,
            duration: started.elapsed(),
        });
    }
    Ok(reports)
}

async fn run_one(prepared: &Prepared, test: &FlowTest) -> Result<Option<String>, RuntimeError> {
    let broker = MemoryBroker::new(MemoryOptions::default());
    let all = TopicPattern::parse(">")
        .map_err(|_| RuntimeError::Broker(crate::broker::BrokerError::Closed))?;
    // Read once the test has run: a test is a bounded run, so its tap is not.
    let mut seen = broker.tap_within(all, 1_000_000, usize::MAX);
    let mut runtime = Runtime::new(
        broker.clone(),
        RuntimeOptions {
            producers: false,
            quiet: true,
            ..RuntimeOptions::default()
        },
    );
    let mut handled_rx = runtime.watch_handled(1_000_000);
    runtime.apply(prepared.clone()).await?;
    let mut published_ids = Vec::new();
    for step in &test.steps {
        match step {
            TestStep::Publish { topic, data } => {
                let event = Event::new(topic.clone(), "edaflow://test", data.clone());
                published_ids.push(event.id.clone());
                broker.publish(event, Backpressure::Wait).await?;
                settle(&broker).await;
            }
            TestStep::Advance(by) => {
                tokio::time::sleep(*by).await;
                settle(&broker).await;
            }
        }
    }
    settle(&broker).await;
    let settled = broker.is_idle();
    runtime.shutdown(Duration::ZERO).await;
    let mut emitted: Vec<Arc<Event>> = Vec::new();
    while let Ok(event) = seen.try_recv() {
        if !published_ids.contains(&event.id) {
            emitted.push(event);
        }
    }
    let mut handled: Vec<(Arc<str>, Arc<Event>)> = Vec::new();
    while let Ok(entry) = handled_rx.try_recv() {
        handled.push(entry);
    }
    let mut problems = String::new();
    if !settled {
        let _ = writeln!(
            problems,
            "the flow did not settle within {} of virtual time",
            crate::duration::format_duration(SETTLE_LIMIT)
        );
    }
    for expected in &test.expect {
        let problem = match &expected.handled_by {
            None => find(expected, &emitted),
            Some(subscriber) => find_handled(expected, subscriber, prepared, &handled),
        };
        if let Some(problem) = problem {
            problems.push_str(&problem);
        }
    }
    Ok(if problems.is_empty() {
        None
    } else {
        Some(problems)
    })
}

/// Waits until the broker has nothing queued, in flight or scheduled; virtual time moves
/// on by itself while every task waits on a timer.
async fn settle(broker: &MemoryBroker) {
    let deadline = tokio::time::Instant::now() + SETTLE_LIMIT;
    loop {
        // Let every task that can run do so before looking.
        for _ in 0..64 {
            tokio::task::yield_now().await;
        }
        if broker.is_idle() || tokio::time::Instant::now() >= deadline {
            return;
        }
        // Something is still queued or in flight (a retry waiting out its backoff, say):
        // let virtual time move on a little.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn find(expected: &ExpectedEvent, emitted: &[Arc<Event>]) -> Option<String> {
    let on_topic: Vec<&Arc<Event>> = emitted
        .iter()
        .filter(|e| e.topic == expected.topic)
        .collect();
    let wanted = expected.data.as_ref();
    if on_topic
        .iter()
        .any(|e| wanted.is_none_or(|w| contains(&e.data, w)))
    {
        return None;
    }
    let mut out = String::new();
    match wanted {
        Some(w) => {
            let _ = writeln!(
                out,
                "expected an event on `{}` with data containing {}",
                expected.topic,
                to_article_json(w)
            );
        }
        None => {
            let _ = writeln!(out, "expected an event on `{}`", expected.topic);
        }
    }
    if on_topic.is_empty() {
        let _ = writeln!(out, "  no event was emitted on `{}`", expected.topic);
    } else {
        for e in &on_topic {
            let _ = writeln!(out, "  got:  {}", to_article_json(&e.data));
            if let Some(w) = wanted {
                for line in differences(&e.data, w, "data") {
                    let _ = writeln!(out, "        {line}");
                }
            }
        }
    }
    let others: Vec<String> = emitted
        .iter()
        .filter(|e| e.topic != expected.topic)
        .map(|e| format!("{} {}", e.topic, to_article_json(&e.data)))
        .collect();
    if !others.is_empty() {
        let _ = writeln!(out, "  other events emitted:");
        for o in others {
            let _ = writeln!(out, "    {o}");
        }
    }
    Some(out)
}

/// Looks for an event on the expected topic that `subscriber` handled successfully.
fn find_handled(
    expected: &ExpectedEvent,
    subscriber: &str,
    prepared: &Prepared,
    handled: &[(Arc<str>, Arc<Event>)],
) -> Option<String> {
    if !prepared.flows.subscribers.contains_key(subscriber) {
        return Some(format!(
            "expect names `handled_by = \"{subscriber}\"`, but there is no such subscriber\n"
        ));
    }
    let by_it: Vec<&Arc<Event>> = handled
        .iter()
        .filter(|(name, e)| &**name == subscriber && e.topic == expected.topic)
        .map(|(_, e)| e)
        .collect();
    let wanted = expected.data.as_ref();
    if by_it
        .iter()
        .any(|e| wanted.is_none_or(|w| contains(&e.data, w)))
    {
        return None;
    }
    let mut out = format!(
        "expected `{subscriber}` to handle an event on `{}`",
        expected.topic
    );
    if let Some(w) = wanted {
        let _ = write!(out, " with data containing {}", to_article_json(w));
    }
    out.push('\n');
    if by_it.is_empty() {
        let _ = writeln!(
            out,
            "  `{subscriber}` handled no event on `{}` (did time advance far enough? did it fail?)",
            expected.topic
        );
    }
    for e in by_it {
        let _ = writeln!(out, "  handled: {}", to_article_json(&e.data));
    }
    Some(out)
}

/// Subset match: every field of `expected` is in `actual` and equal; numbers compare by
/// value (1 == 1.0); arrays must match element by element.
pub fn contains(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => e
            .iter()
            .all(|(k, ev)| a.get(k).is_some_and(|av| contains(av, ev))),
        (Value::Array(a), Value::Array(e)) => {
            a.len() == e.len() && a.iter().zip(e).all(|(x, y)| contains(x, y))
        }
        (Value::Number(a), Value::Number(e)) => a.as_f64() == e.as_f64(),
        (a, e) => a == e,
    }
}

fn differences(actual: &Value, expected: &Value, path: &str) -> Vec<String> {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => e
            .iter()
            .flat_map(|(k, ev)| {
                let p = format!("{path}.{k}");
                match a.get(k) {
                    None => vec![format!("{p}: missing (expected {})", to_article_json(ev))],
                    Some(av) => differences(av, ev, &p),
                }
            })
            .collect(),
        (a, e) if contains(a, e) => Vec::new(),
        (a, e) => vec![format!(
            "{path}: expected {}, got {}",
            to_article_json(e),
            to_article_json(a)
        )],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subset_matching() {
        let actual =
            json!({"order_id": 1, "total": 10.0, "items": [1, 2], "who": {"name": "a", "age": 3}});
        assert!(contains(&actual, &json!({"order_id": 1})));
        assert!(contains(&actual, &json!({"total": 10})));
        assert!(contains(&actual, &json!({"who": {"name": "a"}})));
        assert!(!contains(&actual, &json!({"order_id": 2})));
        assert!(!contains(&actual, &json!({"missing": 1})));
        assert!(!contains(&actual, &json!({"items": [1]})));
    }

    #[test]
    fn differences_name_the_field() {
        let d = differences(
            &json!({"a": 1, "b": {"c": 2}}),
            &json!({"a": 2, "b": {"c": 2, "d": 1}}),
            "data",
        );
        assert_eq!(
            d,
            vec![
                "data.a: expected 2, got 1".to_owned(),
                "data.b.d: missing (expected 1)".to_owned()
            ]
        );
    }
}
