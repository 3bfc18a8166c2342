//! What the commands print on stdout, as text built from plain data: the summary of
//! `validate`, the report of `test`, the dead-letter listing, a `tail` line and the tree of
//! a `trace`. Nothing here reads files or talks to a server, so each rendering is testable
//! on its own; `emit` is the one place that writes to stdout, and a write that fails is an
//! error, not a silent loss.

use crate::event::dead_letter;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::Write as _;

use super::Error;
use crate::event::{to_article_json, Event};
use crate::flowtest::TestReport;
use crate::runtime::history::TraceEntry;
use crate::runtime::Prepared;

/// Writes `text` to stdout, now.
///
/// # Errors
/// `Error::Stdout` when stdout does not take it (a full disk, a closed pipe).
pub(super) fn emit(text: &str) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|source| Error::Stdout { source })
}

/// `edaflow validate`'s one line: what the flows declare, and how many warnings.
pub(super) fn validation(prepared: &Prepared) -> String {
    let f = &prepared.flows;
    format!(
        "ok: {} file(s), {} producer(s), {} subscriber(s), {} queue(s), {} relay(s), {} chain(s), {} test(s); {} warning(s)\n",
        f.files.len(),
        f.producers.len(),
        f.subscribers.len(),
        f.queues.len(),
        f.relays.len(),
        f.chains.len(),
        f.tests.len(),
        prepared.warnings.len()
    )
}

/// `edaflow test`'s report, in the shape of `cargo test`'s: one line per test, then the
/// explanation of each failure, then the verdict.
pub(super) fn test_reports(reports: &[TestReport]) -> String {
    let total = reports.len();
    let failed = reports.iter().filter(|r| r.failure.is_some()).count();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "running {total} flow test{}",
        if total == 1 { "" } else { "s" }
    );
    for report in reports {
        let verdict = if report.failure.is_none() {
            "ok"
        } else {
            "FAILED"
        };
        let _ = writeln!(out, "test {} ... {verdict}", report.name);
    }
    if failed > 0 {
        let _ = writeln!(out, "\nfailures:");
        for report in reports {
            if let Some(failure) = &report.failure {
                let _ = writeln!(
                    out,
                    "\n---- {} ({}) ----\n{failure}",
                    report.name, report.file
                );
            }
        }
    }
    let verdict = if failed == 0 { "ok" } else { "FAILED" };
    let _ = writeln!(
        out,
        "\nflow test result: {verdict}. {} passed; {failed} failed",
        total - failed
    );
    out
}

/// `edaflow dead list --json`: each dead letter as its CloudEvents JSON, one per line.
pub(super) fn dead_letters_json(letters: &[Event]) -> String {
    let mut out = String::new();
    for letter in letters {
        let _ = writeln!(out, "{}", letter.to_json());
    }
    out
}

/// `edaflow dead list`: each dead letter's id, time, origin, subscriber and attempts, then
/// its error and data on indented lines, and the count.
pub(super) fn dead_letters(letters: &[Event]) -> String {
    if letters.is_empty() {
        return "no dead letters\n".to_owned();
    }
    let mut out = String::new();
    for letter in letters {
        let ext = |k: &str| {
            letter
                .extensions
                .get(k)
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .unwrap_or_default()
        };
        let origin = if ext(dead_letter::QUEUE).is_empty() {
            format!("topic {}", ext(dead_letter::TOPIC))
        } else {
            format!("queue {}", ext(dead_letter::QUEUE))
        };
        let _ = writeln!(
            out,
            "{}  {}  {}  by {} after {} attempt(s)\n    error: {}\n    data:  {}",
            letter.id,
            humantime::format_rfc3339_millis(letter.time),
            origin,
            ext(dead_letter::SUBSCRIBER),
            ext(dead_letter::ATTEMPTS),
            ext(dead_letter::REASON),
            to_article_json(&letter.data)
        );
    }
    let _ = writeln!(out, "{} dead letter(s)", letters.len());
    out
}

/// `edaflow tail`'s line for one event: its time, topic, id and data.
pub(super) fn tail_line(event: &Event) -> String {
    format!(
        "{} {} {} {}\n",
        humantime::format_rfc3339_millis(event.time),
        event.topic,
        event.id,
        to_article_json(&event.data)
    )
}

/// The tree of a journey: each event under the one that caused it, with who emitted it,
/// the generation of its code, its time and the delta from its parent.
pub fn render_trace(entries: &[TraceEntry]) -> String {
    let ids: HashSet<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    let mut out = String::new();
    for (i, e) in entries.iter().enumerate() {
        let is_root = e.causation_id.as_deref().is_none_or(|c| !ids.contains(c));
        if is_root {
            trace_node(&mut out, entries, i, "", true, true);
        }
    }
    out
}

/// Writes `entries[index]` after `prefix` and its branch mark, then its children under it.
fn trace_node(
    out: &mut String,
    entries: &[TraceEntry],
    index: usize,
    prefix: &str,
    last: bool,
    root: bool,
) {
    let e = &entries[index];
    let parent = e
        .causation_id
        .as_deref()
        .and_then(|c| entries.iter().find(|p| p.id == c));
    let delta = parent
        .and_then(|p| e.time.duration_since(p.time).ok())
        .map(|d| format!(" +{:.1}ms", d.as_secs_f64() * 1000.0))
        .unwrap_or_default();
    let generation = e
        .generation
        .map(|g| format!(" gen {g}"))
        .unwrap_or_default();
    let branch = if root {
        ""
    } else if last {
        "└─ "
    } else {
        "├─ "
    };
    let _ = writeln!(
        out,
        "{prefix}{branch}{} {} by {}{generation} {}{delta}",
        e.topic,
        e.id,
        e.emitted_by,
        humantime::format_rfc3339_millis(e.time)
    );
    let children: Vec<usize> = entries
        .iter()
        .enumerate()
        .filter(|(_, c)| c.causation_id.as_deref() == Some(e.id.as_str()))
        .map(|(i, _)| i)
        .collect();
    let next_prefix = if root {
        String::new()
    } else {
        format!("{prefix}{}", if last { "   " } else { "│  " })
    };
    for (n, child) in children.iter().enumerate() {
        let last = n + 1 == children.len();
        trace_node(out, entries, *child, &next_prefix, last, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn entry(id: &str, cause: Option<&str>, topic: &str, by: &str, ms: u64) -> TraceEntry {
        TraceEntry {
            id: id.into(),
            causation_id: cause.map(str::to_owned),
            topic: topic.into(),
            emitted_by: by.into(),
            generation: cause.map(|_| 1),
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(ms),
            traceparent: None,
        }
    }

    #[test]
    fn traces_render_as_a_tree_with_deltas() {
        let entries = [
            entry("a", None, "orderCreated", "api", 0),
            entry("b", Some("a"), "inventoryReserved", "reserve", 2),
            entry("c", Some("a"), "audit", "audit", 3),
            entry("d", Some("b"), "paymentCharged", "charge", 5),
        ];
        let text = render_trace(&entries);
        let expected = "\
orderCreated a by api 1970-01-01T00:00:00.000Z
├─ inventoryReserved b by reserve gen 1 1970-01-01T00:00:00.002Z +2.0ms
│  └─ paymentCharged d by charge gen 1 1970-01-01T00:00:00.005Z +3.0ms
└─ audit c by audit gen 1 1970-01-01T00:00:00.003Z +3.0ms
";
        assert_eq!(text, expected);
    }
}
