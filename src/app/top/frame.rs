//! One frame of `edaflow top`, as plain lines: a header (instance, generation, uptime,
//! broker health, dead letters, HTTP ingest), then a table per kind of component
//! (topics, subscribers, relays, queues, chains, and the processes sharing a Redis), each
//! left out when empty. Pure: a `View` and a width in, lines out.
//!
//! Every line fits the width: the name column shrinks (names end in `…`) before the
//! figures do, and what still does not fit is cut, also with `…`. A rate not known yet
//! (the first sample, a component that just appeared) shows as `-`.

use std::fmt::Write as _;

use super::sample::View;

/// The narrowest name column.
const MIN_NAME: usize = 8;

/// Where the frame is drawn and what is shown about it.
pub(crate) struct Frame<'a> {
    /// The instance's URL, for the header.
    pub url: &'a str,
    /// Columns available; `None`: no limit (output that is not a terminal).
    pub width: Option<usize>,
    /// A problem reaching the instance, shown under the header (live mode keeps trying).
    pub problem: Option<&'a str>,
}

impl Frame<'_> {
    /// The lines of `view`, each at most `width` characters.
    pub(crate) fn render(&self, view: &View) -> Vec<String> {
        let now = &view.now;
        let mut lines = Vec::new();
        let health = match &now.health.reason {
            Some(reason) => format!("{} ({reason})", now.health.status),
            None => now.health.status.clone(),
        };
        lines.push(format!(
            "edaflow top  {}  generation {}  up {}  broker {}  dead letters {}",
            self.url,
            now.generation,
            uptime(now.uptime_seconds),
            health,
            now.dead_letters,
        ));
        lines.push(format!(
            "http: {}/s accepted, {}/s rejected, {} connection(s) open",
            shown_rate(view.accepted_rate),
            shown_rate(view.rejected_rate),
            now.http.connections_open,
        ));
        if let Some(problem) = self.problem {
            lines.push(format!("! {problem}"));
        }

        if !view.topics.is_empty() {
            let rows = view
                .topics
                .iter()
                .map(|t| {
                    let figures = vec![
                        shown_rate(t.in_rate),
                        shown_rate(t.out_rate),
                        t.counts.events_in.to_string(),
                        t.counts.events_out.to_string(),
                    ];
                    (t.name.clone(), figures, None)
                })
                .collect();
            self.table(&mut lines, "TOPIC", &["IN/s", "OUT/s", "IN", "OUT"], rows);
        }
        if !view.subscribers.is_empty() {
            let rows = view
                .subscribers
                .iter()
                .map(|s| {
                    let figures = vec![
                        shown_rate(s.in_rate),
                        shown_rate(s.handled_rate),
                        shown_rate(s.error_rate),
                        shown_gauge(s.counts.queued),
                        shown_gauge(s.counts.in_flight),
                        s.counts.errors.to_string(),
                        s.counts.dead_letters.to_string(),
                    ];
                    (s.name.clone(), figures, s.last_error.clone())
                })
                .collect();
            self.table(
                &mut lines,
                "SUBSCRIBER",
                &[
                    "IN/s",
                    "DONE/s",
                    "ERR/s",
                    "WAITING",
                    "IN-FLIGHT",
                    "ERRORS",
                    "DEAD",
                ],
                rows,
            );
        }
        if !view.relays.is_empty() {
            let rows = view
                .relays
                .iter()
                .map(|r| {
                    let figures = vec![
                        shown_rate(r.relayed_rate),
                        shown_rate(r.error_rate),
                        r.counts.relayed.to_string(),
                        r.counts.errors.to_string(),
                    ];
                    (r.name.clone(), figures, r.last_error.clone())
                })
                .collect();
            self.table(
                &mut lines,
                "RELAY",
                &["MOVED/s", "ERR/s", "MOVED", "ERRORS"],
                rows,
            );
        }
        if !now.queues.is_empty() {
            let rows = now
                .queues
                .iter()
                .map(|(name, q)| {
                    let figures = vec![
                        q.due_now.to_string(),
                        q.depth.saturating_sub(q.due_now).to_string(),
                        q.in_flight.to_string(),
                        q.dead_letters.to_string(),
                    ];
                    (name.clone(), figures, None)
                })
                .collect();
            self.table(
                &mut lines,
                "QUEUE",
                &["READY", "DELAYED", "IN-FLIGHT", "DEAD"],
                rows,
            );
        }
        if !view.chains.is_empty() {
            let rows = view
                .chains
                .iter()
                .map(|c| {
                    let figures = vec![
                        shown_rate(c.started_rate),
                        c.counts.in_flight.to_string(),
                        c.counts.started.to_string(),
                        c.counts.completed.to_string(),
                        c.counts.timed_out.to_string(),
                    ];
                    (c.counts.chain.clone(), figures, None)
                })
                .collect();
            self.table(
                &mut lines,
                "CHAIN",
                &["START/s", "IN-FLIGHT", "STARTED", "DONE", "TIMED-OUT"],
                rows,
            );
        }
        if !now.processes.is_empty() {
            let rows = now
                .processes
                .iter()
                .map(|p| {
                    let figures = vec![
                        p.host.clone(),
                        p.pid.to_string(),
                        p.generation.to_string(),
                        format!("{:.1}s", p.seen_ms_ago as f64 / 1e3),
                    ];
                    let name = if p.this {
                        format!("{} *", p.id)
                    } else {
                        p.id.clone()
                    };
                    (name, figures, None)
                })
                .collect();
            self.table(&mut lines, "PROCESS", &["HOST", "PID", "GEN", "SEEN"], rows);
        }
        lines.into_iter().map(|l| self.fit(&l)).collect()
    }

    /// A table: a blank line, the heading, then a line per row. The name column takes
    /// the longest name, shrunk to leave room for the figures; a row's note (its last
    /// error) follows the figures, cut at the width.
    fn table(
        &self,
        lines: &mut Vec<String>,
        title: &str,
        columns: &[&str],
        rows: Vec<(String, Vec<String>, Option<String>)>,
    ) {
        let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
        for (_, figures, _) in &rows {
            for (w, f) in widths.iter_mut().zip(figures) {
                *w = (*w).max(f.chars().count());
            }
        }
        let figures_width: usize = widths.iter().map(|w| w + 2).sum();
        let longest = rows
            .iter()
            .map(|(name, ..)| name.chars().count())
            .chain([title.chars().count()])
            .max()
            .unwrap_or(0);
        let name_width = match self.width {
            Some(width) => longest.min(width.saturating_sub(figures_width).max(MIN_NAME)),
            None => longest,
        };
        let has_notes = rows.iter().any(|(.., note)| note.is_some());
        let line = |name: &str, figures: &[String], note: Option<&str>| {
            let mut out = format!("{:<name_width$}", cut(name, name_width));
            for (w, f) in widths.iter().zip(figures) {
                let _ = write!(out, "  {f:>w$}");
            }
            if let Some(note) = note {
                let _ = write!(out, "  {}", one_line(note));
            }
            out.trim_end().to_owned()
        };
        lines.push(String::new());
        let headings: Vec<String> = columns.iter().map(|c| (*c).to_owned()).collect();
        lines.push(line(title, &headings, has_notes.then_some("LAST ERROR")));
        for (name, figures, note) in &rows {
            lines.push(line(name, figures, note.as_deref()));
        }
    }

    /// `line` cut to the width.
    fn fit(&self, line: &str) -> String {
        match self.width {
            Some(width) => cut(line, width),
            None => line.to_owned(),
        }
    }
}

/// `text` in at most `width` characters: cut with `…` when longer.
pub(crate) fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    if width == 0 {
        return String::new();
    }
    let mut out: String = text.chars().take(width - 1).collect();
    out.push('…');
    out
}

/// An error message on one line, without control characters (a message cannot move the
/// cursor or change colours).
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A rate as a frame shows it: `-` when unknown, one decimal below 1000, then `k`/`M`.
pub(crate) fn shown_rate(rate: Option<f64>) -> String {
    match rate {
        None => "-".to_owned(),
        Some(r) if r >= 1e6 => format!("{:.1}M", r / 1e6),
        Some(r) if r >= 1e3 => format!("{:.1}k", r / 1e3),
        Some(r) => format!("{r:.1}"),
    }
}

/// A gauge the broker may not have given (a broker that is down).
fn shown_gauge(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// `3d04h`, `2h05m`, `4m09s`, `12s`.
fn uptime(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::super::sample::{
        QueueCounts, RecentError, Sample, SubscriberCounts, TopicCounts, View,
    };
    use super::*;

    fn view() -> View {
        let mut before = Sample {
            at_ms: 1_000,
            ..Sample::default()
        };
        let mut now = Sample {
            at_ms: 2_000,
            generation: 3,
            uptime_seconds: 3725,
            dead_letters: 2,
            ..Sample::default()
        };
        now.health.status = "ok".into();
        for (sample, n) in [(&mut before, 10), (&mut now, 35)] {
            sample.topics.insert(
                "orderCreated".into(),
                TopicCounts {
                    events_in: n,
                    events_out: n,
                },
            );
            sample.subscribers.insert(
                "a_subscriber_with_a_very_long_name_indeed".into(),
                SubscriberCounts {
                    events_in: n,
                    handled: n,
                    queued: Some(4),
                    in_flight: Some(1),
                    ..SubscriberCounts::default()
                },
            );
        }
        now.subscribers
            .get_mut("a_subscriber_with_a_very_long_name_indeed")
            .expect("inserted above")
            .recent_errors
            .push(RecentError {
                message: "boom:\nthe stock service answered 503".into(),
            });
        now.queues.insert(
            "tasks".into(),
            QueueCounts {
                depth: 7,
                due_now: 2,
                in_flight: 1,
                dead_letters: 1,
            },
        );
        View::of(Some(&before), now)
    }

    #[test]
    fn a_wide_frame_shows_every_table_whole() {
        let lines = Frame {
            url: "http://127.0.0.1:3000",
            width: None,
            problem: None,
        }
        .render(&view());
        let text = lines.join("\n");
        assert!(
            text.starts_with("edaflow top  http://127.0.0.1:3000  generation 3  up 1h02m  broker ok  dead letters 2\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "\nTOPIC         IN/s  OUT/s  IN  OUT\norderCreated  25.0   25.0  35   35\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("a_subscriber_with_a_very_long_name_indeed  25.0    25.0    0.0        4          1       0     0  boom: the stock service answered 503"),
            "{text}"
        );
        assert!(
            text.contains(
                "\nQUEUE  READY  DELAYED  IN-FLIGHT  DEAD\ntasks      2        5          1     1"
            ),
            "{text}"
        );
        assert!(!text.contains("RELAY") && !text.contains("CHAIN"), "{text}");
    }

    #[test]
    fn every_line_fits_a_narrow_terminal_and_long_names_shrink_first() {
        for width in [20, 40, 60, 80] {
            let lines = Frame {
                url: "http://127.0.0.1:3000",
                width: Some(width),
                problem: Some("cannot connect to 127.0.0.1:3000"),
            }
            .render(&view());
            for line in &lines {
                assert!(line.chars().count() <= width, "{width}: {line:?}");
            }
        }
        let lines = Frame {
            url: "u",
            width: Some(80),
            problem: None,
        }
        .render(&view());
        let row = lines
            .iter()
            .find(|l| l.starts_with("a_sub"))
            .expect("the subscriber's row");
        // 80 columns less the figures' 55 leave 25 for the name; the note is then cut.
        assert!(
            row.starts_with("a_subscriber_with_a_very…  25.0"),
            "{row:?}"
        );
        assert!(row.ends_with('…'), "{row:?}");
    }

    #[test]
    fn cut_counts_characters_not_bytes() {
        assert_eq!(cut("héllo", 5), "héllo");
        assert_eq!(cut("héllo wörld", 6), "héllo…");
        assert_eq!(cut("abc", 0), "");
    }

    #[test]
    fn rates_and_uptimes_read_short() {
        assert_eq!(shown_rate(None), "-");
        assert_eq!(shown_rate(Some(0.0)), "0.0");
        assert_eq!(shown_rate(Some(999.94)), "999.9");
        assert_eq!(shown_rate(Some(12_345.0)), "12.3k");
        assert_eq!(shown_rate(Some(2_500_000.0)), "2.5M");
        assert_eq!(uptime(9), "9s");
        assert_eq!(uptime(249), "4m09s");
        assert_eq!(uptime(3725), "1h02m");
        assert_eq!(uptime(3 * 86_400 + 4 * 3600), "3d04h");
    }
}
