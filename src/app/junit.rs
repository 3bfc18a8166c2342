//! `edaflow test --junit PATH`: the flow tests as a JUnit XML report, the format CI test
//! reporters read (GitHub Actions reporters, GitLab's `artifacts:reports:junit`, Jenkins'
//! `junit` step). One `<testsuite>` per flow file, one `<testcase>` per flow test, a
//! `<failure>` with the explanation `edaflow test` prints; flows that do not load are one
//! `<testcase>` with an `<error>`, so the report exists and fails whatever went wrong.
//!
//! The XML is written by hand (a handful of elements); `escape` makes any text safe in an
//! attribute or an element, including characters XML 1.0 cannot carry at all.

use std::fmt::Write as _;
use std::time::Duration;

use crate::flowtest::TestReport;

/// The report for a run whose tests all ran.
pub fn report(reports: &[TestReport]) -> String {
    let failed = reports.iter().filter(|r| r.failure.is_some()).count();
    let total_time: Duration = reports.iter().map(|r| r.duration).sum();
    let mut out = header(reports.len(), failed, 0, total_time);
    // Suites in the order their files first appear.
    let mut files: Vec<&str> = Vec::new();
    for r in reports {
        if !files.contains(&r.file.as_str()) {
            files.push(&r.file);
        }
    }
    for file in files {
        let cases: Vec<&TestReport> = reports.iter().filter(|r| r.file == file).collect();
        let failed = cases.iter().filter(|r| r.failure.is_some()).count();
        let time: Duration = cases.iter().map(|r| r.duration).sum();
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failed}\" errors=\"0\" skipped=\"0\" time=\"{}\">",
            escape(file),
            cases.len(),
            seconds(time)
        );
        for case in cases {
            let _ = write!(
                out,
                "    <testcase name=\"{}\" classname=\"{}\" file=\"{}\" time=\"{}\"",
                escape(&case.name),
                escape(file),
                escape(file),
                seconds(case.duration)
            );
            match &case.failure {
                None => out.push_str("/>\n"),
                Some(failure) => {
                    let first = failure.lines().next().unwrap_or("failed");
                    let _ = writeln!(
                        out,
                        ">\n      <failure message=\"{}\" type=\"edaflow::test::failed\">{}</failure>\n    </testcase>",
                        escape(first),
                        escape_text(failure)
                    );
                }
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

/// The report for flows that do not load: one errored test case carrying `diagnostic`
/// (the rendered errors) under `summary` (the one-line message).
pub fn load_failure(summary: &str, diagnostic: &str) -> String {
    let mut out = header(1, 0, 1, Duration::ZERO);
    let _ = writeln!(
        out,
        "  <testsuite name=\"edaflow\" tests=\"1\" failures=\"0\" errors=\"1\" skipped=\"0\" time=\"0.000\">\n    <testcase name=\"load flows\" classname=\"edaflow\" time=\"0.000\">\n      <error message=\"{}\" type=\"edaflow::flow::invalid\">{}</error>\n    </testcase>\n  </testsuite>",
        escape(summary),
        escape_text(diagnostic)
    );
    out.push_str("</testsuites>\n");
    out
}

fn header(tests: usize, failures: usize, errors: usize, time: Duration) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"edaflow test\" tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\" time=\"{}\">\n",
        seconds(time)
    )
}

/// Seconds with millisecond precision, as JUnit's `time` attributes are written.
fn seconds(duration: Duration) -> String {
    format!("{:.3}", duration.as_secs_f64())
}

/// `text` made safe in an XML 1.0 attribute value: the five markup characters as
/// entities, tabs and line breaks as character references (a parser would turn them into
/// spaces otherwise), and the characters XML 1.0 does not allow (other control characters,
/// U+FFFE, U+FFFF) as U+FFFD.
pub fn escape(text: &str) -> String {
    escape_with(text, true)
}

/// `text` made safe as an element's character data: as `escape`, but tabs and line feeds
/// stay as they are (character data keeps them), so the report reads well as a file.
pub fn escape_text(text: &str) -> String {
    escape_with(text, false)
}

fn escape_with(text: &str, attribute: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' if !attribute => out.push(c),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\u{0}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_breaks_and_forbidden_characters() {
        assert_eq!(
            escape(r#"a<b> & "c" 'd'"#),
            "a&lt;b&gt; &amp; &quot;c&quot; &apos;d&apos;"
        );
        assert_eq!(escape("x\ny\tz\r"), "x&#10;y&#9;z&#13;");
        assert_eq!(escape_text("x\ny\tz\r<"), "x\ny\tz&#13;&lt;");
        assert_eq!(escape_text("\u{1b}[31m"), "\u{fffd}[31m");
        assert_eq!(
            escape("bell\u{7} nul\u{0} \u{fffe}"),
            "bell\u{fffd} nul\u{fffd} \u{fffd}"
        );
        assert_eq!(escape("é ✓ 😀"), "é ✓ 😀");
        // No raw markup survives.
        let hostile = "]]></failure><x a=\"1\">&amp;";
        let escaped = escape(hostile);
        assert!(!escaped.contains(['<', '>', '"']), "{escaped}");
    }

    #[test]
    fn a_report_groups_tests_by_file_and_counts_failures() {
        let case = |file: &str, name: &str, failure: Option<&str>| TestReport {
            name: name.into(),
            file: file.into(),
            failure: failure.map(str::to_owned),
            duration: Duration::from_millis(1500),
        };
        let xml = report(&[
            case("a.toml", "one", None),
            case("b.toml", "two <b>", Some("expected x\n  got y")),
            case("a.toml", "three", None),
        ]);
        assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"edaflow test\" tests=\"3\" failures=\"1\" errors=\"0\" time=\"4.500\">"), "{xml}");
        assert!(
            xml.contains("<testsuite name=\"a.toml\" tests=\"2\" failures=\"0\""),
            "{xml}"
        );
        assert!(
            xml.contains("<testsuite name=\"b.toml\" tests=\"1\" failures=\"1\""),
            "{xml}"
        );
        assert!(xml.contains("<testcase name=\"two &lt;b&gt;\""), "{xml}");
        assert!(
            xml.contains("<failure message=\"expected x\" type=\"edaflow::test::failed\">expected x\n  got y</failure>"),
            "{xml}"
        );
        assert_eq!(xml.matches("<testcase ").count(), 3);
        assert!(xml.ends_with("</testsuites>\n"));
    }
}
